/*
 * test_soak_stream.c — the soak harness's message streams (stream.c): the
 * generator covers the sizes it promises, the receiver accepts an intact
 * stream however it is split and names every kind of damage, and the
 * sender's resume arithmetic gives exactly-once delivery across a lost
 * tail.  If these were wrong the soak's "0 bytes lost" would mean nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stream.h"

static uint8_t g_msg[SK_MSG_MAX];

static size_t make(uint64_t seed, uint64_t seq) {
  size_t n = sk_msg_len(seed, seq);
  sk_msg_fill(seed, seq, 0, g_msg, n);
  return n;
}

/* Feeds g_msg[0..n) in pieces of pseudo-random size (1..max). */
static sk_verdict feed(sk_rx *r, size_t n, unsigned *rng, size_t max) {
  sk_rx_begin(r);
  for (size_t off = 0; off < n;) {
    *rng = *rng * 1103515245u + 12345u;
    size_t k = 1 + (*rng >> 8) % max;
    if (k > n - off) k = n - off;
    sk_rx_data(r, g_msg + off, k);
    off += k;
  }
  return sk_rx_end(r);
}

static void test_lengths_cover_the_range(void **state) {
  (void)state;
  uint64_t seed = sk_seed(1, 2, 0);
  bool one = false, max = false, short_ = false, mid16 = false, len64 = false;
  for (uint64_t s = 0; s < 20000; s++) {
    size_t n = sk_msg_len(seed, s);
    assert_true(n >= 1 && n <= SK_MSG_MAX);
    assert_int_equal(n, sk_msg_len(seed, s)); /* deterministic */
    one |= n == 1, max |= n == SK_MSG_MAX, short_ |= n > 1 && n < SK_SEQ_BYTES;
    mid16 |= n >= 126 && n<65536, len64 |= n> 65535;
  }
  assert_true(one && max && short_ && mid16 && len64);
  /* Streams differ by session and direction. */
  assert_true(sk_seed(1, 2, 0) != sk_seed(1, 2, 1));
  assert_true(sk_seed(1, 2, 0) != sk_seed(1, 3, 0));
}

static void test_fill_at_any_offset(void **state) {
  (void)state;
  uint64_t seed = sk_seed(7, 1, 1);
  for (uint64_t s = 0; s < 200; s++) {
    size_t n = make(seed, s);
    uint8_t part[SK_MSG_MAX];
    for (size_t off = 0; off < n; off += 1 + off / 3) {
      size_t k = (n - off) / 2 + 1;
      if (k > n - off) k = n - off;
      sk_msg_fill(seed, s, off, part, k);
      assert_memory_equal(part, g_msg + off, k);
    }
    if (n >= SK_SEQ_BYTES) { /* numbered: big-endian seq first */
      uint64_t v = 0;
      for (int i = 0; i < SK_SEQ_BYTES; i++)
        v = v << 8 | g_msg[i];
      assert_true(v == s);
    }
  }
}

static void test_intact_stream_any_split(void **state) {
  (void)state;
  uint64_t seed = sk_seed(3, 9, 0);
  size_t splits[] = {1, 3, 7, 8, 9, 1000, SK_MSG_MAX};
  for (size_t i = 0; i < sizeof splits / sizeof *splits; i++) {
    sk_rx r;
    sk_rx_init(&r, seed);
    unsigned rng = (unsigned)i;
    for (uint64_t s = 0; s < 300; s++)
      assert_int_equal(feed(&r, make(seed, s), &rng, splits[i]), SK_OK);
    assert_true(r.next == 300);
    assert_true(r.bytes == sk_range_bytes(seed, 0, 300));
    assert_true(r.lost_bytes == 0 && r.corrupt_msgs == 0 && r.dup_msgs == 0);
  }
}

/* The first message at or after `from` of at least `min` bytes. */
static uint64_t find(uint64_t seed, uint64_t from, size_t min) {
  while (sk_msg_len(seed, from) < min)
    from++;
  return from;
}

static void test_damage_is_named(void **state) {
  (void)state;
  uint64_t seed = sk_seed(5, 5, 1);
  unsigned rng = 1;
  sk_rx r;
  sk_rx_init(&r, seed);
  /* Up to a long message k, then k with one byte flipped. */
  uint64_t k = find(seed, 10, 100);
  for (uint64_t s = 0; s < k; s++)
    assert_int_equal(feed(&r, make(seed, s), &rng, 500), SK_OK);
  size_t n = make(seed, k);
  g_msg[n / 2] ^= 0x40;
  assert_int_equal(feed(&r, n, &rng, 500), SK_CORRUPT);
  assert_true(r.corrupt_msgs == 1 && r.lost_msgs == 1 && r.lost_bytes == n && r.next == k + 1);
  /* A message truncated by one byte is corrupt too. */
  n = make(seed, k + 1);
  assert_int_equal(feed(&r, n - 1, &rng, 500), SK_CORRUPT);
  assert_true(r.corrupt_msgs == 2 && r.next == k + 2);
  /* A duplicate of an intact numbered message is dropped, not counted. */
  uint64_t d = find(seed, 0, SK_SEQ_BYTES);
  assert_true(d < k);
  uint64_t bytes = r.bytes;
  assert_int_equal(feed(&r, make(seed, d), &rng, 500), SK_DUP);
  assert_true(r.dup_msgs == 1 && r.dup_bytes == sk_msg_len(seed, d) && r.next == k + 2);
  assert_true(r.bytes == bytes);
  /* Skipping ahead to a numbered message: the ones between are lost. */
  uint64_t g = find(seed, k + 5, SK_SEQ_BYTES);
  uint64_t lost = r.lost_bytes + sk_range_bytes(seed, k + 2, g);
  assert_int_equal(feed(&r, make(seed, g), &rng, 500), SK_GAP);
  assert_true(r.lost_bytes == lost && r.next == g + 1);
  /* Another stream's message in place of ours is corrupt. */
  n = make(sk_seed(5, 6, 1), r.next);
  assert_int_equal(feed(&r, n, &rng, 500), SK_CORRUPT);
}

static void test_short_message_checked(void **state) {
  (void)state;
  uint64_t seed = sk_seed(11, 0, 0);
  uint64_t s = 0;
  while (sk_msg_len(seed, s) >= SK_SEQ_BYTES)
    s++;
  sk_rx r;
  sk_rx_init(&r, seed);
  r.next = s;
  unsigned rng = 3;
  size_t n = make(seed, s);
  g_msg[n - 1] ^= 1;
  assert_int_equal(feed(&r, n, &rng, 1), SK_CORRUPT);
  r.next = s;
  make(seed, s);
  assert_int_equal(feed(&r, n, &rng, 1), SK_OK);
}

/* A sender, a receiver and a "relay" that loses the tail of what was in
 * flight at each crash: with R-resume every message arrives exactly once. */
static void test_resume_exactly_once(void **state) {
  (void)state;
  uint64_t seed = sk_seed(2, 4, 0);
  sk_tx t;
  sk_rx r;
  sk_tx_init(&t, seed);
  sk_rx_init(&r, seed);
  unsigned rng = 9;
  uint64_t resent = 0;
  for (int crash = 0; crash < 5; crash++) {
    /* The new connection: the receiver announces, the sender resumes. */
    assert_int_equal(sk_tx_resume(&t, r.next), 0);
    assert_true(t.inflight == 0 && t.next == r.next);
    uint64_t first = t.next;
    for (int i = 0; i < 40; i++) {
      size_t n = make(seed, t.next);
      sk_tx_sent(&t);
      if (i < 25) assert_int_equal(feed(&r, n, &rng, 4000), SK_OK); /* 15 lost in flight */
      if (i == 10) assert_int_equal(sk_tx_ack(&t, r.next), 0);
    }
    if (crash > 0) resent += sk_range_bytes(seed, first, first + 15);
    assert_true(t.inflight == sk_range_bytes(seed, t.acked, t.next));
  }
  assert_int_equal(sk_tx_resume(&t, r.next), 0);
  assert_true(r.lost_bytes == 0 && r.dup_msgs == 0 && r.corrupt_msgs == 0);
  assert_true(r.next == 5 * 25 && r.bytes == sk_range_bytes(seed, 0, r.next));
  assert_true(t.resent_bytes == resent && t.high == r.next + 15);
  /* A receiver claiming more than was sent, or less than it acked, is refused. */
  assert_int_equal(sk_tx_resume(&t, t.high + 1), -1);
  assert_int_equal(sk_tx_ack(&t, t.next + 1), -1);
  sk_tx_sent(&t);
  assert_int_equal(sk_tx_ack(&t, t.next), 0);
  assert_int_equal(sk_tx_resume(&t, t.acked - 1), -1);
  assert_true(t.inflight == 0);
}

static void test_control_messages(void **state) {
  (void)state;
  char buf[SK_CTL_MAX], kind;
  uint64_t v;
  size_t n = sk_ctl_format(buf, 'R', UINT64_MAX);
  assert_string_equal(buf, "R 18446744073709551615");
  assert_true(sk_ctl_parse(buf, n, &kind, &v) && kind == 'R' && v == UINT64_MAX);
  n = sk_ctl_format(buf, 'A', 0);
  assert_true(sk_ctl_parse(buf, n, &kind, &v) && kind == 'A' && v == 0);
  const char *bad[] = {"",     "R", "R ", "X 1", "R1", "R -1", "R 1 ", "R 18446744073709551616",
                       "A 12a"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_false(sk_ctl_parse(bad[i], strlen(bad[i]), &kind, &v));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lengths_cover_the_range), cmocka_unit_test(test_fill_at_any_offset),
      cmocka_unit_test(test_intact_stream_any_split), cmocka_unit_test(test_damage_is_named),
      cmocka_unit_test(test_short_message_checked),   cmocka_unit_test(test_resume_exactly_once),
      cmocka_unit_test(test_control_messages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
