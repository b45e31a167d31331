/*
 * The storage engines built into chatd. Kept apart from store.c so that
 * the interface includes no engine (each engine includes the interface):
 * a new engine adds its header and one line here.
 */
#include "store/store.h"

#include "store/postgres/postgres.h"
#include "store/sqlite/sqlite.h"

const struct store_engine *const store_engines[] = {
    &store_sqlite_engine, /* the default (STORE_ENGINE_DEFAULT) */
    &store_postgres_engine,
};

const size_t store_nengines = sizeof store_engines / sizeof store_engines[0];
