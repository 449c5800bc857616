/*
 * pump.h — (private to client/) what the pumps (udp.c, pubsub.c) use of
 * the peer that drives them (peer.c) and of the local end's helpers
 * (io.c).  peer.c starts the pumps and the pumps call back into it: this
 * header is that interface, so the include graph has no cycle (tests/
 * layering.py) and neither side needs the other's header.
 */
#ifndef RELAY_CLIENT_PUMP_H
#define RELAY_CLIENT_PUMP_H

#include "client/internal.h"

/* peer.c */
rc_ws *rc_peer_join(rc_peer *p, const rc_ws_cbs *cbs, void *ud, char *err, size_t errlen);
void rc_peer_pump_done(rc_peer *p, const rc_peer_result *r);
void rc_peer_result_from_end(rc_peer_result *r, const rc_ws_end *e);
/* A pump's result: a local failure (non-empty) decides, else how the
 * WebSocket ended, else (end NULL) "stopped", a clean end. */
void rc_peer_result_end(rc_peer_result *r, const rc_ws_end *end, const char *failure);
rc_peer_stats *rc_peer_stats_of(rc_peer *p);
uv_loop_t *rc_peer_loop(rc_peer *p);
const rc_peer_opts *rc_peer_opts_of(rc_peer *p);
const char *rc_peer_listen_addr(rc_peer *p);
const char *rc_peer_target(rc_peer *p);
/* The refusals a re-join would only repeat. */
bool rc_peer_refusal_permanent(const rc_ws_end *e);

/* io.c */
/* An address as "ip:port" or "[ip6]:port". */
void rc_addr_text(const struct sockaddr_storage *ss, char *out, size_t outlen);
/* "host:port" or "[v6]:port" into its parts; -EINVAL when malformed. */
int rc_hostport_split(const char *hp, char *host, size_t hostlen, uint16_t *port);

#endif
