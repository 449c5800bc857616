/*
 * soak.c — the fault harness (docs/SOAK.md): N long-lived sessions whose
 * peers stream checked pseudo-random messages through a real `relay serve`
 * with a remote `relay-controller run`, while faults are injected:
 *
 *   - the controller kill -9'd every --ctl-every seconds and restarted
 *     --ctl-down later (durable registry: sessions survive it);
 *   - the controller SIGSTOPped once for --hang-for seconds (longer than the
 *     relay's --call-timeout), then SIGCONTed;
 *   - the relay kill -9'd --relay-kills times and restarted on the same
 *     ports, the peers redialling with the same tokens and resuming;
 *   - short sessions created and closed all along (--churn per second;
 *     alternately DELETEd and left by their initiator).
 *
 * Open sessions must keep flowing through every controller fault (no
 * reconnect at all); after a relay kill every session must flow again.  At
 * the end every session is drained and closed and the relay's fds must be
 * back at their baseline.  The report (stdout, and JSON with --json) gives
 * bytes checked and lost, sessions dropped, creations refused per outage,
 * readiness downtime after each restart, reconnect time after each relay
 * kill, RSS and fds over time; the exit status is 0 only for a clean run.
 *
 * The run's driver (main and its phases) is the only code that waits or
 * runs the loop; libuv callbacks only record and react.
 */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "soak.h"

sk_opts opt = {.seconds = 60,
               .sessions = 100,
               .rate = 16384,
               .window = 262144,
               .churn = 2,
               .churn_max = 50,
               .ctl_every = 5,
               .ctl_down = 1,
               .hang_at = -1,
               .hang_for = -1,
               .relay_kills = -1,
               .call_timeout = 2,
               .max_connecting = 4096,
               .seed = 1};

uv_loop_t *g_loop;
struct sockaddr_storage g_relay_addr;
cm_tls_ctx *g_tls;

#define TICK_MS          20
#define READY_POLL_S     0.05 /* /readyz poll period: the resolution of readiness downtime */
#define SAMPLE_S         1.0  /* RSS and fds */
#define PROGRESS_S       10.0
#define GRACE_S          0.5 /* an outage's refusals are counted this long after it heals */
#define INJECT_AT_S      2.0 /* --inject happens this far into the fault phase */
#define STABLE_LINK_S    6.0 /* a relay kill waits for a controller link this old */
#define RELAY_RECOVERY_S 120 /* a relay kill after which sessions do not all flow by then fails */
#define SETUP_TIMEOUT_S  180
#define DRAIN_TIMEOUT_S  60
#define CLOSE_TIMEOUT_S  30
#define CHURN_LIFE_S     3.0 /* short sessions stream 3..7 s, then drain and close */
#define CHURN_DRAIN_S    30
#define CHURN_TTL_S      300
#define FD_SETTLE_S      15
#define MAX_OUTAGES      4096
#define MAX_ADMIN        16
#define CHURN_CONNS      4
#define SETUP_CONNS      4
#define RSS_SLACK        1.10 /* "flat": last quarter's max within 10 % of the second's */
#define RSS_SLACK_KIB    2048
#define FD_SLACK         0.05
#define FLAT_MIN_S       120 /* incarnations shorter than this are not judged */

static double g_mono0, g_phase0 = -1;

/* The 1-minute load average: other work on the machine skews every timing. */
static double loadavg(void) {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &l) != 1) l = -1;
    fclose(f);
  }
  return l;
}

double sk_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 - g_mono0;
}

/* Seconds into the fault phase (negative during setup). */
static double phase_t(double t) { return g_phase0 < 0 ? t : t - g_phase0; }

void sk_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("!! soak: ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  if (g_relay.pid > 0) kill(g_relay.pid, SIGKILL);
  if (g_ctl.pid > 0) kill(g_ctl.pid, SIGKILL);
  printf("verdict: FAIL (the harness stopped; logs in %s)\n", opt.tmp ? opt.tmp : "?");
  exit(1);
}

bool sk_run_until(bool (*done)(void), double timeout) {
  double end = sk_now() + timeout;
  while (!done()) {
    if (sk_now() >= end) return false;
    uv_run(g_loop, UV_RUN_ONCE);
  }
  return true;
}

static bool never(void) { return false; }
void sk_run_for(double secs) { sk_run_until(never, secs); }

/* ---- outages -------------------------------------------------------------------------- */

static sk_outage g_out[MAX_OUTAGES];
static int g_nout;
static sk_outage *g_cur; /* the outage being attributed, if any */

sk_outage *sk_outage_now(void) {
  if (!g_cur) return NULL;
  if (g_cur->t_end >= 0 && sk_now() > g_cur->t_end) return NULL;
  return g_cur;
}

int sk_refusal_kind(int st) {
  switch (st) {
  case 503: return R_503;
  case 404: return R_404;
  case 409: return R_409;
  case 429: return R_429;
  case AC_FAILED:
  case AC_TIMEOUT: return R_CONN;
  default: return R_OTHER;
  }
}

static const char *KIND_NAME[] = {"controller kill -9", "controller SIGSTOP", "relay kill -9"};

static sk_outage *outage_begin(sk_okind kind) {
  if (g_nout >= MAX_OUTAGES) sk_die("too many outages");
  sk_outage *o = &g_out[g_nout++];
  memset(o, 0, sizeof *o);
  o->kind = kind;
  o->t0 = sk_now();
  o->t_dead = o->t_restart = o->t_unready = o->t_ready = o->t_flowing = o->t_end = -1;
  g_cur = o;
  return o;
}

/* ---- admin connections ---------------------------------------------------------------- */

static ac_conn *g_acs[MAX_ADMIN];
static int g_nacs;

static ac_conn *admin_new(void) {
  if (g_nacs >= MAX_ADMIN) sk_die("too many admin connections");
  return g_acs[g_nacs++] = ac_new();
}

static ac_conn *admin_idle(ac_conn **pool, int n) {
  for (int i = 0; i < n; i++)
    if (!ac_busy(pool[i])) return pool[i];
  return NULL;
}

/* ---- readiness ------------------------------------------------------------------------ */

static ac_conn *g_poller;
static bool g_ready;
static double g_ready_since; /* when /readyz last turned 200 */
static double g_next_poll;
static double g_unready_total; /* seconds /readyz was not 200 during the fault phase */
static double g_unready_since = -1;

static void on_readyz(void *ud, int status, const char *body, size_t n) {
  (void)ud, (void)body, (void)n;
  double now = sk_now();
  bool ready = status == 200;
  sk_outage *o = g_cur;
  if (o && !ready && o->t_unready < 0 && o->t_ready < 0) o->t_unready = now;
  if (o && ready && o->t_ready < 0 && o->t_restart >= 0) o->t_ready = now;
  if (!ready && g_ready) g_unready_since = now;
  if (ready && !g_ready) g_ready_since = now;
  if (ready && !g_ready && g_unready_since >= 0 && g_phase0 >= 0)
    g_unready_total += now - g_unready_since;
  g_ready = ready;
}

static void poll_ready(void) {
  double now = sk_now();
  if (!g_poller || ac_busy(g_poller) || now < g_next_poll) return;
  g_next_poll = now + READY_POLL_S;
  ac_request(g_poller, "GET", "/readyz", NULL, 2.0, on_readyz, NULL);
}

static bool is_ready(void) { return g_ready; }

/* ---- samples -------------------------------------------------------------------------- */

typedef struct sample {
  double t;
  int gen;
  long rss_kib;
  int fds, flowing, sessions;
  uint64_t bytes;
} sample;

static sample *g_samples;
static size_t g_nsamples, g_capsamples;
static double g_next_sample;

/* Bytes checked, and in *lost bytes lost, so far (finished sessions too). */
static uint64_t bytes_checked(uint64_t *lost) {
  uint64_t b = g_tot.bytes_ok;
  *lost = g_tot.lost_bytes;
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next) {
    sk_session *s = cm_container_of(l, sk_session, link);
    b += s->p[0].rx.bytes + s->p[1].rx.bytes;
    *lost += s->p[0].rx.lost_bytes + s->p[1].rx.lost_bytes;
  }
  return b;
}

static uint64_t g_lost_live; /* at the last sample */

static void take_sample(void) {
  if (g_relay.pid <= 0) return;
  if (g_nsamples == g_capsamples) {
    g_capsamples = g_capsamples ? g_capsamples * 2 : 1024;
    g_samples = realloc(g_samples, g_capsamples * sizeof *g_samples);
    if (!g_samples) sk_die("out of memory");
  }
  sample *x = &g_samples[g_nsamples++];
  x->t = sk_now();
  x->gen = g_relay_gen;
  x->rss_kib = sk_rss_kib(g_relay.pid);
  x->fds = sk_fd_count(g_relay.pid);
  x->flowing = x->sessions = 0;
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next) {
    sk_session *s = cm_container_of(l, sk_session, link);
    x->sessions++;
    x->flowing += sk_session_flowing(s);
  }
  x->bytes = bytes_checked(&g_lost_live);
}

/* ---- churn ---------------------------------------------------------------------------- */

static ac_conn *g_churn_conns[CHURN_CONNS];
static bool g_churning;
static double g_churn_credit, g_churn_last;
static uint64_t g_next_num;
static int g_churn_open;
static long g_create_refused[R_KINDS], g_creates, g_create_skipped;

static bool take_created(const char *body, size_t n, char id[32], char ti[32], char tr[32]) {
  json_error_t je;
  json_t *o = json_loadb(body, n, 0, &je);
  const char *a = json_string_value(json_object_get(o, "id"));
  const char *b = json_string_value(json_object_get(o, "initiator_token"));
  const char *c = json_string_value(json_object_get(o, "responder_token"));
  bool ok = a && b && c && strlen(a) < 32 && strlen(b) < 32 && strlen(c) < 32;
  if (ok) {
    strcpy(id, a);
    strcpy(ti, b);
    strcpy(tr, c);
  }
  /* Slot tokens are secrets: wiped before jansson frees its copies. */
  if (b) explicit_bzero((char *)b, strlen(b));
  if (c) explicit_bzero((char *)c, strlen(c));
  json_decref(o);
  return ok;
}

static void on_churn_created(void *ud, int status, const char *body, size_t n) {
  (void)ud;
  sk_outage *o = sk_outage_now();
  g_creates++;
  if (o) o->creates++;
  char id[32], ti[32], tr[32];
  if (status != 201 || !take_created(body, n, id, ti, tr)) {
    int k = sk_refusal_kind(status);
    g_create_refused[k]++;
    if (o) o->create_refused[k]++;
    g_churn_open--;
    return;
  }
  if (o) o->creates_ok++;
  g_tot.churn_created++;
  sk_session *s = sk_session_new(g_next_num++, true, id, ti, tr);
  explicit_bzero(ti, sizeof ti);
  explicit_bzero(tr, sizeof tr);
  s->close_at = sk_now() + CHURN_LIFE_S + (double)cm_random_below(4000) / 1000.0;
  s->by_delete = g_tot.churn_created % 2 == 0;
  sk_session_connect(s);
}

static void churn_create(void) {
  if (g_churn_open >= opt.churn_max) {
    g_create_skipped++;
    return;
  }
  ac_conn *a = admin_idle(g_churn_conns, CHURN_CONNS);
  if (!a) {
    g_create_skipped++;
    return;
  }
  char body[64];
  snprintf(body, sizeof body, "{\"ttl_seconds\":%d}", CHURN_TTL_S);
  g_churn_open++;
  ac_request(a, "POST", "/admin/sessions", body, opt.call_timeout + 3, on_churn_created, NULL);
}

static void on_deleted(void *ud, int status, const char *body, size_t n) {
  (void)body, (void)n;
  sk_session *s = ud;
  s->delete_pending = false;
  s->delete_status = status;
  if (status == 204 || status == 404) {
    if (status == 404) g_tot.delete_404++;
    s->drain_deadline = sk_now() + CLOSE_TIMEOUT_S; /* now: the kick's deadline */
    return;
  }
  g_tot.delete_refused++;
  s->delete_retry_at = sk_now() + 1.0;
  /* Refused (its deadline passed), yet maybe carried out: kicked peers are gone. */
  if (!s->kicked) sk_session_unplan(s);
}

static void churn_close(sk_session *s) {
  if (!s->by_delete) {
    g_tot.churn_left++;
    sk_session_leave(s);
    s->drain_deadline = sk_now() + CLOSE_TIMEOUT_S;
    return;
  }
  if (sk_now() < s->delete_retry_at) return;
  ac_conn *a = admin_idle(g_churn_conns, CHURN_CONNS);
  if (!a) return;
  char path[64];
  snprintf(path, sizeof path, "/admin/sessions/%s", s->id);
  /* The kick may reach the peers before the 204 reaches us. */
  sk_session_expect_kick(s);
  s->delete_sent = s->delete_pending = true;
  s->drain_deadline = sk_now() + CLOSE_TIMEOUT_S + opt.call_timeout + 3;
  ac_request(a, "DELETE", path, NULL, opt.call_timeout + 3, on_deleted, s);
}

/* One step of every short session's life: stream, drain, close, finish. */
static void churn_step(bool ending) {
  double now = sk_now();
  for (cm_list *l = g_sessions.next, *next; l != &g_sessions; l = next) {
    next = l->next;
    sk_session *s = cm_container_of(l, sk_session, link);
    if (!s->churn) continue;
    if (s->state == S_FLOWING && (ending || now >= s->close_at) && sk_session_flowing(s))
      sk_session_drain(s, CHURN_DRAIN_S);
    else if (s->state == S_FLOWING && ending && now >= s->close_at + CHURN_DRAIN_S)
      sk_session_drain(s, 0); /* never paired: give up on it */
    if (s->state == S_DRAINING && (sk_session_drained(s) || now > s->drain_deadline))
      churn_close(s);
    if (s->state == S_CLOSING && !sk_session_closed(s) && now > s->drain_deadline) {
      if (s->by_delete) {
        /* The registry no longer has it, yet its peers still relay. */
        printf("!! t=%.1f session %s: deleted (DELETE answered %d) but its peers were not "
               "closed within %d s\n",
               phase_t(now), s->id, s->delete_status, CLOSE_TIMEOUT_S);
        g_tot.kick_missing++;
      } else {
        printf("!! t=%.1f session %s: not closed %d s after its initiator left\n", phase_t(now),
               s->id, CLOSE_TIMEOUT_S);
        g_tot.wrong_close++;
      }
      sk_session_leave(s); /* close it ourselves, with 1000 due to both */
      s->drain_deadline = now + CLOSE_TIMEOUT_S;
    }
    if (s->state == S_CLOSING && sk_session_closed(s) && !s->delete_pending) {
      if (s->by_delete) g_tot.churn_deleted++;
      g_tot.churn_closed++;
      g_churn_open--;
      sk_session_finish(s);
    }
  }
  if (!g_churning) return;
  g_churn_credit += (now - g_churn_last) * opt.churn;
  g_churn_last = now;
  for (; g_churn_credit >= 1; g_churn_credit--)
    churn_create();
}

/* ---- the tick ------------------------------------------------------------------------- */

static bool g_ending;

/* The generator's own health: a loop that does not come round for a while
 * (machine overload, a blocking call) stalls every peer at once, and the
 * timings around it are the generator's, not the relay's. */
#define STALL_S 0.25
static double g_last_tick = -1, g_stall_max, g_stall_max_at;
static long g_stalls;

static void note_stall(void) {
  double now = sk_now(), gap = g_last_tick < 0 ? 0 : now - g_last_tick;
  g_last_tick = now;
  if (gap < STALL_S || g_phase0 < 0) return;
  g_stalls++;
  if (gap > g_stall_max) g_stall_max = gap, g_stall_max_at = phase_t(now - gap);
}

static void on_tick(uv_timer_t *t) {
  (void)t;
  note_stall();
  sk_peers_tick();
  for (int i = 0; i < g_nacs; i++)
    ac_tick(g_acs[i]);
  poll_ready();
  churn_step(g_ending);
  if (sk_now() >= g_next_sample) {
    g_next_sample = sk_now() + SAMPLE_S;
    take_sample();
  }
}

/* ---- setup ---------------------------------------------------------------------------- */

static int g_setup_want, g_setup_sent, g_setup_have;

static void setup_next(ac_conn *a);

static void on_setup_created(void *ud, int status, const char *body, size_t n) {
  char id[32], ti[32], tr[32];
  if (status != 201 || !take_created(body, n, id, ti, tr))
    sk_die("setup: POST /admin/sessions answered %d: %.200s", status, body);
  sk_session_new((uint64_t)g_setup_have++, false, id, ti, tr);
  explicit_bzero(ti, sizeof ti);
  explicit_bzero(tr, sizeof tr);
  setup_next(ud);
}

static void setup_next(ac_conn *a) {
  if (g_setup_sent >= g_setup_want) return;
  g_setup_sent++;
  char body[64];
  /* Long-lived sessions outlive the run (and its end). */
  long ttl = CM_MIN((long)opt.seconds + 3600, 86400);
  snprintf(body, sizeof body, "{\"ttl_seconds\":%ld}", ttl);
  ac_request(a, "POST", "/admin/sessions", body, 30, on_setup_created, a);
}

static bool setup_created(void) { return g_setup_have >= g_setup_want; }

static int count_flowing(void) {
  int n = 0;
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
    n += sk_session_flowing(cm_container_of(l, sk_session, link));
  return n;
}

static bool all_flowing(void) { return count_flowing() == opt.sessions; }

static long g_base_fds, g_base_rss;

static void setup(void) {
  sk_enrol();
  cm_tls_config c;
  cm_tls_config_init(&c);
  c.ca_file = g_cert;
  c.verify_peer = true;
  char err[512];
  g_tls = cm_tls_ctx_new_client(&c, err, sizeof err);
  if (!g_tls) sk_die("%s", err);
  if (!sk_relay_start()) sk_die("the relay did not start");
  if (cm_sockaddr_from("127.0.0.1", g_relay_port, &g_relay_addr) != 0) sk_die("bad address");
  printf("%s\n", g_version);
  printf("relay pid %d: public wss://127.0.0.1:%d (TLS, dev cert), tunnel 127.0.0.1:%d (mTLS)\n",
         (int)g_relay.pid, g_relay_port, g_tunnel_port);
  g_poller = admin_new();
  sk_ctl_start();
  if (!sk_run_until(is_ready, 30))
    sk_die("the relay was not ready 30 s after the controller started");
  printf("controller pid %d linked; relay ready\n", (int)g_ctl.pid);
  sk_run_for(1.0);
  g_base_fds = sk_fd_count(g_relay.pid);
  g_base_rss = sk_rss_kib(g_relay.pid);
  printf("relay baseline: %ld fds, %ld KiB RSS (controller link and one admin connection open)\n",
         g_base_fds, g_base_rss);

  double t0 = sk_now();
  g_setup_want = opt.sessions;
  ac_conn *setup_conns[SETUP_CONNS];
  for (int i = 0; i < SETUP_CONNS; i++)
    setup_next(setup_conns[i] = admin_new());
  if (!sk_run_until(setup_created, SETUP_TIMEOUT_S)) sk_die("setup: creating sessions stalled");
  printf("created %d sessions in %.1f s\n", opt.sessions, sk_now() - t0);
  for (int i = 0; i < SETUP_CONNS; i++)
    ac_close(setup_conns[i]);
  g_next_num = (uint64_t)opt.sessions;

  t0 = sk_now();
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
    sk_session_connect(cm_container_of(l, sk_session, link));
  if (!sk_run_until(all_flowing, SETUP_TIMEOUT_S))
    sk_die("setup: only %d of %d sessions flowing", count_flowing(), opt.sessions);
  printf("%d sessions (%d WebSockets) flowing in %.1f s\n", opt.sessions, 2 * opt.sessions,
         sk_now() - t0);
  g_tot.upgrades_ok = 0;
  for (int i = 0; i < CHURN_CONNS; i++)
    g_churn_conns[i] = admin_new();
}

/* ---- faults --------------------------------------------------------------------------- */

static double g_relay_cpu, g_ctl_cpu; /* CPU seconds of incarnations already gone */
static int g_ctl_kills, g_hangs, g_relay_kills;

static void account_cpu(sk_proc *p, double *sum) {
  double c = p->pid > 0 ? sk_cpu_s(p->pid) : -1;
  if (c > 0) *sum += c;
}

static void ctl_kill(void) {
  outage_begin(O_CTL_KILL);
  account_cpu(&g_ctl, &g_ctl_cpu);
  sk_proc_kill(&g_ctl);
  g_cur->t_dead = sk_now();
  g_ctl_kills++;
}

static void ctl_hang(void) {
  outage_begin(O_CTL_HANG);
  kill(g_ctl.pid, SIGSTOP);
  g_ctl.stopped = true;
  g_hangs++;
}

static void ctl_cont(void) {
  kill(g_ctl.pid, SIGCONT);
  g_ctl.stopped = false;
  g_cur->t_restart = sk_now();
  /* Calls that waited for it finish within their deadline. */
  g_cur->t_end = g_cur->t_restart + opt.call_timeout + GRACE_S;
}

static void relay_kill(void) {
  outage_begin(O_RELAY_KILL);
  g_relay_gen++; /* connections of the old incarnation may now die */
  account_cpu(&g_relay, &g_relay_cpu);
  sk_proc_kill(&g_relay);
  g_cur->t_dead = sk_now();
  g_relay_kills++;
  take_sample();
  g_cur->gen_cpu = sk_self_cpu_s();
  if (!sk_relay_start()) sk_die("the relay did not restart");
  g_cur->t_restart = sk_now();
  printf("   t=%.1f relay killed and restarted (pid %d) in %.3f s\n", phase_t(g_cur->t0),
         (int)g_relay.pid, g_cur->t_restart - g_cur->t0);
}

static bool all_flow_on_new_relay(void) {
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next) {
    sk_session *s = cm_container_of(l, sk_session, link);
    /* Sessions made since the kill are not the ones coming back. */
    if (s->born_gen < g_relay_gen && s->state == S_FLOWING && !sk_session_flows_on(s, g_relay_gen))
      return false;
  }
  return true;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Every session is back after a relay kill: the spread of their times. */
static void flow_percentiles(sk_outage *o) {
  size_t n = 0, cap = (size_t)opt.sessions + (size_t)opt.churn_max;
  double *v = calloc(cap, sizeof *v);
  if (!v) sk_die("out of memory");
  for (cm_list *l = g_sessions.next; l != &g_sessions && n < cap; l = l->next) {
    sk_session *s = cm_container_of(l, sk_session, link);
    if (s->born_gen < g_relay_gen && sk_session_flows_on(s, g_relay_gen))
      v[n++] = sk_session_flowed_at(s) - o->t0;
  }
  qsort(v, n, sizeof *v, cmp_double);
  o->flow_p50 = n ? v[n / 2] : -1;
  o->flow_p99 = n ? v[CM_MIN(n - 1, n * 99 / 100)] : -1;
  free(v);
}

/* Closes the attribution window of the current outage when it has healed. */
static void outage_update(void) {
  sk_outage *o = g_cur;
  if (!o) return;
  double now = sk_now();
  if (o->t_end < 0) {
    if (o->kind == O_CTL_KILL && o->t_ready >= 0) o->t_end = o->t_ready + GRACE_S;
    if (o->kind == O_RELAY_KILL && o->t_flowing < 0 && all_flow_on_new_relay()) {
      o->t_flowing = now;
      o->t_end = now + GRACE_S;
      flow_percentiles(o);
      o->relay_cpu = sk_cpu_s(g_relay.pid); /* the new incarnation's whole life */
      o->gen_cpu = sk_self_cpu_s() - o->gen_cpu;
    }
    if (o->kind == O_RELAY_KILL && o->t_flowing < 0 && now - o->t0 > RELAY_RECOVERY_S) {
      printf("!! sessions did not all flow again within %d s of a relay kill\n", RELAY_RECOVERY_S);
      o->t_end = now;
    }
  }
  if (o->t_end >= 0 && now > o->t_end) g_cur = NULL;
}

static double g_relay_kill_at[16];
static double g_next_ctl_kill;
static double g_ctl_restart_at = -1;

static bool quiet(void) { return !g_cur && g_ready && g_ctl.pid > 0 && !g_ctl.stopped; }

/* What the schedule asks for at fault-phase time t. */
static void faults_step(double t) {
  double now = sk_now();
  if (g_ctl.pid <= 0 && g_ctl_restart_at >= 0 && now >= g_ctl_restart_at) {
    sk_ctl_start();
    g_ctl_restart_at = -1;
    if (g_cur && g_cur->kind == O_CTL_KILL) g_cur->t_restart = sk_now();
  }
  if (g_ctl.stopped && g_cur && g_cur->kind == O_CTL_HANG && now >= g_cur->t0 + opt.hang_for)
    ctl_cont();
  outage_update();
  if (!quiet() || t > opt.seconds - 3) return; /* the last seconds stay clean */
  if (g_relay_kills < opt.relay_kills && t >= g_relay_kill_at[g_relay_kills]) {
    /* The controller counts a link that lived under 5 s as a failed dial and
     * backs off further: kill the relay only under a link that has been up
     * longer, so its redial starts from the first backoff step, and hold
     * the controller's own faults until then. */
    if (now - g_ready_since >= STABLE_LINK_S) relay_kill();
  } else if (opt.hang_at >= 0 && g_hangs == 0 && t >= opt.hang_at) {
    ctl_hang();
  } else if (opt.ctl_every > 0 && t >= g_next_ctl_kill) {
    ctl_kill();
    g_ctl_restart_at = g_cur->t0 + opt.ctl_down; /* or at once, if reaping took longer */
    g_next_ctl_kill = t + opt.ctl_every;
  }
  if (g_cur) /* after any fault, the next kill waits for a quiet second */
    g_next_ctl_kill = CM_MAX(g_next_ctl_kill, t + 1.0);
}

static void check_crashes(void) {
  if (sk_proc_died(&g_relay)) {
    outage_begin(O_RELAY_KILL);
    g_relay_gen++;
    if (!sk_relay_start()) sk_die("the relay did not restart after its crash");
    g_cur->t_restart = sk_now();
  }
  if (sk_proc_died(&g_ctl)) g_ctl_restart_at = sk_now();
}

static void progress(void) {
  const sample *x = g_nsamples ? &g_samples[g_nsamples - 1] : NULL;
  printf("   t=%4.0f s  flowing %d/%d  checked %.1f MiB  relay RSS %ld KiB fds %d  faults: "
         "ctl kills %d, hangs %d, relay kills %d  dropped %ld  lost %llu B\n",
         phase_t(sk_now()), x ? x->flowing : 0, x ? x->sessions : 0,
         x ? (double)x->bytes / 1048576 : 0, x ? x->rss_kib : 0, x ? x->fds : 0, g_ctl_kills,
         g_hangs, g_relay_kills, g_tot.dropped, (unsigned long long)g_lost_live);
}

static const char *wall_clock(void) {
  static char buf[32];
  time_t t = time(NULL);
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
  return buf;
}

/* --inject: the harness must then FAIL, naming each damage. */
static ac_conn *g_held; /* "hold": an admin connection kept open past the end */
static void on_held(void *ud, int status, const char *body, size_t n) {
  (void)ud, (void)status, (void)body, (void)n;
}

static void inject(void) {
  printf("   t=%.1f injecting on purpose: %s\n", phase_t(sk_now()), opt.inject);
  sk_inject(opt.inject);
  if (strstr(opt.inject, "hold"))
    ac_request(g_held = admin_new(), "GET", "/healthz", NULL, 5, on_held, NULL);
}

static void fault_phase(void) {
  g_phase0 = sk_now();
  g_churning = opt.churn > 0;
  g_churn_last = g_phase0;
  g_next_ctl_kill = opt.ctl_every;
  for (int i = 0; i < opt.relay_kills && i < 16; i++)
    g_relay_kill_at[i] = opt.seconds * (i + 1) / (2.0 * opt.relay_kills + 2);
  printf("fault phase: began %s, load average %.2f on %ld CPUs\n", wall_clock(), loadavg(),
         sysconf(_SC_NPROCESSORS_ONLN));
  printf("fault phase: %.0f s; controller kill -9 every %.0f s (down %.1f s)", opt.seconds,
         opt.ctl_every, opt.ctl_down);
  if (opt.hang_at >= 0) printf(", SIGSTOP at %.0f s for %.1f s", opt.hang_at, opt.hang_for);
  for (int i = 0; i < opt.relay_kills; i++)
    printf("%s%.0f s", i ? ", " : ", relay kill -9 at ", g_relay_kill_at[i]);
  printf("; churn %.1f sessions/s\n", opt.churn);
  double next_progress = sk_now() + PROGRESS_S;
  bool injected = !opt.inject;
  while (phase_t(sk_now()) < opt.seconds) {
    uv_run(g_loop, UV_RUN_ONCE);
    if (!injected && phase_t(sk_now()) >= INJECT_AT_S) {
      injected = true;
      inject();
    }
    check_crashes();
    faults_step(phase_t(sk_now()));
    if (sk_now() >= next_progress) {
      next_progress += PROGRESS_S;
      progress();
    }
  }
}

/* ---- the end -------------------------------------------------------------------------- */

static bool healed(void) {
  outage_update();
  return g_ready && !g_cur;
}

static bool churn_gone(void) { return g_churn_open == 0; }

static bool steady_drained(void) {
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
    if (!sk_session_drained(cm_container_of(l, sk_session, link))) return false;
  return true;
}

static bool steady_closed(void) {
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
    if (!sk_session_closed(cm_container_of(l, sk_session, link))) return false;
  return true;
}

static bool admin_closed(void) {
  for (int i = 0; i < g_nacs; i++)
    if (g_acs[i] != g_poller && g_acs[i] != g_held && !ac_closed(g_acs[i])) return false;
  return true;
}

static long g_end_fds = -1, g_end_rss = -1;
static bool fds_at_baseline(void) {
  g_end_fds = sk_fd_count(g_relay.pid);
  return g_end_fds >= 0 && g_end_fds <= g_base_fds;
}

static bool g_clean_exit = true;
static int g_not_drained, g_not_closed;

static void end_phase(void) {
  double t0 = sk_now();
  /* No more faults: the controller back and linked, any relay outage over. */
  if (g_ctl.stopped) ctl_cont();
  if (g_ctl.pid <= 0) sk_ctl_start();
  if (!sk_run_until(healed, 60)) printf("!! the relay was not ready and healed within 60 s\n");
  g_churning = false;
  g_ending = true;
  if (!sk_run_until(churn_gone, CHURN_DRAIN_S + CLOSE_TIMEOUT_S + 10))
    printf("!! %d short sessions were still open after the end\n", g_churn_open);
  g_sending = false;
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
    sk_session_drain(cm_container_of(l, sk_session, link), DRAIN_TIMEOUT_S);
  if (!sk_run_until(steady_drained, DRAIN_TIMEOUT_S)) {
    for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
      g_not_drained += !sk_session_drained(cm_container_of(l, sk_session, link));
    printf("!! %d sessions did not drain within %d s\n", g_not_drained, DRAIN_TIMEOUT_S);
  }
  take_sample();
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
    sk_session_leave(cm_container_of(l, sk_session, link));
  if (!sk_run_until(steady_closed, CLOSE_TIMEOUT_S)) {
    for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next)
      g_not_closed += !sk_session_closed(cm_container_of(l, sk_session, link));
    printf("!! %d sessions did not close within %d s\n", g_not_closed, CLOSE_TIMEOUT_S);
  }
  for (int i = 0; i < g_nacs; i++)
    if (g_acs[i] != g_poller && g_acs[i] != g_held) ac_close(g_acs[i]);
  sk_run_until(admin_closed, 5);
  /* Closed connections linger up to a second in the relay (close_notify). */
  sk_run_until(fds_at_baseline, FD_SETTLE_S);
  if (g_end_fds > g_base_fds) {
    printf("!! the relay holds %ld fds, %ld more than at the start:\n", g_end_fds,
           g_end_fds - g_base_fds);
    sk_fd_list(g_relay.pid, stdout);
  }
  g_end_rss = sk_rss_kib(g_relay.pid);
  take_sample();
  /* Counters of the long-lived sessions join the totals. */
  while (!cm_list_empty(&g_sessions)) {
    sk_session *s = cm_container_of(g_sessions.next, sk_session, link);
    if (!sk_session_closed(s)) sk_peers_abort_all();
    sk_session_finish(s);
  }
  account_cpu(&g_relay, &g_relay_cpu);
  account_cpu(&g_ctl, &g_ctl_cpu);
  g_clean_exit &= sk_proc_stop(&g_ctl, 15);
  g_clean_exit &= sk_proc_stop(&g_relay, 30);
  printf("end: drained, closed and stopped in %.1f s\n", sk_now() - t0);
}

/* ---- the report ----------------------------------------------------------------------- */

typedef struct flat {
  int gen;
  double t0, t1;
  long rss_min, rss_max, rss_q2, rss_q4;
  int fds_q2, fds_q4, fds_max;
  bool judged, rss_flat, fds_flat;
} flat;

static flat g_flat[16];
static int g_nflat, g_longest = -1;

/* Splits the fault phase's samples by relay incarnation and judges each
 * long one: no upward trend after warm-up means the last quarter's maximum
 * is within RSS_SLACK (+ RSS_SLACK_KIB) of the second quarter's, and the
 * same for fds within FD_SLACK (+ 5). */
static void judge_flatness(void) {
  for (size_t i = 0; i < g_nsamples; i++) {
    const sample *x = &g_samples[i];
    if (x->t < g_phase0 || x->rss_kib < 0) continue;
    if (g_nflat == 0 || g_flat[g_nflat - 1].gen != x->gen) {
      if (g_nflat == 16) break;
      g_flat[g_nflat++] = (flat){.gen = x->gen, .t0 = x->t, .rss_min = x->rss_kib};
    }
    flat *f = &g_flat[g_nflat - 1];
    f->t1 = x->t;
    f->rss_min = CM_MIN(f->rss_min, x->rss_kib);
    f->rss_max = CM_MAX(f->rss_max, x->rss_kib);
    f->fds_max = CM_MAX(f->fds_max, x->fds);
  }
  for (int k = 0; k < g_nflat; k++) {
    flat *f = &g_flat[k];
    double q = (f->t1 - f->t0) / 4;
    for (size_t i = 0; i < g_nsamples; i++) {
      const sample *x = &g_samples[i];
      if (x->gen != f->gen || x->t < f->t0 || x->t > f->t1) continue;
      if (x->t >= f->t0 + q && x->t < f->t0 + 2 * q) {
        f->rss_q2 = CM_MAX(f->rss_q2, x->rss_kib);
        f->fds_q2 = CM_MAX(f->fds_q2, x->fds);
      }
      if (x->t >= f->t0 + 3 * q) {
        f->rss_q4 = CM_MAX(f->rss_q4, x->rss_kib);
        f->fds_q4 = CM_MAX(f->fds_q4, x->fds);
      }
    }
    f->judged = f->t1 - f->t0 >= FLAT_MIN_S;
    f->rss_flat = (double)f->rss_q4 <= (double)f->rss_q2 * RSS_SLACK + RSS_SLACK_KIB;
    f->fds_flat = (double)f->fds_q4 <= (double)f->fds_q2 * (1 + FD_SLACK) + 5;
    if (g_longest < 0 || f->t1 - f->t0 > g_flat[g_longest].t1 - g_flat[g_longest].t0) g_longest = k;
  }
}

/* About twenty evenly spaced samples (the JSON report has every one). */
static void print_series(void) {
  printf("relay over time (t s: incarnation, RSS KiB, fds, sessions flowing/open, MiB checked):\n");
  size_t step = CM_MAX((size_t)1, g_nsamples / 20);
  for (size_t i = 0; i < g_nsamples; i += step) {
    const sample *x = &g_samples[i];
    printf("  t=%6.0f  #%d  %8ld KiB  %5d fds  %5d/%-5d  %10.1f MiB\n", phase_t(x->t), x->gen,
           x->rss_kib, x->fds, x->flowing, x->sessions, (double)x->bytes / 1048576);
  }
}

static const char *REFUSAL_NAME[R_KINDS] = {"503", "404", "409", "429", "conn", "other"};

static void print_refusals(const char *label, const long *r) {
  printf("%s", label);
  bool any = false;
  for (int k = 0; k < R_KINDS; k++)
    if (r[k]) {
      printf("%s%s %ld", any ? ", " : " ", REFUSAL_NAME[k], r[k]);
      any = true;
    }
  printf("%s\n", any ? "" : " none");
}

static double span(double a, double b) { return a >= 0 && b >= 0 ? b - a : -1; }

static json_t *refusals_json(const long *r) {
  json_t *o = json_object();
  for (int k = 0; k < R_KINDS; k++)
    json_object_set_new(o, REFUSAL_NAME[k], json_integer(r[k]));
  return o;
}

static json_t *num_or_null(double v) { return v >= 0 ? json_real(v) : json_null(); }

static double get_down(const sk_outage *o);

/* A table cell: seconds, or "-" where the figure does not apply. */
static const char *cell(char out[16], double v) {
  if (v < 0) return "-";
  snprintf(out, 16, "%.3f", v);
  return out;
}

static void print_outages(json_t *arr) {
  int elided = 0;
  printf(
      "\noutages (t: seconds into the fault phase; restart: fault to restart; ready: restart to\n"
      "/readyz 200; unready: readiness downtime; flowing: kill to every session flowing):\n");
  printf("  %-3s %-19s %7s %8s %8s %9s %8s  %-22s %s\n", "#", "kind", "t", "restart", "ready",
         "unready", "flowing", "creates ok/refused", "upgrades refused, dropped");
  for (int i = 0; i < g_nout; i++) {
    const sk_outage *o = &g_out[i];
    long refused = 0, up = 0;
    for (int k = 0; k < R_KINDS; k++)
      refused += o->create_refused[k], up += o->upgrade_refused[k];
    double restart = span(o->t0, o->t_restart), ready = span(o->t_restart, o->t_ready);
    double down = get_down(o);
    double flowing = span(o->t0, o->t_flowing);
    bool brief = o->kind == O_CTL_KILL && g_nout > 40 && i > 4 && i < g_nout - 3 && !o->dropped;
    char c1[16], c2[16], c3[16], c4[16];
    if (!brief)
      printf("  %-3d %-19s %7.1f %8s %8s %9s %8s  %4ld/%-17ld %ld, %d\n", i + 1, KIND_NAME[o->kind],
             phase_t(o->t0), cell(c1, restart), cell(c2, ready), cell(c3, down), cell(c4, flowing),
             o->creates_ok, refused, up, o->dropped);
    else if (!elided++)
      printf("  ... (more controller kills: all in the JSON report, summarised below)\n");
    json_t *j = json_pack(
        "{s:s, s:f, s:o, s:o, s:o, s:o, s:i, s:i, s:o, s:o, s:i, s:i}", "kind", KIND_NAME[o->kind],
        "t", phase_t(o->t0), "restart_s", num_or_null(restart), "ready_after_restart_s",
        num_or_null(ready), "readiness_downtime_s", num_or_null(down), "all_flowing_after_s",
        num_or_null(flowing), "creates", (json_int_t)o->creates, "creates_ok",
        (json_int_t)o->creates_ok, "creates_refused", refusals_json(o->create_refused),
        "upgrades_refused", refusals_json(o->upgrade_refused), "reconnects",
        (json_int_t)o->reconnects, "dropped", o->dropped);
    json_object_set_new(j, "reaped_after_s", num_or_null(span(o->t0, o->t_dead)));
    if (o->kind == O_RELAY_KILL) {
      json_object_set_new(j, "relay_cpu_s", json_real(o->relay_cpu));
      json_object_set_new(j, "generator_cpu_s", json_real(o->gen_cpu));
      json_object_set_new(j, "flow_p50_s", num_or_null(o->flow_p50));
      json_object_set_new(j, "flow_p99_s", num_or_null(o->flow_p99));
    }
    json_array_append_new(arr, j);
  }
}

/* Each relay kill: how long until it listened, was linked, and every
 * session that was open at the kill flowed again (both ways, new bytes). */
static void print_relay_kills(void) {
  for (int i = 0; i < g_nout; i++) {
    const sk_outage *o = &g_out[i];
    if (o->kind != O_RELAY_KILL) continue;
    printf("\nrelay kill -9 at t=%.1f s: restarted and listening after %.3f s, controller linked "
           "(/readyz 200) after %.3f s;\n",
           phase_t(o->t0), span(o->t0, o->t_restart), span(o->t0, o->t_ready));
    if (o->t_flowing >= 0) {
      double d = o->t_flowing - o->t0;
      printf("  every session flowing again after %.3f s (per session: median %.3f s, p99 "
             "%.3f s); %ld WebSockets re-established (%.0f/s);\n",
             d, o->flow_p50, o->flow_p99, o->reconnects, (double)o->reconnects / d);
      printf("  CPU meanwhile: relay %.0f%%, load generator %.0f%% of a core\n",
             o->relay_cpu / (o->t_flowing - o->t_restart) * 100, o->gen_cpu / d * 100);
    } else
      printf("  !! sessions did NOT all flow again\n");
    print_refusals("  upgrades refused while it lasted (each redial counts):", o->upgrade_refused);
  }
}

/* min / mean / max of a per-outage figure over outages of one kind. */
static void summarise(sk_okind kind, const char *what, double (*get)(const sk_outage *)) {
  double mn = 1e9, mx = -1, sum = 0;
  int n = 0;
  for (int i = 0; i < g_nout; i++) {
    if (g_out[i].kind != kind) continue;
    double v = get(&g_out[i]);
    if (v < 0) continue;
    mn = CM_MIN(mn, v), mx = CM_MAX(mx, v), sum += v, n++;
  }
  if (n)
    printf("  %-19s %-36s min %.3f  mean %.3f  max %.3f  (%d)\n", KIND_NAME[kind], what, mn,
           sum / n, mx, n);
}

/* How long /readyz was not 200: from the first refusal seen (a relay kill:
 * from the kill) to the first 200 after the restart. */
static double get_down(const sk_outage *o) {
  if (o->t_ready < 0) return -1;
  if (o->kind == O_CTL_HANG && o->t_unready < 0) return 0;
  bool from_kill = o->kind == O_RELAY_KILL || o->t_unready < 0;
  return o->t_ready - (from_kill ? o->t0 : o->t_unready);
}
static double get_ready(const sk_outage *o) { return span(o->t_restart, o->t_ready); }
static double get_dead(const sk_outage *o) { return span(o->t0, o->t_dead); }
static double get_refused(const sk_outage *o) {
  long r = 0;
  for (int k = 0; k < R_KINDS; k++)
    r += o->create_refused[k];
  return (double)r;
}

/* What the report's parts share. */
typedef struct summary {
  double wall, gen_cpu;
  long creates_refused_outside, upgrades_refused_outside;
  bool fd_leak, rss_ok;
  const char *why[16]; /* the verdict's reasons */
  int nwhy;
} summary;

/* Refusals not attributed to any outage (expected: none). */
static void refusals_outside(summary *m) {
  long up_in = 0, cr_in = 0, cr_all = 0, up_all = 0;
  for (int i = 0; i < g_nout; i++)
    for (int k = 0; k < R_KINDS; k++)
      up_in += g_out[i].upgrade_refused[k], cr_in += g_out[i].create_refused[k];
  for (int k = 0; k < R_KINDS; k++)
    cr_all += g_create_refused[k], up_all += g_tot.upgrade_refused[k];
  m->creates_refused_outside = cr_all - cr_in;
  m->upgrades_refused_outside = up_all - up_in;
}

static void print_totals(const summary *m) {
  printf("\ndata: %.3f GiB checked in %llu messages (1 B..64 KiB), %.3f GiB sent (%.1f MiB "
         "resent after relay kills)\n",
         (double)g_tot.bytes_ok / (1 << 30), (unsigned long long)g_tot.msgs_ok,
         (double)g_tot.sent_bytes / (1 << 30), (double)g_tot.resent_bytes / 1048576);
  printf("      lost %llu B (%llu messages: %llu corrupt, %llu B never delivered); duplicates "
         "dropped %llu\n",
         (unsigned long long)g_tot.lost_bytes, (unsigned long long)g_tot.lost_msgs,
         (unsigned long long)g_tot.corrupt_msgs, (unsigned long long)g_tot.undelivered_bytes,
         (unsigned long long)g_tot.dup_msgs);
  printf("sessions: %d long-lived; %ld short ones created (%ld deleted, %ld left by their "
         "initiator); dropped %ld; wrong or missing close codes %ld; deleted but left open %ld; "
         "protocol errors %ld\n",
         opt.sessions, g_tot.churn_created, g_tot.churn_deleted, g_tot.churn_left, g_tot.dropped,
         g_tot.wrong_close, g_tot.kick_missing, g_tot.protocol_errors);
  printf("creations: %ld answered, %ld skipped (churn at its cap or no idle admin connection); "
         "refused outside any outage: %ld\n",
         g_creates, g_create_skipped, m->creates_refused_outside);
  print_refusals("creations refused, all:", g_create_refused);
  /* A create whose deadline passed while the controller hung may still be
   * carried out when it wakes: a session nobody was told of (it expires). */
  long made = sk_log_count(g_ctl.log, "\"msg\":\"session created\"");
  if (made >= 0)
    printf("creations the controller logged: %ld; answered 201: %ld; carried out after a "
           "refusal: %ld\n",
           made, opt.sessions + g_tot.churn_created, made - opt.sessions - g_tot.churn_created);
  print_refusals("upgrades refused, all (redials included):", g_tot.upgrade_refused);
  printf("upgrades refused outside any outage: %ld; DELETE refused %ld (then retried), 404 %ld\n",
         m->upgrades_refused_outside, g_tot.delete_refused, g_tot.delete_404);
  printf("faults: controller killed %d times, hung %d (%.1f s, relay --call-timeout %.1f s), "
         "relay killed %d; crashes: relay %d, controller %d\n",
         g_ctl_kills, g_hangs, opt.hang_for, opt.call_timeout, g_relay_kills, g_relay.crashes,
         g_ctl.crashes);
  printf("readiness: /readyz not 200 for %.2f s in total during the fault phase\n",
         g_unready_total);
  printf("generator: its loop stalled over %.0f ms %ld times, longest %.2f s (at t=%.0f s); "
         "timings there are not the relay's\n",
         STALL_S * 1000, g_stalls, g_stall_max, g_stall_max_at);
}

static const char *flat_word(const flat *f, bool flat_) {
  return !f->judged ? "too short to judge" : flat_ ? "flat" : "RISING";
}

/* RSS and fds: by incarnation, over time, at the end. */
static void print_memory(summary *m) {
  printf("\nrelay RSS and fds by incarnation (fault phase; flat = last quarter's max within "
         "%.0f%% + %d KiB of the second quarter's):\n",
         (RSS_SLACK - 1) * 100, RSS_SLACK_KIB);
  m->rss_ok = true;
  for (int k = 0; k < g_nflat; k++) {
    const flat *f = &g_flat[k];
    printf("  incarnation %d: %.0f s; RSS min %ld max %ld KiB (Q2 max %ld, Q4 max %ld): %s; fds "
           "max %d (Q2 %d, Q4 %d): %s\n",
           f->gen, f->t1 - f->t0, f->rss_min, f->rss_max, f->rss_q2, f->rss_q4,
           flat_word(f, f->rss_flat), f->fds_max, f->fds_q2, f->fds_q4, flat_word(f, f->fds_flat));
    if (f->judged && (!f->rss_flat || !f->fds_flat)) m->rss_ok = false;
  }
  print_series();
  m->fd_leak = g_end_fds < 0 || g_end_fds > g_base_fds;
  printf("fds: baseline %ld, after every session closed %ld: %s\n", g_base_fds, g_end_fds,
         m->fd_leak ? "LEAK" : "no leak");
  printf("cpu: relay %.1f s (%.0f%% of a core), controller %.1f s, load generator %.1f s "
         "(%.0f%% of a core) over %.0f s\n",
         g_relay_cpu, g_relay_cpu / m->wall * 100, g_ctl_cpu, m->gen_cpu,
         m->gen_cpu / m->wall * 100, m->wall);
}

static void judge(summary *m) {
#define FAIL_IF(cond, what)                                                                        \
  do {                                                                                             \
    if (cond) m->why[m->nwhy++] = (what);                                                          \
  } while (0)
  bool unhealed = false;
  for (int i = 0; i < g_nout; i++)
    unhealed |= g_out[i].kind == O_RELAY_KILL && g_out[i].t_flowing < 0;
  FAIL_IF(g_tot.lost_bytes, "bytes lost");
  FAIL_IF(g_tot.dup_msgs, "duplicates");
  FAIL_IF(g_tot.dropped, "sessions dropped");
  FAIL_IF(m->fd_leak, "fd leak");
  FAIL_IF(g_tot.protocol_errors, "protocol errors");
  FAIL_IF(g_tot.wrong_close, "wrong close codes");
  FAIL_IF(g_tot.kick_missing, "deleted sessions left open");
  FAIL_IF(g_relay.crashes || g_ctl.crashes, "crashes");
  FAIL_IF(!g_clean_exit, "unclean exit at the end");
  FAIL_IF(g_not_drained || g_not_closed, "sessions stuck at the end");
  FAIL_IF(unhealed, "a relay kill did not heal");
  FAIL_IF(opt.check_rss && !m->rss_ok, "RSS or fds rising");
  FAIL_IF(opt.check_rss && (g_longest < 0 || !g_flat[g_longest].judged),
          "RSS not judged (run too short)");
#undef FAIL_IF
}

static void write_json(const summary *m, json_t *outages) {
  json_t *root = json_object(), *series = json_array(), *failures = json_array();
  for (size_t i = 0; i < g_nsamples; i++) {
    const sample *x = &g_samples[i];
    json_array_append_new(series,
                          json_pack("[f,i,I,i,i,I]", phase_t(x->t), x->gen, (json_int_t)x->rss_kib,
                                    x->fds, x->flowing, (json_int_t)x->bytes));
  }
  for (int i = 0; i < m->nwhy; i++)
    json_array_append_new(failures, json_string(m->why[i]));
  json_object_set_new(root, "options",
                      json_pack("{s:f, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:f, s:I}",
                                "seconds", opt.seconds, "sessions", opt.sessions, "rate", opt.rate,
                                "churn", opt.churn, "ctl_every", opt.ctl_every, "ctl_down",
                                opt.ctl_down, "hang_at", opt.hang_at, "hang_for", opt.hang_for,
                                "call_timeout", opt.call_timeout, "relay_kills", opt.relay_kills,
                                "window", opt.window, "seed", (json_int_t)opt.seed));
  json_object_set_new(
      root, "totals",
      json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                "bytes_checked", (json_int_t)g_tot.bytes_ok, "messages_checked",
                (json_int_t)g_tot.msgs_ok, "bytes_sent", (json_int_t)g_tot.sent_bytes,
                "bytes_resent", (json_int_t)g_tot.resent_bytes, "bytes_lost",
                (json_int_t)g_tot.lost_bytes, "corrupt_messages", (json_int_t)g_tot.corrupt_msgs,
                "duplicates", (json_int_t)g_tot.dup_msgs, "sessions_dropped",
                (json_int_t)g_tot.dropped, "short_sessions", (json_int_t)g_tot.churn_created,
                "wrong_close", (json_int_t)g_tot.wrong_close, "deleted_left_open",
                (json_int_t)g_tot.kick_missing, "protocol_errors",
                (json_int_t)g_tot.protocol_errors, "creations_refused_outside_outages",
                (json_int_t)m->creates_refused_outside, "upgrades_refused_outside_outages",
                (json_int_t)m->upgrades_refused_outside, "ctl_kills", (json_int_t)g_ctl_kills));
  json_object_set_new(root, "fds",
                      json_pack("{s:I, s:I, s:b}", "baseline", (json_int_t)g_base_fds, "end",
                                (json_int_t)g_end_fds, "leak", m->fd_leak));
  json_object_set_new(root, "cpu_s",
                      json_pack("{s:f, s:f, s:f, s:f}", "relay", g_relay_cpu, "controller",
                                g_ctl_cpu, "generator", m->gen_cpu, "wall", m->wall));
  json_object_set_new(root, "relay_version", json_string(g_version));
  json_object_set_new(root, "generator_stalls",
                      json_pack("{s:I, s:f, s:f}", "count", (json_int_t)g_stalls, "longest_s",
                                g_stall_max, "at_t", g_stall_max_at));
  json_object_set_new(root, "outages", outages);
  json_object_set_new(root, "samples_t_gen_rsskib_fds_flowing_bytes", series);
  json_object_set_new(root, "failures", failures);
  if (json_dump_file(root, opt.json, JSON_COMPACT) != 0) printf("!! cannot write %s\n", opt.json);
  json_decref(root);
}

static bool report(double wall, double gen_cpu) {
  summary m = {.wall = wall, .gen_cpu = gen_cpu};
  judge_flatness();
  json_t *outages = json_array();
  print_outages(outages);
  print_relay_kills();
  printf("\nper-kind summary:\n");
  summarise(O_CTL_KILL, "readiness downtime (s)", get_down);
  summarise(O_CTL_KILL, "restart -> ready (s)", get_ready);
  summarise(O_CTL_KILL, "kill -9 -> reaped (s)", get_dead);
  summarise(O_CTL_KILL, "creations refused per outage", get_refused);
  summarise(O_CTL_HANG, "creations refused per outage", get_refused);
  refusals_outside(&m);
  print_totals(&m);
  print_memory(&m);
  judge(&m);
  if (opt.json)
    write_json(&m, outages);
  else
    json_decref(outages);
  printf("load average at the end: %.2f (1 min; the faults' timings depend on it)\n", loadavg());
  printf("\nverdict: %s", m.nwhy ? "FAIL (" : "PASS");
  for (int i = 0; i < m.nwhy; i++)
    printf("%s%s", i ? ", " : "", m.why[i]);
  printf("%s\n", m.nwhy ? ")" : "");
  return m.nwhy == 0;
}

/* ---- options -------------------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: soak --relay-bin PATH --controller-bin PATH [options]\n"
          "  --seconds S        fault phase length (60)\n"
          "  --sessions N       long-lived sessions (100)\n"
          "  --rate B           bytes/s each peer sends (16384)\n"
          "  --window B         unacknowledged bytes a sender may have (262144)\n"
          "  --churn R          short sessions created per second (2); --churn-max N open (50)\n"
          "  --ctl-every S      controller kill -9 period (5; 0: none); --ctl-down S (1)\n"
          "  --hang-at S        SIGSTOP the controller then (default 0.6 x seconds; -1: never)\n"
          "  --hang-for S       for this long (default 2.5 x call timeout)\n"
          "  --relay-kills N    relay kill -9 count (default 1, 2 past 300 s)\n"
          "  --call-timeout S   the relay's --call-timeout (2)\n"
          "  --max-connecting N peer handshakes in flight (4096: every peer redials at once)\n"
          "  --check-rss 0|1    RSS/fd flatness decides the verdict too (0)\n"
          "  --json FILE        write the report as JSON\n"
          "  --tmp DIR          work directory (default: a new /tmp/soak.XXXXXX, removed on PASS)\n"
          "  --keep 1           keep the work directory\n"
          "  --seed N           stream seed (1)\n"
          "  --inject LIST      check the harness: corrupt,gap,cut,hold damage on purpose\n"
          "                     (a byte, a message, a connection, an fd); it must FAIL\n");
  exit(2);
}

static void parse_args(int argc, char **argv) {
  bool hang_set = false;
  for (int i = 1; i < argc; i += 2) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    if (strcmp(a, "--relay-bin") == 0)
      opt.relay_bin = v;
    else if (strcmp(a, "--controller-bin") == 0)
      opt.ctl_bin = v;
    else if (strcmp(a, "--tmp") == 0)
      opt.tmp = v;
    else if (strcmp(a, "--json") == 0)
      opt.json = v;
    else if (strcmp(a, "--seconds") == 0)
      opt.seconds = atof(v);
    else if (strcmp(a, "--sessions") == 0)
      opt.sessions = atoi(v);
    else if (strcmp(a, "--rate") == 0)
      opt.rate = atof(v);
    else if (strcmp(a, "--window") == 0)
      opt.window = atof(v);
    else if (strcmp(a, "--churn") == 0)
      opt.churn = atof(v);
    else if (strcmp(a, "--churn-max") == 0)
      opt.churn_max = atoi(v);
    else if (strcmp(a, "--ctl-every") == 0)
      opt.ctl_every = atof(v);
    else if (strcmp(a, "--ctl-down") == 0)
      opt.ctl_down = atof(v);
    else if (strcmp(a, "--hang-at") == 0)
      opt.hang_at = atof(v), hang_set = true;
    else if (strcmp(a, "--hang-for") == 0)
      opt.hang_for = atof(v);
    else if (strcmp(a, "--relay-kills") == 0)
      opt.relay_kills = atoi(v);
    else if (strcmp(a, "--call-timeout") == 0)
      opt.call_timeout = atof(v);
    else if (strcmp(a, "--max-connecting") == 0)
      opt.max_connecting = atoi(v);
    else if (strcmp(a, "--check-rss") == 0)
      opt.check_rss = atoi(v) != 0;
    else if (strcmp(a, "--keep") == 0)
      opt.keep = atoi(v) != 0;
    else if (strcmp(a, "--inject") == 0)
      opt.inject = v;
    else if (strcmp(a, "--seed") == 0)
      opt.seed = strtoull(v, NULL, 10);
    else
      usage();
  }
  if (!opt.relay_bin || !opt.ctl_bin || opt.seconds < 10 || opt.sessions < 1 || opt.rate <= 0 ||
      opt.window < 2 * SK_MSG_MAX || opt.call_timeout <= 0 || opt.max_connecting < 1)
    usage();
  if (!hang_set) opt.hang_at = 0.6 * opt.seconds;
  if (opt.hang_for < 0) opt.hang_for = 2.5 * opt.call_timeout;
  if (opt.relay_kills < 0) opt.relay_kills = opt.seconds > 300 ? 2 : 1;
  if (opt.relay_kills > 16) usage();
}

int main(int argc, char **argv) {
  g_mono0 = sk_now();
  parse_args(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  cm_log_set_level(CM_LOG_ERROR); /* our own streams' notices are not news */
  char tmpl[] = "/tmp/soak.XXXXXX";
  bool made_tmp = !opt.tmp;
  if (!opt.tmp && !(opt.tmp = mkdtemp(tmpl))) sk_die("mkdtemp: %s", strerror(errno));
  if (cm_mkdir_p(opt.tmp, 0700) != 0) sk_die("cannot make %s", opt.tmp);
  /* 2 sockets per session here and in the relay (which inherits the limit). */
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if ((rlim_t)(4 * opt.sessions + 4 * opt.churn_max + 256) > rl.rlim_cur)
    sk_die("RLIMIT_NOFILE %ld is too small for %d sessions", (long)rl.rlim_cur, opt.sessions);
  printf("soak: %d sessions, %.0f B/s per peer (%.1f MiB/s through the relay), %.0f s of "
         "faults; work dir %s; seed %llu\n",
         opt.sessions, opt.rate, 2 * opt.rate * opt.sessions / 1048576, opt.seconds, opt.tmp,
         (unsigned long long)opt.seed);

  g_loop = uv_default_loop();
  uv_timer_t tick;
  uv_timer_init(g_loop, &tick);
  uv_timer_start(&tick, on_tick, TICK_MS, TICK_MS);
  double wall0 = sk_now();
  setup();
  fault_phase();
  end_phase();
  double wall = sk_now() - wall0;
  double gen_cpu = sk_self_cpu_s();
  bool pass = report(wall, gen_cpu);

  uv_close((uv_handle_t *)&tick, NULL);
  for (int i = 0; i < g_nacs; i++)
    ac_close(g_acs[i]);
  uv_run(g_loop, UV_RUN_DEFAULT);
  for (int i = 0; i < g_nacs; i++)
    ac_free(g_acs[i]);
  cm_tls_ctx_free(g_tls);
  free(g_samples);
  if (pass && made_tmp && !opt.keep) {
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", opt.tmp);
    if (system(cmd) != 0) printf("could not remove %s\n", opt.tmp);
  } else {
    printf("logs: %s (relay.log, controller.log)\n", opt.tmp);
  }
  return pass ? 0 : 1;
}
