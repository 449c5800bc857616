/*
 * test_dashboard.c — the dashboard's Content-Security-Policy: the token
 * endpoint's origin is the only source added, rebuilt from a parsed URL,
 * so whatever an identity provider writes there cannot widen the policy
 * or break the header.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "relay/dashboard.h"

#define BASE_BEFORE "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
#define BASE_AFTER                                                                                 \
  "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "                                \
  "require-trusted-types-for 'script'; trusted-types 'none'"

/* The connect-src directive the policy gets for a discovery document
 * whose token_endpoint is `tep` (a JSON string literal's contents). */
static void connect_src(const char *tep, char *out, size_t outlen) {
  char doc[512], csp[1024];
  snprintf(doc, sizeof doc, "{\"issuer\":\"x\",\"token_endpoint\":\"%s\"}", tep);
  rly_dashboard_csp(doc, strlen(doc), csp, sizeof csp);
  size_t pre = strlen(BASE_BEFORE), post = strlen(BASE_AFTER), n = strlen(csp);
  assert_true(n > pre + post);
  assert_memory_equal(csp, BASE_BEFORE, pre);
  assert_string_equal(csp + n - post, BASE_AFTER);
  snprintf(out, outlen, "%.*s", (int)(n - pre - post), csp + pre);
}

static void test_origin_of_the_token_endpoint(void **state) {
  (void)state;
  char d[256];
  connect_src("https://idp.example.com/oauth2/token?x=1#f", d, sizeof d);
  assert_string_equal(d, "connect-src 'self' https://idp.example.com");
  connect_src("https://idp.example.com:8443/token", d, sizeof d);
  assert_string_equal(d, "connect-src 'self' https://idp.example.com:8443");
  connect_src("HTTP://127.0.0.1:9000/token", d, sizeof d);
  assert_string_equal(d, "connect-src 'self' http://127.0.0.1:9000");
  connect_src("https://[::1]:4443/token", d, sizeof d);
  assert_string_equal(d, "connect-src 'self' https://[::1]:4443");
}

static void test_hostile_or_missing_endpoints_add_nothing(void **state) {
  (void)state;
  static const char *bad[] = {
      "https://evil.example; script-src *",
      "https://a'b.example/token",
      "javascript:alert(1)",
      "data:text/html,x",
      "/relative/token",
      "https://a b.example/",
      "https://x.example\\r\\nSet-Cookie: a=b/",
      "ftp://files.example/token",
      "https://user:pw@*.example/",
      "",
  };
  char d[256];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    connect_src(bad[i], d, sizeof d);
    if (strcmp(d, "connect-src 'self'") != 0) fail_msg("%s gave %s", bad[i], d);
  }
  char csp[1024];
  rly_dashboard_csp(NULL, 0, csp, sizeof csp); /* --no-auth, or discovery not loaded */
  assert_string_equal(csp, BASE_BEFORE "connect-src 'self'" BASE_AFTER);
  rly_dashboard_csp("{\"token_endpoint\":42}", 21, csp, sizeof csp);
  assert_string_equal(csp, BASE_BEFORE "connect-src 'self'" BASE_AFTER);
  rly_dashboard_csp("not json", 8, csp, sizeof csp);
  assert_string_equal(csp, BASE_BEFORE "connect-src 'self'" BASE_AFTER);
}

/* The compiled-in files are the ones in relay/dashboard/. */
static void test_assets_compiled_in(void **state) {
  (void)state;
  const char *want[] = {"app.js", "icon.svg", "index.html", "style.css"};
  assert_int_equal(rly_nassets, sizeof want / sizeof want[0]);
  for (size_t i = 0; i < rly_nassets; i++) {
    assert_string_equal(rly_assets[i].name, want[i]);
    assert_true(rly_assets[i].len > 100);
  }
  assert_memory_equal(rly_assets[2].data, "<!doctype html>", 15);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_origin_of_the_token_endpoint),
      cmocka_unit_test(test_hostile_or_missing_endpoints_add_nothing),
      cmocka_unit_test(test_assets_compiled_in),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
