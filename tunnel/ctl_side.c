/*
 * ctl_side.c — the controller's end of the controller link (see tunnel.h):
 * dials relays and keeps dialling, verifies each relay's certificate (CA,
 * dialled name, relay identity), and serves the Controller service as the
 * HTTP/2 *server* on the connection it opened.
 *
 * Backoff: after a failed or short-lived connection the next dial waits a
 * uniformly random time in [0, min(max, base * 2^attempt)) ("full jitter");
 * only a link that stayed up (Hello received) for stable_ms resets attempt
 * to 0 when it ends.  A relay that accepts, says Hello and drops therefore
 * backs off like one that refuses: nothing resets the count on arrival.
 */
#include "tunnel/link.h"

#include "proto/health.pb-c.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Streams a relay may have open on a link at once (its calls in flight). */
#define CTL_MAX_STREAMS 4096

typedef struct dialer dialer;

typedef struct clink {
  tun_link base; /* first */
  tun_ctl *c;
  dialer *d; /* NULL for adopted fds */
  cm_list node;
  bool tls, up;
  bool retiring; /* replaced by a newer link: closes after the overlap */
  bool leaving;  /* the relay process said Leaving: it closes this link when drained */
  uint64_t opened_ms;
  uint64_t up_ms; /* when its Hello made the link up; 0 before */
  char node_id[128];
  char public_url[256];
  int32_t events_sid;
  tun_outq events_out;
  tun_grpc_decoder events_in;
  cm_list calls; /* streams not yet closed */
  cm_list ready; /* complete requests, served after the loop's reads (serve_soon) */
} clink;

struct tun_ctl_call {
  clink *l;
  cm_list node;
  cm_list ready_node; /* in l->ready */
  int32_t sid;
  char path[64];
  bool is_events, got_end, replied;
  bool deferred;          /* the handler answers later (tun_ctl_call_defer) */
  void (*gone)(void *ud); /* deferred: the stream went before the answer */
  void *gone_ud;
  tun_grpc_decoder dec;
  uint8_t *msg;
  size_t msg_len;
  int nmsgs;
  tun_outq out;
};

struct dialer {
  tun_ctl *c;
  char hostport[300];
  char host[256];
  char server_name[256];
  int port;
  uv_timer_t timer;
  uv_getaddrinfo_t gai;
  bool resolving, timer_closed;
  uint32_t attempt;
  clink *link; /* the current link (or the one being dialled) */
  clink *old;  /* the link it replaces, while a rotation is under way */
  cm_list node;
};

struct tun_ctl {
  uv_loop_t *loop;
  tun_ctl_config cfg;
  tun_ctl_handlers h;
  void *ud;
  cm_tls_ctx *tls;
  cm_list links, dialers;
  char registry[TUN_REGISTRY_ID_MAX + 1]; /* told to relays on Events; "" none */
  size_t nup;
  bool closing;
  int handles;
  /* Serves the links' ready requests once the loop's reads are done
   * (serve_soon); made on first use, so an unstarted controller has none. */
  uv_check_t serve;
  bool serve_made;
  void (*done)(void *);
  void *done_ud;
};

static void dial_later(dialer *d, bool failed);
static void maybe_closed(tun_ctl *c);
static void serve_soon(tun_ctl *c);

/* ---- replies ------------------------------------------------------------------ */

static int submit_headers(tun_ctl_call *call, nghttp2_data_provider *p) {
  nghttp2_nv nv[] = {TUN_NV(":status", "200"), TUN_NV("content-type", "application/grpc")};
  return nghttp2_submit_response(call->l->base.h2, call->sid, nv, 2, p);
}

static int reply_trailers_only(tun_ctl_call *call, int status, const char *message) {
  char st[12], msg[512];
  snprintf(st, sizeof st, "%d", status);
  tun_grpc_message_encode(message ? message : "", msg, sizeof msg);
  nghttp2_nv nv[] = {TUN_NV(":status", "200"), TUN_NV("content-type", "application/grpc"),
                     TUN_NV("grpc-status", st), TUN_NV("grpc-message", msg)};
  int rc = nghttp2_submit_response(call->l->base.h2, call->sid, nv, msg[0] ? 4 : 3, NULL);
  if (call->deferred) tun_link_pump(&call->l->base);
  return rc;
}

int tun_ctl_reply(tun_ctl_call *call, int status, const char *message,
                  const ProtobufCMessage *resp) {
  if (call->replied) return -EALREADY;
  call->replied = true;
  if (status != TUN_GRPC_OK || !resp) return reply_trailers_only(call, status, message);
  int rc = tun_grpc_encode(&call->out.buf, resp);
  if (rc != 0) return reply_trailers_only(call, TUN_GRPC_INTERNAL, "response too large");
  call->out.eof = true;
  call->out.trailers = true;
  call->out.status = TUN_GRPC_OK;
  nghttp2_data_provider p = tun_outq_provider(&call->out);
  rc = submit_headers(call, &p);
  /* A deferred answer comes from outside nghttp2's callbacks: send it now
   * (inside them the pump is a no-op and the caller of mem_recv pumps). */
  if (call->deferred) tun_link_pump(&call->l->base);
  return rc;
}

void tun_ctl_call_defer(tun_ctl_call *call, void (*gone)(void *ud), void *ud) {
  call->deferred = true;
  call->gone = gone;
  call->gone_ud = ud;
}

tun_ctl_link *tun_ctl_call_link(const tun_ctl_call *call) { return (tun_ctl_link *)call->l; }

/* ---- dispatch ------------------------------------------------------------------- */

static void dispatch_unary(tun_ctl_call *call) {
  tun_ctl *c = call->l->c;
  if (call->nmsgs != 1) {
    reply_trailers_only(call, TUN_GRPC_INVALID_ARGUMENT, "expected exactly one request message");
    return;
  }
  if (strcmp(call->path, TUN_PATH_VALIDATE) == 0 && c->h.validate) {
    Relay__V1__SlotRequest *req = (Relay__V1__SlotRequest *)tun_grpc_unpack(
        &relay__v1__slot_request__descriptor, call->msg, call->msg_len);
    if (!req) {
      reply_trailers_only(call, TUN_GRPC_INVALID_ARGUMENT, "malformed SlotRequest");
      return;
    }
    c->h.validate(c->ud, call, req);
    tun_grpc_free(&req->base);
  } else if (strcmp(call->path, TUN_PATH_ADMIN) == 0 && c->h.admin) {
    Relay__V1__AdminRequest *req = (Relay__V1__AdminRequest *)tun_grpc_unpack(
        &relay__v1__admin_request__descriptor, call->msg, call->msg_len);
    if (!req) {
      reply_trailers_only(call, TUN_GRPC_INVALID_ARGUMENT, "malformed AdminRequest");
      return;
    }
    c->h.admin(c->ud, call, req);
    tun_grpc_free(&req->base);
  } else if (strcmp(call->path, TUN_PATH_HEALTH_CHECK) == 0) {
    /* The relay's keepalive probe: we are here, so we serve. */
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    tun_ctl_reply(call, TUN_GRPC_OK, NULL, &r.base);
  } else {
    reply_trailers_only(call, TUN_GRPC_UNIMPLEMENTED, "unknown method");
    return;
  }
  if (!call->replied && !call->deferred)
    reply_trailers_only(call, TUN_GRPC_INTERNAL, "handler did not answer");
}

/* ---- link rotation (max_link_age_ms) ------------------------------------------- *
 * Like a gRPC server's max_connection_age, but the replacement comes first:
 * the dialer opens a new link, and only once it is up and has been for
 * ROTATE_OVERLAP_MS (so the relay has seen it up too) is the old one
 * retired: it stops taking commands, sends GOAWAY and closes.  The relay
 * thus always has a link up and /readyz never blinks. */
#define ROTATE_OVERLAP_MS 1000

static void dial_now(dialer *d);
static void set_up(clink *l, bool up);

static uint64_t jittered_age(const tun_ctl *c) {
  uint64_t age = c->cfg.max_link_age_ms;
  return age - age / 10 + cm_random_below(age / 5 + 1); /* +-10 %: no herds */
}

static void rotation_link_up(clink *l) {
  dialer *d = l->d;
  if (!d || d->link != l) return;
  if (l->c->cfg.max_link_age_ms) tun_link_wake_at(&l->base, cm_now_mono_ms() + jittered_age(l->c));
  clink *old = d->old;
  if (!old) return;
  d->old = NULL;
  old->d = NULL; /* its end is ours: no redial */
  old->retiring = true;
  tun_link_wake_at(&old->base, cm_now_mono_ms() + ROTATE_OVERLAP_MS);
}

static void link_wake(tun_link *tl) {
  clink *l = (clink *)tl;
  if (l->retiring) {
    set_up(l, false); /* commands go to the new link from now on */
    tun_link_close(tl, "replaced by a newer link (max link age)");
    return;
  }
  dialer *d = l->d;
  if (!d || d->link != l || d->old || !l->up || l->c->closing) return;
  cm_log(CM_LOG_INFO, "tunnel", "link reached its max age; dialing its replacement",
         CM_S("relay", d->hostport));
  d->old = l;
  d->link = NULL;
  dial_now(d);
}

static void set_up(clink *l, bool up) {
  if (l->up == up) return;
  l->up = up;
  tun_ctl *c = l->c;
  if (up)
    c->nup++;
  else
    c->nup--;
  cm_log(up || c->closing || l->retiring || l->leaving ? CM_LOG_INFO : CM_LOG_WARN, /* no alarm */
         "tunnel", up ? "relay link up" : "relay link down", CM_S("relay", l->node_id),
         CM_S("peer", l->base.peer), CM_I("links", c->nup), CM_S("reason", up ? "" : l->base.why));
  if (c->h.on_link) c->h.on_link(c->ud, (tun_ctl_link *)l, up);
  if (up) rotation_link_up(l);
}

/* The relay process on this link stops accepting (a restart or upgrade):
 * its successor may already share the address and wait for a link, so the
 * dialer dials now, as for a new relay, while this link runs on until the
 * relay closes it (its draining sessions report here).  Its end then
 * causes no redial. */
static void relay_leaving(clink *l) {
  dialer *d = l->d;
  if (l->leaving) return;
  l->leaving = true;
  cm_log(CM_LOG_INFO, "tunnel", "relay leaving; dialing its address again",
         CM_S("relay", l->node_id), CM_S("peer", l->base.peer));
  if (!d || d->link != l || l->c->closing) return; /* adopted, or not the dialer's current link */
  l->d = NULL;
  d->link = NULL;
  d->attempt = 0;
  dial_now(d);
}

static int on_event_message(void *ud, const uint8_t *msg, size_t len) {
  clink *l = ud;
  Relay__V1__RelayEvent *ev =
      (Relay__V1__RelayEvent *)tun_grpc_unpack(&relay__v1__relay_event__descriptor, msg, len);
  if (!ev) return -EBADMSG;
  if (ev->kind_case == RELAY__V1__RELAY_EVENT__KIND_HELLO && ev->hello) {
    snprintf(l->node_id, sizeof l->node_id, "%s", ev->hello->node_id);
    snprintf(l->public_url, sizeof l->public_url, "%s", ev->hello->public_url);
    /* Not a reset: a relay that says Hello and drops must still back off.
     * link_closed resets the count if the link then stays up stable_ms. */
    if (!l->up) l->up_ms = cm_now_mono_ms();
    set_up(l, true);
  } else if (ev->kind_case == RELAY__V1__RELAY_EVENT__KIND_LEAVING) {
    relay_leaving(l);
  }
  if (l->c->h.on_event) l->c->h.on_event(l->c->ud, (tun_ctl_link *)l, ev);
  tun_grpc_free(&ev->base);
  return 0;
}

static int on_call_message(void *ud, const uint8_t *msg, size_t len) {
  tun_ctl_call *call = ud;
  if (++call->nmsgs > 1) return 0;            /* counted, refused at dispatch */
  call->msg = cm_secret_alloc(len ? len : 1); /* a SlotRequest holds a token */
  if (!call->msg) return -ENOMEM;
  memcpy(call->msg, msg, len);
  call->msg_len = len;
  return 0;
}

/* ---- nghttp2 callbacks ------------------------------------------------------------ */

static void call_free(tun_ctl_call *call) {
  if (call->deferred && !call->replied && call->gone) call->gone(call->gone_ud);
  cm_list_remove(&call->node);
  cm_list_remove(&call->ready_node);
  tun_grpc_decoder_free(&call->dec);
  tun_outq_free(&call->out);
  cm_secret_free(call->msg);
  free(call);
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
  clink *l = user;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  tun_ctl_call *call = calloc(1, sizeof *call);
  if (!call) return NGHTTP2_ERR_CALLBACK_FAILURE;
  call->l = l;
  call->sid = frame->hd.stream_id;
  tun_grpc_decoder_init(&call->dec, l->base.cfg.max_message);
  tun_outq_init(&call->out, 0);
  cm_list_push_back(&l->calls, &call->node);
  nghttp2_session_set_stream_user_data(h2, call->sid, call);
  return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
  CM_UNUSED(flags);
  CM_UNUSED(user);
  tun_ctl_call *call = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (!call || !tun_hdr_is(name, namelen, ":path")) return 0;
  size_t n = CM_MIN(valuelen, sizeof call->path - 1);
  memcpy(call->path, value, n);
  call->path[n] = '\0';
  return 0;
}

static void open_events_stream(clink *l, tun_ctl_call *call) {
  call->is_events = true;
  l->events_sid = call->sid;
  nghttp2_data_provider p = tun_outq_provider(&l->events_out);
  if (!l->c->registry[0]) {
    submit_headers(call, &p);
    return;
  }
  nghttp2_nv nv[] = {TUN_NV(":status", "200"), TUN_NV("content-type", "application/grpc"),
                     TUN_NV(TUN_HDR_REGISTRY, l->c->registry)};
  nghttp2_submit_response(l->base.h2, call->sid, nv, CM_ARRAY_LEN(nv), &p);
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
  clink *l = user;
  tun_ctl_call *call = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (!call) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST &&
      strcmp(call->path, TUN_PATH_EVENTS) == 0) {
    if (l->events_sid > 0) { /* one Events stream per link */
      reply_trailers_only(call, TUN_GRPC_ALREADY_EXISTS, "Events already open");
      call->replied = true;
    } else {
      open_events_stream(l, call);
    }
  }
  if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !call->is_events && !call->replied &&
      !call->got_end) {
    call->got_end = true;
    cm_list_push_back(&l->ready, &call->ready_node);
    serve_soon(l->c);
  }
  return 0;
}

/* Requests are served once the loop has read everything waiting on the
 * links (a check handle runs after the loop's I/O callbacks), not one by
 * one as each completes.  A controller that was stopped (SIGSTOP, a
 * stalled disk, a paused VM) wakes to find the requests that queued
 * meanwhile and, behind them, the relay's RST_STREAM for each whose
 * deadline passed: the relay has answered those 503 already, and carrying
 * them out would create sessions whose tokens nobody got (the client
 * retries and makes a second) or delete after the caller was told it
 * failed.  What the relay sends only after the wake-up is not seen in
 * time; that is the limit of what the stream can tell. */
static void serve_ready(clink *l) {
  tun_link *tl = &l->base;
  /* As in nghttp2's callbacks, what the handlers submit leaves with the
   * pump below, so no stream closes under them. */
  tl->in_h2 = true;
  while (!cm_list_empty(&l->ready) && tl->st && !cm_stream_closing(tl->st)) {
    tun_ctl_call *call = cm_container_of(l->ready.next, tun_ctl_call, ready_node);
    cm_list_remove(&call->ready_node);
    if (!call->replied) dispatch_unary(call);
  }
  tl->in_h2 = false;
  tun_link_pump(tl);
}

static void on_serve(uv_check_t *h) {
  tun_ctl *c = h->data;
  uv_check_stop(h);
  for (cm_list *p = c->links.next, *next; p != &c->links; p = next) {
    next = p->next; /* a link that fails while pumping leaves the list */
    clink *l = cm_container_of(p, clink, node);
    if (!cm_list_empty(&l->ready)) serve_ready(l);
  }
}

static void serve_soon(tun_ctl *c) {
  if (c->closing) return;
  if (!c->serve_made) {
    uv_check_init(c->loop, &c->serve);
    c->serve.data = c;
    c->serve_made = true;
  }
  uv_check_start(&c->serve, on_serve);
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *user) {
  CM_UNUSED(flags);
  clink *l = user;
  tun_ctl_call *call = nghttp2_session_get_stream_user_data(h2, sid);
  if (!call || call->replied) return 0;
  int rc = call->is_events ? tun_grpc_decode(&l->events_in, data, len, on_event_message, l)
                           : tun_grpc_decode(&call->dec, data, len, on_call_message, call);
  if (rc != 0) {
    reply_trailers_only(call,
                        rc == -EMSGSIZE ? TUN_GRPC_RESOURCE_EXHAUSTED : TUN_GRPC_INVALID_ARGUMENT,
                        "malformed request stream");
    call->replied = true;
  }
  return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t sid, uint32_t err, void *user) {
  clink *l = user;
  tun_ctl_call *call = nghttp2_session_get_stream_user_data(h2, sid);
  if (!call) return 0;
  if (call->is_events) {
    l->events_sid = 0;
    set_up(l, false);
  }
  if (cm_list_linked(&call->ready_node))
    cm_log(CM_LOG_INFO, "tunnel", "call cancelled before it was served", CM_S("method", call->path),
           CM_S("relay", l->node_id), CM_I("h2_error", err));
  nghttp2_session_set_stream_user_data(h2, sid, NULL);
  call_free(call);
  return 0;
}

static nghttp2_session_callbacks *g_cbs;
static uv_once_t g_cbs_once = UV_ONCE_INIT;

/* Built once; both ends may run on different threads (embedded mode). */
static void make_callbacks(void) {
  nghttp2_session_callbacks_new(&g_cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(g_cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(g_cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(g_cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(g_cbs, on_stream_close);
}

static nghttp2_session_callbacks *server_callbacks(void) {
  uv_once(&g_cbs_once, make_callbacks);
  return g_cbs;
}

/* ---- link hooks ---------------------------------------------------------------------- */

static int check_relay_cert(clink *l) {
  void *cert = cm_stream_peer_cert(l->base.st);
  if (!cert) {
    snprintf(l->base.why, sizeof l->base.why, "relay certificate not verified");
    return -1;
  }
  if (!cm_pki_cert_has_uri(cert, CM_PKI_URI_RELAY)) {
    snprintf(l->base.why, sizeof l->base.why, "certificate lacks the relay identity %s",
             CM_PKI_URI_RELAY);
    return -1;
  }
  if (strcmp(cm_stream_alpn(l->base.st), "h2") != 0) {
    snprintf(l->base.why, sizeof l->base.why, "relay did not negotiate h2");
    return -1;
  }
  return 0;
}

static int link_open(tun_link *tl) {
  clink *l = (clink *)tl;
  if (l->tls && check_relay_cert(l) != 0) {
    cm_log(CM_LOG_WARN, "tunnel", "relay refused", CM_S("peer", tl->peer), CM_S("reason", tl->why));
    return -1;
  }
  l->opened_ms = cm_now_mono_ms();
  /* nghttp2 tears down a server session whose client resets more than
   * 1,000 streams at once (rapid-reset flood protection).  Our client is
   * a relay that proved who it is, and it resets a call once, when its
   * deadline passes: a stalled controller wakes to as many resets as the
   * relay had calls out, up to the streams we allow. */
  nghttp2_option *opt;
  if (nghttp2_option_new(&opt) != 0) return -1;
  nghttp2_option_set_stream_reset_rate_limit(opt, CTL_MAX_STREAMS, CTL_MAX_STREAMS);
  int rc = nghttp2_session_server_new3(&tl->h2, server_callbacks(), l, opt, tun_link_mem());
  nghttp2_option_del(opt);
  if (rc != 0) return -1;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, CTL_MAX_STREAMS},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
  };
  nghttp2_submit_settings(tl->h2, NGHTTP2_FLAG_NONE, iv, CM_ARRAY_LEN(iv));
  nghttp2_session_set_local_window_size(tl->h2, NGHTTP2_FLAG_NONE, 0, 16 << 20);
  tun_link_start(tl);
  return 0;
}

static void link_closed(tun_link *tl, int err, const char *msg) {
  CM_UNUSED(err);
  clink *l = (clink *)tl;
  if (!tl->why[0]) snprintf(tl->why, sizeof tl->why, "%s", msg ? msg : "closed");
  set_up(l, false);
  cm_list_remove(&l->node);
  /* nghttp2_session_del frees streams without stream-close callbacks. */
  while (!cm_list_empty(&l->calls))
    call_free(cm_container_of(l->calls.next, tun_ctl_call, node));
  dialer *d = l->d;
  if (d && d->old == l) {
    /* The link being replaced died first: the replacement is on its way
     * (being dialled, or its redial timer runs). */
    d->old = NULL;
    if (d->link || d->resolving || uv_is_active((uv_handle_t *)&d->timer)) return;
  }
  if (d) {
    bool stable = l->up_ms && cm_now_mono_ms() - l->up_ms >= l->c->cfg.stable_ms;
    /* A link that came up was logged going down by set_up. */
    if (!l->up_ms)
      cm_log(CM_LOG_INFO, "tunnel", "dial failed", CM_S("relay", d->hostport),
             CM_S("reason", tl->why));
    if (d->link == l) d->link = NULL;
    dial_later(d, !stable);
  }
}

static void link_free(tun_link *tl) {
  clink *l = (clink *)tl;
  tun_ctl *c = l->c;
  tun_outq_free(&l->events_out);
  tun_grpc_decoder_free(&l->events_in);
  free(l);
  c->handles--;
  maybe_closed(c);
}

static const tun_link_hooks g_hooks = {
    .on_open = link_open, .on_closed = link_closed, .on_free = link_free, .on_wake = link_wake};

static clink *link_new(tun_ctl *c, dialer *d, bool tls) {
  clink *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  l->c = c;
  l->d = d;
  l->tls = tls;
  cm_list_init(&l->calls);
  cm_list_init(&l->ready);
  tun_outq_init(&l->events_out, c->cfg.link.max_event_queue);
  tun_grpc_decoder_init(&l->events_in, c->cfg.link.max_message);
  tun_link_init(&l->base, c->loop, &c->cfg.link, &g_hooks);
  cm_list_push_back(&c->links, &l->node);
  c->handles++;
  return l;
}

int tun_ctl_add_fd(tun_ctl *c, int fd) {
  clink *l = link_new(c, NULL, false);
  if (!l) return -ENOMEM;
  cm_stream_opts o = {.high_watermark = 1 << 20};
  int err;
  l->base.st = cm_stream_open_fd(c->loop, fd, true, &o, tun_link_stream_cbs(), &l->base, &err);
  if (!l->base.st) {
    cm_list_remove(&l->node);
    tun_link_discard(&l->base);
    return err;
  }
  return 0;
}

/* ---- dialing --------------------------------------------------------------------------- */

static void connect_to(dialer *d, const struct sockaddr *addr) {
  tun_ctl *c = d->c;
  clink *l = link_new(c, d, true);
  if (!l) {
    dial_later(d, true);
    return;
  }
  cm_stream_opts o = {.tls = c->tls,
                      .sni = d->server_name,
                      .handshake_timeout_ms = c->cfg.link.handshake_timeout_ms,
                      .keepalive = true,
                      /* TCP backs up the keepalive probes: a peer whose host
                       * or network died is given up within the ping timeout. */
                      .keepalive_s = CM_MAX(1u, c->cfg.link.ping_interval_ms / 1000),
                      .user_timeout_ms = c->cfg.link.ping_timeout_ms,
                      .high_watermark = 1 << 20};
  int err;
  l->base.st = cm_stream_connect(c->loop, addr, &o, tun_link_stream_cbs(), &l->base, &err);
  if (!l->base.st) {
    cm_list_remove(&l->node);
    tun_link_discard(&l->base);
    dial_later(d, true);
    return;
  }
  d->link = l;
}

/* A dialer goes once its timer is closed and no resolution is pending. */
static void dialer_release(dialer *d) {
  if (!d->timer_closed || d->resolving) return;
  tun_ctl *c = d->c;
  free(d);
  c->handles--;
  maybe_closed(c);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  dialer *d = req->data;
  d->resolving = false;
  if (d->c->closing) {
    uv_freeaddrinfo(res);
    dialer_release(d);
    return;
  }
  if (status != 0 || !res) {
    cm_log(CM_LOG_WARN, "tunnel", "cannot resolve relay", CM_S("relay", d->hostport),
           CM_S("error", uv_strerror(status)));
    dial_later(d, true);
  } else {
    connect_to(d, res->ai_addr);
  }
  uv_freeaddrinfo(res);
}

static void on_dial_timer(uv_timer_t *t) {
  dialer *d = t->data;
  if (d->c->closing || d->link || d->resolving) return;
  struct sockaddr_storage ss;
  if (cm_sockaddr_from(d->host, d->port, &ss) == 0) {
    connect_to(d, (struct sockaddr *)&ss);
    return;
  }
  char port[8];
  snprintf(port, sizeof port, "%d", d->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  d->gai.data = d;
  if (uv_getaddrinfo(d->c->loop, &d->gai, on_resolved, d->host, port, &hints) == 0) {
    d->resolving = true;
  } else {
    dial_later(d, true);
  }
}

static void dial_later(dialer *d, bool failed) {
  tun_ctl *c = d->c;
  if (c->closing) return;
  if (failed) {
    if (d->attempt < 16) d->attempt++;
  } else {
    d->attempt = 0;
  }
  uint64_t cap = (uint64_t)c->cfg.backoff_base_ms << (d->attempt ? d->attempt - 1 : 0);
  if (cap > c->cfg.backoff_max_ms) cap = c->cfg.backoff_max_ms;
  uint64_t delay = d->attempt ? cm_random_below(cap) : 0; /* [0, cap) */
  cm_log(CM_LOG_DEBUG, "tunnel", "redial scheduled", CM_S("relay", d->hostport),
         CM_I("attempt", d->attempt), CM_I("delay_ms", delay));
  uv_timer_start(&d->timer, on_dial_timer, delay, 0);
}

static void dial_now(dialer *d) { uv_timer_start(&d->timer, on_dial_timer, 0, 0); }

int tun_ctl_dial(tun_ctl *c, const char *hostport, const char *server_name, char *err,
                 size_t errlen) {
  if (!c->tls) {
    snprintf(err, errlen, "dialing a relay needs the controller certificate, key and CA");
    return -EINVAL;
  }
  dialer *d = calloc(1, sizeof *d);
  if (!d) return -ENOMEM;
  d->c = c;
  snprintf(d->hostport, sizeof d->hostport, "%s", hostport);
  if (cm_parse_hostport(hostport, NULL, d->host, sizeof d->host, &d->port) != 0 || d->port == 0) {
    snprintf(err, errlen, "relay address \"%s\" must be HOST:PORT", hostport);
    free(d);
    return -EINVAL;
  }
  snprintf(d->server_name, sizeof d->server_name, "%s", server_name ? server_name : d->host);
  uv_timer_init(c->loop, &d->timer);
  d->timer.data = d;
  c->handles++;
  cm_list_push_back(&c->dialers, &d->node);
  uv_timer_start(&d->timer, on_dial_timer, 0, 0);
  return 0;
}

/* ---- commands ---------------------------------------------------------------------- */

int tun_ctl_link_send(tun_ctl_link *tl, const Relay__V1__ControllerCommand *cmd) {
  clink *l = (clink *)tl;
  if (!l->up || l->events_sid <= 0 || !l->base.h2) return -ENOTCONN;
  int rc = tun_outq_push(&l->base, l->events_sid, &l->events_out, &cmd->base);
  if (rc == 0) tun_link_pump(&l->base);
  return rc;
}

/* Every link of the node: while one relay process hands over to the next
 * (Leaving) both have one, and the command may concern either; a relay
 * ignores a Kick for a session it does not hold. */
bool tun_ctl_send_to_node(tun_ctl *c, const char *node, const Relay__V1__ControllerCommand *cmd) {
  bool sent = false;
  for (cm_list *p = c->links.next; p != &c->links; p = p->next) {
    clink *l = cm_container_of(p, clink, node);
    if (l->up && strcmp(l->node_id, node) == 0 && tun_ctl_link_send((tun_ctl_link *)l, cmd) == 0)
      sent = true;
  }
  return sent;
}

const char *tun_ctl_link_node(const tun_ctl_link *l) { return ((const clink *)l)->node_id; }
const char *tun_ctl_link_public_url(const tun_ctl_link *l) {
  return ((const clink *)l)->public_url;
}
size_t tun_ctl_links(const tun_ctl *c) { return c->nup; }

int tun_ctl_set_registry(tun_ctl *c, const char *id) {
  size_t n = strlen(id);
  if (n > TUN_REGISTRY_ID_MAX) return -EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", id[i]))
      return -EINVAL;
  memcpy(c->registry, id, n + 1);
  return 0;
}

/* ---- lifecycle ----------------------------------------------------------------------- */

tun_ctl *tun_ctl_new(uv_loop_t *loop, const tun_ctl_config *cfg, const tun_ctl_handlers *h,
                     void *ud, char *err, size_t errlen) {
  tun_ctl *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->loop = loop;
  c->cfg = *cfg;
  tun_link_config_fill(&c->cfg.link);
  if (!c->cfg.backoff_base_ms) c->cfg.backoff_base_ms = 1000;
  if (!c->cfg.backoff_max_ms) c->cfg.backoff_max_ms = 60000;
  if (!c->cfg.stable_ms) c->cfg.stable_ms = 5000;
  c->h = *h;
  c->ud = ud;
  cm_list_init(&c->links);
  cm_list_init(&c->dialers);
  if (cfg->cert_file) {
    cm_tls_config tc;
    cm_tls_config_init(&tc);
    tc.cert_file = cfg->cert_file;
    tc.key_file = cfg->key_file;
    tc.ca_file = cfg->ca_file;
    tc.verify_peer = true;
    tc.alpn = "h2";
    tc.tls13_only = true; /* both ends are ours */
    tc.cleanse_plaintext = true;
    c->tls = cm_tls_ctx_new_client(&tc, err, errlen);
    if (!c->tls) {
      free(c);
      return NULL;
    }
  }
  return c;
}

static void maybe_closed(tun_ctl *c) {
  if (c->closing && c->handles == 0 && c->done) {
    void (*done)(void *) = c->done;
    c->done = NULL;
    done(c->done_ud);
  }
}

static void on_serve_closed(uv_handle_t *h) {
  tun_ctl *c = h->data;
  c->handles--;
  maybe_closed(c);
}

static void on_dialer_closed(uv_handle_t *h) {
  dialer *d = h->data;
  d->timer_closed = true;
  dialer_release(d);
}

void tun_ctl_close(tun_ctl *c, void (*done)(void *), void *ud) {
  if (c->closing) return;
  c->closing = true;
  c->done = done;
  c->done_ud = ud;
  while (!cm_list_empty(&c->dialers)) {
    dialer *d = cm_container_of(c->dialers.next, dialer, node);
    cm_list_remove(&d->node);
    if (d->resolving) uv_cancel((uv_req_t *)&d->gai);
    uv_close((uv_handle_t *)&d->timer, on_dialer_closed);
  }
  for (cm_list *p = c->links.next; p != &c->links;) {
    clink *l = cm_container_of(p, clink, node);
    p = p->next;
    l->d = NULL;
    tun_link_close(&l->base, "controller shutting down");
  }
  if (c->serve_made) {
    c->handles++;
    uv_close((uv_handle_t *)&c->serve, on_serve_closed);
  }
  maybe_closed(c);
}

void tun_ctl_free(tun_ctl *c) {
  if (!c) return;
  cm_tls_ctx_free(c->tls);
  free(c);
}
