/*
 * pair.c — the pairing state machine (see pair.h).  Every transition is a
 * handful of lines that emit actions; the caller owns sockets and timers.
 */
#include "relay/pair.h"

#include <stddef.h>

const char *rly_pair_state_name(rly_pair_state s) {
  static const char *names[] = {"pending", "half_open", "open", "closed"};
  return s <= RLY_PAIR_CLOSED ? names[s] : "unknown";
}

static void emit1(rly_pair_emit emit, void *ud, rly_pair_act t, int slot, uint16_t code,
                  const char *reason) {
  rly_pair_action a = {t, slot, code, reason};
  emit(ud, &a);
}

static int nheld(const rly_pair *p) { return (int)p->held[0] + (int)p->held[1]; }

static void settle(rly_pair *p, uint64_t now_ms) {
  if (p->state == RLY_PAIR_CLOSED) return;
  int n = nheld(p);
  rly_pair_state was = p->state;
  p->state = n == 2 ? RLY_PAIR_OPEN : n == 1 ? RLY_PAIR_HALF_OPEN : RLY_PAIR_PENDING;
  if (p->state == RLY_PAIR_HALF_OPEN && was != RLY_PAIR_HALF_OPEN) p->lone_since_ms = now_ms;
}

void rly_pair_init(rly_pair *p, uint64_t peer_wait_ms, int64_t expires_at_ms) {
  p->state = RLY_PAIR_PENDING;
  p->held[0] = p->held[1] = false;
  p->lone_since_ms = 0;
  p->peer_wait_ms = peer_wait_ms;
  p->expires_at_ms = expires_at_ms;
}

bool rly_pair_code_sendable(uint16_t c) {
  return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
}

bool rly_pair_empty(const rly_pair *p) { return nheld(p) == 0; }

int rly_pair_attach(rly_pair *p, int slot, uint64_t now_ms, rly_pair_emit emit, void *ud) {
  if (p->state == RLY_PAIR_CLOSED || slot < 0 || slot > 1 || p->held[slot]) return -1;
  p->held[slot] = true;
  settle(p, now_ms);
  emit1(emit, ud, RLY_ACT_EV_ATTACH, slot, 0, NULL);
  if (p->state == RLY_PAIR_OPEN) {
    emit1(emit, ud, RLY_ACT_OPEN, slot, 0, NULL);
    emit1(emit, ud, RLY_ACT_EV_OPEN, slot, 0, NULL);
  }
  return 0;
}

static void release(rly_pair *p, int slot, uint16_t code, const char *reason, bool tell_peer,
                    rly_pair_emit emit, void *ud) {
  if (!p->held[slot]) return;
  p->held[slot] = false;
  if (tell_peer) emit1(emit, ud, RLY_ACT_CLOSE, slot, code, reason);
  emit1(emit, ud, RLY_ACT_EV_DETACH, slot, code, reason);
}

void rly_pair_detach(rly_pair *p, int slot, uint16_t code, uint64_t now_ms, rly_pair_emit emit,
                     void *ud) {
  if (slot < 0 || slot > 1 || !p->held[slot]) return;
  bool was_open = p->state == RLY_PAIR_OPEN;
  release(p, slot, code, "peer left", false, emit, ud);
  if (was_open) {
    /* The survivor cannot talk to anyone: close it too, passing on why. */
    uint16_t fwd = rly_pair_code_sendable(code) ? code : 1000;
    release(p, 1 - slot, fwd, "peer left", true, emit, ud);
  }
  settle(p, now_ms);
}

void rly_pair_kick(rly_pair *p, uint16_t code, const char *reason, rly_pair_emit emit, void *ud) {
  if (p->state == RLY_PAIR_CLOSED) return;
  p->state = RLY_PAIR_CLOSED;
  for (int s = 0; s < 2; s++)
    release(p, s, code, reason, true, emit, ud);
  emit1(emit, ud, RLY_ACT_EV_CLOSE, -1, code, reason);
}

void rly_pair_tick(rly_pair *p, uint64_t now_mono_ms, int64_t now_wall_ms, rly_pair_emit emit,
                   void *ud) {
  if (p->state == RLY_PAIR_CLOSED) return;
  if (p->expires_at_ms && now_wall_ms >= p->expires_at_ms) {
    rly_pair_kick(p, 1001, "session expired", emit, ud);
    return;
  }
  if (p->state == RLY_PAIR_HALF_OPEN && p->peer_wait_ms &&
      now_mono_ms - p->lone_since_ms >= p->peer_wait_ms) {
    int lone = p->held[0] ? 0 : 1;
    release(p, lone, 1001, "peer_wait expired", true, emit, ud);
    settle(p, now_mono_ms);
  }
}
