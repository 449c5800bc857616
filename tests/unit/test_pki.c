/*
 * test_pki.c — the enrolment PKI (common/pki.c), the relay's key and
 * development certificate (relay/enrol.c) and the controller CA
 * (controller-stub/ca.c: init-ca, issue-cert, sign-csr).  Certificates are checked with OpenSSL's
 * own verifier and the openssl command line, not only with our helpers. Every test works in a fresh
 * mkdtemp directory that teardown removes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/common.h"
#include "controller-stub/controller.h"
#include "relay/relay.h"

typedef struct fixture {
  char dir[PATH_MAX];
} fixture;

/* ---- fixture and file helpers ---------------------------------------------- */

/* Not strndup: a memory BIO's data is not NUL-terminated, and ASan's
 * strndup interceptor reads one byte past n. */
static char *mem_strdup(const char *p, size_t n) {
  char *s = malloc(n + 1);
  assert_non_null(s);
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  fixture *fx = calloc(1, sizeof *fx);
  if (!fx) return -1;
  snprintf(fx->dir, sizeof fx->dir, "/tmp/relay-test-pki-XXXXXX");
  if (!mkdtemp(fx->dir)) {
    free(fx);
    return -1;
  }
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fixture *fx = *state;
  int rc = nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(fx);
  return rc;
}

static const char *path_in(const fixture *fx, const char *name, char *buf) {
  snprintf(buf, PATH_MAX, "%s/%s", fx->dir, name);
  return buf;
}

static char *slurp(const char *path, size_t *len) {
  char *data = NULL;
  size_t n = 0;
  assert_int_equal(cm_read_file(path, 1 << 20, &data, &n), 0);
  if (len) *len = n;
  return data;
}

static void write_raw(const char *path, const char *data, unsigned mode) {
  assert_int_equal(cm_write_file_atomic(path, data, strlen(data), mode, false), 0);
}

static void assert_file_equals(const char *path, const char *want, size_t want_len) {
  size_t len = 0;
  char *got = slurp(path, &len);
  assert_int_equal(len, want_len);
  assert_memory_equal(got, want, want_len);
  free(got);
}

static unsigned file_mode(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return st.st_mode & 07777;
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

/* ---- OpenSSL helpers ----------------------------------------------------------- */

static X509 *cert_parse(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(x);
  return x;
}

static X509 *cert_load(const char *path) {
  char *pem = slurp(path, NULL);
  X509 *x = cert_parse(pem);
  free(pem);
  return x;
}

static EVP_PKEY *key_load(const char *path) {
  void *k = NULL;
  char err[512];
  assert_int_equal(cm_pki_key_load(path, &k, err, sizeof err), 0);
  return k;
}

static EVP_PKEY *new_p256(void) {
  EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  assert_non_null(k);
  return k;
}

/* X509_verify_cert against a store holding only ca, for an SSL purpose. */
static int verify_against(X509 *leaf, X509 *ca, int purpose) {
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  assert_int_equal(X509_STORE_add_cert(store, ca), 1);
  assert_int_equal(X509_STORE_CTX_init(ctx, store, leaf, NULL), 1);
  X509_STORE_CTX_set_purpose(ctx, purpose);
  int ok = X509_verify_cert(ctx);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  ERR_clear_error();
  return ok;
}

static bool has_san(X509 *x, int type, const void *data, size_t len) {
  GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  bool found = false;
  for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
    int t = 0;
    const ASN1_STRING *s = GENERAL_NAME_get0_value(gn, &t);
    if (t == type && (size_t)ASN1_STRING_length(s) == len &&
        memcmp(ASN1_STRING_get0_data(s), data, len) == 0)
      found = true;
  }
  GENERAL_NAMES_free(gens);
  return found;
}

static bool has_dns(X509 *x, const char *name) { return has_san(x, GEN_DNS, name, strlen(name)); }

static void assert_cn(X509 *x, const char *want) {
  char cn[256] = "";
  X509_NAME *nm = X509_get_subject_name(x);
  assert_int_equal(X509_NAME_entry_count(nm), 1); /* CN only */
  assert_true(X509_NAME_get_text_by_NID(nm, NID_commonName, cn, sizeof cn) > 0);
  assert_string_equal(cn, want);
}

static char *csr_pem_of(X509_REQ *req) {
  BIO *b = BIO_new(BIO_s_mem());
  assert_int_equal(PEM_write_bio_X509_REQ(b, req), 1);
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  char *s = mem_strdup(p, (size_t)n);
  BIO_free(b);
  return s;
}

/* PEM text for arbitrary (possibly corrupt) DER, in 64-column lines. */
static char *der_to_csr_pem(const unsigned char *der, int len) {
  size_t b64cap = (size_t)(len + 2) / 3 * 4 + 1;
  unsigned char *b64 = malloc(b64cap);
  int n = EVP_EncodeBlock(b64, der, len);
  size_t cap = (size_t)n + (size_t)n / 64 + 128;
  char *out = malloc(cap), *o = out;
  o += sprintf(o, "-----BEGIN CERTIFICATE REQUEST-----\n");
  for (int i = 0; i < n; i += 64)
    o += sprintf(o, "%.*s\n", CM_MIN(64, n - i), b64 + i);
  sprintf(o, "-----END CERTIFICATE REQUEST-----\n");
  free(b64);
  return out;
}

static unsigned char *csr_der(const char *pem, int *len) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(req);
  unsigned char *der = NULL;
  *len = i2d_X509_REQ(req, &der);
  assert_true(*len > 0);
  X509_REQ_free(req);
  return der;
}

/* A CA in fx->dir/ca; returns the directory. */
static const char *make_ca(const fixture *fx, char *dir) {
  char err[512] = "";
  path_in(fx, "ca", dir);
  int rc = ctl_init_ca(dir, "Test Relay CA", "controller-1", 30, err, sizeof err);
  if (rc != 0) fail_msg("ctl_init_ca: %s", err);
  return dir;
}

static const cm_strlist *one_host(const char *h) {
  static char *v[1];
  static cm_strlist l;
  v[0] = (char *)h;
  l.v = v;
  l.n = 1;
  return &l;
}

/* ---- keys ------------------------------------------------------------------------ */

static void test_key_create_mode_and_reload(void **state) {
  fixture *fx = *state;
  char path[PATH_MAX], err[512] = "";
  void *k1 = NULL, *k2 = NULL;
  bool created = false;
  path_in(fx, "tunnel.key", path);
  assert_int_equal(cm_pki_key_load_or_create(path, &k1, &created, err, sizeof err), 0);
  assert_true(created);
  assert_int_equal(file_mode(path), 0600);
  assert_true(EVP_PKEY_is_a(k1, "EC"));
  char group[64];
  assert_int_equal(EVP_PKEY_get_group_name(k1, group, sizeof group, NULL), 1);
  assert_string_equal(group, "prime256v1");
  size_t len1 = 0;
  char *bytes1 = slurp(path, &len1);

  assert_int_equal(cm_pki_key_load_or_create(path, &k2, &created, err, sizeof err), 0);
  assert_false(created);
  assert_int_equal(EVP_PKEY_eq(k1, k2), 1);
  assert_file_equals(path, bytes1, len1);

  /* The PEM export is the same key. */
  char *pem = NULL;
  assert_int_equal(cm_pki_key_pem(k1, &pem, err, sizeof err), 0);
  BIO *b = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *k3 = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(k3);
  assert_int_equal(EVP_PKEY_eq(k1, k3), 1);
  OPENSSL_cleanse(pem, strlen(pem));
  free(pem);
  free(bytes1);
  EVP_PKEY_free(k3);
  cm_pki_key_free(k1);
  cm_pki_key_free(k2);
}

static void expect_key_refused(const char *path, const char *content) {
  char err[512] = "";
  void *k = (void *)1;
  bool created = true;
  int rc = cm_pki_key_load_or_create(path, &k, &created, err, sizeof err);
  assert_true(rc < 0);
  assert_null(k);
  assert_false(created);
  assert_non_null(strstr(err, path));
  assert_null(strstr(err, "not really")); /* file contents never echoed */
  assert_file_equals(path, content, strlen(content));
}

static void test_key_garbage_refused_untouched(void **state) {
  fixture *fx = *state;
  char path[PATH_MAX];
  path_in(fx, "bad.key", path);
  const char *garbage = "-----BEGIN PRIVATE KEY-----\nnot really a key at all\n"
                        "-----END PRIVATE KEY-----\n";
  write_raw(path, garbage, 0600);
  expect_key_refused(path, garbage);

  /* An empty file (say, truncated by hand) is refused the same way. */
  write_raw(path, "", 0600);
  expect_key_refused(path, "");

  /* An encrypted key fails without prompting for a passphrase. */
  EVP_PKEY *k = new_p256();
  BIO *b = BIO_new(BIO_s_mem());
  assert_int_equal(
      PEM_write_bio_PrivateKey(b, k, EVP_aes_256_cbc(), (const unsigned char *)"pw", 2, NULL, NULL),
      1);
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  char *enc = mem_strdup(p, (size_t)n);
  BIO_free(b);
  write_raw(path, enc, 0600);
  expect_key_refused(path, enc);
  free(enc);
  EVP_PKEY_free(k);
}

static void test_key_never_overwritten(void **state) {
  fixture *fx = *state;
  char path[PATH_MAX], err[512] = "";
  path_in(fx, "foreign.key", path);
  /* A valid key someone else put there, with its own mode: kept as is. */
  EVP_PKEY *foreign = new_p256();
  BIO *b = BIO_new(BIO_s_mem());
  assert_int_equal(PEM_write_bio_PrivateKey(b, foreign, NULL, NULL, 0, NULL, NULL), 1);
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  char *pem = mem_strdup(p, (size_t)n);
  BIO_free(b);
  write_raw(path, pem, 0640);

  void *k = NULL;
  bool created = true;
  assert_int_equal(cm_pki_key_load_or_create(path, &k, &created, err, sizeof err), 0);
  assert_false(created);
  assert_int_equal(EVP_PKEY_eq(k, foreign), 1);
  assert_file_equals(path, pem, strlen(pem));
  assert_int_equal(file_mode(path), 0640);
  /* The primitive underneath refuses to replace a file. */
  assert_int_equal(cm_write_file_atomic(path, "x", 1, 0600, true), -EEXIST);
  assert_file_equals(path, pem, strlen(pem));
  free(pem);
  cm_pki_key_free(k);
  EVP_PKEY_free(foreign);
}

/* ---- self-signed certificates --------------------------------------------------- */

static void test_self_signed_sans(void **state) {
  (void)state;
  char err[512] = "";
  EVP_PKEY *k = new_p256();
  const char *v[] = {"localhost", "127.0.0.1", "::1", "relay.example.org"};
  cm_strlist sans = {(char **)v, 4};
  cm_pki_issue opt = {.cn = "dev", .sans = &sans, .usage = CM_PKI_SERVER, .days = 30};
  char *pem = NULL;
  assert_int_equal(cm_pki_self_signed(k, &opt, &pem, err, sizeof err), 0);
  X509 *x = cert_parse(pem);

  static const unsigned char v4[] = {127, 0, 0, 1};
  static const unsigned char v6[16] = {[15] = 1};
  assert_true(has_san(x, GEN_IPADD, v4, sizeof v4));
  assert_true(has_san(x, GEN_IPADD, v6, sizeof v6));
  assert_true(has_dns(x, "localhost"));
  assert_true(has_dns(x, "relay.example.org"));
  assert_false(has_dns(x, "127.0.0.1")); /* an IP never becomes a DNS name */
  assert_cn(x, "dev");
  assert_int_equal(X509_check_ca(x), 0);
  assert_true(cm_pki_cert_has_eku(x, CM_PKI_SERVER));
  assert_false(cm_pki_cert_has_eku(x, CM_PKI_CLIENT));
  assert_int_equal(X509_verify(x, k), 1);
  assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
  assert_non_null(X509_get0_subject_key_id(x));
  assert_non_null(X509_get0_authority_key_id(x));
  assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);

  /* Serial: positive and wide. */
  BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  assert_false(BN_is_negative(serial));
  assert_true(BN_num_bits(serial) > 64);
  BN_free(serial);

  /* Validity: backdated about five minutes, 30 days ahead. */
  time_t now = time(NULL), t = now - 240;
  assert_true(X509_cmp_time(X509_get0_notBefore(x), &t) < 0);
  t = now - 360;
  assert_true(X509_cmp_time(X509_get0_notBefore(x), &t) > 0);
  t = now + 29 * 86400;
  assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) > 0);
  t = now + 31 * 86400;
  assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) < 0);

  /* Refusals: a bad host name, no usage, a CA that is also a server. */
  const char *bad[] = {"bad host!"};
  cm_strlist badl = {(char **)bad, 1};
  char *pem2 = NULL;
  opt.sans = &badl;
  assert_true(cm_pki_self_signed(k, &opt, &pem2, err, sizeof err) < 0);
  assert_null(pem2);
  opt.sans = NULL;
  opt.usage = 0;
  assert_true(cm_pki_self_signed(k, &opt, &pem2, err, sizeof err) < 0);
  opt.usage = CM_PKI_CA | CM_PKI_SERVER;
  assert_true(cm_pki_self_signed(k, &opt, &pem2, err, sizeof err) < 0);
  opt.usage = CM_PKI_SERVER;
  opt.days = 0;
  assert_true(cm_pki_self_signed(k, &opt, &pem2, err, sizeof err) < 0);
  assert_null(pem2);

  X509_free(x);
  free(pem);
  EVP_PKEY_free(k);
}

/* ---- controller CA and CSR signing -------------------------------------------------- */

static void test_csr_roundtrip(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], keypath[PATH_MAX], relaydir[PATH_MAX], err[512] = "";
  make_ca(fx, cadir);
  path_in(fx, "relay/state/tunnel.key", keypath);
  path_in(fx, "relay/state", relaydir);

  char *csr = NULL;
  bool created = false;
  assert_int_equal(rly_gen_csr(keypath, "relay-7", &csr, &created, err, sizeof err), 0);
  assert_true(created);
  assert_int_equal(file_mode(relaydir), 0700);
  assert_int_equal(file_mode(keypath), 0600);

  const char *v[] = {"relay.example.org", "10.1.2.3"};
  cm_strlist hosts = {(char **)v, 2};
  char *cert = NULL;
  assert_int_equal(ctl_sign_csr(cadir, csr, &hosts, 10, &cert, err, sizeof err), 0);
  X509 *x = cert_parse(cert);
  char capath[PATH_MAX];
  snprintf(capath, sizeof capath, "%s/ca.crt", cadir);
  X509 *ca = cert_load(capath);

  assert_int_equal(verify_against(x, ca, X509_PURPOSE_SSL_SERVER), 1);
  assert_int_equal(verify_against(x, ca, X509_PURPOSE_SSL_CLIENT), 0);
  assert_true(cm_pki_cert_has_uri(x, CM_PKI_URI_RELAY));
  assert_false(cm_pki_cert_has_uri(x, CM_PKI_URI_CONTROLLER));
  assert_true(cm_pki_cert_has_eku(x, CM_PKI_SERVER));
  assert_false(cm_pki_cert_has_eku(x, CM_PKI_CLIENT));
  assert_cn(x, "relay-7");
  assert_true(has_dns(x, "relay.example.org"));
  static const unsigned char ip[] = {10, 1, 2, 3};
  assert_true(has_san(x, GEN_IPADD, ip, sizeof ip));
  assert_int_equal(X509_check_ca(x), 0);
  assert_int_equal(X509_check_issued(ca, x), X509_V_OK);
  assert_int_equal(
      ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(x), X509_get0_subject_key_id(ca)), 0);
  assert_true(ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca)) <= 0);

  /* The certificate is for the relay's key. */
  EVP_PKEY *rk = key_load(keypath);
  assert_int_equal(X509_check_private_key(x, rk), 1);

  /* A second gen-csr reuses the key. */
  char *csr2 = NULL;
  assert_int_equal(rly_gen_csr(keypath, "relay-7", &csr2, &created, err, sizeof err), 0);
  assert_false(created);
  EVP_PKEY *rk2 = key_load(keypath);
  assert_int_equal(EVP_PKEY_eq(rk, rk2), 1);

  /* No hosts, no CA: refused. */
  cm_strlist none = {NULL, 0};
  char *c2 = NULL;
  assert_true(ctl_sign_csr(cadir, csr, &none, 10, &c2, err, sizeof err) < 0);
  char nodir[PATH_MAX];
  path_in(fx, "no-ca-here", nodir);
  assert_true(ctl_sign_csr(nodir, csr, &hosts, 10, &c2, err, sizeof err) < 0);
  assert_null(c2);

  EVP_PKEY_free(rk);
  EVP_PKEY_free(rk2);
  X509_free(x);
  X509_free(ca);
  free(cert);
  free(csr);
  free(csr2);
}

static void add_req_ext(STACK_OF(X509_EXTENSION) * exts, X509V3_CTX *ctx, int nid,
                        const char *value) {
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
  assert_non_null(e);
  assert_true(sk_X509_EXTENSION_push(exts, e) > 0);
}

/* A CSR asking for the controller identity, clientAuth, CA powers and an
 * extra subject field: none of it may reach the certificate. */
static char *evil_csr(EVP_PKEY *k) {
  X509_REQ *req = X509_REQ_new();
  X509_NAME *nm = X509_REQ_get_subject_name(req);
  assert_int_equal(X509_NAME_add_entry_by_txt(nm, "O", MBSTRING_UTF8,
                                              (const unsigned char *)"Evil Corp", -1, -1, 0),
                   1);
  assert_int_equal(
      X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_UTF8, (const unsigned char *)"evil", -1, -1, 0),
      1);
  assert_int_equal(X509_REQ_set_pubkey(req, k), 1);
  STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, NULL, NULL, req, NULL, 0);
  add_req_ext(exts, &ctx, NID_subject_alt_name, "URI:" CM_PKI_URI_CONTROLLER ",DNS:evil.example");
  add_req_ext(exts, &ctx, NID_ext_key_usage, "clientAuth");
  add_req_ext(exts, &ctx, NID_basic_constraints, "critical,CA:TRUE");
  assert_int_equal(X509_REQ_add_extensions(req, exts), 1);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  assert_true(X509_REQ_sign(req, k, EVP_sha256()) > 0);
  char *pem = csr_pem_of(req);
  X509_REQ_free(req);
  return pem;
}

static void test_csr_requests_are_not_copied(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], capath[PATH_MAX], err[512] = "";
  make_ca(fx, cadir);
  snprintf(capath, sizeof capath, "%s/ca.crt", cadir);
  EVP_PKEY *k = new_p256();
  char *csr = evil_csr(k);
  char *cert = NULL;
  int rc = ctl_sign_csr(cadir, csr, one_host("relay.example.org"), 10, &cert, err, sizeof err);
  if (rc != 0) fail_msg("ctl_sign_csr: %s", err);
  X509 *x = cert_parse(cert);
  X509 *ca = cert_load(capath);

  assert_false(cm_pki_cert_has_uri(x, CM_PKI_URI_CONTROLLER));
  assert_true(cm_pki_cert_has_uri(x, CM_PKI_URI_RELAY));
  assert_false(cm_pki_cert_has_eku(x, CM_PKI_CLIENT));
  assert_true(cm_pki_cert_has_eku(x, CM_PKI_SERVER));
  assert_false(has_dns(x, "evil.example"));
  assert_true(has_dns(x, "relay.example.org"));
  assert_int_equal(X509_check_ca(x), 0);
  assert_false(cm_pki_cert_has_eku(x, CM_PKI_CA));
  assert_cn(x, "evil"); /* CN only: the O= field is gone */
  assert_int_equal(verify_against(x, ca, X509_PURPOSE_SSL_CLIENT), 0);
  assert_int_equal(verify_against(x, ca, X509_PURPOSE_SSL_SERVER), 1);

  X509_free(x);
  X509_free(ca);
  free(cert);
  free(csr);
  EVP_PKEY_free(k);
}

static void expect_csr_refused(const char *cadir, const char *csr) {
  char err[512] = "";
  char *cert = NULL;
  int rc = ctl_sign_csr(cadir, csr, one_host("relay.example.org"), 10, &cert, err, sizeof err);
  assert_true(rc < 0);
  assert_null(cert);
  assert_true(err[0] != '\0');
}

static char *csr_for_new_key(const char *type, const char *group, size_t bits) {
  EVP_PKEY *k = group ? EVP_PKEY_Q_keygen(NULL, NULL, type, group)
                      : EVP_PKEY_Q_keygen(NULL, NULL, type, bits);
  assert_non_null(k);
  char *pem = NULL, err[512] = "";
  assert_int_equal(cm_pki_csr(k, "node-A", &pem, err, sizeof err), 0);
  EVP_PKEY_free(k);
  return pem;
}

static void test_csr_bad_signature_refused(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], err[512] = "";
  make_ca(fx, cadir);
  char *good = csr_for_new_key("EC", "P-256", 0);
  int len = 0;
  unsigned char *der = csr_der(good, &len);

  /* The signed content altered: CN node-A becomes node-B. */
  unsigned char *cn = memmem(der, (size_t)len, "node-A", 6);
  assert_non_null(cn);
  cn[5] = 'B';
  char *tampered = der_to_csr_pem(der, len);
  expect_csr_refused(cadir, tampered);
  char *cert = NULL;
  assert_int_equal(ctl_sign_csr(cadir, tampered, one_host("h"), 10, &cert, err, sizeof err),
                   -EBADMSG);
  assert_non_null(strstr(err, "signature"));
  cn[5] = 'A';

  /* The signature itself altered (its last byte). */
  der[len - 1] ^= 0x01;
  char *badsig = der_to_csr_pem(der, len);
  expect_csr_refused(cadir, badsig);

  /* Not a CSR at all. */
  expect_csr_refused(cadir, "hello");

  /* Keys outside the policy: RSA-1024 and P-384.  RSA-2048 is fine. */
  char *rsa1024 = csr_for_new_key("RSA", NULL, 1024);
  expect_csr_refused(cadir, rsa1024);
  char *p384 = csr_for_new_key("EC", "P-384", 0);
  expect_csr_refused(cadir, p384);
  char *rsa2048 = csr_for_new_key("RSA", NULL, 2048);
  assert_int_equal(ctl_sign_csr(cadir, rsa2048, one_host("h"), 10, &cert, err, sizeof err), 0);
  free(cert);

  /* The untouched original still signs. */
  cert = NULL;
  assert_int_equal(ctl_sign_csr(cadir, good, one_host("h"), 10, &cert, err, sizeof err), 0);
  free(cert);

  free(rsa1024);
  free(p384);
  free(rsa2048);
  free(tampered);
  free(badsig);
  OPENSSL_free(der);
  free(good);
}

/* What a relay demands of a controller certificate (OpenSSL's verifier for
 * the purposes), and that key is its key. */
static void assert_controller_cert(X509 *x, X509 *ca, EVP_PKEY *key, const char *cn) {
  assert_int_equal(verify_against(x, ca, X509_PURPOSE_SSL_CLIENT), 1);
  assert_int_equal(verify_against(x, ca, X509_PURPOSE_SSL_SERVER), 0);
  assert_true(cm_pki_cert_has_uri(x, CM_PKI_URI_CONTROLLER));
  assert_false(cm_pki_cert_has_uri(x, CM_PKI_URI_RELAY));
  assert_true(cm_pki_cert_has_eku(x, CM_PKI_CLIENT));
  assert_false(cm_pki_cert_has_eku(x, CM_PKI_SERVER));
  assert_cn(x, cn);
  assert_int_equal(X509_check_private_key(x, key), 1);
}

static void test_controller_cert(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX];
  make_ca(fx, cadir);
  ctl_ca_paths p;
  ctl_ca_paths_for(cadir, &p);
  X509 *ca = cert_load(p.ca_cert);
  X509 *ctl = cert_load(p.ctl_cert);
  EVP_PKEY *ck = key_load(p.ctl_key);
  EVP_PKEY *cak = key_load(p.ca_key);

  assert_controller_cert(ctl, ca, ck, "controller-1");

  assert_int_equal(X509_check_ca(ca), 1);
  assert_true(cm_pki_cert_has_eku(ca, CM_PKI_CA));
  assert_int_equal(X509_get_key_usage(ca), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
  assert_int_equal(X509_verify(ca, cak), 1);
  assert_int_equal(X509_check_private_key(ca, cak), 1);
  assert_cn(ca, "Test Relay CA");

  assert_int_equal(file_mode(cadir), 0700);
  assert_int_equal(file_mode(p.ca_key), 0600);
  assert_int_equal(file_mode(p.ctl_key), 0600);
  assert_int_equal(file_mode(p.ca_cert), 0644);
  assert_int_equal(file_mode(p.ctl_cert), 0644);

  X509_free(ca);
  X509_free(ctl);
  EVP_PKEY_free(ck);
  EVP_PKEY_free(cak);
}

static void test_init_ca_reuses_files(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], err[512] = "";
  make_ca(fx, cadir);
  ctl_ca_paths p;
  ctl_ca_paths_for(cadir, &p);
  const char *files[] = {p.ca_key, p.ca_cert, p.ctl_key, p.ctl_cert};
  char *before[4];
  size_t lens[4];
  for (int i = 0; i < 4; i++)
    before[i] = slurp(files[i], &lens[i]);
  /* Other names and validity do not matter: nothing is redone. */
  assert_int_equal(ctl_init_ca(cadir, "Other CA", "controller-2", 99, err, sizeof err), 0);
  for (int i = 0; i < 4; i++) {
    assert_file_equals(files[i], before[i], lens[i]);
    free(before[i]);
  }
}

static void copy_file(const char *from, const char *to) {
  char *data = slurp(from, NULL);
  write_raw(to, data, 0644);
  free(data);
}

static void test_init_ca_refuses_orphan_cert(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], other[PATH_MAX], third[PATH_MAX], err[512] = "";
  make_ca(fx, cadir);
  ctl_ca_paths a, b;
  ctl_ca_paths_for(cadir, &a);

  /* ca.crt without ca.key: error, and no new key appears. */
  path_in(fx, "other", other);
  assert_int_equal(cm_mkdir_p(other, 0700), 0);
  ctl_ca_paths_for(other, &b);
  copy_file(a.ca_cert, b.ca_cert);
  assert_true(ctl_init_ca(other, "CA", "ctl", 30, err, sizeof err) < 0);
  assert_non_null(strstr(err, b.ca_cert));
  assert_false(exists(b.ca_key));

  /* ca.crt with somebody else's key: error, both files untouched. */
  path_in(fx, "third", third);
  assert_int_equal(ctl_init_ca(third, "CA3", "ctl3", 30, err, sizeof err), 0);
  ctl_ca_paths c;
  ctl_ca_paths_for(third, &c);
  copy_file(c.ca_key, b.ca_key);
  size_t klen = 0, clen = 0;
  char *kb = slurp(b.ca_key, &klen), *cb = slurp(b.ca_cert, &clen);
  assert_true(ctl_init_ca(other, "CA", "ctl", 30, err, sizeof err) < 0);
  assert_file_equals(b.ca_key, kb, klen);
  assert_file_equals(b.ca_cert, cb, clen);
  assert_false(exists(b.ctl_key));
  free(kb);
  free(cb);

  /* controller.crt without controller.key: error. */
  unlink(a.ctl_key);
  assert_true(ctl_init_ca(cadir, "CA", "ctl", 30, err, sizeof err) < 0);
  assert_false(exists(a.ctl_key));
}

/* ---- further controllers (issue-cert) ------------------------------------------------ */

static size_t dir_entries(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));)
    n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
  closedir(d);
  return n;
}

static void test_issue_cert(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], want[PATH_MAX + 16], err[512] = "";
  make_ca(fx, cadir);
  ctl_ca_paths p;
  ctl_ca_paths_for(cadir, &p);
  ctl_cert_paths b;
  assert_int_equal(ctl_issue_cert(cadir, "ctl-b", NULL, 30, &b, err, sizeof err), 0);
  snprintf(want, sizeof want, "%s/ctl-b.key", cadir);
  assert_string_equal(b.key, want);
  snprintf(want, sizeof want, "%s/ctl-b.crt", cadir);
  assert_string_equal(b.cert, want);
  X509 *ca = cert_load(p.ca_cert), *x = cert_load(b.cert), *first = cert_load(p.ctl_cert);
  EVP_PKEY *k = key_load(b.key), *k1 = key_load(p.ctl_key);

  assert_controller_cert(x, ca, k, "ctl-b");
  /* Its own key and certificate, not init-ca's controller's. */
  assert_int_not_equal(EVP_PKEY_eq(k, k1), 1);
  assert_int_not_equal(X509_cmp(x, first), 0);
  assert_int_equal(file_mode(b.key), 0600);
  assert_int_equal(file_mode(b.cert), 0644);

  /* Never valid beyond the CA. */
  ctl_cert_paths l;
  assert_int_equal(ctl_issue_cert(cadir, "ctl-long", NULL, 36500, &l, err, sizeof err), 0);
  X509 *lx = cert_load(l.cert);
  assert_int_equal(ASN1_TIME_compare(X509_get0_notAfter(lx), X509_get0_notAfter(ca)), 0);

  X509_free(lx);
  X509_free(ca);
  X509_free(x);
  X509_free(first);
  EVP_PKEY_free(k);
  EVP_PKEY_free(k1);
}

static void test_issue_cert_never_overwrites(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], taken[PATH_MAX + 16], err[512] = "";
  make_ca(fx, cadir);
  ctl_cert_paths b;
  assert_int_equal(ctl_issue_cert(cadir, "ctl-b", NULL, 30, &b, err, sizeof err), 0);
  size_t klen, clen;
  char *kb = slurp(b.key, &klen), *cb = slurp(b.cert, &clen);
  assert_int_equal(ctl_issue_cert(cadir, "ctl-b", NULL, 30, &b, err, sizeof err), -EEXIST);
  assert_non_null(strstr(err, "already exists"));
  assert_file_equals(b.key, kb, klen);
  assert_file_equals(b.cert, cb, clen);
  free(kb);
  free(cb);

  /* A certificate alone blocks its name too, and no key appears beside it. */
  snprintf(taken, sizeof taken, "%s/ctl-c.crt", cadir);
  write_raw(taken, "not mine\n", 0644);
  assert_int_equal(ctl_issue_cert(cadir, "ctl-c", NULL, 30, &b, err, sizeof err), -EEXIST);
  snprintf(taken, sizeof taken, "%s/ctl-c.key", cadir);
  assert_false(exists(taken));

  /* The CA's own files and init-ca's controller are names like any other. */
  ctl_ca_paths p;
  ctl_ca_paths_for(cadir, &p);
  const char *files[] = {p.ca_key, p.ca_cert, p.ctl_key, p.ctl_cert};
  char *before[4];
  size_t lens[4];
  for (int i = 0; i < 4; i++)
    before[i] = slurp(files[i], &lens[i]);
  assert_int_equal(ctl_issue_cert(cadir, "ca", NULL, 30, &b, err, sizeof err), -EEXIST);
  assert_int_equal(ctl_issue_cert(cadir, "controller", NULL, 30, &b, err, sizeof err), -EEXIST);
  for (int i = 0; i < 4; i++) {
    assert_file_equals(files[i], before[i], lens[i]);
    free(before[i]);
  }
}

static void test_issue_cert_checks_name_and_ca(void **state) {
  fixture *fx = *state;
  char cadir[PATH_MAX], other[PATH_MAX], out[PATH_MAX], long_name[80], err[512] = "";
  make_ca(fx, cadir);
  memset(long_name, 'a', 65);
  long_name[65] = '\0';
  const char *bad[] = {"",      "a/b",  "../x",     ".hidden", "-x", "sp ace",
                       "tab\t", "nl\n", "\xc3\xa9", long_name, NULL};
  ctl_cert_paths b;
  for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
    err[0] = '\0';
    assert_int_equal(ctl_issue_cert(cadir, bad[i], NULL, 30, &b, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "controller name"));
  }
  assert_int_equal(dir_entries(cadir), 4); /* ca.* and controller.* only */
  long_name[64] = '\0';                    /* 64 is a CN's limit, and allowed */
  assert_int_equal(ctl_issue_cert(cadir, long_name, NULL, 30, &b, err, sizeof err), 0);

  /* No CA in --dir: an error naming init-ca, and nothing is made. */
  path_in(fx, "no-ca", other);
  assert_true(ctl_issue_cert(other, "x", NULL, 30, &b, err, sizeof err) < 0);
  assert_non_null(strstr(err, "init-ca"));
  assert_false(exists(other));

  /* --out-dir: made 0700, and the CA directory gains nothing. */
  path_in(fx, "out/sub", out);
  size_t before = dir_entries(cadir);
  assert_int_equal(ctl_issue_cert(cadir, "ctl-d", out, 30, &b, err, sizeof err), 0);
  assert_int_equal(file_mode(out), 0700);
  assert_int_equal(dir_entries(out), 2);
  assert_int_equal(dir_entries(cadir), before);
  assert_int_equal(file_mode(b.key), 0600);
  assert_int_equal(ctl_issue_cert(cadir, "ctl-e", out, 0, &b, err, sizeof err), -EINVAL);
}

/* ---- development certificate ------------------------------------------------------ */

static void ensure_dev(const char *dir, char *cert, char *key) {
  char err[512] = "";
  int rc = rly_dev_cert_ensure(dir, cert, key, err, sizeof err);
  if (rc != 0) fail_msg("rly_dev_cert_ensure: %s", err);
}

static void assert_dev_cert_good(const char *cert, const char *key) {
  X509 *x = cert_load(cert);
  EVP_PKEY *k = key_load(key);
  static const unsigned char lo4[] = {127, 0, 0, 1};
  static const unsigned char lo6[16] = {[15] = 1};
  assert_int_equal(X509_check_private_key(x, k), 1);
  assert_int_equal(X509_verify(x, k), 1);
  assert_true(X509_cmp_current_time(X509_get0_notAfter(x)) > 0);
  assert_cn(x, "relay development certificate");
  assert_true(has_dns(x, "localhost"));
  assert_true(has_san(x, GEN_IPADD, lo4, sizeof lo4));
  assert_true(has_san(x, GEN_IPADD, lo6, sizeof lo6));
  assert_true(cm_pki_cert_has_eku(x, CM_PKI_SERVER));
  time_t t = time(NULL) + 364 * 86400;
  assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) > 0);
  X509_free(x);
  EVP_PKEY_free(k);
}

static void test_dev_cert_twice_same_files(void **state) {
  fixture *fx = *state;
  char dir[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], want[PATH_MAX];
  path_in(fx, "dev/tls", dir);
  ensure_dev(dir, cert, key);
  assert_string_equal(cert, path_in(fx, "dev/tls/dev.crt", want));
  assert_string_equal(key, path_in(fx, "dev/tls/dev.key", want));
  assert_int_equal(file_mode(dir), 0700);
  assert_int_equal(file_mode(key), 0600);
  assert_int_equal(file_mode(cert), 0644);
  assert_dev_cert_good(cert, key);
  size_t clen = 0, klen = 0;
  char *cb = slurp(cert, &clen), *kb = slurp(key, &klen);
  ensure_dev(dir, cert, key);
  assert_file_equals(cert, cb, clen);
  assert_file_equals(key, kb, klen);
  free(cb);
  free(kb);
}

/* A certificate for key that expired yesterday. */
static char *expired_cert(EVP_PKEY *key) {
  X509 *x = X509_new();
  X509_set_version(x, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -10 * 86400);
  X509_gmtime_adj(X509_getm_notAfter(x), -86400);
  X509_NAME *nm = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_UTF8, (const unsigned char *)"old", -1, -1, 0);
  X509_set_issuer_name(x, nm);
  X509_set_pubkey(x, key);
  assert_true(X509_sign(x, key, EVP_sha256()) > 0);
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  char *pem = mem_strdup(p, (size_t)n);
  BIO_free(b);
  X509_free(x);
  return pem;
}

/* Stale certificates are redone; the key never changes. */
static void test_dev_cert_regenerates_cert_only(void **state) {
  fixture *fx = *state;
  char dir[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], err[512] = "";
  path_in(fx, "dev", dir);
  ensure_dev(dir, cert, key);
  size_t klen = 0;
  char *kb = slurp(key, &klen);

  write_raw(cert, "garbage\n", 0644);
  ensure_dev(dir, cert, key);
  assert_file_equals(key, kb, klen);
  assert_dev_cert_good(cert, key);

  /* A valid certificate for another key. */
  EVP_PKEY *other = new_p256();
  cm_pki_issue opt = {.cn = "x", .usage = CM_PKI_SERVER, .days = 30};
  char *pem = NULL;
  assert_int_equal(cm_pki_self_signed(other, &opt, &pem, err, sizeof err), 0);
  write_raw(cert, pem, 0644);
  free(pem);
  ensure_dev(dir, cert, key);
  assert_file_equals(key, kb, klen);
  assert_dev_cert_good(cert, key);

  /* An expired certificate for the right key. */
  EVP_PKEY *k = key_load(key);
  pem = expired_cert(k);
  write_raw(cert, pem, 0644);
  free(pem);
  ensure_dev(dir, cert, key);
  assert_file_equals(key, kb, klen);
  assert_dev_cert_good(cert, key);

  /* A corrupt key is an error, never replaced. */
  write_raw(key, "broken\n", 0600);
  char c2[PATH_MAX], k2[PATH_MAX];
  assert_true(rly_dev_cert_ensure(dir, c2, k2, err, sizeof err) < 0);
  assert_file_equals(key, "broken\n", 7);

  EVP_PKEY_free(k);
  EVP_PKEY_free(other);
  free(kb);
}

static void test_dev_cert_fingerprint_matches_openssl(void **state) {
  fixture *fx = *state;
  char dir[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], cmd[PATH_MAX + 128];
  path_in(fx, "fp", dir);
  ensure_dev(dir, cert, key);

  X509 *x = cert_load(cert);
  unsigned char *der = NULL;
  int len = i2d_X509(x, &der);
  assert_true(len > 0);
  uint8_t sum[32];
  char ours[65];
  cm_sha256(der, (size_t)len, sum);
  cm_hex(sum, sizeof sum, ours);

  snprintf(cmd, sizeof cmd, "openssl x509 -in '%s' -outform DER | sha256sum", cert);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  char theirs[128] = "";
  assert_non_null(fgets(theirs, sizeof theirs, f));
  assert_int_equal(pclose(f), 0);
  theirs[64] = '\0';
  assert_string_equal(ours, theirs);
  OPENSSL_free(der);
  X509_free(x);
}

static void test_gen_csr_checks_node_id(void **state) {
  fixture *fx = *state;
  char keypath[PATH_MAX], err[512] = "";
  path_in(fx, "k/tunnel.key", keypath);
  char *csr = NULL;
  assert_true(rly_gen_csr(keypath, "", &csr, NULL, err, sizeof err) < 0);
  assert_true(rly_gen_csr(keypath, "bad\nid", &csr, NULL, err, sizeof err) < 0);
  assert_null(csr);
  assert_false(exists(keypath)); /* nothing made for a bad request */

  assert_int_equal(rly_gen_csr(keypath, "node-9", &csr, NULL, err, sizeof err), 0);
  BIO *b = BIO_new_mem_buf(csr, -1);
  X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(req);
  assert_int_equal(X509_REQ_verify(req, X509_REQ_get0_pubkey(req)), 1);
  char cn[128] = "";
  X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req), NID_commonName, cn, sizeof cn);
  assert_string_equal(cn, "node-9");
  EVP_PKEY *k = key_load(keypath);
  assert_int_equal(EVP_PKEY_eq(k, X509_REQ_get0_pubkey(req)), 1);
  EVP_PKEY_free(k);
  X509_REQ_free(req);
  free(csr);
}

/* A chain or bundle ends with its first certificate: the earliest notAfter. */
static void test_cert_file_not_after(void **state) {
  fixture *fx = *state;
  char err[512] = "", path[PATH_MAX], both[PATH_MAX];
  EVP_PKEY *k = new_p256();
  char *ten = NULL, *three = NULL;
  cm_pki_issue opt = {.cn = "t", .usage = CM_PKI_SERVER, .days = 10};
  assert_int_equal(cm_pki_self_signed(k, &opt, &ten, err, sizeof err), 0);
  opt.days = 3;
  assert_int_equal(cm_pki_self_signed(k, &opt, &three, err, sizeof err), 0);
  int64_t now = (int64_t)time(NULL), t = 0;
  write_raw(path_in(fx, "ten.pem", path), ten, 0644);
  assert_int_equal(cm_pki_cert_file_not_after(path, &t, err, sizeof err), 0);
  assert_true(llabs((long long)(t - (now + 10 * 86400))) <= 60);
  size_t n = strlen(ten) + strlen(three) + 1;
  char *cat = malloc(n);
  snprintf(cat, n, "%s%s", ten, three);
  write_raw(path_in(fx, "both.pem", both), cat, 0644);
  assert_int_equal(cm_pki_cert_file_not_after(both, &t, err, sizeof err), 0);
  assert_true(llabs((long long)(t - (now + 3 * 86400))) <= 60);
  write_raw(path_in(fx, "junk.pem", path), "not a certificate\n", 0644);
  assert_int_equal(cm_pki_cert_file_not_after(path, &t, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "no PEM certificate"));
  assert_true(cm_pki_cert_file_not_after(path_in(fx, "missing.pem", path), &t, err, sizeof err) <
              0);
  assert_non_null(strstr(err, "missing.pem"));
  free(cat);
  free(ten);
  free(three);
  EVP_PKEY_free(k);
}

static void test_cert_checks_null_safe(void **state) {
  (void)state;
  assert_false(cm_pki_cert_has_uri(NULL, CM_PKI_URI_RELAY));
  assert_false(cm_pki_cert_has_eku(NULL, CM_PKI_SERVER));
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_key_create_mode_and_reload),
      T(test_key_garbage_refused_untouched),
      T(test_key_never_overwritten),
      T(test_self_signed_sans),
      T(test_csr_roundtrip),
      T(test_csr_requests_are_not_copied),
      T(test_csr_bad_signature_refused),
      T(test_controller_cert),
      T(test_init_ca_reuses_files),
      T(test_init_ca_refuses_orphan_cert),
      T(test_issue_cert),
      T(test_issue_cert_never_overwrites),
      T(test_issue_cert_checks_name_and_ca),
      T(test_dev_cert_twice_same_files),
      T(test_dev_cert_regenerates_cert_only),
      T(test_dev_cert_fingerprint_matches_openssl),
      T(test_gen_csr_checks_node_id),
      T(test_cert_checks_null_safe),
      T(test_cert_file_not_after),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
