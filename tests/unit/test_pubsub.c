/*
 * test_pubsub.c — the sans-I/O parts of pubsub-dial (client/pubsub.c):
 * the Redis URL (hosts, IPv6 in brackets, ports, databases, and the
 * refusals: another scheme, TLS, credentials — without quoting them —, a
 * query, bad ports and numbers) and the channel names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "client/client.h"

static void ok(const char *text, const char *host, unsigned port, unsigned db) {
  rc_redis_url u;
  char err[200] = "";
  if (rc_redis_url_parse(text, &u, err, sizeof err) != 0) fail_msg("%s: %s", text, err);
  assert_string_equal(u.host, host);
  assert_int_equal(u.port, port);
  assert_int_equal(u.db, db);
}

/* Refused, with a message containing want. */
static void bad(const char *text, const char *want) {
  rc_redis_url u;
  char err[200] = "";
  assert_int_equal(rc_redis_url_parse(text, &u, err, sizeof err), -EINVAL);
  if (!strstr(err, want)) fail_msg("%s: message %s", text, err);
}

static void test_accepted(void **state) {
  (void)state;
  ok("redis://127.0.0.1:6380", "127.0.0.1", 6380, 0);
  ok("redis://127.0.0.1", "127.0.0.1", RC_REDIS_DEFAULT_PORT, 0);
  ok("REDIS://cache.example.com:7000/3", "cache.example.com", 7000, 3);
  ok("redis://localhost/", "localhost", 6379, 0);
  ok("redis://[::1]:6379/15", "::1", 6379, 15);
  ok("redis://[fe80::1%25eth0]", "fe80::1%25eth0", 6379, 0);
  ok("redis://h:1/1000000", "h", 1, 1000000);
}

static void test_refused(void **state) {
  (void)state;
  bad(NULL, "is needed");
  bad("http://127.0.0.1:6379", "must start with redis://");
  bad("rediss://127.0.0.1:6379", "TLS");
  bad("redis://", "host");
  bad("redis://:6379", "host");
  bad("redis://::1:6379", "host"); /* IPv6 needs brackets */
  bad("redis://[::1", "host");
  bad("redis://[::1]x", "host");
  bad("redis://[nothex]:1", "host");
  bad("redis://a b:1", "host");
  bad("redis://h:0", "port");
  bad("redis://h:65536", "port");
  bad("redis://h:", "port");
  bad("redis://h:12x", "port");
  bad("redis://h:1/x", "database number");
  bad("redis://h:1/1000001", "database number");
  bad("redis://h:1/99999999999", "database number");
  bad("redis://h:1?db=2", "without a query");
}

static void test_credentials_refused_unquoted(void **state) {
  (void)state;
  const char *urls[] = {"redis://user:hunter2@127.0.0.1:6379", "redis://:hunter2@h",
                        "redis://hunter2@h/0"};
  for (size_t i = 0; i < sizeof urls / sizeof *urls; i++) {
    rc_redis_url u;
    char err[300] = "";
    assert_int_equal(rc_redis_url_parse(urls[i], &u, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "must not carry credentials"));
    assert_null(strstr(err, "hunter2"));
  }
}

static void test_channels(void **state) {
  (void)state;
  char c[128];
  rc_pubsub_channel("relay", "OVMnxnEzZA9QvFc7bH1s2w", "up", false, c, sizeof c);
  assert_string_equal(c, "relay:OVMnxnEzZA9QvFc7bH1s2w:up");
  rc_pubsub_channel("relay", "OVMnxnEzZA9QvFc7bH1s2w", "up", true, c, sizeof c);
  assert_string_equal(c, "relay:OVMnxnEzZA9QvFc7bH1s2w:up:text");
  rc_pubsub_channel("app", "S", "down", false, c, sizeof c);
  assert_string_equal(c, "app:S:down");
  rc_pubsub_channel("app", "S", "down", true, c, sizeof c);
  assert_string_equal(c, "app:S:down:text");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_accepted),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_credentials_refused_unquoted),
      cmocka_unit_test(test_channels),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
