/*
 * codec.c — the WebSocket codec (see websocket.h): a streaming frame parser, masking,
 * UTF-8 validation, encoders and the handshake accept key.
 *
 * The parser is a three-state machine (header, data payload, control
 * payload).  Header bytes are gathered in the parser (at most 14) so a
 * header split across reads costs nothing special; data payload is never
 * copied, only unmasked in place and handed on; control payload is copied
 * into a 125-byte buffer because it must be delivered whole.  Each step
 * advances the state *before* calling back, so a callback that pauses
 * leaves the parser ready to resume after the event it just saw.
 */
#include "websocket/websocket.h"

#include <string.h>

#include <openssl/evp.h>

/* ------------------------------------------------------------------------
 * UTF-8: a DFA over byte classes.  States 1-7 say how many continuation
 * bytes are still due and, for the four lead bytes with a narrower second
 * byte range (E0, ED, F0, F4), which range is allowed; that is where
 * overlongs, surrogates and values above U+10FFFF are refused.
 *
 * The DFA is "shift-based": each byte class has one 64-bit row holding the
 * next state for every current state in 6-bit fields, and a state is kept
 * as its field's bit offset, so a step is next = row >> state & 63.  The
 * row lookup does not depend on the state, which leaves a shift and an AND
 * on the loop-carried path instead of a dependent table load.
 * ---------------------------------------------------------------------- */
#define U_ACCEPT 0u
#define U_REJECT (8u * 6) /* state 8, sticky */

/* Class of each byte: 0 ASCII, 1 80-8F, 2 90-9F, 3 A0-BF, 4 never valid
 * (C0, C1, F5-FF), 5 C2-DF, 6 E0, 7 E1-EC and EE-EF, 8 ED, 9 F0,
 * 10 F1-F3, 11 F4. */
/* clang-format off */
static const uint8_t utf8_class[256] = {
    [0x80] =
    1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1, /* 80 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, /* 90 */
    3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3, /* A0 */
    3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3, /* B0 */
    4,  4,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5, /* C0 */
    5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5, /* D0 */
    6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  7, /* E0 */
    9, 10, 10, 10, 11,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* F0 */
};
/* clang-format on */

/* A row: the next state (0-8) from each current state 0-7; state 8
 * (rejected) always stays 8. */
#define U_ROW(n0, n1, n2, n3, n4, n5, n6, n7)                                                      \
  ((uint64_t)(n0)*6 << 0 | (uint64_t)(n1)*6 << 6 | (uint64_t)(n2)*6 << 12 |                        \
   (uint64_t)(n3)*6 << 18 | (uint64_t)(n4)*6 << 24 | (uint64_t)(n5)*6 << 30 |                      \
   (uint64_t)(n6)*6 << 36 | (uint64_t)(n7)*6 << 42 | (uint64_t)8 * 6 << 48)
#define R 8
static const uint64_t utf8_row[12] = {
    /*          from: 0  1  2  3  4  5  6  7    (4: after E0, 5: ED, 6: F0, 7: F4) */
    U_ROW(0, R, R, R, R, R, R, R), /* ASCII: only at a boundary */
    U_ROW(R, 0, 1, 2, R, 1, R, 2), /* 80-8F */
    U_ROW(R, 0, 1, 2, R, 1, 2, R), /* 90-9F: not after F4 (> U+10FFFF) */
    U_ROW(R, 0, 1, 2, 1, R, 2, R), /* A0-BF: not after ED (surrogates) */
    U_ROW(R, R, R, R, R, R, R, R), /* never valid */
    U_ROW(1, R, R, R, R, R, R, R), /* C2-DF: one more */
    U_ROW(4, R, R, R, R, R, R, R), /* E0: A0-BF next (no overlong) */
    U_ROW(2, R, R, R, R, R, R, R), /* E1-EC, EE-EF: two more */
    U_ROW(5, R, R, R, R, R, R, R), /* ED: 80-9F next */
    U_ROW(6, R, R, R, R, R, R, R), /* F0: 90-BF next (no overlong) */
    U_ROW(3, R, R, R, R, R, R, R), /* F1-F3: three more */
    U_ROW(7, R, R, R, R, R, R, R), /* F4: 80-8F next */
};
#undef R

#define ASCII_MASK UINT64_C(0x8080808080808080)

static inline uint32_t utf8_step(uint32_t st, uint8_t b) {
  return (uint32_t)(utf8_row[utf8_class[b]] >> st) & 63;
}

void ws_utf8_init(ws_utf8 *u) { u->state = U_ACCEPT; }

bool ws_utf8_complete(const ws_utf8 *u) { return u->state == U_ACCEPT; }

/* Index of the first 16-byte block at or after i holding a non-ASCII
 * byte, or of the last partial block. */
static size_t skip_ascii(const uint8_t *s, size_t i, size_t n) {
  for (; n - i >= 16; i += 16) {
    uint64_t a, b;
    memcpy(&a, s + i, 8);
    memcpy(&b, s + i + 8, 8);
    if ((a | b) & ASCII_MASK) break;
  }
  return i;
}

bool ws_utf8_feed(ws_utf8 *u, const uint8_t *s, size_t n) {
  uint32_t st = u->state;
  size_t i = 0;
  /* 16-byte blocks: skipped whole while ASCII at a character boundary,
   * else stepped without a per-byte exit (rejection is sticky in the DFA,
   * so checking once a block suffices). */
  while (n - i >= 16 && st != U_REJECT) {
    if (st == U_ACCEPT) {
      i = skip_ascii(s, i, n);
      if (n - i < 16) break;
    }
    for (size_t k = 0; k < 16; k++)
      st = utf8_step(st, s[i + k]);
    i += 16;
  }
  if (st != U_REJECT)
    for (; i < n; i++)
      st = utf8_step(st, s[i]);
  u->state = st;
  return st != U_REJECT;
}

/* ------------------------------------------------------------------------
 * Masking.  Because 8 is a multiple of 4, one 64-bit word of the key
 * rotated to the current phase serves every aligned 8-byte step; memcpy
 * keeps loads and stores free of alignment and aliasing UB while the
 * compiler still emits plain (or vector) moves.
 * ---------------------------------------------------------------------- */
void ws_mask(uint8_t *data, size_t len, const uint8_t key[4], size_t phase) {
  size_t i = 0;
  /* Byte steps up to an 8-byte boundary: aligned stores are cheaper. */
  while (i < len && ((uintptr_t)(data + i) & 7) != 0) {
    data[i] ^= key[(phase + i) & 3];
    i++;
  }
  if (len - i >= 8) {
    uint8_t kb[8];
    for (size_t k = 0; k < 8; k++)
      kb[k] = key[(phase + i + k) & 3];
    uint64_t kw;
    memcpy(&kw, kb, 8);
    for (; len - i >= 32; i += 32) {
      uint64_t w[4];
      memcpy(w, data + i, 32);
      w[0] ^= kw;
      w[1] ^= kw;
      w[2] ^= kw;
      w[3] ^= kw;
      memcpy(data + i, w, 32);
    }
    for (; len - i >= 8; i += 8) {
      uint64_t w;
      memcpy(&w, data + i, 8);
      w ^= kw;
      memcpy(data + i, &w, 8);
    }
  }
  for (; i < len; i++)
    data[i] ^= key[(phase + i) & 3];
}

/* ------------------------------------------------------------------------
 * Parser.
 * ---------------------------------------------------------------------- */
enum { ST_HEADER, ST_DATA, ST_CONTROL, ST_ERROR };

static const ws_parser_cbs no_cbs;

static int fail(ws_parser *p, uint16_t code, const char *reason) {
  p->state = ST_ERROR;
  p->err_code = code;
  p->err_reason = reason;
  return WS_EPROTO;
}

static uint64_t load_be(const uint8_t *b, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++)
    v = (v << 8) | b[i];
  return v;
}

void ws_parser_init(ws_parser *p, const ws_parser_config *cfg) {
  memset(p, 0, sizeof(*p));
  p->cfg = *cfg;
  p->state = ST_HEADER;
  p->hdr_need = 2;
}

const char *ws_parser_error(const ws_parser *p, uint16_t *code) {
  if (p->state != ST_ERROR) return NULL;
  if (code) *code = p->err_code;
  return p->err_reason;
}

bool ws_parser_in_frame(const ws_parser *p) { return p->state == ST_DATA; }

bool ws_close_code_valid(uint16_t c) {
  return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
}

static bool opcode_known(uint8_t op) { return op <= WS_BINARY || (op >= 8 && op <= 10); }

/* Checks what the first two header bytes alone decide (RFC 6455 §5.2,
 * §5.4, §5.5), failing as early as possible, and sizes the full header. */
static int check_base(ws_parser *p) {
  uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
  uint8_t op = b0 & 0x0F, len7 = b1 & 0x7F;
  bool fin = (b0 & 0x80) != 0, masked = (b1 & 0x80) != 0;
  if (b0 & 0x70) return fail(p, 1002, "reserved bit set");
  if (!opcode_known(op)) return fail(p, 1002, "unknown opcode");
  if (masked != p->cfg.server)
    return fail(p, 1002, p->cfg.server ? "unmasked client frame" : "masked server frame");
  if (op >= 8) {
    if (!fin) return fail(p, 1002, "fragmented control frame");
    if (len7 > WS_MAX_CONTROL) return fail(p, 1002, "control frame too long");
  } else if (op == WS_CONT && !p->in_message) {
    return fail(p, 1002, "continuation without a message");
  } else if (op != WS_CONT && p->in_message) {
    return fail(p, 1002, "new message inside a fragmented one");
  }
  p->hdr_need = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0));
  return 0;
}

/* A data frame's header is complete: enforce max_message, open or extend
 * the message, and announce the frame. */
static int start_data(ws_parser *p, uint8_t op, bool fin, uint64_t len, const ws_parser_cbs *cbs,
                      void *ud) {
  uint64_t so_far = op == WS_CONT ? p->msg_len : 0;
  if (p->cfg.max_message && len > p->cfg.max_message - so_far)
    return fail(p, 1009, "message too big");
  if (op != WS_CONT) {
    p->frame.msg_opcode = op;
    ws_utf8_init(&p->utf8);
  }
  p->msg_len = so_far + len;
  p->in_message = true;
  p->frame.len = len;
  p->frame.opcode = op;
  p->frame.rsv = 0;
  p->frame.fin = fin;
  p->state = ST_DATA;
  return cbs->on_frame_header ? cbs->on_frame_header(ud, &p->frame) : 0;
}

static int finish_header(ws_parser *p, const ws_parser_cbs *cbs, void *ud) {
  const uint8_t *h = p->hdr;
  uint8_t op = h[0] & 0x0F;
  bool fin = (h[0] & 0x80) != 0;
  uint64_t len = h[1] & 0x7F;
  size_t at = 2;
  if (len == 126) {
    len = load_be(h + 2, 2);
    at = 4;
  } else if (len == 127) {
    len = load_be(h + 2, 8);
    at = 10;
    if (len >> 63) return fail(p, 1002, "64-bit length with top bit set");
  }
  if (p->cfg.server) memcpy(p->key, h + at, 4);
  p->hdr_len = 0;
  p->hdr_need = 2;
  p->phase = 0;
  p->remaining = len;
  if (op >= 8) {
    p->ctrl_op = op;
    p->ctrl_len = 0;
    p->state = ST_CONTROL;
    return 0;
  }
  return start_data(p, op, fin, len, cbs, ud);
}

static int step_header(ws_parser *p, const uint8_t *in, size_t avail, size_t *used,
                       const ws_parser_cbs *cbs, void *ud) {
  size_t n = p->hdr_need - p->hdr_len;
  if (n > avail) n = avail;
  memcpy(p->hdr + p->hdr_len, in, n);
  p->hdr_len = (uint8_t)(p->hdr_len + n);
  *used = n;
  if (p->hdr_len < p->hdr_need) return 0;
  if (p->hdr_len == 2) {
    int rc = check_base(p);
    if (rc || p->hdr_need > 2) return rc;
  }
  return finish_header(p, cbs, ud);
}

#define UNFINISHED_TEXT "text message ends inside a UTF-8 sequence"

/* Closes the current data frame (and the message, on a final frame).  A
 * non-empty final frame was checked with its last chunk (step_data); an
 * empty one is checked here, before its end is reported. */
static int end_data(ws_parser *p, const ws_parser_cbs *cbs, void *ud) {
  p->state = ST_HEADER;
  if (p->frame.fin) {
    p->in_message = false;
    if (p->cfg.validate_utf8 && p->frame.msg_opcode == WS_TEXT && !ws_utf8_complete(&p->utf8))
      return fail(p, 1007, UNFINISHED_TEXT);
  }
  return cbs->on_frame_end ? cbs->on_frame_end(ud) : 0;
}

static int step_data(ws_parser *p, uint8_t *in, size_t avail, size_t *used,
                     const ws_parser_cbs *cbs, void *ud) {
  if (p->remaining == 0) return end_data(p, cbs, ud);
  size_t n = p->remaining < avail ? (size_t)p->remaining : avail;
  if (p->cfg.server) {
    ws_mask(in, n, p->key, p->phase);
    p->phase = (uint8_t)((p->phase + n) & 3);
  }
  p->remaining -= n;
  *used = n;
  /* Refuse invalid text before it is forwarded: the chunk holding the bad
   * byte is not delivered.  The same goes for the chunk that ends the
   * message inside a character: a cut-through forwarder sends it on at
   * once with FIN, so waiting for end_data would let a complete invalid
   * message through before the 1007. */
  if (p->cfg.validate_utf8 && p->frame.msg_opcode == WS_TEXT) {
    if (!ws_utf8_feed(&p->utf8, in, n)) return fail(p, 1007, "invalid UTF-8 in text message");
    if (p->remaining == 0 && p->frame.fin && !ws_utf8_complete(&p->utf8))
      return fail(p, 1007, UNFINISHED_TEXT);
  }
  return cbs->on_frame_payload ? cbs->on_frame_payload(ud, in, n) : 0;
}

static int check_close(ws_parser *p) {
  if (p->ctrl_len == 0) return 0;
  if (p->ctrl_len == 1) return fail(p, 1002, "close payload of one byte");
  if (!ws_close_code_valid((uint16_t)load_be(p->ctrl, 2)))
    return fail(p, 1002, "invalid close code");
  ws_utf8 u;
  ws_utf8_init(&u);
  if (!ws_utf8_feed(&u, p->ctrl + 2, p->ctrl_len - 2u) || !ws_utf8_complete(&u))
    return fail(p, 1007, "invalid UTF-8 in close reason");
  return 0;
}

static int step_control(ws_parser *p, const uint8_t *in, size_t avail, size_t *used,
                        const ws_parser_cbs *cbs, void *ud) {
  if (p->remaining > 0) {
    size_t n = p->remaining < avail ? (size_t)p->remaining : avail;
    memcpy(p->ctrl + p->ctrl_len, in, n);
    p->ctrl_len = (uint8_t)(p->ctrl_len + n);
    p->remaining -= n;
    *used = n;
    if (p->remaining > 0) return 0;
  }
  if (p->cfg.server) ws_mask(p->ctrl, p->ctrl_len, p->key, 0);
  if (p->ctrl_op == WS_CLOSE) {
    int rc = check_close(p);
    if (rc) return rc;
  }
  p->state = ST_HEADER;
  return cbs->on_control ? cbs->on_control(ud, p->ctrl_op, p->ctrl, p->ctrl_len) : 0;
}

/* Whether a step can run: with input, always; without, only to finish a
 * frame whose payload is complete (an empty frame, or after a pause). */
static bool can_step(const ws_parser *p, size_t avail) {
  if (avail > 0) return p->state != ST_ERROR;
  return (p->state == ST_DATA || p->state == ST_CONTROL) && p->remaining == 0;
}

int ws_parse(ws_parser *p, uint8_t *data, size_t len, const ws_parser_cbs *cbs, void *ud,
             size_t *consumed) {
  size_t off = 0;
  int rc = p->state == ST_ERROR ? WS_EPROTO : 0;
  if (!cbs) cbs = &no_cbs;
  while (rc == 0 && can_step(p, len - off)) {
    size_t used = 0;
    /* Never form data + off from a NULL data pointer. */
    uint8_t *in = off < len ? data + off : NULL;
    switch (p->state) {
    case ST_HEADER: rc = step_header(p, in, len - off, &used, cbs, ud); break;
    case ST_DATA: rc = step_data(p, in, len - off, &used, cbs, ud); break;
    default: rc = step_control(p, in, len - off, &used, cbs, ud); break;
    }
    off += used;
  }
  if (consumed) *consumed = off;
  return rc;
}

/* ------------------------------------------------------------------------
 * Encoding.
 * ---------------------------------------------------------------------- */
size_t ws_frame_header(uint8_t out[WS_MAX_HEADER], bool fin, uint8_t opcode, uint64_t len,
                       const uint8_t *mask_or_null) {
  if (opcode > 15 || (len >> 63)) return 0;
  size_t n = 2;
  out[0] = (uint8_t)((fin ? 0x80 : 0) | opcode);
  out[1] = mask_or_null ? 0x80 : 0;
  if (len < 126) {
    out[1] |= (uint8_t)len;
  } else if (len <= 0xFFFF) {
    out[1] |= 126;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    n = 4;
  } else {
    out[1] |= 127;
    for (int i = 0; i < 8; i++)
      out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    n = 10;
  }
  if (mask_or_null) {
    memcpy(out + n, mask_or_null, 4);
    n += 4;
  }
  return n;
}

size_t ws_close_payload(uint8_t out[WS_MAX_CONTROL], uint16_t code, const char *reason) {
  if (code == 0) return 0;
  out[0] = (uint8_t)(code >> 8);
  out[1] = (uint8_t)code;
  size_t n = reason ? strlen(reason) : 0;
  const size_t room = WS_MAX_CONTROL - 2;
  if (n > room) {
    /* Cut before the character that straddles the limit: back up over
     * continuation bytes to the lead byte that starts it. */
    n = room;
    while (n > 0 && ((uint8_t)reason[n] & 0xC0) == 0x80)
      n--;
  }
  if (n) memcpy(out + 2, reason, n);
  return 2 + n;
}

/* ------------------------------------------------------------------------
 * Handshake (RFC 6455 §4.2.2).
 * ---------------------------------------------------------------------- */
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static bool is_b64_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

/* 16 bytes in base64 are 22 symbols and "==".  The 4 spare bits of the
 * last symbol are not required to be zero, as common decoders ignore them
 * (Python's websockets, for one), and the key is only hashed, not used. */
static bool client_key_valid(const char *k) {
  if (strnlen(k, 25) != 24 || k[22] != '=' || k[23] != '=') return false;
  for (int i = 0; i < 22; i++)
    if (!is_b64_char(k[i])) return false;
  return true;
}

int ws_accept_key(const char *client_key, char out[WS_ACCEPT_LEN + 1]) {
  if (!client_key || !client_key_valid(client_key)) return -EINVAL;
  char buf[24 + sizeof(ws_guid)];
  memcpy(buf, client_key, 24);
  memcpy(buf + 24, ws_guid, sizeof(ws_guid) - 1);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(buf, 24 + sizeof(ws_guid) - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
    return -EIO;
  /* EVP_EncodeBlock writes 28 characters and a NUL for 20 bytes. */
  if (EVP_EncodeBlock((unsigned char *)out, md, 20) != WS_ACCEPT_LEN) return -EIO;
  return 0;
}
