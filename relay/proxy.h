/*
 * proxy.h — (private to relay/) the client's real address behind a proxy,
 * sans-I/O: the PROXY protocol header (versions 1 and 2, as HAProxy's
 * proxy-protocol.txt defines them), lists of trusted proxies as CIDR
 * blocks, and the X-Forwarded-For / Forwarded (RFC 7239) request headers.
 *
 * Only a trusted proxy may say who the client is.  A connection from an
 * address in --trusted-proxies must open with a PROXY header when
 * --proxy-protocol is on; one from anywhere else must not (a PROXY header
 * from an untrusted source is refused, rly_proxy_signature says whether
 * bytes start like one).  Forwarding headers are read only when the peer
 * (the PROXY header's source, else the socket's) is trusted, walking the
 * hops from the nearest back and stopping at the first untrusted one.
 *
 * Nothing here reads a socket or keeps state between calls: the caller
 * gathers the first bytes of a connection (at most RLY_PROXY_MAX) and asks
 * again as more arrive.
 */
#ifndef RELAY_PROXY_H
#define RELAY_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* v1 is at most 107 bytes; v2 is 16 plus what its length says, which we
 * bound (HAProxy's TLVs fit many times over). */
#define RLY_PROXY_V1_MAX 107
#define RLY_PROXY_MAX    2048

typedef enum {
  RLY_PROXY_BAD = -1, /* not a valid header: refuse the connection */
  RLY_PROXY_MORE = 0, /* a valid beginning: read more */
  RLY_PROXY_DONE = 1,
} rly_proxy_status;

typedef struct rly_proxy_header {
  int version; /* 1 or 2 */
  /* The proxy speaks for itself (v2 LOCAL, v1 UNKNOWN, or an address
   * family without IPs): keep the socket's own address. */
  bool local;
  struct sockaddr_storage src, dst; /* the client and the address it dialled */
  size_t length;                    /* header bytes; what follows is the connection's */
} rly_proxy_header;

/* Parses a PROXY header at the start of data[0..len).  DONE fills *h;
 * BAD says why in *why (a constant string). */
rly_proxy_status rly_proxy_parse(const uint8_t *data, size_t len, rly_proxy_header *h,
                                 const char **why);

/* Whether data (len >= 1 bytes so far) starts like a PROXY header of
 * either version: 1 yes, 0 no, -1 too few bytes to tell. */
int rly_proxy_signature(const uint8_t *data, size_t len);

/* ---- trusted proxies ------------------------------------------------------ */

typedef struct rly_cidr {
  int family; /* AF_INET or AF_INET6 */
  uint8_t addr[16];
  int bits;
} rly_cidr;

typedef struct rly_cidrs {
  rly_cidr *v;
  size_t n;
} rly_cidrs;

/* "10.0.0.0/8", "192.0.2.7" (/32), "2001:db8::/32", "::1" (/128).  Host
 * bits must be zero (a typo like 10.0.0.1/8 is refused, not widened). */
int rly_cidr_parse(const char *text, rly_cidr *out);
/* Parses every entry; on failure *bad is the entry refused. */
int rly_cidrs_parse(const char *const *texts, size_t n, rly_cidrs *out, const char **bad);
void rly_cidrs_free(rly_cidrs *l);
/* IPv4-mapped IPv6 addresses (a dual-stack listener's) match as IPv4. */
bool rly_cidrs_match(const rly_cidrs *l, const struct sockaddr *sa);
/* The same for an address as text, "ip:port" or "[ipv6]:port" (false for
 * anything else). */
bool rly_cidrs_match_text(const rly_cidrs *l, const char *hostport);
/* An address as the text the rest of the relay uses ("ip:port",
 * "[ipv6]:port"), IPv4-mapped IPv6 written as IPv4. */
void rly_proxy_addr_text(const struct sockaddr_storage *ss, char *out, size_t outlen);

/* ---- forwarding headers --------------------------------------------------- */

/* The client's address from Forwarded (preferred: the standard) or
 * X-Forwarded-For, given the peer that sent them and whom to trust.
 * values are the header's field values in the order they came (a header
 * may repeat); hops are read from the last back: a trusted hop is
 * skipped, the first untrusted one is the client.  A hop that is not an
 * IP address (RFC 7239's "unknown" or an obfuscated name, or garbage)
 * ends the walk at the last address passed.  Returns true and fills *out
 * when a hop replaced the peer; false keeps the peer.  An untrusted peer's
 * headers are never read. */
bool rly_forwarded_client(const rly_cidrs *trusted, const struct sockaddr *peer,
                          const char *const *forwarded, size_t nforwarded, const char *const *xff,
                          size_t nxff, struct sockaddr_storage *out);

#endif
