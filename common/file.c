/*
 * file.c — durable file helpers.  Keys and state are written through a
 * temporary file that is fsync'd and renamed, and the directory is fsync'd,
 * so a crash leaves either the old file or the new one, never a torn one.
 */
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const void *data, size_t n) {
  const uint8_t *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int fsync_dir_of(const char *path) {
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", path);
  int dfd = open(dirname(tmp), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -errno;
  int rc = fsync(dfd) == 0 ? 0 : -errno;
  close(dfd);
  return rc;
}

int cm_write_file_atomic(const char *path, const void *data, size_t n, unsigned mode,
                         bool exclusive) {
  char tmp[PATH_MAX], rnd[CM_TOKEN_LEN + 1];
  /* A random suffix: concurrent writers and stale temp files of a crashed
   * process (whose pid may be reused) never collide with us. */
  if (cm_random_token(rnd) != 0) return -EIO;
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%s", path, rnd) >= (int)sizeof tmp) return -ENAMETOOLONG;
  if (exclusive && access(path, F_OK) == 0) return -EEXIST;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return -errno;
  int rc = write_all(fd, data, n);
  if (rc == 0 && fchmod(fd, mode) != 0) rc = -errno;
  if (rc == 0 && fsync(fd) != 0) rc = -errno;
  if (close(fd) != 0 && rc == 0) rc = -errno;
  if (rc == 0) {
    if (exclusive) {
      /* link(2) fails if the target appeared meanwhile: never overwrite. */
      rc = link(tmp, path) == 0 ? 0 : -errno;
      unlink(tmp);
    } else {
      rc = rename(tmp, path) == 0 ? 0 : -errno;
    }
  }
  if (rc != 0) {
    unlink(tmp);
    return rc;
  }
  /* The file is in place; a failed directory sync only weakens durability
   * across a power loss, so it is not reported as a failed write. */
  (void)fsync_dir_of(path);
  return 0;
}

int cm_read_file(const char *path, size_t max, char **out, size_t *outlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  cm_buf b;
  cm_buf_init(&b, max ? max + 2 : 0); /* room for the NUL */
  int rc = 0;
  for (;;) {
    size_t chunk = 65536;
    if (max && chunk > max + 1 - cm_buf_size(&b)) chunk = max + 1 - cm_buf_size(&b);
    uint8_t *p = cm_buf_reserve(&b, chunk);
    if (!p) {
      rc = -EFBIG;
      break;
    }
    ssize_t r = read(fd, p, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      rc = -errno;
      break;
    }
    if (r == 0) break;
    cm_buf_commit(&b, (size_t)r);
    if (max && cm_buf_size(&b) > max) {
      rc = -EFBIG;
      break;
    }
  }
  close(fd);
  if (rc == 0 && cm_buf_append(&b, "", 1) != 0) rc = -ENOMEM;
  if (rc != 0) {
    cm_buf_free(&b);
    return rc;
  }
  *outlen = cm_buf_size(&b) - 1;
  *out = (char *)b.data;
  return 0;
}

int cm_mkdir_p(const char *path, unsigned mode) {
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) return -ENAMETOOLONG;
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, mode) != 0 && errno != EEXIST) return -errno;
    *p = '/';
  }
  if (mkdir(tmp, mode) != 0 && errno != EEXIST) return -errno;
  return 0;
}
