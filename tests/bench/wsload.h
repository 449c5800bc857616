/*
 * wsload.h — a small WebSocket endpoint on cm_stream for load generation
 * (benchmarks and the soak harness in tests/soak; header-only so each
 * bench_*.c stays one translation unit).
 *
 * Both ends are here: wl_connect dials (plain or TLS), sends the HTTP/1.1
 * upgrade and then speaks as a client (frames masked, server frames parsed
 * with ws_parser in client mode); wl_accept takes a connection from a
 * listener, answers the upgrade with 101 and speaks as a server (the direct
 * and haproxy baselines of bench_relay).  Incoming data is counted (payload
 * bytes, and whole messages reported through on_message) and, for a caller
 * that checks it, handed over chunk by chunk through on_payload; pings are
 * answered, a close is echoed and its code kept in close_code.  Outgoing
 * data is prebuilt: wl_frame_build writes one frame (header + masked
 * payload) into a caller buffer once, and the caller sends those bytes as
 * often as it likes with wl_send, so the load generator spends its CPU on
 * TLS and syscalls, not on masking.  A fixed masking key is fine for a
 * benchmark (the relay cannot tell), and it keeps prebuilt frames reusable.
 *
 * Ownership: a wl_conn is freed after its on_close callback, as cm_stream
 * is; callers keep their own pointer in ud.  Everything runs on one libuv
 * loop; nothing is thread-safe.
 */
#ifndef RELAY_BENCH_WSLOAD_H
#define RELAY_BENCH_WSLOAD_H

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/common.h"
#include "websocket/websocket.h"

typedef struct wl_conn wl_conn;

typedef struct wl_cbs {
  void (*on_ready)(wl_conn *c);                           /* upgrade done (101 sent or received) */
  void (*on_message)(wl_conn *c, uint64_t len);           /* a whole data message arrived */
  void (*on_drain)(wl_conn *c);                           /* write queue fell below low watermark */
  void (*on_close)(wl_conn *c, int err, const char *msg); /* last call; c is freed after */
  /* Optional: a chunk of a data message's payload (c->msg_opcode is its
   * type, c->msg_len the bytes of the message before this chunk). */
  void (*on_payload)(wl_conn *c, const uint8_t *data, size_t len);
} wl_cbs;

struct wl_conn {
  cm_stream *st;
  bool server;         /* accepted side: server-mode parser, unmasked frames */
  bool ready;          /* upgrade complete */
  bool fin;            /* current frame is its message's last */
  uint8_t msg_opcode;  /* WS_TEXT or WS_BINARY: the current message's type */
  uint16_t close_code; /* code of the close frame received (1005: none given), else 0 */
  bool close_sent;     /* we sent a close frame: the peer's is its answer, not echoed */
  int http_status;     /* client: status of the upgrade reply (0 until read) */
  cm_buf hs;           /* handshake bytes until the blank line */
  ws_parser parser;
  uint64_t msg_len; /* payload of the message in progress */
  uint64_t rx_bytes, rx_msgs;
  const wl_cbs *cbs;
  void *ud;
  char *request; /* client: the upgrade request, sent on open */
};

/* The upgrade request may carry a slot token: wiped before it is freed. */
static void wl_free_request(wl_conn *c) {
  if (!c->request) return;
  explicit_bzero(c->request, strlen(c->request));
  free(c->request);
  c->request = NULL;
}

static const uint8_t WL_MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

/* Writes one frame (header + payload, masked when `masked`) into out, which
 * must hold len + WS_MAX_HEADER bytes; returns the frame's size. */
static inline size_t wl_frame_build(uint8_t *out, bool masked, uint8_t opcode,
                                    const uint8_t *payload, size_t len) {
  size_t h = ws_frame_header(out, true, opcode, len, masked ? WL_MASK : NULL);
  if (len) memcpy(out + h, payload, len);
  if (masked) ws_mask(out + h, len, WL_MASK, 0);
  return h + len;
}

static inline int wl_send(wl_conn *c, const void *frames, size_t len) {
  return cm_stream_write(c->st, frames, len);
}

static inline bool wl_above_high(const wl_conn *c) { return cm_stream_above_high(c->st); }
static inline void wl_close(wl_conn *c) { cm_stream_close(c->st); }

static void wl_send_control(wl_conn *c, uint8_t op, const uint8_t *p, size_t n);

/* Starts the closing handshake: a close frame with `code`; the stream
 * closes when the peer answers (or the peer closes it). */
static inline void wl_close_with(wl_conn *c, uint16_t code) {
  uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
  wl_send_control(c, WS_CLOSE, p, sizeof p);
}

/* ---- frame parsing -------------------------------------------------------------- */

static int wl_on_frame_header(void *ud, const ws_frame *f) {
  wl_conn *c = ud;
  c->fin = f->fin;
  c->msg_opcode = f->msg_opcode;
  return 0;
}

static int wl_on_payload(void *ud, uint8_t *data, size_t len) {
  wl_conn *c = ud;
  if (c->cbs->on_payload) c->cbs->on_payload(c, data, len);
  c->msg_len += len;
  c->rx_bytes += len;
  return 0;
}

static int wl_on_frame_end(void *ud) {
  wl_conn *c = ud;
  if (!c->fin) return 0;
  uint64_t n = c->msg_len;
  c->msg_len = 0;
  c->rx_msgs++;
  if (c->cbs->on_message) c->cbs->on_message(c, n);
  return 0;
}

static void wl_send_control(wl_conn *c, uint8_t op, const uint8_t *p, size_t n) {
  uint8_t f[WS_MAX_CONTROL + WS_MAX_HEADER];
  if (n > WS_MAX_CONTROL) n = WS_MAX_CONTROL; /* the parser guarantees it */
  size_t len = wl_frame_build(f, !c->server, op, p, n);
  if (op == WS_CLOSE) c->close_sent = true;
  cm_stream_write(c->st, f, len);
}

static int wl_on_control(void *ud, uint8_t op, const uint8_t *p, size_t n) {
  wl_conn *c = ud;
  if (op == WS_PING) wl_send_control(c, WS_PONG, p, n);
  if (op == WS_CLOSE) {
    c->close_code = n >= 2 ? (uint16_t)(p[0] << 8 | p[1]) : 1005;
    if (!c->close_sent) wl_send_control(c, WS_CLOSE, p, n >= 2 ? 2 : 0);
    cm_stream_close(c->st);
    return 1;
  }
  return 0;
}

static const ws_parser_cbs WL_PARSER_CBS = {wl_on_frame_header, wl_on_payload, wl_on_frame_end,
                                            wl_on_control};

static void wl_parse(wl_conn *c, uint8_t *data, size_t len) {
  if (len == 0 || cm_stream_closing(c->st)) return;
  int rc = ws_parse(&c->parser, data, len, &WL_PARSER_CBS, c, NULL);
  if (rc < 0) {
    uint16_t code = 0;
    const char *why = ws_parser_error(&c->parser, &code);
    fprintf(stderr, "wsload: bad frames from %s: %s\n", cm_stream_peer_addr(c->st),
            why ? why : "?");
    cm_stream_abort(c->st);
  }
}

static void wl_become_ready(wl_conn *c) {
  ws_parser_config pc = {.server = c->server};
  ws_parser_init(&c->parser, &pc);
  c->ready = true;
  if (c->cbs->on_ready) c->cbs->on_ready(c);
}

/* ---- handshake ------------------------------------------------------------------- */

/* Finds the end of the header block; returns its length or 0. */
static size_t wl_head_end(const cm_buf *b) {
  const uint8_t *p = cm_buf_head(b);
  size_t n = cm_buf_size(b);
  for (size_t i = 3; i < n; i++)
    if (p[i - 3] == '\r' && p[i - 2] == '\n' && p[i - 1] == '\r' && p[i] == '\n') return i + 1;
  return 0;
}

/* Value of header `name` in a NUL-terminated head, copied into out. */
static bool wl_header(const char *head, const char *name, char *out, size_t outlen) {
  size_t nl = strlen(name);
  for (const char *l = strstr(head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
    const char *h = l + 2;
    if (strncasecmp(h, name, nl) != 0 || h[nl] != ':') continue;
    h += nl + 1;
    while (*h == ' ')
      h++;
    size_t i = 0;
    while (h[i] && h[i] != '\r' && i + 1 < outlen) {
      out[i] = h[i];
      i++;
    }
    out[i] = '\0';
    return true;
  }
  return false;
}

/* Server side: answers the upgrade request at the head of c->hs. */
static bool wl_server_handshake(wl_conn *c, const char *head) {
  char key[64], accept[WS_ACCEPT_LEN + 1], resp[256];
  if (!wl_header(head, "Sec-WebSocket-Key", key, sizeof key) || ws_accept_key(key, accept) != 0)
    return false;
  int n = snprintf(resp, sizeof resp,
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                   accept);
  return cm_stream_write(c->st, resp, (size_t)n) == 0;
}

static void wl_on_read(cm_stream *s, uint8_t *data, size_t len) {
  wl_conn *c = cm_stream_get_data(s);
  if (c->ready) {
    wl_parse(c, data, len);
    return;
  }
  if (cm_buf_append(&c->hs, data, len) != 0) {
    cm_stream_abort(s);
    return;
  }
  size_t end = wl_head_end(&c->hs);
  if (end == 0) return;
  char head[4096];
  size_t hn = CM_MIN(end, sizeof head - 1);
  memcpy(head, cm_buf_head(&c->hs), hn);
  head[hn] = '\0';
  bool ok;
  if (c->server) {
    ok = wl_server_handshake(c, head);
  } else {
    c->http_status = strncmp(head, "HTTP/1.1 ", 9) == 0 ? atoi(head + 9) : -1;
    ok = c->http_status == 101;
  }
  if (!ok) {
    cm_stream_close(s);
    return;
  }
  /* Frames that came in the same read as the head. */
  size_t rest = cm_buf_size(&c->hs) - end;
  uint8_t *tail = rest ? malloc(rest) : NULL;
  if (rest) memcpy(tail, cm_buf_head(&c->hs) + end, rest);
  cm_buf_free(&c->hs);
  wl_become_ready(c);
  if (tail) {
    if (!cm_stream_closing(s)) wl_parse(c, tail, rest);
    free(tail);
  }
}

static void wl_on_open(cm_stream *s) {
  wl_conn *c = cm_stream_get_data(s);
  if (c->request) {
    cm_stream_write(s, c->request, strlen(c->request));
    wl_free_request(c);
  }
}

static void wl_on_drain(cm_stream *s) {
  wl_conn *c = cm_stream_get_data(s);
  if (c->cbs->on_drain) c->cbs->on_drain(c);
}

static void wl_on_close(cm_stream *s, int err, const char *msg) {
  wl_conn *c = cm_stream_get_data(s);
  if (c->cbs->on_close) c->cbs->on_close(c, err, msg);
  cm_buf_free(&c->hs);
  wl_free_request(c);
  free(c);
}

static const cm_stream_cbs WL_STREAM_CBS = {wl_on_open, wl_on_read, wl_on_drain, wl_on_close};

static wl_conn *wl_new(bool server, const wl_cbs *cbs, void *ud) {
  wl_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->server = server;
  c->cbs = cbs;
  c->ud = ud;
  cm_buf_init(&c->hs, 16384);
  return c;
}

/* Dials addr and upgrades GET `path` (which carries the slot token in its
 * query, if any), adding `headers` (NULL, or complete "Name: value\r\n"
 * lines) to the request.  tls NULL: plain. */
static inline wl_conn *wl_connect_hdr(uv_loop_t *loop, const struct sockaddr *addr, cm_tls_ctx *tls,
                                      const char *host, const char *path, const char *headers,
                                      const wl_cbs *cbs, void *ud, int *err) {
  wl_conn *c = wl_new(false, cbs, ud);
  if (!c) {
    *err = -ENOMEM;
    return NULL;
  }
  uint8_t nonce[16];
  char key[32];
  cm_random_bytes(nonce, sizeof nonce);
  /* Sec-WebSocket-Key is standard base64 of 16 bytes; base64url of random
   * bytes becomes standard base64 by swapping two characters. */
  cm_b64url_encode(nonce, sizeof nonce, key, sizeof key);
  for (char *k = key; *k; k++)
    *k = *k == '-' ? '+' : *k == '_' ? '/' : *k;
  if (!headers) headers = "";
  size_t need = strlen(path) + strlen(host) + strlen(headers) + 256;
  c->request = malloc(need);
  if (!c->request) {
    free(c);
    *err = -ENOMEM;
    return NULL;
  }
  snprintf(c->request, need,
           "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
           path, host, key, headers);
  cm_stream_opts o = {.tls = tls, .sni = host};
  c->st = cm_stream_connect(loop, addr, &o, &WL_STREAM_CBS, c, err);
  if (!c->st) {
    wl_free_request(c);
    free(c);
    return NULL;
  }
  return c;
}

static inline wl_conn *wl_connect(uv_loop_t *loop, const struct sockaddr *addr, cm_tls_ctx *tls,
                                  const char *host, const char *path, const wl_cbs *cbs, void *ud,
                                  int *err) {
  return wl_connect_hdr(loop, addr, tls, host, path, NULL, cbs, ud, err);
}

/* Accepts a pending connection on a listener as the server end. */
static inline wl_conn *wl_accept(uv_stream_t *server, cm_tls_ctx *tls, const wl_cbs *cbs, void *ud,
                                 int *err) {
  wl_conn *c = wl_new(true, cbs, ud);
  if (!c) {
    *err = -ENOMEM;
    return NULL;
  }
  cm_stream_opts o = {.tls = tls};
  c->st = cm_stream_accept(server, &o, &WL_STREAM_CBS, c, err);
  if (!c->st) {
    free(c);
    return NULL;
  }
  return c;
}

#endif
