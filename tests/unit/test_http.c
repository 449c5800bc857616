/*
 * test_http.c — unit tests for the sans-I/O HTTP/1.1 core (relay/http.h):
 * requests in as bytes, responses out as bytes, parsed back here by a small
 * independent response reader.  Covers keep-alive and pipelining (sync and
 * asynchronous answers), bodies, every limit with its exact status, the
 * timeout behaviour, upgrades, HEAD, the router and query decoding.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "relay/http.h"

/* ---- harness ----------------------------------------------------------------- */

enum mode { SYNC, ASYNC };

typedef struct seen_req {
  char method[16];
  char target[256];
  char path[256];
  char query[256];
  char host[64];
  char body[256];
  size_t body_len;
  size_t nheaders;
  int http_minor;
  bool keep_alive, upgrade, head;
} seen_req;

typedef struct harness {
  rly_http_conn *c;
  cm_buf out;
  enum mode mode;
  int closes;
  size_t nreq;
  seen_req req[32];
  /* upgrade handling inside on_request */
  bool take_upgrade;
  char upgrade_bytes[256];
  size_t upgrade_len;
  int send_fail; /* non-zero: send returns this */
} harness;

static void respond_echo(harness *h) {
  const seen_req *r = &h->req[h->nreq - 1];
  char body[600];
  int n = snprintf(body, sizeof body, "%s %s %zu", r->method, r->path, r->body_len);
  rly_http_response resp = {.status = strcmp(r->path, "/missing") == 0 ? 404 : 200,
                            .content_type = "text/plain",
                            .body = (const uint8_t *)body,
                            .body_len = (size_t)n};
  assert_int_equal(rly_http_respond(h->c, &resp), 0);
}

static void on_request(void *ud, const rly_http_request *req) {
  harness *h = ud;
  assert_true(h->nreq < CM_ARRAY_LEN(h->req));
  seen_req *s = &h->req[h->nreq++];
  memset(s, 0, sizeof *s);
  snprintf(s->method, sizeof s->method, "%s", req->method);
  snprintf(s->target, sizeof s->target, "%s", req->target);
  snprintf(s->path, sizeof s->path, "%s", req->path);
  snprintf(s->query, sizeof s->query, "%s", req->query);
  const char *host = rly_http_header_get(req, "host");
  snprintf(s->host, sizeof s->host, "%s", host ? host : "");
  s->body_len = req->body_len;
  memcpy(s->body, req->body, CM_MIN(req->body_len, sizeof s->body - 1));
  s->nheaders = req->nheaders;
  s->http_minor = req->http_minor;
  s->keep_alive = req->keep_alive;
  s->upgrade = req->upgrade;
  s->head = req->head;
  assert_true(rly_http_busy(h->c));
  if (h->take_upgrade && req->upgrade) {
    size_t n;
    const uint8_t *p = rly_http_take_upgrade(h->c, &n);
    assert_true(n < sizeof h->upgrade_bytes);
    memcpy(h->upgrade_bytes, p, n);
    h->upgrade_len = n;
    return;
  }
  if (h->mode == SYNC) respond_echo(h);
}

static int hsend(void *ud, const void *data, size_t len) {
  harness *h = ud;
  if (h->send_fail) return h->send_fail;
  assert_int_equal(cm_buf_append(&h->out, data, len), 0);
  return 0;
}

static void hclose(void *ud) {
  harness *h = ud;
  h->closes++;
}

static const rly_http_cbs g_cbs = {.on_request = on_request, .send = hsend, .on_close = hclose};

static harness *harness_new(const rly_http_limits *l, enum mode m) {
  harness *h = calloc(1, sizeof *h);
  assert_non_null(h);
  cm_buf_init(&h->out, 0);
  h->mode = m;
  h->c = rly_http_conn_new(l, &g_cbs, h, "test-server/1");
  assert_non_null(h->c);
  return h;
}

static void harness_free(harness *h) {
  rly_http_conn_free(h->c);
  cm_buf_free(&h->out);
  free(h);
}

static int feed(harness *h, const char *s) {
  return rly_http_feed(h->c, (const uint8_t *)s, strlen(s));
}

/* ---- an independent response reader ------------------------------------------ */

typedef struct resp {
  int status;
  char reason[64];
  char headers[32][2][256];
  size_t nheaders;
  char body[2048];
  size_t body_len;
} resp;

static const char *resp_header(const resp *r, const char *name) {
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcasecmp(r->headers[i][0], name) == 0) return r->headers[i][1];
  return NULL;
}

/* Parses one response from *p (length *n); bodies by Content-Length only
 * unless no_body.  Returns false when the bytes are not a whole response. */
static bool read_resp(const char **p, size_t *n, resp *r, bool no_body) {
  memset(r, 0, sizeof *r);
  const char *end = memmem(*p, *n, "\r\n\r\n", 4);
  if (!end) return false;
  const char *line = *p;
  const char *eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
  char status_line[256];
  snprintf(status_line, sizeof status_line, "%.*s", (int)(eol - line), line);
  if (sscanf(status_line, "HTTP/1.1 %d %63[^\r]", &r->status, r->reason) < 1) return false;
  line = eol + 2;
  while (line < end + 2) {
    eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
    const char *colon = memchr(line, ':', (size_t)(eol - line));
    assert_non_null(colon);
    assert_true(r->nheaders < 32);
    snprintf(r->headers[r->nheaders][0], 256, "%.*s", (int)(colon - line), line);
    const char *v = colon + 1;
    while (*v == ' ')
      v++;
    snprintf(r->headers[r->nheaders][1], 256, "%.*s", (int)(eol - v), v);
    r->nheaders++;
    line = eol + 2;
  }
  size_t head_len = (size_t)(end + 4 - *p);
  const char *cl = resp_header(r, "Content-Length");
  size_t blen = cl && !no_body ? strtoul(cl, NULL, 10) : 0;
  if (head_len + blen > *n) return false;
  memcpy(r->body, end + 4, CM_MIN(blen, sizeof r->body - 1));
  r->body_len = blen;
  *p += head_len + blen;
  *n -= head_len + blen;
  return true;
}

/* Reads every response in the output; returns how many. */
static size_t read_all(harness *h, resp *out, size_t max, bool no_body) {
  const char *p = (const char *)cm_buf_head(&h->out);
  size_t n = cm_buf_size(&h->out), k = 0;
  while (n > 0 && k < max && read_resp(&p, &n, &out[k], no_body))
    k++;
  assert_int_equal(n, 0); /* nothing left over, nothing partial */
  return k;
}

/* Every error response: JSON {"error","message"}, Date, Server, close. */
static void assert_error_resp(const resp *r, int status, const char *code) {
  assert_int_equal(r->status, status);
  assert_non_null(resp_header(r, "Date"));
  assert_int_equal(strlen(resp_header(r, "Date")), 29);
  assert_string_equal(resp_header(r, "Server"), "test-server/1");
  assert_string_equal(resp_header(r, "Content-Type"), "application/json");
  json_error_t je;
  json_t *j = json_loadb(r->body, r->body_len, 0, &je);
  if (!j) fail_msg("error body is not JSON: %.*s", (int)r->body_len, r->body);
  assert_true(json_is_string(json_object_get(j, "error")));
  assert_true(json_is_string(json_object_get(j, "message")));
  if (code) assert_string_equal(json_string_value(json_object_get(j, "error")), code);
  json_decref(j);
}

/* Feeds `req` to a fresh SYNC connection with limits l, first `cut` bytes
 * then the rest in pieces of `step` (0: at once), and expects exactly one
 * error response `status` and a close, with no request dispatched. */
static void expect_refusal_cut(const rly_http_limits *l, const char *req, size_t len, size_t cut,
                               size_t step, int status, const char *code) {
  harness *h = harness_new(l, SYNC);
  rly_http_feed(h->c, (const uint8_t *)req, cut);
  for (size_t o = cut; o < len; o += step ? step : len)
    rly_http_feed(h->c, (const uint8_t *)req + o, CM_MIN(step ? step : len, len - o));
  resp r[2];
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_error_resp(&r[0], status, code);
  assert_string_equal(resp_header(&r[0], "Connection"), "close");
  assert_int_equal(h->nreq, 0);
  assert_int_equal(h->closes, 1);
  /* The connection is finished: later bytes are ignored. */
  assert_int_equal(feed(h, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
  assert_int_equal(h->nreq, 0);
  assert_int_equal(h->closes, 1);
  harness_free(h);
}

static void expect_refusal(const rly_http_limits *l, const char *req, size_t len, int status,
                           const char *code) {
  expect_refusal_cut(l, req, len, len, 0, status, code);
}

/* The same refusal however the request is split: whole, byte by byte, and
 * in two pieces at every point (the checks look across pieces). */
static void expect_refusal_any_split(const char *req, int status, const char *code) {
  size_t len = strlen(req);
  expect_refusal(NULL, req, len, status, code);
  expect_refusal_cut(NULL, req, len, 0, 1, status, code);
  for (size_t cut = 1; cut < len; cut++)
    expect_refusal_cut(NULL, req, len, cut, 0, status, code);
}

/* Each of n requests is refused so, however split. */
static void expect_all_refused(const char *const *reqs, size_t n, int status, const char *code) {
  for (size_t i = 0; i < n; i++)
    expect_refusal_any_split(reqs[i], status, code);
}
#define EXPECT_ALL_REFUSED(reqs, status, code)                                                     \
  expect_all_refused(reqs, CM_ARRAY_LEN(reqs), status, code)

/* The opposite: one request dispatched, however it is split. */
static void expect_accepted_any_split(const char *req) {
  size_t len = strlen(req);
  for (size_t cut = 0; cut <= len; cut++) {
    for (size_t step = 0; step < 2; step++) {
      harness *h = harness_new(NULL, SYNC);
      rly_http_feed(h->c, (const uint8_t *)req, cut);
      for (size_t o = cut; o < len; o += step ? step : len)
        rly_http_feed(h->c, (const uint8_t *)req + o, CM_MIN(step ? step : len, len - o));
      if (h->nreq != 1) fail_msg("not accepted when cut at %zu (step %zu): %s", cut, step, req);
      harness_free(h);
    }
  }
}

/* ---- tests ----------------------------------------------------------------------- */

static void test_simple_get(void **state) {
  (void)state;
  harness *h = harness_new(NULL, SYNC);
  assert_false(rly_http_in_request(h->c));
  assert_int_equal(feed(h, "GET /hello/world?x=1&y=2 HTTP/1.1\r\nHost: example\r\n"
                           "X-Pad:   spaced value  \r\n\r\n"),
                   0);
  assert_int_equal(h->nreq, 1);
  seen_req *s = &h->req[0];
  assert_string_equal(s->method, "GET");
  assert_string_equal(s->target, "/hello/world?x=1&y=2");
  assert_string_equal(s->path, "/hello/world");
  assert_string_equal(s->query, "x=1&y=2");
  assert_string_equal(s->host, "example");
  assert_int_equal(s->nheaders, 2);
  assert_int_equal(s->http_minor, 1);
  assert_true(s->keep_alive);
  assert_false(s->upgrade);
  resp r[2];
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_int_equal(r[0].status, 200);
  assert_string_equal(r[0].reason, "OK");
  assert_string_equal(r[0].body, "GET /hello/world 0");
  assert_string_equal(resp_header(&r[0], "Content-Length"), "18");
  assert_string_equal(resp_header(&r[0], "Content-Type"), "text/plain");
  assert_string_equal(resp_header(&r[0], "Server"), "test-server/1");
  assert_non_null(resp_header(&r[0], "Date"));
  assert_null(resp_header(&r[0], "Connection"));
  assert_int_equal(h->closes, 0);
  assert_false(rly_http_busy(h->c));
  assert_int_equal(rly_http_requests(h->c), 1);
  harness_free(h);
}

static void test_header_tokens(void **state) {
  (void)state;
  assert_true(rly_http_header_has_token("keep-alive, Upgrade", "upgrade"));
  assert_true(rly_http_header_has_token("Upgrade", "upgrade"));
  assert_true(rly_http_header_has_token(" a ,b\t, upgrade ", "upgrade"));
  assert_false(rly_http_header_has_token("upgrades", "upgrade"));
  assert_false(rly_http_header_has_token("", "upgrade"));
}

/* on_request that checks header lookups on the live request. */
static void on_request_headers(void *ud, const rly_http_request *req) {
  harness *h = ud;
  h->nreq++;
  assert_int_equal(req->nheaders, 5);
  assert_string_equal(req->headers[0].name, "A");
  assert_string_equal(req->headers[1].name, "B");
  assert_string_equal(rly_http_header_get(req, "a"), "");
  assert_string_equal(rly_http_header_get(req, "B"), "x");
  assert_string_equal(rly_http_header_get(req, "c"), "");
  assert_string_equal(rly_http_header_get(req, "x-long"), "one two");
  assert_null(rly_http_header_get(req, "missing"));
  rly_http_response r = {.status = 204};
  assert_int_equal(rly_http_respond(h->c, &r), 0);
}

static void test_header_lookup(void **state) {
  (void)state;
  harness *h = calloc(1, sizeof *h);
  cm_buf_init(&h->out, 0);
  rly_http_cbs cbs = g_cbs;
  cbs.on_request = on_request_headers;
  h->c = rly_http_conn_new(NULL, &cbs, h, "test-server/1");
  /* Byte by byte: every piece arrives split. */
  const char *req = "GET / HTTP/1.1\r\nA:\r\nB: x\r\nC:  \r\nX-Long: one two\r\nHost: h\r\n\r\n";
  for (size_t i = 0; req[i]; i++)
    rly_http_feed(h->c, (const uint8_t *)req + i, 1);
  assert_int_equal(h->nreq, 1);
  resp r[1];
  assert_int_equal(read_all(h, r, 1, false), 1);
  assert_int_equal(r[0].status, 204);
  assert_null(resp_header(&r[0], "Content-Length")); /* 204 has none */
  harness_free(h);
}

static void test_keep_alive(void **state) {
  (void)state;
  harness *h = harness_new(NULL, SYNC);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(feed(h, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(h->closes, 0);
    assert_false(rly_http_in_request(h->c));
  }
  resp r[8];
  assert_int_equal(read_all(h, r, 8, false), 5);
  for (int i = 0; i < 5; i++)
    assert_int_equal(r[i].status, 200);
  assert_int_equal(rly_http_requests(h->c), 5);
  /* A partial request is "in request". */
  feed(h, "GET /b HT");
  assert_true(rly_http_in_request(h->c));
  assert_false(rly_http_in_body(h->c));
  harness_free(h);
}

static const char g_pipeline[] = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                                 "GET /missing HTTP/1.1\r\nHost: h\r\n\r\n"
                                 "POST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                                 "GET /4 HTTP/1.1\r\nHost: h\r\n\r\n";

static void check_pipeline(harness *h) {
  assert_int_equal(h->nreq, 4);
  resp r[8];
  assert_int_equal(read_all(h, r, 8, false), 4);
  assert_int_equal(r[0].status, 200);
  assert_string_equal(r[0].body, "GET /1 0");
  assert_int_equal(r[1].status, 404);
  assert_string_equal(r[1].body, "GET /missing 0");
  assert_int_equal(r[2].status, 200);
  assert_string_equal(r[2].body, "POST /3 5");
  assert_string_equal(h->req[2].body, "hello");
  assert_int_equal(r[3].status, 200);
  assert_string_equal(r[3].body, "GET /4 0");
  assert_int_equal(h->closes, 0);
}

static void test_pipelined_sync(void **state) {
  (void)state;
  harness *h = harness_new(NULL, SYNC);
  assert_int_equal(feed(h, g_pipeline), 0);
  check_pipeline(h);
  harness_free(h);
}

static void test_pipelined_async(void **state) {
  (void)state;
  harness *h = harness_new(NULL, ASYNC);
  assert_int_equal(feed(h, g_pipeline), 0);
  /* One request at a time: the rest waits, nothing is answered yet. */
  assert_int_equal(h->nreq, 1);
  assert_int_equal(cm_buf_size(&h->out), 0);
  assert_true(rly_http_busy(h->c));
  /* More bytes while busy are only buffered. */
  assert_int_equal(feed(h, "GET /5 HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
  assert_int_equal(h->nreq, 1);
  for (size_t k = 1; k <= 5; k++) {
    assert_int_equal(h->nreq, k);
    respond_echo(h); /* later, outside the feed: the next one is parsed now */
  }
  assert_int_equal(h->nreq, 5);
  assert_false(rly_http_busy(h->c));
  resp r[8];
  assert_int_equal(read_all(h, r, 8, false), 5);
  assert_string_equal(r[0].body, "GET /1 0");
  assert_int_equal(r[1].status, 404);
  assert_string_equal(r[2].body, "POST /3 5");
  assert_string_equal(r[3].body, "GET /4 0");
  assert_string_equal(r[4].body, "GET /5 0");
  /* Responding with no request pending is refused. */
  rly_http_response extra = {.status = 200};
  assert_int_equal(rly_http_respond(h->c, &extra), -EINVAL);
  harness_free(h);
}

static void test_pending_input_limit(void **state) {
  (void)state;
  rly_http_limits l;
  rly_http_limits_default(&l);
  l.max_pending_input = 100;
  harness *h = harness_new(&l, ASYNC);
  assert_int_equal(feed(h, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
  char more[200];
  memset(more, 0, sizeof more);
  for (int i = 0; i < 6; i++)
    strcat(more, "GET /n HTTP/1.1\r\nHost: h\r\n\r\n");
  /* Past max_pending_input the caller is told to stop reading. */
  assert_int_equal(feed(h, more), 1);
  for (int i = 0; i < 7; i++)
    respond_echo(h);
  assert_int_equal(h->nreq, 7);
  assert_int_equal(feed(h, ""), 0);
  harness_free(h);
}

static void test_body_content_length_and_chunked(void **state) {
  (void)state;
  const char *req = "POST /cl HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world";
  size_t len = strlen(req), head = len - 11;
  /* Split in every possible two-piece way. */
  for (size_t cut = 1; cut < len; cut++) {
    harness *h = harness_new(NULL, SYNC);
    rly_http_feed(h->c, (const uint8_t *)req, cut);
    assert_int_equal(h->nreq, 0);
    assert_true(rly_http_in_request(h->c));
    if (cut > head) assert_true(rly_http_in_body(h->c));
    rly_http_feed(h->c, (const uint8_t *)req + cut, len - cut);
    assert_int_equal(h->nreq, 1);
    assert_string_equal(h->req[0].body, "hello world");
    assert_int_equal(h->req[0].body_len, 11);
    harness_free(h);
  }

  harness *h;
  h = harness_new(NULL, SYNC);
  feed(h, "POST /ch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
          "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n");
  assert_int_equal(h->nreq, 1);
  assert_string_equal(h->req[0].body, "hello world");
  assert_int_equal(h->req[0].body_len, 11);
  resp r[2];
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_string_equal(r[0].body, "POST /ch 11");
  harness_free(h);
}

static void test_chunked_trailers(void **state) {
  (void)state;
  /* Trailers arrive after the header table is built: they must neither
   * move it (the arena would be reallocated) nor join it. */
  static char req[4096];
  int o = snprintf(req, sizeof req,
                   "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                   "\r\n3\r\nabc\r\n0\r\n");
  for (int i = 0; i < 10; i++)
    o += snprintf(req + o, sizeof req - (size_t)o, "X-Trailer-%d: %0200d\r\n", i, i);
  snprintf(req + o, sizeof req - (size_t)o, "\r\n");
  harness *h = harness_new(NULL, SYNC);
  feed(h, req);
  assert_int_equal(h->nreq, 1);
  assert_string_equal(h->req[0].host, "h");
  assert_int_equal(h->req[0].nheaders, 2);
  assert_string_equal(h->req[0].body, "abc");
  harness_free(h);
  /* Trailers count against max_header_bytes like headers do. */
  rly_http_limits l;
  rly_http_limits_default(&l);
  l.max_header_bytes = 1024;
  expect_refusal(&l, req, strlen(req), 431, "request_header_fields_too_large");
}

static void test_expect_continue(void **state) {
  (void)state;
  harness *h = harness_new(NULL, SYNC);
  feed(h, "POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  const char *cont = "HTTP/1.1 100 Continue\r\n\r\n";
  assert_int_equal(cm_buf_size(&h->out), strlen(cont));
  assert_memory_equal(cm_buf_head(&h->out), cont, strlen(cont));
  cm_buf_reset(&h->out);
  feed(h, "abc");
  assert_int_equal(h->nreq, 1);
  assert_string_equal(h->req[0].body, "abc");
  harness_free(h);
}

static void test_limits(void **state) {
  (void)state;
  rly_http_limits l;
  rly_http_limits_default(&l);
  l.max_header_bytes = 1024;
  l.max_headers = 8;
  l.max_url = 256;
  l.max_body = 100;
  char req[8192];

  /* Headers over max_header_bytes -> 431 (one huge header, and many small). */
  snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: %01100d\r\n\r\n", 0);
  expect_refusal(&l, req, strlen(req), 431, "request_header_fields_too_large");
  int o = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: h\r\n");
  for (int i = 0; i < 7; i++)
    o += snprintf(req + o, sizeof req - (size_t)o, "X-%d: %0150d\r\n", i, 0);
  snprintf(req + o, sizeof req - (size_t)o, "\r\n");
  expect_refusal(&l, req, strlen(req), 431, "request_header_fields_too_large");

  /* Exactly max_headers (Host and seven more) is fine; one more is 431. */
  o = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: h\r\n");
  for (int i = 0; i < 7; i++)
    o += snprintf(req + o, sizeof req - (size_t)o, "H%d: v\r\n", i);
  snprintf(req + o, sizeof req - (size_t)o, "\r\n");
  harness *h = harness_new(&l, SYNC);
  feed(h, req);
  assert_int_equal(h->nreq, 1);
  assert_int_equal(h->req[0].nheaders, 8);
  harness_free(h);
  o = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: h\r\n");
  for (int i = 0; i < 8; i++)
    o += snprintf(req + o, sizeof req - (size_t)o, "H%d: v\r\n", i);
  snprintf(req + o, sizeof req - (size_t)o, "\r\n");
  expect_refusal(&l, req, strlen(req), 431, "request_header_fields_too_large");

  /* URL over max_url -> 414 (and one exactly at the limit is fine). */
  snprintf(req, sizeof req, "GET /%0256d HTTP/1.1\r\nHost: h\r\n\r\n", 0);
  expect_refusal(&l, req, strlen(req), 414, "uri_too_long");
  snprintf(req, sizeof req, "GET /%0255d HTTP/1.1\r\nHost: h\r\n\r\n", 0);
  h = harness_new(&l, SYNC);
  feed(h, req);
  assert_int_equal(h->nreq, 1);
  harness_free(h);

  /* Body over max_body: announced up front, and chunked overflow. */
  snprintf(req, sizeof req, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n");
  expect_refusal(&l, req, strlen(req), 413, "payload_too_large");
  o = snprintf(req, sizeof req, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 5; i++)
    o += snprintf(req + o, sizeof req - (size_t)o, "19\r\n%025d\r\n", i);
  snprintf(req + o, sizeof req - (size_t)o, "0\r\n\r\n");
  expect_refusal(&l, req, strlen(req), 413, "payload_too_large");
  snprintf(req, sizeof req, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n%0100d", 0);
  h = harness_new(&l, SYNC);
  feed(h, req);
  assert_int_equal(h->nreq, 1);
  assert_int_equal(h->req[0].body_len, 100);
  harness_free(h);
}

static void test_limits_are_exact(void **state) {
  (void)state;
  /* Just under max_header_bytes with max_headers headers and a long
   * target: accepted (the NULs and path copy the core adds are its own). */
  rly_http_limits l;
  rly_http_limits_default(&l);
  l.max_header_bytes = 1024;
  l.max_headers = 8;
  l.max_url = 256;
  char req[4096];
  int o = snprintf(req, sizeof req, "GET /%0249d HTTP/1.1\r\n", 0); /* target: 250 bytes */
  o += snprintf(req + o, sizeof req - (size_t)o, "Host: %092d\r\n", 0);
  for (int i = 1; i < 8; i++)
    o += snprintf(req + o, sizeof req - (size_t)o, "H%d: %094d\r\n", i, i);
  snprintf(req + o, sizeof req - (size_t)o, "\r\n"); /* 250 + 8 * (2 + 94) = 1018 counted */
  harness *h = harness_new(&l, SYNC);
  feed(h, req);
  assert_int_equal(h->nreq, 1);
  assert_int_equal(h->req[0].nheaders, 8);
  resp r[1];
  assert_int_equal(read_all(h, r, 1, false), 1);
  assert_int_equal(r[0].status, 200);
  harness_free(h);

  /* A long target within a large max_url (the path is copied whole). */
  rly_http_limits_default(&l);
  l.max_url = 32768;
  l.max_header_bytes = 65536;
  static char big[40000];
  o = snprintf(big, sizeof big, "GET /");
  memset(big + o, 'p', 20000);
  o += 20000;
  snprintf(big + o, sizeof big - (size_t)o, "?q=1 HTTP/1.1\r\nHost: h\r\n\r\n");
  h = harness_new(&l, SYNC);
  feed(h, big);
  assert_int_equal(h->nreq, 1);
  assert_string_equal(h->req[0].query, "q=1");
  assert_int_equal(read_all(h, r, 1, false), 1);
  assert_int_equal(r[0].status, 200);
  harness_free(h);
}

static void test_malformed(void **state) {
  (void)state;
  static const char *bad[] = {
      "GARBAGE\r\n\r\n",
      "GET\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
      "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "GET / FOO/1.1\r\n\r\n",
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello on a plain port */
  };
  EXPECT_ALL_REFUSED(bad, 400, "bad_request");
}

static void test_http2_request_line(void **state) {
  (void)state;
  /* What the core does: the parser accepts the version digits and the
   * core refuses any major version but 1 with 505. */
  const char *req = "GET / HTTP/2.0\r\nHost: h\r\n\r\n";
  expect_refusal(NULL, req, strlen(req), 505, "http_version_not_supported");
  /* The HTTP/2 connection preface (DESIGN §4: 505), however it arrives;
   * libhttp-parser alone makes it 400 ("PRI" is no method). */
  expect_refusal_any_split("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported");
  /* Its start is only held back while it still matches. */
  harness *h = harness_new(NULL, SYNC);
  feed(h, "PRI * HTTP/2");
  assert_int_equal(cm_buf_size(&h->out), 0);
  assert_true(rly_http_in_request(h->c)); /* so the header deadline applies */
  harness_free(h);
  expect_refusal_any_split("PRIX / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad_request");
  expect_accepted_any_split("POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
  /* After a first request too. */
  h = harness_new(NULL, SYNC);
  feed(h, "GET / HTTP/1.1\r\nHost: h\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
  resp r[3];
  assert_int_equal(read_all(h, r, 3, false), 2);
  assert_int_equal(r[0].status, 200);
  assert_error_resp(&r[1], 505, "http_version_not_supported");
  assert_int_equal(h->closes, 1);
  harness_free(h);
}

/* RFC 9110 §5.1: a field name is a token.  The parser, built lenient,
 * takes spaces into names and still honours "Transfer-Encoding " as the
 * framing header (the body below would be decoded as chunked). */
static void test_header_name_must_be_token(void **state) {
  (void)state;
  static const char *bad[] = {
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 2\r\n\r\nab",
      "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX Y: z\r\n\r\n",
      "GET / HTTP/1.1\r\n Host: h\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX\tY: z\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX(Y): z\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: z\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\n: z\r\n\r\n",
      /* In chunked trailers too. */
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX Y: z\r\n\r\n",
  };
  EXPECT_ALL_REFUSED(bad, 400, "bad_request");
  expect_accepted_any_split("GET / HTTP/1.1\r\nHost: h\r\nX-!#$%&'*+-.^_`|~09az: v\r\n\r\n");
}

/* RFC 9112 §5.2: obs-fold is refused, wherever the input is cut (the check
 * looks back across pieces); values that merely contain or end in blanks,
 * and empty values, are not folds. */
static void test_obs_fold(void **state) {
  (void)state;
  static const char *bad[] = {
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX:\r\n b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n \t\r\n\r\n",
      "GET / HTTP/1.1\nHost: h\nX: a\n b\n\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n c\r\n\r\n",
      "GET / HTTP/1.1\r\nHost:\r\n h\r\n\r\n",
  };
  EXPECT_ALL_REFUSED(bad, 400, "bad_request");
  expect_accepted_any_split("GET / HTTP/1.1\r\nHost: h\r\nX:  a  b \t\r\nY:\r\nZ: \r\n"
                            "W:\t\r\nV: v\r\n\r\n");
  expect_accepted_any_split("GET / HTTP/1.1\nHost: h\nX: a b\nY:\n\n");
}

/* Line ends and bytes the parser already refuses stay refused. */
static void test_bare_cr_and_nul(void **state) {
  (void)state;
  static const char *bad[] = {
      "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n",
  };
  EXPECT_ALL_REFUSED(bad, 400, "bad_request");
  static const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n";
  expect_refusal(NULL, nul, sizeof nul - 1, 400, "bad_request");
  static const char nul_name[] = "GET / HTTP/1.1\r\nHost: h\r\nX\0: b\r\n\r\n";
  expect_refusal(NULL, nul_name, sizeof nul_name - 1, 400, "bad_request");
}

static void test_host(void **state) {
  (void)state;
  static const char *bad[] = {
      "GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
      "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a?b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
  };
  EXPECT_ALL_REFUSED(bad, 400, "bad_request");
  static const char *good[] = {
      "GET / HTTP/1.1\r\nHost: relay.example.com\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
      "GET / HTTP/1.1\r\nHost:\r\n\r\n", /* empty is allowed (RFC 9112 §3.2) */
      "GET / HTTP/1.0\r\n\r\n",          /* HTTP/1.0 needs none */
      "GET http://other.example/x HTTP/1.1\r\nHost: h\r\n\r\n",
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(good); i++)
    expect_accepted_any_split(good[i]);
}

/* RFC 9112 §6: one framing, read the same way by everyone. */
static void test_body_framing(void **state) {
  (void)state;
  static const char *bad400[] = {
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2, 2\r\n\r\nab",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
      "0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
      "\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  };
  EXPECT_ALL_REFUSED(bad400, 400, "bad_request");
  static const char *bad501[] = {
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
  };
  EXPECT_ALL_REFUSED(bad501, 501, "not_implemented");
  expect_accepted_any_split("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  Chunked \r\n\r\n"
                            "1\r\na\r\n0\r\n\r\n");
}

/* RFC 9112 §3.2: the request-target is visible ASCII. */
static void test_target_bytes(void **state) {
  (void)state;
  static const char *bad[] = {
      "GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n",     "GET /a\xff HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
  };
  EXPECT_ALL_REFUSED(bad, 400, "bad_request");
  expect_accepted_any_split("GET /a/%C3%A9?x=~!$&'()*+,;=:@/? HTTP/1.1\r\nHost: h\r\n\r\n");
}

static void test_timeout(void **state) {
  (void)state;
  /* Mid-request: 408 and close. */
  harness *h = harness_new(NULL, SYNC);
  feed(h, "GET /slow HTTP/1.1\r\nHost: h");
  assert_true(rly_http_in_request(h->c));
  rly_http_timeout(h->c);
  resp r[2];
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_error_resp(&r[0], 408, "request_timeout");
  assert_string_equal(resp_header(&r[0], "Connection"), "close");
  assert_int_equal(h->closes, 1);
  assert_int_equal(h->nreq, 0);
  rly_http_timeout(h->c); /* again: nothing more */
  assert_int_equal(h->closes, 1);
  harness_free(h);

  /* Mid-body counts as a request too. */
  h = harness_new(NULL, SYNC);
  feed(h, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc");
  assert_true(rly_http_in_body(h->c));
  rly_http_timeout(h->c);
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_int_equal(r[0].status, 408);
  assert_int_equal(h->closes, 1);
  harness_free(h);

  /* Idle keep-alive (after a response): close with no bytes. */
  h = harness_new(NULL, SYNC);
  feed(h, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  size_t before = cm_buf_size(&h->out);
  rly_http_timeout(h->c);
  assert_int_equal(cm_buf_size(&h->out), before);
  assert_int_equal(h->closes, 1);
  harness_free(h);

  /* A fresh connection that sent nothing: also silent. */
  h = harness_new(NULL, SYNC);
  rly_http_timeout(h->c);
  assert_int_equal(cm_buf_size(&h->out), 0);
  assert_int_equal(h->closes, 1);
  harness_free(h);

  /* While the application is answering, the deadline is not the core's. */
  h = harness_new(NULL, ASYNC);
  feed(h, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  rly_http_timeout(h->c);
  assert_int_equal(h->closes, 0);
  respond_echo(h);
  assert_int_equal(h->closes, 0);
  harness_free(h);
}

static void test_connection_close(void **state) {
  (void)state;
  harness *h = harness_new(NULL, SYNC);
  feed(h,
       "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_int_equal(h->nreq, 1);
  assert_false(h->req[0].keep_alive);
  resp r[2];
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_string_equal(resp_header(&r[0], "Connection"), "close");
  assert_int_equal(h->closes, 1);
  harness_free(h);

  h = harness_new(NULL, SYNC);
  feed(h, "GET /a HTTP/1.0\r\n\r\n");
  assert_int_equal(h->nreq, 1);
  assert_int_equal(h->req[0].http_minor, 0);
  assert_false(h->req[0].keep_alive);
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_int_equal(r[0].status, 200);
  assert_string_equal(resp_header(&r[0], "Connection"), "close");
  assert_int_equal(h->closes, 1);
  harness_free(h);

  /* An application-forced close. */
  h = harness_new(NULL, ASYNC);
  feed(h, "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
  rly_http_response resp1 = {.status = 503, .close = true};
  assert_int_equal(rly_http_respond(h->c, &resp1), 0);
  assert_int_equal(h->nreq, 1);
  assert_int_equal(h->closes, 1);
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_string_equal(resp_header(&r[0], "Connection"), "close");
  assert_string_equal(resp_header(&r[0], "Content-Length"), "0");
  harness_free(h);
}

static void test_send_failure_closes(void **state) {
  (void)state;
  harness *h = harness_new(NULL, ASYNC);
  feed(h, "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
  h->send_fail = -EPIPE;
  rly_http_response resp1 = {.status = 200};
  assert_int_equal(rly_http_respond(h->c, &resp1), -EPIPE);
  assert_int_equal(h->closes, 1);
  assert_int_equal(h->nreq, 1);
  harness_free(h);
}

static void test_upgrade(void **state) {
  (void)state;
  const char *req = "GET /relay/abc HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
                    "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
  /* Bytes after the request in the same feed belong to the new protocol. */
  harness *h = harness_new(NULL, SYNC);
  h->take_upgrade = true;
  char buf[512];
  snprintf(buf, sizeof buf, "%s\x81\x85MASKhello GET / HTTP/1.1\r\n\r\n", req);
  feed(h, buf);
  assert_int_equal(h->nreq, 1);
  assert_true(h->req[0].upgrade);
  const char *tail = "\x81\x85MASKhello GET / HTTP/1.1\r\n\r\n";
  assert_int_equal(h->upgrade_len, strlen(tail));
  assert_memory_equal(h->upgrade_bytes, tail, strlen(tail));
  assert_int_equal(cm_buf_size(&h->out), 0); /* the core wrote nothing */
  assert_int_equal(h->closes, 0);
  harness_free(h);

  /* Exactly the request: nothing left over. */
  h = harness_new(NULL, SYNC);
  h->take_upgrade = true;
  feed(h, req);
  assert_int_equal(h->nreq, 1);
  assert_int_equal(h->upgrade_len, 0);
  harness_free(h);

  /* Decided later: bytes arriving meanwhile are kept, not parsed as HTTP. */
  h = harness_new(NULL, ASYNC);
  feed(h, req);
  feed(h, "early");
  feed(h, "GET /x HTTP/1.1\r\n\r\n");
  assert_int_equal(h->nreq, 1);
  size_t n;
  const uint8_t *p = rly_http_take_upgrade(h->c, &n);
  assert_int_equal(n, 5 + strlen("GET /x HTTP/1.1\r\n\r\n"));
  assert_memory_equal(p, "earlyGET /x", 11);
  harness_free(h);

  /* A refused upgrade is answered and the connection closes. */
  h = harness_new(NULL, SYNC);
  feed(h, req);
  resp r[2];
  assert_int_equal(read_all(h, r, 2, false), 1);
  assert_string_equal(resp_header(&r[0], "Connection"), "close");
  assert_int_equal(h->closes, 1);
  harness_free(h);

  /* Upgrade on HTTP/1.0 is ignored (RFC 9110 §7.8): what follows is
   * HTTP, not bytes of another protocol. */
  h = harness_new(NULL, SYNC);
  h->take_upgrade = true;
  feed(h, "GET /relay/abc HTTP/1.0\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
          "\r\nGET /next HTTP/1.0\r\n\r\n");
  assert_int_equal(h->nreq, 2);
  assert_false(h->req[0].upgrade);
  assert_string_equal(h->req[1].path, "/next");
  assert_int_equal(h->upgrade_len, 0);
  assert_int_equal(read_all(h, r, 2, false), 2);
  harness_free(h);

  /* Upgrade: without Connection: upgrade is an ordinary request. */
  h = harness_new(NULL, SYNC);
  feed(h, "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n");
  assert_int_equal(h->nreq, 1);
  assert_false(h->req[0].upgrade);
  assert_int_equal(h->closes, 0);
  harness_free(h);
}

static void test_head(void **state) {
  (void)state;
  harness *h = harness_new(NULL, SYNC);
  feed(h, "HEAD /thing HTTP/1.1\r\nHost: h\r\n\r\nGET /thing HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_int_equal(h->nreq, 2);
  assert_true(h->req[0].head);
  assert_string_equal(h->req[0].method, "HEAD");
  const char *p = (const char *)cm_buf_head(&h->out);
  size_t n = cm_buf_size(&h->out);
  resp r1, r2;
  assert_true(read_resp(&p, &n, &r1, true)); /* no body bytes follow */
  assert_int_equal(r1.status, 200);
  assert_string_equal(resp_header(&r1, "Content-Length"), "13"); /* "HEAD /thing 0" */
  assert_true(read_resp(&p, &n, &r2, false));
  assert_string_equal(r2.body, "GET /thing 0");
  assert_int_equal(n, 0);
  harness_free(h);
}

static void test_error_format(void **state) {
  (void)state;
  char out[256];
  size_t n = rly_http_format_error(out, sizeof out, 400, "bad_request", "quote \" back\\ \x01");
  assert_int_equal(n, strlen(out));
  json_error_t je;
  json_t *j = json_loads(out, 0, &je);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "message")), "quote \" back\\ \x01");
  json_decref(j);
  /* The code too: a controller's reason may hold anything. */
  rly_http_format_error(out, sizeof out, 502, "odd\"reason\\", "m");
  j = json_loads(out, 0, &je);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "error")), "odd\"reason\\");
  json_decref(j);
  rly_http_format_error(out, sizeof out, 404, "not_found", NULL);
  assert_string_equal(out, "{\"error\":\"not_found\",\"message\":\"Not Found\"}");
  /* Truncated output stays a terminated string. */
  char small[10];
  n = rly_http_format_error(small, sizeof small, 404, "not_found", NULL);
  assert_int_equal(n, 9);
  assert_int_equal(strlen(small), 9);

  harness *h = harness_new(NULL, ASYNC);
  feed(h, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_int_equal(rly_http_respond_error(h->c, 429, "too_many", "slow down", "Retry-After: 1\r\n"),
                   0);
  resp r[1];
  assert_int_equal(read_all(h, r, 1, false), 1);
  assert_error_resp(&r[0], 429, "too_many");
  assert_string_equal(r[0].reason, "Too Many Requests");
  assert_string_equal(resp_header(&r[0], "Retry-After"), "1");
  assert_int_equal(h->closes, 0); /* an application error keeps the connection */
  harness_free(h);
  assert_string_equal(rly_http_status_text(431), "Request Header Fields Too Large");
  assert_string_equal(rly_http_status_text(299), "Unknown");
}

static void test_large_response_headers(void **state) {
  (void)state;
  /* A response whose head does not fit the formatter is refused without
   * writing out of bounds, and the request stays answerable. */
  harness *h = harness_new(NULL, ASYNC);
  feed(h, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  static char ctype[4000];
  memset(ctype, 'a', sizeof ctype - 1);
  rly_http_response big = {.status = 200, .content_type = ctype};
  assert_int_equal(rly_http_respond(h->c, &big), -E2BIG);
  static char extra[3000];
  memset(extra, 'b', sizeof extra - 3);
  memcpy(extra + sizeof extra - 3, "\r\n", 3);
  extra[0] = 'X', extra[1] = ':';
  rly_http_response big2 = {.status = 200, .extra_headers = extra};
  assert_int_equal(rly_http_respond(h->c, &big2), -E2BIG);
  assert_int_equal(cm_buf_size(&h->out), 0);
  assert_true(rly_http_busy(h->c));
  rly_http_response ok = {.status = 200};
  assert_int_equal(rly_http_respond(h->c, &ok), 0);
  harness_free(h);
}

static void test_router(void **state) {
  (void)state;
  static const rly_route t[] = {
      {"GET", "/healthz"},
      {"GET", "/admin/sessions"},
      {"POST", "/admin/sessions"},
      {"GET", "/admin/sessions/{id}"},
      {"DELETE", "/admin/sessions/{id}"},
      {NULL, "/any/{a}/x/{b}"},
  };
  rly_route_match m;
  char allow[64];
  size_t n = CM_ARRAY_LEN(t);
  assert_int_equal(rly_route_find(t, n, "GET", "/healthz", &m, allow, sizeof allow), 0);
  assert_int_equal(m.ncaps, 0);
  assert_int_equal(rly_route_find(t, n, "HEAD", "/healthz", &m, allow, sizeof allow), 0);
  assert_int_equal(rly_route_find(t, n, "POST", "/admin/sessions", &m, allow, sizeof allow), 2);
  assert_int_equal(
      rly_route_find(t, n, "DELETE", "/admin/sessions/abc_DEF-1", &m, allow, sizeof allow), 4);
  assert_int_equal(m.route, 4);
  assert_int_equal(m.ncaps, 1);
  assert_string_equal(m.caps[0], "abc_DEF-1");
  assert_int_equal(rly_route_find(t, n, "PATCH", "/any/1/x/2", &m, allow, sizeof allow), 5);
  assert_int_equal(m.ncaps, 2);
  assert_string_equal(m.caps[0], "1");
  assert_string_equal(m.caps[1], "2");
  /* 405 with the Allow list, each method once. */
  assert_int_equal(rly_route_find(t, n, "PUT", "/admin/sessions/abc", &m, allow, sizeof allow),
                   RLY_ROUTE_BAD_METHOD);
  assert_string_equal(allow, "GET, DELETE");
  assert_int_equal(rly_route_find(t, n, "DELETE", "/admin/sessions", &m, allow, sizeof allow),
                   RLY_ROUTE_BAD_METHOD);
  assert_string_equal(allow, "GET, POST");
  assert_int_equal(rly_route_find(t, n, "POST", "/healthz", &m, allow, sizeof allow),
                   RLY_ROUTE_BAD_METHOD);
  assert_string_equal(allow, "GET");
  /* Not found: no partial or prefix matches, captures are never empty. */
  static const char *missing[] = {
      "/",         "/healthz/", "/healthzz", "/admin/sessions/", "/admin/sessions/a/b",
      "/any/1/x/", "/any//x/2", ""};
  for (size_t i = 0; i < CM_ARRAY_LEN(missing); i++)
    assert_int_equal(rly_route_find(t, n, "GET", missing[i], &m, allow, sizeof allow),
                     RLY_ROUTE_NOT_FOUND);
  /* An over-long capture does not match (and does not overflow). */
  char longp[400] = "/admin/sessions/";
  memset(longp + strlen(longp), 'a', 200);
  assert_int_equal(rly_route_find(t, n, "GET", longp, &m, allow, sizeof allow),
                   RLY_ROUTE_NOT_FOUND);
}

static void test_query(void **state) {
  (void)state;
  char out[64];
  const char *q = "token=a%2Bb%20c%2f&x=1&empty=&plus=a+b&tok=no&bad=%zz%4&mixed=%4a%4A";
  assert_true(rly_http_query_get(q, "token", out, sizeof out));
  assert_string_equal(out, "a+b c/");
  assert_true(rly_http_query_get(q, "x", out, sizeof out));
  assert_string_equal(out, "1");
  assert_true(rly_http_query_get(q, "empty", out, sizeof out));
  assert_string_equal(out, "");
  assert_true(rly_http_query_get(q, "plus", out, sizeof out));
  assert_string_equal(out, "a b");
  assert_true(rly_http_query_get(q, "tok", out, sizeof out));
  assert_string_equal(out, "no");
  assert_true(rly_http_query_get(q, "bad", out, sizeof out));
  assert_string_equal(out, "%zz%4");
  assert_true(rly_http_query_get(q, "mixed", out, sizeof out));
  assert_string_equal(out, "JJ");
  assert_false(rly_http_query_get(q, "missing", out, sizeof out));
  assert_false(rly_http_query_get(q, "to", out, sizeof out));
  assert_false(rly_http_query_get("", "x", out, sizeof out));
  assert_false(rly_http_query_get("x", "x", out, sizeof out));
  /* Too small a buffer is a miss, never a truncated value. */
  char small[4];
  assert_false(rly_http_query_get("x=12345", "x", small, sizeof small));
  assert_true(rly_http_query_get("x=123", "x", small, sizeof small));
  assert_string_equal(small, "123");
  /* The first occurrence wins. */
  assert_true(rly_http_query_get("a=1&a=2", "a", out, sizeof out));
  assert_string_equal(out, "1");
  /* ...and every one can be had in turn, a bad one reported and skipped. */
  const char *cur = "a=1&b=x&a=%00&a=123456&aa=9&a=2";
  assert_int_equal(rly_http_query_next(&cur, "a", small, sizeof small), 1);
  assert_string_equal(small, "1");
  assert_int_equal(rly_http_query_next(&cur, "a", small, sizeof small), -1);
  assert_int_equal(rly_http_query_next(&cur, "a", small, sizeof small), -1);
  assert_int_equal(rly_http_query_next(&cur, "a", small, sizeof small), 1);
  assert_string_equal(small, "2");
  assert_int_equal(rly_http_query_next(&cur, "a", small, sizeof small), 0);
  assert_int_equal(rly_http_query_next(&cur, "a", small, sizeof small), 0);
}

/* on_request that walks repeated headers and list values. */
static void on_request_repeats(void *ud, const rly_http_request *req) {
  harness *h = ud;
  h->nreq++;
  assert_int_equal(rly_http_header_count(req, "x-list"), 3);
  assert_int_equal(rly_http_header_count(req, "missing"), 0);
  const char *want[] = {"a", "b c", "d", "e"};
  size_t k = 0, i = 0, n;
  for (const char *v; (v = rly_http_header_next(req, "X-List", &i));) {
    for (const char *cur = v, *item; (item = rly_http_list_next(&cur, &n));) {
      assert_true(k < CM_ARRAY_LEN(want));
      assert_int_equal(n, strlen(want[k]));
      assert_memory_equal(item, want[k], n);
      k++;
    }
  }
  assert_int_equal(k, 4);
  rly_http_response r = {.status = 204};
  assert_int_equal(rly_http_respond(h->c, &r), 0);
}

static void test_repeated_headers(void **state) {
  (void)state;
  harness *h = calloc(1, sizeof *h);
  cm_buf_init(&h->out, 0);
  rly_http_cbs cbs = g_cbs;
  cbs.on_request = on_request_repeats;
  h->c = rly_http_conn_new(NULL, &cbs, h, "test-server/1");
  feed(h, "GET / HTTP/1.1\r\nX-List: a, b c\r\nHost: h\r\nx-list: ,, \r\n"
          "X-LIST:\td ,e,\r\n\r\n");
  assert_int_equal(h->nreq, 1);
  harness_free(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_simple_get),
      cmocka_unit_test(test_header_tokens),
      cmocka_unit_test(test_header_lookup),
      cmocka_unit_test(test_keep_alive),
      cmocka_unit_test(test_pipelined_sync),
      cmocka_unit_test(test_pipelined_async),
      cmocka_unit_test(test_pending_input_limit),
      cmocka_unit_test(test_body_content_length_and_chunked),
      cmocka_unit_test(test_chunked_trailers),
      cmocka_unit_test(test_expect_continue),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_limits_are_exact),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_http2_request_line),
      cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_connection_close),
      cmocka_unit_test(test_send_failure_closes),
      cmocka_unit_test(test_upgrade),
      cmocka_unit_test(test_head),
      cmocka_unit_test(test_error_format),
      cmocka_unit_test(test_large_response_headers),
      cmocka_unit_test(test_router),
      cmocka_unit_test(test_query),
      cmocka_unit_test(test_header_name_must_be_token),
      cmocka_unit_test(test_obs_fold),
      cmocka_unit_test(test_bare_cr_and_nul),
      cmocka_unit_test(test_host),
      cmocka_unit_test(test_body_framing),
      cmocka_unit_test(test_target_bytes),
      cmocka_unit_test(test_repeated_headers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
