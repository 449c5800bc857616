/*
 * creds.c — the credentials `relay auth` caches, where swsrs keeps them:
 * $XDG_CONFIG_HOME/swsrs/credentials.json.  The file holds tokens, so it
 * is written 0600 through a temporary file and rename(2) (a reader never
 * sees half a file, a crash never leaves one), read into wiped memory,
 * and refused when anyone but its owner could read it.
 */
#include "client/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CREDS_DIR     "swsrs"
#define CREDS_FILE    "credentials.json"
#define CREDS_VERSION 1

int rc_creds_path(char *out, size_t outlen, char *err, size_t errlen) {
  const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
  int n;
  /* The XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored. */
  if (xdg && xdg[0] == '/')
    n = snprintf(out, outlen, "%s/%s/%s", xdg, CREDS_DIR, CREDS_FILE);
  else if (home && home[0] == '/')
    n = snprintf(out, outlen, "%s/.config/%s/%s", home, CREDS_DIR, CREDS_FILE);
  else {
    cm_seterr(err, errlen, "neither XDG_CONFIG_HOME nor HOME names a directory for %s/%s",
              CREDS_DIR, CREDS_FILE);
    return -ENOENT;
  }
  if (n < 0 || (size_t)n >= outlen) {
    cm_seterr(err, errlen, "the credentials path is too long");
    return -ENAMETOOLONG;
  }
  return 0;
}

void rc_creds_clear(rc_creds *c) {
  char **fields[] = {&c->relay,        &c->issuer,         &c->audience,
                     &c->client_id,    &c->token_endpoint, &c->grant,
                     &c->access_token, &c->refresh_token,  &c->scope};
  for (size_t i = 0; i < CM_ARRAY_LEN(fields); i++)
    rc_secret_strfree(fields[i]);
  c->expires_at = 0;
}

bool rc_creds_expiring(const rc_creds *c, int64_t now_s, int64_t margin_s) {
  if (!c->access_token) return true;
  return c->expires_at != 0 && c->expires_at - margin_s <= now_s;
}

/* ---- RFC 3339 ------------------------------------------------------------------- */

static bool digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

int rc_parse_rfc3339(const char *s, int64_t *out) {
  int y, mo, d, h, mi, sec;
  if (strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
      !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2, &h) ||
      s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &sec))
    return -EINVAL;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return -EINVAL;
  const char *p = s + 19;
  if (*p == '.') /* fractions of a second: dropped */
    for (p++; *p >= '0' && *p <= '9'; p++) {
    }
  int offset = 0, oh, om;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if ((*p == '+' || *p == '-') && digits(p + 1, 2, &oh) && p[3] == ':' &&
             digits(p + 4, 2, &om)) {
    offset = (*p == '-' ? -1 : 1) * (oh * 3600 + om * 60);
    p += 6;
  } else {
    return -EINVAL;
  }
  if (*p) return -EINVAL;
  struct tm tm = {.tm_year = y - 1900,
                  .tm_mon = mo - 1,
                  .tm_mday = d,
                  .tm_hour = h,
                  .tm_min = mi,
                  .tm_sec = sec};
  *out = (int64_t)timegm(&tm) - offset;
  return 0;
}

/* ---- the file's text -------------------------------------------------------------- */

typedef struct field_map {
  const char *key;
  size_t off;
  bool required;
} field_map;

#define FIELD(k, f, r)                                                                             \
  { k, offsetof(rc_creds, f), r }
static const field_map g_fields[] = {
    FIELD("access_token", access_token, true),
    FIELD("refresh_token", refresh_token, false),
    FIELD("issuer", issuer, true),
    FIELD("relay", relay, false),
    FIELD("audience", audience, false),
    FIELD("client_id", client_id, false),
    FIELD("token_endpoint", token_endpoint, false),
    FIELD("grant", grant, false),
    FIELD("scope", scope, false),
};

/* Through void *: the offsets come from offsetof, so alignment holds. */
static char **field_of(rc_creds *c, const field_map *f) {
  return (char **)(void *)((char *)c + f->off);
}
static char *const *cfield_of(const rc_creds *c, const field_map *f) {
  return (char *const *)(const void *)((const char *)c + f->off);
}

int rc_creds_encode(const rc_creds *c, cm_buf *out) {
  if (!rc_json_is_secure()) return -EPERM;
  json_t *o = json_object();
  json_object_set_new(o, "version", json_integer(CREDS_VERSION));
  json_object_set_new(o, "token_type", json_string("Bearer"));
  for (size_t i = 0; i < CM_ARRAY_LEN(g_fields); i++) {
    const char *v = *cfield_of(c, &g_fields[i]);
    if (v) json_object_set_new(o, g_fields[i].key, json_string(v));
  }
  if (c->expires_at) {
    char t[32];
    cm_rfc3339(c->expires_at, t, sizeof t);
    json_object_set_new(o, "expiry", json_string(t));
  }
  /* jansson's memory is wiped (rc_init), so is its text once freed. */
  char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
  json_decref(o);
  if (!text) return -ENOMEM;
  cm_buf_init_secret(out, 0);
  int rc = cm_buf_append(out, text, strlen(text));
  if (rc == 0) rc = cm_buf_append(out, "\n", 1);
  cm_secret_free(text);
  if (rc != 0) cm_buf_free(out);
  return rc;
}

int rc_creds_decode(const char *text, size_t len, rc_creds *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  if (!rc_json_is_secure()) return -EPERM;
  json_error_t je;
  json_t *o = json_loadb(text, len, 0, &je);
  if (!json_is_object(o)) {
    /* Not je.text: it quotes the input, which may be a token. */
    cm_seterr(err, errlen, "not a JSON object (line %d)", o ? 1 : je.line);
    json_decref(o);
    return -EINVAL;
  }
  int rc = 0;
  for (size_t i = 0; i < CM_ARRAY_LEN(g_fields) && rc == 0; i++) {
    const json_t *v = json_object_get(o, g_fields[i].key);
    if (json_is_string(v) && json_string_length(v) > 0) {
      if (!(*field_of(c, &g_fields[i]) = rc_secret_strdup(json_string_value(v)))) rc = -ENOMEM;
    } else if (g_fields[i].required || (v && !json_is_null(v))) {
      cm_seterr(err, errlen, "\"%s\" is %s", g_fields[i].key, v ? "not a string" : "missing");
      rc = -EINVAL;
    }
  }
  const json_t *exp = json_object_get(o, "expiry");
  if (rc == 0 && json_is_string(exp) && rc_parse_rfc3339(json_string_value(exp), &c->expires_at)) {
    cm_seterr(err, errlen, "\"expiry\" is not an RFC 3339 time");
    rc = -EINVAL;
  }
  json_decref(o);
  if (rc != 0) rc_creds_clear(c);
  return rc;
}

/* ---- the file ---------------------------------------------------------------------- */

/* Reads the file into a secret buffer, refusing one that is not a regular
 * file of ours that only we can read. */
static int read_private(const char *path, cm_buf *b, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e != ENOENT) cm_seterr(err, errlen, "cannot open %s: %s", path, strerror(e));
    return -e;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    cm_seterr(err, errlen, "%s is not a regular file", path);
    close(fd);
    return -EINVAL;
  }
  int rc = 0;
  if ((st.st_uid != geteuid() || (st.st_mode & 077))) {
    cm_seterr(err, errlen,
              "%s may be read by others (mode %04o%s): refusing it; chmod 600 it or run "
              "relay auth again",
              path, (unsigned)(st.st_mode & 07777), st.st_uid != geteuid() ? ", not ours" : "");
    close(fd);
    return -EACCES;
  }
  cm_buf_init_secret(b, RC_CREDS_MAX_BYTES);
  while (rc == 0) {
    uint8_t *p = cm_buf_reserve(b, 4096);
    ssize_t n = p ? read(fd, p, 4096) : -1;
    if (!p)
      rc = -EFBIG;
    else if (n < 0 && errno != EINTR)
      rc = -errno;
    else if (n == 0)
      break;
    else if (n > 0)
      cm_buf_commit(b, (size_t)n);
  }
  close(fd);
  if (rc != 0) {
    cm_seterr(err, errlen, "cannot read %s: %s", path,
              rc == -EFBIG ? "larger than 64 KiB" : strerror(-rc));
    cm_buf_free(b);
  }
  return rc;
}

int rc_creds_load(const char *path, rc_creds *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  cm_buf b;
  int rc = read_private(path, &b, err, errlen);
  if (rc != 0) return rc;
  char why[256];
  rc = rc_creds_decode((const char *)cm_buf_head(&b), cm_buf_size(&b), c, why, sizeof why);
  if (rc != 0) cm_seterr(err, errlen, "%s is unusable: %s; run relay auth again", path, why);
  cm_buf_free(&b);
  return rc;
}

int rc_creds_save(const char *path, const rc_creds *c, char *err, size_t errlen) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) *slash = '\0';
  int rc = slash && slash != dir ? cm_mkdir_p(dir, 0700) : 0;
  if (rc != 0) {
    cm_seterr(err, errlen, "cannot make %s: %s", dir, strerror(-rc));
    return rc;
  }
  cm_buf text;
  rc = rc_creds_encode(c, &text);
  if (rc != 0) {
    cm_seterr(err, errlen, "cannot encode the credentials: %s", strerror(-rc));
    return rc;
  }
  rc = cm_write_file_atomic(path, cm_buf_head(&text), cm_buf_size(&text), 0600, false);
  cm_buf_free(&text);
  if (rc != 0) cm_seterr(err, errlen, "cannot write %s: %s", path, strerror(-rc));
  return rc;
}

int rc_creds_remove(const char *path, char *err, size_t errlen) {
  if (unlink(path) == 0) return 0;
  int e = errno;
  if (e != ENOENT) cm_seterr(err, errlen, "cannot remove %s: %s", path, strerror(e));
  return -e;
}
