/*
 * registry.h — the controller's session registry (private to controller-stub).
 *
 * The registry is the single source of truth for sessions: it mints ids and
 * slot tokens, keeps only the tokens' SHA-256 hashes, answers slot
 * validation, tracks which peers are attached from the relays' events, and
 * expires sessions.  It is sans-I/O except for its own durable files: the
 * caller passes every timestamp in (unix seconds), so tests drive the clock,
 * and nothing here touches a socket or a loop.  Not thread-safe: one owner
 * thread (the controller's loop) calls everything.
 *
 * Durability (journal.c): every change that must survive a restart (create,
 * delete, reassignment, expiry) is appended to `state_dir/journal` as a
 * framed record [u32 length][u32 CRC32C][payload] and fdatasync'd before the
 * call returns.  When the journal passes the compaction threshold, the live
 * sessions are written to `state_dir/snapshot` (temp file, fsync, rename,
 * fsync dir) and a fresh journal starts.  Both files carry a generation
 * number: a journal is replayed only on top of the snapshot of the same
 * generation, so a crash between the snapshot's rename and the journal's
 * replacement neither loses nor duplicates a session (the older journal is
 * already contained in the newer snapshot and is discarded).  Recovery keeps
 * every committed record up to the first torn or corrupt one, truncates the
 * journal there and logs the offset.  Attachment flags and byte counters are
 * volatile: relays report them again.
 *
 * Complexity: lookup by id is O(1) average (chained hash table), reaping is
 * O(expired · log n) (min-heap on expiry), listing walks sessions in
 * creation order.  Memory is bounded by max_sessions.
 */
#ifndef RELAY_CONTROLLER_REGISTRY_H
#define RELAY_CONTROLLER_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#define CTL_REG_NODE_MAX   128           /* bytes of a relay node id */
#define CTL_REG_URL_MAX    512           /* bytes of a relay's public base URL */
#define CTL_REG_TARGET_MAX CM_TARGET_MAX /* a target session's "host:port" */
/* <public_url>/relay/<id> */
#define CTL_REG_SESSION_URL_MAX (CTL_REG_URL_MAX + 7 + CM_TOKEN_LEN)

/* Error codes (negative).  The HTTP status a caller should map each to is
 * given in brackets.  Functions also return -ENOENT (404) for an unknown,
 * deleted or expired session, -EINVAL for a bad argument and -ENOMEM. */
enum {
  CTL_REG_ETTL = -21001,      /* ttl_s above max_ttl_s [400] */
  CTL_REG_EPEERWAIT = -21002, /* peer_wait_s above max_peer_wait_s [400] */
  CTL_REG_EFULL = -21003,     /* max_sessions reached [429] */
  CTL_REG_EIO = -21004,       /* journal write failed; nothing changed [503] */
  CTL_REG_EARG = -21005,      /* relay node or URL too long / not printable [400] */
  CTL_REG_ERANDOM = -21006,   /* CSPRNG failure [503] */
};

typedef enum {
  CTL_REG_PENDING = 0, /* no slot attached */
  CTL_REG_HALF_OPEN,   /* one slot attached */
  CTL_REG_OPEN,        /* both attached */
  CTL_REG_CLOSED,      /* deleted (only in the status ctl_reg_delete leaves behind) */
} ctl_reg_state;

enum { CTL_REG_ROLE_ANY = 0, CTL_REG_ROLE_INITIATOR = 1, CTL_REG_ROLE_RESPONDER = 2 };

typedef struct ctl_registry ctl_registry;

typedef struct ctl_registry_config {
  uint32_t default_ttl_s;       /* 0: 3600 */
  uint32_t default_peer_wait_s; /* 0: 120 */
  uint32_t max_ttl_s;           /* 0: 86400 */
  uint32_t max_peer_wait_s;     /* 0: 3600 */
  uint32_t max_sessions;        /* 0: 100000 */
  uint64_t max_message_bytes;   /* passed out in decisions; 0: relay default */
  uint64_t compact_bytes;       /* journal size that triggers compaction; 0: 4 MiB */
} ctl_registry_config;

/* A self-contained copy of one session's public state (no secrets). */
typedef struct ctl_reg_status {
  char id[CM_TOKEN_LEN + 1];
  ctl_reg_state state;
  int64_t created_at, expires_at, last_activity;
  uint32_t peer_wait_s;
  uint64_t bytes_in, bytes_out;
  bool initiator_connected, responder_connected;
  char relay_node[CTL_REG_NODE_MAX + 1];
  char public_url[CTL_REG_URL_MAX + 1];
  char target[CTL_REG_TARGET_MAX + 1]; /* "" for an ordinary session */
} ctl_reg_status;

/* What ctl_reg_create hands back.  The tokens are secrets returned exactly
 * once: pass them to the admin caller, then ctl_reg_created_wipe(). */
typedef struct ctl_reg_created {
  ctl_reg_status status;
  char initiator_token[CM_TOKEN_LEN + 1];
  char responder_token[CM_TOKEN_LEN + 1];
  char initiator_url[CTL_REG_SESSION_URL_MAX + 1];
  char responder_url[CTL_REG_SESSION_URL_MAX + 1];
} ctl_reg_created;

/* A Validate answer; reason/message are static strings. */
typedef struct ctl_reg_decision {
  bool allow;
  int slot;             /* CTL_REG_ROLE_INITIATOR / _RESPONDER when allowed */
  uint32_t http_status; /* when refused: 401, 404, 409, 421, 503 */
  const char *reason;   /* "unknown_session", "invalid_token", "role_mismatch",
                           "slot_taken", "wrong_relay", "controller_error",
                           "target_session" (the responder token of a target
                           session: the relay holds that slot) */
  const char *message;
  int64_t expires_at;
  uint32_t peer_wait_s;
  uint64_t max_message_bytes;
  char target[CTL_REG_TARGET_MAX + 1]; /* allowed initiator of a target session */
} ctl_reg_decision;

void ctl_registry_config_defaults(ctl_registry_config *cfg);
/* Opens state_dir (created, or tightened, to mode 0700), replays snapshot
 * then journal, and returns the registry; state_dir NULL keeps memory only.
 * cfg NULL: defaults.  On failure NULL with a message in err (a corrupt
 * snapshot, a journal newer than its snapshot, a state dir in use by
 * another process, I/O errors).  A torn journal tail is not a failure. */
ctl_registry *ctl_registry_open(const char *state_dir, const ctl_registry_config *cfg, char *err,
                                size_t errlen);
void ctl_registry_close(ctl_registry *reg);

const char *ctl_reg_state_name(ctl_reg_state s); /* "pending", ... */
size_t ctl_reg_count(const ctl_registry *reg);   /* sessions held, expired-unreaped included */

/* Mints a session (ttl_s/peer_wait_s 0: defaults) assigned to relay_node
 * whose public base URL is public_url (trailing '/' dropped).  Durable
 * before it returns.  0 or CTL_REG_E*. */
int ctl_reg_create(ctl_registry *reg, int64_t now, uint32_t ttl_s, uint32_t peer_wait_s,
                   const char *relay_node, const char *public_url, ctl_reg_created *out);
/* The same for a target session: target is "host:port", already allowed by
 * the caller's policy (NULL or "": an ordinary session); CTL_REG_EARG when
 * it is longer than CTL_REG_TARGET_MAX or not printable. */
int ctl_reg_create_target(ctl_registry *reg, int64_t now, uint32_t ttl_s, uint32_t peer_wait_s,
                          const char *relay_node, const char *public_url, const char *target,
                          ctl_reg_created *out);
void ctl_reg_created_wipe(ctl_reg_created *c);

/* Decides a slot request; always fills out.  Returns 0, or CTL_REG_EIO when
 * a needed reassignment could not be made durable (out: 503).
 * requested_role: CTL_REG_ROLE_*.  relay_node NULL or "": skip the relay
 * check (single-relay setups).  Tokens are checked in constant time against
 * both slots. */
int ctl_reg_validate(ctl_registry *reg, int64_t now, const char *id, const char *token,
                     int requested_role, const char *relay_node, ctl_reg_decision *out);

/* 0, or -ENOENT when unknown or expired. */
int ctl_reg_get(ctl_registry *reg, int64_t now, const char *id, ctl_reg_status *out);
typedef void (*ctl_reg_list_cb)(void *ud, const ctl_reg_status *st);
/* Calls cb for at most max unexpired sessions, oldest first; returns how
 * many.  cb must not change the registry. */
size_t ctl_reg_list(ctl_registry *reg, int64_t now, size_t max, ctl_reg_list_cb cb, void *ud);
/* Pages through unexpired sessions, oldest first: token "" starts at the
 * beginning, and `next` receives the token of the page after this one (""
 * after the last).  A session created meanwhile shows on a later page; one
 * deleted meanwhile does not break the walk.  Returns how many sessions cb
 * saw (at most max), or -EINVAL for a token the registry did not make. */
#define CTL_REG_PAGE_TOKEN_MAX (21 + 1 + CM_TOKEN_LEN + 1)
int ctl_reg_list_page(ctl_registry *reg, int64_t now, const char *token, size_t max,
                      ctl_reg_list_cb cb, void *ud, char next[CTL_REG_PAGE_TOKEN_MAX]);
/* Durably removes the session and wipes its token hashes: it is gone from
 * get/list/validate at once.  0, -ENOENT (unknown or expired) or
 * CTL_REG_EIO (nothing changed).  ctl_reg_delete_status also hands back
 * the last status, state CTL_REG_CLOSED (closed may be NULL), so the caller
 * knows which relay to send a Kick. */
int ctl_reg_delete(ctl_registry *reg, int64_t now, const char *id);
int ctl_reg_delete_status(ctl_registry *reg, int64_t now, const char *id, ctl_reg_status *closed);

/* Relay events.  role: CTL_REG_ROLE_INITIATOR / _RESPONDER.  0, -ENOENT
 * (unknown or expired session) or -EINVAL.  Attach records which relay holds
 * the slot; a detach from a relay other than that one is ignored (stale). */
int ctl_reg_on_attach(ctl_registry *reg, int64_t now, const char *id, int role,
                      const char *relay_node);
int ctl_reg_on_detach(ctl_registry *reg, int64_t now, const char *id, int role,
                      const char *relay_node);

/* Byte counters.  A relay reports absolute totals within an epoch it picks
 * at random each time it starts holding a session (after its restart, or
 * when it joins a session it had forgotten).  The registry keeps, per
 * session, the largest totals of each of the last CTL_REG_EPOCHS epochs and
 * the sum of older ones, and adds them: a repeated, lost or reordered
 * report changes nothing, and a new epoch adds instead of resetting.
 * bytes_in is payload initiator -> responder, bytes_out the reverse.
 * Epoch 0 carries no counters (only last_activity counts). */
#define CTL_REG_EPOCHS 4
typedef struct ctl_reg_counters {
  uint64_t retired_in, retired_out; /* epochs folded away */
  struct {
    uint64_t epoch, in, out;
  } ep[CTL_REG_EPOCHS]; /* oldest first */
  size_t n;
} ctl_reg_counters;
void ctl_reg_counters_add(ctl_reg_counters *c, uint64_t epoch, uint64_t in, uint64_t out);
void ctl_reg_counters_total(const ctl_reg_counters *c, uint64_t *in, uint64_t *out);
int ctl_reg_on_stats(ctl_registry *reg, int64_t now, const char *id, uint64_t epoch,
                     uint64_t bytes_in, uint64_t bytes_out, int64_t last_activity);

/* Relay links.  A relay is live between set_relay_live(true) and
 * set_relay_live(false); going down clears every slot attached through it.
 * set_relay_url records the public URL a relay announced (Hello) so a
 * session reassigned to it carries the right URL.  0, -EINVAL, or -ENOSPC
 * past CTL_REG_MAX_RELAYS relays. */
#define CTL_REG_MAX_RELAYS 1024
int ctl_reg_set_relay_live(ctl_registry *reg, const char *relay_node, bool live);
int ctl_reg_set_relay_url(ctl_registry *reg, const char *relay_node, const char *public_url);
bool ctl_reg_relay_is_live(const ctl_registry *reg, const char *relay_node);

/* Removes every session with expires_at <= now (durably, one fsync per
 * batch) and reports each to expired (may be NULL) after it is gone, so the
 * callback may call back into the registry.  Returns how many. */
typedef void (*ctl_reg_expired_cb)(void *ud, const char *id, const char *relay_node);
size_t ctl_reg_reap(ctl_registry *reg, int64_t now, ctl_reg_expired_cb expired, void *ud);

/* Checks internal invariants (table, heap, list, counts); 0 when sound.
 * For tests and the fuzzer. */
int ctl_reg_check(const ctl_registry *reg);
/* Journal bytes and generation (tests, metrics); 0 for memory-only. */
uint64_t ctl_reg_journal_size(const ctl_registry *reg);
uint64_t ctl_reg_generation(const ctl_registry *reg);

/* ---- journal.c: records and files (used by registry.c only) ------------- */

enum {
  CTL_JREC_HEADER = 1,   /* magic, generation: first record of each file */
  CTL_JREC_CREATE = 2,   /* a whole session (journal and snapshot) */
  CTL_JREC_DELETE = 3,   /* id */
  CTL_JREC_REASSIGN = 4, /* id, node, url */
  CTL_JREC_EXPIRE = 5,   /* id */
  CTL_JREC_END = 6,      /* snapshot trailer: session count */
};

#define CTL_JREC_MAX 4096 /* largest payload; longer lengths are corruption */

typedef struct ctl_jrec {
  uint8_t type;
  char id[CM_TOKEN_LEN + 1];
  uint8_t hash_i[32], hash_r[32];
  int64_t created, expires;
  uint32_t peer_wait;
  char node[CTL_REG_NODE_MAX + 1];
  char url[CTL_REG_URL_MAX + 1];
  char target[CTL_REG_TARGET_MAX + 1]; /* CREATE: a trailing field, absent when "" */
  uint64_t gen;                        /* HEADER */
  uint32_t count;                      /* END */
  bool snapshot;                       /* HEADER: which kind of file */
} ctl_jrec;

uint32_t ctl_crc32c(uint32_t crc, const void *data, size_t n);
/* Appends one framed record to b. */
int ctl_jrec_encode(cm_buf *b, const ctl_jrec *r);
/* Decodes a payload; 0 or -1 when malformed. */
int ctl_jrec_decode(const uint8_t *p, size_t n, ctl_jrec *r);
/* True when s is printable ASCII of at most max bytes. */
bool ctl_text_ok(const char *s, size_t max);

/* Applies a replayed record to the registry; nonzero marks it corrupt. */
typedef int (*ctl_journal_apply_fn)(void *ud, const ctl_jrec *r);
/* Appends the snapshot body (CREATE records) and counts them. */
typedef int (*ctl_journal_fill_fn)(void *ud, cm_buf *out, uint32_t *count);

typedef struct ctl_journal {
  char dir[4096];
  int fd;        /* the journal, positioned by `size` (pwrite) */
  int lock_fd;   /* flock'd dir/lock: one process per state dir */
  uint64_t size; /* committed bytes */
  uint64_t gen;  /* generation of snapshot and journal */
  bool broken;   /* an fsync failed or files disagree: no appends until a
                    compaction rewrites both files */
} ctl_journal;

int ctl_journal_open(ctl_journal *j, const char *dir, ctl_journal_apply_fn apply, void *ud,
                     char *err, size_t errlen);
/* Writes the framed records in recs and fdatasyncs; on failure the file is
 * cut back to its committed size and CTL_REG_EIO returned. */
int ctl_journal_append(ctl_journal *j, const cm_buf *recs);
/* Writes a snapshot of generation gen+1 from fill and starts a fresh
 * journal; success also clears `broken`.  On failure before the snapshot
 * commits, nothing changes; after it, the journal is marked broken. */
int ctl_journal_compact(ctl_journal *j, ctl_journal_fill_fn fill, void *ud);
void ctl_journal_close(ctl_journal *j);

#endif
