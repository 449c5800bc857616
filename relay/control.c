/*
 * control.c — the relay's side of its controller: owns the tun_relay, and
 * either listens for remote controllers (mutual TLS on the tunnel port) or,
 * with no controller CA configured, starts the reference controller on its
 * own thread and links it through a socketpair (embedded mode: the same
 * HTTP/2 + gRPC path, no shortcut).  Commands from controllers are handed
 * to the data plane; /readyz reports whether any link is up.
 */
#include "relay/edge.h"

#include "controller-stub/controller.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

static void on_command(void *ud, const char *controller, const Relay__V1__ControllerCommand *cmd) {
  rly_server *s = ud;
  rly_dp_on_command(s, controller, cmd);
}

static void on_links(void *ud, size_t links) {
  rly_server *s = ud;
  s->links = links;
}

static void on_link_up(void *ud, const char *controller) { rly_dp_on_link_up(ud, controller); }

static const tun_relay_cbs g_cbs = {on_command, on_links, on_link_up};

static int start_embedded(rly_server *s, char *err, size_t errlen) {
  int fds[2];
  int rc = tun_socketpair(fds);
  if (rc != 0) {
    snprintf(err, errlen, "socketpair: %s", strerror(-rc));
    return rc;
  }
  const rly_config *cfg = s->cfg;
  ctl_config cc = {.state_dir = cfg->state_dir,
                   .max_ttl_s = (uint32_t)cfg->max_ttl_s,
                   .max_peer_wait_s = (uint32_t)cfg->max_peer_wait_s,
                   .default_peer_wait_s = (uint32_t)(cfg->peer_wait_ms / 1000),
                   .accept_unauthenticated = cfg->no_auth,
                   .target_allow = &cfg->target_allow,
                   .ping_interval_ms = (uint32_t)cfg->ping_interval_ms,
                   .ping_timeout_ms = (uint32_t)cfg->ping_timeout_ms};
  s->embedded = ctl_embedded_start(&cc, fds[1], err, errlen);
  if (!s->embedded) {
    close(fds[0]);
    close(fds[1]);
    return -EINVAL;
  }
  rc = tun_relay_add_fd(s->tun, fds[0], "embedded");
  if (rc != 0) {
    snprintf(err, errlen, "in-process link: %s", uv_strerror(rc));
    return rc;
  }
  cm_log(CM_LOG_INFO, "relay", "embedded controller started",
         CM_S("state_dir", cfg->state_dir ? cfg->state_dir : "(memory)"));
  return 0;
}

int rly_control_start(rly_server *s, char *err, size_t errlen) {
  const rly_config *cfg = s->cfg;
  bool remote = cfg->controller_ca && *cfg->controller_ca;
  tun_relay_config tc = {.link = {.ping_interval_ms = (uint32_t)cfg->ping_interval_ms,
                                  .ping_timeout_ms = (uint32_t)cfg->ping_timeout_ms},
                         .node_id = s->node_id,
                         .version = rly_version(),
                         .public_url = s->public_url,
                         .default_timeout_ms = (uint32_t)cfg->call_timeout_ms};
  if (remote) {
    tc.cert_file = cfg->tunnel_cert;
    tc.key_file = cfg->tunnel_key;
    tc.ca_file = cfg->controller_ca;
    tc.controller_uri = cfg->controller_name;
    if (!tc.cert_file || !tc.key_file) {
      snprintf(err, errlen,
               "tunnel-cert/tunnel-key: a remote controller needs the relay's "
               "enrolled certificate (see `relay gen-csr`)");
      return -EINVAL;
    }
  }
  s->tun = tun_relay_new(s->loop, &tc, &g_cbs, s, err, errlen);
  if (!s->tun) return -EINVAL;
  if (remote) return tun_relay_listen(s->tun, cfg->tunnel_listen, err, errlen);
  return start_embedded(s, err, errlen);
}

static void on_tun_closed(void *ud) {
  rly_server *s = ud;
  ctl_embedded_stop(s->embedded);
  s->embedded = NULL;
  void (*done)(void *) = s->control_done;
  s->control_done = NULL;
  if (done) done(s);
}

void rly_control_stop(rly_server *s, void (*done)(void *ud)) {
  s->control_done = done;
  if (!s->tun) {
    if (done) done(s);
    return;
  }
  tun_relay_close(s->tun, on_tun_closed, s);
}

void rly_control_free(rly_server *s) {
  tun_relay_free(s->tun);
  s->tun = NULL;
}

static void on_wake(uv_timer_t *t) { CM_UNUSED(t); }

/* Runs the loop (before the caller's uv_run) until the in-process link is
 * up: the controller thread is already running, so this takes a few ms. */
int rly_control_wait_embedded(rly_server *s, char *err, size_t errlen) {
  if (!s->embedded) return 0;
  uv_timer_t t;
  uv_timer_init(s->loop, &t);
  uv_timer_start(&t, on_wake, 10, 10);
  uint64_t deadline = cm_now_mono_ms() + 10000;
  while (s->links == 0 && cm_now_mono_ms() < deadline)
    uv_run(s->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(s->loop, UV_RUN_NOWAIT);
  if (s->links == 0) {
    snprintf(err, errlen, "the embedded controller did not link within 10 s");
    return -ETIMEDOUT;
  }
  return 0;
}
