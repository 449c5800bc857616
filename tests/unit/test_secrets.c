/*
 * test_secrets.c — slot tokens are wiped before the memory holding them is
 * freed: in decoded protobuf messages and framed bytes on both ends of the
 * controller link (plain and mutual TLS), in nghttp2's and OpenSSL's
 * buffers there, and in the admin API's created-session JSON body.
 *
 * How: under AddressSanitizer a free hook runs just before every free(3)
 * in the process (our code, protobuf-c, nghttp2, OpenSSL, jansson, any
 * thread), while the block is still valid.  It copies each freed block into
 * an mmap'd arena; afterwards the arena is searched for the tokens.  A
 * token found there was freed unwiped.  The tokens are random, so they
 * occur nowhere else; a plain cm_buf grown past a token is the control that
 * shows the detector does see what is left behind.  Without ASan the tests
 * are skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "controller-stub/controller.h"
#include "relay/relay.h"
#include "testcerts.h"
#include "testloop.h"
#include "tunnel/tunnel.h"

#include "freedscan.h"

/* ---- the detector itself ------------------------------------------------------------ */

static void test_detector_sees_unwiped_and_not_wiped(void **st) {
  (void)st;
  need_asan();
  char plain_tok[CM_TOKEN_LEN + 1], secret_tok[CM_TOKEN_LEN + 1];
  assert_int_equal(cm_random_token(plain_tok), 0);
  assert_int_equal(cm_random_token(secret_tok), 0);
  uint8_t filler[1000];
  memset(filler, 'x', sizeof filler);
  scan_start();
  cm_buf plain, secret;
  cm_buf_init(&plain, 0);
  cm_buf_init_secret(&secret, 0);
  /* Growth moves the token (realloc frees the old block), consumption and
   * compaction leave bytes behind, reset and free let go of the rest. */
  cm_buf_append(&plain, plain_tok, CM_TOKEN_LEN);
  cm_buf_append(&secret, secret_tok, CM_TOKEN_LEN);
  for (int i = 0; i < 8; i++) {
    cm_buf_append(&plain, filler, sizeof filler);
    cm_buf_append(&secret, filler, sizeof filler);
  }
  cm_buf_consume(&secret, 10);
  cm_buf_append(&secret, secret_tok, CM_TOKEN_LEN);
  cm_buf_reserve(&secret, 1 << 16); /* compacts, then grows */
  cm_buf_reset(&secret);
  cm_buf_append(&secret, secret_tok, CM_TOKEN_LEN);
  cm_buf_free(&plain);
  cm_buf_free(&secret);
  char *p = cm_secret_alloc(CM_TOKEN_LEN + 1);
  memcpy(p, secret_tok, CM_TOKEN_LEN + 1);
  p = cm_secret_realloc(p, 4096);
  cm_secret_free(p);
  scan_stop();
  assert_true(freed_unwiped(plain_tok)); /* the control: seen when left behind */
  assert_false(freed_unwiped(secret_tok));
}

/* ---- both ends of the link --------------------------------------------------------- */

/* Three tokens: one a relay sends in Validate, two a controller answers a
 * create with.  Kept in static storage, never on the heap. */
typedef struct link_tokens {
  char validate[CM_TOKEN_LEN + 1], initiator[CM_TOKEN_LEN + 1], responder[CM_TOKEN_LEN + 1];
  bool ctl_saw_validate, relay_saw_created;
  size_t links;
  bool validated, created, closed;
} link_tokens;

static link_tokens g_t;

static void h_validate(void *ud, tun_ctl_call *call, const Relay__V1__SlotRequest *req) {
  (void)ud;
  g_t.ctl_saw_validate = strcmp(req->token, g_t.validate) == 0;
  Relay__V1__SlotDecision d = RELAY__V1__SLOT_DECISION__INIT;
  d.allow = true;
  d.http_status = 200;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &d.base);
}

static void h_admin(void *ud, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  (void)ud;
  (void)req;
  Relay__V1__SessionStatus st = RELAY__V1__SESSION_STATUS__INIT;
  st.id = (char *)"session-1";
  Relay__V1__CreatedSession cs = RELAY__V1__CREATED_SESSION__INIT;
  cs.status = &st;
  cs.initiator_token = g_t.initiator;
  cs.responder_token = g_t.responder;
  Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
  r.http_status = 201;
  r.created = &cs;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
}

static const tun_ctl_handlers g_handlers = {h_validate, h_admin, NULL, NULL};

static void r_on_links(void *ud, size_t n) {
  (void)ud;
  g_t.links = n;
}
static const tun_relay_cbs g_rcbs = {NULL, r_on_links, NULL};

static void on_validated(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                         const char *controller) {
  (void)ud;
  (void)message;
  (void)controller;
  g_t.validated = status == TUN_GRPC_OK && resp;
}

static void on_created(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                       const char *controller) {
  (void)ud;
  (void)message;
  (void)controller;
  const Relay__V1__AdminResponse *r = (const Relay__V1__AdminResponse *)resp;
  g_t.created = true;
  g_t.relay_saw_created = status == TUN_GRPC_OK && r && r->created &&
                          strcmp(r->created->initiator_token, g_t.initiator) == 0 &&
                          strcmp(r->created->responder_token, g_t.responder) == 0;
}

static void on_closed(void *ud) {
  (void)ud;
  g_t.closed = true;
}

/* One Validate and one create over the link, then everything closed and
 * freed; returns with the scan stopped. */
static void exchange_and_close(tun_relay *r, tun_ctl *c) {
  bool up = false;
  uint64_t end = cm_now_mono_ms() + 5000;
  while (!(up = g_t.links >= 1) && cm_now_mono_ms() < end)
    run_until(&up, 10);
  assert_true(up);
  Relay__V1__SlotRequest q = RELAY__V1__SLOT_REQUEST__INIT;
  q.session_id = (char *)"session-1";
  q.token = g_t.validate;
  int status;
  assert_non_null(tun_relay_call(r, TUN_PATH_VALIDATE, &q.base,
                                 &relay__v1__slot_decision__descriptor, 2000, on_validated, NULL,
                                 &status));
  assert_true(run_until(&g_t.validated, 3000));
  Relay__V1__AdminRequest a = RELAY__V1__ADMIN_REQUEST__INIT;
  a.op = RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE;
  assert_non_null(tun_relay_call(r, TUN_PATH_ADMIN, &a.base, &relay__v1__admin_response__descriptor,
                                 2000, on_created, NULL, &status));
  assert_true(run_until(&g_t.created, 3000));
  g_t.closed = false;
  tun_ctl_close(c, on_closed, NULL);
  assert_true(run_until(&g_t.closed, 3000));
  tun_ctl_free(c);
  g_t.closed = false;
  tun_relay_close(r, on_closed, NULL);
  assert_true(run_until(&g_t.closed, 3000));
  tun_relay_free(r);
  scan_stop();
}

static void tokens_fresh(void) {
  memset(&g_t, 0, sizeof g_t);
  assert_int_equal(cm_random_token(g_t.validate), 0);
  assert_int_equal(cm_random_token(g_t.initiator), 0);
  assert_int_equal(cm_random_token(g_t.responder), 0);
}

static void assert_tokens_wiped(void) {
  assert_true(g_t.ctl_saw_validate); /* the tokens did cross */
  assert_true(g_t.relay_saw_created);
  assert_false(freed_unwiped(g_t.validate));
  assert_false(freed_unwiped(g_t.initiator));
  assert_false(freed_unwiped(g_t.responder));
}

static void test_link_plain_wipes_tokens(void **st) {
  (void)st;
  need_asan();
  tokens_fresh();
  scan_start();
  char err[256];
  tun_relay_config rc = {.node_id = "relay-secrets"};
  tun_relay *r = tun_relay_new(loop, &rc, &g_rcbs, NULL, err, sizeof err);
  tun_ctl_config cc = {0};
  tun_ctl *c = tun_ctl_new(loop, &cc, &g_handlers, NULL, err, sizeof err);
  assert_non_null(r);
  assert_non_null(c);
  int fds[2];
  assert_int_equal(tun_socketpair(fds), 0);
  assert_int_equal(tun_relay_add_fd(r, fds[0], "embedded"), 0);
  assert_int_equal(tun_ctl_add_fd(c, fds[1]), 0);
  exchange_and_close(r, c);
  assert_tokens_wiped();
}

static void test_link_tls_wipes_tokens(void **st) {
  (void)st;
  need_asan();
  char *dir = tc_tmpdir();
  tc_cert ca = tc_make(dir, "ca", NULL, NULL, NULL, -60, 86400);
  tc_cert relay =
      tc_make(dir, "relay", &ca, "IP:127.0.0.1,URI:" CM_PKI_URI_RELAY, "serverAuth", -60, 86400);
  tc_cert ctl =
      tc_make(dir, "controller", &ca, "URI:" CM_PKI_URI_CONTROLLER, "clientAuth", -60, 86400);
  tokens_fresh();
  scan_start();
  char err[256], hp[64];
  tun_relay_config rc = {.node_id = "relay-secrets",
                         .cert_file = relay.cert_path,
                         .key_file = relay.key_path,
                         .ca_file = ca.cert_path};
  tun_relay *r = tun_relay_new(loop, &rc, &g_rcbs, NULL, err, sizeof err);
  assert_non_null(r);
  assert_int_equal(tun_relay_listen(r, "127.0.0.1:0", err, sizeof err), 0);
  tun_ctl_config cc = {
      .cert_file = ctl.cert_path, .key_file = ctl.key_path, .ca_file = ca.cert_path};
  tun_ctl *c = tun_ctl_new(loop, &cc, &g_handlers, NULL, err, sizeof err);
  assert_non_null(c);
  snprintf(hp, sizeof hp, "127.0.0.1:%d", tun_relay_port(r));
  assert_int_equal(tun_ctl_dial(c, hp, NULL, err, sizeof err), 0);
  exchange_and_close(r, c);
  assert_tokens_wiped();
  tc_free(&ca);
  tc_free(&relay);
  tc_free(&ctl);
  tc_rmdir(dir);
}

/* ---- the admin API's created-session body -------------------------------------------- */

typedef struct http_client {
  int port;
  char response[4096]; /* static storage: never freed, so never in the arena */
  bool done;
} http_client;

static http_client g_http;

/* POST /admin/sessions on a blocking socket, off the loop's thread. */
static void *post_create(void *arg) {
  http_client *h = arg;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_storage ss;
  cm_sockaddr_from("127.0.0.1", h->port, &ss);
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  static const char req[] = "POST /admin/sessions HTTP/1.1\r\nHost: relay\r\n"
                            "Content-Type: application/json\r\nContent-Length: 19\r\n"
                            "Connection: close\r\n\r\n{\"ttl_seconds\": 60}";
  size_t got = 0;
  if (connect(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)) == 0 &&
      write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
    ssize_t n;
    while (got + 1 < sizeof h->response &&
           (n = read(fd, h->response + got, sizeof h->response - 1 - got)) > 0)
      got += (size_t)n;
  }
  h->response[got] = '\0';
  close(fd);
  atomic_thread_fence(memory_order_release);
  h->done = true;
  return NULL;
}

/* The value of "key":"..." in the response body, into out. */
static bool json_field(const char *body, const char *key, char *out, size_t outlen) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(body, pat);
  if (!p) return false;
  p += strlen(pat);
  size_t n = strcspn(p, "\"");
  if (n == 0 || n >= outlen) return false;
  memcpy(out, p, n);
  out[n] = '\0';
  return true;
}

static void wait_thread_done(const http_client *h, uint64_t ms) {
  uint64_t end = cm_now_mono_ms() + ms;
  bool done = false;
  while (!(done = h->done) && cm_now_mono_ms() < end)
    run_until(&done, 10);
  assert_true(done);
}

static void test_admin_create_body_wipes_tokens(void **st) {
  (void)st;
  need_asan();
  rly_config cfg = {.listen = (char *)"127.0.0.1:0",
                    .plain = true,
                    .no_auth = true,
                    .node_id = (char *)"relay-secrets",
                    .alpn = (char *)"http/1.1",
                    .header_timeout_ms = 10000,
                    .idle_timeout_ms = 10000,
                    .max_connections = 100,
                    .call_timeout_ms = 5000,
                    .ping_interval_ms = 10000,
                    .ping_timeout_ms = 30000,
                    .max_message = 1 << 20,
                    .hold_bytes = 1 << 16,
                    .ws_high_watermark = 1 << 18,
                    .max_sessions = 100,
                    .metrics = (char *)"off"};
  memset(&g_http, 0, sizeof g_http);
  scan_start();
  char err[256];
  rly_server *s = rly_server_new(&cfg, err, sizeof err);
  if (!s) fail_msg("rly_server_new: %s", err);
  /* Embedded mode, composed as cmd/relay does: the reference controller
   * at the other end of a socketpair. */
  int fds[2];
  assert_int_equal(tun_socketpair(fds), 0);
  ctl_config cc = {.accept_unauthenticated = true};
  ctl_embedded *e = ctl_embedded_start(&cc, fds[1], err, sizeof err);
  if (!e) fail_msg("ctl_embedded_start: %s", err);
  assert_int_equal(rly_server_add_controller_fd(s, fds[0], "embedded", err, sizeof err), 0);
  if (rly_server_start(s, err, sizeof err) != 0) fail_msg("rly_server_start: %s", err);
  g_http.port = rly_server_public_port(s);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, post_create, &g_http), 0);
  wait_thread_done(&g_http, 15000);
  pthread_join(th, NULL);
  rly_server_free(s); /* shuts down, waits for the drain, joins */
  ctl_embedded_stop(e);
  scan_stop();

  assert_non_null(strstr(g_http.response, "HTTP/1.1 201 "));
  assert_non_null(strstr(g_http.response, "Cache-Control: no-store"));
  char t1[64], t2[64], id[64];
  assert_true(json_field(g_http.response, "initiator_token", t1, sizeof t1));
  assert_true(json_field(g_http.response, "responder_token", t2, sizeof t2));
  assert_true(json_field(g_http.response, "id", id, sizeof id));
  assert_int_equal(strlen(t1), CM_TOKEN_LEN);
  assert_int_equal(strlen(t2), CM_TOKEN_LEN);
  /* The session id is no secret: seeing it freed shows the scan covered
   * the request's path, so not finding the tokens means something. */
  assert_true(freed_unwiped(id));
  assert_false(freed_unwiped(t1));
  assert_false(freed_unwiped(t2));
  OPENSSL_cleanse(&g_http, sizeof g_http);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  freedscan_install();
  loop = uv_default_loop();
  cm_log_set_level(CM_LOG_WARN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_detector_sees_unwiped_and_not_wiped),
      cmocka_unit_test(test_link_plain_wipes_tokens),
      cmocka_unit_test(test_link_tls_wipes_tokens),
      cmocka_unit_test(test_admin_create_body_wipes_tokens),
  };
  int rc = cmocka_run_group_tests(tests, freedscan_setup, NULL);
  uv_loop_close(loop);
  return rc;
}
