/*
 * The allocation-failure point of the test builds (CMake option
 * CHATD_FAILALLOC, on in the Debug test builds): linked into the chatd
 * binary only, never into a user's build. docs/reliability.md, "Out of
 * memory", says what the test drives with it.
 *
 * The link wraps malloc, calloc, realloc, aligned_alloc, strdup, strndup and
 * mmap (anonymous mappings: the send chunks of util/sbuf) of every chatd
 * object (-Wl,--wrap=...), jansson's too (chatd hands it util/oom's
 * malloc), and the constructor below routes libuv's allocations through
 * the same wrappers. SQLite, libcurl, hiredis,
 * libpq and OpenSSL keep their own allocators: their out-of-memory paths
 * are theirs and surface to chatd as the errors they already return.
 *
 * It does nothing unless CHATD_FAILALLOC names a control file. Then
 * SIGUSR2 (sent by the test once chatd has started, so that start-up is
 * never hit) re-arms it when the control file exists (a signal without one
 * is a repeat and changes nothing):
 *   1. it writes "<path>.out": "seen S failed F\n", the allocations counted
 *      and the failures injected since the previous arming;
 *   2. it reads the control file, "N [COUNT]": from now on the Nth
 *      allocation and the COUNT - 1 after it fail (COUNT 1 by default;
 *      N 0 disarms, a huge N only counts);
 *   3. it removes the control file: the test waits for that, so the arming
 *      is in place before it drives the path under test.
 * The counter is one for all threads: the Nth allocation is whichever
 * thread makes it. The handler uses only async-signal-safe calls (open,
 * read, write, unlink) and atomics.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>
#include <uv.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__real_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off);

static atomic_bool armed;
static atomic_llong seen;     /* allocations since the last arming */
static atomic_llong failed;   /* failures injected since the last arming */
static atomic_llong fail_at;  /* the first allocation that fails (1-based) */
static atomic_llong fail_end; /* the first one past the failing run */
static char ctl_path[PATH_MAX];
static char out_path[PATH_MAX + 8];

/* true when this allocation must fail */
static bool should_fail(void)
{
    if (!atomic_load_explicit(&armed, memory_order_acquire))
        return false;
    long long k = atomic_fetch_add(&seen, 1) + 1;
    if (k >= atomic_load(&fail_at) && k < atomic_load(&fail_end)) {
        atomic_fetch_add(&failed, 1);
        return true;
    }
    return false;
}

void *__wrap_malloc(size_t n)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_malloc(n);
}

void *__wrap_calloc(size_t k, size_t n)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_calloc(k, n);
}

void *__wrap_realloc(void *p, size_t n)
{
    /* realloc(p, 0) frees: that is no allocation to fail. */
    if (n > 0 && should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_realloc(p, n);
}

void *__wrap_aligned_alloc(size_t align, size_t n)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_aligned_alloc(align, n);
}

char *__wrap_strdup(const char *s)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_strndup(s, n);
}

/* true when this anonymous mapping must fail (errno set); files map as usual */
static bool mapping_fails(int flags)
{
    if (!(flags & MAP_ANONYMOUS) || !should_fail())
        return false;
    errno = ENOMEM;
    return true;
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mapping_fails(flags) ? MAP_FAILED : __real_mmap(addr, len, prot, flags, fd, off);
}

/* What a call to mmap becomes with 64-bit file offsets (_FILE_OFFSET_BITS). */
void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mapping_fails(flags) ? MAP_FAILED : __real_mmap64(addr, len, prot, flags, fd, off);
}

/* decimal of v into b (no libc formatting: this runs in a signal handler) */
static size_t put_num(char *b, long long v)
{
    char t[24];
    size_t n = 0, o = 0;
    if (v < 0)
        v = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    while (n > 0)
        b[o++] = t[--n];
    return o;
}

static size_t put_str(char *b, const char *s)
{
    size_t n = strlen(s);
    memcpy(b, s, n);
    return n;
}

static long long parse_num(const char **p)
{
    long long v = 0;
    while (**p == ' ' || **p == '\t')
        (*p)++;
    while (**p >= '0' && **p <= '9') {
        if (v < LLONG_MAX / 10)
            v = v * 10 + (**p - '0');
        (*p)++;
    }
    return v;
}

static void on_usr2(int sig)
{
    (void)sig;
    int saved = errno;
    /* No control file: a repeated signal for an arming already taken (the
     * test sends it again when an arming is slow to show). */
    char in[64] = {0};
    int cfd = open(ctl_path, O_RDONLY | O_CLOEXEC);
    if (cfd < 0) {
        errno = saved;
        return;
    }
    ssize_t r = read(cfd, in, sizeof in - 1);
    (void)r;
    close(cfd);
    atomic_store_explicit(&armed, false, memory_order_release);
    char b[96];
    size_t o = put_str(b, "seen ");
    o += put_num(b + o, atomic_load(&seen));
    o += put_str(b + o, " failed ");
    o += put_num(b + o, atomic_load(&failed));
    b[o++] = '\n';
    int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ssize_t w = write(fd, b, o);
        (void)w;
        close(fd);
    }
    const char *p = in;
    long long at = parse_num(&p);
    long long count = parse_num(&p);
    if (count <= 0)
        count = 1;
    atomic_store(&seen, 0);
    atomic_store(&failed, 0);
    atomic_store(&fail_at, at > 0 ? at : LLONG_MAX);
    atomic_store(&fail_end, at > 0 && at < LLONG_MAX - count ? at + count : LLONG_MAX);
    if (at > 0)
        atomic_store_explicit(&armed, true, memory_order_release);
    unlink(ctl_path);
    errno = saved;
}

static void free_fn(void *p) { free(p); }

__attribute__((constructor)) static void failalloc_init(void)
{
    const char *path = getenv("CHATD_FAILALLOC");
    if (!path || !*path || strlen(path) >= sizeof ctl_path)
        return;
    memcpy(ctl_path, path, strlen(path) + 1);
    memcpy(out_path, path, strlen(path));
    memcpy(out_path + strlen(path), ".out", 5);
    /* Before libuv allocates: it keeps one allocator for life. jansson's
     * is chatd's own (main() sets util/oom's, whose malloc is wrapped). */
    uv_replace_allocator(__wrap_malloc, __wrap_realloc, __wrap_calloc, free_fn);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);
}
