"""grpcpeer — an independent gRPC-over-HTTP/2 peer for the controller link,
plus the enrolment and process helpers the controller-link tests share.

The relay and the controller speak gRPC over HTTP/2 with the roles reversed
(the controller dials, the relay is the HTTP/2 client).  To show that the
framing is the standard one and not merely self-consistent, this module
re-implements the wire format from the specifications, on python3-h2:

* ``pb_encode`` / ``pb_decode``: a tiny protobuf codec (varints and
  length-delimited fields only, which is all controller.proto uses) driven
  by the ``SCHEMAS`` below, transcribed from proto/controller.proto.
* ``grpc_frame`` / ``grpc_deframe``: the 5-byte message prefix (compressed
  flag, big-endian length), checked strictly.
* ``H2Peer``: one HTTP/2 connection on a (TLS) socket, either side.  As a
  *client* it makes unary gRPC calls (``unary``) and opens streams; as a
  *server* it takes requests (``next_request``) and answers them
  (``reply_unary``, ``reply_status``).  Everything is pumped synchronously
  by the caller with a deadline, so a silent peer becomes a test failure.
* ``Pki``: real enrolment with the project's own commands (init-ca,
  gen-csr, sign-csr); ``start_remote_relay`` runs ``relay serve`` with a
  remote-controller tunnel listener; small HTTP and /metrics helpers.
"""

import base64
import os
import secrets
import select
import socket
import ssl
import subprocess
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

import relaytest

TIMEOUT = relaytest.TIMEOUT

# --------------------------------------------------------------------------
# Protobuf (proto3, varint and length-delimited wire types)
# --------------------------------------------------------------------------

# name -> (field number, type); type is "string", "bytes", "bool", "uint",
# "int64", "enum", "repeated string", or a schema name for a sub-message.
SCHEMAS = {
    "SlotRequest": {"session_id": (1, "string"), "token": (2, "string"),
                    "requested_role": (3, "enum"), "remote_addr": (4, "string"),
                    "origin": (5, "string"), "client_cert_sha256": (6, "bytes"),
                    "relay_node_id": (7, "string")},
    "SlotDecision": {"allow": (1, "bool"), "slot": (2, "enum"), "http_status": (3, "uint"),
                     "reason": (4, "string"), "message": (5, "string"),
                     "expires_at_unix": (6, "int64"), "peer_wait_seconds": (7, "uint"),
                     "max_message_bytes": (8, "uint")},
    "Principal": {"subject": (1, "string"), "scopes": (2, "repeated string"),
                  "issuer": (3, "string")},
    "AdminRequest": {"op": (1, "enum"), "principal": (2, "Principal"),
                     "session_id": (3, "string"), "ttl_seconds": (4, "uint"),
                     "peer_wait_seconds": (5, "uint"), "relay_node_id": (6, "string"),
                     "auth_disabled": (7, "bool"), "page_size": (8, "uint"),
                     "page_token": (9, "string")},
    "SessionStatus": {"id": (1, "string"), "state": (2, "string"),
                      "created_at_unix": (3, "int64"), "expires_at_unix": (4, "int64"),
                      "last_activity_unix": (5, "int64"), "bytes_in": (6, "uint"),
                      "bytes_out": (7, "uint"), "initiator_connected": (8, "bool"),
                      "responder_connected": (9, "bool"), "relay_node_id": (10, "string"),
                      "public_url": (11, "string")},
    "CreatedSession": {"status": (1, "SessionStatus"), "initiator_token": (2, "string"),
                       "responder_token": (3, "string"), "initiator_url": (4, "string"),
                       "responder_url": (5, "string")},
    "AdminResponse": {"http_status": (1, "uint"), "error": (2, "string"),
                      "message": (3, "string"), "created": (4, "CreatedSession"),
                      "sessions": (5, "repeated SessionStatus"),
                      "next_page_token": (6, "string")},
    "RelayEvent": {"hello": (1, "Hello"), "session": (2, "SessionEvent")},
    "Hello": {"node_id": (1, "string"), "version": (2, "string"), "public_url": (3, "string"),
              "sessions": (4, "uint")},
    "SessionEvent": {"type": (1, "enum"), "session_id": (2, "string"), "role": (3, "enum"),
                     "bytes_in": (4, "uint"), "bytes_out": (5, "uint"),
                     "last_activity_unix": (6, "int64"), "close_code": (7, "uint"),
                     "reason": (8, "string"), "counter_epoch": (9, "uint")},
    "ControllerCommand": {"kick": (1, "Kick"), "drain": (2, "Drain"), "limits": (3, "Limits")},
    "Kick": {"session_id": (1, "string"), "close_code": (2, "uint"), "reason": (3, "string")},
    "Drain": {"grace_seconds": (1, "uint")},
    "Limits": {"max_message_bytes": (1, "uint"), "max_sessions": (2, "uint"),
               "peer_wait_seconds": (3, "uint")},
    # proto/health.proto (grpc.health.v1): the relay's keepalive probe.
    "HealthCheckRequest": {"service": (1, "string")},
    "HealthCheckResponse": {"status": (1, "enum")},
}

ROLE_UNSPECIFIED, ROLE_INITIATOR, ROLE_RESPONDER = 0, 1, 2
OP_CREATE, OP_LIST, OP_GET, OP_DELETE = 1, 2, 3, 4
EV_ATTACH, EV_DETACH, EV_OPEN, EV_CLOSE, EV_STATS = 1, 2, 3, 4, 5

GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_NOT_FOUND = 0, 3, 5
GRPC_UNIMPLEMENTED, GRPC_UNAVAILABLE = 12, 14
HEALTH_SERVING = 1

PATH_VALIDATE = "/relay.v1.Controller/Validate"
PATH_ADMIN = "/relay.v1.Controller/Admin"
PATH_EVENTS = "/relay.v1.Controller/Events"
PATH_HEALTH = "/grpc.health.v1.Health/Check"


def _varint(n):
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, i):
    n = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def pb_encode(schema, values):
    """Encodes a dict of field values with SCHEMAS[schema]; unset (None,
    False, 0, "") fields are left out, as proto3 does."""
    spec = SCHEMAS[schema]
    out = bytearray()
    for name, value in values.items():
        num, typ = spec[name]
        if typ.startswith("repeated "):
            items, typ = value, typ[len("repeated "):]
        else:
            if value in (None, False, 0, "", b""):
                continue
            items = [value]
        for v in items:
            if typ in ("bool", "uint", "int64", "enum"):
                out += _varint(num << 3 | 0) + _varint(int(v))
            else:
                if typ == "string":
                    data = v.encode("utf-8")
                elif typ == "bytes":
                    data = bytes(v)
                else:
                    data = pb_encode(typ, v)
                out += _varint(num << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def _default(typ):
    if typ.startswith("repeated "):
        return []
    return {"string": "", "bytes": b"", "bool": False}.get(
        typ, 0 if typ in ("uint", "int64", "enum") else None)


def pb_decode(schema, data):
    """Decodes bytes with SCHEMAS[schema] into a dict holding every field
    (proto3 defaults for absent ones).  Unknown fields are skipped; a
    malformed buffer raises ValueError."""
    spec = SCHEMAS[schema]
    by_num = {num: (name, typ) for name, (num, typ) in spec.items()}
    out = {name: _default(typ) for name, (num, typ) in spec.items()}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _read_varint(data, i)
        elif wt == 2:
            n, i = _read_varint(data, i)
            if i + n > len(data):
                raise ValueError("truncated field %d" % num)
            val, i = data[i:i + n], i + n
        elif wt == 1:
            val, i = data[i:i + 8], i + 8
        elif wt == 5:
            val, i = data[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        if num not in by_num:
            continue
        name, typ = by_num[num]
        repeated = typ.startswith("repeated ")
        base = typ[len("repeated "):] if repeated else typ
        if base == "bool":
            v = bool(val)
        elif base in ("uint", "enum"):
            v = val
        elif base == "int64":
            v = val - (1 << 64) if val >= 1 << 63 else val
        elif base == "string":
            v = bytes(val).decode("utf-8")
        elif base == "bytes":
            v = bytes(val)
        else:
            v = pb_decode(base, bytes(val))
        if repeated:
            out[name].append(v)
        else:
            out[name] = v
    return out


# --------------------------------------------------------------------------
# gRPC message framing
# --------------------------------------------------------------------------

def grpc_frame(payload):
    """One length-prefixed message: flag 0 (uncompressed), 4-byte length."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_deframe(data):
    """Splits a stream's DATA into messages, checking every prefix strictly:
    the compressed flag must be 0 and the lengths must add up exactly."""
    msgs, i = [], 0
    while i < len(data):
        if len(data) - i < 5:
            raise AssertionError("truncated gRPC prefix: %r" % data[i:])
        flag, n = data[i], int.from_bytes(data[i + 1:i + 5], "big")
        if flag != 0:
            raise AssertionError("compressed flag %d set without negotiation" % flag)
        if len(data) - i - 5 < n:
            raise AssertionError("gRPC message says %d bytes, %d present" % (n, len(data) - i - 5))
        msgs.append(bytes(data[i + 5:i + 5 + n]))
        i += 5 + n
    return msgs


# --------------------------------------------------------------------------
# HTTP/2
# --------------------------------------------------------------------------

class Stream:
    """What one HTTP/2 stream carried: headers, DATA, trailers, end/reset."""

    def __init__(self, sid, headers=None):
        self.sid = sid
        self.headers = dict(headers or [])
        self.data = bytearray()
        self.trailers = {}
        self.ended = False
        self.reset = None
        self.taken = 0  # messages already handed out by H2Peer.next_message

    def messages(self):
        return grpc_deframe(bytes(self.data))


class GrpcReply:
    """A finished unary call, as seen by the client."""

    def __init__(self, stream):
        self.stream = stream
        self.headers = stream.headers
        self.trailers = stream.trailers
        # Trailers-Only: grpc-status rides in the only HEADERS frame.
        self.trailers_only = not stream.trailers and "grpc-status" in stream.headers
        st = stream.trailers if not self.trailers_only else stream.headers
        self.status = int(st["grpc-status"]) if "grpc-status" in st else None
        self.message = st.get("grpc-message", "")
        self.messages = stream.messages()

    def check(self):
        """The response framing every gRPC client relies on."""
        assert self.stream.reset is None, "stream reset: %r" % self.stream.reset
        assert self.headers.get(":status") == "200", self.headers
        assert self.headers.get("content-type", "").startswith("application/grpc"), self.headers
        assert self.status is not None, "no grpc-status (headers %r, trailers %r)" % (
            self.headers, self.trailers)
        if self.trailers_only:
            assert not self.messages, "Trailers-Only response with DATA"
        return self

    def decode(self, schema):
        self.check()
        assert self.status == GRPC_OK, (self.status, self.message)
        assert len(self.messages) == 1, "unary answer with %d messages" % len(self.messages)
        return pb_decode(schema, self.messages[0])


class H2Peer:
    """One HTTP/2 connection over `sock`, client or server side, pumped by
    the caller.  Streams are kept in `streams`; requests a server receives
    queue in `requests`."""

    def __init__(self, sock, client_side, settings=None):
        cfg = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.sock = sock
        self.client_side = client_side
        self.streams = {}
        self.requests = []
        self.closed = False
        self.goaway = None
        self.remote_settings_seen = False
        self.pings_acked = 0
        self.pings_received = []  # time.monotonic() of each PING the other side sent
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()

    # -- transport --

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read_once(self, timeout):
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending:
            r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
            if not r:
                return
        try:
            self.sock.settimeout(max(timeout, 0.001))
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return
        for ev in self.conn.receive_data(data):
            self._on_event(ev)
        self.flush()

    def poll(self, timeout):
        """Reads and handles what arrives within `timeout` (at most one read)."""
        if not self.closed:
            self._read_once(timeout)

    def pump(self, until, timeout=TIMEOUT, what="condition"):
        """Reads and handles frames until until() is true; returns its value.
        Fails when the deadline passes or the peer closes first."""
        deadline = time.monotonic() + timeout
        while True:
            v = until()
            if v:
                return v
            if self.closed:
                raise relaytest.TestError("HTTP/2 peer closed while waiting for %s" % what)
            left = deadline - time.monotonic()
            if left <= 0:
                raise relaytest.TestError("timed out waiting for %s" % what)
            self._read_once(min(left, 0.2))

    def _on_event(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            st = Stream(ev.stream_id, ev.headers)
            self.streams[ev.stream_id] = st
            self.requests.append(st)
        elif isinstance(ev, h2.events.ResponseReceived):
            self.streams[ev.stream_id].headers = dict(ev.headers)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.streams[ev.stream_id].trailers = dict(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            self.streams[ev.stream_id].data += ev.data
            # Give the window back at once: messages here are small.
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.streams[ev.stream_id].ended = True
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in self.streams:
                self.streams[ev.stream_id].reset = ev.error_code
                self.streams[ev.stream_id].ended = True
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.remote_settings_seen = True
        elif isinstance(ev, h2.events.PingAckReceived):
            self.pings_acked += 1
        elif isinstance(ev, h2.events.PingReceived):
            self.pings_received.append(time.monotonic())  # h2 has queued the ACK
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev.error_code
            self.closed = True

    # -- client side --

    def open_stream(self, path, timeout_header="10S", end_stream=False, body=b""):
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "https"), (":path", path),
                   (":authority", "relay-controller"), ("content-type", "application/grpc"),
                   ("te", "trailers")]
        if timeout_header:
            headers.append(("grpc-timeout", timeout_header))
        self.streams[sid] = Stream(sid)
        self.conn.send_headers(sid, headers)
        if body or end_stream:
            self.conn.send_data(sid, body, end_stream=end_stream)
        self.flush()
        return sid

    def send_message(self, sid, payload, end_stream=False):
        self.conn.send_data(sid, grpc_frame(payload), end_stream=end_stream)
        self.flush()

    def unary(self, path, payload, timeout=TIMEOUT, raw_body=None):
        """A unary call; returns its GrpcReply once the stream has ended."""
        body = raw_body if raw_body is not None else grpc_frame(payload)
        sid = self.open_stream(path, body=body, end_stream=True)
        st = self.streams[sid]
        self.pump(lambda: st.ended, timeout, "the answer to %s" % path)
        return GrpcReply(st)

    # -- server side --

    def next_request(self, path=None, timeout=TIMEOUT, complete=True):
        """The next request (optionally on `path`), complete (END_STREAM
        seen) unless complete=False; removed from the queue."""
        def find():
            for st in self.requests:
                if (path is None or st.headers.get(":path") == path) and (st.ended or not complete):
                    return st
            return None
        st = self.pump(find, timeout, "a request on %s" % (path or "any path"))
        self.requests.remove(st)
        return st

    def next_message(self, st, schema, timeout=TIMEOUT, pred=None):
        """The next message on a long-lived stream, decoded (skipping those
        pred rejects)."""
        def find():
            msgs = st.messages()
            while st.taken < len(msgs):
                m = pb_decode(schema, msgs[st.taken])
                st.taken += 1
                if pred is None or pred(m):
                    return m
            return None
        return self.pump(find, timeout, "a %s message on stream %d" % (schema, st.sid))

    def send_response_headers(self, sid, end_stream=False, extra=()):
        self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")]
                               + list(extra), end_stream=end_stream)
        self.flush()

    def reply_unary(self, sid, payload, status=GRPC_OK):
        """Headers, one framed message, then grpc-status trailers."""
        self.send_response_headers(sid)
        self.conn.send_data(sid, grpc_frame(payload))
        self.conn.send_headers(sid, [("grpc-status", str(status))], end_stream=True)
        self.flush()

    def reply_status(self, sid, status, message=""):
        """A Trailers-Only answer (grpc-status in the only HEADERS frame)."""
        extra = [("grpc-status", str(status))]
        if message:
            extra.append(("grpc-message", message))
        self.send_response_headers(sid, end_stream=True, extra=extra)

    def ping(self):
        self.conn.ping(b"grpcpeer")
        self.flush()

    def goaway_raw(self, last_stream_id, error_code=0, debug=b""):
        """A GOAWAY frame written past h2's state machine, which would
        otherwise stop us answering the streams it still covers."""
        from hyperframe.frame import GoAwayFrame
        f = GoAwayFrame(0)
        f.last_stream_id = last_stream_id
        f.error_code = error_code
        f.additional_data = debug
        self.flush()
        self.sock.sendall(f.serialize())

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def dial_relay(pki, port, cert=None, timeout=TIMEOUT):
    """Dials a relay's tunnel port as a controller: TLS 1.3, ALPN h2, the
    controller certificate `cert` ((crt, key); default pki's own), the
    relay's certificate verified against the CA and its IP SAN."""
    crt, key = cert or (pki.ctl_crt, pki.ctl_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_crt)
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except Exception:
        raw.close()
        raise
    assert tls.selected_alpn_protocol() == "h2" and tls.version() == "TLSv1.3"
    return tls


def check_grpc_request(st, path):
    """What a gRPC server must see on a request: POST, the method path,
    content-type application/grpc, te: trailers, a valid grpc-timeout."""
    h = st.headers
    assert h.get(":method") == "POST", h
    assert h.get(":path") == path, h
    assert h.get(":scheme") in ("https", "http"), h
    assert h.get("content-type", "").startswith("application/grpc"), h
    assert h.get("te") == "trailers", h
    tmo = h.get("grpc-timeout")
    if tmo is not None:
        assert 2 <= len(tmo) <= 9 and tmo[:-1].isdigit() and tmo[-1] in "HMSmun", tmo


def token22():
    """128 random bits, base64url without padding: the id/token shape."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


# --------------------------------------------------------------------------
# Enrolment, processes, HTTP
# --------------------------------------------------------------------------

def run_tool(argv, stdout=None, timeout=60):
    p = subprocess.run([str(a) for a in argv], stdout=stdout or subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if p.returncode != 0:
        raise relaytest.TestError("%s failed (%d): %s" % (
            " ".join(map(str, argv)), p.returncode, p.stderr.decode("utf-8", "replace")))
    return p


class Pki:
    """Real enrolment with the project's commands, in `directory`:
    ``relay-controller init-ca`` makes CA/ (ca.crt, ca.key, controller.crt,
    controller.key); ``relay(node)`` runs ``relay gen-csr`` and
    ``relay-controller sign-csr --host 127.0.0.1`` and returns (crt, key);
    ``extra_controller(name)`` runs ``relay-controller issue-cert --name``
    for a further controller identity from the same CA and returns
    (crt, key)."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.ca_dir = os.path.join(self.dir, "CA")
        run_tool([relaytest.CONTROLLER_BIN, "init-ca", "--dir", self.ca_dir])
        self.ca_crt = os.path.join(self.ca_dir, "ca.crt")
        self.ca_key = os.path.join(self.ca_dir, "ca.key")
        self.ctl_crt = os.path.join(self.ca_dir, "controller.crt")
        self.ctl_key = os.path.join(self.ca_dir, "controller.key")
        self._relays = {}

    def relay(self, node):
        if node not in self._relays:
            key = os.path.join(self.dir, node + ".key")
            csr = os.path.join(self.dir, node + ".csr")
            crt = os.path.join(self.dir, node + ".crt")
            with open(csr, "wb") as f:
                run_tool([relaytest.RELAY_BIN, "gen-csr", "--key", key, "--node-id", node], stdout=f)
            with open(crt, "wb") as f:
                run_tool([relaytest.CONTROLLER_BIN, "sign-csr", "--dir", self.ca_dir, "--host",
                          "127.0.0.1", "--csr", csr], stdout=f)
            self._relays[node] = (crt, key)
        return self._relays[node]

    def extra_controller(self, name):
        crt, key = (os.path.join(self.ca_dir, name + ext) for ext in (".crt", ".key"))
        if not os.path.exists(crt):
            run_tool([relaytest.CONTROLLER_BIN, "issue-cert", "--dir", self.ca_dir,
                      "--name", name])
        return crt, key


def relay_impostor_context(pki, crt, key):
    """A TLS server context that plays a relay: the relay certificate from
    sign-csr, and mutual TLS (the controller must present its own)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    ctx.load_verify_locations(pki.ca_crt)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


def accept_controller(lsock, ctx, timeout=TIMEOUT):
    """The next controller dialling lsock, after the TLS handshake."""
    lsock.settimeout(timeout)
    raw, _ = lsock.accept()
    raw.settimeout(timeout)
    return ctx.wrap_socket(raw, server_side=True)


def start_remote_relay(start_relay, pki, node, extra=(), **kw):
    """`relay serve --plain --no-auth` on 127.0.0.1:0 with a tunnel listener
    on 127.0.0.1:0 for remote controllers; sets relay.tunnel_port."""
    crt, key = pki.relay(node)
    r = start_relay(plain=True, extra=["--tunnel-listen", "127.0.0.1:0", "--tunnel-cert", crt,
                                       "--tunnel-key", key, "--controller-ca", pki.ca_crt,
                                       "--node-id", node] + list(extra), **kw)
    r.tunnel_port = int(r.wait_for_log(msg="listening for controllers")["port"])
    return r


def controller_args(relays, ca_dir, state_dir=None, extra=(), log_level="debug", cert=None):
    """`relay-controller run` arguments dialing each relay's tunnel port;
    cert: (crt, key) instead of the CA directory's controller.crt."""
    args = ["run", "--ca-dir", ca_dir, "--accept-unauthenticated", "--log-level", log_level]
    if cert:
        args += ["--cert", cert[0], "--key", cert[1]]
    for r in relays:
        args += ["--relay", "127.0.0.1:%d" % r.tunnel_port]
    if state_dir:
        args += ["--state-dir", str(state_dir)]
    return args + list(extra)


def http(relay, method, path, body=None, timeout=TIMEOUT):
    """One plain-HTTP request on a fresh connection; a relaytest.Response."""
    s = relay.connect(timeout)
    try:
        data = b"" if body is None else body
        hdrs = [("Connection", "close")]
        if body is not None:
            hdrs.append(("Content-Type", "application/json"))
            if not data:
                hdrs.append(("Content-Length", "0"))
        s.sendall(relaytest.http_request(method, path, headers=hdrs, body=data))
        return relaytest.read_response(s, timeout)
    finally:
        s.close()


metrics = relaytest.metrics


def wait_ready(relay, want=200, timeout=TIMEOUT):
    """Polls /readyz until it answers `want`; returns the seconds it took."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = relay.get("/readyz")
        if last.status == want:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise relaytest.TestError("/readyz still %r after %.1fs\n%s" % (last, timeout, relay.describe()))


def wait_links(relay, n, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(relay)
        if m.get("relay_controller_links") == n:
            return m
        if time.monotonic() > deadline:
            raise relaytest.TestError("relay_controller_links %r, want %d" % (
                m.get("relay_controller_links"), n))
        time.sleep(0.05)
