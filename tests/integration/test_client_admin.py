"""`relay create|list|get|delete` against real relays: one run with
--no-auth (as `./dev run` serves) over TLS, one with OIDC tokens from the
test IdP.  What is checked: `eval $(relay create --output env)` sets
exactly the three variables and the tokens it printed open both slots
(python websockets relays a message between them); JSON and table output
against the relay's own answer (read with curl); a listing paged a few at a
time is whole; get and delete; the exact one-line errors and exit statuses
(404, 400, 403 without the scope, 401 without credentials, an unreachable
relay, a certificate nobody vouches for) and usage errors (exit 2); which
token is used (--oidc-token over $SWSRS_OIDC_TOKEN over the cache); and
that a token given with --oidc-token is gone from /proc/PID/cmdline and
never printed.
"""

import asyncio
import json
import os
import pty
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
import websockets

import relaytest
from clientcli import (CREATE, DELETE, READ, OidcEnv, StubRelay, assert_error, client_env,
                       creds_file, run)
from idp import curl_http

ALL = " ".join((CREATE, READ, DELETE))
ID_RE = r"[A-Za-z0-9_-]{22}"


@pytest.fixture(scope="module")
def plain_relay(certs):
    """--no-auth, TLS with the test CA's certificate."""
    r = relaytest.Relay(certs=certs, log_level="info", extra=["--max-ttl", "2h"])
    yield r
    r.stop()
    r.kill()


@pytest.fixture
def cenv(tmp_path):
    return client_env(tmp_path)


def admin(relay, certs, *args):
    return list(args) + ["--admin-url", relay.url(""), "--ca", certs.ca_crt]


def ws_ssl(certs):
    ctx = ssl.create_default_context(cafile=certs.ca_crt)
    return ctx


async def relay_one_message(url, t1, t2, certs):
    """The two slot tokens open both slots: b gets what a sends."""
    ctx = ws_ssl(certs)
    async with websockets.connect(url, ssl=ctx,
                                  extra_headers={"Authorization": "Bearer " + t1}) as a:
        async with websockets.connect(url, ssl=ctx,
                                      extra_headers={"Authorization": "Bearer " + t2}) as b:
            await a.send(b"hello through the relay")
            return await asyncio.wait_for(b.recv(), relaytest.TIMEOUT)


# ---- create ------------------------------------------------------------------------------

def test_create_env_is_exact_and_evaluates(plain_relay, certs, cenv):
    p = run(admin(plain_relay, certs, "create", "--output", "env"), cenv)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert re.fullmatch(r"SWSRS_SESSION=%s\nSWSRS_INITIATOR_TOKEN=%s\nSWSRS_RESPONDER_TOKEN=%s\n"
                        % (ID_RE, ID_RE, ID_RE), p.stdout), p.stdout
    # eval $(...) as users type it, in a POSIX shell, unquoted.
    cmd = ('eval $("$RELAY" create --admin-url "$URL" --ca "$CA" --output env) && '
           'printf "%s\\n" "$SWSRS_SESSION" "$SWSRS_INITIATOR_TOKEN" "$SWSRS_RESPONDER_TOKEN"')
    env = dict(cenv, RELAY=relaytest.RELAY_BIN, URL=plain_relay.url(""), CA=certs.ca_crt)
    sh = subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True,
                        timeout=relaytest.TIMEOUT)
    assert sh.returncode == 0, sh.stderr
    sid, ti, tr = sh.stdout.split()
    assert all(re.fullmatch(ID_RE, v) for v in (sid, ti, tr)), sh.stdout
    # They are the relay's: the session exists and the tokens open its slots.
    got = curl_http(plain_relay.url("/admin/sessions/" + sid), cacert=certs.ca_crt)
    assert got.status == 200, got
    url = "wss://127.0.0.1:%d/relay/%s" % (plain_relay.port, sid)
    assert asyncio.run(relay_one_message(url, ti, tr, certs)) == b"hello through the relay"


def test_create_json_and_table(plain_relay, certs, cenv):
    t0 = int(time.time())
    p = run(admin(plain_relay, certs, "create", "--ttl", "10m", "--peer-wait", "30s"), cenv)
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)  # not a terminal: JSON by default
    assert set(body) == {"id", "initiator_token", "responder_token", "initiator_url",
                         "responder_url", "created_at", "expires_at"}, body
    created = time.mktime(time.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ"))
    expires = time.mktime(time.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert expires - created == 600 and created >= t0 - 5, body
    p = run(admin(plain_relay, certs, "create", "--output", "table"), cenv)
    assert p.returncode == 0, p.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in p.stdout.splitlines())
    assert set(rows) == {"session", "initiator token", "responder token", "initiator url",
                         "responder url", "created", "expires"}, rows
    assert rows["initiator url"] == "wss://127.0.0.1:%d/relay/%s" % (plain_relay.port,
                                                                      rows["session"])


def test_table_by_default_on_a_terminal(plain_relay, certs, cenv):
    master, slave = pty.openpty()
    try:
        p = subprocess.run([relaytest.RELAY_BIN] + admin(plain_relay, certs, "list"), env=cenv,
                           stdout=slave, stderr=subprocess.PIPE, timeout=relaytest.TIMEOUT)
        os.close(slave)
        slave = None
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0, p.stderr
    assert out.split()[:3] == [b"SESSION", b"STATE", b"PEERS"], out


def test_create_refused_above_maximum(plain_relay, certs, cenv):
    p = run(admin(plain_relay, certs, "create", "--ttl", "3h"), cenv)
    line = assert_error(p, 1, "relay create: HTTP 400 ")
    assert "ttl" in line, line


# ---- list, get, delete ----------------------------------------------------------------------

def make_sessions(relay, certs, env, n):
    ids = []
    for _ in range(n):
        p = run(admin(relay, certs, "create", "--output", "json"), env)
        assert p.returncode == 0, p.stderr
        ids.append(json.loads(p.stdout)["id"])
    return ids


def test_list_pages_and_formats(plain_relay, certs, cenv):
    ids = make_sessions(plain_relay, certs, cenv, 5)
    p = run(admin(plain_relay, certs, "list", "--page-size", "2"), cenv)
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)["sessions"]
    # The relay's own listing (curl) has exactly what we printed, page by page or not.
    whole = curl_http(plain_relay.url("/admin/sessions"), cacert=certs.ca_crt).json()["sessions"]
    assert sorted(s["id"] for s in listed) == sorted(s["id"] for s in whole)
    assert set(ids) <= {s["id"] for s in listed}
    assert len(listed) == len({s["id"] for s in listed})  # nothing twice across pages
    p = run(admin(plain_relay, certs, "list", "--output", "env", "--page-size", "3"), cenv)
    assert p.returncode == 0, p.stderr
    m = re.fullmatch(r"SWSRS_SESSIONS='([A-Za-z0-9_ -]*)'\n", p.stdout)
    assert m and sorted(m.group(1).split()) == sorted(s["id"] for s in whole), p.stdout
    p = run(admin(plain_relay, certs, "list", "--output", "table"), cenv)
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["SESSION", "STATE", "PEERS"], lines[0]
    assert {l.split()[0] for l in lines[1:]} == {s["id"] for s in whole}


def test_get_and_delete(plain_relay, certs, cenv):
    sid, = make_sessions(plain_relay, certs, cenv, 1)
    p = run(admin(plain_relay, certs, "get", sid), cenv)
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["id"] == sid and st["state"] == "pending", st
    assert st["initiator_connected"] is False and st["bytes_in"] == 0, st
    p = run(admin(plain_relay, certs, "get", sid, "--output", "env"), cenv)
    assert p.stdout.splitlines()[:2] == ["SWSRS_SESSION=" + sid, "SWSRS_STATE=pending"], p.stdout
    p = run(admin(plain_relay, certs, "delete", sid, "--output", "table"), cenv)
    assert (p.returncode, p.stdout) == (0, "deleted %s\n" % sid), p.stderr
    assert curl_http(plain_relay.url("/admin/sessions/" + sid), cacert=certs.ca_crt).status == 404
    for cmd in ("get", "delete"):
        p = run(admin(plain_relay, certs, cmd, sid), cenv)
        assert assert_error(p, 1) == "relay %s: HTTP 404 not_found: session not found" % cmd


# ---- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,part", [
    (["create", "--output", "yaml"], "--output must be json, env or table"),
    (["create", "extra"], 'unexpected argument "extra"'),
    (["create", "--ttl", "soon"], "ttl must be a duration"),
    (["create", "--bogus"], "unknown flag --bogus"),
    (["get"], "one session ID is needed"),
    (["delete", "a", "b"], "one session ID is needed"),
    (["get", "../admin"], "is not a session id"),
])
def test_usage_errors(plain_relay, certs, cenv, args, part):
    p = run(admin(plain_relay, certs, *args), cenv)
    assert_error(p, 2, part)


def test_no_relay_named_is_a_usage_error(cenv):
    assert_error(run(["list"], cenv), 2, "pass --admin-url URL", "relay auth --relay URL")
    # SWSRS_ADMIN_URL names it too (here: nobody listens there).
    p = run(["list"], dict(cenv, SWSRS_ADMIN_URL="http://127.0.0.1:1"))
    assert_error(p, 1, "relay list: cannot connect to 127.0.0.1:1")


def test_unreachable_relay(cenv):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    p = run(["create", "--admin-url", "https://127.0.0.1:%d" % port], cenv)
    assert assert_error(p, 1) == "relay create: cannot connect to 127.0.0.1:%d: " \
        "connection refused" % port
    p = run(["create", "--admin-url", "https://relay.invalid"], cenv)
    assert_error(p, 1, "relay create: ", "relay.invalid")


def test_next_address_when_the_first_drops_connects(cenv, tmp_path):
    """A name with two addresses whose first drops connection attempts (a
    black-holed IPv6 route, say): the client gives each attempt its share
    of the connect budget and reaches the second in time.  The name comes
    from an /etc/hosts bind-mounted in a mount namespace of the command's
    own (unshare -m), ::1 first by the address-selection rules; [::1]:P
    is a listener whose accept queue is full (SYNs dropped), 127.0.0.1:P
    an HTTP stub.  Before, the first address took the whole budget: exit 1,
    "timed out connecting"."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a private /etc/hosts")
    hole = socket.socket(socket.AF_INET6)
    try:
        hole.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    hole.listen(0)
    port = hole.getsockname()[1]
    fill = []
    for _ in range(4):  # the accept queue full: further SYNs are dropped
        c = socket.socket(socket.AF_INET6)
        c.setblocking(False)
        c.connect_ex(("::1", port))
        fill.append(c)

    stub = StubRelay(200, b'{"sessions":[]}', port=port)
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 twohost.test\n127.0.0.1 twohost.test\n")
    try:
        t0 = time.monotonic()
        p = subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
             relaytest.RELAY_BIN, "list", "--admin-url", "http://twohost.test:%d" % port,
             "--timeout", "4s", "--output", "json"],
            env=cenv, capture_output=True, text=True, timeout=relaytest.TIMEOUT)
        took = time.monotonic() - t0
        if p.returncode != 0 and p.stderr.startswith(("unshare:", "mount:")):
            pytest.skip("no private mount namespace here: " + p.stderr.strip())
        assert p.returncode == 0, (p.returncode, p.stderr)
        assert json.loads(p.stdout) == {"sessions": []}, p.stdout
        assert took > 1.5, took  # the first attempt had its half of the 4 s
    finally:
        stub.close()
        hole.close()
        for c in fill:
            c.close()


def test_bad_certificate_without_ca(plain_relay, cenv):
    p = run(["create", "--admin-url", plain_relay.url("")], cenv)
    line = assert_error(p, 1, "relay create: cannot connect to 127.0.0.1:%d: TLS handshake "
                        "failed: certificate verify failed" % plain_relay.port, "pass --ca FILE")
    # --insecure works, and says so.
    p = run(["create", "--admin-url", plain_relay.url(""), "--insecure", "--output", "env"], cenv)
    assert p.returncode == 0, p.stderr
    assert "SWSRS_SESSION=" in p.stdout
    assert "--insecure" in p.stderr and "not verified" in p.stderr, p.stderr
    assert line


# ---- with OIDC -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oidc(certs):
    o = OidcEnv(certs)
    yield o
    o.close()


def test_403_without_the_scope(oidc, cenv):
    tok = oidc.token(READ)
    p = run(admin(oidc.relay, oidc.certs, "create", "--oidc-token", tok), cenv)
    line = assert_error(p, 1)
    assert line.startswith("relay create: HTTP 403 insufficient_scope: "), line
    assert tok not in p.stderr


def test_401_without_credentials(oidc, cenv):
    p = run(admin(oidc.relay, oidc.certs, "list"), cenv)
    line = assert_error(p, 1, "relay list: HTTP 401", "relay auth --relay URL")
    assert "--oidc-token" in line


def write_cache(env, relay_url, token):
    path = creds_file(env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"access_token": token, "issuer": "https://idp.test", "relay": relay_url,
                   "expiry": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                           time.gmtime(time.time() + 3600))}, f)


def test_token_precedence(oidc, cenv):
    good, weak = oidc.token(ALL), oidc.token(READ)
    base = admin(oidc.relay, oidc.certs, "create", "--output", "env")
    # The flag over the environment.
    p = run(base + ["--oidc-token", good], dict(cenv, SWSRS_OIDC_TOKEN=weak))
    assert p.returncode == 0, p.stderr
    # The environment over the cache.
    write_cache(cenv, oidc.relay.url(""), good)
    p = run(base, dict(cenv, SWSRS_OIDC_TOKEN=weak))
    assert_error(p, 1, "HTTP 403 insufficient_scope")
    # The cache, alone; and it names the relay when --admin-url is left out.
    p = run(base, cenv)
    assert p.returncode == 0, p.stderr
    p = run(["create", "--ca", oidc.certs.ca_crt, "--output", "env"], cenv)
    assert p.returncode == 0, p.stderr
    for out in (p.stdout, p.stderr):
        assert good not in out and weak not in out


def test_token_not_in_cmdline_or_output(oidc, cenv):
    """A server that accepts and never answers keeps the command alive
    while /proc/PID/cmdline is read."""
    tok = oidc.token(ALL)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except socket.timeout:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        proc = subprocess.Popen([relaytest.RELAY_BIN, "list", "--oidc-token", tok,
                                 "--admin-url", "http://127.0.0.1:%d" % srv.getsockname()[1],
                                 "--timeout", "5s"], env=cenv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + relaytest.TIMEOUT
        while not held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held, "the command never connected"
        with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
            cmdline = f.read()
        assert b"--oidc-token" in cmdline and b"list" in cmdline, cmdline
        assert tok.encode() not in cmdline
        assert tok[:20].encode() not in cmdline
        out, err = proc.communicate(timeout=relaytest.TIMEOUT)
        assert proc.returncode == 1, (out, err)
        assert "timed out" in err, err
        assert tok not in out and tok not in err
    finally:
        stop.set()
        t.join(timeout=5)
        for c in held:
            c.close()
        srv.close()
