/*
 * server.c — the edge composed: the shared state, the control thread (the
 * controller link and the acceptor), and the workers.  This file owns the
 * threads and their order of life; each part's work is in its own module.
 *
 *   start:    bind; build every part on this thread; start the workers'
 *             threads and the control thread; wait for a controller handed
 *             in before start; listen and start accepting.
 *   shutdown: (any thread) the control thread stops accepting and tells
 *             every worker to drain; once all have drained it closes the
 *             controller link (calls in flight fail and their answers go
 *             back first), then tells the workers to exit; the control
 *             loop ends and `done` runs.
 */
#include "relay/control.h"
#include "relay/dataplane.h"
#include "relay/edge.h"
#include "relay/listener.h"
#include "relay/mailbox.h"
#include "relay/reload.h"
#include "relay/routes.h"
#include "relay/target.h"
#include "relay/worker.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_WORKERS  256
#define LINK_WAIT_MS 10000
#define LINK_POLL_MS 5

struct rly_server {
  rly_edge edge;
  uv_loop_t ctl_loop;
  uv_thread_t ctl_thread;
  bool ctl_loop_ok, ctl_thread_ok, started;
  rly_listener listener;    /* handoff: the one acceptor, on the control thread */
  rly_listener *per_worker; /* reuseport: one per worker, on its loop */
  bool reuseport;
  rly_router *router;
  rly_worker *workers[MAX_WORKERS];
  rly_wctx *wctx[MAX_WORKERS];
  /* A successor on inherited sockets (socket activation) with remote
   * controllers accepts once a controller link is up: until then the old
   * relay, or the socket's queue, has its connections (a handover). */
  bool wait_link, link_poll_on;
  uv_timer_t link_poll;
  int pending_fd; /* a controller socket handed in before start, or -1 */
  char pending_name[64];
  /* shutdown, on the control thread */
  atomic_bool shutdown_asked;
  bool closing_link;
  void (*done)(void *);
  void *done_ud;
};

/* ---- configuration ------------------------------------------------------------ */

/* The CPUs this process may run on (its affinity mask), not the machine's:
 * a relay pinned to two CPUs wants two workers. */
static size_t cpus_allowed(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return (size_t)CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (size_t)n : 1;
}

static int parse_workers(const char *v, size_t *n, char *err, size_t errlen) {
  if (!v || !*v || strcmp(v, "auto") == 0) {
    *n = CM_MIN(cpus_allowed(), (size_t)MAX_WORKERS);
    return 0;
  }
  char *end;
  long k = strtol(v, &end, 10);
  if (*end || k < 1 || k > MAX_WORKERS) {
    snprintf(err, errlen, "workers: want auto or 1..%d, not \"%s\"", MAX_WORKERS, v);
    return -EINVAL;
  }
  *n = (size_t)k;
  return 0;
}

static int setup_tls(rly_edge *e, char *err, size_t errlen) {
  const rly_config *cfg = e->cfg;
  char host[256];
  int port;
  if (cm_parse_hostport(cfg->listen, "0.0.0.0", host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "listen: invalid address \"%s\"", cfg->listen);
    return -EINVAL;
  }
  if (cfg->plain) {
    if (!cm_host_is_loopback(host) && !cfg->allow_public_plain) {
      snprintf(err, errlen,
               "plain: refusing plain HTTP on non-loopback %s; put TLS in front and pass "
               "--allow-public-plain",
               cfg->listen);
      return -EINVAL;
    }
    return 0;
  }
  cm_tls_ctx *tls;
  int rc = rly_public_tls_new(cfg, &tls, err, errlen);
  atomic_init(&e->tls, tls);
  return rc;
}

/* --no-auth opens the admin API to anyone who can connect: loopback only,
 * unless the operator says otherwise in so many words. */
static int check_no_auth(const rly_config *cfg, char *err, size_t errlen) {
  if (!cfg->no_auth) return 0;
  char host[256];
  int port;
  if (cm_parse_hostport(cfg->listen, "0.0.0.0", host, sizeof host, &port) != 0 ||
      (!cm_host_is_loopback(host) && !cfg->allow_public_no_auth)) {
    snprintf(err, errlen,
             "no-auth: refusing an unauthenticated admin API on non-loopback %s "
             "(pass --allow-public-no-auth if you really mean it)",
             cfg->listen);
    return -EINVAL;
  }
  cm_log(CM_LOG_WARN, "relay", "admin API has NO authentication (--no-auth)",
         CM_S("listen", cfg->listen));
  return 0;
}

/* --trusted-proxies and --proxy-protocol: the header is only believed from
 * a list, so one without the other is a mistake to report. */
static int setup_proxies(rly_edge *e, char *err, size_t errlen) {
  const cm_strlist *l = &e->cfg->trusted_proxies;
  const char *bad = NULL;
  if (rly_cidrs_parse((const char *const *)l->v, l->n, &e->trusted, &bad) != 0) {
    snprintf(err, errlen,
             "trusted-proxies: \"%s\" is not an address or CIDR block (host bits zero)",
             bad ? bad : "?");
    return -EINVAL;
  }
  e->proxy_protocol = e->cfg->proxy_protocol;
  if (e->proxy_protocol && e->trusted.n == 0) {
    snprintf(err, errlen, "proxy-protocol: needs --trusted-proxies (whose headers to believe)");
    return -EINVAL;
  }
  return 0;
}

static void edge_init(rly_edge *e, const rly_config *cfg) {
  e->cfg = cfg;
  rly_http_limits_default(&e->limits);
  if (cfg->max_header_bytes) e->limits.max_header_bytes = (size_t)cfg->max_header_bytes;
  if (cfg->max_headers) e->limits.max_headers = (size_t)cfg->max_headers;
  if (cfg->max_body) e->limits.max_body = (size_t)cfg->max_body;
  if (cfg->max_url) e->limits.max_url = (size_t)cfg->max_url;
  snprintf(e->server_header, sizeof e->server_header, "relay/%s", rly_version());
  if (cfg->node_id && *cfg->node_id) {
    snprintf(e->node_id, sizeof e->node_id, "%s", cfg->node_id);
  } else {
    size_t n = sizeof e->node_id;
    if (uv_os_gethostname(e->node_id, &n) != 0) snprintf(e->node_id, sizeof e->node_id, "relay");
  }
  if (cfg->public_url && *cfg->public_url) {
    snprintf(e->public_url, sizeof e->public_url, "%s", cfg->public_url);
    size_t ul = strlen(e->public_url);
    while (ul > 0 && e->public_url[ul - 1] == '/')
      e->public_url[--ul] = '\0';
  }
  atomic_init(&e->live, 0);
  atomic_init(&e->sessions, 0);
  atomic_init(&e->draining, false);
  atomic_init(&e->drain_deadline_ms, 0);
  atomic_init(&e->max_message, cfg->max_message ? (uint64_t)cfg->max_message : 64u << 20);
  atomic_init(&e->max_sessions, (uint64_t)cfg->max_sessions);
  atomic_init(&e->peer_wait_ms, cfg->peer_wait_ms > 0 ? (uint64_t)cfg->peer_wait_ms : 120000);
  uv_mutex_init(&e->ip_lock);
}

/* ---- lifecycle ------------------------------------------------------------------ */

static const rly_ctl_hooks g_hooks = {rly_dp_on_kick, rly_dp_on_link_up};

rly_server *rly_server_new(const rly_config *cfg, char *err, size_t errlen) {
  rly_server *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  s->pending_fd = -1;
  s->listener.fd = -1;
  rly_edge *e = &s->edge;
  edge_init(e, cfg);
  e->workers = s->wctx;
  e->start_target = rly_target_start;
  int rc = parse_workers(cfg->workers, &e->nworkers, err, errlen);
  if (rc == 0 && cfg->accept && strcmp(cfg->accept, "reuseport") == 0) {
    s->reuseport = true;
    if (!(s->per_worker = calloc(e->nworkers, sizeof *s->per_worker))) rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < e->nworkers; i++)
      s->per_worker[i].fd = -1;
  } else if (rc == 0 && cfg->accept && *cfg->accept && strcmp(cfg->accept, "handoff") != 0) {
    snprintf(err, errlen, "accept: want handoff or reuseport, not \"%s\"", cfg->accept);
    rc = -EINVAL;
  }
  if (rc == 0) rc = setup_proxies(e, err, errlen);
  if (rc == 0) rc = setup_tls(e, err, errlen);
  if (rc == 0) rc = check_no_auth(cfg, err, errlen);
  if (rc == 0 && (rc = uv_loop_init(&s->ctl_loop)) != 0)
    snprintf(err, errlen, "loop: %s", uv_strerror(rc));
  if (rc == 0) s->ctl_loop_ok = true;
  if (rc == 0 && (rc = rly_reload_init(e, &s->ctl_loop)) != 0)
    snprintf(err, errlen, "reload: %s", uv_strerror(rc));
  if (rc == 0 && !(e->ctl = rly_control_new(e, &s->ctl_loop, &g_hooks, err, errlen))) rc = -EINVAL;
  if (rc != 0) {
    rly_server_free(s);
    return NULL;
  }
  return s;
}

int rly_server_add_controller_fd(rly_server *s, int fd, const char *name, char *err,
                                 size_t errlen) {
  if (s->started || s->pending_fd >= 0) {
    close(fd);
    snprintf(err, errlen, "one controller socket, before start");
    return -EBUSY;
  }
  s->pending_fd = fd;
  snprintf(s->pending_name, sizeof s->pending_name, "%s", name);
  return 0;
}

int rly_server_public_port(const rly_server *s) {
  return rly_listener_port(s->reuseport ? &s->per_worker[0] : &s->listener);
}
int rly_server_tunnel_port(const rly_server *s) { return rly_control_port(s->edge.ctl); }

/* Without --public-url, session URLs name the address we bound (with the
 * real port when the listener asked for port 0).  A wildcard address is no
 * URL anyone can dial: say so. */
static void default_public_url(rly_server *s) {
  rly_edge *e = &s->edge;
  if (e->public_url[0]) return;
  char host[256];
  int port;
  if (cm_parse_hostport(e->cfg->listen, "0.0.0.0", host, sizeof host, &port) != 0) return;
  bool v6 = strchr(host, ':') != NULL;
  snprintf(e->public_url, sizeof e->public_url, "%s://%s%s%s:%d", e->tls ? "wss" : "ws",
           v6 ? "[" : "", host, v6 ? "]" : "", rly_server_public_port(s));
  if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
    cm_log(CM_LOG_WARN, "relay", "no --public-url: session URLs will name a wildcard address",
           CM_S("public_url", e->public_url));
}

static void on_worker_drained(void *ud);

static int build_workers(rly_server *s, char *err, size_t errlen) {
  size_t n;
  const rly_route_def *defs = rly_routes(&n);
  if (!(s->router = rly_router_new(defs, n))) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  for (size_t i = 0; i < s->edge.nworkers; i++) {
    s->workers[i] = rly_worker_new(&s->edge, i, s->router, on_worker_drained, s, err, errlen);
    if (!s->workers[i]) return -ENOMEM;
    s->wctx[i] = rly_worker_ctx(s->workers[i]);
  }
  return 0;
}

static void control_main(void *arg) {
  rly_server *s = arg;
  pthread_setname_np(pthread_self(), "relay-ctl");
  uv_run(&s->ctl_loop, UV_RUN_DEFAULT);
  cm_log(CM_LOG_INFO, "relay", "shutdown complete");
  if (s->done) s->done(s->done_ud);
}

typedef struct server_msg {
  rly_msg msg;
  rly_server *s;
} server_msg;

static bool post_control(rly_server *s, void (*run)(rly_msg *m)) {
  server_msg *k = calloc(1, sizeof *k);
  if (!k) return false;
  k->s = s;
  k->msg.run = run;
  if (rly_control_post(s->edge.ctl, &k->msg, true)) return true;
  free(k);
  return false;
}

static void accept_now(rly_server *s) {
  int rc = rly_listener_start(&s->listener, &s->ctl_loop);
  if (rc != 0) cm_log(CM_LOG_ERROR, "relay", "cannot accept", CM_S("error", uv_strerror(rc)));
}

static void stop_link_poll(rly_server *s) {
  if (!s->link_poll_on) return;
  s->link_poll_on = false;
  uv_close((uv_handle_t *)&s->link_poll, NULL);
}

static void on_link_poll(uv_timer_t *t) {
  rly_server *s = t->data;
  if (rly_control_links(s->edge.ctl) == 0) return;
  stop_link_poll(s);
  cm_log(CM_LOG_INFO, "relay", "controller link up: accepting");
  accept_now(s);
}

static void run_start_accepting(rly_msg *m) {
  rly_server *s = ((server_msg *)m)->s;
  free(m);
  if (!s->wait_link || rly_control_links(s->edge.ctl) > 0) {
    accept_now(s);
    return;
  }
  cm_log(CM_LOG_INFO, "relay", "inherited sockets: accepting once a controller link is up");
  uv_timer_init(&s->ctl_loop, &s->link_poll);
  s->link_poll.data = s;
  s->link_poll_on = true;
  uv_timer_start(&s->link_poll, on_link_poll, LINK_POLL_MS, LINK_POLL_MS);
}

/* reuseport: a worker starts or stops its own listener, on its loop. */
typedef struct listener_msg {
  rly_msg msg;
  rly_listener *l;
} listener_msg;

static void run_worker_listen(rly_msg *m) {
  listener_msg *k = (listener_msg *)m;
  int rc = rly_listener_start(k->l, k->l->own->loop);
  if (rc != 0) cm_log(CM_LOG_ERROR, "relay", "cannot accept", CM_S("error", uv_strerror(rc)));
  free(k);
}

static void run_worker_unlisten(rly_msg *m) {
  listener_msg *k = (listener_msg *)m;
  rly_listener_close(k->l, NULL);
  free(k);
}

static bool post_listener(rly_listener *l, void (*run)(rly_msg *m)) {
  listener_msg *k = calloc(1, sizeof *k);
  if (!k) return false;
  k->l = l;
  k->msg.run = run;
  if (rly_mailbox_post(l->own->inbox, &k->msg, true)) return true;
  free(k);
  return false;
}

static int bind_listeners(rly_server *s, char *err, size_t errlen) {
  rly_edge *e = &s->edge;
  if (!s->reuseport) return rly_listener_bind(&s->listener, e, NULL, -1, err, errlen);
  int rc = 0, port = -1;
  for (size_t i = 0; rc == 0 && i < e->nworkers; i++) {
    rc = rly_listener_bind(&s->per_worker[i], e, s->wctx[i], port, err, errlen);
    if (rc == 0 && i == 0) port = rly_listener_port(&s->per_worker[0]);
  }
  return rc;
}

static int start_accepting(rly_server *s, char *err, size_t errlen) {
  if (!s->reuseport) {
    int rc = rly_listener_listen(&s->listener, err, errlen);
    if (rc == 0 && !post_control(s, run_start_accepting)) rc = -ENOMEM;
    return rc;
  }
  for (size_t i = 0; i < s->edge.nworkers; i++) {
    int rc = rly_listener_listen(&s->per_worker[i], err, errlen);
    if (rc == 0 && !post_listener(&s->per_worker[i], run_worker_listen)) rc = -ENOMEM;
    if (rc != 0) return rc;
  }
  return 0;
}

/* A controller handed in before start is already running: waiting for its
 * link takes a few ms, and spares the first clients a 503 that is merely
 * start-up. */
static int wait_for_link(rly_server *s, char *err, size_t errlen) {
  for (int waited = 0; rly_control_links(s->edge.ctl) == 0; waited += LINK_POLL_MS) {
    if (waited >= LINK_WAIT_MS) {
      snprintf(err, errlen, "the in-process controller did not link within 10 s");
      return -ETIMEDOUT;
    }
    usleep(LINK_POLL_MS * 1000);
  }
  return 0;
}

int rly_server_start(rly_server *s, char *err, size_t errlen) {
  rly_edge *e = &s->edge;
  int rc = build_workers(s, err, errlen);
  if (rc != 0 || (rc = bind_listeners(s, err, errlen)) != 0) return rc;
  default_public_url(s);
  e->started_ms = cm_now_mono_ms();
  if ((rc = rly_control_start(e->ctl, err, errlen)) != 0) return rc;
  bool linked = s->pending_fd >= 0;
  if (linked) {
    int fd = s->pending_fd;
    s->pending_fd = -1;
    if ((rc = rly_control_add_fd(e->ctl, fd, s->pending_name, err, errlen)) != 0) return rc;
  }
  /* Everything is built: from here on each loop belongs to its thread. */
  s->started = true;
  for (size_t i = 0; i < e->nworkers; i++)
    if ((rc = rly_worker_start(s->workers[i], err, errlen)) != 0) return rc;
  if ((rc = uv_thread_create(&s->ctl_thread, control_main, s)) != 0) {
    snprintf(err, errlen, "control thread: %s", uv_strerror(rc));
    return rc;
  }
  s->ctl_thread_ok = true;
  if (linked && (rc = wait_for_link(s, err, errlen)) != 0) return rc;
  s->wait_link = !linked && !s->reuseport && e->cfg->controller_ca && *e->cfg->controller_ca &&
                 cm_activation_inherited(s->listener.fd);
  if ((rc = start_accepting(s, err, errlen)) != 0) {
    if (rc == -ENOMEM) snprintf(err, errlen, "out of memory");
    return rc;
  }
  cm_log(CM_LOG_INFO, "relay", "listening", CM_S("addr", e->cfg->listen),
         CM_I("port", rly_server_public_port(s)), CM_B("tls", e->tls != NULL),
         CM_S("public_url", e->public_url), CM_S("node_id", e->node_id),
         CM_I("workers", e->nworkers), CM_S("accept", s->reuseport ? "reuseport" : "handoff"));
  return 0;
}

/* ---- shutdown (on the control thread) ----------------------------------------------- */

static void on_control_closed(void *ud) {
  rly_server *s = ud;
  /* Every answer is posted: the workers may go.  The control loop ends
   * once its last handle is closed. */
  for (size_t i = 0; i < s->edge.nworkers; i++)
    rly_worker_exit(s->workers[i]);
}

/* A worker holds nothing any more.  The edge is empty when nothing is
 * live anywhere — a connection moving between workers still counts — and
 * only then may the controller link go. */
static void on_worker_drained(void *ud) {
  rly_server *s = ud;
  if (s->closing_link || atomic_load(&s->edge.live) > 0) return;
  s->closing_link = true;
  rly_control_close(s->edge.ctl, on_control_closed, s);
}

static void run_shutdown(rly_msg *m) {
  rly_server *s = ((server_msg *)m)->s;
  free(m);
  cm_log(CM_LOG_INFO, "relay", "shutting down", CM_I("connections", atomic_load(&s->edge.live)),
         CM_I("workers", s->edge.nworkers), CM_I("grace_ms", s->edge.cfg->shutdown_grace_ms));
  rly_listener_close(&s->listener, NULL);
  stop_link_poll(s);
  rly_reload_stop(&s->edge);
  /* No more controller connections either, and controllers are told: a
   * successor sharing our sockets gets its link now, not after the drain. */
  rly_control_leave(s->edge.ctl);
  for (size_t i = 0; i < s->edge.nworkers; i++) {
    if (s->reuseport) post_listener(&s->per_worker[i], run_worker_unlisten); /* before its drain */
    rly_worker_shutdown(s->workers[i]);
  }
}

int rly_server_reload(rly_server *s, rly_config *cfg, void (*cfg_free)(rly_config *cfg), char *err,
                      size_t errlen) {
  if (!s->ctl_thread_ok || atomic_load(&s->shutdown_asked)) {
    snprintf(err, errlen, "the relay is not running");
    return -EAGAIN;
  }
  return rly_reload(&s->edge, cfg, cfg_free, err, errlen);
}

void rly_server_shutdown(rly_server *s, void (*done)(void *), void *ud) {
  if (atomic_exchange(&s->shutdown_asked, true)) return;
  s->done = done;
  s->done_ud = ud;
  if (!s->ctl_thread_ok || !post_control(s, run_shutdown)) {
    /* Nothing runs (never started, or start failed early). */
    if (done) done(ud);
  }
}

static void close_one(uv_handle_t *h, void *arg) {
  CM_UNUSED(arg);
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void rly_server_free(rly_server *s) {
  if (!s) return;
  if (s->ctl_thread_ok) {
    rly_server_shutdown(s, NULL, NULL); /* if nobody did */
    uv_thread_join(&s->ctl_thread);
  } else if (s->started) {
    /* Workers may run without a control thread (it failed to start):
     * with no controller to drain through, they just exit. */
    for (size_t i = 0; i < s->edge.nworkers; i++)
      if (s->workers[i]) rly_worker_exit(s->workers[i]);
  }
  /* Every thread ends before any mailbox goes: one may post to another
   * until it has. */
  for (size_t i = 0; i < s->edge.nworkers; i++)
    rly_worker_join(s->workers[i]);
  for (size_t i = 0; i < s->edge.nworkers; i++)
    rly_worker_free(s->workers[i]);
  if (s->ctl_loop_ok) {
    if (!s->ctl_thread_ok) {
      /* Built, never run: close what the parts opened. */
      if (s->edge.ctl) rly_control_close(s->edge.ctl, NULL, NULL);
      rly_listener_close(&s->listener, NULL);
      uv_walk(&s->ctl_loop, close_one, NULL);
      uv_run(&s->ctl_loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&s->ctl_loop);
  }
  if (s->pending_fd >= 0) close(s->pending_fd);
  if (s->listener.fd >= 0) close(s->listener.fd);
  for (size_t i = 0; s->per_worker && i < s->edge.nworkers; i++)
    if (s->per_worker[i].fd >= 0) close(s->per_worker[i].fd);
  free(s->per_worker);
  rly_control_free(s->edge.ctl);
  rly_router_free(s->router);
  rly_ip_free(&s->edge);
  rly_cidrs_free(&s->edge.trusted);
  rly_reload_free(&s->edge);
  uv_mutex_destroy(&s->edge.ip_lock);
  cm_tls_ctx_free(s->edge.tls);
  free(s);
}
