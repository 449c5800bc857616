/*
 * log.c — JSON-lines logging.  Each call formats one complete line in a
 * stack buffer and emits it with a single write(2), so lines from several
 * threads (the embedded controller runs on its own) never interleave.
 */
#include "common/common.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = CM_LOG_INFO;
static _Atomic int g_fd = -1;

void cm_log_set_level(cm_log_level level) { atomic_store(&g_level, (int)level); }
cm_log_level cm_log_get_level(void) { return (cm_log_level)atomic_load(&g_level); }
void cm_log_set_fd(int fd) { atomic_store(&g_fd, fd); }

int cm_log_level_parse(const char *s, cm_log_level *out) {
  static const char *names[] = {"debug", "info", "warn", "error", "off"};
  for (size_t i = 0; i < CM_ARRAY_LEN(names); i++) {
    if (strcmp(s, names[i]) == 0) {
      *out = (cm_log_level)i;
      return 0;
    }
  }
  return -1;
}

/* A line writer that never overflows and always yields valid JSON: a
 * structural piece that does not fit is not written at all (put_field then
 * drops the whole field), and a string value that does not fit is cut at
 * a character boundary and still closed.  Bytes that are not UTF-8 (a
 * client's request target need not be) become U+FFFD. */
typedef struct line {
  char buf[4096];
  size_t len;
  bool overflow;
} line;

#define LINE_RESERVE 8 /* room always kept for the closing "}\n" */

static size_t line_room(const line *l) { return sizeof(l->buf) - LINE_RESERVE - l->len; }

static void put(line *l, const char *s, size_t n) {
  if (n > line_room(l)) {
    l->overflow = true;
    return;
  }
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void puts_(line *l, const char *s) { put(l, s, strlen(s)); }

/* Length of the valid UTF-8 sequence at p, or 0 if it is not one. */
static size_t utf8_seq(const unsigned char *p) {
  if (p[0] < 0x80) return 1;
  size_t n;
  uint32_t cp, min;
  if ((p[0] & 0xe0) == 0xc0)
    n = 2, cp = p[0] & 0x1f, min = 0x80;
  else if ((p[0] & 0xf0) == 0xe0)
    n = 3, cp = p[0] & 0x0f, min = 0x800;
  else if ((p[0] & 0xf8) == 0xf0)
    n = 4, cp = p[0] & 0x07, min = 0x10000;
  else
    return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0; /* also stops at the NUL */
    cp = cp << 6 | (p[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

static void put_json_str(line *l, const char *s) {
  static const char hex[] = "0123456789abcdef";
  if (line_room(l) < 2) {
    l->overflow = true;
    return;
  }
  put(l, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    char esc[7];
    const char *piece = esc;
    size_t n = utf8_seq(p), adv = n ? n : 1;
    if (n == 0) {
      piece = "\\ufffd";
      n = 6;
    } else if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      n = 2;
    } else if (*p < 0x20 || *p == 0x7f) {
      memcpy(esc, "\\u00", 4);
      esc[4] = hex[*p >> 4];
      esc[5] = hex[*p & 15];
      n = 6;
    } else {
      piece = (const char *)p;
    }
    if (n + 1 > line_room(l)) break; /* truncate; keep room for the quote */
    put(l, piece, n);
    p += adv;
  }
  put(l, "\"", 1);
}

static void put_kv(line *l, const char *k, const char *v) {
  put(l, ",", 1);
  put_json_str(l, k);
  put(l, ":", 1);
  put_json_str(l, v);
}

static void put_field_(line *l, const cm_field *f);

/* A field that does not fit whole is left out rather than cut mid-syntax. */
static void put_field(line *l, const cm_field *f) {
  size_t mark = l->len;
  put_field_(l, f);
  if (l->overflow) {
    l->len = mark;
    l->overflow = false;
  }
}

static void put_field_(line *l, const cm_field *f) {
  char tmp[1024];
  if (!f->key) return;
  switch (f->type) {
  case CM_F_STR: put_kv(l, f->key, f->s ? f->s : ""); break;
  case CM_F_URL:
    cm_redact_url(f->s ? f->s : "", tmp, sizeof tmp);
    put_kv(l, f->key, tmp);
    break;
  case CM_F_INT:
    put(l, ",", 1);
    put_json_str(l, f->key);
    snprintf(tmp, sizeof tmp, ":%lld", f->i);
    puts_(l, tmp);
    break;
  case CM_F_BOOL:
    put(l, ",", 1);
    put_json_str(l, f->key);
    puts_(l, f->i ? ":true" : ":false");
    break;
  }
}

void cm_log_fields(cm_log_level level, const char *component, const char *msg,
                   const cm_field *fields, size_t nfields) {
  static const char *names[] = {"debug", "info", "warn", "error", "off"};
  line l = {.len = 0};
  struct timespec ts;
  struct tm tm;
  char tbuf[64];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(tbuf, sizeof tbuf, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(tbuf + n, sizeof tbuf - n, ".%03ldZ", ts.tv_nsec / 1000000);
  puts_(&l, "{\"time\":\"");
  puts_(&l, tbuf);
  puts_(&l, "\",\"level\":\"");
  puts_(&l, names[level < CM_LOG_OFF ? level : CM_LOG_ERROR]);
  puts_(&l, "\"");
  put_kv(&l, "component", component ? component : "-");
  cm_field m = CM_S("msg", msg ? msg : "");
  put_field(&l, &m);
  for (size_t i = 0; i < nfields; i++)
    put_field(&l, &fields[i]);
  memcpy(l.buf + l.len, "}\n", 2);
  l.len += 2;
  int fd = atomic_load(&g_fd);
  if (fd < 0) fd = STDERR_FILENO;
  const char *p = l.buf;
  size_t left = l.len;
  while (left > 0) {
    ssize_t w = write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    left -= (size_t)w;
  }
}

static bool secret_param(const char *k, size_t n) {
  static const char *secret[] = {"token",  "access_token", "id_token", "jwt",          "code",
                                 "secret", "password",     "key",      "refresh_token"};
  for (size_t i = 0; i < CM_ARRAY_LEN(secret); i++) {
    if (strlen(secret[i]) == n && strncasecmp(secret[i], k, n) == 0) return true;
  }
  return false;
}

void cm_redact_url(const char *url, char *out, size_t outlen) {
  if (outlen == 0) return;
  size_t o = 0;
#define EMIT(c)                                                                                    \
  do {                                                                                             \
    if (o + 1 < outlen) out[o++] = (c);                                                            \
  } while (0)
  const char *q = strchr(url, '?');
  const char *p = url;
  for (; *p && (!q || p <= q); p++)
    EMIT(*p);
  while (q && *p) {
    const char *amp = strchr(p, '&');
    const char *end = amp ? amp : p + strlen(p);
    const char *eq = memchr(p, '=', (size_t)(end - p));
    size_t klen = eq ? (size_t)(eq - p) : (size_t)(end - p);
    for (size_t i = 0; i < klen; i++)
      EMIT(p[i]);
    if (eq) {
      EMIT('=');
      if (secret_param(p, klen)) {
        for (const char *r = "REDACTED"; *r; r++)
          EMIT(*r);
      } else {
        for (const char *v = eq + 1; v < end; v++)
          EMIT(*v);
      }
    }
    if (!amp) break;
    EMIT('&');
    p = amp + 1;
  }
#undef EMIT
  out[o] = '\0';
}

void cm_seterr(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}
