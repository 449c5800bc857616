/*
 * resp.h — (private to relay/) the HTTP/1.1 response parser of the IdP
 * client, sans-I/O.  fetch.c feeds it the bytes it reads and tells it when
 * the connection ends; out come the status and body of the response.
 *
 * Framing is libhttp-parser's: a body is delimited by Content-Length, by
 * chunked transfer coding, or, with neither, by the end of the connection
 * (rly_resp_eof); 1xx, 204 and 304 have none.  A status outside 100..599
 * is malformed.  Interim 1xx responses are skipped (101 counts as final:
 * we never ask to upgrade), and bytes after the final response are
 * ignored.  Limits: the body is capped at max_body (-EFBIG); the status
 * line and headers at libhttp-parser's HTTP_MAX_HEADER_SIZE (80 KiB in
 * Debian's build; -EPROTO, like any malformed response).
 *
 * Ownership: the caller owns the struct; rly_resp_free releases the body.
 */
#ifndef RELAY_RESP_H
#define RELAY_RESP_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/common.h"

typedef struct rly_resp {
  http_parser parser;
  cm_buf body;        /* the body so far; complete once result is 1 */
  int status;         /* the response's status code, once result is 1 */
  int result;         /* 0 in progress, 1 complete, < 0 failed (negative errno) */
  const char *errmsg; /* static text, once result < 0 */
} rly_resp;

void rly_resp_init(rly_resp *r, size_t max_body);
void rly_resp_free(rly_resp *r);

/* Parses len more bytes.  Returns the result: 1 once the response is
 * complete, 0 while more is needed, or -EPROTO (malformed) / -EFBIG (body
 * over max_body) with errmsg set.  Once it is non-zero it stays so and
 * further bytes are ignored.  An empty feed changes nothing (the end of
 * the connection is rly_resp_eof). */
int rly_resp_feed(rly_resp *r, const void *data, size_t len);

/* The connection ended: a body delimited by the end of the connection is
 * complete now.  Returns the result as rly_resp_feed; 0 means the response
 * was cut short (the caller names the cause). */
int rly_resp_eof(rly_resp *r);

#endif
