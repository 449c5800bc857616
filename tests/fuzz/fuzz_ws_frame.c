/*
 * fuzz_ws_frame.c — the WebSocket parser on arbitrary bytes.
 *
 * Input byte 0 picks the configuration: bit 0 server (masked) or client
 * mode, bit 1 validate_utf8, bits 2-3 max_message (unlimited, 16, 200,
 * 70000), bits 4-5 the chunk-size pattern, bit 6 whether callbacks pause.
 * The rest is the wire stream.  It is parsed twice, all at once and in
 * pseudo-random chunks with pauses and resumes, and the two runs must agree
 * (same events, same payload hash when no error, same close code).  The
 * callbacks check the parser's promises: headers, payload and ends nest
 * properly, payload never exceeds the declared length, control frames are
 * whole and valid, max_message holds, and with validate_utf8 the bytes
 * that complete a text message (its last payload chunk, or an empty final
 * frame's end) are delivered only when the whole message is valid UTF-8 —
 * a cut-through forwarder sends them on at once.  The UTF-8 validator and
 * masking are also checked against simple reference implementations on
 * the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "websocket/websocket.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) __builtin_trap();                                                                 \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct run {
  ws_parser_config cfg;
  bool pause;
  unsigned calls;
  /* invariants */
  bool in_frame, fin;
  uint64_t declared, got, msg_total;
  uint8_t msg_op;
  uint8_t *text; /* the current text message so far (input-sized) */
  size_t text_len;
  /* outcome */
  uint64_t hash;
  uint64_t headers, ends, controls, payload_bytes;
} run;

static void mix(run *r, const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    r->hash = (r->hash ^ b[i]) * UINT64_C(0x100000001B3);
}

/* Pause on every third callback when pausing is on. */
static int verdict(run *r) { return r->pause && (++r->calls % 3 == 0) ? 1 : 0; }

static bool ref_utf8(const uint8_t *s, size_t n);

/* The message is complete now: with validation on, it must be valid. */
static void check_message_done(const run *r) {
  if (r->cfg.validate_utf8 && r->msg_op == WS_TEXT) CHECK(ref_utf8(r->text, r->text_len));
}

static int on_header(void *ud, const ws_frame *f) {
  run *r = ud;
  CHECK(!r->in_frame);
  CHECK(f->opcode <= WS_BINARY && f->rsv == 0);
  CHECK(f->msg_opcode == WS_TEXT || f->msg_opcode == WS_BINARY);
  if (f->opcode == WS_CONT) {
    CHECK(f->msg_opcode == r->msg_op);
  } else {
    CHECK(f->msg_opcode == f->opcode);
    r->msg_op = f->opcode;
    r->msg_total = 0;
    r->text_len = 0;
  }
  r->fin = f->fin;
  r->msg_total += f->len;
  CHECK(r->cfg.max_message == 0 || r->msg_total <= r->cfg.max_message);
  r->in_frame = true;
  r->declared = f->len;
  r->got = 0;
  r->headers++;
  uint8_t rec[4] = {'H', f->opcode, (uint8_t)f->fin, (uint8_t)f->len};
  mix(r, rec, sizeof(rec));
  return verdict(r);
}

static int on_payload(void *ud, uint8_t *d, size_t n) {
  run *r = ud;
  CHECK(r->in_frame && n > 0);
  CHECK(r->got + n <= r->declared);
  r->got += n;
  r->payload_bytes += n;
  if (r->msg_op == WS_TEXT) {
    memcpy(r->text + r->text_len, d, n);
    r->text_len += n;
  }
  if (r->fin && r->got == r->declared) check_message_done(r);
  mix(r, d, n);
  return verdict(r);
}

static int on_end(void *ud) {
  run *r = ud;
  CHECK(r->in_frame && r->got == r->declared);
  if (r->fin && r->declared == 0) check_message_done(r);
  r->in_frame = false;
  r->ends++;
  mix(r, (const uint8_t *)"E", 1);
  return verdict(r);
}

static int on_control(void *ud, uint8_t op, const uint8_t *p, size_t n) {
  run *r = ud;
  CHECK(!r->in_frame); /* never inside a data frame's payload */
  CHECK(op == WS_CLOSE || op == WS_PING || op == WS_PONG);
  CHECK(n <= WS_MAX_CONTROL);
  if (op == WS_CLOSE) {
    CHECK(n != 1);
    if (n >= 2) CHECK(ws_close_code_valid((uint16_t)(p[0] << 8 | p[1])));
  }
  r->controls++;
  uint8_t rec[2] = {'C', op};
  mix(r, rec, 2);
  mix(r, p, n);
  return verdict(r);
}

static const ws_parser_cbs CBS = {on_header, on_payload, on_end, on_control};

static uint32_t next_rand(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static size_t chunk_len(unsigned pattern, uint32_t *seed, size_t left) {
  size_t n;
  switch (pattern) {
  case 0: n = 1; break;
  case 1: n = 1 + next_rand(seed) % 16; break;
  case 2: n = 1 + next_rand(seed) % 300; break;
  default: n = left; break;
  }
  return n < left ? n : left;
}

/* Parses buf (modified in place) in chunks; returns the final result. */
static int drive(ws_parser *p, run *r, uint8_t *buf, size_t len, unsigned pattern, uint32_t seed) {
  size_t off = 0;
  int rc = 0;
  do {
    size_t n = chunk_len(pattern, &seed, len - off), done = 0;
    do {
      size_t used = 99;
      rc = ws_parse(p, buf + off + done, n - done, &CBS, r, &used);
      CHECK(used <= n - done);
      done += used;
    } while (rc == 1);
    if (rc) break;
    CHECK(done == n); /* 0 means everything was consumed */
    off += n;
  } while (off < len);
  if (rc == WS_EPROTO) {
    uint16_t code = 0;
    CHECK(ws_parser_error(p, &code) != NULL);
    CHECK(code == 1002 || code == 1007 || code == 1009);
    size_t used = 99;
    CHECK(ws_parse(p, buf, len, &CBS, r, &used) == WS_EPROTO && used == 0);
  } else {
    CHECK(rc == 0 && ws_parser_error(p, NULL) == NULL);
    CHECK(r->in_frame == ws_parser_in_frame(p));
  }
  return rc;
}

/* Straightforward decoder: the validator must agree with it. */
static bool ref_utf8(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint32_t c = s[i], min;
    size_t k;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      k = 1, c &= 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      k = 2, c &= 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      k = 3, c &= 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (n - i - 1 < k) return false;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xC0) != 0x80) return false;
      c = c << 6 | (s[i + j] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
    i += k + 1;
  }
  return true;
}

static void check_utf8(const uint8_t *s, size_t n, uint8_t cfg) {
  size_t cut = n ? cfg % (n + 1) : 0;
  ws_utf8 u;
  ws_utf8_init(&u);
  bool ok = ws_utf8_feed(&u, s, cut);
  ok = ws_utf8_feed(&u, s + cut, n - cut) && ok;
  CHECK((ok && ws_utf8_complete(&u)) == ref_utf8(s, n));
}

static void check_mask(const uint8_t *s, size_t n, uint8_t cfg) {
  if (n < 5) return;
  uint8_t key[4];
  memcpy(key, s, 4);
  size_t len = n - 4, phase = cfg >> 6;
  uint8_t *a = malloc(len), *b = malloc(len);
  CHECK(a && b);
  memcpy(a, s + 4, len);
  for (size_t i = 0; i < len; i++)
    b[i] = s[4 + i] ^ key[(phase + i) & 3];
  size_t split = cfg % len;
  ws_mask(a, split, key, phase);
  ws_mask(a + split, len - split, key, phase + split);
  CHECK(memcmp(a, b, len) == 0);
  free(a);
  free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint64_t maxes[4] = {0, 16, 200, 70000};
  if (size < 1) return 0;
  uint8_t c = data[0];
  const uint8_t *in = data + 1;
  size_t n = size - 1;
  ws_parser_config cfg = {
      .server = c & 1, .validate_utf8 = (c & 2) != 0, .max_message = maxes[(c >> 2) & 3]};
  uint8_t *buf = malloc(n ? n : 1), *text = malloc(n ? n : 1);
  CHECK(buf && text);

  /* Run A: everything at once, no pauses. */
  run a = {.cfg = cfg, .hash = 1469598103934665603u, .text = text};
  ws_parser pa;
  ws_parser_init(&pa, &cfg);
  memcpy(buf, in, n);
  int rca = drive(&pa, &a, buf, n, 3, 0);

  /* Run B: chunked by pattern, pausing if asked. */
  run b = {.cfg = cfg, .pause = (c & 0x40) != 0, .hash = 1469598103934665603u, .text = text};
  ws_parser pb;
  ws_parser_init(&pb, &cfg);
  memcpy(buf, in, n);
  int rcb = drive(&pb, &b, buf, n, (c >> 4) & 3, 0x9E3779B9u ^ (uint32_t)size);

  CHECK(rca == rcb);
  CHECK(a.headers == b.headers && a.ends == b.ends && a.controls == b.controls);
  if (rca == 0) {
    CHECK(a.hash == b.hash && a.payload_bytes == b.payload_bytes);
  } else {
    uint16_t ca = 0, cb = 0;
    ws_parser_error(&pa, &ca);
    ws_parser_error(&pb, &cb);
    CHECK(ca == cb);
  }
  free(buf);
  free(text);

  check_utf8(in, n, c);
  check_mask(in, n, c);
  return 0;
}
