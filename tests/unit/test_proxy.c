/*
 * test_proxy.c — the PROXY protocol parser (v1 and v2, as HAProxy sends
 * them, and every refusal), trusted-proxy CIDR lists, and the client
 * address taken from Forwarded / X-Forwarded-For.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "relay/proxy.h"

/* "ip:port" of an address. */
static const char *text(const struct sockaddr_storage *ss) {
  static char out[80];
  char ip[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    snprintf(out, sizeof out, "%s:%d", ip, ntohs(a->sin_port));
  } else {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
    snprintf(out, sizeof out, "[%s]:%d", ip, ntohs(a->sin6_port));
  }
  return out;
}

/* Parsed whole, and every proper prefix must ask for more. */
static rly_proxy_status parse_all(const void *data, size_t len, rly_proxy_header *h,
                                  const char **why) {
  rly_proxy_status st = rly_proxy_parse(data, len, h, why);
  if (st == RLY_PROXY_DONE) {
    for (size_t n = 0; n < h->length; n++) {
      rly_proxy_header tmp;
      const char *w;
      if (rly_proxy_parse(data, n, &tmp, &w) != RLY_PROXY_MORE)
        fail_msg("prefix of %zu bytes not MORE: %s", n, w ? w : "done");
    }
  }
  return st;
}

static void test_v1(void **state) {
  (void)state;
  rly_proxy_header h;
  const char *why;
  const char *a = "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
  assert_int_equal(parse_all(a, strlen(a), &h, &why), RLY_PROXY_DONE);
  assert_int_equal(h.version, 1);
  assert_false(h.local);
  assert_int_equal(h.length, strlen("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n"));
  assert_string_equal(text(&h.src), "192.0.2.10:56324");
  assert_string_equal(text(&h.dst), "198.51.100.1:443");

  /* The longest header there is: 107 bytes. */
  const char *b = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  assert_int_equal(strlen(b), 104);
  assert_int_equal(parse_all(b, strlen(b), &h, &why), RLY_PROXY_DONE);
  assert_string_equal(text(&h.src), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
  const char *c = "PROXY TCP6 2001:db8::1 ::1 0 8443\r\n";
  assert_int_equal(parse_all(c, strlen(c), &h, &why), RLY_PROXY_DONE);
  assert_string_equal(text(&h.src), "[2001:db8::1]:0");

  const char *u = "PROXY UNKNOWN\r\n";
  assert_int_equal(parse_all(u, strlen(u), &h, &why), RLY_PROXY_DONE);
  assert_true(h.local);
  const char *u2 = "PROXY UNKNOWN ffff::1 whatever at all\r\n";
  assert_int_equal(parse_all(u2, strlen(u2), &h, &why), RLY_PROXY_DONE);
  assert_true(h.local);
  assert_int_equal(h.length, strlen(u2));
}

static void test_v1_refused(void **state) {
  (void)state;
  static const char *bad[] = {
      "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\n",     /* LF alone */
      "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\rX",    /* CR alone */
      "PROXY TCP4  192.0.2.10 198.51.100.1 56324 443\r\n",  /* two spaces */
      "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443 \r\n",  /* trailing space */
      "PROXY TCP4 192.0.2.10 198.51.100.1 56324\r\n",       /* four fields */
      "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443 1\r\n", /* six */
      "PROXY TCP4 2001:db8::1 198.51.100.1 56324 443\r\n",  /* v6 in TCP4 */
      "PROXY TCP6 192.0.2.10 ::1 56324 443\r\n",            /* v4 in TCP6 */
      "PROXY TCP4 192.0.2.010 198.51.100.1 56324 443\r\n",  /* leading zero */
      "PROXY TCP4 example.com 198.51.100.1 56324 443\r\n",  /* a name */
      "PROXY TCP4 192.0.2.10 198.51.100.1 65536 443\r\n",   /* port too big */
      "PROXY TCP4 192.0.2.10 198.51.100.1 0443 443\r\n",    /* leading zero */
      "PROXY TCP4 192.0.2.10 198.51.100.1 -1 443\r\n",      /* sign */
      "PROXY UDP4 192.0.2.10 198.51.100.1 56324 443\r\n",   /* not TCP */
      "PROXY tcp4 192.0.2.10 198.51.100.1 56324 443\r\n",   /* case */
      "PROXY \r\n",                                         /* empty */
      "PROXY TCP4 192.0.2.10\t198.51.100.1 56324 443\r\n",  /* a tab */
      "PROXY TCP6 fe80::1%eth0 ::1 56324 443\r\n",          /* zone id */
      "GET / HTTP/1.1\r\n",                                 /* no header at all */
      "PROXX TCP4 192.0.2.10 198.51.100.1 56324 443\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    rly_proxy_header h;
    const char *why = NULL;
    if (rly_proxy_parse((const uint8_t *)bad[i], strlen(bad[i]), &h, &why) != RLY_PROXY_BAD)
      fail_msg("accepted: %s", bad[i]);
    assert_non_null(why);
  }
  /* No CRLF within 107 bytes. */
  char longer[200];
  memset(longer, 'x', sizeof longer);
  memcpy(longer, "PROXY UNKNOWN ", 14);
  rly_proxy_header h;
  const char *why;
  assert_int_equal(rly_proxy_parse((uint8_t *)longer, 105, &h, &why), RLY_PROXY_MORE);
  assert_int_equal(rly_proxy_parse((uint8_t *)longer, 106, &h, &why), RLY_PROXY_BAD);
  assert_int_equal(rly_proxy_parse((uint8_t *)longer, sizeof longer, &h, &why), RLY_PROXY_BAD);
  memcpy(longer + 105, "\r\n", 2); /* CRLF ending at byte 107: the longest allowed */
  assert_int_equal(rly_proxy_parse((uint8_t *)longer, sizeof longer, &h, &why), RLY_PROXY_DONE);
  assert_int_equal(h.length, 107);
}

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* A v2 header: signature, ver_cmd, family, then body of n bytes. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *body, size_t n) {
  memcpy(out, SIG, 12);
  out[12] = ver_cmd;
  out[13] = fam;
  out[14] = (uint8_t)(n >> 8);
  out[15] = (uint8_t)n;
  if (n) memcpy(out + 16, body, n);
  return 16 + n;
}

static void test_v2(void **state) {
  (void)state;
  uint8_t buf[2100];
  rly_proxy_header h;
  const char *why;
  /* TCP over IPv4, with two TLVs (an ALPN and a NOOP of padding) as
   * HAProxy's send-proxy-v2 may add. */
  uint8_t inet[] = {192,  0,    2,    10,   198,  51,  100, 1,    0xDC, 0x04,
                    0x01, 0xBB, 0x01, 0x00, 0x02, 'h', '2', 0x04, 0x00, 0x00};
  size_t n = v2(buf, 0x21, 0x11, inet, sizeof inet);
  memcpy(buf + n, "\x16\x03\x01", 3); /* a ClientHello follows */
  assert_int_equal(parse_all(buf, n + 3, &h, &why), RLY_PROXY_DONE);
  assert_int_equal(h.version, 2);
  assert_int_equal(h.length, n);
  assert_false(h.local);
  assert_string_equal(text(&h.src), "192.0.2.10:56324");
  assert_string_equal(text(&h.dst), "198.51.100.1:443");

  uint8_t inet6[36] = {0x20, 0x01, 0x0d, 0xb8};
  inet6[15] = 1;
  inet6[31] = 1; /* dst ::1 */
  inet6[32] = 0x30;
  inet6[33] = 0x39; /* 12345 */
  inet6[35] = 80;
  n = v2(buf, 0x21, 0x21, inet6, sizeof inet6);
  assert_int_equal(parse_all(buf, n, &h, &why), RLY_PROXY_DONE);
  assert_string_equal(text(&h.src), "[2001:db8::1]:12345");
  assert_string_equal(text(&h.dst), "[::1]:80");

  /* LOCAL (a health check) and UNSPEC: the socket's own address stands. */
  n = v2(buf, 0x20, 0x00, NULL, 0);
  assert_int_equal(parse_all(buf, n, &h, &why), RLY_PROXY_DONE);
  assert_true(h.local);
  n = v2(buf, 0x20, 0x11, inet, 12);
  assert_int_equal(parse_all(buf, n, &h, &why), RLY_PROXY_DONE);
  assert_true(h.local);
  n = v2(buf, 0x21, 0x00, NULL, 0);
  assert_int_equal(parse_all(buf, n, &h, &why), RLY_PROXY_DONE);
  assert_true(h.local);
  uint8_t unix_block[216] = {'/'};
  n = v2(buf, 0x21, 0x31, unix_block, sizeof unix_block);
  assert_int_equal(parse_all(buf, n, &h, &why), RLY_PROXY_DONE);
  assert_true(h.local);
}

static void test_v2_refused(void **state) {
  (void)state;
  uint8_t buf[2100];
  rly_proxy_header h;
  const char *why;
  uint8_t inet[16] = {192, 0, 2, 10, 198, 51, 100, 1, 0, 1, 0, 2};
  struct {
    uint8_t ver_cmd, fam;
    size_t n;
    const char *what;
  } bad[] = {
      {0x11, 0x11, 12, "version 1 in the binary form"},
      {0x31, 0x11, 12, "version 3"},
      {0x22, 0x11, 12, "command 2"},
      {0x21, 0x41, 12, "family 4"},
      {0x21, 0x13, 12, "transport 3"},
      {0x21, 0x12, 12, "DGRAM"},
      {0x21, 0x11, 11, "address block short"},
      {0x21, 0x21, 12, "IPv6 block short"},
      {0x21, 0x11, 14, "a TLV cut short"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t n = v2(buf, bad[i].ver_cmd, bad[i].fam, inet, bad[i].n);
    if (bad[i].n > 12) memset(buf + 16 + 12, 0x01, bad[i].n - 12); /* TLV type 1, length 257.. */
    if (rly_proxy_parse(buf, n, &h, &why) != RLY_PROXY_BAD) fail_msg("accepted: %s", bad[i].what);
  }
  /* Longer than we take, refused before the body arrives. */
  uint8_t big[16];
  memcpy(big, SIG, 12);
  big[12] = 0x21;
  big[13] = 0x11;
  big[14] = 0x08;
  big[15] = 0x00; /* 2048 */
  assert_int_equal(rly_proxy_parse(big, 16, &h, &why), RLY_PROXY_BAD);
  big[14] = 0x07;
  big[15] = 0xF0; /* 2032 + 16 = 2048: the most */
  assert_int_equal(rly_proxy_parse(big, 16, &h, &why), RLY_PROXY_MORE);
  /* A bad version is refused as soon as its byte is in. */
  memcpy(big, SIG, 12);
  big[12] = 0x11;
  assert_int_equal(rly_proxy_parse(big, 13, &h, &why), RLY_PROXY_BAD);
}

static void test_signature(void **state) {
  (void)state;
  assert_int_equal(rly_proxy_signature((const uint8_t *)"P", 1), -1);
  assert_int_equal(rly_proxy_signature((const uint8_t *)"PROXY", 5), -1);
  assert_int_equal(rly_proxy_signature((const uint8_t *)"PROXY ", 6), 1);
  assert_int_equal(rly_proxy_signature((const uint8_t *)"POST /", 6), 0);
  assert_int_equal(rly_proxy_signature((const uint8_t *)"\x16\x03\x01", 3), 0);
  assert_int_equal(rly_proxy_signature(SIG, 4), -1);
  assert_int_equal(rly_proxy_signature(SIG, 12), 1);
  assert_int_equal(rly_proxy_signature((const uint8_t *)"\r\n\r\nX", 5), 0);
}

static struct sockaddr_storage addr(const char *ip, int port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *a = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *b = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, ip, &a->sin_addr) == 1) {
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
  } else {
    assert_int_equal(inet_pton(AF_INET6, ip, &b->sin6_addr), 1);
    b->sin6_family = AF_INET6;
    b->sin6_port = htons((uint16_t)port);
  }
  return ss;
}

static void test_cidrs(void **state) {
  (void)state;
  const char *list[] = {"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"};
  rly_cidrs l;
  const char *badone = NULL;
  assert_int_equal(rly_cidrs_parse(list, 4, &l, &badone), 0);
  struct {
    const char *ip;
    bool in;
  } cases[] = {{"10.1.2.3", true},
               {"11.0.0.1", false},
               {"192.0.2.7", true},
               {"192.0.2.8", false},
               {"2001:db8:1::5", true},
               {"2001:db9::1", false},
               {"::1", true},
               {"::2", false},
               {"::ffff:10.9.9.9", true},
               {"::ffff:11.9.9.9", false}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct sockaddr_storage ss = addr(cases[i].ip, 1);
    if (rly_cidrs_match(&l, (struct sockaddr *)&ss) != cases[i].in)
      fail_msg("%s: expected %d", cases[i].ip, cases[i].in);
  }
  rly_cidrs_free(&l);
  const char *bad[] = {"10.0.0.1/8",  "10.0.0.0/33", "10.0.0.0/",    "10.0.0.0/08",
                       "example.com", "::1/129",     "10.0.0.0/8/9", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    rly_cidr c;
    if (rly_cidr_parse(bad[i], &c) == 0) fail_msg("accepted %s", bad[i]);
  }
  const char *mixed[] = {"10.0.0.0/8", "10.0.0.1/8"};
  assert_int_not_equal(rly_cidrs_parse(mixed, 2, &l, &badone), 0);
  assert_string_equal(badone, "10.0.0.1/8");
  assert_null(l.v);
}

static const char *client(const char *peer, const char *fwd, const char *xff1, const char *xff2) {
  static char out[80];
  const char *list[] = {"10.0.0.0/8", "2001:db8::/32"};
  rly_cidrs l;
  const char *badone;
  assert_int_equal(rly_cidrs_parse(list, 2, &l, &badone), 0);
  struct sockaddr_storage p = addr(peer, 40000), got;
  const char *x[] = {xff1, xff2};
  bool replaced = rly_forwarded_client(&l, (struct sockaddr *)&p, fwd ? &fwd : NULL, fwd ? 1 : 0, x,
                                       xff2   ? 2
                                       : xff1 ? 1
                                              : 0,
                                       &got);
  rly_cidrs_free(&l);
  snprintf(out, sizeof out, "%s", replaced ? text(&got) : "peer");
  return out;
}

static void test_forwarded(void **state) {
  (void)state;
  /* X-Forwarded-For: the nearest untrusted hop. */
  assert_string_equal(client("10.0.0.1", NULL, "203.0.113.9", NULL), "203.0.113.9:0");
  assert_string_equal(client("10.0.0.1", NULL, "198.51.100.3, 203.0.113.9, 10.2.2.2", NULL),
                      "203.0.113.9:0");
  /* A client can put anything first; only what trusted hops added counts. */
  assert_string_equal(client("10.0.0.1", NULL, "1.1.1.1, 203.0.113.9", NULL), "203.0.113.9:0");
  /* Header lines in order make one list. */
  assert_string_equal(client("10.0.0.1", NULL, "203.0.113.9", "10.3.3.3"), "203.0.113.9:0");
  assert_string_equal(client("10.0.0.1", NULL, "2001:db9::7, [2001:db8::1]:9", NULL),
                      "[2001:db9::7]:0");
  assert_string_equal(client("10.0.0.1", NULL, "203.0.113.9:5555", NULL), "203.0.113.9:5555");
  /* Every hop trusted: the farthest. */
  assert_string_equal(client("10.0.0.1", NULL, "10.9.9.9, 10.8.8.8", NULL), "10.9.9.9:0");
  /* Garbage stops the walk at the last address passed. */
  assert_string_equal(client("10.0.0.1", NULL, "203.0.113.9, unknown", NULL), "peer");
  assert_string_equal(client("10.0.0.1", NULL, "203.0.113.9, junk, 10.7.7.7", NULL), "10.7.7.7:0");
  assert_string_equal(client("10.0.0.1", NULL, "", NULL), "peer");
  /* An untrusted peer's headers are never read. */
  assert_string_equal(client("192.0.2.1", NULL, "203.0.113.9", NULL), "peer");
  assert_string_equal(client("192.0.2.1", "for=203.0.113.9", NULL, NULL), "peer");

  /* Forwarded (RFC 7239 examples), preferred over X-Forwarded-For. */
  assert_string_equal(client("10.0.0.1", "for=192.0.2.43", "198.51.100.1", NULL), "192.0.2.43:0");
  assert_string_equal(client("10.0.0.1", "for=\"[2001:db9:cafe::17]:4711\"", NULL, NULL),
                      "[2001:db9:cafe::17]:4711");
  assert_string_equal(client("10.0.0.1",
                             "for=192.0.2.43;proto=https;by=203.0.113.43, For=\"10.1.1.1\"", NULL,
                             NULL),
                      "192.0.2.43:0");
  assert_string_equal(client("10.0.0.1", "for=192.0.2.60;proto=http;by=203.0.113.43", NULL, NULL),
                      "192.0.2.60:0");
  assert_string_equal(client("10.0.0.1", "for=unknown, for=10.4.4.4", NULL, NULL), "10.4.4.4:0");
  assert_string_equal(client("10.0.0.1", "for=_hidden", NULL, NULL), "peer");
  assert_string_equal(client("10.0.0.1", "by=10.1.1.1", NULL, NULL), "peer");
  assert_string_equal(client("10.0.0.1", "for=1.2.3.4;for=5.6.7.8", NULL, NULL), "peer");
  assert_string_equal(client("10.0.0.1", "for=\"192.0.2.1", NULL, NULL), "peer");
  assert_string_equal(client("10.0.0.1", "for=\"a,b\", for=192.0.2.5", NULL, NULL), "192.0.2.5:0");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_v1),        cmocka_unit_test(test_v1_refused),
      cmocka_unit_test(test_v2),        cmocka_unit_test(test_v2_refused),
      cmocka_unit_test(test_signature), cmocka_unit_test(test_cidrs),
      cmocka_unit_test(test_forwarded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
