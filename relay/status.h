/*
 * status.h — (private to relay/) the relay's figures as Prometheus text:
 * the connections and workers, the controller link, the data plane, and
 * the relay's own status (its build, the limits in force, the controllers
 * linked).  GET /metrics and GET /admin/metrics answer with it.
 *
 * The controller link's figures are the control thread's, so a handler
 * asks for them and answers when they come back on its worker.
 */
#ifndef RELAY_STATUS_H
#define RELAY_STATUS_H

#include "relay/conn.h"
#include "relay/control.h"

/* Asks the control thread for the link's figures; answer(c, f, extra)
 * runs on c's worker later (cancelled if c goes first).  extra (copied, at
 * most RLY_STATUS_EXTRA_MAX bytes) is handed back to answer.  Answers 503
 * at once when the question cannot be queued. */
#define RLY_STATUS_EXTRA_MAX 1024
typedef void (*rly_status_answer)(rly_conn *c, const rly_link_figures *f, const char *extra);
void rly_status_ask(rly_conn *c, rly_status_answer answer, const char *extra);

/* Answers c with the whole metrics text, with extra_headers (or NULL);
 * the caller decided c may read it. */
void rly_metrics_respond(rly_conn *c, const char *extra_headers);

#endif
