"""idp — a small OpenID Provider for relay's integration tests.

An HTTPS server (the ssl module, a certificate issued by a relaytest.Certs
CA, so the relay trusts it with --oidc-ca certs.ca_crt) on 127.0.0.1 with
an ephemeral port, serving on its own thread:

* ``/.well-known/openid-configuration``: issuer, jwks_uri and the
  authorization, token and device-authorization endpoints (URLs only: the
  relay never calls them, it only republishes them in its discovery).
* ``/jwks``: the public halves of the *published* keys.

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
import ssl
import tempfile
import threading
import time
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
                path = self.path.split("?", 1)[0]
                with idp._lock:
                    idp.requests.append((time.monotonic(), path))
                    idp.host_headers.append(self.headers.get("Host"))
                    up = idp.available
                    doc = idp._document(path) if up else None
                if not up:
                    return self._send(503, {"error": "temporarily_unavailable"})
                if doc is None:
                    return self._send(404, {"error": "not_found"})
                self._send(200, doc)

            def _send(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
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
