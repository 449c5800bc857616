/*
 * udp.h — (private to client/) the datagram pumps of udp-listen and
 * udp-dial (udp.c), and what they use of peer.c.
 */
#ifndef RELAY_CLIENT_UDP_H
#define RELAY_CLIENT_UDP_H

#include "client/peer.h"

typedef struct rc_udp rc_udp;

/* Binds (listen) or resolves and connects (dial) the socket, then joins.
 * NULL with a message when the socket cannot be set up. */
rc_udp *rc_udp_start(rc_peer *p, char *err, size_t errlen);
/* Closes 1000 (or drops a pending join); rc_peer_pump_done follows. */
void rc_udp_stop(rc_udp *u);

/* peer.c, for udp.c */
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

#endif
