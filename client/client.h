/*
 * client.h — the client side of relay as a library (prefix rc_): what the
 * `relay` commands create, list, get, delete and auth run on.
 */
#ifndef RELAY_CLIENT_H
#define RELAY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

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

/* TLS and time limits shared by the client commands. */
typedef struct rc_net_opts {
  const char *ca_file; /* trust these instead of the system store */
  bool insecure;       /* no certificate verification (warned about) */
  uint32_t timeout_ms; /* one request: connect, TLS, answer */
} rc_net_opts;

typedef enum { RC_ADMIN_CREATE = 1, RC_ADMIN_LIST, RC_ADMIN_GET, RC_ADMIN_DELETE } rc_admin_op;

typedef struct rc_admin_opts {
  const char *cmd; /* "relay create", in messages */
  rc_admin_op op;
  const char *admin_url;  /* base URL; NULL: the relay of the cached credentials */
  const char *oidc_token; /* --oidc-token or $SWSRS_OIDC_TOKEN (secret), or NULL */
  const char *id;         /* GET, DELETE */
  rc_output output;
  long long ttl_s;                       /* CREATE; 0: the relay's default */
  long long peer_wait_s;                 /* CREATE; 0: the relay's default */
  long long page_size;                   /* LIST: sessions per request (1..1000) */
  const char *client_id, *client_secret; /* to renew client-credentials tokens */
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
