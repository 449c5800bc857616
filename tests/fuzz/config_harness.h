/*
 * config_harness.h — the body of the configuration fuzzers
 * (fuzz_config_relay.c, fuzz_config_controller.c): arbitrary bytes as a
 * JSON settings file, RELAY_* environment and command line, loaded by
 * cm_config_load_text against a program's real option tables, which each
 * fuzzer takes by including its program's cmd/ main.c.
 *
 * Input layout: byte 0 holds flags (below) and, in its top bits, which of
 * the program's tables to use.  The rest is split at NUL bytes into
 * tokens: the JSON text first (with FZ_JSON), one "name=value" setting put
 * in the environment last (with FZ_ENV), and argv in between.  Before
 * splitting, each byte pair 0x01 k becomes the name of option k, so the
 * fuzzer reaches every real option without a dictionary.
 *
 * Checks: a load that succeeds leaves every number within its bounds,
 * booleans 0 or 1, defaulted strings set; a failure always says why;
 * cm_config_free leaves no string or list behind (and ASan sees no leak).
 * FUZZ_CONFIG_VERBOSE=1 in the environment prints each outcome, to see
 * what a seed reaches.
 */
#ifndef FUZZ_CONFIG_HARNESS_H
#define FUZZ_CONFIG_HARNESS_H

#include <ctype.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

typedef struct fz_cfg_spec {
  const cm_cfg_spec *spec;
  size_t size; /* of the struct the table fills */
} fz_cfg_spec;

enum {
  FZ_JSON = 1,       /* the first token is a JSON settings text */
  FZ_ENV = 2,        /* the last token is one environment setting */
  FZ_POSITIONAL = 4, /* positional arguments allowed */
  FZ_SMALL_ERR = 8,  /* a 12-byte error buffer: messages truncate */
  FZ_SPEC_SHIFT = 4,
  FZ_NAME_BYTE = 0x01,
  FZ_MAX_TOKENS = 256,
  FZ_CFG_MAX = 4096,
};

/* The variable of an option: the spec's prefix (RELAY_ by default), then
 * the name upper-cased with '-' as '_'. */
static void fz_env_name(const cm_cfg_spec *spec, const char *name, size_t len, char *out,
                        size_t outlen) {
  size_t o = (size_t)snprintf(out, outlen, "%s", spec->env_prefix ? spec->env_prefix : "RELAY_");
  for (size_t i = 0; i < len && o + 1 < outlen; i++)
    out[o++] = name[i] == '-' ? '_' : (char)toupper((unsigned char)name[i]);
  out[o] = '\0';
}

/* Leaves no setting of these tables in the environment. */
static void fz_clear_env(const fz_cfg_spec *specs, size_t n) {
  for (size_t s = 0; s < n; s++) {
    char env[160];
    fz_env_name(specs[s].spec, "config", 6, env, sizeof env);
    unsetenv(env);
    for (size_t i = 0; i < specs[s].spec->nopts; i++) {
      const char *name = specs[s].spec->opts[i].name;
      fz_env_name(specs[s].spec, name, strlen(name), env, sizeof env);
      unsetenv(env);
    }
  }
}

/* A copy of data with every 0x01 k replaced by option k's name, NUL added. */
static char *fz_expand(const cm_cfg_spec *spec, const uint8_t *data, size_t size, size_t *outlen) {
  size_t longest = 1;
  for (size_t i = 0; i < spec->nopts; i++)
    if (strlen(spec->opts[i].name) > longest) longest = strlen(spec->opts[i].name);
  char *out = malloc(size * longest + 1);
  if (!out) abort();
  size_t o = 0;
  for (size_t i = 0; i < size; i++) {
    if (data[i] == FZ_NAME_BYTE && i + 1 < size) {
      const char *name = spec->opts[data[++i] % spec->nopts].name;
      memcpy(out + o, name, strlen(name));
      o += strlen(name);
    } else {
      out[o++] = (char)data[i];
    }
  }
  out[o] = '\0';
  *outlen = o;
  return out;
}

/* Puts "name=value" into the environment as RELAY_NAME=value (the spec's
 * prefix); returns the string putenv now points at (free it after
 * fz_env_drop). */
static char *fz_env_put(const cm_cfg_spec *spec, const char *tok, char *name, size_t namelen) {
  const char *eq = strchr(tok, '=');
  if (!eq) return NULL;
  fz_env_name(spec, tok, (size_t)(eq - tok), name, namelen);
  size_t n = strlen(name) + strlen(eq) + 1;
  char *kv = malloc(n);
  if (!kv) abort();
  snprintf(kv, n, "%s%s", name, eq);
  /* putenv, not setenv: glibc keeps every value setenv was given. */
  if (putenv(kv) != 0) abort();
  return kv;
}

static void fz_check_loaded(const cm_cfg_spec *spec, const unsigned char *cfg) {
  for (size_t i = 0; i < spec->nopts; i++) {
    const cm_cfg_opt *o = &spec->opts[i];
    const unsigned char *f = cfg + o->offset;
    long long v;
    char *s;
    cm_strlist l;
    switch (o->type) {
    case CM_CFG_INT:
    case CM_CFG_DURATION:
    case CM_CFG_SIZE:
      memcpy(&v, f, sizeof v);
      if ((o->min || o->max) && (v < o->min || v > o->max)) abort();
      if (o->type != CM_CFG_INT && v < 0) abort();
      break;
    case CM_CFG_BOOL:
      if (*f > 1) abort();
      break;
    case CM_CFG_STRING:
      memcpy(&s, f, sizeof s);
      if (o->def && !s) abort();
      break;
    case CM_CFG_LIST:
      memcpy(&l, f, sizeof l);
      for (size_t k = 0; k < l.n; k++)
        if (!l.v[k]) abort();
      break;
    }
  }
}

static void fz_check_freed(const cm_cfg_spec *spec, const unsigned char *cfg) {
  for (size_t i = 0; i < spec->nopts; i++) {
    const cm_cfg_opt *o = &spec->opts[i];
    char *s;
    cm_strlist l;
    if (o->type == CM_CFG_STRING) {
      memcpy(&s, cfg + o->offset, sizeof s);
      if (s) abort();
    } else if (o->type == CM_CFG_LIST) {
      memcpy(&l, cfg + o->offset, sizeof l);
      if (l.n || l.v) abort();
    }
  }
}

static int fz_config_one(const fz_cfg_spec *specs, size_t nspecs, const uint8_t *data,
                         size_t size) {
  static bool env_cleared;
  if (!env_cleared) {
    fz_clear_env(specs, nspecs);
    env_cleared = true;
  }
  if (size < 1) return 0;
  uint8_t flags = data[0];
  const fz_cfg_spec *fs = &specs[(flags >> FZ_SPEC_SHIFT) % nspecs];
  if (fs->size > FZ_CFG_MAX) abort();
  size_t len;
  char *text = fz_expand(fs->spec, data + 1, size - 1, &len);
  char *tok[FZ_MAX_TOKENS];
  int ntok = 0;
  for (size_t off = 0; off <= len && ntok < FZ_MAX_TOKENS; off += strlen(text + off) + 1)
    tok[ntok++] = text + off;
  const char *json = NULL;
  int first = 0;
  if ((flags & FZ_JSON) && ntok > 0) json = tok[first++];
  char env[160], *kv = NULL;
  if ((flags & FZ_ENV) && ntok > first) kv = fz_env_put(fs->spec, tok[--ntok], env, sizeof env);

  alignas(max_align_t) unsigned char cfg[FZ_CFG_MAX];
  memset(cfg, 0, sizeof cfg);
  cm_strlist pos = {0};
  char err[512];
  size_t errlen = (flags & FZ_SMALL_ERR) ? 12 : sizeof err;
  int rc = cm_config_load_text(fs->spec, cfg, json, json ? strlen(json) : 0, "fuzz", ntok - first,
                               tok + first, (flags & FZ_POSITIONAL) ? &pos : NULL, err, errlen);
  static int verbose = -1;
  if (verbose < 0) verbose = getenv("FUZZ_CONFIG_VERBOSE") != NULL;
  if (verbose) fprintf(stderr, "%s: rc %d%s%s\n", fs->spec->usage, rc, rc ? ": " : "", err);
  if (rc == CM_CFG_OK) fz_check_loaded(fs->spec, cfg);
  if (rc == CM_CFG_ERROR && (err[0] == '\0' || strnlen(err, errlen) >= errlen)) abort();
  if (rc != CM_CFG_OK && rc != CM_CFG_ERROR && rc != CM_CFG_HELP) abort();
  if (pos.n > (size_t)(ntok - first)) abort();
  cm_strlist_free(&pos);
  cm_config_free(fs->spec, cfg);
  fz_check_freed(fs->spec, cfg);
  if (kv) {
    unsetenv(env);
    free(kv);
  }
  free(text);
  return 0;
}

#endif
