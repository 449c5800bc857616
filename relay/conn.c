/*
 * conn.c — a worker's HTTP connections (see conn.h): the HTTP core on each
 * stream, request and idle deadlines, the router, and the respond layer.
 */
#include "relay/conn.h"

#include "relay/mailbox.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SWEEP_MS 250
/* Forwarded / X-Forwarded-For field lines read per request; a proxy adds
 * one, so more than a few means a client wrote its own. */
#define MAX_FORWARDING 8
/* Room for the head: status line, Date, Server, and the caller's headers. */
#define HEAD_ROOM 4096

/* ---- router ----------------------------------------------------------------- */

struct rly_router {
  const rly_route_def *defs;
  rly_route *routes; /* the patterns alone, as rly_route_find takes them */
  size_t n;
};

rly_router *rly_router_new(const rly_route_def *defs, size_t n) {
  rly_router *r = calloc(1, sizeof *r);
  if (!r || !(r->routes = calloc(n, sizeof *r->routes))) {
    free(r);
    return NULL;
  }
  for (size_t i = 0; i < n; i++)
    r->routes[i] = (rly_route){defs[i].method, defs[i].pattern};
  r->defs = defs;
  r->n = n;
  return r;
}

void rly_router_free(rly_router *r) {
  if (!r) return;
  free(r->routes);
  free(r);
}

static void route(rly_conn *c, const rly_http_request *req) {
  const rly_router *r = c->cs->router;
  rly_route_match m;
  char allow[128], hdr[160];
  int i = rly_route_find(r->routes, r->n, req->method, req->path, &m, allow, sizeof allow);
  if (i == RLY_ROUTE_NOT_FOUND) {
    rly_conn_respond_error(c, 404, "not_found", "no such resource", NULL);
  } else if (i == RLY_ROUTE_BAD_METHOD) {
    snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
    rly_conn_respond_error(c, 405, "method_not_allowed", "method not allowed here", hdr);
  } else {
    r->defs[i].fn(c, req, &m, r->defs[i].arg);
  }
}

/* ---- deadlines ------------------------------------------------------------------ */

static void conn_set_wait(rly_conn *c, enum rly_conn_wait w, long long timeout_ms) {
  if (c->waiting == w) return; /* keep the original deadline */
  cm_list_remove(&c->wait);
  c->waiting = w;
  if (w == RLY_W_NONE) return;
  c->deadline = cm_now_mono_ms() + (uint64_t)timeout_ms;
  cm_list_push_back(w == RLY_W_HEADER ? &c->cs->header_wait : &c->cs->idle_wait, &c->wait);
}

static void conn_update_wait(rly_conn *c) {
  const rly_config *cfg = c->w->edge->cfg;
  if (!c->http || cm_stream_closing(c->st) || rly_http_busy(c->http)) {
    conn_set_wait(c, RLY_W_NONE, 0); /* gone, or awaiting our answer: no deadline */
  } else if (rly_http_in_request(c->http)) {
    conn_set_wait(c, RLY_W_HEADER, cfg->header_timeout_ms);
  } else if (c->w->shutting_down && !c->served && !c->cs->let_in_over) {
    /* Accepted before the listener closed but not yet asked anything: its
     * request is answered (with Connection: close), as a client that got
     * in deserves during a handover. */
    conn_set_wait(c, RLY_W_HEADER, cfg->header_timeout_ms);
  } else if (c->w->shutting_down) {
    cm_stream_close(c->st); /* idle during shutdown: done */
    conn_set_wait(c, RLY_W_NONE, 0);
  } else {
    conn_set_wait(c, RLY_W_IDLE, cfg->idle_timeout_ms);
  }
}

static void expire(cm_list *head, uint64_t now, bool header) {
  while (!cm_list_empty(head)) {
    rly_conn *c = cm_container_of(head->next, rly_conn, wait);
    if (c->deadline > now) break;
    conn_set_wait(c, RLY_W_NONE, 0);
    if (header) {
      rly_count(&c->cs->m.http_timeouts, 1);
      cm_log(CM_LOG_INFO, "http", "request timeout", CM_S("remote", c->remote));
      if (rly_http_in_request(c->http))
        rly_http_timeout(c->http);
      else
        cm_stream_close(c->st); /* never sent a byte */
    } else {
      rly_http_timeout(c->http); /* idle keep-alive: close quietly */
    }
  }
}

static void close_silent(rly_conns *cs);

static void on_sweep(uv_timer_t *t) {
  rly_conns *cs = t->data;
  uint64_t now = cm_now_mono_ms();
  expire(&cs->header_wait, now, true);
  expire(&cs->idle_wait, now, false);
  if (cs->w->shutting_down && !cs->let_in_over && now >= cs->let_in_until_ms) {
    cs->let_in_over = true;
    close_silent(cs);
  }
}

/* ---- the HTTP core's callbacks ------------------------------------------------------- */

static int http_send(void *ud, const void *data, size_t len) {
  rly_conn *c = ud;
  return cm_stream_write(c->st, data, len);
}

static void http_close(void *ud) {
  rly_conn *c = ud;
  cm_stream_close(c->st);
}

static void log_request(rly_conn *c, const rly_http_request *req, int status) {
  uint64_t ms = cm_now_mono_ms() - c->req_start_ms;
  cm_log_level lvl = status >= 500 ? CM_LOG_WARN : CM_LOG_INFO;
  if (strcmp(req->path, "/healthz") == 0 || strcmp(req->path, "/readyz") == 0 ||
      strcmp(req->path, "/metrics") == 0)
    lvl = CM_LOG_DEBUG;
  cm_log(lvl, "http", "request", CM_S("method", req->method), CM_URL("target", req->target),
         CM_I("status", status), CM_I("ms", ms), CM_S("remote", c->remote));
}

/* The client a trusted proxy names in a request (or the proxy itself, if
 * it names none): the address of the logs, of Validate and of the limit. */
static void forwarded_client(rly_conn *c, const rly_http_request *req) {
  rly_edge *e = c->w->edge;
  const char *fwd[MAX_FORWARDING], *xff[MAX_FORWARDING];
  size_t nf = 0, nx = 0;
  for (size_t i = 0; i < req->nheaders; i++) {
    const rly_http_header *h = &req->headers[i];
    if (strcasecmp(h->name, "forwarded") == 0 && nf < MAX_FORWARDING)
      fwd[nf++] = h->value;
    else if (strcasecmp(h->name, "x-forwarded-for") == 0 && nx < MAX_FORWARDING)
      xff[nx++] = h->value;
  }
  char host[64], who[64];
  int port;
  struct sockaddr_storage peer, client;
  snprintf(who, sizeof who, "%s", c->peer);
  if ((nf || nx) && cm_parse_hostport(c->peer, NULL, host, sizeof host, &port) == 0 &&
      cm_sockaddr_from(host, port, &peer) == 0 &&
      rly_forwarded_client(&e->trusted, (const struct sockaddr *)&peer, fwd, nf, xff, nx, &client))
    rly_proxy_addr_text(&client, who, sizeof who);
  if (c->ip_held && strcmp(who, c->remote) == 0) return;
  if (c->ip_held) rly_ip_release(e, c->remote);
  snprintf(c->remote, sizeof c->remote, "%s", who);
  c->ip_held = rly_ip_acquire(e, c->remote);
  c->over_limit = !c->ip_held;
}

static void http_on_request(void *ud, const rly_http_request *req) {
  rly_conn *c = ud;
  rly_count(&c->cs->m.http_requests, 1);
  c->req_start_ms = cm_now_mono_ms();
  conn_set_wait(c, RLY_W_NONE, 0);
  c->req = req;
  c->served = true;
  if (c->trusted_peer) forwarded_client(c, req);
  if (c->over_limit) {
    rly_http_response r = {.status = 429, .close = true};
    char body[200];
    r.body_len = rly_http_format_error(body, sizeof body, 429, "too_many_connections",
                                       "too many connections from this address");
    r.body = (const uint8_t *)body;
    r.content_type = "application/json";
    r.extra_headers = "Retry-After: 1\r\n";
    rly_conn_respond(c, &r);
    return;
  }
  route(c, req);
}

/* ---- the respond layer ------------------------------------------------------------------ */

void rly_conn_set_pending(rly_conn *c, void *pending, void (*cancel)(void *pending)) {
  c->pending = pending;
  c->pending_cancel = cancel;
}

void rly_conn_clear_pending(rly_conn *c, const void *who) {
  /* Either may already be a later request's: not ours to end. */
  if (c->pending == who) rly_conn_set_pending(c, NULL, NULL);
  if (c->drain_ud == who) rly_conn_on_drain(c, NULL, NULL);
}

int rly_conn_respond(rly_conn *c, const rly_http_response *r) {
  /* A body the write queue cannot take whole would be cut after its
   * status line; refuse it before any byte goes (bodies this large are
   * streamed instead). */
  if (!r->chunked && r->body_len + HEAD_ROOM > cm_stream_write_room(c->st)) {
    cm_log(CM_LOG_ERROR, "http", "response too large for the write queue; refusing it",
           CM_I("status", r->status), CM_I("bytes", r->body_len));
    return rly_conn_respond_error(c, 503, "response_too_large",
                                  "the response is too large to send; retry later", NULL);
  }
  if (r->status >= 500)
    rly_count(&c->cs->m.http_errors_5xx, 1);
  else if (r->status >= 400)
    rly_count(&c->cs->m.http_errors_4xx, 1);
  if (c->req) log_request(c, c->req, r->status);
  c->req = NULL;
  rly_http_response rr = *r;
  if (c->w->shutting_down) rr.close = true;
  int rc = rly_http_respond(c->http, &rr);
  if (cm_stream_closing(c->st)) return rc;
  if (cm_stream_paused(c->st) && !rly_http_busy(c->http)) cm_stream_resume(c->st);
  conn_update_wait(c);
  return rc;
}

int rly_conn_stream(rly_conn *c, const void *data, size_t len) {
  int rc = rly_http_respond_chunk(c->http, data, len);
  if (rc != 0) return rc;
  return cm_stream_above_high(c->st) ? 1 : 0;
}

int rly_conn_stream_end(rly_conn *c) {
  c->on_drain = NULL;
  int rc = rly_http_respond_end(c->http);
  if (cm_stream_closing(c->st)) return rc;
  if (cm_stream_paused(c->st) && !rly_http_busy(c->http)) cm_stream_resume(c->st);
  conn_update_wait(c);
  return rc;
}

void rly_conn_on_drain(rly_conn *c, void (*cb)(void *ud), void *ud) {
  c->on_drain = cb;
  c->drain_ud = ud;
}

void rly_conn_abort(rly_conn *c) { cm_stream_abort(c->st); }

int rly_conn_respond_json(rly_conn *c, int status, const char *json, const char *extra) {
  rly_http_response r = {.status = status,
                         .content_type = "application/json",
                         .body = (const uint8_t *)json,
                         .body_len = json ? strlen(json) : 0,
                         .extra_headers = extra};
  return rly_conn_respond(c, &r);
}

int rly_conn_respond_error(rly_conn *c, int status, const char *code, const char *msg,
                           const char *extra) {
  char body[512];
  rly_http_response r = rly_http_error_response(body, sizeof body, status, code, msg, extra);
  return rly_conn_respond(c, &r);
}

/* ---- the stream's callbacks ---------------------------------------------------------------- */

static void on_read(cm_stream *st, uint8_t *data, size_t len) {
  rly_conn *c = cm_stream_get_data(st);
  int rc = rly_http_feed(c->http, data, len);
  if (rc < 0) {
    cm_stream_abort(st);
    return;
  }
  if (rc == 1) cm_stream_pause(st); /* resumed by rly_conn_respond */
  if (!cm_stream_closing(st)) conn_update_wait(c);
}

static void on_drain(cm_stream *st) {
  rly_conn *c = cm_stream_get_data(st);
  if (c->on_drain) c->on_drain(c->drain_ud);
}

static void on_open(cm_stream *st) {
  rly_conn *c = cm_stream_get_data(st);
  /* A PROXY header or a forwarding header may have named someone else. */
  if (!c->remote[0]) snprintf(c->remote, sizeof c->remote, "%s", cm_stream_peer_addr(st));
}

/* Out of this worker's lists (closed, detached or moved). */
static void conn_unlink(rly_conn *c) {
  cm_list_remove(&c->wait);
  cm_list_remove(&c->all);
  atomic_fetch_sub(&c->cs->n, 1);
}

static void on_close(cm_stream *st, int err, const char *msg) {
  rly_conn *c = cm_stream_get_data(st);
  rly_wctx *w = c->w;
  if (err == CM_EHANDSHAKE || err == CM_ETIMEOUT) {
    rly_count(&c->cs->m.tls_handshake_failures, 1);
    cm_log(CM_LOG_DEBUG, "tls", "handshake failed", CM_S("remote", cm_stream_peer_addr(st)),
           CM_S("error", msg));
  }
  if (c->pending_cancel) c->pending_cancel(c->pending); /* e.g. a Validate in flight */
  if (c->ip_held) rly_ip_release(w->edge, c->remote);
  atomic_fetch_sub(&w->edge->live, 1);
  conn_unlink(c);
  rly_http_conn_free(c->http);
  free(c);
  w->maybe_finish(w);
}

cm_stream *rly_conn_detach(rly_conn *c, cm_buf *leftover) {
  size_t n;
  const uint8_t *rest = rly_http_take_upgrade(c->http, &n);
  if (n) cm_buf_append(leftover, rest, n);
  cm_stream *st = c->st;
  conn_unlink(c);
  rly_http_conn_free(c->http);
  free(c);
  return st;
}

/* ---- moving to another worker ---------------------------------------------------------- */

/* The connection in transit: its HTTP state (the request in flight
 * included) and its stream's parcel. */
typedef struct move_msg {
  rly_msg msg;
  rly_conn *c;
  rly_wctx *to;
  cm_stream_parcel *parcel;
  rly_conn_moved_cb cb;
  void *ud;
} move_msg;

static const cm_stream_cbs g_conn_cbs;

/* Arrived, or could not: either way it is gone from the edge's counts. */
static void conn_lost(rly_conn *c, rly_wctx *w) {
  if (c->pending_cancel) c->pending_cancel(c->pending);
  if (c->ip_held) rly_ip_release(w->edge, c->remote);
  atomic_fetch_sub(&w->edge->live, 1);
  rly_http_conn_free(c->http);
  free(c);
  w->maybe_finish(w);
}

static void run_arrive(rly_msg *m) {
  move_msg *k = (move_msg *)m;
  rly_conn *c = k->c;
  rly_wctx *to = k->to;
  c->w = to;
  c->cs = to->conns;
  int err;
  c->st = cm_stream_adopt(to->loop, k->parcel, &g_conn_cbs, c, &err);
  rly_conn_moved_cb cb = k->cb;
  void *ud = k->ud;
  free(k);
  if (!c->st) {
    cm_log(CM_LOG_WARN, "http", "connection lost moving between workers", CM_S("remote", c->remote),
           CM_I("error", err));
    conn_lost(c, to);
    return;
  }
  cm_list_push_back(&c->cs->all, &c->all);
  atomic_fetch_add(&c->cs->n, 1);
  cb(c, ud);
}

static void drop_arrive(rly_msg *m) {
  move_msg *k = (move_msg *)m;
  cm_stream_parcel_free(k->parcel);
  conn_lost(k->c, k->to);
  free(k);
}

static void on_detached(void *ud, cm_stream_parcel *parcel) {
  move_msg *k = ud;
  rly_conn *c = k->c;
  rly_wctx *from = c->w;
  k->parcel = parcel;
  conn_unlink(c);
  c->st = NULL;
  k->msg.run = run_arrive;
  k->msg.drop = drop_arrive;
  /* Reserved: it counts against --max-connections already, and it must
   * not be lost (a full mailbox only delays it). */
  if (!rly_mailbox_post(k->to->inbox, &k->msg, true)) drop_arrive(&k->msg);
  from->maybe_finish(from);
}

int rly_conn_move(rly_conn *c, rly_wctx *to, rly_conn_moved_cb cb, void *ud) {
  move_msg *k = calloc(1, sizeof *k);
  if (!k) return -ENOMEM;
  k->c = c;
  k->to = to;
  k->cb = cb;
  k->ud = ud;
  conn_set_wait(c, RLY_W_NONE, 0);
  int rc = cm_stream_detach(c->st, on_detached, k);
  if (rc != 0) free(k);
  return rc;
}

static const cm_stream_cbs g_conn_cbs = {
    .on_open = on_open, .on_read = on_read, .on_drain = on_drain, .on_close = on_close};

static const rly_http_cbs g_http_cbs = {
    .on_request = http_on_request, .send = http_send, .on_close = http_close};

/* ---- the set ------------------------------------------------------------------------------- */

int rly_conns_init(rly_conns *cs, rly_wctx *w, const rly_router *r) {
  memset(cs, 0, sizeof *cs);
  cs->w = w;
  cs->router = r;
  cm_list_init(&cs->all);
  cm_list_init(&cs->header_wait);
  cm_list_init(&cs->idle_wait);
  int rc = uv_timer_init(w->loop, &cs->sweep);
  if (rc != 0) return rc;
  cs->sweep.data = cs;
  return uv_timer_start(&cs->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
}

/* The acceptor counted the connection (edge->live, maybe its address):
 * undone here if it cannot be taken after all. */
static void adopt_failed(rly_wctx *w, const char *remote, bool ip_held) {
  if (ip_held) rly_ip_release(w->edge, remote);
  atomic_fetch_sub(&w->edge->live, 1);
}

void rly_conns_adopt(rly_conns *cs, int fd, const char *remote, bool ip_held, bool over_limit) {
  rly_wctx *w = cs->w;
  const rly_config *cfg = w->edge->cfg;
  rly_conn *c = calloc(1, sizeof *c);
  if (!c ||
      !(c->http = rly_http_conn_new(&w->edge->limits, &g_http_cbs, c, w->edge->server_header))) {
    free(c);
    close(fd);
    adopt_failed(w, remote, ip_held);
    return;
  }
  c->cs = cs;
  c->w = w;
  cm_list_init(&c->wait);
  c->ip_held = ip_held;
  c->over_limit = over_limit;
  snprintf(c->remote, sizeof c->remote, "%s", remote);
  snprintf(c->peer, sizeof c->peer, "%s", remote);
  c->trusted_peer = rly_cidrs_match_text(&w->edge->trusted, remote);
  /* Any connection may become a WebSocket peer: its write queue's high
   * watermark is the one that pauses the other peer. */
  cm_stream_opts o = {.tls = w->edge->tls,
                      .handshake_timeout_ms = (uint32_t)cfg->header_timeout_ms,
                      .high_watermark = (size_t)cfg->ws_high_watermark};
  int err;
  c->st = cm_stream_accept_fd(w->loop, fd, &o, &g_conn_cbs, c, &err);
  if (!c->st) { /* the stream closed fd */
    rly_http_conn_free(c->http);
    free(c);
    adopt_failed(w, remote, ip_held);
    return;
  }
  cm_list_push_back(&cs->all, &c->all);
  atomic_fetch_add(&cs->n, 1);
  conn_set_wait(c, RLY_W_HEADER, cfg->header_timeout_ms);
}

/* Idle connections during shutdown: the served ones always, the silent
 * ones too once the let-in window is over. */
static void close_idle(rly_conns *cs, bool silent_too) {
  for (cm_list *n = cs->all.next; n != &cs->all;) {
    rly_conn *c = cm_container_of(n, rly_conn, all);
    n = n->next;
    if (rly_http_busy(c->http) || rly_http_in_request(c->http)) continue;
    if (c->served || silent_too)
      cm_stream_close(c->st);
    else
      conn_update_wait(c); /* its request is still welcome */
  }
}

static void close_silent(rly_conns *cs) { close_idle(cs, true); }

void rly_conns_shutdown(rly_conns *cs) {
  cs->let_in_until_ms = cm_now_mono_ms() + RLY_SHUTDOWN_LET_IN_MS;
  close_idle(cs, false);
}

void rly_conns_abort_all(rly_conns *cs) {
  for (cm_list *n = cs->all.next; n != &cs->all;) {
    rly_conn *c = cm_container_of(n, rly_conn, all);
    n = n->next;
    cm_stream_abort(c->st);
  }
}

void rly_conns_close(rly_conns *cs, uv_close_cb closed) {
  uv_timer_stop(&cs->sweep);
  uv_close((uv_handle_t *)&cs->sweep, closed);
}

size_t rly_conns_count(const rly_conns *cs) { return atomic_load(&cs->n); }
