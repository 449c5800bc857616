/*
 * net.c — address parsing and listening sockets.  Addresses are numeric:
 * a relay binds what it is told and never resolves names on the loop.
 */
#include "common/common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cm_parse_hostport(const char *s, const char *def_host, char *host, size_t hostlen, int *port) {
  const char *colon;
  const char *h = s;
  size_t hlen;
  if (s[0] == '[') {
    const char *rb = strchr(s, ']');
    if (!rb || rb[1] != ':') return -EINVAL;
    h = s + 1;
    hlen = (size_t)(rb - h);
    colon = rb + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon) return -EINVAL;
    hlen = (size_t)(colon - s);
    if (memchr(s, ':', hlen)) return -EINVAL; /* bare IPv6 needs brackets */
  }
  if (hlen == 0) {
    if (!def_host) return -EINVAL;
    h = def_host;
    hlen = strlen(def_host);
  }
  if (hlen + 1 > hostlen) return -ENAMETOOLONG;
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (*end != '\0' || colon[1] == '\0' || p < 0 || p > 65535) return -EINVAL;
  *port = (int)p;
  return 0;
}

int cm_sockaddr_from(const char *host, int port, struct sockaddr_storage *out) {
  memset(out, 0, sizeof *out);
  struct sockaddr_in *v4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    return 0;
  }
  if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    return 0;
  }
  return -EINVAL;
}

bool cm_host_is_loopback(const char *host) {
  struct sockaddr_storage ss;
  if (cm_sockaddr_from(host, 0, &ss) != 0) return false;
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)&ss;
    return (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
  }
  const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&ss;
  return IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
}

int cm_tcp_bind_fd(const char *hostport, bool reuseport, int *fd_out, char *err, size_t errlen) {
  char host[256];
  int port, rc;
  struct sockaddr_storage ss;
  if (cm_parse_hostport(hostport, "0.0.0.0", host, sizeof host, &port) != 0 ||
      cm_sockaddr_from(host, port, &ss) != 0) {
    snprintf(err, errlen, "invalid listen address %s (want IP:PORT or [IPv6]:PORT)", hostport);
    return -EINVAL;
  }
  /* A socket inherited from systemd (socket activation) for this very
   * address is taken as it is: it outlives us, which is the point.  Not
   * for SO_REUSEPORT groups: each member must be a socket of its own. */
  int fd = reuseport ? -1 : cm_activation_take(&ss);
  if (fd >= 0) {
    *fd_out = fd;
    return 0;
  }
  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    rc = -errno;
    snprintf(err, errlen, "socket: %s", strerror(errno));
    return rc;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    rc = -errno;
    snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(errno));
    close(fd);
    return rc;
  }
  socklen_t sl = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  if (bind(fd, (const struct sockaddr *)&ss, sl) != 0) {
    rc = -errno;
    snprintf(err, errlen, "bind %s: %s", hostport, uv_strerror(rc));
    close(fd);
    return rc;
  }
  *fd_out = fd;
  return 0;
}

int cm_tcp_bind(uv_loop_t *loop, uv_tcp_t *tcp, const char *hostport, char *err, size_t errlen) {
  /* Bind the socket ourselves: uv_tcp_bind defers EADDRINUSE to listen(),
   * and we want the precise error now, before anything else starts. */
  int fd, rc = cm_tcp_bind_fd(hostport, false, &fd, err, errlen);
  if (rc != 0) return rc;
  if ((rc = uv_tcp_init(loop, tcp)) != 0) {
    snprintf(err, errlen, "tcp init: %s", uv_strerror(rc));
    close(fd);
    return rc;
  }
  if ((rc = uv_tcp_open(tcp, fd)) != 0) {
    snprintf(err, errlen, "tcp open: %s", uv_strerror(rc));
    close(fd);
    uv_close((uv_handle_t *)tcp, NULL);
    return rc;
  }
  return 0;
}

int cm_tcp_listen(uv_loop_t *loop, uv_tcp_t *tcp, const char *hostport, int backlog,
                  uv_connection_cb cb, char *err, size_t errlen) {
  int rc = cm_tcp_bind(loop, tcp, hostport, err, errlen);
  if (rc != 0) return rc;
  if ((rc = uv_listen((uv_stream_t *)tcp, backlog > 0 ? backlog : 511, cb)) != 0) {
    snprintf(err, errlen, "listen on %s: %s", hostport, uv_strerror(rc));
    uv_close((uv_handle_t *)tcp, NULL);
    return rc;
  }
  return 0;
}

int cm_tcp_bound_port(const uv_tcp_t *tcp) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getsockname(tcp, (struct sockaddr *)&ss, &len) != 0) return -1;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

int cm_fd_bound_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

void cm_sockaddr_text(const struct sockaddr *sa, char *out, size_t outlen) {
  char ip[INET6_ADDRSTRLEN] = "?";
  /* Copied out: a struct sockaddr may be less aligned than the family's. */
  if (sa->sa_family == AF_INET6) {
    struct sockaddr_in6 a;
    memcpy(&a, sa, sizeof a);
    uv_ip6_name(&a, ip, sizeof ip);
    snprintf(out, outlen, "[%s]:%d", ip, ntohs(a.sin6_port));
  } else if (sa->sa_family == AF_INET) {
    struct sockaddr_in a;
    memcpy(&a, sa, sizeof a);
    uv_ip4_name(&a, ip, sizeof ip);
    snprintf(out, outlen, "%s:%d", ip, ntohs(a.sin_port));
  } else {
    snprintf(out, outlen, "local");
  }
}
