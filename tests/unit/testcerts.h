/*
 * testcerts.h — certificate factory for tests: a CA and leaves with chosen
 * identity (URI SAN), EKUs, IP SAN and validity window (including already
 * expired ones), written as PEM files into a temporary directory.  Test
 * code only; production certificates come from common/pki.c.
 */
#ifndef RELAY_TESTS_TESTCERTS_H
#define RELAY_TESTS_TESTCERTS_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct tc_cert {
  EVP_PKEY *key;
  X509 *cert;
  char cert_path[512];
  char key_path[512];
} tc_cert;

static void tc_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  if (ext) {
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }
}

static void tc_write(tc_cert *c, const char *dir, const char *name) {
  snprintf(c->cert_path, sizeof c->cert_path, "%s/%s.crt", dir, name);
  snprintf(c->key_path, sizeof c->key_path, "%s/%s.key", dir, name);
  FILE *f = fopen(c->cert_path, "w");
  PEM_write_X509(f, c->cert);
  fclose(f);
  f = fopen(c->key_path, "w");
  PEM_write_PrivateKey(f, c->key, NULL, NULL, 0, NULL, NULL);
  fclose(f);
}

/* issuer NULL: self-signed CA.  san: "IP:127.0.0.1,URI:urn:..." or NULL.
 * eku: "serverAuth", "clientAuth", "serverAuth,clientAuth" or NULL.
 * Validity: [now + from_s, now + to_s]. */
static tc_cert tc_make(const char *dir, const char *name, const tc_cert *issuer, const char *san,
                       const char *eku, long from_s, long to_s) {
  static long serial = 1000;
  tc_cert c;
  memset(&c, 0, sizeof c);
  c.key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  c.cert = X509_new();
  X509_set_version(c.cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c.cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(c.cert), from_s);
  X509_gmtime_adj(X509_getm_notAfter(c.cert), to_s);
  X509_set_pubkey(c.cert, c.key);
  X509_NAME *n = X509_get_subject_name(c.cert);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
  X509 *iss = issuer ? issuer->cert : c.cert;
  X509_set_issuer_name(c.cert, X509_get_subject_name(iss));
  if (!issuer) {
    tc_ext(c.cert, iss, NID_basic_constraints, "critical,CA:TRUE");
    tc_ext(c.cert, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    tc_ext(c.cert, iss, NID_basic_constraints, "CA:FALSE");
    tc_ext(c.cert, iss, NID_key_usage, "digitalSignature");
  }
  tc_ext(c.cert, iss, NID_subject_key_identifier, "hash");
  if (san) tc_ext(c.cert, iss, NID_subject_alt_name, san);
  if (eku) tc_ext(c.cert, iss, NID_ext_key_usage, eku);
  X509_sign(c.cert, issuer ? issuer->key : c.key, EVP_sha256());
  tc_write(&c, dir, name);
  return c;
}

static void tc_free(tc_cert *c) {
  EVP_PKEY_free(c->key);
  X509_free(c->cert);
}

static char *tc_tmpdir(void) {
  static char tmpl[64];
  snprintf(tmpl, sizeof tmpl, "/tmp/relay-test-XXXXXX");
  return mkdtemp(tmpl);
}

static void tc_rmdir(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", dir);
}

#endif
