/*
 * edge.h — (private to relay/) what every part of the public edge may see:
 * the edge's shared state and the context of one worker.
 *
 * The edge runs one control thread (the controller link, the acceptor)
 * and N workers, each a thread with its own libuv loop that owns its
 * connections, sessions, timers and buffers (docs/DESIGN.md §1).  What
 * they share is here: the configuration and TLS context (read-only once
 * started), and the few global figures every worker must agree on — live
 * connections, sessions, per-address counts, draining and the
 * controller's limits.  Those are atomics (or, for the per-address table,
 * a mutex) touched only at accept, upgrade and close, never per frame.
 *
 * A worker's parts (connections, data plane, mailbox) reach each other
 * through its rly_wctx; the types are declared here and defined by their
 * own modules, so no module needs another's header to hold a pointer.
 */
#ifndef RELAY_EDGE_H
#define RELAY_EDGE_H

#include <stdatomic.h>

#include "common/common.h"
#include "relay/http.h"
#include "relay/proxy.h"
#include "relay/relay.h"

typedef struct rly_conns rly_conns;       /* conn.h: a worker's HTTP connections */
typedef struct rly_dp rly_dp;             /* dataplane.h: a worker's sessions and peers */
typedef struct rly_control rly_control;   /* control.h: the controller link */
typedef struct rly_mailbox rly_mailbox;   /* mailbox.h */
typedef struct rly_prefaces rly_prefaces; /* preface.h: connections before their PROXY header */
typedef struct rly_wctx rly_wctx;

/* A counter with one writer (its worker) and any number of readers
 * (/metrics): relaxed loads and stores, which compile to plain moves, so
 * counting costs what it did before there were threads. */
typedef _Atomic uint64_t rly_counter;

static inline void rly_count(rly_counter *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}
static inline uint64_t rly_counter_get(const rly_counter *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

typedef struct rly_reloads rly_reloads; /* reload.h */

/* Which certificate an expiry gauge is of (reload.h). */
enum { RLY_CERT_PUBLIC, RLY_CERT_TUNNEL, RLY_CERT_CONTROLLER_CA, RLY_CERT_N };

typedef struct rly_edge {
  /* The settings and the public listener's TLS context (NULL: plain): a
   * reload swaps them (reload.h), so each use loads the pointer afresh and
   * keeps it no longer than the callback it runs in. */
  const rly_config *_Atomic cfg;
  cm_tls_ctx *_Atomic tls;
  rly_reloads *reloads;
  _Atomic int64_t cert_not_after[RLY_CERT_N]; /* Unix seconds; 0: none */
  rly_http_limits limits;
  char server_header[64];
  char public_url[256];
  char node_id[128];
  uint64_t started_ms;

  rly_wctx **workers;
  size_t nworkers;
  rly_control *ctl;
  /* Dials the responder of a target session (target.c), on the session's
   * home worker, once its initiator joined; set by the composition, so the
   * data plane needs no header of the part that uses it. */
  void (*start_target)(rly_wctx *w, const char *session_id, const char *target, char *const *allow,
                       size_t nallow);

  /* Global caps, counted across workers. */
  atomic_size_t live;     /* public connections and peers (--max-connections) */
  atomic_size_t sessions; /* sessions with a peer (--max-sessions) */
  /* Set by a controller's Drain: no new peers; what is left closes at the
   * deadline (each worker's tick looks). */
  atomic_bool draining;
  _Atomic uint64_t drain_deadline_ms;
  /* The controller's Limits may change these at any time. */
  _Atomic uint64_t max_message, max_sessions, peer_wait_ms;

  /* The acceptor's counters (it alone writes them). */
  rly_counter conns_accepted, conns_refused;
  /* Connections refused for their PROXY header (or its absence): workers. */
  rly_counter proxy_refused;

  /* --trusted-proxies: who may name the client (PROXY header, Forwarded,
   * X-Forwarded-For); --proxy-protocol: they must send a PROXY header. */
  rly_cidrs trusted;
  bool proxy_protocol;

  /* Connections per client address (iplimit.c), under ip_lock. */
  uv_mutex_t ip_lock;
  void *ip_tab;
} rly_edge;

/* One worker, as its parts see it.  Everything but `edge` belongs to the
 * worker's thread. */
struct rly_wctx {
  rly_edge *edge;
  size_t index;
  uv_loop_t *loop;
  rly_mailbox *inbox; /* messages from other threads, run on loop */
  rly_conns *conns;
  rly_prefaces *prefaces;
  rly_dp *dp;
  bool shutting_down;
  /* Calls and token checks this worker has in flight at the control
   * thread: bounded, so their answers always fit its inbox. */
  size_t outstanding;
  /* A connection or peer went: during shutdown the worker may be done. */
  void (*maybe_finish)(rly_wctx *w);
};

/* FNV-1a of a string (hash tables and home workers). */
uint64_t rly_hash(const char *s);
/* The worker that holds a session's peers: the two peers of a session
 * meet there, whatever worker their connections landed on. */
size_t rly_edge_home(const rly_edge *e, const char *session_id);

/* iplimit.c: connections per client address (--max-conns-per-ip), from
 * any thread. */
bool rly_ip_acquire(rly_edge *e, const char *addr); /* false: over the limit */
void rly_ip_release(rly_edge *e, const char *addr);
void rly_ip_free(rly_edge *e);

#endif
