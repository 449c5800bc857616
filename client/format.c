/*
 * format.c — what the admin commands print: a table for people, JSON for
 * programs, and shell assignments for `eval $(relay create --output env)`.
 * Answers are checked before anything is printed: ids and tokens must be
 * base64url and every env value must be made of characters a shell leaves
 * alone (no quoting, globbing or splitting can happen), so a malformed or
 * hostile answer is an error rather than something a shell would run.
 */
#include "client/admin.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MAX_ID_LEN    64
#define MAX_TOKEN_LEN 256
#define MAX_TEXT_LEN  2048 /* URLs, times and states in an answer */

int rc_output_parse(const char *s, rc_output *out) {
  static const struct {
    const char *name;
    rc_output v;
  } names[] = {{"table", RC_OUT_TABLE}, {"json", RC_OUT_JSON}, {"env", RC_OUT_ENV}};
  if (!s || !*s) {
    *out = RC_OUT_AUTO;
    return 0;
  }
  for (size_t i = 0; i < CM_ARRAY_LEN(names); i++)
    if (!strcmp(s, names[i].name)) {
      *out = names[i].v;
      return 0;
    }
  return -EINVAL;
}

rc_output rc_output_resolve(rc_output o, int fd) {
  if (o != RC_OUT_AUTO) return o;
  return isatty(fd) ? RC_OUT_TABLE : RC_OUT_JSON;
}

bool rc_is_b64url(const char *s, size_t max) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > max) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_'))
      return false;
  }
  return true;
}

/* Characters no POSIX shell treats specially in an unquoted word. */
static bool shell_safe(const char *s) {
  for (; *s; s++) {
    char c = *s;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
          strchr("-_.:+,/@%", c)))
      return false;
  }
  return true;
}

static int put(cm_buf *b, const char *s) { return cm_buf_append(b, s, strlen(s)); }

/* Appends the pieces, stopping at the first failure. */
static int put_all(cm_buf *b, const char *const *parts, size_t n) {
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = put(b, parts[i]);
  return rc;
}

#define PUT(b, ...)                                                                                \
  put_all((b), (const char *const[]){__VA_ARGS__},                                                 \
          CM_ARRAY_LEN(((const char *const[]){__VA_ARGS__})))

/* The compact or indented JSON text of v, then a newline.  jansson's
 * memory is wiped (rc_init), so its copy of any token is too. */
static int put_json(cm_buf *b, const json_t *v, size_t flags) {
  char *text = json_dumps(v, flags | JSON_PRESERVE_ORDER);
  if (!text) return -ENOMEM;
  int rc = put(b, text);
  cm_secret_free(text);
  return rc;
}

/* ---- checking answers --------------------------------------------------------------- */

static const char *jtext(const json_t *o, const char *key) {
  const json_t *v = json_object_get(o, key);
  return json_is_string(v) && json_string_length(v) <= MAX_TEXT_LEN ? json_string_value(v) : NULL;
}

static int malformed(char *err, size_t errlen, const char *what, const char *key) {
  cm_seterr(err, errlen, "the relay's answer is malformed: %s has no usable \"%s\"", what, key);
  return -EPROTO;
}

/* A value for the env and table formats: text, a number, true/false, or
 * "" for null.  NULL when the field has another type or is missing. */
static const char *scalar(const json_t *o, const char *key, char *tmp, size_t tmplen) {
  const json_t *v = json_object_get(o, key);
  if (json_is_null(v)) return "";
  if (json_is_boolean(v)) return json_is_true(v) ? "true" : "false";
  if (json_is_integer(v)) {
    snprintf(tmp, tmplen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return tmp;
  }
  return jtext(o, key);
}

typedef struct field {
  const char *key;   /* in the answer */
  const char *env;   /* its variable with --output env */
  const char *label; /* its row in a table */
} field;

static const field g_created[] = {
    {"id", "SWSRS_SESSION", "session"},
    {"initiator_token", "SWSRS_INITIATOR_TOKEN", "initiator token"},
    {"responder_token", "SWSRS_RESPONDER_TOKEN", "responder token"},
    {"initiator_url", NULL, "initiator url"},
    {"responder_url", NULL, "responder url"},
    {"created_at", NULL, "created"},
    {"expires_at", NULL, "expires"},
};

static const field g_status[] = {
    {"id", "SWSRS_SESSION", "session"},
    {"state", "SWSRS_STATE", "state"},
    {"created_at", "SWSRS_CREATED_AT", "created"},
    {"expires_at", "SWSRS_EXPIRES_AT", "expires"},
    {"last_activity", "SWSRS_LAST_ACTIVITY", "last activity"},
    {"bytes_in", "SWSRS_BYTES_IN", "bytes in"},
    {"bytes_out", "SWSRS_BYTES_OUT", "bytes out"},
    {"initiator_connected", "SWSRS_INITIATOR_CONNECTED", "initiator connected"},
    {"responder_connected", "SWSRS_RESPONDER_CONNECTED", "responder connected"},
};

static int check_created(const json_t *c, char *err, size_t errlen) {
  if (!json_is_object(c)) return malformed(err, errlen, "the created session", "id");
  if (!rc_is_b64url(jtext(c, "id"), MAX_ID_LEN))
    return malformed(err, errlen, "the created session", "id");
  if (!rc_is_b64url(jtext(c, "initiator_token"), MAX_TOKEN_LEN))
    return malformed(err, errlen, "the created session", "initiator_token");
  if (!rc_is_b64url(jtext(c, "responder_token"), MAX_TOKEN_LEN))
    return malformed(err, errlen, "the created session", "responder_token");
  return 0;
}

static int check_status(const json_t *st, char *err, size_t errlen) {
  if (!json_is_object(st) || !rc_is_b64url(jtext(st, "id"), MAX_ID_LEN))
    return malformed(err, errlen, "a session status", "id");
  const char *state = jtext(st, "state");
  if (!state || !*state || !shell_safe(state))
    return malformed(err, errlen, "a session status", "state");
  return 0;
}

/* ---- the three formats ----------------------------------------------------------------- */

/* NAME=value lines for the fields that have a variable. */
static int put_env(cm_buf *b, const json_t *o, const field *f, size_t n, const char *what,
                   char *err, size_t errlen) {
  for (size_t i = 0; i < n; i++) {
    if (!f[i].env) continue;
    char tmp[32];
    const char *v = scalar(o, f[i].key, tmp, sizeof tmp);
    if (!v || !shell_safe(v)) return malformed(err, errlen, what, f[i].key);
    int rc = PUT(b, f[i].env, "=", v, "\n");
    if (rc != 0) return rc;
  }
  return 0;
}

/* "label   value" rows, values aligned. */
static int put_rows(cm_buf *b, const json_t *o, const field *f, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char tmp[32], label[32];
    const char *v = scalar(o, f[i].key, tmp, sizeof tmp);
    if (!v) v = "?";
    snprintf(label, sizeof label, "%-21s", f[i].label);
    int rc = PUT(b, label, v, "\n");
    if (rc != 0) return rc;
  }
  return 0;
}

int rc_fmt_created(cm_buf *out, rc_output fmt, const json_t *created, char *err, size_t errlen) {
  int rc = check_created(created, err, errlen);
  if (rc != 0) return rc;
  switch (fmt) {
  case RC_OUT_ENV:
    return put_env(out, created, g_created, CM_ARRAY_LEN(g_created), "the created session", err,
                   errlen);
  case RC_OUT_JSON: rc = put_json(out, created, JSON_INDENT(2)); return rc ? rc : put(out, "\n");
  default: return put_rows(out, created, g_created, CM_ARRAY_LEN(g_created));
  }
}

int rc_fmt_status(cm_buf *out, rc_output fmt, const json_t *status, char *err, size_t errlen) {
  int rc = check_status(status, err, errlen);
  if (rc != 0) return rc;
  switch (fmt) {
  case RC_OUT_ENV:
    return put_env(out, status, g_status, CM_ARRAY_LEN(g_status), "a session status", err, errlen);
  case RC_OUT_JSON: rc = put_json(out, status, JSON_INDENT(2)); return rc ? rc : put(out, "\n");
  default: return put_rows(out, status, g_status, CM_ARRAY_LEN(g_status));
  }
}

/* ---- listings ----------------------------------------------------------------------------- */

#define LIST_ROW "%-22s  %-9s  %-9s  %12s  %12s  %-20s  %s\n"

void rc_fmt_list_begin(cm_buf *out, rc_output fmt) {
  if (fmt == RC_OUT_JSON) {
    put(out, "{\"sessions\":[");
  } else if (fmt == RC_OUT_ENV) {
    put(out, "SWSRS_SESSIONS='");
  } else {
    cm_buf_printf(out, LIST_ROW, "SESSION", "STATE", "PEERS", "BYTES IN", "BYTES OUT", "CREATED",
                  "EXPIRES");
  }
}

static const char *peers(const json_t *st) {
  bool i = json_is_true(json_object_get(st, "initiator_connected"));
  bool r = json_is_true(json_object_get(st, "responder_connected"));
  return i && r ? "both" : i ? "initiator" : r ? "responder" : "none";
}

int rc_fmt_list_item(cm_buf *out, rc_output fmt, const json_t *st, uint64_t index, char *err,
                     size_t errlen) {
  int rc = check_status(st, err, errlen);
  if (rc != 0) return rc;
  const char *id = jtext(st, "id");
  if (fmt == RC_OUT_JSON) {
    rc = put(out, index ? ",\n  " : "\n  ");
    return rc ? rc : put_json(out, st, JSON_COMPACT);
  }
  if (fmt == RC_OUT_ENV) return PUT(out, index ? " " : "", id);
  char in[32], outb[32];
  const char *bin = scalar(st, "bytes_in", in, sizeof in),
             *bout = scalar(st, "bytes_out", outb, sizeof outb);
  const char *created = jtext(st, "created_at"), *expires = jtext(st, "expires_at");
  return cm_buf_printf(out, LIST_ROW, id, jtext(st, "state"), peers(st), bin ? bin : "?",
                       bout ? bout : "?", created ? created : "", expires ? expires : "");
}

void rc_fmt_list_end(cm_buf *out, rc_output fmt, uint64_t count) {
  if (fmt == RC_OUT_JSON)
    put(out, count ? "\n]}\n" : "]}\n");
  else if (fmt == RC_OUT_ENV)
    put(out, "'\n");
}

void rc_fmt_deleted(cm_buf *out, rc_output fmt, const char *id) {
  if (fmt == RC_OUT_JSON)
    PUT(out, "{\"id\":\"", id, "\",\"deleted\":true}\n");
  else if (fmt == RC_OUT_ENV)
    PUT(out, "SWSRS_DELETED=", id, "\n");
  else
    PUT(out, "deleted ", id, "\n");
}

/* ---- errors ------------------------------------------------------------------------------ */

static const char *reason(int status) {
  static const struct {
    int status;
    const char *text;
  } r[] = {{400, "Bad Request"},        {401, "Unauthorized"},
           {403, "Forbidden"},          {404, "Not Found"},
           {405, "Method Not Allowed"}, {409, "Conflict"},
           {413, "Content Too Large"},  {415, "Unsupported Media Type"},
           {429, "Too Many Requests"},  {500, "Internal Server Error"},
           {502, "Bad Gateway"},        {503, "Service Unavailable"},
           {504, "Gateway Timeout"}};
  for (size_t i = 0; i < CM_ARRAY_LEN(r); i++)
    if (r[i].status == status) return r[i].text;
  return NULL;
}

/* Copies s with control characters as '?', so one line stays one line. */
static void clean_copy(char *out, size_t outlen, const char *s) {
  size_t o = 0;
  for (; s && *s && o + 1 < outlen; s++)
    out[o++] = (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s;
  out[o] = '\0';
}

void rc_http_error_line(int status, const char *body, size_t len, char *out, size_t outlen) {
  json_t *o = body && len && rc_json_is_secure() ? json_loadb(body, len, 0, NULL) : NULL;
  const char *code = NULL, *msg = NULL;
  if (json_is_object(o)) {
    code = jtext(o, "error");
    msg = jtext(o, "message");
    if (!msg) msg = jtext(o, "error_description");
  }
  char c[96], m[512];
  clean_copy(c, sizeof c, code);
  clean_copy(m, sizeof m, msg);
  const char *r = reason(status);
  if (c[0] && m[0])
    snprintf(out, outlen, "HTTP %d %s: %s", status, c, m);
  else if (c[0] || m[0])
    snprintf(out, outlen, "HTTP %d: %s", status, c[0] ? c : m);
  else
    snprintf(out, outlen, "HTTP %d%s%s", status, r ? " " : "", r ? r : "");
  json_decref(o);
}
