/*
 * admin_cmds.c — argument parsing for `relay create|list|get|delete` and
 * `relay auth`; the work is client/'s (rc_admin_run, rc_auth_run).  Flags
 * have SWSRS_* environment variables, the names swsrs users already have.
 * Secrets given as flags are wiped from argv once parsed, and every copy
 * of one is wiped before it is freed.
 */
#include <openssl/crypto.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "cmd/relay/admin_cmds.h"

#define ENV_PREFIX "SWSRS_"

typedef struct admin_cfg {
  char *admin_url, *oidc_token, *output, *ca;
  bool insecure;
  long long timeout_ms;
  long long ttl_ms, peer_wait_ms; /* create */
  char *target;                   /* create */
  long long page_size;            /* list */
} admin_cfg;

#define AOPT(n, t, f, d, lo, hi, h, mv)                                                            \
  { n, t, offsetof(admin_cfg, f), d, lo, hi, h, mv }

/* Every admin command has these. */
#define ADMIN_COMMON_OPTS                                                                          \
  AOPT("admin-url", CM_CFG_STRING, admin_url, NULL, 0, 0,                                          \
       "the relay (https://HOST[:PORT]); default: the one `relay auth` signed in to", "URL"),      \
      AOPT("oidc-token", CM_CFG_STRING, oidc_token, NULL, 0, 0,                                    \
           "bearer token for the admin API (prefer the environment: argv is visible); "            \
           "default: the cached credentials of `relay auth` (sent only to their relay)",           \
           "TOKEN"),                                                                               \
      AOPT("output", CM_CFG_STRING, output, NULL, 0, 0,                                            \
           "json, env or table; default: table on a terminal, json otherwise", "FORMAT"),          \
      AOPT("ca", CM_CFG_STRING, ca, NULL, 0, 0,                                                    \
           "trust these CA certificates (PEM) instead of the system store", "FILE"),               \
      AOPT("insecure", CM_CFG_BOOL, insecure, "false", 0, 0,                                       \
           "do not verify the relay's certificate (warned about; for tests only)", NULL),          \
      AOPT("timeout", CM_CFG_DURATION, timeout_ms, "30s", 100, 3600000,                            \
           "time allowed for each request", "DURATION")

static const cm_cfg_opt g_create_opts[] = {
    ADMIN_COMMON_OPTS,
    /* 0 (unset) is the relay's default, so the range starts there. */
    AOPT("ttl", CM_CFG_DURATION, ttl_ms, NULL, 0, 31536000000LL,
         "the session's lifetime, whole seconds (unset or 0: the relay's default, 1h)", "DURATION"),
    AOPT("peer-wait", CM_CFG_DURATION, peer_wait_ms, NULL, 0, 86400000,
         "how long a lone peer waits, whole seconds (unset or 0: the relay's default, 2m)",
         "DURATION"),
    AOPT("target", CM_CFG_STRING, target, NULL, 0, 0,
         "a target session: the relay dials this TCP service as the responder (needs the "
         "scope swsrs:session:target and the controller's --target-allow)",
         "HOST:PORT"),
};
static const cm_cfg_opt g_list_opts[] = {
    ADMIN_COMMON_OPTS,
    AOPT("page-size", CM_CFG_INT, page_size, "1000", 1, 1000, "sessions fetched per request", "N"),
};
static const cm_cfg_opt g_id_opts[] = {ADMIN_COMMON_OPTS};

#define CREDENTIALS_NOTE                                                                           \
  "The token is --oidc-token, else $SWSRS_OIDC_TOKEN, else the credentials `relay auth`\n"         \
  "cached (renewed first when they are about to expire).  Errors: one line on stderr, exit 1;\n"   \
  "usage errors exit 2."

static const cm_cfg_spec g_create_spec = {
    "relay create [--ttl D] [--peer-wait D] [--target HOST:PORT] [--admin-url URL]\n"
    "             [--output json|env|table]",
    "Create a session: its id, the two slot tokens and their URLs.  With --target the\n"
    "relay itself dials HOST:PORT as the responder when the initiator joins (the responder\n"
    "token is then refused).  With --output env it\n"
    "prints SWSRS_SESSION, SWSRS_INITIATOR_TOKEN and SWSRS_RESPONDER_TOKEN, one per line, so\n"
    "that eval $(relay create --output env) sets them.\n" CREDENTIALS_NOTE,
    g_create_opts, CM_ARRAY_LEN(g_create_opts), ENV_PREFIX};
static const cm_cfg_spec g_list_spec = {
    "relay list [--admin-url URL] [--output json|env|table]",
    "List every session the relay's controllers hold (state, peers, bytes, times), fetched\n"
    "and printed a page at a time.  --output env prints SWSRS_SESSIONS='ID ID "
    "...'.\n" CREDENTIALS_NOTE,
    g_list_opts, CM_ARRAY_LEN(g_list_opts), ENV_PREFIX};
static const cm_cfg_spec g_get_spec = {
    "relay get ID [--admin-url URL] [--output json|env|table]",
    "Show one session: state, who is connected, bytes each way, times.\n" CREDENTIALS_NOTE,
    g_id_opts, CM_ARRAY_LEN(g_id_opts), ENV_PREFIX};
static const cm_cfg_spec g_delete_spec = {
    "relay delete ID [--admin-url URL] [--output json|env|table]",
    "Delete a session; its live peers are closed with 1001.\n" CREDENTIALS_NOTE, g_id_opts,
    CM_ARRAY_LEN(g_id_opts), ENV_PREFIX};

/* The relay counts whole seconds: a part of one is one. */
static long long ms_to_s(long long ms) { return (ms + 999) / 1000; }

/* Wipes a heap copy of a secret before cm_config_free frees it. */
static void wipe(char *s) {
  if (s) OPENSSL_cleanse(s, strlen(s));
}

/* cm_config_cli with positional arguments: -1 to go on, else the exit
 * status (help printed: 0; a bad flag or argument count: 2). */
static int parse(const cm_cfg_spec *spec, void *cfg, int argc, char **argv, const char *cmd,
                 cm_strlist *pos, size_t npos) {
  char err[512];
  int rc = cm_config_load(spec, cfg, argc, argv, pos, err, sizeof err);
  if (rc == CM_CFG_OK && pos->n != npos) {
    snprintf(err, sizeof err, npos ? "one session ID is needed" : "unexpected argument \"%s\"",
             pos->n ? pos->v[0] : "");
    rc = CM_CFG_ERROR;
  }
  if (rc == CM_CFG_OK) return -1;
  if (rc == CM_CFG_HELP)
    cm_config_print_help(spec, stdout);
  else
    fprintf(stderr, "%s: %s\nUsage: %s (see --help)\n", cmd, err, spec->usage);
  return rc == CM_CFG_HELP ? RC_EXIT_OK : RC_EXIT_USAGE;
}

static int admin_main(rc_admin_op op, const cm_cfg_spec *spec, size_t npos, const char *cmd,
                      int argc, char **argv) {
  rc_init();
  admin_cfg c;
  memset(&c, 0, sizeof c);
  cm_strlist pos = {0};
  int rc = parse(spec, &c, argc, argv, cmd, &pos, npos);
  rc_argv_hide(argc, argv, "oidc-token");
  rc_output out = RC_OUT_AUTO;
  if (rc < 0 && rc_output_parse(c.output, &out) != 0) {
    fprintf(stderr, "%s: --output must be json, env or table\n", cmd);
    rc = RC_EXIT_USAGE;
  }
  cm_target tgt;
  char terr[160];
  if (rc < 0 && c.target && cm_target_parse(c.target, &tgt, terr, sizeof terr) != 0) {
    fprintf(stderr, "%s: --target: %s\n", cmd, terr);
    rc = RC_EXIT_USAGE;
  }
  if (rc < 0) {
    rc_admin_opts o = {.cmd = cmd,
                       .op = op,
                       .admin_url = c.admin_url,
                       .oidc_token = c.oidc_token,
                       .id = npos ? pos.v[0] : NULL,
                       .output = out,
                       .ttl_s = ms_to_s(c.ttl_ms),
                       .peer_wait_s = ms_to_s(c.peer_wait_ms),
                       .target = c.target,
                       .page_size = c.page_size,
                       .client_secret = getenv("SWSRS_CLIENT_SECRET"),
                       .net = {.tls = {.ca_file = c.ca, .insecure = c.insecure},
                               .timeout_ms = (uint32_t)c.timeout_ms}};
    rc = rc_admin_run(&o);
  }
  wipe(c.oidc_token);
  cm_config_free(spec, &c);
  cm_strlist_free(&pos);
  return rc;
}

int cmd_create(int argc, char **argv) {
  return admin_main(RC_ADMIN_CREATE, &g_create_spec, 0, "relay create", argc, argv);
}
int cmd_list(int argc, char **argv) {
  return admin_main(RC_ADMIN_LIST, &g_list_spec, 0, "relay list", argc, argv);
}
int cmd_get(int argc, char **argv) {
  return admin_main(RC_ADMIN_GET, &g_get_spec, 1, "relay get", argc, argv);
}
int cmd_delete(int argc, char **argv) {
  return admin_main(RC_ADMIN_DELETE, &g_delete_spec, 1, "relay delete", argc, argv);
}

/* ---- auth ------------------------------------------------------------------------------- */

typedef struct auth_cfg {
  char *relay, *client_id, *scope, *ca;
  bool insecure, logout, client_credentials;
  long long timeout_ms;
} auth_cfg;

#define UOPT(n, t, f, d, lo, hi, h, mv)                                                            \
  { n, t, offsetof(auth_cfg, f), d, lo, hi, h, mv }

static const cm_cfg_opt g_auth_opts[] = {
    UOPT("relay", CM_CFG_STRING, relay, NULL, 0, 0, "the relay to sign in to (https://HOST[:PORT])",
         "URL"),
    UOPT("client-id", CM_CFG_STRING, client_id, NULL, 0, 0,
         "OAuth client id (default: the relay's client_id_hint)", "ID"),
    UOPT("scope", CM_CFG_STRING, scope, NULL, 0, 0,
         "scopes to ask for, space-separated (default: every scope the relay lists)", "SCOPES"),
    UOPT("client-credentials", CM_CFG_BOOL, client_credentials, "false", 0, 0,
         "no person at a browser: the client credentials grant, with SWSRS_CLIENT_ID and "
         "SWSRS_CLIENT_SECRET from the environment",
         NULL),
    UOPT("logout", CM_CFG_BOOL, logout, "false", 0, 0, "remove the cached credentials", NULL),
    UOPT("ca", CM_CFG_STRING, ca, NULL, 0, 0,
         "trust these CA certificates (PEM) for the relay and the identity provider", "FILE"),
    UOPT("insecure", CM_CFG_BOOL, insecure, "false", 0, 0,
         "do not verify certificates (warned about; for tests only)", NULL),
    UOPT("timeout", CM_CFG_DURATION, timeout_ms, "30s", 100, 3600000,
         "time allowed for each request", "DURATION"),
};

static const cm_cfg_spec g_auth_spec = {
    "relay auth --relay URL [--client-credentials] | relay auth --logout",
    "Sign in for the admin commands.  Reads the relay's /.well-known/swsrs-config, then runs\n"
    "the OAuth 2.0 device authorization grant: open the address shown, enter the code, and\n"
    "the command finishes once the sign-in is approved (or the code expires).  The tokens go\n"
    "to $XDG_CONFIG_HOME/swsrs/credentials.json (~/.config/swsrs/... without it), mode 0600,\n"
    "and are renewed by later commands before they expire.  --logout removes that file.",
    g_auth_opts, CM_ARRAY_LEN(g_auth_opts), ENV_PREFIX};

int cmd_auth(int argc, char **argv) {
  rc_init();
  auth_cfg c;
  memset(&c, 0, sizeof c);
  cm_strlist pos = {0};
  int rc = parse(&g_auth_spec, &c, argc, argv, "relay auth", &pos, 0);
  if (rc < 0) {
    rc_auth_opts o = {.cmd = "relay auth",
                      .relay_url = c.relay,
                      .client_id = c.client_id,
                      .client_secret = getenv("SWSRS_CLIENT_SECRET"),
                      .scope = c.scope,
                      .client_credentials = c.client_credentials,
                      .logout = c.logout,
                      .net = {.tls = {.ca_file = c.ca, .insecure = c.insecure},
                              .timeout_ms = (uint32_t)c.timeout_ms}};
    rc = rc_auth_run(&o);
  }
  cm_config_free(&g_auth_spec, &c);
  cm_strlist_free(&pos);
  return rc;
}
