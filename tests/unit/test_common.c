/*
 * test_common.c — unit tests for the leaf helpers of common/: base64url,
 * random tokens, URL redaction, layered configuration (with its exact error
 * messages), duration and size parsing, atomic file writes, time formats
 * and the JSON log line format.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"

/* ---- base64url ------------------------------------------------------------ */

static void test_b64url_round_trip(void **state) {
  (void)state;
  uint8_t in[300], dec[300];
  char enc[512];
  for (size_t i = 0; i < sizeof in; i++)
    in[i] = (uint8_t)(i * 7 + 3);
  for (size_t n = 0; n <= sizeof in; n++) {
    size_t len = cm_b64url_encode(in, n, enc, sizeof enc);
    assert_int_equal(len, cm_b64url_encoded_len(n));
    assert_int_equal(strlen(enc), len);
    assert_null(strpbrk(enc, "+/="));
    long d = cm_b64url_decode(enc, len, dec, sizeof dec);
    assert_int_equal(d, (long)n);
    assert_memory_equal(in, dec, n);
  }
}

static void test_b64url_vectors(void **state) {
  (void)state;
  /* RFC 4648 test vectors, unpadded, plus the two url-safe characters. */
  static const struct {
    const char *raw, *enc;
  } v[] = {{"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
           {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}, {"\xfb\xff", "-_8"}};
  char enc[32];
  uint8_t dec[32];
  for (size_t i = 0; i < CM_ARRAY_LEN(v); i++) {
    cm_b64url_encode((const uint8_t *)v[i].raw, strlen(v[i].raw), enc, sizeof enc);
    assert_string_equal(enc, v[i].enc);
    long n = cm_b64url_decode(v[i].enc, strlen(v[i].enc), dec, sizeof dec);
    assert_int_equal(n, (long)strlen(v[i].raw));
    assert_memory_equal(dec, v[i].raw, (size_t)n);
  }
  /* Padding is tolerated on input. */
  assert_int_equal(cm_b64url_decode("Zg==", 4, dec, sizeof dec), 1);
  assert_int_equal(dec[0], 'f');
  assert_int_equal(cm_b64url_decode("Zm8=", 4, dec, sizeof dec), 2);
}

static void test_b64url_invalid(void **state) {
  (void)state;
  uint8_t out[64];
  assert_int_equal(cm_b64url_decode("Z", 1, out, sizeof out), -1);       /* 1 mod 4 */
  assert_int_equal(cm_b64url_decode("Zm9vY", 5, out, sizeof out), -1);   /* 1 mod 4 */
  assert_int_equal(cm_b64url_decode("Zm+v", 4, out, sizeof out), -1);    /* std alphabet */
  assert_int_equal(cm_b64url_decode("Zm/v", 4, out, sizeof out), -1);    /* std alphabet */
  assert_int_equal(cm_b64url_decode("Zm 9", 4, out, sizeof out), -1);    /* blank */
  assert_int_equal(cm_b64url_decode("Z=g=", 4, out, sizeof out), -1);    /* inner pad */
  assert_int_equal(cm_b64url_decode("Zh", 2, out, sizeof out), -1);      /* non-zero tail */
  assert_int_equal(cm_b64url_decode("Zm9\x80", 4, out, sizeof out), -1); /* high byte */
  assert_int_equal(cm_b64url_decode("Zm9vYmFy", 8, out, 5), -1);         /* short buffer */
  assert_int_equal(cm_b64url_decode("Zm9vYmFy", 8, out, 6), 6);
  char enc[8];
  assert_int_equal(cm_b64url_encode((const uint8_t *)"foobar", 6, enc, 8), 0); /* needs 9 */
}

/* ---- tokens and hashing --------------------------------------------------- */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void test_random_token(void **state) {
  (void)state;
  enum { N = 20000 };
  char(*toks)[CM_TOKEN_LEN + 1] = calloc(N, sizeof *toks);
  const char **ptr = calloc(N, sizeof *ptr);
  assert_non_null(toks);
  assert_non_null(ptr);
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  for (int i = 0; i < N; i++) {
    assert_int_equal(cm_random_token(toks[i]), 0);
    assert_int_equal(strlen(toks[i]), CM_TOKEN_LEN);
    assert_int_equal(strspn(toks[i], alphabet), CM_TOKEN_LEN);
    /* 128 bits: the last character carries 2 bits, so it is one of A, Q, g, w. */
    assert_non_null(strchr("AQgw", toks[i][CM_TOKEN_LEN - 1]));
    uint8_t raw[32];
    assert_int_equal(cm_b64url_decode(toks[i], CM_TOKEN_LEN, raw, sizeof raw), 16);
    ptr[i] = toks[i];
  }
  qsort(ptr, N, sizeof *ptr, cmp_str);
  for (int i = 1; i < N; i++)
    assert_string_not_equal(ptr[i - 1], ptr[i]);
  free(ptr);
  free(toks);
}

static void test_random_below_and_ct(void **state) {
  (void)state;
  int seen[7] = {0};
  for (int i = 0; i < 7000; i++) {
    uint64_t v = cm_random_below(7);
    assert_true(v < 7);
    seen[v]++;
  }
  for (int i = 0; i < 7; i++)
    assert_true(seen[i] > 0);
  assert_int_equal(cm_random_below(0), 0);
  assert_true(cm_ct_equal("abcd", "abcd", 4));
  assert_false(cm_ct_equal("abcd", "abce", 4));
  uint8_t h[32];
  char hex[65];
  cm_sha256("abc", 3, h);
  cm_hex(h, 32, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/* ---- URL redaction --------------------------------------------------------- */

static void test_redact_url(void **state) {
  (void)state;
  char out[256];
  cm_redact_url("/relay/abc?token=s3cr3t&x=1&access_token=zzz&y=two", out, sizeof out);
  assert_string_equal(out, "/relay/abc?token=REDACTED&x=1&access_token=REDACTED&y=two");
  cm_redact_url("/relay/abc", out, sizeof out);
  assert_string_equal(out, "/relay/abc");
  cm_redact_url("/cb?code=abc&state=keep&id_token=t&Password=p&key=k&jwt=j&secret=s", out,
                sizeof out);
  assert_string_equal(out, "/cb?code=REDACTED&state=keep&id_token=REDACTED&Password=REDACTED&"
                           "key=REDACTED&jwt=REDACTED&secret=REDACTED");
  /* Names that merely contain a secret word are kept; a bare name stays. */
  cm_redact_url("/x?tokens=1&mytoken=2&token", out, sizeof out);
  assert_string_equal(out, "/x?tokens=1&mytoken=2&token");
  cm_redact_url("/x?token=", out, sizeof out);
  assert_string_equal(out, "/x?token=REDACTED");
  /* Truncation never shows the secret and always terminates. */
  char small[16];
  cm_redact_url("/relay/a?token=supersecretvalue", small, sizeof small);
  assert_int_equal(strlen(small), sizeof small - 1);
  assert_null(strstr(small, "super"));
  cm_redact_url("/relay/abcdef?token=supersecretvalue", small, sizeof small);
  assert_null(strstr(small, "sup"));
}

/* ---- configuration ---------------------------------------------------------- */

typedef struct tcfg {
  char *listen;
  long long max_things;
  bool verbose;
  long long timeout_ms;
  long long max_body;
  cm_strlist origin;
} tcfg;

static const cm_cfg_opt g_opts[] = {
    {"listen", CM_CFG_STRING, offsetof(tcfg, listen), "127.0.0.1:8443", 0, 0, "addr", "ADDR"},
    {"max-things", CM_CFG_INT, offsetof(tcfg, max_things), "10", 1, 100, "things", "N"},
    {"verbose", CM_CFG_BOOL, offsetof(tcfg, verbose), "false", 0, 0, "chatty", NULL},
    {"timeout", CM_CFG_DURATION, offsetof(tcfg, timeout_ms), "10s", 100, 600000, "t", "DUR"},
    {"max-body", CM_CFG_SIZE, offsetof(tcfg, max_body), "64KiB", 0, 16777216, "b", "SIZE"},
    {"origin", CM_CFG_LIST, offsetof(tcfg, origin), NULL, 0, 0, "origins", "URL"},
};
static const cm_cfg_spec g_spec = {"test [options]", "A test program.", g_opts,
                                   CM_ARRAY_LEN(g_opts), NULL};

static char g_tmpdir[256];

static void clear_env(void) {
  static const char *vars[] = {"RELAY_CONFIG",  "RELAY_LISTEN",  "RELAY_MAX_THINGS",
                               "RELAY_VERBOSE", "RELAY_TIMEOUT", "RELAY_MAX_BODY",
                               "RELAY_ORIGIN"};
  for (size_t i = 0; i < CM_ARRAY_LEN(vars); i++)
    unsetenv(vars[i]);
}

static int group_setup(void **state) {
  (void)state;
  snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/test_common.XXXXXX");
  if (!mkdtemp(g_tmpdir)) return -1;
  clear_env();
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static const char *write_tmp(const char *name, const char *text) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", g_tmpdir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  return path;
}

/* Loads argv (NULL-terminated) into *c; returns the cm_config_load code. */
static int load(tcfg *c, char *err, size_t errlen, const char **argv) {
  int argc = 0;
  while (argv[argc])
    argc++;
  memset(c, 0, sizeof *c);
  return cm_config_load(&g_spec, c, argc, (char **)argv, NULL, err, errlen);
}

static void test_config_defaults(void **state) {
  (void)state;
  clear_env();
  tcfg c;
  char err[512];
  const char *argv[] = {NULL};
  assert_int_equal(load(&c, err, sizeof err, argv), CM_CFG_OK);
  assert_string_equal(c.listen, "127.0.0.1:8443");
  assert_int_equal(c.max_things, 10);
  assert_false(c.verbose);
  assert_int_equal(c.timeout_ms, 10000);
  assert_int_equal(c.max_body, 65536);
  assert_int_equal(c.origin.n, 0);
  cm_config_free(&g_spec, &c);
}

static void test_config_precedence(void **state) {
  (void)state;
  clear_env();
  tcfg c;
  char err[512];
  const char *path = write_tmp("prec.json", "{\"listen\":\"10.0.0.1:1\",\"max-things\":20,"
                                            "\"timeout\":\"5m\",\"origin\":[\"https://f\"],"
                                            "\"verbose\":true}");
  /* File over defaults. */
  const char *a1[] = {"--config", path, NULL};
  assert_int_equal(load(&c, err, sizeof err, a1), CM_CFG_OK);
  assert_string_equal(c.listen, "10.0.0.1:1");
  assert_int_equal(c.max_things, 20);
  assert_int_equal(c.timeout_ms, 300000);
  assert_true(c.verbose);
  assert_int_equal(c.origin.n, 1);
  assert_string_equal(c.origin.v[0], "https://f");
  assert_int_equal(c.max_body, 65536); /* untouched: default */
  cm_config_free(&g_spec, &c);

  /* Environment over file (RELAY_CONFIG names the file too). */
  setenv("RELAY_CONFIG", path, 1);
  setenv("RELAY_LISTEN", "10.0.0.2:2", 1);
  setenv("RELAY_ORIGIN", "https://e1, https://e2", 1);
  const char *a2[] = {NULL};
  assert_int_equal(load(&c, err, sizeof err, a2), CM_CFG_OK);
  assert_string_equal(c.listen, "10.0.0.2:2");
  assert_int_equal(c.max_things, 20);
  assert_int_equal(c.origin.n, 2);
  assert_string_equal(c.origin.v[0], "https://e1");
  assert_string_equal(c.origin.v[1], "https://e2");
  cm_config_free(&g_spec, &c);

  /* Flags over environment; a repeated list flag accumulates and replaces. */
  const char *a3[] = {"--listen",   "10.0.0.3:3", "--max-things=30", "--verbose=false", "--origin",
                      "https://f1", "--origin",   "https://f2",      "--max_body",      "1MiB",
                      NULL};
  assert_int_equal(load(&c, err, sizeof err, a3), CM_CFG_OK);
  assert_string_equal(c.listen, "10.0.0.3:3");
  assert_int_equal(c.max_things, 30);
  assert_false(c.verbose);
  assert_int_equal(c.max_body, 1 << 20);
  assert_int_equal(c.origin.n, 2);
  assert_string_equal(c.origin.v[0], "https://f1");
  assert_string_equal(c.origin.v[1], "https://f2");
  cm_config_free(&g_spec, &c);

  /* --config on the command line beats RELAY_CONFIG. */
  const char *other = write_tmp("other.json", "{\"max-things\": 42}");
  char other_path[512];
  snprintf(other_path, sizeof other_path, "%s", other);
  const char *a4[] = {"--config=", NULL};
  char flag[600];
  snprintf(flag, sizeof flag, "--config=%s", other_path);
  a4[0] = flag;
  assert_int_equal(load(&c, err, sizeof err, a4), CM_CFG_OK);
  assert_int_equal(c.max_things, 42);
  cm_config_free(&g_spec, &c);
  clear_env();
}

static void expect_error(const char **argv, const char *want) {
  tcfg c;
  char err[512];
  assert_int_equal(load(&c, err, sizeof err, argv), CM_CFG_ERROR);
  assert_string_equal(err, want);
  cm_config_free(&g_spec, &c);
}

static void test_config_errors(void **state) {
  (void)state;
  clear_env();
  const char *a1[] = {"--bogus", NULL};
  expect_error(a1, "unknown flag --bogus");
  const char *a2[] = {"--max-things=x", NULL};
  expect_error(a2, "flag --max-things: max-things must be an integer, got \"x\"");
  const char *a3[] = {"--max-things", "1000", NULL};
  expect_error(a3, "flag --max-things: max-things = 1000 is out of range [1, 100]");
  const char *a4[] = {"--timeout", "50ms", NULL};
  expect_error(a4, "flag --timeout: timeout = 50ms is out of range [100, 600000] ms");
  const char *a5[] = {"--timeout", "soon", NULL};
  expect_error(a5, "flag --timeout: timeout must be a duration (e.g. 30s, 250ms, 2m), got "
                   "\"soon\"");
  const char *a6[] = {"--max-body", "lots", NULL};
  expect_error(a6, "flag --max-body: max-body must be a size (e.g. 64KiB, 1MiB), got \"lots\"");
  const char *a7[] = {"--verbose=maybe", NULL};
  expect_error(a7, "flag --verbose: verbose must be true or false, got \"maybe\"");
  const char *a8[] = {"--listen", NULL};
  expect_error(a8, "flag --listen needs a value");
  const char *a9[] = {"stray", NULL};
  expect_error(a9, "unexpected argument \"stray\"");
  const char *a10[] = {"--max-body", "nan", NULL};
  expect_error(a10, "flag --max-body: max-body must be a size (e.g. 64KiB, 1MiB), got \"nan\"");

  setenv("RELAY_TIMEOUT", "abc", 1);
  const char *none[] = {NULL};
  expect_error(none, "environment RELAY_TIMEOUT: timeout must be a duration (e.g. 30s, 250ms, "
                     "2m), got \"abc\"");
  setenv("RELAY_TIMEOUT", "2h", 1);
  expect_error(none, "environment RELAY_TIMEOUT: timeout = 2h is out of range [100, 600000] ms");
  clear_env();

  char want[1024], flag[600];
  const char *p = write_tmp("unknown.json", "{\"nope\": 1}");
  snprintf(flag, sizeof flag, "--config=%s", p);
  snprintf(want, sizeof want, "config file %s: unknown setting \"nope\"", p);
  const char *a11[] = {flag, NULL};
  expect_error(a11, want);
  p = write_tmp("range.json", "{\"max-things\": 0}");
  snprintf(flag, sizeof flag, "--config=%s", p);
  snprintf(want, sizeof want, "config file %s: max-things = 0 is out of range [1, 100]", p);
  expect_error(a11, want);
  p = write_tmp("type.json", "{\"listen\": [1]}");
  snprintf(flag, sizeof flag, "--config=%s", p);
  snprintf(want, sizeof want, "config file %s: listen has the wrong type", p);
  expect_error(a11, want);
  p = write_tmp("syntax.json", "{\"listen\": ");
  snprintf(flag, sizeof flag, "--config=%s", p);
  tcfg c;
  char err[512];
  assert_int_equal(load(&c, err, sizeof err, a11), CM_CFG_ERROR);
  snprintf(want, sizeof want, "config file %s: ", p);
  assert_memory_equal(err, want, strlen(want));
  cm_config_free(&g_spec, &c);
}

/* What --help prints for spec (heap; the caller frees it). */
static char *help_text(const cm_cfg_spec *spec) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  cm_config_print_help(spec, f);
  fclose(f);
  return text;
}

static void test_config_help_and_positional(void **state) {
  (void)state;
  clear_env();
  tcfg c;
  char err[512];
  const char *a1[] = {"--max-things=x", "--help", NULL};
  assert_int_equal(load(&c, err, sizeof err, a1), CM_CFG_HELP);
  cm_config_free(&g_spec, &c);
  cm_strlist pos = {0};
  const char *a2[] = {"one", "--verbose", "two", NULL};
  memset(&c, 0, sizeof c);
  assert_int_equal(cm_config_load(&g_spec, &c, 3, (char **)a2, &pos, err, sizeof err), CM_CFG_OK);
  assert_true(c.verbose);
  assert_int_equal(pos.n, 2);
  assert_string_equal(pos.v[0], "one");
  assert_string_equal(pos.v[1], "two");
  cm_strlist_free(&pos);
  cm_config_free(&g_spec, &c);
  /* --help text comes from the same table. */
  char *text = help_text(&g_spec);
  assert_non_null(strstr(text, "Usage: test [options]"));
  assert_non_null(strstr(text, "--max-things N"));
  assert_non_null(strstr(text, "RELAY_MAX_THINGS"));
  free(text);
}

/* A spec with its own environment prefix (the client commands' SWSRS_):
 * its variables, its file variable and its --help use that prefix, and
 * RELAY_ variables do not reach it. */
static void test_config_env_prefix(void **state) {
  (void)state;
  clear_env();
  static const cm_cfg_spec spec = {"test [options]", "A test program.", g_opts,
                                   CM_ARRAY_LEN(g_opts), "SWSRS_"};
  const char *path = write_tmp("swsrs.json", "{\"max-things\": 7}");
  setenv("SWSRS_CONFIG", path, 1);
  setenv("SWSRS_LISTEN", "10.0.0.9:9", 1);
  setenv("RELAY_MAX_BODY", "1MiB", 1);
  tcfg c;
  memset(&c, 0, sizeof c);
  char err[512];
  const char *argv[] = {NULL};
  assert_int_equal(cm_config_load(&spec, &c, 0, (char **)argv, NULL, err, sizeof err), CM_CFG_OK);
  assert_string_equal(c.listen, "10.0.0.9:9");
  assert_int_equal(c.max_things, 7);
  assert_int_equal(c.max_body, 65536);
  cm_config_free(&spec, &c);
  char *text = help_text(&spec);
  assert_non_null(strstr(text, "SWSRS_MAX_THINGS"));
  assert_non_null(strstr(text, "SWSRS_CONFIG"));
  assert_null(strstr(text, "RELAY_"));
  free(text);
  unsetenv("SWSRS_CONFIG");
  unsetenv("SWSRS_LISTEN");
  clear_env();
}

/* The sans-I/O entry point: JSON from a buffer (only len bytes of it),
 * named in messages, with --config ignored; the file path reads at most
 * CM_CFG_FILE_MAX bytes and names a missing file plainly. */
static void test_config_text(void **state) {
  (void)state;
  clear_env();
  tcfg c;
  char err[512];
  const char *json = "{\"max-things\": 20, \"origin\": [\"https://a\"]}trailing garbage";
  size_t jlen = strchr(json, '}') - json + 1;
  const char *a1[] = {"--config", "/nonexistent/relay.json", "--verbose"};
  memset(&c, 0, sizeof c);
  assert_int_equal(cm_config_load_text(&g_spec, &c, json, jlen, "test text", 3, (char **)a1, NULL,
                                       err, sizeof err),
                   CM_CFG_OK);
  assert_int_equal(c.max_things, 20);
  assert_true(c.verbose);
  assert_int_equal(c.origin.n, 1);
  assert_string_equal(c.listen, "127.0.0.1:8443");
  cm_config_free(&g_spec, &c);
  memset(&c, 0, sizeof c);
  assert_int_equal(cm_config_load_text(&g_spec, &c, "{\"max-things\": 0}", 17, "test text", 0, NULL,
                                       NULL, err, sizeof err),
                   CM_CFG_ERROR);
  assert_string_equal(err, "test text: max-things = 0 is out of range [1, 100]");
  cm_config_free(&g_spec, &c);
  memset(&c, 0, sizeof c);
  assert_int_equal(cm_config_load_text(&g_spec, &c, "[]", 2, "t", 0, NULL, NULL, err, sizeof err),
                   CM_CFG_ERROR);
  assert_string_equal(err, "t: top level must be an object");
  cm_config_free(&g_spec, &c);

  const char *missing[] = {"--config=/nonexistent/relay.json", NULL};
  expect_error(missing, "config file /nonexistent/relay.json: No such file or directory");
  /* One byte over the cap: refused before parsing. */
  char path[512];
  snprintf(path, sizeof path, "%s/big.json", g_tmpdir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputc('{', f);
  for (int i = 0; i < CM_CFG_FILE_MAX - 1; i++)
    fputc(' ', f);
  fputc('}', f);
  fclose(f);
  char flag[600], want[700];
  snprintf(flag, sizeof flag, "--config=%s", path);
  snprintf(want, sizeof want, "config file %s: larger than %d bytes", path, CM_CFG_FILE_MAX);
  const char *big[] = {flag, NULL};
  expect_error(big, want);
  /* At the cap it loads. */
  assert_int_equal(truncate(path, CM_CFG_FILE_MAX), 0);
  assert_int_equal(load(&c, err, sizeof err, big), CM_CFG_ERROR); /* no closing brace now */
  assert_null(strstr(err, "larger than"));
  cm_config_free(&g_spec, &c);
}

static void test_parse_duration_size(void **state) {
  (void)state;
  static const struct {
    const char *s;
    long long v;
  } dur[] = {{"250ms", 250}, {"30s", 30000}, {"5m", 300000}, {"2h", 7200000}, {"1d", 86400000},
             {"7", 7000},    {"1.5s", 1500}, {"0", 0},       {"10 s", 10000}};
  for (size_t i = 0; i < CM_ARRAY_LEN(dur); i++) {
    long long v = -1;
    assert_int_equal(cm_parse_duration_ms(dur[i].s, &v), 0);
    assert_int_equal(v, dur[i].v);
  }
  static const char *bad_dur[] = {"", "abc", "-1s", "5x", "s", "nan", "1e400", "12sm"};
  for (size_t i = 0; i < CM_ARRAY_LEN(bad_dur); i++) {
    long long v = 0;
    assert_int_not_equal(cm_parse_duration_ms(bad_dur[i], &v), 0);
  }
  long long v = 0;
  assert_int_not_equal(cm_parse_duration_ms("inf", &v), 0);
  assert_int_not_equal(cm_parse_duration_ms("99999999999999999h", &v), 0);

  static const struct {
    const char *s;
    long long v;
  } sz[] = {{"64KiB", 65536}, {"1MiB", 1048576}, {"1G", 1073741824}, {"100", 100},
            {"1kb", 1000},    {"2k", 2048},      {"1 KiB", 1024},    {"3b", 3}};
  for (size_t i = 0; i < CM_ARRAY_LEN(sz); i++) {
    v = -1;
    assert_int_equal(cm_parse_size(sz[i].s, &v), 0);
    assert_int_equal(v, sz[i].v);
  }
  static const char *bad_sz[] = {"", "-1", "1x", "KiB", "nan", "inf", "1e30"};
  for (size_t i = 0; i < CM_ARRAY_LEN(bad_sz); i++)
    assert_int_not_equal(cm_parse_size(bad_sz[i], &v), 0);
}

static void test_parse_hostport(void **state) {
  (void)state;
  char host[64];
  int port;
  assert_int_equal(cm_parse_hostport("127.0.0.1:8443", NULL, host, sizeof host, &port), 0);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 8443);
  assert_int_equal(cm_parse_hostport("[::1]:0", NULL, host, sizeof host, &port), 0);
  assert_string_equal(host, "::1");
  assert_int_equal(port, 0);
  assert_int_equal(cm_parse_hostport(":80", "0.0.0.0", host, sizeof host, &port), 0);
  assert_string_equal(host, "0.0.0.0");
  assert_int_not_equal(cm_parse_hostport(":80", NULL, host, sizeof host, &port), 0);
  assert_int_not_equal(cm_parse_hostport("::1:80", NULL, host, sizeof host, &port), 0);
  assert_int_not_equal(cm_parse_hostport("1.2.3.4:70000", NULL, host, sizeof host, &port), 0);
  assert_int_not_equal(cm_parse_hostport("1.2.3.4:", NULL, host, sizeof host, &port), 0);
  assert_int_not_equal(cm_parse_hostport("1.2.3.4", NULL, host, sizeof host, &port), 0);
  assert_true(cm_host_is_loopback("127.0.0.1"));
  assert_true(cm_host_is_loopback("127.1.2.3"));
  assert_true(cm_host_is_loopback("::1"));
  assert_false(cm_host_is_loopback("10.0.0.1"));
  assert_false(cm_host_is_loopback("example.com"));
}

/* ---- files ------------------------------------------------------------------- */

static void test_write_file_atomic(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/secret.key", g_tmpdir);
  unlink(path);
  mode_t old = umask(0);
  assert_int_equal(cm_write_file_atomic(path, "one", 3, 0600, true), 0);
  umask(old);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  char *data = NULL;
  size_t len = 0;
  assert_int_equal(cm_read_file(path, 0, &data, &len), 0);
  assert_int_equal(len, 3);
  assert_string_equal(data, "one");
  free(data);
  /* Exclusive never replaces an existing file. */
  assert_int_equal(cm_write_file_atomic(path, "two", 3, 0600, true), -EEXIST);
  assert_int_equal(cm_read_file(path, 0, &data, &len), 0);
  assert_string_equal(data, "one");
  free(data);
  /* Non-exclusive replaces, with the new mode whatever the umask. */
  old = umask(077);
  assert_int_equal(cm_write_file_atomic(path, "three", 5, 0644, false), 0);
  umask(old);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0644);
  assert_int_equal(cm_read_file(path, 0, &data, &len), 0);
  assert_string_equal(data, "three");
  free(data);
  /* No temporary files are left behind. */
  char cmd[600];
  snprintf(cmd, sizeof cmd, "test -z \"$(ls '%s' | grep '\\.tmp\\.')\"", g_tmpdir);
  assert_int_equal(system(cmd), 0);
  /* cm_read_file honours its cap. */
  assert_int_equal(cm_read_file(path, 4, &data, &len), -EFBIG);
  char deep[600];
  snprintf(deep, sizeof deep, "%s/a/b/c", g_tmpdir);
  assert_int_equal(cm_mkdir_p(deep, 0700), 0);
  assert_int_equal(stat(deep, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
}

/* ---- time ---------------------------------------------------------------------- */

static void test_time_formats(void **state) {
  (void)state;
  char buf[64];
  cm_rfc3339(0, buf, sizeof buf);
  assert_string_equal(buf, "1970-01-01T00:00:00Z");
  cm_rfc3339(951782400, buf, sizeof buf);
  assert_string_equal(buf, "2000-02-29T00:00:00Z");
  cm_rfc3339(1795000000, buf, sizeof buf);
  assert_string_equal(buf, "2026-11-18T11:06:40Z");
  cm_http_date(784111777, buf, sizeof buf);
  assert_string_equal(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
  cm_http_date(0, buf, sizeof buf);
  assert_string_equal(buf, "Thu, 01 Jan 1970 00:00:00 GMT");
  /* Exactly the documented minimum sizes suffice. */
  char r21[21], h30[30];
  cm_rfc3339(1795000000, r21, sizeof r21);
  assert_string_equal(r21, "2026-11-18T11:06:40Z");
  cm_http_date(1795000000, h30, sizeof h30);
  assert_string_equal(h30, "Wed, 18 Nov 2026 11:06:40 GMT");
  uint64_t m1 = cm_now_mono_ms();
  int64_t w = cm_now_wall_ms();
  assert_true(w > 1600000000000LL);
  assert_true(cm_now_mono_ms() >= m1);
}

/* ---- buffers ------------------------------------------------------------------- */

static void test_buf_cap(void **state) {
  (void)state;
  cm_buf b;
  cm_buf_init(&b, 10);
  assert_int_equal(cm_buf_append(&b, "hello", 5), 0);
  assert_int_equal(cm_buf_append(&b, "world!", 6), -ENOBUFS);
  assert_int_equal(cm_buf_size(&b), 5);
  cm_buf_consume(&b, 3);
  assert_int_equal(cm_buf_append(&b, "world!", 6), 0);
  assert_memory_equal(cm_buf_head(&b), "loworld!", 8);
  assert_int_equal(cm_buf_printf(&b, "%s", "xyz"), -ENOBUFS);
  cm_buf_free(&b);
  cm_buf_init(&b, 0);
  char big[1000];
  memset(big, 'a', sizeof big);
  assert_int_equal(cm_buf_printf(&b, "%.*s", (int)sizeof big, big), 0);
  assert_int_equal(cm_buf_size(&b), sizeof big);
  cm_buf_free(&b);
}

/* ---- logging -------------------------------------------------------------------- */

/* Logs through a pipe and returns the parsed line (caller decrefs). */
static json_t *capture_line(void (*emit)(void)) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  cm_log_set_fd(fds[1]);
  emit();
  cm_log_set_fd(-1);
  close(fds[1]);
  static char text[16384];
  size_t n = 0;
  ssize_t r;
  while ((r = read(fds[0], text + n, sizeof text - 1 - n)) > 0)
    n += (size_t)r;
  close(fds[0]);
  text[n] = '\0';
  if (n == 0) return NULL;
  /* Exactly one line, newline-terminated. */
  assert_int_equal(text[n - 1], '\n');
  assert_ptr_equal(strchr(text, '\n'), text + n - 1);
  json_error_t je;
  json_t *j = json_loads(text, 0, &je);
  if (!j) fail_msg("log line is not JSON (%s): %s", je.text, text);
  assert_null(strstr(text, "s3cr3t"));
  return j;
}

static void emit_basic(void) {
  cm_log(CM_LOG_INFO, "test", "hello \"quoted\"\n", CM_S("k", "v\x01\\"), CM_I("n", -5),
         CM_B("b", true), CM_URL("url", "/relay/x?token=s3cr3t&a=1"));
}

static void test_log_json(void **state) {
  (void)state;
  cm_log_set_level(CM_LOG_INFO);
  json_t *j = capture_line(emit_basic);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
  assert_string_equal(json_string_value(json_object_get(j, "component")), "test");
  assert_string_equal(json_string_value(json_object_get(j, "msg")), "hello \"quoted\"\n");
  assert_string_equal(json_string_value(json_object_get(j, "k")), "v\x01\\");
  assert_int_equal(json_integer_value(json_object_get(j, "n")), -5);
  assert_true(json_is_true(json_object_get(j, "b")));
  assert_string_equal(json_string_value(json_object_get(j, "url")), "/relay/x?token=REDACTED&a=1");
  const char *t = json_string_value(json_object_get(j, "time"));
  assert_non_null(t);
  assert_int_equal(strlen(t), 24); /* 2026-11-21T10:00:00.123Z */
  assert_int_equal(t[10], 'T');
  assert_int_equal(t[23], 'Z');
  json_decref(j);

  /* Below the level: nothing is written. */
  cm_log_set_level(CM_LOG_WARN);
  assert_null(capture_line(emit_basic));
  cm_log_set_level(CM_LOG_INFO);
  cm_log_level lv;
  assert_int_equal(cm_log_level_parse("debug", &lv), 0);
  assert_int_equal(lv, CM_LOG_DEBUG);
  assert_int_equal(cm_log_level_parse("loud", &lv), -1);
}

static void emit_long(void) {
  static char big[10000];
  memset(big, 'x', sizeof big - 1);
  for (size_t i = 0; i < sizeof big - 1; i += 97)
    big[i] = '"'; /* escapes too */
  cm_log(CM_LOG_INFO, "test", "long", CM_S("a", big), CM_S("b", big), CM_I("after", 1));
}

static void emit_binary(void) {
  /* Bytes a client controls (request targets, headers) need not be UTF-8. */
  cm_log(CM_LOG_WARN, "test", "binary", CM_S("raw", "ok\xff\xfe\xc3("),
         CM_S("utf8", "caf\xc3\xa9 \xe2\x82\xac"), CM_URL("url", "/x\x80?token=s3cr3t"));
}

static void test_log_truncation_and_bytes(void **state) {
  (void)state;
  cm_log_set_level(CM_LOG_INFO);
  json_t *j = capture_line(emit_long);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "msg")), "long");
  json_decref(j);
  j = capture_line(emit_binary);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "utf8")), "caf\xc3\xa9 \xe2\x82\xac");
  const char *raw = json_string_value(json_object_get(j, "raw"));
  assert_non_null(raw);
  assert_memory_equal(raw, "ok", 2);
  json_decref(j);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_b64url_round_trip),
      cmocka_unit_test(test_b64url_vectors),
      cmocka_unit_test(test_b64url_invalid),
      cmocka_unit_test(test_random_token),
      cmocka_unit_test(test_random_below_and_ct),
      cmocka_unit_test(test_redact_url),
      cmocka_unit_test(test_config_defaults),
      cmocka_unit_test(test_config_precedence),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_config_help_and_positional),
      cmocka_unit_test(test_config_env_prefix),
      cmocka_unit_test(test_config_text),
      cmocka_unit_test(test_parse_duration_size),
      cmocka_unit_test(test_parse_hostport),
      cmocka_unit_test(test_write_file_atomic),
      cmocka_unit_test(test_time_formats),
      cmocka_unit_test(test_buf_cap),
      cmocka_unit_test(test_log_json),
      cmocka_unit_test(test_log_truncation_and_bytes),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
