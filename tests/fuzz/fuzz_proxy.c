/*
 * fuzz_proxy.c — arbitrary bytes into the PROXY protocol parser, the
 * CIDR parser and the forwarding-header walk (relay/proxy.h).
 *
 * Byte 0 picks the target.  PROXY: the rest is a connection's first
 * bytes.  A DONE header is at most RLY_PROXY_MAX long, parses the same
 * from exactly its own bytes, and every shorter prefix asks for MORE; a
 * MORE input is shorter than any header can be; BAD stays BAD however
 * many bytes follow; bytes without a signature are never a header.
 * CIDR: a parsed block has its bits within its family and contains its
 * own address.  Forwarded: the rest, split at NUL bytes, is header values
 * (the first half Forwarded, the rest X-Forwarded-For) from a trusted or
 * an untrusted peer; an untrusted peer's never change the address, and a
 * replaced one is an IP address.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "relay/proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const rly_proxy_header *a, const rly_proxy_header *b) {
  return a->version == b->version && a->local == b->local && a->length == b->length &&
         (a->local || (memcmp(&a->src, &b->src, sizeof a->src) == 0 &&
                       memcmp(&a->dst, &b->dst, sizeof a->dst) == 0));
}

static void fuzz_header(const uint8_t *data, size_t size) {
  rly_proxy_header h, h2;
  const char *why;
  rly_proxy_status st = rly_proxy_parse(data, size, &h, &why);
  if (st == RLY_PROXY_BAD && !why) abort();
  if (size > 0 && rly_proxy_signature(data, size) == 0 && st != RLY_PROXY_BAD) abort();
  if (st == RLY_PROXY_MORE && size >= RLY_PROXY_MAX) abort();
  if (st == RLY_PROXY_DONE) {
    if (h.length == 0 || h.length > size || h.length > RLY_PROXY_MAX) abort();
    if (h.version != 1 && h.version != 2) abort();
    if (!h.local && h.src.ss_family != AF_INET && h.src.ss_family != AF_INET6) abort();
    if (rly_proxy_parse(data, h.length, &h2, &why) != RLY_PROXY_DONE || !same(&h, &h2)) abort();
    for (size_t n = 0; n < h.length; n++)
      if (rly_proxy_parse(data, n, &h2, &why) != RLY_PROXY_MORE) abort();
  }
  if (st == RLY_PROXY_BAD && size < RLY_PROXY_MAX + 64) {
    uint8_t *more = malloc(size + 64);
    if (!more) return;
    memcpy(more, data, size);
    memset(more + size, '\n', 64);
    if (rly_proxy_parse(more, size + 64, &h2, &why) != RLY_PROXY_BAD) abort();
    free(more);
  }
}

static void fuzz_cidr(const uint8_t *data, size_t size) {
  char text[128];
  if (size >= sizeof text) size = sizeof text - 1;
  memcpy(text, data, size);
  text[size] = '\0';
  rly_cidr c;
  if (rly_cidr_parse(text, &c) != 0) return;
  if (c.bits < 0 || c.bits > (c.family == AF_INET ? 32 : 128)) abort();
  rly_cidrs l = {&c, 1};
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (c.family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    memcpy(&a->sin_addr, c.addr, 4);
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    memcpy(&a->sin6_addr, c.addr, 16);
  }
  if (!rly_cidrs_match(&l, (struct sockaddr *)&ss)) abort();
}

#define MAX_VALUES 8

static void fuzz_forwarded(uint8_t mode, const uint8_t *data, size_t size) {
  char *copy = malloc(size + 1);
  if (!copy) return;
  memcpy(copy, data, size);
  copy[size] = '\0';
  const char *values[MAX_VALUES];
  size_t n = 0;
  for (char *p = copy; n < MAX_VALUES;) {
    values[n++] = p;
    size_t l = strlen(p);
    if (p + l >= copy + size) break;
    p += l + 1;
  }
  const char *trusted_text[] = {"10.0.0.0/8", "2001:db8::/32", "127.0.0.1"};
  rly_cidrs trusted;
  const char *bad;
  if (rly_cidrs_parse(trusted_text, 3, &trusted, &bad) != 0) abort();
  struct sockaddr_storage peer, out;
  memset(&peer, 0, sizeof peer);
  struct sockaddr_in *a = (struct sockaddr_in *)&peer;
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = htonl(mode & 1 ? 0x0A000001 : 0xC0000201); /* 10.0.0.1 or 192.0.2.1 */
  size_t nf = mode & 2 ? n / 2 : 0;
  memset(&out, 0, sizeof out);
  bool replaced = rly_forwarded_client(&trusted, (struct sockaddr *)&peer, values, nf, values + nf,
                                       n - nf, &out);
  if (replaced && !(mode & 1)) abort();
  if (replaced && out.ss_family != AF_INET && out.ss_family != AF_INET6) abort();
  rly_cidrs_free(&trusted);
  free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  switch (data[0] % 3) {
  case 0: fuzz_header(data + 1, size - 1); break;
  case 1: fuzz_cidr(data + 1, size - 1); break;
  default: fuzz_forwarded(data[0] / 3, data + 1, size - 1);
  }
  return 0;
}
