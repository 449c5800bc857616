/*
 * test_ws_client.c — the client library's WebSocket client (rc_ws_*):
 *
 *  - against a relay in this process (plain and TLS): two clients paired
 *    through a real session, messages of every length class both ways
 *    (hashed piece by piece, so nothing is assembled), text, empty
 *    messages, data a lone peer sends first, the close handshake from
 *    each side with the codes each end sees, refusals (401 bad token,
 *    404 unknown session, 409 slot taken) with the server's message,
 *    backpressure (a paused reader stops the sender, whose queue stays
 *    bounded, and on_drain follows the resume), client pings kept
 *    answered while waiting alone, 1009 for a message over our limit;
 *  - against a stub server speaking raw bytes: the upgrade request
 *    (random key, version 13, token in Authorization and nowhere else),
 *    our frames masked with keys that change, a bad Sec-WebSocket-Accept,
 *    a refusal without JSON, a masked server frame (1002), a peer that
 *    stops answering pings (dead), one that never answers our close.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "testcerts.h"
#include "testrelay.h"
#include "websocket/websocket.h"

/* ---- sessions through the admin API --------------------------------------------- */

typedef struct session {
  char id[64], tok[2][64];
} session;

typedef struct http_wait {
  bool done;
  int status;
  char body[2048];
} http_wait;

static void on_http(void *ud, int err, const char *msg, const rc_http_response *res) {
  http_wait *w = ud;
  w->done = true;
  if (err) fail_msg("admin request: %s", msg);
  w->status = res->status;
  size_t n = CM_MIN(res->body_len, sizeof w->body - 1);
  memcpy(w->body, res->body, n);
  w->body[n] = '\0';
}

static void create_session(cm_tls_ctx *tls, int port, session *s) {
  char url[128], err[128];
  snprintf(url, sizeof url, "%s://127.0.0.1:%d/admin/sessions", tls ? "https" : "http", port);
  http_wait w = {0};
  rc_http_request req = {.method = "POST", .url = url, .tls = tls};
  assert_non_null(rc_http_start(loop, &req, on_http, &w, err, sizeof err));
  assert_true(run_until(&w.done, 10000));
  assert_int_equal(w.status, 201);
  json_t *j = json_loads(w.body, 0, NULL);
  snprintf(s->id, sizeof s->id, "%s", json_string_value(json_object_get(j, "id")));
  snprintf(s->tok[0], sizeof s->tok[0], "%s",
           json_string_value(json_object_get(j, "initiator_token")));
  snprintf(s->tok[1], sizeof s->tok[1], "%s",
           json_string_value(json_object_get(j, "responder_token")));
  json_decref(j);
}

/* ---- a client that hashes what it receives ----------------------------------------- */

typedef struct peer {
  rc_ws *ws;
  bool open, closed, drained;
  rc_ws_end end;
  EVP_MD_CTX *md;
  uint64_t rx_bytes, rx_msgs, rx_text;
  bool pause_on_rx;
} peer;

static void p_open(rc_ws *ws) { ((peer *)rc_ws_get_data(ws))->open = true; }

static void p_message(rc_ws *ws, uint8_t op, uint8_t *data, size_t len, bool fin) {
  peer *p = rc_ws_get_data(ws);
  if (len) EVP_DigestUpdate(p->md, data, len);
  p->rx_bytes += len;
  if (fin) {
    p->rx_msgs++;
    if (op == WS_TEXT) p->rx_text++;
  }
  if (p->pause_on_rx) rc_ws_pause(ws);
}

static void p_drain(rc_ws *ws) { ((peer *)rc_ws_get_data(ws))->drained = true; }

static void p_close(rc_ws *ws, const rc_ws_end *end) {
  peer *p = rc_ws_get_data(ws);
  p->closed = true;
  p->end = *end;
  p->ws = NULL;
}

static const rc_ws_cbs g_peer_cbs = {p_open, p_message, p_drain, p_close};

static void peer_connect(peer *p, cm_tls_ctx *tls, int port, const char *id, const char *token,
                         const rc_ws_opts *extra) {
  memset(p, 0, sizeof *p);
  p->md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(p->md, EVP_sha256(), NULL);
  char base[128], err[128];
  snprintf(base, sizeof base, "%s://127.0.0.1:%d", tls ? "wss" : "ws", port);
  rc_url b, u;
  assert_int_equal(rc_url_parse(base, &b, err, sizeof err), 0);
  assert_int_equal(rc_url_session(&b, id, NULL, &u, err, sizeof err), 0);
  rc_ws_opts o = extra ? *extra : (rc_ws_opts){0};
  o.url = &u;
  o.tls = tls;
  o.token = token;
  p->ws = rc_ws_connect(loop, &o, &g_peer_cbs, p, err, sizeof err);
  if (!p->ws) fail_msg("rc_ws_connect: %s", err);
}

static void peer_digest(peer *p, uint8_t out[32]) {
  unsigned n = 32;
  EVP_DigestFinal_ex(p->md, out, &n);
}

static void peer_free(peer *p) {
  if (p->ws) rc_ws_abort(p->ws);
  EVP_MD_CTX_free(p->md);
}

static void wait_open(peer *p) {
  assert_true(run_until(&p->open, 10000) || p->closed);
  if (!p->open) fail_msg("not open: %s", p->end.reason);
}

/* ---- paired through the relay ---------------------------------------------------------- */

/* Sends `len` bytes of a pattern as one message in frames of `frame`. */
static void send_message(peer *from, EVP_MD_CTX *md, size_t len, size_t frame, uint8_t seed) {
  uint8_t *buf = malloc(len ? len : 1);
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(seed + i * 7);
  EVP_DigestUpdate(md, buf, len);
  size_t off = 0;
  do {
    size_t n = CM_MIN(frame, len - off);
    int rc = rc_ws_send(from->ws, off == 0 ? WS_BINARY : WS_CONT, buf + off, n, off + n == len);
    assert_true(rc >= 0);
    off += n;
  } while (off < len);
  free(buf);
}

static void exchange_both_ways(cm_tls_ctx *tls, int port) {
  session s;
  create_session(tls, port, &s);
  peer a, b;
  peer_connect(&a, tls, port, s.id, s.tok[0], NULL);
  wait_open(&a);
  /* A lone peer's first bytes wait at the relay for the other. */
  EVP_MD_CTX *sent_ab = EVP_MD_CTX_new(), *sent_ba = EVP_MD_CTX_new();
  EVP_DigestInit_ex(sent_ab, EVP_sha256(), NULL);
  EVP_DigestInit_ex(sent_ba, EVP_sha256(), NULL);
  send_message(&a, sent_ab, 1000, 1000, 1);
  run_ms(50);
  peer_connect(&b, tls, port, s.id, s.tok[1], NULL);
  wait_open(&b);
  static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20};
  uint64_t want = 1000;
  for (size_t i = 0; i < CM_ARRAY_LEN(lens); i++) {
    send_message(&a, sent_ab, lens[i], lens[i] > 70000 ? 50000 : lens[i] + 1, (uint8_t)i);
    send_message(&b, sent_ba, lens[i], 4096, (uint8_t)(i + 100));
    want += lens[i];
  }
  assert_int_equal(rc_ws_send(a.ws, WS_TEXT, "h\xc3\xa9llo", 6, true), 0);
  EVP_DigestUpdate(sent_ab, "h\xc3\xa9llo", 6);
  uint64_t end = cm_now_mono_ms() + 20000;
  while ((b.rx_bytes < want + 6 || a.rx_bytes < want - 1000) && cm_now_mono_ms() < end)
    run_ms(10);
  assert_int_equal(b.rx_bytes, want + 6);
  assert_int_equal(b.rx_msgs, CM_ARRAY_LEN(lens) + 2);
  assert_int_equal(b.rx_text, 1);
  assert_int_equal(a.rx_msgs, CM_ARRAY_LEN(lens));
  uint8_t h1[32], h2[32], h3[32], h4[32];
  unsigned n = 32;
  EVP_DigestFinal_ex(sent_ab, h1, &n);
  EVP_DigestFinal_ex(sent_ba, h2, &n);
  peer_digest(&b, h3);
  peer_digest(&a, h4);
  assert_memory_equal(h1, h3, 32);
  assert_memory_equal(h2, h4, 32);

  /* The close handshake: A begins it, both learn how it ended. */
  rc_ws_close(a.ws, 1000, "bye");
  assert_false(rc_ws_is_open(a.ws));
  assert_true(run_until(&a.closed, 10000));
  assert_true(run_until(&b.closed, 10000));
  assert_int_equal(a.end.kind, RC_WS_CLOSED);
  assert_false(a.end.by_peer);
  assert_int_equal(a.end.code, 1000);
  assert_int_equal(b.end.kind, RC_WS_CLOSED);
  assert_true(b.end.by_peer);
  assert_int_equal(b.end.code, 1000);
  assert_true(a.end.opened && b.end.opened);
  EVP_MD_CTX_free(sent_ab);
  EVP_MD_CTX_free(sent_ba);
  peer_free(&a);
  peer_free(&b);
  run_ms(50);
}

static void test_pair_plain(void **state) {
  (void)state;
  tr_relay t;
  tr_start(&t, NULL, NULL, 0);
  exchange_both_ways(NULL, t.port);
  tr_stop(&t);
}

static void test_pair_tls(void **state) {
  (void)state;
  char *dir = tc_tmpdir();
  tc_cert ca = tc_make(dir, "ca", NULL, NULL, NULL, -60, 86400);
  tc_cert leaf = tc_make(dir, "leaf", &ca, "IP:127.0.0.1", "serverAuth", -60, 86400);
  tr_relay t;
  tr_start(&t, leaf.cert_path, leaf.key_path, 0);
  char err[128];
  cm_tls_ctx *tls = rc_tls_new(&(rc_tls_opts){.ca_file = ca.cert_path}, err, sizeof err);
  assert_non_null(tls);
  exchange_both_ways(tls, t.port);

  /* Without our CA the upgrade never starts. */
  cm_tls_ctx *sys = rc_tls_new(&(rc_tls_opts){0}, err, sizeof err);
  session s;
  create_session(tls, t.port, &s);
  peer a;
  peer_connect(&a, sys, t.port, s.id, s.tok[0], NULL);
  assert_true(run_until(&a.closed, 10000));
  assert_int_equal(a.end.kind, RC_WS_FAILED);
  assert_false(a.end.opened);
  assert_non_null(strstr(a.end.reason, "certificate verify failed"));
  peer_free(&a);
  cm_tls_ctx_free(sys);
  cm_tls_ctx_free(tls);
  tr_stop(&t);
  tc_free(&ca);
  tc_free(&leaf);
  tc_rmdir(dir);
}

static void expect_refusal(int port, const char *id, const char *token, int status) {
  peer p;
  peer_connect(&p, NULL, port, id, token, NULL);
  assert_true(run_until(&p.closed, 10000));
  assert_int_equal(p.end.kind, RC_WS_REFUSED);
  assert_int_equal(p.end.http_status, status);
  assert_false(p.end.opened);
  assert_true(strlen(p.end.reason) > 0);
  assert_null(strstr(p.end.reason, token)); /* never echoed */
  peer_free(&p);
}

static void test_refusals(void **state) {
  (void)state;
  tr_relay t;
  tr_start(&t, NULL, NULL, 0);
  session s;
  create_session(NULL, t.port, &s);
  expect_refusal(t.port, s.id, "AAAAAAAAAAAAAAAAAAAAAA", 401);
  expect_refusal(t.port, "AAAAAAAAAAAAAAAAAAAAAA", s.tok[0], 404);
  peer a;
  peer_connect(&a, NULL, t.port, s.id, s.tok[0], NULL);
  wait_open(&a);
  expect_refusal(t.port, s.id, s.tok[0], 409);
  peer_free(&a);
  tr_stop(&t);
}

/* A paused reader stops the sender: the sender's queue stays near its
 * watermark, and on_drain comes after the reader resumes. */
static void test_backpressure(void **state) {
  (void)state;
  tr_relay t;
  tr_start(&t, NULL, NULL, 0);
  session s;
  create_session(NULL, t.port, &s);
  peer a, b;
  rc_ws_opts small = {.high_watermark = 64 * 1024};
  peer_connect(&a, NULL, t.port, s.id, s.tok[0], &small);
  peer_connect(&b, NULL, t.port, s.id, s.tok[1], NULL);
  wait_open(&a);
  wait_open(&b);
  b.pause_on_rx = true;
  static uint8_t chunk[16384];
  uint64_t sent = 0;
  int rounds = 0;
  /* Send while the queue allows; B's socket buffers fill, then the
   * relay's queue to B, then A's socket buffers (loopback ones grow to
   * megabytes), then A's own queue. */
  while (rounds < 8192) {
    int rc = rc_ws_send(a.ws, WS_BINARY, chunk, sizeof chunk, true);
    assert_true(rc >= 0);
    sent += sizeof chunk;
    if (rc == 1) {
      a.drained = false;
      run_ms(100);
      if (!a.drained) break; /* stuck: B paused, backpressure reached us */
    }
    rounds++;
  }
  assert_true(rounds < 8192);
  assert_false(a.drained);
  assert_true(rc_ws_above_high(a.ws));
  assert_true(rc_ws_write_queued(a.ws) < 64 * 1024 + 2 * sizeof chunk + 64);
  assert_true(b.rx_bytes < sent);
  b.pause_on_rx = false;
  rc_ws_resume(b.ws);
  uint64_t end = cm_now_mono_ms() + 10000;
  while (b.rx_bytes < sent && cm_now_mono_ms() < end)
    run_ms(10);
  assert_int_equal(b.rx_bytes, sent);
  assert_true(a.drained);
  peer_free(&a);
  peer_free(&b);
  tr_stop(&t);
}

/* Client pings keep a lone peer's connection alive (the relay answers
 * them), and a message over our limit is refused with 1009. */
static void test_pings_and_limit(void **state) {
  (void)state;
  tr_relay t;
  tr_start(&t, NULL, NULL, 0);
  session s;
  create_session(NULL, t.port, &s);
  peer a, b;
  rc_ws_opts fast = {.ping_interval_ms = 100, .ping_timeout_ms = 200, .max_message = 1000};
  peer_connect(&a, NULL, t.port, s.id, s.tok[0], &fast);
  wait_open(&a);
  run_ms(1200); /* several pings, each answered */
  assert_false(a.closed);
  peer_connect(&b, NULL, t.port, s.id, s.tok[1], NULL);
  wait_open(&b);
  static uint8_t big[1001];
  assert_int_equal(rc_ws_send(b.ws, WS_BINARY, big, 1000, true), 0);
  assert_int_equal(rc_ws_send(b.ws, WS_BINARY, big, 1001, true), 0);
  assert_true(run_until(&a.closed, 5000));
  assert_int_equal(a.end.kind, RC_WS_FAILED);
  assert_int_equal(a.end.code, 1009);
  assert_int_equal(a.rx_bytes, 1000); /* nothing of the oversized one */
  assert_true(run_until(&b.closed, 5000));
  assert_int_equal(b.end.code, 1009); /* the relay passes our code on */
  peer_free(&a);
  peer_free(&b);
  tr_stop(&t);
}

/* ---- a stub server ------------------------------------------------------------------- */

typedef struct stub {
  uv_tcp_t tcp;
  int port;
  char mode; /* 'o' ok 101, 'a' bad accept, 'r' 403 text, 's' silent after 101,
                'm' masked frame after 101, 'e' echo data, never answer close */
  char request[4096];
  size_t reqlen;
  bool got_request;
  cm_stream *st;
  ws_parser parser;
  uint8_t keys[8][4];
  int nframes;
  bool upgraded;
} stub;

static stub g_stub;

static int stub_on_frame(void *ud, const ws_frame *f) {
  stub *s = ud;
  (void)f;
  if (s->nframes < 8) memcpy(s->keys[s->nframes], s->parser.key, 4);
  s->nframes++;
  return 0;
}

static int stub_on_payload(void *ud, uint8_t *data, size_t len) {
  stub *s = ud;
  if (s->mode == 'e') {
    uint8_t h[WS_MAX_HEADER];
    size_t hl = ws_frame_header(h, true, WS_BINARY, len, NULL);
    cm_stream_write(s->st, h, hl);
    cm_stream_write(s->st, data, len);
  }
  return 0;
}

static const ws_parser_cbs g_stub_parser = {stub_on_frame, stub_on_payload, NULL, NULL};

static void stub_answer(stub *s) {
  char key[64] = "", accept[WS_ACCEPT_LEN + 1] = "", resp[512];
  const char *k = strstr(s->request, "Sec-WebSocket-Key: ");
  if (k) sscanf(k + 19, "%63[^\r]", key);
  ws_accept_key(key, accept);
  if (s->mode == 'a') accept[0] = accept[0] == 'A' ? 'B' : 'A';
  if (s->mode == 'r') {
    snprintf(resp, sizeof resp, "HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope");
  } else {
    snprintf(resp, sizeof resp,
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
             "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
             accept);
  }
  cm_stream_write(s->st, resp, strlen(resp));
  if (s->mode == 'm') {
    static const uint8_t masked[] = {0x82, 0x81, 1, 2, 3, 4, 'x' ^ 1};
    cm_stream_write(s->st, masked, sizeof masked);
  }
  s->upgraded = true;
  ws_parser_config pc = {.server = true};
  ws_parser_init(&s->parser, &pc);
}

static void stub_read(cm_stream *st, uint8_t *data, size_t len) {
  stub *s = cm_stream_get_data(st);
  if (s->upgraded) {
    if (s->mode != 's') ws_parse(&s->parser, data, len, &g_stub_parser, s, NULL);
    return;
  }
  size_t n = CM_MIN(len, sizeof s->request - 1 - s->reqlen);
  memcpy(s->request + s->reqlen, data, n);
  s->reqlen += n;
  s->request[s->reqlen] = '\0';
  if (strstr(s->request, "\r\n\r\n")) {
    s->got_request = true;
    stub_answer(s);
    if (s->mode == 's') cm_stream_pause(st); /* reads nothing more, answers nothing */
  }
}

static void stub_closed(cm_stream *st, int err, const char *msg) {
  (void)err;
  (void)msg;
  stub *s = cm_stream_get_data(st);
  s->st = NULL;
}

static const cm_stream_cbs g_stub_cbs = {.on_read = stub_read, .on_close = stub_closed};

static void stub_conn(uv_stream_t *server, int status) {
  stub *s = server->data;
  int err;
  if (status < 0 || s->st) return;
  s->st = cm_stream_accept(server, &(cm_stream_opts){0}, &g_stub_cbs, s, &err);
}

static void stub_start(char mode) {
  stub *s = &g_stub;
  memset(s, 0, sizeof *s);
  s->mode = mode;
  char err[128];
  assert_int_equal(cm_tcp_listen(loop, &s->tcp, "127.0.0.1:0", 8, stub_conn, err, sizeof err), 0);
  s->tcp.data = s;
  s->port = cm_tcp_bound_port(&s->tcp);
}

static void stub_stop(void) {
  if (g_stub.st) cm_stream_abort(g_stub.st);
  uv_close((uv_handle_t *)&g_stub.tcp, NULL);
  run_ms(30);
}

static void stub_client(peer *p, char mode, const rc_ws_opts *o) {
  stub_start(mode);
  peer_connect(p, NULL, g_stub.port, "sess1", "tok-SECRET-123", o);
}

static void test_upgrade_request(void **state) {
  (void)state;
  peer p;
  stub_client(&p, 'o', NULL);
  wait_open(&p);
  const char *r = g_stub.request;
  assert_true(strncmp(r, "GET /relay/sess1 HTTP/1.1\r\n", 27) == 0);
  assert_non_null(strstr(r, "\r\nAuthorization: Bearer tok-SECRET-123\r\n"));
  /* The token travels once, in its header: not in the URL, not elsewhere. */
  assert_ptr_equal(strstr(r, "tok-SECRET-123"), strstr(r, "Bearer ") + 7);
  assert_non_null(strstr(r, "\r\nSec-WebSocket-Version: 13\r\n"));
  assert_non_null(strstr(r, "\r\nUpgrade: websocket\r\n"));
  assert_non_null(strstr(r, "\r\nHost: 127.0.0.1:"));
  char key[64] = "";
  sscanf(strstr(r, "Sec-WebSocket-Key: ") + 19, "%63[^\r]", key);
  uint8_t raw[32];
  assert_int_equal(strlen(key), 24);
  assert_int_equal(EVP_DecodeBlock(raw, (const unsigned char *)key, 24), 18); /* 16 + padding */
  /* Frames are masked, each with its own key. */
  for (int i = 0; i < 4; i++)
    assert_true(rc_ws_send(p.ws, WS_BINARY, "abcd", 4, true) >= 0);
  run_ms(100);
  assert_int_equal(g_stub.nframes, 4);
  assert_true(memcmp(g_stub.keys[0], g_stub.keys[1], 4) != 0 ||
              memcmp(g_stub.keys[1], g_stub.keys[2], 4) != 0);
  peer_free(&p);
  stub_stop();
  /* A second connection sends another key. */
  char key1[64];
  snprintf(key1, sizeof key1, "%s", key);
  stub_client(&p, 'o', NULL);
  wait_open(&p);
  sscanf(strstr(g_stub.request, "Sec-WebSocket-Key: ") + 19, "%63[^\r]", key);
  assert_string_not_equal(key, key1);
  peer_free(&p);
  stub_stop();
}

static void expect_stub_end(char mode, const rc_ws_opts *o, rc_ws_end_kind kind, const char *why,
                            void (*after_open)(peer *p)) {
  peer p;
  stub_client(&p, mode, o);
  if (after_open) {
    wait_open(&p);
    after_open(&p);
  }
  assert_true(run_until(&p.closed, 10000));
  assert_int_equal(p.end.kind, kind);
  if (!strstr(p.end.reason, why)) fail_msg("\"%s\" does not say \"%s\"", p.end.reason, why);
  peer_free(&p);
  stub_stop();
}

static void close_it(peer *p) { rc_ws_close(p->ws, 1000, NULL); }

/* A connect that fails inside rc_ws_connect (ENETUNREACH at once for a
 * multicast address) ends the client from the loop, not before the
 * caller has its handle. */
static void test_connect_fails_at_once(void **state) {
  (void)state;
  peer p = {0};
  char err[128];
  rc_url b, u;
  assert_int_equal(rc_url_parse("ws://224.0.0.1:9", &b, err, sizeof err), 0);
  assert_int_equal(rc_url_session(&b, "AAAAAAAAAAAAAAAAAAAAAA", NULL, &u, err, sizeof err), 0);
  rc_ws_opts o = {.url = &u, .token = "t"};
  p.ws = rc_ws_connect(loop, &o, &g_peer_cbs, &p, err, sizeof err);
  assert_non_null(p.ws);
  assert_false(p.closed); /* not inside rc_ws_connect */
  assert_true(run_until(&p.closed, 5000));
  assert_int_equal(p.end.kind, RC_WS_FAILED);
  if (!strstr(p.end.reason, "cannot connect to 224.0.0.1:9"))
    fail_msg("reason \"%s\"", p.end.reason);
}

static void test_bad_servers(void **state) {
  (void)state;
  expect_stub_end('a', NULL, RC_WS_FAILED, "wrong Sec-WebSocket-Accept", NULL);
  expect_stub_end('r', NULL, RC_WS_REFUSED, "HTTP 403", NULL);
  expect_stub_end('m', NULL, RC_WS_FAILED, "masked server frame", NULL);
  rc_ws_opts quick = {.ping_interval_ms = 100, .ping_timeout_ms = 300};
  uint64_t t0 = cm_now_mono_ms();
  expect_stub_end('s', &quick, RC_WS_FAILED, "did not answer a ping", NULL);
  assert_true(cm_now_mono_ms() - t0 < 3000);
  rc_ws_opts close_fast = {.close_timeout_ms = 300};
  expect_stub_end('e', &close_fast, RC_WS_FAILED, "did not answer our close", close_it);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  loop = uv_default_loop();
  cm_log_set_level(CM_LOG_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_upgrade_request),
      cmocka_unit_test(test_bad_servers),
      cmocka_unit_test(test_connect_fails_at_once),
      cmocka_unit_test(test_pair_plain),
      cmocka_unit_test(test_pair_tls),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_backpressure),
      cmocka_unit_test(test_pings_and_limit),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  uv_loop_close(loop);
  return rc;
}
