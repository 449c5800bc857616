/*
 * io.c — the local end of a tunnel (see peer.h): a TCP connection
 * (accepted, or dialled after resolving the target off the loop) or the
 * standard streams of `relay raw` (pipes, terminals and sockets as libuv
 * streams; regular files and character devices through libuv's thread
 * pool, which is how files are read without blocking the loop).
 *
 * Reading delivers chunks into a buffer of the io's own (modifiable: the
 * WebSocket masks them in place) until paused.  Writing copies what the
 * kernel does not take at once, counts it, and says when the queue passes
 * the high watermark (the caller pauses its source) and when it falls to
 * the low one (on_drain); a hard cap turns runaway into an error instead
 * of memory.  rc_io_finish ends the output: gracefully (what is queued
 * leaves, then FIN or end of file) or at once (a TCP reset).
 */
#include "client/peer.h"
#include "client/pump.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Local reads: large, since every read and write costs a syscall and a
 * wake-up of the other side, and a tunnel's throughput on a busy machine
 * is mostly those (each read leaves as one message). */
#define READ_CHUNK (256 * 1024)
/* What may land past the high watermark before the source pauses: a read
 * of the WebSocket (64 KiB of records) or a few. */
#define OVERSHOOT (256 * 1024)

typedef enum { K_NONE, K_STREAM, K_FILE } io_kind;

typedef struct io_side {
  io_kind kind;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_tty_t tty;
  } h;
  uv_stream_t *s; /* &h, or the other side's handle for duplex TCP */
  int fd;         /* K_FILE */
  uv_fs_t req;    /* K_FILE: the read or write in flight */
  bool busy;      /* K_FILE: req in flight */
  bool open;      /* a handle to close */
} io_side;

typedef struct write_req {
  uv_write_t req;
  rc_io *io;
  size_t len;
  uint8_t data[];
} write_req;

struct rc_io {
  uv_loop_t *loop;
  rc_io_cbs cbs;
  void *ud;
  io_side in, out; /* duplex TCP: out.s points at in's handle */
  bool duplex;
  bool connecting; /* dialling: writes wait in `pending` */
  bool reading, paused, eof;
  uint8_t rbuf[READ_CHUNK];
  cm_buf pending;  /* K_FILE output, and output while connecting */
  cm_buf wbuf;     /* K_FILE: the bytes of the write in flight (they must not move) */
  cm_buf gather;   /* stream output of this turn of the loop, for one write */
  uv_idle_t flush; /* runs once the turn is over */
  bool flush_armed;
  size_t queued; /* stream bytes handed to uv_write, not done */
  size_t high, low, maxq;
  bool above;
  bool finishing, graceful, shut, done;
  bool lingering; /* FIN sent: reading and discarding until the other FIN */
  bool closing, finalized;
  int handles; /* uv handles open (files have none) */
  uv_timer_t linger;
  int err;
  char msg[160];
  /* dialling */
  uv_getaddrinfo_t gai;
  bool resolving;
  struct addrinfo *addrs, *next;
  uv_connect_t conn;
  int dial_err; /* the failed address's error, while its handle closes */
  char target[RC_HOST_MAX + 8];
};

#define LINGER_MS 2000
/* Output gathered within one turn of the loop leaves as one write: a TLS
 * read hands over its records (16 KiB each) one by one, and a write(2)
 * apiece would cost a syscall and a wake-up of the reader each.  A piece
 * this large with nothing gathered goes straight out, uncopied; the
 * gathered bytes go out at once when they reach GATHER_MAX. */
#define GATHER_DIRECT (64 * 1024)
#define GATHER_MAX    (256 * 1024)

static void flush_file(rc_io *io);
static void start_file_read(rc_io *io);

/* ---- closing --------------------------------------------------------------------- */

static void io_free(rc_io *io) {
  if (io->addrs) uv_freeaddrinfo(io->addrs);
  cm_buf_free(&io->pending);
  cm_buf_free(&io->wbuf);
  cm_buf_free(&io->gather);
  free(io);
}

static void settle(rc_io *io);

static void on_handle_closed(uv_handle_t *h) {
  rc_io *io = h->data;
  io->handles--;
  settle(io);
}

static void close_handle(uv_handle_t *h, bool reset) {
  if (reset && h->type == UV_TCP && uv_tcp_close_reset((uv_tcp_t *)h, on_handle_closed) == 0)
    return;
  uv_close(h, on_handle_closed);
}

/* Once the io is done and nothing is in flight (file requests cannot be
 * cancelled once running, a failed address's handle is still closing),
 * closes the handles; once they are closed, reports and frees. */
static void settle(rc_io *io) {
  if (!io->done || io->in.busy || io->out.busy || io->resolving || io->dial_err) return;
  if (!io->closing) {
    io->closing = true;
    bool reset = !io->graceful;
    if (io->in.open && io->in.kind == K_STREAM) close_handle((uv_handle_t *)&io->in.h, reset);
    if (!io->duplex && io->out.open && io->out.kind == K_STREAM)
      close_handle((uv_handle_t *)&io->out.h, reset);
    uv_close((uv_handle_t *)&io->linger, on_handle_closed);
    uv_close((uv_handle_t *)&io->flush, on_handle_closed);
  }
  if (io->handles > 0 || io->finalized) return;
  io->finalized = true;
  if (io->cbs.on_done) io->cbs.on_done(io, io->err, io->err ? io->msg : NULL);
  io_free(io);
}

/* Stops everything; on_done follows once the handles are closed. */
static void io_end(rc_io *io, int err, const char *msg) {
  if (io->done) return;
  io->done = true;
  if (err && !io->err) {
    io->err = err;
    snprintf(io->msg, sizeof io->msg, "%s", msg);
    io->graceful = false;
  }
  if (io->in.kind == K_STREAM && io->reading) uv_read_stop(io->in.s);
  io->reading = false;
  uv_timer_stop(&io->linger);
  if (io->in.kind == K_FILE && io->in.busy) uv_cancel((uv_req_t *)&io->in.req);
  if (io->resolving) uv_cancel((uv_req_t *)&io->gai);
  settle(io);
}

static void fail_errno(rc_io *io, int err, const char *what) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, uv_strerror(err));
  io_end(io, err, msg);
}

/* ---- writing ---------------------------------------------------------------------- */

static void check_drain(rc_io *io) {
  size_t q = rc_io_queued(io);
  if (io->above && q <= io->low) {
    io->above = false;
    if (!io->done && !io->finishing && io->cbs.on_drain) io->cbs.on_drain(io);
  }
}

static void on_linger(uv_timer_t *t) { io_end(t->data, 0, NULL); }

static void start_reading(rc_io *io);

/* Our FIN is out.  Closing now with unread input would reset the
 * connection and could destroy what is still in flight, so read and
 * discard until the other side's FIN, for a while at most. */
static void on_shutdown(uv_shutdown_t *req, int status) {
  rc_io *io = req->data;
  free(req);
  if (io->done) return;
  if (status < 0 && status != UV_ENOTCONN) {
    fail_errno(io, status, "local connection");
    return;
  }
  if (io->eof) {
    io_end(io, 0, NULL);
    return;
  }
  io->lingering = true;
  start_reading(io);
  uv_timer_start(&io->linger, on_linger, LINGER_MS, 0);
}

/* A graceful finish ends the output once the queue is empty. */
static void maybe_shutdown(rc_io *io) {
  if (!io->finishing || io->done || io->shut || rc_io_queued(io) > 0 || io->connecting) return;
  io->shut = true;
  if (io->out.kind == K_STREAM && io->out.s->type == UV_TCP) {
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req) {
      req->data = io;
      if (uv_shutdown(req, io->out.s, on_shutdown) == 0) return;
      free(req);
    }
  }
  io_end(io, 0, NULL); /* pipes, terminals, files: closing is the end */
}

static void after_write(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  rc_io *io = w->io;
  io->queued -= w->len;
  free(w);
  if (io->done) return;
  if (status < 0) {
    fail_errno(io, status, "writing locally");
    return;
  }
  check_drain(io);
  maybe_shutdown(io);
}

static int stream_write(rc_io *io, const uint8_t *data, size_t len) {
  size_t done = 0;
  if (io->queued == 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int r = uv_try_write(io->out.s, &b, 1);
    if (r > 0)
      done = (size_t)r;
    else if (r < 0 && r != UV_EAGAIN && r != UV_ENOSYS)
      return r;
  }
  if (done == len) return 0;
  size_t left = len - done;
  write_req *w = malloc(sizeof *w + left);
  if (!w) return -ENOMEM;
  memcpy(w->data, data + done, left);
  w->io = io;
  w->len = left;
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)left);
  int rc = uv_write(&w->req, io->out.s, &b, 1, after_write);
  if (rc != 0) {
    free(w);
    return rc;
  }
  io->queued += left;
  return 0;
}

static void on_file_written(uv_fs_t *req) {
  rc_io *io = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  io->out.busy = false;
  if (io->done) {
    settle(io);
    return;
  }
  if (n < 0) {
    fail_errno(io, (int)n, "writing locally");
    return;
  }
  cm_buf_consume(&io->wbuf, (size_t)n);
  check_drain(io);
  flush_file(io);
  maybe_shutdown(io);
}

static void flush_file(rc_io *io) {
  if (io->out.busy || io->done) return;
  if (cm_buf_size(&io->wbuf) == 0) {
    /* What came meanwhile becomes the next write; new output gathers
     * in a fresh buffer, so the bytes the thread pool reads stay put. */
    cm_buf t = io->wbuf;
    io->wbuf = io->pending;
    io->pending = t;
  }
  if (cm_buf_size(&io->wbuf) == 0) return;
  uv_buf_t b = uv_buf_init((char *)cm_buf_head(&io->wbuf), (unsigned)cm_buf_size(&io->wbuf));
  io->out.req.data = io;
  int rc = uv_fs_write(io->loop, &io->out.req, io->out.fd, &b, 1, -1, on_file_written);
  if (rc < 0) {
    fail_errno(io, rc, "writing locally");
    return;
  }
  io->out.busy = true;
}

static void flush_gather(rc_io *io) {
  if (io->done || cm_buf_size(&io->gather) == 0) return;
  int rc = stream_write(io, cm_buf_head(&io->gather), cm_buf_size(&io->gather));
  cm_buf_reset(&io->gather);
  if (rc != 0) {
    fail_errno(io, rc, "writing locally");
    return;
  }
  check_drain(io);
  maybe_shutdown(io);
}

static void on_flush(uv_idle_t *h) {
  rc_io *io = h->data;
  uv_idle_stop(h);
  io->flush_armed = false;
  flush_gather(io);
}

static int gather_write(rc_io *io, const uint8_t *data, size_t len) {
  if (cm_buf_size(&io->gather) == 0 && len >= GATHER_DIRECT) return stream_write(io, data, len);
  int rc = cm_buf_append(&io->gather, data, len);
  if (rc != 0) return rc;
  if (cm_buf_size(&io->gather) >= GATHER_MAX) {
    rc = stream_write(io, cm_buf_head(&io->gather), cm_buf_size(&io->gather));
    cm_buf_reset(&io->gather);
    return rc;
  }
  /* An idle handle runs in this turn or the next without letting the
   * loop block in between. */
  if (!io->flush_armed) {
    uv_idle_start(&io->flush, on_flush);
    io->flush_armed = true;
  }
  return 0;
}

int rc_io_write(rc_io *io, const uint8_t *data, size_t len) {
  if (io->done || io->finishing) return CM_ECLOSED;
  if (len == 0) return 0;
  if (rc_io_queued(io) + len > io->maxq) {
    io_end(io, CM_EQUEUE, "local write queue limit exceeded");
    return CM_EQUEUE;
  }
  int rc;
  if (io->connecting || io->out.kind == K_FILE) {
    rc = cm_buf_append(&io->pending, data, len);
    if (rc == 0 && !io->connecting) flush_file(io);
  } else {
    rc = gather_write(io, data, len);
  }
  if (rc != 0) {
    fail_errno(io, rc, "writing locally");
    return rc;
  }
  if (rc_io_queued(io) >= io->high) io->above = true;
  return io->above ? 1 : 0;
}

size_t rc_io_queued(const rc_io *io) {
  return io->queued + cm_buf_size(&io->pending) + cm_buf_size(&io->wbuf) + cm_buf_size(&io->gather);
}
bool rc_io_above_high(const rc_io *io) { return io->above; }

void rc_io_finish(rc_io *io, bool graceful) {
  if (io->done || io->finishing) return;
  io->finishing = true;
  io->graceful = graceful;
  rc_io_pause(io);
  if (!graceful) {
    io_end(io, 0, NULL);
    return;
  }
  maybe_shutdown(io);
}

/* ---- reading ---------------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  CM_UNUSED(suggested);
  rc_io *io = h->data;
  *buf = uv_buf_init((char *)io->rbuf, sizeof io->rbuf);
}

static void got_eof(rc_io *io) {
  io->eof = true;
  if (io->lingering)
    io_end(io, 0, NULL);
  else if (io->cbs.on_eof)
    io->cbs.on_eof(io);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  rc_io *io = s->data;
  if (n == 0 || io->done) return;
  if (n == UV_EOF) {
    uv_read_stop(s);
    io->reading = false;
    got_eof(io);
  } else if (n < 0) {
    if (io->lingering)
      io_end(io, 0, NULL); /* what we sent was taken; a reset now is theirs */
    else
      fail_errno(io, (int)n, "local connection");
  } else if (!io->lingering && io->cbs.on_read) {
    io->cbs.on_read(io, (uint8_t *)buf->base, (size_t)n);
  }
}

static void on_file_read(uv_fs_t *req) {
  rc_io *io = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  io->in.busy = false;
  if (io->done) {
    settle(io);
    return;
  }
  if (n < 0) {
    fail_errno(io, (int)n, "reading locally");
    return;
  }
  if (n == 0) {
    got_eof(io);
    return;
  }
  if (io->cbs.on_read) io->cbs.on_read(io, io->rbuf, (size_t)n);
  start_file_read(io);
}

static void start_file_read(rc_io *io) {
  if (io->in.busy || io->paused || io->eof || io->done) return;
  uv_buf_t b = uv_buf_init((char *)io->rbuf, sizeof io->rbuf);
  io->in.req.data = io;
  int rc = uv_fs_read(io->loop, &io->in.req, io->in.fd, &b, 1, -1, on_file_read);
  if (rc < 0)
    fail_errno(io, rc, "reading locally");
  else
    io->in.busy = true;
}

void rc_io_pause(rc_io *io) {
  io->paused = true;
  if (io->in.kind == K_STREAM && io->reading) {
    uv_read_stop(io->in.s);
    io->reading = false;
  }
}

static void start_reading(rc_io *io) {
  if (io->reading || io->in.kind != K_STREAM) return;
  int rc = uv_read_start(io->in.s, alloc_cb, read_cb);
  if (rc == 0)
    io->reading = true;
  else
    fail_errno(io, rc, "reading locally");
}

void rc_io_resume(rc_io *io) {
  io->paused = false;
  if (io->done || io->eof || io->connecting || io->finishing) return;
  if (io->in.kind == K_FILE)
    start_file_read(io);
  else
    start_reading(io);
}

/* ---- making one --------------------------------------------------------------------- */

static rc_io *io_alloc(uv_loop_t *loop, const rc_io_opts *o, const rc_io_cbs *cbs, void *ud) {
  rc_io *io = calloc(1, sizeof *io);
  if (!io) return NULL;
  io->loop = loop;
  io->cbs = *cbs;
  io->ud = ud;
  io->high = o && o->high_watermark ? o->high_watermark : 256 * 1024;
  io->low = io->high / 4;
  io->maxq = io->high + OVERSHOOT;
  io->paused = true;
  io->graceful = true;
  cm_buf_init(&io->pending, 0);
  cm_buf_init(&io->wbuf, 0);
  cm_buf_init(&io->gather, 0);
  uv_timer_init(loop, &io->linger);
  io->linger.data = io;
  uv_idle_init(loop, &io->flush);
  io->flush.data = io;
  io->handles = 2; /* the linger timer and the flush */
  return io;
}

static void tcp_setup(rc_io *io) {
  io->duplex = true;
  io->in.kind = io->out.kind = K_STREAM;
  io->in.s = io->out.s = (uv_stream_t *)&io->in.h.tcp;
  io->in.h.tcp.data = io;
  io->in.open = true;
  io->handles++;
}

rc_io *rc_io_accept(uv_stream_t *server, const rc_io_opts *o, const rc_io_cbs *cbs, void *ud,
                    int *err) {
  rc_io *io = io_alloc(server->loop, o, cbs, ud);
  if (!io) {
    *err = -ENOMEM;
    return NULL;
  }
  uv_tcp_init(server->loop, &io->in.h.tcp);
  tcp_setup(io);
  *err = uv_accept(server, io->in.s);
  if (*err != 0) {
    io->cbs.on_done = NULL;
    io_end(io, *err, "accept failed");
    return NULL;
  }
  return io;
}

/* ---- dialling ------------------------------------------------------------------------ */

static void try_next(rc_io *io, int err);

/* A failed address's handle is closed before the next one is made in the
 * same memory. */
static void on_dial_closed(uv_handle_t *h) {
  rc_io *io = h->data;
  int err = io->dial_err;
  io->dial_err = 0;
  io->handles--;
  if (io->done)
    settle(io);
  else
    try_next(io, err);
}

static void dial_failed(rc_io *io, int err) {
  io->in.open = false;
  io->dial_err = err ? err : UV_ECONNREFUSED;
  uv_close((uv_handle_t *)&io->in.h.tcp, on_dial_closed);
}

static void on_connect(uv_connect_t *req, int status) {
  rc_io *io = req->data;
  if (io->done) return;
  if (status < 0) {
    dial_failed(io, status);
    return;
  }
  io->connecting = false;
  uv_tcp_nodelay(&io->in.h.tcp, 1);
  if (io->cbs.on_open) io->cbs.on_open(io);
  if (io->done) return;
  if (cm_buf_size(&io->pending) > 0) {
    cm_buf p = io->pending;
    cm_buf_init(&io->pending, 0);
    int rc = stream_write(io, cm_buf_head(&p), cm_buf_size(&p));
    cm_buf_free(&p);
    if (rc != 0) {
      fail_errno(io, rc, "writing locally");
      return;
    }
    check_drain(io);
  }
  if (!io->paused) rc_io_resume(io);
  maybe_shutdown(io);
}

static void try_next(rc_io *io, int err) {
  struct addrinfo *a = io->next;
  if (!a) {
    char msg[160];
    snprintf(msg, sizeof msg, "cannot connect to %s: %s", io->target, uv_strerror(err));
    io_end(io, err, msg);
    return;
  }
  io->next = a->ai_next;
  uv_tcp_init(io->loop, &io->in.h.tcp);
  tcp_setup(io);
  io->conn.data = io;
  int rc = uv_tcp_connect(&io->conn, &io->in.h.tcp, a->ai_addr, on_connect);
  if (rc != 0) dial_failed(io, rc);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rc_io *io = req->data;
  io->resolving = false;
  if (io->done) {
    if (res) uv_freeaddrinfo(res);
    settle(io);
    return;
  }
  if (status != 0 || !res) {
    char msg[200];
    snprintf(msg, sizeof msg, "cannot resolve %s: %s", io->target,
             uv_strerror(status ? status : UV_EAI_NONAME));
    if (res) uv_freeaddrinfo(res);
    io_end(io, status ? status : UV_EAI_NONAME, msg);
    return;
  }
  io->addrs = io->next = res;
  try_next(io, UV_EAI_NONAME);
}

int rc_hostport_split(const char *hp, char *host, size_t hostlen, uint16_t *port) {
  const char *colon = strrchr(hp, ':');
  if (!colon || colon == hp || !colon[1]) return -EINVAL;
  const char *h = hp;
  size_t hl = (size_t)(colon - hp);
  if (h[0] == '[') {
    if (hl < 2 || h[hl - 1] != ']') return -EINVAL;
    h++;
    hl -= 2;
  } else if (memchr(h, ':', hl)) {
    return -EINVAL; /* an IPv6 literal needs brackets */
  }
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (*end || p < 1 || p > 65535 || hl == 0 || hl >= hostlen) return -EINVAL;
  memcpy(host, h, hl);
  host[hl] = '\0';
  *port = (uint16_t)p;
  return 0;
}

rc_io *rc_io_dial(uv_loop_t *loop, const char *hostport, const rc_io_opts *o, const rc_io_cbs *cbs,
                  void *ud) {
  char host[RC_HOST_MAX], port[8];
  uint16_t p;
  if (rc_hostport_split(hostport, host, sizeof host, &p) != 0) return NULL;
  rc_io *io = io_alloc(loop, o, cbs, ud);
  if (!io) return NULL;
  io->connecting = true;
  io->duplex = true;
  io->in.kind = io->out.kind = K_STREAM;
  snprintf(io->target, sizeof io->target, "%s", hostport);
  snprintf(port, sizeof port, "%u", (unsigned)p);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  io->gai.data = io;
  int rc = uv_getaddrinfo(loop, &io->gai, on_resolved, host, port, &hints);
  if (rc != 0) {
    io->cbs.on_done = NULL;
    io_end(io, rc, "resolve");
    return NULL;
  }
  io->resolving = true;
  return io;
}

/* ---- standard streams --------------------------------------------------------------- */

static int open_side(uv_loop_t *loop, rc_io *io, io_side *sd, int fd, bool readable) {
  uv_handle_type t = uv_guess_handle(fd);
  sd->fd = fd;
  int rc = 0;
  switch (t) {
  case UV_TTY: rc = uv_tty_init(loop, &sd->h.tty, fd, readable); break;
  case UV_NAMED_PIPE:
    rc = uv_pipe_init(loop, &sd->h.pipe, 0);
    if (rc == 0) rc = uv_pipe_open(&sd->h.pipe, fd);
    break;
  case UV_TCP:
    rc = uv_tcp_init(loop, &sd->h.tcp);
    if (rc == 0) rc = uv_tcp_open(&sd->h.tcp, fd);
    break;
  case UV_FILE: sd->kind = K_FILE; break;
  default: return -EBADF;
  }
  if (rc != 0) return rc;
  sd->open = true;
  if (sd->kind != K_FILE) {
    sd->kind = K_STREAM;
    sd->s = (uv_stream_t *)&sd->h;
    sd->h.tcp.data = io;
    io->handles++;
  }
  return 0;
}

rc_io *rc_io_stdio(uv_loop_t *loop, int in_fd, int out_fd, const rc_io_opts *o,
                   const rc_io_cbs *cbs, void *ud, char *err, size_t errlen) {
  rc_io *io = io_alloc(loop, o, cbs, ud);
  if (!io) {
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  int rc = open_side(loop, io, &io->in, in_fd, true);
  if (rc == 0) rc = open_side(loop, io, &io->out, out_fd, false);
  if (rc != 0) {
    cm_seterr(err, errlen, "cannot use standard input/output: %s", uv_strerror(rc));
    io->cbs.on_done = NULL;
    io_end(io, rc, "stdio");
    return NULL;
  }
  return io;
}

void *rc_io_get_data(const rc_io *io) { return io->ud; }
bool rc_io_eof(const rc_io *io) { return io->eof; }
