"""Interop: the controller link speaks standard gRPC over HTTP/2.

A second, independent implementation of HTTP/2 + gRPC framing (python3-h2
plus the hand-written protobuf codec in grpcpeer.py) exchanges calls with
each side of the link, over real mutual TLS with certificates from real
enrolment:

* test_controller_serves_python_relay — a Python *relay impostor* listens
  with a relay certificate from sign-csr; relay-controller dials it; Python
  then plays the HTTP/2 *client* (role reversal) and calls Admin, Validate
  and Events on the controller, checking every answer's framing
  (:status 200, content-type application/grpc, 5-byte prefixes,
  grpc-status trailers or Trailers-Only) and decoded fields.
* test_relay_calls_python_controller — a Python *controller impostor* dials
  the relay's tunnel port with the controller certificate and plays the
  HTTP/2 *server*: it checks the relay's requests (POST, path,
  content-type, te: trailers, grpc-timeout, prefixes), reads the Events
  Hello, answers Validate and Admin calls, and pushes a Kick; malformed
  answers (compressed flag, missing grpc-status) must be refused by the
  relay, not trusted, and so are slot tokens no upgrade could carry.
* test_controller_keeps_relay_live_while_a_link_remains — two impostor
  links with one node id: dropping one leaves the relay live (slots stay
  taken, sessions stay put).
* test_relay_honours_controller_goaway — after a controller's GOAWAY the
  relay finishes the call already accepted and starts no new ones there.
"""

import base64
import hashlib
import os
import socket
import ssl
import struct
import time

import grpcpeer as gp
import relaytest

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------
# (a) Python relay impostor <- relay-controller
# --------------------------------------------------------------------------

def _admin(peer, fields):
    return peer.unary(gp.PATH_ADMIN, gp.pb_encode("AdminRequest", fields))


def _validate(peer, fields):
    return peer.unary(gp.PATH_VALIDATE, gp.pb_encode("SlotRequest", fields))


def test_controller_serves_python_relay(tmp_path, start_controller):
    pki = gp.Pki(tmp_path)
    crt, key = pki.relay("py-relay")
    ctx = gp.relay_impostor_context(pki, crt, key)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    ctl = start_controller(["run", "--relay", "127.0.0.1:%d" % port, "--ca-dir", pki.ca_dir,
                            "--accept-unauthenticated", "--log-level", "debug"])
    tls = gp.accept_controller(lsock, ctx)
    lsock.close()
    # The controller dialled with TLS 1.3, ALPN h2 and its controller identity.
    assert tls.version() == "TLSv1.3"
    assert tls.selected_alpn_protocol() == "h2"
    assert ("URI", "urn:relay:role:controller") in tls.getpeercert()["subjectAltName"]

    peer = gp.H2Peer(tls, client_side=True)
    try:
        # Events: the relay opens it and says Hello first.
        ev_sid = peer.open_stream(gp.PATH_EVENTS, timeout_header=None)
        public_url = "wss://py-relay.example"
        peer.send_message(ev_sid, gp.pb_encode("RelayEvent", {"hello": {
            "node_id": "py-relay", "version": "interop/1", "public_url": public_url}}))
        events = peer.streams[ev_sid]
        peer.pump(lambda: events.headers.get(":status"), what="Events response headers")
        assert events.headers[":status"] == "200", events.headers
        assert events.headers["content-type"].startswith("application/grpc"), events.headers
        assert not events.ended
        ctl.wait_for_log(msg="relay hello", relay="py-relay", public_url=public_url)
        ctl.wait_for_log(msg="relay link up", relay="py-relay")
        assert peer.remote_settings_seen

        # Admin CREATE (auth_disabled: this "relay" runs --no-auth).
        reply = _admin(peer, {"op": gp.OP_CREATE, "auth_disabled": True,
                              "relay_node_id": "py-relay", "ttl_seconds": 600,
                              "peer_wait_seconds": 30})
        reply.check()
        assert not reply.trailers_only
        assert reply.trailers.get("grpc-status") == "0", reply.trailers
        created = reply.decode("AdminResponse")
        assert created["http_status"] == 201 and created["error"] == "", created
        cs = created["created"]
        st = cs["status"]
        sid = st["id"]
        assert len(sid) == 22 and len(cs["initiator_token"]) == 22
        assert len(cs["responder_token"]) == 22
        assert cs["initiator_token"] != cs["responder_token"]
        assert st["state"] == "pending"
        assert st["relay_node_id"] == "py-relay" and st["public_url"] == public_url
        assert st["expires_at_unix"] - st["created_at_unix"] == 600
        assert cs["initiator_url"] == "%s/relay/%s" % (public_url, sid)
        assert cs["responder_url"] == "%s/relay/%s" % (public_url, sid)

        # Validate: each token opens its slot; the decision carries the policy.
        base = {"session_id": sid, "relay_node_id": "py-relay", "remote_addr": "127.0.0.1:1"}
        d = _validate(peer, dict(base, token=cs["initiator_token"])).decode("SlotDecision")
        assert d["allow"] and d["slot"] == gp.ROLE_INITIATOR and d["http_status"] == 200, d
        assert d["expires_at_unix"] == st["expires_at_unix"] and d["peer_wait_seconds"] == 30, d
        d = _validate(peer, dict(base, token=cs["responder_token"])).decode("SlotDecision")
        assert d["allow"] and d["slot"] == gp.ROLE_RESPONDER, d
        d = _validate(peer, dict(base, token=cs["responder_token"],
                                 requested_role=gp.ROLE_INITIATOR)).decode("SlotDecision")
        assert not d["allow"] and d["http_status"] == 401 and d["reason"] == "role_mismatch", d
        d = _validate(peer, dict(base, token=gp.token22())).decode("SlotDecision")
        assert not d["allow"] and d["http_status"] == 401 and d["reason"] == "invalid_token", d
        # Unknown session: gRPC NOT_FOUND as a Trailers-Only answer.
        r = _validate(peer, dict(base, session_id=gp.token22(), token=gp.token22())).check()
        assert r.trailers_only and r.status == gp.GRPC_NOT_FOUND, (r.headers, r.trailers)

        # Events up: ATTACH and STATS change what Admin GET reports.
        peer.send_message(ev_sid, gp.pb_encode("RelayEvent", {"session": {
            "type": gp.EV_ATTACH, "session_id": sid, "role": gp.ROLE_INITIATOR}}))
        peer.send_message(ev_sid, gp.pb_encode("RelayEvent", {"session": {
            "type": gp.EV_STATS, "session_id": sid, "counter_epoch": 77, "bytes_in": 1234, "bytes_out": 1000,
            "last_activity_unix": int(time.time())}}))
        got = _admin(peer, {"op": gp.OP_GET, "session_id": sid, "auth_disabled": True})
        got = got.decode("AdminResponse")
        assert got["http_status"] == 200 and len(got["sessions"]) == 1, got
        s1 = got["sessions"][0]
        assert s1["id"] == sid and s1["state"] == "half_open", s1
        assert s1["initiator_connected"] and not s1["responder_connected"], s1
        assert (s1["bytes_in"], s1["bytes_out"]) == (1234, 1000), s1
        # The attached slot is now taken.
        d = _validate(peer, dict(base, token=cs["initiator_token"])).decode("SlotDecision")
        assert not d["allow"] and d["http_status"] == 409 and d["reason"] == "slot_taken", d

        # Policy: without auth_disabled a principal needs the scope.
        r = _admin(peer, {"op": gp.OP_LIST}).decode("AdminResponse")
        assert r["http_status"] == 403 and r["error"] == "insufficient_scope", r
        r = _admin(peer, {"op": gp.OP_LIST, "principal": {
            "subject": "alice", "scopes": ["swsrs:session:read"], "issuer": "https://idp"}})
        listed = r.decode("AdminResponse")
        assert listed["http_status"] == 200 and sid in [x["id"] for x in listed["sessions"]]

        # Malformed calls get gRPC errors, and the link survives them.
        r = peer.unary("/relay.v1.Controller/Nope", b"").check()
        assert r.status == gp.GRPC_UNIMPLEMENTED, r.headers
        compressed = b"\x01" + gp.grpc_frame(b"")[1:]
        r = peer.unary(gp.PATH_VALIDATE, None, raw_body=compressed).check()
        assert r.status == gp.GRPC_INVALID_ARGUMENT, (r.headers, r.trailers)
        two = gp.grpc_frame(b"") * 2
        r = peer.unary(gp.PATH_VALIDATE, None, raw_body=two).check()
        assert r.status == gp.GRPC_INVALID_ARGUMENT, (r.headers, r.trailers)

        # HTTP/2 PING is answered.
        peer.ping()
        peer.pump(lambda: peer.pings_acked >= 1, what="PING ack")

        # Admin DELETE: 204, and a Kick comes down the Events stream.
        r = _admin(peer, {"op": gp.OP_DELETE, "session_id": sid, "auth_disabled": True})
        deleted = r.decode("AdminResponse")
        assert deleted["http_status"] == 204 and deleted["error"] == "", deleted
        cmd = peer.next_message(events, "ControllerCommand", pred=lambda m: m["kick"])
        assert cmd["kick"]["session_id"] == sid and cmd["kick"]["close_code"] == 1001, cmd
        # Events DATA carried nothing but well-framed messages (deframe checks).
        assert all(len(m) > 0 for m in events.messages())
        r = _admin(peer, {"op": gp.OP_GET, "session_id": sid, "auth_disabled": True}).check()
        assert r.trailers_only and r.status == gp.GRPC_NOT_FOUND
        assert not events.ended, "the Events stream must stay open"
    finally:
        peer.close()
    ctl.wait_for_log(msg="relay link down", relay="py-relay")
    for line in ctl.lines:  # tokens are secrets: never logged
        assert cs["initiator_token"] not in line and cs["responder_token"] not in line


# --------------------------------------------------------------------------
# (b) relay -> Python controller impostor
# --------------------------------------------------------------------------

def _dial_relay(pki, port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_crt)  # verifies the relay's enrolled cert, IP SAN
    ctx.load_cert_chain(pki.ctl_crt, pki.ctl_key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=relaytest.TIMEOUT)
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert tls.selected_alpn_protocol() == "h2"
    assert tls.version() == "TLSv1.3"
    return tls


def _ws_request(path, token, key):
    return relaytest.http_request("GET", path, headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"), ("Authorization", "Bearer " + token)])


def _read_ws_frame(reader, deadline):
    b0, b1 = reader.read_exact(2, deadline)
    n = b1 & 0x7F
    assert not b1 & 0x80, "server frames are never masked"
    if n == 126:
        n = struct.unpack(">H", reader.read_exact(2, deadline))[0]
    elif n == 127:
        n = struct.unpack(">Q", reader.read_exact(8, deadline))[0]
    return b0 & 0x0F, reader.read_exact(n, deadline)


def _upgrade(relay, peer, sid, token, answer):
    """Sends a WebSocket upgrade, checks the Validate call it causes, lets
    answer(peer, stream) reply, and returns (response, reader, socket)."""
    s = relay.connect()
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(_ws_request("/relay/%s?role=initiator" % sid, token, key))
    req = peer.next_request(gp.PATH_VALIDATE)
    gp.check_grpc_request(req, gp.PATH_VALIDATE)
    tmo = req.headers["grpc-timeout"]
    assert tmo.endswith("m") and 1000 < int(tmo[:-1]) <= 5000, tmo  # --call-timeout 5s
    msgs = req.messages()
    assert len(msgs) == 1, msgs
    q = gp.pb_decode("SlotRequest", msgs[0])
    assert q["session_id"] == sid and q["token"] == token, q
    assert q["relay_node_id"] == "relay-interop", q
    assert q["requested_role"] == gp.ROLE_INITIATOR, q
    assert q["remote_addr"].startswith("127.0.0.1:"), q
    answer(peer, req)
    reader = relaytest.Reader(s)
    resp = reader.read_response()
    if resp.status == 101:
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        assert resp.header("Sec-WebSocket-Accept") == accept, resp
    return resp, reader, s


def test_relay_calls_python_controller(tmp_path, start_relay):
    pki = gp.Pki(tmp_path)
    relay = gp.start_remote_relay(start_relay, pki, "relay-interop",
                                  extra=["--public-url", "ws://relay-interop.example"])
    assert relay.get("/readyz").status == 503
    peer = gp.H2Peer(_dial_relay(pki, relay.tunnel_port), client_side=False)
    try:
        # The relay opens Events at once and says Hello.
        events = peer.next_request(gp.PATH_EVENTS, complete=False)
        gp.check_grpc_request(events, gp.PATH_EVENTS)
        peer.send_response_headers(events.sid)
        hello = peer.next_message(events, "RelayEvent", pred=lambda m: m["hello"])["hello"]
        assert hello["node_id"] == "relay-interop", hello
        assert hello["public_url"] == "ws://relay-interop.example", hello
        assert hello["version"], hello
        gp.wait_ready(relay)
        relay.wait_for_log(msg="controller link up")
        assert gp.metrics(relay)["relay_controller_links"] == 1

        # Validate answered allow: the upgrade completes (101).
        sid, tok = gp.token22(), gp.token22()
        expires = int(time.time()) + 600
        allow = gp.pb_encode("SlotDecision", {
            "allow": True, "slot": gp.ROLE_INITIATOR, "http_status": 200,
            "expires_at_unix": expires, "peer_wait_seconds": 30})
        resp, reader, ws = _upgrade(relay, peer, sid, tok,
                                    lambda p, req: p.reply_unary(req.sid, allow))
        assert resp.status == 101, resp
        att = peer.next_message(events, "RelayEvent", pred=lambda m: m["session"] and
                                m["session"]["type"] == gp.EV_ATTACH)["session"]
        assert att["session_id"] == sid and att["role"] == gp.ROLE_INITIATOR, att

        # A Kick pushed down Events closes the peer with the code we chose.
        peer.send_message(events.sid, gp.pb_encode("ControllerCommand", {"kick": {
            "session_id": sid, "close_code": 1001, "reason": "interop kick"}}))
        op, payload = _read_ws_frame(reader, time.monotonic() + relaytest.TIMEOUT)
        assert op == 8 and struct.unpack(">H", payload[:2])[0] == 1001, (op, payload)
        ws.close()
        gone = peer.next_message(events, "RelayEvent", pred=lambda m: m["session"] and
                                 m["session"]["type"] in (gp.EV_DETACH, gp.EV_CLOSE))["session"]
        assert gone["session_id"] == sid, gone
        relay.wait_for_log(msg="session kicked", session=sid)

        # Refusals the controller decides come back as HTTP statuses.
        deny = gp.pb_encode("SlotDecision", {"allow": False, "http_status": 409,
                                             "reason": "slot_taken", "message": "taken"})
        resp, _, s = _upgrade(relay, peer, sid, tok, lambda p, req: p.reply_unary(req.sid, deny))
        s.close()
        assert resp.status == 409 and resp.json()["error"] == "slot_taken", resp
        resp, _, s = _upgrade(relay, peer, gp.token22(), tok,
                              lambda p, req: p.reply_status(req.sid, gp.GRPC_NOT_FOUND, "no"))
        s.close()
        assert resp.status == 404, resp
        resp, _, s = _upgrade(relay, peer, sid, tok,
                              lambda p, req: p.reply_status(req.sid, gp.GRPC_UNAVAILABLE, "x"))
        s.close()
        assert resp.status == 503, resp

        # Bad framing is refused, never trusted: a compressed flag ...
        def compressed(p, req):
            p.send_response_headers(req.sid)
            p.conn.send_data(req.sid, b"\x01" + gp.grpc_frame(allow)[1:])
            p.conn.send_headers(req.sid, [("grpc-status", "0")], end_stream=True)
            p.flush()
        resp, _, s = _upgrade(relay, peer, sid, tok, compressed)
        s.close()
        assert resp.status == 502 and resp.json()["error"] == "bad_controller_answer", resp
        relay.wait_for_log(msg="validate failed", message="malformed response")

        # ... and a message with no grpc-status trailer.
        def no_status(p, req):
            p.send_response_headers(req.sid)
            p.conn.send_data(req.sid, gp.grpc_frame(allow), end_stream=True)
            p.flush()
        resp, _, s = _upgrade(relay, peer, sid, tok, no_status)
        s.close()
        assert resp.status == 502 and resp.json()["error"] == "bad_controller_answer", resp
        relay.wait_for_log(msg="validate failed", message="response without grpc-status")

        # Admin: the relay forwards POST /admin/sessions and renders our answer.
        s = relay.connect()
        s.sendall(relaytest.http_request("POST", "/admin/sessions", headers=[
            ("Content-Type", "application/json"), ("Connection", "close")],
            body=b'{"ttl_seconds": 120, "peer_wait_seconds": 15}'))
        req = peer.next_request(gp.PATH_ADMIN)
        gp.check_grpc_request(req, gp.PATH_ADMIN)
        q = gp.pb_decode("AdminRequest", req.messages()[0])
        assert q["op"] == gp.OP_CREATE and q["auth_disabled"], q
        assert q["ttl_seconds"] == 120 and q["peer_wait_seconds"] == 15, q
        assert q["relay_node_id"] == "relay-interop", q
        new_id, it, rt = gp.token22(), gp.token22(), gp.token22()
        now = int(time.time())
        peer.reply_unary(req.sid, gp.pb_encode("AdminResponse", {
            "http_status": 201, "created": {
                "status": {"id": new_id, "state": "pending", "created_at_unix": now,
                           "expires_at_unix": now + 120},
                "initiator_token": it, "responder_token": rt,
                "initiator_url": "ws://relay-interop.example/relay/" + new_id,
                "responder_url": "ws://relay-interop.example/relay/" + new_id}}))
        resp = relaytest.read_response(s)
        s.close()
        assert resp.status == 201, resp
        body = resp.json()
        assert (body["id"], body["initiator_token"], body["responder_token"]) == (new_id, it, rt)
        assert body["initiator_url"] == "ws://relay-interop.example/relay/" + new_id

        # A token no upgrade could present is a bad answer, not JSON to escape.
        s = relay.connect()
        s.sendall(relaytest.http_request("POST", "/admin/sessions", headers=[
            ("Content-Type", "application/json"), ("Connection", "close")], body=b"{}"))
        req = peer.next_request(gp.PATH_ADMIN)
        peer.reply_unary(req.sid, gp.pb_encode("AdminResponse", {
            "http_status": 201, "created": {
                "status": {"id": gp.token22(), "state": "pending"},
                "initiator_token": 'in"jected', "responder_token": gp.token22()}}))
        resp = relaytest.read_response(s)
        s.close()
        relaytest.assert_error_body(resp, 502, "bad_controller_answer")

        # The relay keeps the link alive with PINGs we answer (h2 acks them).
        assert not peer.closed and not events.ended
    finally:
        peer.close()
    relay.wait_for_log(msg="controller link down")
    gp.wait_ready(relay, want=503)


# --------------------------------------------------------------------------
# Two links from one relay (same node id): one dropping must not mark it dead
# --------------------------------------------------------------------------

def _impostor_link(lsock, ctx, node, public_url):
    peer = gp.H2Peer(gp.accept_controller(lsock, ctx), client_side=True)
    sid = peer.open_stream(gp.PATH_EVENTS, timeout_header=None)
    peer.send_message(sid, gp.pb_encode("RelayEvent", {"hello": {
        "node_id": node, "version": "interop/1", "public_url": public_url}}))
    peer.pump(lambda: peer.streams[sid].headers.get(":status") == "200", what="Events headers")
    return peer, sid


def test_controller_keeps_relay_live_while_a_link_remains(tmp_path, start_controller):
    """A relay the controller reaches by two addresses has two links; when
    one drops, the relay is still live: its attached slots stay taken and
    its sessions are not handed to another relay."""
    pki = gp.Pki(tmp_path)
    crt, key = pki.relay("twin")
    ctx = gp.relay_impostor_context(pki, crt, key)
    socks = []
    for _ in range(2):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        socks.append(ls)
    ctl = start_controller(["run", "--ca-dir", pki.ca_dir, "--accept-unauthenticated",
                            "--log-level", "debug"]
                           + sum([["--relay", "127.0.0.1:%d" % s.getsockname()[1]]
                                  for s in socks], []))
    url = "wss://twin.example"
    one, ev1 = _impostor_link(socks[0], ctx, "twin", url)
    two, _ = _impostor_link(socks[1], ctx, "twin", url)
    for s in socks:
        s.close()  # redials after the drop below are refused
    try:
        ctl.wait_for_log(msg="relay link up", relay="twin", links=2)
        created = _admin(one, {"op": gp.OP_CREATE, "auth_disabled": True,
                               "relay_node_id": "twin"}).decode("AdminResponse")["created"]
        sid = created["status"]["id"]
        one.send_message(ev1, gp.pb_encode("RelayEvent", {"session": {
            "type": gp.EV_ATTACH, "session_id": sid, "role": gp.ROLE_INITIATOR}}))
        st = _admin(one, {"op": gp.OP_GET, "session_id": sid, "auth_disabled": True})
        assert st.decode("AdminResponse")["sessions"][0]["initiator_connected"]

        two.close()
        ctl.wait_for_log(msg="relay link down", relay="twin", links=1)
        st = _admin(one, {"op": gp.OP_GET, "session_id": sid, "auth_disabled": True})
        s1 = st.decode("AdminResponse")["sessions"][0]
        assert s1["initiator_connected"] and s1["relay_node_id"] == "twin", s1
        d = _validate(one, {"session_id": sid, "token": created["responder_token"],
                            "relay_node_id": "elsewhere"}).decode("SlotDecision")
        assert not d["allow"] and d["http_status"] == 421 and d["reason"] == "wrong_relay", d
        d = _validate(one, {"session_id": sid, "token": created["initiator_token"],
                            "relay_node_id": "twin"}).decode("SlotDecision")
        assert not d["allow"] and d["http_status"] == 409, d
    finally:
        one.close()
        two.close()
    # With the last link gone the relay is down: its slots free up.
    ctl.wait_for_log(msg="relay link down", relay="twin", links=0)


# --------------------------------------------------------------------------
# GOAWAY from a controller: finish what was accepted, start nothing new
# --------------------------------------------------------------------------

def test_relay_honours_controller_goaway(tmp_path, start_relay):
    from hyperframe.frame import GoAwayFrame

    pki = gp.Pki(tmp_path)
    relay = gp.start_remote_relay(start_relay, pki, "relay-interop")
    peer = gp.H2Peer(_dial_relay(pki, relay.tunnel_port), client_side=False)
    try:
        events = peer.next_request(gp.PATH_EVENTS, complete=False)
        peer.send_response_headers(events.sid)
        peer.next_message(events, "RelayEvent", pred=lambda m: m["hello"])
        gp.wait_ready(relay)
        # A Validate in flight ...
        sid, tok = gp.token22(), gp.token22()
        key = base64.b64encode(os.urandom(16)).decode()
        s = relay.connect()
        s.sendall(_ws_request("/relay/%s?role=initiator" % sid, tok, key))
        req = peer.next_request(gp.PATH_VALIDATE)
        # ... then GOAWAY (written raw: h2 would stop us answering after it)
        # naming that call's stream as the last one we process.
        f = GoAwayFrame(0)
        f.last_stream_id = req.sid
        f.error_code = 0
        peer.sock.sendall(f.serialize())
        relay.wait_for_log(msg="controller sent GOAWAY")
        gp.wait_ready(relay, want=503)
        assert gp.metrics(relay)["relay_controller_links"] == 0
        # New calls are not started on the leaving link: 503 at once.
        t0 = time.monotonic()
        s2 = relay.connect()
        s2.sendall(_ws_request("/relay/%s?role=responder" % sid, gp.token22(), key))
        resp = relaytest.read_response(s2)
        s2.close()
        assert resp.status == 503 and time.monotonic() - t0 < 1.0, resp
        assert resp.json()["error"] == "controller_unavailable", resp
        assert not peer.requests, "a call reached a controller that said GOAWAY"
        # The call accepted before GOAWAY still completes.
        peer.reply_unary(req.sid, gp.pb_encode("SlotDecision", {
            "allow": True, "slot": gp.ROLE_INITIATOR, "http_status": 200,
            "expires_at_unix": int(time.time()) + 60, "peer_wait_seconds": 5}))
        resp = relaytest.Reader(s).read_response()
        assert resp.status == 101, resp
        s.close()
    finally:
        peer.close()
