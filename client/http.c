/*
 * http.c — one-shot HTTP/1.1 requests for the admin API and the identity
 * provider (see client.h), on the exchange of exchange.c.  The request is
 * put together in a secret buffer (it may carry a bearer token or a client
 * secret) and the answer is parsed into secret buffers (it may carry slot
 * tokens or access tokens).
 */
#include "client/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <jansson.h>
#include <string.h>

struct rc_http {
  rc_xchg *x;
  rc_http_cb cb;
  void *ud;
};

static bool method_ok(const char *m) {
  size_t n = m ? strlen(m) : 0;
  if (n == 0 || n > 16) return false;
  for (size_t i = 0; i < n; i++)
    if (m[i] < 'A' || m[i] > 'Z') return false;
  return true;
}

static bool header_line_ok(const char *h) {
  const char *colon = strchr(h, ':');
  return colon && colon != h && rc_header_safe(h);
}

static bool sends_length(const rc_http_request *r) {
  return r->body || !strcmp(r->method, "POST") || !strcmp(r->method, "PUT") ||
         !strcmp(r->method, "PATCH");
}

/* The request, in b (a secret buffer). */
static int build(cm_buf *b, const rc_url *u, const rc_http_request *r) {
  char auth[RC_HOST_MAX + 16], len[32];
  rc_url_authority(u, auth, sizeof auth);
  int rc = 0;
  rc |= rc_buf_puts(b, r->method);
  rc |= rc_buf_puts(b, " ");
  rc |= rc_buf_puts(b, u->path);
  rc |= rc_buf_puts(b, " HTTP/1.1\r\nHost: ");
  rc |= rc_buf_puts(b, auth);
  rc |= rc_buf_puts(b, "\r\nUser-Agent: " RC_USER_AGENT "\r\nAccept: application/json\r\n"
                       "Connection: close\r\n");
  if (r->bearer) {
    rc |= rc_buf_puts(b, "Authorization: Bearer ");
    rc |= rc_buf_puts(b, r->bearer);
    rc |= rc_buf_puts(b, "\r\n");
  }
  for (const char *const *h = r->headers; h && *h; h++) {
    rc |= rc_buf_puts(b, *h);
    rc |= rc_buf_puts(b, "\r\n");
  }
  if (sends_length(r)) {
    if (r->body) {
      rc |= rc_buf_puts(b, "Content-Type: ");
      rc |= rc_buf_puts(b, r->content_type ? r->content_type : "application/json");
      rc |= rc_buf_puts(b, "\r\n");
    }
    snprintf(len, sizeof len, "Content-Length: %zu\r\n", r->body ? r->body_len : 0);
    rc |= rc_buf_puts(b, len);
  }
  rc |= rc_buf_puts(b, "\r\n");
  if (r->body && r->body_len) rc |= cm_buf_append(b, r->body, r->body_len);
  return rc ? -ENOMEM : 0;
}

static bool on_done(void *ud, int err, const char *msg, cm_http_resp *resp, cm_stream *st,
                    uint8_t *rest, size_t restlen) {
  CM_UNUSED(st);
  CM_UNUSED(rest);
  CM_UNUSED(restlen);
  rc_http *h = ud;
  if (err) {
    h->cb(h->ud, err, msg, NULL);
  } else {
    rc_http_response res = {.status = resp->status,
                            .body = cm_buf_head(&resp->body),
                            .body_len = cm_buf_size(&resp->body),
                            .resp = resp};
    h->cb(h->ud, 0, NULL, &res);
  }
  free(h);
  return false;
}

static bool request_ok(const rc_http_request *r, const rc_url *u, char *err, size_t errlen) {
  if (!method_ok(r->method)) {
    cm_seterr(err, errlen, "invalid HTTP method");
    return false;
  }
  if (u->websocket) {
    cm_seterr(err, errlen, "an HTTP request needs an http or https URL");
    return false;
  }
  if (u->tls && !r->tls) {
    cm_seterr(err, errlen, "an https URL needs a TLS context");
    return false;
  }
  if (r->bearer && (!*r->bearer || !rc_header_safe(r->bearer) || strchr(r->bearer, ' '))) {
    cm_seterr(err, errlen, "the bearer token has characters a header cannot carry");
    return false;
  }
  if (r->content_type && !rc_header_safe(r->content_type)) {
    cm_seterr(err, errlen, "invalid content type");
    return false;
  }
  for (const char *const *h = r->headers; h && *h; h++) {
    if (!header_line_ok(*h)) {
      cm_seterr(err, errlen, "invalid extra header line");
      return false;
    }
  }
  return true;
}

rc_http *rc_http_start(uv_loop_t *loop, const rc_http_request *req, rc_http_cb cb, void *ud,
                       char *err, size_t errlen) {
  rc_url u;
  if (rc_url_parse(req->url, &u, err, errlen) != 0 || !request_ok(req, &u, err, errlen))
    return NULL;
  cm_buf b;
  cm_buf_init_secret(&b, 0);
  if (build(&b, &u, req) != 0) {
    cm_buf_free(&b);
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  rc_http *h = calloc(1, sizeof *h);
  if (!h) {
    cm_buf_free(&b);
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  h->cb = cb;
  h->ud = ud;
  rc_xchg_opts o = {.url = &u,
                    .tls = req->tls,
                    .request = &b,
                    .max_body = req->max_body,
                    .resp_flags = CM_HTTP_RESP_SECRET |
                                  (!strcmp(req->method, "HEAD") ? CM_HTTP_RESP_HEAD : 0),
                    .connect_timeout_ms = req->connect_timeout_ms,
                    .timeout_ms = req->timeout_ms};
  h->x = rc_xchg_start(loop, &o, on_done, h);
  if (!h->x) {
    free(h);
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  return h;
}

void rc_http_cancel(rc_http *h) {
  rc_xchg_cancel(h->x);
  free(h);
}

/* Copies s into out on one line: control characters become '?'. */
static void one_line(const char *s, char *out, size_t outlen) {
  size_t i = 0;
  for (; s[i] && i + 1 < outlen; i++)
    out[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
  out[i] = '\0';
}

bool rc_error_message(const uint8_t *body, size_t len, char *out, size_t outlen) {
  if (outlen) out[0] = '\0';
  if (!body || !len || !outlen) return false;
  json_t *j = json_loadb((const char *)body, len, 0, NULL);
  const char *s = NULL;
  if (json_is_object(j)) {
    s = json_string_value(json_object_get(j, "message"));
    if (!s || !*s) s = json_string_value(json_object_get(j, "error"));
  }
  bool ok = s && *s;
  if (ok) one_line(s, out, outlen);
  json_decref(j);
  return ok;
}
