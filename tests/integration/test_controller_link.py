"""The controller link (issue 3), end to end: `relay serve` and
`relay-controller run` as separate processes over mutual TLS, with
certificates from real enrolment (init-ca, gen-csr, sign-csr).

* test_round_trip[embedded|remote] — Admin (create/get/list/delete),
  Validate (pairing two WebSocket peers, bytes hashed end to end), Events
  up (attach state and byte counters read back through GET) and Events
  down (DELETE kicks both peers with 1001); the same test in both modes.
* test_bad_controllers_refused — a relay certificate presented as a
  controller (as issued, and re-made with clientAuth), a controller from an
  unknown CA and an expired controller certificate are all refused: the
  relay logs "controller refused" and /readyz stays 503; a valid
  certificate made the same way is then accepted.
* test_controller_killed_mid_calls — 1,000 admin calls in flight on a
  SIGSTOPped controller all answer 503 within 1 s of its SIGKILL; an open
  session keeps flowing; a restarted controller (same --state-dir) is back
  at once and sessions made before the kill still pair.
* test_calls_that_timed_out_while_the_controller_was_stopped_are_not_carried_out
  — 1,000 creates and a DELETE sent to a SIGSTOPped controller answer 503
  at their 1 s deadline; woken, the controller finds their resets behind
  them and serves none: no extra session, the deleted one still there.
* test_two_controllers_one_relay — two controllers with their own state
  and their own certificates from issue-cert share one relay, which sees
  two controllers: creates are spread round-robin and
  Validate/GET fail over on NOT_FOUND, so every session pairs; LIST merges
  both.
* test_issue_cert — `relay-controller issue-cert` as an operator runs it,
  checked with the openssl command line: a 0600 key, a certificate that
  verifies for clientAuth (not serverAuth) with the controller identity;
  never overwritten, bad names and a missing CA refused.
* test_one_controller_two_relays — one controller dials two relays; each
  session's URL names the relay it was created on, and only that relay
  admits its peers.
* test_redial_backs_off_after_hello_and_drop — a Python relay impostor
  accepts, completes TLS and HTTP/2, says Hello and drops, again and again:
  the controller's dials thin out (exponential backoff with full jitter),
  the Hello does not reset the backoff.
"""

import asyncio
import datetime
import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import time

import pytest
import websockets
import websockets.exceptions

import grpcpeer as gp
import relaytest

T = relaytest.TIMEOUT


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return gp.Pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def create(relay, ttl=600, peer_wait=60):
    r = gp.http(relay, "POST", "/admin/sessions",
                json.dumps({"ttl_seconds": ttl, "peer_wait_seconds": peer_wait}).encode())
    assert r.status == 201, r
    return r.json()


def get_status(relay, sid):
    r = gp.http(relay, "GET", "/admin/sessions/" + sid)
    return r.status, (r.json() if r.body else None)


def wait_status(relay, sid, pred, timeout=15.0):
    """Polls GET /admin/sessions/{id} until pred(status) holds (events are
    asynchronous; byte counters are reported about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        code, st = get_status(relay, sid)
        assert code == 200, (code, st)
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise relaytest.TestError("session status never matched: %r" % st)
        time.sleep(0.1)


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def ws_open(relay, sid, token, how="header"):
    """A WebSocket peer on /relay/{sid}; the token by header, query or
    subprotocol."""
    url = "ws://127.0.0.1:%d/relay/%s" % (relay.port, sid)
    kw = dict(open_timeout=T, close_timeout=5, ping_interval=None, max_size=None)
    if how == "header":
        kw["extra_headers"] = [("Authorization", "Bearer " + token)]
    elif how == "query":
        url += "?token=" + token
    else:
        kw["subprotocols"] = ["swsrs.token." + token]
    return await websockets.connect(url, **kw)


async def ws_refused(relay, sid, token):
    """The HTTP status a refused upgrade gets (fails if it is accepted)."""
    try:
        ws = await ws_open(relay, sid, token)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    raise AssertionError("upgrade on %s was accepted" % sid)


async def pump_one_way(src, dst, sizes, text):
    """src sends binary messages of `sizes` and one text message; dst must
    get the same messages, types and bytes (SHA-256).  Returns bytes sent."""
    sent, got = hashlib.sha256(), hashlib.sha256()
    total = 0
    for n in sizes:
        data = os.urandom(n)
        sent.update(data)
        total += n
        await src.send(data)
    await src.send(text)
    for n in sizes:
        m = await asyncio.wait_for(dst.recv(), T)
        assert isinstance(m, bytes) and len(m) == n, (type(m), len(m), n)
        got.update(m)
    m = await asyncio.wait_for(dst.recv(), T)
    assert m == text, m
    assert sent.hexdigest() == got.hexdigest()
    return total + len(text.encode("utf-8"))


async def exchange(a, b, sizes=(1, 1500, 70000)):
    """Both directions; returns the payload bytes that crossed the relay."""
    n = await pump_one_way(a, b, sizes, "héllo from the initiator ✓")
    n += await pump_one_way(b, a, tuple(reversed(sizes)), "and back")
    return n


async def pair(relay, created, sizes=(1, 1500, 70000)):
    """Opens both slots of a created session and exchanges data."""
    a = await ws_open(relay, created["id"], created["initiator_token"], "header")
    b = await ws_open(relay, created["id"], created["responder_token"], "query")
    n = await exchange(a, b, sizes)
    return a, b, n


async def closed_with(ws, code):
    await asyncio.wait_for(ws.wait_closed(), T)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


def run(coro, timeout=240):
    """Runs a scenario on a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def start_remote(start_relay, start_controller, pki, tmp_path, node="relay-1",
                 relay_extra=(), ctl_state=True):
    relay = gp.start_remote_relay(start_relay, pki, node, extra=relay_extra)
    state = str(tmp_path / ("state-" + node)) if ctl_state else None
    ctl = start_controller(gp.controller_args([relay], pki.ca_dir, state))
    gp.wait_ready(relay)
    return relay, ctl


# --------------------------------------------------------------------------
# Validate / Admin / Events round trips, embedded and remote
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["embedded", "remote"])
def test_round_trip(mode, pki, tmp_path, start_relay, start_controller):
    if mode == "embedded":
        relay = start_relay(plain=True)
        relay.wait_for_log(msg="embedded controller started")
        gp.wait_ready(relay)
    else:
        relay, ctl = start_remote(start_relay, start_controller, pki, tmp_path)
        ctl.wait_for_log(msg="relay link up", relay="relay-1")
    public_url = relay.listening["public_url"]

    # Admin: create.
    r = gp.http(relay, "POST", "/admin/sessions", b'{"ttl_seconds": 600, "peer_wait_seconds": 30}')
    assert r.status == 201, r
    c = r.json()
    sid = c["id"]
    assert r.header("Location") == "/admin/sessions/" + sid
    assert len(sid) == 22 and len(c["initiator_token"]) == 22 and len(c["responder_token"]) == 22
    assert c["initiator_url"] == "%s/relay/%s" % (public_url, sid), (c, public_url)
    created = datetime.datetime.strptime(c["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    expires = datetime.datetime.strptime(c["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert (expires - created).total_seconds() == 600

    code, st = get_status(relay, sid)
    assert code == 200 and st["id"] == sid and st["state"] == "pending", st
    assert not st["initiator_connected"] and not st["responder_connected"], st
    assert st["bytes_in"] == 0 and st["bytes_out"] == 0, st

    async def scenario():
        # Validate: a wrong token and an unknown session are refused.
        assert await ws_refused(relay, sid, gp.token22()) == 401
        assert await ws_refused(relay, gp.token22(), c["initiator_token"]) == 404
        a = await ws_open(relay, sid, c["initiator_token"], "header")
        # Events up: the attach reaches the controller and shows in GET.
        st = await in_thread(wait_status, relay, sid,
                             lambda s: s["initiator_connected"] and s["state"] == "half_open")
        assert not st["responder_connected"], st
        b = await ws_open(relay, sid, c["responder_token"], "subprotocol")
        n = await exchange(a, b)
        # Each slot is taken now.
        assert await ws_refused(relay, sid, c["initiator_token"]) == 409
        st = await in_thread(wait_status, relay, sid,
                             lambda s: s["state"] == "open" and s["bytes_in"] + s["bytes_out"] == n)
        assert st["initiator_connected"] and st["responder_connected"], st
        # bytes_in: what the initiator sent; bytes_out: what it got back.
        assert st["bytes_in"] == 1 + 1500 + 70000 + len("héllo from the initiator ✓".encode()), st
        assert st["bytes_out"] == 1 + 1500 + 70000 + len("and back"), st
        # Admin: list.
        r = await in_thread(gp.http, relay, "GET", "/admin/sessions")
        assert r.status == 200, r
        assert sid in [x["id"] for x in r.json()["sessions"]]
        # Admin delete, Events down: the controller kicks both peers (1001).
        r = await in_thread(gp.http, relay, "DELETE", "/admin/sessions/" + sid)
        assert r.status == 204, r
        await closed_with(a, 1001)
        await closed_with(b, 1001)
        assert await ws_refused(relay, sid, c["responder_token"]) == 404

    run(scenario())
    assert get_status(relay, sid)[0] == 404
    assert gp.http(relay, "DELETE", "/admin/sessions/" + sid).status == 404
    relay.wait_for_log(msg="session kicked", session=sid)
    for line in relay.lines:  # slot tokens are never logged
        assert c["initiator_token"] not in line and c["responder_token"] not in line


# --------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------

def make_cert(pki, path, uri, eku, not_before, not_after, cn="impostor"):
    """A certificate signed by the controller CA (CA/ca.key) with the
    given URI SAN, extended key usage and validity; returns (crt, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    with open(pki.ca_key, "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(pki.ca_crt, "rb") as f:
        ca_crt = x509.load_pem_x509_certificate(f.read())
    key = ec.generate_private_key(ec.SECP256R1())
    ekus = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
            "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH}
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_crt.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ekus[eku]]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    crt_path, key_path = str(path) + ".crt", str(path) + ".key"
    with open(crt_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return crt_path, key_path


def test_bad_controllers_refused(pki, tmp_path, start_relay, start_controller):
    relay = gp.start_remote_relay(start_relay, pki, "relay-guarded")
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    relay_crt, relay_key = pki.relay("relay-guarded")
    stranger = tmp_path / "stranger-ca"
    gp.run_tool([relaytest.CONTROLLER_BIN, "init-ca", "--dir", stranger])
    cases = [
        # A relay's own certificate as issued (serverAuth only).
        ("relay-cert", relay_crt, relay_key, "unsuitable certificate purpose"),
        # A relay identity even with clientAuth: the pinned URI decides.
        ("relay-identity",) + make_cert(pki, tmp_path / "relayid", "urn:relay:role:relay",
                                        "clientAuth", now - day, now + day)
        + ("lacks the controller identity",),
        # A real controller certificate from another CA.
        ("unknown-ca", str(stranger / "controller.crt"), str(stranger / "controller.key"),
         "unable to get local issuer certificate"),
        # The right identity, expired yesterday.
        ("expired",) + make_cert(pki, tmp_path / "expired", "urn:relay:role:controller",
                                 "clientAuth", now - 10 * day, now - day)
        + ("certificate has expired",),
    ]
    for name, crt, key, why in cases:
        before = len(relay.find_logs(msg="controller refused"))
        ctl = start_controller(["run", "--relay", "127.0.0.1:%d" % relay.tunnel_port,
                                "--cert", crt, "--key", key, "--ca", pki.ca_crt,
                                "--log-level", "debug"])
        ctl.wait_for_log(msg="dial failed")
        deadline = time.monotonic() + T
        while len(relay.find_logs(msg="controller refused")) == before:
            assert time.monotonic() < deadline, "%s: no refusal logged\n%s" % (
                name, relay.describe())
            time.sleep(0.05)
        refusal = relay.find_logs(msg="controller refused")[before]
        assert why in refusal["reason"], (name, refusal)
        assert refusal["peer"].startswith("127.0.0.1:"), refusal
        assert relay.get("/readyz").status == 503, name
        assert gp.metrics(relay)["relay_controller_links"] == 0, name
        ctl.stop()
        assert not ctl.find_logs(msg="relay link up"), name
    m = gp.metrics(relay)
    assert m["relay_controller_links_refused_total"] >= len(cases), m
    assert not relay.find_logs(msg="controller link up")

    # Control: a certificate made the same way, but valid, is accepted.
    crt, key = make_cert(pki, tmp_path / "good", "urn:relay:role:controller", "clientAuth",
                         now - day, now + day, cn="good-controller")
    ctl = start_controller(["run", "--relay", "127.0.0.1:%d" % relay.tunnel_port, "--cert", crt,
                            "--key", key, "--ca", pki.ca_crt, "--accept-unauthenticated"])
    gp.wait_ready(relay)
    line = relay.wait_for_log(msg="controller link up")
    assert line["controller"].startswith("good-controller#"), line
    assert create(relay)["id"]


# --------------------------------------------------------------------------
# Controller death under load, restart, durability
# --------------------------------------------------------------------------

CALLS = 1000


async def _open_keepalive(relay, sid, n):
    """n keep-alive connections, each proven by one answered GET."""
    sem = asyncio.Semaphore(100)
    req = relaytest.http_request("GET", "/admin/sessions/" + sid)

    async def one():
        async with sem:
            rd, wr = await asyncio.open_connection("127.0.0.1", relay.port)
            wr.write(req)
            status, _ = await _read_http(rd)
            assert status == 200, status
            return rd, wr
    return await asyncio.gather(*[one() for _ in range(n)])


async def _read_http(rd):
    head = await rd.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    body = await rd.readexactly(length) if length else b""
    return status, body


def _raise_fd_limit(need):
    """1,000 client sockets here and as many in the relay (which inherits
    the limit): raise the soft limit, or skip where the hard one is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, need))


def test_controller_killed_mid_calls(pki, tmp_path, start_relay, start_controller):
    _raise_fd_limit(2 * CALLS + 512)
    # A long call deadline: the 503s below must come from the link dropping.
    relay = gp.start_remote_relay(start_relay, pki, "relay-load", log_level="info",
                                  extra=["--call-timeout", "60s"])
    state = tmp_path / "state"
    args = gp.controller_args([relay], pki.ca_dir, state, log_level="info")
    ctl = start_controller(args)
    gp.wait_ready(relay)
    old = create(relay)      # paired only after the restart: durability
    live = create(relay)     # open across the outage
    numbers = {}

    async def scenario():
        a, b, _ = await pair(relay, live)
        conns = await _open_keepalive(relay, old["id"], CALLS)
        base = (await in_thread(gp.metrics, relay))
        os.kill(ctl.proc.pid, signal.SIGSTOP)
        req = relaytest.http_request("GET", "/admin/sessions/" + old["id"])
        done = {}

        async def call(i, rd, wr):
            wr.write(req)
            status, body = await _read_http(rd)
            done[i] = time.monotonic()
            return status, body
        tasks = [asyncio.ensure_future(call(i, rd, wr)) for i, (rd, wr) in enumerate(conns)]
        # Wait until the relay has every call out on the (frozen) link.
        deadline = time.monotonic() + 30
        while True:
            m = await in_thread(gp.metrics, relay)
            inflight = m["relay_controller_calls_total"] - base["relay_controller_calls_total"]
            if inflight >= CALLS:
                break
            assert time.monotonic() < deadline, "only %d calls in flight" % inflight
            await asyncio.sleep(0.05)
        assert inflight == CALLS and not done, (inflight, len(done))
        t_kill = time.monotonic()
        os.kill(ctl.proc.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        lat = sorted(done[i] - t_kill for i in range(CALLS))
        numbers.update(max_s=lat[-1], p50_s=lat[CALLS // 2], p99_s=lat[int(CALLS * 0.99)])
        for status, body in results:
            assert status == 503, (status, body)
            assert json.loads(body)["error"] == "controller_unavailable", body
        assert lat[-1] < 1.0, numbers
        m = await in_thread(gp.metrics, relay)
        assert (m["relay_controller_calls_unavailable_total"]
                - base["relay_controller_calls_unavailable_total"]) >= CALLS, m
        assert m["relay_controller_links"] == 0
        for _, wr in conns:
            wr.close()

        # No link: an open session keeps flowing; new pairings fail fast.
        await exchange(a, b, sizes=(10, 20000))
        t0 = time.monotonic()
        assert await ws_refused(relay, old["id"], old["initiator_token"]) == 503
        assert time.monotonic() - t0 < 1.0
        r = await in_thread(gp.http, relay, "POST", "/admin/sessions", b"{}")
        assert r.status == 503 and r.json()["error"] == "controller_unavailable", r
        assert (await in_thread(relay.get, "/readyz")).status == 503

        # Restart with the same state: back at once, and the old sessions live.
        t0 = time.monotonic()
        ctl2 = await in_thread(start_controller, args)
        await in_thread(gp.wait_ready, relay)
        numbers["relink_s"] = time.monotonic() - t0
        assert numbers["relink_s"] < 5.0, numbers
        ctl2.wait_for_log(msg="registry open", pred=lambda l: l.get("sessions", 0) >= 2)
        code, st = await in_thread(get_status, relay, old["id"])
        assert code == 200 and st["state"] == "pending", (code, st)
        c, d, _ = await pair(relay, old)
        # The session that stayed open is still known and still flows.
        await exchange(a, b, sizes=(5,))
        code, _ = await in_thread(get_status, relay, live["id"])
        assert code == 200
        for ws in (a, b, c, d):
            await ws.close()

    run(scenario())
    print("\ncontroller kill with %d calls in flight: all 503, max %.3f s, p99 %.3f s, "
          "p50 %.3f s after SIGKILL; link back %.2f s after restart" % (
              CALLS, numbers["max_s"], numbers["p99_s"], numbers["p50_s"], numbers["relink_s"]))


def test_controller_without_the_session_closes_its_peers(pki, tmp_path, start_relay,
                                                         start_controller):
    """A controller that lost a session (killed between journaling a DELETE
    and sending its Kick; here: restarted on an empty registry) hears of
    its live peers from the relay's re-announcement and closes them 1001,
    instead of letting them relay until the TTL."""
    relay, ctl = start_remote(start_relay, start_controller, pki, tmp_path, ctl_state=False)
    args = ctl.argv[1:]

    async def scenario():
        c = await in_thread(create, relay)
        a, b, _ = await pair(relay, c)
        ctl.kill()
        await exchange(a, b, sizes=(10,))  # no controller: still flowing
        await in_thread(start_controller, args)  # memory-only: it knows nothing
        t0 = time.monotonic()
        await in_thread(gp.wait_ready, relay)
        await closed_with(a, 1001)
        await closed_with(b, 1001)
        return time.monotonic() - t0

    took = run(scenario())
    assert took < 5.0, took
    relay.wait_for_log(msg="session kicked", reason="session unknown")


def test_readiness_while_the_controller_hangs(pki, tmp_path, start_relay, start_controller):
    """A SIGSTOPped controller keeps its link up until the ping timeout,
    but answers nothing: /readyz says so (503) once its keepalive probe is
    overdue, and is 200 again as soon as it answers."""
    relay, ctl = start_remote(start_relay, start_controller, pki, tmp_path,
                              relay_extra=["--ping-interval", "500ms", "--ping-timeout", "20s"])
    assert relay.get("/readyz").status == 200
    os.kill(ctl.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        deadline = t0 + 10
        while relay.get("/readyz").status == 200:
            assert time.monotonic() < deadline, "/readyz stayed 200 for a hung controller"
            time.sleep(0.1)
        took = time.monotonic() - t0
        r = relay.get("/readyz")
        assert r.status == 503 and r.json()["message"] == "the controller is not answering", r
        assert took < 5.0, took  # interval + 2 s overdue, with room for a loaded machine
    finally:
        os.kill(ctl.proc.pid, signal.SIGCONT)
    gp.wait_ready(relay)


STOPPED_CREATES = 1000  # ~90 KiB of requests on the link: more than one read of it


def test_calls_that_timed_out_while_the_controller_was_stopped_are_not_carried_out(
        pki, tmp_path, start_relay, start_controller):
    """1,000 creates and a DELETE sent to a SIGSTOPped controller are
    answered 503 when their deadline (1 s) passes, and the relay resets
    their streams; the controller, woken, finds the requests with the
    resets behind them — more than one read's worth — and carries none
    out: no session was made (a client that retries gets one, not two) and
    the deleted session is still there.  Before requests waited for the
    loop's reads, every one was executed on waking (1,000 sessions more
    than the 201s, and the DELETE done); serving after each read of the
    link (64 KiB of TLS records) still executed 36 of them."""
    _raise_fd_limit(2 * STOPPED_CREATES + 512)
    relay, ctl = start_remote(start_relay, start_controller, pki, tmp_path,
                              relay_extra=["--call-timeout", "1s", "--ping-timeout", "60s"])
    keep = create(relay)

    def sessions():
        ids, token = [], ""
        while True:
            r = gp.http(relay, "GET", "/admin/sessions?limit=1000" +
                        ("&page_token=" + token if token else ""))
            assert r.status == 200, r
            j = r.json()
            ids += [x["id"] for x in j["sessions"]]
            token = j.get("next_page_token", "")
            if not token:
                return sorted(ids)

    assert sessions() == [keep["id"]]
    body = json.dumps({"ttl_seconds": 600}).encode()
    reqs = [relaytest.http_request("POST", "/admin/sessions", body=body,
                                   headers=[("Content-Type", "application/json")])]
    reqs = reqs * STOPPED_CREATES + [relaytest.http_request("DELETE",
                                                            "/admin/sessions/" + keep["id"])]

    async def stopped_calls():
        sem = asyncio.Semaphore(200)

        async def one(req):
            async with sem:
                rd, wr = await asyncio.open_connection("127.0.0.1", relay.port)
                try:
                    wr.write(req)
                    return (await _read_http(rd))[0]
                finally:
                    wr.close()
        return await asyncio.gather(*[one(r) for r in reqs])

    os.kill(ctl.proc.pid, signal.SIGSTOP)
    try:
        statuses = run(stopped_calls())
    finally:
        os.kill(ctl.proc.pid, signal.SIGCONT)
    assert statuses == [503] * len(reqs), {st: statuses.count(st) for st in set(statuses)}
    gp.wait_ready(relay)
    fresh = create(relay)  # the woken controller serves new calls
    assert sessions() == sorted([keep["id"], fresh["id"]])
    cancelled = ctl.find_logs(msg="call cancelled before it was served")
    assert len(cancelled) == len(reqs), len(cancelled)


# --------------------------------------------------------------------------
# Several controllers, several relays
# --------------------------------------------------------------------------

def test_two_controllers_one_relay(pki, tmp_path, start_relay, start_controller):
    relay = gp.start_remote_relay(start_relay, pki, "relay-shared")
    # Each controller's own identity, from `relay-controller issue-cert`.
    ctl_a = start_controller(gp.controller_args(
        [relay], pki.ca_dir, tmp_path / "state-a", cert=pki.extra_controller("ctl-a")))
    ctl_b = start_controller(gp.controller_args(
        [relay], pki.ca_dir, tmp_path / "state-b", cert=pki.extra_controller("ctl-b")))
    gp.wait_links(relay, 2)
    # Log lines arrive through reader threads: poll, bounded, for them.
    def settle(fn, ok):
        deadline = time.monotonic() + relaytest.TIMEOUT
        while True:
            v = fn()
            if ok(v) or time.monotonic() > deadline:
                return v
            time.sleep(0.05)

    names = settle(lambda: {l["controller"] for l in relay.find_logs(msg="controller link up")},
                   lambda v: len(v) >= 2)
    assert len(names) == 2, names  # two distinct controller identities
    assert sorted(n.split("#")[0] for n in names) == ["ctl-a", "ctl-b"], names

    sessions = [create(relay) for _ in range(10)]
    ids = {s["id"] for s in sessions}
    created = lambda c: {l["session"] for l in c.find_logs(msg="session created")}
    settle(lambda: created(ctl_a) | created(ctl_b), lambda v: v >= ids)
    owned_a, owned_b = created(ctl_a), created(ctl_b)
    assert owned_a | owned_b == ids and not owned_a & owned_b, (owned_a, owned_b)
    assert abs(len(owned_a) - len(owned_b)) <= 1, (len(owned_a), len(owned_b))  # round-robin

    # GET fails over on NOT_FOUND; LIST merges both controllers.
    for s in sessions:
        code, st = get_status(relay, s["id"])
        assert code == 200 and st["id"] == s["id"], (code, st)
    r = gp.http(relay, "GET", "/admin/sessions")
    assert r.status == 200 and ids <= {x["id"] for x in r.json()["sessions"]}, r

    async def scenario():
        # Consecutive Validates go to alternate controllers, so one of each
        # session's two lands on the controller that does not know it.
        for s in sessions:
            a, b, n = await pair(relay, s, sizes=(100, 3000))
            r = await in_thread(gp.http, relay, "DELETE", "/admin/sessions/" + s["id"])
            assert r.status == 204, r
            await closed_with(a, 1001)
            await closed_with(b, 1001)

    run(scenario())
    assert gp.metrics(relay)["relay_ws_upgrades_total"] == 20


def _openssl(*args):
    return gp.run_tool(["openssl"] + list(args)).stdout.decode()


def test_issue_cert(pki, tmp_path):
    out = tmp_path / "ctl-out"
    p = gp.run_tool([relaytest.CONTROLLER_BIN, "issue-cert", "--dir", pki.ca_dir,
                     "--name", "ctl-west.2", "--out-dir", out, "--days", "30"])
    crt, key = str(out / "ctl-west.2.crt"), str(out / "ctl-west.2.key")
    assert crt in p.stderr.decode() and key in p.stderr.decode(), p.stderr
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert os.stat(out).st_mode & 0o777 == 0o700
    assert "OK" in _openssl("verify", "-purpose", "sslclient", "-CAfile", pki.ca_crt, crt)
    r = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", pki.ca_crt, crt],
                       capture_output=True)
    assert r.returncode != 0, r  # a controller certificate is no server certificate
    text = _openssl("x509", "-in", crt, "-noout", "-subject", "-ext",
                    "subjectAltName,extendedKeyUsage")
    assert "CN = ctl-west.2" in text and "URI:urn:relay:role:controller" in text, text
    assert "TLS Web Client Authentication" in text and "Server" not in text, text
    # The key is the certificate's (same public key).
    pub = lambda *a: gp.run_tool(["openssl"] + list(a)).stdout
    assert pub("pkey", "-in", key, "-pubout") == pub("x509", "-in", crt, "-noout", "-pubkey")

    before = [open(f, "rb").read() for f in (crt, key)]
    refusals = [
        (["--name", "ctl-west.2", "--out-dir", out], "already exists"),
        (["--name", "../evil"], "controller name"),
        (["--name", "a/b"], "controller name"),
        (["--name", ""], "controller name"),
        (["--name", "controller"], "already exists"),  # init-ca's own
    ]
    for args, why in refusals:
        r = subprocess.run([relaytest.CONTROLLER_BIN, "issue-cert", "--dir", pki.ca_dir]
                           + [str(a) for a in args], capture_output=True)
        assert r.returncode == 1 and why in r.stderr.decode(), (args, r)
    assert [open(f, "rb").read() for f in (crt, key)] == before
    r = subprocess.run([relaytest.CONTROLLER_BIN, "issue-cert", "--dir", str(tmp_path / "none"),
                        "--name", "x"], capture_output=True)
    assert r.returncode == 1 and "init-ca" in r.stderr.decode(), r
    r = subprocess.run([relaytest.CONTROLLER_BIN, "issue-cert", "--dir", pki.ca_dir],
                       capture_output=True)
    assert r.returncode == 2 and "--name" in r.stderr.decode(), r


def test_one_controller_two_relays(pki, tmp_path, start_relay, start_controller):
    east = gp.start_remote_relay(start_relay, pki, "relay-east",
                                 extra=["--public-url", "ws://east.example:7001"])
    west = gp.start_remote_relay(start_relay, pki, "relay-west",
                                 extra=["--public-url", "wss://west.example"])
    ctl = start_controller(gp.controller_args([east, west], pki.ca_dir, tmp_path / "state"))
    gp.wait_ready(east)
    gp.wait_ready(west)
    ctl.wait_for_log(msg="relay link up", relay="relay-east")
    ctl.wait_for_log(msg="relay link up", relay="relay-west")

    ce, cw = create(east), create(west)
    assert ce["initiator_url"] == "ws://east.example:7001/relay/" + ce["id"], ce
    assert ce["responder_url"] == "ws://east.example:7001/relay/" + ce["id"], ce
    assert cw["initiator_url"] == "wss://west.example/relay/" + cw["id"], cw

    async def scenario():
        # A session is served by the relay it names, not by the other one.
        assert await ws_refused(west, ce["id"], ce["initiator_token"]) == 421
        assert await ws_refused(east, cw["id"], cw["initiator_token"]) == 421
        a, b, _ = await pair(east, ce)
        c, d, _ = await pair(west, cw)
        # Kicks go to the relay serving each session.
        r = await in_thread(gp.http, west, "DELETE", "/admin/sessions/" + ce["id"])
        assert r.status == 204, r
        await closed_with(a, 1001)
        await closed_with(b, 1001)
        await exchange(c, d, sizes=(7,))  # the other relay's session is untouched
        r = await in_thread(gp.http, east, "DELETE", "/admin/sessions/" + cw["id"])
        assert r.status == 204, r
        await closed_with(c, 1001)
        await closed_with(d, 1001)

    run(scenario())
    east.wait_for_log(msg="session kicked", session=ce["id"])
    west.wait_for_log(msg="session kicked", session=cw["id"])


# --------------------------------------------------------------------------
# Redial backoff against a relay that says Hello and drops
# --------------------------------------------------------------------------

FLAP_BASE = "20ms"
FLAP_WINDOW = 4.0


def _hello_and_drop(lsock, ctx, timeout):
    """Accepts one dial, plays a relay up to its Hello and drops the link.
    Returns when the dial was accepted, or None when none came in time."""
    lsock.settimeout(timeout)
    try:
        raw, _ = lsock.accept()
    except socket.timeout:
        return None
    accepted = time.monotonic()
    raw.settimeout(T)
    peer = gp.H2Peer(ctx.wrap_socket(raw, server_side=True), client_side=True)
    try:
        sid = peer.open_stream(gp.PATH_EVENTS, timeout_header=None)
        peer.send_message(sid, gp.pb_encode("RelayEvent", {"hello": {
            "node_id": "flapper", "version": "interop/1", "public_url": "wss://flapper"}}))
        # The PING is answered after the frames before it: the Hello was read.
        peer.ping()
        peer.pump(lambda: peer.pings_acked >= 1, what="the PING ACK after Hello")
    finally:
        peer.sock.close()
    return accepted


def test_redial_backs_off_after_hello_and_drop(pki, start_controller):
    """Each link is up (TLS, HTTP/2, Events, Hello) for milliseconds, far
    under the 5 s that count as stable, so each counts as a failure: dial k
    waits uniformly in [0, 20 ms * 2^(k-1)).  About 9 dials fit in 4 s, and
    more than 20 would need a dozen draws far under their bounds (none in
    200,000 simulated runs, with 5-80 ms per handshake); with the backoff
    reset on Hello (or none at all) a dial came every few tens of ms."""
    crt, key = pki.relay("flapper")
    ctx = gp.relay_impostor_context(pki, crt, key)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    ctl = start_controller(["run", "--relay", "127.0.0.1:%d" % lsock.getsockname()[1],
                            "--ca-dir", pki.ca_dir, "--backoff-base", FLAP_BASE,
                            "--backoff-max", "60s", "--log-level", "debug"])
    try:
        first = _hello_and_drop(lsock, ctx, T)
        assert first is not None, "the controller never dialled\n" + ctl.describe()
        dials = [0.0]
        while True:
            left = first + FLAP_WINDOW - time.monotonic()
            t = _hello_and_drop(lsock, ctx, left) if left > 0 else None
            if t is None or t - first >= FLAP_WINDOW:
                break
            dials.append(t - first)
        ctl.stop()  # before a redial can find the port closed
    finally:
        lsock.close()
    gaps = [b - a for a, b in zip(dials, dials[1:])]
    early = sum(1 for t in dials if t < FLAP_WINDOW / 2)
    print("\n%d dials in %.1f s (%d in the first half); gaps %s ms" % (
        len(dials), FLAP_WINDOW, early, [round(g * 1000) for g in gaps]))
    assert 4 <= len(dials) <= 20, dials
    assert early > len(dials) - early, dials  # they thin out: the gaps grow
    # Each link got as far as Hello, so each went down as a link, not as a
    # failed dial; and each ended in a redial drawn from a growing bound.
    assert len(ctl.find_logs(msg="relay hello", relay="flapper")) == len(dials)
    assert len(ctl.find_logs(msg="relay link down", relay="flapper")) == len(dials)
    assert not ctl.find_logs(msg="dial failed"), ctl.find_logs(msg="dial failed")
    attempts = [l["attempt"] for l in ctl.find_logs(msg="redial scheduled")]
    assert attempts[:len(dials)] == list(range(1, len(dials) + 1)), attempts
