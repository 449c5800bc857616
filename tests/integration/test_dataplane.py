"""The WebSocket data plane (/relay/{id}) seen by independent clients.

Peers are Python `websockets` (over TLS, verifying the relay against the
test CA) where a well-behaved library is the point, and the raw client in
wsraw.py where exact bytes matter: malformed frames, frame boundaries,
close codes read straight off the wire.  Covered here:

* data: 8 MiB and empty messages both ways with SHA-256 checked, text and
  binary types kept, fragmented messages arriving whole, a small frame
  arriving as one frame, data a lone peer sends early, pings answered
  while a peer waits, counters and last_activity in the session status;
* every pre-upgrade refusal with its exact status (404, 401, 409, 426,
  403, 429, 503) and the three ways to give the slot token;
* every close code the relay sends (1000 and forwarded custom codes, 1001
  for peer_wait, delete and TTL, 1002, 1007, 1009) and that a session can
  be re-joined after a peer leaves.

Forwarding is cut-through and may re-fragment a frame that spans reads, so
tests compare messages, not frames, except for one small frame.
"""

import asyncio
import base64
import calendar
import hashlib
import os
import signal
import socket
import ssl
import struct
import threading
import time

import pytest
import websockets

import relaytest
import wsraw
from wsraw import BINARY, CLOSE, CONT, PING, PONG, TEXT, frame

GOOD_ORIGIN = "https://good.example"


def sha(b):
    return hashlib.sha256(b).hexdigest()


def _stop(r):
    try:
        if r.alive():
            r.stop()
        else:
            r.check_sanitizers()
    finally:
        r.kill()


@pytest.fixture(scope="module")
def relay(certs):
    """One TLS relay (embedded controller, --no-auth) shared by the tests
    that need no special flags; every test makes its own sessions."""
    r = relaytest.Relay(certs=certs, extra=["--cors-origin", GOOD_ORIGIN, "--shutdown-grace", "2s"])
    yield r
    _stop(r)


@pytest.fixture
def admin(relay):
    a = wsraw.Admin(relay)
    yield a
    a.close()


def pair(relay, admin, **create):
    """A new session with both peers connected (raw clients)."""
    s = admin.create(**create)
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    return s, a, b


def assert_flows(a, b, payload=b"still alive"):
    a.send_message(payload)
    assert b.recv_message() == (BINARY, payload)
    b.send_message(payload[::-1])
    assert a.recv_message() == (BINARY, payload[::-1])


# ---- websockets over TLS -------------------------------------------------------

def arun(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_connect(relay, certs, sid, token, subprotocol=False, **kw):
    uri = "wss://127.0.0.1:%d/relay/%s" % (relay.port, sid)
    ctx = ssl.create_default_context(cafile=certs.ca_crt)  # verifies 127.0.0.1 against the CA
    if subprotocol:
        kw["subprotocols"] = ["swsrs.token." + token]
    else:
        kw["extra_headers"] = [("Authorization", "Bearer " + token)]
    return websockets.connect(uri, ssl=ctx, max_size=None, compression=None, ping_interval=None,
                              open_timeout=relaytest.TIMEOUT, close_timeout=5, **kw)


async def transfer(src, dst, msg):
    """Sends msg from src while dst receives it; returns what arrived."""
    got = await asyncio.gather(src.send(msg), dst.recv())
    return got[1]


def test_tls_roundtrip_8mib_and_empty_both_ways(relay, admin, certs):
    s = admin.create()
    blob = os.urandom(8 << 20)
    text = base64.b64encode(os.urandom(6 << 20)).decode() + "é✓😀" * 4096

    async def go():
        async with ws_connect(relay, certs, s["id"], s["initiator_token"]) as a, \
                ws_connect(relay, certs, s["id"], s["responder_token"]) as b:
            # 8 MiB binary A->B, echoed B->A.
            got = await transfer(a, b, blob)
            assert isinstance(got, bytes) and sha(got) == sha(blob)
            back = await transfer(b, a, got)
            assert isinstance(back, bytes) and sha(back) == sha(blob)
            # 8 MiB of text B->A, echoed A->B: still text, same bytes.
            got = await transfer(b, a, text)
            assert isinstance(got, str) and sha(got.encode()) == sha(text.encode())
            back = await transfer(a, b, got)
            assert isinstance(back, str) and back == text
            # Empty messages of both types, both ways.
            for x, y in ((a, b), (b, a)):
                assert await transfer(x, y, b"") == b""
                assert await transfer(x, y, "") == ""
            # Small messages keep their type and order.
            for m in ("héllo ✓", b"\x00\xff\x00", "", b"z" * 200):
                await a.send(m)
            for m in ("héllo ✓", b"\x00\xff\x00", "", b"z" * 200):
                assert await b.recv() == m
            await a.close(4001, "bye")
            await asyncio.wait_for(b.wait_closed(), relaytest.TIMEOUT)
            assert b.close_code == 4001
            assert a.close_code == 4001  # the relay echoed our close

    arun(go())
    # Counters reach the controller when the peers leave.
    each_way = len(blob) + len(text.encode())
    total_in = each_way + len("héllo ✓".encode()) + 3 + 200  # the small ones go a -> b
    st = admin.wait_status(s["id"], lambda st: st["bytes_in"] >= total_in)
    assert st["bytes_in"] == total_in and st["bytes_out"] == each_way, st


def test_tls_subprotocol_token_is_echoed(relay, admin, certs):
    s = admin.create()

    async def go():
        async with ws_connect(relay, certs, s["id"], s["initiator_token"], subprotocol=True) as a, \
                ws_connect(relay, certs, s["id"], s["responder_token"]) as b:
            assert a.subprotocol == "swsrs.token." + s["initiator_token"]
            assert b.subprotocol is None
            assert await transfer(b, a, "over subprotocol") == "over subprotocol"

    arun(go())


def test_fragmented_message_from_raw_client_arrives_whole(relay, admin, certs):
    s = admin.create()
    text = "fragmented ✓ text – €uro".encode()
    euro = text.index("€".encode())
    # Cut inside the 3-byte "€" and inside "✓": the receiver must still see
    # one valid text message.
    cuts = [0, 5, euro + 1, euro + 2, len(text)]
    blob = os.urandom(300000)

    async def go():
        async with ws_connect(relay, certs, s["id"], s["responder_token"]) as b:
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(
                None, lambda: wsraw.open_peer(relay, s["id"], s["initiator_token"]))
            try:
                out = b""
                for i in range(len(cuts) - 1):
                    out += frame(TEXT if i == 0 else CONT, text[cuts[i]:cuts[i + 1]],
                                 fin=i == len(cuts) - 2)
                    if i == 1:
                        out += frame(PING, b"mid-message")  # control frames may interleave
                # Binary: three frames, the middle one empty.
                out += frame(BINARY, blob[:100000], fin=False) + frame(CONT, b"", fin=False)
                out += frame(CONT, blob[100000:], fin=True)
                await loop.run_in_executor(None, raw.send_raw, out)
                got = await asyncio.wait_for(b.recv(), relaytest.TIMEOUT)
                assert got == text.decode() and isinstance(got, str)
                got = await asyncio.wait_for(b.recv(), relaytest.TIMEOUT)
                assert isinstance(got, bytes) and sha(got) == sha(blob)
                pong = await loop.run_in_executor(None, raw.recv_frame)
                assert (pong.opcode, pong.payload, pong.fin) == (PONG, b"mid-message", True)
            finally:
                raw.shutdown()

    arun(go())


def test_small_frame_arrives_as_one_frame(relay, admin):
    s, a, b = pair(relay, admin)
    for op, payload in ((BINARY, os.urandom(100)), (TEXT, "one frame ✓".encode()), (BINARY, b"")):
        a.send_frame(op, payload)
        f = b.recv_frame()
        assert (f.fin, f.rsv, f.opcode, f.masked, f.payload) == (True, 0, op, False, payload)


# ---- tokens --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["bearer", "query", "subprotocol"])
def test_token_ways(relay, admin, how):
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"], how=how)
    proto = a.response.header("Sec-WebSocket-Protocol")
    if how == "subprotocol":
        assert proto == "swsrs.token." + s["initiator_token"], a.response
    else:
        assert proto is None, a.response
    b = wsraw.open_peer(relay, s["id"], s["responder_token"], how="query")
    assert_flows(a, b)


def test_subprotocol_token_among_others(relay, admin):
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"], how="subprotocol",
                        protocols=["chat.v1"])
    # Only the token protocol is echoed, never one the relay does not speak.
    assert a.response.header("Sec-WebSocket-Protocol") == "swsrs.token." + s["initiator_token"]
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    assert_flows(a, b)


# ---- refusals before the upgrade ---------------------------------------------------------

def random_id():
    return base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def refused(relay, path, headers=(), status=None, code=None, upgrade=True):
    c = wsraw.WsConn(relay.connect())
    try:
        if upgrade:
            r = c.handshake(path, headers=headers)
        else:
            c.send_raw(relaytest.http_request("GET", path, headers=list(headers)))
            r = c.reader.read_response()
    finally:
        c.shutdown()
    relaytest.assert_error_body(r, status, code)
    return r


def test_refused_404_unknown_session(relay):
    refused(relay, "/relay/%s" % random_id(),
            [("Authorization", "Bearer " + random_id())], 404, "unknown_session")


def test_refused_401_missing_and_wrong_token(relay, admin):
    s = admin.create()
    r = refused(relay, "/relay/" + s["id"], (), 401, "missing_token")
    assert (r.header("WWW-Authenticate") or "").startswith("Bearer"), r
    refused(relay, "/relay/" + s["id"], [("Authorization", "Bearer " + random_id())], 401)
    refused(relay, "/relay/%s?token=%s" % (s["id"], random_id()), (), 401)
    refused(relay, "/relay/" + s["id"],
            [("Sec-WebSocket-Protocol", "swsrs.token." + random_id())], 401)
    refused(relay, "/relay/%s?token=%s" % (s["id"], "bad%20token"), (), 401)
    # A real token used for the other slot's role.
    refused(relay, "/relay/%s?role=responder" % s["id"],
            [("Authorization", "Bearer " + s["initiator_token"])], 401)
    # None of this took a slot: both real peers still pair.
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    assert_flows(a, b)


def test_refused_409_second_connection_for_held_slot(relay, admin):
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    # The same token again, by each way of giving it.
    for how in ("bearer", "query", "subprotocol"):
        c = wsraw.open_peer(relay, s["id"], s["initiator_token"], how=how, expect=None)
        relaytest.assert_error_body(c.response, 409, "slot_taken")
        c.shutdown()
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    c = wsraw.open_peer(relay, s["id"], s["responder_token"], expect=None)
    relaytest.assert_error_body(c.response, 409, "slot_taken")
    c.shutdown()
    assert_flows(a, b)  # the holders were not disturbed


def test_racing_connections_for_one_slot_get_one_101(relay, admin):
    """Several upgrades for the same free slot sent at once (their Validate
    calls in flight together): exactly one wins, the others get 409."""
    for _ in range(5):
        s = admin.create()
        conns = [wsraw.WsConn(relay.connect()) for _ in range(4)]
        hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"), ("Authorization", "Bearer " + s["initiator_token"])]
        for c in conns:
            key = base64.b64encode(os.urandom(16)).decode()
            c.send_raw(relaytest.http_request("GET", "/relay/" + s["id"],
                                              headers=hdrs + [("Sec-WebSocket-Key", key)]))
        got = [c.reader.read_response() for c in conns]
        assert sorted(r.status for r in got) == [101, 409, 409, 409], got
        winner = conns[[r.status for r in got].index(101)]
        b = wsraw.open_peer(relay, s["id"], s["responder_token"])
        assert_flows(winner, b)
        for c in conns:
            c.shutdown()


def test_refused_426_without_upgrade(relay, admin):
    s = admin.create()
    r = refused(relay, "/relay/" + s["id"], [("Authorization", "Bearer " + s["initiator_token"])],
                426, upgrade=False)
    assert (r.header("Upgrade") or "").lower() == "websocket", r
    # A WebSocket version other than 13 is also refused with 426.
    c = wsraw.WsConn(relay.connect())
    c.sock.sendall(relaytest.http_request("GET", "/relay/" + s["id"], headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "8"), ("Authorization", "Bearer " + s["initiator_token"])]))
    r = c.reader.read_response()
    c.shutdown()
    relaytest.assert_error_body(r, 426)
    assert r.header("Sec-WebSocket-Version") == "13", r


def test_refused_403_disallowed_origin(relay, admin):
    s = admin.create()
    refused(relay, "/relay/" + s["id"], [("Authorization", "Bearer " + s["initiator_token"]),
                                          ("Origin", "https://evil.example")],
            403, "origin_not_allowed")
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"], headers=[("Origin", GOOD_ORIGIN)])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])  # no Origin: not a browser
    assert_flows(a, b)


def test_refused_429_over_max_sessions(start_relay):
    r = start_relay(extra=["--max-sessions", "1"])
    adm = wsraw.Admin(r)
    s1, s2 = adm.create(), adm.create()
    a = wsraw.open_peer(r, s1["id"], s1["initiator_token"])
    c = wsraw.open_peer(r, s2["id"], s2["initiator_token"], expect=None)
    relaytest.assert_error_body(c.response, 429, "too_many_sessions")
    c.shutdown()
    # The session already on the relay still takes its second peer.
    b = wsraw.open_peer(r, s1["id"], s1["responder_token"])
    assert_flows(a, b)
    a.close(1000)
    assert b.expect_close() == 1000
    # Once it is gone, the other session fits (the relay frees it on close).
    deadline = time.monotonic() + relaytest.TIMEOUT
    while True:
        c = wsraw.open_peer(r, s2["id"], s2["initiator_token"], expect=None)
        if c.response.status == 101:
            break
        assert c.response.status == 429, c.response
        c.shutdown()
        assert time.monotonic() < deadline, "session 1 never left the relay"
        time.sleep(0.1)
    adm.close()


def test_refused_503_when_controller_is_down(tmp_path, certs):
    rc = wsraw.RemoteControlled(tmp_path, certs=certs)
    try:
        rc.start_controller()
        adm = wsraw.Admin(rc.relay)
        s = adm.create()
        a = wsraw.open_peer(rc.relay, s["id"], s["initiator_token"])
        rc.kill_controller()
        c = wsraw.open_peer(rc.relay, s["id"], s["responder_token"], expect=None)
        relaytest.assert_error_body(c.response, 503, "controller_unavailable")
        c.shutdown()
        r = adm.request("POST", "/admin/sessions")
        relaytest.assert_error_body(r, 503)
        # /readyz agrees; the lone peer is still there and answers pings.
        assert rc.relay.get("/readyz").status == 503
        a.ping(b"still here")
        f = a.recv_frame()
        assert (f.opcode, f.payload) == (PONG, b"still here")
        rc.start_controller()
        b = wsraw.open_peer(rc.relay, s["id"], s["responder_token"])
        assert_flows(a, b)
        a.close(1000)
        assert b.expect_close() == 1000
        adm.close()
    finally:
        rc.stop()


# ---- close codes ----------------------------------------------------------------------------

@pytest.mark.parametrize("how,sent,expect", [
    ("close", 1000, 1000),
    ("close", 4001, 4001),
    ("close", 3000, 3000),
    ("close", 1001, 1001),
    ("empty-close", None, 1000),
    ("drop", None, 1000),
])
def test_peer_leaving_closes_the_other(relay, admin, how, sent, expect):
    s, a, b = pair(relay, admin)
    assert_flows(a, b)
    if how == "close":
        a.close(sent, b"leaving")
        assert a.expect_close() == sent  # echoed
    elif how == "empty-close":
        a.send_frame(CLOSE, b"")
        assert a.expect_close() is None
    else:
        a.sock.shutdown(socket.SHUT_RDWR)
        a.shutdown()
    assert b.expect_close() == expect
    a.shutdown()
    b.shutdown()


def test_rejoin_after_peer_leaves(relay, admin):
    s, a, b = pair(relay, admin)
    assert admin.status(s["id"])["state"] == "open"
    assert_flows(a, b, b"first life")
    a.close(1000)
    assert b.expect_close() == 1000
    a.expect_close()
    st = admin.wait_status(s["id"], lambda st: st["state"] == "pending")
    assert not st["initiator_connected"] and not st["responder_connected"], st
    for _ in range(2):  # and again
        b = wsraw.open_peer(relay, s["id"], s["responder_token"])
        admin.wait_status(s["id"], lambda st: st["state"] == "half_open" and
                          st["responder_connected"] and not st["initiator_connected"])
        a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
        admin.wait_status(s["id"], lambda st: st["state"] == "open")
        assert_flows(a, b, b"second life")
        b.close(4002)
        assert a.expect_close() == 4002
        admin.wait_status(s["id"], lambda st: st["state"] == "pending")


def test_slot_is_free_as_soon_as_the_peer_sends_close(relay, admin):
    """A peer that sends a close frame has left: its counterpart is told and
    its slot can be taken again at once, even while its TCP connection
    lingers (here: never closed by the client)."""
    s, a, b = pair(relay, admin)
    for i in range(3):
        assert_flows(a, b)
        a.close(4000 + i)
        f = a.recv_frame()
        assert (f.opcode, f.close_code) == (CLOSE, 4000 + i)  # echoed; socket left open
        a_old = a
        a = wsraw.open_peer(relay, s["id"], s["initiator_token"])  # not 409
        assert b.expect_close() == 4000 + i
        b = wsraw.open_peer(relay, s["id"], s["responder_token"])
        a_old.shutdown()
    assert_flows(a, b)


def test_frames_pipelined_with_the_handshake(relay, admin):
    """Bytes sent right behind the upgrade request (before the 101) are
    parsed as frames, not lost: a message is relayed, a ping answered."""
    s = admin.create()
    key = base64.b64encode(os.urandom(16)).decode()
    req = relaytest.http_request("GET", "/relay/" + s["id"], headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"), ("Authorization", "Bearer " + s["initiator_token"])])
    a = wsraw.WsConn(relay.connect())
    a.send_raw(req + frame(TEXT, "piggyback ✓".encode()) + frame(PING, b"p1"))
    r = a.reader.read_response()
    assert r.status == 101, r
    f = a.recv_frame()
    assert (f.opcode, f.payload) == (PONG, b"p1")
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    assert b.recv_message() == (TEXT, "piggyback ✓".encode())
    assert_flows(a, b)


def test_peer_wait_expiry_closes_1001(relay, admin):
    s = admin.create(peer_wait_seconds=1)
    t0 = time.monotonic()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    assert a.expect_close(timeout=10) == 1001
    took = time.monotonic() - t0
    assert 0.8 <= took < 5, took
    # The session is still there: the peer may come back.
    admin.wait_status(s["id"], lambda st: st["state"] == "pending")
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    time.sleep(1.5)  # past peer_wait: an open session is not affected
    assert_flows(a, b)


def test_delete_closes_both_peers_1001(relay, admin):
    s, a, b = pair(relay, admin)
    assert_flows(a, b)
    r = admin.delete(s["id"])
    assert r.status == 204, r
    assert a.expect_close() == 1001
    assert b.expect_close() == 1001
    assert admin.get(s["id"]).status == 404
    c = wsraw.open_peer(relay, s["id"], s["initiator_token"], expect=None)
    relaytest.assert_error_body(c.response, 404)
    # A lone peer is kicked the same way.
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    admin.wait_status(s["id"], lambda st: st["initiator_connected"])
    assert admin.delete(s["id"]).status == 204
    assert a.expect_close() == 1001


def test_ttl_expiry_closes_both_peers_1001(relay, admin):
    s = admin.create(ttl_seconds=2)
    t0 = time.monotonic()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    assert_flows(a, b)
    assert a.expect_close(timeout=10) == 1001
    assert b.expect_close(timeout=10) == 1001
    assert time.monotonic() - t0 < 6
    c = wsraw.open_peer(relay, s["id"], s["initiator_token"], expect=None)
    relaytest.assert_error_body(c.response, 404)


BAD_FRAMES_1002 = {
    "unmasked": frame(BINARY, b"no mask", mask=False),
    "rsv1": frame(BINARY, b"x", rsv=4),
    "rsv2": frame(TEXT, b"x", rsv=2),
    "rsv3": frame(BINARY, b"x", rsv=1),
    "opcode3": frame(0x3, b"x"),
    "opcode7": frame(0x7, b"x"),
    "opcodeB": frame(0xB, b""),
    "opcodeF": frame(0xF, b"x"),
    "fragmented-ping": frame(PING, b"a", fin=False),
    "fragmented-close": frame(CLOSE, struct.pack("!H", 1000), fin=False),
    "ping-126": frame(PING, b"p" * 126),
    "pong-200": frame(PONG, b"p" * 200),
    "close-126": frame(CLOSE, struct.pack("!H", 1000) + b"r" * 124),
    "continuation-first": frame(CONT, b"orphan"),
    "new-message-inside-fragmented": frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"),
    "close-one-byte": frame(CLOSE, b"\x03"),
    "close-1005": frame(CLOSE, struct.pack("!H", 1005)),
    "close-1006": frame(CLOSE, struct.pack("!H", 1006)),
    "close-999": frame(CLOSE, struct.pack("!H", 999)),
    "close-1015": frame(CLOSE, struct.pack("!H", 1015)),
    "close-2000": frame(CLOSE, struct.pack("!H", 2000)),
    "close-5000": frame(CLOSE, struct.pack("!H", 5000)),
    "length-top-bit": (bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + b"\0\0\0\0"),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES_1002))
def test_protocol_error_closes_1002(relay, admin, name):
    s, a, b = pair(relay, admin)
    assert_flows(a, b)
    a.send_raw(BAD_FRAMES_1002[name])
    assert a.expect_close() == 1002, a.last_close
    # The counterpart learns its peer is gone.
    assert b.expect_close() == 1000


BAD_UTF8_1007 = {
    "single-frame": [frame(TEXT, b"ok \xff bad")],
    "overlong": [frame(TEXT, b"\xc0\xaf")],
    "surrogate": [frame(TEXT, b"\xed\xa0\x80")],
    "above-10ffff": [frame(TEXT, b"\xf4\x90\x80\x80")],
    # Valid so far in the first frame; the second frame breaks the sequence.
    "split-across-frames": [frame(TEXT, b"euro \xe2\x82", fin=False), frame(CONT, b"\x28 x")],
    "split-three-frames": [frame(TEXT, b"\xf0", fin=False), frame(CONT, b"\x9f", fin=False),
                           frame(CONT, b"\x98\xff")],
    "ends-inside-character": [frame(TEXT, b"abc \xe2\x82", fin=False), frame(CONT, b"", fin=True)],
    "close-reason": [frame(CLOSE, struct.pack("!H", 1000) + b"\xff")],
}


@pytest.mark.parametrize("name", sorted(BAD_UTF8_1007))
def test_invalid_utf8_closes_1007(relay, admin, name):
    s, a, b = pair(relay, admin)
    for f in BAD_UTF8_1007[name]:
        a.send_raw(f)
        time.sleep(0.05)  # separate reads: the check must carry across them
    assert a.expect_close() == 1007, a.last_close
    assert b.expect_close() == 1000


def test_valid_utf8_split_anywhere_passes(relay, admin):
    s, a, b = pair(relay, admin)
    text = "€ 😀 ✓ ä".encode()
    for cut in range(1, len(text)):
        a.send_raw(frame(TEXT, text[:cut], fin=False))
        time.sleep(0.01)
        a.send_raw(frame(CONT, text[cut:]))
        assert b.recv_message() == (TEXT, text)


def test_message_too_big_closes_1009(start_relay, certs):
    r = start_relay(extra=["--max-message", "64KiB"])
    adm = wsraw.Admin(r)
    limit = 64 * 1024
    # Exactly the limit passes, in one frame and in several.
    s = adm.create()
    a = wsraw.open_peer(r, s["id"], s["initiator_token"])
    b = wsraw.open_peer(r, s["id"], s["responder_token"])
    blob = os.urandom(limit)
    a.send_message(blob)
    assert b.recv_message() == (BINARY, blob)
    a.send_message(blob, fragments=4)
    assert b.recv_message() == (BINARY, blob)
    # One byte more in one frame: 1009 before any of it is forwarded.
    a.send_message(blob + b"x")
    assert a.expect_close() == 1009, a.last_close
    assert b.expect_close() == 1000
    # Fragments that only together pass the limit.
    a = wsraw.open_peer(r, s["id"], s["initiator_token"])
    b = wsraw.open_peer(r, s["id"], s["responder_token"])
    a.send_raw(frame(TEXT, b"t" * 40000, fin=False) + frame(CONT, b"t" * 40000))
    assert a.expect_close() == 1009, a.last_close
    assert b.expect_close() == 1000
    adm.close()


# ---- a lone peer ---------------------------------------------------------------------

def test_lone_peer_pings_are_answered(relay, admin):
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    for payload in (b"", b"ping-1", os.urandom(125)):
        a.ping(payload)
        f = a.recv_frame()
        assert (f.opcode, f.fin, f.masked, f.payload) == (PONG, True, False, payload)
    assert admin.status(s["id"])["state"] == "half_open"
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    assert_flows(a, b)


def test_early_data_is_delivered_when_the_peer_arrives(relay, admin):
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    msgs = [(TEXT, "early ✓".encode()), (BINARY, os.urandom(10000)), (BINARY, b""), (TEXT, b""),
            (TEXT, ("x" * 3000).encode())]
    for i, (op, m) in enumerate(msgs):
        a.send_message(m, opcode=op, fragments=3 if i == 4 else 1)
    a.ping(b"lone")
    assert a.recv_frame().payload == b"lone"  # the ping came after the data: all was read
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    for m in msgs:
        assert b.recv_message() == m
    assert_flows(a, b)


def test_early_data_beyond_the_hold_buffer_waits_not_lost(relay, admin):
    """A lone peer sending more than --hold-bytes (256 KiB) is paused, not
    dropped: the sender stalls, and everything arrives once its counterpart
    does."""
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    blob = os.urandom(8 << 20)
    chunks = [blob[i:i + 65536] for i in range(0, len(blob), 65536)]
    progress = [0]
    err = []

    def send():
        try:
            for c in chunks:
                a.send_message(c)
                progress[0] += 1
        except Exception as e:  # reported below
            err.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    # The relay holds 256 KiB and the kernel buffers a little more; then the
    # sender must be stuck, far from done.
    deadline = time.monotonic() + relaytest.TIMEOUT
    while True:
        before = progress[0]
        time.sleep(0.5)
        if progress[0] == before:
            break
        assert time.monotonic() < deadline, "the lone sender never stalled"
    stuck = progress[0]
    assert stuck < len(chunks) // 2 and not err, (stuck, err)
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    got = []
    for _ in chunks:
        op, m = b.recv_message()
        assert op == BINARY
        got.append(m)
    t.join(relaytest.TIMEOUT)
    assert not t.is_alive() and not err, err
    assert sha(b"".join(got)) == sha(blob)
    assert_flows(a, b)


# ---- counters ---------------------------------------------------------------------------

def test_stats_reach_the_session_status(relay, admin):
    """bytes_in is what the initiator sent the responder, bytes_out the
    reverse (as swsrs counts them), and GET shows them, with last_activity,
    within about a second while the session is open."""
    s, a, b = pair(relay, admin)
    st = admin.status(s["id"])
    assert st["bytes_in"] == 0 and st["bytes_out"] == 0, st
    t0 = int(time.time())
    a.send_message(os.urandom(1000))
    b.recv_message()
    b.send_message("é" * 150)  # 300 bytes
    a.recv_message()
    sent = time.monotonic()
    st = admin.wait_status(s["id"], lambda st: st["bytes_in"] == 1000 and st["bytes_out"] == 300,
                           timeout=5)
    assert time.monotonic() - sent < 2.0, "counters lagged %.1fs" % (time.monotonic() - sent)
    assert st["state"] == "open"
    la = st["last_activity"]
    assert la and calendar.timegm(time.strptime(la, "%Y-%m-%dT%H:%M:%SZ")) >= t0 - 1, st
    # When a peer leaves the counters are sent at once.
    a.send_message(b"y" * 700)
    b.recv_message()
    a.close(1000)
    b.expect_close()
    st = admin.wait_status(s["id"], lambda st: st["bytes_in"] == 1700, timeout=4)
    assert st["bytes_out"] == 300 and st["state"] == "pending", st


def test_bad_peer_leaves_other_sessions_intact(relay, admin):
    s1, a1, b1 = pair(relay, admin)
    s2, a2, b2 = pair(relay, admin)
    for bad in (BAD_FRAMES_1002["unmasked"], BAD_UTF8_1007["single-frame"][0],
                BAD_FRAMES_1002["opcode3"]):
        a2.send_raw(bad)
        a2.expect_close()
        b2.expect_close()
        a2 = wsraw.open_peer(relay, s2["id"], s2["initiator_token"])
        b2 = wsraw.open_peer(relay, s2["id"], s2["responder_token"])
        assert_flows(a1, b1)
    assert_flows(a2, b2)


def test_shutdown_closes_peers_1001(start_relay):
    """SIGTERM: a lone peer is closed 1001 at once; an open session keeps
    flowing through the grace period, then both peers get 1001."""
    r = start_relay(extra=["--shutdown-grace", "1500ms"])
    adm = wsraw.Admin(r)
    s1, s2 = adm.create(), adm.create()
    adm.close()
    a = wsraw.open_peer(r, s1["id"], s1["initiator_token"])
    b = wsraw.open_peer(r, s1["id"], s1["responder_token"])
    c = wsraw.open_peer(r, s2["id"], s2["initiator_token"])
    assert_flows(a, b)
    r.proc.send_signal(signal.SIGTERM)
    assert c.expect_close(timeout=5) == 1001
    assert_flows(a, b, b"during the grace period")
    assert a.expect_close(timeout=10) == 1001
    assert b.expect_close(timeout=10) == 1001
    assert r.wait() == 0
    r.check_sanitizers()
