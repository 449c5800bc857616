"""SSH through the relay with `relay tcp-dial` and `relay tcp-listen`, the
walk-through of the README, against a real OpenSSH server.

The test starts Debian's sshd on a free loopback port (sshtest.Sshd) and
stops it by pid.  The relay runs as
`./dev run` runs it (development certificate, embedded controller,
--no-auth); the session comes from `relay create --output env`.

* One connection: tcp-dial (responder) dials sshd for the peer; tcp-listen
  (initiator) accepts one connection; `ssh -p PORT` runs a command and
  gets its output; then both peers exit 0 by themselves (the connection's
  FIN closed the tunnel 1000) and tcp-listen no longer accepts.
* With --keep, three SSH connections one after another on one session:
  a command, then `scp` of 64 MiB up and 64 MiB down, SHA-256 equal on
  both ends; the relay's counters show the session re-joined, not
  re-created; both peers stop cleanly on SIGTERM.
"""

import getpass
import os
import socket
import time

import pytest

import peertest
from peertest import DevRelay, Peer, create_session
from sshtest import MIB, Sshd, scp, sha256, ssh


def peers(relay, s, sshd, keep):
    extra = ["--keep"] if keep else []
    dial = Peer("tcp-dial", relay, s["SWSRS_SESSION"], s["SWSRS_RESPONDER_TOKEN"],
                args=["--target", "127.0.0.1:%d" % sshd.port] + extra, role="responder")
    listen = Peer("tcp-listen", relay, s["SWSRS_SESSION"], s["SWSRS_INITIATOR_TOKEN"],
                  args=["--listen", "127.0.0.1:0"] + extra, role="initiator")
    return dial, listen, listen.listen_port()


@pytest.fixture
def sshd(tmp_path):
    d = Sshd(tmp_path / "sshd")
    yield d
    d.stop()


def test_one_ssh_connection_then_both_exit(tmp_path, sshd):
    with DevRelay(tmp_path / "relay") as relay:
        s = create_session(relay)
        dial, listen, port = peers(relay, s, sshd, keep=False)
        try:
            p = ssh(sshd, port, "echo hello-through-the-relay; echo $((6 * 7))")
            assert p.returncode == 0, (p.stderr, sshd.log()[-2000:], listen.describe())
            assert p.stdout.decode().split() == ["hello-through-the-relay", "42"]
            listen.expect_exit(0)
            dial.expect_exit(0)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        finally:
            peertest.cleanup(dial, listen)


def test_keep_three_connections_with_scp_both_ways(tmp_path, sshd):
    up_src, up_dst = tmp_path / "up-src.bin", tmp_path / "up-dst.bin"
    down_src, down_dst = tmp_path / "down-src.bin", tmp_path / "down-dst.bin"
    for path in (up_src, down_src):
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(os.urandom(MIB))
    with DevRelay(tmp_path / "relay") as relay:
        s = create_session(relay)
        dial, listen, port = peers(relay, s, sshd, keep=True)
        user = getpass.getuser()
        try:
            p = ssh(sshd, port, "echo first")
            assert p.returncode == 0 and p.stdout == b"first\n", (p.stderr, listen.describe())
            t0 = time.monotonic()
            scp(sshd, port, str(up_src), "%s@127.0.0.1:%s" % (user, up_dst))
            t1 = time.monotonic()
            scp(sshd, port, "%s@127.0.0.1:%s" % (user, down_src), str(down_dst))
            t2 = time.monotonic()
            print("scp 64 MiB up %.1fs, down %.1fs (sanitizer build)" % (t1 - t0, t2 - t1))
            assert sha256(up_dst) == sha256(up_src)
            assert sha256(down_dst) == sha256(down_src)
            # Three tunnels on one session, each ended by its connection.
            assert len(listen.logs("tunnel ended")) == 3, listen.describe()
            st = peertest.session_status(relay, s["SWSRS_SESSION"])
            assert st["bytes_in"] > 64 * MIB and st["bytes_out"] > 64 * MIB, st
            assert listen.stop() == 0
            assert dial.stop() == 0
        finally:
            peertest.cleanup(dial, listen)
