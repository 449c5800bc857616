/*
 * enrol.c — the relay's own key material: `relay gen-csr` (make or reuse
 * the tunnel key, print a CSR for the controller CA to sign) and the
 * self-signed development certificate `relay serve` uses when it is given
 * no certificate.  Keys are made once and never replaced: losing a key
 * silently would break an enrolment, so only certificates are ever redone.
 */
#include "relay/relay.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define DEV_CERT_CN "relay development certificate"

enum {
  DEV_CERT_DAYS = 365,
  NODE_ID_MAX = 64,            /* it becomes the CSR's CN (ub-common-name) */
  CERT_FILE_MAX = 1024 * 1024, /* a certificate file is a few KiB */
};

/* Creates the directory holding path (0700: it will hold a private key). */
static int make_parent_dir(const char *path, char *err, size_t errlen) {
  char dir[PATH_MAX];
  if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) {
    cm_seterr(err, errlen, "key path too long");
    return -ENAMETOOLONG;
  }
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return 0; /* the current directory, or "/" */
  *slash = '\0';
  int rc = cm_mkdir_p(dir, 0700);
  if (rc != 0) cm_seterr(err, errlen, "%s: cannot create directory: %s", dir, strerror(-rc));
  return rc;
}

/* Checked before the key is made, so a bad id leaves nothing behind. */
static bool node_id_ok(const char *id) {
  size_t n = id ? strnlen(id, NODE_ID_MAX + 1) : 0;
  if (n == 0 || n > NODE_ID_MAX) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)id[i] < 0x20 || id[i] == 0x7f) return false;
  return true;
}

int rly_gen_csr(const char *key_path, const char *node_id, char **csr_pem, bool *created, char *err,
                size_t errlen) {
  if (!key_path || !*key_path || !csr_pem) {
    cm_seterr(err, errlen, "a key path is required");
    return -EINVAL;
  }
  *csr_pem = NULL;
  if (created) *created = false;
  if (!node_id_ok(node_id)) {
    cm_seterr(err, errlen, "node id must be 1..%d printable bytes", NODE_ID_MAX);
    return -EINVAL;
  }
  int rc = make_parent_dir(key_path, err, errlen);
  if (rc != 0) return rc;
  void *key = NULL;
  rc = cm_pki_key_load_or_create(key_path, &key, created, err, errlen);
  if (rc != 0) return rc;
  rc = cm_pki_csr(key, node_id, csr_pem, err, errlen);
  cm_pki_key_free(key);
  return rc;
}

/* ---- development certificate ------------------------------------------------ */

/* 0 when the certificate at path is for key and still valid, -ENOENT when
 * there is none, -ESTALE (with *why) when it must be redone; other errors
 * (unreadable file) are returned as they are. */
static int dev_cert_check(const char *path, EVP_PKEY *key, const char **why) {
  char *pem = NULL;
  size_t len = 0;
  int rc = cm_read_file(path, CERT_FILE_MAX, &pem, &len);
  if (rc != 0) return rc;
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  free(pem);
  rc = -ESTALE;
  if (!x)
    *why = "not a PEM certificate";
  else if (X509_check_private_key(x, key) != 1)
    *why = "does not match the key";
  else if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0)
    *why = "expired";
  else
    rc = 0;
  X509_free(x);
  ERR_clear_error();
  return rc;
}

static int dev_cert_write(const char *path, void *key, bool replace, char *err, size_t errlen) {
  const char *sans[] = {"localhost", "127.0.0.1", "::1"};
  const cm_strlist list = {(char **)sans, CM_ARRAY_LEN(sans)};
  const cm_pki_issue opt = {
      .cn = DEV_CERT_CN, .sans = &list, .usage = CM_PKI_SERVER, .days = DEV_CERT_DAYS};
  char *pem = NULL;
  int rc = cm_pki_self_signed(key, &opt, &pem, err, errlen);
  if (rc != 0) return rc;
  rc = cm_write_file_atomic(path, pem, strlen(pem), 0644, !replace);
  free(pem);
  if (rc != 0 && rc != -EEXIST)
    cm_seterr(err, errlen, "%s: cannot write certificate: %s", path, strerror(-rc));
  return rc;
}

/* Makes the certificate unless a good one is there; a stale one (other key,
 * expired, garbage) is replaced atomically.  The key is never touched. */
static int dev_cert_refresh(const char *path, void *key, char *err, size_t errlen) {
  for (int pass = 0; pass < 2; pass++) {
    const char *why = "";
    int rc = dev_cert_check(path, key, &why);
    if (rc == 0) return 0;
    if (rc != -ENOENT && rc != -ESTALE) {
      cm_seterr(err, errlen, "%s: %s", path, strerror(-rc));
      return rc;
    }
    if (rc == -ESTALE)
      cm_log(CM_LOG_WARN, "tls", "regenerating development certificate", CM_S("path", path),
             CM_S("reason", why));
    rc = dev_cert_write(path, key, rc == -ESTALE, err, errlen);
    if (rc != -EEXIST) return rc;
    /* Another process wrote one between our check and our link(2). */
  }
  cm_seterr(err, errlen, "%s: keeps changing under us", path);
  return -EAGAIN;
}

int rly_dev_cert_ensure(const char *dir, char *cert_path, char *key_path, char *err,
                        size_t errlen) {
  if (!dir || !*dir || !cert_path || !key_path) {
    cm_seterr(err, errlen, "a development certificate directory is required");
    return -EINVAL;
  }
  if (snprintf(cert_path, PATH_MAX, "%s/dev.crt", dir) >= PATH_MAX ||
      snprintf(key_path, PATH_MAX, "%s/dev.key", dir) >= PATH_MAX) {
    cm_seterr(err, errlen, "development certificate directory path too long");
    return -ENAMETOOLONG;
  }
  int rc = cm_mkdir_p(dir, 0700);
  if (rc != 0) {
    cm_seterr(err, errlen, "%s: cannot create directory: %s", dir, strerror(-rc));
    return rc;
  }
  void *key = NULL;
  rc = cm_pki_key_load_or_create(key_path, &key, NULL, err, errlen);
  if (rc != 0) return rc;
  rc = dev_cert_refresh(cert_path, key, err, errlen);
  cm_pki_key_free(key);
  return rc;
}
