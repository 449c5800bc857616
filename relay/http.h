/*
 * http.h — (private to relay/) the HTTP/1.1 server core, sans-I/O.
 *
 * The core parses requests with libhttp-parser, enforces limits, and formats
 * responses; it never touches a socket or a timer.  Bytes go in through
 * rly_http_feed; a complete request comes out through on_request; response
 * bytes come out through `send`.  One request is handled at a time: while a
 * request awaits its response, pipelined bytes stay buffered (bounded by
 * limits.max_pending_input; past it the caller should stop reading) and are
 * parsed after the response, so answers always leave in request order.
 *
 * Limit violations answer by themselves with a JSON body and close:
 * 400 malformed, 413 body too large, 414 URL too long, 431 headers too
 * large or too many, 501 a transfer coding other than chunked, 505 any
 * version but HTTP/1.x (the HTTP/2 preface included).  408 is produced on
 * request by rly_http_timeout().
 *
 * Strictness (RFC 9112): anything two parsers on the path could frame or
 * route differently is 400 — a header name that is not a token ("Name :"),
 * obs-fold, a bare CR, NUL, Host missing on HTTP/1.1 or given twice or not
 * host[:port], Content-Length twice or with Transfer-Encoding,
 * Transfer-Encoding twice or on HTTP/1.0, a request-target with bytes
 * outside visible ASCII.  Upgrade is ignored on HTTP/1.0 (RFC 9110 §7.8).
 */
#ifndef RELAY_HTTP_H
#define RELAY_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

typedef struct rly_http_limits {
  size_t max_url;           /* default 8 KiB */
  size_t max_header_bytes;  /* request line + headers; default 16 KiB */
  size_t max_headers;       /* default 64 */
  size_t max_body;          /* default 1 MiB */
  size_t max_pending_input; /* pipelined bytes kept while busy; default 64 KiB */
} rly_http_limits;

typedef struct rly_http_header {
  const char *name;  /* NUL-terminated, as received */
  const char *value; /* NUL-terminated, surrounding blanks trimmed */
} rly_http_header;

typedef struct rly_http_request {
  const char *method; /* "GET" */
  const char *target; /* raw request-target, "/relay/x?token=..." */
  const char *path;   /* target up to '?' */
  const char *query;  /* after '?', "" when none */
  const rly_http_header *headers;
  size_t nheaders;
  const uint8_t *body;
  size_t body_len;
  int http_minor; /* 0 or 1 */
  bool keep_alive;
  bool upgrade; /* HTTP/1.1, Connection: upgrade + Upgrade: present */
  bool head;    /* method HEAD: responses carry no body */
} rly_http_request;

typedef struct rly_http_response {
  int status;
  const char *content_type; /* NULL: none */
  const uint8_t *body;
  size_t body_len;
  const char *extra_headers; /* preformatted "Name: value\r\n" lines or NULL */
  bool close;                /* force Connection: close */
  bool chunked;              /* body follows with rly_http_respond_chunk/_end */
} rly_http_response;

typedef struct rly_http_cbs {
  /* A request is ready.  The request and its strings stay valid until the
   * response is given with rly_http_respond (now or later). */
  void (*on_request)(void *ud, const rly_http_request *req);
  /* Response bytes to transmit. Returns 0 or a negative error. */
  int (*send)(void *ud, const void *data, size_t len);
  /* After the last response of a connection: the caller closes it. */
  void (*on_close)(void *ud);
} rly_http_cbs;

typedef struct rly_http_conn rly_http_conn;

void rly_http_limits_default(rly_http_limits *l);
rly_http_conn *rly_http_conn_new(const rly_http_limits *l, const rly_http_cbs *cbs, void *ud,
                                 const char *server_name);
void rly_http_conn_free(rly_http_conn *c);

/* Feeds bytes (copied).  Returns 0, 1 when buffered input now exceeds
 * limits.max_pending_input (the caller should pause reading until the
 * response is out), or -ENOMEM.  Passing len 0 re-runs the parser on
 * buffered input (done by rly_http_respond after an asynchronous answer). */
int rly_http_feed(rly_http_conn *c, const uint8_t *data, size_t len);

/* Sends the response to the current request.  With r->chunked only the
 * head goes now (Transfer-Encoding: chunked; for an HTTP/1.0 client the
 * body is close-delimited instead) and the request stays busy: the caller
 * streams the body with rly_http_respond_chunk, paced by the transport's
 * backpressure, and ends it with rly_http_respond_end. */
int rly_http_respond(rly_http_conn *c, const rly_http_response *r);
int rly_http_respond_chunk(rly_http_conn *c, const void *data, size_t len);
int rly_http_respond_end(rly_http_conn *c);
/* True between a chunked head and its end. */
bool rly_http_streaming(const rly_http_conn *c);
/* Formats {"error":code,"message":msg} (msg escaped; NULL: status text). */
size_t rly_http_format_error(char *out, size_t outlen, int status, const char *code,
                             const char *msg);
/* A response with the JSON error body {"error":code,"message":msg},
 * formatted into body (bodylen bytes). */
rly_http_response rly_http_error_response(char *body, size_t bodylen, int status, const char *code,
                                          const char *msg, const char *extra_headers);
/* Convenience: JSON error body {"error":code,"message":msg}. */
int rly_http_respond_error(rly_http_conn *c, int status, const char *code, const char *msg,
                           const char *extra_headers);

/* The caller's header deadline passed: 408 if a request had begun (then
 * close), otherwise an idle keep-alive connection just closes. */
void rly_http_timeout(rly_http_conn *c);

/* The current request was an upgrade the caller accepts: the caller has
 * written its own 101 via `send`.  Returns bytes received after the request
 * (they belong to the new protocol); the core will do nothing further. */
const uint8_t *rly_http_take_upgrade(rly_http_conn *c, size_t *len);

/* True while a request is awaiting its response. */
bool rly_http_busy(const rly_http_conn *c);
/* True once any byte of a not-yet-complete request has arrived. */
bool rly_http_in_request(const rly_http_conn *c);
/* True when the request headers are complete and the body is pending. */
bool rly_http_in_body(const rly_http_conn *c);
/* Requests completed on this connection. */
uint64_t rly_http_requests(const rly_http_conn *c);

/* Case-insensitive header lookup; NULL when absent.  The first of several. */
const char *rly_http_header_get(const rly_http_request *r, const char *name);
/* Every header called name in turn: start with *i = 0; NULL at the end. */
const char *rly_http_header_next(const rly_http_request *r, const char *name, size_t *i);
/* How many headers are called name. */
size_t rly_http_header_count(const rly_http_request *r, const char *name);
/* The next element of a comma-separated value (RFC 9110 §5.6.1), blanks
 * around it trimmed, empty elements skipped: returns it with its length in
 * *len and advances *cursor, or NULL at the end. */
const char *rly_http_list_next(const char **cursor, size_t *len);
/* True when a comma-separated header value contains token (case-insens.). */
bool rly_http_header_has_token(const char *value, const char *token);
/* Query parameter value (percent-decoded) into out; false if absent (or
 * too long for out, or holding %00).  The first of several. */
bool rly_http_query_get(const char *query, const char *name, char *out, size_t outlen);
/* Every parameter called name in turn, from *cursor (start: the query):
 * 1 with the value in out, -1 for one that does not decode into out
 * (skipped), 0 at the end.  Advances *cursor. */
int rly_http_query_next(const char **cursor, const char *name, char *out, size_t outlen);
const char *rly_http_status_text(int status);

/* ---- router ---------------------------------------------------------------
 * Routes match a method and a path pattern whose segments may be `{name}`
 * (one non-empty segment).  A path that matches a pattern under another
 * method gives 405 with Allow.  Captures are copied into rly_route_match. */
#define RLY_ROUTE_MAX_CAPS 4

typedef struct rly_route_match {
  int route; /* index into the table */
  size_t ncaps;
  char caps[RLY_ROUTE_MAX_CAPS][128];
} rly_route_match;

typedef struct rly_route {
  const char *method; /* NULL: any */
  const char *pattern;
} rly_route;

enum { RLY_ROUTE_NOT_FOUND = -1, RLY_ROUTE_BAD_METHOD = -2 };

/* Returns the route index (>= 0), RLY_ROUTE_NOT_FOUND, or
 * RLY_ROUTE_BAD_METHOD with the allowed methods in allow ("GET, POST"). */
int rly_route_find(const rly_route *table, size_t n, const char *method, const char *path,
                   rly_route_match *m, char *allow, size_t allowlen);

#endif
