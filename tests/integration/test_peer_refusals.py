"""How the peer commands end when they cannot do their work: the exit
status and the one line on stderr a user reads.

* Refused joins: 401 (a token of no slot), 404 (no such session), 409 (the
  slot is held by another peer): exit 1, "refused by the relay: HTTP N:"
  and the relay's message.
* An unreachable relay: exit 1 naming the address and the refusal.
* A certificate the peer cannot verify (the development certificate
  without --ca): exit 1 "certificate verify failed"; --insecure connects,
  with a warning.
* A lone peer whose counterpart never comes: the relay closes it 1001 at
  peer_wait; exit 1 with the code.
* tcp-dial to a target that refuses, before the other end has joined: it
  waits for that end, which then learns 1011; both exit 1, tcp-dial naming
  the target.
* Usage: a missing --session or --listen, a bad --role: exit 2.
* The token: given with --token it draws a warning and is wiped from the
  process's command line (/proc/PID/cmdline); it never appears on stderr
  (Peer.check) nor in the relay's debug log.
"""

import os
import socket
import subprocess
import time

import peertest
from peertest import DevRelay, Peer, create_session
from relaytest import RELAY_BIN, TIMEOUT


def one_line(peer, prefix):
    """The user-facing line (not a JSON log) that starts with prefix."""
    lines = [l for l in peer.plain_lines()
             if l.startswith(prefix) and not l.startswith(prefix + "listening on")]
    assert len(lines) == 1, peer.describe()
    return lines[0]


def test_refused_joins(tmp_path):
    with DevRelay(tmp_path, log_level="debug") as relay:
        s = create_session(relay)
        sid = s["SWSRS_SESSION"]
        bad = Peer("raw", relay, sid, "AAAAAAAAAAAAAAAAAAAAAA", stdin=subprocess.PIPE)
        bad.expect_exit(1)
        line = one_line(bad, "relay raw: ")
        assert "refused by the relay: HTTP 401: " in line, line
        assert len(line.split("HTTP 401: ", 1)[1]) > 0

        nosuch = Peer("tcp-dial", relay, "AAAAAAAAAAAAAAAAAAAAAA", s["SWSRS_INITIATOR_TOKEN"],
                      args=["--target", "127.0.0.1:9"])
        nosuch.expect_exit(1)
        assert "refused by the relay: HTTP 404: " in one_line(nosuch, "relay tcp-dial: ")

        holder = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], stdin=subprocess.PIPE)
        try:
            holder.wait_line("joined the session")
            taken = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], stdin=subprocess.PIPE)
            taken.expect_exit(1)
            assert "refused by the relay: HTTP 409: " in one_line(taken, "relay raw: ")
            # With --keep, a refusal that cannot change ends it too.
            keep = Peer("tcp-dial", relay, sid, "AAAAAAAAAAAAAAAAAAAAAA",
                        args=["--target", "127.0.0.1:9", "--keep"])
            keep.expect_exit(1)
            assert "HTTP 401" in one_line(keep, "relay tcp-dial: ")
        finally:
            holder.proc.stdin.close()
            holder.stop()
            peertest.cleanup(holder)
        for tok in (s["SWSRS_INITIATOR_TOKEN"], s["SWSRS_RESPONDER_TOKEN"]):
            assert tok not in relay.stderr


def test_unreachable_relay(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with DevRelay(tmp_path) as relay:
        p = Peer("raw", relay, "AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAA",
                 url="wss://127.0.0.1:%d" % port, stdin=subprocess.PIPE)
        p.expect_exit(1)
        line = one_line(p, "relay raw: ")
        assert "cannot connect to 127.0.0.1:%d" % port in line and "refused" in line, line


def test_certificate_needs_ca(tmp_path):
    with DevRelay(tmp_path) as relay:
        s = create_session(relay)
        sid = s["SWSRS_SESSION"]
        p = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], ca=False, stdin=subprocess.PIPE)
        p.expect_exit(1)
        assert "certificate verify failed" in one_line(p, "relay raw: ")
        # swsrs's variable for --ca works as the flag does.
        v = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], ca=False, stdin=subprocess.PIPE,
                 env={"SWSRS_CA": relay.ca})
        v.wait_line("joined the session")
        v.proc.stdin.close()
        assert v.stop() == 0
        # --insecure connects, and says what it gives up.
        a = Peer("raw", relay, sid, s["SWSRS_INITIATOR_TOKEN"], ca=False, args=["--insecure"],
                 stdin=subprocess.PIPE)
        try:
            a.wait_line("joined the session")
            assert any("not verified" in l.get("msg", "") for l in a.logs()), a.describe()
            a.proc.stdin.close()
            assert a.stop() == 0  # SIGTERM: a clean close
        finally:
            peertest.cleanup(a)


def test_peer_that_never_comes(tmp_path):
    with DevRelay(tmp_path) as relay:
        s = create_session(relay, peer_wait=2)
        p = Peer("tcp-listen", relay, s["SWSRS_SESSION"], s["SWSRS_INITIATOR_TOKEN"],
                 args=["--listen", "127.0.0.1:0"])
        c = socket.create_connection(("127.0.0.1", p.listen_port()), timeout=TIMEOUT)
        try:
            p.expect_exit(1, timeout=30)
            assert "closed by the relay: 1001" in one_line(p, "relay tcp-listen: ")
            # The waiting client was reset, not told a clean end.
            c.settimeout(5)
            try:
                assert c.recv(10) == b""
                raise AssertionError("expected a reset")
            except ConnectionResetError:
                pass
        finally:
            c.close()


def test_target_that_refuses(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    with DevRelay(tmp_path) as relay:
        ss = create_session(relay)
        sid = ss["SWSRS_SESSION"]
        # tcp-dial first: the target refuses before the other end exists,
        # and tcp-dial waits to tell it rather than leave silently.
        dial = Peer("tcp-dial", relay, sid, ss["SWSRS_RESPONDER_TOKEN"],
                    args=["--target", "127.0.0.1:%d" % dead])
        listen = None
        try:
            dial.wait_line("waiting to tell the peer")
            assert dial.alive()
            listen = Peer("tcp-listen", relay, sid, ss["SWSRS_INITIATOR_TOKEN"],
                          args=["--listen", "127.0.0.1:0"])
            c = socket.create_connection(("127.0.0.1", listen.listen_port()), timeout=TIMEOUT)
            dial.expect_exit(1)
            assert "cannot connect to 127.0.0.1:%d" % dead in one_line(dial, "relay tcp-dial: ")
            listen.expect_exit(1)
            assert "closed by the relay: 1011" in one_line(listen, "relay tcp-listen: ")
            c.close()
        finally:
            peertest.cleanup(dial, listen)


def usage(args, env=None):
    full = dict(os.environ, **(env or {}))
    for k in ("SWSRS_URL", "SWSRS_SESSION", "SWSRS_TOKEN", "SWSRS_ROLE"):
        full.pop(k, None)
    full.update(env or {})
    return subprocess.run([RELAY_BIN] + args, capture_output=True, timeout=TIMEOUT, env=full)


def test_usage_errors():
    env = {"SWSRS_URL": "wss://127.0.0.1:1", "SWSRS_TOKEN": "t"}
    p = usage(["raw"], env)
    assert p.returncode == 2 and b"--session" in p.stderr, p.stderr
    p = usage(["tcp-listen", "--session", "x"], env)
    assert p.returncode == 2 and b"--listen" in p.stderr, p.stderr
    p = usage(["tcp-dial", "--session", "x", "--target", "h:1", "--role", "boss"], env)
    assert p.returncode == 2 and b"--role" in p.stderr, p.stderr
    p = usage(["udp-dial", "--session", "x", "--target", "h:1", "--bogus"], env)
    assert p.returncode == 2, p.stderr
    p = usage(["raw", "--session", "a/b"], env)
    assert p.returncode == 2 and b"session" in p.stderr, p.stderr
    for cmd in ("raw", "tcp-listen", "tcp-dial", "udp-listen", "udp-dial"):
        p = usage([cmd, "--help"])
        assert p.returncode == 0 and b"SWSRS_TOKEN" in p.stdout, (cmd, p.stdout)


def test_token_on_the_command_line_is_wiped(tmp_path):
    with DevRelay(tmp_path, log_level="debug") as relay:
        s = create_session(relay)
        tok = s["SWSRS_RESPONDER_TOKEN"]
        target = socket.socket()
        target.bind(("127.0.0.1", 0))
        target.listen(4)  # the kernel completes the connection: nothing to accept
        p = Peer("tcp-dial", relay, s["SWSRS_SESSION"], None,
                 args=["--target", "127.0.0.1:%d" % target.getsockname()[1], "--token", tok])
        try:
            p.wait_line("joined the session")
            with open("/proc/%d/cmdline" % p.pid, "rb") as f:
                cmdline = f.read()
            assert tok.encode() not in cmdline, cmdline
            assert b"tcp-dial" in cmdline
            assert any("--token on the command line is visible" in l for l in p.plain_lines())
            assert p.stop() == 0
            assert tok not in p.stderr and tok not in relay.stderr
        finally:
            target.close()
            peertest.cleanup(p)
