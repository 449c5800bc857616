/*
 * target.c — the responder of a target session: a TCP service the relay
 * dials itself when the initiator joins (browser SSH), on the controller's
 * orders (the SlotDecision carries the target and the allowed ranges).
 *
 * A *virtual peer*: the data plane gets one end of a socketpair as an
 * ordinary peer in the responder slot (rly_dp_attach_fd), and this file
 * speaks WebSocket on the other end as a client would (masked frames out,
 * unmasked in, through the same codec).  So pairing, counters, kick, TTL,
 * drain and backpressure hold as for any peer, and the data plane needs
 * no case of its own; only the pump below knows about TCP.
 *
 * Dialling: the name is resolved off the loop (uv_getaddrinfo), and every
 * address is checked (cm_netpolicy: the decision's ranges and the fixed
 * block of loopback, link-local and metadata addresses) before it is
 * dialled — never the name — which defeats DNS rebinding.  Addresses are
 * tried in turn.  None allowed: the session is closed 1008 with the
 * reason; none reachable: 1011 "dial failed: ...".  Either is a CLOSE
 * event to the controller with that code and reason.
 *
 * Pumping: each TCP read leaves as one binary message; each message's
 * bytes are written to TCP as they come.  Backpressure both ways: a TCP
 * write queue above its high watermark pauses the socketpair's reading
 * (the data plane then pauses the initiator), and the socketpair's above
 * its own pauses the TCP reading; memory is two queues and a read.  Until
 * the TCP connection stands, the socketpair is not read, so what the
 * initiator sends early waits in the data plane's bounded queues.
 *
 * Closing: the target's FIN closes the WebSocket 1000 after what it sent
 * (the initiator is then closed 1000); a close from the relay (the
 * initiator left, a kick, TTL, drain) flushes what is queued to TCP, then
 * FIN and a short linger (cm_stream_close); a TCP error after the
 * connection stood closes the session 1011 with the reason.
 */
#include "relay/target.h"

#include "relay/dataplane.h"
#include "relay/pair.h"
#include "websocket/websocket.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TCP_HIGH_WATERMARK (256 * 1024)
#define REASON_MAX         120

typedef struct rly_target {
  rly_wctx *w; /* the session's home worker: everything here runs on its loop */
  char session[64];
  cm_target t;
  cm_netpolicy *policy;
  cm_stream *ws;  /* our end of the socketpair (WebSocket, client role) */
  cm_stream *tcp; /* the target */
  ws_parser parser;
  uv_getaddrinfo_t gai;
  bool resolving;
  struct addrinfo *addrs, *next; /* left to try */
  bool connected, ws_gone, tcp_gone, ended;
  bool ws_closing; /* our close frame is sent */
  uint8_t mask_pool[256];
  size_t mask_left;
  char why[REASON_MAX]; /* the last dial failure */
} rly_target;

static void target_maybe_free(rly_target *tg);
static void dial_next(rly_target *tg);

/* ---- WebSocket frames to the relay (masked: we are the client) ------------------------------ */

static void mask_key(rly_target *tg, uint8_t key[4]) {
  if (tg->mask_left < 4) {
    if (cm_random_bytes(tg->mask_pool, sizeof tg->mask_pool) != 0)
      memset(tg->mask_pool, 0x5a, sizeof tg->mask_pool); /* the key hides nothing here */
    tg->mask_left = sizeof tg->mask_pool;
  }
  memcpy(key, tg->mask_pool + sizeof tg->mask_pool - tg->mask_left, 4);
  tg->mask_left -= 4;
}

/* One whole frame; data is masked where it lies. */
static void ws_frame_out(rly_target *tg, uint8_t opcode, uint8_t *data, size_t len) {
  if (!tg->ws || tg->ws_closing) return;
  uint8_t key[4], hdr[WS_MAX_HEADER];
  mask_key(tg, key);
  size_t hl = ws_frame_header(hdr, true, opcode, len, key);
  ws_mask(data, len, key, 0);
  uv_buf_t b[2] = {uv_buf_init((char *)hdr, (unsigned)hl),
                   uv_buf_init((char *)data, (unsigned)len)};
  cm_stream_writev(tg->ws, b, len ? 2 : 1);
}

static void ws_close_out(rly_target *tg, uint16_t code, const char *reason) {
  if (!tg->ws || tg->ws_closing) return;
  uint8_t payload[WS_MAX_CONTROL];
  size_t n = ws_close_payload(payload, code, reason);
  ws_frame_out(tg, WS_CLOSE, payload, n);
  tg->ws_closing = true;
  cm_stream_close(tg->ws);
}

/* The session ends with code and reason for both peers, as a CLOSE event. */
static void fail(rly_target *tg, uint16_t code, const char *reason) {
  if (tg->ended) return;
  tg->ended = true;
  cm_log(code == 1008 ? CM_LOG_WARN : CM_LOG_INFO, "target", "target session closed",
         CM_S("session", tg->session), CM_S("target", tg->t.host), CM_I("port", tg->t.port),
         CM_I("code", code), CM_S("reason", reason));
  char r[REASON_MAX];
  snprintf(r, sizeof r, "%s", reason);
  rly_dp_kick(tg->w, tg->session, code, r); /* closes the virtual peer (and the initiator) */
  if (tg->tcp) cm_stream_abort(tg->tcp);
  if (tg->ws && !tg->ws_closing) {
    tg->ws_closing = true;
    cm_stream_close(tg->ws); /* it may be paused: it would never read the close */
  }
}

/* ---- from the relay to TCP ------------------------------------------------------------------ */

static int on_frame_header(void *ud, const ws_frame *f) {
  CM_UNUSED(ud);
  CM_UNUSED(f);
  return 0;
}

static int on_frame_payload(void *ud, uint8_t *data, size_t len) {
  rly_target *tg = ud;
  if (tg->tcp && len) cm_stream_write(tg->tcp, data, len);
  return 0;
}

static int on_frame_end(void *ud) {
  CM_UNUSED(ud);
  return 0;
}

static int on_control(void *ud, uint8_t opcode, const uint8_t *payload, size_t len) {
  rly_target *tg = ud;
  if (opcode == WS_PING) {
    uint8_t copy[WS_MAX_CONTROL];
    memcpy(copy, payload, len);
    ws_frame_out(tg, WS_PONG, copy, len);
  } else if (opcode == WS_CLOSE) {
    /* The initiator left or the session was closed: answer, and let TCP
     * finish what it was given (FIN after the queue, then a linger). */
    uint8_t echo[2];
    size_t n = len >= 2 ? 2 : 0;
    memcpy(echo, payload, n);
    ws_frame_out(tg, WS_CLOSE, echo, n);
    tg->ws_closing = true;
    cm_stream_close(tg->ws);
    tg->ended = true;
    if (tg->tcp) cm_stream_close(tg->tcp);
    return 1;
  }
  return 0;
}

static const ws_parser_cbs g_parser_cbs = {on_frame_header, on_frame_payload, on_frame_end,
                                           on_control};

static void ws_on_read(cm_stream *st, uint8_t *data, size_t len) {
  rly_target *tg = cm_stream_get_data(st);
  int rc = ws_parse(&tg->parser, data, len, &g_parser_cbs, tg, NULL);
  if (rc == WS_EPROTO) {
    fail(tg, 1011, "relay error: bad frame on the target's link");
    return;
  }
  if (tg->tcp && cm_stream_above_high(tg->tcp)) cm_stream_pause(st);
}

static void ws_on_drain(cm_stream *st) {
  rly_target *tg = cm_stream_get_data(st);
  if (tg->tcp && tg->connected) cm_stream_resume(tg->tcp);
}

static void ws_on_close(cm_stream *st, int err, const char *msg) {
  CM_UNUSED(err);
  CM_UNUSED(msg);
  rly_target *tg = cm_stream_get_data(st);
  tg->ws = NULL;
  tg->ws_gone = true;
  tg->ended = true;
  if (tg->tcp) cm_stream_close(tg->tcp);
  target_maybe_free(tg);
}

static const cm_stream_cbs g_ws_cbs = {NULL, ws_on_read, ws_on_drain, ws_on_close};

/* ---- from TCP to the relay ------------------------------------------------------------------ */

static void tcp_on_open(cm_stream *st) {
  rly_target *tg = cm_stream_get_data(st);
  tg->connected = true;
  cm_log(CM_LOG_INFO, "target", "target connected", CM_S("session", tg->session),
         CM_S("target", tg->t.host), CM_I("port", tg->t.port));
  if (tg->addrs) uv_freeaddrinfo(tg->addrs);
  tg->addrs = tg->next = NULL;
  if (tg->ws) cm_stream_resume(tg->ws); /* what the initiator sent meanwhile */
}

static void tcp_on_read(cm_stream *st, uint8_t *data, size_t len) {
  rly_target *tg = cm_stream_get_data(st);
  ws_frame_out(tg, WS_BINARY, data, len);
  if (tg->ws && cm_stream_above_high(tg->ws)) cm_stream_pause(st);
}

static void tcp_on_drain(cm_stream *st) {
  rly_target *tg = cm_stream_get_data(st);
  if (tg->ws && !tg->ws_closing) cm_stream_resume(tg->ws);
}

static void tcp_on_close(cm_stream *st, int err, const char *msg) {
  rly_target *tg = cm_stream_get_data(st);
  tg->tcp = NULL;
  if (!tg->connected && !tg->ended) {
    snprintf(tg->why, sizeof tg->why, "%s", msg && *msg ? msg : uv_strerror(err));
    dial_next(tg); /* the next address, or the end */
    return;
  }
  tg->tcp_gone = true;
  if (!tg->ended) {
    if (err == 0) {
      ws_close_out(tg, 1000, "target closed the connection"); /* after what it sent */
      tg->ended = true;
    } else {
      char r[REASON_MAX];
      snprintf(r, sizeof r, "target connection failed: %s", msg && *msg ? msg : uv_strerror(err));
      fail(tg, 1011, r);
    }
  }
  target_maybe_free(tg);
}

static const cm_stream_cbs g_tcp_cbs = {tcp_on_open, tcp_on_read, tcp_on_drain, tcp_on_close};

/* ---- resolving, checking, dialling ------------------------------------------------------------
 */

static void dial_next(rly_target *tg) {
  while (tg->next) {
    const struct sockaddr *sa = tg->next->ai_addr;
    tg->next = tg->next->ai_next;
    cm_stream_opts o = {.high_watermark = TCP_HIGH_WATERMARK, .keepalive = true};
    int err = 0;
    tg->tcp = cm_stream_connect(tg->w->loop, sa, &o, &g_tcp_cbs, tg, &err);
    if (tg->tcp) return;
    snprintf(tg->why, sizeof tg->why, "%s", uv_strerror(err));
  }
  char r[REASON_MAX];
  snprintf(r, sizeof r, "dial failed: %.60s:%u: %.40s", tg->t.host, (unsigned)tg->t.port,
           tg->why[0] ? tg->why : "no address");
  fail(tg, 1011, r);
  target_maybe_free(tg);
}

/* Keeps, in order, only the addresses the policy allows; says why the
 * first refused one was refused. */
static struct addrinfo *allowed_only(rly_target *tg, struct addrinfo *res, char *why, size_t n) {
  struct addrinfo *keep = NULL, **tail = &keep;
  while (res) {
    struct addrinfo *a = res;
    res = res->ai_next;
    a->ai_next = NULL;
    cm_ipaddr ip;
    cm_net_verdict v = cm_ipaddr_from_sockaddr(a->ai_addr, &ip, NULL) == 0
                           ? cm_netpolicy_check(tg->policy, &ip, tg->t.port)
                           : CM_NET_NOT_LISTED;
    if (v == CM_NET_ALLOWED) {
      *tail = a;
      tail = &a->ai_next;
      continue;
    }
    if (!why[0]) {
      char text[64];
      cm_ipaddr_text(&ip, text, sizeof text);
      const char *blk = v == CM_NET_BLOCKED ? cm_ipaddr_blocked(&ip) : NULL;
      snprintf(why, n, "target not allowed: %.60s is %s%s", text, blk ? blk : "outside the ranges",
               blk ? ", not named by the ranges" : "");
    }
    uv_freeaddrinfo(a);
  }
  return keep;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rly_target *tg = req->data;
  tg->resolving = false;
  if (tg->ended) {
    if (res) uv_freeaddrinfo(res);
    target_maybe_free(tg);
    return;
  }
  if (status != 0 || !res) {
    char r[REASON_MAX];
    snprintf(r, sizeof r, "dial failed: cannot resolve %.60s: %s", tg->t.host,
             uv_strerror(status ? status : UV_EAI_NONAME));
    if (res) uv_freeaddrinfo(res);
    fail(tg, 1011, r);
    target_maybe_free(tg);
    return;
  }
  char why[REASON_MAX] = "";
  tg->addrs = tg->next = allowed_only(tg, res, why, sizeof why);
  if (!tg->addrs) {
    fail(tg, 1008, why);
    target_maybe_free(tg);
    return;
  }
  dial_next(tg);
}

static void target_maybe_free(rly_target *tg) {
  if (!tg->ended || tg->resolving || tg->ws || tg->tcp) return;
  if (tg->addrs) uv_freeaddrinfo(tg->addrs);
  cm_netpolicy_free(tg->policy);
  free(tg);
}

static cm_netpolicy *policy_of(char *const *allow, size_t nallow, char *err, size_t errlen) {
  if (nallow == 0) {
    cm_seterr(err, errlen, "target not allowed: the controller allows no ranges");
    return NULL;
  }
  cm_netpolicy *p = cm_netpolicy_new((const char *const *)allow, nallow, err, errlen);
  if (!p) cm_seterr(err, errlen, "target not allowed: the controller's ranges are malformed");
  return p;
}

void rly_target_start(rly_wctx *w, const char *session_id, const char *target, char *const *allow,
                      size_t nallow) {
  rly_target *tg = calloc(1, sizeof *tg);
  char err[REASON_MAX];
  if (!tg) {
    rly_dp_kick(w, session_id, 1011, "relay error: out of memory");
    return;
  }
  tg->w = w;
  snprintf(tg->session, sizeof tg->session, "%s", session_id);
  if (cm_target_parse(target, &tg->t, err, sizeof err) != 0 ||
      !(tg->policy = policy_of(allow, nallow, err, sizeof err))) {
    tg->ended = true;
    cm_log(CM_LOG_WARN, "target", "target refused", CM_S("session", session_id),
           CM_S("reason", err));
    rly_dp_kick(w, session_id, 1008, err);
    target_maybe_free(tg);
    return;
  }
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0) {
    fail(tg, 1011, "relay error: socketpair failed");
    target_maybe_free(tg);
    return;
  }
  char label[CM_TARGET_MAX + 8];
  snprintf(label, sizeof label, "target %s", target);
  if (rly_dp_attach_fd(w, session_id, RLY_SLOT_RESPONDER, fds[0], label) != 0) {
    close(fds[0]);
    close(fds[1]);
    fail(tg, 1011, "relay error: cannot attach the target");
    target_maybe_free(tg);
    return;
  }
  ws_parser_config pc = {.server = false, .max_message = 0, .validate_utf8 = false};
  ws_parser_init(&tg->parser, &pc);
  cm_stream_opts o = {.high_watermark = (size_t)w->edge->cfg->ws_high_watermark};
  int e = 0;
  tg->ws = cm_stream_open_fd(w->loop, fds[1], false, &o, &g_ws_cbs, tg, &e);
  if (!tg->ws) {
    close(fds[1]);
    fail(tg, 1011, "relay error: cannot open the target's link");
    target_maybe_free(tg);
    return;
  }
  cm_stream_pause(tg->ws); /* read once the target is connected */
  char port[8];
  snprintf(port, sizeof port, "%u", (unsigned)tg->t.port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  tg->gai.data = tg;
  int rc = uv_getaddrinfo(w->loop, &tg->gai, on_resolved, tg->t.host, port, &hints);
  if (rc != 0) {
    char r[REASON_MAX];
    snprintf(r, sizeof r, "dial failed: cannot resolve %.60s: %s", tg->t.host, uv_strerror(rc));
    fail(tg, 1011, r);
    target_maybe_free(tg);
    return;
  }
  tg->resolving = true;
}
