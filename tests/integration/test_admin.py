"""The public admin API (/admin/sessions), CORS, readiness and --no-auth,
driven by curl (the independent client) with exact statuses and bodies.
Tokens come from the test IdP (idp.py); live peers are python websockets
clients, so a DELETE is seen to close them with 1001.  The 503 cases run a
relay that waits for a remote controller nobody starts.
"""

import asyncio
import calendar
import hashlib
import json
import os
import re
import ssl
import time

import pytest
import websockets

import idp as idpmod
import relaytest
from idp import bearer_challenge, curl_http

AUDIENCE = "relay-admin-test"
CREATE, READ, DELETE = "swsrs:session:create", "swsrs:session:read", "swsrs:session:delete"
ALL = " ".join((CREATE, READ, DELETE))
PUBLIC_URL = "wss://relay.example.test:8443"
MAX_TTL, MAX_PEER_WAIT = 7200, 600  # --max-ttl 2h, --max-peer-wait 10m
CORS = ["https://app.example.org", "https://*.example.com", "http://localhost:*"]

ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CREATED_FIELDS = {"id", "initiator_token", "responder_token", "initiator_url",
                  "responder_url", "created_at", "expires_at"}
STATUS_FIELDS = {"id", "state", "created_at", "expires_at", "last_activity", "bytes_in",
                 "bytes_out", "initiator_connected", "responder_connected"}


def ts(text):
    assert TIME_RE.match(text), text
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


class Env:
    def __init__(self, certs):
        self.certs = certs
        self.idp = idpmod.IdP(certs)
        self.key = self.idp.add_key("ES256")
        extra = ["--oidc-issuer", self.idp.issuer, "--oidc-audience", AUDIENCE,
                 "--oidc-ca", self.idp.ca_file, "--public-url", PUBLIC_URL + "/",
                 "--max-ttl", "%ds" % MAX_TTL, "--max-peer-wait", "%ds" % MAX_PEER_WAIT]
        for o in CORS:
            extra += ["--cors-origin", o]
        self.relay = relaytest.Relay(certs=certs, no_auth=False, extra=extra)
        try:
            self.relay.wait_for_log(msg="JWKS loaded")
            self.relay.wait_for_log(msg="controller link up")
        except Exception:
            self.relay.kill()
            self.idp.close()
            raise

    def token(self, scope=ALL):
        return self.idp.token(self.key, AUDIENCE, scope=scope)

    def call(self, method, path, scope=ALL, body=None, ctype="application/json",
             headers=()):
        h = list(headers)
        if scope is not None:
            h.append(("Authorization", "Bearer " + self.token(scope)))
        if body is not None and ctype is not None:
            h.append(("Content-Type", ctype))
        return curl_http(self.relay.url(path), method, headers=h, body=body,
                         cacert=self.certs.ca_crt)

    def create(self, body=None, **kw):
        resp = self.call("POST", "/admin/sessions", body=body, **kw)
        assert resp.status == 201, resp
        return resp.json()

    def close(self):
        try:
            self.relay.stop()
        finally:
            self.relay.kill()
            self.idp.close()


@pytest.fixture(scope="module")
def env(certs):
    e = Env(certs)
    yield e
    e.close()


# ---- create ------------------------------------------------------------------------

def test_create_exact_body(env):
    t0 = int(time.time())
    resp = env.call("POST", "/admin/sessions")
    assert resp.status == 201, resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp
    assert resp.header("Cache-Control") == "no-store", resp  # it carries tokens
    body = resp.json()
    assert set(body) == CREATED_FIELDS, body
    assert all(isinstance(v, str) for v in body.values()), body
    for k in ("id", "initiator_token", "responder_token"):
        assert ID_RE.match(body[k]), (k, body[k])
    assert len({body["id"], body["initiator_token"], body["responder_token"]}) == 3
    assert body["initiator_url"] == body["responder_url"] == \
        "%s/relay/%s" % (PUBLIC_URL, body["id"])
    created, expires = ts(body["created_at"]), ts(body["expires_at"])
    assert t0 - 5 <= created <= time.time() + 5
    assert expires - created == 3600  # default TTL
    assert resp.header("Location") == "/admin/sessions/" + body["id"], resp
    # Slot tokens never reach the log.
    assert body["initiator_token"] not in env.relay.stderr
    assert body["responder_token"] not in env.relay.stderr


def test_create_options_reflected(env):
    body = env.create(json.dumps({"ttl_seconds": 120, "peer_wait_seconds": 30}))
    assert ts(body["expires_at"]) - ts(body["created_at"]) == 120
    got = env.call("GET", "/admin/sessions/" + body["id"])
    assert got.status == 200, got
    assert got.json()["expires_at"] == body["expires_at"]
    # Exactly at the maxima is fine; the charset parameter is fine.
    body = env.create(json.dumps({"ttl_seconds": MAX_TTL, "peer_wait_seconds": MAX_PEER_WAIT}),
                      ctype="application/json; charset=utf-8")
    assert ts(body["expires_at"]) - ts(body["created_at"]) == MAX_TTL
    # null means "default".
    body = env.create(json.dumps({"ttl_seconds": None}))
    assert ts(body["expires_at"]) - ts(body["created_at"]) == 3600


@pytest.mark.parametrize("payload,ctype,status", [
    ({"ttl_seconds": MAX_TTL + 1}, "application/json", 400),
    ({"peer_wait_seconds": MAX_PEER_WAIT + 1}, "application/json", 400),
    ({"ttl_seconds": 0}, "application/json", 400),
    ({"ttl_seconds": -5}, "application/json", 400),
    ({"ttl_seconds": "60"}, "application/json", 400),
    ({"ttl_seconds": 1.5}, "application/json", 400),
    ({"ttl_seconds": 2 ** 40}, "application/json", 400),
    ([60], "application/json", 400),
    ("{\"ttl_seconds\": 60", "application/json", 400),      # malformed JSON
    ("{\"ttl_seconds\": 60, \"ttl_seconds\": 61}", "application/json", 400),  # duplicate
    ({"ttl_seconds": 60}, "text/plain", 415),
    ({"ttl_seconds": 60}, "application/x-www-form-urlencoded", 415),
    ({"ttl_seconds": 60}, "application/jsonp", 415),
    ({"ttl_seconds": 60}, None, 415),                        # curl's default form type
])
def test_create_bad_bodies(env, payload, ctype, status):
    before = len(env.call("GET", "/admin/sessions").json()["sessions"])
    text = payload if isinstance(payload, str) else json.dumps(payload)
    resp = env.call("POST", "/admin/sessions", body=text, ctype=ctype)
    relaytest.assert_error_body(resp, status)
    assert len(env.call("GET", "/admin/sessions").json()["sessions"]) == before


# ---- list, get, delete ------------------------------------------------------------------

def check_status(st, sid=None):
    assert set(st) == STATUS_FIELDS, st
    if sid:
        assert st["id"] == sid
    assert st["state"] in ("pending", "half_open", "open", "closed"), st
    for k in ("created_at", "expires_at"):
        ts(st[k])
    assert st["last_activity"] is None or ts(st["last_activity"])
    for k in ("bytes_in", "bytes_out"):
        assert isinstance(st[k], int) and not isinstance(st[k], bool) and st[k] >= 0, st
    for k in ("initiator_connected", "responder_connected"):
        assert isinstance(st[k], bool), st


def test_list_get_delete(env):
    a, b = env.create(), env.create(json.dumps({"ttl_seconds": 300}))
    resp = env.call("GET", "/admin/sessions")
    assert resp.status == 200, resp
    doc = resp.json()
    assert list(doc) == ["sessions"], doc
    by_id = {s["id"]: s for s in doc["sessions"]}
    for s in doc["sessions"]:
        check_status(s)
    assert a["id"] in by_id and b["id"] in by_id
    assert by_id[b["id"]]["expires_at"] == b["expires_at"]

    resp = env.call("GET", "/admin/sessions/" + a["id"])
    assert resp.status == 200, resp
    st = resp.json()
    check_status(st, a["id"])
    assert st["state"] == "pending" and st["created_at"] == a["created_at"]
    assert st["bytes_in"] == st["bytes_out"] == 0
    assert st["initiator_connected"] is False and st["responder_connected"] is False
    assert "initiator_token" not in st and "responder_token" not in st

    for missing in ("A" * 22, "no-such-session"):
        relaytest.assert_error_body(env.call("GET", "/admin/sessions/" + missing), 404)
        relaytest.assert_error_body(env.call("DELETE", "/admin/sessions/" + missing), 404)

    resp = env.call("DELETE", "/admin/sessions/" + a["id"])
    assert resp.status == 204 and resp.body == b"", resp
    relaytest.assert_error_body(env.call("GET", "/admin/sessions/" + a["id"]), 404)
    relaytest.assert_error_body(env.call("DELETE", "/admin/sessions/" + a["id"]), 404)
    ids = {s["id"] for s in env.call("GET", "/admin/sessions").json()["sessions"]}
    assert a["id"] not in ids and b["id"] in ids


def test_scopes(env):
    s = env.create(scope=CREATE)
    path = "/admin/sessions/" + s["id"]

    def refused(resp):
        relaytest.assert_error_body(resp, 403, "insufficient_scope")
        assert bearer_challenge(resp).get("error") == "insufficient_scope", resp

    # read only: list and get, nothing else
    assert env.call("GET", "/admin/sessions", scope=READ).status == 200
    assert env.call("GET", path, scope=READ).status == 200
    refused(env.call("POST", "/admin/sessions", scope=READ))
    refused(env.call("DELETE", path, scope=READ))
    # create only
    refused(env.call("GET", "/admin/sessions", scope=CREATE))
    refused(env.call("GET", path, scope=CREATE))
    refused(env.call("DELETE", path, scope=CREATE))
    # delete only
    refused(env.call("GET", "/admin/sessions", scope=DELETE))
    refused(env.call("GET", path, scope=DELETE))
    assert env.call("GET", path, scope=READ).status == 200  # still there
    assert env.call("DELETE", path, scope=DELETE).status == 204
    assert env.call("GET", path, scope=READ).status == 404
    # no token at all
    resp = env.call("GET", "/admin/sessions", scope=None)
    relaytest.assert_error_body(resp, 401)
    assert (resp.header("WWW-Authenticate") or "").startswith("Bearer"), resp


def test_method_not_allowed(env):
    resp = env.call("PUT", "/admin/sessions", body="{}")
    relaytest.assert_error_body(resp, 405)
    assert set(re.split(r",\s*", resp.header("Allow"))) == {"GET", "POST", "OPTIONS"}, resp
    resp = env.call("PATCH", "/admin/sessions/" + "A" * 22, body="{}")
    relaytest.assert_error_body(resp, 405)
    assert set(re.split(r",\s*", resp.header("Allow"))) == {"GET", "DELETE", "OPTIONS"}, resp


# ---- DELETE closes live peers ---------------------------------------------------------------

def ws_ssl(certs):
    ctx = ssl.create_default_context(cafile=certs.ca_crt)
    return ctx


async def _peers_then_delete(env, s):
    url = "wss://127.0.0.1:%d/relay/%s" % (env.relay.port, s["id"])
    kw = dict(ssl=ws_ssl(env.certs), open_timeout=relaytest.TIMEOUT, close_timeout=5,
              max_size=None)
    a = await websockets.connect(url, extra_headers=[
        ("Authorization", "Bearer " + s["initiator_token"])], **kw)
    b = await websockets.connect(url + "?token=" + s["responder_token"], **kw)
    try:
        payload = os.urandom(100000)
        await a.send(payload)
        got = await asyncio.wait_for(b.recv(), relaytest.TIMEOUT)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        await b.send("pong from responder")
        assert await asyncio.wait_for(a.recv(), relaytest.TIMEOUT) == "pong from responder"

        # The controller learns about the peers from events: poll its view.
        deadline = time.monotonic() + relaytest.TIMEOUT
        while True:
            st = (await asyncio.to_thread(
                env.call, "GET", "/admin/sessions/" + s["id"])).json()
            if st["state"] == "open" and st["initiator_connected"] and st["responder_connected"]:
                break
            assert time.monotonic() < deadline, st
            await asyncio.sleep(0.1)
        check_status(st, s["id"])

        resp = await asyncio.to_thread(env.call, "DELETE", "/admin/sessions/" + s["id"])
        assert resp.status == 204, resp
        for ws in (a, b):
            await asyncio.wait_for(ws.wait_closed(), relaytest.TIMEOUT)
        return a.close_code, b.close_code
    finally:
        await a.close()
        await b.close()


def test_delete_closes_connected_peers_with_1001(env):
    s = env.create()
    codes = asyncio.run(_peers_then_delete(env, s))
    assert codes == (1001, 1001), codes
    relaytest.assert_error_body(env.call("GET", "/admin/sessions/" + s["id"]), 404)


async def _lone_peer_then_delete(env, s):
    url = "wss://127.0.0.1:%d/relay/%s" % (env.relay.port, s["id"])
    a = await websockets.connect(url, ssl=ws_ssl(env.certs), open_timeout=relaytest.TIMEOUT,
                                 subprotocols=["swsrs.token." + s["responder_token"]])
    try:
        resp = await asyncio.to_thread(env.call, "DELETE", "/admin/sessions/" + s["id"])
        assert resp.status == 204, resp
        await asyncio.wait_for(a.wait_closed(), relaytest.TIMEOUT)
        return a.close_code
    finally:
        await a.close()


def test_delete_closes_waiting_peer_with_1001(env):
    s = env.create()
    assert asyncio.run(_lone_peer_then_delete(env, s)) == 1001


# ---- CORS -------------------------------------------------------------------------------

def preflight(env, origin, path="/admin/sessions", method="POST"):
    return curl_http(env.relay.url(path), "OPTIONS", cacert=env.certs.ca_crt, headers=[
        ("Origin", origin), ("Access-Control-Request-Method", method),
        ("Access-Control-Request-Headers", "authorization, content-type")])


def vary_has_origin(resp):
    return any(k.lower() == "vary" and "origin" in v.lower() for k, v in resp.headers)


ALLOWED = ["https://app.example.org", "https://a.example.com", "https://a.b.example.com",
           "http://localhost:5173", "http://localhost:80", "http://localhost"]
REFUSED = ["https://example.com", "https://evil.com", "http://app.example.org",
           "https://app.example.org.evil.com", "https://app.example.org:8443",
           "http://a.example.com", "https://localhost:3000", "https://aexample.com",
           "http://localhost.evil.com:80", "null"]


@pytest.mark.parametrize("origin", ALLOWED)
def test_cors_preflight_allowed(env, origin):
    resp = preflight(env, origin)
    assert resp.status == 204 and resp.body == b"", resp
    assert resp.header("Access-Control-Allow-Origin") == origin, resp
    methods = set(re.split(r",\s*", resp.header("Access-Control-Allow-Methods")))
    assert {"GET", "POST"} <= methods, resp
    hdrs = {h.lower() for h in re.split(r",\s*", resp.header("Access-Control-Allow-Headers"))}
    assert {"authorization", "content-type"} <= hdrs, resp
    assert int(resp.header("Access-Control-Max-Age")) > 0, resp
    assert vary_has_origin(resp), resp
    one = preflight(env, origin, "/admin/sessions/" + "A" * 22, "DELETE")
    assert one.status == 204 and "DELETE" in one.header("Access-Control-Allow-Methods"), one


@pytest.mark.parametrize("origin", REFUSED)
def test_cors_preflight_refused(env, origin):
    resp = preflight(env, origin)
    relaytest.assert_error_body(resp, 403)
    assert resp.header("Access-Control-Allow-Origin") is None, resp
    assert vary_has_origin(resp), resp


def test_cors_simple_requests(env):
    for origin in ("https://app.example.org", "https://x.example.com", "http://localhost:1"):
        resp = env.call("GET", "/admin/sessions", headers=[("Origin", origin)])
        assert resp.status == 200, resp
        assert resp.header("Access-Control-Allow-Origin") == origin, resp
        assert vary_has_origin(resp), resp
        # A browser must be able to read a refusal too.
        resp = env.call("GET", "/admin/sessions", scope=None, headers=[("Origin", origin)])
        assert resp.status == 401 and resp.header("Access-Control-Allow-Origin") == origin, resp
        assert "WWW-Authenticate" in resp.header("Access-Control-Expose-Headers", ""), resp
    for origin in ("https://example.com", "https://evil.com"):
        resp = env.call("GET", "/admin/sessions", headers=[("Origin", origin)])
        assert resp.status == 200, resp  # answered; the browser withholds it
        assert resp.header("Access-Control-Allow-Origin") is None, resp
        assert vary_has_origin(resp), resp
    # Creation from an allowed origin carries the header as well.
    resp = env.call("POST", "/admin/sessions", headers=[("Origin", "https://a.example.com")])
    assert resp.status == 201 and \
        resp.header("Access-Control-Allow-Origin") == "https://a.example.com", resp


# ---- readiness ---------------------------------------------------------------------------------

def test_readyz_with_embedded_controller(env):
    resp = curl_http(env.relay.url("/readyz"), cacert=env.certs.ca_crt)
    assert resp.status == 200 and resp.body == b"ready", resp
    assert resp.header("Cache-Control") == "no-store", resp


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, certs):
    """A controller CA and a relay tunnel cert signed by it (the enrolment
    commands), for a relay that waits for a remote controller."""
    d = tmp_path_factory.mktemp("enrol")
    ca_dir = str(d / "ca")
    relaytest.run([relaytest.CONTROLLER_BIN, "init-ca", "--dir", ca_dir])
    key = str(d / "tunnel.key")
    csr = relaytest.run([relaytest.RELAY_BIN, "gen-csr", "--key", key, "--node-id", "adm-test"])
    crt = relaytest.run([relaytest.CONTROLLER_BIN, "sign-csr", "--dir", ca_dir,
                         "--host", "127.0.0.1"], input=csr.stdout)
    crt_path = str(d / "tunnel.crt")
    with open(crt_path, "wb") as f:
        f.write(crt.stdout)
    return {"ca": os.path.join(ca_dir, "ca.crt"), "crt": crt_path, "key": key,
            "ca_dir": ca_dir}


def test_no_controller_link_503(start_relay, start_controller, certs, enrolled):
    r = start_relay(extra=["--controller-ca", enrolled["ca"], "--tunnel-cert", enrolled["crt"],
                           "--tunnel-key", enrolled["key"], "--tunnel-listen", "127.0.0.1:0"])
    ready = curl_http(r.url("/readyz"), cacert=certs.ca_crt)
    relaytest.assert_error_body(ready, 503)
    assert curl_http(r.url("/healthz"), cacert=certs.ca_crt).status == 200  # alive, not ready
    for method, path, body in (("POST", "/admin/sessions", None),
                               ("POST", "/admin/sessions", '{"ttl_seconds": 60}'),
                               ("GET", "/admin/sessions", None),
                               ("GET", "/admin/sessions/" + "A" * 22, None),
                               ("DELETE", "/admin/sessions/" + "A" * 22, None)):
        t0 = time.monotonic()
        resp = curl_http(r.url(path), method, body=body, cacert=certs.ca_crt,
                         headers=[("Content-Type", "application/json")])
        relaytest.assert_error_body(resp, 503, "controller_unavailable")
        assert time.monotonic() - t0 < 3, "503 must come fast, not after a timeout"
    assert not r.find_logs(msg="controller link up")

    # A controller dials in: ready, and admin calls go through it.
    tport = r.wait_for_log(msg="listening for controllers")["port"]
    ctl = start_controller(["run", "--relay", "127.0.0.1:%d" % tport, "--ca-dir",
                            enrolled["ca_dir"], "--accept-unauthenticated",
                            "--log-level", "debug"])
    r.wait_for_log(msg="controller link up")
    assert curl_http(r.url("/readyz"), cacert=certs.ca_crt).status == 200
    resp = curl_http(r.url("/admin/sessions"), "POST", cacert=certs.ca_crt)
    assert resp.status == 201, resp
    sid = resp.json()["id"]
    got = curl_http(r.url("/admin/sessions/" + sid), cacert=certs.ca_crt)
    assert got.status == 200 and got.json()["id"] == sid, got
    # It goes away: not ready again, and admin calls fail fast with 503.
    ctl.stop()
    r.wait_for_log(msg="controller link down")
    relaytest.assert_error_body(curl_http(r.url("/readyz"), cacert=certs.ca_crt), 503)
    relaytest.assert_error_body(curl_http(r.url("/admin/sessions/" + sid), cacert=certs.ca_crt),
                                503, "controller_unavailable")


# ---- --no-auth ------------------------------------------------------------------------------

def test_no_auth_open_on_loopback(start_relay, certs):
    r = start_relay()  # relaytest passes --no-auth on 127.0.0.1
    warn = r.wait_for_log(msg="admin API has NO authentication (--no-auth)")
    assert warn["level"] == "warn", warn
    r.wait_for_log(msg="controller link up")
    resp = curl_http(r.url("/admin/sessions"), "POST", cacert=certs.ca_crt)
    assert resp.status == 201 and set(resp.json()) == CREATED_FIELDS, resp
    sid = resp.json()["id"]
    listed = curl_http(r.url("/admin/sessions"), cacert=certs.ca_crt)
    assert listed.status == 200 and sid in {s["id"] for s in listed.json()["sessions"]}, listed
    assert curl_http(r.url("/admin/sessions/" + sid), "DELETE", cacert=certs.ca_crt).status == 204
    d = curl_http(r.url("/.well-known/swsrs-config"), cacert=certs.ca_crt)
    body = relaytest.assert_error_body(d, 404, "auth_disabled")
    assert "auth" in body["message"].lower(), body


def test_no_auth_refused_on_public_address():
    p = relaytest.LoggedProcess([relaytest.RELAY_BIN, "serve", "--no-auth", "--plain",
                                 "--allow-public-plain", "--listen", "0.0.0.0:0"])
    try:
        assert p.wait() == 1, p.describe()
        assert not p.find_logs(msg="listening")
        err = p.stderr
        assert "no-auth" in err and "--allow-public-no-auth" in err, err
        assert "non-loopback" in err, err
        p.check_sanitizers()
    finally:
        p.kill()


def test_no_auth_public_with_explicit_override(start_relay):
    r = start_relay(plain=True, extra=["--listen", "0.0.0.0:0", "--allow-public-plain",
                                       "--allow-public-no-auth"])
    assert r.listening["addr"] == "0.0.0.0:0", r.listening
    r.wait_for_log(msg="admin API has NO authentication (--no-auth)")
    r.wait_for_log(msg="controller link up")
    resp = curl_http("http://127.0.0.1:%d/admin/sessions" % r.port, "POST")
    assert resp.status == 201, resp
