/*
 * tls.c — the client's TLS context: common's policy (TLS 1.2 minimum,
 * AEAD suites, no renegotiation) with the trust the user chose.  The host
 * name is checked per connection (cm_stream_opts.sni, set by the dialer).
 */
#include "client/client.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

cm_tls_ctx *rc_tls_new(const rc_tls_opts *o, char *err, size_t errlen) {
  cm_tls_config c;
  cm_tls_config_init(&c);
  c.alpn = "http/1.1";
  /* Answers carry tokens: wipe decrypted records.  (Our requests carry
   * them too, but this option covers what is read.) */
  c.cleanse_plaintext = !(o && o->bulk);
  if (o && o->ca_file) {
    if (access(o->ca_file, R_OK) != 0) {
      cm_seterr(err, errlen, "cannot read CA file %s: %s", o->ca_file, strerror(errno));
      return NULL;
    }
    c.ca_file = o->ca_file; /* only these: a private CA is no reason to trust the world */
  }
  if (o && o->insecure) {
    c.verify_peer = false;
    cm_log(CM_LOG_WARN, "client",
           "--insecure: the server's certificate is not verified; anyone on the path can "
           "read and change this connection, tokens included");
  }
  return cm_tls_ctx_new_client(&c, err, errlen);
}
