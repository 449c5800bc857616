/*
 * test_resp.c — unit tests for the clients' sans-I/O HTTP/1.1 response
 * parser (common/common.h, cm_http_resp): every framing (Content-Length,
 * chunked, end of connection), fed whole and one byte at a time, the body
 * cap at its exact edge, malformed and oversized heads, responses cut
 * short, bodiless statuses, interim 1xx responses, bytes after the
 * response (and how many were consumed, which after a 101 is where the
 * WebSocket frames start), the headers kept and their limits, and that a
 * result, once reached, stays.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

enum { BIG = 1 << 20 };

/* Feeds text whole (step 0) or in steps of `step` bytes, stopping at the
 * first result, and returns it; eof also signals the end of the
 * connection when the response is still open. */
static int parse(cm_http_resp *r, size_t max_body, const char *text, size_t step, bool eof) {
  cm_http_resp_init(r, max_body, 0);
  size_t len = strlen(text), off = 0;
  int rc = 0;
  while (rc == 0 && off < len) {
    size_t n = step && step < len - off ? step : len - off;
    rc = cm_http_resp_feed(r, text + off, n, NULL);
    off += n;
  }
  if (rc == 0 && eof) rc = cm_http_resp_eof(r);
  return rc;
}

/* Parses whole and byte by byte; both must agree on status and body. */
static void expect_ok(const char *text, bool eof, int status, const char *body) {
  static const size_t steps[] = {0, 1, 7};
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    cm_http_resp r;
    assert_int_equal(parse(&r, BIG, text, steps[i], eof), 1);
    assert_int_equal(r.status, status);
    assert_int_equal(cm_buf_size(&r.body), strlen(body));
    assert_memory_equal(cm_buf_head(&r.body), body, strlen(body));
    cm_http_resp_free(&r);
  }
}

static void expect_fail(const char *text, size_t max_body, int want) {
  cm_http_resp r;
  assert_int_equal(parse(&r, max_body, text, 0, true), want);
  assert_non_null(r.errmsg);
  assert_true(cm_buf_size(&r.body) <= max_body);
  cm_http_resp_free(&r);
}

static void test_content_length(void **state) {
  (void)state;
  expect_ok("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
            "{\"keys\": []}\n",
            false, 200, "{\"keys\": []}\n");
  expect_ok("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, 200, "");
  /* Other statuses come out as they are: the caller decides. */
  expect_ok("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", false, 404,
            "not found");
  expect_ok("HTTP/1.0 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", false, 503,
            "busy");
}

static void test_chunked(void **state) {
  (void)state;
  expect_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false, 200, "hello, world");
  expect_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false, 200, "");
}

static void test_close_delimited(void **state) {
  (void)state;
  const char *text = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"issuer\": \"x\"}";
  cm_http_resp r;
  /* Without the end of the connection the body is still open... */
  assert_int_equal(parse(&r, BIG, text, 0, false), 0);
  /* ...an empty read is not the end... */
  assert_int_equal(cm_http_resp_feed(&r, "", 0, NULL), 0);
  /* ...and the end completes it. */
  assert_int_equal(cm_http_resp_eof(&r), 1);
  assert_int_equal(r.status, 200);
  assert_int_equal(cm_buf_size(&r.body), 15);
  cm_http_resp_free(&r);
  expect_ok(text, true, 200, "{\"issuer\": \"x\"}");
  expect_ok("HTTP/1.0 200 OK\r\n\r\nold", true, 200, "old");
}

static void test_bodiless_statuses(void **state) {
  (void)state;
  expect_ok("HTTP/1.1 204 No Content\r\n\r\n", false, 204, "");
  expect_ok("HTTP/1.1 304 Not Modified\r\n\r\n", false, 304, "");
  /* RFC 9112 §6.3: 1xx, 204 and 304 end at their head, whatever
   * Content-Length says (for 304 it is the length the 200 would have). */
  expect_ok("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", false, 304, "");
  expect_ok("HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n", false, 204, "");
  expect_ok("HTTP/1.1 100 Continue\r\nContent-Length: 4\r\n\r\nHTTP/1.1 200 OK\r\n"
            "Content-Length: 2\r\n\r\nok",
            false, 200, "ok");
}

/* RFC 9110 §15.2: a client parses any number of interim responses before
 * the final one, even unasked. */
static void test_interim_responses(void **state) {
  (void)state;
  expect_ok("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </k>\r\n\r\n"
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false, 200, "ok");
  /* 101 answers an upgrade we never ask for: final, for the caller to refuse. */
  expect_ok("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            false, 101, "");
}

/* The first complete response is the answer: bytes after it (a second
 * response on a connection we asked to close) change neither its status
 * nor its body, whether they come in the same read or later. */
static void test_bytes_after_response(void **state) {
  (void)state;
  expect_ok("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            "HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad",
            false, 200, "ok");
  expect_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n",
            false, 200, "ok");
}

static void test_body_cap(void **state) {
  (void)state;
  const char *ten = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
  cm_http_resp r;
  assert_int_equal(parse(&r, 10, ten, 0, false), 1);
  assert_int_equal(cm_buf_size(&r.body), 10);
  cm_http_resp_free(&r);
  expect_fail(ten, 9, -EFBIG);
  cm_http_resp_init(&r, 9, 0);
  assert_int_equal(cm_http_resp_feed(&r, ten, strlen(ten), NULL), -EFBIG);
  assert_string_equal(r.errmsg, "response body too large");
  cm_http_resp_free(&r);
  /* The cap holds for every framing. */
  expect_fail("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n"
              "0\r\n\r\n",
              10, -EFBIG);
  expect_fail("HTTP/1.1 200 OK\r\n\r\n0123456789a", 10, -EFBIG);
}

static void test_malformed(void **state) {
  (void)state;
  expect_fail("HTTP/1.1 2000 OK\r\n\r\n", BIG, -EPROTO);
  expect_fail("XTTP/1.1 200 OK\r\n\r\n", BIG, -EPROTO);
  expect_fail("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", BIG,
              -EPROTO);
  expect_fail("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", BIG, -EPROTO);
  expect_fail("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", BIG, -EPROTO);
  /* libhttp-parser takes 1 to 3 digits; RFC 9110 §15 wants 100..599. */
  static const char *const statuses[] = {"0", "20", "99", "600", "999"};
  for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
    char text[64];
    snprintf(text, sizeof text, "HTTP/1.1 %s OK\r\nContent-Length: 0\r\n\r\n", statuses[i]);
    cm_http_resp r;
    assert_int_equal(parse(&r, BIG, text, 0, true), -EPROTO);
    assert_string_equal(r.errmsg, "invalid status code");
    cm_http_resp_free(&r);
  }
  expect_ok("HTTP/1.1 599 Edge\r\nContent-Length: 0\r\n\r\n", false, 599, "");
  cm_http_resp r;
  assert_int_equal(parse(&r, BIG, "<html>", 0, false), -EPROTO);
  assert_string_equal(r.errmsg, "invalid constant string");
  cm_http_resp_free(&r);
}

static void test_head_too_large(void **state) {
  (void)state;
  /* One header line past the kept head's bound, and past libhttp-parser's
   * 80 KiB bound on the head: the first limit reached names it. */
  size_t n = 90 * 1024;
  char *text = malloc(n + 64);
  assert_non_null(text);
  int off = snprintf(text, 64, "HTTP/1.1 200 OK\r\nX-Fill: ");
  memset(text + off, 'a', n);
  strcpy(text + off + n, "\r\n\r\n");
  expect_fail(text, BIG, -EPROTO);
  cm_http_resp r;
  assert_int_equal(parse(&r, BIG, text, 4096, false), -EPROTO);
  assert_string_equal(r.errmsg, "response headers too large");
  cm_http_resp_free(&r);
  free(text);
}

/* Exactly at the bounds passes; one more fails. */
static void test_header_limits(void **state) {
  (void)state;
  cm_buf b;
  cm_buf_init(&b, 0);
  for (int extra = 0; extra < 2; extra++) {
    cm_buf_reset(&b);
    cm_buf_printf(&b, "HTTP/1.1 204 No Content\r\n");
    for (int i = 0; i < CM_HTTP_RESP_MAX_HEADERS + extra; i++)
      cm_buf_printf(&b, "X-H%d: %d\r\n", i, i);
    cm_buf_printf(&b, "\r\n");
    cm_buf_append(&b, "", 1);
    cm_http_resp r;
    int rc = parse(&r, BIG, (const char *)cm_buf_head(&b), 0, false);
    if (extra == 0) {
      assert_int_equal(rc, 1);
      assert_int_equal(cm_http_resp_header_count(&r), CM_HTTP_RESP_MAX_HEADERS);
      assert_string_equal(cm_http_resp_header(&r, "x-h99"), "99");
    } else {
      assert_int_equal(rc, -EPROTO);
      assert_string_equal(r.errmsg, "too many headers");
    }
    cm_http_resp_free(&r);
  }
  /* Names and values: NUL-terminated pieces fill the kept head. */
  for (int extra = 0; extra < 2; extra++) {
    size_t fill = CM_HTTP_RESP_MAX_HEAD - 3 + (size_t)extra; /* "X\0" + fill + "\0" */
    char *text = malloc(fill + 64);
    assert_non_null(text);
    int off = snprintf(text, 64, "HTTP/1.1 204 No Content\r\nX: ");
    memset(text + off, 'v', fill);
    strcpy(text + off + fill, "\r\n\r\n");
    cm_http_resp r;
    assert_int_equal(parse(&r, BIG, text, 1000, false), extra ? -EPROTO : 1);
    if (!extra) assert_int_equal(strlen(cm_http_resp_header(&r, "x")), fill);
    cm_http_resp_free(&r);
    free(text);
  }
  cm_buf_free(&b);
}

/* Headers of the final response, fed whole and cut anywhere: looked up by
 * name in any case, blanks around values removed, repeats in order, and
 * nothing of an interim response's. */
static void test_headers(void **state) {
  (void)state;
  const char *text = "HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
                     "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                     "WWW-Authenticate:   Bearer realm=\"relay\"  \t\r\nX-Empty:\r\n"
                     "Set-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 2\r\n\r\n{}";
  for (size_t step = 0; step < 9; step++) {
    cm_http_resp r;
    assert_int_equal(parse(&r, BIG, text, step, false), 1);
    assert_int_equal(r.status, 401);
    assert_int_equal(cm_http_resp_header_count(&r), 6);
    assert_string_equal(cm_http_resp_header(&r, "content-type"), "application/json");
    assert_string_equal(cm_http_resp_header(&r, "WWW-AUTHENTICATE"), "Bearer realm=\"relay\"");
    assert_string_equal(cm_http_resp_header(&r, "X-Empty"), "");
    assert_string_equal(cm_http_resp_header(&r, "Set-Cookie"), "a=1");
    assert_null(cm_http_resp_header(&r, "X-Interim"));
    assert_null(cm_http_resp_header(&r, "Content"));
    const char *n, *v;
    assert_true(cm_http_resp_header_at(&r, 4, &n, &v));
    assert_string_equal(n, "set-cookie");
    assert_string_equal(v, "b=2");
    assert_false(cm_http_resp_header_at(&r, 6, &n, &v));
    cm_http_resp_free(&r);
  }
  /* None before the response is complete. */
  cm_http_resp r;
  assert_int_equal(
      parse(&r, BIG, "HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 5\r\n\r\nab", 0, false), 0);
  assert_int_equal(cm_http_resp_header_count(&r), 0);
  assert_null(cm_http_resp_header(&r, "A"));
  cm_http_resp_free(&r);
}

/* The answer to an upgrade ends at its head: consumed says where the new
 * protocol's bytes start, in whatever pieces the bytes come. */
static void test_upgrade_consumed(void **state) {
  (void)state;
  static const char head[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\n\r\n";
  static const char frames[] = "\x82\x03"
                               "abc\x81\x00";
  char text[sizeof head + sizeof frames];
  size_t hl = sizeof head - 1, total = hl + sizeof frames - 1;
  memcpy(text, head, hl);
  memcpy(text + hl, frames, sizeof frames - 1);
  for (size_t step = 1; step <= total; step++) {
    cm_http_resp r;
    cm_http_resp_init(&r, BIG, 0);
    size_t off = 0, used = 0;
    int rc = 0;
    while (rc == 0 && off < total) {
      size_t n = CM_MIN(step, total - off);
      rc = cm_http_resp_feed(&r, text + off, n, &used);
      assert_true(used <= n);
      if (rc == 0) assert_int_equal(used, n);
      off += used;
      if (rc != 0) break;
    }
    assert_int_equal(rc, 1);
    assert_int_equal(r.status, 101);
    assert_int_equal(off, hl); /* the frames are left for the codec */
    assert_string_equal(cm_http_resp_header(&r, "sec-websocket-accept"), "abc=");
    assert_int_equal(cm_buf_size(&r.body), 0);
    /* Once complete nothing more is consumed. */
    assert_int_equal(cm_http_resp_feed(&r, frames, 2, &used), 1);
    assert_int_equal(used, 0);
    cm_http_resp_free(&r);
  }
  /* Bytes after an ordinary response are not consumed either. */
  const char *two = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";
  cm_http_resp r;
  cm_http_resp_init(&r, BIG, 0);
  size_t used = 0;
  assert_int_equal(cm_http_resp_feed(&r, two, strlen(two), &used), 1);
  assert_int_equal(used, strlen(two) - 5);
  cm_http_resp_free(&r);
}

/* The answer to a HEAD has a Content-Length and no body. */
static void test_head_request(void **state) {
  (void)state;
  cm_http_resp r;
  cm_http_resp_init(&r, BIG, CM_HTTP_RESP_HEAD | CM_HTTP_RESP_SECRET);
  const char *text = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
  size_t used = 0;
  assert_int_equal(cm_http_resp_feed(&r, text, strlen(text), &used), 1);
  assert_int_equal(used, strlen(text));
  assert_string_equal(cm_http_resp_header(&r, "content-length"), "100");
  cm_http_resp_free(&r);
}

static void test_cut_short(void **state) {
  (void)state;
  static const char *const texts[] = {
      "",
      "HTTP/1.1 200",
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
  };
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    cm_http_resp r;
    assert_int_equal(parse(&r, BIG, texts[i], 0, true), 0);
    cm_http_resp_free(&r);
  }
}

static void test_result_sticks(void **state) {
  (void)state;
  cm_http_resp r;
  assert_int_equal(parse(&r, BIG, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0, false), 1);
  assert_int_equal(cm_http_resp_feed(&r, "garbage", 7, NULL), 1);
  assert_int_equal(cm_http_resp_eof(&r), 1);
  assert_int_equal(r.status, 200);
  assert_int_equal(cm_buf_size(&r.body), 2);
  cm_http_resp_free(&r);
  assert_int_equal(parse(&r, BIG, "nonsense", 0, false), -EPROTO);
  assert_int_equal(cm_http_resp_feed(&r, "HTTP/1.1 200 OK\r\n\r\n", 19, NULL), -EPROTO);
  assert_int_equal(cm_http_resp_eof(&r), -EPROTO);
  cm_http_resp_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_content_length),
      cmocka_unit_test(test_chunked),
      cmocka_unit_test(test_close_delimited),
      cmocka_unit_test(test_bodiless_statuses),
      cmocka_unit_test(test_body_cap),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_head_too_large),
      cmocka_unit_test(test_cut_short),
      cmocka_unit_test(test_result_sticks),
      cmocka_unit_test(test_interim_responses),
      cmocka_unit_test(test_bytes_after_response),
      cmocka_unit_test(test_header_limits),
      cmocka_unit_test(test_headers),
      cmocka_unit_test(test_upgrade_consumed),
      cmocka_unit_test(test_head_request),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
