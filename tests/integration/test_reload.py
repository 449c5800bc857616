"""Reload on SIGHUP and `relay reload` (issue 13, point 1, acceptance).

* test_certificate_swap_keeps_sessions — the public certificate is
  replaced and `relay reload --pid-file` run: a new `openssl s_client` sees
  the new certificate, while a session opened before keeps relaying
  (bytes hashed both ways, before and after); the notAfter gauge follows.
  A broken certificate plus SIGHUP is refused with a log line naming the
  setting, the previous certificate is still served and the session still
  relays; a change to a setting fixed for the process's life (node-id in
  the --config file) is refused naming it.  A certificate within 14 days
  of its end is warned of at the reload that brings it.
* test_cors_and_limits_reload — the --config file's CORS list and
  --max-conns-per-ip change, SIGHUP: curl's preflight gets the new
  Access-Control-Allow-Origin, and the limit applies at its new value.
* test_tunnel_certificate_and_controller_ca_reload — the relay enrolled
  anew with another CA (tunnel certificate and controller CA) and
  reloaded: the link up before stays; a controller of the old CA is
  refused at its next handshake, one of the new CA links.
* test_oidc_settings_reload — the --config file names another OIDC
  provider and audience: after SIGHUP its tokens get 201, the old one's 401.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

import grpcpeer as gp
import relaytest
import wsraw

T = relaytest.TIMEOUT


class Address:
    """What wsraw and grpcpeer need of a relay: TLS verified by the test CA."""

    def __init__(self, certs, port):
        self.certs, self.port = certs, port

    def connect(self, timeout=T):
        return relaytest.tls_connect(self.port, timeout=timeout, ca=self.certs.ca_crt)

    def describe(self):
        return "relay on 127.0.0.1:%d" % self.port


def served_cert(port):
    """The PEM certificate a fresh `openssl s_client` is shown."""
    rc, out = relaytest.s_client(port, ["-servername", "localhost"], stdin=b"")
    m = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out, re.S)
    assert m, out
    return m.group(0).strip()


def pem_of(path):
    with open(path) as f:
        return re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                         f.read(), re.S).group(0).strip()


def not_after(path):
    out = relaytest.run(["openssl", "x509", "-in", path, "-noout", "-enddate"]).stdout
    text = out.decode() if isinstance(out, bytes) else out
    stamp = text.strip().split("=", 1)[1]
    return int(time.mktime(time.strptime(stamp, "%b %d %H:%M:%S %Y GMT")) - time.timezone)


def install(src_crt, src_key, dst_crt, dst_key):
    """Replaces the files the relay reads, each by an atomic rename."""
    for src, dst in ((src_crt, dst_crt), (src_key, dst_key)):
        shutil.copyfile(src, dst + ".new")
        os.replace(dst + ".new", dst)


def relay_with(certs, tmp_path, settings, extra=()):
    cfg = tmp_path / "relay.json"
    cfg.write_text(json.dumps(settings))
    pid = str(tmp_path / "relay.pid")
    r = relaytest.Relay(extra=["--config", str(cfg), "--pid-file", pid] + list(extra))
    r.certs = certs  # what the relay's own helpers verify with
    # The pid file follows "listening" (it is written once every listener
    # is up), so `relay reload` may only look once it is there.
    deadline = time.monotonic() + T
    while not (os.path.exists(pid) and open(pid).read().strip()):
        assert time.monotonic() < deadline, "no pid file " + pid
        time.sleep(0.02)
    return r, cfg, pid


def reload_cmd(pid_file):
    p = subprocess.run([relaytest.RELAY_BIN, "reload", "--pid-file", pid_file],
                       capture_output=True, timeout=T)
    assert p.returncode == 0, p


def exchange(a, b, n):
    """n random bytes each way, compared by hash."""
    for src, dst in ((a, b), (b, a)):
        data = os.urandom(n)
        src.send_message(data)
        got = dst.recv_message()[1]
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_certificate_swap_keeps_sessions(certs, tmp_path):
    a_crt, a_key = certs.issue("reload-a", "127.0.0.1", san="IP:127.0.0.1,DNS:localhost",
                               days=60)
    b_crt, b_key = certs.issue("reload-b", "127.0.0.1", san="IP:127.0.0.1,DNS:localhost",
                               days=30)
    c_crt, c_key = certs.issue("reload-c", "127.0.0.1", san="IP:127.0.0.1,DNS:localhost",
                               days=10)
    crt, key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    install(a_crt, a_key, crt, key)
    r, cfg, pid = relay_with(certs, tmp_path, {"tls-cert": crt, "tls-key": key, "node-id": "n1"})
    try:
        addr = Address(certs, r.port)
        assert served_cert(r.port) == pem_of(a_crt)
        s = gp.http(addr, "POST", "/admin/sessions", b"{}").json()
        p1 = wsraw.open_peer(addr, s["id"], s["initiator_token"])
        p2 = wsraw.open_peer(addr, s["id"], s["responder_token"])
        exchange(p1, p2, 20000)

        install(b_crt, b_key, crt, key)
        reload_cmd(pid)
        r.wait_for_log(msg="settings reloaded")
        assert served_cert(r.port) == pem_of(b_crt)
        exchange(p1, p2, 30000)  # the session opened on the old certificate
        m = relaytest.metrics(r)
        assert m['relay_certificate_not_after_seconds{which="public"}'] == not_after(b_crt), m
        assert not r.find_logs(msg="certificate expires soon")

        # A broken certificate: refused whole, named; the old one stays.
        with open(crt, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        r.proc.send_signal(signal.SIGHUP)
        line = r.wait_for_log(msg="reload refused; the running settings stay")
        assert line["error"].startswith("tls-cert/tls-key: "), line
        assert served_cert(r.port) == pem_of(b_crt)
        exchange(p1, p2, 1000)

        # A setting fixed for the process's life: refused, named.
        install(b_crt, b_key, crt, key)
        cfg.write_text(json.dumps({"tls-cert": crt, "tls-key": key, "node-id": "n2"}))
        r.proc.send_signal(signal.SIGHUP)
        line = r.wait_for_log(msg="reload refused; the running settings stay",
                              error="node-id: a change needs a restart")

        # A certificate near its end is warned of.
        install(c_crt, c_key, crt, key)
        cfg.write_text(json.dumps({"tls-cert": crt, "tls-key": key, "node-id": "n1"}))
        r.proc.send_signal(signal.SIGHUP)
        warn = r.wait_for_log(msg="certificate expires soon", which="public")
        assert warn["days_left"] in (9, 10), warn
        assert served_cert(r.port) == pem_of(c_crt)
        exchange(p1, p2, 1000)
        p1.close(1000)
        assert p2.expect_close() == 1000
        r.stop()
        r.check_sanitizers()
    finally:
        r.kill()


def preflight(port, origin):
    p = relaytest.curl(["-i", "-k", "-X", "OPTIONS", "-H", "Origin: " + origin,
                        "-H", "Access-Control-Request-Method: POST",
                        "https://127.0.0.1:%d/admin/sessions" % port])
    assert p.returncode == 0, p
    m = re.search(r"^access-control-allow-origin:\s*(\S+)", p.stdout, re.I | re.M)
    return m.group(1) if m else None


def healthz_status(port):
    p = relaytest.curl(["-k", "-o", "/dev/null", "-w", "%{http_code}",
                        "https://127.0.0.1:%d/healthz" % port])
    return int(p.stdout)


def until_status(port, want):
    """Polls /healthz until it answers want (the connections of earlier
    requests are released a moment after their clients close)."""
    deadline = time.monotonic() + T
    while (got := healthz_status(port)) != want:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_cors_and_limits_reload(certs, tmp_path):
    base = {"tls-cert": certs.server_crt, "tls-key": certs.server_key}
    r, cfg, pid = relay_with(certs, tmp_path, dict(base, **{"cors-origin": ["https://a.example"],
                                                            "max-conns-per-ip": 2}))
    held = []
    try:
        assert preflight(r.port, "https://a.example") == "https://a.example"
        assert preflight(r.port, "https://b.example") is None
        held += [Address(certs, r.port).connect() for _ in range(2)]  # 127.0.0.1's two places
        until_status(r.port, 429)

        cfg.write_text(json.dumps(dict(base, **{"cors-origin": ["https://b.example"],
                                                "max-conns-per-ip": 4})))
        r.proc.send_signal(signal.SIGHUP)
        line = r.wait_for_log(msg="settings reloaded")
        assert line["cors_origins"] == 1 and line["max_conns_per_ip"] == 4, line
        until_status(r.port, 200)
        for s in held:
            s.close()
        held = []
        until_status(r.port, 200)
        assert preflight(r.port, "https://b.example") == "https://b.example"
        assert preflight(r.port, "https://a.example") is None
        r.stop()
        r.check_sanitizers()
    finally:
        for s in held:
            s.close()
        r.kill()


def link(pki, port):
    """A controller link from pki's controller certificate (the Python
    HTTP/2 + gRPC controller of grpcpeer.py), once the relay said Hello."""
    peer = gp.H2Peer(gp.dial_relay(pki, port), client_side=False)
    ev = peer.next_request(gp.PATH_EVENTS, complete=False)
    peer.send_response_headers(ev.sid)
    peer.next_message(ev, "RelayEvent", pred=lambda m: m["hello"])
    return peer


def test_tunnel_certificate_and_controller_ca_reload(tmp_path):
    """The relay is enrolled anew with another CA (its tunnel certificate
    and the controller CA both change) and reloaded: the link up before
    stays up; a controller of the old CA is refused at its next handshake,
    one of the new CA links."""
    old, new = gp.Pki(tmp_path / "old"), gp.Pki(tmp_path / "new")
    crt1, key1 = old.relay("relay-r")
    crt2, key2 = new.relay("relay-r")
    cfg = tmp_path / "relay.json"
    cfg.write_text(json.dumps({"tunnel-cert": crt1, "tunnel-key": key1,
                               "controller-ca": old.ca_crt}))
    r = relaytest.Relay(plain=True, extra=["--tunnel-listen", "127.0.0.1:0", "--node-id",
                                           "relay-r", "--config", str(cfg)])
    peers = []
    try:
        tport = int(r.wait_for_log(msg="listening for controllers")["port"])
        peers.append(link(old, tport))
        cfg.write_text(json.dumps({"tunnel-cert": crt2, "tunnel-key": key2,
                                   "controller-ca": new.ca_crt}))
        r.proc.send_signal(signal.SIGHUP)
        line = r.wait_for_log(msg="settings reloaded")
        assert line["tunnel_tls"] is True, line
        with pytest.raises(Exception):  # the relay's new certificate is not of the old CA
            peers.append(link(old, tport))
        peers.append(link(new, tport))
        deadline = time.monotonic() + T
        while (m := relaytest.metrics(r))["relay_controller_links"] != 2:
            assert time.monotonic() < deadline, m  # the old CA's link stays up beside the new
            time.sleep(0.05)
        assert m['relay_certificate_not_after_seconds{which="tunnel"}'] == not_after(crt2), m
        r.stop()
        r.check_sanitizers()
    finally:
        for p in peers:
            p.close()
        r.kill()


def test_oidc_settings_reload(certs, tmp_path):
    """The --config file names another OIDC provider (issuer, audience):
    after SIGHUP the relay's new verifier fetches that provider's keys, its
    tokens are accepted (201) and the old provider's refused (401)."""
    import idp as idpmod
    from idp import curl_http
    one, two = idpmod.IdP(certs, name="idp-one"), idpmod.IdP(certs, name="idp-two")
    k1, k2 = one.add_key("ES256"), two.add_key("ES256")
    cfg = tmp_path / "relay.json"
    settings = {"tls-cert": certs.server_crt, "tls-key": certs.server_key,
                "oidc-issuer": one.issuer, "oidc-audience": "aud-one", "oidc-ca": certs.ca_crt}
    cfg.write_text(json.dumps(settings))
    r = relaytest.Relay(no_auth=False, extra=["--config", str(cfg)])
    r.certs = certs
    try:
        r.wait_for_log(msg="JWKS loaded")

        def create(idp, key, aud):
            tok = idp.token(key, aud, scope="swsrs:session:create")
            return curl_http(r.url("/admin/sessions"), "POST", cacert=certs.ca_crt,
                             headers=[("Authorization", "Bearer " + tok)]).status

        assert create(one, k1, "aud-one") == 201
        assert create(two, k2, "aud-two") == 401
        settings.update({"oidc-issuer": two.issuer, "oidc-audience": "aud-two"})
        cfg.write_text(json.dumps(settings))
        r.proc.send_signal(signal.SIGHUP)
        r.wait_for_log(msg="settings reloaded")
        r.wait_for_log(msg="OIDC issuer", issuer=two.issuer)
        deadline = time.monotonic() + T
        while len(r.find_logs(msg="JWKS loaded")) < 2:
            assert time.monotonic() < deadline, "the new provider's keys were not loaded"
            time.sleep(0.05)
        assert create(two, k2, "aud-two") == 201
        assert create(one, k1, "aud-one") == 401
        r.stop()
        r.check_sanitizers()
    finally:
        r.kill()
        one.close()
        two.close()
