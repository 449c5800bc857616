/*
 * link.c — transport glue shared by both ends of the controller link (see
 * link.h).  Output: nghttp2_session_mem_send is drained into the stream
 * until its write queue passes the high watermark; on_drain resumes.  Input
 * goes straight into nghttp2_session_mem_recv.  Keepalive (see link.h): a
 * link silent for the ping interval is probed (a PING, or the owner's own
 * probe); one silent, not one byte, for the ping timeout is dropped at that
 * moment, to the timer's precision rather than at the next tick.
 */
#include "tunnel/link.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void tun_link_config_fill(tun_link_config *c) {
  if (!c->ping_interval_ms) c->ping_interval_ms = 10000;
  if (!c->ping_timeout_ms) c->ping_timeout_ms = 30000;
  if (!c->handshake_timeout_ms) c->handshake_timeout_ms = 10000;
  if (!c->max_message) c->max_message = 4u << 20;
  if (!c->max_event_queue) c->max_event_queue = 1u << 20;
}

bool tun_hdr_is(const uint8_t *name, size_t len, const char *lit) {
  return strlen(lit) == len && memcmp(name, lit, len) == 0;
}

static void on_timer_closed(uv_handle_t *h) {
  tun_link *l = h->data;
  l->hooks->on_free(l);
}

static uint64_t next_due(const tun_link *l) {
  uint64_t due = l->last_rx_ms + l->timeout_ms; /* silence: drop */
  if (l->probe_ms <= l->last_rx_ms)             /* no probe outstanding */
    due = CM_MIN(due, l->last_rx_ms + l->interval_ms);
  if (l->wake_ms) due = CM_MIN(due, l->wake_ms);
  return due;
}

static void on_timer(uv_timer_t *t);

static void arm(tun_link *l) {
  if (l->closed || !l->started) return;
  uint64_t now = cm_now_mono_ms(), due = next_due(l);
  uv_timer_start(&l->timer, on_timer, due > now ? due - now : 0, 0);
}

static void send_probe(tun_link *l) {
  l->probe_ms = cm_now_mono_ms();
  if (l->hooks->probe)
    l->hooks->probe(l);
  else
    nghttp2_submit_ping(l->h2, NGHTTP2_FLAG_NONE, NULL);
  tun_link_pump(l);
}

static void on_timer(uv_timer_t *t) {
  tun_link *l = t->data;
  if (l->closing || !l->h2) return;
  uint64_t now = cm_now_mono_ms();
  if (l->wake_ms && now >= l->wake_ms) {
    l->wake_ms = 0;
    if (l->hooks->on_wake) l->hooks->on_wake(l);
    if (l->closing || !l->h2) return;
  }
  uint64_t silent = now - l->last_rx_ms;
  if (silent >= l->timeout_ms) {
    cm_log(CM_LOG_WARN, "tunnel", "link silent; dropping it", CM_S("peer", l->peer),
           CM_I("silent_ms", silent));
    tun_link_abort(l, "keepalive timeout");
    return;
  }
  bool answered = l->probe_ms <= l->last_rx_ms;
  if (answered && silent >= l->interval_ms) send_probe(l);
  if (!l->closing) arm(l);
}

void tun_link_init(tun_link *l, uv_loop_t *loop, const tun_link_config *cfg,
                   const tun_link_hooks *hooks) {
  l->cfg = *cfg;
  tun_link_config_fill(&l->cfg);
  l->hooks = hooks;
  l->interval_ms = l->cfg.ping_interval_ms;
  l->timeout_ms = l->cfg.ping_timeout_ms;
  uv_timer_init(loop, &l->timer);
  l->timer.data = l;
  l->last_rx_ms = cm_now_mono_ms();
  snprintf(l->peer, sizeof l->peer, "?");
}

void tun_link_start(tun_link *l) {
  l->last_rx_ms = cm_now_mono_ms();
  l->started = true;
  arm(l);
}

void tun_link_set_interval(tun_link *l, uint32_t interval_ms) {
  l->interval_ms = interval_ms;
  uint32_t slack = l->cfg.ping_timeout_ms > l->cfg.ping_interval_ms
                       ? l->cfg.ping_timeout_ms - l->cfg.ping_interval_ms
                       : l->cfg.ping_timeout_ms;
  l->timeout_ms = CM_MAX(l->cfg.ping_timeout_ms, interval_ms + slack);
  arm(l);
}

bool tun_link_overdue(const tun_link *l) {
  return l->probe_ms > l->last_rx_ms && cm_now_mono_ms() - l->probe_ms >= TUN_PROBE_OVERDUE_MS;
}

void tun_link_wake_at(tun_link *l, uint64_t at_ms) {
  l->wake_ms = at_ms ? at_ms : 1;
  arm(l);
}

void tun_link_discard(tun_link *l) {
  l->closed = true;
  uv_close((uv_handle_t *)&l->timer, on_timer_closed);
}

void tun_link_pump(tun_link *l) {
  /* nghttp2 must not be re-entered from its own callbacks; the caller of
   * mem_recv pumps once it returns. */
  if (!l->h2 || l->closed || !l->st || l->in_h2) return;
  while (!cm_stream_above_high(l->st)) {
    const uint8_t *data;
    l->in_h2 = true;
    ssize_t n = nghttp2_session_mem_send(l->h2, &data);
    l->in_h2 = false;
    if (n < 0) {
      tun_link_abort(l, nghttp2_strerror((int)n));
      return;
    }
    if (n == 0) break;
    if (cm_stream_write(l->st, data, (size_t)n) != 0) return; /* stream closes itself */
  }
  if (!nghttp2_session_want_read(l->h2) && !nghttp2_session_want_write(l->h2) &&
      cm_stream_write_queued(l->st) == 0)
    tun_link_close(l, l->why[0] ? l->why : "session finished");
}

static void s_on_open(cm_stream *s) {
  tun_link *l = cm_stream_get_data(s);
  snprintf(l->peer, sizeof l->peer, "%s", cm_stream_peer_addr(s));
  if (l->hooks->on_open(l) != 0) {
    tun_link_abort(l, l->why[0] ? l->why : "refused");
    return;
  }
  tun_link_pump(l);
}

static void s_on_read(cm_stream *s, uint8_t *data, size_t len) {
  tun_link *l = cm_stream_get_data(s);
  if (!l->h2 || l->closed) return;
  /* An answered probe moves the next deadline from silence to the next
   * probe, which is earlier: the timer must learn of it.  Other reads only
   * push deadlines later, which the timer finds out lazily. */
  bool answered = l->probe_ms > l->last_rx_ms;
  l->last_rx_ms = cm_now_mono_ms();
  if (answered) arm(l);
  l->in_h2 = true;
  ssize_t n = nghttp2_session_mem_recv(l->h2, data, len);
  l->in_h2 = false;
  if (l->closed) return;
  if (n < 0) {
    cm_log(CM_LOG_WARN, "tunnel", "HTTP/2 protocol error", CM_S("peer", l->peer),
           CM_S("error", nghttp2_strerror((int)n)));
    tun_link_abort(l, "HTTP/2 protocol error");
    return;
  }
  tun_link_pump(l);
}

static void s_on_drain(cm_stream *s) { tun_link_pump(cm_stream_get_data(s)); }

static void s_on_close(cm_stream *s, int err, const char *msg) {
  tun_link *l = cm_stream_get_data(s);
  l->closed = true;
  l->st = NULL;
  uv_timer_stop(&l->timer);
  const char *why = l->why[0] ? l->why : msg;
  l->hooks->on_closed(l, err, why);
  if (l->h2) nghttp2_session_del(l->h2);
  l->h2 = NULL;
  uv_close((uv_handle_t *)&l->timer, on_timer_closed);
}

static const cm_stream_cbs g_link_cbs = {
    .on_open = s_on_open, .on_read = s_on_read, .on_drain = s_on_drain, .on_close = s_on_close};

const cm_stream_cbs *tun_link_stream_cbs(void) { return &g_link_cbs; }

void tun_link_close(tun_link *l, const char *why) {
  if (l->closing || !l->st) return;
  l->closing = true;
  if (!l->why[0]) snprintf(l->why, sizeof l->why, "%s", why);
  if (l->h2) {
    nghttp2_session_terminate_session(l->h2, NGHTTP2_NO_ERROR);
    const uint8_t *data;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(l->h2, &data)) > 0)
      if (cm_stream_write(l->st, data, (size_t)n) != 0) return;
  }
  cm_stream_close(l->st);
}

void tun_link_abort(tun_link *l, const char *why) {
  if (!l->st) return;
  l->closing = true;
  if (!l->why[0]) snprintf(l->why, sizeof l->why, "%s", why);
  cm_stream_abort(l->st);
}

/* ---- output queues ----------------------------------------------------------- */

void tun_outq_init(tun_outq *q, size_t max) {
  memset(q, 0, sizeof *q);
  cm_buf_init_secret(&q->buf, max); /* requests and answers may hold tokens */
}

void tun_outq_free(tun_outq *q) { cm_buf_free(&q->buf); }

int tun_outq_push(tun_link *l, int32_t sid, tun_outq *q, const ProtobufCMessage *msg) {
  int rc = tun_grpc_encode(&q->buf, msg);
  if (rc != 0) return rc;
  if (q->deferred && l->h2 && sid > 0) {
    q->deferred = false;
    nghttp2_session_resume_data(l->h2, sid);
  }
  return 0;
}

static ssize_t outq_read(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *user) {
  CM_UNUSED(user);
  tun_outq *q = src->ptr;
  size_t n = CM_MIN(len, cm_buf_size(&q->buf));
  memcpy(buf, cm_buf_head(&q->buf), n);
  cm_buf_consume(&q->buf, n);
  if (cm_buf_size(&q->buf) > 0) return (ssize_t)n;
  if (!q->eof) {
    if (n > 0) return (ssize_t)n;
    q->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  *flags |= NGHTTP2_DATA_FLAG_EOF;
  if (q->trailers) {
    char status[12], msg[512];
    snprintf(status, sizeof status, "%d", q->status);
    tun_grpc_message_encode(q->message, msg, sizeof msg);
    nghttp2_nv nv[] = {TUN_NV("grpc-status", status), TUN_NV("grpc-message", msg)};
    *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    nghttp2_submit_trailer(h2, sid, nv, msg[0] ? 2 : 1);
  }
  return (ssize_t)n;
}

nghttp2_data_provider tun_outq_provider(tun_outq *q) {
  nghttp2_data_provider p;
  p.source.ptr = q;
  p.read_callback = outq_read;
  return p;
}

/* ---- nghttp2 memory ------------------------------------------------------------ */

/* nghttp2 copies DATA into its own frame buffers (kept until the session
 * ends) and frees without a size: cm_secret_* wipe every block it frees. */
static void *h2_malloc(size_t n, void *ud) {
  CM_UNUSED(ud);
  return cm_secret_alloc(n);
}
static void h2_free(void *p, void *ud) {
  CM_UNUSED(ud);
  cm_secret_free(p);
}
static void *h2_calloc(size_t n, size_t size, void *ud) {
  CM_UNUSED(ud);
  return cm_secret_calloc(n, size);
}
static void *h2_realloc(void *p, size_t n, void *ud) {
  CM_UNUSED(ud);
  return cm_secret_realloc(p, n);
}

static nghttp2_mem g_h2_mem = {NULL, h2_malloc, h2_free, h2_calloc, h2_realloc};

nghttp2_mem *tun_link_mem(void) { return &g_h2_mem; }

int tun_socketpair(int fds[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) return -errno;
  return 0;
}
