/*
 * test_netpolicy.c — where a target session may go (common/netpolicy.c):
 * the target syntax (names, IPv4, bracketed IPv6, ports, and what the
 * resolver would misread: "127.1", "2130706433", "0x7f.1", leading
 * zeros), the allow-list syntax, the fixed block (loopback, link-local,
 * metadata, unspecified, multicast) and explicit allowing of it, and as
 * properties over random addresses: a mapped IPv6 address gets the IPv4
 * verdict, 0.0.0.0/0 and ::/0 allow exactly what is not blocked, and a
 * port outside an entry's range is never allowed by it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "common/common.h"

static cm_netpolicy *policy(const char *const *e, size_t n) {
  char err[200];
  cm_netpolicy *p = cm_netpolicy_new(e, n, err, sizeof err);
  if (!p) fail_msg("%s", err);
  return p;
}

static cm_net_verdict check(const cm_netpolicy *p, const char *ip, uint16_t port) {
  cm_ipaddr a;
  if (cm_ipaddr_parse(ip, &a) != 0) fail_msg("not an address: %s", ip);
  return cm_netpolicy_check(p, &a, port);
}

static void test_targets(void **state) {
  (void)state;
  static const struct {
    const char *t, *host;
    unsigned port;
    bool ip;
  } good[] = {
      {"ssh.example.com:22", "ssh.example.com", 22, false},
      {"localhost:2222", "localhost", 2222, false},
      {"a-b.c9:65535", "a-b.c9", 65535, false},
      {"10.1.2.3:22", "10.1.2.3", 22, true},
      {"0.0.0.0:1", "0.0.0.0", 1, true},
      {"[::1]:22", "::1", 22, true},
      {"[2001:db8::7]:443", "2001:db8::7", 443, true},
      {"[::ffff:127.0.0.1]:22", "::ffff:127.0.0.1", 22, true},
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(good); i++) {
    cm_target t;
    char err[200];
    if (cm_target_parse(good[i].t, &t, err, sizeof err) != 0) fail_msg("%s: %s", good[i].t, err);
    assert_string_equal(t.host, good[i].host);
    assert_int_equal(t.port, good[i].port);
    assert_int_equal(t.is_ip, good[i].ip);
  }
  static const char *const bad[] = {
      "",
      ":22",
      "host",
      "host:",
      "host:0",
      "host:65536",
      "host:022",
      "host:2x",
      "::1:22",
      "[::1]",
      "[::1]22",
      "[10.0.0.1]:22",
      "[fe80::1%eth0]:22",
      "127.1:22",
      "2130706433:22",
      "0x7f.1:22",
      "010.0.0.1:22",
      "1.2.3.4.5:22",
      "256.0.0.1:22",
      "-a.com:22",
      "a-.com:22",
      "a..com:22",
      "a.com.:22",
      "a_b.com:22",
      "a com:22",
      "exa\nmple.com:22",
      "1.2.3:22",
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
    cm_target t;
    char err[200];
    if (cm_target_parse(bad[i], &t, err, sizeof err) != -EINVAL) fail_msg("accepted %s", bad[i]);
  }
  char longname[400];
  memset(longname, 'a', 300);
  strcpy(longname + 300, ".com:22");
  cm_target t;
  char err[200];
  assert_int_equal(cm_target_parse(longname, &t, err, sizeof err), -EINVAL);
}

static void test_entries(void **state) {
  (void)state;
  static const char *const bad[] = {
      "10.0.0.0:22",      "10.0.0.0/33:22", "10.0.0.0/8",   "10.0.0.0/8:",  "10.0.0.0/8:0",
      "10.0.0.0/8:22-21", "10.0.0/8:22",    "::1/129:22",   "[::1/128]:22", "x/8:22",
      "10.0.0.0/8:22-",   "10.0.0.0/:22",   "10.0.0.0/8:a", "/8:22",        "",
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
    char err[200];
    const char *e[] = {bad[i]};
    cm_netpolicy *p = cm_netpolicy_new(e, 1, err, sizeof err);
    if (p) fail_msg("accepted %s", bad[i]);
  }
  const char *ok[] = {"10.0.0.0/8:22", "[2001:db8::]/32:443", "2001:db8::/32:8000-8099",
                      "::ffff:192.168.0.0/112:25"};
  cm_netpolicy *p = policy(ok, CM_ARRAY_LEN(ok));
  assert_int_equal(cm_netpolicy_count(p), 4);
  assert_int_equal(check(p, "10.9.8.7", 22), CM_NET_ALLOWED);
  assert_int_equal(check(p, "10.9.8.7", 23), CM_NET_NOT_LISTED);
  assert_int_equal(check(p, "11.0.0.1", 22), CM_NET_NOT_LISTED);
  assert_int_equal(check(p, "2001:db8:1::1", 443), CM_NET_ALLOWED);
  assert_int_equal(check(p, "2001:db9::1", 443), CM_NET_NOT_LISTED);
  assert_int_equal(check(p, "2001:db8::1", 8000), CM_NET_ALLOWED);
  assert_int_equal(check(p, "2001:db8::1", 8099), CM_NET_ALLOWED);
  assert_int_equal(check(p, "2001:db8::1", 8100), CM_NET_NOT_LISTED);
  /* The mapped entry is the IPv4 range 192.168.0.0/16, both ways written. */
  assert_int_equal(check(p, "192.168.4.5", 25), CM_NET_ALLOWED);
  assert_int_equal(check(p, "::ffff:192.168.4.5", 25), CM_NET_ALLOWED);
  assert_int_equal(check(p, "::ffff:10.1.1.1", 22), CM_NET_ALLOWED);
  assert_true(cm_netpolicy_port_allowed(p, 8050));
  assert_false(cm_netpolicy_port_allowed(p, 21));
  cm_netpolicy_free(p);
  /* Off: no list allows nothing. */
  assert_int_equal(cm_netpolicy_check(NULL, &(cm_ipaddr){.v4 = true, .b = {8, 8, 8, 8}}, 22),
                   CM_NET_NOT_LISTED);
  assert_false(cm_netpolicy_port_allowed(NULL, 22));
}

static void test_block(void **state) {
  (void)state;
  const char *any[] = {"0.0.0.0/0:1-65535", "::/0:1-65535"};
  cm_netpolicy *p = policy(any, 2);
  static const char *const blocked[] = {
      "127.0.0.1",
      "127.255.0.9",
      "0.0.0.0",
      "0.1.2.3",
      "169.254.169.254",
      "169.254.0.1",
      "100.100.100.200",
      "168.63.129.16",
      "224.0.0.1",
      "239.1.1.1",
      "255.255.255.255",
      "::",
      "::1",
      "fe80::1",
      "febf::1",
      "fd00:ec2::254",
      "ff02::1",
      "::ffff:127.0.0.1",
      "::ffff:169.254.169.254",
      "::127.0.0.1",
      "64:ff9b::7f00:1",
      "64:ff9b::a9fe:a9fe",
  };
  for (size_t i = 0; i < CM_ARRAY_LEN(blocked); i++) {
    if (check(p, blocked[i], 22) != CM_NET_BLOCKED) fail_msg("%s not blocked", blocked[i]);
    cm_ipaddr a;
    cm_ipaddr_parse(blocked[i], &a);
    assert_non_null(cm_ipaddr_blocked(&a));
  }
  static const char *const open[] = {"8.8.8.8",   "10.0.0.1",        "192.168.1.1",
                                     "128.0.0.1", "169.253.1.1",     "2001:db8::1",
                                     "fec0::1",   "64:ff9b::808:808"};
  for (size_t i = 0; i < CM_ARRAY_LEN(open); i++)
    if (check(p, open[i], 22) != CM_NET_ALLOWED) fail_msg("%s refused", open[i]);
  cm_netpolicy_free(p);
  /* Naming a part of the block allows that part, on those ports only. */
  const char *named[] = {"127.0.0.1/32:2222", "169.254.169.254/32:80", "[::1]/128:22",
                         "0.0.0.0/0:22"};
  p = policy(named, CM_ARRAY_LEN(named));
  assert_int_equal(check(p, "127.0.0.1", 2222), CM_NET_ALLOWED);
  assert_int_equal(check(p, "::ffff:127.0.0.1", 2222), CM_NET_ALLOWED);
  assert_int_equal(check(p, "127.0.0.1", 22), CM_NET_BLOCKED); /* 0.0.0.0/0 does not name it */
  assert_int_equal(check(p, "127.0.0.2", 2222), CM_NET_BLOCKED);
  assert_int_equal(check(p, "169.254.169.254", 80), CM_NET_ALLOWED);
  assert_int_equal(check(p, "::1", 22), CM_NET_ALLOWED);
  assert_int_equal(check(p, "8.8.4.4", 22), CM_NET_ALLOWED);
  assert_int_equal(check(p, "8.8.4.4", 2222), CM_NET_NOT_LISTED);
  cm_netpolicy_free(p);
}

/* xorshift64*, seeded: the same addresses every run. */
static uint64_t rnd(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

static void test_properties(void **state) {
  (void)state;
  const char *any[] = {"0.0.0.0/0:22", "::/0:22", "10.0.0.0/8:1000-2000"};
  cm_netpolicy *p = policy(any, 3);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 200000; i++) {
    uint64_t r = rnd(&s);
    cm_ipaddr v4 = {.v4 = true};
    memcpy(v4.b, &r, 4);
    if (i % 4 == 0) v4.b[0] = (uint8_t[]){0, 127, 169, 224}[(r >> 40) % 4]; /* near the block */
    uint16_t port = (uint16_t)(i % 3 == 0 ? 22 : 1 + (r >> 48) % 65535);
    /* The mapped form gets the IPv4 verdict. */
    struct sockaddr_in6 m = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    m.sin6_addr.s6_addr[10] = m.sin6_addr.s6_addr[11] = 0xff;
    memcpy(m.sin6_addr.s6_addr + 12, v4.b, 4);
    cm_ipaddr back;
    uint16_t bport;
    assert_int_equal(cm_ipaddr_from_sockaddr((struct sockaddr *)&m, &back, &bport), 0);
    assert_true(back.v4 && memcmp(back.b, v4.b, 4) == 0 && bport == port);
    cm_net_verdict v = cm_netpolicy_check(p, &v4, port);
    assert_int_equal(cm_netpolicy_check(p, &back, port), v);
    /* The broad entries allow exactly what is not blocked, on their ports. */
    bool blocked = cm_ipaddr_blocked(&v4) != NULL;
    bool in10 = v4.b[0] == 10 && port >= 1000 && port <= 2000;
    cm_net_verdict want = blocked                ? CM_NET_BLOCKED
                          : (port == 22 || in10) ? CM_NET_ALLOWED
                                                 : CM_NET_NOT_LISTED;
    assert_int_equal(v, want);
    /* IPv6, also through its text form. */
    cm_ipaddr v6 = {.v4 = false};
    uint64_t r2 = rnd(&s);
    memcpy(v6.b, &r, 8);
    memcpy(v6.b + 8, &r2, 8);
    if (i % 5 == 0) v6.b[0] = 0xfe, v6.b[1] = 0x80 | (v6.b[1] & 0x3f);
    if (memcmp(v6.b, (uint8_t[10]){0}, 10) == 0) continue; /* mapped/compatible: above */
    char text[64];
    cm_ipaddr_text(&v6, text, sizeof text);
    cm_ipaddr parsed;
    assert_int_equal(cm_ipaddr_parse(text, &parsed), 0);
    assert_memory_equal(parsed.b, v6.b, 16);
    bool b6 = cm_ipaddr_blocked(&v6) != NULL;
    assert_int_equal(cm_netpolicy_check(p, &v6, 22), b6 ? CM_NET_BLOCKED : CM_NET_ALLOWED);
    assert_int_equal(cm_netpolicy_check(p, &v6, 23), b6 ? CM_NET_BLOCKED : CM_NET_NOT_LISTED);
  }
  cm_netpolicy_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_targets),
      cmocka_unit_test(test_entries),
      cmocka_unit_test(test_block),
      cmocka_unit_test(test_properties),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
