/*
 * config_int: what config.c and models.c (the --model part of the
 * configuration) share. Not for use outside src/conf/. Main thread only,
 * like the rest of the configuration.
 */
#ifndef CHATD_CONF_CONFIG_INT_H
#define CHATD_CONF_CONFIG_INT_H

#include <stddef.h>

#include <stdint.h>

struct config;

/* Which source set an option (config._source while it is read). */
enum source { SRC_DEFAULT = 0, SRC_FILE, SRC_ENV, SRC_FLAG };

/* Write a one-line error into err; returns -EINVAL. */
int conf__errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A decimal unsigned integer, the whole string. 0 or -EINVAL. */
int conf__parse_u64(const char *v, uint64_t *out);
/* Trim spaces and tabs around s, in place; returns the first kept byte. */
char *conf__trim(char *s);

/* The --model setter (one source's value: one or more specs). */
int conf__set_model(struct config *cfg, const char *v, char *err, size_t errlen);
/* After every source is read: resolve the winning list (keys, system
 * prompts, the default model). */
int conf__finish_models(struct config *cfg, char *err, size_t errlen);
/* Free the models and wipe their keys. */
void conf__models_clear(struct config *cfg);

#endif
