/*
 * fuzz_jwks.c — arbitrary bytes through rly_jwks_parse and
 * rly_oidc_discovery_parse (both run on every input), then the accessors
 * of whatever parsed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_jwks(const rly_jwks *set) {
  size_t n = rly_jwks_count(set);
  if (n == 0 || n > RLY_JWKS_MAX_KEYS) abort();
  for (size_t i = 0; i < n; i++) {
    const rly_jwk *k = rly_jwks_key(set, i);
    if (!k || !k->kty || !k->pem || strncmp(k->pem, "-----BEGIN PUBLIC KEY-----", 26) != 0) abort();
    if (k->kid && !rly_jwks_has_kid(set, k->kid)) abort();
  }
  if (rly_jwks_key(set, n)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256];
  rly_jwks *set = NULL;
  if (rly_jwks_parse((const char *)data, size, &set, err, sizeof err) == 0)
    check_jwks(set);
  else if (set)
    abort();
  rly_jwks_free(set);

  rly_oidc_discovery d;
  if (rly_oidc_discovery_parse((const char *)data, size, &d, err, sizeof err) == 0) {
    if (!d.issuer || !d.jwks_uri) abort();
  } else if (d.issuer || d.jwks_uri || d.scopes_supported.n) {
    abort();
  }
  rly_oidc_discovery_free(&d);
  return 0;
}
