/*
 * bench_relay.c — the data plane under load (issue 5), beside baselines
 * measured in the same run.
 *
 * It starts `relay serve --no-auth` with a development certificate on
 * loopback (or uses one given with --connect/--pid), creates sessions with
 * POST /admin/sessions over keep-alive TLS connections, and drives peers
 * written on cm_stream (wsload.h).  Scenarios (--what, comma list):
 *
 *   crypto      the ceiling: one thread sealing then opening 16 KiB records
 *               with the AEAD the clients negotiate (OpenSSL EVP).  A relay
 *               opens and seals each relayed byte once, so one core of pure
 *               crypto could relay at most E bytes/s, where E = record bytes
 *               / time of (seal + open); "fraction of ceiling" = relayed
 *               bytes/s / E.
 *   throughput  one session, 16 KiB binary messages, A sends as fast as
 *               backpressure allows, B counts: Gbit/s of payload.
 *   msgs        100 sessions, 512-byte messages: messages/s delivered.
 *   latency     one session, 1 KiB ping-pong (A sends, B echoes, A times
 *               the round trip): p50/p99 round trip.  The same client loop
 *               runs against a direct TLS echo (no relay), so "added" =
 *               relay percentile - direct percentile, for a round trip that
 *               crosses the relay twice.
 *   rss         N idle paired sessions (default 10,000, fewer when
 *               RLIMIT_NOFILE cannot hold 2N sockets per process): the
 *               relay's VmRSS after creating the sessions and after pairing
 *               them, divided by N.  Also upgrades/s while connecting.
 *   peers       the client pair: `relay tcp-dial` (to a TCP sink here) and
 *               `relay tcp-listen` (fed by a TCP source here) on one
 *               session, bytes/s from source to sink, beside (a)'s
 *               data-plane figure measured in the same rounds; the pair
 *               offers only the --cipher suite too (an OpenSSL config), so
 *               every TLS leg is alike.  The ratio says whether the client
 *               pair is the bottleneck: of the best rounds, and the median
 *               of each round's ratio (its two windows are adjacent, so the
 *               machine's drift between rounds cancels); and the busiest
 *               client process's CPU against the relay's, which says which
 *               would run out of a core first where each has one.
 *
 * Every scenario except rss also runs against two baselines: "direct" (A
 * talks TLS straight to a WebSocket server in this process: the load
 * generator's own limit) and, when --haproxy is given, haproxy 2.x in mode
 * tcp with one thread, terminating TLS from A and opening TLS to that same
 * server — one open and one seal per byte per direction, like the relay.
 * Clients offer only one TLS 1.3 suite (--cipher), so all legs use it.
 *
 * --workers N runs the relay with N workers and haproxy with nbthread N;
 * (a) then uses --streams sessions (default N), since one session lives on
 * one worker.  Throughput and messages/s also print each forwarder's
 * efficiency: payload per CPU-second it used (Gbit/s or msg/s divided by
 * its CPU share in cores), and its total CPU share (over 100 % is more
 * than one core).
 *
 * Throughput, messages/s and latency run --rounds times (default 2), the
 * targets interleaved (relay, direct, haproxy, relay, ...), and each target
 * reports its best round: on a shared machine a burst of unrelated load
 * then spoils one round, not one target.
 *
 * Machine-readable summary lines start with "@@" (the run script tabulates
 * them).  Numbers are printed, never asserted.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "relay/relay.h"
#include "benchproc.h"
#include "wsload.h"

#define MAX_EPS 32768
#define W(lit)  ((char[]){lit}) /* a writable copy, for argv */

static struct {
  const char *relay_bin, *connect, *haproxy, *tmp, *what, *cipher, *relay_arg;
  int pid, sessions, rounds, workers, streams;
  int host_cpu; /* peers: % of a core for each of relay, tcp-listen, tcp-dial; 0: none */
  bool plain;
  double secs;
} opt = {.what = "crypto,throughput,msgs,latency,rss,peers",
         .cipher = "aes128",
         .sessions = 10000,
         .secs = 3,
         .rounds = 2};

static uv_loop_t *g_loop;
static uv_timer_t g_tick;
static cm_tls_ctx *g_cli_tls, *g_srv_tls;
static char g_cert[4096], g_key[4096];
static struct sockaddr_storage g_relay_addr;
static pid_t g_relay_pid, g_haproxy_pid;
static int g_haproxy_port;
static uv_tcp_t g_listener;
static int g_listen_port;

static char g_area[64];
#define AREA g_area

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_relay: %s\n", what);
  if (g_relay_pid > 0 && !opt.connect) kill(g_relay_pid, SIGKILL);
  if (g_haproxy_pid > 0) kill(g_haproxy_pid, SIGKILL);
  exit(1);
}

static void on_tick(uv_timer_t *t) { (void)t; }

static bool never(void) { return false; }

/* Runs the loop until done() or the timeout; the tick timer bounds each
 * uv_run pass so the clock is checked at least every 5 ms. */
static bool run_until(bool (*done)(void), double timeout) {
  double end = now_s() + timeout;
  while (!done()) {
    if (now_s() >= end) return false;
    uv_run(g_loop, UV_RUN_ONCE);
  }
  return true;
}

static void run_for(double secs) { run_until(never, secs); }

/* ---- child processes ------------------------------------------------------------- */

/* Non-blocking check: false (and a report) when the child has exited. */
static bool child_alive(pid_t pid, const char *name) {
  int st;
  pid_t r = waitpid(pid, &st, WNOHANG);
  if (r == 0) return true;
  if (r < 0 && errno == ECHILD) return kill(pid, 0) == 0; /* --pid: not our child */
  if (r == pid) {
    if (WIFSIGNALED(st))
      printf("!! %s (pid %d) died of signal %d\n", name, pid, WTERMSIG(st));
    else
      printf("!! %s (pid %d) exited with status %d\n", name, pid, WEXITSTATUS(st));
  }
  return false;
}

static void stop_child(pid_t pid, const char *name) {
  if (pid <= 0) return;
  if (!child_alive(pid, name)) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 150; i++) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      if (WIFSIGNALED(st) && WTERMSIG(st) != SIGTERM)
        printf("!! %s died of signal %d while stopping\n", name, WTERMSIG(st));
      else if (WIFEXITED(st) && WEXITSTATUS(st) != 0)
        printf("!! %s exited with status %d while stopping\n", name, WEXITSTATUS(st));
      return;
    }
    usleep(100 * 1000);
  }
  printf("!! %s did not stop within 15 s of SIGTERM; killed\n", name);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

/* Who was busy during a measurement window: the forwarder under test (the
 * relay process includes its embedded controller thread) and this load
 * generator, each as a share of one core, and the forwarder's share spent
 * in the kernel (syscalls, TCP). */
typedef struct cpu_mark {
  pid_t pid; /* the forwarder; 0 for the direct baseline */
  double t;
  double fwd, fwd_sys, self; /* CPU seconds at the start; after cpu_finish, % of a core */
} cpu_mark;

static pid_t target_pid(int t);

static cpu_mark cpu_begin(int t) {
  double sys;
  cpu_mark m = {.pid = target_pid(t), .t = now_s(), .fwd = -1};
  if (m.pid > 0) m.fwd = bench_cpu_s(m.pid, &m.fwd_sys);
  m.self = bench_cpu_s(getpid(), &sys);
  return m;
}

static void cpu_finish(cpu_mark *m) {
  double dt = now_s() - m->t, sys;
  m->self = (bench_cpu_s(getpid(), &sys) - m->self) / dt * 100;
  if (m->fwd < 0) return;
  double total = bench_cpu_s(m->pid, &sys);
  m->fwd = total < 0 ? -1 : (total - m->fwd) / dt * 100;
  m->fwd_sys = (sys - m->fwd_sys) / dt * 100;
}

static void cpu_print(const cpu_mark *m, const char *what) {
  if (m->fwd >= 0)
    printf("           cpu: %s %.0f%% (kernel %.0f%%), load generator %.0f%% (of one core)\n", what,
           m->fwd, m->fwd_sys, m->self);
  else
    printf("           cpu: load generator %.0f%% (of one core)\n", m->self);
}

/* A free loopback port (bound then released: a small race we accept). */
static int free_port(void) {
  uv_tcp_t t;
  char err[256];
  uv_tcp_init(g_loop, &t);
  if (cm_tcp_listen(g_loop, &t, "127.0.0.1:0", 1, NULL, err, sizeof err) != 0) die(err);
  int p = cm_tcp_bound_port(&t);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(g_loop, UV_RUN_NOWAIT);
  return p;
}

static bool tcp_accepts(int port) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

static void start_relay(void) {
  char log[4200], dir[4200];
  snprintf(log, sizeof log, "%s/relay.log", opt.tmp);
  snprintf(dir, sizeof dir, "%s/cert", opt.tmp);
  /* Every load-generator connection comes from 127.0.0.1: no per-address cap. */
  static char plain[] = "--plain", noauth[] = "--no-auth", perip[] = "--max-conns-per-ip=0";
  char workers[32];
  snprintf(workers, sizeof workers, "--workers=%d", opt.workers);
  char *argv[16];
  int n = 0;
  argv[n++] = (char *)opt.relay_bin;
  argv[n++] = W("serve");
  argv[n++] = W("--listen");
  argv[n++] = W("127.0.0.1:0");
  argv[n++] = perip;
  argv[n++] = noauth;
  if (opt.workers > 0) argv[n++] = workers; /* else the relay's default */
  static char certdir[] = "--dev-cert-dir";
  if (opt.plain) {
    argv[n++] = plain;
  } else {
    argv[n++] = certdir;
    argv[n++] = dir;
  }
  if (opt.relay_arg) argv[n++] = (char *)opt.relay_arg; /* one more flag, e.g. --accept=reuseport */
  argv[n] = NULL;
  g_relay_pid = bench_spawn(argv, log, true);
  if (g_relay_pid < 0) die("cannot start the relay");
  /* The bound port comes from the JSON "listening" log line. */
  for (int i = 0; i < 300; i++) {
    usleep(50 * 1000);
    if (!child_alive(g_relay_pid, "relay")) die("the relay exited at start (see relay.log)");
    FILE *f = fopen(log, "r");
    char line[2048];
    int port = 0;
    while (f && fgets(line, sizeof line, f)) {
      const char *p = strstr(line, "\"msg\":\"listening\"");
      if (p && (p = strstr(line, "\"port\":"))) port = atoi(p + 7);
    }
    if (f) fclose(f);
    if (port > 0) {
      struct sockaddr_in *a = (struct sockaddr_in *)&g_relay_addr;
      uv_ip4_addr("127.0.0.1", port, a);
      printf("relay pid %d on 127.0.0.1:%d (log %s)\n", (int)g_relay_pid, port, log);
      return;
    }
  }
  die("the relay did not report its port within 15 s");
}

static void start_haproxy(void) {
  char cfg[4200], pem[4200], log[4200];
  snprintf(cfg, sizeof cfg, "%s/haproxy.cfg", opt.tmp);
  snprintf(pem, sizeof pem, "%s/haproxy.pem", opt.tmp);
  snprintf(log, sizeof log, "%s/haproxy.log", opt.tmp);
  char *c = NULL, *k = NULL;
  size_t cn, kn;
  if (cm_read_file(g_cert, 1 << 20, &c, &cn) != 0 || cm_read_file(g_key, 1 << 20, &k, &kn) != 0)
    die("cannot read the dev certificate");
  FILE *f = fopen(pem, "w");
  fprintf(f, "%s%s", c, k);
  fclose(f);
  free(c);
  free(k);
  g_haproxy_port = free_port();
  const char *suite =
      strcmp(opt.cipher, "aes256") == 0 ? "TLS_AES_256_GCM_SHA384" : "TLS_AES_128_GCM_SHA256";
  f = fopen(cfg, "w");
  fprintf(f,
          "global\n  nbthread %d\n  maxconn 4000\n"
          "  ssl-default-bind-ciphersuites %s\n  ssl-default-server-ciphersuites %s\n"
          "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n"
          "  timeout server 120s\n"
          "frontend fe\n  bind 127.0.0.1:%d ssl crt %s\n  default_backend be\n"
          "backend be\n  server b 127.0.0.1:%d ssl verify none\n",
          opt.workers > 0 ? opt.workers : 1, suite, suite, g_haproxy_port, pem, g_listen_port);
  fclose(f);
  char *argv[] = {(char *)opt.haproxy, W("-db"), W("-f"), cfg, NULL};
  g_haproxy_pid = bench_spawn(argv, log, true);
  for (int i = 0; i < 200; i++) {
    usleep(25 * 1000);
    if (!child_alive(g_haproxy_pid, "haproxy")) {
      g_haproxy_pid = 0;
      printf("haproxy failed to start (see %s); skipping the haproxy baseline\n", log);
      return;
    }
    if (tcp_accepts(g_haproxy_port)) {
      printf("haproxy pid %d on 127.0.0.1:%d -> TLS -> 127.0.0.1:%d (nbthread %d)\n",
             (int)g_haproxy_pid, g_haproxy_port, g_listen_port, opt.workers > 0 ? opt.workers : 1);
      return;
    }
  }
  die("haproxy did not start listening");
}

/* ---- endpoints ----------------------------------------------------------------------- */

typedef enum { EP_SINK, EP_ECHO, EP_SENDER, EP_PINGER } ep_role;

typedef struct ep {
  wl_conn *c;
  ep_role role;
  bool ready, closed;
  int http_status;
} ep;

static ep *g_eps[MAX_EPS];
static int g_neps, g_ready, g_closed, g_failed;
static ep_role g_srv_role = EP_SINK;
static bool g_sending, g_closing_all;
static uint64_t g_rx_msgs, g_rx_bytes;
static uint8_t *g_batch; /* sender: prebuilt frames, sent as one write */
static size_t g_batch_len;
static uint8_t g_ping[1024 + WS_MAX_HEADER], g_pong_masked[1024 + WS_MAX_HEADER],
    g_pong_plain[1024 + WS_MAX_HEADER];
static size_t g_ping_len, g_pong_masked_len, g_pong_plain_len;

/* Pinger state. */
static double *g_rtt, g_t_sent, g_deadline;
static int g_rtt_n, g_rtt_max, g_pings, g_warmup;
static bool g_ping_done;

static void pump(ep *e) {
  while (g_sending && e->c && e->ready && !wl_above_high(e->c))
    if (wl_send(e->c, g_batch, g_batch_len) != 0) break;
}

static void send_ping(ep *e) {
  g_t_sent = now_s();
  wl_send(e->c, g_ping, g_ping_len);
}

static void ep_on_ready(wl_conn *c) {
  ep *e = c->ud;
  e->ready = true;
  g_ready++;
  if (e->role == EP_SENDER) pump(e);
}

static uint64_t g_msg_len, g_bad_len; /* every message sent has g_msg_len bytes */

static void ep_on_message(wl_conn *c, uint64_t len) {
  ep *e = c->ud;
  if (len != g_msg_len && g_bad_len++ < 3)
    printf("!! a %llu-byte message arrived; %llu were sent\n", (unsigned long long)len,
           (unsigned long long)g_msg_len);
  g_rx_msgs++;
  g_rx_bytes += len;
  if (e->role == EP_ECHO) {
    if (c->server)
      wl_send(c, g_pong_plain, g_pong_plain_len);
    else
      wl_send(c, g_pong_masked, g_pong_masked_len);
  } else if (e->role == EP_PINGER) {
    double t = now_s();
    if (g_pings++ >= g_warmup && g_rtt_n < g_rtt_max) g_rtt[g_rtt_n++] = t - g_t_sent;
    if (g_rtt_n < g_rtt_max && t < g_deadline)
      send_ping(e);
    else
      g_ping_done = true;
  }
}

static void ep_on_drain(wl_conn *c) {
  ep *e = c->ud;
  if (e->role == EP_SENDER) pump(e);
}

static int g_errors_shown;

static void ep_on_close(wl_conn *c, int err, const char *msg) {
  ep *e = c->ud;
  if (!e->ready) {
    g_failed++;
    e->http_status = c->http_status;
  }
  if (!g_closing_all && g_errors_shown < 5) {
    g_errors_shown++;
    printf("!! connection closed early (%s side, ready %d, http %d): %s (%d)\n",
           c->server ? "server" : "client", e->ready, c->http_status, msg ? msg : "", err);
  }
  e->closed = true;
  e->c = NULL;
  g_closed++;
}

static const wl_cbs EP_CBS = {ep_on_ready, ep_on_message, ep_on_drain, ep_on_close, NULL};

static ep *ep_new(ep_role role) {
  if (g_neps >= MAX_EPS) die("too many endpoints");
  ep *e = calloc(1, sizeof *e);
  if (!e) die("out of memory");
  e->role = role;
  g_eps[g_neps++] = e;
  return e;
}

static ep *ep_connect(const struct sockaddr *addr, const char *path, ep_role role) {
  ep *e = ep_new(role);
  int err;
  e->c = wl_connect(g_loop, addr, g_cli_tls, "127.0.0.1", path, &EP_CBS, e, &err);
  if (!e->c) {
    e->closed = true;
    g_failed++;
    g_closed++;
  }
  return e;
}

static void on_baseline_conn(uv_stream_t *server, int status) {
  if (status < 0) return;
  ep *e = ep_new(g_srv_role);
  int err;
  e->c = wl_accept(server, g_srv_tls, &EP_CBS, e, &err);
  if (!e->c) {
    e->closed = true;
    g_closed++;
  }
}

static bool all_closed(void) { return g_closed >= g_neps; }

/* Closes every endpoint and frees them, counters reset. */
static void reset_eps(void) {
  g_sending = false;
  g_closing_all = true;
  for (int i = 0; i < g_neps; i++)
    if (g_eps[i]->c) wl_close(g_eps[i]->c);
  if (!run_until(all_closed, 20)) {
    printf("!! %d connections did not close within 20 s; aborting them\n", g_neps - g_closed);
    for (int i = 0; i < g_neps; i++)
      if (g_eps[i]->c) cm_stream_abort(g_eps[i]->c->st);
    run_until(all_closed, 5);
  }
  for (int i = 0; i < g_neps; i++)
    if (!g_eps[i]->c) free(g_eps[i]); /* one still open keeps its ep (never seen) */
  g_neps = g_ready = g_closed = g_failed = 0;
  g_rx_msgs = g_rx_bytes = 0;
  g_closing_all = false;
  g_errors_shown = 0;
}

/* ---- sessions over the admin API ---------------------------------------------------- */

typedef struct sess {
  char id[64], ti[64], tr[64];
} sess;

static sess *g_sess;
static int g_sess_want, g_sess_sent, g_sess_have, g_sess_err;

typedef struct hc {
  cm_stream *st;
  cm_buf in;
  bool closed;
} hc;

static void hc_send(hc *h) {
  static const char req[] = "POST /admin/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
  g_sess_sent++;
  cm_stream_write(h->st, req, sizeof req - 1);
}

static bool take_session(const char *body, size_t n) {
  json_error_t je;
  json_t *o = json_loadb(body, n, 0, &je);
  const char *id = json_string_value(json_object_get(o, "id"));
  const char *ti = json_string_value(json_object_get(o, "initiator_token"));
  const char *tr = json_string_value(json_object_get(o, "responder_token"));
  bool ok = id && ti && tr && strlen(id) < 64 && strlen(ti) < 64 && strlen(tr) < 64;
  if (ok) {
    sess *s = &g_sess[g_sess_have++];
    strcpy(s->id, id);
    strcpy(s->ti, ti);
    strcpy(s->tr, tr);
  }
  json_decref(o);
  return ok;
}

/* Consumes complete responses from h->in. */
static void hc_parse(hc *h) {
  for (;;) {
    const char *p = (const char *)cm_buf_head(&h->in);
    size_t n = cm_buf_size(&h->in);
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) return;
    size_t head = (size_t)(end - p) + 4;
    const char *cl = memmem(p, head, "Content-Length:", 15);
    if (!cl) cl = memmem(p, head, "content-length:", 15);
    size_t body = cl ? strtoul(cl + 15, NULL, 10) : 0;
    if (n < head + body) return;
    int status = strncmp(p, "HTTP/1.1 ", 9) == 0 ? atoi(p + 9) : 0;
    if (status != 201 || !take_session(p + head, body)) {
      if (g_sess_err++ < 3)
        printf("!! POST /admin/sessions: status %d: %.*s\n", status, (int)CM_MIN(body, 200),
               p + head);
    }
    cm_buf_consume(&h->in, head + body);
    if (g_sess_sent < g_sess_want) hc_send(h);
  }
}

static void hc_on_open(cm_stream *s) {
  hc *h = cm_stream_get_data(s);
  if (g_sess_sent < g_sess_want) hc_send(h);
}

static void hc_on_read(cm_stream *s, uint8_t *d, size_t n) {
  hc *h = cm_stream_get_data(s);
  cm_buf_append(&h->in, d, n);
  hc_parse(h);
}

static void hc_on_close(cm_stream *s, int err, const char *msg) {
  hc *h = cm_stream_get_data(s);
  if (!g_closing_all && err) printf("!! admin connection closed: %s (%d)\n", msg ? msg : "", err);
  h->closed = true;
}

static const cm_stream_cbs HC_CBS = {hc_on_open, hc_on_read, NULL, hc_on_close};

static bool sessions_done(void) { return g_sess_have + g_sess_err >= g_sess_want; }

static hc *g_hc;
static int g_nhc;
static bool hcs_closed(void) {
  for (int i = 0; i < g_nhc; i++)
    if (!g_hc[i].closed) return false;
  return true;
}

/* Creates n sessions over `conns` keep-alive connections; returns the rate. */
static double create_sessions(int n, int conns) {
  free(g_sess);
  g_sess = calloc((size_t)n, sizeof *g_sess);
  g_sess_want = n;
  g_sess_sent = g_sess_have = g_sess_err = 0;
  g_nhc = conns;
  g_hc = calloc((size_t)conns, sizeof *g_hc);
  double t0 = now_s();
  for (int i = 0; i < conns; i++) {
    int err;
    cm_buf_init(&g_hc[i].in, 1 << 20);
    cm_stream_opts o = {.tls = g_cli_tls, .sni = "127.0.0.1"};
    g_hc[i].st =
        cm_stream_connect(g_loop, (struct sockaddr *)&g_relay_addr, &o, &HC_CBS, &g_hc[i], &err);
    if (!g_hc[i].st) die("admin connect failed");
  }
  if (!run_until(sessions_done, 60))
    printf("!! session creation stalled at %d/%d\n", g_sess_have, n);
  double t = now_s() - t0;
  g_closing_all = true;
  for (int i = 0; i < conns; i++)
    if (!g_hc[i].closed) cm_stream_close(g_hc[i].st);
  run_until(hcs_closed, 10);
  g_closing_all = false;
  for (int i = 0; i < conns; i++)
    cm_buf_free(&g_hc[i].in);
  free(g_hc);
  g_hc = NULL;
  if (g_sess_have < n) die("could not create the sessions");
  return n / t;
}

static void relay_path(char *out, size_t n, const sess *s, bool initiator) {
  snprintf(out, n, "/relay/%s?token=%s", s->id, initiator ? s->ti : s->tr);
}

/* ---- targets ---------------------------------------------------------------------------- */

typedef enum { T_RELAY, T_DIRECT, T_HAPROXY } target;
static const char *TARGET_NAME[] = {"relay", "direct", "haproxy"};

static bool target_available(target t) { return t != T_HAPROXY || g_haproxy_pid > 0; }

static pid_t target_pid(int t) {
  return t == T_RELAY ? g_relay_pid : t == T_HAPROXY ? g_haproxy_pid : 0;
}

static int g_want_ready;
static bool enough_ready(void) { return g_ready >= g_want_ready || g_failed > 0; }

/* Opens `pairs` A/B pairs (A with role ra, B with rb) on target t; waits
 * until every endpoint is ready.  On the baselines B is the server side. */
static bool open_pairs(target t, int pairs, ep_role ra, ep_role rb) {
  g_srv_role = rb;
  if (t == T_RELAY) create_sessions(pairs, CM_MIN(pairs, 4));
  for (int i = 0; i < pairs; i++) {
    if (t == T_RELAY) {
      char path[256];
      relay_path(path, sizeof path, &g_sess[i], true);
      ep_connect((struct sockaddr *)&g_relay_addr, path, ra);
      relay_path(path, sizeof path, &g_sess[i], false);
      ep_connect((struct sockaddr *)&g_relay_addr, path, rb);
    } else {
      struct sockaddr_in a;
      uv_ip4_addr("127.0.0.1", t == T_DIRECT ? g_listen_port : g_haproxy_port, &a);
      ep_connect((struct sockaddr *)&a, "/bench", ra);
    }
  }
  g_want_ready = 2 * pairs; /* baselines: the accepted side counts too */
  if (!run_until(enough_ready, 30) || g_failed) {
    printf("!! %s: only %d of %d endpoints ready (%d failed)\n", TARGET_NAME[t], g_ready,
           g_want_ready, g_failed);
    return false;
  }
  return true;
}

/* ---- crypto ceiling ------------------------------------------------------------------ */

static const EVP_CIPHER *aead_for(const char *name) {
  return strcmp(name, "aes256") == 0 ? EVP_aes_256_gcm() : EVP_aes_128_gcm();
}

/* Bytes/s of seal+open (each byte sealed once and opened once) of 16 KiB
 * records with a 5-byte AAD, as a TLS 1.3 record layer does; *seal_rate
 * gets the seal-only rate.  Best of 8 runs of ~0.15 s each (a shared machine is noisy;
 * the best run is the least disturbed). */
static double aead_ceiling(const EVP_CIPHER *cipher, double *seal_rate) {
  enum { REC = 16384 };
  static uint8_t in[REC], ct[REC + 16], pt[REC + 16];
  uint8_t key[32] = {1, 2, 3}, iv[12] = {0}, tag[16], aad[5] = {0x17, 3, 3, 0x40, 0x11};
  EVP_CIPHER_CTX *enc = EVP_CIPHER_CTX_new(), *dec = EVP_CIPHER_CTX_new();
  EVP_EncryptInit_ex(enc, cipher, NULL, key, NULL);
  EVP_DecryptInit_ex(dec, cipher, NULL, key, NULL);
  memset(in, 0xa5, sizeof in);
  double best_both = 0, best_seal = 0;
  for (int pass = 0; pass < 16; pass++) {
    bool with_open = pass % 2 == 0;
    uint64_t records = 0;
    double t0 = now_s(), t;
    do {
      for (int i = 0; i < 64; i++) {
        iv[11]++;
        if (iv[11] == 0) iv[10]++;
        int n, m;
        EVP_EncryptInit_ex(enc, NULL, NULL, NULL, iv);
        EVP_EncryptUpdate(enc, NULL, &n, aad, sizeof aad);
        EVP_EncryptUpdate(enc, ct, &n, in, REC);
        EVP_EncryptFinal_ex(enc, ct + n, &m);
        EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_GCM_GET_TAG, 16, tag);
        if (with_open) {
          EVP_DecryptInit_ex(dec, NULL, NULL, NULL, iv);
          EVP_DecryptUpdate(dec, NULL, &n, aad, sizeof aad);
          EVP_DecryptUpdate(dec, pt, &n, ct, REC);
          EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_GCM_SET_TAG, 16, tag);
          if (EVP_DecryptFinal_ex(dec, pt + n, &m) != 1) die("AEAD open failed");
        }
        records++;
      }
      t = now_s() - t0;
    } while (t < 0.15);
    double rate = (double)records * REC / t;
    if (with_open && rate > best_both) best_both = rate;
    if (!with_open && rate > best_seal) best_seal = rate;
  }
  EVP_CIPHER_CTX_free(enc);
  EVP_CIPHER_CTX_free(dec);
  *seal_rate = best_seal;
  return best_both;
}

static double g_ceiling; /* bytes/s, the negotiated AEAD */

static void bench_crypto(void) {
  printf("\n== crypto ceiling (OpenSSL %s, one thread, 16 KiB records) ==\n",
         OpenSSL_version(OPENSSL_VERSION_STRING));
  const char *names[] = {"aes128", "aes256"};
  for (int i = 0; i < 2; i++) {
    double seal, both = aead_ceiling(aead_for(names[i]), &seal);
    printf("  %s-gcm  seal %6.2f Gbit/s   seal+open E = %6.2f Gbit/s%s\n", names[i], seal * 8 / 1e9,
           both * 8 / 1e9,
           strcmp(names[i], opt.cipher) == 0 ? "   <- negotiated by the clients" : "");
    if (strcmp(names[i], opt.cipher) == 0) g_ceiling = both;
  }
  printf("@@ crypto | %s-GCM seal+open ceiling E (1 core) | %.2f Gbit/s | | \n", opt.cipher,
         g_ceiling * 8 / 1e9);
}

/* ---- throughput and messages/s -------------------------------------------------------- */

static void build_batch(size_t msg, int count) {
  g_msg_len = msg;
  free(g_batch);
  g_batch = malloc((size_t)count * (msg + WS_MAX_HEADER));
  uint8_t *payload = malloc(msg);
  for (size_t i = 0; i < msg; i++)
    payload[i] = (uint8_t)(i * 7);
  g_batch_len = 0;
  for (int i = 0; i < count; i++)
    g_batch_len += wl_frame_build(g_batch + g_batch_len, true, WS_BINARY, payload, msg);
  free(payload);
}

static cpu_mark g_cpu; /* of the last window, printed after its result */

/* Streams for warm-up then opt.secs; returns {bytes/s, messages/s}. */
static bool stream_run(target t, int pairs, size_t msg, int per_write, double out[2]) {
  build_batch(msg, per_write);
  if (!open_pairs(t, pairs, EP_SENDER, EP_SINK)) {
    reset_eps();
    return false;
  }
  g_sending = true;
  for (int i = 0; i < g_neps; i++)
    if (g_eps[i]->role == EP_SENDER) pump(g_eps[i]);
  run_for(1.0);
  uint64_t b0 = g_rx_bytes, m0 = g_rx_msgs;
  double t0 = now_s();
  g_cpu = cpu_begin(t);
  run_for(opt.secs);
  cpu_finish(&g_cpu);
  double dt = now_s() - t0;
  out[0] = (double)(g_rx_bytes - b0) / dt;
  out[1] = (double)(g_rx_msgs - m0) / dt;
  bool ok = g_closed == 0;
  reset_eps();
  return ok;
}

/* The best round of each target: its rate and the forwarder's CPU share
 * (cores) in that round. */
typedef struct best_run {
  double rate[2]; /* bytes/s, messages/s */
  double cores;   /* -1: unknown (direct) */
} best_run;

/* Rate per CPU-second of the forwarder; 0 when unknown. */
static double per_cpu(const best_run *b, int k) { return b->cores > 0 ? b->rate[k] / b->cores : 0; }

/* Runs every target opt.rounds times, interleaved, keeping each one's best
 * round by rate k (0 bytes/s, 1 messages/s). */
static void stream_rounds(int pairs, size_t msg, int per_write, int k, best_run r[3]) {
  memset(r, 0, 3 * sizeof *r);
  for (int round = 0; round < opt.rounds; round++)
    for (int t = 0; t < 3; t++) {
      if (!target_available((target)t)) continue;
      double x[2];
      if (!stream_run((target)t, pairs, msg, per_write, x))
        printf("!! %s run had errors\n", TARGET_NAME[t]);
      double cores = g_cpu.fwd >= 0 ? g_cpu.fwd / 100 : -1;
      if (k == 0)
        printf("  %-8s %7.2f Gbit/s  (%.0f msg/s) = %.2f of the ceiling E", TARGET_NAME[t],
               x[0] * 8 / 1e9, x[1], g_ceiling > 0 ? x[0] / g_ceiling : 0);
      else
        printf("  %-8s %10.0f msg/s  (%.2f Gbit/s payload)", TARGET_NAME[t], x[1], x[0] * 8 / 1e9);
      if (cores > 0 && k == 0) printf("; %.2f Gbit/s per CPU-second", x[0] * 8 / 1e9 / cores);
      if (cores > 0 && k == 1) printf("; %.0f msg/s per CPU-second", x[1] / cores);
      printf("\n");
      cpu_print(&g_cpu, TARGET_NAME[t]);
      if (x[k] > r[t].rate[k]) r[t] = (best_run){{x[0], x[1]}, cores};
      if (t == T_RELAY && g_relay_pid > 0 && !child_alive(g_relay_pid, "relay")) die("relay died");
    }
}

/* "relay/haproxy R, per CPU-second R'; relay CPU C %" */
static void ratios(const best_run r[3], int k, char *out, size_t n) {
  int o = snprintf(out, n, "relay CPU %.0f%%", r[0].cores * 100);
  if (r[2].rate[k] > 0)
    o += snprintf(out + o, n - (size_t)o, "; relay/haproxy %.2f", r[0].rate[k] / r[2].rate[k]);
  if (per_cpu(&r[2], k) > 0)
    snprintf(out + o, n - (size_t)o, "; per CPU-second relay/haproxy %.2f (haproxy CPU %.0f%%)",
             per_cpu(&r[0], k) / per_cpu(&r[2], k), r[2].cores * 100);
}

static void bench_throughput(void) {
  int pairs = opt.streams;
  printf("\n== (a) throughput: %d session%s, 16 KiB binary messages, %.0f s, best of %d ==\n",
         pairs, pairs == 1 ? "" : "s", opt.secs, opt.rounds);
  best_run r[3];
  stream_rounds(pairs, 16384, 8, 0, r);
  char base[160], ratio[192];
  snprintf(base, sizeof base, "direct %.2f; haproxy %.2f (%.2f per CPU-s)", r[1].rate[0] * 8 / 1e9,
           r[2].rate[0] * 8 / 1e9, per_cpu(&r[2], 0) * 8 / 1e9);
  ratios(r, 0, ratio, sizeof ratio);
  printf(
      "@@ %s | (a) %d session(s), 16 KiB msgs, Gbit/s (per relay CPU-s) | %.2f (%.2f) | %s | %s\n",
      AREA, pairs, r[0].rate[0] * 8 / 1e9, per_cpu(&r[0], 0) * 8 / 1e9, base, ratio);
}

static void bench_msgs(void) {
  printf("\n== (b) messages/s: 100 sessions, 512-byte messages, %.0f s, best of %d ==\n", opt.secs,
         opt.rounds);
  best_run r[3];
  stream_rounds(100, 512, 32, 1, r);
  char base[160], ratio[192];
  snprintf(base, sizeof base, "direct %.0f; haproxy %.0f (%.0f per CPU-s)", r[1].rate[1],
           r[2].rate[1], per_cpu(&r[2], 1));
  ratios(r, 1, ratio, sizeof ratio);
  printf("@@ %s | (b) 100 sessions, 512 B msgs, msg/s (per relay CPU-s) | %.0f (%.0f) | %s | %s\n",
         AREA, r[0].rate[1], per_cpu(&r[0], 1), base, ratio);
}

/* ---- latency ----------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p) {
  if (n == 0) return 0;
  int i = (int)(p * (n - 1) + 0.5);
  return v[i];
}

static bool ping_done(void) { return g_ping_done || g_closed > 0; }

static bool ping_run(target t, double res[3]) {
  if (!open_pairs(t, 1, EP_PINGER, EP_ECHO)) {
    reset_eps();
    return false;
  }
  g_rtt_max = 100000;
  g_rtt = calloc((size_t)g_rtt_max, sizeof *g_rtt);
  g_rtt_n = g_pings = 0;
  g_warmup = 1000;
  g_ping_done = false;
  g_deadline = now_s() + opt.secs;
  for (int i = 0; i < g_neps; i++)
    if (g_eps[i]->role == EP_PINGER && g_eps[i]->c) send_ping(g_eps[i]);
  run_until(ping_done, opt.secs + 5);
  qsort(g_rtt, (size_t)g_rtt_n, sizeof *g_rtt, cmp_double);
  res[0] = pct(g_rtt, g_rtt_n, 0.50) * 1e6;
  res[1] = pct(g_rtt, g_rtt_n, 0.99) * 1e6;
  res[2] = g_rtt_n;
  printf("  %-8s p90 %.1f us, p99.9 %.1f us, max %.1f us\n", TARGET_NAME[t],
         pct(g_rtt, g_rtt_n, 0.90) * 1e6, pct(g_rtt, g_rtt_n, 0.999) * 1e6,
         g_rtt_n ? g_rtt[g_rtt_n - 1] * 1e6 : 0);
  free(g_rtt);
  g_rtt = NULL;
  bool ok = g_closed == 0 && g_rtt_n > 0;
  reset_eps();
  return ok;
}

static void bench_latency(void) {
  printf("\n== (c) latency: 1 KiB ping-pong, 1 session, %.0f s after 1000 warm-up, best p50 of %d "
         "==\n",
         opt.secs, opt.rounds);
  uint8_t payload[1024];
  memset(payload, 'p', sizeof payload);
  g_ping_len = wl_frame_build(g_ping, true, WS_BINARY, payload, sizeof payload);
  g_pong_masked_len = wl_frame_build(g_pong_masked, true, WS_BINARY, payload, sizeof payload);
  g_pong_plain_len = wl_frame_build(g_pong_plain, false, WS_BINARY, payload, sizeof payload);
  g_msg_len = sizeof payload;
  double r[3][3] = {{0}};
  for (int round = 0; round < opt.rounds; round++)
    for (int t = 0; t < 3; t++) {
      if (!target_available((target)t)) continue;
      double x[3];
      if (!ping_run((target)t, x)) printf("!! %s run had errors\n", TARGET_NAME[t]);
      printf("  %-8s round trip p50 %7.1f us  p99 %7.1f us  (%.0f samples)\n", TARGET_NAME[t], x[0],
             x[1], x[2]);
      if (x[2] > 0 && (r[t][2] == 0 || x[0] < r[t][0])) memcpy(r[t], x, sizeof x);
    }
  printf("  added by the relay (relay - direct, one round trip = two relay crossings):"
         " p50 %.1f us, p99 %.1f us\n",
         r[0][0] - r[1][0], r[0][1] - r[1][1]);
  if (r[2][2] > 0)
    printf("  added by haproxy  (haproxy - direct, same path shape): p50 %.1f us, p99 %.1f us\n",
           r[2][0] - r[1][0], r[2][1] - r[1][1]);
  char base[160], ratio[96] = "";
  snprintf(base, sizeof base, "direct %.0f/%.0f", r[1][0], r[1][1]);
  if (r[2][2] > 0) {
    snprintf(base, sizeof base, "direct %.0f/%.0f; haproxy %.0f/%.0f", r[1][0], r[1][1], r[2][0],
             r[2][1]);
    snprintf(ratio, sizeof ratio, "added p50: relay %.0f vs haproxy %.0f", r[0][0] - r[1][0],
             r[2][0] - r[1][0]);
  }
  printf("@@ %s | (c) 1 KiB round trip p50/p99, us | %.0f/%.0f (added %.0f/%.0f) | %s | %s\n", AREA,
         r[0][0], r[0][1], r[0][0] - r[1][0], r[0][1] - r[1][1], base, ratio);
}

/* ---- memory per idle session ------------------------------------------------------------- */

static bool all_ready(void) { return g_ready + g_failed >= g_want_ready; }
static uint64_t g_want_msgs;
static bool msgs_arrived(void) { return g_rx_msgs >= g_want_msgs || g_closed > 0; }

static void bench_rss(void) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  int n = opt.sessions;
  /* Each process holds 2 sockets per session: stay under the limit. */
  long fit = ((long)rl.rlim_cur - 200) / 2;
  if (n > fit) n = (int)fit;
  printf("\n== (d) memory: %d idle paired sessions (asked %d; RLIMIT_NOFILE %ld) ==\n", n,
         opt.sessions, (long)rl.rlim_cur);
  if (g_relay_pid <= 0) {
    printf("  no relay pid: skipped\n");
    return;
  }
  run_for(0.5);
  long r0 = bench_rss_kib(g_relay_pid);
  double create_rate = create_sessions(n, 8);
  run_for(0.5);
  long r1 = bench_rss_kib(g_relay_pid);
  printf("  created %d sessions at %.0f/s over 8 keep-alive connections\n", n, create_rate);
  /* Connect with a bounded number of handshakes in flight. */
  double t0 = now_s();
  int started = 0;
  g_want_ready = 2 * n;
  while (started < 2 * n) {
    if (started - g_ready - g_failed < 256) {
      char path[256];
      relay_path(path, sizeof path, &g_sess[started / 2], started % 2 == 0);
      ep_connect((struct sockaddr *)&g_relay_addr, path, EP_SINK);
      started++;
      continue;
    }
    uv_run(g_loop, UV_RUN_ONCE);
    if (now_s() - t0 > 90) break;
  }
  bool ok = run_until(all_ready, 60);
  double dt = now_s() - t0;
  printf("  %d WebSocket upgrades (%sValidate) in %.1f s: %.0f/s; %d failed%s\n", g_ready,
         opt.plain ? "" : "TLS handshake + ", dt, g_ready / dt, g_failed, ok ? "" : " (timed out)");
  if (g_failed) {
    for (int i = 0, shown = 0; i < g_neps && shown < 3; i++)
      if (g_eps[i]->closed && !g_eps[i]->ready) {
        printf("  failed endpoint %d: http %d\n", i, g_eps[i]->http_status);
        shown++;
      }
  }
  run_for(1.5);
  long r2 = bench_rss_kib(g_relay_pid);
  /* One 1 KiB message per session, A to B, then idle again. */
  uint8_t f[1024 + WS_MAX_HEADER], payload[1024];
  memset(payload, 'm', sizeof payload);
  size_t fl = wl_frame_build(f, true, WS_BINARY, payload, sizeof payload);
  g_msg_len = sizeof payload;
  g_want_msgs = 0;
  for (int i = 0; i < g_neps; i += 2)
    if (g_eps[i]->c && g_eps[i]->ready) {
      wl_send(g_eps[i]->c, f, fl);
      g_want_msgs++;
    }
  if (!run_until(msgs_arrived, 30))
    printf("!! only %llu of %llu messages arrived\n", (unsigned long long)g_rx_msgs,
           (unsigned long long)g_want_msgs);
  run_for(1.0);
  long r3 = bench_rss_kib(g_relay_pid);
  int paired = g_ready / 2;
  double upgrade_rate = g_ready / dt;
  reset_eps();
  run_for(1.5);
  long r4 = bench_rss_kib(g_relay_pid);
  printf("  relay VmRSS: start %ld KiB, %d sessions created %ld KiB, paired %ld KiB,"
         " after 1 msg each %ld KiB, all closed %ld KiB\n",
         r0, n, r1, r2, r3, r4);
  double per_idle = paired ? (double)(r2 - r1) * 1024 / paired : 0;
  double per_used = paired ? (double)(r3 - r1) * 1024 / paired : 0;
  double per_reg = n ? (double)(r1 - r0) * 1024 / n : 0;
  printf("  per idle paired session (2 %sWebSockets): %.1f KiB; after one message each:"
         " %.1f KiB; embedded controller registry: %.2f KiB per session\n",
         opt.plain ? "plain " : "TLS ", per_idle / 1024, per_used / 1024, per_reg / 1024);
  const char *kind = opt.plain ? "plain" : "TLS";
  printf("@@ %s | (d) relay RSS per idle paired session (%s) | %.1f KiB (%d sessions) | "
         "after 1 msg each %.1f KiB; registry %.2f KiB | \n",
         AREA, kind, per_idle / 1024, paired, per_used / 1024, per_reg / 1024);
  printf("@@ %s | WebSocket upgrades/s (%s + Validate), session creates/s | %.0f; %.0f | | \n",
         AREA, kind, upgrade_rate, create_rate);
  if (!child_alive(g_relay_pid, "relay")) die("relay died");
}

/* ---- main ---------------------------------------------------------------------------------- */

/* ---- the client pair (peers) ----------------------------------------------------------- */

/* A TCP source and a TCP sink stand for the programs at either end (an
 * ssh client and server, on other hosts in a real deployment).  Neither
 * copies a byte, so the two cores go to what is measured, not to the
 * harness: the source hands the kernel references to one static 256 KiB
 * block (vmsplice into a pipe, splice to the socket; the block never
 * changes, so the pages can be shared), and the sink has the kernel
 * discard what arrives (recv with MSG_TRUNC, which TCP honours) and counts
 * it.  Both are plain descriptors under uv_poll, dup()ed from the libuv
 * handles that connected and accepted them. */
#define PEER_BLOCK     (256 * 1024)
#define PEER_PIPE_SIZE (1024 * 1024)
#define SINK_RECV_MAX  (1 << 30)

static uint8_t g_block[PEER_BLOCK];
static uv_tcp_t g_sink_listener, g_src;
static uv_poll_t *g_sink_poll, g_src_poll; /* a sink per connection: a re-join replaces it */
static int g_sink_fd = -1, g_src_fd = -1, g_src_pipe[2] = {-1, -1};
static size_t g_src_off, g_src_piped; /* next byte of the block to splice; bytes in the pipe */
static bool g_src_on, g_src_connected;
static uint64_t g_sink_bytes;
static pid_t g_dial_pid, g_listen_pid;

static void sink_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  for (;;) {
    ssize_t n = status < 0 ? -1 : recv(g_sink_fd, NULL, SINK_RECV_MAX, MSG_TRUNC | MSG_DONTWAIT);
    if (n > 0) {
      g_sink_bytes += (uint64_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) uv_poll_stop(h);
    return;
  }
}

static void sink_close(void) {
  if (g_sink_fd < 0) return;
  uv_close((uv_handle_t *)g_sink_poll, (uv_close_cb)free); /* stops polling at once */
  g_sink_poll = NULL;
  close(g_sink_fd);
  g_sink_fd = -1;
}

/* A plain descriptor for what a libuv handle holds; the handle is closed
 * (with closed_cb). */
static int take_fd(uv_handle_t *h, uv_close_cb closed_cb) {
  uv_os_fd_t fd;
  int d = uv_fileno(h, &fd) == 0 ? dup(fd) : -1;
  uv_close(h, closed_cb);
  return d;
}

static void on_sink_conn(uv_stream_t *server, int status) {
  if (status < 0) return;
  uv_tcp_t *c = malloc(sizeof *c);
  uv_tcp_init(g_loop, c);
  if (uv_accept(server, (uv_stream_t *)c) != 0) {
    uv_close((uv_handle_t *)c, (uv_close_cb)free);
    return;
  }
  sink_close(); /* a re-joined tunnel */
  g_sink_fd = take_fd((uv_handle_t *)c, (uv_close_cb)free);
  g_sink_poll = malloc(sizeof *g_sink_poll);
  if (g_sink_fd < 0 || !g_sink_poll || uv_poll_init(g_loop, g_sink_poll, g_sink_fd) != 0)
    die("sink: no poll");
  uv_poll_start(g_sink_poll, UV_READABLE, sink_readable);
}

/* Refills the pipe from the block and splices it on until the socket is
 * full (then waits for writable) or the source is switched off. */
static void src_writable(uv_poll_t *h, int status, int events) {
  (void)events;
  while (g_src_on && status == 0) {
    if (g_src_piped == 0) {
      struct iovec iov = {g_block + g_src_off, PEER_BLOCK - g_src_off};
      ssize_t n = vmsplice(g_src_pipe[1], &iov, 1, SPLICE_F_NONBLOCK);
      if (n <= 0) break;
      g_src_piped = (size_t)n;
      g_src_off = (g_src_off + (size_t)n) % PEER_BLOCK;
    }
    ssize_t n = splice(g_src_pipe[0], NULL, g_src_fd, NULL, g_src_piped,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE);
    if (n > 0) {
      g_src_piped -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;
  }
  uv_poll_stop(h);
}

static void src_pump(void) {
  if (g_src_on && g_src_connected) uv_poll_start(&g_src_poll, UV_WRITABLE, src_writable);
}

static void src_connected(uv_connect_t *req, int status) {
  free(req);
  if (status < 0) {
    printf("!! the source could not connect to tcp-listen: %s\n", uv_strerror(status));
    return;
  }
  g_src_fd = take_fd((uv_handle_t *)&g_src, NULL);
  if (g_src_fd < 0 || pipe2(g_src_pipe, O_NONBLOCK | O_CLOEXEC) != 0 ||
      uv_poll_init(g_loop, &g_src_poll, g_src_fd) != 0)
    die("source: no descriptor, pipe or poll");
  (void)fcntl(g_src_pipe[1], F_SETPIPE_SZ, PEER_PIPE_SIZE); /* fewer, larger splices; optional */
  g_src_connected = true;
  src_pump();
}

/* The port in the peer's "listening on ADDR:PORT" line, or 0. */
static int logged_port(const char *log) {
  FILE *f = fopen(log, "r");
  char line[1024];
  int port = 0;
  while (f && fgets(line, sizeof line, f)) {
    const char *p = strstr(line, "listening on ");
    if (p && (p = strrchr(p, ':'))) port = atoi(p + 1);
  }
  if (f) fclose(f);
  return port;
}

/* An OpenSSL configuration that makes the peers offer only opt.cipher. */
static void peer_openssl_conf(char *path, size_t n) {
  snprintf(path, n, "%s/peer-openssl.cnf", opt.tmp);
  FILE *f = fopen(path, "w");
  if (!f) die("cannot write the peers' OpenSSL config");
  fprintf(f,
          "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
          "[sys]\nCiphersuites = %s\n",
          strcmp(opt.cipher, "aes256") == 0 ? "TLS_AES_256_GCM_SHA384" : "TLS_AES_128_GCM_SHA256");
  fclose(f);
}

static pid_t spawn_peer(const char *mode, const char *where_flag, const char *where,
                        const char *token, const char *log) {
  char url[64], conf[4200];
  int port = ntohs(((struct sockaddr_in *)&g_relay_addr)->sin_port);
  snprintf(url, sizeof url, "wss://127.0.0.1:%d", port);
  peer_openssl_conf(conf, sizeof conf);
  setenv("SWSRS_URL", url, 1);
  setenv("SWSRS_SESSION", g_sess[0].id, 1);
  setenv("SWSRS_TOKEN", token, 1); /* the environment: never argv */
  setenv("OPENSSL_CONF", conf, 1);
  char *argv[] = {
      (char *)opt.relay_bin, (char *)mode,     (char *)where_flag, (char *)where, W("--ca"), g_cert,
      W("--keep"),           W("--log-level"), W("info"),          NULL};
  pid_t pid = bench_spawn(argv, log, false);
  unsetenv("SWSRS_TOKEN");
  unsetenv("OPENSSL_CONF");
  if (pid < 0) die("cannot start a peer");
  return pid;
}

/* Starts the sink, tcp-dial (to it) and tcp-listen; connects the source. */
static bool peers_start(void) {
  char err[256], log[4200], sink_addr[64];
  if (cm_tcp_listen(g_loop, &g_sink_listener, "127.0.0.1:0", 8, on_sink_conn, err, sizeof err))
    die(err);
  snprintf(sink_addr, sizeof sink_addr, "127.0.0.1:%d", cm_tcp_bound_port(&g_sink_listener));
  create_sessions(1, 1);
  snprintf(log, sizeof log, "%s/tcp-dial.log", opt.tmp);
  g_dial_pid = spawn_peer("tcp-dial", "--target", sink_addr, g_sess[0].tr, log);
  snprintf(log, sizeof log, "%s/tcp-listen.log", opt.tmp);
  g_listen_pid = spawn_peer("tcp-listen", "--listen", "127.0.0.1:0", g_sess[0].ti, log);
  int port = 0;
  for (int i = 0; i < 200 && !port; i++) {
    run_for(0.05);
    port = logged_port(log);
    if (!child_alive(g_listen_pid, "tcp-listen") || !child_alive(g_dial_pid, "tcp-dial"))
      return false;
  }
  if (!port) return false;
  printf("tcp-dial pid %d -> sink %s; tcp-listen pid %d on 127.0.0.1:%d (logs in %s)\n",
         (int)g_dial_pid, sink_addr, (int)g_listen_pid, port, opt.tmp);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  uv_tcp_init(g_loop, &g_src);
  uv_tcp_nodelay(&g_src, 1);
  uv_connect_t *req = malloc(sizeof *req);
  return uv_tcp_connect(req, &g_src, (struct sockaddr *)&a, src_connected) == 0;
}

static void peers_stop(void) {
  g_src_on = false;
  if (g_src_connected) {
    uv_close((uv_handle_t *)&g_src_poll, NULL);
    run_for(0.3);
    close(g_src_fd);
    close(g_src_pipe[0]);
    close(g_src_pipe[1]);
    g_src_connected = false;
  }
  stop_child(g_listen_pid, "tcp-listen");
  stop_child(g_dial_pid, "tcp-dial");
  sink_close();
  uv_close((uv_handle_t *)&g_sink_listener, NULL);
  run_for(0.1);
}

/* CPU seconds of a process over a window, as % of a core. */
static double cpu_share(pid_t pid, double before, double dt) {
  double sys;
  double now = bench_cpu_s(pid, &sys);
  return now < 0 || before < 0 ? -1 : (now - before) / dt * 100;
}

/* CPU shares (% of one core) of the pair's processes in a window. */
typedef struct peers_cpu {
  double relay, listen, dial;
} peers_cpu;

/* One window of the pair: warm-up, then opt.secs; returns bytes/s. */
static double peers_run(peers_cpu *cpu) {
  g_src_on = true;
  src_pump();
  run_for(1.0);
  double sys, t0 = now_s();
  uint64_t b0 = g_sink_bytes;
  double c_relay = bench_cpu_s(g_relay_pid, &sys), c_listen = bench_cpu_s(g_listen_pid, &sys),
         c_dial = bench_cpu_s(g_dial_pid, &sys), c_self = bench_cpu_s(getpid(), &sys);
  run_for(opt.secs);
  double dt = now_s() - t0;
  double rate = (double)(g_sink_bytes - b0) / dt;
  cpu->relay = cpu_share(g_relay_pid, c_relay, dt);
  cpu->listen = cpu_share(g_listen_pid, c_listen, dt);
  cpu->dial = cpu_share(g_dial_pid, c_dial, dt);
  printf("           cpu: relay %.0f%%, tcp-listen %.0f%%, tcp-dial %.0f%%, source+sink %.0f%% "
         "(of one core)\n",
         cpu->relay, cpu->listen, cpu->dial, cpu_share(getpid(), c_self, dt));
  g_src_on = false;
  run_for(0.3); /* let the pipe drain between windows */
  return rate;
}

#define MAX_ROUNDS 64

static double median(double *v, int n) {
  if (n == 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The best rounds and the paired per-round ratios of one way of running. */
typedef struct peers_tally {
  double best_pair, best_dp, ratio[MAX_ROUNDS], busiest;
  int n;
} peers_tally;

/* One round: (a), then the pair, adjacent windows. */
static void peers_round(peers_tally *t) {
  double x[2];
  if (!stream_run(T_RELAY, 1, 16384, 8, x)) printf("!! data-plane run had errors\n");
  printf("  %-12s %7.2f Gbit/s  (data plane alone: WebSocket peers of this process, as (a))\n",
         "relay", x[0] * 8 / 1e9);
  cpu_print(&g_cpu, "relay");
  t->best_dp = CM_MAX(x[0], t->best_dp);
  peers_cpu c;
  double r = peers_run(&c);
  /* The two windows are adjacent, so their ratio is free of the machine's
   * drift between rounds; the busiest client process's share against the
   * relay's says which would run out of a core first. */
  printf("  %-12s %7.2f Gbit/s  (through tcp-listen and tcp-dial); this round's ratio %.2f; "
         "busiest client process / relay CPU %.2f\n",
         "client pair", r * 8 / 1e9, x[0] > 0 ? r / x[0] : 0,
         c.relay > 0 ? CM_MAX(c.listen, c.dial) / c.relay : 0);
  t->best_pair = CM_MAX(r, t->best_pair);
  if (x[0] > 0 && t->n < MAX_ROUNDS) t->ratio[t->n++] = r / x[0];
  if (c.relay > 0) t->busiest = CM_MAX(t->busiest, CM_MAX(c.listen, c.dial) / c.relay);
}

static void peers_summary(const peers_tally *t, const char *how) {
  double ratio[MAX_ROUNDS];
  memcpy(ratio, t->ratio, sizeof ratio);
  printf("@@ peers | (e) tcp-listen -> relay -> tcp-dial, 1 connection%s, Gbit/s | %.2f | data "
         "plane (a) alone %.2f | pair/data plane %.2f (best rounds), %.2f (median of the paired "
         "rounds); busiest client process at most %.2f of the relay's CPU\n",
         how, t->best_pair * 8 / 1e9, t->best_dp * 8 / 1e9,
         t->best_dp > 0 ? t->best_pair / t->best_dp : 0, median(ratio, t->n), t->busiest);
}

/* Equal hosts: in a deployment the relay, tcp-listen and tcp-dial run on
 * three machines; here five processes share two cores, so the ratio of
 * the plain rounds is mostly how the scheduler shares them.  The second
 * kind of round gives the relay, tcp-listen and tcp-dial the same budget
 * each, opt.host_cpu % of a core, as three equal hosts would have; the
 * load generator, source and sink (this process) stay unlimited, as the
 * programs they stand for run elsewhere.  Whichever of the three needs
 * the most CPU per byte then sets the pair's rate, and (a) is the relay's
 * rate on that budget. */
enum { CG_RELAY, CG_LISTEN, CG_DIAL, CG_N };
static bench_cgroup g_cg[CG_N];

static bool hosts_make(void) {
  static const char *const name[CG_N] = {"relay-bench-relay", "relay-bench-listen",
                                         "relay-bench-dial"};
  const pid_t pid[CG_N] = {g_relay_pid, g_listen_pid, g_dial_pid};
  for (int i = 0; i < CG_N; i++)
    if (!bench_cgroup_make(&g_cg[i], name[i]) || !bench_cgroup_add(&g_cg[i], pid[i])) return false;
  return true;
}

static bool hosts_limit(int pct) {
  bool ok = true;
  for (int i = 0; i < CG_N; i++)
    ok = g_cg[i].dir[0] && bench_cgroup_limit(&g_cg[i], pct) && ok;
  return ok;
}

static void hosts_remove(void) {
  bench_cgroup_remove(&g_cg[CG_RELAY], g_relay_pid); /* the relay lives on */
  bench_cgroup_remove(&g_cg[CG_LISTEN], 0);
  bench_cgroup_remove(&g_cg[CG_DIAL], 0);
}

static void bench_peers(void) {
  printf("\n== (e) the client pair: TCP source -> tcp-listen -> relay -> tcp-dial -> TCP sink, "
         "1 connection, %.0f s, best of %d; beside (a) ==\n",
         opt.secs, opt.rounds);
  if (!peers_start()) {
    printf("!! the peers did not start (see %s/tcp-*.log)\n", opt.tmp);
    return;
  }
  bool hosts = opt.host_cpu > 0 && hosts_make();
  if (opt.host_cpu > 0 && !hosts)
    printf("!! no usable cgroup cpu controller (needs root): no equal-hosts rounds\n");
  peers_tally plain = {0}, equal = {0};
  for (int round = 0; round < opt.rounds; round++) {
    peers_round(&plain);
    if (!hosts) continue;
    if (!hosts_limit(opt.host_cpu)) {
      printf("!! could not set the CPU budgets\n");
      hosts = false;
      continue;
    }
    printf("  -- equal hosts: the relay, tcp-listen and tcp-dial held to %d%% of a core each --\n",
           opt.host_cpu);
    peers_round(&equal);
    hosts_limit(0);
  }
  peers_stop();
  if (g_cg[CG_RELAY].dir[0] || g_cg[CG_LISTEN].dir[0] || g_cg[CG_DIAL].dir[0]) hosts_remove();
  peers_summary(&plain, "");
  if (equal.n > 0) {
    char how[96];
    snprintf(how, sizeof how, ", each of relay, tcp-listen, tcp-dial held to %d%% of a core",
             opt.host_cpu);
    peers_summary(&equal, how);
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: bench_relay --relay-bin PATH | --connect HOST:PORT [--pid PID]\n"
          "       [--tmp DIR] [--haproxy PATH] [--what crypto,throughput,msgs,latency,rss,peers]\n"
          "       [--sessions N] [--secs S] [--rounds R] [--cipher aes128|aes256]\n"
          "       [--workers N] [--streams S]  (relay workers, haproxy nbthread; (a)'s sessions)\n"
          "       [--relay-arg FLAG]           (one more flag for relay serve)\n"
          "       [--host-cpu PCT]  (peers: also rounds with relay, tcp-listen and tcp-dial each\n"
          "                          held to PCT%% of a core, a cgroup each; needs root)\n"
          "       [--plain 1]  (no TLS anywhere: relay --plain, plain baselines, no haproxy)\n");
  exit(2);
}

static bool wants(const char *what) {
  const char *p = strstr(opt.what, what);
  return p != NULL || strcmp(opt.what, "all") == 0;
}

static void parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i += 2) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    if (strcmp(a, "--relay-bin") == 0)
      opt.relay_bin = v;
    else if (strcmp(a, "--connect") == 0)
      opt.connect = v;
    else if (strcmp(a, "--pid") == 0)
      opt.pid = atoi(v);
    else if (strcmp(a, "--haproxy") == 0)
      opt.haproxy = v;
    else if (strcmp(a, "--tmp") == 0)
      opt.tmp = v;
    else if (strcmp(a, "--what") == 0)
      opt.what = v;
    else if (strcmp(a, "--sessions") == 0)
      opt.sessions = atoi(v);
    else if (strcmp(a, "--secs") == 0)
      opt.secs = atof(v);
    else if (strcmp(a, "--cipher") == 0)
      opt.cipher = v;
    else if (strcmp(a, "--rounds") == 0)
      opt.rounds = atoi(v);
    else if (strcmp(a, "--workers") == 0)
      opt.workers = atoi(v);
    else if (strcmp(a, "--streams") == 0)
      opt.streams = atoi(v);
    else if (strcmp(a, "--relay-arg") == 0)
      opt.relay_arg = v;
    else if (strcmp(a, "--host-cpu") == 0)
      opt.host_cpu = atoi(v);
    else if (strcmp(a, "--plain") == 0)
      opt.plain = strcmp(v, "1") == 0;
    else
      usage();
  }
  if ((!opt.relay_bin && !opt.connect) || opt.rounds < 1) usage();
  if (opt.streams <= 0) opt.streams = opt.workers > 0 ? opt.workers : 1;
  int o = snprintf(g_area, sizeof g_area, "%s", opt.plain ? "data plane, plain" : "data plane");
  if (opt.workers > 0)
    snprintf(g_area + o, sizeof g_area - (size_t)o, ", %d worker%s", opt.workers,
             opt.workers == 1 ? "" : "s");
  if (strcmp(opt.cipher, "aes128") != 0 && strcmp(opt.cipher, "aes256") != 0) usage();
}

static void setup_tls(void) {
  char err[512];
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/cert", opt.tmp);
  /* The same development certificate the relay makes and uses (made here
   * first, so the baselines present the same key type and chain). */
  if (rly_dev_cert_ensure(dir, g_cert, g_key, err, sizeof err) != 0) die(err);
  cm_tls_config c;
  cm_tls_config_init(&c);
  c.ca_file = g_cert;
  c.verify_peer = true;
  if (opt.plain) return; /* every connection plain TCP, no haproxy */
  g_cli_tls = cm_tls_ctx_new_client(&c, err, sizeof err);
  if (!g_cli_tls) die(err);
  const char *suite =
      strcmp(opt.cipher, "aes256") == 0 ? "TLS_AES_256_GCM_SHA384" : "TLS_AES_128_GCM_SHA256";
  SSL_CTX_set_ciphersuites(cm_tls_ctx_ssl_ctx(g_cli_tls), suite);
  cm_tls_config s;
  cm_tls_config_init(&s);
  s.cert_file = g_cert;
  s.key_file = g_key;
  s.verify_peer = false;
  g_srv_tls = cm_tls_ctx_new_server(&s, err, sizeof err);
  if (!g_srv_tls) die(err);
}

int main(int argc, char **argv) {
  parse_args(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0); /* interleave sanely with children's output */
  cm_log_set_level(CM_LOG_ERROR);   /* link-down notices at teardown are expected */
  char tmpl[] = "/tmp/bench_relay.XXXXXX";
  if (!opt.tmp && !(opt.tmp = mkdtemp(tmpl))) die("mkdtemp failed");
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max; /* the relay inherits it */
  setrlimit(RLIMIT_NOFILE, &rl);

  g_loop = uv_default_loop();
  uv_timer_init(g_loop, &g_tick);
  uv_timer_start(&g_tick, on_tick, 5, 5);
  setup_tls();

  char err[256];
  if (cm_tcp_listen(g_loop, &g_listener, "127.0.0.1:0", 1024, on_baseline_conn, err, sizeof err) !=
      0)
    die(err);
  g_listen_port = cm_tcp_bound_port(&g_listener);

  if (opt.connect) {
    char host[256];
    int port;
    if (cm_parse_hostport(opt.connect, "127.0.0.1", host, sizeof host, &port) != 0 ||
        cm_sockaddr_from(host, port, &g_relay_addr) != 0)
      die("bad --connect address");
    g_relay_pid = opt.pid;
  } else {
    start_relay();
  }
  if (opt.haproxy && *opt.haproxy && !opt.plain) start_haproxy();
  printf("clients offer only %s; baseline server on 127.0.0.1:%d; tmp %s\n",
         opt.plain                           ? "plain TCP (--plain 1)"
         : strcmp(opt.cipher, "aes256") == 0 ? "TLS_AES_256_GCM_SHA384"
                                             : "TLS_AES_128_GCM_SHA256",
         g_listen_port, opt.tmp);

  if (wants("crypto") || wants("throughput")) bench_crypto();
  if (wants("throughput")) bench_throughput();
  if (wants("msgs")) bench_msgs();
  if (wants("latency")) bench_latency();
  if (wants("rss")) bench_rss();
  if (wants("peers") && opt.relay_bin && !opt.plain) bench_peers();

  if (g_haproxy_pid > 0) stop_child(g_haproxy_pid, "haproxy");
  if (!opt.connect) stop_child(g_relay_pid, "relay");
  uv_close((uv_handle_t *)&g_listener, NULL);
  uv_close((uv_handle_t *)&g_tick, NULL);
  uv_run(g_loop, UV_RUN_DEFAULT);
  cm_tls_ctx_free(g_cli_tls);
  cm_tls_ctx_free(g_srv_tls);
  free(g_batch);
  free(g_sess);
  return 0;
}
