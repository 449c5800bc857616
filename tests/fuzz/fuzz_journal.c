/*
 * fuzz_journal.c — registry recovery from an arbitrary journal file.
 *
 * The input becomes `journal` in a scratch state directory (on /dev/shm when
 * there is one, so fsync is cheap) and the registry is opened on it.  The
 * first byte picks how:
 *   even: the remaining bytes are the journal, verbatim (framing, CRCs,
 *         torn tails);
 *   odd:  the remaining bytes are [u16 LE length][payload] pieces that this
 *         target frames with correct CRCs, so the record decoder and replay
 *         rules are reached past the checksum (a last short piece is written
 *         raw, as a torn tail).
 * Whatever the input, opening must not crash or leak, and when it succeeds
 * the registry must be consistent: its invariants hold, a second open of
 * the (now repaired) files yields the same sessions without further repair,
 * and reaping everything durably leaves an empty registry after a restart.
 */
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "controller-stub/registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char g_root[64], g_dir[128];

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(p);
}

static void cleanup(void) { nftw(g_root, rm_one, 8, FTW_DEPTH | FTW_PHYS); }

static const char *state_dir(void) {
  if (g_dir[0]) return g_dir;
  snprintf(g_root, sizeof g_root, "%s/fuzz_journal.XXXXXX",
           access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  if (!mkdtemp(g_root)) abort();
  snprintf(g_dir, sizeof g_dir, "%s/state", g_root);
  atexit(cleanup);
  cm_log_set_level(CM_LOG_OFF);
  return g_dir;
}

static void file_path(const char *name, char *out, size_t n) {
  snprintf(out, n, "%s/%s", state_dir(), name);
}

static void frame_pieces(const uint8_t *p, size_t n, cm_buf *out) {
  while (n >= 2) {
    size_t len = (size_t)(p[0] | p[1] << 8) % (CTL_JREC_MAX + 1);
    if (len > n - 2) break;
    uint8_t hdr[8];
    for (int i = 0; i < 4; i++)
      hdr[i] = (uint8_t)(len >> (8 * i));
    uint32_t crc = ctl_crc32c(ctl_crc32c(0, hdr, 4), p + 2, len);
    for (int i = 0; i < 4; i++)
      hdr[4 + i] = (uint8_t)(crc >> (8 * i));
    cm_buf_append(out, hdr, 8);
    cm_buf_append(out, p + 2, len);
    p += 2 + len;
    n -= 2 + len;
  }
  cm_buf_append(out, p, n); /* torn tail */
}

static void write_journal(const uint8_t *data, size_t size) {
  char path[256];
  cm_mkdir_p(state_dir(), 0700);
  file_path("snapshot", path, sizeof path);
  unlink(path);
  file_path("journal", path, sizeof path);
  cm_buf b;
  cm_buf_init(&b, 0);
  if (size > 0 && (data[0] & 1))
    frame_pieces(data + 1, size - 1, &b);
  else if (size > 0)
    cm_buf_append(&b, data + 1, size - 1);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) abort();
  if (write(fd, cm_buf_head(&b), cm_buf_size(&b)) != (ssize_t)cm_buf_size(&b)) abort();
  close(fd);
  cm_buf_free(&b);
}

static ctl_registry *reopen(void) {
  char err[256];
  ctl_registry *r = ctl_registry_open(state_dir(), NULL, err, sizeof err);
  if (!r || ctl_reg_check(r) != 0) abort();
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_journal(data, size);
  char err[256];
  ctl_registry *r = ctl_registry_open(state_dir(), NULL, err, sizeof err);
  if (!r) return 0; /* refused (e.g. a journal newer than its snapshot) */
  if (ctl_reg_check(r) != 0) abort();
  size_t n = ctl_reg_count(r);
  uint64_t jsize = ctl_reg_journal_size(r);
  ctl_registry_close(r);

  /* Recovery is idempotent: the repaired files replay to the same state. */
  r = reopen();
  if (ctl_reg_count(r) != n || ctl_reg_journal_size(r) != jsize) abort();

  /* The registry still works on top of whatever was recovered. */
  ctl_reg_created c;
  if (ctl_reg_create(r, 1700000000, 0, 0, "fz", "wss://fz", &c) == 0) {
    ctl_reg_decision d;
    ctl_reg_validate(r, 1700000000, c.status.id, c.responder_token, 0, "fz", &d);
    if (!d.allow || d.slot != CTL_REG_ROLE_RESPONDER) abort();
  }
  ctl_reg_reap(r, INT64_MAX, NULL, NULL);
  if (ctl_reg_count(r) != 0 || ctl_reg_check(r) != 0) abort();
  ctl_registry_close(r);

  r = reopen();
  if (ctl_reg_count(r) != 0) abort();
  ctl_registry_close(r);
  return 0;
}
