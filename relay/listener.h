/*
 * listener.h — (private to relay/) the public listener: one socket, one
 * acceptor on the control thread, connections handed to the workers.
 *
 * The acceptor takes each connection (accept4), applies the global caps —
 * --max-connections (reset at once past it) and --max-conns-per-ip
 * (counted here, answered 429 by the worker at the first request) — and
 * posts the socket to a worker, round-robin, skipping a worker whose
 * mailbox is full: a stalled worker gets no new connections while the
 * others take them.  docs/DESIGN.md §1 says why one acceptor rather than
 * SO_REUSEPORT per worker (and BENCHMARKS.md measures both).
 *
 * With --accept reuseport (kept to measure the alternative) each worker
 * has a listener of its own on the same port, with SO_REUSEPORT: the
 * kernel spreads connections over them and each worker takes its own
 * (`own`), with the same caps.
 */
#ifndef RELAY_LISTENER_H
#define RELAY_LISTENER_H

#include "relay/edge.h"

typedef struct rly_listener {
  rly_edge *e;
  int fd;
  uv_poll_t poll;
  uv_timer_t backoff; /* out of file descriptors: accept again a little later */
  bool started, closing;
  int handles;
  size_t next;   /* round-robin */
  rly_wctx *own; /* reuseport: the worker this listener accepts for, on its loop */
  void (*closed)(struct rly_listener *l);
} rly_listener;

/* Binds (no listen yet: the port is known before anything connects).
 * port >= 0 replaces the configured one (the workers' listeners after the
 * first, with reuseport); own: see above (NULL: hand off to the workers). */
int rly_listener_bind(rly_listener *l, rly_edge *e, rly_wctx *own, int port, char *err,
                      size_t errlen);
int rly_listener_port(const rly_listener *l);
/* listen(2): connections queue from here on, accepted once started. */
int rly_listener_listen(rly_listener *l, char *err, size_t errlen);
/* On the loop that accepts (the control thread's). */
int rly_listener_start(rly_listener *l, uv_loop_t *loop);
/* Stops accepting and closes the socket; `closed` runs once it is. */
void rly_listener_close(rly_listener *l, void (*closed)(rly_listener *l));

#endif
