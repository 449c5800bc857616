/*
 * secrets.c — keeping the client's secrets out of sight: jansson switched
 * to wiped memory (rc_init), secret string copies, and flag values wiped
 * from argv once parsed so that ps and /proc/PID/cmdline stop showing them.
 */
#include "client/admin.h"

#include <openssl/crypto.h>
#include <string.h>

void rc_init(void) { json_set_alloc_funcs(cm_secret_alloc, cm_secret_free); }

bool rc_json_is_secure(void) {
  json_malloc_t m;
  json_free_t f;
  json_get_alloc_funcs(&m, &f);
  return m == cm_secret_alloc && f == cm_secret_free;
}

char *rc_secret_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *p = cm_secret_alloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

void rc_secret_strfree(char **p) {
  cm_secret_free(*p);
  *p = NULL;
}

static void wipe(char *s) { OPENSSL_cleanse(s, strlen(s)); }

/* Whether name starts with flag, '_' and '-' alike (as cm_config has them). */
static bool flag_prefix(const char *name, const char *flag, size_t fl) {
  for (size_t i = 0; i < fl; i++) {
    char a = name[i] == '_' ? '-' : name[i], b = flag[i] == '_' ? '-' : flag[i];
    if (a != b || a == '\0') return false;
  }
  return true;
}

void rc_argv_hide(int argc, char **argv, const char *flag) {
  size_t fl = strlen(flag);
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--", 2) != 0 || !flag_prefix(a + 2, flag, fl)) continue;
    if (a[2 + fl] == '=')
      wipe(argv[i] + 2 + fl + 1);
    else if (a[2 + fl] == '\0' && i + 1 < argc)
      wipe(argv[++i]);
  }
}
