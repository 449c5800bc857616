/*
 * service.c — the reference controller: the Controller gRPC service over
 * the tunnel, backed by the registry.
 *
 * Decisions: Validate answers from the registry (unknown sessions as gRPC
 * NOT_FOUND, so a relay linked to several controllers asks the next one);
 * Admin checks the principal's scopes (swsrs:session:create|read|delete)
 * and answers with the HTTP status the relay should return.  A create with
 * a target also needs swsrs:session:target and the --target-allow policy
 * (an IP literal must be allowed, a name's port must be; its addresses are
 * checked by the relay at dial time, against the same list, which every
 * Validate of such a session carries).  Events keep
 * the registry's view of attached slots and counters current, and the
 * relay's Hello tells us its node id and public URL (used to build session
 * URLs).  Deleting or expiring a session sends a Kick (1001) to the relay
 * that serves it.
 *
 * Embedded mode runs this on its own thread and loop; the relay reaches it
 * through a socketpair with exactly the protocol a remote relay uses.
 */
#include "controller-stub/controller.h"
#include "controller-stub/registry.h"
#include "tunnel/tunnel.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SCOPE_CREATE "swsrs:session:create"
#define SCOPE_READ   "swsrs:session:read"
#define SCOPE_DELETE "swsrs:session:delete"
#define SCOPE_TARGET "swsrs:session:target"
/* Sessions per LIST answer: about 150 KiB of protobuf, far below the
 * link's message limit, however many sessions there are. */
#define MAX_PAGE 1000

/* Live links per relay node: a relay that redials may be up on its new
 * link before the old one's down event arrives. */
typedef struct node_links {
  char node[128];
  int n;
} node_links;

#define MAX_NODES 1024

struct ctl_server {
  node_links nodes[MAX_NODES];
  size_t nnodes;
  uv_loop_t *loop;
  ctl_config cfg;
  ctl_registry *reg;
  cm_netpolicy *policy; /* --target-allow; NULL: target sessions refused */
  char **allow;         /* its entries, for the decisions */
  size_t nallow;
  tun_ctl *tun;
  uv_timer_t reaper;
  bool started, closing;
  int pending_close;
  void (*done)(void *);
  void *done_ud;
};

static int64_t now_s(void) { return cm_now_wall_ms() / 1000; }

/* ---- Validate ------------------------------------------------------------------ */

static Relay__V1__Role role_out(int slot) {
  return slot == CTL_REG_ROLE_INITIATOR   ? RELAY__V1__ROLE__ROLE_INITIATOR
         : slot == CTL_REG_ROLE_RESPONDER ? RELAY__V1__ROLE__ROLE_RESPONDER
                                          : RELAY__V1__ROLE__ROLE_UNSPECIFIED;
}

static int role_in(Relay__V1__Role r) {
  return r == RELAY__V1__ROLE__ROLE_INITIATOR   ? CTL_REG_ROLE_INITIATOR
         : r == RELAY__V1__ROLE__ROLE_RESPONDER ? CTL_REG_ROLE_RESPONDER
                                                : CTL_REG_ROLE_ANY;
}

static void on_validate(void *ud, tun_ctl_call *call, const Relay__V1__SlotRequest *req) {
  ctl_server *s = ud;
  ctl_reg_decision d;
  ctl_reg_validate(s->reg, now_s(), req->session_id, req->token, role_in(req->requested_role),
                   req->relay_node_id, &d);
  if (!d.allow && d.http_status == 404) {
    tun_ctl_reply(call, TUN_GRPC_NOT_FOUND, d.message, NULL);
    return;
  }
  Relay__V1__SlotDecision out = RELAY__V1__SLOT_DECISION__INIT;
  out.allow = d.allow;
  out.slot = role_out(d.slot);
  out.http_status = d.allow ? 200 : d.http_status;
  out.reason = (char *)(d.reason ? d.reason : "");
  out.message = (char *)(d.message ? d.message : "");
  out.expires_at_unix = d.expires_at;
  out.peer_wait_seconds = d.peer_wait_s;
  out.max_message_bytes = d.max_message_bytes;
  out.target = d.target;
  if (d.target[0]) {
    out.target_allow = s->allow;
    out.n_target_allow = s->nallow;
  }
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &out.base);
}

/* ---- Admin ---------------------------------------------------------------------- */

static void status_out(const ctl_reg_status *st, Relay__V1__SessionStatus *o) {
  relay__v1__session_status__init(o);
  o->id = (char *)st->id;
  o->state = (char *)ctl_reg_state_name(st->state);
  o->created_at_unix = st->created_at;
  o->expires_at_unix = st->expires_at;
  o->last_activity_unix = st->last_activity;
  o->bytes_in = st->bytes_in;
  o->bytes_out = st->bytes_out;
  o->initiator_connected = st->initiator_connected;
  o->responder_connected = st->responder_connected;
  o->relay_node_id = (char *)st->relay_node;
  o->public_url = (char *)st->public_url;
  o->target = (char *)st->target;
}

static void admin_error(tun_ctl_call *call, uint32_t http, const char *code, const char *msg) {
  Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
  r.http_status = http;
  r.error = (char *)code;
  r.message = (char *)msg;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
}

static bool has_scope(const Relay__V1__AdminRequest *req, const char *scope) {
  if (!req->principal) return false;
  for (size_t i = 0; i < req->principal->n_scopes; i++)
    if (strcmp(req->principal->scopes[i], scope) == 0) return true;
  return false;
}

/* The policy's word on a create's target; false after answering. */
static bool target_allowed(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req,
                           bool open_mode) {
  if (!req->target[0]) return true;
  if (!open_mode && !has_scope(req, SCOPE_TARGET)) {
    admin_error(call, 403, "insufficient_scope", "a target session needs the scope " SCOPE_TARGET);
    return false;
  }
  cm_target t;
  char err[160];
  if (cm_target_parse(req->target, &t, err, sizeof err) != 0) {
    admin_error(call, 400, "invalid_target", err);
    return false;
  }
  const char *why = NULL;
  if (!s->policy)
    why = "target sessions are off on this controller (no --target-allow)";
  else if (t.is_ip && cm_netpolicy_check(s->policy, &t.addr, t.port) == CM_NET_BLOCKED)
    why = "the target is a loopback, link-local or metadata address that --target-allow does "
          "not name";
  else if (t.is_ip && cm_netpolicy_check(s->policy, &t.addr, t.port) != CM_NET_ALLOWED)
    why = "the target is outside --target-allow";
  else if (!t.is_ip && !cm_netpolicy_port_allowed(s->policy, t.port))
    why = "the target's port is outside --target-allow";
  if (!why) return true;
  cm_log(CM_LOG_INFO, "controller", "target refused", CM_S("target", req->target), CM_S("why", why),
         CM_S("by", req->principal ? req->principal->subject : ""));
  admin_error(call, 403, "target_not_allowed", why);
  return false;
}

static void admin_create(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req,
                         bool open_mode) {
  if (!target_allowed(s, call, req, open_mode)) return;
  tun_ctl_link *link = tun_ctl_call_link(call);
  const char *node = req->relay_node_id[0] ? req->relay_node_id : tun_ctl_link_node(link);
  ctl_reg_created c;
  int rc = ctl_reg_create_target(s->reg, now_s(), req->ttl_seconds, req->peer_wait_seconds, node,
                                 tun_ctl_link_public_url(link), req->target, &c);
  switch (rc) {
  case 0: break;
  case CTL_REG_ETTL:
    admin_error(call, 400, "invalid_ttl", "ttl_seconds exceeds the maximum");
    return;
  case CTL_REG_EPEERWAIT:
    admin_error(call, 400, "invalid_peer_wait", "peer_wait_seconds exceeds the maximum");
    return;
  case CTL_REG_EFULL:
    admin_error(call, 429, "too_many_sessions", "the session limit is reached");
    return;
  case CTL_REG_EARG:
    admin_error(call, 400, "invalid_request", "the relay's node id or public URL is unusable");
    return;
  default:
    admin_error(call, 503, "controller_error", "the registry could not store the session");
    return;
  }
  Relay__V1__SessionStatus st;
  status_out(&c.status, &st);
  Relay__V1__CreatedSession cs = RELAY__V1__CREATED_SESSION__INIT;
  cs.status = &st;
  cs.initiator_token = c.initiator_token;
  cs.responder_token = c.responder_token;
  cs.initiator_url = c.initiator_url;
  cs.responder_url = c.responder_url;
  Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
  r.http_status = 201;
  r.created = &cs;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
  cm_log(CM_LOG_INFO, "controller", "session created", CM_S("session", c.status.id),
         CM_S("relay", node), CM_S("by", req->principal ? req->principal->subject : ""),
         CM_S("target", c.status.target));
  ctl_reg_created_wipe(&c);
}

typedef struct list_acc {
  Relay__V1__SessionStatus *items;
  Relay__V1__SessionStatus **ptrs;
  ctl_reg_status *sts;
  size_t n, cap;
} list_acc;

static void list_one(void *ud, const ctl_reg_status *st) {
  list_acc *a = ud;
  if (a->n == a->cap) return;
  a->sts[a->n] = *st;
  status_out(&a->sts[a->n], &a->items[a->n]);
  a->ptrs[a->n] = &a->items[a->n];
  a->n++;
}

static void admin_list(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  size_t cap = req->page_size ? CM_MIN((size_t)req->page_size, (size_t)MAX_PAGE) : MAX_PAGE;
  list_acc a = {.cap = cap};
  a.items = calloc(cap, sizeof *a.items);
  a.ptrs = calloc(cap, sizeof *a.ptrs);
  a.sts = calloc(cap, sizeof *a.sts);
  char next[CTL_REG_PAGE_TOKEN_MAX];
  if (!a.items || !a.ptrs || !a.sts) {
    admin_error(call, 503, "controller_error", "out of memory");
  } else if (ctl_reg_list_page(s->reg, now_s(), req->page_token, cap, list_one, &a, next) < 0) {
    admin_error(call, 400, "invalid_page_token", "page_token is not one this controller made");
  } else {
    Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
    r.http_status = 200;
    r.n_sessions = a.n;
    r.sessions = a.ptrs;
    r.next_page_token = next;
    tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
  }
  free(a.items);
  free(a.ptrs);
  free(a.sts);
}

static void admin_get(ctl_server *s, tun_ctl_call *call, const char *id) {
  ctl_reg_status st;
  if (ctl_reg_get(s->reg, now_s(), id, &st) != 0) {
    tun_ctl_reply(call, TUN_GRPC_NOT_FOUND, "session not found", NULL);
    return;
  }
  Relay__V1__SessionStatus o;
  status_out(&st, &o);
  Relay__V1__SessionStatus *one[1] = {&o};
  Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
  r.http_status = 200;
  r.n_sessions = 1;
  r.sessions = one;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
}

static void kick(ctl_server *s, const char *node, const char *id, const char *reason) {
  Relay__V1__Kick k = RELAY__V1__KICK__INIT;
  k.session_id = (char *)id;
  k.close_code = 1001;
  k.reason = (char *)reason;
  Relay__V1__ControllerCommand cmd = RELAY__V1__CONTROLLER_COMMAND__INIT;
  cmd.kind_case = RELAY__V1__CONTROLLER_COMMAND__KIND_KICK;
  cmd.kick = &k;
  if (!node || !*node || !tun_ctl_send_to_node(s->tun, node, &cmd))
    cm_log(CM_LOG_DEBUG, "controller", "no live link to kick on", CM_S("session", id),
           CM_S("relay", node ? node : ""));
}

static void admin_delete(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  ctl_reg_status closed;
  int rc = ctl_reg_delete_status(s->reg, now_s(), req->session_id, &closed);
  if (rc == -ENOENT) {
    tun_ctl_reply(call, TUN_GRPC_NOT_FOUND, "session not found", NULL);
    return;
  }
  if (rc != 0) {
    admin_error(call, 503, "controller_error", "the registry could not delete the session");
    return;
  }
  Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
  r.http_status = 204;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
  cm_log(CM_LOG_INFO, "controller", "session deleted", CM_S("session", closed.id),
         CM_S("by", req->principal ? req->principal->subject : ""));
  /* Kick even if no attach was reported yet: events are asynchronous. */
  kick(s, closed.relay_node, closed.id, "session deleted");
}

static void on_admin(void *ud, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  ctl_server *s = ud;
  static const struct {
    Relay__V1__AdminOp op;
    const char *scope;
  } need[] = {{RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE, SCOPE_CREATE},
              {RELAY__V1__ADMIN_OP__ADMIN_OP_LIST, SCOPE_READ},
              {RELAY__V1__ADMIN_OP__ADMIN_OP_GET, SCOPE_READ},
              {RELAY__V1__ADMIN_OP__ADMIN_OP_DELETE, SCOPE_DELETE}};
  const char *scope = NULL;
  for (size_t i = 0; i < CM_ARRAY_LEN(need); i++)
    if (need[i].op == req->op) scope = need[i].scope;
  if (!scope) {
    admin_error(call, 400, "invalid_request", "unknown admin operation");
    return;
  }
  bool open_mode = req->auth_disabled && s->cfg.accept_unauthenticated;
  if (!open_mode && !has_scope(req, scope)) {
    char msg[96];
    snprintf(msg, sizeof msg, "this operation needs the scope %s", scope);
    admin_error(call, 403, "insufficient_scope", msg);
    return;
  }
  switch (req->op) {
  case RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE: admin_create(s, call, req, open_mode); break;
  case RELAY__V1__ADMIN_OP__ADMIN_OP_LIST: admin_list(s, call, req); break;
  case RELAY__V1__ADMIN_OP__ADMIN_OP_GET: admin_get(s, call, req->session_id); break;
  default: admin_delete(s, call, req); break;
  }
}

/* ---- Events ----------------------------------------------------------------------- */

static void on_session_event(ctl_server *s, const char *node, const Relay__V1__SessionEvent *e) {
  int64_t now = now_s();
  int role = role_in(e->role);
  switch (e->type) {
  case RELAY__V1__SESSION_EVENT__TYPE__ATTACH:
    /* A relay holds peers of a session we do not have: deleted while we
     * could not tell it (killed between journaling and the Kick), or
     * expired.  Nobody may keep relaying on it: close them. */
    if (ctl_reg_on_attach(s->reg, now, e->session_id, role, node) == -ENOENT)
      kick(s, node, e->session_id, "session unknown");
    break;
  case RELAY__V1__SESSION_EVENT__TYPE__DETACH:
    ctl_reg_on_detach(s->reg, now, e->session_id, role, node);
    break;
  case RELAY__V1__SESSION_EVENT__TYPE__CLOSE:
    /* A kick we sent, TTL, or the relay's own reason (a target it could
     * not or may not dial): the operator's record of why. */
    cm_log(CM_LOG_INFO, "controller", "session closed by the relay", CM_S("session", e->session_id),
           CM_S("relay", node), CM_I("code", e->close_code), CM_S("reason", e->reason));
    ctl_reg_on_detach(s->reg, now, e->session_id, CTL_REG_ROLE_INITIATOR, node);
    ctl_reg_on_detach(s->reg, now, e->session_id, CTL_REG_ROLE_RESPONDER, node);
    break;
  default: break;
  }
  if (e->counter_epoch || e->last_activity_unix)
    ctl_reg_on_stats(s->reg, now, e->session_id, e->counter_epoch, e->bytes_in, e->bytes_out,
                     e->last_activity_unix);
}

static node_links *node_slot(ctl_server *s, const char *node, bool create) {
  for (size_t i = 0; i < s->nnodes; i++)
    if (strcmp(s->nodes[i].node, node) == 0) return &s->nodes[i];
  if (!create || s->nnodes == MAX_NODES) return NULL;
  node_links *n = &s->nodes[s->nnodes++];
  snprintf(n->node, sizeof n->node, "%s", node);
  n->n = 0;
  return n;
}

static void on_event(void *ud, tun_ctl_link *link, const Relay__V1__RelayEvent *ev) {
  ctl_server *s = ud;
  if (ev->kind_case == RELAY__V1__RELAY_EVENT__KIND_HELLO && ev->hello) {
    ctl_reg_set_relay_url(s->reg, ev->hello->node_id, ev->hello->public_url);
    ctl_reg_set_relay_live(s->reg, ev->hello->node_id, true);
    cm_log(CM_LOG_INFO, "controller", "relay hello", CM_S("relay", ev->hello->node_id),
           CM_S("version", ev->hello->version), CM_S("public_url", ev->hello->public_url));
  } else if (ev->kind_case == RELAY__V1__RELAY_EVENT__KIND_SESSION && ev->session) {
    on_session_event(s, tun_ctl_link_node(link), ev->session);
  }
}

/* Counted here, not per Hello: the tunnel reports each link up (after its
 * Hello) and down exactly once. */
static void on_link(void *ud, tun_ctl_link *link, bool up) {
  ctl_server *s = ud;
  const char *node = tun_ctl_link_node(link);
  if (!node[0]) return;
  node_links *nl = node_slot(s, node, up);
  if (up) {
    if (nl) nl->n++;
    return;
  }
  /* Another link to the same relay is still up: it stays live, and so do
   * its peers' slots. */
  if (nl && --nl->n > 0) return;
  ctl_reg_set_relay_live(s->reg, node, false);
}

static const tun_ctl_handlers g_handlers = {on_validate, on_admin, on_event, on_link};

/* ---- reaper ---------------------------------------------------------------------------- */

static void on_expired(void *ud, const char *id, const char *node) {
  ctl_server *s = ud;
  cm_log(CM_LOG_INFO, "controller", "session expired", CM_S("session", id));
  kick(s, node, id, "session expired");
}

static void on_reap(uv_timer_t *t) {
  ctl_server *s = t->data;
  ctl_reg_reap(s->reg, now_s(), on_expired, s);
}

/* ---- lifecycle --------------------------------------------------------------------------- */

static void free_policy(ctl_server *s) {
  for (size_t i = 0; i < s->nallow; i++)
    free(s->allow[i]);
  free(s->allow);
  cm_netpolicy_free(s->policy);
  s->allow = NULL;
  s->nallow = 0;
  s->policy = NULL;
}

/* Our own copy of --target-allow: embedded mode's config lives on another
 * thread. */
static int set_policy(ctl_server *s, const cm_strlist *l, char *err, size_t errlen) {
  if (!l || l->n == 0) return 0;
  s->policy = cm_netpolicy_new((const char *const *)l->v, l->n, err, errlen);
  s->allow = calloc(l->n, sizeof *s->allow);
  if (!s->policy || !s->allow) {
    if (s->policy) cm_seterr(err, errlen, "out of memory");
    free_policy(s);
    return -EINVAL;
  }
  for (; s->nallow < l->n; s->nallow++) {
    if (!(s->allow[s->nallow] = strdup(l->v[s->nallow]))) {
      free_policy(s);
      cm_seterr(err, errlen, "out of memory");
      return -ENOMEM;
    }
  }
  cm_log(CM_LOG_INFO, "controller", "target sessions allowed", CM_I("entries", l->n));
  return 0;
}

ctl_server *ctl_server_new(uv_loop_t *loop, const ctl_config *cfg, char *err, size_t errlen) {
  ctl_server *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->loop = loop;
  s->cfg = *cfg;
  ctl_registry_config rc;
  ctl_registry_config_defaults(&rc);
  if (cfg->default_ttl_s) rc.default_ttl_s = cfg->default_ttl_s;
  if (cfg->default_peer_wait_s) rc.default_peer_wait_s = cfg->default_peer_wait_s;
  if (cfg->max_ttl_s) rc.max_ttl_s = cfg->max_ttl_s;
  if (cfg->max_peer_wait_s) rc.max_peer_wait_s = cfg->max_peer_wait_s;
  if (cfg->max_sessions) rc.max_sessions = cfg->max_sessions;
  rc.max_message_bytes = cfg->max_message_bytes;
  if (set_policy(s, cfg->target_allow, err, errlen) != 0) {
    free(s);
    return NULL;
  }
  s->reg = ctl_registry_open(cfg->state_dir, &rc, err, errlen);
  if (!s->reg) {
    free_policy(s);
    free(s);
    return NULL;
  }
  tun_ctl_config tc = {
      .link = {.ping_interval_ms = cfg->ping_interval_ms, .ping_timeout_ms = cfg->ping_timeout_ms},
      .backoff_base_ms = cfg->backoff_base_ms,
      .backoff_max_ms = cfg->backoff_max_ms,
      .max_link_age_ms = cfg->max_link_age_ms,
      .cert_file = cfg->cert_file,
      .key_file = cfg->key_file,
      .ca_file = cfg->ca_file};
  s->tun = tun_ctl_new(loop, &tc, &g_handlers, s, err, errlen);
  if (!s->tun) {
    ctl_registry_close(s->reg);
    free_policy(s);
    free(s);
    return NULL;
  }
  uv_timer_init(loop, &s->reaper);
  s->reaper.data = s;
  cm_log(CM_LOG_INFO, "controller", "registry open",
         CM_S("state_dir", cfg->state_dir ? cfg->state_dir : "(memory)"),
         CM_I("sessions", ctl_reg_count(s->reg)));
  return s;
}

int ctl_server_start(ctl_server *s, char *err, size_t errlen) {
  uint32_t every = s->cfg.reap_interval_ms ? s->cfg.reap_interval_ms : 1000;
  uv_timer_start(&s->reaper, on_reap, every, every);
  s->started = true;
  for (size_t i = 0; s->cfg.relays && i < s->cfg.relays->n; i++) {
    int rc = tun_ctl_dial(s->tun, s->cfg.relays->v[i], s->cfg.relay_server_name, err, errlen);
    if (rc != 0) return rc;
    cm_log(CM_LOG_INFO, "controller", "dialing relay", CM_S("relay", s->cfg.relays->v[i]));
  }
  return 0;
}

int ctl_server_add_fd(ctl_server *s, int fd) { return tun_ctl_add_fd(s->tun, fd); }
size_t ctl_server_links(const ctl_server *s) { return tun_ctl_links(s->tun); }

static void close_step(void *ud) {
  ctl_server *s = ud;
  if (--s->pending_close == 0 && s->done) s->done(s->done_ud);
}

static void on_reaper_closed(uv_handle_t *h) { close_step(h->data); }

void ctl_server_close(ctl_server *s, void (*done)(void *), void *ud) {
  if (s->closing) return;
  s->closing = true;
  s->done = done;
  s->done_ud = ud;
  s->pending_close = 2;
  uv_close((uv_handle_t *)&s->reaper, on_reaper_closed);
  tun_ctl_close(s->tun, close_step, s);
}

void ctl_server_free(ctl_server *s) {
  if (!s) return;
  tun_ctl_free(s->tun);
  ctl_registry_close(s->reg);
  free_policy(s);
  free(s);
}

/* ---- embedded mode ------------------------------------------------------------------------ */

struct ctl_embedded {
  uv_thread_t thread;
  uv_loop_t loop;
  uv_async_t stop;
  uv_sem_t ready;
  ctl_config cfg;
  ctl_server *srv;
  int fd;
  int rc;
  char err[256];
};

static void on_embedded_closed(void *ud) {
  ctl_embedded *e = ud;
  uv_close((uv_handle_t *)&e->stop, NULL);
}

static void on_stop(uv_async_t *a) {
  ctl_embedded *e = a->data;
  ctl_server_close(e->srv, on_embedded_closed, e);
}

static void embedded_main(void *arg) {
  ctl_embedded *e = arg;
  uv_loop_init(&e->loop);
  e->srv = ctl_server_new(&e->loop, &e->cfg, e->err, sizeof e->err);
  if (!e->srv || ctl_server_start(e->srv, e->err, sizeof e->err) != 0 ||
      ctl_server_add_fd(e->srv, e->fd) != 0) {
    e->rc = -1;
    if (e->srv) {
      ctl_server_close(e->srv, NULL, NULL);
      uv_run(&e->loop, UV_RUN_DEFAULT);
      ctl_server_free(e->srv);
      e->srv = NULL;
    }
    uv_loop_close(&e->loop);
    uv_sem_post(&e->ready);
    return;
  }
  uv_async_init(&e->loop, &e->stop, on_stop);
  e->stop.data = e;
  uv_sem_post(&e->ready);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  ctl_server_free(e->srv);
  uv_loop_close(&e->loop);
}

ctl_embedded *ctl_embedded_start(const ctl_config *cfg, int fd, char *err, size_t errlen) {
  ctl_embedded *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->cfg = *cfg;
  e->cfg.relays = NULL; /* in-process only */
  e->fd = fd;
  uv_sem_init(&e->ready, 0);
  if (uv_thread_create(&e->thread, embedded_main, e) != 0) {
    snprintf(err, errlen, "cannot start the controller thread");
    uv_sem_destroy(&e->ready);
    free(e);
    return NULL;
  }
  uv_sem_wait(&e->ready);
  if (e->rc != 0) {
    uv_thread_join(&e->thread);
    snprintf(err, errlen, "%s", e->err);
    uv_sem_destroy(&e->ready);
    free(e);
    return NULL;
  }
  return e;
}

void ctl_embedded_stop(ctl_embedded *e) {
  if (!e) return;
  uv_async_send(&e->stop);
  uv_thread_join(&e->thread);
  uv_sem_destroy(&e->ready);
  free(e);
}
