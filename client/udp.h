/*
 * udp.h — (private to client/) the datagram pumps of udp-listen and
 * udp-dial (udp.c), and what they use of peer.c.
 */
#ifndef RELAY_CLIENT_UDP_H
#define RELAY_CLIENT_UDP_H

#include "client/pump.h"

typedef struct rc_udp rc_udp;

/* Binds (listen) or resolves and connects (dial) the socket, then joins.
 * NULL with a message when the socket cannot be set up. */
rc_udp *rc_udp_start(rc_peer *p, char *err, size_t errlen);
/* Closes 1000 (or drops a pending join); rc_peer_pump_done follows. */
void rc_udp_stop(rc_udp *u);

#endif
