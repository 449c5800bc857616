/*
 * login.c — OAuth 2.0 for the CLI as a sans-I/O state machine: the
 * relay's discovery document, the device authorization grant (RFC 8628),
 * the client credentials grant (RFC 6749 §4.4) and refresh (§6).  It
 * never touches a socket or a clock: auth.c and admin.c make the requests
 * and waits it asks for and feed it what came back, and the unit tests
 * feed it whatever they like.
 */
#include "client/admin.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DISCOVERY_PATH   "/.well-known/swsrs-config"
#define FORM_TYPE        "application/x-www-form-urlencoded"
#define DEVICE_GRANT     "urn:ietf:params:oauth:grant-type:device_code"
#define DEFAULT_INTERVAL 5    /* s, RFC 8628 §3.2 when the IdP gives none */
#define SLOW_DOWN_STEP   5000 /* ms added by each slow_down (§3.5) */
#define MAX_BACKOFF_MS   60000
#define MAX_TOKEN_LEN    16384 /* a token travels in a request header */
#define MAX_EXPIRES_IN   86400 /* s: a device code for longer than a day is a mistake */
/* s: any count of seconds from the IdP is held to this (ten years), so that
 * an absurd one cannot overflow the arithmetic done with it. */
#define MAX_SECONDS  (10LL * 365 * 86400)
#define MAX_INTERVAL 3600           /* s between polls, however long the IdP asks for */
#define MAX_EPOCH_S  253402300799LL /* a JWT's exp: 9999-12-31T23:59:59Z at most */

typedef enum {
  ST_NEW,
  ST_DISCOVERY,
  ST_DEVICE_AUTH,
  ST_POLL_WAIT,
  ST_POLLING,
  ST_TOKEN, /* one token request: client credentials or refresh */
  ST_DONE,
  ST_FAILED,
} login_state;

struct rc_login {
  rc_login_mode mode;
  login_state st;
  bool client_grant; /* the client credentials grant (CLIENT, or REFRESH of its tokens) */
  char *relay_url, *client_id, *client_secret, *scope;
  rc_creds cur; /* REFRESH: what is being refreshed */
  /* From discovery (or, for REFRESH, from cur). */
  char *issuer, *audience, *token_endpoint, *device_endpoint;
  /* The device grant. */
  char *device_code;
  int64_t deadline_ms;
  int64_t expires_in_s;
  uint64_t interval_ms;
  /* What the current action points into. */
  cm_buf url, body, auth, prompt;
  char error[768];
  rc_creds result;
};

/* ---- small helpers ----------------------------------------------------------------- */

static void act_reset(rc_login_action *a) { memset(a, 0, sizeof *a); }

static void fail(rc_login *l, rc_login_action *a, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(rc_login *l, rc_login_action *a, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(l->error, sizeof l->error, fmt, ap);
  va_end(ap);
  l->st = ST_FAILED;
  act_reset(a);
  a->kind = RC_ACT_FAILED;
  a->error = l->error;
}

static int append_str(cm_buf *b, const char *s) { return cm_buf_append(b, s, strlen(s)); }

/* application/x-www-form-urlencoded (RFC 6749 Appendix B): everything but
 * the unreserved characters percent-encoded. */
int rc_form_encode(cm_buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  int rc = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p && rc == 0; p++) {
    if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
      rc = cm_buf_append(b, p, 1);
    } else {
      char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
      rc = cm_buf_append(b, e, 3);
    }
  }
  return rc;
}

/* Appends k=v (with & before all but the first); NULL v adds nothing. */
static int form_add(cm_buf *b, const char *k, const char *v) {
  if (!v) return 0;
  int rc = cm_buf_size(b) ? cm_buf_append(b, "&", 1) : 0;
  if (rc == 0) rc = append_str(b, k);
  if (rc == 0) rc = cm_buf_append(b, "=", 1);
  if (rc == 0) rc = rc_form_encode(b, v);
  return rc;
}

static bool set_str(char **dst, const char *v) {
  rc_secret_strfree(dst);
  if (!v) return true;
  return (*dst = rc_secret_strdup(v)) != NULL;
}

static const char *jstr(const json_t *o, const char *key) {
  const json_t *v = json_object_get(o, key);
  return json_is_string(v) && json_string_length(v) > 0 ? json_string_value(v) : NULL;
}

/* A positive count of seconds, given as a number or (as some IdPs do) a
 * string of digits, held to max; -1 when absent or malformed. */
static long long jseconds(const json_t *o, const char *key, long long max) {
  const json_t *v = json_object_get(o, key);
  long long n = -1;
  if (json_is_integer(v)) {
    n = json_integer_value(v);
  } else if (json_is_real(v)) {
    double d = json_real_value(v); /* compared before the cast: a huge one has no long long */
    n = d < 0 ? -1 : d > (double)max ? max : (long long)d;
  } else if (json_is_string(v)) {
    char *end;
    n = strtoll(json_string_value(v), &end, 10); /* saturates, then held below */
    if (end == json_string_value(v) || *end != '\0') n = -1;
  }
  return n < 0 ? -1 : CM_MIN(n, max);
}

/* https, or http to a loopback host (as the relay accepts from its IdP):
 * secrets go to these endpoints. */
static bool endpoint_ok(const char *url) {
  if (!url) return false;
  if (!strncmp(url, "https://", 8)) return url[8] != '\0' && url[8] != '/';
  if (strncmp(url, "http://", 7) != 0) return false;
  const char *h = url + 7;
  static const char *const loop[] = {"127.0.0.1", "localhost", "[::1]"};
  for (size_t i = 0; i < CM_ARRAY_LEN(loop); i++) {
    size_t n = strlen(loop[i]);
    if (!strncasecmp(h, loop[i], n) && (h[n] == '\0' || h[n] == ':' || h[n] == '/')) return true;
  }
  return false;
}

/* The relay URL the settings come from (http(s) or ws(s)): they name the
 * endpoints secrets go to, so they get endpoint_ok's rule too. */
static bool settings_url_ok(const char *relay_url) {
  cm_buf b;
  cm_buf_init(&b, 0);
  bool ok = rc_base_url(&b, relay_url) == 0 && cm_buf_append(&b, "", 1) == 0 &&
            endpoint_ok((const char *)cm_buf_head(&b));
  cm_buf_free(&b);
  return ok;
}

/* A token we will put in a header: visible ASCII, bounded. */
static bool token_ok(const char *t) {
  size_t n = strlen(t);
  if (n == 0 || n > MAX_TOKEN_LEN) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f) return false;
  return true;
}

static json_t *parse_object(const char *body, size_t len) {
  json_t *o = body && len ? json_loadb(body, len, 0, NULL) : NULL;
  if (o && !json_is_object(o)) {
    json_decref(o);
    o = NULL;
  }
  return o;
}

/* ---- requests ------------------------------------------------------------------------ */

static void request(rc_login *l, rc_login_action *a, const char *method, const char *url,
                    bool form) {
  act_reset(a);
  a->kind = RC_ACT_REQUEST;
  a->method = method;
  a->url = url;
  if (form) {
    a->content_type = FORM_TYPE;
    a->body = cm_buf_head(&l->body);
    a->body_len = cm_buf_size(&l->body);
  }
  if (cm_buf_size(&l->auth)) a->authorization = (const char *)cm_buf_head(&l->auth);
}

/* HTTP Basic client authentication (RFC 6749 §2.3.1): id and secret are
 * form-encoded, joined by ':', then base64. */
static int basic_auth(rc_login *l) {
  cm_buf pair;
  cm_buf_init_secret(&pair, 0);
  int rc = rc_form_encode(&pair, l->client_id);
  if (rc == 0) rc = cm_buf_append(&pair, ":", 1);
  if (rc == 0) rc = rc_form_encode(&pair, l->client_secret);
  size_t n = cm_buf_size(&pair), enc = 4 * ((n + 2) / 3) + 1;
  cm_buf_reset(&l->auth);
  uint8_t *p = rc == 0 ? cm_buf_reserve(&l->auth, 6 + enc + 1) : NULL;
  if (p) {
    memcpy(p, "Basic ", 6);
    int w = EVP_EncodeBlock(p + 6, cm_buf_head(&pair), (int)n);
    p[6 + w] = '\0';
    cm_buf_commit(&l->auth, 6 + (size_t)w + 1);
  } else {
    rc = -ENOMEM;
  }
  cm_buf_free(&pair);
  return rc;
}

int rc_base_url(cm_buf *b, const char *url) {
  const char *scheme = "";
  if (!strncmp(url, "wss://", 6)) {
    scheme = "https://";
    url += 6;
  } else if (!strncmp(url, "ws://", 5)) {
    scheme = "http://";
    url += 5;
  }
  size_t n = strlen(url);
  while (n > 0 && url[n - 1] == '/')
    n--;
  int rc = append_str(b, scheme);
  return rc ? rc : cm_buf_append(b, url, n);
}

static void ask_discovery(rc_login *l, rc_login_action *a) {
  cm_buf_reset(&l->url);
  int rc = rc_base_url(&l->url, l->relay_url);
  if (rc == 0) rc = cm_buf_append(&l->url, DISCOVERY_PATH, sizeof DISCOVERY_PATH);
  if (rc != 0) return fail(l, a, "out of memory");
  l->st = ST_DISCOVERY;
  request(l, a, "GET", (const char *)cm_buf_head(&l->url), false);
}

static void ask_device(rc_login *l, rc_login_action *a) {
  cm_buf_reset(&l->body);
  int rc = form_add(&l->body, "client_id", l->client_id);
  if (rc == 0) rc = form_add(&l->body, "scope", l->scope);
  if (rc == 0) rc = form_add(&l->body, "audience", l->audience);
  if (rc != 0) return fail(l, a, "out of memory");
  l->st = ST_DEVICE_AUTH;
  request(l, a, "POST", l->device_endpoint, true);
}

static void ask_poll(rc_login *l, rc_login_action *a) {
  cm_buf_reset(&l->body);
  int rc = form_add(&l->body, "grant_type", DEVICE_GRANT);
  if (rc == 0) rc = form_add(&l->body, "device_code", l->device_code);
  if (rc == 0) rc = form_add(&l->body, "client_id", l->client_id);
  if (rc != 0) return fail(l, a, "out of memory");
  l->st = ST_POLLING;
  request(l, a, "POST", l->token_endpoint, true);
}

/* The one token request of CLIENT and REFRESH. */
static void ask_token(rc_login *l, rc_login_action *a) {
  cm_buf_reset(&l->body);
  int rc;
  if (l->client_grant) { /* client credentials, first or again */
    rc = form_add(&l->body, "grant_type", RC_GRANT_NAME_CLIENT);
    if (rc == 0) rc = form_add(&l->body, "scope", l->scope);
    if (rc == 0) rc = form_add(&l->body, "audience", l->audience);
    if (rc == 0) rc = basic_auth(l);
  } else {
    rc = form_add(&l->body, "grant_type", "refresh_token");
    if (rc == 0) rc = form_add(&l->body, "refresh_token", l->cur.refresh_token);
    if (rc == 0) rc = form_add(&l->body, "client_id", l->client_id);
  }
  if (rc != 0) return fail(l, a, "out of memory");
  l->st = ST_TOKEN;
  request(l, a, "POST", l->token_endpoint, true);
}

/* ---- answers ----------------------------------------------------------------------- */

/* Every scope discovery lists, space-separated. */
static char *joined_scopes(const json_t *scopes) {
  cm_buf b;
  cm_buf_init(&b, 4096);
  size_t i;
  const json_t *v;
  json_array_foreach(scopes, i, v) {
    if (!json_is_string(v)) continue;
    if (cm_buf_size(&b)) cm_buf_append(&b, " ", 1);
    cm_buf_append(&b, json_string_value(v), json_string_length(v));
  }
  char *s = NULL;
  if (cm_buf_size(&b) && cm_buf_append(&b, "", 1) == 0) s = rc_secret_strdup((char *)b.data);
  cm_buf_free(&b);
  return s;
}

static void on_discovery(rc_login *l, int status, const char *body, size_t len,
                         rc_login_action *a) {
  const char *url = (const char *)cm_buf_head(&l->url);
  if (status == 404)
    return fail(l, a,
                "%s: HTTP 404: the relay publishes no sign-in settings (does it run "
                "--no-auth? then no sign-in is needed)",
                url);
  if (status != 200) {
    char line[256];
    rc_http_error_line(status, body, len, line, sizeof line);
    return fail(l, a, "%s: %s", url, line);
  }
  json_t *o = parse_object(body, len);
  if (!o) return fail(l, a, "%s: the answer is not a JSON object", url);
  const char *iss = jstr(o, "issuer"), *tok = jstr(o, "token_endpoint"),
             *dev = jstr(o, "device_authorization_endpoint");
  bool ok = iss && endpoint_ok(tok) && (l->mode != RC_LOGIN_DEVICE || endpoint_ok(dev));
  if (ok) {
    if (!l->client_id) l->client_id = rc_secret_strdup(jstr(o, "client_id_hint"));
    if (!l->scope) l->scope = joined_scopes(json_object_get(o, "scopes"));
    ok = set_str(&l->issuer, iss) && set_str(&l->token_endpoint, tok) &&
         set_str(&l->device_endpoint, dev) && set_str(&l->audience, jstr(o, "audience"));
  }
  json_decref(o);
  if (!ok)
    return fail(l, a, "%s: no usable issuer, token_endpoint%s (https, or http on loopback only)",
                url, l->mode == RC_LOGIN_DEVICE ? " and device_authorization_endpoint" : "");
  if (!l->client_id)
    return fail(l, a,
                "the relay suggests no OAuth client id (client_id_hint): pass --client-id or "
                "set SWSRS_CLIENT_ID");
  if (l->mode == RC_LOGIN_DEVICE) return ask_device(l, a);
  ask_token(l, a);
}

static void oauth_refusal(rc_login *l, rc_login_action *a, const char *what, int status,
                          const char *body, size_t len) {
  char line[384];
  rc_http_error_line(status, body, len, line, sizeof line);
  fail(l, a, "%s refused: %s", what, line);
}

/* Waits the interval, or what is left of the code's life if less. */
static void wait_poll(rc_login *l, int64_t now_ms, rc_login_action *a, const char *prompt) {
  int64_t left = l->deadline_ms - now_ms;
  if (left <= 0)
    return fail(l, a,
                "the code expired after %lld s without the sign-in being approved; run relay "
                "auth again",
                (long long)l->expires_in_s);
  l->st = ST_POLL_WAIT;
  act_reset(a);
  a->kind = RC_ACT_WAIT;
  a->wait_ms = CM_MIN(l->interval_ms, (uint64_t)left);
  a->prompt = prompt;
}

static void on_device(rc_login *l, int status, const char *body, size_t len, int64_t now_ms,
                      rc_login_action *a) {
  if (status != 200) return oauth_refusal(l, a, "device authorization", status, body, len);
  json_t *o = parse_object(body, len);
  const char *code = o ? jstr(o, "device_code") : NULL, *user = o ? jstr(o, "user_code") : NULL;
  const char *uri = o ? jstr(o, "verification_uri") : NULL;
  if (o && !uri) uri = jstr(o, "verification_url"); /* an older draft's name, still seen */
  const char *complete = o ? jstr(o, "verification_uri_complete") : NULL;
  long long expires = o ? jseconds(o, "expires_in", MAX_SECONDS) : -1,
            interval = o ? jseconds(o, "interval", MAX_SECONDS) : -1;
  if (!code || !user || !uri || expires <= 0) {
    json_decref(o);
    return fail(l, a,
                "device authorization: the answer lacks device_code, user_code, "
                "verification_uri or expires_in");
  }
  l->expires_in_s = CM_MIN(expires, MAX_EXPIRES_IN);
  l->deadline_ms = now_ms + l->expires_in_s * 1000;
  l->interval_ms = (uint64_t)(interval > 0    ? CM_MIN(interval, MAX_INTERVAL)
                              : interval == 0 ? 1
                                              : DEFAULT_INTERVAL) *
                   1000;
  bool ok = set_str(&l->device_code, code);
  cm_buf_reset(&l->prompt);
  char minutes[32];
  snprintf(minutes, sizeof minutes, l->expires_in_s >= 120 ? "%lld min" : "%lld s",
           l->expires_in_s >= 120 ? (long long)l->expires_in_s / 60 : (long long)l->expires_in_s);
  const char *parts[] = {"To sign in, open  ",
                         uri,
                         "\nand enter the code  ",
                         user,
                         "\n",
                         complete ? "(or open " : "",
                         complete ? complete : "",
                         complete ? ")\n" : "",
                         "Waiting for the sign-in (the code expires in ",
                         minutes,
                         ")...\n"};
  for (size_t i = 0; i < CM_ARRAY_LEN(parts) && ok; i++)
    ok = append_str(&l->prompt, parts[i]) == 0;
  ok = ok && cm_buf_append(&l->prompt, "", 1) == 0;
  json_decref(o);
  if (!ok) return fail(l, a, "out of memory");
  wait_poll(l, now_ms, a, (const char *)cm_buf_head(&l->prompt));
}

/* The expiry of a JWT access token, read (not verified) from its payload,
 * for IdPs that leave expires_in out; 0 when it is not a JWT. */
static int64_t jwt_exp(const char *tok) {
  const char *p1 = strchr(tok, '.'), *p2 = p1 ? strchr(p1 + 1, '.') : NULL;
  if (!p2 || p2 - p1 - 1 > MAX_TOKEN_LEN) return 0;
  size_t n = (size_t)(p2 - p1 - 1);
  uint8_t *raw = cm_secret_alloc(n + 1);
  long got = raw ? cm_b64url_decode(p1 + 1, n, raw, n + 1) : -1;
  json_t *o = got > 0 ? parse_object((const char *)raw, (size_t)got) : NULL;
  long long exp = o ? jseconds(o, "exp", MAX_EPOCH_S) : -1;
  json_decref(o);
  cm_secret_free(raw);
  return exp > 0 ? exp : 0;
}

/* A token response (RFC 6749 §5.1) becomes the result. */
static void on_tokens(rc_login *l, const char *body, size_t len, int64_t now_ms,
                      rc_login_action *a) {
  json_t *o = parse_object(body, len);
  const char *at = o ? jstr(o, "access_token") : NULL, *rt = o ? jstr(o, "refresh_token") : NULL;
  const char *type = o ? jstr(o, "token_type") : NULL, *scope = o ? jstr(o, "scope") : NULL;
  long long expires = o ? jseconds(o, "expires_in", MAX_SECONDS) : -1;
  const char *problem = !at || !token_ok(at)                 ? "no usable access_token"
                        : rt && !token_ok(rt)                ? "a malformed refresh_token"
                        : type && strcasecmp(type, "bearer") ? "a token_type other than Bearer"
                                                             : NULL;
  if (problem) {
    json_decref(o);
    return fail(l, a, "the token endpoint answered with %s", problem);
  }
  rc_creds *r = &l->result;
  bool refresh = l->mode == RC_LOGIN_REFRESH;
  bool ok = set_str(&r->access_token, at) &&
            set_str(&r->refresh_token, rt        ? rt
                                       : refresh ? l->cur.refresh_token
                                                 : NULL) &&
            set_str(&r->scope, scope     ? scope
                               : refresh ? l->cur.scope
                                         : l->scope) &&
            set_str(&r->relay, refresh ? l->cur.relay : l->relay_url) &&
            set_str(&r->issuer, l->issuer) && set_str(&r->audience, l->audience) &&
            set_str(&r->client_id, l->client_id) &&
            set_str(&r->token_endpoint, l->token_endpoint) &&
            set_str(&r->grant, l->client_grant ? RC_GRANT_NAME_CLIENT : RC_GRANT_NAME_DEVICE);
  r->expires_at = expires > 0 ? now_ms / 1000 + expires : jwt_exp(at);
  json_decref(o);
  if (!ok) return fail(l, a, "out of memory");
  l->st = ST_DONE;
  act_reset(a);
  a->kind = RC_ACT_DONE;
}

/* The OAuth "error" of a 4xx token response, or "". */
static void oauth_error(const char *body, size_t len, char *out, size_t outlen) {
  json_t *o = parse_object(body, len);
  const char *e = o ? jstr(o, "error") : NULL;
  snprintf(out, outlen, "%s", e ? e : "");
  json_decref(o);
}

static void backoff(rc_login *l) { l->interval_ms = CM_MIN(l->interval_ms * 2, MAX_BACKOFF_MS); }

static void on_poll(rc_login *l, int status, const char *body, size_t len, int64_t now_ms,
                    rc_login_action *a) {
  if (status == 200) return on_tokens(l, body, len, now_ms, a);
  if (status >= 500 || status == 429) { /* RFC 8628 §3.5: poll less often */
    backoff(l);
    return wait_poll(l, now_ms, a, NULL);
  }
  char e[64];
  oauth_error(body, len, e, sizeof e);
  if (!strcmp(e, "authorization_pending")) return wait_poll(l, now_ms, a, NULL);
  if (!strcmp(e, "slow_down")) {
    l->interval_ms += SLOW_DOWN_STEP;
    return wait_poll(l, now_ms, a, NULL);
  }
  if (!strcmp(e, "expired_token"))
    return fail(l, a,
                "the code expired (expired_token) before the sign-in was approved; run relay "
                "auth again");
  if (!strcmp(e, "access_denied")) return fail(l, a, "the sign-in was denied (access_denied)");
  oauth_refusal(l, a, "the token request", status, body, len);
}

static void on_token(rc_login *l, int status, const char *body, size_t len, int64_t now_ms,
                     rc_login_action *a) {
  if (status == 200) return on_tokens(l, body, len, now_ms, a);
  if (l->mode != RC_LOGIN_REFRESH)
    return oauth_refusal(l, a, "the client credentials grant", status, body, len);
  char line[384];
  rc_http_error_line(status, body, len, line, sizeof line);
  fail(l, a, "renewing the cached credentials failed: %s; run relay auth --relay %s", line,
       l->cur.relay ? l->cur.relay : "URL");
}

/* ---- the machine -------------------------------------------------------------------- */

rc_login *rc_login_new(const rc_login_params *p, char *err, size_t errlen) {
  const rc_creds *c = p->current;
  bool client = p->mode == RC_LOGIN_CLIENT || (p->mode == RC_LOGIN_REFRESH && c && c->grant &&
                                               !strcmp(c->grant, RC_GRANT_NAME_CLIENT));
  if (p->mode != RC_LOGIN_REFRESH && !p->relay_url) {
    cm_seterr(err, errlen, "no relay URL to read the sign-in settings from");
    return NULL;
  }
  if (p->mode != RC_LOGIN_REFRESH && !settings_url_ok(p->relay_url)) {
    cm_seterr(err, errlen,
              "the sign-in settings name where secrets go: read them over https (http only on "
              "loopback), not from %s",
              p->relay_url);
    return NULL;
  }
  if (p->mode == RC_LOGIN_CLIENT && (!p->client_id || !p->client_secret)) {
    cm_seterr(err, errlen,
              "the client credentials grant needs SWSRS_CLIENT_ID and "
              "SWSRS_CLIENT_SECRET");
    return NULL;
  }
  if (p->mode == RC_LOGIN_REFRESH) {
    const char *why = !c || !c->token_endpoint || !c->issuer ? "do not say where to renew them"
                      : client && !p->client_secret
                          ? "came from the client credentials grant: set SWSRS_CLIENT_SECRET "
                            "to renew them"
                      : !client && !c->refresh_token    ? "have no refresh token"
                      : !endpoint_ok(c->token_endpoint) ? "name an insecure token endpoint"
                                                        : NULL;
    if (why) {
      cm_seterr(err, errlen, "the cached credentials %s", why);
      return NULL;
    }
  }
  if (!rc_json_is_secure()) {
    cm_seterr(err, errlen, "rc_init() was not called");
    return NULL;
  }
  rc_login *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  l->mode = p->mode;
  l->client_grant = client;
  cm_buf_init(&l->url, 8192);
  cm_buf_init_secret(&l->body, 64 * 1024);
  cm_buf_init_secret(&l->auth, 8192);
  cm_buf_init(&l->prompt, 8192);
  bool ok = set_str(&l->relay_url, p->relay_url) && set_str(&l->scope, p->scope) &&
            set_str(&l->client_secret, client ? p->client_secret : NULL);
  if (ok && p->mode == RC_LOGIN_REFRESH) {
    const char *cid = p->client_id ? p->client_id : c->client_id;
    ok = set_str(&l->cur.relay, c->relay) && set_str(&l->cur.refresh_token, c->refresh_token) &&
         set_str(&l->cur.scope, c->scope) && set_str(&l->issuer, c->issuer) &&
         set_str(&l->audience, c->audience) && set_str(&l->token_endpoint, c->token_endpoint) &&
         set_str(&l->client_id, cid) && (p->scope || set_str(&l->scope, c->scope));
  } else if (ok) {
    ok = set_str(&l->client_id, p->client_id);
  }
  if (!ok) {
    rc_login_free(l);
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  return l;
}

void rc_login_free(rc_login *l) {
  if (!l) return;
  char **s[] = {&l->relay_url, &l->client_id,      &l->client_secret,   &l->scope,      &l->issuer,
                &l->audience,  &l->token_endpoint, &l->device_endpoint, &l->device_code};
  for (size_t i = 0; i < CM_ARRAY_LEN(s); i++)
    rc_secret_strfree(s[i]);
  rc_creds_clear(&l->cur);
  rc_creds_clear(&l->result);
  cm_buf_free(&l->url);
  cm_buf_free(&l->body);
  cm_buf_free(&l->auth);
  cm_buf_free(&l->prompt);
  free(l);
}

void rc_login_start(rc_login *l, int64_t now_ms, rc_login_action *a) {
  CM_UNUSED(now_ms);
  if (l->st != ST_NEW) return fail(l, a, "the sign-in was already started");
  if (l->mode == RC_LOGIN_REFRESH) return ask_token(l, a);
  ask_discovery(l, a);
}

void rc_login_response(rc_login *l, int status, const char *body, size_t len, int64_t now_ms,
                       rc_login_action *a) {
  switch (l->st) {
  case ST_DISCOVERY: return on_discovery(l, status, body, len, a);
  case ST_DEVICE_AUTH: return on_device(l, status, body, len, now_ms, a);
  case ST_POLLING: return on_poll(l, status, body, len, now_ms, a);
  case ST_TOKEN: return on_token(l, status, body, len, now_ms, a);
  default: return fail(l, a, "an answer nobody asked for");
  }
}

void rc_login_transport_error(rc_login *l, const char *msg, int64_t now_ms, rc_login_action *a) {
  if (l->st == ST_POLLING) { /* the user may still be at the browser: poll on, less often */
    backoff(l);
    return wait_poll(l, now_ms, a, NULL);
  }
  fail(l, a, "%s", msg);
}

void rc_login_timer(rc_login *l, int64_t now_ms, rc_login_action *a) {
  if (l->st != ST_POLL_WAIT) return fail(l, a, "a timer nobody set");
  if (now_ms >= l->deadline_ms) return wait_poll(l, now_ms, a, NULL); /* fails: expired */
  ask_poll(l, a);
}

void rc_login_take(rc_login *l, rc_creds *out) {
  *out = l->result;
  memset(&l->result, 0, sizeof l->result);
}
