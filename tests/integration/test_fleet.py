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
"""

import asyncio
import json

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
        made.append(created(a, relay=node))
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
