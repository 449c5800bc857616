/*
 * http.c — the HTTP/1.1 server core (see http.h): libhttp-parser drives
 * parsing; this file adds limits, request assembly, pipelining order and
 * response formatting.  No I/O happens here.
 *
 * Memory: the request line and headers accumulate in one arena (bounded by
 * max_header_bytes); strings are NUL-terminated in place and the header
 * table points into the arena once the headers are complete, so a request
 * costs two allocations however many headers it has.
 */
#include "relay/http.h"

#include <ctype.h>
#include <errno.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

enum piece { P_NONE, P_URL, P_FIELD, P_VALUE };

typedef struct hdr_off {
  size_t name, value;
} hdr_off;

struct rly_http_conn {
  http_parser parser;
  rly_http_limits lim;
  rly_http_cbs cbs;
  void *ud;
  char server[64];

  cm_buf in;    /* unparsed input */
  cm_buf arena; /* target, header names and values, path */
  cm_buf body;
  hdr_off *hoff;
  rly_http_header *headers;
  size_t nheaders;
  enum piece last;
  size_t url_off, url_len, header_bytes;

  int error_status;         /* set by a callback that aborts parsing */
  const char *error_detail; /* its message, static; NULL: the parser's */
  /* Where the parser runs (for looking back from a callback's pointer):
   * the buffer given to http_parser_execute, and the last byte before it
   * that is not a blank (SP or HTAB). */
  const char *exec_base;
  char before_exec;
  bool in_request, headers_done, complete, busy, closed, upgraded, in_feed;
  bool streaming;    /* a chunked (or close-delimited) body is being sent */
  bool stream_raw;   /* HTTP/1.0 peer: no chunk framing, close at the end */
  bool stream_close; /* close once the streamed body ends */
  uint64_t requests;
  rly_http_request req;
};

static const http_parser_settings g_settings;

void rly_http_limits_default(rly_http_limits *l) {
  l->max_url = 8192;
  l->max_header_bytes = 16384;
  l->max_headers = 64;
  l->max_body = 1 << 20;
  l->max_pending_input = 65536;
}

const char *rly_http_status_text(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 421: return "Misdirected Request";
  case 426: return "Upgrade Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

/* The arena holds what max_header_bytes counts (target, names, values)
 * plus what it does not: a NUL after each piece and the path copy. */
static size_t arena_max(const rly_http_limits *l) {
  return l->max_header_bytes + l->max_url + 2 * l->max_headers + 64;
}

rly_http_conn *rly_http_conn_new(const rly_http_limits *l, const rly_http_cbs *cbs, void *ud,
                                 const char *server_name) {
  rly_http_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  if (l)
    c->lim = *l;
  else
    rly_http_limits_default(&c->lim);
  c->hoff = calloc(c->lim.max_headers, sizeof *c->hoff);
  c->headers = calloc(c->lim.max_headers, sizeof *c->headers);
  if (!c->hoff || !c->headers) {
    rly_http_conn_free(c);
    return NULL;
  }
  c->cbs = *cbs;
  c->ud = ud;
  snprintf(c->server, sizeof c->server, "%s", server_name ? server_name : "relay");
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  cm_buf_init(&c->in, 0);
  cm_buf_init(&c->arena, arena_max(&c->lim));
  cm_buf_init(&c->body, c->lim.max_body);
  return c;
}

void rly_http_conn_free(rly_http_conn *c) {
  if (!c) return;
  cm_buf_free(&c->in);
  cm_buf_free(&c->arena);
  cm_buf_free(&c->body);
  free(c->hoff);
  free(c->headers);
  free(c);
}

static void reset_request(rly_http_conn *c) {
  cm_buf_reset(&c->arena);
  cm_buf_reset(&c->body);
  /* Keep-alive connections sit idle most of the time: hold no memory. */
  if (c->arena.cap > 4096) cm_buf_free(&c->arena), cm_buf_init(&c->arena, arena_max(&c->lim));
  if (c->body.cap > 4096) cm_buf_free(&c->body), cm_buf_init(&c->body, c->lim.max_body);
  c->nheaders = 0;
  c->last = P_NONE;
  c->url_len = c->header_bytes = 0;
  c->in_request = c->headers_done = c->complete = false;
  memset(&c->req, 0, sizeof c->req);
}

/* ---- parser callbacks ------------------------------------------------------ */

static int fail(rly_http_conn *c, int status) {
  c->error_status = status;
  return -1;
}

static int refuse(rly_http_conn *c, int status, const char *why) {
  c->error_detail = why;
  return fail(c, status);
}

/* RFC 9110 §5.6.2: tchar. */
static bool is_tchar(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* The request-target is visible ASCII (RFC 9112 §3.2; RFC 3986 has no
 * spaces, controls or raw octets above 0x7E).  libhttp-parser, built
 * lenient, lets a tab and high octets through, which another parser on
 * the path may read differently. */
static bool target_bytes_ok(const char *at, size_t len) {
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)at[i] <= 0x20 || (unsigned char)at[i] >= 0x7F) return false;
  return true;
}

/* True when the value piece at `at` starts a continuation line (obs-fold,
 * RFC 9112 §5.2): the last non-blank byte before it is a line end, where
 * a value's own start follows the colon. */
static bool starts_obs_fold(const rly_http_conn *c, const char *at) {
  const char *p = at;
  while (p > c->exec_base && (p[-1] == ' ' || p[-1] == '\t'))
    p--;
  char before = p > c->exec_base ? p[-1] : c->before_exec;
  return before == '\n' || before == '\r';
}

static int terminate_piece(rly_http_conn *c) {
  if (c->last == P_NONE) return 0;
  return cm_buf_append(&c->arena, "", 1) == 0 ? 0 : fail(c, 431);
}

static int piece(rly_http_conn *c, enum piece kind, const char *at, size_t len) {
  c->header_bytes += len;
  if (c->header_bytes > c->lim.max_header_bytes) return fail(c, kind == P_URL ? 414 : 431);
  /* Chunked trailers: counted against the limit but not kept, since the
   * header table already points into the arena (growing it would move it). */
  if (c->headers_done) return 0;
  if (kind != c->last) {
    if (terminate_piece(c) != 0) return -1;
    if (kind == P_FIELD) {
      if (c->nheaders == c->lim.max_headers) return fail(c, 431);
      c->hoff[c->nheaders++].name = cm_buf_size(&c->arena);
    } else if (kind == P_VALUE) {
      c->hoff[c->nheaders - 1].value = cm_buf_size(&c->arena);
    } else {
      c->url_off = cm_buf_size(&c->arena);
    }
    c->last = kind;
  }
  if (cm_buf_append(&c->arena, at, len) != 0) return fail(c, kind == P_URL ? 414 : 431);
  return 0;
}

static int on_message_begin(http_parser *p) {
  rly_http_conn *c = p->data;
  c->in_request = true;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  rly_http_conn *c = p->data;
  c->url_len += len;
  if (c->url_len > c->lim.max_url) return fail(c, 414);
  if (!target_bytes_ok(at, len)) return refuse(c, 400, "invalid byte in the request-target");
  return piece(c, P_URL, at, len);
}

/* The parser (built without HTTP_PARSER_STRICT) takes a space as part of
 * a name and still recognises "Transfer-Encoding " as the header that
 * frames the body: a proxy reading the name strictly frames the request
 * differently (request smuggling).  A name is a token, nothing else. */
static int on_header_field(http_parser *p, const char *at, size_t len) {
  rly_http_conn *c = p->data;
  for (size_t i = 0; i < len; i++)
    if (!is_tchar((unsigned char)at[i])) return refuse(c, 400, "invalid header field name");
  return piece(c, P_FIELD, at, len);
}

/* The parser joins obs-fold continuation lines to the value; RFC 9112
 * §5.2 lets a server refuse them, which is the only reading every proxy
 * agrees with.  An empty piece carries nothing (the parser reports empty
 * values at the start of the next line). */
static int on_header_value(http_parser *p, const char *at, size_t len) {
  rly_http_conn *c = p->data;
  if (len > 0 && starts_obs_fold(c, at)) return refuse(c, 400, "obsolete line folding");
  return piece(c, P_VALUE, at, len);
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    s[--n] = '\0';
  return s;
}

/* RFC 9112 §3.2.2: a server must accept the absolute form
 * ("GET http://host/x"); routing uses its path. */
static size_t absolute_form_skip(const char *target) {
  if (target[0] == '/') return 0;
  const char *sch = strstr(target, "://");
  if (!sch || strcspn(target, "/?") < (size_t)(sch - target)) return 0;
  const char *path = strchr(sch + 3, '/');
  if (path) return (size_t)(path - target);
  return 0;
}

/* uri-host [":" port] (RFC 3986 §3.2.2): reg-name, IPv4 or IP-literal
 * characters; empty is allowed (RFC 9112 §3.2). */
static bool host_value_ok(const char *v) {
  for (const unsigned char *q = (const unsigned char *)v; *q; q++)
    if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
          strchr("-._~%!$&'()*+,;=:[]", *q)))
      return false;
  return true;
}

/* RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without
 * Host, to any request with more than one, and to an invalid one (which
 * host a request is for must not depend on who reads it). */
static const char *host_problem(const rly_http_request *r) {
  size_t i = 0, n = 0;
  const char *host = NULL;
  for (const char *v; (v = rly_http_header_next(r, "Host", &i)) != NULL; n++)
    host = v;
  if (n == 0) return r->http_minor >= 1 ? "Host header required" : NULL;
  if (n > 1) return "more than one Host header";
  return host_value_ok(host) ? NULL : "invalid Host header";
}

/* RFC 9112 §6.1-6.3: the parser refuses Content-Length twice or together
 * with Transfer-Encoding; what it lets through and a proxy may frame
 * differently is refused here: Transfer-Encoding twice or on HTTP/1.0,
 * and chunked not exactly once.  Any other coding is 501: the parser
 * would decode the chunks and hand over the still-encoded body. */
static int check_transfer_encoding(rly_http_conn *c, const rly_http_request *r) {
  size_t i = 0, n = 0;
  const char *te = NULL;
  for (const char *v; (v = rly_http_header_next(r, "Transfer-Encoding", &i)) != NULL; n++)
    te = v;
  if (n == 0) return 0;
  if (n > 1) return refuse(c, 400, "more than one Transfer-Encoding header");
  if (r->http_minor == 0) return refuse(c, 400, "Transfer-Encoding in an HTTP/1.0 request");
  size_t chunked = 0, len;
  for (const char *cur = te, *item; (item = rly_http_list_next(&cur, &len)) != NULL;) {
    if (len != 7 || strncasecmp(item, "chunked", 7) != 0)
      return refuse(c, 501, "unsupported transfer coding");
    chunked++;
  }
  return chunked == 1 ? 0 : refuse(c, 400, "chunked must be applied exactly once");
}

static int on_headers_complete(http_parser *p) {
  rly_http_conn *c = p->data;
  if (c->last == P_FIELD) { /* a name without a value */
    if (cm_buf_append(&c->arena, "", 1) != 0) return fail(c, 431);
    c->hoff[c->nheaders - 1].value = cm_buf_size(&c->arena);
    c->last = P_VALUE;
  }
  if (terminate_piece(c) != 0) return -1;
  /* The path is a separate copy so the raw target stays intact. */
  size_t path_off = cm_buf_size(&c->arena);
  size_t from = c->url_off + absolute_form_skip((const char *)cm_buf_head(&c->arena) + c->url_off);
  size_t plen = strcspn((const char *)cm_buf_head(&c->arena) + from, "?");
  /* Reserve first: growing the arena may move the target we copy from. */
  uint8_t *dst = cm_buf_reserve(&c->arena, plen + 1);
  if (!dst) return fail(c, 431);
  memcpy(dst, cm_buf_head(&c->arena) + from, plen);
  dst[plen] = '\0';
  cm_buf_commit(&c->arena, plen + 1);

  char *base = (char *)cm_buf_head(&c->arena);
  for (size_t i = 0; i < c->nheaders; i++) {
    c->headers[i].name = base + c->hoff[i].name;
    c->headers[i].value = trim(base + c->hoff[i].value);
  }
  rly_http_request *r = &c->req;
  r->method = http_method_str((enum http_method)p->method);
  r->target = base + c->url_off;
  r->path = base + path_off;
  const char *q = strchr(r->target, '?');
  r->query = q ? q + 1 : "";
  r->headers = c->headers;
  r->nheaders = c->nheaders;
  r->http_minor = p->http_minor;
  r->head = p->method == HTTP_HEAD;
  c->headers_done = true;

  if (p->http_major != 1) return fail(c, 505);
  const char *why = host_problem(r);
  if (why) return refuse(c, 400, why);
  int rc = check_transfer_encoding(c, r);
  if (rc != 0) return rc;
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->lim.max_body) return fail(c, 413);
  const char *expect = rly_http_header_get(r, "Expect");
  if (expect && strcasecmp(expect, "100-continue") == 0) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    c->cbs.send(c->ud, cont, sizeof cont - 1);
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  rly_http_conn *c = p->data;
  if (cm_buf_append(&c->body, at, len) != 0) return fail(c, 413);
  return 0;
}

static int on_message_complete(http_parser *p) {
  rly_http_conn *c = p->data;
  c->complete = true;
  c->req.body = cm_buf_head(&c->body);
  c->req.body_len = cm_buf_size(&c->body);
  c->req.keep_alive = http_should_keep_alive(p) != 0;
  /* RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored; what follows
   * on the connection is HTTP (libhttp-parser would take it for the new
   * protocol). */
  c->req.upgrade = p->upgrade != 0 && p->http_minor >= 1;
  http_parser_pause(p, 1); /* one request at a time */
  return 0;
}

static const http_parser_settings g_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- driving the parser ---------------------------------------------------- */

static const char *error_code(int status) {
  switch (status) {
  case 400: return "bad_request";
  case 408: return "request_timeout";
  case 413: return "payload_too_large";
  case 414: return "uri_too_long";
  case 431: return "request_header_fields_too_large";
  case 501: return "not_implemented";
  case 505: return "http_version_not_supported";
  default: return "error";
  }
}

static void protocol_error(rly_http_conn *c, int status, const char *detail) {
  c->error_status = status; /* forces Connection: close */
  c->busy = true;           /* the error answers the request being parsed */
  rly_http_respond_error(c, status, error_code(status), detail, NULL);
}

/* The request line of the HTTP/2 connection preface (RFC 9113 §3.4).
 * libhttp-parser stops at the "I" of "PRI" (no such method) and would
 * make it a 400; a client speaking HTTP/2 without ALPN deserves 505. */
static const char h2_preface[] = "PRI * HTTP/2.0\r\n";
#define H2_PREFACE_LEN (sizeof h2_preface - 1)

/* 1: the input starts with the preface; 0: it does not; -1: too short to
 * tell (only while every byte so far matches). */
static int h2_preface_match(const cm_buf *in) {
  size_t n = CM_MIN(cm_buf_size(in), H2_PREFACE_LEN);
  if (memcmp(cm_buf_head(in), h2_preface, n) != 0) return 0;
  return n == H2_PREFACE_LEN ? 1 : -1;
}

static void dispatch(rly_http_conn *c) {
  c->busy = true;
  c->requests++;
  if (c->req.upgrade) c->upgraded = true; /* input past here is not HTTP */
  c->cbs.on_request(c->ud, &c->req);
}

/* Remembers the last non-blank byte of what the parser consumed, for
 * starts_obs_fold when a value piece begins the next buffer. */
static void note_consumed(rly_http_conn *c, const char *data, size_t n) {
  while (n > 0 && (data[n - 1] == ' ' || data[n - 1] == '\t'))
    n--;
  if (n > 0) c->before_exec = data[n - 1];
}

static void run(rly_http_conn *c) {
  while (!c->busy && !c->closed && !c->upgraded && cm_buf_size(&c->in) > 0) {
    if (!c->in_request) {
      int h2 = h2_preface_match(&c->in);
      if (h2 < 0) break; /* wait for the rest of the line */
      if (h2 > 0) {
        cm_buf_reset(&c->in);
        protocol_error(c, 505, "this listener speaks HTTP/1.1 only");
        return;
      }
    }
    size_t avail = cm_buf_size(&c->in);
    const char *data = (const char *)cm_buf_head(&c->in);
    c->exec_base = data;
    size_t n = http_parser_execute(&c->parser, &g_settings, data, avail);
    note_consumed(c, data, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->complete) {
      cm_buf_consume(&c->in, n);
      if (e == HPE_PAUSED) http_parser_pause(&c->parser, 0);
      dispatch(c);
      continue;
    }
    if (e == HPE_OK && n == avail) {
      cm_buf_consume(&c->in, n);
      break;
    }
    int status = c->error_status ? c->error_status : 400;
    if (e == HPE_HEADER_OVERFLOW) status = 431;
    cm_buf_reset(&c->in);
    const char *why = c->error_detail;
    if (!why && status == 400) why = http_errno_description(e);
    protocol_error(c, status, why);
    return;
  }
}

int rly_http_feed(rly_http_conn *c, const uint8_t *data, size_t len) {
  if (c->closed) return 0;
  if (len > 0 && cm_buf_append(&c->in, data, len) != 0) return -ENOMEM;
  if (!c->in_feed) {
    c->in_feed = true;
    run(c);
    c->in_feed = false;
  }
  /* Pipelined (or post-upgrade) bytes wait while a request is answered;
   * past the limit the caller stops reading until the answer is out. */
  return cm_buf_size(&c->in) > c->lim.max_pending_input ? 1 : 0;
}

/* ---- responses ---------------------------------------------------------------- */

static const char *cached_date(void) {
  static _Thread_local int64_t last;
  static _Thread_local char buf[40];
  int64_t now = cm_now_wall_ms() / 1000;
  if (now != last) {
    cm_http_date(now, buf, sizeof buf);
    last = now;
  }
  return buf;
}

/* After the last byte of a response: close, or get ready for the next
 * request (running the parser on what was pipelined meanwhile). */
static int response_done(rly_http_conn *c, bool close, int rc) {
  c->busy = false;
  c->streaming = false;
  if (close || rc != 0) {
    c->closed = true;
    c->cbs.on_close(c->ud);
    return rc;
  }
  reset_request(c);
  /* An asynchronous answer restarts the parser on pipelined input; a
   * synchronous one (inside rly_http_feed) lets the running loop do it. */
  if (!c->in_feed && cm_buf_size(&c->in) > 0) rly_http_feed(c, NULL, 0);
  return 0;
}

int rly_http_respond(rly_http_conn *c, const rly_http_response *r) {
  if (c->closed || !c->busy || c->streaming) return -EINVAL;
  bool close = r->close || !c->req.keep_alive || c->req.upgrade || c->error_status != 0;
  bool no_body = c->req.head || r->status == 204 || r->status == 304 || r->status < 200;
  /* An HTTP/1.0 client cannot take chunks: its streamed body ends with
   * the connection (RFC 9112 §6.3). */
  bool raw = r->chunked && c->req.http_minor == 0;
  if (raw) close = true;
  char head[2048];
  int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: %s\r\n%s%s%s",
                   r->status, rly_http_status_text(r->status), cached_date(), c->server,
                   r->content_type ? "Content-Type: " : "", r->content_type ? r->content_type : "",
                   r->content_type ? "\r\n" : "");
  /* Check before every append: a long content type must not push the
   * next write past the end (size_t wrap). */
  if (n < 0 || n >= (int)sizeof head) return -E2BIG;
  if (r->chunked && !raw)
    n += snprintf(head + n, sizeof head - (size_t)n, "Transfer-Encoding: chunked\r\n");
  else if (!r->chunked && r->status != 204 && r->status != 304)
    n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %zu\r\n", r->body_len);
  if (n >= (int)sizeof head) return -E2BIG;
  /* HTTP/1.0 closes by default: say so when we keep it open. */
  const char *conn = close                    ? "Connection: close\r\n"
                     : c->req.http_minor == 0 ? "Connection: keep-alive\r\n"
                                              : "";
  n += snprintf(head + n, sizeof head - (size_t)n, "%s%s\r\n", conn,
                r->extra_headers ? r->extra_headers : "");
  if (n >= (int)sizeof head) return -E2BIG;
  int rc = c->cbs.send(c->ud, head, (size_t)n);
  if (r->chunked && rc == 0 && !no_body) {
    c->streaming = true;
    c->stream_raw = raw;
    c->stream_close = close;
    return 0; /* busy until rly_http_respond_end */
  }
  if (rc == 0 && !no_body && r->body_len) rc = c->cbs.send(c->ud, r->body, r->body_len);
  return response_done(c, close, rc);
}

int rly_http_respond_chunk(rly_http_conn *c, const void *data, size_t len) {
  if (c->closed || !c->streaming) return -EINVAL;
  if (len == 0) return 0; /* an empty chunk would end the body */
  if (c->stream_raw) return c->cbs.send(c->ud, data, len);
  char size[24];
  int n = snprintf(size, sizeof size, "%zx\r\n", len);
  int rc = c->cbs.send(c->ud, size, (size_t)n);
  if (rc == 0) rc = c->cbs.send(c->ud, data, len);
  if (rc == 0) rc = c->cbs.send(c->ud, "\r\n", 2);
  return rc;
}

int rly_http_respond_end(rly_http_conn *c) {
  if (c->closed || !c->streaming) return -EINVAL;
  int rc = c->stream_raw ? 0 : c->cbs.send(c->ud, "0\r\n\r\n", 5);
  return response_done(c, c->stream_close, rc);
}

bool rly_http_streaming(const rly_http_conn *c) { return c->streaming; }

/* in as the inside of a JSON string, cut (whole escapes only) to fit. */
static void json_escape(const char *in, char *out, size_t outlen) {
  size_t o = 0;
  for (const char *p = in; *p && o + 7 < outlen; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch == '"' || ch == '\\') {
      out[o++] = '\\';
      out[o++] = (char)ch;
    } else if (ch < 0x20) {
      o += (size_t)snprintf(out + o, outlen - o, "\\u%04x", ch);
    } else {
      out[o++] = (char)ch;
    }
  }
  out[o] = '\0';
}

size_t rly_http_format_error(char *out, size_t outlen, int status, const char *code,
                             const char *msg) {
  /* Both escaped: the message may quote client input, and the code may be
   * a controller's. */
  char ecode[128], emsg[256];
  json_escape(code, ecode, sizeof ecode);
  json_escape(msg ? msg : rly_http_status_text(status), emsg, sizeof emsg);
  int n = snprintf(out, outlen, "{\"error\":\"%s\",\"message\":\"%s\"}", ecode, emsg);
  return n < 0 ? 0 : CM_MIN((size_t)n, outlen - 1);
}

rly_http_response rly_http_error_response(char *body, size_t bodylen, int status, const char *code,
                                          const char *msg, const char *extra_headers) {
  size_t n = rly_http_format_error(body, bodylen, status, code, msg);
  rly_http_response r = {.status = status,
                         .content_type = "application/json",
                         .body = (const uint8_t *)body,
                         .body_len = n,
                         .extra_headers = extra_headers};
  return r;
}

int rly_http_respond_error(rly_http_conn *c, int status, const char *code, const char *msg,
                           const char *extra_headers) {
  char body[512];
  rly_http_response r =
      rly_http_error_response(body, sizeof body, status, code, msg, extra_headers);
  return rly_http_respond(c, &r);
}

void rly_http_timeout(rly_http_conn *c) {
  if (c->closed || c->busy) return;
  if (c->in_request || cm_buf_size(&c->in) > 0) {
    c->error_status = 408;
    protocol_error(c, 408, "request headers not received in time");
    return;
  }
  c->closed = true;
  c->cbs.on_close(c->ud);
}

const uint8_t *rly_http_take_upgrade(rly_http_conn *c, size_t *len) {
  c->closed = true; /* the core is done with this connection */
  *len = cm_buf_size(&c->in);
  return cm_buf_head(&c->in);
}

bool rly_http_busy(const rly_http_conn *c) { return c->busy; }
bool rly_http_in_request(const rly_http_conn *c) {
  return c->in_request || cm_buf_size(&c->in) > 0;
}
bool rly_http_in_body(const rly_http_conn *c) { return c->headers_done && !c->complete; }
uint64_t rly_http_requests(const rly_http_conn *c) { return c->requests; }

/* ---- helpers ------------------------------------------------------------------ */

const char *rly_http_header_next(const rly_http_request *r, const char *name, size_t *i) {
  for (; *i < r->nheaders; (*i)++)
    if (strcasecmp(r->headers[*i].name, name) == 0) return r->headers[(*i)++].value;
  return NULL;
}

const char *rly_http_header_get(const rly_http_request *r, const char *name) {
  size_t i = 0;
  return rly_http_header_next(r, name, &i);
}

size_t rly_http_header_count(const rly_http_request *r, const char *name) {
  size_t i = 0, n = 0;
  while (rly_http_header_next(r, name, &i))
    n++;
  return n;
}

const char *rly_http_list_next(const char **cursor, size_t *len) {
  const char *p = *cursor;
  while (*p == ' ' || *p == '\t' || *p == ',')
    p++;
  if (*p == '\0') {
    *cursor = p;
    return NULL;
  }
  size_t n = strcspn(p, ",");
  *cursor = p + n;
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
    n--;
  *len = n;
  return p;
}

bool rly_http_header_has_token(const char *value, const char *token) {
  size_t tl = strlen(token), n;
  for (const char *cur = value ? value : "", *item; (item = rly_http_list_next(&cur, &n));)
    if (n == tl && strncasecmp(item, token, tl) == 0) return true;
  return false;
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  ch = tolower(ch);
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  return -1;
}

/* Percent-decodes [v, end) into out; false when it does not fit or holds
 * %00 (a NUL would silently cut the value). */
static bool query_decode(const char *v, const char *end, char *out, size_t outlen) {
  size_t o = 0;
  for (; v < end; v++) {
    int ch = (unsigned char)*v;
    if (ch == '%' && v + 2 < end && hexval(v[1]) >= 0 && hexval(v[2]) >= 0) {
      ch = hexval(v[1]) * 16 + hexval(v[2]);
      v += 2;
      if (ch == 0) return false;
    } else if (ch == '+') {
      ch = ' ';
    }
    if (o + 1 >= outlen) return false;
    out[o++] = (char)ch;
  }
  out[o] = '\0';
  return true;
}

int rly_http_query_next(const char **cursor, const char *name, char *out, size_t outlen) {
  size_t nl = strlen(name);
  const char *p = *cursor;
  while (p && *p) {
    const char *end = p + strcspn(p, "&");
    const char *next = *end ? end + 1 : end;
    if ((size_t)(end - p) > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
      *cursor = next;
      return query_decode(p + nl + 1, end, out, outlen) ? 1 : -1;
    }
    p = next;
  }
  *cursor = p;
  return 0;
}

bool rly_http_query_get(const char *query, const char *name, char *out, size_t outlen) {
  const char *cur = query;
  return rly_http_query_next(&cur, name, out, outlen) == 1;
}

/* ---- router -------------------------------------------------------------------- */

static bool match_pattern(const char *pat, const char *path, rly_route_match *m) {
  m->ncaps = 0;
  while (*pat && *path) {
    if (*pat == '{') {
      const char *pe = strchr(pat, '}');
      size_t n = strcspn(path, "/");
      if (!pe || n == 0 || n >= sizeof m->caps[0] || m->ncaps == RLY_ROUTE_MAX_CAPS) return false;
      memcpy(m->caps[m->ncaps], path, n);
      m->caps[m->ncaps++][n] = '\0';
      pat = pe + 1;
      path += n;
      continue;
    }
    if (*pat != *path) return false;
    pat++;
    path++;
  }
  return *pat == '\0' && *path == '\0';
}

int rly_route_find(const rly_route *table, size_t n, const char *method, const char *path,
                   rly_route_match *m, char *allow, size_t allowlen) {
  bool path_seen = false;
  size_t o = 0;
  if (allowlen) allow[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    rly_route_match tmp;
    if (!match_pattern(table[i].pattern, path, &tmp)) continue;
    if (!table[i].method || strcmp(table[i].method, method) == 0 ||
        (strcmp(method, "HEAD") == 0 && strcmp(table[i].method, "GET") == 0)) {
      *m = tmp;
      m->route = (int)i;
      return (int)i;
    }
    path_seen = true;
    if (allowlen && !strstr(allow, table[i].method)) {
      int w = snprintf(allow + o, allowlen - o, "%s%s", o ? ", " : "", table[i].method);
      if (w > 0 && (size_t)w < allowlen - o) o += (size_t)w;
    }
  }
  return path_seen ? RLY_ROUTE_BAD_METHOD : RLY_ROUTE_NOT_FOUND;
}
