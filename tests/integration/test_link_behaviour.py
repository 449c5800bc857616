"""The controller link with stock gRPC implementations (issue 8, point 2):
the Events stream, peer_wait, GOAWAY.

* test_events_reopened[trailers_only|trailers_after_data|rst_stream] — the
  controller ends Events each of the three ways; the relay opens a new
  Events stream with a new Hello at once, with backoff on repeats
  (exponential from ~100 ms, jittered); /readyz is 503 until a stream is
  back, 200
  after; a Kick sent on the new stream closes a peer with 1001.
* test_events_backoff_resets — a stream that stayed open 5 s resets the
  backoff: ending it again is answered by a reopen at once.
* test_peer_wait_default_and_limits — SlotDecision.peer_wait_seconds 0
  means `relay serve --peer-wait` (2 s here), and Limits.peer_wait_seconds
  on Events changes that default for peers joining afterwards (grpcio
  controller).
* test_goaway_in_flight_finish_new_elsewhere — with two controller links,
  one sends GOAWAY whose last_stream_id covers one in-flight Validate but
  not a second: the first gets the leaving controller's real answer (101),
  the second is retried on the other controller (101, not 503), and later
  calls go to the other link; /readyz stays 200.
* test_max_link_age_rotation — `relay-controller run --max-link-age 2s`
  rotates its link (replacement up first, then GOAWAY on the old one):
  /readyz polled every 50 ms over 10 s is never 503 and creates keep
  succeeding.
"""

import asyncio
import time

import pytest

import grpcioctl as gc
import grpcpeer as gp
import relaytest

T = relaytest.TIMEOUT
GRPC_CANCEL = 0x8  # HTTP/2 error code CANCEL


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return gp.Pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------
# Events: reopened after the controller ends it
# --------------------------------------------------------------------------

def end_events(fake, st, how):
    p = fake.peer
    if how == "trailers_only":
        p.reply_status(st.sid, gp.GRPC_OK)
    elif how == "trailers_after_data":  # response headers already sent
        p.send_message(st.sid, gp.pb_encode("ControllerCommand", {"limits": {}}))  # a no-op
        p.conn.send_headers(st.sid, [("grpc-status", "0")], end_stream=True)
        p.flush()
    else:
        p.conn.reset_stream(st.sid, error_code=GRPC_CANCEL)
        p.flush()


def kick_on(fake, events, relay):
    """An upgrade the fake allows, then a Kick on `events`: the peer must be
    closed with 1001."""
    sid, tok = gp.token22(), gp.token22()

    async def scenario():
        task = asyncio.ensure_future(gc.ws_open(relay, sid, tok))
        st, req = await gc.in_thread(fake.validate)
        assert req["session_id"] == sid, req
        fake.allow(st, gp.ROLE_INITIATOR)
        ws = await asyncio.wait_for(task, T)
        att = await gc.in_thread(lambda: fake.peer.next_message(
            events, "RelayEvent", pred=lambda m: m["session"] and
            m["session"]["type"] == gp.EV_ATTACH))
        assert att["session"]["session_id"] == sid, att
        fake.command(events, {"kick": {"session_id": sid, "close_code": 1001,
                                       "reason": "kick on the new stream"}})
        await gc.closed_with(ws, 1001)

    gc.run(scenario())


@pytest.mark.parametrize("how", ["trailers_only", "trailers_after_data", "rst_stream"])
def test_events_reopened(pki, start_relay, how):
    """Issue 8 point 2 (Events stream ended by the controller): reopened at
    once, backoff on repeats, not ready meanwhile, Kicks work on the new
    stream.  Fails on e47a26f: the relay never reopens Events and stays
    "ready" with no way to receive kicks."""
    relay = gc.remote_relay(start_relay, pki, "relay-events")
    fake = gc.FakeLink(pki, relay)
    # Trailers-Only needs a stream not yet answered; a stock server sends no
    # response headers on a bidi stream before its first message anyway.
    answer = how != "trailers_only"
    try:
        ev = fake.events(answer=answer)
        gp.wait_ready(relay)
        poller = gc.ReadyPoller(relay)
        t_end = time.monotonic()
        end_events(fake, ev, how)
        # Each reopened stream is ended again at once: the delays grow.
        arrivals = []
        for _ in range(3):
            st = fake.events(answer=answer, timeout=10)
            arrivals.append(time.monotonic())
            assert st.sid > ev.sid and st.hello["node_id"] == "relay-events", st.hello
            end_events(fake, st, how)
        new = fake.events(timeout=10)
        arrivals.append(time.monotonic())
        poller.wait_for(200, since=arrivals[-1])
        seen = poller.stop()
        gaps = [b - a for a, b in zip([t_end] + arrivals, arrivals)]
        print("\n%s: Events reopened after %s s" % (how, ", ".join("%.3f" % g for g in gaps)))
        # At once, then ~100 ms doubling; the relay jitters each delay in
        # [d/2, d], so only the halves are lower bounds.  The third delay is
        # at least 200 ms: more than the first can ever be.
        assert gaps[0] < 0.5, gaps
        for k, g in enumerate(gaps[1:], 1):
            assert 0.045 * 2 ** (k - 1) <= g <= 6, gaps
        assert gaps[3] > 0.1 * 1.5, gaps
        down = [s for t, s in seen if t_end < t < arrivals[-1]]
        assert 503 in down, down                       # not ready meanwhile
        assert relay.get("/readyz").status == 200
        assert any("Events" in l.get("msg", "") for l in relay.logs), "no log line"
        kick_on(fake, new, relay)
    finally:
        fake.close()


def test_events_backoff_resets(pki, start_relay):
    """Issue 8 point 2 (Events backoff): reset once a stream stays open 5 s.
    Fails on e47a26f (no reopen at all)."""
    relay = gc.remote_relay(start_relay, pki, "relay-events")
    fake = gc.FakeLink(pki, relay)
    try:
        ev = fake.events()
        for _ in range(3):  # build the backoff up
            end_events(fake, ev, "rst_stream")
            ev = fake.events(timeout=10)
        fake.serve_for(5.5)
        t_end = time.monotonic()
        end_events(fake, ev, "rst_stream")
        fake.events(timeout=10)
        gap = time.monotonic() - t_end
        assert gap < 0.5, gap
        gp.wait_ready(relay)
    finally:
        fake.close()


# --------------------------------------------------------------------------
# peer_wait: 0 means the relay's default, and Limits changes it
# --------------------------------------------------------------------------

def test_peer_wait_default_and_limits(pki, start_relay):
    """Issue 8 point 2 (Limits.peer_wait_seconds is applied; 0 means the
    relay's configured default): fails on e47a26f, which has no --peer-wait
    and waits a fixed 120 s when a decision says 0."""
    relay, ctl, bridge = gc.grpcio_relay(start_relay, pki, extra=["--peer-wait", "2s"])
    try:
        async def lone_peer():
            s = ctl.create(peer_wait=0)  # SlotDecision.peer_wait_seconds 0
            ws = await gc.ws_open(relay, s.id, s.itok)
            t0 = time.monotonic()
            await gc.closed_with(ws, 1001, timeout=10)
            return time.monotonic() - t0

        waited = gc.run(lone_peer())
        assert 1.6 <= waited <= 3.0, waited
        assert ctl.push({"limits": {"peer_wait_seconds": 1}}) == 1
        time.sleep(0.5)  # the command travels on Events, asynchronously
        waited_after = gc.run(lone_peer())
        assert 0.6 <= waited_after <= 1.9, waited_after
        print("\nlone peer closed after %.2f s (--peer-wait 2s), %.2f s after Limits 1 s" % (
            waited, waited_after))
    finally:
        bridge.close()
        ctl.stop()


# --------------------------------------------------------------------------
# GOAWAY
# --------------------------------------------------------------------------

def held_on_fake(relay, fake, sessions):
    """Upgrades with the initiator tokens of `sessions` (known only to the
    reference controller) until one reaches the fake (round-robin sends
    about every other call there); returns (socket, Validate stream,
    session).  Upgrades the reference answered are closed."""
    for c in sessions:
        s = gc.raw_upgrade(relay, c["id"], c["initiator_token"])
        try:
            st, req = fake.validate(timeout=1.0)
        except relaytest.TestError:
            r = relaytest.Reader(s).read_response()
            assert r.status == 101, r
            s.close()
            continue
        assert req["session_id"] == c["id"], req
        return s, st, c
    raise AssertionError("no Validate reached the fake controller")


def test_goaway_in_flight_finish_new_elsewhere(pki, tmp_path, start_relay, start_controller):
    """Issue 8 point 2 (GOAWAY): in-flight calls the GOAWAY covers finish on
    the leaving link; those above its last_stream_id are retried on the
    other link, and new calls go there.  Fails on e47a26f: the call above
    last_stream_id fails with 503 (stream refused)."""
    relay = gc.remote_relay(start_relay, pki, "relay-goaway")
    start_controller(gp.controller_args([relay], pki.ca_dir))
    gp.wait_links(relay, 1)
    known = [gc.create(relay) for _ in range(6)]  # all on the reference controller
    fake = gc.FakeLink(pki, relay, cert=pki.extra_controller("fake-goaway"))
    poller = None
    try:
        fake.events()
        gp.wait_links(relay, 2)
        poller = gc.ReadyPoller(relay, every=0.05)
        # In flight on the fake: first an upgrade only it can answer ...
        only_fake = gc.raw_upgrade(relay, gp.token22(), gp.token22())
        first, _ = fake.validate()
        # ... then one the reference controller could answer as well.
        second_sock, second, c = held_on_fake(relay, fake, known)
        assert second.sid > first.sid
        fake.peer.goaway_raw(last_stream_id=first.sid)
        relay.wait_for_log(msg="controller sent GOAWAY")
        # The covered call finishes on the leaving link, with its answer.
        fake.allow(first, gp.ROLE_INITIATOR)
        r = relaytest.Reader(only_fake).read_response()
        assert r.status == 101, r
        # The one above last_stream_id is retried elsewhere: a real 101.
        r = relaytest.Reader(second_sock).read_response()
        assert r.status == 101, r
        # New calls go to the other link.
        for k in known:
            assert gp.http(relay, "GET", "/admin/sessions/" + k["id"]).status == 200
        async def responder():
            return await gc.ws_status(relay, c["id"], c["responder_token"])
        assert gc.run(responder()) == 101
        late = []
        fake.serve_for(0.5, on_request=late.append)
        assert not late and not fake.peer.requests, "a new call reached the GOAWAY link"
        seen = [s for _, s in poller.stop()]
        assert seen and set(seen) == {200}, seen
        only_fake.close()
        second_sock.close()
    finally:
        if poller:
            poller.stop()
        fake.close()


def test_max_link_age_rotation(pki, tmp_path, start_relay, start_controller):
    """Issue 8 point 2 (GOAWAY, max_connection_age-style rotation): the
    reference controller dials its replacement link before it sends GOAWAY
    on the old one, so /readyz never says 503.  Fails on e47a26f: there is
    no --max-link-age."""
    relay = gc.remote_relay(start_relay, pki, "relay-rotating")
    ctl = start_controller(gp.controller_args([relay], pki.ca_dir, tmp_path / "state",
                                              extra=["--max-link-age", "2s"]))
    gp.wait_ready(relay)
    poller = gc.ReadyPoller(relay, every=0.05)
    created, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < 10:
            gc.create(relay)
            created += 1
            time.sleep(0.2)
    finally:
        seen = [s for _, s in poller.stop()]
    rotations = len(relay.find_logs(msg="controller sent GOAWAY"))
    ups = len(relay.find_logs(msg="controller link up"))
    print("\n%d /readyz polls, %d creates, %d GOAWAYs, %d links up over 10 s" % (
        len(seen), created, rotations, ups))
    assert len(seen) >= 50 and set(seen) == {200}, [s for s in seen if s != 200][:5]
    assert rotations >= 3 and ups >= rotations + 1, (rotations, ups)
    assert ctl.alive()
