/*
 * routes.c — the public request router and the small built-in handlers
 * (/healthz, /metrics).  Larger handlers (admin API, WebSocket upgrade)
 * live in their own files and are reached from the table here.
 */
#include "relay/edge.h"

#include "relay/dashboard.h"

#include <string.h>

enum {
  R_HEALTHZ,
  R_READYZ,
  R_METRICS,
  R_RELAY,
  R_SESSIONS_POST,
  R_SESSIONS_GET,
  R_SESSIONS_OPTIONS,
  R_SESSION_GET,
  R_SESSION_DELETE,
  R_SESSION_OPTIONS,
  R_DISCOVERY,
  R_ADMIN_METRICS,
  R_DASHBOARD,
  R_DASHBOARD_FILE,
};

static const rly_route g_routes[] = {
    [R_HEALTHZ] = {"GET", "/healthz"},
    [R_READYZ] = {"GET", "/readyz"},
    [R_METRICS] = {"GET", "/metrics"},
    [R_RELAY] = {"GET", "/relay/{id}"},
    [R_SESSIONS_POST] = {"POST", "/admin/sessions"},
    [R_SESSIONS_GET] = {"GET", "/admin/sessions"},
    [R_SESSIONS_OPTIONS] = {"OPTIONS", "/admin/sessions"},
    [R_SESSION_GET] = {"GET", "/admin/sessions/{id}"},
    [R_SESSION_DELETE] = {"DELETE", "/admin/sessions/{id}"},
    [R_SESSION_OPTIONS] = {"OPTIONS", "/admin/sessions/{id}"},
    [R_DISCOVERY] = {"GET", "/.well-known/swsrs-config"},
    [R_ADMIN_METRICS] = {"GET", "/admin/metrics"},
    [R_DASHBOARD] = {"GET", "/dashboard"},
    [R_DASHBOARD_FILE] = {"GET", "/dashboard/{id}"},
};

static void readyz(rly_conn *c) {
  rly_server *s = c->srv;
  const char *why = s->draining     ? "draining"
                    : s->links == 0 ? "no controller link is up"
                    : s->tun && !tun_relay_links_answering(s->tun)
                        ? "the controller is not answering"
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

static void healthz(rly_conn *c) {
  rly_http_response r = {.status = 200,
                         .content_type = "text/plain; charset=utf-8",
                         .body = (const uint8_t *)"ok",
                         .body_len = 2,
                         .extra_headers = "Cache-Control: no-store\r\n"};
  rly_conn_respond(c, &r);
}

static bool metrics_allowed(rly_conn *c) {
  const char *mode = c->srv->cfg->metrics ? c->srv->cfg->metrics : "loopback";
  if (strcmp(mode, "public") == 0) return true;
  if (strcmp(mode, "off") == 0) return false;
  char host[64];
  int port;
  return cm_parse_hostport(c->remote, NULL, host, sizeof host, &port) == 0 &&
         cm_host_is_loopback(host);
}

void rly_metric(cm_buf *b, const char *name, const char *help, bool counter, uint64_t v) {
  const char *type = counter ? "counter" : "gauge";
  cm_buf_printf(b, "# HELP relay_%s %s\n# TYPE relay_%s %s\nrelay_%s %llu\n", name, help, name,
                type, name, (unsigned long long)v);
}

void rly_metrics_respond(rly_conn *c, const char *extra_headers) {
  rly_server *s = c->srv;
  cm_buf b;
  cm_buf_init(&b, 1 << 20);
#define COUNTER(name, help, v) rly_metric(&b, name, help, true, (uint64_t)(v))
#define GAUGE(name, help, v)   rly_metric(&b, name, help, false, (uint64_t)(v))
  COUNTER("connections_accepted_total", "Public connections accepted.", s->m.conns_accepted);
  COUNTER("connections_refused_total", "Connections refused over a limit.", s->m.conns_refused);
  COUNTER("tls_handshake_failures_total", "Failed or timed-out TLS handshakes.",
          s->m.tls_handshake_failures);
  COUNTER("http_requests_total", "HTTP requests received.", s->m.http_requests);
  COUNTER("http_responses_4xx_total", "Responses with a 4xx status.", s->m.http_errors_4xx);
  COUNTER("http_responses_5xx_total", "Responses with a 5xx status.", s->m.http_errors_5xx);
  COUNTER("http_request_timeouts_total", "Requests that missed the header deadline.",
          s->m.http_timeouts);
  GAUGE("connections", "Open public connections.", s->nconns);
  GAUGE("uptime_seconds", "Seconds since start.", (cm_now_mono_ms() - s->started_ms) / 1000);
  if (s->tun) {
    tun_relay_stats ts;
    tun_relay_get_stats(s->tun, &ts);
    COUNTER("controller_calls_total", "Calls made to controllers.", ts.calls);
    COUNTER("controller_calls_failed_total", "Calls that did not return OK.", ts.calls_failed);
    COUNTER("controller_calls_unavailable_total", "Calls failed for lack of a link.",
            ts.calls_unavailable);
    COUNTER("controller_links_refused_total", "Controller connections refused.", ts.links_refused);
    COUNTER("controller_events_dropped_total", "Events dropped at a full queue.",
            ts.events_dropped);
    COUNTER("controller_calls_replayed_total",
            "Calls replayed on another link (NOT_FOUND, or refused by a GOAWAY).",
            ts.calls_replayed);
    COUNTER("controller_events_reopened_total", "Events streams the controller ended, reopened.",
            ts.events_reopened);
    COUNTER("controller_probes_ping_total", "Keepalive probes sent as HTTP/2 PINGs.",
            ts.probes_ping);
    COUNTER("controller_probes_health_total", "Keepalive probes sent as gRPC health checks.",
            ts.probes_health);
    COUNTER("controller_ping_backoffs_total", "GOAWAY too_many_pings answered by backing off.",
            ts.ping_backoffs);
  }
  rly_dp_metrics_text(s, &b);
  rly_status_metrics_text(s, &b);
#undef COUNTER
#undef GAUGE
  rly_http_response r = {.status = 200,
                         .content_type = "text/plain; version=0.0.4; charset=utf-8",
                         .body = cm_buf_head(&b),
                         .body_len = cm_buf_size(&b),
                         .extra_headers = extra_headers};
  rly_conn_respond(c, &r);
  cm_buf_free(&b);
}

/* GET /metrics, for whom --metrics lets in; an operator elsewhere reads
 * the same text at /admin/metrics, behind the admin API's sign-in. */
static void metrics(rly_conn *c) {
  if (!metrics_allowed(c)) {
    rly_conn_respond_error(c, 404, "not_found", "no such resource", NULL);
    return;
  }
  rly_metrics_respond(c, NULL);
}

int rly_grpc_to_http(int grpc_status, const char **code) {
  switch (grpc_status) {
  case TUN_GRPC_NOT_FOUND: *code = "not_found"; return 404;
  case TUN_GRPC_UNAUTHENTICATED: *code = "unauthenticated"; return 401;
  case TUN_GRPC_PERMISSION_DENIED: *code = "permission_denied"; return 403;
  case TUN_GRPC_INVALID_ARGUMENT: *code = "invalid_request"; return 400;
  case TUN_GRPC_RESOURCE_EXHAUSTED: *code = "too_many_requests"; return 429;
  case TUN_GRPC_UNAVAILABLE:
  case TUN_GRPC_DEADLINE_EXCEEDED: *code = "controller_unavailable"; return 503;
  default: *code = "bad_controller_answer"; return 502;
  }
}

void rly_route_request(rly_conn *c, const rly_http_request *req) {
  rly_route_match m;
  char allow[128], hdr[160];
  int r = rly_route_find(g_routes, CM_ARRAY_LEN(g_routes), req->method, req->path, &m, allow,
                         sizeof allow);
  switch (r) {
  case RLY_ROUTE_NOT_FOUND:
    rly_conn_respond_error(c, 404, "not_found", "no such resource", NULL);
    return;
  case RLY_ROUTE_BAD_METHOD:
    snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
    rly_conn_respond_error(c, 405, "method_not_allowed", "method not allowed here", hdr);
    return;
  case R_HEALTHZ: healthz(c); return;
  case R_READYZ: readyz(c); return;
  case R_METRICS: metrics(c); return;
  case R_RELAY: rly_dp_upgrade(c, req, m.caps[0]); return;
  case R_SESSIONS_POST: rly_admin_request(c, req, RLY_ADMIN_CREATE, NULL); return;
  case R_SESSIONS_GET: rly_admin_request(c, req, RLY_ADMIN_LIST, NULL); return;
  case R_SESSION_GET: rly_admin_request(c, req, RLY_ADMIN_GET, m.caps[0]); return;
  case R_SESSION_DELETE: rly_admin_request(c, req, RLY_ADMIN_DELETE, m.caps[0]); return;
  case R_SESSIONS_OPTIONS: rly_admin_preflight(c, req, "GET, POST, OPTIONS"); return;
  case R_SESSION_OPTIONS: rly_admin_preflight(c, req, "GET, DELETE, OPTIONS"); return;
  case R_DISCOVERY: rly_admin_discovery(c, req); return;
  case R_ADMIN_METRICS: rly_admin_request(c, req, RLY_ADMIN_METRICS, NULL); return;
  case R_DASHBOARD: rly_dashboard_request(c, req, NULL); return;
  case R_DASHBOARD_FILE: rly_dashboard_request(c, req, m.caps[0]); return;
  default: rly_conn_respond_error(c, 500, "internal", "unrouted request", NULL);
  }
}
