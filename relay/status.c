/*
 * status.c — the relay's own figures beside its traffic counters, for
 * /metrics and the dashboard: the build and node, the limits in force,
 * and the controllers linked, one labelled sample each.
 */
#include "relay/edge.h"

#include <string.h>

#define MAX_CONTROLLERS 16

/* The text format's label escapes: backslash, double quote, line feed. */
static void label_value(cm_buf *b, const char *v) {
  for (const char *p = v; *p; p++) {
    if (*p == '\\' || *p == '"')
      cm_buf_printf(b, "\\%c", *p);
    else if (*p == '\n')
      cm_buf_printf(b, "\\n");
    else
      cm_buf_append(b, p, 1);
  }
}

void rly_metric_labeled(cm_buf *b, const char *name, const char *help, bool counter,
                        const char *const (*labels)[2], size_t nlabels, uint64_t v) {
  if (help)
    cm_buf_printf(b, "# HELP relay_%s %s\n# TYPE relay_%s %s\n", name, help, name,
                  counter ? "counter" : "gauge");
  cm_buf_printf(b, "relay_%s{", name);
  for (size_t i = 0; i < nlabels; i++) {
    cm_buf_printf(b, "%s%s=\"", i ? "," : "", labels[i][0]);
    label_value(b, labels[i][1]);
    cm_buf_append(b, "\"", 1);
  }
  cm_buf_printf(b, "} %llu\n", (unsigned long long)v);
}

static void build_info(rly_server *s, cm_buf *b) {
  const char *const labels[][2] = {
      {"version", rly_version()}, {"commit", rly_git_commit()}, {"node", s->node_id}};
  rly_metric_labeled(b, "build_info", "This relay's version, commit and node id.", false, labels,
                     CM_ARRAY_LEN(labels), 1);
}

static void limits(rly_server *s, cm_buf *b) {
  const rly_config *cfg = s->cfg;
#define G(name, help, v) rly_metric(b, "limit_" name, help, false, (uint64_t)(v))
  G("max_connections", "Public connections allowed at once (--max-connections).",
    cfg->max_connections);
  G("max_sessions", "Sessions allowed at once (--max-sessions).", s->max_sessions);
  G("max_conns_per_ip", "Connections one client address may hold; 0: no limit.",
    cfg->max_conns_per_ip);
  G("max_message_bytes", "Largest message relayed (the controller may lower it).", s->max_message);
  G("hold_bytes", "Data a lone peer may send before its counterpart arrives.", cfg->hold_bytes);
  G("peer_wait_seconds", "How long a lone peer waits when the controller does not say.",
    s->peer_wait_ms / 1000);
#undef G
}

/* Links per controller, by name (certificate CN and fingerprint, or
 * "embedded"). */
static void controllers(rly_server *s, cm_buf *b) {
  static const char help[] = "Controllers with a link up (value: 1), by name.";
  char names[MAX_CONTROLLERS][TUN_CONTROLLER_NAME_MAX];
  size_t n = s->tun ? tun_relay_controllers(s->tun, names, MAX_CONTROLLERS) : 0;
  if (n == 0) {
    cm_buf_printf(b, "# HELP relay_controller_link %s\n# TYPE relay_controller_link gauge\n", help);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    const char *const labels[][2] = {{"controller", names[i]}};
    rly_metric_labeled(b, "controller_link", i ? NULL : help, false, labels, 1, 1);
  }
}

void rly_status_metrics_text(rly_server *s, cm_buf *b) {
  build_info(s, b);
  limits(s, b);
  controllers(s, b);
}
