/*
 * benchproc.h — child processes for the benchmarks and the soak harness
 * (header-only, test code only): spawn a program with stdin from /dev/null
 * and stdout+stderr into a log file, so its logs stay out of the output;
 * read a process's resident memory and CPU time from /proc; give a process
 * a CPU budget of its own (a cgroup under the cpu controller).
 */
#ifndef RELAY_BENCH_BENCHPROC_H
#define RELAY_BENCH_BENCHPROC_H

#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

extern char **environ;

/* append: keep what earlier children wrote to the same log. */
static inline pid_t bench_spawn(char *const argv[], const char *log_path, bool append) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log_path,
                                   O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    fprintf(stderr, "spawn %s: %s\n", argv[0], strerror(rc));
    return -1;
  }
  return pid;
}

/* VmRSS in KiB; -1 if unknown. */
static inline long bench_rss_kib(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) kib = strtol(line + 6, NULL, 10);
  fclose(f);
  return kib;
}

/* CPU time (user + system) of a process so far, in seconds, and in *sys
 * (when not NULL) the system part; -1 if unknown. */
static inline double bench_cpu_s(pid_t pid, double *sys) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  unsigned long ut, st;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
    return -1;
  double tick = (double)sysconf(_SC_CLK_TCK);
  if (sys) *sys = (double)st / tick;
  return (double)(ut + st) / tick;
}

/* A CPU budget: a cgroup of the cpu controller (v2: cpu.max; v1: the CFS
 * quota), so that processes that would each have a host of their own in a
 * deployment get the same share of one core here.  The period is short
 * (10 ms) so a throttled process stalls for milliseconds, not for a tenth
 * of a second that a 3 s window would feel. */
#define BENCH_CG_PERIOD_US 10000
typedef struct bench_cgroup {
  char dir[256];
  const char *base; /* the controller's root, where members go back */
  bool v2;
} bench_cgroup;

static inline bool bench_cg_write(const char *dir, const char *file, const char *text) {
  char path[320];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  FILE *f = fopen(path, "w");
  if (!f) return false;
  bool ok = fputs(text, f) >= 0;
  return fclose(f) == 0 && ok;
}

/* False (and nothing made) when neither controller can be used here. */
static inline bool bench_cgroup_make(bench_cgroup *g, const char *name) {
  static const char v1[] = "/sys/fs/cgroup/cpu", v2[] = "/sys/fs/cgroup";
  if (access("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", W_OK) == 0) {
    g->base = v1;
    g->v2 = false;
  } else if (access("/sys/fs/cgroup/cgroup.controllers", R_OK) == 0) {
    g->base = v2;
    g->v2 = true;
    bench_cg_write(v2, "cgroup.subtree_control", "+cpu"); /* may be on already */
  } else {
    return false;
  }
  snprintf(g->dir, sizeof g->dir, "%s/%s-%d", g->base, name, (int)getpid());
  if (mkdir(g->dir, 0755) != 0) return false;
  char period[32];
  snprintf(period, sizeof period, "%d", BENCH_CG_PERIOD_US);
  if (!g->v2 && !bench_cg_write(g->dir, "cpu.cfs_period_us", period)) {
    rmdir(g->dir);
    return false;
  }
  return true;
}

/* pct of one core; 0: no limit. */
static inline bool bench_cgroup_limit(const bench_cgroup *g, int pct) {
  char v[64];
  long quota = (long)pct * BENCH_CG_PERIOD_US / 100;
  if (g->v2) {
    if (pct > 0)
      snprintf(v, sizeof v, "%ld %d", quota, BENCH_CG_PERIOD_US);
    else
      snprintf(v, sizeof v, "max %d", BENCH_CG_PERIOD_US);
    return bench_cg_write(g->dir, "cpu.max", v);
  }
  snprintf(v, sizeof v, "%ld", pct > 0 ? quota : -1L);
  return bench_cg_write(g->dir, "cpu.cfs_quota_us", v);
}

/* Moves the process (all its threads) into the group. */
static inline bool bench_cgroup_add(const bench_cgroup *g, pid_t pid) {
  char v[32];
  snprintf(v, sizeof v, "%d", (int)pid);
  return bench_cg_write(g->dir, "cgroup.procs", v);
}

/* Moves pid (if still alive; 0: none) back to the root and removes the group. */
static inline void bench_cgroup_remove(bench_cgroup *g, pid_t pid) {
  if (!g->dir[0]) return;
  if (pid > 0) {
    char v[32];
    snprintf(v, sizeof v, "%d", (int)pid);
    bench_cg_write(g->base, "cgroup.procs", v);
  }
  for (int i = 0; i < 50 && rmdir(g->dir) != 0; i++) /* a dead member leaves a moment later */
    usleep(20000);
  g->dir[0] = '\0';
}
#endif
