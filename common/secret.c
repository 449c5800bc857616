/*
 * secret.c — heap memory for secrets (slot tokens, keys, the messages that
 * carry them): every block remembers its size in a small header so that it
 * is wiped (OPENSSL_cleanse) before it goes back to malloc.  That is the
 * shape allocator hooks that free without a size need (protobuf-c's,
 * nghttp2's).  Reallocation moves the bytes and wipes the old block, so no
 * stale copy is left behind the way realloc(3) may leave one.
 */
#include "common/common.h"

#include <openssl/crypto.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The user part stays aligned as malloc's is. */
typedef struct secret_hdr {
  alignas(max_align_t) size_t n;
} secret_hdr;

static secret_hdr *hdr_of(void *p) { return (secret_hdr *)p - 1; }

void *cm_secret_alloc(size_t n) {
  if (n > SIZE_MAX - sizeof(secret_hdr)) return NULL;
  secret_hdr *h = malloc(sizeof *h + n);
  if (!h) return NULL;
  h->n = n;
  return h + 1;
}

void *cm_secret_calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *p = cm_secret_alloc(n * size);
  if (p) memset(p, 0, n * size);
  return p;
}

void cm_secret_free(void *p) {
  if (!p) return;
  secret_hdr *h = hdr_of(p);
  OPENSSL_cleanse(h, sizeof *h + h->n);
  free(h);
}

void *cm_secret_realloc(void *p, size_t n) {
  if (!p) return cm_secret_alloc(n);
  void *q = cm_secret_alloc(n);
  if (!q) return NULL; /* p is untouched, as with realloc */
  memcpy(q, p, CM_MIN(n, hdr_of(p)->n));
  cm_secret_free(p);
  return q;
}
