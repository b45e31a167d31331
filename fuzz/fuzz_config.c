/*
 * libFuzzer driver for the configuration parser (src/conf/): the command
 * line and the --config file.
 *
 * DESIGN: byte 0 chooses what the rest is:
 *   bit 0 clear  a command line: the bytes split at NUL into at most 32
 *                arguments after "chatd";
 *   bit 0 set    a --config file's text, written to a scratch file of
 *                this process and loaded with "chatd --config FILE".
 * Whatever the input, config_load must answer one of its results, with a
 * one-line, NUL-terminated reason when it refuses, leave nothing behind
 * after config_release (LeakSanitizer) and read no memory it should not
 * (AddressSanitizer). Options that name files make it read those files:
 * they are the machine's, read only. A broken promise calls abort().
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

#include "conf/config.h"

#define MAX_ARGS 32

static char scratch[64];
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(scratch, sizeof scratch, "/tmp/chatd-fuzz-config-%d", (int)getpid());
    devnull = fopen("/dev/null", "w");
    CHECK(devnull);
    return 0;
}

static void load(int argc, char **argv)
{
    struct config cfg;
    char err[512];
    memset(err, 'x', sizeof err);
    err[sizeof err - 1] = '\0';
    int rc = config_load(&cfg, argc, argv, NULL, devnull, err, sizeof err);
    CHECK(rc == CONFIG_OK || rc == CONFIG_EXIT_HELP || rc == CONFIG_EXIT_VERSION || rc == -EINVAL);
    if (rc == -EINVAL)
        CHECK(strnlen(err, sizeof err) < sizeof err && err[0] && !strchr(err, '\n'));
    config_release(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    if (data[0] & 1) {
        FILE *f = fopen(scratch, "w");
        CHECK(f);
        CHECK(fwrite(data + 1, 1, size - 1, f) == size - 1);
        fclose(f);
        char a0[] = "chatd", a1[] = "--config";
        char *argv[] = {a0, a1, scratch, NULL};
        load(3, argv);
        unlink(scratch);
        return 0;
    }
    /* A writable copy: config_load overwrites secrets in argv. */
    char *copy = malloc(size);
    CHECK(copy);
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = '\0';
    char a0[] = "chatd";
    char *argv[MAX_ARGS + 2] = {a0};
    int argc = 1;
    for (size_t at = 0; at < size - 1 && argc <= MAX_ARGS; argc++) {
        argv[argc] = copy + at;
        at += strlen(copy + at) + 1;
    }
    argv[argc] = NULL;
    load(argc, argv);
    free(copy);
    return 0;
}
