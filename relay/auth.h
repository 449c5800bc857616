/*
 * auth.h — (private to relay/) OIDC bearer tokens for the admin API.
 *
 * The IdP's discovery document and JWKS are fetched at start and
 * refreshed; verification is local except for a rate-limited JWKS refetch
 * on an unknown kid.  The verifier lives on the control thread (control.c
 * hands workers' checks to it); everything here runs on one loop.
 */
#ifndef RELAY_AUTH_H
#define RELAY_AUTH_H

#include "common/common.h"
#include "relay/jwt.h"
#include "relay/relay.h"

typedef struct rly_auth rly_auth;
typedef struct rly_auth_req rly_auth_req;

/* cb gets the HTTP status to use (200, 401, 403, 503) and, on 200, the
 * principal (valid during cb). */
typedef void (*rly_auth_cb)(void *ud, int status, const rly_principal *p, const char *error,
                            const char *description);

/* on_change runs (on loop) whenever the discovery document changes, so
 * the owner can refresh what it shows (rly_auth_discovery_json). */
rly_auth *rly_auth_new(const rly_config *cfg, uv_loop_t *loop, void (*on_change)(void *ud),
                       void *ud, char *err, size_t errlen);
int rly_auth_start(rly_auth *a, char *err, size_t errlen);
/* Runs cb now (returning NULL) or later (returning a handle to cancel). */
rly_auth_req *rly_auth_check(rly_auth *a, const char *token, rly_auth_cb cb, void *ud);
void rly_auth_cancel(rly_auth_req *r);
/* The swsrs-config document; false until the IdP's discovery is known. */
bool rly_auth_discovery_json(rly_auth *a, cm_buf *out);
void rly_auth_stop(rly_auth *a, void (*done)(void *ud), void *ud);
void rly_auth_free(rly_auth *a);

#endif
