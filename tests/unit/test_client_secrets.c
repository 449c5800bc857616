/*
 * test_client_secrets.c — the client's secrets are wiped before the memory
 * holding them is freed (freedscan.h: every freed block is copied aside
 * under ASan and searched afterwards): access and refresh tokens and the
 * device code through a whole device flow and a refresh, the credentials
 * file written and read back, a client secret in HTTP Basic, and slot
 * tokens formatted for `create --output env`.  The control: jansson on
 * plain malloc (what rc_init replaces) leaves a parsed token behind.
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

#include "freedscan.h"

#define T0 1700000000000LL

static char g_dir[256];

static void token(char out[CM_TOKEN_LEN + 1]) { assert_int_equal(cm_random_token(out), 0); }

static int setup(void **st) {
  snprintf(g_dir, sizeof g_dir, "/tmp/test_client_secrets.XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  return freedscan_setup(st);
}

static int teardown(void **st) {
  (void)st;
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_control_plain_jansson_leaves_tokens(void **st) {
  (void)st;
  need_asan();
  char t[CM_TOKEN_LEN + 1], doc[128];
  token(t);
  snprintf(doc, sizeof doc, "{\"access_token\":\"%s\"}", t);
  json_set_alloc_funcs(malloc, free);
  scan_start();
  json_decref(json_loads(doc, 0, NULL));
  scan_stop();
  rc_init();
  assert_true(freed_unwiped(t));
}

static void respond(rc_login *l, int status, const char *body, rc_login_action *a) {
  rc_login_response(l, status, body, strlen(body), T0, a);
}

/* A device flow, a save and a load, a refresh: all tokens wiped. */
static void test_device_flow_and_file(void **st) {
  (void)st;
  need_asan();
  char dev[CM_TOKEN_LEN + 1], at[CM_TOKEN_LEN + 1], rt[CM_TOKEN_LEN + 1], at2[CM_TOKEN_LEN + 1],
      rt2[CM_TOKEN_LEN + 1];
  token(dev);
  token(at);
  token(rt);
  token(at2);
  token(rt2);
  char device[512], tokens[256], refreshed[256], path[300];
  snprintf(device, sizeof device,
           "{\"device_code\":\"%s\",\"user_code\":\"U\",\"verification_uri\":"
           "\"https://i.test/a\",\"expires_in\":60,\"interval\":1}",
           dev);
  snprintf(tokens, sizeof tokens,
           "{\"access_token\":\"%s\",\"refresh_token\":\"%s\",\"expires_in\":30}", at, rt);
  snprintf(refreshed, sizeof refreshed,
           "{\"access_token\":\"%s\",\"refresh_token\":\"%s\",\"expires_in\":300}", at2, rt2);
  snprintf(path, sizeof path, "%s/swsrs/credentials.json", g_dir);
  const char *disc = "{\"issuer\":\"https://i.test\",\"token_endpoint\":\"https://i.test/t\","
                     "\"device_authorization_endpoint\":\"https://i.test/d\","
                     "\"client_id_hint\":\"cli\"}";
  char err[256];
  scan_start();
  rc_login_params p = {.mode = RC_LOGIN_DEVICE, .relay_url = "https://r.test"};
  rc_login *l = rc_login_new(&p, err, sizeof err);
  rc_login_action a;
  rc_login_start(l, T0, &a);
  respond(l, 200, disc, &a);
  respond(l, 200, device, &a);
  rc_login_timer(l, T0 + 1000, &a);
  respond(l, 400, "{\"error\":\"authorization_pending\"}", &a);
  rc_login_timer(l, T0 + 2000, &a);
  respond(l, 200, tokens, &a);
  assert_int_equal(a.kind, RC_ACT_DONE);
  rc_creds c;
  rc_login_take(l, &c);
  rc_login_free(l);
  assert_int_equal(rc_creds_save(path, &c, err, sizeof err), 0);
  rc_creds_clear(&c);
  assert_int_equal(rc_creds_load(path, &c, err, sizeof err), 0);
  rc_login_params r = {.mode = RC_LOGIN_REFRESH, .current = &c};
  l = rc_login_new(&r, err, sizeof err);
  rc_login_start(l, T0, &a);
  respond(l, 200, refreshed, &a);
  rc_creds fresh;
  rc_login_take(l, &fresh);
  rc_login_free(l);
  rc_creds_clear(&c);
  assert_int_equal(rc_creds_save(path, &fresh, err, sizeof err), 0);
  rc_creds_clear(&fresh);
  scan_stop();
  /* The prompt is no secret: seeing it shows the scan saw the machine's memory. */
  assert_true(freed_unwiped("https://i.test/a"));
  const char *secrets[] = {dev, at, rt, at2, rt2};
  for (size_t i = 0; i < CM_ARRAY_LEN(secrets); i++)
    assert_false(freed_unwiped(secrets[i]));
}

static void test_client_secret_and_slot_tokens(void **st) {
  (void)st;
  need_asan();
  char secret[CM_TOKEN_LEN + 1], id[CM_TOKEN_LEN + 1], ti[CM_TOKEN_LEN + 1], tr[CM_TOKEN_LEN + 1];
  token(secret);
  token(id);
  token(ti);
  token(tr);
  char created[512], err[256];
  snprintf(created, sizeof created,
           "{\"id\":\"%s\",\"initiator_token\":\"%s\",\"responder_token\":\"%s\"}", id, ti, tr);
  scan_start();
  rc_login_params p = {.mode = RC_LOGIN_CLIENT,
                       .relay_url = "https://r.test",
                       .client_id = "robot",
                       .client_secret = secret};
  rc_login *l = rc_login_new(&p, err, sizeof err);
  rc_login_action a;
  rc_login_start(l, T0, &a);
  respond(l, 200, "{\"issuer\":\"https://i.test\",\"token_endpoint\":\"https://i.test/t\"}", &a);
  assert_non_null(a.authorization);
  char basic[128];
  snprintf(basic, sizeof basic, "%s", a.authorization + strlen("Basic "));
  rc_login_free(l);
  json_t *v = json_loads(created, 0, NULL);
  const rc_output fmts[] = {RC_OUT_ENV, RC_OUT_JSON, RC_OUT_TABLE};
  for (size_t i = 0; i < CM_ARRAY_LEN(fmts); i++) {
    cm_buf out;
    cm_buf_init_secret(&out, 0);
    assert_int_equal(rc_fmt_created(&out, fmts[i], v, err, sizeof err), 0);
    cm_buf_free(&out);
  }
  json_decref(v);
  scan_stop();
  assert_false(freed_unwiped(secret));
  assert_false(freed_unwiped(basic));
  assert_false(freed_unwiped(ti));
  assert_false(freed_unwiped(tr));
}

/* A token set twice (the environment, then a flag that wins; or a config
 * file under both) leaves no copy behind: the one replaced and the one
 * kept are wiped before they are freed. */
typedef struct tok_cfg {
  char *token;
} tok_cfg;

static void test_config_values_replaced_are_wiped(void **st) {
  (void)st;
  need_asan();
  static const cm_cfg_opt opts[] = {
      {"token", CM_CFG_STRING, offsetof(tok_cfg, token), NULL, 0, 0, "slot token", "TOKEN"}};
  static const cm_cfg_spec spec = {
      .usage = "t", .summary = "t", .opts = opts, .nopts = 1, .env_prefix = "RELAYTEST_SECRETS_"};
  char from_file[CM_TOKEN_LEN + 1], from_env[CM_TOKEN_LEN + 1], from_flag[CM_TOKEN_LEN + 1];
  token(from_file);
  token(from_env);
  token(from_flag);
  char json[128], flag[64], err[256];
  snprintf(json, sizeof json, "{\"token\":\"%s\"}", from_file);
  snprintf(flag, sizeof flag, "--token=%s", from_flag);
  setenv("RELAYTEST_SECRETS_TOKEN", from_env, 1);
  char *argv[] = {flag, NULL};
  tok_cfg c = {0};
  scan_start();
  assert_int_equal(cm_config_load_text(&spec, &c, json, strlen(json), "config file t", 1, argv,
                                       NULL, err, sizeof err),
                   CM_CFG_OK);
  assert_string_equal(c.token, from_flag);
  cm_config_free(&spec, &c);
  scan_stop();
  unsetenv("RELAYTEST_SECRETS_TOKEN");
  assert_false(freed_unwiped(from_file));
  assert_false(freed_unwiped(from_env));
  assert_false(freed_unwiped(from_flag));
}

int main(void) {
  freedscan_install();
  rc_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_control_plain_jansson_leaves_tokens),
      cmocka_unit_test(test_device_flow_and_file),
      cmocka_unit_test(test_client_secret_and_slot_tokens),
      cmocka_unit_test(test_config_values_replaced_are_wiped),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
