/*
 * listener.c — the acceptor (see listener.h).
 */
#include "relay/listener.h"

#include "relay/conn.h"
#include "relay/mailbox.h"
#include "relay/preface.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BACKLOG        1024
#define ACCEPT_BATCH   64  /* per wakeup, so one busy listener does not starve the loop */
#define EMFILE_WAIT_MS 100 /* out of descriptors: the kernel keeps the queue meanwhile */

/* A connection on its way to a worker. */
typedef struct conn_msg {
  rly_msg msg;
  rly_wctx *w;
  int fd;
  bool ip_held, over_limit;
  bool trusted; /* from --trusted-proxies: the client is named later */
  char remote[64];
} conn_msg;

static void w_run_adopt(rly_msg *m) {
  conn_msg *k = (conn_msg *)m;
  if (k->w->edge->proxy_protocol)
    rly_preface_start(k->w->prefaces, k->fd, k->remote, k->trusted, k->ip_held, k->over_limit);
  else
    rly_conns_adopt(k->w->conns, k->fd, k->remote, k->ip_held, k->over_limit);
  free(k);
}

/* The worker's mailbox closed first (shutdown): undo what accept counted. */
static void w_drop_adopt(rly_msg *m) {
  conn_msg *k = (conn_msg *)m;
  close(k->fd);
  if (k->ip_held) rly_ip_release(k->w->edge, k->remote);
  atomic_fetch_sub(&k->w->edge->live, 1);
  free(k);
}

/* RST rather than FIN: the client learns at once that it was refused. */
static void reset(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

static bool hand_over(rly_listener *l, conn_msg *k) {
  rly_edge *e = l->e;
  for (size_t tries = 0; tries < e->nworkers; tries++) {
    rly_wctx *w = e->workers[l->next++ % e->nworkers];
    k->w = w;
    if (rly_mailbox_post(w->inbox, &k->msg, false)) return true;
  }
  return false;
}

static void take(rly_listener *l, int fd, const struct sockaddr *sa) {
  rly_edge *e = l->e;
  const rly_config *cfg = e->cfg;
  conn_msg *k = calloc(1, sizeof *k);
  if (!k) {
    reset(fd);
    return;
  }
  k->fd = fd;
  cm_sockaddr_text(sa, k->remote, sizeof k->remote);
  size_t live = atomic_fetch_add(&e->live, 1) + 1;
  if (cfg->max_connections && (long long)live > cfg->max_connections) {
    atomic_fetch_sub(&e->live, 1);
    rly_count(&e->conns_refused, 1);
    cm_log(CM_LOG_WARN, "http", "connection limit reached; refusing",
           CM_I("max_connections", cfg->max_connections), CM_S("remote", k->remote));
    reset(fd);
    free(k);
    return;
  }
  rly_count(&e->conns_accepted, 1);
  /* A trusted proxy carries many clients: its connections count against
   * the address it names (its PROXY header, or a request's Forwarded),
   * once it has named it. */
  k->trusted = rly_cidrs_match(&e->trusted, sa);
  if (k->trusted) {
    /* counted later */
  } else if (rly_ip_acquire(e, k->remote)) {
    k->ip_held = true;
  } else {
    k->over_limit = true; /* told so, with a 429, at its first request */
    rly_count(&e->conns_refused, 1);
  }
  k->msg.run = w_run_adopt;
  k->msg.drop = w_drop_adopt;
  if (l->own) { /* on the worker's own loop already */
    k->w = l->own;
    w_run_adopt(&k->msg);
    return;
  }
  if (hand_over(l, k)) return;
  cm_log(CM_LOG_WARN, "http", "every worker's queue is full; refusing", CM_S("remote", k->remote));
  rly_count(&e->conns_refused, 1);
  k->w = e->workers[0];
  w_drop_adopt(&k->msg); /* closes fd (a FIN is as good as a reset here) */
}

static void on_backoff(uv_timer_t *t);

static void on_readable(uv_poll_t *p, int status, int events) {
  CM_UNUSED(events);
  rly_listener *l = p->data;
  if (status < 0) return;
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      take(l, fd, (struct sockaddr *)&ss);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      cm_log(CM_LOG_WARN, "http", "accept failed; pausing", CM_S("error", strerror(errno)));
      uv_poll_stop(&l->poll);
      uv_timer_start(&l->backoff, on_backoff, EMFILE_WAIT_MS, 0);
    }
    return; /* EAGAIN: the queue is empty */
  }
}

static void on_backoff(uv_timer_t *t) {
  rly_listener *l = t->data;
  if (!l->closing) uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

int rly_listener_bind(rly_listener *l, rly_edge *e, rly_wctx *own, int port, char *err,
                      size_t errlen) {
  memset(l, 0, sizeof *l);
  l->e = e;
  l->fd = -1;
  l->own = own;
  char where[300];
  snprintf(where, sizeof where, "%s", e->cfg->listen);
  char host[256];
  int cfg_port;
  if (port >= 0 && cm_parse_hostport(e->cfg->listen, "0.0.0.0", host, sizeof host, &cfg_port) == 0)
    snprintf(where, sizeof where, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
  return cm_tcp_bind_fd(where, own != NULL, &l->fd, err, errlen);
}

int rly_listener_port(const rly_listener *l) { return l->fd >= 0 ? cm_fd_bound_port(l->fd) : -1; }

int rly_listener_listen(rly_listener *l, char *err, size_t errlen) {
  if (listen(l->fd, BACKLOG) == 0) return 0;
  int rc = -errno;
  snprintf(err, errlen, "listen on %s: %s", l->e->cfg->listen, strerror(errno));
  return rc;
}

int rly_listener_start(rly_listener *l, uv_loop_t *loop) {
  int rc = uv_poll_init(loop, &l->poll, l->fd);
  if (rc != 0) return rc;
  l->poll.data = l;
  uv_timer_init(loop, &l->backoff);
  l->backoff.data = l;
  l->started = true;
  l->handles = 2;
  return uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

static void on_handle_closed(uv_handle_t *h) {
  rly_listener *l = h->data;
  if (--l->handles > 0) return;
  close(l->fd);
  l->fd = -1;
  if (l->closed) l->closed(l);
}

void rly_listener_close(rly_listener *l, void (*closed)(rly_listener *l)) {
  if (l->closing) return;
  l->closing = true;
  l->closed = closed;
  if (!l->started) {
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
    if (closed) closed(l);
    return;
  }
  uv_close((uv_handle_t *)&l->poll, on_handle_closed);
  uv_close((uv_handle_t *)&l->backoff, on_handle_closed);
}
