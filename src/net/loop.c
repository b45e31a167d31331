/*
 * DESIGN: see net/loop.h. The reservation watches, through a uv_poll_t, a
 * descriptor numbered just below the budget (an eventfd moved there with
 * F_DUPFD, which takes the lowest free number at or above the one asked,
 * so nothing already open is touched), stops at once and closes it. Only
 * the table's growth stays: the loop never polled that descriptor. It runs
 * on a new loop, before any other handle: one turn of the loop then ends
 * the handle's close, and nothing else runs.
 */
#include "net/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

static unsigned budget = NET_FD_BUDGET_DEFAULT; /* written once by main, before any thread */

void net_fd_budget(unsigned n)
{
    budget = n;
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)p;
    (void)status;
    (void)events; /* never called: the loop has not run while it was watched */
}

static int reserve_fds(uv_loop_t *loop)
{
    struct rlimit rl;
    unsigned want = budget;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
        want = (unsigned)rl.rlim_cur;
    if (want < 2)
        return 0;
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0)
        return -errno;
    /* The highest number free at or below want - 1: try downwards when a
     * number near the limit is taken (F_DUPFD fails with EMFILE then). */
    int fd = -1;
    for (unsigned at = want - 1; fd < 0 && at > (unsigned)efd; at = at > 64 ? at - 64 : 0)
        fd = fcntl(efd, F_DUPFD_CLOEXEC, (int)at);
    if (fd < 0) {
        close(efd);
        return 0; /* nothing above the eventfd's own number is free: nothing to grow */
    }
    close(efd);
    uv_poll_t p;
    int rc = uv_poll_init(loop, &p, fd);
    if (rc == 0) {
        rc = uv_poll_start(&p, UV_READABLE, on_poll); /* grows the table to cover fd */
        uv_poll_stop(&p);
        uv_close((uv_handle_t *)&p, NULL);
        uv_run(loop, UV_RUN_NOWAIT); /* the close ends here: p may go */
    }
    close(fd);
    return rc;
}

int net_loop_init(uv_loop_t *loop)
{
    int rc = uv_loop_init(loop);
    if (rc != 0)
        return rc;
    if ((rc = reserve_fds(loop)) != 0)
        uv_loop_close(loop);
    return rc;
}
