/*
 * session.h — (private to relay/) the data plane's decisions for one
 * session, sans-I/O: where each payload chunk goes, when a sender pauses
 * and resumes, what a lone peer may send early, when a peer is closed and
 * with which code, and when counters are reported.
 *
 * Beside pair.c (the pairing machine, which it drives) and below the glue
 * (dataplane.c), which only moves bytes: it parses frames, asks
 * rly_sess_route where a chunk goes, writes it there, and carries out the
 * actions the core emits (close a peer, deliver what was held, pause or
 * resume reading, report an event).  The core sees lengths, never bytes,
 * and time comes in as arguments, so cmocka tests and a fuzzer drive it
 * directly.
 *
 *   route:  open and the receiver there -> FORWARD (counted as delivered);
 *           the receiver closing         -> DROP;
 *           no receiver yet              -> HOLD, up to hold_max bytes
 *                                           held for it, past which the
 *                                           sender is closed 1008;
 *   pause:  after a read, a sender whose receiver is above its high
 *           watermark, or for whom hold_cap bytes are held, pauses;
 *   resume: when the receiver drains, or the session opens (what was held
 *           is delivered first).
 *   report: an event for each attach, detach, open and close; counters
 *           that changed at most every stats_every_ms, and at the end.
 */
#ifndef RELAY_SESSION_H
#define RELAY_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "relay/pair.h"

typedef enum {
  RLY_SESS_CLOSE,  /* close the peer in `slot` (code, reason); it has left the session */
  RLY_SESS_FLUSH,  /* deliver what is held for `slot` to its peer, now (`bytes` payload) */
  RLY_SESS_PAUSE,  /* stop reading the peer in `slot` */
  RLY_SESS_RESUME, /* read the peer in `slot` again */
  RLY_SESS_EVENT,  /* report `event` to the controller (slot, code, reason as they apply) */
} rly_sess_act;

typedef enum {
  RLY_SESS_EV_ATTACH,
  RLY_SESS_EV_DETACH,
  RLY_SESS_EV_OPEN,
  RLY_SESS_EV_CLOSE,
  RLY_SESS_EV_STATS,
} rly_sess_event;

typedef struct rly_sess_action {
  rly_sess_act type;
  rly_sess_event event;
  int slot; /* -1 when the action is the session's */
  uint16_t code;
  const char *reason;
  uint64_t bytes;
} rly_sess_action;

typedef void (*rly_sess_emit)(void *ud, const rly_sess_action *a);

typedef enum { RLY_ROUTE_FORWARD, RLY_ROUTE_HOLD, RLY_ROUTE_DROP } rly_sess_route_t;

typedef struct rly_sess_config {
  uint64_t peer_wait_ms;
  int64_t expires_at_ms;   /* wall clock; 0: none known */
  uint64_t hold_cap;       /* held for a slot before its sender pauses */
  uint64_t hold_max;       /* held for a slot before its sender is closed 1008 */
  uint64_t stats_every_ms; /* counters reported at most this often */
} rly_sess_config;

typedef struct rly_sess {
  rly_pair pair;
  rly_sess_config cfg;
  bool present[2], closing[2], paused[2];
  uint64_t held[2], held_payload[2]; /* bytes (and payload) held for slot s */
  uint64_t bytes[2];                 /* payload delivered from slot s to the other */
  bool dirty;
  uint64_t reported_ms;
  uint64_t now_ms; /* the latest time an entry point was given */
  rly_sess_emit emit;
  void *ud;
} rly_sess;

void rly_sess_init(rly_sess *s, const rly_sess_config *cfg, rly_sess_emit emit, void *ud);
/* A peer took `slot`: -1 when it is held already (the caller answers 409)
 * or the session is closed. */
int rly_sess_attach(rly_sess *s, int slot, uint64_t now_ms);
/* The peer in `slot` left by itself (code: the close code it sent, 0 for
 * none); the other is closed if the session was open. */
void rly_sess_leave(rly_sess *s, int slot, uint16_t code, uint64_t now_ms);
/* The glue is closing the peer in `slot` on its own account (idle): no
 * more data is delivered to it, until it leaves. */
void rly_sess_closing(rly_sess *s, int slot);
/* The relay ends the session: every peer closed with code. */
void rly_sess_kick(rly_sess *s, uint16_t code, const char *reason);
/* Deadlines (peer_wait, TTL) and the periodic counters report. */
void rly_sess_tick(rly_sess *s, uint64_t now_mono_ms, int64_t now_wall_ms);

/* Where a chunk of `payload` bytes from `from` goes, framed as
 * `frame_bytes` bytes.  FORWARD and HOLD are counted here; a hold past
 * hold_max emits CLOSE(from, 1008), lets the slot go and answers DROP. */
rly_sess_route_t rly_sess_route(rly_sess *s, int from, uint64_t frame_bytes, uint64_t payload);
/* After a read of `from`: pauses it (PAUSE) when receiver_full (its
 * counterpart's queue above the high watermark) or its hold is full. */
void rly_sess_read_done(rly_sess *s, int from, bool receiver_full);
/* The peer in `slot` drained its write queue: its counterpart may go on. */
void rly_sess_drained(rly_sess *s, int slot);

/* True when no peer is on the session (the caller may forget it); a final
 * STATS is emitted first if counters changed since the last report. */
bool rly_sess_done(rly_sess *s);

#endif
