"""peertest — helpers for the tests of the peer commands (relay raw,
tcp-listen, tcp-dial, udp-listen, udp-dial).

* ``DevRelay``: the relay as ``./dev run`` starts it — ``relay serve`` with a
  development certificate made in a temporary directory, the embedded
  controller with a state directory, ``--no-auth`` — on 127.0.0.1:0.
  ``ca`` is the certificate peers pass with ``--ca``.
* ``create_session``: a session from ``relay create --output env``, its
  three lines read as ``eval`` would (SWSRS_SESSION, SWSRS_INITIATOR_TOKEN,
  SWSRS_RESPONDER_TOKEN).
* ``Peer``: one peer command as a child process, its token in SWSRS_TOKEN
  (never on the command line), stderr collected by a thread, stdin and
  stdout as the test wants them; ``listen_port()`` reads the port from the
  "listening on" line; ``counters()`` the "udp counters" log line.

Every wait is bounded.
"""

import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import threading
import time
import urllib.request

import relaytest
from relaytest import RELAY_BIN, TIMEOUT, TestError


class DevRelay(relaytest.Relay):
    """`relay serve --dev-cert-dir D --state-dir S --no-auth` on 127.0.0.1:0."""

    def __init__(self, tmp, extra=(), log_level="info"):
        self.dir = str(tmp)
        os.makedirs(self.dir, exist_ok=True)
        dev = os.path.join(self.dir, "dev-cert")
        state = os.path.join(self.dir, "controller")
        super().__init__(extra=["--dev-cert-dir", dev, "--state-dir", state] + list(extra),
                         log_level=log_level)
        self.ca = os.path.join(dev, "dev.crt")

    @property
    def base_url(self):
        return "wss://127.0.0.1:%d" % self.port

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca)


def create_session(relay, ttl=600, peer_wait=None):
    """A session as `eval $(relay create --output env)` leaves it: a dict with
    SWSRS_SESSION, SWSRS_INITIATOR_TOKEN, SWSRS_RESPONDER_TOKEN."""
    argv = [RELAY_BIN, "create", "--admin-url", "https://127.0.0.1:%d" % relay.port,
            "--ca", relay.ca, "--output", "env", "--ttl", "%ds" % ttl]
    if peer_wait is not None:
        argv += ["--peer-wait", "%ds" % peer_wait]
    p = subprocess.run(argv, capture_output=True, timeout=TIMEOUT)
    if p.returncode != 0:
        raise TestError("relay create failed (%d): %s" % (p.returncode, p.stderr))
    # What `eval` would do with each line: one shell word after the "=".
    env = {}
    for line in p.stdout.decode().splitlines():
        k, _, v = line.partition("=")
        env[k] = shlex.split(v)[0] if v else ""
    want = {"SWSRS_SESSION", "SWSRS_INITIATOR_TOKEN", "SWSRS_RESPONDER_TOKEN"}
    if set(env) != want:
        raise TestError("relay create --output env printed %r" % sorted(env))
    return env


def session_status(relay, sid):
    req = urllib.request.Request("https://127.0.0.1:%d/admin/sessions/%s" % (relay.port, sid))
    with urllib.request.urlopen(req, context=relay.ssl_context(), timeout=TIMEOUT) as r:
        return json.loads(r.read())


def wait_counters(relay, sid, bytes_in, timeout=10):
    """The session's status once its bytes_in reached the value (the relay
    reports counters about once a second), or the last one seen."""
    deadline = time.monotonic() + timeout
    while True:
        st = session_status(relay, sid)
        if st["bytes_in"] >= bytes_in or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


class Peer:
    """`relay MODE ARGS` with the session and token in the environment."""

    def __init__(self, mode, relay, session, token, args=(), stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, role=None, ca=True, url=None, env=None,
                 log_level="info"):
        self.mode = mode
        self.argv = [RELAY_BIN, mode] + [str(a) for a in args] + ["--log-level", log_level]
        if ca:
            self.argv += ["--ca", relay.ca]
        if role:
            self.argv += ["--role", role]
        full = dict(os.environ)
        full.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        full.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        full["SWSRS_URL"] = url or relay.base_url
        if session is not None:
            full["SWSRS_SESSION"] = session
        if token is not None:
            full["SWSRS_TOKEN"] = token
        full.update(env or {})
        self.token = token
        self.lines = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(self.argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                     env=full)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in iter(self.proc.stderr.readline, b""):
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def stderr(self):
        with self._cond:
            return "\n".join(self.lines)

    def describe(self):
        return "%s (pid %d) stderr:\n%s" % (" ".join(self.argv[1:3]), self.proc.pid, self.stderr)

    def wait_line(self, pattern, timeout=TIMEOUT):
        """The first stderr line matching the regex; fails on exit or timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for l in self.lines[seen:]:
                    m = rx.search(l)
                    if m:
                        return m
                seen = len(self.lines)
                if self._eof:
                    raise TestError("exited before %r\n%s" % (pattern, self.describe()))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestError("timed out waiting for %r\n%s" % (pattern, self.describe()))
                self._cond.wait(min(left, 0.5))

    def listen_port(self):
        return int(self.wait_line(r"listening on .*:(\d+)$").group(1))

    def logs(self, msg=None):
        out = []
        for l in self.stderr.splitlines():
            try:
                o = json.loads(l)
            except ValueError:
                continue
            if isinstance(o, dict) and (msg is None or o.get("msg") == msg):
                out.append(o)
        return out

    def counters(self):
        c = self.logs("udp counters")
        if not c:
            raise TestError("no udp counters\n" + self.describe())
        return c[-1]

    def plain_lines(self):
        """stderr lines that are not JSON logs (what a user reads)."""
        return [l for l in self.stderr.splitlines() if not l.startswith("{")]

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=TIMEOUT):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestError("did not exit within %.0fs\n%s" % (timeout, self.describe()))
        self._reader.join(timeout=5)
        self.check()
        return code

    def expect_exit(self, code, timeout=TIMEOUT):
        got = self.wait(timeout)
        if got != code:
            raise TestError("exit %d, expected %d\n%s" % (got, code, self.describe()))

    def stop(self, sig=signal.SIGTERM, timeout=TIMEOUT):
        if self.alive():
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def check(self):
        text = self.stderr
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in text:
                raise TestError("sanitizer report\n" + self.describe())
        if self.token and self.token in text:
            raise TestError("the token appears on stderr\n" + self.describe())


def cleanup(*peers):
    """Kills what is left (tests stop their peers themselves on success)."""
    for p in peers:
        if p is not None:
            p.kill()


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise TestError("no VmRSS for %d" % pid)
