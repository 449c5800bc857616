/*
 * proxy.c — PROXY protocol headers, trusted-proxy CIDR lists and
 * forwarding headers (see proxy.h).  Sans-I/O: bytes and strings in,
 * addresses out.
 *
 * Strictness: a header is either exactly what the specification says or
 * refused.  v1: "PROXY", single spaces, TCP4/TCP6 with addresses of that
 * family, decimal ports without leading zeros, CRLF within 107 bytes (or
 * UNKNOWN followed by anything up to CRLF).  v2: the 12-byte signature,
 * version 2, command LOCAL or PROXY, a known family, STREAM transport, an
 * address block as long as the family needs, and TLVs that fill the rest
 * exactly (their contents are not used).
 */
#include "relay/proxy.h"

#include "common/common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const uint8_t g_v1[] = "PROXY ";
#define V1_SIG_LEN 6
static const uint8_t g_v2[] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                               0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
#define V2_SIG_LEN  12
#define V2_HEAD_LEN 16

enum { V2_LOCAL = 0, V2_PROXY = 1 };
enum { V2_UNSPEC = 0, V2_INET = 1, V2_INET6 = 2, V2_UNIX = 3 };
enum { V2_STREAM = 1 };
#define V2_INET_LEN  12  /* two IPv4 addresses, two ports */
#define V2_INET6_LEN 36  /* two IPv6 addresses, two ports */
#define V2_UNIX_LEN  216 /* two 108-byte paths */
#define TLV_HEAD     3   /* type, 16-bit length */

/* ---- small pieces ------------------------------------------------------------ */

static rly_proxy_status bad(const char **why, const char *reason) {
  *why = reason;
  return RLY_PROXY_BAD;
}

/* Whether the first n bytes of data equal the first n of sig. */
static bool prefix_of(const uint8_t *data, size_t n, const uint8_t *sig) {
  return memcmp(data, sig, n) == 0;
}

int rly_proxy_signature(const uint8_t *data, size_t len) {
  size_t n1 = len < V1_SIG_LEN ? len : V1_SIG_LEN, n2 = len < V2_SIG_LEN ? len : V2_SIG_LEN;
  bool v1 = prefix_of(data, n1, g_v1), v2 = prefix_of(data, n2, g_v2);
  if ((v1 && n1 == V1_SIG_LEN) || (v2 && n2 == V2_SIG_LEN)) return 1;
  return v1 || v2 ? -1 : 0;
}

static void set_v4(struct sockaddr_storage *ss, const uint8_t addr[4], uint16_t port) {
  struct sockaddr_in *a = (struct sockaddr_in *)ss;
  memset(ss, 0, sizeof *ss);
  a->sin_family = AF_INET;
  memcpy(&a->sin_addr, addr, 4);
  a->sin_port = htons(port);
}

static void set_v6(struct sockaddr_storage *ss, const uint8_t addr[16], uint16_t port) {
  struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
  memset(ss, 0, sizeof *ss);
  a->sin6_family = AF_INET6;
  memcpy(&a->sin6_addr, addr, 16);
  a->sin6_port = htons(port);
}

/* A numeric address of `family` in s[0..n) (inet_pton: no names, no
 * leading zeros in IPv4, no zone ids). */
static bool parse_ip(const char *s, size_t n, int family, uint8_t out[16]) {
  char buf[INET6_ADDRSTRLEN + 1];
  if (n == 0 || n >= sizeof buf) return false;
  memcpy(buf, s, n);
  buf[n] = '\0';
  return inet_pton(family, buf, out) == 1;
}

/* Decimal 0..65535, no sign, no leading zero (but "0"). */
static bool parse_port(const char *s, size_t n, uint16_t *out) {
  if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) return false;
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v > 65535) return false;
  *out = (uint16_t)v;
  return true;
}

/* ---- version 1 --------------------------------------------------------------- */

static rly_proxy_status parse_v1(const uint8_t *data, size_t len, rly_proxy_header *h,
                                 const char **why) {
  /* CRLF ends the header within RLY_PROXY_V1_MAX bytes: the CR at index
   * limit - 1 at the latest. */
  const size_t limit = RLY_PROXY_V1_MAX - 1;
  size_t end = 0; /* index of the CR */
  size_t scan = len < limit ? len : limit;
  for (size_t i = V1_SIG_LEN; i < scan; i++) {
    if (data[i] == '\r') {
      if (i + 1 == len) return RLY_PROXY_MORE;
      if (data[i + 1] != '\n') return bad(why, "v1: CR without LF");
      end = i;
      break;
    }
    if (data[i] < 0x20 || data[i] > 0x7e) return bad(why, "v1: a control byte in the header");
  }
  if (end == 0) return len < limit ? RLY_PROXY_MORE : bad(why, "v1: no CRLF in 107 bytes");
  const char *line = (const char *)data + V1_SIG_LEN;
  size_t n = end - V1_SIG_LEN;
  /* Fields split on single spaces. */
  const char *f[6];
  size_t fl[6], nf = 0, start = 0;
  for (size_t i = 0; i <= n && nf < 6; i++) {
    if (i == n || line[i] == ' ') {
      f[nf] = line + start;
      fl[nf++] = i - start;
      start = i + 1;
    }
  }
  memset(h, 0, sizeof *h);
  h->version = 1;
  h->length = end + 2;
  if (fl[0] == 7 && memcmp(f[0], "UNKNOWN", 7) == 0) {
    h->local = true; /* whatever follows up to CRLF is to be ignored */
    return RLY_PROXY_DONE;
  }
  int family;
  if (fl[0] == 4 && memcmp(f[0], "TCP4", 4) == 0)
    family = AF_INET;
  else if (fl[0] == 4 && memcmp(f[0], "TCP6", 4) == 0)
    family = AF_INET6;
  else
    return bad(why, "v1: protocol is not TCP4, TCP6 or UNKNOWN");
  if (nf != 5 || start != n + 1) return bad(why, "v1: not five fields separated by single spaces");
  uint8_t src[16], dst[16];
  uint16_t sport, dport;
  if (!parse_ip(f[1], fl[1], family, src) || !parse_ip(f[2], fl[2], family, dst))
    return bad(why, "v1: an address is not of the protocol's family");
  if (!parse_port(f[3], fl[3], &sport) || !parse_port(f[4], fl[4], &dport))
    return bad(why, "v1: a port is not decimal 0-65535");
  if (family == AF_INET) {
    set_v4(&h->src, src, sport);
    set_v4(&h->dst, dst, dport);
  } else {
    set_v6(&h->src, src, sport);
    set_v6(&h->dst, dst, dport);
  }
  return RLY_PROXY_DONE;
}

/* ---- version 2 --------------------------------------------------------------- */

static bool tlvs_fill(const uint8_t *p, size_t n) {
  while (n > 0) {
    if (n < TLV_HEAD) return false;
    size_t l = (size_t)p[1] << 8 | p[2];
    if (l > n - TLV_HEAD) return false;
    p += TLV_HEAD + l;
    n -= TLV_HEAD + l;
  }
  return true;
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static rly_proxy_status parse_v2(const uint8_t *data, size_t len, rly_proxy_header *h,
                                 const char **why) {
  if (len < V2_HEAD_LEN) {
    /* Refuse what the bytes so far already rule out. */
    if (len > V2_SIG_LEN && data[V2_SIG_LEN] >> 4 != 2) return bad(why, "v2: version is not 2");
    return RLY_PROXY_MORE;
  }
  int version = data[12] >> 4, cmd = data[12] & 0x0F, family = data[13] >> 4,
      transport = data[13] & 0x0F;
  size_t body = be16(data + 14);
  if (version != 2) return bad(why, "v2: version is not 2");
  if (cmd != V2_LOCAL && cmd != V2_PROXY) return bad(why, "v2: command is not LOCAL or PROXY");
  if (family > V2_UNIX || transport > 2) return bad(why, "v2: unknown address family");
  if (V2_HEAD_LEN + body > RLY_PROXY_MAX) return bad(why, "v2: header longer than we take");
  if (len < V2_HEAD_LEN + body) return RLY_PROXY_MORE;
  memset(h, 0, sizeof *h);
  h->version = 2;
  h->length = V2_HEAD_LEN + body;
  const uint8_t *p = data + V2_HEAD_LEN;
  static const size_t need[] = {
      [V2_UNSPEC] = 0, [V2_INET] = V2_INET_LEN, [V2_INET6] = V2_INET6_LEN, [V2_UNIX] = V2_UNIX_LEN};
  if (cmd == V2_LOCAL) {
    /* The proxy's own connection (a health check): addresses, if any,
     * are to be ignored; the block must still hold together. */
    h->local = true;
    if (family != V2_UNSPEC && body >= need[family] &&
        !tlvs_fill(p + need[family], body - need[family]))
      return bad(why, "v2: TLVs do not fill the header");
    return RLY_PROXY_DONE;
  }
  if (family == V2_UNSPEC) {
    h->local = true;
    return RLY_PROXY_DONE;
  }
  if (transport != V2_STREAM) return bad(why, "v2: transport is not STREAM");
  if (body < need[family]) return bad(why, "v2: address block too short for its family");
  if (!tlvs_fill(p + need[family], body - need[family]))
    return bad(why, "v2: TLVs do not fill the header");
  if (family == V2_INET) {
    set_v4(&h->src, p, be16(p + 8));
    set_v4(&h->dst, p + 4, be16(p + 10));
  } else if (family == V2_INET6) {
    set_v6(&h->src, p, be16(p + 32));
    set_v6(&h->dst, p + 16, be16(p + 34));
  } else {
    h->local = true; /* a unix socket's peer has no IP to speak of */
  }
  return RLY_PROXY_DONE;
}

rly_proxy_status rly_proxy_parse(const uint8_t *data, size_t len, rly_proxy_header *h,
                                 const char **why) {
  *why = NULL;
  if (len == 0) return RLY_PROXY_MORE;
  size_t n1 = len < V1_SIG_LEN ? len : V1_SIG_LEN, n2 = len < V2_SIG_LEN ? len : V2_SIG_LEN;
  if (prefix_of(data, n1, g_v1))
    return n1 < V1_SIG_LEN ? RLY_PROXY_MORE : parse_v1(data, len, h, why);
  if (prefix_of(data, n2, g_v2))
    return n2 < V2_SIG_LEN ? RLY_PROXY_MORE : parse_v2(data, len, h, why);
  return bad(why, "no PROXY protocol signature");
}

/* ---- CIDR lists -------------------------------------------------------------- */

int rly_cidr_parse(const char *text, rly_cidr *out) {
  const char *slash = strchr(text, '/');
  size_t n = slash ? (size_t)(slash - text) : strlen(text);
  memset(out, 0, sizeof *out);
  if (parse_ip(text, n, AF_INET, out->addr))
    out->family = AF_INET;
  else if (parse_ip(text, n, AF_INET6, out->addr))
    out->family = AF_INET6;
  else
    return -EINVAL;
  int max = out->family == AF_INET ? 32 : 128;
  out->bits = max;
  if (slash) {
    uint16_t bits;
    if (!parse_port(slash + 1, strlen(slash + 1), &bits) || bits > max) return -EINVAL;
    out->bits = bits;
  }
  /* Host bits set: a typo, refused rather than silently widened. */
  for (int i = out->bits; i < max; i++)
    if (out->addr[i / 8] & (0x80 >> (i % 8))) return -EINVAL;
  return 0;
}

int rly_cidrs_parse(const char *const *texts, size_t n, rly_cidrs *out, const char **bad_entry) {
  memset(out, 0, sizeof *out);
  if (n == 0) return 0;
  out->v = calloc(n, sizeof *out->v);
  if (!out->v) return -ENOMEM;
  for (size_t i = 0; i < n; i++) {
    if (rly_cidr_parse(texts[i], &out->v[i]) != 0) {
      *bad_entry = texts[i];
      rly_cidrs_free(out);
      return -EINVAL;
    }
  }
  out->n = n;
  return 0;
}

void rly_cidrs_free(rly_cidrs *l) {
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

static bool in_block(const rly_cidr *c, const uint8_t *addr) {
  int full = c->bits / 8, rest = c->bits % 8;
  if (memcmp(c->addr, addr, (size_t)full) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = (uint8_t)(0xFF << (8 - rest));
  return (c->addr[full] & mask) == (addr[full] & mask);
}

bool rly_cidrs_match(const rly_cidrs *l, const struct sockaddr *sa) {
  uint8_t v4[4], v6[16];
  bool have4 = false, have6 = false;
  /* Copied out: a struct sockaddr may be less aligned than its family's. */
  if (sa->sa_family == AF_INET) {
    struct sockaddr_in a;
    memcpy(&a, sa, sizeof a);
    memcpy(v4, &a.sin_addr, 4);
    have4 = true;
  } else if (sa->sa_family == AF_INET6) {
    struct sockaddr_in6 a;
    memcpy(&a, sa, sizeof a);
    memcpy(v6, &a.sin6_addr, 16);
    have6 = true;
    if (IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) {
      memcpy(v4, v6 + 12, 4);
      have4 = true;
    }
  }
  for (size_t i = 0; i < l->n; i++) {
    const rly_cidr *c = &l->v[i];
    if ((c->family == AF_INET && have4 && in_block(c, v4)) ||
        (c->family == AF_INET6 && have6 && in_block(c, v6)))
      return true;
  }
  return false;
}

/* ---- forwarding headers ------------------------------------------------------------ */

/* The nearest hops are kept (the walk starts there and stops at the
 * first untrusted one, long before this many in any real chain). */
#define MAX_HOPS 32

typedef struct hops {
  struct sockaddr_storage addr[MAX_HOPS];
  bool valid[MAX_HOPS];
  size_t n; /* hops seen; the last MAX_HOPS are kept, ring-wise */
} hops;

static void hop_add(hops *h, const char *s, size_t n) {
  size_t i = h->n++ % MAX_HOPS;
  uint8_t a[16];
  uint16_t port = 0;
  h->valid[i] = false;
  /* "[v6]" or "[v6]:port", bare "v6", "v4" or "v4:port". */
  if (n > 2 && s[0] == '[') {
    const char *rb = memchr(s, ']', n);
    size_t after = rb ? n - (size_t)(rb + 1 - s) : 0;
    if (!rb || (after && (rb[1] != ':' || !parse_port(rb + 2, after - 1, &port)))) return;
    if (!parse_ip(s + 1, (size_t)(rb - s - 1), AF_INET6, a)) return;
    set_v6(&h->addr[i], a, port);
  } else if (parse_ip(s, n, AF_INET6, a)) {
    set_v6(&h->addr[i], a, 0);
  } else {
    const char *colon = memchr(s, ':', n);
    size_t al = colon ? (size_t)(colon - s) : n;
    if (colon && !parse_port(colon + 1, n - al - 1, &port)) return;
    if (!parse_ip(s, al, AF_INET, a)) return;
    set_v4(&h->addr[i], a, port);
  }
  h->valid[i] = true;
}

static bool ows(char c) { return c == ' ' || c == '\t'; }

static void trim(const char **s, size_t *n) {
  while (*n && ows(**s)) {
    (*s)++;
    (*n)--;
  }
  while (*n && ows((*s)[*n - 1]))
    (*n)--;
}

/* "a, b, c": an empty or unparsable element is a hop without an address. */
static void xff_hops(hops *h, const char *v) {
  for (;;) {
    const char *comma = strchr(v, ',');
    const char *s = v;
    size_t n = comma ? (size_t)(comma - v) : strlen(v);
    trim(&s, &n);
    hop_add(h, s, n);
    if (!comma) return;
    v = comma + 1;
  }
}

/* One forwarded-element (RFC 7239 §4): pairs "name=value" split by ';',
 * values tokens or quoted strings.  Its "for" is the hop; an element
 * without one is a hop we cannot place.  Returns where the element ends
 * (at ',' or the end). */
static const char *forwarded_element(hops *h, const char *p) {
  char value[128];
  size_t vl = 0;
  bool have_for = false, ok = true;
  while (*p && *p != ',') {
    while (ows(*p) || *p == ';')
      p++;
    const char *name = p;
    while (*p && *p != '=' && *p != ';' && *p != ',')
      p++;
    size_t nl = (size_t)(p - name);
    while (nl && ows(name[nl - 1]))
      nl--;
    if (*p != '=') {
      ok = ok && nl == 0;
      continue;
    }
    p++;
    size_t l = 0;
    char buf[128];
    if (*p == '"') {
      for (p++; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1]) p++;
        if (l < sizeof buf - 1) buf[l++] = *p;
      }
      if (*p != '"')
        ok = false;
      else
        p++;
    } else {
      while (*p && *p != ';' && *p != ',' && !ows(*p)) {
        if (l < sizeof buf - 1) buf[l++] = *p;
        p++;
      }
    }
    while (ows(*p))
      p++;
    if (nl == 3 && strncasecmp(name, "for", 3) == 0) {
      ok = ok && !have_for; /* "for" twice: which? */
      have_for = true;
      memcpy(value, buf, l);
      vl = l;
    }
  }
  if (ok && have_for) {
    hop_add(h, value, vl);
  } else {
    h->valid[h->n++ % MAX_HOPS] = false;
  }
  return p;
}

static void forwarded_hops(hops *h, const char *v) {
  while (*v) {
    v = forwarded_element(h, v);
    if (*v == ',') v++;
  }
}

bool rly_forwarded_client(const rly_cidrs *trusted, const struct sockaddr *peer,
                          const char *const *forwarded, size_t nforwarded, const char *const *xff,
                          size_t nxff, struct sockaddr_storage *out) {
  if (!rly_cidrs_match(trusted, peer)) return false; /* never read an untrusted peer's */
  hops *h = calloc(1, sizeof *h);
  if (!h) return false;
  for (size_t i = 0; i < nforwarded; i++)
    forwarded_hops(h, forwarded[i]);
  if (nforwarded == 0)
    for (size_t i = 0; i < nxff; i++)
      xff_hops(h, xff[i]);
  bool replaced = false;
  size_t kept = h->n < MAX_HOPS ? h->n : MAX_HOPS;
  for (size_t k = 0; k < kept; k++) {
    size_t i = (h->n - 1 - k) % MAX_HOPS;
    if (!h->valid[i]) break; /* no address to go on with: the last one passed stands */
    *out = h->addr[i];
    replaced = true;
    if (!rly_cidrs_match(trusted, (const struct sockaddr *)&h->addr[i])) break;
  }
  free(h);
  return replaced;
}

bool rly_cidrs_match_text(const rly_cidrs *l, const char *hostport) {
  char host[64];
  int port;
  struct sockaddr_storage ss;
  if (l->n == 0 || cm_parse_hostport(hostport, NULL, host, sizeof host, &port) != 0 ||
      cm_sockaddr_from(host, port, &ss) != 0)
    return false;
  return rly_cidrs_match(l, (const struct sockaddr *)&ss);
}

void rly_proxy_addr_text(const struct sockaddr_storage *ss, char *out, size_t outlen) {
  const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
  if (ss->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = a6->sin6_port};
    memcpy(&a4.sin_addr, a6->sin6_addr.s6_addr + 12, 4);
    cm_sockaddr_text((const struct sockaddr *)&a4, out, outlen);
    return;
  }
  cm_sockaddr_text((const struct sockaddr *)ss, out, outlen);
}
