/*
 * libFuzzer driver for the JWT verifier (src/auth/jwt.c).
 *
 * DESIGN: the first input byte chooses what the rest is:
 *   even  a compact token as a client sends it (header, payload, signature,
 *         any bytes at all): the verifier must refuse it, or accept it only
 *         with claims that keep jwt.h's promises;
 *   odd   a payload's JSON text, signed here with the verifier's own secret
 *         (jwt_sign_hs256), so that the claims checks run on every shape of
 *         payload and not only on the rare input whose signature matches.
 * Every token is checked at a fixed time, and the answer must be the same
 * when asked twice (no state). Then base64url: decode(encode(x)) == x for
 * the input itself, and a decode of the input never writes past its
 * buffer. A broken promise calls abort().
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#include "auth/jwt.h"

#define NOW 1800000000 /* a fixed "now": exp and nbf around it are both reachable */

static const unsigned char SECRET[] = "fuzz-secret-0123456789abcdefghijklmnop";
static struct jwt_verifier *verifier;

static void check_claims(const struct jwt_claims *c)
{
    CHECK(c->sub_len >= 1 && c->sub_len <= JWT_MAX_SUB && strlen(c->sub) == c->sub_len);
    CHECK(c->name_len >= 1 && c->name_len <= JWT_MAX_NAME && strlen(c->name) == c->name_len);
    for (size_t i = 0; i < c->sub_len; i++)
        CHECK((unsigned char)c->sub[i] >= 0x20 && c->sub[i] != 0x7f);
    for (size_t i = 0; i < c->name_len; i++)
        CHECK((unsigned char)c->name[i] >= 0x20 && c->name[i] != 0x7f);
    CHECK(c->nroles <= JWT_MAX_ROLES);
    bool admin = false;
    for (unsigned i = 0; i < c->nroles; i++) {
        CHECK(strnlen(c->roles[i], JWT_MAX_ROLE + 1) <= JWT_MAX_ROLE);
        admin = admin || strcmp(c->roles[i], "admin") == 0;
    }
    CHECK(admin == (c->is_admin != 0));
    CHECK(c->exp > NOW); /* exp is strict */
}

static void verify(const char *tok, size_t len)
{
    struct jwt_claims a, b;
    const char *why_a = NULL, *why_b = NULL;
    int ra = jwt_verify(verifier, tok, len, NOW, &a, &why_a);
    int rb = jwt_verify(verifier, tok, len, NOW, &b, &why_b);
    CHECK(ra == rb);
    if (ra == 0) {
        check_claims(&a);
        CHECK(memcmp(&a, &b, sizeof a) == 0);
    } else {
        CHECK(ra == -EACCES || ra == -ENOMEM);
        CHECK(why_a != NULL && why_a == why_b);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct jwt_config cfg = {.alg = JWT_HS256, .secret = SECRET, .secret_len = sizeof SECRET - 1};
    CHECK(jwt_verifier_new(&verifier, &cfg, NULL, 0) == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] & 1) {
        char *tok = jwt_sign_hs256(SECRET, sizeof SECRET - 1, rest, n);
        if (tok) {
            verify(tok, strlen(tok));
            free(tok);
        }
    } else {
        verify(rest, n);
    }
    /* base64url both ways, each buffer exactly as large as promised. */
    if (n <= 4096) {
        size_t cap = JWT_B64URL_LEN(n) + 1;
        char *enc = malloc(cap);
        unsigned char *dec = malloc(n ? n : 1);
        CHECK(enc && dec);
        ssize_t el = jwt_b64url_encode((const unsigned char *)rest, n, enc, cap);
        CHECK(el == (ssize_t)JWT_B64URL_LEN(n) && enc[el] == '\0');
        CHECK(jwt_b64url_decode(enc, (size_t)el, dec, n) == (ssize_t)n);
        CHECK(n == 0 || memcmp(dec, rest, n) == 0);
        ssize_t dl = jwt_b64url_decode(rest, n, dec, n);
        CHECK(dl == -EINVAL || dl == -ENOBUFS || (dl >= 0 && (size_t)dl <= n));
        free(enc);
        free(dec);
    }
    return 0;
}
