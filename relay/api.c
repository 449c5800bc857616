/*
 * api.c — shapes of the public API shared by the handlers (see api.h).
 */
#include "relay/api.h"

#include <jansson.h>
#include <string.h>

static bool id_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

bool rly_token_ok(const char *t) {
  size_t n = strlen(t);
  if (n == 0 || n > RLY_MAX_TOKEN) return false;
  for (const char *p = t; *p; p++)
    if (!id_char(*p) && *p != '.' && *p != '~') return false;
  return true;
}

bool rly_session_id_ok(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n >= RLY_MAX_ID) return false;
  for (const char *p = id; *p; p++)
    if (!id_char(*p)) return false;
  return true;
}

void *rly_time_json(int64_t t) {
  if (t <= 0) return json_null();
  char buf[32];
  cm_rfc3339(t, buf, sizeof buf);
  return json_string(buf);
}

void *rly_status_json(const Relay__V1__SessionStatus *st) {
  json_t *o = json_object();
  json_object_set_new(o, "id", json_string(st->id));
  json_object_set_new(o, "state", json_string(st->state));
  json_object_set_new(o, "created_at", rly_time_json(st->created_at_unix));
  json_object_set_new(o, "expires_at", rly_time_json(st->expires_at_unix));
  json_object_set_new(o, "last_activity", rly_time_json(st->last_activity_unix));
  json_object_set_new(o, "bytes_in", json_integer((json_int_t)st->bytes_in));
  json_object_set_new(o, "bytes_out", json_integer((json_int_t)st->bytes_out));
  json_object_set_new(o, "initiator_connected", json_boolean(st->initiator_connected));
  json_object_set_new(o, "responder_connected", json_boolean(st->responder_connected));
  if (st->target && st->target[0]) json_object_set_new(o, "target", json_string(st->target));
  return o;
}

char *rly_status_text(const Relay__V1__SessionStatus *st) {
  json_t *o = rly_status_json(st);
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return text;
}

int rly_grpc_to_http(int grpc_status, const char **code) {
  switch (grpc_status) {
  case TUN_GRPC_NOT_FOUND: *code = "not_found"; return 404;
  case TUN_GRPC_UNAUTHENTICATED: *code = "unauthenticated"; return 401;
  case TUN_GRPC_PERMISSION_DENIED: *code = "permission_denied"; return 403;
  case TUN_GRPC_INVALID_ARGUMENT: *code = "invalid_request"; return 400;
  case TUN_GRPC_RESOURCE_EXHAUSTED: *code = "too_many_requests"; return 429;
  case TUN_GRPC_UNAVAILABLE:
  case TUN_GRPC_DEADLINE_EXCEEDED: *code = "controller_unavailable"; return 503;
  default: *code = "bad_controller_answer"; return 502;
  }
}

void rly_metric(cm_buf *b, const char *name, const char *help, bool counter, uint64_t v) {
  const char *type = counter ? "counter" : "gauge";
  cm_buf_printf(b, "# HELP relay_%s %s\n# TYPE relay_%s %s\nrelay_%s %llu\n", name, help, name,
                type, name, (unsigned long long)v);
}

/* The text format's label escapes: backslash, double quote, line feed. */
static void label_value(cm_buf *b, const char *v) {
  for (const char *p = v; *p; p++) {
    if (*p == '\\' || *p == '"')
      cm_buf_printf(b, "\\%c", *p);
    else if (*p == '\n')
      cm_buf_printf(b, "\\n");
    else
      cm_buf_append(b, p, 1);
  }
}

void rly_metric_labeled(cm_buf *b, const char *name, const char *help, bool counter,
                        const char *const (*labels)[2], size_t nlabels, uint64_t v) {
  if (help)
    cm_buf_printf(b, "# HELP relay_%s %s\n# TYPE relay_%s %s\n", name, help, name,
                  counter ? "counter" : "gauge");
  cm_buf_printf(b, "relay_%s{", name);
  for (size_t i = 0; i < nlabels; i++) {
    cm_buf_printf(b, "%s%s=\"", i ? "," : "", labels[i][0]);
    label_value(b, labels[i][1]);
    cm_buf_append(b, "\"", 1);
  }
  cm_buf_printf(b, "} %llu\n", (unsigned long long)v);
}
