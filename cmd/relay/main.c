/*
 * main.c — the `relay` multi-call binary: argument parsing and dispatch
 * only.  Every subcommand takes --help; a bad subcommand or flag exits 2
 * with a usage line.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <protobuf-c/protobuf-c.h>

#include "cmd/relay/admin_cmds.h"
#include "cmd/relay/peer.h"
#include "controller-stub/controller.h"
#include "relay/relay.h"
#include "tunnel/tunnel.h"

#define EXIT_USAGE 2

#define OPT(n, t, f, d, lo, hi, h, mv)                                                             \
  { n, t, offsetof(rly_config, f), d, lo, hi, h, mv }

static const cm_cfg_opt g_serve_opts[] = {
    OPT("listen", CM_CFG_STRING, listen, "127.0.0.1:8443", 0, 0, "public listener address",
        "ADDR:PORT"),
    OPT("tls-cert", CM_CFG_STRING, tls_cert, NULL, 0, 0, "public TLS certificate chain (PEM)",
        "FILE"),
    OPT("tls-key", CM_CFG_STRING, tls_key, NULL, 0, 0, "public TLS private key (PEM)", "FILE"),
    OPT("dev-cert-dir", CM_CFG_STRING, dev_cert_dir, NULL, 0, 0,
        "generate once and use a self-signed development certificate kept in DIR", "DIR"),
    OPT("plain", CM_CFG_BOOL, plain, "false", 0, 0,
        "serve plain HTTP/WS (loopback only unless --allow-public-plain)", NULL),
    OPT("allow-public-plain", CM_CFG_BOOL, allow_public_plain, "false", 0, 0,
        "allow --plain on a non-loopback address (TLS terminated by a proxy)", NULL),
    OPT("proxy-protocol", CM_CFG_BOOL, proxy_protocol, "false", 0, 0,
        "connections from --trusted-proxies open with a PROXY v1/v2 header naming the client "
        "(required from them, refused from anyone else)",
        NULL),
    OPT("trusted-proxies", CM_CFG_LIST, trusted_proxies, NULL, 0, 0,
        "proxies whose PROXY header, Forwarded or X-Forwarded-For name the client (repeatable)",
        "CIDR"),
    OPT("client-ca", CM_CFG_STRING, client_ca, NULL, 0, 0,
        "request client certificates verified by this CA; fingerprints go to the controller",
        "FILE"),
    OPT("alpn", CM_CFG_STRING, alpn, "http/1.1", 0, 0, "ALPN protocols offered", "LIST"),
    OPT("public-url", CM_CFG_STRING, public_url, NULL, 0, 0,
        "base URL peers use to reach this relay (default from --listen)", "URL"),
    OPT("node-id", CM_CFG_STRING, node_id, NULL, 0, 0, "this relay's name (default hostname)",
        "NAME"),
    OPT("region", CM_CFG_STRING, region, NULL, 0, 0,
        "a label controllers may place sessions by ({\"region\": ...} on create)", "LABEL"),
    OPT("workers", CM_CFG_STRING, workers, "auto", 0, 0,
        "worker threads, each with its own loop: auto (the CPUs this process may use) or 1..256",
        "N"),
    OPT("accept", CM_CFG_STRING, accept, "handoff", 0, 0,
        "how connections reach the workers: handoff (one acceptor) or reuseport (a socket each; "
        "see docs/BENCHMARKS.md)",
        "MODE"),
    OPT("header-timeout", CM_CFG_DURATION, header_timeout_ms, "10s", 100, 600000,
        "time allowed for a request's headers and body", "DURATION"),
    OPT("idle-timeout", CM_CFG_DURATION, idle_timeout_ms, "60s", 100, 3600000,
        "keep-alive idle time before a connection is closed", "DURATION"),
    OPT("max-connections", CM_CFG_INT, max_connections, "100000", 1, 10000000,
        "public connections allowed at once", "N"),
    OPT("max-header-bytes", CM_CFG_SIZE, max_header_bytes, "16KiB", 1024, 1048576,
        "request line and headers, bytes", "SIZE"),
    OPT("max-headers", CM_CFG_INT, max_headers, "64", 8, 1024, "request headers allowed", "N"),
    OPT("max-body", CM_CFG_SIZE, max_body, "64KiB", 256, 16777216, "request body, bytes", "SIZE"),
    OPT("max-url", CM_CFG_SIZE, max_url, "8KiB", 256, 65536, "request target, bytes", "SIZE"),
    OPT("shutdown-grace", CM_CFG_DURATION, shutdown_grace_ms, "10s", 0, 3600000,
        "on SIGTERM, how long live connections may finish", "DURATION"),
    OPT("tunnel-listen", CM_CFG_STRING, tunnel_listen, "0.0.0.0:8444", 0, 0,
        "where controllers dial in (with --controller-ca)", "ADDR:PORT"),
    OPT("tunnel-cert", CM_CFG_STRING, tunnel_cert, NULL, 0, 0,
        "this relay's enrolled certificate (signed by the controller CA)", "FILE"),
    OPT("tunnel-key", CM_CFG_STRING, tunnel_key, NULL, 0, 0,
        "this relay's tunnel key (from `relay gen-csr`)", "FILE"),
    OPT("controller-ca", CM_CFG_STRING, controller_ca, NULL, 0, 0,
        "pinned controller CA: accept remote controllers (unset: embedded controller)", "FILE"),
    OPT("controller-identity", CM_CFG_STRING, controller_name, CM_PKI_URI_CONTROLLER, 0, 0,
        "URI SAN a controller certificate must carry", "URI"),
    OPT("call-timeout", CM_CFG_DURATION, call_timeout_ms, "5s", 10, 600000,
        "deadline of each controller call", "DURATION"),
    OPT("ping-interval", CM_CFG_DURATION, ping_interval_ms, "10s", 100, 600000,
        "HTTP/2 PING interval on controller links", "DURATION"),
    OPT("ping-timeout", CM_CFG_DURATION, ping_timeout_ms, "30s", 100, 3600000,
        "drop a controller link silent this long", "DURATION"),
    OPT("state-dir", CM_CFG_STRING, state_dir, NULL, 0, 0,
        "embedded controller: keep the session registry here (unset: memory only)", "DIR"),
    OPT("max-ttl", CM_CFG_DURATION, max_ttl_s, "24h", 1000, 31536000000LL,
        "embedded controller: longest session TTL a client may ask for", "DURATION"),
    OPT("max-peer-wait", CM_CFG_DURATION, max_peer_wait_s, "1h", 1000, 86400000,
        "embedded controller: longest peer_wait a client may ask for", "DURATION"),
    OPT("target-allow", CM_CFG_LIST, target_allow, NULL, 0, 0,
        "embedded controller: where target sessions may go (repeatable; unset: off); "
        "loopback, link-local and metadata addresses only when an entry names them",
        "CIDR:PORT[-PORT]"),
    OPT("peer-wait", CM_CFG_DURATION, peer_wait_ms, "2m", 1000, 86400000,
        "how long a lone peer waits when the controller does not say (its Limits may change it)",
        "DURATION"),
    OPT("max-message", CM_CFG_SIZE, max_message, "64MiB", 1024, 1LL << 40,
        "largest WebSocket message relayed (else close 1009)", "SIZE"),
    OPT("hold-bytes", CM_CFG_SIZE, hold_bytes, "256KiB", 0, 1LL << 30,
        "data a lone peer may send before its counterpart arrives", "SIZE"),
    OPT("ws-high-watermark", CM_CFG_SIZE, ws_high_watermark, "256KiB", 16384, 1LL << 30,
        "a peer's write queue above this pauses the sender", "SIZE"),
    OPT("ping-idle", CM_CFG_DURATION, ping_idle_ms, "0", 0, 86400000,
        "ping peers idle this long, close if still silent after as long again (0: off)",
        "DURATION"),
    OPT("max-sessions", CM_CFG_INT, max_sessions, "100000", 1, 100000000,
        "sessions live on this relay at once (else 429)", "N"),
    OPT("max-conns-per-ip", CM_CFG_INT, max_conns_per_ip, "0", 0, 10000000,
        "connections one client address may hold (else 429); 0: no limit (behind a proxy)", "N"),
    OPT("no-auth", CM_CFG_BOOL, no_auth, "false", 0, 0,
        "admin API without authentication (loopback only unless --allow-public-no-auth)", NULL),
    OPT("allow-public-no-auth", CM_CFG_BOOL, allow_public_no_auth, "false", 0, 0,
        "allow --no-auth on a non-loopback listener", NULL),
    OPT("oidc-issuer", CM_CFG_STRING, oidc_issuer, NULL, 0, 0,
        "OIDC issuer of admin tokens (its discovery document and JWKS are fetched)", "URL"),
    OPT("oidc-audience", CM_CFG_STRING, oidc_audience, NULL, 0, 0,
        "audience admin tokens must carry", "AUD"),
    OPT("oidc-ca", CM_CFG_STRING, oidc_ca, NULL, 0, 0,
        "CA bundle for the identity provider (default: system store)", "FILE"),
    OPT("client-id-hint", CM_CFG_STRING, client_id_hint, NULL, 0, 0,
        "OAuth client id suggested to CLI clients in /.well-known/swsrs-config", "ID"),
    OPT("jwt-leeway", CM_CFG_DURATION, jwt_leeway_ms, "60s", 0, 600000,
        "clock skew allowed on exp and nbf", "DURATION"),
    OPT("jwks-refresh", CM_CFG_DURATION, jwks_refresh_ms, "1h", 1000, 604800000,
        "how often the discovery document and JWKS are refetched", "DURATION"),
    OPT("jwks-min-refetch", CM_CFG_DURATION, jwks_min_refetch_ms, "30s", 1000, 3600000,
        "least time between JWKS refetches caused by unknown key ids", "DURATION"),
    OPT("cors-origin", CM_CFG_LIST, cors_origins, NULL, 0, 0,
        "allowed browser origin (repeatable): exact, https://*.example.com, http://localhost:*",
        "ORIGIN"),
    OPT("metrics", CM_CFG_STRING, metrics, "loopback", 0, 0,
        "who may read /metrics: public, loopback or off", "MODE"),
    OPT("log-level", CM_CFG_STRING, log_level, "info", 0, 0, "debug, info, warn or error", "LEVEL"),
    OPT("pid-file", CM_CFG_STRING, pid_file, NULL, 0, 0,
        "write the process id here once listening (removed at exit)", "FILE"),
};

static const cm_cfg_spec g_serve_spec = {
    "relay serve [options]",
    "Run the public relay: HTTPS and WebSocket on --listen (health /healthz, readiness /readyz,\n"
    "metrics /metrics, dashboard /dashboard, sessions on /relay/{id}).  With --controller-ca,\n"
    "controllers dial in on --tunnel-listen over mutual TLS; without it the reference\n"
    "controller runs in-process.  SIGHUP (or `relay reload`) reads the settings and every\n"
    "certificate again; SIGTERM stops accepting and drains for --shutdown-grace.",
    g_serve_opts, CM_ARRAY_LEN(g_serve_opts), NULL};

/* ---- serve ------------------------------------------------------------------ */

typedef struct serve_ctx {
  uv_loop_t *loop;
  rly_server *srv;
  ctl_embedded *embedded; /* the in-process controller, without --controller-ca */
  uv_signal_t sigint, sigterm, sighup;
  int argc; /* serve's arguments, read again at each reload */
  char **argv;
  rly_config *now;    /* the settings in force (the relay frees those reloads brought) */
  uv_async_t stopped; /* the relay's threads have drained */
  int signals;
} serve_ctx;

/* Embedded mode: the reference controller on its own thread and loop,
 * linked to the relay by a socketpair carrying the very protocol a remote
 * controller speaks.  The relay library knows nothing of it but the fd. */
static int start_embedded(serve_ctx *x, const rly_config *cfg, char *err, size_t errlen) {
  int fds[2];
  int rc = tun_socketpair(fds);
  if (rc != 0) {
    snprintf(err, errlen, "socketpair: %s", strerror(-rc));
    return rc;
  }
  ctl_config cc = {.state_dir = cfg->state_dir,
                   .max_ttl_s = (uint32_t)cfg->max_ttl_s,
                   .max_peer_wait_s = (uint32_t)cfg->max_peer_wait_s,
                   .default_peer_wait_s = (uint32_t)(cfg->peer_wait_ms / 1000),
                   .accept_unauthenticated = cfg->no_auth,
                   .target_allow = &cfg->target_allow,
                   .ping_interval_ms = (uint32_t)cfg->ping_interval_ms,
                   .ping_timeout_ms = (uint32_t)cfg->ping_timeout_ms};
  x->embedded = ctl_embedded_start(&cc, fds[1], err, errlen);
  if (!x->embedded) {
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if ((rc = rly_server_add_controller_fd(x->srv, fds[0], "embedded", err, errlen)) != 0) return rc;
  cm_log(CM_LOG_INFO, "relay", "embedded controller started",
         CM_S("state_dir", cfg->state_dir ? cfg->state_dir : "(memory)"));
  return 0;
}

static void on_stopped(uv_async_t *a) {
  serve_ctx *x = a->data;
  uv_close((uv_handle_t *)&x->sigint, NULL);
  uv_close((uv_handle_t *)&x->sigterm, NULL);
  uv_close((uv_handle_t *)&x->sighup, NULL);
  uv_close((uv_handle_t *)&x->stopped, NULL);
}

/* Runs on a relay thread: wake the main loop, which owns the signals. */
static void on_shutdown_done(void *ud) {
  serve_ctx *x = ud;
  uv_async_send(&x->stopped);
}

static void on_signal(uv_signal_t *h, int signum) {
  serve_ctx *x = h->data;
  if (++x->signals > 1) {
    cm_log(CM_LOG_WARN, "relay", "second signal: exiting now", CM_I("signal", signum));
    exit(1);
  }
  cm_log(CM_LOG_INFO, "relay", "signal received", CM_I("signal", signum));
  cm_notify("STOPPING=1");
  rly_server_shutdown(x->srv, on_shutdown_done, x);
}

/* Once listening: every inherited socket must have found its listener (a
 * socket unit naming an address we do not serve is a mistake to report,
 * not to ignore), then the pid file, then systemd hears we are ready. */
static int announce_ready(const rly_config *cfg) {
  char left[512];
  if (cm_activation_unclaimed(left, sizeof left) > 0) {
    cm_log(CM_LOG_ERROR, "relay", "inherited sockets match no listener (--listen, --tunnel-listen)",
           CM_S("sockets", left));
    return -1;
  }
  if (cfg->pid_file) {
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    int rc = cm_write_file_atomic(cfg->pid_file, pid, (size_t)n, 0644, false);
    if (rc != 0) {
      cm_log(CM_LOG_ERROR, "relay", "cannot write the pid file", CM_S("pid_file", cfg->pid_file),
             CM_S("error", strerror(-rc)));
      return -1;
    }
  }
  cm_notify("READY=1");
  return 0;
}

/* What serve makes of its settings once parsed, at start and at each
 * reload: durations the controller counts in seconds, the development
 * certificate. */
static int serve_settings(rly_config *cfg, char *err, size_t errlen) {
  cfg->max_ttl_s /= 1000;
  cfg->max_peer_wait_s /= 1000;
  static char dev_cert[4096], dev_key[4096];
  if (cfg->dev_cert_dir && !cfg->tls_cert && !cfg->plain) {
    char why[400];
    if (rly_dev_cert_ensure(cfg->dev_cert_dir, dev_cert, dev_key, why, sizeof why) != 0) {
      snprintf(err, errlen, "dev-cert-dir: %s", why);
      return -1;
    }
    cfg->tls_cert = strdup(dev_cert);
    cfg->tls_key = strdup(dev_key);
    cm_log(CM_LOG_WARN, "relay", "using a self-signed development certificate",
           CM_S("cert", dev_cert));
  }
  return 0;
}

/* ---- reload ------------------------------------------------------------------ */

/* What a reload may change; anything else is fixed for the process's life
 * (the sockets, the workers, the embedded controller, the controller
 * identity, the trusted proxies, the deadlines' timeouts) and a change to
 * it refuses the reload, named. */
static const char *const g_reloadable[] = {
    "tls-cert",       "tls-key",          "client-ca",       "tunnel-cert",       "tunnel-key",
    "controller-ca",  "cors-origin",      "max-connections", "max-conns-per-ip",  "max-sessions",
    "max-message",    "hold-bytes",       "peer-wait",       "ws-high-watermark", "ping-idle",
    "shutdown-grace", "metrics",          "log-level",       "dev-cert-dir",      "pid-file",
    "oidc-issuer",    "oidc-audience",    "oidc-ca",         "client-id-hint",    "jwt-leeway",
    "jwks-refresh",   "jwks-min-refetch",
};

static bool reloadable(const char *name) {
  for (size_t i = 0; i < CM_ARRAY_LEN(g_reloadable); i++)
    if (strcmp(g_reloadable[i], name) == 0) return true;
  return false;
}

static bool str_eq(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The option's field in both settings (copied out: the table gives byte
 * offsets, and a field is read as its own type). */
#define FIELDS(type, x, y)                                                                         \
  type x, y;                                                                                       \
  memcpy(&x, (const char *)a + o->offset, sizeof x);                                               \
  memcpy(&y, (const char *)b + o->offset, sizeof y)

static bool opt_equal(const cm_cfg_opt *o, const rly_config *a, const rly_config *b) {
  if (o->type == CM_CFG_STRING) {
    typedef const char *cstr;
    FIELDS(cstr, sa, sb);
    return str_eq(sa, sb);
  }
  if (o->type == CM_CFG_BOOL) {
    FIELDS(bool, ba, bb);
    return ba == bb;
  }
  if (o->type == CM_CFG_LIST) {
    FIELDS(cm_strlist, la, lb);
    if (la.n != lb.n) return false;
    for (size_t i = 0; i < la.n; i++)
      if (!str_eq(la.v[i], lb.v[i])) return false;
    return true;
  }
  FIELDS(long long, na, nb);
  return na == nb;
}
#undef FIELDS

static void free_settings(rly_config *cfg) {
  cm_config_free(&g_serve_spec, cfg);
  free(cfg);
}

/* Reads the settings again (flags, environment, --config file) and hands
 * them to the relay, which loads every certificate before changing
 * anything; a refusal names the setting and the running ones stay. */
static void reload(serve_ctx *x) {
  char err[600];
  rly_config *cfg = calloc(1, sizeof *cfg);
  int rc = cfg ? cm_config_load(&g_serve_spec, cfg, x->argc, x->argv, NULL, err, sizeof err) : -1;
  if (!cfg) snprintf(err, sizeof err, "out of memory");
  if (rc == CM_CFG_OK) rc = serve_settings(cfg, err, sizeof err);
  for (size_t i = 0; rc == CM_CFG_OK && i < g_serve_spec.nopts; i++) {
    const cm_cfg_opt *o = &g_serve_spec.opts[i];
    if (!reloadable(o->name) && !opt_equal(o, x->now, cfg)) {
      snprintf(err, sizeof err, "%s: a change needs a restart", o->name);
      rc = -1;
    }
  }
  bool remote_now = x->now->controller_ca && *x->now->controller_ca;
  if (rc == CM_CFG_OK && remote_now != (cfg->controller_ca && *cfg->controller_ca)) {
    snprintf(err, sizeof err,
             "controller-ca: between embedded and remote controllers, a "
             "change needs a restart");
    rc = -1;
  }
  if (rc == CM_CFG_OK && rly_server_reload(x->srv, cfg, free_settings, err, sizeof err) == 0) {
    x->now = cfg;
    return;
  }
  cm_log(CM_LOG_ERROR, "relay", "reload refused; the running settings stay", CM_S("error", err));
  if (cfg) free_settings(cfg);
}

static void on_sighup(uv_signal_t *h, int signum) {
  CM_UNUSED(signum);
  serve_ctx *x = h->data;
  cm_log(CM_LOG_INFO, "relay", "reloading (SIGHUP)");
  cm_notify("RELOADING=1");
  reload(x);
  cm_notify("READY=1");
}

static int cmd_serve(int argc, char **argv) {
  rly_config cfg;
  memset(&cfg, 0, sizeof cfg);
  char err[512];
  int rc = cm_config_cli(&g_serve_spec, &cfg, argc, argv, "relay serve");
  if (rc >= 0) return rc;
  cm_log_level lvl;
  if (cm_log_level_parse(cfg.log_level, &lvl) != 0) {
    fprintf(stderr, "relay serve: log-level must be debug, info, warn or error\n");
    cm_config_free(&g_serve_spec, &cfg);
    return EXIT_USAGE;
  }
  cm_log_set_level(lvl);
  signal(SIGPIPE, SIG_IGN);
  if (serve_settings(&cfg, err, sizeof err) != 0) {
    cm_log(CM_LOG_ERROR, "relay", "development certificate", CM_S("error", err));
    cm_config_free(&g_serve_spec, &cfg);
    return 1;
  }

  serve_ctx x = {.loop = uv_default_loop()};
  bool embedded = !cfg.controller_ca || !*cfg.controller_ca;
  x.srv = rly_server_new(&cfg, err, sizeof err);
  /* The signals are ours before the relay says it is listening: a reload
   * or a stop sent the moment it does must not find SIGHUP's default
   * (death).  Their callbacks run only once the loop runs, below. */
  uv_async_init(x.loop, &x.stopped, on_stopped);
  x.stopped.data = &x;
  uv_signal_init(x.loop, &x.sigint);
  uv_signal_init(x.loop, &x.sigterm);
  uv_signal_init(x.loop, &x.sighup);
  x.sigint.data = x.sigterm.data = x.sighup.data = &x;
  uv_signal_start(&x.sigint, on_signal, SIGINT);
  uv_signal_start(&x.sigterm, on_signal, SIGTERM);
  uv_signal_start(&x.sighup, on_sighup, SIGHUP);
  x.argc = argc;
  x.argv = argv;
  x.now = &cfg;
  bool started = x.srv && (!embedded || start_embedded(&x, &cfg, err, sizeof err) == 0) &&
                 rly_server_start(x.srv, err, sizeof err) == 0;
  if (!started) cm_log(CM_LOG_ERROR, "relay", "cannot start", CM_S("error", err));
  if (!started || announce_ready(&cfg) != 0) {
    rly_server_free(x.srv);
    ctl_embedded_stop(x.embedded);
    cm_config_free(&g_serve_spec, &cfg);
    return 1;
  }
  uv_run(x.loop, UV_RUN_DEFAULT);
  rly_server_free(x.srv);
  ctl_embedded_stop(x.embedded); /* after the relay closed its end */
  uv_loop_close(x.loop);
  if (cfg.pid_file) unlink(cfg.pid_file);
  cm_config_free(&g_serve_spec, &cfg);
  return 0;
}

/* ---- reload ------------------------------------------------------------------- */

typedef struct reload_cfg {
  char *pid_file;
} reload_cfg;

static const cm_cfg_opt g_reload_opts[] = {
    {"pid-file", CM_CFG_STRING, offsetof(reload_cfg, pid_file), NULL, 0, 0,
     "the running relay's --pid-file", "FILE"},
};

static const cm_cfg_spec g_reload_spec = {
    "relay reload --pid-file FILE",
    "Ask a running `relay serve` to reload (SIGHUP to the pid in its --pid-file): it reads\n"
    "its settings again (flags, environment, --config file) and every certificate and key;\n"
    "a reload that does not load is refused whole (see its log) and the running settings stay.",
    g_reload_opts, CM_ARRAY_LEN(g_reload_opts), NULL};

static int cmd_reload(int argc, char **argv) {
  reload_cfg rc_;
  memset(&rc_, 0, sizeof rc_);
  int rc = cm_config_cli(&g_reload_spec, &rc_, argc, argv, "relay reload");
  if (rc >= 0) return rc;
  rc = 1;
  char text[32] = "";
  FILE *f = rc_.pid_file ? fopen(rc_.pid_file, "r") : NULL;
  long pid = 0;
  char *end = NULL;
  if (f && fgets(text, sizeof text, f)) pid = strtol(text, &end, 10);
  if (f) fclose(f);
  if (!rc_.pid_file) {
    fprintf(stderr, "relay reload: --pid-file is required\n");
    rc = EXIT_USAGE;
  } else if (pid <= 1 || !end || (*end && *end != '\n')) {
    fprintf(stderr, "relay reload: no process id in %s\n", rc_.pid_file);
  } else if (kill((pid_t)pid, SIGHUP) != 0) {
    fprintf(stderr, "relay reload: pid %ld: %s\n", pid, strerror(errno));
  } else {
    rc = 0;
  }
  cm_config_free(&g_reload_spec, &rc_);
  return rc;
}

/* ---- version ------------------------------------------------------------------ */

static int cmd_version(int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      printf("Usage: relay version\n\nPrint the version, git commit, build date and the "
             "versions of the linked libraries.\n");
      return 0;
    }
    fprintf(stderr, "relay version: unexpected argument \"%s\"\nUsage: relay version\n", argv[i]);
    return EXIT_USAGE;
  }
  printf("relay %s (commit %s, built %s)\n", rly_version(), rly_git_commit(), rly_build_date());
  printf("  libuv %s\n  %s\n  nghttp2 %s\n  protobuf-c %s\n  jansson %s\n", uv_version_string(),
         cm_openssl_version(), nghttp2_version(0)->version_str, protobuf_c_version(),
         JANSSON_VERSION);
  return 0;
}

/* ---- gen-csr ------------------------------------------------------------------------ */

typedef struct csr_cfg {
  char *key;
  char *node_id;
} csr_cfg;

static const cm_cfg_opt g_csr_opts[] = {
    {"key", CM_CFG_STRING, offsetof(csr_cfg, key), "/var/lib/relay/tunnel.key", 0, 0,
     "the tunnel key: made (0600) if missing, reused if present, never overwritten", "FILE"},
    {"node-id", CM_CFG_STRING, offsetof(csr_cfg, node_id), NULL, 0, 0,
     "this relay's name, the CSR's common name (default: hostname)", "NAME"},
};

static const cm_cfg_spec g_csr_spec = {
    "relay gen-csr [--key FILE] [--node-id NAME] > relay.csr",
    "Enrolment, step 1: make (or reuse) this relay's tunnel key and print a certificate\n"
    "signing request (PEM) on stdout.  Diagnostics go to stderr.  Then, on the controller:\n"
    "  relay-controller sign-csr --dir CA_DIR --host RELAY_HOST < relay.csr > tunnel.crt",
    g_csr_opts, CM_ARRAY_LEN(g_csr_opts), NULL};

static int cmd_gen_csr(int argc, char **argv) {
  csr_cfg c;
  memset(&c, 0, sizeof c);
  char err[512];
  int rc = cm_config_cli(&g_csr_spec, &c, argc, argv, "relay gen-csr");
  if (rc >= 0) return rc;
  rc = 0;
  char host[256];
  size_t hl = sizeof host;
  const char *node = c.node_id;
  if (!node) node = uv_os_gethostname(host, &hl) == 0 ? host : "relay";
  char *pem = NULL;
  bool created = false;
  if (rly_gen_csr(c.key, node, &pem, &created, err, sizeof err) != 0) {
    fprintf(stderr, "relay gen-csr: %s\n", err);
    rc = 1;
  } else {
    fprintf(stderr, "%s tunnel key %s; CSR for \"%s\" follows on stdout\n",
            created ? "created" : "reusing", c.key, node);
    fputs(pem, stdout);
  }
  free(pem);
  cm_config_free(&g_csr_spec, &c);
  return rc;
}

/* ---- dispatch ------------------------------------------------------------------- */

static const cm_subcmd g_cmds[] = {
    {"serve", cmd_serve, "run the relay"},
    {"reload", cmd_reload, "make a running relay reload its settings and certificates"},
    {"gen-csr", cmd_gen_csr, "make the tunnel key and print a CSR for enrolment"},
    {"create", cmd_create, "create a session (admin API)"},
    {"list", cmd_list, "list sessions (admin API)"},
    {"get", cmd_get, "show a session (admin API)"},
    {"delete", cmd_delete, "delete a session (admin API)"},
    {"auth", cmd_auth, "sign in for the admin commands (OAuth device flow), or --logout"},
    {"raw", relay_cmd_raw, "peer: standard input and output through a session"},
    {"tcp-listen", relay_cmd_tcp_listen, "peer: accept TCP connections and tunnel them"},
    {"tcp-dial", relay_cmd_tcp_dial, "peer: tunnel the session to a TCP service"},
    {"udp-listen", relay_cmd_udp_listen, "peer: datagrams on a local port through a session"},
    {"udp-dial", relay_cmd_udp_dial, "peer: datagrams through a session to a UDP service"},
    {"pubsub-dial", relay_cmd_pubsub_dial, "peer: a session's messages to and from Redis pub/sub"},
    {"version", cmd_version, "print version and library versions"},
};

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--version")) return cmd_version(0, NULL);
  return cm_subcmd_main("relay", g_cmds, CM_ARRAY_LEN(g_cmds), argc, argv);
}
