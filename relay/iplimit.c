/*
 * iplimit.c — connections per client address.  A chained hash of address →
 * count, touched once when a connection arrives and once when it goes (an
 * upgraded connection keeps its count until the peer leaves).  Entries at
 * zero are removed, so the table holds only addresses with live
 * connections.  Off (nothing tracked) when the limit is 0, which suits a
 * relay behind a proxy where every connection comes from the proxy.
 */
#include "relay/edge.h"

#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096

typedef struct ip_entry {
  struct ip_entry *next;
  uint32_t n;
  char ip[48];
} ip_entry;

/* "1.2.3.4:5678" or "[::1]:5678" -> "1.2.3.4" / "::1". */
static void addr_ip(const char *addr, char *ip, size_t iplen) {
  const char *start = addr, *end;
  if (*addr == '[') {
    start = addr + 1;
    end = strchr(start, ']');
  } else {
    end = strrchr(addr, ':');
  }
  size_t n = end ? (size_t)(end - start) : strlen(start);
  if (n >= iplen) n = iplen - 1;
  memcpy(ip, start, n);
  ip[n] = '\0';
}

static ip_entry **bucket(rly_server *s, const char *ip) {
  uint64_t h = 1469598103934665603ULL;
  for (const unsigned char *p = (const unsigned char *)ip; *p; p++)
    h = (h ^ *p) * 1099511628211ULL;
  return &((ip_entry **)s->ip_tab)[h % BUCKETS];
}

bool rly_ip_acquire(rly_server *s, const char *addr) {
  if (s->cfg->max_conns_per_ip <= 0) return true;
  if (!s->ip_tab && !(s->ip_tab = calloc(BUCKETS, sizeof(ip_entry *)))) return true;
  char ip[48];
  addr_ip(addr, ip, sizeof ip);
  ip_entry **b = bucket(s, ip);
  ip_entry *e = *b;
  while (e && strcmp(e->ip, ip) != 0)
    e = e->next;
  if (e && e->n >= (uint32_t)s->cfg->max_conns_per_ip) return false;
  if (!e) {
    if (!(e = calloc(1, sizeof *e))) return true; /* fail open, not closed, on OOM */
    snprintf(e->ip, sizeof e->ip, "%s", ip);
    e->next = *b;
    *b = e;
  }
  e->n++;
  return true;
}

void rly_ip_release(rly_server *s, const char *addr) {
  if (!s->ip_tab) return;
  char ip[48];
  addr_ip(addr, ip, sizeof ip);
  for (ip_entry **pp = bucket(s, ip); *pp; pp = &(*pp)->next) {
    ip_entry *e = *pp;
    if (strcmp(e->ip, ip) != 0) continue;
    if (--e->n == 0) {
      *pp = e->next;
      free(e);
    }
    return;
  }
}

void rly_ip_free(rly_server *s) {
  if (!s->ip_tab) return;
  ip_entry **tab = s->ip_tab;
  for (size_t i = 0; i < BUCKETS; i++)
    for (ip_entry *e = tab[i], *n; e; e = n) {
      n = e->next;
      free(e);
    }
  free(tab);
  s->ip_tab = NULL;
}
