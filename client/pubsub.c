/*
 * pubsub.c — pubsub-dial (see client.h, "Redis pub/sub"): a peer whose far
 * end is two Redis channels per direction.  Messages from the other peer
 * are PUBLISHed; messages on the down channels go to it.
 *
 * Two Redis connections, on hiredis's async API and a libuv poll handle: one
 * publishes (a subscribed RESP2 connection may not), one subscribes.  They
 * come up and go down together as one *link*: names are resolved off the
 * loop (hiredis would call getaddrinfo on it), both connections AUTH and
 * SELECT, the publisher answers a PING and the subscriber confirms both
 * channels, and then the link is up.  Any failure, a connect that takes
 * longer than redis_timeout, or a publish unanswered that long, takes the
 * whole link down; it is dialled again after a backoff.  The WebSocket
 * does not notice: the session stays joined.
 *
 * Memory: a message from the WebSocket is gathered whole (up to
 * max_message) since PUBLISH needs it whole; publishes awaiting their
 * answer are bounded by `buffer` bytes (past it the WebSocket's reading
 * pauses, so the relay pauses the other peer); a message from Redis is
 * sent at once or dropped, and hiredis reads at most 16 KiB beyond the
 * message it is handing over.  Nothing else queues.
 *
 * One timer ticks every 100 ms for every deadline: the link's backoff,
 * connect and answer deadlines, and the WebSocket's re-join.
 */
#include "client/pubsub.h"
#include "websocket/websocket.h"

#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TICK_MS             100
#define DEFAULT_PREFIX      "relay"
#define DEFAULT_TIMEOUT_MS  5000
#define LINK_BACKOFF_MIN_MS 100
#define LINK_BACKOFF_MAX_MS 10000
#define LINK_STABLE_MS      5000 /* a link up this long resets the backoff */
#define JOIN_BACKOFF_MIN_MS 500
#define JOIN_BACKOFF_MAX_MS 30000
#define JOIN_STABLE_MS      2000
#define PUBLISH_OVERHEAD    64    /* per pending publish: hiredis's callback and framing */
#define KEEP_GATHER_BYTES   65536 /* a larger gathering buffer is freed after use */
#define CHANNEL_MAX         (RC_PATH_MAX + 64)
#define MAX_DB              1000000u
#define SUBSCRIBED_CHANNELS 2

typedef enum { LINK_DOWN = 0, LINK_RESOLVING, LINK_CONNECTING, LINK_UP } link_state;

typedef struct rconn {
  rc_pubsub *ps;
  redisAsyncContext *ac; /* NULL once hiredis let go of it, or we freed it */
  bool subscriber;
  bool ready; /* publisher: PING answered; subscriber: both channels confirmed */
  int confirmed;
} rconn;

struct rc_pubsub {
  rc_peer *p;
  rc_peer_stats *st;
  uv_loop_t *loop;
  rc_redis_url url;
  char *user;
  char *password; /* secret memory */
  char up[CHANNEL_MAX], up_text[CHANNEL_MAX], down[CHANNEL_MAX], down_text[CHANNEL_MAX];
  size_t buffer;
  uint64_t max_message;
  uint32_t timeout_ms;
  bool keep;

  /* The WebSocket. */
  rc_ws *ws;
  bool ws_opened, ws_paused;
  uint64_t opened_at;
  bool heard; /* a message came from the other peer on this join */
  uint64_t join_at;
  uint32_t join_backoff;
  rc_ws_end end;
  bool have_end;
  uint8_t *msg; /* the message being gathered */
  size_t msg_len, msg_cap;
  uint8_t msg_op;

  /* The link to Redis. */
  link_state link;
  rconn pub, sub;
  uv_getaddrinfo_t gai;
  bool resolving;
  uint64_t link_at; /* LINK_DOWN: when to dial; CONNECTING: when it started */
  uint64_t up_since, last_answer;
  uint32_t link_backoff;
  uint64_t inflight;
  size_t inflight_cost;

  uv_timer_t tick;
  bool ending, tick_closing;
  char failure[200];
};

static void link_down(rc_pubsub *ps, const char *why);
static void join(rc_pubsub *ps);
static void maybe_end(rc_pubsub *ps);

/* ---- hiredis on libuv -------------------------------------------------------------------
 *
 * hiredis asks for read and write readiness and is told of it.  Not its
 * own libuv adapter: that one drops a poll error (libuv reports a refused
 * connect as one), so a refused connect would hang until the deadline.
 * Here an error wakes both directions and hiredis reads the socket's own
 * error. */

typedef struct redis_poll {
  uv_poll_t h;
  redisAsyncContext *ac; /* NULL once hiredis cleaned up */
  int events;
} redis_poll;

static void rpoll_cb(uv_poll_t *h, int status, int events) {
  redis_poll *p = h->data;
  if (status < 0) events = UV_READABLE | UV_WRITABLE;
  if (p->ac && (events & UV_READABLE)) redisAsyncHandleRead(p->ac);
  if (p->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->ac); /* p->ac: may be gone now */
}

static void rpoll_set(redis_poll *p, int events) {
  p->events = events;
  if (events)
    uv_poll_start(&p->h, events, rpoll_cb);
  else
    uv_poll_stop(&p->h);
}

static void rpoll_add_read(void *d) { rpoll_set(d, ((redis_poll *)d)->events | UV_READABLE); }
static void rpoll_del_read(void *d) { rpoll_set(d, ((redis_poll *)d)->events & ~UV_READABLE); }
static void rpoll_add_write(void *d) { rpoll_set(d, ((redis_poll *)d)->events | UV_WRITABLE); }
static void rpoll_del_write(void *d) { rpoll_set(d, ((redis_poll *)d)->events & ~UV_WRITABLE); }
static void rpoll_freed(uv_handle_t *h) { free(h->data); }

static void rpoll_cleanup(void *d) {
  redis_poll *p = d;
  p->ac = NULL;
  uv_close((uv_handle_t *)&p->h, rpoll_freed);
}

static int rpoll_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  redis_poll *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  int rc = uv_poll_init(loop, &p->h, ac->c.fd);
  if (rc != 0) {
    free(p);
    return rc;
  }
  p->h.data = p;
  p->ac = ac;
  ac->ev.data = p;
  ac->ev.addRead = rpoll_add_read;
  ac->ev.delRead = rpoll_del_read;
  ac->ev.addWrite = rpoll_add_write;
  ac->ev.delWrite = rpoll_del_write;
  ac->ev.cleanup = rpoll_cleanup;
  return 0;
}

/* ---- the URL and channel names (sans-I/O) ---------------------------------------------- */

static bool host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

/* digits only, at most max; false otherwise (also for "" and overflow). */
static bool parse_uint(const char *s, size_t n, uint32_t max, uint32_t *out) {
  if (n == 0 || n > 10) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > max) return false;
  *out = (uint32_t)v;
  return true;
}

static int parse_authority(const char *a, size_t n, rc_redis_url *u, char *err, size_t errlen) {
  const char *host = a, *port = NULL;
  size_t hostlen = n, portlen = 0;
  if (n && a[0] == '[') {
    const char *close = memchr(a, ']', n);
    if (!close) goto bad;
    host = a + 1;
    hostlen = (size_t)(close - host);
    size_t rest = n - (size_t)(close + 1 - a);
    if (rest) {
      if (close[1] != ':') goto bad;
      port = close + 2;
      portlen = rest - 1;
    }
    for (size_t i = 0; i < hostlen; i++)
      if (!(host_char(host[i]) || host[i] == ':' || host[i] == '%')) goto bad;
    struct sockaddr_in6 sa6;
    char tmp[RC_HOST_MAX];
    if (hostlen == 0 || hostlen >= sizeof tmp) goto bad;
    memcpy(tmp, host, hostlen);
    tmp[hostlen] = 0;
    if (uv_ip6_addr(tmp, 0, &sa6) != 0) goto bad;
  } else {
    const char *colon = memchr(a, ':', n);
    if (colon) {
      hostlen = (size_t)(colon - a);
      port = colon + 1;
      portlen = n - hostlen - 1;
    }
    for (size_t i = 0; i < hostlen; i++)
      if (!host_char(host[i])) goto bad; /* also a second ':' (IPv6 wants brackets) */
  }
  if (hostlen == 0 || hostlen >= sizeof u->host) goto bad;
  memcpy(u->host, host, hostlen);
  u->host[hostlen] = 0;
  u->port = RC_REDIS_DEFAULT_PORT;
  if (port) {
    uint32_t v;
    if (!parse_uint(port, portlen, 65535, &v) || v == 0) {
      cm_seterr(err, errlen, "the Redis URL's port must be 1..65535");
      return -EINVAL;
    }
    u->port = (uint16_t)v;
  }
  return 0;
bad:
  cm_seterr(err, errlen, "the Redis URL's host must be a name, an IPv4 address or [IPv6]");
  return -EINVAL;
}

int rc_redis_url_parse(const char *text, rc_redis_url *u, char *err, size_t errlen) {
  static const char scheme[] = "redis://";
  memset(u, 0, sizeof *u);
  if (!text) {
    cm_seterr(err, errlen, "a Redis URL (redis://HOST:PORT[/DB]) is needed");
    return -EINVAL;
  }
  if (strncasecmp(text, "rediss://", 9) == 0) {
    cm_seterr(err, errlen, "rediss:// (TLS) is not supported: hiredis 0.14 has no TLS");
    return -EINVAL;
  }
  if (strncasecmp(text, scheme, sizeof scheme - 1) != 0) {
    cm_seterr(err, errlen, "the Redis URL must start with redis://");
    return -EINVAL;
  }
  const char *a = text + sizeof scheme - 1;
  size_t alen = strcspn(a, "/?#");
  if (memchr(a, '@', alen)) {
    cm_seterr(err, errlen,
              "the Redis URL must not carry credentials (they would show in ps): use "
              "--redis-password-file or SWSRS_REDIS_PASSWORD");
    return -EINVAL;
  }
  int rc = parse_authority(a, alen, u, err, errlen);
  if (rc != 0) return rc;
  const char *rest = a + alen;
  if (*rest == '/') {
    rest++;
    size_t n = strlen(rest);
    if (n && !parse_uint(rest, n, MAX_DB, &u->db)) {
      cm_seterr(err, errlen, "the Redis URL's path must be a database number (0..%u)", MAX_DB);
      return -EINVAL;
    }
  } else if (*rest) {
    cm_seterr(err, errlen, "the Redis URL must be redis://HOST[:PORT][/DB], without a query");
    return -EINVAL;
  }
  return 0;
}

void rc_pubsub_channel(const char *prefix, const char *session, const char *dir, bool text,
                       char *out, size_t outlen) {
  snprintf(out, outlen, "%s:%s:%s%s", prefix, session, dir, text ? ":text" : "");
}

/* ---- the WebSocket side ---------------------------------------------------------------- */

static rc_pubsub *of_ws(rc_ws *ws) { return rc_ws_get_data(ws); }

static void resume_if_drained(rc_pubsub *ps) {
  if (!ps->ws_paused || ps->inflight_cost > ps->buffer / 4) return;
  ps->ws_paused = false;
  if (ps->ws) rc_ws_resume(ps->ws);
}

static void on_published(redisAsyncContext *ac, void *r, void *priv) {
  rconn *c = ac->data;
  rc_pubsub *ps = c->ps;
  const redisReply *reply = r;
  size_t len = (size_t)(uintptr_t)priv;
  ps->inflight--;
  ps->inflight_cost -= len + PUBLISH_OVERHEAD;
  if (!reply || reply->type != REDIS_REPLY_INTEGER) {
    /* Cut off by the link's loss (NULL), or refused: it may or may not
     * have reached a subscriber, which at-most-once allows. */
    ps->st->dropped_up++;
    if (reply && reply->type == REDIS_REPLY_ERROR)
      cm_log(CM_LOG_WARN, "pubsub", "redis refused a publish", CM_S("error", reply->str));
  } else {
    ps->st->messages_up++;
    ps->st->bytes_up += len;
    if (reply->integer == 0) ps->st->unheard_up++;
    ps->last_answer = cm_now_mono_ms();
  }
  resume_if_drained(ps);
}

static void publish(rc_pubsub *ps, uint8_t opcode, const uint8_t *data, size_t len) {
  if (ps->link != LINK_UP || !ps->pub.ac) {
    ps->st->dropped_up++; /* Redis is down: nothing waits for it */
    return;
  }
  const char *chan = opcode == WS_TEXT ? ps->up_text : ps->up;
  const char *argv[3] = {"PUBLISH", chan, (const char *)data};
  size_t lens[3] = {7, strlen(chan), len};
  if (redisAsyncCommandArgv(ps->pub.ac, on_published, (void *)(uintptr_t)len, 3, argv, lens) !=
      REDIS_OK) {
    ps->st->dropped_up++;
    return;
  }
  if (ps->inflight == 0) ps->last_answer = cm_now_mono_ms(); /* the wait starts now */
  ps->inflight++;
  ps->inflight_cost += len + PUBLISH_OVERHEAD;
  if (ps->inflight_cost > ps->buffer && !ps->ws_paused && ps->ws) {
    ps->ws_paused = true;
    rc_ws_pause(ps->ws); /* the relay then pauses the other peer */
  }
}

static int gather(rc_pubsub *ps, const uint8_t *data, size_t len) {
  if (len > ps->msg_cap - ps->msg_len) {
    size_t want = CM_MAX(ps->msg_cap * 2, ps->msg_len + len);
    want = CM_MIN(want, (size_t)ps->max_message);
    if (want < ps->msg_len + len) return -EMSGSIZE; /* rc_ws refuses such a message first */
    uint8_t *m = realloc(ps->msg, want);
    if (!m) return -ENOMEM;
    ps->msg = m;
    ps->msg_cap = want;
  }
  if (len) memcpy(ps->msg + ps->msg_len, data, len);
  ps->msg_len += len;
  return 0;
}

static void gathered_reset(rc_pubsub *ps) {
  ps->msg_len = 0;
  if (ps->msg_cap > KEEP_GATHER_BYTES) {
    free(ps->msg);
    ps->msg = NULL;
    ps->msg_cap = 0;
  }
}

static void ws_on_message(rc_ws *ws, uint8_t opcode, uint8_t *data, size_t len, bool fin) {
  rc_pubsub *ps = of_ws(ws);
  ps->heard = true;
  if (opcode != WS_CONT) ps->msg_op = opcode;
  if (fin && ps->msg_len == 0) {
    publish(ps, ps->msg_op, data, len); /* in one piece: no gathering */
    return;
  }
  if (gather(ps, data, len) != 0) {
    rc_ws_close(ws, WS_CLOSE_INTERNAL, "out of memory");
    return;
  }
  if (!fin) return;
  publish(ps, ps->msg_op, ps->msg, ps->msg_len);
  gathered_reset(ps);
}

static void ws_on_open(rc_ws *ws) {
  rc_pubsub *ps = of_ws(ws);
  ps->ws_opened = true;
  ps->opened_at = cm_now_mono_ms();
  cm_log(CM_LOG_INFO, "pubsub", "joined the session");
}

static void log_counters(rc_pubsub *ps, const char *msg) {
  const rc_peer_stats *s = ps->st;
  cm_log(CM_LOG_INFO, "pubsub", msg, CM_I("messages_up", s->messages_up),
         CM_I("messages_down", s->messages_down), CM_I("bytes_up", s->bytes_up),
         CM_I("bytes_down", s->bytes_down), CM_I("dropped_up", s->dropped_up),
         CM_I("dropped_down", s->dropped_down), CM_I("dropped_oversize", s->dropped_oversize),
         CM_I("dropped_invalid", s->dropped_invalid), CM_I("unheard_up", s->unheard_up),
         CM_I("redis_connects", s->redis_connects), CM_I("tunnels", s->tunnels));
}

static void ws_on_close(rc_ws *ws, const rc_ws_end *end) {
  rc_pubsub *ps = of_ws(ws);
  uint64_t lived = ps->ws_opened ? cm_now_mono_ms() - ps->opened_at : 0;
  ps->ws = NULL;
  ps->end = *end;
  ps->have_end = true;
  ps->ws_paused = false;
  gathered_reset(ps);
  ps->msg_len = 0;
  cm_log(CM_LOG_INFO, "pubsub", "left the session", CM_I("code", end->code),
         CM_I("http_status", end->http_status), CM_S("reason", end->reason));
  if (ps->ending || !ps->keep || rc_peer_refusal_permanent(end)) {
    ps->ending = true;
    maybe_end(ps);
    return;
  }
  bool worked = ps->heard || lived >= JOIN_STABLE_MS;
  ps->join_backoff = worked             ? 0
                     : ps->join_backoff ? CM_MIN(ps->join_backoff * 2, JOIN_BACKOFF_MAX_MS)
                                        : JOIN_BACKOFF_MIN_MS;
  ps->join_at = cm_now_mono_ms() + ps->join_backoff;
  if (ps->join_backoff)
    cm_log(CM_LOG_INFO, "pubsub", "re-joining after a pause", CM_I("ms", ps->join_backoff));
}

static const rc_ws_cbs g_ws_cbs = {
    .on_open = ws_on_open, .on_message = ws_on_message, .on_close = ws_on_close};

static void join(rc_pubsub *ps) {
  char err[200];
  ps->join_at = 0;
  ps->ws_opened = ps->heard = ps->ws_paused = false;
  ps->ws = rc_peer_join(ps->p, &g_ws_cbs, ps, err, sizeof err);
  if (ps->ws) return;
  snprintf(ps->failure, sizeof ps->failure, "cannot join: %s", err);
  ps->ending = true;
  maybe_end(ps);
}

/* ---- from Redis to the WebSocket ------------------------------------------------------- */

static void deliver_down(rc_pubsub *ps, bool text, uint8_t *data, size_t len) {
  if (len > ps->max_message) {
    ps->st->dropped_oversize++;
    return;
  }
  if (text) {
    ws_utf8 u;
    ws_utf8_init(&u);
    if (!ws_utf8_feed(&u, data, len) || !ws_utf8_complete(&u)) {
      ps->st->dropped_invalid++; /* the relay would close the session 1007 */
      return;
    }
  }
  if (!ps->ws || !rc_ws_is_open(ps->ws) || rc_ws_above_high(ps->ws)) {
    ps->st->dropped_down++; /* a slow or absent peer: at most once, never queued */
    return;
  }
  /* hiredis frees the reply after the callback: masking it in place is fine. */
  if (rc_ws_send_inplace(ps->ws, text ? WS_TEXT : WS_BINARY, data, len, true) < 0) {
    ps->st->dropped_down++;
    return;
  }
  ps->st->messages_down++;
  ps->st->bytes_down += len;
}

static bool reply_is(const redisReply *r, const char *s) {
  return r->type == REDIS_REPLY_STRING && r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

static void link_maybe_up(rc_pubsub *ps) {
  if (ps->link != LINK_CONNECTING || !ps->pub.ready || !ps->sub.ready) return;
  ps->link = LINK_UP;
  ps->up_since = ps->last_answer = cm_now_mono_ms();
  ps->st->redis_connects++;
  cm_log(CM_LOG_INFO, "pubsub", "redis link up", CM_S("host", ps->url.host),
         CM_I("port", ps->url.port), CM_I("redis_connects", ps->st->redis_connects),
         CM_I("dropped_up", ps->st->dropped_up), CM_I("dropped_down", ps->st->dropped_down));
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv) {
  CM_UNUSED(priv);
  rconn *c = ac->data;
  rc_pubsub *ps = c->ps;
  redisReply *reply = r;
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) return;
  redisReply **e = reply->element;
  if (reply_is(e[0], "subscribe")) {
    if (++c->confirmed == SUBSCRIBED_CHANNELS) {
      c->ready = true;
      link_maybe_up(ps);
    }
    return;
  }
  if (!reply_is(e[0], "message") || e[2]->type != REDIS_REPLY_STRING) return;
  bool text = reply_is(e[1], ps->down_text);
  deliver_down(ps, text, (uint8_t *)e[2]->str, e[2]->len);
}

/* ---- the link to Redis ----------------------------------------------------------------- */

/* AUTH and SELECT: an error reply takes the link down, with Redis's own
 * words (they never quote the password). */
static void on_setup_reply(redisAsyncContext *ac, void *r, void *priv) {
  rconn *c = ac->data;
  const redisReply *reply = r;
  if (!reply || c->ps->ending) return;
  if (reply->type == REDIS_REPLY_ERROR) {
    char why[200];
    snprintf(why, sizeof why, "redis refused %s: %.150s", (const char *)priv, reply->str);
    link_down(c->ps, why);
  }
}

static void on_ping(redisAsyncContext *ac, void *r, void *priv) {
  CM_UNUSED(priv);
  rconn *c = ac->data;
  const redisReply *reply = r;
  if (!reply || reply->type == REDIS_REPLY_ERROR || c->ps->ending) return;
  c->ready = true;
  link_maybe_up(c->ps);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  if (status == REDIS_OK) return;
  c->ac = NULL; /* hiredis frees it after this call */
  char why[200];
  snprintf(why, sizeof why, "cannot connect to redis %s:%u: %.120s", c->ps->url.host,
           (unsigned)c->ps->url.port, ac->errstr);
  link_down(c->ps, why);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  bool ours = c->ac == NULL; /* we freed it: the link is already down */
  c->ac = NULL;
  c->ready = false;
  if (ours) return;
  char why[200];
  snprintf(why, sizeof why, "redis connection lost: %.150s",
           status == REDIS_OK ? "closed" : ac->errstr);
  link_down(c->ps, why);
}

static void conn_free(rconn *c) {
  redisAsyncContext *ac = c->ac;
  c->ac = NULL;
  c->ready = false;
  c->confirmed = 0;
  if (ac) redisAsyncFree(ac); /* answers pending get NULL; on_disconnect sees ours */
}

static void send_setup(rc_pubsub *ps, rconn *c) {
  if (ps->password) {
    const char *argv[3] = {"AUTH", ps->user ? ps->user : ps->password, ps->password};
    size_t lens[3] = {4, strlen(argv[1]), strlen(ps->password)};
    int argc = ps->user ? 3 : 2;
    redisAsyncCommandArgv(c->ac, on_setup_reply, (void *)"AUTH", argc, argv, lens);
  }
  if (ps->url.db)
    redisAsyncCommand(c->ac, on_setup_reply, (void *)"SELECT", "SELECT %u", ps->url.db);
  if (c->subscriber)
    redisAsyncCommand(c->ac, on_sub_reply, NULL, "SUBSCRIBE %s %s", ps->down, ps->down_text);
  else
    redisAsyncCommand(c->ac, on_ping, NULL, "PING");
}

static int conn_open(rc_pubsub *ps, rconn *c, const char *ip, char *why, size_t whylen) {
  redisAsyncContext *ac = redisAsyncConnect(ip, ps->url.port);
  if (!ac || ac->err) {
    snprintf(why, whylen, "cannot connect to redis %s:%u: %.120s", ps->url.host,
             (unsigned)ps->url.port, ac ? ac->errstr : "out of memory");
    if (ac) redisAsyncFree(ac);
    return -1;
  }
  c->ac = ac;
  ac->data = c;
  if (rpoll_attach(ac, ps->loop) != 0) {
    snprintf(why, whylen, "cannot watch the redis connection");
    conn_free(c);
    return -1;
  }
  redisEnableKeepAlive(&ac->c);
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  send_setup(ps, c);
  return 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rc_pubsub *ps = req->data;
  ps->resolving = false;
  if (ps->ending || ps->link != LINK_RESOLVING) {
    if (res) uv_freeaddrinfo(res);
    maybe_end(ps);
    return;
  }
  char why[200] = "", ip[64] = "";
  if (status != 0 || !res) {
    snprintf(why, sizeof why, "cannot resolve redis host %s: %s", ps->url.host,
             uv_strerror(status ? status : UV_EAI_NONAME));
  } else {
    uv_ip_name(res->ai_addr, ip, sizeof ip); /* numeric: hiredis resolves nothing then */
  }
  if (res) uv_freeaddrinfo(res);
  ps->link = LINK_CONNECTING;
  if (!why[0] && conn_open(ps, &ps->pub, ip, why, sizeof why) == 0)
    conn_open(ps, &ps->sub, ip, why, sizeof why);
  if (why[0]) link_down(ps, why);
}

static void link_dial(rc_pubsub *ps) {
  char port[8];
  snprintf(port, sizeof port, "%u", (unsigned)ps->url.port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  ps->gai.data = ps;
  ps->link = LINK_RESOLVING;
  ps->link_at = cm_now_mono_ms();
  int rc = uv_getaddrinfo(ps->loop, &ps->gai, on_resolved, ps->url.host, port, &hints);
  if (rc == 0) {
    ps->resolving = true;
    return;
  }
  char why[200];
  snprintf(why, sizeof why, "cannot resolve redis host %s: %s", ps->url.host, uv_strerror(rc));
  link_down(ps, why);
}

/* Both connections go; what they still owed is counted as dropped.  The
 * next dial waits the backoff, with jitter (half to all of it). */
static void link_down(rc_pubsub *ps, const char *why) {
  if (ps->link == LINK_DOWN) return;
  bool was_up = ps->link == LINK_UP;
  uint64_t now = cm_now_mono_ms();
  ps->link = LINK_DOWN;
  if (ps->resolving) uv_cancel((uv_req_t *)&ps->gai);
  conn_free(&ps->pub);
  conn_free(&ps->sub);
  if (ps->ending) return;
  if (was_up && now - ps->up_since >= LINK_STABLE_MS) ps->link_backoff = 0;
  ps->link_backoff =
      ps->link_backoff ? CM_MIN(ps->link_backoff * 2, LINK_BACKOFF_MAX_MS) : LINK_BACKOFF_MIN_MS;
  uint32_t wait = ps->link_backoff / 2 + (uint32_t)cm_random_below(ps->link_backoff / 2 + 1);
  ps->link_at = now + wait;
  cm_log(was_up ? CM_LOG_WARN : CM_LOG_INFO, "pubsub",
         was_up ? "redis link down; the session stays joined" : "redis link failed",
         CM_S("error", why), CM_I("retry_ms", wait), CM_I("dropped_up", ps->st->dropped_up));
}

/* ---- the one timer --------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t) {
  rc_pubsub *ps = t->data;
  uint64_t now = cm_now_mono_ms();
  if (ps->ending) return;
  switch (ps->link) {
  case LINK_DOWN:
    /* A lookup that outlived its timeout cannot be cancelled once a
     * thread runs it, and its request is ours to reuse only when it is
     * back (on_resolved sees the link moved on and drops the answer). */
    if (now >= ps->link_at && !ps->resolving) link_dial(ps);
    break;
  case LINK_RESOLVING:
  case LINK_CONNECTING:
    if (now - ps->link_at >= ps->timeout_ms) link_down(ps, "timed out connecting to redis");
    break;
  case LINK_UP:
    if (ps->inflight && now - ps->last_answer >= ps->timeout_ms)
      link_down(ps, "redis did not answer in time");
    break;
  }
  if (!ps->ws && ps->join_at && now >= ps->join_at) join(ps);
}

/* ---- life cycle ------------------------------------------------------------------------ */

static void report(rc_pubsub *ps) {
  rc_peer_result r;
  rc_peer_result_end(&r, ps->have_end ? &ps->end : NULL, ps->failure);
  log_counters(ps, "pubsub counters");
  r.stats = *ps->st;
  rc_peer *p = ps->p;
  if (ps->password) cm_secret_free(ps->password);
  free(ps->user);
  free(ps->msg);
  free(ps);
  rc_peer_pump_done(p, &r);
}

static void on_tick_closed(uv_handle_t *h) { report(h->data); }

/* Ends once the WebSocket is gone and no lookup is pending. */
static void maybe_end(rc_pubsub *ps) {
  if (!ps->ending || ps->ws || ps->tick_closing) return;
  ps->link = LINK_DOWN;
  conn_free(&ps->pub);
  conn_free(&ps->sub);
  if (ps->resolving) {
    uv_cancel((uv_req_t *)&ps->gai);
    return; /* on_resolved comes back here */
  }
  /* Reported from the close callback, on a later turn of the loop: a
   * hiredis callback that got here unwinds first. */
  ps->tick_closing = true;
  uv_close((uv_handle_t *)&ps->tick, on_tick_closed);
}

void rc_pubsub_stop(rc_pubsub *ps) {
  if (ps->ending) return;
  ps->ending = true;
  if (ps->ws && ps->ws_opened) {
    rc_ws_close(ps->ws, WS_CLOSE_NORMAL, NULL); /* ws_on_close ends it */
    return;
  }
  if (ps->ws) {
    rc_ws_abort(ps->ws); /* still joining: nothing to say goodbye on */
    ps->ws = NULL;
  }
  maybe_end(ps);
}

static char *dup_secret(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = cm_secret_alloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static int configure(rc_pubsub *ps, const rc_peer_opts *o, char *err, size_t errlen) {
  if (rc_redis_url_parse(o->redis, &ps->url, err, errlen) != 0) return -EINVAL;
  if (!o->session || !*o->session) {
    cm_seterr(err, errlen, "a session id is needed for the channel names");
    return -EINVAL;
  }
  const char *prefix = o->prefix && *o->prefix ? o->prefix : DEFAULT_PREFIX;
  rc_pubsub_channel(prefix, o->session, "up", false, ps->up, sizeof ps->up);
  rc_pubsub_channel(prefix, o->session, "up", true, ps->up_text, sizeof ps->up_text);
  rc_pubsub_channel(prefix, o->session, "down", false, ps->down, sizeof ps->down);
  rc_pubsub_channel(prefix, o->session, "down", true, ps->down_text, sizeof ps->down_text);
  if (strpbrk(prefix, " \t\r\n")) {
    cm_seterr(err, errlen, "the channel prefix must not contain white space");
    return -EINVAL;
  }
  if (o->redis_user && !o->redis_password) {
    cm_seterr(err, errlen, "a Redis user needs a password");
    return -EINVAL;
  }
  ps->user = o->redis_user ? strdup(o->redis_user) : NULL;
  ps->password = o->redis_password ? dup_secret(o->redis_password) : NULL;
  ps->buffer = o->buffer;
  ps->max_message = o->ws.max_message ? o->ws.max_message : RC_WS_DEFAULT_MAX_MESSAGE;
  ps->timeout_ms = o->redis_timeout_ms ? o->redis_timeout_ms : DEFAULT_TIMEOUT_MS;
  ps->keep = o->keep;
  return 0;
}

rc_pubsub *rc_pubsub_start(rc_peer *p, char *err, size_t errlen) {
  rc_pubsub *ps = calloc(1, sizeof *ps);
  if (!ps) {
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  ps->p = p;
  ps->st = rc_peer_stats_of(p);
  ps->loop = rc_peer_loop(p);
  ps->pub = (rconn){.ps = ps};
  ps->sub = (rconn){.ps = ps, .subscriber = true};
  if (configure(ps, rc_peer_opts_of(p), err, errlen) != 0) {
    if (ps->password) cm_secret_free(ps->password);
    free(ps->user);
    free(ps);
    return NULL;
  }
  ps->ws = rc_peer_join(p, &g_ws_cbs, ps, err, errlen);
  if (!ps->ws) {
    if (ps->password) cm_secret_free(ps->password);
    free(ps->user);
    free(ps);
    return NULL;
  }
  uv_timer_init(ps->loop, &ps->tick);
  ps->tick.data = ps;
  uv_timer_start(&ps->tick, on_tick, TICK_MS, TICK_MS);
  link_dial(ps);
  return ps;
}
