/*
 * peer.c — the peer commands of the `relay` binary: raw, tcp-listen,
 * tcp-dial, udp-listen and udp-dial.  Argument parsing only; the pumps are
 * the client library's (rc_peer_*).
 *
 * Flags and environment follow swsrs: --url/$SWSRS_URL, --session/
 * $SWSRS_SESSION, --token/$SWSRS_TOKEN, --role/$SWSRS_ROLE, and so on for
 * every flag (SWSRS_CA, SWSRS_INSECURE...: the specs' env_prefix).  A token given on the command
 * line is visible to every user (ps), so it draws a warning and is wiped
 * from our argv at once.  Exit status: 0 a clean end, 1 a refusal or an
 * error (one line on stderr), 2 usage.
 */
#include "cmd/relay/peer.h"

#include <openssl/crypto.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "client/client.h"

#ifndef EXIT_USAGE
#define EXIT_USAGE 2
#endif

typedef struct peer_cfg {
  char *url, *session, *token, *role;
  char *ca;
  bool insecure;
  char *listen, *target;
  bool keep, keep_open;
  long long buffer, udp_queue;
  long long connect_timeout_ms, ping_interval_ms, ping_timeout_ms, max_message;
  char *log_level;
  char *redis, *prefix, *redis_user, *redis_password_file;
  long long redis_timeout_ms;
} peer_cfg;

#define POPT(n, t, f, d, lo, hi, h, mv)                                                            \
  { n, t, offsetof(peer_cfg, f), d, lo, hi, h, mv }

/* Every peer command's options, then the ones of its own; MAXMSG is the
 * default of --max-message. */
#define COMMON_OPTS_M(MAXMSG)                                                                      \
  POPT("url", CM_CFG_STRING, url, NULL, 0, 0,                                                      \
       "the relay, e.g. wss://relay.example.com; /relay/SESSION is added", "URL"),                 \
      POPT("session", CM_CFG_STRING, session, NULL, 0, 0, "session id", "ID"),                     \
      POPT("token", CM_CFG_STRING, token, NULL, 0, 0,                                              \
           "slot token; prefer SWSRS_TOKEN: a command line is visible to every user", "TOKEN"),    \
      POPT("role", CM_CFG_STRING, role, NULL, 0, 0,                                                \
           "initiator or responder (a hint: the token decides)", "ROLE"),                          \
      POPT("ca", CM_CFG_STRING, ca, NULL, 0, 0,                                                    \
           "trust only this CA bundle for the relay's certificate (default: system store)",        \
           "FILE"),                                                                                \
      POPT("insecure", CM_CFG_BOOL, insecure, "false", 0, 0,                                       \
           "do not verify the relay's certificate at all (warns; tests only)", NULL),              \
      POPT("buffer", CM_CFG_SIZE, buffer, "256KiB", 16384, 1LL << 30,                              \
           "per direction: queued bytes that pause the other side", "SIZE"),                       \
      POPT("connect-timeout", CM_CFG_DURATION, connect_timeout_ms, "10s", 100, 600000,             \
           "name lookup, TCP and TLS to the relay", "DURATION"),                                   \
      POPT("ping-interval", CM_CFG_DURATION, ping_interval_ms, "20s", 100, 3600000,                \
           "ping the relay after this much silence", "DURATION"),                                  \
      POPT("ping-timeout", CM_CFG_DURATION, ping_timeout_ms, "20s", 100, 3600000,                  \
           "give up on a relay silent this long after a ping", "DURATION"),                        \
      POPT("max-message", CM_CFG_SIZE, max_message, MAXMSG, 1024, 1LL << 40,                       \
           "largest message accepted from the peer (else close 1009)", "SIZE"),                    \
      POPT("log-level", CM_CFG_STRING, log_level, "warn", 0, 0, "debug, info, warn or error",      \
           "LEVEL")
#define COMMON_OPTS COMMON_OPTS_M("64MiB")

static const cm_cfg_opt g_raw_opts[] = {
    COMMON_OPTS,
    POPT("keep-open", CM_CFG_BOOL, keep_open, "false", 0, 0,
         "EOF on stdin stops sending but keeps receiving until the peer closes", NULL),
};

static const cm_cfg_opt g_tcp_listen_opts[] = {
    COMMON_OPTS,
    POPT("listen", CM_CFG_STRING, listen, NULL, 0, 0,
         "where to accept TCP connections (port 0: any)", "ADDR:PORT"),
    POPT("keep", CM_CFG_BOOL, keep, "false", 0, 0,
         "after a connection ends, re-join the session and accept the next one", NULL),
};

static const cm_cfg_opt g_tcp_dial_opts[] = {
    COMMON_OPTS,
    POPT("target", CM_CFG_STRING, target, NULL, 0, 0, "the TCP service to connect the peer to",
         "HOST:PORT"),
    POPT("keep", CM_CFG_BOOL, keep, "false", 0, 0,
         "after a connection ends, re-join the session for the next one", NULL),
};

static const cm_cfg_opt g_udp_listen_opts[] = {
    COMMON_OPTS,
    POPT("listen", CM_CFG_STRING, listen, NULL, 0, 0,
         "where to receive datagrams; replies go to the first sender", "ADDR:PORT"),
    POPT("udp-queue", CM_CFG_INT, udp_queue, "256", 1, 1000000,
         "datagrams waiting for the socket before more are dropped", "N"),
};

static const cm_cfg_opt g_udp_dial_opts[] = {
    COMMON_OPTS,
    POPT("target", CM_CFG_STRING, target, NULL, 0, 0, "where to send the peer's datagrams",
         "HOST:PORT"),
    POPT("udp-queue", CM_CFG_INT, udp_queue, "256", 1, 1000000,
         "datagrams waiting for the socket before more are dropped", "N"),
};

/* A whole message is gathered before it is published: a smaller cap. */
static const cm_cfg_opt g_pubsub_opts[] = {
    COMMON_OPTS_M("1MiB"),
    POPT("redis", CM_CFG_STRING, redis, NULL, 0, 0,
         "the Redis server (pub/sub channels are server-wide; /DB is only SELECTed)",
         "redis://HOST[:PORT][/DB]"),
    POPT("prefix", CM_CFG_STRING, prefix, "relay", 0, 0,
         "channel prefix: PREFIX:SESSION:up[:text] and PREFIX:SESSION:down[:text]", "PREFIX"),
    POPT("redis-user", CM_CFG_STRING, redis_user, NULL, 0, 0,
         "ACL user name for AUTH (the password from the file or SWSRS_REDIS_PASSWORD)", "USER"),
    POPT("redis-password-file", CM_CFG_STRING, redis_password_file, NULL, 0, 0,
         "read the Redis password from this file (mode 0600 or stricter; else "
         "$SWSRS_REDIS_PASSWORD; never a flag)",
         "FILE"),
    POPT("redis-timeout", CM_CFG_DURATION, redis_timeout_ms, "5s", 100, 600000,
         "connecting to Redis, and the longest wait for its answer, before reconnecting",
         "DURATION"),
    POPT("keep", CM_CFG_BOOL, keep, "false", 0, 0,
         "after the WebSocket ends, re-join the session (Redis stays connected)", NULL),
};

#define PEER_FOOTER                                                                                \
  "\n\nExit status: 0 when the tunnel ended cleanly (close 1000), 1 for a refusal or an error\n"   \
  "(one line on stderr with the HTTP status or close code and the relay's message), 2 for\n"       \
  "usage.  The token travels in Authorization: Bearer, never in the URL; give it in\n"             \
  "SWSRS_TOKEN rather than --token, which every user can see (ps)."

static const cm_cfg_spec g_peer_specs[] = {
    [RC_PEER_RAW] =
        {"relay raw [options]",
         "Standard input to the peer, the peer to standard output.  EOF on stdin closes\n"
         "the tunnel (1000) once the peer has joined and everything sent is delivered; a\n"
         "side that only receives keeps stdin open or uses --keep-open." PEER_FOOTER,
         g_raw_opts, CM_ARRAY_LEN(g_raw_opts), "SWSRS_"},
    [RC_PEER_TCP_LISTEN] =
        {"relay tcp-listen --listen ADDR:PORT [options]",
         "Accept one TCP connection on --listen, join the session and tunnel it;\n"
         "exit with how it ended.  --keep: then re-join and accept the next (one\n"
         "at a time; others wait).  FIN on the connection closes the tunnel 1000\n"
         "after what was sent; the peer's close half-closes the connection after\n"
         "what was received." PEER_FOOTER,
         g_tcp_listen_opts, CM_ARRAY_LEN(g_tcp_listen_opts), "SWSRS_"},
    [RC_PEER_TCP_DIAL] = {"relay tcp-dial --target HOST:PORT [options]",
                          "Join the session, then connect to --target and tunnel that connection\n"
                          "(what the target sends first waits at the relay for the peer).\n"
                          "--keep: re-join after each connection." PEER_FOOTER,
                          g_tcp_dial_opts, CM_ARRAY_LEN(g_tcp_dial_opts), "SWSRS_"},
    [RC_PEER_UDP_LISTEN] =
        {"relay udp-listen --listen ADDR:PORT [options]",
         "Datagrams received on --listen go to the peer, one message each; the\n"
         "peer's messages go back to the first sender.  Nothing waits: a full\n"
         "queue drops and counts (logged at the end, --log-level info)." PEER_FOOTER,
         g_udp_listen_opts, CM_ARRAY_LEN(g_udp_listen_opts), "SWSRS_"},
    [RC_PEER_UDP_DIAL] = {"relay udp-dial --target HOST:PORT [options]",
                          "The peer's messages go to --target as datagrams, its answers come back\n"
                          "as messages.  A full queue drops and counts." PEER_FOOTER,
                          g_udp_dial_opts, CM_ARRAY_LEN(g_udp_dial_opts), "SWSRS_"},
    [RC_PEER_PUBSUB] =
        {"relay pubsub-dial --redis redis://HOST[:PORT][/DB] [options]",
         "Join the session and map it onto Redis pub/sub: each message from the peer is\n"
         "PUBLISHed as its bytes on PREFIX:SESSION:up (text messages on PREFIX:SESSION:up:text);\n"
         "what is published on PREFIX:SESSION:down reaches the peer as a binary message, on\n"
         "PREFIX:SESSION:down:text as a text message (UTF-8 only).  Delivery is at most once,\n"
         "as Redis's own: a message for a peer whose queue is full (--buffer), or from a peer\n"
         "while Redis is down, is dropped and counted (logged at the end, --log-level info).\n"
         "Redis is reconnected with backoff while the session stays joined.  The password\n"
         "comes from --redis-password-file or SWSRS_REDIS_PASSWORD, never from the command\n"
         "line or the URL." PEER_FOOTER,
         g_pubsub_opts, CM_ARRAY_LEN(g_pubsub_opts), "SWSRS_"},
};

static const char *const g_peer_names[] = {
    [RC_PEER_RAW] = "relay raw",           [RC_PEER_TCP_LISTEN] = "relay tcp-listen",
    [RC_PEER_TCP_DIAL] = "relay tcp-dial", [RC_PEER_UDP_LISTEN] = "relay udp-listen",
    [RC_PEER_UDP_DIAL] = "relay udp-dial", [RC_PEER_PUBSUB] = "relay pubsub-dial",
};

/* ---- settings --------------------------------------------------------------------- */

/* A --token on the command line: warn, and wipe it from argv so that ps
 * and /proc/PID/cmdline stop showing it. */
static void peer_scrub_token_arg(int argc, char **argv, const char *cmd) {
  for (int i = 0; i < argc && strcmp(argv[i], "--"); i++) {
    if (strcmp(argv[i], "--token") && strncmp(argv[i], "--token=", 8)) continue;
    fprintf(stderr,
            "%s: warning: --token on the command line is visible to other users (ps); "
            "set SWSRS_TOKEN instead\n",
            cmd);
    break;
  }
  rc_argv_hide(argc, argv, "token");
}

static bool peer_role_ok(const char *r) {
  return !r || !strcmp(r, "initiator") || !strcmp(r, "responder");
}

/* Checks what every command needs; prints the problem and returns false. */
static bool peer_check(const peer_cfg *c, rc_peer_mode mode, const char *cmd) {
  const char *missing = !c->url       ? "--url (or SWSRS_URL)"
                        : !c->session ? "--session (or SWSRS_SESSION)"
                        : !c->token   ? "--token (or SWSRS_TOKEN)"
                                      : NULL;
  if (!missing && (mode == RC_PEER_TCP_LISTEN || mode == RC_PEER_UDP_LISTEN) && !c->listen)
    missing = "--listen";
  if (!missing && (mode == RC_PEER_TCP_DIAL || mode == RC_PEER_UDP_DIAL) && !c->target)
    missing = "--target";
  if (!missing && mode == RC_PEER_PUBSUB && !c->redis) missing = "--redis (or SWSRS_REDIS)";
  if (missing) {
    fprintf(stderr, "%s: %s is required\nUsage: %s\n", cmd, missing, g_peer_specs[mode].usage);
    return false;
  }
  char err[300];
  rc_redis_url ru;
  if (mode == RC_PEER_PUBSUB && rc_redis_url_parse(c->redis, &ru, err, sizeof err) != 0) {
    fprintf(stderr, "%s: --redis: %s\n", cmd, err);
    return false;
  }
  if (!peer_role_ok(c->role)) {
    fprintf(stderr, "%s: --role must be initiator or responder\n", cmd);
    return false;
  }
  if (c->ca && c->insecure) {
    fprintf(stderr, "%s: --ca and --insecure exclude each other\n", cmd);
    return false;
  }
  return true;
}

static void peer_free_cfg(const cm_cfg_spec *spec, peer_cfg *c) {
  if (c->token) OPENSSL_cleanse(c->token, strlen(c->token));
  cm_config_free(spec, c);
}

/* ---- running ---------------------------------------------------------------------- */

typedef struct peer_run_ctx {
  const char *cmd;
  rc_peer *peer;
  uv_signal_t sigint, sigterm;
  int signals;
  bool done;
  rc_peer_result res;
} peer_run_ctx;

static void peer_on_listening(void *ud, const char *addr) {
  peer_run_ctx *x = ud;
  fprintf(stderr, "%s: listening on %s\n", x->cmd, addr);
}

static void peer_on_done(void *ud, const rc_peer_result *res) {
  peer_run_ctx *x = ud;
  x->done = true;
  x->res = *res;
  uv_close((uv_handle_t *)&x->sigint, NULL);
  uv_close((uv_handle_t *)&x->sigterm, NULL);
}

static void peer_on_signal(uv_signal_t *h, int signum) {
  peer_run_ctx *x = h->data;
  if (++x->signals > 1) {
    fprintf(stderr, "%s: second signal, exiting now\n", x->cmd);
    exit(1);
  }
  cm_log(CM_LOG_INFO, "peer", "signal received: closing", CM_I("signal", signum));
  rc_peer_stop(x->peer);
}

/* The Redis password: the file (0600 or stricter, one line), else
 * $SWSRS_REDIS_PASSWORD, else none.  *pw is secret memory or NULL. */
static int peer_redis_password(const peer_cfg *c, const char *cmd, char **pw) {
  *pw = NULL;
  const char *env = getenv("SWSRS_REDIS_PASSWORD");
  if (!c->redis_password_file) {
    if (!env || !*env) return 0;
    size_t n = strlen(env) + 1;
    *pw = cm_secret_alloc(n);
    if (!*pw) return -1;
    memcpy(*pw, env, n);
    return 0;
  }
  struct stat st;
  if (stat(c->redis_password_file, &st) != 0 || (st.st_mode & 077)) {
    fprintf(stderr,
            "%s: --redis-password-file must exist and be readable by its owner only "
            "(chmod 600)\n",
            cmd);
    return -1;
  }
  char *text = NULL;
  size_t len = 0;
  if (cm_read_file(c->redis_password_file, 4096, &text, &len) != 0) {
    fprintf(stderr, "%s: cannot read --redis-password-file\n", cmd);
    return -1;
  }
  while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
    len--;
  *pw = cm_secret_alloc(len + 1);
  if (*pw) {
    memcpy(*pw, text, len);
    (*pw)[len] = 0;
  }
  OPENSSL_cleanse(text, len);
  free(text);
  return *pw ? 0 : -1;
}

static int peer_run(const peer_cfg *c, rc_peer_mode mode, const char *cmd) {
  char err[300];
  rc_url base, url;
  if (rc_url_parse(c->url, &base, err, sizeof err) != 0 ||
      rc_url_session(&base, c->session, c->role, &url, err, sizeof err) != 0) {
    fprintf(stderr, "%s: --url/--session: %s\n", cmd, err);
    return EXIT_USAGE;
  }
  cm_tls_ctx *tls = NULL;
  if (url.tls) {
    /* bulk: a tunnel reads no secret (the token only leaves, in the upgrade) */
    rc_tls_opts to = {.ca_file = c->ca, .insecure = c->insecure, .bulk = true};
    tls = rc_tls_new(&to, err, sizeof err);
    if (!tls) {
      fprintf(stderr, "%s: %s\n", cmd, err);
      return 1;
    }
  }
  char *redis_pw = NULL;
  if (mode == RC_PEER_PUBSUB && peer_redis_password(c, cmd, &redis_pw) != 0) {
    cm_tls_ctx_free(tls);
    return 1;
  }
  uv_loop_t *loop = uv_default_loop();
  peer_run_ctx x = {.cmd = cmd};
  rc_peer_opts o = {.mode = mode,
                    .url = &url,
                    .tls = tls,
                    .token = c->token,
                    .listen = c->listen,
                    .target = c->target,
                    .keep = c->keep,
                    .keep_open = c->keep_open,
                    .in_fd = 0,
                    .out_fd = 1,
                    .buffer = (size_t)c->buffer,
                    .udp_queue = (size_t)c->udp_queue,
                    .ws = {.connect_timeout_ms = (uint32_t)c->connect_timeout_ms,
                           .ping_interval_ms = (uint32_t)c->ping_interval_ms,
                           .ping_timeout_ms = (uint32_t)c->ping_timeout_ms,
                           .max_message = (uint64_t)c->max_message},
                    .redis = c->redis,
                    .session = c->session,
                    .redis_user = c->redis_user,
                    .redis_password = redis_pw,
                    .prefix = c->prefix,
                    .redis_timeout_ms = (uint32_t)c->redis_timeout_ms,
                    .ud = &x,
                    .on_listening = peer_on_listening};
  x.peer = rc_peer_start(loop, &o, peer_on_done, err, sizeof err);
  if (redis_pw) cm_secret_free(redis_pw); /* the peer keeps its own copy */
  if (!x.peer) {
    fprintf(stderr, "%s: %s\n", cmd, err);
    uv_run(loop, UV_RUN_DEFAULT);
    cm_tls_ctx_free(tls);
    return 1;
  }
  uv_signal_init(loop, &x.sigint);
  uv_signal_init(loop, &x.sigterm);
  x.sigint.data = x.sigterm.data = &x;
  uv_signal_start(&x.sigint, peer_on_signal, SIGINT);
  uv_signal_start(&x.sigterm, peer_on_signal, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_tty_reset_mode();
  uv_loop_close(loop);
  cm_tls_ctx_free(tls);
  if (x.res.status != 0) fprintf(stderr, "%s: %s\n", cmd, x.res.message);
  return x.res.status;
}

static int peer_main(rc_peer_mode mode, int argc, char **argv) {
  const cm_cfg_spec *spec = &g_peer_specs[mode];
  const char *cmd = g_peer_names[mode];
  peer_cfg c;
  memset(&c, 0, sizeof c);
  rc_init();
  int rc = cm_config_cli(spec, &c, argc, argv, cmd);
  peer_scrub_token_arg(argc, argv, cmd);
  if (rc >= 0) {
    peer_free_cfg(spec, &c);
    return rc;
  }
  cm_log_level lvl;
  if (cm_log_level_parse(c.log_level, &lvl) != 0) {
    fprintf(stderr, "%s: --log-level must be debug, info, warn or error\n", cmd);
    peer_free_cfg(spec, &c);
    return EXIT_USAGE;
  }
  cm_log_set_level(lvl);
  if (!peer_check(&c, mode, cmd)) {
    peer_free_cfg(spec, &c);
    return EXIT_USAGE;
  }
  signal(SIGPIPE, SIG_IGN);
  rc = peer_run(&c, mode, cmd);
  peer_free_cfg(spec, &c);
  return rc;
}

int relay_cmd_raw(int argc, char **argv) { return peer_main(RC_PEER_RAW, argc, argv); }
int relay_cmd_tcp_listen(int argc, char **argv) {
  return peer_main(RC_PEER_TCP_LISTEN, argc, argv);
}
int relay_cmd_tcp_dial(int argc, char **argv) { return peer_main(RC_PEER_TCP_DIAL, argc, argv); }
int relay_cmd_udp_listen(int argc, char **argv) {
  return peer_main(RC_PEER_UDP_LISTEN, argc, argv);
}
int relay_cmd_udp_dial(int argc, char **argv) { return peer_main(RC_PEER_UDP_DIAL, argc, argv); }
int relay_cmd_pubsub_dial(int argc, char **argv) { return peer_main(RC_PEER_PUBSUB, argc, argv); }
