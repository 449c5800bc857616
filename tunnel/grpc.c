/*
 * grpc.c — the gRPC wire format, sans-I/O: 5-byte message prefix
 * (compressed flag + big-endian length), grpc-timeout values and
 * grpc-message percent-encoding, as in the gRPC over HTTP/2 spec.
 *
 * Messages on the link may carry slot tokens, so every byte of them this
 * file holds is wiped when let go of: the decoder's buffer is a secret
 * cm_buf, and decoded messages are allocated by cm_secret_*.
 */
#include "tunnel/tunnel.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void tun_grpc_decoder_init(tun_grpc_decoder *d, size_t max_message) {
  memset(d, 0, sizeof *d);
  d->max_message = max_message ? max_message : 4u << 20;
  cm_buf_init_secret(&d->buf, d->max_message);
}

void tun_grpc_decoder_free(tun_grpc_decoder *d) { cm_buf_free(&d->buf); }

static void *pb_alloc(void *ud, size_t n) {
  CM_UNUSED(ud);
  return cm_secret_alloc(n);
}

static void pb_free(void *ud, void *p) {
  CM_UNUSED(ud);
  cm_secret_free(p);
}

/* protobuf-c frees without a size: cm_secret_* keep it to wipe by. */
static ProtobufCAllocator g_pb_secret = {pb_alloc, pb_free, NULL};

ProtobufCMessage *tun_grpc_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *msg,
                                  size_t len) {
  return protobuf_c_message_unpack(desc, &g_pb_secret, len, msg);
}

void tun_grpc_free(ProtobufCMessage *msg) {
  if (msg) protobuf_c_message_free_unpacked(msg, &g_pb_secret);
}

int tun_grpc_decode(tun_grpc_decoder *d, const uint8_t *data, size_t len,
                    int (*on_message)(void *ud, const uint8_t *msg, size_t len), void *ud) {
  while (len > 0 || (d->in_payload && d->need == 0)) {
    if (!d->in_payload) {
      size_t take = CM_MIN(len, TUN_GRPC_PREFIX - d->hdr_have);
      memcpy(d->hdr + d->hdr_have, data, take);
      d->hdr_have += take;
      data += take;
      len -= take;
      if (d->hdr_have < TUN_GRPC_PREFIX) return 0;
      if (d->hdr[0] != 0) return -EPROTO; /* compression never negotiated */
      d->need = (uint32_t)d->hdr[1] << 24 | (uint32_t)d->hdr[2] << 16 | (uint32_t)d->hdr[3] << 8 |
                d->hdr[4];
      if (d->need > d->max_message) return -EMSGSIZE;
      d->in_payload = true;
      d->hdr_have = 0;
      cm_buf_reset(&d->buf);
    }
    size_t take = CM_MIN(len, (size_t)d->need);
    if (take && cm_buf_append(&d->buf, data, take) != 0) return -EMSGSIZE;
    data += take;
    len -= take;
    d->need -= (uint32_t)take;
    if (d->need > 0) return 0;
    d->in_payload = false;
    int rc = on_message(ud, cm_buf_head(&d->buf), cm_buf_size(&d->buf));
    cm_buf_reset(&d->buf);
    if (rc != 0) return rc;
  }
  return 0;
}

int tun_grpc_encode(cm_buf *out, const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  if (n > UINT32_MAX) return -EMSGSIZE;
  uint8_t *p = cm_buf_reserve(out, TUN_GRPC_PREFIX + n);
  if (!p) return -ENOBUFS;
  p[0] = 0;
  p[1] = (uint8_t)(n >> 24);
  p[2] = (uint8_t)(n >> 16);
  p[3] = (uint8_t)(n >> 8);
  p[4] = (uint8_t)n;
  protobuf_c_message_pack(msg, p + TUN_GRPC_PREFIX);
  cm_buf_commit(out, TUN_GRPC_PREFIX + n);
  return 0;
}

void tun_grpc_timeout_format(uint64_t ms, char out[16]) {
  /* At most 8 digits: fall back to coarser units for long deadlines. */
  if (ms <= 99999999ULL)
    snprintf(out, 16, "%llum", (unsigned long long)ms);
  else if (ms / 1000 <= 99999999ULL)
    snprintf(out, 16, "%lluS", (unsigned long long)(ms / 1000));
  else
    snprintf(out, 16, "%lluM", (unsigned long long)CM_MIN(ms / 60000, 99999999ULL));
}

int tun_grpc_timeout_parse(const char *v, uint64_t *ms) {
  size_t n = strlen(v);
  if (n < 2 || n > 9) return -EINVAL;
  uint64_t x = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    if (!isdigit((unsigned char)v[i])) return -EINVAL;
    x = x * 10 + (uint64_t)(v[i] - '0');
  }
  switch (v[n - 1]) {
  case 'H': *ms = x * 3600000; break;
  case 'M': *ms = x * 60000; break;
  case 'S': *ms = x * 1000; break;
  case 'm': *ms = x; break;
  case 'u': *ms = (x + 999) / 1000; break;
  case 'n': *ms = (x + 999999) / 1000000; break;
  default: return -EINVAL;
  }
  return 0;
}

const char *tun_grpc_status_name(int s) {
  static const char *names[] = {"OK",
                                "CANCELLED",
                                "UNKNOWN",
                                "INVALID_ARGUMENT",
                                "DEADLINE_EXCEEDED",
                                "NOT_FOUND",
                                "ALREADY_EXISTS",
                                "PERMISSION_DENIED",
                                "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION",
                                "ABORTED",
                                "OUT_OF_RANGE",
                                "UNIMPLEMENTED",
                                "INTERNAL",
                                "UNAVAILABLE",
                                "DATA_LOSS",
                                "UNAUTHENTICATED"};
  return s >= 0 && s < (int)CM_ARRAY_LEN(names) ? names[s] : "UNKNOWN";
}

void tun_grpc_message_encode(const char *in, char *out, size_t outlen) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < outlen; p++) {
    if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
      out[o++] = (char)*p;
    } else {
      out[o++] = '%';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    }
  }
  out[o] = '\0';
}

static int hexv(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void tun_grpc_message_decode(const char *in, char *out, size_t outlen) {
  size_t o = 0;
  for (const char *p = in; *p && o + 1 < outlen; p++) {
    if (*p == '%' && hexv(p[1]) >= 0 && hexv(p[2]) >= 0) {
      out[o++] = (char)(hexv(p[1]) * 16 + hexv(p[2]));
      p += 2;
    } else {
      out[o++] = *p;
    }
  }
  out[o] = '\0';
}
