/*
 * client.h — the client side of relay as a library (prefix rc_): what the
 * `relay` binary's client commands are made of, on the same plumbing as
 * the server (common/) and the same WebSocket codec (websocket/), never on
 * the relay itself.
 *
 * Layers, bottom up:
 *  - URLs (rc_url_*): http, https, ws and wss; host names, IPv4 and
 *    bracketed IPv6 literals, ports, path and query.
 *  - TLS (rc_tls_new): verification against the system store or a CA file
 *    (--ca), the host name checked on every connection; no verification
 *    only when asked (--insecure), and then with a warning on stderr.
 *  - One HTTP/1.1 request on a fresh connection (rc_http_*), for the admin
 *    API and the identity provider: name resolution off the loop
 *    (uv_getaddrinfo), connect and handshake deadlines, bounded answers,
 *    the callback exactly once, from the loop, unless cancelled.
 *  - The WebSocket client (rc_ws_*): the upgrade with the slot token in
 *    `Authorization: Bearer` (never in the URL), checked 101, then frames
 *    through the sans-I/O codec in the client role (server frames
 *    unmasked; ours masked with CSPRNG keys), messages streamed, pings
 *    answered, client pings with a dead-peer timeout, a clean close
 *    handshake, backpressure both ways.
 *  - Peers (rc_peer_*): the pumps behind `relay raw`, `tcp-listen`,
 *    `tcp-dial`, `udp-listen` and `udp-dial`.
 *  - Admin commands and sign-in (rc_admin_run, rc_auth_run): `relay
 *    create|list|get|delete` and `relay auth`, at the end of this file.
 *
 * Everything runs on one libuv loop the caller owns and is not
 * thread-safe.  Nothing blocks the loop.  Errors are negative codes plus a
 * message in a caller buffer; nothing here exits.
 *
 * Secrets (bearer tokens, slot tokens, answers that carry tokens) are kept
 * in memory that is wiped before it is freed and never reach a log line or
 * an error message.
 */
#ifndef RELAY_CLIENT_H
#define RELAY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * URLs.
 * ---------------------------------------------------------------------- */
#define RC_HOST_MAX 256
#define RC_PATH_MAX 2048

typedef struct rc_url {
  bool tls;               /* https or wss */
  bool websocket;         /* ws or wss */
  char host[RC_HOST_MAX]; /* name or IP literal; IPv6 without brackets */
  uint16_t port;          /* the scheme's default when the URL has none */
  char path[RC_PATH_MAX]; /* path and query, at least "/"; no fragment */
} rc_url;

/* Parses an absolute URL: scheme http, https, ws or wss (any case), a host
 * (IPv6 literals in brackets), an optional port, path and query.  User
 * information ("user:pass@") is refused: credentials never travel in
 * URLs.  Returns 0, or -EINVAL with a message that quotes no query. */
int rc_url_parse(const char *text, rc_url *u, char *err, size_t errlen);

/* The Host header for u: the host (bracketed when IPv6), then ":port"
 * unless it is the scheme's default (RFC 9110 §7.2). */
void rc_url_authority(const rc_url *u, char *out, size_t outlen);

/* u as text, for messages: scheme://authority/path without the query (a
 * query may carry secrets). */
void rc_url_display(const rc_url *u, char *out, size_t outlen);

/* The data-plane URL of a session: base's path (without a trailing "/")
 * then "/relay/SESSION", and "?role=ROLE" when role is not NULL; an http
 * or https base becomes ws or wss.  A session id must be base64url
 * characters (1..128).  Returns 0 or -EINVAL with a message. */
int rc_url_session(const rc_url *base, const char *session, const char *role, rc_url *out,
                   char *err, size_t errlen);

/* ------------------------------------------------------------------------
 * TLS for clients.
 * ---------------------------------------------------------------------- */
typedef struct rc_tls_opts {
  const char *ca_file; /* trust only these CAs (PEM); NULL: the system store */
  bool insecure;       /* do not verify the server at all (warns on stderr) */
} rc_tls_opts;

/* A client context: TLS 1.2 or 1.3, ALPN http/1.1, decrypted records wiped
 * (answers carry tokens).  The server's certificate is verified against
 * the trust store and its name against the host dialled (every connection
 * made by rc_http_start and rc_ws_connect sends the host as SNI and checks
 * it, DNS name or IP address).  Free with cm_tls_ctx_free. */
cm_tls_ctx *rc_tls_new(const rc_tls_opts *o, char *err, size_t errlen);

/* ------------------------------------------------------------------------
 * One HTTP/1.1 request and its answer, on a connection of its own.
 *
 * The request is `METHOD path HTTP/1.1` with Host, User-Agent, Accept:
 * application/json, Connection: close, the bearer token (if any) as
 * `Authorization: Bearer`, the extra headers, and the body with
 * Content-Type and Content-Length.  It is put together in wiped memory,
 * which is also where the answer is kept (an answer may carry tokens).
 *
 * cb runs exactly once, from the loop (never inside rc_http_start), with
 * err 0 and the answer — whatever its status: the caller decides what a
 * 4xx means — or err < 0 and a message naming what failed ("cannot
 * resolve HOST", "cannot connect to HOST:PORT: connection refused", "TLS
 * handshake failed: certificate verify failed: ...", "timed out waiting
 * for the answer", "response body too large", ...).  The answer is
 * valid during the call only.  After cb the request is freed.
 * ---------------------------------------------------------------------- */
typedef struct rc_http rc_http;

typedef struct rc_http_request {
  const char *method;         /* "GET", "POST", "DELETE", ... */
  const char *url;            /* absolute http(s) URL with path and query */
  cm_tls_ctx *tls;            /* required for https (rc_tls_new) */
  const char *bearer;         /* token for Authorization: Bearer, or NULL;
                                 copied into wiped memory at once */
  const char *const *headers; /* extra "Name: value" lines, NULL-terminated,
                               or NULL; no CR or LF inside */
  const void *body;           /* request body, or NULL */
  size_t body_len;
  const char *content_type;    /* of the body; NULL: application/json */
  size_t max_body;             /* cap on the answer's body; 0: 1 MiB */
  uint32_t connect_timeout_ms; /* name lookup, TCP and TLS; 0: 10 s */
  uint32_t timeout_ms;         /* the whole exchange; 0: 30 s */
} rc_http_request;

typedef struct rc_http_response {
  int status;          /* 100..599 */
  const uint8_t *body; /* the body (not NUL-terminated) */
  size_t body_len;
  const cm_http_resp *resp; /* headers: cm_http_resp_header(resp, name) */
} rc_http_response;

typedef void (*rc_http_cb)(void *ud, int err, const char *msg, const rc_http_response *res);

/* Starts the request.  Returns NULL (with a message) when it cannot even
 * start: a bad URL or method, https without tls, a header with CR/LF. */
rc_http *rc_http_start(uv_loop_t *loop, const rc_http_request *req, rc_http_cb cb, void *ud,
                       char *err, size_t errlen);

/* Abandons the request: cb will not run.  Not from inside cb. */
void rc_http_cancel(rc_http *h);

/* The server's explanation in a JSON error body ({"error": "...",
 * "message": "..."}): "message", else "error", cut to outlen and with
 * control characters replaced, so it is safe to print on one line.  False
 * (and out "") when the body holds neither. */
bool rc_error_message(const uint8_t *body, size_t len, char *out, size_t outlen);

/* ------------------------------------------------------------------------
 * The WebSocket client.
 *
 * rc_ws_connect dials, sends the upgrade (GET with a random
 * Sec-WebSocket-Key, version 13, the token as `Authorization: Bearer`)
 * and checks the answer: 101 with Upgrade: websocket, Connection:
 * upgrade, the right Sec-WebSocket-Accept and no extension or subprotocol
 * we did not offer.  Any other status is a refusal carrying it and the
 * server's JSON "message".  Then frames flow through the codec in the
 * client role.
 *
 * Receiving streams: a message arrives as pieces (on_message) as its bytes
 * do, never assembled here; messages over max_message are refused with
 * 1009 before any of their bytes.  Pings are answered at once.  Our own
 * ping goes out after ping_interval_ms of silence, and a peer silent
 * ping_timeout_ms after it is taken for dead (the connection is dropped).
 * While reading is paused the silence is ours, not the peer's, and does
 * not count.
 *
 * Sending: every frame is whole, masked with a key from the CSPRNG, so
 * control frames (pongs, close) never wait behind a large message.
 * Backpressure: rc_ws_send says when the write queue passed the high
 * watermark; on_drain says when it fell back.  rc_ws_pause stops reading
 * (it takes effect after the read being delivered, at most 64 KiB).
 *
 * Closing: rc_ws_close sends a close frame after everything queued and
 * waits close_timeout_ms for the answering close, delivering messages that
 * arrive meanwhile; a close from the peer is answered with its code.
 * on_close reports how it ended, exactly once, and is the last callback;
 * the connection itself is then torn down in the background.
 * ---------------------------------------------------------------------- */
typedef struct rc_ws rc_ws;

typedef enum {
  RC_WS_CLOSED = 1, /* a close handshake: code and reason are the peer's */
  RC_WS_REFUSED,    /* the upgrade was answered with http_status */
  RC_WS_FAILED,     /* no connection, a bad answer, a protocol error, a dead
                       or vanished peer; err and reason say which */
} rc_ws_end_kind;

typedef struct rc_ws_end {
  rc_ws_end_kind kind;
  bool opened;      /* the upgrade had succeeded */
  bool by_peer;     /* CLOSED: the peer closed first (else we did) */
  uint16_t code;    /* CLOSED: the peer's close code (1005: none given);
                       FAILED: what we sent, or 1006 for none */
  int http_status;  /* REFUSED: 401, 404, 409, 503, ... */
  int err;          /* FAILED: a negative code */
  char reason[200]; /* the close reason, the server's message, or what failed */
} rc_ws_end;

typedef struct rc_ws_cbs {
  /* The upgrade succeeded: messages may be sent. */
  void (*on_open)(rc_ws *ws);
  /* A piece of a message of type opcode (WS_BINARY or WS_TEXT); fin on
   * its last piece.  Pieces have any size, an empty message is one call
   * with len 0.  data may be modified; it is valid during the call. */
  void (*on_message)(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin);
  /* The write queue fell to the low watermark after passing the high. */
  void (*on_drain)(rc_ws *ws);
  /* How it ended; the last callback.  ws is invalid after it returns. */
  void (*on_close)(rc_ws *ws, const rc_ws_end *end);
} rc_ws_cbs;

typedef struct rc_ws_opts {
  const rc_url *url;             /* ws or wss */
  cm_tls_ctx *tls;               /* required for wss */
  const char *token;             /* Authorization: Bearer; copied into wiped memory */
  uint64_t max_message;          /* inbound message cap; 0: 64 MiB */
  uint32_t connect_timeout_ms;   /* name lookup, TCP, TLS; 0: 10 s */
  uint32_t handshake_timeout_ms; /* up to the 101; 0: 30 s */
  uint32_t ping_interval_ms;     /* silence before our ping; 0: 20 s */
  uint32_t ping_timeout_ms;      /* silence after it that means dead; 0: 20 s */
  uint32_t close_timeout_ms;     /* wait for the answering close; 0: 5 s */
  size_t high_watermark;         /* write queue; 0: 256 KiB (low: a quarter) */
  size_t max_write_queue;        /* hard cap, past it the connection fails; 0: 16 x high */
} rc_ws_opts;

#define RC_WS_DEFAULT_MAX_MESSAGE (64ull << 20)

/* Starts connecting; callbacks come from the loop, never from inside this
 * call.  NULL (with a message) only for bad options or memory. */
rc_ws *rc_ws_connect(uv_loop_t *loop, const rc_ws_opts *o, const rc_ws_cbs *cbs, void *ud,
                     char *err, size_t errlen);

void *rc_ws_get_data(const rc_ws *ws);
void rc_ws_set_data(rc_ws *ws, void *ud);

/* Sends one frame: opcode WS_BINARY or WS_TEXT starts a message, WS_CONT
 * continues the one begun; fin ends it.  Returns 0; 1 when the write
 * queue is above the high watermark (stop until on_drain); CM_ECLOSED
 * when not open or already closing; CM_EQUEUE past the hard cap (the
 * connection then fails).  rc_ws_send_inplace does the same but masks
 * data where it lies (it is clobbered), saving a copy. */
int rc_ws_send(rc_ws *ws, uint8_t opcode, const void *data, size_t len, bool fin);
int rc_ws_send_inplace(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin);

/* Begins the close handshake with code (1000..4999) and a reason (NULL
 * for none).  Idempotent; no effect before open (use rc_ws_abort). */
void rc_ws_close(rc_ws *ws, uint16_t code, const char *reason);
/* Drops the connection at once, in any state.  on_close is NOT called and
 * ws is invalid after this returns. */
void rc_ws_abort(rc_ws *ws);

void rc_ws_pause(rc_ws *ws);
void rc_ws_resume(rc_ws *ws);
bool rc_ws_above_high(const rc_ws *ws);
size_t rc_ws_write_queued(const rc_ws *ws);
/* True between a successful upgrade and the start of a close. */
bool rc_ws_is_open(const rc_ws *ws);

/* ==== admin commands and sign-in (h-admin: admin.c, auth.c, creds.c, login.c, format.c) ====
 *
 * `relay create|list|get|delete` call the admin API with a bearer token
 * from --oidc-token, else $SWSRS_OIDC_TOKEN, else the credentials `relay
 * auth` cached (refreshed first when they are about to expire).  `relay
 * auth` reads the relay's /.well-known/swsrs-config and signs in with the
 * OAuth 2.0 device authorization grant (RFC 8628), or with the client
 * credentials grant for machines, and caches the tokens 0600 at
 * $XDG_CONFIG_HOME/swsrs/credentials.json.  Results go to stdout as a
 * table, JSON or shell assignments; errors are one line on stderr.  Tokens
 * never reach stderr, logs or argv (rc_argv_hide). */

/* Exit statuses of the client commands. */
enum { RC_EXIT_OK = 0, RC_EXIT_FAIL = 1, RC_EXIT_USAGE = 2 };

/* Call first in every client command, before anything uses jansson: from
 * then on jansson allocates from wiped memory (cm_secret_*), since tokens
 * pass through it when answers and the credentials file are parsed. */
void rc_init(void);

/* Wipes, in argv itself, the value of every --flag VALUE / --flag=VALUE, so
 * that a secret given on the command line no longer shows in ps or
 * /proc/PID/cmdline once parsed (it was visible until then: the
 * environment is the better place for it). */
void rc_argv_hide(int argc, char **argv, const char *flag);

typedef enum { RC_OUT_AUTO = 0, RC_OUT_TABLE, RC_OUT_JSON, RC_OUT_ENV } rc_output;
/* "table", "json", "env"; NULL or "" is RC_OUT_AUTO.  -EINVAL otherwise. */
int rc_output_parse(const char *s, rc_output *out);
/* RC_OUT_AUTO becomes a table when fd is a terminal, else JSON. */
rc_output rc_output_resolve(rc_output o, int fd);

/* TLS and time limits shared by the admin commands and `relay auth`. */
typedef struct rc_net_opts {
  rc_tls_opts tls;     /* for the relay and the identity provider alike */
  uint32_t timeout_ms; /* one request: lookup, connect, TLS, answer; 0: 30 s */
} rc_net_opts;

typedef enum { RC_ADMIN_CREATE = 1, RC_ADMIN_LIST, RC_ADMIN_GET, RC_ADMIN_DELETE } rc_admin_op;

typedef struct rc_admin_opts {
  const char *cmd; /* "relay create", in messages */
  rc_admin_op op;
  const char *admin_url;  /* base URL; NULL: the relay of the cached credentials */
  const char *oidc_token; /* --oidc-token or $SWSRS_OIDC_TOKEN (secret), or NULL */
  const char *id;         /* GET, DELETE */
  rc_output output;
  long long ttl_s;           /* CREATE; 0: the relay's default */
  long long peer_wait_s;     /* CREATE; 0: the relay's default */
  long long page_size;       /* LIST: sessions per request (1..1000) */
  const char *client_id;     /* to renew tokens; NULL: the cached client id */
  const char *client_secret; /* to renew client-credentials tokens (from the environment) */
  rc_net_opts net;
} rc_admin_opts;

/* Runs one admin command; prints the result on stdout and any error as one
 * line on stderr; returns the exit status. */
int rc_admin_run(const rc_admin_opts *o);

typedef struct rc_auth_opts {
  const char *cmd;           /* "relay auth" */
  const char *relay_url;     /* required unless logout */
  const char *client_id;     /* NULL: the relay's client_id_hint */
  const char *client_secret; /* with client_credentials (from the environment) */
  const char *scope;         /* NULL: every scope the relay lists */
  bool client_credentials;   /* the client credentials grant, no person involved */
  bool logout;               /* remove the cached credentials */
  rc_net_opts net;
} rc_auth_opts;

/* `relay auth`: signs in and caches the credentials, or logs out. */
int rc_auth_run(const rc_auth_opts *o);

#ifdef __cplusplus
}
#endif
#endif
