/*
 * test_client_login.c — the CLI's OAuth state machine (client/login.c),
 * fed canned answers and a clock of the test's own: discovery and its
 * refusals, the device authorization grant with authorization_pending,
 * slow_down (+5 s each), 5xx back-off, expires_in honoured (no poll after
 * it), expired_token and access_denied; refresh (rotating or not, and
 * refused); the client credentials grant with HTTP Basic; what a token
 * response must hold; and form encoding of what is sent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/admin.h"

#define RELAY     "https://relay.test:8443"
#define ISSUER    "https://idp.test"
#define TOKEN_EP  "https://idp.test/token"
#define DEVICE_EP "https://idp.test/device"
#define T0        1700000000000LL /* the test's clock, ms */

static const char *g_discovery =
    "{\"issuer\":\"" ISSUER "\",\"audience\":\"relay-aud\","
    "\"scopes\":[\"swsrs:session:create\",\"swsrs:session:read\"],"
    "\"token_endpoint\":\"" TOKEN_EP "\",\"device_authorization_endpoint\":\"" DEVICE_EP "\","
    "\"client_id_hint\":\"relay-cli\"}";

static const char *g_device = "{\"device_code\":\"DEV-secret-code\",\"user_code\":\"WDJB-MJHT\","
                              "\"verification_uri\":\"https://idp.test/activate\","
                              "\"verification_uri_complete\":\"https://idp.test/activate?c=WDJB\","
                              "\"expires_in\":600,\"interval\":1}";

static const char *g_tokens = "{\"access_token\":\"AT-1\",\"token_type\":\"Bearer\","
                              "\"expires_in\":300,\"refresh_token\":\"RT-1\","
                              "\"scope\":\"swsrs:session:create\"}";

static void respond(rc_login *l, int status, const char *body, int64_t now, rc_login_action *a) {
  rc_login_response(l, status, body, body ? strlen(body) : 0, now, a);
}

static bool body_has(const rc_login_action *a, const char *s) {
  return a->body && memmem(a->body, a->body_len, s, strlen(s)) != NULL;
}

static void expect_request(const rc_login_action *a, const char *method, const char *url) {
  if (a->kind != RC_ACT_REQUEST) fail_msg("wanted a request, got %d (%s)", a->kind, a->error);
  assert_string_equal(a->method, method);
  assert_string_equal(a->url, url);
  if (!strcmp(method, "POST"))
    assert_string_equal(a->content_type, "application/x-www-form-urlencoded");
}

static void expect_wait(const rc_login_action *a, uint64_t ms) {
  if (a->kind != RC_ACT_WAIT) fail_msg("wanted a wait, got %d (%s)", a->kind, a->error);
  assert_int_equal(a->wait_ms, ms);
}

static void expect_failed(const rc_login_action *a, const char *part) {
  if (a->kind != RC_ACT_FAILED) fail_msg("wanted a failure, got %d", a->kind);
  if (!strstr(a->error, part)) fail_msg("\"%s\" not in \"%s\"", part, a->error);
}

static rc_login *device_login(void) {
  rc_login_params p = {.mode = RC_LOGIN_DEVICE, .relay_url = RELAY "/"};
  char err[256];
  rc_login *l = rc_login_new(&p, err, sizeof err);
  assert_non_null(l);
  return l;
}

/* Up to the first wait: discovery and the device authorization. */
static rc_login *device_started(rc_login_action *a, const char *device) {
  rc_login *l = device_login();
  rc_login_start(l, T0, a);
  expect_request(a, "GET", RELAY "/.well-known/swsrs-config");
  assert_null(a->body);
  respond(l, 200, g_discovery, T0, a);
  expect_request(a, "POST", DEVICE_EP);
  assert_true(body_has(a, "client_id=relay-cli"));
  assert_true(body_has(a, "scope=swsrs%3Asession%3Acreate%20swsrs%3Asession%3Aread"));
  assert_true(body_has(a, "audience=relay-aud"));
  assert_null(a->authorization);
  respond(l, 200, device, T0 + 50, a);
  return l;
}

/* The machine is done: its credentials (then freed with it). */
static rc_creds finish(rc_login *l, const rc_login_action *a) {
  if (a->kind != RC_ACT_DONE) fail_msg("wanted the end, got %d (%s)", a->kind, a->error);
  rc_creds c;
  rc_login_take(l, &c);
  rc_login_free(l);
  return c;
}

/* ---- the device grant ------------------------------------------------------------- */

static void test_device_flow(void **st) {
  (void)st;
  rc_login_action a;
  rc_login *l = device_started(&a, g_device);
  expect_wait(&a, 1000);
  assert_non_null(a.prompt);
  assert_non_null(strstr(a.prompt, "https://idp.test/activate"));
  assert_non_null(strstr(a.prompt, "WDJB-MJHT"));
  assert_non_null(strstr(a.prompt, "https://idp.test/activate?c=WDJB"));
  assert_non_null(strstr(a.prompt, "10 min"));
  assert_null(strstr(a.prompt, "DEV-secret-code"));
  int64_t t = T0 + 1050;
  rc_login_timer(l, t, &a);
  expect_request(&a, "POST", TOKEN_EP);
  assert_true(body_has(&a, "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code"));
  assert_true(body_has(&a, "device_code=DEV-secret-code"));
  assert_true(body_has(&a, "client_id=relay-cli"));
  respond(l, 400, "{\"error\":\"authorization_pending\"}", t, &a);
  expect_wait(&a, 1000);
  assert_null(a.prompt); /* shown once */
  rc_login_timer(l, t += 1000, &a);
  respond(l, 400, "{\"error\":\"slow_down\"}", t, &a);
  expect_wait(&a, 6000); /* RFC 8628 §3.5: 5 s more, and from then on */
  rc_login_timer(l, t += 6000, &a);
  respond(l, 400, "{\"error\":\"slow_down\"}", t, &a);
  expect_wait(&a, 11000);
  rc_login_timer(l, t += 11000, &a);
  respond(l, 400, "{\"error\":\"authorization_pending\"}", t, &a);
  expect_wait(&a, 11000);
  rc_login_timer(l, t += 11000, &a);
  respond(l, 503, "busy", t, &a);
  expect_wait(&a, 22000); /* a struggling IdP is polled less often */
  rc_login_timer(l, t += 22000, &a);
  rc_login_transport_error(l, "connection refused", t, &a);
  expect_wait(&a, 44000);
  rc_login_timer(l, t += 44000, &a);
  expect_request(&a, "POST", TOKEN_EP);
  respond(l, 200, g_tokens, t, &a);
  rc_creds c = finish(l, &a);
  assert_string_equal(c.access_token, "AT-1");
  assert_string_equal(c.refresh_token, "RT-1");
  assert_string_equal(c.issuer, ISSUER);
  assert_string_equal(c.relay, RELAY "/");
  assert_string_equal(c.audience, "relay-aud");
  assert_string_equal(c.client_id, "relay-cli");
  assert_string_equal(c.token_endpoint, TOKEN_EP);
  assert_string_equal(c.grant, "device_code");
  assert_string_equal(c.scope, "swsrs:session:create");
  assert_int_equal(c.expires_at, t / 1000 + 300);
  rc_creds_clear(&c);
}

/* expires_in is honoured by the client itself: the last wait ends at the
 * deadline and no poll follows it. */
static void test_device_deadline(void **st) {
  (void)st;
  rc_login_action a;
  const char *dev = "{\"device_code\":\"D\",\"user_code\":\"U\",\"verification_uri\":"
                    "\"https://idp.test/a\",\"expires_in\":3,\"interval\":1}";
  rc_login *l = device_started(&a, dev);
  expect_wait(&a, 1000);
  assert_non_null(strstr(a.prompt, "3 s"));
  int64_t t = T0 + 50;
  for (int i = 0; i < 2; i++) {
    rc_login_timer(l, t += 1000, &a);
    expect_request(&a, "POST", TOKEN_EP);
    respond(l, 400, "{\"error\":\"authorization_pending\"}", t += 100, &a);
    expect_wait(&a, i == 0 ? 1000 : 800); /* what is left of the code's 3 s */
  }
  rc_login_timer(l, T0 + 50 + 3000, &a);
  expect_failed(&a, "expired after 3 s");
  rc_login_free(l);

  /* A code without expires_in is refused: it could be polled forever. */
  l = device_login();
  rc_login_start(l, T0, &a);
  respond(l, 200, g_discovery, T0, &a);
  respond(l, 200, "{\"device_code\":\"D\",\"user_code\":\"U\",\"verification_uri\":\"x\"}", T0, &a);
  expect_failed(&a, "expires_in");
  rc_login_free(l);
}

static void test_device_refusals(void **st) {
  (void)st;
  static const struct {
    int status;
    const char *body, *want;
  } cases[] = {
      {400, "{\"error\":\"expired_token\"}", "expired (expired_token)"},
      {400, "{\"error\":\"access_denied\"}", "denied (access_denied)"},
      {400, "{\"error\":\"invalid_grant\",\"error_description\":\"code used\"}",
       "the token request refused: HTTP 400 invalid_grant: code used"},
      {401, "{\"error\":\"invalid_client\"}", "HTTP 401: invalid_client"},
      {400, "not json", "HTTP 400 Bad Request"},
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
    rc_login_action a;
    rc_login *l = device_started(&a, g_device);
    rc_login_timer(l, T0 + 2000, &a);
    respond(l, cases[i].status, cases[i].body, T0 + 2000, &a);
    expect_failed(&a, cases[i].want);
    rc_login_free(l);
  }
  /* The device authorization itself refused. */
  rc_login_action a;
  rc_login *l = device_login();
  rc_login_start(l, T0, &a);
  respond(l, 200, g_discovery, T0, &a);
  respond(l, 401, "{\"error\":\"invalid_client\",\"error_description\":\"unknown client\"}", T0,
          &a);
  expect_failed(&a, "device authorization refused: HTTP 401 invalid_client: unknown client");
  rc_login_free(l);
}

/* ---- discovery --------------------------------------------------------------------- */

static void discovery_fails(int status, const char *body, const char *want) {
  rc_login_action a;
  rc_login *l = device_login();
  rc_login_start(l, T0, &a);
  respond(l, status, body, T0, &a);
  expect_failed(&a, want);
  rc_login_free(l);
}

static void test_discovery(void **st) {
  (void)st;
  discovery_fails(404, "", "--no-auth");
  discovery_fails(503, "{\"error\":\"unavailable\",\"message\":\"no controller\"}",
                  RELAY "/.well-known/swsrs-config: HTTP 503 unavailable: no controller");
  discovery_fails(200, "[1]", "not a JSON object");
  /* Secrets never go to a plain-HTTP endpoint off loopback. */
  discovery_fails(
      200,
      "{\"issuer\":\"i\",\"token_endpoint\":\"http://idp.test/t\","
      "\"device_authorization_endpoint\":\"https://idp.test/d\",\"client_id_hint\":\"c\"}",
      "no usable issuer, token_endpoint and device_authorization_endpoint");
  discovery_fails(200,
                  "{\"issuer\":\"i\",\"token_endpoint\":\"https://idp.test/t\","
                  "\"client_id_hint\":\"c\"}",
                  "device_authorization_endpoint");
  discovery_fails(200,
                  "{\"issuer\":\"i\",\"token_endpoint\":\"https://idp.test/t\","
                  "\"device_authorization_endpoint\":\"http://127.0.0.1:9/d\"}",
                  "--client-id");

  /* wss:// names the relay as well; a given client id and scope win. */
  rc_login_params p = {.mode = RC_LOGIN_DEVICE,
                       .relay_url = "wss://relay.test",
                       .client_id = "mine&co",
                       .scope = "a b"};
  char err[128];
  rc_login *l = rc_login_new(&p, err, sizeof err);
  rc_login_action a;
  rc_login_start(l, T0, &a);
  expect_request(&a, "GET", "https://relay.test/.well-known/swsrs-config");
  respond(l, 200, g_discovery, T0, &a);
  assert_true(body_has(&a, "client_id=mine%26co"));
  assert_true(body_has(&a, "scope=a%20b"));
  rc_login_transport_error(l, "relay.test: connection refused", T0, &a);
  expect_failed(&a, "relay.test: connection refused");
  rc_login_free(l);

  /* The settings name where the secrets go: read over plain HTTP only on
   * loopback, since anyone on the path could rewrite them. */
  const char *plain[] = {"http://relay.test", "ws://relay.test:8080/"};
  for (size_t i = 0; i < 2; i++) {
    rc_login_params q = {.mode = RC_LOGIN_DEVICE, .relay_url = plain[i]};
    assert_null(rc_login_new(&q, err, sizeof err));
    if (!strstr(err, "https")) fail_msg("\"%s\"", err);
  }
  rc_login_params lo = {.mode = RC_LOGIN_CLIENT,
                        .relay_url = "http://127.0.0.1:8443",
                        .client_id = "c",
                        .client_secret = "s"};
  l = rc_login_new(&lo, err, sizeof err);
  assert_non_null(l);
  rc_login_free(l);

  /* A relay URL is needed; a timer or an answer nobody asked for is an error. */
  rc_login_params none = {.mode = RC_LOGIN_DEVICE};
  assert_null(rc_login_new(&none, err, sizeof err));
  assert_non_null(strstr(err, "relay URL"));
  l = device_login();
  rc_login_timer(l, T0, &a);
  expect_failed(&a, "timer");
  rc_login_free(l);
}

/* ---- token responses --------------------------------------------------------------------- */

static void token_fails(const char *tokens, const char *want) {
  rc_login_action a;
  rc_login *l = device_started(&a, g_device);
  rc_login_timer(l, T0 + 2000, &a);
  respond(l, 200, tokens, T0 + 2000, &a);
  expect_failed(&a, want);
  rc_login_free(l);
}

static void test_token_response(void **st) {
  (void)st;
  token_fails("{\"token_type\":\"Bearer\"}", "no usable access_token");
  token_fails("{\"access_token\":\"a b\"}", "no usable access_token");
  token_fails("{\"access_token\":\"a\",\"token_type\":\"mac\"}", "token_type other than Bearer");
  token_fails("{\"access_token\":\"a\",\"refresh_token\":\"r\\n\"}", "malformed refresh_token");

  /* No expires_in: a JWT's exp says when it ends; an opaque token, unknown. */
  char jwt[256], payload[64];
  snprintf(payload, sizeof payload, "{\"exp\":%lld,\"sub\":\"x\"}", T0 / 1000 + 77);
  char p64[128];
  cm_b64url_encode((const uint8_t *)payload, strlen(payload), p64, sizeof p64);
  snprintf(jwt, sizeof jwt,
           "{\"access_token\":\"eyJhbGciOiJFUzI1NiJ9.%s.c2ln\","
           "\"token_type\":\"bearer\"}",
           p64);
  /* Absurd lifetimes are held to ten years, not overflowed. */
  const char *bodies[] = {jwt, "{\"access_token\":\"opaque\",\"expires_in\":\"60\"}",
                          "{\"access_token\":\"opaque\"}",
                          "{\"access_token\":\"o\",\"expires_in\":9223372036854775807}",
                          "{\"access_token\":\"o\",\"expires_in\":1e300}"};
  const int64_t ten_years = (T0 + 2000) / 1000 + 10LL * 365 * 86400;
  const int64_t want[] = {T0 / 1000 + 77, (T0 + 2000) / 1000 + 60, 0, ten_years, ten_years};
  for (size_t i = 0; i < CM_ARRAY_LEN(bodies); i++) {
    rc_login_action a;
    rc_login *l = device_started(&a, g_device);
    rc_login_timer(l, T0 + 2000, &a);
    respond(l, 200, bodies[i], T0 + 2000, &a);
    rc_creds c = finish(l, &a);
    assert_int_equal(c.expires_at, want[i]);
    assert_null(c.refresh_token);
    rc_creds_clear(&c);
  }
}

/* An interval too large to be meant waits what is left of the code's life,
 * not a wrapped-around zero (a poll loop against the token endpoint). */
static void test_device_huge_interval(void **st) {
  (void)st;
  rc_login_action a;
  rc_login *l = device_started(&a, "{\"device_code\":\"D\",\"user_code\":\"U\","
                                   "\"verification_uri\":\"https://idp.test/a\","
                                   "\"expires_in\":600,\"interval\":2305843009213693952}");
  expect_wait(&a, 600000);
  rc_login_free(l);
}

/* ---- refresh -------------------------------------------------------------------------- */

static rc_creds stored(const char *grant, const char *refresh) {
  rc_creds c = {0};
  c.relay = rc_secret_strdup(RELAY);
  c.issuer = rc_secret_strdup(ISSUER);
  c.audience = rc_secret_strdup("relay-aud");
  c.client_id = rc_secret_strdup("relay-cli");
  c.token_endpoint = rc_secret_strdup(TOKEN_EP);
  c.grant = rc_secret_strdup(grant);
  c.scope = rc_secret_strdup("swsrs:session:read");
  c.access_token = rc_secret_strdup("AT-old");
  c.refresh_token = rc_secret_strdup(refresh);
  c.expires_at = T0 / 1000 + 10;
  return c;
}

static void test_refresh(void **st) {
  (void)st;
  const char *answers[] = {"{\"access_token\":\"AT-2\",\"expires_in\":120}",
                           "{\"access_token\":\"AT-2\",\"expires_in\":120,\"refresh_token\":"
                           "\"RT-2\",\"scope\":\"s2\"}"};
  for (size_t i = 0; i < CM_ARRAY_LEN(answers); i++) {
    rc_creds cur = stored("device_code", "RT-old");
    /* A client secret in the environment does not turn a user's refresh
     * into a client credentials grant. */
    rc_login_params p = {.mode = RC_LOGIN_REFRESH, .current = &cur, .client_secret = "x"};
    char err[128];
    rc_login *l = rc_login_new(&p, err, sizeof err);
    rc_creds_clear(&cur); /* the machine keeps its own copy */
    rc_login_action a;
    rc_login_start(l, T0, &a);
    expect_request(&a, "POST", TOKEN_EP);
    assert_true(body_has(&a, "grant_type=refresh_token"));
    assert_true(body_has(&a, "refresh_token=RT-old"));
    assert_true(body_has(&a, "client_id=relay-cli"));
    assert_null(a.authorization);
    respond(l, 200, answers[i], T0, &a);
    rc_creds c = finish(l, &a);
    assert_string_equal(c.access_token, "AT-2");
    /* Not rotated: the old refresh token stays; rotated: the new one. */
    assert_string_equal(c.refresh_token, i == 0 ? "RT-old" : "RT-2");
    assert_string_equal(c.scope, i == 0 ? "swsrs:session:read" : "s2");
    assert_string_equal(c.relay, RELAY);
    assert_string_equal(c.issuer, ISSUER);
    assert_string_equal(c.grant, "device_code");
    assert_int_equal(c.expires_at, T0 / 1000 + 120);
    rc_creds_clear(&c);
  }

  rc_creds cur = stored("device_code", "RT-old");
  rc_login_params p = {.mode = RC_LOGIN_REFRESH, .current = &cur};
  char err[256];
  rc_login *l = rc_login_new(&p, err, sizeof err);
  rc_login_action a;
  rc_login_start(l, T0, &a);
  respond(l, 400, "{\"error\":\"invalid_grant\",\"error_description\":\"revoked\"}", T0, &a);
  expect_failed(&a, "renewing the cached credentials failed: HTTP 400 invalid_grant: revoked; "
                    "run relay auth --relay " RELAY);
  rc_login_free(l);

  /* What a refresh cannot do without. */
  rc_secret_strfree(&cur.refresh_token);
  assert_null(rc_login_new(&p, err, sizeof err));
  assert_non_null(strstr(err, "no refresh token"));
  rc_creds_clear(&cur);
  cur = stored("client_credentials", NULL);
  assert_null(rc_login_new(&p, err, sizeof err));
  assert_non_null(strstr(err, "SWSRS_CLIENT_SECRET"));
  rc_secret_strfree(&cur.token_endpoint);
  cur.token_endpoint = rc_secret_strdup("http://idp.test/token");
  p.client_secret = "s";
  assert_null(rc_login_new(&p, err, sizeof err));
  assert_non_null(strstr(err, "insecure"));
  rc_creds_clear(&cur);
}

/* ---- client credentials --------------------------------------------------------------- */

static void test_client_credentials(void **st) {
  (void)st;
  rc_login_params p = {.mode = RC_LOGIN_CLIENT,
                       .relay_url = RELAY,
                       .client_id = "robot",
                       .client_secret = "s:cr et"};
  char err[128];
  rc_login *l = rc_login_new(&p, err, sizeof err);
  assert_non_null(l);
  rc_login_action a;
  rc_login_start(l, T0, &a);
  respond(l, 200, g_discovery, T0, &a);
  expect_request(&a, "POST", TOKEN_EP);
  assert_true(body_has(&a, "grant_type=client_credentials"));
  assert_true(body_has(&a, "scope=swsrs%3Asession%3Acreate%20swsrs%3Asession%3Aread"));
  assert_true(body_has(&a, "audience=relay-aud"));
  assert_false(body_has(&a, "s%3Acr")); /* the secret is in the header only */
  /* RFC 6749 §2.3.1: base64 of form-encoded "robot:s%3Acr%20et". */
  assert_string_equal(a.authorization, "Basic cm9ib3Q6cyUzQWNyJTIwZXQ=");
  respond(l, 200, "{\"access_token\":\"AT-m\",\"token_type\":\"Bearer\",\"expires_in\":60}", T0,
          &a);
  rc_creds c = finish(l, &a);
  assert_string_equal(c.grant, "client_credentials");
  assert_string_equal(c.client_id, "robot");
  assert_null(c.refresh_token);
  assert_int_equal(c.expires_at, T0 / 1000 + 60);

  /* Renewed later with the grant again (there is no refresh token). */
  rc_login_params r = {.mode = RC_LOGIN_REFRESH, .current = &c, .client_secret = "s:cr et"};
  l = rc_login_new(&r, err, sizeof err);
  assert_non_null(l);
  rc_login_start(l, T0, &a);
  expect_request(&a, "POST", TOKEN_EP);
  assert_true(body_has(&a, "grant_type=client_credentials"));
  assert_string_equal(a.authorization, "Basic cm9ib3Q6cyUzQWNyJTIwZXQ=");
  respond(l, 401, "{\"error\":\"invalid_client\"}", T0, &a);
  expect_failed(&a, "HTTP 401: invalid_client");
  rc_login_free(l);
  rc_creds_clear(&c);

  p.client_secret = NULL;
  assert_null(rc_login_new(&p, err, sizeof err));
  assert_non_null(strstr(err, "SWSRS_CLIENT_SECRET"));
}

int main(void) {
  rc_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_flow),        cmocka_unit_test(test_device_deadline),
      cmocka_unit_test(test_device_refusals),    cmocka_unit_test(test_discovery),
      cmocka_unit_test(test_token_response),     cmocka_unit_test(test_refresh),
      cmocka_unit_test(test_client_credentials), cmocka_unit_test(test_device_huge_interval),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
