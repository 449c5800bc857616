/*
 * tls.c — OpenSSL 3 contexts with the project's policy: TLS 1.2 minimum,
 * TLS 1.3 preferred, AEAD ciphers with forward secrecy only, no
 * renegotiation, no compression, idle record buffers released, ALPN chosen
 * by server preference, and peer verification against a pinned CA file.
 */
#include "common/common.h"
#include "common/tls_internal.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>

static const char tls12_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

void cm_tls_config_init(cm_tls_config *c) {
  memset(c, 0, sizeof *c);
  c->verify_peer = true;
}

static void ssl_err(char *err, size_t errlen, const char *what, const char *arg) {
  unsigned long e = ERR_get_error();
  char buf[256] = "";
  if (e) ERR_error_string_n(e, buf, sizeof buf);
  snprintf(err, errlen, "%s%s%s%s%s", what, arg ? " " : "", arg ? arg : "", e ? ": " : "", buf);
  ERR_clear_error();
}

/* ALPN list "h2,http/1.1" -> wire format (length-prefixed). */
static int alpn_wire(const char *list, uint8_t *out, size_t outlen, size_t *wlen) {
  size_t o = 0;
  const char *p = list;
  while (*p) {
    const char *c = strchr(p, ',');
    size_t n = c ? (size_t)(c - p) : strlen(p);
    if (n == 0 || n > 255 || o + 1 + n > outlen) return -1;
    out[o++] = (uint8_t)n;
    memcpy(out + o, p, n);
    o += n;
    p += n + (c ? 1 : 0);
  }
  *wlen = o;
  return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  CM_UNUSED(ssl);
  cm_tls_ctx *t = arg;
  unsigned char *sel;
  /* Server preference: our list first. */
  if (SSL_select_next_proto(&sel, outlen, t->alpn, (unsigned)t->alpn_len, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

/* The wrapper lives exactly as long as its SSL_CTX, which OpenSSL counts
 * (every SSL holds a reference): a context replaced at a reload stays
 * whole — its ALPN callback's data included — for the connections still
 * using it, and goes with the last of them. */
static int g_wrapper_idx = -1;
static uv_once_t g_wrapper_once = UV_ONCE_INIT;

static void wrapper_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp) {
  CM_UNUSED(parent);
  CM_UNUSED(ad);
  CM_UNUSED(idx);
  CM_UNUSED(argl);
  CM_UNUSED(argp);
  free(ptr);
}

static void wrapper_index_init(void) {
  g_wrapper_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, wrapper_free);
}

static cm_tls_ctx *ctx_common(const cm_tls_config *c, bool server, char *err, size_t errlen) {
  uv_once(&g_wrapper_once, wrapper_index_init);
  cm_tls_ctx *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->is_server = server;
  t->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!t->ctx || g_wrapper_idx < 0 || SSL_CTX_set_ex_data(t->ctx, g_wrapper_idx, t) != 1) {
    ssl_err(err, errlen, "SSL_CTX_new", NULL);
    SSL_CTX_free(t->ctx);
    free(t);
    return NULL;
  }
  SSL_CTX *x = t->ctx;
  SSL_CTX_set_min_proto_version(x, c->tls13_only ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(x, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE);
  /* Else decrypted records (tokens included) linger in OpenSSL's buffers
   * until overwritten, or are freed as they are (SSL_MODE_RELEASE_BUFFERS). */
  if (c->cleanse_plaintext) SSL_CTX_set_options(x, SSL_OP_CLEANSE_PLAINTEXT);
  SSL_CTX_set_mode(x, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_cipher_list(x, tls12_ciphers);
  if (c->alpn && *c->alpn) {
    if (alpn_wire(c->alpn, t->alpn, sizeof t->alpn, &t->alpn_len) != 0) {
      snprintf(err, errlen, "invalid ALPN list \"%s\"", c->alpn);
      cm_tls_ctx_free(t);
      return NULL;
    }
  }
  if (c->cert_file) {
    if (SSL_CTX_use_certificate_chain_file(x, c->cert_file) != 1) {
      ssl_err(err, errlen, "loading certificate", c->cert_file);
      goto fail;
    }
    if (!c->key_file || SSL_CTX_use_PrivateKey_file(x, c->key_file, SSL_FILETYPE_PEM) != 1) {
      ssl_err(err, errlen, "loading private key", c->key_file ? c->key_file : "(none given)");
      goto fail;
    }
    if (SSL_CTX_check_private_key(x) != 1) {
      ssl_err(err, errlen, "private key does not match certificate", c->cert_file);
      goto fail;
    }
  }
  if (c->ca_file && SSL_CTX_load_verify_locations(x, c->ca_file, NULL) != 1) {
    ssl_err(err, errlen, "loading CA file", c->ca_file);
    goto fail;
  }
  return t;
fail:
  cm_tls_ctx_free(t);
  return NULL;
}

cm_tls_ctx *cm_tls_ctx_new_server(const cm_tls_config *c, char *err, size_t errlen) {
  if (!c->cert_file) {
    snprintf(err, errlen, "a TLS server needs a certificate and key");
    return NULL;
  }
  cm_tls_ctx *t = ctx_common(c, true, err, errlen);
  if (!t) return NULL;
  if (t->alpn_len) SSL_CTX_set_alpn_select_cb(t->ctx, alpn_select, t);
  if (c->verify_peer && c->ca_file) {
    int mode = SSL_VERIFY_PEER | (c->require_peer_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    SSL_CTX_set_verify(t->ctx, mode, NULL);
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(c->ca_file);
    if (names) SSL_CTX_set_client_CA_list(t->ctx, names);
    /* Client certificates change the session's identity: no resumption
     * across differently-authenticated peers. */
    static const unsigned char sid[] = "relay-mtls";
    SSL_CTX_set_session_id_context(t->ctx, sid, sizeof sid - 1);
  }
  return t;
}

cm_tls_ctx *cm_tls_ctx_new_client(const cm_tls_config *c, char *err, size_t errlen) {
  cm_tls_ctx *t = ctx_common(c, false, err, errlen);
  if (!t) return NULL;
  if (t->alpn_len) SSL_CTX_set_alpn_protos(t->ctx, t->alpn, (unsigned)t->alpn_len);
  if (c->system_ca || !c->ca_file) SSL_CTX_set_default_verify_paths(t->ctx);
  SSL_CTX_set_verify(t->ctx, c->verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  return t;
}

void cm_tls_ctx_free(cm_tls_ctx *t) {
  if (t) SSL_CTX_free(t->ctx); /* t goes with the last reference (wrapper_free) */
}

void *cm_tls_ctx_ssl_ctx(cm_tls_ctx *t) { return t->ctx; }
