/*
 * bench_store.c — the controller's stores side by side (issue 12): creates
 * per second and Validates per second through the store interface
 * (controller-stub/store.h) with the journal (one fdatasync per create, as
 * `relay-controller run --state-dir`) and with Redis (`--store redis://`,
 * a redis-server started here on loopback), in the same run, interleaved.
 *
 * Redis runs twice: AOF with appendfsync everysec (Redis's default
 * durability: up to a second of writes lost with the machine) and with
 * appendfsync always (every write on disk before its answer, as durable
 * as the journal).  Redis takes --inflight calls at once (pipelined on one
 * connection, as a busy controller does); the journal answers each call
 * before the next starts (it is synchronous), so in-flight calls do not
 * apply to it.  A Validate is a real one: the token is hashed, the
 * session looked up, its slot decided.
 *
 * Each figure is the best of --rounds rounds.  "@@" lines are the summary
 * for tests/bench/run.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "benchproc.h"
#include "controller-stub/store.h"

static struct {
  const char *redis_server, *tmp;
  double secs;
  int inflight, rounds;
} g = {"/usr/bin/redis-server", "/tmp", 2.0, 100, 2};

static uv_loop_t *g_loop;
static bool g_ready;
static ctl_store *g_st;
static double g_deadline;
static long g_done, g_failed;
static int g_out;
static char g_sid[CM_TOKEN_LEN + 1], g_token[CM_TOKEN_LEN + 1];

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_store: %s\n", what);
  exit(1);
}

static void on_kick(void *ud, const char *id, const char *node, const char *reason, bool local) {
  (void)ud, (void)id, (void)node, (void)reason, (void)local;
}

static void on_ready(void *ud, bool ready) {
  (void)ud;
  g_ready = ready;
}

static const ctl_store_owner OWNER = {on_kick, on_ready, NULL};

static void run_until(const bool *flag, double timeout) {
  double end = now_s() + timeout;
  while (!*flag && now_s() < end)
    uv_run(g_loop, UV_RUN_ONCE);
}

/* ---- the two measurements -------------------------------------------------------- */

static void next_create(void);
static void next_validate(void);

static void on_created(void *ud, int rc, ctl_reg_created *c) {
  (void)ud;
  g_out--;
  if (rc != 0) g_failed++;
  g_done += rc == 0;
  if (rc == 0 && !g_sid[0]) {
    memcpy(g_sid, c->status.id, sizeof g_sid);
    memcpy(g_token, c->initiator_token, sizeof g_token);
  }
  if (now_s() < g_deadline) next_create();
}

static void next_create(void) {
  g_out++;
  g_st->ops->create(g_st, time(NULL), 3600, 0, "bench", "wss://bench", NULL, on_created, NULL);
}

static void on_decided(void *ud, int rc, const ctl_reg_decision *d) {
  (void)ud;
  g_out--;
  if (rc != 0 || !d->allow) g_failed++;
  g_done += rc == 0 && d->allow;
  if (now_s() < g_deadline) next_validate();
}

static void next_validate(void) {
  g_out++;
  g_st->ops->validate(g_st, time(NULL), g_sid, g_token, 0, "bench", on_decided, NULL);
}

/* Calls per second for the window: `inflight` started, each completion
 * starting the next.  A synchronous store recurses through its callback,
 * so it is driven one call at a time from here instead. */
static double measure(void (*next)(void), bool sync) {
  g_done = g_failed = 0;
  double t0 = now_s();
  g_deadline = t0 + g.secs;
  if (sync) {
    while (now_s() < g_deadline) {
      double stop = g_deadline;
      g_deadline = 0; /* callbacks start nothing */
      next();
      g_deadline = stop;
    }
  } else {
    for (int i = 0; i < g.inflight; i++)
      next();
    while (g_out > 0)
      uv_run(g_loop, UV_RUN_ONCE);
  }
  double took = now_s() - t0;
  if (g_failed) fprintf(stderr, "bench_store: %ld calls failed\n", g_failed);
  return (double)g_done / took;
}

/* ---- stores --------------------------------------------------------------------- */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    die("no free port");
  close(fd);
  return ntohs(a.sin_port);
}

static pid_t start_redis(const char *fsync, int port) {
  char dir[512], conf[600], log[600];
  snprintf(dir, sizeof dir, "%s/redis-%s", g.tmp, fsync);
  snprintf(conf, sizeof conf, "%s/redis.conf", dir);
  snprintf(log, sizeof log, "%s/redis.log", dir);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
  if (system(cmd) != 0) die("cannot make the Redis directory");
  FILE *f = fopen(conf, "w");
  if (!f) die("cannot write redis.conf");
  fprintf(f,
          "bind 127.0.0.1\nport %d\ndir %s\nsave \"\"\nappendonly yes\nappendfsync %s\n"
          "daemonize no\n",
          port, dir, fsync);
  fclose(f);
  char *argv[] = {(char *)g.redis_server, conf, NULL};
  pid_t pid = bench_spawn(argv, log, false);
  if (pid < 0) die("cannot start redis-server");
  return pid;
}

static void close_store(ctl_store *st);

static ctl_store *open_redis(int port, ctl_registry_config *rc) {
  ctl_redis_config r = {.prefix = "bench:", .name = "bench", .timeout_ms = 10000};
  snprintf(r.url.host, sizeof r.url.host, "127.0.0.1");
  r.url.port = port;
  char err[256];
  for (int attempt = 0; attempt < 50; attempt++) {
    g_ready = false;
    ctl_store *st = ctl_store_redis_new(g_loop, &r, rc, &OWNER, err, sizeof err);
    if (!st) die(err);
    run_until(&g_ready, 0.2);
    if (g_ready) return st;
    close_store(st);
  }
  die("redis-server did not come up");
  return NULL;
}

static void close_store(ctl_store *st) {
  st->ops->close(st, NULL, NULL);
  for (int i = 0; i < 20; i++)
    uv_run(g_loop, UV_RUN_NOWAIT);
  st->ops->free(st);
}

typedef struct result {
  const char *name;
  double creates, validates;
} result;

static void round_of(result *res, const char *kind, int port) {
  ctl_registry_config rc;
  ctl_registry_config_defaults(&rc);
  rc.max_sessions = 10000000;
  char err[256], dir[600];
  bool sync = strcmp(kind, "journal") == 0;
  if (sync) {
    snprintf(dir, sizeof dir, "%s/journal", g.tmp);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) die("cannot clear the journal");
    g_st = ctl_store_journal_new(dir, &rc, &OWNER, err, sizeof err);
    if (!g_st) die(err);
  } else {
    g_st = open_redis(port, &rc);
  }
  g_sid[0] = '\0';
  double c = measure(next_create, sync);
  double v = measure(next_validate, sync);
  res->creates = c > res->creates ? c : res->creates;
  res->validates = v > res->validates ? v : res->validates;
  printf("  %-22s creates/s %9.0f   validates/s %9.0f\n", res->name, c, v);
  fflush(stdout);
  close_store(g_st);
}

int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--redis-server"))
      g.redis_server = argv[i + 1];
    else if (!strcmp(argv[i], "--tmp"))
      g.tmp = argv[i + 1];
    else if (!strcmp(argv[i], "--secs"))
      g.secs = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--inflight"))
      g.inflight = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--rounds"))
      g.rounds = atoi(argv[i + 1]);
    else
      die("usage: bench_store [--redis-server PATH] [--tmp DIR] [--secs S] [--inflight N] "
          "[--rounds N]");
  }
  signal(SIGPIPE, SIG_IGN);
  cm_log_set_level(CM_LOG_ERROR);
  g_loop = uv_default_loop();
  int port_every = free_port(), port_always = free_port();
  pid_t every = start_redis("everysec", port_every);
  pid_t always = start_redis("always", port_always);
  result res[] = {
      {"journal (fdatasync)", 0, 0}, {"redis aof everysec", 0, 0}, {"redis aof always", 0, 0}};
  printf("stores: %.1f s windows, %d rounds, %d Redis calls in flight\n", g.secs, g.rounds,
         g.inflight);
  for (int r = 0; r < g.rounds; r++) {
    round_of(&res[0], "journal", 0);
    round_of(&res[1], "redis", port_every);
    round_of(&res[2], "redis", port_always);
  }
  kill(every, SIGTERM);
  kill(always, SIGTERM);
  waitpid(every, NULL, 0);
  waitpid(always, NULL, 0);
  printf("best of %d rounds:\n", g.rounds);
  for (size_t i = 0; i < 3; i++) {
    printf("  %-22s creates/s %9.0f (%.2fx journal)   validates/s %9.0f (%.2fx journal)\n",
           res[i].name, res[i].creates, res[i].creates / res[0].creates, res[i].validates,
           res[i].validates / res[0].validates);
    printf("@@ store %s: creates/s %.0f validates/s %.0f\n", res[i].name, res[i].creates,
           res[i].validates);
  }
  uv_loop_close(g_loop);
  return 0;
}
