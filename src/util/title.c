#include "util/title.h"

#include <stdbool.h>
#include <string.h>

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\v' || c == '\f';
}

size_t title_from_text(const char *text, size_t len, char out[TITLE_MAX_BYTES + 1])
{
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0, end;
    while (i < len && (is_space(p[i]) || p[i] == '\n' || p[i] == '\r'))
        i++; /* leading blank lines and spaces */
    end = i;
    while (end < len && p[end] != '\n' && p[end] != '\r')
        end++;
    while (end > i && is_space(p[end - 1]))
        end--;
    /* Walk the line by characters; remember the last word end within the
     * limit. */
    size_t chars = 0, k = i, cut = i, word_end = 0;
    while (k < end && chars < TITLE_MAX_CHARS) {
        size_t n = 1;
        if (p[k] >= 0xF0)
            n = 4;
        else if (p[k] >= 0xE0)
            n = 3;
        else if (p[k] >= 0xC0)
            n = 2;
        if (k + n > end)
            break;
        if (is_space(p[k]) && k > i && !is_space(p[k - 1]))
            word_end = k;
        k += n;
        chars++;
        cut = k;
    }
    if (cut < end) {
        /* Cut: at the end of the last whole word, unless the first word
         * alone is longer than the limit. */
        if (is_space(p[cut]))
            word_end = cut;
        if (word_end > i)
            cut = word_end;
        while (cut > i && is_space(p[cut - 1]))
            cut--;
    }
    size_t n = cut - i;
    memcpy(out, p + i, n);
    out[n] = '\0';
    return n;
}
