/*
 * testrelay.h — a relay server in the test's own process (on the relay's
 * own threads), for client tests: loopback, an ephemeral port, the
 * embedded controller composed as cmd/relay does, --no-auth, plain or TLS
 * with a given certificate.  Test code only.
 */
#ifndef RELAY_TESTS_TESTRELAY_H
#define RELAY_TESTS_TESTRELAY_H

#include <cmocka.h>
#include <string.h>

#include "controller-stub/controller.h"
#include "relay/relay.h"
#include "testloop.h"
#include "tunnel/tunnel.h"

typedef struct tr_relay {
  rly_server *srv;
  ctl_embedded *ctl;
  rly_config cfg; /* the server keeps a pointer to it */
  int port;
} tr_relay;

/* cert/key NULL: plain.  hold_bytes 0: 64 KiB. */
static void tr_start(tr_relay *r, const char *cert, const char *key, long long hold_bytes) {
  r->cfg = (rly_config){.listen = (char *)"127.0.0.1:0",
                        .plain = cert == NULL,
                        .tls_cert = (char *)cert,
                        .tls_key = (char *)key,
                        .no_auth = true,
                        .node_id = (char *)"relay-test",
                        .alpn = (char *)"http/1.1",
                        .header_timeout_ms = 10000,
                        .idle_timeout_ms = 10000,
                        .max_connections = 1000,
                        .max_header_bytes = 16384,
                        .max_headers = 64,
                        .max_body = 65536,
                        .max_url = 8192,
                        .call_timeout_ms = 5000,
                        .ping_interval_ms = 10000,
                        .ping_timeout_ms = 30000,
                        .max_ttl_s = 86400,
                        .max_peer_wait_s = 3600,
                        .peer_wait_ms = 120000,
                        .max_message = 64 << 20,
                        .hold_bytes = hold_bytes ? hold_bytes : 1 << 16,
                        .ws_high_watermark = 1 << 18,
                        .max_sessions = 1000,
                        .metrics = (char *)"off"};
  char err[256];
  r->srv = rly_server_new(&r->cfg, err, sizeof err);
  if (!r->srv) fail_msg("rly_server_new: %s", err);
  int fds[2];
  if (tun_socketpair(fds) != 0) fail_msg("socketpair");
  ctl_config cc = {.accept_unauthenticated = true};
  if (!(r->ctl = ctl_embedded_start(&cc, fds[1], err, sizeof err)))
    fail_msg("ctl_embedded_start: %s", err);
  if (rly_server_add_controller_fd(r->srv, fds[0], "embedded", err, sizeof err) != 0)
    fail_msg("rly_server_add_controller_fd: %s", err);
  if (rly_server_start(r->srv, err, sizeof err) != 0) fail_msg("rly_server_start: %s", err);
  r->port = rly_server_public_port(r->srv);
}

static void tr_stop(tr_relay *r) {
  rly_server_free(r->srv); /* shuts down, waits for the drain, joins */
  r->srv = NULL;
  ctl_embedded_stop(r->ctl);
  r->ctl = NULL;
}

#endif
