/*
 * net/loop.h: one allocation libuv cannot fail gracefully, made at start.
 *
 * A uv loop keeps a table indexed by descriptor number of what it watches,
 * and grows it (to the next power of two) when a descriptor beyond it is
 * watched; if that growth cannot be allocated libuv aborts the process,
 * having no error to return. Descriptor numbers are the process's, so a
 * loop that watches new descriptors while chatd serves (a worker, the
 * outbound HTTP client, the Redis subscriber) may need it at any time. But
 * past start chatd refuses only the operation that lacks memory (README,
 * "Out of memory"), so each such loop has its table made at start for
 * every descriptor the process may use: net_loop_init.
 *
 * Threads: net_fd_budget once in main before any loop exists;
 * net_loop_init by the loop's owner in place of uv_loop_init (it runs the
 * new loop once, before any other handle is made on it).
 */
#ifndef CHATD_NET_LOOP_H
#define CHATD_NET_LOOP_H

#include <uv.h>

/* How many descriptors chatd plans for (its connections and then some);
 * the reservation is this or the descriptor limit, whichever is lower.
 * Unset: NET_FD_BUDGET_DEFAULT. */
#define NET_FD_BUDGET_DEFAULT 65536
void net_fd_budget(unsigned n);

/* uv_loop_init, then make the loop's descriptor table cover every
 * descriptor number below the budget (or the limit), by watching one
 * descriptor of that number for a moment. 0, or a negative errno with the
 * loop closed again (out of memory here; libuv would abort later). */
int net_loop_init(uv_loop_t *loop);

#endif
