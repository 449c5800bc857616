"""SSH through the relay with `relay tcp-dial` and `relay tcp-listen`, the
walk-through of the README, against a real OpenSSH server.

The test starts Debian's sshd (openssh-server, in TEST_DEPS) as the
current user on a free loopback port with a generated host key, an
authorized_keys file for a generated client key, StrictModes and PAM off
(as root, sshd also needs its privilege-separation directory /run/sshd,
which is made if missing), and stops it by pid.  The relay runs as
`./dev run` runs it (development certificate, embedded controller,
--no-auth); the session comes from `relay create --output env` when the
binary has it, else from the admin API.

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
import hashlib
import os
import shutil
import socket
import subprocess
import time

import pytest

import peertest
from peertest import DevRelay, Peer, create_session
from relaytest import TestError

SSHD = "/usr/sbin/sshd"
MIB = 1 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Sshd:
    def __init__(self, tmp):
        if not os.path.exists(SSHD):
            raise TestError("%s missing: install openssh-server (./dev test does)" % SSHD)
        self.dir = str(tmp)
        os.makedirs(self.dir, exist_ok=True)
        self.host_key = os.path.join(self.dir, "host_ed25519")
        self.client_key = os.path.join(self.dir, "client_ed25519")
        for k in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True,
                           timeout=30)
        shutil.copy(self.client_key + ".pub", os.path.join(self.dir, "authorized_keys"))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.port = free_port()
        conf = os.path.join(self.dir, "sshd_config")
        with open(conf, "w") as f:
            f.write("\n".join([
                "Port %d" % self.port, "ListenAddress 127.0.0.1",
                "HostKey " + self.host_key,
                "PidFile " + os.path.join(self.dir, "sshd.pid"),
                "AuthorizedKeysFile " + os.path.join(self.dir, "authorized_keys"),
                "StrictModes no", "UsePAM no", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
                "LogLevel INFO", ""]))
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", conf], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "sshd.log"), "wb"))
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise TestError("sshd did not start:\n" + self.log())
                time.sleep(0.1)

    def log(self):
        with open(os.path.join(self.dir, "sshd.log"), errors="replace") as f:
            return f.read()

    def opts(self):
        return ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityFile=" + self.client_key,
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def ssh(sshd, port, command, timeout=60):
    argv = ["ssh"] + sshd.opts() + ["-p", str(port), "%s@127.0.0.1" % getpass.getuser(), command]
    return subprocess.run(argv, capture_output=True, timeout=timeout)


def scp(sshd, port, src, dst, timeout=240):
    p = subprocess.run(["scp", "-q"] + sshd.opts() + ["-P", str(port), src, dst],
                       capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise TestError("scp %s %s failed (%d): %s\n%s" % (src, dst, p.returncode, p.stderr,
                                                           sshd.log()[-3000:]))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MIB), b""):
            h.update(b)
    return h.hexdigest()


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
