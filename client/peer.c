/*
 * peer.c — the byte-stream peers (raw, tcp-listen, tcp-dial) and the
 * life cycle every peer shares: start, keep (re-join with backoff),
 * stop, and the one result it ends with.  See client.h for what they do;
 * udp.c has the datagram pumps.
 *
 * A tunnel is one WebSocket (rc_ws) and one local end (rc_io).  Each side
 * pauses the other when its output queue passes the high watermark and
 * resumes it on drain.  The tunnel ends when both have ended; how it
 * ended (the first local failure, else the WebSocket's end) becomes the
 * peer's result, or, with keep, the reason for the next join's delay.
 */
#include "client/peer.h"
#include "client/pubsub.h"
#include "client/pump.h"
#include "client/udp.h"
#include "websocket/websocket.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
/* A tunnel that heard from the peer, or was open this long, worked: the
 * next join goes at once.  Others back off. */
#define STABLE_MS 2000
/* tcp-listen takes one connection at a time: a short queue is plenty. */
#define LISTEN_BACKLOG 16

typedef struct tunnel {
  rc_peer *p;
  rc_ws *ws;
  rc_io *io;
  bool ws_opened;
  bool peer_seen;      /* a message came from the other end */
  bool local_eof;      /* local input ended */
  uint16_t want_close; /* the close the local side asks for, sent once the peer was seen */
  rc_ws_end end;
  bool have_end;
  int io_err;
  char io_msg[160];
  uint64_t opened_at;
} tunnel;

struct rc_peer {
  uv_loop_t *loop;
  rc_peer_opts o;
  rc_url url;
  char *token; /* wiped when freed */
  char *listen, *target;
  rc_peer_done_cb done;
  rc_peer_result res;
  bool have_res;
  uv_tcp_t listener;
  bool listener_open, pending_conn;
  uv_timer_t retry;
  uint32_t backoff_ms;
  tunnel *t;
  rc_udp *udp;
  rc_pubsub *pubsub;
  bool stopping, finished;
  int handles; /* listener, retry timer */
};

static void next_tunnel(rc_peer *p);
static void peer_end(rc_peer *p);
static void on_handle_closed(uv_handle_t *h);

/* ---- results ------------------------------------------------------------------------ */

/* Refusals that a retry would only repeat. */
bool rc_peer_refusal_permanent(const rc_ws_end *e) {
  if (e->kind != RC_WS_REFUSED) return false;
  int s = e->http_status;
  return s == 400 || s == 401 || s == 403 || s == 404 || s == 410 || s == 426;
}

void rc_peer_result_from_end(rc_peer_result *r, const rc_ws_end *e) {
  r->status = 1;
  r->http_status = 0;
  r->close_code = 0;
  switch (e->kind) {
  case RC_WS_REFUSED:
    r->http_status = e->http_status;
    snprintf(r->message, sizeof r->message, "refused by the relay: HTTP %d: %s", e->http_status,
             e->reason);
    break;
  case RC_WS_CLOSED:
    r->close_code = e->code;
    if (e->code == WS_CLOSE_NORMAL) {
      r->status = 0;
      snprintf(r->message, sizeof r->message, "closed (1000%s%s)", *e->reason ? ": " : "",
               e->reason);
    } else {
      snprintf(r->message, sizeof r->message, "closed %s: %u%s%s",
               e->by_peer ? "by the relay" : "after our close", (unsigned)e->code,
               *e->reason ? " " : "", e->reason);
    }
    break;
  default:
    r->close_code = e->code;
    snprintf(r->message, sizeof r->message, "%s", e->reason);
    break;
  }
}

void rc_peer_result_end(rc_peer_result *r, const rc_ws_end *end, const char *failure) {
  *r = (rc_peer_result){.status = 1};
  if (end) rc_peer_result_from_end(r, end);
  if (failure && failure[0]) {
    r->status = 1;
    snprintf(r->message, sizeof r->message, "%s", failure);
  } else if (!end) {
    r->status = 0;
    snprintf(r->message, sizeof r->message, "stopped");
  }
}

static void record_tunnel(rc_peer *p, const tunnel *t) {
  if (t->io_err) {
    p->res.status = 1;
    p->res.http_status = 0;
    p->res.close_code = t->have_end ? t->end.code : 0;
    snprintf(p->res.message, sizeof p->res.message, "%s", t->io_msg);
  } else if (t->have_end) {
    rc_peer_result_from_end(&p->res, &t->end);
  }
  p->have_res = true;
}

/* ---- the tunnel --------------------------------------------------------------------- */

static void tunnel_maybe_done(tunnel *t) {
  if (t->ws || t->io) return;
  rc_peer *p = t->p;
  record_tunnel(p, t);
  uint64_t lived = t->ws_opened ? cm_now_mono_ms() - t->opened_at : 0;
  bool perm = t->have_end && rc_peer_refusal_permanent(&t->end);
  bool t_peer_seen = t->peer_seen;
  cm_log(CM_LOG_INFO, "peer", "tunnel ended", CM_S("how", p->res.message),
         CM_I("bytes_up", p->res.stats.bytes_up), CM_I("bytes_down", p->res.stats.bytes_down));
  p->t = NULL;
  free(t);
  if (!p->o.keep || p->stopping || perm || p->o.mode == RC_PEER_RAW) {
    peer_end(p);
    return;
  }
  bool worked = t_peer_seen || lived >= STABLE_MS;
  p->backoff_ms = worked          ? 0
                  : p->backoff_ms ? CM_MIN(p->backoff_ms * 2, BACKOFF_MAX_MS)
                                  : BACKOFF_MIN_MS;
  next_tunnel(p);
}

/* A close the local side asks for (its input ended: 1000; it failed:
 * 1011) waits until the other end has shown itself: the relay drops a
 * lone peer's held data when it leaves, and a peer that arrives later
 * would not learn why. */
static void maybe_close(tunnel *t) {
  if (!t->want_close || !t->peer_seen || !t->ws || !rc_ws_is_open(t->ws)) return;
  rc_ws_close(t->ws, t->want_close, t->want_close == WS_CLOSE_NORMAL ? NULL : t->io_msg);
}

static void io_on_read(rc_io *io, uint8_t *data, size_t len) {
  tunnel *t = rc_io_get_data(io);
  if (!t->ws) return;
  int rc = rc_ws_send_headroom(t->ws, WS_BINARY, data, len, true);
  if (rc >= 0) {
    t->p->res.stats.bytes_up += len;
    t->p->res.stats.messages_up++;
  }
  if (rc != 0) rc_io_pause(io); /* 1: above the watermark; < 0: closing */
}

static void io_on_eof(rc_io *io) {
  tunnel *t = rc_io_get_data(io);
  t->local_eof = true;
  rc_io_pause(io);
  if (t->p->o.mode == RC_PEER_RAW && t->p->o.keep_open) return;
  if (!t->want_close) t->want_close = WS_CLOSE_NORMAL;
  maybe_close(t);
}

static void io_on_drain(rc_io *io) {
  tunnel *t = rc_io_get_data(io);
  if (t->ws) rc_ws_resume(t->ws);
}

static void io_on_done(rc_io *io, int err, const char *msg) {
  tunnel *t = rc_io_get_data(io);
  t->io = NULL;
  if (err) {
    t->io_err = err;
    snprintf(t->io_msg, sizeof t->io_msg, "%s", msg ? msg : "local connection failed");
    if (t->ws && rc_ws_is_open(t->ws)) {
      if (!t->peer_seen)
        cm_log(CM_LOG_WARN, "peer", "local side failed; waiting to tell the peer",
               CM_S("error", t->io_msg));
      t->want_close = WS_CLOSE_INTERNAL;
      maybe_close(t);
    } else if (t->ws && !rc_ws_is_open(t->ws) && !t->ws_opened) {
      rc_ws_abort(t->ws); /* still joining: nobody to tell */
      t->ws = NULL;
    }
  }
  tunnel_maybe_done(t);
}

static const rc_io_cbs g_io_cbs = {
    .on_read = io_on_read, .on_eof = io_on_eof, .on_drain = io_on_drain, .on_done = io_on_done};

static rc_io_opts io_opts(const rc_peer *p) { return (rc_io_opts){.high_watermark = p->o.buffer}; }

static void ws_on_open(rc_ws *ws) {
  tunnel *t = rc_ws_get_data(ws);
  rc_peer *p = t->p;
  t->ws_opened = true;
  t->opened_at = cm_now_mono_ms();
  cm_log(CM_LOG_INFO, "peer", "joined the session");
  /* Presence: an empty message, nothing to a byte stream. */
  rc_ws_send(ws, WS_BINARY, NULL, 0, true);
  if (p->o.mode == RC_PEER_TCP_DIAL) {
    rc_io_opts io = io_opts(p);
    t->io = rc_io_dial(p->loop, p->target, &io, &g_io_cbs, t);
    if (!t->io) {
      t->io_err = -EINVAL;
      snprintf(t->io_msg, sizeof t->io_msg, "invalid target %s", p->target);
      rc_ws_close(ws, WS_CLOSE_INTERNAL, "invalid target");
      return;
    }
  }
  if (t->io) rc_io_resume(t->io);
}

static void ws_on_message(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin) {
  CM_UNUSED(opcode);
  tunnel *t = rc_ws_get_data(ws);
  t->peer_seen = true;
  if (fin) t->p->res.stats.messages_down++;
  if (len && t->io) {
    t->p->res.stats.bytes_down += len;
    if (rc_io_write(t->io, data, len) != 0) rc_ws_pause(ws);
  }
  maybe_close(t);
}

static void ws_on_drain(rc_ws *ws) {
  tunnel *t = rc_ws_get_data(ws);
  if (t->io && !t->local_eof) rc_io_resume(t->io);
}

static void ws_on_close(rc_ws *ws, const rc_ws_end *end) {
  tunnel *t = rc_ws_get_data(ws);
  t->ws = NULL;
  t->end = *end;
  t->have_end = true;
  if (t->io) {
    /* A clean end lets the local side finish; raw output is always
     * written out (a pipe has no reset to say anything else). */
    bool clean = end->kind == RC_WS_CLOSED && end->code == WS_CLOSE_NORMAL;
    rc_io_finish(t->io, clean || t->p->o.mode == RC_PEER_RAW);
  }
  tunnel_maybe_done(t);
}

static const rc_ws_cbs g_ws_cbs = {ws_on_open, ws_on_message, ws_on_drain, ws_on_close};

rc_ws *rc_peer_join(rc_peer *p, const rc_ws_cbs *cbs, void *ud, char *err, size_t errlen) {
  rc_ws_opts o = p->o.ws;
  o.url = &p->url;
  o.tls = p->o.tls;
  o.token = p->token;
  if (!o.high_watermark) o.high_watermark = p->o.buffer;
  p->res.stats.tunnels++;
  return rc_ws_connect(p->loop, &o, cbs, ud, err, errlen);
}

static tunnel *tunnel_new(rc_peer *p) {
  tunnel *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->p = p;
  p->t = t;
  return t;
}

/* Joins for t (whose io, if any, is made); on a failure to even start,
 * the tunnel ends with it. */
static void tunnel_join(tunnel *t) {
  rc_peer *p = t->p;
  char err[200];
  t->ws = rc_peer_join(p, &g_ws_cbs, t, err, sizeof err);
  if (t->ws) return;
  t->io_err = -EINVAL;
  snprintf(t->io_msg, sizeof t->io_msg, "cannot join: %s", err);
  p->stopping = true;
  if (t->io)
    rc_io_finish(t->io, false);
  else
    tunnel_maybe_done(t);
}

static void out_of_memory(rc_peer *p) {
  p->res.status = 1;
  snprintf(p->res.message, sizeof p->res.message, "out of memory");
  p->have_res = true;
  p->stopping = true;
  peer_end(p);
}

static void dial_tunnel(rc_peer *p) {
  tunnel *t = tunnel_new(p);
  if (!t) {
    out_of_memory(p);
    return;
  }
  tunnel_join(t);
}

/* ---- tcp-listen ------------------------------------------------------------------------ */

static void accept_pending(rc_peer *p) {
  if (!p->pending_conn || p->t || p->stopping) return;
  p->pending_conn = false;
  tunnel *t = tunnel_new(p);
  if (!t) {
    out_of_memory(p);
    return;
  }
  int err;
  rc_io_opts o = io_opts(p);
  t->io = rc_io_accept((uv_stream_t *)&p->listener, &o, &g_io_cbs, t, &err);
  if (!t->io) {
    cm_log(CM_LOG_WARN, "peer", "accept failed", CM_S("error", uv_strerror(err)));
    p->t = NULL;
    free(t);
    return;
  }
  cm_log(CM_LOG_INFO, "peer", "connection accepted");
  if (!p->o.keep) {
    /* One connection only: later ones are refused, not queued. */
    p->listener_open = false;
    uv_close((uv_handle_t *)&p->listener, on_handle_closed);
  }
  tunnel_join(t);
}

static void on_connection(uv_stream_t *server, int status) {
  rc_peer *p = server->data;
  if (status < 0) {
    cm_log(CM_LOG_WARN, "peer", "listener error", CM_S("error", uv_strerror(status)));
    return;
  }
  /* Left pending (libuv stops watching the listener) until this tunnel
   * is over: later connections wait in the backlog. */
  p->pending_conn = true;
  accept_pending(p);
}

/* ---- life cycle -------------------------------------------------------------------------- */

static void on_retry(uv_timer_t *timer) {
  rc_peer *p = timer->data;
  if (!p->stopping) dial_tunnel(p);
}

static void next_tunnel(rc_peer *p) {
  if (p->o.mode == RC_PEER_TCP_LISTEN) {
    accept_pending(p);
  } else if (p->backoff_ms) {
    cm_log(CM_LOG_INFO, "peer", "re-joining after a pause", CM_I("ms", p->backoff_ms));
    uv_timer_start(&p->retry, on_retry, p->backoff_ms, 0);
  } else {
    dial_tunnel(p);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  rc_peer *p = h->data;
  if (--p->handles > 0) return;
  rc_peer_result res = p->res;
  rc_peer_done_cb done = p->done;
  void *ud = p->o.ud;
  if (p->token) cm_secret_free(p->token);
  free(p->listen);
  free(p->target);
  free(p);
  if (done) done(ud, &res);
}

/* Everything the peer holds is gone or going: close the handles; the
 * result is reported once they are closed. */
static void peer_end(rc_peer *p) {
  if (p->finished || p->t || p->udp || p->pubsub) return;
  p->finished = true;
  if (!p->have_res) snprintf(p->res.message, sizeof p->res.message, "stopped");
  if (p->listener_open) {
    p->listener_open = false;
    uv_close((uv_handle_t *)&p->listener, on_handle_closed);
  }
  uv_close((uv_handle_t *)&p->retry, on_handle_closed);
}

void rc_peer_stop(rc_peer *p) {
  if (p->stopping) return;
  p->stopping = true;
  uv_timer_stop(&p->retry);
  if (p->udp) {
    rc_udp_stop(p->udp);
    return;
  }
  if (p->pubsub) {
    rc_pubsub_stop(p->pubsub);
    return;
  }
  tunnel *t = p->t;
  if (!t) {
    peer_end(p);
    return;
  }
  if (t->ws && rc_ws_is_open(t->ws)) {
    rc_ws_close(t->ws, WS_CLOSE_NORMAL, NULL);
  } else if (t->ws) {
    rc_ws_abort(t->ws); /* still joining: nothing to say goodbye on */
    t->ws = NULL;
    if (!t->have_end) {
      t->have_end = true;
      t->end = (rc_ws_end){.kind = RC_WS_CLOSED, .code = WS_CLOSE_NORMAL};
      snprintf(t->end.reason, sizeof t->end.reason, "stopped before the relay answered");
    }
    if (t->io)
      rc_io_finish(t->io, false);
    else
      tunnel_maybe_done(t);
  }
}

void rc_addr_text(const struct sockaddr_storage *ss, char *out, size_t outlen) {
  char ip[64] = "?";
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    uv_ip6_name(a, ip, sizeof ip);
    snprintf(out, outlen, "[%s]:%d", ip, ntohs(a->sin6_port));
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    uv_ip4_name(a, ip, sizeof ip);
    snprintf(out, outlen, "%s:%d", ip, ntohs(a->sin_port));
  }
}

/* Called by udp.c and pubsub.c when their pump has ended. */
void rc_peer_pump_done(rc_peer *p, const rc_peer_result *r) {
  rc_peer_stats st = p->res.stats;
  p->res = *r;
  p->res.stats.tunnels = st.tunnels;
  p->have_res = true;
  p->udp = NULL;
  p->pubsub = NULL;
  peer_end(p);
}

rc_peer_stats *rc_peer_stats_of(rc_peer *p) { return &p->res.stats; }
uv_loop_t *rc_peer_loop(rc_peer *p) { return p->loop; }
const rc_peer_opts *rc_peer_opts_of(rc_peer *p) { return &p->o; }
const char *rc_peer_listen_addr(rc_peer *p) { return p->listen; }
const char *rc_peer_target(rc_peer *p) { return p->target; }

static int start_listener(rc_peer *p, char *err, size_t errlen) {
  int rc = cm_tcp_bind(p->loop, &p->listener, p->listen, err, errlen);
  if (rc != 0) return rc;
  /* Counted from here: should listen fail, the listener inside p closes
   * before p goes (libuv runs close callbacks last-closed first). */
  p->listener.data = p;
  p->handles++;
  if ((rc = uv_listen((uv_stream_t *)&p->listener, LISTEN_BACKLOG, on_connection)) != 0) {
    cm_seterr(err, errlen, "listen on %s: %s", p->listen, uv_strerror(rc));
    uv_close((uv_handle_t *)&p->listener, on_handle_closed);
    return rc;
  }
  p->listener_open = true;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char addr[80];
  uv_tcp_getsockname(&p->listener, (struct sockaddr *)&ss, &len);
  rc_addr_text(&ss, addr, sizeof addr);
  if (p->o.on_listening) p->o.on_listening(p->o.ud, addr);
  return 0;
}

static bool opts_ok(const rc_peer_opts *o, char *err, size_t errlen) {
  bool needs_listen = o->mode == RC_PEER_TCP_LISTEN || o->mode == RC_PEER_UDP_LISTEN;
  bool needs_target = o->mode == RC_PEER_TCP_DIAL || o->mode == RC_PEER_UDP_DIAL;
  char host[RC_HOST_MAX];
  uint16_t port;
  if (!o->url || !o->url->websocket) {
    cm_seterr(err, errlen, "a session URL (ws or wss) is needed");
    return false;
  }
  if (needs_listen && !o->listen) {
    cm_seterr(err, errlen, "--listen ADDR:PORT is needed");
    return false;
  }
  if (needs_target && (!o->target || rc_hostport_split(o->target, host, sizeof host, &port) != 0)) {
    cm_seterr(err, errlen, "--target HOST:PORT is needed (IPv6 in brackets)");
    return false;
  }
  if (o->mode < RC_PEER_RAW || o->mode > RC_PEER_PUBSUB) {
    cm_seterr(err, errlen, "unknown peer mode");
    return false;
  }
  return true;
}

static char *dup_secret(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = cm_secret_alloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* The local end of raw: standard input and output. */
static int start_raw(rc_peer *p, char *err, size_t errlen) {
  tunnel *t = tunnel_new(p);
  if (!t) {
    cm_seterr(err, errlen, "out of memory");
    return -ENOMEM;
  }
  rc_io_opts o = io_opts(p);
  t->io = rc_io_stdio(p->loop, p->o.in_fd, p->o.out_fd, &o, &g_io_cbs, t, err, errlen);
  if (!t->io) {
    p->t = NULL;
    free(t);
    return -EBADF;
  }
  return 0;
}

rc_peer *rc_peer_start(uv_loop_t *loop, const rc_peer_opts *o, rc_peer_done_cb done, char *err,
                       size_t errlen) {
  if (!opts_ok(o, err, errlen)) return NULL;
  rc_peer *p = calloc(1, sizeof *p);
  if (!p) {
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  p->loop = loop;
  p->o = *o;
  p->url = *o->url;
  p->done = done;
  p->token = o->token ? dup_secret(o->token) : NULL;
  p->listen = o->listen ? strdup(o->listen) : NULL;
  p->target = o->target ? strdup(o->target) : NULL;
  p->o.token = p->o.listen = p->o.target = NULL;
  p->o.url = NULL;
  if (!p->o.buffer) p->o.buffer = 256 * 1024;
  uv_timer_init(loop, &p->retry);
  p->retry.data = p;
  p->handles = 1;
  int rc = 0;
  switch (o->mode) {
  case RC_PEER_TCP_LISTEN: rc = start_listener(p, err, errlen); break;
  case RC_PEER_RAW: rc = start_raw(p, err, errlen); break;
  case RC_PEER_UDP_LISTEN:
  case RC_PEER_UDP_DIAL:
    p->udp = rc_udp_start(p, err, errlen);
    rc = p->udp ? 0 : -EINVAL;
    break;
  case RC_PEER_PUBSUB:
    p->pubsub = rc_pubsub_start(p, err, errlen);
    rc = p->pubsub ? 0 : -EINVAL;
    break;
  default: break;
  }
  /* pubsub.c took copies of its strings: nothing points into o any more. */
  p->o.redis = p->o.session = p->o.redis_user = p->o.redis_password = p->o.prefix = NULL;
  if (rc != 0) {
    p->done = NULL; /* the caller hears of it from our NULL, not from done */
    uv_close((uv_handle_t *)&p->retry, on_handle_closed);
    return NULL;
  }
  if (o->mode == RC_PEER_RAW)
    tunnel_join(p->t);
  else if (o->mode == RC_PEER_TCP_DIAL)
    dial_tunnel(p);
  return p;
}
