/*
 * udp.c — udp-listen and udp-dial (see client.h): one binary message is
 * one datagram, both ways, and nothing waits.  A datagram that finds the
 * WebSocket's queue above the watermark is dropped; one the socket cannot
 * take at once waits among at most udp_queue others, else is dropped;
 * every drop is counted by cause and the counters are logged at the end.
 */
#include "client/udp.h"
#include "websocket/websocket.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DATAGRAM  65535
#define DEFAULT_QUEUE 256

typedef struct send_req {
  uv_udp_send_t req;
  rc_udp *u;
  uint8_t data[];
} send_req;

struct rc_udp {
  rc_peer *p;
  rc_peer_stats *st;
  rc_ws *ws;
  uv_udp_t sock;
  bool sock_open, connected, listen;
  uv_getaddrinfo_t gai;
  bool resolving;
  struct sockaddr_storage reply;
  bool have_reply;
  size_t inflight, max_inflight;
  size_t msg_len;
  bool msg_over;
  bool ended;
  rc_ws_end end;
  bool have_end;
  char failure[200]; /* a local failure, which decides the result */
  uint8_t rbuf[MAX_DATAGRAM];
  uint8_t msg[MAX_DATAGRAM];
};

static void udp_end(rc_udp *u);

/* ---- to the socket ---------------------------------------------------------------- */

static void after_send(uv_udp_send_t *req, int status) {
  send_req *s = (send_req *)req;
  rc_udp *u = s->u;
  u->inflight--;
  if (status < 0) u->st->dropped_down++;
  free(s);
  if (u->ended) udp_end(u);
}

static void send_datagram(rc_udp *u, const uint8_t *d, size_t n) {
  const struct sockaddr *to = NULL;
  if (u->listen) {
    if (!u->have_reply) {
      u->st->dropped_no_reply++;
      return;
    }
    to = (const struct sockaddr *)&u->reply;
  } else if (!u->connected) {
    u->st->dropped_down++;
    return;
  }
  uv_buf_t b = uv_buf_init((char *)d, (unsigned)n);
  int r = u->inflight == 0 ? uv_udp_try_send(&u->sock, &b, 1, to) : UV_EAGAIN;
  if (r >= 0) {
    u->st->messages_down++;
    u->st->bytes_down += n;
    return;
  }
  if (r == UV_EMSGSIZE) {
    u->st->dropped_oversize++;
    return;
  }
  if (r != UV_EAGAIN || u->inflight >= u->max_inflight) {
    u->st->dropped_down++; /* a full queue, or the target refused (ICMP) */
    return;
  }
  send_req *s = malloc(sizeof *s + n);
  if (!s) {
    u->st->dropped_down++;
    return;
  }
  s->u = u;
  memcpy(s->data, d, n);
  b = uv_buf_init((char *)s->data, (unsigned)n);
  if (uv_udp_send(&s->req, &u->sock, &b, 1, to, after_send) != 0) {
    free(s);
    u->st->dropped_down++;
    return;
  }
  u->inflight++;
  u->st->messages_down++;
  u->st->bytes_down += n;
}

/* ---- from the socket ---------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  CM_UNUSED(suggested);
  rc_udp *u = h->data;
  *buf = uv_buf_init((char *)u->rbuf, sizeof u->rbuf);
}

static bool same_addr(const struct sockaddr *a, const struct sockaddr_storage *b) {
  if (a->sa_family != b->ss_family) return false;
  size_t n = a->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  return memcmp(a, b, n) == 0;
}

/* The first sender is the one we answer; others are not ours. */
static bool from_ok(rc_udp *u, const struct sockaddr *addr) {
  if (!u->listen) return true;
  if (!addr) return false;
  if (u->have_reply) {
    if (same_addr(addr, &u->reply)) return true;
    u->st->dropped_foreign++;
    return false;
  }
  size_t n = addr->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  memcpy(&u->reply, addr, n);
  u->have_reply = true;
  cm_log(CM_LOG_INFO, "peer", "answering the first sender");
  return true;
}

static void recv_cb(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags) {
  rc_udp *u = h->data;
  if (n == 0 && !addr) return; /* nothing more to read now */
  if (n < 0) return;           /* e.g. an ICMP refusal on a connected socket */
  if (flags & UV_UDP_PARTIAL) {
    u->st->dropped_oversize++;
    return;
  }
  if (!from_ok(u, addr)) return;
  if (!u->ws || !rc_ws_is_open(u->ws) || rc_ws_above_high(u->ws)) {
    u->st->dropped_up++; /* not buffered: UDP may lose it, and a queue would only grow */
    return;
  }
  if (rc_ws_send_inplace(u->ws, WS_BINARY, (uint8_t *)buf->base, (size_t)n, true) >= 0) {
    u->st->messages_up++;
    u->st->bytes_up += (uint64_t)n;
  } else {
    u->st->dropped_up++;
  }
}

/* ---- the WebSocket ------------------------------------------------------------------ */

static void ws_on_open(rc_ws *ws) {
  CM_UNUSED(ws);
  cm_log(CM_LOG_INFO, "peer", "joined the session");
}

static void ws_on_message(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin) {
  CM_UNUSED(opcode);
  rc_udp *u = rc_ws_get_data(ws);
  if (fin && u->msg_len == 0 && !u->msg_over) {
    send_datagram(u, data, len); /* a message in one piece: no copy */
    return;
  }
  if (!u->msg_over && len <= sizeof u->msg - u->msg_len) {
    if (len) memcpy(u->msg + u->msg_len, data, len);
    u->msg_len += len;
  } else {
    u->msg_over = true;
  }
  if (!fin) return;
  if (u->msg_over)
    u->st->dropped_oversize++;
  else
    send_datagram(u, u->msg, u->msg_len);
  u->msg_len = 0;
  u->msg_over = false;
}

static void ws_on_close(rc_ws *ws, const rc_ws_end *end) {
  rc_udp *u = rc_ws_get_data(ws);
  u->ws = NULL;
  u->end = *end;
  u->have_end = true;
  udp_end(u);
}

static const rc_ws_cbs g_ws_cbs = {
    .on_open = ws_on_open, .on_message = ws_on_message, .on_close = ws_on_close};

/* ---- life cycle --------------------------------------------------------------------- */

static void report(rc_udp *u) {
  rc_peer_result r;
  rc_peer_result_end(&r, u->have_end ? &u->end : NULL, u->failure);
  r.stats = *u->st;
  const rc_peer_stats *s = u->st;
  cm_log(CM_LOG_INFO, "peer", "udp counters", CM_I("datagrams_up", s->messages_up),
         CM_I("datagrams_down", s->messages_down), CM_I("bytes_up", s->bytes_up),
         CM_I("bytes_down", s->bytes_down), CM_I("dropped_up", s->dropped_up),
         CM_I("dropped_down", s->dropped_down), CM_I("dropped_foreign", s->dropped_foreign),
         CM_I("dropped_no_reply", s->dropped_no_reply),
         CM_I("dropped_oversize", s->dropped_oversize));
  rc_peer *p = u->p;
  free(u);
  rc_peer_pump_done(p, &r);
}

static void on_sock_closed(uv_handle_t *h) {
  rc_udp *u = h->data;
  u->sock_open = false;
  udp_end(u);
}

/* Ends once the WebSocket is gone: closes the socket, then reports. */
static void udp_end(rc_udp *u) {
  u->ended = true;
  if (u->ws) {
    if (rc_ws_is_open(u->ws)) {
      rc_ws_close(u->ws, WS_CLOSE_NORMAL, NULL);
      return;
    }
    rc_ws_abort(u->ws);
    u->ws = NULL;
  }
  if (u->resolving) {
    uv_cancel((uv_req_t *)&u->gai);
    return; /* on_resolved comes back here */
  }
  if (u->sock_open) {
    if (!uv_is_closing((uv_handle_t *)&u->sock)) {
      uv_udp_recv_stop(&u->sock);
      uv_close((uv_handle_t *)&u->sock, on_sock_closed);
    }
    return;
  }
  if (u->inflight) return;
  report(u);
}

void rc_udp_stop(rc_udp *u) {
  if (!u->ended) udp_end(u);
}

static void free_when_closed(uv_handle_t *h) { free(h->data); }

static int open_socket(rc_udp *u, int family) {
  int rc = uv_udp_init_ex(rc_peer_loop(u->p), &u->sock, (unsigned)family);
  if (rc != 0) return rc;
  u->sock.data = u;
  u->sock_open = true;
  return 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rc_udp *u = req->data;
  u->resolving = false;
  if (u->ended) {
    if (res) uv_freeaddrinfo(res);
    udp_end(u);
    return;
  }
  const char *target = rc_peer_target(u->p);
  int rc = status ? status : !res ? UV_EAI_NONAME : open_socket(u, res->ai_family);
  if (rc == 0) rc = uv_udp_connect(&u->sock, res->ai_addr);
  if (rc == 0) rc = uv_udp_recv_start(&u->sock, alloc_cb, recv_cb);
  if (res) uv_freeaddrinfo(res);
  if (rc != 0) {
    snprintf(u->failure, sizeof u->failure, "cannot reach the UDP target %s: %s", target,
             uv_strerror(rc));
    udp_end(u);
    return;
  }
  u->connected = true;
}

static int start_dial(rc_udp *u, char *err, size_t errlen) {
  char host[RC_HOST_MAX], port[8];
  uint16_t pn;
  if (rc_hostport_split(rc_peer_target(u->p), host, sizeof host, &pn) != 0) {
    cm_seterr(err, errlen, "--target must be HOST:PORT");
    return -EINVAL;
  }
  snprintf(port, sizeof port, "%u", (unsigned)pn);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM};
  u->gai.data = u;
  int rc = uv_getaddrinfo(rc_peer_loop(u->p), &u->gai, on_resolved, host, port, &hints);
  if (rc != 0) {
    cm_seterr(err, errlen, "cannot resolve %s: %s", host, uv_strerror(rc));
    return rc;
  }
  u->resolving = true;
  return 0;
}

static int start_listen(rc_udp *u, char *err, size_t errlen) {
  const char *listen = rc_peer_listen_addr(u->p);
  char host[RC_HOST_MAX];
  int port;
  struct sockaddr_storage ss;
  if (cm_parse_hostport(listen, "0.0.0.0", host, sizeof host, &port) != 0 ||
      cm_sockaddr_from(host, port, &ss) != 0) {
    cm_seterr(err, errlen, "invalid listen address %s (want IP:PORT or [IPv6]:PORT)", listen);
    return -EINVAL;
  }
  int rc = open_socket(u, ss.ss_family);
  if (rc == 0) rc = uv_udp_bind(&u->sock, (const struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_udp_recv_start(&u->sock, alloc_cb, recv_cb);
  if (rc != 0) {
    cm_seterr(err, errlen, "bind %s: %s", listen, uv_strerror(rc));
    return rc;
  }
  const rc_peer_opts *o = rc_peer_opts_of(u->p);
  if (o->on_listening) {
    struct sockaddr_storage b;
    int len = sizeof b;
    char addr[96];
    uv_udp_getsockname(&u->sock, (struct sockaddr *)&b, &len);
    rc_addr_text(&b, addr, sizeof addr);
    o->on_listening(o->ud, addr);
  }
  return 0;
}

rc_udp *rc_udp_start(rc_peer *p, char *err, size_t errlen) {
  rc_udp *u = calloc(1, sizeof *u);
  if (!u) {
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  const rc_peer_opts *o = rc_peer_opts_of(p);
  u->p = p;
  u->st = rc_peer_stats_of(p);
  u->listen = o->mode == RC_PEER_UDP_LISTEN;
  u->max_inflight = o->udp_queue ? o->udp_queue : DEFAULT_QUEUE;
  u->ws = rc_peer_join(p, &g_ws_cbs, u, err, errlen);
  if (!u->ws) {
    free(u);
    return NULL;
  }
  int rc = u->listen ? start_listen(u, err, errlen) : start_dial(u, err, errlen);
  if (rc == 0) return u;
  /* Undone without a report: the join is dropped, and a socket that was
   * opened frees u once it is closed (a failed start leaves no lookup
   * pending). */
  rc_ws_abort(u->ws);
  if (u->sock_open)
    uv_close((uv_handle_t *)&u->sock, free_when_closed);
  else
    free(u);
  return NULL;
}
