/*
 * common.h — the small shared plumbing every other library of relay stands
 * on, and nothing else: structured logging with secret redaction, layered
 * configuration (flags > RELAY_* environment > JSON file > defaults),
 * base64url, CSPRNG tokens, time, bounded byte buffers, and `cm_stream`, one
 * abstraction for a plain or TLS TCP connection on libuv (OpenSSL 3 over
 * memory BIOs) used by the public listener, the controller tunnel and every
 * client we write.
 *
 * Conventions (shared by all libraries of the project):
 *  - Prefix per library: cm_ here, tun_ in tunnel/, ctl_ in controller-stub/,
 *    rly_ in relay/.  Objects are made by x_new and released by x_free (or
 *    x_close for handles whose release is asynchronous, as in libuv).
 *  - Errors are negative return codes (negated errno or libuv codes) and,
 *    where a caller needs words, a message written into a caller buffer.
 *    Nothing here calls exit().
 *  - Every queue has a limit.  cm_buf has a hard cap; cm_stream reports its
 *    write-queue size and signals watermarks so callers apply backpressure.
 */
#ifndef RELAY_COMMON_H
#define RELAY_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <http_parser.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CM_UNUSED(x)    ((void)(x))
#define CM_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define CM_MAX(a, b)    ((a) > (b) ? (a) : (b))

/* ------------------------------------------------------------------------
 * Intrusive doubly-linked list (circular, with a sentinel head).
 * ---------------------------------------------------------------------- */
typedef struct cm_list {
  struct cm_list *prev, *next;
} cm_list;

#define cm_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
static inline void cm_list_init(cm_list *l) { l->prev = l->next = l; }
static inline bool cm_list_empty(const cm_list *l) { return l->next == l; }
static inline bool cm_list_linked(const cm_list *n) { return n->next != NULL && n->next != n; }
static inline void cm_list_push_back(cm_list *head, cm_list *n) {
  n->prev = head->prev;
  n->next = head;
  head->prev->next = n;
  head->prev = n;
}
static inline void cm_list_remove(cm_list *n) {
  if (!n->next) return;
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}

/* ------------------------------------------------------------------------
 * Logging: one JSON object per line on stderr:
 *   {"time":"2026-11-21T10:00:00.123Z","level":"info","component":"http",
 *    "msg":"request","method":"GET","path":"/relay/x?token=REDACTED"}
 * Fields are typed; CM_URL fields have secret query values redacted and
 * CM_SECRET fields are never printed.  Thread-safe (one write(2) a line).
 * ---------------------------------------------------------------------- */
typedef enum { CM_LOG_DEBUG = 0, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR, CM_LOG_OFF } cm_log_level;

typedef enum { CM_F_STR = 1, CM_F_INT, CM_F_URL, CM_F_BOOL } cm_field_type;

typedef struct cm_field {
  const char *key;
  cm_field_type type;
  const char *s;
  long long i;
} cm_field;

#define CM_S(k, v)   ((cm_field){(k), CM_F_STR, (v), 0})
#define CM_I(k, v)   ((cm_field){(k), CM_F_INT, NULL, (long long)(v)})
#define CM_URL(k, v) ((cm_field){(k), CM_F_URL, (v), 0})
#define CM_B(k, v)   ((cm_field){(k), CM_F_BOOL, NULL, (v) ? 1 : 0})

void cm_log_set_level(cm_log_level level);
cm_log_level cm_log_get_level(void);
/* Parses "debug|info|warn|error|off"; returns -1 when unknown. */
int cm_log_level_parse(const char *s, cm_log_level *out);
/* Redirects log lines (tests); fd -1 restores stderr. */
void cm_log_set_fd(int fd);
void cm_log_fields(cm_log_level level, const char *component, const char *msg,
                   const cm_field *fields, size_t nfields);

#define cm_log(level, component, msg, ...)                                                         \
  do {                                                                                             \
    if ((level) >= cm_log_get_level()) {                                                           \
      const cm_field cm_f_[] = {CM_S(NULL, NULL), ##__VA_ARGS__};                                  \
      cm_log_fields((level), (component), (msg), cm_f_ + 1, CM_ARRAY_LEN(cm_f_) - 1);              \
    }                                                                                              \
  } while (0)

/* Formats an error message into a caller buffer (NULL or 0: ignored). */
void cm_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies `url` into `out` with the value of every secret-bearing query
 * parameter (token, access_token, id_token, jwt, code, secret, password,
 * key) replaced by REDACTED.  Always NUL-terminates; truncates if needed. */
void cm_redact_url(const char *url, char *out, size_t outlen);

/* ------------------------------------------------------------------------
 * Configuration.  A program describes its settings in a table; cm_config
 * fills a struct from, in rising precedence: defaults, a JSON file
 * (--config FILE or RELAY_CONFIG), RELAY_<NAME> environment variables and
 * --name[=value] flags (a spec may name another prefix than RELAY_).  Every
 * value is validated; errors name the setting.
 * ---------------------------------------------------------------------- */
typedef enum {
  CM_CFG_STRING = 1, /* char * (heap; freed by cm_config_free) */
  CM_CFG_INT,        /* long long, with [min, max] */
  CM_CFG_BOOL,       /* bool; a flag with no value means true */
  CM_CFG_DURATION,   /* long long milliseconds; "250ms", "30s", "5m", "2h"; bare = seconds */
  CM_CFG_SIZE,       /* long long bytes; "64KiB", "1MiB", "1G"; bare = bytes */
  CM_CFG_LIST,       /* cm_strlist; flag repeatable, env comma-separated, JSON array */
} cm_cfg_type;

typedef struct cm_strlist {
  char **v;
  size_t n;
} cm_strlist;

typedef struct cm_cfg_opt {
  const char *name; /* flag name: "listen" -> --listen, RELAY_LISTEN, "listen" */
  cm_cfg_type type;
  size_t offset;      /* offsetof(config struct, field) */
  const char *def;    /* default as text, NULL for none */
  long long min, max; /* for INT/DURATION/SIZE; both 0 means unbounded */
  const char *help;
  const char *metavar; /* shown in --help, e.g. "ADDR:PORT" */
} cm_cfg_opt;

typedef struct cm_cfg_spec {
  const char *usage;   /* "relay serve [options]" */
  const char *summary; /* one paragraph shown by --help */
  const cm_cfg_opt *opts;
  size_t nopts;
  /* Environment variables are <env_prefix><NAME> and the file variable
   * <env_prefix>CONFIG; NULL means "RELAY_".  The client commands use
   * "SWSRS_", the names swsrs users already have set. */
  const char *env_prefix;
} cm_cfg_spec;

enum { CM_CFG_OK = 0, CM_CFG_HELP = 1, CM_CFG_ERROR = -1 };

/* Parses argv (without the program/subcommand words).  Returns CM_CFG_OK,
 * CM_CFG_HELP when --help/-h was given, or CM_CFG_ERROR with a message in
 * err.  Positional arguments are refused unless `positional` is non-NULL,
 * in which case they are appended to it. */
int cm_config_load(const cm_cfg_spec *spec, void *cfg, int argc, char **argv,
                   cm_strlist *positional, char *err, size_t errlen);
/* The same without I/O: the JSON settings are the text json (jsonlen
 * bytes; NULL for none) named src in messages ("config file PATH"), and
 * --config / RELAY_CONFIG are ignored.  cm_config_load reads the file, at
 * most CM_CFG_FILE_MAX bytes, and calls this. */
enum { CM_CFG_FILE_MAX = 1 << 20 };
int cm_config_load_text(const cm_cfg_spec *spec, void *cfg, const char *json, size_t jsonlen,
                        const char *src, int argc, char **argv, cm_strlist *positional, char *err,
                        size_t errlen);
void cm_config_free(const cm_cfg_spec *spec, void *cfg);
void cm_config_print_help(const cm_cfg_spec *spec, FILE *out);

/* For a subcommand's main: loads its settings, and on --help prints help
 * (returns 0) or on a bad setting prints the error and usage (returns 2).
 * Returns -1 when the command should go on.  cmd names it in messages,
 * e.g. "relay serve". */
int cm_config_cli(const cm_cfg_spec *spec, void *cfg, int argc, char **argv, const char *cmd);

/* Multi-call programs: `prog <command> [options]`.  Unknown commands and a
 * missing one exit 2 with the command list; `help`, --help, -h print it. */
typedef struct cm_subcmd {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} cm_subcmd;
int cm_subcmd_main(const char *prog, const cm_subcmd *cmds, size_t n, int argc, char **argv);

void cm_strlist_free(cm_strlist *l);
int cm_strlist_push(cm_strlist *l, const char *s);

/* Parsers used by cm_config, exposed for other text inputs. */
int cm_parse_duration_ms(const char *s, long long *out);
int cm_parse_size(const char *s, long long *out);
/* "host:port", "[v6]:port" or ":port" (host defaults to def_host). */
int cm_parse_hostport(const char *s, const char *def_host, char *host, size_t hostlen, int *port);
/* Resolves a numeric host:port into a sockaddr (no DNS). */
int cm_sockaddr_from(const char *host, int port, struct sockaddr_storage *out);
/* True when the numeric host is a loopback address. */
bool cm_host_is_loopback(const char *host);

/* ------------------------------------------------------------------------
 * Target policy (netpolicy.c, sans-I/O): where a target session may go.
 * The target is "host:port" (a DNS name, a dotted IPv4 address, or
 * [IPv6]); the allow list holds "CIDR:PORT" / "CIDR:LOW-HIGH" entries
 * (10.0.0.0/8:22, [2001:db8::]/32:443); a fixed block (loopback,
 * link-local, unspecified, multicast, cloud metadata) is refused unless an
 * entry lying inside the block names it (127.0.0.1/32:22 does,
 * 0.0.0.0/0:22 does not).  IPv4-mapped IPv6 addresses are checked as IPv4.
 * ---------------------------------------------------------------------- */
#define CM_TARGET_MAX 262 /* "[" 253 "]:" 65535 and a little */

typedef struct cm_ipaddr {
  uint8_t b[16]; /* IPv4 in the first 4 bytes when v4 */
  bool v4;
} cm_ipaddr;

typedef struct cm_target {
  char host[254]; /* name or IP literal, without brackets */
  uint16_t port;
  bool is_ip;
  cm_ipaddr addr; /* when is_ip */
} cm_target;

/* 0, or -EINVAL with a message (names nothing of the input). */
int cm_target_parse(const char *text, cm_target *t, char *err, size_t errlen);
/* A strict literal (no leading zeros, no zone); mapped IPv6 becomes IPv4. */
int cm_ipaddr_parse(const char *s, cm_ipaddr *out);
int cm_ipaddr_from_sockaddr(const struct sockaddr *sa, cm_ipaddr *out, uint16_t *port);
void cm_ipaddr_text(const cm_ipaddr *a, char *out, size_t outlen);
/* What part of the fixed block a is in ("loopback", ...), or NULL. */
const char *cm_ipaddr_blocked(const cm_ipaddr *a);

typedef struct cm_netpolicy cm_netpolicy;
typedef enum { CM_NET_ALLOWED = 0, CM_NET_NOT_LISTED, CM_NET_BLOCKED } cm_net_verdict;
/* NULL with a message for a malformed entry or more than 256. */
cm_netpolicy *cm_netpolicy_new(const char *const *entries, size_t n, char *err, size_t errlen);
void cm_netpolicy_free(cm_netpolicy *p);
size_t cm_netpolicy_count(const cm_netpolicy *p); /* 0 for NULL: the feature is off */
cm_net_verdict cm_netpolicy_check(const cm_netpolicy *p, const cm_ipaddr *a, uint16_t port);
/* Some entry allows the port (a name's addresses are known only at dial time). */
bool cm_netpolicy_port_allowed(const cm_netpolicy *p, uint16_t port);

/* ------------------------------------------------------------------------
 * base64url (RFC 4648 §5), no padding on output, padding tolerated on input.
 * ---------------------------------------------------------------------- */
size_t cm_b64url_encoded_len(size_t n);
/* Writes NUL-terminated text; returns its length, or 0 if outlen too small. */
size_t cm_b64url_encode(const uint8_t *in, size_t n, char *out, size_t outlen);
/* Returns decoded length or -1 on invalid input / short buffer. */
long cm_b64url_decode(const char *in, size_t n, uint8_t *out, size_t outlen);

/* ------------------------------------------------------------------------
 * Random identifiers: 128 CSPRNG bits as 22 base64url characters.
 * ---------------------------------------------------------------------- */
#define CM_TOKEN_LEN 22
int cm_random_bytes(uint8_t *out, size_t n);
int cm_random_token(char out[CM_TOKEN_LEN + 1]);
/* Uniform in [0, n) from the CSPRNG (for jitter). */
uint64_t cm_random_below(uint64_t n);
/* Constant-time equality of two byte strings of the same length. */
bool cm_ct_equal(const void *a, const void *b, size_t n);
/* SHA-256 of data as raw bytes and as lowercase hex (65 bytes with NUL). */
void cm_sha256(const void *data, size_t n, uint8_t out[32]);
void cm_hex(const uint8_t *in, size_t n, char *out);

/* ------------------------------------------------------------------------
 * Time.
 * ---------------------------------------------------------------------- */
uint64_t cm_now_mono_ms(void); /* monotonic, for deadlines */
int64_t cm_now_wall_ms(void);  /* Unix epoch, for timestamps */
/* "2026-11-21T10:00:00Z" (sec precision, UTC) into out (>= 21 bytes). */
void cm_rfc3339(int64_t unix_seconds, char *out, size_t outlen);
/* RFC 7231 IMF-fixdate for the HTTP Date header (>= 30 bytes). */
void cm_http_date(int64_t unix_seconds, char *out, size_t outlen);

/* ------------------------------------------------------------------------
 * Memory for secrets (slot tokens, keys, messages carrying them): blocks
 * know their size and are wiped (OPENSSL_cleanse) before they are freed,
 * and realloc moves and wipes rather than leave a stale copy.  Shaped for
 * allocator hooks that free without a size (protobuf-c, nghttp2).
 * ---------------------------------------------------------------------- */
void *cm_secret_alloc(size_t n);
void *cm_secret_calloc(size_t n, size_t size);
void *cm_secret_realloc(void *p, size_t n);
void cm_secret_free(void *p);

/* ------------------------------------------------------------------------
 * cm_buf: a contiguous byte buffer with a read offset and a hard cap.
 * ---------------------------------------------------------------------- */
typedef struct cm_buf {
  uint8_t *data;
  size_t off;  /* first unread byte */
  size_t len;  /* bytes in use from data[0] (so unread = len - off) */
  size_t cap;  /* allocated */
  size_t max;  /* hard limit on unread bytes; 0 = unlimited */
  bool secret; /* wipe bytes it lets go of (cm_buf_init_secret) */
} cm_buf;

void cm_buf_init(cm_buf *b, size_t max);
/* A buffer for secrets: bytes it no longer holds are wiped — consumed,
 * reset, moved by compaction or growth (never realloc), and all of it on
 * free.  cm_buf_printf formats through a stack buffer: not for these. */
void cm_buf_init_secret(cm_buf *b, size_t max);
void cm_buf_free(cm_buf *b);
static inline size_t cm_buf_size(const cm_buf *b) { return b->len - b->off; }
/* Never NULL (an empty buffer yields a pointer to a static empty byte). */
static inline const uint8_t *cm_buf_head(const cm_buf *b) {
  static const uint8_t empty[1];
  return b->data ? b->data + b->off : empty;
}
/* Appends; returns -ENOBUFS when it would pass the cap, -ENOMEM on OOM. */
int cm_buf_append(cm_buf *b, const void *data, size_t n);
int cm_buf_printf(cm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cm_buf_consume(cm_buf *b, size_t n);
void cm_buf_reset(cm_buf *b);
/* Reserves room for n more bytes and returns where to write them. */
uint8_t *cm_buf_reserve(cm_buf *b, size_t n);
void cm_buf_commit(cm_buf *b, size_t n);

/* ------------------------------------------------------------------------
 * HTTP/1.1 responses, parsed sans-I/O for every client of ours (the IdP
 * fetches, the admin client, the WebSocket upgrade).  The caller feeds the
 * bytes it reads and says when the connection ends; out come the status,
 * the headers and the body of the final response.
 *
 * Framing is libhttp-parser's: a body is delimited by Content-Length, by
 * chunked transfer coding, or, with neither, by the end of the connection
 * (cm_http_resp_eof); 1xx, 204 and 304 have none, nor has the answer to a
 * HEAD (CM_HTTP_RESP_HEAD).  A status outside 100..599 is malformed.
 * Interim 1xx responses are skipped; 101 is final and ends at the end of
 * its head, so after the answer to an upgrade `consumed` says where the
 * new protocol's bytes begin.  Bytes after the final response are not
 * consumed.  Limits: the body at max_body (-EFBIG); the head at
 * CM_HTTP_RESP_MAX_HEAD bytes of names and values and
 * CM_HTTP_RESP_MAX_HEADERS headers, and the status line and headers at
 * libhttp-parser's HTTP_MAX_HEADER_SIZE (80 KiB in Debian's build), each
 * -EPROTO like any malformed response.
 *
 * Ownership: the caller owns the struct; cm_http_resp_free releases the
 * body and headers (wiped first with CM_HTTP_RESP_SECRET, for answers that
 * carry tokens).
 * ---------------------------------------------------------------------- */
#define CM_HTTP_RESP_MAX_HEAD    (32 * 1024)
#define CM_HTTP_RESP_MAX_HEADERS 100

enum {
  CM_HTTP_RESP_SECRET = 1, /* body and headers are wiped when let go */
  CM_HTTP_RESP_HEAD = 2,   /* the answer to a HEAD request: no body */
};

typedef struct cm_http_resp {
  http_parser parser;
  cm_buf body;        /* the body so far; complete once result is 1 */
  cm_buf head;        /* the final response's headers: name NUL value NUL ... */
  size_t nheaders;    /* headers in head */
  int in;             /* private: what the last header callback gathered */
  bool no_body;       /* CM_HTTP_RESP_HEAD */
  int status;         /* the response's status code, once result is 1 */
  int result;         /* 0 in progress, 1 complete, < 0 failed (negative errno) */
  const char *errmsg; /* static text, once result < 0 */
} cm_http_resp;

void cm_http_resp_init(cm_http_resp *r, size_t max_body, unsigned flags);
void cm_http_resp_free(cm_http_resp *r);

/* Parses len more bytes.  Returns the result: 1 once the response is
 * complete, 0 while more is needed, or -EPROTO (malformed) / -EFBIG (body
 * over max_body) with errmsg set.  Once it is non-zero it stays so and
 * further bytes are ignored.  An empty feed changes nothing (the end of
 * the connection is cm_http_resp_eof).  *consumed (may be NULL) is how
 * many of these bytes belong to the response: all of them while it is in
 * progress, up to its end when it completes, 0 once it had a result. */
int cm_http_resp_feed(cm_http_resp *r, const void *data, size_t len, size_t *consumed);

/* The connection ended: a body delimited by the end of the connection is
 * complete now.  Returns the result as cm_http_resp_feed; 0 means the
 * response was cut short (the caller names the cause). */
int cm_http_resp_eof(cm_http_resp *r);

/* The final response's headers, once complete (none before): the value
 * of the first header called name (case-insensitive; leading and
 * trailing blanks removed) or NULL, and the i-th header in order.  The
 * strings live as long as the parser. */
const char *cm_http_resp_header(const cm_http_resp *r, const char *name);
size_t cm_http_resp_header_count(const cm_http_resp *r);
bool cm_http_resp_header_at(const cm_http_resp *r, size_t i, const char **name, const char **value);

/* ------------------------------------------------------------------------
 * Files.
 * ---------------------------------------------------------------------- */
/* Writes data to path atomically (temp file, fsync, rename, fsync dir) with
 * the given mode.  With exclusive, fails with -EEXIST if path exists. */
int cm_write_file_atomic(const char *path, const void *data, size_t n, unsigned mode,
                         bool exclusive);
/* Reads a whole file (up to max bytes) into a NUL-terminated heap buffer. */
int cm_read_file(const char *path, size_t max, char **out, size_t *outlen);
/* mkdir -p with mode for missing components. */
int cm_mkdir_p(const char *path, unsigned mode);

/* ------------------------------------------------------------------------
 * TLS contexts.
 * ---------------------------------------------------------------------- */
typedef struct cm_tls_ctx cm_tls_ctx;

typedef struct cm_tls_config {
  const char *cert_file;  /* PEM chain; required for servers */
  const char *key_file;   /* PEM private key */
  const char *ca_file;    /* trust anchors: clients verify servers with it,
                             servers verify client certificates with it */
  bool verify_peer;       /* client: verify server (default true via
                             cm_tls_config_init); server: request a client cert */
  bool require_peer_cert; /* server: fail the handshake without one */
  const char *alpn;       /* comma list in preference order: "h2,http/1.1" */
  bool system_ca;         /* client: also trust the system store */
  bool tls13_only;        /* refuse TLS 1.2 (links where both ends are ours) */
  bool cleanse_plaintext; /* wipe decrypted records once read (links carrying
                             secrets; SSL_OP_CLEANSE_PLAINTEXT) */
} cm_tls_config;

void cm_tls_config_init(cm_tls_config *c);
cm_tls_ctx *cm_tls_ctx_new_server(const cm_tls_config *c, char *err, size_t errlen);
cm_tls_ctx *cm_tls_ctx_new_client(const cm_tls_config *c, char *err, size_t errlen);
/* Drops the caller's reference: connections made from ctx keep it (and
 * their handshakes working) until they end, so a server may replace its
 * context while connections from the old one live. */
void cm_tls_ctx_free(cm_tls_ctx *ctx);
/* Underlying SSL_CTX (for callers that need extra verification hooks). */
void *cm_tls_ctx_ssl_ctx(cm_tls_ctx *ctx);

/* ------------------------------------------------------------------------
 * cm_stream: a TCP (or AF_UNIX) connection, plain or TLS, on a libuv loop.
 *
 * Life cycle: made by cm_stream_accept / cm_stream_connect / cm_stream_open_fd,
 * it reports on_open once the TLS handshake is done (at once for plain),
 * on_read for plaintext, on_drain when the write queue falls below the low
 * watermark after having reached the high one, and exactly one on_close,
 * after which the stream is freed.  Callbacks may call any cm_stream
 * function, including cm_stream_close, on the same stream.
 * ---------------------------------------------------------------------- */
typedef struct cm_stream cm_stream;

/* on_read's data always has this many bytes before it, in the same
 * buffer, that the owner may overwrite: room to put a small header in
 * front of received bytes and write both as one piece, without a copy. */
#define CM_STREAM_HEADROOM 16

typedef struct cm_stream_cbs {
  void (*on_open)(cm_stream *s);
  void (*on_read)(
      cm_stream *s, uint8_t *data,
      size_t len); /* bytes are the callee's to modify (e.g. unmask in place) until it returns */
  void (*on_drain)(cm_stream *s);
  /* err: 0 on orderly close, else a negative code; msg says why. */
  void (*on_close)(cm_stream *s, int err, const char *msg);
} cm_stream_cbs;

typedef struct cm_stream_opts {
  cm_tls_ctx *tls;               /* NULL: plain */
  const char *sni;               /* client: server name to send and verify */
  uint32_t handshake_timeout_ms; /* 0: 10 s */
  size_t high_watermark;         /* 0: 256 KiB */
  size_t low_watermark;          /* 0: high / 4 */
  size_t max_write_queue;        /* hard cap; 0: 16 * high.  Writes past it fail */
  bool keepalive;                /* TCP keepalive + TCP_USER_TIMEOUT */
  uint32_t keepalive_s;          /* idle seconds before probes; 0: 30 */
  uint32_t user_timeout_ms;      /* TCP_USER_TIMEOUT; 0: keepalive_s + 10 s */
} cm_stream_opts;

enum {
  CM_EHANDSHAKE = -10001, /* TLS handshake failed */
  CM_ETIMEOUT = -10002,   /* handshake timeout */
  CM_EQUEUE = -10003,     /* write queue cap exceeded */
  CM_ETLS = -10004,       /* TLS error after handshake */
  CM_ECLOSED = -10005,    /* operation on a closing stream */
};

/* Accepts a pending connection from a listening server handle. */
cm_stream *cm_stream_accept(uv_stream_t *server, const cm_stream_opts *o, const cm_stream_cbs *cbs,
                            void *ud, int *err);
/* Connects to a numeric address; on_open after connect (+ handshake). */
cm_stream *cm_stream_connect(uv_loop_t *loop, const struct sockaddr *addr, const cm_stream_opts *o,
                             const cm_stream_cbs *cbs, void *ud, int *err);
/* Takes over a TCP socket accepted elsewhere (server role): as
 * cm_stream_accept, for a listener that hands connections to other loops.
 * fd belongs to the stream from here on, also when this fails. */
cm_stream *cm_stream_accept_fd(uv_loop_t *loop, int fd, const cm_stream_opts *o,
                               const cm_stream_cbs *cbs, void *ud, int *err);
/* Wraps a connected socket fd (socketpair for the in-process transport).
 * is_server selects the TLS role when o->tls is set. */
cm_stream *cm_stream_open_fd(uv_loop_t *loop, int fd, bool is_server, const cm_stream_opts *o,
                             const cm_stream_cbs *cbs, void *ud, int *err);

/* Moving a connection to another loop (another thread), between reads:
 * detach stops reading and, once no write is queued, calls cb (perhaps
 * inside this call) with a parcel holding all the stream is — socket, TLS
 * session, ciphertext not yet decrypted, whether reading is paused; the
 * stream is then gone, without on_close.  Should it fail first (a reset
 * while writes drain), it closes as usual and cb never runs.  Only for an
 * open TCP stream with nothing corked.  adopt makes the stream again on
 * `loop` (on that loop's thread); the parcel is consumed either way. */
typedef struct cm_stream_parcel cm_stream_parcel;
int cm_stream_detach(cm_stream *s, void (*cb)(void *ud, cm_stream_parcel *p), void *ud);
cm_stream *cm_stream_adopt(uv_loop_t *loop, cm_stream_parcel *p, const cm_stream_cbs *cbs, void *ud,
                           int *err);
void cm_stream_parcel_free(cm_stream_parcel *p);

void *cm_stream_get_data(const cm_stream *s);
void cm_stream_set_data(cm_stream *s, void *ud);
void cm_stream_set_cbs(cm_stream *s, const cm_stream_cbs *cbs);
uv_loop_t *cm_stream_loop(const cm_stream *s);

/* Queues bytes (copied).  Returns 0, CM_EQUEUE past the hard cap (the
 * stream is then closed), or CM_ECLOSED. */
int cm_stream_write(cm_stream *s, const void *data, size_t len);
/* Gathers several pieces into one write. */
int cm_stream_writev(cm_stream *s, const uv_buf_t *bufs, size_t n);
/* Bytes accepted by cm_stream_write not yet handed to the kernel. */
size_t cm_stream_write_queued(const cm_stream *s);
/* Bytes a write may still add before the hard cap (which closes). */
size_t cm_stream_write_room(const cm_stream *s);
/* Cork: writes gather (up to one TLS record) until the matching uncork,
 * so a burst of small frames costs one record and one syscall.  Nests.
 * A graceful close sends what is corked. */
void cm_stream_cork(cm_stream *s);
void cm_stream_uncork(cm_stream *s);
bool cm_stream_above_high(const cm_stream *s);

void cm_stream_pause(cm_stream *s);
void cm_stream_resume(cm_stream *s);
bool cm_stream_paused(const cm_stream *s);

/* Graceful: flush, TLS close_notify, FIN, then close.  Idempotent. */
void cm_stream_close(cm_stream *s);
/* Abrupt: drop queued data and reset the connection. */
void cm_stream_abort(cm_stream *s);
bool cm_stream_closing(const cm_stream *s);

bool cm_stream_is_tls(const cm_stream *s);
/* Negotiated ALPN protocol ("" if none). */
const char *cm_stream_alpn(const cm_stream *s);
/* SNI the client sent (server side) or NULL. */
const char *cm_stream_sni(const cm_stream *s);
/* TLS version string ("TLSv1.3") or NULL for plain. */
const char *cm_stream_tls_version(const cm_stream *s);
/* Verified peer certificate: SHA-256 over DER.  False when none. */
bool cm_stream_peer_fingerprint(const cm_stream *s, uint8_t out[32]);
/* The verified peer certificate (X509 *), borrowed; NULL when none. */
void *cm_stream_peer_cert(const cm_stream *s);
/* Remote address as text "ip:port" (or "local" for AF_UNIX). */
const char *cm_stream_peer_addr(const cm_stream *s);

/* ------------------------------------------------------------------------
 * Listening sockets.
 * ---------------------------------------------------------------------- */
/* Binds a TCP listener on "host:port" with SO_REUSEADDR.  The handle is
 * initialised on loop; close it with uv_close.  Port 0 picks a free port;
 * cm_tcp_bound_port reports it. */
/* Bind only (listen later with uv_listen): the port is known before the
 * socket accepts anything. */
int cm_tcp_bind(uv_loop_t *loop, uv_tcp_t *tcp, const char *hostport, char *err, size_t errlen);
/* The same as a bare non-blocking socket (for listeners not on a uv_tcp_t,
 * or several with SO_REUSEPORT). */
int cm_tcp_bind_fd(const char *hostport, bool reuseport, int *fd, char *err, size_t errlen);
int cm_fd_bound_port(int fd);
/* "ip:port" or "[ipv6]:port" ("local" for other families). */
void cm_sockaddr_text(const struct sockaddr *sa, char *out, size_t outlen);
int cm_tcp_listen(uv_loop_t *loop, uv_tcp_t *tcp, const char *hostport, int backlog,
                  uv_connection_cb cb, char *err, size_t errlen);
int cm_tcp_bound_port(const uv_tcp_t *tcp);

/* ------------------------------------------------------------------------
 * systemd: socket activation and readiness (activation.c).
 * ---------------------------------------------------------------------- */
/* The inherited listening socket (LISTEN_FDS for this pid) bound to
 * exactly addr, made non-blocking and close-on-exec, or -1.  Each is
 * handed out once; cm_tcp_bind_fd asks here before it binds (not for
 * SO_REUSEPORT sockets). */
int cm_activation_take(const struct sockaddr_storage *addr);
/* Whether fd is one of the inherited sockets (taken or not). */
bool cm_activation_inherited(int fd);
/* How many inherited sockets nobody took, their addresses (space-separated)
 * in out. */
size_t cm_activation_unclaimed(char *out, size_t outlen);
/* sd_notify: state ("READY=1", "STOPPING=1", ...) to $NOTIFY_SOCKET if it
 * is set (0 if not).  Negative on failure. */
int cm_notify(const char *state);

/* ------------------------------------------------------------------------
 * PKI for enrolment and development certificates (OpenSSL 3, ECDSA P-256).
 * Keys and certificates are OpenSSL objects (EVP_PKEY *, X509 *) passed as
 * void * so this header needs no OpenSSL includes.  PEM outputs are heap
 * strings the caller frees.
 *
 * Identities: certificates issued by the controller CA carry a URI SAN that
 * says what they are: CM_PKI_URI_RELAY for relays (serverAuth), and
 * CM_PKI_URI_CONTROLLER for controllers (clientAuth).  A relay admits a
 * controller only with the controller identity, so another relay's
 * certificate is never accepted as a controller.
 * ---------------------------------------------------------------------- */
#define CM_PKI_URI_RELAY      "urn:relay:role:relay"
#define CM_PKI_URI_CONTROLLER "urn:relay:role:controller"

enum { CM_PKI_SERVER = 1, CM_PKI_CLIENT = 2, CM_PKI_CA = 4 };

typedef struct cm_pki_issue {
  const char *cn;         /* subject CN */
  const cm_strlist *sans; /* DNS names and IP literals (IPs become iPAddress) */
  const char *uri;        /* URI SAN identity, or NULL */
  unsigned usage;         /* CM_PKI_* bits: EKUs serverAuth/clientAuth, or a CA */
  int days;               /* validity from now (notBefore = now - 5 min) */
} cm_pki_issue;

/* Loads the PEM key at path; when the file does not exist, makes a P-256
 * key and writes it with mode 0600 atomically, never replacing a file.  A
 * file that exists but does not parse is an error, left untouched. */
int cm_pki_key_load_or_create(const char *path, void **pkey, bool *created, char *err,
                              size_t errlen);
int cm_pki_key_load(const char *path, void **pkey, char *err, size_t errlen);
void cm_pki_key_free(void *pkey);
/* PEM of the private key (for writing elsewhere) — handle as a secret. */
int cm_pki_key_pem(void *pkey, char **pem, char *err, size_t errlen);
/* A self-signed certificate for pkey. */
int cm_pki_self_signed(void *pkey, const cm_pki_issue *opt, char **pem, char *err, size_t errlen);
/* A PEM CSR with subject CN, signed by pkey. */
int cm_pki_csr(void *pkey, const char *cn, char **pem, char *err, size_t errlen);
/* Verifies the CSR's self-signature, then issues a certificate for its
 * public key signed by the CA.  Subject, SANs, identity and usage come from
 * opt (opt->cn NULL: the CSR's CN); nothing else is copied from the CSR. */
int cm_pki_sign_csr(void *ca_key, const char *ca_cert_pem, const char *csr_pem,
                    const cm_pki_issue *opt, char **cert_pem, char *err, size_t errlen);
/* Issues a certificate for a key we hold (e.g. the controller's own). */
int cm_pki_issue_for_key(void *ca_key, const char *ca_cert_pem, void *subject_key,
                         const cm_pki_issue *opt, char **cert_pem, char *err, size_t errlen);
/* Certificate checks on an X509 *. */
bool cm_pki_cert_has_uri(void *x509, const char *uri);
bool cm_pki_cert_has_eku(void *x509, unsigned usage);
/* The earliest notAfter (Unix seconds) of the PEM certificates in a file —
 * a chain or a CA bundle is of use only until its first one ends; an error
 * when the file has none. */
int cm_pki_cert_file_not_after(const char *path, int64_t *not_after, char *err, size_t errlen);

/* Version strings of the libraries common links. */
const char *cm_openssl_version(void);

#ifdef __cplusplus
}
#endif
#endif
