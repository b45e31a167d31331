/*
 * Unit tests for net/loop.c: a loop made by net_loop_init watches a
 * descriptor numbered up to its budget without allocating (a failing
 * allocator then changes nothing), where without it libuv grows its table
 * and, the growth failing, aborts the process; the reservation leaves every
 * open descriptor as it was. Each case runs in a child process: libuv's
 * allocator is chosen once per process, and one case must die.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "net/loop.h"

#define BUDGET 4096
#define HIGH_FD 3000 /* beyond any table a fresh loop starts with */

static volatile bool fail_growth;

static void *t_realloc(void *p, size_t n)
{
    return fail_growth && n ? NULL : realloc(p, n);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)p;
    (void)status;
    (void)events;
}

/* In a child: watch a descriptor numbered HIGH_FD with every reallocation
 * failing, after reserving or not. 0 when it got through. */
static int watch_high(bool reserve)
{
    if (uv_replace_allocator(malloc, t_realloc, calloc, free) != 0)
        return 10;
    net_fd_budget(BUDGET);
    uv_loop_t loop;
    if ((reserve ? net_loop_init(&loop) : uv_loop_init(&loop)) != 0)
        return 11;
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int fd = efd < 0 ? -1 : fcntl(efd, F_DUPFD_CLOEXEC, HIGH_FD);
    if (fd < HIGH_FD)
        return 13;
    uv_poll_t p;
    if (uv_poll_init(&loop, &p, fd) != 0)
        return 14;
    fail_growth = true;
    int rc = uv_poll_start(&p, UV_READABLE, on_poll); /* libuv aborts here if it must grow */
    fail_growth = false;
    uv_poll_stop(&p);
    uv_close((uv_handle_t *)&p, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    close(fd);
    close(efd);
    return rc == 0 ? 0 : 15;
}

static int run_child(bool reserve)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit none = {0, 0}; /* the abort expected: no core file */
        setrlimit(RLIMIT_CORE, &none);
        _exit(watch_high(reserve));
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static int setup(void **state)
{
    (void)state;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_max < BUDGET) {
        print_message("descriptor hard limit below %d\n", BUDGET);
        return -1;
    }
    if (rl.rlim_cur < BUDGET) {
        rl.rlim_cur = BUDGET;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            return -1;
    }
    return 0;
}

/* The hazard is libuv's: without the reservation, a failed growth aborts. */
static void test_unreserved_growth_aborts(void **state)
{
    (void)state;
    int status = run_child(false);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void test_reserved_loop_needs_no_growth(void **state)
{
    (void)state;
    int status = run_child(true);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A descriptor open at the very number the reservation would take stays
 * open and untouched; the loop is usable after. */
static void test_reservation_leaves_open_descriptors(void **state)
{
    (void)state;
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    int high = fcntl(pipefd[1], F_DUPFD_CLOEXEC, BUDGET - 1);
    assert_int_equal(high, BUDGET - 1);
    net_fd_budget(BUDGET);
    uv_loop_t loop;
    assert_int_equal(net_loop_init(&loop), 0);
    assert_int_equal(write(high, "x", 1), 1);
    char c = 0;
    assert_int_equal(read(pipefd[0], &c, 1), 1);
    assert_int_equal(c, 'x');
    assert_int_equal(uv_run(&loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(high);
    close(pipefd[0]);
    close(pipefd[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unreserved_growth_aborts),
        cmocka_unit_test(test_reserved_loop_needs_no_growth),
        cmocka_unit_test(test_reservation_leaves_open_descriptors),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
