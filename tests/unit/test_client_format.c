/*
 * test_client_format.c — what the admin commands print
 * (client/format.c): `create --output env` is exactly three shell-safe
 * lines, and answers whose ids or tokens could be anything but base64url
 * (quotes, spaces, globs, $(...)) are refused rather than printed; JSON
 * output parses back to what the relay said; tables; a streamed listing
 * in every format; the one-line errors built from the relay's and an
 * IdP's error bodies; --output parsing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/admin.h"

#define ID "OVMnxnEzZA9QvFc7bH1s2w"
#define TI "Gi-jvZfpHgahXc618jUP8A"
#define TR "tKuylZcPfwjvy43_abcdef"

/* What b holds, NUL-terminated, on the heap. */
static char *text_of(const cm_buf *b) {
  char *out = malloc(cm_buf_size(b) + 1);
  memcpy(out, cm_buf_head(b), cm_buf_size(b));
  out[cm_buf_size(b)] = '\0';
  return out;
}

static json_t *parse(const char *text) {
  json_t *v = json_loads(text, 0, NULL);
  assert_non_null(v);
  return v;
}

static const char *created_text(const char *id, const char *ti) {
  static char buf[1024];
  snprintf(buf, sizeof buf,
           "{\"id\":\"%s\",\"initiator_token\":\"%s\",\"responder_token\":\"" TR "\","
           "\"initiator_url\":\"wss://r.test/relay/%s\",\"responder_url\":\"wss://r.test/relay/"
           "%s\",\"created_at\":\"2026-01-01T00:00:00Z\",\"expires_at\":\"2026-01-01T01:00:00Z\"}",
           id, ti, id, id);
  return buf;
}

typedef int (*fmt_fn)(cm_buf *, rc_output, const json_t *, char *, size_t);

/* What fn makes of text (a NUL-terminated copy), or NULL with err set. */
static char *fmt_one(fmt_fn fn, rc_output f, const char *text, char *err, size_t errlen) {
  json_t *v = parse(text);
  cm_buf b;
  cm_buf_init_secret(&b, 0);
  int rc = fn(&b, f, v, err, errlen);
  json_decref(v);
  char *out = NULL;
  if (rc == 0)
    out = text_of(&b);
  else
    assert_int_equal(rc, -EPROTO);
  cm_buf_free(&b);
  return out;
}

static char *fmt_created(rc_output f, const char *text, char *err, size_t errlen) {
  return fmt_one(rc_fmt_created, f, text, err, errlen);
}

static void test_created_env(void **st) {
  (void)st;
  char err[256];
  char *out = fmt_created(RC_OUT_ENV, created_text(ID, TI), err, sizeof err);
  assert_string_equal(out, "SWSRS_SESSION=" ID "\nSWSRS_INITIATOR_TOKEN=" TI
                           "\nSWSRS_RESPONDER_TOKEN=" TR "\n");
  free(out);
  /* Whatever a shell would act on is refused, never printed. */
  const char *bad_ids[] = {"a b", "x'y", "$(id)", "*", "a;b", "", "a\nb", "\xc3\xa9t\xc3\xa9"};
  for (size_t i = 0; i < CM_ARRAY_LEN(bad_ids); i++) {
    char text[1024];
    json_t *v = parse(created_text(ID, TI));
    json_object_set_new(v, i % 2 ? "initiator_token" : "id", json_string(bad_ids[i]));
    char *t = json_dumps(v, 0);
    snprintf(text, sizeof text, "%s", t);
    cm_secret_free(t);
    json_decref(v);
    assert_null(fmt_created(RC_OUT_ENV, text, err, sizeof err));
    assert_non_null(strstr(err, i % 2 ? "\"initiator_token\"" : "\"id\""));
    assert_null(fmt_created(RC_OUT_JSON, text, err, sizeof err)); /* nor in any format */
  }
  assert_null(fmt_created(RC_OUT_TABLE, "{\"id\":\"" ID "\"}", err, sizeof err));
  assert_non_null(strstr(err, "initiator_token"));
  assert_null(fmt_created(RC_OUT_TABLE, "[]", err, sizeof err));
}

static void test_created_json_table(void **st) {
  (void)st;
  char err[256];
  const char *text = created_text(ID, TI);
  char *out = fmt_created(RC_OUT_JSON, text, err, sizeof err);
  json_t *back = parse(out), *orig = parse(text);
  assert_true(json_equal(back, orig));
  assert_non_null(strstr(out, "{\n  \"id\": \"" ID "\",\n  \"initiator_token\"")); /* in order */
  assert_int_equal(out[strlen(out) - 1], '\n');
  json_decref(back);
  json_decref(orig);
  free(out);
  out = fmt_created(RC_OUT_TABLE, text, err, sizeof err);
  assert_non_null(strstr(out, "session              " ID "\n"));
  assert_non_null(strstr(out, "initiator token      " TI "\n"));
  assert_non_null(strstr(out, "responder url        wss://r.test/relay/" ID "\n"));
  assert_non_null(strstr(out, "expires              2026-01-01T01:00:00Z\n"));
  free(out);
}

static const char *g_status =
    "{\"id\":\"" ID "\",\"state\":\"half_open\",\"created_at\":\"2026-01-01T00:00:00Z\","
    "\"expires_at\":\"2026-01-01T01:00:00Z\",\"last_activity\":null,\"bytes_in\":12,"
    "\"bytes_out\":3456,\"initiator_connected\":true,\"responder_connected\":false}";

static char *fmt_status(rc_output f, const char *text, char *err, size_t errlen) {
  return fmt_one(rc_fmt_status, f, text, err, errlen);
}

static void test_status(void **st) {
  (void)st;
  char err[256];
  char *out = fmt_status(RC_OUT_ENV, g_status, err, sizeof err);
  assert_string_equal(out, "SWSRS_SESSION=" ID "\nSWSRS_STATE=half_open\n"
                           "SWSRS_CREATED_AT=2026-01-01T00:00:00Z\n"
                           "SWSRS_EXPIRES_AT=2026-01-01T01:00:00Z\nSWSRS_LAST_ACTIVITY=\n"
                           "SWSRS_BYTES_IN=12\nSWSRS_BYTES_OUT=3456\n"
                           "SWSRS_INITIATOR_CONNECTED=true\nSWSRS_RESPONDER_CONNECTED=false\n");
  free(out);
  out = fmt_status(RC_OUT_TABLE, g_status, err, sizeof err);
  assert_non_null(strstr(out, "state                half_open\n"));
  assert_non_null(strstr(out, "bytes out            3456\n"));
  assert_non_null(strstr(out, "initiator connected  true\n"));
  free(out);
  assert_null(fmt_status(RC_OUT_ENV, "{\"id\":\"" ID "\",\"state\":\"a b\"}", err, sizeof err));
  assert_non_null(strstr(err, "\"state\""));
  assert_null(fmt_status(RC_OUT_ENV,
                         "{\"id\":\"" ID "\",\"state\":\"open\",\"created_at\":\"$(x)\"}", err,
                         sizeof err));
  assert_non_null(strstr(err, "\"created_at\""));
}

static char *list(rc_output f, const char *const *items, size_t n) {
  cm_buf b;
  cm_buf_init(&b, 0);
  rc_fmt_list_begin(&b, f);
  char err[128];
  for (size_t i = 0; i < n; i++) {
    json_t *v = parse(items[i]);
    assert_int_equal(rc_fmt_list_item(&b, f, v, i, err, sizeof err), 0);
    json_decref(v);
  }
  rc_fmt_list_end(&b, f, n);
  char *out = text_of(&b);
  cm_buf_free(&b);
  return out;
}

static void test_list(void **st) {
  (void)st;
  const char *items[] = {g_status, "{\"id\":\"second_id_xxxxxxxxxxxx\",\"state\":\"pending\","
                                   "\"bytes_in\":0,\"bytes_out\":0}"};
  for (size_t n = 0; n <= 2; n++) {
    char *out = list(RC_OUT_JSON, items, n);
    json_t *v = parse(out);
    assert_int_equal(json_array_size(json_object_get(v, "sessions")), n);
    if (n) {
      json_t *first = parse(g_status);
      assert_true(json_equal(json_array_get(json_object_get(v, "sessions"), 0), first));
      json_decref(first);
    }
    json_decref(v);
    free(out);
  }
  char *out = list(RC_OUT_ENV, items, 2);
  assert_string_equal(out, "SWSRS_SESSIONS='" ID " second_id_xxxxxxxxxxxx'\n");
  free(out);
  out = list(RC_OUT_ENV, items, 0);
  assert_string_equal(out, "SWSRS_SESSIONS=''\n");
  free(out);
  out = list(RC_OUT_TABLE, items, 2);
  assert_true(!strncmp(out, "SESSION ", 8));
  assert_non_null(strstr(out, ID "  half_open  initiator  "));
  assert_non_null(strstr(out, "second_id_xxxxxxxxxxxx  pending    none       "));
  free(out);
  cm_buf b;
  cm_buf_init(&b, 0);
  char err[128];
  json_t *v = parse("{\"id\":\"no good\",\"state\":\"open\"}");
  assert_int_equal(rc_fmt_list_item(&b, RC_OUT_TABLE, v, 0, err, sizeof err), -EPROTO);
  json_decref(v);
  cm_buf_free(&b);
}

static void test_deleted_and_output(void **st) {
  (void)st;
  const rc_output f[] = {RC_OUT_TABLE, RC_OUT_JSON, RC_OUT_ENV};
  const char *want[] = {"deleted " ID "\n", "{\"id\":\"" ID "\",\"deleted\":true}\n",
                        "SWSRS_DELETED=" ID "\n"};
  for (size_t i = 0; i < CM_ARRAY_LEN(f); i++) {
    cm_buf b;
    cm_buf_init(&b, 0);
    rc_fmt_deleted(&b, f[i], ID);
    assert_int_equal(cm_buf_size(&b), strlen(want[i]));
    assert_memory_equal(cm_buf_head(&b), want[i], strlen(want[i]));
    cm_buf_free(&b);
  }
  rc_output o;
  assert_int_equal(rc_output_parse("env", &o), 0);
  assert_int_equal(o, RC_OUT_ENV);
  assert_int_equal(rc_output_parse(NULL, &o), 0);
  assert_int_equal(o, RC_OUT_AUTO);
  assert_int_equal(rc_output_parse("yaml", &o), -EINVAL);
  /* Not a terminal (the test's stdout may be one: use a pipe). */
  int p[2];
  assert_int_equal(pipe(p), 0);
  assert_int_equal(rc_output_resolve(RC_OUT_AUTO, p[1]), RC_OUT_JSON);
  assert_int_equal(rc_output_resolve(RC_OUT_ENV, p[1]), RC_OUT_ENV);
  close(p[0]);
  close(p[1]);
}

static void test_error_line(void **st) {
  (void)st;
  char line[256];
  const char *relay = "{\"error\":\"insufficient_scope\",\"message\":\"the token lacks "
                      "swsrs:session:create\"}";
  rc_http_error_line(403, relay, strlen(relay), line, sizeof line);
  assert_string_equal(line, "HTTP 403 insufficient_scope: the token lacks swsrs:session:create");
  const char *idp = "{\"error\":\"invalid_grant\",\"error_description\":\"gone\\nbad\"}";
  rc_http_error_line(400, idp, strlen(idp), line, sizeof line);
  assert_string_equal(line, "HTTP 400 invalid_grant: gone?bad"); /* one line stays one line */
  rc_http_error_line(404, "{\"message\":\"no such session\"}", 29, line, sizeof line);
  assert_string_equal(line, "HTTP 404: no such session");
  rc_http_error_line(502, "<html>", 6, line, sizeof line);
  assert_string_equal(line, "HTTP 502 Bad Gateway");
  rc_http_error_line(599, NULL, 0, line, sizeof line);
  assert_string_equal(line, "HTTP 599");
}

int main(void) {
  rc_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_created_env),
      cmocka_unit_test(test_created_json_table),
      cmocka_unit_test(test_status),
      cmocka_unit_test(test_list),
      cmocka_unit_test(test_deleted_and_output),
      cmocka_unit_test(test_error_line),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
