/*
 * ws.c — the WebSocket client (see client.h): the upgrade on the exchange
 * of exchange.c, then the codec of websocket/ in the client role over the
 * connection it hands over.
 *
 * States: CONNECTING (the exchange runs), OPEN, CLOSING (our close frame
 * is out, the answer awaited), DONE (on_close has run; the connection is
 * being torn down and the handle is no longer the user's).  One timer
 * serves the ping schedule and the close deadline; the handle is freed
 * once the exchange, the stream and the timer are all gone.
 */
#include "client/internal.h"
#include "websocket/websocket.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_HANDSHAKE_MS 30000
#define DEFAULT_PING_MS      20000
#define DEFAULT_CLOSE_MS     5000
#define MAX_REFUSAL_BODY     (64 * 1024)
#define SCRATCH              (64 * 1024)

enum { ST_CONNECTING, ST_OPEN, ST_CLOSING, ST_DONE };

struct rc_ws {
  uv_loop_t *loop;
  rc_ws_cbs cbs;
  void *ud;
  int state;
  rc_xchg *x;
  cm_stream *st;
  uv_timer_t timer;
  bool timer_closed;
  ws_parser parser;
  uint64_t max_message;
  char key[32];                   /* Sec-WebSocket-Key sent */
  uint64_t frame_len, frame_left; /* current inbound data frame */
  bool frame_fin;
  uint8_t msg_opcode;
  bool paused;
  uint64_t last_rx, ping_at, close_deadline;
  bool ping_out;
  uint32_t ping_interval, ping_timeout, close_timeout;
  uint8_t keys[256]; /* CSPRNG bytes for masking keys */
  size_t keys_left;
  rc_ws_end end;
};

static void on_tick(uv_timer_t *t);

/* ---- teardown ----------------------------------------------------------------- */

static void ws_release(rc_ws *ws) {
  if (ws->x || ws->st || !ws->timer_closed) return;
  OPENSSL_cleanse(ws->keys, sizeof ws->keys);
  free(ws);
}

static void on_timer_closed(uv_handle_t *h) {
  rc_ws *ws = h->data;
  ws->timer_closed = true;
  ws_release(ws);
}

/* Reports the end once, then tears the connection down: gracefully after
 * a close handshake (our answer to theirs must leave), else at once. */
static void finish(rc_ws *ws, bool graceful) {
  if (ws->state == ST_DONE) return;
  ws->state = ST_DONE;
  if (ws->cbs.on_close) ws->cbs.on_close(ws, &ws->end);
  if (ws->st) {
    if (graceful)
      cm_stream_close(ws->st);
    else
      cm_stream_abort(ws->st);
  }
  if (!uv_is_closing((uv_handle_t *)&ws->timer)) {
    uv_timer_stop(&ws->timer);
    uv_close((uv_handle_t *)&ws->timer, on_timer_closed);
  }
}

static void vfail(rc_ws *ws, bool graceful, int err, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static void vfail(rc_ws *ws, bool graceful, int err, const char *fmt, va_list ap) {
  if (ws->state == ST_DONE) return;
  ws->end.kind = RC_WS_FAILED;
  ws->end.err = err ? err : -EIO;
  if (!ws->end.code) ws->end.code = 1006;
  vsnprintf(ws->end.reason, sizeof ws->end.reason, fmt, ap);
  finish(ws, graceful);
}

/* The connection is unusable: it is reset. */
static void fail(rc_ws *ws, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(rc_ws *ws, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(ws, false, err, fmt, ap);
  va_end(ap);
}

/* We refused the peer with a close frame, which must still leave. */
static void fail_closing(rc_ws *ws, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_closing(rc_ws *ws, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(ws, true, err, fmt, ap);
  va_end(ap);
}

/* ---- sending ------------------------------------------------------------------ */

static void next_mask(rc_ws *ws, uint8_t key[4]) {
  if (ws->keys_left < 4) {
    if (cm_random_bytes(ws->keys, sizeof ws->keys) != 0) abort(); /* no CSPRNG: nothing is safe */
    ws->keys_left = sizeof ws->keys;
  }
  memcpy(key, ws->keys + sizeof ws->keys - ws->keys_left, 4);
  ws->keys_left -= 4;
}

/* Writes header and (already masked) payload as one write. */
static int write_frame(rc_ws *ws, const uint8_t *hdr, size_t hl, const uint8_t *p, size_t n) {
  uv_buf_t b[2] = {uv_buf_init((char *)hdr, (unsigned)hl), uv_buf_init((char *)p, (unsigned)n)};
  int rc = cm_stream_writev(ws->st, b, n ? 2 : 1);
  if (rc != 0) return rc;
  return cm_stream_above_high(ws->st) ? 1 : 0;
}

/* Masks data where it lies and sends it as one frame.  With headroom, data
 * has RC_WS_HEADROOM writable bytes in front: the header goes there and
 * the frame leaves as one piece. */
static int send_masked(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin,
                       bool headroom) {
  uint8_t key[4], hdr[WS_MAX_HEADER];
  next_mask(ws, key);
  size_t hl = ws_frame_header(hdr, fin, opcode, len, key);
  if (hl == 0) return -EINVAL;
  ws_mask(data, len, key, 0);
  if (!headroom) return write_frame(ws, hdr, hl, data, len);
  memcpy(data - hl, hdr, hl);
  return write_frame(ws, data - hl, hl + len, NULL, 0);
}

static bool data_opcode(uint8_t op) { return op == WS_BINARY || op == WS_TEXT || op == WS_CONT; }

_Static_assert(RC_WS_HEADROOM >= WS_MAX_HEADER, "room for any frame header");

int rc_ws_send_headroom(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin) {
  if (ws->state != ST_OPEN || !ws->st || cm_stream_closing(ws->st)) return CM_ECLOSED;
  if (!data_opcode(opcode)) return -EINVAL;
  return send_masked(ws, opcode, data, len, fin, true);
}

int rc_ws_send_inplace(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin) {
  if (ws->state != ST_OPEN || !ws->st || cm_stream_closing(ws->st)) return CM_ECLOSED;
  if (!data_opcode(opcode)) return -EINVAL;
  return send_masked(ws, opcode, data, len, fin, false);
}

int rc_ws_send(rc_ws *ws, uint8_t opcode, const void *data, size_t len, bool fin) {
  static _Thread_local uint8_t scratch[SCRATCH];
  if (ws->state != ST_OPEN || !ws->st || cm_stream_closing(ws->st)) return CM_ECLOSED;
  if (!data_opcode(opcode)) return -EINVAL;
  uint8_t *buf = len <= sizeof scratch ? scratch : malloc(len);
  if (!buf) return -ENOMEM;
  if (len) memcpy(buf, data, len);
  int rc = send_masked(ws, opcode, buf, len, fin, false);
  if (buf != scratch) free(buf);
  return rc;
}

static void send_control(rc_ws *ws, uint8_t opcode, const uint8_t *payload, size_t len) {
  uint8_t copy[WS_MAX_CONTROL];
  if (!ws->st || cm_stream_closing(ws->st)) return;
  len = CM_MIN(len, sizeof copy);
  if (len) memcpy(copy, payload, len);
  send_masked(ws, opcode, copy, len, true, false);
}

static void send_close(rc_ws *ws, uint16_t code, const char *reason) {
  uint8_t payload[WS_MAX_CONTROL];
  size_t n = ws_close_payload(payload, code, reason);
  send_control(ws, WS_CLOSE, payload, n);
}

void rc_ws_close(rc_ws *ws, uint16_t code, const char *reason) {
  if (ws->state != ST_OPEN) return;
  if (!ws_close_code_valid(code)) code = WS_CLOSE_NORMAL;
  ws->state = ST_CLOSING;
  send_close(ws, code, reason);
  ws->close_deadline = cm_now_mono_ms() + ws->close_timeout;
  /* The answer must be read even if the user paused reading. */
  if (ws->paused) {
    ws->paused = false;
    cm_stream_resume(ws->st);
  }
}

void rc_ws_abort(rc_ws *ws) {
  if (ws->state == ST_DONE) return;
  ws->cbs.on_close = NULL;
  if (ws->x) {
    rc_xchg_cancel(ws->x);
    ws->x = NULL;
  }
  ws->end.kind = RC_WS_FAILED;
  finish(ws, false);
  ws_release(ws);
}

/* ---- receiving ---------------------------------------------------------------- */

static int on_frame_header(void *ud, const ws_frame *f) {
  rc_ws *ws = ud;
  ws->frame_len = ws->frame_left = f->len;
  ws->frame_fin = f->fin;
  ws->msg_opcode = f->msg_opcode;
  return 0;
}

static int on_frame_payload(void *ud, uint8_t *data, size_t len) {
  rc_ws *ws = ud;
  ws->frame_left -= len;
  if (ws->state != ST_DONE && ws->cbs.on_message)
    ws->cbs.on_message(ws, ws->msg_opcode, data, len, ws->frame_fin && ws->frame_left == 0);
  return ws->state == ST_DONE ? 1 : 0;
}

static int on_frame_end(void *ud) {
  rc_ws *ws = ud;
  /* A non-empty frame's last piece carried fin; an empty final frame
   * still ends its message. */
  if (ws->state != ST_DONE && ws->frame_fin && ws->frame_len == 0 && ws->cbs.on_message)
    ws->cbs.on_message(ws, ws->msg_opcode, NULL, 0, true);
  return ws->state == ST_DONE ? 1 : 0;
}

/* The peer's close (or its answer to ours): answer it if it began there,
 * and report how it ended. */
static void got_close(rc_ws *ws, const uint8_t *payload, size_t len) {
  uint16_t code = len >= 2 ? (uint16_t)(payload[0] << 8 | payload[1]) : 1005;
  ws->end.kind = RC_WS_CLOSED;
  ws->end.code = code;
  ws->end.by_peer = ws->state == ST_OPEN;
  size_t rl = len > 2 ? len - 2 : 0;
  memcpy(ws->end.reason, payload + 2, CM_MIN(rl, sizeof ws->end.reason - 1));
  ws->end.reason[CM_MIN(rl, sizeof ws->end.reason - 1)] = '\0';
  if (ws->end.by_peer) send_control(ws, WS_CLOSE, payload, len >= 2 ? 2 : 0);
  finish(ws, true);
}

static int on_control(void *ud, uint8_t opcode, const uint8_t *payload, size_t len) {
  rc_ws *ws = ud;
  if (ws->state == ST_DONE) return 1;
  if (opcode == WS_PING) {
    if (ws->state == ST_OPEN) send_control(ws, WS_PONG, payload, len);
  } else if (opcode == WS_CLOSE) {
    got_close(ws, payload, len);
    return 1; /* nothing valid follows a close */
  }
  return 0;
}

static const ws_parser_cbs g_parser_cbs = {on_frame_header, on_frame_payload, on_frame_end,
                                           on_control};

static void parse(rc_ws *ws, uint8_t *data, size_t len) {
  ws->last_rx = cm_now_mono_ms();
  ws->ping_out = false; /* any byte shows the peer is there */
  int rc = ws_parse(&ws->parser, data, len, &g_parser_cbs, ws, NULL);
  if (rc >= 0 || ws->state == ST_DONE) return;
  uint16_t code = WS_CLOSE_PROTOCOL;
  const char *why = ws_parser_error(&ws->parser, &code);
  send_close(ws, code, why);
  ws->end.code = code;
  fail_closing(ws, -EPROTO, "protocol error from the relay: %s (closed %u)", why ? why : "?", code);
}

static void s_on_read(cm_stream *st, uint8_t *data, size_t len) {
  rc_ws *ws = cm_stream_get_data(st);
  if (ws->state == ST_OPEN || ws->state == ST_CLOSING) parse(ws, data, len);
}

static void s_on_drain(cm_stream *st) {
  rc_ws *ws = cm_stream_get_data(st);
  if (ws->state == ST_OPEN && ws->cbs.on_drain) ws->cbs.on_drain(ws);
}

static void s_on_close(cm_stream *st, int err, const char *msg) {
  rc_ws *ws = cm_stream_get_data(st);
  ws->st = NULL;
  if (ws->state != ST_DONE)
    fail(ws, err ? err : -ECONNRESET, "connection to the relay lost: %s",
         msg && *msg ? msg : "closed without a close frame");
  ws_release(ws);
}

static const cm_stream_cbs g_stream_cbs = {
    .on_read = s_on_read, .on_drain = s_on_drain, .on_close = s_on_close};

/* ---- timers ------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t) {
  rc_ws *ws = t->data;
  uint64_t now = cm_now_mono_ms();
  if (ws->state == ST_CLOSING) {
    if (now >= ws->close_deadline)
      fail(ws, -ETIMEDOUT, "the relay did not answer our close within %u ms", ws->close_timeout);
    return;
  }
  if (ws->state != ST_OPEN) return;
  if (ws->paused) { /* our silence, not the peer's */
    ws->last_rx = now;
    ws->ping_out = false;
    return;
  }
  if (ws->ping_out) {
    if (now - ws->ping_at >= ws->ping_timeout)
      fail(ws, -ETIMEDOUT, "the relay did not answer a ping for %u ms", ws->ping_timeout);
  } else if (now - ws->last_rx >= ws->ping_interval) {
    uint8_t stamp[8];
    for (int i = 0; i < 8; i++)
      stamp[i] = (uint8_t)(now >> (56 - 8 * i));
    send_control(ws, WS_PING, stamp, sizeof stamp);
    ws->ping_out = true;
    ws->ping_at = now;
  }
}

/* ---- the upgrade --------------------------------------------------------------- */

/* True when some `name` header lists token (comma-separated, any case). */
static bool header_has_token(const cm_http_resp *r, const char *name, const char *token) {
  const char *n, *v;
  size_t tl = strlen(token);
  for (size_t i = 0; cm_http_resp_header_at(r, i, &n, &v); i++) {
    if (strcasecmp(n, name) != 0) continue;
    for (const char *p = v; *p;) {
      p += strspn(p, " \t,");
      size_t len = strcspn(p, ",");
      size_t trim = len;
      while (trim > 0 && (p[trim - 1] == ' ' || p[trim - 1] == '\t'))
        trim--;
      if (trim == tl && strncasecmp(p, token, tl) == 0) return true;
      p += len;
    }
  }
  return false;
}

/* What is wrong with a 101, or NULL. */
static const char *check_101(const rc_ws *ws, const cm_http_resp *r) {
  char want[WS_ACCEPT_LEN + 1];
  const char *accept = cm_http_resp_header(r, "Sec-WebSocket-Accept");
  if (!header_has_token(r, "Upgrade", "websocket")) return "no Upgrade: websocket";
  if (!header_has_token(r, "Connection", "upgrade")) return "no Connection: upgrade";
  if (ws_accept_key(ws->key, want) != 0 || !accept || strcmp(accept, want) != 0)
    return "wrong Sec-WebSocket-Accept";
  if (cm_http_resp_header(r, "Sec-WebSocket-Extensions")) return "an extension we did not offer";
  if (cm_http_resp_header(r, "Sec-WebSocket-Protocol")) return "a subprotocol we did not offer";
  return NULL;
}

static void refused(rc_ws *ws, const cm_http_resp *r) {
  ws->end.kind = RC_WS_REFUSED;
  ws->end.http_status = r->status;
  if (!rc_error_message(cm_buf_head(&r->body), cm_buf_size(&r->body), ws->end.reason,
                        sizeof ws->end.reason))
    snprintf(ws->end.reason, sizeof ws->end.reason, "HTTP %d", r->status);
  finish(ws, false);
}

static void become_open(rc_ws *ws, cm_stream *st) {
  ws->st = st;
  cm_stream_set_cbs(st, &g_stream_cbs);
  cm_stream_set_data(st, ws);
  ws_parser_config pc = {.server = false, .max_message = ws->max_message, .validate_utf8 = true};
  ws_parser_init(&ws->parser, &pc);
  ws->state = ST_OPEN;
  ws->end.opened = true;
  ws->last_rx = cm_now_mono_ms();
  uint32_t tick = CM_MAX(50u, CM_MIN(ws->ping_interval, ws->ping_timeout) / 4);
  tick = CM_MIN(tick, CM_MAX(50u, ws->close_timeout / 4));
  uv_timer_start(&ws->timer, on_tick, tick, tick);
}

static bool on_upgrade(void *ud, int err, const char *msg, cm_http_resp *resp, cm_stream *st,
                       uint8_t *rest, size_t restlen) {
  rc_ws *ws = ud;
  ws->x = NULL;
  if (err) {
    fail(ws, err, "%s", msg ? msg : "cannot connect");
    return false;
  }
  if (resp->status != 101) {
    refused(ws, resp);
    return false;
  }
  const char *bad = check_101(ws, resp);
  if (bad || !st) {
    fail(ws, -EPROTO, "bad upgrade answer from the relay: %s", bad ? bad : "connection closed");
    return false;
  }
  become_open(ws, st);
  if (ws->cbs.on_open) ws->cbs.on_open(ws);
  /* Frames that came with the 101. */
  if (ws->state == ST_OPEN && restlen) parse(ws, rest, restlen);
  return true;
}

static int build_upgrade(cm_buf *b, const rc_url *u, const char *key, const char *token) {
  char auth[RC_HOST_MAX + 16];
  rc_url_authority(u, auth, sizeof auth);
  int rc = 0;
  rc |= rc_buf_puts(b, "GET ");
  rc |= rc_buf_puts(b, u->path);
  rc |= rc_buf_puts(b, " HTTP/1.1\r\nHost: ");
  rc |= rc_buf_puts(b, auth);
  rc |= rc_buf_puts(b, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
  rc |= rc_buf_puts(b, key);
  rc |= rc_buf_puts(b, "\r\nSec-WebSocket-Version: 13\r\nUser-Agent: " RC_USER_AGENT "\r\n");
  if (token) {
    rc |= rc_buf_puts(b, "Authorization: Bearer ");
    rc |= rc_buf_puts(b, token);
    rc |= rc_buf_puts(b, "\r\n");
  }
  rc |= rc_buf_puts(b, "\r\n");
  return rc ? -ENOMEM : 0;
}

static bool opts_ok(const rc_ws_opts *o, char *err, size_t errlen) {
  if (!o->url || !o->url->websocket) {
    cm_seterr(err, errlen, "a WebSocket needs a ws or wss URL");
    return false;
  }
  if (o->url->tls && !o->tls) {
    cm_seterr(err, errlen, "a wss URL needs a TLS context");
    return false;
  }
  if (o->token && (!*o->token || !rc_header_safe(o->token) || strchr(o->token, ' '))) {
    cm_seterr(err, errlen, "the token has characters a header cannot carry");
    return false;
  }
  return true;
}

static void init_timing(rc_ws *ws, const rc_ws_opts *o) {
  ws->max_message = o->max_message ? o->max_message : RC_WS_DEFAULT_MAX_MESSAGE;
  ws->ping_interval = o->ping_interval_ms ? o->ping_interval_ms : DEFAULT_PING_MS;
  ws->ping_timeout = o->ping_timeout_ms ? o->ping_timeout_ms : DEFAULT_PING_MS;
  ws->close_timeout = o->close_timeout_ms ? o->close_timeout_ms : DEFAULT_CLOSE_MS;
}

rc_ws *rc_ws_connect(uv_loop_t *loop, const rc_ws_opts *o, const rc_ws_cbs *cbs, void *ud,
                     char *err, size_t errlen) {
  if (!opts_ok(o, err, errlen)) return NULL;
  rc_ws *ws = calloc(1, sizeof *ws);
  if (!ws) {
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  ws->loop = loop;
  ws->cbs = *cbs;
  ws->ud = ud;
  init_timing(ws, o);
  uint8_t nonce[16];
  cm_random_bytes(nonce, sizeof nonce);
  EVP_EncodeBlock((unsigned char *)ws->key, nonce, sizeof nonce); /* 24 characters, "==" */
  cm_buf req;
  cm_buf_init_secret(&req, 0);
  if (build_upgrade(&req, o->url, ws->key, o->token) != 0) {
    cm_buf_free(&req);
    free(ws);
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  uv_timer_init(loop, &ws->timer);
  ws->timer.data = ws;
  cm_stream_opts so = {.high_watermark = o->high_watermark,
                       .max_write_queue = o->max_write_queue,
                       .keepalive = true};
  rc_xchg_opts xo = {.url = o->url,
                     .tls = o->tls,
                     .request = &req,
                     .max_body = MAX_REFUSAL_BODY,
                     .connect_timeout_ms = o->connect_timeout_ms,
                     .timeout_ms =
                         o->handshake_timeout_ms ? o->handshake_timeout_ms : DEFAULT_HANDSHAKE_MS,
                     .stream = &so};
  ws->x = rc_xchg_start(loop, &xo, on_upgrade, ws);
  if (!ws->x) {
    uv_close((uv_handle_t *)&ws->timer, on_timer_closed); /* frees ws */
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  return ws;
}

/* ---- accessors ------------------------------------------------------------------ */

void *rc_ws_get_data(const rc_ws *ws) { return ws->ud; }
void rc_ws_set_data(rc_ws *ws, void *ud) { ws->ud = ud; }
bool rc_ws_is_open(const rc_ws *ws) { return ws->state == ST_OPEN; }
bool rc_ws_above_high(const rc_ws *ws) { return ws->st && cm_stream_above_high(ws->st); }
size_t rc_ws_write_queued(const rc_ws *ws) { return ws->st ? cm_stream_write_queued(ws->st) : 0; }

void rc_ws_pause(rc_ws *ws) {
  if (ws->state != ST_OPEN || ws->paused) return;
  ws->paused = true;
  cm_stream_pause(ws->st);
}

void rc_ws_resume(rc_ws *ws) {
  if (!ws->paused) return;
  ws->paused = false;
  ws->last_rx = cm_now_mono_ms();
  if (ws->st) cm_stream_resume(ws->st);
}
