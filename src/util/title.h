/*
 * title: a session's title from the text of its first user message: the
 * first line, without the white space around it, cut at a word boundary to
 * at most TITLE_MAX_CHARS characters (code points). Nothing is added where
 * it is cut, so the title is always a prefix of that line; a word longer
 * than the limit is cut inside it, at a character boundary. Pure: any
 * thread.
 */
#ifndef CHATD_UTIL_TITLE_H
#define CHATD_UTIL_TITLE_H

#include <stddef.h>

#define TITLE_MAX_CHARS 60
#define TITLE_MAX_BYTES (TITLE_MAX_CHARS * 4) /* of a derived title, NUL excluded */

/* Write the title of text (len bytes of valid UTF-8) into out (at least
 * TITLE_MAX_BYTES + 1 bytes), NUL-terminated; returns its length (0 for a
 * text with nothing but white space on its first line). */
size_t title_from_text(const char *text, size_t len, char out[TITLE_MAX_BYTES + 1]);

#endif
