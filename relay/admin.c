/*
 * admin.c — the swsrs admin API (/admin/sessions), its CORS preflights and
 * the discovery document (/.well-known/swsrs-config).
 *
 * The relay authenticates (OIDC bearer token, auth.c) and the controller
 * decides: every request becomes an Admin call carrying the verified
 * principal, and the controller's answer says which HTTP status to send.
 * A listing asks every distinct controller linked to this relay and merges
 * their sessions.  Responses that carry slot tokens are never cached, and
 * their bodies are built in memory that is wiped when freed.
 */
#include "relay/admin.h"

#include "relay/api.h"
#include "relay/control.h"
#include "relay/cors.h"
#include "relay/jwt.h"
#include "relay/listing.h"
#include "relay/status.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ID RLY_MAX_ID
/* The scope that reads sessions, and so the relay's figures too. */
#define RLY_SCOPE_READ "swsrs:session:read"

typedef struct admin_op {
  rly_conn *c; /* if it goes first, op_cancel frees the op */
  rly_edge *edge;
  int op;
  char id[MAX_ID];
  uint32_t ttl, peer_wait;
  char relay[129], region[65]; /* create: where to place the session; "" the controller's choice */
  char target[CM_TARGET_MAX + 1]; /* CREATE: a target session's "host:port" */
  char cors[512];
  rly_ctl_auth *auth;
  rly_ctl_call *call;
  const rly_http_request *req; /* valid until we answer */
} admin_op;

static bool valid_id(const char *id) { return rly_session_id_ok(id); }

/* ---- CORS ---------------------------------------------------------------------- */

static void cors_headers(rly_edge *s, const rly_http_request *req, char *out, size_t outlen) {
  const char *origin = rly_http_header_get(req, "Origin");
  if (origin && rly_origin_allowed(&s->cfg->cors_origins, origin) && strlen(origin) < 256 &&
      !strpbrk(origin, "\r\n")) {
    snprintf(out, outlen,
             "Access-Control-Allow-Origin: %s\r\nAccess-Control-Expose-Headers: Location, "
             "WWW-Authenticate\r\nVary: Origin\r\n",
             origin);
  } else {
    snprintf(out, outlen, "Vary: Origin\r\n");
  }
}

void rly_admin_preflight(rly_conn *c, const rly_http_request *req, const rly_route_match *m,
                         int arg) {
  CM_UNUSED(m);
  rly_edge *s = c->w->edge;
  const char *methods = arg == RLY_ADMIN_ONE ? "GET, DELETE, OPTIONS" : "GET, POST, OPTIONS";
  const char *origin = rly_http_header_get(req, "Origin");
  const char *want = rly_http_header_get(req, "Access-Control-Request-Method");
  if (!origin || !want || !rly_origin_allowed(&s->cfg->cors_origins, origin) ||
      strlen(origin) >= 256 || strpbrk(origin, "\r\n")) {
    rly_conn_respond_error(c, 403, "origin_not_allowed", "this origin may not call the admin API",
                           "Vary: Origin\r\n");
    return;
  }
  char hdr[768];
  snprintf(hdr, sizeof hdr,
           "Access-Control-Allow-Origin: %s\r\nAccess-Control-Allow-Methods: %s\r\n"
           "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"
           "Access-Control-Max-Age: 600\r\nVary: Origin\r\n",
           origin, methods);
  rly_http_response r = {.status = 204, .extra_headers = hdr};
  rly_conn_respond(c, &r);
}

/* ---- responses -------------------------------------------------------------------- */

static void respond_text(admin_op *a, int status, const char *text, size_t len,
                         const char *more_headers) {
  char hdr[1024];
  snprintf(hdr, sizeof hdr, "%sCache-Control: no-store\r\n%s", a->cors,
           more_headers ? more_headers : "");
  rly_http_response r = {.status = status,
                         .content_type = text ? "application/json" : NULL,
                         .body = (const uint8_t *)text,
                         .body_len = len,
                         .extra_headers = hdr};
  rly_conn_respond(a->c, &r);
}

static void respond_json(admin_op *a, int status, json_t *body, const char *more_headers) {
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  respond_text(a, status, text, text ? strlen(text) : 0, more_headers);
  free(text);
  json_decref(body);
}

static void respond_error(admin_op *a, int status, const char *code, const char *msg,
                          const char *more) {
  char hdr[1024];
  snprintf(hdr, sizeof hdr, "%sCache-Control: no-store\r\n%s", a->cors, more ? more : "");
  rly_conn_respond_error(a->c, status, code, msg, hdr);
}

/* ---- op lifetime ---------------------------------------------------------------- */

static void op_free(admin_op *a) { free(a); }

/* The client left: stop the token check or the call (neither calls back
 * once cancelled). */
static void op_cancel(void *pending) {
  admin_op *a = pending;
  if (a->auth) rly_ctl_auth_cancel(a->auth);
  if (a->call) rly_ctl_call_cancel(a->call);
  op_free(a);
}

static void op_done(admin_op *a) {
  rly_conn_clear_pending(a->c, a);
  op_free(a);
}

/* ---- controller answers ------------------------------------------------------------ */

/* Appends "key":"token", — tokens have a shape that needs no escaping. */
static int append_token(cm_buf *b, const char *key, const char *token) {
  const char *parts[] = {"\"", key, "\":\"", token, "\","};
  for (size_t i = 0; i < CM_ARRAY_LEN(parts); i++) {
    int rc = cm_buf_append(b, parts[i], strlen(parts[i]));
    if (rc != 0) return rc;
  }
  return 0;
}

/* The one body that carries both slot tokens.  jansson frees its strings
 * unwiped, so the tokens never enter it: jansson encodes the other fields,
 * and the whole text is put together in a secret buffer (wiped when freed).
 * Tokens the data plane would refuse are refused here too. */
static void created_json(admin_op *a, const Relay__V1__CreatedSession *cs) {
  if (!rly_token_ok(cs->initiator_token) || !rly_token_ok(cs->responder_token)) {
    respond_error(a, 502, "bad_controller_answer", "the controller's slot tokens are malformed",
                  NULL);
    return;
  }
  const Relay__V1__SessionStatus *st = cs->status; /* answer_problem checked it */
  json_t *o = json_object();
  json_object_set_new(o, "id", json_string(st->id));
  /* A controller that leaves the URLs out gets ours: the relay it asked. */
  char url[sizeof a->edge->public_url + MAX_ID + 8];
  snprintf(url, sizeof url, "%s/relay/%s", a->edge->public_url, st->id);
  json_object_set_new(o, "initiator_url",
                      json_string(cs->initiator_url[0] ? cs->initiator_url : url));
  json_object_set_new(o, "responder_url",
                      json_string(cs->responder_url[0] ? cs->responder_url : url));
  json_object_set_new(o, "created_at", rly_time_json(st->created_at_unix));
  json_object_set_new(o, "expires_at", rly_time_json(st->expires_at_unix));
  if (st->target && st->target[0]) json_object_set_new(o, "target", json_string(st->target));
  char *rest = json_dumps(o, JSON_COMPACT); /* {"id":...}: spliced in after the tokens */
  json_decref(o);
  cm_buf b;
  cm_buf_init_secret(&b, 0);
  int rc = rest && rest[0] == '{' ? cm_buf_append(&b, "{", 1) : -ENOMEM;
  if (rc == 0) rc = append_token(&b, "initiator_token", cs->initiator_token);
  if (rc == 0) rc = append_token(&b, "responder_token", cs->responder_token);
  if (rc == 0) rc = cm_buf_append(&b, rest + 1, strlen(rest + 1));
  if (rc == 0) {
    char loc[160];
    snprintf(loc, sizeof loc, "Location: /admin/sessions/%s\r\n", st->id);
    respond_text(a, 201, (const char *)cm_buf_head(&b), cm_buf_size(&b), loc);
  } else {
    respond_error(a, 503, "overloaded", "out of memory", NULL);
  }
  free(rest);
  cm_buf_free(&b);
}

/* The controller said no (its status and error code). */
static void respond_refusal(admin_op *a, int http, const char *code, const char *msg) {
  /* RFC 6750 §3.1: a token without the scope gets a Bearer challenge
   * naming insufficient_scope, so clients know to ask for more. */
  bool scope = http == 403 && strcmp(code, "insufficient_scope") == 0;
  respond_error(a, http, code, msg && msg[0] ? msg : NULL,
                scope ? "WWW-Authenticate: Bearer realm=\"relay\", "
                        "error=\"insufficient_scope\"\r\n"
                      : NULL);
}

/* A call that did not return OK: the status decides, on its meaning. */
static void respond_call_failure(admin_op *a, int status, const char *message) {
  const char *code;
  int http = rly_grpc_to_http(status, &code);
  if (http >= 500)
    cm_log(CM_LOG_WARN, "admin", "controller call failed",
           CM_S("grpc_status", tun_grpc_status_name(status)), CM_S("message", message));
  const char *msg = http == 503             ? "the controller could not be reached"
                    : http == 502           ? "the controller's answer was unusable"
                    : message && message[0] ? message
                                            : NULL;
  respond_refusal(a, http, code, msg);
}

static void respond_bad_answer(admin_op *a, const char *what) {
  cm_log(CM_LOG_WARN, "admin", "bad answer from the controller", CM_S("problem", what));
  respond_error(a, 502, "bad_controller_answer", what, NULL);
}

/* The required parts of a successful answer are there; else says what is
 * missing.  A controller is trusted with decisions, not with our framing. */
static const char *answer_problem(const admin_op *a, const Relay__V1__AdminResponse *r) {
  const Relay__V1__CreatedSession *cs = r->created;
  switch (a->op) {
  case RLY_ADMIN_CREATE:
    if (!cs || !cs->status || !valid_id(cs->status->id) || !cs->initiator_token[0] ||
        !cs->responder_token[0])
      return "a create answer without the session or its tokens";
    return NULL;
  case RLY_ADMIN_GET:
    if (r->n_sessions != 1 || !valid_id(r->sessions[0]->id))
      return "a get answer without one session";
    return NULL;
  default: return NULL;
  }
}

static void on_admin_answer(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                            const char *controller) {
  CM_UNUSED(controller);
  admin_op *a = ud;
  a->call = NULL;
  const Relay__V1__AdminResponse *r = (const Relay__V1__AdminResponse *)resp;
  const char *problem = NULL;
  if (status != TUN_GRPC_OK) {
    respond_call_failure(a, status, message);
  } else if (r->http_status < 200 || r->http_status > 599) {
    respond_bad_answer(a, "an answer without a valid http_status");
  } else if (r->error[0] || r->http_status >= 300) {
    if (r->http_status < 400)
      respond_bad_answer(a, "a refusal with a success status");
    else
      respond_refusal(a, (int)r->http_status, r->error[0] ? r->error : "refused", r->message);
  } else if ((problem = answer_problem(a, r)) != NULL) {
    respond_bad_answer(a, problem);
  } else if (a->op == RLY_ADMIN_CREATE) {
    created_json(a, r->created);
  } else if (a->op == RLY_ADMIN_GET) {
    respond_json(a, 200, rly_status_json(r->sessions[0]), NULL);
  } else {
    respond_json(a, 204, NULL, NULL);
  }
  op_done(a);
}

/* ---- issuing the call ------------------------------------------------------------------ */

static void call_controller(admin_op *a, const rly_principal *p) {
  rly_edge *s = a->edge;
  static const Relay__V1__AdminOp ops[] = {
      [RLY_ADMIN_CREATE] = RELAY__V1__ADMIN_OP__ADMIN_OP_CREATE,
      [RLY_ADMIN_LIST] = RELAY__V1__ADMIN_OP__ADMIN_OP_LIST,
      [RLY_ADMIN_GET] = RELAY__V1__ADMIN_OP__ADMIN_OP_GET,
      [RLY_ADMIN_DELETE] = RELAY__V1__ADMIN_OP__ADMIN_OP_DELETE};
  Relay__V1__Principal pr = RELAY__V1__PRINCIPAL__INIT;
  Relay__V1__AdminRequest q = RELAY__V1__ADMIN_REQUEST__INIT;
  q.op = ops[a->op];
  q.session_id = a->id;
  q.ttl_seconds = a->ttl;
  q.peer_wait_seconds = a->peer_wait;
  q.placement_relay = a->relay;
  q.placement_region = a->region;
  q.target = a->target;
  q.relay_node_id = s->node_id;
  q.auth_disabled = p == NULL;
  if (p) {
    pr.subject = p->subject;
    pr.issuer = p->issuer;
    pr.n_scopes = p->scopes.n;
    pr.scopes = p->scopes.v;
    q.principal = &pr;
  }
  if (a->op == RLY_ADMIN_LIST) { /* listing.c takes it from here */
    rly_conn *c = a->c;
    rly_conn_clear_pending(c, a);
    rly_list_sessions(c, a->req, p, a->cors);
    op_free(a);
    return;
  }
  a->call = rly_ctl_call_start(a->c->w, NULL, TUN_PATH_ADMIN, &q.base,
                               &relay__v1__admin_response__descriptor, on_admin_answer, a);
  if (!a->call) {
    respond_error(a, 503, "controller_unavailable", "no controller link is up", NULL);
    op_done(a);
  }
}

/* After authentication (so an anonymous caller learns nothing of the
 * body's fate or the controller's health): validate, then ask. */
static bool parse_create_body(admin_op *a, const rly_http_request *req);

/* GET /admin/metrics: the relay's own figures, so the relay decides (no
 * controller call, and an answer also while no link is up).  Whoever may
 * read sessions may read them. */
static void metrics_authorized(admin_op *a, const rly_principal *p) {
  if (p && !rly_principal_has_scope(p, RLY_SCOPE_READ)) {
    respond_refusal(a, 403, "insufficient_scope", "the token lacks " RLY_SCOPE_READ);
    op_done(a);
    return;
  }
  rly_conn *c = a->c;
  char hdr[sizeof a->cors + 64];
  snprintf(hdr, sizeof hdr, "%sCache-Control: no-store\r\n", a->cors);
  op_done(a);
  rly_metrics_respond(c, hdr);
}

static void proceed(admin_op *a, const rly_principal *p) {
  if (a->op == RLY_ADMIN_METRICS) {
    metrics_authorized(a, p);
    return;
  }
  if (a->op == RLY_ADMIN_CREATE && !parse_create_body(a, a->req)) {
    op_done(a);
    return;
  }
  if (rly_control_links(a->edge->ctl) == 0) {
    respond_error(a, 503, "controller_unavailable", "no controller link is up", NULL);
    op_done(a);
    return;
  }
  call_controller(a, p);
}

static void on_authenticated(void *ud, int status, const rly_principal *p, const char *error,
                             const char *description) {
  admin_op *a = ud;
  a->auth = NULL;
  if (status != 200) {
    char hdr[512];
    if (status == 401) {
      snprintf(hdr, sizeof hdr,
               "WWW-Authenticate: Bearer realm=\"relay\", error=\"%s\", "
               "error_description=\"%s\"\r\n",
               error, description);
    } else if (status == 403) {
      snprintf(hdr, sizeof hdr,
               "WWW-Authenticate: Bearer realm=\"relay\", "
               "error=\"insufficient_scope\"\r\n");
    } else {
      hdr[0] = '\0';
    }
    respond_error(a, status, status == 503 ? "auth_unavailable" : error, description, hdr);
    op_done(a);
    return;
  }
  cm_log(CM_LOG_DEBUG, "admin", "authenticated", CM_S("sub", p->subject));
  proceed(a, p);
}

/* ---- request parsing -------------------------------------------------------------------- */

/* "relay" (a node id) and "region" (a label): printable ASCII, bounded;
 * which relays exist is the controller's to say. */
static bool placement_field(admin_op *a, json_t *o, const char *key, char *out, size_t outlen) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return true;
  const char *t = json_is_string(v) ? json_string_value(v) : NULL;
  bool ok = t && t[0] && strlen(t) < outlen;
  for (const char *p = t; ok && *p; p++)
    ok = *p > 0x20 && *p < 0x7f;
  if (!ok) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a non-empty string of at most %zu visible characters",
             key, outlen - 1);
    respond_error(a, 400, "invalid_request", msg, NULL);
    return false;
  }
  snprintf(out, outlen, "%s", t);
  return true;
}

static bool parse_create_body(admin_op *a, const rly_http_request *req) {
  if (req->body_len == 0) return true;
  const char *ct = rly_http_header_get(req, "Content-Type");
  if (!ct || strncasecmp(ct, "application/json", 16) != 0 ||
      (ct[16] != '\0' && ct[16] != ';' && ct[16] != ' ')) {
    respond_error(a, 415, "unsupported_media_type", "the body must be application/json", NULL);
    return false;
  }
  json_error_t je;
  json_t *o = json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &je);
  if (!o || !json_is_object(o)) {
    json_decref(o);
    respond_error(a, 400, "invalid_request", "the body must be a JSON object", NULL);
    return false;
  }
  static const char *keys[] = {"ttl_seconds", "peer_wait_seconds"};
  uint32_t *dst[] = {&a->ttl, &a->peer_wait};
  for (size_t i = 0; i < 2; i++) {
    json_t *v = json_object_get(o, keys[i]);
    if (!v || json_is_null(v)) continue;
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > (json_int_t)UINT32_MAX) {
      char msg[96];
      snprintf(msg, sizeof msg, "%s must be a positive integer", keys[i]);
      json_decref(o);
      respond_error(a, 400, "invalid_request", msg, NULL);
      return false;
    }
    *dst[i] = (uint32_t)json_integer_value(v);
  }
  /* The syntax is checked here, where the answer is plain; whether the
   * target may be reached is the controller's decision. */
  json_t *t = json_object_get(o, "target");
  char err[160];
  cm_target parsed;
  if (t && !json_is_null(t) &&
      (!json_is_string(t) || cm_target_parse(json_string_value(t), &parsed, err, sizeof err))) {
    const char *msg = json_is_string(t) ? err : "target must be a string \"host:port\"";
    json_decref(o); /* t with it */
    respond_error(a, 400, "invalid_request", msg, NULL);
    return false;
  }
  if (t && json_is_string(t)) snprintf(a->target, sizeof a->target, "%s", json_string_value(t));
  bool ok = placement_field(a, o, "relay", a->relay, sizeof a->relay) &&
            placement_field(a, o, "region", a->region, sizeof a->region);
  json_decref(o);
  return ok;
}

void rly_admin_request(rly_conn *c, const rly_http_request *req, const rly_route_match *m, int op) {
  rly_edge *s = c->w->edge;
  const char *id = op == RLY_ADMIN_GET || op == RLY_ADMIN_DELETE ? m->caps[0] : NULL;
  admin_op *a = calloc(1, sizeof *a);
  if (!a) {
    rly_conn_respond_error(c, 503, "overloaded", "out of memory", NULL);
    return;
  }
  a->c = c;
  a->edge = s;
  a->op = op;
  cors_headers(s, req, a->cors, sizeof a->cors);
  if (id && !valid_id(id)) {
    respond_error(a, 404, "not_found", "no such session", NULL);
    op_free(a);
    return;
  }
  snprintf(a->id, sizeof a->id, "%s", id ? id : "");
  a->req = req;
  rly_conn_set_pending(c, a, op_cancel);
  if (!rly_ctl_auth_enabled(s->ctl)) { /* --no-auth: the controller sees auth_disabled */
    proceed(a, NULL);
    return;
  }
  const char *authz = rly_http_header_get(req, "Authorization");
  if (!authz || strncasecmp(authz, "Bearer ", 7) != 0 || !authz[7]) {
    /* RFC 6750 §3.1: no credentials, so a bare challenge without an error
     * code (invalid_request would claim the request was malformed). */
    respond_error(a, 401, "missing_token", "a bearer token is required",
                  "WWW-Authenticate: Bearer realm=\"relay\"\r\n");
    op_done(a);
    return;
  }
  /* The check runs on the control thread; its answer comes back here. */
  if (!(a->auth = rly_ctl_auth_check(c->w, authz + 7, on_authenticated, a))) {
    respond_error(a, 503, "auth_unavailable", "the relay is overloaded; retry later", NULL);
    op_done(a);
  }
}

/* ---- discovery ------------------------------------------------------------------------------ */

void rly_admin_discovery(rly_conn *c, const rly_http_request *req, const rly_route_match *m,
                         int arg) {
  CM_UNUSED(m);
  CM_UNUSED(arg);
  rly_edge *s = c->w->edge;
  char cors[512];
  cors_headers(s, req, cors, sizeof cors);
  if (!rly_ctl_auth_enabled(s->ctl)) {
    rly_conn_respond_error(c, 404, "auth_disabled",
                           "this relay runs without authentication (--no-auth)", cors);
    return;
  }
  cm_buf b;
  cm_buf_init(&b, 1 << 16);
  if (!rly_ctl_discovery(s->ctl, &b)) {
    cm_buf_free(&b);
    rly_conn_respond_error(c, 503, "auth_unavailable",
                           "the identity provider's discovery document is not loaded yet", cors);
    return;
  }
  char hdr[768];
  snprintf(hdr, sizeof hdr, "%sCache-Control: public, max-age=300\r\n", cors);
  rly_http_response r = {.status = 200,
                         .content_type = "application/json",
                         .body = cm_buf_head(&b),
                         .body_len = cm_buf_size(&b),
                         .extra_headers = hdr};
  rly_conn_respond(c, &r);
  cm_buf_free(&b);
}
