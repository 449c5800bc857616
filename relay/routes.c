/*
 * routes.c — the public route table and the small built-in handlers
 * (/healthz, /readyz, /metrics).  Larger handlers (admin API, WebSocket
 * upgrade) live in their own modules; this is the one place that names
 * them all.
 */
#include "relay/routes.h"

#include "relay/admin.h"
#include "relay/api.h"
#include "relay/control.h"
#include "relay/dataplane.h"

#include <stdlib.h>
#include <string.h>

static void healthz(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int arg) {
  CM_UNUSED(req);
  CM_UNUSED(m);
  CM_UNUSED(arg);
  rly_http_response r = {.status = 200,
                         .content_type = "text/plain; charset=utf-8",
                         .body = (const uint8_t *)"ok",
                         .body_len = 2,
                         .extra_headers = "Cache-Control: no-store\r\n"};
  rly_conn_respond(c, &r);
}

static bool metrics_allowed(rly_conn *c) {
  const char *mode = c->w->edge->cfg->metrics ? c->w->edge->cfg->metrics : "loopback";
  if (strcmp(mode, "public") == 0) return true;
  if (strcmp(mode, "off") == 0) return false;
  char host[64];
  int port;
  return cm_parse_hostport(c->remote, NULL, host, sizeof host, &port) == 0 &&
         cm_host_is_loopback(host);
}

/* The connection layer's figures, summed over every worker. */
static void conns_text(rly_edge *e, cm_buf *b) {
  rly_conn_metrics m;
  memset(&m, 0, sizeof m);
  rly_counter *sum = (rly_counter *)&m;
  size_t open = 0;
  for (size_t i = 0; i < e->nworkers; i++) {
    const rly_conns *cs = e->workers[i]->conns;
    const rly_counter *c = (const rly_counter *)&cs->m;
    for (size_t k = 0; k < sizeof m / sizeof(rly_counter); k++)
      rly_count(&sum[k], rly_counter_get(&c[k]));
    open += rly_conns_count(cs);
  }
#define COUNTER(name, help, v) rly_metric(b, name, help, true, (uint64_t)(v))
#define GAUGE(name, help, v)   rly_metric(b, name, help, false, (uint64_t)(v))
  COUNTER("connections_accepted_total", "Public connections accepted.",
          rly_counter_get(&e->conns_accepted));
  COUNTER("connections_refused_total", "Connections refused over a limit.",
          rly_counter_get(&e->conns_refused));
  COUNTER("tls_handshake_failures_total", "Failed or timed-out TLS handshakes.",
          rly_counter_get(&m.tls_handshake_failures));
  COUNTER("http_requests_total", "HTTP requests received.", rly_counter_get(&m.http_requests));
  COUNTER("http_responses_4xx_total", "Responses with a 4xx status.",
          rly_counter_get(&m.http_errors_4xx));
  COUNTER("http_responses_5xx_total", "Responses with a 5xx status.",
          rly_counter_get(&m.http_errors_5xx));
  COUNTER("http_request_timeouts_total", "Requests that missed the header deadline.",
          rly_counter_get(&m.http_timeouts));
  GAUGE("connections", "Open public connections.", open);
  GAUGE("uptime_seconds", "Seconds since start.", (cm_now_mono_ms() - e->started_ms) / 1000);
  GAUGE("workers", "Worker threads (each with its own loop).", e->nworkers);
}

static void link_text(const tun_relay_stats *ts, cm_buf *b) {
  COUNTER("controller_calls_total", "Calls made to controllers.", ts->calls);
  COUNTER("controller_calls_failed_total", "Calls that did not return OK.", ts->calls_failed);
  COUNTER("controller_calls_unavailable_total", "Calls failed for lack of a link.",
          ts->calls_unavailable);
  COUNTER("controller_links_refused_total", "Controller connections refused.", ts->links_refused);
  COUNTER("controller_events_dropped_total", "Events dropped at a full queue.", ts->events_dropped);
  COUNTER("controller_calls_replayed_total",
          "Calls replayed on another link (NOT_FOUND, or refused by a GOAWAY).",
          ts->calls_replayed);
  COUNTER("controller_events_reopened_total", "Events streams the controller ended, reopened.",
          ts->events_reopened);
  COUNTER("controller_probes_ping_total", "Keepalive probes sent as HTTP/2 PINGs.",
          ts->probes_ping);
  COUNTER("controller_probes_health_total", "Keepalive probes sent as gRPC health checks.",
          ts->probes_health);
  COUNTER("controller_ping_backoffs_total", "GOAWAY too_many_pings answered by backing off.",
          ts->ping_backoffs);
}
#undef COUNTER
#undef GAUGE

/* The controller link's figures are the control thread's: a handler asks
 * for them and answers when they come. */
typedef struct figures_op {
  rly_conn *c;
  rly_ctl_stats *stats;
  void (*answer)(rly_conn *c, const rly_link_figures *f);
} figures_op;

static void figures_cancel(void *pending) {
  figures_op *o = pending;
  rly_ctl_stats_cancel(o->stats);
  free(o);
}

static void on_figures(void *ud, const rly_link_figures *f) {
  figures_op *o = ud;
  rly_conn *c = o->c;
  void (*answer)(rly_conn *, const rly_link_figures *) = o->answer;
  rly_conn_clear_pending(c);
  free(o);
  answer(c, f);
}

static void ask_figures(rly_conn *c, void (*answer)(rly_conn *c, const rly_link_figures *f)) {
  figures_op *o = calloc(1, sizeof *o);
  if (o) {
    o->c = c;
    o->answer = answer;
    o->stats = rly_ctl_stats_get(c->w, on_figures, o);
  }
  if (!o || !o->stats) {
    free(o);
    rly_conn_respond_error(c, 503, "overloaded", "the relay is overloaded; retry later",
                           "Cache-Control: no-store\r\n");
    return;
  }
  rly_conn_set_pending(c, o, figures_cancel);
}

static void readyz_answer(rly_conn *c, const rly_link_figures *f) {
  const char *why = atomic_load(&c->w->edge->draining) ? "draining"
                    : f->links == 0                    ? "no controller link is up"
                    : f->answering == 0                ? "the controller is not answering"
                                                       : NULL;
  if (why) {
    rly_conn_respond_error(c, 503, "not_ready", why, "Cache-Control: no-store\r\n");
    return;
  }
  rly_http_response r = {.status = 200,
                         .content_type = "text/plain; charset=utf-8",
                         .body = (const uint8_t *)"ready",
                         .body_len = 5,
                         .extra_headers = "Cache-Control: no-store\r\n"};
  rly_conn_respond(c, &r);
}

static void readyz(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int arg) {
  CM_UNUSED(req);
  CM_UNUSED(m);
  CM_UNUSED(arg);
  ask_figures(c, readyz_answer);
}

static void metrics_answer(rly_conn *c, const rly_link_figures *f) {
  const tun_relay_stats *ts = &f->st;
  rly_edge *e = c->w->edge;
  cm_buf b;
  cm_buf_init(&b, 1 << 20);
  conns_text(e, &b);
  link_text(ts, &b);
  rly_dp_metrics_text(e, &b);
  rly_http_response r = {.status = 200,
                         .content_type = "text/plain; version=0.0.4; charset=utf-8",
                         .body = cm_buf_head(&b),
                         .body_len = cm_buf_size(&b)};
  rly_conn_respond(c, &r);
  cm_buf_free(&b);
}

static void metrics(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int arg) {
  CM_UNUSED(req);
  CM_UNUSED(m);
  CM_UNUSED(arg);
  if (!metrics_allowed(c)) {
    rly_conn_respond_error(c, 404, "not_found", "no such resource", NULL);
    return;
  }
  ask_figures(c, metrics_answer);
}

static const rly_route_def g_routes[] = {
    {"GET", "/healthz", healthz, 0},
    {"GET", "/readyz", readyz, 0},
    {"GET", "/metrics", metrics, 0},
    {"GET", "/relay/{id}", rly_dp_upgrade, 0},
    {"POST", "/admin/sessions", rly_admin_request, RLY_ADMIN_CREATE},
    {"GET", "/admin/sessions", rly_admin_request, RLY_ADMIN_LIST},
    {"OPTIONS", "/admin/sessions", rly_admin_preflight, RLY_ADMIN_ALL},
    {"GET", "/admin/sessions/{id}", rly_admin_request, RLY_ADMIN_GET},
    {"DELETE", "/admin/sessions/{id}", rly_admin_request, RLY_ADMIN_DELETE},
    {"OPTIONS", "/admin/sessions/{id}", rly_admin_preflight, RLY_ADMIN_ONE},
    {"GET", "/.well-known/swsrs-config", rly_admin_discovery, 0},
};

const rly_route_def *rly_routes(size_t *n) {
  *n = CM_ARRAY_LEN(g_routes);
  return g_routes;
}
