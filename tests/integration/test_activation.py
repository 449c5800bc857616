"""systemd socket activation and readiness, without systemd (issue 13,
point 2: the restart design).

The test plays systemd's part exactly as sd_listen_fds(3) and sd_notify(3)
describe it: it binds and listens itself, hands the socket to `relay
serve` as fd 3 with LISTEN_FDS=1 and LISTEN_PID set to the relay's own pid
(a shell that sets it and execs, so the pid is the relay's), and listens on
an AF_UNIX datagram socket named in NOTIFY_SOCKET.  Checked: the relay
serves on the inherited socket without binding one; READY=1 comes once it
accepts and STOPPING=1 at SIGTERM; two relays share one socket, and when the
first stops the second answers every connection; a socket matching no
listener is refused at start with a log line naming it; a LISTEN_PID that
is not ours is ignored; --pid-file is written once listening and removed
at exit.
"""

import os
import signal
import socket
import time

import grpcpeer as gp
import relaytest
import wsraw

T = relaytest.TIMEOUT


def listening_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(512)
    return s


class Notify:
    """The NOTIFY_SOCKET end: datagrams the relay sends."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def expect(self, text, timeout=T):
        deadline = time.monotonic() + timeout
        got = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            got.append(msg)
            if text in msg.split("\n"):
                return got
        raise relaytest.TestError("no %r on NOTIFY_SOCKET (got %r)" % (text, got))

    def close(self):
        self.sock.close()


def activated_relay(certs, socks, extra=(), env=None, pid="$$", wait=True):
    """`relay serve` with socks as fds 3.. as systemd passes them; the
    first is the public listener."""
    env = dict(env or {})
    env["LISTEN_FDS"] = str(len(socks))
    fds = [s.fileno() for s in socks]
    argv = [relaytest.RELAY_BIN, "serve", "--listen",
            "127.0.0.1:%d" % socks[0].getsockname()[1], "--log-level", "debug", "--no-auth",
            "--tls-cert", certs.server_crt, "--tls-key", certs.server_key] + list(extra)
    # dup2 the sockets onto 3.. in the child, then exec with LISTEN_PID =
    # the shell's pid, which exec keeps.
    moves = " ".join("%d>&%d" % (3 + i, fd) for i, fd in enumerate(fds))
    shell = ["bash", "-c", 'LISTEN_PID=%s exec "$@" %s' % (pid, moves), "bash"] + argv
    p = relaytest.LoggedProcess(shell, env=env, name="relay", pass_fds=fds)
    p.certs = certs
    if wait:
        line = p.wait_for_log(msg="listening")
        p.port = int(line["port"])
    return p


class Address:
    """What wsraw and grpcpeer need of a relay, for an address that two
    relay processes share: TLS connections verified against the test CA."""

    def __init__(self, certs, port):
        self.certs, self.port = certs, port

    def connect(self, timeout=T):
        return relaytest.tls_connect(self.port, timeout=timeout, ca=self.certs.ca_crt)

    def describe(self):
        return "the shared address 127.0.0.1:%d" % self.port


def healthz(port):
    s = relaytest.tls_connect(port, verify=False)
    try:
        s.sendall(relaytest.http_request("GET", "/healthz", headers=[("Connection", "close")]))
        return relaytest.read_response(s)
    finally:
        s.close()


def test_inherited_socket_and_readiness(certs, tmp_path):
    lsock = listening_socket()
    port = lsock.getsockname()[1]
    notify = Notify(str(tmp_path))
    pid_file = os.path.join(str(tmp_path), "relay.pid")
    r = activated_relay(certs, [lsock], extra=["--pid-file", pid_file],
                        env={"NOTIFY_SOCKET": notify.path})
    try:
        assert r.port == port
        got = r.wait_for_log(msg="listening socket inherited")
        assert got["addr"] == "127.0.0.1:%d" % port and got["fd"] == 3, got
        notify.expect("READY=1")
        with open(pid_file) as f:
            assert int(f.read()) == r.proc.pid
        assert healthz(port).body == b"ok"
        r.stop(signal.SIGTERM)
        notify.expect("STOPPING=1")
        assert not os.path.exists(pid_file)
        # After the relay went, the socket is still ours, listening.
        c = socket.create_connection(("127.0.0.1", port), timeout=T)
        c.close()
    finally:
        r.kill()
        notify.close()
        lsock.close()


def test_two_relays_share_the_socket(certs):
    """A restart without refusing: the second relay takes the same socket,
    the first stops; every connection attempt along the way is answered."""
    lsock = listening_socket()
    port = lsock.getsockname()[1]
    a = activated_relay(certs, [lsock])
    b = None
    try:
        for _ in range(20):
            assert healthz(port).status == 200
        b = activated_relay(certs, [lsock])
        a.stop(signal.SIGTERM)
        for _ in range(50):
            assert healthz(port).status == 200

        def served():
            return [l for l in b.find_logs(msg="request") if l.get("target") == "/healthz"]
        # A request's log line may follow its answer by a moment: wait for it.
        deadline = time.monotonic() + T
        while len(served()) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(served()) >= 50, len(served())
        b.stop()
    finally:
        a.kill()
        if b:
            b.kill()
        lsock.close()


def test_unclaimed_socket_refused(certs):
    lsock, stray = listening_socket(), listening_socket()
    r = activated_relay(certs, [lsock, stray], wait=False)
    try:
        code = r.wait(timeout=T)
        assert code == 1, r.describe()
        line = r.wait_for_log(msg="inherited sockets match no listener (--listen, --tunnel-listen)")
        assert line["sockets"] == "127.0.0.1:%d" % stray.getsockname()[1], line
        r.check_sanitizers()
    finally:
        r.kill()
        lsock.close()
        stray.close()


def test_listen_pid_not_ours_is_ignored(certs):
    """LISTEN_FDS meant for another process (its pid): the relay binds its
    own socket, so on the same address it fails with the address in use."""
    lsock = listening_socket()
    r = activated_relay(certs, [lsock], pid="1", wait=False)
    try:
        assert r.wait(timeout=T) == 1
        line = r.wait_for_log(msg="cannot start")
        assert "address already in use" in line["error"], line
        assert not r.find_logs(msg="listening socket inherited")
    finally:
        r.kill()
        lsock.close()


def test_handover_gets_the_successor_its_controller_link(certs, tmp_path):
    """With a remote controller and the tunnel socket shared too, the
    controller's one link is to whichever relay accepted it.  The old relay
    says Leaving when it stops accepting, so the controller dials again at
    once and the new relay has its link while the old one still drains —
    not only when the drain ends — and upgrades through the shared address
    work, for sessions of the same controller."""
    pki = gp.Pki(tmp_path / "pki")
    crt, key = pki.relay("relay-h")
    public, tunnel = listening_socket(), listening_socket()
    tport = tunnel.getsockname()[1]
    remote = ["--tunnel-listen", "127.0.0.1:%d" % tport, "--tunnel-cert", crt, "--tunnel-key", key,
              "--controller-ca", pki.ca_crt, "--node-id", "relay-h", "--shutdown-grace", "15s"]
    a = activated_relay(certs, [public, tunnel], extra=remote)
    ctl = b = None
    try:
        ctl = relaytest.Controller(
            ["run", "--relay", "127.0.0.1:%d" % tport, "--ca-dir", pki.ca_dir,
             "--relay-server-name", "127.0.0.1", "--state-dir", str(tmp_path / "state"),
             "--accept-unauthenticated", "--backoff-base", "100ms", "--backoff-max", "1s",
             "--log-level", "debug"])
        a.wait_for_log(msg="controller link up")
        addr = Address(certs, public.getsockname()[1])
        old = gp.http(addr, "POST", "/admin/sessions", b"{}").json()
        p1 = wsraw.open_peer(addr, old["id"], old["initiator_token"])
        p2 = wsraw.open_peer(addr, old["id"], old["responder_token"])

        b = activated_relay(certs, [public, tunnel], extra=remote)
        time.sleep(0.5)
        assert not b.find_logs(msg="controller link up")  # the one link is a's
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        a.wait_for_log(msg="leaving: no more controller connections accepted")
        ctl.wait_for_log(msg="relay leaving; dialing its address again")
        b.wait_for_log(msg="controller link up", timeout=5)
        took = time.monotonic() - t0
        assert a.alive(), "a should still be draining its session"
        assert took < 3, took

        # a's session still relays while it drains; new sessions open on b.
        data = os.urandom(20000)
        p1.send_message(data)
        assert p2.recv_message()[1] == data
        new = gp.http(addr, "POST", "/admin/sessions", b"{}").json()
        q1 = wsraw.open_peer(addr, new["id"], new["initiator_token"])
        q2 = wsraw.open_peer(addr, new["id"], new["responder_token"])
        q1.send_message(b"through b")
        assert q2.recv_message()[1] == b"through b"
        p1.close(1000)
        assert p2.expect_close() == 1000
        assert a.wait(timeout=T) == 0
        a.check_sanitizers()
        for q in (q1, q2):
            q.shutdown()
        b.stop()
        ctl.stop()
    finally:
        for p in (a, b, ctl):
            if p:
                p.kill()
        public.close()
        tunnel.close()
