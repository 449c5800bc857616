/*
 * peers.c — the soak's sessions: two WebSocket peers each (the project's
 * own client code, tests/bench/wsload.h, over TLS), streaming paced,
 * checked messages both ways (stream.h) and resuming after a relay restart.
 *
 * A peer dials /relay/{id} with `Authorization: Bearer <slot token>`, sends
 * "R <next expected>" and waits for its counterpart's R before sending any
 * data; from then on it sends at --rate (token bucket) within --window
 * unacknowledged bytes and acknowledges what it receives ("A <n>").  A
 * refused upgrade or a cut connection is redialled with exponential
 * backoff and full jitter.  A close is *expected* when we planned it (the
 * initiator leaving: 1000 to both; a DELETE: 1001 to both; the close code
 * must then be exactly that) or when the connection was made to a relay
 * incarnation that has since been killed; any other close drops the
 * session (counted once, reported with what was going on at the time).
 */
#include <stdlib.h>
#include <string.h>

#include "../bench/wsload.h"
#include "soak.h"

#define BACKOFF_BASE_S  0.05 /* first redial delay bound, doubling per failure */
#define BACKOFF_MAX_S   1.0  /* largest bound */
#define REDIAL_JITTER_S 0.05 /* after a relay kill: spread the first redial */
#define ACK_INTERVAL_S  0.2  /* acknowledge at least this often while receiving */
#define BURST_S         0.25 /* a peer may send this much of its rate at once */
#define MAX_REPORTS     20   /* damage lines printed; the counters keep counting */
#define WANT_ANY        1    /* want_close: any close will do (not a valid code) */

sk_totals g_tot;
cm_list g_sessions = {&g_sessions, &g_sessions};
int g_relay_gen = 1;
bool g_sending = true;

static cm_list g_queue = {&g_queue, &g_queue}; /* peers waiting for a handshake slot */
static int g_connecting;
static int g_reports;
static uint8_t g_frame[SK_MSG_MAX + WS_MAX_HEADER];

static void report(const sk_peer *p, const char *what) {
  if (g_reports++ >= MAX_REPORTS) return;
  printf("!! t=%.1f session %llu %s (%s): %s\n", sk_now(), (unsigned long long)p->s->num, p->s->id,
         p->role ? "responder" : "initiator", what);
}

/* ---- sending -------------------------------------------------------------------------- */

static void send_text(sk_peer *p, char kind, uint64_t v) {
  char text[SK_CTL_MAX];
  size_t n = sk_ctl_format(text, kind, v);
  uint8_t f[SK_CTL_MAX + WS_MAX_HEADER];
  wl_send(p->c, f, wl_frame_build(f, true, WS_TEXT, (const uint8_t *)text, n));
}

static void send_ack(sk_peer *p) {
  send_text(p, 'A', p->rx.next);
  p->acked_sent = p->rx.next;
  p->acked_bytes = p->rx.bytes;
  p->acked_at = sk_now();
}

/* Message tx.next as one masked frame. */
/* --inject (checking the harness itself): damage one stream on purpose. */
static bool g_inject_corrupt, g_inject_gap;

static int send_message(sk_peer *p) {
  size_t len = sk_tx_next_len(&p->tx);
  size_t h = ws_frame_header(g_frame, true, WS_BINARY, len, WL_MASK);
  sk_msg_fill(p->tx.seed, p->tx.next, 0, g_frame + h, len);
  ws_mask(g_frame + h, len, WL_MASK, 0);
  if (g_inject_corrupt && p->s->num == 0) {
    g_inject_corrupt = false;
    g_frame[h + len / 2] ^= 0x20; /* one bit of one byte, as a relay bug would */
  }
  if (g_inject_gap && p->s->num == 1) {
    g_inject_gap = false;
    sk_tx_sent(&p->tx); /* counted as sent, never written: a message lost in the relay */
    return 0;
  }
  if (wl_send(p->c, g_frame, h + len) != 0) return -1;
  sk_tx_sent(&p->tx);
  p->tokens -= (double)len;
  return 0;
}

/* Sends while pacing, the window and the socket allow.  Once sending has
 * stopped (draining) only messages already sent once and lost are resent. */
static void pump(sk_peer *p) {
  if (p->state != P_FLOWING || !p->c) return;
  double now = sk_now(), burst = CM_MAX((double)SK_MSG_MAX, opt.rate * BURST_S);
  p->tokens = CM_MIN(burst, p->tokens + (now - p->filled_at) * opt.rate);
  p->filled_at = now;
  bool fresh = g_sending && p->s->state == S_FLOWING;
  while (p->tokens > 0 && (double)p->tx.inflight < opt.window && !wl_above_high(p->c)) {
    if (!fresh && p->tx.next >= p->tx.high) break;
    if (send_message(p) != 0) break;
  }
}

/* ---- connection life ------------------------------------------------------------------ */

static void backoff(sk_peer *p, bool relay_died) {
  double bound =
      relay_died ? REDIAL_JITTER_S : BACKOFF_BASE_S * (double)(1u << CM_MIN(p->attempt, 8));
  if (!relay_died) p->attempt++;
  bound = CM_MIN(bound, BACKOFF_MAX_S);
  p->retry_at = sk_now() + bound * (double)cm_random_below(1000) / 1000.0;
  p->state = P_BACKOFF;
}

static void drop(sk_peer *p, const char *why) {
  sk_session *s = p->s;
  report(p, why);
  if (s->dropped) return;
  s->dropped = true;
  g_tot.dropped++;
  sk_outage *o = sk_outage_now();
  if (o) o->dropped++;
}

static void refused(sk_peer *p, int status) {
  int kind = sk_refusal_kind(status);
  g_tot.upgrade_refused[kind]++;
  sk_outage *o = sk_outage_now();
  if (o) o->upgrade_refused[kind]++;
  if (status == 404 || status == 401) {
    char why[64];
    snprintf(why, sizeof why, "upgrade refused %d: the session is gone", status);
    drop(p, why);
  }
}

static void on_ready(wl_conn *c) {
  sk_peer *p = c->ud;
  g_connecting--;
  g_tot.upgrades_ok++;
  if (p->want_close) { /* the session was closed while this peer dialled */
    p->want_close = WANT_ANY;
    cm_stream_close(c->st);
    return;
  }
  sk_outage *o = sk_outage_now();
  if (o && o->kind == O_RELAY_KILL) o->reconnects++;
  p->state = P_WAIT_R;
  p->ready_at = sk_now();
  p->first_rx = 0;
  p->msg_open = false;
  p->textn = 0;
  send_text(p, 'R', p->rx.next);
}

static void protocol_error(sk_peer *p, const char *why) {
  g_tot.protocol_errors++;
  report(p, why);
}

static void on_control_text(sk_peer *p) {
  char kind;
  uint64_t v;
  if (p->text_bad || !sk_ctl_parse(p->text, p->textn, &kind, &v)) {
    protocol_error(p, "malformed control text");
    return;
  }
  if (kind == 'A') {
    if (sk_tx_ack(&p->tx, v) != 0) protocol_error(p, "ack past what was sent");
    pump(p);
    return;
  }
  if (sk_tx_resume(&p->tx, v) != 0) {
    protocol_error(p, "resume point the sender cannot honour");
    return;
  }
  p->state = P_FLOWING;
  p->attempt = 0;
  p->filled_at = sk_now();
  /* A resumed stream sends at once (a pacing debt from a 64 KiB message
   * would delay it by up to 64 KiB / rate): the time until sessions flow
   * again after a relay kill then measures the relay, not this pacing. */
  p->tokens = CM_MAX(p->tokens, 1.0);
  pump(p);
}

static void on_binary_end(sk_peer *p) {
  if (!p->msg_open) sk_rx_begin(&p->rx);
  p->msg_open = false;
  uint64_t seq = p->rx.next;
  sk_verdict v = sk_rx_end(&p->rx);
  if (v != SK_OK && v != SK_DUP) {
    char why[96];
    snprintf(why, sizeof why, "%s at message %llu", v == SK_GAP ? "gap" : "corrupt message",
             (unsigned long long)seq);
    report(p, why);
  }
  if (v == SK_OK || v == SK_GAP) {
    if (p->first_rx == 0) p->first_rx = sk_now();
    if ((double)(p->rx.bytes - p->acked_bytes) >= opt.window / 4) send_ack(p);
  }
}

static void on_payload(wl_conn *c, const uint8_t *data, size_t len) {
  sk_peer *p = c->ud;
  if (c->msg_opcode == WS_BINARY) {
    if (!p->msg_open) {
      sk_rx_begin(&p->rx);
      p->msg_open = true;
    }
    sk_rx_data(&p->rx, data, len);
    return;
  }
  if (p->textn + len > SK_CTL_MAX) {
    p->text_bad = true;
    return;
  }
  memcpy(p->text + p->textn, data, len);
  p->textn += len;
}

static void on_message(wl_conn *c, uint64_t len) {
  (void)len;
  sk_peer *p = c->ud;
  if (c->msg_opcode == WS_BINARY) {
    on_binary_end(p);
    return;
  }
  on_control_text(p);
  p->textn = 0;
  p->text_bad = false;
}

static void on_drain(wl_conn *c) { pump(c->ud); }

/* Tallies an unplanned close by its code: 1000, 1001, 1011, other, none. */
static void tally_close(uint16_t code) {
  int i = code == 1000 ? 0 : code == 1001 ? 1 : code == 1011 ? 2 : code ? 3 : 4;
  g_tot.unexpected_close_codes[i]++;
}

static void on_close(wl_conn *c, int err, const char *msg) {
  sk_peer *p = c->ud;
  p->c = NULL;
  if (p->msg_open) { /* a message cut short is not counted: it will be resent */
    p->msg_open = false;
    p->rx.in_msg = false;
  }
  if (!c->ready) {
    g_connecting--;
    if (p->s->delete_sent && c->http_status == 404) {
      /* A DELETE whose answer was lost (the relay died under it, or its
       * deadline passed) may still have been carried out: the session is
       * gone by our own hand, no drop. */
      g_tot.upgrade_refused[sk_refusal_kind(404)]++;
      p->s->state = S_CLOSING;
      p->state = P_DONE;
      return;
    }
    refused(p, c->http_status);
    if (p->s->state == S_CLOSED || p->want_close) {
      p->state = P_DONE;
      return;
    }
    backoff(p, false);
    return;
  }
  bool relay_died = p->relay_gen != g_relay_gen;
  if (p->s->delete_sent && c->close_code == WS_CLOSE_GOING_AWAY) p->s->kicked = true;
  if (p->want_close) {
    if (c->close_code != p->want_close && p->want_close != WANT_ANY && !relay_died) {
      char why[96];
      snprintf(why, sizeof why, "closed with %u where %u was due", c->close_code, p->want_close);
      report(p, why);
      g_tot.wrong_close++;
    }
    p->state = P_DONE;
    return;
  }
  if (p->s->state == S_CLOSED) {
    p->state = P_DONE;
    return;
  }
  if (p->s->delete_sent && c->close_code == WS_CLOSE_GOING_AWAY) {
    /* A DELETE that answered 503 (its deadline passed while the controller
     * hung) may still have been carried out: its kick is no drop. */
    p->s->state = S_CLOSING;
    p->state = P_DONE;
    return;
  }
  if (!relay_died) {
    char why[160];
    snprintf(why, sizeof why, "connection closed (close code %u, %s) with no fault to explain it",
             c->close_code, err ? msg : "orderly");
    tally_close(c->close_code);
    drop(p, why);
  }
  backoff(p, relay_died);
}

static const wl_cbs PEER_CBS = {on_ready, on_message, on_drain, on_close, on_payload};

static void dial(sk_peer *p) {
  char path[64], hdr[96];
  snprintf(path, sizeof path, "/relay/%s", p->s->id);
  snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\n", p->s->token[p->role]);
  int err;
  p->relay_gen = g_relay_gen;
  p->c = wl_connect_hdr(g_loop, (struct sockaddr *)&g_relay_addr, g_tls, "127.0.0.1", path, hdr,
                        &PEER_CBS, p, &err);
  explicit_bzero(hdr, sizeof hdr);
  if (!p->c) {
    refused(p, AC_FAILED);
    backoff(p, false);
    return;
  }
  p->state = P_CONNECTING;
  g_connecting++;
}

static void enqueue(sk_peer *p) {
  p->state = P_QUEUED;
  cm_list_push_back(&g_queue, &p->qlink);
}

/* ---- sessions ------------------------------------------------------------------------- */

sk_session *sk_session_new(uint64_t num, bool churn, const char *id, const char *ti,
                           const char *tr) {
  sk_session *s = calloc(1, sizeof *s);
  if (!s) sk_die("out of memory");
  s->num = num;
  s->churn = churn;
  s->born_gen = g_relay_gen;
  snprintf(s->id, sizeof s->id, "%s", id);
  snprintf(s->token[0], sizeof s->token[0], "%s", ti);
  snprintf(s->token[1], sizeof s->token[1], "%s", tr);
  for (int role = 0; role < 2; role++) {
    sk_peer *p = &s->p[role];
    p->s = s;
    p->role = role;
    sk_tx_init(&p->tx, sk_seed(opt.seed, num, role)); /* direction = the sender's role */
    sk_rx_init(&p->rx, sk_seed(opt.seed, num, 1 - role));
    cm_list_init(&p->qlink);
  }
  cm_list_push_back(&g_sessions, &s->link);
  return s;
}

void sk_session_connect(sk_session *s) {
  for (int i = 0; i < 2; i++)
    enqueue(&s->p[i]);
}

bool sk_session_flowing(const sk_session *s) {
  return s->p[0].state == P_FLOWING && s->p[1].state == P_FLOWING;
}

bool sk_session_flows_on(const sk_session *s, int gen) {
  for (int i = 0; i < 2; i++) {
    const sk_peer *p = &s->p[i];
    if (p->state != P_FLOWING || p->relay_gen != gen || p->first_rx == 0) return false;
  }
  return true;
}

double sk_session_flowed_at(const sk_session *s) {
  if (!s->p[0].first_rx || !s->p[1].first_rx) return 0;
  return CM_MAX(s->p[0].first_rx, s->p[1].first_rx);
}

void sk_session_drain(sk_session *s, double timeout) {
  s->state = S_DRAINING;
  s->drain_deadline = sk_now() + timeout;
}

bool sk_session_drained(const sk_session *s) {
  for (int i = 0; i < 2; i++)
    if (s->p[1 - i].rx.next < s->p[i].tx.high) return false;
  return true;
}

/* The peer closes or, not connected, is simply done. */
static void plan_close(sk_peer *p, uint16_t code) {
  p->want_close = code;
  if (p->state == P_QUEUED) cm_list_remove(&p->qlink);
  if (!p->c) p->state = P_DONE;
}

void sk_session_leave(sk_session *s) {
  s->state = S_CLOSING;
  plan_close(&s->p[0], WS_CLOSE_NORMAL);
  plan_close(&s->p[1], WS_CLOSE_NORMAL);
  if (s->p[0].c && s->p[0].c->ready) wl_close_with(s->p[0].c, WS_CLOSE_NORMAL);
}

void sk_session_unplan(sk_session *s) {
  s->state = S_DRAINING;
  for (int i = 0; i < 2; i++) {
    sk_peer *p = &s->p[i];
    p->want_close = 0;
    if (p->state == P_DONE) backoff(p, true);
  }
}

void sk_session_expect_kick(sk_session *s) {
  s->state = S_CLOSING;
  plan_close(&s->p[0], WS_CLOSE_GOING_AWAY);
  plan_close(&s->p[1], WS_CLOSE_GOING_AWAY);
}

bool sk_session_closed(const sk_session *s) {
  return s->p[0].state == P_DONE && s->p[1].state == P_DONE;
}

void sk_session_finish(sk_session *s) {
  for (int i = 0; i < 2; i++) {
    const sk_peer *p = &s->p[i], *q = &s->p[1 - i];
    g_tot.sent_bytes += p->tx.sent_bytes;
    g_tot.resent_bytes += p->tx.resent_bytes;
    g_tot.bytes_ok += q->rx.bytes;
    g_tot.msgs_ok += q->rx.next - q->rx.lost_msgs;
    g_tot.lost_bytes += q->rx.lost_bytes;
    g_tot.lost_msgs += q->rx.lost_msgs;
    g_tot.corrupt_msgs += q->rx.corrupt_msgs;
    g_tot.dup_msgs += q->rx.dup_msgs;
    g_tot.dup_bytes += q->rx.dup_bytes;
    if (q->rx.next < p->tx.high) { /* sent, never delivered before the end */
      uint64_t n = sk_range_bytes(p->tx.seed, q->rx.next, p->tx.high);
      g_tot.undelivered_bytes += n;
      g_tot.lost_bytes += n;
      report(q, "messages sent to it were never delivered");
    }
  }
  for (int i = 0; i < 2; i++)
    if (s->p[i].state == P_QUEUED) cm_list_remove(&s->p[i].qlink);
  cm_list_remove(&s->link);
  explicit_bzero(s->token, sizeof s->token);
  free(s);
}

/* ---- the tick ------------------------------------------------------------------------- */

void sk_peers_tick(void) {
  double now = sk_now();
  while (g_connecting < opt.max_connecting && !cm_list_empty(&g_queue)) {
    sk_peer *p = cm_container_of(g_queue.next, sk_peer, qlink);
    cm_list_remove(&p->qlink);
    dial(p);
  }
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next) {
    sk_session *s = cm_container_of(l, sk_session, link);
    for (int i = 0; i < 2; i++) {
      sk_peer *p = &s->p[i];
      if (p->state == P_BACKOFF && s->state >= S_CLOSING) p->state = P_DONE;
      if (p->state == P_BACKOFF && now >= p->retry_at && !p->want_close) enqueue(p);
      if (p->state != P_FLOWING) continue;
      pump(p);
      if (p->rx.next > p->acked_sent && now - p->acked_at >= ACK_INTERVAL_S) send_ack(p);
    }
  }
}

int sk_peers_connecting(void) { return g_connecting; }

void sk_inject(const char *what) {
  g_inject_corrupt = strstr(what, "corrupt") != NULL;
  g_inject_gap = strstr(what, "gap") != NULL;
  if (!strstr(what, "cut")) return;
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next) {
    sk_session *s = cm_container_of(l, sk_session, link);
    if (s->num == 2 && s->p[0].c) cm_stream_abort(s->p[0].c->st); /* a reset nobody asked for */
  }
}

void sk_peers_abort_all(void) {
  for (cm_list *l = g_sessions.next; l != &g_sessions; l = l->next) {
    sk_session *s = cm_container_of(l, sk_session, link);
    s->state = S_CLOSED;
    for (int i = 0; i < 2; i++) {
      if (s->p[i].state == P_QUEUED) cm_list_remove(&s->p[i].qlink);
      if (s->p[i].c) cm_stream_abort(s->p[i].c->st);
      s->p[i].state = P_DONE;
    }
  }
}
