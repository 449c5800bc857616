/*
 * admin.c — `relay create|list|get|delete`: the admin API called with a
 * bearer token from --oidc-token, $SWSRS_OIDC_TOKEN or the cached
 * credentials (renewed first when they end within a minute, or once after
 * a 401), the answer checked and printed in the format asked for.  A
 * listing is fetched a page at a time and printed as it comes, so memory
 * stays at one page whatever the number of sessions.
 */
#include "client/admin.h"
#include "client/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define RENEW_MARGIN_S 60   /* renew cached tokens that end sooner than this */
#define MAX_PAGE_SIZE  1000 /* the relay's ?limit maximum */
#define MAX_LIST_BODY  (8u << 20)
#define MAX_PAGE_TOKEN 1024

typedef struct admin_ctx {
  const rc_admin_opts *o;
  uv_loop_t *loop;
  cm_tls_ctx *tls;
  rc_output fmt;
  char path[4096];      /* of the credentials file */
  rc_creds creds;       /* cached credentials, when they are what we use */
  bool cached, renewed; /* the token came from the cache; it was renewed this run */
  bool cache_elsewhere; /* the cache is for another relay, so it was not used */
  const char *bearer;   /* the token sent, or NULL */
  cm_buf base;          /* the relay's base URL */
  char err[1024];
} admin_ctx;

/* ---- output ------------------------------------------------------------------------- */

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -errno;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Writes what b holds to stdout and empties it (wiping: it may hold tokens). */
static int flush_out(admin_ctx *x, cm_buf *b) {
  int rc = write_all(STDOUT_FILENO, cm_buf_head(b), cm_buf_size(b));
  cm_buf_reset(b);
  if (rc != 0) cm_seterr(x->err, sizeof x->err, "cannot write the output: %s", strerror(-rc));
  return rc;
}

static int fail(admin_ctx *x, int status) {
  fprintf(stderr, "%s: %s\n", x->o->cmd, x->err);
  return status;
}

/* ---- credentials ------------------------------------------------------------------------ */

static int renew(admin_ctx *x) {
  rc_login_params p = {.mode = RC_LOGIN_REFRESH,
                       .current = &x->creds,
                       .client_id = x->o->client_id,
                       .client_secret = x->o->client_secret};
  char why[768];
  rc_login *l = rc_login_new(&p, why, sizeof why);
  if (!l) { /* nothing to renew them with */
    cm_seterr(x->err, sizeof x->err, "%s; sign in again with relay auth --relay %s", why,
              x->creds.relay ? x->creds.relay : "URL");
    return -1;
  }
  rc_creds fresh = {0};
  int rc = rc_login_run(x->loop, l, x->tls, &x->o->net, NULL, &fresh, why, sizeof why);
  rc_login_free(l);
  if (rc != 0) {
    cm_seterr(x->err, sizeof x->err, "%s", why);
    return -1;
  }
  rc_creds_clear(&x->creds);
  x->creds = fresh;
  x->bearer = x->creds.access_token;
  x->renewed = true;
  if (rc_creds_save(x->path, &x->creds, why, sizeof why) != 0)
    fprintf(stderr, "%s: the renewed credentials are used but not kept: %s\n", x->o->cmd, why);
  return 0;
}

/* Whether base (a base URL, not NUL-terminated) is the relay `url` names. */
static bool same_relay(const cm_buf *base, const char *url) {
  cm_buf b;
  cm_buf_init(&b, 0);
  bool same = url && rc_base_url(&b, url) == 0 && cm_buf_size(&b) == cm_buf_size(base) &&
              strncasecmp((const char *)cm_buf_head(&b), (const char *)cm_buf_head(base),
                          cm_buf_size(base)) == 0;
  cm_buf_free(&b);
  return same;
}

/* The token to send and the relay to send it to; RC_EXIT_* on failure. */
static int resolve(admin_ctx *x) {
  const rc_admin_opts *o = x->o;
  char why[512];
  bool need_cache = !o->oidc_token || !o->admin_url;
  int rc = need_cache ? rc_creds_path(x->path, sizeof x->path, why, sizeof why) : -ENOENT;
  if (rc == 0) rc = rc_creds_load(x->path, &x->creds, why, sizeof why);
  if (rc != 0 && rc != -ENOENT) {
    cm_seterr(x->err, sizeof x->err, "%s", why);
    return RC_EXIT_FAIL;
  }
  const char *url = o->admin_url ? o->admin_url : x->creds.relay;
  if (!url) {
    cm_seterr(x->err, sizeof x->err,
              "which relay? pass --admin-url URL (or set SWSRS_ADMIN_URL), or sign in first "
              "with relay auth --relay URL");
    return RC_EXIT_USAGE;
  }
  if (rc_base_url(&x->base, url) != 0) {
    cm_seterr(x->err, sizeof x->err, "out of memory");
    return RC_EXIT_FAIL;
  }
  if (o->oidc_token) {
    x->bearer = o->oidc_token;
    return RC_EXIT_OK;
  }
  if (rc == -ENOENT) return RC_EXIT_OK; /* no token: fine for a relay run with --no-auth */
  if (o->admin_url && !same_relay(&x->base, x->creds.relay)) {
    /* A token is for the relay it was got for: another relay (a typo, or
     * one run by someone else) does not get it. */
    x->cache_elsewhere = true;
    return RC_EXIT_OK;
  }
  x->cached = true;
  x->bearer = x->creds.access_token;
  if (rc_creds_expiring(&x->creds, cm_now_wall_ms() / 1000, RENEW_MARGIN_S) && renew(x) != 0)
    return RC_EXIT_FAIL;
  return RC_EXIT_OK;
}

/* ---- requests ----------------------------------------------------------------------------- */

/* One request to the relay; a 401 with cached credentials renews them and
 * tries once more.  0 with the answer in c, or RC_EXIT_FAIL. */
static int call(admin_ctx *x, const char *method, const char *path_query, const char *body,
                rc_call *c) {
  cm_buf url;
  cm_buf_init(&url, 0);
  int rc = cm_buf_append(&url, cm_buf_head(&x->base), cm_buf_size(&x->base));
  if (rc == 0) rc = cm_buf_append(&url, path_query, strlen(path_query) + 1);
  while (rc == 0) {
    rc_http_request req = {.method = method,
                           .url = (const char *)cm_buf_head(&url),
                           .tls = x->tls,
                           .bearer = x->bearer,
                           .body = body,
                           .body_len = body ? strlen(body) : 0,
                           .max_body = MAX_LIST_BODY,
                           .timeout_ms = x->o->net.timeout_ms};
    rc_call_run(x->loop, &req, c);
    /* Renewed at most once a run: a second 401 is the answer. */
    if (c->err || c->status != 401 || !x->cached || x->renewed) break;
    rc_call_free(c);
    if (renew(x) != 0) {
      cm_buf_free(&url);
      return RC_EXIT_FAIL;
    }
  }
  cm_buf_free(&url);
  if (rc != 0) {
    cm_seterr(x->err, sizeof x->err, "out of memory");
    return RC_EXIT_FAIL;
  }
  if (c->err) {
    cm_seterr(x->err, sizeof x->err, "%s%s", c->msg, rc_call_hint(c->msg, &x->o->net));
    rc_call_free(c);
    return RC_EXIT_FAIL;
  }
  return 0;
}

/* A refusal as one line, with a hint when signing in would help. */
static int refused(admin_ctx *x, rc_call *c) {
  char line[768];
  rc_http_error_line(c->status, (const char *)cm_buf_head(&c->body), cm_buf_size(&c->body), line,
                     sizeof line);
  const char *hint = "";
  char other[600];
  if (c->status == 401 && x->cache_elsewhere) {
    snprintf(other, sizeof other,
             " (the cached credentials are for %s and are sent to no other relay: sign in to "
             "this one with relay auth --relay URL, or pass --oidc-token)",
             x->creds.relay);
    hint = other;
  } else if (c->status == 401 && !x->bearer)
    hint = " (sign in with relay auth --relay URL, or pass --oidc-token)";
  else if (c->status == 401 && x->cached)
    hint = " (the cached credentials were refused: run relay auth --relay URL again)";
  cm_seterr(x->err, sizeof x->err, "%s%s", line, hint);
  rc_call_free(c);
  return fail(x, RC_EXIT_FAIL);
}

static json_t *answer_json(admin_ctx *x, rc_call *c) {
  json_t *v = json_loadb((const char *)cm_buf_head(&c->body), cm_buf_size(&c->body), 0, NULL);
  if (!v) cm_seterr(x->err, sizeof x->err, "the relay's answer is not JSON (HTTP %d)", c->status);
  return v;
}

/* Checks the answer, formats it with fmt_one, prints it. */
static int print_one(admin_ctx *x, rc_call *c,
                     int (*fmt_one)(cm_buf *, rc_output, const json_t *, char *, size_t)) {
  json_t *v = answer_json(x, c);
  rc_call_free(c);
  if (!v) return fail(x, RC_EXIT_FAIL);
  cm_buf out;
  cm_buf_init_secret(&out, 0);
  int rc = fmt_one(&out, x->fmt, v, x->err, sizeof x->err);
  json_decref(v);
  if (rc == 0) rc = flush_out(x, &out);
  cm_buf_free(&out);
  return rc == 0 ? RC_EXIT_OK : fail(x, RC_EXIT_FAIL);
}

static int do_create(admin_ctx *x) {
  char body[128 + CM_TARGET_MAX];
  int n = snprintf(body, sizeof body, "{");
  if (x->o->ttl_s)
    n += snprintf(body + n, sizeof body - (size_t)n, "\"ttl_seconds\":%lld", x->o->ttl_s);
  if (x->o->peer_wait_s)
    n += snprintf(body + n, sizeof body - (size_t)n, "%s\"peer_wait_seconds\":%lld",
                  x->o->ttl_s ? "," : "", x->o->peer_wait_s);
  /* A target that cm_target_parse took has no character JSON would escape. */
  if (x->o->target)
    n += snprintf(body + n, sizeof body - (size_t)n, "%s\"target\":\"%s\"", n > 1 ? "," : "",
                  x->o->target);
  snprintf(body + n, sizeof body - (size_t)n, "}");
  rc_call c;
  if (call(x, "POST", "/admin/sessions", body, &c) != 0) return fail(x, RC_EXIT_FAIL);
  if (c.status != 201) return refused(x, &c);
  return print_one(x, &c, rc_fmt_created);
}

static int session_path(admin_ctx *x, char *out, size_t outlen) {
  if (!rc_is_b64url(x->o->id, 128)) {
    cm_seterr(x->err, sizeof x->err, "\"%s\" is not a session id (base64url characters)",
              x->o->id ? x->o->id : "");
    return -1;
  }
  snprintf(out, outlen, "/admin/sessions/%s", x->o->id);
  return 0;
}

static int do_get(admin_ctx *x) {
  char path[200];
  rc_call c;
  if (session_path(x, path, sizeof path) != 0) return fail(x, RC_EXIT_USAGE);
  if (call(x, "GET", path, NULL, &c) != 0) return fail(x, RC_EXIT_FAIL);
  if (c.status != 200) return refused(x, &c);
  return print_one(x, &c, rc_fmt_status);
}

static int do_delete(admin_ctx *x) {
  char path[200];
  rc_call c;
  if (session_path(x, path, sizeof path) != 0) return fail(x, RC_EXIT_USAGE);
  if (call(x, "DELETE", path, NULL, &c) != 0) return fail(x, RC_EXIT_FAIL);
  if (c.status != 204 && c.status != 200) return refused(x, &c);
  rc_call_free(&c);
  cm_buf out;
  cm_buf_init(&out, 0);
  rc_fmt_deleted(&out, x->fmt, x->o->id);
  int rc = flush_out(x, &out);
  cm_buf_free(&out);
  return rc == 0 ? RC_EXIT_OK : fail(x, RC_EXIT_FAIL);
}

/* One page's items into out; *next gets the next page's token ("" on the last). */
static int list_page(admin_ctx *x, const json_t *page, cm_buf *out, uint64_t *count, char *next,
                     size_t nextlen) {
  const json_t *items = json_object_get(page, "sessions"), *tok;
  if (!json_is_array(items)) {
    cm_seterr(x->err, sizeof x->err, "the relay's listing has no \"sessions\" array");
    return -EPROTO;
  }
  size_t i;
  const json_t *st;
  json_array_foreach(items, i, st) {
    int rc = rc_fmt_list_item(out, x->fmt, st, (*count)++, x->err, sizeof x->err);
    if (rc != 0) return rc;
  }
  tok = json_object_get(page, "next_page_token");
  next[0] = '\0';
  if (json_is_string(tok) && json_string_length(tok) < nextlen)
    snprintf(next, nextlen, "%s", json_string_value(tok));
  if (next[0] && json_array_size(items) == 0) {
    cm_seterr(x->err, sizeof x->err, "the relay's listing goes on with an empty page");
    return -EPROTO;
  }
  return 0;
}

static int do_list(admin_ctx *x) {
  long long size = x->o->page_size > 0 ? CM_MIN(x->o->page_size, MAX_PAGE_SIZE) : MAX_PAGE_SIZE;
  char next[MAX_PAGE_TOKEN] = "";
  uint64_t count = 0;
  cm_buf out, q;
  cm_buf_init(&out, 0);
  cm_buf_init(&q, 0);
  int rc = 0;
  rc_fmt_list_begin(&out, x->fmt);
  do {
    cm_buf_reset(&q);
    cm_buf_printf(&q, "/admin/sessions?limit=%lld", size);
    if (next[0]) {
      rc_buf_puts(&q, "&page_token=");
      rc_form_encode(&q, next);
    }
    rc_call c;
    cm_buf_append(&q, "", 1);
    if (call(x, "GET", (const char *)cm_buf_head(&q), NULL, &c) != 0) {
      rc = fail(x, RC_EXIT_FAIL);
      break;
    }
    if (c.status != 200) {
      rc = refused(x, &c);
      break;
    }
    json_t *page = answer_json(x, &c);
    rc_call_free(&c);
    int prc = page ? list_page(x, page, &out, &count, next, sizeof next) : -EPROTO;
    json_decref(page);
    /* Printed page by page: a later failure leaves a cut listing and exit 1. */
    if (prc != 0 || flush_out(x, &out) != 0) {
      rc = fail(x, RC_EXIT_FAIL);
      break;
    }
  } while (next[0]);
  if (rc == 0) {
    rc_fmt_list_end(&out, x->fmt, count);
    if (flush_out(x, &out) != 0) rc = fail(x, RC_EXIT_FAIL);
  }
  cm_buf_free(&out);
  cm_buf_free(&q);
  return rc;
}

int rc_admin_run(const rc_admin_opts *o) {
  admin_ctx x = {.o = o, .loop = uv_default_loop(), .fmt = rc_output_resolve(o->output, 1)};
  cm_buf_init(&x.base, 0);
  /* TLS first: renewing cached credentials already needs it. */
  int rc = (x.tls = rc_tls_new(&o->net.tls, x.err, sizeof x.err)) ? resolve(&x) : RC_EXIT_FAIL;
  if (rc != RC_EXIT_OK) {
    fail(&x, rc);
  } else {
    switch (o->op) {
    case RC_ADMIN_CREATE: rc = do_create(&x); break;
    case RC_ADMIN_LIST: rc = do_list(&x); break;
    case RC_ADMIN_GET: rc = do_get(&x); break;
    case RC_ADMIN_DELETE: rc = do_delete(&x); break;
    }
  }
  rc_creds_clear(&x.creds);
  cm_tls_ctx_free(x.tls);
  cm_buf_free(&x.base);
  return rc;
}
