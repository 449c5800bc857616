"""HTTP/1.1 strictness of the public listener (RFC 9112, RFC 9110), seen
from raw sockets and independent HTTP/2 and HTTP/1.1 clients.

A relay often sits behind a proxy that frames requests its own way; any
request the two could read differently is a smuggling vector.  So every
ambiguous or malformed request gets one clear error response and the
connection closes, and nothing after it on the connection is served:

* a header name that is not a token (`Transfer-Encoding : chunked`, a
  space inside or before a name) -> 400;
* a missing Host on HTTP/1.1, more than one Host, or a Host that is not
  host[:port] -> 400;
* obs-fold (a header line continued on the next line), a bare CR, NUL ->
  400;
* Content-Length twice, or Content-Length with Transfer-Encoding -> 400;
  Transfer-Encoding twice, or on HTTP/1.0 -> 400; a transfer coding other
  than chunked -> 501;
* whitespace, control or non-ASCII bytes in the request-target -> 400;
* the HTTP/2 connection preface on the HTTP/1.1 listener -> 505.

The relay runs --plain: the parser is what is tested, not TLS.
"""

import socket

import h2.config
import h2.connection
import pytest

import relaytest
from relaytest import Reader, assert_error_body, raw_connect, recv_until_closed


@pytest.fixture(scope="module")
def relay():
    with relaytest.Relay(plain=True) as r:  # stopped cleanly (exit 0) at the end
        yield r
        assert r.alive(), r.describe()  # no request may bring it down


def exchange(relay, raw):
    """Sends raw bytes on a new connection; returns (first response, the
    bytes after it until the relay closed, or None if it kept the
    connection open)."""
    s = raw_connect(relay.port)
    try:
        s.sendall(raw)
        rd = Reader(s)
        resp = rd.read_response(head_request=raw.startswith(b"HEAD"))
        try:
            rest, _ = recv_until_closed(s, timeout=3)
        except relaytest.TestError:
            return resp, None
        return resp, rd.buf + rest
    finally:
        s.close()


def expect_refusal(relay, raw, status, code):
    """One error response with Connection: close, then the relay closes
    without answering anything that followed on the connection."""
    resp, rest = exchange(relay, raw)
    assert_error_body(resp, status, code)
    assert resp.header("Connection") == "close", resp
    assert rest == b"", rest  # nothing smuggled behind it was served
    return resp


def expect_ok(relay, raw):
    resp, _ = exchange(relay, raw)
    assert resp.status == 200 and resp.body == b"ok", resp
    return resp


def get(headers, version=b"HTTP/1.1", target=b"/healthz"):
    return b"GET " + target + b" " + version + b"\r\n" + b"".join(
        h + b"\r\n" for h in headers) + b"Connection: close\r\n\r\n"


# ---- header names ----------------------------------------------------------------

# Each is followed by a second request that a proxy framing the first one
# differently would see as part of its body (or the reverse).
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

BAD_NAMES = {
    # libhttp-parser accepts the space and honours the header: the body is
    # decoded as chunked although the name is not Transfer-Encoding.
    "space-before-colon-te": b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n"
                             b"\r\n0\r\n\r\n" + SMUGGLED,
    "space-before-colon-cl": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length : 35\r\n\r\n"
                             + SMUGGLED,
    "space-before-colon-host": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n" + SMUGGLED,
    "space-inside-name": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX Forwarded: y\r\n\r\n" + SMUGGLED,
    "space-before-first-name": b"GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("name", sorted(BAD_NAMES))
def test_header_name_not_a_token_is_400(relay, name):
    expect_refusal(relay, BAD_NAMES[name], 400, "bad_request")


def test_token_names_with_every_tchar_are_fine(relay):
    expect_ok(relay, get([b"Host: x", b"X-!#$%&'*+-.^_`|~09az: v"]))


# ---- Host ----------------------------------------------------------------------------

HOST_BAD = {
    "missing-1.1": get([]),
    "twice": get([b"Host: x", b"Host: x"]),
    "twice-different": get([b"Host: a", b"Host: b"]),
    "twice-1.0": get([b"Host: a", b"Host: b"], version=b"HTTP/1.0"),
    "space-inside": get([b"Host: a b"]),
    "path-in-host": get([b"Host: a/b"]),
    "userinfo": get([b"Host: u@a"]),
}


@pytest.mark.parametrize("name", sorted(HOST_BAD))
def test_bad_host_is_400(relay, name):
    expect_refusal(relay, HOST_BAD[name], 400, "bad_request")


@pytest.mark.parametrize("host", [b"", b"127.0.0.1:8443", b"[::1]:443", b"relay.example.com",
                                  b"xn--bcher-kva.example"])
def test_good_host_is_fine(relay, host):
    expect_ok(relay, get([b"Host: " + host]))


def test_http10_needs_no_host(relay):
    expect_ok(relay, get([], version=b"HTTP/1.0"))


# ---- line structure and framing ----------------------------------------------------------

BAD_FRAMING = {
    "obs-fold": (get([b"Host: x", b"X-A: one", b"  two"]), 400),
    "obs-fold-tab": (get([b"Host: x", b"X-A: one", b"\ttwo"]), 400),
    "obs-fold-after-empty-value": (get([b"Host: x", b"X-A:", b" two"]), 400),
    "obs-fold-blank": (get([b"Host: x", b"X-A: one", b" \t"]), 400),
    "obs-fold-content-length": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 35\r\n\r\n"
                                + SMUGGLED, 400),
    "bare-cr": (b"GET /healthz HTTP/1.1\r\nHost: x\rX-A: y\r\n\r\n" + SMUGGLED, 400),
    "nul-in-value": (get([b"Host: x", b"X-A: a\0b"]), 400),
    "cl-twice-different": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n"
                           b"Content-Length: 0\r\n\r\n" + SMUGGLED, 400),
    "cl-twice-same": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                      b"Content-Length: 2\r\n\r\nab", 400),
    "cl-and-te": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "te-and-cl": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "te-twice": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "te-on-http10": (b"POST /healthz HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    # libhttp-parser decodes the chunks and would hand over gzip data as
    # the body: a coding the relay does not implement is refused.
    "te-gzip-chunked": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"
                        b"\r\n\r\n0\r\n\r\n" + SMUGGLED, 501),
    "tab-in-target": (b"GET /healthz\t/x HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    "non-ascii-in-target": (b"GET /healthz\xff HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMING))
def test_ambiguous_framing_is_refused(relay, name):
    raw, status = BAD_FRAMING[name]
    expect_refusal(relay, raw, status, "bad_request" if status == 400 else "not_implemented")


def test_good_framing_still_works(relay):
    """What the strict rules must not refuse: bare LF line ends (RFC 9112
    §2.2 lets a recipient accept them), chunked bodies, a value with
    obs-text, OWS around values, pipelined requests byte by byte."""
    expect_ok(relay, b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n")
    expect_ok(relay, get([b"Host: x", b"X-A:  \xe9t\xe9 \t"]))
    resp, _ = exchange(relay, b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n"
                              b"Connection: close\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert_error_body(resp, 405, "method_not_allowed")  # parsed and routed, not refused
    two = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\r\n"
           b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-B:\r\nConnection: close\r\n\r\n")
    s = raw_connect(relay.port)
    try:
        for i in range(len(two)):
            s.sendall(two[i:i + 1])
        rd = Reader(s)
        for _ in range(2):
            r = rd.read_response()
            assert r.status == 200 and r.body == b"ok", r
    finally:
        s.close()


# ---- HTTP/2 on the HTTP/1.1 listener -------------------------------------------------------

def test_http2_preface_is_505_raw(relay):
    expect_refusal(relay, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported")


def test_http2_preface_byte_by_byte_is_505(relay):
    s = raw_connect(relay.port)
    try:
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n":
            s.sendall(bytes([b]))
        resp = Reader(s).read_response()
        assert_error_body(resp, 505, "http_version_not_supported")
    finally:
        s.close()


def test_http2_prior_knowledge_client_gets_505(relay):
    """python-h2 as a prior-knowledge HTTP/2 client (what `nghttp` and
    `curl --http2-prior-knowledge` do on an http:// URL)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"),
                          (":authority", "127.0.0.1")], end_stream=True)
    resp, rest = exchange(relay, conn.data_to_send())
    assert_error_body(resp, 505, "http_version_not_supported")
    assert resp.header("Connection") == "close", resp
    assert rest == b"", rest


def test_http2_request_line_is_505(relay):
    expect_refusal(relay, b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505,
                   "http_version_not_supported")


def test_refusals_leave_the_relay_serving(relay):
    for raw in list(BAD_NAMES.values()) + [v for v, _ in BAD_FRAMING.values()]:
        exchange(relay, raw)
    expect_ok(relay, get([b"Host: x"]))
    p = relaytest.curl(["-o", "/dev/null", "-w", "%{http_code}", relay.url("/healthz")])
    assert p.stdout == "200", (p.stdout, p.stderr)
