"""The WebSocket data plane against clients that push the edges of RFC 6455
and RFC 9110, seen by independent clients (Python `websockets` and the raw
frame client in wsraw.py):

* the upgrade handshake: over HTTP/1.0 (426, no upgrade), with a method
  other than GET (400), with Sec-WebSocket-Key or -Version twice (400);
* the slot token given more than once (Authorization, ?token=, the
  swsrs.token.<t> subprotocol, or any of them repeated): all agreeing is
  fine, any disagreement is 400 with a JSON body that names neither token,
  and no slot is taken;
* a text message whose last frame ends inside a UTF-8 sequence: the sender
  is closed 1007 and the receiver never gets the message complete (it sees
  the close, 1000, as for invalid UTF-8 in mid-message);
* --ping-idle: a sender whose reading the relay paused for backpressure is
  not idle, however long the receiver takes; a silent peer still is.
"""

import asyncio
import base64
import hashlib
import os
import socket
import struct
import threading
import time

import pytest
import websockets
import websockets.exceptions

import relaytest
import wsraw
from wsraw import BINARY, CLOSE, CONT, PING, TEXT, frame


@pytest.fixture(scope="module")
def relay():
    with relaytest.Relay(plain=True) as r:  # stopped cleanly (exit 0) at the end
        yield r
        assert r.alive(), r.describe()


@pytest.fixture
def admin(relay):
    a = wsraw.Admin(relay)
    yield a
    a.close()


def arun(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def ws_headers(token=None, key=None):
    h = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
         ("Sec-WebSocket-Key", key or new_key()), ("Sec-WebSocket-Version", "13")]
    if token:
        h.append(("Authorization", "Bearer " + token))
    return h


def send_request(relay, method, path, headers, version="HTTP/1.1"):
    """One request on a new connection; returns its response."""
    s = relay.connect()
    try:
        s.sendall(relaytest.http_request(method, path, headers=headers, version=version))
        return relaytest.Reader(s).read_response(head_request=method == "HEAD")
    finally:
        s.close()


def assert_pairs(relay, s):
    """Both slots are still free: the real peers pair and data flows."""
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    a.send_message(b"ping over the pair")
    assert b.recv_message() == (BINARY, b"ping over the pair")
    a.close()
    assert b.expect_close() == 1000
    a.shutdown()
    b.shutdown()


# ---- the handshake ---------------------------------------------------------------------

def test_upgrade_over_http10_is_not_upgraded(relay, admin):
    s = admin.create()
    r = send_request(relay, "GET", "/relay/" + s["id"],
                     ws_headers(s["initiator_token"]), version="HTTP/1.0")
    relaytest.assert_error_body(r, 426, "upgrade_required")
    assert_pairs(relay, s)


def test_upgrade_to_an_impossible_id_is_404_without_asking(relay, admin):
    """An id no session can have (longer than any id, or not base64url) is
    404 unknown_session at the edge, and no Validate goes to the controller
    for it."""
    s = admin.create()
    before = relaytest.metrics(relay)["relay_controller_calls_total"]
    for bad in (s["id"] + "A" * 60, s["id"][:-1] + "!", "a.b"):
        r = send_request(relay, "GET", "/relay/" + bad, ws_headers(s["initiator_token"]))
        relaytest.assert_error_body(r, 404, "unknown_session")
    assert relaytest.metrics(relay)["relay_controller_calls_total"] == before
    assert_pairs(relay, s)


def test_upgrade_with_head_is_400(relay, admin):
    s = admin.create()
    r = send_request(relay, "HEAD", "/relay/" + s["id"], ws_headers(s["initiator_token"]))
    assert r.status == 400 and r.header("Sec-WebSocket-Accept") is None, r
    assert r.body == b""  # HEAD: no body, only its length
    assert_pairs(relay, s)


def test_upgrade_with_post_is_405(relay, admin):
    s = admin.create()
    r = send_request(relay, "POST", "/relay/" + s["id"], ws_headers(s["initiator_token"]))
    relaytest.assert_error_body(r, 405, "method_not_allowed")


@pytest.mark.parametrize("twice", ["key-different", "key-same", "version"])
def test_repeated_handshake_header_is_400(relay, admin, twice):
    s = admin.create()
    key = new_key()
    hdrs = ws_headers(s["initiator_token"], key)
    hdrs.append({"key-different": ("Sec-WebSocket-Key", new_key()),
                 "key-same": ("Sec-WebSocket-Key", key),
                 "version": ("Sec-WebSocket-Version", "13")}[twice])
    r = send_request(relay, "GET", "/relay/" + s["id"], hdrs)
    relaytest.assert_error_body(r, 400, "bad_handshake")
    assert_pairs(relay, s)


# ---- the slot token given more than once ---------------------------------------------------

def token_request(relay, sid, bearers=(), queries=(), protocols=(), protocol_headers=1):
    headers = ws_headers()
    headers += [("Authorization", "Bearer " + t) for t in bearers]
    protos = ["swsrs.token." + t for t in protocols]
    if protos:
        per = -(-len(protos) // protocol_headers)
        for i in range(0, len(protos), per):
            headers.append(("Sec-WebSocket-Protocol", ", ".join(protos[i:i + per])))
    path = "/relay/" + sid
    if queries:
        path += "?" + "&".join("token=" + t for t in queries)
    return send_request(relay, "GET", path, headers)


def conflicts(s):
    """Two sources that disagree: each pair of ways, and each way repeated.
    The other value is the other slot's real token: whichever source won,
    a lax relay would hand out a slot."""
    i, r = s["initiator_token"], s["responder_token"]
    return {
        "bearer-query": dict(bearers=[i], queries=[r]),
        "query-bearer": dict(bearers=[r], queries=[i]),
        "bearer-subprotocol": dict(bearers=[i], protocols=[r]),
        "query-subprotocol": dict(queries=[i], protocols=[r]),
        "bearer-twice": dict(bearers=[i, r]),
        "query-twice": dict(queries=[i, r]),
        "subprotocol-twice": dict(protocols=[i, r]),
        "subprotocol-two-headers": dict(protocols=[i, r], protocol_headers=2),
        "three-ways-last-differs": dict(bearers=[i], queries=[i], protocols=[r]),
        "prefix": dict(bearers=[i], queries=[i[:-1]]),
    }


CONFLICTS = sorted(conflicts({"initiator_token": "a", "responder_token": "b"}))


@pytest.mark.parametrize("name", CONFLICTS)
def test_disagreeing_tokens_are_400(relay, admin, name):
    s = admin.create()
    r = token_request(relay, s["id"], **conflicts(s)[name])
    body = relaytest.assert_error_body(r, 400, "conflicting_tokens")
    text = r.body.decode()
    assert s["initiator_token"] not in text and s["responder_token"] not in text, body
    assert s["initiator_token"][:-1] not in text, body
    assert r.header("Sec-WebSocket-Accept") is None, r
    assert_pairs(relay, s)  # no slot was taken


@pytest.mark.parametrize("ways", ["bearer-query", "bearer-subprotocol", "query-subprotocol",
                                  "all-three", "bearer-twice", "subprotocol-two-headers"])
def test_agreeing_tokens_are_fine(relay, admin, ways):
    s = admin.create()
    t = s["initiator_token"]
    kw = {"bearer-query": dict(bearers=[t], queries=[t]),
          "bearer-subprotocol": dict(bearers=[t], protocols=[t]),
          "query-subprotocol": dict(queries=[t], protocols=[t]),
          "all-three": dict(bearers=[t], queries=[t], protocols=[t]),
          "bearer-twice": dict(bearers=[t, t]),
          "subprotocol-two-headers": dict(protocols=[t, t], protocol_headers=2)}[ways]
    r = token_request(relay, s["id"], **kw)
    assert r.status == 101, r
    if "protocols" in kw:  # the client offered it, so it is echoed
        assert r.header("Sec-WebSocket-Protocol") == "swsrs.token." + t, r
    else:
        assert r.header("Sec-WebSocket-Protocol") is None, r


def test_disagreeing_tokens_from_websockets_client(relay, admin):
    s = admin.create()
    uri = "ws://127.0.0.1:%d/relay/%s" % (relay.port, s["id"])

    async def go():
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await websockets.connect(
                uri, extra_headers=[("Authorization", "Bearer " + s["initiator_token"])],
                subprotocols=["swsrs.token." + s["responder_token"]],
                open_timeout=relaytest.TIMEOUT)
        assert e.value.status_code == 400
        # The same token both ways is accepted, and the subprotocol echoed.
        async with websockets.connect(
                uri, extra_headers=[("Authorization", "Bearer " + s["initiator_token"])],
                subprotocols=["swsrs.token." + s["initiator_token"]],
                open_timeout=relaytest.TIMEOUT) as a:
            assert a.subprotocol == "swsrs.token." + s["initiator_token"]

    arun(go())


# ---- UTF-8 at the end of a text message ---------------------------------------------------

# Each message's bytes are valid so far, and its last frame ends inside a
# character.  (Invalid bytes mid-message are test_dataplane.py's 1007 tests.)
UNFINISHED = {
    "one-frame": [frame(TEXT, b"abc \xe2\x82")],
    "one-frame-lead-byte-only": [frame(TEXT, b"\xf0")],
    "last-of-two-frames": [frame(TEXT, b"abc ", fin=False), frame(CONT, b"\xe2\x82")],
    "split-then-unfinished": [frame(TEXT, b"\xf0\x9f", fin=False), frame(CONT, b"\x98")],
    "after-a-ping": [frame(TEXT, b"euro \xe2", fin=False), frame(PING, b"p"),
                     frame(CONT, b"\x82")],
}


def pair_raw(relay, admin):
    s = admin.create()
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    return s, a, b


def frames_until_close(conn):
    """Every frame the relay sends until (and with) its close."""
    got = []
    while True:
        f = conn.recv_frame()
        got.append(f)
        if f.opcode == CLOSE:
            return got


@pytest.mark.parametrize("together", [True, False], ids=["one-write", "separate-reads"])
@pytest.mark.parametrize("name", sorted(UNFINISHED))
def test_text_ending_inside_a_character_never_arrives_complete(relay, admin, name, together):
    s, a, b = pair_raw(relay, admin)
    if together:
        a.send_raw(b"".join(UNFINISHED[name]))
    else:
        for f in UNFINISHED[name]:
            a.send_raw(f)
            time.sleep(0.05)  # the relay reads each frame on its own
    assert a.expect_close() == 1007, a.last_close
    got = frames_until_close(b)
    data = [f for f in got if f.opcode in (TEXT, BINARY, CONT)]
    assert not any(f.fin for f in data), got  # the message was never completed
    assert got[-1].close_code == 1000, got
    # The session is usable again with the same tokens.
    a2 = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b2 = wsraw.open_peer(relay, s["id"], s["responder_token"])
    a2.send_message("fine ✓")
    assert b2.recv_message() == (TEXT, "fine ✓".encode())


def test_text_ending_inside_a_character_websockets_receiver(relay, admin):
    """With `websockets` as the receiver: it would fail the connection with
    1007 itself if the invalid message reached it; it must instead see the
    relay's close 1000 without any message."""
    s = admin.create()
    uri = "ws://127.0.0.1:%d/relay/%s" % (relay.port, s["id"])

    async def go():
        async with websockets.connect(
                uri, extra_headers=[("Authorization", "Bearer " + s["responder_token"])],
                open_timeout=relaytest.TIMEOUT, ping_interval=None) as b:
            loop = asyncio.get_running_loop()
            a = await loop.run_in_executor(
                None, lambda: wsraw.open_peer(relay, s["id"], s["initiator_token"]))
            await loop.run_in_executor(None, a.send_raw, frame(TEXT, b"caf\xc3"))
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                got = await asyncio.wait_for(b.recv(), relaytest.TIMEOUT)
                raise AssertionError("a message arrived: %r" % got)
            assert b.close_code == 1000, (b.close_code, b.close_reason)
            code = await loop.run_in_executor(None, a.expect_close)
            assert code == 1007

    arun(go())


# ---- --ping-idle -----------------------------------------------------------------------------

IDLE = 1.0  # --ping-idle, seconds


def idle_session(start_relay, *extra, **kw):
    """A relay with --ping-idle IDLE and a fresh session on it."""
    relay = start_relay(plain=True, extra=["--ping-idle", "%dms" % (IDLE * 1000)] + list(extra),
                        **kw)
    adm = wsraw.Admin(relay)
    s = adm.create()
    adm.close()
    return relay, s


class Keepalive(threading.Thread):
    """Sends a ping on a raw connection every `every` seconds (without
    reading), as a client with its own keepalive does."""

    def __init__(self, conn, every=0.25):
        super().__init__(daemon=True)
        self.conn, self.every = conn, every
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.every):
            try:
                self.conn.ping(b"ka")
            except OSError:
                return

    def stop(self):
        self.stopped.set()
        self.join(relaytest.TIMEOUT)


def test_paused_sender_is_not_idle(start_relay):
    """A fast sender (websockets) and a receiver that stops reading for
    3.5 idle periods: the relay stops reading the sender to hold the
    receiver's queue down, and must not take that silence for idleness.
    Every byte arrives (SHA-256) and the session ends with the sender's own
    close (1000), not 1001."""
    relay, s = idle_session(start_relay, "--ws-high-watermark", "16KiB", log_level="info")
    total, msg = 32 << 20, 64 << 10
    blocks = [os.urandom(msg) for _ in range(8)]
    want = hashlib.sha256()
    for i in range(total // msg):
        want.update(blocks[i % len(blocks)])

    rs = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    rs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    rs.settimeout(relaytest.TIMEOUT)
    rs.connect(("127.0.0.1", relay.port))
    b = wsraw.WsConn(rs)
    assert b.handshake("/relay/" + s["id"],
                       headers=[("Authorization", "Bearer " + s["responder_token"])]).status == 101
    ka = Keepalive(b)  # the receiver stays live on its own account
    ka.start()

    result = {}

    async def sender():
        uri = "ws://127.0.0.1:%d/relay/%s" % (relay.port, s["id"])
        async with websockets.connect(
                uri, extra_headers=[("Authorization", "Bearer " + s["initiator_token"])],
                max_size=None, compression=None, ping_interval=None,
                open_timeout=relaytest.TIMEOUT, close_timeout=10) as a:
            t0 = time.monotonic()
            try:
                for i in range(total // msg):
                    await a.send(blocks[i % len(blocks)])
                result["send_seconds"] = time.monotonic() - t0
                await a.close(1000, "done")
            except websockets.exceptions.ConnectionClosed as e:
                result["closed"] = (e.code, e.reason)
            result["close_code"] = a.close_code

    snd = threading.Thread(target=lambda: arun(sender()), daemon=True)
    snd.start()
    time.sleep(3.5 * IDLE)  # not reading: the sender is paused meanwhile

    hasher = wsraw.StreamHasher()
    buf = bytearray(1 << 20)
    deadline = time.monotonic() + 120
    close = None
    while close is None:
        assert time.monotonic() < deadline, hasher.payload_bytes
        rs.settimeout(max(0.1, deadline - time.monotonic()))
        n = rs.recv_into(buf)
        if n == 0:
            break
        hasher.feed(memoryview(buf)[:n])
        close = next((p for op, p in hasher.controls if op == CLOSE), None)
    ka.stop()
    snd.join(relaytest.TIMEOUT)
    assert not snd.is_alive()
    code = struct.unpack("!H", close[:2])[0] if close else None
    assert "closed" not in result, (result, relay.find_logs(msg="peer idle; closing"))
    assert result.get("send_seconds", 0) > 2 * IDLE, result  # it was held back that long
    assert code == 1000, (code, hasher.payload_bytes)
    assert hasher.payload_bytes == total and hasher.hexdigest() == want.hexdigest()
    assert hasher.messages == total // msg and hasher.types == {BINARY: total // msg}
    assert not relay.find_logs(msg="peer idle; closing")
    b.shutdown()


def test_silent_peer_is_still_closed_1001(start_relay):
    """What --ping-idle is for: a peer that neither sends nor answers the
    relay's ping is closed 1001 after about two idle periods; its
    counterpart, which answers pings, is kept until then and hears 1001."""
    relay, s = idle_session(start_relay)
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    t0 = time.monotonic()
    ping = a.recv_frame(timeout=4 * IDLE)  # a does not answer it
    assert (ping.opcode, ping.payload) == (PING, b"relay"), ping
    assert a.expect_close(timeout=4 * IDLE) == 1001, a.last_close
    elapsed = time.monotonic() - t0
    assert 1.5 * IDLE <= elapsed <= 4 * IDLE, elapsed
    with pytest.raises(wsraw.Closed) as e:
        b.recv_message(timeout=4 * IDLE)  # answers the relay's pings meanwhile
    assert e.value.code == 1001


def test_peers_answering_pings_stay(start_relay):
    relay, s = idle_session(start_relay)
    a = wsraw.open_peer(relay, s["id"], s["initiator_token"])
    b = wsraw.open_peer(relay, s["id"], s["responder_token"])
    pings = [0, 0]
    end = time.monotonic() + 3.5 * IDLE
    while time.monotonic() < end:
        for i, c in enumerate((a, b)):
            if relaytest.wait_readable(c.sock, 0.05) or c.reader.buf:
                f = c.recv_frame()
                assert f.opcode == PING, f
                c.send_frame(wsraw.PONG, f.payload)
                pings[i] += 1
    assert min(pings) >= 1, pings  # pinged, answered, and kept past two idle periods
    a.send_message(b"still here")
    assert b.recv_message() == (BINARY, b"still here")
