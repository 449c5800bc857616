/*
 * test_fleet.c — the sans-I/O parts of a fleet (controller-stub/fleet.c):
 * placement (named relay, region, least loaded, ties), the event batch
 * (coalescing, an attach then detach in one batch, stale detaches, epochs,
 * the bound), the Redis URL (no password in it), and the journal
 * registry's per-relay loads and unassigned sessions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "controller-stub/store.h"

#define T0 1700000000

static ctl_relay_view relay(const char *node, const char *region, uint64_t load) {
  ctl_relay_view v;
  memset(&v, 0, sizeof v);
  snprintf(v.node, sizeof v.node, "%s", node);
  snprintf(v.url, sizeof v.url, "wss://%s.example", node);
  snprintf(v.region, sizeof v.region, "%s", region);
  v.load = load;
  return v;
}

static void test_place(void **st) {
  (void)st;
  ctl_relay_view v[] = {relay("relay-c", "us", 3), relay("relay-a", "eu", 1),
                        relay("relay-b", "eu", 1), relay("relay-d", "us", 0)};
  size_t n = 4;
  assert_int_equal(ctl_place(v, n, NULL, NULL, "relay-a"), 3);      /* least loaded */
  assert_int_equal(ctl_place(v, n, "relay-c", NULL, "relay-a"), 0); /* named */
  assert_int_equal(ctl_place(v, n, "relay-z", NULL, "relay-a"), CTL_PLACE_ENORELAY);
  assert_int_equal(ctl_place(v, n, NULL, "eu", "relay-c"), 1); /* tie: by name */
  assert_int_equal(ctl_place(v, n, NULL, "eu", "relay-b"), 2); /* tie: the asker */
  assert_int_equal(ctl_place(v, n, NULL, "mars", "relay-a"), CTL_PLACE_ENOREGION);
  assert_int_equal(ctl_place(v, 0, NULL, NULL, "relay-a"), -1); /* nothing known */
  assert_int_equal(ctl_place(v, 0, NULL, "eu", "relay-a"), CTL_PLACE_ENOREGION);
}

static const char *ID1 = "AAAAAAAAAAAAAAAAAAAAAA", *ID2 = "BBBBBBBBBBBBBBBBBBBBBB";

static void test_batch_coalesces(void **st) {
  (void)st;
  ctl_batch b;
  assert_int_equal(ctl_batch_init(&b, 2), 0);
  assert_false(ctl_batch_has(&b, ID1));
  /* attach then detach by the same relay: the slot ends free, whoever the
   * store had (forced) */
  assert_int_equal(ctl_batch_slot(&b, ID1, CTL_REG_ROLE_INITIATOR, true, "relay-a"), 0);
  assert_int_equal(ctl_batch_slot(&b, ID1, CTL_REG_ROLE_INITIATOR, false, "relay-a"), 0);
  assert_true(ctl_batch_has(&b, ID1));
  assert_int_equal(b.n, 1);
  assert_int_equal(b.ents[0].slot[0].op, CTL_BATCH_DETACH);
  assert_true(b.ents[0].slot[0].forced);
  /* a detach by another relay after an attach is stale: the attach stands */
  assert_int_equal(ctl_batch_slot(&b, ID1, CTL_REG_ROLE_RESPONDER, true, "relay-b"), 0);
  assert_int_equal(ctl_batch_slot(&b, ID1, CTL_REG_ROLE_RESPONDER, false, "relay-a"), 0);
  assert_int_equal(b.ents[0].slot[1].op, CTL_BATCH_ATTACH);
  assert_string_equal(b.ents[0].slot[1].node, "relay-b");
  /* a lone detach only clears its own claim */
  assert_int_equal(ctl_batch_slot(&b, ID2, CTL_REG_ROLE_INITIATOR, false, "relay-a"), 0);
  assert_false(b.ents[1].slot[0].forced);
  /* counters: the largest total of each epoch; a fifth epoch waits */
  for (uint64_t e = 1; e <= 4; e++)
    assert_int_equal(ctl_batch_stats(&b, ID1, e, 10 * e, 20 * e, T0 + (int64_t)e), 0);
  assert_int_equal(ctl_batch_stats(&b, ID1, 2, 5, 5, T0), 0); /* smaller: kept larger */
  assert_int_equal(b.ents[0].ctr.ep[1].in, 20);
  assert_int_equal(b.ents[0].last_activity, T0 + 4);
  assert_int_equal(ctl_batch_stats(&b, ID1, 5, 1, 1, T0), -ENOSPC);
  /* bounded: a third session does not fit */
  assert_int_equal(ctl_batch_slot(&b, "CCCCCCCCCCCCCCCCCCCCCC", 1, true, "x"), -ENOSPC);
  assert_int_equal(ctl_batch_slot(&b, "short", 1, true, "x"), -EINVAL);
  assert_int_equal(ctl_batch_slot(&b, ID1, 3, true, "x"), -EINVAL);
  ctl_batch_clear(&b);
  assert_false(ctl_batch_has(&b, ID1));
  assert_int_equal(ctl_batch_slot(&b, ID2, CTL_REG_ROLE_INITIATOR, true, "relay-a"), 0);
  assert_int_equal(b.ents[0].slot[1].op, CTL_BATCH_NONE); /* fresh after a clear */
  ctl_batch_free(&b);
}

static void test_redis_url(void **st) {
  (void)st;
  ctl_redis_url u;
  char err[256];
  assert_int_equal(ctl_redis_url_parse("redis://127.0.0.1:6380/3", &u, err, sizeof err), 0);
  assert_string_equal(u.host, "127.0.0.1");
  assert_int_equal(u.port, 6380);
  assert_int_equal(u.db, 3);
  assert_string_equal(u.user, "");
  assert_int_equal(ctl_redis_url_parse("redis://fleet@redis.internal", &u, err, sizeof err), 0);
  assert_string_equal(u.user, "fleet");
  assert_string_equal(u.host, "redis.internal");
  assert_int_equal(u.port, 6379);
  assert_int_equal(u.db, 0);
  assert_int_equal(ctl_redis_url_parse("redis://[::1]/1", &u, err, sizeof err), 0);
  assert_string_equal(u.host, "::1");
  assert_int_equal(u.port, 6379);
  /* A password on the command line is refused, and never repeated. */
  assert_int_equal(ctl_redis_url_parse("redis://u:hunter2@h:1", &u, err, sizeof err), -EINVAL);
  assert_null(strstr(err, "hunter2"));
  assert_non_null(strstr(err, "RELAY_STORE_PASSWORD"));
  const char *bad[] = {"http://h:1",     "redis://",         "redis://h:1/x", "redis://h:99999",
                       "redis://h:1/-1", "redis://::1:6379", "redis://a b@h"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(ctl_redis_url_parse(bad[i], &u, err, sizeof err), -EINVAL);
}

static uint64_t load_of(ctl_registry *reg, const char *node) {
  ctl_reg_relay v[8];
  size_t n = ctl_reg_relays(reg, v, 8);
  for (size_t i = 0; i < n; i++)
    if (strcmp(v[i].node, node) == 0) return v[i].load;
  return UINT64_MAX;
}

/* A relay's load: its sessions holding a peer or waiting for their first. */
static void test_registry_loads(void **st) {
  (void)st;
  char err[256];
  ctl_registry *reg = ctl_registry_open(NULL, NULL, err, sizeof err);
  assert_non_null(reg);
  assert_int_equal(ctl_reg_set_relay_live(reg, "relay-a", true), 0);
  assert_int_equal(ctl_reg_set_relay_live(reg, "relay-b", true), 0);
  assert_int_equal(ctl_reg_set_relay_region(reg, "relay-b", "eu"), 0);
  ctl_reg_created c1, c2;
  assert_int_equal(ctl_reg_create(reg, T0, 60, 0, "relay-a", "wss://a", &c1), 0);
  assert_int_equal(ctl_reg_create(reg, T0, 600, 0, "relay-a", "wss://a", &c2), 0);
  assert_int_equal(load_of(reg, "relay-a"), 2);
  assert_int_equal(load_of(reg, "relay-b"), 0);
  /* a peer came and left: no longer waiting on relay-a */
  assert_int_equal(ctl_reg_on_attach(reg, T0, c1.status.id, 1, "relay-a"), 0);
  assert_int_equal(load_of(reg, "relay-a"), 2);
  assert_int_equal(ctl_reg_on_detach(reg, T0, c1.status.id, 1, "relay-a"), 0);
  assert_int_equal(load_of(reg, "relay-a"), 1);
  assert_int_equal(ctl_reg_check(reg), 0);
  /* relay-a goes: c2 moves to relay-b with its load */
  assert_int_equal(ctl_reg_set_relay_live(reg, "relay-a", false), 0);
  ctl_reg_decision d;
  assert_int_equal(ctl_reg_validate(reg, T0, c2.status.id, c2.initiator_token, 0, "relay-b", &d),
                   0);
  assert_true(d.allow);
  assert_int_equal(load_of(reg, "relay-b"), 1);
  /* expiry takes a session out of its relay's load */
  assert_int_equal(ctl_reg_reap(reg, T0 + 700, NULL, NULL), 2);
  assert_int_equal(load_of(reg, "relay-b"), 0);
  assert_int_equal(ctl_reg_check(reg), 0);
  /* unassigned (relays behind one hostname): the first relay takes it,
   * another gets 421 while the first is live */
  ctl_reg_created c3;
  assert_int_equal(ctl_reg_create(reg, T0, 60, 0, "", "wss://fleet", &c3), 0);
  assert_int_equal(ctl_reg_set_relay_live(reg, "relay-a", true), 0);
  assert_int_equal(ctl_reg_validate(reg, T0, c3.status.id, c3.initiator_token, 0, "relay-a", &d),
                   0);
  assert_true(d.allow);
  assert_int_equal(ctl_reg_validate(reg, T0, c3.status.id, c3.responder_token, 0, "relay-b", &d),
                   0);
  assert_false(d.allow);
  assert_int_equal(d.http_status, 421);
  assert_int_equal(ctl_reg_check(reg), 0);
  ctl_reg_created_wipe(&c1);
  ctl_reg_created_wipe(&c2);
  ctl_reg_created_wipe(&c3);
  ctl_registry_close(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_place),
      cmocka_unit_test(test_batch_coalesces),
      cmocka_unit_test(test_redis_url),
      cmocka_unit_test(test_registry_loads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
