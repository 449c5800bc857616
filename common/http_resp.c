/*
 * http_resp.c — the HTTP/1.1 response parser every client of ours shares
 * (the IdP fetches, the admin client, the WebSocket upgrade), sans-I/O: a
 * thin layer over libhttp-parser that keeps the final response's headers
 * and body under caps, and the first error or completion.  See common.h.
 */
#include "common/common.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

enum { IN_NONE, IN_FIELD, IN_VALUE };

static int fail(cm_http_resp *r, int err, const char *msg) {
  r->result = err;
  r->errmsg = msg;
  return -1;
}

/* Each message (interim ones included) starts with no headers: only the
 * final response's are kept. */
static int on_begin(http_parser *p) {
  cm_http_resp *r = p->data;
  cm_buf_reset(&r->head);
  r->nheaders = 0;
  r->in = IN_NONE;
  return 0;
}

/* Ends the name or value being gathered with a NUL; a value loses its
 * trailing blanks (RFC 9110 §5.5: they are not part of it). */
static int end_piece(cm_http_resp *r) {
  if (r->in == IN_VALUE)
    while (cm_buf_size(&r->head) > 0 &&
           (r->head.data[r->head.len - 1] == ' ' || r->head.data[r->head.len - 1] == '\t'))
      r->head.len--;
  if (cm_buf_append(&r->head, "", 1) != 0) return fail(r, -EPROTO, "response headers too large");
  return 0;
}

static int on_field(http_parser *p, const char *at, size_t len) {
  cm_http_resp *r = p->data;
  if (r->in != IN_FIELD) {
    if (r->in == IN_VALUE && end_piece(r) != 0) return -1;
    if (r->nheaders == CM_HTTP_RESP_MAX_HEADERS) return fail(r, -EPROTO, "too many headers");
    r->nheaders++;
    r->in = IN_FIELD;
  }
  if (cm_buf_append(&r->head, at, len) != 0) return fail(r, -EPROTO, "response headers too large");
  return 0;
}

static int on_value(http_parser *p, const char *at, size_t len) {
  cm_http_resp *r = p->data;
  if (r->in == IN_FIELD) {
    if (end_piece(r) != 0) return -1;
    r->in = IN_VALUE;
  }
  if (cm_buf_append(&r->head, at, len) != 0) return fail(r, -EPROTO, "response headers too large");
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  cm_http_resp *r = p->data;
  if (cm_buf_append(&r->body, at, len) != 0) return fail(r, -EFBIG, "response body too large");
  return 0;
}

/* An interim response (RFC 9110 §15.2) precedes the real one.  101 is
 * final: it either answers our upgrade or one we never asked for, which
 * the caller refuses. */
static bool is_interim(unsigned status) { return status >= 100 && status < 200 && status != 101; }

/* libhttp-parser takes any 1 to 3 digits; RFC 9110 §15 allows 100..599.
 * 1xx, 204 and 304 end at their head whatever Content-Length says (RFC
 * 9112 §6.3), and so does a HEAD answer; returning 1 tells libhttp-parser
 * there is no body. */
static int on_headers_complete(http_parser *p) {
  cm_http_resp *r = p->data;
  unsigned s = p->status_code;
  if (s < 100 || s > 599) return fail(r, -EPROTO, "invalid status code");
  if (r->in == IN_VALUE && end_piece(r) != 0) return -1;
  r->in = IN_NONE;
  return (s >= 100 && s < 200) || s == 204 || s == 304 || r->no_body;
}

static int on_complete(http_parser *p) {
  cm_http_resp *r = p->data;
  if (is_interim(p->status_code)) return 0;
  r->result = 1;
  r->status = (int)p->status_code;
  /* Stop here: bytes after the response (a 101's WebSocket frames, or a
   * response we did not ask for) are not ours. */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings g_settings = {.on_message_begin = on_begin,
                                                .on_header_field = on_field,
                                                .on_header_value = on_value,
                                                .on_headers_complete = on_headers_complete,
                                                .on_body = on_body,
                                                .on_message_complete = on_complete};

void cm_http_resp_init(cm_http_resp *r, size_t max_body, unsigned flags) {
  memset(r, 0, sizeof *r);
  if (flags & CM_HTTP_RESP_SECRET) {
    cm_buf_init_secret(&r->body, max_body);
    cm_buf_init_secret(&r->head, CM_HTTP_RESP_MAX_HEAD);
  } else {
    cm_buf_init(&r->body, max_body);
    cm_buf_init(&r->head, CM_HTTP_RESP_MAX_HEAD);
  }
  r->no_body = (flags & CM_HTTP_RESP_HEAD) != 0;
  http_parser_init(&r->parser, HTTP_RESPONSE);
  r->parser.data = r;
}

void cm_http_resp_free(cm_http_resp *r) {
  cm_buf_free(&r->body);
  cm_buf_free(&r->head);
}

int cm_http_resp_feed(cm_http_resp *r, const void *data, size_t len, size_t *consumed) {
  size_t n = 0;
  /* libhttp-parser reads an empty buffer as the end of the connection. */
  if (r->result == 0 && len > 0) {
    n = http_parser_execute(&r->parser, &g_settings, data, len);
    if (r->result == 0 && n != len) {
      r->result = -EPROTO;
      r->errmsg = http_errno_description(HTTP_PARSER_ERRNO(&r->parser));
    }
  }
  if (consumed) *consumed = n;
  return r->result;
}

int cm_http_resp_eof(cm_http_resp *r) {
  if (r->result == 0) http_parser_execute(&r->parser, &g_settings, NULL, 0);
  return r->result;
}

size_t cm_http_resp_header_count(const cm_http_resp *r) { return r->result == 1 ? r->nheaders : 0; }

bool cm_http_resp_header_at(const cm_http_resp *r, size_t i, const char **name,
                            const char **value) {
  if (i >= cm_http_resp_header_count(r)) return false;
  const char *p = (const char *)cm_buf_head(&r->head);
  for (;; i--) {
    const char *v = p + strlen(p) + 1;
    if (i == 0) {
      *name = p;
      *value = v;
      return true;
    }
    p = v + strlen(v) + 1;
  }
}

const char *cm_http_resp_header(const cm_http_resp *r, const char *name) {
  const char *n, *v;
  for (size_t i = 0; cm_http_resp_header_at(r, i, &n, &v); i++)
    if (strcasecmp(n, name) == 0) return v;
  return NULL;
}
