/*
 * netpolicy.c — where a target session may go (sans-I/O): the target's
 * "host:port" syntax, the operator's allow list ("CIDR:PORT" entries), and
 * the fixed block of addresses no target reaches unless the list names
 * them (loopback, link-local, unspecified, multicast and cloud metadata
 * services).  Used by the controller when a target session is created and
 * by the relay on every address a target's name resolves to, just before
 * it dials, which is what defeats DNS rebinding: the name is never trusted,
 * only the address actually dialled.
 *
 * Addresses are compared as 16 bytes; IPv4 is kept as itself, and an
 * IPv4-mapped IPv6 address (::ffff:a.b.c.d) is turned into its IPv4
 * address before any check, so a mapped form cannot slip past a rule
 * written for IPv4.  NAT64 (64:ff9b::/96) addresses are also checked
 * against the block by their embedded IPv4 address.
 */
#include "common/common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ENTRIES 256

static const uint8_t g_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
static const uint8_t g_nat64_prefix[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};

/* ---- addresses -------------------------------------------------------------------- */

static void addr_v4(cm_ipaddr *a, const uint8_t b[4]) {
  memset(a, 0, sizeof *a);
  a->v4 = true;
  memcpy(a->b, b, 4);
}

/* A mapped IPv6 address becomes its IPv4 address. */
static void addr_v6(cm_ipaddr *a, const uint8_t b[16]) {
  if (memcmp(b, g_mapped_prefix, 12) == 0) {
    addr_v4(a, b + 12);
    return;
  }
  memset(a, 0, sizeof *a);
  memcpy(a->b, b, 16);
}

/* Strict dotted quad: four decimal parts 0..255 without leading zeros
 * (inet_aton would read "010" as octal and "127.1" as 127.0.0.1). */
static bool parse_v4(const char *s, uint8_t out[4]) {
  for (int part = 0; part < 4; part++) {
    if (part && *s++ != '.') return false;
    if (*s < '0' || *s > '9') return false;
    unsigned v = 0;
    int digits = 0;
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
      if (digits == 3 || (digits == 1 && v == 0)) return false;
      v = v * 10 + (unsigned)(*s - '0');
    }
    if (v > 255) return false;
    out[part] = (uint8_t)v;
  }
  return *s == '\0';
}

int cm_ipaddr_parse(const char *s, cm_ipaddr *out) {
  uint8_t b[16];
  if (parse_v4(s, b)) {
    addr_v4(out, b);
    return 0;
  }
  if (strchr(s, ':') && !strchr(s, '%') && inet_pton(AF_INET6, s, b) == 1) {
    addr_v6(out, b);
    return 0;
  }
  return -EINVAL;
}

int cm_ipaddr_from_sockaddr(const struct sockaddr *sa, cm_ipaddr *out, uint16_t *port) {
  if (sa->sa_family == AF_INET) {
    struct sockaddr_in in;
    memcpy(&in, sa, sizeof in);
    addr_v4(out, (const uint8_t *)&in.sin_addr);
    if (port) *port = ntohs(in.sin_port);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    struct sockaddr_in6 in6;
    memcpy(&in6, sa, sizeof in6);
    addr_v6(out, in6.sin6_addr.s6_addr);
    if (port) *port = ntohs(in6.sin6_port);
    return 0;
  }
  return -EAFNOSUPPORT;
}

void cm_ipaddr_text(const cm_ipaddr *a, char *out, size_t outlen) {
  char buf[INET6_ADDRSTRLEN] = "?";
  inet_ntop(a->v4 ? AF_INET : AF_INET6, a->b, buf, sizeof buf);
  snprintf(out, outlen, "%s", buf);
}

/* The first `bits` bits of a and net agree (same family). */
static bool prefix_match(const cm_ipaddr *a, const cm_ipaddr *net, unsigned bits) {
  if (a->v4 != net->v4) return false;
  size_t whole = bits / 8;
  if (memcmp(a->b, net->b, whole) != 0) return false;
  unsigned rest = bits % 8;
  if (!rest) return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a->b[whole] & mask) == (net->b[whole] & mask);
}

/* ---- the fixed block ------------------------------------------------------------------- */

typedef struct blocked_range {
  const char *net;
  unsigned bits;
  const char *what;
} blocked_range;

static const blocked_range g_blocked[] = {
    {"0.0.0.0", 8, "unspecified (this host)"},
    {"127.0.0.0", 8, "loopback"},
    {"169.254.0.0", 16, "link-local (cloud metadata 169.254.169.254)"},
    {"100.100.100.200", 32, "cloud metadata (Alibaba)"},
    {"168.63.129.16", 32, "cloud host services (Azure)"},
    {"224.0.0.0", 4, "multicast"},
    {"255.255.255.255", 32, "broadcast"},
    {"::", 128, "unspecified (this host)"},
    {"::1", 128, "loopback"},
    {"::", 96, "IPv4-compatible (deprecated)"},
    {"fe80::", 10, "link-local"},
    {"fd00:ec2::254", 128, "cloud metadata (AWS)"},
    {"ff00::", 8, "multicast"},
};

static const blocked_range *blocked_of(const cm_ipaddr *a) {
  for (size_t i = 0; i < CM_ARRAY_LEN(g_blocked); i++) {
    cm_ipaddr net;
    if (cm_ipaddr_parse(g_blocked[i].net, &net) == 0 && prefix_match(a, &net, g_blocked[i].bits))
      return &g_blocked[i];
  }
  if (!a->v4 && memcmp(a->b, g_nat64_prefix, 12) == 0) {
    cm_ipaddr v4;
    addr_v4(&v4, a->b + 12); /* NAT64 hands the embedded address on */
    return blocked_of(&v4);
  }
  return NULL;
}

const char *cm_ipaddr_blocked(const cm_ipaddr *a) {
  const blocked_range *r = blocked_of(a);
  return r ? r->what : NULL;
}

/* ---- targets ------------------------------------------------------------------------ */

/* A DNS name of letters, digits and hyphens; no label starts or ends with
 * a hyphen; the last label starts with a letter, so that nothing the
 * resolver would read as a number ("2130706433", "0x7f.1", "127.1") passes
 * as a name. */
static bool name_ok(const char *s, size_t n) {
  if (n == 0 || n > 253) return false;
  size_t label = 0;
  const char *last = s;
  for (size_t i = 0; i <= n; i++) {
    char c = i < n ? s[i] : '.';
    if (c == '.') {
      if (label == 0 || label > 63 || s[i - 1] == '-') return false;
      label = 0;
      if (i < n) last = s + i + 1;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && label > 0)) return false;
    label++;
  }
  return (*last >= 'a' && *last <= 'z') || (*last >= 'A' && *last <= 'Z');
}

static bool port_parse(const char *s, size_t n, uint16_t *out) {
  if (n == 0 || n > 5 || (s[0] == '0')) return false;
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v == 0 || v > 65535) return false;
  *out = (uint16_t)v;
  return true;
}

int cm_target_parse(const char *text, cm_target *t, char *err, size_t errlen) {
  memset(t, 0, sizeof *t);
  size_t n = text ? strlen(text) : 0;
  const char *colon = n ? memrchr(text, ':', n) : NULL;
  if (!colon || n > CM_TARGET_MAX) {
    cm_seterr(err, errlen, "a target is host:port ([IPv6]:port), at most %d bytes", CM_TARGET_MAX);
    return -EINVAL;
  }
  if (!port_parse(colon + 1, (size_t)(text + n - colon - 1), &t->port)) {
    cm_seterr(err, errlen, "the target's port must be 1..65535");
    return -EINVAL;
  }
  const char *h = text;
  size_t hn = (size_t)(colon - text);
  bool bracketed = hn >= 2 && h[0] == '[' && h[hn - 1] == ']';
  if (bracketed) {
    h++;
    hn -= 2;
  }
  if (hn == 0 || hn >= sizeof t->host) {
    cm_seterr(err, errlen, "the target needs a host");
    return -EINVAL;
  }
  memcpy(t->host, h, hn);
  t->host[hn] = '\0';
  if (bracketed) {
    if (!strchr(t->host, ':') || cm_ipaddr_parse(t->host, &t->addr) != 0) goto bad_host;
    t->is_ip = true;
    return 0;
  }
  if (strchr(t->host, ':')) goto bad_host; /* IPv6 needs brackets */
  if (cm_ipaddr_parse(t->host, &t->addr) == 0) {
    t->is_ip = true;
    return 0;
  }
  if (name_ok(t->host, hn)) return 0;
bad_host:
  cm_seterr(err, errlen,
            "the target's host must be a DNS name, a dotted IPv4 address or [IPv6] (no zone)");
  return -EINVAL;
}

/* ---- the allow list ------------------------------------------------------------------ */

struct cm_netpolicy {
  struct entry {
    cm_ipaddr net;
    unsigned bits;
    uint16_t port_lo, port_hi;
    bool in_block; /* the whole range lies in the fixed block: naming it allows it */
  } e[MAX_ENTRIES];
  size_t n;
};

/* "CIDR:PORT" or "CIDR:LO-HI"; CIDR is a.b.c.d/n, v6/n or [v6]/n. */
static int entry_parse(const char *s, struct entry *e, char *err, size_t errlen) {
  size_t n = strlen(s);
  const char *colon = n ? memrchr(s, ':', n) : NULL;
  const char *slash = colon ? memrchr(s, '/', (size_t)(colon - s)) : NULL;
  char net[64];
  if (!slash || (size_t)(slash - s) >= sizeof net) goto bad;
  size_t nl = (size_t)(slash - s);
  memcpy(net, s, nl);
  net[nl] = '\0';
  if (nl >= 2 && net[0] == '[' && net[nl - 1] == ']') {
    memmove(net, net + 1, nl - 2);
    net[nl - 2] = '\0';
  }
  uint8_t raw[16];
  bool v6 = strchr(net, ':') != NULL;
  if (v6 ? inet_pton(AF_INET6, net, raw) != 1 : !parse_v4(net, raw)) goto bad;
  const char *bits_s = slash + 1;
  size_t bits_n = (size_t)(colon - bits_s);
  unsigned bits = 0;
  if (bits_n == 0 || bits_n > 3) goto bad;
  for (size_t i = 0; i < bits_n; i++) {
    if (bits_s[i] < '0' || bits_s[i] > '9') goto bad;
    bits = bits * 10 + (unsigned)(bits_s[i] - '0');
  }
  if (bits > (v6 ? 128u : 32u)) goto bad;
  if (v6 && bits >= 96 && memcmp(raw, g_mapped_prefix, 12) == 0) {
    addr_v4(&e->net, raw + 12); /* ::ffff:a.b.c.d/n is a.b.c.d/(n-96) */
    bits -= 96;
  } else if (v6) {
    memset(&e->net, 0, sizeof e->net);
    memcpy(e->net.b, raw, 16);
  } else {
    addr_v4(&e->net, raw);
  }
  e->bits = bits;
  const char *ps = colon + 1, *dash = strchr(ps, '-');
  size_t pn = dash ? (size_t)(dash - ps) : strlen(ps);
  if (!port_parse(ps, pn, &e->port_lo)) goto bad;
  e->port_hi = e->port_lo;
  if (dash && (!port_parse(dash + 1, strlen(dash + 1), &e->port_hi) || e->port_hi < e->port_lo))
    goto bad;
  for (size_t i = 0; i < CM_ARRAY_LEN(g_blocked); i++) {
    cm_ipaddr bn;
    if (cm_ipaddr_parse(g_blocked[i].net, &bn) == 0 && bits >= g_blocked[i].bits &&
        prefix_match(&e->net, &bn, g_blocked[i].bits))
      e->in_block = true;
  }
  return 0;
bad:
  cm_seterr(err, errlen,
            "a --target-allow entry is CIDR:PORT or CIDR:LOW-HIGH (10.0.0.0/8:22, "
            "[2001:db8::]/32:443); got a malformed one");
  return -EINVAL;
}

cm_netpolicy *cm_netpolicy_new(const char *const *entries, size_t n, char *err, size_t errlen) {
  if (n > MAX_ENTRIES) {
    cm_seterr(err, errlen, "at most %d --target-allow entries", MAX_ENTRIES);
    return NULL;
  }
  cm_netpolicy *p = calloc(1, sizeof *p);
  if (!p) {
    cm_seterr(err, errlen, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    if (entry_parse(entries[i], &p->e[i], err, errlen) != 0) {
      free(p);
      return NULL;
    }
  }
  p->n = n;
  return p;
}

void cm_netpolicy_free(cm_netpolicy *p) { free(p); }
size_t cm_netpolicy_count(const cm_netpolicy *p) { return p ? p->n : 0; }

bool cm_netpolicy_port_allowed(const cm_netpolicy *p, uint16_t port) {
  for (size_t i = 0; p && i < p->n; i++)
    if (port >= p->e[i].port_lo && port <= p->e[i].port_hi) return true;
  return false;
}

cm_net_verdict cm_netpolicy_check(const cm_netpolicy *p, const cm_ipaddr *a, uint16_t port) {
  bool blocked = blocked_of(a) != NULL;
  for (size_t i = 0; p && i < p->n; i++) {
    const struct entry *e = &p->e[i];
    if (port < e->port_lo || port > e->port_hi || !prefix_match(a, &e->net, e->bits)) continue;
    /* A blocked address needs an entry within the block; a broader range
     * (0.0.0.0/0) does not name it. */
    if (!blocked || e->in_block) return CM_NET_ALLOWED;
  }
  return blocked ? CM_NET_BLOCKED : CM_NET_NOT_LISTED;
}
