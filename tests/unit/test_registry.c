/*
 * test_registry.c — the controller's session registry: slot validation with
 * exact statuses and reasons, relay events and states, expiry, limits, and
 * durability (restart, torn tails, CRC damage, compaction and its crash
 * window, no plaintext tokens on disk, file modes).  The clock is a
 * variable: every call gets `now` from the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controller-stub/registry.h"

#define T0  1700000000
#define URL "wss://relay.example"

/* ---- helpers ---------------------------------------------------------------- */

typedef struct fixture {
  char root[64];  /* mkdtemp */
  char state[96]; /* root/state: made by the registry */
  char log[96];   /* captured log lines */
  int log_fd;
} fixture;

static int setup(void **st) {
  fixture *f = calloc(1, sizeof *f);
  snprintf(f->root, sizeof f->root, "/tmp/test_registry.XXXXXX");
  assert_non_null(mkdtemp(f->root));
  snprintf(f->state, sizeof f->state, "%s/state", f->root);
  snprintf(f->log, sizeof f->log, "%s/log", f->root);
  f->log_fd = open(f->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
  assert_true(f->log_fd >= 0);
  cm_log_set_fd(f->log_fd);
  *st = f;
  return 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(p);
}

static int teardown(void **st) {
  fixture *f = *st;
  cm_log_set_fd(-1);
  close(f->log_fd);
  nftw(f->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

static ctl_registry_config test_cfg(void) {
  ctl_registry_config c;
  ctl_registry_config_defaults(&c);
  c.max_message_bytes = 65536;
  return c;
}

static ctl_registry *open_reg(const char *dir, const ctl_registry_config *cfg) {
  char err[256] = "";
  ctl_registry *r = ctl_registry_open(dir, cfg, err, sizeof err);
  if (!r) fail_msg("open: %s", err);
  return r;
}

static void path_of(const fixture *f, const char *name, char *out, size_t n) {
  snprintf(out, n, "%s/%s", f->state, name);
}

static char *slurp(const char *path, size_t *n) {
  char *d = NULL;
  assert_int_equal(cm_read_file(path, 1 << 26, &d, n), 0);
  return d;
}

static void create_ok(ctl_registry *r, int64_t now, const char *node, ctl_reg_created *c) {
  assert_int_equal(ctl_reg_create(r, now, 0, 0, node, URL, c), 0);
}

static ctl_reg_decision check(ctl_registry *r, int64_t now, const char *id, const char *tok,
                              int role, const char *node) {
  ctl_reg_decision d;
  int rc = ctl_reg_validate(r, now, id, tok, role, node, &d);
  assert_int_equal(rc, 0);
  return d;
}

static void expect_allow(ctl_registry *r, int64_t now, const char *id, const char *tok, int slot) {
  ctl_reg_decision d = check(r, now, id, tok, 0, NULL);
  assert_true(d.allow);
  assert_int_equal(d.slot, slot);
}

static void expect_deny(ctl_reg_decision d, uint32_t status, const char *reason) {
  assert_false(d.allow);
  assert_int_equal(d.http_status, status);
  assert_string_equal(d.reason, reason);
}

static int64_t file_size(const char *p) {
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  return (int64_t)sb.st_size;
}

static bool all_b64url(const char *s) {
  for (; *s; s++) {
    if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *s))
      return false;
  }
  return true;
}

/* ---- minting and validation ------------------------------------------------- */

static void test_create_and_validate_both_slots(void **st) {
  (void)st;
  ctl_registry_config cfg = test_cfg();
  ctl_registry *r = open_reg(NULL, &cfg);
  ctl_reg_created c;
  assert_int_equal(ctl_reg_create(r, T0, 0, 0, "r1", URL "/", &c), 0);
  assert_int_equal(strlen(c.status.id), CM_TOKEN_LEN);
  assert_int_equal(strlen(c.initiator_token), CM_TOKEN_LEN);
  assert_int_equal(strlen(c.responder_token), CM_TOKEN_LEN);
  assert_true(all_b64url(c.status.id) && all_b64url(c.initiator_token));
  assert_string_not_equal(c.initiator_token, c.responder_token);
  char want[256];
  snprintf(want, sizeof want, URL "/relay/%s", c.status.id);
  assert_string_equal(c.initiator_url, want);
  assert_string_equal(c.responder_url, want);
  assert_null(strstr(c.initiator_url, c.initiator_token));
  assert_int_equal(c.status.created_at, T0);
  assert_int_equal(c.status.expires_at, T0 + 3600);
  assert_int_equal(c.status.peer_wait_s, 120);
  assert_string_equal(c.status.relay_node, "r1");
  assert_string_equal(c.status.public_url, URL);
  assert_int_equal(c.status.state, CTL_REG_PENDING);

  ctl_reg_decision d = check(r, T0 + 1, c.status.id, c.initiator_token, 0, "r1");
  assert_true(d.allow);
  assert_int_equal(d.slot, CTL_REG_ROLE_INITIATOR);
  assert_int_equal(d.expires_at, T0 + 3600);
  assert_int_equal(d.peer_wait_s, 120);
  assert_int_equal(d.max_message_bytes, 65536);
  d = check(r, T0 + 1, c.status.id, c.responder_token, 0, "r1");
  assert_true(d.allow);
  assert_int_equal(d.slot, CTL_REG_ROLE_RESPONDER);
  d = check(r, T0 + 1, c.status.id, c.responder_token, CTL_REG_ROLE_RESPONDER, "r1");
  assert_true(d.allow);
  assert_int_equal(d.slot, CTL_REG_ROLE_RESPONDER);
  ctl_reg_created_wipe(&c);
  assert_int_equal(c.initiator_token[0], 0);
  assert_int_equal(ctl_reg_check(r), 0);
  ctl_registry_close(r);
}

static void test_wrong_token_401(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a, b;
  create_ok(r, T0, "r1", &a);
  create_ok(r, T0, "r1", &b);
  char guess[CM_TOKEN_LEN + 1];
  assert_int_equal(cm_random_token(guess), 0);
  expect_deny(check(r, T0, a.status.id, guess, 0, NULL), 401, "invalid_token");
  expect_deny(check(r, T0, a.status.id, "", 0, NULL), 401, "invalid_token");
  expect_deny(check(r, T0, a.status.id, NULL, 0, NULL), 401, "invalid_token");
  /* A valid token of another session opens nothing here. */
  expect_deny(check(r, T0, a.status.id, b.initiator_token, 0, NULL), 401, "invalid_token");
  /* A token one character off. */
  snprintf(guess, sizeof guess, "%s", a.initiator_token);
  guess[5] = guess[5] == 'A' ? 'B' : 'A';
  expect_deny(check(r, T0, a.status.id, guess, 0, NULL), 401, "invalid_token");
  ctl_registry_close(r);
}

static void test_unknown_404(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  char id[CM_TOKEN_LEN + 1];
  assert_int_equal(cm_random_token(id), 0);
  expect_deny(check(r, T0, id, a.initiator_token, 0, NULL), 404, "unknown_session");
  expect_deny(check(r, T0, NULL, a.initiator_token, 0, NULL), 404, "unknown_session");
  expect_deny(check(r, T0, "", a.initiator_token, 0, NULL), 404, "unknown_session");
  expect_deny(check(r, T0, "../../etc/passwd", a.initiator_token, 0, NULL), 404, "unknown_session");
  ctl_reg_status s;
  assert_int_equal(ctl_reg_get(r, T0, id, &s), -ENOENT);
  ctl_registry_close(r);
}

static void test_role_mismatch_401(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  expect_deny(check(r, T0, a.status.id, a.initiator_token, CTL_REG_ROLE_RESPONDER, NULL), 401,
              "role_mismatch");
  expect_deny(check(r, T0, a.status.id, a.responder_token, CTL_REG_ROLE_INITIATOR, NULL), 401,
              "role_mismatch");
  ctl_reg_decision d = check(r, T0, a.status.id, a.initiator_token, CTL_REG_ROLE_INITIATOR, NULL);
  assert_true(d.allow);
  assert_int_equal(d.slot, 1);
  ctl_registry_close(r);
}

static void test_slot_taken_409_and_detach(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  const char *id = a.status.id;
  assert_int_equal(ctl_reg_on_attach(r, T0 + 1, id, 1, "r1"), 0);
  expect_deny(check(r, T0 + 2, id, a.initiator_token, 0, "r1"), 409, "slot_taken");
  expect_allow(r, T0 + 2, id, a.responder_token, 2);
  /* A detach from a relay that does not hold the slot is stale. */
  assert_int_equal(ctl_reg_on_detach(r, T0 + 3, id, 1, "r9"), 0);
  expect_deny(check(r, T0 + 3, id, a.initiator_token, 0, "r1"), 409, "slot_taken");
  assert_int_equal(ctl_reg_on_detach(r, T0 + 3, id, 1, "r1"), 0);
  expect_allow(r, T0 + 4, id, a.initiator_token, 1);
  /* Bad events. */
  assert_int_equal(ctl_reg_on_attach(r, T0, id, 0, "r1"), -EINVAL);
  assert_int_equal(ctl_reg_on_attach(r, T0, id, 3, "r1"), -EINVAL);
  assert_int_equal(ctl_reg_on_attach(r, T0, "nope", 1, "r1"), -ENOENT);
  ctl_registry_close(r);
}

static void expect_state(ctl_registry *r, const char *id, ctl_reg_state want, bool i, bool re) {
  ctl_reg_status s;
  assert_int_equal(ctl_reg_get(r, T0 + 10, id, &s), 0);
  assert_string_equal(ctl_reg_state_name(s.state), ctl_reg_state_name(want));
  assert_int_equal(s.initiator_connected, i);
  assert_int_equal(s.responder_connected, re);
}

static void test_states(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  const char *id = a.status.id;
  expect_state(r, id, CTL_REG_PENDING, false, false);
  assert_int_equal(ctl_reg_on_attach(r, T0 + 1, id, 2, "r1"), 0);
  expect_state(r, id, CTL_REG_HALF_OPEN, false, true);
  assert_int_equal(ctl_reg_on_attach(r, T0 + 2, id, 1, "r1"), 0);
  expect_state(r, id, CTL_REG_OPEN, true, true);
  assert_int_equal(ctl_reg_on_detach(r, T0 + 3, id, 1, "r1"), 0);
  expect_state(r, id, CTL_REG_HALF_OPEN, false, true);
  assert_int_equal(ctl_reg_on_detach(r, T0 + 4, id, 2, "r1"), 0);
  expect_state(r, id, CTL_REG_PENDING, false, false);
  ctl_reg_status s;
  assert_int_equal(ctl_reg_get(r, T0 + 10, id, &s), 0);
  assert_int_equal(s.last_activity, T0 + 4);
  assert_string_equal(ctl_reg_state_name(CTL_REG_CLOSED), "closed");
  ctl_registry_close(r);
}

static void test_relay_down_clears_its_slots(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  assert_int_equal(ctl_reg_set_relay_live(r, "r1", true), 0);
  assert_int_equal(ctl_reg_set_relay_live(r, "r2", true), 0);
  assert_int_equal(ctl_reg_on_attach(r, T0, a.status.id, 1, "r1"), 0);
  assert_int_equal(ctl_reg_on_attach(r, T0, a.status.id, 2, "r2"), 0);
  expect_state(r, a.status.id, CTL_REG_OPEN, true, true);
  assert_int_equal(ctl_reg_set_relay_live(r, "r1", false), 0);
  assert_false(ctl_reg_relay_is_live(r, "r1"));
  assert_true(ctl_reg_relay_is_live(r, "r2"));
  expect_state(r, a.status.id, CTL_REG_HALF_OPEN, false, true);
  ctl_registry_close(r);
}

/* Relays come and go under new ids (a container gets a new hostname each
 * time): one that went, with no session counted on it, gives its entry to
 * a newcomer, so the 1,025th id ever seen is still made live (it was
 * refused -ENOSPC: left out of placement for good). */
static void test_gone_relays_make_room(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  char node[32];
  for (int i = 0; i < CTL_REG_MAX_RELAYS; i++) {
    snprintf(node, sizeof node, "gone-%d", i);
    assert_int_equal(ctl_reg_set_relay_live(r, node, true), 0);
    assert_int_equal(ctl_reg_set_relay_live(r, node, false), 0);
  }
  ctl_reg_created a;
  create_ok(r, T0, "busy", &a); /* a relay with a session keeps its entry */
  assert_int_equal(ctl_reg_set_relay_live(r, "busy", false), 0);
  assert_int_equal(ctl_reg_set_relay_live(r, "newcomer", true), 0);
  assert_true(ctl_reg_relay_is_live(r, "newcomer"));
  assert_int_equal(ctl_reg_set_relay_url(r, "newcomer", "wss://n.example"), 0);
  ctl_reg_relay view[4];
  assert_int_equal(ctl_reg_relays(r, view, 4), 1);
  assert_string_equal(view[0].node, "newcomer");
  ctl_registry_close(r);
}

static void test_stats_idempotent(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  const char *id = a.status.id;
  ctl_reg_status s;
  for (int i = 0; i < 3; i++)
    assert_int_equal(ctl_reg_on_stats(r, T0, id, 7, 100, 200, T0 + 5), 0);
  assert_int_equal(ctl_reg_get(r, T0, id, &s), 0);
  assert_int_equal(s.bytes_in, 100);
  assert_int_equal(s.bytes_out, 200);
  assert_int_equal(s.last_activity, T0 + 5);
  /* An older (reordered) report changes nothing. */
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 7, 50, 60, T0 + 1), 0);
  assert_int_equal(ctl_reg_get(r, T0, id, &s), 0);
  assert_int_equal(s.bytes_in, 100);
  assert_int_equal(s.bytes_out, 200);
  assert_int_equal(s.last_activity, T0 + 5);
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 7, 1000, 2000, T0 + 9), 0);
  assert_int_equal(ctl_reg_get(r, T0, id, &s), 0);
  assert_int_equal(s.bytes_in, 1000);
  assert_int_equal(s.bytes_out, 2000);
  assert_int_equal(s.last_activity, T0 + 9);
  assert_int_equal(ctl_reg_on_stats(r, T0, "missing", 7, 1, 1, T0), -ENOENT);
  ctl_registry_close(r);
}

/* A relay restart (or a forgotten session joined again) starts a new epoch:
 * its totals add to the old ones instead of being lost under a maximum. */
static void test_stats_epochs_add(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  const char *id = a.status.id;
  ctl_reg_status s;
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 11, 1000, 10, T0), 0);
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 22, 300, 30, T0), 0);  /* restart */
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 11, 1000, 10, T0), 0); /* late repeat */
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 22, 400, 40, T0), 0);
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 33, 5, 6, T0), 0); /* second restart */
  assert_int_equal(ctl_reg_get(r, T0, id, &s), 0);
  assert_int_equal(s.bytes_in, 1000 + 400 + 5);
  assert_int_equal(s.bytes_out, 10 + 40 + 6);
  /* Epoch 0 carries no counters; last_activity still counts. */
  assert_int_equal(ctl_reg_on_stats(r, T0, id, 0, 99999, 99999, T0 + 3), 0);
  assert_int_equal(ctl_reg_get(r, T0, id, &s), 0);
  assert_int_equal(s.bytes_in, 1405);
  assert_int_equal(s.last_activity, T0 + 3);
  ctl_registry_close(r);
}

/* More epochs than are kept: the oldest are folded into the sum, none lost. */
static void test_stats_epochs_fold(void **st) {
  (void)st;
  ctl_reg_counters c;
  memset(&c, 0, sizeof c);
  uint64_t in, out;
  for (uint64_t e = 1; e <= 3 * CTL_REG_EPOCHS; e++) {
    ctl_reg_counters_add(&c, e, e * 10, e);
    ctl_reg_counters_add(&c, e, e * 5, 0); /* lower: ignored */
  }
  ctl_reg_counters_total(&c, &in, &out);
  uint64_t n = 3 * CTL_REG_EPOCHS, want = n * (n + 1) / 2;
  assert_int_equal(in, want * 10);
  assert_int_equal(out, want);
  assert_int_equal(c.n, CTL_REG_EPOCHS);
}

/* ---- expiry --------------------------------------------------------------- */

typedef struct reaped {
  char ids[16][CM_TOKEN_LEN + 1];
  char nodes[16][16];
  size_t n;
} reaped;

static void on_expired(void *ud, const char *id, const char *node) {
  reaped *rp = ud;
  assert_true(rp->n < 16);
  snprintf(rp->ids[rp->n], sizeof rp->ids[0], "%s", id);
  snprintf(rp->nodes[rp->n], sizeof rp->nodes[0], "%s", node);
  rp->n++;
}

static void test_ttl_expiry_and_reap(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a, b, c;
  assert_int_equal(ctl_reg_create(r, T0, 30, 0, "r1", URL, &a), 0);
  assert_int_equal(ctl_reg_create(r, T0, 10, 5, "r2", URL, &b), 0);
  assert_int_equal(ctl_reg_create(r, T0, 20, 0, "r1", URL, &c), 0);
  assert_int_equal(b.status.expires_at, T0 + 10);
  assert_int_equal(b.status.peer_wait_s, 5);
  reaped rp = {.n = 0};
  assert_int_equal(ctl_reg_reap(r, T0 + 9, on_expired, &rp), 0);
  expect_allow(r, T0 + 9, b.status.id, b.initiator_token, 1);
  /* Past expiry a session is gone for validation even before the reaper. */
  expect_deny(check(r, T0 + 10, b.status.id, b.initiator_token, 0, NULL), 404, "unknown_session");
  assert_int_equal(ctl_reg_reap(r, T0 + 10, on_expired, &rp), 1);
  assert_int_equal(rp.n, 1);
  assert_string_equal(rp.ids[0], b.status.id);
  assert_string_equal(rp.nodes[0], "r2");
  assert_int_equal(ctl_reg_count(r), 2);
  assert_int_equal(ctl_reg_reap(r, T0 + 100, on_expired, &rp), 2);
  assert_string_equal(rp.ids[1], c.status.id); /* earliest expiry first */
  assert_string_equal(rp.ids[2], a.status.id);
  assert_int_equal(ctl_reg_count(r), 0);
  expect_deny(check(r, T0 + 100, a.status.id, a.initiator_token, 0, NULL), 404, "unknown_session");
  assert_int_equal(ctl_reg_check(r), 0);
  ctl_registry_close(r);
}

static void test_limits(void **st) {
  (void)st;
  ctl_registry_config cfg = test_cfg();
  cfg.max_ttl_s = 600;
  cfg.default_ttl_s = 300;
  cfg.max_peer_wait_s = 60;
  cfg.default_peer_wait_s = 30;
  cfg.max_sessions = 3;
  ctl_registry *r = open_reg(NULL, &cfg);
  ctl_reg_created c;
  assert_int_equal(ctl_reg_create(r, T0, 601, 0, "r1", URL, &c), CTL_REG_ETTL);
  assert_int_equal(ctl_reg_create(r, T0, 0, 61, "r1", URL, &c), CTL_REG_EPEERWAIT);
  assert_int_equal(ctl_reg_create(r, T0, 1, 0, "bad\nnode", URL, &c), CTL_REG_EARG);
  char longurl[CTL_REG_URL_MAX + 2];
  memset(longurl, 'a', sizeof longurl - 1);
  longurl[sizeof longurl - 1] = '\0';
  assert_int_equal(ctl_reg_create(r, T0, 1, 0, "r1", longurl, &c), CTL_REG_EARG);
  assert_int_equal(ctl_reg_count(r), 0);
  assert_int_equal(ctl_reg_create(r, T0, 600, 60, "r1", URL, &c), 0);
  assert_int_equal(c.status.expires_at, T0 + 600);
  assert_int_equal(ctl_reg_create(r, T0, 0, 0, "r1", URL, &c), 0);
  assert_int_equal(c.status.expires_at, T0 + 300);
  assert_int_equal(c.status.peer_wait_s, 30);
  assert_int_equal(ctl_reg_create(r, T0, 0, 0, "r1", URL, &c), 0);
  ctl_reg_created full;
  assert_int_equal(ctl_reg_create(r, T0, 0, 0, "r1", URL, &full), CTL_REG_EFULL);
  assert_int_equal(full.initiator_token[0], 0); /* nothing handed out */
  assert_int_equal(ctl_reg_delete(r, T0, c.status.id), 0);
  assert_int_equal(ctl_reg_create(r, T0, 0, 0, "r1", URL, &c), 0);
  ctl_registry_close(r);

  /* A default above its maximum is a configuration error. */
  cfg.default_ttl_s = 601;
  char err[128] = "";
  assert_null(ctl_registry_open(NULL, &cfg, err, sizeof err));
  assert_non_null(strstr(err, "exceeds"));
}

static void test_delete(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created a, b;
  create_ok(r, T0, "r1", &a);
  create_ok(r, T0, "r2", &b);
  assert_int_equal(ctl_reg_on_attach(r, T0, b.status.id, 1, "r2"), 0);
  assert_int_equal(ctl_reg_delete(r, T0 + 1, a.status.id), 0);
  expect_deny(check(r, T0 + 1, a.status.id, a.initiator_token, 0, NULL), 404, "unknown_session");
  ctl_reg_status s;
  assert_int_equal(ctl_reg_get(r, T0 + 1, a.status.id, &s), -ENOENT);
  assert_int_equal(ctl_reg_delete(r, T0 + 1, a.status.id), -ENOENT);
  assert_int_equal(ctl_reg_delete_status(r, T0 + 1, b.status.id, &s), 0);
  assert_int_equal(s.state, CTL_REG_CLOSED);
  assert_string_equal(s.relay_node, "r2");
  assert_string_equal(s.id, b.status.id);
  assert_int_equal(ctl_reg_count(r), 0);
  ctl_registry_close(r);
}

static void test_reassign_and_wrong_relay(void **st) {
  fixture *f = *st;
  ctl_registry *r = open_reg(f->state, NULL);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  const char *id = a.status.id;
  assert_int_equal(ctl_reg_set_relay_live(r, "r1", true), 0);
  expect_deny(check(r, T0, id, a.initiator_token, 0, "r2"), 421, "wrong_relay");
  expect_allow(r, T0, id, a.initiator_token, 1);
  ctl_reg_decision d = check(r, T0, id, a.initiator_token, 0, "r1");
  assert_true(d.allow);
  /* r1 goes down: the session follows the peer to r2. */
  assert_int_equal(ctl_reg_set_relay_live(r, "r1", false), 0);
  assert_int_equal(ctl_reg_set_relay_url(r, "r2", "wss://r2.example/"), 0);
  assert_int_equal(ctl_reg_set_relay_live(r, "r2", true), 0);
  d = check(r, T0, id, a.responder_token, 0, "r2");
  assert_true(d.allow);
  assert_int_equal(d.slot, 2);
  ctl_reg_status s;
  assert_int_equal(ctl_reg_get(r, T0, id, &s), 0);
  assert_string_equal(s.relay_node, "r2");
  assert_string_equal(s.public_url, "wss://r2.example");
  /* Now r1 is back and r2 live: r1 is the wrong relay. */
  assert_int_equal(ctl_reg_set_relay_live(r, "r1", true), 0);
  expect_deny(check(r, T0, id, a.initiator_token, 0, "r1"), 421, "wrong_relay");
  ctl_registry_close(r);

  /* The reassignment is durable. */
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_get(r, T0, id, &s), 0);
  assert_string_equal(s.relay_node, "r2");
  assert_string_equal(s.public_url, "wss://r2.example");
  ctl_registry_close(r);
}

static size_t listed_n;
static char listed[8][CM_TOKEN_LEN + 1];
static void on_list(void *ud, const ctl_reg_status *s) {
  (void)ud;
  if (listed_n < 8) snprintf(listed[listed_n], sizeof listed[0], "%s", s->id);
  listed_n++;
}

static void test_list(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created c[5];
  for (int i = 0; i < 5; i++)
    assert_int_equal(ctl_reg_create(r, T0, i == 4 ? 5 : 0, 0, "r1", URL, &c[i]), 0);
  assert_int_equal(ctl_reg_delete(r, T0, c[1].status.id), 0);
  listed_n = 0;
  /* c[4] has expired at T0+5 though not reaped yet: not listed. */
  assert_int_equal(ctl_reg_list(r, T0 + 5, 100, on_list, NULL), 3);
  assert_int_equal(listed_n, 3);
  assert_string_equal(listed[0], c[0].status.id);
  assert_string_equal(listed[1], c[2].status.id);
  assert_string_equal(listed[2], c[3].status.id);
  listed_n = 0;
  assert_int_equal(ctl_reg_list(r, T0, 2, on_list, NULL), 2);
  ctl_registry_close(r);
}

/* Paging: every live session exactly once, in creation order, even when
 * the session a token names is deleted before the next page is asked for
 * and sessions are created meanwhile; a last page carries no token. */
static void test_list_pages(void **st) {
  (void)st;
  ctl_registry *r = open_reg(NULL, NULL);
  ctl_reg_created c[7];
  for (int i = 0; i < 5; i++)
    create_ok(r, T0, "r1", &c[i]);
  char next[CTL_REG_PAGE_TOKEN_MAX], tok[CTL_REG_PAGE_TOKEN_MAX];
  listed_n = 0;
  assert_int_equal(ctl_reg_list_page(r, T0, "", 2, on_list, NULL, next), 2);
  assert_string_equal(listed[0], c[0].status.id);
  assert_string_equal(listed[1], c[1].status.id);
  assert_true(next[0] != '\0');
  /* The session the token names goes; one more arrives. */
  assert_int_equal(ctl_reg_delete(r, T0, c[1].status.id), 0);
  create_ok(r, T0, "r1", &c[5]);
  snprintf(tok, sizeof tok, "%s", next);
  assert_int_equal(ctl_reg_list_page(r, T0, tok, 2, on_list, NULL, next), 2);
  assert_string_equal(listed[2], c[2].status.id);
  assert_string_equal(listed[3], c[3].status.id);
  snprintf(tok, sizeof tok, "%s", next);
  assert_int_equal(ctl_reg_list_page(r, T0, tok, 2, on_list, NULL, next), 2);
  assert_string_equal(listed[4], c[4].status.id);
  assert_string_equal(listed[5], c[5].status.id);
  assert_string_equal(next, ""); /* exactly two were left: no empty last page */
  /* A page that ends where the live sessions end says so too. */
  listed_n = 0;
  assert_int_equal(ctl_reg_list_page(r, T0, "", 10, on_list, NULL, next), 5);
  assert_string_equal(next, "");
  /* Tokens the registry did not make. */
  const char *bad[] = {"x", "12", "12.", "12.short", "-1.AAAAAAAAAAAAAAAAAAAAAA"};
  for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++)
    assert_int_equal(ctl_reg_list_page(r, T0, bad[i], 2, on_list, NULL, next), -EINVAL);
  ctl_registry_close(r);
}

/* A random mix of operations checked against a plain model after each. */
static void test_random_ops_keep_invariants(void **st) {
  (void)st;
  ctl_registry_config cfg = test_cfg();
  cfg.max_sessions = 64;
  ctl_registry *r = open_reg(NULL, &cfg);
  enum { N = 256 };
  static ctl_reg_created c[N];
  bool alive[N] = {false};
  size_t made = 0, live = 0;
  int64_t now = T0;
  for (int op = 0; op < 3000; op++) {
    uint64_t k = cm_random_below(10);
    if (k < 4 && made < N) {
      int rc = ctl_reg_create(r, now, (uint32_t)(1 + cm_random_below(200)), 0, "r1", URL, &c[made]);
      assert_int_equal(rc, live >= 64 ? CTL_REG_EFULL : 0);
      if (rc == 0) {
        alive[made++] = true;
        live++;
      }
    } else if (k < 6 && made > 0) {
      size_t i = cm_random_below(made);
      bool was = alive[i] && now < c[i].status.expires_at;
      assert_int_equal(ctl_reg_delete(r, now, c[i].status.id), was ? 0 : -ENOENT);
      if (was) {
        alive[i] = false;
        live--;
      }
    } else if (k < 8) {
      now += (int64_t)cm_random_below(20);
      size_t n = ctl_reg_reap(r, now, NULL, NULL), expect = 0;
      for (size_t i = 0; i < made; i++) {
        if (alive[i] && c[i].status.expires_at <= now) {
          alive[i] = false;
          expect++;
        }
      }
      assert_int_equal(n, expect);
      live -= expect;
    } else if (made > 0) {
      size_t i = cm_random_below(made);
      ctl_reg_decision d = check(r, now, c[i].status.id, c[i].responder_token, 0, NULL);
      assert_int_equal(d.allow, alive[i] && now < c[i].status.expires_at);
    }
    assert_int_equal(ctl_reg_count(r), live);
    assert_int_equal(ctl_reg_check(r), 0);
  }
  ctl_registry_close(r);
}

/* ---- durability ------------------------------------------------------------ */

enum { NDUR = 40 };

static void make_many(ctl_registry *r, ctl_reg_created *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char node[16];
    snprintf(node, sizeof node, "r%zu", i % 3);
    assert_int_equal(ctl_reg_create(r, T0 + (int64_t)i, 0, (uint32_t)(10 + i), node, URL, &c[i]),
                     0);
  }
}

static void expect_all_valid(ctl_registry *r, const ctl_reg_created *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    expect_allow(r, T0 + 100, c[i].status.id, c[i].initiator_token, 1);
    expect_allow(r, T0 + 100, c[i].status.id, c[i].responder_token, 2);
    ctl_reg_status s;
    assert_int_equal(ctl_reg_get(r, T0 + 100, c[i].status.id, &s), 0);
    assert_int_equal(s.created_at, c[i].status.created_at);
    assert_int_equal(s.expires_at, c[i].status.expires_at);
    assert_int_equal(s.peer_wait_s, c[i].status.peer_wait_s);
    assert_string_equal(s.relay_node, c[i].status.relay_node);
    assert_string_equal(s.public_url, URL);
  }
}

static void expect_mode(const char *path, unsigned mode) {
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, mode);
}

static void test_durable_restart(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[NDUR];
  ctl_registry *r = open_reg(f->state, NULL);
  make_many(r, c, NDUR);
  ctl_registry_close(r);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), NDUR);
  expect_all_valid(r, c, NDUR);
  assert_int_equal(ctl_reg_check(r), 0);
  ctl_registry_close(r);
  char p[256];
  expect_mode(f->state, 0700);
  path_of(f, "journal", p, sizeof p);
  expect_mode(p, 0600);
  path_of(f, "lock", p, sizeof p);
  expect_mode(p, 0600);
}

static void test_state_dir_mode_tightened(void **st) {
  fixture *f = *st;
  assert_int_equal(mkdir(f->state, 0755), 0);
  assert_int_equal(chmod(f->state, 0755), 0);
  ctl_registry *r = open_reg(f->state, NULL);
  expect_mode(f->state, 0700);
  ctl_registry_close(r);
}

static void test_delete_and_expiry_survive_restart(void **st) {
  fixture *f = *st;
  ctl_registry *r = open_reg(f->state, NULL);
  ctl_reg_created a, b, c;
  create_ok(r, T0, "r1", &a);
  create_ok(r, T0, "r1", &b);
  assert_int_equal(ctl_reg_create(r, T0, 10, 0, "r1", URL, &c), 0);
  assert_int_equal(ctl_reg_delete(r, T0, a.status.id), 0);
  assert_int_equal(ctl_reg_reap(r, T0 + 10, NULL, NULL), 1);
  ctl_registry_close(r);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 1);
  expect_deny(check(r, T0 + 1, a.status.id, a.initiator_token, 0, NULL), 404, "unknown_session");
  expect_deny(check(r, T0 + 1, c.status.id, c.initiator_token, 0, NULL), 404, "unknown_session");
  expect_allow(r, T0 + 1, b.status.id, b.responder_token, 2);
  ctl_registry_close(r);
}

/* A target session: the target is kept (status, journal and snapshot),
 * handed to the initiator's Validate only, and its responder token is
 * refused; an ordinary session beside it has none. */
static void test_target_session(void **st) {
  fixture *f = *st;
  ctl_registry_config cfg = test_cfg();
  cfg.compact_bytes = 1024; /* a few records: the later rounds replay a snapshot */
  ctl_registry *r = open_reg(f->state, &cfg);
  ctl_reg_created t, o;
  assert_int_equal(ctl_reg_create_target(r, T0, 0, 0, "r1", URL, "ssh.example.com:22", &t), 0);
  create_ok(r, T0, "r1", &o);
  assert_string_equal(t.status.target, "ssh.example.com:22");
  assert_string_equal(o.status.target, "");
  char longer[CTL_REG_TARGET_MAX + 8];
  memset(longer, 'a', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  ctl_reg_created x;
  assert_int_equal(ctl_reg_create_target(r, T0, 0, 0, "r1", URL, longer, &x), CTL_REG_EARG);
  uint64_t gen = ctl_reg_generation(r);
  for (int round = 0; round < 3; round++) {
    ctl_reg_decision d = check(r, T0 + 1, t.status.id, t.initiator_token, 0, "r1");
    assert_true(d.allow);
    assert_string_equal(d.target, "ssh.example.com:22");
    expect_deny(check(r, T0 + 1, t.status.id, t.responder_token, 0, "r1"), 403, "target_session");
    d = check(r, T0 + 1, o.status.id, o.responder_token, 0, "r1");
    assert_true(d.allow);
    assert_string_equal(d.target, "");
    ctl_reg_status gs;
    assert_int_equal(ctl_reg_get(r, T0 + 1, t.status.id, &gs), 0);
    assert_string_equal(gs.target, "ssh.example.com:22");
    for (int i = 0; i < 8; i++) {
      ctl_reg_created more;
      create_ok(r, T0, "r1", &more);
    }
    ctl_registry_close(r);
    r = open_reg(f->state, &cfg);
  }
  assert_true(ctl_reg_generation(r) > gen); /* a snapshot was written and replayed */
  ctl_registry_close(r);
}

static bool log_has(const fixture *f, const char *needle) {
  size_t n;
  char *d = slurp(f->log, &n);
  bool found = memmem(d, n, needle, strlen(needle)) != NULL;
  free(d);
  return found;
}

static void test_torn_tail_garbage(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[10];
  ctl_registry *r = open_reg(f->state, NULL);
  make_many(r, c, 10);
  uint64_t good = ctl_reg_journal_size(r);
  ctl_registry_close(r);
  char p[256];
  path_of(f, "journal", p, sizeof p);
  assert_int_equal(file_size(p), (int64_t)good);
  FILE *fp = fopen(p, "ab");
  const char garbage[] = "\x30\x00\x00\x00garbage that is not a record";
  fwrite(garbage, 1, sizeof garbage, fp);
  fclose(fp);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 10);
  expect_all_valid(r, c, 10);
  assert_int_equal(file_size(p), (int64_t)good);
  char want[64];
  snprintf(want, sizeof want, "\"offset\":%llu", (unsigned long long)good);
  assert_true(log_has(f, want));
  ctl_registry_close(r);
}

static void test_torn_tail_mid_record(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[11];
  ctl_registry *r = open_reg(f->state, NULL);
  make_many(r, c, 9);
  uint64_t after9 = ctl_reg_journal_size(r);
  make_many(r, c + 9, 1);
  uint64_t after10 = ctl_reg_journal_size(r);
  ctl_registry_close(r);
  char p[256];
  path_of(f, "journal", p, sizeof p);
  /* A crash half way through the tenth append. */
  assert_int_equal(truncate(p, (off_t)(after10 - 7)), 0);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 9);
  expect_all_valid(r, c, 9);
  expect_deny(check(r, T0 + 100, c[9].status.id, c[9].initiator_token, 0, NULL), 404,
              "unknown_session");
  assert_int_equal(file_size(p), (int64_t)after9);
  /* Appends go on cleanly after the cut. */
  create_ok(r, T0, "r1", &c[10]);
  ctl_registry_close(r);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 10);
  expect_allow(r, T0 + 1, c[10].status.id, c[10].initiator_token, 1);
  ctl_registry_close(r);

  /* Cut inside the 8-byte frame header too. */
  assert_int_equal(truncate(p, (off_t)(after9 + 3)), 0);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 9);
  ctl_registry_close(r);
}

static void test_crc_corruption_stops_replay(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[10];
  uint64_t size_after[10];
  ctl_registry *r = open_reg(f->state, NULL);
  for (int i = 0; i < 10; i++) {
    make_many(r, c + i, 1);
    size_after[i] = ctl_reg_journal_size(r);
  }
  ctl_registry_close(r);
  char p[256];
  path_of(f, "journal", p, sizeof p);
  /* Flip one bit in the payload of the sixth record (index 5). */
  int fd = open(p, O_RDWR);
  off_t at = (off_t)(size_after[4] + 8 + 30);
  uint8_t byte;
  assert_int_equal(pread(fd, &byte, 1, at), 1);
  byte ^= 0x10;
  assert_int_equal(pwrite(fd, &byte, 1, at), 1);
  close(fd);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 5);
  expect_all_valid(r, c, 5);
  for (int i = 5; i < 10; i++)
    expect_deny(check(r, T0 + 100, c[i].status.id, c[i].initiator_token, 0, NULL), 404,
                "unknown_session");
  assert_int_equal(file_size(p), (int64_t)size_after[4]);
  ctl_registry_close(r);
}

static void test_compaction_then_restart(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[NDUR];
  ctl_registry_config cfg = test_cfg();
  cfg.compact_bytes = 2048; /* ~10 records */
  ctl_registry *r = open_reg(f->state, &cfg);
  make_many(r, c, NDUR);
  for (int i = 0; i < NDUR; i += 4)
    assert_int_equal(ctl_reg_delete(r, T0, c[i].status.id), 0);
  assert_int_equal(ctl_reg_set_relay_live(r, "r0", false), 0);
  expect_allow(r, T0, c[1].status.id, c[1].initiator_token, 1);
  assert_true(check(r, T0, c[3].status.id, c[3].initiator_token, 0, "rX").allow); /* reassign */
  uint64_t gen = ctl_reg_generation(r);
  assert_true(gen >= 2);
  assert_true(ctl_reg_journal_size(r) <= 2048 + 1024);
  ctl_registry_close(r);
  char p[256];
  path_of(f, "snapshot", p, sizeof p);
  expect_mode(p, 0600);
  r = open_reg(f->state, &cfg);
  assert_int_equal(ctl_reg_generation(r), gen);
  assert_int_equal(ctl_reg_count(r), NDUR - NDUR / 4);
  for (int i = 0; i < NDUR; i++) {
    ctl_reg_decision d = check(r, T0 + 100, c[i].status.id, c[i].responder_token, 0, NULL);
    assert_int_equal(d.allow, i % 4 != 0);
  }
  ctl_reg_status s;
  assert_int_equal(ctl_reg_get(r, T0, c[3].status.id, &s), 0);
  assert_string_equal(s.relay_node, "rX");
  assert_int_equal(ctl_reg_check(r), 0);
  ctl_registry_close(r);
}

static void write_file(const char *path, const void *d, size_t n) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(d, 1, n, fp), n);
  fclose(fp);
}

/* A crash after the snapshot's rename but before the fresh journal took
 * over leaves a new snapshot beside the old journal: nothing may be lost
 * or counted twice. */
static void test_compaction_crash_window(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[NDUR];
  ctl_registry *r = open_reg(f->state, NULL);
  make_many(r, c, NDUR);
  /* The old journal begins with c[0]'s CREATE and ends with its DELETE:
   * replaying any of it over the snapshot would resurrect c[0]. */
  assert_int_equal(ctl_reg_delete(r, T0, c[0].status.id), 0);
  ctl_registry_close(r);
  char jp[256], tmp[256], stmp[256];
  path_of(f, "journal", jp, sizeof jp);
  size_t old_n;
  char *old_journal = slurp(jp, &old_n);
  ctl_registry_config cfg = test_cfg();
  cfg.compact_bytes = 1024; /* compacts at open */
  r = open_reg(f->state, &cfg);
  assert_int_equal(ctl_reg_generation(r), 1);
  ctl_registry_close(r);
  write_file(jp, old_journal, old_n); /* the generation-0 journal is back */
  free(old_journal);
  path_of(f, "journal.tmp", tmp, sizeof tmp);
  write_file(tmp, "junk", 4);
  path_of(f, "snapshot.tmp.12345", stmp, sizeof stmp);
  write_file(stmp, "junk", 4);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), NDUR - 1);
  assert_int_equal(ctl_reg_generation(r), 1);
  expect_all_valid(r, c + 1, NDUR - 1);
  expect_deny(check(r, T0, c[0].status.id, c[0].initiator_token, 0, NULL), 404, "unknown_session");
  assert_int_equal(ctl_reg_check(r), 0);
  assert_int_equal(access(tmp, F_OK), -1);
  assert_int_equal(access(stmp, F_OK), -1);
  ctl_registry_close(r);
}

static void test_journal_newer_than_snapshot_refused(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[NDUR];
  ctl_registry_config cfg = test_cfg();
  cfg.compact_bytes = 1024;
  ctl_registry *r = open_reg(f->state, &cfg);
  make_many(r, c, NDUR);
  assert_true(ctl_reg_generation(r) > 0);
  ctl_registry_close(r);
  char p[256];
  path_of(f, "snapshot", p, sizeof p);
  assert_int_equal(unlink(p), 0);
  char err[256] = "";
  assert_null(ctl_registry_open(f->state, &cfg, err, sizeof err));
  assert_non_null(strstr(err, "newer than snapshot"));
}

static void test_corrupt_snapshot_refused(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[NDUR];
  ctl_registry_config cfg = test_cfg();
  cfg.compact_bytes = 1024;
  ctl_registry *r = open_reg(f->state, &cfg);
  make_many(r, c, NDUR);
  ctl_registry_close(r);
  char p[256];
  path_of(f, "snapshot", p, sizeof p);
  assert_int_equal(truncate(p, file_size(p) - 1), 0);
  char err[256] = "";
  assert_null(ctl_registry_open(f->state, &cfg, err, sizeof err));
  assert_non_null(strstr(err, "snapshot"));
}

static void test_no_plaintext_tokens_on_disk(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[NDUR];
  ctl_registry_config cfg = test_cfg();
  cfg.compact_bytes = 4096;
  ctl_registry *r = open_reg(f->state, &cfg);
  make_many(r, c, NDUR);
  assert_true(ctl_reg_generation(r) > 0);
  ctl_registry_close(r);
  char jp[256], sp[256];
  path_of(f, "journal", jp, sizeof jp);
  path_of(f, "snapshot", sp, sizeof sp);
  size_t jn, sn, logn;
  char *jd = slurp(jp, &jn), *sd = slurp(sp, &sn), *logd = slurp(f->log, &logn);
  for (size_t i = 0; i < NDUR; i++) {
    const char *secret[] = {c[i].initiator_token, c[i].responder_token};
    for (size_t k = 0; k < 2; k++) {
      assert_null(memmem(jd, jn, secret[k], CM_TOKEN_LEN));
      assert_null(memmem(sd, sn, secret[k], CM_TOKEN_LEN));
      assert_null(memmem(logd, logn, secret[k], CM_TOKEN_LEN));
    }
    /* Every session is in one of the files: the search was meaningful. */
    assert_true(memmem(jd, jn, c[i].status.id, CM_TOKEN_LEN) ||
                memmem(sd, sn, c[i].status.id, CM_TOKEN_LEN));
  }
  free(jd);
  free(sd);
  free(logd);
}

static void test_state_dir_locked(void **st) {
  fixture *f = *st;
  ctl_registry *r = open_reg(f->state, NULL);
  char err[256] = "";
  assert_null(ctl_registry_open(f->state, NULL, err, sizeof err));
  assert_non_null(strstr(err, "in use"));
  ctl_registry_close(r);
  r = open_reg(f->state, NULL);
  ctl_registry_close(r);
}

static void test_bad_header_starts_fresh(void **st) {
  fixture *f = *st;
  assert_int_equal(mkdir(f->state, 0700), 0);
  char p[256];
  path_of(f, "journal", p, sizeof p);
  write_file(p, "not a journal at all", 20);
  ctl_registry *r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 0);
  ctl_reg_created a;
  create_ok(r, T0, "r1", &a);
  ctl_registry_close(r);
  r = open_reg(f->state, NULL);
  expect_allow(r, T0, a.status.id, a.initiator_token, 1);
  ctl_registry_close(r);
}

/* Fault injection: RLIMIT_FSIZE makes writes past `bytes` fail (EFBIG). */
static void limit_file_size(rlim_t bytes) {
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &rl), 0);
  rl.rlim_cur = bytes == RLIM_INFINITY ? rl.rlim_max : bytes;
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void test_failed_append_changes_nothing(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[5];
  signal(SIGXFSZ, SIG_IGN);
  ctl_registry *r = open_reg(f->state, NULL);
  make_many(r, c, 3);
  uint64_t size = ctl_reg_journal_size(r);
  limit_file_size(size + 10);
  ctl_reg_created x;
  assert_int_equal(ctl_reg_create(r, T0, 0, 0, "r1", URL, &x), CTL_REG_EIO);
  assert_int_equal(x.initiator_token[0], 0);
  assert_int_equal(ctl_reg_delete(r, T0, c[0].status.id), CTL_REG_EIO);
  limit_file_size(RLIM_INFINITY);
  char p[256];
  path_of(f, "journal", p, sizeof p);
  assert_int_equal(file_size(p), (int64_t)size); /* no torn bytes left behind */
  assert_int_equal(ctl_reg_count(r), 3);
  assert_int_equal(ctl_reg_journal_size(r), size);
  expect_allow(r, T0, c[0].status.id, c[0].initiator_token, 1);
  make_many(r, c + 3, 1); /* the partial write was cut away: this one counts */
  ctl_registry_close(r);
  r = open_reg(f->state, NULL);
  assert_int_equal(ctl_reg_count(r), 4);
  expect_all_valid(r, c, 4);
  ctl_registry_close(r);
}

static void test_failed_compaction_keeps_journal(void **st) {
  fixture *f = *st;
  static ctl_reg_created c[NDUR];
  signal(SIGXFSZ, SIG_IGN);
  ctl_registry_config cfg = test_cfg();
  cfg.compact_bytes = 1024;
  ctl_registry *r = open_reg(f->state, &cfg);
  make_many(r, c, 8); /* 140-byte records: compacts after the 8th */
  uint64_t gen = ctl_reg_generation(r);
  assert_int_equal(gen, 1);
  /* Eight more appends fit under the limit; the snapshot of all sixteen
   * sessions that the eighth triggers does not. */
  limit_file_size(1400);
  make_many(r, c + 8, 8);
  assert_int_equal(ctl_reg_generation(r), gen);
  assert_true(ctl_reg_journal_size(r) > 1024);
  limit_file_size(RLIM_INFINITY);
  make_many(r, c + 16, NDUR - 16);
  assert_true(ctl_reg_generation(r) > gen);
  ctl_registry_close(r);
  r = open_reg(f->state, &cfg);
  assert_int_equal(ctl_reg_count(r), NDUR);
  expect_all_valid(r, c, NDUR);
  ctl_registry_close(r);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_create_and_validate_both_slots),
      T(test_wrong_token_401),
      T(test_unknown_404),
      T(test_role_mismatch_401),
      T(test_slot_taken_409_and_detach),
      T(test_states),
      T(test_relay_down_clears_its_slots),
      T(test_gone_relays_make_room),
      T(test_stats_idempotent),
      T(test_stats_epochs_add),
      T(test_stats_epochs_fold),
      T(test_ttl_expiry_and_reap),
      T(test_limits),
      T(test_delete),
      T(test_reassign_and_wrong_relay),
      T(test_list),
      T(test_list_pages),
      T(test_random_ops_keep_invariants),
      T(test_durable_restart),
      T(test_target_session),
      T(test_state_dir_mode_tightened),
      T(test_delete_and_expiry_survive_restart),
      T(test_torn_tail_garbage),
      T(test_torn_tail_mid_record),
      T(test_crc_corruption_stops_replay),
      T(test_compaction_then_restart),
      T(test_compaction_crash_window),
      T(test_journal_newer_than_snapshot_refused),
      T(test_corrupt_snapshot_refused),
      T(test_no_plaintext_tokens_on_disk),
      T(test_state_dir_locked),
      T(test_bad_header_starts_fresh),
      T(test_failed_append_changes_nothing),
      T(test_failed_compaction_keeps_journal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
