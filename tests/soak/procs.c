/*
 * procs.c — the soak harness's child processes: enrolment with the
 * project's own commands, `relay serve` (two-process mode: remote
 * controller over mutual TLS, TLS with a development certificate on the
 * public listener, --no-auth on loopback) and `relay-controller run` with a
 * durable registry; kill -9, SIGTERM with a bound, crash detection, and
 * what /proc says about a process.
 *
 * Children run in their own sessions and get SIGKILL when the harness dies
 * (PR_SET_PDEATHSIG), so a crashed or timed-out run leaves no relay behind.  Waits here run the
 * loop (sk_run_for), so they are called from the harness's driver, never from a libuv callback.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "relay/relay.h"
#include "../bench/benchproc.h"
#include "soak.h"

#define NODE_ID         "soak-relay"
#define W(lit)          ((char[]){lit}) /* a writable copy, for argv */
#define START_TIMEOUT_S 15.0
#define BIND_RETRIES    20 /* a restart on the old ports may race TIME_WAIT users */

sk_proc g_relay = {.name = "relay"}, g_ctl = {.name = "controller"};
int g_relay_port, g_tunnel_port;
char g_cert[PATH_MAX], g_key[PATH_MAX];
char g_version[256];

static char g_dir[PATH_MAX / 2]; /* the work directory */

static void path_in(char *out, const char *name) { snprintf(out, PATH_MAX, "%s/%s", g_dir, name); }

/* Starts argv with stdin from /dev/null, stdout appended to out and stderr
 * to err (NULL: the same file). */
static pid_t spawn(char *const argv[], const char *out, const char *err) {
  int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC;
  int fo = open(out, flags, 0600), fe = err ? open(err, flags, 0600) : -1;
  int fn = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fo < 0 || fn < 0 || (err && fe < 0)) sk_die("cannot open %s: %s", out, strerror(errno));
  pid_t parent = getpid(), pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127); /* the harness is already gone */
    /* Its own session, as a service manager would start it: with autogroup
     * scheduling a session shares one CPU slice, and the relay should not
     * share the load generator's. */
    setsid();
    dup2(fn, 0);
    dup2(fo, 1);
    dup2(fe >= 0 ? fe : fo, 2);
    execv(argv[0], argv);
    _exit(127);
  }
  close(fo);
  close(fn);
  if (fe >= 0) close(fe);
  if (pid < 0) sk_die("fork: %s", strerror(errno));
  return pid;
}

/* Runs a tool to completion (bounded); stdout into out (NULL: the log). */
static void run_tool(char *const argv[], const char *out) {
  char log[PATH_MAX];
  path_in(log, "enrol.log");
  if (out) unlink(out);
  pid_t pid = spawn(argv, out ? out : log, log);
  if (pid < 0) sk_die("cannot run %s", argv[0]);
  for (int i = 0; i < 3000; i++) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return;
      sk_die("%s %s failed (see %s)", argv[0], argv[1], log);
    }
    usleep(10 * 1000);
  }
  kill(pid, SIGKILL);
  sk_die("%s %s did not finish within 30 s", argv[0], argv[1]);
}

void sk_enrol(void) {
  snprintf(g_dir, sizeof g_dir, "%s", opt.tmp);
  char ca[PATH_MAX], key[PATH_MAX], csr[PATH_MAX], crt[PATH_MAX], cert[PATH_MAX];
  path_in(ca, "CA");
  path_in(key, "relay.key");
  path_in(csr, "relay.csr");
  path_in(crt, "relay.crt");
  path_in(cert, "cert");
  char *ctl = (char *)opt.ctl_bin, *relay = (char *)opt.relay_bin;
  char version[PATH_MAX];
  path_in(version, "version.txt");
  run_tool((char *[]){relay, W("version"), NULL}, version);
  FILE *f = fopen(version, "r");
  if (!f || !fgets(g_version, sizeof g_version, f)) snprintf(g_version, sizeof g_version, "?");
  g_version[strcspn(g_version, "\n")] = '\0';
  if (f) fclose(f);
  run_tool((char *[]){ctl, W("init-ca"), W("--dir"), ca, NULL}, NULL);
  run_tool((char *[]){relay, W("gen-csr"), W("--key"), key, W("--node-id"), W(NODE_ID), NULL}, csr);
  run_tool((char *[]){ctl, W("sign-csr"), W("--dir"), ca, W("--host"), W("127.0.0.1"), W("--csr"),
                      csr, NULL},
           crt);
  /* The relay makes the same development certificate in the same directory
   * and reuses it; made here first so the peers can pin it. */
  char err[512];
  if (rly_dev_cert_ensure(cert, g_cert, g_key, err, sizeof err) != 0) sk_die("%s", err);
}

/* ---- the relay ------------------------------------------------------------------------ */

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* The "port" of the last log line (from offset `from`) whose msg is `msg`. */
static int port_in_log(const char *log, long from, const char *msg) {
  FILE *f = fopen(log, "r");
  if (!f) return 0;
  fseek(f, from, SEEK_SET);
  char line[4096], want[128];
  snprintf(want, sizeof want, "\"msg\":\"%s\"", msg);
  int port = 0;
  while (fgets(line, sizeof line, f)) {
    const char *p = strstr(line, want);
    if (p && (p = strstr(line, "\"port\":"))) port = atoi(p + 7);
  }
  fclose(f);
  return port;
}

static pid_t spawn_relay(void) {
  char listen[64], tunnel[64], timeout[32], cert[PATH_MAX], key[PATH_MAX], crt[PATH_MAX],
      ca[PATH_MAX];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", g_relay_port);
  snprintf(tunnel, sizeof tunnel, "127.0.0.1:%d", g_tunnel_port);
  snprintf(timeout, sizeof timeout, "%ldms", (long)(opt.call_timeout * 1000));
  path_in(cert, "cert");
  path_in(key, "relay.key");
  path_in(crt, "relay.crt");
  path_in(ca, "CA/ca.crt");
  char *argv[] = {(char *)opt.relay_bin,
                  W("serve"),
                  W("--listen"),
                  listen,
                  W("--dev-cert-dir"),
                  cert,
                  W("--no-auth"),
                  W("--tunnel-listen"),
                  tunnel,
                  W("--tunnel-cert"),
                  crt,
                  W("--tunnel-key"),
                  key,
                  W("--controller-ca"),
                  ca,
                  W("--node-id"),
                  W(NODE_ID),
                  W("--call-timeout"),
                  timeout,
                  NULL};
  return spawn(argv, g_relay.log, NULL);
}

bool sk_relay_start(void) {
  path_in(g_relay.log, "relay.log");
  for (int attempt = 0; attempt < BIND_RETRIES; attempt++) {
    long from = file_size(g_relay.log);
    g_relay.pid = spawn_relay();
    g_relay.starts++;
    double until = sk_now() + START_TIMEOUT_S;
    bool exited = false;
    while (sk_now() < until) {
      int st;
      if (waitpid(g_relay.pid, &st, WNOHANG) == g_relay.pid) {
        exited = true;
        break;
      }
      int port = port_in_log(g_relay.log, from, "listening");
      if (port > 0) {
        if (!g_tunnel_port)
          g_tunnel_port = port_in_log(g_relay.log, from, "listening for controllers");
        g_relay_port = port;
        return g_tunnel_port > 0;
      }
      sk_run_for(0.01);
    }
    if (!exited) {
      printf("!! the relay did not listen within %.0f s (see %s)\n", START_TIMEOUT_S, g_relay.log);
      sk_proc_kill(&g_relay);
      return false;
    }
    g_relay.pid = 0;
    if (!g_relay_port) break; /* the first start: no port to fight for */
    printf("   relay restart on port %d failed (attempt %d); retrying\n", g_relay_port,
           attempt + 1);
    sk_run_for(0.25);
  }
  printf("!! the relay exited at start (see %s)\n", g_relay.log);
  return false;
}

/* ---- the controller ------------------------------------------------------------------- */

void sk_ctl_start(void) {
  char ca[PATH_MAX], state[PATH_MAX], relay[64];
  path_in(g_ctl.log, "controller.log");
  path_in(ca, "CA");
  path_in(state, "controller-state");
  snprintf(relay, sizeof relay, "127.0.0.1:%d", g_tunnel_port);
  char *argv[] = {(char *)opt.ctl_bin,
                  W("run"),
                  W("--ca-dir"),
                  ca,
                  W("--relay"),
                  relay,
                  W("--state-dir"),
                  state,
                  W("--accept-unauthenticated"),
                  NULL};
  g_ctl.pid = spawn(argv, g_ctl.log, NULL);
  g_ctl.stopped = false;
  g_ctl.starts++;
}

/* ---- signals and exits ---------------------------------------------------------------- */

static void describe_exit(const sk_proc *p, int st, const char *when) {
  if (WIFSIGNALED(st))
    printf("!! %s (pid %d) died of signal %d %s (see %s)\n", p->name, (int)p->pid, WTERMSIG(st),
           when, p->log);
  else
    printf("!! %s (pid %d) exited with status %d %s (see %s)\n", p->name, (int)p->pid,
           WEXITSTATUS(st), when, p->log);
}

/* A process in uninterruptible sleep (fdatasync on a busy disk) dies only
 * when the call returns, which can take seconds: the loop runs meanwhile,
 * so the peers keep streaming, and the caller learns how long it took. */
#define REAP_TIMEOUT_S 30.0

double sk_proc_kill(sk_proc *p) {
  if (p->pid <= 0) return 0;
  double t0 = sk_now();
  kill(p->pid, SIGKILL);
  while (waitpid(p->pid, NULL, WNOHANG) != p->pid) {
    if (sk_now() - t0 > REAP_TIMEOUT_S)
      sk_die("%s (pid %d) survived SIGKILL", p->name, (int)p->pid);
    sk_run_for(0.002);
  }
  p->pid = 0;
  p->stopped = false;
  return sk_now() - t0;
}

bool sk_proc_stop(sk_proc *p, double timeout) {
  if (p->pid <= 0) return false;
  if (p->stopped) kill(p->pid, SIGCONT);
  kill(p->pid, SIGTERM);
  double until = sk_now() + timeout;
  while (sk_now() < until) {
    int st;
    if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
      bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
      if (!ok) describe_exit(p, st, "on SIGTERM");
      p->pid = 0;
      return ok;
    }
    sk_run_for(0.02);
  }
  printf("!! %s (pid %d) did not exit within %.0f s of SIGTERM; killed\n", p->name, (int)p->pid,
         timeout);
  sk_proc_kill(p);
  return false;
}

bool sk_proc_died(sk_proc *p) {
  if (p->pid <= 0) return false;
  int st;
  if (waitpid(p->pid, &st, WNOHANG) != p->pid) return false;
  describe_exit(p, st, "unexpectedly");
  p->pid = 0;
  p->crashes++;
  return true;
}

long sk_log_count(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[4096];
  long n = 0;
  while (fgets(line, sizeof line, f))
    n += strstr(line, needle) != NULL;
  fclose(f);
  return n;
}

/* ---- /proc ---------------------------------------------------------------------------- */

long sk_rss_kib(pid_t pid) { return bench_rss_kib(pid); }

int sk_fd_count(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (!d) return -1;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    /* libuv opens /dev/null once per loop, the first time that loop sees a
     * stream (its reserve for EMFILE): a worker that took its first
     * connection after the baseline has one more, which is not a leak. */
    char link[320], target[32];
    snprintf(link, sizeof link, "%s/%s", path, e->d_name);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len > 0 && (size_t)len == strlen("/dev/null") && memcmp(target, "/dev/null", len) == 0)
      continue;
    n++;
  }
  closedir(d);
  return n;
}

void sk_fd_list(pid_t pid, FILE *out) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    char link[320], target[256];
    snprintf(link, sizeof link, "%s/%s", path, e->d_name);
    ssize_t n = readlink(link, target, sizeof target - 1);
    target[n > 0 ? n : 0] = 0;
    fprintf(out, "    fd %s -> %s\n", e->d_name, target);
  }
  closedir(d);
}

double sk_cpu_s(pid_t pid) { return bench_cpu_s(pid, NULL); }

double sk_self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}
