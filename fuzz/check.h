/*
 * The fuzz targets' check: a broken invariant aborts, which libFuzzer
 * reports as a crash with the input that caused it.
 */
#ifndef CHATD_FUZZ_CHECK_H
#define CHATD_FUZZ_CHECK_H

#include <stdlib.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

#endif
