/*
 * preface.h — (private to relay/) a connection's first bytes, before TLS,
 * when --proxy-protocol is on: the PROXY header of a trusted proxy, read
 * on the worker that took the connection, before the connection layer
 * (conn.h) and OpenSSL see a byte.
 *
 * From a trusted proxy the header is required; it is peeked at, parsed
 * (proxy.h) and then consumed exactly, so the TLS records behind it stay
 * in the socket for OpenSSL.  The client it names is who the connection
 * is from: it is counted against --max-conns-per-ip then (the acceptor
 * cannot: it knows only the proxy) and is the address of the logs and of
 * Validate.  From anyone else the first bytes are only looked at: a PROXY
 * signature is refused, anything else goes on as a direct client.  Every
 * refusal closes the connection and logs why; the wait is bounded by
 * --header-timeout and the header by RLY_PROXY_MAX.
 */
#ifndef RELAY_PREFACE_H
#define RELAY_PREFACE_H

#include "relay/conn.h"
#include "relay/edge.h"

rly_prefaces *rly_prefaces_new(rly_wctx *w);
/* A connection the acceptor took (it counts in edge->live).  trusted: the
 * socket's source is in --trusted-proxies (a header is required, and its
 * address is not counted yet); otherwise ip_held and over_limit are as the
 * acceptor counted the socket's address (see rly_conns_adopt). */
void rly_preface_start(rly_prefaces *ps, int fd, const char *remote, bool trusted, bool ip_held,
                       bool over_limit);
/* The grace period is over: connections still before their header are
 * closed (at shutdown they are let finish it, bounded by --header-timeout). */
void rly_prefaces_abort(rly_prefaces *ps);
size_t rly_prefaces_count(const rly_prefaces *ps);
void rly_prefaces_free(rly_prefaces *ps);

#endif
