/*
 * controller.h — the reference controller as a library.
 *
 * The controller is the single source of truth for sessions: it mints
 * session ids and slot tokens (stored only as SHA-256 hashes), answers
 * every Validate and Admin call a relay makes, tracks which peers are
 * attached from the relays' events, expires sessions (TTL, reaper) and
 * tells relays to kick peers.  Its registry is durable: a journal of
 * fsync'd, checksummed records plus an atomically replaced snapshot.
 *
 * It also holds the controller CA used for enrolment: init-ca makes the CA
 * and the controller's own client certificate; sign-csr issues a relay's
 * certificate from the CSR `relay gen-csr` printed.
 */
#ifndef RELAY_CONTROLLER_H
#define RELAY_CONTROLLER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"

/* ---- enrolment (ca.c) ----------------------------------------------------- */

typedef struct ctl_ca_paths {
  char ca_key[4096], ca_cert[4096];   /* dir/ca.key, dir/ca.crt */
  char ctl_key[4096], ctl_cert[4096]; /* dir/controller.key, dir/controller.crt */
} ctl_ca_paths;

void ctl_ca_paths_for(const char *dir, ctl_ca_paths *p);
/* Creates dir (0700), the CA key and certificate, and the controller's
 * client key and certificate carrying CM_PKI_URI_CONTROLLER.  Existing
 * files are reused, never overwritten. */
int ctl_init_ca(const char *dir, const char *ca_cn, const char *controller_cn, int days,
                char *err, size_t errlen);
/* Signs a relay CSR with the CA in dir: SANs from hosts (DNS or IP), URI
 * identity CM_PKI_URI_RELAY, serverAuth.  Returns the PEM certificate. */
int ctl_sign_csr(const char *dir, const char *csr_pem, const cm_strlist *hosts, int days,
                 char **cert_pem, char *err, size_t errlen);

#endif
