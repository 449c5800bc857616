/*
 * worker.c — one worker thread and its loop (see worker.h).
 */
#include "relay/worker.h"

#include "relay/control.h"
#include "relay/dataplane.h"
#include "relay/mailbox.h"
#include "relay/preface.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Droppable messages (new connections, commands) waiting for this loop;
 * past it the acceptor tries another worker. */
#define INBOX_CAP 4096

struct rly_worker {
  rly_wctx ctx;
  uv_loop_t loop;
  rly_mailbox inbox;
  rly_conns conns;
  uv_thread_t thread;
  bool loop_ok, inbox_ok, thread_ok;
  uv_timer_t grace;
  int handles; /* to close before the loop ends */
  void (*on_drained)(void *ud);
  void *drained_ud;
};

typedef struct worker_msg {
  rly_msg msg;
  rly_worker *w;
} worker_msg;

static void post_self(rly_worker *w, void (*run)(rly_msg *m)) {
  worker_msg *k = calloc(1, sizeof *k);
  if (!k) return; /* cannot happen at a size this small; see below */
  k->w = w;
  k->msg.run = run;
  /* Reserved: one shutdown and one exit per worker. */
  if (!rly_mailbox_post(&w->inbox, &k->msg, true)) free(k);
}

/* ---- draining ---------------------------------------------------------------- */

static void run_drained(rly_msg *m) {
  worker_msg *k = (worker_msg *)m;
  k->w->on_drained(k->w->drained_ud);
  free(k);
}

/* Each time this worker holds nothing any more during shutdown, it says
 * so; the control thread decides when the whole edge is empty (a
 * connection may still arrive from another worker: see server.c). */
static void maybe_finish(rly_wctx *ctx) {
  rly_worker *w = cm_container_of(ctx, rly_worker, ctx);
  if (!ctx->shutting_down || rly_conns_count(&w->conns) > 0 || rly_dp_peers(ctx->dp) > 0 ||
      rly_prefaces_count(ctx->prefaces) > 0)
    return;
  uv_timer_stop(&w->grace);
  worker_msg *k = calloc(1, sizeof *k);
  if (!k) return;
  k->w = w;
  k->msg.run = run_drained;
  if (!rly_control_post(ctx->edge->ctl, &k->msg, true)) free(k);
}

static void on_grace(uv_timer_t *t) {
  rly_worker *w = t->data;
  cm_log(CM_LOG_WARN, "relay", "grace period over; closing remaining connections",
         CM_I("worker", w->ctx.index), CM_I("connections", rly_conns_count(&w->conns)),
         CM_I("peers", rly_dp_peers(w->ctx.dp)));
  rly_conns_abort_all(&w->conns);
  rly_prefaces_abort(w->ctx.prefaces);
  rly_dp_close_all(w->ctx.dp, 1001, "relay shutting down");
}

static void run_shutdown(rly_msg *m) {
  rly_worker *w = ((worker_msg *)m)->w;
  free(m);
  if (w->ctx.shutting_down) return;
  w->ctx.shutting_down = true;
  rly_conns_shutdown(&w->conns);
  rly_dp_shutdown(w->ctx.dp);
  uv_timer_start(&w->grace, on_grace, (uint64_t)w->ctx.edge->cfg->shutdown_grace_ms, 0);
  maybe_finish(&w->ctx);
}

void rly_worker_shutdown(rly_worker *w) { post_self(w, run_shutdown); }

/* ---- exit ------------------------------------------------------------------------ */

/* Handles of several modules close here: the loop's data is the worker. */
static void on_handle_closed(uv_handle_t *h) {
  rly_worker *w = h->loop->data;
  w->handles--;
}

static void on_inbox_closed(rly_mailbox *mb) {
  rly_worker *w = cm_container_of(mb, rly_worker, inbox);
  w->handles--;
}

static void run_exit(rly_msg *m) {
  rly_worker *w = ((worker_msg *)m)->w;
  free(m);
  w->handles = 4;
  uv_close((uv_handle_t *)&w->grace, on_handle_closed);
  rly_conns_close(&w->conns, on_handle_closed);
  rly_dp_close(w->ctx.dp, on_handle_closed);
  rly_mailbox_close(&w->inbox, on_inbox_closed); /* the loop ends once all four are */
}

void rly_worker_exit(rly_worker *w) { post_self(w, run_exit); }

/* ---- life ------------------------------------------------------------------------ */

rly_worker *rly_worker_new(rly_edge *e, size_t index, const rly_router *router,
                           void (*on_drained)(void *ud), void *ud, char *err, size_t errlen) {
  rly_worker *w = calloc(1, sizeof *w);
  if (!w) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  w->on_drained = on_drained;
  w->drained_ud = ud;
  rly_wctx *c = &w->ctx;
  c->edge = e;
  c->index = index;
  c->loop = &w->loop;
  c->inbox = &w->inbox;
  c->conns = &w->conns;
  c->maybe_finish = maybe_finish;
  int rc = uv_loop_init(&w->loop);
  if (rc == 0) {
    w->loop_ok = true;
    w->loop.data = w;
    rc = rly_mailbox_init(&w->inbox, &w->loop, INBOX_CAP);
    w->inbox_ok = rc == 0;
  }
  if (rc == 0) rc = rly_conns_init(&w->conns, c, router);
  if (rc == 0 && !(c->dp = rly_dp_new(c))) rc = UV_ENOMEM;
  if (rc == 0 && !(c->prefaces = rly_prefaces_new(c))) rc = UV_ENOMEM;
  if (rc == 0) rc = uv_timer_init(&w->loop, &w->grace);
  if (rc != 0) {
    snprintf(err, errlen, "worker %zu: %s", index, uv_strerror(rc));
    rly_worker_free(w);
    return NULL;
  }
  w->grace.data = w;
  return w;
}

rly_wctx *rly_worker_ctx(rly_worker *w) { return &w->ctx; }

static void worker_main(void *arg) {
  rly_worker *w = arg;
  char name[16]; /* top, perf and gdb show which worker is busy */
  snprintf(name, sizeof name, "relay-w%zu", w->ctx.index);
  pthread_setname_np(pthread_self(), name);
  uv_run(&w->loop, UV_RUN_DEFAULT);
}

int rly_worker_start(rly_worker *w, char *err, size_t errlen) {
  int rc = uv_thread_create(&w->thread, worker_main, w);
  if (rc != 0) {
    snprintf(err, errlen, "worker %zu: thread: %s", w->ctx.index, uv_strerror(rc));
    return rc;
  }
  w->thread_ok = true;
  return 0;
}

static void close_one(uv_handle_t *h, void *arg) {
  CM_UNUSED(arg);
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Closes what a worker that never ran still holds, so its loop can close. */
static void close_unstarted(rly_worker *w) {
  uv_walk(&w->loop, close_one, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT);
}

void rly_worker_join(rly_worker *w) {
  if (w && w->thread_ok) uv_thread_join(&w->thread);
  if (w) w->thread_ok = false;
}

void rly_worker_free(rly_worker *w) {
  if (!w) return;
  rly_worker_join(w);
  if (w->loop_ok) {
    if (uv_loop_alive(&w->loop)) close_unstarted(w);
    uv_loop_close(&w->loop);
  }
  rly_dp_free(w->ctx.dp);
  rly_prefaces_free(w->ctx.prefaces);
  if (w->inbox_ok) rly_mailbox_destroy(&w->inbox);
  free(w);
}
