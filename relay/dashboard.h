/*
 * dashboard.h — (private to relay/) the operator's dashboard at /dashboard:
 * a static page and script kept as files in relay/dashboard/ and compiled
 * into the binary (cmake/embed.cmake writes rly_assets), served with a
 * strict Content-Security-Policy.  The page holds nothing secret and is
 * served to anyone; what it shows it reads through the admin API and
 * GET /admin/metrics, under the admin API's authentication.
 */
#ifndef RELAY_DASHBOARD_H
#define RELAY_DASHBOARD_H

#include "relay/conn.h"

typedef struct rly_asset {
  const char *name; /* file name under relay/dashboard/ */
  const unsigned char *data;
  size_t len;
} rly_asset;

extern const rly_asset rly_assets[];
extern const size_t rly_nassets;

/* GET /dashboard (file 0: the page) and /dashboard/{name} (file 1), a
 * route handler (conn.h). */
void rly_dashboard_request(rly_conn *c, const rly_http_request *req, const rly_route_match *m,
                           int file);

/* The Content-Security-Policy of the dashboard's files into out; the
 * token endpoint's origin (from the discovery document `discovery`, JSON,
 * or NULL) is the one other place the page may connect to.  Exposed for
 * the unit test. */
void rly_dashboard_csp(const char *discovery, size_t len, char *out, size_t outlen);

#endif
