/*
 * store_redis.c — the fleet's store: sessions in a Redis that every
 * controller shares (hiredis on the controller's loop through its libuv
 * adapter; nothing here blocks the loop).  The decisions are the Lua
 * scripts of redis_lua.h; this file is their glue: connecting (AUTH,
 * SELECT, loading the scripts, learning the registry id), one call per
 * operation, relay events batched into one script call every flush_ms,
 * a heartbeat that announces this controller's relay links and reads the
 * fleet's (placement and liveness), the reaper under a lease, and kicks
 * over pub/sub for relays this controller does not link.
 *
 * Failure: a command unanswered for timeout_ms drops the connection;
 * while Redis cannot be reached every call fails at once with CTL_REG_EIO
 * (the service answers 503) and the connection is retried with backoff
 * (100 ms doubling to 5 s, jittered).  Open sessions are the relays'
 * business and keep flowing.  Relay events wait in the bounded batch.
 *
 * Secrets: the password lives in secret memory; tokens never reach Redis
 * (only their SHA-256).  hiredis 0.14 keeps its own copy of what it sends
 * in buffers it frees unwiped (the AUTH command): not covered, as said in
 * docs/DESIGN.md.
 */
#include "controller-stub/redis_lua.h"
#include "controller-stub/store.h"

#include <errno.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_PREFIX       "relay:"
#define DEFAULT_TIMEOUT_MS   2000
#define DEFAULT_FLUSH_MS     250
#define DEFAULT_HEARTBEAT_MS 1000
#define DEFAULT_LEASE_MS     5000
#define DEFAULT_MAX_BATCH    10000
#define TICK_MS              50
#define RETRY_BASE_MS        100
#define RETRY_MAX_MS         5000
#define INFLIGHT_MAX         16384 /* commands awaiting answers; past it calls fail (503) */
#define FLUSH_CHUNK          256   /* sessions per events script call */
#define REAP_MAX             512   /* sessions per reap */
#define HOLD_FACTOR          4     /* a link claim outlives heartbeats this many times */
#define MAX_VIEW             1024
#define MAX_MINE             1024
#define REFUSAL_LOG_MS       10000 /* "calls refused" is logged at most this often */
#define REGISTRY_ID_BYTES    12
#define CTL_REGISTRY_ID_MAX  64 /* what relays accept (TUN_REGISTRY_ID_MAX) */

enum { S_CREATE, S_VALIDATE, S_GET, S_DELETE, S_LIST, S_EVENTS, S_HEARTBEAT, S_REAP, S_COUNT };

static const char *const g_lua[S_COUNT] = {LUA_CREATE, LUA_VALIDATE, LUA_GET,       LUA_DELETE,
                                           LUA_LIST,   LUA_EVENTS,   LUA_HEARTBEAT, LUA_REAP};

typedef struct rstore rstore;

/* One connection: `sub` is the subscriber (kicks), the other carries
 * every command.  Replies come in order, so the send times of commands in
 * flight are a ring whose head is the oldest. */
typedef struct rconn {
  rstore *r;
  bool sub;
  redisAsyncContext *ac;
  bool ready; /* set up: AUTH, SELECT, scripts, id (or SUBSCRIBE) done */
  uint64_t since_ms;
  uint32_t attempt;
  uv_timer_t retry;
  uv_getaddrinfo_t gai;
  bool resolving, closed;
  bool draining;  /* closing: hiredis sends what is queued, then disconnects */
  uint64_t *sent; /* [INFLIGHT_MAX] */
  size_t head, len;
} rconn;

typedef struct mine_ent {
  char node[CTL_REG_NODE_MAX + 1];
  char url[CTL_REG_URL_MAX + 1];
  char region[CTL_REGION_LABEL_MAX + 1];
} mine_ent;

struct rstore {
  ctl_store base; /* first */
  uv_loop_t *loop;
  ctl_redis_config rc;
  ctl_registry_config cfg;
  char *password; /* secret memory */
  char prefix[64], name[96], me[96 + 2 * REGISTRY_ID_BYTES + 2];
  char channel[80];
  rconn cmd, sub;
  char sha[S_COUNT][41];
  char registry[CTL_REGISTRY_ID_MAX + 1];
  bool ever_ready;
  uv_timer_t tick;
  uint64_t next_flush, next_beat;
  bool beat_now;
  ctl_batch batch;
  uint64_t dropped_events;
  ctl_relay_view *view;
  size_t nview;
  mine_ent *mine;
  size_t nmine;
  uint64_t refused, refused_logged_ms;
  int handles;
  bool closing;
  void (*done)(void *);
  void *done_ud;
};

static const char *const log_comp = "store";

static void conn_start(rconn *c);
static void conn_drop(rconn *c, const char *why);
static void flush_events(rstore *r);

/* ---- small helpers ------------------------------------------------------------------ */

static rstore *rs(ctl_store *st) { return (rstore *)st; }

static void hex_digest(const char *token, char out[65]) {
  uint8_t h[32];
  cm_sha256(token ? token : "", token ? strlen(token) : 0, h);
  cm_hex(h, 32, out);
  explicit_bzero(h, sizeof h);
}

static long long rint_at(const redisReply *r, size_t i) {
  if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements) return 0;
  const redisReply *e = r->element[i];
  if (e->type == REDIS_REPLY_INTEGER) return e->integer;
  if (e->type == REDIS_REPLY_STRING) return strtoll(e->str, NULL, 10);
  return 0;
}

static void rstr_at(const redisReply *r, size_t i, char *out, size_t outlen) {
  out[0] = '\0';
  if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements) return;
  const redisReply *e = r->element[i];
  if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)
    snprintf(out, outlen, "%.*s", (int)e->len, e->str);
}

/* A status array of the scripts (LUA_COMMON's status()). */
#define STATUS_FIELDS 12
static bool status_from(const redisReply *a, ctl_reg_status *st) {
  if (!a || a->type != REDIS_REPLY_ARRAY || a->elements != STATUS_FIELDS) return false;
  memset(st, 0, sizeof *st);
  char s1[CTL_REG_NODE_MAX + 1], s2[CTL_REG_NODE_MAX + 1];
  rstr_at(a, 0, st->id, sizeof st->id);
  st->created_at = rint_at(a, 1);
  st->expires_at = rint_at(a, 2);
  st->last_activity = rint_at(a, 3);
  st->peer_wait_s = (uint32_t)rint_at(a, 4);
  rstr_at(a, 5, st->relay_node, sizeof st->relay_node);
  rstr_at(a, 6, st->public_url, sizeof st->public_url);
  rstr_at(a, 7, s1, sizeof s1);
  rstr_at(a, 8, s2, sizeof s2);
  st->bytes_in = (uint64_t)rint_at(a, 9);
  st->bytes_out = (uint64_t)rint_at(a, 10);
  rstr_at(a, 11, st->target, sizeof st->target);
  st->initiator_connected = s1[0] != '\0';
  st->responder_connected = s2[0] != '\0';
  st->state = st->initiator_connected && st->responder_connected   ? CTL_REG_OPEN
              : st->initiator_connected || st->responder_connected ? CTL_REG_HALF_OPEN
                                                                   : CTL_REG_PENDING;
  return true;
}

/* ---- commands ---------------------------------------------------------------------- */

static bool usable(const rstore *r) { return r->cmd.ac && r->cmd.ready && !r->closing; }

/* Calls fail at once while Redis is out of reach; say so now and then. */
static void refused(rstore *r) {
  r->refused++;
  uint64_t now = cm_now_mono_ms();
  if (now - r->refused_logged_ms < REFUSAL_LOG_MS) return;
  r->refused_logged_ms = now;
  cm_log(CM_LOG_WARN, log_comp, "redis unreachable: calls refused with 503",
         CM_I("refused", r->refused), CM_S("redis", r->rc.url.host), CM_I("port", r->rc.url.port));
}

static void conn_replied(rconn *c) {
  if (c->len == 0) return;
  c->head = (c->head + 1) % INFLIGHT_MAX;
  c->len--;
}

/* Sends argv on c; 0, or -1 when c is not up or too much is in flight
 * (cb is not called then). */
static int send_argv(rconn *c, redisCallbackFn *cb, void *priv, int argc, const char **argv,
                     const size_t *lens) {
  if (!c->ac || c->len == INFLIGHT_MAX) return -1;
  if (redisAsyncCommandArgv(c->ac, cb, priv, argc, argv, lens) != REDIS_OK) return -1;
  c->sent[(c->head + c->len) % INFLIGHT_MAX] = cm_now_mono_ms();
  c->len++;
  return 0;
}

/* An argument list under construction (a script call). */
typedef struct args {
  const char **v;
  size_t *len;
  char (*num)[24]; /* storage for numbers */
  size_t n, cap, nnum;
  bool cut; /* an argument did not fit: the call is not sent */
} args;

static int args_init(args *a, size_t cap) {
  a->v = calloc(cap, sizeof *a->v);
  a->len = calloc(cap, sizeof *a->len);
  a->num = calloc(cap, sizeof *a->num);
  a->n = a->nnum = 0;
  a->cut = false;
  a->cap = cap;
  return a->v && a->len && a->num ? 0 : -ENOMEM;
}

static void args_free(args *a) {
  free(a->v);
  free(a->len);
  free(a->num);
}

static void arg_s(args *a, const char *s) {
  if (a->n == a->cap) {
    a->cut = true;
    return;
  }
  a->v[a->n] = s;
  a->len[a->n++] = strlen(s);
}

static void arg_i(args *a, long long x) {
  if (a->n == a->cap || a->nnum == a->cap) {
    a->cut = true;
    return;
  }
  snprintf(a->num[a->nnum], sizeof a->num[0], "%lld", x);
  arg_s(a, a->num[a->nnum++]);
}

static void arg_u(args *a, uint64_t x) {
  if (a->n == a->cap || a->nnum == a->cap) {
    a->cut = true;
    return;
  }
  snprintf(a->num[a->nnum], sizeof a->num[0], "%llu", (unsigned long long)x);
  arg_s(a, a->num[a->nnum++]);
}

/* EVALSHA <script> 0 <prefix> ... : the head of every script call. */
static void args_script(args *a, rstore *r, int script) {
  arg_s(a, "EVALSHA");
  arg_s(a, r->sha[script]);
  arg_s(a, "0");
  arg_s(a, r->prefix);
}

static int send_args(rstore *r, args *a, redisCallbackFn *cb, void *priv) {
  /* A list filled exactly to its capacity is whole (a full event chunk);
   * only one an argument did not fit in is refused (a bug, never sent). */
  if (a->cut) return -1;
  return send_argv(&r->cmd, cb, priv, (int)a->n, a->v, a->len);
}

/* ---- operations ------------------------------------------------------------------- */

typedef struct rop {
  rstore *r;
  void *cb, *ud;
  ctl_reg_created created; /* create: the tokens (wiped) */
} rop;

static rop *rop_new(rstore *r, void *cb, void *ud) {
  rop *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->r = r;
  o->cb = cb;
  o->ud = ud;
  return o;
}

static void rop_free(rop *o) {
  explicit_bzero(o, sizeof *o);
  free(o);
}

/* The common start of a reply callback: its connection, and the reply
 * when it is a usable one (NULL: the connection went, or Redis refused). */
static const redisReply *op_reply(redisAsyncContext *ac, void *reply, const char *what) {
  rconn *c = ac->data;
  if (c) conn_replied(c);
  const redisReply *rr = reply;
  if (rr && rr->type == REDIS_REPLY_ERROR) {
    cm_log(CM_LOG_WARN, log_comp, "redis refused a command", CM_S("op", what),
           CM_S("error", rr->str));
    /* The script cache was emptied under a live connection (SCRIPT FLUSH,
     * or a restart behind a proxy that kept it): every EVALSHA would fail
     * alike.  A new connection loads the scripts again.  (hiredis frees
     * the context once this callback returns.) */
    if (c && rr->str && strncmp(rr->str, "NOSCRIPT", 8) == 0)
      conn_drop(c, "redis lost our scripts; reconnecting to load them");
    return NULL;
  }
  return rr;
}

static void on_create_reply(redisAsyncContext *ac, void *reply, void *priv) {
  rop *o = priv;
  const redisReply *rr = op_reply(ac, reply, "create");
  ctl_store_created_cb cb = (ctl_store_created_cb)o->cb;
  long long code = rint_at(rr, 0);
  int rc = code == 201   ? 0
           : code == 429 ? CTL_REG_EFULL
           : code == 409 ? CTL_REG_ERANDOM
                         : CTL_REG_EIO;
  if (rc == 0) {
    ctl_reg_status *st = &o->created.status;
    st->created_at = st->last_activity = rint_at(rr, 1);
    st->expires_at = rint_at(rr, 2);
    st->state = CTL_REG_PENDING;
    /* The fleet view counts this placement until the next heartbeat. */
    for (size_t i = 0; i < o->r->nview; i++)
      if (strcmp(o->r->view[i].node, st->relay_node) == 0) o->r->view[i].load++;
  }
  cb(o->ud, rc, &o->created);
  rop_free(o);
}

static void r_create(ctl_store *st, int64_t now, uint32_t ttl_s, uint32_t peer_wait_s,
                     const char *node, const char *url, const char *target, ctl_store_created_cb cb,
                     void *ud) {
  rstore *r = rs(st);
  if (!node) node = "";
  if (!url) url = "";
  if (!target) target = "";
  int rc = ctl_reg_create_args(&r->cfg, now, &ttl_s, &peer_wait_s, node, url);
  if (rc == 0 && !ctl_text_ok(target, CTL_REG_TARGET_MAX)) rc = CTL_REG_EARG;
  rop *o = rc == 0 ? rop_new(r, (void *)cb, ud) : NULL;
  if (!o) {
    ctl_reg_created none;
    memset(&none, 0, sizeof none);
    cb(ud, rc ? rc : -ENOMEM, &none);
    return;
  }
  if (!usable(r)) {
    refused(r);
    cb(ud, CTL_REG_EIO, &o->created);
    rop_free(o);
    return;
  }
  ctl_reg_created *c = &o->created;
  uint8_t hash[2][32];
  rc = cm_random_token(c->status.id) == 0 ? ctl_reg_mint_tokens(c, hash) : CTL_REG_ERANDOM;
  char hi[65], hr[65];
  cm_hex(hash[0], 32, hi);
  cm_hex(hash[1], 32, hr);
  explicit_bzero(hash, sizeof hash);
  c->status.peer_wait_s = peer_wait_s;
  snprintf(c->status.relay_node, sizeof c->status.relay_node, "%s", node);
  snprintf(c->status.public_url, sizeof c->status.public_url, "%s", url);
  snprintf(c->status.target, sizeof c->status.target, "%s", target);
  ctl_reg_created_urls(c, url, c->status.id);
  args a;
  if (rc == 0) rc = args_init(&a, 16);
  if (rc == 0) {
    args_script(&a, r, S_CREATE);
    arg_s(&a, c->status.id);
    arg_s(&a, hi);
    arg_s(&a, hr);
    arg_i(&a, ttl_s);
    arg_i(&a, peer_wait_s);
    arg_s(&a, node);
    arg_s(&a, url);
    arg_i(&a, r->cfg.max_sessions);
    arg_s(&a, target);
    rc = send_args(r, &a, on_create_reply, o) == 0 ? 0 : CTL_REG_EIO;
    args_free(&a);
  }
  if (rc != 0) {
    cb(ud, rc, c);
    rop_free(o);
  }
}

static void deny(ctl_reg_decision *d, uint32_t status, const char *reason, const char *msg) {
  d->allow = false;
  d->http_status = status;
  d->reason = reason;
  d->message = msg;
}

static void on_validate_reply(redisAsyncContext *ac, void *reply, void *priv) {
  rop *o = priv;
  const redisReply *rr = op_reply(ac, reply, "validate");
  ctl_reg_decision d;
  memset(&d, 0, sizeof d);
  d.max_message_bytes = o->r->cfg.max_message_bytes;
  char word[32];
  switch (rr ? rint_at(rr, 0) : 0) {
  case 200:
    d.allow = true;
    d.slot = (int)rint_at(rr, 1);
    d.http_status = 200;
    d.reason = d.message = "";
    d.expires_at = rint_at(rr, 2);
    d.peer_wait_s = (uint32_t)rint_at(rr, 3);
    rstr_at(rr, 5, d.target, sizeof d.target);
    rstr_at(rr, 4, word, sizeof word);
    if (word[0])
      cm_log(CM_LOG_INFO, log_comp, "session reassigned", CM_S("from", word),
             CM_S("to", "the asking relay"));
    break;
  case 404: deny(&d, 404, "unknown_session", "no such session"); break;
  case 401:
    rstr_at(rr, 1, word, sizeof word);
    if (strcmp(word, "role_mismatch") == 0)
      deny(&d, 401, "role_mismatch", "token is for the other slot");
    else
      deny(&d, 401, "invalid_token", "token does not open a slot");
    break;
  case 409: deny(&d, 409, "slot_taken", "slot already connected"); break;
  case 403:
    deny(&d, 403, "target_session",
         "this session's responder is the relay's own connection to its target");
    break;
  case 421: deny(&d, 421, "wrong_relay", "session is served by another relay"); break;
  default: deny(&d, 503, "controller_error", "the registry could not be reached"); break;
  }
  ((ctl_store_decided_cb)o->cb)(o->ud, d.http_status == 503 ? CTL_REG_EIO : 0, &d);
  rop_free(o);
}

static void r_validate(ctl_store *st, int64_t now, const char *id, const char *token, int role,
                       const char *node, ctl_store_decided_cb cb, void *ud) {
  CM_UNUSED(now); /* Redis's clock decides */
  rstore *r = rs(st);
  ctl_reg_decision d;
  memset(&d, 0, sizeof d);
  rop *o = usable(r) ? rop_new(r, (void *)cb, ud) : NULL;
  if (!o) {
    refused(r);
    deny(&d, 503, "controller_error", "the registry could not be reached");
    cb(ud, CTL_REG_EIO, &d);
    return;
  }
  /* Events for this session still in the batch go first (same
   * connection, so Redis applies them first): a peer that left and
   * rejoins is not refused on its own stale claim. */
  if (id && ctl_batch_has(&r->batch, id)) flush_events(r);
  char h[65];
  hex_digest(token, h);
  args a;
  int rc = args_init(&a, 12);
  if (rc == 0) {
    args_script(&a, r, S_VALIDATE);
    arg_s(&a, id ? id : "");
    arg_s(&a, h);
    arg_i(&a, role);
    arg_s(&a, node ? node : "");
    rc = send_args(r, &a, on_validate_reply, o);
    args_free(&a);
  }
  explicit_bzero(h, sizeof h);
  if (rc != 0) {
    rop_free(o);
    deny(&d, 503, "controller_error", "the registry could not be reached");
    cb(ud, CTL_REG_EIO, &d);
  }
}

/* get and delete: {1, status} | {0} */
static void on_status_reply(redisAsyncContext *ac, void *reply, void *priv) {
  rop *o = priv;
  const redisReply *rr = op_reply(ac, reply, "get/delete");
  ctl_reg_status st;
  /* Only the script's own {0} says "no such session": any other shape is
   * the store failing (503), not a NOT_FOUND the relay would take as final. */
  bool shaped = rr && rr->type == REDIS_REPLY_ARRAY && rr->elements >= 1 &&
                rr->element[0]->type == REDIS_REPLY_INTEGER;
  int rc = !shaped ? CTL_REG_EIO : rint_at(rr, 0) == 0 ? -ENOENT : 0;
  if (rc == 0 && (rr->elements < 2 || !status_from(rr->element[1], &st))) rc = CTL_REG_EIO;
  ((ctl_store_status_cb)o->cb)(o->ud, rc, rc == 0 ? &st : NULL);
  rop_free(o);
}

static bool id_shape(const char *id) {
  if (!id || strlen(id) != CM_TOKEN_LEN) return false;
  for (const char *p = id; *p; p++)
    if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *p))
      return false;
  return true;
}

static void by_id(rstore *r, int script, const char *id, ctl_store_status_cb cb, void *ud) {
  if (!id_shape(id)) { /* not an id we could have made */
    cb(ud, -ENOENT, NULL);
    return;
  }
  rop *o = usable(r) ? rop_new(r, (void *)cb, ud) : NULL;
  if (!o) {
    refused(r);
    cb(ud, CTL_REG_EIO, NULL);
    return;
  }
  args a;
  int rc = args_init(&a, 8);
  if (rc == 0) {
    args_script(&a, r, script);
    arg_s(&a, id);
    rc = send_args(r, &a, on_status_reply, o);
    args_free(&a);
  }
  if (rc != 0) {
    rop_free(o);
    cb(ud, CTL_REG_EIO, NULL);
  }
}

static void r_get(ctl_store *st, int64_t now, const char *id, ctl_store_status_cb cb, void *ud) {
  CM_UNUSED(now);
  by_id(rs(st), S_GET, id, cb, ud);
}

static void r_del(ctl_store *st, int64_t now, const char *id, ctl_store_status_cb cb, void *ud) {
  CM_UNUSED(now);
  by_id(rs(st), S_DELETE, id, cb, ud);
}

static void on_list_reply(redisAsyncContext *ac, void *reply, void *priv) {
  rop *o = priv;
  const redisReply *rr = op_reply(ac, reply, "list");
  ctl_store_page_cb cb = (ctl_store_page_cb)o->cb;
  size_t n = rr && rr->type == REDIS_REPLY_ARRAY && rr->elements ? rr->elements - 1 : 0;
  ctl_reg_status *items = calloc(n ? n : 1, sizeof *items);
  char next[CTL_REG_PAGE_TOKEN_MAX];
  int rc = rr && rr->type == REDIS_REPLY_ARRAY && rr->elements && items ? 0 : CTL_REG_EIO;
  for (size_t i = 0; rc == 0 && i < n; i++)
    if (!status_from(rr->element[i + 1], &items[i])) rc = CTL_REG_EIO;
  if (rc == 0) rstr_at(rr, 0, next, sizeof next);
  cb(o->ud, rc, items, rc == 0 ? n : 0, rc == 0 ? next : "");
  free(items);
  rop_free(o);
}

/* A page token this store made: "<seq>.<id>" ("" starts at the top). */
static bool page_after(const char *token, unsigned long long *seq) {
  *seq = 0;
  if (!token || !token[0]) return true;
  if (token[0] < '0' || token[0] > '9') return false;
  char *dot;
  errno = 0;
  *seq = strtoull(token, &dot, 10);
  return !errno && *dot == '.' && id_shape(dot + 1);
}

static void r_list_page(ctl_store *st, int64_t now, const char *token, size_t max,
                        ctl_store_page_cb cb, void *ud) {
  CM_UNUSED(now);
  rstore *r = rs(st);
  unsigned long long after;
  if (!page_after(token, &after)) {
    cb(ud, -EINVAL, NULL, 0, "");
    return;
  }
  rop *o = usable(r) ? rop_new(r, (void *)cb, ud) : NULL;
  if (!o) {
    refused(r);
    cb(ud, CTL_REG_EIO, NULL, 0, "");
    return;
  }
  args a;
  int rc = args_init(&a, 8);
  if (rc == 0) {
    args_script(&a, r, S_LIST);
    arg_u(&a, after);
    arg_u(&a, max ? max : 1);
    rc = send_args(r, &a, on_list_reply, o);
    args_free(&a);
  }
  if (rc != 0) {
    rop_free(o);
    cb(ud, CTL_REG_EIO, NULL, 0, "");
  }
}

/* ---- relay events: batched -------------------------------------------------------- */

/* The reply lists {id, relay} for every ATTACH to a session Redis does
 * not hold (deleted or expired): their peers must stop relaying. */
static void on_events_reply(redisAsyncContext *ac, void *reply, void *priv) {
  CM_UNUSED(priv);
  const redisReply *rr = op_reply(ac, reply, "events");
  rconn *c = ac->data;
  /* Closing: the kick could reach no one (the links are going too). */
  if (!c || !rr || rr->type != REDIS_REPLY_ARRAY || c->r->closing) return;
  for (size_t i = 0; i + 1 < rr->elements; i += 2) {
    char id[CM_TOKEN_LEN + 1], node[CTL_REG_NODE_MAX + 1];
    rstr_at(rr, i, id, sizeof id);
    rstr_at(rr, i + 1, node, sizeof node);
    c->r->base.owner.kick(c->r->base.owner.ud, id, node, "session unknown", true);
  }
}

static const char *op_name(uint8_t op) {
  return op == CTL_BATCH_ATTACH ? "A" : op == CTL_BATCH_DETACH ? "D" : "N";
}

/* Writes the batch, FLUSH_CHUNK sessions per script call, pipelined.  Sent
 * is forgotten: a write lost with its connection is healed by the relays
 * (absolute counters; ATTACH re-sent when a pool's link changes). */
static void flush_events(rstore *r) {
  if (r->batch.n == 0 || !usable(r)) return;
  size_t per = 9 + 3 * CTL_REG_EPOCHS;
  args a;
  if (args_init(&a, 4 + FLUSH_CHUNK * per) != 0) return;
  for (size_t at = 0; at < r->batch.n; at += FLUSH_CHUNK) {
    a.n = a.nnum = 0;
    a.cut = false;
    args_script(&a, r, S_EVENTS);
    for (size_t i = at; i < r->batch.n && i < at + FLUSH_CHUNK; i++) {
      const ctl_batch_ent *e = &r->batch.ents[i];
      arg_s(&a, e->id);
      for (int k = 0; k < 2; k++) {
        arg_s(&a, op_name(e->slot[k].op));
        arg_s(&a, e->slot[k].forced ? "1" : "0");
        arg_s(&a, e->slot[k].node);
      }
      arg_i(&a, e->last_activity);
      arg_u(&a, e->ctr.n);
      for (size_t k = 0; k < e->ctr.n; k++) {
        arg_u(&a, e->ctr.ep[k].epoch);
        arg_u(&a, e->ctr.ep[k].in);
        arg_u(&a, e->ctr.ep[k].out);
      }
    }
    if (send_args(r, &a, on_events_reply, NULL) != 0) {
      cm_log(CM_LOG_WARN, log_comp, "relay events not written",
             CM_I("sessions", (long long)(r->batch.n - at)));
      break;
    }
  }
  args_free(&a);
  ctl_batch_clear(&r->batch);
}

static void batch_full(rstore *r) {
  if (r->dropped_events++ % 1000 == 0)
    cm_log(CM_LOG_WARN, log_comp, "event batch full; relay events dropped",
           CM_I("dropped", r->dropped_events));
}

static int r_slot(ctl_store *st, int64_t now, const char *id, int role, bool attach,
                  const char *node) {
  CM_UNUSED(now);
  rstore *r = rs(st);
  int rc = ctl_batch_slot(&r->batch, id, role, attach, node ? node : "");
  if (rc == -ENOSPC) {
    flush_events(r);
    rc = ctl_batch_slot(&r->batch, id, role, attach, node ? node : "");
  }
  if (rc == -ENOSPC) batch_full(r);
  return 0;
}

static void r_stats(ctl_store *st, int64_t now, const char *id, uint64_t epoch, uint64_t in,
                    uint64_t out, int64_t last_activity) {
  CM_UNUSED(now);
  rstore *r = rs(st);
  int rc = ctl_batch_stats(&r->batch, id, epoch, in, out, last_activity);
  if (rc == -ENOSPC) {
    flush_events(r);
    rc = ctl_batch_stats(&r->batch, id, epoch, in, out, last_activity);
  }
  if (rc == -ENOSPC) batch_full(r);
}

/* ---- the fleet: links, heartbeat, placement view ------------------------------------ */

static mine_ent *mine_find(rstore *r, const char *node) {
  for (size_t i = 0; i < r->nmine; i++)
    if (strcmp(r->mine[i].node, node) == 0) return &r->mine[i];
  return NULL;
}

static void r_relay_up(ctl_store *st, const char *node, const char *url, const char *region) {
  rstore *r = rs(st);
  if (!node || !ctl_text_ok(node, CTL_REG_NODE_MAX) || !node[0]) return;
  mine_ent *m = mine_find(r, node);
  if (!m && r->nmine == MAX_MINE) return;
  if (!m) m = &r->mine[r->nmine++];
  snprintf(m->node, sizeof m->node, "%s", node);
  snprintf(m->url, sizeof m->url, "%s", url && ctl_text_ok(url, CTL_REG_URL_MAX) ? url : "");
  snprintf(m->region, sizeof m->region, "%s",
           region && ctl_text_ok(region, CTL_REGION_LABEL_MAX) ? region : "");
  r->beat_now = true; /* the fleet learns of the link now, not in a second */
}

static void r_relay_down(ctl_store *st, const char *node) {
  rstore *r = rs(st);
  mine_ent *m = node ? mine_find(r, node) : NULL;
  if (!m) return;
  *m = r->mine[--r->nmine];
  r->beat_now = true; /* drop our claim at once: peers may move to another relay */
}

static void on_heartbeat_reply(redisAsyncContext *ac, void *reply, void *priv) {
  CM_UNUSED(priv);
  const redisReply *rr = op_reply(ac, reply, "heartbeat");
  rconn *c = ac->data;
  if (!rr || rr->type != REDIS_REPLY_ARRAY || !c) return;
  rstore *r = c->r;
  size_t n = 0;
  for (size_t i = 0; i < rr->elements && n < MAX_VIEW; i++) {
    const redisReply *e = rr->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 4) continue;
    ctl_relay_view *v = &r->view[n++];
    rstr_at(e, 0, v->node, sizeof v->node);
    rstr_at(e, 1, v->url, sizeof v->url);
    rstr_at(e, 2, v->region, sizeof v->region);
    v->load = (uint64_t)rint_at(e, 3);
  }
  r->nview = n;
}

static void heartbeat(rstore *r) {
  if (!usable(r)) return;
  args a;
  if (args_init(&a, 8 + 3 * MAX_MINE) != 0) return;
  args_script(&a, r, S_HEARTBEAT);
  arg_s(&a, r->me);
  arg_u(&a, (uint64_t)r->rc.heartbeat_ms * HOLD_FACTOR);
  arg_u(&a, r->nmine);
  for (size_t i = 0; i < r->nmine; i++) {
    arg_s(&a, r->mine[i].node);
    arg_s(&a, r->mine[i].url);
    arg_s(&a, r->mine[i].region);
  }
  send_args(r, &a, on_heartbeat_reply, NULL);
  args_free(&a);
}

/* Placement looks at the fleet's relays as the last heartbeat saw them
 * (plus what we placed since); before the first, at our own links. */
static size_t r_relays(ctl_store *st, ctl_relay_view *out, size_t max) {
  rstore *r = rs(st);
  size_t n = 0;
  if (r->nview) {
    for (; n < r->nview && n < max; n++)
      out[n] = r->view[n];
    return n;
  }
  for (; n < r->nmine && n < max; n++) {
    memset(&out[n], 0, sizeof out[n]);
    snprintf(out[n].node, sizeof out[n].node, "%s", r->mine[n].node);
    snprintf(out[n].url, sizeof out[n].url, "%s", r->mine[n].url);
    snprintf(out[n].region, sizeof out[n].region, "%s", r->mine[n].region);
  }
  return n;
}

/* ---- kicks -------------------------------------------------------------------------- */

static void on_publish_reply(redisAsyncContext *ac, void *reply, void *priv) {
  CM_UNUSED(priv);
  op_reply(ac, reply, "publish");
}

static void r_publish_kick(ctl_store *st, const char *id, const char *node, const char *reason) {
  rstore *r = rs(st);
  if (!usable(r)) {
    cm_log(CM_LOG_WARN, log_comp, "kick lost: redis unreachable", CM_S("session", id),
           CM_S("relay", node));
    return;
  }
  char msg[CM_TOKEN_LEN + CTL_REG_NODE_MAX + sizeof r->me + 128];
  snprintf(msg, sizeof msg, "%s\n%s\n%s\n%s", r->me, id, node, reason);
  const char *argv[] = {"PUBLISH", r->channel, msg};
  size_t lens[] = {7, strlen(r->channel), strlen(msg)};
  send_argv(&r->cmd, on_publish_reply, NULL, 3, argv, lens);
}

/* A kick another controller published: ours to deliver if we link node. */
static void on_kick_message(rstore *r, const char *msg, size_t len) {
  char buf[1024];
  if (len >= sizeof buf) return;
  memcpy(buf, msg, len);
  buf[len] = '\0';
  char *from = buf, *id = strchr(from, '\n');
  char *node = id ? strchr(++id, '\n') : NULL;
  char *reason = node ? strchr(++node, '\n') : NULL;
  if (!reason) return;
  id[-1] = node[-1] = *reason++ = '\0';
  if (strcmp(from, r->me) == 0 || !id_shape(id)) return;
  r->base.owner.kick(r->base.owner.ud, id, node, reason, false);
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv) {
  CM_UNUSED(priv);
  rconn *c = ac->data;
  const redisReply *rr = reply;
  if (!c || !rr) return;
  if (rr->type == REDIS_REPLY_ERROR) {
    cm_log(CM_LOG_WARN, log_comp, "redis refused the kick subscription", CM_S("error", rr->str));
    conn_drop(c, "subscription refused");
    return;
  }
  if (rr->type != REDIS_REPLY_ARRAY || rr->elements != 3) return;
  char kind[16];
  rstr_at(rr, 0, kind, sizeof kind);
  if (strcmp(kind, "subscribe") == 0) {
    c->ready = true;
    c->attempt = 0;
    cm_log(CM_LOG_INFO, log_comp, "subscribed to kicks", CM_S("channel", c->r->channel));
  } else if (strcmp(kind, "message") == 0 && rr->element[2]->type == REDIS_REPLY_STRING) {
    on_kick_message(c->r, rr->element[2]->str, rr->element[2]->len);
  }
}

/* ---- the reaper -------------------------------------------------------------------------- */

static void on_reap_reply(redisAsyncContext *ac, void *reply, void *priv) {
  CM_UNUSED(priv);
  const redisReply *rr = op_reply(ac, reply, "reap");
  rconn *c = ac->data;
  if (!c || !rr || rint_at(rr, 0) != 1) return; /* another controller holds the lease */
  rstore *r = c->r;
  for (size_t i = 1; i + 1 < rr->elements; i += 2) {
    char id[CM_TOKEN_LEN + 1], node[CTL_REG_NODE_MAX + 1];
    rstr_at(rr, i, id, sizeof id);
    rstr_at(rr, i + 1, node, sizeof node);
    r->base.owner.kick(r->base.owner.ud, id, node, "session expired", true);
  }
}

/* Every controller tries; the lease makes one of them the reaper, and
 * another takes over within lease_ms of its death. */
static void r_tick(ctl_store *st, int64_t now_ms) {
  CM_UNUSED(now_ms);
  rstore *r = rs(st);
  if (!usable(r)) return;
  args a;
  if (args_init(&a, 8) != 0) return;
  args_script(&a, r, S_REAP);
  arg_s(&a, r->me);
  arg_u(&a, r->rc.lease_ms);
  arg_u(&a, REAP_MAX);
  send_args(r, &a, on_reap_reply, NULL);
  args_free(&a);
}

/* ---- connections -------------------------------------------------------------------- */

static uint64_t retry_delay(rconn *c) {
  uint64_t cap = CM_MIN((uint64_t)RETRY_BASE_MS << CM_MIN(c->attempt, 16u), (uint64_t)RETRY_MAX_MS);
  if (c->attempt < 32) c->attempt++;
  return cap / 2 + cm_random_below(cap / 2 + 1);
}

static void on_retry(uv_timer_t *t) { conn_start(t->data); }

/* The connection is gone (c->ac already NULL): say so once, try again. */
static void conn_lost(rconn *c, const char *why) {
  rstore *r = c->r;
  bool was = c->ready;
  c->ready = false;
  c->len = c->head = 0;
  if (r->closing) return;
  if (was || c->attempt == 0)
    cm_log(CM_LOG_WARN, log_comp,
           c->sub ? "redis kick subscription lost" : "redis unreachable; calls fail with 503",
           CM_S("reason", why), CM_S("redis", r->rc.url.host), CM_I("port", r->rc.url.port));
  if (!c->sub && was && r->base.owner.ready) r->base.owner.ready(r->base.owner.ud, false);
  uv_timer_start(&c->retry, on_retry, retry_delay(c), 0);
}

static void conn_drop(rconn *c, const char *why) {
  redisAsyncContext *ac = c->ac;
  if (!ac) return;
  c->ac = NULL; /* hiredis calls back into us as it frees: we are not listening */
  ac->data = NULL;
  redisAsyncFree(ac);
  conn_lost(c, why);
}

static void drain_done(rconn *c);

static void on_disconnect(const redisAsyncContext *ac, int status) {
  CM_UNUSED(status);
  rconn *c = ac->data;
  if (!c || c->ac != ac) return;
  c->ac = NULL;
  if (c->draining) {
    drain_done(c);
    return;
  }
  conn_lost(c, ac->errstr[0] ? ac->errstr : "connection closed");
}

/* Setup replies: any refusal drops the connection (bad password, a db
 * that does not exist, scripting disabled). */
enum { SETUP_AUTH = 100, SETUP_SELECT, SETUP_IDSET, SETUP_ID };

static void registry_known(rstore *r, const char *id) {
  if (r->registry[0] && strcmp(r->registry, id) != 0)
    cm_log(CM_LOG_WARN, log_comp,
           "the registry id changed: this Redis does not hold the sessions it held (data lost?)",
           CM_S("was", r->registry), CM_S("now", id));
  snprintf(r->registry, sizeof r->registry, "%s", id);
  r->cmd.ready = true;
  r->cmd.attempt = 0;
  cm_log(CM_LOG_INFO, log_comp, "redis ready", CM_S("redis", r->rc.url.host),
         CM_I("port", r->rc.url.port), CM_I("db", r->rc.url.db), CM_S("registry", r->registry));
  r->beat_now = true;
  flush_events(r);
  r->ever_ready = true;
  if (r->base.owner.ready) r->base.owner.ready(r->base.owner.ud, true);
}

static void on_setup_reply(redisAsyncContext *ac, void *reply, void *priv) {
  rconn *c = ac->data;
  if (!c) return;
  conn_replied(c);
  rstore *r = c->r;
  const redisReply *rr = reply;
  intptr_t step = (intptr_t)priv;
  if (!rr) return; /* the connection went: on_disconnect says so */
  if (rr->type == REDIS_REPLY_ERROR) {
    /* Redis's own words (WRONGPASS, NOAUTH, ...) never hold the password. */
    cm_log(CM_LOG_ERROR, log_comp,
           step == SETUP_AUTH ? "redis refused the credentials" : "redis refused the setup",
           CM_S("error", rr->str));
    conn_drop(c, "setup refused");
    return;
  }
  if (step >= 0 && step < S_COUNT) {
    snprintf(r->sha[step], sizeof r->sha[step], "%.*s", (int)rr->len, rr->str ? rr->str : "");
  } else if (step == SETUP_ID) {
    char id[CTL_REGISTRY_ID_MAX + 1];
    snprintf(id, sizeof id, "%.*s", (int)rr->len, rr->str ? rr->str : "");
    if (rr->type != REDIS_REPLY_STRING || !id[0]) {
      conn_drop(c, "no registry id");
      return;
    }
    registry_known(r, id);
  }
}

static void send_setup(rconn *c, redisCallbackFn *cb, intptr_t step, int argc, const char **argv) {
  size_t lens[4];
  for (int i = 0; i < argc; i++)
    lens[i] = strlen(argv[i]);
  if (send_argv(c, cb, (void *)step, argc, argv, lens) != 0) conn_drop(c, "cannot send setup");
}

static void auth(rconn *c, redisCallbackFn *cb) {
  rstore *r = c->r;
  if (!r->password) return;
  const char *user[] = {"AUTH", r->rc.url.user, r->password};
  const char *nouser[] = {"AUTH", r->password};
  if (r->rc.url.user[0])
    send_setup(c, cb, SETUP_AUTH, 3, user);
  else
    send_setup(c, cb, SETUP_AUTH, 2, nouser);
}

static void setup_cmd(rconn *c) {
  rstore *r = c->r;
  auth(c, on_setup_reply);
  char db[16];
  snprintf(db, sizeof db, "%d", r->rc.url.db);
  const char *sel[] = {"SELECT", db};
  if (r->rc.url.db && c->ac) send_setup(c, on_setup_reply, SETUP_SELECT, 2, sel);
  for (int i = 0; i < S_COUNT && c->ac; i++) {
    const char *load[] = {"SCRIPT", "LOAD", g_lua[i]};
    send_setup(c, on_setup_reply, i, 3, load);
  }
  /* The registry id: made once by whichever controller comes first. */
  char key[96], fresh[2 * REGISTRY_ID_BYTES + 1];
  uint8_t raw[REGISTRY_ID_BYTES];
  cm_random_bytes(raw, sizeof raw);
  cm_hex(raw, sizeof raw, fresh);
  snprintf(key, sizeof key, "%sid", r->prefix);
  const char *set[] = {"SET", key, fresh, "NX"};
  const char *get[] = {"GET", key};
  if (c->ac) send_setup(c, on_setup_reply, SETUP_IDSET, 4, set);
  if (c->ac) send_setup(c, on_setup_reply, SETUP_ID, 2, get);
}

static void setup_sub(rconn *c) {
  rstore *r = c->r;
  auth(c, on_setup_reply);
  const char *argv[] = {"SUBSCRIBE", r->channel};
  size_t lens[] = {9, strlen(r->channel)};
  /* Not counted in flight: a subscription's callback runs per message. */
  if (c->ac) redisAsyncCommandArgv(c->ac, on_sub_reply, NULL, 2, argv, lens);
}

static void on_connect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  rconn *c = ac->data;
  if (!c || c->ac != ac) return;
  if (status != REDIS_OK) {
    c->ac = NULL; /* hiredis frees it */
    conn_lost(c, ac->errstr[0] ? ac->errstr : "connect failed");
    return;
  }
  redisEnableKeepAlive(&ac->c);
  if (c->sub)
    setup_sub(c);
  else
    setup_cmd(c);
}

static void connect_to(rconn *c, const char *ip) {
  rstore *r = c->r;
  redisAsyncContext *ac = redisAsyncConnect(ip, r->rc.url.port);
  if (!ac || ac->err) {
    const char *why = ac ? ac->errstr : "out of memory";
    char msg[128];
    snprintf(msg, sizeof msg, "%s", why);
    if (ac) redisAsyncFree(ac);
    conn_lost(c, msg);
    return;
  }
  ac->data = c;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    conn_lost(c, "cannot attach to the loop");
    return;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  c->ac = ac;
  c->since_ms = cm_now_mono_ms();
  c->len = c->head = 0;
}

static void handle_gone(rstore *r);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rconn *c = req->data;
  rstore *r = c->r;
  c->resolving = false;
  char ip[64] = "";
  if (status == 0 && res) uv_ip_name(res->ai_addr, ip, sizeof ip);
  uv_freeaddrinfo(res);
  if (r->closing) {
    handle_gone(r);
    return;
  }
  r->handles--;
  if (!ip[0]) {
    conn_lost(c, "cannot resolve the Redis host");
    return;
  }
  connect_to(c, ip);
}

/* Numeric hosts connect at once; names resolve off the loop first
 * (hiredis would resolve them with a blocking getaddrinfo). */
static void conn_start(rconn *c) {
  rstore *r = c->r;
  if (r->closing || c->ac || c->resolving) return;
  struct sockaddr_storage ss;
  if (cm_sockaddr_from(r->rc.url.host, r->rc.url.port, &ss) == 0) {
    connect_to(c, r->rc.url.host);
    return;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  c->gai.data = c;
  if (uv_getaddrinfo(r->loop, &c->gai, on_resolved, r->rc.url.host, NULL, &hints) == 0) {
    c->resolving = true;
    r->handles++;
  } else {
    conn_lost(c, "cannot resolve the Redis host");
  }
}

/* A connection that cannot connect, or leaves a command unanswered, for
 * timeout_ms is given up (a Redis that hangs is as good as down). */
static void check_deadline(rconn *c, uint64_t now) {
  if (!c->ac) return;
  uint32_t t = c->r->rc.timeout_ms;
  if (!c->ready && !c->len && now - c->since_ms > t) {
    conn_drop(c, "connect timed out");
  } else if (c->len && now - c->sent[c->head] > t) {
    conn_drop(c, "a command went unanswered");
  }
}

static void on_tick(uv_timer_t *t) {
  rstore *r = t->data;
  uint64_t now = cm_now_mono_ms();
  check_deadline(&r->cmd, now);
  check_deadline(&r->sub, now);
  if (!usable(r)) return;
  if (now >= r->next_flush) {
    flush_events(r);
    r->next_flush = now + r->rc.flush_ms;
  }
  if (r->beat_now || now >= r->next_beat) {
    r->beat_now = false;
    heartbeat(r);
    r->next_beat = now + r->rc.heartbeat_ms;
  }
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static const char *r_registry_id(const ctl_store *st) { return ((const rstore *)st)->registry; }

static size_t r_count(const ctl_store *st) {
  CM_UNUSED(st);
  return 0; /* the fleet's count lives in Redis; not asked for at open */
}

static void handle_gone(rstore *r) {
  if (--r->handles == 0 && r->done) r->done(r->done_ud);
}

static void on_handle_closed(uv_handle_t *h) { handle_gone(h->data); }
static void on_retry_closed(uv_handle_t *h) { handle_gone(((rconn *)h->data)->r); }

static void conn_close(rconn *c) {
  conn_drop(c, "closing");
  uv_close((uv_handle_t *)&c->retry, on_retry_closed);
  if (c->resolving) uv_cancel((uv_req_t *)&c->gai);
}

/* ---- closing with commands in flight ------------------------------------------------
 * r_close writes the last batch of relay events (a DETACH lost at shutdown
 * would leave its slot held in Redis): hiredis sends what is queued and
 * waits for the answers before it disconnects (redisAsyncDisconnect).  A
 * Redis that does not answer within the store timeout is cut off. */
static void drain_done(rconn *c) {
  c->draining = false;
  uv_timer_stop(&c->retry);
  uv_close((uv_handle_t *)&c->retry, on_retry_closed);
}

static void on_drain_timeout(uv_timer_t *t) {
  rconn *c = t->data;
  c->draining = false;
  conn_drop(c, "closing: redis did not answer in time");
  uv_close((uv_handle_t *)&c->retry, on_retry_closed);
}

static void conn_close_draining(rconn *c) {
  if (!c->ac || !c->ready || c->len == 0) {
    conn_close(c);
    return;
  }
  c->draining = true;
  redisAsyncDisconnect(c->ac);
  uv_timer_start(&c->retry, on_drain_timeout, c->r->rc.timeout_ms, 0);
}

static void r_close(ctl_store *st, void (*done)(void *ud), void *ud) {
  rstore *r = rs(st);
  if (r->closing) return;
  flush_events(r); /* what the relays told us, before we go */
  r->closing = true;
  r->done = done;
  r->done_ud = ud;
  /* The lease is left to expire: another controller takes over then. */
  conn_close_draining(&r->cmd);
  conn_close(&r->sub);
  uv_close((uv_handle_t *)&r->tick, on_handle_closed);
}

static void r_free(ctl_store *st) {
  rstore *r = rs(st);
  if (!r) return;
  cm_secret_free(r->password); /* wiped as it is freed */
  ctl_batch_free(&r->batch);
  free(r->cmd.sent);
  free(r->sub.sent);
  free(r->view);
  free(r->mine);
  free(r);
}

static const ctl_store_ops g_ops = {
    .create = r_create,
    .validate = r_validate,
    .get = r_get,
    .list_page = r_list_page,
    .del = r_del,
    .slot = r_slot,
    .stats = r_stats,
    .relay_up = r_relay_up,
    .relay_down = r_relay_down,
    .relays = r_relays,
    .publish_kick = r_publish_kick,
    .tick = r_tick,
    .registry_id = r_registry_id,
    .count = r_count,
    .close = r_close,
    .free = r_free,
};

static void conn_init(rstore *r, rconn *c, bool sub) {
  c->r = r;
  c->sub = sub;
  uv_timer_init(r->loop, &c->retry);
  c->retry.data = c;
  r->handles++;
}

static int config(rstore *r, const ctl_redis_config *rc, char *err, size_t errlen) {
  r->rc = *rc;
  if (!r->rc.timeout_ms) r->rc.timeout_ms = DEFAULT_TIMEOUT_MS;
  if (!r->rc.flush_ms) r->rc.flush_ms = DEFAULT_FLUSH_MS;
  if (!r->rc.heartbeat_ms) r->rc.heartbeat_ms = DEFAULT_HEARTBEAT_MS;
  if (!r->rc.lease_ms) r->rc.lease_ms = DEFAULT_LEASE_MS;
  if (!r->rc.max_batch) r->rc.max_batch = DEFAULT_MAX_BATCH;
  const char *prefix = rc->prefix ? rc->prefix : DEFAULT_PREFIX;
  if (strlen(prefix) >= 48 || !ctl_text_ok(prefix, 47) || strpbrk(prefix, " \n")) {
    snprintf(err, errlen, "store: the key prefix must be at most 47 printable characters");
    return -EINVAL;
  }
  snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
  snprintf(r->channel, sizeof r->channel, "%skick", r->prefix);
  snprintf(r->name, sizeof r->name, "%s", rc->name && rc->name[0] ? rc->name : "controller");
  /* A name plus a random part: two controllers given one name (or one
   * restarted before its lease ran out) are still told apart. */
  uint8_t raw[REGISTRY_ID_BYTES];
  char hex[2 * REGISTRY_ID_BYTES + 1];
  cm_random_bytes(raw, sizeof raw);
  cm_hex(raw, sizeof raw, hex);
  snprintf(r->me, sizeof r->me, "%s#%s", r->name, hex);
  if (rc->password && rc->password[0]) {
    size_t n = strlen(rc->password);
    r->password = cm_secret_alloc(n + 1);
    if (!r->password) return -ENOMEM;
    memcpy(r->password, rc->password, n + 1);
  }
  r->rc.password = NULL;
  return 0;
}

ctl_store *ctl_store_redis_new(uv_loop_t *loop, const ctl_redis_config *rc,
                               const ctl_registry_config *cfg, const ctl_store_owner *owner,
                               char *err, size_t errlen) {
  rstore *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->loop = loop;
  r->base.ops = &g_ops;
  r->base.owner = *owner;
  int rc2 = config(r, rc, err, errlen);
  if (rc2 == 0) rc2 = ctl_registry_config_resolve(cfg, &r->cfg, err, errlen);
  r->cmd.sent = calloc(INFLIGHT_MAX, sizeof *r->cmd.sent);
  r->sub.sent = calloc(INFLIGHT_MAX, sizeof *r->sub.sent);
  r->view = calloc(MAX_VIEW, sizeof *r->view);
  r->mine = calloc(MAX_MINE, sizeof *r->mine);
  if (rc2 == 0 && (!r->cmd.sent || !r->sub.sent || !r->view || !r->mine ||
                   ctl_batch_init(&r->batch, r->rc.max_batch) != 0)) {
    snprintf(err, errlen, "store: out of memory");
    rc2 = -ENOMEM;
  }
  if (rc2 != 0) {
    r_free(&r->base);
    return NULL;
  }
  conn_init(r, &r->cmd, false);
  conn_init(r, &r->sub, true);
  uv_timer_init(loop, &r->tick);
  r->tick.data = r;
  r->handles++;
  uv_timer_start(&r->tick, on_tick, TICK_MS, TICK_MS);
  cm_log(CM_LOG_INFO, log_comp, "connecting to redis", CM_S("redis", r->rc.url.host),
         CM_I("port", r->rc.url.port), CM_I("db", r->rc.url.db), CM_S("prefix", r->prefix),
         CM_B("auth", r->password != NULL), CM_S("controller", r->me));
  conn_start(&r->cmd);
  conn_start(&r->sub);
  return &r->base;
}
