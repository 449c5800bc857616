/*
 * routes.h — (private to relay/) the public route table: which handler
 * serves which method and path.  The composition (server.c) builds the
 * router from it; the connection layer below knows no handler.
 */
#ifndef RELAY_ROUTES_H
#define RELAY_ROUTES_H

#include "relay/conn.h"

/* The table (static storage) and its length. */
const rly_route_def *rly_routes(size_t *n);

#endif
