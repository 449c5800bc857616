/*
 * util.c — base64url, CSPRNG tokens, hashing, time and bounded buffers:
 * the leaf helpers of common.h, none of which allocate more than asked.
 */
#include "common/common.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- base64url ---------------------------------------------------------- */

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t cm_b64url_encoded_len(size_t n) { return (n / 3) * 4 + (n % 3 ? n % 3 + 1 : 0); }

size_t cm_b64url_encode(const uint8_t *in, size_t n, char *out, size_t outlen) {
  size_t need = cm_b64url_encoded_len(n);
  if (outlen < need + 1) return 0;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = b64u[v >> 18];
    out[o++] = b64u[(v >> 12) & 63];
    out[o++] = b64u[(v >> 6) & 63];
    out[o++] = b64u[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = b64u[v >> 18];
    out[o++] = b64u[(v >> 12) & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = b64u[v >> 18];
    out[o++] = b64u[(v >> 12) & 63];
    out[o++] = b64u[(v >> 6) & 63];
  }
  out[o] = '\0';
  return o;
}

static int b64u_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

long cm_b64url_decode(const char *in, size_t n, uint8_t *out, size_t outlen) {
  while (n > 0 && in[n - 1] == '=')
    n--;
  if (n % 4 == 1) return -1;
  size_t need = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
  if (need > outlen) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    int v = b64u_val((unsigned char)in[i]);
    if (v < 0) return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  /* Leftover bits must be zero for a canonical encoding. */
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return -1;
  return (long)o;
}

/* ---- randomness and hashing --------------------------------------------- */

int cm_random_bytes(uint8_t *out, size_t n) { return RAND_bytes(out, (int)n) == 1 ? 0 : -EIO; }

int cm_random_token(char out[CM_TOKEN_LEN + 1]) {
  uint8_t raw[16];
  if (cm_random_bytes(raw, sizeof raw) != 0) return -EIO;
  cm_b64url_encode(raw, sizeof raw, out, CM_TOKEN_LEN + 1);
  OPENSSL_cleanse(raw, sizeof raw);
  return 0;
}

uint64_t cm_random_below(uint64_t n) {
  if (n == 0) return 0;
  uint64_t limit = UINT64_MAX - UINT64_MAX % n, v;
  do {
    if (cm_random_bytes((uint8_t *)&v, sizeof v) != 0) return 0;
  } while (v >= limit);
  return v % n;
}

bool cm_ct_equal(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

void cm_sha256(const void *data, size_t n, uint8_t out[32]) {
  unsigned int len = 32;
  EVP_Digest(data, n, out, &len, EVP_sha256(), NULL);
}

void cm_hex(const uint8_t *in, size_t n, char *out) {
  static const char h[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = h[in[i] >> 4];
    out[2 * i + 1] = h[in[i] & 15];
  }
  out[2 * n] = '\0';
}

/* ---- time ----------------------------------------------------------------- */

uint64_t cm_now_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t cm_now_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cm_rfc3339(int64_t unix_seconds, char *out, size_t outlen) {
  time_t t = (time_t)unix_seconds;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void cm_http_date(int64_t unix_seconds, char *out, size_t outlen) {
  static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t t = (time_t)unix_seconds;
  struct tm tm;
  gmtime_r(&t, &tm);
  snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
           mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- cm_buf --------------------------------------------------------------- */

void cm_buf_init(cm_buf *b, size_t max) {
  memset(b, 0, sizeof *b);
  b->max = max;
}

void cm_buf_init_secret(cm_buf *b, size_t max) {
  cm_buf_init(b, max);
  b->secret = true;
}

/* Secret buffers wipe the bytes in [from, to) they are letting go of. */
static void buf_wipe(cm_buf *b, size_t from, size_t to) {
  if (b->secret && b->data && to > from) OPENSSL_cleanse(b->data + from, to - from);
}

void cm_buf_free(cm_buf *b) {
  buf_wipe(b, 0, b->cap);
  free(b->data);
  memset(b, 0, sizeof *b);
}

void cm_buf_reset(cm_buf *b) {
  buf_wipe(b, 0, b->len);
  b->off = b->len = 0;
}

/* Like realloc, but a secret buffer's old block is wiped, not left behind. */
static uint8_t *buf_grow(cm_buf *b, size_t ncap) {
  if (!b->secret) return realloc(b->data, ncap);
  uint8_t *d = malloc(ncap);
  if (!d) return NULL;
  if (b->data) memcpy(d, b->data, b->len);
  buf_wipe(b, 0, b->cap);
  free(b->data);
  return d;
}

uint8_t *cm_buf_reserve(cm_buf *b, size_t n) {
  if (b->max && cm_buf_size(b) + n > b->max) return NULL;
  if (b->off > 0 && (b->off == b->len || b->len + n > b->cap)) {
    /* Compact before growing: unread bytes move to the front. */
    size_t old_len = b->len;
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
    buf_wipe(b, b->len, old_len);
  }
  if (b->len + n > b->cap) {
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + n)
      ncap *= 2;
    uint8_t *d = buf_grow(b, ncap);
    if (!d) return NULL;
    b->data = d;
    b->cap = ncap;
  }
  return b->data + b->len;
}

void cm_buf_commit(cm_buf *b, size_t n) { b->len += n; }

int cm_buf_append(cm_buf *b, const void *data, size_t n) {
  if (b->max && cm_buf_size(b) + n > b->max) return -ENOBUFS;
  if (n == 0) return 0;
  uint8_t *p = cm_buf_reserve(b, n);
  if (!p) return -ENOMEM;
  memcpy(p, data, n);
  b->len += n;
  return 0;
}

int cm_buf_printf(cm_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char small[256];
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return -EINVAL;
  if ((size_t)n < sizeof small) return cm_buf_append(b, small, (size_t)n);
  uint8_t *p = cm_buf_reserve(b, (size_t)n + 1);
  if (!p) return -ENOBUFS;
  va_start(ap, fmt);
  vsnprintf((char *)p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void cm_buf_consume(cm_buf *b, size_t n) {
  buf_wipe(b, b->off, CM_MIN(b->off + n, b->len));
  b->off += n;
  if (b->off >= b->len) b->off = b->len = 0;
}

const char *cm_openssl_version(void) { return OpenSSL_version(OPENSSL_VERSION); }
