"""The public listener's HTTP/1.1 behaviour, driven by independent clients
(curl and raw sockets): health, limits with their exact statuses, slow and
silent clients, pipelining, graceful shutdown, and the command line."""

import re
import signal
import socket
import subprocess
import time

import pytest

import relaytest
from relaytest import (Reader, assert_error_body, curl, http_request, raw_connect,
                       recv_until_closed)


# ---- health ------------------------------------------------------------------

def test_healthz_tls_curl(start_relay, certs):
    r = start_relay()
    p = curl(["-k", "-i", r.url("/healthz")])
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), p.stdout
    assert body == "ok"
    # The chain verifies against our CA by name and by address, too.
    for host in ("localhost", "127.0.0.1"):
        p = curl(["--cacert", certs.ca_crt, r.url("/healthz", host=host)])
        assert p.returncode == 0 and p.stdout == "ok", p.stderr


def test_healthz_plain_curl(start_relay):
    r = start_relay(plain=True)
    p = curl(["-i", r.url("/healthz")])
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    assert re.search(r"(?im)^server: relay/", head)
    assert re.search(r"(?im)^date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", head)
    assert body == "ok"


def test_not_found_and_method(start_relay):
    r = start_relay(plain=True)
    resp = r.get("/no/such/thing")
    assert_error_body(resp, 404)
    s = raw_connect(r.port)
    s.sendall(http_request("POST", "/healthz", body=b"x"))
    resp = relaytest.read_response(s)
    assert_error_body(resp, 405)
    assert "GET" in resp.header("Allow"), resp
    # HEAD: the headers of the GET, no body.
    s.sendall(http_request("HEAD", "/healthz"))
    rd = Reader(s)
    resp = rd.read_response(head_request=True)
    assert resp.status == 200 and resp.header("Content-Length") == "2"
    s.sendall(http_request("GET", "/healthz", headers=[("Connection", "close")]))
    resp = rd.read_response()
    assert resp.body == b"ok"  # so no stray HEAD body was in between
    s.close()


# ---- limits -------------------------------------------------------------------

def expect_refusal(r, raw, status, code):
    """Sends raw bytes on a new connection; expects one error response with
    Connection: close and then the server closing the connection."""
    s = raw_connect(r.port)
    try:
        s.sendall(raw)
        rd = Reader(s)
        resp = rd.read_response()
        assert_error_body(resp, status, code)
        assert resp.header("Connection") == "close", resp
        rest, how = recv_until_closed(s, timeout=5)
        assert rd.buf + rest == b"", rest
    finally:
        s.close()
    return resp


def test_oversized_headers_raw(start_relay):
    r = start_relay(plain=True)
    big = [("X-Big", "a" * 20000)]
    expect_refusal(r, http_request("GET", "/healthz", headers=big), 431,
                   "request_header_fields_too_large")


def test_oversized_headers_curl(start_relay):
    r = start_relay()
    p = curl(["-k", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Big: " + "b" * 20000,
              r.url("/healthz")])
    assert p.stdout == "431", (p.stdout, p.stderr)


def test_too_many_headers(start_relay):
    r = start_relay(plain=True)
    many = [("X-H%d" % i, "v") for i in range(70)]
    expect_refusal(r, http_request("GET", "/healthz", headers=many), 431,
                   "request_header_fields_too_large")
    args = []
    for k, v in many:
        args += ["-H", "%s: %s" % (k, v)]
    p = curl(["-o", "/dev/null", "-w", "%{http_code}"] + args + [r.url("/healthz")])
    assert p.stdout == "431", (p.stdout, p.stderr)
    # At the limit (64 including Host) is fine.
    few = [("X-H%d" % i, "v") for i in range(60)]
    s = raw_connect(r.port)
    s.sendall(http_request("GET", "/healthz", headers=few))
    assert relaytest.read_response(s).status == 200
    s.close()


def test_long_url(start_relay):
    r = start_relay(plain=True)
    expect_refusal(r, http_request("GET", "/" + "u" * 9000), 414, "uri_too_long")
    p = curl(["-o", "/dev/null", "-w", "%{http_code}", r.url("/" + "u" * 9000)])
    assert p.stdout == "414", (p.stdout, p.stderr)


def test_body_too_large_and_bad_requests(start_relay):
    r = start_relay(plain=True, extra=["--max-body", "1KiB"])
    expect_refusal(r, http_request("POST", "/healthz", body=b"x" * 2000), 413,
                   "payload_too_large")
    expect_refusal(r, b"NOT A REQUEST\r\n\r\n", 400, "bad_request")
    expect_refusal(r, b"GET / HTTP/2.0\r\n\r\n", 505, "http_version_not_supported")
    # The relay is still fine afterwards.
    assert r.get("/healthz").body == b"ok"


# ---- slow and silent clients ------------------------------------------------------

def test_slow_header_sender_gets_408(start_relay):
    r = start_relay(plain=True, extra=["--header-timeout", "1s"])
    s = raw_connect(r.port)
    req = http_request("GET", "/healthz", headers=[("X-Slow", "y" * 200)])
    t0 = time.monotonic()
    got = b""
    for i in range(len(req) - 4):  # never completes the request
        try:
            s.sendall(req[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        if relaytest.wait_readable(s, 0.2):
            got = s.recv(65536)
            break
        assert time.monotonic() - t0 < 5, "no answer to a trickled request"
    answered = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert 0.9 <= answered <= 2.5, answered
    rest, how = recv_until_closed(s, timeout=3)
    assert how == "eof", how
    closed = time.monotonic() - t0
    assert closed <= 3.5, closed
    head, _, body = (got + rest).partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert b'"error":"request_timeout"' in body
    s.close()
    r.wait_for_log(msg="request timeout", timeout=5)  # the log reader is a thread


def test_silent_connection_closed_quietly(start_relay):
    r = start_relay(plain=True, extra=["--header-timeout", "1s"])
    s = raw_connect(r.port)
    t0 = time.monotonic()
    data, how = recv_until_closed(s, timeout=4)
    took = time.monotonic() - t0
    assert data == b"" and how == "eof", (data, how)
    assert 0.9 <= took <= 2.5, took
    s.close()


def test_silent_tls_connection_closed(start_relay):
    r = start_relay(extra=["--header-timeout", "1s"])
    s = raw_connect(r.port)  # TCP only: no ClientHello
    t0 = time.monotonic()
    data, how = recv_until_closed(s, timeout=4)
    assert data == b"", data
    assert time.monotonic() - t0 <= 2.5
    s.close()


def test_idle_keepalive_closed(start_relay):
    r = start_relay(plain=True, extra=["--idle-timeout", "500ms"])
    s = raw_connect(r.port)
    s.sendall(http_request("GET", "/healthz"))
    rd = Reader(s)
    assert rd.read_response().status == 200
    t0 = time.monotonic()
    data, how = recv_until_closed(s, timeout=4)
    assert rd.buf + data == b"" and how == "eof"
    assert time.monotonic() - t0 <= 2.0
    s.close()


# ---- pipelining ------------------------------------------------------------------

def test_pipelined_keepalive(start_relay):
    r = start_relay(plain=True)
    paths = ["/healthz", "/nope", "/healthz", "/healthz", "/missing/1", "/healthz", "/x",
             "/healthz", "/healthz", "/zzz"]
    want = [200 if p == "/healthz" else 404 for p in paths]
    s = raw_connect(r.port)
    s.sendall(b"".join(http_request("GET", p) for p in paths))  # one write
    rd = Reader(s)
    got = [rd.read_response() for _ in paths]
    assert [g.status for g in got] == want
    for g, p in zip(got, paths):
        if p == "/healthz":
            assert g.body == b"ok"
        else:
            assert_error_body(g, 404)
        assert g.header("Connection") is None  # still keep-alive
    # The connection is still usable afterwards.
    s.sendall(http_request("GET", "/healthz", headers=[("Connection", "close")]))
    last = rd.read_response()
    assert last.status == 200 and last.header("Connection") == "close"
    rest, how = recv_until_closed(s, timeout=5)
    assert rd.buf + rest == b"" and how == "eof"
    s.close()


def test_head_listing_is_a_head_and_holds_nothing(start_relay):
    """HEAD /admin/sessions (plain, --no-auth, embedded controller): the
    listing's head with no body, twice on one keep-alive connection that
    then goes on serving; the relay keeps nothing of them (LeakSanitizer
    at stop).  Before, each HEAD left its whole listing state behind
    (about 12 KiB and the first pages): a loop of HEADs grew the relay
    without bound."""
    r = start_relay(plain=True)
    s = raw_connect(r.port)
    rd = Reader(s)
    for _ in range(2):
        s.sendall(http_request("HEAD", "/admin/sessions"))
        head = rd.read_response(head_request=True)
        assert head.status == 200 and head.body == b"", head
        assert head.header("Content-Type") == "application/json"
    s.sendall(http_request("GET", "/healthz", headers=[("Connection", "close")]))
    last = rd.read_response()
    assert last.status == 200 and last.body == b"ok"
    s.close()
    r.stop()  # and its sanitizer report, leaks included


def test_pipelined_tls(start_relay):
    r = start_relay()
    s = r.connect()
    s.sendall(b"".join(http_request("GET", p) for p in ["/healthz", "/a", "/healthz"]))
    rd = Reader(s)
    assert [rd.read_response().status for _ in range(3)] == [200, 404, 200]
    s.close()


def test_http10_closes(start_relay):
    r = start_relay(plain=True)
    s = raw_connect(r.port)
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    rd = Reader(s)
    resp = rd.read_response()
    assert resp.status == 200 and resp.body == b"ok"
    assert resp.header("Connection") == "close"
    rest, how = recv_until_closed(s, timeout=5)
    assert how == "eof"
    s.close()


# ---- client certificates -----------------------------------------------------------

def test_client_ca_optional(start_relay, certs):
    r = start_relay(extra=["--client-ca", certs.ca_crt])
    base = ["--cacert", certs.ca_crt, r.url("/healthz", host="localhost")]
    p = curl(base)
    assert p.returncode == 0 and p.stdout == "ok", p.stderr
    p = curl(["--cert", certs.client_crt, "--key", certs.client_key] + base)
    assert p.returncode == 0 and p.stdout == "ok", p.stderr


# ---- shutdown ------------------------------------------------------------------------

def test_graceful_shutdown(start_relay):
    r = start_relay(plain=True, extra=["--shutdown-grace", "5s"])
    idle = raw_connect(r.port)
    idle.sendall(http_request("GET", "/healthz"))
    rd_idle = Reader(idle)
    assert rd_idle.read_response().status == 200
    busy = raw_connect(r.port)
    busy.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a request in flight
    time.sleep(0.3)
    t0 = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    r.wait_for_log(msg="shutting down", timeout=5)
    # The idle keep-alive connection is closed at once ...
    data, how = recv_until_closed(idle, timeout=3)
    assert rd_idle.buf + data == b"" and how == "eof"
    # ... new connections are refused while the process lives on ...
    assert r.alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", r.port), timeout=3)
    assert r.alive()
    # ... and the request in flight completes, with Connection: close.
    busy.sendall(b"\r\n")
    rd = Reader(busy)
    resp = rd.read_response()
    assert resp.status == 200 and resp.header("Connection") == "close"
    data, how = recv_until_closed(busy, timeout=3)
    assert how == "eof"
    code = r.wait(timeout=5)
    assert code == 0, r.describe()
    assert time.monotonic() - t0 < 5
    r.check_sanitizers()
    assert r.find_logs(msg="shutdown complete")
    idle.close()
    busy.close()


def test_shutdown_grace_expires(start_relay):
    r = start_relay(plain=True, extra=["--shutdown-grace", "1s", "--header-timeout", "30s"])
    stuck = raw_connect(r.port)
    stuck.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
    time.sleep(0.3)
    code, took = r.stop(timeout=6)
    assert code == 0
    assert 0.8 <= took <= 4.0, took
    assert r.find_logs(msg="grace period over; closing remaining connections")
    data, how = recv_until_closed(stuck, timeout=3)
    assert data == b""
    stuck.close()


# ---- command line ----------------------------------------------------------------------

def relay_cli(*args):
    return subprocess.run([relaytest.RELAY_BIN] + list(args), capture_output=True, text=True,
                          timeout=relaytest.TIMEOUT)


def test_bad_flag():
    p = relay_cli("serve", "--bogus")
    assert p.returncode == 2
    assert "Usage" in p.stderr
    assert "--bogus" in p.stderr


def test_bad_value_names_setting():
    p = relay_cli("serve", "--header-timeout", "soon")
    assert p.returncode == 2
    assert "header-timeout" in p.stderr and "Usage" in p.stderr


def test_unknown_command():
    p = relay_cli("nosuch")
    assert p.returncode == 2
    assert "Usage" in p.stderr


def test_help():
    p = relay_cli("serve", "--help")
    assert p.returncode == 0
    assert "Usage: relay serve" in p.stdout and "--listen" in p.stdout
    p = relay_cli("version", "--help")
    assert p.returncode == 0
    assert "Usage" in p.stdout
    p = relay_cli("--help")
    assert p.returncode == 0


def test_version():
    p = relay_cli("version")
    assert p.returncode == 0
    out = p.stdout
    assert re.search(r"^relay \d+\.\d+\.\d+", out), out
    assert re.search(r"libuv \d+\.\d+\.\d+", out), out
    assert re.search(r"OpenSSL \d+\.\d+\.\d+", out), out
    assert re.search(r"nghttp2 \d+\.\d+\.\d+", out), out


def start_failure(*args):
    """relay serve ARGS that must fail to start: returns its 'cannot start' log."""
    p = relaytest.LoggedProcess([relaytest.RELAY_BIN, "serve", "--no-auth"] + list(args))
    assert p.wait() == 1, p.describe()
    p.check_sanitizers()
    return p, p.wait_for_log(msg="cannot start", timeout=1)


def test_start_failures(start_relay, certs):
    r = start_relay(plain=True)
    _, line = start_failure("--plain", "--listen", "127.0.0.1:%d" % r.port)
    assert "address already in use" in line["error"], line
    _, line = start_failure("--plain", "--listen", "0.0.0.0:0")
    assert "plain" in line["error"] and "--allow-public-plain" in line["error"], line
    _, line = start_failure("--listen", "127.0.0.1:0", "--tls-cert", certs.server_crt,
                            "--tls-key", "/nonexistent/server.key")
    assert "/nonexistent/server.key" in line["error"], line
    p, line = start_failure("--listen", "127.0.0.1:0", "--tls-cert", certs.server_crt,
                            "--tls-key", certs.client_key)
    assert "mismatch" in line["error"] or "does not match" in line["error"], line
    for secret in certs.secrets():
        assert secret not in p.stderr
    _, line = start_failure("--listen", "127.0.0.1:0")
    assert "tls-cert" in line["error"], line
    assert r.get("/healthz").body == b"ok"  # the first relay never noticed
