"""clientcli — running the `relay` client commands from integration tests.

* ``client_env(directory, **vars)``: an environment with nothing of the
  caller's SWSRS_* or XDG_CONFIG_HOME, the credentials directory in
  `directory` (``XDG_CONFIG_HOME=<directory>/config``) and the sanitizer
  options of relaytest; keyword arguments add variables (None removes one).
* ``run(args, env)``: one command to its end, bounded; a CompletedProcess
  with text output, after checking stderr for sanitizer reports.
* ``start(args, env)``: one command in the background (a LoggedProcess:
  its stderr lines are read as they come).
* ``assert_error(p, status, *parts)``: exit status, nothing on stdout, and
  exactly one line on stderr that contains every part.
* ``creds_file(env)``: where the credentials of that environment live.
* ``StubRelay(status, body, port=0)``: a plain-HTTP admin API on
  127.0.0.1 that answers every GET with one JSON body and records each
  request's Authorization header (``seen``); a context manager.
* ``OidcEnv(certs)``: the test IdP (a public client registered for the CLI,
  access tokens for AUDIENCE) and a TLS relay that trusts it and names
  that client in its discovery document.
"""

import http.server
import os
import subprocess
import threading

import idp as idpmod
import relaytest

AUDIENCE = "relay-admin-test"
CLIENT = "relay-cli-test"
CREATE, READ, DELETE = "swsrs:session:create", "swsrs:session:read", "swsrs:session:delete"

class StubRelay:
    """GET anything: `status` with the JSON `body`; Authorization headers in
    `seen`, in order (None for a request without one)."""

    def __init__(self, status, body, port=0):
        self.seen = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.srv = http.server.HTTPServer(("127.0.0.1", port), Handler)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def client_env(directory, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SWSRS_") and k != "XDG_CONFIG_HOME"}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env["XDG_CONFIG_HOME"] = os.path.join(str(directory), "config")
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def creds_file(env):
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env["HOME"], ".config")
    return os.path.join(base, "swsrs", "credentials.json")


def run(args, env, timeout=relaytest.TIMEOUT, input=None):
    p = subprocess.run([relaytest.RELAY_BIN] + [str(a) for a in args], env=env,
                       capture_output=True, text=True, timeout=timeout, input=input)
    for m in SANITIZER_MARKERS:
        assert m not in p.stderr, p.stderr
    return p


def start(args, env):
    return relaytest.LoggedProcess([relaytest.RELAY_BIN] + [str(a) for a in args], env=env,
                                   name="relay " + str(args[0]))


def assert_error(p, status, *parts):
    assert p.returncode == status, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "", p.stdout
    lines = p.stderr.splitlines()
    assert len(lines) == 1 or (status == 2 and lines[1].startswith("Usage:")), p.stderr
    for part in parts:
        assert part in lines[0], (part, p.stderr)
    return lines[0]


class OidcEnv:
    def __init__(self, certs):
        self.certs = certs
        self.idp = idpmod.IdP(certs)
        self.key = self.idp.add_key("ES256")
        self.idp.audience = AUDIENCE
        self.idp.clients[CLIENT] = None  # a public client, as a CLI is
        self.relay = relaytest.Relay(certs=certs, no_auth=False, log_level="info", extra=[
            "--oidc-issuer", self.idp.issuer, "--oidc-audience", AUDIENCE,
            "--oidc-ca", self.idp.ca_file, "--client-id-hint", CLIENT])
        try:
            self.relay.wait_for_log(msg="JWKS loaded")
            self.relay.wait_for_log(msg="controller link up")
        except Exception:
            self.close()
            raise

    def token(self, scope=" ".join((CREATE, READ, DELETE))):
        """A token signed by the IdP, as if it had been issued to us."""
        return self.idp.token(self.key, AUDIENCE, scope=scope)

    def close(self):
        try:
            self.relay.stop()
        finally:
            self.relay.kill()
            self.idp.close()
