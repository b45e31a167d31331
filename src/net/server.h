/*
 * server: starting and stopping the worker threads and their listeners
 * (struct server and struct worker are in worker.h, which the connections
 * share without knowing this module). Main thread, except where a function
 * says otherwise.
 */
#ifndef CHATD_SERVER_H
#define CHATD_SERVER_H

#include "conf/config.h"
#include "net/worker.h"

/*
 * Bind and listen on one socket per worker (no thread starts here). The
 * address must be free: when any other socket already listens on it, even
 * one of the same user with SO_REUSEPORT, this fails with -EADDRINUSE and
 * the message "cannot listen on HOST:PORT: address already in use"; on
 * success no other process can join the port, except one of the same user
 * that sets SO_REUSEPORT on purpose. Returns 0 or a negative errno with a
 * message in err; on failure nothing is left open. Main thread, once.
 */
int server_listen(struct server *srv, const struct config *cfg, char *err, size_t errlen);

/* Start the workers on the sockets of server_listen. Returns 0 or a
 * negative errno with a message in err. Main thread, once. */
int server_start(struct server *srv, char *err, size_t errlen);

#ifdef CHATD_FUZZ
/* Fuzz builds only: server_start without threads; the caller runs worker
 * 0's loop on its own thread. */
int server_fuzz_start(struct server *srv, char *err, size_t errlen);
#endif

/* Begin a graceful shutdown: every worker stops accepting and closes its
 * WebSockets with 1001. Any thread. */
void server_begin_shutdown(struct server *srv);

/* Close every remaining connection at once (the drain timed out). Any thread. */
void server_force_close(struct server *srv);

/* Wait for every worker thread to finish. The workers' memory stays: other
 * threads (the storage writer draining its queue) may still post to them,
 * and such posts are dropped (their `drop` runs). Main thread. */
void server_join(struct server *srv);
/* Free the workers, once nothing can post to them any more (after
 * server_join and after every other thread that posts has stopped). Main
 * thread. */
void server_release(struct server *srv);

#endif
