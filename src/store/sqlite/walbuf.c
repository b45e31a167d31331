/*
 * DESIGN: one write per commit into the WAL. SQLite appends a commit to
 * the WAL one frame at a time, each frame as two writes (its 24-byte
 * header, then the page): with 1 KiB pages a batch of a few hundred
 * messages cost some two thousand pwrite calls, a fifth of the server's
 * CPU on chat. The writer's connection opens its files through this thin
 * VFS ("chatd-walbuf", over the default one), whose WAL file gathers
 * contiguous writes in memory and hands them to the real file as one write:
 *
 *   - when a commit frame is complete (its header's database size field,
 *     bytes 4-7, is not zero, and its page has followed): so the commit's
 *     write, and any error of it, comes back from the write SQLite makes
 *     last, before it publishes the commit in the WAL index. A failed
 *     write fails the commit exactly as it did unbuffered (SQLITE_FULL on a
 *     full disk, an I/O error otherwise: writer.c decides what follows);
 *   - before anything else is done with the file (read, sync, size,
 *     truncate, close, file control), before a write that does not follow
 *     on, and when the buffer holds WALBUF_MAX bytes;
 *   - and, as a safety net, at the memory barrier SQLite raises on the
 *     shared-memory index before it publishes a commit: nothing is ever
 *     published before its frames are in the file. A failure there cannot
 *     be reported to SQLite (the call returns nothing), so it stops the
 *     process (nothing of that commit was acknowledged; a restart recovers
 *     the WAL up to the last commit that is wholly in the file). Never
 *     seen: the commit frame's write always comes first.
 *
 * Durability is unchanged: the bytes reach the kernel before the commit
 * is visible or acknowledged, as before, and with --sync full SQLite's
 * fsync comes after them (xSync flushes first). Only the writer thread uses
 * this VFS; readers and the checkpointer read the WAL through the default
 * one, and see only published frames.
 *
 * Ownership: a wb_file belongs to the connection that opened it, used by
 * one thread at a time; wb_pending is that thread's own.
 */
#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite/internal.h"
#include "util/log.h"

/* Bytes gathered before a write regardless: the default VFS hands at most
 * 128 KiB - 1 to one write call (it masks larger sizes), so a larger
 * buffer would be written short and read as a full disk. */
#define WALBUF_MAX (64u << 10)
#define WAL_FRAME_HEADER 24

struct wb_file {
    sqlite3_file base;  /* its methods: wb_io */
    sqlite3_file *real; /* the default VFS's file, in the same allocation */
    bool wal;           /* a WAL file: writes are gathered */
    bool commit_hdr;    /* the last write was a commit frame's header */
    unsigned char *buf; /* owned: pending bytes for offset start.. */
    size_t len, cap;
    sqlite3_int64 start;
};

static sqlite3_vfs *wb_real;               /* the default VFS (set once) */
static _Thread_local struct wb_file *wb_pending; /* this thread's file with bytes held */

static int wb_flush(struct wb_file *f)
{
    if (!f->len)
        return SQLITE_OK;
    int rc = f->real->pMethods->xWrite(f->real, f->buf, (int)f->len, f->start);
    f->len = 0; /* written or failed: SQLite writes the frames again */
    if (wb_pending == f)
        wb_pending = NULL;
    return rc;
}

#define REAL(p) (((struct wb_file *)(p))->real)

static int wb_close(sqlite3_file *p)
{
    struct wb_file *f = (struct wb_file *)p;
    int rc = wb_flush(f);
    int rc2 = f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
    free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

static int wb_read(sqlite3_file *p, void *dst, int n, sqlite3_int64 off)
{
    int rc = wb_flush((struct wb_file *)p);
    return rc != SQLITE_OK ? rc : REAL(p)->pMethods->xRead(REAL(p), dst, n, off);
}

static int wb_write(sqlite3_file *p, const void *src, int n, sqlite3_int64 off)
{
    struct wb_file *f = (struct wb_file *)p;
    if (!f->wal || n <= 0)
        return f->real->pMethods->xWrite(f->real, src, n, off);
    int rc;
    if (f->len && (off != f->start + (sqlite3_int64)f->len || f->len + (size_t)n > WALBUF_MAX)) {
        if ((rc = wb_flush(f)) != SQLITE_OK)
            return rc;
    }
    if ((size_t)n > WALBUF_MAX)
        return f->real->pMethods->xWrite(f->real, src, n, off);
    if (!f->buf) {
        f->buf = malloc(WALBUF_MAX);
        if (!f->buf) /* no room to gather: write as SQLite asked */
            return f->real->pMethods->xWrite(f->real, src, n, off);
        f->cap = WALBUF_MAX;
    }
    if (!f->len)
        f->start = off;
    memcpy(f->buf + f->len, src, (size_t)n);
    f->len += (size_t)n;
    wb_pending = f;
    bool page_of_commit = f->commit_hdr && n != WAL_FRAME_HEADER;
    const unsigned char *h = src;
    f->commit_hdr = n == WAL_FRAME_HEADER && (h[4] | h[5] | h[6] | h[7]) != 0;
    return page_of_commit ? wb_flush(f) : SQLITE_OK;
}

static int wb_truncate(sqlite3_file *p, sqlite3_int64 size)
{
    int rc = wb_flush((struct wb_file *)p);
    return rc != SQLITE_OK ? rc : REAL(p)->pMethods->xTruncate(REAL(p), size);
}

static int wb_sync(sqlite3_file *p, int flags)
{
    int rc = wb_flush((struct wb_file *)p);
    return rc != SQLITE_OK ? rc : REAL(p)->pMethods->xSync(REAL(p), flags);
}

static int wb_file_size(sqlite3_file *p, sqlite3_int64 *size)
{
    int rc = wb_flush((struct wb_file *)p);
    return rc != SQLITE_OK ? rc : REAL(p)->pMethods->xFileSize(REAL(p), size);
}

static int wb_lock(sqlite3_file *p, int l) { return REAL(p)->pMethods->xLock(REAL(p), l); }
static int wb_unlock(sqlite3_file *p, int l) { return REAL(p)->pMethods->xUnlock(REAL(p), l); }

static int wb_check_lock(sqlite3_file *p, int *out)
{
    return REAL(p)->pMethods->xCheckReservedLock(REAL(p), out);
}

static int wb_file_control(sqlite3_file *p, int op, void *arg)
{
    int rc = wb_flush((struct wb_file *)p);
    return rc != SQLITE_OK ? rc : REAL(p)->pMethods->xFileControl(REAL(p), op, arg);
}

static int wb_sector_size(sqlite3_file *p) { return REAL(p)->pMethods->xSectorSize(REAL(p)); }

static int wb_device(sqlite3_file *p)
{
    return REAL(p)->pMethods->xDeviceCharacteristics(REAL(p));
}

static int wb_shm_map(sqlite3_file *p, int pg, int sz, int extend, void volatile **out)
{
    return REAL(p)->pMethods->xShmMap(REAL(p), pg, sz, extend, out);
}

static int wb_shm_lock(sqlite3_file *p, int off, int n, int flags)
{
    return REAL(p)->pMethods->xShmLock(REAL(p), off, n, flags);
}

static void wb_shm_barrier(sqlite3_file *p)
{
    if (wb_pending) {
        int rc = wb_flush(wb_pending);
        if (rc != SQLITE_OK) {
            log_error("store_wal_write_failed", "error=\"%s\" action=\"stopping: a commit "
                      "would be published without its frames\"", sqlite3_errstr(rc));
            abort();
        }
    }
    REAL(p)->pMethods->xShmBarrier(REAL(p));
}

static int wb_shm_unmap(sqlite3_file *p, int del)
{
    return REAL(p)->pMethods->xShmUnmap(REAL(p), del);
}

static int wb_fetch(sqlite3_file *p, sqlite3_int64 off, int n, void **out)
{
    return REAL(p)->pMethods->xFetch(REAL(p), off, n, out);
}

static int wb_unfetch(sqlite3_file *p, sqlite3_int64 off, void *pg)
{
    return REAL(p)->pMethods->xUnfetch(REAL(p), off, pg);
}

static const sqlite3_io_methods wb_io = {
    .iVersion = 3,
    .xClose = wb_close,
    .xRead = wb_read,
    .xWrite = wb_write,
    .xTruncate = wb_truncate,
    .xSync = wb_sync,
    .xFileSize = wb_file_size,
    .xLock = wb_lock,
    .xUnlock = wb_unlock,
    .xCheckReservedLock = wb_check_lock,
    .xFileControl = wb_file_control,
    .xSectorSize = wb_sector_size,
    .xDeviceCharacteristics = wb_device,
    .xShmMap = wb_shm_map,
    .xShmLock = wb_shm_lock,
    .xShmBarrier = wb_shm_barrier,
    .xShmUnmap = wb_shm_unmap,
    .xFetch = wb_fetch,
    .xUnfetch = wb_unfetch,
};

/* The real file lives right after the wrapper, aligned for any type. */
#define WB_HEAD ((sizeof(struct wb_file) + 15) & ~(size_t)15)

static int wb_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *p, int flags,
                   int *out_flags)
{
    (void)vfs;
    struct wb_file *f = (struct wb_file *)p;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)((char *)p + WB_HEAD);
    int rc = wb_real->xOpen(wb_real, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK || !f->real->pMethods) {
        /* SQLite calls xClose only when pMethods is set */
        if (f->real->pMethods)
            f->real->pMethods->xClose(f->real);
        f->base.pMethods = NULL;
        return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
    }
    /* Shared memory and memory mapping are the real file's: it must offer
     * what this wrapper forwards. */
    assert(f->real->pMethods->iVersion >= 3);
    f->wal = (flags & SQLITE_OPEN_WAL) != 0;
    f->base.pMethods = &wb_io;
    return SQLITE_OK;
}

static int wb_delete(sqlite3_vfs *v, const char *n, int sync)
{
    (void)v;
    return wb_real->xDelete(wb_real, n, sync);
}

static int wb_access(sqlite3_vfs *v, const char *n, int flags, int *out)
{
    (void)v;
    return wb_real->xAccess(wb_real, n, flags, out);
}

static int wb_full_pathname(sqlite3_vfs *v, const char *n, int len, char *out)
{
    (void)v;
    return wb_real->xFullPathname(wb_real, n, len, out);
}

static void *wb_dlopen(sqlite3_vfs *v, const char *n)
{
    (void)v;
    return wb_real->xDlOpen(wb_real, n);
}

static void wb_dlerror(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    wb_real->xDlError(wb_real, n, out);
}

static void (*wb_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    (void)v;
    return wb_real->xDlSym(wb_real, h, sym);
}

static void wb_dlclose(sqlite3_vfs *v, void *h)
{
    (void)v;
    wb_real->xDlClose(wb_real, h);
}

static int wb_randomness(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return wb_real->xRandomness(wb_real, n, out);
}

static int wb_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return wb_real->xSleep(wb_real, us);
}

static int wb_current_time(sqlite3_vfs *v, double *out)
{
    (void)v;
    return wb_real->xCurrentTime(wb_real, out);
}

static int wb_last_error(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return wb_real->xGetLastError(wb_real, n, out);
}

static int wb_current_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    (void)v;
    return wb_real->xCurrentTimeInt64(wb_real, out);
}

static sqlite3_vfs wb_vfs = {
    .iVersion = 2,
    .zName = STORE_SQLITE_WALBUF_VFS,
    .xOpen = wb_open,
    .xDelete = wb_delete,
    .xAccess = wb_access,
    .xFullPathname = wb_full_pathname,
    .xDlOpen = wb_dlopen,
    .xDlError = wb_dlerror,
    .xDlSym = wb_dlsym,
    .xDlClose = wb_dlclose,
    .xRandomness = wb_randomness,
    .xSleep = wb_sleep,
    .xCurrentTime = wb_current_time,
    .xGetLastError = wb_last_error,
    .xCurrentTimeInt64 = wb_current_time64,
};

int store_sqlite__walbuf_register(void)
{
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    if (!real || real->iVersion < 2 || !real->xCurrentTimeInt64)
        return SQLITE_ERROR;
    wb_real = real;
    wb_vfs.szOsFile = (int)(WB_HEAD + (size_t)real->szOsFile);
    wb_vfs.mxPathname = real->mxPathname;
    return sqlite3_vfs_register(&wb_vfs, 0);
}
