"""OIDC bearer-token authentication of the admin API against a real token
issuer: the test IdP (idp.py) serves its discovery document and JWKS over
HTTPS, keys are made with python3-cryptography and tokens signed with
python3-jwt (plus hand-made alg-none and HS256 key-confusion tokens).  The
client is curl.  What is checked: which tokens get 201, 401 (always with a
Bearer challenge saying invalid_token) or 403; that an unknown kid costs
exactly one JWKS fetch, counted at the IdP, and that refetches are rate
limited; key rotation; cached keys surviving an IdP outage; the relay's
own discovery document; and that the IdP's certificate is verified.
"""

import calendar
import concurrent.futures
import time

import jwt
import pytest

import idp as idpmod
import relaytest
from idp import bearer_challenge, curl_http

AUDIENCE = "relay-admin-test"
CREATE = "swsrs:session:create"
MIN_REFETCH = 3.0    # --jwks-min-refetch, seconds
LEEWAY = 30          # --jwt-leeway, seconds


def start_oidc_relay(certs, provider, extra=()):
    """An OIDC relay (TLS, embedded controller) trusting provider; returns
    once its key set is loaded."""
    r = relaytest.Relay(certs=certs, no_auth=False, extra=[
        "--oidc-issuer", provider.issuer, "--oidc-audience", AUDIENCE,
        "--oidc-ca", provider.ca_file] + list(extra))
    try:
        r.wait_for_log(msg="JWKS loaded")
        r.wait_for_log(msg="controller link up")
    except Exception:
        r.kill()
        raise
    return r


class Env:
    def __init__(self, certs):
        self.certs = certs
        self.idp = idpmod.IdP(certs)
        self.rsa = self.idp.add_key("RS256")
        self.ec = self.idp.add_key("ES256")
        self.relay = start_oidc_relay(certs, self.idp, [
            "--jwks-min-refetch", "%gs" % MIN_REFETCH, "--jwt-leeway", "%ds" % LEEWAY,
            "--client-id-hint", "relay-cli-test"])

    def post(self, token=None, headers=()):
        h = list(headers)
        if token is not None:
            h.append(("Authorization", "Bearer " + token))
        return curl_http(self.relay.url("/admin/sessions"), "POST", headers=h,
                         cacert=self.certs.ca_crt)

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


def assert_401(resp, description=None):
    """A 401 with the JSON error body and a Bearer invalid_token challenge."""
    relaytest.assert_error_body(resp, 401, "invalid_token")
    ch = bearer_challenge(resp)
    assert ch is not None, resp
    assert ch.get("error") == "invalid_token", resp
    if description is not None:
        assert ch.get("error_description") == description, resp
    assert resp.header("Cache-Control") == "no-store", resp


def assert_created(resp):
    assert resp.status == 201, resp
    body = resp.json()
    assert len(body["id"]) == 22 and len(body["initiator_token"]) == 22, body
    return body


# ---- tokens that pass ----------------------------------------------------------

def test_valid_rs256_and_es256(env):
    before = env.idp.jwks_fetches
    assert_created(env.post(env.idp.token(env.rsa, AUDIENCE, scope=CREATE)))
    assert_created(env.post(env.idp.token(env.ec, AUDIENCE, scope=CREATE)))
    # Scopes also come from "scp" (array form), among others.
    assert_created(env.post(env.idp.token(env.ec, AUDIENCE, scope=None,
                                          scp=["openid", CREATE])))
    # An audience list that contains ours; "typ": "at+jwt" (RFC 9068).
    assert_created(env.post(env.idp.token(env.rsa, [AUDIENCE, "other"], scope=CREATE,
                                          headers={"typ": "at+jwt"})))
    assert env.idp.jwks_fetches == before  # known keys: verified locally


def test_leeway_accepts_recently_expired(env):
    now = int(time.time())
    assert_created(env.post(env.idp.token(env.rsa, AUDIENCE, exp=now - LEEWAY // 3)))
    assert_401(env.post(env.idp.token(env.rsa, AUDIENCE, exp=now - LEEWAY - 60)), "expired")


# ---- tokens that do not ----------------------------------------------------------

def _refused_cases(e):
    p, now = e.idp, int(time.time())
    stranger = idpmod.Key("RS256", kid=e.rsa.kid)  # same kid, a key the IdP never published
    return [
        ("expired", p.token(e.rsa, AUDIENCE, exp=now - 3600, iat=now - 7200, nbf=now - 7200),
         "expired"),
        ("not_yet_valid", p.token(e.rsa, AUDIENCE, nbf=now + 3600), "not_yet_valid"),
        ("wrong_issuer", p.token(e.rsa, AUDIENCE, iss="https://evil.example.com"), "bad_issuer"),
        ("issuer_trailing_slash", p.token(e.rsa, AUDIENCE, iss=p.issuer + "/"), "bad_issuer"),
        ("wrong_audience", p.token(e.ec, "someone-else"), "bad_audience"),
        ("alg_none", p.unsigned_token(AUDIENCE), "bad_alg"),
        ("alg_none_with_kid", p.unsigned_token(AUDIENCE, kid=e.rsa.kid), "bad_alg"),
        ("hs256_public_key_secret", p.hs256_token(e.rsa, AUDIENCE), "bad_alg"),
        ("forged_signature", jwt_encode(stranger, p.claims(AUDIENCE)), "bad_signature"),
        ("es256_header_on_rsa_key",
         jwt_encode(e.ec, p.claims(AUDIENCE), kid=e.rsa.kid), "bad_alg"),
        ("no_exp", p.token(e.rsa, AUDIENCE, exp=None), "malformed"),
        ("not_a_jwt", "this-is-not-a-jwt", "malformed"),
    ]


def jwt_encode(key, claims, kid=None):
    return jwt.encode(claims, key.private, algorithm=key.alg,
                      headers={"kid": kid or key.kid, "typ": "JWT"})


def count_sessions(env):
    resp = curl_http(env.relay.url("/admin/sessions"), headers=[
        ("Authorization", "Bearer " + env.idp.token(env.rsa, AUDIENCE,
                                                    scope="swsrs:session:read"))],
        cacert=env.certs.ca_crt)
    assert resp.status == 200, resp
    return len(resp.json()["sessions"])


def test_refused_tokens_get_401_invalid_token(env):
    before, sessions = env.idp.jwks_fetches, count_sessions(env)
    cases = _refused_cases(env)
    for name, token, why in cases:
        resp = env.post(token)
        try:
            assert_401(resp, why)
        except AssertionError:
            raise AssertionError("case %s: %r" % (name, resp))
    # None of these names an unknown kid, so none may cost a JWKS fetch,
    # and none created anything.
    assert env.idp.jwks_fetches == before
    assert count_sessions(env) == sessions
    # Tokens never reach the log (only the verdict does).
    text = env.relay.stderr
    for _, token, _ in cases:
        assert token not in text


def test_missing_token_gets_bare_challenge(env):
    for headers in ([], [("Authorization", "Basic dXNlcjpwYXNz")],
                    [("Authorization", "Bearer")]):
        resp = env.post(headers=headers)
        relaytest.assert_error_body(resp, 401)
        ch = resp.header("WWW-Authenticate")
        assert ch is not None and ch.startswith("Bearer"), resp
        # RFC 6750 §3.1: no error code when no credentials were sent.
        assert "error=" not in ch, resp


def test_missing_scope_gets_403(env):
    for scope in ("swsrs:session:read swsrs:session:delete", None, "swsrs:session:create2"):
        resp = env.post(env.idp.token(env.rsa, AUDIENCE, scope=scope))
        relaytest.assert_error_body(resp, 403, "insufficient_scope")
        ch = bearer_challenge(resp)
        assert ch and ch.get("error") == "insufficient_scope", resp


# ---- JWKS refetch and rate limit ------------------------------------------------------

def test_unknown_kid_one_refetch_then_rate_limited(env):
    ghost = env.idp.add_key("RS256", kid="ghost-1", publish=False)
    env.idp.wait_quiet(MIN_REFETCH + 0.5)
    n0 = env.idp.jwks_fetches
    t0 = time.monotonic()
    assert_401(env.post(env.idp.token(ghost, AUDIENCE)), "unknown_kid")
    # The relay refetched once, and answered only after that fetch.
    assert env.idp.jwks_fetches == n0 + 1
    ghost2 = env.idp.add_key("ES256", kid="ghost-2", publish=False)
    assert_401(env.post(env.idp.token(ghost2, AUDIENCE)), "unknown_kid")
    elapsed = time.monotonic() - t0
    assert elapsed < MIN_REFETCH, "too slow to test the rate limit (%.1fs)" % elapsed
    time.sleep(0.3)
    assert env.idp.jwks_fetches == n0 + 1, "a second unknown kid within the window refetched"


def test_unknown_kid_flood_costs_one_fetch(env):
    env.idp.wait_quiet(MIN_REFETCH + 0.5)
    n0 = env.idp.jwks_fetches
    tokens = [env.idp.token(env.idp.add_key("ES256", kid="flood-%d" % i, publish=False),
                            AUDIENCE) for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        resps = list(ex.map(env.post, tokens))
    for r in resps:
        assert_401(r, "unknown_kid")
    time.sleep(0.3)
    assert env.idp.jwks_fetches == n0 + 1


def test_key_rotation_accepted_after_refetch(env):
    old = env.rsa
    env.idp.wait_quiet(MIN_REFETCH + 0.5)
    n0 = env.idp.jwks_fetches
    new = env.idp.rotate("RS256")  # old keys leave the JWKS
    assert_created(env.post(env.idp.token(new, AUDIENCE)))
    assert env.idp.jwks_fetches == n0 + 1
    # The refreshed set no longer holds the old key: within the window its
    # kid is now unknown and refused without another fetch.
    assert_401(env.post(env.idp.token(old, AUDIENCE)), "unknown_kid")
    assert env.idp.jwks_fetches == n0 + 1
    # The rotated-in key keeps working without fetches.
    assert_created(env.post(env.idp.token(new, AUDIENCE)))
    assert env.idp.jwks_fetches == n0 + 1
    env.rsa = new


# ---- discovery ---------------------------------------------------------------------------

def test_discovery_document(env):
    resp = curl_http(env.relay.url("/.well-known/swsrs-config"), cacert=env.certs.ca_crt)
    assert resp.status == 200, resp
    assert resp.header("Cache-Control") == "public, max-age=300", resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp
    doc = resp.json()
    p = env.idp
    assert doc["issuer"] == p.issuer
    assert doc["audience"] == AUDIENCE
    assert sorted(doc["scopes"]) == sorted(
        ["swsrs:session:create", "swsrs:session:read", "swsrs:session:delete"])
    assert doc["authorization_endpoint"] == p.authorization_endpoint
    assert doc["token_endpoint"] == p.token_endpoint
    assert doc["device_authorization_endpoint"] == p.device_authorization_endpoint
    assert doc["client_id_hint"] == "relay-cli-test"
    assert p.discovery_fetches >= 1
    # The relay's fetches name the IdP's port in Host (RFC 9110 §7.2): an
    # IdP behind name-based virtual hosting needs it.
    assert set(p.host_headers) == {"127.0.0.1:%d" % p.port}, p.host_headers


def parse_log_time(obj):
    """Seconds since the epoch of a JSON log line's "time" (UTC, ms)."""
    t = obj.get("time", "")
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + float(
        "0" + t[19:-1]) if t else 0.0


# ---- the identity provider goes away ------------------------------------------------------

def test_idp_down_cached_keys_keep_working(certs):
    provider = idpmod.IdP(certs)
    key = provider.add_key("ES256")
    relay = start_oidc_relay(certs, provider, ["--jwks-refresh", "1s",
                                               "--jwks-min-refetch", "1s"])
    try:
        def post(token):
            return curl_http(relay.url("/admin/sessions"), "POST", cacert=certs.ca_crt,
                             headers=[("Authorization", "Bearer " + token)])
        assert_created(post(provider.token(key, AUDIENCE)))
        provider.close()  # connections to it are now refused
        t_down = time.time()
        relay.wait_for_log(lambda o: parse_log_time(o) >= t_down - 0.05,
                           msg="JWKS fetch failed; keeping the last good key set")
        # The refresh failed, the last good key set stays in use.
        assert_created(post(provider.token(key, AUDIENCE)))
        # An unknown kid tries the (dead) IdP and is refused, not left hanging.
        ghost = provider.add_key("ES256", kid="ghost-down", publish=False)
        assert_401(post(provider.token(ghost, AUDIENCE)), "unknown_kid")
        assert_created(post(provider.token(key, AUDIENCE)))
        # Discovery is served from what was loaded.
        d = curl_http(relay.url("/.well-known/swsrs-config"), cacert=certs.ca_crt)
        assert d.status == 200 and d.json()["issuer"] == provider.issuer, d
        relay.stop()
    finally:
        relay.kill()
        provider.close()


def test_idp_answering_503_keeps_cached_keys(certs):
    provider = idpmod.IdP(certs)
    key = provider.add_key("RS256")
    relay = start_oidc_relay(certs, provider, ["--jwks-min-refetch", "1s"])
    try:
        def post(token):
            return curl_http(relay.url("/admin/sessions"), "POST", cacert=certs.ca_crt,
                             headers=[("Authorization", "Bearer " + token)])
        provider.available = False
        provider.wait_quiet(1.5)
        n0 = provider.jwks_fetches
        ghost = provider.add_key("RS256", kid="ghost-503", publish=False)
        assert_401(post(provider.token(ghost, AUDIENCE)), "unknown_kid")
        assert provider.jwks_fetches == n0 + 1  # it tried, got 503
        assert_created(post(provider.token(key, AUDIENCE)))
        relay.stop()
    finally:
        relay.kill()
        provider.close()


def test_idp_certificate_is_verified(certs):
    """The IdP's certificate must chain to --oidc-ca: with another CA the
    relay never loads keys, so admin calls get 503 (not 201, not a hang)."""
    provider = idpmod.IdP(certs)
    key = provider.add_key("RS256")
    relay = relaytest.Relay(certs=certs, no_auth=False, extra=[
        "--oidc-issuer", provider.issuer, "--oidc-audience", AUDIENCE,
        "--oidc-ca", certs.stranger_ca_crt, "--call-timeout", "1s"])
    try:
        relay.wait_for_log(msg="OIDC discovery fetch failed")
        resp = curl_http(relay.url("/admin/sessions"), "POST", cacert=certs.ca_crt,
                         headers=[("Authorization", "Bearer " + provider.token(key, AUDIENCE))])
        relaytest.assert_error_body(resp, 503)
        d = curl_http(relay.url("/.well-known/swsrs-config"), cacert=certs.ca_crt)
        relaytest.assert_error_body(d, 503)
        assert provider.jwks_fetches == 0
        assert not relay.find_logs(msg="JWKS loaded")
        relay.stop()
    finally:
        relay.kill()
        provider.close()
