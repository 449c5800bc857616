"""Listing at scale (issue 8, point 2, "Listing at scale").

One relay with its embedded controller (--no-auth, plain HTTP) holds tens
of thousands of sessions, made through the admin API on pipelined
keep-alive connections.  The listing must:

* test_listing[35000|60000] — answer GET /admin/sessions without
  parameters with EVERY session exactly once, as {"sessions": [...]}
  streamed with Transfer-Encoding: chunked (on e47a26f 35,000 are cut
  mid-body after the 200 and 60,000 are a 503); and page with
  ?limit=1000: every page at most 1000 sessions and a next_page_token
  while more remain (the key absent on the last page); following the
  tokens yields every session exactly once;
* test_paging_parameters — limit outside 1..1000 is 400; page_token alone
  is a default page of 100; a malformed token is 400 invalid_request;
* test_slow_reader_bounded — a client reading a few KiB/s still gets the
  whole 60,000-session body; meanwhile the relay asks its controller for a
  page or two, not all of them (it fetches pages only as the client
  drains), its RSS stays bounded, and it keeps serving other requests;
* test_pause_then_read — a client that stops reading for longer than a
  few seconds after the status line then reads on gets the whole body:
  the write cap never truncates a 200;
* test_unpaged_controller_pause_then_read — the same with a stock gRPC
  controller (grpcio, behind the dial-out bridge) that does not page and
  answers 35,000 sessions in one message: still all of them, uncut.

On e47a26f the embedded controller answers at most 10,000 sessions to any
LIST (a silent truncation under a 200) and the relay ignores limit and
page_token; with a controller that sends all 35,000, the relay's write cap
cuts the 200 mid-body, as the issue reports.
"""

import json
import os
import re
import socket
import threading
import time

import pytest

import grpcioctl as gc
import grpcpeer as gp
import relaytest

SIZES = (35000, 60000)


class Bulk:
    """A relay with N sessions made through the admin API (grown on demand)."""

    CONNS, DEPTH = 4, 32  # keep-alive connections, requests in flight on each

    def __init__(self, relay):
        self.relay = relay
        self.ids = []
        self.lock = threading.Lock()

    def ensure(self, n):
        need = n - len(self.ids)
        if need <= 0:
            return set(self.ids)
        t0 = time.monotonic()
        per = [need // self.CONNS + (i < need % self.CONNS) for i in range(self.CONNS)]
        errors = []
        threads = [threading.Thread(target=self._create, args=(k, errors)) for k in per]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors[:3]
        assert len(self.ids) == n, len(self.ids)
        print("\ncreated %d sessions in %.1f s" % (need, time.monotonic() - t0))
        return set(self.ids)

    def _create(self, n, errors):
        req = relaytest.http_request("POST", "/admin/sessions", headers=[
            ("Content-Type", "application/json")], body=b'{"ttl_seconds": 3600}')
        try:
            s = self.relay.connect()
            rd = relaytest.Reader(s)
            sent = got = 0
            while got < n:
                burst = min(self.DEPTH - (sent - got), n - sent)
                if burst > 0:
                    s.sendall(req * burst)
                    sent += burst
                r = rd.read_response()
                assert r.status == 201, r
                with self.lock:
                    self.ids.append(r.json()["id"])
                got += 1
            s.close()
        except Exception as e:  # reported by ensure()
            errors.append(e)


@pytest.fixture(scope="module")
def bulk():
    # A small ASan quarantine: freed memory held for use-after-free checks
    # would otherwise show as RSS growth proportional to pages processed.
    asan = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    relay = relaytest.Relay(plain=True, log_level="info",
                            env={"ASAN_OPTIONS": asan + ":quarantine_size_mb=4"})
    try:
        relay.wait_for_log(msg="embedded controller started")
        gp.wait_ready(relay)
        yield Bulk(relay)
        relay.stop()
    finally:
        relay.kill()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return gp.Pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------
# Reading listings
# --------------------------------------------------------------------------

class BodyReader:
    """Reads one response off a raw socket, the body at a chosen pace."""

    def __init__(self, relay, path, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:  # before connect, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(relaytest.TIMEOUT)
        self.sock.connect(("127.0.0.1", relay.port))
        self.sock.sendall(relaytest.http_request("GET", path, headers=[("Connection", "close")]))
        self.raw = b""
        self.read_head()

    def recv(self, n=65536):
        data = self.sock.recv(n)
        if not data:
            raise EOFError("connection closed after %d body bytes" % len(self.raw))
        return data

    def read_head(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.recv()
        head, self.raw = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (l.partition(":") for l in lines[1:])}

    def chunked(self):
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    def read_all(self, timeout=120):
        deadline = time.monotonic() + timeout
        parts = [self.raw]
        tail = self.raw
        while not self._complete(tail, sum(map(len, parts))):
            assert time.monotonic() < deadline, "body not complete after %ds" % timeout
            data = self.recv()
            parts.append(data)
            tail = (tail + data)[-16:]
        self.raw = b"".join(parts)
        return self.body()

    def _complete(self, tail, n):
        if self.chunked():
            return tail.endswith(b"\r\n0\r\n\r\n") or (n == 5 and tail == b"0\r\n\r\n")
        return n >= int(self.headers["content-length"])

    def body(self):
        if not self.chunked():
            return self.raw
        out, i = [], 0
        while True:
            j = self.raw.index(b"\r\n", i)
            size = int(self.raw[i:j].split(b";")[0], 16)
            if size == 0:
                assert self.raw[j:] == b"\r\n\r\n", "bytes after the last chunk"
                return b"".join(out)
            out.append(self.raw[j + 2:j + 2 + size])
            assert self.raw[j + 2 + size:j + 4 + size] == b"\r\n", "bad chunk framing"
            i = j + 4 + size

    def close(self):
        self.sock.close()


def listed_ids(body):
    doc = json.loads(body)
    assert set(doc) <= {"sessions", "next_page_token"}, list(doc)
    return [s["id"] for s in doc["sessions"]], doc


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def get_json(relay, path):
    r = gp.http(relay, "GET", path, timeout=60)
    return r, (r.json() if r.body else None)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_listing(bulk, n):
    """Issue 8 point 2 (listing at scale): a listing without parameters
    returns every session once, streamed (chunked); ?limit=1000 pages
    through every session exactly once, a next_page_token on every page
    but the last.  Fails on e47a26f: 10,000 sessions come back (the
    embedded controller's cap), not chunked, and limit is ignored."""
    want = bulk.ensure(n)
    t0 = time.monotonic()
    rd = BodyReader(bulk.relay, "/admin/sessions")
    try:
        assert rd.status == 200, (rd.status, rd.raw[:300])
        assert rd.chunked(), rd.headers
        assert rd.headers.get("content-type", "").startswith("application/json"), rd.headers
        body = rd.read_all()
    finally:
        rd.close()
    took = time.monotonic() - t0
    ids, doc = listed_ids(body)
    assert "next_page_token" not in doc, "a listing without parameters is not a page"
    assert len(ids) == len(want) and set(ids) == want, (len(ids), len(set(ids)), len(want))

    t0 = time.monotonic()
    seen, token, pages = [], None, 0
    while True:
        q = "/admin/sessions?limit=1000" + ("&page_token=" + token if token else "")
        r, doc = get_json(bulk.relay, q)
        assert r.status == 200, r
        ids, _ = listed_ids(r.body)
        assert 0 < len(ids) <= 1000, len(ids)
        seen += ids
        pages += 1
        assert pages <= n // 1000 + 2, "too many pages"
        if "next_page_token" not in doc:
            break
        token = doc["next_page_token"]
        assert isinstance(token, str) and token, doc
    assert len(seen) == len(set(seen)), "a session listed twice"
    assert set(seen) == want, (len(seen), len(want))
    assert pages == -(-n // 1000), pages
    print("\n%d sessions: full listing %d bytes in %.2f s; %d pages of 1000 in %.2f s" % (
        n, len(body), took, pages, time.monotonic() - t0))


def test_paging_parameters(bulk):
    """Issue 8 point 2 (listing at scale): limit must be 1..1000; page_token
    alone is a default page of 100; a malformed token is 400
    invalid_request.  Fails on e47a26f: both parameters are ignored."""
    bulk.ensure(SIZES[0])
    for bad in ("0", "1001", "-5", "ten", "1e3"):
        r, _ = get_json(bulk.relay, "/admin/sessions?limit=" + bad)
        relaytest.assert_error_body(r, 400)
    r, doc = get_json(bulk.relay, "/admin/sessions?limit=5")
    assert r.status == 200 and len(doc["sessions"]) == 5 and doc["next_page_token"], r
    first = [s["id"] for s in doc["sessions"]]
    r, doc = get_json(bulk.relay, "/admin/sessions?page_token=" + doc["next_page_token"])
    assert r.status == 200, r
    page = [s["id"] for s in doc["sessions"]]
    assert len(page) == 100 and doc["next_page_token"], (len(page), doc.get("next_page_token"))
    assert not set(page) & set(first), "the next page repeats the first"
    r, _ = get_json(bulk.relay, "/admin/sessions?page_token=%21%21not-a-token%21%21")
    relaytest.assert_error_body(r, 400, "invalid_request")
    # A value that does not decode is refused too, not taken as absent
    # (which listed everything, unpaged, with 200).
    for bad in ("page_token=" + "A" * 1100, "page_token=%00", "limit=%00", "limit=" + "9" * 2000):
        r, _ = get_json(bulk.relay, "/admin/sessions?" + bad)
        relaytest.assert_error_body(r, 400, "invalid_request")
    r, doc = get_json(bulk.relay, "/admin/sessions?limit=1")
    assert r.status == 200 and len(doc["sessions"]) == 1, r


def test_slow_reader_bounded(bulk):
    """Issue 8 point 2 (listing at scale): a slow reader gets the whole
    listing and the relay does not buffer it meanwhile (pages are fetched
    as the client drains).  Fails on e47a26f (10,000 of 60,000 listed)."""
    n = SIZES[-1]
    want = bulk.ensure(n)
    relay = bulk.relay
    calls = lambda: gp.metrics(relay)["relay_controller_calls_total"]
    base, calls0 = rss_kib(relay.proc.pid), calls()
    rd = BodyReader(relay, "/admin/sessions", rcvbuf=8192)
    try:
        assert rd.status == 200, (rd.status, rd.raw[:300])
        peak, got, t0 = base, len(rd.raw), time.monotonic()
        while time.monotonic() - t0 < 6:       # about 4 KiB/s for 6 s
            rd.raw += rd.recv(1024)
            time.sleep(0.25)
            peak = max(peak, rss_kib(relay.proc.pid))
        got = len(rd.raw) - got
        slow_calls = calls() - calls0
        # The relay still serves others while this listing waits.
        r = gp.http(relay, "POST", "/admin/sessions", b"{}")
        assert r.status == 201, r
        bulk.ids.append(r.json()["id"])
        body = rd.read_all()
    finally:
        rd.close()
    all_calls = calls() - calls0 - 1
    ids, _ = listed_ids(body)
    assert set(ids) == want | {bulk.ids[-1]} or set(ids) == want, (len(ids), len(want))
    assert len(ids) == len(set(ids))
    grew_mib = (peak - base) / 1024
    print("\nslow reader: %d bytes in 6 s, %d controller calls meanwhile, %d in all; relay "
          "RSS %.1f -> %.1f MiB (+%.1f MiB) for a %.1f MiB body" % (
              got, slow_calls, all_calls, base / 1024, peak / 1024, grew_mib,
              len(body) / 2**20))
    # Paced by the reader: while it had taken a few KiB, the relay had
    # fetched no more than what the kernel's send buffer (net.ipv4.tcp_wmem
    # max) and its own write queue can hold, not the whole listing.
    page = len(body) / all_calls
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        kernel = int(f.read().split()[2])
    assert slow_calls * page <= got + kernel + 2 * 2**20, (slow_calls, page, kernel)
    assert slow_calls < all_calls / 2, (slow_calls, all_calls)
    # The body is ~14 MiB of JSON text alone (far more as a JSON tree):
    # holding it would show here; streaming holds about a page.
    assert grew_mib < 12, grew_mib


def paused_listing(relay, pause=8):
    """The full listing, read by a client that stops reading for `pause`
    seconds right after the status line; the ids listed."""
    rd = BodyReader(relay, "/admin/sessions", rcvbuf=8192)
    try:
        assert rd.status == 200, (rd.status, rd.raw[:300])
        time.sleep(pause)
        return listed_ids(rd.read_all())[0]
    finally:
        rd.close()


def test_pause_then_read(bulk):
    """Issue 8 point 2 (listing at scale): no 200 is cut after its status
    line: a client that stops reading for 8 s, then reads on, gets the whole
    body.  Fails on e47a26f, where only 10,000 sessions come back (see
    test_unpaged_controller_pause_then_read for the cut itself)."""
    want = bulk.ensure(SIZES[0])
    ids = paused_listing(bulk.relay)
    assert want <= set(ids) and len(ids) == len(set(ids)), (len(ids), len(want))


def test_unpaged_controller_pause_then_read(pki, start_relay):
    """Issue 8 point 2 (listing at scale: the write cap must not truncate a
    200; a listing without parameters returns every session): a stock
    controller that does not page answers 35,000 sessions at once; a client
    that pauses 8 s after the status line still gets them all.  Fails on
    e47a26f: the 8.5 MB body overruns the 4 MiB write cap and the
    connection is closed mid-body after the 200."""
    n = SIZES[0]
    relay, ctl, bridge = gc.grpcio_relay(start_relay, pki)
    try:
        ctl.pages = False
        want = {ctl.create().id for _ in range(n)}
        ids = paused_listing(relay)
        assert len(ids) == n and set(ids) == want, (len(ids), len(want))
    finally:
        bridge.close()
        ctl.stop()
