/*
 * config.c — one table describes a program's settings; this file fills the
 * program's struct from defaults, a JSON file, RELAY_* environment variables
 * and command-line flags, in that order of rising precedence, and prints
 * --help from the same table so help and behaviour cannot drift apart.
 */
#include "common/common.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

void cm_strlist_free(cm_strlist *l) {
  for (size_t i = 0; i < l->n; i++)
    free(l->v[i]);
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

int cm_strlist_push(cm_strlist *l, const char *s) {
  char **nv = realloc(l->v, (l->n + 1) * sizeof *nv);
  if (!nv) return -ENOMEM;
  l->v = nv;
  if (!(l->v[l->n] = strdup(s))) return -ENOMEM;
  l->n++;
  return 0;
}

static int parse_scaled(const char *s, long long *out, const char *const *units,
                        const long long *mult, size_t nunits, long long bare) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  /* !(v >= 0) also refuses "nan", which no comparison below would catch. */
  if (end == s || errno || !(v >= 0)) return -EINVAL;
  while (*end == ' ')
    end++;
  long long m = bare;
  if (*end) {
    size_t i;
    for (i = 0; i < nunits; i++)
      if (strcasecmp(end, units[i]) == 0) break;
    if (i == nunits) return -EINVAL;
    m = mult[i];
  }
  double r = v * (double)m;
  if (r > 9.2e18) return -ERANGE;
  *out = (long long)r;
  return 0;
}

int cm_parse_duration_ms(const char *s, long long *out) {
  static const char *const u[] = {"ms", "s", "m", "h", "d"};
  static const long long m[] = {1, 1000, 60000, 3600000, 86400000};
  return parse_scaled(s, out, u, m, CM_ARRAY_LEN(u), 1000);
}

int cm_parse_size(const char *s, long long *out) {
  static const char *const u[] = {"b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib"};
  static const long long m[] = {1,       1024,    1000,    1024,       1 << 20,
                                1000000, 1 << 20, 1 << 30, 1000000000, 1 << 30};
  return parse_scaled(s, out, u, m, CM_ARRAY_LEN(u), 1);
}

static void *field(void *cfg, const cm_cfg_opt *o) { return (char *)cfg + o->offset; }

/* Any string setting may be a secret (a slot token, a bearer token): each
 * copy is wiped before it is freed, the one replaced as much as the last. */
static void free_string(char *s) {
  if (!s) return;
  OPENSSL_cleanse(s, strlen(s));
  free(s);
}

static int set_value(const cm_cfg_opt *o, void *cfg, const char *val, const char *src, char *err,
                     size_t errlen) {
  long long n;
  int rc = 0;
  switch (o->type) {
  case CM_CFG_STRING: {
    char **p = field(cfg, o);
    free_string(*p);
    *p = strdup(val);
    return *p ? 0 : -ENOMEM;
  }
  case CM_CFG_BOOL: {
    bool *b = field(cfg, o);
    if (!strcmp(val, "true") || !strcmp(val, "1") || !strcmp(val, "yes") || !strcmp(val, "on"))
      *b = true;
    else if (!strcmp(val, "false") || !strcmp(val, "0") || !strcmp(val, "no") ||
             !strcmp(val, "off"))
      *b = false;
    else {
      snprintf(err, errlen, "%s: %s must be true or false, got \"%s\"", src, o->name, val);
      return -EINVAL;
    }
    return 0;
  }
  case CM_CFG_LIST: {
    cm_strlist *l = field(cfg, o);
    char *dup = strdup(val), *save = NULL;
    if (!dup) return -ENOMEM;
    for (char *tok = strtok_r(dup, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
      while (isspace((unsigned char)*tok))
        tok++;
      if (*tok) rc = cm_strlist_push(l, tok);
    }
    free(dup);
    return rc;
  }
  case CM_CFG_INT: {
    char *end;
    errno = 0;
    n = strtoll(val, &end, 10);
    if (errno || end == val || *end) rc = -EINVAL;
    break;
  }
  case CM_CFG_DURATION: rc = cm_parse_duration_ms(val, &n); break;
  case CM_CFG_SIZE: rc = cm_parse_size(val, &n); break;
  }
  static const char *what[] = {
      "", "", "an integer", "", "a duration (e.g. 30s, 250ms, 2m)", "a size (e.g. 64KiB, 1MiB)"};
  if (rc != 0) {
    snprintf(err, errlen, "%s: %s must be %s, got \"%s\"", src, o->name, what[o->type], val);
    return -EINVAL;
  }
  if ((o->min || o->max) && (n < o->min || n > o->max)) {
    snprintf(err, errlen, "%s: %s = %s is out of range [%lld, %lld]%s", src, o->name, val, o->min,
             o->max, o->type == CM_CFG_DURATION ? " ms" : "");
    return -ERANGE;
  }
  *(long long *)field(cfg, o) = n;
  return 0;
}

static const cm_cfg_opt *find_opt(const cm_cfg_spec *spec, const char *name, size_t len) {
  for (size_t i = 0; i < spec->nopts; i++) {
    const char *on = spec->opts[i].name;
    if (strlen(on) != len) continue;
    bool eq = true;
    for (size_t k = 0; k < len && eq; k++) {
      char a = on[k] == '_' ? '-' : on[k], b = name[k] == '_' ? '-' : name[k];
      eq = a == b;
    }
    if (eq) return &spec->opts[i];
  }
  return NULL;
}

static void clear_value(const cm_cfg_opt *o, void *cfg) {
  if (o->type == CM_CFG_STRING) {
    char **p = field(cfg, o);
    free_string(*p);
    *p = NULL;
  } else if (o->type == CM_CFG_LIST) {
    cm_strlist_free(field(cfg, o));
  }
}

/* Applies the settings of a JSON object; src names it in messages. */
static int load_json(const cm_cfg_spec *spec, void *cfg, const char *text, size_t len,
                     const char *src, char *err, size_t errlen) {
  json_error_t je;
  json_t *root = json_loadb(text, len, 0, &je);
  if (!root) {
    snprintf(err, errlen, "%s: %s (line %d)", src, je.text, je.line);
    return -EINVAL;
  }
  int rc = 0;
  if (!json_is_object(root)) {
    snprintf(err, errlen, "%s: top level must be an object", src);
    rc = -EINVAL;
  }
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (rc) break;
    const cm_cfg_opt *o = find_opt(spec, key, strlen(key));
    if (!o) {
      snprintf(err, errlen, "%s: unknown setting \"%s\"", src, key);
      rc = -EINVAL;
      break;
    }
    clear_value(o, cfg);
    if (o->type == CM_CFG_LIST && json_is_array(v)) {
      size_t i;
      json_t *e;
      json_array_foreach(v, i, e) {
        if (!json_is_string(e)) {
          snprintf(err, errlen, "%s: %s must be an array of strings", src, o->name);
          rc = -EINVAL;
          break;
        }
        rc = cm_strlist_push(field(cfg, o), json_string_value(e));
      }
      continue;
    }
    char tmp[64];
    const char *val = NULL;
    if (json_is_string(v))
      val = json_string_value(v);
    else if (json_is_integer(v)) {
      snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
      val = tmp;
    } else if (json_is_boolean(v))
      val = json_is_true(v) ? "true" : "false";
    if (!val) {
      snprintf(err, errlen, "%s: %s has the wrong type", src, o->name);
      rc = -EINVAL;
      break;
    }
    rc = set_value(o, cfg, val, src, err, errlen);
  }
  json_decref(root);
  return rc;
}

static const char *env_prefix(const cm_cfg_spec *spec) {
  return spec->env_prefix ? spec->env_prefix : "RELAY_";
}

static void env_name(const cm_cfg_spec *spec, const char *name, char *out, size_t outlen) {
  size_t o = (size_t)snprintf(out, outlen, "%s", env_prefix(spec));
  if (o >= outlen) o = outlen - 1;
  for (const char *p = name; *p && o + 1 < outlen; p++)
    out[o++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  out[o] = '\0';
}

static int load_env(const cm_cfg_spec *spec, void *cfg, char *err, size_t errlen) {
  for (size_t i = 0; i < spec->nopts; i++) {
    char name[128], src[160];
    env_name(spec, spec->opts[i].name, name, sizeof name);
    const char *v = getenv(name);
    if (!v) continue;
    snprintf(src, sizeof src, "environment %s", name);
    clear_value(&spec->opts[i], cfg);
    int rc = set_value(&spec->opts[i], cfg, v, src, err, errlen);
    if (rc) return rc;
  }
  return 0;
}

/* Finds --config among the flags before anything else, so the file's
 * values can be overridden by the environment and the other flags. */
static const char *config_path(const cm_cfg_spec *spec, int argc, char **argv) {
  char var[64];
  env_name(spec, "config", var, sizeof var);
  const char *path = getenv(var);
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--config") && i + 1 < argc)
      path = argv[i + 1];
    else if (!strncmp(argv[i], "--config=", 9))
      path = argv[i] + 9;
  }
  return path;
}

static int load_flags(const cm_cfg_spec *spec, void *cfg, int argc, char **argv,
                      cm_strlist *positional, char *err, size_t errlen) {
  bool *seen_list = calloc(spec->nopts + 1, sizeof *seen_list);
  int rc = 0;
  for (int i = 0; i < argc && rc == 0; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      rc = CM_CFG_HELP;
      break;
    }
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
      if (positional) {
        rc = cm_strlist_push(positional, a);
        continue;
      }
      snprintf(err, errlen, "unexpected argument \"%s\"", a);
      rc = CM_CFG_ERROR;
      break;
    }
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    if (nlen == 6 && !strncmp(name, "config", 6)) {
      if (!eq) i++;
      continue;
    }
    const cm_cfg_opt *o = find_opt(spec, name, nlen);
    if (!o) {
      snprintf(err, errlen, "unknown flag --%.*s", (int)nlen, name);
      rc = CM_CFG_ERROR;
      break;
    }
    const char *val = eq ? eq + 1 : NULL;
    if (!val && o->type == CM_CFG_BOOL) val = "true";
    if (!val) {
      if (i + 1 >= argc) {
        snprintf(err, errlen, "flag --%s needs a value", o->name);
        rc = CM_CFG_ERROR;
        break;
      }
      val = argv[++i];
    }
    size_t idx = (size_t)(o - spec->opts);
    if (o->type == CM_CFG_LIST && !seen_list[idx]) {
      /* The first flag replaces file/env values; repeats accumulate. */
      clear_value(o, cfg);
      seen_list[idx] = true;
    }
    char src[160];
    snprintf(src, sizeof src, "flag --%s", o->name);
    if (set_value(o, cfg, val, src, err, errlen) != 0) rc = CM_CFG_ERROR;
  }
  free(seen_list);
  return rc;
}

static bool wants_help(int argc, char **argv) {
  for (int i = 0; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
  return false;
}

int cm_config_load_text(const cm_cfg_spec *spec, void *cfg, const char *json, size_t jsonlen,
                        const char *src, int argc, char **argv, cm_strlist *positional, char *err,
                        size_t errlen) {
  err[0] = '\0';
  for (size_t i = 0; i < spec->nopts; i++) {
    const cm_cfg_opt *o = &spec->opts[i];
    if (!o->def) continue;
    if (set_value(o, cfg, o->def, "default", err, errlen) != 0) return CM_CFG_ERROR;
  }
  if (wants_help(argc, argv)) return CM_CFG_HELP;
  if (json && load_json(spec, cfg, json, jsonlen, src ? src : "config", err, errlen) != 0)
    return CM_CFG_ERROR;
  if (load_env(spec, cfg, err, errlen) != 0) return CM_CFG_ERROR;
  int rc = load_flags(spec, cfg, argc, argv, positional, err, errlen);
  return rc < 0 ? CM_CFG_ERROR : rc;
}

int cm_config_load(const cm_cfg_spec *spec, void *cfg, int argc, char **argv,
                   cm_strlist *positional, char *err, size_t errlen) {
  const char *path = wants_help(argc, argv) ? NULL : config_path(spec, argc, argv);
  if (!path)
    return cm_config_load_text(spec, cfg, NULL, 0, NULL, argc, argv, positional, err, errlen);
  char src[512], *text = NULL;
  size_t len = 0;
  snprintf(src, sizeof src, "config file %s", path);
  int rc = cm_read_file(path, CM_CFG_FILE_MAX, &text, &len);
  if (rc != 0) {
    if (rc == -EFBIG)
      snprintf(err, errlen, "%s: larger than %d bytes", src, CM_CFG_FILE_MAX);
    else
      snprintf(err, errlen, "%s: %s", src, strerror(-rc));
    return CM_CFG_ERROR;
  }
  rc = cm_config_load_text(spec, cfg, text, len, src, argc, argv, positional, err, errlen);
  /* Settings may include secrets one day (a password for a store, say):
   * wipe the text like any buffer that may have held one. */
  OPENSSL_cleanse(text, len);
  free(text);
  return rc;
}

void cm_config_free(const cm_cfg_spec *spec, void *cfg) {
  for (size_t i = 0; i < spec->nopts; i++)
    clear_value(&spec->opts[i], cfg);
}

void cm_config_print_help(const cm_cfg_spec *spec, FILE *out) {
  fprintf(out, "Usage: %s\n\n%s\n\nOptions (flag, environment variable):\n", spec->usage,
          spec->summary);
  for (size_t i = 0; i < spec->nopts; i++) {
    const cm_cfg_opt *o = &spec->opts[i];
    char flag[128], env[128];
    env_name(spec, o->name, env, sizeof env);
    if (o->type == CM_CFG_BOOL)
      snprintf(flag, sizeof flag, "--%s", o->name);
    else
      snprintf(flag, sizeof flag, "--%s %s", o->name, o->metavar ? o->metavar : "VALUE");
    fprintf(out, "  %-34s %s\n  %-34s %s", flag, o->help, "", env);
    if (o->def && *o->def) fprintf(out, "; default %s", o->def);
    fputc('\n', out);
  }
  char cfgvar[64];
  env_name(spec, "config", cfgvar, sizeof cfgvar);
  fprintf(out, "  %-34s %s\n  %-34s %s\n", "--config FILE",
          "JSON file of settings (keys as flag names)", "", cfgvar);
  fprintf(out, "  %-34s %s\n\nPrecedence: flags > environment > config file > defaults.\n",
          "-h, --help", "show this help");
}

int cm_config_cli(const cm_cfg_spec *spec, void *cfg, int argc, char **argv, const char *cmd) {
  char err[512];
  int rc = cm_config_load(spec, cfg, argc, argv, NULL, err, sizeof err);
  if (rc == CM_CFG_OK) return -1;
  if (rc == CM_CFG_HELP) {
    cm_config_print_help(spec, stdout);
  } else {
    fprintf(stderr, "%s: %s\nUsage: %s (see --help)\n", cmd, err, spec->usage);
  }
  cm_config_free(spec, cfg);
  return rc == CM_CFG_HELP ? 0 : 2;
}

static void subcmd_usage(const char *prog, const cm_subcmd *cmds, size_t n, FILE *out) {
  fprintf(out, "Usage: %s <command> [options]\n\nCommands:\n", prog);
  for (size_t i = 0; i < n; i++)
    fprintf(out, "  %-10s %s\n", cmds[i].name, cmds[i].summary);
  fprintf(out, "\nRun '%s <command> --help' for the options of a command.\n", prog);
}

int cm_subcmd_main(const char *prog, const cm_subcmd *cmds, size_t n, int argc, char **argv) {
  if (argc < 2) {
    subcmd_usage(prog, cmds, n, stderr);
    return 2;
  }
  const char *name = argv[1];
  if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
    subcmd_usage(prog, cmds, n, stdout);
    return 0;
  }
  for (size_t i = 0; i < n; i++)
    if (!strcmp(name, cmds[i].name)) return cmds[i].run(argc - 2, argv + 2);
  fprintf(stderr, "%s: unknown command \"%s\"\n", prog, name);
  subcmd_usage(prog, cmds, n, stderr);
  return 2;
}
