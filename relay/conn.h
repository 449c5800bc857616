/*
 * conn.h — (private to relay/) the HTTP connections of one worker, and the
 * respond layer every handler answers through.
 *
 * A connection is a cm_stream running the HTTP core (http.h).  Each
 * complete request goes to the handler its route names in the router, a
 * table built once by the composition (routes.c) and shared read-only by
 * every worker: this layer knows no handler.  Handlers answer, now or
 * later, with rly_conn_respond*, or stream a body; work they leave in
 * flight is registered with rly_conn_set_pending so that it is cancelled
 * if the connection goes first.
 *
 * Deadlines use no timer per connection: connections waiting for request
 * headers sit in one FIFO and idle keep-alive connections in another; all
 * entries of a list share one timeout, so insertion order is deadline
 * order and one sweep (250 ms) pops expired heads.  A header deadline is
 * set when a request begins and trickled bytes do not extend it.
 *
 * A connection can leave: rly_conn_detach hands its stream to a new owner
 * (a WebSocket peer) on this worker; rly_conn_move sends the whole
 * connection, request in flight included, to another worker (see there).
 */
#ifndef RELAY_CONN_H
#define RELAY_CONN_H

#include "common/common.h"
#include "relay/edge.h"
#include "relay/http.h"

typedef struct rly_conn rly_conn;

/* ---- the router ------------------------------------------------------------ */

typedef void (*rly_handler)(rly_conn *c, const rly_http_request *req, const rly_route_match *m,
                            int arg);

typedef struct rly_route_def {
  const char *method; /* NULL: any */
  const char *pattern;
  rly_handler fn;
  int arg; /* passed to fn (one handler serving several routes) */
} rly_route_def;

typedef struct rly_router rly_router;
/* defs is borrowed and must outlive the router. */
rly_router *rly_router_new(const rly_route_def *defs, size_t n);
void rly_router_free(rly_router *r);

/* ---- a worker's connections ---------------------------------------------------- */

typedef struct rly_conn_metrics {
  rly_counter tls_handshake_failures, http_requests, http_errors_4xx, http_errors_5xx,
      http_timeouts;
} rly_conn_metrics;

struct rly_conns {
  rly_wctx *w;
  const rly_router *router;
  cm_list all;         /* every connection */
  cm_list header_wait; /* waiting for request headers, oldest deadline first */
  cm_list idle_wait;   /* keep-alive idle, oldest deadline first */
  atomic_size_t n;     /* read by other workers' /metrics */
  uv_timer_t sweep;
  rly_conn_metrics m;
  /* Shutdown: connections that have asked nothing yet may until then. */
  uint64_t let_in_until_ms;
  bool let_in_over;
};

int rly_conns_init(rly_conns *cs, rly_wctx *w, const rly_router *r);
/* A socket the acceptor took for this worker, from remote ("ip:port": the
 * socket's peer, or the client a PROXY header named); it already counts in
 * edge->live.  A peer in --trusted-proxies names the client of each
 * request with Forwarded or X-Forwarded-For (proxy.h); the connection
 * counts against that client's address from then on.  ip_held: it counts against its address's
 * limit (released when it goes); over_limit: the address is over
 * --max-conns-per-ip, so its first request is answered 429. */
void rly_conns_adopt(rly_conns *cs, int fd, const char *remote, bool ip_held, bool over_limit);
/* Shutdown: idle keep-alive connections go now; requests in flight
 * finish and then close.  A connection that has not asked anything yet
 * (a client between its connect and its request, during a handover) may
 * start its request within RLY_SHUTDOWN_LET_IN_MS; if it has not by then,
 * it is closed. */
#define RLY_SHUTDOWN_LET_IN_MS 500
void rly_conns_shutdown(rly_conns *cs);
/* The grace period is over: reset every connection. */
void rly_conns_abort_all(rly_conns *cs);
/* Closes the sweep timer; `closed` runs once it is closed. */
void rly_conns_close(rly_conns *cs, uv_close_cb closed);
size_t rly_conns_count(const rly_conns *cs);

/* ---- one connection --------------------------------------------------------------- */

enum rly_conn_wait { RLY_W_NONE, RLY_W_HEADER, RLY_W_IDLE };

struct rly_conn {
  rly_conns *cs;
  rly_wctx *w;
  cm_stream *st;
  rly_http_conn *http;
  cm_list all;
  cm_list wait;
  enum rly_conn_wait waiting;
  uint64_t deadline;
  uint64_t req_start_ms;
  const rly_http_request *req; /* awaiting its response, else NULL */
  /* Work in flight for the current request (a Validate, an admin call,
   * a token check): cancelled if the connection goes first. */
  void *pending;
  void (*pending_cancel)(void *pending);
  /* A streamed response waits for the write queue to drain. */
  void (*on_drain)(void *ud);
  void *drain_ud;
  char remote[64];   /* the client: the socket's peer, or whom a trusted proxy named */
  char peer[64];     /* who sends the bytes: the socket's peer, or a PROXY header's client */
  bool trusted_peer; /* peer is in --trusted-proxies: its requests name the client */
  bool served;       /* has sent a request (at shutdown, one that has not gets to) */
  bool ip_held;      /* counted against --max-conns-per-ip */
  bool over_limit;   /* answer 429 and close */
};

void rly_conn_set_pending(rly_conn *c, void *pending, void (*cancel)(void *pending));
/* The work in flight, who, finished by itself: it is no longer the
 * connection's pending work, nor its drain hook's.  Only who's own is
 * cleared: answering a request can run the next one pipelined behind it at
 * once, and that one's work (registered meanwhile) must stay cancellable. */
void rly_conn_clear_pending(rly_conn *c, const void *who);

/* Answer the current request (any time, sync or async). */
int rly_conn_respond(rly_conn *c, const rly_http_response *r);
int rly_conn_respond_json(rly_conn *c, int status, const char *json, const char *extra_headers);
int rly_conn_respond_error(rly_conn *c, int status, const char *code, const char *msg,
                           const char *extra_headers);
/* Streamed responses: rly_conn_respond with r->chunked sends the head;
 * rly_conn_stream sends a piece of the body and returns 1 when the caller
 * should wait for on_drain before producing more (0: go on, <0: error);
 * rly_conn_stream_end finishes.  rly_conn_abort resets the connection, the
 * only honest end for a body that cannot be completed once its 200 left. */
int rly_conn_stream(rly_conn *c, const void *data, size_t len);
int rly_conn_stream_end(rly_conn *c);
void rly_conn_on_drain(rly_conn *c, void (*cb)(void *ud), void *ud);
void rly_conn_abort(rly_conn *c);

/* Hands the connection's stream over to a new owner on this worker (the
 * WebSocket peer) and frees the HTTP side.  Bytes received after the
 * request are copied into leftover.  The connection still counts as live
 * (edge->live): the new owner releases it. */
cm_stream *rly_conn_detach(rly_conn *c, cm_buf *leftover);

/* Moves the connection, with the request it awaits an answer for, to
 * worker `to`: the socket, its TLS state and every byte already read go
 * along (cm_stream_detach), once no write of ours is queued, so the move
 * happens between reads and before any frame.  On `to`'s loop cb(c, ud)
 * then continues with c, which belongs to `to` from then on.  If the
 * connection fails first it closes as usual (its pending work is
 * cancelled) and cb never runs.  Only while a request awaits its answer.
 * Returns 0, or a negative error (c stays here, untouched). */
typedef void (*rly_conn_moved_cb)(rly_conn *c, void *ud);
int rly_conn_move(rly_conn *c, rly_wctx *to, rly_conn_moved_cb cb, void *ud);

#endif
