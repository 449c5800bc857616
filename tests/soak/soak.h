/*
 * soak.h — private header of the soak harness (tests/soak; see
 * docs/SOAK.md).  One process, one libuv loop, no threads:
 *
 *   soak.c    options, the run's phases, the fault schedule, churn,
 *             readiness polling, sampling and the report
 *   procs.c   child processes: enrolment, `relay serve` and `relay-controller
 *             run` (kill -9, SIGSTOP/SIGCONT, restart), /proc sampling
 *   admin.c   a keep-alive HTTP/1.1 client for the admin API and /readyz
 *   peers.c   sessions and their two WebSocket peers (on tests/bench/wsload.h):
 *             streaming, verification (stream.c), resume, redial with backoff
 *   stream.c  the sans-I/O message streams (stream.h)
 *
 * Every wait is bounded; every counter that can show a failure is reported.
 */
#ifndef RELAY_SOAK_H
#define RELAY_SOAK_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/common.h"
#include "stream.h"

typedef struct wl_conn wl_conn;

/* ---- options -------------------------------------------------------------------------- */

typedef struct sk_opts {
  const char *relay_bin, *ctl_bin, *tmp, *json;
  double seconds;      /* the fault phase */
  int sessions;        /* long-lived sessions */
  double rate;         /* bytes/s each peer sends */
  double window;       /* bytes a sender may have unacknowledged */
  double churn;        /* short sessions created per second */
  int churn_max;       /* short sessions open at once */
  double ctl_every;    /* controller kill -9 period, s (0: none) */
  double ctl_down;     /* how long it stays dead */
  double hang_at;      /* SIGSTOP the controller at this time (<0: never) */
  double hang_for;     /* for this long */
  int relay_kills;     /* relay kill -9 count, spread over the first half */
  double call_timeout; /* relay --call-timeout, s */
  int max_connecting;  /* peer handshakes in flight at once (this generator) */
  bool check_rss;      /* RSS flatness decides the verdict too */
  bool keep;           /* keep the work directory */
  const char *inject;  /* damage to cause on purpose (see sk_inject; "hold": an fd) */
  uint64_t seed;
} sk_opts;

extern sk_opts opt;

/* ---- time and the loop ---------------------------------------------------------------- */

extern uv_loop_t *g_loop;
double sk_now(void); /* seconds since the run began (monotonic) */
void sk_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Runs the loop until done() or `timeout` seconds; false on timeout. */
bool sk_run_until(bool (*done)(void), double timeout);
void sk_run_for(double secs);

/* ---- outages -------------------------------------------------------------------------- */

typedef enum { O_CTL_KILL, O_CTL_HANG, O_RELAY_KILL } sk_okind;

/* Why an upgrade or admin call was refused, for the tallies. */
enum { R_503, R_404, R_409, R_429, R_CONN, R_OTHER, R_KINDS };

typedef struct sk_outage {
  sk_okind kind;
  double t0;                /* fault injected */
  double t_dead;            /* kill -9: the process was reaped (-1: not a kill) */
  double t_restart;         /* restarted / SIGCONT (-1: not yet) */
  double t_unready;         /* first /readyz other than 200 (-1: none seen) */
  double t_ready;           /* first 200 after it (-1: not yet) */
  double t_flowing;         /* relay kill: every session moved new bytes both ways */
  double t_end;             /* attribution of refusals ends here (-1: open) */
  long creates, creates_ok; /* POST /admin/sessions attempted / 201 while it lasted */
  long create_refused[R_KINDS];
  long upgrade_refused[R_KINDS];
  long reconnects;           /* relay kill: peer connections re-established */
  double flow_p50, flow_p99; /* relay kill: per-session time to flow again, from the kill */
  double relay_cpu, gen_cpu; /* relay kill: CPU seconds of each until every session flowed */
  int dropped;               /* sessions dropped while it lasted */
} sk_outage;

/* The outage refusals are attributed to now (NULL: none). */
sk_outage *sk_outage_now(void);
int sk_refusal_kind(int http_status);

/* ---- children (procs.c) --------------------------------------------------------------- */

typedef struct sk_proc {
  const char *name;
  pid_t pid;          /* 0: not running */
  bool stopped;       /* SIGSTOPped */
  int starts;         /* incarnations so far */
  int crashes;        /* exits we did not cause */
  char log[PATH_MAX]; /* stdout+stderr, appended across incarnations */
} sk_proc;

extern sk_proc g_relay, g_ctl;
extern int g_relay_port, g_tunnel_port;
extern char g_cert[PATH_MAX], g_key[PATH_MAX];
extern char g_version[256]; /* `relay version`, first line */

void sk_enrol(void);
/* Starts the relay on the remembered ports (port 0 the first time, read back
 * from its log); false if it exits or does not listen within 15 s. */
bool sk_relay_start(void);
void sk_ctl_start(void);
/* kill -9 and reap (running the loop); returns the seconds it took. */
double sk_proc_kill(sk_proc *p);
/* SIGTERM; true when it exited 0 within the bound (else says why on stdout). */
bool sk_proc_stop(sk_proc *p, double timeout);
/* Reaps an exit we did not cause: true (and a report) if p died. */
bool sk_proc_died(sk_proc *p);
/* Lines of a log that contain needle (-1: unreadable). */
long sk_log_count(const char *path, const char *needle);
long sk_rss_kib(pid_t pid);
/* Open fds of pid, leaving out libuv's per-loop /dev/null reserve. */
int sk_fd_count(pid_t pid);
/* What each of pid's fds points at, one per line (for a leak's report). */
void sk_fd_list(pid_t pid, FILE *out);
double sk_cpu_s(pid_t pid); /* user + system CPU seconds, -1 if unknown */
double sk_self_cpu_s(void); /* this process's */

/* ---- admin client (admin.c) ----------------------------------------------------------- */

typedef struct ac_conn ac_conn;
enum { AC_FAILED = 0, AC_TIMEOUT = -1 }; /* statuses that are not HTTP's */
/* status: the HTTP status, AC_FAILED (connection failed or lost) or
 * AC_TIMEOUT; body is NUL-terminated and valid during the call. */
typedef void (*ac_cb)(void *ud, int status, const char *body, size_t n);

ac_conn *ac_new(void);
bool ac_busy(const ac_conn *a);
/* One request at a time per connection; connects first if needed. */
void ac_request(ac_conn *a, const char *method, const char *path, const char *body, double timeout,
                ac_cb cb, void *ud);
void ac_tick(ac_conn *a);
/* Closes the connection (a pending request fails); the object stays. */
void ac_close(ac_conn *a);
bool ac_closed(const ac_conn *a);
void ac_free(ac_conn *a); /* only once ac_closed */
/* The relay's public address. */
extern struct sockaddr_storage g_relay_addr;
extern cm_tls_ctx *g_tls;

/* ---- sessions and peers (peers.c) ----------------------------------------------------- */

typedef enum {
  P_IDLE,       /* not connected, nothing scheduled */
  P_QUEUED,     /* waiting for a handshake slot */
  P_CONNECTING, /* TCP + TLS + upgrade in progress */
  P_WAIT_R,     /* upgraded, waiting for the counterpart's "R" */
  P_FLOWING,    /* streaming */
  P_BACKOFF,    /* refused or cut: redial at retry_at */
  P_DONE,       /* closed for good */
} sk_pstate;

typedef struct sk_session sk_session;

typedef struct sk_peer {
  sk_session *s;
  int role; /* 0 initiator, 1 responder */
  wl_conn *c;
  sk_pstate state;
  sk_tx tx;                  /* what this peer sends */
  sk_rx rx;                  /* what it receives */
  int relay_gen;             /* relay incarnation of the connection */
  double tokens, filled_at;  /* send pacing (token bucket) */
  double retry_at;           /* P_BACKOFF: when to redial */
  int attempt;               /* failures since the last good connection */
  double acked_at;           /* last "A" sent */
  uint64_t acked_sent;       /* its value */
  uint64_t acked_bytes;      /* rx.bytes then */
  double ready_at, first_rx; /* this connection: upgrade done, first message checked */
  bool msg_open;             /* a binary message is being received */
  char text[SK_CTL_MAX + 1]; /* a text (control) message being received */
  size_t textn;
  bool text_bad;
  uint16_t want_close; /* the close code this peer must get (0: none planned) */
  cm_list qlink;       /* in the handshake queue */
} sk_peer;

typedef enum { S_FLOWING, S_DRAINING, S_CLOSING, S_CLOSED } sk_sstate;

struct sk_session {
  uint64_t num; /* stream seeds derive from it */
  bool churn;
  int born_gen; /* relay incarnation when it was created */
  char id[32], token[2][32];
  sk_peer p[2];
  sk_sstate state;
  bool dropped;
  double close_at;       /* churn: when to start closing */
  double drain_deadline; /* draining: give up then */
  bool by_delete;        /* churn: closed with DELETE (else the initiator leaves) */
  bool delete_sent;      /* a DELETE was ever sent (a later 1001 is its kick) */
  bool delete_pending;   /* one is outstanding: the session must outlive its answer */
  bool kicked;           /* a peer was closed with 1001 after a DELETE */
  int delete_status;     /* the last DELETE's answer */
  double delete_retry_at;
  cm_list link; /* in g_sessions */
};

/* Totals of every stream, also of the sessions already gone. */
typedef struct sk_totals {
  uint64_t bytes_ok, msgs_ok, sent_bytes, resent_bytes;
  uint64_t lost_bytes, lost_msgs, corrupt_msgs, dup_msgs, dup_bytes, undelivered_bytes;
  long protocol_errors;           /* bad control text, a resume the sender refuses */
  long dropped;                   /* sessions */
  long wrong_close;               /* a planned close that arrived with another code, or never */
  long kick_missing;              /* a DELETEd session whose peers were not closed */
  long unexpected_close_codes[5]; /* 1000, 1001, 1011, other code, no close frame */
  long upgrades_ok, upgrade_refused[R_KINDS];
  long churn_created, churn_closed, churn_deleted, churn_left;
  long delete_refused, delete_404;
} sk_totals;

extern sk_totals g_tot;
extern cm_list g_sessions;
extern int g_relay_gen; /* relay incarnation (bumped before each kill) */
extern bool g_sending;  /* senders make new messages */

sk_session *sk_session_new(uint64_t num, bool churn, const char *id, const char *ti,
                           const char *tr);
void sk_session_connect(sk_session *s);
/* Stop sending new data; finish once everything sent is received. */
void sk_session_drain(sk_session *s, double timeout);
bool sk_session_drained(const sk_session *s);
/* Initiator leaves (responder must get 1000), or after a DELETE (both 1001). */
void sk_session_leave(sk_session *s);
void sk_session_expect_kick(sk_session *s);
/* A DELETE was refused: the session goes on (back to draining). */
void sk_session_unplan(sk_session *s);
bool sk_session_flowing(const sk_session *s); /* both peers streaming */
/* Both peers moved checked bytes on connections to relay incarnation gen. */
bool sk_session_flows_on(const sk_session *s, int gen);
/* When it did: the later of its peers' first checked message (0: not yet). */
double sk_session_flowed_at(const sk_session *s);
bool sk_session_closed(const sk_session *s);
/* Adds its counters to g_tot, unlinks and frees it (it must be closed). */
void sk_session_finish(sk_session *s);
void sk_peers_tick(void);
int sk_peers_connecting(void);
/* Checking the harness: "corrupt" flips a bit in a message of session 0,
 * "gap" loses one of session 1, "cut" resets a connection of session 2. */
void sk_inject(const char *what);
/* Aborts every connection (end of run, after the verdict's counters). */
void sk_peers_abort_all(void);

#endif
