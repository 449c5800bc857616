/*
 * bench_validate.c — the controller link under load (issue 3): Validate
 * calls per second over ONE link with 100 calls in flight, and p50/p99 call
 * latency, beside a plain HTTP/2 baseline measured in the same run.
 *
 * Ours, two ways:
 *   embedded  tun_relay (this thread) and the reference controller
 *             (ctl_embedded_start: its own thread and loop) over the
 *             in-process socketpair, exactly as `relay serve` runs them;
 *   tls       tun_relay listening with mutual TLS in this process and
 *             `relay-controller run` as a separate process dialling it
 *             (certificates made here with the project's CA code).
 * Each session's Validate is a real one: a session is created first with
 * an Admin call, then its initiator token is validated again and again
 * (the controller hashes the token, looks the session up and answers a
 * full SlotDecision).
 *
 * Baseline: h2load (nghttp2's load generator, one client, -m 100) against
 * a minimal nghttp2 server in this process (on its own thread) that
 * answers every POST with the same headers, gRPC-framed SlotDecision and
 * grpc-status trailer our controller sends: the cost of HTTP/2 itself, with
 * no protobuf decoding, registry or call bookkeeping — and h2load is a
 * tuned C++ client.  Plain h2c for the embedded figure, TLS (ALPN h2) for
 * the tls figure.  The ratio is ours / baseline.
 *
 * Counter reports (--stats N, default 10,000; 0: skip), embedded: N
 * sessions are created, then every session's STATS event (the one a busy
 * session sends each second) goes over the Events stream round after round
 * for the window, each round confirmed by reading the last session's
 * counters back with Admin GET.  Printed: reports/s and the CPU one report
 * costs on each side, so the cost of N busy sessions (N reports a second)
 * is a fraction of a core; the baseline is the CPU of one Validate call in
 * the same run (both threads, measured the same way).
 *
 * Each figure is the best of --rounds interleaved rounds (default 2), so a
 * burst of unrelated load on a shared machine hits one round, not one side.
 * Output: details, then "@@" summary lines for the run script.
 */
#include <errno.h>
#include <fcntl.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "controller-stub/controller.h"
#include "relay/relay.h"
#include "benchproc.h"
#include "tunnel/tunnel.h"

#define W(lit)       ((char[]){lit}) /* a writable copy, for argv */
#define MAX_INFLIGHT 1024

static struct {
  const char *controller_bin, *h2load, *tmp;
  int concurrency, rounds, stats;
  double secs;
} opt = {.concurrency = 100, .secs = 3, .rounds = 2, .stats = 10000};

static uv_loop_t *g_loop;
static uv_timer_t g_tick;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_validate: %s\n", what);
  exit(1);
}

static void on_tick(uv_timer_t *t) { (void)t; }

static double cpu_s(clockid_t which) {
  struct timespec ts;
  clock_gettime(which, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool run_until(const bool *flag, double timeout) {
  double end = now_s() + timeout;
  while (!*flag && now_s() < end)
    uv_run(g_loop, UV_RUN_ONCE);
  return *flag;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p) {
  return n ? v[(size_t)(p * (double)(n - 1) + 0.5)] : 0;
}

/* ---- the relay side: our calls -------------------------------------------------------- */

static tun_relay *g_relay;
static size_t g_links;
static bool g_link_up;
static char g_sid[64], g_token[64];
static bool g_created;

static void on_links(void *ud, size_t links) {
  (void)ud;
  g_links = links;
  g_link_up = links > 0;
}

static const tun_relay_cbs RELAY_CBS = {NULL, on_links, NULL};

static char g_remote[] = "127.0.0.1:40000", g_node[] = "bench";

static void on_created(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                       const char *controller) {
  (void)ud, (void)controller;
  const Relay__V1__AdminResponse *r = (const Relay__V1__AdminResponse *)resp;
  if (status != TUN_GRPC_OK || !r->created || !r->created->status) {
    fprintf(stderr, "Admin CREATE failed: %s %s\n", tun_grpc_status_name(status),
            message ? message : (r && r->error ? r->error : ""));
    die("cannot create a session");
  }
  snprintf(g_sid, sizeof g_sid, "%s", r->created->status->id);
  snprintf(g_token, sizeof g_token, "%s", r->created->initiator_token);
  g_created = true;
}

static void create_session(void) {
  Relay__V1__AdminRequest req = RELAY__V1__ADMIN_REQUEST__INIT;
  req.op = RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE;
  req.relay_node_id = g_node;
  req.auth_disabled = true;
  int st;
  g_created = false;
  if (!tun_relay_call(g_relay, TUN_PATH_ADMIN, &req.base, &relay__v1__admin_response__descriptor,
                      5000, on_created, NULL, &st))
    die("Admin call failed at once");
  if (!run_until(&g_created, 10)) die("Admin CREATE timed out");
}

static void fill_request(Relay__V1__SlotRequest *req) {
  relay__v1__slot_request__init(req);
  req->session_id = g_sid;
  req->token = g_token;
  req->requested_role = RELAY__V1__ROLE__ROLE_INITIATOR;
  req->remote_addr = g_remote;
  req->relay_node_id = g_node;
}

/* Closed loop: `concurrency` calls in flight; each answer starts the next
 * until the end of the window. */
static struct {
  double t_start[MAX_INFLIGHT];
  double *lat;
  size_t nlat, maxlat;
  double measure_from, stop_at;
  uint64_t done_in_window, done, failed, denied;
  int inflight;
  bool drained;
} g_run;

static void start_call(int slot);

static void on_validated(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                         const char *controller) {
  (void)message, (void)controller;
  int slot = (int)(intptr_t)ud;
  double t = now_s();
  g_run.inflight--;
  g_run.done++;
  if (status != TUN_GRPC_OK) {
    if (g_run.failed++ < 3)
      fprintf(stderr, "Validate: %s %s\n", tun_grpc_status_name(status), message ? message : "");
  } else if (!((const Relay__V1__SlotDecision *)resp)->allow) {
    g_run.denied++;
  }
  if (g_run.t_start[slot] >= g_run.measure_from && t <= g_run.stop_at) {
    g_run.done_in_window++;
    if (g_run.nlat < g_run.maxlat) g_run.lat[g_run.nlat++] = t - g_run.t_start[slot];
  }
  if (t < g_run.stop_at)
    start_call(slot);
  else if (g_run.inflight == 0)
    g_run.drained = true;
}

static void start_call(int slot) {
  Relay__V1__SlotRequest req;
  fill_request(&req);
  int st;
  g_run.t_start[slot] = now_s();
  if (!tun_relay_call(g_relay, TUN_PATH_VALIDATE, &req.base, &relay__v1__slot_decision__descriptor,
                      5000, on_validated, (void *)(intptr_t)slot, &st)) {
    g_run.failed++;
    return;
  }
  g_run.inflight++;
}

/* Returns calls/s; lat_us gets p50 and p99. */
static double measure_calls(double lat_us[2]) {
  memset(&g_run, 0, sizeof g_run);
  g_run.maxlat = 4u << 20;
  g_run.lat = malloc(g_run.maxlat * sizeof *g_run.lat);
  double t0 = now_s();
  g_run.measure_from = t0 + 1.0; /* warm-up */
  g_run.stop_at = g_run.measure_from + opt.secs;
  for (int i = 0; i < opt.concurrency; i++)
    start_call(i);
  run_until(&g_run.drained, opt.secs + 15);
  qsort(g_run.lat, g_run.nlat, sizeof *g_run.lat, cmp_double);
  lat_us[0] = pct(g_run.lat, g_run.nlat, 0.50) * 1e6;
  lat_us[1] = pct(g_run.lat, g_run.nlat, 0.99) * 1e6;
  if (g_run.failed || g_run.denied)
    printf("!! %llu calls failed, %llu denied\n", (unsigned long long)g_run.failed,
           (unsigned long long)g_run.denied);
  free(g_run.lat);
  return (double)g_run.done_in_window / opt.secs;
}

static bool g_relay_closed;
static void on_relay_closed(void *ud) {
  (void)ud;
  g_relay_closed = true;
}

static void close_relay(void) {
  g_relay_closed = false;
  tun_relay_close(g_relay, on_relay_closed, NULL);
  run_until(&g_relay_closed, 10);
  tun_relay_free(g_relay);
  g_relay = NULL;
}

/* ---- counter reports ---------------------------------------------------------------- */

static struct {
  char (*ids)[CM_TOKEN_LEN + 1];
  int n, created, inflight;
  bool all_created, confirmed;
  uint64_t round;
} g_st;

static void create_next(void);

static void on_stats_created(void *ud, int status, const char *message,
                             const ProtobufCMessage *resp, const char *controller) {
  (void)ud, (void)message, (void)controller;
  const Relay__V1__AdminResponse *r = (const Relay__V1__AdminResponse *)resp;
  g_st.inflight--;
  if (status != TUN_GRPC_OK || !r->created || !r->created->status) die("stats: create failed");
  snprintf(g_st.ids[g_st.created++], CM_TOKEN_LEN + 1, "%s", r->created->status->id);
  if (g_st.created == g_st.n)
    g_st.all_created = true;
  else
    create_next();
}

static void create_next(void) {
  if (g_st.created + g_st.inflight >= g_st.n) return;
  Relay__V1__AdminRequest req = RELAY__V1__ADMIN_REQUEST__INIT;
  req.op = RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE;
  req.relay_node_id = g_node;
  req.auth_disabled = true;
  int st;
  if (!tun_relay_call(g_relay, TUN_PATH_ADMIN, &req.base, &relay__v1__admin_response__descriptor,
                      10000, on_stats_created, NULL, &st))
    die("stats: create failed at once");
  g_st.inflight++;
}

static void check_round(void);

static void on_checked(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                       const char *controller) {
  (void)ud, (void)message, (void)controller;
  const Relay__V1__AdminResponse *r = (const Relay__V1__AdminResponse *)resp;
  if (status != TUN_GRPC_OK || r->n_sessions != 1) die("stats: GET failed");
  if (r->sessions[0]->bytes_in == g_st.round)
    g_st.confirmed = true;
  else
    check_round();
}

/* The registry applies events in stream order: once the last session shows
 * this round, every report of the round has been applied. */
static void check_round(void) {
  Relay__V1__AdminRequest req = RELAY__V1__ADMIN_REQUEST__INIT;
  req.op = RELAY__V1__ADMIN_OP__ADMIN_OP_GET;
  req.session_id = g_st.ids[g_st.n - 1];
  req.auth_disabled = true;
  int st;
  if (!tun_relay_call(g_relay, TUN_PATH_ADMIN, &req.base, &relay__v1__admin_response__descriptor,
                      10000, on_checked, NULL, &st))
    die("stats: GET failed at once");
}

static void send_round(void) {
  g_st.round++;
  for (int i = 0; i < g_st.n; i++) {
    Relay__V1__SessionEvent se = RELAY__V1__SESSION_EVENT__INIT;
    se.type = RELAY__V1__SESSION_EVENT__TYPE__STATS;
    se.session_id = g_st.ids[i];
    se.counter_epoch = 1;
    se.bytes_in = g_st.round;
    se.bytes_out = g_st.round;
    se.last_activity_unix = cm_now_wall_ms() / 1000;
    Relay__V1__RelayEvent ev = RELAY__V1__RELAY_EVENT__INIT;
    ev.kind_case = RELAY__V1__RELAY_EVENT__KIND_SESSION;
    ev.session = &se;
    if (tun_relay_send_event(g_relay, NULL, &ev) != 0) die("stats: event not sent");
  }
  g_st.confirmed = false;
  check_round();
}

/* Reports/s; per-report CPU (us) of this thread and of the controller's. */
static double measure_stats(double *relay_us, double *ctl_us) {
  g_st.n = opt.stats;
  g_st.ids = calloc((size_t)g_st.n, sizeof *g_st.ids);
  g_st.created = g_st.inflight = 0;
  g_st.all_created = false;
  for (int i = 0; i < 200; i++)
    create_next();
  if (!run_until(&g_st.all_created, 120)) die("stats: sessions not created in time");
  double t0 = now_s(), th0 = cpu_s(CLOCK_THREAD_CPUTIME_ID), pr0 = cpu_s(CLOCK_PROCESS_CPUTIME_ID);
  uint64_t rounds = 0;
  while (now_s() - t0 < opt.secs) {
    send_round();
    if (!run_until(&g_st.confirmed, 30)) die("stats: a round was not confirmed");
    rounds++;
  }
  double wall = now_s() - t0, th = cpu_s(CLOCK_THREAD_CPUTIME_ID) - th0,
         pr = cpu_s(CLOCK_PROCESS_CPUTIME_ID) - pr0;
  double reports = (double)rounds * g_st.n;
  *relay_us = th / reports * 1e6;
  *ctl_us = (pr - th) / reports * 1e6;
  free(g_st.ids);
  return reports / wall;
}

static double ours_embedded(double lat[2], double *validate_cpu_us, double stats[3]) {
  char err[256];
  tun_relay_config rc = {
      .node_id = "bench", .version = "bench", .public_url = "https://127.0.0.1:1"};
  g_relay = tun_relay_new(g_loop, &rc, &RELAY_CBS, NULL, err, sizeof err);
  if (!g_relay) die(err);
  int fds[2];
  if (tun_socketpair(fds) != 0) die("socketpair");
  ctl_config cc = {.accept_unauthenticated = true};
  ctl_embedded *e = ctl_embedded_start(&cc, fds[1], err, sizeof err);
  if (!e) die(err);
  if (tun_relay_add_fd(g_relay, fds[0], "embedded") != 0) die("add_fd");
  if (!run_until(&g_link_up, 10)) die("embedded link did not come up");
  create_session();
  double c0 = cpu_s(CLOCK_PROCESS_CPUTIME_ID);
  double rate = measure_calls(lat);
  *validate_cpu_us = (cpu_s(CLOCK_PROCESS_CPUTIME_ID) - c0) / (double)g_run.done * 1e6;
  if (opt.stats > 0) stats[0] = measure_stats(&stats[1], &stats[2]);
  close_relay();
  ctl_embedded_stop(e);
  g_link_up = false;
  return rate;
}

/* Two processes over mutual TLS: CA and certificates made with the
 * project's own enrolment code, `relay-controller run` dials us. */
static double ours_tls(double lat[2]) {
  char err[512], cadir[4200], key[4200], crt[4200], log[4200], relay_arg[64];
  snprintf(cadir, sizeof cadir, "%s/ca", opt.tmp);
  snprintf(key, sizeof key, "%s/relay.key", opt.tmp);
  snprintf(crt, sizeof crt, "%s/relay.crt", opt.tmp);
  snprintf(log, sizeof log, "%s/controller.log", opt.tmp);
  if (ctl_init_ca(cadir, "bench CA", "bench controller", 2, err, sizeof err) != 0) die(err);
  char *csr = NULL, *cert = NULL;
  bool created;
  if (rly_gen_csr(key, "bench", &csr, &created, err, sizeof err) != 0) die(err);
  cm_strlist hosts = {0};
  cm_strlist_push(&hosts, "127.0.0.1");
  if (ctl_sign_csr(cadir, csr, &hosts, 2, &cert, err, sizeof err) != 0) die(err);
  if (cm_write_file_atomic(crt, cert, strlen(cert), 0600, false) != 0) die("write cert");
  free(csr);
  free(cert);
  cm_strlist_free(&hosts);
  ctl_ca_paths paths;
  ctl_ca_paths_for(cadir, &paths);

  tun_relay_config rc = {.node_id = "bench",
                         .version = "bench",
                         .public_url = "https://127.0.0.1:1",
                         .cert_file = crt,
                         .key_file = key,
                         .ca_file = paths.ca_cert};
  g_relay = tun_relay_new(g_loop, &rc, &RELAY_CBS, NULL, err, sizeof err);
  if (!g_relay) die(err);
  if (tun_relay_listen(g_relay, "127.0.0.1:0", err, sizeof err) != 0) die(err);
  snprintf(relay_arg, sizeof relay_arg, "127.0.0.1:%d", tun_relay_port(g_relay));
  char *argv[] = {(char *)opt.controller_bin,
                  W("run"),
                  W("--relay"),
                  relay_arg,
                  W("--ca-dir"),
                  cadir,
                  W("--accept-unauthenticated"),
                  W("--backoff-base"),
                  W("100ms"),
                  NULL};
  pid_t pid = bench_spawn(argv, log, false);
  if (pid < 0) die("cannot start relay-controller");
  double rate = 0;
  if (!run_until(&g_link_up, 15)) {
    printf("!! the controller did not connect within 15 s (see %s)\n", log);
  } else {
    create_session();
    rate = measure_calls(lat);
  }
  kill(pid, SIGTERM);
  int st;
  waitpid(pid, &st, 0);
  if (WIFSIGNALED(st) && WTERMSIG(st) != SIGTERM)
    printf("!! relay-controller died of signal %d\n", WTERMSIG(st));
  else if (WIFEXITED(st) && WEXITSTATUS(st) != 0)
    printf("!! relay-controller exited with status %d (see %s)\n", WEXITSTATUS(st), log);
  close_relay();
  g_link_up = false;
  return rate;
}

/* ---- baseline: a minimal nghttp2 server answering like our controller ------------------- */

static cm_buf g_resp_body; /* gRPC-framed SlotDecision */

typedef struct h2srv {
  cm_stream *st;
  nghttp2_session *ng;
  cm_list node;
} h2srv;

static cm_list g_h2_conns; /* the baseline server's live connections */

#define NV(n, v)                                                                                   \
  { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE }

static ssize_t body_read(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *user) {
  (void)src, (void)user;
  size_t n = cm_buf_size(&g_resp_body);
  if (n > len) n = len; /* never: the body is tiny */
  memcpy(buf, cm_buf_head(&g_resp_body), n);
  nghttp2_nv tr[] = {NV("grpc-status", "0")};
  *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
  nghttp2_submit_trailer(ng, sid, tr, 1);
  return (ssize_t)n;
}

static int h2_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  (void)ud;
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
      (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    nghttp2_nv hdr[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider p = {.read_callback = body_read};
    nghttp2_submit_response(ng, f->hd.stream_id, hdr, 2, &p);
  }
  return 0;
}

static void h2_flush(h2srv *h) {
  for (;;) {
    const uint8_t *d;
    ssize_t n = nghttp2_session_mem_send(h->ng, &d);
    if (n <= 0) break;
    cm_stream_write(h->st, d, (size_t)n);
  }
}

static void h2_on_open(cm_stream *s) {
  h2srv *h = cm_stream_get_data(s);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000}};
  nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, 1);
  h2_flush(h);
}

static void h2_on_read(cm_stream *s, uint8_t *d, size_t n) {
  h2srv *h = cm_stream_get_data(s);
  if (nghttp2_session_mem_recv(h->ng, d, n) < 0) {
    cm_stream_abort(s);
    return;
  }
  h2_flush(h);
}

static void h2_on_close(cm_stream *s, int err, const char *msg) {
  (void)err, (void)msg;
  h2srv *h = cm_stream_get_data(s);
  cm_list_remove(&h->node);
  nghttp2_session_del(h->ng);
  free(h);
}

static const cm_stream_cbs H2_CBS = {h2_on_open, h2_on_read, NULL, h2_on_close};
static cm_tls_ctx *g_h2_tls;

static void h2_on_conn(uv_stream_t *server, int status) {
  if (status < 0) return;
  h2srv *h = calloc(1, sizeof *h);
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame_recv);
  nghttp2_session_server_new(&h->ng, cbs, h);
  nghttp2_session_callbacks_del(cbs);
  cm_stream_opts o = {.tls = g_h2_tls};
  int err;
  h->st = cm_stream_accept(server, &o, &H2_CBS, h, &err);
  if (!h->st) {
    nghttp2_session_del(h->ng);
    free(h);
    return;
  }
  cm_list_push_back(&g_h2_conns, &h->node);
}

/* The baseline server runs on its own thread and loop, like the embedded
 * controller, while this thread waits for h2load. */
static struct {
  uv_loop_t loop;
  uv_tcp_t tcp;
  uv_async_t stop;
  uv_thread_t th;
  int port;
} g_h2;

static void h2_on_stop(uv_async_t *a) {
  cm_list *n = g_h2_conns.next;
  while (n != &g_h2_conns) {
    h2srv *h = cm_container_of(n, h2srv, node);
    n = n->next;
    cm_stream_abort(h->st);
  }
  uv_close((uv_handle_t *)&g_h2.tcp, NULL);
  uv_close((uv_handle_t *)a, NULL);
}

static void h2_thread(void *ud) {
  (void)ud;
  uv_run(&g_h2.loop, UV_RUN_DEFAULT);
}

static void h2_start(bool tls) {
  char err[256];
  g_h2_tls = NULL;
  if (tls) {
    char dir[4200], crt[4200], key[4200];
    snprintf(dir, sizeof dir, "%s/h2cert", opt.tmp);
    if (rly_dev_cert_ensure(dir, crt, key, err, sizeof err) != 0) die(err);
    cm_tls_config c;
    cm_tls_config_init(&c);
    c.cert_file = crt;
    c.key_file = key;
    c.verify_peer = false;
    c.alpn = "h2";
    g_h2_tls = cm_tls_ctx_new_server(&c, err, sizeof err);
    if (!g_h2_tls) die(err);
  }
  uv_loop_init(&g_h2.loop);
  cm_list_init(&g_h2_conns);
  if (cm_tcp_listen(&g_h2.loop, &g_h2.tcp, "127.0.0.1:0", 128, h2_on_conn, err, sizeof err) != 0)
    die(err);
  g_h2.port = cm_tcp_bound_port(&g_h2.tcp);
  uv_async_init(&g_h2.loop, &g_h2.stop, h2_on_stop);
  uv_thread_create(&g_h2.th, h2_thread, NULL);
}

static void h2_stop(void) {
  uv_async_send(&g_h2.stop);
  uv_thread_join(&g_h2.th);
  uv_loop_close(&g_h2.loop);
  cm_tls_ctx_free(g_h2_tls);
  g_h2_tls = NULL;
}

/* Runs h2load against the baseline server; returns req/s and fills the
 * mean request time (h2load reports mean and sd, not percentiles). */
static double h2load_run(bool tls, double *mean_us) {
  char reqfile[4200], log[4200], url[128], dur[16], warm[16];
  snprintf(reqfile, sizeof reqfile, "%s/validate.grpc", opt.tmp);
  snprintf(log, sizeof log, "%s/h2load-%s.log", opt.tmp, tls ? "tls" : "h2c");
  Relay__V1__SlotRequest req;
  fill_request(&req);
  cm_buf b;
  cm_buf_init(&b, 0);
  tun_grpc_encode(&b, &req.base);
  cm_write_file_atomic(reqfile, cm_buf_head(&b), cm_buf_size(&b), 0600, false);
  cm_buf_free(&b);
  h2_start(tls);
  snprintf(url, sizeof url, "%s://127.0.0.1:%d%s", tls ? "https" : "http", g_h2.port,
           TUN_PATH_VALIDATE);
  snprintf(dur, sizeof dur, "%.0f", opt.secs);
  snprintf(warm, sizeof warm, "1");
  char conc[16];
  snprintf(conc, sizeof conc, "%d", opt.concurrency);
  char *argv[] = {(char *)opt.h2load,
                  W("-c"),
                  W("1"),
                  W("-t"),
                  W("1"),
                  W("-m"),
                  conc,
                  W("-D"),
                  dur,
                  W("--warm-up-time"),
                  warm,
                  W("-d"),
                  reqfile,
                  W("-H"),
                  W("content-type: application/grpc"),
                  W("-H"),
                  W("te: trailers"),
                  url,
                  NULL};
  pid_t pid = bench_spawn(argv, log, false);
  if (pid < 0) die("cannot start h2load");
  int st;
  waitpid(pid, &st, 0);
  h2_stop();
  char *out = NULL;
  size_t n;
  double rps = 0;
  *mean_us = 0;
  if (cm_read_file(log, 1 << 20, &out, &n) == 0) {
    const char *p = strstr(out, "finished in ");
    if (p && (p = strchr(p, ','))) rps = strtod(p + 1, NULL);
    const char *q = strstr(out, "succeeded, ");
    long failed = q ? strtol(q + 11, NULL, 10) : -1;
    const char *t = strstr(out, "time for request:");
    if (t) {
      /* "min max mean sd +/- sd": take the third value with its unit. */
      char u[3][8];
      double v[3];
      if (sscanf(t + 17, "%lf%7s %lf%7s %lf%7s", &v[0], u[0], &v[1], u[1], &v[2], u[2]) == 6)
        *mean_us = v[2] * (strcmp(u[2], "ms") == 0 ? 1000 : strcmp(u[2], "s") == 0 ? 1e6 : 1);
    }
    if (failed != 0 || rps == 0) printf("!! h2load reported failures (see %s)\n", log);
    free(out);
  }
  return rps;
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr, "usage: bench_validate --controller-bin PATH [--h2load PATH] [--tmp DIR]\n"
                  "       [--concurrency N] [--secs S] [--rounds R] [--stats SESSIONS]\n");
  exit(2);
}

int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--controller-bin") == 0)
      opt.controller_bin = argv[i + 1];
    else if (strcmp(argv[i], "--h2load") == 0)
      opt.h2load = argv[i + 1];
    else if (strcmp(argv[i], "--tmp") == 0)
      opt.tmp = argv[i + 1];
    else if (strcmp(argv[i], "--concurrency") == 0)
      opt.concurrency = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--secs") == 0)
      opt.secs = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--rounds") == 0)
      opt.rounds = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--stats") == 0)
      opt.stats = atoi(argv[i + 1]);
    else
      usage();
  }
  if (argc % 2 == 0 || opt.concurrency < 1 || opt.concurrency > MAX_INFLIGHT || opt.rounds < 1)
    usage();
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0); /* interleave sanely with children's output */
  cm_log_set_level(CM_LOG_ERROR);   /* link-down notices at teardown are expected */
  char tmpl[] = "/tmp/bench_validate.XXXXXX";
  if (!opt.tmp && !(opt.tmp = mkdtemp(tmpl))) die("mkdtemp");
  g_loop = uv_default_loop();
  uv_timer_init(g_loop, &g_tick);
  uv_timer_start(&g_tick, on_tick, 5, 5);

  /* The baseline's answer: what our controller answers for this session. */
  Relay__V1__SlotDecision d = RELAY__V1__SLOT_DECISION__INIT;
  d.allow = true;
  d.slot = RELAY__V1__ROLE__ROLE_INITIATOR;
  d.http_status = 200;
  d.reason = W("");
  d.message = W("");
  d.expires_at_unix = 1900000000;
  d.peer_wait_seconds = 120;
  cm_buf_init(&g_resp_body, 0);
  tun_grpc_encode(&g_resp_body, &d.base);

  printf("== controller link: Validate over one link, %d in flight, %.0f s after 1 s warm-up,"
         " best of %d rounds ==\n",
         opt.concurrency, opt.secs, opt.rounds);
  double ours_e = 0, ours_t = 0, base_h2c = 0, base_tls = 0;
  double lat_e[2] = {0, 0}, lat_t[2] = {0, 0}, mean_h2c = 0, mean_tls = 0;
  double best_stats[3] = {0, 0, 0}, best_vcpu = 0;
  for (int round = 0; round < opt.rounds; round++) {
    double r, lat[2], mean, vcpu = 0, stats[3] = {0, 0, 0};
    r = ours_embedded(lat, &vcpu, stats);
    printf("  ours embedded (socketpair, 2 threads)  %9.0f calls/s  p50 %6.0f us  p99 %6.0f us"
           "  (%.1f us CPU a call)\n",
           r, lat[0], lat[1], vcpu);
    if (r > ours_e) ours_e = r, lat_e[0] = lat[0], lat_e[1] = lat[1];
    if (opt.stats > 0) {
      printf("  counter reports, %d sessions          %9.0f reports/s  CPU a report: relay %.2f us,"
             " controller %.2f us\n",
             opt.stats, stats[0], stats[1], stats[2]);
      if (stats[0] > best_stats[0]) {
        memcpy(best_stats, stats, sizeof stats);
        best_vcpu = vcpu;
      }
    }
    if (opt.controller_bin) {
      r = ours_tls(lat);
      printf("  ours mTLS (relay-controller process)   %9.0f calls/s  p50 %6.0f us  p99 %6.0f us\n",
             r, lat[0], lat[1]);
      if (r > ours_t) ours_t = r, lat_t[0] = lat[0], lat_t[1] = lat[1];
    }
    if (opt.h2load) {
      r = h2load_run(false, &mean);
      printf("  h2load -> nghttp2 server, h2c         %9.0f req/s    mean %6.0f us\n", r, mean);
      if (r > base_h2c) base_h2c = r, mean_h2c = mean;
      r = h2load_run(true, &mean);
      printf("  h2load -> nghttp2 server, TLS         %9.0f req/s    mean %6.0f us\n", r, mean);
      if (r > base_tls) base_tls = r, mean_tls = mean;
    }
  }
  printf("@@ controller link | Validate calls/s, embedded (p50/p99 us) | %.0f (%.0f/%.0f) | "
         "h2load h2c %.0f (mean %.0f us) | ours/h2load %.2f\n",
         ours_e, lat_e[0], lat_e[1], base_h2c, mean_h2c, base_h2c > 0 ? ours_e / base_h2c : 0);
  if (opt.stats > 0) {
    double per = best_stats[1] + best_stats[2];
    printf(
        "@@ controller link | counter reports, %d busy sessions: CPU per second (relay + "
        "controller) | %.1f ms (%.1f%% of a core; max %.0f reports/s) | one Validate %.1f us CPU "
        "| report/Validate %.2f\n",
        opt.stats, per * opt.stats / 1000, per * opt.stats / 1e4, best_stats[0], best_vcpu,
        best_vcpu > 0 ? per / best_vcpu : 0);
  }
  if (opt.controller_bin)
    printf(
        "@@ controller link | Validate calls/s, mTLS 2 processes (p50/p99 us) | %.0f (%.0f/%.0f) | "
        "h2load TLS %.0f (mean %.0f us) | ours/h2load %.2f\n",
        ours_t, lat_t[0], lat_t[1], base_tls, mean_tls, base_tls > 0 ? ours_t / base_tls : 0);
  uv_close((uv_handle_t *)&g_tick, NULL);
  uv_run(g_loop, UV_RUN_DEFAULT);
  cm_buf_free(&g_resp_body);
  return 0;
}
