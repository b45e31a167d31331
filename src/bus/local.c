/*
 * DESIGN: the in-process bus is a loopback: every node is this one, so a
 * published event is delivered at once, on the publishing thread, in order.
 * There is nothing to lose, reorder or reconnect.
 */
#include <errno.h>
#include <stdlib.h>

#include "bus/bus.h"

static int local_publish(struct bus *b, const struct bus_event *ev, size_t n)
{
    if (n)
        b->handler.deliver(b->handler.app, ev, n);
    return 0;
}

static void local_close(struct bus *b)
{
    free(b);
}

static const struct bus_ops local_ops = {
    .name = "local",
    .publish = local_publish,
    .close = local_close,
};

int bus_local_open(struct bus **out, const struct bus_handler *handler)
{
    struct bus *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->ops = &local_ops;
    b->handler = *handler;
    *out = b;
    return 0;
}
