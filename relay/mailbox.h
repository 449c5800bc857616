/*
 * mailbox.h — (private to relay/) a bounded multi-producer queue of
 * messages into one libuv loop, woken by uv_async.
 *
 * This is how the edge's threads talk: a worker asks the control thread
 * for a controller call, the control thread answers and routes commands,
 * the acceptor hands connections over, a worker moves a connection to
 * another.  Nothing else crosses threads.  A message carries its own
 * handler, so the mailbox knows no message kinds (and no module needs
 * another's to be posted to).
 *
 * Bounded: a message posted as droppable is refused (post returns false,
 * the sender still owns it and decides: fail the call, count a dropped
 * event) once `cap` droppable messages wait.  Reserved messages are always
 * taken; their senders bound them (an answer exists only for a request
 * that was itself accepted under a bound, a moved connection counts
 * against --max-connections).  So a stalled loop never blocks a sender,
 * and never costs memory without bound.  The lock is held for a pointer
 * swap per message and a list swap per wakeup, never while a handler runs.
 */
#ifndef RELAY_MAILBOX_H
#define RELAY_MAILBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct rly_msg rly_msg;
typedef struct rly_mailbox rly_mailbox;
struct rly_msg {
  rly_msg *next;
  /* Runs on the mailbox's loop and owns m from then on. */
  void (*run)(rly_msg *m);
  /* The mailbox closed with m still in it: release m without running it
   * (NULL: free(m)). */
  void (*drop)(rly_msg *m);
  bool counted; /* set by post: a droppable message */
};

struct rly_mailbox {
  uv_async_t async;
  uv_mutex_t lock;
  rly_msg *head, *tail;
  size_t waiting; /* droppable messages queued */
  size_t cap;
  bool closed;
  void (*on_closed)(struct rly_mailbox *mb);
};

int rly_mailbox_init(rly_mailbox *mb, uv_loop_t *loop, size_t cap);
/* From any thread.  False when refused (full, for a droppable message, or
 * closed): the caller keeps m. */
bool rly_mailbox_post(rly_mailbox *mb, rly_msg *m, bool reserved);
/* On the mailbox's loop: refuses further posts (they fail, from any
 * thread), drops what waits, closes the handle; on_closed runs once it is
 * closed. */
void rly_mailbox_close(rly_mailbox *mb, void (*on_closed)(rly_mailbox *mb));
/* Once no thread may post any more (they are joined): frees the lock. */
void rly_mailbox_destroy(rly_mailbox *mb);

#endif
