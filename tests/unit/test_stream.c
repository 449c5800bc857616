/*
 * test_stream.c — cm_stream on a real libuv loop over 127.0.0.1 (port 0)
 * and over socketpairs: TLS handshakes and their failures, ALPN, client
 * certificates, handshake timeout, a peer that vanishes mid-record, a 64 MiB
 * hashed transfer in both directions under backpressure, graceful close
 * versus abort, and the write-queue cap.  Certificates are made at test
 * time with the openssl CLI in a mkdtemp directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/common.h"

/* ---- certificates ------------------------------------------------------------ */

static char g_dir[256];

static const char *cert_path(const char *name) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, 512, "%s/%s", g_dir, name);
  return b;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
  return rc;
}

#define NEWKEY "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"

static int make_ca(const char *name) {
  return sh("cd '%s' && openssl req -x509 " NEWKEY " -keyout %s.key -out %s.crt -subj '/CN=%s' "
            "-days 2 -addext basicConstraints=critical,CA:TRUE "
            "-addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null",
            g_dir, name, name, name);
}

static int make_leaf(const char *name, const char *ca, const char *cn, const char *ext) {
  if (sh("cd '%s' && printf '%s' > %s.ext", g_dir, ext, name) != 0) return -1;
  return sh("cd '%s' && openssl req -new " NEWKEY " -keyout %s.key -out %s.csr -subj '/CN=%s' "
            "2>/dev/null && openssl x509 -req -in %s.csr -CA %s.crt -CAkey %s.key "
            "-CAcreateserial -days 2 -extfile %s.ext -out %s.crt 2>/dev/null",
            g_dir, name, name, cn, name, ca, ca, name, name);
}

static int group_setup(void **state) {
  (void)state;
  signal(SIGPIPE, SIG_IGN);
  snprintf(g_dir, sizeof g_dir, "/tmp/test_stream.XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  if (make_ca("ca") || make_ca("ca2")) return -1;
  if (make_leaf("server", "ca", "127.0.0.1",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\n"))
    return -1;
  if (make_leaf("client", "ca", "test-client", "extendedKeyUsage=clientAuth\\n")) return -1;
  if (make_leaf("stranger", "ca2", "stranger", "extendedKeyUsage=clientAuth\\n")) return -1;
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  return sh("rm -rf '%s'", g_dir) == 0 ? 0 : -1;
}

/* SHA-256 of the DER form of a PEM certificate, computed by the openssl CLI. */
static void cli_fingerprint(const char *crt, uint8_t out[32]) {
  char cmd[1024], hex[80] = "";
  snprintf(cmd, sizeof cmd, "openssl x509 -in '%s' -outform DER | sha256sum", crt);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  assert_non_null(fgets(hex, sizeof hex, p));
  assert_int_equal(pclose(p), 0);
  for (int i = 0; i < 32; i++) {
    unsigned v;
    assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
}

/* ---- endpoints and fixture ------------------------------------------------------- */

typedef struct fixture fixture;

typedef struct ep {
  fixture *f;
  const char *name;
  cm_stream *s;
  int opened, closed, drains;
  int close_err;
  char close_msg[256];
  uint64_t open_ms, close_ms;
  bool echo; /* write back what is read */
  cm_buf rx; /* received bytes (small tests) */
  void (*on_open_hook)(struct ep *e);
  /* bulk transfer */
  bool bulk;
  uint64_t tx_target, tx_total, rx_target, rx_total, next_pause;
  EVP_MD_CTX *tx_hash, *rx_hash;
  size_t max_queued, maxq;
  int pauses;
  uv_timer_t resume_timer;
  /* pause right after open for this long (graceful close test) */
  uint32_t pause_on_open_ms;
  /* pause on the first delivery for this long (close_notify behind data) */
  uint32_t pause_on_read_ms;
} ep;

struct fixture {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_timer_t wake;
  struct sockaddr_in addr;
  int port;
  cm_tls_ctx *srv_tls, *cli_tls;
  cm_stream_opts srv_opts, cli_opts;
  ep server, client;
  int accepted;
};

#define RUN_UNTIL(f, cond, ms)                                                                     \
  do {                                                                                             \
    uint64_t dl_ = cm_now_mono_ms() + (ms);                                                        \
    uv_timer_start(&(f)->wake, on_wake, 5, 5);                                                     \
    while (!(cond) && cm_now_mono_ms() < dl_)                                                      \
      uv_run(&(f)->loop, UV_RUN_ONCE);                                                             \
    uv_timer_stop(&(f)->wake);                                                                     \
    if (!(cond)) fail_msg("timed out after %d ms waiting for: %s", (int)(ms), #cond);              \
  } while (0)

static void on_wake(uv_timer_t *t) { (void)t; }

static void ep_close_if_done(ep *e) {
  if (e->s && e->tx_total == e->tx_target && e->rx_total == e->rx_target) cm_stream_close(e->s);
}

static void pump(ep *e) {
  static uint8_t chunk[65536];
  while (e->s && !cm_stream_closing(e->s) && e->tx_total < e->tx_target &&
         !cm_stream_above_high(e->s)) {
    size_t n = (size_t)CM_MIN(sizeof chunk, e->tx_target - e->tx_total);
    assert_int_equal(RAND_bytes(chunk, (int)n), 1);
    EVP_DigestUpdate(e->tx_hash, chunk, n);
    assert_int_equal(cm_stream_write(e->s, chunk, n), 0);
    e->tx_total += n;
    e->max_queued = CM_MAX(e->max_queued, cm_stream_write_queued(e->s));
  }
  ep_close_if_done(e);
}

static void on_resume_timer(uv_timer_t *t) {
  ep *e = t->data;
  if (e->s && !cm_stream_closing(e->s)) cm_stream_resume(e->s);
}

static void cb_open(cm_stream *s) {
  ep *e = cm_stream_get_data(s);
  e->s = s; /* a plain accept opens before cm_stream_accept returns */
  e->opened++;
  e->open_ms = cm_now_mono_ms();
  if (e->pause_on_open_ms) {
    cm_stream_pause(s);
    uv_timer_start(&e->resume_timer, on_resume_timer, e->pause_on_open_ms, 0);
  }
  if (e->on_open_hook) e->on_open_hook(e);
  if (e->bulk) pump(e);
}

static void cb_read(cm_stream *s, uint8_t *data, size_t len) {
  ep *e = cm_stream_get_data(s);
  assert_false(cm_stream_paused(s)); /* no delivery while paused */
  if (e->bulk) {
    EVP_DigestUpdate(e->rx_hash, data, len);
    e->rx_total += len;
    assert_true(e->rx_total <= e->rx_target);
    if (e->rx_total >= e->next_pause && e->rx_total < e->rx_target) {
      /* Stop reading for a while: the peer's queue must back up. */
      e->next_pause += 4u << 20;
      e->pauses++;
      cm_stream_pause(s);
      uv_timer_start(&e->resume_timer, on_resume_timer, 40, 0);
    }
    ep_close_if_done(e);
    return;
  }
  if (cm_buf_size(&e->rx) + len <= (64u << 20)) cm_buf_append(&e->rx, data, len);
  if (e->echo) cm_stream_write(s, data, len);
  if (e->pause_on_read_ms) {
    cm_stream_pause(s);
    uv_timer_start(&e->resume_timer, on_resume_timer, e->pause_on_read_ms, 0);
    e->pause_on_read_ms = 0;
  }
}

static void cb_drain(cm_stream *s) {
  ep *e = cm_stream_get_data(s);
  e->drains++;
  assert_false(cm_stream_above_high(s));
  if (e->bulk) pump(e);
}

static void cb_close(cm_stream *s, int err, const char *msg) {
  ep *e = cm_stream_get_data(s);
  e->closed++;
  e->close_err = err;
  e->close_ms = cm_now_mono_ms();
  snprintf(e->close_msg, sizeof e->close_msg, "%s", msg ? msg : "");
  e->s = NULL;
}

static const cm_stream_cbs g_cbs = {
    .on_open = cb_open, .on_read = cb_read, .on_drain = cb_drain, .on_close = cb_close};

static void on_connection(uv_stream_t *server, int status) {
  fixture *f = server->data;
  assert_int_equal(status, 0);
  int err = 0;
  f->accepted++;
  cm_stream *s = cm_stream_accept(server, &f->srv_opts, &g_cbs, &f->server, &err);
  assert_int_equal(err, 0);
  assert_non_null(s);
  assert_int_equal(f->accepted, 1); /* one connection per test */
  f->server.s = f->server.closed ? NULL : s;
}

static void ep_init(fixture *f, ep *e, const char *name) {
  memset(e, 0, sizeof *e);
  e->f = f;
  e->name = name;
  cm_buf_init(&e->rx, 0);
  uv_timer_init(&f->loop, &e->resume_timer);
  e->resume_timer.data = e;
}

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  if (uv_loop_init(&f->loop) != 0) return -1;
  uv_timer_init(&f->loop, &f->wake);
  ep_init(f, &f->server, "server");
  ep_init(f, &f->client, "client");
  char err[256];
  if (cm_tcp_listen(&f->loop, &f->listener, "127.0.0.1:0", 16, on_connection, err, sizeof err))
    return -1;
  f->listener.data = f;
  f->port = cm_tcp_bound_port(&f->listener);
  if (f->port <= 0) return -1;
  uv_ip4_addr("127.0.0.1", f->port, &f->addr);
  *state = f;
  return 0;
}

static void close_cb_noop(uv_handle_t *h) { (void)h; }

static int teardown(void **state) {
  fixture *f = *state;
  /* A failed test may leave streams open: end them, then drain the loop. */
  if (f->server.s) cm_stream_abort(f->server.s);
  if (f->client.s) cm_stream_abort(f->client.s);
  uint64_t dl = cm_now_mono_ms() + 10000;
  uv_timer_start(&f->wake, on_wake, 5, 5);
  while ((f->server.s || f->client.s) && cm_now_mono_ms() < dl)
    uv_run(&f->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&f->wake, close_cb_noop);
  uv_close((uv_handle_t *)&f->listener, close_cb_noop);
  uv_close((uv_handle_t *)&f->server.resume_timer, close_cb_noop);
  uv_close((uv_handle_t *)&f->client.resume_timer, close_cb_noop);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&f->loop); /* UV_EBUSY: a handle leaked */
  cm_tls_ctx_free(f->srv_tls);
  cm_tls_ctx_free(f->cli_tls);
  for (int i = 0; i < 2; i++) {
    ep *e = i ? &f->client : &f->server;
    cm_buf_free(&e->rx);
    EVP_MD_CTX_free(e->tx_hash);
    EVP_MD_CTX_free(e->rx_hash);
  }
  free(f);
  return rc == 0 ? 0 : -1;
}

/* ---- TLS contexts ------------------------------------------------------------------ */

static cm_tls_ctx *server_ctx(const char *alpn, const char *client_ca, bool require) {
  cm_tls_config c;
  cm_tls_config_init(&c);
  c.cert_file = cert_path("server.crt");
  c.key_file = cert_path("server.key");
  c.alpn = alpn;
  c.verify_peer = client_ca != NULL;
  c.ca_file = client_ca;
  c.require_peer_cert = require;
  char err[256];
  cm_tls_ctx *t = cm_tls_ctx_new_server(&c, err, sizeof err);
  if (!t) fail_msg("server ctx: %s", err);
  return t;
}

static cm_tls_ctx *client_ctx(const char *alpn, const char *ca, const char *cert) {
  cm_tls_config c;
  cm_tls_config_init(&c);
  c.ca_file = ca;
  c.alpn = alpn;
  char crt[512], key[512];
  if (cert) {
    snprintf(crt, sizeof crt, "%s/%s.crt", g_dir, cert);
    snprintf(key, sizeof key, "%s/%s.key", g_dir, cert);
    c.cert_file = crt;
    c.key_file = key;
  }
  char err[256];
  cm_tls_ctx *t = cm_tls_ctx_new_client(&c, err, sizeof err);
  if (!t) fail_msg("client ctx: %s", err);
  return t;
}

static void connect_client(fixture *f) {
  int err = 0;
  f->client.s = cm_stream_connect(&f->loop, (const struct sockaddr *)&f->addr, &f->cli_opts, &g_cbs,
                                  &f->client, &err);
  assert_int_equal(err, 0);
  assert_non_null(f->client.s);
}

/* Client sends msg, the server echoes it, the client closes; both sides
 * must see an orderly close. */
static void echo_round_trip(fixture *f, const char *msg) {
  f->server.echo = true;
  assert_int_equal(cm_stream_write(f->client.s, msg, strlen(msg)), 0);
  RUN_UNTIL(f, cm_buf_size(&f->client.rx) >= strlen(msg), 10000);
  assert_int_equal(cm_buf_size(&f->client.rx), strlen(msg));
  assert_memory_equal(cm_buf_head(&f->client.rx), msg, strlen(msg));
  cm_stream_close(f->client.s);
  cm_stream_close(f->client.s); /* idempotent */
  RUN_UNTIL(f, f->client.closed && f->server.closed, 10000);
  assert_int_equal(f->client.closed, 1);
  assert_int_equal(f->server.closed, 1);
  assert_int_equal(f->client.close_err, 0);
  assert_int_equal(f->server.close_err, 0);
}

/* ---- handshake and ALPN ---------------------------------------------------------------- */

static void alpn_case(fixture *f, const char *srv_alpn, const char *cli_alpn, const char *want) {
  f->srv_tls = server_ctx(srv_alpn, NULL, false);
  f->cli_tls = client_ctx(cli_alpn, cert_path("ca.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  f->cli_opts.sni = "localhost";
  connect_client(f);
  /* Written before the handshake finishes: queued, then sent. */
  assert_int_equal(cm_stream_write(f->client.s, "early ", 6), 0);
  RUN_UNTIL(f, f->client.opened && f->server.opened && cm_buf_size(&f->server.rx) >= 6, 10000);
  assert_memory_equal(cm_buf_head(&f->server.rx), "early ", 6);
  cm_buf_reset(&f->server.rx);
  assert_string_equal(cm_stream_alpn(f->client.s), want);
  assert_string_equal(cm_stream_alpn(f->server.s), want);
  assert_true(cm_stream_is_tls(f->client.s));
  assert_string_equal(cm_stream_tls_version(f->client.s), "TLSv1.3");
  assert_string_equal(cm_stream_tls_version(f->server.s), "TLSv1.3");
  assert_string_equal(cm_stream_sni(f->server.s), "localhost");
  assert_memory_equal(cm_stream_peer_addr(f->server.s), "127.0.0.1:", 10);
  /* No client certificate was asked for. */
  uint8_t fp[32];
  assert_false(cm_stream_peer_fingerprint(f->server.s, fp));
  assert_null(cm_stream_peer_cert(f->server.s));
  /* The client verified the server: its fingerprint is the server cert's. */
  uint8_t want_fp[32];
  cli_fingerprint(cert_path("server.crt"), want_fp);
  assert_true(cm_stream_peer_fingerprint(f->client.s, fp));
  assert_memory_equal(fp, want_fp, 32);
  echo_round_trip(f, "ping over tls");
}

static void test_tls_alpn_http11(void **state) {
  alpn_case(*state, "h2,http/1.1", "http/1.1", "http/1.1");
}

static void test_tls_alpn_h2(void **state) { alpn_case(*state, "h2,http/1.1", "h2", "h2"); }

static void test_tls_alpn_server_preference(void **state) {
  alpn_case(*state, "h2,http/1.1", "http/1.1,h2", "h2");
}

static void test_tls_alpn_none(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx(NULL, NULL, false);
  f->cli_tls = client_ctx(NULL, cert_path("ca.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  f->cli_opts.sni = "127.0.0.1"; /* IP identity is verified too */
  connect_client(f);
  RUN_UNTIL(f, f->client.opened && f->server.opened, 10000);
  assert_string_equal(cm_stream_alpn(f->client.s), "");
  assert_string_equal(cm_stream_alpn(f->server.s), "");
  echo_round_trip(f, "no alpn");
}

static void expect_client_handshake_failure(fixture *f, const char *msg_part) {
  RUN_UNTIL(f, f->client.closed && f->server.closed, 10000);
  assert_int_equal(f->client.opened, 0);
  assert_int_equal(f->client.closed, 1);
  assert_int_equal(f->client.close_err, CM_EHANDSHAKE);
  if (msg_part && !strstr(f->client.close_msg, msg_part))
    fail_msg("client close message \"%s\" lacks \"%s\"", f->client.close_msg, msg_part);
  assert_int_equal(f->server.opened, 0);
  assert_int_equal(f->server.closed, 1);
  assert_int_not_equal(f->server.close_err, 0);
}

static void test_tls_unknown_ca(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->cli_tls = client_ctx("http/1.1", cert_path("ca2.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  f->cli_opts.sni = "127.0.0.1";
  connect_client(f);
  expect_client_handshake_failure(f, "certificate verif");
  assert_non_null(strstr(f->client.close_msg, "certificate verify failed"));
}

static void test_tls_wrong_name(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  f->cli_opts.sni = "relay.example.com"; /* not in the certificate */
  connect_client(f);
  expect_client_handshake_failure(f, "certificate verify failed");
}

static void test_tls_alpn_mismatch(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->cli_tls = client_ctx("h2", cert_path("ca.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  connect_client(f);
  RUN_UNTIL(f, f->client.closed && f->server.closed, 10000);
  assert_int_equal(f->server.opened, 0);
  assert_int_equal(f->server.close_err, CM_EHANDSHAKE);
  assert_int_equal(f->client.opened, 0);
  assert_int_equal(f->client.close_err, CM_EHANDSHAKE);
}

static void test_tls_client_cert_missing(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", cert_path("ca.crt"), true);
  f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  connect_client(f);
  RUN_UNTIL(f, f->client.closed && f->server.closed, 10000);
  assert_int_equal(f->server.opened, 0);
  assert_int_equal(f->server.close_err, CM_EHANDSHAKE);
  /* In TLS 1.3 the client may think it is done before the server's alert
   * arrives; either way it ends with an error. */
  assert_int_not_equal(f->client.close_err, 0);
}

static void test_tls_client_cert_untrusted(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", cert_path("ca.crt"), false);
  f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), "stranger");
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  connect_client(f);
  RUN_UNTIL(f, f->client.closed && f->server.closed, 10000);
  assert_int_equal(f->server.opened, 0);
  assert_int_equal(f->server.close_err, CM_EHANDSHAKE);
  assert_non_null(strstr(f->server.close_msg, "certificate verify failed"));
  assert_int_not_equal(f->client.close_err, 0);
}

static void test_tls_client_cert_fingerprint(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", cert_path("ca.crt"), true);
  f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), "client");
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  connect_client(f);
  RUN_UNTIL(f, f->client.opened && f->server.opened, 10000);
  uint8_t fp[32], want[32];
  cli_fingerprint(cert_path("client.crt"), want);
  assert_true(cm_stream_peer_fingerprint(f->server.s, fp));
  assert_memory_equal(fp, want, 32);
  assert_non_null(cm_stream_peer_cert(f->server.s));
  echo_round_trip(f, "mutual");
}

static void test_tls_client_cert_optional(void **state) {
  fixture *f = *state;
  /* Requested but not required: a client without one still gets in. */
  f->srv_tls = server_ctx("http/1.1", cert_path("ca.crt"), false);
  f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  connect_client(f);
  RUN_UNTIL(f, f->client.opened && f->server.opened, 10000);
  uint8_t fp[32];
  assert_false(cm_stream_peer_fingerprint(f->server.s, fp));
  echo_round_trip(f, "optional");
}

/* ---- raw peers ---------------------------------------------------------------------- */

/* A blocking client socket to 127.0.0.1:port with a 10 s receive timeout;
 * -1 when it cannot connect (safe off the test's thread: no assertion). */
static int hand_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
  close(fd);
  return -1;
}

static int raw_connect(int port) {
  int fd = hand_connect(port);
  assert_true(fd >= 0);
  return fd;
}

static void test_tls_handshake_timeout(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->srv_opts.tls = f->srv_tls;
  f->srv_opts.handshake_timeout_ms = 300;
  uint64_t t0 = cm_now_mono_ms();
  int fd = raw_connect(f->port); /* and send nothing */
  RUN_UNTIL(f, f->server.closed, 5000);
  uint64_t took = f->server.close_ms - t0;
  assert_int_equal(f->server.close_err, CM_ETIMEOUT);
  assert_int_equal(f->server.opened, 0);
  assert_true(took >= 280);
  assert_true(took < 1500);
  /* The raw peer sees the connection end. */
  char b[16];
  ssize_t n = recv(fd, b, sizeof b, 0);
  assert_true(n <= 0);
  close(fd);
}

/* A TLS client driven by hand over a blocking socket (memory BIOs), so it
 * can stop in the middle of a record. */
typedef struct vanisher {
  int port;
  bool after_handshake; /* else: half a ClientHello */
  bool rst;             /* RST instead of FIN */
  int result;           /* 0 ok, else the step that failed */
} vanisher;

static int flush_wbio(BIO *wb, int fd, size_t limit) {
  char buf[16384];
  size_t sent = 0;
  int n;
  while (sent < limit && (n = BIO_read(wb, buf, (int)CM_MIN(sizeof buf, limit - sent))) > 0) {
    if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n) return -1;
    sent += (size_t)n;
  }
  return 0;
}

/* Runs a client handshake over fd through the memory BIOs; 0 when done. */
static int hand_handshake(SSL *ssl, BIO *rb, BIO *wb, int fd) {
  for (;;) {
    int r = SSL_do_handshake(ssl);
    if (flush_wbio(wb, fd, SIZE_MAX) != 0) return -1;
    if (r == 1) return 0;
    if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ) return -1;
    char buf[16384];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return -1;
    BIO_write(rb, buf, (int)n);
  }
}

/* A client SSL over memory BIOs: the test moves the bytes by hand. */
typedef struct hand {
  SSL_CTX *ctx;
  SSL *ssl;
  BIO *rb, *wb;
} hand;

static hand hand_new(void) {
  hand h = {.ctx = SSL_CTX_new(TLS_client_method())};
  h.ssl = SSL_new(h.ctx);
  h.rb = BIO_new(BIO_s_mem());
  h.wb = BIO_new(BIO_s_mem());
  SSL_set_bio(h.ssl, h.rb, h.wb);
  SSL_set_connect_state(h.ssl);
  return h;
}

static void hand_free(hand *h) {
  SSL_free(h->ssl); /* and its BIOs */
  SSL_CTX_free(h->ctx);
}

/* A client connected and through its handshake: the fd, or -1.  *step
 * names how far it got (1: connecting, 2: the handshake, 3: done). */
static int hand_open(int port, hand *h, int *step) {
  *step = 1;
  int fd = hand_connect(port);
  if (fd < 0) return -1;
  *h = hand_new();
  *step = 2;
  if (hand_handshake(h->ssl, h->rb, h->wb, fd) != 0) {
    hand_free(h);
    close(fd);
    return -1;
  }
  *step = 3;
  return fd;
}

static void *vanisher_main(void *arg) {
  vanisher *v = arg;
  v->result = 1;
  int fd = hand_connect(v->port);
  if (fd < 0) return NULL;
  hand h = hand_new();
  SSL *ssl = h.ssl;
  BIO *rb = h.rb, *wb = h.wb;
  v->result = 2;
  if (!v->after_handshake) {
    SSL_do_handshake(ssl);
    size_t pending = BIO_ctrl_pending(wb);
    if (pending < 100 || flush_wbio(wb, fd, pending / 2) != 0) goto out;
  } else {
    if (hand_handshake(ssl, rb, wb, fd) != 0) goto out;
    v->result = 3;
    if (SSL_write(ssl, "hello", 5) != 5 || flush_wbio(wb, fd, SIZE_MAX) != 0) goto out;
    char big[1000];
    memset(big, 'z', sizeof big);
    if (SSL_write(ssl, big, sizeof big) != (int)sizeof big) goto out;
    size_t pending = BIO_ctrl_pending(wb);
    if (flush_wbio(wb, fd, pending / 2) != 0) goto out;
  }
  usleep(100 * 1000); /* let the server read the fragment */
  v->result = 0;
out:
  hand_free(&h);
  if (v->rst) {
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  close(fd);
  return NULL;
}

static void vanish_case(fixture *f, bool after_handshake, bool rst) {
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->srv_opts.tls = f->srv_tls;
  vanisher v = {.port = f->port, .after_handshake = after_handshake, .rst = rst};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, vanisher_main, &v), 0);
  uint64_t dl = cm_now_mono_ms() + 10000;
  uv_timer_start(&f->wake, on_wake, 5, 5);
  while (!f->server.closed && cm_now_mono_ms() < dl)
    uv_run(&f->loop, UV_RUN_ONCE);
  uv_timer_stop(&f->wake);
  pthread_join(th, NULL);
  assert_int_equal(v.result, 0);
  assert_int_equal(f->server.closed, 1);
  assert_int_not_equal(f->server.close_err, 0);
  if (after_handshake) {
    assert_int_equal(f->server.opened, 1);
    assert_int_equal(cm_buf_size(&f->server.rx), 5); /* the whole record, not the half */
    assert_memory_equal(cm_buf_head(&f->server.rx), "hello", 5);
  } else {
    assert_int_equal(f->server.opened, 0);
  }
}

/* A client that sends data and its close_notify in one segment, then
 * waits for the server's close_notify without sending FIN (as asyncio and
 * many TLS stacks close). */
typedef struct notifier {
  int port;
  int result;     /* 0: the server's close_notify (or FIN) came back */
  double wait_ms; /* from our close_notify to the server's answer */
} notifier;

static void *notifier_main(void *arg) {
  notifier *nt = arg;
  hand h;
  int fd = hand_open(nt->port, &h, &nt->result);
  if (fd < 0) return NULL;
  SSL *ssl = h.ssl;
  BIO *rb = h.rb, *wb = h.wb;
  if (SSL_write(ssl, "hello", 5) != 5) goto out;
  SSL_shutdown(ssl); /* close_notify, queued behind the data */
  if (flush_wbio(wb, fd, SIZE_MAX) != 0) goto out;
  uint64_t t0 = cm_now_mono_ms();
  char buf[4096];
  nt->result = 4;
  for (;;) { /* session tickets first, then the server's close_notify or FIN */
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) goto out; /* 10 s timeout: no answer */
    if (n == 0) break;
    BIO_write(rb, buf, (int)n);
    int r = SSL_read(ssl, buf, sizeof buf);
    if (r <= 0 && SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN) break;
  }
  nt->wait_ms = (double)(cm_now_mono_ms() - t0);
  nt->result = 0;
out:
  hand_free(&h);
  close(fd);
  return NULL;
}

/* Runs the loop for a hand-driven client thread until the server's stream
 * has closed, then waits for the thread. */
static void serve_hand_client(fixture *f, void *(*client)(void *), void *arg) {
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, client, arg), 0);
  RUN_UNTIL(f, f->server.closed, 3000);
  pthread_join(th, NULL);
}

/* The owner pauses on the data in front of a close_notify that arrived
 * with it: the close must still happen at resume, not wait for the peer
 * to give up (OpenSSL has already consumed the alert). */
static void test_close_notify_behind_data_while_paused(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->srv_opts.tls = f->srv_tls;
  f->server.pause_on_read_ms = 200;
  notifier nt = {.port = f->port};
  serve_hand_client(f, notifier_main, &nt);
  assert_int_equal(nt.result, 0);
  assert_int_equal(f->server.close_err, 0);
  assert_string_equal(f->server.close_msg, "peer sent close_notify");
  assert_int_equal(cm_buf_size(&f->server.rx), 5);
  assert_memory_equal(cm_buf_head(&f->server.rx), "hello", 5);
  assert_true(nt.wait_ms >= 150 && nt.wait_ms < 2000); /* the pause, then at once */
}

/* A client whose second record is forged (a byte of its tag flipped), sent
 * in one segment behind a good one. */
typedef struct forger {
  int port;
  int result; /* 0: both records went out */
} forger;

static void *forger_main(void *arg) {
  forger *fg = arg;
  hand h;
  int fd = hand_open(fg->port, &h, &fg->result);
  if (fd < 0) return NULL;
  if (SSL_write(h.ssl, "hello", 5) != 5 || SSL_write(h.ssl, "world", 5) != 5) goto out;
  char buf[256];
  int n = BIO_read(h.wb, buf, sizeof buf);
  if (n < 40) goto out; /* two records of 5 + 1 bytes, a 16-byte tag each */
  buf[n - 1] ^= 0x01;   /* the second record's tag */
  if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n) goto out;
  usleep(300 * 1000); /* let the server read both and answer */
  fg->result = 0;
out:
  hand_free(&h);
  close(fd);
  return NULL;
}

/* The owner writes in on_read (an echo) on the data in front of a forged
 * record OpenSSL has already rejected: the stream must close with the
 * TLS error that ended the reads, not with the write that it refused. */
static void test_tls_error_behind_data_while_writing(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->srv_opts.tls = f->srv_tls;
  f->server.echo = true;
  forger fg = {.port = f->port};
  serve_hand_client(f, forger_main, &fg);
  assert_int_equal(fg.result, 0);
  assert_int_equal(cm_buf_size(&f->server.rx), 5);
  assert_memory_equal(cm_buf_head(&f->server.rx), "hello", 5);
  assert_int_equal(f->server.close_err, CM_ETLS);
  assert_non_null(strstr(f->server.close_msg, "TLS error"));
  assert_non_null(strstr(f->server.close_msg, "bad record mac"));
}

static void test_vanish_mid_record_fin(void **state) { vanish_case(*state, true, false); }
static void test_vanish_mid_record_rst(void **state) { vanish_case(*state, true, true); }
static void test_vanish_mid_client_hello(void **state) { vanish_case(*state, false, false); }

/* ---- bulk transfer ------------------------------------------------------------------- */

static void bulk_init(ep *e, uint64_t total, size_t maxq) {
  e->bulk = true;
  e->tx_target = e->rx_target = total;
  e->next_pause = 4u << 20;
  e->maxq = maxq;
  e->tx_hash = EVP_MD_CTX_new();
  e->rx_hash = EVP_MD_CTX_new();
  EVP_DigestInit_ex(e->tx_hash, EVP_sha256(), NULL);
  EVP_DigestInit_ex(e->rx_hash, EVP_sha256(), NULL);
}

static void digest(EVP_MD_CTX *c, uint8_t out[32]) {
  unsigned n = 32;
  EVP_DigestFinal_ex(c, out, &n);
}

static void bulk_case(fixture *f, bool tls, uint64_t total) {
  const size_t high = 256 * 1024, low = 64 * 1024, maxq = 1024 * 1024;
  if (tls) {
    f->srv_tls = server_ctx("http/1.1", NULL, false);
    f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), NULL);
  }
  cm_stream_opts o = {
      .tls = f->srv_tls, .high_watermark = high, .low_watermark = low, .max_write_queue = maxq};
  f->srv_opts = o;
  o.tls = f->cli_tls;
  f->cli_opts = o;
  bulk_init(&f->server, total, maxq);
  bulk_init(&f->client, total, maxq);
  connect_client(f);
  RUN_UNTIL(f, f->client.closed && f->server.closed, 240000);
  for (int i = 0; i < 2; i++) {
    ep *e = i ? &f->client : &f->server;
    ep *peer = i ? &f->server : &f->client;
    assert_int_equal(e->close_err, 0);
    assert_int_equal(e->tx_total, total);
    assert_int_equal(e->rx_total, total);
    uint8_t sent[32], got[32];
    digest(peer->tx_hash, sent);
    digest(e->rx_hash, got);
    assert_memory_equal(sent, got, 32);
    assert_true(e->pauses >= 1);
    assert_true(e->drains >= 1); /* the peer's pauses backed our queue up */
    assert_true(e->max_queued <= maxq);
  }
}

static void test_bulk_64mib_tls(void **state) { bulk_case(*state, true, 64u << 20); }
static void test_bulk_16mib_plain(void **state) { bulk_case(*state, false, 16u << 20); }

/* ---- close and abort ------------------------------------------------------------------ */

static uint8_t g_pattern[16u << 20];

static void write_pattern_then_close(ep *e) {
  for (size_t o = 0; o < sizeof g_pattern; o += 65536)
    assert_int_equal(cm_stream_write(e->s, g_pattern + o, 65536), 0);
  /* The reader is paused: bytes are still queued when we close. */
  assert_true(cm_stream_write_queued(e->s) > 0);
  cm_stream_close(e->s);
  assert_true(cm_stream_closing(e->s));
  assert_int_equal(cm_stream_write(e->s, "late", 4), CM_ECLOSED);
  cm_stream_close(e->s); /* idempotent */
}

static void graceful_case(fixture *f, bool tls) {
  for (size_t i = 0; i < sizeof g_pattern; i++)
    g_pattern[i] = (uint8_t)(i * 31 + (i >> 13));
  if (tls) {
    f->srv_tls = server_ctx("http/1.1", NULL, false);
    f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), NULL);
    f->srv_opts.tls = f->srv_tls;
    f->cli_opts.tls = f->cli_tls;
  }
  f->srv_opts.max_write_queue = 2 * sizeof g_pattern;
  f->server.on_open_hook = write_pattern_then_close;
  f->client.pause_on_open_ms = 300;
  connect_client(f);
  RUN_UNTIL(f, f->client.closed && f->server.closed, 30000);
  assert_int_equal(cm_buf_size(&f->client.rx), sizeof g_pattern);
  assert_memory_equal(cm_buf_head(&f->client.rx), g_pattern, sizeof g_pattern);
  assert_int_equal(f->client.close_err, 0);
  assert_int_equal(f->server.close_err, 0);
  assert_int_equal(f->client.closed, 1);
  assert_int_equal(f->server.closed, 1);
}

static void test_graceful_close_tls(void **state) { graceful_case(*state, true); }
static void test_graceful_close_plain(void **state) { graceful_case(*state, false); }

static void write_then_abort(ep *e) {
  static uint8_t junk[65536];
  assert_int_equal(cm_stream_write(e->s, junk, sizeof junk), 0);
  cm_stream_abort(e->s);
  assert_true(cm_stream_closing(e->s));
}

static void abort_case(fixture *f, bool tls) {
  if (tls) {
    f->srv_tls = server_ctx("http/1.1", NULL, false);
    f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), NULL);
    f->srv_opts.tls = f->srv_tls;
    f->cli_opts.tls = f->cli_tls;
  }
  f->server.on_open_hook = write_then_abort;
  f->client.pause_on_open_ms = 100; /* the reset finds unread data */
  connect_client(f);
  RUN_UNTIL(f, f->client.closed && f->server.closed, 10000);
  assert_int_equal(f->server.closed, 1);
  assert_int_equal(f->client.closed, 1);
  assert_int_not_equal(f->client.close_err, 0);
  assert_int_not_equal(f->client.close_err, CM_ETIMEOUT);
}

static void test_abort_tls(void **state) { abort_case(*state, true); }
static void test_abort_plain(void **state) { abort_case(*state, false); }

static void flood(ep *e) {
  static uint8_t junk[65536];
  int rc = 0;
  size_t max_seen = 0;
  while ((rc = cm_stream_write(e->s, junk, sizeof junk)) == 0)
    max_seen = CM_MAX(max_seen, cm_stream_write_queued(e->s));
  assert_int_equal(rc, CM_EQUEUE);
  assert_true(max_seen <= 512 * 1024);
  assert_true(cm_stream_closing(e->s)); /* closed by the failed write */
}

static void test_write_queue_cap(void **state) {
  fixture *f = *state;
  f->srv_opts.max_write_queue = 512 * 1024;
  f->server.on_open_hook = flood;
  f->client.pause_on_open_ms = 60000; /* never reads */
  connect_client(f);
  RUN_UNTIL(f, f->server.closed, 10000);
  assert_int_equal(f->server.close_err, CM_EQUEUE);
  cm_stream_resume(f->client.s); /* a paused reader cannot notice the reset */
  RUN_UNTIL(f, f->client.closed, 10000);
  if (f->client.close_err == 0)
    fail_msg("client closed cleanly: %s (%zu bytes read)", f->client.close_msg,
             cm_buf_size(&f->client.rx));
}

static void test_write_queue_cap_before_open(void **state) {
  fixture *f = *state;
  f->srv_tls = server_ctx("http/1.1", NULL, false);
  f->cli_tls = client_ctx("http/1.1", cert_path("ca.crt"), NULL);
  f->srv_opts.tls = f->srv_tls;
  f->cli_opts.tls = f->cli_tls;
  f->cli_opts.max_write_queue = 64 * 1024;
  connect_client(f);
  /* Before the handshake, writes wait in the stream, under the same cap. */
  static uint8_t junk[40 * 1024];
  assert_int_equal(cm_stream_write(f->client.s, junk, sizeof junk), 0);
  assert_int_equal(cm_stream_write_queued(f->client.s), sizeof junk);
  assert_int_equal(cm_stream_write(f->client.s, junk, sizeof junk), CM_EQUEUE);
  assert_true(cm_stream_closing(f->client.s));
  RUN_UNTIL(f, f->client.closed, 10000);
  assert_int_equal(f->client.close_err, CM_EQUEUE);
  assert_int_equal(f->client.opened, 0);
}

/* ---- plain and socketpair ------------------------------------------------------------- */

static void test_plain_round_trip(void **state) {
  fixture *f = *state;
  connect_client(f);
  RUN_UNTIL(f, f->client.opened && f->server.opened, 10000);
  assert_false(cm_stream_is_tls(f->client.s));
  assert_null(cm_stream_tls_version(f->client.s));
  assert_string_equal(cm_stream_alpn(f->client.s), "");
  assert_null(cm_stream_sni(f->server.s));
  uint8_t fp[32];
  assert_false(cm_stream_peer_fingerprint(f->server.s, fp));
  char want[64];
  snprintf(want, sizeof want, "127.0.0.1:%d", f->port);
  assert_string_equal(cm_stream_peer_addr(f->client.s), want);
  assert_ptr_equal(cm_stream_loop(f->client.s), &f->loop);
  assert_ptr_equal(cm_stream_get_data(f->client.s), &f->client);
  echo_round_trip(f, "plain ping");
}

static void socketpair_case(fixture *f, bool tls) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  if (tls) {
    f->srv_tls = server_ctx("h2", NULL, false);
    f->cli_tls = client_ctx("h2", cert_path("ca.crt"), NULL);
    f->srv_opts.tls = f->srv_tls;
    f->cli_opts.tls = f->cli_tls;
  }
  int err = 0;
  f->server.s = cm_stream_open_fd(&f->loop, sv[0], true, &f->srv_opts, &g_cbs, &f->server, &err);
  assert_int_equal(err, 0);
  f->client.s = cm_stream_open_fd(&f->loop, sv[1], false, &f->cli_opts, &g_cbs, &f->client, &err);
  assert_int_equal(err, 0);
  RUN_UNTIL(f, f->client.opened && f->server.opened, 10000);
  assert_int_equal(cm_stream_is_tls(f->client.s), tls);
  assert_string_equal(cm_stream_alpn(f->client.s), tls ? "h2" : "");
  assert_string_equal(cm_stream_peer_addr(f->server.s), "local");
  echo_round_trip(f, tls ? "socketpair tls" : "socketpair plain");
}

static void test_socketpair_plain(void **state) { socketpair_case(*state, false); }
static void test_socketpair_tls(void **state) { socketpair_case(*state, true); }

static void test_socketpair_bulk_tls(void **state) {
  fixture *f = *state;
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  f->srv_tls = server_ctx(NULL, NULL, false);
  f->cli_tls = client_ctx(NULL, cert_path("ca.crt"), NULL);
  cm_stream_opts o = {.tls = f->srv_tls, .high_watermark = 65536, .max_write_queue = 1 << 20};
  f->srv_opts = o;
  o.tls = f->cli_tls;
  f->cli_opts = o;
  bulk_init(&f->server, 8u << 20, 1 << 20);
  bulk_init(&f->client, 8u << 20, 1 << 20);
  int err = 0;
  f->server.s = cm_stream_open_fd(&f->loop, sv[0], true, &f->srv_opts, &g_cbs, &f->server, &err);
  f->client.s = cm_stream_open_fd(&f->loop, sv[1], false, &f->cli_opts, &g_cbs, &f->client, &err);
  RUN_UNTIL(f, f->client.closed && f->server.closed, 120000);
  uint8_t a[32], b[32];
  digest(f->client.tx_hash, a);
  digest(f->server.rx_hash, b);
  assert_memory_equal(a, b, 32);
  digest(f->server.tx_hash, a);
  digest(f->client.rx_hash, b);
  assert_memory_equal(a, b, 32);
  assert_int_equal(f->client.close_err, 0);
  assert_int_equal(f->server.close_err, 0);
}

static void test_connect_refused(void **state) {
  fixture *f = *state;
  /* Close the listener's port: nobody answers there any more. */
  uv_close((uv_handle_t *)&f->listener, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(cm_tcp_listen(&f->loop, &f->listener, "127.0.0.1:0", 16, on_connection, NULL, 0),
                   0); /* re-made so teardown can close it */
  f->listener.data = f;
  connect_client(f);
  RUN_UNTIL(f, f->client.closed, 10000);
  assert_int_equal(f->client.opened, 0);
  assert_int_equal(f->client.close_err, UV_ECONNREFUSED);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_tls_alpn_http11),
      T(test_tls_alpn_h2),
      T(test_tls_alpn_server_preference),
      T(test_tls_alpn_none),
      T(test_tls_unknown_ca),
      T(test_tls_wrong_name),
      T(test_tls_alpn_mismatch),
      T(test_tls_client_cert_missing),
      T(test_tls_client_cert_untrusted),
      T(test_tls_client_cert_fingerprint),
      T(test_tls_client_cert_optional),
      T(test_tls_handshake_timeout),
      T(test_vanish_mid_record_fin),
      T(test_close_notify_behind_data_while_paused),
      T(test_tls_error_behind_data_while_writing),
      T(test_vanish_mid_record_rst),
      T(test_vanish_mid_client_hello),
      T(test_bulk_64mib_tls),
      T(test_bulk_16mib_plain),
      T(test_graceful_close_tls),
      T(test_graceful_close_plain),
      T(test_abort_tls),
      T(test_abort_plain),
      T(test_write_queue_cap),
      T(test_write_queue_cap_before_open),
      T(test_plain_round_trip),
      T(test_socketpair_plain),
      T(test_socketpair_tls),
      T(test_socketpair_bulk_tls),
      T(test_connect_refused),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
