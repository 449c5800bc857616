/*
 * main.c — `relay-controller`: the reference controller.  Argument parsing
 * and dispatch only:
 *   run       dial relays and serve them (sessions, tokens, policy)
 *   init-ca     make the controller CA and the controller's own certificate
 *   issue-cert  give a further controller a certificate of its own
 *   sign-csr    issue a relay certificate from `relay gen-csr` output
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "controller-stub/controller.h"

#define EXIT_USAGE 2

typedef struct run_cfg {
  cm_strlist relays;
  char *relay_server_name;
  char *ca_dir, *cert, *key, *ca;
  char *state_dir;
  char *store, *store_password_file, *store_prefix, *name;
  long long store_timeout, store_flush;
  long long default_ttl, default_peer_wait, max_ttl, max_peer_wait;
  long long max_sessions, max_message;
  long long ping_interval, ping_timeout, backoff_base, backoff_max, max_link_age;
  bool accept_unauthenticated;
  cm_strlist target_allow;
  char *log_level;
} run_cfg;

#define OPT(n, t, f, d, lo, hi, h, mv)                                                             \
  { n, t, offsetof(run_cfg, f), d, lo, hi, h, mv }

static const cm_cfg_opt g_run_opts[] = {
    OPT("relay", CM_CFG_LIST, relays, NULL, 0, 0, "relay tunnel address to dial (repeatable)",
        "HOST:PORT"),
    OPT("relay-server-name", CM_CFG_STRING, relay_server_name, NULL, 0, 0,
        "name to verify in relay certificates (default: the dialled host)", "NAME"),
    OPT("ca-dir", CM_CFG_STRING, ca_dir, NULL, 0, 0,
        "directory made by init-ca (ca.crt, controller.crt, controller.key)", "DIR"),
    OPT("cert", CM_CFG_STRING, cert, NULL, 0, 0,
        "controller certificate, e.g. from issue-cert (overrides --ca-dir)", "FILE"),
    OPT("key", CM_CFG_STRING, key, NULL, 0, 0, "controller key (overrides --ca-dir)", "FILE"),
    OPT("ca", CM_CFG_STRING, ca, NULL, 0, 0, "CA relay certificates chain to", "FILE"),
    OPT("state-dir", CM_CFG_STRING, state_dir, NULL, 0, 0,
        "session registry (journal + snapshot); unset: memory only", "DIR"),
    OPT("store", CM_CFG_STRING, store, NULL, 0, 0,
        "a registry shared by a fleet of controllers instead of --state-dir: "
        "redis://[USER@]HOST[:PORT][/DB] (no TLS: loopback, a private network or a TLS tunnel)",
        "URL"),
    OPT("store-password-file", CM_CFG_STRING, store_password_file, NULL, 0, 0,
        "Redis password (AUTH; with USER@ in --store, that ACL user's), from a file readable "
        "by its owner only; or RELAY_STORE_PASSWORD in the environment",
        "FILE"),
    OPT("store-prefix", CM_CFG_STRING, store_prefix, "relay:", 0, 0,
        "prefix of every Redis key and channel (one fleet per prefix)", "TEXT"),
    OPT("store-timeout", CM_CFG_DURATION, store_timeout, "2s", 50, 60000,
        "a Redis command unanswered this long drops the connection (calls fail 503 until back)",
        "DURATION"),
    OPT("store-flush", CM_CFG_DURATION, store_flush, "250ms", 10, 60000,
        "relay events (peers joining and leaving, counters) are written to Redis this often, "
        "in one script call; what is waiting is written at shutdown too",
        "DURATION"),
    OPT("name", CM_CFG_STRING, name, NULL, 0, 0,
        "this controller's name in logs and the reaper lease (default: its certificate file)",
        "NAME"),
    OPT("default-ttl", CM_CFG_DURATION, default_ttl, "1h", 1000, 31536000000LL,
        "session lifetime when the client asks for none", "DURATION"),
    OPT("default-peer-wait", CM_CFG_DURATION, default_peer_wait, "2m", 1000, 86400000,
        "how long a lone peer waits, by default", "DURATION"),
    OPT("max-ttl", CM_CFG_DURATION, max_ttl, "24h", 1000, 31536000000LL,
        "longest session lifetime a client may ask for", "DURATION"),
    OPT("max-peer-wait", CM_CFG_DURATION, max_peer_wait, "1h", 1000, 86400000,
        "longest peer_wait a client may ask for", "DURATION"),
    OPT("max-sessions", CM_CFG_INT, max_sessions, "100000", 1, 10000000, "sessions held at once",
        "N"),
    OPT("max-message", CM_CFG_SIZE, max_message, "0", 0, 1LL << 40,
        "message size limit handed to relays (0: each relay's own)", "SIZE"),
    OPT("ping-interval", CM_CFG_DURATION, ping_interval, "10s", 100, 600000, "HTTP/2 PING interval",
        "DURATION"),
    OPT("ping-timeout", CM_CFG_DURATION, ping_timeout, "30s", 100, 3600000,
        "drop a link silent this long", "DURATION"),
    OPT("backoff-base", CM_CFG_DURATION, backoff_base, "1s", 10, 600000,
        "first redial delay bound (doubles per failure, full jitter)", "DURATION"),
    OPT("backoff-max", CM_CFG_DURATION, backoff_max, "60s", 10, 3600000, "largest redial delay",
        "DURATION"),
    OPT("max-link-age", CM_CFG_DURATION, max_link_age, "0", 0, 86400000,
        "replace each relay link after about this long, the new link first (0: never)", "DURATION"),
    OPT("accept-unauthenticated", CM_CFG_BOOL, accept_unauthenticated, "false", 0, 0,
        "honour admin requests from relays running --no-auth", NULL),
    OPT("target-allow", CM_CFG_LIST, target_allow, NULL, 0, 0,
        "where target sessions may go (repeatable; unset: target sessions are off); loopback, "
        "link-local and metadata addresses only when an entry names them",
        "CIDR:PORT[-PORT]"),
    OPT("log-level", CM_CFG_STRING, log_level, "info", 0, 0, "debug, info, warn or error", "LEVEL"),
};

static const cm_cfg_spec g_run_spec = {
    "relay-controller run --relay HOST:PORT [--relay ...] --ca-dir DIR [options]",
    "Dial relays over mutual TLS and serve them: mint sessions and tokens, validate every\n"
    "slot, decide every admin request.  Redials with exponential backoff and full jitter.\n"
    "\n"
    "Sessions live in --state-dir (a journal: one controller), or with --store redis://...\n"
    "in a Redis every controller of a fleet shares: each dials every relay, any answers for\n"
    "any session, and relays pool their links.  Redis credentials come from\n"
    "--store-password-file or RELAY_STORE_PASSWORD, never the command line.  The Redis link\n"
    "is NOT encrypted (hiredis 0.14 has no TLS): keep Redis on loopback or a private network,\n"
    "or reach it through a TLS tunnel (stunnel, spiped) listening on loopback.",
    g_run_opts, CM_ARRAY_LEN(g_run_opts), NULL};

static int usage_error(const cm_cfg_spec *spec, const char *cmd, const char *err) {
  fprintf(stderr, "relay-controller %s: %s\nUsage: %s (see --help)\n", cmd, err, spec->usage);
  return EXIT_USAGE;
}

/* ---- run ------------------------------------------------------------------------- */

#define PASSWORD_MAX 4096
#define PASSWORD_ENV "RELAY_STORE_PASSWORD"

/* Reads a password file into secret memory: a regular file that only its
 * owner may read or write (as a key file), its trailing newline dropped. */
static int read_password_file(const char *path, char **out, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    snprintf(err, errlen, "store-password-file: cannot open %s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  if (!S_ISREG(sb.st_mode) || (sb.st_mode & 077) || sb.st_size >= PASSWORD_MAX) {
    snprintf(err, errlen,
             "store-password-file: %s must be a regular file under 4 KiB that only its owner "
             "may read (chmod 600)",
             path);
    close(fd);
    return -1;
  }
  char *pw = cm_secret_alloc(PASSWORD_MAX);
  ssize_t n = pw ? read(fd, pw, PASSWORD_MAX - 1) : -1;
  close(fd);
  if (n < 0) {
    snprintf(err, errlen, "store-password-file: cannot read %s", path);
    cm_secret_free(pw);
    return -1;
  }
  while (n > 0 && (pw[n - 1] == '\n' || pw[n - 1] == '\r'))
    n--;
  pw[n] = '\0';
  *out = pw;
  return 0;
}

/* The Redis password, never from argv: the file, else the environment
 * (taken out of it, so children and later reads do not see it). */
static int store_password(const run_cfg *rc, char **out, char *err, size_t errlen) {
  *out = NULL;
  if (rc->store_password_file) return read_password_file(rc->store_password_file, out, err, errlen);
  const char *env = getenv(PASSWORD_ENV);
  if (!env || !env[0]) return 0;
  size_t n = strlen(env);
  if (n >= PASSWORD_MAX) {
    snprintf(err, errlen, PASSWORD_ENV " is too long");
    return -1;
  }
  *out = cm_secret_alloc(n + 1);
  if (!*out) return -1;
  memcpy(*out, env, n + 1);
  explicit_bzero((char *)env, n);
  unsetenv(PASSWORD_ENV);
  return 0;
}

/* The name in logs and leases: NAME of NAME.crt (issue-cert's), else
 * "controller". */
static void default_name(const char *cert, char *out, size_t outlen) {
  const char *base = cert ? strrchr(cert, '/') : NULL;
  base = base ? base + 1 : cert ? cert : "controller";
  size_t n = strcspn(base, ".");
  snprintf(out, outlen, "%.*s", (int)(n ? n : strlen(base)), base);
}

typedef struct run_ctx {
  ctl_server *srv;
  uv_signal_t sigint, sigterm;
  int signals;
} run_ctx;

static void on_closed(void *ud) {
  run_ctx *x = ud;
  uv_close((uv_handle_t *)&x->sigint, NULL);
  uv_close((uv_handle_t *)&x->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
  run_ctx *x = h->data;
  if (++x->signals > 1) exit(1);
  cm_log(CM_LOG_INFO, "controller", "signal received; stopping", CM_I("signal", signum));
  ctl_server_close(x->srv, on_closed, x);
}

static int cmd_run(int argc, char **argv) {
  run_cfg rc;
  memset(&rc, 0, sizeof rc);
  char err[512];
  int r = cm_config_cli(&g_run_spec, &rc, argc, argv, "relay-controller run");
  if (r >= 0) return r;
  cm_log_level lvl;
  if (cm_log_level_parse(rc.log_level, &lvl) != 0) {
    cm_config_free(&g_run_spec, &rc);
    return usage_error(&g_run_spec, "run", "log-level must be debug, info, warn or error");
  }
  cm_log_set_level(lvl);
  if (rc.relays.n == 0) {
    cm_config_free(&g_run_spec, &rc);
    return usage_error(&g_run_spec, "run", "at least one --relay is required");
  }
  if (rc.store && rc.state_dir) {
    cm_config_free(&g_run_spec, &rc);
    return usage_error(&g_run_spec, "run", "give --store or --state-dir, not both");
  }
  char *password = NULL;
  if (rc.store && store_password(&rc, &password, err, sizeof err) != 0) {
    cm_config_free(&g_run_spec, &rc);
    fprintf(stderr, "relay-controller run: %s\n", err);
    return 1;
  }
  char name[96];
  ctl_ca_paths paths;
  if (rc.ca_dir) ctl_ca_paths_for(rc.ca_dir, &paths);
  ctl_config cc = {.state_dir = rc.state_dir,
                   .default_ttl_s = (uint32_t)(rc.default_ttl / 1000),
                   .default_peer_wait_s = (uint32_t)(rc.default_peer_wait / 1000),
                   .max_ttl_s = (uint32_t)(rc.max_ttl / 1000),
                   .max_peer_wait_s = (uint32_t)(rc.max_peer_wait / 1000),
                   .max_sessions = (uint32_t)rc.max_sessions,
                   .max_message_bytes = (uint64_t)rc.max_message,
                   .relays = &rc.relays,
                   .relay_server_name = rc.relay_server_name,
                   .cert_file = rc.cert     ? rc.cert
                                : rc.ca_dir ? paths.ctl_cert
                                            : NULL,
                   .key_file = rc.key      ? rc.key
                               : rc.ca_dir ? paths.ctl_key
                                           : NULL,
                   .ca_file = rc.ca       ? rc.ca
                              : rc.ca_dir ? paths.ca_cert
                                          : NULL,
                   .ping_interval_ms = (uint32_t)rc.ping_interval,
                   .ping_timeout_ms = (uint32_t)rc.ping_timeout,
                   .backoff_base_ms = (uint32_t)rc.backoff_base,
                   .backoff_max_ms = (uint32_t)rc.backoff_max,
                   .max_link_age_ms = (uint32_t)rc.max_link_age,
                   .accept_unauthenticated = rc.accept_unauthenticated,
                   .store_url = rc.store,
                   .store_password = password,
                   .store_prefix = rc.store_prefix,
                   .store_timeout_ms = (uint32_t)rc.store_timeout,
                   .store_flush_ms = (uint32_t)rc.store_flush,
                   .name = name,
                   .target_allow = &rc.target_allow};
  if (rc.name)
    snprintf(name, sizeof name, "%s", rc.name);
  else
    default_name(cc.cert_file, name, sizeof name);
  if (!cc.cert_file || !cc.key_file || !cc.ca_file) {
    cm_config_free(&g_run_spec, &rc);
    cm_secret_free(password);
    return usage_error(&g_run_spec, "run", "give --ca-dir, or --cert, --key and --ca");
  }
  signal(SIGPIPE, SIG_IGN);
  uv_loop_t *loop = uv_default_loop();
  run_ctx x = {0};
  x.srv = ctl_server_new(loop, &cc, err, sizeof err);
  cm_secret_free(password); /* the store keeps its own copy, in secret memory */
  int exit_code = 0;
  if (!x.srv || ctl_server_start(x.srv, err, sizeof err) != 0) {
    cm_log(CM_LOG_ERROR, "controller", "cannot start", CM_S("error", err));
    exit_code = 1;
    if (x.srv) {
      ctl_server_close(x.srv, NULL, NULL);
      uv_run(loop, UV_RUN_DEFAULT);
    }
  } else {
    uv_signal_init(loop, &x.sigint);
    uv_signal_init(loop, &x.sigterm);
    x.sigint.data = x.sigterm.data = &x;
    uv_signal_start(&x.sigint, on_signal, SIGINT);
    uv_signal_start(&x.sigterm, on_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
  }
  ctl_server_free(x.srv);
  uv_loop_close(loop);
  cm_config_free(&g_run_spec, &rc);
  return exit_code;
}

/* ---- init-ca ------------------------------------------------------------------------ */

typedef struct ca_cfg {
  char *dir, *ca_name, *controller_name;
  long long days;
  cm_strlist hosts;
  char *csr;
  char *name, *out_dir;
} ca_cfg;

#define COPT(n, t, f, d, lo, hi, h, mv)                                                            \
  { n, t, offsetof(ca_cfg, f), d, lo, hi, h, mv }

static const cm_cfg_opt g_init_opts[] = {
    COPT("dir", CM_CFG_STRING, dir, NULL, 0, 0, "where the CA lives (created 0700)", "DIR"),
    COPT("ca-name", CM_CFG_STRING, ca_name, "relay controller CA", 0, 0, "CA common name", "CN"),
    COPT("controller-name", CM_CFG_STRING, controller_name, "relay-controller", 0, 0,
         "controller certificate common name", "CN"),
    COPT("days", CM_CFG_INT, days, "3650", 1, 36500, "validity of the CA", "N"),
};

static const cm_cfg_spec g_init_spec = {
    "relay-controller init-ca --dir DIR [options]",
    "Make the controller CA (ca.key, ca.crt) and the controller's client certificate\n"
    "(controller.key, controller.crt) carrying the controller identity " CM_PKI_URI_CONTROLLER ".\n"
    "Existing files are reused, never overwritten.",
    g_init_opts, CM_ARRAY_LEN(g_init_opts), NULL};

static int cmd_init_ca(int argc, char **argv) {
  ca_cfg c;
  memset(&c, 0, sizeof c);
  char err[512];
  int rc = cm_config_cli(&g_init_spec, &c, argc, argv, "relay-controller init-ca");
  if (rc >= 0) return rc;
  rc = 0;
  if (!c.dir) {
    rc = usage_error(&g_init_spec, "init-ca", "--dir is required");
  } else if (ctl_init_ca(c.dir, c.ca_name, c.controller_name, (int)c.days, err, sizeof err) != 0) {
    fprintf(stderr, "relay-controller init-ca: %s\n", err);
    rc = 1;
  } else {
    ctl_ca_paths p;
    ctl_ca_paths_for(c.dir, &p);
    fprintf(stderr, "CA certificate:          %s\ncontroller certificate:  %s\n", p.ca_cert,
            p.ctl_cert);
  }
  cm_config_free(&g_init_spec, &c);
  return rc;
}

/* ---- issue-cert -------------------------------------------------------------------------- */

static const cm_cfg_opt g_issue_opts[] = {
    COPT("dir", CM_CFG_STRING, dir, NULL, 0, 0, "the CA directory made by init-ca", "DIR"),
    COPT("name", CM_CFG_STRING, name, NULL, 0, 0,
         "the controller's name: certificate CN and file names (letters, digits, . _ -)", "NAME"),
    COPT("out-dir", CM_CFG_STRING, out_dir, NULL, 0, 0,
         "where NAME.key and NAME.crt go (default: --dir; created 0700)", "DIR"),
    COPT("days", CM_CFG_INT, days, "3650", 1, 36500,
         "validity of the certificate (never beyond the CA's)", "N"),
};

static const cm_cfg_spec g_issue_spec = {
    "relay-controller issue-cert --dir DIR --name NAME [--out-dir DIR] [--days N]",
    "Give a further controller its own identity from the CA in --dir: a new P-256\n"
    "key NAME.key (0600) and NAME.crt with CN NAME, the controller identity\n" CM_PKI_URI_CONTROLLER
    " and clientAuth.  Relays tell controllers apart by certificate\n"
    "(CN and fingerprint): controllers sharing a relay need one each, or they are\n"
    "taken for one.  Existing files are never overwritten.  Then:\n"
    "  relay-controller run --ca-dir DIR --cert DIR/NAME.crt --key DIR/NAME.key ...",
    g_issue_opts, CM_ARRAY_LEN(g_issue_opts), NULL};

static int cmd_issue_cert(int argc, char **argv) {
  ca_cfg c;
  memset(&c, 0, sizeof c);
  char err[512];
  int rc = cm_config_cli(&g_issue_spec, &c, argc, argv, "relay-controller issue-cert");
  if (rc >= 0) return rc;
  rc = 0;
  ctl_cert_paths p;
  if (!c.dir || !c.name) {
    rc = usage_error(&g_issue_spec, "issue-cert", "--dir and --name are required");
  } else if (ctl_issue_cert(c.dir, c.name, c.out_dir, (int)c.days, &p, err, sizeof err) != 0) {
    fprintf(stderr, "relay-controller issue-cert: %s\n", err);
    rc = 1;
  } else {
    fprintf(stderr, "controller key:          %s\ncontroller certificate:  %s\n", p.key, p.cert);
  }
  cm_config_free(&g_issue_spec, &c);
  return rc;
}

/* ---- sign-csr ---------------------------------------------------------------------------- */

static const cm_cfg_opt g_sign_opts[] = {
    COPT("dir", CM_CFG_STRING, dir, NULL, 0, 0, "the CA directory made by init-ca", "DIR"),
    COPT("host", CM_CFG_LIST, hosts, NULL, 0, 0,
         "DNS name or IP controllers dial the relay at (repeatable)", "NAME"),
    COPT("csr", CM_CFG_STRING, csr, "-", 0, 0, "CSR file from `relay gen-csr` (- for stdin)",
         "FILE"),
    COPT("days", CM_CFG_INT, days, "365", 1, 36500, "validity of the relay certificate", "N"),
};

static const cm_cfg_spec g_sign_spec = {
    "relay-controller sign-csr --dir DIR --host NAME [--host ...] [--csr FILE]",
    "Verify a relay's CSR and print its certificate (PEM) on stdout: subject from the CSR,\n"
    "SANs from --host, identity " CM_PKI_URI_RELAY ", serverAuth only.",
    g_sign_opts, CM_ARRAY_LEN(g_sign_opts), NULL};

static int read_csr(const char *path, char **out, char *err, size_t errlen) {
  size_t n;
  if (strcmp(path, "-") != 0) {
    int rc = cm_read_file(path, 1 << 20, out, &n);
    if (rc != 0) snprintf(err, errlen, "cannot read %s: %s", path, strerror(-rc));
    return rc;
  }
  cm_buf b;
  cm_buf_init(&b, 1 << 20);
  char chunk[4096];
  size_t got;
  while ((got = fread(chunk, 1, sizeof chunk, stdin)) > 0) {
    if (cm_buf_append(&b, chunk, got) != 0) {
      cm_buf_free(&b);
      snprintf(err, errlen, "CSR on stdin is too large");
      return -1;
    }
  }
  cm_buf_append(&b, "", 1);
  *out = (char *)b.data;
  return 0;
}

static int cmd_sign_csr(int argc, char **argv) {
  ca_cfg c;
  memset(&c, 0, sizeof c);
  char err[512];
  int rc = cm_config_cli(&g_sign_spec, &c, argc, argv, "relay-controller sign-csr");
  if (rc >= 0) return rc;
  rc = 0;
  char *csr = NULL, *cert = NULL;
  if (!c.dir || c.hosts.n == 0) {
    rc = usage_error(&g_sign_spec, "sign-csr", "--dir and at least one --host are required");
  } else if (read_csr(c.csr, &csr, err, sizeof err) != 0 ||
             ctl_sign_csr(c.dir, csr, &c.hosts, (int)c.days, &cert, err, sizeof err) != 0) {
    fprintf(stderr, "relay-controller sign-csr: %s\n", err);
    rc = 1;
  } else {
    fputs(cert, stdout);
  }
  free(csr);
  free(cert);
  cm_config_free(&g_sign_spec, &c);
  return rc;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static const cm_subcmd g_cmds[] = {
    {"run", cmd_run, "dial relays and serve them"},
    {"init-ca", cmd_init_ca, "make the controller CA and the controller certificate"},
    {"issue-cert", cmd_issue_cert, "give a further controller a certificate of its own"},
    {"sign-csr", cmd_sign_csr, "issue a relay certificate from its CSR"},
};

int main(int argc, char **argv) {
  return cm_subcmd_main("relay-controller", g_cmds, CM_ARRAY_LEN(g_cmds), argc, argv);
}
