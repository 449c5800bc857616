/*
 * test_session.c — the data plane's decisions (relay/session.c): where a
 * chunk goes, when a sender pauses and resumes, what a lone peer may send
 * early and with which code it is refused, and when counters are reported
 * — the exact actions the glue is asked to carry out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "relay/session.h"

enum { I = RLY_SLOT_INITIATOR, R = RLY_SLOT_RESPONDER };

typedef struct log_t {
  rly_sess_action a[32];
  int n;
} log_t;

static void rec(void *ud, const rly_sess_action *a) {
  log_t *l = ud;
  assert_true(l->n < 32);
  l->a[l->n++] = *a;
}

/* Index of the first action of type t (and, unless -2, slot) from i on;
 * -1 when there is none. */
static int find(const log_t *l, int from, rly_sess_act t, int slot) {
  for (int i = from; i < l->n; i++)
    if (l->a[i].type == t && (slot == -2 || l->a[i].slot == slot)) return i;
  return -1;
}

static int find_event(const log_t *l, rly_sess_event ev) {
  for (int i = 0; i < l->n; i++)
    if (l->a[i].type == RLY_SESS_EVENT && l->a[i].event == ev) return i;
  return -1;
}

static const rly_sess_config g_cfg = {.peer_wait_ms = 120000,
                                      .expires_at_ms = 0,
                                      .hold_cap = 1000,
                                      .hold_max = 1500,
                                      .stats_every_ms = 1000};

static void open_session(rly_sess *s, log_t *l) {
  rly_sess_init(s, &g_cfg, rec, l);
  assert_int_equal(rly_sess_attach(s, I, 0), 0);
  assert_int_equal(rly_sess_attach(s, R, 0), 0);
  assert_int_equal(s->pair.state, RLY_PAIR_OPEN);
  l->n = 0;
}

static void test_open_forwards_and_counts(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  open_session(&s, &l);
  assert_int_equal(rly_sess_route(&s, I, 104, 100), RLY_ROUTE_FORWARD);
  assert_int_equal(rly_sess_route(&s, R, 12, 10), RLY_ROUTE_FORWARD);
  assert_int_equal(s.bytes[I], 100);
  assert_int_equal(s.bytes[R], 10);
  assert_int_equal(l.n, 0); /* forwarding asks for nothing */
  /* A receiver with room: the sender goes on. */
  rly_sess_read_done(&s, I, false);
  assert_int_equal(l.n, 0);
}

static void test_backpressure_pauses_and_drain_resumes(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  open_session(&s, &l);
  rly_sess_route(&s, I, 70000, 69990);
  rly_sess_read_done(&s, I, true);
  assert_int_equal(l.n, 1);
  assert_int_equal(l.a[0].type, RLY_SESS_PAUSE);
  assert_int_equal(l.a[0].slot, I);
  assert_true(s.paused[I]);
  /* Paused once: a second full read asks nothing more. */
  rly_sess_read_done(&s, I, true);
  assert_int_equal(l.n, 1);
  /* The sender's own queue draining frees nobody; the receiver's does. */
  rly_sess_drained(&s, I);
  assert_int_equal(l.n, 1);
  rly_sess_drained(&s, R);
  assert_int_equal(l.n, 2);
  assert_int_equal(l.a[1].type, RLY_SESS_RESUME);
  assert_int_equal(l.a[1].slot, I);
  assert_false(s.paused[I]);
}

static void test_lone_peer_is_held_paused_then_flushed(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  rly_sess_init(&s, &g_cfg, rec, &l);
  assert_int_equal(rly_sess_attach(&s, I, 0), 0);
  assert_int_equal(rly_sess_route(&s, I, 600, 590), RLY_ROUTE_HOLD);
  rly_sess_read_done(&s, I, false);
  assert_int_equal(find(&l, 0, RLY_SESS_PAUSE, I), -1); /* 600 < hold_cap */
  assert_int_equal(rly_sess_route(&s, I, 600, 590), RLY_ROUTE_HOLD);
  rly_sess_read_done(&s, I, false);
  assert_true(find(&l, 0, RLY_SESS_PAUSE, I) >= 0); /* 1200 >= hold_cap: stop reading */
  assert_int_equal(s.held[R], 1200);
  assert_int_equal(s.bytes[I], 0); /* held is not delivered */
  /* The counterpart arrives: what was held goes to it first, then the
   * sender reads again. */
  int before = l.n;
  assert_int_equal(rly_sess_attach(&s, R, 10), 0);
  int flush = find(&l, before, RLY_SESS_FLUSH, R);
  int resume = find(&l, before, RLY_SESS_RESUME, I);
  assert_true(flush >= 0 && resume > flush);
  assert_int_equal(l.a[flush].bytes, 1180);
  assert_int_equal(s.bytes[I], 1180);
  assert_int_equal(s.held[R], 0);
  assert_true(find_event(&l, RLY_SESS_EV_OPEN) >= 0);
}

static void test_hold_overflow_closes_sender_1008_and_frees_slot(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  rly_sess_init(&s, &g_cfg, rec, &l);
  rly_sess_attach(&s, R, 0);
  assert_int_equal(rly_sess_route(&s, R, 1400, 1390), RLY_ROUTE_HOLD);
  l.n = 0;
  assert_int_equal(rly_sess_route(&s, R, 200, 190), RLY_ROUTE_DROP); /* 1600 > hold_max */
  int c = find(&l, 0, RLY_SESS_CLOSE, R);
  assert_true(c >= 0);
  assert_int_equal(l.a[c].code, 1008);
  assert_string_equal(l.a[c].reason, "too much data before the peer arrived");
  assert_true(find_event(&l, RLY_SESS_EV_DETACH) > c);
  /* Its slot is free at once; nothing more is taken from it. */
  assert_false(s.pair.held[R]);
  assert_int_equal(rly_sess_route(&s, R, 10, 8), RLY_ROUTE_DROP);
  assert_int_equal(rly_sess_attach(&s, R, 5), 0);
}

static void test_leave_closes_other_with_sendable_code(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  open_session(&s, &l);
  rly_sess_leave(&s, I, 4001, 5);
  int c = find(&l, 0, RLY_SESS_CLOSE, R);
  assert_true(c >= 0);
  assert_int_equal(l.a[c].code, 4001);
  assert_int_equal(s.pair.state, RLY_PAIR_PENDING);
  l.n = 0;
  open_session(&s, &l);
  rly_sess_leave(&s, R, 1006, 5); /* not a code one may send */
  c = find(&l, 0, RLY_SESS_CLOSE, I);
  assert_true(c >= 0);
  assert_int_equal(l.a[c].code, 1000);
}

static void test_closing_receiver_drops(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  open_session(&s, &l);
  rly_sess_closing(&s, R);
  assert_int_equal(rly_sess_route(&s, I, 50, 48), RLY_ROUTE_DROP);
  assert_int_equal(s.bytes[I], 0);
  /* Nor does a closing sender get anything through. */
  assert_int_equal(rly_sess_route(&s, R, 50, 48), RLY_ROUTE_DROP);
}

static void test_kick_ttl_and_peer_wait_close_1001(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  open_session(&s, &l);
  rly_sess_kick(&s, 1001, "session deleted");
  assert_true(find(&l, 0, RLY_SESS_CLOSE, I) >= 0 && find(&l, 0, RLY_SESS_CLOSE, R) >= 0);
  assert_int_equal(l.a[find(&l, 0, RLY_SESS_CLOSE, I)].code, 1001);
  assert_true(find_event(&l, RLY_SESS_EV_CLOSE) >= 0);
  assert_true(rly_sess_done(&s));

  rly_sess_config ttl = g_cfg;
  ttl.expires_at_ms = 50000;
  l.n = 0;
  rly_sess_init(&s, &ttl, rec, &l);
  rly_sess_attach(&s, I, 0);
  rly_sess_attach(&s, R, 0);
  rly_sess_tick(&s, 10, 49999);
  assert_int_equal(find(&l, 0, RLY_SESS_CLOSE, -2), -1);
  rly_sess_tick(&s, 20, 50000);
  assert_int_equal(l.a[find(&l, 0, RLY_SESS_CLOSE, I)].code, 1001);
  assert_int_equal(l.a[find(&l, 0, RLY_SESS_CLOSE, R)].code, 1001);

  l.n = 0;
  rly_sess_init(&s, &g_cfg, rec, &l);
  rly_sess_attach(&s, I, 1000);
  rly_sess_tick(&s, 1000 + 119999, 0);
  assert_int_equal(find(&l, 0, RLY_SESS_CLOSE, I), -1);
  rly_sess_tick(&s, 1000 + 120000, 0);
  int c = find(&l, 0, RLY_SESS_CLOSE, I);
  assert_true(c >= 0);
  assert_int_equal(l.a[c].code, 1001);
  assert_string_equal(l.a[c].reason, "peer_wait expired");
}

static void test_stats_at_most_every_period_and_at_the_end(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  rly_sess_init(&s, &g_cfg, rec, &l);
  rly_sess_attach(&s, I, 0);
  rly_sess_attach(&s, R, 0); /* reported at 0 */
  l.n = 0;
  rly_sess_tick(&s, 5000, 0);
  assert_int_equal(find_event(&l, RLY_SESS_EV_STATS), -1); /* nothing changed */
  rly_sess_route(&s, I, 10, 8);
  rly_sess_tick(&s, 5500, 0);
  assert_true(find_event(&l, RLY_SESS_EV_STATS) >= 0); /* changed, 5.5 s since */
  l.n = 0;
  rly_sess_route(&s, I, 10, 8);
  rly_sess_tick(&s, 6000, 0); /* changed, but 0.5 s since the last report */
  assert_int_equal(find_event(&l, RLY_SESS_EV_STATS), -1);
  rly_sess_tick(&s, 6500, 0);
  assert_true(find_event(&l, RLY_SESS_EV_STATS) >= 0);
  /* Counters changed since the last report are reported as the session
   * ends, so none are lost. */
  l.n = 0;
  rly_sess_route(&s, I, 10, 8);
  rly_sess_leave(&s, I, 1000, 6600);
  rly_sess_leave(&s, R, 1000, 6600);
  l.n = 0;
  rly_sess_route(&s, I, 1, 1); /* no one: dropped, uncounted */
  assert_true(rly_sess_done(&s));
  assert_int_equal(s.bytes[I], 24);
}

static void test_done_only_when_empty(void **st) {
  (void)st;
  rly_sess s;
  log_t l = {0};
  rly_sess_init(&s, &g_cfg, rec, &l);
  assert_true(rly_sess_done(&s));
  rly_sess_attach(&s, I, 0);
  assert_false(rly_sess_done(&s));
  assert_int_equal(rly_sess_attach(&s, I, 0), -1); /* the slot is held: 409 */
  rly_sess_leave(&s, I, 0, 1);
  assert_true(rly_sess_done(&s));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_open_forwards_and_counts),
      cmocka_unit_test(test_backpressure_pauses_and_drain_resumes),
      cmocka_unit_test(test_lone_peer_is_held_paused_then_flushed),
      cmocka_unit_test(test_hold_overflow_closes_sender_1008_and_frees_slot),
      cmocka_unit_test(test_leave_closes_other_with_sendable_code),
      cmocka_unit_test(test_closing_receiver_drops),
      cmocka_unit_test(test_kick_ttl_and_peer_wait_close_1001),
      cmocka_unit_test(test_stats_at_most_every_period_and_at_the_end),
      cmocka_unit_test(test_done_only_when_empty),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
