/*
 * control.h — (private to relay/) the controller link, shared by every
 * worker.
 *
 * One control thread owns the tun_relay (nghttp2 is single-threaded: every
 * link, call, event and command of the relay runs there), the OIDC
 * verifier and the acceptor.  Workers never touch them: they post a call,
 * a token check or an event to the control thread's mailbox, and the
 * answer comes back as a message on their own loop, where the callback
 * runs.  Commands go the other way: a Kick to the session's home worker,
 * a new link's re-announcement to every worker; Drain and Limits only set
 * the edge's shared figures.  Every queue is bounded and says so at the
 * bound — a call that cannot be queued fails at once with UNAVAILABLE (a
 * 503 for the client), an event is dropped and counted — so a stalled
 * worker or control thread never blocks anyone else.  The payloads that
 * cross (packed requests and answers, which may hold slot tokens) are in
 * memory wiped when freed.
 */
#ifndef RELAY_CONTROL_H
#define RELAY_CONTROL_H

#include "common/common.h"
#include "relay/auth.h"
#include "relay/edge.h"
#include "relay/mailbox.h"
#include "tunnel/tunnel.h"

/* What the control thread asks of a worker, run on that worker's loop. */
typedef struct rly_ctl_hooks {
  void (*on_kick)(rly_wctx *w, const char *session_id, uint16_t code, const char *reason);
  void (*on_link_up)(rly_wctx *w, const char *controller);
} rly_ctl_hooks;

/* ---- the control thread's side ---------------------------------------------- */

rly_control *rly_control_new(rly_edge *e, uv_loop_t *loop, const rly_ctl_hooks *hooks, char *err,
                             size_t errlen);
/* Starts the tunnel listener (with a controller CA) and the OIDC fetches. */
int rly_control_start(rly_control *c, char *err, size_t errlen);
/* Adopts a connected socket as a plain controller link (embedded mode). */
int rly_control_add_fd(rly_control *c, int fd, const char *name, char *err, size_t errlen);
int rly_control_port(const rly_control *c);
/* Live links; from any thread. */
size_t rly_control_links(const rly_control *c);
/* A reload: the tunnel listener's TLS context from cfg's tunnel-cert,
 * tunnel-key and controller-ca, built on any thread to check that they
 * load (*out NULL and 0 in embedded mode); rly_control_set_tls (control
 * thread) takes it over for the controller connections accepted next. */
int rly_control_tls_new(const rly_config *cfg, cm_tls_ctx **out, char *err, size_t errlen);
void rly_control_set_tls(rly_control *c, cm_tls_ctx *tls);
/* A reload changed the OIDC settings: a new verifier from cfg (it keeps
 * copies, not pointers into cfg) takes the checks from now on and fetches
 * its discovery document and keys; the old one stops.  Control thread. */
int rly_control_replace_auth(rly_control *c, const rly_config *cfg, char *err, size_t errlen);
/* Shutdown: no more controller connections, and every link is told the
 * relay is leaving (tun_relay_leave); the links stay up for the drain. */
void rly_control_leave(rly_control *c);
/* Closes every link, the verifier and the mailbox; calls in flight fail
 * with UNAVAILABLE (their answers are posted before done runs). */
void rly_control_close(rly_control *c, void (*done)(void *ud), void *ud);
void rly_control_free(rly_control *c);
/* Posts m (a message of the composition's) to the control thread. */
bool rly_control_post(rly_control *c, rly_msg *m, bool reserved);

/* ---- from a worker (each on its own loop) ------------------------------------- */

/* A unary call, on `controller`'s links only (NULL: any, with the replays
 * tun_relay_call makes).  cb runs on w's loop exactly once unless
 * cancelled.  NULL when it fails at once (the control thread's queue or
 * the worker's calls in flight are at their bound): cb is not called and
 * the caller answers as for no link (UNAVAILABLE). */
typedef struct rly_ctl_call rly_ctl_call;
rly_ctl_call *rly_ctl_call_start(rly_wctx *w, const char *controller, const char *path,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc, tun_call_cb cb,
                                 void *ud);
void rly_ctl_call_cancel(rly_ctl_call *c);

/* A bearer token check by the verifier.  cb runs on w's loop, later, never
 * inside this call.  NULL when it cannot be queued (cb is not called; the
 * caller answers 503). */
typedef struct rly_ctl_auth rly_ctl_auth;
rly_ctl_auth *rly_ctl_auth_check(rly_wctx *w, const char *token, rly_auth_cb cb, void *ud);
void rly_ctl_auth_cancel(rly_ctl_auth *a);
/* Whether admin requests are authenticated (false with --no-auth). */
bool rly_ctl_auth_enabled(const rly_control *c);
/* The swsrs-config document as last loaded; false until it is known. */
bool rly_ctl_discovery(rly_control *c, cm_buf *out);

/* The controller link's figures (/metrics, /readyz), as the control
 * thread sees them now: cb runs on w's loop later.  NULL when it cannot be
 * queued. */
typedef struct rly_link_figures {
  tun_relay_stats st;
  size_t links, answering; /* up; up and not overdue (a hung controller's are not) */
} rly_link_figures;
typedef struct rly_ctl_stats rly_ctl_stats;
rly_ctl_stats *rly_ctl_stats_get(rly_wctx *w, void (*cb)(void *ud, const rly_link_figures *f),
                                 void *ud);
void rly_ctl_stats_cancel(rly_ctl_stats *s);

/* Sends an event on `controller`'s Events stream; dropped (and counted)
 * when the queue is full, as tun_relay_send_event does past its bound. */
void rly_ctl_event(rly_wctx *w, const char *controller, const Relay__V1__RelayEvent *ev);
/* The distinct controllers linked, sorted (as tun_relay_controllers), as
 * of the last change of links: at most max.  Any thread. */
size_t rly_ctl_controllers(rly_control *c, char (*names)[TUN_CONTROLLER_NAME_MAX], size_t max);

#endif
