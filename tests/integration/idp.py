"""idp — a small OpenID Provider for relay's integration tests.

An HTTPS server (the ssl module, a certificate issued by a relaytest.Certs
CA, so the relay trusts it with --oidc-ca certs.ca_crt) on 127.0.0.1 with
an ephemeral port, serving on its own thread:

* ``/.well-known/openid-configuration``: issuer, jwks_uri and the
  authorization, token and device-authorization endpoints (the relay
  never calls them, it only republishes them in its discovery).
* ``GET /authorize`` (RFC 6749 §4.1 with PKCE, RFC 7636): the browser's
  sign-in.  The test plays a user who is already signed in at the
  provider (``authorize_sub``) and consents at once, so the answer is a
  302 to the client's registered ``redirect_uris`` with a one-time code
  and the state — or, with ``authorize_error`` set, with that error.  Only
  S256 challenges are taken; ``authorizations`` records the requests.
  The token endpoint's ``authorization_code`` grant checks the code, the
  client, the redirect URI and the verifier against the challenge.
  Browsers call the token endpoint across origins: it answers CORS for
  the origins in ``web_origins``.
* ``/jwks``: the public halves of the *published* keys.
* ``POST /device`` (RFC 8628 §3.1-3.2) and ``POST /token`` (RFC 6749 §4.4
  and §6, RFC 8628 §3.4-3.5): the OAuth side a CLI client signs in
  through.  Clients are registered in ``clients`` (client id -> secret, or
  None for a public client); a device grant stays ``authorization_pending``
  until the test plays the user (``approve``/``deny``), answers
  ``slow_down`` to a poll that comes sooner than its interval (and to the
  next ``slow_down_next`` polls, on purpose) and raises the interval by 5 s
  each time, and ``expired_token`` once its lifetime (``device_lifetime``,
  which may be shorter than the ``device_expires_in`` it advertises) is
  over.  Access tokens are JWTs signed with the first published key, for
  ``audience`` with the scopes asked for (or ``grant_scopes``) and
  ``access_lifetime``; refresh tokens are random, rotated on use, and can
  be revoked.  ``token_requests`` and ``polls`` record what arrived.

Keys are made with python3-cryptography (RSA 2048 for RS256, P-256 for
ES256) and tokens signed with python3-jwt.  A test can add and rotate keys
(``rotate``), keep a key private (sign with a kid the JWKS never shows),
switch the whole provider to 503 (``available = False``) or stop it, and
read how many discovery and JWKS requests arrived (``jwks_fetches``,
``last_jwks_fetch``) — which is how the relay's refetch rate limit is
observed from outside.

Hand-made tokens (``unsigned_token``, ``hs256_token``) cover what PyJWT
refuses to produce on purpose: ``alg: none`` and HMAC keyed with the RSA
public key's PEM.

``curl_http`` runs one request with curl (the independent client) and
returns a relaytest.Response; ``bearer_challenge`` reads the parameters of
a WWW-Authenticate: Bearer header.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import relaytest


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(n, length=None):
    length = length or (n.bit_length() + 7) // 8
    return n.to_bytes(length, "big")


class Key:
    """A signing key: kid, alg, the private key and its public JWK."""

    def __init__(self, alg, kid=None):
        self.alg = alg
        self.kid = kid or "%s-%s" % (alg.lower(), uuid.uuid4().hex[:12])
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pub = self.private.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "n": b64url(_int_bytes(pub.n)), "e": b64url(_int_bytes(pub.e))}
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            pub = self.private.public_key().public_numbers()
            self.jwk = {"kty": "EC", "crv": "P-256", "x": b64url(_int_bytes(pub.x, 32)),
                        "y": b64url(_int_bytes(pub.y, 32))}
        else:
            raise ValueError("unsupported alg %s" % alg)
        self.jwk.update({"kid": self.kid, "use": "sig", "alg": alg})

    def public_pem(self):
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class DeviceGrant:
    """One device authorization (RFC 8628): codes, the client and scope it
    was asked for, its interval (raised by slow_down), when it really
    expires, and the times of its polls."""

    def __init__(self, client_id, scope, interval, expires_at, audience):
        self.device_code = secrets.token_urlsafe(24)
        letters = "BCDFGHJKLMNPQRSTVWXZ"
        self.user_code = "-".join("".join(secrets.choice(letters) for _ in range(4))
                                  for _ in range(2))
        self.client_id, self.scope, self.audience = client_id, scope, audience
        self.interval, self.expires_at = interval, expires_at
        self.state = "pending"  # approved, denied
        self.sub = None
        self.used = False
        self.polls = []     # monotonic times of the token requests for it
        self.too_soon = 0   # polls that came before the interval was up


class IdP:
    """The provider.  Use as a context manager or call close()."""

    def __init__(self, certs, name="idp"):
        crt, key = certs.path(name + ".crt"), certs.path(name + ".key")
        if not (os.path.exists(crt) and os.path.exists(key)):
            crt, key = certs.issue(name, "127.0.0.1", san="IP:127.0.0.1,DNS:localhost",
                                   eku="serverAuth")
        self.ca_file = certs.ca_crt
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(crt, key)
        self._lock = threading.Lock()
        self.keys = {}          # kid -> Key, every key we can sign with
        self.published = []     # kids shown in the JWKS, in order
        self.available = True   # False: every request gets 503
        self.requests = []      # (monotonic time, path) of every request served
        self.host_headers = []  # the Host header of each of them
        self._server = self._make_server()
        self.port = self._server.server_address[1]
        self.issuer = "https://127.0.0.1:%d" % self.port
        self.jwks_uri = self.issuer + "/jwks"
        self.authorization_endpoint = self.issuer + "/authorize"
        self.token_endpoint = self.issuer + "/token"
        self.device_authorization_endpoint = self.issuer + "/device"
        self.verification_uri = self.issuer + "/activate"
        # The OAuth side (see the module comment).
        self.clients = {}            # client id -> secret (None: a public client)
        self.audience = None         # "aud" of the access tokens issued
        self.grant_scopes = None     # scopes granted; None: those asked for
        self.access_lifetime = 300   # seconds; also the expires_in answered
        self.send_expires_in = True  # False: token responses leave expires_in out
        self.issue_refresh = True    # device and refresh grants hand out refresh tokens
        self.device_interval = 1     # seconds, as answered in "interval"
        self.device_expires_in = 60  # seconds, as answered in "expires_in"
        self.device_lifetime = None  # seconds the code really lives; None: as advertised
        self.slow_down_next = 0      # polls still to answer slow_down on purpose
        self.grants = []             # DeviceGrant, in order
        self.refresh_tokens = {}     # refresh token -> (client id, scope, sub)
        self.token_requests = []     # (monotonic time, grant_type, form dict)
        # The browser's sign-in (see the module comment).
        self.redirect_uris = {}      # client id -> [registered redirect URIs]
        self.web_origins = set()     # origins the token endpoint answers CORS for
        self.authorize_sub = "operator"
        self.authorize_error = None  # e.g. "access_denied": refuse instead
        self.authorizations = []     # the query (dict) of each /authorize
        self.codes = {}              # code -> (client, redirect, challenge, scope, sub)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # ---- server ---------------------------------------------------------

    def _make_server(self):
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection, then close

            def setup(self):
                self.request.settimeout(10)
                self.request.do_handshake()  # here, not in the accept loop
                super().setup()

            def log_message(self, *args):
                pass

            def do_GET(self):
                path, _, query = self.path.partition("?")
                with idp._lock:
                    idp.requests.append((time.monotonic(), path))
                    idp.host_headers.append(self.headers.get("Host"))
                    up = idp.available
                    doc = idp._document(path) if up else None
                    if up and path == "/authorize":
                        status, where = idp._authorize(urllib.parse.parse_qs(query))
                if not up:
                    return self._send(503, {"error": "temporarily_unavailable"})
                if path == "/authorize":
                    if status != 302:
                        return self._send(status, where)
                    self.send_response(302)
                    self.send_header("Location", where)
                    self.send_header("Cache-Control", "no-store")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if doc is None:
                    return self._send(404, {"error": "not_found"})
                self._send(200, doc)

            def do_POST(self):
                path = self.path.split("?", 1)[0]
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if 0 < n <= 65536 else b""
                form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("latin-1")).items()}
                with idp._lock:
                    idp.requests.append((time.monotonic(), path))
                    idp.host_headers.append(self.headers.get("Host"))
                    if not idp.available:
                        status, doc = 503, {"error": "temporarily_unavailable"}
                    elif (self.headers.get("Content-Type") or "").split(";")[0].strip() != \
                            "application/x-www-form-urlencoded":
                        status, doc = 400, {"error": "invalid_request",
                                            "error_description": "not a form"}
                    else:
                        status, doc = idp._post(path, form, self.headers.get("Authorization"))
                self._send(status, doc)

            def do_OPTIONS(self):
                self._send(204, None)

            def _cors(self):
                origin = self.headers.get("Origin")
                with idp._lock:
                    allowed = origin in idp.web_origins
                if allowed:
                    self.send_header("Access-Control-Allow-Origin", origin)
                    self.send_header("Access-Control-Allow-Methods", "POST")
                    self.send_header("Access-Control-Allow-Headers", "Content-Type")
                    self.send_header("Vary", "Origin")

            def _send(self, status, obj):
                body = json.dumps(obj).encode() if obj is not None else b""
                self.send_response(status)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = self.socket.accept()
                return idp._ctx.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False), addr

            def handle_error(self, request, client_address):
                pass  # a client that hangs up mid-handshake is not our failure

        return Server(("127.0.0.1", 0), Handler)

    def _document(self, path):
        if path == "/.well-known/openid-configuration":
            return {
                "issuer": self.issuer,
                "jwks_uri": self.jwks_uri,
                "authorization_endpoint": self.authorization_endpoint,
                "token_endpoint": self.token_endpoint,
                "device_authorization_endpoint": self.device_authorization_endpoint,
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "scopes_supported": ["openid", "swsrs:session:create", "swsrs:session:read",
                                     "swsrs:session:delete"],
            }
        if path == "/jwks":
            return {"keys": [self.keys[k].jwk for k in self.published]}
        return None

    # ---- the OAuth side (called with _lock held) -------------------------------

    def _client(self, form, authorization):
        """(client id, None) for an authenticated or public client, else
        (None, (status, error document)).  Secrets come by HTTP Basic
        (RFC 6749 §2.3.1) or in the form."""
        cid, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                pair = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except ValueError:
                return None, (401, {"error": "invalid_client"})
            cid, _, secret = pair.partition(":")
            cid, secret = urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)
        if cid not in self.clients:
            return None, (401, {"error": "invalid_client",
                                "error_description": "unknown client"})
        want = self.clients[cid]
        if want is not None and not hmac.compare_digest((secret or "").encode(), want.encode()):
            return None, (401, {"error": "invalid_client",
                                "error_description": "bad client secret"})
        return cid, None

    def _post(self, path, form, authorization):
        if path == "/device":
            return self._device_authorization(form, authorization)
        if path != "/token":
            return 404, {"error": "not_found"}
        grant = form.get("grant_type")
        self.token_requests.append((time.monotonic(), grant, dict(form)))
        cid, refusal = self._client(form, authorization)
        if refusal:
            return refusal
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_poll(cid, form.get("device_code"))
        if grant == "refresh_token":
            return self._refresh(cid, form.get("refresh_token"))
        if grant == "authorization_code":
            return self._code_grant(cid, form)
        if grant == "client_credentials":
            if self.clients[cid] is None:
                return 401, {"error": "unauthorized_client"}
            return 200, self._tokens(cid, form.get("scope", ""), cid, refresh=False)
        return 400, {"error": "unsupported_grant_type"}

    def _authorize(self, query):
        """(302, Location) or (400, error document) for a /authorize query.
        Errors about the client or the redirect URI are not redirected
        (RFC 6749 §4.1.2.1): the URI may be an attacker's."""
        q = {k: v[0] for k, v in query.items()}
        self.authorizations.append(q)
        cid, redirect = q.get("client_id"), q.get("redirect_uri")
        if cid not in self.clients or redirect not in self.redirect_uris.get(cid, ()):
            return 400, {"error": "invalid_request",
                         "error_description": "unknown client or redirect_uri"}
        answer = {"state": q.get("state", "")}
        if self.authorize_error:
            answer["error"] = self.authorize_error
        elif q.get("response_type") != "code":
            answer["error"] = "unsupported_response_type"
        elif q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            answer["error"] = "invalid_request"
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = (cid, redirect, q["code_challenge"], q.get("scope", ""),
                                self.authorize_sub)
            answer["code"] = code
        return 302, redirect + "?" + urllib.parse.urlencode(answer)

    def _code_grant(self, cid, form):
        held = self.codes.pop(form.get("code") or "", None)  # one use only
        if held is None or held[0] != cid or held[1] != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier") or ""
        if b64url(hashlib.sha256(verifier.encode()).digest()) != held[2]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        scope = " ".join(s for s in held[3].split() if s != "openid")
        return 200, self._tokens(cid, scope, held[4], refresh=False)

    def _device_authorization(self, form, authorization):
        cid, refusal = self._client(form, authorization)
        if refusal:
            return refusal
        life = self.device_lifetime if self.device_lifetime is not None else \
            self.device_expires_in
        g = DeviceGrant(cid, form.get("scope", ""), self.device_interval,
                        time.monotonic() + life, form.get("audience"))
        self.grants.append(g)
        return 200, {"device_code": g.device_code, "user_code": g.user_code,
                     "verification_uri": self.verification_uri,
                     "verification_uri_complete": self.verification_uri + "?user_code=" +
                     g.user_code,
                     "expires_in": self.device_expires_in, "interval": self.device_interval}

    def _device_poll(self, cid, device_code):
        g = next((g for g in self.grants if g.device_code == device_code), None)
        if g is None or g.client_id != cid or g.used:
            return 400, {"error": "invalid_grant"}
        now = time.monotonic()
        g.polls.append(now)
        too_soon = len(g.polls) > 1 and now - g.polls[-2] < g.interval - 0.05
        if now >= g.expires_at:
            return 400, {"error": "expired_token"}
        if too_soon or self.slow_down_next > 0:
            if too_soon:
                g.too_soon += 1
            else:
                self.slow_down_next -= 1
            g.interval += 5  # RFC 8628 §3.5
            return 400, {"error": "slow_down"}
        if g.state == "denied":
            return 400, {"error": "access_denied"}
        if g.state != "approved":
            return 400, {"error": "authorization_pending"}
        g.used = True
        return 200, self._tokens(cid, g.scope, g.sub, refresh=self.issue_refresh)

    def _refresh(self, cid, token):
        held = self.refresh_tokens.pop(token, None) if token else None
        if held is None or held[0] != cid:
            return 400, {"error": "invalid_grant",
                         "error_description": "refresh token unknown or revoked"}
        return 200, self._tokens(cid, held[1], held[2], refresh=True)

    def _tokens(self, cid, scope, sub, refresh):
        granted = scope if self.grant_scopes is None else self.grant_scopes
        key = self.keys[self.published[0]]
        access = self.token(key, self.audience, scope=granted or None, sub=sub,
                            lifetime=self.access_lifetime, client_id=cid)
        doc = {"access_token": access, "token_type": "Bearer", "scope": granted}
        if self.send_expires_in:
            doc["expires_in"] = self.access_lifetime
        if refresh:
            rt = secrets.token_urlsafe(24)
            self.refresh_tokens[rt] = (cid, granted, sub)
            doc["refresh_token"] = rt
        return doc

    # ---- the user, at a browser -----------------------------------------------------

    def grant_for(self, user_code):
        with self._lock:
            return next(g for g in self.grants if g.user_code == user_code)

    def approve(self, user_code, sub="user-approved"):
        with self._lock:
            g = next(g for g in self.grants if g.user_code == user_code)
            g.state, g.sub = "approved", sub

    def deny(self, user_code):
        with self._lock:
            next(g for g in self.grants if g.user_code == user_code).state = "denied"

    def revoke_refresh_tokens(self):
        with self._lock:
            self.refresh_tokens.clear()

    def grant_requests(self, grant_type):
        """The forms of the token requests of one grant type, in order."""
        with self._lock:
            return [f for _, g, f in self.token_requests if g == grant_type]

    def close(self):
        """Stops serving and closes the listening socket (connections are
        then refused: the provider is down)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- keys -------------------------------------------------------------

    def add_key(self, alg="RS256", kid=None, publish=True):
        k = Key(alg, kid)
        with self._lock:
            self.keys[k.kid] = k
            if publish:
                self.published.append(k.kid)
        return k

    def rotate(self, alg="RS256"):
        """A new key replaces every published one; returns it."""
        k = Key(alg)
        with self._lock:
            self.keys[k.kid] = k
            self.published = [k.kid]
        return k

    # ---- observations --------------------------------------------------------

    def fetches(self, path):
        with self._lock:
            return sum(1 for _, p in self.requests if p == path)

    @property
    def jwks_fetches(self):
        return self.fetches("/jwks")

    @property
    def discovery_fetches(self):
        return self.fetches("/.well-known/openid-configuration")

    @property
    def last_jwks_fetch(self):
        """Monotonic time of the latest JWKS request, or None."""
        with self._lock:
            ts = [t for t, p in self.requests if p == "/jwks"]
        return ts[-1] if ts else None

    def wait_jwks_fetches(self, n, timeout=20.0):
        """Waits until at least n JWKS requests arrived; returns the count."""
        deadline = time.monotonic() + timeout
        while self.jwks_fetches < n:
            if time.monotonic() > deadline:
                raise AssertionError("IdP saw %d JWKS fetches, wanted %d" % (self.jwks_fetches, n))
            time.sleep(0.05)
        return self.jwks_fetches

    def wait_quiet(self, seconds):
        """Sleeps until the latest JWKS fetch is at least `seconds` old, so
        a relay's min-refetch interval has passed."""
        last = self.last_jwks_fetch
        if last is not None:
            left = last + seconds - time.monotonic()
            if left > 0:
                time.sleep(left)

    # ---- tokens ---------------------------------------------------------------

    def claims(self, audience, scope="swsrs:session:create", lifetime=300, **over):
        now = int(time.time())
        c = {"iss": self.issuer, "aud": audience, "sub": "user-" + uuid.uuid4().hex[:8],
             "iat": now, "nbf": now - 5, "exp": now + lifetime}
        if scope is not None:
            c["scope"] = scope
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(self, key, audience, headers=None, **claim_kw):
        """A JWT signed by key (a Key) with PyJWT."""
        hdr = {"kid": key.kid, "typ": "JWT"}
        hdr.update(headers or {})
        return jwt.encode(self.claims(audience, **claim_kw), key.private, algorithm=key.alg,
                          headers=hdr)

    def unsigned_token(self, audience, kid=None, **claim_kw):
        """alg "none" with an empty signature (RFC 7519 §6)."""
        hdr = {"alg": "none", "typ": "JWT"}
        if kid:
            hdr["kid"] = kid
        return "%s.%s." % (b64url(json.dumps(hdr).encode()),
                           b64url(json.dumps(self.claims(audience, **claim_kw)).encode()))

    def hs256_token(self, key, audience, **claim_kw):
        """The key-confusion attack: HS256 whose HMAC secret is the RSA public
        key's PEM (what a verifier that lets the token pick the algorithm
        would use).  PyJWT refuses to build this, so it is built by hand."""
        hdr = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
        signing = "%s.%s" % (b64url(json.dumps(hdr).encode()),
                             b64url(json.dumps(self.claims(audience, **claim_kw)).encode()))
        mac = hmac.new(key.public_pem(), signing.encode(), hashlib.sha256).digest()
        return signing + "." + b64url(mac)


# --------------------------------------------------------------------------
# curl as the independent HTTP client
# --------------------------------------------------------------------------

def curl_http(url, method="GET", headers=(), body=None, cacert=None, timeout=None):
    """One request with curl; returns a relaytest.Response (status, headers
    in order, body bytes).  body (bytes/str) is sent verbatim; curl adds no
    Content-Type of its own unless headers lack one (then it is
    application/x-www-form-urlencoded, curl's default)."""
    timeout = timeout or relaytest.TIMEOUT
    with tempfile.TemporaryDirectory() as d:
        hdr, out = os.path.join(d, "headers"), os.path.join(d, "body")
        args = ["-X", method, "-D", hdr, "-o", out, "-H", "Expect:"]
        if cacert:
            args += ["--cacert", cacert]
        for k, v in headers:
            args += ["-H", "%s: %s" % (k, v)]
        if body is not None:
            src = os.path.join(d, "request")
            with open(src, "wb") as f:
                f.write(body.encode() if isinstance(body, str) else body)
            args += ["--data-binary", "@" + src]
        p = relaytest.curl(args + [url], timeout=timeout)
        if p.returncode != 0:
            raise relaytest.TestError("curl %s %s failed (%d): %s" % (
                method, url, p.returncode, p.stderr))
        with open(hdr, "rb") as f:
            head = f.read().decode("latin-1")
        data = b""
        if os.path.exists(out):
            with open(out, "rb") as f:
                data = f.read()
    # The last header block is the final response (skips any 1xx).
    block = [b for b in head.split("\r\n\r\n") if b.strip()][-1]
    lines = block.split("\r\n")
    m = re.match(r"(HTTP/[\d.]+) (\d{3}) ?(.*)", lines[0])
    if not m:
        raise relaytest.TestError("bad status line %r" % lines[0])
    headers_out = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers_out.append((k.strip(), v.strip()))
    return relaytest.Response(int(m.group(2)), m.group(3), headers_out, data, m.group(1))


def bearer_challenge(resp):
    """The WWW-Authenticate Bearer challenge of resp as (params dict), or
    None when absent or not Bearer."""
    v = resp.header("WWW-Authenticate")
    if not v or not v.lower().startswith("bearer"):
        return None
    return dict(re.findall(r'(\w+)="([^"]*)"', v))
