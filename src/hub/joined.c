/*
 * DESIGN: who has joined which session now, for GET /api/sessions/{id}
 * ("admins"). The storage writer is the one thread that orders joins and
 * leaves (fanout.c), so it alone writes the table, in commit order; the
 * HTTP API reads it from the thread pool. One mutex, joined_lock, guards
 * it; it is a leaf (nothing else is called while it is held). Entries are
 * per admin connection, so an admin's two devices are two entries and
 * leaving from one leaves the other in.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "hub/chat_int.h"
#include "util/hash.h"

static struct joined_admin **bucket(struct chat *ch, const char *session)
{
    return &ch->joined[hash_str(session) % JOINED_BUCKETS];
}

void chat__joined_set(struct chat *ch, const char *session, uint64_t conn_id, const char *id,
                      const char *name, bool in)
{
    uv_mutex_lock(&ch->joined_lock);
    struct joined_admin **p = bucket(ch, session);
    while (*p && !((*p)->conn_id == conn_id && strcmp((*p)->session, session) == 0))
        p = &(*p)->next;
    if (in && !*p) {
        struct joined_admin *j = calloc(1, sizeof *j);
        if (j) {
            j->conn_id = conn_id;
            snprintf(j->session, sizeof j->session, "%s", session);
            snprintf(j->id, sizeof j->id, "%s", id);
            snprintf(j->name, sizeof j->name, "%s", name && *name ? name : id);
            *p = j;
        }
    } else if (!in && *p) {
        struct joined_admin *j = *p;
        *p = j->next;
        free(j);
    }
    uv_mutex_unlock(&ch->joined_lock);
}

json_t *chat__joined_json(struct chat *ch, const char *session)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    uv_mutex_lock(&ch->joined_lock);
    for (struct joined_admin *j = *bucket(ch, session); j; j = j->next) {
        if (strcmp(j->session, session) != 0)
            continue;
        bool listed = false;
        for (size_t i = 0; i < json_array_size(arr) && !listed; i++)
            listed = strcmp(json_string_value(json_object_get(json_array_get(arr, i), "id")),
                            j->id) == 0;
        if (!listed)
            json_array_append_new(arr, json_pack("{s:s, s:s}", "id", j->id, "name", j->name));
    }
    uv_mutex_unlock(&ch->joined_lock);
    return arr;
}

void chat__joined_free(struct chat *ch)
{
    for (size_t b = 0; b < JOINED_BUCKETS; b++) {
        struct joined_admin *j = ch->joined[b];
        while (j) {
            struct joined_admin *next = j->next;
            free(j);
            j = next;
        }
        ch->joined[b] = NULL;
    }
}
