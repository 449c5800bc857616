"""relaytest — shared helpers for relay's integration tests.

Everything a test needs to drive the real binaries with independent clients:

* ``Certs``: a throwaway PKI made with the openssl CLI (a CA, a server
  certificate for 127.0.0.1/localhost, a client certificate, and an
  unrelated "stranger" CA with its own client certificate); ``issue()``
  makes more.
* ``LoggedProcess``: a child whose stderr is JSON log lines, read by a
  thread so the pipe never fills; tests wait for a log line, look at every
  line, and stop the child with a signal checking its exit code.
* ``Relay``: ``relay serve`` on 127.0.0.1 with port 0; the bound port comes
  from the JSON ``listening`` log line.  ``Controller`` does the same for
  ``relay-controller`` when a test needs one.
* Socket helpers: plain and TLS connections, an HTTP/1.1 response reader
  that works on raw sockets (so tests can pipeline, trickle or misbehave),
  ``recv_until_closed``; and wrappers for curl and openssl s_client.

Every wait is bounded: a hang becomes a test failure with the child's logs,
never a stuck CI job.  Nothing here binds a fixed port or writes outside the
directories the tests give it, so test files can run in parallel.
"""

import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.environ.get("RELAY_BUILD_DIR") or os.path.join(HERE, "..", "..", "build")
RELAY_BIN = os.environ.get("RELAY_BIN") or os.path.join(BUILD_DIR, "relay")
CONTROLLER_BIN = os.environ.get("RELAY_CONTROLLER_BIN") or os.path.join(
    BUILD_DIR, "relay-controller")

#: Default bound, in seconds, for anything a test waits on.
TIMEOUT = float(os.environ.get("RELAY_TEST_TIMEOUT", "20"))

#: Workers of every relay a test starts.  `relay serve` reads RELAY_WORKERS
#: as it reads --workers, so setting it here reaches every child, whichever
#: helper starts it.  More than one by default, so that every test also
#: exercises peers meeting across workers; RELAY_WORKERS=1 ./dev test runs
#: the suite on one worker.
WORKERS = os.environ.setdefault("RELAY_WORKERS", "4")


def free_port():
    """A loopback TCP port free a moment ago (for servers that need one in
    their configuration file, such as sshd and redis-server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TestError(AssertionError):
    """A helper could not get what the test asked for (timeout, bad reply)."""


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------

def run(argv, timeout=TIMEOUT, check=True, **kw):
    """subprocess.run with a timeout and captured text output."""
    p = subprocess.run(argv, capture_output=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise TestError("%s failed (%d):\n%s\n%s" % (
            " ".join(argv), p.returncode, _text(p.stdout), _text(p.stderr)))
    return p


def _text(b):
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


class Certs:
    """A throwaway PKI in `directory`, made with the openssl CLI.

    Attributes are file paths: ca_crt/ca_key, server_crt/server_key
    (SAN IP:127.0.0.1, DNS:localhost; serverAuth), client_crt/client_key
    (clientAuth, signed by the CA), stranger_ca_crt and
    stranger_crt/stranger_key (a client cert from an unrelated CA).
    """

    def __init__(self, directory):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.ca_crt, self.ca_key = self.make_ca("ca", "relay test CA")
        self.stranger_ca_crt, self.stranger_ca_key = self.make_ca("stranger-ca", "stranger CA")
        self.server_crt, self.server_key = self.issue(
            "server", "127.0.0.1", san="IP:127.0.0.1,DNS:localhost", eku="serverAuth")
        self.client_crt, self.client_key = self.issue("client", "test-client", eku="clientAuth")
        self.stranger_crt, self.stranger_key = self.issue(
            "stranger", "stranger", eku="clientAuth", ca="stranger-ca")

    def path(self, name):
        return os.path.join(self.dir, name)

    def make_ca(self, name, cn):
        crt, key = self.path(name + ".crt"), self.path(name + ".key")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=" + cn, "-days", "2",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        return crt, key

    def issue(self, name, cn, san=None, eku="serverAuth", ca="ca", days=2):
        """Issues name.crt/name.key signed by `ca`; returns (crt, key)."""
        crt, key, csr, ext = (self.path(name + s) for s in (".crt", ".key", ".csr", ".ext"))
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n")
            if eku:
                f.write("extendedKeyUsage=%s\n" % eku)
            if san:
                f.write("subjectAltName=%s\n" % san)
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self.path(ca + ".crt"),
             "-CAkey", self.path(ca + ".key"), "-CAcreateserial", "-days", str(days),
             "-extfile", ext, "-out", crt])
        return crt, key

    def secrets(self):
        """Base64 lines of every private key: none may ever appear in a log."""
        out = []
        for name in os.listdir(self.dir):
            if name.endswith(".key"):
                with open(self.path(name)) as f:
                    out += [l.strip() for l in f if l.strip() and not l.startswith("-----")]
        return out


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

class LoggedProcess:
    """A child process whose stderr carries JSON log lines.

    A reader thread collects stderr (and stdout) so the child never blocks on
    a full pipe.  `lines` holds raw stderr lines, `logs` the ones that parse
    as JSON objects.
    """

    def __init__(self, argv, env=None, cwd=None, name=None, pass_fds=()):
        self.argv = [str(a) for a in argv]
        self.name = name or os.path.basename(self.argv[0])
        full_env = dict(os.environ)
        full_env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        full_env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        if env:
            full_env.update(env)
        self.lines = []
        self.stdout_lines = []
        self.logs = []
        self._cond = threading.Condition()
        self._eof = 0
        self.returncode = None
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env, cwd=cwd,
                                     pass_fds=pass_fds)
        self._threads = [
            threading.Thread(target=self._reader, args=(self.proc.stderr, True), daemon=True),
            threading.Thread(target=self._reader, args=(self.proc.stdout, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _reader(self, pipe, is_stderr):
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                if is_stderr:
                    self.lines.append(line)
                    try:
                        obj = json.loads(line)
                        if isinstance(obj, dict):
                            self.logs.append(obj)
                    except ValueError:
                        pass
                else:
                    self.stdout_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof += 1
            self._cond.notify_all()

    @property
    def stderr(self):
        with self._cond:
            return "\n".join(self.lines)

    def describe(self):
        return "%s (pid %d) stderr:\n%s" % (self.name, self.proc.pid, self.stderr)

    def wait_for_log(self, pred=None, timeout=TIMEOUT, **fields):
        """Waits for a JSON log line matching every field=value and pred;
        returns it.  Fails if the process exits first or time runs out."""
        def match(obj):
            return all(obj.get(k) == v for k, v in fields.items()) and (pred is None or pred(obj))
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for obj in self.logs[seen:]:
                    if match(obj):
                        return obj
                seen = len(self.logs)
                if self._eof >= 2:
                    raise TestError("%s exited (%s) before logging %s\n%s" % (
                        self.name, self.proc.poll(), fields or pred, self.describe()))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestError("timed out waiting for log %s\n%s" % (
                        fields or pred, self.describe()))
                self._cond.wait(min(left, 0.5))

    def find_logs(self, **fields):
        with self._cond:
            return [o for o in self.logs if all(o.get(k) == v for k, v in fields.items())]

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=TIMEOUT):
        """Waits for exit; returns the code (fails on timeout)."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestError("%s did not exit within %.1fs\n%s" % (
                self.name, timeout, self.describe()))
        for t in self._threads:
            t.join(timeout=5)
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=TIMEOUT, expect=0):
        """Sends sig and waits; asserts the exit code when expect is not None.
        Returns (exit code, seconds taken)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        took = time.monotonic() - t0
        if expect is not None and code != expect:
            raise TestError("%s exited %d, expected %d\n%s" % (
                self.name, code, expect, self.describe()))
        self.check_sanitizers()
        return code, took

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """As a context manager: a clean stop (exit 0) unless already gone."""
        try:
            if exc[0] is None and self.alive():
                self.stop()
        finally:
            self.kill()
        return False

    def check_sanitizers(self):
        text = self.stderr
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in text:
                raise TestError("%s: sanitizer report\n%s" % (self.name, text))


class Relay(LoggedProcess):
    """`relay serve` on 127.0.0.1:0; `port` is read from the listening log.

    With certs (a Certs), TLS uses certs.server_crt/key; with plain=True the
    listener speaks plain HTTP.  extra is appended to the command line.
    no_auth=True (the default) passes --no-auth, which the relay accepts on
    loopback; pass no_auth=False with OIDC flags in extra to test the admin API.
    """

    def __init__(self, certs=None, plain=False, extra=(), env=None, log_level="debug",
                 timeout=TIMEOUT, binary=None, no_auth=True):
        argv = [binary or RELAY_BIN, "serve", "--listen", "127.0.0.1:0",
                "--log-level", log_level]
        if no_auth:
            argv.append("--no-auth")  # loopback only; tests of the admin API pass OIDC flags
        if plain:
            argv.append("--plain")
        elif certs is not None:
            argv += ["--tls-cert", certs.server_crt, "--tls-key", certs.server_key]
        argv += list(extra)
        super().__init__(argv, env=env, name="relay")
        self.plain = plain
        self.certs = certs
        try:
            line = self.wait_for_log(msg="listening", timeout=timeout)
        except BaseException:
            self.kill()  # never leave a half-started relay behind
            raise
        self.port = int(line["port"])
        self.listening = line

    @property
    def scheme(self):
        return "http" if self.plain else "https"

    def url(self, path="/", host="127.0.0.1"):
        return "%s://%s:%d%s" % (self.scheme, host, self.port, path)

    def connect(self, timeout=TIMEOUT, **tls_kw):
        """A fresh connection: plain, or TLS verified against certs.ca_crt."""
        if self.plain:
            return raw_connect(self.port, timeout)
        kw = {"ca": self.certs.ca_crt if self.certs else None}
        kw.update(tls_kw)
        return tls_connect(self.port, timeout=timeout, **kw)

    def get(self, path, headers=(), timeout=TIMEOUT):
        """One GET on a fresh connection (Connection: close); a Response."""
        s = self.connect(timeout)
        try:
            s.sendall(http_request("GET", path, headers=list(headers) + [("Connection", "close")]))
            return read_response(s, timeout)
        finally:
            s.close()


class Controller(LoggedProcess):
    """`relay-controller ARGS`; waits for a log line with msg=ready_msg when given."""

    def __init__(self, args, env=None, ready_msg=None, timeout=TIMEOUT):
        super().__init__([CONTROLLER_BIN] + list(args), env=env, name="relay-controller")
        self.ready = None
        if ready_msg:
            try:
                self.ready = self.wait_for_log(msg=ready_msg, timeout=timeout)
            except BaseException:
                self.kill()
                raise


# --------------------------------------------------------------------------
# Sockets and HTTP/1.1 on the wire
# --------------------------------------------------------------------------

def raw_connect(port, timeout=TIMEOUT, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def tls_context(ca=None, alpn=None, cert=None, key=None, verify=True, min_version=None,
                max_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify and ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert:
        ctx.load_cert_chain(cert, key)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def tls_connect(port, timeout=TIMEOUT, server_hostname="127.0.0.1", **ctx_kw):
    raw = raw_connect(port, timeout)
    try:
        s = tls_context(**ctx_kw).wrap_socket(raw, server_hostname=server_hostname)
    except Exception:
        raw.close()
        raise
    s.settimeout(timeout)
    return s


def http_request(method, target, headers=(), body=b"", version="HTTP/1.1"):
    """Request bytes; adds Host (and Content-Length when there is a body)."""
    names = {k.lower() for k, _ in headers}
    lines = ["%s %s %s" % (method, target, version)]
    if "host" not in names:
        lines.append("Host: 127.0.0.1")
    lines += ["%s: %s" % (k, v) for k, v in headers]
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Response:
    def __init__(self, status, reason, headers, body, version):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.version = version

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:200])


class Reader:
    """Buffered reads from a socket with one overall deadline per call."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestError("timed out reading (have %r)" % self.buf[:300])
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TestError("timed out reading (have %r)" % self.buf[:300])
        if not data:
            raise EOFError("connection closed (have %r)" % self.buf[:300])
        self.buf += data

    def read_until(self, marker, deadline):
        while marker not in self.buf:
            self._fill(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, timeout=TIMEOUT, head_request=False):
        deadline = time.monotonic() + timeout
        head = self.read_until(b"\r\n\r\n", deadline).decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"(HTTP/\d\.\d) (\d{3}) ?(.*)", lines[0])
        if not m:
            raise TestError("bad status line %r" % lines[0])
        headers = []
        for l in lines[1:]:
            if l:
                k, _, v = l.partition(":")
                headers.append((k.strip(), v.strip()))
        r = Response(int(m.group(2)), m.group(3), headers, b"", m.group(1))
        if head_request or r.status in (204, 304) or 100 <= r.status < 200:
            return r
        if (r.header("Transfer-Encoding") or "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.read_until(b"\r\n", deadline).split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n", deadline)
                    break
                body += self.read_exact(size, deadline)
                self.read_exact(2, deadline)
            r.body = body
        elif r.header("Content-Length") is not None:
            r.body = self.read_exact(int(r.header("Content-Length")), deadline)
        else:
            r.body = self.read_rest(deadline)
        return r

    def read_rest(self, deadline):
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out


def read_response(sock, timeout=TIMEOUT, head_request=False):
    """Reads one response from a socket (no pipelining: leftovers are lost;
    use Reader for several)."""
    return Reader(sock).read_response(timeout, head_request)


def recv_until_closed(sock, timeout=TIMEOUT):
    """Reads until the peer closes; returns (bytes, how) where how is 'eof'
    or 'reset'.  Fails if the connection is still open at the deadline."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestError("connection still open after %.1fs (got %r)" % (timeout, data[:300]))
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError) as e:
            return data, "reset:%s" % type(e).__name__
        if not chunk:
            return data, "eof"
        data += chunk


def wait_readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def metrics(relay):
    """The relay's /metrics as {name: value} (labels kept in the name)."""
    r = relay.get("/metrics")
    assert r.status == 200, r
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, val = line.rpartition(" ")
            out[name] = float(val)
    return out


def assert_error_body(resp, status, code=None):
    """The relay's error shape: JSON {"error","message"} plus Date and Server."""
    assert resp.status == status, resp
    assert resp.header("Date"), resp
    assert (resp.header("Server") or "").startswith("relay/"), resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp
    body = resp.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    if code is not None:
        assert body["error"] == code, body
    return body


# --------------------------------------------------------------------------
# External clients
# --------------------------------------------------------------------------

def curl(args, timeout=TIMEOUT):
    """Runs curl -sS with a bounded time; returns the CompletedProcess with
    stdout/stderr decoded but line ends kept ("\r\n" in -i output)."""
    argv = ["curl", "-sS", "--max-time", str(int(timeout)), "--connect-timeout", "5"] + list(args)
    p = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    p.stdout, p.stderr = _text(p.stdout), _text(p.stderr)
    return p


def s_client(port, args=(), timeout=TIMEOUT, stdin=b""):
    """openssl s_client against 127.0.0.1:port; returns (returncode, output)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port] + list(args)
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, _text(p.stdout) + _text(p.stderr)


def s_client_field(output, name):
    """A 'Name: value' field from s_client output ('ALPN protocol', 'Protocol')."""
    m = re.search(r"^\s*%s\s*:\s*(.+?)\s*$" % re.escape(name), output, re.M)
    return m.group(1) if m else None


def s_client_negotiated(output):
    """(protocol, cipher) from s_client's "New, TLSv1.3, Cipher is X" line
    (printed even when the TLS 1.3 session block is not), or (None, None)."""
    m = re.search(r"^New, (\S+), Cipher is (\S+)", output, re.M)
    return (m.group(1), m.group(2)) if m else (None, None)


def which(tool):
    return shutil.which(tool) is not None
