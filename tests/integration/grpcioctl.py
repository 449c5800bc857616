"""grpcioctl — a stock gRPC server as a relay controller, and the dial-out
bridge that links it to a relay.

A controller must be implementable with any stock gRPC server (issue 8,
point 2), so this module builds one on python3-grpcio (gRPC Core, the
Debian package) without code generation: ``grpc.method_handlers_generic_
handler`` with (de)serializers made of grpcpeer.pb_encode/pb_decode.  The
server is created with NO ``grpc.http2.*`` options, i.e. with gRPC Core's
default keepalive enforcement (a client that pings too often gets GOAWAY
ENHANCE_YOUR_CALM "too_many_pings").

* ``GrpcioController``: Controller (Validate, Admin, Events) on a plaintext
  127.0.0.1 port, over a small in-memory registry: CREATE mints ids and
  tokens, Validate checks them, LIST pages (page_size / page_token ->
  next_page_token; or, with pages=False, returns everything as a
  controller that does not page may), DELETE sends a Kick down every
  Events stream.  Events
  handlers are generators yielding ControllerCommands from a queue;
  ``push`` queues one, ``end_events`` ends the streams.  Hooks
  (``validate_hook``, ``admin_hook``) let a test answer calls its own way
  (``context.abort(grpc.StatusCode.X, ...)``).  It implements no
  grpc.health.v1 service: gRPC Core itself answers UNIMPLEMENTED.
* ``Bridge``: a gRPC server cannot dial out, so the bridge does it for
  it: it dials the relay's tunnel port with TLS (a controller certificate,
  the relay's certificate verified against the CA, ALPN h2), connects to
  the server's plaintext port and copies bytes both ways, reading the
  HTTP/2 frame headers as they pass (HPACK-decoding the relay's request
  headers) to count PINGs, Health/Check calls, GOAWAYs and paths.
* ``ReadyPoller``: polls /readyz from a thread and keeps every answer.
* Small WebSocket helpers shared by the tests of issue 8.
"""

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import os
import queue
import select
import socket
import ssl
import threading
import time
from concurrent import futures

import grpc
import hpack
import websockets
import websockets.exceptions

import grpcpeer as gp
import relaytest

T = relaytest.TIMEOUT

# HTTP/2 frame types and flags (RFC 9113 §6).
F_DATA, F_HEADERS, F_RST, F_SETTINGS, F_PING, F_GOAWAY, F_CONT = 0, 1, 3, 4, 6, 7, 9
FL_ACK, FL_END_HEADERS, FL_PADDED, FL_PRIORITY = 0x1, 0x4, 0x8, 0x20
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB


# --------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------

class Session:
    def __init__(self, sid, ttl, peer_wait):
        self.id = sid
        self.itok, self.rtok = gp.token22(), gp.token22()
        self.created = int(time.time())
        self.expires = self.created + ttl
        self.peer_wait = peer_wait
        self.attached = {gp.ROLE_INITIATOR: False, gp.ROLE_RESPONDER: False}
        self.epochs = {}  # counter_epoch -> (bytes_in, bytes_out), largest seen
        self.last_activity = 0

    def status(self):
        n = sum(self.attached.values())
        return {"id": self.id, "state": ("pending", "half_open", "open")[n],
                "created_at_unix": self.created, "expires_at_unix": self.expires,
                "last_activity_unix": self.last_activity,
                "bytes_in": sum(v[0] for v in self.epochs.values()),
                "bytes_out": sum(v[1] for v in self.epochs.values()),
                "initiator_connected": self.attached[gp.ROLE_INITIATOR],
                "responder_connected": self.attached[gp.ROLE_RESPONDER]}


class EventsStream:
    """One Events call: the commands queued for it, and how it ended."""

    def __init__(self, context):
        self.context = context
        self.q = queue.Queue(maxsize=1000)
        self.hello = None
        self.events = []


_END = object()


def _handler(kind, fn, req, resp):
    make = {"unary": grpc.unary_unary_rpc_method_handler,
            "stream": grpc.stream_stream_rpc_method_handler}[kind]
    return make(fn, request_deserializer=lambda b: gp.pb_decode(req, b),
                response_serializer=lambda d: gp.pb_encode(resp, d))


class GrpcioController:
    """relay.v1.Controller on python3-grpcio; see the module comment."""

    DEFAULT_PAGE = 100

    def __init__(self, peer_wait_seconds=30, workers=32):
        self.lock = threading.Lock()
        self.sessions = {}
        self.streams = []          # open EventsStreams
        self.all_streams = []      # every EventsStream ever opened
        self.peer_wait = peer_wait_seconds
        self.validate_hook = None  # fn(request dict, context) -> SlotDecision dict or None
        self.admin_hook = None     # fn(request dict, context) -> AdminResponse dict or None
        self.calls = collections.Counter()
        self.pages = True          # False: LIST ignores paging and returns everything
        self.public_url = ""
        # No options: gRPC Core's default keepalive enforcement applies.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "relay.v1.Controller", {
                "Validate": _handler("unary", self._validate, "SlotRequest", "SlotDecision"),
                "Admin": _handler("unary", self._admin, "AdminRequest", "AdminResponse"),
                "Events": _handler("stream", self._events, "RelayEvent", "ControllerCommand"),
            }),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.end_events()
        self.server.stop(grace=1).wait(5)

    # -- test controls --

    def create(self, ttl=600, peer_wait=None):
        s = Session(gp.token22(), ttl, self.peer_wait if peer_wait is None else peer_wait)
        with self.lock:
            self.sessions[s.id] = s
        return s

    def push(self, command):
        """Queues a ControllerCommand (a dict) on every open Events stream;
        returns how many streams took it."""
        with self.lock:
            streams = list(self.streams)
        for st in streams:
            st.q.put(command, timeout=T)
        return len(streams)

    def end_events(self):
        with self.lock:
            streams = list(self.streams)
        for st in streams:
            st.q.put(_END)

    def wait_streams(self, n=1, timeout=T):
        """Waits until n Events streams are open and have said Hello."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                ok = [s for s in self.streams if s.hello]
            if len(ok) >= n:
                return ok
            if time.monotonic() > deadline:
                raise relaytest.TestError("%d Events streams with Hello, want %d" % (len(ok), n))
            time.sleep(0.02)

    # -- Controller --

    def _validate(self, req, context):
        self.calls["Validate"] += 1
        if self.validate_hook:
            r = self.validate_hook(req, context)
            if r is not None:
                return r
        with self.lock:
            s = self.sessions.get(req["session_id"])
        if s is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown session")
        tok = req["token"].encode()
        slot = (gp.ROLE_INITIATOR if hmac.compare_digest(tok, s.itok.encode()) else
                gp.ROLE_RESPONDER if hmac.compare_digest(tok, s.rtok.encode()) else 0)
        if not slot:
            return {"allow": False, "http_status": 401, "reason": "invalid_token"}
        if s.attached[slot]:
            return {"allow": False, "http_status": 409, "reason": "slot_taken"}
        return {"allow": True, "slot": slot, "http_status": 200,
                "expires_at_unix": s.expires, "peer_wait_seconds": s.peer_wait}

    def _admin(self, req, context):
        self.calls["Admin"] += 1
        if self.admin_hook:
            r = self.admin_hook(req, context)
            if r is not None:
                return r
        op = req["op"]
        if op == gp.OP_CREATE:
            s = self.create(req["ttl_seconds"] or 600, req["peer_wait_seconds"] or None)
            url = "%s/relay/%s" % (self.public_url, s.id)
            return {"http_status": 201, "created": {
                "status": s.status(), "initiator_token": s.itok, "responder_token": s.rtok,
                "initiator_url": url, "responder_url": url}}
        if op == gp.OP_LIST:
            if not self.pages:  # a controller that does not page: everything
                with self.lock:
                    return {"http_status": 200,
                            "sessions": [x.status() for x in self.sessions.values()]}
            return self._list_page(req["page_size"] or self.DEFAULT_PAGE, req["page_token"])
        with self.lock:
            s = self.sessions.get(req["session_id"])
            if s is not None and op == gp.OP_DELETE:
                del self.sessions[s.id]
        if s is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
        if op == gp.OP_GET:
            return {"http_status": 200, "sessions": [s.status()]}
        self.push({"kick": {"session_id": s.id, "close_code": 1001, "reason": "deleted"}})
        return {"http_status": 204}

    def _list_page(self, size, token):
        """Pages in id order; the token is the last id handed out."""
        with self.lock:
            ids = sorted(i for i in self.sessions if i > token)
            page = [self.sessions[i].status() for i in ids[:size]]
        return {"http_status": 200, "sessions": page,
                "next_page_token": page[-1]["id"] if len(ids) > size else ""}

    def _events(self, requests, context):
        st = EventsStream(context)
        with self.lock:
            self.streams.append(st)
            self.all_streams.append(st)
        threading.Thread(target=self._read_events, args=(requests, st), daemon=True).start()
        try:
            while context.is_active():
                try:
                    cmd = st.q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if cmd is _END:
                    return
                yield cmd
        finally:
            with self.lock:
                self.streams.remove(st)

    def _read_events(self, requests, st):
        try:
            for ev in requests:
                if ev["hello"]:
                    self.public_url = ev["hello"]["public_url"]
                    st.hello = ev["hello"]
                elif ev["session"]:
                    st.events.append(ev["session"])
                    self._apply(ev["session"])
        except grpc.RpcError:
            pass  # the call ended

    def _apply(self, e):
        with self.lock:
            s = self.sessions.get(e["session_id"])
            if s is None:
                return
            if e["type"] == gp.EV_ATTACH:
                s.attached[e["role"]] = True
            elif e["type"] == gp.EV_DETACH:
                s.attached[e["role"]] = False
            elif e["type"] == gp.EV_CLOSE:
                s.attached = dict.fromkeys(s.attached, False)
            if e["counter_epoch"]:
                old = s.epochs.get(e["counter_epoch"], (0, 0))
                s.epochs[e["counter_epoch"]] = (max(old[0], e["bytes_in"]),
                                                max(old[1], e["bytes_out"]))
                s.last_activity = max(s.last_activity, e["last_activity_unix"])


# --------------------------------------------------------------------------
# The dial-out bridge
# --------------------------------------------------------------------------

class FrameReader:
    """HTTP/2 frames out of one direction of a connection, fed as bytes."""

    def __init__(self, preface=False):
        self.buf = bytearray()
        self.preface = preface

    def feed(self, data):
        self.buf += data
        if self.preface:
            if len(self.buf) < len(H2_PREFACE):
                return []
            assert bytes(self.buf[:len(H2_PREFACE)]) == H2_PREFACE, "no HTTP/2 preface"
            del self.buf[:len(H2_PREFACE)]
            self.preface = False
        frames = []
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            frames.append((ftype, flags, sid, bytes(self.buf[9:9 + n])))
            del self.buf[:9 + n]
        return frames


def _header_fragment(ftype, flags, payload):
    if ftype == F_HEADERS:
        pad = payload[0] if flags & FL_PADDED else 0
        start = (1 if flags & FL_PADDED else 0) + (5 if flags & FL_PRIORITY else 0)
        return payload[start:len(payload) - pad]
    return payload


class Bridge:
    """Dials a relay's tunnel port as a controller and splices the
    connection to a plaintext HTTP/2 server on 127.0.0.1:backend_port.

    Counts, with times (time.monotonic()): ``pings`` (PINGs the relay sent),
    ``health_checks`` (grpc.health.v1 Check calls the relay made),
    ``paths`` (requests by :path), ``goaways`` ((error code, debug data) the
    controller sent).  ``closed`` is set, with ``close_reason``, when the
    connection ends."""

    def __init__(self, pki, tunnel_port, backend_port, cert=None):
        self.tls = gp.dial_relay(pki, tunnel_port, cert)
        self.tcp = socket.create_connection(("127.0.0.1", backend_port), timeout=T)
        for s in (self.tls, self.tcp):
            s.setblocking(False)
        self.pings, self.health_checks, self.goaways = [], [], []
        self.ctl_writes = []  # HEADERS or DATA from the controller
        self.paths = collections.Counter()
        self.closed = threading.Event()
        self.close_reason = None
        self._stop = False
        self._up = FrameReader(preface=True)
        self._down = FrameReader()
        self._hpack = hpack.Decoder()
        self._hpack.max_allowed_table_size = 1 << 16
        self._block = bytearray()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)

    def probes(self):
        """Every keepalive probe the relay sent, in order: (time, kind)."""
        return sorted([(t, "ping") for t in self.pings] +
                      [(t, "health") for t in self.health_checks])

    # -- frames --

    def _saw_up(self, frames):
        now = time.monotonic()
        for ftype, flags, sid, payload in frames:
            if ftype == F_PING and not flags & FL_ACK:
                self.pings.append(now)
            elif ftype in (F_HEADERS, F_CONT):
                self._block += _header_fragment(ftype, flags, payload)
                if flags & FL_END_HEADERS:
                    hdrs = dict(self._hpack.decode(bytes(self._block), raw=False))
                    self._block.clear()
                    path = hdrs.get(":path")
                    if path:
                        self.paths[path] += 1
                        if path == gp.PATH_HEALTH:
                            self.health_checks.append(now)

    def _saw_down(self, frames):
        now = time.monotonic()
        for ftype, flags, sid, payload in frames:
            if ftype in (F_HEADERS, F_DATA):
                self.ctl_writes.append(now)
            elif ftype == F_GOAWAY:
                self.goaways.append((int.from_bytes(payload[4:8], "big"), payload[8:]))

    # -- copying --

    @staticmethod
    def _recv(sock):
        try:
            data = sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return None
        except (ConnectionResetError, ssl.SSLError, OSError):
            return b""
        return data

    @staticmethod
    def _send(sock, data):
        view = memoryview(data)
        deadline = time.monotonic() + T
        while view:
            try:
                n = sock.send(view)
                view = view[n:]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                if time.monotonic() > deadline:
                    raise relaytest.TestError("bridge: peer stopped reading")
                select.select([], [sock], [], 0.05)

    def _pump(self, src, dst, reader, saw, name):
        data = self._recv(src)
        if data is None:
            return True
        if not data:
            self.close_reason = name + " closed"
            return False
        saw(reader.feed(data))
        try:
            self._send(dst, data)
        except OSError as e:
            self.close_reason = "%s: %s" % (name, e)
            return False
        return True

    def _run(self):
        try:
            while not self._stop:
                ready = self.tls.pending() > 0
                if not ready:
                    r, _, _ = select.select([self.tls, self.tcp], [], [], 0.1)
                else:
                    r = [self.tls]
                if self.tls in r and not self._pump(self.tls, self.tcp, self._up, self._saw_up,
                                                    "relay"):
                    break
                if self.tcp in r and not self._pump(self.tcp, self.tls, self._down,
                                                    self._saw_down, "controller"):
                    break
            else:
                self.close_reason = "bridge closed"
        finally:
            for s in (self.tls, self.tcp):
                try:
                    s.close()
                except OSError:
                    pass
            self.closed.set()


# --------------------------------------------------------------------------
# A hand-driven controller link (python3-h2, HTTP/2 server role)
# --------------------------------------------------------------------------

class FakeLink:
    """One controller link played by grpcpeer.H2Peer, for what a stock
    server will not do on demand (end Events a chosen way, GOAWAY with a
    chosen last stream id).  Pumped by the caller."""

    def __init__(self, pki, relay, cert=None):
        self.peer = gp.H2Peer(gp.dial_relay(pki, relay.tunnel_port, cert), client_side=False)

    def events(self, answer=True, timeout=T):
        """The relay's next Events request, with its Hello read; answered
        with response headers unless answer=False.  Returns the Stream."""
        st = self.peer.next_request(gp.PATH_EVENTS, timeout=timeout, complete=False)
        gp.check_grpc_request(st, gp.PATH_EVENTS)
        if answer:
            self.peer.send_response_headers(st.sid)
        st.hello = self.peer.next_message(st, "RelayEvent", pred=lambda m: m["hello"])["hello"]
        return st

    def validate(self, timeout=T):
        """The next Validate request and its decoded SlotRequest."""
        st = self.peer.next_request(gp.PATH_VALIDATE, timeout=timeout)
        return st, gp.pb_decode("SlotRequest", st.messages()[0])

    def allow(self, st, slot, peer_wait=30):
        self.peer.reply_unary(st.sid, gp.pb_encode("SlotDecision", {
            "allow": True, "slot": slot, "http_status": 200,
            "expires_at_unix": int(time.time()) + 600, "peer_wait_seconds": peer_wait}))

    def command(self, events, cmd):
        self.peer.send_message(events.sid, gp.pb_encode("ControllerCommand", cmd))

    def serve_for(self, seconds, on_request=None):
        """Pumps for `seconds`, answering grpc.health.v1 Checks (SERVING)
        and handing other complete requests to on_request.  Returns the
        arrival times of the Checks."""
        checks = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.peer.closed:
            self.peer.poll(min(0.05, max(deadline - time.monotonic(), 0)))
            for st in [r for r in self.peer.requests if r.ended]:
                self.peer.requests.remove(st)
                if st.headers.get(":path") == gp.PATH_HEALTH:
                    checks.append(time.monotonic())
                    self.peer.reply_unary(st.sid, gp.pb_encode(
                        "HealthCheckResponse", {"status": gp.HEALTH_SERVING}))
                elif on_request:
                    on_request(st)
        return checks

    def close(self):
        self.peer.close()


def raw_upgrade(relay, sid, token):
    """Sends a WebSocket upgrade on a fresh connection; returns the socket
    (read the answer with relaytest.Reader(sock).read_response())."""
    s = relay.connect()
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(relaytest.http_request("GET", "/relay/" + sid, headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"), ("Authorization", "Bearer " + token)]))
    return s


# --------------------------------------------------------------------------
# Relays, readiness
# --------------------------------------------------------------------------

def free_port():
    """A port free on 127.0.0.1 right now (for a relay that must come back
    on the same tunnel port after a restart)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def remote_relay(start_relay, pki, node, tunnel_port=0, extra=(), **kw):
    """`relay serve --plain --no-auth` with a tunnel listener for remote
    controllers on 127.0.0.1:tunnel_port (0: any); sets relay.tunnel_port."""
    crt, key = pki.relay(node)
    r = start_relay(plain=True, extra=["--tunnel-listen", "127.0.0.1:%d" % tunnel_port,
                                       "--tunnel-cert", crt, "--tunnel-key", key,
                                       "--controller-ca", pki.ca_crt, "--node-id", node]
                    + list(extra), **kw)
    r.tunnel_port = int(r.wait_for_log(msg="listening for controllers")["port"])
    return r


def grpcio_relay(start_relay, pki, node="relay-grpcio", extra=(), **kw):
    """A relay, a GrpcioController and a Bridge between them, ready."""
    relay = remote_relay(start_relay, pki, node, extra=extra, **kw)
    ctl = GrpcioController()
    bridge = Bridge(pki, relay.tunnel_port, ctl.port)
    ctl.wait_streams(1)
    gp.wait_ready(relay)
    return relay, ctl, bridge


class ReadyPoller:
    """Polls /readyz every `every` seconds from a thread; `seen` holds
    (time.monotonic(), status) for every answer."""

    def __init__(self, relay, every=0.02):
        self.relay, self.every = relay, every
        self.seen = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                status = self.relay.get("/readyz", timeout=5).status
            except (OSError, relaytest.TestError, EOFError):
                status = None
            self.seen.append((time.monotonic(), status))
            self._stop.wait(self.every)

    def stop(self):
        self._stop.set()
        self._t.join(timeout=10)
        return self.seen

    def statuses(self, since=0.0):
        return [s for t, s in self.seen if t >= since]

    def wait_for(self, status, since=0.0, timeout=T):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status in self.statuses(since):
                return
            time.sleep(0.01)
        raise relaytest.TestError("/readyz never %s (saw %r)" % (status, self.statuses(since)))


# --------------------------------------------------------------------------
# WebSocket peers
# --------------------------------------------------------------------------

def create(relay, ttl=600):
    """POST /admin/sessions; the 201's JSON."""
    r = gp.http(relay, "POST", "/admin/sessions", json.dumps({"ttl_seconds": ttl}).encode())
    assert r.status == 201, r
    return r.json()


def ws_url(relay, sid):
    return "ws://127.0.0.1:%d/relay/%s" % (relay.port, sid)


async def ws_open(relay, sid, token):
    return await websockets.connect(ws_url(relay, sid), open_timeout=T, close_timeout=5,
                                    ping_interval=None, max_size=None,
                                    extra_headers=[("Authorization", "Bearer " + token)])


async def ws_status(relay, sid, token):
    """The HTTP status of a refused upgrade, or 101 (the socket is closed)."""
    try:
        ws = await ws_open(relay, sid, token)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


async def send_hashed(src, dst, total, chunk):
    """src sends `total` random payload bytes as binary messages of at most
    `chunk`; dst must receive the same bytes (SHA-256).  Returns the time
    dst had the last byte."""
    sent, got = hashlib.sha256(), hashlib.sha256()
    left, sizes = total, []
    while left:
        n = min(chunk, left)
        data = os.urandom(n)
        sent.update(data)
        sizes.append(n)
        left -= n
        await src.send(data)
    for n in sizes:
        m = await asyncio.wait_for(dst.recv(), T)
        assert isinstance(m, bytes) and len(m) == n, (type(m), len(m), n)
        got.update(m)
    assert sent.hexdigest() == got.hexdigest()
    return time.monotonic()


async def closed_with(ws, code, timeout=T):
    await asyncio.wait_for(ws.wait_closed(), timeout)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


def run(coro, timeout=240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
