"""Session counters as swsrs clients read them (issue 8, point 1).

* test_counters_direction_and_freshness — bytes_in is the payload the
  initiator sent, bytes_out what the responder sent (different known
  amounts, hashed end to end by Python websockets); GET
  /admin/sessions/{id} shows exactly those numbers within 1.5 s of the last
  byte, and last_activity is the second of that last byte (RFC 3339 has
  whole seconds, so it reads at most ~2.5 s old).
* test_counters_survive_relay_restarts — two-process mode: relay-controller
  run keeps its registry while the relay it dials (on a fixed tunnel port)
  is restarted twice; the peers rejoin with the same tokens and send more
  each time; the totals are the sum of all the traffic, fresh each time.
* test_counters_add_across_rejoin — both peers leave (the relay forgets
  the session) and rejoin: the counters add up, they are not the maximum.
"""

import datetime
import time

import pytest

import grpcioctl as gc
import grpcpeer as gp

FRESH_S = 1.5   # GET shows counters at most this long after the last byte
KIB = 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return gp.Pki(tmp_path_factory.mktemp("pki"))


def unix(rfc3339):
    return datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def wait_totals(relay, sid, want_in, want_out, since, within):
    """Polls GET until it shows (want_in, want_out); fails if a GET sent
    more than `within` seconds after `since` still does not.  Returns the
    status and how long after `since` the first matching GET was sent."""
    last = None
    while True:
        sent = time.monotonic()
        r = gp.http(relay, "GET", "/admin/sessions/" + sid)
        assert r.status == 200, r
        st = r.json()
        if (st["bytes_in"], st["bytes_out"]) == (want_in, want_out):
            return st, sent - since
        last = st
        assert sent - since <= within, "after %.2f s GET shows %r, want in=%d out=%d" % (
            sent - since, {k: last[k] for k in ("bytes_in", "bytes_out", "last_activity")},
            want_in, want_out)
        time.sleep(0.05)


def check_fresh(st, last_byte_wall):
    """last_activity (whole seconds) is the second of the last byte: the
    relay forwarded it just before the receiver had it."""
    assert st["last_activity"] is not None, st
    d = unix(st["last_activity"]) - last_byte_wall
    assert -1.5 <= d <= 0.5, (st["last_activity"], d)
    assert time.time() - unix(st["last_activity"]) <= 1 + FRESH_S + 0.5, st


async def traffic(relay, c, n_in, n_out):
    """Both peers join, send n_in (initiator->responder) and n_out back;
    returns (initiator, responder, monotonic and wall time the last byte
    arrived)."""
    a = await gc.ws_open(relay, c["id"], c["initiator_token"])
    b = await gc.ws_open(relay, c["id"], c["responder_token"])
    await gc.send_hashed(a, b, n_in, 32 * KIB)
    t_last = await gc.send_hashed(b, a, n_out, 10 * KIB)
    return a, b, t_last, time.time()


def test_counters_direction_and_freshness(start_relay):
    """Issue 8 point 1 (bytes_in/bytes_out direction, freshness): fails on
    e47a26f: both fields hold the two-way total, reported every 5 s."""
    relay = start_relay(plain=True)
    gp.wait_ready(relay)
    c = gc.create(relay)

    async def scenario():
        a, b, t_last, wall = await traffic(relay, c, 300 * KIB, 70 * KIB)
        st, lag = await gc.in_thread(wait_totals, relay, c["id"], 300 * KIB, 70 * KIB,
                                     t_last, FRESH_S)
        check_fresh(st, wall)
        assert st["state"] == "open", st
        print("\ncounters shown %.2f s after the last byte" % lag)
        # While the session stays open, more traffic shows as fresh.
        t_last = await gc.send_hashed(b, a, 1000, 1000)
        await gc.in_thread(wait_totals, relay, c["id"], 300 * KIB, 70 * KIB + 1000,
                           t_last, FRESH_S)
        await a.close()
        await gc.closed_with(b, 1000)

    gc.run(scenario())


def test_counters_survive_relay_restarts(pki, start_relay, start_controller):
    """Issue 8 point 1 (counters survive a relay restart): the registry adds
    up what each relay incarnation carried.  Fails on e47a26f: the
    restarted relay counts from zero and the registry keeps the maximum."""
    port = gc.free_port()  # the relay comes back where the controller dials
    relay_args = dict(tunnel_port=port, extra=["--shutdown-grace", "1s"])
    relay = gc.remote_relay(start_relay, pki, "relay-counted", **relay_args)
    ctl = start_controller(gp.controller_args(
        [relay], pki.ca_dir, extra=["--backoff-base", "100ms", "--backoff-max", "500ms"]))
    gp.wait_ready(relay)
    c = gc.create(relay)
    phases = [(300 * KIB, 70 * KIB), (50 * KIB, 20 * KIB), (10 * KIB, 5 * KIB)]
    relays = [relay]

    def restart():
        relays[-1].stop()
        r = gc.remote_relay(start_relay, pki, "relay-counted", **relay_args)
        gp.wait_ready(r)
        relays.append(r)
        return r

    async def scenario():
        r, total_in, total_out = relay, 0, 0
        a = b = None
        for i, (n_in, n_out) in enumerate(phases):
            if i:  # the restart closes the peers (1001), who then rejoin
                r = await gc.in_thread(restart)
                await gc.closed_with(a, 1001)
                await gc.closed_with(b, 1001)
            total_in, total_out = total_in + n_in, total_out + n_out
            a, b, t_last, wall = await traffic(r, c, n_in, n_out)
            st, lag = await gc.in_thread(wait_totals, r, c["id"], total_in, total_out,
                                         t_last, FRESH_S)
            check_fresh(st, wall)
            print("\nincarnation %d: in=%d out=%d shown %.2f s after the last byte" % (
                i + 1, total_in, total_out, lag))
        await a.close()
        await gc.closed_with(b, 1000)
        # Still the same totals once the peers are gone.
        st, _ = await gc.in_thread(wait_totals, r, c["id"], total_in, total_out,
                                   time.monotonic(), 3)
        assert st["state"] == "pending", st

    gc.run(scenario())
    assert len(ctl.find_logs(msg="relay link up")) >= len(phases)


def test_counters_add_across_rejoin(start_relay):
    """Issue 8 point 1 (the registry adds, not max): both peers leave and
    rejoin with the same tokens (no restart); the second visit's traffic
    adds to the first.  Fails on e47a26f: the registry keeps the maximum."""
    relay = start_relay(plain=True)
    gp.wait_ready(relay)
    c = gc.create(relay)

    async def scenario():
        a, b, t_last, _ = await traffic(relay, c, 40 * KIB, 10 * KIB)
        await gc.in_thread(wait_totals, relay, c["id"], 40 * KIB, 10 * KIB, t_last, FRESH_S)
        await a.close()
        await gc.closed_with(b, 1000)
        st, _ = await gc.in_thread(wait_totals, relay, c["id"], 40 * KIB, 10 * KIB,
                                   time.monotonic(), 3)
        assert st["state"] == "pending", st
        # The relay forgot the session; a new visit starts a new epoch.
        a, b, t_last, wall = await traffic(relay, c, 5 * KIB, 3 * KIB)
        st, _ = await gc.in_thread(wait_totals, relay, c["id"], 45 * KIB, 13 * KIB,
                                   t_last, FRESH_S)
        check_fresh(st, wall)
        await b.close()
        await gc.closed_with(a, 1000)

    gc.run(scenario())
