/*
 * fetch.h — (private to relay/) an asynchronous HTTP(S) GET on one loop,
 * for the IdP's documents.
 */
#ifndef RELAY_FETCH_H
#define RELAY_FETCH_H

#include "common/common.h"

/* cb runs exactly once, from the loop, unless cancelled: status is the
 * HTTP status or a negative error.  The handle is invalid after cb or
 * cancel. */
typedef struct rly_fetch rly_fetch;
typedef void (*rly_fetch_cb)(void *ud, int status, const char *body, size_t len, const char *err);
rly_fetch *rly_fetch_get(uv_loop_t *loop, cm_tls_ctx *tls, const char *url, size_t max_body,
                         uint32_t timeout_ms, rly_fetch_cb cb, void *ud);
void rly_fetch_cancel(rly_fetch *f);

#endif
