/*
 * The Redis bus (bus/redis.c): the nodes sharing one Redis deliver each
 * other's events. See bus.h for the contract and redis.c for the channels.
 */
#ifndef CHATD_BUS_REDIS_H
#define CHATD_BUS_REDIS_H

#include <stddef.h>

#include "bus/bus.h"

/* Channels "chatd:<db>:u:0" to "chatd:<db>:u:<BUS_REDIS_SHARDS - 1>". */
#define BUS_REDIS_SHARDS 64u

/* Connect to the Redis at url (redis://[[user]:password@]host[:port][/db]),
 * subscribe, and return the bus. 0, or a negative errno with a one-line
 * reason in err (no password in it). Main thread. */
int bus_redis_open(struct bus **out, const struct bus_handler *handler, const char *url,
                   const char *node_id, char *err, size_t errlen);

#endif
