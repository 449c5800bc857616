/*
 * internal.h — (private to client/) one HTTP/1.1 exchange on a fresh
 * connection, shared by rc_http (which wants the whole answer) and rc_ws
 * (which wants a 101 and then the connection itself).
 *
 * An exchange resolves the host off the loop, tries each address in turn
 * until one connects (a TLS failure is final: the next address is the same
 * server), sends the request once the stream is open, and parses the
 * answer with cm_http_resp.  Deadlines: connect_timeout_ms for lookup,
 * TCP and TLS; timeout_ms for everything.  The callback runs exactly once,
 * from the loop, unless the exchange is cancelled first.
 */
#ifndef RELAY_CLIENT_INTERNAL_H
#define RELAY_CLIENT_INTERNAL_H

#include "client/client.h"

#define RC_CONNECT_TIMEOUT_MS 10000
#define RC_HTTP_TIMEOUT_MS    30000
#define RC_HTTP_MAX_BODY      (1u << 20)
#define RC_USER_AGENT         "relay-client/" RELAY_VERSION

typedef struct rc_xchg rc_xchg;

typedef struct rc_xchg_opts {
  const rc_url *url;
  cm_tls_ctx *tls;     /* required when url->tls */
  cm_buf *request;     /* the request bytes; taken over (and wiped) */
  size_t max_body;     /* answer body cap */
  unsigned resp_flags; /* CM_HTTP_RESP_* */
  uint32_t connect_timeout_ms, timeout_ms;
  const cm_stream_opts *stream; /* watermarks, keepalive; tls and sni are set here */
} rc_xchg_opts;

/* err 0: resp is complete.  st is the connection (NULL when the answer
 * ended with it) and rest/restlen the bytes that followed the answer in
 * the same read (a 101's first frames; modifiable during the call).  To
 * keep the connection the callback sets its own callbacks and data on st
 * (cm_stream_set_cbs, cm_stream_set_data) and returns true; otherwise the
 * exchange closes it.  err < 0: msg says what failed; st is NULL.  The
 * exchange is freed after the callback. */
typedef bool (*rc_xchg_cb)(void *ud, int err, const char *msg, cm_http_resp *resp, cm_stream *st,
                           uint8_t *rest, size_t restlen);

/* Never fails synchronously except for memory (NULL); every other failure
 * reaches cb.  The request buffer is taken over in any case. */
rc_xchg *rc_xchg_start(uv_loop_t *loop, const rc_xchg_opts *o, rc_xchg_cb cb, void *ud);
/* cb will not run; the connection, if any, is reset. */
void rc_xchg_cancel(rc_xchg *x);

/* Appends a NUL-terminated string (for requests in secret buffers, where
 * cm_buf_printf must not be used). */
int rc_buf_puts(cm_buf *b, const char *s);
/* True when s may go into a header value: visible ASCII and blanks. */
bool rc_header_safe(const char *s);

#endif
