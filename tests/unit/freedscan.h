/*
 * freedscan.h — for tests that prove secrets are wiped before they are
 * freed: under AddressSanitizer a free hook runs just before every free(3)
 * in the process (our code and every library, any thread), while the block
 * is still valid, and copies it into an mmap'd arena; afterwards the arena
 * is searched.  A secret found there was freed unwiped.  Without ASan the
 * tests that need it are skipped (need_asan).
 *
 * Use: freedscan_install() first in main (before any thread starts),
 * freedscan_setup as the cmocka group setup, then scan_start(), the code
 * under test, scan_stop(), and freed_unwiped(s) for each secret.
 */
#ifndef RELAY_TEST_FREEDSCAN_H
#define RELAY_TEST_FREEDSCAN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>

#include "common/common.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#endif

/* ---- the freed-memory arena ------------------------------------------------------ */

#define ARENA_BYTES ((size_t)1 << 30) /* address space only (MAP_NORESERVE) */

static unsigned char *g_arena;
static atomic_size_t g_used;
static atomic_bool g_armed, g_overflow;

#ifdef HAVE_ASAN
#include <sanitizer/allocator_interface.h>

static void on_malloc(const volatile void *p, size_t n) {
  (void)p;
  (void)n;
}

/* Runs inside free(): no allocation here, only a copy. */
static void on_free(const volatile void *p) {
  if (!p || !atomic_load(&g_armed)) return;
  size_t n = __sanitizer_get_allocated_size(p);
  size_t at = atomic_fetch_add(&g_used, n);
  if (at + n > ARENA_BYTES) {
    atomic_store(&g_overflow, true);
    return;
  }
  const volatile unsigned char *src = p;
  for (size_t i = 0; i < n; i++)
    g_arena[at + i] = src[i];
}
#endif

static void scan_start(void) {
  atomic_store(&g_used, 0);
  atomic_store(&g_overflow, false);
  atomic_store(&g_armed, true);
}

static void scan_stop(void) {
  atomic_store(&g_armed, false);
  assert_false(atomic_load(&g_overflow)); /* else the search below proves nothing */
}

/* Whether a freed block held s. */
static bool freed_unwiped(const char *s) {
  size_t used = CM_MIN(atomic_load(&g_used), ARENA_BYTES);
  return memmem(g_arena, used, s, strlen(s)) != NULL;
}

static int freedscan_setup(void **st) {
  (void)st;
#ifndef HAVE_ASAN
  return 0;
#else
  g_arena = mmap(NULL, ARENA_BYTES, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return g_arena == MAP_FAILED ? -1 : 0;
#endif
}

static void need_asan(void) {
#ifndef HAVE_ASAN
  skip();
#endif
}

/* Before any thread starts, as the sanitizer interface asks. */
static void freedscan_install(void) {
#ifdef HAVE_ASAN
  __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
#endif
}

#endif
