"""Restart without refusing, under load (issue 13, point 2, acceptance).

Two `relay serve` processes share the public and tunnel sockets as
systemd's relay.socket hands them out (the test plays systemd's part, as
test_activation.py does), with a remote `relay-controller`.  While a load
generator (asyncio, plain HTTP/1.1 and WebSocket written here) creates
sessions and opens both peers of each at a target of 200 upgrades/s, and
100 sessions opened on the old relay stream messages, the new relay is
started and the old one stopped (SIGTERM, --shutdown-grace 6s).

Asserted: no connection attempt fails — no refusal, reset, timeout or
status other than 201/101 — and every one of the 100 streaming sessions
either finishes within the grace period (half of them end themselves,
1000) or is closed 1001 by the old relay at its end, with every message
before that delivered intact (hashed).  A peer of the load that is told
1001 before its partner arrived (it was let into the old relay as it
stopped) redials with the same token, as clients do; those redials are
counted, not failures.  The counts are printed (docs/DESIGN.md §16 has a
run's).
"""

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import time

import grpcpeer as gp
import relaytest
import wsraw

T = relaytest.TIMEOUT
RATE = 100            # sessions per second: two upgrades each
LOAD_S = 14.0         # how long the load runs
SWAP_AT = 3.0         # the new relay starts ...
STOP_AT = 4.0         # ... and the old one is stopped
GRACE_S = 6
STREAMS = 100
FINISH_AT = STOP_AT + GRACE_S / 2  # half the streams end themselves then
MSG = 1024
TICK = 0.1            # each stream sends a message this often


def listening_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    return s


def activated_relay(socks, extra):
    fds = [s.fileno() for s in socks]
    argv = [relaytest.RELAY_BIN, "serve", "--listen",
            "127.0.0.1:%d" % socks[0].getsockname()[1], "--log-level", "info", "--no-auth",
            "--plain"] + list(extra)
    moves = " ".join("%d>&%d" % (3 + i, fd) for i, fd in enumerate(fds))
    shell = ["bash", "-c", 'LISTEN_PID=$$ exec "$@" %s' % moves, "bash"] + argv
    p = relaytest.LoggedProcess(shell, env={"LISTEN_FDS": str(len(socks))}, name="relay",
                                pass_fds=fds)
    p.wait_for_log(msg="listening")
    return p


class Counts:
    def __init__(self):
        self.attempts = self.failures = self.redials = self.sessions_done = 0
        self.upgrades = 0
        self.errors = []

    def fail(self, what):
        self.failures += 1
        if len(self.errors) < 20:
            self.errors.append(what)


# ---- a minimal asyncio HTTP/1.1 + WebSocket client ------------------------------

async def http_exchange(port, head, counts):
    """One connection: sends head, reads the response head; (status,
    reader, writer) or None when the attempt failed."""
    counts.attempts += 1
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
        w.write(head)
        line = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), T)
    except Exception as e:  # refused, reset, timed out, closed early
        counts.fail("%s: %r" % (head.split(b"\r\n")[0].decode(), e))
        return None
    status = int(line.split(b" ", 2)[1])
    return status, r, w, line


async def create(port, counts):
    body = b"{}"
    head = (b"POST /admin/sessions HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n" + body)
    got = await http_exchange(port, head, counts)
    if not got:
        return None
    status, r, w, line = got
    try:
        rest = await asyncio.wait_for(r.read(), T)
    except Exception as e:
        counts.fail("create body: %r" % e)
        return None
    finally:
        w.close()
    if status != 201:
        counts.fail("create: %d %r" % (status, rest[:200]))
        return None
    return json.loads(rest)


async def upgrade(port, sid, token, counts):
    key = base64.b64encode(os.urandom(16)).decode()
    head = ("GET /relay/%s HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            "Authorization: Bearer %s\r\n\r\n" % (sid, key, token)).encode()
    got = await http_exchange(port, head, counts)
    if not got:
        return None
    status, r, w, line = got
    if status != 101:
        w.close()
        return status
    counts.upgrades += 1
    return r, w


async def read_frame(r, timeout=T):
    b0, b1 = await asyncio.wait_for(r.readexactly(2), timeout)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    return b0 & 0x0F, await asyncio.wait_for(r.readexactly(n), timeout)


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


async def peer(port, sid, token, counts, retries=10):
    """An open peer (r, w), redialing (same token) when the relay says 1001
    before the partner came, or the slot is still taken by such a peer."""
    for _ in range(retries):
        got = await upgrade(port, sid, token, counts)
        if got is None:
            return None
        if isinstance(got, int):
            if got in (409, 503):  # the slot's previous connection is still going
                counts.redials += 1
                await asyncio.sleep(0.05)
                continue
            counts.fail("upgrade: %d" % got)
            return None
        return got
    counts.fail("upgrade: gave up after %d redials" % retries)
    return None


# ---- the load: sessions created, paired, one message each way, closed ------------

async def one_session(port, counts):
    s = await create(port, counts)
    if not s:
        return
    for attempt in range(5):
        a = await peer(port, s["id"], s["initiator_token"], counts)
        b = a and await peer(port, s["id"], s["responder_token"], counts)
        if not a or not b:
            if a:
                a[1].close()
            return
        data = os.urandom(256)
        a[1].write(wsraw.frame(2, data))
        # b should get the message; either peer may instead hear 1001 (the
        # pair was split by the handover: one let into the old relay as it
        # stopped, its partner onto the new one).
        ra, rb = (asyncio.ensure_future(read_frame(x[0])) for x in (a, b))
        done, _ = await asyncio.wait({ra, rb}, timeout=T, return_when=asyncio.FIRST_COMPLETED)
        first = rb if rb in done else ra if ra in done else None
        ra.cancel()
        rb.cancel()
        try:
            op, got = first.result() if first else (None, b"")
        except Exception as e:
            op, got = None, repr(e).encode()
        if op == 8 and close_code(got) == 1001 and attempt < 4:
            counts.redials += 1  # both redial, with their tokens
            a[1].close()
            b[1].close()
            await asyncio.sleep(0.05)
            continue
        if first is not rb:
            counts.fail("load read: %s %r" % (op, got[:60]))
            return
        if op != 2 or got != data:
            counts.fail("load message: op %d %r" % (op, got[:40]))
        a[1].write(wsraw.frame(8, wsraw.close_payload(1000)))
        try:
            await read_frame(b[0])
        except Exception:
            pass
        a[1].close()
        b[1].close()
        counts.sessions_done += 1
        return


async def load(port, counts, stop_at):
    tasks = set()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < stop_at:
        due = t0 + n / RATE
        await asyncio.sleep(max(0, due - time.monotonic()))
        t = asyncio.ensure_future(one_session(port, counts))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.wait(tasks, timeout=T)
    return n


# ---- the 100 streaming sessions ---------------------------------------------------

async def stream(port, s, finish_at, t0, outcome):
    """The initiator sends numbered messages; the responder checks each
    (its hash) in order.  Ends at finish_at (None: when the relay closes)."""
    a = await upgrade(port, s["id"], s["initiator_token"], Counts())
    b = await upgrade(port, s["id"], s["responder_token"], Counts())
    if isinstance(a, (int, type(None))) or isinstance(b, (int, type(None))):
        outcome.append(("setup failed", 0))
        return
    sent = 0

    async def sender():
        nonlocal sent
        while finish_at is None or time.monotonic() - t0 < finish_at:
            payload = hashlib.sha256(b"%s/%d" % (s["id"].encode(), sent)).digest() * (MSG // 32)
            a[1].write(wsraw.frame(2, payload))
            sent += 1
            await asyncio.sleep(TICK)
        a[1].write(wsraw.frame(8, wsraw.close_payload(1000)))

    task = asyncio.ensure_future(sender())
    got = 0
    result = None
    try:
        while result is None:
            op, payload = await read_frame(b[0], timeout=GRACE_S + T)
            if op == 2:
                want = hashlib.sha256(b"%s/%d" % (s["id"].encode(), got)).digest() * (MSG // 32)
                if payload != want:
                    result = "corrupt message %d" % got
                got += 1
            elif op == 8:
                code = close_code(payload)
                result = "finished" if code == 1000 and finish_at else \
                    "1001" if code == 1001 else "close %r" % code
    except Exception as e:
        result = "error %r" % e
    task.cancel()
    a[1].close()
    b[1].close()
    outcome.append((result, got))


async def scenario(port, swap, counts, outcome):
    sessions = [await create(port, Counts()) for _ in range(STREAMS)]
    assert all(sessions)
    t0 = time.monotonic()
    streams = [asyncio.ensure_future(stream(port, s, FINISH_AT if i % 2 else None, t0, outcome))
               for i, s in enumerate(sessions)]
    loader = asyncio.ensure_future(load(port, counts, LOAD_S))
    await swap(t0)
    started = await loader
    await asyncio.wait(streams, timeout=GRACE_S + 2 * T)
    return started


def test_restart_under_load(tmp_path):
    pki = gp.Pki(tmp_path / "pki")
    crt, key = pki.relay("relay-h")
    public, tunnel = listening_socket(), listening_socket()
    port, tport = public.getsockname()[1], tunnel.getsockname()[1]
    remote = ["--tunnel-listen", "127.0.0.1:%d" % tport, "--tunnel-cert", crt, "--tunnel-key", key,
              "--controller-ca", pki.ca_crt, "--node-id", "relay-h",
              "--shutdown-grace", "%ds" % GRACE_S, "--max-conns-per-ip", "0"]
    a = activated_relay([public, tunnel], remote)
    procs = [a]
    try:
        ctl = relaytest.Controller(
            ["run", "--relay", "127.0.0.1:%d" % tport, "--ca-dir", pki.ca_dir,
             "--relay-server-name", "127.0.0.1", "--state-dir", str(tmp_path / "state"),
             "--accept-unauthenticated", "--backoff-base", "100ms", "--backoff-max", "1s",
             "--log-level", "info"])
        procs.append(ctl)
        a.wait_for_log(msg="controller link up")
        box = {}

        async def swap(t0):
            await asyncio.sleep(max(0, t0 + SWAP_AT - time.monotonic()))
            box["b"] = await asyncio.get_event_loop().run_in_executor(
                None, activated_relay, [public, tunnel], remote)
            procs.append(box["b"])
            await asyncio.sleep(max(0, t0 + STOP_AT - time.monotonic()))
            a.proc.send_signal(signal.SIGTERM)
            box["stopped"] = time.monotonic() - t0

        counts, outcome = Counts(), []
        t_start = time.monotonic()
        started = asyncio.run(scenario(port, swap, counts, outcome))
        took = time.monotonic() - t_start
        b = box["b"]
        assert a.wait(timeout=T) == 0
        a.check_sanitizers()
        kinds = {}
        for result, _ in outcome:
            kinds[result] = kinds.get(result, 0) + 1
        summary = {"load_sessions_started": started, "load_sessions_done": counts.sessions_done,
                   "connection_attempts": counts.attempts, "upgrades": counts.upgrades,
                   "upgrades_per_s": round(counts.upgrades / LOAD_S, 1),
                   "failed_attempts": counts.failures, "redials": counts.redials,
                   "streams": kinds, "messages_streamed": sum(g for _, g in outcome),
                   "seconds": round(took, 1)}
        print("handover under load: " + json.dumps(summary, sort_keys=True))
        assert counts.failures == 0, (summary, counts.errors)
        assert len(outcome) == STREAMS, summary
        assert set(kinds) <= {"finished", "1001"}, summary
        assert kinds.get("finished") == STREAMS // 2, summary
        assert counts.sessions_done + counts.failures == started, summary
        b.wait_for_log(msg="controller link up")
        b.stop()
        b.check_sanitizers()
    finally:
        for p in procs:
            p.kill()
        public.close()
        tunnel.close()


def test_connections_let_in_before_the_stop_are_answered(start_relay):
    """A connection the old relay accepted before it stopped, but on which
    nothing was asked yet (a client between its connect and its request),
    is answered if it asks within 500 ms: a request gets its response
    (Connection: close), an upgrade its 101 — and, its partner not being
    here, 1001 at once, so it redials to the relay accepting now.  Fails
    before: both were closed unanswered (and an upgrade on a busy one was
    answered 503)."""
    r = start_relay(plain=True, extra=["--shutdown-grace", "5s"])
    s = gp.http(r, "POST", "/admin/sessions", b"{}").json()
    early_get, early_ws = relaytest.raw_connect(r.port), relaytest.raw_connect(r.port)
    time.sleep(0.2)  # accepted by now
    r.proc.send_signal(signal.SIGTERM)
    r.wait_for_log(msg="shutting down")
    time.sleep(0.05)  # the workers' shutdown has run; well within the 500 ms let in
    early_get.sendall(relaytest.http_request("GET", "/healthz"))
    resp = relaytest.read_response(early_get)
    assert resp.status == 200 and resp.header("Connection") == "close", resp
    ws = wsraw.WsConn(early_ws)
    got = ws.handshake("/relay/%s" % s["id"],
                       headers=[("Authorization", "Bearer " + s["initiator_token"])])
    assert got.status == 101, got
    assert ws.expect_close() == 1001
    assert r.wait(timeout=T) == 0
    r.check_sanitizers()
