/*
 * routes.c — the public route table and the small built-in handlers
 * (/healthz, /readyz, /metrics; the figures themselves are status.c's).  Larger handlers (admin
 * API, WebSocket upgrade) live in their own modules; this is the one place that names them all.
 */
#include "relay/routes.h"

#include "relay/admin.h"
#include "relay/dashboard.h"
#include "relay/dataplane.h"
#include "relay/status.h"

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

static void readyz_answer(rly_conn *c, const rly_link_figures *f, const char *extra) {
  CM_UNUSED(extra);
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
  rly_status_ask(c, readyz_answer, NULL);
}

static void metrics(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int arg) {
  CM_UNUSED(req);
  CM_UNUSED(m);
  CM_UNUSED(arg);
  if (!metrics_allowed(c)) {
    rly_conn_respond_error(c, 404, "not_found", "no such resource", NULL);
    return;
  }
  rly_metrics_respond(c, NULL);
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
    {"GET", "/admin/metrics", rly_admin_request, RLY_ADMIN_METRICS},
    {"GET", "/dashboard", rly_dashboard_request, 0},
    {"GET", "/dashboard/{id}", rly_dashboard_request, 1},
};

const rly_route_def *rly_routes(size_t *n) {
  *n = CM_ARRAY_LEN(g_routes);
  return g_routes;
}
