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
#include "controller-stub/store.h"
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
/* Relays placement looks at (each relay of the fleet once). */
#define MAX_VIEW 1024

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
  ctl_store *st;
  cm_netpolicy *policy; /* --target-allow; NULL: target sessions refused */
  char **allow;         /* its entries, for the decisions */
  size_t nallow;
  tun_ctl *tun;
  uv_timer_t reaper;
  bool started, closing;
  bool store_ready, dialing;
  int pending_close;
  void (*done)(void *);
  void *done_ud;
};

static int64_t now_s(void) { return cm_now_wall_ms() / 1000; }

/* ---- calls the store answers later ---------------------------------------------- */

/* One Validate or Admin call waiting for the store.  The tunnel keeps the
 * call until we answer (tun_ctl_call_defer); if the relay gives up first,
 * `call` goes NULL and the store's answer is dropped. */
typedef struct pend {
  ctl_server *s;
  tun_ctl_call *call;
  char node[CTL_REG_NODE_MAX + 1]; /* the asking relay */
  char subject[128];               /* the principal, for the log */
} pend;

static void pend_gone(void *ud) { ((pend *)ud)->call = NULL; }

static pend *pend_new(ctl_server *s, tun_ctl_call *call, const char *node) {
  pend *p = calloc(1, sizeof *p);
  if (!p) {
    tun_ctl_reply(call, TUN_GRPC_UNAVAILABLE, "out of memory", NULL);
    return NULL;
  }
  p->s = s;
  p->call = call;
  snprintf(p->node, sizeof p->node, "%s", node ? node : "");
  tun_ctl_call_defer(call, pend_gone, p);
  return p;
}

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

static void on_decided(void *ud, int rc, const ctl_reg_decision *d) {
  pend *p = ud;
  if (!p->call) {
    free(p);
    return;
  }
  /* NOT_FOUND: the relay asks its other registries.  UNAVAILABLE (the
   * store unreachable or not written): it asks another controller of
   * this one's, which may reach the store (Validate is safe to repeat);
   * either way the peer gets the same 404 or 503. */
  int status = !d->allow && d->http_status == 404 ? TUN_GRPC_NOT_FOUND
               : rc == CTL_REG_EIO                ? TUN_GRPC_UNAVAILABLE
                                                  : TUN_GRPC_OK;
  if (status != TUN_GRPC_OK) {
    tun_ctl_reply(p->call, status, d->message, NULL);
    free(p);
    return;
  }
  Relay__V1__SlotDecision out = RELAY__V1__SLOT_DECISION__INIT;
  out.allow = d->allow;
  out.slot = role_out(d->slot);
  out.http_status = d->allow ? 200 : d->http_status;
  out.reason = (char *)(d->reason ? d->reason : "");
  out.message = (char *)(d->message ? d->message : "");
  out.expires_at_unix = d->expires_at;
  out.peer_wait_seconds = d->peer_wait_s;
  out.max_message_bytes = d->max_message_bytes;
  out.target = (char *)d->target;
  if (d->target[0]) {
    out.target_allow = p->s->allow;
    out.n_target_allow = p->s->nallow;
  }
  tun_ctl_reply(p->call, TUN_GRPC_OK, NULL, &out.base);
  free(p);
}

static void on_validate(void *ud, tun_ctl_call *call, const Relay__V1__SlotRequest *req) {
  ctl_server *s = ud;
  pend *p = pend_new(s, call, req->relay_node_id);
  if (!p) return;
  s->st->ops->validate(s->st, now_s(), req->session_id, req->token, role_in(req->requested_role),
                       req->relay_node_id, on_decided, p);
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

/* A store that could not be reached or could not write. */
static void store_error(tun_ctl_call *call, const char *what) {
  admin_error(call, 503, "controller_error", what);
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

static void on_created(void *ud, int rc, ctl_reg_created *c) {
  pend *p = ud;
  tun_ctl_call *call = p->call;
  if (!call) {
    /* The relay gave up; the session stays, unseen, until its TTL. */
    if (rc == 0)
      cm_log(CM_LOG_WARN, "controller", "session created after the caller left",
             CM_S("session", c->status.id));
    free(p);
    return;
  }
  switch (rc) {
  case 0: break;
  case CTL_REG_ETTL:
    admin_error(call, 400, "invalid_ttl", "ttl_seconds exceeds the maximum");
    break;
  case CTL_REG_EPEERWAIT:
    admin_error(call, 400, "invalid_peer_wait", "peer_wait_seconds exceeds the maximum");
    break;
  case CTL_REG_EFULL:
    admin_error(call, 429, "too_many_sessions", "the session limit is reached");
    break;
  case CTL_REG_EARG:
    admin_error(call, 400, "invalid_request", "the relay's node id or public URL is unusable");
    break;
  default: store_error(call, "the registry could not store the session"); break;
  }
  if (rc != 0) {
    free(p);
    return;
  }
  Relay__V1__SessionStatus st;
  status_out(&c->status, &st);
  Relay__V1__CreatedSession cs = RELAY__V1__CREATED_SESSION__INIT;
  cs.status = &st;
  cs.initiator_token = c->initiator_token;
  cs.responder_token = c->responder_token;
  cs.initiator_url = c->initiator_url;
  cs.responder_url = c->responder_url;
  Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
  r.http_status = 201;
  r.created = &cs;
  tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
  cm_log(CM_LOG_INFO, "controller", "session created", CM_S("session", c->status.id),
         CM_S("relay", c->status.relay_node), CM_S("asked_through", p->node),
         CM_S("by", p->subject), CM_S("target", c->status.target));
  free(p);
}

static bool url_shared(const ctl_relay_view *view, size_t n, int chosen) {
  for (size_t k = 0; chosen >= 0 && k < n; k++)
    if ((int)k != chosen && view[k].url[0] && strcmp(view[k].url, view[chosen].url) == 0)
      return true;
  return false;
}

/* Placement: the relay the request names, else the least loaded of the
 * region it names (or of all), else the relay the request came through. */
static void admin_create(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req,
                         bool open_mode) {
  if (!target_allowed(s, call, req, open_mode)) return;
  tun_ctl_link *link = tun_ctl_call_link(call);
  const char *asker = req->relay_node_id[0] ? req->relay_node_id : tun_ctl_link_node(link);
  ctl_relay_view *view = calloc(MAX_VIEW, sizeof *view);
  if (!view) {
    store_error(call, "out of memory");
    return;
  }
  size_t n = s->st->ops->relays(s->st, view, MAX_VIEW);
  int i = ctl_place(view, n, req->placement_relay, req->placement_region, asker);
  if (i == CTL_PLACE_ENORELAY || i == CTL_PLACE_ENOREGION) {
    free(view);
    admin_error(call, 400, i == CTL_PLACE_ENORELAY ? "unknown_relay" : "unknown_region",
                i == CTL_PLACE_ENORELAY ? "no linked relay has that node id"
                                        : "no linked relay is in that region");
    return;
  }
  char node[CTL_REG_NODE_MAX + 1], url[CTL_REG_URL_MAX + 1];
  snprintf(node, sizeof node, "%s", i >= 0 ? view[i].node : asker);
  snprintf(url, sizeof url, "%s", i >= 0 ? view[i].url : tun_ctl_link_public_url(link));
  /* Relays behind one hostname (HAProxy hashing /relay/{id}) share their
   * public URL: the URL cannot steer the peers, so unless a relay was asked
   * for the session stays unassigned and the first relay that validates a
   * peer takes it (atomically: a racing relay gets 421). */
  if (!req->placement_relay[0] && url_shared(view, n, i)) node[0] = '\0';
  free(view);
  pend *p = pend_new(s, call, asker);
  if (!p) return;
  snprintf(p->subject, sizeof p->subject, "%s", req->principal ? req->principal->subject : "");
  s->st->ops->create(s->st, now_s(), req->ttl_seconds, req->peer_wait_seconds, node, url,
                     req->target, on_created, p);
}

static void on_page(void *ud, int rc, const ctl_reg_status *items, size_t n, const char *next) {
  pend *p = ud;
  if (!p->call) {
    free(p);
    return;
  }
  if (rc == -EINVAL) {
    admin_error(p->call, 400, "invalid_page_token", "page_token is not one this controller made");
  } else if (rc != 0) {
    store_error(p->call, "the registry could not be read");
  } else {
    Relay__V1__SessionStatus *msgs = calloc(n ? n : 1, sizeof *msgs);
    Relay__V1__SessionStatus **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (!msgs || !ptrs) {
      store_error(p->call, "out of memory");
    } else {
      for (size_t i = 0; i < n; i++) {
        status_out(&items[i], &msgs[i]);
        ptrs[i] = &msgs[i];
      }
      Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
      r.http_status = 200;
      r.n_sessions = n;
      r.sessions = ptrs;
      r.next_page_token = (char *)next;
      tun_ctl_reply(p->call, TUN_GRPC_OK, NULL, &r.base);
    }
    free(msgs);
    free(ptrs);
  }
  free(p);
}

static void admin_list(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  size_t cap = req->page_size ? CM_MIN((size_t)req->page_size, (size_t)MAX_PAGE) : MAX_PAGE;
  pend *p = pend_new(s, call, req->relay_node_id);
  if (p) s->st->ops->list_page(s->st, now_s(), req->page_token, cap, on_page, p);
}

static void on_got(void *ud, int rc, const ctl_reg_status *st) {
  pend *p = ud;
  if (!p->call) {
    free(p);
    return;
  }
  if (rc == -ENOENT) {
    tun_ctl_reply(p->call, TUN_GRPC_NOT_FOUND, "session not found", NULL);
  } else if (rc != 0) {
    store_error(p->call, "the registry could not be read");
  } else {
    Relay__V1__SessionStatus o;
    status_out(st, &o);
    Relay__V1__SessionStatus *one[1] = {&o};
    Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
    r.http_status = 200;
    r.n_sessions = 1;
    r.sessions = one;
    tun_ctl_reply(p->call, TUN_GRPC_OK, NULL, &r.base);
  }
  free(p);
}

static void admin_get(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  pend *p = pend_new(s, call, req->relay_node_id);
  if (p) s->st->ops->get(s->st, now_s(), req->session_id, on_got, p);
}

static bool send_kick(ctl_server *s, const char *node, const char *id, const char *reason) {
  Relay__V1__Kick k = RELAY__V1__KICK__INIT;
  k.session_id = (char *)id;
  k.close_code = 1001;
  k.reason = (char *)reason;
  Relay__V1__ControllerCommand cmd = RELAY__V1__CONTROLLER_COMMAND__INIT;
  cmd.kind_case = RELAY__V1__CONTROLLER_COMMAND__KIND_KICK;
  cmd.kick = &k;
  return node && *node && tun_ctl_send_to_node(s->tun, node, &cmd);
}

/* Kicks the session's peers on node ourselves when we have a link there;
 * otherwise the store hands the kick to the controllers that do. */
static void kick(ctl_server *s, const char *node, const char *id, const char *reason) {
  if (!send_kick(s, node, id, reason)) s->st->ops->publish_kick(s->st, id, node, reason);
}

static void on_deleted(void *ud, int rc, const ctl_reg_status *closed) {
  pend *p = ud;
  ctl_server *s = p->s;
  if (p->call) {
    if (rc == -ENOENT) {
      tun_ctl_reply(p->call, TUN_GRPC_NOT_FOUND, "session not found", NULL);
    } else if (rc != 0) {
      store_error(p->call, "the registry could not delete the session");
    } else {
      Relay__V1__AdminResponse r = RELAY__V1__ADMIN_RESPONSE__INIT;
      r.http_status = 204;
      tun_ctl_reply(p->call, TUN_GRPC_OK, NULL, &r.base);
    }
  }
  if (rc == 0) {
    cm_log(CM_LOG_INFO, "controller", "session deleted", CM_S("session", closed->id),
           CM_S("by", p->subject));
    /* Kick even if no attach was reported yet: events are asynchronous. */
    kick(s, closed->relay_node, closed->id, "session deleted");
  }
  free(p);
}

static void admin_delete(ctl_server *s, tun_ctl_call *call, const Relay__V1__AdminRequest *req) {
  pend *p = pend_new(s, call, req->relay_node_id);
  if (!p) return;
  snprintf(p->subject, sizeof p->subject, "%s", req->principal ? req->principal->subject : "");
  s->st->ops->del(s->st, now_s(), req->session_id, on_deleted, p);
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
  case RELAY__V1__ADMIN_OP__ADMIN_OP_GET: admin_get(s, call, req); break;
  default: admin_delete(s, call, req); break;
  }
}

/* ---- Events ----------------------------------------------------------------------- */

static void on_session_event(ctl_server *s, const char *node, const Relay__V1__SessionEvent *e) {
  int64_t now = now_s();
  int role = role_in(e->role);
  ctl_store *st = s->st;
  switch (e->type) {
  case RELAY__V1__SESSION_EVENT__TYPE__ATTACH:
    /* A relay holds peers of a session we do not have: deleted while we
     * could not tell it (killed between journaling and the Kick), or
     * expired.  Nobody may keep relaying on it: close them.  (The Redis
     * store learns it when its batch is written, and kicks then.) */
    if (st->ops->slot(st, now, e->session_id, role, true, node) == -ENOENT)
      kick(s, node, e->session_id, "session unknown");
    break;
  case RELAY__V1__SESSION_EVENT__TYPE__DETACH:
    st->ops->slot(st, now, e->session_id, role, false, node);
    break;
  case RELAY__V1__SESSION_EVENT__TYPE__CLOSE:
    /* A kick we sent, TTL, or the relay's own reason (a target it could
     * not or may not dial): the operator's record of why. */
    cm_log(CM_LOG_INFO, "controller", "session closed by the relay", CM_S("session", e->session_id),
           CM_S("relay", node), CM_I("code", e->close_code), CM_S("reason", e->reason));
    st->ops->slot(st, now, e->session_id, CTL_REG_ROLE_INITIATOR, false, node);
    st->ops->slot(st, now, e->session_id, CTL_REG_ROLE_RESPONDER, false, node);
    break;
  default: break;
  }
  if (e->counter_epoch || e->last_activity_unix)
    st->ops->stats(st, now, e->session_id, e->counter_epoch, e->bytes_in, e->bytes_out,
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
    const Relay__V1__Hello *h = ev->hello;
    s->st->ops->relay_up(s->st, h->node_id, h->public_url, h->region);
    cm_log(CM_LOG_INFO, "controller", "relay hello", CM_S("relay", h->node_id),
           CM_S("version", h->version), CM_S("public_url", h->public_url),
           CM_S("region", h->region));
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
  /* Its last link: the entry goes (relays come back under new ids, and a
   * full table would leave a newcomer uncounted, so that its first link
   * down would take the relay down under a link still up). */
  if (nl) *nl = s->nodes[--s->nnodes];
  s->st->ops->relay_down(s->st, node);
}

static const tun_ctl_handlers g_handlers = {on_validate, on_admin, on_event, on_link};

/* ---- the store's own news ------------------------------------------------------------- */

/* An expired session (reaped here: `local`) or one deleted by another
 * controller, whose peers are on node. */
static void on_store_kick(void *ud, const char *id, const char *node, const char *reason,
                          bool local) {
  ctl_server *s = ud;
  if (local) {
    cm_log(CM_LOG_INFO, "controller",
           strcmp(reason, "session expired") == 0 ? "session expired" : "kicking peers",
           CM_S("session", id), CM_S("reason", reason));
    kick(s, node, id, reason);
  } else if (send_kick(s, node, id, reason)) {
    cm_log(CM_LOG_DEBUG, "controller", "kick relayed for another controller", CM_S("session", id),
           CM_S("relay", node));
  }
}

static void start_dialing(ctl_server *s);

/* The store knows its registry id (relays pool the links of controllers
 * that share it): say it on every link, and only then dial. */
static void on_store_ready(void *ud, bool ready) {
  ctl_server *s = ud;
  s->store_ready = ready;
  if (!ready) return;
  tun_ctl_set_registry(s->tun, s->st->ops->registry_id(s->st));
  if (s->started && !s->dialing) start_dialing(s);
}

static void on_reap(uv_timer_t *t) {
  ctl_server *s = t->data;
  s->st->ops->tick(s->st, cm_now_wall_ms());
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

static ctl_store *store_open(ctl_server *s, const ctl_config *cfg, const ctl_registry_config *rc,
                             char *err, size_t errlen) {
  ctl_store_owner owner = {.kick = on_store_kick, .ready = on_store_ready, .ud = s};
  if (!cfg->store_url || !cfg->store_url[0])
    return ctl_store_journal_new(cfg->state_dir, rc, &owner, err, errlen);
  ctl_redis_config r = {.password = cfg->store_password,
                        .prefix = cfg->store_prefix,
                        .name = cfg->name,
                        .timeout_ms = cfg->store_timeout_ms,
                        .flush_ms = cfg->store_flush_ms};
  if (ctl_redis_url_parse(cfg->store_url, &r.url, err, errlen) != 0) return NULL;
  return ctl_store_redis_new(s->loop, &r, rc, &owner, err, errlen);
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
    free_policy(s);
    free(s);
    return NULL;
  }
  s->st = store_open(s, cfg, &rc, err, errlen);
  if (!s->st) {
    tun_ctl_free(s->tun);
    free_policy(s);
    free(s);
    return NULL;
  }
  /* The journal is ready at once; Redis once connected (on_store_ready). */
  if (!cfg->store_url || !cfg->store_url[0]) s->store_ready = true;
  uv_timer_init(loop, &s->reaper);
  s->reaper.data = s;
  cm_log(CM_LOG_INFO, "controller", "store open",
         CM_S("store", cfg->store_url && cfg->store_url[0] ? "redis"
                       : cfg->state_dir                    ? "journal"
                                                           : "memory"),
         CM_S("state_dir", cfg->state_dir ? cfg->state_dir : ""),
         CM_I("sessions", s->st->ops->count(s->st)));
  return s;
}

static void start_dialing(ctl_server *s) {
  s->dialing = true;
  for (size_t i = 0; s->cfg.relays && i < s->cfg.relays->n; i++) {
    char err[256];
    if (tun_ctl_dial(s->tun, s->cfg.relays->v[i], s->cfg.relay_server_name, err, sizeof err) != 0) {
      cm_log(CM_LOG_ERROR, "controller", "cannot dial relay", CM_S("relay", s->cfg.relays->v[i]),
             CM_S("error", err));
      continue;
    }
    cm_log(CM_LOG_INFO, "controller", "dialing relay", CM_S("relay", s->cfg.relays->v[i]));
  }
}

int ctl_server_start(ctl_server *s, char *err, size_t errlen) {
  /* Addresses are checked now, so a typo fails the start, not a dial. */
  for (size_t i = 0; s->cfg.relays && i < s->cfg.relays->n; i++) {
    char host[256];
    int port;
    if (cm_parse_hostport(s->cfg.relays->v[i], NULL, host, sizeof host, &port) != 0 || !port) {
      snprintf(err, errlen, "relay address \"%s\" must be HOST:PORT", s->cfg.relays->v[i]);
      return -EINVAL;
    }
  }
  if (s->cfg.relays && s->cfg.relays->n && (!s->cfg.cert_file || !s->cfg.key_file)) {
    snprintf(err, errlen, "dialing a relay needs the controller certificate, key and CA");
    return -EINVAL;
  }
  uint32_t every = s->cfg.reap_interval_ms ? s->cfg.reap_interval_ms : 1000;
  uv_timer_start(&s->reaper, on_reap, every, every);
  s->started = true;
  if (s->store_ready) on_store_ready(s, true);
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
  s->pending_close = 3;
  uv_close((uv_handle_t *)&s->reaper, on_reaper_closed);
  tun_ctl_close(s->tun, close_step, s);
  s->st->ops->close(s->st, close_step, s);
}

void ctl_server_free(ctl_server *s) {
  if (!s) return;
  tun_ctl_free(s->tun);
  s->st->ops->free(s->st);
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
