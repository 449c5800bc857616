/*
 * worker.h — (private to relay/) one worker: a thread with its own libuv
 * loop that owns its connections (conn.h), its sessions and peers
 * (dataplane.h), their timers and their buffers.  Other threads reach it
 * only through its mailbox.
 *
 * Life: rly_worker_new builds it on the caller's thread (nothing runs);
 * rly_worker_start starts its thread; rly_worker_shutdown (any thread)
 * begins the graceful drain, and the worker reports `on_drained` (on the
 * control thread) whenever it holds no connection and no peer; then
 * rly_worker_exit (any thread) closes its handles and the thread ends;
 * rly_worker_free joins it.
 */
#ifndef RELAY_WORKER_H
#define RELAY_WORKER_H

#include "relay/conn.h"
#include "relay/edge.h"

typedef struct rly_worker rly_worker;

rly_worker *rly_worker_new(rly_edge *e, size_t index, const rly_router *router,
                           void (*on_drained)(void *ud), void *ud, char *err, size_t errlen);
rly_wctx *rly_worker_ctx(rly_worker *w);
int rly_worker_start(rly_worker *w, char *err, size_t errlen);
void rly_worker_shutdown(rly_worker *w);
void rly_worker_exit(rly_worker *w);
/* Waits for the thread to end (if it ran). */
void rly_worker_join(rly_worker *w);
/* Joins and frees everything; once no other thread may post to it. */
void rly_worker_free(rly_worker *w);

#endif
