/*
 * tunnel.h — the controller link: gRPC over HTTP/2 over one TLS connection
 * that the *controller* dials, with roles reversed once it is up: the relay
 * is the HTTP/2 client and calls the controller, the HTTP/2 server.
 *
 * Relay side (tun_relay): a listener for controller connections (mutual
 * TLS: the peer must present a certificate from the pinned controller CA
 * carrying the controller identity), plus links handed in directly (the
 * in-process socketpair of embedded mode).  Unary calls are spread across
 * live links round-robin; each call has a deadline; when its link drops a
 * call fails at once with UNAVAILABLE; with no link up a call fails at once.
 * A call answered NOT_FOUND is retried once on each *other* controller
 * (links are grouped by controller identity), so several independent
 * controllers can share a relay.  Each link carries one long-lived Events
 * stream: session events flow up, commands (kick, drain, limits) flow down.
 *
 * Controller side (tun_ctl): dials relays (several at once) and redials
 * with exponential backoff and full jitter (1 s doubling to 60 s, reset
 * once a link stayed up 5 s; a link that dies sooner counts as a failure so
 * accept-then-close loops back off), runs the HTTP/2 server on each link and
 * dispatches Validate/Admin to handlers and Events to a callback.
 *
 * Both sides send HTTP/2 PINGs every ping_interval and drop a link whose
 * peer stays silent for ping_timeout; TCP keepalive and TCP_USER_TIMEOUT
 * back that up.  Framing is the standard gRPC wire format (tun_grpc_*), so
 * stock gRPC peers interoperate.  Everything runs on the caller's loop;
 * nothing here is thread-safe (embedded mode runs each side on its own
 * loop and thread, joined only by the socketpair).
 */
#ifndef RELAY_TUNNEL_H
#define RELAY_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/common.h"
#include "proto/controller.pb-c.h"

/* ---- gRPC framing (sans-I/O) ---------------------------------------------- */

enum {
  TUN_GRPC_OK = 0,
  TUN_GRPC_CANCELLED = 1,
  TUN_GRPC_UNKNOWN = 2,
  TUN_GRPC_INVALID_ARGUMENT = 3,
  TUN_GRPC_DEADLINE_EXCEEDED = 4,
  TUN_GRPC_NOT_FOUND = 5,
  TUN_GRPC_ALREADY_EXISTS = 6,
  TUN_GRPC_PERMISSION_DENIED = 7,
  TUN_GRPC_RESOURCE_EXHAUSTED = 8,
  TUN_GRPC_UNIMPLEMENTED = 12,
  TUN_GRPC_INTERNAL = 13,
  TUN_GRPC_UNAVAILABLE = 14,
  TUN_GRPC_UNAUTHENTICATED = 16,
};

#define TUN_GRPC_PREFIX   5
#define TUN_PATH_VALIDATE "/relay.v1.Controller/Validate"
#define TUN_PATH_ADMIN    "/relay.v1.Controller/Admin"
#define TUN_PATH_EVENTS   "/relay.v1.Controller/Events"
/* Response header on Events: the registry the controller answers from.
 * Controllers naming the same registry share their sessions (a fleet on
 * one Redis), so a relay treats their links as one pool: a NOT_FOUND from
 * one is final, a listing asks one of them, events go to any of them. */
#define TUN_HDR_REGISTRY    "relay-registry"
#define TUN_REGISTRY_ID_MAX 64
/* The standard gRPC health check (proto/health.proto): the relay's
 * keepalive probe where a bare PING could count against the controller. */
#define TUN_PATH_HEALTH_CHECK "/grpc.health.v1.Health/Check"

/* Incremental decoder of length-prefixed messages. */
typedef struct tun_grpc_decoder {
  cm_buf buf;         /* partial message (a secret buffer: wiped as let go) */
  size_t max_message; /* larger messages are an error */
  uint8_t hdr[TUN_GRPC_PREFIX];
  size_t hdr_have;
  uint32_t need; /* payload length of the current message */
  bool in_payload;
} tun_grpc_decoder;

void tun_grpc_decoder_init(tun_grpc_decoder *d, size_t max_message);
void tun_grpc_decoder_free(tun_grpc_decoder *d);
/* Feeds bytes; on_message runs for each complete message (a non-zero return
 * stops and is returned).  Returns 0, -EMSGSIZE (too large), -EPROTO
 * (compressed flag: we never negotiate compression), or the callback's. */
int tun_grpc_decode(tun_grpc_decoder *d, const uint8_t *data, size_t len,
                    int (*on_message)(void *ud, const uint8_t *msg, size_t len), void *ud);
/* Appends one framed message (prefix + packed protobuf) to out. */
int tun_grpc_encode(cm_buf *out, const ProtobufCMessage *msg);
/* Decodes a message read off the link (NULL if malformed) into memory that
 * tun_grpc_free wipes: messages may carry slot tokens.  Every message a
 * link decodes goes through these two. */
ProtobufCMessage *tun_grpc_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *msg,
                                  size_t len);
void tun_grpc_free(ProtobufCMessage *msg);
/* grpc-timeout header value: "<digits><unit>", at most 8 digits. */
void tun_grpc_timeout_format(uint64_t ms, char out[16]);
int tun_grpc_timeout_parse(const char *v, uint64_t *ms);
const char *tun_grpc_status_name(int status);
/* Percent-encodes a grpc-message value (RFC 3986 unreserved + space kept). */
void tun_grpc_message_encode(const char *in, char *out, size_t outlen);
void tun_grpc_message_decode(const char *in, char *out, size_t outlen);

/* ---- shared link settings ---------------------------------------------------- */

typedef struct tun_link_config {
  uint32_t ping_interval_ms;     /* 0: 10 s */
  uint32_t ping_timeout_ms;      /* 0: 30 s */
  uint32_t handshake_timeout_ms; /* 0: 10 s */
  size_t max_message;            /* 0: 4 MiB */
  size_t max_event_queue;        /* bytes queued on an Events stream; 0: 1 MiB */
} tun_link_config;

/* An AF_UNIX socketpair for the in-process transport (non-blocking,
 * close-on-exec). */
int tun_socketpair(int fds[2]);

/* ---- relay side ------------------------------------------------------------- */

typedef struct tun_relay tun_relay;
typedef struct tun_call tun_call;

typedef struct tun_relay_config {
  tun_link_config link;
  const char *node_id;
  const char *version;
  const char *public_url;
  const char *region;          /* placement label (Hello.region); NULL: none */
  uint32_t default_timeout_ms; /* 0: 5 s */
  /* Mutual TLS for the tunnel listener.  The controller's certificate must
   * chain to ca_file and carry the URI SAN `controller_uri` (default
   * CM_PKI_URI_CONTROLLER) and the clientAuth EKU. */
  const char *cert_file, *key_file, *ca_file, *controller_uri;
} tun_relay_config;

typedef struct tun_relay_cbs {
  /* A command arrived on an Events stream from controller `controller`. */
  void (*on_command)(void *ud, const char *controller, const Relay__V1__ControllerCommand *cmd);
  /* The number of live links changed. */
  void (*on_links)(void *ud, size_t links);
  /* A link came up: the caller may send a snapshot of live sessions. */
  void (*on_link_up)(void *ud, const char *controller);
} tun_relay_cbs;

/* resp is valid during the callback only (NULL unless status is OK).
 * controller names the controller that answered ("" when none did).
 * status is the controller's gRPC status, or one of ours: UNAVAILABLE (no
 * link, or the link was lost), DEADLINE_EXCEEDED (the call's deadline
 * passed), INTERNAL (the answer was malformed or too large). */
typedef void (*tun_call_cb)(void *ud, int status, const char *message, const ProtobufCMessage *resp,
                            const char *controller);

tun_relay *tun_relay_new(uv_loop_t *loop, const tun_relay_config *cfg, const tun_relay_cbs *cbs,
                         void *ud, char *err, size_t errlen);
/* The tunnel listener's TLS context from cfg's certificate, key and
 * controller CA (any thread; a reload builds one to check it loads). */
cm_tls_ctx *tun_relay_tls_new(const tun_relay_config *cfg, char *err, size_t errlen);
/* Takes over tls for the controller connections accepted from now on (a
 * reload); links up keep theirs and are verified anew at their next
 * handshake.  On the relay's loop. */
void tun_relay_set_tls(tun_relay *r, cm_tls_ctx *tls);
/* Starts accepting controller connections on hostport ("0.0.0.0:8444"). */
int tun_relay_listen(tun_relay *r, const char *hostport, char *err, size_t errlen);
int tun_relay_port(const tun_relay *r);
/* Adopts a connected socket as a link (embedded mode): plain, the
 * controller named `controller`. */
int tun_relay_add_fd(tun_relay *r, int fd, const char *controller);
size_t tun_relay_links(const tun_relay *r);
/* Up links whose keepalive probe is not overdue: a hung controller's link
 * is up until its ping timeout but answers nothing. */
size_t tun_relay_links_answering(const tun_relay *r);
/* Starts a unary call.  Returns the call (cb runs later, exactly once, unless
 * cancelled) or NULL when it fails at once (no link up: *status is
 * UNAVAILABLE; cb is not called). */
tun_call *tun_relay_call(tun_relay *r, const char *path, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *resp_desc, uint32_t timeout_ms,
                         tun_call_cb cb, void *ud, int *status);
/* Like tun_relay_call, on a link of the named controller only (no
 * replays elsewhere): for walks such as listing pages, whose tokens only
 * the controller that made them understands. */
tun_call *tun_relay_call_to(tun_relay *r, const char *controller, const char *path,
                            const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc, uint32_t timeout_ms,
                            tun_call_cb cb, void *ud, int *status);
/* The distinct controllers with a link up, sorted by name (as given to
 * tun_call_cb): at most max of them.  Returns how many. */
#define TUN_CONTROLLER_NAME_MAX 96
size_t tun_relay_controllers(const tun_relay *r, char (*names)[TUN_CONTROLLER_NAME_MAX],
                             size_t max);
/* Like tun_relay_call but on every distinct controller; cb runs once per
 * controller, then `done` once.  Returns the number of calls started. */
size_t tun_relay_call_all(tun_relay *r, const char *path, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *resp_desc, uint32_t timeout_ms,
                          tun_call_cb cb, void (*done)(void *ud), void *ud);
/* The callback will not run; the stream is reset. */
void tun_call_cancel(tun_call *c);
/* Sends an event on the Events stream of `controller` (NULL: every
 * controller).  Bounded: past max_event_queue the event is dropped and
 * counted (session counters are absolute, so the next report heals it). */
int tun_relay_send_event(tun_relay *r, const char *controller, const Relay__V1__RelayEvent *ev);
/* Closes every link and the listener; `done` runs once all is closed. */
/* A restart or upgrade: stops accepting controller connections (links
 * stay up, calls and events go on) and sends Leaving on every link, now
 * and on any Events stream reopened later, so controllers dial the
 * relay's address again — reaching the process that took it over. */
void tun_relay_leave(tun_relay *r);
void tun_relay_close(tun_relay *r, void (*done)(void *ud), void *ud);
void tun_relay_free(tun_relay *r);

typedef struct tun_relay_stats {
  uint64_t calls, calls_failed, calls_unavailable, calls_deadline, calls_replayed, links_accepted,
      links_refused, events_sent, events_dropped, events_reopened, commands, probes_ping,
      probes_health, ping_backoffs;
} tun_relay_stats;
void tun_relay_get_stats(const tun_relay *r, tun_relay_stats *out);

/* ---- controller side ----------------------------------------------------------- */

typedef struct tun_ctl tun_ctl;
typedef struct tun_ctl_link tun_ctl_link;
typedef struct tun_ctl_call tun_ctl_call;

typedef struct tun_ctl_handlers {
  /* Unary handlers answer with tun_ctl_reply before returning, or call
   * tun_ctl_call_defer and answer later; the request is valid during the
   * handler only (a deferring handler copies what it needs). */
  void (*validate)(void *ud, tun_ctl_call *call, const Relay__V1__SlotRequest *req);
  void (*admin)(void *ud, tun_ctl_call *call, const Relay__V1__AdminRequest *req);
  void (*on_event)(void *ud, tun_ctl_link *link, const Relay__V1__RelayEvent *ev);
  /* A link came up (after the Events stream opened) or went down. */
  void (*on_link)(void *ud, tun_ctl_link *link, bool up);
} tun_ctl_handlers;

typedef struct tun_ctl_config {
  tun_link_config link;
  uint32_t backoff_base_ms; /* 0: 1000 */
  uint32_t backoff_max_ms;  /* 0: 60000 */
  uint32_t stable_ms;       /* 0: 5000 */
  /* Replace each dialled link after about this long (+-10 %): the new
   * link comes up before the old one goes.  0: links live until they die. */
  uint32_t max_link_age_ms;
  /* Client TLS: our certificate (with the controller identity) and the CA
   * relays' certificates chain to. */
  const char *cert_file, *key_file, *ca_file;
} tun_ctl_config;

tun_ctl *tun_ctl_new(uv_loop_t *loop, const tun_ctl_config *cfg, const tun_ctl_handlers *h,
                     void *ud, char *err, size_t errlen);
/* Dials "host:port" (DNS names resolved asynchronously) and keeps the link
 * up for good.  server_name: the name to verify in the relay certificate
 * (NULL: host). */
int tun_ctl_dial(tun_ctl *c, const char *hostport, const char *server_name, char *err,
                 size_t errlen);
/* Adopts a connected socket (embedded mode), plain. */
int tun_ctl_add_fd(tun_ctl *c, int fd);
int tun_ctl_reply(tun_ctl_call *call, int status, const char *message,
                  const ProtobufCMessage *resp);
/* The handler will answer after it returns (an asynchronous store).  Until
 * it answers, the call lives; if the stream goes first (the relay gave up,
 * the link dropped), gone(ud) runs once and the call must not be touched
 * again.  After tun_ctl_reply the call is not the caller's any more. */
void tun_ctl_call_defer(tun_ctl_call *call, void (*gone)(void *ud), void *ud);
tun_ctl_link *tun_ctl_call_link(const tun_ctl_call *call);
/* The relay's node id and public URL (from its Hello; "" until then). */
const char *tun_ctl_link_node(const tun_ctl_link *l);
const char *tun_ctl_link_public_url(const tun_ctl_link *l);
/* Sends a command on the link's Events stream. */
int tun_ctl_link_send(tun_ctl_link *l, const Relay__V1__ControllerCommand *cmd);
/* Sends to every link up serving `node` (false when there is none). */
bool tun_ctl_send_to_node(tun_ctl *c, const char *node, const Relay__V1__ControllerCommand *cmd);
size_t tun_ctl_links(const tun_ctl *c);
/* Names the registry this controller answers from (TUN_HDR_REGISTRY) on
 * every Events stream opened from now on: relays pool the links of
 * controllers that name the same one.  "" names none (the default).
 * -EINVAL unless 0..TUN_REGISTRY_ID_MAX of [A-Za-z0-9._-]. */
int tun_ctl_set_registry(tun_ctl *c, const char *id);
void tun_ctl_close(tun_ctl *c, void (*done)(void *ud), void *ud);
void tun_ctl_free(tun_ctl *c);

#endif
