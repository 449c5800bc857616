/*
 * link.h — (private to tunnel/) what both ends of the controller link share:
 * a cm_stream carrying one nghttp2 session, with output pumped under
 * backpressure, PING keepalive, and bounded per-stream output queues that
 * back nghttp2 data providers.  relay_side.c and ctl_side.c embed a
 * tun_link in their own link objects and supply the nghttp2 callbacks.
 */
#ifndef RELAY_TUNNEL_LINK_H
#define RELAY_TUNNEL_LINK_H

#include <nghttp2/nghttp2.h>

#include "tunnel/tunnel.h"

typedef struct tun_link tun_link;

typedef struct tun_link_hooks {
  /* Transport is open (TLS done).  Return non-zero to refuse the peer. */
  int (*on_open)(tun_link *l);
  /* The transport closed; the nghttp2 session is still valid here. */
  void (*on_closed)(tun_link *l, int err, const char *msg);
  /* Last call: free the object embedding the link. */
  void (*on_free)(tun_link *l);
  /* Keepalive: prove the peer alive (the link has been silent for the ping
   * interval).  NULL: an HTTP/2 PING. */
  void (*probe)(tun_link *l);
  /* The time set with tun_link_wake_at has come (may be NULL). */
  void (*on_wake)(tun_link *l);
} tun_link_hooks;

/* Keepalive.  Silence is measured from the last byte received.  A link
 * silent for ping_interval is probed; a probe unanswered for
 * TUN_PROBE_OVERDUE_MS makes the link "overdue" (callers route new work
 * elsewhere while they can); a link silent for ping_timeout is dropped.
 * One timer per link serves probing, silence and the owner's wake-ups,
 * armed for the nearest and re-armed lazily, so a read costs no timer
 * update; "overdue" is computed when asked. */
#define TUN_PROBE_OVERDUE_MS 2000

struct tun_link {
  cm_stream *st;
  nghttp2_session *h2;
  tun_link_config cfg;
  const tun_link_hooks *hooks;
  uv_timer_t timer;
  uint64_t last_rx_ms;
  uint64_t probe_ms;                /* when the outstanding probe was sent; 0: none */
  uint64_t wake_ms;                 /* owner's wake-up time; 0: none */
  uint32_t interval_ms, timeout_ms; /* effective (the owner may back off) */
  bool started;
  bool closing, closed;
  bool in_h2; /* inside nghttp2 (mem_recv/mem_send): pump later */
  char peer[64];
  char why[160]; /* reason for closing, for the log */
};

void tun_link_config_fill(tun_link_config *c);
/* Initialises the link on loop (ping timer); the stream is attached by
 * tun_link_accept/connect/open_fd. */
void tun_link_init(tun_link *l, uv_loop_t *loop, const tun_link_config *cfg,
                   const tun_link_hooks *hooks);
const cm_stream_cbs *tun_link_stream_cbs(void);
/* Starts keepalive; call once the nghttp2 session exists. */
void tun_link_start(tun_link *l);
/* Sets the probe interval (the timeout keeps the configured slack above
 * it), e.g. when a peer asks for fewer pings. */
void tun_link_set_interval(tun_link *l, uint32_t interval_ms);
/* True when a probe has gone unanswered for TUN_PROBE_OVERDUE_MS. */
bool tun_link_overdue(const tun_link *l);
/* Calls hooks->on_wake at (or soon after) the monotonic time at_ms. */
void tun_link_wake_at(tun_link *l, uint64_t at_ms);
/* Writes what nghttp2 has to send, as long as the transport keeps up. */
void tun_link_pump(tun_link *l);
/* Releases a link whose stream never opened (on_free runs later). */
void tun_link_discard(tun_link *l);
/* GOAWAY then close (graceful) — or abort at once. */
void tun_link_close(tun_link *l, const char *why);
void tun_link_abort(tun_link *l, const char *why);

/* A bounded output queue behind an nghttp2 data provider. */
typedef struct tun_outq {
  cm_buf buf;
  bool eof;      /* no more data after buf */
  bool deferred; /* the provider returned DEFERRED: resume on push */
  bool trailers; /* server side: send grpc-status trailers at eof */
  int status;    /* trailers: grpc-status */
  char message[256];
} tun_outq;

void tun_outq_init(tun_outq *q, size_t max);
void tun_outq_free(tun_outq *q);
/* Appends a framed message; resumes the stream if it was waiting. */
int tun_outq_push(tun_link *l, int32_t sid, tun_outq *q, const ProtobufCMessage *msg);
nghttp2_data_provider tun_outq_provider(tun_outq *q);

/* Memory for every nghttp2 session of the link: wiped when freed, since
 * nghttp2's frame buffers hold the messages (and tokens) that crossed. */
nghttp2_mem *tun_link_mem(void);

/* nghttp2 header helpers. */
#define TUN_NV(n, v)                                                                               \
  { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }
bool tun_hdr_is(const uint8_t *name, size_t len, const char *lit);

#endif
