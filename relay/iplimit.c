/*
 * iplimit.c — connections per client address.  A chained hash of address →
 * count, touched once when a connection arrives and once when it goes (an
 * upgraded connection keeps its count until the peer leaves).  Entries at
 * zero are removed, so the table holds only addresses with live
 * connections.  Off (nothing tracked) when the limit is 0, which suits a
 * relay behind a proxy where every connection comes from the proxy.
 * Shared by every worker (and the acceptor) under one mutex, taken when a
 * connection comes or goes and never per frame.
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

static ip_entry **bucket(rly_edge *s, const char *ip) {
  return &((ip_entry **)s->ip_tab)[rly_hash(ip) % BUCKETS];
}

static bool acquire_locked(rly_edge *s, const char *ip) {
  if (!s->ip_tab && !(s->ip_tab = calloc(BUCKETS, sizeof(ip_entry *)))) return true;
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

bool rly_ip_acquire(rly_edge *s, const char *addr) {
  if (s->cfg->max_conns_per_ip <= 0) return true;
  char ip[48];
  addr_ip(addr, ip, sizeof ip);
  uv_mutex_lock(&s->ip_lock);
  bool ok = acquire_locked(s, ip);
  uv_mutex_unlock(&s->ip_lock);
  return ok;
}

static void release_locked(rly_edge *s, const char *ip) {
  if (!s->ip_tab) return;
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

void rly_ip_release(rly_edge *s, const char *addr) {
  char ip[48];
  addr_ip(addr, ip, sizeof ip);
  uv_mutex_lock(&s->ip_lock);
  release_locked(s, ip);
  uv_mutex_unlock(&s->ip_lock);
}

void rly_ip_free(rly_edge *s) {
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
