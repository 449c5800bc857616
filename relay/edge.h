/*
 * edge.h — (private to relay/) the server object shared by the files of the
 * public edge: server.c (listener, connections, deadlines, shutdown),
 * routes.c (the request router and small handlers), and the admin and
 * data-plane files that later hang off the router.
 */
#ifndef RELAY_EDGE_H
#define RELAY_EDGE_H

#include "common/common.h"
#include "relay/http.h"
#include "relay/relay.h"

typedef struct rly_conn rly_conn;

typedef struct rly_metrics {
  uint64_t conns_accepted, conns_refused, tls_handshake_failures;
  uint64_t http_requests, http_errors_4xx, http_errors_5xx, http_timeouts;
} rly_metrics;

struct rly_server {
  uv_loop_t *loop;
  const rly_config *cfg;
  uv_tcp_t listener;
  bool listening;
  cm_tls_ctx *tls;
  rly_http_limits limits;
  char server_header[64];
  char public_url[256];
  char node_id[128];

  cm_list conns;       /* every connection */
  cm_list header_wait; /* waiting for request headers, oldest deadline first */
  cm_list idle_wait;   /* keep-alive idle, oldest deadline first */
  size_t nconns;
  uv_timer_t sweep;

  bool shutting_down;
  uv_timer_t grace;
  int handles_open;
  void (*done)(void *);
  void *done_ud;

  rly_metrics m;
  uint64_t started_ms;
};

enum conn_wait { W_NONE, W_HEADER, W_IDLE };

struct rly_conn {
  rly_server *srv;
  cm_stream *st;
  rly_http_conn *http;
  cm_list all;
  cm_list wait;
  enum conn_wait waiting;
  uint64_t deadline;
  uint64_t req_start_ms;
  const rly_http_request *req; /* awaiting its response, else NULL */
  char remote[64];
};

/* routes.c */
void rly_route_request(rly_conn *c, const rly_http_request *req);

/* server.c: answer the current request of c (any time, sync or async). */
int rly_conn_respond(rly_conn *c, const rly_http_response *r);
int rly_conn_respond_json(rly_conn *c, int status, const char *json, const char *extra_headers);
int rly_conn_respond_error(rly_conn *c, int status, const char *code, const char *msg,
                           const char *extra_headers);
#endif
