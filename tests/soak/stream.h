/*
 * stream.h — the soak harness's message streams, sans-I/O (private to
 * tests/soak).
 *
 * Each session carries two streams, one per direction.  A stream is a
 * sequence of binary WebSocket messages numbered 0, 1, 2, ...; the length
 * and every byte of message `seq` are a pure function of (stream seed, seq),
 * so a sender never stores what it sent (a resend regenerates it) and a
 * receiver checks each byte as it arrives without a copy.  Lengths are
 * log-uniform over 1 B .. 64 KiB (plus exact 1 B and 64 KiB boundary
 * messages); a message of 8 bytes or more starts with its seq (big-endian),
 * so a receiver can tell a duplicate or a gap from corruption.
 *
 * Delivery must be exactly once, in order, across relay restarts that lose
 * whatever was in flight, so the peers run a small resume protocol over
 * text messages on the same WebSocket:
 *   "R <n>"  sent once on every new connection: "I hold every message below
 *            n; send from n".  The sender resumes there (sk_tx_resume); it
 *            sends no data on a connection before the counterpart's R.
 *   "A <n>"  sent periodically: "I hold every message below n" (sk_tx_ack),
 *            which bounds the bytes in flight (the sender's window).
 *
 * sk_rx checks a stream (sk_rx_begin / sk_rx_data / sk_rx_end per message)
 * and counts what went wrong; sk_tx keeps a sender's position.  Nothing
 * here allocates, touches a socket or reads a clock.
 */
#ifndef RELAY_SOAK_STREAM_H
#define RELAY_SOAK_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SK_MSG_MAX   65536 /* largest message, bytes */
#define SK_SEQ_BYTES 8     /* messages at least this long start with their seq */
#define SK_CTL_MAX   32    /* longest control text ("R 18446744073709551615") */

/* A stream's seed from the run's seed, the session's number and the
 * direction (0: initiator to responder, 1: back). */
uint64_t sk_seed(uint64_t run_seed, uint64_t session, int dir);

/* Length of message seq, in [1, SK_MSG_MAX]. */
size_t sk_msg_len(uint64_t seed, uint64_t seq);

/* Writes bytes [off, off + n) of message seq (off + n <= its length). */
void sk_msg_fill(uint64_t seed, uint64_t seq, size_t off, uint8_t *out, size_t n);

/* Sum of the lengths of messages [from, to). */
uint64_t sk_range_bytes(uint64_t seed, uint64_t from, uint64_t to);

/* ---- receiving ------------------------------------------------------------------------ */

typedef enum {
  SK_OK = 0,  /* the expected message, intact */
  SK_DUP,     /* an intact copy of a message already received: dropped */
  SK_GAP,     /* an intact message past the expected one: the ones between are lost */
  SK_CORRUPT, /* wrong bytes or length: counted as the expected message, lost */
} sk_verdict;

typedef struct sk_rx {
  uint64_t seed;
  uint64_t next;  /* every message below was received intact */
  uint64_t bytes; /* bytes of those messages */
  /* What went wrong (zero in a good run). */
  uint64_t lost_msgs, lost_bytes; /* gaps and corrupt messages */
  uint64_t corrupt_msgs, dup_msgs, dup_bytes;
  /* The message being received. */
  bool in_msg, decided, bad;
  uint64_t cur;   /* which message it is (once decided) */
  size_t cur_len; /* its expected length */
  size_t off;     /* bytes of it seen so far */
  uint8_t head[SK_SEQ_BYTES];
} sk_rx;

void sk_rx_init(sk_rx *r, uint64_t seed);
void sk_rx_begin(sk_rx *r);
/* A chunk of the current message's payload (any split). */
void sk_rx_data(sk_rx *r, const uint8_t *p, size_t n);
/* The message ended: the verdict, with the counters updated. */
sk_verdict sk_rx_end(sk_rx *r);

/* ---- sending -------------------------------------------------------------------------- */

typedef struct sk_tx {
  uint64_t seed;
  uint64_t next;     /* the next message to send */
  uint64_t high;     /* one past the highest message ever sent */
  uint64_t acked;    /* the receiver holds every message below */
  uint64_t inflight; /* bytes of messages [acked, next) */
  uint64_t sent_bytes, resent_bytes, resent_msgs;
} sk_tx;

void sk_tx_init(sk_tx *t, uint64_t seed);
/* Length of the next message to send. */
static inline size_t sk_tx_next_len(const sk_tx *t) { return sk_msg_len(t->seed, t->next); }
/* Message t->next was written: advance. */
void sk_tx_sent(sk_tx *t);
/* "A n": 0, or -1 when n is past what was sent (n below acked is stale and ignored). */
int sk_tx_ack(sk_tx *t, uint64_t n);
/* "R n" on a new connection: resend from n.  -1 when n is past what was
 * ever sent or below what the receiver had acked (it lost data it had
 * confirmed). */
int sk_tx_resume(sk_tx *t, uint64_t n);

/* ---- control messages ----------------------------------------------------------------- */

/* Writes "K <v>" (kind 'R' or 'A') into out (SK_CTL_MAX bytes); returns its length. */
size_t sk_ctl_format(char *out, char kind, uint64_t v);
/* Parses exactly "K <decimal>" with K in {R, A}; false when malformed. */
bool sk_ctl_parse(const char *p, size_t n, char *kind, uint64_t *v);

#endif
