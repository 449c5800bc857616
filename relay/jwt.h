/*
 * jwt.h — (private to relay/) the sans-I/O core of OIDC authentication for
 * the admin API: parsing an OpenID Provider's discovery document, turning
 * its JWKS into verification keys, and verifying a bearer JWT against those
 * keys and a policy (issuer, audience, clock leeway) into a principal
 * (subject, issuer, scopes).  Nothing here does I/O or reads the clock:
 * another part fetches the documents over HTTPS and hands over the bytes,
 * and the caller passes the current time.
 *
 * Safety: every input is bounded (documents, key count, token length,
 * string fields) and parsed strictly; the algorithm is taken from an
 * allowlist (RS256/384/512, ES256/384/512) and must agree with the type,
 * curve and "alg" of the JWK the token names, which is what defeats "alg
 * none" and HMAC-keyed-with-the-public-key confusion.  Error messages never
 * contain the token, its signature or claim values.
 *
 * Ownership: rly_jwks_parse returns a key set the caller frees with
 * rly_jwks_free; a key set is immutable after parsing and may be shared by
 * threads.  Discovery documents and principals are caller-owned structs
 * whose heap members are released by their _free function.
 */
#ifndef RELAY_JWT_H
#define RELAY_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Limits.  Past a document or token limit, parsing fails as a whole. */
#define RLY_JWT_MAX_TOKEN   16384        /* bytes of a compact JWS */
#define RLY_JWKS_MAX_BYTES  (256 * 1024) /* a JWKS document */
#define RLY_JWKS_MAX_KEYS   64           /* entries of "keys"; more is an error */
#define RLY_OIDC_MAX_BYTES  (256 * 1024) /* a discovery document */
#define RLY_OIDC_MAX_URL    2048         /* each URL of a discovery document */
#define RLY_OIDC_MAX_SCOPES 256          /* entries of scopes_supported */
#define RLY_JWT_KID_MAX     256          /* bytes of a kid (token or JWK) */
#define RLY_JWT_MAX_SCOPES  256          /* scopes granted by one token */
#define RLY_RSA_MIN_BITS    2048
#define RLY_RSA_MAX_BITS    8192 /* bounds the cost of one verification */

/* ------------------------------------------------------------------------
 * OpenID Connect discovery (/.well-known/openid-configuration).
 * ---------------------------------------------------------------------- */
typedef struct rly_oidc_discovery {
  char *issuer;                        /* required */
  char *jwks_uri;                      /* required */
  char *authorization_endpoint;        /* NULL when absent */
  char *token_endpoint;                /* NULL when absent */
  char *device_authorization_endpoint; /* NULL when absent */
  cm_strlist scopes_supported;         /* empty when absent */
} rly_oidc_discovery;

/* Parses a discovery document into *out (zeroed first; left zeroed on
 * error).  Every URL it keeps must be https, or http on a loopback host
 * (127.0.0.0/8, ::1, localhost) for tests, with no userinfo or fragment.
 * The caller still checks that `issuer` equals the issuer it configured
 * (OIDC Discovery §4.3).  Returns 0, or -EINVAL / -EMSGSIZE / -ENOMEM with
 * a message in err. */
int rly_oidc_discovery_parse(const char *json, size_t len, rly_oidc_discovery *out, char *err,
                             size_t errlen);
void rly_oidc_discovery_free(rly_oidc_discovery *d);

/* ------------------------------------------------------------------------
 * JSON Web Key Sets.
 * ---------------------------------------------------------------------- */
typedef struct rly_jwks rly_jwks;

/* One usable key, as recorded from its JWK.  Strings belong to the set. */
typedef struct rly_jwk {
  const char *kid; /* NULL when the JWK has none */
  const char *kty; /* "RSA" or "EC" */
  const char *crv; /* "P-256", "P-384" or "P-521"; NULL for RSA */
  const char *alg; /* the JWK's "alg", NULL when absent */
  const char *pem; /* the public key as SubjectPublicKeyInfo PEM */
  int bits;        /* modulus or field size */
} rly_jwk;

/* Parses a JWKS document.  Keeps RSA keys of RLY_RSA_MIN_BITS..MAX_BITS
 * and EC keys on P-256/P-384/P-521 whose point is on the curve; skips
 * (without failing) keys whose "use" is not "sig", whose key_ops lack
 * "verify", whose kty, crv or alg we do not support, or whose encoding is
 * bad.  A set with no usable key, more than RLY_JWKS_MAX_KEYS entries, or
 * a document over RLY_JWKS_MAX_BYTES is an error.  Returns 0 with *out
 * set, or -EINVAL / -EMSGSIZE / -ENOMEM with a message in err. */
int rly_jwks_parse(const char *json, size_t len, rly_jwks **out, char *err, size_t errlen);
void rly_jwks_free(rly_jwks *set);
size_t rly_jwks_count(const rly_jwks *set);
/* Entries of "keys" that were skipped as unusable (worth a warning). */
size_t rly_jwks_skipped(const rly_jwks *set);
bool rly_jwks_has_kid(const rly_jwks *set, const char *kid);
/* The i-th usable key, or NULL past the end. */
const rly_jwk *rly_jwks_key(const rly_jwks *set, size_t i);

/* ------------------------------------------------------------------------
 * Token verification.
 * ---------------------------------------------------------------------- */
typedef struct rly_jwt_policy {
  const char *issuer;   /* exact match of "iss"; required */
  const char *audience; /* must be "aud" or one of its entries; required */
  int64_t leeway_s;     /* clock skew allowed on exp and nbf (negative = 0) */
} rly_jwt_policy;

typedef struct rly_principal {
  char *subject;     /* "sub" */
  char *issuer;      /* "iss" */
  cm_strlist scopes; /* from "scope" and/or "scp", de-duplicated */
} rly_principal;

void rly_principal_free(rly_principal *p);
bool rly_principal_has_scope(const rly_principal *p, const char *scope);

typedef enum rly_jwt_result {
  RLY_JWT_OK = 0,
  RLY_JWT_MALFORMED = -1,     /* not a well-formed JWS/JWT for us */
  RLY_JWT_UNKNOWN_KID = -2,   /* no key for it: refetch the JWKS once */
  RLY_JWT_BAD_ALG = -3,       /* alg not allowed, or not the key's */
  RLY_JWT_BAD_SIGNATURE = -4, /* signature does not verify */
  RLY_JWT_EXPIRED = -5,       /* now >= exp + leeway */
  RLY_JWT_NOT_YET_VALID = -6, /* now + leeway < nbf */
  RLY_JWT_BAD_ISSUER = -7,
  RLY_JWT_BAD_AUDIENCE = -8,
  RLY_JWT_INTERNAL = -9, /* out of memory or a crypto library failure */
} rly_jwt_result;

/* Verifies `token` (a NUL-terminated compact JWS) at time now_unix.  Checks,
 * in order: length and shape (three base64url segments, JSON header); alg
 * allowlist and typ (JWT or at+jwt); key selection by kid (a token without
 * kid uses the only compatible key, if there is exactly one); key type,
 * curve and JWK alg against the token's alg; the signature; then the claims
 * iss, aud, exp (required), nbf (optional) and sub (required string).
 *
 * On RLY_JWT_OK *out holds the principal (caller frees with
 * rly_principal_free); otherwise *out is zeroed.  kid_out (may be NULL)
 * receives the token's kid, or "" when it has none, once the header has
 * parsed; with RLY_JWT_UNKNOWN_KID it names the key to look for.  A buffer of
 * RLY_JWT_KID_MAX + 1 bytes never truncates.  err gets a short reason that
 * is safe to log. */
int rly_jwt_verify(const rly_jwks *keys, const rly_jwt_policy *pol, const char *token,
                   int64_t now_unix, rly_principal *out, char *kid_out, size_t kidlen, char *err,
                   size_t errlen);

/* A short snake_case code for a result ("expired", "bad_signature"...), fit
 * for error_description in WWW-Authenticate: Bearer error="invalid_token". */
const char *rly_jwt_result_str(int result);

#endif
