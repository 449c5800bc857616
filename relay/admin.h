/*
 * admin.h — (private to relay/) the swsrs admin API (/admin/sessions), its
 * CORS preflights and the discovery document (/.well-known/swsrs-config):
 * route handlers (see conn.h).
 */
#ifndef RELAY_ADMIN_H
#define RELAY_ADMIN_H

#include "relay/conn.h"

/* The handlers' arg: which operation a route is. */
enum { RLY_ADMIN_CREATE = 1, RLY_ADMIN_LIST, RLY_ADMIN_GET, RLY_ADMIN_DELETE, RLY_ADMIN_METRICS };
/* Preflights' arg: the collection or one session. */
enum { RLY_ADMIN_ALL = 0, RLY_ADMIN_ONE = 1 };

void rly_admin_request(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int op);
void rly_admin_preflight(rly_conn *c, const rly_http_request *req, const rly_route_match *m,
                         int which);
void rly_admin_discovery(rly_conn *c, const rly_http_request *req, const rly_route_match *m,
                         int arg);

#endif
