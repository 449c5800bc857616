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
 * and the controller's own client certificate; issue-cert gives each
 * further controller a certificate of its own; sign-csr issues a relay's
 * certificate from the CSR `relay gen-csr` printed.
 */
#ifndef RELAY_CONTROLLER_H
#define RELAY_CONTROLLER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"

/* ---- the controller service (service.c) ------------------------------------ */

typedef struct ctl_config {
  const char *state_dir; /* registry files; NULL: memory only */
  /* A shared registry instead (redis://[USER@]HOST[:PORT][/DB]): a fleet
   * of controllers answering for the same sessions.  NULL: the journal. */
  const char *store_url;
  const char *store_password;                 /* secret: AUTH (NULL: none) */
  const char *store_prefix;                   /* Redis key prefix; NULL: "relay:" */
  uint32_t store_timeout_ms;                  /* a Redis command's deadline; 0: 2 s */
  uint32_t store_flush_ms;                    /* relay events written this often; 0: 250 ms */
  const char *name;                           /* this controller, in logs and leases */
  uint32_t default_ttl_s;                     /* 0: 3600 */
  uint32_t default_peer_wait_s;               /* 0: 120 */
  uint32_t max_ttl_s;                         /* 0: 86400 */
  uint32_t max_peer_wait_s;                   /* 0: 3600 */
  uint32_t max_sessions;                      /* 0: 100000 */
  uint64_t max_message_bytes;                 /* handed to relays in decisions; 0: relay default */
  const cm_strlist *relays;                   /* "host:port" of relays to dial (remote mode) */
  const char *relay_server_name;              /* name to verify in relay certs; NULL: host */
  const char *cert_file, *key_file, *ca_file; /* mTLS for dialing relays */
  uint32_t ping_interval_ms, ping_timeout_ms; /* 0: 10 s, 30 s */
  uint32_t backoff_base_ms, backoff_max_ms;   /* 0: 1 s, 60 s */
  uint32_t max_link_age_ms;                   /* replace links this old (new one first);
                                                 0: never */
  uint32_t reap_interval_ms;                  /* 0: 1 s */
  bool accept_unauthenticated;                /* honour AdminRequest.auth_disabled (embedded,
                                                 or a relay run with --no-auth) */
  const cm_strlist *target_allow;             /* where target sessions may go ("CIDR:PORT",
                                                 see cm_netpolicy); NULL or empty: target
                                                 sessions are refused (403) */
} ctl_config;

typedef struct ctl_server ctl_server;

/* Opens the registry (replaying its journal); no sockets yet. */
ctl_server *ctl_server_new(uv_loop_t *loop, const ctl_config *cfg, char *err, size_t errlen);
/* Starts dialing the configured relays and the reaper. */
int ctl_server_start(ctl_server *s, char *err, size_t errlen);
/* Serves a relay over an already-connected socket (in-process transport). */
int ctl_server_add_fd(ctl_server *s, int fd);
size_t ctl_server_links(const ctl_server *s);
/* Closes links and timers; `done` runs on the loop when all are closed. */
void ctl_server_close(ctl_server *s, void (*done)(void *ud), void *ud);
void ctl_server_free(ctl_server *s);

/* Embedded mode: a controller on its own thread and loop, serving the relay
 * at the other end of fd.  Returns once the registry is open (or failed). */
typedef struct ctl_embedded ctl_embedded;
ctl_embedded *ctl_embedded_start(const ctl_config *cfg, int fd, char *err, size_t errlen);
/* Stops the controller thread and waits for it. */
void ctl_embedded_stop(ctl_embedded *e);

/* ---- enrolment (ca.c) ----------------------------------------------------- */

typedef struct ctl_ca_paths {
  char ca_key[4096], ca_cert[4096];   /* dir/ca.key, dir/ca.crt */
  char ctl_key[4096], ctl_cert[4096]; /* dir/controller.key, dir/controller.crt */
} ctl_ca_paths;

void ctl_ca_paths_for(const char *dir, ctl_ca_paths *p);
/* Creates dir (0700), the CA key and certificate, and the controller's
 * client key and certificate carrying CM_PKI_URI_CONTROLLER.  Existing
 * files are reused, never overwritten. */
int ctl_init_ca(const char *dir, const char *ca_cn, const char *controller_cn, int days, char *err,
                size_t errlen);
/* Where ctl_issue_cert put a controller's key and certificate. */
typedef struct ctl_cert_paths {
  char key[4096], cert[4096];
} ctl_cert_paths;

/* Gives a further controller its own identity from the CA in dir (made by
 * ctl_init_ca): a fresh P-256 key out_dir/NAME.key (0600, written
 * atomically) and out_dir/NAME.crt with CN NAME, CM_PKI_URI_CONTROLLER and
 * clientAuth.  Relays group links by certificate (CN and fingerprint), so
 * controllers with certificates of their own are never taken for one.
 * NAME: 1..64 of [A-Za-z0-9._-], starting with a letter or digit.  Refuses
 * (-EEXIST) when either file exists; out_dir NULL means dir (made 0700 if
 * missing).  The certificate never outlives the CA. */
int ctl_issue_cert(const char *dir, const char *name, const char *out_dir, int days,
                   ctl_cert_paths *out, char *err, size_t errlen);
/* Signs a relay CSR with the CA in dir: SANs from hosts (DNS or IP), URI
 * identity CM_PKI_URI_RELAY, serverAuth.  Returns the PEM certificate. */
int ctl_sign_csr(const char *dir, const char *csr_pem, const cm_strlist *hosts, int days,
                 char **cert_pem, char *err, size_t errlen);

#endif
