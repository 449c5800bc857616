/*
 * fleet.c — the parts of a fleet of controllers that need no I/O: where a
 * new session is placed, the batch that coalesces relay events before they
 * are written to a shared store, and the Redis address.  See store.h.
 */
#include "controller-stub/store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- placement ----------------------------------------------------------------------- */

/* Is a better than b for a new session?  Lower load; then the relay the
 * request came through (its URLs are the ones the caller already uses);
 * then the name that sorts first, so equal relays are chosen the same way
 * by every controller. */
static bool better(const ctl_relay_view *a, const ctl_relay_view *b, const char *asker) {
  if (a->load != b->load) return a->load < b->load;
  bool aa = strcmp(a->node, asker) == 0, ba = strcmp(b->node, asker) == 0;
  if (aa != ba) return aa;
  return strcmp(a->node, b->node) < 0;
}

int ctl_place(const ctl_relay_view *view, size_t n, const char *want_relay, const char *want_region,
              const char *asker) {
  if (!asker) asker = "";
  if (want_relay && want_relay[0]) {
    for (size_t i = 0; i < n; i++)
      if (strcmp(view[i].node, want_relay) == 0) return (int)i;
    return CTL_PLACE_ENORELAY;
  }
  bool by_region = want_region && want_region[0];
  int best = -1;
  for (size_t i = 0; i < n; i++) {
    if (by_region && strcmp(view[i].region, want_region) != 0) continue;
    if (best < 0 || better(&view[i], &view[best], asker)) best = (int)i;
  }
  if (best < 0 && by_region) return CTL_PLACE_ENOREGION;
  return best;
}

/* ---- the event batch ----------------------------------------------------------------- */

static uint64_t batch_hash(const char *id) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a: ids are random */
  for (; *id; id++)
    h = (h ^ (uint8_t)*id) * 0x100000001b3ull;
  return h;
}

int ctl_batch_init(ctl_batch *b, size_t max) {
  memset(b, 0, sizeof *b);
  b->max = max ? max : 1;
  b->nbuckets = 16;
  while (b->nbuckets < b->max)
    b->nbuckets *= 2;
  b->ents = calloc(b->max, sizeof *b->ents);
  b->buckets = calloc(b->nbuckets, sizeof *b->buckets);
  if (!b->ents || !b->buckets) {
    ctl_batch_free(b);
    return -ENOMEM;
  }
  return 0;
}

void ctl_batch_free(ctl_batch *b) {
  free(b->ents);
  free(b->buckets);
  memset(b, 0, sizeof *b);
}

void ctl_batch_clear(ctl_batch *b) {
  memset(b->buckets, 0, b->nbuckets * sizeof *b->buckets);
  b->n = 0;
}

static ctl_batch_ent *batch_find(const ctl_batch *b, const char *id) {
  ctl_batch_ent *e = b->buckets[batch_hash(id) & (b->nbuckets - 1)];
  while (e && strcmp(e->id, id) != 0)
    e = e->next;
  return e;
}

bool ctl_batch_has(const ctl_batch *b, const char *id) { return b->n && batch_find(b, id); }

static int batch_get(ctl_batch *b, const char *id, ctl_batch_ent **out) {
  if (!id || strlen(id) != CM_TOKEN_LEN) return -EINVAL;
  ctl_batch_ent *e = batch_find(b, id);
  if (!e) {
    if (b->n == b->max) return -ENOSPC;
    e = &b->ents[b->n++];
    memset(e, 0, sizeof *e);
    memcpy(e->id, id, CM_TOKEN_LEN + 1);
    size_t k = batch_hash(id) & (b->nbuckets - 1);
    e->next = b->buckets[k];
    b->buckets[k] = e;
  }
  *out = e;
  return 0;
}

int ctl_batch_slot(ctl_batch *b, const char *id, int role, bool attach, const char *node) {
  if (role != CTL_REG_ROLE_INITIATOR && role != CTL_REG_ROLE_RESPONDER) return -EINVAL;
  if (!node || !ctl_text_ok(node, CTL_REG_NODE_MAX)) return -EINVAL;
  ctl_batch_ent *e;
  int rc = batch_get(b, id, &e);
  if (rc != 0) return rc;
  ctl_batch_slot_state *sl = &e->slot[role - 1];
  if (attach) {
    sl->op = CTL_BATCH_ATTACH;
    sl->forced = false;
  } else {
    /* attach then detach by the same relay in one batch: the slot ends
     * free whoever held it before.  A detach by another relay is stale
     * (the peer already moved) and only clears its own claim. */
    bool after_attach = sl->op == CTL_BATCH_ATTACH && strcmp(sl->node, node) == 0;
    if (sl->op == CTL_BATCH_ATTACH && !after_attach) return 0;
    sl->forced = after_attach || (sl->op == CTL_BATCH_DETACH && sl->forced);
    sl->op = CTL_BATCH_DETACH;
  }
  snprintf(sl->node, sizeof sl->node, "%s", node);
  return 0;
}

int ctl_batch_stats(ctl_batch *b, const char *id, uint64_t epoch, uint64_t in, uint64_t out,
                    int64_t last_activity) {
  ctl_batch_ent *e;
  int rc = batch_get(b, id, &e);
  if (rc != 0) return rc;
  /* A fifth epoch in one batch would fold one away, which the store
   * cannot undo: refuse it, so the caller writes the batch first. */
  bool known = false;
  for (size_t i = 0; i < e->ctr.n; i++)
    known |= e->ctr.ep[i].epoch == epoch;
  if (epoch && !known && e->ctr.n == CTL_REG_EPOCHS) return -ENOSPC;
  ctl_reg_counters_add(&e->ctr, epoch, in, out);
  e->last_activity = CM_MAX(e->last_activity, last_activity);
  return 0;
}

/* ---- the Redis address --------------------------------------------------------------- */

#define REDIS_DEFAULT_PORT 6379
#define REDIS_MAX_DB       1000

static int url_error(char *err, size_t errlen, const char *msg) {
  snprintf(err, errlen, "store: %s", msg);
  return -EINVAL;
}

static bool name_ok(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] <= 0x20 || s[i] >= 0x7f) return false;
  return n > 0;
}

int ctl_redis_url_parse(const char *url, ctl_redis_url *out, char *err, size_t errlen) {
  static const char scheme[] = "redis://";
  memset(out, 0, sizeof *out);
  out->port = REDIS_DEFAULT_PORT;
  if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0)
    return url_error(err, errlen, "a Redis store is redis://[USER@]HOST[:PORT][/DB]");
  const char *p = url + sizeof scheme - 1;
  const char *end = p + strcspn(p, "/");
  const char *at = memchr(p, '@', (size_t)(end - p));
  if (at) {
    if (memchr(p, ':', (size_t)(at - p)))
      return url_error(err, errlen,
                       "a password in the store URL would show in the process list; "
                       "give it in a file (--store-password-file) or RELAY_STORE_PASSWORD");
    if ((size_t)(at - p) >= sizeof out->user || !name_ok(p, (size_t)(at - p)))
      return url_error(err, errlen, "the store URL's user name is malformed");
    memcpy(out->user, p, (size_t)(at - p));
    p = at + 1;
  }
  char hostport[300];
  if ((size_t)(end - p) >= sizeof hostport || end == p)
    return url_error(err, errlen, "the store URL needs a host");
  memcpy(hostport, p, (size_t)(end - p));
  hostport[end - p] = '\0';
  /* No port ("host", "[::1]"): Redis's own. */
  size_t hl = strlen(hostport);
  if (!strchr(hostport, ':') || hostport[hl - 1] == ']')
    snprintf(hostport + strlen(hostport), sizeof hostport - strlen(hostport), ":%d",
             REDIS_DEFAULT_PORT);
  if (cm_parse_hostport(hostport, NULL, out->host, sizeof out->host, &out->port) != 0 ||
      !out->host[0] || out->port == 0)
    return url_error(err, errlen, "the store URL's host or port is malformed");
  if (*end == '/' && end[1]) {
    char *stop;
    errno = 0;
    long db = strtol(end + 1, &stop, 10);
    if (errno || *stop || end[1] < '0' || end[1] > '9' || db > REDIS_MAX_DB)
      return url_error(err, errlen, "the store URL's database must be a number");
    out->db = (int)db;
  }
  return 0;
}
