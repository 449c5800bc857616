/*
 * pubsub.h — (private to client/) the Redis pub/sub pump of pubsub-dial
 * (pubsub.c), and what it uses of peer.c beyond udp.h.
 */
#ifndef RELAY_CLIENT_PUBSUB_H
#define RELAY_CLIENT_PUBSUB_H

#include "client/pump.h"

typedef struct rc_pubsub rc_pubsub;

/* Checks the options, joins the session and starts connecting to Redis.
 * NULL with a message for bad options. */
rc_pubsub *rc_pubsub_start(rc_peer *p, char *err, size_t errlen);
/* Closes 1000 (or drops a pending join) and lets go of Redis;
 * rc_peer_pump_done follows. */
void rc_pubsub_stop(rc_pubsub *ps);

#endif
