/*
 * fuzz_jwt.c — arbitrary bytes as a bearer token through rly_jwt_verify,
 * against a fixed JWKS holding one EC P-256 key (public only; the seed
 * corpus has tokens signed by its throwaway private key, which was never
 * stored, so the claim checks after the signature are reached too).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char jwks_json[] =
    "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"ec1\",\"use\":\"sig\","
    "\"alg\":\"ES256\",\"x\":\"SHz7YBtT2ZZvb6_RYO6ljqxgu7bOTuMPPDSjc-I8pXM\","
    "\"y\":\"E6XfnTs_WiZutlwsh1cF_eL83AlREcT-ghdS5xFhe6g\"}]}";

static rly_jwks *keys;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!keys) {
    char err[256];
    if (rly_jwks_parse(jwks_json, sizeof jwks_json - 1, &keys, err, sizeof err) != 0) abort();
  }
  char *token = malloc(size + 1);
  if (!token) return 0;
  memcpy(token, data, size);
  token[size] = '\0';
  const rly_jwt_policy pol = {"https://idp.example.com", "relay-admin", 60};
  rly_principal p;
  char kid[RLY_JWT_KID_MAX + 1], err[256];
  int rc = rly_jwt_verify(keys, &pol, token, 1700000000, &p, kid, sizeof kid, err, sizeof err);
  if (rc == RLY_JWT_OK) {
    if (!p.subject || !p.issuer) abort();
    (void)rly_principal_has_scope(&p, "swsrs:session:read");
  } else if (p.subject || p.scopes.n) {
    abort(); /* a refused token must leave no principal behind */
  }
  if (strlen(rly_jwt_result_str(rc)) == 0 || strlen(kid) > RLY_JWT_KID_MAX) abort();
  rly_principal_free(&p);
  free(token);
  return 0;
}
