/*
 * dataplane.h — (private to relay/) WebSocket upgrades on /relay/{id} and
 * one worker's sessions: pairing and frame forwarding between the two
 * peers of a session.
 *
 * Each worker has one data plane.  A session lives on its home worker
 * (rly_edge_home): an upgrade that lands elsewhere is validated where it
 * landed and then moved to the home worker before its 101, so the two
 * peers always meet on one loop and no frame ever crosses a thread.
 */
#ifndef RELAY_DATAPLANE_H
#define RELAY_DATAPLANE_H

#include "relay/conn.h"
#include "relay/edge.h"

typedef struct rly_dp_metrics {
  rly_counter upgrades, refused_4xx, refused_503, peers_closed, protocol_errors, too_big, bytes_in,
      bytes_out, messages, kicks, peer_wait_expired, moves;
} rly_dp_metrics;

rly_dp *rly_dp_new(rly_wctx *w);
/* After rly_dp_close's callback. */
void rly_dp_free(rly_dp *dp);

/* The route handler of GET /relay/{id}. */
void rly_dp_upgrade(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int arg);

/* Attaches a local peer to a held session's free slot, on this worker:
 * fd is one end of a socketpair speaking WebSocket (the other end masks,
 * as a client: relay/target.c).  0, or -EBUSY (no such session, or the
 * slot is taken), -ENOMEM. */
int rly_dp_attach_fd(rly_wctx *w, const char *session_id, int slot, int fd, const char *label);
/* Closes a session's peers with code and reason, reported as a CLOSE event. */
void rly_dp_kick(rly_wctx *w, const char *session_id, uint16_t code, const char *reason);

/* Commands for sessions of this worker (see control.h). */
void rly_dp_on_kick(rly_wctx *w, const char *session_id, uint16_t code, const char *reason);
void rly_dp_on_link_up(rly_wctx *w, const char *controller);

/* Shutdown: lone peers go now; open sessions run until rly_dp_close_all. */
void rly_dp_shutdown(rly_dp *dp);
void rly_dp_close_all(rly_dp *dp, uint16_t code, const char *reason);
/* Closes the data plane's timer; `closed` runs once it is closed. */
void rly_dp_close(rly_dp *dp, uv_close_cb closed);
size_t rly_dp_peers(const rly_dp *dp);
size_t rly_dp_sessions(const rly_dp *dp);

/* /metrics: the data plane's figures summed over every worker. */
void rly_dp_metrics_text(rly_edge *e, cm_buf *b);

#endif
