/*
 * test_client.c — the client library's transport (client/client.h): URL
 * parsing and session URLs; one-shot HTTP/1.1 requests against a relay in
 * this process (plain and TLS: the admin API's real answers, headers and
 * JSON error messages), name resolution through uv_getaddrinfo, trust
 * (a private CA verifies, the system store refuses a self-signed chain, a
 * host name the certificate does not carry is refused, --insecure accepts
 * with a warning), and every failure mode the callback must name: refused
 * connections, a server that never answers, an answer too large, a
 * connection cut mid-answer; cancellation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"
#include "testcerts.h"
#include "testrelay.h"

/* ---- URLs ---------------------------------------------------------------------- */

static void expect_url(const char *text, bool tls, bool ws, const char *host, unsigned port,
                       const char *path, const char *authority) {
  rc_url u;
  char err[128], auth[300];
  if (rc_url_parse(text, &u, err, sizeof err) != 0) fail_msg("%s: %s", text, err);
  assert_int_equal(u.tls, tls);
  assert_int_equal(u.websocket, ws);
  assert_string_equal(u.host, host);
  assert_int_equal(u.port, port);
  assert_string_equal(u.path, path);
  rc_url_authority(&u, auth, sizeof auth);
  assert_string_equal(auth, authority);
}

static void expect_bad_url(const char *text, const char *why) {
  rc_url u;
  char err[128] = "";
  assert_int_equal(rc_url_parse(text, &u, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, why));
}

static void test_url_parse(void **state) {
  (void)state;
  expect_url("wss://relay.example.com", true, true, "relay.example.com", 443, "/",
             "relay.example.com");
  expect_url("WS://127.0.0.1:8080/x/y?a=b#frag", false, true, "127.0.0.1", 8080, "/x/y?a=b",
             "127.0.0.1:8080");
  expect_url("https://[::1]:8443/admin/sessions", true, false, "::1", 8443, "/admin/sessions",
             "[::1]:8443");
  expect_url("http://h:80/", false, false, "h", 80, "/", "h");
  expect_url("https://h:443?limit=2", true, false, "h", 443, "/?limit=2", "h");
  expect_bad_url("ftp://h/", "scheme");
  expect_bad_url("relay.example.com:443", "absolute");
  expect_bad_url("", "absolute");
  expect_bad_url("https://user:secret@h/", "user information");
  expect_bad_url("https://h:0/", "port");
  char big[RC_PATH_MAX + 64];
  int n = snprintf(big, sizeof big, "https://h/");
  memset(big + n, 'a', RC_PATH_MAX);
  big[n + RC_PATH_MAX] = '\0';
  expect_bad_url(big, "too long");
}

static void test_url_display_and_session(void **state) {
  (void)state;
  rc_url u, s;
  char err[128], out[512];
  assert_int_equal(rc_url_parse("https://r.example:8443/base/?token=SECRET", &u, err, sizeof err),
                   0);
  rc_url_display(&u, out, sizeof out);
  assert_string_equal(out, "https://r.example:8443/base/"); /* no query: it may be secret */
  /* A base with a query cannot take a session path. */
  assert_int_equal(rc_url_session(&u, "abc", NULL, &s, err, sizeof err), -EINVAL);
  assert_int_equal(rc_url_parse("https://r.example:8443/base/", &u, err, sizeof err), 0);
  assert_int_equal(rc_url_session(&u, "AZaz09-_", "initiator", &s, err, sizeof err), 0);
  assert_true(s.websocket && s.tls);
  assert_string_equal(s.path, "/base/relay/AZaz09-_?role=initiator");
  assert_int_equal(rc_url_parse("ws://h", &u, err, sizeof err), 0);
  assert_int_equal(rc_url_session(&u, "id", NULL, &s, err, sizeof err), 0);
  assert_string_equal(s.path, "/relay/id");
  assert_int_equal(rc_url_session(&u, "a/b", NULL, &s, err, sizeof err), -EINVAL);
  assert_int_equal(rc_url_session(&u, "", NULL, &s, err, sizeof err), -EINVAL);
  assert_int_equal(rc_url_session(&u, "a?token=x", NULL, &s, err, sizeof err), -EINVAL);
}

/* ---- HTTP requests ---------------------------------------------------------------- */

typedef struct result {
  bool done;
  int calls;
  int err;
  int status;
  char msg[400];
  char body[4096];
  size_t body_len;
  char content_type[128];
  char cache_control[64];
} result;

static void on_result(void *ud, int err, const char *msg, const rc_http_response *res) {
  result *r = ud;
  r->calls++;
  r->done = true;
  r->err = err;
  if (msg) snprintf(r->msg, sizeof r->msg, "%s", msg);
  if (!res) return;
  r->status = res->status;
  r->body_len = CM_MIN(res->body_len, sizeof r->body - 1);
  memcpy(r->body, res->body, r->body_len);
  r->body[r->body_len] = '\0';
  const char *ct = cm_http_resp_header(res->resp, "Content-Type");
  const char *cc = cm_http_resp_header(res->resp, "cache-control");
  snprintf(r->content_type, sizeof r->content_type, "%s", ct ? ct : "");
  snprintf(r->cache_control, sizeof r->cache_control, "%s", cc ? cc : "");
}

/* Runs one request to completion (bounded) and checks cb ran once. */
static void run_request(const rc_http_request *req, result *r) {
  memset(r, 0, sizeof *r);
  char err[256];
  rc_http *h = rc_http_start(loop, req, on_result, r, err, sizeof err);
  if (!h) fail_msg("rc_http_start: %s", err);
  assert_false(r->done); /* never inside rc_http_start */
  assert_true(run_until(&r->done, 20000));
  run_ms(20);
  assert_int_equal(r->calls, 1);
}

static void url_for(char *out, size_t n, bool tls, const char *host, int port, const char *path) {
  snprintf(out, n, "%s://%s:%d%s", tls ? "https" : "http", host, port, path);
}

/* Create, get, 404 with its JSON message, delete: the admin API's own
 * answers through the client. */
static void admin_round(cm_tls_ctx *tls, const char *host, int port) {
  char url[256];
  result r;
  url_for(url, sizeof url, tls != NULL, host, port, "/admin/sessions");
  static const char body[] = "{\"ttl_seconds\": 600}";
  rc_http_request req = {.method = "POST",
                         .url = url,
                         .tls = tls,
                         .bearer = "not-checked-under-no-auth",
                         .body = body,
                         .body_len = sizeof body - 1};
  run_request(&req, &r);
  if (r.err) fail_msg("create: %s", r.msg);
  assert_int_equal(r.status, 201);
  assert_true(strncmp(r.content_type, "application/json", 16) == 0);
  assert_string_equal(r.cache_control, "no-store");
  json_t *j = json_loads(r.body, 0, NULL);
  assert_non_null(j);
  char id[64];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
  assert_int_equal(strlen(id), CM_TOKEN_LEN);
  assert_int_equal(strlen(json_string_value(json_object_get(j, "initiator_token"))), CM_TOKEN_LEN);
  json_decref(j);

  char path[128];
  snprintf(path, sizeof path, "/admin/sessions/%s", id);
  url_for(url, sizeof url, tls != NULL, host, port, path);
  rc_http_request get = {.method = "GET", .url = url, .tls = tls};
  run_request(&get, &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.status, 200);
  j = json_loads(r.body, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(j, "state")), "pending");
  json_decref(j);

  rc_http_request del = {.method = "DELETE", .url = url, .tls = tls};
  run_request(&del, &r);
  assert_int_equal(r.status, 204);
  run_request(&get, &r);
  assert_int_equal(r.status, 404);
  char m[128];
  assert_true(rc_error_message((const uint8_t *)r.body, r.body_len, m, sizeof m));
  assert_true(strlen(m) > 0);
}

static void test_http_plain(void **state) {
  (void)state;
  tr_relay t;
  tr_start(&t, NULL, NULL, 0);
  admin_round(NULL, "127.0.0.1", t.port);
  /* A name, resolved off the loop (localhost may be ::1 first, which the
   * relay does not listen on: the next address is tried). */
  admin_round(NULL, "localhost", t.port);
  tr_stop(&t);
}

typedef struct tls_env {
  char *dir;
  tc_cert ca, leaf, self;
} tls_env;

static void tls_env_make(tls_env *e) {
  e->dir = tc_tmpdir();
  assert_non_null(e->dir);
  e->ca = tc_make(e->dir, "ca", NULL, NULL, NULL, -60, 86400);
  e->leaf = tc_make(e->dir, "leaf", &e->ca, "IP:127.0.0.1", "serverAuth", -60, 86400);
}

static void tls_env_free(tls_env *e) {
  tc_free(&e->ca);
  tc_free(&e->leaf);
  tc_rmdir(e->dir);
}

static void expect_fail(cm_tls_ctx *tls, const char *url, const char *why) {
  result r;
  rc_http_request req = {.method = "GET", .url = url, .tls = tls, .timeout_ms = 5000};
  run_request(&req, &r);
  assert_true(r.err < 0);
  if (!strstr(r.msg, why)) fail_msg("\"%s\" does not say \"%s\"", r.msg, why);
}

static void test_http_tls_trust(void **state) {
  (void)state;
  tls_env e;
  tls_env_make(&e);
  tr_relay t;
  tr_start(&t, e.leaf.cert_path, e.leaf.key_path, 0);
  char err[256], url[128];

  rc_tls_opts o = {.ca_file = e.ca.cert_path};
  cm_tls_ctx *pinned = rc_tls_new(&o, err, sizeof err);
  assert_non_null(pinned);
  admin_round(pinned, "127.0.0.1", t.port);
  /* The certificate names 127.0.0.1 only: "localhost" is refused. */
  url_for(url, sizeof url, true, "localhost", t.port, "/healthz");
  expect_fail(pinned, url, "certificate verify failed");

  /* The system store does not know our CA. */
  cm_tls_ctx *system = rc_tls_new(&(rc_tls_opts){0}, err, sizeof err);
  assert_non_null(system);
  url_for(url, sizeof url, true, "127.0.0.1", t.port, "/healthz");
  expect_fail(system, url, "certificate verify failed");

  /* --insecure: accepted, with a warning. */
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  cm_log_set_fd(fds[1]);
  cm_tls_ctx *insecure = rc_tls_new(&(rc_tls_opts){.insecure = true}, err, sizeof err);
  cm_log_set_fd(-1);
  close(fds[1]);
  char logbuf[1024] = "";
  ssize_t n = read(fds[0], logbuf, sizeof logbuf - 1);
  close(fds[0]);
  assert_true(n > 0);
  assert_non_null(strstr(logbuf, "\"level\":\"warn\""));
  assert_non_null(strstr(logbuf, "not verified"));
  assert_non_null(insecure);
  result r;
  rc_http_request req = {.method = "GET", .url = url, .tls = insecure};
  run_request(&req, &r);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "ok");

  /* An https URL needs a context; a CA file that is not there is named. */
  assert_null(rc_http_start(loop, &(rc_http_request){.method = "GET", .url = url}, on_result, &r,
                            err, sizeof err));
  assert_non_null(strstr(err, "TLS"));
  assert_null(rc_tls_new(&(rc_tls_opts){.ca_file = "/nonexistent/ca.pem"}, err, sizeof err));
  assert_non_null(strstr(err, "/nonexistent/ca.pem"));

  cm_tls_ctx_free(pinned);
  cm_tls_ctx_free(system);
  cm_tls_ctx_free(insecure);
  tr_stop(&t);
  tls_env_free(&e);
}

/* ---- failures ------------------------------------------------------------------------ */

/* A port nobody listens on: bound, then closed. */
static int dead_port(void) {
  uv_tcp_t tcp;
  char err[128];
  assert_int_equal(cm_tcp_bind(loop, &tcp, "127.0.0.1:0", err, sizeof err), 0);
  int port = cm_tcp_bound_port(&tcp);
  uv_close((uv_handle_t *)&tcp, NULL);
  run_ms(10);
  return port;
}

/* A server that accepts and then does what `mode` says with each
 * connection: 's' stays silent, 'b' answers with a body larger than
 * allowed, 'c' sends half an answer and closes. */
typedef struct stub {
  uv_tcp_t tcp;
  char mode;
  uv_tcp_t conns[4];
  int nconns;
} stub;

static void stub_write_done(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void stub_send(uv_tcp_t *c, const char *text, size_t n) {
  uv_write_t *w = malloc(sizeof *w);
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)n);
  uv_write(w, (uv_stream_t *)c, &b, 1, stub_write_done);
}

static void stub_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)h;
  static char buf[4096];
  (void)sz;
  *b = uv_buf_init(buf, sizeof buf);
}

static void stub_shut(uv_shutdown_t *sh, int status) {
  (void)status;
  free(sh);
}

static void stub_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  stub *st = s->data;
  if (n <= 0) return;
  static char big[8192];
  if (st->mode == 'b') {
    int h = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n");
    memset(big + h, 'x', 5000);
    stub_send((uv_tcp_t *)s, big, (size_t)h + 5000);
  } else if (st->mode == 'c') {
    static const char half[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234";
    stub_send((uv_tcp_t *)s, half, sizeof half - 1);
    uv_shutdown_t *sh = malloc(sizeof *sh);
    uv_shutdown(sh, s, stub_shut);
  }
}

static void stub_conn(uv_stream_t *server, int status) {
  stub *st = server->data;
  if (status < 0 || st->nconns == 4) return;
  uv_tcp_t *c = &st->conns[st->nconns++];
  uv_tcp_init(loop, c);
  c->data = st;
  uv_accept(server, (uv_stream_t *)c);
  uv_read_start((uv_stream_t *)c, stub_alloc, stub_read);
}

static int stub_start(stub *st, char mode) {
  memset(st, 0, sizeof *st);
  st->mode = mode;
  char err[128];
  assert_int_equal(cm_tcp_listen(loop, &st->tcp, "127.0.0.1:0", 8, stub_conn, err, sizeof err), 0);
  st->tcp.data = st;
  return cm_tcp_bound_port(&st->tcp);
}

static void stub_stop(stub *st) {
  for (int i = 0; i < st->nconns; i++)
    uv_close((uv_handle_t *)&st->conns[i], NULL);
  uv_close((uv_handle_t *)&st->tcp, NULL);
  run_ms(20);
}

static void test_http_failures(void **state) {
  (void)state;
  char url[128];
  url_for(url, sizeof url, false, "127.0.0.1", dead_port(), "/x");
  expect_fail(NULL, url, "cannot connect to 127.0.0.1:");
  expect_fail(NULL, url, "connection refused");
  /* A connect that fails at once (no route to a multicast address:
   * ENETUNREACH from connect() itself) is reported from the loop too. */
  expect_fail(NULL, "http://224.0.0.1:9/x", "cannot connect to 224.0.0.1:9");

  stub st;
  url_for(url, sizeof url, false, "127.0.0.1", stub_start(&st, 's'), "/x");
  result r;
  uint64_t t0 = cm_now_mono_ms();
  run_request(&(rc_http_request){.method = "GET", .url = url, .timeout_ms = 300}, &r);
  assert_int_equal(r.err, -ETIMEDOUT);
  assert_string_equal(r.msg, "timed out waiting for the answer");
  assert_true(cm_now_mono_ms() - t0 < 3000);
  stub_stop(&st);

  url_for(url, sizeof url, false, "127.0.0.1", stub_start(&st, 'b'), "/x");
  run_request(&(rc_http_request){.method = "GET", .url = url, .max_body = 4096}, &r);
  assert_int_equal(r.err, -EFBIG);
  assert_string_equal(r.msg, "response body too large");
  stub_stop(&st);

  url_for(url, sizeof url, false, "127.0.0.1", stub_start(&st, 'c'), "/x");
  run_request(&(rc_http_request){.method = "GET", .url = url}, &r);
  assert_true(r.err < 0);
  assert_string_equal(r.msg, "connection closed before the answer was complete");
  stub_stop(&st);

  /* Refused before any I/O. */
  char err[128];
  assert_null(rc_http_start(loop, &(rc_http_request){.method = "get", .url = url}, on_result, &r,
                            err, sizeof err));
  assert_null(rc_http_start(loop,
                            &(rc_http_request){.method = "GET", .url = url, .bearer = "a\r\nX: y"},
                            on_result, &r, err, sizeof err));
  assert_null(strstr(err, "X: y")); /* the token is not repeated */
  const char *hdrs[] = {"X-Ok: 1", "Bad\r\nInjected: 1", NULL};
  assert_null(rc_http_start(loop, &(rc_http_request){.method = "GET", .url = url, .headers = hdrs},
                            on_result, &r, err, sizeof err));
  assert_null(rc_http_start(loop, &(rc_http_request){.method = "GET", .url = "wss://h/"}, on_result,
                            &r, err, sizeof err));
}

static void test_http_cancel(void **state) {
  (void)state;
  stub st;
  char url[128];
  int port = stub_start(&st, 's');
  url_for(url, sizeof url, false, "127.0.0.1", port, "/x");
  result r = {0};
  char err[128];
  /* Cancelled while connecting, and while waiting for the answer. */
  rc_http *h = rc_http_start(loop, &(rc_http_request){.method = "GET", .url = url}, on_result, &r,
                             err, sizeof err);
  assert_non_null(h);
  rc_http_cancel(h);
  run_ms(50);
  h = rc_http_start(loop, &(rc_http_request){.method = "GET", .url = url}, on_result, &r, err,
                    sizeof err);
  run_ms(100);
  rc_http_cancel(h);
  /* And while resolving a name. */
  url_for(url, sizeof url, false, "localhost", port, "/x");
  h = rc_http_start(loop, &(rc_http_request){.method = "GET", .url = url}, on_result, &r, err,
                    sizeof err);
  rc_http_cancel(h);
  run_ms(200);
  assert_int_equal(r.calls, 0);
  stub_stop(&st);
}

static void test_error_message(void **state) {
  (void)state;
  char out[32];
  const char *b1 = "{\"error\":\"not_found\",\"message\":\"no such\\nsession\"}";
  assert_true(rc_error_message((const uint8_t *)b1, strlen(b1), out, sizeof out));
  assert_string_equal(out, "no such?session");
  const char *b2 = "{\"error\":\"slot_taken\"}";
  assert_true(rc_error_message((const uint8_t *)b2, strlen(b2), out, sizeof out));
  assert_string_equal(out, "slot_taken");
  const char *b3 = "<html>";
  assert_false(rc_error_message((const uint8_t *)b3, strlen(b3), out, sizeof out));
  assert_string_equal(out, "");
  const char *b4 = "{\"message\":\"0123456789012345678901234567890123456789\"}";
  assert_true(rc_error_message((const uint8_t *)b4, strlen(b4), out, sizeof out));
  assert_int_equal(strlen(out), sizeof out - 1);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  loop = uv_default_loop();
  cm_log_set_level(CM_LOG_WARN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_url_parse),      cmocka_unit_test(test_url_display_and_session),
      cmocka_unit_test(test_error_message),  cmocka_unit_test(test_http_plain),
      cmocka_unit_test(test_http_tls_trust), cmocka_unit_test(test_http_failures),
      cmocka_unit_test(test_http_cancel),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  uv_loop_close(loop);
  return rc;
}
