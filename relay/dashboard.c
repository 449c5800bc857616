/*
 * dashboard.c — serves the dashboard's files (see dashboard.h) from the
 * copies compiled into the binary.
 *
 * Every file goes with a Content-Security-Policy that lets the page load
 * its own script, style and icon and nothing else: no inline script or
 * style, no eval, no frames, no forms, no plugins, no <base>, and — with
 * Trusted Types required and no policy allowed — no HTML ever parsed from
 * a string (innerHTML and friends throw).  The page may connect to this
 * relay and to the identity provider's token endpoint (the code exchange
 * of its sign-in), whose origin comes from the discovery document.
 */
#include "relay/dashboard.h"

#include "relay/control.h"

#include <http_parser.h>
#include <jansson.h>
#include <string.h>

#define INDEX         "index.html"
#define CONFIG        "config.json"
#define MAX_ORIGIN    300
#define CSP_MAX       1024
#define HEADERS_MAX   2048
#define DISCOVERY_MAX (1 << 16)

static const struct {
  const char *ext, *type;
} g_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
};

static const char *content_type(const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i < CM_ARRAY_LEN(g_types); i++) {
    size_t e = strlen(g_types[i].ext);
    if (n > e && strcmp(name + n - e, g_types[i].ext) == 0) return g_types[i].type;
  }
  return "application/octet-stream";
}

static const rly_asset *find_asset(const char *name) {
  for (size_t i = 0; i < rly_nassets; i++)
    if (strcmp(rly_assets[i].name, name) == 0) return &rly_assets[i];
  return NULL;
}

/* A host as it may stand in a CSP source: letters, digits, '.', '-', and
 * an IPv6 literal's hex digits and ':' (the brackets come from the URL). */
static bool host_ok(const char *h, size_t n) {
  if (n == 0) return false;
  for (size_t i = 0; i < n; i++) {
    char ch = h[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '.' || ch == '-' || ch == ':'))
      return false;
  }
  return true;
}

/* "https://host[:port]" of an absolute http(s) URL, or false.  Whatever
 * the provider wrote, only these characters reach the header. */
static bool url_origin(const char *url, char *out, size_t outlen) {
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(url, strlen(url), 0, &u) != 0) return false;
  if (!(u.field_set & (1 << UF_SCHEMA)) || !(u.field_set & (1 << UF_HOST))) return false;
  const char *scheme = url + u.field_data[UF_SCHEMA].off;
  size_t slen = u.field_data[UF_SCHEMA].len;
  bool https = slen == 5 && strncasecmp(scheme, "https", 5) == 0;
  if (!https && !(slen == 4 && strncasecmp(scheme, "http", 4) == 0)) return false;
  const char *host = url + u.field_data[UF_HOST].off;
  size_t hlen = u.field_data[UF_HOST].len;
  if (!host_ok(host, hlen)) return false;
  bool v6 = memchr(host, ':', hlen) != NULL;
  char port[16] = "";
  if (u.field_set & (1 << UF_PORT)) snprintf(port, sizeof port, ":%u", u.port);
  int w = snprintf(out, outlen, "%s://%s%.*s%s%s", https ? "https" : "http", v6 ? "[" : "",
                   (int)hlen, host, v6 ? "]" : "", port);
  return w > 0 && (size_t)w < outlen;
}

void rly_dashboard_csp(const char *discovery, size_t len, char *out, size_t outlen) {
  char origin[MAX_ORIGIN + 2] = "";
  json_t *d = discovery ? json_loadb(discovery, len, 0, NULL) : NULL;
  const char *tep = json_string_value(json_object_get(d, "token_endpoint"));
  if (tep && url_origin(tep, origin + 1, sizeof origin - 1)) origin[0] = ' ';
  json_decref(d);
  snprintf(out, outlen,
           "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
           "connect-src 'self'%s; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
           "require-trusted-types-for 'script'; trusted-types 'none'",
           origin);
}

static void csp_for(rly_edge *e, char *out, size_t outlen) {
  cm_buf b;
  cm_buf_init(&b, DISCOVERY_MAX);
  bool have = rly_ctl_auth_enabled(e->ctl) && rly_ctl_discovery(e->ctl, &b);
  rly_dashboard_csp(have ? (const char *)cm_buf_head(&b) : NULL, have ? cm_buf_size(&b) : 0, out,
                    outlen);
  cm_buf_free(&b);
}

static void respond_file(rly_conn *c, const char *type, const void *data, size_t len) {
  char csp[CSP_MAX], hdr[HEADERS_MAX];
  csp_for(c->w->edge, csp, sizeof csp);
  /* no-cache: revalidated each time, so an upgraded relay's page is seen
   * at once; the files are small. */
  snprintf(hdr, sizeof hdr,
           "Content-Security-Policy: %s\r\n"
           "Cache-Control: no-cache\r\n"
           "X-Content-Type-Options: nosniff\r\n"
           "Referrer-Policy: no-referrer\r\n"
           "X-Frame-Options: DENY\r\n"
           "Cross-Origin-Opener-Policy: same-origin\r\n"
           "Cross-Origin-Resource-Policy: same-origin\r\n",
           csp);
  rly_http_response r = {
      .status = 200, .content_type = type, .body = data, .body_len = len, .extra_headers = hdr};
  rly_conn_respond(c, &r);
}

void rly_dashboard_request(rly_conn *c, const rly_http_request *req, const rly_route_match *m,
                           int file) {
  CM_UNUSED(req);
  const char *name = file ? m->caps[0] : NULL;
  /* How the page is to sign in, without a refusal that a browser would
   * report as an error: the discovery document answers 404 under --no-auth. */
  if (name && strcmp(name, CONFIG) == 0) {
    const char *cfg =
        rly_ctl_auth_enabled(c->w->edge->ctl) ? "{\"auth\":\"oidc\"}" : "{\"auth\":\"none\"}";
    respond_file(c, "application/json", cfg, strlen(cfg));
    return;
  }
  /* The page only at /dashboard: its relative links assume that base. */
  const rly_asset *a = name ? (strcmp(name, INDEX) ? find_asset(name) : NULL) : find_asset(INDEX);
  if (!a) {
    rly_conn_respond_error(c, 404, "not_found", "no such resource", NULL);
    return;
  }
  respond_file(c, content_type(a->name), a->data, a->len);
}
