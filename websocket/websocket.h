/*
 * websocket.h — the WebSocket (RFC 6455) codec as a library, sans-I/O, for
 * both roles: the relay's data plane parses as a server (frames must be
 * masked) and the client library as a client (frames must not be).
 *
 * The data plane forwards frame by frame and never assembles a message, so
 * the parser streams: a data frame's header is delivered as soon as it is
 * parsed, then its payload in chunks as bytes arrive (unmasked in place, in
 * the caller's buffer), then its end.  Control frames (close, ping, pong;
 * at most 125 bytes) are gathered in the parser and delivered whole.  Every
 * callback may return non-zero to stop parsing; ws_parse then returns
 * that value and says how many bytes it consumed, and the caller resumes
 * later with the rest.  Protocol violations are sticky and carry the close
 * code to send (1002, 1007 or 1009) and a short reason.  No extension is
 * ever negotiated, so any RSV bit is an error.  A length not encoded in the
 * fewest bytes is accepted: RFC 6455 puts that MUST on the sender, and a
 * forwarder re-encodes headers minimally anyway.
 *
 * Besides the parser: word-at-a-time masking, an incremental UTF-8
 * validator, frame-header and close-payload encoders, and the handshake's
 * Sec-WebSocket-Accept computation.  Nothing here allocates or does I/O.
 */
#ifndef RELAY_WEBSOCKET_H
#define RELAY_WEBSOCKET_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Opcodes (RFC 6455 §5.2). */
enum {
  WS_CONT = 0x0,
  WS_TEXT = 0x1,
  WS_BINARY = 0x2,
  WS_CLOSE = 0x8,
  WS_PING = 0x9,
  WS_PONG = 0xA,
};

/* Close codes the codec itself produces or needs (RFC 6455 §7.4.1). */
enum {
  WS_CLOSE_NORMAL = 1000,
  WS_CLOSE_GOING_AWAY = 1001,
  WS_CLOSE_PROTOCOL = 1002,
  WS_CLOSE_INVALID_DATA = 1007,
  WS_CLOSE_POLICY = 1008,
  WS_CLOSE_TOO_BIG = 1009,
  WS_CLOSE_INTERNAL = 1011,
};

#define WS_MAX_CONTROL 125 /* control payload limit (§5.5) */
#define WS_MAX_HEADER  14  /* 2 + 8 extended length + 4 mask key */

/* What ws_parse returns on a protocol error (see ws_parser_error). */
#define WS_EPROTO (-EPROTO)

/* ------------------------------------------------------------------------
 * Incremental UTF-8 validation (RFC 3629): overlong forms, surrogates
 * (U+D800..U+DFFF) and code points above U+10FFFF are invalid.  Input may
 * be split anywhere; runs of ASCII are skipped a word at a time.
 * ---------------------------------------------------------------------- */
typedef struct ws_utf8 {
  uint32_t state; /* 0: at a character boundary; other values are private */
} ws_utf8;

void ws_utf8_init(ws_utf8 *u);
/* Feeds more bytes; false once the input so far cannot be valid UTF-8. */
bool ws_utf8_feed(ws_utf8 *u, const uint8_t *s, size_t n);
/* True when everything fed is valid and does not end inside a character. */
bool ws_utf8_complete(const ws_utf8 *u);

/* ------------------------------------------------------------------------
 * Masking (§5.3): XORs data[i] with key[(phase + i) % 4].  phase is the
 * offset of data[0] within the frame's payload, so a payload unmasked in
 * pieces gives the same bytes as unmasked at once.  Works 8 bytes a step.
 * ---------------------------------------------------------------------- */
void ws_mask(uint8_t *data, size_t len, const uint8_t key[4], size_t phase);

/* ------------------------------------------------------------------------
 * Parser.
 * ---------------------------------------------------------------------- */
typedef struct ws_parser_config {
  bool server;          /* true: frames must be masked (client to server);
                           false: frames must not be masked */
  uint64_t max_message; /* 0: unlimited; else the cap on the sum of a
                           message's frame lengths, checked when each header
                           arrives (before any of its payload): 1009 */
  bool validate_utf8;   /* validate text messages across chunks and frames */
} ws_parser_config;

/* A data frame's header, as passed to on_frame_header. */
typedef struct ws_frame {
  uint64_t len;       /* payload length of this frame */
  uint8_t opcode;     /* WS_TEXT, WS_BINARY or WS_CONT */
  uint8_t msg_opcode; /* the message's type, TEXT or BINARY, also for CONT */
  uint8_t rsv;        /* RSV1..3 as bits 2..0; always 0 (no extensions) */
  bool fin;           /* last frame of its message */
} ws_frame;

/* Every callback may be NULL.  A non-zero return stops ws_parse, which
 * returns it; the event it reports counts as delivered, so resuming
 * continues after it.  Return a positive value to pause (WS_EPROTO and
 * other negative values are best kept for aborting). */
typedef struct ws_parser_cbs {
  /* A data frame begins; f is valid during the call. */
  int (*on_frame_header)(void *ud, const ws_frame *f);
  /* Payload bytes of the current data frame, already unmasked (and, for
   * text with validate_utf8, validated so far; the chunk that ends a text
   * message is delivered only if the message ends on a character
   * boundary, so a forwarder never passes on a complete invalid message).
   * data points into the buffer given to ws_parse, modified in place.
   * len > 0. */
  int (*on_frame_payload)(void *ud, uint8_t *data, size_t len);
  /* The current data frame is complete (always follows its header, also
   * for an empty frame). */
  int (*on_frame_end)(void *ud);
  /* A whole control frame.  payload lives in the parser and is valid
   * during the call.  For CLOSE it is empty or a valid code plus a valid
   * UTF-8 reason (checked regardless of validate_utf8). */
  int (*on_control)(void *ud, uint8_t opcode, const uint8_t *payload, size_t len);
} ws_parser_cbs;

/* Caller-allocated; the fields are private (exposed only for its size). */
typedef struct ws_parser {
  ws_parser_config cfg;
  uint8_t state;
  uint8_t hdr_len, hdr_need; /* header bytes gathered, bytes needed */
  uint8_t hdr[WS_MAX_HEADER];
  uint8_t key[4];
  uint8_t phase; /* payload offset mod 4 for the mask */
  uint64_t remaining;
  ws_frame frame;
  bool in_message;  /* a data message is open (non-final frame seen) */
  uint64_t msg_len; /* sum of the open message's frame lengths */
  ws_utf8 utf8;     /* state of the open text message */
  uint8_t ctrl_op, ctrl_len;
  uint8_t ctrl[WS_MAX_CONTROL];
  uint16_t err_code;
  const char *err_reason;
} ws_parser;

void ws_parser_init(ws_parser *p, const ws_parser_config *cfg);

/* Parses as much of data as it can.  Returns 0 when all len bytes were
 * consumed (a partial header or control frame is kept in the parser), a
 * callback's non-zero value, or WS_EPROTO on a protocol error (sticky:
 * later calls return it at once, consuming nothing).  *consumed (may be
 * NULL) says how many bytes were used; after a pause, call again with the
 * rest — possibly zero bytes, e.g. to finish an empty frame.  data may be
 * NULL when len is 0. */
int ws_parse(ws_parser *p, uint8_t *data, size_t len, const ws_parser_cbs *cbs, void *ud,
             size_t *consumed);

/* NULL when no protocol error happened; else a short static reason, with
 * the close code to send stored in *code (when code is not NULL). */
const char *ws_parser_error(const ws_parser *p, uint16_t *code);

/* True between a data frame's header and its end: a forwarder that stops
 * here must not inject a control frame into its own output mid-frame. */
bool ws_parser_in_frame(const ws_parser *p);

/* ------------------------------------------------------------------------
 * Encoding.
 * ---------------------------------------------------------------------- */
/* Writes a frame header with the minimal length encoding and, when mask is
 * not NULL, the mask bit and key (the payload is masked by the caller with
 * ws_mask, phase 0).  Returns its length (2..14), or 0 when opcode >
 * 15 or len >= 2^63. */
size_t ws_frame_header(uint8_t out[WS_MAX_HEADER], bool fin, uint8_t opcode, uint64_t len,
                       const uint8_t *mask_or_null);

/* Writes a close payload: code (big-endian) then reason (UTF-8, NULL for
 * none) cut to 123 bytes at a character boundary.  code 0 means "no status"
 * and yields an empty payload.  Returns the payload length. */
size_t ws_close_payload(uint8_t out[WS_MAX_CONTROL], uint16_t code, const char *reason);

/* True for codes a peer may send in a close frame (1000-1003, 1007-1014,
 * 3000-4999). */
bool ws_close_code_valid(uint16_t code);

/* ------------------------------------------------------------------------
 * Handshake.
 * ---------------------------------------------------------------------- */
#define WS_ACCEPT_LEN 28

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)),
 * NUL-terminated in out.  The key must be 24 characters of base64 that
 * decode to 16 bytes.  Returns 0, -EINVAL for a malformed key, or -EIO if
 * the digest fails. */
int ws_accept_key(const char *client_key, char out[WS_ACCEPT_LEN + 1]);

#endif
