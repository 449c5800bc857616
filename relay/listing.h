/*
 * listing.h — (private to relay/) GET /admin/sessions once authenticated:
 * every session, streamed under backpressure, or one page.
 */
#ifndef RELAY_LISTING_H
#define RELAY_LISTING_H

#include "relay/conn.h"
#include "relay/jwt.h"

/* p NULL: --no-auth; cors: the response's CORS header lines.  Takes over
 * the connection's pending work. */
void rly_list_sessions(rly_conn *c, const rly_http_request *req, const rly_principal *p,
                       const char *cors);

#endif
