/*
 * list: intrusive doubly linked lists (a node embedded in its owner).
 * Not thread-safe: a list belongs to one thread or is guarded by its owner's
 * lock, as the owner's header says.
 */
#ifndef CHATD_UTIL_LIST_H
#define CHATD_UTIL_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct list_node {
    struct list_node *prev, *next;
};

#define LIST_ENTRY(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void list_init(struct list_node *head) { head->prev = head->next = head; }
static inline bool list_empty(const struct list_node *head) { return head->next == head; }
/* A node not on any list points at itself (after list_init or list_remove). */
static inline bool list_linked(const struct list_node *n) { return n->next != n && n->next; }

static inline void list_append(struct list_node *head, struct list_node *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

static inline void list_remove(struct list_node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#endif
