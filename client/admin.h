/*
 * admin.h — (private to client/) the sans-I/O parts of the admin commands
 * and of `relay auth`: the credentials file, the OAuth 2.0 sign-in and
 * refresh as a state machine, and the output formats.  admin.c and auth.c
 * are the glue that runs them over the transport (client.h); the unit
 * tests drive them directly.
 *
 * Secrets (access and refresh tokens, device codes, client secrets, slot
 * tokens) live in cm_secret memory or secret cm_bufs and are wiped before
 * they are freed.  jansson sees them when responses and the credentials
 * file are parsed, so it must allocate from wiped memory too: rc_init()
 * (client.h) arranges that, and every function here that parses JSON
 * refuses to run (-EPERM) until it has been called.
 */
#ifndef RELAY_CLIENT_ADMIN_H
#define RELAY_CLIENT_ADMIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "client/client.h"
#include "common/common.h"

/* ---- secret strings ------------------------------------------------------------ */

/* A copy of s (NULL for NULL) in wiped memory; NULL also when out of memory. */
char *rc_secret_strdup(const char *s);
/* Wipes and frees *p, and clears it. */
void rc_secret_strfree(char **p);
/* Whether jansson allocates from wiped memory (rc_init was called). */
bool rc_json_is_secure(void);

/* ---- the credentials file --------------------------------------------------------
 *
 * $XDG_CONFIG_HOME/swsrs/credentials.json (~/.config/... when
 * XDG_CONFIG_HOME is unset, empty or relative, as the XDG spec says): a
 * JSON object with the fields below, "expiry" in RFC 3339 as Go's
 * oauth2.Token writes it.  Written 0600 through a temporary file and
 * rename(2), in a directory made 0700; a file that others may read, or
 * that is not ours, is refused rather than used. */

typedef struct rc_creds {
  char *relay;          /* the relay `relay auth` was run against */
  char *issuer;         /* the OIDC issuer (from the relay's discovery) */
  char *audience;       /* the audience the relay expects, or NULL */
  char *client_id;      /* the OAuth client the tokens were issued to */
  char *token_endpoint; /* where they are refreshed */
  char *grant;          /* "device_code" or "client_credentials" */
  char *scope;          /* granted scopes, or NULL */
  char *access_token;   /* secret */
  char *refresh_token;  /* secret, or NULL */
  int64_t expires_at;   /* Unix seconds; 0 when unknown */
} rc_creds;

#define RC_GRANT_NAME_DEVICE "device_code"
#define RC_GRANT_NAME_CLIENT "client_credentials"
enum { RC_CREDS_MAX_BYTES = 64 * 1024 };

/* The file's path, from the environment.  -ENOENT with a message when
 * neither XDG_CONFIG_HOME nor HOME says where it is. */
int rc_creds_path(char *out, size_t outlen, char *err, size_t errlen);
/* 0 and *c filled; -ENOENT when there is no file; another negative code
 * with a message when it cannot be used (unreadable, mode, malformed). */
int rc_creds_load(const char *path, rc_creds *c, char *err, size_t errlen);
/* The file's text (in a secret buffer the caller frees): sans-I/O half of
 * rc_creds_save. */
int rc_creds_encode(const rc_creds *c, cm_buf *out);
int rc_creds_decode(const char *text, size_t len, rc_creds *c, char *err, size_t errlen);
int rc_creds_save(const char *path, const rc_creds *c, char *err, size_t errlen);
/* 0 when removed, -ENOENT when there was none. */
int rc_creds_remove(const char *path, char *err, size_t errlen);
/* Wipes and frees every field. */
void rc_creds_clear(rc_creds *c);
/* Whether the access token is gone or ends within margin_s of now_s. */
bool rc_creds_expiring(const rc_creds *c, int64_t now_s, int64_t margin_s);

/* "2026-01-02T03:04:05Z", fractions and ±hh:mm offsets too, to Unix seconds. */
int rc_parse_rfc3339(const char *s, int64_t *out);

/* ---- sign-in and refresh (sans-I/O) ----------------------------------------------
 *
 * rc_login runs one OAuth 2.0 exchange for the CLI:
 *  - RC_LOGIN_DEVICE: GET <relay>/.well-known/swsrs-config, then the device
 *    authorization grant (RFC 8628): POST the device authorization
 *    endpoint, show the user the verification URI and code, poll the token
 *    endpoint every `interval` seconds, 5 s more after each slow_down,
 *    backing off on 5xx, until a token, a refusal, or `expires_in`.
 *  - RC_LOGIN_CLIENT: discovery, then the client credentials grant (RFC 6749
 *    §4.4) with HTTP Basic client authentication.
 *  - RC_LOGIN_REFRESH: a refresh of stored credentials at their token
 *    endpoint (RFC 6749 §6), or, for client-credentials ones, the client
 *    credentials grant again (a client secret is needed).
 *
 * The caller feeds events (start, a response, a transport failure, a timer)
 * and each call fills an action: a request to make, a wait, the end with
 * credentials (rc_login_take), or a failure with a one-line message.  An
 * action may carry a prompt for the user, to print first.  Strings in an
 * action are the machine's and last until the next call. */

typedef enum { RC_LOGIN_DEVICE = 1, RC_LOGIN_CLIENT, RC_LOGIN_REFRESH } rc_login_mode;

typedef struct rc_login_params {
  rc_login_mode mode;
  const char *relay_url;     /* DEVICE, CLIENT: the relay whose discovery to read */
  const char *client_id;     /* NULL: discovery's client_id_hint (DEVICE), creds' (REFRESH) */
  const char *client_secret; /* CLIENT, and REFRESH of client-credentials creds */
  const char *scope;         /* NULL: every scope discovery lists */
  const rc_creds *current;   /* REFRESH: what to refresh (copied) */
} rc_login_params;

typedef enum {
  RC_ACT_REQUEST = 1, /* make the request, then rc_login_response or _transport_error */
  RC_ACT_WAIT,        /* wait wait_ms, then rc_login_timer */
  RC_ACT_DONE,        /* credentials ready: rc_login_take */
  RC_ACT_FAILED,      /* error says why */
} rc_act_kind;

typedef struct rc_login_action {
  rc_act_kind kind;
  const char *prompt;        /* non-NULL: show the user this first (may span lines) */
  const char *method;        /* REQUEST: "GET" or "POST" */
  const char *url;           /* REQUEST */
  const char *content_type;  /* REQUEST: NULL or the form type */
  const char *authorization; /* REQUEST: NULL or a whole header value (secret) */
  const uint8_t *body;       /* REQUEST: body (secret), body_len bytes */
  size_t body_len;
  uint64_t wait_ms;  /* WAIT */
  const char *error; /* FAILED */
} rc_login_action;

typedef struct rc_login rc_login;

/* NULL with a message when the parameters cannot work (missing relay URL,
 * a refresh without a refresh token or secret). */
rc_login *rc_login_new(const rc_login_params *p, char *err, size_t errlen);
void rc_login_free(rc_login *l);
/* now_ms: wall clock, Unix epoch milliseconds (tests pass their own). */
void rc_login_start(rc_login *l, int64_t now_ms, rc_login_action *a);
void rc_login_response(rc_login *l, int status, const char *body, size_t len, int64_t now_ms,
                       rc_login_action *a);
/* A request failed before an answer (msg says why): the end, except
 * while polling, where it only slows the polling down. */
void rc_login_transport_error(rc_login *l, const char *msg, int64_t now_ms, rc_login_action *a);
void rc_login_timer(rc_login *l, int64_t now_ms, rc_login_action *a);
/* After RC_ACT_DONE: moves the credentials into *out (the caller clears
 * them with rc_creds_clear). */
void rc_login_take(rc_login *l, rc_creds *out);

/* The base of the relay's HTTP URLs from what the user gave (https://...,
 * or the wss:// URL peers use, which names the same host), without a
 * trailing slash; appended to b. */
int rc_base_url(cm_buf *b, const char *url);
/* Appends s percent-encoded as application/x-www-form-urlencoded wants it
 * (also right for a query value). */
int rc_form_encode(cm_buf *b, const char *s);

/* ---- running it (call.c, auth.c) ---------------------------------------------------
 *
 * A command owns its loop and runs it until its request is answered or its
 * wait is over; rc_http bounds every exchange with its own deadlines. */

typedef struct rc_call {
  bool done;
  int err;       /* 0: status and body hold the answer */
  char msg[512]; /* err != 0: what failed */
  int status;
  cm_buf body; /* secret */
} rc_call;

void rc_call_run(uv_loop_t *loop, const rc_http_request *req, rc_call *c);
void rc_call_free(rc_call *c);
/* What to add to a transport failure's message: how to get past an
 * unverifiable certificate when no --ca was given, or "". */
const char *rc_call_hint(const char *msg, const rc_net_opts *net);
void rc_sleep(uv_loop_t *loop, uint64_t ms);

/* Runs a sign-in or refresh to its end: requests through tls (for every
 * https URL), waits on the loop, prompts written to prompt.  0 and *out
 * filled, or -1 with the one-line reason in err. */
int rc_login_run(uv_loop_t *loop, rc_login *l, cm_tls_ctx *tls, const rc_net_opts *net,
                 FILE *prompt, rc_creds *out, char *err, size_t errlen);

/* ---- output ----------------------------------------------------------------------
 *
 * Each formatter appends to a secret cm_buf (created sessions carry slot
 * tokens) and checks the server's answer first: ids and tokens must be
 * base64url, so that the env format is shell-safe without quoting, and
 * malformed answers are an error (-EPROTO, message in err), not output. */

/* 201 of POST /admin/sessions. */
int rc_fmt_created(cm_buf *out, rc_output fmt, const json_t *created, char *err, size_t errlen);
/* One status object (GET /admin/sessions/{id}). */
int rc_fmt_status(cm_buf *out, rc_output fmt, const json_t *status, char *err, size_t errlen);
/* A listing, streamed page by page: begin, every item, end. */
void rc_fmt_list_begin(cm_buf *out, rc_output fmt);
int rc_fmt_list_item(cm_buf *out, rc_output fmt, const json_t *status, uint64_t index, char *err,
                     size_t errlen);
void rc_fmt_list_end(cm_buf *out, rc_output fmt, uint64_t count);
/* DELETE /admin/sessions/{id} succeeded. */
void rc_fmt_deleted(cm_buf *out, rc_output fmt, const char *id);

/* The one-line error for a refused request: "HTTP 403 insufficient_scope:
 * <the server's message>", from an {"error","message"} body (or the OAuth
 * {"error","error_description"} shape); a body of another shape gives the
 * status and reason only.  Control characters are replaced. */
void rc_http_error_line(int status, const char *body, size_t len, char *out, size_t outlen);

/* True when s is 1..max base64url characters (ids and tokens). */
bool rc_is_b64url(const char *s, size_t max);

#endif
