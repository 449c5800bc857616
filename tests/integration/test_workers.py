"""Workers: what must hold across them (docs/DESIGN.md §1).

Every relay here runs --workers 4 (2 for the throughput pair).  A session's
home worker is a hash of its id, which this file computes the same way
(``home``) and checks against the relay's "peer attached" log lines, so the
tests can pick sessions whose peers meet on each worker, and connections
that land elsewhere and move.

* Kick (an admin DELETE, which the controller turns into a Kick for the
  session's home worker), TTL and peer_wait reach peers on every worker:
  exact close codes.
* SIGTERM drains every worker: idle connections go at once, lone peers get
  1001, open sessions on every worker keep relaying through the grace
  period and then get 1001, and the relay exits 0.
* --max-sessions and --max-conns-per-ip hold across workers: the cap is
  one number for the relay, whatever worker each connection landed on.
* A worker whose peers are paused by backpressure leaves the other
  worker's sessions relaying: while one session's receiver reads nothing
  (its sender blocked by the relay), a session on the other worker moves
  64 MiB, hashed; its throughput is printed beside the same transfer with
  no stalled session (not asserted: timings are the benchmarks' business).
"""

import hashlib
import os
import select
import signal
import threading
import time

import relaytest
import wsraw
from wsraw import BINARY, frame

MIB = 1 << 20
WORKERS = 4


def fnv1a64(data):
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def home(sid, workers=WORKERS):
    """The worker that holds a session's peers (relay/edge.c)."""
    return (fnv1a64(sid.encode()) >> 32) % workers


def sessions_by_home(adm, per_worker, workers=WORKERS, **body):
    """Creates sessions until each worker is home to per_worker of them."""
    got = {w: [] for w in range(workers)}
    for _ in range(200 * per_worker * workers):
        if all(len(v) >= per_worker for v in got.values()):
            return got
        s = adm.create(**body)
        w = home(s["id"], workers)
        if len(got[w]) < per_worker:
            got[w].append(s)
    raise AssertionError("could not cover every worker: %r" % {w: len(v) for w, v in got.items()})


def attached_on(relay, sid, n):
    """The workers of the first n "peer attached" lines of a session."""
    lines = []
    deadline = time.monotonic() + relaytest.TIMEOUT
    while len(lines) < n:
        lines = relay.find_logs(msg="peer attached", session=sid)
        assert time.monotonic() < deadline, (sid, lines)
        time.sleep(0.05)
    return [(l["worker"], l["arrived_on"]) for l in lines[:n]]


def pair(relay, s):
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    return a, b


def echo_check(a, b, payload):
    a.send_message(payload)
    assert b.recv_message() == (BINARY, payload)


def start(start_relay, *extra, **kw):
    return start_relay(extra=["--workers", str(WORKERS)] + list(extra), **kw)


# ---- commands and deadlines on every worker ----------------------------------------------

def test_delete_kick_reaches_peers_on_every_worker(start_relay):
    relay = start(start_relay)
    adm = wsraw.Admin(relay)
    by_home = sessions_by_home(adm, 2)
    peers = []
    for w, ss in by_home.items():
        for s in ss:
            a, b = pair(relay, s)
            echo_check(a, b, os.urandom(1000))
            # Both peers met on the session's home, wherever they landed.
            assert {x for x, _ in attached_on(relay, s["id"], 2)} == {w}
            peers.append((s, a, b))
    moved = [p for s, _, _ in peers for p in attached_on(relay, s["id"], 2) if p[0] != p[1]]
    assert moved, "no connection landed away from its session's home"
    for s, a, b in peers:
        r = adm.delete(s["id"])
        assert r.status == 204, r
        assert a.expect_close() == 1001
        assert b.expect_close() == 1001


def test_ttl_reaches_peers_on_every_worker(start_relay):
    relay = start(start_relay)
    adm = wsraw.Admin(relay)
    by_home = sessions_by_home(adm, 1, ttl_seconds=2)
    peers = []
    for w, (s,) in by_home.items():
        a, b = pair(relay, s)
        echo_check(a, b, b"before the TTL")
        assert {x for x, _ in attached_on(relay, s["id"], 2)} == {w}
        peers.append((a, b))
    for a, b in peers:
        assert a.expect_close(timeout=relaytest.TIMEOUT) == 1001
        assert b.expect_close(timeout=relaytest.TIMEOUT) == 1001


def test_peer_wait_reaches_lone_peers_on_every_worker(start_relay):
    relay = start(start_relay)
    adm = wsraw.Admin(relay)
    by_home = sessions_by_home(adm, 1, peer_wait_seconds=1)
    lone = []
    for w, (s,) in by_home.items():
        a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
        assert [x for x, _ in attached_on(relay, s["id"], 1)] == [w]
        lone.append(a)
    for a in lone:
        assert a.expect_close() == 1001
    m = relaytest.metrics(relay)
    assert m["relay_ws_peer_wait_expired_total"] == WORKERS, m


# ---- SIGTERM --------------------------------------------------------------------------------

def test_sigterm_drains_every_worker(start_relay):
    relay = start(start_relay, "--shutdown-grace", "2s")
    adm = wsraw.Admin(relay)
    by_home = sessions_by_home(adm, 1)
    lone_s = sessions_by_home(adm, 1)
    open_pairs = [pair(relay, ss[0]) for ss in by_home.values()]
    lone = [wsraw.open_peer(relay, ss[0]["id"], ss[0]["initiator_token"])
            for ss in lone_s.values()]
    idle = [relay.connect() for _ in range(2 * WORKERS)]  # spread over the workers
    adm.close()
    t0 = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    # Lone peers cannot be paired any more: 1001 at once, on every worker.
    for a in lone:
        assert a.expect_close() == 1001
    # Idle connections are closed (an orderly close, no response).
    for s in idle:
        assert relaytest.recv_until_closed(s) == (b"", "eof")
    # Open sessions keep relaying during the grace period ...
    for a, b in open_pairs:
        echo_check(a, b, b"still relaying")
        echo_check(b, a, b"both ways")
    # ... and then every one is closed 1001.
    for a, b in open_pairs:
        assert a.expect_close() == 1001
        assert b.expect_close() == 1001
    assert relay.wait() == 0  # by itself: no second signal
    relay.check_sanitizers()
    took = time.monotonic() - t0
    assert took < 2 + relaytest.TIMEOUT, took
    assert relay.find_logs(msg="shutdown complete")
    grace = relay.find_logs(msg="grace period over; closing remaining connections")
    assert sorted({l["worker"] for l in grace}) == list(range(WORKERS)), grace


# ---- limits across workers -----------------------------------------------------------------

def test_max_sessions_holds_across_workers(start_relay):
    relay = start(start_relay, "--max-sessions", "3")
    adm = wsraw.Admin(relay)
    by_home = sessions_by_home(adm, 2)
    # Three sessions, on three different home workers.
    first = [by_home[w][0] for w in range(3)]
    held = [wsraw.open_peer(relay, s["id"], s["initiator_token"]) for s in first]
    # A fourth session is refused whatever worker it lives on or lands on.
    for w in range(WORKERS):
        s = by_home[w][1]
        for _ in range(2):  # consecutive connections land on different workers
            c = wsraw.open_peer(relay, s["id"], s["initiator_token"], expect=429)
            c.shutdown()
    # The second peer of a held session still pairs.
    b = wsraw.open_peer(relay, first[0]["id"], first[0]["responder_token"])
    echo_check(held[0], b, b"paired under the cap")
    m = relaytest.metrics(relay)
    assert m["relay_sessions"] == 3, m
    # One goes: there is room for exactly one more.
    held[1].close(1000)
    deadline = time.monotonic() + relaytest.TIMEOUT
    while relaytest.metrics(relay)["relay_sessions"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    third = wsraw.open_peer(relay, by_home[3][1]["id"], by_home[3][1]["initiator_token"])
    c = wsraw.open_peer(relay, by_home[2][1]["id"], by_home[2][1]["initiator_token"], expect=429)
    c.shutdown()
    third.close(1000)


def get_on(sock, path):
    sock.sendall(relaytest.http_request("GET", path))
    return relaytest.Reader(sock).read_response()


def live_on(sock):
    """Connections plus peers, as the relay counts them, asked on a
    connection that is one of them (a fresh one would count too)."""
    r = get_on(sock, "/metrics")
    assert r.status == 200, r
    m = dict(l.split(" ", 1) for l in r.body.decode().splitlines() if l and l[0] != "#")
    return int(m["relay_connections"]) + int(m["relay_peers"])


def wait_live(sock, n):
    deadline = time.monotonic() + relaytest.TIMEOUT
    while live_on(sock) != n:
        assert time.monotonic() < deadline, live_on(sock)
        time.sleep(0.05)


def test_conns_per_ip_hold_across_workers(start_relay):
    relay = start(start_relay, "--max-conns-per-ip", "5")
    socks = [relay.connect() for _ in range(5)]  # round-robin: every worker has one or two
    for s in socks:
        assert get_on(s, "/healthz").status == 200
    relaytest.assert_error_body(get_on(relay.connect(), "/healthz"), 429, "too_many_connections")
    socks.pop().close()
    socks.pop().close()
    wait_live(socks[0], 3)
    adm = wsraw.Admin(relay)
    s = adm.create()
    adm.close()
    wait_live(socks[0], 3)
    # A peer keeps its count after the upgrade (and after moving to its
    # session's home): with it and one more connection the address is full.
    peer = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    fifth = relay.connect()
    assert get_on(fifth, "/healthz").status == 200
    assert live_on(socks[0]) == 5
    relaytest.assert_error_body(get_on(relay.connect(), "/healthz"), 429, "too_many_connections")
    peer.close(1000)


# ---- backpressure on one worker, throughput on another ------------------------------------------

def push(tx, block, rounds, sent, stop=None):
    """Sends block rounds times as fast as the kernel takes it; a stop
    takes effect between blocks, so only whole frames are sent."""
    tx.sock.setblocking(False)
    view = memoryview(block)
    for _ in range(rounds):
        if stop is not None and stop.is_set():
            return
        off = 0
        while off < len(view):
            try:
                n = tx.sock.send(view[off:])
                off += n
                sent[0] += n
            except BlockingIOError:
                select.select([], [tx.sock], [], 0.2)


def drain(rx, total):
    """Reads until total payload bytes arrived; returns the hasher."""
    hasher = wsraw.StreamHasher()
    buf = bytearray(MIB)
    rx.sock.settimeout(relaytest.TIMEOUT)
    while hasher.payload_bytes < total:
        n = rx.sock.recv_into(buf)
        assert n > 0, "relay closed the receiver"
        hasher.feed(memoryview(buf)[:n])
    return hasher


def timed_transfer(relay, s, total):
    """total bytes from initiator to responder; returns (seconds, ok)."""
    payload = os.urandom(MIB)
    block = frame(BINARY, payload)
    want = hashlib.sha256(payload * (total // MIB)).hexdigest()
    tx = wsraw.raw_peer(relay, s["id"], s["initiator_token"])
    rx = wsraw.raw_peer(relay, s["id"], s["responder_token"])
    sent = [0]
    t0 = time.monotonic()
    th = threading.Thread(target=push, args=(tx, block, total // MIB, sent), daemon=True)
    th.start()
    hasher = drain(rx, total)
    took = time.monotonic() - t0
    th.join(relaytest.TIMEOUT)
    ok = hasher.hexdigest() == want and hasher.messages == total // MIB
    tx.close(1000)
    assert rx.expect_close() == 1000
    return took, ok


def test_paused_worker_leaves_the_other_relaying(start_relay):
    relay = start_relay(plain=True, log_level="info", extra=["--workers", "2"],
                        env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:"
                                             "quarantine_size_mb=4:thread_local_quarantine_size_kb=64"})
    adm = wsraw.Admin(relay)
    by_home = sessions_by_home(adm, 3, workers=2)
    stalled, busy = by_home[0][0], by_home[1]
    total = 64 * MIB
    alone = min(timed_transfer(relay, busy[0], total)[0], 1e9)

    # Worker 0: a receiver that reads nothing, a sender the relay must stop.
    tx = wsraw.raw_peer(relay, stalled["id"], stalled["initiator_token"])
    rx = wsraw.raw_peer(relay, stalled["id"], stalled["responder_token"], rcvbuf=64 * 1024)
    payload = os.urandom(64 * 1024)
    block = frame(BINARY, payload)
    sent, stop = [0], threading.Event()
    th = threading.Thread(target=push, args=(tx, block, 1 << 20, sent, stop), daemon=True)
    th.start()
    # The relay stops reading the sender: what it got in levels off.
    last, steady_since = -1, None
    deadline = time.monotonic() + relaytest.TIMEOUT
    while True:
        assert time.monotonic() < deadline, "the sender was never throttled (%d sent)" % sent[0]
        time.sleep(0.2)
        if sent[0] == last:
            steady_since = steady_since or time.monotonic()
            if time.monotonic() - steady_since >= 1.0:
                break
        else:
            last, steady_since = sent[0], None
    paused = sent[0]

    # Worker 1 relays meanwhile, every byte intact.
    took, ok = timed_transfer(relay, busy[1], total)
    assert ok, "corrupted while the other worker's session was paused"
    assert sent[0] == paused, "the stalled sender moved: %d -> %d" % (paused, sent[0])
    print("workers: 64 MiB on worker 1 took %.2f s alone, %.2f s with worker 0's session paused "
          "(%.0f%% of alone)" % (alone, took, 100 * alone / took))

    # The stalled receiver now reads: the sender finishes its frame, and
    # everything it sent arrives.
    stop.set()
    hasher = wsraw.StreamHasher()
    buf = bytearray(MIB)
    rx.sock.settimeout(relaytest.TIMEOUT)
    while th.is_alive() or hasher.payload_bytes < (sent[0] // len(block)) * len(payload):
        n = rx.sock.recv_into(buf)
        assert n > 0
        hasher.feed(memoryview(buf)[:n])
    frames = sent[0] // len(block)
    assert sent[0] == frames * len(block) and hasher.messages == frames
    assert hasher.hexdigest() == hashlib.sha256(payload * frames).hexdigest()


# ---- the alternative acceptor ---------------------------------------------------------------------

def test_reuseport_accept_mode_relays_and_drains(start_relay):
    """--accept reuseport (a listening socket per worker, kept to measure
    against the one acceptor): sessions on every worker relay, moves still
    bring peers home, and SIGTERM drains it."""
    relay = start(start_relay, "--accept", "reuseport", "--shutdown-grace", "1s")
    assert relay.listening["accept"] == "reuseport"
    adm = wsraw.Admin(relay)
    for w, (s,) in sessions_by_home(adm, 1).items():
        a, b = pair(relay, s)
        echo_check(a, b, os.urandom(5000))
        echo_check(b, a, os.urandom(70000))
        assert {x for x, _ in attached_on(relay, s["id"], 2)} == {w}
        a.close(1000)
        assert b.expect_close() == 1000
    adm.close()
