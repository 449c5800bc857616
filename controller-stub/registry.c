/*
 * registry.c — the session registry's in-memory state and its rules: minting,
 * slot validation, relay events, expiry.  Every change that must outlive a
 * restart is first made durable by journal.c and only then applied in
 * memory, so a failed write leaves memory and disk agreeing.  See
 * registry.h for the semantics.
 */
#include "controller-stub/registry.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TTL_S           3600u
#define DEFAULT_PEER_WAIT_S     120u
#define DEFAULT_MAX_TTL_S       86400u
#define DEFAULT_MAX_PEER_WAIT_S 3600u
#define DEFAULT_MAX_SESSIONS    100000u
#define DEFAULT_COMPACT_BYTES   (4u << 20)
#define REAP_BATCH              256 /* sessions per journal write while reaping */

static const char *const log_comp = "registry";

typedef struct session {
  char id[CM_TOKEN_LEN + 1];
  uint8_t hash[2][32]; /* SHA-256 of the initiator [0] and responder [1] tokens */
  int64_t created_at, expires_at, last_activity;
  uint32_t peer_wait;
  uint64_t seq; /* creation order, for page tokens */
  ctl_reg_counters ctr;
  char *node, *url;     /* assignment: the relay serving the session */
  char *target;         /* a target session's "host:port"; NULL: none */
  char *slot_node[2];   /* relay holding each attached slot; NULL when free */
  bool ever_attached;   /* a peer came since the session was placed */
  bool counted;         /* counted in its relay's load (see recount) */
  struct session *next; /* hash chain */
  size_t heap_idx;
  cm_list link; /* creation order */
} session;

typedef struct relay_ent {
  char *node, *url;
  char region[CTL_REGION_LABEL_MAX + 1];
  bool live;
  uint64_t load; /* sessions counted for placement (see recount) */
} relay_ent;

struct ctl_registry {
  ctl_registry_config cfg;
  session **buckets;
  size_t nbuckets, count;
  session **heap; /* min-heap on expires_at */
  size_t heap_len, heap_cap;
  cm_list all;
  relay_ent relays[CTL_REG_MAX_RELAYS];
  size_t nrelays;
  bool durable;
  uint64_t next_seq;
  ctl_journal j;
  uint64_t compact_after; /* after a failed compaction, wait for more growth */
};

/* ---- small helpers ---------------------------------------------------------- */

static void wipe(void *p, size_t n) { explicit_bzero(p, n); }

static bool id_ok(const char *id) {
  if (!id || strlen(id) != CM_TOKEN_LEN) return false;
  for (const char *p = id; *p; p++) {
    char c = *p;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_'))
      return false;
  }
  return true;
}

static bool same(const char *a, const char *b) { return strcmp(a ? a : "", b ? b : "") == 0; }

const char *ctl_reg_state_name(ctl_reg_state s) {
  switch (s) {
  case CTL_REG_PENDING: return "pending";
  case CTL_REG_HALF_OPEN: return "half_open";
  case CTL_REG_OPEN: return "open";
  case CTL_REG_CLOSED: return "closed";
  }
  return "unknown";
}

static ctl_reg_state state_of(const session *s) {
  int n = (s->slot_node[0] != NULL) + (s->slot_node[1] != NULL);
  return n == 2 ? CTL_REG_OPEN : n == 1 ? CTL_REG_HALF_OPEN : CTL_REG_PENDING;
}

static void status_of(const session *s, ctl_reg_status *st) {
  memset(st, 0, sizeof *st);
  memcpy(st->id, s->id, sizeof st->id);
  st->state = state_of(s);
  st->created_at = s->created_at;
  st->expires_at = s->expires_at;
  st->last_activity = s->last_activity;
  st->peer_wait_s = s->peer_wait;
  ctl_reg_counters_total(&s->ctr, &st->bytes_in, &st->bytes_out);
  st->initiator_connected = s->slot_node[0] != NULL;
  st->responder_connected = s->slot_node[1] != NULL;
  snprintf(st->relay_node, sizeof st->relay_node, "%s", s->node);
  snprintf(st->public_url, sizeof st->public_url, "%s", s->url);
  snprintf(st->target, sizeof st->target, "%s", s->target ? s->target : "");
}

static void session_free(session *s) {
  if (!s) return;
  free(s->node);
  free(s->url);
  free(s->target);
  free(s->slot_node[0]);
  free(s->slot_node[1]);
  wipe(s, sizeof *s); /* token hashes included: nothing secret lingers */
  free(s);
}

/* Copies url without trailing slashes, so "<url>/relay/<id>" has one. */
static char *url_dup(const char *url) {
  size_t n = strlen(url);
  while (n > 0 && url[n - 1] == '/')
    n--;
  return strndup(url, n);
}

static session *session_new(const char *id, const char *node, const char *url) {
  session *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  snprintf(s->id, sizeof s->id, "%s", id);
  s->node = strdup(node);
  s->url = url_dup(url);
  cm_list_init(&s->link);
  if (!s->node || !s->url) {
    session_free(s);
    return NULL;
  }
  return s;
}

/* ---- hash table: chained, power-of-two buckets, load factor <= 1 --------- */

static uint64_t id_hash(const char *id) {
  /* Ids are minted from the CSPRNG, so FNV-1a spreads them well; a caller
   * can look up any string but cannot choose what is stored. */
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *id; id++)
    h = (h ^ (uint8_t)*id) * 0x100000001b3ull;
  return h;
}

static session *table_find(const ctl_registry *reg, const char *id) {
  if (!id_ok(id)) return NULL;
  session *s = reg->buckets[id_hash(id) & (reg->nbuckets - 1)];
  while (s && strcmp(s->id, id) != 0)
    s = s->next;
  return s;
}

/* Grows the table before an insert; on allocation failure keeps the old
 * table (longer chains, still correct). */
static void table_reserve(ctl_registry *reg) {
  if (reg->count + 1 <= reg->nbuckets) return;
  size_t n = reg->nbuckets * 2;
  session **b = calloc(n, sizeof *b);
  if (!b) return;
  for (size_t i = 0; i < reg->nbuckets; i++) {
    session *s = reg->buckets[i];
    while (s) {
      session *next = s->next;
      size_t k = id_hash(s->id) & (n - 1);
      s->next = b[k];
      b[k] = s;
      s = next;
    }
  }
  free(reg->buckets);
  reg->buckets = b;
  reg->nbuckets = n;
}

static void table_insert(ctl_registry *reg, session *s) {
  size_t k = id_hash(s->id) & (reg->nbuckets - 1);
  s->next = reg->buckets[k];
  reg->buckets[k] = s;
}

static void table_remove(ctl_registry *reg, session *s) {
  session **pp = &reg->buckets[id_hash(s->id) & (reg->nbuckets - 1)];
  while (*pp && *pp != s)
    pp = &(*pp)->next;
  if (*pp) *pp = s->next;
  s->next = NULL;
}

/* ---- min-heap on expires_at ------------------------------------------------ */

static void heap_set(ctl_registry *reg, size_t i, session *s) {
  reg->heap[i] = s;
  s->heap_idx = i;
}

static void heap_up(ctl_registry *reg, size_t i) {
  session *s = reg->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (reg->heap[p]->expires_at <= s->expires_at) break;
    heap_set(reg, i, reg->heap[p]);
    i = p;
  }
  heap_set(reg, i, s);
}

static void heap_down(ctl_registry *reg, size_t i) {
  session *s = reg->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= reg->heap_len) break;
    if (c + 1 < reg->heap_len && reg->heap[c + 1]->expires_at < reg->heap[c]->expires_at) c++;
    if (s->expires_at <= reg->heap[c]->expires_at) break;
    heap_set(reg, i, reg->heap[c]);
    i = c;
  }
  heap_set(reg, i, s);
}

static int heap_reserve(ctl_registry *reg) {
  if (reg->heap_len < reg->heap_cap) return 0;
  size_t n = reg->heap_cap ? reg->heap_cap * 2 : 64;
  session **h = realloc(reg->heap, n * sizeof *h);
  if (!h) return -ENOMEM;
  reg->heap = h;
  reg->heap_cap = n;
  return 0;
}

static void heap_remove(ctl_registry *reg, session *s) {
  size_t i = s->heap_idx;
  session *last = reg->heap[--reg->heap_len];
  if (i == reg->heap_len) return;
  heap_set(reg, i, last);
  heap_up(reg, i);
  heap_down(reg, last->heap_idx);
}

/* ---- relay load -------------------------------------------------------------- */

static relay_ent *relay_find(const ctl_registry *reg, const char *node);
static relay_ent *relay_get(ctl_registry *reg, const char *node);

/* A relay's load, for placement: the sessions assigned to it that hold a
 * peer now, or whose first peer has not come yet (just placed there).  A
 * session whose peers came and left waits on no relay in particular. */
static void load_move(ctl_registry *reg, session *s, bool counted) {
  if (s->counted == counted || !s->node[0]) return; /* unassigned: no relay's load */
  relay_ent *r = counted ? relay_get(reg, s->node) : relay_find(reg, s->node);
  if (!r) return; /* past CTL_REG_MAX_RELAYS: not counted */
  if (counted)
    r->load++;
  else if (r->load > 0)
    r->load--;
  s->counted = counted;
}

static void recount(ctl_registry *reg, session *s) {
  load_move(reg, s, s->slot_node[0] || s->slot_node[1] || !s->ever_attached);
}

/* ---- membership: table + heap + creation list, together ----------------- */

/* Reserves everything an insert needs, so that after a durable write the
 * insert itself cannot fail. */
static int reserve_insert(ctl_registry *reg) {
  table_reserve(reg);
  return heap_reserve(reg);
}

static void insert(ctl_registry *reg, session *s) {
  recount(reg, s);
  table_insert(reg, s);
  heap_set(reg, reg->heap_len++, s);
  heap_up(reg, s->heap_idx);
  cm_list_push_back(&reg->all, &s->link);
  s->seq = ++reg->next_seq;
  reg->count++;
}

static void unlink_session(ctl_registry *reg, session *s) {
  load_move(reg, s, false);
  table_remove(reg, s);
  heap_remove(reg, s);
  cm_list_remove(&s->link);
  reg->count--;
}

/* Unexpired session by id, or NULL. */
static session *find_live(const ctl_registry *reg, int64_t now, const char *id) {
  session *s = table_find(reg, id);
  return (s && now < s->expires_at) ? s : NULL;
}

/* ---- durability ------------------------------------------------------------- */

static void jrec_create(const session *s, ctl_jrec *r) {
  memset(r, 0, sizeof *r);
  r->type = CTL_JREC_CREATE;
  memcpy(r->id, s->id, sizeof r->id);
  memcpy(r->hash_i, s->hash[0], 32);
  memcpy(r->hash_r, s->hash[1], 32);
  r->created = s->created_at;
  r->expires = s->expires_at;
  r->peer_wait = s->peer_wait;
  snprintf(r->node, sizeof r->node, "%s", s->node);
  snprintf(r->url, sizeof r->url, "%s", s->url);
  snprintf(r->target, sizeof r->target, "%s", s->target ? s->target : "");
}

static int fill_snapshot(void *ud, cm_buf *out, uint32_t *count) {
  ctl_registry *reg = ud;
  ctl_jrec r;
  for (cm_list *l = reg->all.next; l != &reg->all; l = l->next) {
    jrec_create(cm_container_of(l, session, link), &r);
    int rc = ctl_jrec_encode(out, &r);
    if (rc != 0) return rc;
    (*count)++;
  }
  return 0;
}

static void maybe_compact(ctl_registry *reg) {
  uint64_t limit = CM_MAX(reg->cfg.compact_bytes, reg->compact_after);
  if (!reg->durable || reg->j.size <= limit) return;
  if (ctl_journal_compact(&reg->j, fill_snapshot, reg) == 0)
    reg->compact_after = 0;
  else
    reg->compact_after = reg->j.size + reg->cfg.compact_bytes;
}

/* A journal broken by a failed fsync is first rewritten from memory. */
static int journal_append(ctl_registry *reg, const cm_buf *recs) {
  if (reg->j.broken) ctl_journal_compact(&reg->j, fill_snapshot, reg);
  return ctl_journal_append(&reg->j, recs);
}

/* Appends one record (durably); memory-only registries accept at once. */
static int journal_one(ctl_registry *reg, const ctl_jrec *r) {
  if (!reg->durable) return 0;
  cm_buf b;
  cm_buf_init(&b, 0);
  int rc = ctl_jrec_encode(&b, r);
  rc = rc == 0 ? journal_append(reg, &b) : CTL_REG_EIO;
  cm_buf_free(&b);
  return rc;
}

static int journal_id(ctl_registry *reg, uint8_t type, const char *id) {
  ctl_jrec r = {.type = type};
  memcpy(r.id, id, sizeof r.id);
  return journal_one(reg, &r);
}

/* ---- replay ------------------------------------------------------------------ */

static int replay_create(ctl_registry *reg, const ctl_jrec *r) {
  if (table_find(reg, r->id)) return 1; /* a second CREATE of an id: corrupt */
  session *s = session_new(r->id, r->node, r->url);
  if (!s || reserve_insert(reg) != 0) {
    session_free(s);
    return -ENOMEM;
  }
  memcpy(s->hash[0], r->hash_i, 32);
  memcpy(s->hash[1], r->hash_r, 32);
  s->created_at = s->last_activity = r->created;
  s->expires_at = r->expires;
  s->peer_wait = r->peer_wait;
  if (r->target[0] && !(s->target = strdup(r->target))) {
    session_free(s);
    return -ENOMEM;
  }
  insert(reg, s);
  return 0;
}

static int replay_reassign(ctl_registry *reg, const ctl_jrec *r) {
  session *s = table_find(reg, r->id);
  if (!s) return 0;
  char *node = strdup(r->node), *url = url_dup(r->url);
  if (!node || !url) {
    free(node);
    free(url);
    return -ENOMEM;
  }
  bool counted = s->counted;
  load_move(reg, s, false);
  free(s->node);
  free(s->url);
  s->node = node;
  s->url = url;
  load_move(reg, s, counted);
  return 0;
}

/* Applies a record read back from disk: 0, 1 when it cannot be right (the
 * journal is cut there), or -errno to fail the open. */
static int replay_apply(void *ud, const ctl_jrec *r) {
  ctl_registry *reg = ud;
  session *s;
  switch (r->type) {
  case CTL_JREC_CREATE: return replay_create(reg, r);
  case CTL_JREC_REASSIGN: return replay_reassign(reg, r);
  case CTL_JREC_DELETE:
  case CTL_JREC_EXPIRE:
    /* An id we do not hold is harmless: the outcome is the same. */
    if ((s = table_find(reg, r->id)) != NULL) {
      unlink_session(reg, s);
      session_free(s);
    }
    return 0;
  default: return 1;
  }
}

/* ---- open / close ---------------------------------------------------------- */

void ctl_registry_config_defaults(ctl_registry_config *cfg) {
  *cfg = (ctl_registry_config){
      .default_ttl_s = DEFAULT_TTL_S,
      .default_peer_wait_s = DEFAULT_PEER_WAIT_S,
      .max_ttl_s = DEFAULT_MAX_TTL_S,
      .max_peer_wait_s = DEFAULT_MAX_PEER_WAIT_S,
      .max_sessions = DEFAULT_MAX_SESSIONS,
      .max_message_bytes = 0,
      .compact_bytes = DEFAULT_COMPACT_BYTES,
  };
}

int ctl_registry_config_resolve(const ctl_registry_config *in, ctl_registry_config *out, char *err,
                                size_t errlen) {
  ctl_registry_config d;
  ctl_registry_config_defaults(&d);
  *out = in ? *in : d;
  if (!out->default_ttl_s) out->default_ttl_s = d.default_ttl_s;
  if (!out->default_peer_wait_s) out->default_peer_wait_s = d.default_peer_wait_s;
  if (!out->max_ttl_s) out->max_ttl_s = CM_MAX(d.max_ttl_s, out->default_ttl_s);
  if (!out->max_peer_wait_s)
    out->max_peer_wait_s = CM_MAX(d.max_peer_wait_s, out->default_peer_wait_s);
  if (!out->max_sessions) out->max_sessions = d.max_sessions;
  if (!out->compact_bytes) out->compact_bytes = d.compact_bytes;
  if (out->default_ttl_s > out->max_ttl_s || out->default_peer_wait_s > out->max_peer_wait_s) {
    snprintf(err, errlen, "registry: a default TTL or peer_wait exceeds its maximum");
    return -EINVAL;
  }
  return 0;
}

ctl_registry *ctl_registry_open(const char *state_dir, const ctl_registry_config *cfg, char *err,
                                size_t errlen) {
  if (errlen) err[0] = '\0';
  ctl_registry *reg = calloc(1, sizeof *reg);
  if (!reg) {
    snprintf(err, errlen, "registry: out of memory");
    return NULL;
  }
  reg->j.fd = reg->j.lock_fd = -1;
  cm_list_init(&reg->all);
  reg->nbuckets = 64;
  reg->buckets = calloc(reg->nbuckets, sizeof *reg->buckets);
  if (!reg->buckets) snprintf(err, errlen, "registry: out of memory");
  int rc = reg->buckets ? ctl_registry_config_resolve(cfg, &reg->cfg, err, errlen) : -ENOMEM;
  if (rc == 0 && state_dir) {
    reg->durable = true;
    rc = ctl_journal_open(&reg->j, state_dir, replay_apply, reg, err, errlen);
  }
  if (rc != 0) {
    ctl_registry_close(reg);
    return NULL;
  }
  maybe_compact(reg);
  cm_log(CM_LOG_INFO, log_comp, "registry open", CM_B("durable", reg->durable),
         CM_I("sessions", reg->count), CM_I("generation", reg->j.gen));
  return reg;
}

void ctl_registry_close(ctl_registry *reg) {
  if (!reg) return;
  for (cm_list *l = reg->all.next, *next; l != &reg->all; l = next) {
    next = l->next;
    session_free(cm_container_of(l, session, link));
  }
  cm_list_init(&reg->all);
  for (size_t i = 0; i < reg->nrelays; i++) {
    free(reg->relays[i].node);
    free(reg->relays[i].url);
  }
  if (reg->durable) ctl_journal_close(&reg->j);
  free(reg->buckets);
  free(reg->heap);
  free(reg);
}

size_t ctl_reg_count(const ctl_registry *reg) { return reg->count; }
uint64_t ctl_reg_journal_size(const ctl_registry *reg) { return reg->durable ? reg->j.size : 0; }
uint64_t ctl_reg_generation(const ctl_registry *reg) { return reg->durable ? reg->j.gen : 0; }

/* ---- create ------------------------------------------------------------------ */

int ctl_reg_create_args(const ctl_registry_config *cfg, int64_t now, uint32_t *ttl, uint32_t *pw,
                        const char *node, const char *url) {
  if (*ttl == 0) *ttl = cfg->default_ttl_s;
  if (*pw == 0) *pw = cfg->default_peer_wait_s;
  if (*ttl > cfg->max_ttl_s) return CTL_REG_ETTL;
  if (*pw > cfg->max_peer_wait_s) return CTL_REG_EPEERWAIT;
  if (!ctl_text_ok(node, CTL_REG_NODE_MAX) || !ctl_text_ok(url, CTL_REG_URL_MAX))
    return CTL_REG_EARG;
  if (now < 0 || now > INT64_MAX - (int64_t)*ttl) return CTL_REG_EARG;
  return 0;
}

/* A fresh id no session holds (a collision of 128 random bits is
 * practically impossible, but checking is free). */
static int mint_id(const ctl_registry *reg, char id[CM_TOKEN_LEN + 1]) {
  for (int tries = 0; tries < 4; tries++) {
    if (cm_random_token(id) != 0) return CTL_REG_ERANDOM;
    if (!table_find(reg, id)) return 0;
  }
  return CTL_REG_ERANDOM;
}

int ctl_reg_mint_tokens(ctl_reg_created *out, uint8_t hash[2][32]) {
  if (cm_random_token(out->initiator_token) != 0 || cm_random_token(out->responder_token) != 0)
    return CTL_REG_ERANDOM;
  cm_sha256(out->initiator_token, CM_TOKEN_LEN, hash[0]);
  cm_sha256(out->responder_token, CM_TOKEN_LEN, hash[1]);
  return 0;
}

void ctl_reg_created_urls(ctl_reg_created *out, const char *url, const char *id) {
  size_t n = strlen(url);
  while (n > 0 && url[n - 1] == '/')
    n--;
  snprintf(out->initiator_url, sizeof out->initiator_url, "%.*s/relay/%s", (int)n, url, id);
  snprintf(out->responder_url, sizeof out->responder_url, "%.*s/relay/%s", (int)n, url, id);
}

static void fill_created(const session *s, ctl_reg_created *out) {
  status_of(s, &out->status);
  ctl_reg_created_urls(out, s->url, s->id);
}

int ctl_reg_create(ctl_registry *reg, int64_t now, uint32_t ttl_s, uint32_t peer_wait_s,
                   const char *relay_node, const char *public_url, ctl_reg_created *out) {
  return ctl_reg_create_target(reg, now, ttl_s, peer_wait_s, relay_node, public_url, NULL, out);
}

int ctl_reg_create_target(ctl_registry *reg, int64_t now, uint32_t ttl_s, uint32_t peer_wait_s,
                          const char *relay_node, const char *public_url, const char *target,
                          ctl_reg_created *out) {
  memset(out, 0, sizeof *out);
  if (!relay_node) relay_node = "";
  if (!public_url) public_url = "";
  if (target && !target[0]) target = NULL;
  int rc = ctl_reg_create_args(&reg->cfg, now, &ttl_s, &peer_wait_s, relay_node, public_url);
  if (rc == 0 && reg->count >= reg->cfg.max_sessions) rc = CTL_REG_EFULL;
  if (rc == 0 && target && !ctl_text_ok(target, CTL_REG_TARGET_MAX)) rc = CTL_REG_EARG;
  char id[CM_TOKEN_LEN + 1];
  if (rc == 0) rc = mint_id(reg, id);
  if (rc != 0) return rc;
  session *s = session_new(id, relay_node, public_url);
  if (!s || reserve_insert(reg) != 0) {
    session_free(s);
    return -ENOMEM;
  }
  s->created_at = s->last_activity = now;
  s->expires_at = now + (int64_t)ttl_s;
  s->peer_wait = peer_wait_s;
  rc = target && !(s->target = strdup(target)) ? -ENOMEM : ctl_reg_mint_tokens(out, s->hash);
  ctl_jrec r;
  jrec_create(s, &r);
  if (rc == 0) rc = journal_one(reg, &r);
  wipe(&r, sizeof r);
  if (rc != 0) {
    session_free(s);
    ctl_reg_created_wipe(out);
    return rc;
  }
  insert(reg, s);
  fill_created(s, out);
  maybe_compact(reg);
  return 0;
}

void ctl_reg_created_wipe(ctl_reg_created *c) { wipe(c, sizeof *c); }

/* ---- relays ------------------------------------------------------------------- */

static relay_ent *relay_find(const ctl_registry *reg, const char *node) {
  if (!node) return NULL;
  for (size_t i = 0; i < reg->nrelays; i++) {
    if (strcmp(reg->relays[i].node, node) == 0) return (relay_ent *)&reg->relays[i];
  }
  return NULL;
}

/* Full, an entry of a relay that went and has no session counted on it
 * makes room: relays come back under new ids (a container's hostname), and
 * the table would otherwise fill with ones that are gone for good.  (A
 * session names its relay by id, so nothing points at the entry.) */
static relay_ent *relay_reclaim(ctl_registry *reg) {
  for (size_t i = 0; i < reg->nrelays; i++) {
    relay_ent *r = &reg->relays[i];
    if (r->live || r->load > 0) continue;
    free(r->node);
    free(r->url);
    memset(r, 0, sizeof *r);
    return r;
  }
  return NULL;
}

static relay_ent *relay_get(ctl_registry *reg, const char *node) {
  relay_ent *r = relay_find(reg, node);
  if (r) return r;
  bool fresh = reg->nrelays < CTL_REG_MAX_RELAYS;
  r = fresh ? &reg->relays[reg->nrelays] : relay_reclaim(reg);
  if (!r) return NULL;
  r->node = strdup(node);
  r->url = strdup("");
  if (!r->node || !r->url) {
    free(r->node);
    free(r->url);
    r->node = r->url = NULL;
    if (!fresh) *r = reg->relays[--reg->nrelays]; /* no hole where the reclaimed one was */
    return NULL;
  }
  if (fresh) reg->nrelays++;
  return r;
}

bool ctl_reg_relay_is_live(const ctl_registry *reg, const char *relay_node) {
  const relay_ent *r = relay_node ? relay_find(reg, relay_node) : NULL;
  return r && r->live;
}

/* A link going down takes its peers with it: their slots free up so they
 * can redial through another relay. */
static void clear_slots_of(ctl_registry *reg, const char *node) {
  for (cm_list *l = reg->all.next; l != &reg->all; l = l->next) {
    session *s = cm_container_of(l, session, link);
    for (int i = 0; i < 2; i++) {
      if (s->slot_node[i] && strcmp(s->slot_node[i], node) == 0) {
        free(s->slot_node[i]);
        s->slot_node[i] = NULL;
      }
    }
    recount(reg, s);
  }
}

int ctl_reg_set_relay_live(ctl_registry *reg, const char *relay_node, bool live) {
  if (!relay_node || !ctl_text_ok(relay_node, CTL_REG_NODE_MAX)) return -EINVAL;
  if (!live) {
    relay_ent *r = relay_find(reg, relay_node);
    if (r) r->live = false;
    clear_slots_of(reg, relay_node);
    return 0;
  }
  relay_ent *r = relay_get(reg, relay_node);
  if (!r) return -ENOSPC;
  r->live = true;
  return 0;
}

int ctl_reg_set_relay_url(ctl_registry *reg, const char *relay_node, const char *public_url) {
  if (!relay_node || !public_url || !ctl_text_ok(relay_node, CTL_REG_NODE_MAX) ||
      !ctl_text_ok(public_url, CTL_REG_URL_MAX))
    return -EINVAL;
  relay_ent *r = relay_get(reg, relay_node);
  if (!r) return -ENOSPC;
  char *url = url_dup(public_url);
  if (!url) return -ENOMEM;
  free(r->url);
  r->url = url;
  return 0;
}

int ctl_reg_set_relay_region(ctl_registry *reg, const char *relay_node, const char *region) {
  if (!relay_node || !region || !ctl_text_ok(relay_node, CTL_REG_NODE_MAX) ||
      !ctl_text_ok(region, CTL_REGION_LABEL_MAX))
    return -EINVAL;
  relay_ent *r = relay_get(reg, relay_node);
  if (!r) return -ENOSPC;
  snprintf(r->region, sizeof r->region, "%s", region);
  return 0;
}

size_t ctl_reg_relays(const ctl_registry *reg, ctl_reg_relay *out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < reg->nrelays && n < max; i++) {
    const relay_ent *r = &reg->relays[i];
    if (!r->live) continue;
    snprintf(out[n].node, sizeof out[n].node, "%s", r->node);
    snprintf(out[n].url, sizeof out[n].url, "%s", r->url);
    snprintf(out[n].region, sizeof out[n].region, "%s", r->region);
    out[n].load = r->load;
    n++;
  }
  return n;
}

/* ---- validate ------------------------------------------------------------------ */

static int deny(ctl_reg_decision *out, uint32_t status, const char *reason, const char *msg) {
  out->allow = false;
  out->slot = 0;
  out->http_status = status;
  out->reason = reason;
  out->message = msg;
  return 0;
}

/* Which slot the token opens (1, 2) or 0.  Both hashes are always compared
 * in constant time, so timing says nothing about which slot failed. */
static int token_slot(const session *s, const char *token) {
  uint8_t h[32];
  const char *t = token ? token : "";
  cm_sha256(t, strlen(t), h);
  unsigned mi = cm_ct_equal(h, s->hash[0], 32);
  unsigned mr = cm_ct_equal(h, s->hash[1], 32);
  wipe(h, sizeof h);
  /* Branch-free select: initiator wins the (impossible) double match. */
  return (int)(mi | ((mr & (mi ^ 1u)) << 1));
}

/* Moves the session to relay_node durably. */
static int reassign(ctl_registry *reg, session *s, const char *relay_node) {
  const relay_ent *re = relay_find(reg, relay_node);
  /* The asking relay's URL if it announced one; otherwise unknown (""),
   * rather than keep pointing at the dead relay. */
  char *node = strdup(relay_node), *url = url_dup(re ? re->url : "");
  ctl_jrec r = {.type = CTL_JREC_REASSIGN};
  int rc = (node && url) ? 0 : -ENOMEM;
  if (rc == 0) {
    memcpy(r.id, s->id, sizeof r.id);
    snprintf(r.node, sizeof r.node, "%s", node);
    snprintf(r.url, sizeof r.url, "%s", url);
    rc = journal_one(reg, &r);
  }
  if (rc != 0) {
    free(node);
    free(url);
    return rc;
  }
  cm_log(CM_LOG_INFO, log_comp, "session reassigned", CM_S("session", s->id), CM_S("from", s->node),
         CM_S("to", node));
  bool counted = s->counted;
  load_move(reg, s, false);
  free(s->node);
  free(s->url);
  s->node = node;
  s->url = url;
  load_move(reg, s, counted);
  maybe_compact(reg);
  return 0;
}

static void allow(const session *s, int slot, ctl_reg_decision *out) {
  out->allow = true;
  out->slot = slot;
  out->http_status = 200;
  out->reason = "";
  out->message = "";
  out->expires_at = s->expires_at;
  out->peer_wait_s = s->peer_wait;
  if (s->target && slot == CTL_REG_ROLE_INITIATOR)
    snprintf(out->target, sizeof out->target, "%s", s->target);
}

int ctl_reg_validate(ctl_registry *reg, int64_t now, const char *id, const char *token,
                     int requested_role, const char *relay_node, ctl_reg_decision *out) {
  memset(out, 0, sizeof *out);
  out->max_message_bytes = reg->cfg.max_message_bytes;
  session *s = find_live(reg, now, id);
  if (!s) return deny(out, 404, "unknown_session", "no such session");
  int slot = token_slot(s, token);
  if (slot == 0) return deny(out, 401, "invalid_token", "token does not open a slot");
  if (requested_role != CTL_REG_ROLE_ANY && requested_role != slot)
    return deny(out, 401, "role_mismatch", "token is for the other slot");
  if (s->target && slot == CTL_REG_ROLE_RESPONDER)
    return deny(out, 403, "target_session",
                "the responder of a target session is the relay's own connection");
  if (s->slot_node[slot - 1]) return deny(out, 409, "slot_taken", "slot already connected");
  /* An unassigned session (its relays share one public URL) goes to the
   * first relay a peer reaches; an assigned one moves only when its relay
   * is gone. */
  bool check_relay = relay_node && relay_node[0];
  if (check_relay && strcmp(s->node, relay_node) != 0) {
    if (s->node[0] && ctl_reg_relay_is_live(reg, s->node))
      return deny(out, 421, "wrong_relay", "session is served by another relay");
    if (!ctl_text_ok(relay_node, CTL_REG_NODE_MAX))
      return deny(out, 421, "wrong_relay", "bad relay node id");
    int rc = reassign(reg, s, relay_node);
    if (rc != 0) {
      deny(out, 503, "controller_error", "could not record the reassignment");
      return CTL_REG_EIO;
    }
  }
  allow(s, slot, out);
  return 0;
}

/* ---- get / list / delete ---------------------------------------------------- */

int ctl_reg_get(ctl_registry *reg, int64_t now, const char *id, ctl_reg_status *out) {
  const session *s = find_live(reg, now, id);
  if (!s) return -ENOENT;
  status_of(s, out);
  return 0;
}

size_t ctl_reg_list(ctl_registry *reg, int64_t now, size_t max, ctl_reg_list_cb cb, void *ud) {
  size_t n = 0;
  ctl_reg_status st;
  for (cm_list *l = reg->all.next; l != &reg->all && n < max; l = l->next) {
    const session *s = cm_container_of(l, session, link);
    if (now >= s->expires_at) continue;
    status_of(s, &st);
    cb(ud, &st);
    n++;
  }
  return n;
}

/* Where a page that follows `token` starts: the session after the one the
 * token names, found by id in O(1) while it lives, else by its sequence
 * number in one pass (it was deleted or expired meanwhile). */
static cm_list *page_start(ctl_registry *reg, const char *token, int *rc) {
  *rc = 0;
  if (!token || !token[0]) return reg->all.next;
  if (token[0] < '0' || token[0] > '9') { /* strtoull would take "-1" or " 1" */
    *rc = -EINVAL;
    return NULL;
  }
  char *dot;
  errno = 0;
  unsigned long long seq = strtoull(token, &dot, 10);
  if (errno || dot == token || *dot != '.' || !id_ok(dot + 1)) {
    *rc = -EINVAL;
    return NULL;
  }
  session *s = table_find(reg, dot + 1);
  if (s && s->seq == seq) return s->link.next;
  cm_list *l = reg->all.next;
  while (l != &reg->all && cm_container_of(l, session, link)->seq <= seq)
    l = l->next;
  return l;
}

int ctl_reg_list_page(ctl_registry *reg, int64_t now, const char *token, size_t max,
                      ctl_reg_list_cb cb, void *ud, char next[CTL_REG_PAGE_TOKEN_MAX]) {
  next[0] = '\0';
  if (max == 0) max = 1;
  int rc;
  cm_list *l = page_start(reg, token, &rc);
  if (rc != 0) return rc;
  size_t n = 0;
  const session *last = NULL;
  ctl_reg_status st;
  for (; l != &reg->all; l = l->next) {
    const session *s = cm_container_of(l, session, link);
    if (now >= s->expires_at) continue;
    if (n == max) { /* one more lives: there is a next page */
      snprintf(next, CTL_REG_PAGE_TOKEN_MAX, "%llu.%s", (unsigned long long)last->seq, last->id);
      break;
    }
    status_of(s, &st);
    cb(ud, &st);
    last = s;
    n++;
  }
  return (int)n;
}

int ctl_reg_delete_status(ctl_registry *reg, int64_t now, const char *id, ctl_reg_status *closed) {
  session *s = find_live(reg, now, id);
  if (!s) return -ENOENT;
  int rc = journal_id(reg, CTL_JREC_DELETE, s->id);
  if (rc != 0) return rc;
  if (closed) {
    status_of(s, closed);
    closed->state = CTL_REG_CLOSED;
    closed->initiator_connected = closed->responder_connected = false;
  }
  unlink_session(reg, s);
  session_free(s);
  maybe_compact(reg);
  return 0;
}

int ctl_reg_delete(ctl_registry *reg, int64_t now, const char *id) {
  return ctl_reg_delete_status(reg, now, id, NULL);
}

/* ---- relay events -------------------------------------------------------- */

static session *event_target(ctl_registry *reg, int64_t now, const char *id, int role, int *rc) {
  session *s = find_live(reg, now, id);
  *rc = !s                                                                   ? -ENOENT
        : (role != CTL_REG_ROLE_INITIATOR && role != CTL_REG_ROLE_RESPONDER) ? -EINVAL
                                                                             : 0;
  return *rc == 0 ? s : NULL;
}

int ctl_reg_on_attach(ctl_registry *reg, int64_t now, const char *id, int role,
                      const char *relay_node) {
  int rc;
  session *s = event_target(reg, now, id, role, &rc);
  if (!s) return rc;
  if (!relay_node) relay_node = "";
  if (!ctl_text_ok(relay_node, CTL_REG_NODE_MAX)) return -EINVAL;
  char *node = strdup(relay_node);
  if (!node) return -ENOMEM;
  free(s->slot_node[role - 1]);
  s->slot_node[role - 1] = node;
  s->ever_attached = true;
  recount(reg, s);
  s->last_activity = CM_MAX(s->last_activity, now);
  return 0;
}

int ctl_reg_on_detach(ctl_registry *reg, int64_t now, const char *id, int role,
                      const char *relay_node) {
  int rc;
  session *s = event_target(reg, now, id, role, &rc);
  if (!s) return rc;
  char **slot = &s->slot_node[role - 1];
  /* A detach from a relay that no longer holds the slot is stale (the
   * peer has already reattached elsewhere): ignore it. */
  if (*slot && (!relay_node || same(*slot, relay_node))) {
    free(*slot);
    *slot = NULL;
    recount(reg, s);
  }
  s->last_activity = CM_MAX(s->last_activity, now);
  return 0;
}

/* Counters arrive as absolute totals per relay epoch (see registry.h).  The
 * epochs a session has seen lately are kept with their largest totals; the
 * oldest is folded into `retired` when a new one needs its place, so a late
 * report of a retired epoch is the only thing that could count twice, and
 * it would need CTL_REG_EPOCHS newer epochs to overtake it first. */
void ctl_reg_counters_add(ctl_reg_counters *c, uint64_t epoch, uint64_t in, uint64_t out) {
  if (epoch == 0) return;
  size_t i = 0;
  while (i < c->n && c->ep[i].epoch != epoch)
    i++;
  if (i == c->n) {
    if (c->n == CTL_REG_EPOCHS) {
      c->retired_in += c->ep[0].in;
      c->retired_out += c->ep[0].out;
      memmove(&c->ep[0], &c->ep[1], sizeof c->ep[0] * (CTL_REG_EPOCHS - 1));
      c->n--;
    }
    i = c->n++;
    c->ep[i].epoch = epoch;
    c->ep[i].in = c->ep[i].out = 0;
  }
  c->ep[i].in = CM_MAX(c->ep[i].in, in);
  c->ep[i].out = CM_MAX(c->ep[i].out, out);
}

void ctl_reg_counters_total(const ctl_reg_counters *c, uint64_t *in, uint64_t *out) {
  *in = c->retired_in;
  *out = c->retired_out;
  for (size_t i = 0; i < c->n; i++) {
    *in += c->ep[i].in;
    *out += c->ep[i].out;
  }
}

int ctl_reg_on_stats(ctl_registry *reg, int64_t now, const char *id, uint64_t epoch,
                     uint64_t bytes_in, uint64_t bytes_out, int64_t last_activity) {
  session *s = find_live(reg, now, id);
  if (!s) return -ENOENT;
  ctl_reg_counters_add(&s->ctr, epoch, bytes_in, bytes_out);
  s->last_activity = CM_MAX(s->last_activity, last_activity);
  return 0;
}

/* ---- reaping ----------------------------------------------------------------- */

/* Takes up to REAP_BATCH expired sessions out of the registry. */
static size_t reap_take(ctl_registry *reg, int64_t now, session **batch) {
  size_t n = 0;
  while (n < REAP_BATCH && reg->heap_len > 0 && reg->heap[0]->expires_at <= now) {
    session *s = reg->heap[0];
    unlink_session(reg, s);
    batch[n++] = s;
  }
  return n;
}

/* One write and one fsync for the batch.  A failure is only logged: an
 * expired session that comes back after a restart is expired there too and
 * is simply reaped again. */
static void reap_journal(ctl_registry *reg, session **batch, size_t n) {
  if (!reg->durable) return;
  cm_buf b;
  cm_buf_init(&b, 0);
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    ctl_jrec r = {.type = CTL_JREC_EXPIRE};
    memcpy(r.id, batch[i]->id, sizeof r.id);
    rc = ctl_jrec_encode(&b, &r);
  }
  if (rc == 0) rc = journal_append(reg, &b);
  cm_buf_free(&b);
  if (rc != 0) cm_log(CM_LOG_WARN, log_comp, "expiry not journaled", CM_I("sessions", n));
}

size_t ctl_reg_reap(ctl_registry *reg, int64_t now, ctl_reg_expired_cb expired, void *ud) {
  session *batch[REAP_BATCH];
  size_t total = 0, n;
  while ((n = reap_take(reg, now, batch)) > 0) {
    reap_journal(reg, batch, n);
    for (size_t i = 0; i < n; i++) {
      if (expired) expired(ud, batch[i]->id, batch[i]->node);
      session_free(batch[i]);
    }
    total += n;
  }
  if (total) maybe_compact(reg);
  return total;
}

/* ---- invariants ----------------------------------------------------------- */

static int check_heap(const ctl_registry *reg) {
  if (reg->heap_len != reg->count) return -1;
  for (size_t i = 0; i < reg->heap_len; i++) {
    const session *s = reg->heap[i];
    if (s->heap_idx != i) return -1;
    if (i > 0 && reg->heap[(i - 1) / 2]->expires_at > s->expires_at) return -1;
  }
  return 0;
}

static int check_table(const ctl_registry *reg) {
  size_t n = 0;
  for (size_t i = 0; i < reg->nbuckets; i++) {
    for (const session *s = reg->buckets[i]; s; s = s->next) {
      if ((id_hash(s->id) & (reg->nbuckets - 1)) != i || !id_ok(s->id)) return -1;
      n++;
    }
  }
  return n == reg->count ? 0 : -1;
}

/* Each relay's load is the number of its sessions counted. */
static int check_loads(const ctl_registry *reg) {
  for (size_t i = 0; i < reg->nrelays; i++) {
    uint64_t n = 0;
    for (const cm_list *l = reg->all.next; l != &reg->all; l = l->next) {
      const session *s = cm_container_of(l, session, link);
      n += s->counted && strcmp(s->node, reg->relays[i].node) == 0;
    }
    if (n != reg->relays[i].load) return -1;
  }
  return 0;
}

int ctl_reg_check(const ctl_registry *reg) {
  size_t n = 0;
  for (const cm_list *l = reg->all.next; l != &reg->all; l = l->next) {
    const session *s = cm_container_of(l, session, link);
    if (table_find(reg, s->id) != s || !s->node || !s->url) return -1;
    n++;
  }
  if (n != reg->count || check_heap(reg) != 0 || check_table(reg) != 0) return -1;
  return check_loads(reg);
}
