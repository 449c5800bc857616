"""TLS on the public listener, seen by independent clients (openssl
s_client, curl, Python's ssl): ALPN selection, protocol versions and
ciphers, client certificates, and that no secret reaches the logs."""

import ssl

import pytest

import relaytest
from relaytest import (curl, http_request, read_response, s_client, s_client_field,
                       s_client_negotiated)


def alpn_of(port, offer):
    rc, out = s_client(port, ["-alpn", offer, "-servername", "localhost"])
    assert rc == 0, out
    return s_client_field(out, "ALPN protocol")


def test_alpn_default_http11(start_relay):
    r = start_relay()
    assert alpn_of(r.port, "h2,http/1.1") == "http/1.1"
    # A client that only speaks h2 is refused rather than misunderstood.
    rc, out = s_client(r.port, ["-alpn", "h2"])
    assert rc != 0 or "ALPN protocol" not in out, out


def test_alpn_h2_when_configured(start_relay):
    r = start_relay(extra=["--alpn", "h2,http/1.1"])
    assert alpn_of(r.port, "h2,http/1.1") == "h2"
    assert alpn_of(r.port, "http/1.1") == "http/1.1"
    # Server preference: h2 first even when the client lists it last.
    assert alpn_of(r.port, "http/1.1,h2") == "h2"


def test_alpn_python_client(start_relay, certs):
    r = start_relay()
    s = relaytest.tls_connect(r.port, ca=certs.ca_crt, alpn=["h2", "http/1.1"])
    assert s.selected_alpn_protocol() == "http/1.1"
    assert s.version() == "TLSv1.3"
    s.sendall(http_request("GET", "/healthz"))
    assert read_response(s).body == b"ok"
    s.close()


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls12_and_tls13_accepted(start_relay, flag, version):
    r = start_relay()
    rc, out = s_client(r.port, [flag, "-alpn", "http/1.1"])
    assert rc == 0, out
    proto, cipher = s_client_negotiated(out)
    assert proto == version, out
    assert s_client_field(out, "ALPN protocol") == "http/1.1"
    if version == "TLSv1.2":
        # Forward-secret AEAD suites only.
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher


def test_tls11_refused_by_server(start_relay, certs):
    r = start_relay()
    # SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1 at all, so the refusal is the
    # relay's, not the client library's.
    rc, out = s_client(r.port, ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
    assert rc != 0, out
    assert s_client_negotiated(out) == ("(NONE)", "(NONE)"), out
    assert "no peer certificate available" in out, out
    # The alert came from the server: protocol_version (70).
    assert "alert protocol version" in out or "alert number 70" in out, out
    # The relay noticed, and its logs hold no key material.
    r.wait_for_log(msg="handshake failed", timeout=5)
    assert r.alive()
    r.stop()
    for secret in certs.secrets():
        assert secret not in r.stderr


def test_weak_tls12_cipher_refused(start_relay):
    r = start_relay()
    rc, out = s_client(r.port, ["-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0"])
    assert rc != 0, out
    assert "alert handshake failure" in out or "alert number 40" in out, out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_python_tls11_refused(start_relay):
    r = start_relay()
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        ctx = relaytest.tls_context(verify=False, max_version=ssl.TLSVersion.TLSv1_1)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        raw = relaytest.raw_connect(r.port)
        try:
            ctx.wrap_socket(raw)
        finally:
            raw.close()


def test_plain_http_to_tls_port(start_relay):
    r = start_relay()
    s = relaytest.raw_connect(r.port)
    s.sendall(http_request("GET", "/healthz"))
    data, how = relaytest.recv_until_closed(s, timeout=5)
    assert not data.startswith(b"HTTP/"), data  # no plaintext leaks out
    s.close()
    assert r.get("/healthz").body == b"ok"


def test_client_certificates(start_relay, certs):
    r = start_relay(extra=["--client-ca", certs.ca_crt])
    base = ["--cacert", certs.ca_crt, r.url("/healthz", host="localhost")]
    # Optional: with or without a certificate, /healthz answers.
    p = curl(base)
    assert p.returncode == 0 and p.stdout == "ok", p.stderr
    p = curl(["--cert", certs.client_crt, "--key", certs.client_key] + base)
    assert p.returncode == 0 and p.stdout == "ok", p.stderr
    # A certificate from another CA is refused, not ignored.
    p = curl(["--cert", certs.stranger_crt, "--key", certs.stranger_key] + base)
    assert p.returncode != 0, p.stdout
    # Python's ssl presenting the good one.
    s = relaytest.tls_connect(r.port, ca=certs.ca_crt, cert=certs.client_crt,
                              key=certs.client_key)
    s.sendall(http_request("GET", "/healthz"))
    assert read_response(s).body == b"ok"
    s.close()


def test_wrong_ca_fails_client_side(start_relay, certs):
    r = start_relay()
    p = curl(["--cacert", certs.stranger_ca_crt, r.url("/healthz", host="localhost")])
    assert p.returncode == 60, (p.returncode, p.stderr)  # peer certificate cannot be authenticated


def test_logs_are_json_and_secret_free(start_relay, certs):
    r = start_relay()
    s = relaytest.tls_connect(r.port, ca=certs.ca_crt)
    s.sendall(http_request("GET", "/nothing?token=s3cr3tTOKEN&x=1"))
    assert read_response(s).status == 404
    s.close()
    line = r.wait_for_log(msg="request", timeout=5)
    assert line["target"] == "/nothing?token=REDACTED&x=1"
    assert line["status"] == 404
    r.stop()
    assert "s3cr3tTOKEN" not in r.stderr
    for secret in certs.secrets():
        assert secret not in r.stderr
    # Every line the relay wrote is one JSON object.
    assert r.lines and len(r.logs) == len(r.lines), r.stderr
