/*
 * target.h — (private to relay/) the responder of a target session, which
 * the relay dials itself when the initiator joins (browser SSH): a virtual
 * peer on the session's home worker (see target.c).
 */
#ifndef RELAY_TARGET_H
#define RELAY_TARGET_H

#include "relay/edge.h"

/* On w, the session's home worker: target is "host:port", allow the
 * controller's ranges (copied).  Failures close the session (1008 not
 * allowed, 1011 unreachable). */
void rly_target_start(rly_wctx *w, const char *session_id, const char *target, char *const *allow,
                      size_t nallow);

#endif
