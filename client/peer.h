/*
 * peer.h — (private to client/) the pieces of the peer pumps: the local
 * end of a tunnel (rc_io, io.c: a TCP connection or the standard streams)
 * and the UDP pumps (udp.c), driven by peer.c.
 */
#ifndef RELAY_CLIENT_PEER_H
#define RELAY_CLIENT_PEER_H

#include "client/internal.h"

typedef struct rc_io rc_io;

typedef struct rc_io_opts {
  size_t high_watermark; /* output queue that asks the caller to pause; 0: 256 KiB */
} rc_io_opts;

typedef struct rc_io_cbs {
  void (*on_open)(rc_io *io);                            /* dialled: connected */
  void (*on_read)(rc_io *io, uint8_t *data, size_t len); /* data is modifiable */
  void (*on_eof)(rc_io *io);                             /* input ended (FIN, end of file) */
  void (*on_drain)(rc_io *io);                           /* output queue fell to a quarter */
  /* Last: the io ended (err 0 after rc_io_finish; else the local side
   * failed, msg says how).  io is freed after. */
  void (*on_done)(rc_io *io, int err, const char *msg);
} rc_io_cbs;

/* A connection pending on a listener.  Reading starts paused. */
rc_io *rc_io_accept(uv_stream_t *server, const rc_io_opts *o, const rc_io_cbs *cbs, void *ud,
                    int *err);
/* Dials HOST:PORT ([v6]:port), resolving off the loop and trying each
 * address.  Writes before on_open wait (bounded, as all output).  A
 * failure comes as on_done with "cannot connect to ...".  NULL for a
 * malformed HOST:PORT. */
rc_io *rc_io_dial(uv_loop_t *loop, const char *hostport, const rc_io_opts *o, const rc_io_cbs *cbs,
                  void *ud);
/* Standard input and output (pipes, terminals, sockets, files). */
rc_io *rc_io_stdio(uv_loop_t *loop, int in_fd, int out_fd, const rc_io_opts *o,
                   const rc_io_cbs *cbs, void *ud, char *err, size_t errlen);

void *rc_io_get_data(const rc_io *io);
void rc_io_pause(rc_io *io);
void rc_io_resume(rc_io *io);
bool rc_io_eof(const rc_io *io);
/* Queues output (copied).  0; 1 when above the high watermark (pause the
 * source until on_drain); < 0 when finishing or past the hard cap (the io
 * then fails). */
int rc_io_write(rc_io *io, const uint8_t *data, size_t len);
size_t rc_io_queued(const rc_io *io);
bool rc_io_above_high(const rc_io *io);
/* Ends the io: graceful sends what is queued, then FIN (or end of the
 * output) and waits a moment for the other side's; otherwise a TCP reset
 * at once.  on_done follows. */
void rc_io_finish(rc_io *io, bool graceful);

#endif
