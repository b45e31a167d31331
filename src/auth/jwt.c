/*
 * DESIGN: JWT verification written against RFC 7515/7518/7519 with OpenSSL's
 * EVP API and chatd's own strict JSON reader (util/jread.h: the header and
 * the claims are parsed in place, nothing allocated), instead of libjwt
 * (see docs: libjwt 1.10 lets the token choose the algorithm, accepts
 * "none" and never checks exp/nbf/iss/aud).
 *
 * Order of work in jwt_verify, cheapest and least trusting first:
 *   1. length cap, then exactly three dot-separated parts;
 *   2. strict base64url of the header, header JSON (duplicates refused), "alg"
 *      equal to the configured algorithm, no "crit";
 *   3. signature over the ASCII bytes "header.payload" with the configured key;
 *   4. only then the payload JSON and the claims.
 * Both JSON texts are refused past 16 levels of nesting or 64 members in
 * an object, however valid.
 * Every decoded part lives in one stack buffer of JWT_MAX_TOKEN bytes: a
 * base64url text is always longer than what it decodes to, so the three
 * decoded parts together never exceed the token's length.
 *
 * The verifier is read-only after jwt_verifier_new. OpenSSL state is each
 * caller's own: HS256's MAC context is kept per thread (a thread-specific
 * key, keyed once and reset per token), the digest contexts of RS256 and
 * ES256 are made per call from objects fetched once, so concurrent callers
 * share nothing mutable. OpenSSL errors left on the
 * per-thread error queue by a refused signature are cleared so they cannot be
 * mistaken later for the failure of an unrelated call on the same thread.
 */
#include "auth/jwt.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "util/jread.h"

#define HS256_LEN 32       /* HMAC-SHA256 output */
#define ES256_SIG_LEN 64   /* JWS ECDSA P-256 signature: r || s, 32 bytes each */
#define MIN_SECRET_LEN 32  /* RFC 7518 3.2: key at least as long as the hash */
#define MIN_RSA_BITS 2048  /* RFC 7518 3.3 */

struct jwt_verifier {
    /* private, all read-only after jwt_verifier_new */
    enum jwt_alg _alg;
    unsigned char *_secret; /* owned, HS256 only; wiped on free */
    size_t _secret_len;
    EVP_MAC *_hmac;         /* owned (fetched once), HS256 only */
    pthread_key_t _keyed;   /* HS256: each thread's MAC context, keyed once (hmac_sha256) */
    bool _keyed_made;
    EVP_PKEY *_pkey;        /* owned, RS256/ES256 only */
    size_t _rsa_sig_len;    /* RS256: modulus size in bytes, the only valid signature length */
    char *_issuer;          /* owned or NULL */
    size_t _issuer_len;
    char *_audience;        /* owned or NULL */
    size_t _audience_len;
    int _leeway_s;
};

static const char *const alg_names[] = {"HS256", "RS256", "ES256"};

int jwt_alg_parse(const char *s)
{
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < sizeof alg_names / sizeof alg_names[0]; i++)
        if (strcmp(s, alg_names[i]) == 0)
            return (int)i;
    return -1;
}

const char *jwt_alg_name(enum jwt_alg alg)
{
    if ((unsigned)alg >= sizeof alg_names / sizeof alg_names[0])
        return "?";
    return alg_names[alg];
}

/* ---- base64url ------------------------------------------------------------ */

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Each byte's 6-bit value in the URL-safe alphabet plus one; 0 for any
 * other byte (the table's default). */
#define V(ch, v) [(unsigned char)(ch)] = (v) + 1
static const unsigned char b64url_plus1[256] = {
    V('A', 0), V('B', 1), V('C', 2), V('D', 3), V('E', 4), V('F', 5), V('G', 6),
    V('H', 7), V('I', 8), V('J', 9), V('K', 10), V('L', 11), V('M', 12), V('N', 13),
    V('O', 14), V('P', 15), V('Q', 16), V('R', 17), V('S', 18), V('T', 19), V('U', 20),
    V('V', 21), V('W', 22), V('X', 23), V('Y', 24), V('Z', 25), V('a', 26), V('b', 27),
    V('c', 28), V('d', 29), V('e', 30), V('f', 31), V('g', 32), V('h', 33), V('i', 34),
    V('j', 35), V('k', 36), V('l', 37), V('m', 38), V('n', 39), V('o', 40), V('p', 41),
    V('q', 42), V('r', 43), V('s', 44), V('t', 45), V('u', 46), V('v', 47), V('w', 48),
    V('x', 49), V('y', 50), V('z', 51), V('0', 52), V('1', 53), V('2', 54), V('3', 55),
    V('4', 56), V('5', 57), V('6', 58), V('7', 59), V('8', 60), V('9', 61), V('-', 62),
    V('_', 63),
};
#undef V

/* The 6-bit value of c, -1 when c is not in the alphabet. */
static inline int b64url_value(unsigned char c)
{
    return (int)b64url_plus1[c] - 1;
}

ssize_t jwt_b64url_encode(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    size_t need = JWT_B64URL_LEN(n);
    if (outlen < need + 1)
        return -ENOBUFS;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_chars[w >> 18 & 63];
        out[o++] = b64url_chars[w >> 12 & 63];
        out[o++] = b64url_chars[w >> 6 & 63];
        out[o++] = b64url_chars[w & 63];
    }
    if (n - i == 1) {
        uint32_t w = (uint32_t)in[i] << 16;
        out[o++] = b64url_chars[w >> 18 & 63];
        out[o++] = b64url_chars[w >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_chars[w >> 18 & 63];
        out[o++] = b64url_chars[w >> 12 & 63];
        out[o++] = b64url_chars[w >> 6 & 63];
    }
    out[o] = '\0';
    return (ssize_t)o;
}

ssize_t jwt_b64url_decode(const char *in, size_t n, unsigned char *out, size_t outlen)
{
    /* One leftover character carries only 6 bits: no encoder produces it. */
    if (n % 4 == 1)
        return -EINVAL;
    size_t need = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    if (need > outlen)
        return -ENOBUFS;
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0, i = 0;
    /* Four characters make three bytes; an invalid one makes some value
     * negative, and so their OR. */
    for (; i + 4 <= n; i += 4) {
        int a = b64url_value(p[i]), b = b64url_value(p[i + 1]);
        int c = b64url_value(p[i + 2]), d = b64url_value(p[i + 3]);
        if ((a | b | c | d) < 0)
            return -EINVAL;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    if (i < n) {
        /* Two or three left: 12 or 18 bits for one or two bytes. Unused
         * trailing bits must be zero, so each byte string has exactly one
         * accepted encoding and a token cannot be altered without breaking
         * it. */
        size_t rem = n - i;
        int a = b64url_value(p[i]), b = b64url_value(p[i + 1]);
        int c = rem == 3 ? b64url_value(p[i + 2]) : 0;
        if ((a | b | c) < 0)
            return -EINVAL;
        uint32_t v = (uint32_t)a << 12 | (uint32_t)b << 6 | (uint32_t)c;
        if (rem == 2) {
            if (v & 0x3ff) /* b's low 4 bits (c is 0) */
                return -EINVAL;
            out[o++] = (unsigned char)(v >> 10);
        } else {
            if (v & 0x3) /* c's low 2 bits */
                return -EINVAL;
            out[o++] = (unsigned char)(v >> 10);
            out[o++] = (unsigned char)(v >> 2);
        }
    }
    return (ssize_t)o;
}

/* ---- verifier --------------------------------------------------------------- */

/* A thread's keyed HMAC context (hmac_sha256), at the thread's end. */
static void keyed_free(void *ctx)
{
    EVP_MAC_CTX_free(ctx);
}

static int fail_cfg(char *err, size_t errlen, const char *msg, int rc)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
    return rc;
}

/* Read the first PEM public key in text (SubjectPublicKeyInfo "PUBLIC KEY",
 * or PKCS#1 "RSA PUBLIC KEY"). NULL when nothing usable is found. */
static EVP_PKEY *load_public_key(const char *pem, size_t len)
{
    EVP_PKEY *pkey = NULL;
    OSSL_DECODER_CTX *dctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, "PEM", NULL, NULL,
                                                           EVP_PKEY_PUBLIC_KEY, NULL, NULL);
    if (dctx == NULL)
        return NULL;
    const unsigned char *data = (const unsigned char *)pem;
    size_t left = len;
    if (OSSL_DECODER_from_data(dctx, &data, &left) != 1) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    OSSL_DECODER_CTX_free(dctx);
    return pkey;
}

static int is_p256(EVP_PKEY *pkey)
{
    char group[64];
    size_t glen = 0;
    if (!EVP_PKEY_is_a(pkey, "EC"))
        return 0;
    if (EVP_PKEY_get_group_name(pkey, group, sizeof group, &glen) != 1)
        return 0;
    int nid = OBJ_txt2nid(group);
    if (nid == NID_undef)
        nid = EC_curve_nist2nid(group);
    return nid == NID_X9_62_prime256v1;
}

static char *dup_text(const char *s, size_t *len)
{
    *len = strlen(s);
    char *d = malloc(*len + 1);
    if (d != NULL)
        memcpy(d, s, *len + 1);
    return d;
}

int jwt_verifier_new(struct jwt_verifier **out, const struct jwt_config *cfg, char *err, size_t errlen)
{
    int rc;
    const char *msg;

    if (out == NULL || cfg == NULL)
        return fail_cfg(err, errlen, "jwt: missing configuration", -EINVAL);
    *out = NULL;
    if ((unsigned)cfg->alg > JWT_ES256)
        return fail_cfg(err, errlen, "unknown jwt algorithm", -EINVAL);
    if (cfg->leeway_s < 0)
        return fail_cfg(err, errlen, "jwt leeway must not be negative", -EINVAL);
    if (cfg->alg == JWT_HS256 && (cfg->secret == NULL || cfg->secret_len < MIN_SECRET_LEN))
        return fail_cfg(err, errlen, "jwt secret must be at least 32 bytes", -EINVAL);
    if (cfg->alg != JWT_HS256 && (cfg->public_key_pem == NULL || cfg->public_key_len == 0))
        return fail_cfg(err, errlen, "jwt public key (PEM) is required for RS256 and ES256", -EINVAL);

    struct jwt_verifier *v = calloc(1, sizeof *v);
    if (v == NULL)
        return fail_cfg(err, errlen, "out of memory", -ENOMEM);
    v->_alg = cfg->alg;
    v->_leeway_s = cfg->leeway_s;

    if (cfg->alg == JWT_HS256) {
        v->_secret = malloc(cfg->secret_len);
        if (v->_secret == NULL)
            goto oom;
        memcpy(v->_secret, cfg->secret, cfg->secret_len);
        v->_secret_len = cfg->secret_len;
        /* Fetch once: a fetch takes a global lock, a new MAC context does not. */
        v->_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (v->_hmac == NULL) {
            rc = -EINVAL;
            msg = "OpenSSL has no HMAC implementation";
            goto fail;
        }
        if (pthread_key_create(&v->_keyed, keyed_free) != 0)
            goto oom;
        v->_keyed_made = true;
    } else {
        v->_pkey = load_public_key(cfg->public_key_pem, cfg->public_key_len);
        if (v->_pkey == NULL) {
            rc = -EINVAL;
            msg = "jwt public key is not a readable PEM public key";
            goto fail;
        }
        if (cfg->alg == JWT_RS256) {
            if (!EVP_PKEY_is_a(v->_pkey, "RSA")) {
                rc = -EINVAL;
                msg = "RS256 needs an RSA public key";
                goto fail;
            }
            if (EVP_PKEY_get_bits(v->_pkey) < MIN_RSA_BITS) {
                rc = -EINVAL;
                msg = "RS256 public key must be at least 2048 bits";
                goto fail;
            }
            v->_rsa_sig_len = (size_t)EVP_PKEY_get_size(v->_pkey);
        } else if (!is_p256(v->_pkey)) {
            rc = -EINVAL;
            msg = "ES256 needs an EC public key on P-256";
            goto fail;
        }
    }
    if (cfg->issuer != NULL && (v->_issuer = dup_text(cfg->issuer, &v->_issuer_len)) == NULL)
        goto oom;
    if (cfg->audience != NULL && (v->_audience = dup_text(cfg->audience, &v->_audience_len)) == NULL)
        goto oom;
    *out = v;
    return 0;

oom:
    rc = -ENOMEM;
    msg = "out of memory";
fail:
    ERR_clear_error();
    jwt_verifier_free(v);
    return fail_cfg(err, errlen, msg, rc);
}

void jwt_verifier_free(struct jwt_verifier *v)
{
    if (v == NULL)
        return;
    if (v->_secret != NULL) {
        OPENSSL_cleanse(v->_secret, v->_secret_len);
        free(v->_secret);
    }
    if (v->_keyed_made) {
        /* Other threads' contexts went with them (keyed_free); the
         * caller's goes now. */
        keyed_free(pthread_getspecific(v->_keyed));
        pthread_key_delete(v->_keyed);
    }
    EVP_MAC_free(v->_hmac);
    EVP_PKEY_free(v->_pkey);
    free(v->_issuer);
    free(v->_audience);
    free(v);
}

enum jwt_alg jwt_verifier_alg(const struct jwt_verifier *v)
{
    return v->_alg;
}

/* ---- signatures ------------------------------------------------------------- */

/* HMAC-SHA256 of data into mac[32]. 0 or -ENOMEM (any OpenSSL failure). */
/* HMAC-SHA256 of data with the verifier's secret. Each thread keeps its
 * own context, keyed on its first call (the digest fetched and the key
 * hashed once, not per token: a quarter of the handshake's crypto) and
 * reset to that keyed state for each token; no thread sees another's. */
static int hmac_sha256(const struct jwt_verifier *v, const void *data, size_t len,
                       unsigned char mac[HS256_LEN])
{
    EVP_MAC_CTX *ctx = pthread_getspecific(v->_keyed);
    int ok;
    if (ctx == NULL) {
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end(),
        };
        ctx = EVP_MAC_CTX_new(v->_hmac);
        if (ctx == NULL)
            return -ENOMEM;
        if (EVP_MAC_init(ctx, v->_secret, v->_secret_len, params) != 1 ||
            pthread_setspecific(v->_keyed, ctx) != 0) {
            EVP_MAC_CTX_free(ctx);
            return -ENOMEM;
        }
        ok = 1;
    } else {
        ok = EVP_MAC_init(ctx, NULL, 0, NULL); /* back to the keyed state */
    }
    size_t outl = 0;
    if (ok == 1 && EVP_MAC_update(ctx, data, len) == 1 &&
        EVP_MAC_final(ctx, mac, &outl, HS256_LEN) == 1 && outl == HS256_LEN)
        return 0;
    /* A context left mid-way is not used again. */
    pthread_setspecific(v->_keyed, NULL);
    EVP_MAC_CTX_free(ctx);
    return -ENOMEM;
}

/* EVP_DigestVerify with SHA-256: 0 when valid, -EACCES when not, -ENOMEM. */
static int digest_verify(EVP_PKEY *pkey, int rsa, const unsigned char *sig, size_t siglen,
                         const void *data, size_t len)
{
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return -ENOMEM;
    int rc = -EACCES;
    if (EVP_DigestVerifyInit_ex(ctx, &pctx, "SHA256", NULL, NULL, pkey, NULL) != 1) {
        rc = -ENOMEM;
        goto free_ctx;
    }
    /* PKCS#1 v1.5 is OpenSSL's default for RSA; say so rather than rely on it. */
    if (rsa && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) {
        rc = -ENOMEM;
        goto free_ctx;
    }
    if (EVP_DigestVerify(ctx, sig, siglen, data, len) == 1)
        rc = 0;
free_ctx:
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* JWS carries ECDSA as fixed-size r || s (RFC 7518 3.4); OpenSSL verifies the
 * DER ECDSA-Sig-Value, so rebuild that from the two halves. */
static int es256_verify(EVP_PKEY *pkey, const unsigned char *sig, size_t siglen,
                        const void *data, size_t len)
{
    if (siglen != ES256_SIG_LEN)
        return -EACCES;
    int rc = -ENOMEM;
    unsigned char *der = NULL;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, ES256_SIG_LEN / 2, NULL);
    BIGNUM *s = BN_bin2bn(sig + ES256_SIG_LEN / 2, ES256_SIG_LEN / 2, NULL);
    if (es == NULL || r == NULL || s == NULL)
        goto free_parts;
    ECDSA_SIG_set0(es, r, s); /* es owns r and s from here */
    r = s = NULL;
    int derlen = i2d_ECDSA_SIG(es, &der);
    if (derlen <= 0)
        goto free_parts;
    rc = digest_verify(pkey, 0, der, (size_t)derlen, data, len);
    OPENSSL_free(der);
free_parts:
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return rc;
}

static int check_signature(const struct jwt_verifier *v, const unsigned char *sig, size_t siglen,
                           const char *input, size_t inlen)
{
    unsigned char mac[HS256_LEN];
    int rc;

    switch (v->_alg) {
    case JWT_HS256:
        if (siglen != HS256_LEN)
            return -EACCES;
        rc = hmac_sha256(v, input, inlen, mac);
        if (rc == 0 && CRYPTO_memcmp(mac, sig, HS256_LEN) != 0)
            rc = -EACCES;
        OPENSSL_cleanse(mac, sizeof mac);
        return rc;
    case JWT_RS256:
        if (siglen != v->_rsa_sig_len)
            return -EACCES;
        return digest_verify(v->_pkey, 1, sig, siglen, input, inlen);
    case JWT_ES256:
        return es256_verify(v->_pkey, sig, siglen, input, inlen);
    }
    return -EACCES;
}

/* ---- claims ----------------------------------------------------------------- */

/* Is p[0..n), text a JSON string decoded to (so well-formed UTF-8: the
 * reader checked it), free of control characters (C0, DEL, C1)? Such
 * characters in a user id or name would corrupt logs and UIs. C1 is
 * U+0080..U+009F: C2 80 .. C2 9F in UTF-8. */
static int printable_utf8(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7F)
            return 0;
        if (p[i] == 0xC2 && i + 1 < n && p[i + 1] <= 0x9F)
            return 0;
    }
    return 1;
}

/* Copy a JSON string of at most max bytes of printable UTF-8 into dst[max+1]. */
static int copy_text(const struct jr_value *j, size_t max, char *dst, size_t *dst_len)
{
    ssize_t len = jr_string(j, dst, max + 1);
    if (len < 0 || !printable_utf8((const unsigned char *)dst, (size_t)len))
        return -1;
    if (dst_len != NULL)
        *dst_len = (size_t)len;
    return 0;
}

/* Optional integer time claim: 0 absent, 1 present (value in *val), -1 not a
 * JSON integer. Reals and strings are refused: RFC 7519 NumericDate allows
 * fractions, but chatd's issuers mint integers and a lenient parse here is
 * where verifiers have differed from each other before. */
static int time_claim(const struct jr_member *p, size_t np, const char *key, int64_t *val)
{
    const struct jr_value *j = jr_get(p, np, key);
    if (j == NULL)
        return 0;
    if (j->type != JR_INT)
        return -1;
    *val = j->i;
    return 1;
}

static int check_audience(const struct jwt_verifier *v, const struct jr_value *aud)
{
    if (aud->type == JR_STRING)
        return jr_string_is(aud, v->_audience, v->_audience_len) ? 0 : -1;
    if (aud->type != JR_ARRAY)
        return -1;
    size_t pos = 0;
    struct jr_value el;
    int found = 0;
    while (jr_array_next(aud, &pos, &el)) {
        if (el.type != JR_STRING)
            return -1;
        if (jr_string_is(&el, v->_audience, v->_audience_len))
            found = 1;
    }
    return found ? 0 : -1;
}

/* Check every claim of an already authenticated payload and fill c. */
static int check_claims(const struct jwt_verifier *v, const struct jr_member *p, size_t np,
                        int64_t now_s, struct jwt_claims *c, const char **reason)
{
    int64_t t;
    int r;
    /* now + leeway, saturated: leeway is never negative. */
    int64_t later = now_s > INT64_MAX - v->_leeway_s ? INT64_MAX : now_s + v->_leeway_s;

    r = time_claim(p, np, "exp", &c->exp);
    if (r == 0) {
        *reason = "missing exp";
        return -EACCES;
    }
    if (r < 0) {
        *reason = "exp is not an integer";
        return -EACCES;
    }
    if (now_s >= c->exp) {
        *reason = "token expired";
        return -EACCES;
    }
    r = time_claim(p, np, "nbf", &t);
    if (r < 0) {
        *reason = "nbf is not an integer";
        return -EACCES;
    }
    if (r > 0 && t > later) {
        *reason = "token not yet valid";
        return -EACCES;
    }
    r = time_claim(p, np, "iat", &t);
    if (r < 0) {
        *reason = "iat is not an integer";
        return -EACCES;
    }
    if (r > 0 && t > later) {
        *reason = "token issued in the future";
        return -EACCES;
    }

    const struct jr_value *j = jr_get(p, np, "iss");
    if (v->_issuer != NULL && (j == NULL || !jr_string_is(j, v->_issuer, v->_issuer_len))) {
        *reason = "wrong issuer";
        return -EACCES;
    }
    if (v->_audience != NULL) {
        j = jr_get(p, np, "aud");
        if (j == NULL || check_audience(v, j) != 0) {
            *reason = "wrong audience";
            return -EACCES;
        }
    }

    j = jr_get(p, np, "sub");
    if (j == NULL) {
        *reason = "missing sub";
        return -EACCES;
    }
    if (copy_text(j, JWT_MAX_SUB, c->sub, &c->sub_len) != 0 || c->sub_len == 0) {
        *reason = "bad sub";
        return -EACCES;
    }

    j = jr_get(p, np, "name");
    if (j != NULL && copy_text(j, JWT_MAX_NAME, c->name, &c->name_len) != 0) {
        *reason = "bad name";
        return -EACCES;
    }
    /* An empty name would leave the user invisible in the UI: use sub. */
    if (c->name_len == 0) {
        memcpy(c->name, c->sub, c->sub_len + 1);
        c->name_len = c->sub_len;
    }

    j = jr_get(p, np, "roles");
    if (j != NULL) {
        if (j->type != JR_ARRAY) {
            *reason = "bad roles";
            return -EACCES;
        }
        size_t pos = 0;
        struct jr_value el;
        unsigned n = 0;
        while (jr_array_next(j, &pos, &el)) {
            size_t rl;
            if (n == JWT_MAX_ROLES) {
                *reason = "too many roles";
                return -EACCES;
            }
            if (copy_text(&el, JWT_MAX_ROLE, c->roles[n], &rl) != 0) {
                *reason = "bad roles";
                return -EACCES;
            }
            if (rl == 5 && memcmp(c->roles[n], "admin", 5) == 0)
                c->is_admin = 1;
            n++;
        }
        c->nroles = n;
    }
    return 0;
}

/* ---- verify ------------------------------------------------------------------ */

/* Parse a decoded header or payload: a JSON object with no duplicate keys
 * (jread.h: strict, bounded, nothing allocated), its members in m. */
static int parse_object(const unsigned char *buf, size_t len, struct jr_member *m, size_t *n,
                        const char *bad, const char *dup, const char **reason)
{
    int rc = jr_object((const char *)buf, len, m, JR_MAX_KEYS, n);
    if (rc != 0) {
        *reason = rc == -EEXIST ? dup : bad;
        return -EACCES;
    }
    return 0;
}

int jwt_verify(const struct jwt_verifier *v, const char *token, size_t len, int64_t now_s,
               struct jwt_claims *out, const char **reason)
{
    const char *unused;
    if (reason == NULL)
        reason = &unused;
    *reason = "invalid argument";
    if (out != NULL)
        memset(out, 0, sizeof *out);
    if (v == NULL || token == NULL || out == NULL)
        return -EINVAL;

    /* Bound all work before looking at a single byte. */
    if (len > JWT_MAX_TOKEN) {
        *reason = "token too long";
        return -EACCES;
    }
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL) {
        *reason = "malformed token";
        return -EACCES;
    }
    const char *hdr64 = token, *pay64 = dot1 + 1, *sig64 = dot2 + 1;
    size_t hdr64_len = (size_t)(dot1 - token);
    size_t pay64_len = (size_t)(dot2 - pay64);
    size_t sig64_len = len - (size_t)(sig64 - token);

    unsigned char buf[JWT_MAX_TOKEN];
    size_t used = 0;
    ssize_t n;
    struct jr_member m[JR_MAX_KEYS]; /* the header's members, then the payload's */
    size_t nm;
    struct jwt_claims c;
    int rc;

    /* Header: the algorithm is the configured one, or nothing. Its members
     * point into buf, which the signature overwrites: all read here. */
    n = jwt_b64url_decode(hdr64, hdr64_len, buf, sizeof buf);
    if (n < 0) {
        *reason = "bad encoding";
        return -EACCES;
    }
    rc = parse_object(buf, (size_t)n, m, &nm, "bad header", "duplicate header parameter", reason);
    if (rc != 0)
        return rc;
    const struct jr_value *alg = jr_get(m, nm, "alg");
    const char *want = jwt_alg_name(v->_alg);
    if (alg == NULL || alg->type != JR_STRING) {
        *reason = "bad header";
        return -EACCES;
    }
    if (!jr_string_is(alg, want, strlen(want))) {
        *reason = "algorithm not allowed";
        return -EACCES;
    }
    /* RFC 7515 4.1.11: extensions listed in crit must be understood; chatd
     * understands none, so any crit (even an empty or malformed one) is refused. */
    if (jr_get(m, nm, "crit") != NULL) {
        *reason = "unsupported critical header";
        return -EACCES;
    }

    /* Signature over the ASCII "header.payload", before the payload is read. */
    n = jwt_b64url_decode(sig64, sig64_len, buf, sizeof buf);
    if (n < 0) {
        *reason = "bad encoding";
        return -EACCES;
    }
    used = (size_t)n;
    rc = check_signature(v, buf, used, token, (size_t)(dot2 - token));
    if (rc != 0) {
        ERR_clear_error();
        *reason = rc == -EACCES ? "bad signature" : "out of memory";
        return rc;
    }

    n = jwt_b64url_decode(pay64, pay64_len, buf + used, sizeof buf - used);
    if (n < 0) {
        *reason = "bad encoding";
        return -EACCES;
    }
    rc = parse_object(buf + used, (size_t)n, m, &nm, "bad payload", "duplicate claim", reason);
    if (rc != 0)
        return rc;

    memset(&c, 0, sizeof c);
    rc = check_claims(v, m, nm, now_s, &c, reason);
    if (rc == 0) {
        *out = c;
        *reason = "ok";
    }
    return rc;
}

/* ---- signing (development and tests) ------------------------------------------- */

char *jwt_sign_hs256(const unsigned char *secret, size_t secret_len, const char *payload_json, size_t payload_len)
{
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    const size_t hlen = sizeof header - 1;

    if (secret == NULL || payload_json == NULL || payload_len > SIZE_MAX / 2)
        return NULL;
    size_t h64 = JWT_B64URL_LEN(hlen), p64 = JWT_B64URL_LEN(payload_len);
    size_t total = h64 + 1 + p64 + 1 + JWT_B64URL_LEN(HS256_LEN);
    char *tok = malloc(total + 1);
    if (tok == NULL)
        return NULL;
    size_t o = 0;
    o += (size_t)jwt_b64url_encode((const unsigned char *)header, hlen, tok + o, total + 1 - o);
    tok[o++] = '.';
    o += (size_t)jwt_b64url_encode((const unsigned char *)payload_json, payload_len, tok + o,
                                   total + 1 - o);

    unsigned char mac[HS256_LEN];
    size_t maclen = 0;
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, secret_len, (const unsigned char *)tok, o, mac, sizeof mac,
                  &maclen) == NULL || maclen != HS256_LEN) {
        ERR_clear_error();
        free(tok);
        return NULL;
    }
    tok[o++] = '.';
    jwt_b64url_encode(mac, sizeof mac, tok + o, total + 1 - o);
    OPENSSL_cleanse(mac, sizeof mac);
    return tok;
}
