"""Controller-link keepalive (issue 8, point 2, "Keepalive" and "A hung
controller").  The stock-server half (gRPC Core's default ping
enforcement over an idle link) is test_grpcio.py.

* test_too_many_pings_backs_off — a python-h2 controller measures the
  relay's probe interval (PINGs and grpc.health.v1 Checks), then sends
  GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and closes, as gRPC servers do;
  the relay logs that it backs off, and on the next link from the same
  controller (same certificate) the interval is doubled.
* test_hung_controller_dropped_and_avoided — two reference controllers
  (each its own certificate) serve one relay with --ping-interval 1s
  --ping-timeout 5s; one is SIGSTOPped (hung, not dead): its link is
  dropped 5 s (+-1 s) after the stop ("link silent; dropping it"), and
  between its probe falling overdue and the drop, new Validate and Admin
  calls for sessions of the live controller are answered at once, never
  routed to the hung one.
"""

import datetime
import os
import signal
import statistics
import time

import pytest

import grpcioctl as gc
import grpcpeer as gp
import relaytest


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return gp.Pki(tmp_path_factory.mktemp("pki"))


def probe_gaps(fake, seconds):
    """Serves the link for `seconds`; returns the gaps between the relay's
    successive probes (PINGs and Health/Checks alike)."""
    start = len(fake.peer.pings_received)
    checks = fake.serve_for(seconds)
    probes = sorted(fake.peer.pings_received[start:] + checks)
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert len(gaps) >= 2, probes
    return gaps


def test_too_many_pings_backs_off(pki, start_relay):
    """Issue 8 point 2 (keepalive): after GOAWAY too_many_pings the relay
    doubles its ping interval for that controller.  Fails on e47a26f: no
    backoff (the next link is pinged as often, and nothing is logged)."""
    relay = gc.remote_relay(start_relay, pki, "relay-pinged", extra=["--ping-interval", "500ms"])
    fake = gc.FakeLink(pki, relay)
    try:
        fake.events()
        gp.wait_ready(relay)
        before = probe_gaps(fake, 3.5)
        fake.peer.goaway_raw(last_stream_id=0, error_code=gc.ENHANCE_YOUR_CALM,
                             debug=b"too_many_pings")
    finally:
        fake.close()
    line = relay.wait_for_log(msg="controller asked for fewer pings; backing off")
    assert line["ping_interval_ms"] == 1000, line
    fake = gc.FakeLink(pki, relay)  # the same controller identity redials
    try:
        fake.events()
        gp.wait_ready(relay)
        after = probe_gaps(fake, 5.5)
    finally:
        fake.close()
    b, a = statistics.median(before), statistics.median(after)
    print("\nprobe interval %.2f s before GOAWAY too_many_pings, %.2f s after" % (b, a))
    assert 0.35 <= b <= 0.8, before
    assert 0.8 <= a <= 1.4 and a >= 1.6 * b, (before, after)


def log_time(line):
    """A log line's "time" (RFC 3339, milliseconds) as a Unix time."""
    return datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def owned(ctl):
    return {l["session"] for l in ctl.find_logs(msg="session created")}


def test_hung_controller_dropped_and_avoided(pki, tmp_path, start_relay, start_controller):
    """Issue 8 point 2 (a hung controller): dropped within the configured
    ping timeout, to the second, and no new calls go to it once its probe
    is overdue while another link is up.  Fails on e47a26f: calls
    round-robin onto the stopped controller and wait until its link is
    dropped (and silence is checked only on each ping tick)."""
    relay = gc.remote_relay(start_relay, pki, "relay-hung",
                            extra=["--ping-interval", "1s", "--ping-timeout", "5s"])
    live = start_controller(gp.controller_args([relay], pki.ca_dir, tmp_path / "live"))
    hung = start_controller(gp.controller_args(
        [relay], pki.ca_dir, tmp_path / "hung", cert=pki.extra_controller("ctl-hung")))
    gp.wait_links(relay, 2)
    sessions = {}
    for _ in range(8):
        r = gp.http(relay, "POST", "/admin/sessions", b'{"ttl_seconds": 600}')
        assert r.status == 201, r
        sessions[r.json()["id"]] = r.json()
    deadline = time.monotonic() + relaytest.TIMEOUT
    while len(owned(live) | owned(hung)) < len(sessions):
        assert time.monotonic() < deadline, "session created lines missing"
        time.sleep(0.05)
    mine = [sessions[s] for s in owned(live)]
    assert mine and owned(hung), "round-robin put no session on one controller"

    # The relay probes a link silent for 1 s, so the hung controller last
    # spoke in (stop-1, stop]: its probe goes out by stop+1 and is overdue
    # (unanswered 2 s) by stop+3; silence drops it in (stop+4, stop+5].
    t_stop = time.time()
    os.kill(hung.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3.2)
        slow = []

        async def calls():
            for c in mine:
                t0 = time.monotonic()
                r = await gc.in_thread(gp.http, relay, "GET", "/admin/sessions/" + c["id"])
                assert r.status == 200, r
                code = await gc.ws_status(relay, c["id"], c["initiator_token"])
                assert code == 101, code
                slow.append(time.monotonic() - t0)

        gc.run(calls())
        t_calls = time.time()
        assert max(slow) < 0.5, slow
        line = relay.wait_for_log(msg="link silent; dropping it", timeout=10)
        dropped = log_time(line) - t_stop
        assert t_calls < log_time(line), "the calls ran only after the drop: %r" % slow
        print("\nhung controller dropped %.2f s after SIGSTOP; calls meanwhile took "
              "at most %.3f s" % (dropped, max(slow)))
        assert 4.0 <= dropped <= 6.0, dropped
        gp.wait_links(relay, 1)
        assert relay.get("/readyz").status == 200
    finally:
        os.kill(hung.proc.pid, signal.SIGCONT)
