/*
 * fuzz_target.c — the target policy (common/netpolicy.c) on arbitrary
 * bytes: the first line is a target, the others --target-allow entries.
 * Checks: a parsed target has a host and a port, and an IP target prints
 * and parses back to the same address and target; a policy that loads
 * gives a mapped IPv6 address the verdict of its IPv4 address, never
 * calls a blocked address merely unlisted, and allows no port that no
 * entry allows.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LINES 32

static void check_target(const cm_target *t) {
  if (!t->host[0] || t->port == 0) abort();
  if (!t->is_ip) return;
  char text[64], again[CM_TARGET_MAX + 8];
  cm_ipaddr_text(&t->addr, text, sizeof text);
  cm_ipaddr back;
  if (cm_ipaddr_parse(text, &back) != 0 || memcmp(&back, &t->addr, sizeof back) != 0) abort();
  snprintf(again, sizeof again, t->addr.v4 ? "%s:%u" : "[%s]:%u", text, (unsigned)t->port);
  cm_target t2;
  char err[200];
  if (cm_target_parse(again, &t2, err, sizeof err) != 0 || t2.port != t->port ||
      memcmp(&t2.addr, &t->addr, sizeof t2.addr) != 0)
    abort();
}

static void check_policy(const cm_netpolicy *p, const cm_ipaddr *a, uint16_t port) {
  cm_net_verdict v = cm_netpolicy_check(p, a, port);
  if (cm_ipaddr_blocked(a) && v == CM_NET_NOT_LISTED) abort();
  if (v == CM_NET_ALLOWED && !cm_netpolicy_port_allowed(p, port)) abort();
  if (!a->v4) return;
  struct sockaddr_in6 m = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
  m.sin6_addr.s6_addr[10] = m.sin6_addr.s6_addr[11] = 0xff;
  memcpy(m.sin6_addr.s6_addr + 12, a->b, 4);
  cm_ipaddr mapped;
  if (cm_ipaddr_from_sockaddr((const struct sockaddr *)&m, &mapped, NULL) != 0) abort();
  if (cm_netpolicy_check(p, &mapped, port) != v) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  char *lines[MAX_LINES];
  size_t n = 0;
  for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && n < MAX_LINES;
       l = strtok_r(NULL, "\n", &save))
    lines[n++] = l;
  cm_target t;
  char err[200];
  bool have = n > 0 && cm_target_parse(lines[0], &t, err, sizeof err) == 0;
  if (have) check_target(&t);
  cm_netpolicy *p =
      n > 1 ? cm_netpolicy_new((const char *const *)lines + 1, n - 1, err, sizeof err) : NULL;
  if (p) {
    cm_ipaddr a;
    if (have && t.is_ip) check_policy(p, &t.addr, t.port);
    /* The bytes themselves as addresses, too. */
    for (size_t off = 0; off + 4 <= size && off < 64; off += 4) {
      a = (cm_ipaddr){.v4 = true};
      memcpy(a.b, data + off, 4);
      check_policy(p, &a, (uint16_t)(1 + (data[off] * 256u + data[off + 1]) % 65535));
      if (off + 16 <= size) {
        a = (cm_ipaddr){.v4 = false};
        memcpy(a.b, data + off, 16);
        if (memcmp(a.b, (uint8_t[12]){0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 12) != 0)
          check_policy(p, &a, 22);
      }
    }
    cm_netpolicy_free(p);
  }
  free(text);
  return 0;
}
