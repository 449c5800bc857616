/*
 * jwt.c — OIDC discovery parsing, JWKS → OpenSSL keys, and JWT (JWS
 * compact) verification for the admin API; see relay/jwt.h.
 *
 * Why signatures are verified with OpenSSL EVP and not libjwt 1.10's
 * jwt_decode: libjwt 1.10.2 refuses any "typ" other than "JWT"
 * (jwt_verify_head), so RFC 9068 access tokens ("typ":"at+jwt") could never
 * pass; it would also re-parse the PEM on every call and decodes base64
 * leniently.  Doing the check ourselves costs one EVP_DigestVerify and
 * keeps one code path for every algorithm.  The header and payload are
 * decoded here (strict base64url, jansson with duplicate keys refused) so
 * the algorithm is decided before any key is touched, and ECDSA signatures
 * are converted from JOSE's raw R||S to the DER OpenSSL expects, refusing
 * any other length (so a DER signature in a token never verifies).
 *
 * Header parameters that name keys (jku, jwk, x5u, x5c) are ignored on
 * purpose: keys come only from the configured JWKS.
 */
#include "relay/jwt.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* jwk_load's "this key is unusable, skip it" (not an error for the set). */
#define JWK_SKIP 1

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ------------------------------------------------------------------------
 * Algorithms and curves we accept.
 * ---------------------------------------------------------------------- */
enum key_family { FAM_RSA = 1, FAM_EC };

typedef struct curve_info {
  const char *crv;   /* JWK name */
  const char *group; /* OpenSSL group name */
  size_t len;        /* bytes of a coordinate, and of R and S */
  int bits;
} curve_info;

static const curve_info curves[] = {
    {"P-256", "prime256v1", 32, 256},
    {"P-384", "secp384r1", 48, 384},
    {"P-521", "secp521r1", 66, 521},
};

typedef struct alg_info {
  const char *name;
  enum key_family family;
  const EVP_MD *(*md)(void);
  const curve_info *curve; /* ES*: the one curve the alg is defined on */
} alg_info;

/* The allowlist.  none, HS* (symmetric: the "secret" would be our public
 * key) and PS* are absent on purpose. */
static const alg_info algs[] = {
    {"RS256", FAM_RSA, EVP_sha256, NULL},      {"RS384", FAM_RSA, EVP_sha384, NULL},
    {"RS512", FAM_RSA, EVP_sha512, NULL},      {"ES256", FAM_EC, EVP_sha256, &curves[0]},
    {"ES384", FAM_EC, EVP_sha384, &curves[1]}, {"ES512", FAM_EC, EVP_sha512, &curves[2]},
};

static const alg_info *alg_find(const char *name) {
  for (size_t i = 0; i < CM_ARRAY_LEN(algs); i++)
    if (strcmp(algs[i].name, name) == 0) return &algs[i];
  return NULL;
}

static const curve_info *curve_find(const char *crv) {
  for (size_t i = 0; i < CM_ARRAY_LEN(curves); i++)
    if (strcmp(curves[i].crv, crv) == 0) return &curves[i];
  return NULL;
}

/* ------------------------------------------------------------------------
 * Small JSON and base64url helpers.
 * ---------------------------------------------------------------------- */

/* The string member `key` of obj, or NULL when absent.  *bad is set when
 * the member exists but is not a string of at most max bytes. */
static const char *json_str(const json_t *obj, const char *key, size_t max, bool *bad) {
  const json_t *v = json_object_get(obj, key);
  if (!v) return NULL;
  if (!json_is_string(v) || json_string_length(v) > max) {
    *bad = true;
    return NULL;
  }
  return json_string_value(v);
}

/* Parses bytes as one JSON object.  Duplicate names are refused so two
 * readers of the same document can never see different values (RFC 7515
 * §4: a JOSE header with duplicate names must be rejected or read
 * consistently). */
static json_t *json_object_load(const void *data, size_t len) {
  json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
  if (v && !json_is_object(v)) {
    json_decref(v);
    v = NULL;
  }
  return v;
}

/* Decodes base64url into a fresh heap buffer (NUL-terminated so it may be
 * read as text).  Returns the length, or -1 on bad input or no memory. */
static long b64_alloc(const char *in, size_t n, uint8_t **out) {
  size_t cap = n / 4 * 3 + 3;
  *out = malloc(cap + 1);
  if (!*out) return -1;
  long got = cm_b64url_decode(in, n, *out, cap);
  if (got < 0) {
    free(*out);
    *out = NULL;
    return -1;
  }
  (*out)[got] = '\0';
  return got;
}

/* Decodes a JWK member into buf; returns its length, or -1 when absent,
 * not a string, not base64url, or longer than buflen. */
static long jwk_bytes(const json_t *k, const char *name, uint8_t *buf, size_t buflen) {
  bool bad = false;
  const char *s = json_str(k, name, buflen / 3 * 4 + 8, &bad);
  if (!s || bad) return -1;
  return cm_b64url_decode(s, strlen(s), buf, buflen);
}

/* ------------------------------------------------------------------------
 * OpenID Connect discovery.
 * ---------------------------------------------------------------------- */

/* True when the numeric or named host is loopback. */
static bool host_is_loopback(const char *host) {
  return strcasecmp(host, "localhost") == 0 || cm_host_is_loopback(host);
}

/* Splits the authority "host[:port]" or "[v6][:port]" into host; false
 * when it is not of that shape. */
static bool authority_host(const char *auth, size_t alen, char *host, size_t hostlen) {
  const char *port = NULL, *h = auth, *hend;
  if (auth[0] == '[') {
    const char *close = memchr(auth, ']', alen);
    if (!close) return false;
    h = auth + 1;
    hend = close;
    if (close + 1 < auth + alen) {
      if (close[1] != ':') return false;
      port = close + 2;
    }
  } else {
    const char *colon = memchr(auth, ':', alen);
    hend = colon ? colon : auth + alen;
    if (colon) port = colon + 1;
  }
  if (port) {
    size_t plen = (size_t)(auth + alen - port);
    if (plen == 0 || plen > 5 || strspn(port, "0123456789") < plen) return false;
  }
  size_t hl = (size_t)(hend - h);
  if (hl == 0 || hl >= hostlen) return false;
  memcpy(host, h, hl);
  host[hl] = '\0';
  return true;
}

/* An endpoint must be https, or http on a loopback host (tests); no
 * userinfo (a classic way to disguise the real host), no fragment, no
 * whitespace or control characters. */
static bool url_acceptable(const char *url) {
  bool https;
  const char *p;
  if (strncasecmp(url, "https://", 8) == 0) {
    https = true;
    p = url + 8;
  } else if (strncasecmp(url, "http://", 7) == 0) {
    https = false;
    p = url + 7;
  } else {
    return false;
  }
  for (const char *c = url; *c; c++)
    if ((unsigned char)*c <= 0x20 || *c == 0x7f || *c == '#') return false;
  size_t alen = strcspn(p, "/?");
  char host[256];
  if (alen == 0 || memchr(p, '@', alen) || !authority_host(p, alen, host, sizeof host))
    return false;
  return https || host_is_loopback(host);
}

/* Copies the URL member `name` into *dst.  Returns 0 (also when an
 * optional member is absent) or a negative code with a message. */
static int take_url(const json_t *root, const char *name, bool required, char **dst, char *err,
                    size_t errlen) {
  bool bad = false;
  const char *s = json_str(root, name, RLY_OIDC_MAX_URL, &bad);
  if (bad) {
    seterr(err, errlen, "discovery: %s is not a string of at most %d bytes", name,
           RLY_OIDC_MAX_URL);
    return -EINVAL;
  }
  if (!s) {
    if (!required) return 0;
    seterr(err, errlen, "discovery: %s is missing", name);
    return -EINVAL;
  }
  if (!url_acceptable(s)) {
    seterr(err, errlen, "discovery: %s must be an https URL (http only on loopback)", name);
    return -EINVAL;
  }
  if (!(*dst = strdup(s))) {
    seterr(err, errlen, "out of memory");
    return -ENOMEM;
  }
  return 0;
}

static int take_scopes(const json_t *root, cm_strlist *l, char *err, size_t errlen) {
  const json_t *a = json_object_get(root, "scopes_supported");
  if (!a) return 0;
  if (!json_is_array(a) || json_array_size(a) > RLY_OIDC_MAX_SCOPES) {
    seterr(err, errlen, "discovery: scopes_supported must be an array of at most %d strings",
           RLY_OIDC_MAX_SCOPES);
    return -EINVAL;
  }
  size_t i;
  const json_t *v;
  json_array_foreach(a, i, v) {
    if (!json_is_string(v) || json_string_length(v) > 256) {
      seterr(err, errlen, "discovery: scopes_supported[%zu] is not a short string", i);
      return -EINVAL;
    }
    if (cm_strlist_push(l, json_string_value(v)) != 0) {
      seterr(err, errlen, "out of memory");
      return -ENOMEM;
    }
  }
  return 0;
}

int rly_oidc_discovery_parse(const char *json, size_t len, rly_oidc_discovery *out, char *err,
                             size_t errlen) {
  memset(out, 0, sizeof *out);
  if (!json || len == 0 || len > RLY_OIDC_MAX_BYTES) {
    seterr(err, errlen, "discovery: document is empty or over %d bytes", RLY_OIDC_MAX_BYTES);
    return json && len ? -EMSGSIZE : -EINVAL;
  }
  json_t *root = json_object_load(json, len);
  if (!root) {
    seterr(err, errlen, "discovery: document is not a JSON object");
    return -EINVAL;
  }
  struct {
    const char *name;
    char **dst;
    bool required;
  } urls[] = {
      {"issuer", &out->issuer, true},
      {"jwks_uri", &out->jwks_uri, true},
      {"authorization_endpoint", &out->authorization_endpoint, false},
      {"token_endpoint", &out->token_endpoint, false},
      {"device_authorization_endpoint", &out->device_authorization_endpoint, false},
  };
  int rc = 0;
  for (size_t i = 0; i < CM_ARRAY_LEN(urls) && rc == 0; i++)
    rc = take_url(root, urls[i].name, urls[i].required, urls[i].dst, err, errlen);
  if (rc == 0) rc = take_scopes(root, &out->scopes_supported, err, errlen);
  json_decref(root);
  if (rc != 0) rly_oidc_discovery_free(out);
  return rc;
}

void rly_oidc_discovery_free(rly_oidc_discovery *d) {
  if (!d) return;
  free(d->issuer);
  free(d->jwks_uri);
  free(d->authorization_endpoint);
  free(d->token_endpoint);
  free(d->device_authorization_endpoint);
  cm_strlist_free(&d->scopes_supported);
  memset(d, 0, sizeof *d);
}

/* ------------------------------------------------------------------------
 * JWKS.
 * ---------------------------------------------------------------------- */
typedef struct jwk_entry {
  rly_jwk pub; /* strings point into the owned members below */
  char *kid, *alg, *pem;
  EVP_PKEY *pkey;
  enum key_family family;
  const curve_info *curve; /* EC only */
} jwk_entry;

struct rly_jwks {
  jwk_entry *keys;
  size_t n;
  size_t skipped;
};

/* Builds a public EVP_PKEY of `type` from params.  With check, OpenSSL's
 * public-key validation runs too: for EC that is the point on the curve,
 * not at infinity, of the right order.  RSA is not run through it: its
 * check is Miller-Rabin on the modulus (seconds for 64 large keys) and
 * proves nothing useful against whoever publishes the JWKS, who can sign
 * anyway; rsa_from_jwk does the cheap checks itself. */
static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld, bool check) {
  OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
  EVP_PKEY *pkey = NULL;
  if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
      EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
    pkey = NULL;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  if (pkey && check) {
    EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!chk || EVP_PKEY_public_check(chk) != 1) {
      EVP_PKEY_free(pkey);
      pkey = NULL;
    }
    EVP_PKEY_CTX_free(chk);
  }
  return pkey;
}

static EVP_PKEY *rsa_from_jwk(const json_t *k, int *bits) {
  uint8_t nb[RLY_RSA_MAX_BITS / 8 + 1], eb[8];
  long nl = jwk_bytes(k, "n", nb, sizeof nb), el = jwk_bytes(k, "e", eb, sizeof eb);
  if (nl <= 0 || el <= 0) return NULL;
  BIGNUM *n = BN_bin2bn(nb, (int)nl, NULL), *e = BN_bin2bn(eb, (int)el, NULL);
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  EVP_PKEY *pkey = NULL;
  *bits = n ? BN_num_bits(n) : 0;
  /* Small moduli are forgeable in practice; huge ones and huge exponents
   * only make each verification expensive.  An even modulus or exponent,
   * or e = 1, is not an RSA key at all. */
  if (n && e && bld && *bits >= RLY_RSA_MIN_BITS && *bits <= RLY_RSA_MAX_BITS && BN_is_odd(n) &&
      BN_num_bits(e) <= 32 && BN_is_odd(e) && !BN_is_one(e) &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) == 1)
    pkey = pkey_from_params("RSA", bld, false);
  OSSL_PARAM_BLD_free(bld);
  BN_free(n);
  BN_free(e);
  return pkey;
}

static EVP_PKEY *ec_from_jwk(const json_t *k, const curve_info **curve) {
  bool bad = false;
  const char *crv = json_str(k, "crv", 16, &bad);
  const curve_info *c = crv ? curve_find(crv) : NULL;
  if (!c) return NULL;
  /* RFC 7518 §6.2.1.2: coordinates are full-length, leading zeros kept. */
  uint8_t x[66], y[66], pt[1 + 2 * 66];
  if (jwk_bytes(k, "x", x, sizeof x) != (long)c->len ||
      jwk_bytes(k, "y", y, sizeof y) != (long)c->len)
    return NULL;
  pt[0] = 0x04; /* uncompressed point */
  memcpy(pt + 1, x, c->len);
  memcpy(pt + 1 + c->len, y, c->len);
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  EVP_PKEY *pkey = NULL;
  if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, c->group, 0) == 1 &&
      OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * c->len) == 1)
    pkey = pkey_from_params("EC", bld, true);
  OSSL_PARAM_BLD_free(bld);
  *curve = c;
  return pkey;
}

static char *pkey_pem(EVP_PKEY *pkey) {
  BIO *b = BIO_new(BIO_s_mem());
  char *data = NULL, *pem = NULL;
  if (b && PEM_write_bio_PUBKEY(b, pkey) == 1) {
    long n = BIO_get_mem_data(b, &data);
    if (n > 0 && (pem = malloc((size_t)n + 1))) {
      memcpy(pem, data, (size_t)n);
      pem[n] = '\0';
    }
  }
  BIO_free(b);
  return pem;
}

static bool key_fits_alg(const jwk_entry *k, const alg_info *a) {
  if (k->family != a->family) return false;
  if (a->family == FAM_EC && k->curve != a->curve) return false;
  return !k->alg || strcmp(k->alg, a->name) == 0;
}

/* A JWK is for verification unless "use" or "key_ops" says otherwise. */
static bool jwk_for_verify(const json_t *k, const char *use) {
  if (use && strcmp(use, "sig") != 0) return false;
  const json_t *ops = json_object_get(k, "key_ops");
  if (!ops) return true;
  size_t i;
  const json_t *v;
  json_array_foreach(ops, i, v) {
    if (json_is_string(v) && strcmp(json_string_value(v), "verify") == 0) return true;
  }
  return false;
}

static void jwk_entry_clear(jwk_entry *e) {
  free(e->kid);
  free(e->alg);
  free(e->pem);
  EVP_PKEY_free(e->pkey);
  memset(e, 0, sizeof *e);
}

/* Records the strings of a key whose EVP_PKEY is already in e. */
static int jwk_record(jwk_entry *e, const char *kty, const char *kid, const char *alg, int bits) {
  if ((kid && !(e->kid = strdup(kid))) || (alg && !(e->alg = strdup(alg))) ||
      !(e->pem = pkey_pem(e->pkey)))
    return -ENOMEM;
  e->pub = (rly_jwk){.kid = e->kid,
                     .kty = kty,
                     .crv = e->curve ? e->curve->crv : NULL,
                     .alg = e->alg,
                     .pem = e->pem,
                     .bits = bits};
  return 0;
}

/* Loads one entry of "keys" into e.  Returns 0, JWK_SKIP, or -ENOMEM. */
static int jwk_load(const json_t *k, jwk_entry *e) {
  memset(e, 0, sizeof *e);
  if (!json_is_object(k)) return JWK_SKIP;
  bool bad = false;
  const char *kty = json_str(k, "kty", 8, &bad);
  const char *use = json_str(k, "use", 16, &bad);
  const char *kid = json_str(k, "kid", RLY_JWT_KID_MAX, &bad);
  const char *alg = json_str(k, "alg", 16, &bad);
  /* A published private part ("d") means anyone can sign: refuse it. */
  if (bad || !kty || json_object_get(k, "d") || !jwk_for_verify(k, use)) return JWK_SKIP;
  int bits = 0;
  if (strcmp(kty, "RSA") == 0) {
    e->family = FAM_RSA;
    e->pkey = rsa_from_jwk(k, &bits);
  } else if (strcmp(kty, "EC") == 0) {
    e->family = FAM_EC;
    e->pkey = ec_from_jwk(k, &e->curve);
    bits = e->curve ? e->curve->bits : 0;
  }
  ERR_clear_error(); /* a refused key leaves nothing on the thread's queue */
  /* A JWK "alg" outside our allowlist, or contradicting the key (ES384 on
   * P-256), makes the key unusable: no token could ever verify with it. */
  const alg_info *a = alg ? alg_find(alg) : NULL;
  if (!e->pkey || (alg && !a) || (a && (a->family != e->family || a->curve != e->curve))) {
    jwk_entry_clear(e);
    return JWK_SKIP;
  }
  if (jwk_record(e, e->family == FAM_RSA ? "RSA" : "EC", kid, alg, bits) != 0) {
    jwk_entry_clear(e);
    return -ENOMEM;
  }
  return 0;
}

static int jwks_fill(rly_jwks *set, const json_t *keys, char *err, size_t errlen) {
  size_t i;
  const json_t *k;
  json_array_foreach(keys, i, k) {
    int rc = jwk_load(k, &set->keys[set->n]);
    if (rc < 0) {
      seterr(err, errlen, "out of memory");
      return rc;
    }
    if (rc == JWK_SKIP)
      set->skipped++;
    else
      set->n++;
  }
  if (set->n == 0) {
    seterr(err, errlen, "JWKS: no usable signing key (%zu skipped)", set->skipped);
    return -EINVAL;
  }
  return 0;
}

int rly_jwks_parse(const char *json, size_t len, rly_jwks **out, char *err, size_t errlen) {
  *out = NULL;
  if (!json || len == 0 || len > RLY_JWKS_MAX_BYTES) {
    seterr(err, errlen, "JWKS: document is empty or over %d bytes", RLY_JWKS_MAX_BYTES);
    return json && len ? -EMSGSIZE : -EINVAL;
  }
  json_t *root = json_object_load(json, len);
  const json_t *keys = root ? json_object_get(root, "keys") : NULL;
  if (!json_is_array(keys)) {
    seterr(err, errlen, "JWKS: not a JSON object with a \"keys\" array");
    json_decref(root);
    return -EINVAL;
  }
  size_t n = json_array_size(keys);
  if (n > RLY_JWKS_MAX_KEYS) {
    seterr(err, errlen, "JWKS: %zu keys (limit %d)", n, RLY_JWKS_MAX_KEYS);
    json_decref(root);
    return -EMSGSIZE;
  }
  rly_jwks *set = calloc(1, sizeof *set);
  int rc = -ENOMEM;
  if (set && (set->keys = calloc(n ? n : 1, sizeof *set->keys)))
    rc = jwks_fill(set, keys, err, errlen);
  else
    seterr(err, errlen, "out of memory");
  json_decref(root);
  if (rc != 0) {
    rly_jwks_free(set);
    return rc;
  }
  *out = set;
  return 0;
}

void rly_jwks_free(rly_jwks *set) {
  if (!set) return;
  for (size_t i = 0; i < set->n; i++)
    jwk_entry_clear(&set->keys[i]);
  free(set->keys);
  free(set);
}

size_t rly_jwks_count(const rly_jwks *set) { return set ? set->n : 0; }
size_t rly_jwks_skipped(const rly_jwks *set) { return set ? set->skipped : 0; }

const rly_jwk *rly_jwks_key(const rly_jwks *set, size_t i) {
  return set && i < set->n ? &set->keys[i].pub : NULL;
}

bool rly_jwks_has_kid(const rly_jwks *set, const char *kid) {
  if (!set || !kid) return false;
  for (size_t i = 0; i < set->n; i++)
    if (set->keys[i].kid && strcmp(set->keys[i].kid, kid) == 0) return true;
  return false;
}

/* ------------------------------------------------------------------------
 * JWT verification.
 * ---------------------------------------------------------------------- */
typedef struct jws {
  size_t signing_len; /* bytes of "header.payload", the signed input */
  json_t *header;
  uint8_t *payload;
  long payload_len;
  uint8_t *sig;
  long sig_len;
} jws;

static void jws_clear(jws *j) {
  json_decref(j->header);
  free(j->payload);
  free(j->sig);
  memset(j, 0, sizeof *j);
}

static bool is_b64url(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_'))
      return false;
  }
  return true;
}

/* Splits and decodes the three segments.  The payload is only decoded
 * here (not parsed): its JSON is read after the signature has verified. */
static int jws_split(const char *token, jws *j, char *err, size_t errlen) {
  size_t tlen = strnlen(token, RLY_JWT_MAX_TOKEN + 1);
  if (tlen > RLY_JWT_MAX_TOKEN) {
    seterr(err, errlen, "token longer than %d bytes", RLY_JWT_MAX_TOKEN);
    return RLY_JWT_MALFORMED;
  }
  const char *d1 = memchr(token, '.', tlen);
  const char *d2 = d1 ? memchr(d1 + 1, '.', tlen - (size_t)(d1 + 1 - token)) : NULL;
  size_t hl = d1 ? (size_t)(d1 - token) : 0, pl = d2 ? (size_t)(d2 - d1 - 1) : 0;
  size_t sl = d2 ? tlen - (size_t)(d2 + 1 - token) : 0;
  if (!d2 || hl == 0 || pl == 0 || !is_b64url(token, hl) || !is_b64url(d1 + 1, pl) ||
      !is_b64url(d2 + 1, sl)) {
    seterr(err, errlen, "token is not three base64url segments");
    return RLY_JWT_MALFORMED;
  }
  uint8_t *hdr = NULL;
  long hlen = b64_alloc(token, hl, &hdr);
  j->payload_len = b64_alloc(d1 + 1, pl, &j->payload);
  j->sig_len = b64_alloc(d2 + 1, sl, &j->sig);
  j->header = hlen >= 0 ? json_object_load(hdr, (size_t)hlen) : NULL;
  free(hdr);
  j->signing_len = hl + 1 + pl;
  if (hlen < 0 || j->payload_len < 0 || j->sig_len < 0) {
    seterr(err, errlen, "token segment is not valid base64url");
    return RLY_JWT_MALFORMED;
  }
  if (!j->header) {
    seterr(err, errlen, "token header is not a JSON object");
    return RLY_JWT_MALFORMED;
  }
  return RLY_JWT_OK;
}

/* typ is optional; when present it must say this is a JWT (RFC 7519) or
 * an OAuth access token JWT (RFC 9068), with or without "application/". */
static bool typ_acceptable(const char *typ) {
  if (strncasecmp(typ, "application/", 12) == 0) typ += 12;
  return strcasecmp(typ, "JWT") == 0 || strcasecmp(typ, "at+jwt") == 0;
}

static int header_check(const json_t *h, const alg_info **alg, const char **kid, char *err,
                        size_t errlen) {
  bool bad = false;
  const char *name = json_str(h, "alg", 16, &bad);
  const char *typ = json_str(h, "typ", 64, &bad);
  *kid = json_str(h, "kid", RLY_JWT_KID_MAX, &bad);
  if (bad || !name) {
    seterr(err, errlen, "token header: alg missing, or alg/typ/kid not short strings");
    return RLY_JWT_MALFORMED;
  }
  if (!(*alg = alg_find(name))) {
    seterr(err, errlen, "token alg is not allowed (RS256/384/512, ES256/384/512 only)");
    return RLY_JWT_BAD_ALG;
  }
  if (typ && !typ_acceptable(typ)) {
    seterr(err, errlen, "token header: typ is neither JWT nor at+jwt");
    return RLY_JWT_MALFORMED;
  }
  /* We implement no extension, so any "crit" must be refused (RFC 7515
   * §4.1.11); this also refuses unencoded payloads ("b64": false). */
  if (json_object_get(h, "crit")) {
    seterr(err, errlen, "token header: crit extensions are not supported");
    return RLY_JWT_MALFORMED;
  }
  return RLY_JWT_OK;
}

/* Picks the key: by kid when the token has one (several keys may share a
 * kid across types, so take the one that fits the alg); without kid, the
 * only key that fits the alg. */
static int key_select(const rly_jwks *set, const alg_info *a, const char *kid,
                      const jwk_entry **key, char *err, size_t errlen) {
  size_t named = 0, fitting = 0;
  *key = NULL;
  for (size_t i = 0; i < set->n; i++) {
    const jwk_entry *k = &set->keys[i];
    if (kid && (!k->kid || strcmp(k->kid, kid) != 0)) continue;
    named++;
    if (!key_fits_alg(k, a)) continue;
    if (!*key) *key = k;
    fitting++;
  }
  if (kid && named == 0) {
    seterr(err, errlen, "no key with the token's kid");
    return RLY_JWT_UNKNOWN_KID;
  }
  if (kid && fitting == 0) {
    seterr(err, errlen, "token alg does not match the key's type, curve or alg");
    return RLY_JWT_BAD_ALG;
  }
  if (!kid && fitting != 1) {
    seterr(err, errlen, "token has no kid and %zu keys fit its alg", fitting);
    return RLY_JWT_UNKNOWN_KID;
  }
  return RLY_JWT_OK;
}

/* JOSE ECDSA signatures are R||S, each exactly the curve's size (RFC 7518
 * §3.4); OpenSSL wants DER.  Returns the DER length, 0 when the raw
 * signature has the wrong size, or -1 when out of memory. */
static int ecdsa_raw_to_der(const curve_info *c, const uint8_t *raw, size_t len, uint8_t **der) {
  if (len != 2 * c->len) return 0;
  ECDSA_SIG *s = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(raw, (int)c->len, NULL), *sv = BN_bin2bn(raw + c->len, (int)c->len, NULL);
  int n = -1;
  if (s && r && sv && ECDSA_SIG_set0(s, r, sv) == 1) {
    r = sv = NULL; /* owned by s now */
    *der = NULL;
    n = i2d_ECDSA_SIG(s, der);
    if (n <= 0) n = -1;
  }
  BN_free(r);
  BN_free(sv);
  ECDSA_SIG_free(s);
  return n;
}

static int sig_verify(const jwk_entry *k, const alg_info *a, const char *signing_input,
                      const jws *j, char *err, size_t errlen) {
  const uint8_t *sig = j->sig;
  size_t siglen = (size_t)j->sig_len;
  uint8_t *der = NULL;
  if (a->family == FAM_EC) {
    int n = ecdsa_raw_to_der(a->curve, j->sig, siglen, &der);
    if (n == 0) {
      seterr(err, errlen, "signature does not verify (wrong ECDSA signature size)");
      return RLY_JWT_BAD_SIGNATURE;
    }
    if (n < 0) {
      seterr(err, errlen, "out of memory");
      return RLY_JWT_INTERNAL;
    }
    sig = der;
    siglen = (size_t)n;
  }
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  EVP_PKEY_CTX *pctx = NULL;
  int rc = RLY_JWT_INTERNAL;
  if (md && EVP_DigestVerifyInit(md, &pctx, a->md(), NULL, k->pkey) == 1 &&
      (a->family != FAM_RSA || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1))
    rc = EVP_DigestVerify(md, sig, siglen, (const uint8_t *)signing_input, j->signing_len) == 1
             ? RLY_JWT_OK
             : RLY_JWT_BAD_SIGNATURE;
  EVP_MD_CTX_free(md);
  OPENSSL_free(der);
  ERR_clear_error();
  if (rc == RLY_JWT_BAD_SIGNATURE) seterr(err, errlen, "signature does not verify");
  if (rc == RLY_JWT_INTERNAL) seterr(err, errlen, "crypto library failure");
  return rc;
}

/* A NumericDate claim: 0 with *out, 1 when absent, -1 when not a number. */
static int claim_time(const json_t *c, const char *name, int64_t *out) {
  const json_t *v = json_object_get(c, name);
  if (!v) return 1;
  if (json_is_integer(v)) {
    *out = (int64_t)json_integer_value(v);
    return 0;
  }
  if (json_is_real(v)) {
    double d = json_real_value(v);
    if (!(d > -9.0e18 && d < 9.0e18)) return -1;
    *out = (int64_t)d;
    return 0;
  }
  return -1;
}

static int64_t add_sat(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

static bool aud_contains(const json_t *aud, const char *want) {
  if (json_is_string(aud)) return strcmp(json_string_value(aud), want) == 0;
  size_t i;
  const json_t *v;
  json_array_foreach(aud, i, v) {
    if (json_is_string(v) && strcmp(json_string_value(v), want) == 0) return true;
  }
  return false;
}

static int claims_time_check(const json_t *c, const rly_jwt_policy *pol, int64_t now, char *err,
                             size_t errlen) {
  int64_t leeway = pol->leeway_s > 0 ? pol->leeway_s : 0, exp = 0, nbf = 0;
  int rc = claim_time(c, "exp", &exp);
  if (rc != 0) {
    seterr(err, errlen, rc > 0 ? "token has no exp claim" : "token exp is not a number");
    return RLY_JWT_MALFORMED;
  }
  /* RFC 7519 §4.1.4: valid only strictly before exp. */
  if (now >= add_sat(exp, leeway)) {
    seterr(err, errlen, "token expired");
    return RLY_JWT_EXPIRED;
  }
  rc = claim_time(c, "nbf", &nbf);
  if (rc < 0) {
    seterr(err, errlen, "token nbf is not a number");
    return RLY_JWT_MALFORMED;
  }
  if (rc == 0 && add_sat(now, leeway) < nbf) {
    seterr(err, errlen, "token not yet valid");
    return RLY_JWT_NOT_YET_VALID;
  }
  return RLY_JWT_OK;
}

static int claims_check(const json_t *c, const rly_jwt_policy *pol, int64_t now, char *err,
                        size_t errlen) {
  const json_t *iss = json_object_get(c, "iss");
  if (!pol->issuer || !json_is_string(iss) || strcmp(json_string_value(iss), pol->issuer) != 0) {
    seterr(err, errlen, "token issuer is not the configured issuer");
    return RLY_JWT_BAD_ISSUER;
  }
  if (!pol->audience || !aud_contains(json_object_get(c, "aud"), pol->audience)) {
    seterr(err, errlen, "token audience does not include the configured audience");
    return RLY_JWT_BAD_AUDIENCE;
  }
  int rc = claims_time_check(c, pol, now, err, errlen);
  if (rc != RLY_JWT_OK) return rc;
  const json_t *sub = json_object_get(c, "sub");
  if (!json_is_string(sub) || json_string_length(sub) == 0) {
    seterr(err, errlen, "token has no sub claim");
    return RLY_JWT_MALFORMED;
  }
  return RLY_JWT_OK;
}

/* Adds each space-separated word of s that is not yet in l. */
static int scopes_add_words(cm_strlist *l, const char *s) {
  while (*s) {
    size_t n = strcspn(s, " ");
    if (n > 0) {
      bool dup = false;
      for (size_t i = 0; i < l->n && !dup; i++)
        dup = strlen(l->v[i]) == n && memcmp(l->v[i], s, n) == 0;
      if (!dup) {
        if (l->n >= RLY_JWT_MAX_SCOPES) return -E2BIG;
        char *w = strndup(s, n);
        int rc = w ? cm_strlist_push(l, w) : -ENOMEM;
        free(w);
        if (rc != 0) return rc;
      }
    }
    s += n;
    while (*s == ' ')
      s++;
  }
  return 0;
}

/* "scope" (RFC 8693/9068: a space-separated string) and "scp" (common in
 * IdPs: an array, or a string), each accepted in either form. */
static int scopes_from_claim(cm_strlist *l, const json_t *v) {
  if (json_is_string(v)) return scopes_add_words(l, json_string_value(v));
  size_t i;
  const json_t *e;
  json_array_foreach(v, i, e) {
    if (!json_is_string(e)) continue; /* grants nothing */
    int rc = scopes_add_words(l, json_string_value(e));
    if (rc != 0) return rc;
  }
  return 0;
}

static int principal_fill(const json_t *c, rly_principal *p, char *err, size_t errlen) {
  int rc = scopes_from_claim(&p->scopes, json_object_get(c, "scope"));
  if (rc == 0) rc = scopes_from_claim(&p->scopes, json_object_get(c, "scp"));
  if (rc == -E2BIG) {
    seterr(err, errlen, "token grants more than %d scopes", RLY_JWT_MAX_SCOPES);
    return RLY_JWT_MALFORMED;
  }
  if (rc == 0 && (p->subject = strdup(json_string_value(json_object_get(c, "sub")))) &&
      (p->issuer = strdup(json_string_value(json_object_get(c, "iss")))))
    return RLY_JWT_OK;
  seterr(err, errlen, "out of memory");
  return RLY_JWT_INTERNAL;
}

/* The steps after the header parsed: key, signature, claims, principal. */
static int verify_parsed(const rly_jwks *keys, const rly_jwt_policy *pol, const char *token,
                         const jws *j, const alg_info *a, const char *kid, int64_t now,
                         rly_principal *out, char *err, size_t errlen) {
  const jwk_entry *key;
  int rc = key_select(keys, a, kid, &key, err, errlen);
  if (rc == RLY_JWT_OK) rc = sig_verify(key, a, token, j, err, errlen);
  if (rc != RLY_JWT_OK) return rc;
  json_t *claims = json_object_load(j->payload, (size_t)j->payload_len);
  if (!claims) {
    seterr(err, errlen, "token payload is not a JSON object");
    return RLY_JWT_MALFORMED;
  }
  rc = claims_check(claims, pol, now, err, errlen);
  if (rc == RLY_JWT_OK) rc = principal_fill(claims, out, err, errlen);
  json_decref(claims);
  return rc;
}

int rly_jwt_verify(const rly_jwks *keys, const rly_jwt_policy *pol, const char *token,
                   int64_t now_unix, rly_principal *out, char *kid_out, size_t kidlen, char *err,
                   size_t errlen) {
  if (out) memset(out, 0, sizeof *out);
  if (kid_out && kidlen) kid_out[0] = '\0';
  seterr(err, errlen, "%s", "");
  if (!keys || !pol || !out) {
    seterr(err, errlen, "no key set, policy or output");
    return RLY_JWT_INTERNAL;
  }
  if (!token) {
    seterr(err, errlen, "no token");
    return RLY_JWT_MALFORMED;
  }
  jws j = {0};
  const alg_info *a = NULL;
  const char *kid = NULL;
  int rc = jws_split(token, &j, err, errlen);
  if (rc == RLY_JWT_OK) rc = header_check(j.header, &a, &kid, err, errlen);
  if (kid && kid_out && kidlen) snprintf(kid_out, kidlen, "%s", kid);
  if (rc == RLY_JWT_OK)
    rc = verify_parsed(keys, pol, token, &j, a, kid, now_unix, out, err, errlen);
  jws_clear(&j);
  if (rc != RLY_JWT_OK) rly_principal_free(out);
  return rc;
}

void rly_principal_free(rly_principal *p) {
  if (!p) return;
  free(p->subject);
  free(p->issuer);
  cm_strlist_free(&p->scopes);
  memset(p, 0, sizeof *p);
}

bool rly_principal_has_scope(const rly_principal *p, const char *scope) {
  if (!p || !scope) return false;
  for (size_t i = 0; i < p->scopes.n; i++)
    if (strcmp(p->scopes.v[i], scope) == 0) return true;
  return false;
}

const char *rly_jwt_result_str(int result) {
  switch (result) {
  case RLY_JWT_OK: return "ok";
  case RLY_JWT_MALFORMED: return "malformed";
  case RLY_JWT_UNKNOWN_KID: return "unknown_kid";
  case RLY_JWT_BAD_ALG: return "bad_alg";
  case RLY_JWT_BAD_SIGNATURE: return "bad_signature";
  case RLY_JWT_EXPIRED: return "expired";
  case RLY_JWT_NOT_YET_VALID: return "not_yet_valid";
  case RLY_JWT_BAD_ISSUER: return "bad_issuer";
  case RLY_JWT_BAD_AUDIENCE: return "bad_audience";
  case RLY_JWT_INTERNAL: return "internal_error";
  default: return "unknown";
  }
}
