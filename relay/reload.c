/*
 * reload.c — settings and certificates replaced while running, and their
 * expiry (see reload.h).
 */
#include "relay/reload.h"

#include "relay/control.h"
#include "relay/mailbox.h"
#include "relay/api.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DAY_MS (24ull * 3600 * 1000)

struct rly_reloads {
  uv_timer_t daily;
  bool timer_on;
  rly_config *owned; /* the settings in force if a reload brought them */
  void (*cfg_free)(rly_config *cfg);
};

/* One reload on its way to the control thread, then what it replaced on
 * its way out once every worker has passed. */
typedef struct reload_msg {
  rly_msg msg;
  rly_edge *e;
  rly_config *cfg;
  void (*cfg_free)(rly_config *cfg);
  cm_tls_ctx *tls, *tunnel_tls;
  /* after the swap: what goes once no worker can hold it */
  rly_config *old_cfg;
  void (*old_free)(rly_config *cfg);
  cm_tls_ctx *old_tls;
  atomic_size_t left;
} reload_msg;

/* ---- TLS ------------------------------------------------------------------------ */

int rly_public_tls_new(const rly_config *cfg, cm_tls_ctx **out, char *err, size_t errlen) {
  *out = NULL;
  if (cfg->plain) return 0;
  if (!cfg->tls_cert || !cfg->tls_key) {
    snprintf(err, errlen,
             "tls-cert/tls-key: a certificate and key are required "
             "(or --dev-cert-dir for a development certificate, or --plain)");
    return -EINVAL;
  }
  cm_tls_config tc;
  cm_tls_config_init(&tc);
  tc.cert_file = cfg->tls_cert;
  tc.key_file = cfg->tls_key;
  tc.alpn = cfg->alpn && *cfg->alpn ? cfg->alpn : "http/1.1";
  if (cfg->client_ca) {
    tc.ca_file = cfg->client_ca;
    tc.verify_peer = true;
    tc.require_peer_cert = false; /* browsers connect without one */
  } else {
    tc.verify_peer = false;
  }
  char why[400];
  if (!(*out = cm_tls_ctx_new_server(&tc, why, sizeof why))) {
    snprintf(err, errlen, "tls-cert/tls-key%s: %s", cfg->client_ca ? "/client-ca" : "", why);
    return -EINVAL;
  }
  return 0;
}

/* ---- expiry -------------------------------------------------------------------- */

static const char *const g_which[RLY_CERT_N] = {"public", "tunnel", "controller_ca"};

static const char *cert_file(const rly_config *cfg, int which) {
  bool remote = cfg->controller_ca && *cfg->controller_ca;
  switch (which) {
  case RLY_CERT_PUBLIC: return cfg->plain ? NULL : cfg->tls_cert;
  case RLY_CERT_TUNNEL: return remote ? cfg->tunnel_cert : NULL;
  default: return remote ? cfg->controller_ca : NULL;
  }
}

static void warn_if_near(const char *which, const char *file, int64_t not_after) {
  int64_t left = not_after - (int64_t)time(NULL);
  if (left > (int64_t)RLY_CERT_WARN_DAYS * 86400) return;
  cm_log(CM_LOG_WARN, "tls", left > 0 ? "certificate expires soon" : "certificate has expired",
         CM_S("which", which), CM_S("file", file), CM_I("days_left", left / 86400));
}

void rly_certs_check(rly_edge *e, const rly_config *cfg) {
  for (int i = 0; i < RLY_CERT_N; i++) {
    const char *f = cert_file(cfg, i);
    int64_t na = 0;
    char err[256];
    if (f && cm_pki_cert_file_not_after(f, &na, err, sizeof err) != 0) na = 0;
    atomic_store(&e->cert_not_after[i], na);
    if (na) warn_if_near(g_which[i], f, na);
  }
}

void rly_certs_metrics_text(rly_edge *e, cm_buf *b) {
  static const char help[] = "When each certificate in use ends (the earliest notAfter of its "
                             "file, Unix seconds).";
  bool first = true;
  for (int i = 0; i < RLY_CERT_N; i++) {
    int64_t na = atomic_load(&e->cert_not_after[i]);
    if (!na) continue;
    const char *const labels[][2] = {{"which", g_which[i]}};
    rly_metric_labeled(b, "certificate_not_after_seconds", first ? help : NULL, false, labels, 1,
                       (uint64_t)na);
    first = false;
  }
}

static void on_daily(uv_timer_t *t) {
  rly_edge *e = t->data;
  rly_certs_check(e, e->cfg);
}

/* ---- the swap ---------------------------------------------------------------------- */

static void retire(reload_msg *r) {
  if (r->old_free) r->old_free(r->old_cfg);
  cm_tls_ctx_free(r->old_tls);
  free(r);
}

/* Run on each worker's loop after the swap: past it, the worker loads
 * only the new pointers. */
typedef struct pass_msg {
  rly_msg msg;
  reload_msg *r;
} pass_msg;

static void pass_run(rly_msg *m) {
  pass_msg *p = (pass_msg *)m;
  reload_msg *r = p->r;
  free(p);
  if (atomic_fetch_sub(&r->left, 1) == 1) retire(r);
}

/* Every worker posted to; one that cannot take it (shutting down) counts
 * as passed: it runs no callback of ours any more. */
static void await_workers(reload_msg *r) {
  rly_edge *e = r->e;
  atomic_store(&r->left, e->nworkers + 1);
  for (size_t i = 0; i < e->nworkers; i++) {
    pass_msg *p = calloc(1, sizeof *p);
    if (p) {
      p->r = r;
      p->msg.run = pass_run;
      p->msg.drop = pass_run;
      if (rly_mailbox_post(e->workers[i]->inbox, &p->msg, true)) continue;
      free(p);
    }
    atomic_fetch_sub(&r->left, 1);
  }
  if (atomic_fetch_sub(&r->left, 1) == 1) retire(r);
}

static bool same(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* What the OIDC verifier is built from. */
static bool oidc_changed(const rly_config *a, const rly_config *b) {
  return !same(a->oidc_issuer, b->oidc_issuer) || !same(a->oidc_audience, b->oidc_audience) ||
         !same(a->oidc_ca, b->oidc_ca) || !same(a->client_id_hint, b->client_id_hint) ||
         a->jwt_leeway_ms != b->jwt_leeway_ms || a->jwks_refresh_ms != b->jwks_refresh_ms ||
         a->jwks_min_refetch_ms != b->jwks_min_refetch_ms ||
         a->call_timeout_ms != b->call_timeout_ms;
}

/* The OIDC provider's CA must load (a verifier is built on the control
 * thread, after the check). */
static int check_oidc(const rly_config *cfg, char *err, size_t errlen) {
  if (cfg->no_auth) return 0;
  if (!cfg->oidc_issuer || !cfg->oidc_audience) {
    snprintf(err, errlen, "oidc-issuer/oidc-audience: the admin API needs both");
    return -EINVAL;
  }
  cm_tls_config tc;
  cm_tls_config_init(&tc);
  tc.ca_file = cfg->oidc_ca;
  tc.system_ca = cfg->oidc_ca == NULL;
  char why[300];
  cm_tls_ctx *t = cm_tls_ctx_new_client(&tc, why, sizeof why);
  if (!t) {
    snprintf(err, errlen, "oidc-ca: %s", why);
    return -EINVAL;
  }
  cm_tls_ctx_free(t);
  return 0;
}

static void run_swap(rly_msg *m) {
  reload_msg *r = (reload_msg *)m;
  rly_edge *e = r->e;
  rly_reloads *rs = e->reloads;
  const rly_config *cfg = r->cfg;
  char err[400];
  if (oidc_changed(e->cfg, cfg) && rly_control_replace_auth(e->ctl, cfg, err, sizeof err) != 0)
    cm_log(CM_LOG_ERROR, "auth", "OIDC verifier not replaced; the previous one stays",
           CM_S("error", err));
  r->old_cfg = rs->owned; /* the first settings are the caller's: not ours to free */
  r->old_free = rs->cfg_free;
  rs->owned = r->cfg;
  rs->cfg_free = r->cfg_free;
  r->old_tls = atomic_exchange(&e->tls, r->tls);
  atomic_store(&e->cfg, cfg);
  rly_control_set_tls(e->ctl, r->tunnel_tls);
  atomic_store(&e->max_sessions, (uint64_t)cfg->max_sessions);
  atomic_store(&e->max_message, cfg->max_message ? (uint64_t)cfg->max_message : 64u << 20);
  atomic_store(&e->peer_wait_ms, (uint64_t)cfg->peer_wait_ms);
  cm_log_level lvl;
  if (cm_log_level_parse(cfg->log_level, &lvl) == 0) cm_log_set_level(lvl);
  rly_certs_check(e, cfg);
  cm_log(CM_LOG_INFO, "relay", "settings reloaded", CM_B("tls", r->tls != NULL),
         CM_B("tunnel_tls", r->tunnel_tls != NULL), CM_I("cors_origins", cfg->cors_origins.n),
         CM_I("max_connections", cfg->max_connections),
         CM_I("max_conns_per_ip", cfg->max_conns_per_ip), CM_S("log_level", cfg->log_level));
  await_workers(r);
}

static void drop_swap(rly_msg *m) {
  reload_msg *r = (reload_msg *)m;
  cm_tls_ctx_free(r->tls);
  cm_tls_ctx_free(r->tunnel_tls);
  if (r->cfg_free) r->cfg_free(r->cfg);
  free(r);
}

int rly_reload(rly_edge *e, rly_config *cfg, void (*cfg_free)(rly_config *cfg), char *err,
               size_t errlen) {
  if (!e->reloads || !e->ctl) {
    snprintf(err, errlen, "the relay is not running");
    return -EAGAIN;
  }
  reload_msg *r = calloc(1, sizeof *r);
  if (!r) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  int rc = rly_public_tls_new(cfg, &r->tls, err, errlen);
  if (rc == 0) rc = rly_control_tls_new(cfg, &r->tunnel_tls, err, errlen);
  if (rc == 0) rc = check_oidc(cfg, err, errlen);
  if (rc == 0 && cfg->log_level) {
    cm_log_level lvl;
    if (cm_log_level_parse(cfg->log_level, &lvl) != 0) {
      snprintf(err, errlen, "log-level: must be debug, info, warn or error");
      rc = -EINVAL;
    }
  }
  if (rc != 0) {
    cm_tls_ctx_free(r->tls);
    cm_tls_ctx_free(r->tunnel_tls);
    free(r);
    return rc;
  }
  r->e = e;
  r->cfg = cfg;
  r->cfg_free = cfg_free;
  r->msg.run = run_swap;
  r->msg.drop = drop_swap; /* shut down meanwhile: nothing changed */
  if (!rly_control_post(e->ctl, &r->msg, true)) {
    r->cfg_free = NULL; /* refused: cfg stays the caller's */
    drop_swap(&r->msg);
    snprintf(err, errlen, "the relay is shutting down");
    return -EAGAIN;
  }
  return 0;
}

/* ---- life ---------------------------------------------------------------------------- */

int rly_reload_init(rly_edge *e, uv_loop_t *loop) {
  rly_reloads *rs = calloc(1, sizeof *rs);
  if (!rs) return -ENOMEM;
  int rc = uv_timer_init(loop, &rs->daily);
  if (rc != 0) {
    free(rs);
    return rc;
  }
  rs->daily.data = e;
  rs->timer_on = true;
  uv_timer_start(&rs->daily, on_daily, DAY_MS, DAY_MS);
  e->reloads = rs;
  rly_certs_check(e, e->cfg);
  return 0;
}

void rly_reload_stop(rly_edge *e) {
  if (e->reloads && e->reloads->timer_on) {
    e->reloads->timer_on = false;
    uv_close((uv_handle_t *)&e->reloads->daily, NULL);
  }
}

void rly_reload_free(rly_edge *e) {
  rly_reloads *rs = e->reloads;
  if (!rs) return;
  if (rs->owned && rs->cfg_free) rs->cfg_free(rs->owned);
  free(rs);
  e->reloads = NULL;
}
