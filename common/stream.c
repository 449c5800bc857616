/*
 * stream.c — cm_stream: one connection, plain or TLS, on a libuv loop.
 *
 * TLS runs over a custom BIO that moves ciphertext straight through the
 * socket: libuv only says when the socket is readable (the read buffer we
 * give it is empty, so it reads nothing and reports UV_ENOBUFS), and
 * OpenSSL's BIO reads recv() into its own record buffer, several records a
 * call (read-ahead), and the records found there reach the owner as one
 * delivery.  A record OpenSSL writes goes to send() at once while nothing
 * is queued, and only what the kernel does not take is copied, into `out`,
 * for uv_write.  The one copy of ciphertext in user space is for writes of
 * several records and for records sealed while corked, which gather in
 * `out` for one send() (see tls_write); their rest goes to uv_write in
 * out's own memory.  An idle connection holds no buffer at all (OpenSSL's
 * are released when empty).  Records OpenSSL has read but we have not
 * asked for stay inside it while the owner pauses (SSL_has_pending).  `in`
 * serves only streams adopted from another loop that still carry unread
 * ciphertext.
 *
 * Write accounting: `queued` counts bytes handed to uv_write and not yet
 * completed.  Crossing high_watermark arms on_drain, fired when the queue
 * falls to low_watermark; passing max_write_queue closes the stream.
 *
 * Closing: close() flushes, sends close_notify, waits for the queue to
 * drain, half-closes (FIN), then discards input until EOF or a short linger
 * so the peer reads our last bytes instead of a reset.  abort() resets at
 * once.  Both end in exactly one on_close, after which the stream is freed.
 */
#include "common/common.h"
#include "common/tls_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_CHUNK       65536
#define TLS_RECORD_MAX   16384
#define GATHER_CHUNK     (128 * 1024) /* plaintext per send() when gathering */
#define OUT_HANDOVER_MIN (16 * 1024)  /* a rest of `out` this big is handed over, not copied */
#define LINGER_MS        1000
#define CLOSE_TIMEOUT_MS 5000
#define CORK_FLUSH       16384 /* one full TLS record */
/* Pieces this large leave at once even while corked: coalescing them would
 * copy more than the records it saves cost. */
#define CORK_DIRECT 4096

enum state { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_CLOSING, S_SHUTDOWN, S_CLOSED };

struct cm_stream {
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_timer_t timer;
  uv_connect_t connect_req;
  uv_shutdown_t shutdown_req;
  bool is_tcp, is_server;
  enum state state;
  int handles_open; /* uv handles still to close before free */
  cm_stream_cbs cbs;
  void *ud;

  SSL *ssl;
  const uint8_t *in_ptr; /* ciphertext the BIO is reading from */
  size_t in_len;
  cm_buf in;   /* ciphertext kept while paused */
  cm_buf out;  /* records written by OpenSSL, not yet handed to uv_write */
  cm_buf pre;  /* plaintext written before the handshake finished */
  cm_buf cork; /* plaintext gathered while corked */
  int cork_depth;

  size_t queued, high, low, maxq;
  bool above_high;
  bool paused, reading, eof;
  bool open_pending;   /* plain stream: on_open runs from the loop, not the constructor */
  int sock_err;        /* the BIO's recv() failed (negative errno) */
  bool sock_eof;       /* the BIO's recv() saw the peer's FIN */
  bool gather_records; /* in tls_write: records collect in `out` for one send() */
  /* What ended a batch of reads (an SSL_ERROR_*, 0: none) and its
   * message, kept while the owner has the data in front of it: acted on
   * after its on_read, at resume if it paused (tls_pump), or at once if a
   * write it makes meanwhile fails on it (write_failed). */
  int read_stop;
  char *read_stop_why;
  /* Leaving for another loop once no write is queued (cm_stream_detach). */
  void (*detach_cb)(void *ud, cm_stream_parcel *p);
  void *detach_ud;
  int close_err;
  char close_msg[160];
  char peer[64];
  char alpn[32];
  uint32_t handshake_ms;
};

typedef struct write_req {
  uv_write_t req;
  cm_stream *s;
  size_t len;
  uint8_t *owned; /* a buffer handed over whole (flush_out); NULL: the bytes follow */
  uint8_t data[];
} write_req;

/* Reads land CM_STREAM_HEADROOM bytes into these, so an owner can put a
 * header in front of what it was given and send both in one piece. */
static _Thread_local uint8_t t_readbuf[READ_CHUNK];
static _Thread_local uint8_t t_plainbuf[READ_CHUNK];
#define READ_ROOM (READ_CHUNK - CM_STREAM_HEADROOM)

static void finish_close(cm_stream *s);
static void begin_close(cm_stream *s, int err, const char *msg, bool abrupt);
static void process_input(cm_stream *s);
static int flush_out(cm_stream *s);
static int emit_cork(cm_stream *s);
static void abort_now(cm_stream *s);
static void became_open(cm_stream *s);
static void start_reading(cm_stream *s);
static void finish_detach(cm_stream *s);
static void on_handle_closed(uv_handle_t *h);

/* ---- custom BIO ------------------------------------------------------------ */

static BIO_METHOD *g_bio_method;
static uv_once_t g_bio_once = UV_ONCE_INIT;

static int stream_fd(cm_stream *s) {
  uv_os_fd_t fd;
  return uv_fileno((uv_handle_t *)&s->h, &fd) == 0 ? fd : -1;
}

/* A record straight to the kernel when nothing waits before it; what it
 * does not take (or anything behind queued bytes) goes to `out`, in order.
 * A hard error is left for flush_out's write to find and report. */
static int bio_write(BIO *b, const char *data, int len) {
  cm_stream *s = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  size_t done = 0;
  int fd;
  if (!s->gather_records && s->queued == 0 && cm_buf_size(&s->out) == 0 && s->state < S_CLOSED &&
      (fd = stream_fd(s)) >= 0) {
    ssize_t n;
    do
      n = send(fd, data, (size_t)len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n > 0) done = (size_t)n;
  }
  if (done < (size_t)len && cm_buf_append(&s->out, data + done, (size_t)len - done) != 0) return -1;
  return len;
}

/* Ciphertext for OpenSSL: what an adopted stream still carries, else the
 * socket itself, into OpenSSL's own buffer. */
static int bio_read(BIO *b, char *buf, int len) {
  cm_stream *s = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (s->in_len > 0) {
    size_t n = CM_MIN((size_t)len, s->in_len);
    memcpy(buf, s->in_ptr, n);
    s->in_ptr += n;
    s->in_len -= n;
    return (int)n;
  }
  int fd = s->sock_eof || s->sock_err || s->state >= S_CLOSING ? -1 : stream_fd(s);
  if (fd < 0) {
    if (!s->sock_eof && !s->sock_err) BIO_set_retry_read(b);
    return s->sock_eof ? 0 : -1;
  }
  ssize_t n;
  do
    n = recv(fd, buf, (size_t)len, 0);
  while (n < 0 && errno == EINTR);
  if (n > 0) return (int)n;
  if (n == 0) {
    s->sock_eof = true;
    return 0;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    BIO_set_retry_read(b);
  } else {
    s->sock_err = -errno;
  }
  return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  CM_UNUSED(b);
  CM_UNUSED(num);
  CM_UNUSED(ptr);
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_CTRL_PUSH:
  case BIO_CTRL_POP: return 0;
  default: return 0;
  }
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static void bio_method_init(void) {
  g_bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "cm_stream");
  BIO_meth_set_write(g_bio_method, bio_write);
  BIO_meth_set_read(g_bio_method, bio_read);
  BIO_meth_set_ctrl(g_bio_method, bio_ctrl);
  BIO_meth_set_create(g_bio_method, bio_create);
}

/* ---- helpers --------------------------------------------------------------- */

static uv_stream_t *uvs(cm_stream *s) { return (uv_stream_t *)&s->h; }

static void tls_error_msg(cm_stream *s, const char *what, char *out, size_t outlen) {
  unsigned long e = ERR_peek_last_error();
  char buf[200] = "";
  long vr = s->ssl ? SSL_get_verify_result(s->ssl) : X509_V_OK;
  if (vr != X509_V_OK)
    snprintf(buf, sizeof buf, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
  else if (e)
    ERR_error_string_n(e, buf, sizeof buf);
  snprintf(out, outlen, "%s%s%s", what, *buf ? ": " : "", buf);
  ERR_clear_error();
}

static void set_peer_addr(cm_stream *s) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (!s->is_tcp || uv_tcp_getpeername(&s->h.tcp, (struct sockaddr *)&ss, &len) != 0) {
    snprintf(s->peer, sizeof s->peer, "local");
    return;
  }
  cm_sockaddr_text((const struct sockaddr *)&ss, s->peer, sizeof s->peer);
}

static void tune_tcp(cm_stream *s, const cm_stream_opts *o) {
  if (!s->is_tcp) return;
  uv_tcp_nodelay(&s->h.tcp, 1);
  if (!o || !o->keepalive) return;
  unsigned idle = o->keepalive_s ? o->keepalive_s : 30;
  uv_tcp_keepalive(&s->h.tcp, 1, idle);
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&s->h.tcp, &fd) == 0) {
    /* Unacknowledged data for this long means the peer is gone, even
     * while keepalive probes would still be pending. */
    unsigned tmo = o->user_timeout_ms ? o->user_timeout_ms : idle * 1000 + 10000;
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &tmo, sizeof tmo);
    int intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  }
}

static cm_stream *stream_alloc(const cm_stream_opts *o, const cm_stream_cbs *cbs, void *ud,
                               bool is_server) {
  cm_stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->cbs = *cbs;
  s->ud = ud;
  s->is_server = is_server;
  s->high = o && o->high_watermark ? o->high_watermark : 256 * 1024;
  s->low = o && o->low_watermark ? o->low_watermark : s->high / 4;
  s->maxq = o && o->max_write_queue ? o->max_write_queue : 16 * s->high;
  s->handshake_ms = o && o->handshake_timeout_ms ? o->handshake_timeout_ms : 10000;
  cm_buf_init(&s->in, 0);
  cm_buf_init(&s->out, 0);
  cm_buf_init(&s->pre, s->maxq);
  cm_buf_init(&s->cork, 0);
  return s;
}

static int setup_tls(cm_stream *s, const cm_stream_opts *o) {
  if (!o || !o->tls) return 0;
  uv_once(&g_bio_once, bio_method_init);
  s->ssl = SSL_new(o->tls->ctx);
  if (!s->ssl) return -ENOMEM;
  BIO *b = BIO_new(g_bio_method);
  if (!b) return -ENOMEM;
  BIO_set_data(b, s);
  SSL_set_bio(s->ssl, b, b);
  /* Up to this much ciphertext per recv(): several records a syscall, as
   * one libuv read of this size used to bring. */
  SSL_set_read_ahead(s->ssl, 1);
  SSL_set_default_read_buffer_len(s->ssl, READ_CHUNK);
  if (s->is_server) {
    SSL_set_accept_state(s->ssl);
  } else {
    SSL_set_connect_state(s->ssl);
    if (o->sni && *o->sni) {
      /* Verify the name we dialled, IP or DNS; SNI carries host names
       * only (RFC 6066 §3). */
      X509_VERIFY_PARAM *vp = SSL_get0_param(s->ssl);
      if (X509_VERIFY_PARAM_set1_ip_asc(vp, o->sni) != 1) {
        SSL_set_tlsext_host_name(s->ssl, o->sni);
        SSL_set1_host(s->ssl, o->sni);
      }
    }
  }
  return 0;
}

/* ---- timers ------------------------------------------------------------- */

static void on_timer(uv_timer_t *t) {
  cm_stream *s = t->data;
  switch (s->state) {
  case S_CONNECTING: begin_close(s, CM_ETIMEOUT, "connect timed out", true); break;
  case S_HANDSHAKE: begin_close(s, CM_ETIMEOUT, "TLS handshake timed out", true); break;
  case S_OPEN:
    if (s->open_pending) {
      s->open_pending = false;
      became_open(s);
      if (s->state == S_OPEN && !s->paused) start_reading(s);
      break;
    }
    /* Deferred input after resume. */
    process_input(s);
    break;
  case S_CLOSING:
  case S_SHUTDOWN:
    finish_close(s); /* linger or drain deadline passed */
    break;
  case S_CLOSED: break;
  }
}

/* ---- writes --------------------------------------------------------------- */

static void after_write(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  cm_stream *s = w->s;
  s->queued -= w->len;
  free(w->owned);
  free(w);
  if (status < 0) {
    if (s->state < S_CLOSED) begin_close(s, status, uv_strerror(status), true);
    return;
  }
  if (s->state == S_CLOSING && s->queued == 0) {
    begin_close(s, s->close_err, NULL, false); /* continue the close sequence */
    return;
  }
  if (s->detach_cb && s->queued == 0 && s->state == S_OPEN) {
    finish_detach(s);
    return;
  }
  if (s->above_high && s->queued <= s->low && s->state == S_OPEN) {
    s->above_high = false;
    if (s->cbs.on_drain) s->cbs.on_drain(s);
  }
}

static int queue_write(cm_stream *s, write_req *w, uint8_t *bytes) {
  uv_buf_t b = uv_buf_init((char *)bytes, (unsigned)w->len);
  int rc = uv_write(&w->req, uvs(s), &b, 1, after_write);
  if (rc != 0) {
    free(w->owned);
    free(w);
    return rc;
  }
  s->queued += w->len;
  if (s->queued >= s->high) s->above_high = true;
  return 0;
}

/* A synchronous write while nothing is queued: how much the kernel took,
 * or a hard error. */
static ssize_t try_write(cm_stream *s, const uv_buf_t *bufs, unsigned n) {
  if (s->queued > 0) return 0;
  int r = uv_try_write(uvs(s), bufs, n);
  if (r >= 0) return r;
  return r == UV_EAGAIN || r == UV_ENOSYS ? 0 : r;
}

/* The `left` bytes of bufs after `done`, copied into a request for
 * uv_write. */
static int queue_copy(cm_stream *s, const uv_buf_t *bufs, unsigned n, size_t done, size_t left) {
  if (s->queued + left > s->maxq) return CM_EQUEUE;
  write_req *w = malloc(sizeof *w + left);
  if (!w) return -ENOMEM;
  size_t o = 0, skip = done;
  for (unsigned i = 0; i < n; i++) {
    size_t len = bufs[i].len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    memcpy(w->data + o, bufs[i].base + skip, len - skip);
    o += len - skip;
    skip = 0;
  }
  w->s = s;
  w->len = left;
  w->owned = NULL;
  return queue_write(s, w, w->data);
}

/* Hands bytes to the kernel, trying a synchronous write first so the
 * common case copies nothing. */
static int raw_write(cm_stream *s, const uv_buf_t *bufs, unsigned n) {
  size_t total = 0;
  for (unsigned i = 0; i < n; i++)
    total += bufs[i].len;
  if (total == 0) return 0;
  ssize_t done = try_write(s, bufs, n);
  if (done < 0) return (int)done;
  size_t left = total - (size_t)done;
  return left == 0 ? 0 : queue_copy(s, bufs, n, (size_t)done, left);
}

/* What the kernel did not take of `out`, from `done` on, goes to uv_write
 * in out's own memory, which the request takes over: gathered records are
 * not copied a second time.  A small rest is copied instead, so a big
 * buffer is not held for a few bytes. */
static int queue_out(cm_stream *s, size_t done) {
  size_t left = cm_buf_size(&s->out) - done;
  const uint8_t *rest = cm_buf_head(&s->out) + done;
  if (left < OUT_HANDOVER_MIN) {
    uv_buf_t b = uv_buf_init((char *)rest, (unsigned)left);
    return queue_copy(s, &b, 1, 0, left);
  }
  if (s->queued + left > s->maxq) return CM_EQUEUE;
  write_req *w = malloc(sizeof *w);
  if (!w) return -ENOMEM;
  w->s = s;
  w->len = left;
  w->owned = s->out.data;
  cm_buf_init(&s->out, 0); /* out lets go of the memory w now owns */
  return queue_write(s, w, (uint8_t *)rest);
}

static int flush_out(cm_stream *s) {
  size_t n = cm_buf_size(&s->out);
  if (n == 0) return 0;
  if (s->state == S_CLOSED) {
    cm_buf_reset(&s->out);
    return CM_ECLOSED;
  }
  uv_buf_t b = uv_buf_init((char *)cm_buf_head(&s->out), (unsigned)n);
  ssize_t done = try_write(s, &b, 1);
  int rc = done < 0 ? (int)done : (size_t)done < n ? queue_out(s, (size_t)done) : 0;
  cm_buf_reset(&s->out);
  /* Large bursts leave a large buffer: give it back once the burst is out. */
  if (s->out.cap > 4 * READ_CHUNK) cm_buf_free(&s->out);
  return rc;
}

/* A write of more than one record, or any write while corked, gathers its
 * records in `out` and sends them GATHER_CHUNK at a time (corked: at the
 * uncork): a send() per 16 KiB record costs a syscall and a wake-up of the
 * reader each, far more than the copy (a tunnel client's 256 KiB messages
 * went from 16 sends to 2, and the client pair from 3.0-3.5 to 3.9-4.4
 * Gbit/s; docs/BENCHMARKS.md section 5).  A single record written uncorked
 * still goes straight from OpenSSL's buffer to the kernel. */
static int tls_write(cm_stream *s, const uint8_t *p, size_t n) {
  bool corked = s->cork_depth > 0, gather = corked || n > TLS_RECORD_MAX;
  while (n > 0) {
    int chunk = (int)CM_MIN(n, GATHER_CHUNK); /* n, unless gathering */
    s->gather_records = gather;
    int r = SSL_write(s->ssl, p, chunk);
    s->gather_records = false;
    if (r <= 0) return CM_ETLS;
    p += r;
    n -= (size_t)r;
    /* Corked, the records wait for the uncork, GATHER_CHUNK at most. */
    bool send = gather && (!corked || cm_buf_size(&s->out) >= GATHER_CHUNK);
    int rc = send ? flush_out(s) : 0;
    if (rc != 0) return rc;
  }
  return 0;
}

/* Hands plaintext to the kernel (or TLS) now. */
static int emit(cm_stream *s, const uv_buf_t *bufs, size_t n) {
  if (!s->ssl) return raw_write(s, bufs, (unsigned)n);
  if (n == 1) { /* nothing to coalesce with: no copy */
    int rc = tls_write(s, (const uint8_t *)bufs[0].base, bufs[0].len);
    return rc == 0 && s->cork_depth == 0 ? flush_out(s) : rc;
  }
  /* Coalesce small pieces so one record carries them, not one each. */
  uint8_t small[16384];
  size_t fill = 0;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    const uint8_t *p = (const uint8_t *)bufs[i].base;
    size_t len = bufs[i].len;
    if (fill + len <= sizeof small) {
      memcpy(small + fill, p, len);
      fill += len;
      continue;
    }
    if (fill) rc = tls_write(s, small, fill);
    fill = 0;
    if (rc == 0) rc = tls_write(s, p, len);
  }
  if (rc == 0 && fill) rc = tls_write(s, small, fill);
  if (rc == 0 && s->cork_depth == 0) rc = flush_out(s);
  return rc;
}

static int emit_cork(cm_stream *s) {
  if (cm_buf_size(&s->cork) == 0) return 0;
  uv_buf_t b = uv_buf_init((char *)cm_buf_head(&s->cork), (unsigned)cm_buf_size(&s->cork));
  int rc = emit(s, &b, 1);
  /* Idle streams hold no cork memory. */
  cm_buf_free(&s->cork);
  cm_buf_init(&s->cork, 0);
  return rc;
}

/* While corked, small writes gather and leave together (one record, one
 * syscall) at uncork or every CORK_FLUSH bytes; big pieces go at once,
 * uncopied, after what was gathered before them. */
static int corked_write(cm_stream *s, const uv_buf_t *bufs, size_t n) {
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    size_t len = bufs[i].len;
    if (cm_buf_size(&s->cork) + len > CORK_FLUSH || len >= CORK_DIRECT) rc = emit_cork(s);
    if (rc != 0) break;
    if (len >= CORK_DIRECT)
      rc = emit(s, &bufs[i], 1);
    else if (cm_buf_append(&s->cork, bufs[i].base, len) != 0)
      rc = -ENOMEM;
  }
  return rc;
}

static void act_on_read_stop(cm_stream *s);

/* A write OpenSSL refused because the reads had already ended in a TLS
 * error (the owner wrote in on_read, on the data in front of the error):
 * that error is why the stream closes, not the write. */
static void write_failed(cm_stream *s, int rc) {
  if (rc == CM_ETLS && s->read_stop && s->read_stop != SSL_ERROR_ZERO_RETURN) {
    ERR_clear_error(); /* the write's, a consequence */
    act_on_read_stop(s);
    return;
  }
  begin_close(s, rc, rc == CM_EQUEUE ? "write queue limit exceeded" : "write failed", true);
}

int cm_stream_writev(cm_stream *s, const uv_buf_t *bufs, size_t n) {
  if (s->state >= S_CLOSING) return CM_ECLOSED;
  if (s->state != S_OPEN) {
    for (size_t i = 0; i < n; i++) {
      if (cm_buf_append(&s->pre, bufs[i].base, bufs[i].len) != 0) {
        /* Same contract as after open: past the cap the stream closes. */
        begin_close(s, CM_EQUEUE, "write queue limit exceeded", true);
        return CM_EQUEUE;
      }
    }
    return 0;
  }
  int rc = s->cork_depth > 0 ? corked_write(s, bufs, n) : emit(s, bufs, n);
  if (rc != 0) write_failed(s, rc);
  return rc;
}

void cm_stream_cork(cm_stream *s) { s->cork_depth++; }

void cm_stream_uncork(cm_stream *s) {
  if (s->cork_depth == 0 || --s->cork_depth > 0) return;
  if (s->state != S_OPEN) {
    cm_buf_free(&s->cork);
    cm_buf_init(&s->cork, 0);
    flush_out(s); /* records sealed while corked */
    return;
  }
  int rc = emit_cork(s);
  if (rc == 0) rc = flush_out(s);
  if (rc != 0) write_failed(s, rc);
}

int cm_stream_write(cm_stream *s, const void *data, size_t len) {
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  return cm_stream_writev(s, &b, 1);
}

size_t cm_stream_write_queued(const cm_stream *s) {
  return s->queued + cm_buf_size(&s->pre) + cm_buf_size(&s->cork);
}
size_t cm_stream_write_room(const cm_stream *s) {
  size_t q = cm_stream_write_queued(s);
  return q < s->maxq ? s->maxq - q : 0;
}
bool cm_stream_above_high(const cm_stream *s) {
  return s->queued + cm_buf_size(&s->cork) >= s->high || s->above_high;
}

/* ---- reads ---------------------------------------------------------------- */

/* A TLS stream reads through its BIO: libuv gets no buffer, reads nothing
 * and reports UV_ENOBUFS, which is our "readable".  Plain streams, and TLS
 * ones lingering after close (discarding), read into the thread's buffer. */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  CM_UNUSED(suggested);
  cm_stream *s = h->data;
  if (s->ssl && s->state <= S_OPEN)
    *buf = uv_buf_init(NULL, 0);
  else
    *buf = uv_buf_init((char *)t_readbuf + CM_STREAM_HEADROOM, READ_ROOM);
}

static void stop_reading(cm_stream *s) {
  if (s->reading) {
    uv_read_stop(uvs(s));
    s->reading = false;
  }
}

static void start_reading(cm_stream *s);

static void handshake_done(cm_stream *s) {
  const unsigned char *a;
  unsigned alen;
  SSL_get0_alpn_selected(s->ssl, &a, &alen);
  if (alen >= sizeof s->alpn) alen = sizeof s->alpn - 1;
  if (alen) memcpy(s->alpn, a, alen); /* a is NULL when nothing was negotiated */
  s->alpn[alen] = '\0';
  s->state = S_OPEN;
  uv_timer_stop(&s->timer);
}

static void became_open(cm_stream *s) {
  if (cm_buf_size(&s->pre) > 0) {
    cm_buf pre = s->pre;
    cm_buf_init(&s->pre, s->maxq);
    cm_stream_write(s, cm_buf_head(&pre), cm_buf_size(&pre));
    cm_buf_free(&pre);
  }
  if (s->state == S_OPEN && s->cbs.on_open) s->cbs.on_open(s);
}

static int pending_socket_error(cm_stream *s);

/* The BIO's recv() saw the connection end: close as a libuv read of EOF
 * or of an error would have.  False when it did not. */
static bool socket_ended(cm_stream *s) {
  if (s->sock_err) {
    ERR_clear_error();
    begin_close(s, s->sock_err, uv_strerror(s->sock_err), true);
    return true;
  }
  if (!s->sock_eof) return false;
  ERR_clear_error();
  int soerr = pending_socket_error(s);
  if (soerr) {
    begin_close(s, soerr, uv_strerror(soerr), true);
    return true;
  }
  bool clean = SSL_get_shutdown(s->ssl) & SSL_RECEIVED_SHUTDOWN;
  s->eof = true;
  stop_reading(s);
  begin_close(s, clean ? 0 : UV_EOF, clean ? "peer closed" : "peer closed without close_notify",
              !clean);
  return true;
}

/* SSL_read stopped with e (not WANT_READ): the peer's close_notify, the
 * socket's end or a TLS error (why: its message, if known). */
static void reads_ended(cm_stream *s, int e, const char *why) {
  flush_out(s); /* e.g. a KeyUpdate answer */
  if (e == SSL_ERROR_ZERO_RETURN) {
    begin_close(s, 0, "peer sent close_notify", false);
  } else if (!socket_ended(s)) {
    begin_close(s, CM_ETLS, why && why[0] ? why : "TLS error", true);
  }
}

static void keep_read_stop(cm_stream *s, int e, const char *why) {
  free(s->read_stop_why);
  s->read_stop = e;
  s->read_stop_why = why[0] ? strdup(why) : NULL;
}

static void act_on_read_stop(cm_stream *s) {
  int e = s->read_stop;
  char *why = s->read_stop_why;
  s->read_stop = 0;
  s->read_stop_why = NULL;
  reads_ended(s, e, why);
  free(why);
}

/* Runs the handshake and reads records while not paused.  Input comes from
 * in_ptr/in_len (the current uv read), else from the stash `in`. */
static void tls_pump(cm_stream *s) {
  if (s->state == S_HANDSHAKE) {
    int r = SSL_do_handshake(s->ssl);
    flush_out(s);
    if (r != 1) {
      int e = SSL_get_error(s->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
      if (s->sock_err || s->sock_eof) ERR_clear_error();
      if (socket_ended(s)) return;
      char msg[200];
      tls_error_msg(s, "TLS handshake failed", msg, sizeof msg);
      begin_close(s, CM_EHANDSHAKE, msg, true);
      return;
    }
    handshake_done(s);
    became_open(s);
  }
  if (s->read_stop && s->state == S_OPEN && !s->paused) {
    act_on_read_stop(s);
    return;
  }
  uint8_t *buf = t_plainbuf + CM_STREAM_HEADROOM;
  while (s->state == S_OPEN && !s->paused) {
    /* The records already here leave in one delivery, as a plain read of
     * the same bytes would: one parse and one forward of 64 KiB instead
     * of four of a record each. */
    size_t have = 0;
    int r = 0, e = SSL_ERROR_NONE;
    char why[200];
    why[0] = '\0'; /* set only when the reads end in an error */
    while (have < READ_ROOM) {
      r = SSL_read(s->ssl, buf + have, (int)(READ_ROOM - have));
      if (r <= 0) {
        e = SSL_get_error(s->ssl, r);
        /* Before on_read can touch the thread's error queue. */
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_ZERO_RETURN)
          tls_error_msg(s, "TLS error", why, sizeof why);
        break;
      }
      have += (size_t)r;
    }
    /* The end (a close_notify, an alert, a forged record) is known before
     * the owner sees the data in front of it, which it may answer. */
    if (r <= 0 && e != SSL_ERROR_WANT_READ) keep_read_stop(s, e, why);
    if (have > 0) s->cbs.on_read(s, buf, have);
    if (r > 0) continue;
    /* Paused on that data, the owner meets the end at resume. */
    if (s->state != S_OPEN || !s->read_stop || s->paused) break;
    act_on_read_stop(s);
    return;
  }
  flush_out(s);
}

static void stash_unread(cm_stream *s) {
  if (s->in_len == 0) return;
  /* in_ptr may point into `in` itself; move, don't append onto ourselves. */
  if (s->in.data && s->in_ptr >= s->in.data && s->in_ptr < s->in.data + s->in.len) {
    cm_buf_consume(&s->in, (size_t)(s->in_ptr - cm_buf_head(&s->in)));
  } else {
    cm_buf_append(&s->in, s->in_ptr, s->in_len);
  }
  s->in_len = 0;
  s->in_ptr = NULL;
}

static bool has_pending_input(cm_stream *s) {
  return cm_buf_size(&s->in) > 0 || s->read_stop || (s->ssl && SSL_has_pending(s->ssl));
}

static void process_input(cm_stream *s) {
  if (!s->ssl || s->state >= S_CLOSING) return;
  if (cm_buf_size(&s->in) == 0 && !s->paused) tls_pump(s); /* what OpenSSL holds */
  if (s->state >= S_CLOSING) return;
  if (cm_buf_size(&s->in) > 0 && s->in_len == 0) {
    s->in_ptr = cm_buf_head(&s->in);
    s->in_len = cm_buf_size(&s->in);
    tls_pump(s);
    if (s->state >= S_CLOSED) return;
    size_t used = (size_t)(s->in_ptr - cm_buf_head(&s->in));
    cm_buf_consume(&s->in, used);
    s->in_len = 0;
    if (cm_buf_size(&s->in) == 0) cm_buf_free(&s->in);
  }
  if (!s->paused && s->state == S_OPEN) start_reading(s);
}

/* libuv reports a reset that arrives with POLLHUP after a short read as
 * EOF; the socket still holds the real error, so an abort is not mistaken
 * for an orderly close. */
static int pending_socket_error(cm_stream *s) {
  uv_os_fd_t fd;
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (!s->is_tcp || uv_fileno((uv_handle_t *)&s->h, &fd) != 0) return 0;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) return 0;
  return -soerr;
}

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  cm_stream *s = h->data;
  if (nread == 0) return;
  if (nread == UV_ENOBUFS) { /* readable: OpenSSL reads for itself */
    if (s->ssl && s->state <= S_OPEN && !s->paused) tls_pump(s);
    return;
  }
  if (nread < 0) {
    int soerr = nread == UV_EOF && s->state != S_SHUTDOWN ? pending_socket_error(s) : 0;
    if (s->state == S_SHUTDOWN) {
      finish_close(s); /* linger ended: peer closed too */
    } else if (soerr) {
      begin_close(s, soerr, uv_strerror(soerr), true);
    } else if (nread == UV_EOF) {
      bool clean = !s->ssl || (SSL_get_shutdown(s->ssl) & SSL_RECEIVED_SHUTDOWN);
      s->eof = true;
      begin_close(s, clean ? 0 : UV_EOF, clean ? "peer closed" : "peer closed without close_notify",
                  !clean);
    } else {
      begin_close(s, (int)nread, uv_strerror((int)nread), true);
    }
    return;
  }
  if (s->state >= S_CLOSING) return; /* discarding while lingering */
  if (!s->ssl) {
    s->cbs.on_read(s, (uint8_t *)buf->base, (size_t)nread);
    return;
  }
  s->in_ptr = (const uint8_t *)buf->base;
  s->in_len = (size_t)nread;
  tls_pump(s);
  if (s->state < S_CLOSING && s->in_len > 0) stash_unread(s);
  s->in_len = 0;
}

static void start_reading(cm_stream *s) {
  if (s->reading || s->state >= S_CLOSED || s->eof) return;
  if (uv_read_start(uvs(s), alloc_cb, read_cb) == 0) s->reading = true;
}

void cm_stream_pause(cm_stream *s) {
  s->paused = true;
  if (s->state <= S_OPEN) stop_reading(s);
}

void cm_stream_resume(cm_stream *s) {
  if (!s->paused || s->detach_cb) return;
  s->paused = false;
  if (s->state != S_OPEN) return;
  if (has_pending_input(s)) {
    /* Deliver stashed records from the loop, not from inside the
     * caller's callback (which may belong to another stream). */
    uv_timer_start(&s->timer, on_timer, 0, 0);
  } else {
    start_reading(s);
  }
}

bool cm_stream_paused(const cm_stream *s) { return s->paused; }

/* ---- open ----------------------------------------------------------------- */

static void handles_init_common(cm_stream *s, uv_loop_t *loop) {
  uv_timer_init(loop, &s->timer);
  s->timer.data = s;
  s->h.tcp.data = s;
  s->handles_open = 2;
}

static void start_session(cm_stream *s) {
  set_peer_addr(s);
  if (s->ssl) {
    s->state = S_HANDSHAKE;
    uv_timer_start(&s->timer, on_timer, s->handshake_ms, 0);
    start_reading(s);
    if (!s->is_server) tls_pump(s); /* ClientHello */
    return;
  }
  /* Report the open from the loop so the caller has the stream pointer
   * before any callback runs. */
  s->state = S_OPEN;
  s->open_pending = true;
  uv_timer_start(&s->timer, on_timer, 0, 0);
}

/* A server-side stream whose socket is open (rc 0): tune it and start. */
static cm_stream *accepted(cm_stream *s, int rc, const cm_stream_opts *o, int *err) {
  if (rc != 0) {
    *err = rc;
    s->cbs.on_close = NULL;
    begin_close(s, rc, "accept failed", true);
    return NULL;
  }
  tune_tcp(s, o);
  start_session(s);
  *err = 0;
  return s;
}

cm_stream *cm_stream_accept(uv_stream_t *server, const cm_stream_opts *o, const cm_stream_cbs *cbs,
                            void *ud, int *err) {
  cm_stream *s = stream_alloc(o, cbs, ud, true);
  if (!s) {
    *err = -ENOMEM;
    return NULL;
  }
  s->is_tcp = server->type == UV_TCP;
  if (s->is_tcp)
    uv_tcp_init(server->loop, &s->h.tcp);
  else
    uv_pipe_init(server->loop, &s->h.pipe, 0);
  handles_init_common(s, server->loop);
  int rc = uv_accept(server, uvs(s));
  if (rc == 0) rc = setup_tls(s, o);
  return accepted(s, rc, o, err);
}

cm_stream *cm_stream_accept_fd(uv_loop_t *loop, int fd, const cm_stream_opts *o,
                               const cm_stream_cbs *cbs, void *ud, int *err) {
  cm_stream *s = stream_alloc(o, cbs, ud, true);
  if (!s) {
    *err = -ENOMEM;
    return NULL;
  }
  s->is_tcp = true;
  uv_tcp_init(loop, &s->h.tcp);
  handles_init_common(s, loop);
  int rc = uv_tcp_open(&s->h.tcp, fd);
  if (rc != 0)
    close(fd); /* the handle never took it */
  else
    rc = setup_tls(s, o);
  return accepted(s, rc, o, err);
}

static void on_connect(uv_connect_t *req, int status) {
  cm_stream *s = req->data;
  if (s->state >= S_CLOSING) return;
  if (status < 0) {
    begin_close(s, status, uv_strerror(status), true);
    return;
  }
  start_session(s);
}

cm_stream *cm_stream_connect(uv_loop_t *loop, const struct sockaddr *addr, const cm_stream_opts *o,
                             const cm_stream_cbs *cbs, void *ud, int *err) {
  cm_stream *s = stream_alloc(o, cbs, ud, false);
  if (!s) {
    *err = -ENOMEM;
    return NULL;
  }
  s->is_tcp = true;
  uv_tcp_init(loop, &s->h.tcp);
  handles_init_common(s, loop);
  int rc = setup_tls(s, o);
  s->connect_req.data = s;
  if (rc == 0) rc = uv_tcp_connect(&s->connect_req, &s->h.tcp, addr, on_connect);
  if (rc != 0) {
    *err = rc;
    s->cbs.on_close = NULL;
    begin_close(s, rc, "connect failed", true);
    return NULL;
  }
  tune_tcp(s, o);
  s->state = S_CONNECTING;
  uv_timer_start(&s->timer, on_timer, s->handshake_ms, 0);
  *err = 0;
  return s;
}

cm_stream *cm_stream_open_fd(uv_loop_t *loop, int fd, bool is_server, const cm_stream_opts *o,
                             const cm_stream_cbs *cbs, void *ud, int *err) {
  cm_stream *s = stream_alloc(o, cbs, ud, is_server);
  if (!s) {
    *err = -ENOMEM;
    return NULL;
  }
  s->is_tcp = false;
  uv_pipe_init(loop, &s->h.pipe, 0);
  handles_init_common(s, loop);
  int rc = uv_pipe_open(&s->h.pipe, fd);
  if (rc == 0) rc = setup_tls(s, o);
  if (rc != 0) {
    *err = rc;
    s->cbs.on_close = NULL;
    begin_close(s, rc, "open failed", true);
    return NULL;
  }
  start_session(s);
  *err = 0;
  return s;
}

/* ---- moving to another loop ------------------------------------------------- */

/* Everything a stream is, between two loops: the socket (a duplicate; the
 * old handle closes its own descriptor), the TLS session with whatever
 * OpenSSL buffers inside it, and ciphertext read but not yet decrypted. */
struct cm_stream_parcel {
  int fd;
  SSL *ssl;
  cm_buf in;
  bool paused, is_server;
  size_t high, low, maxq;
  uint32_t handshake_ms;
  char peer[64];
  char alpn[32];
};

static void finish_detach(cm_stream *s) {
  void (*cb)(void *, cm_stream_parcel *) = s->detach_cb;
  void *ud = s->detach_ud;
  s->detach_cb = NULL;
  uv_os_fd_t fd;
  cm_stream_parcel *p = calloc(1, sizeof *p);
  int dup_fd = -1;
  if (p && uv_fileno((uv_handle_t *)&s->h, &fd) == 0) dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) {
    free(p);
    begin_close(s, -ENOMEM, "cannot move the connection", true);
    return;
  }
  p->fd = dup_fd;
  p->ssl = s->ssl;
  s->ssl = NULL;
  p->in = s->in; /* moved: its bytes, its (empty) cap */
  cm_buf_init(&s->in, 0);
  p->paused = s->paused;
  p->is_server = s->is_server;
  p->high = s->high;
  p->low = s->low;
  p->maxq = s->maxq;
  p->handshake_ms = s->handshake_ms;
  memcpy(p->peer, s->peer, sizeof p->peer);
  memcpy(p->alpn, s->alpn, sizeof p->alpn);
  /* This stream ends here without telling its owner, who moved on. */
  s->cbs.on_close = NULL;
  s->state = S_CLOSED;
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, on_handle_closed);
  uv_close((uv_handle_t *)&s->h, on_handle_closed);
  cb(ud, p);
}

int cm_stream_detach(cm_stream *s, void (*cb)(void *ud, cm_stream_parcel *p), void *ud) {
  if (s->state != S_OPEN || !s->is_tcp || s->detach_cb || s->cork_depth > 0 ||
      cm_buf_size(&s->cork) > 0 || cm_buf_size(&s->pre) > 0 || s->read_stop)
    return -EINVAL;
  stop_reading(s);
  uv_timer_stop(&s->timer); /* a deferred delivery of stashed input moves too */
  s->detach_cb = cb;
  s->detach_ud = ud;
  if (s->queued == 0) finish_detach(s); /* else after_write, once the kernel has it all */
  return 0;
}

void cm_stream_parcel_free(cm_stream_parcel *p) {
  if (!p) return;
  close(p->fd);
  SSL_free(p->ssl);
  cm_buf_free(&p->in);
  free(p);
}

cm_stream *cm_stream_adopt(uv_loop_t *loop, cm_stream_parcel *p, const cm_stream_cbs *cbs, void *ud,
                           int *err) {
  cm_stream_opts o = {.high_watermark = p->high,
                      .low_watermark = p->low,
                      .max_write_queue = p->maxq,
                      .handshake_timeout_ms = p->handshake_ms};
  cm_stream *s = stream_alloc(&o, cbs, ud, p->is_server);
  if (!s) {
    cm_stream_parcel_free(p);
    *err = -ENOMEM;
    return NULL;
  }
  s->is_tcp = true;
  uv_tcp_init(loop, &s->h.tcp);
  handles_init_common(s, loop);
  int rc = uv_tcp_open(&s->h.tcp, p->fd);
  if (rc != 0) {
    cm_stream_parcel_free(p); /* the handle never took the fd */
    *err = rc;
    s->cbs.on_close = NULL;
    begin_close(s, rc, "adopt failed", true);
    return NULL;
  }
  if ((s->ssl = p->ssl) != NULL) BIO_set_data(SSL_get_rbio(s->ssl), s);
  cm_buf_free(&s->in);
  s->in = p->in;
  s->paused = p->paused;
  memcpy(s->peer, p->peer, sizeof s->peer);
  memcpy(s->alpn, p->alpn, sizeof s->alpn);
  free(p);
  s->state = S_OPEN;
  if (!s->paused) {
    if (has_pending_input(s))
      uv_timer_start(&s->timer, on_timer, 0, 0); /* deliver from the loop, as resume does */
    else
      start_reading(s);
  }
  *err = 0;
  return s;
}

/* ---- close ---------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
  cm_stream *s = h->data;
  if (--s->handles_open > 0) return;
  if (s->cbs.on_close) s->cbs.on_close(s, s->close_err, s->close_msg);
  SSL_free(s->ssl);
  free(s->read_stop_why);
  cm_buf_free(&s->in);
  cm_buf_free(&s->out);
  cm_buf_free(&s->pre);
  cm_buf_free(&s->cork);
  free(s);
}

static void finish_close(cm_stream *s) {
  if (s->state == S_CLOSED) return;
  s->state = S_CLOSED;
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, on_handle_closed);
  uv_close((uv_handle_t *)&s->h, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  cm_stream *s = req->data;
  if (s->state != S_SHUTDOWN) return;
  if (status < 0 || s->eof) {
    finish_close(s);
    return;
  }
  /* Linger: read and discard until the peer closes or the timer fires. */
  s->paused = false;
  start_reading(s);
  uv_timer_start(&s->timer, on_timer, LINGER_MS, 0);
}

static void abort_now(cm_stream *s) {
  if (s->state == S_CLOSED) return;
  if (s->is_tcp && s->state != S_SHUTDOWN && s->state != S_CONNECTING) {
    s->state = S_CLOSED;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    if (uv_tcp_close_reset(&s->h.tcp, on_handle_closed) != 0)
      uv_close((uv_handle_t *)&s->h, on_handle_closed);
    return;
  }
  finish_close(s);
}

static void begin_close(cm_stream *s, int err, const char *msg, bool abrupt) {
  if (s->state == S_CLOSED) return;
  if (s->state < S_CLOSING) {
    s->close_err = err;
    snprintf(s->close_msg, sizeof s->close_msg, "%s", msg ? msg : "closed");
  }
  if (abrupt) {
    abort_now(s);
    return;
  }
  if (s->state == S_SHUTDOWN) return;
  bool was_open = s->state == S_OPEN;
  /* A graceful close sends what a cork still holds (e.g. a close frame). */
  if (was_open && cm_buf_size(&s->cork) > 0 && emit_cork(s) != 0) {
    abort_now(s);
    return;
  }
  if (s->state < S_CLOSING) {
    s->state = S_CLOSING;
    stop_reading(s);
    if (was_open && s->ssl) {
      SSL_shutdown(s->ssl); /* queues close_notify */
      flush_out(s);
    }
    uv_timer_start(&s->timer, on_timer, CLOSE_TIMEOUT_MS, 0);
  }
  if (s->queued > 0) return; /* after_write continues */
  if (!was_open && s->state == S_CLOSING && s->eof) {
    finish_close(s);
    return;
  }
  s->state = S_SHUTDOWN;
  s->shutdown_req.data = s;
  if (s->eof || uv_shutdown(&s->shutdown_req, uvs(s), on_shutdown) != 0) finish_close(s);
}

void cm_stream_close(cm_stream *s) {
  if (s->state >= S_CLOSING) return;
  if (s->state != S_OPEN) {
    begin_close(s, 0, "closed before open", true);
    return;
  }
  begin_close(s, 0, "closed", false);
}

void cm_stream_abort(cm_stream *s) { begin_close(s, 0, "aborted", true); }

bool cm_stream_closing(const cm_stream *s) { return s->state >= S_CLOSING; }

/* ---- accessors ------------------------------------------------------------ */

void *cm_stream_get_data(const cm_stream *s) { return s->ud; }
void cm_stream_set_data(cm_stream *s, void *ud) { s->ud = ud; }
void cm_stream_set_cbs(cm_stream *s, const cm_stream_cbs *cbs) { s->cbs = *cbs; }
uv_loop_t *cm_stream_loop(const cm_stream *s) { return s->h.tcp.loop; }
bool cm_stream_is_tls(const cm_stream *s) { return s->ssl != NULL; }
const char *cm_stream_alpn(const cm_stream *s) { return s->alpn; }
const char *cm_stream_peer_addr(const cm_stream *s) { return s->peer; }

const char *cm_stream_sni(const cm_stream *s) {
  return s->ssl ? SSL_get_servername(s->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

const char *cm_stream_tls_version(const cm_stream *s) {
  return s->ssl ? SSL_get_version(s->ssl) : NULL;
}

void *cm_stream_peer_cert(const cm_stream *s) {
  if (!s->ssl || s->state != S_OPEN) return NULL;
  X509 *c = SSL_get0_peer_certificate(s->ssl);
  if (!c || SSL_get_verify_result(s->ssl) != X509_V_OK) return NULL;
  return c;
}

bool cm_stream_peer_fingerprint(const cm_stream *s, uint8_t out[32]) {
  X509 *c = cm_stream_peer_cert(s);
  if (!c) return false;
  unsigned int n = 32;
  return X509_digest(c, EVP_sha256(), out, &n) == 1;
}
