"""sshtest — a throwaway OpenSSH server for the tests that carry SSH
through the relay (test_peer_ssh.py, test_target.py).

``Sshd(tmp)`` starts Debian's sshd (openssh-server, in TEST_DEPS) as the
current user on a free loopback port with a generated host key, an
authorized_keys file for a generated client key, StrictModes and PAM off
(as root, sshd also needs its privilege-separation directory /run/sshd,
which is made if missing); ``opts()`` are the ssh options that use the
client key and trust the host; ``stop()`` stops it by pid.  ``ssh``,
``scp`` and ``sha256`` run and check what the tests do with it.  Every
wait is bounded.
"""

import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import time

from relaytest import TestError, free_port

MIB = 1 << 20
SSHD = "/usr/sbin/sshd"
MIB = 1 << 20


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


def ssh(sshd, port, command, timeout=60, extra=()):
    argv = (["ssh"] + sshd.opts() + list(extra)
            + ["-p", str(port), "%s@127.0.0.1" % getpass.getuser(), command])
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
