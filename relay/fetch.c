/*
 * fetch.c — a small asynchronous HTTP/1.1 GET client on cm_stream, for the
 * identity provider's discovery document and JWKS.  Names are resolved with
 * uv_getaddrinfo (off the loop), TLS verifies the server against the
 * configured trust store and name, and the response is parsed by the
 * sans-I/O parser of common (cm_http_resp), which bounds the body.  One callback, exactly
 * once, unless cancelled.
 */
#include "relay/fetch.h"
#include "relay/relay.h"

#include <errno.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

struct rly_fetch {
  uv_loop_t *loop;
  cm_tls_ctx *tls;
  rly_fetch_cb cb;
  void *ud;
  char host[256], path[2048];
  int port;
  bool https;
  uv_getaddrinfo_t gai;
  bool resolving;
  cm_stream *st;
  uv_timer_t timer;
  bool timer_closed;
  cm_http_resp resp;
  bool done, cancelled;
  int early_err; /* failure found before any I/O: reported from the loop */
};

static void fail_soon(rly_fetch *f, int err);

static void fetch_release(rly_fetch *f) {
  if (!f->timer_closed || f->st || f->resolving) return;
  cm_http_resp_free(&f->resp);
  free(f);
}

static void on_timer_closed(uv_handle_t *h) {
  rly_fetch *f = h->data;
  f->timer_closed = true;
  fetch_release(f);
}

/* Reports once, then tears down. */
static void finish(rly_fetch *f, int status, const char *err) {
  if (f->done) return;
  f->done = true;
  if (!f->cancelled && f->cb)
    f->cb(f->ud, status, (const char *)cm_buf_head(&f->resp.body), cm_buf_size(&f->resp.body), err);
  uv_timer_stop(&f->timer);
  uv_close((uv_handle_t *)&f->timer, on_timer_closed);
  if (f->st) cm_stream_close(f->st);
}

/* Host is uri-host [":" port] (RFC 9110 §7.2): the port unless it is the
 * scheme's default, and an IPv6 literal in brackets.  Name-based virtual
 * hosts on another port route by it. */
static void host_header(const rly_fetch *f, char *out, size_t outlen) {
  bool v6 = strchr(f->host, ':') != NULL && f->host[0] != '[';
  int n = snprintf(out, outlen, v6 ? "[%s]" : "%s", f->host);
  if (n > 0 && (size_t)n < outlen && f->port != (f->https ? 443 : 80))
    snprintf(out + n, outlen - (size_t)n, ":%d", f->port);
}

static void s_on_open(cm_stream *st) {
  rly_fetch *f = cm_stream_get_data(st);
  char req[2600], host[sizeof f->host + 16];
  host_header(f, host, sizeof host);
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
                   "User-Agent: relay/%s\r\nConnection: close\r\n\r\n",
                   f->path, host, rly_version());
  cm_stream_write(st, req, (size_t)n);
}

static void s_on_read(cm_stream *st, uint8_t *data, size_t len) {
  rly_fetch *f = cm_stream_get_data(st);
  if (f->done) return;
  int rc = cm_http_resp_feed(&f->resp, data, len, NULL);
  if (rc > 0)
    finish(f, f->resp.status, NULL);
  else if (rc < 0)
    finish(f, rc, f->resp.errmsg);
}

static void s_on_close(cm_stream *st, int err, const char *msg) {
  rly_fetch *f = cm_stream_get_data(st);
  f->st = NULL;
  if (!f->done) {
    /* A body delimited by the end of the connection ends here. */
    if (cm_http_resp_eof(&f->resp) > 0)
      finish(f, f->resp.status, NULL);
    else
      finish(f, err ? err : -ECONNRESET, msg ? msg : "connection closed early");
  }
  fetch_release(f);
}

static const cm_stream_cbs g_cbs = {
    .on_open = s_on_open, .on_read = s_on_read, .on_close = s_on_close};

static void connect_to(rly_fetch *f, const struct sockaddr *addr) {
  cm_stream_opts o = {.tls = f->https ? f->tls : NULL, .sni = f->host};
  int err;
  f->st = cm_stream_connect(f->loop, addr, &o, &g_cbs, f, &err);
  if (!f->st) fail_soon(f, err);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rly_fetch *f = req->data;
  f->resolving = false;
  if (f->done) {
    uv_freeaddrinfo(res);
    fetch_release(f);
    return;
  }
  if (status != 0 || !res)
    finish(f, status ? status : -ENOENT, "cannot resolve host");
  else
    connect_to(f, res->ai_addr);
  uv_freeaddrinfo(res);
}

static void on_timeout(uv_timer_t *t) {
  rly_fetch *f = t->data;
  if (f->early_err)
    finish(f, f->early_err, "cannot connect");
  else
    finish(f, -ETIMEDOUT, "timed out");
}

/* Callbacks never run inside rly_fetch_get: defer an early failure. */
static void fail_soon(rly_fetch *f, int err) {
  f->early_err = err ? err : -EIO;
  uv_timer_start(&f->timer, on_timeout, 0, 0);
}

static int parse_url(rly_fetch *f, const char *url) {
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(url, strlen(url), 0, &u) != 0 || !(u.field_set & (1 << UF_HOST)))
    return -EINVAL;
  size_t sl = u.field_data[UF_SCHEMA].len;
  const char *sch = url + u.field_data[UF_SCHEMA].off;
  if (sl == 5 && strncasecmp(sch, "https", 5) == 0)
    f->https = true;
  else if (!(sl == 4 && strncasecmp(sch, "http", 4) == 0))
    return -EINVAL;
  if (u.field_data[UF_HOST].len >= sizeof f->host) return -EINVAL;
  memcpy(f->host, url + u.field_data[UF_HOST].off, u.field_data[UF_HOST].len);
  f->host[u.field_data[UF_HOST].len] = '\0';
  f->port = (u.field_set & (1 << UF_PORT)) ? u.port : f->https ? 443 : 80;
  const char *path = (u.field_set & (1 << UF_PATH)) ? url + u.field_data[UF_PATH].off : "/";
  if (strlen(path) >= sizeof f->path) return -EINVAL;
  snprintf(f->path, sizeof f->path, "%s", path); /* path and query (no fragment in practice) */
  return 0;
}

rly_fetch *rly_fetch_get(uv_loop_t *loop, cm_tls_ctx *tls, const char *url, size_t max_body,
                         uint32_t timeout_ms, rly_fetch_cb cb, void *ud) {
  rly_fetch *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->loop = loop;
  f->tls = tls;
  f->cb = cb;
  f->ud = ud;
  cm_http_resp_init(&f->resp, max_body, 0);
  if (parse_url(f, url) != 0 || (f->https && !tls)) {
    cm_http_resp_free(&f->resp);
    free(f);
    return NULL;
  }
  uv_timer_init(loop, &f->timer);
  f->timer.data = f;
  uv_timer_start(&f->timer, on_timeout, timeout_ms ? timeout_ms : 10000, 0);
  struct sockaddr_storage ss;
  if (cm_sockaddr_from(f->host[0] == '[' ? f->host + 1 : f->host, f->port, &ss) == 0) {
    connect_to(f, (struct sockaddr *)&ss);
    return f;
  }
  char port[8];
  snprintf(port, sizeof port, "%d", f->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  f->gai.data = f;
  int rc = uv_getaddrinfo(loop, &f->gai, on_resolved, f->host, port, &hints);
  if (rc != 0)
    fail_soon(f, rc);
  else
    f->resolving = true;
  return f;
}

void rly_fetch_cancel(rly_fetch *f) {
  f->cancelled = true;
  if (f->resolving) uv_cancel((uv_req_t *)&f->gai);
  finish(f, -ECANCELED, "cancelled");
}
