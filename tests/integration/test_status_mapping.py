"""gRPC status and bad-answer mapping (issue 8, point 2, "Status mapping").

A stock gRPC server (python3-grpcio behind the dial-out bridge, see
grpcioctl.py) answers each Validate or Admin call the way a row says —
``context.abort(grpc.StatusCode.X, ...)`` or a crafted message — and the
relay must send the status the row names, always with a JSON error body
(``{"error", "message"}``), never an empty 500:

* test_validate_status[...] — the WebSocket upgrade's status for each gRPC
  status of Validate, and 502 bad_controller_answer for a SlotDecision
  that allows with slot UNSPECIFIED or refuses with no valid status.
* test_admin_status[...] — the same gRPC statuses on Admin (GET, CREATE,
  LIST, DELETE), and 502 bad_controller_answer for an OK AdminResponse
  with http_status 0 or outside 200..599, a CREATE answer without
  `created` or its tokens, a GET answer without exactly one session.

One relay, controller and bridge serve every row (module fixture).
"""

import json
import time

import grpc
import pytest

import grpcioctl as gc
import grpcpeer as gp
import relaytest

SC = grpc.StatusCode

# gRPC status -> HTTP status, on its meaning (issue 8 point 2).
GRPC_ROWS = [
    (SC.UNAUTHENTICATED, 401), (SC.PERMISSION_DENIED, 403), (SC.INVALID_ARGUMENT, 400),
    (SC.RESOURCE_EXHAUSTED, 429), (SC.NOT_FOUND, 404), (SC.UNAVAILABLE, 503),
    (SC.DEADLINE_EXCEEDED, 503),
    # Any other non-OK status is the controller's failure: 502.
    (SC.INTERNAL, 502), (SC.UNKNOWN, 502), (SC.FAILED_PRECONDITION, 502),
    (SC.UNIMPLEMENTED, 502), (SC.DATA_LOSS, 502),
]


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    pki = gp.Pki(tmp_path_factory.mktemp("pki"))
    relays = []

    def start_relay(plain=False, extra=(), **kw):
        r = relaytest.Relay(plain=plain, extra=extra, **kw)
        relays.append(r)
        return r
    relay, ctl, bridge = gc.grpcio_relay(start_relay, pki)
    try:
        yield relay, ctl
        assert not bridge.closed.is_set(), bridge.close_reason  # every row on one link
        relay.stop()
    finally:
        bridge.close()
        ctl.stop()
        for r in relays:
            r.kill()


@pytest.fixture
def hooks(link):
    _, ctl = link
    yield ctl
    ctl.validate_hook = ctl.admin_hook = None


def abort_with(code):
    def hook(req, context):
        context.abort(code, "row says %s" % code.name)
    return hook


def answer(msg):
    return lambda req, context: msg


def upgrade(relay):
    """A WebSocket upgrade for an unknown id; the relay's response."""
    s = gc.raw_upgrade(relay, gp.token22(), gp.token22())
    try:
        return relaytest.read_response(s)
    finally:
        s.close()


def check(resp, status, code=None):
    """The status, and the relay's JSON error shape (an empty 500 fails)."""
    body = relaytest.assert_error_body(resp, status, code)
    assert body["message"], body
    return body


BAD = "bad_controller_answer"


def _ok_status(**kw):
    now = int(time.time())
    st = {"id": gp.token22(), "state": "pending", "created_at_unix": now,
          "expires_at_unix": now + 60}
    st.update(kw)
    return st


@pytest.mark.parametrize("code,status", GRPC_ROWS, ids=[c.name for c, _ in GRPC_ROWS])
def test_validate_status(link, hooks, code, status):
    """Issue 8 point 2 (status mapping, Validate): the upgrade's status for
    each gRPC status.  On e47a26f every status but NOT_FOUND is 503."""
    relay, ctl = link
    hooks.validate_hook = abort_with(code)
    n = ctl.calls["Validate"]
    check(upgrade(relay), status)
    assert ctl.calls["Validate"] == n + 1  # asked once: no replay on one controller


BAD_DECISIONS = {
    "allow_slot_unspecified": {"allow": True, "http_status": 200,
                               "expires_at_unix": 2000000000, "peer_wait_seconds": 5},
    "refused_status_0": {"allow": False, "reason": "nope"},
    "refused_status_700": {"allow": False, "http_status": 700, "reason": "nope"},
}


@pytest.mark.parametrize("row", sorted(BAD_DECISIONS))
def test_validate_bad_answer(link, hooks, row):
    """Issue 8 point 2 (status mapping): a SlotDecision that allows with
    slot UNSPECIFIED, or refuses without a status in 400..599, is 502
    bad_controller_answer.  On e47a26f: 101 for the first (the upgrade is
    accepted into no slot), the refusals pass the status through."""
    relay, _ = link
    hooks.validate_hook = answer(BAD_DECISIONS[row])
    check(upgrade(relay), 502, BAD if row == "allow_slot_unspecified" else None)


ADMIN_REQUESTS = {
    "GET": lambda: ("GET", "/admin/sessions/" + gp.token22(), None),
    "CREATE": lambda: ("POST", "/admin/sessions", b'{"ttl_seconds": 60}'),
    "LIST": lambda: ("GET", "/admin/sessions", None),
    "DELETE": lambda: ("DELETE", "/admin/sessions/" + gp.token22(), None),
}


def admin(relay, op):
    method, path, body = ADMIN_REQUESTS[op]()
    return gp.http(relay, method, path, body)


ADMIN_GRPC_ROWS = [(op, c, s) for c, s in GRPC_ROWS for op in ("GET", "CREATE")] + [
    ("LIST", SC.PERMISSION_DENIED, 403), ("LIST", SC.UNAUTHENTICATED, 401),
    ("LIST", SC.INTERNAL, 502), ("DELETE", SC.UNAUTHENTICATED, 401),
    ("DELETE", SC.RESOURCE_EXHAUSTED, 429)]


@pytest.mark.parametrize("op,code,status", ADMIN_GRPC_ROWS,
                         ids=["%s-%s" % (op, c.name) for op, c, _ in ADMIN_GRPC_ROWS])
def test_admin_status(link, hooks, op, code, status):
    """Issue 8 point 2 (status mapping, Admin): the admin response's status
    for each gRPC status.  On e47a26f every status but NOT_FOUND is 503
    (and a LIST whose only controller fails is 503)."""
    relay, _ = link
    hooks.admin_hook = abort_with(code)
    check(admin(relay, op), status)


BAD_ADMIN = {
    "GET-status-0": ("GET", {"sessions": [_ok_status()]}),
    "GET-status-199": ("GET", {"http_status": 199, "sessions": [_ok_status()]}),
    "GET-status-600": ("GET", {"http_status": 600, "sessions": [_ok_status()]}),
    "GET-no-session": ("GET", {"http_status": 200}),
    "GET-two-sessions": ("GET", {"http_status": 200, "sessions": [_ok_status(), _ok_status()]}),
    "CREATE-status-0": ("CREATE", {"created": {"status": _ok_status(),
                                               "initiator_token": gp.token22(),
                                               "responder_token": gp.token22()}}),
    "CREATE-no-created": ("CREATE", {"http_status": 201}),
    "CREATE-no-tokens": ("CREATE", {"http_status": 201, "created": {"status": _ok_status()}}),
    "CREATE-no-responder-token": ("CREATE", {"http_status": 201, "created": {
        "status": _ok_status(), "initiator_token": gp.token22()}}),
    "CREATE-no-status": ("CREATE", {"http_status": 201, "created": {
        "initiator_token": gp.token22(), "responder_token": gp.token22()}}),
    "LIST-status-0": ("LIST", {"sessions": [_ok_status()]}),
    "DELETE-status-0": ("DELETE", {}),
}


@pytest.mark.parametrize("row", sorted(BAD_ADMIN))
def test_admin_bad_answer(link, hooks, row):
    """Issue 8 point 2 (status mapping): an OK AdminResponse the relay
    cannot use is 502 bad_controller_answer with a JSON body.  On e47a26f:
    http_status 0 or out of range is an empty 500 (or a 200 / 201 / 204
    passed on), a CREATE without tokens is a 201 with empty tokens."""
    relay, _ = link
    op, msg = BAD_ADMIN[row]
    hooks.admin_hook = answer(msg)
    check(admin(relay, op), 502, BAD)


def test_good_answers_still_pass(link, hooks):
    """Control for the rows above: the same link serves well-formed answers
    (the grpcio controller's own registry) with their real statuses."""
    relay, _ = link
    r = gp.http(relay, "POST", "/admin/sessions", json.dumps({"ttl_seconds": 60}).encode())
    assert r.status == 201, r
    sid = r.json()["id"]
    r = gp.http(relay, "GET", "/admin/sessions/" + sid)
    assert r.status == 200 and r.json()["id"] == sid, r
    check(gp.http(relay, "GET", "/admin/sessions/" + gp.token22()), 404)
    assert gp.http(relay, "DELETE", "/admin/sessions/" + sid).status == 204


def test_pipelined_admin_calls_and_a_client_that_leaves(link, hooks):
    """Two admin requests pipelined on one connection, the second slow at
    the controller; the client reads the first answer and leaves.  The
    relay must cancel the second call, its pending work, and not answer
    it into the freed connection.  Before the fix answering the first ran
    the second at once (pipelining) and finishing the first then erased
    the second's cancel hook: ASan, heap-use-after-free in
    rly_conn_respond when the slow answer came.  The same with a listing
    second (its own pending work and drain hook)."""
    relay, ctl = link
    slow = gp.token22()

    def hook(req, context):
        if req.get("session_id") == slow or req.get("op") == gp.OP_LIST:
            time.sleep(0.5)
        return None
    hooks.admin_hook = hook
    for second in ("/admin/sessions/" + slow, "/admin/sessions?limit=5"):
        s = relay.connect(relaytest.TIMEOUT)
        s.sendall(relaytest.http_request("GET", "/admin/sessions/" + gp.token22()) +
                  relaytest.http_request("GET", second))
        r = relaytest.Reader(s).read_response()
        assert r.status == 404, r
        s.close()
        time.sleep(1.0)  # the slow answer arrives for a connection that is gone
        assert relay.get("/healthz").status == 200
        relay.check_sanitizers()
