"""fleettest — a fleet on loopback for the fleet tests: redis-server,
controllers sharing it (``--store redis://``), remote relays, HAProxy.

* ``Redis``: ``redis-server`` started by the test on a port it picked on
  127.0.0.1, from a config file in the test's directory (password and ACL
  users there, never on a command line), AOF optional; stopped, killed and
  restarted on the same port and data by pid.
* ``Fleet``: real enrolment (``Pki``), relays ``relay-a``.. with tunnel
  listeners, and controllers each with a certificate of its own
  (``issue-cert``) dialling every relay.
* ``Sentinel``: ``redis-server --sentinel`` watching a master, for a
  failover on loopback (a ``Redis`` made with ``replicaof`` is the replica).
* ``Haproxy``: haproxy with ``deploy/haproxy-fleet.cfg``'s balancing, its
  servers pointed at the relays, or ``deploy/haproxy-redis.cfg``'s master
  check in front of Redis servers (``RedisAddr`` is its address).
* ``report``: a line for the ctest log (pytest would swallow a print).

Every wait is bounded; nothing binds a fixed port.
"""

import os
import re
import signal
import socket
import subprocess
import time

import grpcpeer as gp
import relaytest
from grpcioctl import free_port

T = relaytest.TIMEOUT
HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.join(HERE, "..", "..", "deploy")
REDIS_SERVER = "/usr/bin/redis-server"


class RedisAddr:
    """A Redis-speaking address on 127.0.0.1 (a server, a Sentinel, or an
    HAProxy in front of servers): its --store URL and one-command client."""

    def __init__(self, port, password=None):
        self.port = port
        self.password = password

    def url(self, user=None, db=0):
        return "redis://%s127.0.0.1:%d/%d" % (user + "@" if user else "", self.port, db)

    def cli(self, *args):
        """One command over a raw socket (RESP), the reply decoded."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=T)
        try:
            if self.password:
                s.sendall(_resp(["AUTH", self.password]))
                _read_reply(s)
            s.sendall(_resp(list(args)))
            return _read_reply(s)
        finally:
            s.close()


class Redis(RedisAddr):
    """redis-server on 127.0.0.1:<free port>, data in `directory`; a
    replica of the server on port `replicaof` when given."""

    def __init__(self, directory, password=None, users=(), aof=False, replicaof=None):
        super().__init__(free_port(), password)
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "redis.conf")
        lines = ["bind 127.0.0.1", "port %d" % self.port, "dir %s" % self.dir,
                 "daemonize no", "logfile \"\"", "protected-mode yes"]
        lines += self.config(password, users, aof, replicaof)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.conf, 0o600)
        self.proc = None
        self.start()

    def config(self, password, users, aof, replicaof):
        lines = ["save \"\"", "appendonly %s" % ("yes" if aof else "no"), "appendfsync always"]
        if password:
            lines.append("requirepass %s" % password)
        for name, pw, rules in users:
            lines.append("user %s on >%s %s" % (name, pw, rules))
        if replicaof:
            lines.append("replicaof 127.0.0.1 %d" % replicaof)
        return lines

    def argv(self):
        return [REDIS_SERVER, self.conf]

    def start(self):
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + T
        while True:
            try:
                if self.cli("PING") == "PONG":
                    return
            except (OSError, relaytest.TestError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise relaytest.TestError("redis-server did not start on %d" % self.port)
            time.sleep(0.05)

    def info(self, section):
        """INFO `section` as a dict."""
        text = self.cli("INFO", section)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(T)

    def kill(self):
        self.stop(signal.SIGKILL)


class Sentinel(Redis):
    """redis-server --sentinel (the same binary Debian's redis-sentinel
    package links; that package would also start a system Sentinel on the
    fixed port 26379) watching `master` as `name`, with quorum 1 and short
    timeouts so a failover takes a second or two."""

    def __init__(self, directory, master, name="fleet", down_ms=500):
        self.master_port, self.name, self.down_ms = master.port, name, down_ms
        super().__init__(directory)

    def config(self, password, users, aof, replicaof):
        n = self.name
        return ["sentinel monitor %s 127.0.0.1 %d 1" % (n, self.master_port),
                "sentinel down-after-milliseconds %s %d" % (n, self.down_ms),
                "sentinel failover-timeout %s 5000" % n,
                "sentinel parallel-syncs %s 1" % n]

    def argv(self):
        return [REDIS_SERVER, self.conf, "--sentinel"]

    def master(self):
        """The master's port, as this Sentinel sees it."""
        return int(self.cli("SENTINEL", "get-master-addr-by-name", self.name)[1])


def _resp(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def _read_reply(s):
    f = s.makefile("rb")
    return _parse(f)


def _parse(f):
    line = f.readline()
    if not line:
        raise relaytest.TestError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise relaytest.TestError("redis: " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_parse(f) for _ in range(n)]
    raise relaytest.TestError("bad RESP %r" % line)


class Fleet:
    """Relays relay-a.. and controllers ctl-1.. on one Redis."""

    def __init__(self, tmp, start_relay, start_controller, redis, nrelays=3, nctl=2,
                 relay_extra=None, ctl_extra=(), env=None):
        self.tmp = str(tmp)
        self.pki = gp.Pki(os.path.join(self.tmp, "pki"))
        self.redis = redis
        self.start_controller = start_controller
        self.ctl_extra = list(ctl_extra)
        self.env = env
        self.relays = []
        for i in range(nrelays):
            node = "relay-" + chr(ord("a") + i)
            extra = (relay_extra or {}).get(node, [])
            r = gp.start_remote_relay(start_relay, self.pki, node,
                                      extra=["--ping-interval", "1s", "--ping-timeout", "3s"]
                                      + extra)
            r.node = node
            self.relays.append(r)
        self.ctls = [self.start_ctl(i + 1) for i in range(nctl)]

    def start_ctl(self, i, url=None):
        name = "ctl-%d" % i
        cert = self.pki.extra_controller(name)
        args = gp.controller_args(self.relays, self.pki.ca_dir, cert=cert, log_level="info",
                                  extra=["--store", url or self.redis.url(),
                                         "--backoff-base", "100ms", "--backoff-max", "1s",
                                         "--ping-interval", "1s", "--ping-timeout", "3s"]
                                  + self.ctl_extra)
        c = self.start_controller(args, env=self.env)
        c.name = name
        return c

    def wait_linked(self, n=None):
        """Every relay has a link from each of n controllers (default all)."""
        n = len(self.ctls) if n is None else n
        for r in self.relays:
            gp.wait_links(r, n)
        if n:
            self.wait_live()

    def wait_live(self, nodes=None):
        """The fleet knows each relay is linked (a controller's heartbeat
        claimed it in Redis): only then may a session be said to be held."""
        deadline = time.monotonic() + T
        for node in nodes or [r.node for r in self.relays]:
            while not self.redis.cli("HGETALL", "relay:live:" + node):
                if time.monotonic() > deadline:
                    raise relaytest.TestError("no controller claims " + node)
                time.sleep(0.05)

    def by_node(self, node):
        return next(r for r in self.relays if r.node == node)


class Haproxy:
    """haproxy with the settings of a file in deploy/ (the file itself, its
    bind, server and check timing lines replaced): haproxy-fleet.cfg in
    front of relays, or haproxy-redis.cfg in front of Redis servers.
    servers: (name, port) on 127.0.0.1."""

    def __init__(self, directory, servers, check_ms=200, port=None, cfg="haproxy-fleet.cfg"):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        with open(os.path.join(DEPLOY, cfg)) as f:
            text = f.read()
        out = []
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("bind "):
                line = "    bind 127.0.0.1:%d" % self.port
            elif s.startswith("server "):
                continue
            elif s.startswith("#@servers"):
                for name, port_ in servers:
                    out.append("    server %s 127.0.0.1:%d" % (name, port_))
                continue
            elif s.startswith("maxconn "):
                line = "    maxconn 4096"  # within a test's file descriptor limit
            elif s.startswith("default-server "):
                line = re.sub(r"inter \S+", "inter %dms" % check_ms, line)
                line = re.sub(r"(fall|rise) \d+", r"\1 1", line)
            out.append(line)
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write("\n".join(out) + "\n")
        relaytest.run(["haproxy", "-c", "-f", self.cfg])
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.cfg],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + T
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise relaytest.TestError("haproxy did not start: %s" % (
                        self.proc.stderr.read().decode() if self.proc.poll() is not None else ""))
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(T)


def report(capsys, text):
    """Prints past pytest's capture, so ctest's log keeps the numbers a
    test measured (Testing/Temporary/LastTest.log)."""
    with capsys.disabled():
        print("\n" + text, flush=True)
