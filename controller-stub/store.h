/*
 * store.h — where the controller keeps its sessions (private to
 * controller-stub): one interface, two stores.
 *
 *   journal  the registry of registry.h in this process, made durable by
 *            its journal: the default, for one controller.
 *   redis    the same sessions in a Redis every controller of a fleet
 *            shares (store_redis.c): any controller answers for any
 *            session, and the registry outlives each of them.
 *
 * Every operation answers through a callback, possibly before it returns
 * (the journal store always does; the Redis store does when it cannot
 * reach Redis, with CTL_REG_EIO, which callers turn into 503).  Relay
 * events (attach, detach, counters) and link changes are fire-and-forget:
 * the Redis store batches them.  The service drives time with tick().
 *
 * The fleet pieces that need no I/O live in fleet.c and are declared here:
 * placement (which relay serves a new session), the event batch, the
 * Redis URL, and the password's source.
 */
#ifndef RELAY_CONTROLLER_STORE_H
#define RELAY_CONTROLLER_STORE_H

#include "controller-stub/registry.h"

#include <uv.h>

/* ---- placement (fleet.c, sans-I/O) ------------------------------------------------ */

/* Relays a session may be placed on (live: linked to this controller, or
 * to any controller of the fleet) with their load, as registry.h defines
 * it for both stores. */
typedef ctl_reg_relay ctl_relay_view;

enum {
  CTL_PLACE_ENORELAY = -21101,  /* the asked-for relay is not linked [400] */
  CTL_PLACE_ENOREGION = -21102, /* no linked relay has the asked-for region [400] */
};

/* Chooses where a new session goes: the relay named `want_relay` if given
 * (it must be in view), else the least loaded relay of `want_region` (or
 * of all when ""), ties going to the asking relay and then to the name
 * that sorts first, so the choice is reproducible.  With nothing in view
 * and nothing asked for, the asking relay is chosen (-1: "use the asker").
 * Returns the index in view, -1, or CTL_PLACE_E*. */
int ctl_place(const ctl_relay_view *view, size_t n, const char *want_relay, const char *want_region,
              const char *asker);

/* ---- the event batch (fleet.c, sans-I/O) ------------------------------------------------ */

/* Relay events waiting to be written, coalesced per session: the last
 * state of each slot (with whether an attach came first in the same
 * batch, so a detach then clears whoever the store had) and the largest
 * counters of each epoch.  At most max sessions; ctl_batch_add returns
 * -ENOSPC when full (the caller flushes, or drops and counts). */
enum { CTL_BATCH_NONE = 0, CTL_BATCH_ATTACH, CTL_BATCH_DETACH };

typedef struct ctl_batch_slot_state {
  uint8_t op;  /* CTL_BATCH_* */
  bool forced; /* a detach after an attach of this batch: clear regardless */
  char node[CTL_REG_NODE_MAX + 1];
} ctl_batch_slot_state;

typedef struct ctl_batch_ent {
  char id[CM_TOKEN_LEN + 1];
  ctl_batch_slot_state slot[2];
  ctl_reg_counters ctr; /* epochs reported in this batch (retired unused) */
  int64_t last_activity;
  struct ctl_batch_ent *next; /* hash chain */
} ctl_batch_ent;

typedef struct ctl_batch {
  ctl_batch_ent *ents; /* [max], filled in order */
  ctl_batch_ent **buckets;
  size_t n, max, nbuckets;
} ctl_batch;

int ctl_batch_init(ctl_batch *b, size_t max);
void ctl_batch_free(ctl_batch *b);
void ctl_batch_clear(ctl_batch *b);
bool ctl_batch_has(const ctl_batch *b, const char *id);
/* role: CTL_REG_ROLE_INITIATOR / _RESPONDER.  0, -EINVAL or -ENOSPC. */
int ctl_batch_slot(ctl_batch *b, const char *id, int role, bool attach, const char *node);
int ctl_batch_stats(ctl_batch *b, const char *id, uint64_t epoch, uint64_t in, uint64_t out,
                    int64_t last_activity);

/* ---- Redis addressing and credentials (fleet.c, sans-I/O) ------------------------------- */

typedef struct ctl_redis_url {
  char host[256];
  int port;
  int db;
  char user[128]; /* ACL user; "" for the default user */
} ctl_redis_url;

/* redis://[USER@]HOST[:PORT][/DB]; a password in the URL is refused (a
 * command line is readable by every user: it comes from a file or the
 * environment).  0, or -EINVAL with a message (that never quotes the URL:
 * it may hold a password after all). */
int ctl_redis_url_parse(const char *url, ctl_redis_url *out, char *err, size_t errlen);

/* ---- the store ------------------------------------------------------------------------------ */

typedef struct ctl_store ctl_store;

typedef void (*ctl_store_created_cb)(void *ud, int rc, ctl_reg_created *c);
typedef void (*ctl_store_decided_cb)(void *ud, int rc, const ctl_reg_decision *d);
/* get: the status; delete: the last status, state CTL_REG_CLOSED. */
typedef void (*ctl_store_status_cb)(void *ud, int rc, const ctl_reg_status *st);
typedef void (*ctl_store_page_cb)(void *ud, int rc, const ctl_reg_status *items, size_t n,
                                  const char *next);

/* What a store tells its owner. */
typedef struct ctl_store_owner {
  /* A session expired (reaped here) or was deleted elsewhere: its peers on
   * relay `node` are to be kicked.  `local`: this controller reaped it and
   * no other was told; a controller that cannot reach node hands it on
   * with publish_kick. */
  void (*kick)(void *ud, const char *id, const char *node, const char *reason, bool local);
  /* The store became usable (registry id known) or unusable. */
  void (*ready)(void *ud, bool ready);
  void *ud;
} ctl_store_owner;

typedef struct ctl_store_ops {
  /* target: a target session's "host:port", allowed by the caller's
   * policy (NULL or "": an ordinary session). */
  void (*create)(ctl_store *st, int64_t now, uint32_t ttl_s, uint32_t peer_wait_s, const char *node,
                 const char *url, const char *target, ctl_store_created_cb cb, void *ud);
  void (*validate)(ctl_store *st, int64_t now, const char *id, const char *token, int role,
                   const char *node, ctl_store_decided_cb cb, void *ud);
  void (*get)(ctl_store *st, int64_t now, const char *id, ctl_store_status_cb cb, void *ud);
  void (*list_page)(ctl_store *st, int64_t now, const char *token, size_t max, ctl_store_page_cb cb,
                    void *ud);
  void (*del)(ctl_store *st, int64_t now, const char *id, ctl_store_status_cb cb, void *ud);
  /* Relay events (role CTL_REG_ROLE_*); attach false is a detach.  slot
   * returns -ENOENT when it knows at once that the session does not exist
   * (a store that learns it later tells owner.kick, reason "session
   * unknown"), else 0. */
  int (*slot)(ctl_store *st, int64_t now, const char *id, int role, bool attach, const char *node);
  void (*stats)(ctl_store *st, int64_t now, const char *id, uint64_t epoch, uint64_t in,
                uint64_t out, int64_t last_activity);
  /* A relay's first link to this controller came up (with what its Hello
   * said), or its last one went down. */
  void (*relay_up)(ctl_store *st, const char *node, const char *url, const char *region);
  void (*relay_down)(ctl_store *st, const char *node);
  /* Relays sessions may be placed on, with their load; at most max. */
  size_t (*relays)(ctl_store *st, ctl_relay_view *out, size_t max);
  /* Hands a kick to the controllers that can reach node (the Redis
   * store's channel); the journal store has no one to hand it to. */
  void (*publish_kick)(ctl_store *st, const char *id, const char *node, const char *reason);
  void (*tick)(ctl_store *st, int64_t now_ms);
  /* The registry id relays pool links by (TUN_HDR_REGISTRY); "" none. */
  const char *(*registry_id)(const ctl_store *st);
  size_t (*count)(const ctl_store *st);
  /* Stops I/O; done runs on the loop once nothing is pending. */
  void (*close)(ctl_store *st, void (*done)(void *ud), void *ud);
  void (*free)(ctl_store *st);
} ctl_store_ops;

struct ctl_store {
  const ctl_store_ops *ops;
  ctl_store_owner owner;
};

/* The journal-backed registry (state_dir NULL: memory only). */
ctl_store *ctl_store_journal_new(const char *state_dir, const ctl_registry_config *cfg,
                                 const ctl_store_owner *owner, char *err, size_t errlen);

typedef struct ctl_redis_config {
  ctl_redis_url url;
  const char *password;  /* secret (NULL: no AUTH); copied into secret memory */
  const char *prefix;    /* key prefix; NULL: "relay:" */
  const char *name;      /* this controller, for logs and the lease; NULL: "controller" */
  uint32_t timeout_ms;   /* a command unanswered this long drops the connection; 0: 2 s */
  uint32_t flush_ms;     /* relay events are written this often; 0: 250 ms */
  uint32_t heartbeat_ms; /* links announced, fleet view read; 0: 1 s */
  uint32_t lease_ms;     /* reaper lease; 0: 5 s */
  size_t max_batch;      /* sessions with events waiting; 0: 10,000 */
} ctl_redis_config;

ctl_store *ctl_store_redis_new(uv_loop_t *loop, const ctl_redis_config *rc,
                               const ctl_registry_config *cfg, const ctl_store_owner *owner,
                               char *err, size_t errlen);

#endif
