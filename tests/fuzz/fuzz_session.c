/*
 * fuzz_session.c — the data plane's decision core (relay/session.c) under
 * any sequence of events: each input byte pair is one operation (attach,
 * leave with a code, closing, kick, tick, a chunk routed, a read done with
 * the receiver full or not, a drain) on one slot.  Every action the core
 * emits is checked against what the glue could carry out, and invariants
 * are checked after each operation:
 *
 *   a close, pause or resume names a slot that has a peer; a pause only
 *   for a reader not paused, a resume only for one paused; a flush only
 *   when both slots are held; nothing held for a slot ever passes
 *   hold_max; delivered counters never go back; a paused slot is held;
 *   done() only when no slot is.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay/session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct shadow {
  rly_sess *s;
  bool held_before[2];
} shadow;

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) abort();                                                                             \
  } while (0)

static void on_action(void *ud, const rly_sess_action *a) {
  shadow *sh = ud;
  rly_sess *s = sh->s;
  switch (a->type) {
  case RLY_SESS_CLOSE:
    CHECK(a->slot == 0 || a->slot == 1);
    CHECK(sh->held_before[a->slot]); /* a peer was there to close */
    CHECK(a->code >= 1000 && a->code <= 4999);
    break;
  case RLY_SESS_FLUSH:
    CHECK(a->slot == 0 || a->slot == 1);
    CHECK(s->pair.held[0] && s->pair.held[1]);
    break;
  case RLY_SESS_PAUSE:
    CHECK(a->slot == 0 || a->slot == 1);
    CHECK(s->pair.held[a->slot] && s->paused[a->slot]);
    break;
  case RLY_SESS_RESUME:
    CHECK(a->slot == 0 || a->slot == 1);
    CHECK(s->pair.held[a->slot] && !s->paused[a->slot]);
    break;
  case RLY_SESS_EVENT: CHECK(a->event <= RLY_SESS_EV_STATS); break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  rly_sess s;
  shadow sh = {.s = &s};
  rly_sess_config cfg = {.peer_wait_ms = 1000u * (data[0] & 7),
                         .expires_at_ms = (data[0] & 8) ? 50000 : 0,
                         .hold_cap = 256u * ((data[1] & 15) + 1),
                         .hold_max = 256u * ((data[1] & 15) + 1) + 512,
                         .stats_every_ms = 1000};
  rly_sess_init(&s, &cfg, on_action, &sh);
  uint64_t now = 0, bytes[2] = {0, 0};
  int64_t wall = 0;
  for (size_t i = 2; i + 1 < size; i += 2) {
    uint8_t op = data[i] >> 4, slot = data[i] & 1, arg = data[i + 1];
    memcpy(sh.held_before, s.pair.held, sizeof sh.held_before);
    switch (op) {
    case 0: rly_sess_attach(&s, slot, now); break;
    case 1: rly_sess_leave(&s, slot, (uint16_t)(arg * 20), now); break;
    case 2: rly_sess_closing(&s, slot); break;
    case 3: rly_sess_kick(&s, 1001, "kicked"); break;
    case 4:
      now += (uint64_t)arg * 100;
      wall += (int64_t)arg * 400;
      rly_sess_tick(&s, now, wall);
      break;
    case 5:
    case 6:
    case 7: rly_sess_route(&s, slot, (uint64_t)arg * 8 + 2, (uint64_t)arg * 8); break;
    case 8: rly_sess_read_done(&s, slot, arg & 1); break;
    case 9: rly_sess_drained(&s, slot); break;
    case 10:
      if (rly_sess_done(&s)) CHECK(!s.pair.held[0] && !s.pair.held[1]);
      break;
    default: break;
    }
    for (int k = 0; k < 2; k++) {
      CHECK(s.held[k] <= cfg.hold_max);
      CHECK(s.bytes[k] >= bytes[k]);
      bytes[k] = s.bytes[k];
      CHECK(!s.paused[k] || s.pair.held[k]);
    }
  }
  return 0;
}
