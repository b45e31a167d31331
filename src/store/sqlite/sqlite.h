/*
 * store/sqlite: the SQLite storage engine (the default, "sqlite").
 *
 * Callers never use it directly: store_open() picks it by name and every
 * store_* call reaches it through this table. Its contract is store.h's;
 * how it keeps it (threads, locks, files) is in the DESIGN note of
 * src/store/sqlite/sqlite.c.
 */
#ifndef CHATD_STORE_SQLITE_SQLITE_H
#define CHATD_STORE_SQLITE_SQLITE_H

#include "store/store.h"

extern const struct store_engine store_sqlite_engine;

#endif
