"""The Debian package (issue 13, point 5), installed on this machine.

deploy/debian/mkdeb puts the package together from this build's binaries
(`./dev package` does the same from a release build with Debian's
hardening flags and runs lintian; here the packaging itself is under test:
files, maintainer scripts, users, permissions, the default settings).  The
test installs it with dpkg, checks what it put where and with which
owners and modes, verifies the systemd units offline (CI has no systemd
running, so the postinst must not try to start anything), starts `relay
serve` from the installed settings as the relay user, passes /healthz and
creates a session, then purges the package and checks it is gone.

It changes the machine (a package, two system users), so it runs only as
root on a machine where no other relay package is installed.
"""

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess

import pytest

import relaytest

T = relaytest.TIMEOUT
HERE = os.path.dirname(os.path.abspath(__file__))
MKDEB = os.path.join(HERE, "..", "..", "deploy", "debian", "mkdeb")


def installed_version():
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "relay"],
                       capture_output=True, text=True)
    return p.stdout.split()[-1] if p.returncode == 0 and "install ok installed" in p.stdout \
        else None


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("dpkg-deb", "help2man",
                                                         "dpkg-shlibdeps")),
                       reason="needs dpkg-dev and help2man (./dev test installs them)"),
]


def mode(path):
    st = os.stat(path)
    return (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name)


def run(argv, **kw):
    return relaytest.run(argv, timeout=120, **kw)


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    if installed_version() is not None:
        pytest.skip("a relay package is installed here already; not touching it")
    out = tmp_path_factory.mktemp("package")
    p = run([MKDEB, relaytest.BUILD_DIR, str(out)])
    path = p.stdout.decode().strip().splitlines()[-1]
    assert re.search(r"/relay_\d+\.\d+\.\d+_[a-z0-9]+\.deb$", path), path
    return path


def test_install_run_purge(deb):
    info = run(["dpkg-deb", "-f", deb, "Package", "Version", "Depends"]).stdout.decode()
    assert "Package: relay" in info and "adduser" in info and "libuv1" in info, info
    run(["dpkg", "-i", deb])
    try:
        check_installed()
        check_units()
        serve_from_installed_settings()
    finally:
        run(["dpkg", "--purge", "relay"])
    check_purged()


def check_installed():
    version = installed_version()
    assert version, "dpkg does not list relay as installed"
    out = run(["/usr/bin/relay", "version"]).stdout.decode()
    assert out.startswith("relay %s " % version), out
    for b in ("/usr/bin/relay", "/usr/bin/relay-controller", "/usr/lib/relay/relay-swap"):
        assert mode(b) == (0o755, "root", "root"), (b, mode(b))

    # The system users, with no login, homes where their state is.
    for name in ("relay", "relay-controller"):
        u = pwd.getpwnam(name)
        assert u.pw_uid < 1000, u  # a system user
        assert u.pw_shell == "/usr/sbin/nologin", u
        assert u.pw_dir == "/var/lib/" + name, u
        assert grp.getgrgid(u.pw_gid).gr_name == name, u
        assert mode(u.pw_dir) == (0o700, name, name), mode(u.pw_dir)

    # The settings: a conffile dpkg keeps across upgrades, a working default.
    assert mode("/etc/relay/relay.json") == (0o644, "root", "root")
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "relay"]).stdout.decode()
    assert "/etc/relay/relay.json" in conffiles, conffiles
    with open("/etc/relay/relay.json") as f:
        settings = json.load(f)
    assert settings["listen"].startswith("127.0.0.1:") and settings["no_auth"] is True

    for unit in ("relay.socket", "relay@.service", "relay-controller.service"):
        assert mode("/lib/systemd/system/" + unit) == (0o644, "root", "root"), unit
    # A manual page for every command, named as git names its own.
    man = "/usr/share/man/man1/"
    pages = sorted(os.listdir(man))
    for page in ("relay.1.gz", "relay-serve.1.gz", "relay-create.1.gz", "relay-tcp-dial.1.gz",
                 "relay-controller.1.gz", "relay-controller-run.1.gz",
                 "relay-controller-sign-csr.1.gz"):
        assert page in pages, pages
    serve = run(["zcat", man + "relay-serve.1.gz"]).stdout.decode()
    assert re.search(r'^\.TH RELAY-SERVE "1"', serve, re.M), serve[:300]
    assert "\\-\\-shutdown\\-grace" in serve and "RELAY_LISTEN" in serve
    for doc in ("copyright", "changelog.gz", "README.Debian"):
        assert os.path.exists("/usr/share/doc/relay/" + doc), doc


def check_units():
    """Offline checks: systemd is installed but not running (as in CI)."""
    if not shutil.which("systemd-analyze"):
        return
    units = ["/lib/systemd/system/relay.socket", "/lib/systemd/system/relay-controller.service"]
    # A template is verified through an instance of it.
    inst = os.path.join(os.path.dirname(units[0]), "relay@a.service")
    os.symlink("relay@.service", inst)
    try:
        p = subprocess.run(["systemd-analyze", "verify", inst] + units, capture_output=True,
                           text=True, timeout=60)
        # Only complaints about our units count (others on the machine may
        # have their own).
        ours = [l for l in (p.stdout + p.stderr).splitlines()
                if re.search(r"relay(@a)?\.(service|socket)|relay-controller", l)]
        assert not ours, "\n".join(ours)
        p = subprocess.run(["systemd-analyze", "security", "--offline=true", inst],
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout + p.stderr)
        assert m, p.stdout + p.stderr
        # systemd calls below 2.0 "OK"; a service on the network with no
        # capability at all, a private /tmp, /dev and users, scores there.
        assert float(m.group(1)) < 2.0, p.stdout
    finally:
        os.unlink(inst)


def serve_from_installed_settings():
    """`relay serve` as systemd would run it: the relay user, the installed
    settings (only the port is ours: tests never bind a fixed one)."""
    r = relaytest.LoggedProcess(
        ["setpriv", "--reuid=relay", "--regid=relay", "--init-groups", "--",
         "/usr/bin/relay", "serve", "--config",
         "/etc/relay/relay.json", "--listen", "127.0.0.1:0"], name="installed relay")
    try:
        line = r.wait_for_log(msg="listening")
        port = int(line["port"])
        assert line["tls"] is True, line
        cert = "/var/lib/relay/dev-cert/dev.crt"
        p = relaytest.curl(["--cacert", cert, "https://127.0.0.1:%d/healthz" % port])
        assert p.returncode == 0 and p.stdout == "ok", (p.stdout, p.stderr, r.describe())
        p = relaytest.curl(["--cacert", cert, "-X", "POST", "-H", "Content-Type: application/json",
                            "-d", "{}", "https://127.0.0.1:%d/admin/sessions" % port])
        assert p.returncode == 0 and '"initiator_token"' in p.stdout, (p.stdout, r.describe())
        # What it made in its state directory is its own, keys 0600.
        key = "/var/lib/relay/dev-cert/dev.key"
        assert mode(key)[0] == 0o600 and mode(key)[1] == "relay", mode(key)
        assert mode("/var/lib/relay/controller")[1] == "relay"
        r.stop()
    finally:
        r.kill()


def check_purged():
    assert installed_version() is None
    for path in ("/usr/bin/relay", "/usr/bin/relay-controller", "/etc/relay",
                 "/var/lib/relay", "/var/lib/relay-controller", "/lib/systemd/system/relay.socket",
                 "/usr/share/man/man1/relay-serve.1.gz", "/usr/share/doc/relay"):
        assert not os.path.exists(path), path
