/*
 * fuzz_http.c — arbitrary bytes into the HTTP/1.1 core (relay/http.h).
 *
 * Input layout: byte 0 selects options (small limits, asynchronous answers,
 * taking upgrades, timeouts); bytes 1-2 seed a tiny PRNG that cuts the rest
 * into feeds of 1..256 bytes and decides, after each feed, whether a pending
 * request is answered now or later.  Every request also goes through the
 * header, query and router helpers.  The core must never crash, leak, or
 * write anything but well-formed response heads, and every request it
 * hands over must be one that strict parsers agree on (RFC 9112): token
 * header names, one valid Host (on HTTP/1.1), Transfer-Encoding only as a
 * single "chunked" on HTTP/1.1, a visible-ASCII target, no upgrade on
 * HTTP/1.0.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "relay/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fz {
  rly_http_conn *c;
  uint8_t opts;
  uint32_t rng;
  bool closed, upgraded;
  size_t out_bytes;
} fz;

enum {
  OPT_SMALL = 1,    /* tiny limits: reach every limit path */
  OPT_ASYNC = 2,    /* answer outside the feed */
  OPT_UPGRADE = 4,  /* accept upgrades */
  OPT_TIMEOUT = 8,  /* fire the header deadline now and then */
  OPT_HEAD_BIG = 16 /* long extra headers in responses */
};

static uint32_t next(fz *f) {
  f->rng ^= f->rng << 13;
  f->rng ^= f->rng >> 17;
  f->rng ^= f->rng << 5;
  return f->rng;
}

static void answer(fz *f) {
  static char extra[1500];
  if (!extra[0]) {
    memset(extra, 'x', sizeof extra - 3);
    memcpy(extra, "X-Fill: ", 8);
    memcpy(extra + sizeof extra - 3, "\r\n", 3);
  }
  rly_http_response r = {.status = 200 + (int)(next(f) % 4) * 100,
                         .content_type = "text/plain",
                         .body = (const uint8_t *)"body",
                         .body_len = 4,
                         .extra_headers = (f->opts & OPT_HEAD_BIG) ? extra : NULL,
                         .close = next(f) % 16 == 0};
  rly_http_respond(f->c, &r);
}

static bool all_bytes_in(const char *s, bool (*ok)(unsigned char)) {
  for (; *s; s++)
    if (!ok((unsigned char)*s)) return false;
  return true;
}

static bool tchar(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         strchr("!#$%&'*+-.^_`|~", ch);
}

static bool visible(unsigned char ch) { return ch > 0x20 && ch < 0x7F; }

/* What a request the core dispatches must satisfy (see the top). */
static void check_strict(const rly_http_request *req) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (!req->headers[i].name[0] || !all_bytes_in(req->headers[i].name, tchar)) abort();
  if (!all_bytes_in(req->target, visible)) abort();
  size_t hosts = rly_http_header_count(req, "host");
  if (hosts > 1 || (req->http_minor >= 1 && hosts != 1)) abort();
  size_t i = 0, n, items = 0;
  const char *te = rly_http_header_next(req, "transfer-encoding", &i);
  if (te && (req->http_minor == 0 || rly_http_header_next(req, "transfer-encoding", &i))) abort();
  for (const char *cur = te ? te : "", *item; (item = rly_http_list_next(&cur, &n)); items++)
    if (n != 7 || strncasecmp(item, "chunked", 7) != 0) abort();
  if (te && items != 1) abort();
  if (req->upgrade && req->http_minor == 0) abort();
}

static void on_request(void *ud, const rly_http_request *req) {
  fz *f = ud;
  char buf[64], allow[64];
  (void)rly_http_header_get(req, "host");
  const char *conn = rly_http_header_get(req, "connection");
  if (conn) (void)rly_http_header_has_token(conn, "upgrade");
  (void)rly_http_query_get(req->query, "token", buf, sizeof buf);
  const char *cur = req->query;
  while (rly_http_query_next(&cur, "token", buf, sizeof buf) != 0)
    ;
  check_strict(req);
  static const rly_route routes[] = {
      {"GET", "/healthz"}, {"GET", "/admin/sessions/{id}"}, {NULL, "/relay/{id}"}};
  rly_route_match m;
  (void)rly_route_find(routes, 3, req->method, req->path, &m, allow, sizeof allow);
  for (size_t i = 0; i < req->nheaders; i++)
    if (!req->headers[i].name || !req->headers[i].value) abort();
  if (req->body_len && !req->body) abort();
  if (req->upgrade && (f->opts & OPT_UPGRADE)) {
    size_t n;
    const uint8_t *p = rly_http_take_upgrade(f->c, &n);
    if (n && !p) abort();
    f->upgraded = true;
    return;
  }
  if (!(f->opts & OPT_ASYNC)) answer(f);
}

static int on_send(void *ud, const void *data, size_t len) {
  fz *f = ud;
  if (len == 0) abort();
  /* Every response head starts a status line. */
  if (f->out_bytes == 0 && (len < 9 || memcmp(data, "HTTP/1.1 ", 9) != 0)) abort();
  f->out_bytes += len;
  return 0;
}

static void on_close(void *ud) {
  fz *f = ud;
  if (f->closed) abort(); /* exactly once */
  f->closed = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3) return 0;
  fz f = {.opts = data[0], .rng = (uint32_t)data[1] << 8 | data[2] | 0x10000};
  data += 3;
  size -= 3;
  rly_http_limits l;
  rly_http_limits_default(&l);
  if (f.opts & OPT_SMALL) {
    l.max_url = 64;
    l.max_header_bytes = 256;
    l.max_headers = 4;
    l.max_body = 32;
    l.max_pending_input = 64;
  }
  static const rly_http_cbs cbs = {.on_request = on_request, .send = on_send, .on_close = on_close};
  f.c = rly_http_conn_new(&l, &cbs, &f, "fuzz");
  if (!f.c) return 0;
  size_t off = 0;
  while (off < size) {
    size_t n = 1 + next(&f) % 256;
    if (n > size - off) n = size - off;
    f.out_bytes = 0;
    int rc = rly_http_feed(f.c, data + off, n);
    if (rc < 0) abort();
    off += n;
    uint32_t r = next(&f);
    if ((f.opts & OPT_ASYNC) && rly_http_busy(f.c) && !f.closed && !f.upgraded && r % 3 != 0) {
      f.out_bytes = 0;
      answer(&f);
    }
    if ((f.opts & OPT_TIMEOUT) && r % 7 == 0) {
      f.out_bytes = 0;
      rly_http_timeout(f.c);
    }
    (void)rly_http_in_request(f.c);
    (void)rly_http_in_body(f.c);
  }
  /* Drain: answer whatever is still pending, then let the parser finish. */
  for (int i = 0; i < 1000 && rly_http_busy(f.c) && !f.closed && !f.upgraded; i++) {
    f.out_bytes = 0;
    answer(&f);
  }
  (void)rly_http_requests(f.c);
  rly_http_conn_free(f.c);
  return 0;
}
