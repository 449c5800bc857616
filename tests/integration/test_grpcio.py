"""A stock gRPC server as the controller (issue 8, point 2, acceptance).

The controller is python3-grpcio (gRPC Core) with its DEFAULT keepalive
enforcement (no grpc.http2.* options), linked to the relay by the dial-out
bridge of grpcioctl.py, which also counts the frames it passes.

* test_grpcio_controller_round_trip_and_idle — create, pair (bytes hashed
  both ways, counters read back), list (whole and paged), kick (DELETE ->
  Kick on Events -> both peers closed 1001); then the link idles with
  the relay's --ping-interval at 1 s: it stays up and ready the whole time,
  gRPC Core never sends GOAWAY too_many_pings, the relay still probes
  (PINGs and grpc.health.v1 Checks, which this server answers
  UNIMPLEMENTED), and never sends two PINGs without the controller having
  written HEADERS or DATA in between.
"""

import time

import pytest

import grpcioctl as gc
import grpcpeer as gp

IDLE_S = 40        # the idle period; gRPC Core strikes out in ~4 s at 1 s pings
PING_S = 1.0       # the relay's --ping-interval


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return gp.Pki(tmp_path_factory.mktemp("pki"))


def list_ids(relay, query=""):
    r = gp.http(relay, "GET", "/admin/sessions" + query)
    assert r.status == 200, r
    body = r.json()
    return [s["id"] for s in body["sessions"]], body.get("next_page_token")


def wait_counters(relay, sid, want_in, want_out, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        r = gp.http(relay, "GET", "/admin/sessions/" + sid)
        assert r.status == 200, r
        st = r.json()
        if (st["bytes_in"], st["bytes_out"]) == (want_in, want_out):
            return st
        assert time.monotonic() < deadline, (st, want_in, want_out)
        time.sleep(0.1)


def test_grpcio_controller_round_trip_and_idle(pki, start_relay):
    """Issue 8 point 2 (stock gRPC implementations; keepalive; acceptance):
    a Python grpcio controller behind a dial-out bridge runs create, pair,
    list and kick, then stays linked and ready for the idle period with no
    GOAWAY too_many_pings.  Fails on e47a26f: the relay PINGs every second
    regardless, and gRPC Core answers the third one with GOAWAY
    ENHANCE_YOUR_CALM "too_many_pings" about 4 s in."""
    relay, ctl, bridge = gc.grpcio_relay(
        start_relay, pki, extra=["--ping-interval", "%gs" % PING_S])
    try:
        public_url = relay.listening["public_url"]
        # Create: minted by the grpcio controller, rendered by the relay.
        c = gc.create(relay)
        sid = c["id"]
        assert sid in ctl.sessions and len(sid) == 22
        assert c["initiator_token"] == ctl.sessions[sid].itok
        assert c["initiator_url"] == "%s/relay/%s" % (public_url, sid), c

        async def pair_and_kick():
            a = await gc.ws_open(relay, sid, c["initiator_token"])
            b = await gc.ws_open(relay, sid, c["responder_token"])
            await gc.send_hashed(a, b, 50000, 16384)
            await gc.send_hashed(b, a, 7000, 4096)
            st = await gc.in_thread(wait_counters, relay, sid, 50000, 7000)
            assert st["state"] == "open", st
            assert st["initiator_connected"] and st["responder_connected"], st
            # List, whole and paged, through the stock server's paging.
            more = [gc.create(relay)["id"] for _ in range(2)]
            every, token = await gc.in_thread(list_ids, relay)
            assert sorted(every) == sorted([sid] + more) and token is None, (every, token)
            first, token = await gc.in_thread(list_ids, relay, "?limit=2")
            assert len(first) == 2 and token, (first, token)
            rest, last = await gc.in_thread(list_ids, relay, "?limit=2&page_token=" + token)
            assert sorted(first + rest) == sorted(every) and last is None, (rest, last)
            # Kick: DELETE -> Kick on the Events stream -> 1001 for both.
            r = await gc.in_thread(gp.http, relay, "DELETE", "/admin/sessions/" + sid)
            assert r.status == 204, r
            await gc.closed_with(a, 1001)
            await gc.closed_with(b, 1001)
            assert await gc.ws_status(relay, sid, c["responder_token"]) == 404

        gc.run(pair_and_kick())
        relay.wait_for_log(msg="session kicked", session=sid)

        # Idle: only keepalive probes cross the link now.
        t0 = time.monotonic()
        links_before = len(relay.find_logs(msg="controller link up"))
        while time.monotonic() - t0 < IDLE_S:
            assert not bridge.closed.is_set(), (bridge.close_reason, bridge.goaways)
            assert relay.get("/readyz").status == 200, relay.describe()
            time.sleep(0.5)
        assert not bridge.closed.is_set() and bridge.goaways == [], (
            bridge.close_reason, bridge.goaways)
        assert not relay.find_logs(msg="controller sent GOAWAY")
        assert not relay.find_logs(msg="controller link down")
        assert len(relay.find_logs(msg="controller link up")) == links_before == 1
        assert len(ctl.all_streams) == 1  # one Events stream throughout

        # The relay kept probing, and the probes were both kinds.
        probes = [(t, k) for t, k in bridge.probes() if t >= t0]
        kinds = {k for _, k in probes}
        print("\nidle %ds at --ping-interval %gs: %d PINGs, %d Health/Check probes" % (
            IDLE_S, PING_S, sum(k == "ping" for _, k in probes),
            sum(k == "health" for _, k in probes)))
        assert len(probes) >= IDLE_S / (4 * PING_S), probes
        assert kinds == {"ping", "health"}, probes
        # Never two PINGs without a HEADERS or DATA from the controller
        # between them: what gRPC Core's ping enforcement tolerates.
        pings = bridge.pings
        for p0, p1 in zip(pings, pings[1:]):
            assert any(p0 < w < p1 for w in bridge.ctl_writes), (p0, p1)
        assert bridge.paths[gp.PATH_HEALTH] == len(bridge.health_checks)
    finally:
        bridge.close()
        ctl.stop()
