/*
 * resp.c — the IdP client's HTTP/1.1 response parser (see resp.h): a thin
 * layer over libhttp-parser that collects the body under a cap and keeps
 * the first error or completion.
 */
#include "relay/resp.h"

#include <errno.h>
#include <string.h>

static int on_body(http_parser *p, const char *at, size_t len) {
  rly_resp *r = p->data;
  if (cm_buf_append(&r->body, at, len) != 0) {
    r->result = -EFBIG;
    r->errmsg = "response body too large";
    return -1;
  }
  return 0;
}

/* An interim response (RFC 9110 §15.2) precedes the real one; 101 is
 * final here, since we never ask to upgrade. */
static bool is_interim(unsigned status) { return status >= 100 && status < 200 && status != 101; }

/* libhttp-parser takes any 1 to 3 digits; RFC 9110 §15 allows 100..599.
 * 1xx, 204 and 304 end at their head whatever Content-Length says (RFC
 * 9112 §6.3); returning 1 tells libhttp-parser there is no body. */
static int on_headers_complete(http_parser *p) {
  rly_resp *r = p->data;
  unsigned s = p->status_code;
  if (s < 100 || s > 599) {
    r->result = -EPROTO;
    r->errmsg = "invalid status code";
    return -1;
  }
  return (s >= 100 && s < 200) || s == 204 || s == 304;
}

static int on_complete(http_parser *p) {
  rly_resp *r = p->data;
  if (is_interim(p->status_code)) return 0;
  r->result = 1;
  r->status = (int)p->status_code;
  /* Stop here: bytes after the response must not reach its body. */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings g_settings = {.on_headers_complete = on_headers_complete,
                                                .on_body = on_body,
                                                .on_message_complete = on_complete};

void rly_resp_init(rly_resp *r, size_t max_body) {
  memset(r, 0, sizeof *r);
  cm_buf_init(&r->body, max_body);
  http_parser_init(&r->parser, HTTP_RESPONSE);
  r->parser.data = r;
}

void rly_resp_free(rly_resp *r) { cm_buf_free(&r->body); }

int rly_resp_feed(rly_resp *r, const void *data, size_t len) {
  /* libhttp-parser reads an empty buffer as the end of the connection. */
  if (r->result != 0 || len == 0) return r->result;
  size_t n = http_parser_execute(&r->parser, &g_settings, data, len);
  if (r->result == 0 && n != len) {
    r->result = -EPROTO;
    r->errmsg = http_errno_description(HTTP_PARSER_ERRNO(&r->parser));
  }
  return r->result;
}

int rly_resp_eof(rly_resp *r) {
  if (r->result == 0) http_parser_execute(&r->parser, &g_settings, NULL, 0);
  return r->result;
}
