/*
 * edge.c — the small pieces of the edge's shared state (edge.h): which
 * worker is a session's home.
 */
#include "relay/edge.h"

uint64_t rly_hash(const char *s) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    h = (h ^ *p) * 1099511628211ULL;
  return h;
}

/* A hash of the id, not a table: every worker (and the control thread,
 * routing a Kick) computes the same home without asking anyone.  The high
 * half of the hash, since the session tables index by its low bits. */
size_t rly_edge_home(const rly_edge *e, const char *session_id) {
  return e->nworkers > 1 ? (size_t)((rly_hash(session_id) >> 32) % e->nworkers) : 0;
}
