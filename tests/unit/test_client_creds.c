/*
 * test_client_creds.c — the credentials file of the client
 * (client/creds.c): where it lives ($XDG_CONFIG_HOME, else ~/.config),
 * that it is written 0600 in a 0700 directory through a rename (a new
 * inode, no temporary file left, whatever the umask), that it round-trips,
 * that a file others may read or a malformed one is refused with a message
 * that quotes none of it, removal, expiry with a margin, RFC 3339 times,
 * and argv scrubbing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/admin.h"

static char g_dir[256];

static int group_setup(void **st) {
  (void)st;
  snprintf(g_dir, sizeof g_dir, "/tmp/test_client_creds.XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **st) {
  (void)st;
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static rc_creds sample(void) {
  rc_creds c = {0};
  c.relay = rc_secret_strdup("https://relay.test");
  c.issuer = rc_secret_strdup("https://idp.test");
  c.client_id = rc_secret_strdup("relay-cli");
  c.token_endpoint = rc_secret_strdup("https://idp.test/token");
  c.grant = rc_secret_strdup("device_code");
  c.scope = rc_secret_strdup("swsrs:session:create swsrs:session:read");
  c.access_token = rc_secret_strdup("eyJ.access.token");
  c.refresh_token = rc_secret_strdup("refresh-Tok3n");
  c.expires_at = 1767225600; /* 2026-01-01T00:00:00Z */
  return c;
}

static void test_path(void **st) {
  (void)st;
  char path[512], err[256];
  const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
  char *sx = xdg ? strdup(xdg) : NULL, *sh = home ? strdup(home) : NULL;
  setenv("XDG_CONFIG_HOME", "/x/cfg", 1);
  setenv("HOME", "/home/u", 1);
  assert_int_equal(rc_creds_path(path, sizeof path, err, sizeof err), 0);
  assert_string_equal(path, "/x/cfg/swsrs/credentials.json");
  setenv("XDG_CONFIG_HOME", "relative", 1); /* invalid per the XDG spec: ignored */
  assert_int_equal(rc_creds_path(path, sizeof path, err, sizeof err), 0);
  assert_string_equal(path, "/home/u/.config/swsrs/credentials.json");
  unsetenv("XDG_CONFIG_HOME");
  assert_int_equal(rc_creds_path(path, sizeof path, err, sizeof err), 0);
  assert_string_equal(path, "/home/u/.config/swsrs/credentials.json");
  unsetenv("HOME");
  assert_int_equal(rc_creds_path(path, sizeof path, err, sizeof err), -ENOENT);
  assert_non_null(strstr(err, "XDG_CONFIG_HOME"));
  char small[8];
  setenv("HOME", "/home/u", 1);
  assert_int_equal(rc_creds_path(small, sizeof small, err, sizeof err), -ENAMETOOLONG);
  if (sx) setenv("XDG_CONFIG_HOME", sx, 1);
  if (sh)
    setenv("HOME", sh, 1);
  else
    unsetenv("HOME");
  free(sx);
  free(sh);
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  if (d) closedir(d);
  return n;
}

static void test_save_load(void **st) {
  (void)st;
  char dir[512], path[600], err[256];
  snprintf(dir, sizeof dir, "%s/cfg/swsrs", g_dir);
  snprintf(path, sizeof path, "%s/credentials.json", dir);
  mode_t old = umask(0); /* a careless umask changes nothing */
  rc_creds c = sample();
  assert_int_equal(rc_creds_save(path, &c, err, sizeof err), 0);
  struct stat s1, sd;
  assert_int_equal(stat(path, &s1), 0);
  assert_int_equal(s1.st_mode & 07777, 0600);
  assert_int_equal(stat(dir, &sd), 0);
  assert_int_equal(sd.st_mode & 07777, 0700);
  assert_int_equal(count_entries(dir), 1);

  /* The text: Go oauth2.Token names plus where to renew. */
  char *text;
  size_t len;
  assert_int_equal(cm_read_file(path, 1 << 16, &text, &len), 0);
  assert_non_null(strstr(text, "\"expiry\": \"2026-01-01T00:00:00Z\""));
  assert_non_null(strstr(text, "\"token_type\": \"Bearer\""));
  assert_non_null(strstr(text, "\"refresh_token\": \"refresh-Tok3n\""));
  free(text);

  rc_creds back;
  assert_int_equal(rc_creds_load(path, &back, err, sizeof err), 0);
  assert_string_equal(back.access_token, c.access_token);
  assert_string_equal(back.refresh_token, c.refresh_token);
  assert_string_equal(back.issuer, c.issuer);
  assert_string_equal(back.relay, c.relay);
  assert_string_equal(back.client_id, c.client_id);
  assert_string_equal(back.token_endpoint, c.token_endpoint);
  assert_string_equal(back.grant, c.grant);
  assert_string_equal(back.scope, c.scope);
  assert_null(back.audience);
  assert_int_equal(back.expires_at, c.expires_at);
  rc_creds_clear(&back);

  /* Saving again replaces the file by rename: a new inode, still 0600. */
  rc_secret_strfree(&c.access_token);
  c.access_token = rc_secret_strdup("second");
  assert_int_equal(rc_creds_save(path, &c, err, sizeof err), 0);
  struct stat s2;
  assert_int_equal(stat(path, &s2), 0);
  assert_true(s1.st_ino != s2.st_ino);
  assert_int_equal(s2.st_mode & 07777, 0600);
  assert_int_equal(count_entries(dir), 1);
  umask(old);

  /* Readable by others: refused, not used. */
  assert_int_equal(chmod(path, 0644), 0);
  assert_int_equal(rc_creds_load(path, &back, err, sizeof err), -EACCES);
  assert_non_null(strstr(err, "mode 0644"));
  assert_non_null(strstr(err, "chmod 600"));
  assert_null(back.access_token);
  assert_int_equal(chmod(path, 0600), 0);

  assert_int_equal(rc_creds_remove(path, err, sizeof err), 0);
  assert_int_equal(rc_creds_remove(path, err, sizeof err), -ENOENT);
  assert_int_equal(rc_creds_load(path, &back, err, sizeof err), -ENOENT);
  rc_creds_clear(&c);
}

static void write_0600(const char *path, const char *text) {
  assert_int_equal(cm_write_file_atomic(path, text, strlen(text), 0600, false), 0);
}

static void test_malformed(void **st) {
  (void)st;
  char path[512], err[256];
  snprintf(path, sizeof path, "%s/bad.json", g_dir);
  static const struct {
    const char *text, *want;
  } cases[] = {
      {"{\"access_token\": SECRETTOKEN", "not a JSON object"},
      {"[\"SECRETTOKEN\"]", "not a JSON object"},
      {"{\"issuer\":\"i\"}", "\"access_token\" is missing"},
      {"{\"access_token\":\"SECRETTOKEN\"}", "\"issuer\" is missing"},
      {"{\"access_token\":\"SECRETTOKEN\",\"issuer\":\"i\",\"refresh_token\":7}",
       "\"refresh_token\" is not a string"},
      {"{\"access_token\":\"SECRETTOKEN\",\"issuer\":\"i\",\"expiry\":\"tomorrow\"}", "RFC 3339"},
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
    write_0600(path, cases[i].text);
    rc_creds c;
    assert_int_equal(rc_creds_load(path, &c, err, sizeof err), -EINVAL);
    if (!strstr(err, cases[i].want)) fail_msg("\"%s\" not in \"%s\"", cases[i].want, err);
    assert_non_null(strstr(err, "run relay auth again"));
    assert_null(strstr(err, "SECRETTOKEN")); /* messages never quote the file */
    assert_null(c.access_token);
  }
  /* Optional fields may be null; a minimal file works. */
  write_0600(path, "{\"access_token\":\"t\",\"issuer\":\"i\",\"refresh_token\":null}");
  rc_creds c;
  assert_int_equal(rc_creds_load(path, &c, err, sizeof err), 0);
  assert_null(c.refresh_token);
  assert_int_equal(c.expires_at, 0);
  rc_creds_clear(&c);
  /* Not a regular file. */
  assert_int_equal(rc_creds_load(g_dir, &c, err, sizeof err), -EINVAL);
}

static void test_expiring(void **st) {
  (void)st;
  rc_creds c = sample();
  assert_false(rc_creds_expiring(&c, c.expires_at - 61, 60));
  assert_true(rc_creds_expiring(&c, c.expires_at - 60, 60));
  assert_true(rc_creds_expiring(&c, c.expires_at + 1, 0));
  c.expires_at = 0; /* unknown: used until the relay says otherwise */
  assert_false(rc_creds_expiring(&c, 1LL << 40, 60));
  rc_secret_strfree(&c.access_token);
  assert_true(rc_creds_expiring(&c, 0, 0));
  rc_creds_clear(&c);
}

static void test_rfc3339(void **st) {
  (void)st;
  int64_t t;
  assert_int_equal(rc_parse_rfc3339("2026-01-01T00:00:00Z", &t), 0);
  assert_int_equal(t, 1767225600);
  assert_int_equal(rc_parse_rfc3339("2026-01-01T00:00:00.123456789Z", &t), 0);
  assert_int_equal(t, 1767225600);
  assert_int_equal(rc_parse_rfc3339("2026-01-01T01:30:00+01:30", &t), 0);
  assert_int_equal(t, 1767225600);
  assert_int_equal(rc_parse_rfc3339("2025-12-31t23:00:00-01:00", &t), 0);
  assert_int_equal(t, 1767225600);
  const char *bad[] = {"2026-01-01",
                       "2026-01-01T00:00:00",
                       "2026-13-01T00:00:00Z",
                       "2026-01-01T00:00:00Zjunk",
                       "2026-01-01T00:00:00+0100",
                       "20x6-01-01T00:00:00Z"};
  for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++)
    assert_int_equal(rc_parse_rfc3339(bad[i], &t), -EINVAL);
}

static void test_argv_hide(void **st) {
  (void)st;
  char a0[] = "--oidc-token", a1[] = "SECRET1", a2[] = "--admin-url", a3[] = "https://r",
       a4[] = "--oidc_token=SECRET2", a5[] = "--oidc-tokens", a6[] = "keep", a7[] = "--oidc-token";
  char *argv[] = {a0, a1, a2, a3, a4, a5, a6, a7};
  rc_argv_hide((int)CM_ARRAY_LEN(argv), argv, "oidc-token");
  assert_string_equal(a0, "--oidc-token");
  assert_int_equal(a1[0], '\0');
  assert_int_equal(a1[6], '\0'); /* wiped, not only cut */
  assert_string_equal(a3, "https://r");
  assert_string_equal(a4, "--oidc_token=");
  assert_int_equal(a4[19], '\0');
  assert_string_equal(a6, "keep");         /* another flag's value */
  assert_string_equal(a7, "--oidc-token"); /* a last flag without a value */
}

int main(void) {
  rc_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_path),      cmocka_unit_test(test_save_load),
      cmocka_unit_test(test_malformed), cmocka_unit_test(test_expiring),
      cmocka_unit_test(test_rfc3339),   cmocka_unit_test(test_argv_hide),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
