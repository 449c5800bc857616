/*
 * listing.c — GET /admin/sessions: every session, streamed, or one page.
 *
 * Without parameters (what swsrs clients send) the answer is every session
 * the linked controllers hold, as {"sessions":[...]} in a chunked body.  The
 * relay walks each controller's pages (AdminRequest page_size/page_token)
 * in turn, and asks for the next page only once the client has taken the
 * last one (the connection's write queue drained): memory stays at about a
 * page whatever the listing's size and however slowly the client reads.
 * The first page of every controller is fetched before the status line, so
 * a refusal from any of them (403 without the read scope) is the answer,
 * and a listing no controller could start is a 503.  A page that fails
 * later is asked for again; if it still fails the connection is reset, so
 * a client never takes a partial listing for a whole one.
 *
 * With ?limit=N (1..1000) and/or ?page_token=T the answer is one page,
 * {"sessions":[...],"next_page_token":"..."}, the token absent on the last
 * page.  A relay page token carries the controller's name and that
 * controller's own token, so paging goes on across several controllers.
 */
#include "relay/listing.h"

#include "relay/api.h"
#include "relay/control.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_SIZE       1000 /* sessions per controller call when streaming */
#define DEFAULT_LIMIT   100  /* ?page_token without ?limit */
#define MAX_LIMIT       1000
#define MAX_CONTROLLERS 16
#define PAGE_RETRIES    2 /* a failed page is asked for this many more times */
#define FLUSH_PIECE     (64 * 1024)
#define MAX_CTL_TOKEN   512
#define MAX_PAGE_TOKEN  1024 /* ?page_token= as the client sends it */

typedef struct ctl_walk {
  char name[TUN_CONTROLLER_NAME_MAX];
  rly_ctl_call *call;
  cm_buf first; /* streaming: the first page's items, until sent */
  uint64_t first_items;
  char next[MAX_CTL_TOKEN]; /* its token for the page after; "": done */
  bool answered, failed, first_sent;
} ctl_walk;

typedef struct list_op {
  rly_conn *c;
  rly_edge *edge;
  bool paged;
  uint32_t limit;
  /* The principal, copied: pages are asked for long after the token check. */
  char *subject, *issuer;
  cm_strlist scopes;
  bool anonymous;
  char cors[512];
  ctl_walk w[MAX_CONTROLLERS];
  size_t nw, cur, waiting;
  int retries;
  int refused; /* HTTP status of a refusal, 0 if none */
  char refused_code[64], refused_msg[160];
  cm_buf out;                     /* body not yet handed to the connection */
  char tail[MAX_PAGE_TOKEN + 32]; /* ends the body: "]}" or the next token */
  bool tail_added;
  uint64_t items; /* sessions written so far (for commas) */
} list_op;

/* ---- lifetime -------------------------------------------------------------------- */

static void op_free(list_op *o) {
  for (size_t i = 0; i < o->nw; i++) {
    if (o->w[i].call) rly_ctl_call_cancel(o->w[i].call);
    cm_buf_free(&o->w[i].first);
  }
  free(o->subject);
  free(o->issuer);
  cm_strlist_free(&o->scopes);
  cm_buf_free(&o->out);
  free(o);
}

static void op_cancel(void *pending) { op_free(pending); }

/* Done with the connection (answered, or reset): it no longer waits on us. */
static void op_finish(list_op *o) {
  rly_conn_clear_pending(o->c, o);
  op_free(o);
}

static void respond_error(list_op *o, int status, const char *code, const char *msg) {
  char hdr[768];
  bool scope = status == 403 && strcmp(code, "insufficient_scope") == 0;
  snprintf(hdr, sizeof hdr, "%sCache-Control: no-store\r\n%s", o->cors,
           scope ? "WWW-Authenticate: Bearer realm=\"relay\", error=\"insufficient_scope\"\r\n"
                 : "");
  rly_conn_respond_error(o->c, status, code, msg, hdr);
  op_finish(o);
}

/* ---- page tokens --------------------------------------------------------------------- */

static bool token_text_ok(const char *s) {
  for (; *s; s++)
    if (*s < 0x21 || *s > 0x7e) return false;
  return true;
}

/* base64url("<controller>\n<its token>"); false when it does not fit. */
static bool page_token_make(const char *controller, const char *ctl_token, char *out,
                            size_t outlen) {
  char raw[TUN_CONTROLLER_NAME_MAX + MAX_CTL_TOKEN + 2];
  int n = snprintf(raw, sizeof raw, "%s\n%s", controller, ctl_token);
  if (n < 0 || (size_t)n >= sizeof raw || cm_b64url_encoded_len((size_t)n) >= outlen) return false;
  cm_b64url_encode((const uint8_t *)raw, (size_t)n, out, outlen);
  return true;
}

static bool page_token_parse(const char *tok, char *controller, char *ctl_token) {
  uint8_t raw[TUN_CONTROLLER_NAME_MAX + MAX_CTL_TOKEN + 2];
  long n = cm_b64url_decode(tok, strlen(tok), raw, sizeof raw - 1);
  if (n <= 0 || memchr(raw, '\0', (size_t)n)) return false;
  raw[n] = '\0';
  char *nl = memchr(raw, '\n', (size_t)n);
  if (!nl || nl == (char *)raw || (size_t)(nl - (char *)raw) >= TUN_CONTROLLER_NAME_MAX ||
      strlen(nl + 1) >= MAX_CTL_TOKEN)
    return false;
  *nl = '\0';
  if (!token_text_ok((char *)raw) || !token_text_ok(nl + 1)) return false;
  snprintf(controller, TUN_CONTROLLER_NAME_MAX, "%s", (char *)raw);
  snprintf(ctl_token, MAX_CTL_TOKEN, "%s", nl + 1);
  return true;
}

/* ---- asking a controller for a page ---------------------------------------------------- */

static void on_page(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                    const char *controller);

static ctl_walk *walk_of(list_op *o, const char *controller) {
  for (size_t i = 0; i < o->nw; i++)
    if (strcmp(o->w[i].name, controller) == 0) return &o->w[i];
  return NULL;
}

static bool ask_page(list_op *o, ctl_walk *w, const char *token, uint32_t size) {
  Relay__V1__Principal pr = RELAY__V1__PRINCIPAL__INIT;
  Relay__V1__AdminRequest q = RELAY__V1__ADMIN_REQUEST__INIT;
  q.op = RELAY__V1__ADMIN_OP__ADMIN_OP_LIST;
  q.relay_node_id = o->edge->node_id;
  q.auth_disabled = o->anonymous;
  q.page_size = size;
  q.page_token = (char *)token;
  if (!o->anonymous) {
    pr.subject = o->subject;
    pr.issuer = o->issuer;
    pr.n_scopes = o->scopes.n;
    pr.scopes = o->scopes.v;
    q.principal = &pr;
  }
  w->call = rly_ctl_call_start(o->c->w, w->name, TUN_PATH_ADMIN, &q.base,
                               &relay__v1__admin_response__descriptor, on_page, o);
  return w->call != NULL;
}

/* Appends a page's sessions as JSON objects, comma-separated from the
 * *count already in b's array. */
static void page_items(cm_buf *b, uint64_t *count, const Relay__V1__AdminResponse *r) {
  for (size_t i = 0; i < r->n_sessions; i++) {
    char *text = rly_status_text(r->sessions[i]);
    if (!text) continue;
    if ((*count)++ > 0) cm_buf_append(b, ",", 1);
    cm_buf_append(b, text, strlen(text));
    free(text);
  }
}

/* Why an answer is not a page we can use: a refusal (status, code). */
static int page_refusal(int status, const char *message, const Relay__V1__AdminResponse *r,
                        const char **code, const char **msg) {
  *msg = message;
  if (status != TUN_GRPC_OK) return rly_grpc_to_http(status, code);
  if (r->http_status < 200 || r->http_status > 599 || (r->http_status < 400 && r->error[0])) {
    *code = "bad_controller_answer";
    *msg = "the controller's answer was unusable";
    return 502;
  }
  if (r->http_status >= 300 || r->error[0]) {
    *code = r->error[0] ? r->error : "refused";
    *msg = r->message;
    return (int)r->http_status;
  }
  return 0;
}

/* ---- streaming the body -------------------------------------------------------------------- */

static void pump(list_op *o);

static void on_drained(void *ud) { pump(ud); }

/* Hands buffered body to the connection, a piece at a time, until its
 * queue is full.  False: wait for on_drain (or the connection failed). */
static bool flush(list_op *o) {
  while (cm_buf_size(&o->out) > 0) {
    size_t n = CM_MIN(cm_buf_size(&o->out), (size_t)FLUSH_PIECE);
    int rc = rly_conn_stream(o->c, cm_buf_head(&o->out), n);
    cm_buf_consume(&o->out, n);
    if (rc < 0) return false; /* the connection is closing: on_close frees o */
    if (rc == 1) {
      rly_conn_on_drain(o->c, on_drained, o);
      return false;
    }
  }
  return true;
}

static void stream_failed(list_op *o, const char *why) {
  cm_log(CM_LOG_WARN, "admin", "listing cut short; resetting the connection",
         CM_S("controller", o->cur < o->nw ? o->w[o->cur].name : ""), CM_S("reason", why));
  rly_conn_abort(o->c); /* on_close cancels and frees o */
}

/* Produces the next part of the body whenever the client has room. */
static void pump(list_op *o) {
  for (;;) {
    if (!flush(o)) return;
    if (o->cur == o->nw) {
      if (!o->tail_added) {
        o->tail_added = true;
        cm_buf_append(&o->out, o->tail, strlen(o->tail));
      }
      if (!flush(o)) return; /* on_drain comes back here and ends */
      rly_conn_stream_end(o->c);
      op_finish(o);
      return;
    }
    ctl_walk *w = &o->w[o->cur];
    if (w->failed) {
      o->cur++;
      continue;
    }
    if (!w->first_sent) {
      w->first_sent = true;
      if (w->first_items > 0) {
        if (o->items > 0) cm_buf_append(&o->out, ",", 1);
        cm_buf_append(&o->out, cm_buf_head(&w->first), cm_buf_size(&w->first));
        o->items += w->first_items;
      }
      cm_buf_free(&w->first);
      continue;
    }
    if (!w->next[0]) {
      o->cur++;
      continue;
    }
    if (w->call) return; /* a page is on its way */
    if (!ask_page(o, w, w->next, PAGE_SIZE)) stream_failed(o, "no link to the controller");
    return;
  }
}

static void on_next_page(list_op *o, ctl_walk *w, int status, const char *message,
                         const Relay__V1__AdminResponse *r) {
  const char *code, *msg;
  if (page_refusal(status, message, r, &code, &msg) != 0) {
    if (o->retries++ < PAGE_RETRIES && ask_page(o, w, w->next, PAGE_SIZE)) return;
    stream_failed(o, msg && msg[0] ? msg : code);
    return;
  }
  o->retries = 0;
  page_items(&o->out, &o->items, r);
  snprintf(w->next, sizeof w->next, "%s", r->next_page_token);
  pump(o);
}

/* ---- the first pages, before the status line ------------------------------------------------ */

/* The status line and the body's opening; pump() does the rest.  False
 * when no body follows: for HEAD the head was the whole answer (or the
 * connection failed), and o is done. */
static bool start_body(list_op *o) {
  char hdr[768];
  snprintf(hdr, sizeof hdr, "%sCache-Control: no-store\r\n", o->cors);
  rly_http_response r = {
      .status = 200, .content_type = "application/json", .extra_headers = hdr, .chunked = true};
  rly_conn_respond(o->c, &r);
  if (!rly_http_streaming(o->c->http)) {
    op_finish(o);
    return false;
  }
  cm_buf_append(&o->out, "{\"sessions\":[", 13);
  return true;
}

static void on_first_page(list_op *o, ctl_walk *w, int status, const char *message,
                          const Relay__V1__AdminResponse *r) {
  const char *code, *msg;
  int refusal = page_refusal(status, message, r, &code, &msg);
  if (refusal == 503) {
    w->failed = true; /* unreachable: list what the others hold */
    cm_log(CM_LOG_WARN, "admin", "list: a controller did not answer", CM_S("controller", w->name),
           CM_S("message", message));
  } else if (refusal) {
    if (!o->refused) { /* a refusal is an answer, not an empty list */
      o->refused = refusal;
      snprintf(o->refused_code, sizeof o->refused_code, "%s", code);
      snprintf(o->refused_msg, sizeof o->refused_msg, "%s", msg ? msg : "");
    }
    w->failed = true;
  } else {
    w->answered = true;
    page_items(&w->first, &w->first_items, r);
    snprintf(w->next, sizeof w->next, "%s", r->next_page_token);
  }
  if (--o->waiting > 0) return;
  size_t ok = 0;
  for (size_t i = 0; i < o->nw; i++)
    ok += o->w[i].answered;
  if (o->refused)
    respond_error(o, o->refused, o->refused_code, o->refused_msg[0] ? o->refused_msg : NULL);
  else if (ok == 0)
    respond_error(o, 503, "controller_unavailable", "the controller could not be reached");
  else if (start_body(o))
    pump(o);
}

/* ---- one page ----------------------------------------------------------------------------------
 */

static void on_one_page(list_op *o, ctl_walk *w, int status, const char *message,
                        const Relay__V1__AdminResponse *r) {
  const char *code, *msg;
  int refusal = page_refusal(status, message, r, &code, &msg);
  if (refusal) {
    respond_error(o, refusal, code, refusal == 503 ? "the controller could not be reached" : msg);
    return;
  }
  /* The next page: this controller's, or the first of the next one. */
  char next[MAX_PAGE_TOKEN] = "";
  if (r->next_page_token[0]) {
    page_token_make(w->name, r->next_page_token, next, sizeof next);
  } else {
    char names[MAX_CONTROLLERS][TUN_CONTROLLER_NAME_MAX];
    size_t n = rly_ctl_controllers(o->edge->ctl, names, MAX_CONTROLLERS);
    for (size_t i = 0; i < n && !next[0]; i++)
      if (strcmp(names[i], w->name) > 0) page_token_make(names[i], "", next, sizeof next);
  }
  if (!start_body(o)) return;
  page_items(&o->out, &o->items, r);
  if (next[0]) snprintf(o->tail, sizeof o->tail, "],\"next_page_token\":\"%s\"}", next);
  o->cur = o->nw; /* pump only flushes and ends */
  pump(o);
}

static void on_page(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                    const char *controller) {
  list_op *o = ud;
  ctl_walk *w = walk_of(o, controller);
  if (!w) return; /* cannot happen: calls are pinned to their walk's controller */
  w->call = NULL;
  const Relay__V1__AdminResponse *r = (const Relay__V1__AdminResponse *)resp;
  if (o->paged)
    on_one_page(o, w, status, message, r);
  else if (o->waiting > 0) /* before the status line */
    on_first_page(o, w, status, message, r);
  else
    on_next_page(o, w, status, message, r);
}

/* ---- entry ---------------------------------------------------------------------------------- */

/* The first `name` of the query into v: 1, 0 when absent, -1 when it does
 * not decode (too long, %00): a refusal, not an unpaged listing. */
static int query_param(const rly_http_request *req, const char *name, char *v, size_t vlen) {
  const char *cur = req->query;
  return rly_http_query_next(&cur, name, v, vlen);
}

static bool parse_query(list_op *o, const rly_http_request *req, char *ctl, char *ctl_token,
                        bool *have_token) {
  char v[MAX_PAGE_TOKEN + 1];
  *have_token = false;
  int got = query_param(req, "limit", v, sizeof v);
  if (got < 0) return false;
  if (got > 0) {
    char *end;
    long n = strtol(v, &end, 10);
    if (!v[0] || *end || n < 1 || n > MAX_LIMIT) return false;
    o->paged = true;
    o->limit = (uint32_t)n;
  }
  if ((got = query_param(req, "page_token", v, sizeof v)) < 0) return false;
  if (got > 0 && v[0]) {
    if (!page_token_parse(v, ctl, ctl_token)) return false;
    o->paged = true;
    *have_token = true;
    if (!o->limit) o->limit = DEFAULT_LIMIT;
  }
  return true;
}

void rly_list_sessions(rly_conn *c, const rly_http_request *req, const rly_principal *p,
                       const char *cors) {
  rly_edge *s = c->w->edge;
  list_op *o = calloc(1, sizeof *o);
  if (!o) {
    rly_conn_respond_error(c, 503, "overloaded", "out of memory", NULL);
    return;
  }
  o->c = c;
  o->edge = s;
  snprintf(o->cors, sizeof o->cors, "%s", cors);
  snprintf(o->tail, sizeof o->tail, "]}");
  cm_buf_init(&o->out, 0);
  o->anonymous = p == NULL;
  if (p) {
    o->subject = strdup(p->subject ? p->subject : "");
    o->issuer = strdup(p->issuer ? p->issuer : "");
    for (size_t i = 0; i < p->scopes.n; i++)
      cm_strlist_push(&o->scopes, p->scopes.v[i]);
  }
  rly_conn_set_pending(c, o, op_cancel);
  char ctl[TUN_CONTROLLER_NAME_MAX] = "", ctl_token[MAX_CTL_TOKEN] = "";
  bool have_token;
  if (!parse_query(o, req, ctl, ctl_token, &have_token)) {
    respond_error(o, 400, "invalid_request",
                  "limit must be 1..1000 and page_token one this relay gave");
    return;
  }
  char names[MAX_CONTROLLERS][TUN_CONTROLLER_NAME_MAX];
  size_t n = rly_ctl_controllers(s->ctl, names, MAX_CONTROLLERS);
  if (o->paged) {
    const char *want = have_token ? ctl : n ? names[0] : NULL;
    if (!want) {
      respond_error(o, 503, "controller_unavailable", "no controller link is up");
      return;
    }
    o->nw = 1;
    snprintf(o->w[0].name, sizeof o->w[0].name, "%s", want);
    cm_buf_init(&o->w[0].first, 0);
    if (!ask_page(o, &o->w[0], ctl_token, o->limit))
      respond_error(o, 503, "controller_unavailable",
                    "the controller that made this page token is not linked");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(o->w[i].name, sizeof o->w[i].name, "%s", names[i]);
    cm_buf_init(&o->w[i].first, 0);
  }
  o->nw = n;
  for (size_t i = 0; i < n; i++)
    if (ask_page(o, &o->w[i], "", PAGE_SIZE))
      o->waiting++;
    else
      o->w[i].failed = true;
  if (o->waiting == 0) respond_error(o, 503, "controller_unavailable", "no controller link is up");
}
