/*
 * preface.c — the PROXY header before TLS (see preface.h).
 *
 * The socket is watched with a uv_poll of its own until the header is
 * known.  Bytes are peeked, never read blindly: while the parser asks for
 * more, everything peeked is header and is consumed; once it is done,
 * exactly the header's remaining bytes are.  A direct client's bytes are
 * only peeked.  The poll handle is closed before the socket goes on to
 * the connection layer, which watches the same descriptor with its own.
 */
#include "relay/preface.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A direct client whose first bytes could still be a PROXY signature
 * ("P", "\r\n"...) is looked at again this much later: the bytes stay in
 * the socket, so it stays readable and polling would spin. */
#define SNIFF_RETRY_MS 10

typedef struct preface {
  rly_prefaces *ps;
  cm_list node;
  int fd;
  uv_poll_t poll;
  uv_timer_t deadline, retry;
  int handles;
  bool trusted, ip_held, over_limit;
  bool done, ok; /* decided; ok: go on to the connection layer */
  char remote[64];
  size_t have; /* header bytes consumed so far */
  uint8_t buf[RLY_PROXY_MAX];
} preface;

struct rly_prefaces {
  rly_wctx *w;
  cm_list all;
  size_t n;
};

rly_prefaces *rly_prefaces_new(rly_wctx *w) {
  rly_prefaces *ps = calloc(1, sizeof *ps);
  if (!ps) return NULL;
  ps->w = w;
  cm_list_init(&ps->all);
  return ps;
}

size_t rly_prefaces_count(const rly_prefaces *ps) { return ps ? ps->n : 0; }

void rly_prefaces_free(rly_prefaces *ps) { free(ps); }

/* ---- the end of a preface ------------------------------------------------------ */

static void on_closed(uv_handle_t *h) {
  preface *p = h->data;
  if (--p->handles > 0) return;
  rly_prefaces *ps = p->ps;
  rly_wctx *w = ps->w;
  cm_list_remove(&p->node);
  ps->n--;
  if (p->ok) {
    rly_conns_adopt(w->conns, p->fd, p->remote, p->ip_held, p->over_limit);
  } else {
    close(p->fd);
    if (p->ip_held) rly_ip_release(w->edge, p->remote);
    atomic_fetch_sub(&w->edge->live, 1);
  }
  free(p);
  w->maybe_finish(w);
}

static void finish(preface *p, bool ok) {
  if (p->done) return;
  p->done = true;
  p->ok = ok;
  uv_close((uv_handle_t *)&p->poll, on_closed);
  uv_close((uv_handle_t *)&p->deadline, on_closed);
  uv_close((uv_handle_t *)&p->retry, on_closed);
}

static void refuse(preface *p, const char *why) {
  cm_log(CM_LOG_WARN, "proxy", "connection refused", CM_S("remote", p->remote),
         CM_S("reason", why));
  rly_count(&p->ps->w->edge->proxy_refused, 1);
  finish(p, false);
}

/* The header named the client: it is who the connection is from from now
 * on, counted against its address's limit here. */
static void header_done(preface *p, const rly_proxy_header *h) {
  rly_edge *e = p->ps->w->edge;
  if (!h->local) rly_proxy_addr_text(&h->src, p->remote, sizeof p->remote);
  if (rly_ip_acquire(e, p->remote))
    p->ip_held = true;
  else
    p->over_limit = true; /* told so, with a 429, at its first request */
  cm_log(CM_LOG_DEBUG, "proxy", "client named by the proxy", CM_S("remote", p->remote),
         CM_I("version", h->version));
  finish(p, true);
}

/* ---- reading ---------------------------------------------------------------------- */

/* What lies in the socket beyond the bytes consumed, peeked into buf. */
static ssize_t peek(preface *p) {
  ssize_t n;
  do
    n = recv(p->fd, p->buf + p->have, sizeof p->buf - p->have, MSG_PEEK);
  while (n < 0 && errno == EINTR);
  return n;
}

/* Takes n peeked bytes out of the socket (they are the header's). */
static bool consume(preface *p, size_t n) {
  while (n > 0) {
    ssize_t r = recv(p->fd, p->buf + p->have, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p->have += (size_t)r;
    n -= (size_t)r;
  }
  return true;
}

static void read_header(preface *p, size_t avail) {
  rly_proxy_header h;
  const char *why = "malformed PROXY header";
  rly_proxy_status st = rly_proxy_parse(p->buf, p->have + avail, &h, &why);
  if (st == RLY_PROXY_BAD) {
    refuse(p, why);
  } else if (st == RLY_PROXY_DONE) {
    if (!consume(p, h.length - p->have))
      refuse(p, "connection lost in the PROXY header");
    else
      header_done(p, &h);
  } else if (p->have + avail >= sizeof p->buf) {
    refuse(p, "PROXY header too long");
  } else if (!consume(p, avail)) { /* all of it is header: the rest is still to come */
    refuse(p, "connection lost in the PROXY header");
  }
}

static void on_retry(uv_timer_t *t);

static void sniff(preface *p, size_t avail) {
  int sig = rly_proxy_signature(p->buf, avail);
  if (sig > 0) {
    refuse(p, "PROXY header from an untrusted address");
  } else if (sig == 0) {
    finish(p, true); /* a direct client */
  } else {
    uv_poll_stop(&p->poll);
    uv_timer_start(&p->retry, on_retry, SNIFF_RETRY_MS, 0);
  }
}

static void on_readable(uv_poll_t *h, int status, int events) {
  CM_UNUSED(events);
  preface *p = h->data;
  if (p->done) return;
  ssize_t n = status < 0 ? -1 : peek(p);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  if (n <= 0) {
    refuse(p, p->trusted ? "closed before its PROXY header" : "closed before sending anything");
    return;
  }
  if (p->trusted)
    read_header(p, (size_t)n);
  else
    sniff(p, (size_t)n);
}

static void on_retry(uv_timer_t *t) {
  preface *p = t->data;
  if (!p->done) uv_poll_start(&p->poll, UV_READABLE, on_readable);
}

static void on_deadline(uv_timer_t *t) {
  preface *p = t->data;
  refuse(p, p->trusted ? "no PROXY header in time" : "nothing sent in time");
}

/* ---- the set ---------------------------------------------------------------------------- */

void rly_preface_start(rly_prefaces *ps, int fd, const char *remote, bool trusted, bool ip_held,
                       bool over_limit) {
  rly_wctx *w = ps->w;
  preface *p = calloc(1, sizeof *p);
  if (!p || uv_poll_init(w->loop, &p->poll, fd) != 0) {
    free(p);
    close(fd);
    if (ip_held) rly_ip_release(w->edge, remote);
    atomic_fetch_sub(&w->edge->live, 1);
    return;
  }
  p->ps = ps;
  p->fd = fd;
  p->trusted = trusted;
  p->ip_held = ip_held;
  p->over_limit = over_limit;
  snprintf(p->remote, sizeof p->remote, "%s", remote);
  uv_timer_init(w->loop, &p->deadline);
  uv_timer_init(w->loop, &p->retry);
  p->poll.data = p->deadline.data = p->retry.data = p;
  p->handles = 3;
  cm_list_push_back(&ps->all, &p->node);
  ps->n++;
  uv_timer_start(&p->deadline, on_deadline, (uint64_t)w->edge->cfg->header_timeout_ms, 0);
  uv_poll_start(&p->poll, UV_READABLE, on_readable);
}

void rly_prefaces_abort(rly_prefaces *ps) {
  for (cm_list *n = ps->all.next; n != &ps->all; n = n->next) {
    preface *p = cm_container_of(n, preface, node);
    finish(p, false);
  }
}
