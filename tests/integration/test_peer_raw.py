"""`relay raw`: standard input to the peer, the peer to standard output.

* 256 MiB piped through two `relay raw` processes (pipes on both ends),
  hashed on both sides: the same SHA-256, both exit 0, the sender after its
  EOF closed 1000 and the receiver after the close reached it.
* A lone peer that writes first loses nothing: it sends a file and reaches
  EOF before the other peer exists — 100 KiB, which the relay's hold
  buffer (256 KiB) takes whole, so the relay would read a close right
  behind it and forget it all, and 1 MiB, past the hold buffer, so the
  relay stops reading it; either way it must wait (not exit) until the
  other peer has joined, which then writes every byte to a file.  The
  relay's own counters agree.
* --keep-open: a side whose stdin ends at once (/dev/null) still receives
  everything until the peer closes.
"""

import hashlib
import os
import subprocess
import threading
import time

import pytest

import peertest
from peertest import DevRelay, Peer, create_session

MIB = 1 << 20


def feed(pipe, total, digest, chunk=MIB):
    """Writes `total` pseudo-random bytes into pipe, hashing them, then closes it."""
    block = os.urandom(chunk)
    left = total
    n = 0
    while left:
        part = block[: min(chunk, left)]
        # Vary the bytes so a lost or repeated chunk changes the hash.
        part = n.to_bytes(8, "big") + part[8:]
        digest.update(part)
        pipe.write(part)
        left -= len(part)
        n += 1
    pipe.close()


def drain(pipe, digest, counter):
    while True:
        b = pipe.read(MIB)
        if not b:
            break
        digest.update(b)
        counter[0] += len(b)


def test_256_mib_through_two_raw_processes(tmp_path):
    with DevRelay(tmp_path) as relay:
        s = create_session(relay)
        sid = s["SWSRS_SESSION"]
        # The receiver keeps stdin open (a pipe never written): its EOF
        # would end the tunnel.
        b = Peer("raw", relay, sid, s["SWSRS_RESPONDER_TOKEN"], role="responder",
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        a = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], role="initiator",
                 stdin=subprocess.PIPE)
        try:
            sent, got, count = hashlib.sha256(), hashlib.sha256(), [0]
            t_in = threading.Thread(target=feed, args=(a.proc.stdin, 256 * MIB, sent))
            t_out = threading.Thread(target=drain, args=(b.proc.stdout, got, count))
            t0 = time.monotonic()
            t_in.start()
            t_out.start()
            t_in.join(timeout=300)
            a.expect_exit(0, timeout=300)
            b.expect_exit(0, timeout=60)
            t_out.join(timeout=60)
            took = time.monotonic() - t0
            assert count[0] == 256 * MIB
            assert got.hexdigest() == sent.hexdigest()
            print("256 MiB in %.1fs (%.0f MB/s, sanitizer build)" % (took, 256 * MIB / took / 1e6))
            st = peertest.wait_counters(relay, sid, 256 * MIB)
            assert st["bytes_in"] == 256 * MIB and st["bytes_out"] == 0, st
        finally:
            b.proc.stdin.close()
            peertest.cleanup(a, b)


@pytest.mark.parametrize("size", [100 * 1024, 4 * 256 * 1024])
def test_lone_peer_that_writes_first_loses_nothing(tmp_path, size):
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    with DevRelay(tmp_path / "relay") as relay:
        s = create_session(relay)
        sid = s["SWSRS_SESSION"]
        with open(src, "rb") as fin:
            a = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], stdin=fin)
        try:
            a.wait_line(r"joined the session")
            time.sleep(1.5)  # A has read all it could, and its EOF if the relay took it all
            assert a.alive(), "the lone writer left before its data was delivered\n" + a.describe()
            with open(dst, "wb") as fout:
                b = Peer("raw", relay, sid, s["SWSRS_RESPONDER_TOKEN"], stdin=subprocess.PIPE,
                         stdout=fout)
                a.expect_exit(0)
                b.expect_exit(0)
                b.proc.stdin.close()
            assert dst.read_bytes() == data
            st = peertest.wait_counters(relay, sid, len(data))
            assert st["bytes_in"] == len(data), st
            assert st["bytes_out"] == 0, st
        finally:
            peertest.cleanup(a, locals().get("b"))


def test_keep_open_receives_after_stdin_ends(tmp_path):
    data = os.urandom(3 * MIB + 17)
    with DevRelay(tmp_path) as relay:
        s = create_session(relay)
        sid = s["SWSRS_SESSION"]
        b = Peer("raw", relay, sid, s["SWSRS_RESPONDER_TOKEN"], args=["--keep-open"],
                 stdout=subprocess.PIPE)  # stdin: /dev/null, at EOF at once
        a = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], stdin=subprocess.PIPE)
        try:
            out = []
            t = threading.Thread(target=lambda: out.append(b.proc.stdout.read()))
            t.start()
            a.proc.stdin.write(data)
            a.proc.stdin.close()
            a.expect_exit(0)
            b.expect_exit(0)
            t.join(timeout=30)
            assert out[0] == data
        finally:
            peertest.cleanup(a, b)
