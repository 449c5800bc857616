/*
 * journal.c — the registry's durable files: record encoding, CRC32C framing,
 * the append-only journal with torn-tail recovery, and snapshot compaction
 * with generation numbers.  See registry.h for the format and the crash
 * windows; registry.c decides what a record means.
 *
 * Files in the state directory (0700; every file 0600):
 *   journal   HEADER(gen) then CREATE/DELETE/REASSIGN/EXPIRE records
 *   snapshot  HEADER(gen) then one CREATE per live session, then END(count)
 *   lock      flock'd while a registry has the directory open
 * Frame: [u32 LE payload length][u32 LE CRC32C(length bytes ‖ payload)][payload].
 * The CRC covers the length too, so a flipped length bit that still looks
 * plausible is caught rather than read as a shorter record.
 */
#include "controller-stub/registry.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define FRAME_HDR      8
#define MAGIC_JOURNAL  "RLYJRNL1"
#define MAGIC_SNAPSHOT "RLYSNAP1"
#define MAGIC_LEN      8
/* A snapshot holds at most max_sessions records of < 1 KiB: 1 GiB is far
 * above any sane configuration and bounds what we read at open. */
#define SNAPSHOT_MAX ((size_t)1 << 30)

static const char *const log_comp = "registry";

/* ---- CRC32C (Castagnoli, reflected 0x82F63B78), table driven ------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[i] = c;
  }
}

uint32_t ctl_crc32c(uint32_t crc, const void *data, size_t n) {
  pthread_once(&crc_once, crc_init);
  const uint8_t *p = data;
  crc = ~crc;
  while (n--)
    crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

/* ---- little-endian encoding into a bounded stack buffer ------------------ */

typedef struct wr {
  uint8_t buf[CTL_JREC_MAX];
  size_t len;
} wr;

static void put(wr *w, const void *p, size_t n) {
  /* Every field is bounded (ids, hashes, node/url limits), so a record can
   * never reach CTL_JREC_MAX; the check is belt and braces. */
  if (w->len + n > sizeof w->buf) n = 0;
  memcpy(w->buf + w->len, p, n);
  w->len += n;
}

static void put_u8(wr *w, uint8_t v) { put(w, &v, 1); }

static void put_u64(wr *w, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  put(w, b, 8);
}

static void put_u32(wr *w, uint32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  put(w, b, 4);
}

static void put_str(wr *w, const char *s) {
  size_t n = strlen(s);
  uint8_t b[2] = {(uint8_t)n, (uint8_t)(n >> 8)};
  put(w, b, 2);
  put(w, s, n);
}

static void le32_store(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t le32_load(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t frame_crc(const uint8_t len_bytes[4], const uint8_t *payload, size_t n) {
  return ctl_crc32c(ctl_crc32c(0, len_bytes, 4), payload, n);
}

static void encode_payload(wr *w, const ctl_jrec *r) {
  put_u8(w, r->type);
  switch (r->type) {
  case CTL_JREC_HEADER:
    put(w, r->snapshot ? MAGIC_SNAPSHOT : MAGIC_JOURNAL, MAGIC_LEN);
    put_u64(w, r->gen);
    break;
  case CTL_JREC_CREATE:
    put(w, r->id, CM_TOKEN_LEN);
    put(w, r->hash_i, 32);
    put(w, r->hash_r, 32);
    put_u64(w, (uint64_t)r->created);
    put_u64(w, (uint64_t)r->expires);
    put_u32(w, r->peer_wait);
    put_str(w, r->node);
    put_str(w, r->url);
    if (r->target[0]) put_str(w, r->target); /* older records simply end before it */
    break;
  case CTL_JREC_REASSIGN:
    put(w, r->id, CM_TOKEN_LEN);
    put_str(w, r->node);
    put_str(w, r->url);
    break;
  case CTL_JREC_DELETE:
  case CTL_JREC_EXPIRE: put(w, r->id, CM_TOKEN_LEN); break;
  case CTL_JREC_END: put_u32(w, r->count); break;
  default: break;
  }
}

int ctl_jrec_encode(cm_buf *b, const ctl_jrec *r) {
  wr w = {.len = 0};
  encode_payload(&w, r);
  uint8_t hdr[FRAME_HDR];
  le32_store(hdr, (uint32_t)w.len);
  le32_store(hdr + 4, frame_crc(hdr, w.buf, w.len));
  int rc = cm_buf_append(b, hdr, sizeof hdr);
  if (rc == 0) rc = cm_buf_append(b, w.buf, w.len);
  return rc;
}

/* ---- decoding: every read is bounds-checked; any surplus is an error ----- */

typedef struct rd {
  const uint8_t *p;
  size_t n;
  bool bad;
} rd;

static const uint8_t *take(rd *r, size_t n) {
  if (r->bad || r->n < n) {
    r->bad = true;
    return NULL;
  }
  const uint8_t *p = r->p;
  r->p += n;
  r->n -= n;
  return p;
}

static uint64_t take_u64(rd *r) {
  const uint8_t *p = take(r, 8);
  uint64_t v = 0;
  for (int i = 0; p && i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static uint32_t take_u32(rd *r) {
  const uint8_t *p = take(r, 4);
  return p ? le32_load(p) : 0;
}

bool ctl_text_ok(const char *s, size_t max) {
  size_t n = 0;
  for (; s[n]; n++) {
    if (n >= max || (unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e) return false;
  }
  return true;
}

static void take_str(rd *r, char *out, size_t max) {
  const uint8_t *lp = take(r, 2);
  size_t n = lp ? (size_t)(lp[0] | lp[1] << 8) : 0;
  const uint8_t *p = n > max ? NULL : take(r, n);
  if (!p) {
    r->bad = true;
    out[0] = '\0';
    return;
  }
  memcpy(out, p, n);
  out[n] = '\0';
  if (memchr(out, '\0', n) || !ctl_text_ok(out, max)) r->bad = true;
}

static bool id_char_ok(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

static void take_id(rd *r, char out[CM_TOKEN_LEN + 1]) {
  const uint8_t *p = take(r, CM_TOKEN_LEN);
  out[0] = '\0';
  if (!p) return;
  memcpy(out, p, CM_TOKEN_LEN);
  out[CM_TOKEN_LEN] = '\0';
  for (size_t i = 0; i < CM_TOKEN_LEN; i++) {
    if (!id_char_ok(out[i])) r->bad = true;
  }
}

static void take_bytes(rd *r, uint8_t *out, size_t n) {
  const uint8_t *p = take(r, n);
  if (p) memcpy(out, p, n);
}

static void decode_header(rd *r, ctl_jrec *out) {
  const uint8_t *m = take(r, MAGIC_LEN);
  if (m && memcmp(m, MAGIC_SNAPSHOT, MAGIC_LEN) == 0) {
    out->snapshot = true;
  } else if (!m || memcmp(m, MAGIC_JOURNAL, MAGIC_LEN) != 0) {
    r->bad = true;
  }
  out->gen = take_u64(r);
}

static void decode_create(rd *r, ctl_jrec *out) {
  take_id(r, out->id);
  take_bytes(r, out->hash_i, 32);
  take_bytes(r, out->hash_r, 32);
  out->created = (int64_t)take_u64(r);
  out->expires = (int64_t)take_u64(r);
  out->peer_wait = take_u32(r);
  take_str(r, out->node, CTL_REG_NODE_MAX);
  take_str(r, out->url, CTL_REG_URL_MAX);
  if (r->n) take_str(r, out->target, CTL_REG_TARGET_MAX);
}

int ctl_jrec_decode(const uint8_t *p, size_t n, ctl_jrec *out) {
  memset(out, 0, sizeof *out);
  rd r = {.p = p, .n = n, .bad = false};
  const uint8_t *t = take(&r, 1);
  out->type = t ? *t : 0;
  switch (out->type) {
  case CTL_JREC_HEADER: decode_header(&r, out); break;
  case CTL_JREC_CREATE: decode_create(&r, out); break;
  case CTL_JREC_REASSIGN:
    take_id(&r, out->id);
    take_str(&r, out->node, CTL_REG_NODE_MAX);
    take_str(&r, out->url, CTL_REG_URL_MAX);
    break;
  case CTL_JREC_DELETE:
  case CTL_JREC_EXPIRE: take_id(&r, out->id); break;
  case CTL_JREC_END: out->count = take_u32(&r); break;
  default: r.bad = true; break;
  }
  return (r.bad || r.n != 0) ? -1 : 0;
}

/* ---- file helpers ------------------------------------------------------- */

static void path_in(const ctl_journal *j, const char *name, char *out, size_t outlen) {
  snprintf(out, outlen, "%s/%s", j->dir, name);
}

static int fsync_dir(const ctl_journal *j) {
  int dfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -errno;
  int rc = fsync(dfd) == 0 ? 0 : -errno;
  close(dfd);
  return rc;
}

static int pwrite_all(int fd, const void *data, size_t n, uint64_t off) {
  const uint8_t *p = data;
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, (off_t)off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += w;
    n -= (size_t)w;
    off += (uint64_t)w;
  }
  return 0;
}

/* Reads up to n bytes at off; returns how many (short only at EOF). */
static ssize_t pread_full(int fd, void *buf, size_t n, uint64_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, (uint8_t *)buf + got, n - got, (off_t)(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

enum { FR_OK = 0, FR_EOF = 1, FR_BAD = 2 };

/* Reads and checks the frame at off: FR_OK (record decoded, *next set),
 * FR_EOF (clean end of file), FR_BAD (torn or corrupt), or -errno. */
static int read_frame(int fd, uint64_t off, uint8_t *buf, ctl_jrec *r, uint64_t *next) {
  uint8_t hdr[FRAME_HDR];
  ssize_t n = pread_full(fd, hdr, sizeof hdr, off);
  if (n < 0) return (int)n;
  if (n == 0) return FR_EOF;
  if (n < FRAME_HDR) return FR_BAD;
  uint32_t len = le32_load(hdr);
  if (len == 0 || len > CTL_JREC_MAX) return FR_BAD;
  n = pread_full(fd, buf, len, off + FRAME_HDR);
  if (n < 0) return (int)n;
  if ((size_t)n < len || frame_crc(hdr, buf, len) != le32_load(hdr + 4)) return FR_BAD;
  if (ctl_jrec_decode(buf, len, r) != 0) return FR_BAD;
  *next = off + FRAME_HDR + len;
  return FR_OK;
}

/* The same check over a frame in memory (snapshot). */
static int mem_frame(const uint8_t *p, size_t avail, ctl_jrec *r, size_t *used) {
  if (avail == 0) return FR_EOF;
  if (avail < FRAME_HDR) return FR_BAD;
  uint32_t len = le32_load(p);
  if (len == 0 || len > CTL_JREC_MAX || len > avail - FRAME_HDR) return FR_BAD;
  if (frame_crc(p, p + FRAME_HDR, len) != le32_load(p + 4)) return FR_BAD;
  if (ctl_jrec_decode(p + FRAME_HDR, len, r) != 0) return FR_BAD;
  *used = FRAME_HDR + len;
  return FR_OK;
}

/* ---- opening: directory, lock, leftovers ---------------------------------- */

static int prepare_dir(ctl_journal *j, char *err, size_t errlen) {
  int rc = cm_mkdir_p(j->dir, 0700);
  struct stat st;
  if (rc == 0 && stat(j->dir, &st) != 0) rc = -errno;
  if (rc != 0) {
    snprintf(err, errlen, "state dir %s: %s", j->dir, strerror(-rc));
    return rc;
  }
  if (!S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "state dir %s: not a directory", j->dir);
    return -ENOTDIR;
  }
  /* Token hashes and session ids are sensitive: the directory is ours
   * alone whatever the umask or an earlier mkdir said. */
  if ((st.st_mode & 0777) != 0700 && chmod(j->dir, 0700) != 0) {
    rc = -errno;
    snprintf(err, errlen, "chmod 0700 %s: %s", j->dir, strerror(errno));
    return rc;
  }
  return 0;
}

static int take_lock(ctl_journal *j, char *err, size_t errlen) {
  char path[4200];
  path_in(j, "lock", path, sizeof path);
  j->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (j->lock_fd < 0 || flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    snprintf(err, errlen, "state dir %s: %s", j->dir,
             e == EWOULDBLOCK ? "in use by another registry" : strerror(e));
    return -e;
  }
  return 0;
}

/* Temp files left by a crash mid-compaction never hold committed state. */
static void remove_leftovers(const ctl_journal *j) {
  DIR *d = opendir(j->dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, "journal.tmp") == 0 || strncmp(e->d_name, "snapshot.tmp.", 13) == 0)
      unlinkat(dirfd(d), e->d_name, 0);
  }
  closedir(d);
}

/* ---- snapshot ------------------------------------------------------------- */

/* Parses a whole snapshot; any defect fails the open, since the file is only
 * ever replaced atomically and a bad one means damage we must not paper over. */
static int parse_snapshot(const uint8_t *p, size_t n, uint64_t *gen, ctl_journal_apply_fn apply,
                          void *ud, char *err, size_t errlen) {
  ctl_jrec r;
  size_t off = 0, used = 0;
  uint32_t count = 0;
  int fr = mem_frame(p, n, &r, &used);
  if (fr != FR_OK || r.type != CTL_JREC_HEADER || !r.snapshot) {
    snprintf(err, errlen, "snapshot: bad header");
    return -EINVAL;
  }
  *gen = r.gen;
  for (off = used;; off += used) {
    fr = mem_frame(p + off, n - off, &r, &used);
    if (fr != FR_OK) break;
    if (r.type == CTL_JREC_END) break;
    int rc = r.type == CTL_JREC_CREATE ? apply(ud, &r) : 1;
    if (rc < 0) {
      snprintf(err, errlen, "snapshot: %s", strerror(-rc));
      return rc;
    }
    if (rc > 0) break;
    count++;
  }
  if (fr != FR_OK || r.type != CTL_JREC_END || r.count != count || off + used != n) {
    snprintf(err, errlen, "snapshot corrupt at offset %zu", off);
    return -EINVAL;
  }
  return 0;
}

static int load_snapshot(ctl_journal *j, ctl_journal_apply_fn apply, void *ud, char *err,
                         size_t errlen) {
  char path[4200];
  path_in(j, "snapshot", path, sizeof path);
  char *data = NULL;
  size_t n = 0;
  int rc = cm_read_file(path, SNAPSHOT_MAX, &data, &n);
  j->gen = 0;
  if (rc == -ENOENT) return 0;
  if (rc != 0) {
    snprintf(err, errlen, "snapshot %s: %s", path, strerror(-rc));
    return rc;
  }
  rc = parse_snapshot((const uint8_t *)data, n, &j->gen, apply, ud, err, errlen);
  free(data);
  return rc;
}

/* ---- journal -------------------------------------------------------------- */

static int header_bytes(cm_buf *b, bool snapshot, uint64_t gen) {
  ctl_jrec h = {.type = CTL_JREC_HEADER, .snapshot = snapshot, .gen = gen};
  return ctl_jrec_encode(b, &h);
}

/* Makes journal.tmp holding only a header of generation gen, fsync'd.
 * Returns its fd and size. */
static int make_tmp_journal(const ctl_journal *j, uint64_t gen, int *fd_out, uint64_t *size) {
  char path[4200];
  path_in(j, "journal.tmp", path, sizeof path);
  cm_buf b;
  cm_buf_init(&b, 0);
  int rc = header_bytes(&b, false, gen);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) rc = -errno;
  if (rc == 0 && fchmod(fd, 0600) != 0) rc = -errno;
  if (rc == 0) rc = pwrite_all(fd, cm_buf_head(&b), cm_buf_size(&b), 0);
  if (rc == 0 && fsync(fd) != 0) rc = -errno;
  *size = cm_buf_size(&b);
  cm_buf_free(&b);
  if (rc != 0) {
    if (fd >= 0) close(fd);
    unlink(path);
    return rc;
  }
  *fd_out = fd;
  return 0;
}

/* Atomically replaces the journal with journal.tmp and adopts its fd. */
static int install_tmp_journal(ctl_journal *j, int fd, uint64_t size) {
  char from[4200], to[4200];
  path_in(j, "journal.tmp", from, sizeof from);
  path_in(j, "journal", to, sizeof to);
  int rc = rename(from, to) == 0 ? 0 : -errno;
  if (rc == 0) rc = fsync_dir(j);
  if (rc != 0) {
    close(fd);
    unlink(from);
    return rc;
  }
  if (j->fd >= 0) close(j->fd);
  j->fd = fd;
  j->size = size;
  return 0;
}

static int fresh_journal(ctl_journal *j, uint64_t gen) {
  int fd = -1;
  uint64_t size = 0;
  int rc = make_tmp_journal(j, gen, &fd, &size);
  return rc != 0 ? rc : install_tmp_journal(j, fd, size);
}

/* Replays records after the header; stops at the first torn or corrupt one
 * and cuts the file there.  Everything before it was committed. */
static int replay(ctl_journal *j, uint64_t off, ctl_journal_apply_fn apply, void *ud, char *err,
                  size_t errlen) {
  uint8_t *buf = malloc(CTL_JREC_MAX);
  if (!buf) return -ENOMEM;
  ctl_jrec r;
  uint64_t next = off;
  int fr;
  while ((fr = read_frame(j->fd, off, buf, &r, &next)) == FR_OK) {
    bool body = r.type != CTL_JREC_HEADER && r.type != CTL_JREC_END;
    int rc = body ? apply(ud, &r) : 1;
    if (rc < 0) {
      free(buf);
      snprintf(err, errlen, "journal replay: %s", strerror(-rc));
      return rc;
    }
    if (rc > 0) {
      fr = FR_BAD;
      break;
    }
    off = next;
  }
  free(buf);
  if (fr < 0) {
    snprintf(err, errlen, "journal read: %s", strerror(-fr));
    return fr;
  }
  struct stat st;
  if (fstat(j->fd, &st) != 0) return -errno;
  if ((uint64_t)st.st_size > off) {
    cm_log(CM_LOG_WARN, log_comp, "journal has a torn or corrupt tail; truncating",
           CM_I("offset", off), CM_I("dropped_bytes", (uint64_t)st.st_size - off));
    if (ftruncate(j->fd, (off_t)off) != 0 || fsync(j->fd) != 0) {
      int e = errno;
      snprintf(err, errlen, "journal truncate: %s", strerror(e));
      return -e;
    }
  }
  j->size = off;
  return 0;
}

/* Opens the journal and reconciles its generation with the snapshot's. */
static int open_journal(ctl_journal *j, ctl_journal_apply_fn apply, void *ud, char *err,
                        size_t errlen) {
  char path[4200];
  path_in(j, "journal", path, sizeof path);
  j->fd = open(path, O_RDWR | O_CLOEXEC);
  if (j->fd < 0 && errno != ENOENT) {
    snprintf(err, errlen, "journal %s: %s", path, strerror(errno));
    return -errno;
  }
  if (j->fd < 0) return fresh_journal(j, j->gen);
  (void)fchmod(j->fd, 0600);
  uint8_t *buf = malloc(CTL_JREC_MAX);
  if (!buf) return -ENOMEM;
  ctl_jrec h;
  uint64_t next = 0;
  int fr = read_frame(j->fd, 0, buf, &h, &next);
  free(buf);
  if (fr < 0) {
    snprintf(err, errlen, "journal read: %s", strerror(-fr));
    return fr;
  }
  if (fr != FR_OK || h.type != CTL_JREC_HEADER || h.snapshot) {
    cm_log(CM_LOG_WARN, log_comp, "journal header torn or corrupt; starting a fresh journal",
           CM_I("offset", 0));
    return fresh_journal(j, j->gen);
  }
  if (h.gen < j->gen) {
    /* Crash after a snapshot committed but before its fresh journal was
     * installed: every record here is already in the snapshot. */
    cm_log(CM_LOG_INFO, log_comp, "discarding journal older than snapshot",
           CM_I("journal_gen", h.gen), CM_I("snapshot_gen", j->gen));
    return fresh_journal(j, j->gen);
  }
  if (h.gen > j->gen) {
    snprintf(err, errlen, "journal generation %llu is newer than snapshot generation %llu",
             (unsigned long long)h.gen, (unsigned long long)j->gen);
    return -EINVAL;
  }
  return replay(j, next, apply, ud, err, errlen);
}

int ctl_journal_open(ctl_journal *j, const char *dir, ctl_journal_apply_fn apply, void *ud,
                     char *err, size_t errlen) {
  memset(j, 0, sizeof *j);
  j->fd = j->lock_fd = -1;
  if (strlen(dir) + 16 >= sizeof j->dir) {
    snprintf(err, errlen, "state dir path too long");
    return -ENAMETOOLONG;
  }
  snprintf(j->dir, sizeof j->dir, "%s", dir);
  int rc = prepare_dir(j, err, errlen);
  if (rc == 0) rc = take_lock(j, err, errlen);
  if (rc != 0) return rc;
  remove_leftovers(j);
  rc = load_snapshot(j, apply, ud, err, errlen);
  if (rc == 0) rc = open_journal(j, apply, ud, err, errlen);
  if (rc != 0 && !err[0]) snprintf(err, errlen, "journal: %s", strerror(-rc));
  return rc;
}

int ctl_journal_append(ctl_journal *j, const cm_buf *recs) {
  if (j->broken || j->fd < 0) return CTL_REG_EIO;
  int rc = pwrite_all(j->fd, cm_buf_head(recs), cm_buf_size(recs), j->size);
  /* fdatasync: the size change is metadata fdatasync does flush. */
  bool synced = rc == 0 && fdatasync(j->fd) == 0;
  if (synced) {
    j->size += cm_buf_size(recs);
    return 0;
  }
  int e = rc != 0 ? -rc : errno;
  /* Cut any partial record away, or a later good append would sit behind a
   * torn one and recovery would drop it.  After a failed fsync the page
   * cache can no longer be trusted at all (it may have dropped our dirty
   * pages), so writes stop until a restart re-reads the file. */
  if (ftruncate(j->fd, (off_t)j->size) != 0 || rc == 0) j->broken = true;
  cm_log(CM_LOG_ERROR, log_comp, "journal append failed", CM_S("error", strerror(e)),
         CM_B("writes_stopped", j->broken));
  return CTL_REG_EIO;
}

static int build_snapshot(const ctl_journal *j, ctl_journal_fill_fn fill, void *ud, cm_buf *b) {
  uint32_t count = 0;
  int rc = header_bytes(b, true, j->gen + 1);
  if (rc == 0) rc = fill(ud, b, &count);
  ctl_jrec end = {.type = CTL_JREC_END, .count = count};
  if (rc == 0) rc = ctl_jrec_encode(b, &end);
  return rc;
}

int ctl_journal_compact(ctl_journal *j, ctl_journal_fill_fn fill, void *ud) {
  /* Allowed on a broken journal: new files written and fsync'd from the
   * in-memory state (which never holds an uncommitted change) are exactly
   * how a broken journal heals. */
  cm_buf b;
  cm_buf_init(&b, 0);
  int fd = -1;
  uint64_t size = 0;
  char path[4200];
  path_in(j, "snapshot", path, sizeof path);
  /* Order matters: the fresh journal exists (as journal.tmp) before the
   * snapshot commits, so after the commit only a rename is left to do. */
  int rc = build_snapshot(j, fill, ud, &b);
  if (rc == 0) rc = make_tmp_journal(j, j->gen + 1, &fd, &size);
  if (rc == 0) {
    rc = cm_write_file_atomic(path, cm_buf_head(&b), cm_buf_size(&b), 0600, false);
    if (rc != 0) {
      close(fd);
      path_in(j, "journal.tmp", path, sizeof path);
      unlink(path);
    }
  }
  cm_buf_free(&b);
  if (rc != 0) {
    cm_log(CM_LOG_WARN, log_comp, "compaction failed; keeping the journal",
           CM_S("error", strerror(-rc)));
    return CTL_REG_EIO;
  }
  j->gen++; /* committed: the snapshot of gen+1 is the state on disk */
  rc = install_tmp_journal(j, fd, size);
  if (rc != 0) {
    /* The old journal is now stale (older than the snapshot) and would be
     * discarded at the next open; appending to it would lose records. */
    j->broken = true;
    cm_log(CM_LOG_ERROR, log_comp, "compaction could not install the new journal",
           CM_S("error", strerror(-rc)));
    return CTL_REG_EIO;
  }
  if (j->broken) cm_log(CM_LOG_WARN, log_comp, "journal healed by compaction");
  j->broken = false;
  cm_log(CM_LOG_DEBUG, log_comp, "journal compacted", CM_I("generation", j->gen));
  return 0;
}

void ctl_journal_close(ctl_journal *j) {
  if (j->fd >= 0) close(j->fd);
  if (j->lock_fd >= 0) close(j->lock_fd); /* releases the flock */
  j->fd = j->lock_fd = -1;
}
