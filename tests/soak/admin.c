/*
 * admin.c — a keep-alive HTTPS/1.1 client on cm_stream for the relay's
 * admin API and /readyz: one request at a time per connection, a deadline
 * on each, responses with Content-Length (all the relay sends for these
 * paths).  A connection that fails or is closed by the relay is remade on
 * the next request, so a connection survives relay restarts as an object.
 */
#include <stdlib.h>
#include <string.h>

#include "soak.h"

#define AC_MAX_RESPONSE (64 * 1024)

struct ac_conn {
  cm_stream *st;
  bool open;    /* handshake done */
  char *req;    /* the request, kept until the handshake is done */
  bool pending; /* a request is outstanding */
  bool timed_out;
  double deadline;
  ac_cb cb;
  void *ud;
  cm_buf in;
};

ac_conn *ac_new(void) {
  ac_conn *a = calloc(1, sizeof *a);
  if (!a) sk_die("out of memory");
  cm_buf_init(&a->in, AC_MAX_RESPONSE);
  return a;
}

bool ac_busy(const ac_conn *a) { return a->pending; }
bool ac_closed(const ac_conn *a) { return a->st == NULL; }

static void finish(ac_conn *a, int status, const char *body, size_t n) {
  if (!a->pending) return;
  a->pending = false;
  ac_cb cb = a->cb;
  a->cb = NULL;
  cb(a->ud, status, body, n);
}

/* The value of a header in the head [p, p + n), or NULL. */
static const char *header(const char *p, size_t n, const char *name) {
  size_t k = strlen(name);
  for (const char *l = memmem(p, n, "\r\n", 2); l && l + 2 + k < p + n;
       l = memmem(l + 2, (size_t)(p + n - l - 2), "\r\n", 2))
    if (strncasecmp(l + 2, name, k) == 0 && l[2 + k] == ':') return l + 3 + k;
  return NULL;
}

/* A decimal number at p (spaces first), reading no further than end (the
 * buffer is not NUL-terminated). */
static size_t number(const char *p, const char *end) {
  while (p < end && *p == ' ')
    p++;
  size_t v = 0;
  for (; p < end && *p >= '0' && *p <= '9' && v < AC_MAX_RESPONSE; p++)
    v = v * 10 + (size_t)(*p - '0');
  return v;
}

static void parse(ac_conn *a) {
  const char *p = (const char *)cm_buf_head(&a->in);
  size_t n = cm_buf_size(&a->in);
  const char *end = memmem(p, n, "\r\n\r\n", 4);
  if (!end) return;
  size_t head = (size_t)(end - p) + 4;
  const char *cl = header(p, head, "Content-Length");
  size_t body = cl ? number(cl, p + head) : 0;
  if (n < head + body) return;
  int status =
      head > 12 && strncmp(p, "HTTP/1.1 ", 9) == 0 ? (int)number(p + 9, p + 12) : AC_FAILED;
  const char *conn = header(p, head, "Connection");
  while (conn && *conn == ' ')
    conn++;
  bool close = conn && conn + 5 <= p + head && strncasecmp(conn, "close", 5) == 0;
  char *copy = malloc(body + 1);
  if (!copy) sk_die("out of memory");
  memcpy(copy, p + head, body);
  copy[body] = '\0';
  explicit_bzero((char *)p, head + body); /* a create's answer carries slot tokens */
  cm_buf_consume(&a->in, head + body);
  if (close) cm_stream_close(a->st);
  finish(a, status, copy, body);
  explicit_bzero(copy, body);
  free(copy);
}

static void on_open(cm_stream *s) {
  ac_conn *a = cm_stream_get_data(s);
  a->open = true;
  if (a->req) {
    cm_stream_write(s, a->req, strlen(a->req));
    free(a->req);
    a->req = NULL;
  }
}

static void on_read(cm_stream *s, uint8_t *d, size_t n) {
  ac_conn *a = cm_stream_get_data(s);
  if (!a->pending || cm_buf_append(&a->in, d, n) != 0) {
    cm_stream_abort(s); /* unasked-for or oversized: this is not our relay talking */
    return;
  }
  parse(a);
}

static void on_close(cm_stream *s, int err, const char *msg) {
  (void)err, (void)msg;
  ac_conn *a = cm_stream_get_data(s);
  a->st = NULL;
  a->open = false;
  free(a->req);
  a->req = NULL;
  cm_buf_reset(&a->in);
  finish(a, a->timed_out ? AC_TIMEOUT : AC_FAILED, "", 0);
  a->timed_out = false;
}

static const cm_stream_cbs AC_CBS = {on_open, on_read, NULL, on_close};

static void orphan_read(cm_stream *s, uint8_t *d, size_t n) { (void)s, (void)d, (void)n; }
static void orphan_close(cm_stream *s, int err, const char *msg) { (void)s, (void)err, (void)msg; }
static const cm_stream_cbs ORPHAN_CBS = {NULL, orphan_read, NULL, orphan_close};

/* Detaches a closing stream from its connection object. */
static void abandon(ac_conn *a) {
  cm_stream_set_cbs(a->st, &ORPHAN_CBS);
  cm_stream_set_data(a->st, NULL);
  a->st = NULL;
  a->open = false;
  cm_buf_reset(&a->in);
}

void ac_request(ac_conn *a, const char *method, const char *path, const char *body, double timeout,
                ac_cb cb, void *ud) {
  if (a->pending) sk_die("ac_request on a busy connection");
  size_t blen = body ? strlen(body) : 0;
  char *req = malloc(strlen(path) + blen + 256);
  if (!req) sk_die("out of memory");
  sprintf(req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %zu\r\n\r\n%s", method,
          path, g_relay_port, body ? "Content-Type: application/json\r\n" : "", blen,
          body ? body : "");
  a->pending = true;
  a->cb = cb;
  a->ud = ud;
  a->deadline = sk_now() + timeout;
  if (a->st && a->open && !cm_stream_closing(a->st)) {
    cm_stream_write(a->st, req, strlen(req));
    free(req);
    return;
  }
  if (a->st) abandon(a); /* still closing: let it finish on its own */
  a->req = req;
  int err;
  cm_stream_opts o = {.tls = g_tls, .sni = "127.0.0.1", .handshake_timeout_ms = 5000};
  a->st = cm_stream_connect(g_loop, (struct sockaddr *)&g_relay_addr, &o, &AC_CBS, a, &err);
  if (!a->st) {
    free(a->req);
    a->req = NULL;
    finish(a, AC_FAILED, "", 0);
  }
}

void ac_tick(ac_conn *a) {
  if (a->pending && a->st && sk_now() > a->deadline) {
    a->timed_out = true;
    cm_stream_abort(a->st);
  }
}

void ac_close(ac_conn *a) {
  if (a->st) cm_stream_close(a->st);
}

void ac_free(ac_conn *a) {
  if (!a) return;
  cm_buf_free(&a->in);
  free(a->req);
  free(a);
}
