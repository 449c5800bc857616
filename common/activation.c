/*
 * activation.c — systemd's socket activation and readiness notification,
 * spoken directly (the protocols are two environment variables and one
 * datagram; libsystemd is not needed for them).
 *
 * Socket activation (sd_listen_fds(3)): a service started with LISTEN_PID
 * equal to its pid inherits LISTEN_FDS listening sockets from fd 3 on.
 * The sockets are read once, made close-on-exec, and the variables are
 * removed so nothing started later takes them for its own.  A listener
 * then takes the inherited socket bound to its configured address instead
 * of binding one (cm_tcp_bind does, so every listener of the project can be
 * activated); sockets no listener took are reported, since a socket unit
 * that names an address the service does not serve is a mistake.
 *
 * Readiness (sd_notify(3)): one datagram of "KEY=VALUE" lines to the
 * AF_UNIX socket in NOTIFY_SOCKET ('@' for the abstract namespace).
 */
#include "common/common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define FIRST_FD 3
#define MAX_FDS  64

static struct {
  bool read;
  int n;
  int fds[MAX_FDS]; /* -1 once taken */
  char addr[MAX_FDS][64];
} g_act;

/* "ip:port" or "[ipv6]:port". */
static void addr_text(const struct sockaddr_storage *ss, char *out, size_t outlen) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
    snprintf(out, outlen, "[%s]:%d", ip, ntohs(a->sin6_port));
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    snprintf(out, outlen, "%s:%d", ip, ntohs(a->sin_port));
  }
}

static void read_environment(void) {
  if (g_act.read) return;
  g_act.read = true;
  const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
  char *end;
  long p = pid ? strtol(pid, &end, 10) : 0;
  bool ours = pid && *end == '\0' && p == (long)getpid();
  long n = ours && fds ? strtol(fds, &end, 10) : 0;
  if (!ours || *end != '\0' || n <= 0) n = 0;
  if (n > MAX_FDS) n = MAX_FDS;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  for (int i = 0; i < n; i++) {
    int fd = FIRST_FD + i;
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) continue; /* not open after all */
    fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int type = 0, listening = 0;
    socklen_t tl = sizeof type, ll = sizeof listening;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) != 0 || type != SOCK_STREAM ||
        !listening || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
      cm_log(CM_LOG_WARN, "activation", "inherited fd is not a listening TCP socket; ignored",
             CM_I("fd", fd));
      continue;
    }
    g_act.fds[g_act.n] = fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    addr_text(&ss, g_act.addr[g_act.n], sizeof g_act.addr[0]);
    g_act.n++;
  }
}

static bool same_address(int fd, const struct sockaddr_storage *want) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 || ss.ss_family != want->ss_family)
    return false;
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
    const struct sockaddr_in *b = (const struct sockaddr_in *)want;
    return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
  const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)want;
  return a->sin6_port == b->sin6_port && memcmp(&a->sin6_addr, &b->sin6_addr, 16) == 0;
}

int cm_activation_take(const struct sockaddr_storage *addr) {
  read_environment();
  for (int i = 0; i < g_act.n; i++) {
    if (g_act.fds[i] < 0 || !same_address(g_act.fds[i], addr)) continue;
    int fd = g_act.fds[i];
    g_act.fds[i] = -1;
    cm_log(CM_LOG_INFO, "activation", "listening socket inherited", CM_S("addr", g_act.addr[i]),
           CM_I("fd", fd));
    return fd;
  }
  return -1;
}

bool cm_activation_inherited(int fd) {
  read_environment();
  return fd >= FIRST_FD && fd < FIRST_FD + g_act.n;
}

size_t cm_activation_unclaimed(char *out, size_t outlen) {
  read_environment();
  size_t n = 0, o = 0;
  if (outlen) out[0] = '\0';
  for (int i = 0; i < g_act.n; i++) {
    if (g_act.fds[i] < 0) continue;
    int w = snprintf(out + o, outlen > o ? outlen - o : 0, "%s%s", n ? " " : "", g_act.addr[i]);
    if (w > 0 && o + (size_t)w < outlen) o += (size_t)w;
    n++;
  }
  return n;
}

int cm_notify(const char *state) {
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !path[0]) return 0;
  struct sockaddr_un sun;
  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  size_t n = strlen(path);
  if ((path[0] != '/' && path[0] != '@') || n >= sizeof sun.sun_path) return -EINVAL;
  memcpy(sun.sun_path, path, n);
  if (path[0] == '@') sun.sun_path[0] = '\0'; /* abstract namespace */
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  ssize_t w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, len);
  int rc = w < 0 ? -errno : 0;
  close(fd);
  return rc;
}
