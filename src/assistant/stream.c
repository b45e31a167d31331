/*
 * DESIGN: the text grows by doubling under the lock; readers copy under the
 * same lock, so a snapshot is always a prefix the producer has finished
 * writing. Nothing here knows about connections: asst_plan is the whole
 * per-connection rule, a pure function the delivering worker applies.
 */
#include "assistant/stream.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/vec.h"

int asst_stream_new(struct asst_stream **out, const char *session, uint64_t id_bits,
                    size_t max_bytes)
{
    if (strlen(session) >= sizeof ((struct asst_stream *)0)->session)
        return -EINVAL;
    struct asst_stream *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s);
        return -ENOMEM;
    }
    snprintf(s->id, sizeof s->id, "st_%016llx", (unsigned long long)id_bits);
    snprintf(s->session, sizeof s->session, "%s", session);
    s->max_bytes = max_bytes;
    atomic_init(&s->refs, 1);
    s->state = ASST_STREAMING;
    *out = s;
    return 0;
}

struct asst_stream *asst_stream_ref(struct asst_stream *s)
{
    assert(atomic_load_explicit(&s->refs, memory_order_relaxed) >= 1);
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void asst_stream_unref(struct asst_stream *s)
{
    unsigned was = atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel);
    assert(was >= 1);
    if (was != 1)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s->text);
    free(s);
}

int64_t asst_stream_append(struct asst_stream *s, const char *delta, size_t len)
{
    int64_t rc;
    pthread_mutex_lock(&s->lock);
    if (s->state != ASST_STREAMING) {
        rc = -EPIPE;
    } else if (len > s->max_bytes - s->len) {
        rc = -EMSGSIZE;
    } else if (vec_grow(&s->text, &s->cap, s->len, len + 1, 1) != 0) {
        rc = -ENOMEM;
    } else {
        memcpy(s->text + s->len, delta, len);
        rc = (int64_t)s->len;
        s->len += len;
        s->text[s->len] = '\0';
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void asst_stream_finish(struct asst_stream *s, enum asst_stream_state how)
{
    assert(how != ASST_STREAMING);
    pthread_mutex_lock(&s->lock);
    if (s->state == ASST_STREAMING)
        s->state = how;
    pthread_mutex_unlock(&s->lock);
}

char *asst_stream_snapshot(struct asst_stream *s, size_t *len, enum asst_stream_state *state)
{
    pthread_mutex_lock(&s->lock);
    char *copy = malloc(s->len + 1);
    if (copy) {
        if (s->len)
            memcpy(copy, s->text, s->len);
        copy[s->len] = '\0';
        *len = s->len;
        if (state)
            *state = s->state;
    }
    pthread_mutex_unlock(&s->lock);
    return copy;
}

struct asst_plan asst_plan(int64_t sent, uint64_t off, size_t len)
{
    struct asst_plan p = {ASST_SKIP, 0};
    if (sent < 0) {
        p.action = off == 0 ? ASST_SEND : ASST_SNAPSHOT;
        return p;
    }
    uint64_t have = (uint64_t)sent;
    if (off > have) {
        p.action = ASST_SNAPSHOT; /* a gap: cannot happen with FIFO inboxes */
    } else if (off + len > have) {
        p.action = ASST_SEND;
        p.skip = (size_t)(have - off);
    }
    return p;
}
