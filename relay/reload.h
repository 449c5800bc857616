/*
 * reload.h — (private to relay/) new settings and certificates while the
 * relay runs (SIGHUP, `relay reload`), and the certificates' expiry.
 *
 * A reload is checked whole before anything changes: the public
 * certificate and key (and client CA), and the tunnel's certificate, key
 * and controller CA, are loaded into new TLS contexts on the caller's
 * thread; any that fails refuses the reload with the setting named, and
 * the running settings stay.  Then the control thread swaps the edge's
 * settings and public context (atomic pointers: no lock per request or
 * frame), hands the tunnel its context, and sets the limits and the log
 * level.  Connections accepted from then on use the new material; open
 * ones keep the context they were made from (OpenSSL counts it, see
 * cm_tls_ctx_free), and controller links are verified anew at their next
 * handshake.  The settings replaced are freed once every worker has run a
 * message posted after the swap — past that point no worker can still
 * hold a pointer into them.
 *
 * Expiry: the earliest notAfter of each certificate file is a gauge
 * (relay_certificate_not_after_seconds{which}) and a warning in the log
 * within RLY_CERT_WARN_DAYS of it, at start, at each reload and daily.
 */
#ifndef RELAY_RELOAD_H
#define RELAY_RELOAD_H

#include "relay/edge.h"

#define RLY_CERT_WARN_DAYS 14

/* The public listener's TLS context for cfg (*out NULL with --plain). */
int rly_public_tls_new(const rly_config *cfg, cm_tls_ctx **out, char *err, size_t errlen);

/* Reads the certificate files' notAfter into the edge's gauges and warns
 * of any within RLY_CERT_WARN_DAYS. */
void rly_certs_check(rly_edge *e, const rly_config *cfg);
/* The gauges as metrics text. */
void rly_certs_metrics_text(rly_edge *e, cm_buf *b);

/* Checks and applies cfg (see above).  On success the edge owns cfg and
 * frees it with cfg_free once replaced in its turn (or at exit); on
 * failure nothing changed, err names the setting, and cfg is the
 * caller's.  From any thread but the control thread's. */
int rly_reload(rly_edge *e, rly_config *cfg, void (*cfg_free)(rly_config *cfg), char *err,
               size_t errlen);
/* Before any thread runs: the first expiry check, and the daily one on
 * the control loop (stopped at shutdown, on the control thread). */
int rly_reload_init(rly_edge *e, uv_loop_t *loop);
void rly_reload_stop(rly_edge *e);
/* At exit (threads joined): frees the settings a reload left. */
void rly_reload_free(rly_edge *e);

#endif
