/*
 * session.c — the data plane's decisions for one session (see session.h).
 * The pairing machine's actions come through here and leave as the core's:
 * an open delivers what was held and resumes whoever waited for it.
 */
#include "relay/session.h"

#include <string.h>

static void emit(rly_sess *s, rly_sess_act type, rly_sess_event ev, int slot, uint16_t code,
                 const char *reason, uint64_t bytes) {
  rly_sess_action a = {type, ev, slot, code, reason, bytes};
  s->emit(s->ud, &a);
}

/* Every report carries the counters as they are, so any one resets the
 * clock of the periodic one. */
static void report(rly_sess *s, rly_sess_event ev, int slot, uint16_t code, const char *reason) {
  emit(s, RLY_SESS_EVENT, ev, slot, code, reason, 0);
  s->dirty = false;
  s->reported_ms = s->now_ms;
}

static void resume(rly_sess *s, int slot) {
  if (!s->paused[slot]) return;
  s->paused[slot] = false;
  emit(s, RLY_SESS_RESUME, RLY_SESS_EV_STATS, slot, 0, NULL, 0);
}

/* Both slots held: what each lone peer sent early goes to the other now,
 * then both read again. */
static void opened(rly_sess *s) {
  for (int to = 0; to < 2; to++) {
    if (s->held[to] == 0) continue;
    uint64_t payload = s->held_payload[to];
    s->bytes[1 - to] += payload;
    s->dirty = s->dirty || payload > 0;
    s->held[to] = s->held_payload[to] = 0;
    emit(s, RLY_SESS_FLUSH, RLY_SESS_EV_STATS, to, 0, NULL, payload);
  }
  for (int slot = 0; slot < 2; slot++)
    resume(s, slot);
}

/* The pairing machine's actions, as the core's. */
static void on_pair(void *ud, const rly_pair_action *a) {
  rly_sess *s = ud;
  switch (a->type) {
  case RLY_ACT_CLOSE:
    s->paused[a->slot] = false;
    s->closing[a->slot] = false;
    emit(s, RLY_SESS_CLOSE, RLY_SESS_EV_STATS, a->slot, a->code, a->reason, 0);
    break;
  case RLY_ACT_OPEN: opened(s); break;
  case RLY_ACT_EV_ATTACH: report(s, RLY_SESS_EV_ATTACH, a->slot, 0, NULL); break;
  case RLY_ACT_EV_DETACH: report(s, RLY_SESS_EV_DETACH, a->slot, a->code, a->reason); break;
  case RLY_ACT_EV_OPEN: report(s, RLY_SESS_EV_OPEN, -1, 0, NULL); break;
  case RLY_ACT_EV_CLOSE: report(s, RLY_SESS_EV_CLOSE, -1, a->code, a->reason); break;
  }
}

void rly_sess_init(rly_sess *s, const rly_sess_config *cfg, rly_sess_emit e, void *ud) {
  memset(s, 0, sizeof *s);
  s->cfg = *cfg;
  if (s->cfg.hold_max < s->cfg.hold_cap) s->cfg.hold_max = s->cfg.hold_cap;
  s->emit = e;
  s->ud = ud;
  rly_pair_init(&s->pair, cfg->peer_wait_ms, cfg->expires_at_ms);
}

int rly_sess_attach(rly_sess *s, int slot, uint64_t now_ms) {
  if (slot < 0 || slot > 1) return -1;
  s->closing[slot] = s->paused[slot] = false;
  s->now_ms = now_ms;
  return rly_pair_attach(&s->pair, slot, now_ms, on_pair, s);
}

void rly_sess_leave(rly_sess *s, int slot, uint16_t code, uint64_t now_ms) {
  if (slot < 0 || slot > 1 || !s->pair.held[slot]) return;
  s->closing[slot] = s->paused[slot] = false;
  s->now_ms = now_ms;
  rly_pair_detach(&s->pair, slot, code, now_ms, on_pair, s);
}

void rly_sess_closing(rly_sess *s, int slot) {
  if (slot >= 0 && slot <= 1 && s->pair.held[slot]) s->closing[slot] = true;
}

void rly_sess_kick(rly_sess *s, uint16_t code, const char *reason) {
  rly_pair_kick(&s->pair, code, reason, on_pair, s);
}

void rly_sess_tick(rly_sess *s, uint64_t now_mono_ms, int64_t now_wall_ms) {
  s->now_ms = now_mono_ms;
  rly_pair_tick(&s->pair, now_mono_ms, now_wall_ms, on_pair, s);
  if (s->dirty && now_mono_ms - s->reported_ms >= s->cfg.stats_every_ms)
    report(s, RLY_SESS_EV_STATS, -1, 0, NULL);
}

rly_sess_route_t rly_sess_route(rly_sess *s, int from, uint64_t frame_bytes, uint64_t payload) {
  if (from < 0 || from > 1 || !s->pair.held[from] || s->closing[from]) return RLY_ROUTE_DROP;
  int to = 1 - from;
  if (s->pair.state == RLY_PAIR_OPEN) {
    if (s->closing[to]) return RLY_ROUTE_DROP;
    s->bytes[from] += payload;
    s->dirty = true;
    return RLY_ROUTE_FORWARD;
  }
  /* A lone peer: hold it for the counterpart, up to the bound.  Past it
   * the sender goes, and its slot with it (a rejoin need not wait). */
  if (s->held[to] + frame_bytes > s->cfg.hold_max) {
    static const char why[] = "too much data before the peer arrived";
    emit(s, RLY_SESS_CLOSE, RLY_SESS_EV_STATS, from, 1008, why, 0);
    s->paused[from] = false;
    rly_pair_detach(&s->pair, from, 1008, s->now_ms, on_pair, s);
    return RLY_ROUTE_DROP;
  }
  s->held[to] += frame_bytes;
  s->held_payload[to] += payload;
  return RLY_ROUTE_HOLD;
}

void rly_sess_read_done(rly_sess *s, int from, bool receiver_full) {
  if (from < 0 || from > 1 || !s->pair.held[from] || s->closing[from] || s->paused[from]) return;
  bool open = s->pair.state == RLY_PAIR_OPEN;
  bool full = open ? receiver_full : s->held[1 - from] >= s->cfg.hold_cap;
  if (!full) return;
  s->paused[from] = true;
  emit(s, RLY_SESS_PAUSE, RLY_SESS_EV_STATS, from, 0, NULL, 0);
}

void rly_sess_drained(rly_sess *s, int slot) {
  if (slot < 0 || slot > 1 || s->pair.state != RLY_PAIR_OPEN) return;
  resume(s, 1 - slot);
}

bool rly_sess_done(rly_sess *s) {
  if (!rly_pair_empty(&s->pair)) return false;
  if (s->dirty) report(s, RLY_SESS_EV_STATS, -1, 0, NULL);
  return true;
}
