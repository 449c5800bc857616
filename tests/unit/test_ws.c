/*
 * test_ws.c — the WebSocket codec (websocket/websocket.h): encoder/parser round trips
 * for every length class, chunking independence (byte-at-a-time equals
 * all-at-once, compared by SHA-256 of every event and payload byte),
 * pause-and-resume, each protocol error with its exact close code, the
 * UTF-8 validator against known vectors split every way, masking against
 * a byte-wise reference at every alignment and phase, and the RFC 6455
 * accept-key example.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "websocket/websocket.h"

/* ------------------------------------------------------------------------
 * Helpers.
 * ---------------------------------------------------------------------- */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void fill_random(uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    b[i] = (uint8_t)rng();
}

static const uint8_t KEY[4] = {0x37, 0xFA, 0x21, 0x3D};

/* Appends one frame (header + payload, masked when key is set) at out. */
static size_t put_frame(uint8_t *out, bool fin, uint8_t op, const void *payload, size_t len,
                        const uint8_t *key) {
  size_t h = ws_frame_header(out, fin, op, len, key);
  assert_true(h >= 2);
  if (len) memcpy(out + h, payload, len);
  if (key) ws_mask(out + h, len, key, 0);
  return h + len;
}

/* Everything the parser reports, hashed in order (payload bytes without
 * chunk boundaries, so any chunking of the same stream hashes the same). */
typedef struct coll {
  EVP_MD_CTX *md;
  uint8_t *payload; /* concatenated data payload */
  size_t plen, pcap;
  int headers, payloads, ends, controls;
  ws_frame last;
  uint8_t ctrl_op;
  uint8_t ctrl[125];
  size_t ctrl_len;
  bool pause; /* every callback returns 1 */
  int pauses;
} coll;

static void coll_init(coll *c) {
  memset(c, 0, sizeof(*c));
  c->md = EVP_MD_CTX_new();
  assert_non_null(c->md);
  assert_int_equal(EVP_DigestInit_ex(c->md, EVP_sha256(), NULL), 1);
}

static void coll_free(coll *c) {
  EVP_MD_CTX_free(c->md);
  free(c->payload);
}

static void coll_digest(coll *c, uint8_t out[32]) {
  unsigned n = 0;
  assert_int_equal(EVP_DigestFinal_ex(c->md, out, &n), 1);
  assert_int_equal(n, 32);
}

static int maybe_pause(coll *c) {
  if (!c->pause) return 0;
  c->pauses++;
  return 1;
}

static int on_header(void *ud, const ws_frame *f) {
  coll *c = ud;
  uint8_t rec[12] = {'H', f->opcode, f->msg_opcode, (uint8_t)f->fin};
  memcpy(rec + 4, &f->len, 8);
  EVP_DigestUpdate(c->md, rec, sizeof(rec));
  c->headers++;
  c->last = *f;
  return maybe_pause(c);
}

static int on_payload(void *ud, uint8_t *data, size_t len) {
  coll *c = ud;
  assert_true(len > 0);
  EVP_DigestUpdate(c->md, data, len);
  if (c->plen + len > c->pcap) {
    c->pcap = (c->plen + len) * 2;
    c->payload = realloc(c->payload, c->pcap);
    assert_non_null(c->payload);
  }
  memcpy(c->payload + c->plen, data, len);
  c->plen += len;
  c->payloads++;
  return maybe_pause(c);
}

static int on_end(void *ud) {
  coll *c = ud;
  EVP_DigestUpdate(c->md, "E", 1);
  c->ends++;
  return maybe_pause(c);
}

static int on_control(void *ud, uint8_t op, const uint8_t *payload, size_t len) {
  coll *c = ud;
  assert_true(len <= 125);
  uint8_t rec[2] = {'C', op};
  EVP_DigestUpdate(c->md, rec, 2);
  EVP_DigestUpdate(c->md, payload, len);
  c->controls++;
  c->ctrl_op = op;
  memcpy(c->ctrl, payload, len);
  c->ctrl_len = len;
  return maybe_pause(c);
}

static const ws_parser_cbs CBS = {on_header, on_payload, on_end, on_control};

static ws_parser_config cfg_of(bool server, uint64_t max_message, bool utf8) {
  ws_parser_config cfg = {.server = server, .max_message = max_message, .validate_utf8 = utf8};
  return cfg;
}

/* Feeds buf in chunks of `step` bytes (0: all at once), resuming after
 * pauses.  Returns 0 when everything was consumed, else the error. */
static int feed(ws_parser *p, uint8_t *buf, size_t len, size_t step, coll *c) {
  size_t off = 0;
  if (step == 0) step = len ? len : 1;
  do {
    size_t n = len - off < step ? len - off : step;
    size_t done = 0;
    int rc;
    do {
      size_t used = 0;
      rc = ws_parse(p, buf + off + done, n - done, &CBS, c, &used);
      assert_true(used <= n - done);
      done += used;
    } while (rc == 1);
    if (rc) return rc;
    assert_int_equal(done, n);
    off += n;
  } while (off < len);
  return 0;
}

/* Parses a whole stream; returns the parse result and the error code. */
static int parse_all(bool server, uint64_t max, bool utf8, uint8_t *buf, size_t len, coll *c,
                     uint16_t *code) {
  ws_parser p;
  ws_parser_config cfg = cfg_of(server, max, utf8);
  ws_parser_init(&p, &cfg);
  int rc = feed(&p, buf, len, 0, c);
  *code = 0;
  const char *why = ws_parser_error(&p, code);
  if (rc == WS_EPROTO) {
    assert_non_null(why);
  } else {
    assert_null(why);
  }
  return rc;
}

/* ------------------------------------------------------------------------
 * Round trips.
 * ---------------------------------------------------------------------- */
static void roundtrip(uint64_t len, bool server) {
  uint8_t *payload = malloc(len + 1);
  uint8_t *wire = malloc(len + 14);
  assert_non_null(payload);
  assert_non_null(wire);
  fill_random(payload, len);
  size_t n = put_frame(wire, true, WS_BINARY, payload, len, server ? KEY : NULL);
  size_t hlen = n - len;
  size_t expect = (len < 126 ? 2 : len <= 0xFFFF ? 4 : 10) + (server ? 4 : 0);
  assert_int_equal(hlen, expect);
  if (server && len >= 8) assert_memory_not_equal(wire + hlen, payload, 8);

  coll c;
  coll_init(&c);
  uint16_t code;
  assert_int_equal(parse_all(server, 0, true, wire, n, &c, &code), 0);
  assert_int_equal(c.headers, 1);
  assert_int_equal(c.ends, 1);
  assert_int_equal(c.last.len, len);
  assert_int_equal(c.last.opcode, WS_BINARY);
  assert_true(c.last.fin);
  assert_int_equal(c.plen, len);
  if (len) assert_memory_equal(c.payload, payload, len);
  coll_free(&c);
  free(payload);
  free(wire);
}

static void test_roundtrip_length_classes(void **state) {
  (void)state;
  static const uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 1u << 20};
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    roundtrip(lens[i], true);
    roundtrip(lens[i], false);
  }
}

static void test_frame_header_encoding(void **state) {
  (void)state;
  uint8_t h[14];
  assert_int_equal(ws_frame_header(h, true, WS_TEXT, 5, NULL), 2);
  assert_int_equal(h[0], 0x81);
  assert_int_equal(h[1], 0x05);
  assert_int_equal(ws_frame_header(h, false, WS_BINARY, 126, NULL), 4);
  assert_memory_equal(h, "\x02\x7E\x00\x7E", 4);
  assert_int_equal(ws_frame_header(h, true, WS_BINARY, 65536, KEY), 14);
  assert_memory_equal(h, "\x82\xFF\x00\x00\x00\x00\x00\x01\x00\x00", 10);
  assert_memory_equal(h + 10, KEY, 4);
  assert_int_equal(ws_frame_header(h, true, WS_PING, 0, KEY), 6);
  assert_int_equal(h[1], 0x80);
  assert_int_equal(ws_frame_header(h, true, 16, 0, NULL), 0);
  assert_int_equal(ws_frame_header(h, true, WS_BINARY, UINT64_C(1) << 63, NULL), 0);
}

/* ------------------------------------------------------------------------
 * Chunking independence and pausing.
 * ---------------------------------------------------------------------- */
/* A stream exercising fragmentation, interleaved control frames and all
 * length classes.  Returns its length; *payload_len gets the data bytes. */
static size_t mixed_stream(uint8_t *out, bool masked, size_t *payload_len) {
  static uint8_t big[70000];
  const uint8_t *k = masked ? KEY : NULL;
  fill_random(big, sizeof(big));
  size_t n = 0;
  n += put_frame(out + n, false, WS_TEXT, "Hello, ", 7, k);
  n += put_frame(out + n, true, WS_PING, "ping!", 5, k);
  n += put_frame(out + n, false, WS_CONT, "w\xC3\xB6rld \xF0\x9F", 9, k);
  n += put_frame(out + n, true, WS_PONG, "", 0, k);
  n += put_frame(out + n, true, WS_CONT, "\x98\x80!", 3, k);
  n += put_frame(out + n, true, WS_BINARY, big, sizeof(big), k);
  n += put_frame(out + n, true, WS_BINARY, big, 0, k);
  n += put_frame(out + n, true, WS_BINARY, big, 300, k);
  uint8_t close[125];
  size_t cl = ws_close_payload(close, 1000, "bye");
  n += put_frame(out + n, true, WS_CLOSE, close, cl, k);
  *payload_len = 7 + 9 + 3 + sizeof(big) + 300;
  return n;
}

static void test_bytewise_equals_bulk(void **state) {
  (void)state;
  static uint8_t stream[80000], copy[80000];
  for (int masked = 0; masked < 2; masked++) {
    size_t plen;
    size_t n = mixed_stream(stream, masked, &plen);
    static const size_t steps[] = {0, 1, 2, 3, 7, 13, 4096};
    uint8_t ref[32];
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
      for (int pause = 0; pause < 2; pause++) {
        memcpy(copy, stream, n);
        ws_parser p;
        ws_parser_config cfg = cfg_of(masked, 0, true);
        ws_parser_init(&p, &cfg);
        coll c;
        coll_init(&c);
        c.pause = pause;
        assert_int_equal(feed(&p, copy, n, steps[s], &c), 0);
        assert_null(ws_parser_error(&p, NULL));
        assert_int_equal(c.headers, 6);
        assert_int_equal(c.ends, 6);
        assert_int_equal(c.controls, 3);
        assert_int_equal(c.plen, plen);
        assert_int_equal(c.ctrl_op, WS_CLOSE);
        assert_int_equal(c.ctrl_len, 5);
        assert_memory_equal(c.ctrl,
                            "\x03\xE8"
                            "bye",
                            5);
        assert_memory_equal(c.payload, "Hello, w\xC3\xB6rld \xF0\x9F\x98\x80!", 19);
        uint8_t d[32];
        coll_digest(&c, d);
        if (s == 0 && !pause) {
          memcpy(ref, d, 32);
        } else {
          assert_memory_equal(d, ref, 32);
        }
        coll_free(&c);
      }
    }
  }
}

static void test_pause_resume_consumed(void **state) {
  (void)state;
  uint8_t buf[64];
  size_t n = put_frame(buf, true, WS_BINARY, "0123456789", 10, KEY);
  n += put_frame(buf + n, true, WS_BINARY, "", 0, KEY);
  n += put_frame(buf + n, true, WS_PING, "ab", 2, KEY);
  assert_int_equal(n, 16 + 6 + 8);

  ws_parser p;
  ws_parser_config cfg = cfg_of(true, 0, false);
  ws_parser_init(&p, &cfg);
  coll c;
  coll_init(&c);
  c.pause = true;
  size_t used, off = 0;
  /* header of frame 1 */
  assert_int_equal(ws_parse(&p, buf, n, &CBS, &c, &used), 1);
  assert_int_equal(used, 6);
  assert_true(ws_parser_in_frame(&p));
  off += used;
  /* its payload, unmasked in place */
  assert_int_equal(ws_parse(&p, buf + off, n - off, &CBS, &c, &used), 1);
  assert_int_equal(used, 10);
  assert_memory_equal(buf + off, "0123456789", 10);
  off += used;
  /* its end, needing no input */
  assert_int_equal(ws_parse(&p, NULL, 0, &CBS, &c, &used), 1);
  assert_int_equal(used, 0);
  assert_int_equal(c.ends, 1);
  assert_false(ws_parser_in_frame(&p));
  assert_int_equal(ws_parse(&p, NULL, 0, &CBS, &c, &used), 0);
  assert_int_equal(used, 0);
  /* empty frame: header, then its end from zero bytes of input */
  assert_int_equal(ws_parse(&p, buf + off, n - off, &CBS, &c, &used), 1);
  assert_int_equal(used, 6);
  off += used;
  assert_int_equal(c.headers, 2);
  assert_int_equal(ws_parse(&p, buf + off, 0, &CBS, &c, &used), 1);
  assert_int_equal(used, 0);
  assert_int_equal(c.ends, 2);
  /* ping split 3 + 5: nothing to report after 3 bytes */
  assert_int_equal(ws_parse(&p, buf + off, 3, &CBS, &c, &used), 0);
  assert_int_equal(used, 3);
  off += used;
  assert_int_equal(ws_parse(&p, buf + off, n - off, &CBS, &c, &used), 1);
  assert_int_equal(used, 5);
  assert_int_equal(c.controls, 1);
  assert_int_equal(c.ctrl_len, 2);
  assert_memory_equal(c.ctrl, "ab", 2);
  assert_int_equal(c.pauses, 6);
  coll_free(&c);
}

/* A callback's own value (here an abort) comes back unchanged. */
static int abort_on_payload(void *ud, uint8_t *data, size_t len) {
  (void)ud;
  (void)data;
  (void)len;
  return -42;
}

static void test_callback_abort_value(void **state) {
  (void)state;
  uint8_t buf[32];
  size_t n = put_frame(buf, true, WS_TEXT, "abc", 3, NULL);
  ws_parser p;
  ws_parser_config cfg = cfg_of(false, 0, true);
  ws_parser_init(&p, &cfg);
  ws_parser_cbs cbs = {.on_frame_payload = abort_on_payload};
  size_t used;
  assert_int_equal(ws_parse(&p, buf, n, &cbs, NULL, &used), -42);
  assert_int_equal(used, n);
  assert_null(ws_parser_error(&p, NULL));
}

/* ------------------------------------------------------------------------
 * Protocol errors.
 * ---------------------------------------------------------------------- */
typedef struct err_case {
  const char *name;
  bool server;
  uint64_t max;
  const char *bytes; /* raw wire bytes */
  size_t len;
  uint16_t code;
} err_case;

#define W(s) s, sizeof(s) - 1

static void test_protocol_errors(void **state) {
  (void)state;
  static const err_case cases[] = {
      {"unmasked client frame", true, 0, W("\x82\x00"), 1002},
      {"masked server frame", false, 0, W("\x82\x80\x01\x02\x03\x04"), 1002},
      {"rsv1", false, 0, W("\xC2\x00"), 1002},
      {"rsv2", false, 0, W("\xA2\x00"), 1002},
      {"rsv3", false, 0, W("\x92\x00"), 1002},
      {"fragmented ping", false, 0, W("\x09\x00"), 1002},
      {"fragmented close", false, 0, W("\x08\x00"), 1002},
      {"ping 126", false, 0, W("\x89\x7E\x00\x7E"), 1002},
      {"pong 127", false, 0, W("\x8A\x7F"), 1002},
      {"lone continuation", false, 0, W("\x80\x00"), 1002},
      {"lone non-final continuation", false, 0, W("\x00\x00"), 1002},
      {"text inside fragmented text", false, 0,
       W("\x01\x01"
         "a"
         "\x81\x00"),
       1002},
      {"binary inside fragmented text", false, 0, W("\x01\x00\x89\x00\x02\x00"), 1002},
      {"continuation after final", false, 0, W("\x82\x00\x80\x00"), 1002},
      {"64-bit top bit", false, 0, W("\x82\x7F\x80\x00\x00\x00\x00\x00\x00\x00"), 1002},
      {"close of one byte", false, 0, W("\x88\x01\x03"), 1002},
      {"close code 0", false, 0, W("\x88\x02\x00\x00"), 1002},
      {"close code 999", false, 0, W("\x88\x02\x03\xE7"), 1002},
      {"close code 1004", false, 0, W("\x88\x02\x03\xEC"), 1002},
      {"close code 1005", false, 0, W("\x88\x02\x03\xED"), 1002},
      {"close code 1006", false, 0, W("\x88\x02\x03\xEE"), 1002},
      {"close code 1015", false, 0, W("\x88\x02\x03\xF7"), 1002},
      {"close code 1016", false, 0, W("\x88\x02\x03\xF8"), 1002},
      {"close code 2999", false, 0, W("\x88\x02\x0B\xB7"), 1002},
      {"close code 5000", false, 0, W("\x88\x02\x13\x88"), 1002},
      {"close code 65535", false, 0, W("\x88\x02\xFF\xFF"), 1002},
      {"close reason bad utf8", false, 0, W("\x88\x04\x03\xE8\xC0\xAF"), 1007},
      {"close reason truncated utf8", false, 0, W("\x88\x03\x03\xE8\xE2"), 1007},
      {"close reason surrogate", false, 0, W("\x88\x05\x03\xE8\xED\xA0\x80"), 1007},
      {"text bad utf8", false, 0, W("\x81\x02\xC0\x80"), 1007},
      {"text ends mid-sequence", false, 0,
       W("\x81\x02"
         "a\xE2"),
       1007},
      {"fragmented text ends mid-sequence", false, 0, W("\x01\x01\xF0\x80\x02\x9F\x98"), 1007},
      {"text surrogate across frames", false, 0, W("\x01\x01\xED\x80\x02\xA0\x80"), 1007},
      {"text above U+10FFFF", false, 0, W("\x81\x04\xF4\x90\x80\x80"), 1007},
      {"too big single", false, 10, W("\x82\x0B"), 1009},
      {"too big 16-bit", false, 1000, W("\x82\x7E\x03\xE9"), 1009},
      {"too big 64-bit", false, 1u << 20, W("\x82\x7F\x00\x00\x00\x00\x00\x10\x00\x01"), 1009},
      {"too big cumulative", false, 10,
       W("\x01\x06"
         "abcdef"
         "\x80\x05"),
       1009},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const err_case *e = &cases[i];
    uint8_t buf[64];
    memcpy(buf, e->bytes, e->len);
    /* In server mode the payload bytes must be masked: the cases that run
     * there are header-only, so no key is needed. */
    coll c;
    coll_init(&c);
    uint16_t code = 0;
    int rc = parse_all(e->server, e->max, true, buf, e->len, &c, &code);
    if (rc != WS_EPROTO || code != e->code)
      fail_msg("case '%s': rc %d code %u, want code %u", e->name, rc, code, e->code);
    coll_free(&c);
  }
  /* Every unknown opcode, in both modes. */
  for (uint8_t op = 3; op < 16; op++) {
    if (op >= 8 && op <= 10) continue;
    for (int server = 0; server < 2; server++) {
      uint8_t buf[6] = {(uint8_t)(0x80 | op), server ? 0x80 : 0, 1, 2, 3, 4};
      coll c;
      coll_init(&c);
      uint16_t code = 0;
      assert_int_equal(parse_all(server, 0, true, buf, server ? 6 : 2, &c, &code), WS_EPROTO);
      assert_int_equal(code, 1002);
      coll_free(&c);
    }
  }
}

static void test_errors_are_sticky(void **state) {
  (void)state;
  uint8_t buf[8] = {0xC2, 0x00, 0x82, 0x00};
  ws_parser p;
  ws_parser_config cfg = cfg_of(false, 0, true);
  ws_parser_init(&p, &cfg);
  coll c;
  coll_init(&c);
  size_t used = 99;
  assert_int_equal(ws_parse(&p, buf, 4, &CBS, &c, &used), WS_EPROTO);
  assert_int_equal(used, 2);
  uint16_t code = 0;
  const char *why = ws_parser_error(&p, &code);
  assert_int_equal(code, 1002);
  assert_string_equal(why, "reserved bit set");
  assert_int_equal(ws_parse(&p, buf + 2, 2, &CBS, &c, &used), WS_EPROTO);
  assert_int_equal(used, 0);
  assert_int_equal(ws_parse(&p, NULL, 0, &CBS, &c, &used), WS_EPROTO);
  assert_int_equal(c.headers + c.ends + c.controls, 0);
  coll_free(&c);
}

/* Invalid text is refused before the chunk holding it is delivered. */
static void test_invalid_text_not_delivered(void **state) {
  (void)state;
  uint8_t buf[32];
  size_t n = put_frame(buf, true, WS_TEXT, "ok\xFF!", 4, KEY);
  ws_parser p;
  ws_parser_config cfg = cfg_of(true, 0, true);
  ws_parser_init(&p, &cfg);
  coll c;
  coll_init(&c);
  size_t used;
  assert_int_equal(ws_parse(&p, buf, n, &CBS, &c, &used), WS_EPROTO);
  assert_int_equal(c.headers, 1);
  assert_int_equal(c.plen, 0);
  uint16_t code;
  assert_non_null(ws_parser_error(&p, &code));
  assert_int_equal(code, 1007);
  coll_free(&c);
}

/* A text message that ends inside a character: the chunk that would end
 * it is not delivered (a cut-through forwarder would send it on with FIN
 * at once, completing an invalid message before the 1007).  Fed whole and
 * byte by byte, in one frame and as the last of several. */
static void test_unfinished_text_not_delivered(void **state) {
  (void)state;
  static const struct {
    const char *first; /* non-final frame, NULL: none */
    const char *last;  /* final frame: valid so far, ends mid-character */
  } cases[] = {
      {NULL, "ok \xE2\x82"}, {NULL, "\xF0"},        {"ab", "\xE2\x82"},
      {"\xF0\x9F", "\x98"},  {"euro \xE2", "\x82"}, {"", "\xC3"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    for (size_t step = 0; step < 2; step++) {
      uint8_t buf[64];
      size_t n = 0, first_len = cases[i].first ? strlen(cases[i].first) : 0;
      if (cases[i].first) n = put_frame(buf, false, WS_TEXT, cases[i].first, first_len, KEY);
      n += put_frame(buf + n, true, cases[i].first ? WS_CONT : WS_TEXT, cases[i].last,
                     strlen(cases[i].last), KEY);
      ws_parser p;
      ws_parser_config cfg = cfg_of(true, 0, true);
      ws_parser_init(&p, &cfg);
      coll c;
      coll_init(&c);
      assert_int_equal(feed(&p, buf, n, step, &c), WS_EPROTO);
      uint16_t code = 0;
      assert_string_equal(ws_parser_error(&p, &code), "text message ends inside a UTF-8 sequence");
      assert_int_equal(code, 1007);
      /* Byte by byte, every byte but the last one may have gone out (each
       * is valid so far and none ends the message); at once, only the
       * first frame's. */
      size_t want = step ? first_len + strlen(cases[i].last) - 1 : first_len;
      if (c.plen != want) fail_msg("case %zu step %zu: %zu bytes delivered", i, step, c.plen);
      assert_int_equal(c.ends, cases[i].first ? 1 : 0); /* the final frame never ended */
      coll_free(&c);
    }
  }
}

static void test_utf8_policy(void **state) {
  (void)state;
  uint8_t buf[64];
  coll c;
  uint16_t code;
  /* Binary is never validated. */
  size_t n = put_frame(buf, true, WS_BINARY, "\xFF\xFE", 2, NULL);
  coll_init(&c);
  assert_int_equal(parse_all(false, 0, true, buf, n, &c, &code), 0);
  coll_free(&c);
  /* Text is not validated when validate_utf8 is off... */
  n = put_frame(buf, true, WS_TEXT, "\xFF\xE2", 2, NULL);
  coll_init(&c);
  assert_int_equal(parse_all(false, 0, false, buf, n, &c, &code), 0);
  assert_int_equal(c.plen, 2);
  coll_free(&c);
  /* ...but a close reason always is. */
  n = put_frame(buf, true, WS_CLOSE, "\x03\xE8\xFF", 3, NULL);
  coll_init(&c);
  assert_int_equal(parse_all(false, 0, false, buf, n, &c, &code), WS_EPROTO);
  assert_int_equal(code, 1007);
  coll_free(&c);
  /* A character split over three frames, with a ping in between. */
  n = put_frame(buf, false, WS_TEXT, "\xF0", 1, KEY);
  n += put_frame(buf + n, false, WS_CONT, "\x9F\x98", 2, KEY);
  n += put_frame(buf + n, true, WS_PING, "", 0, KEY);
  n += put_frame(buf + n, true, WS_CONT, "\x80", 1, KEY);
  coll_init(&c);
  assert_int_equal(parse_all(true, 0, true, buf, n, &c, &code), 0);
  assert_int_equal(c.plen, 4);
  assert_memory_equal(c.payload, "\xF0\x9F\x98\x80", 4);
  assert_int_equal(c.last.opcode, WS_CONT);
  assert_int_equal(c.last.msg_opcode, WS_TEXT);
  coll_free(&c);
}

static void test_max_message(void **state) {
  (void)state;
  uint8_t buf[256];
  coll c;
  uint16_t code;
  /* Exactly at the limit, over three frames with a big ping between. */
  uint8_t ping[125];
  memset(ping, 'p', sizeof(ping));
  size_t n = put_frame(buf, false, WS_BINARY, "abcd", 4, NULL);
  n += put_frame(buf + n, true, WS_PING, ping, sizeof(ping), NULL);
  n += put_frame(buf + n, false, WS_CONT, "efgh", 4, NULL);
  n += put_frame(buf + n, true, WS_CONT, "ij", 2, NULL);
  n += put_frame(buf + n, true, WS_TEXT, "0123456789", 10, NULL);
  coll_init(&c);
  assert_int_equal(parse_all(false, 10, true, buf, n, &c, &code), 0);
  assert_int_equal(c.plen, 20);
  assert_int_equal(c.controls, 1);
  coll_free(&c);
  /* One byte over, in the last fragment: refused at its header, before
   * its header or payload is delivered. */
  n = put_frame(buf, false, WS_BINARY, "abcd", 4, NULL);
  n += put_frame(buf + n, true, WS_CONT, "efghijk", 7, NULL);
  coll_init(&c);
  assert_int_equal(parse_all(false, 10, true, buf, n, &c, &code), WS_EPROTO);
  assert_int_equal(code, 1009);
  assert_int_equal(c.headers, 1);
  assert_int_equal(c.plen, 4);
  coll_free(&c);
  /* A header alone suffices: no payload needs to arrive. */
  n = ws_frame_header(buf, true, WS_BINARY, UINT64_C(1) << 40, KEY);
  coll_init(&c);
  assert_int_equal(parse_all(true, 1u << 20, true, buf, n, &c, &code), WS_EPROTO);
  assert_int_equal(code, 1009);
  assert_int_equal(c.headers, 0);
  coll_free(&c);
}

static void test_close_frames(void **state) {
  (void)state;
  static const uint16_t valid[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                   1011, 1012, 1013, 1014, 3000, 4000, 4999};
  for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
    uint8_t pl[125], buf[140];
    size_t pn = ws_close_payload(pl, valid[i], "r\xC3\xA9sum\xC3\xA9");
    size_t n = put_frame(buf, true, WS_CLOSE, pl, pn, KEY);
    coll c;
    coll_init(&c);
    uint16_t code;
    assert_int_equal(parse_all(true, 0, false, buf, n, &c, &code), 0);
    assert_int_equal(c.controls, 1);
    assert_int_equal(c.ctrl_op, WS_CLOSE);
    assert_int_equal(c.ctrl_len, 2 + 8);
    assert_int_equal((c.ctrl[0] << 8) | c.ctrl[1], valid[i]);
    assert_memory_equal(c.ctrl + 2, "r\xC3\xA9sum\xC3\xA9", 8);
    coll_free(&c);
  }
  /* An empty close is fine too. */
  uint8_t buf[8] = {0x88, 0x00};
  coll c;
  coll_init(&c);
  uint16_t code;
  assert_int_equal(parse_all(false, 0, true, buf, 2, &c, &code), 0);
  assert_int_equal(c.controls, 1);
  assert_int_equal(c.ctrl_len, 0);
  coll_free(&c);
}

static void test_close_payload_encoding(void **state) {
  (void)state;
  uint8_t out[125];
  assert_int_equal(ws_close_payload(out, 0, "ignored"), 0);
  assert_int_equal(ws_close_payload(out, 1001, NULL), 2);
  assert_memory_equal(out, "\x03\xE9", 2);
  assert_int_equal(ws_close_payload(out, 4000, "why"), 5);
  assert_memory_equal(out,
                      "\x0F\xA0"
                      "why",
                      5);
  /* 122 ASCII bytes, then a 3-byte character straddling the 123 limit: cut
   * before it.  Followed by a 2-byte one that would have fitted at 122. */
  char reason[200];
  memset(reason, 'a', 122);
  strcpy(reason + 122, "\xE2\x82\xAC tail");
  assert_int_equal(ws_close_payload(out, 1000, reason), 2 + 122);
  memset(reason, 'a', 121);
  strcpy(reason + 121, "\xC3\xA9\xC3\xA9");
  assert_int_equal(ws_close_payload(out, 1000, reason), 2 + 123);
  assert_memory_equal(out + 2 + 121, "\xC3\xA9", 2);
  memset(reason, 'a', 150);
  reason[150] = 0;
  assert_int_equal(ws_close_payload(out, 1000, reason), 125);
  ws_utf8 u;
  ws_utf8_init(&u);
  assert_true(ws_utf8_feed(&u, out + 2, 123));
  assert_true(ws_utf8_complete(&u));
}

/* ------------------------------------------------------------------------
 * UTF-8 validator.
 * ---------------------------------------------------------------------- */
typedef struct u8vec {
  const char *s;
  size_t n;
  bool valid;
} u8vec;

static const u8vec U8[] = {
    {W(""), true},
    {W("plain ASCII text that is long enough for the word path"), true},
    {W("\x00\x7F"), true},
    {W("\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5"), true}, /* κόσμε */
    {W("\xC2\x80"), true},                                     /* U+0080 */
    {W("\xDF\xBF"), true},                                     /* U+07FF */
    {W("\xE0\xA0\x80"), true},                                 /* U+0800 */
    {W("\xED\x9F\xBF"), true},                                 /* U+D7FF */
    {W("\xEE\x80\x80"), true},                                 /* U+E000 */
    {W("\xEF\xBF\xBF"), true},                                 /* U+FFFF */
    {W("\xF0\x90\x80\x80"), true},                             /* U+10000 */
    {W("\xF0\x9F\x98\x80"), true},                             /* U+1F600 */
    {W("\xF4\x8F\xBF\xBF"), true},                             /* U+10FFFF */
    {W("\xC0\x80"), false},                                    /* overlong NUL */
    {W("\xC1\xBF"), false},                                    /* overlong */
    {W("\xE0\x80\x80"), false},                                /* overlong */
    {W("\xE0\x9F\xBF"), false},                                /* overlong U+07FF */
    {W("\xF0\x80\x80\x80"), false},                            /* overlong */
    {W("\xF0\x8F\xBF\xBF"), false},                            /* overlong U+FFFF */
    {W("\xED\xA0\x80"), false},                                /* U+D800 */
    {W("\xED\xBF\xBF"), false},                                /* U+DFFF */
    {W("\xED\xA0\x80\xED\xB0\x80"), false},                    /* surrogate pair */
    {W("\xF4\x90\x80\x80"), false},                            /* U+110000 */
    {W("\xF5\x80\x80\x80"), false},
    {W("\xF8\x88\x80\x80\x80"), false},
    {W("\xFE"), false},
    {W("\xFF"), false},
    {W("\x80"), false},
    {W("a\xBF"), false},
    {W("\xC2"), false},         /* truncated */
    {W("\xE2\x82"), false},     /* truncated */
    {W("\xF0\x9F\x98"), false}, /* truncated */
    {W("\xE2\x82"
       "A"),
     false},                    /* interrupted */
    {W("\xC2\xC2\x80"), false}, /* lead where continuation due */
    {W("\xF0\x9F\x98\x80\x80"), false},
};

static bool utf8_split(const uint8_t *s, size_t n, size_t cut) {
  ws_utf8 u;
  ws_utf8_init(&u);
  bool ok = ws_utf8_feed(&u, s, cut);
  ok = ws_utf8_feed(&u, s + cut, n - cut) && ok;
  return ok && ws_utf8_complete(&u);
}

static void test_utf8_vectors(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(U8) / sizeof(U8[0]); i++) {
    const uint8_t *s = (const uint8_t *)U8[i].s;
    size_t n = U8[i].n;
    for (size_t cut = 0; cut <= n; cut++) {
      if (utf8_split(s, n, cut) != U8[i].valid)
        fail_msg("vector %zu split at %zu: want %s", i, cut, U8[i].valid ? "valid" : "invalid");
    }
    ws_utf8 u;
    ws_utf8_init(&u);
    bool ok = true;
    for (size_t k = 0; k < n; k++)
      ok = ws_utf8_feed(&u, s + k, 1) && ok;
    assert_int_equal(ok && ws_utf8_complete(&u), U8[i].valid);
  }
  /* The brief's explicit splits of a 4-byte sequence. */
  const uint8_t *smile = (const uint8_t *)"\xF0\x9F\x98\x80";
  for (size_t cut = 1; cut <= 3; cut++) {
    ws_utf8 u;
    ws_utf8_init(&u);
    assert_true(ws_utf8_feed(&u, smile, cut));
    assert_false(ws_utf8_complete(&u));
    assert_true(ws_utf8_feed(&u, smile + cut, 4 - cut));
    assert_true(ws_utf8_complete(&u));
  }
  /* Rejection is sticky, also for later valid input and empty feeds. */
  ws_utf8 u;
  ws_utf8_init(&u);
  assert_false(ws_utf8_feed(&u, (const uint8_t *)"\xFF", 1));
  assert_false(ws_utf8_feed(&u, (const uint8_t *)"abc", 3));
  assert_false(ws_utf8_feed(&u, NULL, 0));
  assert_false(ws_utf8_complete(&u));
}

/* The ASCII word path must notice a bad or multi-byte character wherever it
 * falls relative to the 8- and 16-byte steps. */
static void test_utf8_ascii_runs(void **state) {
  (void)state;
  uint8_t buf[100];
  for (size_t pos = 0; pos < 90; pos++) {
    memset(buf, 'x', sizeof(buf));
    buf[pos] = 0x80;
    assert_false(utf8_split(buf, sizeof(buf), 0));
    memcpy(buf + pos, "\xE2\x82\xAC", 3);
    assert_true(utf8_split(buf, sizeof(buf), 0));
    assert_true(utf8_split(buf, sizeof(buf), pos + 1));
    buf[pos + 2] = 'x';
    assert_false(utf8_split(buf, sizeof(buf), pos + 2));
  }
  /* Misaligned starts. */
  for (size_t off = 0; off < 16; off++) {
    memset(buf, 'y', sizeof(buf));
    buf[99] = 0xC3;
    assert_false(utf8_split(buf + off, sizeof(buf) - off, 0));
  }
}

/* ------------------------------------------------------------------------
 * Masking.
 * ---------------------------------------------------------------------- */
static void test_mask_matches_bytewise(void **state) {
  (void)state;
  enum { MAXLEN = 1100 };
  static uint8_t base[MAXLEN + 32], fast[MAXLEN + 32], ref[MAXLEN + 32];
  fill_random(base, sizeof(base));
  uint8_t key[4];
  fill_random(key, 4);
  for (size_t align = 0; align < 16; align++) {
    for (size_t len = 0; len <= MAXLEN; len = len < 80 ? len + 1 : len + 97) {
      for (size_t phase = 0; phase < 8; phase++) {
        memcpy(fast, base, sizeof(base));
        memcpy(ref, base, sizeof(base));
        for (size_t i = 0; i < len; i++)
          ref[align + i] ^= key[(phase + i) % 4];
        ws_mask(fast + align, len, key, phase);
        assert_memory_equal(fast, ref, sizeof(base));
      }
    }
  }
  /* Masking in pieces with a running phase equals masking at once. */
  memcpy(fast, base, MAXLEN);
  memcpy(ref, base, MAXLEN);
  ws_mask(ref, MAXLEN, key, 0);
  size_t off = 0;
  while (off < MAXLEN) {
    size_t n = 1 + rng() % 37;
    if (n > MAXLEN - off) n = MAXLEN - off;
    ws_mask(fast + off, n, key, off);
    off += n;
  }
  assert_memory_equal(fast, ref, MAXLEN);
  ws_mask(NULL, 0, key, 3);
}

/* ------------------------------------------------------------------------
 * Handshake.
 * ---------------------------------------------------------------------- */
static void test_accept_key(void **state) {
  (void)state;
  char out[WS_ACCEPT_LEN + 1];
  assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out), 0);
  assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  static const char *bad[] = {
      "",
      "dGhlIHNhbXBsZSBub25jZQ=",   /* 23 */
      "dGhlIHNhbXBsZSBub25jZQ===", /* 25 */
      "dGhlIHNhbXBsZSBub25jZQ",    /* no padding */
      "dGhlIHNhbXBsZSBub25jZQA",   /* 17 bytes' worth, unpadded */
      "dGhlIHNhbXBsZSBub25jZ===",  /* 15 bytes */
      "dGhlIHNhbXBsZSBub2*jZQ==",  /* bad character */
      "dGhlIHNhbXBsZSBub2-jZQ==",  /* base64url is not base64 */
      "dGhlIHNhbXBsZSBu b25jZQ==", /* space */
      "========================",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(ws_accept_key(bad[i], out), -EINVAL);
  assert_int_equal(ws_accept_key(NULL, out), -EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_length_classes),
      cmocka_unit_test(test_frame_header_encoding),
      cmocka_unit_test(test_bytewise_equals_bulk),
      cmocka_unit_test(test_pause_resume_consumed),
      cmocka_unit_test(test_callback_abort_value),
      cmocka_unit_test(test_protocol_errors),
      cmocka_unit_test(test_errors_are_sticky),
      cmocka_unit_test(test_invalid_text_not_delivered),
      cmocka_unit_test(test_unfinished_text_not_delivered),
      cmocka_unit_test(test_utf8_policy),
      cmocka_unit_test(test_max_message),
      cmocka_unit_test(test_close_frames),
      cmocka_unit_test(test_close_payload_encoding),
      cmocka_unit_test(test_utf8_vectors),
      cmocka_unit_test(test_utf8_ascii_runs),
      cmocka_unit_test(test_mask_matches_bytewise),
      cmocka_unit_test(test_accept_key),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
