/*
 * test_tunnel.c — the controller link end to end on one loop: gRPC framing,
 * calls over the in-process transport and over mutual TLS, identity checks
 * (relay cert as controller, unknown CA, expired), NOT_FOUND fail-over
 * between controllers, Validate asked again elsewhere after UNAVAILABLE or
 * a lost link (Admin not), deadlines, link loss with 1,000 calls in flight,
 * keepalive timeout, and redial with backoff.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "testcerts.h"
#include "testloop.h"
#include "tunnel/tunnel.h"

typedef struct ctl_state {
  int validates, admins, events, hellos, links_up;
  char last_node[128];
  bool answer_not_found;
  bool answer_unavailable; /* as a controller whose registry is unreachable */
  const char *name;
} ctl_state;

static void h_validate(void *ud, tun_ctl_call *call, const Relay__V1__SlotRequest *req) {
  ctl_state *st = ud;
  st->validates++;
  if (st->answer_unavailable) {
    tun_ctl_reply(call, TUN_GRPC_UNAVAILABLE, "registry unreachable", NULL);
    return;
  }
  if (st->answer_not_found || strcmp(req->session_id, "missing") == 0) {
    tun_ctl_reply(call, TUN_GRPC_NOT_FOUND, "unknown session", NULL);
    return;
  }
  Relay__V1__SlotDecision d = RELAY__V1__SLOT_DECISION__INIT;
  d.allow = strcmp(req->token, "good") == 0;
  d.slot = RELAY__V1__ROLE__ROLE_RESPONDER;
  d.http_status = d.allow ? 200 : 401;
  d.reason = (char *)(d.allow ? "" : "invalid_token");
  d.message = (char *)st->name;
  d.peer_wait_seconds = 120;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &d.base);
}

static void h_admin(void *ud, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  ctl_state *st = ud;
  st->admins++;
  if (st->answer_unavailable) {
    tun_ctl_reply(call, TUN_GRPC_UNAVAILABLE, "registry unreachable", NULL);
    return;
  }
  Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
  r.http_status = req->op == RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE ? 201 : 200;
  r.message = req->principal ? req->principal->subject : (char *)"";
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
}

static void h_event(void *ud, tun_ctl_link *l, const Relay__V1__RelayEvent *ev) {
  ctl_state *st = ud;
  st->events++;
  if (ev->kind_case == RELAY__V1__RELAY_EVENT__KIND_HELLO) {
    st->hellos++;
    snprintf(st->last_node, sizeof st->last_node, "%s", tun_ctl_link_node(l));
  }
}

static void h_link(void *ud, tun_ctl_link *l, bool up) {
  (void)l;
  ctl_state *st = ud;
  st->links_up += up ? 1 : -1;
}

static const tun_ctl_handlers g_handlers = {h_validate, h_admin, h_event, h_link};

typedef struct relay_state {
  size_t links;
  int commands;
  char last_cmd_session[64];
} relay_state;

static void r_on_links(void *ud, size_t n) { ((relay_state *)ud)->links = n; }
static void r_on_command(void *ud, const char *ctl, const Relay__V1__ControllerCommand *cmd) {
  (void)ctl;
  relay_state *rs = ud;
  rs->commands++;
  if (cmd->kind_case == RELAY__V1__CONTROLLER_COMMAND__KIND_KICK)
    snprintf(rs->last_cmd_session, sizeof rs->last_cmd_session, "%s", cmd->kick->session_id);
}
static const tun_relay_cbs g_rcbs = {r_on_command, r_on_links, NULL};

typedef struct call_result {
  bool done;
  int status;
  char message[128];
  char controller[96];
  bool allow;
  uint32_t http_status;
  uint64_t at_ms;
} call_result;

static void on_result(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                      const char *controller) {
  call_result *r = ud;
  r->done = true;
  r->status = status;
  r->at_ms = cm_now_mono_ms();
  snprintf(r->message, sizeof r->message, "%s", message);
  snprintf(r->controller, sizeof r->controller, "%s", controller);
  if (resp && resp->descriptor == &relay__v1__slot_decision__descriptor) {
    const Relay__V1__SlotDecision *d = (const Relay__V1__SlotDecision *)resp;
    r->allow = d->allow;
    r->http_status = d->http_status;
  }
}

static tun_call *validate(tun_relay *r, const char *session, const char *token, call_result *res,
                          uint32_t timeout_ms, int *status) {
  Relay__V1__SlotRequest q = RELAY__V1__SLOT_REQUEST__INIT;
  q.session_id = (char *)session;
  q.token = (char *)token;
  return tun_relay_call(r, TUN_PATH_VALIDATE, &q.base, &relay__v1__slot_decision__descriptor,
                        timeout_ms, on_result, res, status);
}

static bool g_closed;
static void on_closed(void *ud) {
  (void)ud;
  g_closed = true;
}

static void close_relay(tun_relay *r) {
  g_closed = false;
  tun_relay_close(r, on_closed, NULL);
  assert_true(run_until(&g_closed, 3000));
  tun_relay_free(r);
}

static void close_ctl(tun_ctl *c) {
  g_closed = false;
  tun_ctl_close(c, on_closed, NULL);
  assert_true(run_until(&g_closed, 3000));
  tun_ctl_free(c);
}

static tun_relay *new_relay(relay_state *rs, const tun_relay_config *extra) {
  tun_relay_config rc = {.node_id = "relay-1", .version = "test", .public_url = "wss://r1"};
  if (extra) rc = *extra;
  char err[256];
  tun_relay *r = tun_relay_new(loop, &rc, &g_rcbs, rs, err, sizeof err);
  if (!r) fail_msg("tun_relay_new: %s", err);
  return r;
}

static tun_ctl *new_ctl(ctl_state *cs, const tun_ctl_config *extra) {
  tun_ctl_config cc = {0};
  if (extra) cc = *extra;
  char err[256];
  tun_ctl *c = tun_ctl_new(loop, &cc, &g_handlers, cs, err, sizeof err);
  if (!c) fail_msg("tun_ctl_new: %s", err);
  return c;
}

static void link_pair(tun_relay *r, tun_ctl *c, const char *name) {
  int fds[2];
  assert_int_equal(tun_socketpair(fds), 0);
  assert_int_equal(tun_relay_add_fd(r, fds[0], name), 0);
  assert_int_equal(tun_ctl_add_fd(c, fds[1]), 0);
}

static bool links_at_least(relay_state *rs, size_t n, uint64_t ms) {
  uint64_t end = cm_now_mono_ms() + ms;
  while (rs->links < n && cm_now_mono_ms() < end)
    run_ms(10);
  return rs->links >= n;
}

/* ---- framing ---------------------------------------------------------------------- */

static int count_msg(void *ud, const uint8_t *m, size_t n) {
  (void)m;
  size_t *total = ud;
  *total += n + 1;
  return 0;
}

static void test_grpc_framing(void **st) {
  (void)st;
  Relay__V1__Kick k = RELAY__V1__KICK__INIT;
  k.session_id = (char *)"abc";
  k.close_code = 1001;
  cm_buf out;
  cm_buf_init(&out, 0);
  assert_int_equal(tun_grpc_encode(&out, &k.base), 0);
  assert_int_equal(tun_grpc_encode(&out, &k.base), 0);
  size_t one = cm_buf_size(&out) / 2;
  assert_int_equal(cm_buf_head(&out)[0], 0);
  assert_int_equal(cm_buf_head(&out)[4], one - 5);
  /* byte by byte gives the same two messages */
  tun_grpc_decoder d;
  tun_grpc_decoder_init(&d, 1024);
  size_t total = 0;
  for (size_t i = 0; i < cm_buf_size(&out); i++)
    assert_int_equal(tun_grpc_decode(&d, cm_buf_head(&out) + i, 1, count_msg, &total), 0);
  assert_int_equal(total, 2 * (one - 5 + 1));
  tun_grpc_decoder_free(&d);
  /* compressed flag and oversized length are refused */
  uint8_t comp[] = {1, 0, 0, 0, 0};
  tun_grpc_decoder_init(&d, 16);
  assert_int_equal(tun_grpc_decode(&d, comp, 5, count_msg, &total), -EPROTO);
  tun_grpc_decoder_free(&d);
  uint8_t big[] = {0, 0, 0, 1, 0};
  tun_grpc_decoder_init(&d, 16);
  assert_int_equal(tun_grpc_decode(&d, big, 5, count_msg, &total), -EMSGSIZE);
  tun_grpc_decoder_free(&d);
  /* empty message is a message */
  uint8_t empty[] = {0, 0, 0, 0, 0};
  total = 0;
  tun_grpc_decoder_init(&d, 16);
  assert_int_equal(tun_grpc_decode(&d, empty, 5, count_msg, &total), 0);
  assert_int_equal(total, 1);
  tun_grpc_decoder_free(&d);
  cm_buf_free(&out);

  char t[16];
  uint64_t ms;
  tun_grpc_timeout_format(1500, t);
  assert_string_equal(t, "1500m");
  assert_int_equal(tun_grpc_timeout_parse(t, &ms), 0);
  assert_int_equal(ms, 1500);
  tun_grpc_timeout_format(200000000ULL, t);
  assert_string_equal(t, "200000S");
  assert_int_equal(tun_grpc_timeout_parse("2S", &ms), 0);
  assert_int_equal(ms, 2000);
  assert_int_equal(tun_grpc_timeout_parse("123456789S", &ms), -EINVAL);
  assert_int_equal(tun_grpc_timeout_parse("10x", &ms), -EINVAL);
  char enc[64], dec[64];
  tun_grpc_message_encode("bad token % ü", enc, sizeof enc);
  assert_string_equal(enc, "bad token %25 %C3%BC");
  tun_grpc_message_decode(enc, dec, sizeof dec);
  assert_string_equal(dec, "bad token % ü");
}

/* ---- in-process transport ------------------------------------------------------------ */

static void test_embedded_roundtrip(void **st) {
  (void)st;
  relay_state rs = {0};
  ctl_state cs = {.name = "ctl-a"};
  tun_relay *r = new_relay(&rs, NULL);
  tun_ctl *c = new_ctl(&cs, NULL);
  int status;
  call_result res = {0};
  /* no link: fails at once, callback not called */
  assert_null(validate(r, "s1", "good", &res, 1000, &status));
  assert_int_equal(status, TUN_GRPC_UNAVAILABLE);
  assert_false(res.done);

  link_pair(r, c, "embedded");
  assert_true(links_at_least(&rs, 1, 2000));
  assert_non_null(validate(r, "s1", "good", &res, 1000, &status));
  assert_true(run_until(&res.done, 2000));
  assert_int_equal(res.status, TUN_GRPC_OK);
  assert_true(res.allow);
  assert_string_equal(res.controller, "embedded");

  call_result bad = {0};
  assert_non_null(validate(r, "s1", "bad", &bad, 1000, &status));
  assert_true(run_until(&bad.done, 2000));
  assert_false(bad.allow);
  assert_int_equal(bad.http_status, 401);

  /* Admin carries the principal */
  Relay__V1__Principal p = RELAY__V1__PRINCIPAL__INIT;
  p.subject = (char *)"alice";
  Relay__V1__AdminRequest a = RELAY__V1__ADMIN_REQUEST__INIT;
  a.op = RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE;
  a.principal = &p;
  call_result ar = {0};
  assert_non_null(tun_relay_call(r, TUN_PATH_ADMIN, &a.base, &relay__v1__admin_response__descriptor,
                                 1000, on_result, &ar, &status));
  assert_true(run_until(&ar.done, 2000));
  assert_int_equal(ar.status, TUN_GRPC_OK);
  assert_int_equal(cs.admins, 1);

  /* Events: Hello reached the controller; a Kick reaches the relay */
  bool hello = false;
  uint64_t end = cm_now_mono_ms() + 2000;
  while (!(hello = cs.hellos == 1) && cm_now_mono_ms() < end)
    run_ms(10);
  assert_true(hello);
  assert_string_equal(cs.last_node, "relay-1");
  assert_int_equal(cs.links_up, 1);
  Relay__V1__Kick k = RELAY__V1__KICK__INIT;
  k.session_id = (char *)"sess-9";
  k.close_code = 1001;
  Relay__V1__ControllerCommand cmd = RELAY__V1__CONTROLLER_COMMAND__INIT;
  cmd.kind_case = RELAY__V1__CONTROLLER_COMMAND__KIND_KICK;
  cmd.kick = &k;
  assert_true(tun_ctl_send_to_node(c, "relay-1", &cmd));
  end = cm_now_mono_ms() + 2000;
  while (rs.commands == 0 && cm_now_mono_ms() < end)
    run_ms(10);
  assert_int_equal(rs.commands, 1);
  assert_string_equal(rs.last_cmd_session, "sess-9");

  /* a session event arrives */
  Relay__V1__SessionEvent se = RELAY__V1__SESSION_EVENT__INIT;
  se.type = RELAY__V1__SESSION_EVENT__TYPE__ATTACH;
  se.session_id = (char *)"s1";
  Relay__V1__RelayEvent ev = RELAY__V1__RELAY_EVENT__INIT;
  ev.kind_case = RELAY__V1__RELAY_EVENT__KIND_SESSION;
  ev.session = &se;
  int before = cs.events;
  assert_int_equal(tun_relay_send_event(r, "embedded", &ev), 0);
  end = cm_now_mono_ms() + 2000;
  while (cs.events == before && cm_now_mono_ms() < end)
    run_ms(10);
  assert_int_equal(cs.events, before + 1);

  close_ctl(c);
  assert_true(rs.links == 0 || (run_ms(200), rs.links == 0));
  close_relay(r);
}

static void test_not_found_fails_over(void **st) {
  (void)st;
  relay_state rs = {0};
  ctl_state a = {.name = "a", .answer_not_found = true}, b = {.name = "b"};
  tun_relay *r = new_relay(&rs, NULL);
  tun_ctl *ca = new_ctl(&a, NULL), *cb = new_ctl(&b, NULL);
  link_pair(r, ca, "ctl-a");
  link_pair(r, cb, "ctl-b");
  assert_true(links_at_least(&rs, 2, 2000));
  for (int i = 0; i < 6; i++) {
    call_result res = {0};
    int status;
    assert_non_null(validate(r, "s", "good", &res, 2000, &status));
    assert_true(run_until(&res.done, 2000));
    assert_int_equal(res.status, TUN_GRPC_OK);
    assert_string_equal(res.controller, "ctl-b");
  }
  assert_true(a.validates >= 1); /* round-robin started some calls on a */
  assert_int_equal(b.validates, 6);
  /* unknown everywhere: NOT_FOUND after asking each controller once */
  call_result res = {0};
  int status;
  int av = a.validates, bv = b.validates;
  assert_non_null(validate(r, "missing", "good", &res, 2000, &status));
  assert_true(run_until(&res.done, 2000));
  assert_int_equal(res.status, TUN_GRPC_NOT_FOUND);
  assert_int_equal(a.validates - av, 1);
  assert_int_equal(b.validates - bv, 1);
  close_ctl(ca);
  close_ctl(cb);
  close_relay(r);
}

static tun_call *admin_get(tun_relay *r, call_result *res, int *status) {
  Relay__V1__AdminRequest a = RELAY__V1__ADMIN_REQUEST__INIT;
  a.op = RELAY__V1__ADMIN_OP__ADMIN_OP_GET;
  a.session_id = (char *)"s";
  return tun_relay_call(r, TUN_PATH_ADMIN, &a.base, &relay__v1__admin_response__descriptor, 2000,
                        on_result, res, status);
}

/* A controller whose registry is down answers UNAVAILABLE: an Admin call
 * is not asked again (a create may have been done), a Validate is asked of
 * the other controller, and the one that answered UNAVAILABLE gets new
 * calls only when no other link can take them, for a second. */
static void test_unavailable_fails_over_validate_only(void **st) {
  (void)st;
  relay_state rs = {0};
  ctl_state a = {.name = "a", .answer_unavailable = true}, b = {.name = "b"};
  tun_relay *r = new_relay(&rs, NULL);
  tun_ctl *ca = new_ctl(&a, NULL), *cb = new_ctl(&b, NULL);
  link_pair(r, ca, "ctl-a");
  link_pair(r, cb, "ctl-b");
  assert_true(links_at_least(&rs, 2, 2000));
  int status;
  call_result adm = {0}, adm2 = {0};
  assert_non_null(admin_get(r, &adm, &status)); /* round-robin: a first */
  assert_true(run_until(&adm.done, 2000));
  assert_int_equal(adm.status, TUN_GRPC_UNAVAILABLE);
  assert_string_equal(adm.controller, "ctl-a");
  assert_string_equal(adm.message, "registry unreachable");
  assert_non_null(admin_get(r, &adm2, &status));
  assert_true(run_until(&adm2.done, 2000));
  assert_int_equal(adm2.status, TUN_GRPC_OK);
  assert_int_equal(a.admins, 1); /* not repeated */
  assert_int_equal(b.admins, 1);
  for (int i = 0; i < 6; i++) { /* a is shunned: every one goes to b at once */
    call_result res = {0};
    assert_non_null(validate(r, "s", "good", &res, 2000, &status));
    assert_true(run_until(&res.done, 2000));
    assert_int_equal(res.status, TUN_GRPC_OK);
    assert_string_equal(res.controller, "ctl-b");
  }
  assert_int_equal(a.validates, 0);
  assert_int_equal(b.validates, 6);
  run_ms(1100); /* the shun lapses: a is asked again, fails, b answers */
  for (int i = 0; i < 2; i++) {
    call_result res = {0};
    assert_non_null(validate(r, "s", "good", &res, 2000, &status));
    assert_true(run_until(&res.done, 2000));
    assert_int_equal(res.status, TUN_GRPC_OK);
    assert_string_equal(res.controller, "ctl-b");
  }
  assert_int_equal(a.validates, 1);
  assert_int_equal(b.validates, 8);
  /* unavailable everywhere: UNAVAILABLE after asking each controller once */
  b.answer_unavailable = true;
  call_result res = {0};
  assert_non_null(validate(r, "s", "good", &res, 2000, &status));
  assert_true(run_until(&res.done, 2000));
  assert_int_equal(res.status, TUN_GRPC_UNAVAILABLE);
  assert_int_equal(a.validates, 2);
  assert_int_equal(b.validates, 9);
  close_ctl(ca);
  close_ctl(cb);
  close_relay(r);
}

/* Two independent controllers: a's registry is unreachable, b does not
 * know the session.  The answer is 503 (a may know it), never b's 404. */
static void test_not_found_after_unavailable_is_unavailable(void **st) {
  (void)st;
  relay_state rs = {0};
  ctl_state a = {.name = "a", .answer_unavailable = true},
            b = {.name = "b", .answer_not_found = true};
  tun_relay *r = new_relay(&rs, NULL);
  tun_ctl *ca = new_ctl(&a, NULL), *cb = new_ctl(&b, NULL);
  link_pair(r, ca, "ctl-a");
  link_pair(r, cb, "ctl-b");
  assert_true(links_at_least(&rs, 2, 2000));
  for (int i = 0; i < 2; i++) { /* a first (round-robin), then b first (a shunned) */
    call_result res = {0};
    int status;
    assert_non_null(validate(r, "s", "good", &res, 2000, &status));
    assert_true(run_until(&res.done, 2000));
    assert_int_equal(res.status, TUN_GRPC_UNAVAILABLE);
  }
  assert_true(a.validates >= 2);
  assert_int_equal(b.validates, 2);
  close_ctl(ca);
  close_ctl(cb);
  close_relay(r);
}

/* ---- raw fake controller: a socket the test drives by hand ----------------------------- */

static const uint8_t k_settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};

static void drain_fd(int fd) {
  uint8_t buf[65536];
  while (read(fd, buf, sizeof buf) > 0) {
  }
}

static void test_link_loss_fails_inflight_calls(void **st) {
  (void)st;
  relay_state rs = {0};
  tun_relay *r = new_relay(&rs, NULL);
  int fds[2];
  assert_int_equal(tun_socketpair(fds), 0);
  assert_int_equal(tun_relay_add_fd(r, fds[0], "raw"), 0);
  assert_int_equal(write(fds[1], k_settings, sizeof k_settings), 9);
  assert_true(links_at_least(&rs, 1, 2000));
  enum { N = 1000 };
  static call_result res[N];
  memset(res, 0, sizeof res);
  for (int i = 0; i < N; i++) {
    int status;
    assert_non_null(validate(r, "s", "good", &res[i], 10000, &status));
  }
  run_ms(100);
  drain_fd(fds[1]);
  for (int i = 0; i < N; i++)
    assert_false(res[i].done);
  uint64_t t0 = cm_now_mono_ms();
  close(fds[1]); /* the controller dies */
  bool all = false;
  uint64_t end = t0 + 1000;
  while (!all && cm_now_mono_ms() < end) {
    run_ms(5);
    all = true;
    for (int i = 0; i < N && all; i++)
      all = res[i].done;
  }
  assert_true(all);
  uint64_t worst = 0;
  for (int i = 0; i < N; i++) {
    assert_int_equal(res[i].status, TUN_GRPC_UNAVAILABLE);
    worst = CM_MAX(worst, res[i].at_ms - t0);
  }
  assert_true(worst < 1000);
  print_message("1000 in-flight calls failed UNAVAILABLE within %llu ms\n",
                (unsigned long long)worst);
  assert_int_equal(rs.links, 0);
  /* and with no link new calls fail at once */
  int status;
  call_result x = {0};
  assert_null(validate(r, "s", "good", &x, 1000, &status));
  assert_int_equal(status, TUN_GRPC_UNAVAILABLE);
  close_relay(r);
}

/* A controller dies with Validates in flight: each is asked again of the
 * other controller and answered; an Admin call in flight fails. */
static void test_link_loss_replays_validate(void **st) {
  (void)st;
  relay_state rs = {0};
  ctl_state b = {.name = "b"};
  tun_relay *r = new_relay(&rs, NULL);
  int fds[2];
  assert_int_equal(tun_socketpair(fds), 0);
  assert_int_equal(tun_relay_add_fd(r, fds[0], "raw"), 0);
  assert_int_equal(write(fds[1], k_settings, sizeof k_settings), 9);
  tun_ctl *cb = new_ctl(&b, NULL);
  link_pair(r, cb, "ctl-b");
  assert_true(links_at_least(&rs, 2, 2000));
  enum { N = 10 };
  call_result res[N] = {0}, adm[2] = {0};
  int status;
  for (int i = 0; i < N; i++)
    assert_non_null(validate(r, "s", "good", &res[i], 5000, &status));
  for (int i = 0; i < 2; i++)
    assert_non_null(admin_get(r, &adm[i], &status));
  run_ms(200);
  drain_fd(fds[1]);
  int answered = 0;
  for (int i = 0; i < N; i++)
    answered += res[i].done;
  assert_int_equal(answered, N / 2); /* the raw controller holds the others */
  assert_true(adm[0].done != adm[1].done);
  close(fds[1]); /* the raw controller dies */
  bool all = false;
  uint64_t end = cm_now_mono_ms() + 2000;
  while (!all && cm_now_mono_ms() < end) {
    run_ms(5);
    all = adm[0].done && adm[1].done;
    for (int i = 0; i < N && all; i++)
      all = res[i].done;
  }
  assert_true(all);
  for (int i = 0; i < N; i++) {
    assert_int_equal(res[i].status, TUN_GRPC_OK);
    assert_string_equal(res[i].controller, "ctl-b");
  }
  assert_int_equal(b.validates, N);
  call_result *lost = adm[0].status == TUN_GRPC_OK ? &adm[1] : &adm[0];
  assert_int_equal(lost->status, TUN_GRPC_UNAVAILABLE);
  assert_string_equal(lost->message, "controller link lost");
  assert_int_equal(b.admins, 1);
  tun_relay_stats rst;
  tun_relay_get_stats(r, &rst);
  assert_int_equal(rst.calls_replayed, N / 2);
  close_ctl(cb);
  close_relay(r);
}

static void test_deadline(void **st) {
  (void)st;
  relay_state rs = {0};
  tun_relay *r = new_relay(&rs, NULL);
  int fds[2];
  assert_int_equal(tun_socketpair(fds), 0);
  assert_int_equal(tun_relay_add_fd(r, fds[0], "raw"), 0);
  assert_int_equal(write(fds[1], k_settings, sizeof k_settings), 9);
  assert_true(links_at_least(&rs, 1, 2000));
  call_result res = {0};
  int status;
  uint64_t t0 = cm_now_mono_ms();
  assert_non_null(validate(r, "s", "good", &res, 200, &status));
  assert_true(run_until(&res.done, 2000));
  assert_int_equal(res.status, TUN_GRPC_DEADLINE_EXCEEDED);
  assert_true(res.at_ms - t0 >= 200 && res.at_ms - t0 < 600);
  drain_fd(fds[1]);
  close(fds[1]);
  close_relay(r);
}

static void test_keepalive_drops_silent_peer(void **st) {
  (void)st;
  relay_state rs = {0};
  tun_relay_config rc = {.node_id = "r", .link = {.ping_interval_ms = 100, .ping_timeout_ms = 300}};
  tun_relay *r = new_relay(&rs, &rc);
  int fds[2];
  assert_int_equal(tun_socketpair(fds), 0);
  assert_int_equal(tun_relay_add_fd(r, fds[0], "raw"), 0);
  assert_int_equal(write(fds[1], k_settings, sizeof k_settings), 9);
  assert_true(links_at_least(&rs, 1, 2000));
  uint64_t t0 = cm_now_mono_ms();
  while (rs.links > 0 && cm_now_mono_ms() - t0 < 2000) {
    run_ms(20);
    drain_fd(fds[1]); /* read but never answer PINGs */
  }
  assert_int_equal(rs.links, 0);
  assert_true(cm_now_mono_ms() - t0 < 1000);
  close(fds[1]);
  close_relay(r);
}

/* ---- mutual TLS ---------------------------------------------------------------------- */

typedef struct pki {
  char *dir;
  tc_cert ca, other_ca, relay, ctl, ctl_other, ctl_expired, relay_as_ctl;
} pki;

static void pki_make(pki *p) {
  p->dir = tc_tmpdir();
  p->ca = tc_make(p->dir, "ca", NULL, NULL, NULL, -60, 86400);
  p->other_ca = tc_make(p->dir, "other-ca", NULL, NULL, NULL, -60, 86400);
  p->relay = tc_make(p->dir, "relay", &p->ca, "IP:127.0.0.1,URI:" CM_PKI_URI_RELAY, "serverAuth",
                     -60, 86400);
  p->ctl =
      tc_make(p->dir, "controller", &p->ca, "URI:" CM_PKI_URI_CONTROLLER, "clientAuth", -60, 86400);
  p->ctl_other = tc_make(p->dir, "controller-other", &p->other_ca, "URI:" CM_PKI_URI_CONTROLLER,
                         "clientAuth", -60, 86400);
  p->ctl_expired = tc_make(p->dir, "controller-expired", &p->ca, "URI:" CM_PKI_URI_CONTROLLER,
                           "clientAuth", -7200, -3600);
  /* a relay certificate, even with clientAuth, is not a controller */
  p->relay_as_ctl = tc_make(p->dir, "relay-as-ctl", &p->ca, "IP:127.0.0.1,URI:" CM_PKI_URI_RELAY,
                            "serverAuth,clientAuth", -60, 86400);
}

static void pki_free(pki *p) {
  tc_free(&p->ca);
  tc_free(&p->other_ca);
  tc_free(&p->relay);
  tc_free(&p->ctl);
  tc_free(&p->ctl_other);
  tc_free(&p->ctl_expired);
  tc_free(&p->relay_as_ctl);
  tc_rmdir(p->dir);
}

/* A TLS relay listening on 127.0.0.1:port (0: a free port). */
static tun_relay *tls_relay_on(pki *p, relay_state *rs, int port) {
  tun_relay_config rc = {.node_id = "relay-tls",
                         .cert_file = p->relay.cert_path,
                         .key_file = p->relay.key_path,
                         .ca_file = p->ca.cert_path};
  tun_relay *r = new_relay(rs, &rc);
  char hp[64], err[256];
  snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
  assert_int_equal(tun_relay_listen(r, hp, err, sizeof err), 0);
  return r;
}

static tun_relay *tls_relay(pki *p, relay_state *rs, int *port) {
  tun_relay *r = tls_relay_on(p, rs, 0);
  *port = tun_relay_port(r);
  return r;
}

/* A controller with settings cc dialling 127.0.0.1:port over mutual TLS. */
static tun_ctl *dial_ctl(ctl_state *cs, tun_ctl_config cc, const tc_cert *cert, const tc_cert *ca,
                         int port) {
  cc.cert_file = cert->cert_path;
  cc.key_file = cert->key_path;
  cc.ca_file = ca->cert_path;
  tun_ctl *c = new_ctl(cs, &cc);
  char hp[64], err[256];
  snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
  assert_int_equal(tun_ctl_dial(c, hp, NULL, err, sizeof err), 0);
  return c;
}

static tun_ctl *tls_ctl(ctl_state *cs, const tc_cert *cert, const tc_cert *ca, int port) {
  tun_ctl_config cc = {.backoff_base_ms = 100, .backoff_max_ms = 400};
  return dial_ctl(cs, cc, cert, ca, port);
}

/* A free port, closed again so that dials to it are refused. */
static int free_port(pki *p) {
  relay_state rs = {0};
  int port;
  tun_relay *probe = tls_relay(p, &rs, &port);
  close_relay(probe);
  return port;
}

static void test_tls_roundtrip(void **st) {
  (void)st;
  pki p;
  pki_make(&p);
  relay_state rs = {0};
  ctl_state cs = {.name = "tls"};
  int port;
  tun_relay *r = tls_relay(&p, &rs, &port);
  tun_ctl *c = tls_ctl(&cs, &p.ctl, &p.ca, port);
  assert_true(links_at_least(&rs, 1, 3000));
  call_result res = {0};
  int status;
  assert_non_null(validate(r, "s1", "good", &res, 2000, &status));
  assert_true(run_until(&res.done, 2000));
  assert_int_equal(res.status, TUN_GRPC_OK);
  assert_true(res.allow);
  assert_non_null(strstr(res.controller, "controller#"));
  close_ctl(c);
  close_relay(r);
  pki_free(&p);
}

enum { USE_RELAY_AS_CTL, USE_CTL_OTHER_CA, USE_CTL_EXPIRED, USE_CTL };

static void refused(int which, bool ctl_trusts_other_ca, bool relay_is_refuser) {
  pki p;
  pki_make(&p);
  relay_state rs = {0};
  ctl_state cs = {.name = "x"};
  int port;
  tun_relay *r = tls_relay(&p, &rs, &port);
  const tc_cert *certs[] = {&p.relay_as_ctl, &p.ctl_other, &p.ctl_expired, &p.ctl};
  tun_ctl *c = tls_ctl(&cs, certs[which], ctl_trusts_other_ca ? &p.other_ca : &p.ca, port);
  run_ms(1200); /* several dial attempts with a 100-400 ms backoff */
  assert_int_equal(rs.links, 0);
  assert_int_equal(cs.links_up, 0);
  tun_relay_stats s;
  tun_relay_get_stats(r, &s);
  if (relay_is_refuser) assert_true(s.links_accepted >= 2); /* it kept redialling */
  close_ctl(c);
  close_relay(r);
  pki_free(&p);
}

static void test_tls_refusals(void **st) {
  (void)st;
  refused(USE_RELAY_AS_CTL, false, true); /* a relay's certificate as a controller */
  refused(USE_CTL_OTHER_CA, false, true); /* a controller cert from an unknown CA */
  refused(USE_CTL_EXPIRED, false, true);  /* an expired controller certificate */
  refused(USE_CTL, true, false);          /* the controller does not trust the relay */
}

/* Short-lived links: a relay on `port` that is closed as soon as the
 * controller has its Hello and listens again at once, until `until`.
 * Records when each Hello arrived; returns how many did. */
static int flap(pki *p, ctl_state *cs, int port, uint64_t until, uint64_t *at, int max) {
  int n = 0;
  while (cm_now_mono_ms() < until && n < max) {
    relay_state rs = {0};
    tun_relay *r = tls_relay_on(p, &rs, port);
    int seen = cs->hellos;
    while (cs->hellos == seen && cm_now_mono_ms() < until)
      run_ms(2);
    if (cs->hellos != seen) at[n++] = cm_now_mono_ms();
    close_relay(r);
  }
  return n;
}

static bool hellos_at_least(const ctl_state *cs, int n, uint64_t ms) {
  uint64_t end = cm_now_mono_ms() + ms;
  while (cs->hellos < n && cm_now_mono_ms() < end)
    run_ms(2);
  return cs->hellos >= n;
}

enum {
  FLAP_BASE_MS = 20,
  FLAP_MAX_MS = 2000,
  FLAP_STABLE_MS = 300,
  FLAP_WINDOW_MS = 2500,
};

static void test_redial_with_backoff(void **st) {
  (void)st;
  pki p;
  pki_make(&p);
  /* 1. A relay that is not there yet: once it listens, the link is back
   * within backoff_max (400 ms) plus a dial. */
  int port = free_port(&p);
  ctl_state cs = {.name = "late"};
  tun_ctl *c = tls_ctl(&cs, &p.ctl, &p.ca, port);
  run_ms(700);
  assert_int_equal(cs.links_up, 0);
  relay_state rs = {0};
  tun_relay *r = tls_relay_on(&p, &rs, port);
  uint64_t t0 = cm_now_mono_ms();
  assert_true(links_at_least(&rs, 1, 2000));
  assert_true(cm_now_mono_ms() - t0 < 1000);
  close_ctl(c);
  close_relay(r);

  /* 2. A relay that accepts, completes TLS and HTTP/2, takes the Hello and
   * drops: each such link counts as a failure, so the gaps between dials
   * grow.  With delay k uniform in [0, 20 ms * 2^(k-1)) capped at 2 s,
   * about 8 links fit in 2.5 s and 16 would need eight 2 s draws summing
   * under 1.5 s (p < 1e-5); without backoff, or with it reset on Hello as
   * before, a link comes every few tens of ms (dozens in the window). */
  port = free_port(&p);
  ctl_state fs = {.name = "flapping"};
  tun_ctl_config cc = {
      .backoff_base_ms = FLAP_BASE_MS, .backoff_max_ms = FLAP_MAX_MS, .stable_ms = FLAP_STABLE_MS};
  c = dial_ctl(&fs, cc, &p.ctl, &p.ca, port);
  uint64_t at[64];
  t0 = cm_now_mono_ms();
  int n = flap(&p, &fs, port, t0 + FLAP_WINDOW_MS, at, (int)CM_ARRAY_LEN(at));
  int early = 0;
  for (int i = 0; i < n; i++)
    early += at[i] - t0 < FLAP_WINDOW_MS / 2;
  print_message("short-lived links in %d ms: %d (%d in the first half)\n", FLAP_WINDOW_MS, n,
                early);
  assert_in_range(n, 4, 15);
  assert_true(early > n - early); /* links thin out: the gaps grow */

  /* 3. A link that stays up stable_ms resets the count: after it drops the
   * redial is immediate, not another draw from [0, 2 s). */
  r = tls_relay_on(&p, &rs, port);
  assert_true(hellos_at_least(&fs, fs.hellos + 1, 2 * FLAP_MAX_MS + 1000));
  run_ms(FLAP_STABLE_MS + 100);
  close_relay(r);
  int seen = fs.hellos;
  t0 = cm_now_mono_ms();
  r = tls_relay_on(&p, &rs, port);
  assert_true(hellos_at_least(&fs, seen + 1, 2 * FLAP_MAX_MS));
  print_message("redial after a stable link: %llu ms\n",
                (unsigned long long)(cm_now_mono_ms() - t0));
  assert_true(cm_now_mono_ms() - t0 < 500);
  close_ctl(c);
  close_relay(r);
  pki_free(&p);
}

static void test_two_relays_one_controller(void **st) {
  (void)st;
  pki p;
  pki_make(&p);
  relay_state rs1 = {0}, rs2 = {0};
  int port1, port2;
  tun_relay *r1 = tls_relay(&p, &rs1, &port1);
  tun_relay *r2 = tls_relay(&p, &rs2, &port2);
  ctl_state cs = {.name = "shared"};
  tun_ctl *c = tls_ctl(&cs, &p.ctl, &p.ca, port1);
  char hp[64], err[256];
  snprintf(hp, sizeof hp, "127.0.0.1:%d", port2);
  assert_int_equal(tun_ctl_dial(c, hp, NULL, err, sizeof err), 0);
  assert_true(links_at_least(&rs1, 1, 3000));
  assert_true(links_at_least(&rs2, 1, 3000));
  call_result a = {0}, b = {0};
  int status;
  assert_non_null(validate(r1, "s", "good", &a, 2000, &status));
  assert_non_null(validate(r2, "s", "good", &b, 2000, &status));
  assert_true(run_until(&a.done, 2000));
  assert_true(run_until(&b.done, 2000));
  assert_int_equal(a.status, TUN_GRPC_OK);
  assert_int_equal(b.status, TUN_GRPC_OK);
  assert_int_equal(cs.validates, 2);
  close_ctl(c);
  close_relay(r1);
  close_relay(r2);
  pki_free(&p);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  loop = uv_default_loop();
  cm_log_set_level(CM_LOG_WARN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grpc_framing),
      cmocka_unit_test(test_embedded_roundtrip),
      cmocka_unit_test(test_not_found_fails_over),
      cmocka_unit_test(test_unavailable_fails_over_validate_only),
      cmocka_unit_test(test_not_found_after_unavailable_is_unavailable),
      cmocka_unit_test(test_link_loss_fails_inflight_calls),
      cmocka_unit_test(test_link_loss_replays_validate),
      cmocka_unit_test(test_deadline),
      cmocka_unit_test(test_keepalive_drops_silent_peer),
      cmocka_unit_test(test_tls_roundtrip),
      cmocka_unit_test(test_tls_refusals),
      cmocka_unit_test(test_redial_with_backoff),
      cmocka_unit_test(test_two_relays_one_controller),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  uv_loop_close(loop);
  return rc;
}
