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
 *    `tcp-dial`, `udp-listen`, `udp-dial` and `pubsub-dial`.
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
  bool bulk;           /* for data tunnels: what is read carries no secret, so
                          decrypted records are not wiped (that costs about a
                          tenth of a peer's CPU at full speed) */
} rc_tls_opts;

/* A client context: TLS 1.2 or 1.3, ALPN http/1.1, decrypted records wiped
 * (answers carry tokens) unless bulk.  The server's certificate is verified against
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

/* ------------------------------------------------------------------------
 * Peers: the pumps behind `relay raw`, `tcp-listen`, `tcp-dial`,
 * `udp-listen` and `udp-dial`.
 *
 * A byte-stream tunnel (raw, TCP) joins the session and pumps both ways:
 * each local read leaves as one binary message, each message's bytes are
 * written locally as they arrive.  Backpressure end to end: a local output
 * queue above `buffer` pauses the WebSocket's reading, a WebSocket queue
 * above it pauses local reading, so a tunnel holds at most about two
 * buffers and two reads whatever the two ends do.
 *
 * On joining, a byte-stream peer sends one empty binary message: nothing
 * for a byte stream (an empty write), but it tells the other end that
 * this one has arrived.  The relay holds a lone peer's early data and
 * drops it if that peer leaves before its counterpart comes, so a peer
 * whose input ended (EOF on stdin, FIN from TCP) closes 1000 only once it
 * has heard from the other end; what it sent is then delivered before the
 * close.  A close from the other end (1000) makes the local side finish:
 * what is queued is written, then FIN (shutdown(SHUT_WR)) or end of
 * output.  Any other ending resets a local TCP connection.  A local
 * failure (a reset, a target that refuses) closes 1011 with the reason,
 * also once the other end was seen, so that it learns why.
 *
 * tcp-listen takes one connection at a time (more wait in the backlog),
 * joins for it and tunnels it; tcp-dial joins, then dials the target for
 * the peer that comes — it dials at once, so what the target says first
 * (an SSH banner) goes out while the other end may still be missing and
 * waits at the relay (bounded by its --hold-bytes; past that the relay
 * stops reading, and the target is read no further).  With keep, each
 * re-joins the session after a connection ends; a refusal that will not
 * change (400, 401, 403, 404) ends it, other failures are retried with
 * backoff.
 *
 * UDP: one binary message is one datagram.  udp-listen answers the first
 * address that sent to it and drops datagrams from others; udp-dial
 * sends to the target.  Nothing is held back: a datagram that finds the
 * WebSocket's queue above `buffer`, or the UDP send queue at udp_queue,
 * is dropped and counted, as a router would.
 * ---------------------------------------------------------------------- */
typedef struct rc_peer rc_peer;

typedef enum {
  RC_PEER_RAW = 1,
  RC_PEER_TCP_LISTEN,
  RC_PEER_TCP_DIAL,
  RC_PEER_UDP_LISTEN,
  RC_PEER_UDP_DIAL,
  RC_PEER_PUBSUB,
} rc_peer_mode;

typedef struct rc_peer_opts {
  rc_peer_mode mode;
  const rc_url *url;  /* the session's data-plane URL (rc_url_session) */
  cm_tls_ctx *tls;    /* for wss; kept, not owned */
  const char *token;  /* the slot token; copied into wiped memory */
  const char *listen; /* TCP/UDP listen: HOST:PORT (port 0: any free one) */
  const char *target; /* TCP/UDP dial: HOST:PORT */
  bool keep;          /* TCP: re-join after each connection */
  bool keep_open;     /* raw: EOF on input stops sending but does not end */
  int in_fd, out_fd;  /* raw: usually 0 and 1 */
  size_t buffer;      /* per direction, bytes; 0: 256 KiB */
  size_t udp_queue;   /* UDP datagrams waiting for the socket; 0: 256 */
  rc_ws_opts ws;      /* pings, timeouts, message limit; url, tls, token set here */
  /* pubsub-dial (see "Redis pub/sub" below) */
  const char *redis;          /* redis://HOST[:PORT][/DB] */
  const char *session;        /* the session id, for the channel names */
  const char *redis_user;     /* ACL user for AUTH, or NULL */
  const char *redis_password; /* AUTH password, or NULL; copied into wiped memory */
  const char *prefix;         /* channel prefix; NULL: "relay" */
  uint32_t redis_timeout_ms;  /* connect, and the longest wait for an answer; 0: 5 s */
  void *ud;
  /* The listener is bound (addr "127.0.0.1:40123"), for tcp-listen and
   * udp-listen; may be NULL. */
  void (*on_listening)(void *ud, const char *addr);
} rc_peer_opts;

typedef struct rc_peer_stats {
  uint64_t bytes_up, bytes_down;       /* payload: local to relay, relay to local */
  uint64_t messages_up, messages_down; /* messages (datagrams for UDP) */
  uint64_t tunnels;                    /* WebSocket sessions joined */
  uint64_t dropped_up;                 /* UDP: datagrams the WebSocket could not take */
  uint64_t dropped_down;               /* UDP: messages the socket could not take */
  uint64_t dropped_foreign;            /* udp-listen: from another address than the first */
  uint64_t dropped_no_reply;           /* udp-listen: messages before anyone sent to us */
  uint64_t dropped_oversize;           /* messages too large for a datagram, or (pubsub)
                                          above max_message */
  uint64_t dropped_invalid;            /* pubsub: text that is not UTF-8 */
  uint64_t unheard_up;                 /* pubsub: published while nobody subscribed */
  uint64_t redis_connects;             /* pubsub: times the link to Redis came up */
} rc_peer_stats;

typedef struct rc_peer_result {
  int status;          /* 0 a clean end; 1 a refusal or an error */
  char message[300];   /* one line saying how it ended; never a secret */
  int http_status;     /* a refusal's status, else 0 */
  uint16_t close_code; /* the close code, else 0 */
  rc_peer_stats stats;
} rc_peer_result;

typedef void (*rc_peer_done_cb)(void *ud, const rc_peer_result *res);

/* Starts the peer; done runs once, from the loop, when it has ended and
 * let go of everything.  NULL with a message for bad options or when the
 * listener cannot be bound. */
rc_peer *rc_peer_start(uv_loop_t *loop, const rc_peer_opts *o, rc_peer_done_cb done, char *err,
                       size_t errlen);
/* Ends it: a tunnel in progress closes 1000 (its output drained), a
 * pending join is dropped, listeners close; done follows. */
void rc_peer_stop(rc_peer *p);

/* ------------------------------------------------------------------------
 * Redis pub/sub (`relay pubsub-dial`, pubsub.c): a peer whose far end is
 * a pair of Redis channels, so that a backend needs only a Redis client.
 *
 *  - Each message from the other peer is PUBLISHed as its bytes on
 *    PREFIX:SESSION:up (binary) or PREFIX:SESSION:up:text (text).
 *  - Each message published on PREFIX:SESSION:down goes to the other peer
 *    as a binary message, on PREFIX:SESSION:down:text as a text message
 *    (dropped and counted unless it is UTF-8).  The type is the channel's
 *    suffix, never a byte of the payload.
 *
 * Delivery is at most once, as Redis pub/sub's own: a message published
 * while nobody subscribes is gone (counted unheard_up); one from Redis
 * that finds the WebSocket's queue above `buffer` (a slow peer) is
 * dropped and counted (dropped_down), never queued.  Towards Redis the
 * peer is paused instead while more than `buffer` bytes await Redis's
 * answer.  While Redis is down the session stays joined: the peer
 * reconnects with backoff (100 ms doubling to 10 s, jittered), and what
 * comes from the other peer meanwhile is dropped and counted
 * (dropped_up), as is a publish whose answer the link's loss cut off.
 * With keep, the session is re-joined after each WebSocket ends.
 * ---------------------------------------------------------------------- */
#define RC_REDIS_DEFAULT_PORT 6379

typedef struct rc_redis_url {
  char host[RC_HOST_MAX]; /* name or IP literal; IPv6 without brackets */
  uint16_t port;          /* RC_REDIS_DEFAULT_PORT when absent */
  uint32_t db;            /* 0 when absent */
} rc_redis_url;

/* Parses redis://HOST[:PORT][/DB] (IPv6 in brackets).  Refused: another
 * scheme (rediss: hiredis 0.14 has no TLS), user information (credentials
 * never travel in URLs or argv), a query, a DB that is not a number up to
 * 1,000,000.  Returns 0 or -EINVAL with a message that quotes nothing
 * after an '@'. */
int rc_redis_url_parse(const char *text, rc_redis_url *u, char *err, size_t errlen);

/* The channel names of a session: "PREFIX:SESSION:up", ":up:text",
 * ":down", ":down:text" by dir ("up" or "down") and text. */
void rc_pubsub_channel(const char *prefix, const char *session, const char *dir, bool text,
                       char *out, size_t outlen);

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
  const char *target;        /* CREATE: a target session's HOST:PORT (checked with
                                cm_target_parse), or NULL */
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
