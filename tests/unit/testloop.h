/*
 * testloop.h — running a libuv loop from a test, bounded: until a flag is
 * set or a time is up.  Test code only; each test binary owns `loop`.
 */
#ifndef RELAY_TESTS_TESTLOOP_H
#define RELAY_TESTS_TESTLOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/common.h"

static uv_loop_t *loop;

static void on_wake(uv_timer_t *t) { (void)t; }

/* Runs the loop until *flag or ms elapse; returns *flag. */
static bool run_until(const bool *flag, uint64_t ms) {
  uint64_t end = cm_now_mono_ms() + ms;
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, on_wake, 10, 10);
  while (!*flag && cm_now_mono_ms() < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *flag;
}

static inline void run_ms(uint64_t ms) {
  bool never = false;
  run_until(&never, ms);
}

#endif
