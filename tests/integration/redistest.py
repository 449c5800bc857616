"""redistest — a throwaway redis-server for the pub/sub tests.

``RedisServer(tmp)`` starts Debian's redis-server (in TEST_DEPS) on a free
loopback port, persisting nothing, optionally with ``requirepass``;
``stop()`` kills it (SIGKILL: a crash, as the tests want), ``start()``
brings it back on the same port, ``client()`` is a python3-redis client
(an independent RESP implementation).  Every wait is bounded.
"""

import os
import subprocess
import time

import redis

from relaytest import TestError, free_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, tmp, password=None):
        if not os.path.exists(REDIS_SERVER):
            raise TestError("%s missing: install redis-server (./dev test does)" % REDIS_SERVER)
        self.dir = str(tmp)
        os.makedirs(self.dir, exist_ok=True)
        self.password = password
        self.port = free_port()
        self.proc = None
        self.start()

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self, timeout=20):
        conf = os.path.join(self.dir, "redis.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "port %d" % self.port, "bind 127.0.0.1", "save \"\"", "appendonly no",
                "dir " + self.dir, "daemonize no", "loglevel notice", ""]
                + (["requirepass " + self.password, ""] if self.password else [])))
        log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen([REDIS_SERVER, conf], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TestError("redis-server did not start:\n" + self.log())
            time.sleep(0.05)

    def client(self, **kw):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=10, **kw)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self):
        try:
            with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""
