/*
 * cors.h — (private to relay/) the browser-origin allowlist (--cors-origin):
 * exact origins, subdomain wildcards ("*.example.com" after the scheme),
 * wildcard ports ("localhost:*"), or "*".
 */
#ifndef RELAY_CORS_H
#define RELAY_CORS_H

#include <stdbool.h>

#include "common/common.h"

/* Explicit allowlist match (false when the list is empty). */
bool rly_origin_allowed(const cm_strlist *allow, const char *origin);

#endif
