/*
 * store/postgres: the PostgreSQL storage engine ("postgres"), for several
 * chatd nodes sharing one database.
 *
 * Callers never use it directly: store_open() picks it by name (with
 * store_options.path holding the libpq connection string) and every
 * store_* call reaches it through this table. Its contract is store.h's;
 * how it keeps it (threads, connections, seq, unknown commits) is in the
 * DESIGN note of src/store/postgres/postgres.c.
 */
#ifndef CHATD_STORE_POSTGRES_POSTGRES_H
#define CHATD_STORE_POSTGRES_POSTGRES_H

#include <stddef.h>

#include "store/store.h"

extern const struct store_engine store_postgres_engine;

/* A connection string fit for logs: every password (and the whole string
 * when it cannot be parsed) replaced by "***". Any thread. */
void store_postgres_redact(const char *dsn, char *out, size_t len);

#endif
