/*
 * pair.h — (private to relay/) the pairing state machine of one session on
 * this relay, sans-I/O.
 *
 * A session has two slots, initiator and responder.  Peers attach and
 * detach; the machine answers with actions for the caller to carry out:
 * close a peer with a close code, start forwarding, report an event to the
 * controller.  Time comes in as arguments.
 *
 *   pending --attach--> half_open --attach--> open
 *      ^                  |   ^                 |
 *      +--detach/wait-----+   +----detach-------+  (the other peer: 1000)
 *   kick / TTL: every peer closed 1001, state closed.
 *
 * A lone peer waits at most peer_wait, then is closed 1001.  When one peer
 * of an open session leaves, the other is closed (with the leaver's close
 * code when that is a code one may send, else 1000) and the session is
 * pending again: both may rejoin with the same tokens until the TTL.
 * A slot already held refuses a second peer (the caller answers 409).
 */
#ifndef RELAY_PAIR_H
#define RELAY_PAIR_H

#include <stdbool.h>
#include <stdint.h>

enum { RLY_SLOT_INITIATOR = 0, RLY_SLOT_RESPONDER = 1 };

typedef enum {
  RLY_PAIR_PENDING = 0,
  RLY_PAIR_HALF_OPEN,
  RLY_PAIR_OPEN,
  RLY_PAIR_CLOSED,
} rly_pair_state;

typedef enum {
  RLY_ACT_CLOSE,     /* close the peer in `slot` with code/reason */
  RLY_ACT_OPEN,      /* both slots held: start forwarding (flush held data) */
  RLY_ACT_EV_ATTACH, /* report: a peer took `slot` */
  RLY_ACT_EV_DETACH, /* report: the peer in `slot` left (code) */
  RLY_ACT_EV_OPEN,   /* report: bytes flow */
  RLY_ACT_EV_CLOSE,  /* report: the relay closed the session (code/reason) */
} rly_pair_act;

typedef struct rly_pair_action {
  rly_pair_act type;
  int slot;
  uint16_t code;
  const char *reason;
} rly_pair_action;

typedef void (*rly_pair_emit)(void *ud, const rly_pair_action *a);

typedef struct rly_pair {
  rly_pair_state state;
  bool held[2];
  uint64_t lone_since_ms; /* monotonic; valid in half_open */
  uint64_t peer_wait_ms;
  int64_t expires_at_ms; /* wall clock; 0: no expiry known */
} rly_pair;

const char *rly_pair_state_name(rly_pair_state s);
void rly_pair_init(rly_pair *p, uint64_t peer_wait_ms, int64_t expires_at_ms);
/* Returns 0, or -1 when the slot is held or the session is closed. */
int rly_pair_attach(rly_pair *p, int slot, uint64_t now_ms, rly_pair_emit emit, void *ud);
/* The peer in slot left by itself; code is the close code it sent (0 when
 * it sent none or dropped the connection). */
void rly_pair_detach(rly_pair *p, int slot, uint16_t code, uint64_t now_ms, rly_pair_emit emit,
                     void *ud);
/* The relay ends the session (delete, kick, drain, shutdown). */
void rly_pair_kick(rly_pair *p, uint16_t code, const char *reason, rly_pair_emit emit, void *ud);
/* Applies deadlines: peer_wait for a lone peer, the session's TTL. */
void rly_pair_tick(rly_pair *p, uint64_t now_mono_ms, int64_t now_wall_ms, rly_pair_emit emit,
                   void *ud);
/* Close codes a relay may forward from one peer to the other. */
bool rly_pair_code_sendable(uint16_t code);
/* True when no peer is held (the caller may forget the session). */
bool rly_pair_empty(const rly_pair *p);

#endif
