/*
 * fuzz_csr.c — arbitrary bytes as the CSR of `relay-controller sign-csr`:
 * through cm_pki_sign_csr with a CA held in memory, or ctl_sign_csr with
 * the same CA on disk (made once, at start, in a temporary directory that
 * is removed at exit).
 *
 * Input layout: byte 0 holds flags (below); with FZ_HOSTS the first line is
 * the comma-separated --host list, else two fixed hosts; the rest is the
 * CSR text, which FZ_SHAPE may double (two PEM blocks) or pad with filler
 * lines up to, or one byte past, the 256 KiB a CSR may have.
 *
 * Checks: a signed certificate verifies under the CA, carries the relay
 * identity and serverAuth only, is no CA, does not outlive the CA, and
 * holds exactly the CSR's public key; a refusal says why and returns no
 * certificate; no OpenSSL error is left queued for the next caller on the
 * thread.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "controller-stub/controller.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
  FZ_DISK = 1,             /* ctl_sign_csr with the CA directory */
  FZ_HOSTS = 2,            /* the first line is the host list */
  FZ_SHAPE_SHIFT = 2,      /* 2 bits: as is, twice, padded to the limit, past it */
  FZ_POLICY_CN = 16,       /* the policy names the CN (memory path only) */
  FZ_LONG_DAYS = 32,       /* ask for more days than the CA has left */
  FZ_PEM_MAX = 256 * 1024, /* pki.c's PKI_MAX_PEM */
  FZ_CA_DAYS = 3650,
};

static char g_dir[64];
static void *g_ca_key;
static char *g_ca_pem;
static X509 *g_ca;

static void remove_ca(void) {
  ctl_ca_paths p;
  ctl_ca_paths_for(g_dir, &p);
  unlink(p.ca_key);
  unlink(p.ca_cert);
  unlink(p.ctl_key);
  unlink(p.ctl_cert);
  rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/fuzz_csr.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  char err[512];
  ctl_ca_paths p;
  size_t len;
  if (!mkdtemp(g_dir)) abort();
  atexit(remove_ca);
  ctl_ca_paths_for(g_dir, &p);
  if (ctl_init_ca(g_dir, "fuzz CA", "fuzz-controller", FZ_CA_DAYS, err, sizeof err) != 0 ||
      cm_pki_key_load(p.ca_key, &g_ca_key, err, sizeof err) != 0 ||
      cm_read_file(p.ca_cert, 1 << 20, &g_ca_pem, &len) != 0) {
    fprintf(stderr, "fuzz_csr: cannot make the CA: %s\n", err);
    abort();
  }
  BIO *b = BIO_new_mem_buf(g_ca_pem, -1);
  g_ca = PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  if (!g_ca) abort();
  return 0;
}

/* Splits "a,b,c" into hosts; empty entries are kept (they must be refused). */
static void hosts_from(const char *line, size_t n, cm_strlist *hosts) {
  char *dup = malloc(n + 1); /* not strndup: the line has no NUL to stop at */
  if (!dup) abort();
  memcpy(dup, line, n);
  dup[n] = '\0';
  for (char *s = dup, *comma;; s = comma + 1) {
    comma = strchr(s, ',');
    if (comma) *comma = '\0';
    if (cm_strlist_push(hosts, s) != 0) abort();
    if (!comma) break;
  }
  free(dup);
}

/* The CSR text in its shape, NUL-terminated (csr_pem is a C string). */
static char *shape_csr(const uint8_t *p, size_t n, unsigned shape) {
  static const char filler[] = "# filler line that is not PEM\n";
  size_t total = shape == 0 ? n : shape == 1 ? 2 * n : FZ_PEM_MAX + (shape == 3);
  if (total < n) total = n;
  char *s = malloc(total + 1);
  if (!s) abort();
  size_t pad = total - (shape == 1 ? 2 * n : n);
  for (size_t i = 0; i < pad; i++)
    s[i] = filler[i % (sizeof filler - 1)];
  memcpy(s + pad, p, n);
  if (shape == 1) memcpy(s + n, p, n);
  s[total] = '\0';
  return s;
}

static X509_REQ *parse_req(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  ERR_clear_error();
  return req;
}

static void check_cert(const char *cert_pem, const char *csr) {
  BIO *b = BIO_new_mem_buf(cert_pem, -1);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  X509_REQ *req = parse_req(csr);
  if (!x || !req) abort();
  if (X509_verify(x, X509_get0_pubkey(g_ca)) != 1) abort();
  if (!cm_pki_cert_has_uri(x, CM_PKI_URI_RELAY) || cm_pki_cert_has_uri(x, CM_PKI_URI_CONTROLLER))
    abort();
  if (!cm_pki_cert_has_eku(x, CM_PKI_SERVER) || cm_pki_cert_has_eku(x, CM_PKI_CLIENT)) abort();
  if (X509_check_ca(x) != 0) abort();
  if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(g_ca)) > 0) abort();
  if (EVP_PKEY_eq(X509_get0_pubkey(x), X509_REQ_get0_pubkey(req)) != 1) abort();
  X509_REQ_free(req);
  X509_free(x);
  ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t flags = data[0];
  data++;
  size--;
  cm_strlist hosts = {0};
  if (flags & FZ_HOSTS) {
    const uint8_t *nl = memchr(data, '\n', size);
    size_t n = nl ? (size_t)(nl - data) : size;
    hosts_from((const char *)data, n, &hosts);
    data += nl ? n + 1 : n;
    size -= nl ? n + 1 : n;
  } else {
    if (cm_strlist_push(&hosts, "relay.example.net") != 0 ||
        cm_strlist_push(&hosts, "192.0.2.7") != 0)
      abort();
  }
  char *csr = shape_csr(data, size, (flags >> FZ_SHAPE_SHIFT) & 3);
  int days = (flags & FZ_LONG_DAYS) ? 36500 : 30;
  char *cert = NULL, err[512] = "";
  int rc;
  if (flags & FZ_DISK) {
    rc = ctl_sign_csr(g_dir, csr, &hosts, days, &cert, err, sizeof err);
  } else {
    const cm_pki_issue opt = {.cn = (flags & FZ_POLICY_CN) ? "relay-policy-cn" : NULL,
                              .sans = &hosts,
                              .uri = CM_PKI_URI_RELAY,
                              .usage = CM_PKI_SERVER,
                              .days = days};
    rc = cm_pki_sign_csr(g_ca_key, g_ca_pem, csr, &opt, &cert, err, sizeof err);
  }
  if (ERR_peek_error() != 0) abort();
  if (rc == 0) {
    if (!cert) abort();
    check_cert(cert, csr);
  } else if (cert || !err[0]) {
    abort();
  }
  free(cert);
  free(csr);
  cm_strlist_free(&hosts);
  return 0;
}
