/*
 * status.c — the relay's figures as Prometheus text (see status.h): the
 * connection layer's and the link's counters, the data plane's (from
 * dataplane.c), and the relay's own — the build and node, the limits in
 * force, and the controllers linked, one labelled sample each.
 */
#include "relay/status.h"

#include "relay/api.h"
#include "relay/dataplane.h"
#include "relay/reload.h"

#include <stdlib.h>
#include <string.h>

#define MAX_CONTROLLERS 16

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
  COUNTER("proxy_header_refused_total",
          "Connections refused for their PROXY header: untrusted, missing, malformed or late.",
          rly_counter_get(&e->proxy_refused));
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

static void build_info(const rly_edge *s, cm_buf *b) {
  const char *const labels[][2] = {
      {"version", rly_version()}, {"commit", rly_git_commit()}, {"node", s->node_id}};
  rly_metric_labeled(b, "build_info", "This relay's version, commit and node id.", false, labels,
                     CM_ARRAY_LEN(labels), 1);
}

static void limits(rly_edge *s, cm_buf *b) {
  const rly_config *cfg = s->cfg;
#define G(name, help, v) rly_metric(b, "limit_" name, help, false, (uint64_t)(v))
  G("max_connections", "Public connections allowed at once (--max-connections).",
    cfg->max_connections);
  G("max_sessions", "Sessions allowed at once (--max-sessions).", atomic_load(&s->max_sessions));
  G("max_conns_per_ip", "Connections one client address may hold; 0: no limit.",
    cfg->max_conns_per_ip);
  G("max_message_bytes", "Largest message relayed (the controller may lower it).",
    atomic_load(&s->max_message));
  G("hold_bytes", "Data a lone peer may send before its counterpart arrives.", cfg->hold_bytes);
  G("peer_wait_seconds", "How long a lone peer waits when the controller does not say.",
    atomic_load(&s->peer_wait_ms) / 1000);
#undef G
}

/* Links per controller, by name (certificate CN and fingerprint, or
 * "embedded"). */
static void controllers(rly_edge *s, cm_buf *b) {
  static const char help[] = "Controllers with a link up (value: 1), by name.";
  char names[MAX_CONTROLLERS][TUN_CONTROLLER_NAME_MAX];
  size_t n = rly_ctl_controllers(s->ctl, names, MAX_CONTROLLERS);
  if (n == 0) {
    cm_buf_printf(b, "# HELP relay_controller_link %s\n# TYPE relay_controller_link gauge\n", help);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    const char *const labels[][2] = {{"controller", names[i]}};
    rly_metric_labeled(b, "controller_link", i ? NULL : help, false, labels, 1, 1);
  }
}

static void status_text(rly_edge *s, cm_buf *b) {
  build_info(s, b);
  limits(s, b);
  controllers(s, b);
}

/* ---- answering, once the link's figures are in ------------------------------ */

typedef struct figures_op {
  rly_conn *c;
  rly_ctl_stats *stats;
  rly_status_answer answer;
  char extra[RLY_STATUS_EXTRA_MAX];
} figures_op;

static void figures_cancel(void *pending) {
  figures_op *o = pending;
  rly_ctl_stats_cancel(o->stats);
  free(o);
}

static void on_figures(void *ud, const rly_link_figures *f) {
  figures_op *o = ud;
  rly_conn_clear_pending(o->c, o);
  o->answer(o->c, f, o->extra[0] ? o->extra : NULL);
  free(o);
}

void rly_status_ask(rly_conn *c, rly_status_answer answer, const char *extra) {
  figures_op *o = calloc(1, sizeof *o);
  if (o) {
    o->c = c;
    o->answer = answer;
    snprintf(o->extra, sizeof o->extra, "%s", extra ? extra : "");
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

static void metrics_answer(rly_conn *c, const rly_link_figures *f, const char *extra) {
  rly_edge *e = c->w->edge;
  cm_buf b;
  cm_buf_init(&b, 1 << 20);
  conns_text(e, &b);
  link_text(&f->st, &b);
  rly_dp_metrics_text(e, &b);
  status_text(e, &b);
  rly_certs_metrics_text(e, &b);
  rly_http_response r = {.status = 200,
                         .content_type = "text/plain; version=0.0.4; charset=utf-8",
                         .body = cm_buf_head(&b),
                         .body_len = cm_buf_size(&b),
                         .extra_headers = extra};
  rly_conn_respond(c, &r);
  cm_buf_free(&b);
}

void rly_metrics_respond(rly_conn *c, const char *extra_headers) {
  rly_status_ask(c, metrics_answer, extra_headers);
}
