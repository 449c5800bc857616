/*
 * relay.h — the public edge as a library.
 *
 * A relay server owns one public listener (TLS, or plain on loopback or
 * behind a proxy) speaking HTTP/1.1: health and readiness probes, metrics,
 * the admin API and discovery document, and WebSocket upgrades on
 * /relay/{id} that pair two peers and forward their frames untouched.  It
 * owns a second listener, the tunnel port, on which controllers dial in;
 * every admin decision and slot-token check is a call to a controller over
 * that link (tunnel/).  A controller may also be handed in as a connected
 * socket (rly_server_add_controller_fd): that is embedded mode, where
 * cmd/relay starts the reference controller (controller-stub/) on its own
 * thread and links it through a socketpair with the same protocol; this
 * library never starts another layer's parts.
 *
 * The server runs on threads of its own: one control thread (the
 * controller link and the acceptor) and `workers` workers, each with its
 * own libuv loop, owning the connections and sessions handed to it; it
 * never touches the caller's loop.  rly_server_start binds and starts them;
 * rly_server_shutdown (from any thread) stops accepting, closes idle
 * connections, lets live sessions finish for a grace period on every
 * worker, then closes them with 1001 and calls `done` from a relay thread;
 * rly_server_free joins the threads and releases it.
 */
#ifndef RELAY_RELAY_H
#define RELAY_RELAY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "common/common.h"

typedef struct rly_config {
  /* public listener */
  char *listen;               /* "127.0.0.1:8443" */
  char *tls_cert, *tls_key;   /* PEM; with neither, see dev_cert_dir / plain */
  char *dev_cert_dir;         /* make (once) and use a self-signed P-256 cert here */
  bool plain;                 /* no TLS on the public listener */
  bool allow_public_plain;    /* plain on a non-loopback address (behind a proxy) */
  char *client_ca;            /* request client certificates verified by this CA */
  char *alpn;                 /* offered ALPN list, default "http/1.1" */
  char *public_url;           /* base URL peers use; default from listen */
  char *node_id;              /* default: hostname */
  char *region;               /* placement label told to controllers (Hello); NULL: none */
  char *workers;              /* "auto" (the CPUs this process may use) or 1..256 */
  char *accept;               /* "handoff" (one acceptor; default) or "reuseport" */
  bool proxy_protocol;        /* a PROXY v1/v2 header from every trusted proxy */
  cm_strlist trusted_proxies; /* CIDRs that may name the client */

  /* HTTP */
  long long header_timeout_ms;
  long long idle_timeout_ms;
  long long max_connections;
  long long max_header_bytes, max_headers, max_body, max_url;
  long long shutdown_grace_ms;

  /* controller link */
  char *tunnel_listen;            /* "0.0.0.0:8444" */
  char *tunnel_cert, *tunnel_key; /* the relay's enrolled certificate */
  char *controller_ca;            /* pinned controller CA; unset: embedded controller */
  char *controller_name;          /* identity the controller cert must carry */
  long long call_timeout_ms;
  long long ping_interval_ms;
  long long ping_timeout_ms;
  /* embedded controller (read by cmd/relay, which starts it; unused here) */
  char *state_dir; /* its registry */

  /* admin API and OIDC */
  bool no_auth;
  bool allow_public_no_auth;
  char *oidc_issuer;
  char *oidc_audience;
  char *oidc_ca; /* CA bundle for the IdP; default system store */
  char *client_id_hint;
  long long jwt_leeway_ms;
  long long jwks_refresh_ms;
  long long jwks_min_refetch_ms;
  cm_strlist cors_origins;
  long long max_ttl_s, max_peer_wait_s; /* embedded controller's maxima (cmd/relay) */
  cm_strlist target_allow;              /* embedded controller: where target sessions may go */

  /* data plane */
  long long max_message;  /* per message, bytes */
  long long hold_bytes;   /* data a lone peer may send early */
  long long peer_wait_ms; /* lone-peer wait when the controller leaves it 0 */
  long long ws_high_watermark;
  long long ping_idle_ms; /* 0: no server pings */
  long long max_sessions;
  long long max_conns_per_ip;

  char *metrics; /* "public" | "loopback" | "off" */
  char *log_level;
  char *pid_file; /* read by cmd/relay: `relay reload` signals the pid in it */
} rly_config;

typedef struct rly_server rly_server;

/* Validates cfg and builds the server (no sockets, no threads yet).  The
 * config is borrowed and must outlive the server. */
rly_server *rly_server_new(const rly_config *cfg, char *err, size_t errlen);
/* Before start: adopts a connected socket as a controller link named
 * `name` (plain: the socket is trusted, e.g. one end of a socketpair to an
 * in-process controller).  The relay owns fd from here on, also on
 * failure. */
int rly_server_add_controller_fd(rly_server *s, int fd, const char *name, char *err, size_t errlen);
/* Binds the listeners and starts the threads.  With a controller socket
 * added before, it waits (at most 10 s) until that link is up before
 * accepting.  On failure, rly_server_free still cleans up. */
int rly_server_start(rly_server *s, char *err, size_t errlen);
/* From any thread: stops accepting and drains (see above); `done` (may be
 * NULL) runs once, on a relay thread, or at once if nothing was started. */
void rly_server_shutdown(rly_server *s, void (*done)(void *ud), void *ud);
/* Once started (any thread): new settings and certificates (SIGHUP).
 * Every certificate and key is loaded first; a failure changes nothing,
 * names the setting in err, and cfg stays the caller's.  On success the
 * server owns cfg (freed with cfg_free once replaced, or at free) and new
 * connections use it; open sessions and controller links are untouched.
 * The caller decides which settings may change at all (the listeners,
 * workers and OIDC verifier are built once). */
int rly_server_reload(rly_server *s, rly_config *cfg, void (*cfg_free)(rly_config *cfg), char *err,
                      size_t errlen);
/* Shuts down (if that was not asked for, waiting for the drain), joins the
 * threads and frees. */
void rly_server_free(rly_server *s);

/* Ports actually bound (useful with port 0). */
int rly_server_public_port(const rly_server *s);
int rly_server_tunnel_port(const rly_server *s);

/* Version line pieces for `relay version`. */
const char *rly_version(void);
const char *rly_git_commit(void);
const char *rly_build_date(void);

/* Enrolment helpers for `relay gen-csr`: make or reuse the tunnel key in
 * key_path (0600, never overwritten; a corrupt key is an error) and write a
 * PEM CSR for node_id into *csr_pem (heap). */
int rly_gen_csr(const char *key_path, const char *node_id, char **csr_pem, bool *created, char *err,
                size_t errlen);

/* Makes (once) a self-signed ECDSA P-256 development certificate for
 * localhost/127.0.0.1/::1 in dir (key 0600) and returns the file paths
 * (cert_path/key_path must hold PATH_MAX bytes).  Reuses existing files. */
int rly_dev_cert_ensure(const char *dir, char *cert_path, char *key_path, char *err, size_t errlen);

#endif
