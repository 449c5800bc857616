"""`relay auth` against the test IdP (idp.py) behind a relay that
publishes it in /.well-known/swsrs-config.  The test plays the user: it
reads the verification URI and code the command prints and approves (or
denies) them at the IdP.  What is checked: the device flow end to end,
with authorization_pending, slow_down (the next poll waits the interval
plus 5 s, and no poll ever comes early), expired_token, expires_in
honoured by the client itself, access_denied; the credentials file (0600
in a 0700 directory, replaced by rename, the IdP's tokens in it, ~/.config
without XDG_CONFIG_HOME, refused when others may read it); later commands
renewing it before expiry and after a 401, and failing clearly once the
refresh token is revoked; --logout; --client-credentials; and that no
token, refresh token or device code ever reaches the command's output.
"""

import calendar
import json
import os
import re
import stat
import time

import pytest

import relaytest
from clientcli import (AUDIENCE, CLIENT, OidcEnv, StubRelay, assert_error, client_env, creds_file,
                       run, start)

ALL = ["swsrs:session:create", "swsrs:session:read", "swsrs:session:delete"]


class Env(OidcEnv):
    def reset(self):
        """The IdP's knobs back to their defaults between tests."""
        p = self.idp
        p.access_lifetime, p.device_interval, p.device_expires_in = 300, 1, 60
        p.device_lifetime, p.slow_down_next, p.grant_scopes = None, 0, None
        p.send_expires_in, p.issue_refresh = True, True

    def auth_args(self, *extra):
        return ["auth", "--relay", self.relay.url(""), "--ca", self.certs.ca_crt] + list(extra)

    def create_args(self):
        return ["create", "--ca", self.certs.ca_crt, "--output", "env"]


@pytest.fixture(scope="module")
def env(certs):
    e = Env(certs)
    yield e
    e.close()


@pytest.fixture
def cenv(env, tmp_path):
    env.reset()
    return client_env(tmp_path)


def without(env, name):
    return {k: v for k, v in env.items() if k != name}


def wait_prompt(proc):
    """The verification URI and user code the command printed."""
    deadline = time.monotonic() + relaytest.TIMEOUT
    while time.monotonic() < deadline:
        m = re.search(r"open  (\S+)\nand enter the code  (\S+)\n", proc.stderr + "\n")
        if m:
            return m.group(1), m.group(2)
        if not proc.alive():
            break
        time.sleep(0.05)
    raise AssertionError("no prompt\n" + proc.describe())


def wait_polls(grant, n):
    deadline = time.monotonic() + relaytest.TIMEOUT
    while len(grant.polls) < n:
        assert time.monotonic() < deadline, "only %d polls" % len(grant.polls)
        time.sleep(0.02)


def secrets_of(env):
    """Every token and code the IdP handed out: none may be printed."""
    p = env.idp
    out = [g.device_code for g in p.grants] + list(p.refresh_tokens)
    for _, _, form in p.token_requests:
        out += [v for k, v in form.items() if k in ("refresh_token", "device_code")]
    return out


def sign_in(env, cenv, *extra):
    """A device flow approved at once; returns the finished process."""
    proc = start(env.auth_args(*extra), cenv)
    uri, code = wait_prompt(proc)
    env.idp.approve(code)
    assert proc.wait() == 0, proc.describe()
    proc.check_sanitizers()
    return proc


def read_creds(cenv):
    with open(creds_file(cenv)) as f:
        return json.load(f)


def assert_private(cenv):
    path = creds_file(cenv)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(path)) == ["credentials.json"]  # no temporary left


# ---- the device flow --------------------------------------------------------------------------

def test_device_flow_pending_slow_down_then_approved(env, cenv):
    proc = start(env.auth_args(), cenv)
    uri, code = wait_prompt(proc)
    assert uri == env.idp.verification_uri
    assert "(or open %s?user_code=%s)" % (uri, code) in proc.stderr
    g = env.idp.grant_for(code)
    assert g.client_id == CLIENT and g.scope.split() == ALL and g.audience == AUDIENCE
    wait_polls(g, 1)  # authorization_pending
    env.idp.slow_down_next = 1
    wait_polls(g, 2)  # slow_down: from now on 6 s apart
    env.idp.approve(code, sub="alice")
    assert proc.wait(timeout=relaytest.TIMEOUT + 10) == 0, proc.describe()
    assert len(g.polls) == 3
    gaps = [b - a for a, b in zip(g.polls, g.polls[1:])]
    assert 1.0 - 0.05 <= gaps[0] < 3, gaps  # the interval
    assert 6.0 - 0.05 <= gaps[1] < 9, gaps  # the interval plus 5 s
    assert g.too_soon == 0
    assert "signed in to %s" % env.relay.url("") in proc.stderr
    assert_private(cenv)
    c = read_creds(cenv)
    _, _, form = env.idp.token_requests[-1]
    assert c["issuer"] == env.idp.issuer and c["client_id"] == CLIENT
    assert c["token_endpoint"] == env.idp.token_endpoint and c["grant"] == "device_code"
    assert c["refresh_token"] in env.idp.refresh_tokens
    assert c["token_type"] == "Bearer" and c["scope"].split() == ALL
    expiry = calendar.timegm(time.strptime(c["expiry"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expiry - (time.time() + 300)) < 30, c["expiry"]
    # The cached token works for the admin commands, relay from the cache.
    p = run(env.create_args(), cenv)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("SWSRS_SESSION=")
    for s in secrets_of(env) + [c["access_token"], c["refresh_token"]]:
        assert s not in proc.stderr and s not in p.stderr and s not in p.stdout
        assert s not in env.relay.stderr  # nor in the relay's log


def test_expired_token(env, cenv):
    env.idp.device_lifetime = 2  # advertises 60 s, lives 2
    proc = start(env.auth_args(), cenv)
    wait_prompt(proc)
    assert proc.wait() == 1, proc.describe()
    assert proc.lines[-1] == "relay auth: the code expired (expired_token) before the sign-in " \
        "was approved; run relay auth again", proc.stderr
    assert not os.path.exists(creds_file(cenv))


def test_expires_in_honoured_by_the_client(env, cenv):
    env.idp.device_expires_in = 3
    env.idp.device_lifetime = 30  # the IdP would go on answering pending
    t0 = time.monotonic()
    proc = start(env.auth_args(), cenv)
    uri, code = wait_prompt(proc)
    assert "(the code expires in 3 s)" in proc.stderr
    assert proc.wait() == 1, proc.describe()
    assert proc.lines[-1] == "relay auth: the code expired after 3 s without the sign-in being " \
        "approved; run relay auth again", proc.stderr
    g = env.idp.grant_for(code)
    assert 1 <= len(g.polls) <= 3, g.polls
    # No poll once the code's 3 s were over.
    assert all(t < g.expires_at - 30 + 3 + 0.1 for t in g.polls), (g.polls, g.expires_at)
    assert time.monotonic() - t0 < 10
    assert not os.path.exists(creds_file(cenv))


def test_access_denied(env, cenv):
    proc = start(env.auth_args(), cenv)
    _, code = wait_prompt(proc)
    env.idp.deny(code)
    assert proc.wait() == 1, proc.describe()
    assert proc.lines[-1] == "relay auth: the sign-in was denied (access_denied)"
    assert not os.path.exists(creds_file(cenv))


def test_refusals_named(env, cenv, certs):
    p = run(env.auth_args("--client-id", "nobody"), cenv)
    assert_error(p, 1, "relay auth: device authorization refused: HTTP 401 invalid_client: "
                 "unknown client")
    plain = relaytest.Relay(certs=certs, log_level="info")  # --no-auth: no discovery
    try:
        p = run(["auth", "--relay", plain.url(""), "--ca", certs.ca_crt], cenv)
        assert_error(p, 1, "/.well-known/swsrs-config: HTTP 404", "--no-auth")
    finally:
        plain.stop()
    assert_error(run(["auth"], cenv), 2, "--relay URL is required")
    p = run(["auth", "--relay", env.relay.url("")], cenv)  # no --ca: nobody vouches for it
    assert_error(p, 1, "relay auth: %s/.well-known/swsrs-config: cannot connect to "
                 "127.0.0.1:%d: TLS handshake failed: certificate verify failed"
                 % (env.relay.url(""), env.relay.port), "pass --ca FILE")


# ---- later commands --------------------------------------------------------------------------

def test_refresh_before_expiry_and_after_401(env, cenv):
    env.idp.access_lifetime = 30  # inside the minute before expiry: renewed at once
    sign_in(env, cenv)
    first = read_creds(cenv)
    ino = os.stat(creds_file(cenv)).st_ino
    p = run(env.create_args(), cenv)
    assert p.returncode == 0, p.stderr
    refreshes = env.idp.grant_requests("refresh_token")
    assert [f["refresh_token"] for f in refreshes] == [first["refresh_token"]]
    assert refreshes[0]["client_id"] == CLIENT
    second = read_creds(cenv)
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]  # rotated, and kept
    assert os.stat(creds_file(cenv)).st_ino != ino  # replaced by rename
    assert_private(cenv)

    # A token the relay refuses (not expired by our clock) is renewed once.
    env.idp.access_lifetime = 3600
    second["access_token"] = "not-a-jwt"
    second["expiry"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3000))
    with open(creds_file(cenv), "w") as f:
        json.dump(second, f)
    p = run(env.create_args(), cenv)
    assert p.returncode == 0, p.stderr
    assert len(env.idp.grant_requests("refresh_token")) == 2

    # Revoked: a clear error, exit 1.
    env.idp.revoke_refresh_tokens()
    third = read_creds(cenv)
    third["expiry"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 10))
    with open(creds_file(cenv), "w") as f:
        json.dump(third, f)
    p = run(env.create_args(), cenv)
    assert_error(p, 1, "relay create: renewing the cached credentials failed: HTTP 400 "
                 "invalid_grant: refresh token unknown or revoked; run relay auth --relay " +
                 env.relay.url(""))
    for s in secrets_of(env) + [third["refresh_token"]]:
        assert s not in p.stderr


def test_cached_token_goes_to_its_own_relay_only(env, cenv):
    """Signed in to one relay, a command pointed at another (--admin-url)
    sends it no token: the other relay sees no Authorization header, and
    its 401 is explained.  The same relay named with a trailing slash, or
    by its wss:// URL, still gets the token."""
    with StubRelay(401, b'{"error":"unauthorized","message":"no token"}') as stub:
        sign_in(env, cenv)
        other = "http://127.0.0.1:%d" % stub.port
        p = run(["list", "--admin-url", other], cenv)
        assert_error(p, 1, "relay list: HTTP 401 unauthorized: no token (the cached credentials "
                     "are for " + env.relay.url(""))
        assert stub.seen == [None], stub.seen
        for url in (env.relay.url("") + "/", env.relay.url("").replace("https://", "wss://")):
            p = run(["list", "--admin-url", url, "--ca", env.certs.ca_crt, "--output", "json"],
                    cenv)
            assert p.returncode == 0, p.stderr


def test_403_when_the_scope_was_not_granted(env, cenv):
    env.idp.grant_scopes = "swsrs:session:read"
    sign_in(env, cenv)
    p = run(env.create_args(), cenv)
    line = assert_error(p, 1)
    assert line.startswith("relay create: HTTP 403 insufficient_scope: "), line
    p = run(["list", "--ca", env.certs.ca_crt], cenv)  # what was granted works
    assert p.returncode == 0, p.stderr


def test_expired_without_refresh_token(env, cenv):
    env.idp.issue_refresh = False
    sign_in(env, cenv)
    c = read_creds(cenv)
    assert "refresh_token" not in c
    c["expiry"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    with open(creds_file(cenv), "w") as f:
        json.dump(c, f)
    p = run(env.create_args(), cenv)
    assert assert_error(p, 1) == "relay create: the cached credentials have no refresh token; " \
        "sign in again with relay auth --relay " + env.relay.url("")


def test_logout(env, cenv):
    sign_in(env, cenv)
    path = creds_file(cenv)
    p = run(["auth", "--logout"], cenv)
    assert (p.returncode, p.stderr) == (0, "relay auth: signed out (removed %s)\n" % path)
    assert not os.path.exists(path)
    p = run(["auth", "--logout"], cenv)
    assert (p.returncode, p.stderr) == (0, "relay auth: not signed in (no %s)\n" % path)
    p = run(env.create_args() + ["--admin-url", env.relay.url("")], cenv)
    assert_error(p, 1, "relay create: HTTP 401", "relay auth --relay URL")


def test_home_config_without_xdg(env, tmp_path):
    env.reset()
    home = tmp_path / "home"
    home.mkdir()
    cenv = client_env(tmp_path, XDG_CONFIG_HOME=None, HOME=str(home))
    sign_in(env, cenv)
    path = home / ".config" / "swsrs" / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert run(env.create_args(), cenv).returncode == 0


def test_readable_credentials_refused(env, cenv):
    sign_in(env, cenv)
    os.chmod(creds_file(cenv), 0o644)
    p = run(env.create_args() + ["--admin-url", env.relay.url("")], cenv)
    assert_error(p, 1, "may be read by others (mode 0644)", "chmod 600")


# ---- client credentials ------------------------------------------------------------------------

def test_client_credentials(env, cenv):
    env.idp.clients["robot"] = "s3cret:with space"
    robot = dict(cenv, SWSRS_CLIENT_ID="robot", SWSRS_CLIENT_SECRET="s3cret:with space")
    p = run(env.auth_args("--client-credentials"), robot)
    assert p.returncode == 0, p.stderr
    form = env.idp.grant_requests("client_credentials")[-1]
    assert "client_secret" not in form and form["scope"].split() == ALL  # Basic, not the body
    c = read_creds(robot)
    assert c["grant"] == "client_credentials" and c["client_id"] == "robot"
    assert "refresh_token" not in c
    assert_private(robot)
    assert run(env.create_args(), robot).returncode == 0
    assert "s3cret" not in p.stderr

    # Renewed with the grant again when about to expire (no person needed).
    c["expiry"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    with open(creds_file(robot), "w") as f:
        json.dump(c, f)
    n = len(env.idp.grant_requests("client_credentials"))
    assert run(env.create_args(), robot).returncode == 0
    assert len(env.idp.grant_requests("client_credentials")) == n + 1
    # ... which needs the secret.
    with open(creds_file(robot), "w") as f:
        json.dump(c, f)
    p = run(env.create_args(), without(robot, "SWSRS_CLIENT_SECRET"))
    assert_error(p, 1, "client credentials grant: set SWSRS_CLIENT_SECRET")

    p = run(env.auth_args("--client-credentials"), dict(robot, SWSRS_CLIENT_SECRET="wrong"))
    assert_error(p, 1, "relay auth: the client credentials grant refused: HTTP 401 "
                 "invalid_client: bad client secret")
    p = run(env.auth_args("--client-credentials"), without(robot, "SWSRS_CLIENT_SECRET"))
    assert_error(p, 2, "SWSRS_CLIENT_ID and SWSRS_CLIENT_SECRET")
