/*
 * fuzz_resp.c — arbitrary bytes as an HTTP/1.1 response into the IdP
 * client's parser (relay/resp.h).
 *
 * Input layout: byte 0 picks the body cap (the relay's 1 MiB, or 1, 16 or
 * 64 bytes to reach the cap on every framing); bytes 1-2 seed a tiny PRNG
 * that cuts the rest into feeds of 1..512 bytes.  The response is parsed
 * twice, whole and in those feeds, each ending with the end of the
 * connection; both must give the same result, status and body, the body
 * never passes the cap, and a complete response has a final status.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* cm_buf has no cap of 0 (it means none), so 1 is the smallest. */
static const size_t g_caps[] = {1u << 20, 1, 16, 64};

static uint32_t next(uint32_t *rng) {
  *rng ^= *rng << 13;
  *rng ^= *rng >> 17;
  *rng ^= *rng << 5;
  return *rng;
}

/* Parses data in feeds of 1..512 bytes (rng NULL: in one feed). */
static int parse(rly_resp *r, size_t cap, const uint8_t *data, size_t size, uint32_t *rng) {
  rly_resp_init(r, cap);
  int rc = 0;
  size_t off = 0;
  while (rc == 0 && off < size) {
    size_t n = rng ? 1 + next(rng) % 512 : size - off;
    if (n > size - off) n = size - off;
    rc = rly_resp_feed(r, data + off, n);
    /* An empty feed is no end of input, and a result sticks. */
    if (rly_resp_feed(r, data, 0) != rc) abort();
    if (rc != 0 && rly_resp_feed(r, "x", 1) != rc) abort();
    off += n;
  }
  return rc != 0 ? rc : rly_resp_eof(r);
}

static void check(const rly_resp *r, int rc, size_t cap) {
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
  rly_resp whole, cut;
  int a = parse(&whole, cap, data, size, NULL);
  int b = parse(&cut, cap, data, size, &rng);
  check(&whole, a, cap);
  check(&cut, b, cap);
  /* Framing cannot depend on how the bytes arrive. */
  if (a != b) abort();
  if (a == 1 && whole.status != cut.status) abort();
  if (a >= 0 &&
      (cm_buf_size(&whole.body) != cm_buf_size(&cut.body) ||
       memcmp(cm_buf_head(&whole.body), cm_buf_head(&cut.body), cm_buf_size(&whole.body)) != 0))
    abort();
  rly_resp_free(&whole);
  rly_resp_free(&cut);
  return 0;
}
