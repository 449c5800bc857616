"""wsraw — a raw WebSocket client for relay's integration tests.

Independent of the relay's own codec and of any WebSocket library: frames
are built and parsed here byte by byte, so a test can send what a well-
behaved library never would (unmasked client frames, RSV bits, unknown
opcodes, fragmented or oversized control frames, bad close codes, invalid
UTF-8 split across frames) and read exactly what the relay sends back,
frame by frame.

* ``frame(...)`` builds one frame (masked or not, any header bits).
* ``WsConn`` wraps a connected plain or TLS socket: ``handshake()`` sends
  the upgrade request and reads the response; then ``send_frame``,
  ``send_raw``, ``recv_frame``, ``recv_message`` (fragments joined, pings
  answered or collected), ``close`` and ``expect_close``.
* ``StreamHasher`` parses a bulk stream of server frames incrementally,
  hashing payloads without copies (for transfers of a GiB).
* ``Admin`` speaks the relay's admin API over one keep-alive connection.
* ``open_peer`` connects and upgrades in one call.
* ``RemoteControlled`` runs a relay with a separate, enrolled
  ``relay-controller`` that tests can kill and restart.

Every read has a deadline: a missing frame is a test failure, not a hang.
"""

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import time

import relaytest

TIMEOUT = relaytest.TIMEOUT
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def mask_bytes(data, key):
    """XORs data with the 4-byte key (RFC 6455 §5.3), fast for big payloads."""
    if not data:
        return b""
    n = len(data)
    reps = (n + 3) // 4
    k = int.from_bytes((key * reps)[:n], "little")
    return (int.from_bytes(data, "little") ^ k).to_bytes(n, "little")


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, key=None, length=None):
    """One frame's bytes.  rsv is the 3 RSV bits (0..7); length overrides
    the encoded payload length (to lie about it)."""
    payload = bytes(payload)
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = key if key is not None else os.urandom(4)
        return head + key + mask_bytes(payload, key)
    return head + payload


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason if code is not None else b""


class Frame:
    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode, self.masked, self.payload = fin, rsv, opcode, masked, payload

    @property
    def close_code(self):
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self):
        return self.payload[2:].decode("utf-8", "replace")

    def __repr__(self):
        return "<Frame op=%d fin=%s len=%d %r>" % (self.opcode, self.fin, len(self.payload),
                                                 self.payload[:40])


class Closed(Exception):
    """The relay sent a close frame while a data message was expected."""

    def __init__(self, frame):
        super().__init__("closed with %s %r" % (frame.close_code, frame.close_reason))
        self.frame = frame
        self.code = frame.close_code


class WsConn:
    """A client WebSocket on a connected socket (plain or TLS)."""

    def __init__(self, sock):
        self.sock = sock
        self.reader = relaytest.Reader(sock)
        self.response = None
        self.pongs = []
        self.sent_close = False

    # -- handshake --------------------------------------------------------
    def handshake(self, path, headers=(), protocols=None, key=None, timeout=TIMEOUT):
        """Sends the upgrade request; returns the Response (status 101 or a
        refusal, whose JSON body is read).  On 101 checks Sec-WebSocket-Accept."""
        key = key or base64.b64encode(os.urandom(16)).decode()
        hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
        if protocols:
            hdrs.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
        hdrs += list(headers)
        self.sock.sendall(relaytest.http_request("GET", path, headers=hdrs))
        r = self.reader.read_response(timeout)
        self.response = r
        if r.status == 101:
            want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            assert r.header("Sec-WebSocket-Accept") == want, r
        return r

    # -- sending ---------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", **kw):
        self.sock.sendall(frame(opcode, payload, **kw))
        if opcode == CLOSE and kw.get("fin", True):
            self.sent_close = True

    def send_message(self, payload, opcode=None, fragments=1):
        """A whole message, split into `fragments` frames (masked)."""
        if opcode is None:
            opcode = TEXT if isinstance(payload, str) else BINARY
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        step = max(1, -(-len(payload) // fragments)) if payload else 1
        parts = [payload[i:i + step] for i in range(0, len(payload), step)] or [b""]
        out = b""
        for i, p in enumerate(parts):
            out += frame(opcode if i == 0 else CONT, p, fin=i == len(parts) - 1)
        self.sock.sendall(out)

    def ping(self, payload=b""):
        self.send_frame(PING, payload)

    def close(self, code=1000, reason=b""):
        self.send_frame(CLOSE, close_payload(code, reason))
        self.sent_close = True

    # -- receiving ---------------------------------------------------------
    def recv_frame(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        r = self.reader
        b0, b1 = r.read_exact(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", r.read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", r.read_exact(8, deadline))[0]
        key = r.read_exact(4, deadline) if b1 & 0x80 else None
        payload = r.read_exact(n, deadline) if n else b""
        if key:
            payload = mask_bytes(payload, key)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, key is not None, payload)

    def recv_message(self, timeout=TIMEOUT, answer_pings=True):
        """Next data message as (opcode, bytes); fragments are joined and
        checked (CONT only inside a message).  Pongs are kept in self.pongs;
        a close frame raises Closed."""
        deadline = time.monotonic() + timeout
        op, parts = None, []
        while True:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            assert not f.masked, "server frames must not be masked: %r" % f
            assert f.rsv == 0, f
            if f.opcode == CLOSE:
                raise Closed(f)
            if f.opcode == PING:
                if answer_pings:
                    self.send_frame(PONG, f.payload)
                continue
            if f.opcode == PONG:
                self.pongs.append(f.payload)
                continue
            if op is None:
                assert f.opcode in (TEXT, BINARY), "message starts with %r" % f
                op = f.opcode
            else:
                assert f.opcode == CONT, "expected a continuation, got %r" % f
            parts.append(f.payload)
            if f.fin:
                return op, b"".join(parts)

    def expect_close(self, timeout=TIMEOUT):
        """Reads until the relay's close frame (skipping data) and returns
        its code (None for an empty close payload); answers it with a close
        as a client should (unless we sent one first), then reads to EOF."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if f.opcode == CLOSE:
                break
        self.last_close = f
        if not self.sent_close:
            try:
                self.send_frame(CLOSE, f.payload[:2])
                self.sent_close = True
            except OSError:
                pass  # the relay may already have gone
        try:
            rest = relaytest.recv_until_closed(self.sock, max(0.5, deadline - time.monotonic()))
        except relaytest.TestError:
            rest = None  # the relay may wait for our close; that is allowed
        self.after_close = rest
        return f.close_code

    def shutdown(self):
        try:
            self.sock.close()
        except OSError:
            pass


class StreamHasher:
    """Incremental parser of the frames a server sends, for bulk transfers:
    feed() it whatever recv() returned; payload bytes of data messages go
    straight into a SHA-256 (no copies), message framing is checked (TEXT or
    BINARY starts a message, CONT continues it, never masked, no RSV), and
    messages, their types and control frames are counted."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.hdr = bytearray()
        self.left = 0          # payload bytes still to come in this frame
        self.cur = None        # header of the frame being read
        self.in_msg = False
        self.msg_op = None
        self.messages = 0
        self.types = {}
        self.payload_bytes = 0
        self.controls = []     # (opcode, payload) of control frames
        self._ctrl = bytearray()

    def _header_need(self):
        if len(self.hdr) < 2:
            return 2
        n = self.hdr[1] & 0x7F
        return 2 + (2 if n == 126 else 8 if n == 127 else 0)

    def _start_frame(self):
        b0, b1 = self.hdr[0], self.hdr[1]
        fin, rsv, op = bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF
        assert not b1 & 0x80, "server frame is masked"
        assert rsv == 0, "RSV bits set by the server"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", bytes(self.hdr[2:4]))[0]
        elif n == 127:
            n = struct.unpack("!Q", bytes(self.hdr[2:10]))[0]
        self.hdr.clear()
        if op >= 8:
            assert fin and n <= 125, "bad control frame"
        elif self.in_msg:
            assert op == CONT, "new message (opcode %d) inside a message" % op
        else:
            assert op in (TEXT, BINARY), "message starts with opcode %d" % op
            self.msg_op = op
        self.cur = (fin, op)
        self.left = n
        if n == 0:
            self._end_frame()

    def _end_frame(self):
        fin, op = self.cur
        if op >= 8:
            self.controls.append((op, bytes(self._ctrl)))
            self._ctrl.clear()
        elif fin:
            self.messages += 1
            self.types[self.msg_op] = self.types.get(self.msg_op, 0) + 1
            self.in_msg = False
        else:
            self.in_msg = True
        self.cur = None

    def feed(self, data):
        mv = memoryview(data)
        i, n = 0, len(mv)
        while i < n:
            if self.cur is None:
                need = self._header_need()
                take = min(need - len(self.hdr), n - i)
                self.hdr += mv[i:i + take]
                i += take
                if len(self.hdr) == self._header_need():
                    self._start_frame()
                continue
            k = min(self.left, n - i)
            if self.cur[1] >= 8:
                self._ctrl += mv[i:i + k]
            else:
                self.sha.update(mv[i:i + k])
                self.payload_bytes += k
            self.left -= k
            i += k
            if self.left == 0:
                self._end_frame()

    def hexdigest(self):
        return self.sha.hexdigest()


def connect(relay, timeout=TIMEOUT):
    """A socket to the relay: plain, or TLS verified against its CA."""
    return relay.connect(timeout)


def open_peer(relay, session_id, token=None, how="bearer", protocols=None, headers=(),
              query="", expect=101, timeout=TIMEOUT):
    """Connects and upgrades on /relay/{id}.  how: "bearer", "query",
    "subprotocol" or None (no token).  Asserts the status; returns WsConn."""
    c = WsConn(connect(relay, timeout))
    path = "/relay/%s" % session_id
    hdrs = list(headers)
    protos = list(protocols or [])
    params = [query] if query else []
    if token is not None and how == "bearer":
        hdrs.append(("Authorization", "Bearer " + token))
    elif token is not None and how == "query":
        params.append("token=" + token)
    elif token is not None and how == "subprotocol":
        protos.append("swsrs.token." + token)
    if params:
        path += "?" + "&".join(params)
    r = c.handshake(path, headers=hdrs, protocols=protos or None, timeout=timeout)
    if expect is not None:
        assert r.status == expect, (r, relay.describe() if r.status != expect else "")
    return c


def raw_peer(relay, sid, token, rcvbuf=None):
    """A plain peer on its own socket (rcvbuf: a small receive buffer, for a
    reader that falls behind); asserts the 101."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(relaytest.TIMEOUT)
    s.connect(("127.0.0.1", relay.port))
    c = WsConn(s)
    r = c.handshake("/relay/" + sid, headers=[("Authorization", "Bearer " + token)])
    assert r.status == 101, r
    return c


class Admin:
    """The admin API on one keep-alive connection (the relay runs --no-auth
    unless a bearer token is given).  Construction waits until the relay
    has logged a controller link."""

    def __init__(self, relay, token=None, timeout=TIMEOUT):
        self.relay = relay
        self.token = token
        self.timeout = timeout
        self.sock = None
        # The relay logs "listening" before its (embedded or remote)
        # controller link is up; admin calls until then are refused 503.
        relay.wait_for_log(msg="controller link up", timeout=timeout)

    def request(self, method, path, body=None):
        hdrs = []
        if self.token:
            hdrs.append(("Authorization", "Bearer " + self.token))
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.append(("Content-Type", "application/json"))
        req = relaytest.http_request(method, path, headers=hdrs, body=data)
        for attempt in range(2):
            if self.sock is None:
                self.sock = self.relay.connect(self.timeout)
                self.reader = relaytest.Reader(self.sock)
            try:
                self.sock.sendall(req)
                r = self.reader.read_response(self.timeout)
            except (EOFError, ConnectionError, ssl.SSLError, OSError):
                self.close()  # the keep-alive connection went idle: redial once
                if attempt:
                    raise
                continue
            if (r.header("Connection") or "").lower() == "close":
                self.close()
            return r

    def create(self, **body):
        r = self.request("POST", "/admin/sessions", body if body else None)
        assert r.status == 201, r
        return r.json()

    def get(self, sid):
        return self.request("GET", "/admin/sessions/" + sid)

    def status(self, sid):
        r = self.get(sid)
        assert r.status == 200, r
        return r.json()

    def delete(self, sid):
        return self.request("DELETE", "/admin/sessions/" + sid)

    def wait_status(self, sid, pred, timeout=TIMEOUT, every=0.2):
        """Polls GET until pred(status) holds; returns the status."""
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = self.status(sid)
            if pred(st):
                return st
            time.sleep(every)
        raise relaytest.TestError("session %s never matched; last %r" % (sid, st))

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None


# --------------------------------------------------------------------------
# A relay with a remote controller (enrolled over mutual TLS)
# --------------------------------------------------------------------------

class RemoteControlled:
    """A relay linked to a separate `relay-controller run` process.

    Enrolment as an operator does it: `relay-controller init-ca`, `relay
    gen-csr`, `relay-controller sign-csr --host 127.0.0.1`.  The relay
    listens for controllers on an ephemeral tunnel port; the controller
    keeps its registry in state_dir, so it can be killed (SIGKILL) and
    restarted without losing sessions.  The relay runs --no-auth and the
    controller --accept-unauthenticated, so the admin API needs no IdP.
    """

    def __init__(self, directory, certs=None, plain=False, relay_extra=(), node_id="relay-1"):
        self.dir = str(directory)
        self.ca_dir = os.path.join(self.dir, "ca")
        self.state_dir = os.path.join(self.dir, "state")
        key = os.path.join(self.dir, "tunnel.key")
        csr = os.path.join(self.dir, "relay.csr")
        self.tunnel_crt = os.path.join(self.dir, "tunnel.crt")
        relaytest.run([relaytest.CONTROLLER_BIN, "init-ca", "--dir", self.ca_dir])
        p = relaytest.run([relaytest.RELAY_BIN, "gen-csr", "--key", key, "--node-id", node_id])
        with open(csr, "wb") as f:
            f.write(p.stdout)
        p = relaytest.run([relaytest.CONTROLLER_BIN, "sign-csr", "--dir", self.ca_dir,
                           "--host", "127.0.0.1", "--csr", csr])
        with open(self.tunnel_crt, "wb") as f:
            f.write(p.stdout)
        extra = ["--controller-ca", os.path.join(self.ca_dir, "ca.crt"),
                 "--tunnel-cert", self.tunnel_crt, "--tunnel-key", key,
                 "--tunnel-listen", "127.0.0.1:0", "--node-id", node_id,
                 "--call-timeout", "2s"] + list(relay_extra)
        self.relay = relaytest.Relay(certs=None if plain else certs, plain=plain, extra=extra)
        self.tunnel_port = int(self.relay.wait_for_log(msg="listening for controllers")["port"])
        self.controller = None
        self.controllers = []

    def start_controller(self, timeout=TIMEOUT):
        """Starts the controller and waits until the relay reports the link up
        (counting link-up lines, so this also works after a restart)."""
        before = len(self.relay.find_logs(msg="controller link up"))
        self.controller = relaytest.Controller(
            ["run", "--relay", "127.0.0.1:%d" % self.tunnel_port, "--ca-dir", self.ca_dir,
             "--relay-server-name", "127.0.0.1", "--state-dir", self.state_dir,
             "--accept-unauthenticated", "--backoff-base", "100ms", "--backoff-max", "1s",
             "--log-level", "debug"])
        self.controllers.append(self.controller)
        deadline = time.monotonic() + timeout
        while len(self.relay.find_logs(msg="controller link up")) <= before:
            if time.monotonic() > deadline:
                raise relaytest.TestError("controller link never came up\n%s\n%s" % (
                    self.relay.describe(), self.controller.describe()))
            if not self.controller.alive():
                raise relaytest.TestError("controller exited\n" + self.controller.describe())
            time.sleep(0.05)
        return self.controller

    def kill_controller(self, timeout=TIMEOUT):
        """SIGKILL (no goodbye on the link); waits for the relay to see the
        link down."""
        before = len(self.relay.find_logs(msg="controller link down"))
        self.controller.kill()
        deadline = time.monotonic() + timeout
        while len(self.relay.find_logs(msg="controller link down")) <= before:
            if time.monotonic() > deadline:
                raise relaytest.TestError("relay never saw the link drop\n" + self.relay.describe())
            time.sleep(0.05)

    def stop(self):
        """Stops everything; the relay must exit 0 sanitizer-clean."""
        errors = []
        for c in self.controllers:
            try:
                if c.alive():
                    c.stop()
            except Exception as e:
                errors.append(e)
        try:
            if self.relay.alive():
                self.relay.stop()
            else:
                self.relay.check_sanitizers()
        except Exception as e:
            errors.append(e)
        finally:
            self.relay.kill()
        if errors:
            raise errors[0]
