/*
 * pki.c — the small PKI behind enrolment and development certificates:
 * ECDSA P-256 keys kept in PEM files that are made once and never replaced,
 * self-signed certificates, CSRs, and a minimal CA whose certificates take
 * every field from the caller's policy (cm_pki_issue) and only the public
 * key (and, failing a policy CN, the CN) from a request, so a relay cannot
 * ask for an identity or usage it was not meant to have.  OpenSSL 3 APIs
 * only; private key bytes are wiped from every buffer this file owns.
 */
#include "common/common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

enum {
  PKI_MAX_KEY_FILE = 64 * 1024, /* a PEM private key is a few hundred bytes */
  PKI_MAX_PEM = 256 * 1024,     /* CSR or CA certificate text from callers */
  PKI_MAX_CN = 64,              /* ub-common-name (RFC 5280) */
  PKI_MAX_DNS = 253,
  PKI_MAX_URI = 1024,
  PKI_MAX_SANS = 100,
  PKI_MAX_DAYS = 36500,
  PKI_MIN_RSA_BITS = 2048,
  PKI_BACKDATE_S = 5 * 60, /* tolerate clocks a little behind ours */
};

/* `what` plus the root cause OpenSSL queued.  Its messages name algorithms
 * and ASN.1 structures, never key material.  Clears the queue. */
static void seterr_ssl(char *err, size_t errlen, const char *what) {
  char reason[256] = "unknown OpenSSL error";
  unsigned long e = ERR_peek_error();
  if (e != 0) ERR_error_string_n(e, reason, sizeof reason);
  ERR_clear_error();
  cm_seterr(err, errlen, "%s: %s", what, reason);
}

/* ---- text checks ----------------------------------------------------------- */

static bool cn_ok(const char *cn) {
  size_t n = cn ? strnlen(cn, PKI_MAX_CN + 1) : 0;
  if (n == 0 || n > PKI_MAX_CN) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)cn[i];
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

static bool dns_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

/* Host names only, optionally with a leading "*." wildcard: a typo in a SAN
 * should fail here, not as an unexplained handshake failure later. */
static bool dns_name_ok(const char *s) {
  size_t n = strnlen(s, PKI_MAX_DNS + 1), label = 0;
  if (n == 0 || n > PKI_MAX_DNS) return false;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '.') {
      if (label == 0) return false;
      label = 0;
    } else if (s[i] == '*') {
      if (i != 0 || s[1] != '.') return false;
      label++;
    } else {
      if (!dns_char_ok(s[i]) || ++label > 63) return false;
    }
  }
  return label > 0;
}

static bool uri_ok(const char *s) {
  size_t n = strnlen(s, PKI_MAX_URI + 1);
  if (n == 0 || n > PKI_MAX_URI || !memchr(s, ':', n)) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return false;
  return true;
}

/* An IPv4/IPv6 literal ("[v6]" tolerated) into network bytes; 0 if none. */
static size_t ip_literal(const char *s, unsigned char out[16]) {
  char tmp[INET6_ADDRSTRLEN + 2];
  size_t n = strnlen(s, sizeof tmp);
  if (n >= sizeof tmp) return 0;
  if (inet_pton(AF_INET, s, out) == 1) return 4;
  if (n > 2 && s[0] == '[' && s[n - 1] == ']') {
    memcpy(tmp, s + 1, n - 2);
    tmp[n - 2] = '\0';
    s = tmp;
  }
  return inet_pton(AF_INET6, s, out) == 1 ? 16 : 0;
}

/* A CA signs certificates and is no TLS endpoint; a leaf needs an EKU. */
static bool usage_ok(unsigned u) {
  const unsigned all = CM_PKI_SERVER | CM_PKI_CLIENT | CM_PKI_CA;
  if (u & ~all) return false;
  if (u & CM_PKI_CA) return u == CM_PKI_CA;
  return u != 0;
}

static int issue_opts_check(const cm_pki_issue *opt, char *err, size_t errlen) {
  if (!opt) {
    cm_seterr(err, errlen, "no certificate options");
    return -EINVAL;
  }
  if (!usage_ok(opt->usage)) {
    cm_seterr(err, errlen, "invalid certificate usage bits 0x%x", opt->usage);
    return -EINVAL;
  }
  if (opt->days < 1 || opt->days > PKI_MAX_DAYS) {
    cm_seterr(err, errlen, "certificate validity must be 1..%d days", PKI_MAX_DAYS);
    return -EINVAL;
  }
  if (opt->sans && opt->sans->n > PKI_MAX_SANS) {
    cm_seterr(err, errlen, "too many subject alternative names (max %d)", PKI_MAX_SANS);
    return -EINVAL;
  }
  if (opt->uri && !uri_ok(opt->uri)) {
    cm_seterr(err, errlen, "invalid URI identity");
    return -EINVAL;
  }
  return 0;
}

/* Accepted key types, for both CA keys and keys in CSRs. */
static int key_policy_check(EVP_PKEY *k, const char *who, char *err, size_t errlen) {
  if (EVP_PKEY_is_a(k, "EC")) {
    char group[64] = "";
    if (EVP_PKEY_get_group_name(k, group, sizeof group, NULL) == 1 &&
        (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0))
      return 0;
    ERR_clear_error();
    cm_seterr(err, errlen, "%s: EC key on curve '%s' refused (P-256 only)", who, group);
    return -EINVAL;
  }
  if (EVP_PKEY_is_a(k, "RSA")) {
    if (EVP_PKEY_get_bits(k) >= PKI_MIN_RSA_BITS) return 0;
    cm_seterr(err, errlen, "%s: RSA key of %d bits refused (minimum %d)", who, EVP_PKEY_get_bits(k),
              PKI_MIN_RSA_BITS);
    return -EINVAL;
  }
  cm_seterr(err, errlen, "%s: key type %s refused (EC P-256 or RSA >= %d only)", who,
            EVP_PKEY_get0_type_name(k) ? EVP_PKEY_get0_type_name(k) : "?", PKI_MIN_RSA_BITS);
  return -EINVAL;
}

/* ---- PEM text in and out ----------------------------------------------------- */

static int bio_to_string(BIO *b, char **out) {
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  if (n <= 0 || !p) return -EIO;
  char *s = malloc((size_t)n + 1);
  if (!s) return -ENOMEM;
  memcpy(s, p, (size_t)n);
  s[n] = '\0';
  *out = s;
  return 0;
}

static int cert_to_pem(X509 *x, char **pem, char *err, size_t errlen) {
  BIO *b = BIO_new(BIO_s_mem());
  int rc = (b && PEM_write_bio_X509(b, x) == 1) ? bio_to_string(b, pem) : -EIO;
  if (rc != 0) seterr_ssl(err, errlen, "cannot encode certificate");
  BIO_free(b);
  return rc;
}

static X509 *cert_from_pem(const char *pem, const char *what, char *err, size_t errlen) {
  size_t n = strnlen(pem, PKI_MAX_PEM + 1);
  if (n > PKI_MAX_PEM) {
    cm_seterr(err, errlen, "%s: larger than %d bytes", what, PKI_MAX_PEM);
    return NULL;
  }
  BIO *b = BIO_new_mem_buf(pem, (int)n);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  if (!x) seterr_ssl(err, errlen, what);
  return x;
}

/* ---- keys -------------------------------------------------------------------- */

/* Never ask for a passphrase: OpenSSL's default callback would prompt on the
 * terminal.  Encrypted keys therefore fail to load, with a clear error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  CM_UNUSED(buf);
  CM_UNUSED(size);
  CM_UNUSED(rwflag);
  CM_UNUSED(u);
  return -1;
}

/* Reads a key file into a heap buffer the caller wipes and frees.  Not
 * cm_read_file: its buffer may be reallocated, leaving stray key copies. */
static int read_secret_file(const char *path, char **out, size_t *outlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  int rc = fstat(fd, &st) == 0 ? 0 : -errno;
  if (rc == 0 && !S_ISREG(st.st_mode)) rc = -EINVAL;
  if (rc == 0 && st.st_size > PKI_MAX_KEY_FILE) rc = -EFBIG;
  char *buf = rc == 0 ? malloc((size_t)st.st_size + 1) : NULL;
  if (rc == 0 && !buf) rc = -ENOMEM;
  size_t n = 0, cap = rc == 0 ? (size_t)st.st_size : 0;
  while (rc == 0 && n < cap) {
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) rc = -errno;
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (rc != 0) {
    if (buf) OPENSSL_cleanse(buf, cap);
    free(buf);
    return rc;
  }
  buf[n] = '\0';
  *out = buf;
  *outlen = n;
  return 0;
}

int cm_pki_key_load(const char *path, void **pkey, char *err, size_t errlen) {
  if (!path || !pkey) return -EINVAL;
  *pkey = NULL;
  char *text = NULL;
  size_t len = 0;
  int rc = read_secret_file(path, &text, &len);
  if (rc != 0) {
    cm_seterr(err, errlen, "%s: %s", path, rc == -EINVAL ? "not a regular file" : strerror(-rc));
    return rc;
  }
  BIO *b = BIO_new_mem_buf(text, (int)len);
  EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
  BIO_free(b);
  OPENSSL_cleanse(text, len);
  free(text);
  if (!k) {
    ERR_clear_error();
    cm_seterr(err, errlen, "%s: not an unencrypted PEM private key", path);
    return -EINVAL;
  }
  *pkey = k;
  return 0;
}

void cm_pki_key_free(void *pkey) { EVP_PKEY_free(pkey); }

/* PEM of the key through a secure-memory BIO, which wipes its buffers. */
static int key_to_pem(EVP_PKEY *k, char **pem, size_t *len) {
  BIO *b = BIO_new(BIO_s_secmem());
  int rc = -EIO;
  char *p = NULL;
  long n = 0;
  if (b && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1)
    n = BIO_get_mem_data(b, &p);
  if (n > 0 && p) {
    char *s = malloc((size_t)n + 1);
    rc = s ? 0 : -ENOMEM;
    if (s) {
      memcpy(s, p, (size_t)n);
      s[n] = '\0';
      *pem = s;
      *len = (size_t)n;
    }
  }
  BIO_free(b);
  return rc;
}

int cm_pki_key_pem(void *pkey, char **pem, char *err, size_t errlen) {
  size_t len;
  if (!pkey || !pem) return -EINVAL;
  *pem = NULL;
  int rc = key_to_pem(pkey, pem, &len);
  if (rc != 0) seterr_ssl(err, errlen, "cannot encode private key");
  return rc;
}

/* Makes a P-256 key and links it into place; -EEXIST if path appeared. */
static int key_create_file(const char *path, EVP_PKEY **out, char *err, size_t errlen) {
  EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  if (!k) {
    seterr_ssl(err, errlen, "cannot generate P-256 key");
    return -EIO;
  }
  char *pem = NULL;
  size_t len = 0;
  int rc = key_to_pem(k, &pem, &len);
  if (rc == 0) {
    rc = cm_write_file_atomic(path, pem, len, 0600, true);
    OPENSSL_cleanse(pem, len);
    if (rc != 0 && rc != -EEXIST)
      cm_seterr(err, errlen, "%s: cannot write key: %s", path, strerror(-rc));
  } else {
    seterr_ssl(err, errlen, "cannot encode private key");
  }
  free(pem);
  if (rc != 0) {
    EVP_PKEY_free(k);
    return rc;
  }
  *out = k;
  return 0;
}

int cm_pki_key_load_or_create(const char *path, void **pkey, bool *created, char *err,
                              size_t errlen) {
  if (!path || !*path || !pkey) return -EINVAL;
  *pkey = NULL;
  if (created) *created = false;
  /* Twice: if another process creates the file between our failed read and
   * our link(2), the second pass loads theirs instead of replacing it. */
  for (int pass = 0; pass < 2; pass++) {
    int rc = cm_pki_key_load(path, pkey, err, errlen);
    if (rc != -ENOENT) return rc;
    EVP_PKEY *k = NULL;
    rc = key_create_file(path, &k, err, errlen);
    if (rc == 0) {
      *pkey = k;
      if (created) *created = true;
      return 0;
    }
    if (rc != -EEXIST) return rc;
  }
  cm_seterr(err, errlen, "%s: appeared and vanished while being created", path);
  return -EAGAIN;
}

/* ---- certificate fields -------------------------------------------------------- */

static X509_NAME *name_cn(const char *cn) {
  X509_NAME *nm = X509_NAME_new();
  if (nm && X509_NAME_add_entry_by_NID(nm, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                       -1, -1, 0) == 1)
    return nm;
  X509_NAME_free(nm);
  return NULL;
}

/* 128 random bits; a positive, non-zero INTEGER as RFC 5280 requires. */
static int set_random_serial(X509 *x) {
  BIGNUM *bn = BN_new();
  int ok = bn != NULL;
  do {
    ok = ok && BN_rand(bn, 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1;
  } while (ok && BN_is_zero(bn));
  ok = ok && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
  BN_free(bn);
  return ok ? 0 : -1;
}

/* Version, serial, validity, names and key.  A leaf never outlives its CA,
 * since a chain stops verifying when its CA expires anyway. */
static int cert_set_basics(X509 *x, EVP_PKEY *subject_key, const char *cn, int days, X509 *ca) {
  X509_NAME *subject = name_cn(cn);
  int ok = subject && X509_set_version(x, X509_VERSION_3) == 1 && set_random_serial(x) == 0 &&
           X509_gmtime_adj(X509_getm_notBefore(x), -PKI_BACKDATE_S) &&
           X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) &&
           X509_set_subject_name(x, subject) == 1 &&
           X509_set_issuer_name(x, ca ? X509_get_subject_name(ca) : subject) == 1 &&
           X509_set_pubkey(x, subject_key) == 1;
  if (ok && ca && ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca)) > 0)
    ok = X509_set1_notAfter(x, X509_get0_notAfter(ca)) == 1;
  X509_NAME_free(subject);
  return ok ? 0 : -1;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
  int ok = ext && X509_add_ext(x, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok ? 0 : -1;
}

static const char *eku_value(unsigned usage) {
  if ((usage & CM_PKI_SERVER) && (usage & CM_PKI_CLIENT)) return "serverAuth,clientAuth";
  return (usage & CM_PKI_SERVER) ? "serverAuth" : "clientAuth";
}

/* Constraints, usages and key identifiers.  The subject key identifier goes
 * in before the authority one, which copies it when self-signed. */
static int cert_add_usage_exts(X509 *x, X509 *ca, unsigned usage) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca ? ca : x, x, NULL, NULL, 0);
  bool is_ca = usage & CM_PKI_CA;
  if (add_ext(x, &ctx, NID_basic_constraints,
              is_ca ? "critical,CA:TRUE,pathlen:0" : "critical,CA:FALSE") != 0)
    return -1;
  if (add_ext(x, &ctx, NID_key_usage,
              is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") != 0)
    return -1;
  if (!is_ca && add_ext(x, &ctx, NID_ext_key_usage, eku_value(usage)) != 0) return -1;
  if (add_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0) return -1;
  return add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always");
}

static int gens_push(GENERAL_NAMES *gens, int type, const void *data, size_t len) {
  ASN1_STRING *s = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
  GENERAL_NAME *gn = GENERAL_NAME_new();
  if (!s || !gn || ASN1_STRING_set(s, data, (int)len) != 1) {
    ASN1_STRING_free(s);
    GENERAL_NAME_free(gn);
    return -1;
  }
  GENERAL_NAME_set0_value(gn, type, s);
  if (sk_GENERAL_NAME_push(gens, gn) <= 0) {
    GENERAL_NAME_free(gn);
    return -1;
  }
  return 0;
}

/* Each entry is an iPAddress when it parses as an IP literal, else a DNS
 * name; the URI identity, if any, follows them. */
static int cert_add_sans(X509 *x, const cm_pki_issue *opt, char *err, size_t errlen) {
  size_t n = opt->sans ? opt->sans->n : 0;
  if (n == 0 && !opt->uri) return 0;
  GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
  int rc = gens ? 0 : -ENOMEM;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const char *s = opt->sans->v[i];
    unsigned char ip[16];
    size_t iplen = s ? ip_literal(s, ip) : 0;
    if (iplen > 0) {
      rc = gens_push(gens, GEN_IPADD, ip, iplen) == 0 ? 0 : -ENOMEM;
    } else if (s && dns_name_ok(s)) {
      rc = gens_push(gens, GEN_DNS, s, strlen(s)) == 0 ? 0 : -ENOMEM;
    } else {
      cm_seterr(err, errlen, "invalid host name or IP address '%.100s'", s ? s : "(null)");
      rc = -EINVAL;
    }
  }
  if (rc == 0 && opt->uri && gens_push(gens, GEN_URI, opt->uri, strlen(opt->uri)) != 0)
    rc = -ENOMEM;
  if (rc == 0 && X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_APPEND) != 1)
    rc = -EIO;
  if (rc == -ENOMEM || rc == -EIO) seterr_ssl(err, errlen, "cannot build subjectAltName");
  GENERAL_NAMES_free(gens);
  return rc;
}

/* Builds and signs a certificate for subject_key: self-signed with
 * sign_key when ca is NULL, else issued by ca (whose key is sign_key). */
static int cert_make(EVP_PKEY *subject_key, const char *cn, const cm_pki_issue *opt, X509 *ca,
                     EVP_PKEY *sign_key, char **pem, char *err, size_t errlen) {
  if (!cn_ok(cn)) {
    cm_seterr(err, errlen, "certificate CN must be 1..%d printable bytes", PKI_MAX_CN);
    return -EINVAL;
  }
  X509 *x = X509_new();
  int rc = x ? 0 : -ENOMEM;
  if (rc == 0 && cert_set_basics(x, subject_key, cn, opt->days, ca) != 0) rc = -EIO;
  if (rc == 0 && cert_add_usage_exts(x, ca, opt->usage) != 0) rc = -EIO;
  if (rc != 0) seterr_ssl(err, errlen, "cannot build certificate");
  if (rc == 0) rc = cert_add_sans(x, opt, err, errlen);
  if (rc == 0 && X509_sign(x, sign_key, EVP_sha256()) <= 0) {
    seterr_ssl(err, errlen, "cannot sign certificate");
    rc = -EIO;
  }
  if (rc == 0) rc = cert_to_pem(x, pem, err, errlen);
  X509_free(x);
  return rc;
}

/* ---- issuing ------------------------------------------------------------------- */

int cm_pki_self_signed(void *pkey, const cm_pki_issue *opt, char **pem, char *err, size_t errlen) {
  if (!pkey || !pem) return -EINVAL;
  *pem = NULL;
  int rc = issue_opts_check(opt, err, errlen);
  return rc != 0 ? rc : cert_make(pkey, opt->cn, opt, NULL, pkey, pem, err, errlen);
}

/* Parses the CA certificate and checks that it is a CA and that ca_key is
 * its key, so a mixed-up pair fails here rather than in every verifier. */
static X509 *ca_open(EVP_PKEY *ca_key, const char *ca_cert_pem, char *err, size_t errlen) {
  if (key_policy_check(ca_key, "CA key", err, errlen) != 0) return NULL;
  X509 *ca = cert_from_pem(ca_cert_pem, "CA certificate", err, errlen);
  if (!ca) return NULL;
  if (X509_check_ca(ca) != 1) {
    cm_seterr(err, errlen, "CA certificate is not a CA (basicConstraints CA:TRUE missing)");
  } else if (X509_check_private_key(ca, ca_key) != 1) {
    ERR_clear_error();
    cm_seterr(err, errlen, "CA key does not match the CA certificate");
  } else {
    return ca;
  }
  X509_free(ca);
  return NULL;
}

static int issue(EVP_PKEY *ca_key, const char *ca_cert_pem, EVP_PKEY *subject_key, const char *cn,
                 const cm_pki_issue *opt, char **cert_pem, char *err, size_t errlen) {
  if (opt->usage & CM_PKI_CA) {
    cm_seterr(err, errlen, "this CA issues leaf certificates only");
    return -EINVAL;
  }
  X509 *ca = ca_open(ca_key, ca_cert_pem, err, errlen);
  if (!ca) return -EINVAL;
  int rc = cert_make(subject_key, cn, opt, ca, ca_key, cert_pem, err, errlen);
  X509_free(ca);
  return rc;
}

int cm_pki_issue_for_key(void *ca_key, const char *ca_cert_pem, void *subject_key,
                         const cm_pki_issue *opt, char **cert_pem, char *err, size_t errlen) {
  if (!ca_key || !ca_cert_pem || !subject_key || !cert_pem) return -EINVAL;
  *cert_pem = NULL;
  int rc = issue_opts_check(opt, err, errlen);
  if (rc == 0) rc = key_policy_check(subject_key, "subject key", err, errlen);
  return rc != 0 ? rc
                 : issue(ca_key, ca_cert_pem, subject_key, opt->cn, opt, cert_pem, err, errlen);
}

/* ---- CSRs ------------------------------------------------------------------------ */

int cm_pki_csr(void *pkey, const char *cn, char **pem, char *err, size_t errlen) {
  if (!pkey || !pem) return -EINVAL;
  *pem = NULL;
  if (!cn_ok(cn)) {
    cm_seterr(err, errlen, "CSR CN must be 1..%d printable bytes", PKI_MAX_CN);
    return -EINVAL;
  }
  X509_REQ *req = X509_REQ_new();
  X509_NAME *nm = name_cn(cn);
  BIO *b = BIO_new(BIO_s_mem());
  int rc = -EIO;
  if (req && nm && b && X509_REQ_set_version(req, 0) == 1 &&
      X509_REQ_set_subject_name(req, nm) == 1 && X509_REQ_set_pubkey(req, pkey) == 1 &&
      X509_REQ_sign(req, pkey, EVP_sha256()) > 0 && PEM_write_bio_X509_REQ(b, req) == 1)
    rc = bio_to_string(b, pem);
  if (rc != 0) seterr_ssl(err, errlen, "cannot build CSR");
  BIO_free(b);
  X509_NAME_free(nm);
  X509_REQ_free(req);
  return rc;
}

static X509_REQ *csr_parse(const char *csr_pem, char *err, size_t errlen) {
  size_t n = strnlen(csr_pem, PKI_MAX_PEM + 1);
  if (n > PKI_MAX_PEM) {
    cm_seterr(err, errlen, "CSR larger than %d bytes", PKI_MAX_PEM);
    return NULL;
  }
  BIO *b = BIO_new_mem_buf(csr_pem, (int)n);
  X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  if (!req) seterr_ssl(err, errlen, "not a PEM certificate request");
  return req;
}

/* The CSR's single CN as UTF-8 (OPENSSL_free it), checked like any CN. */
static int csr_cn(X509_REQ *req, char **out, char *err, size_t errlen) {
  X509_NAME *nm = X509_REQ_get_subject_name(req);
  int idx = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(nm, NID_commonName, idx) >= 0) {
    cm_seterr(err, errlen, "CSR subject must hold exactly one CN");
    return -EINVAL;
  }
  unsigned char *utf8 = NULL;
  int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, idx)));
  if (n < 0 || memchr(utf8, '\0', (size_t)n) || !cn_ok((const char *)utf8)) {
    ERR_clear_error();
    OPENSSL_free(utf8);
    cm_seterr(err, errlen, "CSR CN must be 1..%d printable bytes", PKI_MAX_CN);
    return -EINVAL;
  }
  *out = (char *)utf8;
  return 0;
}

/* The request must prove possession of its key and use an accepted key. */
static int csr_check(X509_REQ *req, char *err, size_t errlen) {
  EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
  if (!pub) {
    seterr_ssl(err, errlen, "CSR public key unreadable");
    return -EINVAL;
  }
  if (X509_REQ_verify(req, pub) != 1) {
    ERR_clear_error();
    cm_seterr(err, errlen, "CSR signature does not verify: refusing to sign");
    return -EBADMSG;
  }
  return key_policy_check(pub, "CSR key", err, errlen);
}

int cm_pki_sign_csr(void *ca_key, const char *ca_cert_pem, const char *csr_pem,
                    const cm_pki_issue *opt, char **cert_pem, char *err, size_t errlen) {
  if (!ca_key || !ca_cert_pem || !csr_pem || !cert_pem) return -EINVAL;
  *cert_pem = NULL;
  int rc = issue_opts_check(opt, err, errlen);
  if (rc != 0) return rc;
  X509_REQ *req = csr_parse(csr_pem, err, errlen);
  if (!req) return -EINVAL;
  char *req_cn = NULL;
  rc = csr_check(req, err, errlen);
  if (rc == 0 && !opt->cn) rc = csr_cn(req, &req_cn, err, errlen);
  /* Only the public key (and maybe the CN) crosses over: the CSR's other
   * subject fields, extensions and attributes are never looked at. */
  if (rc == 0)
    rc = issue(ca_key, ca_cert_pem, X509_REQ_get0_pubkey(req), opt->cn ? opt->cn : req_cn, opt,
               cert_pem, err, errlen);
  OPENSSL_free(req_cn);
  X509_REQ_free(req);
  return rc;
}

/* ---- inspection ------------------------------------------------------------------ */

bool cm_pki_cert_has_uri(void *x509, const char *uri) {
  if (!x509 || !uri) return false;
  /* A duplicated SAN extension makes this return NULL: treated as absent. */
  GENERAL_NAMES *gens = X509_get_ext_d2i(x509, NID_subject_alt_name, NULL, NULL);
  size_t n = strlen(uri);
  bool found = false;
  for (int i = 0; gens && !found && i < sk_GENERAL_NAME_num(gens); i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
    if (gn->type != GEN_URI) continue;
    const ASN1_IA5STRING *s = gn->d.uniformResourceIdentifier;
    found = (size_t)ASN1_STRING_length(s) == n && memcmp(ASN1_STRING_get0_data(s), uri, n) == 0;
  }
  GENERAL_NAMES_free(gens);
  return found;
}

/* True when every requested bit is explicitly present: serverAuth and
 * clientAuth must be listed in extendedKeyUsage (a certificate without the
 * extension does not count), CM_PKI_CA needs basicConstraints CA:TRUE. */
bool cm_pki_cert_has_eku(void *x509, unsigned usage) {
  if (!x509 || usage == 0) return false;
  if ((usage & CM_PKI_CA) && X509_check_ca(x509) != 1) return false;
  unsigned want = usage & (CM_PKI_SERVER | CM_PKI_CLIENT), have = 0;
  if (want == 0) return true;
  EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(x509, NID_ext_key_usage, NULL, NULL);
  for (int i = 0; eku && i < sk_ASN1_OBJECT_num(eku); i++) {
    int nid = OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i));
    if (nid == NID_server_auth) have |= CM_PKI_SERVER;
    if (nid == NID_client_auth) have |= CM_PKI_CLIENT;
  }
  EXTENDED_KEY_USAGE_free(eku);
  ERR_clear_error();
  return (have & want) == want;
}

/* ---- expiry ----------------------------------------------------------------------- */

int cm_pki_cert_file_not_after(const char *path, int64_t *not_after, char *err, size_t errlen) {
  BIO *b = BIO_new_file(path, "r");
  if (!b) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -errno;
  }
  int n = 0;
  int64_t earliest = 0;
  X509 *x;
  while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) {
      int64_t t = (int64_t)timegm(&tm);
      if (n++ == 0 || t < earliest) earliest = t;
    }
    X509_free(x);
  }
  ERR_clear_error(); /* the read that ended the loop */
  BIO_free(b);
  if (n == 0) {
    snprintf(err, errlen, "%s: no PEM certificate", path);
    return -EINVAL;
  }
  *not_after = earliest;
  return 0;
}
