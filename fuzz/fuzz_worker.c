/*
 * libFuzzer driver for a whole chatd worker: one input is the byte stream
 * of one client connection, from its first HTTP byte to its EOF, read by a
 * real worker loop through a socketpair (fuzz/server_harness.h).
 *
 * DESIGN: byte 0 and 1 choose how the stream is cut into the pieces the
 * server reads (fuzz/chunks.h: fixed, pseudo-random, byte by byte, or two
 * halves), the rest is the stream. The seeds open a WebSocket with a valid
 * token of fuzz-user or fuzz-admin and then send chat messages, so the
 * fuzzer starts past the handshake; others are plain HTTP requests (health,
 * API, pipelined heads). Whatever the bytes:
 *   1. the server answers in HTTP (its output starts "HTTP/1.1 ");
 *   2. after a 101, every frame it sends is unmasked with no RSV bit, and
 *      every text frame is one JSON object with a string "type";
 *   3. the connection is closed once the client's EOF is read, with
 *      nothing left queued to storage or the thread pool;
 *   4. no memory error, no leak (AddressSanitizer, LeakSanitizer).
 * A broken promise calls abort().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chunks.h"
#include "server_harness.h"

static void check_output(void)
{
    if (h_out_len == 0)
        return;
    HCHECK(h_out_len >= 9 && memcmp(h_out, "HTTP/1.1 ", 9) == 0);
    size_t pos = harness_frames_start();
    if (pos == 0)
        return;
    unsigned op;
    bool fin;
    const uint8_t *pl;
    size_t len;
    while (harness_next_frame(&pos, &op, &fin, &pl, &len)) {
        if (op != 1)
            continue;
        HCHECK(fin);
        json_t *o = json_loadb((const char *)pl, len, 0, NULL);
        HCHECK(json_is_object(o) && json_is_string(json_object_get(o, "type")));
        json_decref(o);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 65536)
        return 0;
    uint8_t *s = malloc(size - 2);
    HCHECK(s || size == 2);
    if (size > 2)
        memcpy(s, data + 2, size - 2);
    harness_subst(s, size - 2);
    harness_connect();
    fuzz_feed_chunked(data[0] % 4, data[1], s, size - 2, 600, harness_feed, NULL);
    harness_settle(false);
    harness_finish();
    check_output();
    free(s);
    return 0;
}
