/*
 * url.c — absolute URLs for the client (see client.h): parsed with
 * libhttp-parser's URL parser, then held to what a client of ours may
 * dial: one of four schemes, a host, no user information.
 */
#include "client/client.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

typedef struct scheme {
  const char *name;
  bool tls, websocket;
  uint16_t port;
} scheme;

static const scheme g_schemes[] = {
    {"http", false, false, 80},
    {"https", true, false, 443},
    {"ws", false, true, 80},
    {"wss", true, true, 443},
};

static const scheme *find_scheme(const char *s, size_t n) {
  for (size_t i = 0; i < CM_ARRAY_LEN(g_schemes); i++)
    if (strlen(g_schemes[i].name) == n && strncasecmp(g_schemes[i].name, s, n) == 0)
      return &g_schemes[i];
  return NULL;
}

static const char *scheme_name(const rc_url *u) {
  return u->websocket ? (u->tls ? "wss" : "ws") : (u->tls ? "https" : "http");
}

/* Copies field f of the parsed URL; false when it does not fit. */
static bool field(const char *text, const struct http_parser_url *pu, int f, char *out,
                  size_t outlen) {
  size_t n = pu->field_data[f].len;
  if (n >= outlen) return false;
  memcpy(out, text + pu->field_data[f].off, n);
  out[n] = '\0';
  return true;
}

int rc_url_parse(const char *text, rc_url *u, char *err, size_t errlen) {
  memset(u, 0, sizeof *u);
  struct http_parser_url pu;
  http_parser_url_init(&pu);
  size_t len = text ? strlen(text) : 0;
  if (len == 0 || http_parser_parse_url(text, len, 0, &pu) != 0 ||
      !(pu.field_set & (1 << UF_SCHEMA)) || !(pu.field_set & (1 << UF_HOST))) {
    cm_seterr(err, errlen, "not an absolute URL (like wss://relay.example.com)");
    return -EINVAL;
  }
  const scheme *sc = find_scheme(text + pu.field_data[UF_SCHEMA].off, pu.field_data[UF_SCHEMA].len);
  if (!sc) {
    cm_seterr(err, errlen, "URL scheme must be http, https, ws or wss");
    return -EINVAL;
  }
  if (pu.field_set & (1 << UF_USERINFO)) {
    cm_seterr(err, errlen, "URL must not carry user information (credentials)");
    return -EINVAL;
  }
  u->tls = sc->tls;
  u->websocket = sc->websocket;
  if (!field(text, &pu, UF_HOST, u->host, sizeof u->host) || !u->host[0]) {
    cm_seterr(err, errlen, "URL host is empty or too long");
    return -EINVAL;
  }
  u->port = (pu.field_set & (1 << UF_PORT)) ? pu.port : sc->port;
  if (u->port == 0) {
    cm_seterr(err, errlen, "URL port must be 1..65535");
    return -EINVAL;
  }
  /* Path and query, without the fragment (never sent). */
  size_t off = (pu.field_set & (1 << UF_PATH)) ? pu.field_data[UF_PATH].off : 0;
  size_t end = len;
  if (pu.field_set & (1 << UF_FRAGMENT)) end = (size_t)pu.field_data[UF_FRAGMENT].off - 1;
  if (!(pu.field_set & (1 << UF_PATH))) {
    /* "http://h?x" has a query and no path: the path is "/". */
    u->path[0] = '/';
    off = (pu.field_set & (1 << UF_QUERY)) ? (size_t)pu.field_data[UF_QUERY].off - 1 : end;
    if (end - off + 1 >= sizeof u->path) goto too_long;
    memcpy(u->path + 1, text + off, end - off);
    u->path[end - off + 1] = '\0';
    return 0;
  }
  if (end - off >= sizeof u->path) goto too_long;
  memcpy(u->path, text + off, end - off);
  u->path[end - off] = '\0';
  return 0;
too_long:
  cm_seterr(err, errlen, "URL path is too long");
  return -EINVAL;
}

void rc_url_authority(const rc_url *u, char *out, size_t outlen) {
  bool v6 = strchr(u->host, ':') != NULL;
  int n = snprintf(out, outlen, v6 ? "[%s]" : "%s", u->host);
  uint16_t def = u->tls ? 443 : 80;
  if (n > 0 && (size_t)n < outlen && u->port != def)
    snprintf(out + n, outlen - (size_t)n, ":%u", (unsigned)u->port);
}

void rc_url_display(const rc_url *u, char *out, size_t outlen) {
  char auth[RC_HOST_MAX + 16];
  rc_url_authority(u, auth, sizeof auth);
  size_t plen = strcspn(u->path, "?");
  snprintf(out, outlen, "%s://%s%.*s", scheme_name(u), auth, (int)plen, u->path);
}

static bool id_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

int rc_url_session(const rc_url *base, const char *session, const char *role, rc_url *out,
                   char *err, size_t errlen) {
  size_t sl = session ? strlen(session) : 0;
  bool ok = sl > 0 && sl <= 128;
  for (size_t i = 0; ok && i < sl; i++)
    ok = id_char(session[i]);
  if (!ok) {
    cm_seterr(err, errlen, "session id must be 1 to 128 base64url characters");
    return -EINVAL;
  }
  if (strchr(base->path, '?')) {
    cm_seterr(err, errlen, "relay URL must not have a query");
    return -EINVAL;
  }
  *out = *base;
  out->websocket = true;
  size_t bl = strlen(base->path);
  while (bl > 0 && base->path[bl - 1] == '/')
    bl--;
  int n = snprintf(out->path, sizeof out->path, "%.*s/relay/%s%s%s", (int)bl, base->path, session,
                   role ? "?role=" : "", role ? role : "");
  if (n < 0 || (size_t)n >= sizeof out->path) {
    cm_seterr(err, errlen, "relay URL path is too long");
    return -EINVAL;
  }
  return 0;
}
