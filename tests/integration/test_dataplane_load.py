"""The data plane under load and across a controller outage, with Python
`websockets` peers over TLS (verified against the test CA).

* 1,000 sessions open at once on one relay with 4 workers (2,000 TLS
  WebSockets), each moving 1 MiB in each direction; every byte
  SHA-256-checked per session and direction, zero errors, and the relay's
  own counters agree.  The acceptor spreads connections over the workers,
  so most sessions have a peer that landed away from the session's home
  worker and moved there: the logs show both peers of every session on
  one worker, and how many moved.
* 100 open sessions survive the controller being SIGKILLed: they keep
  relaying, new connections and admin calls get 503, and once the
  controller is back (same --state-dir) fresh and old sessions pair again.

Sizes and counts are fixed; the time they take is not asserted (only
bounded, so a hang fails).
"""

import asyncio
import hashlib
import os
import resource
import ssl
import struct
import time

import pytest
import websockets

import relaytest
import wsraw

MIB = 1 << 20
CHUNK = 64 * 1024


def raise_nofile(want):
    """Lets this process (and the relay it starts) hold `want` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        pytest.skip("RLIMIT_NOFILE hard limit %d is below %d" % (soft, want))


metrics = relaytest.metrics


class Peers:
    """websockets clients to one relay over TLS."""

    def __init__(self, relay, certs, connect_concurrency=50):
        self.relay = relay
        self.ctx = ssl.create_default_context(cafile=certs.ca_crt)
        self.sem = asyncio.Semaphore(connect_concurrency)

    async def connect(self, sid, token):
        async with self.sem:
            return await websockets.connect(
                "wss://127.0.0.1:%d/relay/%s" % (self.relay.port, sid), ssl=self.ctx,
                extra_headers=[("Authorization", "Bearer " + token)], max_size=None,
                compression=None, ping_interval=None, open_timeout=60, close_timeout=10)

    async def pair(self, s):
        a = await self.connect(s["id"], s["initiator_token"])
        b = await self.connect(s["id"], s["responder_token"])
        return a, b


def payload(base, session, direction, size):
    """size bytes unique to (session, direction): a tagged rotation of base."""
    k = (session * 7919 + direction * 104729) % len(base)
    return (struct.pack("!II", session, direction) + base[k:] + base[:k])[:size]


async def move(src, dst, data):
    """Sends data from src in CHUNK-sized binary messages while dst reads
    them; returns the SHA-256 of what dst received."""
    async def send():
        for i in range(0, len(data), CHUNK):
            await src.send(data[i:i + CHUNK])

    async def recv():
        h, n = hashlib.sha256(), 0
        while n < len(data):
            m = await dst.recv()
            assert isinstance(m, bytes), type(m)
            h.update(m)
            n += len(m)
        assert n == len(data), (n, len(data))
        return h.hexdigest()

    return (await asyncio.gather(send(), recv()))[1]


async def both_ways(a, b, base, i, size):
    """Moves size bytes each way at once; asserts both hashes."""
    up, down = payload(base, i, 0, size), payload(base, i, 1, size)
    got = await asyncio.gather(move(a, b, up), move(b, a, down))
    assert got[0] == hashlib.sha256(up).hexdigest(), "session %d a->b corrupted" % i
    assert got[1] == hashlib.sha256(down).hexdigest(), "session %d b->a corrupted" % i


def arun(coro, timeout):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---- 1,000 concurrent sessions ------------------------------------------------------

N_SESSIONS = 1000


def test_thousand_concurrent_sessions_one_mib_each_way(certs):
    raise_nofile(2 * N_SESSIONS + 1024)
    relay = relaytest.Relay(certs=certs, log_level="info",
                            extra=["--shutdown-grace", "2s", "--workers", "4"])
    try:
        adm = wsraw.Admin(relay)
        sessions = [adm.create() for _ in range(N_SESSIONS)]
        base = os.urandom(MIB)

        async def go():
            peers = Peers(relay, certs)
            conns = await asyncio.gather(*(peers.pair(s) for s in sessions))
            # All 2,000 peers are connected at the same time.
            m = await asyncio.get_running_loop().run_in_executor(None, metrics, relay)
            assert m["relay_peers"] == 2 * N_SESSIONS and m["relay_sessions"] == N_SESSIONS, m
            xfer = asyncio.Semaphore(40)  # bounds this process's memory, not the relay's load

            async def one(i, a, b):
                async with xfer:
                    await both_ways(a, b, base, i, MIB)
                await a.close(1000)
                await asyncio.wait_for(b.wait_closed(), 30)
                assert b.close_code == 1000, (i, b.close_code)

            res = await asyncio.gather(*(one(i, a, b) for i, (a, b) in enumerate(conns)),
                                       return_exceptions=True)
            errors = [(i, repr(e)) for i, e in enumerate(res) if e is not None]
            assert not errors, "%d sessions failed, first: %s" % (len(errors), errors[:5])

        t0 = time.monotonic()
        arun(go(), 600)
        with open("/proc/%d/status" % relay.proc.pid) as f:
            hwm = [l.split()[1] for l in f if l.startswith("VmHWM:")][0]
        print("load: %d sessions, 2 MiB each over TLS, %.1f s connect+transfer; relay VmHWM "
              "%d MiB" % (N_SESSIONS, time.monotonic() - t0, int(hwm) // 1024))

        # The relay counted every byte; counters reach the controller when
        # peers leave, so the listing soon shows 1 MiB each way for each.
        deadline = time.monotonic() + relaytest.TIMEOUT
        while True:
            r = adm.request("GET", "/admin/sessions")
            assert r.status == 200, r
            listed = {st["id"]: st for st in r.json()["sessions"]}
            mine = [listed.get(s["id"]) for s in sessions]
            late = [st for st in mine if not st or st["bytes_in"] != MIB or
                    st["state"] != "pending"]
            if not late:
                break
            assert time.monotonic() < deadline, "%d sessions not settled: %r" % (len(late), late[:3])
            time.sleep(0.2)
        assert all(st["bytes_out"] == MIB for st in mine)
        m = metrics(relay)
        assert m["relay_ws_bytes_in_total"] == 2 * MIB * N_SESSIONS, m
        assert m["relay_ws_bytes_out_total"] == 2 * MIB * N_SESSIONS, m
        assert m["relay_ws_protocol_errors_total"] == 0, m
        # Both peers of each session met on one worker, whichever worker
        # each connection landed on; many landed elsewhere and moved.
        where = {}
        for l in relay.find_logs(msg="peer attached"):
            where.setdefault(l["session"], []).append((l["worker"], l["arrived_on"]))
        assert len(where) == N_SESSIONS
        assert all(len(v) == 2 and v[0][0] == v[1][0] for v in where.values()), where
        moved = sum(w != a for v in where.values() for w, a in v)
        split = sum(v[0][1] != v[1][1] for v in where.values())
        assert moved == m["relay_ws_moves_total"] and moved > N_SESSIONS // 2, (moved, m)
        assert len({v[0][0] for v in where.values()}) == 4
        print("load: %d of %d peers moved to their session's home worker; %d sessions' peers "
              "landed on different workers" % (moved, 2 * N_SESSIONS, split))
        adm.close()
    finally:
        try:
            if relay.alive():
                relay.stop()
        finally:
            relay.kill()


# ---- controller outage ----------------------------------------------------------------------

N_OPEN = 100


def test_open_sessions_survive_controller_loss(tmp_path, certs):
    raise_nofile(4 * N_OPEN + 1024)
    rc = wsraw.RemoteControlled(tmp_path, certs=certs)
    try:
        rc.start_controller()
        adm = wsraw.Admin(rc.relay)
        sessions = [adm.create() for _ in range(N_OPEN)]
        spare = adm.create()  # created, never connected before the outage
        base = os.urandom(MIB)
        size = 128 * 1024

        async def phase1():
            peers = Peers(rc.relay, certs)
            conns = await asyncio.gather(*(peers.pair(s) for s in sessions))
            await asyncio.gather(*(both_ways(a, b, base, i, size)
                                   for i, (a, b) in enumerate(conns)))
            return peers, conns

        async def everything():
            loop = asyncio.get_running_loop()
            peers, conns = await phase1()
            await loop.run_in_executor(None, rc.kill_controller)

            # Open sessions keep flowing, every byte checked.
            await asyncio.gather(*(both_ways(a, b, base, 1000 + i, size)
                                   for i, (a, b) in enumerate(conns)))
            # New connections and admin calls fail fast with 503.
            for s, tok in ((spare, spare["initiator_token"]),
                           (sessions[0], sessions[0]["initiator_token"])):
                with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
                    await peers.connect(s["id"], tok)
                assert e.value.status_code == 503
            r = await loop.run_in_executor(None, adm.request, "POST", "/admin/sessions")
            relaytest.assert_error_body(r, 503)
            assert (await loop.run_in_executor(None, rc.relay.get, "/readyz")).status == 503

            # The controller comes back with its registry.
            await loop.run_in_executor(None, rc.start_controller)
            st = await loop.run_in_executor(None, adm.status, sessions[5]["id"])
            # The relay re-announced the slots it holds.
            assert st["state"] == "open", st
            # A held slot is still refused, now by the controller's view too.
            with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
                await peers.connect(sessions[5]["id"], sessions[5]["responder_token"])
            assert e.value.status_code == 409
            # Fresh session.
            fresh = await loop.run_in_executor(None, adm.create)
            a, b = await peers.pair(fresh)
            await both_ways(a, b, base, 5000, size)
            # The spare made before the outage.
            c, d = await peers.pair(spare)
            await both_ways(c, d, base, 5001, size)
            # An old session re-paired: both leave, both come back.
            a0, b0 = conns[0]
            await a0.close(1000)
            await asyncio.wait_for(b0.wait_closed(), 10)
            assert b0.close_code == 1000
            await loop.run_in_executor(None, lambda: adm.wait_status(
                sessions[0]["id"], lambda st: st["state"] == "pending"))
            conns[0] = await peers.pair(sessions[0])
            # Everything open still flows.
            await asyncio.gather(*(both_ways(x, y, base, 2000 + i, size)
                                   for i, (x, y) in enumerate(conns + [(a, b), (c, d)])))
            for x, y in conns + [(a, b), (c, d)]:
                await x.close(1000)
                await asyncio.wait_for(y.wait_closed(), 10)
                assert y.close_code == 1000

        arun(everything(), 300)
        adm.close()
    finally:
        rc.stop()
