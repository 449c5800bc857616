/*
 * fuzz_resp.c — arbitrary bytes as an HTTP/1.1 response into the clients'
 * parser (common/common.h, cm_http_resp).
 *
 * Input layout: byte 0 picks the body cap (the relay's 1 MiB, or 1, 16 or
 * 64 bytes to reach the cap on every framing); bytes 1-2 seed a tiny PRNG
 * that cuts the rest into feeds of 1..512 bytes.  The response is parsed
 * twice, whole and in those feeds, each ending with the end of the
 * connection; both must give the same result, status, headers, body and
 * count of bytes consumed, the body never passes the cap, and a complete
 * response has a final status.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* cm_buf has no cap of 0 (it means none), so 1 is the smallest. */
static const size_t g_caps[] = {1u << 20, 1, 16, 64};

static uint32_t next(uint32_t *rng) {
  *rng ^= *rng << 13;
  *rng ^= *rng >> 17;
  *rng ^= *rng << 5;
  return *rng;
}

/* Parses data in feeds of 1..512 bytes (rng NULL: in one feed); *total
 * is what the parser consumed. */
static int parse(cm_http_resp *r, size_t cap, const uint8_t *data, size_t size, uint32_t *rng,
                 size_t *total) {
  cm_http_resp_init(r, cap, 0);
  int rc = 0;
  size_t off = 0, used;
  *total = 0;
  while (rc == 0 && off < size) {
    size_t n = rng ? 1 + next(rng) % 512 : size - off;
    if (n > size - off) n = size - off;
    rc = cm_http_resp_feed(r, data + off, n, &used);
    if (used > n || (rc == 0 && used != n)) abort();
    *total += used;
    /* An empty feed is no end of input, and a result sticks. */
    if (cm_http_resp_feed(r, data, 0, &used) != rc || used != 0) abort();
    if (rc != 0 && (cm_http_resp_feed(r, "x", 1, &used) != rc || used != 0)) abort();
    off += n;
  }
  return rc != 0 ? rc : cm_http_resp_eof(r);
}

static bool same_buf(const cm_buf *a, const cm_buf *b) {
  return cm_buf_size(a) == cm_buf_size(b) &&
         memcmp(cm_buf_head(a), cm_buf_head(b), cm_buf_size(a)) == 0;
}

/* Every header found by index is found by name (the first of its name). */
static void check_headers(const cm_http_resp *r) {
  const char *n, *v;
  size_t i = 0;
  for (; cm_http_resp_header_at(r, i, &n, &v); i++) {
    const char *first = cm_http_resp_header(r, n);
    if (!first) abort();
  }
  if (i != cm_http_resp_header_count(r) || i > CM_HTTP_RESP_MAX_HEADERS) abort();
}

static void check(const cm_http_resp *r, int rc, size_t cap) {
  if (rc != r->result || rc > 1) abort();
  if (cap && cm_buf_size(&r->body) > cap) abort();
  if (rc == 1 && (r->status < 100 || r->status > 599)) abort();
  if (rc == 1 && r->status >= 100 && r->status < 200 && r->status != 101) abort();
  if (rc < 0 && !r->errmsg) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3) return 0;
  size_t cap = g_caps[data[0] % 4];
  uint32_t rng = (uint32_t)data[1] << 8 | data[2] | 0x10000;
  data += 3;
  size -= 3;
  cm_http_resp whole, cut;
  size_t ua, ub;
  int a = parse(&whole, cap, data, size, NULL, &ua);
  int b = parse(&cut, cap, data, size, &rng, &ub);
  check(&whole, a, cap);
  check(&cut, b, cap);
  check_headers(&whole);
  /* Framing cannot depend on how the bytes arrive. */
  if (a != b) abort();
  if (a == 1 && (whole.status != cut.status || ua != ub || !same_buf(&whole.head, &cut.head)))
    abort();
  if (a >= 0 && !same_buf(&whole.body, &cut.body)) abort();
  cm_http_resp_free(&whole);
  cm_http_resp_free(&cut);
  return 0;
}
