/*
 * auth.c — OIDC bearer-token authentication for the admin API.
 *
 * At start the relay fetches the issuer's discovery document
 * (<issuer>/.well-known/openid-configuration) and the JWKS it names, over
 * the project's own TLS client (fetch.c), and refreshes both periodically.
 * Verification (jwt.c) is local.  A token whose kid is unknown triggers one
 * JWKS refetch, at most once per jwks_min_refetch interval, so a flood of
 * made-up kids costs one fetch, not one per request; requests that arrive
 * while it runs wait for it (bounded queue).  If the IdP goes down, the
 * last good key set keeps working.  The relay only authenticates: scopes
 * travel to the controller, which decides.
 */
#include "relay/auth.h"
#include "relay/fetch.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WAITING 1024
#define MAX_DOC     (1u << 20)
#define RETRY_MS    5000

struct rly_auth_req {
  rly_auth *a;
  char *token;
  rly_auth_cb cb;
  void *ud;
  cm_list node;
  uint64_t deadline;
  bool after_refetch; /* already re-checked against a fresh key set */
};

struct rly_auth {
  /* Copies of the settings it was built with (a reload may free those):
   * pol.issuer and pol.audience point into `owned`. */
  char *owned[3];
  const char *client_id_hint;
  uint32_t wait_ms; /* how long a check may wait for keys (--call-timeout) */
  uv_loop_t *loop;
  void (*on_change)(void *ud);
  void *change_ud;
  cm_tls_ctx *tls;
  rly_jwt_policy pol;
  uint64_t refresh_ms, min_refetch_ms;
  rly_oidc_discovery disc;
  bool have_disc;
  rly_jwks *jwks;
  rly_fetch *fetching;
  bool fetching_jwks;
  uint64_t last_jwks_fetch_ms;
  uv_timer_t timer;  /* refresh and retries */
  uv_timer_t expiry; /* waiting requests' deadlines */
  cm_list waiting;
  size_t nwaiting;
  bool stopping;
  int handles;
  void (*done)(void *);
  void *done_ud;
};

static void fetch_discovery(rly_auth *a);

/* ---- answering requests ------------------------------------------------------- */

static void req_free(rly_auth_req *r) {
  if (r->token) {
    OPENSSL_cleanse(r->token, strlen(r->token));
    free(r->token);
  }
  cm_list_remove(&r->node);
  free(r);
}

static void answer(rly_auth_req *r, int status, const rly_principal *p, const char *error,
                   const char *desc) {
  rly_auth *a = r->a;
  if (cm_list_linked(&r->node)) a->nwaiting--;
  rly_auth_cb cb = r->cb;
  void *ud = r->ud;
  req_free(r);
  cb(ud, status, p, error, desc);
}

/* Verifies against the current key set.  Returns false when the request
 * must wait for a JWKS refetch (it is then queued). */
static bool try_verify(rly_auth_req *r) {
  rly_auth *a = r->a;
  rly_principal p;
  char kid[RLY_JWT_KID_MAX + 1], err[160];
  int rc = rly_jwt_verify(a->jwks, &a->pol, r->token, cm_now_wall_ms() / 1000, &p, kid, sizeof kid,
                          err, sizeof err);
  if (rc == RLY_JWT_OK) {
    answer(r, 200, &p, NULL, NULL);
    rly_principal_free(&p);
    return true;
  }
  if (rc == RLY_JWT_UNKNOWN_KID && !r->after_refetch) {
    uint64_t now = cm_now_mono_ms();
    bool may_fetch = a->fetching_jwks || a->last_jwks_fetch_ms == 0 ||
                     now - a->last_jwks_fetch_ms >= a->min_refetch_ms;
    if (may_fetch && a->nwaiting < MAX_WAITING && a->have_disc) {
      cm_log(CM_LOG_INFO, "auth", "unknown signing key; refetching JWKS", CM_S("kid", kid));
      return false;
    }
  }
  if (rc == RLY_JWT_INTERNAL) {
    answer(r, 503, NULL, "server_error", "token verification failed internally");
    return true;
  }
  cm_log(CM_LOG_INFO, "auth", "token refused", CM_S("reason", rly_jwt_result_str(rc)),
         CM_S("detail", err));
  answer(r, 401, NULL, "invalid_token", rly_jwt_result_str(rc));
  return true;
}

static void enqueue(rly_auth_req *r, uint32_t timeout_ms) {
  rly_auth *a = r->a;
  r->deadline = cm_now_mono_ms() + timeout_ms;
  cm_list_push_back(&a->waiting, &r->node);
  a->nwaiting++;
}

static void on_expiry(uv_timer_t *t) {
  rly_auth *a = t->data;
  uint64_t now = cm_now_mono_ms();
  for (cm_list *n = a->waiting.next; n != &a->waiting;) {
    rly_auth_req *r = cm_container_of(n, rly_auth_req, node);
    n = n->next;
    if (now >= r->deadline)
      answer(r, 503, NULL, "temporarily_unavailable", "the identity provider is unreachable");
  }
}

/* After a key-set fetch (good or bad): re-check everyone waiting. */
static void drain_waiting(rly_auth *a) {
  cm_list batch;
  cm_list_init(&batch);
  while (!cm_list_empty(&a->waiting)) {
    cm_list *n = a->waiting.next;
    cm_list_remove(n);
    a->nwaiting--;
    cm_list_push_back(&batch, n);
  }
  while (!cm_list_empty(&batch)) {
    rly_auth_req *r = cm_container_of(batch.next, rly_auth_req, node);
    cm_list_remove(&r->node);
    if (!a->jwks) {
      answer(r, 503, NULL, "temporarily_unavailable", "the identity provider is unreachable");
      continue;
    }
    r->after_refetch = true;
    try_verify(r);
  }
}

/* ---- fetching ------------------------------------------------------------------------ */

/* The timer hands over the uv_timer_t, not the rly_auth: unwrap it here
 * (casting fetch_discovery to a uv_timer_cb made it read the timer as if
 * it were the rly_auth). */
static void on_refresh_timer(uv_timer_t *t) { fetch_discovery(t->data); }

static void schedule(rly_auth *a, uint64_t ms) {
  if (!a->stopping) uv_timer_start(&a->timer, on_refresh_timer, ms, 0);
}

static void on_jwks(void *ud, int status, const char *body, size_t len, const char *err) {
  rly_auth *a = ud;
  a->fetching = NULL;
  a->fetching_jwks = false;
  a->last_jwks_fetch_ms = cm_now_mono_ms();
  char perr[200] = "";
  rly_jwks *set = NULL;
  if (status == 200 && rly_jwks_parse(body, len, &set, perr, sizeof perr) == 0) {
    rly_jwks_free(a->jwks);
    a->jwks = set;
    cm_log(CM_LOG_INFO, "auth", "JWKS loaded", CM_I("keys", rly_jwks_count(set)),
           CM_I("skipped", rly_jwks_skipped(set)));
    schedule(a, a->refresh_ms);
  } else {
    cm_log(CM_LOG_WARN, "auth", "JWKS fetch failed; keeping the last good key set",
           CM_URL("url", a->disc.jwks_uri), CM_I("status", status), CM_S("error", err ? err : perr),
           CM_B("have_keys", a->jwks != NULL));
    schedule(a, a->jwks ? a->refresh_ms : RETRY_MS);
  }
  drain_waiting(a);
}

static void fetch_jwks(rly_auth *a) {
  if (a->fetching || a->stopping || !a->have_disc) return;
  a->fetching_jwks = true;
  a->fetching = rly_fetch_get(a->loop, a->tls, a->disc.jwks_uri, MAX_DOC, 10000, on_jwks, a);
  if (!a->fetching) {
    a->fetching_jwks = false;
    schedule(a, RETRY_MS);
  }
}

static void on_discovery(void *ud, int status, const char *body, size_t len, const char *err) {
  rly_auth *a = ud;
  a->fetching = NULL;
  rly_oidc_discovery d;
  char perr[200] = "";
  if (status == 200 && rly_oidc_discovery_parse(body, len, &d, perr, sizeof perr) == 0) {
    if (strcmp(d.issuer, a->pol.issuer) != 0) {
      cm_log(CM_LOG_ERROR, "auth", "discovery document names another issuer",
             CM_S("expected", a->pol.issuer), CM_S("got", d.issuer));
      rly_oidc_discovery_free(&d);
    } else {
      if (a->have_disc) rly_oidc_discovery_free(&a->disc);
      a->disc = d;
      a->have_disc = true;
      if (a->on_change) a->on_change(a->change_ud);
      fetch_jwks(a);
      return;
    }
  } else {
    cm_log(CM_LOG_WARN, "auth", "OIDC discovery fetch failed", CM_S("issuer", a->pol.issuer),
           CM_I("status", status), CM_S("error", err ? err : perr));
  }
  /* Without a fresh document, the last one (if any) still names the JWKS. */
  if (a->have_disc)
    fetch_jwks(a);
  else
    schedule(a, RETRY_MS);
  if (!a->have_disc) drain_waiting(a);
}

static void fetch_discovery(rly_auth *a) {
  if (a->fetching || a->stopping) return;
  char url[1024];
  size_t n = strlen(a->pol.issuer);
  snprintf(url, sizeof url, "%s%s.well-known/openid-configuration", a->pol.issuer,
           n && a->pol.issuer[n - 1] == '/' ? "" : "/");
  a->fetching = rly_fetch_get(a->loop, a->tls, url, MAX_DOC, 10000, on_discovery, a);
  if (!a->fetching) schedule(a, RETRY_MS);
}

/* ---- public ---------------------------------------------------------------------------- */

rly_auth *rly_auth_new(const rly_config *cfg, uv_loop_t *loop, void (*on_change)(void *ud),
                       void *ud, char *err, size_t errlen) {
  if (!cfg->oidc_issuer || !cfg->oidc_audience) {
    snprintf(err, errlen,
             "oidc-issuer/oidc-audience: the admin API needs an OIDC issuer and "
             "audience (or --no-auth for local development)");
    return NULL;
  }
  rly_auth *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->loop = loop;
  a->on_change = on_change;
  a->change_ud = ud;
  a->owned[0] = strdup(cfg->oidc_issuer);
  a->owned[1] = strdup(cfg->oidc_audience);
  a->owned[2] = cfg->client_id_hint ? strdup(cfg->client_id_hint) : NULL;
  if (!a->owned[0] || !a->owned[1] || (cfg->client_id_hint && !a->owned[2])) {
    snprintf(err, errlen, "out of memory");
    rly_auth_free(a);
    return NULL;
  }
  a->pol.issuer = a->owned[0];
  a->pol.audience = a->owned[1];
  a->client_id_hint = a->owned[2];
  a->wait_ms = (uint32_t)(cfg->call_timeout_ms ? cfg->call_timeout_ms : 5000);
  a->pol.leeway_s = cfg->jwt_leeway_ms / 1000;
  a->refresh_ms = cfg->jwks_refresh_ms ? (uint64_t)cfg->jwks_refresh_ms : 3600000;
  a->min_refetch_ms = cfg->jwks_min_refetch_ms ? (uint64_t)cfg->jwks_min_refetch_ms : 30000;
  cm_list_init(&a->waiting);
  cm_tls_config tc;
  cm_tls_config_init(&tc);
  tc.ca_file = cfg->oidc_ca;
  tc.system_ca = cfg->oidc_ca == NULL;
  tc.alpn = "http/1.1";
  a->tls = cm_tls_ctx_new_client(&tc, err, errlen);
  if (!a->tls) {
    rly_auth_free(a);
    return NULL;
  }
  uv_timer_init(a->loop, &a->timer);
  a->timer.data = a;
  uv_timer_init(a->loop, &a->expiry);
  a->expiry.data = a;
  a->handles = 2;
  return a;
}

int rly_auth_start(rly_auth *a, char *err, size_t errlen) {
  CM_UNUSED(err);
  CM_UNUSED(errlen);
  cm_log(CM_LOG_INFO, "auth", "OIDC issuer", CM_S("issuer", a->pol.issuer),
         CM_S("audience", a->pol.audience));
  uv_timer_start(&a->expiry, on_expiry, 250, 250);
  fetch_discovery(a);
  return 0;
}

rly_auth_req *rly_auth_check(rly_auth *a, const char *token, rly_auth_cb cb, void *ud) {
  rly_auth_req *r = calloc(1, sizeof *r);
  if (!r) {
    cb(ud, 503, NULL, "server_error", "out of memory");
    return NULL;
  }
  r->a = a;
  r->cb = cb;
  r->ud = ud;
  cm_list_init(&r->node);
  size_t n = strnlen(token, RLY_JWT_MAX_TOKEN + 1);
  if (n > RLY_JWT_MAX_TOKEN || !(r->token = strndup(token, n))) {
    answer(r, 401, NULL, "invalid_token", "token too large");
    return NULL;
  }
  uint32_t wait_ms = a->wait_ms;
  if (!a->jwks) {
    /* Keys not loaded yet (start-up, or the IdP has been down since). */
    if (a->nwaiting >= MAX_WAITING || a->stopping) {
      answer(r, 503, NULL, "temporarily_unavailable", "the identity provider is unreachable");
      return NULL;
    }
    enqueue(r, wait_ms);
    return r;
  }
  if (try_verify(r)) return NULL;
  enqueue(r, wait_ms);
  fetch_jwks(a);
  return r;
}

void rly_auth_cancel(rly_auth_req *r) {
  rly_auth *a = r->a;
  if (cm_list_linked(&r->node)) a->nwaiting--;
  req_free(r);
}

bool rly_auth_discovery_json(rly_auth *a, cm_buf *out) {
  if (!a->have_disc) return false;
  json_t *o = json_object();
  json_object_set_new(o, "issuer", json_string(a->disc.issuer));
  json_object_set_new(o, "audience", json_string(a->pol.audience));
  json_t *sc = json_array();
  json_array_append_new(sc, json_string("swsrs:session:create"));
  json_array_append_new(sc, json_string("swsrs:session:read"));
  json_array_append_new(sc, json_string("swsrs:session:delete"));
  json_object_set_new(o, "scopes", sc);
  json_object_set_new(o, "jwks_uri", json_string(a->disc.jwks_uri));
  const char *eps[][2] = {{"authorization_endpoint", a->disc.authorization_endpoint},
                          {"token_endpoint", a->disc.token_endpoint},
                          {"device_authorization_endpoint", a->disc.device_authorization_endpoint}};
  for (size_t i = 0; i < CM_ARRAY_LEN(eps); i++)
    json_object_set_new(o, eps[i][0], eps[i][1] ? json_string(eps[i][1]) : json_null());
  const char *hint = a->client_id_hint;
  json_object_set_new(o, "client_id_hint", hint ? json_string(hint) : json_null());
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!text) return false;
  cm_buf_append(out, text, strlen(text));
  free(text);
  return true;
}

static void on_closed(uv_handle_t *h) {
  rly_auth *a = h->data;
  if (--a->handles == 0 && a->done) a->done(a->done_ud);
}

void rly_auth_stop(rly_auth *a, void (*done)(void *), void *ud) {
  a->stopping = true;
  a->done = done;
  a->done_ud = ud;
  if (a->fetching) rly_fetch_cancel(a->fetching);
  a->fetching = NULL;
  while (!cm_list_empty(&a->waiting)) {
    rly_auth_req *r = cm_container_of(a->waiting.next, rly_auth_req, node);
    answer(r, 503, NULL, "temporarily_unavailable", "the relay is shutting down");
  }
  uv_close((uv_handle_t *)&a->timer, on_closed);
  uv_close((uv_handle_t *)&a->expiry, on_closed);
}

void rly_auth_free(rly_auth *a) {
  if (!a) return;
  rly_jwks_free(a->jwks);
  if (a->have_disc) rly_oidc_discovery_free(&a->disc);
  cm_tls_ctx_free(a->tls);
  for (size_t i = 0; i < CM_ARRAY_LEN(a->owned); i++)
    free(a->owned[i]);
  free(a);
}
