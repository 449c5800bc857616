"""`relay pubsub-dial`: a session's messages to and from Redis pub/sub.

A real redis-server (Debian's, started on a free loopback port by
redistest.RedisServer) and python3-redis as the backend; Python
`websockets` as the other peer (the initiator), against the relay as
`./dev run` runs it.  pubsub-dial joins as the responder.

* Up: 10,000 messages from the WebSocket peer reach a Redis subscriber of
  PREFIX:SESSION:up in order and byte-equal (text ones on :up:text).
* Down: 10,000 messages published on :down (binary) and :down:text (text)
  reach the WebSocket peer in order, byte-equal, with their type.
* Redis killed and restarted while messages flow: the WebSocket stays
  open, the session stays open, messages flow again both ways after the
  reconnect, and what came meanwhile is counted as dropped.
* A peer that stops reading: the pubsub peer's memory stays bounded while
  100 MiB is published at it, and every message is either delivered or
  counted as dropped.
* A Redis lookup slower than --redis-timeout (a black-hole name server in
  a private resolv.conf): the next dial waits for it, no abort.
* Credentials: a password from a 0600 file or SWSRS_REDIS_PASSWORD (never
  on stderr), a world-readable file refused, a wrong password reported
  with Redis's words, a URL with credentials refused as usage.
"""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
import websockets

import peertest
from peertest import DevRelay, Peer, create_session, session_status
from redistest import RedisServer
from relaytest import TIMEOUT, TestError

MIB = 1 << 20


@pytest.fixture
def relay(tmp_path):
    r = DevRelay(tmp_path / "relay")
    yield r
    r.stop()


@pytest.fixture
def srv(tmp_path):
    s = RedisServer(tmp_path / "redis")
    yield s
    s.stop()


def chan(s, d, text=False):
    return "relay:%s:%s%s" % (s["SWSRS_SESSION"], d, ":text" if text else "")


def start_peer(relay, srv, s, args=(), env=None, wait_up=True):
    p = Peer("pubsub-dial", relay, s["SWSRS_SESSION"], s["SWSRS_RESPONDER_TOKEN"],
             args=["--redis", srv.url] + list(args), role="responder", env=env)
    p.wait_line(r'"joined the session"')
    if wait_up:
        p.wait_line(r'"redis link up"')
    return p


def ws_connect(relay, s, **kw):
    url = "%s/relay/%s" % (relay.base_url, s["SWSRS_SESSION"])
    return websockets.connect(url, ssl=relay.ssl_context(), max_size=None, compression=None,
                              ping_interval=None,
                              extra_headers={"Authorization": "Bearer " + s["SWSRS_INITIATOR_TOKEN"]},
                              **kw)


def counters(peer):
    c = peer.logs("pubsub counters")
    if not c:
        raise TestError("no pubsub counters\n" + peer.describe())
    return c[-1]


class Collector(threading.Thread):
    """Collects the messages of Redis channels (python3-redis) as
    (channel, bytes) pairs, subscribed before start() returns."""

    def __init__(self, srv, channels):
        super().__init__(daemon=True)
        # Not ignore_subscribe_messages=True: that swallows the confirmations
        # this waits for (and the wait would run to its deadline).
        self.ps = srv.client().pubsub()
        self.ps.subscribe(*channels)
        confirmed = 0
        deadline = time.monotonic() + TIMEOUT
        while confirmed < len(channels):  # before anyone publishes
            if time.monotonic() > deadline:
                raise TestError("Redis did not confirm the subscriptions")
            m = self.ps.get_message(timeout=1)
            confirmed += bool(m and m["type"] == "subscribe")
        self.got = []
        self.stop = False
        self.start()

    def run(self):
        while not self.stop:
            m = self.ps.get_message(timeout=0.2)
            if m and m["type"] == "message":
                self.got.append((m["channel"].decode(), m["data"]))

    def wait_for(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.got

    def close(self):
        self.stop = True
        self.join(timeout=5)
        self.ps.close()


def arun(coro, timeout=300):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def message(i):
    """Message i: its number then 0..299 random bytes; every fifth is text."""
    if i % 5 == 0:
        return ("%05d:" % i) + "é" * (i % 100)
    return b"%05d:" % i + os.urandom(i % 300)


def test_up_10000_messages_reach_a_subscriber_in_order(relay, srv):
    s = create_session(relay)
    col = Collector(srv, [chan(s, "up"), chan(s, "up", True)])
    peer = start_peer(relay, srv, s)
    msgs = [message(i) for i in range(10000)]

    async def body():
        async with ws_connect(relay, s) as ws:
            for m in msgs:
                await ws.send(m)
            deadline = time.monotonic() + 120
            while len(col.got) < len(msgs) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    try:
        arun(body())
        got = col.wait_for(len(msgs), timeout=5)
        want = [(chan(s, "up", isinstance(m, str)), m.encode() if isinstance(m, str) else m)
                for m in msgs]
        assert len(got) == len(want), (len(got), peer.describe())
        assert got == want
        peer.expect_exit(0)  # the initiator closed 1000: the relay passed it on
        c = counters(peer)
        assert c["messages_up"] == 10000 and c["dropped_up"] == 0 and c["unheard_up"] == 0, c
        assert c["bytes_up"] == sum(len(w[1]) for w in want), c
    finally:
        col.close()
        peertest.cleanup(peer)


def test_down_10000_messages_reach_the_peer_in_order(relay, srv):
    s = create_session(relay)
    peer = start_peer(relay, srv, s)
    msgs = [message(i) for i in range(10000)]
    pub = srv.client()

    async def body():
        got = []
        async with ws_connect(relay, s) as ws:
            # The session is open once the relay paired us; then publish in
            # rounds, each waiting for the peer to have what was sent (pub/sub
            # is at most once: a burst beyond the peer's queue is dropped).
            for start in range(0, len(msgs), 500):
                for m in msgs[start:start + 500]:
                    if isinstance(m, str):
                        n = pub.publish(chan(s, "down", True), m.encode())
                    else:
                        n = pub.publish(chan(s, "down"), m)
                    assert n == 1, "the peer is not subscribed"
                while len(got) < start + 500 and len(got) < len(msgs):
                    got.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
        return got
    try:
        got = arun(body())
        assert len(got) == len(msgs)
        for i, (g, m) in enumerate(zip(got, msgs)):
            assert type(g) is type(m) and g == m, "message %d differs" % i
        peer.expect_exit(0)
        c = counters(peer)
        assert c["messages_down"] == 10000 and c["dropped_down"] == 0, c
        assert c["dropped_invalid"] == 0 and c["dropped_oversize"] == 0, c
    finally:
        peertest.cleanup(peer)


def test_redis_restart_keeps_the_session_and_counts_drops(relay, srv):
    s = create_session(relay)
    peer = start_peer(relay, srv, s, args=["--redis-timeout", "2s"])

    async def body():
        async with ws_connect(relay, s) as ws:
            sent = 0

            async def send_for(seconds):
                nonlocal sent
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    await ws.send(b"m%d" % sent)
                    sent += 1
                    await asyncio.sleep(0.005)

            await send_for(0.5)
            srv.stop()  # SIGKILL: connections reset, nothing said
            await send_for(1.0)
            srv.start()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: peer.wait_line(r'"redis_connects":2'))
            # After the reconnect: up again (a fresh subscriber sees new messages) ...
            col = Collector(srv, [chan(s, "up")])
            try:
                marker = b"after-restart"
                deadline = time.monotonic() + TIMEOUT
                while not any(m == marker for _, m in col.got) and time.monotonic() < deadline:
                    await ws.send(marker)
                    await asyncio.sleep(0.1)
                assert any(m == marker for _, m in col.got), peer.describe()
            finally:
                col.close()
            # ... and down again.
            assert srv.client().publish(chan(s, "down"), b"down-after-restart") == 1
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"down-after-restart"
            assert ws.open
            st = session_status(relay, s["SWSRS_SESSION"])
            assert st["state"] == "open" and st["responder_connected"], st
            return sent
    try:
        arun(body())
        peer.expect_exit(0)
        c = counters(peer)
        assert c["redis_connects"] == 2, c
        assert c["tunnels"] == 1, c  # the WebSocket was never re-joined
        assert c["dropped_up"] > 0, c  # sent while Redis was down
        downs = peer.logs("redis link down; the session stays joined")
        assert downs and "lost" in downs[0]["error"], peer.describe()
    finally:
        peertest.cleanup(peer)


def test_slow_peer_bounded_memory_and_counted_drops(relay, srv):
    s = create_session(relay)
    # AddressSanitizer keeps freed memory aside (256 MiB by default), which
    # would read as growth: keep its quarantine small here.
    asan = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=4:"
                            "thread_local_quarantine_size_kb=64"}
    peer = start_peer(relay, srv, s, env=asan)
    pub = srv.client()
    n, size = 1600, 64 * 1024  # 100 MiB at a peer that reads nothing

    async def body():
        # max_queue=1 and a small read_limit: websockets stops reading the
        # socket at once, so the relay's queue and then ours fill up.
        ws = await ws_connect(relay, s, max_queue=1, read_limit=2 ** 14)
        if True:  # never closed: the end is a reset (below)
            loop = asyncio.get_running_loop()
            # Some published first, for the queues to fill; then the baseline.
            blob = os.urandom(size)
            heard = 0
            for _ in range(64):
                heard += await loop.run_in_executor(None, pub.publish, chan(s, "down"), blob)
            await asyncio.sleep(1)
            base = peertest.rss(peer.pid)
            peak = base
            for i in range(64, n):
                heard += await loop.run_in_executor(None, pub.publish, chan(s, "down"), blob)
                # At most about 64 MiB/s: Redis itself disconnects a subscriber
                # that lets 32 MiB pile up at the server (client-output-buffer-
                # limit), and the sanitizer build reads slower than Redis writes.
                await asyncio.sleep(0.001)
                if i % 100 == 0:
                    peak = max(peak, peertest.rss(peer.pid))
            await asyncio.sleep(0.5)
            peak = max(peak, peertest.rss(peer.pid))
            assert heard == n, "the peer missed publishes: it was disconnected\n" + peer.describe()
            ws.transport.abort()  # never read: it goes by a reset
            return base, peak
    try:
        base, peak = arun(body())
        assert peak - base < 24 * MIB, (base, peak)
        peer.expect_exit(0)  # the relay closed it 1000: its peer left
        c = counters(peer)
        assert c["dropped_down"] > 0, c
        assert c["messages_down"] + c["dropped_down"] == n, c
        # What the queues and the sockets' kernel buffers hold, not more.
        assert c["messages_down"] * size < 32 * MIB, c
    finally:
        peertest.cleanup(peer)


# ---- credentials -----------------------------------------------------------------------


@pytest.fixture
def authsrv(tmp_path):
    s = RedisServer(tmp_path / "redis-auth", password="s3cret-redis-Pw")
    yield s
    s.stop()


def test_lookup_slower_than_the_redis_timeout(relay, tmp_path):
    """A Redis host name whose lookup outlives --redis-timeout: the lookup
    cannot be cancelled once a thread runs it, and the next dial waits for
    it to come back instead of handing libuv the same request again (which
    aborted in uv__getaddrinfo_done when the first answer came, 4 s in).
    The name server is a black hole of the test's (nothing answers on
    127.0.0.X:53) named by a resolv.conf bind-mounted in a mount namespace
    of the command's own (unshare -m)."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a private resolv.conf")
    ns_ip = "127.0.0.%d" % (100 + os.getpid() % 150)
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        hole.bind((ns_ip, 53))
    except OSError as e:
        pytest.skip("cannot bind %s:53: %s" % (ns_ip, e))
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver %s\n" % ns_ip)
    s = create_session(relay)
    env = dict(os.environ, SWSRS_URL=relay.base_url, SWSRS_SESSION=s["SWSRS_SESSION"],
               SWSRS_TOKEN=s["SWSRS_RESPONDER_TOKEN"], RES_OPTIONS="timeout:4 attempts:1",
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
         str(conf), peertest.RELAY_BIN, "pubsub-dial", "--redis", "redis://redis.test:6379",
         "--redis-timeout", "100ms", "--ca", relay.ca, "--role", "responder",
         "--log-level", "info"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            proc.wait(timeout=6.5)  # past the first answer (4 s) and the next dial
        except subprocess.TimeoutExpired:
            pass
        alive = proc.poll() is None
        proc.terminate()
        err = proc.communicate(timeout=TIMEOUT)[1].decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        hole.close()
    if err.startswith(("unshare:", "mount:")):
        pytest.skip("no private mount namespace here: " + err.splitlines()[0])
    assert alive, err[-3000:]
    assert "Assertion" not in err and "Sanitizer" not in err, err[-3000:]
    # The second attempt began only once the first lookup was back (4 s).
    fails = [json.loads(l) for l in err.splitlines()
             if '"timed out connecting to redis"' in l]
    assert len(fails) >= 2, err[-3000:]
    t = [time.mktime(time.strptime(f["time"][:19], "%Y-%m-%dT%H:%M:%S")) +
         float(f["time"][19:23]) for f in fails[:2]]
    assert t[1] - t[0] >= 3.0, (t, err[-3000:])


def test_password_from_file_and_environment_never_shown(relay, authsrv, tmp_path):
    pwfile = tmp_path / "redis.pw"
    pwfile.write_text(authsrv.password + "\n")
    os.chmod(pwfile, 0o600)
    for how in ("file", "env"):
        s = create_session(relay)
        args = ["--redis-password-file", str(pwfile)] if how == "file" else []
        env = {"SWSRS_REDIS_PASSWORD": authsrv.password} if how == "env" else {}
        col = Collector(authsrv, [chan(s, "up")])
        peer = start_peer(relay, authsrv, s, args=args, env=env)
        try:
            async def body():
                async with ws_connect(relay, s) as ws:
                    await ws.send(b"authenticated")
                    deadline = time.monotonic() + TIMEOUT
                    while not col.got and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
            arun(body())
            assert col.got == [(chan(s, "up"), b"authenticated")], how
            peer.expect_exit(0)
            assert authsrv.password not in peer.stderr
            assert authsrv.password not in " ".join(peer.argv)
        finally:
            col.close()
            peertest.cleanup(peer)


def test_password_refusals(relay, authsrv, tmp_path):
    s = create_session(relay)
    loose = tmp_path / "loose.pw"
    loose.write_text(authsrv.password)
    os.chmod(loose, 0o644)
    p = Peer("pubsub-dial", relay, s["SWSRS_SESSION"], s["SWSRS_RESPONDER_TOKEN"],
             args=["--redis", authsrv.url, "--redis-password-file", str(loose)])
    p.expect_exit(1)
    assert any("readable by its owner only" in l for l in p.plain_lines()), p.describe()

    wrong = Peer("pubsub-dial", relay, s["SWSRS_SESSION"], s["SWSRS_RESPONDER_TOKEN"],
                 args=["--redis", authsrv.url], env={"SWSRS_REDIS_PASSWORD": "not-the-password"})
    try:
        line = wrong.wait_line(r'"redis link failed".*refused AUTH')
        assert "WRONGPASS" in line.string or "invalid" in line.string, line.string
        assert "not-the-password" not in wrong.stderr
        assert wrong.stop() == 0  # SIGTERM: a clean end of a joined peer
    finally:
        peertest.cleanup(wrong)

    url = "redis://user:%s@127.0.0.1:%d" % (authsrv.password, authsrv.port)
    bad = Peer("pubsub-dial", relay, s["SWSRS_SESSION"], s["SWSRS_RESPONDER_TOKEN"],
               args=["--redis", url])
    bad.expect_exit(2)
    assert any("must not carry credentials" in l for l in bad.plain_lines()), bad.describe()
    assert authsrv.password not in bad.stderr
