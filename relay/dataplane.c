/*
 * dataplane.c — WebSocket upgrades on /relay/{id}, pairing, and frame
 * forwarding between the two peers of a session.
 *
 * Upgrade: the handshake is checked here, the token is taken from
 * Authorization, ?token= or the swsrs.token.<t> subprotocol, and the
 * controller decides (Validate).  Only then is 101 sent.
 *
 * Forwarding is cut-through: each payload chunk the parser delivers (already
 * unmasked in the read buffer) leaves at once as a frame to the other peer.
 * A frame that arrives in one read leaves as the same frame; one that spans
 * reads leaves as several frames of the same message (RFC 6455 §5.4 lets an
 * intermediary refragment).  So the output is at a frame boundary between
 * reads, and pongs and close frames can always be sent at once, even while
 * a huge frame streams through.  Nothing assembles a message.
 *
 * Backpressure: after each read, if the receiving peer's write queue is
 * above its high watermark the sender stops reading until on_drain.  Data
 * sent by a lone peer is held (bounded by hold_bytes) and reading pauses
 * past it.  So per session memory is about two write queues, one read chunk
 * and the hold buffer, whatever the peers do.
 *
 * Timers: one sweep (250 ms) applies peer_wait and TTL through the pairing
 * machine, sends idle pings, and reports each session's changed counters to
 * the controller at most once a second, as absolute totals within the
 * session's counter epoch.
 */
#include "relay/dataplane.h"

#include "relay/api.h"
#include "relay/control.h"
#include "relay/cors.h"
#include "relay/mailbox.h"
#include "relay/session.h"
#include "websocket/websocket.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 250
/* Changed counters reach the controller at most this often per session, so
 * an admin GET is about a second stale; at 10,000 busy sessions that is
 * 10,000 small events a second (see docs/BENCHMARKS.md). */
#define STATS_EVERY_MS 1000
#define MAX_TOKEN      RLY_MAX_TOKEN

typedef struct rly_peer rly_peer;
typedef struct rly_session rly_session;

struct rly_dp {
  rly_wctx *w;
  rly_session **sess_tab;
  size_t sess_cap;
  atomic_size_t nsessions, npeers; /* read by other workers' /metrics */
  cm_list sessions;
  uv_timer_t tick;
  rly_dp_metrics m;
};

struct rly_session {
  char id[64];
  rly_dp *dp;
  /* The decisions (session.h), with the pairing machine and the counters:
   * payload delivered from slot s, absolute within `epoch` (random, new
   * each time this relay starts holding the session; the controller adds
   * epochs up, so a restart loses nothing). */
  rly_sess core;
  rly_peer *peer[2];
  char controller[96];
  cm_buf held[2]; /* frames for slot s sent while s was empty */
  uint64_t epoch;
  int64_t last_activity;
  uint64_t max_message;
  rly_session *next; /* hash chain */
  cm_list node;
};

struct rly_peer {
  rly_dp *dp;
  rly_session *sess;
  int slot;
  cm_stream *st;
  ws_parser parser;
  uint64_t frame_len, frame_left; /* current frame: length, bytes still to come */
  uint8_t msg_opcode;
  bool frame_fin, msg_started;
  bool closing;        /* close frame sent or stream closing */
  bool released;       /* the pairing machine already let this slot go */
  bool paused;         /* reading paused for backpressure */
  uint16_t close_code; /* close code the peer sent */
  uint64_t last_rx_ms;
  bool ping_sent;
  bool ip_held; /* inherited from the HTTP connection (iplimit.c) */
  char remote[64];
  /* During one read: where the bytes before a payload chunk may be
   * overwritten from (the read buffer's headroom, or consumed header). */
  const uint8_t *writable;
};

/* What the controller granted, kept while the connection moves to the
 * session's home worker. */
typedef struct slot_grant {
  int slot;
  char controller[TUN_CONTROLLER_NAME_MAX];
  uint64_t peer_wait_ms; /* 0: the relay's default */
  int64_t expires_at_ms;
  uint64_t max_message;           /* 0: the relay's limit */
  char target[CM_TARGET_MAX + 1]; /* a target session: the relay dials its responder */
  cm_strlist target_allow;        /* where that may go (the controller's ranges) */
} slot_grant;

typedef struct rly_upgrade {
  rly_conn *conn;
  rly_ctl_call *call;
  char id[64];
  char protocol[MAX_TOKEN + 16]; /* subprotocol to echo, "" for none */
  char accept[32];
  slot_grant grant;
  size_t from_worker; /* where the upgrade arrived */
} rly_upgrade;

static void on_sess_action(void *ud, const rly_sess_action *a);

static const char *slot_name(int slot) {
  return slot == RLY_SLOT_INITIATOR ? "initiator" : "responder";
}

/* ---- session table ---------------------------------------------------------- */

static uint64_t hash_id(const char *id) { return rly_hash(id); }

static long long hold_bytes(const rly_dp *dp) {
  long long hold = dp->w->edge->cfg->hold_bytes;
  return hold ? hold : 256 * 1024;
}

static rly_session *sess_find(rly_dp *s, const char *id) {
  if (!s->sess_cap) return NULL;
  for (rly_session *x = s->sess_tab[hash_id(id) & (s->sess_cap - 1)]; x; x = x->next)
    if (strcmp(x->id, id) == 0) return x;
  return NULL;
}

static void sess_grow(rly_dp *s) {
  size_t ncap = s->sess_cap ? s->sess_cap * 2 : 1024;
  rly_session **nt = calloc(ncap, sizeof *nt);
  if (!nt) return; /* keep the old table: longer chains, still correct */
  for (size_t i = 0; i < s->sess_cap; i++) {
    for (rly_session *x = s->sess_tab[i], *nx; x; x = nx) {
      nx = x->next;
      size_t b = hash_id(x->id) & (ncap - 1);
      x->next = nt[b];
      nt[b] = x;
    }
  }
  free(s->sess_tab);
  s->sess_tab = nt;
  s->sess_cap = ncap;
}

/* Whether the relay holds --max-sessions (or the controller's limit)
 * sessions already, across every worker. */
static bool sessions_full(rly_edge *e) {
  uint64_t max = atomic_load(&e->max_sessions);
  return max && atomic_load(&e->sessions) >= max;
}

/* Counts one more session if the limit allows: the one check that holds
 * when several workers open sessions at once. */
static bool sess_reserve(rly_edge *e) {
  uint64_t max = atomic_load(&e->max_sessions);
  size_t was = atomic_fetch_add(&e->sessions, 1);
  if (!max || was < max) return true;
  atomic_fetch_sub(&e->sessions, 1);
  return false;
}

static rly_session *sess_new(rly_dp *s, const char *id, const char *controller,
                             uint64_t peer_wait_ms, int64_t expires_at_ms, uint64_t max_message) {
  if (atomic_load(&s->nsessions) >= s->sess_cap) sess_grow(s);
  rly_session *x = calloc(1, sizeof *x);
  if (!x || !s->sess_cap) {
    free(x);
    return NULL;
  }
  snprintf(x->id, sizeof x->id, "%s", id);
  snprintf(x->controller, sizeof x->controller, "%s", controller);
  x->dp = s;
  /* A frame may complete the hold by as much as one read brings. */
  uint64_t hold = (uint64_t)hold_bytes(s);
  rly_sess_config sc = {.peer_wait_ms = peer_wait_ms,
                        .expires_at_ms = expires_at_ms,
                        .hold_cap = hold,
                        .hold_max = hold + 65536 + 64,
                        .stats_every_ms = STATS_EVERY_MS};
  rly_sess_init(&x->core, &sc, on_sess_action, x);
  x->max_message = max_message;
  if (cm_random_bytes((uint8_t *)&x->epoch, sizeof x->epoch) != 0 || x->epoch == 0)
    x->epoch = (uint64_t)cm_now_wall_ms() | 1; /* unique enough; never 0 */
  cm_buf_init(&x->held[0], (size_t)sc.hold_max);
  cm_buf_init(&x->held[1], (size_t)sc.hold_max);
  size_t b = hash_id(id) & (s->sess_cap - 1);
  x->next = s->sess_tab[b];
  s->sess_tab[b] = x;
  cm_list_push_back(&s->sessions, &x->node);
  atomic_fetch_add(&s->nsessions, 1);
  return x;
}

static void sess_free(rly_session *x) {
  rly_dp *s = x->dp;
  rly_session **pp = &s->sess_tab[hash_id(x->id) & (s->sess_cap - 1)];
  while (*pp && *pp != x)
    pp = &(*pp)->next;
  if (*pp) *pp = x->next;
  cm_list_remove(&x->node);
  cm_buf_free(&x->held[0]);
  cm_buf_free(&x->held[1]);
  atomic_fetch_sub(&s->nsessions, 1);
  atomic_fetch_sub(&s->w->edge->sessions, 1);
  free(x);
}

/* Forgets a session once no peer is on it (the relay keeps no state). */
static void sess_maybe_free(rly_session *x);
/* The peer has left its slot (see below). */
static void peer_leave(rly_peer *p, uint16_t code);

/* ---- events to the controller ---------------------------------------------- */

static void send_event(rly_session *x, Relay__V1__SessionEvent__Type type, int slot, uint16_t code,
                       const char *reason) {
  Relay__V1__SessionEvent se = RELAY__V1__SESSION_EVENT__INIT;
  se.type = type;
  se.session_id = x->id;
  se.role = slot == RLY_SLOT_INITIATOR   ? RELAY__V1__ROLE__ROLE_INITIATOR
            : slot == RLY_SLOT_RESPONDER ? RELAY__V1__ROLE__ROLE_RESPONDER
                                         : RELAY__V1__ROLE__ROLE_UNSPECIFIED;
  se.counter_epoch = x->epoch;
  se.bytes_in = x->core.bytes[RLY_SLOT_INITIATOR];
  se.bytes_out = x->core.bytes[RLY_SLOT_RESPONDER];
  se.last_activity_unix = x->last_activity;
  se.close_code = code;
  se.reason = (char *)(reason ? reason : "");
  Relay__V1__RelayEvent ev = RELAY__V1__RELAY_EVENT__INIT;
  ev.kind_case = RELAY__V1__RELAY_EVENT__KIND_SESSION;
  ev.session = &se;
  rly_ctl_event(x->dp->w, x->controller, &ev);
}

/* ---- writing ----------------------------------------------------------------------- */

static void ws_send_frame(rly_peer *p, uint8_t opcode, const uint8_t *payload, size_t len) {
  if (!p->st || cm_stream_closing(p->st)) return;
  uint8_t hdr[WS_MAX_HEADER];
  size_t hl = ws_frame_header(hdr, true, opcode, len, NULL);
  uv_buf_t b[2] = {uv_buf_init((char *)hdr, (unsigned)hl),
                   uv_buf_init((char *)payload, (unsigned)len)};
  cm_stream_writev(p->st, b, len ? 2 : 1);
}

/* Sends a close frame and closes the stream.  The peer's answering close
 * (if any) is read and dropped while the stream lingers. */
static void peer_close(rly_peer *p, uint16_t code, const char *reason) {
  if (p->closing) return;
  p->closing = true;
  if (p->sess) rly_sess_closing(&p->sess->core, p->slot); /* nothing more for it */
  uint8_t payload[WS_MAX_CONTROL];
  size_t n = ws_close_payload(payload, code, reason);
  ws_send_frame(p, WS_CLOSE, payload, n);
  cm_stream_close(p->st);
}

/* Writes a data frame where the core says: to the other peer, or into the
 * session's hold buffer for it. */
static void forward(rly_peer *from, bool fin, uint8_t opcode, uint8_t *data, size_t len) {
  rly_session *x = from->sess;
  int to = 1 - from->slot;
  uint8_t hdr[WS_MAX_HEADER];
  size_t hl = ws_frame_header(hdr, fin, opcode, len, NULL);
  rly_sess_route_t route = rly_sess_route(&x->core, from->slot, hl + len, len);
  rly_peer *dst = x->peer[to];
  if (route == RLY_ROUTE_FORWARD && dst) {
    if (len && data - hl >= from->writable) {
      /* The bytes before the chunk are its own frame's header, already
       * parsed (a client's is longer than ours: it carries a mask), or
       * the read buffer's headroom: the frame goes out as one piece,
       * with no copy. */
      memcpy(data - hl, hdr, hl);
      cm_stream_write(dst->st, data - hl, hl + len);
    } else {
      uv_buf_t b[2] = {uv_buf_init((char *)hdr, (unsigned)hl),
                       uv_buf_init((char *)data, (unsigned)len)};
      cm_stream_writev(dst->st, b, len ? 2 : 1);
    }
    rly_count(&from->dp->m.bytes_out, len);
  } else if (route == RLY_ROUTE_HOLD && (cm_buf_append(&x->held[to], hdr, hl) != 0 ||
                                         cm_buf_append(&x->held[to], data, len) != 0)) {
    /* Within the core's bound, so only out of memory. */
    peer_close(from, 1011, "relay out of memory");
  }
}

/* ---- parser callbacks (one peer's incoming frames) -------------------------------- */

static int on_frame_header(void *ud, const ws_frame *f) {
  rly_peer *p = ud;
  p->frame_left = p->frame_len = f->len;
  p->frame_fin = f->fin;
  p->msg_opcode = f->msg_opcode;
  return 0;
}

static uint8_t next_opcode(rly_peer *p) {
  uint8_t op = p->msg_started ? WS_CONT : p->msg_opcode;
  p->msg_started = true;
  return op;
}

static int on_frame_payload(void *ud, uint8_t *data, size_t len) {
  rly_peer *p = ud;
  if (p->closing || !p->sess) return 1;
  p->frame_left -= len;
  bool fin = p->frame_fin && p->frame_left == 0;
  uint8_t op = next_opcode(p);
  if (fin) p->msg_started = false;
  rly_count(&p->dp->m.bytes_in, len);
  forward(p, fin, op, data, len);
  return 0;
}

static int on_frame_end(void *ud) {
  rly_peer *p = ud;
  if (p->closing || !p->sess) return 1;
  /* Pieces of a non-empty frame already left (the last with FIN when the
   * frame had it).  An empty final frame still ends its message; an empty
   * non-final frame carries nothing and is dropped. */
  if (p->frame_len == 0 && p->frame_fin) {
    uint8_t op = next_opcode(p);
    p->msg_started = false;
    forward(p, true, op, NULL, 0);
  }
  if (p->frame_fin) rly_count(&p->dp->m.messages, 1);
  return 0;
}

static int on_control(void *ud, uint8_t opcode, const uint8_t *payload, size_t len) {
  rly_peer *p = ud;
  if (opcode == WS_PING) {
    ws_send_frame(p, WS_PONG, payload, len); /* output is at a frame boundary */
  } else if (opcode == WS_CLOSE) {
    p->close_code = len >= 2 ? (uint16_t)(payload[0] << 8 | payload[1]) : 0;
    /* Echo the code (RFC 6455 §5.5.1), then leave. */
    if (!p->closing) {
      p->closing = true;
      ws_send_frame(p, WS_CLOSE, payload, len >= 2 ? 2 : 0);
      cm_stream_close(p->st);
    }
    peer_leave(p, p->close_code);
    return 1; /* stop parsing: nothing valid follows a close */
  }
  p->ping_sent = false;
  return 0;
}

static const ws_parser_cbs g_parser_cbs = {on_frame_header, on_frame_payload, on_frame_end,
                                           on_control};

/* ---- pairing actions -------------------------------------------------------------------- */

/* The core delivered what was held for `to` (it counted it). */
static void flush_held(rly_session *x, int to, uint64_t payload) {
  rly_peer *dst = x->peer[to];
  if (dst && cm_buf_size(&x->held[to]) > 0)
    cm_stream_write(dst->st, cm_buf_head(&x->held[to]), cm_buf_size(&x->held[to]));
  rly_count(&x->dp->m.bytes_out, payload);
  cm_buf_free(&x->held[to]);
  cm_buf_init(&x->held[to], (size_t)x->core.cfg.hold_max);
}

static void peer_resume(rly_peer *p);

/* The slot is free at once (a rejoin need not wait for our close
 * handshake); the closing peer no longer belongs to the session. */
static void close_for_core(rly_session *x, const rly_sess_action *a) {
  rly_peer *p = x->peer[a->slot];
  if (!p) return;
  p->released = true;
  x->peer[a->slot] = NULL;
  p->sess = NULL;
  if (a->reason && strcmp(a->reason, "peer_wait expired") == 0)
    rly_count(&x->dp->m.peer_wait_expired, 1);
  cm_log(CM_LOG_INFO, "ws", "closing peer", CM_S("session", x->id),
         CM_S("slot", slot_name(a->slot)), CM_I("code", a->code),
         CM_S("reason", a->reason ? a->reason : ""));
  peer_close(p, a->code, a->reason);
}

static void report(rly_session *x, const rly_sess_action *a) {
  static const Relay__V1__SessionEvent__Type types[] = {
      [RLY_SESS_EV_ATTACH] = RELAY__V1__SESSION_EVENT__TYPE__ATTACH,
      [RLY_SESS_EV_DETACH] = RELAY__V1__SESSION_EVENT__TYPE__DETACH,
      [RLY_SESS_EV_OPEN] = RELAY__V1__SESSION_EVENT__TYPE__OPEN,
      [RLY_SESS_EV_CLOSE] = RELAY__V1__SESSION_EVENT__TYPE__CLOSE,
      [RLY_SESS_EV_STATS] = RELAY__V1__SESSION_EVENT__TYPE__STATS};
  if (a->event == RLY_SESS_EV_OPEN)
    cm_log(CM_LOG_INFO, "ws", "session open", CM_S("session", x->id));
  send_event(x, types[a->event], a->slot, a->code, a->reason);
}

/* The core decided; the glue does it. */
static void on_sess_action(void *ud, const rly_sess_action *a) {
  rly_session *x = ud;
  rly_peer *p = a->slot >= 0 ? x->peer[a->slot] : NULL;
  switch (a->type) {
  case RLY_SESS_CLOSE: close_for_core(x, a); break;
  case RLY_SESS_FLUSH: flush_held(x, a->slot, a->bytes); break;
  case RLY_SESS_PAUSE:
    if (p && !p->closing) {
      p->paused = true;
      cm_stream_pause(p->st);
    }
    break;
  case RLY_SESS_RESUME:
    if (p) peer_resume(p);
    break;
  case RLY_SESS_EVENT: report(x, a); break;
  }
}

/* ---- peer I/O ------------------------------------------------------------------------------ */

static void peer_protocol_error(rly_peer *p) {
  uint16_t code = 1002;
  const char *why = ws_parser_error(&p->parser, &code);
  if (code == 1009)
    rly_count(&p->dp->m.too_big, 1);
  else
    rly_count(&p->dp->m.protocol_errors, 1);
  cm_log(CM_LOG_INFO, "ws", "peer protocol error", CM_S("session", p->sess ? p->sess->id : ""),
         CM_S("slot", slot_name(p->slot)), CM_I("code", code), CM_S("reason", why ? why : ""),
         CM_S("remote", p->remote));
  peer_close(p, code, why);
  peer_leave(p, 0);
}

/* headroom: data has CM_STREAM_HEADROOM writable bytes before it (it came
 * from the stream, not from a buffer of ours). */
static void peer_input(rly_peer *p, uint8_t *data, size_t len, bool headroom) {
  p->writable = headroom ? data - CM_STREAM_HEADROOM : data;
  p->last_rx_ms = cm_now_mono_ms();
  p->ping_sent = false;
  if (p->closing) return;
  /* Everything this read produces for either side leaves together: one
   * record and one syscall per direction instead of one per frame.  The
   * streams outlive this call even if their peers close during it. */
  rly_session *x = p->sess;
  cm_stream *dst = x && x->core.pair.state == RLY_PAIR_OPEN && x->peer[1 - p->slot]
                       ? x->peer[1 - p->slot]->st
                       : NULL;
  cm_stream *self = p->st;
  cm_stream_cork(self);
  if (dst) cm_stream_cork(dst);
  int rc = ws_parse(&p->parser, data, len, &g_parser_cbs, p, NULL);
  if (rc == WS_EPROTO) peer_protocol_error(p);
  if (dst) cm_stream_uncork(dst);
  cm_stream_uncork(self);
  if (rc == WS_EPROTO || !p->sess) return; /* x may be gone with it */
  p->sess->last_activity = cm_now_wall_ms() / 1000;
  /* Cut-through wrote this whole chunk; if the receiver (or the hold
   * buffer) is full, the core stops this sender until it drains. */
  if (!p->closing) rly_sess_read_done(&p->sess->core, p->slot, dst && cm_stream_above_high(dst));
}

static void peer_resume(rly_peer *p) {
  if (!p->paused || p->closing) return;
  p->paused = false;
  /* Its silence while paused was ours (see idle_ping): a fresh period. */
  p->last_rx_ms = cm_now_mono_ms();
  p->ping_sent = false;
  cm_stream_resume(p->st);
}

static void p_on_read(cm_stream *st, uint8_t *data, size_t len) {
  peer_input(cm_stream_get_data(st), data, len, true);
}

static void p_on_drain(cm_stream *st) {
  rly_peer *p = cm_stream_get_data(st);
  if (p->sess) rly_sess_drained(&p->sess->core, p->slot);
}

static void sess_maybe_free(rly_session *x) {
  if (x->peer[0] || x->peer[1] || !rly_sess_done(&x->core)) return;
  sess_free(x);
}

/* The peer is gone from its session: it sent a close frame, broke the
 * protocol, or its connection ended.  The slot is let go now rather than
 * when the close handshake and TCP teardown finish (which may linger for
 * seconds), so the counterpart hears at once and a rejoin is not refused
 * with 409 meanwhile — as for closes the relay starts (RLY_ACT_CLOSE). */
static void peer_leave(rly_peer *p, uint16_t code) {
  rly_session *x = p->sess;
  if (!x) return;
  p->sess = NULL;
  x->peer[p->slot] = NULL;
  if (!p->released) {
    p->released = true;
    rly_sess_leave(&x->core, p->slot, code, cm_now_mono_ms());
  }
  sess_maybe_free(x);
}

static void p_on_close(cm_stream *st, int err, const char *msg) {
  rly_peer *p = cm_stream_get_data(st);
  rly_dp *dp = p->dp;
  rly_wctx *w = dp->w;
  atomic_fetch_sub(&dp->npeers, 1);
  atomic_fetch_sub(&w->edge->live, 1);
  rly_count(&dp->m.peers_closed, 1);
  if (p->ip_held) rly_ip_release(w->edge, p->remote);
  cm_log(CM_LOG_DEBUG, "ws", "peer closed", CM_S("session", p->sess ? p->sess->id : ""),
         CM_S("slot", slot_name(p->slot)), CM_I("err", err), CM_S("why", msg));
  peer_leave(p, p->close_code);
  free(p);
  w->maybe_finish(w);
}

static const cm_stream_cbs g_peer_cbs = {
    .on_read = p_on_read, .on_drain = p_on_drain, .on_close = p_on_close};

/* ---- upgrade ------------------------------------------------------------------------------- */

static void refuse(rly_conn *c, int status, const char *code, const char *msg) {
  rly_dp *dp = c->w->dp;
  if (status >= 500)
    rly_count(&dp->m.refused_503, 1);
  else
    rly_count(&dp->m.refused_4xx, 1);
  const char *extra = status == 401   ? "WWW-Authenticate: Bearer realm=\"relay\"\r\n"
                      : status == 426 ? "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
                                      : NULL;
  rly_conn_respond_error(c, status, code, msg, extra);
}

#define TOKEN_PROTOCOL     "swsrs.token."
#define TOKEN_PROTOCOL_LEN (sizeof TOKEN_PROTOCOL - 1)

/* The slot token as offered: it may come as Authorization: Bearer,
 * ?token= and the swsrs.token.<t> subprotocol, each possibly repeated.
 * Every offer must be the same token; otherwise which one counts would
 * depend on who reads the request (a proxy checking one, the relay
 * another), so disagreement is refused rather than resolved. */
typedef struct token_offer {
  char tok[MAX_TOKEN + 1];
  size_t len;
  bool found;     /* at least one offer */
  bool malformed; /* an offer that is empty, too long or does not decode */
  bool conflict;  /* two offers differ */
  bool protocol;  /* offered as a subprotocol (so it is echoed) */
} token_offer;

static void offer(token_offer *t, const char *s, size_t n) {
  if (n == 0 || n > MAX_TOKEN) {
    t->malformed = true;
  } else if (!t->found) {
    memcpy(t->tok, s, n);
    t->tok[n] = '\0';
    t->len = n;
    t->found = true;
  } else if (n != t->len || !cm_ct_equal(t->tok, s, n)) {
    t->conflict = true;
  }
}

static void find_token(const rly_http_request *req, token_offer *t) {
  memset(t, 0, sizeof *t);
  size_t i = 0, n;
  for (const char *auth; (auth = rly_http_header_next(req, "Authorization", &i));)
    if (strncasecmp(auth, "Bearer ", 7) == 0) offer(t, auth + 7, strlen(auth + 7));
  char q[MAX_TOKEN + 1];
  const char *cur = req->query;
  for (int rc; (rc = rly_http_query_next(&cur, "token", q, sizeof q)) != 0;) {
    if (rc < 0)
      t->malformed = true;
    else
      offer(t, q, strlen(q));
  }
  OPENSSL_cleanse(q, sizeof q);
  i = 0;
  for (const char *sp; (sp = rly_http_header_next(req, "Sec-WebSocket-Protocol", &i));) {
    for (const char *pc = sp, *item; (item = rly_http_list_next(&pc, &n));) {
      if (n < TOKEN_PROTOCOL_LEN || strncmp(item, TOKEN_PROTOCOL, TOKEN_PROTOCOL_LEN) != 0)
        continue;
      offer(t, item + TOKEN_PROTOCOL_LEN, n - TOKEN_PROTOCOL_LEN);
      t->protocol = true;
    }
  }
}

static void upgrade_free(rly_upgrade *u) {
  cm_strlist_free(&u->grant.target_allow);
  OPENSSL_cleanse(u, sizeof *u);
  free(u);
}

/* The client went away while its Validate was in flight. */
static void upgrade_cancel(void *pending) {
  rly_upgrade *u = pending;
  if (u->call) rly_ctl_call_cancel(u->call);
  upgrade_free(u);
}

static void accept_peer(rly_conn *c, rly_upgrade *u);
static void to_home(rly_conn *c, rly_upgrade *u);
static void kick_session(rly_session *x, uint16_t code, const char *reason);

/* The controller said no with a gRPC status: refuse on its meaning. */
static void refuse_status(rly_conn *c, const rly_upgrade *u, int status, const char *message) {
  const char *code;
  int http = rly_grpc_to_http(status, &code);
  if (http >= 500)
    cm_log(CM_LOG_WARN, "ws", "validate failed", CM_S("session", u->id),
           CM_S("grpc_status", tun_grpc_status_name(status)), CM_S("message", message));
  if (status == TUN_GRPC_NOT_FOUND) code = "unknown_session";
  const char *msg = status == TUN_GRPC_NOT_FOUND ? "no such session"
                    : http == 503                ? "the controller could not be reached"
                    : http == 502                ? "the controller's answer was unusable"
                    : message && message[0]      ? message
                                                 : NULL;
  refuse(c, http, code, msg);
}

static void on_validate(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                        const char *controller) {
  rly_upgrade *u = ud;
  rly_conn *c = u->conn;
  rly_conn_clear_pending(c, u);
  u->call = NULL;
  const Relay__V1__SlotDecision *d = (const Relay__V1__SlotDecision *)resp;
  if (status != TUN_GRPC_OK) {
    refuse_status(c, u, status, message);
  } else if (!d->allow && (d->http_status < 400 || d->http_status > 599)) {
    cm_log(CM_LOG_WARN, "ws", "bad answer from the controller", CM_S("session", u->id),
           CM_S("problem", "a refusal without a 4xx/5xx http_status"));
    refuse(c, 502, "bad_controller_answer", "the controller's answer was unusable");
  } else if (!d->allow) {
    refuse(c, (int)d->http_status, d->reason[0] ? d->reason : "refused",
           d->message[0] ? d->message : NULL);
  } else if (d->slot != RELAY__V1__ROLE__ROLE_INITIATOR &&
             d->slot != RELAY__V1__ROLE__ROLE_RESPONDER) {
    cm_log(CM_LOG_WARN, "ws", "bad answer from the controller", CM_S("session", u->id),
           CM_S("problem", "an allowed slot without a role"));
    refuse(c, 502, "bad_controller_answer", "the controller's answer was unusable");
  } else {
    slot_grant *g = &u->grant;
    g->slot = d->slot == RELAY__V1__ROLE__ROLE_RESPONDER ? RLY_SLOT_RESPONDER : RLY_SLOT_INITIATOR;
    snprintf(g->controller, sizeof g->controller, "%s", controller ? controller : "");
    g->peer_wait_ms = (uint64_t)d->peer_wait_seconds * 1000;
    g->expires_at_ms = d->expires_at_unix * 1000;
    g->max_message = d->max_message_bytes;
    snprintf(g->target, sizeof g->target, "%s", d->target ? d->target : "");
    for (size_t i = 0; i < d->n_target_allow; i++)
      cm_strlist_push(&g->target_allow, d->target_allow[i]);
    to_home(c, u); /* takes u */
    return;
  }
  upgrade_free(u);
}

/* RFC 6455 §4.2.1.  The HTTP core has already ignored Upgrade on
 * HTTP/1.0, so such a request lands in the 426 below; the router lets
 * HEAD reach this GET route, and a HEAD must not upgrade. */
static bool check_handshake(rly_conn *c, const rly_http_request *req, rly_upgrade *u) {
  const char *upg = rly_http_header_get(req, "Upgrade");
  const char *conn = rly_http_header_get(req, "Connection");
  if (!req->upgrade || !upg || !rly_http_header_has_token(upg, "websocket") || !conn ||
      !rly_http_header_has_token(conn, "upgrade")) {
    refuse(c, 426, "upgrade_required", "this endpoint speaks WebSocket only");
    return false;
  }
  if (strcmp(req->method, "GET") != 0) {
    refuse(c, 400, "bad_handshake", "a WebSocket handshake is a GET request");
    return false;
  }
  /* Both headers must not repeat (§11.3.1, §11.3.5): which copy counts
   * would depend on who reads the request. */
  if (rly_http_header_count(req, "Sec-WebSocket-Version") > 1 ||
      rly_http_header_count(req, "Sec-WebSocket-Key") > 1) {
    refuse(c, 400, "bad_handshake", "Sec-WebSocket-Key or -Version given more than once");
    return false;
  }
  const char *ver = rly_http_header_get(req, "Sec-WebSocket-Version");
  if (!ver || strcmp(ver, "13") != 0) {
    refuse(c, 426, "unsupported_version", "WebSocket version 13 is required");
    return false;
  }
  const char *key = rly_http_header_get(req, "Sec-WebSocket-Key");
  if (!key || ws_accept_key(key, u->accept) != 0) {
    refuse(c, 400, "bad_handshake", "missing or malformed Sec-WebSocket-Key");
    return false;
  }
  return true;
}

void rly_dp_upgrade(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int arg) {
  CM_UNUSED(arg);
  const char *session_id = m->caps[0];
  rly_wctx *w = c->w;
  rly_edge *e = w->edge;
  token_offer t = {0};
  rly_upgrade *u = calloc(1, sizeof *u);
  if (!u) {
    refuse(c, 503, "overloaded", "out of memory");
    return;
  }
  u->conn = c;
  snprintf(u->id, sizeof u->id, "%s", session_id);
  if (!check_handshake(c, req, u)) goto done;
  /* No session has such an id: refused here, not at the cost of a
   * Validate round trip (nor under an id cut to fit u->id). */
  if (!rly_session_id_ok(session_id)) {
    refuse(c, 404, "unknown_session", "no such session");
    goto done;
  }
  const char *origin = rly_http_header_get(req, "Origin");
  if (origin && e->cfg->cors_origins.n > 0 && !rly_origin_allowed(&e->cfg->cors_origins, origin)) {
    refuse(c, 403, "origin_not_allowed", "this Origin may not connect");
    goto done;
  }
  find_token(req, &t);
  if (t.conflict) {
    refuse(c, 400, "conflicting_tokens", "the slot token was given more than once, differently");
    goto done;
  }
  if (!t.found && !t.malformed) {
    refuse(c, 401, "missing_token", "a slot token is required");
    goto done;
  }
  if (t.malformed || !rly_token_ok(t.tok)) {
    refuse(c, 401, "invalid_token", "malformed slot token");
    goto done;
  }
  /* A token the client offered as a subprotocol is the one to echo. */
  if (t.protocol) snprintf(u->protocol, sizeof u->protocol, TOKEN_PROTOCOL "%s", t.tok);
  /* A controller's Drain refuses new peers; our own shutdown does not (see
   * accept_peer): its successor may not be accepting yet, and a client
   * that was let in is answered. */
  if (atomic_load(&e->draining)) {
    refuse(c, 503, "draining", "this relay is not accepting new peers");
    goto done;
  }
  /* Known before asking the controller when this worker is the session's
   * home; otherwise the home worker checks again when the peer arrives
   * (sess_reserve), which is the check that holds. */
  if (rly_edge_home(e, session_id) == w->index && !sess_find(w->dp, session_id) &&
      sessions_full(e)) {
    refuse(c, 429, "too_many_sessions", "the relay's session limit is reached");
    goto done;
  }
  char role[16] = "";
  rly_http_query_get(req->query, "role", role, sizeof role);
  Relay__V1__SlotRequest q = RELAY__V1__SLOT_REQUEST__INIT;
  q.session_id = u->id;
  q.token = t.tok;
  q.requested_role = strcmp(role, "initiator") == 0   ? RELAY__V1__ROLE__ROLE_INITIATOR
                     : strcmp(role, "responder") == 0 ? RELAY__V1__ROLE__ROLE_RESPONDER
                                                      : RELAY__V1__ROLE__ROLE_UNSPECIFIED;
  q.remote_addr = c->remote;
  q.origin = (char *)(origin ? origin : "");
  q.relay_node_id = e->node_id;
  uint8_t fp[32];
  if (cm_stream_peer_fingerprint(c->st, fp)) {
    q.client_cert_sha256.data = fp;
    q.client_cert_sha256.len = sizeof fp;
  }
  /* No link: fail fast, as the call would. */
  if (rly_control_links(e->ctl) > 0)
    u->call = rly_ctl_call_start(w, NULL, TUN_PATH_VALIDATE, &q.base,
                                 &relay__v1__slot_decision__descriptor, on_validate, u);
  if (!u->call) {
    refuse(c, 503, "controller_unavailable", "no controller link is up");
    goto done;
  }
  OPENSSL_cleanse(&t, sizeof t);
  rly_conn_set_pending(c, u, upgrade_cancel);
  return;
done:
  OPENSSL_cleanse(&t, sizeof t);
  upgrade_free(u);
}

static void write_101(cm_stream *st, const rly_upgrade *u) {
  char resp[512];
  int n = snprintf(resp, sizeof resp,
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                   u->accept, u->protocol[0] ? "Sec-WebSocket-Protocol: " : "", u->protocol,
                   u->protocol[0] ? "\r\n" : "");
  cm_stream_write(st, resp, (size_t)n);
}

/* On the session's home worker: the slot is free and the session may be
 * had, or the upgrade is refused here (still an HTTP request). */
static void accept_peer(rly_conn *c, rly_upgrade *u) {
  rly_dp *dp = c->w->dp;
  rly_edge *e = c->w->edge;
  const slot_grant *g = &u->grant;
  int slot = g->slot;
  rly_session *x = sess_find(dp, u->id);
  if (x && (x->core.pair.held[slot] || x->peer[slot])) {
    refuse(c, 409, "slot_taken", "this slot is already connected");
    return;
  }
  uint64_t max_msg = g->max_message ? g->max_message : atomic_load(&e->max_message);
  if (!x) {
    if (!sess_reserve(e)) {
      refuse(c, 429, "too_many_sessions", "the relay's session limit is reached");
      return;
    }
    uint64_t wait_ms = g->peer_wait_ms ? g->peer_wait_ms : atomic_load(&e->peer_wait_ms);
    x = sess_new(dp, u->id, g->controller, wait_ms, g->expires_at_ms, max_msg);
    if (!x) {
      atomic_fetch_sub(&e->sessions, 1);
      refuse(c, 503, "overloaded", "out of memory");
      return;
    }
  }
  rly_peer *p = calloc(1, sizeof *p);
  if (!p) {
    sess_maybe_free(x);
    refuse(c, 503, "overloaded", "out of memory");
    return;
  }
  p->dp = dp;
  p->sess = x;
  p->slot = slot;
  p->last_rx_ms = cm_now_mono_ms();
  snprintf(p->remote, sizeof p->remote, "%s", c->remote);
  p->ip_held = c->ip_held;
  c->ip_held = false; /* the peer holds the count now */
  ws_parser_config pc = {.server = true, .max_message = x->max_message, .validate_utf8 = true};
  ws_parser_init(&p->parser, &pc);
  cm_buf leftover;
  cm_buf_init(&leftover, 0);
  cm_log(CM_LOG_INFO, "ws", "peer attached", CM_S("session", x->id), CM_S("slot", slot_name(slot)),
         CM_S("remote", c->remote), CM_I("worker", dp->w->index),
         CM_I("arrived_on", u->from_worker));
  p->st = rly_conn_detach(c, &leftover); /* c is gone from here on */
  cm_stream *st = p->st;
  cm_stream_set_cbs(st, &g_peer_cbs);
  cm_stream_set_data(st, p);
  /* Corked until the attach is reported: the controller hears of this
   * peer (through the control thread's mailbox, in order) before the
   * client can see its 101 and ask anything about the session.  Data held
   * for it follows the 101 in the same write. */
  cm_stream_cork(st);
  write_101(st, u);
  atomic_fetch_add(&dp->npeers, 1);
  rly_count(&dp->m.upgrades, 1);
  x->peer[slot] = p;
  rly_sess_attach(&x->core, slot, cm_now_mono_ms());
  if (cm_stream_paused(st)) cm_stream_resume(st);
  if (cm_buf_size(&leftover) > 0)
    peer_input(p, (uint8_t *)cm_buf_head(&leftover), cm_buf_size(&leftover), false);
  cm_buf_free(&leftover);
  cm_stream_uncork(st);
  /* Shutting down: a peer whose partner is here stays with it for the
   * grace period; a lone one hears 1001 at once and redials — to the
   * relay that accepts now (a handover, docs/DESIGN.md §16). */
  if (dp->w->shutting_down) {
    if (x->core.pair.state != RLY_PAIR_OPEN) kick_session(x, 1001, "relay shutting down");
    return;
  }
  /* A target session: the relay fills the responder slot itself. */
  if (g->target[0] && slot == RLY_SLOT_INITIATOR && x->peer[RLY_SLOT_INITIATOR] == p &&
      !x->peer[RLY_SLOT_RESPONDER] && e->start_target)
    e->start_target(dp->w, x->id, g->target, g->target_allow.v, g->target_allow.n);
}

/* A local peer: one end of a socketpair whose other end speaks WebSocket
 * as a client would (relay/target.c), so everything the data plane does
 * for a peer — pairing, counters, backpressure, kick, TTL, drain — holds
 * for it unchanged. */
int rly_dp_attach_fd(rly_wctx *w, const char *session_id, int slot, int fd, const char *label) {
  rly_dp *dp = w->dp;
  rly_session *x = sess_find(dp, session_id);
  if (!x || x->peer[slot] || x->core.pair.held[slot]) return -EBUSY;
  rly_peer *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  p->dp = dp;
  p->sess = x;
  p->slot = slot;
  p->last_rx_ms = cm_now_mono_ms();
  snprintf(p->remote, sizeof p->remote, "%s", label);
  ws_parser_config pc = {.server = true, .max_message = x->max_message, .validate_utf8 = true};
  ws_parser_init(&p->parser, &pc);
  cm_stream_opts o = {.high_watermark = (size_t)w->edge->cfg->ws_high_watermark};
  int err = 0;
  p->st = cm_stream_open_fd(w->loop, fd, true, &o, &g_peer_cbs, p, &err);
  if (!p->st) {
    free(p);
    return err ? err : -ENOMEM;
  }
  cm_log(CM_LOG_INFO, "ws", "peer attached", CM_S("session", x->id), CM_S("slot", slot_name(slot)),
         CM_S("remote", label), CM_I("worker", w->index), CM_I("arrived_on", w->index));
  atomic_fetch_add(&dp->npeers, 1);
  atomic_fetch_add(&w->edge->live, 1); /* released as any peer's, when it closes */
  x->peer[slot] = p;
  rly_sess_attach(&x->core, slot, cm_now_mono_ms());
  return 0;
}

void rly_dp_kick(rly_wctx *w, const char *session_id, uint16_t code, const char *reason) {
  rly_session *x = sess_find(w->dp, session_id);
  if (x) kick_session(x, code, reason);
}

/* ---- to the session's home --------------------------------------------------------------- */

static void on_moved(rly_conn *c, void *ud) {
  rly_upgrade *u = ud;
  u->conn = c;
  rly_conn_clear_pending(c, u);
  accept_peer(c, u);
  upgrade_free(u);
}

/* The two peers of a session meet on its home worker: an upgrade that
 * landed elsewhere moves there now, validated and before its 101, so no
 * frame has flowed yet.  This is the only place a connection changes
 * worker. */
static void to_home(rly_conn *c, rly_upgrade *u) {
  rly_wctx *w = c->w;
  size_t home = rly_edge_home(w->edge, u->id);
  u->from_worker = w->index;
  if (home == w->index) {
    accept_peer(c, u);
    upgrade_free(u);
    return;
  }
  /* Until it arrives, the move is the connection's pending work: if the
   * connection fails first, u is freed with it. */
  rly_conn_set_pending(c, u, upgrade_cancel);
  rly_count(&w->dp->m.moves, 1);
  if (rly_conn_move(c, w->edge->workers[home], on_moved, u) != 0) {
    rly_conn_clear_pending(c, u);
    refuse(c, 503, "overloaded", "the connection could not be handed over");
    upgrade_free(u);
  }
}

/* ---- commands, sweep, shutdown ---------------------------------------------------------- */

static void kick_session(rly_session *x, uint16_t code, const char *reason) {
  rly_count(&x->dp->m.kicks, 1);
  cm_log(CM_LOG_INFO, "ws", "session kicked", CM_S("session", x->id), CM_I("code", code),
         CM_S("reason", reason));
  rly_sess_kick(&x->core, code, reason);
  sess_maybe_free(x);
}

void rly_dp_close_all(rly_dp *dp, uint16_t code, const char *reason) {
  for (cm_list *n = dp->sessions.next; n != &dp->sessions;) {
    rly_session *x = cm_container_of(n, rly_session, node);
    n = n->next;
    rly_sess_kick(&x->core, code, reason);
    sess_maybe_free(x);
  }
}

void rly_dp_on_kick(rly_wctx *w, const char *session_id, uint16_t code, const char *reason) {
  rly_session *x = sess_find(w->dp, session_id);
  if (x) kick_session(x, code, reason);
}

/* A controller (re)linked: tell it which slots this worker holds, so its
 * view survives its own restart. */
void rly_dp_on_link_up(rly_wctx *w, const char *controller) {
  rly_dp *dp = w->dp;
  for (cm_list *n = dp->sessions.next; n != &dp->sessions; n = n->next) {
    rly_session *x = cm_container_of(n, rly_session, node);
    if (strcmp(x->controller, controller) != 0) continue;
    for (int slot = 0; slot < 2; slot++)
      if (x->core.pair.held[slot])
        send_event(x, RELAY__V1__SESSION_EVENT__TYPE__ATTACH, slot, 0, NULL);
  }
}

/* --ping-idle: a peer silent for the idle time is pinged, and closed 1001
 * if it stays silent another period.  A peer whose reading the relay
 * paused (its counterpart is slow, or the hold buffer is full) is not
 * silent, we are not listening: it is left alone until reading resumes. */
static void idle_ping(rly_dp *dp, rly_peer *p, uint64_t now) {
  uint64_t idle = (uint64_t)dp->w->edge->cfg->ping_idle_ms;
  if (!idle || !p || p->closing || p->paused || now - p->last_rx_ms < idle) return;
  if (!p->ping_sent) {
    p->ping_sent = true;
    p->last_rx_ms = now; /* the pong must come within another idle period */
    ws_send_frame(p, WS_PING, (const uint8_t *)"relay", 5);
    return;
  }
  cm_log(CM_LOG_INFO, "ws", "peer idle; closing", CM_S("session", p->sess ? p->sess->id : ""),
         CM_S("slot", slot_name(p->slot)));
  peer_close(p, 1001, "idle timeout");
}

static void on_tick(uv_timer_t *t) {
  rly_dp *dp = t->data;
  rly_edge *e = dp->w->edge;
  uint64_t now = cm_now_mono_ms();
  int64_t wall = cm_now_wall_ms();
  uint64_t deadline = atomic_load(&e->drain_deadline_ms);
  if (atomic_load(&e->draining) && deadline && now >= deadline && !cm_list_empty(&dp->sessions))
    rly_dp_close_all(dp, 1001, "relay draining");
  for (cm_list *n = dp->sessions.next; n != &dp->sessions;) {
    rly_session *x = cm_container_of(n, rly_session, node);
    n = n->next;
    rly_sess_tick(&x->core, now, wall); /* deadlines, and changed counters reported */
    for (int slot = 0; slot < 2; slot++)
      idle_ping(dp, x->peer[slot], now);
    sess_maybe_free(x);
  }
}

rly_dp *rly_dp_new(rly_wctx *w) {
  rly_dp *dp = calloc(1, sizeof *dp);
  if (!dp) return NULL;
  dp->w = w;
  cm_list_init(&dp->sessions);
  uv_timer_init(w->loop, &dp->tick);
  dp->tick.data = dp;
  uv_timer_start(&dp->tick, on_tick, TICK_MS, TICK_MS);
  return dp;
}

void rly_dp_shutdown(rly_dp *dp) {
  /* A lone peer cannot be paired any more: no new connections. */
  for (cm_list *n = dp->sessions.next; n != &dp->sessions;) {
    rly_session *x = cm_container_of(n, rly_session, node);
    n = n->next;
    if (x->core.pair.state != RLY_PAIR_OPEN) kick_session(x, 1001, "relay shutting down");
  }
}

void rly_dp_close(rly_dp *dp, uv_close_cb closed) {
  uv_timer_stop(&dp->tick);
  uv_close((uv_handle_t *)&dp->tick, closed);
}

void rly_dp_free(rly_dp *dp) {
  if (!dp) return;
  free(dp->sess_tab);
  free(dp);
}

size_t rly_dp_peers(const rly_dp *dp) { return atomic_load(&dp->npeers); }
size_t rly_dp_sessions(const rly_dp *dp) { return atomic_load(&dp->nsessions); }

void rly_dp_metrics_text(rly_edge *e, cm_buf *b) {
  /* Every worker's counters, each read where its owner left it. */
  rly_dp_metrics m;
  memset(&m, 0, sizeof m);
  size_t peers = 0;
  rly_counter *sum = (rly_counter *)&m;
  for (size_t i = 0; i < e->nworkers; i++) {
    const rly_dp *dp = e->workers[i]->dp;
    const rly_counter *c = (const rly_counter *)&dp->m;
    for (size_t k = 0; k < sizeof m / sizeof(rly_counter); k++)
      rly_count(&sum[k], rly_counter_get(&c[k]));
    peers += rly_dp_peers(dp);
  }
#define C(name, help, v) rly_metric(b, name, help, true, rly_counter_get(&(v)))
#define G(name, help, v) rly_metric(b, name, help, false, (uint64_t)(v))
  G("sessions", "Sessions with at least one peer on this relay.", atomic_load(&e->sessions));
  G("peers", "Connected WebSocket peers.", peers);
  G("controller_links", "Live controller links.", rly_control_links(e->ctl));
  C("ws_upgrades_total", "WebSocket upgrades accepted.", m.upgrades);
  C("ws_refused_total", "Upgrades refused with a 4xx status.", m.refused_4xx);
  C("ws_unavailable_total", "Upgrades refused with a 5xx status (no usable controller).",
    m.refused_503);
  C("ws_protocol_errors_total", "Peers closed for protocol errors.", m.protocol_errors);
  C("ws_too_big_total", "Peers closed for an oversized message (1009).", m.too_big);
  C("ws_peer_wait_expired_total", "Lone peers closed after peer_wait.", m.peer_wait_expired);
  C("ws_kicks_total", "Sessions closed by the controller.", m.kicks);
  C("ws_moves_total", "Upgrades moved to their session's home worker.", m.moves);
  C("ws_messages_total", "Messages forwarded.", m.messages);
  C("ws_bytes_in_total", "Payload bytes received from peers.", m.bytes_in);
  C("ws_bytes_out_total", "Payload bytes sent to peers.", m.bytes_out);
#undef C
#undef G
}
