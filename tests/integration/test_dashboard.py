"""The operator's dashboard at /dashboard (issue 13, point 4).

The page is driven in headless Chromium (Debian's chromium, over the
DevTools protocol: browser.py) as an operator would use it, against real
relays: one with --no-auth and the embedded controller (sessions listed,
their state changing live as peers join, the delete button closing the
peers with 1001), one linked to a stock gRPC controller that hands out
hostile session ids, states and refusal messages (all rendered as text),
and one behind OIDC where the page signs in with the authorization-code
flow and PKCE at the test IdP (idp.py), or takes a pasted token.  The
files themselves, their headers (a strict CSP) and /admin/metrics are
checked with curl.  A screenshot of each page is kept as a test artefact
in the build directory (test-artifacts/).
"""

import hashlib
import os
import re
import time

import pytest

import browser as br
import grpcioctl as gi
import grpcpeer as gp
import idp as idpmod
import relaytest
import wsraw

T = relaytest.TIMEOUT
HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD_DIR = os.path.join(HERE, "..", "..", "relay", "dashboard")
ARTEFACTS = os.path.join(relaytest.BUILD_DIR, "test-artifacts")
AUDIENCE = "relay-dashboard-test"
CLIENT_ID = "relay-dashboard"
READ, DELETE, CREATE = "swsrs:session:read", "swsrs:session:delete", "swsrs:session:create"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

pytestmark = pytest.mark.skipif(not relaytest.which("chromium"),
                                reason="needs Debian's chromium (./dev test installs it)")


def artefact(name):
    os.makedirs(ARTEFACTS, exist_ok=True)
    return os.path.join(ARTEFACTS, name)


@pytest.fixture(scope="module")
def idp(certs):
    with idpmod.IdP(certs) as p:
        p.add_key("ES256")
        p.audience = AUDIENCE
        p.clients[CLIENT_ID] = None  # a public client: PKCE instead of a secret
        yield p


@pytest.fixture(scope="module")
def chromium(tmp_path_factory, certs, idp):
    with br.Browser(tmp_path_factory.mktemp("chromium"),
                    trust=[certs.server_crt, certs.path("idp.crt")]) as b:
        yield b


@pytest.fixture
def page(chromium):
    p = chromium.page()
    yield p
    p.close()


def oidc_relay(start_relay, idp, extra=()):
    r = start_relay(no_auth=False, extra=[
        "--oidc-issuer", idp.issuer, "--oidc-audience", AUDIENCE, "--oidc-ca", idp.ca_file,
        "--client-id-hint", CLIENT_ID] + list(extra))
    r.wait_for_log(msg="JWKS loaded")
    r.wait_for_log(msg="controller link up")
    return r


def curl(relay, path, certs, method="GET", token=None):
    h = [("Authorization", "Bearer " + token)] if token else []
    return idpmod.curl_http(relay.url(path), method, headers=h, cacert=certs.ca_crt)


def head(relay, path):
    sock = relay.connect()
    try:
        sock.sendall(relaytest.http_request("HEAD", path, headers=[("Connection", "close")]))
        return relaytest.read_response(sock, head_request=True)
    finally:
        sock.close()


# ---- the files, their headers, /admin/metrics ---------------------------------------------

def csp_directives(resp):
    csp = resp.header("Content-Security-Policy")
    assert csp, resp
    return {d.split()[0]: d.split()[1:] for d in (x.strip() for x in csp.split(";")) if d}


def test_files_headers_and_admin_metrics(start_relay, certs, idp):
    relay = oidc_relay(start_relay, idp, extra=["--metrics", "off"])
    files = {"/dashboard": ("index.html", "text/html"),
             "/dashboard/app.js": ("app.js", "text/javascript"),
             "/dashboard/style.css": ("style.css", "text/css"),
             "/dashboard/icon.svg": ("icon.svg", "image/svg+xml")}
    for path, (name, ctype) in files.items():
        r = curl(relay, path, certs)
        assert r.status == 200, (path, r)
        assert r.header("Content-Type").split(";")[0] == ctype, r
        with open(os.path.join(DASHBOARD_DIR, name), "rb") as f:  # compiled in at build time
            assert hashlib.sha256(r.body).digest() == hashlib.sha256(f.read()).digest(), path
        d = csp_directives(r)
        assert d == {
            "default-src": ["'none'"], "script-src": ["'self'"], "style-src": ["'self'"],
            "img-src": ["'self'"], "connect-src": ["'self'", idp.issuer],  # the token endpoint's
            "base-uri": ["'none'"], "form-action": ["'none'"], "frame-ancestors": ["'none'"],
            "require-trusted-types-for": ["'script'"], "trusted-types": ["'none'"]}, d
        assert r.header("X-Content-Type-Options") == "nosniff", r
        assert r.header("Referrer-Policy") == "no-referrer", r
        assert r.header("X-Frame-Options") == "DENY", r
        h = head(relay, path)
        assert h.status == 200 and h.body == b"", h
        assert h.header("Content-Length") == str(len(r.body)), h
    r = curl(relay, "/dashboard/config.json", certs)
    assert r.status == 200 and r.json() == {"auth": "oidc"}, r
    for path in ("/dashboard/index.html", "/dashboard/nothing.js", "/dashboard/",
                 "/dashboard/../relay.h"):
        relaytest.assert_error_body(curl(relay, path, certs), 404)
    relaytest.assert_error_body(curl(relay, "/dashboard", certs, method="POST"), 405)

    # /metrics is off here; an operator reads the same text behind sign-in.
    relaytest.assert_error_body(curl(relay, "/metrics", certs), 404)
    r = curl(relay, "/admin/metrics", certs)
    relaytest.assert_error_body(r, 401)
    assert idpmod.bearer_challenge(r) == {"realm": "relay"}, r
    key = idp.keys[idp.published[0]]
    r = curl(relay, "/admin/metrics", certs, token=idp.token(key, AUDIENCE, scope=CREATE))
    relaytest.assert_error_body(r, 403, "insufficient_scope")
    r = curl(relay, "/admin/metrics", certs, token=idp.token(key, AUDIENCE, scope=READ))
    assert r.status == 200, r
    assert r.header("Cache-Control") == "no-store", r
    text = r.body.decode()
    assert re.search(r'^relay_build_info\{version="[^"]+",commit="[^"]+",node="[^"]+"\} 1$',
                     text, re.M), text
    assert re.search(r'^relay_controller_link\{controller="embedded"\} 1$', text, re.M), text
    assert re.search(r"^relay_limit_max_sessions 100000$", text, re.M), text
    assert re.search(r"^relay_connections \d+$", text, re.M), text


def test_no_auth_config(start_relay, certs):
    relay = start_relay()
    r = curl(relay, "/dashboard/config.json", certs)
    assert r.status == 200 and r.json() == {"auth": "none"}, r
    r = curl(relay, "/dashboard", certs)
    assert csp_directives(r)["connect-src"] == ["'self'"], r


# ---- live, with --no-auth ------------------------------------------------------------------

ROW = "[...document.querySelectorAll('#sessions tbody tr')].find(r => r.dataset.id === %s)"


def js_str(s):
    import json
    return json.dumps(s)


def row_state(page, sid):
    return page.eval("(() => { const r = %s; return r ? r.dataset.state : null; })()"
                     % (ROW % js_str(sid)))


def row_cells(page, sid):
    return page.eval("(() => { const r = %s; return r ? [...r.cells].map(c => c.textContent)"
                     " : null; })()" % (ROW % js_str(sid)))


def wait_row(page, sid, state, timeout=T):
    return page.wait_for("(() => { const r = %s; return r && r.dataset.state === %s; })()"
                         % (ROW % js_str(sid), js_str(state)), timeout=timeout,
                         what="session %s %s" % (sid, state))


def test_live_sessions_and_delete(start_relay, certs, page):
    relay = start_relay()
    admin = wsraw.Admin(relay)
    s1, s2 = admin.create(), admin.create()
    page.goto(relay.url("/dashboard"))
    for s in (s1, s2):
        wait_row(page, s["id"], "pending")
    assert page.eval("document.getElementById('live').dataset.state") == "live"
    assert page.eval("document.getElementById('who').textContent") == "no sign-in (--no-auth)"

    # Peers join: the row follows without a reload.
    a = wsraw.open_peer(relay, s1["id"], s1["initiator_token"])
    wait_row(page, s1["id"], "half_open")
    cells = row_cells(page, s1["id"])
    assert cells[2:4] == ["connected", "—"], cells
    b = wsraw.open_peer(relay, s1["id"], s1["responder_token"], how="query")
    wait_row(page, s1["id"], "open")
    payload = os.urandom(50000)
    a.send_message(payload)
    op, got = b.recv_message()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    page.wait_for("(() => { const r = %s; return r && r.cells[4].textContent === '48.8 KiB'; })()"
                  % (ROW % js_str(s1["id"])), what="bytes in shown")
    assert row_cells(page, s1["id"])[2:4] == ["connected", "connected"]
    assert row_state(page, s2["id"]) == "pending"
    page.screenshot(artefact("dashboard-live.png"))

    # Delete: the first click arms the button, the second deletes.
    button = "%s.querySelector('button.delete')" % (ROW % js_str(s1["id"]))
    page.click(button)
    assert page.eval(button + ".textContent") == "Confirm delete"
    assert admin.get(s1["id"]).status == 200  # nothing deleted yet
    page.click(button)
    assert a.expect_close() == 1001
    assert b.expect_close() == 1001
    page.wait_for("!(%s)" % (ROW % js_str(s1["id"])), what="the deleted row gone")
    assert "Deleted session " + s1["id"] in page.eval("document.getElementById('notice').textContent")
    assert admin.get(s1["id"]).status == 404
    assert row_state(page, s2["id"]) == "pending"
    page.assert_clean()
    admin.close()


# ---- hostile values from a controller -------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return gp.Pki(tmp_path_factory.mktemp("pki"))


class HostileSession(gi.Session):
    def status(self):
        st = super().status()
        st["state"] = HOSTILE
        return st


def test_hostile_values_render_as_text(start_relay, pki, page):
    relay, ctl, bridge = gi.grpcio_relay(start_relay, pki)
    try:
        evil = HostileSession(HOSTILE, 600, 30)
        plain = ctl.create()
        with ctl.lock:
            ctl.sessions[evil.id] = evil

        def refuse_delete(req, context):
            if req["op"] == gp.OP_DELETE:
                return {"http_status": 403, "error": "<b>denied</b>", "message": HOSTILE}
            return None
        ctl.admin_hook = refuse_delete

        page.goto(relay.url("/dashboard"))
        wait_row(page, plain.id, "pending")
        page.wait_for("!!(%s)" % (ROW % js_str(HOSTILE)), what="the hostile row")
        cells = row_cells(page, HOSTILE)
        assert cells[0] == HOSTILE and cells[1] == HOSTILE, cells  # the text, as text
        button = "%s.querySelector('button.delete')" % (ROW % js_str(plain.id))
        page.click(button)
        page.click(button)
        page.wait_for("document.getElementById('notice').textContent.includes('HTTP 403')",
                      what="the refusal shown")
        notice = page.eval("document.getElementById('notice').textContent")
        assert notice == "Could not delete session %s: HTTP 403 <b>denied</b>: %s" % (
            plain.id, HOSTILE), notice
        # Nothing of it ran or became markup: one script (app.js), no img
        # but the icon's link, no dialog, no global set.
        assert page.eval("document.scripts.length") == 1
        assert page.eval("document.querySelectorAll('img, b').length") == 0
        assert page.eval("typeof window.__pwned") == "undefined"
        assert page.dialogs() == []
        page.screenshot(artefact("dashboard-hostile.png"))
        # The one problem the page saw is the refusal it was given.
        assert [p for p in page.problems if "status of 403" not in p] == [], page.problems
    finally:
        bridge.close()
        ctl.stop()


# ---- sign-in: authorization code with PKCE, or a pasted token ----------------------------------

def test_sign_in_with_pkce(start_relay, certs, idp, page):
    relay = oidc_relay(start_relay, idp)
    admin = wsraw.Admin(relay, token=idp.token(idp.keys[idp.published[0]], AUDIENCE,
                                               scope=CREATE))
    s = admin.create()
    dashboard = relay.url("/dashboard")
    idp.redirect_uris[CLIENT_ID] = [dashboard]
    origin = relay.url("")
    idp.web_origins.add(origin)
    idp.grant_scopes = None
    n_auth = len(idp.authorizations)

    page.goto(dashboard)
    page.wait_for("!document.getElementById('signin').hidden", what="the sign-in form")
    assert page.eval("document.getElementById('main').hidden") is True
    page.click("document.getElementById('signin-oidc')")
    wait_row(page, s["id"], "pending")

    # The provider was asked as PKCE wants, for the scopes the relay lists.
    (q,) = idp.authorizations[n_auth:]
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID, q
    assert q["redirect_uri"] == dashboard and q["code_challenge_method"] == "S256", q
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"]), q
    assert set(q["scope"].split()) == {"openid", CREATE, READ, DELETE}, q
    assert q["audience"] == AUDIENCE, q
    (form,) = idp.grant_requests("authorization_code")[-1:]
    verifier = form["code_verifier"]
    assert idpmod.b64url(hashlib.sha256(verifier.encode()).digest()) == q["code_challenge"]
    assert form["redirect_uri"] == dashboard and form["client_id"] == CLIENT_ID, form

    # The code is gone from the address bar, and the token is nowhere but
    # in the script's memory: no storage, no cookie, no URL ever held it.
    assert page.url() == dashboard
    assert page.eval("localStorage.length + sessionStorage.length") == 0
    assert page.eval("document.cookie") == ""
    assert not any("access_token" in u or "eyJ" in u for u in page.requests()), page.requests()
    assert page.eval("document.getElementById('who').textContent") == "signed in"
    page.screenshot(artefact("dashboard-signed-in.png"))
    page.assert_clean()

    # A reload forgets the token: signed out again.
    page.goto(dashboard)
    page.wait_for("!document.getElementById('signin').hidden", what="signed out after reload")
    admin.close()


def test_sign_in_refused_by_provider(start_relay, idp, page):
    relay = oidc_relay(start_relay, idp)
    dashboard = relay.url("/dashboard")
    idp.redirect_uris[CLIENT_ID] = [dashboard]
    idp.authorize_error = "access_denied"
    try:
        page.goto(dashboard)
        page.wait_for("!document.getElementById('signin').hidden")
        page.click("document.getElementById('signin-oidc')")
        page.wait_for("document.getElementById('signin-error').textContent.includes("
                      "'access_denied')", what="the refusal shown")
        assert page.url() == dashboard
        assert page.eval("sessionStorage.length") == 0
        assert page.eval("document.getElementById('main').hidden") is True
    finally:
        idp.authorize_error = None


def test_pasted_token(start_relay, idp, page):
    relay = oidc_relay(start_relay, idp)
    key = idp.keys[idp.published[0]]
    admin = wsraw.Admin(relay, token=idp.token(key, AUDIENCE, scope=CREATE))
    s = admin.create()
    page.goto(relay.url("/dashboard"))
    page.wait_for("!document.getElementById('signin').hidden")
    page.eval("document.getElementById('token-input').focus()")
    page.type_text(idp.token(key, AUDIENCE, scope=READ + " " + DELETE))
    page.click("document.querySelector('#token-form button')")
    wait_row(page, s["id"], "pending")
    assert page.eval("document.getElementById('token-input').value") == ""
    assert page.eval("localStorage.length + sessionStorage.length") == 0
    page.assert_clean()

    # A token the relay refuses sends the operator back to sign in.
    page.click("document.getElementById('signout')")
    page.wait_for("!document.getElementById('signin').hidden")
    page.eval("document.getElementById('token-input').focus()")
    page.type_text(idp.token(key, "another-audience", scope=READ))
    page.click("document.querySelector('#token-form button')")
    page.wait_for("document.getElementById('signin-error').textContent.includes('HTTP 401')",
                  what="the refusal shown")
    admin.close()
