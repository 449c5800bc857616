"""Target sessions: the relay dials the responder itself (browser SSH).

The relay runs as `./dev run` runs it, with --target-allow for its
embedded controller; the "browser" is Python websockets (wsproxy.py)
joining as the initiator, used by OpenSSH as its ProxyCommand; the target
is Debian's sshd on a free loopback port (sshtest.Sshd).

* ssh through a target session runs a command that takes 16 MiB up and
  sends 16 MiB down, SHA-256 equal; the session shows its target, and its
  counters the bytes; the responder token is refused (403); a second ssh
  re-joins the same session (a fresh dial).
* Refused at create: a target outside --target-allow (403 with a
  message), none without the flag (403), a malformed one (400, also
  `relay create --target` as usage).
* A host name resolving to a blocked address ("localhost" with only
  0.0.0.0/0 allowed) is refused at dial time: close 1008 with the reason.
* The target down: close 1011 "dial failed", and the controller hears the
  CLOSE event with that code.
"""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import websockets

import peertest
from peertest import DevRelay, create_session
from relaytest import RELAY_BIN, TIMEOUT, free_port
from sshtest import MIB, Sshd, sha256

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def sshd(tmp_path):
    d = Sshd(tmp_path / "sshd")
    yield d
    d.stop()


def post(relay, body):
    req = urllib.request.Request("https://127.0.0.1:%d/admin/sessions" % relay.port,
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=relay.ssl_context(), timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def create_target(relay, target):
    """`relay create --target` (our client), read back as JSON."""
    p = subprocess.run([RELAY_BIN, "create", "--admin-url", "https://127.0.0.1:%d" % relay.port,
                        "--ca", relay.ca, "--output", "json", "--target", target],
                       capture_output=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def url_of(relay, s):
    return "%s/relay/%s" % (relay.base_url, s["id"])


async def join(relay, s, token_key="initiator_token"):
    return await websockets.connect(
        url_of(relay, s), ssl=relay.ssl_context(), max_size=None, ping_interval=None,
        extra_headers={"Authorization": "Bearer " + s[token_key]})


def close_of(relay, s, timeout=TIMEOUT):
    """Joins as the initiator and waits for the relay's close."""
    async def body():
        ws = await join(relay, s)
        try:
            await asyncio.wait_for(ws.wait_closed(), timeout)
        finally:
            await ws.close()
        return ws.close_code, ws.close_reason
    return asyncio.run(body())


def test_ssh_16mib_each_way_through_a_target_session(tmp_path, sshd):
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    for path in (up, down):
        with open(path, "wb") as f:
            for _ in range(16):
                f.write(os.urandom(MIB))
    got_hash = tmp_path / "got-up.sha256"
    with DevRelay(tmp_path / "relay",
                  extra=["--target-allow", "127.0.0.1/32:%d" % sshd.port]) as relay:
        s = create_target(relay, "127.0.0.1:%d" % sshd.port)
        assert s["target"] == "127.0.0.1:%d" % sshd.port
        proxy = "%s %s %s %s" % (sys.executable, os.path.join(HERE, "wsproxy.py"),
                                 url_of(relay, s), relay.ca)
        env = dict(os.environ, SWSRS_TOKEN=s["initiator_token"])
        argv = (["ssh"] + sshd.opts() + ["-o", "ProxyCommand=" + proxy, "-p", str(sshd.port),
                 "relay-target", "sha256sum | cut -c1-64 > %s; cat %s" % (got_hash, down)])
        with open(up, "rb") as stdin:
            p = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=300, env=env)
        assert p.returncode == 0, (p.stderr, sshd.log()[-2000:], relay.stderr[-4000:])
        assert hashlib.sha256(p.stdout).hexdigest() == sha256(down)
        assert got_hash.read_text().strip() == sha256(up)
        st = peertest.wait_counters(relay, s["id"], 16 * MIB)
        assert st["target"] == s["target"]
        assert st["bytes_in"] > 16 * MIB and st["bytes_out"] > 16 * MIB, st
        # The responder slot is the relay's own.
        code, _ = post_upgrade_status(relay, s, "responder_token")
        assert code == 403
        # A second connection re-joins the same session: a fresh dial.
        p = subprocess.run(["ssh"] + sshd.opts() + ["-o", "ProxyCommand=" + proxy, "-p",
                                                    str(sshd.port), "relay-target", "echo again"],
                           capture_output=True, timeout=60, env=env)
        assert p.returncode == 0 and p.stdout == b"again\n", p.stderr


def post_upgrade_status(relay, s, token_key):
    async def body():
        try:
            ws = await join(relay, s, token_key)
            await ws.close()
            return 101, ""
        except websockets.InvalidStatusCode as e:
            return e.status_code, ""
    return asyncio.run(body())


def test_refused_at_create(tmp_path):
    allowed = free_port()
    with DevRelay(tmp_path / "relay", extra=["--target-allow", "127.0.0.1/32:%d" % allowed]) as relay:
        status, body = post(relay, {"target": "127.0.0.1:%d" % (allowed + 1)})
        assert status == 403 and body["error"] == "target_not_allowed", body
        assert "--target-allow" in body["message"], body  # loopback on another port
        status, body = post(relay, {"target": "10.1.2.3:%d" % allowed})
        assert status == 403, body
        status, body = post(relay, {"target": "127.0.0.1:0"})
        assert status == 400 and body["error"] == "invalid_request", body
        status, body = post(relay, {"target": 22})
        assert status == 400, body
        status, body = post(relay, {"target": "127.0.0.1:%d" % allowed})
        assert status == 201 and body["target"] == "127.0.0.1:%d" % allowed, body
        p = subprocess.run([RELAY_BIN, "create", "--admin-url", "https://127.0.0.1:%d" % relay.port,
                            "--ca", relay.ca, "--target", "no-port"], capture_output=True,
                           timeout=TIMEOUT)
        assert p.returncode == 2 and b"--target" in p.stderr, p.stderr
        p = subprocess.run([RELAY_BIN, "create", "--admin-url", "https://127.0.0.1:%d" % relay.port,
                            "--ca", relay.ca, "--target", "127.0.0.2:%d" % allowed],
                           capture_output=True, timeout=TIMEOUT)
        assert p.returncode == 1 and b"HTTP 403" in p.stderr, p.stderr
    with DevRelay(tmp_path / "relay-off") as relay:  # no --target-allow: off
        status, body = post(relay, {"target": "127.0.0.1:22"})
        assert status == 403 and "off" in body["message"], body
        status, body = post(relay, {})
        assert status == 201 and "target" not in body


def test_name_resolving_to_blocked_address_refused_at_dial(tmp_path, sshd):
    # 0.0.0.0/0 allows the port everywhere but does not name loopback.
    with DevRelay(tmp_path / "relay", extra=["--target-allow", "0.0.0.0/0:%d" % sshd.port,
                                             "--target-allow", "::/0:%d" % sshd.port]) as relay:
        status, s = post(relay, {"target": "localhost:%d" % sshd.port})
        assert status == 201, s
        code, reason = close_of(relay, s)
        assert code == 1008, (code, reason)
        assert "loopback" in reason and "not allowed" in reason, reason
        ev = relay.wait_for_log(msg="session closed by the relay", code=1008)
        assert "loopback" in ev["reason"], ev


def test_target_down_closes_1011_with_an_event(tmp_path):
    dead = free_port()  # nothing listens there
    with DevRelay(tmp_path / "relay", extra=["--target-allow", "127.0.0.1/32:%d" % dead]) as relay:
        status, s = post(relay, {"target": "127.0.0.1:%d" % dead})
        assert status == 201, s
        code, reason = close_of(relay, s)
        assert code == 1011 and reason.startswith("dial failed"), (code, reason)
        ev = relay.wait_for_log(msg="session closed by the relay", code=1011)
        assert ev["reason"].startswith("dial failed"), ev
