/*
 * store_journal.c — the default store: the registry of registry.h in this
 * process, durable through its journal.  Every operation answers before it
 * returns.  One controller owns it (the state directory is locked), so
 * there is no one to hand kicks to and no registry id to tell relays.
 */
#include "controller-stub/store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PAGE 1000

typedef struct jstore {
  ctl_store base; /* first */
  ctl_registry *reg;
} jstore;

static ctl_registry *reg_of(ctl_store *st) { return ((jstore *)st)->reg; }

static void j_create(ctl_store *st, int64_t now, uint32_t ttl_s, uint32_t peer_wait_s,
                     const char *node, const char *url, const char *target, ctl_store_created_cb cb,
                     void *ud) {
  ctl_reg_created c;
  int rc = ctl_reg_create_target(reg_of(st), now, ttl_s, peer_wait_s, node, url, target, &c);
  cb(ud, rc, &c);
  ctl_reg_created_wipe(&c);
}

static void j_validate(ctl_store *st, int64_t now, const char *id, const char *token, int role,
                       const char *node, ctl_store_decided_cb cb, void *ud) {
  ctl_reg_decision d;
  int rc = ctl_reg_validate(reg_of(st), now, id, token, role, node, &d);
  cb(ud, rc, &d);
}

static void j_get(ctl_store *st, int64_t now, const char *id, ctl_store_status_cb cb, void *ud) {
  ctl_reg_status s;
  int rc = ctl_reg_get(reg_of(st), now, id, &s);
  cb(ud, rc, rc == 0 ? &s : NULL);
}

typedef struct page_acc {
  ctl_reg_status *items;
  size_t n, cap;
} page_acc;

static void page_one(void *ud, const ctl_reg_status *s) {
  page_acc *a = ud;
  if (a->n < a->cap) a->items[a->n++] = *s;
}

static void j_list_page(ctl_store *st, int64_t now, const char *token, size_t max,
                        ctl_store_page_cb cb, void *ud) {
  page_acc a = {.cap = CM_MIN(max ? max : MAX_PAGE, (size_t)MAX_PAGE)};
  a.items = calloc(a.cap, sizeof *a.items);
  char next[CTL_REG_PAGE_TOKEN_MAX] = "";
  int rc = a.items ? ctl_reg_list_page(reg_of(st), now, token, a.cap, page_one, &a, next) : -ENOMEM;
  cb(ud, rc < 0 ? rc : 0, a.items, a.n, next);
  free(a.items);
}

static void j_del(ctl_store *st, int64_t now, const char *id, ctl_store_status_cb cb, void *ud) {
  ctl_reg_status closed;
  int rc = ctl_reg_delete_status(reg_of(st), now, id, &closed);
  cb(ud, rc, rc == 0 ? &closed : NULL);
}

static int j_slot(ctl_store *st, int64_t now, const char *id, int role, bool attach,
                  const char *node) {
  return attach ? ctl_reg_on_attach(reg_of(st), now, id, role, node)
                : ctl_reg_on_detach(reg_of(st), now, id, role, node);
}

static void j_stats(ctl_store *st, int64_t now, const char *id, uint64_t epoch, uint64_t in,
                    uint64_t out, int64_t last_activity) {
  ctl_reg_on_stats(reg_of(st), now, id, epoch, in, out, last_activity);
}

static void j_relay_up(ctl_store *st, const char *node, const char *url, const char *region) {
  ctl_reg_set_relay_url(reg_of(st), node, url);
  ctl_reg_set_relay_region(reg_of(st), node, region);
  ctl_reg_set_relay_live(reg_of(st), node, true);
}

static void j_relay_down(ctl_store *st, const char *node) {
  ctl_reg_set_relay_live(reg_of(st), node, false);
}

static size_t j_relays(ctl_store *st, ctl_relay_view *out, size_t max) {
  return ctl_reg_relays(reg_of(st), out, max);
}

static void j_publish_kick(ctl_store *st, const char *id, const char *node, const char *reason) {
  CM_UNUSED(st);
  cm_log(CM_LOG_DEBUG, "controller", "no live link to kick on", CM_S("session", id),
         CM_S("relay", node), CM_S("reason", reason));
}

static void on_expired(void *ud, const char *id, const char *node) {
  ctl_store *st = ud;
  st->owner.kick(st->owner.ud, id, node, "session expired", true);
}

static void j_tick(ctl_store *st, int64_t now_ms) {
  ctl_reg_reap(reg_of(st), now_ms / 1000, on_expired, st);
}

static const char *j_registry_id(const ctl_store *st) {
  CM_UNUSED(st);
  return "";
}

static size_t j_count(const ctl_store *st) { return ctl_reg_count(((const jstore *)st)->reg); }

static void j_close(ctl_store *st, void (*done)(void *ud), void *ud) {
  CM_UNUSED(st);
  if (done) done(ud);
}

static void j_free(ctl_store *st) {
  if (!st) return;
  ctl_registry_close(reg_of(st));
  free(st);
}

static const ctl_store_ops g_ops = {
    .create = j_create,
    .validate = j_validate,
    .get = j_get,
    .list_page = j_list_page,
    .del = j_del,
    .slot = j_slot,
    .stats = j_stats,
    .relay_up = j_relay_up,
    .relay_down = j_relay_down,
    .relays = j_relays,
    .publish_kick = j_publish_kick,
    .tick = j_tick,
    .registry_id = j_registry_id,
    .count = j_count,
    .close = j_close,
    .free = j_free,
};

ctl_store *ctl_store_journal_new(const char *state_dir, const ctl_registry_config *cfg,
                                 const ctl_store_owner *owner, char *err, size_t errlen) {
  jstore *j = calloc(1, sizeof *j);
  if (!j) {
    snprintf(err, errlen, "store: out of memory");
    return NULL;
  }
  j->reg = ctl_registry_open(state_dir, cfg, err, errlen);
  if (!j->reg) {
    free(j);
    return NULL;
  }
  j->base.ops = &g_ops;
  j->base.owner = *owner;
  return &j->base;
}
