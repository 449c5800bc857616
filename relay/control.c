/*
 * control.c — the controller link, shared by every worker (see control.h).
 *
 * The control thread owns the tun_relay: it listens for remote controllers
 * (mutual TLS on the tunnel port) when a controller CA is configured, and
 * adopts links handed in as connected sockets (embedded mode: cmd/relay
 * starts the reference controller and gives the relay one end of a
 * socketpair; the same HTTP/2 + gRPC path, no shortcut).  It also owns the
 * OIDC verifier.
 *
 * A worker's call travels as one object: packed on the worker (the
 * request's strings belong to the worker's memory), posted to the control
 * mailbox, unpacked and started there; the answer is packed into the same
 * object, which is posted back and unpacked for the callback on the
 * worker.  A cancelled call still comes back (it is freed then); its
 * cancel message, which may overtake or trail the answer, holds a
 * reference of its own.  A request the control thread cannot serve any
 * more (its mailbox closed) is answered UNAVAILABLE, never dropped, since
 * a worker waits on it.
 */
#include "relay/control.h"

#include "relay/api.h"
#include "relay/mailbox.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CONTROLLERS 16
/* Requests from every worker waiting for the control thread. */
#define INBOX_CAP 65536
/* Calls, checks and stats requests one worker may have in flight; their
 * answers are reserved messages, so this bounds its inbox too. */
#define MAX_OUTSTANDING 16384
#define MAX_MESSAGE     256

struct rly_control {
  rly_edge *e;
  uv_loop_t *loop;
  rly_ctl_hooks hooks;
  rly_mailbox inbox;
  tun_relay *tun;
  rly_auth *auth;
  atomic_size_t links;
  rly_counter events_dropped, commands_dropped; /* at our queues */

  /* What workers read without asking: the controllers linked and the
   * discovery document, as of their last change. */
  uv_mutex_t snap_lock;
  char names[MAX_CONTROLLERS][TUN_CONTROLLER_NAME_MAX];
  size_t nnames;
  char *discovery;

  int closing; /* parts still closing */
  bool inbox_ok;
  void (*done)(void *);
  void *done_ud;
};

/* ---- packed messages ---------------------------------------------------------- */

/* Into memory wiped when freed: calls and answers may carry slot tokens. */
static uint8_t *pack(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *p = cm_secret_alloc(*len ? *len : 1);
  if (p) protobuf_c_message_pack(m, p);
  return p;
}

static bool post_to_worker(rly_wctx *w, rly_msg *m, bool reserved) {
  return rly_mailbox_post(w->inbox, m, reserved);
}

/* ---- calls ------------------------------------------------------------------------ */

struct rly_ctl_call {
  rly_msg msg;
  atomic_int refs;
  rly_control *ctl;
  rly_wctx *w;
  /* the worker's */
  tun_call_cb cb;
  void *ud;
  bool cancelled;
  /* the request */
  char controller[TUN_CONTROLLER_NAME_MAX]; /* "" for any */
  const char *path;                         /* a TUN_PATH_* constant */
  const ProtobufCMessageDescriptor *req_desc, *resp_desc;
  uint8_t *req;
  size_t req_len;
  /* the control thread's */
  tun_call *tc;
  bool answered;
  /* the answer */
  int status;
  char message[MAX_MESSAGE];
  char answered_by[TUN_CONTROLLER_NAME_MAX];
  uint8_t *resp;
  size_t resp_len;
};

typedef struct call_cancel {
  rly_msg msg;
  rly_ctl_call *call;
} call_cancel;

static void call_unref(rly_ctl_call *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1) return;
  cm_secret_free(c->req);
  cm_secret_free(c->resp);
  free(c);
}

/* On the worker: the answer is here. */
static void w_call_answered(rly_msg *m) {
  rly_ctl_call *c = (rly_ctl_call *)m;
  c->w->outstanding--;
  if (!c->cancelled) {
    ProtobufCMessage *resp = NULL;
    int status = c->status;
    const char *msg = c->message;
    if (status == TUN_GRPC_OK && !(resp = tun_grpc_unpack(c->resp_desc, c->resp, c->resp_len))) {
      status = TUN_GRPC_INTERNAL; /* cannot happen: we packed it */
      msg = "answer lost between threads";
    }
    c->cb(c->ud, status, msg, resp, c->answered_by);
    tun_grpc_free(resp);
  }
  call_unref(c);
}

static void w_call_dropped(rly_msg *m) { call_unref((rly_ctl_call *)m); }

/* On the control thread: back to the worker, answered. */
static void answer_call(rly_ctl_call *c, int status, const char *message,
                        const ProtobufCMessage *resp, const char *controller) {
  c->answered = true;
  c->tc = NULL;
  c->status = status;
  snprintf(c->message, sizeof c->message, "%s", message ? message : "");
  snprintf(c->answered_by, sizeof c->answered_by, "%s", controller ? controller : "");
  if (status == TUN_GRPC_OK && resp && !(c->resp = pack(resp, &c->resp_len))) {
    c->status = TUN_GRPC_INTERNAL;
    snprintf(c->message, sizeof c->message, "out of memory");
  }
  c->msg.run = w_call_answered;
  c->msg.drop = w_call_dropped;
  if (!post_to_worker(c->w, &c->msg, true)) call_unref(c); /* the worker is gone */
}

static void on_call_answer(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                           const char *controller) {
  answer_call(ud, status, message, resp, controller);
}

static void ctl_run_call(rly_msg *m) {
  rly_ctl_call *c = (rly_ctl_call *)m;
  rly_control *ctl = c->ctl;
  ProtobufCMessage *req = tun_grpc_unpack(c->req_desc, c->req, c->req_len);
  cm_secret_free(c->req);
  c->req = NULL;
  if (!req) {
    answer_call(c, TUN_GRPC_INTERNAL, "request lost between threads", NULL, NULL);
    return;
  }
  int status = TUN_GRPC_UNAVAILABLE;
  if (ctl->tun && c->controller[0])
    c->tc = tun_relay_call_to(ctl->tun, c->controller, c->path, req, c->resp_desc, 0,
                              on_call_answer, c, &status);
  else if (ctl->tun)
    c->tc = tun_relay_call(ctl->tun, c->path, req, c->resp_desc, 0, on_call_answer, c, &status);
  tun_grpc_free(req);
  if (!c->tc && !c->answered) answer_call(c, status, "no controller link is up", NULL, NULL);
}

/* The control thread could not take it: answered as if no link were up. */
static void ctl_drop_call(rly_msg *m) {
  answer_call((rly_ctl_call *)m, TUN_GRPC_UNAVAILABLE, "the relay is shutting down", NULL, NULL);
}

rly_ctl_call *rly_ctl_call_start(rly_wctx *w, const char *controller, const char *path,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc, tun_call_cb cb,
                                 void *ud) {
  if (w->outstanding >= MAX_OUTSTANDING) return NULL;
  rly_ctl_call *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  atomic_init(&c->refs, 1);
  c->ctl = w->edge->ctl;
  c->w = w;
  c->cb = cb;
  c->ud = ud;
  snprintf(c->controller, sizeof c->controller, "%s", controller ? controller : "");
  c->path = path;
  c->req_desc = req->descriptor;
  c->resp_desc = resp_desc;
  c->msg.run = ctl_run_call;
  c->msg.drop = ctl_drop_call;
  if (!(c->req = pack(req, &c->req_len)) || !rly_control_post(c->ctl, &c->msg, false)) {
    call_unref(c);
    return NULL;
  }
  w->outstanding++;
  return c;
}

static void ctl_run_cancel(rly_msg *m) {
  call_cancel *k = (call_cancel *)m;
  rly_ctl_call *c = k->call;
  if (c->tc && !c->answered) {
    tun_call_cancel(c->tc); /* resets the stream; no callback */
    answer_call(c, TUN_GRPC_CANCELLED, "cancelled", NULL, NULL);
  }
  call_unref(c);
  free(k);
}

static void ctl_drop_cancel(rly_msg *m) {
  call_cancel *k = (call_cancel *)m;
  call_unref(k->call);
  free(k);
}

void rly_ctl_call_cancel(rly_ctl_call *c) {
  c->cancelled = true; /* its answer still comes back, and frees it */
  /* Tell the control thread, so the controller's stream is reset now
   * rather than answered for nobody; best effort (the call has a
   * deadline either way). */
  call_cancel *k = calloc(1, sizeof *k);
  if (!k) return;
  k->call = c;
  k->msg.run = ctl_run_cancel;
  k->msg.drop = ctl_drop_cancel;
  atomic_fetch_add(&c->refs, 1);
  if (!rly_control_post(c->ctl, &k->msg, false)) ctl_drop_cancel(&k->msg);
}

/* ---- token checks ------------------------------------------------------------------ */

struct rly_ctl_auth {
  rly_msg msg;
  rly_control *ctl;
  rly_wctx *w;
  rly_auth_cb cb;
  void *ud;
  bool cancelled;
  char *token; /* wiped */
  /* the answer */
  int status;
  char error[64], description[160];
  rly_principal p;
  bool have_p;
};

static void auth_free(rly_ctl_auth *a) {
  if (a->token) {
    OPENSSL_cleanse(a->token, strlen(a->token));
    free(a->token);
  }
  if (a->have_p) rly_principal_free(&a->p);
  free(a);
}

static void w_auth_answered(rly_msg *m) {
  rly_ctl_auth *a = (rly_ctl_auth *)m;
  a->w->outstanding--;
  if (!a->cancelled) a->cb(a->ud, a->status, a->have_p ? &a->p : NULL, a->error, a->description);
  auth_free(a);
}

static void w_auth_dropped(rly_msg *m) { auth_free((rly_ctl_auth *)m); }

static bool copy_principal(rly_principal *dst, const rly_principal *src) {
  memset(dst, 0, sizeof *dst);
  dst->subject = strdup(src->subject ? src->subject : "");
  dst->issuer = strdup(src->issuer ? src->issuer : "");
  for (size_t i = 0; i < src->scopes.n; i++)
    cm_strlist_push(&dst->scopes, src->scopes.v[i]);
  return dst->subject && dst->issuer && dst->scopes.n == src->scopes.n;
}

static void answer_auth(rly_ctl_auth *a, int status, const rly_principal *p, const char *error,
                        const char *desc) {
  a->status = status;
  snprintf(a->error, sizeof a->error, "%s", error ? error : "");
  snprintf(a->description, sizeof a->description, "%s", desc ? desc : "");
  if (status == 200 && p) {
    a->have_p = true;
    if (!copy_principal(&a->p, p)) {
      a->status = 503;
      snprintf(a->error, sizeof a->error, "server_error");
      snprintf(a->description, sizeof a->description, "out of memory");
    }
  }
  a->msg.run = w_auth_answered;
  a->msg.drop = w_auth_dropped;
  if (!post_to_worker(a->w, &a->msg, true)) auth_free(a);
}

static void on_auth_answer(void *ud, int status, const rly_principal *p, const char *error,
                           const char *desc) {
  answer_auth(ud, status, p, error, desc);
}

static void ctl_run_auth(rly_msg *m) {
  rly_ctl_auth *a = (rly_ctl_auth *)m;
  /* The verifier keeps its own copy (wiped); ours goes now. */
  char *token = a->token;
  a->token = NULL;
  if (!a->ctl->auth) {
    answer_auth(a, 503, NULL, "temporarily_unavailable", "no verifier");
  } else {
    rly_auth_check(a->ctl->auth, token, on_auth_answer, a);
  }
  OPENSSL_cleanse(token, strlen(token));
  free(token);
}

static void ctl_drop_auth(rly_msg *m) {
  answer_auth((rly_ctl_auth *)m, 503, NULL, "temporarily_unavailable",
              "the relay is shutting down");
}

rly_ctl_auth *rly_ctl_auth_check(rly_wctx *w, const char *token, rly_auth_cb cb, void *ud) {
  if (w->outstanding >= MAX_OUTSTANDING) return NULL;
  rly_ctl_auth *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->ctl = w->edge->ctl;
  a->w = w;
  a->cb = cb;
  a->ud = ud;
  a->msg.run = ctl_run_auth;
  a->msg.drop = ctl_drop_auth;
  if (!(a->token = strdup(token)) || !rly_control_post(a->ctl, &a->msg, false)) {
    auth_free(a);
    return NULL;
  }
  w->outstanding++;
  return a;
}

void rly_ctl_auth_cancel(rly_ctl_auth *a) { a->cancelled = true; }

/* The settings', not c->auth: workers ask, and a reload replaces the
 * verifier (never whether there is one: --no-auth needs a restart). */
bool rly_ctl_auth_enabled(const rly_control *c) { return !c->e->cfg->no_auth; }

bool rly_ctl_discovery(rly_control *c, cm_buf *out) {
  uv_mutex_lock(&c->snap_lock);
  bool ok = c->discovery != NULL;
  if (ok) cm_buf_append(out, c->discovery, strlen(c->discovery));
  uv_mutex_unlock(&c->snap_lock);
  return ok;
}

static void on_discovery_change(void *ud) {
  rly_control *c = ud;
  cm_buf b;
  cm_buf_init(&b, 1 << 16);
  char *text = NULL;
  if (rly_auth_discovery_json(c->auth, &b) && cm_buf_append(&b, "", 1) == 0)
    text = strdup((const char *)cm_buf_head(&b));
  cm_buf_free(&b);
  if (!text) return;
  uv_mutex_lock(&c->snap_lock);
  free(c->discovery);
  c->discovery = text;
  uv_mutex_unlock(&c->snap_lock);
}

/* ---- stats -------------------------------------------------------------------------- */

struct rly_ctl_stats {
  rly_msg msg;
  rly_control *ctl;
  rly_wctx *w;
  void (*cb)(void *ud, const rly_link_figures *f);
  void *ud;
  bool cancelled;
  rly_link_figures f;
};

static void w_stats_answered(rly_msg *m) {
  rly_ctl_stats *s = (rly_ctl_stats *)m;
  s->w->outstanding--;
  if (!s->cancelled) s->cb(s->ud, &s->f);
  free(s);
}

static void answer_stats(rly_ctl_stats *s) {
  rly_control *c = s->ctl;
  if (c->tun) {
    tun_relay_get_stats(c->tun, &s->f.st);
    s->f.links = tun_relay_links(c->tun);
    s->f.answering = tun_relay_links_answering(c->tun);
  }
  /* Ours, where tun_relay would have counted them. */
  s->f.st.events_dropped += rly_counter_get(&c->events_dropped);
  s->msg.run = w_stats_answered;
  s->msg.drop = NULL;
  if (!post_to_worker(s->w, &s->msg, true)) free(s);
}

static void ctl_run_stats(rly_msg *m) { answer_stats((rly_ctl_stats *)m); }

rly_ctl_stats *rly_ctl_stats_get(rly_wctx *w, void (*cb)(void *ud, const rly_link_figures *f),
                                 void *ud) {
  if (w->outstanding >= MAX_OUTSTANDING) return NULL;
  rly_ctl_stats *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->ctl = w->edge->ctl;
  s->w = w;
  s->cb = cb;
  s->ud = ud;
  s->msg.run = ctl_run_stats;
  s->msg.drop = ctl_run_stats; /* answered with what is known */
  if (!rly_control_post(s->ctl, &s->msg, false)) {
    free(s);
    return NULL;
  }
  w->outstanding++;
  return s;
}

void rly_ctl_stats_cancel(rly_ctl_stats *s) { s->cancelled = true; }

/* ---- events ------------------------------------------------------------------------- */

typedef struct event_msg {
  rly_msg msg;
  rly_control *ctl;
  char controller[TUN_CONTROLLER_NAME_MAX];
  uint8_t *ev;
  size_t len;
} event_msg;

static void event_free(rly_msg *m) {
  event_msg *e = (event_msg *)m;
  cm_secret_free(e->ev);
  free(e);
}

static void ctl_run_event(rly_msg *m) {
  event_msg *e = (event_msg *)m;
  ProtobufCMessage *ev = tun_grpc_unpack(&relay__v1__relay_event__descriptor, e->ev, e->len);
  if (ev && e->ctl->tun)
    tun_relay_send_event(e->ctl->tun, e->controller[0] ? e->controller : NULL,
                         (const Relay__V1__RelayEvent *)ev);
  tun_grpc_free(ev);
  event_free(m);
}

void rly_ctl_event(rly_wctx *w, const char *controller, const Relay__V1__RelayEvent *ev) {
  rly_control *c = w->edge->ctl;
  event_msg *e = calloc(1, sizeof *e);
  if (e && (e->ev = pack(&ev->base, &e->len))) {
    e->ctl = c;
    snprintf(e->controller, sizeof e->controller, "%s", controller ? controller : "");
    e->msg.run = ctl_run_event;
    e->msg.drop = event_free;
    if (rly_control_post(c, &e->msg, false)) return;
  }
  if (e) event_free(&e->msg);
  /* Counters are absolute: the next report heals a dropped one. */
  atomic_fetch_add(&c->events_dropped, 1);
}

size_t rly_ctl_controllers(rly_control *c, char (*names)[TUN_CONTROLLER_NAME_MAX], size_t max) {
  uv_mutex_lock(&c->snap_lock);
  size_t n = CM_MIN(max, c->nnames);
  memcpy(names, c->names, n * sizeof *names);
  uv_mutex_unlock(&c->snap_lock);
  return n;
}

/* ---- commands to the workers ----------------------------------------------------- */

typedef struct command_msg {
  rly_msg msg;
  rly_control *ctl;
  rly_wctx *w;
  bool link_up;
  uint16_t code;
  char session[RLY_MAX_ID];
  char text[TUN_CONTROLLER_NAME_MAX + 160]; /* kick reason, or the controller */
} command_msg;

static void w_run_command(rly_msg *m) {
  command_msg *k = (command_msg *)m;
  if (k->link_up)
    k->ctl->hooks.on_link_up(k->w, k->text);
  else
    k->ctl->hooks.on_kick(k->w, k->session, k->code, k->text);
  free(k);
}

/* A stalled worker may refuse: counted and logged, never waited for. */
static void post_command(rly_control *c, rly_wctx *w, command_msg *k) {
  k->ctl = c;
  k->w = w;
  k->msg.run = w_run_command;
  if (post_to_worker(w, &k->msg, false)) return;
  atomic_fetch_add(&c->commands_dropped, 1);
  cm_log(CM_LOG_WARN, "relay", "worker queue full; command dropped", CM_I("worker", w->index),
         CM_S("session", k->session), CM_B("link_up", k->link_up));
  free(k);
}

static void kick(rly_control *c, const Relay__V1__Kick *kick) {
  if (!kick->session_id || !kick->session_id[0]) return;
  command_msg *k = calloc(1, sizeof *k);
  if (!k) return;
  snprintf(k->session, sizeof k->session, "%s", kick->session_id);
  k->code = kick->close_code ? (uint16_t)kick->close_code : 1001;
  snprintf(k->text, sizeof k->text, "%s",
           kick->reason && kick->reason[0] ? kick->reason : "kicked by controller");
  /* Only the session's home worker can hold its peers. */
  post_command(c, c->e->workers[rly_edge_home(c->e, kick->session_id)], k);
}

static void on_command(void *ud, const char *controller, const Relay__V1__ControllerCommand *cmd) {
  rly_control *c = ud;
  rly_edge *e = c->e;
  switch (cmd->kind_case) {
  case RELAY__V1__CONTROLLER_COMMAND__KIND_KICK: kick(c, cmd->kick); break;
  case RELAY__V1__CONTROLLER_COMMAND__KIND_DRAIN:
    cm_log(CM_LOG_WARN, "relay", "drain requested by controller", CM_S("controller", controller),
           CM_I("grace_s", cmd->drain->grace_seconds));
    /* Every worker's tick closes what is left once the grace period ends. */
    atomic_store(&e->drain_deadline_ms,
                 cm_now_mono_ms() + (uint64_t)cmd->drain->grace_seconds * 1000);
    atomic_store(&e->draining, true);
    break;
  case RELAY__V1__CONTROLLER_COMMAND__KIND_LIMITS:
    if (cmd->limits->max_message_bytes)
      atomic_store(&e->max_message, cmd->limits->max_message_bytes);
    if (cmd->limits->max_sessions) atomic_store(&e->max_sessions, cmd->limits->max_sessions);
    if (cmd->limits->peer_wait_seconds)
      atomic_store(&e->peer_wait_ms, (uint64_t)cmd->limits->peer_wait_seconds * 1000);
    cm_log(CM_LOG_INFO, "relay", "limits updated by controller",
           CM_I("max_message", atomic_load(&e->max_message)),
           CM_I("max_sessions", atomic_load(&e->max_sessions)),
           CM_I("peer_wait_ms", atomic_load(&e->peer_wait_ms)));
    break;
  default: break;
  }
}

static void refresh_names(rly_control *c) {
  char names[MAX_CONTROLLERS][TUN_CONTROLLER_NAME_MAX];
  size_t n = tun_relay_controllers(c->tun, names, MAX_CONTROLLERS);
  uv_mutex_lock(&c->snap_lock);
  memcpy(c->names, names, n * sizeof *names);
  c->nnames = n;
  uv_mutex_unlock(&c->snap_lock);
}

static void on_links(void *ud, size_t links) {
  rly_control *c = ud;
  atomic_store(&c->links, links);
  refresh_names(c);
}

/* A controller (re)linked: every worker tells it which slots it holds. */
static void on_link_up(void *ud, const char *controller) {
  rly_control *c = ud;
  refresh_names(c);
  for (size_t i = 0; i < c->e->nworkers; i++) {
    command_msg *k = calloc(1, sizeof *k);
    if (!k) continue;
    k->link_up = true;
    snprintf(k->text, sizeof k->text, "%s", controller);
    post_command(c, c->e->workers[i], k);
  }
}

static const tun_relay_cbs g_cbs = {on_command, on_links, on_link_up};

/* ---- lifecycle ---------------------------------------------------------------------- */

bool rly_control_post(rly_control *c, rly_msg *m, bool reserved) {
  return rly_mailbox_post(&c->inbox, m, reserved);
}

rly_control *rly_control_new(rly_edge *e, uv_loop_t *loop, const rly_ctl_hooks *hooks, char *err,
                             size_t errlen) {
  rly_control *c = calloc(1, sizeof *c);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->e = e;
  c->loop = loop;
  c->hooks = *hooks;
  uv_mutex_init(&c->snap_lock);
  if (!e->cfg->no_auth &&
      !(c->auth = rly_auth_new(e->cfg, loop, on_discovery_change, c, err, errlen))) {
    uv_mutex_destroy(&c->snap_lock);
    free(c);
    return NULL;
  }
  return c;
}

int rly_control_start(rly_control *c, char *err, size_t errlen) {
  const rly_config *cfg = c->e->cfg;
  bool remote = cfg->controller_ca && *cfg->controller_ca;
  tun_relay_config tc = {.link = {.ping_interval_ms = (uint32_t)cfg->ping_interval_ms,
                                  .ping_timeout_ms = (uint32_t)cfg->ping_timeout_ms},
                         .node_id = c->e->node_id,
                         .version = rly_version(),
                         .public_url = c->e->public_url,
                         .region = cfg->region,
                         .default_timeout_ms = (uint32_t)cfg->call_timeout_ms};
  if (remote) {
    tc.cert_file = cfg->tunnel_cert;
    tc.key_file = cfg->tunnel_key;
    tc.ca_file = cfg->controller_ca;
    tc.controller_uri = cfg->controller_name;
    if (!tc.cert_file || !tc.key_file) {
      snprintf(err, errlen,
               "tunnel-cert/tunnel-key: a remote controller needs the relay's "
               "enrolled certificate (see `relay gen-csr`)");
      return -EINVAL;
    }
  }
  int rc = rly_mailbox_init(&c->inbox, c->loop, INBOX_CAP);
  if (rc != 0) {
    snprintf(err, errlen, "mailbox: %s", uv_strerror(rc));
    return rc;
  }
  c->inbox_ok = true;
  c->closing = 1; /* the mailbox */
  c->tun = tun_relay_new(c->loop, &tc, &g_cbs, c, err, errlen);
  if (!c->tun) return -EINVAL;
  if (remote && (rc = tun_relay_listen(c->tun, cfg->tunnel_listen, err, errlen)) != 0) return rc;
  if (c->auth && (rc = rly_auth_start(c->auth, err, errlen)) != 0) return rc;
  return 0;
}

int rly_control_add_fd(rly_control *c, int fd, const char *name, char *err, size_t errlen) {
  int rc = c->tun ? tun_relay_add_fd(c->tun, fd, name) : -ENOTCONN;
  if (rc != 0) snprintf(err, errlen, "controller socket: %s", uv_strerror(rc));
  return rc;
}

int rly_control_port(const rly_control *c) { return c->tun ? tun_relay_port(c->tun) : -1; }

size_t rly_control_links(const rly_control *c) { return atomic_load(&c->links); }

static void part_closed(rly_control *c) {
  if (--c->closing > 0 || !c->done) return;
  void (*done)(void *) = c->done;
  c->done = NULL;
  done(c->done_ud);
}

static void on_inbox_closed(rly_mailbox *mb) {
  rly_control *c = cm_container_of(mb, rly_control, inbox);
  part_closed(c);
}

/* Last: requests still queued are answered as failures, and every answer
 * of the parts closed before has been posted. */
static void close_inbox(rly_control *c) {
  if (c->closing == 1) rly_mailbox_close(&c->inbox, on_inbox_closed);
}

static void on_tun_closed(void *ud) {
  rly_control *c = ud;
  c->closing--;
  close_inbox(c);
}

static void on_auth_stopped(void *ud) {
  rly_control *c = ud;
  c->closing--;
  close_inbox(c);
}

static void on_replaced_auth_stopped(void *ud) { rly_auth_free(ud); }

int rly_control_replace_auth(rly_control *c, const rly_config *cfg, char *err, size_t errlen) {
  if (!c->auth || cfg->no_auth) return 0;
  rly_auth *a = rly_auth_new(cfg, c->loop, on_discovery_change, c, err, errlen);
  if (!a) return -EINVAL;
  rly_auth *old = c->auth;
  c->auth = a;
  rly_auth_start(a, err, errlen);
  /* Checks still waiting for the old verifier's keys are answered 503
   * (they are rare: a key set is loaded and checks are local). */
  rly_auth_stop(old, on_replaced_auth_stopped, old);
  return 0;
}

int rly_control_tls_new(const rly_config *cfg, cm_tls_ctx **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cfg->controller_ca || !*cfg->controller_ca) return 0; /* embedded: no tunnel listener */
  if (!cfg->tunnel_cert || !cfg->tunnel_key) {
    snprintf(err, errlen,
             "tunnel-cert/tunnel-key: a remote controller needs the relay's "
             "enrolled certificate (see `relay gen-csr`)");
    return -EINVAL;
  }
  tun_relay_config tc = {
      .cert_file = cfg->tunnel_cert, .key_file = cfg->tunnel_key, .ca_file = cfg->controller_ca};
  char why[400];
  if (!(*out = tun_relay_tls_new(&tc, why, sizeof why))) {
    snprintf(err, errlen, "tunnel-cert/tunnel-key/controller-ca: %s", why);
    return -EINVAL;
  }
  return 0;
}

void rly_control_set_tls(rly_control *c, cm_tls_ctx *tls) {
  if (c->tun && tls)
    tun_relay_set_tls(c->tun, tls);
  else
    cm_tls_ctx_free(tls);
}

void rly_control_leave(rly_control *c) {
  if (c->tun) tun_relay_leave(c->tun);
}

void rly_control_close(rly_control *c, void (*done)(void *ud), void *ud) {
  c->done = done;
  c->done_ud = ud;
  if (c->closing == 0) { /* never started */
    if (done) done(ud);
    return;
  }
  if (c->auth) c->closing++;
  if (c->tun) c->closing++;
  if (c->auth) rly_auth_stop(c->auth, on_auth_stopped, c);
  if (c->tun) tun_relay_close(c->tun, on_tun_closed, c);
  close_inbox(c);
}

void rly_control_free(rly_control *c) {
  if (!c) return;
  tun_relay_free(c->tun);
  rly_auth_free(c->auth);
  free(c->discovery);
  if (c->inbox_ok) rly_mailbox_destroy(&c->inbox);
  uv_mutex_destroy(&c->snap_lock);
  free(c);
}
