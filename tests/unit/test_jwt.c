/*
 * test_jwt.c — OIDC discovery, JWKS and JWT verification (relay/jwt.h).
 *
 * Keys are generated with OpenSSL at test time and tokens are signed here
 * with EVP (RS* PKCS#1 v1.5, ES* converted from DER to JOSE's raw R||S), so
 * the tests depend neither on libjwt's signing nor on fixed key material.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/jwt.h"

#define NOW 1700000000LL
#define ISS "https://idp.example.com/realms/relay"
#define AUD "relay-admin"

static EVP_PKEY *g_rsa, *g_rsa2, *g_rsa1024, *g_ec, *g_ec384, *g_ec521;
static rly_jwks *g_set; /* rsa1, ec1 (alg ES256), ec384, ec521 + unusable ones */
static const rly_jwt_policy g_pol = {ISS, AUD, 30};

/* ---- helpers: encoding, JWKs, signing ------------------------------------ */

static void b64(const void *in, size_t n, char *out, size_t outlen) {
  assert_true(cm_b64url_encode(in, n, out, outlen) > 0 || n == 0);
}

/* A big-number parameter of key as base64url; pad > 0 left-pads to pad bytes. */
static void bn_param_b64(EVP_PKEY *key, const char *param, int pad, char *out, size_t outlen) {
  BIGNUM *bn = NULL;
  assert_int_equal(EVP_PKEY_get_bn_param(key, param, &bn), 1);
  uint8_t buf[1100];
  int n = pad > 0 ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
  assert_true(n > 0);
  b64(buf, (size_t)n, out, outlen);
  BN_free(bn);
}

static void jwk_rsa(EVP_PKEY *key, const char *kid, char *out, size_t outlen) {
  char n[2048], e[32];
  bn_param_b64(key, OSSL_PKEY_PARAM_RSA_N, 0, n, sizeof n);
  bn_param_b64(key, OSSL_PKEY_PARAM_RSA_E, 0, e, sizeof e);
  snprintf(out, outlen,
           "{\"kty\":\"RSA\",\"kid\":\"%s\",\"use\":\"sig\",\"n\":\"%s\",\"e\":\"%s\"}", kid, n, e);
}

/* extra: more members (",\"alg\":\"ES256\""), or "". flip_y corrupts y. */
static void jwk_ec(EVP_PKEY *key, const char *kid, const char *extra, bool flip_y, char *out,
                   size_t outlen) {
  int bits = EVP_PKEY_get_bits(key), len = (bits + 7) / 8;
  const char *crv = bits == 256 ? "P-256" : bits == 384 ? "P-384" : "P-521";
  char x[128], y[128];
  bn_param_b64(key, OSSL_PKEY_PARAM_EC_PUB_X, len, x, sizeof x);
  if (flip_y) {
    BIGNUM *bn = NULL;
    uint8_t buf[66];
    assert_int_equal(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &bn), 1);
    BN_bn2binpad(bn, buf, len);
    buf[len - 1] ^= 1;
    b64(buf, (size_t)len, y, sizeof y);
    BN_free(bn);
  } else {
    bn_param_b64(key, OSSL_PKEY_PARAM_EC_PUB_Y, len, y, sizeof y);
  }
  snprintf(out, outlen,
           "{\"kty\":\"EC\",\"kid\":\"%s\",\"crv\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s}", kid, crv,
           x, y, extra);
}

static const EVP_MD *md_for(const char *alg) {
  return strstr(alg, "256") ? EVP_sha256() : strstr(alg, "384") ? EVP_sha384() : EVP_sha512();
}

/* "b64(hdr).b64(payload)" into out; returns its length. */
static size_t signing_input(const char *hdr, const char *payload, char *out, size_t outlen) {
  char h[1024], p[4096];
  b64(hdr, strlen(hdr), h, sizeof h);
  b64(payload, strlen(payload), p, sizeof p);
  int n = snprintf(out, outlen, "%s.%s", h, p);
  assert_true(n > 0 && (size_t)n < outlen);
  return (size_t)n;
}

/* Signs with key per alg (RS* or ES*).  der: leave an ECDSA signature in
 * DER instead of converting it to raw R||S. */
static void sign_token(EVP_PKEY *key, const char *alg, const char *hdr, const char *payload,
                       bool der, char *out, size_t outlen) {
  size_t n = signing_input(hdr, payload, out, outlen), siglen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  assert_int_equal(EVP_DigestSignInit(ctx, NULL, md_for(alg), NULL, key), 1);
  assert_int_equal(EVP_DigestSign(ctx, NULL, &siglen, (uint8_t *)out, n), 1);
  uint8_t *sig = malloc(siglen), raw[132];
  assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, (uint8_t *)out, n), 1);
  EVP_MD_CTX_free(ctx);
  const uint8_t *s = sig;
  if (alg[0] == 'E' && !der) {
    const uint8_t *p = sig;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
    assert_non_null(es);
    int len = (EVP_PKEY_get_bits(key) + 7) / 8;
    BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, len);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + len, len);
    ECDSA_SIG_free(es);
    s = raw;
    siglen = (size_t)(2 * len);
  }
  out[n++] = '.';
  b64(s, siglen, out + n, outlen - n);
  free(sig);
}

/* Standard claims: iss ISS, aud AUD, sub alice, exp NOW+300, then extra. */
static void claims(char *out, size_t outlen, const char *extra) {
  snprintf(out, outlen,
           "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"alice\",\"exp\":%lld%s}", NOW + 300,
           extra);
}

static void claims_full(char *out, size_t outlen, const char *iss, const char *aud_json,
                        long long exp, const char *extra) {
  snprintf(out, outlen, "{\"iss\":\"%s\",\"aud\":%s,\"sub\":\"alice\",\"exp\":%lld%s}", iss,
           aud_json, exp, extra);
}

static char g_kid[RLY_JWT_KID_MAX + 1];
static char g_err[256];

/* Verifies at `now` with g_set and policy pol, checks that the error text
 * never carries the token's payload or signature, and returns the result. */
static int verify_at(const rly_jwt_policy *pol, const char *token, int64_t now, rly_principal *p) {
  int rc = rly_jwt_verify(g_set, pol, token, now, p, g_kid, sizeof g_kid, g_err, sizeof g_err);
  const char *d1 = strchr(token, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
  if (d2 && strlen(d2 + 1) >= 8) assert_null(strstr(g_err, d2 + 1));
  if (d1 && d2 && d2 - d1 > 9) {
    char seg[64];
    snprintf(seg, sizeof seg, "%.*s", (int)CM_MIN(d2 - d1 - 1, 40), d1 + 1);
    assert_null(strstr(g_err, seg));
  }
  if (rc != RLY_JWT_OK) assert_true(g_err[0] != '\0');
  return rc;
}

static int verify(const char *token) {
  rly_principal p;
  int rc = verify_at(&g_pol, token, NOW, &p);
  rly_principal_free(&p);
  return rc;
}

/* ---- fixtures --------------------------------------------------------------- */

static int group_setup(void **state) {
  (void)state;
  g_rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
  g_rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
  g_rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
  g_ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  g_ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
  g_ec521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
  if (!g_rsa || !g_rsa2 || !g_rsa1024 || !g_ec || !g_ec384 || !g_ec521) return -1;

  static char k[7][2048], json[16384];
  jwk_rsa(g_rsa, "rsa1", k[0], sizeof k[0]);
  jwk_ec(g_ec, "ec1", ",\"alg\":\"ES256\",\"use\":\"sig\"", false, k[1], sizeof k[1]);
  jwk_ec(g_ec384, "ec384", "", false, k[2], sizeof k[2]);
  jwk_ec(g_ec521, "ec521", ",\"key_ops\":[\"verify\"]", false, k[3], sizeof k[3]);
  jwk_rsa(g_rsa1024, "weak", k[4], sizeof k[4]);
  jwk_ec(g_ec, "offcurve", "", true, k[5], sizeof k[5]);
  jwk_ec(g_ec, "enc", ",\"use\":\"enc\"", false, k[6], sizeof k[6]);
  snprintf(json, sizeof json, "{\"keys\":[%s,%s,%s,%s,%s,%s,%s,{\"kty\":\"oct\",\"k\":\"AAAA\"}]}",
           k[0], k[1], k[2], k[3], k[4], k[5], k[6]);
  char err[256];
  int rc = rly_jwks_parse(json, strlen(json), &g_set, err, sizeof err);
  if (rc != 0) fprintf(stderr, "jwks: %s\n", err);
  return rc;
}

static int group_teardown(void **state) {
  (void)state;
  rly_jwks_free(g_set);
  EVP_PKEY_free(g_rsa);
  EVP_PKEY_free(g_rsa2);
  EVP_PKEY_free(g_rsa1024);
  EVP_PKEY_free(g_ec);
  EVP_PKEY_free(g_ec384);
  EVP_PKEY_free(g_ec521);
  return 0;
}

/* ---- JWKS --------------------------------------------------------------------- */

static void test_jwks_keeps_usable_keys(void **state) {
  (void)state;
  assert_int_equal(rly_jwks_count(g_set), 4);
  assert_int_equal(rly_jwks_skipped(g_set), 4); /* weak, offcurve, enc, oct */
  assert_true(rly_jwks_has_kid(g_set, "rsa1"));
  assert_true(rly_jwks_has_kid(g_set, "ec1"));
  assert_true(rly_jwks_has_kid(g_set, "ec384"));
  assert_true(rly_jwks_has_kid(g_set, "ec521"));
  assert_false(rly_jwks_has_kid(g_set, "weak"));
  assert_false(rly_jwks_has_kid(g_set, "offcurve"));
  assert_false(rly_jwks_has_kid(g_set, "enc"));
  assert_false(rly_jwks_has_kid(g_set, NULL));

  const rly_jwk *k = rly_jwks_key(g_set, 0);
  assert_string_equal(k->kty, "RSA");
  assert_null(k->crv);
  assert_null(k->alg);
  assert_int_equal(k->bits, 2048);
  /* The PEM is the very public key we generated. */
  BIO *b = BIO_new_mem_buf(k->pem, -1);
  EVP_PKEY *back = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(back);
  assert_int_equal(EVP_PKEY_eq(back, g_rsa), 1);
  EVP_PKEY_free(back);

  k = rly_jwks_key(g_set, 1);
  assert_string_equal(k->kty, "EC");
  assert_string_equal(k->crv, "P-256");
  assert_string_equal(k->alg, "ES256");
  b = BIO_new_mem_buf(k->pem, -1);
  back = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_int_equal(EVP_PKEY_eq(back, g_ec), 1);
  EVP_PKEY_free(back);
  assert_string_equal(rly_jwks_key(g_set, 3)->crv, "P-521");
  assert_null(rly_jwks_key(g_set, 4));
}

static int parse_one(const char *jwk, rly_jwks **set, char *err, size_t errlen) {
  char json[8192];
  snprintf(json, sizeof json, "{\"keys\":[%s]}", jwk);
  return rly_jwks_parse(json, strlen(json), set, err, errlen);
}

static void test_jwks_weak_rsa_and_off_curve_skipped(void **state) {
  (void)state;
  char jwk[4096], err[256];
  rly_jwks *set = NULL;
  jwk_rsa(g_rsa1024, "weak", jwk, sizeof jwk);
  assert_int_equal(parse_one(jwk, &set, err, sizeof err), -EINVAL);
  assert_null(set);
  assert_non_null(strstr(err, "no usable"));

  jwk_ec(g_ec, "bad", "", true, jwk, sizeof jwk);
  assert_int_equal(parse_one(jwk, &set, err, sizeof err), -EINVAL);
  assert_null(set);

  /* The same point unmodified is fine. */
  jwk_ec(g_ec, "good", "", false, jwk, sizeof jwk);
  assert_int_equal(parse_one(jwk, &set, err, sizeof err), 0);
  assert_int_equal(rly_jwks_count(set), 1);
  rly_jwks_free(set);
}

static void test_jwks_skips_inconsistent_keys(void **state) {
  (void)state;
  char jwk[4096], err[256];
  rly_jwks *set = NULL;
  const char *extras[] = {
      ",\"alg\":\"ES384\"",      /* alg contradicts the curve */
      ",\"alg\":\"HS256\"",      /* alg not allowed */
      ",\"d\":\"AAAA\"",         /* private part published */
      ",\"key_ops\":[\"sign\"]", /* not for verification */
      ",\"use\":5",              /* use of the wrong type */
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(extras); i++) {
    jwk_ec(g_ec, "k", extras[i], false, jwk, sizeof jwk);
    assert_int_equal(parse_one(jwk, &set, err, sizeof err), -EINVAL);
    assert_null(set);
  }
  /* RSA: an even modulus, e = 1 or an even e is not an RSA key. */
  BIGNUM *bn = NULL;
  uint8_t nb[256];
  char n_ok[400], n_even[400], rsajwk[1024];
  assert_int_equal(EVP_PKEY_get_bn_param(g_rsa, OSSL_PKEY_PARAM_RSA_N, &bn), 1);
  assert_int_equal(BN_bn2bin(bn, nb), 256);
  BN_free(bn);
  b64(nb, sizeof nb, n_ok, sizeof n_ok);
  nb[255] &= 0xfe;
  b64(nb, sizeof nb, n_even, sizeof n_even);
  const struct {
    const char *n, *e;
    int rc;
  } rsa_cases[] = {{n_ok, "AQAB", 0},
                   {n_even, "AQAB", -EINVAL},
                   {n_ok, "AQ", -EINVAL},
                   {n_ok, "AQAA", -EINVAL},
                   {n_ok, "AQAAAAAB", -EINVAL} /* e over 32 bits */};
  for (size_t i = 0; i < CM_ARRAY_LEN(rsa_cases); i++) {
    snprintf(rsajwk, sizeof rsajwk, "{\"kty\":\"RSA\",\"e\":\"%s\",\"n\":\"%s\"}", rsa_cases[i].e,
             rsa_cases[i].n);
    assert_int_equal(parse_one(rsajwk, &set, err, sizeof err), rsa_cases[i].rc);
    rly_jwks_free(set);
    set = NULL;
  }
  /* A short coordinate (leading zero dropped) is not a valid encoding. */
  assert_int_equal(parse_one("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AQ\",\"y\":\"AQ\"}", &set,
                             err, sizeof err),
                   -EINVAL);
  assert_int_equal(
      parse_one("{\"kty\":\"RSA\",\"n\":\"!!\",\"e\":\"AQAB\"}", &set, err, sizeof err), -EINVAL);
}

static void test_jwks_document_errors(void **state) {
  (void)state;
  char err[256];
  rly_jwks *set = NULL;
  const char *bad[] = {
      "", "[]", "{}", "{\"keys\":{}}", "not json", "{\"keys\":[]}", "{\"keys\":[1,\"x\",null]}"};
  for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
    assert_true(rly_jwks_parse(bad[i], strlen(bad[i]), &set, err, sizeof err) < 0);
    assert_null(set);
  }
  /* More than 64 entries: refused as a whole. */
  static char big[65 * 8 + 32];
  strcpy(big, "{\"keys\":[");
  for (int i = 0; i < 65; i++)
    strcat(big, i ? ",{}" : "{}");
  strcat(big, "]}");
  assert_int_equal(rly_jwks_parse(big, strlen(big), &set, err, sizeof err), -EMSGSIZE);
  assert_int_equal(rly_jwks_parse("{}", RLY_JWKS_MAX_BYTES + 1, &set, err, sizeof err), -EMSGSIZE);
}

/* ---- JWT: accepted tokens ---------------------------------------------------------- */

static void test_rs256_ok(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, ",\"scope\":\"openid swsrs:session:create  swsrs:session:read\"");
  sign_token(g_rsa, "RS256", "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"rsa1\"}", pl, false, tok,
             sizeof tok);
  rly_principal p;
  assert_int_equal(verify_at(&g_pol, tok, NOW, &p), RLY_JWT_OK);
  assert_string_equal(p.subject, "alice");
  assert_string_equal(p.issuer, ISS);
  assert_int_equal(p.scopes.n, 3);
  assert_true(rly_principal_has_scope(&p, "swsrs:session:create"));
  assert_true(rly_principal_has_scope(&p, "swsrs:session:read"));
  assert_false(rly_principal_has_scope(&p, "swsrs:session:delete"));
  assert_false(rly_principal_has_scope(&p, "swsrs:session"));
  assert_string_equal(g_kid, "rsa1");
  rly_principal_free(&p);
  assert_null(p.subject);
}

static void test_es256_ok(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, ",\"scp\":[\"swsrs:session:delete\",\"swsrs:session:read\"]");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"ec1\"}", pl, false,
             tok, sizeof tok);
  rly_principal p;
  assert_int_equal(verify_at(&g_pol, tok, NOW, &p), RLY_JWT_OK);
  assert_string_equal(p.subject, "alice");
  assert_true(rly_principal_has_scope(&p, "swsrs:session:delete"));
  assert_true(rly_principal_has_scope(&p, "swsrs:session:read"));
  assert_false(rly_principal_has_scope(&p, "swsrs:session:create"));
  rly_principal_free(&p);
}

static void test_other_algs_ok(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, "");
  sign_token(g_ec384, "ES384", "{\"alg\":\"ES384\",\"kid\":\"ec384\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);
  sign_token(g_ec521, "ES512", "{\"alg\":\"ES512\",\"kid\":\"ec521\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);
  sign_token(g_rsa, "RS384", "{\"alg\":\"RS384\",\"kid\":\"rsa1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);
  sign_token(g_rsa, "RS512", "{\"alg\":\"RS512\",\"kid\":\"rsa1\",\"typ\":\"application/jwt\"}", pl,
             false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);
  /* ES512 signed by the P-384 key under the P-521 key's kid: wrong curve. */
  sign_token(g_ec384, "ES512", "{\"alg\":\"ES512\",\"kid\":\"ec384\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
}

static void test_scope_and_scp_merged(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, ",\"scope\":\"a b\",\"scp\":\"b c\"");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  rly_principal p;
  assert_int_equal(verify_at(&g_pol, tok, NOW, &p), RLY_JWT_OK);
  assert_int_equal(p.scopes.n, 3);
  assert_true(rly_principal_has_scope(&p, "c"));
  rly_principal_free(&p);
  /* No scope claim at all: a principal with no scopes. */
  claims(pl, sizeof pl, "");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify_at(&g_pol, tok, NOW, &p), RLY_JWT_OK);
  assert_int_equal(p.scopes.n, 0);
  assert_false(rly_principal_has_scope(&p, "a"));
  rly_principal_free(&p);
}

static void test_no_kid_uses_only_fitting_key(void **state) {
  (void)state;
  char pl[1024], tok[4096], err[256];
  claims(pl, sizeof pl, "");
  /* One RSA key and one P-256 key in the set: each is found without kid. */
  sign_token(g_rsa, "RS256", "{\"alg\":\"RS256\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);
  assert_string_equal(g_kid, "");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);

  /* Two RSA keys: ambiguous without kid. */
  char k1[4096], k2[4096], json[9000];
  jwk_rsa(g_rsa, "a", k1, sizeof k1);
  jwk_rsa(g_rsa2, "b", k2, sizeof k2);
  snprintf(json, sizeof json, "{\"keys\":[%s,%s]}", k1, k2);
  rly_jwks *set = NULL;
  assert_int_equal(rly_jwks_parse(json, strlen(json), &set, err, sizeof err), 0);
  sign_token(g_rsa, "RS256", "{\"alg\":\"RS256\"}", pl, false, tok, sizeof tok);
  rly_principal p;
  assert_int_equal(rly_jwt_verify(set, &g_pol, tok, NOW, &p, NULL, 0, err, sizeof err),
                   RLY_JWT_UNKNOWN_KID);
  sign_token(g_rsa2, "RS256", "{\"alg\":\"RS256\",\"kid\":\"b\"}", pl, false, tok, sizeof tok);
  assert_int_equal(rly_jwt_verify(set, &g_pol, tok, NOW, &p, NULL, 0, err, sizeof err), RLY_JWT_OK);
  rly_principal_free(&p);
  rly_jwks_free(set);
}

/* ---- JWT: time ---------------------------------------------------------------------- */

static void test_expiry_and_leeway(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims_full(pl, sizeof pl, ISS, "\"" AUD "\"", NOW - 31, "");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_EXPIRED);
  assert_string_equal(rly_jwt_result_str(RLY_JWT_EXPIRED), "expired");

  claims_full(pl, sizeof pl, ISS, "\"" AUD "\"", NOW - 29, "");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK); /* within the 30 s leeway */
  rly_jwt_policy strict = g_pol;
  strict.leeway_s = 0;
  rly_principal p;
  assert_int_equal(verify_at(&strict, tok, NOW, &p), RLY_JWT_EXPIRED);
  assert_int_equal(verify_at(&strict, tok, NOW - 30, &p), RLY_JWT_OK);
  rly_principal_free(&p);
  assert_int_equal(verify_at(&strict, tok, NOW - 29, &p), RLY_JWT_EXPIRED); /* now == exp */
  strict.leeway_s = -100; /* negative leeway counts as none */
  assert_int_equal(verify_at(&strict, tok, NOW - 29, &p), RLY_JWT_EXPIRED);

  /* Huge exp and leeway do not overflow. */
  strict.leeway_s = INT64_MAX;
  claims_full(pl, sizeof pl, ISS, "\"" AUD "\"", 9223372036854775807LL, "");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify_at(&strict, tok, NOW, &p), RLY_JWT_OK);
  rly_principal_free(&p);
}

static void test_nbf_and_leeway(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, ",\"nbf\":1700000031");
  sign_token(g_rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_NOT_YET_VALID);
  claims(pl, sizeof pl, ",\"nbf\":1700000029.5");
  sign_token(g_rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);
  rly_jwt_policy strict = g_pol;
  strict.leeway_s = 0;
  rly_principal p;
  assert_int_equal(verify_at(&strict, tok, NOW, &p), RLY_JWT_NOT_YET_VALID);
  assert_int_equal(verify_at(&strict, tok, NOW + 29, &p), RLY_JWT_OK);
  rly_principal_free(&p);
  claims(pl, sizeof pl, ",\"nbf\":\"soon\"");
  sign_token(g_rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_MALFORMED);
}

/* ---- JWT: issuer, audience, required claims ---------------------------------------- */

static void test_issuer_and_audience(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  const char *hdr = "{\"alg\":\"ES256\",\"kid\":\"ec1\"}";
  claims_full(pl, sizeof pl, "https://evil.example", "\"" AUD "\"", NOW + 60, "");
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ISSUER);
  claims_full(pl, sizeof pl, ISS "/", "\"" AUD "\"", NOW + 60, ""); /* exact match only */
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ISSUER);

  claims_full(pl, sizeof pl, ISS, "\"other\"", NOW + 60, "");
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_AUDIENCE);
  claims_full(pl, sizeof pl, ISS, "[\"other\",\"relay\",7]", NOW + 60, "");
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_AUDIENCE);
  claims_full(pl, sizeof pl, ISS, "[\"other\",\"" AUD "\"]", NOW + 60, "");
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_OK);
  claims_full(pl, sizeof pl, ISS, "null", NOW + 60, "");
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_AUDIENCE);

  /* A policy without audience fails closed. */
  rly_jwt_policy noaud = {ISS, NULL, 0};
  rly_principal p;
  claims(pl, sizeof pl, "");
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify_at(&noaud, tok, NOW, &p), RLY_JWT_BAD_AUDIENCE);
}

static void test_required_claims(void **state) {
  (void)state;
  char tok[4096];
  const char *hdr = "{\"alg\":\"ES256\",\"kid\":\"ec1\"}";
  sign_token(g_ec, "ES256", hdr, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"alice\"}",
             false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_MALFORMED); /* no exp */
  sign_token(g_ec, "ES256", hdr, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1700000300}",
             false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_MALFORMED); /* no sub */
  sign_token(g_ec, "ES256", hdr,
             "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":7,\"exp\":1700000300}", false, tok,
             sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_MALFORMED); /* sub not a string */
  sign_token(g_ec, "ES256", hdr, "[1,2]", false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_MALFORMED); /* payload not an object */
}

/* ---- JWT: algorithm confusion and keys ------------------------------------------ */

static void test_alg_none_refused(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, "");
  size_t n = signing_input("{\"alg\":\"none\"}", pl, tok, sizeof tok);
  strcpy(tok + n, ".");
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
  assert_string_equal(rly_jwt_result_str(RLY_JWT_BAD_ALG), "bad_alg");
  n = signing_input("{\"alg\":\"none\",\"kid\":\"rsa1\"}", pl, tok, sizeof tok);
  strcpy(tok + n, ".");
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
  assert_string_equal(g_kid, "rsa1");
}

static void test_hs256_with_public_key_refused(void **state) {
  (void)state;
  char pl[1024], tok[4096], sig[128];
  const char *pem = rly_jwks_key(g_set, 0)->pem; /* rsa1, exactly as the verifier holds it */
  claims(pl, sizeof pl, "");
  size_t n = signing_input("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", pl, tok, sizeof tok);
  uint8_t mac[64];
  size_t maclen = 0;
  assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, pem, strlen(pem), (uint8_t *)tok, n,
                            mac, sizeof mac, &maclen));
  b64(mac, maclen, sig, sizeof sig);
  snprintf(tok + n, sizeof tok - n, ".%s", sig);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
  /* PS256 is refused too (libjwt 1.10 and this verifier lack it). */
  sign_token(g_rsa, "RS256", "{\"alg\":\"PS256\",\"kid\":\"rsa1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
  sign_token(g_rsa, "RS256", "{\"alg\":\"rs256\",\"kid\":\"rsa1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
}

static void test_kid_of_other_key_type(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, "");
  sign_token(g_rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
  /* ES256 under an RSA kid. */
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
  /* ES384 on a P-256 key. */
  sign_token(g_ec, "ES384", "{\"alg\":\"ES384\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_ALG);
}

static void test_unknown_kid(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, "");
  sign_token(g_rsa2, "RS256", "{\"alg\":\"RS256\",\"kid\":\"rotated-2\"}", pl, false, tok,
             sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_UNKNOWN_KID);
  assert_string_equal(g_kid, "rotated-2");
  assert_string_equal(rly_jwt_result_str(RLY_JWT_UNKNOWN_KID), "unknown_kid");
  /* A small kid buffer truncates and stays terminated. */
  char small[4], err[128];
  rly_principal p;
  assert_int_equal(
      rly_jwt_verify(g_set, &g_pol, tok, NOW, &p, small, sizeof small, err, sizeof err),
      RLY_JWT_UNKNOWN_KID);
  assert_string_equal(small, "rot");
}

static void test_bad_signatures(void **state) {
  (void)state;
  char pl[1024], pl2[1024], tok[4096], tok2[4096];
  claims(pl, sizeof pl, ",\"scope\":\"swsrs:session:read\"");
  claims(pl2, sizeof pl2, ",\"scope\":\"swsrs:session:delete\"");
  const char *hdr = "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}";
  /* Tampered payload: the other payload with the first signature. */
  sign_token(g_rsa, "RS256", hdr, pl, false, tok, sizeof tok);
  sign_token(g_rsa, "RS256", hdr, pl2, false, tok2, sizeof tok2);
  char forged[4096];
  size_t n = (size_t)(strrchr(tok2, '.') - tok2);
  snprintf(forged, sizeof forged, "%.*s%s", (int)n, tok2, strrchr(tok, '.'));
  assert_int_equal(verify(forged), RLY_JWT_BAD_SIGNATURE);
  assert_string_equal(rly_jwt_result_str(RLY_JWT_BAD_SIGNATURE), "bad_signature");
  /* Signed by another RSA key. */
  sign_token(g_rsa2, "RS256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_SIGNATURE);
  /* Empty signature. */
  n = signing_input(hdr, pl, tok, sizeof tok);
  strcpy(tok + n, ".");
  assert_int_equal(verify(tok), RLY_JWT_BAD_SIGNATURE);

  /* ES256 with the DER signature OpenSSL produces, not raw R||S. */
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, true, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_BAD_SIGNATURE);
  /* ES256 with a flipped bit in S. */
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  char *last = tok + strlen(tok) - 2;
  *last = *last == 'A' ? 'B' : 'A';
  assert_int_equal(verify(tok), RLY_JWT_BAD_SIGNATURE);
}

static void test_malformed(void **state) {
  (void)state;
  char pl[1024], tok[4096];
  claims(pl, sizeof pl, "");
  sign_token(g_ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", pl, false, tok, sizeof tok);
  const char *good = tok;
  char two[4096], four[4096], badb64[4096];
  snprintf(two, sizeof two, "%.*s", (int)(strrchr(good, '.') - good), good);
  snprintf(four, sizeof four, "%s.AAAA", good);
  snprintf(badb64, sizeof badb64, "%s", good);
  badb64[3] = '*';
  const char *cases[] = {"",  ".",  "..",   "a.b",         "a..c",         ".b.c",
                         two, four, badb64, "e30.e30.!!!", "e30=.e30.AAAA"};
  for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
    assert_int_equal(verify(cases[i]), RLY_JWT_MALFORMED);
    assert_string_equal(rly_jwt_result_str(RLY_JWT_MALFORMED), "malformed");
  }
  /* Headers that are not usable JSON objects. */
  const char *hdrs[] = {
      "not json",
      "[\"alg\",\"ES256\"]",
      "{\"typ\":\"JWT\"}",                                     /* no alg */
      "{\"alg\":\"ES256\",\"alg\":\"ES256\",\"kid\":\"ec1\"}", /* duplicate name */
      "{\"alg\":\"ES256\",\"kid\":\"ec1\",\"typ\":\"dpop+jwt\"}",
      "{\"alg\":\"ES256\",\"kid\":\"ec1\",\"crit\":[\"exp\"],\"exp\":1}",
      "{\"alg\":\"ES256\",\"kid\":7}",
      "{\"alg\":null}",
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(hdrs); i++) {
    sign_token(g_ec, "ES256", hdrs[i], pl, false, tok, sizeof tok);
    assert_int_equal(verify(tok), RLY_JWT_MALFORMED);
  }
  /* Over-long token and over-long kid. */
  static char huge[RLY_JWT_MAX_TOKEN + 64];
  memset(huge, 'A', sizeof huge - 1);
  huge[10] = '.';
  huge[20] = '.';
  assert_int_equal(verify(huge), RLY_JWT_MALFORMED);
  char kid[400], hdr[512];
  memset(kid, 'k', sizeof kid - 1);
  kid[sizeof kid - 1] = '\0';
  snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"%s\"}", kid);
  sign_token(g_ec, "ES256", hdr, pl, false, tok, sizeof tok);
  assert_int_equal(verify(tok), RLY_JWT_MALFORMED);
  /* NULL token and missing arguments. */
  rly_principal p;
  assert_int_equal(rly_jwt_verify(g_set, &g_pol, NULL, NOW, &p, NULL, 0, NULL, 0),
                   RLY_JWT_MALFORMED);
  assert_int_equal(rly_jwt_verify(NULL, &g_pol, good, NOW, &p, NULL, 0, NULL, 0), RLY_JWT_INTERNAL);
}

static void test_result_strings(void **state) {
  (void)state;
  assert_string_equal(rly_jwt_result_str(RLY_JWT_OK), "ok");
  assert_string_equal(rly_jwt_result_str(RLY_JWT_NOT_YET_VALID), "not_yet_valid");
  assert_string_equal(rly_jwt_result_str(RLY_JWT_BAD_ISSUER), "bad_issuer");
  assert_string_equal(rly_jwt_result_str(RLY_JWT_BAD_AUDIENCE), "bad_audience");
  assert_string_equal(rly_jwt_result_str(RLY_JWT_INTERNAL), "internal_error");
  assert_string_equal(rly_jwt_result_str(12345), "unknown");
}

/* ---- OIDC discovery ------------------------------------------------------------------ */

static int disc(const char *json, rly_oidc_discovery *d, char *err, size_t errlen) {
  return rly_oidc_discovery_parse(json, strlen(json), d, err, errlen);
}

static void test_discovery_ok(void **state) {
  (void)state;
  const char *doc = "{\"issuer\":\"https://idp.example.com/realms/relay\","
                    "\"jwks_uri\":\"https://idp.example.com/realms/relay/certs\","
                    "\"authorization_endpoint\":\"https://idp.example.com/auth\","
                    "\"token_endpoint\":\"https://idp.example.com:8443/token\","
                    "\"device_authorization_endpoint\":\"https://idp.example.com/device\","
                    "\"scopes_supported\":[\"openid\",\"swsrs:session:create\"],"
                    "\"response_types_supported\":[\"code\"],\"claims_supported\":[\"sub\"]}";
  rly_oidc_discovery d;
  char err[256];
  assert_int_equal(disc(doc, &d, err, sizeof err), 0);
  assert_string_equal(d.issuer, "https://idp.example.com/realms/relay");
  assert_string_equal(d.jwks_uri, "https://idp.example.com/realms/relay/certs");
  assert_string_equal(d.authorization_endpoint, "https://idp.example.com/auth");
  assert_string_equal(d.token_endpoint, "https://idp.example.com:8443/token");
  assert_string_equal(d.device_authorization_endpoint, "https://idp.example.com/device");
  assert_int_equal(d.scopes_supported.n, 2);
  assert_string_equal(d.scopes_supported.v[1], "swsrs:session:create");
  rly_oidc_discovery_free(&d);
  assert_null(d.issuer);

  /* Minimal document; http allowed on loopback hosts. */
  const char *loop[] = {"http://127.0.0.1:8080/jwks", "http://localhost/jwks",
                        "http://[::1]:9000/jwks", "HTTP://LOCALHOST:1/"};
  for (size_t i = 0; i < CM_ARRAY_LEN(loop); i++) {
    char json[512];
    snprintf(json, sizeof json, "{\"issuer\":\"http://127.0.0.1:8080\",\"jwks_uri\":\"%s\"}",
             loop[i]);
    assert_int_equal(disc(json, &d, err, sizeof err), 0);
    assert_string_equal(d.jwks_uri, loop[i]);
    assert_null(d.token_endpoint);
    assert_int_equal(d.scopes_supported.n, 0);
    rly_oidc_discovery_free(&d);
  }
}

static void test_discovery_errors(void **state) {
  (void)state;
  rly_oidc_discovery d;
  char err[256];
  assert_int_equal(disc("{\"issuer\":\"https://idp.example.com\"}", &d, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "jwks_uri"));
  assert_null(d.issuer); /* nothing left behind on error */
  assert_int_equal(disc("{\"jwks_uri\":\"https://idp.example.com/k\"}", &d, err, sizeof err),
                   -EINVAL);
  assert_non_null(strstr(err, "issuer"));

  const char *bad_uris[] = {
      "http://idp.example.com/jwks", /* http off loopback */
      "http://10.0.0.1/jwks",
      "http://localhost.evil.com/jwks",
      "http://127.0.0.1@evil.com/jwks", /* userinfo disguising the host */
      "https://user@idp.example.com/jwks",
      "https://idp.example.com/jwks#frag",
      "ftp://idp.example.com/jwks",
      "https:///jwks",
      "https://idp.example.com:99999x/",
      "https://idp.example.com/a b",
      "/relative",
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(bad_uris); i++) {
    char json[512];
    snprintf(json, sizeof json, "{\"issuer\":\"https://idp.example.com\",\"jwks_uri\":\"%s\"}",
             bad_uris[i]);
    assert_int_equal(disc(json, &d, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "jwks_uri"));
  }
  const char *bad_docs[] = {
      "",
      "null",
      "[]",
      "{",
      "{\"issuer\":5,\"jwks_uri\":\"https://a/\"}",
      "{\"issuer\":\"https://a\",\"jwks_uri\":\"https://a/\",\"scopes_supported\":\"openid\"}",
      "{\"issuer\":\"https://a\",\"jwks_uri\":\"https://a/\",\"scopes_supported\":[1]}",
      "{\"issuer\":\"https://a\",\"jwks_uri\":\"https://a/\",\"token_endpoint\":\"http://a/\"}",
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(bad_docs); i++) {
    assert_true(disc(bad_docs[i], &d, err, sizeof err) < 0);
    assert_null(d.issuer);
    assert_null(d.jwks_uri);
  }
  assert_int_equal(rly_oidc_discovery_parse("{}", RLY_OIDC_MAX_BYTES + 1, &d, err, sizeof err),
                   -EMSGSIZE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_jwks_keeps_usable_keys),
      cmocka_unit_test(test_jwks_weak_rsa_and_off_curve_skipped),
      cmocka_unit_test(test_jwks_skips_inconsistent_keys),
      cmocka_unit_test(test_jwks_document_errors),
      cmocka_unit_test(test_rs256_ok),
      cmocka_unit_test(test_es256_ok),
      cmocka_unit_test(test_other_algs_ok),
      cmocka_unit_test(test_scope_and_scp_merged),
      cmocka_unit_test(test_no_kid_uses_only_fitting_key),
      cmocka_unit_test(test_expiry_and_leeway),
      cmocka_unit_test(test_nbf_and_leeway),
      cmocka_unit_test(test_issuer_and_audience),
      cmocka_unit_test(test_required_claims),
      cmocka_unit_test(test_alg_none_refused),
      cmocka_unit_test(test_hs256_with_public_key_refused),
      cmocka_unit_test(test_kid_of_other_key_type),
      cmocka_unit_test(test_unknown_kid),
      cmocka_unit_test(test_bad_signatures),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_result_strings),
      cmocka_unit_test(test_discovery_ok),
      cmocka_unit_test(test_discovery_errors),
  };
  return cmocka_run_group_tests_name("jwt", tests, group_setup, group_teardown);
}
