/*
 * relay_side.c — the relay's end of the controller link (see tunnel.h):
 * accepts controller connections, checks the controller identity, runs an
 * HTTP/2 *client* session on each and issues gRPC calls over them.
 *
 * Calls live in two lists: the relay's (for deadlines, swept by a 50 ms
 * timer while any call is in flight) and their link's (so a link that
 * drops fails its calls at once).  A call keeps its framed request so it
 * can be replayed on another controller after NOT_FOUND, or on another
 * link when a GOAWAY refused it unprocessed.
 *
 * A link is up (controller.proto says why each condition) once the
 * controller's SETTINGS arrived and our Events stream is open — answered,
 * or still standing after EVENTS_SETTLE_MS, since a stock gRPC server may
 * send no headers until it has a command — and until it sends GOAWAY.  An
 * Events stream the controller ends is reopened at once, then with
 * exponential backoff while it keeps ending early.
 */
#include "tunnel/link.h"

#include <errno.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

#include "proto/health.pb-c.h"

#define MAX_TRIED 8
/* A controller that answered UNAVAILABLE (its registry unreachable) gets
 * new calls for this long only when no other link can take them, so a
 * Validate does not cost a round trip to it first each time. */
#define UNAVAILABLE_SHUN_MS   1000
#define DEADLINE_TICK_MS      50
#define EVENTS_SETTLE_MS      250  /* an unanswered Events stream counts as open */
#define EVENTS_STABLE_MS      5000 /* open this long: the next end reopens at once */
#define EVENTS_BACKOFF_MS     100  /* first delay after a quick end; doubles */
#define EVENTS_BACKOFF_MAX_MS 5000
#define PING_BACKOFF_MAX_MS   3600000 /* too_many_pings doubling stops here */
#define MAX_BACKOFFS          16

typedef struct rlink {
  tun_link base; /* first: a tun_link * is an rlink * */
  tun_relay *r;
  cm_list node;
  cm_list calls;
  char controller[TUN_CONTROLLER_NAME_MAX]; /* identity: certificate CN#fingerprint */
  /* The registry the controller answers from (its Events answer's
   * relay-registry header), as "registry:<id>"; "" when it named none.
   * Links of one registry are one controller (see group_of). */
  char pool[TUN_CONTROLLER_NAME_MAX];
  bool up, tls;
  bool settings; /* the controller's SETTINGS arrived */
  bool goaway;   /* the controller is leaving: no new calls */
  /* A gRPC server forgives a PING only if it wrote HEADERS or DATA since
   * the previous one (its "too_many_pings" enforcement); true at first. */
  bool ping_forgiven;
  int32_t events_sid;
  bool events_open;         /* answered, or standing for EVENTS_SETTLE_MS */
  uint64_t events_since_ms; /* when the current Events stream was opened */
  uint32_t events_attempt;  /* quick ends in a row */
  uint64_t shunned_until;   /* it answered UNAVAILABLE: see UNAVAILABLE_SHUN_MS */
  tun_outq events_out;
  tun_grpc_decoder events_in;
} rlink;

typedef struct call_group {
  size_t pending;
  void (*done)(void *ud);
  void *ud;
} call_group;

struct tun_call {
  tun_relay *r;
  rlink *link;
  int32_t sid;
  char path[64];
  cm_buf req; /* framed request, kept for replays */
  tun_outq out;
  const ProtobufCMessageDescriptor *desc;
  tun_call_cb cb;
  void *ud;
  call_group *group;
  tun_grpc_decoder dec;
  ProtobufCMessage *resp;
  int http_status, grpc_status;
  char grpc_msg[256];
  uint64_t deadline;
  uint32_t timeout_ms;
  cm_list rnode, lnode;
  /* Each attempt's link: its group (for NOT_FOUND replays) and its
   * controller (for UNAVAILABLE ones). */
  struct {
    char group[TUN_CONTROLLER_NAME_MAX], controller[TUN_CONTROLLER_NAME_MAX];
    bool failed; /* ended UNAVAILABLE: its group gave no answer */
  } tried[MAX_TRIED];
  size_t ntried;
  bool pinned;     /* tun_relay_call_to/_all: never replayed elsewhere */
  bool repeatable; /* Validate: safe to ask again (see replay_elsewhere) */
  bool probe;      /* a keepalive health check: not counted as a call */
};

/* A controller that asked for fewer pings keeps its longer interval on its
 * next links (as gRPC clients keep theirs per channel). */
typedef struct ping_backoff {
  char controller[TUN_CONTROLLER_NAME_MAX];
  uint32_t interval_ms;
} ping_backoff;

struct tun_relay {
  uv_loop_t *loop;
  tun_relay_config cfg;
  char *node_id, *version, *public_url, *region, *controller_uri;
  tun_relay_cbs cbs;
  void *ud;
  cm_tls_ctx *tls;
  uv_tcp_t listener;
  bool listening;
  cm_list links;
  size_t nup;
  cm_list calls;
  uv_timer_t tick;
  size_t rr;
  tun_relay_stats st;
  ping_backoff backoffs[MAX_BACKOFFS];
  size_t nbackoffs;
  bool closing;
  int handles;
  bool leaving; /* tun_relay_leave: controllers were told */
  void (*done)(void *);
  void *done_ud;
};

static void call_finish(tun_call *c, int status, const char *msg);
static int submit_call(tun_call *c, rlink *l);
static void maybe_closed(tun_relay *r);
static tun_call *call_new(tun_relay *r, const char *path, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *desc, uint32_t timeout_ms,
                          tun_call_cb cb, void *ud);
static void call_free(tun_call *c);
static void deadline_tick_start(tun_relay *r);

/* ---- links ------------------------------------------------------------------ */

/* What a link counts as for replays, listing and events: its registry when
 * the controller named one (controllers sharing a registry are one pool:
 * a NOT_FOUND from one is the answer of all, and each lists every session),
 * else its own identity. */
static const char *group_of(const rlink *l) { return l->pool[0] ? l->pool : l->controller; }

/* True when name is the link's group or its identity (a session tagged
 * before the link's registry was known still finds it). */
static bool link_is(const rlink *l, const char *name) {
  return strcmp(group_of(l), name) == 0 || strcmp(l->controller, name) == 0;
}

/* Which links a replay skips besides the current one. */
typedef enum {
  SKIP_NONE,        /* a GOAWAY refused it unprocessed: any other link */
  SKIP_GROUPS,      /* NOT_FOUND: groups already asked gave their answer */
  SKIP_CONTROLLERS, /* UNAVAILABLE: controllers that failed it */
} skip_kind;

static bool was_tried(const tun_call *c, const rlink *l, skip_kind skip) {
  for (size_t k = 0; c && skip != SKIP_NONE && k < c->ntried; k++) {
    if (skip == SKIP_GROUPS && c->tried[k].failed) continue; /* not an answer */
    const char *name = skip == SKIP_GROUPS ? c->tried[k].group : c->tried[k].controller;
    if (strcmp(name, skip == SKIP_GROUPS ? group_of(l) : l->controller) == 0) return true;
  }
  return false;
}

/* Another up link of l's group, or NULL. */
static rlink *group_peer(const rlink *l) {
  for (cm_list *p = l->r->links.next; p != &l->r->links; p = p->next) {
    rlink *o = cm_container_of(p, rlink, node);
    if (o != l && o->up && !o->base.closing && strcmp(group_of(o), group_of(l)) == 0) return o;
  }
  return NULL;
}

/* Overdue (a hung controller, perhaps) or recently UNAVAILABLE. */
static bool link_shunned(const rlink *l) {
  return tun_link_overdue(&l->base) || cm_now_mono_ms() < l->shunned_until;
}

/* Round-robin over up links, skipping `exclude` and, for a replay of c,
 * the links `skip` names.  A shunned link is taken only when no other is
 * up. */
static rlink *pick_link(tun_relay *r, const tun_call *c, const rlink *exclude, skip_kind skip) {
  size_t n = 0;
  for (cm_list *p = r->links.next; p != &r->links; p = p->next)
    n++;
  if (n == 0) return NULL;
  size_t start = r->rr++ % n;
  rlink *fallback = NULL;
  for (size_t k = 0; k < n; k++) {
    size_t want = (start + k) % n, i = 0;
    cm_list *p = r->links.next;
    while (i++ < want)
      p = p->next;
    rlink *l = cm_container_of(p, rlink, node);
    if (!l->up || l->base.closing || l == exclude || was_tried(c, l, skip)) continue;
    if (!link_shunned(l)) return l;
    if (!fallback) fallback = l;
  }
  return fallback;
}

static void set_up(rlink *l, bool up) {
  tun_relay *r = l->r;
  if (l->up == up) return;
  l->up = up;
  if (up)
    r->nup++;
  else
    r->nup--;
  cm_log(up || r->closing ? CM_LOG_INFO : CM_LOG_WARN, /* ours to close: no alarm */
         "tunnel", up ? "controller link up" : "controller link down",
         CM_S("controller", l->controller), CM_S("registry", l->pool), CM_S("peer", l->base.peer),
         CM_I("links", r->nup), CM_S("reason", up ? "" : l->base.why));
  if (r->cbs.on_links) r->cbs.on_links(r->ud, r->nup);
  /* A link of a pool going down moves the pool's events to another of its
   * links: re-announce there too, since the controller that fell may have
   * taken events it had not yet stored. */
  if (!r->cbs.on_link_up || r->closing) return;
  if (up || (l->pool[0] && group_peer(l))) r->cbs.on_link_up(r->ud, group_of(l));
}

/* The conditions of controller.proto's "a link counts as UP". */
static void update_up(rlink *l) {
  set_up(l, l->settings && l->events_sid > 0 && l->events_open && !l->goaway && !l->base.closing &&
                !l->base.closed);
}

static void send_hello(rlink *l) {
  tun_relay *r = l->r;
  Relay__V1__Hello hello = RELAY__V1__HELLO__INIT;
  hello.node_id = r->node_id;
  hello.version = r->version;
  hello.public_url = r->public_url;
  hello.region = r->region;
  Relay__V1__RelayEvent ev = RELAY__V1__RELAY_EVENT__INIT;
  ev.kind_case = RELAY__V1__RELAY_EVENT__KIND_HELLO;
  ev.hello = &hello;
  tun_outq_push(&l->base, l->events_sid, &l->events_out, &ev.base);
}

static void send_leaving(rlink *l) {
  Relay__V1__Leaving leaving = RELAY__V1__LEAVING__INIT;
  Relay__V1__RelayEvent ev = RELAY__V1__RELAY_EVENT__INIT;
  ev.kind_case = RELAY__V1__RELAY_EVENT__KIND_LEAVING;
  ev.leaving = &leaving;
  tun_outq_push(&l->base, l->events_sid, &l->events_out, &ev.base);
}

static void open_events(rlink *l) {
  nghttp2_nv nv[] = {
      TUN_NV(":method", "POST"),
      TUN_NV(":scheme", l->tls ? "https" : "http"),
      TUN_NV(":path", TUN_PATH_EVENTS),
      TUN_NV(":authority", "controller"),
      TUN_NV("content-type", "application/grpc"),
      TUN_NV("te", "trailers"),
  };
  /* A fresh stream starts with a fresh queue: what the old one had not
   * sent went with it (counters are absolute; slots are re-announced). */
  tun_outq_free(&l->events_out);
  tun_outq_init(&l->events_out, l->r->cfg.link.max_event_queue);
  tun_grpc_decoder_free(&l->events_in);
  tun_grpc_decoder_init(&l->events_in, l->r->cfg.link.max_message);
  l->events_open = false;
  nghttp2_data_provider p = tun_outq_provider(&l->events_out);
  l->events_sid = nghttp2_submit_request(l->base.h2, NULL, nv, CM_ARRAY_LEN(nv), &p, NULL);
  if (l->events_sid < 0) {
    l->events_sid = 0;
    tun_link_abort(&l->base, "cannot open the Events stream");
    return;
  }
  l->events_since_ms = cm_now_mono_ms();
  send_hello(l);
  if (l->r->leaving) send_leaving(l); /* a stream reopened while we drain */
  tun_link_wake_at(&l->base, l->events_since_ms + EVENTS_SETTLE_MS);
}

/* The controller ended our Events stream: without it no kick can reach us,
 * so the link is not up until a new one stands.  Reopen at once after a
 * stream that lived, with backoff after one that died young. */
static void events_ended(rlink *l, uint32_t h2_error) {
  uint64_t now = cm_now_mono_ms();
  bool lived = now - l->events_since_ms >= EVENTS_STABLE_MS;
  l->events_sid = 0;
  l->events_open = false;
  snprintf(l->base.why, sizeof l->base.why, "controller ended the Events stream");
  update_up(l);
  l->base.why[0] = '\0';
  if (l->goaway || l->base.closing || l->r->closing) return;
  if (lived) l->events_attempt = 0;
  uint64_t delay = 0;
  if (l->events_attempt > 0) {
    uint64_t cap = CM_MIN((uint64_t)EVENTS_BACKOFF_MS << CM_MIN(l->events_attempt - 1, 16u),
                          (uint64_t)EVENTS_BACKOFF_MAX_MS);
    delay = cap / 2 + cm_random_below(cap / 2 + 1); /* jitter, never a burst */
  }
  l->events_attempt++;
  l->r->st.events_reopened++;
  cm_log(CM_LOG_WARN, "tunnel", "controller ended the Events stream; reopening",
         CM_S("controller", l->controller), CM_I("h2_error", h2_error), CM_I("delay_ms", delay));
  tun_link_wake_at(&l->base, now + delay);
}

static void link_wake(tun_link *tl) {
  rlink *l = (rlink *)tl;
  if (l->goaway || !tl->h2) return;
  if (l->events_sid == 0) {
    open_events(l);
    tun_link_pump(tl);
  } else if (!l->events_open && cm_now_mono_ms() - l->events_since_ms >= EVENTS_SETTLE_MS) {
    l->events_open = true;
    update_up(l);
  }
}

/* Keepalive probe (see controller.proto): a PING when the controller has
 * written since our last one, else a health check, whose answer — any
 * answer — is itself a write that forgives our next PING. */
static void health_done(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                        const char *controller) {
  CM_UNUSED(ud);
  CM_UNUSED(status);
  CM_UNUSED(message);
  CM_UNUSED(resp);
  CM_UNUSED(controller);
}

static void link_probe(tun_link *tl) {
  rlink *l = (rlink *)tl;
  tun_relay *r = l->r;
  if (l->ping_forgiven || l->goaway) {
    l->ping_forgiven = false;
    r->st.probes_ping++;
    nghttp2_submit_ping(tl->h2, NGHTTP2_FLAG_NONE, NULL);
    return;
  }
  Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  tun_call *c = call_new(r, TUN_PATH_HEALTH_CHECK, &q.base,
                         &grpc__health__v1__health_check_response__descriptor, tl->timeout_ms,
                         health_done, NULL);
  if (!c) return;
  c->pinned = c->probe = true;
  if (submit_call(c, l) != 0) {
    call_free(c);
    return;
  }
  cm_list_push_back(&r->calls, &c->rnode);
  deadline_tick_start(r);
  r->st.probes_health++;
}

static uint32_t backoff_for(const tun_relay *r, const char *controller) {
  for (size_t i = 0; i < r->nbackoffs; i++)
    if (strcmp(r->backoffs[i].controller, controller) == 0) return r->backoffs[i].interval_ms;
  return 0;
}

/* GOAWAY ENHANCE_YOUR_CALM "too_many_pings": double the interval for this
 * controller, as gRPC clients double their keepalive time. */
static void ping_back_off(rlink *l) {
  tun_relay *r = l->r;
  uint32_t cur = backoff_for(r, l->controller);
  if (!cur) cur = l->base.interval_ms;
  uint32_t next = (uint32_t)CM_MIN((uint64_t)cur * 2, (uint64_t)PING_BACKOFF_MAX_MS);
  size_t i = 0;
  while (i < r->nbackoffs && strcmp(r->backoffs[i].controller, l->controller) != 0)
    i++;
  if (i == r->nbackoffs) {
    if (r->nbackoffs == MAX_BACKOFFS)
      i = 0; /* forget the oldest */
    else
      r->nbackoffs++;
  }
  snprintf(r->backoffs[i].controller, sizeof r->backoffs[i].controller, "%s", l->controller);
  r->backoffs[i].interval_ms = next;
  r->st.ping_backoffs++;
  tun_link_set_interval(&l->base, next);
  cm_log(CM_LOG_WARN, "tunnel", "controller asked for fewer pings; backing off",
         CM_S("controller", l->controller), CM_I("ping_interval_ms", next));
}

/* ---- nghttp2 callbacks ------------------------------------------------------- */

/* The Events answer named the controller's registry: a value of at most
 * TUN_REGISTRY_ID_MAX token characters, else ignored (the link stays its
 * own group). */
static void set_pool(rlink *l, const uint8_t *v, size_t n) {
  bool ok = n > 0 && n <= TUN_REGISTRY_ID_MAX;
  for (size_t i = 0; ok && i < n; i++)
    ok = (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
         (v[i] >= '0' && v[i] <= '9') || v[i] == '-' || v[i] == '_' || v[i] == '.';
  if (!ok) {
    cm_log(CM_LOG_WARN, "tunnel", "ignoring a malformed registry id",
           CM_S("controller", l->controller));
    return;
  }
  snprintf(l->pool, sizeof l->pool, "registry:%.*s", (int)n, (const char *)v);
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
  CM_UNUSED(flags);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  rlink *l = user;
  if (frame->hd.stream_id == l->events_sid && l->events_sid > 0 &&
      tun_hdr_is(name, namelen, TUN_HDR_REGISTRY)) {
    set_pool(l, value, valuelen);
    return 0;
  }
  tun_call *c = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (!c) return 0;
  char v[256];
  size_t n = CM_MIN(valuelen, sizeof v - 1);
  memcpy(v, value, n);
  v[n] = '\0';
  if (tun_hdr_is(name, namelen, ":status"))
    c->http_status = atoi(v);
  else if (tun_hdr_is(name, namelen, "grpc-status"))
    c->grpc_status = atoi(v);
  else if (tun_hdr_is(name, namelen, "grpc-message"))
    tun_grpc_message_decode(v, c->grpc_msg, sizeof c->grpc_msg);
  return 0;
}

static int on_call_message(void *ud, const uint8_t *msg, size_t len) {
  tun_call *c = ud;
  if (c->resp) return -EPROTO; /* unary: one message only */
  c->resp = tun_grpc_unpack(c->desc, msg, len);
  return c->resp ? 0 : -EBADMSG;
}

static int on_command_message(void *ud, const uint8_t *msg, size_t len) {
  rlink *l = ud;
  Relay__V1__ControllerCommand *cmd = (Relay__V1__ControllerCommand *)tun_grpc_unpack(
      &relay__v1__controller_command__descriptor, msg, len);
  if (!cmd) return -EBADMSG;
  l->r->st.commands++;
  if (l->r->cbs.on_command) l->r->cbs.on_command(l->r->ud, group_of(l), cmd);
  tun_grpc_free(&cmd->base);
  return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *user) {
  CM_UNUSED(flags);
  rlink *l = user;
  if (sid == l->events_sid) {
    int rc = tun_grpc_decode(&l->events_in, data, len, on_command_message, l);
    if (rc != 0) {
      cm_log(CM_LOG_WARN, "tunnel", "bad command message; resetting the Events stream",
             CM_S("controller", l->controller), CM_I("error", rc));
      nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, sid, NGHTTP2_PROTOCOL_ERROR);
    }
    return 0;
  }
  tun_call *c = nghttp2_session_get_stream_user_data(h2, sid);
  if (!c) return 0;
  int rc = tun_grpc_decode(&c->dec, data, len, on_call_message, c);
  if (rc != 0) {
    nghttp2_session_set_stream_user_data(h2, sid, NULL);
    nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
    /* A bad answer is the controller's fault, not a quota: INTERNAL. */
    call_finish(c, TUN_GRPC_INTERNAL,
                rc == -EMSGSIZE ? "response too large" : "malformed response");
  }
  return 0;
}

/* Replays c on another link: after a GOAWAY refused it unprocessed, on
 * any; after NOT_FOUND, on another group (the session may be its); and a
 * repeatable call (Validate, which takes no slot: the relay's ATTACH event
 * does) after UNAVAILABLE or a link lost under it, on another controller,
 * which may reach its registry when this one cannot.  Admin calls are not
 * repeated on UNAVAILABLE: a create or delete may have been carried out. */
/* Some group gave no answer: a NOT_FOUND is not everyone's. */
static bool some_attempt_failed(const tun_call *c) {
  for (size_t k = 0; k < c->ntried; k++)
    if (c->tried[k].failed) return true;
  return false;
}

/* The current attempt ended UNAVAILABLE (answered so, or its link lost). */
static void attempt_failed(tun_call *c) {
  if (c->ntried > 0) c->tried[c->ntried - 1].failed = true;
}

static bool replay_elsewhere(tun_call *c, skip_kind skip) {
  if (c->pinned || c->ntried >= MAX_TRIED) return false;
  if (skip == SKIP_CONTROLLERS && !c->repeatable) return false;
  rlink *next = pick_link(c->r, c, c->link, skip);
  if (!next) return false;
  cm_list_remove(&c->lnode);
  c->r->st.calls_replayed++;
  return submit_call(c, next) == 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t sid, uint32_t err, void *user) {
  rlink *l = user;
  if (sid == l->events_sid) {
    events_ended(l, err);
    return 0;
  }
  tun_call *c = nghttp2_session_get_stream_user_data(h2, sid);
  if (!c) return 0;
  c->sid = 0;
  int status = c->grpc_status;
  const char *msg = c->grpc_msg;
  if (err == NGHTTP2_REFUSED_STREAM) {
    /* Beyond a GOAWAY's last stream: the controller never saw it. */
    if (replay_elsewhere(c, SKIP_NONE)) return 0;
    status = TUN_GRPC_UNAVAILABLE;
    msg = "refused by a departing controller";
  } else if (err != NGHTTP2_NO_ERROR) {
    status = TUN_GRPC_UNAVAILABLE;
    msg = "stream reset by controller";
  } else if (c->http_status != 200) {
    status = TUN_GRPC_UNKNOWN;
    msg = "controller answered a non-200 HTTP status";
  } else if (status < 0) {
    status = TUN_GRPC_INTERNAL;
    msg = "response without grpc-status";
  } else if (status == TUN_GRPC_OK && !c->resp) {
    status = TUN_GRPC_INTERNAL;
    msg = "OK without a response message";
  }
  if (status == TUN_GRPC_NOT_FOUND && replay_elsewhere(c, SKIP_GROUPS)) return 0;
  if (status == TUN_GRPC_NOT_FOUND && some_attempt_failed(c)) {
    /* A group that failed may hold it: not a final 404. */
    status = TUN_GRPC_UNAVAILABLE;
    msg = "a controller that may know the session did not answer";
  } else if (status == TUN_GRPC_UNAVAILABLE) {
    if (c->grpc_status == TUN_GRPC_UNAVAILABLE) /* the controller's own answer */
      l->shunned_until = cm_now_mono_ms() + UNAVAILABLE_SHUN_MS;
    attempt_failed(c);
    if (replay_elsewhere(c, SKIP_CONTROLLERS)) return 0;
  }
  call_finish(c, status, msg);
  return 0;
}

static bool goaway_is_too_many_pings(const nghttp2_goaway *g) {
  static const char why[] = "too_many_pings";
  return g->error_code == NGHTTP2_ENHANCE_YOUR_CALM && g->opaque_data_len == sizeof why - 1 &&
         memcmp(g->opaque_data, why, sizeof why - 1) == 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
  rlink *l = user;
  switch (frame->hd.type) {
  case NGHTTP2_SETTINGS:
    /* The peer's first SETTINGS proves an HTTP/2 server is there. */
    if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !l->settings) {
      l->settings = true;
      update_up(l);
    }
    break;
  case NGHTTP2_HEADERS:
  case NGHTTP2_DATA:
    l->ping_forgiven = true;
    if (frame->hd.stream_id != l->events_sid || !l->events_sid) break;
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
      /* The controller finished its half (trailers): our half stays open
       * as long as we have events to send, so nghttp2 would never close
       * the stream.  Reset ours; on_stream_close then reopens. */
      nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, l->events_sid, NGHTTP2_NO_ERROR);
    } else if (frame->hd.type == NGHTTP2_HEADERS && !l->events_open) {
      l->events_open = true;
      update_up(l);
    }
    break;
  case NGHTTP2_GOAWAY:
    cm_log(CM_LOG_INFO, "tunnel", "controller sent GOAWAY", CM_S("controller", l->controller),
           CM_I("h2_error", frame->goaway.error_code),
           CM_I("last_stream", frame->goaway.last_stream_id));
    if (goaway_is_too_many_pings(&frame->goaway)) ping_back_off(l);
    /* Streams up to last_stream_id still complete; nghttp2 refuses the
     * rest (they are replayed elsewhere) and new ones go elsewhere. */
    l->goaway = true;
    snprintf(l->base.why, sizeof l->base.why, "controller sent GOAWAY");
    update_up(l);
    break;
  default: break;
  }
  return 0;
}

static nghttp2_session_callbacks *g_cbs;
static uv_once_t g_cbs_once = UV_ONCE_INIT;

/* Built once; both ends may run on different threads (embedded mode). */
static void make_callbacks(void) {
  nghttp2_session_callbacks_new(&g_cbs);
  nghttp2_session_callbacks_set_on_header_callback(g_cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(g_cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_recv_callback(g_cbs, on_frame_recv);
}

static nghttp2_session_callbacks *client_callbacks(void) {
  uv_once(&g_cbs_once, make_callbacks);
  return g_cbs;
}

/* ---- link hooks ---------------------------------------------------------------- */

static int check_controller_cert(rlink *l) {
  tun_relay *r = l->r;
  X509 *cert = cm_stream_peer_cert(l->base.st);
  if (!cert) {
    snprintf(l->base.why, sizeof l->base.why, "no verified client certificate");
    return -1;
  }
  if (!cm_pki_cert_has_uri(cert, r->controller_uri) || !cm_pki_cert_has_eku(cert, CM_PKI_CLIENT)) {
    snprintf(l->base.why, sizeof l->base.why,
             "certificate lacks the controller identity (%s, clientAuth)", r->controller_uri);
    return -1;
  }
  if (strcmp(cm_stream_alpn(l->base.st), "h2") != 0) {
    snprintf(l->base.why, sizeof l->base.why, "controller did not negotiate h2");
    return -1;
  }
  uint8_t fp[32];
  char hex[65], cn[64] = "controller";
  cm_stream_peer_fingerprint(l->base.st, fp);
  cm_hex(fp, 8, hex);
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  snprintf(l->controller, sizeof l->controller, "%s#%s", cn, hex);
  return 0;
}

static int link_open(tun_link *tl) {
  rlink *l = (rlink *)tl;
  tun_relay *r = l->r;
  if (l->tls && check_controller_cert(l) != 0) {
    r->st.links_refused++;
    cm_log(CM_LOG_WARN, "tunnel", "controller refused", CM_S("peer", tl->peer),
           CM_S("reason", tl->why));
    return -1;
  }
  nghttp2_option *opt;
  nghttp2_option_new(&opt);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
  int rc = nghttp2_session_client_new3(&tl->h2, client_callbacks(), l, opt, tun_link_mem());
  nghttp2_option_del(opt);
  if (rc != 0) return -1;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
  };
  nghttp2_submit_settings(tl->h2, NGHTTP2_FLAG_NONE, iv, CM_ARRAY_LEN(iv));
  nghttp2_session_set_local_window_size(tl->h2, NGHTTP2_FLAG_NONE, 0, 16 << 20);
  tun_link_start(tl);
  uint32_t backed_off = backoff_for(r, l->controller);
  if (backed_off) tun_link_set_interval(tl, backed_off);
  open_events(l);
  return 0;
}

static void link_closed(tun_link *tl, int err, const char *msg) {
  rlink *l = (rlink *)tl;
  if (!tl->why[0]) snprintf(tl->why, sizeof tl->why, "%s", msg ? msg : "closed");
  /* OpenSSL itself refuses most bad controllers (unknown CA, expired, a
   * serverAuth-only relay cert): link_open never ran, so say it here. */
  if (l->tls && !tl->h2 && (err == CM_EHANDSHAKE || err == CM_ETIMEOUT)) {
    l->r->st.links_refused++;
    cm_log(CM_LOG_WARN, "tunnel", "controller refused", CM_S("peer", tl->peer),
           CM_S("reason", tl->why));
  }
  if (l->up) set_up(l, false);
  cm_list_remove(&l->node);
  /* In-flight calls fail now, their controller is gone; a repeatable one
   * is asked again on another controller's link. */
  while (!cm_list_empty(&l->calls)) {
    tun_call *c = cm_container_of(l->calls.next, tun_call, lnode);
    if (tl->h2 && c->sid > 0) nghttp2_session_set_stream_user_data(tl->h2, c->sid, NULL);
    c->sid = 0;
    attempt_failed(c);
    if (!replay_elsewhere(c, SKIP_CONTROLLERS))
      call_finish(c, TUN_GRPC_UNAVAILABLE, "controller link lost");
  }
}

static void link_free(tun_link *tl) {
  rlink *l = (rlink *)tl;
  tun_relay *r = l->r;
  tun_outq_free(&l->events_out);
  tun_grpc_decoder_free(&l->events_in);
  free(l);
  r->handles--;
  maybe_closed(r);
}

static const tun_link_hooks g_hooks = {.on_open = link_open,
                                       .on_closed = link_closed,
                                       .on_free = link_free,
                                       .probe = link_probe,
                                       .on_wake = link_wake};

static rlink *link_new(tun_relay *r, bool tls) {
  rlink *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  l->r = r;
  l->tls = tls;
  l->ping_forgiven = true; /* a connection's first PING is always allowed */
  cm_list_init(&l->calls);
  tun_outq_init(&l->events_out, r->cfg.link.max_event_queue);
  tun_grpc_decoder_init(&l->events_in, r->cfg.link.max_message);
  tun_link_init(&l->base, r->loop, &r->cfg.link, &g_hooks);
  r->handles++;
  cm_list_push_back(&r->links, &l->node);
  return l;
}

static void on_controller_conn(uv_stream_t *server, int status) {
  tun_relay *r = server->data;
  if (status < 0 || r->closing) return;
  rlink *l = link_new(r, true);
  if (!l) return;
  cm_stream_opts o = {.tls = r->tls,
                      .handshake_timeout_ms = r->cfg.link.handshake_timeout_ms,
                      .keepalive = true,
                      /* TCP backs up the keepalive probes: a peer whose host
                       * or network died is given up within the ping timeout. */
                      .keepalive_s = CM_MAX(1u, r->cfg.link.ping_interval_ms / 1000),
                      .user_timeout_ms = r->cfg.link.ping_timeout_ms,
                      .high_watermark = 1 << 20};
  int err;
  l->base.st = cm_stream_accept(server, &o, tun_link_stream_cbs(), &l->base, &err);
  if (!l->base.st) {
    cm_list_remove(&l->node);
    tun_link_discard(&l->base);
    return;
  }
  /* Known now, so a refusal during the handshake can name the peer. */
  snprintf(l->base.peer, sizeof l->base.peer, "%s", cm_stream_peer_addr(l->base.st));
  r->st.links_accepted++;
}

int tun_relay_add_fd(tun_relay *r, int fd, const char *controller) {
  rlink *l = link_new(r, false);
  if (!l) return -ENOMEM;
  snprintf(l->controller, sizeof l->controller, "%s", controller ? controller : "embedded");
  cm_stream_opts o = {.high_watermark = 1 << 20};
  int err;
  l->base.st = cm_stream_open_fd(r->loop, fd, false, &o, tun_link_stream_cbs(), &l->base, &err);
  if (!l->base.st) {
    cm_list_remove(&l->node);
    tun_link_discard(&l->base);
    return err;
  }
  return 0;
}

/* ---- calls ---------------------------------------------------------------------- */

static void call_free(tun_call *c) {
  cm_buf_free(&c->req);
  tun_outq_free(&c->out);
  tun_grpc_decoder_free(&c->dec);
  tun_grpc_free(c->resp);
  free(c);
}

static void call_finish(tun_call *c, int status, const char *msg) {
  tun_relay *r = c->r;
  cm_list_remove(&c->rnode);
  cm_list_remove(&c->lnode);
  if (c->sid > 0 && c->link && c->link->base.h2) {
    nghttp2_session_set_stream_user_data(c->link->base.h2, c->sid, NULL);
    nghttp2_submit_rst_stream(c->link->base.h2, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_CANCEL);
    tun_link_pump(&c->link->base);
  }
  if (!c->probe) {
    if (status != TUN_GRPC_OK) r->st.calls_failed++;
    if (status == TUN_GRPC_UNAVAILABLE) r->st.calls_unavailable++;
    if (status == TUN_GRPC_DEADLINE_EXCEEDED) r->st.calls_deadline++;
  }
  const char *ctl = c->link ? group_of(c->link) : "";
  if (c->cb) c->cb(c->ud, status, msg ? msg : "", status == TUN_GRPC_OK ? c->resp : NULL, ctl);
  call_group *g = c->group;
  call_free(c);
  if (g && --g->pending == 0) {
    if (g->done) g->done(g->ud);
    free(g);
  }
  if (cm_list_empty(&r->calls)) uv_timer_stop(&r->tick);
}

static int submit_call(tun_call *c, rlink *l) {
  char tmo[16];
  uint64_t now = cm_now_mono_ms();
  tun_grpc_timeout_format(c->deadline > now ? c->deadline - now : 1, tmo);
  nghttp2_nv nv[] = {
      TUN_NV(":method", "POST"),
      TUN_NV(":scheme", l->tls ? "https" : "http"),
      TUN_NV(":path", c->path),
      TUN_NV(":authority", "controller"),
      TUN_NV("content-type", "application/grpc"),
      TUN_NV("te", "trailers"),
      TUN_NV("grpc-timeout", tmo),
  };
  /* Fresh response state for this attempt. */
  cm_buf_reset(&c->out.buf);
  cm_buf_append(&c->out.buf, cm_buf_head(&c->req), cm_buf_size(&c->req));
  c->out.eof = true;
  c->out.deferred = false;
  tun_grpc_free(c->resp);
  c->resp = NULL;
  tun_grpc_decoder_free(&c->dec);
  tun_grpc_decoder_init(&c->dec, c->r->cfg.link.max_message);
  c->http_status = 0;
  c->grpc_status = -1;
  c->grpc_msg[0] = '\0';
  nghttp2_data_provider p = tun_outq_provider(&c->out);
  int32_t sid = nghttp2_submit_request(l->base.h2, NULL, nv, CM_ARRAY_LEN(nv), &p, c);
  if (sid < 0) return -EIO;
  c->sid = sid;
  c->link = l;
  if (c->ntried < MAX_TRIED) {
    snprintf(c->tried[c->ntried].group, sizeof c->tried[0].group, "%s", group_of(l));
    snprintf(c->tried[c->ntried].controller, sizeof c->tried[0].controller, "%s", l->controller);
    c->ntried++;
  }
  cm_list_push_back(&l->calls, &c->lnode);
  tun_link_pump(&l->base);
  return 0;
}

static void on_tick(uv_timer_t *t) {
  tun_relay *r = t->data;
  uint64_t now = cm_now_mono_ms();
  for (cm_list *p = r->calls.next; p != &r->calls;) {
    tun_call *c = cm_container_of(p, tun_call, rnode);
    p = p->next;
    if (now >= c->deadline) call_finish(c, TUN_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
  }
}

static tun_call *call_new(tun_relay *r, const char *path, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *desc, uint32_t timeout_ms,
                          tun_call_cb cb, void *ud) {
  tun_call *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->r = r;
  snprintf(c->path, sizeof c->path, "%s", path);
  cm_buf_init_secret(&c->req, r->cfg.link.max_message + TUN_GRPC_PREFIX); /* may hold a token */
  tun_outq_init(&c->out, 0);
  tun_grpc_decoder_init(&c->dec, r->cfg.link.max_message);
  c->repeatable = strcmp(path, TUN_PATH_VALIDATE) == 0;
  c->desc = desc;
  c->cb = cb;
  c->ud = ud;
  c->timeout_ms = timeout_ms ? timeout_ms : r->cfg.default_timeout_ms;
  c->deadline = cm_now_mono_ms() + c->timeout_ms;
  cm_list_init(&c->rnode);
  cm_list_init(&c->lnode);
  if (tun_grpc_encode(&c->req, req) != 0) {
    call_free(c);
    return NULL;
  }
  return c;
}

static void deadline_tick_start(tun_relay *r) {
  if (!uv_is_active((uv_handle_t *)&r->tick))
    uv_timer_start(&r->tick, on_tick, DEADLINE_TICK_MS, DEADLINE_TICK_MS);
}

static bool call_start(tun_relay *r, tun_call *c, rlink *l) {
  if (submit_call(c, l) != 0) return false;
  cm_list_push_back(&r->calls, &c->rnode);
  r->st.calls++;
  deadline_tick_start(r);
  return true;
}

tun_call *tun_relay_call(tun_relay *r, const char *path, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *desc, uint32_t timeout_ms,
                         tun_call_cb cb, void *ud, int *status) {
  rlink *l = r->closing ? NULL : pick_link(r, NULL, NULL, SKIP_NONE);
  if (!l) {
    r->st.calls++;
    r->st.calls_failed++;
    r->st.calls_unavailable++;
    *status = TUN_GRPC_UNAVAILABLE;
    return NULL;
  }
  tun_call *c = call_new(r, path, req, desc, timeout_ms, cb, ud);
  if (!c || !call_start(r, c, l)) {
    if (c) call_free(c);
    *status = TUN_GRPC_UNAVAILABLE;
    return NULL;
  }
  *status = TUN_GRPC_OK;
  return c;
}

/* An up link of `controller`, preferring one whose probe is not overdue. */
static rlink *link_of(tun_relay *r, const char *controller) {
  rlink *fallback = NULL;
  for (cm_list *p = r->links.next; p != &r->links; p = p->next) {
    rlink *l = cm_container_of(p, rlink, node);
    if (!l->up || l->base.closing || !link_is(l, controller)) continue;
    if (!tun_link_overdue(&l->base)) return l;
    if (!fallback) fallback = l;
  }
  return fallback;
}

tun_call *tun_relay_call_to(tun_relay *r, const char *controller, const char *path,
                            const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                            uint32_t timeout_ms, tun_call_cb cb, void *ud, int *status) {
  rlink *l = r->closing ? NULL : link_of(r, controller);
  tun_call *c = l ? call_new(r, path, req, desc, timeout_ms, cb, ud) : NULL;
  if (c) c->pinned = true;
  if (!c || !call_start(r, c, l)) {
    if (c) call_free(c);
    r->st.calls++;
    r->st.calls_failed++;
    r->st.calls_unavailable++;
    *status = TUN_GRPC_UNAVAILABLE;
    return NULL;
  }
  *status = TUN_GRPC_OK;
  return c;
}

static int cmp_names(const void *a, const void *b) { return strcmp(a, b); }

size_t tun_relay_controllers(const tun_relay *r, char (*names)[TUN_CONTROLLER_NAME_MAX],
                             size_t max) {
  size_t n = 0;
  for (cm_list *p = r->links.next; p != &r->links && n < max; p = p->next) {
    rlink *l = cm_container_of(p, rlink, node);
    if (!l->up || l->base.closing) continue;
    bool dup = false;
    for (size_t k = 0; k < n && !dup; k++)
      dup = strcmp(names[k], group_of(l)) == 0;
    if (!dup) snprintf(names[n++], TUN_CONTROLLER_NAME_MAX, "%s", group_of(l));
  }
  qsort(names, n, TUN_CONTROLLER_NAME_MAX, cmp_names);
  return n;
}

size_t tun_relay_call_all(tun_relay *r, const char *path, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *desc, uint32_t timeout_ms,
                          tun_call_cb cb, void (*done)(void *ud), void *ud) {
  call_group *g = calloc(1, sizeof *g);
  if (!g) return 0;
  g->done = done;
  g->ud = ud;
  g->pending = 1; /* held until every call is started */
  char seen[16][96];
  size_t nseen = 0, started = 0;
  for (cm_list *p = r->links.next; p != &r->links && !r->closing; p = p->next) {
    rlink *l = cm_container_of(p, rlink, node);
    if (!l->up || l->base.closing) continue;
    bool dup = false;
    for (size_t k = 0; k < nseen && !dup; k++)
      dup = strcmp(seen[k], group_of(l)) == 0;
    if (dup || nseen == CM_ARRAY_LEN(seen)) continue;
    snprintf(seen[nseen++], sizeof seen[0], "%s", group_of(l));
    tun_call *c = call_new(r, path, req, desc, timeout_ms, cb, ud);
    if (!c) continue;
    c->pinned = true;
    c->group = g;
    g->pending++;
    if (!call_start(r, c, l)) {
      g->pending--;
      call_free(c);
      continue;
    }
    started++;
  }
  if (--g->pending == 0) { /* every call already finished, or none started */
    if (g->done) g->done(g->ud);
    free(g);
  }
  return started;
}

void tun_call_cancel(tun_call *c) {
  c->cb = NULL;
  call_finish(c, TUN_GRPC_CANCELLED, "cancelled");
}

/* ---- events ---------------------------------------------------------------------- */

int tun_relay_send_event(tun_relay *r, const char *controller, const Relay__V1__RelayEvent *ev) {
  int sent = 0;
  for (cm_list *p = r->links.next; p != &r->links; p = p->next) {
    rlink *l = cm_container_of(p, rlink, node);
    if (!l->up || l->events_sid <= 0) continue;
    if (controller && !link_is(l, controller)) continue;
    if (tun_outq_push(&l->base, l->events_sid, &l->events_out, &ev->base) != 0) {
      r->st.events_dropped++;
      continue;
    }
    r->st.events_sent++;
    sent++;
    tun_link_pump(&l->base);
    /* One link per controller is enough when several share an identity. */
    if (controller) break;
  }
  return sent > 0 ? 0 : -ENOTCONN;
}

/* ---- lifecycle --------------------------------------------------------------------- */

tun_relay *tun_relay_new(uv_loop_t *loop, const tun_relay_config *cfg, const tun_relay_cbs *cbs,
                         void *ud, char *err, size_t errlen) {
  tun_relay *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->loop = loop;
  r->cfg = *cfg;
  tun_link_config_fill(&r->cfg.link);
  if (!r->cfg.default_timeout_ms) r->cfg.default_timeout_ms = 5000;
  r->node_id = strdup(cfg->node_id ? cfg->node_id : "relay");
  r->version = strdup(cfg->version ? cfg->version : "");
  r->public_url = strdup(cfg->public_url ? cfg->public_url : "");
  r->region = strdup(cfg->region ? cfg->region : "");
  r->controller_uri = strdup(cfg->controller_uri ? cfg->controller_uri : CM_PKI_URI_CONTROLLER);
  if (cbs) r->cbs = *cbs;
  r->ud = ud;
  cm_list_init(&r->links);
  cm_list_init(&r->calls);
  uv_timer_init(loop, &r->tick);
  r->tick.data = r;
  r->handles = 1;
  if (cfg->cert_file && !(r->tls = tun_relay_tls_new(cfg, err, errlen))) {
    tun_relay_free(r);
    return NULL;
  }
  return r;
}

cm_tls_ctx *tun_relay_tls_new(const tun_relay_config *cfg, char *err, size_t errlen) {
  cm_tls_config tc;
  cm_tls_config_init(&tc);
  tc.cert_file = cfg->cert_file;
  tc.key_file = cfg->key_file;
  tc.ca_file = cfg->ca_file;
  tc.verify_peer = true;
  tc.require_peer_cert = true;
  tc.alpn = "h2";
  tc.tls13_only = true; /* both ends are ours */
  tc.cleanse_plaintext = true;
  if (!cfg->ca_file) {
    snprintf(err, errlen, "controller-ca: the tunnel needs the controller CA to verify peers");
    return NULL;
  }
  return cm_tls_ctx_new_server(&tc, err, errlen);
}

void tun_relay_set_tls(tun_relay *r, cm_tls_ctx *tls) {
  cm_tls_ctx_free(r->tls); /* links made from it keep it while they live */
  r->tls = tls;
}

int tun_relay_listen(tun_relay *r, const char *hostport, char *err, size_t errlen) {
  if (!r->tls) {
    snprintf(err, errlen, "tunnel-cert: a listener needs the relay's certificate and key");
    return -EINVAL;
  }
  int rc = cm_tcp_listen(r->loop, &r->listener, hostport, 128, on_controller_conn, err, errlen);
  if (rc != 0) return rc;
  r->listener.data = r;
  r->listening = true;
  r->handles++;
  cm_log(CM_LOG_INFO, "tunnel", "listening for controllers", CM_S("addr", hostport),
         CM_I("port", tun_relay_port(r)));
  return 0;
}

int tun_relay_port(const tun_relay *r) {
  return r->listening ? cm_tcp_bound_port(&r->listener) : -1;
}

size_t tun_relay_links(const tun_relay *r) { return r->nup; }

size_t tun_relay_links_answering(const tun_relay *r) {
  size_t n = 0;
  for (cm_list *p = r->links.next; p != &r->links; p = p->next) {
    const rlink *l = cm_container_of(p, rlink, node);
    if (l->up && !tun_link_overdue(&l->base)) n++;
  }
  return n;
}

void tun_relay_get_stats(const tun_relay *r, tun_relay_stats *out) { *out = r->st; }

static void on_handle_closed(uv_handle_t *h) {
  tun_relay *r = h->data;
  r->handles--;
  maybe_closed(r);
}

static void maybe_closed(tun_relay *r) {
  if (r->closing && r->handles == 0 && r->done) {
    void (*done)(void *) = r->done;
    r->done = NULL;
    done(r->done_ud);
  }
}

void tun_relay_leave(tun_relay *r) {
  if (r->leaving || r->closing) return;
  r->leaving = true;
  if (r->listening) uv_close((uv_handle_t *)&r->listener, on_handle_closed);
  r->listening = false;
  size_t told = 0;
  for (cm_list *p = r->links.next; p != &r->links; p = p->next) {
    rlink *l = cm_container_of(p, rlink, node);
    if (l->events_sid > 0 && !l->base.closing) {
      send_leaving(l);
      tun_link_pump(&l->base);
      told++;
    }
  }
  cm_log(CM_LOG_INFO, "tunnel", "leaving: no more controller connections accepted",
         CM_I("links_told", told));
}

void tun_relay_close(tun_relay *r, void (*done)(void *), void *ud) {
  if (r->closing) return;
  r->closing = true;
  r->done = done;
  r->done_ud = ud;
  if (r->listening) uv_close((uv_handle_t *)&r->listener, on_handle_closed);
  r->listening = false;
  for (cm_list *p = r->links.next; p != &r->links;) {
    rlink *l = cm_container_of(p, rlink, node);
    p = p->next;
    tun_link_close(&l->base, "relay shutting down");
  }
  uv_timer_stop(&r->tick);
  uv_close((uv_handle_t *)&r->tick, on_handle_closed);
}

void tun_relay_free(tun_relay *r) {
  if (!r) return;
  cm_tls_ctx_free(r->tls);
  free(r->node_id);
  free(r->version);
  free(r->public_url);
  free(r->region);
  free(r->controller_uri);
  free(r);
}
