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
#include "tunnel/tunnel.h"

typedef struct rly_conn rly_conn;
typedef struct rly_session rly_session;
typedef struct rly_auth rly_auth;
typedef struct rly_auth_req rly_auth_req;
typedef struct rly_principal rly_principal;
typedef struct ctl_embedded ctl_embedded;

typedef struct rly_dp_metrics {
  uint64_t upgrades, refused_4xx, refused_503, peers_closed, protocol_errors, too_big, bytes_in,
      bytes_out, messages, kicks, peer_wait_expired;
} rly_dp_metrics;

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

  bool shutting_down, started, finishing, control_stopped;
  uv_timer_t grace;
  int handles_open;
  void (*done)(void *);
  void *done_ud;

  rly_metrics m;
  uint64_t started_ms;
  void *ip_tab; /* iplimit.c */

  rly_auth *auth; /* OIDC verifier; NULL with --no-auth */

  /* controller link (control.c) */
  tun_relay *tun;
  ctl_embedded *embedded;
  size_t links;
  void (*control_done)(void *);

  /* data plane (dataplane.c) */
  rly_session **sess_tab;
  size_t sess_cap, nsessions, npeers;
  cm_list sessions;
  uv_timer_t dp_tick;
  bool draining;
  uint64_t drain_deadline_ms;
  uint64_t max_message; /* runtime limit (controller may lower it) */
  uint64_t max_sessions;
  uint64_t peer_wait_ms; /* default for decisions that leave it 0 */
  rly_dp_metrics dm;
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
  /* Work in flight for the current request (a Validate, an admin call,
   * a token check): cancelled if the connection goes first. */
  void *pending;
  void (*pending_cancel)(void *pending);
  /* A streamed response waits for the write queue to drain. */
  void (*on_drain)(void *ud);
  void *drain_ud;
  char remote[64];
  bool ip_held;    /* counted against --max-conns-per-ip */
  bool over_limit; /* answer 429 and close */
};

/* control.c */
int rly_control_start(rly_server *s, char *err, size_t errlen);
void rly_control_stop(rly_server *s, void (*done)(void *ud));
/* Embedded mode: waits (running the loop) until the in-process link is up. */
int rly_control_wait_embedded(rly_server *s, char *err, size_t errlen);
void rly_control_free(rly_server *s);

/* dataplane.c */
void rly_dp_init(rly_server *s);
void rly_dp_upgrade(rly_conn *c, const rly_http_request *req, const char *session_id);
void rly_dp_on_command(rly_server *s, const char *controller,
                       const Relay__V1__ControllerCommand *cmd);
void rly_dp_on_link_up(rly_server *s, const char *controller);
/* Shutdown: lone peers go now; open sessions run until rly_dp_close_all. */
void rly_dp_shutdown(rly_server *s);
void rly_dp_close_all(rly_server *s, uint16_t code, const char *reason);
void rly_dp_stop(rly_server *s); /* closes the data plane's timer */
void rly_dp_metrics_text(rly_server *s, cm_buf *b);
/* Whether t has a slot token's shape (1..256 of [A-Za-z0-9-_.~]), the
 * only tokens an upgrade accepts; such a token needs no JSON escaping. */
bool rly_dp_token_ok(const char *t);
/* Attaches a local peer to a held session's free slot: fd is one end of a
 * socketpair speaking WebSocket (the other end masks, as a client).
 * 0, or -EBUSY (no such session, or the slot is taken), -ENOMEM. */
int rly_dp_attach_fd(rly_server *s, const char *session_id, int slot, int fd, const char *label);
/* Closes a session's peers with code and reason, reported as a CLOSE event. */
void rly_dp_kick(rly_server *s, const char *session_id, uint16_t code, const char *reason);

/* target.c: the responder of a target session, dialled by the relay (the
 * decision carries the target and the allowed ranges). */
void rly_target_start(rly_server *s, const char *session_id, const Relay__V1__SlotDecision *d);

/* admin.c: the admin API and discovery document. */
void rly_admin_request(rly_conn *c, const rly_http_request *req, int op, const char *id);
void rly_admin_preflight(rly_conn *c, const rly_http_request *req, const char *methods);
void rly_admin_discovery(rly_conn *c, const rly_http_request *req);
enum { RLY_ADMIN_CREATE = 1, RLY_ADMIN_LIST, RLY_ADMIN_GET, RLY_ADMIN_DELETE, RLY_ADMIN_METRICS };
/* A session status as the API's JSON object (heap text, or NULL). */
char *rly_admin_status_text(const Relay__V1__SessionStatus *st);

/* listing.c: GET /admin/sessions once authenticated (p NULL: --no-auth);
 * cors: the response's CORS header lines.  Takes over c->pending. */
void rly_list_sessions(rly_conn *c, const rly_http_request *req, const rly_principal *p,
                       const char *cors);

/* auth.c: OIDC bearer tokens.  The IdP's discovery document and JWKS are
 * fetched at start and refreshed; verification is local except for a rate-
 * limited JWKS refetch on an unknown kid.  cb gets the HTTP status to use
 * (200, 401, 403, 503) and, on 200, the principal (valid during cb). */
typedef void (*rly_auth_cb)(void *ud, int status, const rly_principal *p, const char *error,
                            const char *description);
rly_auth *rly_auth_new(rly_server *s, char *err, size_t errlen);
int rly_auth_start(rly_auth *a, char *err, size_t errlen);
/* Runs cb now (returning NULL) or later (returning a handle to cancel). */
rly_auth_req *rly_auth_check(rly_auth *a, const char *token, rly_auth_cb cb, void *ud);
void rly_auth_cancel(rly_auth_req *r);
/* The swsrs-config document; false until the IdP's discovery is known. */
bool rly_auth_discovery_json(rly_auth *a, cm_buf *out);
void rly_auth_stop(rly_auth *a, void (*done)(void *ud), void *ud);
void rly_auth_free(rly_auth *a);

/* fetch.c: asynchronous HTTP(S) GET.  cb runs exactly once, from the loop,
 * unless cancelled: status is the HTTP status or a negative error.  The
 * handle is invalid after cb or cancel. */
typedef struct rly_fetch rly_fetch;
typedef void (*rly_fetch_cb)(void *ud, int status, const char *body, size_t len, const char *err);
rly_fetch *rly_fetch_get(uv_loop_t *loop, cm_tls_ctx *tls, const char *url, size_t max_body,
                         uint32_t timeout_ms, rly_fetch_cb cb, void *ud);
void rly_fetch_cancel(rly_fetch *f);

/* status.c: the relay's own figures beside the traffic counters: its
 * build, its limits, the controllers linked (labelled by name). */
void rly_status_metrics_text(rly_server *s, cm_buf *b);
/* One labelled sample, relay_<name>{k="v",...} (HELP and TYPE first when
 * `help` is not NULL); label values are escaped as the text format wants. */
void rly_metric_labeled(cm_buf *b, const char *name, const char *help, bool counter,
                        const char *const (*labels)[2], size_t nlabels, uint64_t v);

/* cors.c: explicit allowlist match (false when the list is empty). */
bool rly_origin_allowed(const cm_strlist *allow, const char *origin);

/* server.c: hands the connection's stream over to a new owner (the
 * WebSocket peer) and frees the HTTP side.  Bytes received after the
 * request are copied into leftover. */
cm_stream *rly_conn_detach(rly_conn *c, cm_buf *leftover);

/* server.c: called when a connection or peer goes during shutdown. */
void rly_server_maybe_finish(rly_server *s);

/* iplimit.c: connections per client address (--max-conns-per-ip). */
bool rly_ip_acquire(rly_server *s, const char *addr); /* false: over the limit */
void rly_ip_release(rly_server *s, const char *addr);
void rly_ip_free(rly_server *s);

/* routes.c */
/* Appends one Prometheus metric (relay_<name>) with its HELP and TYPE. */
void rly_metric(cm_buf *b, const char *name, const char *help, bool counter, uint64_t v);
/* Answers c with the whole metrics text (the caller decided c may read it). */
void rly_metrics_respond(rly_conn *c, const char *extra_headers);
void rly_route_request(rly_conn *c, const rly_http_request *req);
/* A controller's gRPC status (or our own call failure, see tun_call_cb) as
 * the HTTP status to send, on its meaning; *code is the JSON error code.
 * Statuses that say nothing a client could act on are 502. */
int rly_grpc_to_http(int grpc_status, const char **code);

/* server.c: answer the current request of c (any time, sync or async). */
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
#endif
