/*
 * test_pair.c — the pairing state machine: every transition, with the
 * exact actions (close codes, events) it asks the caller to carry out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "relay/pair.h"

typedef struct log_t {
  rly_pair_action a[16];
  int n;
} log_t;

static void rec(void *ud, const rly_pair_action *a) {
  log_t *l = ud;
  assert_true(l->n < 16);
  l->a[l->n++] = *a;
}

static void expect(const log_t *l, int i, rly_pair_act t, int slot, uint16_t code) {
  assert_true(i < l->n);
  assert_int_equal(l->a[i].type, t);
  if (slot != -2) assert_int_equal(l->a[i].slot, slot);
  assert_int_equal(l->a[i].code, code);
}

static void test_attach_open(void **st) {
  (void)st;
  rly_pair p;
  log_t l = {0};
  rly_pair_init(&p, 120000, 0);
  assert_int_equal(p.state, RLY_PAIR_PENDING);
  assert_int_equal(rly_pair_attach(&p, RLY_SLOT_INITIATOR, 1000, rec, &l), 0);
  assert_int_equal(p.state, RLY_PAIR_HALF_OPEN);
  assert_int_equal(l.n, 1);
  expect(&l, 0, RLY_ACT_EV_ATTACH, RLY_SLOT_INITIATOR, 0);
  /* second peer for the same slot: refused, nothing emitted */
  assert_int_equal(rly_pair_attach(&p, RLY_SLOT_INITIATOR, 1000, rec, &l), -1);
  assert_int_equal(l.n, 1);
  assert_int_equal(rly_pair_attach(&p, RLY_SLOT_RESPONDER, 1500, rec, &l), 0);
  assert_int_equal(p.state, RLY_PAIR_OPEN);
  assert_int_equal(l.n, 4);
  expect(&l, 1, RLY_ACT_EV_ATTACH, RLY_SLOT_RESPONDER, 0);
  expect(&l, 2, RLY_ACT_OPEN, -2, 0);
  expect(&l, 3, RLY_ACT_EV_OPEN, -2, 0);
  assert_string_equal(rly_pair_state_name(p.state), "open");
}

static void test_leave_closes_other_and_rejoin(void **st) {
  (void)st;
  rly_pair p;
  log_t l = {0};
  rly_pair_init(&p, 120000, 0);
  rly_pair_attach(&p, 0, 0, rec, &l);
  rly_pair_attach(&p, 1, 0, rec, &l);
  l.n = 0;
  /* initiator leaves with 4001: responder is closed with 4001 too */
  rly_pair_detach(&p, 0, 4001, 10, rec, &l);
  assert_int_equal(l.n, 3);
  expect(&l, 0, RLY_ACT_EV_DETACH, 0, 4001);
  expect(&l, 1, RLY_ACT_CLOSE, 1, 4001);
  expect(&l, 2, RLY_ACT_EV_DETACH, 1, 4001);
  assert_int_equal(p.state, RLY_PAIR_PENDING);
  assert_true(rly_pair_empty(&p));
  /* re-joinable with the same slots */
  l.n = 0;
  assert_int_equal(rly_pair_attach(&p, 1, 20, rec, &l), 0);
  assert_int_equal(p.state, RLY_PAIR_HALF_OPEN);
}

static void test_drop_or_bad_code_becomes_1000(void **st) {
  (void)st;
  uint16_t in[] = {0, 1005, 1006, 1015, 999, 5000, 1004};
  for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
    rly_pair p;
    log_t l = {0};
    rly_pair_init(&p, 0, 0);
    rly_pair_attach(&p, 0, 0, rec, &l);
    rly_pair_attach(&p, 1, 0, rec, &l);
    l.n = 0;
    rly_pair_detach(&p, 1, in[i], 0, rec, &l);
    expect(&l, 1, RLY_ACT_CLOSE, 0, 1000);
  }
  assert_true(rly_pair_code_sendable(1000));
  assert_true(rly_pair_code_sendable(1001));
  assert_true(rly_pair_code_sendable(1011));
  assert_true(rly_pair_code_sendable(3000));
  assert_true(rly_pair_code_sendable(4999));
  assert_false(rly_pair_code_sendable(1005));
  assert_false(rly_pair_code_sendable(2999));
}

static void test_lone_peer_leaves_quietly(void **st) {
  (void)st;
  rly_pair p;
  log_t l = {0};
  rly_pair_init(&p, 1000, 0);
  rly_pair_attach(&p, 0, 0, rec, &l);
  l.n = 0;
  rly_pair_detach(&p, 0, 1000, 5, rec, &l);
  assert_int_equal(l.n, 1);
  expect(&l, 0, RLY_ACT_EV_DETACH, 0, 1000);
  assert_int_equal(p.state, RLY_PAIR_PENDING);
  /* detaching an empty slot does nothing */
  rly_pair_detach(&p, 0, 1000, 6, rec, &l);
  assert_int_equal(l.n, 1);
}

static void test_peer_wait(void **st) {
  (void)st;
  rly_pair p;
  log_t l = {0};
  rly_pair_init(&p, 2000, 0);
  rly_pair_attach(&p, 1, 100, rec, &l);
  l.n = 0;
  rly_pair_tick(&p, 2099, 0, rec, &l);
  assert_int_equal(l.n, 0);
  rly_pair_tick(&p, 2100, 0, rec, &l);
  assert_int_equal(l.n, 2);
  expect(&l, 0, RLY_ACT_CLOSE, 1, 1001);
  assert_string_equal(l.a[0].reason, "peer_wait expired");
  expect(&l, 1, RLY_ACT_EV_DETACH, 1, 1001);
  assert_int_equal(p.state, RLY_PAIR_PENDING);
  /* the wait restarts for the next lone peer */
  l.n = 0;
  rly_pair_attach(&p, 0, 5000, rec, &l);
  rly_pair_tick(&p, 6000, 0, rec, &l);
  assert_int_equal(l.n, 1);
  /* an open session is not subject to peer_wait */
  rly_pair_attach(&p, 1, 6500, rec, &l);
  l.n = 0;
  rly_pair_tick(&p, 100000, 0, rec, &l);
  assert_int_equal(l.n, 0);
}

static void test_kick_and_ttl(void **st) {
  (void)st;
  rly_pair p;
  log_t l = {0};
  rly_pair_init(&p, 0, 50000);
  rly_pair_attach(&p, 0, 0, rec, &l);
  rly_pair_attach(&p, 1, 0, rec, &l);
  l.n = 0;
  rly_pair_tick(&p, 10, 49999, rec, &l);
  assert_int_equal(l.n, 0);
  rly_pair_tick(&p, 10, 50000, rec, &l);
  assert_int_equal(l.n, 5);
  expect(&l, 0, RLY_ACT_CLOSE, 0, 1001);
  expect(&l, 2, RLY_ACT_CLOSE, 1, 1001);
  expect(&l, 4, RLY_ACT_EV_CLOSE, -1, 1001);
  assert_string_equal(l.a[4].reason, "session expired");
  assert_int_equal(p.state, RLY_PAIR_CLOSED);
  /* closed: no rejoin, no second kick */
  assert_int_equal(rly_pair_attach(&p, 0, 20, rec, &l), -1);
  l.n = 0;
  rly_pair_kick(&p, 1001, "again", rec, &l);
  assert_int_equal(l.n, 0);

  rly_pair_init(&p, 0, 0);
  rly_pair_attach(&p, 0, 0, rec, &l);
  l.n = 0;
  rly_pair_kick(&p, 1001, "session deleted", rec, &l);
  assert_int_equal(l.n, 3);
  expect(&l, 0, RLY_ACT_CLOSE, 0, 1001);
  assert_string_equal(l.a[0].reason, "session deleted");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_attach_open),
      cmocka_unit_test(test_leave_closes_other_and_rejoin),
      cmocka_unit_test(test_drop_or_bad_code_becomes_1000),
      cmocka_unit_test(test_lone_peer_leaves_quietly),
      cmocka_unit_test(test_peer_wait),
      cmocka_unit_test(test_kick_and_ttl),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
