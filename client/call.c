/*
 * call.c — how the admin commands and `relay auth` wait: a command owns
 * its loop and runs it until its one request has been answered (or a
 * timer has fired).  Nothing blocks inside the loop; the command simply
 * has nothing else to do meanwhile.
 */
#include "client/admin.h"

#include <stdio.h>
#include <string.h>

static void on_answer(void *ud, int err, const char *msg, const rc_http_response *res) {
  rc_call *c = ud;
  c->done = true;
  c->err = err;
  if (err) {
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "request failed");
    return;
  }
  c->status = res->status;
  if (cm_buf_append(&c->body, res->body, res->body_len) != 0) {
    c->err = -ENOMEM;
    snprintf(c->msg, sizeof c->msg, "out of memory");
  }
}

void rc_call_run(uv_loop_t *loop, const rc_http_request *req, rc_call *c) {
  memset(c, 0, sizeof *c);
  cm_buf_init_secret(&c->body, 0); /* answers may carry tokens */
  char err[256];
  rc_http *h = rc_http_start(loop, req, on_answer, c, err, sizeof err);
  if (!h) {
    c->done = true;
    c->err = -EINVAL;
    snprintf(c->msg, sizeof c->msg, "%s", err);
    return;
  }
  /* rc_http bounds the exchange by its own deadlines, so this ends. */
  while (!c->done)
    uv_run(loop, UV_RUN_ONCE);
}

void rc_call_free(rc_call *c) { cm_buf_free(&c->body); }

const char *rc_call_hint(const char *msg, const rc_net_opts *net) {
  if (!net->tls.ca_file && strstr(msg, "certificate verify failed"))
    return " (if the server's CA is not in the system store, pass --ca FILE)";
  return "";
}

static void on_timer(uv_timer_t *t) { *(bool *)t->data = true; }

void rc_sleep(uv_loop_t *loop, uint64_t ms) {
  uv_timer_t t;
  bool fired = false;
  uv_timer_init(loop, &t);
  t.data = &fired;
  uv_timer_start(&t, on_timer, ms, 0);
  while (!fired)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT); /* lets the close finish before t goes away */
}
