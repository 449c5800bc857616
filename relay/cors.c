/*
 * cors.c — the origin allowlist shared by CORS on the admin API and the
 * Origin check on WebSocket upgrades.  Entries are origins
 * ("https://app.example.com"); subdomain wildcards, whose host starts with
 * "*." ("*.example.com" after the scheme, matching a.example.com and
 * a.b.example.com but not example.com); wildcard ports
 * ("http://localhost:*"); or "*" for any origin.
 */
#include "relay/cors.h"

#include <string.h>

static bool match_entry(const char *pat, const char *origin) {
  if (strcmp(pat, "*") == 0) return true;
  const char *ps = strstr(pat, "://"), *os = strstr(origin, "://");
  if (!ps || !os) return strcasecmp(pat, origin) == 0;
  size_t pschl = (size_t)(ps - pat), oschl = (size_t)(os - origin);
  if (pschl != oschl || strncasecmp(pat, origin, pschl) != 0) return false;
  const char *ph = ps + 3, *oh = os + 3;
  /* Split host and port; IPv6 literals keep their brackets. */
  const char *pport = strrchr(ph, ':'), *oport = strrchr(oh, ':');
  if (pport && strchr(pport, ']')) pport = NULL;
  if (oport && strchr(oport, ']')) oport = NULL;
  size_t phl = pport ? (size_t)(pport - ph) : strlen(ph);
  size_t ohl = oport ? (size_t)(oport - oh) : strlen(oh);
  if (pport && strcmp(pport, ":*") == 0) {
    /* any port, including none */
  } else if ((pport == NULL) != (oport == NULL) || (pport && strcmp(pport, oport) != 0)) {
    return false;
  }
  if (phl > 2 && ph[0] == '*' && ph[1] == '.') {
    size_t suffix = phl - 1; /* ".example.com" */
    return ohl > suffix && strncasecmp(oh + ohl - suffix, ph + 1, suffix) == 0;
  }
  return phl == ohl && strncasecmp(ph, oh, phl) == 0;
}

bool rly_origin_allowed(const cm_strlist *allow, const char *origin) {
  if (!origin || !allow) return false;
  for (size_t i = 0; i < allow->n; i++)
    if (match_entry(allow->v[i], origin)) return true;
  return false;
}
