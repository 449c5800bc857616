/*
 * ca.c — the controller's enrolment CA on disk: `relay-controller init-ca`
 * makes (once) the CA key and certificate and the controller's own client
 * key and certificate, `issue-cert` gives each further controller a key and
 * client certificate of its own, and `sign-csr` issues a relay's server
 * certificate from the CSR `relay gen-csr` printed.  Files are never
 * overwritten (init-ca reuses them, issue-cert refuses); a certificate whose
 * key is missing or different is an error to resolve by hand, because
 * guessing would silently break trust.
 */
#include "controller-stub/controller.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

enum {
  CA_MAX_DAYS = 36500,
  CA_CERT_FILE_MAX = 1024 * 1024,
  CA_DIR_MAX = 4000, /* leaves room for "/controller.crt" in ctl_ca_paths */
  CA_NAME_MAX = 64,  /* a controller name is a CN: ub-common-name */
};

void ctl_ca_paths_for(const char *dir, ctl_ca_paths *p) {
  snprintf(p->ca_key, sizeof p->ca_key, "%s/ca.key", dir);
  snprintf(p->ca_cert, sizeof p->ca_cert, "%s/ca.crt", dir);
  snprintf(p->ctl_key, sizeof p->ctl_key, "%s/controller.key", dir);
  snprintf(p->ctl_cert, sizeof p->ctl_cert, "%s/controller.crt", dir);
}

/* An unreadable path counts as present, so we never create beside it. */
static bool path_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 || errno != ENOENT;
}

static int dir_ok(const char *dir, char *err, size_t errlen) {
  if (!dir || !*dir || strnlen(dir, CA_DIR_MAX + 1) > CA_DIR_MAX) {
    cm_seterr(err, errlen, "CA directory missing or longer than %d bytes", CA_DIR_MAX);
    return -EINVAL;
  }
  return 0;
}

static int days_ok(int days, char *err, size_t errlen) {
  if (days >= 1 && days <= CA_MAX_DAYS) return 0;
  cm_seterr(err, errlen, "validity must be 1..%d days", CA_MAX_DAYS);
  return -EINVAL;
}

static int read_cert(const char *path, char **pem, X509 **x, char *err, size_t errlen) {
  size_t len = 0;
  int rc = cm_read_file(path, CA_CERT_FILE_MAX, pem, &len);
  if (rc != 0) {
    cm_seterr(err, errlen, "%s: %s", path, strerror(-rc));
    return rc;
  }
  BIO *b = BIO_new_mem_buf(*pem, (int)len);
  *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  ERR_clear_error();
  if (*x) return 0;
  free(*pem);
  *pem = NULL;
  cm_seterr(err, errlen, "%s: not a PEM certificate", path);
  return -EINVAL;
}

/* Refuses a certificate whose key file is gone: a new key would not match
 * it, and replacing the certificate is not ours to decide. */
static int key_for_cert(const char *key_path, const char *cert_path, void **key, char *err,
                        size_t errlen) {
  if (path_exists(cert_path) && !path_exists(key_path)) {
    cm_seterr(err, errlen, "%s exists but its key %s does not: restore the key or remove both",
              cert_path, key_path);
    return -ENOENT;
  }
  return cm_pki_key_load_or_create(key_path, key, NULL, err, errlen);
}

static int write_cert(const char *path, const char *pem, char *err, size_t errlen) {
  int rc = cm_write_file_atomic(path, pem, strlen(pem), 0644, true);
  if (rc != 0 && rc != -EEXIST)
    cm_seterr(err, errlen, "%s: cannot write certificate: %s", path, strerror(-rc));
  return rc;
}

/* ---- the CA ------------------------------------------------------------------ */

static int ca_cert_check(X509 *x, void *key, const char *path, char *err, size_t errlen) {
  int rc = -EINVAL;
  if (X509_check_ca(x) != 1)
    cm_seterr(err, errlen, "%s: not a CA certificate", path);
  else if (X509_check_private_key(x, key) != 1)
    cm_seterr(err, errlen, "%s does not match its key", path);
  else if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0)
    cm_seterr(err, errlen, "%s has expired", path);
  else
    rc = 0;
  ERR_clear_error();
  return rc;
}

/* Self-signs a CA certificate for key unless another process beat us to
 * it; either way the file is then checked like any existing one. */
static int ca_cert_make(const ctl_ca_paths *p, const char *cn, int days, void *key, char *err,
                        size_t errlen) {
  const cm_pki_issue opt = {.cn = cn, .usage = CM_PKI_CA, .days = days};
  char *pem = NULL;
  int rc = cm_pki_self_signed(key, &opt, &pem, err, errlen);
  if (rc == 0) rc = write_cert(p->ca_cert, pem, err, errlen);
  free(pem);
  return rc == -EEXIST ? 0 : rc;
}

/* Loads or makes the CA; on success *key and *pem (the certificate text)
 * belong to the caller. */
static int ca_ensure(const ctl_ca_paths *p, const char *cn, int days, void **key, char **pem,
                     char *err, size_t errlen) {
  *pem = NULL;
  int rc = key_for_cert(p->ca_key, p->ca_cert, key, err, errlen);
  if (rc != 0) return rc;
  if (!path_exists(p->ca_cert)) rc = ca_cert_make(p, cn, days, *key, err, errlen);
  X509 *x = NULL;
  if (rc == 0) rc = read_cert(p->ca_cert, pem, &x, err, errlen);
  if (rc == 0) rc = ca_cert_check(x, *key, p->ca_cert, err, errlen);
  X509_free(x);
  if (rc == 0) return 0;
  free(*pem);
  *pem = NULL;
  cm_pki_key_free(*key);
  *key = NULL;
  return rc;
}

/* ---- the controller's client certificate ----------------------------------- */

static int ctl_cert_check(X509 *x, void *key, const char *ca_pem, const char *path, char *err,
                          size_t errlen) {
  BIO *b = BIO_new_mem_buf(ca_pem, -1);
  X509 *ca = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  int rc = -EINVAL;
  if (!ca)
    cm_seterr(err, errlen, "cannot parse the CA certificate");
  else if (X509_check_private_key(x, key) != 1)
    cm_seterr(err, errlen, "%s does not match its key", path);
  else if (X509_verify(x, X509_get0_pubkey(ca)) != 1)
    cm_seterr(err, errlen, "%s was not issued by this CA", path);
  else if (!cm_pki_cert_has_uri(x, CM_PKI_URI_CONTROLLER) || !cm_pki_cert_has_eku(x, CM_PKI_CLIENT))
    cm_seterr(err, errlen, "%s lacks the controller identity or clientAuth", path);
  else
    rc = 0;
  X509_free(ca);
  ERR_clear_error();
  return rc;
}

/* Writes (exclusively) a controller certificate for key: CN cn, identity
 * CM_PKI_URI_CONTROLLER, clientAuth.  -EEXIST if path appeared. */
static int ctl_cert_write(const char *path, void *ca_key, const char *ca_pem, void *key,
                          const char *cn, int days, char *err, size_t errlen) {
  const cm_pki_issue opt = {
      .cn = cn, .uri = CM_PKI_URI_CONTROLLER, .usage = CM_PKI_CLIENT, .days = days};
  char *pem = NULL;
  int rc = cm_pki_issue_for_key(ca_key, ca_pem, key, &opt, &pem, err, errlen);
  if (rc == 0) rc = write_cert(path, pem, err, errlen);
  free(pem);
  return rc;
}

/* Reads the certificate at path back and checks it against key and CA. */
static int ctl_cert_verify(const char *path, void *key, const char *ca_pem, char *err,
                           size_t errlen) {
  char *pem = NULL;
  X509 *x = NULL;
  int rc = read_cert(path, &pem, &x, err, errlen);
  if (rc == 0) rc = ctl_cert_check(x, key, ca_pem, path, err, errlen);
  X509_free(x);
  free(pem);
  return rc;
}

static int ctl_cert_ensure(const ctl_ca_paths *p, void *ca_key, const char *ca_pem, const char *cn,
                           int days, char *err, size_t errlen) {
  void *key = NULL;
  int rc = key_for_cert(p->ctl_key, p->ctl_cert, &key, err, errlen);
  if (rc != 0) return rc;
  if (!path_exists(p->ctl_cert))
    rc = ctl_cert_write(p->ctl_cert, ca_key, ca_pem, key, cn, days, err, errlen);
  if (rc == 0 || rc == -EEXIST) rc = ctl_cert_verify(p->ctl_cert, key, ca_pem, err, errlen);
  cm_pki_key_free(key);
  return rc;
}

int ctl_init_ca(const char *dir, const char *ca_cn, const char *controller_cn, int days, char *err,
                size_t errlen) {
  int rc = dir_ok(dir, err, errlen);
  if (rc == 0) rc = days_ok(days, err, errlen);
  if (rc != 0) return rc;
  if (!ca_cn || !controller_cn) {
    cm_seterr(err, errlen, "CA and controller names are required");
    return -EINVAL;
  }
  rc = cm_mkdir_p(dir, 0700);
  if (rc != 0) {
    cm_seterr(err, errlen, "%s: cannot create directory: %s", dir, strerror(-rc));
    return rc;
  }
  ctl_ca_paths p;
  ctl_ca_paths_for(dir, &p);
  void *ca_key = NULL;
  char *ca_pem = NULL;
  rc = ca_ensure(&p, ca_cn, days, &ca_key, &ca_pem, err, errlen);
  if (rc != 0) return rc;
  rc = ctl_cert_ensure(&p, ca_key, ca_pem, controller_cn, days, err, errlen);
  free(ca_pem);
  cm_pki_key_free(ca_key);
  return rc;
}

/* ---- issuing from an existing CA ---------------------------------------------- */

/* The CA's key and certificate text from dir (made by init-ca, never here);
 * on success both belong to the caller. */
static int ca_load(const char *dir, void **key, char **pem, char *err, size_t errlen) {
  ctl_ca_paths p;
  ctl_ca_paths_for(dir, &p);
  *pem = NULL;
  int rc = cm_pki_key_load(p.ca_key, key, err, errlen);
  if (rc == -ENOENT) cm_seterr(err, errlen, "%s: no CA here (make one with init-ca)", p.ca_key);
  if (rc != 0) return rc;
  size_t len = 0;
  rc = cm_read_file(p.ca_cert, CA_CERT_FILE_MAX, pem, &len);
  if (rc == 0) return 0;
  cm_seterr(err, errlen, "%s: %s", p.ca_cert, strerror(-rc));
  cm_pki_key_free(*key);
  *key = NULL;
  return rc;
}

int ctl_sign_csr(const char *dir, const char *csr_pem, const cm_strlist *hosts, int days,
                 char **cert_pem, char *err, size_t errlen) {
  if (!cert_pem) return -EINVAL;
  *cert_pem = NULL;
  int rc = dir_ok(dir, err, errlen);
  if (rc == 0) rc = days_ok(days, err, errlen);
  if (rc != 0) return rc;
  if (!csr_pem || !hosts || hosts->n == 0) {
    cm_seterr(err, errlen, "a CSR and at least one host name or IP address are required");
    return -EINVAL;
  }
  void *ca_key = NULL;
  char *ca_pem = NULL;
  rc = ca_load(dir, &ca_key, &ca_pem, err, errlen);
  if (rc != 0) return rc;
  const cm_pki_issue opt = {
      .sans = hosts, .uri = CM_PKI_URI_RELAY, .usage = CM_PKI_SERVER, .days = days};
  rc = cm_pki_sign_csr(ca_key, ca_pem, csr_pem, &opt, cert_pem, err, errlen);
  free(ca_pem);
  cm_pki_key_free(ca_key);
  return rc;
}

/* A controller name becomes a CN and two file names: letters, digits and
 * ". _ -", starting with a letter or digit (no '/', no hidden files). */
static bool ctl_name_ok(const char *name) {
  size_t n = name ? strnlen(name, CA_NAME_MAX + 1) : 0;
  if (n == 0 || n > CA_NAME_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return false;
  }
  return true;
}

static int issued_paths(const char *out_dir, const char *name, ctl_cert_paths *out, char *err,
                        size_t errlen) {
  int rc = dir_ok(out_dir, err, errlen);
  if (rc != 0) return rc;
  if (!ctl_name_ok(name)) {
    cm_seterr(err, errlen,
              "controller name must be 1..%d letters, digits, '.', '_' or '-', starting with a "
              "letter or digit",
              CA_NAME_MAX);
    return -EINVAL;
  }
  snprintf(out->key, sizeof out->key, "%s/%s.key", out_dir, name);
  snprintf(out->cert, sizeof out->cert, "%s/%s.crt", out_dir, name);
  const char *taken = path_exists(out->key) ? out->key : path_exists(out->cert) ? out->cert : NULL;
  if (taken) {
    cm_seterr(err, errlen, "%s already exists: choose another name (nothing was changed)", taken);
    return -EEXIST;
  }
  return 0;
}

/* A fresh key at paths->key (never an existing one), then its certificate.
 * On failure only the files made here are removed again, so a half-issued
 * pair never blocks the name. */
static int issue_new(const ctl_cert_paths *paths, void *ca_key, const char *ca_pem,
                     const char *name, int days, char *err, size_t errlen) {
  void *key = NULL;
  bool created = false, wrote = false;
  int rc = cm_pki_key_load_or_create(paths->key, &key, &created, err, errlen);
  if (rc == 0 && !created) { /* appeared since issued_paths looked */
    cm_seterr(err, errlen, "%s already exists: choose another name", paths->key);
    rc = -EEXIST;
  }
  if (rc == 0) {
    rc = ctl_cert_write(paths->cert, ca_key, ca_pem, key, name, days, err, errlen);
    wrote = rc == 0;
    if (rc == -EEXIST)
      cm_seterr(err, errlen, "%s already exists: choose another name", paths->cert);
  }
  if (rc == 0) rc = ctl_cert_verify(paths->cert, key, ca_pem, err, errlen);
  if (rc != 0 && wrote) unlink(paths->cert);
  if (rc != 0 && created) unlink(paths->key);
  cm_pki_key_free(key);
  return rc;
}

int ctl_issue_cert(const char *dir, const char *name, const char *out_dir, int days,
                   ctl_cert_paths *out, char *err, size_t errlen) {
  if (!out) return -EINVAL;
  if (!out_dir) out_dir = dir;
  int rc = dir_ok(dir, err, errlen);
  if (rc == 0) rc = days_ok(days, err, errlen);
  if (rc == 0) rc = issued_paths(out_dir, name, out, err, errlen);
  if (rc != 0) return rc;
  void *ca_key = NULL;
  char *ca_pem = NULL;
  rc = ca_load(dir, &ca_key, &ca_pem, err, errlen);
  if (rc != 0) return rc;
  rc = cm_mkdir_p(out_dir, 0700);
  if (rc != 0)
    cm_seterr(err, errlen, "%s: cannot create directory: %s", out_dir, strerror(-rc));
  else
    rc = issue_new(out, ca_key, ca_pem, name, days, err, errlen);
  free(ca_pem);
  cm_pki_key_free(ca_key);
  return rc;
}
