"""Connection limits: --max-conns-per-ip answers 429 (and keeps counting a
connection after it becomes a WebSocket peer), --max-connections refuses
outright, and an embedded controller is linked before the first accept."""

import time

import relaytest
import wsraw


def status_line(sock):
    return relaytest.read_response(sock).status


def get_on(sock, path="/healthz"):
    sock.sendall(relaytest.http_request("GET", path))
    return relaytest.read_response(sock)


def test_per_ip_limit_counts_http_and_peers():
    with relaytest.Relay(plain=True, extra=["--max-conns-per-ip", "3"]) as relay:
        admin = wsraw.Admin(relay)            # connection 1 (keep-alive)
        sess = admin.create()
        a = wsraw.open_peer(relay, sess["id"], sess["initiator_token"])   # 2
        b = wsraw.open_peer(relay, sess["id"], sess["responder_token"])   # 3
        a.send_message(b"x" * 10)
        assert b.recv_message() == (2, b"x" * 10)  # binary
        # A fourth connection from 127.0.0.1 is over the limit.
        c = relay.connect()
        r = get_on(c)
        assert r.status == 429
        relaytest.assert_error_body(r, 429, "too_many_connections")
        assert r.header("Retry-After") == "1"
        assert relaytest.recv_until_closed(c)[0] == b""
        # A peer leaving gives its count back.
        a.close()
        b.expect_close()
        deadline = time.time() + relaytest.TIMEOUT
        while True:
            c = relay.connect()
            r = get_on(c)
            c.close()
            if r.status == 200 or time.time() > deadline:
                break
            time.sleep(0.05)
        assert r.status == 200
        admin.close()
        relay.stop()


def test_max_connections_refuses():
    with relaytest.Relay(plain=True, extra=["--max-connections", "2"]) as relay:
        s1, s2 = relay.connect(), relay.connect()
        assert get_on(s1).status == 200
        assert get_on(s2).status == 200
        # Over the global limit the connection is reset without a reply
        # (the reset may already hit the connect).
        try:
            s3 = relay.connect()
            s3.sendall(relaytest.http_request("GET", "/healthz"))
            got = relaytest.recv_until_closed(s3)[0]
            s3.close()
        except ConnectionError:
            got = b""
        assert got == b""
        for s in (s1, s2):
            s.close()
        relay.wait_for_log(msg="connection limit reached; refusing")
        relay.stop()


def test_embedded_controller_linked_before_listening():
    with relaytest.Relay(plain=True) as relay:
        # The "listening" line comes only after the in-process link is up:
        # the very first request is ready, not a start-up 503.
        lines = list(relay.logs)
        up = [i for i, l in enumerate(lines) if l.get("msg") == "controller link up"]
        lis = [i for i, l in enumerate(lines) if l.get("msg") == "listening"]
        assert up and lis and up[0] < lis[0]
        s = relay.connect()
        assert get_on(s, "/readyz").status == 200
        s.close()
        relay.stop()
