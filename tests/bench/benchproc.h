/*
 * benchproc.h — child processes for the benchmarks (header-only, bench
 * code only): spawn a program with stdin from /dev/null and stdout+stderr
 * into a log file, so its logs stay out of the benchmark's output.
 */
#ifndef RELAY_BENCH_BENCHPROC_H
#define RELAY_BENCH_BENCHPROC_H

#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

extern char **environ;

/* append: keep what earlier children wrote to the same log. */
static pid_t bench_spawn(char *const argv[], const char *log_path, bool append) {
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

#endif
