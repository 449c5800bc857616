/* tls_internal.h — the TLS context as stream.c and tls.c share it. */
#ifndef RELAY_COMMON_TLS_INTERNAL_H
#define RELAY_COMMON_TLS_INTERNAL_H
#include <openssl/ssl.h>

struct cm_tls_ctx {
  SSL_CTX *ctx;
  bool is_server;
  uint8_t alpn[128];
  size_t alpn_len;
};
#endif
