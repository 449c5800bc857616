"""Backpressure: a fast sender and a slow receiver on one session.

A raw socket pushes 1 GiB of pre-masked 64 KiB binary messages as fast as
the kernel takes them; the receiver reads a trickle for a few seconds, then
drains at full speed.  The relay must throttle the sender (stop reading it
while the receiver's write queue is full) instead of buffering: its RSS,
read from /proc, stays flat after warm-up, the sender spends the slow phase
blocked with a full send buffer, and every byte arrives (SHA-256 over the
payloads, message count and types checked).

The relay runs --plain so the test measures buffering, not TLS speed.
AddressSanitizer's quarantine (freed memory kept poisoned, 256 MiB by
default) would read as growth in RSS, so it is made small for this relay.
"""

import fcntl
import hashlib
import os
import select
import termios
import threading
import time

import relaytest
import wsraw
from wsraw import BINARY, frame

MIB = 1 << 20
TOTAL = 1024 * MIB       # pushed by the sender
MSG = 64 * 1024          # one message, one frame
DISTINCT = 16            # distinct pre-masked frames, sent in turn
SLOW_SECONDS = 4.0
SLOW_READ = 16 * 1024    # bytes per slow read ...
SLOW_EVERY = 0.05        # ... every 50 ms: about 320 KB/s
RSS_SLACK = 64 * MIB


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def outq(sock):
    """Bytes in the socket's send queue not yet acknowledged by the peer."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int.from_bytes(buf, "little")


def test_slow_receiver_throttles_sender_and_rss_stays_flat(start_relay):
    relay = start_relay(plain=True, log_level="info",
                        env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:"
                                             "quarantine_size_mb=4:thread_local_quarantine_size_kb=64"})
    adm = wsraw.Admin(relay)
    s = adm.create()
    adm.close()
    tx = wsraw.raw_peer(relay, s["id"], s["initiator_token"])
    rx = wsraw.raw_peer(relay, s["id"], s["responder_token"], rcvbuf=64 * 1024)
    assert not rx.reader.buf, "no data may precede the first message"

    payloads = [os.urandom(MSG) for _ in range(DISTINCT)]
    block = b"".join(frame(BINARY, p) for p in payloads)  # pre-masked, ~1 MiB
    rounds = TOTAL // (MSG * DISTINCT)
    want = hashlib.sha256()
    unit = b"".join(payloads)
    for _ in range(rounds):
        want.update(unit)

    sent = [0]              # bytes handed to the kernel by the sender
    slow_until = [None]
    blocked_in_slow = [0.0]  # seconds the sender waited for room in the slow phase
    err = []

    def sender():
        try:
            tx.sock.setblocking(False)
            view = memoryview(block)
            for _ in range(rounds):
                off = 0
                while off < len(view):
                    try:
                        n = tx.sock.send(view[off:])
                        off += n
                        sent[0] += n
                    except BlockingIOError:
                        t0 = time.monotonic()
                        select.select([], [tx.sock], [], 1.0)
                        if time.monotonic() < slow_until[0]:
                            blocked_in_slow[0] += time.monotonic() - t0
        except Exception as e:  # reported by the main thread
            err.append(e)

    samples = []  # the relay's RSS every 50 ms
    stop_sampling = threading.Event()

    def sampler():
        while not stop_sampling.is_set():
            samples.append(rss(relay.proc.pid))
            time.sleep(0.05)

    hasher = wsraw.StreamHasher()
    received = [0]
    buf = bytearray(MIB)

    def read_some(limit, timeout):
        rx.sock.settimeout(timeout)
        n = rx.sock.recv_into(buf, limit)
        assert n > 0, "relay closed the receiver"
        hasher.feed(memoryview(buf)[:n])
        received[0] += n

    t_start = time.monotonic()
    threading.Thread(target=sampler, daemon=True).start()
    slow_until[0] = time.monotonic() + SLOW_SECONDS
    snd = threading.Thread(target=sender, daemon=True)
    snd.start()
    try:
        # Slow phase: a trickle.  Warm-up is the first second of it: by
        # then every queue on the path has filled.
        warm_rss = None
        while time.monotonic() < slow_until[0]:
            read_some(SLOW_READ, relaytest.TIMEOUT)
            time.sleep(SLOW_EVERY)
            if warm_rss is None and time.monotonic() - t_start >= 1.0:
                warm_rss = rss(relay.proc.pid)
        in_flight = sent[0] - received[0]
        sender_outq = outq(tx.sock)
        slow_received = received[0]
        # Drain: read everything at full speed.
        deadline = time.monotonic() + 90
        while hasher.payload_bytes < TOTAL:
            assert time.monotonic() < deadline, "drain too slow: %d of %d" % (
                hasher.payload_bytes, TOTAL)
            read_some(len(buf), relaytest.TIMEOUT)
        snd.join(relaytest.TIMEOUT)
        assert not snd.is_alive() and not err, err
    finally:
        stop_sampling.set()
    elapsed = time.monotonic() - t_start

    # Every byte, in order, as whole binary messages.
    assert hasher.payload_bytes == TOTAL
    assert hasher.hexdigest() == want.hexdigest()
    assert hasher.messages == TOTAL // MSG and hasher.types == {BINARY: TOTAL // MSG}

    # The sender was throttled to the receiver's pace during the slow phase:
    # what it got into the pipe is bounded by the queues on the path, not
    # by how fast it can write; it spent most of that time blocked with a
    # full send buffer.
    assert in_flight < 64 * MIB, (in_flight, slow_received)
    assert blocked_in_slow[0] >= 0.5 * SLOW_SECONDS, blocked_in_slow[0]
    assert sender_outq > 0, sender_outq

    # The relay's memory stayed flat while 1 GiB went through.
    peak = max(samples)
    assert warm_rss is not None
    growth = peak - warm_rss
    print("backpressure: %.1f s, warm RSS %.1f MiB, peak %.1f MiB (+%.1f), in flight after slow "
          "phase %.1f MiB, sender blocked %.1f s of %.1f s slow phase" % (
              elapsed, warm_rss / MIB, peak / MIB, growth / MIB, in_flight / MIB,
              blocked_in_slow[0], SLOW_SECONDS))
    assert growth < RSS_SLACK, (warm_rss, peak)
    tx.close(1000)
    assert rx.expect_close() == 1000
