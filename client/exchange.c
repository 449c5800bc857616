/*
 * exchange.c — one HTTP/1.1 request and answer on a fresh connection (see
 * internal.h): resolve, connect (address after address), TLS, send, parse.
 */
#include "client/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct rc_xchg {
  uv_loop_t *loop;
  rc_url url;
  cm_tls_ctx *tls;
  cm_stream_opts sopts;
  cm_buf req;
  cm_http_resp resp;
  rc_xchg_cb cb;
  void *ud;
  uv_getaddrinfo_t gai;
  struct addrinfo *addrs, *next_addr;
  uv_timer_t timer;
  cm_stream *st;
  uint64_t deadline;         /* monotonic ms: the whole exchange */
  uint64_t connect_deadline; /* monotonic ms: connected (TLS included) by then */
  uint32_t connect_ms;
  bool resolving, timer_closed, opened, done, cancelled;
  bool starting; /* inside rc_xchg_start: failures wait for the loop */
  int early_err;
  char early_msg[320];
};

static void try_next(rc_xchg *x, int err, const char *msg);
static void on_timer(uv_timer_t *t);

static void xchg_release(rc_xchg *x) {
  if (!x->timer_closed || x->st || x->resolving) return;
  if (x->addrs) uv_freeaddrinfo(x->addrs);
  cm_buf_free(&x->req);
  cm_http_resp_free(&x->resp);
  free(x);
}

static void on_timer_closed(uv_handle_t *h) {
  rc_xchg *x = h->data;
  x->timer_closed = true;
  xchg_release(x);
}

/* Ends the exchange: reports (unless cancelled) and lets go of everything
 * except a stream the callback kept. */
static void finish(rc_xchg *x, int err, const char *msg, uint8_t *rest, size_t restlen) {
  if (x->done) return;
  x->done = true;
  cm_stream *st = x->st;
  bool keep = false;
  if (!x->cancelled && x->cb)
    keep = x->cb(x->ud, err, msg, err ? NULL : &x->resp, err ? NULL : st, rest, restlen);
  if (st) {
    if (keep) {
      x->st = NULL; /* the caller's now */
    } else {
      cm_stream_set_cbs(st, &(cm_stream_cbs){.on_close = NULL});
      x->st = NULL;
      if (err || x->cancelled)
        cm_stream_abort(st);
      else
        cm_stream_close(st);
    }
  }
  uv_timer_stop(&x->timer);
  uv_close((uv_handle_t *)&x->timer, on_timer_closed);
}

static void fail(rc_xchg *x, int err, const char *msg) {
  finish(x, err ? err : -EIO, msg, NULL, 0);
}

static void where(const rc_xchg *x, char *out, size_t outlen) {
  rc_url_authority(&x->url, out, outlen);
}

static void fail_soon(rc_xchg *x, int err, const char *msg);

/* A connect to an address literal can fail inside rc_xchg_start (libuv
 * reports ENETUNREACH or EACCES from connect() itself): that, too, is
 * reported from the loop. */
static void fail_connect(rc_xchg *x, int err, const char *why) {
  char host[RC_HOST_MAX + 16], msg[320];
  where(x, host, sizeof host);
  snprintf(msg, sizeof msg, "cannot connect to %s: %s", host, why);
  if (x->starting)
    fail_soon(x, err, msg);
  else
    fail(x, err, msg);
}

/* ---- the connection ----------------------------------------------------------- */

static void s_on_open(cm_stream *st) {
  rc_xchg *x = cm_stream_get_data(st);
  x->opened = true;
  int rc = cm_stream_write(st, cm_buf_head(&x->req), cm_buf_size(&x->req));
  cm_buf_free(&x->req); /* wiped: it may hold a bearer token */
  if (rc != 0) {
    fail(x, rc, "cannot send the request");
    return;
  }
  /* From here on only the whole exchange's deadline applies. */
  uint64_t now = cm_now_mono_ms();
  uv_timer_start(&x->timer, on_timer, x->deadline > now ? x->deadline - now : 0, 0);
}

static void s_on_read(cm_stream *st, uint8_t *data, size_t len) {
  rc_xchg *x = cm_stream_get_data(st);
  if (x->done) return;
  size_t used = 0;
  int rc = cm_http_resp_feed(&x->resp, data, len, &used);
  if (rc > 0)
    finish(x, 0, NULL, data + used, len - used);
  else if (rc < 0)
    fail(x, rc, x->resp.errmsg);
}

static bool retryable(int err) {
  return err == UV_ECONNREFUSED || err == UV_ENETUNREACH || err == UV_EHOSTUNREACH ||
         err == UV_EADDRNOTAVAIL || err == UV_ECONNRESET || err == UV_EAFNOSUPPORT;
}

static void s_on_close(cm_stream *st, int err, const char *msg) {
  rc_xchg *x = cm_stream_get_data(st);
  x->st = NULL;
  if (!x->done) {
    if (!x->opened && retryable(err) && x->next_addr) {
      try_next(x, err, msg);
    } else if (!x->opened) {
      fail_connect(x, err ? err : -ECONNRESET, msg && *msg ? msg : "connection closed");
    } else if (cm_http_resp_eof(&x->resp) > 0) {
      finish(x, 0, NULL, NULL, 0); /* a body delimited by the end of the connection */
    } else if (x->resp.result < 0) {
      fail(x, x->resp.result, x->resp.errmsg);
    } else {
      fail(x, err ? err : -ECONNRESET, "connection closed before the answer was complete");
    }
  }
  xchg_release(x);
}

static const cm_stream_cbs g_stream_cbs = {
    .on_open = s_on_open, .on_read = s_on_read, .on_close = s_on_close};

/* An address that drops what we send (a route that black-holes IPv6, a
 * host that is down) would take the whole connect budget and leave none
 * for the next: each attempt gets an even share of what is left, the last
 * one all of it. */
static void arm_attempt(rc_xchg *x) {
  uint64_t now = cm_now_mono_ms(), left = x->connect_deadline > now ? x->connect_deadline - now : 0;
  uint64_t tries = 1;
  for (const struct addrinfo *a = x->next_addr; a; a = a->ai_next)
    tries++;
  uv_timer_start(&x->timer, on_timer, left / tries, 0);
}

static void connect_to(rc_xchg *x, const struct sockaddr *addr) {
  int err = 0;
  x->st = cm_stream_connect(x->loop, addr, &x->sopts, &g_stream_cbs, x, &err);
  if (!x->st) {
    try_next(x, err, uv_strerror(err));
    return;
  }
  if (!x->starting) arm_attempt(x);
}

/* The current attempt had its share: on to the next address. */
static void give_up_attempt(rc_xchg *x) {
  cm_stream *st = x->st;
  x->st = NULL;
  cm_stream_set_cbs(st, &(cm_stream_cbs){.on_close = NULL});
  cm_stream_abort(st);
  try_next(x, -ETIMEDOUT, "timed out");
}

/* Tries the next resolved address, or fails with the last error. */
static void try_next(rc_xchg *x, int err, const char *msg) {
  struct addrinfo *a = x->next_addr;
  if (!a) {
    fail_connect(x, err, msg);
    return;
  }
  x->next_addr = a->ai_next;
  connect_to(x, a->ai_addr);
}

/* ---- resolution and deadlines ----------------------------------------------- */

static void on_timer(uv_timer_t *t) {
  rc_xchg *x = t->data;
  if (x->early_err) {
    fail(x, x->early_err, x->early_msg);
  } else if (!x->opened && x->st && x->next_addr && cm_now_mono_ms() < x->connect_deadline) {
    give_up_attempt(x);
  } else if (!x->opened) {
    char host[RC_HOST_MAX + 16], msg[320];
    where(x, host, sizeof host);
    snprintf(msg, sizeof msg, "timed out connecting to %s", host);
    fail(x, -ETIMEDOUT, msg);
  } else {
    fail(x, -ETIMEDOUT, "timed out waiting for the answer");
  }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rc_xchg *x = req->data;
  x->resolving = false;
  if (x->done) {
    if (res) uv_freeaddrinfo(res);
    xchg_release(x);
    return;
  }
  if (status != 0 || !res) {
    char msg[400];
    snprintf(msg, sizeof msg, "cannot resolve %s: %s", x->url.host,
             status ? uv_strerror(status) : "no address");
    if (res) uv_freeaddrinfo(res);
    fail(x, status ? status : -ENOENT, msg);
    return;
  }
  x->addrs = x->next_addr = res;
  try_next(x, -ENOENT, "no address");
}

/* Callbacks never run inside rc_xchg_start: a failure found there is
 * reported from the loop. */
static void fail_soon(rc_xchg *x, int err, const char *msg) {
  x->early_err = err ? err : -EIO;
  snprintf(x->early_msg, sizeof x->early_msg, "%s", msg);
  uv_timer_start(&x->timer, on_timer, 0, 0);
}

rc_xchg *rc_xchg_start(uv_loop_t *loop, const rc_xchg_opts *o, rc_xchg_cb cb, void *ud) {
  rc_xchg *x = calloc(1, sizeof *x);
  if (!x) {
    cm_buf_free(o->request);
    return NULL;
  }
  x->loop = loop;
  x->url = *o->url;
  x->tls = o->tls;
  x->cb = cb;
  x->ud = ud;
  x->req = *o->request; /* taken over */
  cm_buf_init_secret(o->request, 0);
  cm_http_resp_init(&x->resp, o->max_body ? o->max_body : RC_HTTP_MAX_BODY, o->resp_flags);
  x->connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : RC_CONNECT_TIMEOUT_MS;
  uint32_t total = o->timeout_ms ? o->timeout_ms : RC_HTTP_TIMEOUT_MS;
  x->deadline = cm_now_mono_ms() + total;
  if (o->stream) x->sopts = *o->stream;
  x->sopts.tls = x->url.tls ? x->tls : NULL;
  x->sopts.sni = x->url.host;
  /* Our timer names the deadline; the stream's own is a backstop. */
  x->sopts.handshake_timeout_ms = x->connect_ms + 1000;
  uv_timer_init(loop, &x->timer);
  x->timer.data = x;
  if (x->url.tls && !x->tls) {
    fail_soon(x, -EINVAL, "an https or wss URL needs a TLS context");
    return x;
  }
  x->connect_deadline = cm_now_mono_ms() + CM_MIN(x->connect_ms, total);
  uv_timer_start(&x->timer, on_timer, CM_MIN(x->connect_ms, total), 0);
  struct sockaddr_storage ss;
  if (cm_sockaddr_from(x->url.host, x->url.port, &ss) == 0) {
    x->starting = true;
    connect_to(x, (struct sockaddr *)&ss);
    x->starting = false;
    return x;
  }
  char port[8];
  snprintf(port, sizeof port, "%u", (unsigned)x->url.port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  x->gai.data = x;
  int rc = uv_getaddrinfo(loop, &x->gai, on_resolved, x->url.host, port, &hints);
  if (rc != 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "cannot resolve %s: %s", x->url.host, uv_strerror(rc));
    fail_soon(x, rc, msg);
  } else {
    x->resolving = true;
  }
  return x;
}

void rc_xchg_cancel(rc_xchg *x) {
  x->cancelled = true;
  if (x->resolving) uv_cancel((uv_req_t *)&x->gai);
  finish(x, -ECANCELED, "cancelled", NULL, 0);
}

/* ---- request helpers ------------------------------------------------------------ */

int rc_buf_puts(cm_buf *b, const char *s) { return cm_buf_append(b, s, strlen(s)); }

bool rc_header_safe(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 ? *s != '\t' : (unsigned char)*s == 0x7f) return false;
  return true;
}
