/*
 * api.h — (private to relay/) shapes of the public API that several
 * handlers share: what a slot token and a session id may look like, the
 * session status object as JSON, a controller's gRPC status as an HTTP
 * status, and a Prometheus metric line.  No I/O.
 */
#ifndef RELAY_API_H
#define RELAY_API_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"
#include "tunnel/tunnel.h"

#define RLY_MAX_TOKEN 256
#define RLY_MAX_ID    64

/* Whether t has a slot token's shape (1..256 of [A-Za-z0-9-_.~]), the
 * only tokens an upgrade accepts; such a token needs no JSON escaping. */
bool rly_token_ok(const char *t);
/* Whether id may be a session id (1..63 of [A-Za-z0-9-_]). */
bool rly_session_id_ok(const char *id);

/* A session status as the API's JSON object (heap text, or NULL). */
char *rly_status_text(const Relay__V1__SessionStatus *st);
/* The same as a jansson object (the caller owns the reference). */
void *rly_status_json(const Relay__V1__SessionStatus *st);
/* An RFC 3339 time, or JSON null for none (a jansson value). */
void *rly_time_json(int64_t unix_s);

/* A controller's gRPC status (or our own call failure, see tun_call_cb) as
 * the HTTP status to send, on its meaning; *code is the JSON error code.
 * Statuses that say nothing a client could act on are 502. */
int rly_grpc_to_http(int grpc_status, const char **code);

/* Appends one Prometheus metric (relay_<name>) with its HELP and TYPE. */
void rly_metric(cm_buf *b, const char *name, const char *help, bool counter, uint64_t v);
/* One labelled sample, relay_<name>{k="v",...} (HELP and TYPE first when
 * `help` is not NULL); label values are escaped as the text format wants. */
void rly_metric_labeled(cm_buf *b, const char *name, const char *help, bool counter,
                        const char *const (*labels)[2], size_t nlabels, uint64_t v);

#endif
