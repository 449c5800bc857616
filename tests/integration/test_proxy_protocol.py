"""The client's address behind a proxy (issue 13, point 3, acceptance).

The witness of what the controller hears is an independent controller:
the Python HTTP/2 + gRPC impostor of grpcpeer.py (python3-h2), which dials
the relay's tunnel port and decodes every SlotRequest.  The relay listens
with --proxy-protocol and trusts 127.0.0.1 only; other loopback addresses
(127.0.0.2, 127.0.0.3, ...) play untrusted clients.

* test_haproxy_v2_names_the_client — HAProxy, started here with
  `send-proxy-v2` towards the relay, carries a client from 127.0.0.3: the
  controller's Validate says remote_addr 127.0.0.3:<its port>, the 101
  follows, and the relay's request log names the same client.
* test_headers_written_by_the_test — PROXY v1 and v2 headers written by
  the test from the trusted address name clients the relay passes to
  Validate exactly (IPv4 and IPv6); a TLS relay behind a v2 header
  completes its handshake (the header never reaches OpenSSL).
* test_per_ip_limit_applies_to_the_named_client — --max-conns-per-ip 2:
  two connections named 203.0.113.5 hold its quota, a third is answered
  429, 203.0.113.6 through the same proxy is served; the proxy's own
  address is never the one counted; through HAProxy the same holds for
  the client's address.
* test_refusals — a PROXY header from an untrusted source, a trusted
  proxy's connection without one, malformed headers (v1 and v2), an
  over-long one, and a silent one past --header-timeout: each is closed
  with no HTTP answer and logged with its reason; a direct client from an
  untrusted address is still served.
* test_forwarded_headers_only_from_trusted_proxies — without
  --proxy-protocol: X-Forwarded-For and Forwarded name the client in
  Validate when the socket's peer is trusted, and are ignored otherwise.
"""

import base64
import ipaddress
import os
import socket
import struct
import subprocess
import time

import pytest

import grpcpeer as gp
import relaytest

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
TRUSTED = "127.0.0.1"


def v2_header(src, sport, dst="127.0.0.1", dport=443):
    """A PROXY v2 PROXY/STREAM header for IPv4 or IPv6 addresses."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + struct.pack(">HH", sport, dport)
    return V2_SIG + bytes([0x21, fam]) + struct.pack(">H", len(body)) + body


def v1_header(src, sport, dst="127.0.0.1", dport=443):
    fam = "TCP4" if ipaddress.ip_address(src).version == 4 else "TCP6"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def connect_from(port, source, timeout=relaytest.TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def ws_request(sid, token):
    key = base64.b64encode(os.urandom(16)).decode()
    return relaytest.http_request("GET", "/relay/%s?role=initiator" % sid, headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"), ("Authorization", "Bearer " + token)])


def healthz_on(sock, head=b"", path="/healthz"):
    sock.sendall(head + relaytest.http_request("GET", path))
    return relaytest.read_response(sock)


class Witness:
    """The Python controller linked to a relay: answers Events' Hello and
    then each Validate, recording the SlotRequests."""

    def __init__(self, pki, relay):
        self.relay = relay
        self.peer = gp.H2Peer(gp.dial_relay(pki, relay.tunnel_port), client_side=False)
        ev = self.peer.next_request(gp.PATH_EVENTS, complete=False)
        self.peer.send_response_headers(ev.sid)
        self.peer.next_message(ev, "RelayEvent", pred=lambda m: m["hello"])
        # Asked directly, from an untrusted address: 127.0.0.1 is the proxy's.
        deadline = time.monotonic() + relaytest.TIMEOUT
        while True:
            s = connect_from(relay.port, "127.0.0.2")
            r = healthz_on(s, path="/readyz")
            s.close()
            if r.status == 200:
                break
            assert time.monotonic() < deadline, r
            time.sleep(0.05)

    def upgrade(self, sock, head=b""):
        """Sends a WebSocket upgrade on sock (after head), answers its
        Validate with allow; (the SlotRequest, the response)."""
        sid, tok = gp.token22(), gp.token22()
        sock.sendall(head + ws_request(sid, tok))
        req = self.peer.next_request(gp.PATH_VALIDATE)
        q = gp.pb_decode("SlotRequest", req.messages()[0])
        assert q["session_id"] == sid, q
        self.peer.reply_unary(req.sid, gp.pb_encode("SlotDecision", {
            "allow": True, "slot": gp.ROLE_INITIATOR, "http_status": 200,
            "expires_at_unix": int(time.time()) + 600, "peer_wait_seconds": 30}))
        return q, relaytest.read_response(sock)

    def close(self):
        self.peer.close()


@pytest.fixture
def pki(tmp_path):
    return gp.Pki(tmp_path)


def proxied_relay(start_relay, pki, extra=()):
    return gp.start_remote_relay(start_relay, pki, "relay-proxy", extra=[
        "--proxy-protocol", "--trusted-proxies", TRUSTED + "/32"] + list(extra))


class Haproxy:
    """haproxy in TCP mode on 127.0.0.1:<free port>, send-proxy-v2 to the
    relay (its connections come from 127.0.0.1, the trusted address)."""

    def __init__(self, tmp_path, backend_port):
        self.port = relaytest.free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text("\n".join([
            "global", "  maxconn 256", "defaults", "  mode tcp", "  timeout connect 5s",
            "  timeout client 30s", "  timeout server 30s",
            "frontend public", "  bind 127.0.0.1:%d" % self.port, "  default_backend relay",
            "backend relay",
            "  server r1 127.0.0.1:%d send-proxy-v2" % backend_port, ""]))
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + relaytest.TIMEOUT
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def haproxy(tmp_path):
    started = []

    def start(port):
        h = Haproxy(tmp_path, port)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def test_haproxy_v2_names_the_client(pki, start_relay, haproxy):
    relay = proxied_relay(start_relay, pki)
    w = Witness(pki, relay)
    try:
        hp = haproxy(relay.port)
        s = connect_from(hp.port, "127.0.0.3")
        mine = "127.0.0.3:%d" % s.getsockname()[1]
        q, resp = w.upgrade(s)
        assert q["remote_addr"] == mine, q
        assert resp.status == 101, resp
        relay.wait_for_log(msg="peer attached", remote=mine)
        s.close()
    finally:
        w.close()


def test_headers_written_by_the_test(pki, start_relay, certs):
    relay = proxied_relay(start_relay, pki)
    w = Witness(pki, relay)
    try:
        for head, want in [(v2_header("198.51.100.7", 4242), "198.51.100.7:4242"),
                           (v1_header("192.0.2.44", 1234), "192.0.2.44:1234"),
                           (v2_header("2001:db8::5", 8080, "2001:db8::1"), "[2001:db8::5]:8080"),
                           (v1_header("2001:db8::6", 9, "2001:db8::1"), "[2001:db8::6]:9")]:
            s = connect_from(relay.port, TRUSTED)
            q, resp = w.upgrade(s, head)
            assert q["remote_addr"] == want, (head, q)
            assert resp.status == 101, resp
            s.close()
        # A v2 LOCAL header (health checks): the proxy speaks for itself.
        s = connect_from(relay.port, TRUSTED)
        q, resp = w.upgrade(s, V2_SIG + b"\x20\x00\x00\x00")
        assert q["remote_addr"] == "%s:%d" % (TRUSTED, s.getsockname()[1]), q
        s.close()
    finally:
        w.close()
    # TLS behind the header: the handshake and a request complete.
    tls = start_relay(extra=["--proxy-protocol", "--trusted-proxies", TRUSTED])
    raw = connect_from(tls.port, TRUSTED)
    raw.sendall(v2_header("198.51.100.9", 5555))
    ctx = relaytest.tls_context(ca=certs.ca_crt)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    s.sendall(relaytest.http_request("GET", "/healthz", headers=[("Connection", "close")]))
    resp = relaytest.read_response(s)
    assert resp.status == 200 and resp.body == b"ok", resp
    tls.wait_for_log(msg="request", target="/healthz", remote="198.51.100.9:5555")


def test_per_ip_limit_applies_to_the_named_client(pki, start_relay, haproxy):
    relay = proxied_relay(start_relay, pki, extra=["--max-conns-per-ip", "2"])
    held = []
    try:
        # Two connections from 203.0.113.5 (through the one trusted proxy).
        for port in (1001, 1002):
            s = connect_from(relay.port, TRUSTED)
            assert healthz_on(s, v2_header("203.0.113.5", port)).status == 200
            held.append(s)
        s = connect_from(relay.port, TRUSTED)
        r = healthz_on(s, v2_header("203.0.113.5", 1003))
        relaytest.assert_error_body(r, 429, "too_many_connections")
        s.close()
        # Another client through the same proxy is not limited by the first.
        for port in (2001, 2002):
            s = connect_from(relay.port, TRUSTED)
            assert healthz_on(s, v1_header("203.0.113.6", port)).status == 200
            held.append(s)
        # Through HAProxy: the limit counts 127.0.0.4, its client.
        hp = haproxy(relay.port)
        for _ in range(2):
            s = connect_from(hp.port, "127.0.0.4")
            assert healthz_on(s).status == 200
            held.append(s)
        s = connect_from(hp.port, "127.0.0.4")
        relaytest.assert_error_body(healthz_on(s), 429, "too_many_connections")
        s.close()
        s = connect_from(hp.port, "127.0.0.5")
        assert healthz_on(s).status == 200
        s.close()
        # A client that leaves frees its place.
        held.pop(0).close()
        deadline = time.monotonic() + relaytest.TIMEOUT
        while True:
            s = connect_from(relay.port, TRUSTED)
            r = healthz_on(s, v2_header("203.0.113.5", 1004))
            s.close()
            if r.status == 200:
                break
            assert time.monotonic() < deadline, r
            time.sleep(0.05)
    finally:
        for s in held:
            s.close()


def assert_refused(relay, sock, reason):
    data, how = relaytest.recv_until_closed(sock)
    assert data == b"", (data, how)  # no HTTP answer: nothing was believed
    relay.wait_for_log(msg="connection refused", reason=reason)


def test_refusals(pki, start_relay):
    relay = proxied_relay(start_relay, pki, extra=["--header-timeout", "1s"])
    # A PROXY header from an untrusted source.
    s = connect_from(relay.port, "127.0.0.2")
    s.sendall(v2_header("198.51.100.1", 1) + relaytest.http_request("GET", "/healthz"))
    assert_refused(relay, s, "PROXY header from an untrusted address")
    s = connect_from(relay.port, "127.0.0.2")
    s.sendall(v1_header("198.51.100.1", 1) + relaytest.http_request("GET", "/healthz"))
    assert_refused(relay, s, "PROXY header from an untrusted address")
    # An untrusted client without one is a direct client, as before.
    s = connect_from(relay.port, "127.0.0.2")
    direct = "127.0.0.2:%d" % s.getsockname()[1]
    assert healthz_on(s).status == 200
    s.close()
    relay.wait_for_log(msg="request", target="/healthz", remote=direct)
    # A trusted proxy's connection must carry one.
    s = connect_from(relay.port, TRUSTED)
    s.sendall(relaytest.http_request("GET", "/healthz"))
    assert_refused(relay, s, "no PROXY protocol signature")
    # Malformed headers, each refused with its reason.
    bad = [
        (b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
         "v1: an address is not of the protocol's family"),
        (b"PROXY TCP4 192.0.2.1 127.0.0.1 1 70000\r\n", "v1: a port is not decimal 0-65535"),
        (b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n", "v1: a control byte in the header"),
        (V2_SIG + b"\x31\x11\x00\x0c" + bytes(12), "v2: version is not 2"),
        (V2_SIG + b"\x21\x11\x00\x04" + bytes(4), "v2: address block too short for its family"),
        (b"PROXY " + b"A" * 200 + b"\r\n", "v1: no CRLF in 107 bytes"),
        (V2_SIG + b"\x21\x11\xff\xff" + bytes(1000), "v2: header longer than we take"),
    ]
    for head, reason in bad:
        s = connect_from(relay.port, TRUSTED)
        s.sendall(head)
        assert_refused(relay, s, reason)
        s.close()
    # Silence past --header-timeout.
    s = connect_from(relay.port, TRUSTED)
    s.sendall(v2_header("192.0.2.1", 1)[:10])
    t0 = time.monotonic()
    assert_refused(relay, s, "no PROXY header in time")
    assert time.monotonic() - t0 < 5
    # Every refusal left the relay serving, and each was counted.
    s = connect_from(relay.port, TRUSTED)
    assert healthz_on(s, v2_header("192.0.2.2", 2)).status == 200
    s.close()
    s = connect_from(relay.port, "127.0.0.2")  # a direct loopback client may read /metrics
    r = healthz_on(s, path="/metrics")
    s.close()
    assert r.status == 200, r
    refused = [line for line in r.body.decode().splitlines()
               if line.startswith("relay_proxy_header_refused_total ")]
    assert refused == ["relay_proxy_header_refused_total %d" % (3 + len(bad) + 1)], refused


def test_forwarded_headers_only_from_trusted_proxies(pki, start_relay):
    relay = gp.start_remote_relay(start_relay, pki, "relay-xff",
                                  extra=["--trusted-proxies", TRUSTED])
    w = Witness(pki, relay)

    def upgrade_with(source, headers):
        s = connect_from(relay.port, source)
        sid, tok = gp.token22(), gp.token22()
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(relaytest.http_request("GET", "/relay/%s?role=initiator" % sid, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"), ("Authorization", "Bearer " + tok)] + headers))
        req = w.peer.next_request(gp.PATH_VALIDATE)
        q = gp.pb_decode("SlotRequest", req.messages()[0])
        w.peer.reply_status(req.sid, gp.GRPC_NOT_FOUND, "no")
        assert relaytest.read_response(s).status == 404
        port = s.getsockname()[1]
        s.close()
        return q["remote_addr"], port

    try:
        got, _ = upgrade_with(TRUSTED, [("X-Forwarded-For", "192.0.2.9")])
        assert got == "192.0.2.9:0", got
        # The nearest untrusted hop is the client; what it wrote itself is not.
        got, _ = upgrade_with(TRUSTED, [("X-Forwarded-For", "10.9.9.9, 192.0.2.10")])
        assert got == "192.0.2.10:0", got
        got, _ = upgrade_with(TRUSTED, [("Forwarded", 'for="[2001:db8::1]:4711"')])
        assert got == "[2001:db8::1]:4711", got
        # From an untrusted peer both are ignored.
        got, port = upgrade_with("127.0.0.2", [("X-Forwarded-For", "192.0.2.9"),
                                               ("Forwarded", "for=192.0.2.9")])
        assert got == "127.0.0.2:%d" % port, got
    finally:
        w.close()
