/*
 * mailbox.c — the bounded message queue between the edge's threads (see
 * mailbox.h): a mutex-guarded list and a uv_async to wake the loop.
 */
#include "relay/mailbox.h"

#include <stdlib.h>

static void release(rly_msg *m) {
  if (m->drop)
    m->drop(m);
  else
    free(m);
}

/* Everything queued, at once (and, when closing, nothing after). */
static rly_msg *take_all(rly_mailbox *mb, bool close) {
  uv_mutex_lock(&mb->lock);
  if (close) mb->closed = true;
  rly_msg *m = mb->head;
  mb->head = mb->tail = NULL;
  mb->waiting = 0;
  uv_mutex_unlock(&mb->lock);
  return m;
}

/* Runs what was taken outside the lock: a handler may post (even to this
 * mailbox) without deadlock. */
static void on_async(uv_async_t *a) {
  rly_mailbox *mb = a->data;
  rly_msg *m = take_all(mb, false);
  while (m) {
    rly_msg *next = m->next;
    m->next = NULL;
    m->run(m);
    m = next;
  }
}

int rly_mailbox_init(rly_mailbox *mb, uv_loop_t *loop, size_t cap) {
  mb->head = mb->tail = NULL;
  mb->waiting = 0;
  mb->cap = cap;
  mb->closed = false;
  mb->on_closed = NULL;
  int rc = uv_mutex_init(&mb->lock);
  if (rc != 0) return rc;
  if ((rc = uv_async_init(loop, &mb->async, on_async)) != 0) {
    uv_mutex_destroy(&mb->lock);
    return rc;
  }
  mb->async.data = mb;
  return 0;
}

bool rly_mailbox_post(rly_mailbox *mb, rly_msg *m, bool reserved) {
  m->next = NULL;
  m->counted = !reserved;
  uv_mutex_lock(&mb->lock);
  if (mb->closed || (!reserved && mb->waiting >= mb->cap)) {
    uv_mutex_unlock(&mb->lock);
    return false;
  }
  if (mb->tail)
    mb->tail->next = m;
  else
    mb->head = m;
  mb->tail = m;
  if (!reserved) mb->waiting++;
  /* Under the lock: close() cannot slip in between and close the handle
   * this wakes. */
  uv_async_send(&mb->async);
  uv_mutex_unlock(&mb->lock);
  return true;
}

static void on_handle_closed(uv_handle_t *h) {
  rly_mailbox *mb = h->data;
  if (mb->on_closed) mb->on_closed(mb);
}

void rly_mailbox_destroy(rly_mailbox *mb) { uv_mutex_destroy(&mb->lock); }

void rly_mailbox_close(rly_mailbox *mb, void (*on_closed)(rly_mailbox *mb)) {
  rly_msg *m = take_all(mb, true);
  while (m) {
    rly_msg *next = m->next;
    release(m);
    m = next;
  }
  mb->on_closed = on_closed;
  uv_close((uv_handle_t *)&mb->async, on_handle_closed);
}
