/*
 * auth.c — `relay auth`: the sign-in of login.c run over rc_http, the
 * credentials saved where swsrs keeps them, and --logout.  rc_login_run is
 * also what admin.c renews cached credentials with.
 */
#include "client/admin.h"
#include "client/internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define AUTH_HEADER "Authorization: "

/* What failed, named by the URL it went to (without its query). */
static void transport_message(const char *url, const char *msg, const rc_net_opts *net, char *out,
                              size_t outlen) {
  char shown[RC_HOST_MAX + RC_PATH_MAX + 16], perr[64];
  rc_url u;
  if (rc_url_parse(url, &u, perr, sizeof perr) == 0)
    rc_url_display(&u, shown, sizeof shown);
  else
    snprintf(shown, sizeof shown, "the request");
  snprintf(out, outlen, "%s: %s%s", shown, msg, rc_call_hint(msg, net));
}

/* One request the machine asked for, and its answer fed back. */
static void do_request(uv_loop_t *loop, rc_login *l, cm_tls_ctx *tls, const rc_net_opts *net,
                       rc_login_action *a) {
  cm_buf auth;
  cm_buf_init_secret(&auth, 0);
  const char *headers[2] = {NULL, NULL};
  if (a->authorization && rc_buf_puts(&auth, AUTH_HEADER) == 0 &&
      rc_buf_puts(&auth, a->authorization) == 0 && cm_buf_append(&auth, "", 1) == 0)
    headers[0] = (const char *)cm_buf_head(&auth);
  rc_http_request req = {.method = a->method,
                         .url = a->url,
                         .tls = tls,
                         .headers = headers,
                         .body = a->body,
                         .body_len = a->body_len,
                         .content_type = a->content_type,
                         .timeout_ms = net->timeout_ms};
  char url[RC_HOST_MAX + RC_PATH_MAX + 16];
  snprintf(url, sizeof url, "%s", a->url); /* the action's strings end with the next call */
  rc_call c;
  rc_call_run(loop, &req, &c);
  cm_buf_free(&auth);
  if (c.err) {
    char msg[768];
    transport_message(url, c.msg, net, msg, sizeof msg);
    rc_login_transport_error(l, msg, cm_now_wall_ms(), a);
  } else {
    rc_login_response(l, c.status, (const char *)cm_buf_head(&c.body), cm_buf_size(&c.body),
                      cm_now_wall_ms(), a);
  }
  rc_call_free(&c);
}

int rc_login_run(uv_loop_t *loop, rc_login *l, cm_tls_ctx *tls, const rc_net_opts *net,
                 FILE *prompt, rc_creds *out, char *err, size_t errlen) {
  rc_login_action a;
  rc_login_start(l, cm_now_wall_ms(), &a);
  for (;;) {
    if (a.prompt && prompt) {
      fputs(a.prompt, prompt);
      fflush(prompt);
    }
    switch (a.kind) {
    case RC_ACT_REQUEST: do_request(loop, l, tls, net, &a); break;
    case RC_ACT_WAIT:
      rc_sleep(loop, a.wait_ms);
      rc_login_timer(l, cm_now_wall_ms(), &a);
      break;
    case RC_ACT_DONE: rc_login_take(l, out); return 0;
    case RC_ACT_FAILED: cm_seterr(err, errlen, "%s", a.error); return -1;
    }
  }
}

/* ---- relay auth ---------------------------------------------------------------------- */

static int logout(const rc_auth_opts *o, const char *path) {
  char err[512];
  int rc = rc_creds_remove(path, err, sizeof err);
  if (rc == -ENOENT) {
    fprintf(stderr, "%s: not signed in (no %s)\n", o->cmd, path);
    return RC_EXIT_OK;
  }
  if (rc != 0) {
    fprintf(stderr, "%s: %s\n", o->cmd, err);
    return RC_EXIT_FAIL;
  }
  fprintf(stderr, "%s: signed out (removed %s)\n", o->cmd, path);
  return RC_EXIT_OK;
}

static void signed_in(const rc_auth_opts *o, const rc_creds *c, const char *path) {
  char until[32] = "an unknown time";
  if (c->expires_at) cm_rfc3339(c->expires_at, until, sizeof until);
  fprintf(stderr, "%s: signed in to %s (issuer %s); credentials saved in %s, valid until %s%s\n",
          o->cmd, c->relay, c->issuer, path, until,
          c->refresh_token ? " and renewed as needed" : "");
}

int rc_auth_run(const rc_auth_opts *o) {
  char path[4096], err[1024];
  if (rc_creds_path(path, sizeof path, err, sizeof err) != 0) {
    fprintf(stderr, "%s: %s\n", o->cmd, err);
    return RC_EXIT_FAIL;
  }
  if (o->logout) return logout(o, path);
  if (!o->relay_url || !*o->relay_url) {
    fprintf(stderr, "%s: --relay URL is required (the relay to sign in to)\n", o->cmd);
    return RC_EXIT_USAGE;
  }
  if (o->client_credentials && (!o->client_id || !o->client_secret)) {
    fprintf(stderr,
            "%s: --client-credentials takes the client from SWSRS_CLIENT_ID and "
            "SWSRS_CLIENT_SECRET in the environment\n",
            o->cmd);
    return RC_EXIT_USAGE;
  }
  rc_login_params p = {.mode = o->client_credentials ? RC_LOGIN_CLIENT : RC_LOGIN_DEVICE,
                       .relay_url = o->relay_url,
                       .client_id = o->client_id,
                       .client_secret = o->client_credentials ? o->client_secret : NULL,
                       .scope = o->scope};
  rc_login *l = rc_login_new(&p, err, sizeof err);
  cm_tls_ctx *tls = l ? rc_tls_new(&o->net.tls, err, sizeof err) : NULL;
  int rc = RC_EXIT_FAIL;
  rc_creds c = {0};
  if (tls && rc_login_run(uv_default_loop(), l, tls, &o->net, stderr, &c, err, sizeof err) == 0)
    rc = rc_creds_save(path, &c, err, sizeof err) == 0 ? RC_EXIT_OK : RC_EXIT_FAIL;
  if (rc == RC_EXIT_OK)
    signed_in(o, &c, path);
  else
    fprintf(stderr, "%s: %s\n", o->cmd, err);
  rc_creds_clear(&c);
  rc_login_free(l);
  cm_tls_ctx_free(tls);
  return rc;
}
