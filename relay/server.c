/*
 * server.c — the public listener: accepts connections, runs the HTTP core
 * on each, keeps request and idle deadlines, and shuts down gracefully.
 *
 * Deadlines: every connection waiting for request headers sits in one FIFO
 * list and every idle keep-alive connection in another.  All entries of a
 * list share one timeout, so insertion order is deadline order and a single
 * sweep timer pops expired entries from the heads: O(1) per connection,
 * with no timer handle per connection.  A header deadline is set when a
 * request begins and is not extended by trickled bytes (slowloris).
 */
#include "relay/edge.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SWEEP_MS 250

static void conn_update_wait(rly_conn *c);

/* ---- TLS material ------------------------------------------------------- */

static int setup_tls(rly_server *s, char *err, size_t errlen) {
  const rly_config *cfg = s->cfg;
  char host[256];
  int port;
  if (cm_parse_hostport(cfg->listen, "0.0.0.0", host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "listen: invalid address \"%s\"", cfg->listen);
    return -EINVAL;
  }
  if (cfg->plain) {
    if (!cm_host_is_loopback(host) && !cfg->allow_public_plain) {
      snprintf(err, errlen,
               "plain: refusing plain HTTP on non-loopback %s; put TLS in front and pass "
               "--allow-public-plain",
               cfg->listen);
      return -EINVAL;
    }
    return 0;
  }
  if (!cfg->tls_cert || !cfg->tls_key) {
    snprintf(err, errlen,
             "tls-cert/tls-key: a certificate and key are required "
             "(or --dev-cert-dir for a development certificate, or --plain)");
    return -EINVAL;
  }
  cm_tls_config tc;
  cm_tls_config_init(&tc);
  tc.cert_file = cfg->tls_cert;
  tc.key_file = cfg->tls_key;
  tc.alpn = cfg->alpn && *cfg->alpn ? cfg->alpn : "http/1.1";
  if (cfg->client_ca) {
    tc.ca_file = cfg->client_ca;
    tc.verify_peer = true;
    tc.require_peer_cert = false; /* browsers connect without one */
  } else {
    tc.verify_peer = false;
  }
  s->tls = cm_tls_ctx_new_server(&tc, err, errlen);
  return s->tls ? 0 : -EINVAL;
}

/* --no-auth opens the admin API to anyone who can connect: loopback only,
 * unless the operator says otherwise in so many words. */
static int setup_auth(rly_server *s, char *err, size_t errlen) {
  const rly_config *cfg = s->cfg;
  if (!cfg->no_auth) {
    s->auth = rly_auth_new(s, err, errlen);
    return s->auth ? 0 : -EINVAL;
  }
  char host[256];
  int port;
  if (cm_parse_hostport(cfg->listen, "0.0.0.0", host, sizeof host, &port) != 0 ||
      (!cm_host_is_loopback(host) && !cfg->allow_public_no_auth)) {
    snprintf(err, errlen,
             "no-auth: refusing an unauthenticated admin API on non-loopback %s "
             "(pass --allow-public-no-auth if you really mean it)",
             cfg->listen);
    return -EINVAL;
  }
  cm_log(CM_LOG_WARN, "relay", "admin API has NO authentication (--no-auth)",
         CM_S("listen", cfg->listen));
  return 0;
}

/* ---- lifecycle -------------------------------------------------------------- */

rly_server *rly_server_new(uv_loop_t *loop, const rly_config *cfg, char *err, size_t errlen) {
  rly_server *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  s->loop = loop;
  s->cfg = cfg;
  cm_list_init(&s->conns);
  cm_list_init(&s->header_wait);
  cm_list_init(&s->idle_wait);
  rly_http_limits_default(&s->limits);
  if (cfg->max_header_bytes) s->limits.max_header_bytes = (size_t)cfg->max_header_bytes;
  if (cfg->max_headers) s->limits.max_headers = (size_t)cfg->max_headers;
  if (cfg->max_body) s->limits.max_body = (size_t)cfg->max_body;
  if (cfg->max_url) s->limits.max_url = (size_t)cfg->max_url;
  snprintf(s->server_header, sizeof s->server_header, "relay/%s", rly_version());
  if (cfg->node_id && *cfg->node_id) {
    snprintf(s->node_id, sizeof s->node_id, "%s", cfg->node_id);
  } else {
    size_t n = sizeof s->node_id;
    if (uv_os_gethostname(s->node_id, &n) != 0) snprintf(s->node_id, sizeof s->node_id, "relay");
  }
  if (setup_tls(s, err, errlen) != 0 || setup_auth(s, err, errlen) != 0) {
    cm_tls_ctx_free(s->tls);
    free(s);
    return NULL;
  }
  if (cfg->public_url && *cfg->public_url) {
    snprintf(s->public_url, sizeof s->public_url, "%s", cfg->public_url);
    size_t ul = strlen(s->public_url);
    while (ul > 0 && s->public_url[ul - 1] == '/')
      s->public_url[--ul] = '\0';
  }
  return s;
}

void rly_server_free(rly_server *s) {
  if (!s) return;
  rly_ip_free(s);
  rly_auth_free(s->auth);
  rly_control_free(s);
  cm_tls_ctx_free(s->tls);
  free(s);
}

int rly_server_public_port(const rly_server *s) { return cm_tcp_bound_port(&s->listener); }
int rly_server_tunnel_port(const rly_server *s) { return s->tun ? tun_relay_port(s->tun) : -1; }

/* ---- connections -------------------------------------------------------------- */

static void conn_set_wait(rly_conn *c, enum conn_wait w, long long timeout_ms) {
  if (c->waiting == w) return; /* keep the original deadline */
  cm_list_remove(&c->wait);
  c->waiting = w;
  if (w == W_NONE) return;
  c->deadline = cm_now_mono_ms() + (uint64_t)timeout_ms;
  cm_list_push_back(w == W_HEADER ? &c->srv->header_wait : &c->srv->idle_wait, &c->wait);
}

static void conn_update_wait(rly_conn *c) {
  if (!c->http || cm_stream_closing(c->st) || rly_http_busy(c->http)) {
    conn_set_wait(c, W_NONE, 0); /* gone, or awaiting our answer: no deadline */
  } else if (rly_http_in_request(c->http)) {
    conn_set_wait(c, W_HEADER, c->srv->cfg->header_timeout_ms);
  } else {
    if (c->srv->shutting_down) {
      cm_stream_close(c->st); /* idle during shutdown: done */
      conn_set_wait(c, W_NONE, 0);
      return;
    }
    conn_set_wait(c, W_IDLE, c->srv->cfg->idle_timeout_ms);
  }
}

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

static void http_on_request(void *ud, const rly_http_request *req) {
  rly_conn *c = ud;
  c->srv->m.http_requests++;
  c->req_start_ms = cm_now_mono_ms();
  conn_set_wait(c, W_NONE, 0);
  c->req = req;
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
  rly_route_request(c, req);
}

/* Room for the head: status line, Date, Server, and the caller's headers. */
#define HEAD_ROOM 4096

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
    c->srv->m.http_errors_5xx++;
  else if (r->status >= 400)
    c->srv->m.http_errors_4xx++;
  if (c->req) log_request(c, c->req, r->status);
  c->req = NULL;
  rly_http_response rr = *r;
  if (c->srv->shutting_down) rr.close = true;
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
  size_t n = rly_http_format_error(body, sizeof body, status, code, msg);
  rly_http_response r = {.status = status,
                         .content_type = "application/json",
                         .body = (const uint8_t *)body,
                         .body_len = n,
                         .extra_headers = extra};
  return rly_conn_respond(c, &r);
}

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
  snprintf(c->remote, sizeof c->remote, "%s", cm_stream_peer_addr(st));
}

static void on_close(cm_stream *st, int err, const char *msg) {
  rly_conn *c = cm_stream_get_data(st);
  rly_server *s = c->srv;
  if (err == CM_EHANDSHAKE || err == CM_ETIMEOUT) {
    s->m.tls_handshake_failures++;
    cm_log(CM_LOG_DEBUG, "tls", "handshake failed", CM_S("remote", cm_stream_peer_addr(st)),
           CM_S("error", msg));
  }
  if (c->pending_cancel) c->pending_cancel(c->pending); /* e.g. a Validate in flight */
  if (c->ip_held) rly_ip_release(s, c->remote);
  cm_list_remove(&c->wait);
  cm_list_remove(&c->all);
  s->nconns--;
  rly_http_conn_free(c->http);
  free(c);
  rly_server_maybe_finish(s);
}

cm_stream *rly_conn_detach(rly_conn *c, cm_buf *leftover) {
  rly_server *s = c->srv;
  size_t n;
  const uint8_t *rest = rly_http_take_upgrade(c->http, &n);
  if (n) cm_buf_append(leftover, rest, n);
  cm_stream *st = c->st;
  cm_list_remove(&c->wait);
  cm_list_remove(&c->all);
  s->nconns--;
  rly_http_conn_free(c->http);
  free(c);
  return st;
}

static const cm_stream_cbs g_conn_cbs = {
    .on_open = on_open, .on_read = on_read, .on_drain = on_drain, .on_close = on_close};

static void on_connection(uv_stream_t *server, int status) {
  rly_server *s = server->data;
  if (status < 0) {
    cm_log(CM_LOG_WARN, "http", "accept failed", CM_S("error", uv_strerror(status)));
    return;
  }
  rly_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  cm_list_init(&c->wait);
  /* Any connection may become a WebSocket peer: its write queue's high
   * watermark is the one that pauses the other peer. */
  cm_stream_opts o = {.tls = s->tls,
                      .handshake_timeout_ms = (uint32_t)s->cfg->header_timeout_ms,
                      .high_watermark = (size_t)s->cfg->ws_high_watermark};
  int err;
  c->st = cm_stream_accept(server, &o, &g_conn_cbs, c, &err);
  if (!c->st) {
    free(c);
    return;
  }
  static const rly_http_cbs hcbs = {
      .on_request = http_on_request, .send = http_send, .on_close = http_close};
  c->http = rly_http_conn_new(&s->limits, &hcbs, c, s->server_header);
  cm_list_push_back(&s->conns, &c->all);
  s->nconns++;
  s->m.conns_accepted++;
  snprintf(c->remote, sizeof c->remote, "%s", cm_stream_peer_addr(c->st));
  if (rly_ip_acquire(s, c->remote)) {
    c->ip_held = true;
  } else {
    c->over_limit = true; /* told so, with a 429, at its first request */
    s->m.conns_refused++;
  }
  if (!c->http ||
      (s->cfg->max_connections && (long long)(s->nconns + s->npeers) > s->cfg->max_connections)) {
    s->m.conns_refused++;
    cm_log(CM_LOG_WARN, "http", "connection limit reached; refusing",
           CM_I("max_connections", s->cfg->max_connections), CM_S("remote", c->remote));
    cm_stream_abort(c->st);
    return;
  }
  conn_set_wait(c, W_HEADER, s->cfg->header_timeout_ms);
}

/* ---- deadlines ------------------------------------------------------------------ */

static void expire(cm_list *head, uint64_t now, bool header) {
  while (!cm_list_empty(head)) {
    rly_conn *c = cm_container_of(head->next, rly_conn, wait);
    if (c->deadline > now) break;
    conn_set_wait(c, W_NONE, 0);
    if (header) {
      c->srv->m.http_timeouts++;
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

static void on_sweep(uv_timer_t *t) {
  rly_server *s = t->data;
  uint64_t now = cm_now_mono_ms();
  expire(&s->header_wait, now, true);
  expire(&s->idle_wait, now, false);
}

/* ---- start and shutdown ---------------------------------------------------------- */

/* Without --public-url, session URLs name the address we bound (with the
 * real port when the listener asked for port 0).  A wildcard address is no
 * URL anyone can dial: say so. */
static void default_public_url(rly_server *s) {
  if (s->public_url[0]) return;
  char host[256];
  int port;
  if (cm_parse_hostport(s->cfg->listen, "0.0.0.0", host, sizeof host, &port) != 0) return;
  bool v6 = strchr(host, ':') != NULL;
  snprintf(s->public_url, sizeof s->public_url, "%s://%s%s%s:%d", s->tls ? "wss" : "ws",
           v6 ? "[" : "", host, v6 ? "]" : "", rly_server_public_port(s));
  if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
    cm_log(CM_LOG_WARN, "relay", "no --public-url: session URLs will name a wildcard address",
           CM_S("public_url", s->public_url));
}

int rly_server_start(rly_server *s, char *err, size_t errlen) {
  int rc = cm_tcp_bind(s->loop, &s->listener, s->cfg->listen, err, errlen);
  if (rc != 0) return rc;
  s->listener.data = s;
  s->listening = true;
  default_public_url(s);
  s->handles_open = 3; /* listener, sweep, grace; dp_tick below */
  uv_timer_init(s->loop, &s->sweep);
  s->sweep.data = s;
  uv_timer_start(&s->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
  uv_timer_init(s->loop, &s->grace);
  s->grace.data = s;
  s->started_ms = cm_now_mono_ms();
  rly_dp_init(s);
  s->handles_open++; /* dp_tick */
  s->started = true;
  if ((rc = rly_control_start(s, err, errlen)) != 0) return rc;
  if (s->auth && (rc = rly_auth_start(s->auth, err, errlen)) != 0) return rc;
  /* Accept only once an embedded controller is linked, so no client ever
   * sees a 503 that is merely start-up. */
  if ((rc = rly_control_wait_embedded(s, err, errlen)) != 0) return rc;
  if ((rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection)) != 0) {
    snprintf(err, errlen, "listen on %s: %s", s->cfg->listen, uv_strerror(rc));
    return rc;
  }
  cm_log(CM_LOG_INFO, "relay", "listening", CM_S("addr", s->cfg->listen),
         CM_I("port", rly_server_public_port(s)), CM_B("tls", s->tls != NULL),
         CM_S("public_url", s->public_url), CM_S("node_id", s->node_id));
  return 0;
}

static void finish_if_done(rly_server *s) {
  if (s->handles_open == 0 && s->control_stopped && s->done) {
    void (*done)(void *) = s->done;
    s->done = NULL;
    cm_log(CM_LOG_INFO, "relay", "shutdown complete");
    done(s->done_ud);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  rly_server *s = h->data;
  s->handles_open--;
  finish_if_done(s);
}

static void on_auth_stopped(void *ud) {
  rly_server *s = ud;
  s->handles_open--;
  finish_if_done(s);
}

static void on_control_stopped(void *ud) {
  rly_server *s = ud;
  s->control_stopped = true;
  finish_if_done(s);
}

void rly_server_maybe_finish(rly_server *s) {
  if (!s->shutting_down || s->nconns > 0 || s->npeers > 0 || s->finishing) return;
  s->finishing = true;
  if (s->started) {
    uv_timer_stop(&s->grace);
    uv_close((uv_handle_t *)&s->sweep, on_handle_closed);
    uv_close((uv_handle_t *)&s->grace, on_handle_closed);
    rly_dp_stop(s);
    uv_close((uv_handle_t *)&s->dp_tick, on_handle_closed);
  }
  if (s->auth) {
    s->handles_open++;
    rly_auth_stop(s->auth, on_auth_stopped, s);
  }
  rly_control_stop(s, on_control_stopped);
}

static void on_grace(uv_timer_t *t) {
  rly_server *s = t->data;
  cm_log(CM_LOG_WARN, "relay", "grace period over; closing remaining connections",
         CM_I("connections", s->nconns), CM_I("peers", s->npeers));
  for (cm_list *n = s->conns.next; n != &s->conns;) {
    rly_conn *c = cm_container_of(n, rly_conn, all);
    n = n->next;
    cm_stream_abort(c->st);
  }
  rly_dp_close_all(s, 1001, "relay shutting down");
}

void rly_server_shutdown(rly_server *s, void (*done)(void *), void *ud) {
  if (s->shutting_down) return;
  s->shutting_down = true;
  s->done = done;
  s->done_ud = ud;
  cm_log(CM_LOG_INFO, "relay", "shutting down", CM_I("connections", s->nconns),
         CM_I("peers", s->npeers), CM_I("grace_ms", s->cfg->shutdown_grace_ms));
  if (s->listening) uv_close((uv_handle_t *)&s->listener, on_handle_closed);
  s->listening = false;
  /* No more controller connections either, and controllers are told: a
   * successor sharing our sockets gets its link now, not after the drain. */
  if (s->tun) tun_relay_leave(s->tun);
  /* Idle keep-alive connections and ones that never sent a byte go now;
   * requests in flight finish and then close (see conn_update_wait). */
  for (cm_list *n = s->conns.next; n != &s->conns;) {
    rly_conn *c = cm_container_of(n, rly_conn, all);
    n = n->next;
    if (!rly_http_busy(c->http) && !rly_http_in_request(c->http)) cm_stream_close(c->st);
  }
  if (s->started) {
    rly_dp_shutdown(s);
    uv_timer_start(&s->grace, on_grace, (uint64_t)s->cfg->shutdown_grace_ms, 0);
  }
  rly_server_maybe_finish(s);
}
