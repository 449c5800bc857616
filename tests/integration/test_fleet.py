"""A fleet (issue 12) on loopback, every part started by the test:
redis-server, two controllers sharing it (``--store redis://``), three
relays, and HAProxy.

* test_placement_across_relays — a create through relay-a is placed on
  the least loaded relay (relay-b: the others carry sessions), its URLs
  name relay-b, both peers validate there (through either controller) and
  relay 1 MiB each way, hashed; relay-a refuses the same peers 421.  A
  create may name the relay or a region (relay --region); unknown ones are
  400.  Every relay lists the fleet's sessions once (its links are one
  pool: the controllers answer from one registry).
* test_controller_killed_under_load — 200 sessions open and creations
  with upgrades running through all three relays; ctl-1 is SIGKILLed: no
  open session drops (each carries bytes both ways after), every session
  made is still known, creations and upgrades go on through ctl-2.  No
  upgrade fails: a Validate in flight on ctl-1's links is asked again of
  ctl-2.  Creates in flight there fail 503 (a create is not repeated): the
  test reports how many, when and why in ctest's log (at most 4 allowed,
  none after the first second).
* test_sentinel_failover — a master, a replica, a Sentinel and
  deploy/haproxy-redis.cfg in front as the controllers' --store: the
  master is SIGKILLed, Sentinel promotes the replica, creates come back
  (the 503s meanwhile and the time reported), an open session keeps
  flowing, every replicated session pairs again at once.
* test_redis_restart_and_down — AOF on: Redis SIGKILLed; creates and
  upgrades answer 503 at once (< 1 s), an open session keeps flowing;
  Redis restarted: every one of 50 sessions pairs again with its tokens,
  at its first attempt once a create succeeds (a controller still
  reconnecting answers Validate UNAVAILABLE, and the relay asks the
  other).
* test_redis_hung_times_out — a SIGSTOPped Redis costs the first call the
  store timeout (500 ms here), the next ones nothing: 503 at once.
* test_auth_acl_user — an ACL user with its password in a 0600 file: the
  controller works and the password is in neither its argv nor its log; a
  wrong password (from RELAY_STORE_PASSWORD) is logged as refused; a
  password file others may read is refused at start.
* test_delete_kicks_through_the_other_controller — ctl-1 links relay-a
  only, ctl-2 relay-b only: a session on relay-b deleted through relay-a
  has both peers closed 1001 "session deleted" within 0.5 s (ctl-1
  publishes the kick on Redis, ctl-2 sends it).
* test_reaper_lease_moves_to_a_survivor — the lease stays with its live
  holder (renewed); SIGKILL it and the other controller takes the lease
  when it expires and reaps an expired session.
* test_relay_killed_behind_haproxy — deploy/haproxy-fleet.cfg in front of
  three relays sharing one public URL: both peers of each of 30 sessions
  land on one relay (the hash spreads them); SIGKILL the busiest relay: its
  peers redial through HAProxy and pair again elsewhere with the same
  tokens, the other sessions never notice.
* test_two_controllers_race_for_a_slot — two controllers, each linking a
  different relay; the same slot token presented to both relays at once,
  1,000 times (RELAY_FLEET_RACES): exactly one upgrade wins (101), the
  other is 421 (or 409 when the winner's ATTACH reached Redis first).
"""

import asyncio
import json
import os
import signal
import time

import pytest

import fleettest as ft
import grpcioctl as gi
import grpcpeer as gp
import relaytest

T = relaytest.TIMEOUT


def create(relay_, **body):
    r = gp.http(relay_, "POST", "/admin/sessions", json.dumps(body).encode())
    return r


def created(relay_, **body):
    r = create(relay_, **body)
    assert r.status == 201, r
    return r.json()


def created_on(relay_, node, timeout=T):
    """A session placed on relay `node`.  Placement reads the fleet's view
    from the controllers' heartbeat (every second): a relay that linked a
    moment ago may not be in it yet (400 unknown_relay), so wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        r = create(relay_, relay=node)
        if r.status != 400 or time.monotonic() > deadline:
            assert r.status == 201, r
            return r.json()
        time.sleep(0.1)


def listing(relay):
    r = gp.http(relay, "GET", "/admin/sessions")
    assert r.status == 200, r
    return [s["id"] for s in r.json()["sessions"]]


@pytest.fixture
def fleet(tmp_path, start_relay, start_controller):
    redis = ft.Redis(tmp_path / "redis")
    f = ft.Fleet(tmp_path, start_relay, start_controller, redis,
                 relay_extra={"relay-b": ["--region", "eu"], "relay-c": ["--region", "us"]})
    f.wait_linked()
    yield f
    redis.stop()


def test_placement_across_relays(fleet):
    a, b, c = fleet.relays
    # Load: two sessions on relay-a, one on relay-c, none on relay-b.
    made = []
    for node in ("relay-a", "relay-a", "relay-c"):
        made.append(created_on(a, node))
        assert made[-1]["initiator_url"].startswith(
            "ws://127.0.0.1:%d/" % fleet.by_node(node).port)
    # Placement reads the fleet's load from the heartbeat: wait for it.
    s = None
    for _ in range(50):
        s = created(a, ttl_seconds=600)
        made.append(s)
        if s["initiator_url"].startswith("ws://127.0.0.1:%d/" % b.port):
            break
        asyncio.run(asyncio.sleep(0.1))
    assert s["initiator_url"] == "ws://127.0.0.1:%d/relay/%s" % (b.port, s["id"])
    assert s["responder_url"] == s["initiator_url"]

    async def pair():
        assert await gi.ws_status(a, s["id"], s["initiator_token"]) == 421
        i = await gi.ws_open(b, s["id"], s["initiator_token"])
        r = await gi.ws_open(b, s["id"], s["responder_token"])
        await asyncio.gather(gi.send_hashed(i, r, 1 << 20, 64 << 10),
                             gi.send_hashed(r, i, 1 << 20, 64 << 10))
        await i.close()
        await r.close()
    gi.run(pair())

    made.append(created(c, region="eu"))
    assert made[-1]["initiator_url"].startswith("ws://127.0.0.1:%d/" % b.port)
    made.append(created(a, relay="relay-c"))
    assert made[-1]["initiator_url"].startswith("ws://127.0.0.1:%d/" % c.port)
    r = create(a, relay="relay-z")
    assert r.status == 400 and r.json()["error"] == "unknown_relay", r
    r = create(a, region="mars")
    assert r.status == 400 and r.json()["error"] == "unknown_region", r
    # One pool: every relay lists each session once.
    ids = listing(a)
    assert sorted(ids) == sorted(m["id"] for m in made)
    assert sorted(listing(b)) == sorted(ids) == sorted(listing(c))


# --------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------

async def echo_both(i, r, data=b"x" * 1024):
    """One message each way on an open session."""
    await i.send(data)
    assert await asyncio.wait_for(r.recv(), T) == data
    await r.send(data)
    assert await asyncio.wait_for(i.recv(), T) == data


async def open_pair(relay_, s):
    i = await gi.ws_open(relay_, s["id"], s["initiator_token"])
    r = await gi.ws_open(relay_, s["id"], s["responder_token"])
    await echo_both(i, r)
    return i, r


def relay_of_url(fleet, url):
    return next(r for r in fleet.relays if url.startswith("ws://127.0.0.1:%d/" % r.port))


async def pair_each(fleet, sessions):
    """Each session pairs (on the relay its URL names) and carries a
    message each way, one after another."""
    for s in sessions:
        i, r = await open_pair(relay_of_url(fleet, s["initiator_url"]), s)
        await i.close()
        await r.close()


async def acreate(relay_, **body):
    return await gi.in_thread(lambda: create(relay_, **body))


def test_controller_killed_under_load(fleet, capsys):
    """200 open sessions and creations running; ctl-1 is SIGKILLed.  The
    failures during the switch go to ctest's log with their reasons."""
    a, b, c = fleet.relays
    stats = {"creates": 0, "create_failed": [], "upgrades": 0, "upgrade_failed": []}

    async def churn(stop):
        k = 0
        while not stop.is_set():
            via = fleet.relays[k % 3]
            k += 1
            res = await acreate(via, ttl_seconds=600)
            if res.status != 201:
                stats["create_failed"].append((time.monotonic(), res.status))
                continue
            stats["creates"] += 1
            s = res.json()
            made.append(s)
            target = relay_of_url(fleet, s["initiator_url"])
            try:
                i, r = await open_pair(target, s)
                stats["upgrades"] += 1
                await i.close()
                await r.close()
            except Exception as e:  # noqa: BLE001 - counted and reported
                why = getattr(e, "status_code", None) or repr(e)[:80]  # 503: no answer
                stats["upgrade_failed"].append((time.monotonic(), why))

    async def main():
        pairs = []
        for k in range(200):
            s = created(fleet.relays[k % 3], ttl_seconds=600)
            made.append(s)
            pairs.append(await open_pair(relay_of_url(fleet, s["initiator_url"]), s))
        stop = asyncio.Event()
        task = asyncio.ensure_future(churn(stop))
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        fleet.ctls[0].proc.kill()
        await asyncio.sleep(3.0)
        stop.set()
        await task
        # No open session dropped: every one still carries bytes both ways.
        for i, r in pairs:
            await echo_both(i, r)
        for i, r in pairs:
            await i.close()
            await r.close()
        return killed_at

    made = []
    killed_at = gi.run(main())
    late = [f for f in stats["create_failed"] + stats["upgrade_failed"] if f[0] > killed_at + 1.0]
    ft.report(capsys, "controller killed: %d creates, %d failed; %d upgrades, %d failed; "
              "after the first second: %d; failures (seconds after the kill, why): %s"
              % (stats["creates"], len(stats["create_failed"]), stats["upgrades"],
                 len(stats["upgrade_failed"]), len(late),
                 [(round(t - killed_at, 2), why) for t, why in
                  stats["create_failed"] + stats["upgrade_failed"]]))
    assert stats["creates"] > 20 and stats["upgrades"] > 20, stats
    assert not late, late
    # A Validate in flight on the dead link is asked again of ctl-2; a create
    # in flight there fails (503), no more than were in flight.
    assert not stats["upgrade_failed"], stats
    assert len(stats["create_failed"]) <= 4, stats
    # No session lost: the survivor knows every one.
    ids = set(listing(a))
    assert set(m["id"] for m in made) <= ids
    for m in made[:20]:
        assert gp.http(b, "GET", "/admin/sessions/" + m["id"]).status == 200


def test_redis_restart_and_down(tmp_path, start_relay, start_controller):
    """AOF on: a Redis SIGKILLed and restarted keeps every session.  Redis
    down: creates and upgrades are refused 503 at once, open sessions flow."""
    redis = ft.Redis(tmp_path / "redis", aof=True)
    fleet = ft.Fleet(tmp_path, start_relay, start_controller, redis, nrelays=2)
    fleet.wait_linked()
    a, b = fleet.relays
    made = [created(fleet.relays[k % 2], ttl_seconds=600) for k in range(50)]

    async def main():
        s0 = made[0]
        i, r = await open_pair(relay_of_url(fleet, s0["initiator_url"]), s0)
        redis.kill()
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        res = await acreate(a)
        took = time.monotonic() - t0
        assert res.status == 503 and took < 1.0, (res, took)
        s1 = made[1]
        assert await gi.ws_status(relay_of_url(fleet, s1["initiator_url"]), s1["id"],
                                  s1["initiator_token"]) == 503
        await echo_both(i, r)  # open sessions keep flowing
        redis.start()
        deadline = time.monotonic() + T
        while (await acreate(a)).status != 201:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await echo_both(i, r)
        # Every session survived the restart, and pairs at once: a Validate
        # that a controller still reconnecting answers 503 is asked of the
        # other, which the 201 shows is back.
        await pair_each(fleet, made[1:])
        await i.close()
        await r.close()
    gi.run(main())
    for c in fleet.ctls:
        c.wait_for_log(msg="redis unreachable; calls fail with 503")
    redis.stop()


def test_sentinel_failover(tmp_path, start_relay, start_controller, capsys):
    """Redis under Sentinel: a master, a replica, one Sentinel (quorum 1),
    and deploy/haproxy-redis.cfg in front, the controllers' --store.  The
    master is SIGKILLed: Sentinel promotes the replica, HAProxy follows
    role:master, the controllers reconnect; creates fail 503 until then
    (counted and reported), an open session keeps flowing, and every
    session written before the kill (replicated: WAIT) pairs again."""
    master = ft.Redis(tmp_path / "redis-1")
    replica = ft.Redis(tmp_path / "redis-2", replicaof=master.port)
    procs = [replica, master]
    try:
        deadline = time.monotonic() + T
        while replica.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
        sentinel = ft.Sentinel(tmp_path / "sentinel", master)
        procs.append(sentinel)
        hap = ft.Haproxy(tmp_path / "haproxy", [("redis-1", master.port),
                                                ("redis-2", replica.port)],
                         check_ms=200, cfg="haproxy-redis.cfg")
        procs.append(hap)
        fleet = ft.Fleet(tmp_path, start_relay, start_controller, ft.RedisAddr(hap.port),
                         nrelays=2)
        fleet.wait_linked()
        a, b = fleet.relays
        made = [created(fleet.relays[k % 2], ttl_seconds=600) for k in range(30)]
        assert master.cli("WAIT", 1, 5000) == 1  # all of it is on the replica

        async def main():
            s0 = made[0]
            i, r = await open_pair(relay_of_url(fleet, s0["initiator_url"]), s0)
            master.kill()
            killed_at = time.monotonic()
            failed = {}
            while True:
                res = await acreate(a, ttl_seconds=600)
                if res.status == 201:
                    break
                failed[res.status] = failed.get(res.status, 0) + 1
                assert time.monotonic() < killed_at + 30, failed
                await asyncio.sleep(0.1)
            took = time.monotonic() - killed_at
            await echo_both(i, r)  # open sessions never noticed
            await pair_each(fleet, made[1:])  # at once: see test_redis_restart_and_down
            await i.close()
            await r.close()
            return failed, took
        failed, took = gi.run(main())
        assert sentinel.master() == replica.port
        assert replica.info("replication")["role"] == "master"
        assert set(failed) <= {503}, failed
        ft.report(capsys, "sentinel failover: creates answered again %.1f s after the master "
                  "was killed; %d refused 503 meanwhile (Redis unreachable)"
                  % (took, failed.get(503, 0)))
    finally:
        for p in procs:
            p.stop()


def test_redis_hung_times_out(tmp_path, start_relay, start_controller):
    """A Redis that stops answering (SIGSTOP) costs a call at most the
    store timeout, then calls are refused at once."""
    redis = ft.Redis(tmp_path / "redis")
    fleet = ft.Fleet(tmp_path, start_relay, start_controller, redis, nrelays=1, nctl=1,
                     ctl_extra=["--store-timeout", "500ms"])
    fleet.wait_linked()
    a = fleet.relays[0]
    assert create(a).status == 201
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert create(a).status == 503
        first = time.monotonic() - t0
        t0 = time.monotonic()
        assert create(a).status == 503
        second = time.monotonic() - t0
        assert first < 1.5 and second < 0.3, (first, second)
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + T
    while create(a).status != 201:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    redis.stop()


def test_script_cache_flushed(tmp_path, start_relay, start_controller):
    """SCRIPT FLUSH (an operator's, or a Redis restarted behind a proxy
    that kept the connection) empties the script cache under a live
    connection: the controller reloads its scripts, and creates succeed
    again within a second.  Before, every call was NOSCRIPT, answered 503
    for as long as the connection stayed up."""
    redis = ft.Redis(tmp_path / "redis")
    fleet = ft.Fleet(tmp_path, start_relay, start_controller, redis, nrelays=1, nctl=1)
    fleet.wait_linked()
    a = fleet.relays[0]
    assert create(a).status == 201
    assert redis.cli("SCRIPT", "FLUSH").strip() == "OK"
    t0 = time.monotonic()
    statuses = []
    while time.monotonic() - t0 < 5:
        statuses.append(create(a).status)
        if statuses[-1] == 201:
            break
        time.sleep(0.05)
    assert statuses[-1] == 201 and time.monotonic() - t0 < 1.5, statuses
    redis.stop()


def test_shutdown_writes_the_last_relay_events(tmp_path, start_relay, start_controller):
    """Relay events wait up to --store-flush to be written in one script
    call; a controller stopped (SIGTERM) meanwhile writes what waits before
    it exits, so Redis knows which relay holds the slot of a peer that
    joined.  Before, the last batch was queued and then freed with the
    connection unsent: the ATTACH (or a DETACH, leaving a slot held)
    never reached Redis."""
    redis = ft.Redis(tmp_path / "redis")
    fleet = ft.Fleet(tmp_path, start_relay, start_controller, redis, nrelays=1, nctl=1,
                     ctl_extra=["--store-flush", "30s"])
    fleet.wait_linked()
    a = fleet.relays[0]
    s = created(a)
    key = "relay:s:" + s["id"]

    async def main():
        ws = await gi.ws_open(a, s["id"], s["initiator_token"])
        try:
            await asyncio.sleep(0.5)  # the ATTACH reaches the controller's batch
            assert redis.cli("HGET", key, "s1") in ("", None)  # 30 s batches: not yet
            await asyncio.get_running_loop().run_in_executor(None, fleet.ctls[0].stop)
            assert redis.cli("HGET", key, "s1") == a.node
        finally:
            await ws.close()
    asyncio.run(asyncio.wait_for(main(), 60))
    redis.stop()


def test_auth_acl_user(tmp_path, start_relay, start_controller):
    """An ACL user whose password comes from a 0600 file: it works, and the
    password reaches neither argv nor a log line.  A wrong one is refused
    (logged, calls 503); a file others may read is refused at start."""
    pw = "s3cret-" + gp.token22()
    redis = ft.Redis(tmp_path / "redis", password="admin-" + pw, users=[
        ("fleet", pw, "~relay:* &relay:* +@all")])
    good = tmp_path / "pw"
    good.write_text(pw + "\n")
    os.chmod(good, 0o600)
    fleet = ft.Fleet(tmp_path, start_relay, start_controller, redis, nrelays=1, nctl=0,
                     ctl_extra=["--store-password-file", str(good)])
    ctl = fleet.start_ctl(1, url=redis.url(user="fleet"))
    fleet.ctls.append(ctl)
    fleet.wait_linked()
    a = fleet.relays[0]
    s = created(a)
    assert redis.cli("HGET", "relay:s:" + s["id"], "n") == "relay-a"
    with open("/proc/%d/cmdline" % ctl.proc.pid, "rb") as f:
        assert pw.encode() not in f.read()
    # The environment works too, and a wrong password is refused.
    bad = fleet.start_controller(
        gp.controller_args([], fleet.pki.ca_dir, extra=[
            "--relay", "127.0.0.1:1", "--store", redis.url(user="fleet")]),
        env={"RELAY_STORE_PASSWORD": "wrong-" + pw})
    bad.wait_for_log(msg="redis refused the credentials")
    bad.stop()
    loose = tmp_path / "loose"
    loose.write_text(pw)
    os.chmod(loose, 0o644)
    p = relaytest.run([relaytest.CONTROLLER_BIN] + gp.controller_args(
        [], fleet.pki.ca_dir, extra=["--relay", "127.0.0.1:1", "--store", redis.url(),
                                     "--store-password-file", str(loose)]), check=False)
    assert p.returncode == 1 and b"only its owner" in p.stderr, p
    for proc in (ctl, bad):
        assert pw not in proc.stderr
    # --help says where credentials come from and how to protect the link.
    h = relaytest.run([relaytest.CONTROLLER_BIN, "run", "--help"]).stdout.decode()
    for words in ("--store-password-file", "RELAY_STORE_PASSWORD", "never the command line",
                  "NOT encrypted", "stunnel", "loopback or a private network"):
        assert words in " ".join(h.split()), words
    ctl.stop()
    redis.stop()


def shared_url_fleet(tmp_path, start_relay, start_controller, redis, port, **kw):
    """Relays behind one hostname: each says the same --public-url."""
    url = "ws://127.0.0.1:%d" % port
    extra = {n: ["--public-url", url] for n in ("relay-a", "relay-b", "relay-c")}
    return ft.Fleet(tmp_path, start_relay, start_controller, redis, relay_extra=extra, **kw)


def test_relay_killed_behind_haproxy(tmp_path, start_relay, start_controller):
    """deploy/haproxy-fleet.cfg hashes /relay/{id}: both peers of a session
    land on one relay.  SIGKILL that relay: its peers redial through
    HAProxy, land on a live relay and pair again with the same tokens; the
    other relays' sessions never notice."""
    redis = ft.Redis(tmp_path / "redis")
    port = ft.free_port()
    fleet = shared_url_fleet(tmp_path, start_relay, start_controller, redis, port)
    fleet.wait_linked()
    hap = ft.Haproxy(tmp_path, [(r.node, r.port) for r in fleet.relays], check_ms=200,
                     port=port)
    front = relaytest.Relay.__new__(relaytest.Relay)  # an address, for the helpers
    front.port, front.plain, front.certs = hap.port, True, None

    def holder(sid):
        return redis.cli("HGET", "relay:where", sid)

    async def main():
        made = [(await acreate(front, ttl_seconds=600)).json() for _ in range(30)]
        assert all(s["initiator_url"] == "ws://127.0.0.1:%d/relay/%s" % (hap.port, s["id"])
                   for s in made)
        pairs = [await open_pair(front, s) for s in made]
        nodes = [holder(s["id"]) for s in made]
        assert len(set(nodes)) >= 2, nodes  # the hash spreads sessions
        victim = max(set(nodes), key=nodes.count)
        fleet.by_node(victim).proc.kill()
        for (i, r), s, node in zip(pairs, made, nodes):
            if node != victim:
                await echo_both(i, r)  # untouched
                continue
            await asyncio.wait_for(i.wait_closed(), T)
            deadline = time.monotonic() + T
            while True:  # the peers redial until a live relay takes them
                try:
                    i2, r2 = await open_pair(front, s)
                    break
                except Exception:  # noqa: BLE001 - 502/503/421 while the fleet notices
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            assert holder(s["id"]) not in ("", victim)
            await i2.close()
            await r2.close()
        for (i, r), node in zip(pairs, nodes):
            if node != victim:
                await i.close()
                await r.close()
    try:
        gi.run(main())
    finally:
        hap.stop()
    redis.stop()


def one_controller_each(fleet, start_controller, redis):
    """ctl-1 links relay-a only, ctl-2 relay-b only, ... (one Redis)."""
    for i, r in enumerate(fleet.relays):
        cert = fleet.pki.extra_controller("ctl-%d" % (i + 1))
        fleet.ctls.append(start_controller(gp.controller_args(
            [r], fleet.pki.ca_dir, cert=cert, log_level="warn",
            extra=["--store", redis.url()])))
    for r in fleet.relays:
        gp.wait_links(r, 1)
    fleet.wait_live()


def test_delete_kicks_through_the_other_controller(tmp_path, start_relay, start_controller):
    """ctl-1 links relay-a only, ctl-2 relay-b only.  A session placed on
    relay-b is deleted through relay-a (ctl-1 answers): ctl-1 publishes the
    kick on Redis and ctl-2, which links relay-b, sends it — both peers
    are closed 1001 at once, and the session is gone for every relay."""
    redis = ft.Redis(tmp_path / "redis")
    try:
        fleet = ft.Fleet(tmp_path, start_relay, start_controller, redis, nrelays=2, nctl=0)
        a, b = fleet.relays
        one_controller_each(fleet, start_controller, redis)
        deadline = time.monotonic() + T
        while True:  # ctl-1 sees relay-b at its next heartbeat (1 s)
            res = create(a, relay="relay-b")
            if res.status != 400 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert res.status == 201, res
        s = res.json()
        assert s["initiator_url"].startswith("ws://127.0.0.1:%d/" % b.port)

        async def main():
            i, r = await open_pair(b, s)
            # Let ctl-2 write the attaches and the last counters: a later
            # event about a deleted session would be kicked as "session
            # unknown" anyway, which is not what this test is about.
            await asyncio.sleep(1.5)
            assert redis.cli("HMGET", "relay:s:" + s["id"], "s1", "s2") == ["relay-b"] * 2
            t0 = time.monotonic()
            assert gp.http(a, "DELETE", "/admin/sessions/" + s["id"]).status == 204
            for ws in (i, r):
                await asyncio.wait_for(ws.wait_closed(), 3.0)
                assert (ws.close_code, ws.close_reason) == (1001, "session deleted"), ws
            return time.monotonic() - t0
        took = gi.run(main())
        assert took < 0.5, took
        for relay_ in (a, b):
            assert gp.http(relay_, "GET", "/admin/sessions/" + s["id"]).status == 404
    finally:
        redis.stop()


def test_reaper_lease_moves_to_a_survivor(tmp_path, start_relay, start_controller):
    """One controller reaps at a time: the lease names it, and its holder
    keeps renewing it.  SIGKILL the holder: the other takes the lease once
    it expires (5 s) and reaps — an expired session leaves Redis's expiry
    index."""
    redis = ft.Redis(tmp_path / "redis")
    try:
        fleet = ft.Fleet(tmp_path, start_relay, start_controller, redis, nrelays=2)
        fleet.wait_linked()
        deadline = time.monotonic() + T
        while not redis.cli("GET", "relay:lease"):
            assert time.monotonic() < deadline, "no controller took the lease"
            time.sleep(0.05)
        holder = redis.cli("GET", "relay:lease")
        assert holder.split("#")[0] in ("ctl-1", "ctl-2"), holder
        # While its holder lives the lease stays with it, renewed (reaps run
        # every second; the lease is 5 s): the other never takes it.
        for _ in range(3):
            time.sleep(1.0)
            assert redis.cli("GET", "relay:lease") == holder
            assert redis.cli("PTTL", "relay:lease") > 3500
        dead = next(c for c in fleet.ctls if c.name == holder.split("#")[0])
        alive = next(c for c in fleet.ctls if c is not dead)
        s = created(fleet.relays[0], ttl_seconds=2)  # expires while nobody reaps
        dead.proc.kill()
        killed_at = time.monotonic()
        while redis.cli("GET", "relay:lease") in (None, holder):
            assert time.monotonic() < killed_at + 10, "the lease never moved"
            time.sleep(0.1)
        moved = time.monotonic() - killed_at
        assert redis.cli("GET", "relay:lease").split("#")[0] == alive.name
        assert moved < 7.0, moved
        deadline = time.monotonic() + T
        while redis.cli("ZSCORE", "relay:exp", s["id"]) is not None:
            assert time.monotonic() < deadline, "the survivor never reaped"
            time.sleep(0.1)
        assert redis.cli("EXISTS", "relay:s:" + s["id"]) == 0
    finally:
        redis.stop()


def test_two_controllers_race_for_a_slot(tmp_path, start_relay, start_controller):
    """Relays behind one hostname leave a session unassigned until a peer
    comes.  relay-a is linked to ctl-1 only and relay-b to ctl-2 only; the
    same slot token is presented to both at once, 1,000 times: exactly one
    upgrade wins each time.  The loser is 421 (the session moved to the
    winner) or, when the winner's ATTACH reached Redis before the loser's
    Validate did (a batch written in between), 409 (the slot is taken)."""
    redis = ft.Redis(tmp_path / "redis")
    fleet = shared_url_fleet(tmp_path, start_relay, start_controller, redis, ft.free_port(),
                             nrelays=2, nctl=0)
    a, b = fleet.relays
    one_controller_each(fleet, start_controller, redis)
    rounds = int(os.environ.get("RELAY_FLEET_RACES", "1000"))

    async def race(s):
        tok = s["initiator_token"]
        res = await asyncio.gather(gi.ws_status(a, s["id"], tok), gi.ws_status(b, s["id"], tok))
        return sorted(res)

    async def main():
        outcomes = {}
        for _ in range(rounds):
            s = (await acreate(a if _ % 2 else b)).json()
            res = await race(s)
            outcomes[tuple(res)] = outcomes.get(tuple(res), 0) + 1
            assert res in ([101, 409], [101, 421]), res
        return outcomes
    print("races:", gi.run(main(), timeout=600))
    redis.stop()
