/*
 * benchproc.h — child processes for the benchmarks and the soak harness
 * (header-only, test code only): spawn a program with stdin from /dev/null
 * and stdout+stderr into a log file, so its logs stay out of the output;
 * read a process's resident memory and CPU time from /proc.
 */
#ifndef RELAY_BENCH_BENCHPROC_H
#define RELAY_BENCH_BENCHPROC_H

#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
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
#endif
