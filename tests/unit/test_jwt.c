/*
 * DESIGN: tests for src/auth/jwt. Every token is signed for real in the test
 * with OpenSSL (HMAC, RSA 2048 and EC P-256 keys generated once per run), and
 * encoded with the test's own base64url (OpenSSL's base64 plus the URL
 * alphabet), so the library's encoder is cross-checked rather than trusted.
 * Allocations made while building a test's tokens go to a small arena that
 * each test's teardown frees, keeping every test leak-free under ASan.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "auth/jwt.h"

#define NOW INT64_C(1800000000)
#define LEEWAY 60
static const char SECRET[] = "0123456789abcdef0123456789abcdef"; /* exactly 32 bytes */

/* ---- arena of per-test allocations ------------------------------------------ */

static void *arena[512];
static size_t narena;

static void *keep(void *p)
{
    assert_non_null(p);
    assert_true(narena < sizeof arena / sizeof arena[0]);
    arena[narena++] = p;
    return p;
}

static int arena_free(void **state)
{
    (void)state;
    while (narena > 0)
        free(arena[--narena]);
    return 0;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, f);
    int n = vasprintf(&s, f, ap);
    va_end(ap);
    assert_true(n >= 0);
    return keep(s);
}

/* ---- keys ---------------------------------------------------------------------- */

static EVP_PKEY *rsa_key, *ec_key;
static char *rsa_pem, *ec_pem; /* public keys, PEM text */

static char *public_pem(EVP_PKEY *pkey)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PUBKEY(bio, pkey), 1);
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    assert_true(n > 0);
    char *pem = malloc((size_t)n + 1);
    assert_non_null(pem);
    memcpy(pem, data, (size_t)n);
    pem[n] = '\0';
    BIO_free(bio);
    return pem;
}

static int keys_setup(void **state)
{
    (void)state;
    rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (rsa_key == NULL || ec_key == NULL)
        return -1;
    rsa_pem = public_pem(rsa_key);
    ec_pem = public_pem(ec_key);
    return 0;
}

static int keys_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(ec_key);
    free(rsa_pem);
    free(ec_pem);
    return 0;
}

/* ---- token building -------------------------------------------------------------- */

/* The test's own base64url: OpenSSL base64, then the URL alphabet, no '='. */
static char *b64url(const void *p, size_t n)
{
    char *out = keep(malloc(4 * ((n + 2) / 3) + 1));
    int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    assert_true(len >= 0);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (int i = 0; i < len; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return out;
}

enum signer { SIGN_HS, SIGN_RS, SIGN_ES, SIGN_ES_DER, SIGN_NONE };

struct sig {
    unsigned char b[1024];
    size_t n;
};

static void hmac(const void *key, size_t keylen, const char *input, struct sig *s)
{
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, keylen,
                              (const unsigned char *)input, strlen(input), s->b, sizeof s->b,
                              &s->n));
}

static void pkey_sign(EVP_PKEY *pkey, const char *input, struct sig *s)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, pkey, NULL), 1);
    s->n = sizeof s->b;
    assert_int_equal(EVP_DigestSign(ctx, s->b, &s->n, (const unsigned char *)input, strlen(input)),
                     1);
    EVP_MD_CTX_free(ctx);
}

/* DER ECDSA-Sig-Value -> the JWS form, r || s as 32 bytes each. */
static void der_to_raw(struct sig *s)
{
    const unsigned char *p = s->b;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)s->n);
    assert_non_null(es);
    const BIGNUM *r, *sv;
    ECDSA_SIG_get0(es, &r, &sv);
    assert_int_equal(BN_bn2binpad(r, s->b, 32), 32);
    assert_int_equal(BN_bn2binpad(sv, s->b + 32, 32), 32);
    s->n = 64;
    ECDSA_SIG_free(es);
}

/* Sign "b64(header).b64(payload)" with the chosen signer; flip toggles one
 * bit of the signature; hkey overrides the HMAC key (NULL: SECRET). */
static char *token_ex(const char *header, const char *payload, enum signer how, int flip,
                      const char *hkey)
{
    char *input = fmt("%s.%s", b64url(header, strlen(header)), b64url(payload, strlen(payload)));
    struct sig s = {.n = 0};
    switch (how) {
    case SIGN_HS:
        hmac(hkey ? hkey : SECRET, strlen(hkey ? hkey : SECRET), input, &s);
        break;
    case SIGN_RS:
        pkey_sign(rsa_key, input, &s);
        break;
    case SIGN_ES:
        pkey_sign(ec_key, input, &s);
        der_to_raw(&s);
        break;
    case SIGN_ES_DER:
        pkey_sign(ec_key, input, &s);
        break;
    case SIGN_NONE:
        break;
    }
    if (flip && s.n > 0)
        s.b[s.n / 2] ^= 0x01;
    return fmt("%s.%s", input, b64url(s.b, s.n));
}

static const char *alg_header(enum jwt_alg alg)
{
    return fmt("{\"alg\":\"%s\",\"typ\":\"JWT\"}", jwt_alg_name(alg));
}

static enum signer signer_for(enum jwt_alg alg)
{
    return alg == JWT_HS256 ? SIGN_HS : alg == JWT_RS256 ? SIGN_RS : SIGN_ES;
}

/* A properly signed token for alg with the given payload. */
static char *tok(enum jwt_alg alg, const char *payload)
{
    return token_ex(alg_header(alg), payload, signer_for(alg), 0, NULL);
}

/* The usual valid payload, with extra members spliced in. */
static char *claims(const char *extra)
{
    return fmt("{\"sub\":\"alice\",\"exp\":%lld%s%s}", (long long)NOW + 3600, *extra ? "," : "",
               extra);
}

static struct jwt_verifier *verifier(enum jwt_alg alg, const char *iss, const char *aud)
{
    struct jwt_config cfg = {
        .alg = alg,
        .secret = (const unsigned char *)SECRET,
        .secret_len = strlen(SECRET),
        .public_key_pem = alg == JWT_RS256 ? rsa_pem : ec_pem,
        .public_key_len = strlen(alg == JWT_RS256 ? rsa_pem : ec_pem),
        .issuer = iss,
        .audience = aud,
        .leeway_s = LEEWAY,
    };
    struct jwt_verifier *v = NULL;
    char err[128] = "";
    int rc = jwt_verifier_new(&v, &cfg, err, sizeof err);
    if (rc != 0)
        fail_msg("jwt_verifier_new: %s", err);
    return v;
}

static struct jwt_claims last;
static const char *last_reason;

static int verify_at(const struct jwt_verifier *v, const char *t, int64_t now)
{
    return jwt_verify(v, t, strlen(t), now, &last, &last_reason);
}

static int verify(const struct jwt_verifier *v, const char *t)
{
    return verify_at(v, t, NOW);
}

/* Refused with exactly this reason, and nothing left in the claims. */
static void expect_refused(const struct jwt_verifier *v, const char *t, const char *reason)
{
    int rc = verify(v, t);
    if (rc != -EACCES || strcmp(last_reason, reason) != 0)
        fail_msg("expected refusal '%s', got rc=%d reason '%s'", reason, rc, last_reason);
    assert_int_equal(last.sub_len, 0);
    assert_int_equal(last.sub[0], '\0');
}

static void expect_ok(const struct jwt_verifier *v, const char *t)
{
    int rc = verify(v, t);
    if (rc != 0)
        fail_msg("expected acceptance, got rc=%d reason '%s'", rc, last_reason);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_alg_parse_and_name(void **state)
{
    (void)state;
    assert_int_equal(jwt_alg_parse("HS256"), JWT_HS256);
    assert_int_equal(jwt_alg_parse("RS256"), JWT_RS256);
    assert_int_equal(jwt_alg_parse("ES256"), JWT_ES256);
    assert_int_equal(jwt_alg_parse("hs256"), -1);
    assert_int_equal(jwt_alg_parse("none"), -1);
    assert_int_equal(jwt_alg_parse(""), -1);
    assert_int_equal(jwt_alg_parse(NULL), -1);
    assert_string_equal(jwt_alg_name(JWT_ES256), "ES256");
    assert_string_equal(jwt_alg_name((enum jwt_alg)7), "?");
}

static void test_b64url(void **state)
{
    (void)state;
    /* RFC 4648 test vectors, URL alphabet, no padding. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    char out[32];
    unsigned char dec[32];
    for (size_t i = 0; i < 7; i++) {
        ssize_t n = jwt_b64url_encode((const unsigned char *)plain[i], strlen(plain[i]), out,
                                      sizeof out);
        assert_int_equal(n, strlen(enc[i]));
        assert_string_equal(out, enc[i]);
        n = jwt_b64url_decode(enc[i], strlen(enc[i]), dec, sizeof dec);
        assert_int_equal(n, strlen(plain[i]));
        assert_memory_equal(dec, plain[i], (size_t)n);
    }
    static const unsigned char hi[] = {0xfb, 0xff, 0xbf};
    assert_int_equal(jwt_b64url_encode(hi, 3, out, sizeof out), 4);
    assert_string_equal(out, "-_-_");
    assert_int_equal(jwt_b64url_decode("Zg==", 4, dec, sizeof dec), -EINVAL); /* padding */
    assert_int_equal(jwt_b64url_decode("Zm+v", 4, dec, sizeof dec), -EINVAL); /* '+' */
    assert_int_equal(jwt_b64url_decode("Zm/v", 4, dec, sizeof dec), -EINVAL); /* '/' */
    assert_int_equal(jwt_b64url_decode("Zm9vY", 5, dec, sizeof dec), -EINVAL); /* length 4k+1 */
    assert_int_equal(jwt_b64url_decode("Zh", 2, dec, sizeof dec), -EINVAL);   /* stray bits */
    assert_int_equal(jwt_b64url_decode("Zm9", 3, dec, sizeof dec), -EINVAL);  /* stray bits */
    assert_int_equal(jwt_b64url_decode("Zm9v", 4, dec, 2), -ENOBUFS);
    assert_int_equal(jwt_b64url_encode(hi, 3, out, 4), -ENOBUFS);
}

/* The decoder as the definition reads: six bits a character, a byte each
 * time eight are in, nothing left over at the end. */
static ssize_t b64url_reference(const char *in, size_t n, unsigned char *out)
{
    static const char alpha[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if (n % 4 == 1)
        return -EINVAL;
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *at = in[i] ? strchr(alpha, in[i]) : NULL;
        if (!at)
            return -EINVAL;
        acc = acc << 6 | (uint32_t)(at - alpha);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return acc ? -EINVAL : (ssize_t)o;
}

/* Every length up to 48 bytes round-trips, and the decoder agrees with the
 * reference on every one-character change of each encoding (each of the
 * 256 byte values at each position: bad characters, stray trailing bits). */
static void test_b64url_against_reference(void **state)
{
    (void)state;
    unsigned char plain[48], got[48], want[48];
    char enc[80];
    uint32_t x = 2463534242u;
    for (size_t len = 0; len <= sizeof plain; len++) {
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            plain[i] = (unsigned char)x;
        }
        ssize_t n = jwt_b64url_encode(plain, len, enc, sizeof enc);
        assert_true(n >= 0);
        assert_int_equal(jwt_b64url_decode(enc, (size_t)n, got, sizeof got), len);
        assert_memory_equal(got, plain, len);
        for (ssize_t pos = 0; pos < n; pos++) {
            char keep = enc[pos];
            for (int c = 0; c < 256; c++) {
                enc[pos] = (char)c;
                ssize_t w = b64url_reference(enc, (size_t)n, want);
                ssize_t g = jwt_b64url_decode(enc, (size_t)n, got, sizeof got);
                assert_int_equal(g, w);
                if (w > 0)
                    assert_memory_equal(got, want, (size_t)w);
            }
            enc[pos] = keep;
        }
    }
}

static void test_hs256_valid(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    expect_ok(v, tok(JWT_HS256, claims("\"iat\":1799999990,\"nbf\":1799999990")));
    assert_string_equal(last.sub, "alice");
    assert_int_equal(last.sub_len, 5);
    assert_string_equal(last.name, "alice");
    assert_int_equal(last.nroles, 0);
    assert_int_equal(last.is_admin, 0);
    assert_int_equal(last.exp, NOW + 3600);
    assert_string_equal(last_reason, "ok");
    jwt_verifier_free(v);
}

static void test_rs256_valid(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_RS256, NULL, NULL);
    assert_int_equal(jwt_verifier_alg(v), JWT_RS256);
    expect_ok(v, tok(JWT_RS256, claims("\"name\":\"Alice A.\"")));
    assert_string_equal(last.sub, "alice");
    assert_string_equal(last.name, "Alice A.");
    assert_int_equal(last.name_len, 8);
    jwt_verifier_free(v);
}

static void test_es256_valid(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_ES256, NULL, NULL);
    /* ECDSA signatures are randomized: check several, so both short and
     * full-length r and s turn up over time. */
    for (int i = 0; i < 20; i++)
        expect_ok(v, tok(JWT_ES256, claims("")));
    assert_string_equal(last.sub, "alice");
    jwt_verifier_free(v);
}

static void test_bad_signature(void **state)
{
    (void)state;
    for (enum jwt_alg alg = JWT_HS256; alg <= JWT_ES256; alg++) {
        struct jwt_verifier *v = verifier(alg, NULL, NULL);
        expect_refused(v, token_ex(alg_header(alg), claims(""), signer_for(alg), 1, NULL),
                       "bad signature");
        /* A valid signature moved onto another payload. */
        char *good = tok(alg, claims(""));
        const char *sig64 = strrchr(good, '.') + 1;
        char *other = tok(alg, fmt("{\"sub\":\"mallory\",\"exp\":%lld}", (long long)NOW + 3600));
        *strrchr(other, '.') = '\0';
        expect_refused(v, fmt("%s.%s", other, sig64), "bad signature");
        /* Truncated by one byte, and empty. */
        char *input = fmt("%s", good);
        *strrchr(input, '.') = '\0';
        unsigned char raw[600];
        ssize_t n = jwt_b64url_decode(sig64, strlen(sig64), raw, sizeof raw);
        assert_true(n > 0);
        expect_refused(v, fmt("%s.%s", input, b64url(raw, (size_t)n - 1)), "bad signature");
        expect_refused(v, fmt("%s.", input), "bad signature");
        expect_ok(v, fmt("%s.%s", input, b64url(raw, (size_t)n)));
        jwt_verifier_free(v);
    }
}

static void test_signature_checked_before_payload(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    /* Garbage payload, bad signature: the signature is what gets reported. */
    expect_refused(v, token_ex(alg_header(JWT_HS256), "{not json", SIGN_HS, 1, NULL),
                   "bad signature");
    /* The same payloads properly signed reach the JSON parser. */
    expect_refused(v, tok(JWT_HS256, "{not json"), "bad payload");
    expect_refused(v, tok(JWT_HS256, "[1,2]"), "bad payload");
    expect_refused(v, tok(JWT_HS256, "\"str\""), "bad payload");
    expect_refused(v, tok(JWT_HS256, ""), "bad payload");
    expect_refused(v, tok(JWT_HS256, fmt("%s x", claims(""))), "bad payload");
    jwt_verifier_free(v);
}

static void test_alg_none(void **state)
{
    (void)state;
    for (enum jwt_alg alg = JWT_HS256; alg <= JWT_ES256; alg++) {
        struct jwt_verifier *v = verifier(alg, NULL, NULL);
        const char *p = claims("");
        expect_refused(v, token_ex("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, SIGN_NONE, 0, NULL),
                       "algorithm not allowed");
        expect_refused(v, token_ex("{\"alg\":\"None\"}", p, SIGN_NONE, 0, NULL),
                       "algorithm not allowed");
        expect_refused(v, token_ex("{\"alg\":\"\"}", p, SIGN_NONE, 0, NULL),
                       "algorithm not allowed");
        /* Case and trailing bytes matter: the name is compared exactly. */
        expect_refused(v, token_ex(fmt("{\"alg\":\"%s \"}", jwt_alg_name(alg)), p, signer_for(alg),
                                   0, NULL),
                       "algorithm not allowed");
        expect_refused(v, token_ex("{\"alg\":\"hs256\"}", p, SIGN_HS, 0, NULL),
                       "algorithm not allowed");
        expect_refused(v, token_ex("{\"alg\":null}", p, SIGN_NONE, 0, NULL), "bad header");
        expect_refused(v, token_ex("{\"typ\":\"JWT\"}", p, SIGN_NONE, 0, NULL), "bad header");
        jwt_verifier_free(v);
    }
}

static void test_alg_mismatch(void **state)
{
    (void)state;
    struct jwt_verifier *rs = verifier(JWT_RS256, NULL, NULL);
    struct jwt_verifier *es = verifier(JWT_ES256, NULL, NULL);
    struct jwt_verifier *hs = verifier(JWT_HS256, NULL, NULL);
    const char *p = claims("");
    expect_refused(rs, tok(JWT_HS256, p), "algorithm not allowed");
    expect_refused(rs, tok(JWT_ES256, p), "algorithm not allowed");
    expect_refused(es, tok(JWT_RS256, p), "algorithm not allowed");
    expect_refused(es, tok(JWT_HS256, p), "algorithm not allowed");
    expect_refused(hs, tok(JWT_RS256, p), "algorithm not allowed");
    expect_refused(hs, tok(JWT_ES256, p), "algorithm not allowed");
    jwt_verifier_free(rs);
    jwt_verifier_free(es);
    jwt_verifier_free(hs);
}

static void test_key_confusion(void **state)
{
    (void)state;
    /* The classic attack: HMAC keyed with the server's public key text. */
    struct jwt_verifier *rs = verifier(JWT_RS256, NULL, NULL);
    struct jwt_verifier *es = verifier(JWT_ES256, NULL, NULL);
    const char *p = claims("\"roles\":[\"admin\"]");
    expect_refused(rs, token_ex(alg_header(JWT_HS256), p, SIGN_HS, 0, rsa_pem),
                   "algorithm not allowed");
    expect_refused(es, token_ex(alg_header(JWT_HS256), p, SIGN_HS, 0, ec_pem),
                   "algorithm not allowed");
    /* Even claiming RS256 with an HMAC signature gets nowhere. */
    expect_refused(rs, token_ex(alg_header(JWT_RS256), p, SIGN_HS, 0, rsa_pem), "bad signature");
    jwt_verifier_free(rs);
    jwt_verifier_free(es);
}

static void test_expiry(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    /* exp is strict: no leeway, and exp == now is already expired. */
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"a\",\"exp\":%lld}", (long long)NOW - 1)),
                   "token expired");
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"a\",\"exp\":%lld}", (long long)NOW)),
                   "token expired");
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":-5}"), "token expired");
    expect_ok(v, tok(JWT_HS256, fmt("{\"sub\":\"a\",\"exp\":%lld}", (long long)NOW + 1)));
    assert_int_equal(last.exp, NOW + 1);
    jwt_verifier_free(v);
}

static void test_exp_missing_or_not_integer(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\"}"), "missing exp");
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":1.5}"), "exp is not an integer");
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":\"123\"}"), "exp is not an integer");
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":1900000000.0}"),
                   "exp is not an integer");
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":2e9}"), "exp is not an integer");
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":null}"), "exp is not an integer");
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":true}"), "exp is not an integer");
    /* Beyond int64: the JSON parser refuses it rather than wrapping around. */
    expect_refused(v, tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":99999999999999999999}"),
                   "bad payload");
    jwt_verifier_free(v);
}

static void test_nbf_and_iat(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    long long n = (long long)NOW;
    expect_refused(v, tok(JWT_HS256, claims(fmt("\"nbf\":%lld", n + LEEWAY + 1))),
                   "token not yet valid");
    expect_refused(v, tok(JWT_HS256, claims(fmt("\"nbf\":%lld", n + 3600))),
                   "token not yet valid");
    expect_ok(v, tok(JWT_HS256, claims(fmt("\"nbf\":%lld", n + LEEWAY))));
    expect_ok(v, tok(JWT_HS256, claims(fmt("\"nbf\":%lld", n + 30))));
    expect_ok(v, tok(JWT_HS256, claims(fmt("\"nbf\":%lld", n - 30))));
    expect_refused(v, tok(JWT_HS256, claims(fmt("\"iat\":%lld", n + LEEWAY + 1))),
                   "token issued in the future");
    expect_ok(v, tok(JWT_HS256, claims(fmt("\"iat\":%lld", n + LEEWAY))));
    expect_refused(v, tok(JWT_HS256, claims("\"nbf\":\"0\"")), "nbf is not an integer");
    expect_refused(v, tok(JWT_HS256, claims("\"iat\":1.25")), "iat is not an integer");
    /* A clock near the end of time must not overflow now + leeway. */
    char *far = tok(JWT_HS256, "{\"sub\":\"a\",\"exp\":9223372036854775807,\"nbf\":0}");
    assert_int_equal(verify_at(v, far, INT64_MAX - 10), 0);
    jwt_verifier_free(v);
}

static void test_issuer(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, "https://idp.example", NULL);
    expect_ok(v, tok(JWT_HS256, claims("\"iss\":\"https://idp.example\"")));
    expect_refused(v, tok(JWT_HS256, claims("\"iss\":\"https://evil.example\"")), "wrong issuer");
    expect_refused(v, tok(JWT_HS256, claims("\"iss\":\"https://idp.example/\"")), "wrong issuer");
    expect_refused(v, tok(JWT_HS256, claims("\"iss\":[\"https://idp.example\"]")),
                   "wrong issuer");
    expect_refused(v, tok(JWT_HS256, claims("")), "wrong issuer");
    jwt_verifier_free(v);
    /* Not configured: iss is not looked at. */
    v = verifier(JWT_HS256, NULL, NULL);
    expect_ok(v, tok(JWT_HS256, claims("\"iss\":42")));
    jwt_verifier_free(v);
}

static void test_audience(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_ES256, NULL, "chatd");
    expect_ok(v, tok(JWT_ES256, claims("\"aud\":\"chatd\"")));
    expect_ok(v, tok(JWT_ES256, claims("\"aud\":[\"billing\",\"chatd\"]")));
    expect_refused(v, tok(JWT_ES256, claims("\"aud\":\"billing\"")), "wrong audience");
    expect_refused(v, tok(JWT_ES256, claims("\"aud\":[\"billing\"]")), "wrong audience");
    expect_refused(v, tok(JWT_ES256, claims("\"aud\":[]")), "wrong audience");
    expect_refused(v, tok(JWT_ES256, claims("\"aud\":\"chat\"")), "wrong audience");
    expect_refused(v, tok(JWT_ES256, claims("\"aud\":[\"chatd\",7]")), "wrong audience");
    expect_refused(v, tok(JWT_ES256, claims("")), "wrong audience");
    jwt_verifier_free(v);
}

static void test_duplicates(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    expect_refused(v, tok(JWT_HS256, claims("\"sub\":\"admin\"")), "duplicate claim");
    expect_refused(v, tok(JWT_HS256, claims(fmt("\"exp\":%lld", (long long)NOW + 99999))),
                   "duplicate claim");
    expect_refused(v,
                   token_ex("{\"alg\":\"HS256\",\"alg\":\"none\"}", claims(""), SIGN_HS, 0, NULL),
                   "duplicate header parameter");
    jwt_verifier_free(v);
}

static void test_header_checks(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    const char *p = claims("");
    expect_refused(v, token_ex("{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}", p, SIGN_HS, 0,
                               NULL),
                   "unsupported critical header");
    expect_refused(v, token_ex("{\"alg\":\"HS256\",\"crit\":[]}", p, SIGN_HS, 0, NULL),
                   "unsupported critical header");
    expect_refused(v, token_ex("[\"HS256\"]", p, SIGN_HS, 0, NULL), "bad header");
    expect_refused(v, token_ex("{\"alg\":\"HS256\"", p, SIGN_HS, 0, NULL), "bad header");
    /* Unknown non-critical parameters are ignored, as RFC 7515 requires. */
    expect_ok(v, token_ex("{\"alg\":\"HS256\",\"kid\":\"k1\",\"x\":{}}", p, SIGN_HS, 0, NULL));
    jwt_verifier_free(v);
}

static void test_sub(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    long long e = (long long)NOW + 60;
    expect_refused(v, tok(JWT_HS256, fmt("{\"exp\":%lld}", e)), "missing sub");
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"\",\"exp\":%lld}", e)), "bad sub");
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":17,\"exp\":%lld}", e)), "bad sub");
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":null,\"exp\":%lld}", e)), "bad sub");

    char s128[129], s129[130];
    memset(s128, 'u', 128);
    s128[128] = '\0';
    memset(s129, 'u', 129);
    s129[129] = '\0';
    expect_ok(v, tok(JWT_HS256, fmt("{\"sub\":\"%s\",\"exp\":%lld}", s128, e)));
    assert_int_equal(last.sub_len, 128);
    assert_string_equal(last.sub, s128);
    assert_string_equal(last.name, s128);
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"%s\",\"exp\":%lld}", s129, e)), "bad sub");
    /* 128 bytes of multi-byte characters is fine; 130 is not. */
    char *u = fmt("%s", "");
    for (int i = 0; i < 32; i++)
        u = fmt("%s\xf0\x9f\x98\x80", u); /* U+1F600, 4 bytes */
    expect_ok(v, tok(JWT_HS256, fmt("{\"sub\":\"%s\",\"exp\":%lld}", u, e)));
    assert_int_equal(last.sub_len, 128);
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"%s\\u00e9\",\"exp\":%lld}", u, e)), "bad sub");
    jwt_verifier_free(v);
}

static void test_sub_control_chars(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    long long e = (long long)NOW + 60;
    static const char *const bad[] = {"a\\u0001b", "a\\nb", "\\t", "a\\u007f", "a\\u0085",
                                      "a\\u009f", "\\u001b[31m"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"%s\",\"exp\":%lld}", bad[i], e)),
                       "bad sub");
    /* NUL is refused by the JSON parser itself. */
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"a\\u0000b\",\"exp\":%lld}", e)),
                   "bad payload");
    /* Invalid UTF-8 (a lone continuation byte) never gets past the parser. */
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"a\x80\",\"exp\":%lld}", e)), "bad payload");
    /* Lone surrogate escapes neither. */
    expect_refused(v, tok(JWT_HS256, fmt("{\"sub\":\"\\ud800\",\"exp\":%lld}", e)),
                   "bad payload");
    /* Printable non-ASCII is fine: U+00A0 is the first code point after C1. */
    expect_ok(v, tok(JWT_HS256, fmt("{\"sub\":\"J\\u00f6rg \\u00a0\\u4e2d\",\"exp\":%lld}", e)));
    assert_string_equal(last.sub, "J\xc3\xb6rg \xc2\xa0\xe4\xb8\xad");
    jwt_verifier_free(v);
}

static void test_bad_base64(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    char *good = tok(JWT_HS256, claims(""));
    expect_ok(v, good);

    expect_refused(v, fmt("%s=", good), "bad encoding");
    char *dot = strchr(good, '.');
    /* '+' and '/' belong to the other base64 alphabet. */
    char *t = fmt("%s", good);
    t[dot - good + 2] = '+';
    /* The signature covers the text as sent, so sign the altered text: then
     * it is the payload's decoding that must fail. */
    *strrchr(t, '.') = '\0';
    struct sig s;
    hmac(SECRET, strlen(SECRET), t, &s);
    expect_refused(v, fmt("%s.%s", t, b64url(s.b, s.n)), "bad encoding");
    t = fmt("%s", good);
    t[strlen(t) - 3] = '+';
    expect_refused(v, t, "bad encoding");
    t = fmt("%s", good);
    t[1] = '/';
    expect_refused(v, t, "bad encoding");
    /* Padding on the header. */
    *dot = '\0';
    expect_refused(v, fmt("%s==.%s", good, dot + 1), "bad encoding");
    *dot = '.';
    /* Whitespace. */
    t = fmt("%s", good);
    t[5] = ' ';
    expect_refused(v, t, "bad encoding");
    /* Non-canonical: set an unused low bit of the last signature character
     * (43 characters for 32 bytes leave 2 spare bits). */
    t = fmt("%s", good);
    char *last_char = t + strlen(t) - 1;
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t idx = (size_t)(strchr(alphabet, *last_char) - alphabet);
    assert_int_equal(idx & 3, 0);
    *last_char = alphabet[idx | 1];
    expect_refused(v, t, "bad encoding");
    jwt_verifier_free(v);
}

static void test_part_count(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    char *good = tok(JWT_HS256, claims(""));
    char *two = fmt("%s", good);
    *strrchr(two, '.') = '\0';
    expect_refused(v, two, "malformed token");
    expect_refused(v, fmt("%s.", good), "malformed token");
    expect_refused(v, fmt("%s.abc", good), "malformed token");
    expect_refused(v, "", "malformed token");
    expect_refused(v, "abc", "malformed token");
    expect_refused(v, "..", "bad header");
    /* A NUL inside the given length is just a bad byte, not an end. */
    char buf[512];
    size_t n = strlen(good);
    assert_true(n < sizeof buf);
    memcpy(buf, good, n);
    buf[10] = '\0';
    assert_int_equal(jwt_verify(v, buf, n, NOW, &last, &last_reason), -EACCES);
    assert_string_equal(last_reason, "bad encoding");
    jwt_verifier_free(v);
}

static void test_oversized_token(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    size_t big = 64 * 1024;
    char *t = keep(malloc(big + 1));
    memset(t, 'A', big);
    t[100] = '.';
    t[200] = '.';
    t[big] = '\0';
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(jwt_verify(v, t, big, NOW, &last, &last_reason), -EACCES);
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_string_equal(last_reason, "token too long");
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    assert_true(secs < 1.0); /* refused on the length alone, without decoding */
    assert_int_equal(jwt_verify(v, t, JWT_MAX_TOKEN + 1, NOW, &last, &last_reason), -EACCES);
    assert_string_equal(last_reason, "token too long");

    /* A token of exactly JWT_MAX_TOKEN bytes is still read (and here accepted). */
    const char *head = b64url(alg_header(JWT_HS256), strlen(alg_header(JWT_HS256)));
    size_t fixed = strlen(head) + 1 + 1 + 43; /* dots and signature */
    size_t pay64 = JWT_MAX_TOKEN - fixed;     /* payload b64 length: make it 4k */
    pay64 -= pay64 % 4;
    size_t paylen = pay64 / 4 * 3;
    char *pad = keep(malloc(paylen));
    const char *base = claims("\"x\":\"");
    size_t baselen = strlen(base) - 1; /* drop the closing brace */
    memcpy(pad, base, baselen);
    memset(pad + baselen, 'p', paylen - baselen - 2);
    memcpy(pad + paylen - 2, "\"}", 2);
    char *p = keep(malloc(paylen + 1));
    memcpy(p, pad, paylen);
    p[paylen] = '\0';
    char *maxed = tok(JWT_HS256, p);
    assert_true(strlen(maxed) <= JWT_MAX_TOKEN);
    assert_true(strlen(maxed) > JWT_MAX_TOKEN - 4);
    expect_ok(v, maxed);
    jwt_verifier_free(v);
}

static void test_roles(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_RS256, NULL, NULL);
    expect_ok(v, tok(JWT_RS256, claims("\"roles\":[\"user\",\"admin\"]")));
    assert_int_equal(last.nroles, 2);
    assert_string_equal(last.roles[0], "user");
    assert_string_equal(last.roles[1], "admin");
    assert_int_equal(last.is_admin, 1);

    expect_ok(v, tok(JWT_RS256, claims("\"roles\":[\"Admin\",\"administrator\",\"user\"]")));
    assert_int_equal(last.nroles, 3);
    assert_int_equal(last.is_admin, 0);
    expect_ok(v, tok(JWT_RS256, claims("\"roles\":[]")));
    assert_int_equal(last.nroles, 0);

    expect_ok(v, tok(JWT_RS256, claims("\"roles\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\","
                                       "\"admin\"]")));
    assert_int_equal(last.nroles, 8);
    assert_int_equal(last.is_admin, 1);
    expect_refused(v, tok(JWT_RS256, claims("\"roles\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\","
                                            "\"7\",\"8\",\"admin\"]")),
                   "too many roles");
    expect_ok(v, tok(JWT_RS256, claims("\"roles\":[\"abcdefghijabcdefghijabcdefghij12\"]")));
    assert_string_equal(last.roles[0], "abcdefghijabcdefghijabcdefghij12");
    expect_refused(v, tok(JWT_RS256, claims("\"roles\":[\"abcdefghijabcdefghijabcdefghij123\"]")),
                   "bad roles");
    expect_refused(v, tok(JWT_RS256, claims("\"roles\":[\"admin\",1]")), "bad roles");
    expect_refused(v, tok(JWT_RS256, claims("\"roles\":[[\"admin\"]]")), "bad roles");
    expect_refused(v, tok(JWT_RS256, claims("\"roles\":\"admin\"")), "bad roles");
    expect_refused(v, tok(JWT_RS256, claims("\"roles\":[\"a\\nb\"]")), "bad roles");
    jwt_verifier_free(v);
}

static void test_name(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    expect_ok(v, tok(JWT_HS256, claims("")));
    assert_string_equal(last.name, "alice");
    assert_int_equal(last.name_len, 5);
    expect_ok(v, tok(JWT_HS256, claims("\"name\":\"\"")));
    assert_string_equal(last.name, "alice");
    expect_ok(v, tok(JWT_HS256, claims("\"name\":\"Al \\\"the\\\" </script>\"")));
    assert_string_equal(last.name, "Al \"the\" </script>");

    char n128[129], n129[130];
    memset(n128, 'n', 128);
    n128[128] = '\0';
    memset(n129, 'n', 129);
    n129[129] = '\0';
    expect_ok(v, tok(JWT_HS256, claims(fmt("\"name\":\"%s\"", n128))));
    assert_int_equal(last.name_len, 128);
    expect_refused(v, tok(JWT_HS256, claims(fmt("\"name\":\"%s\"", n129))), "bad name");
    expect_refused(v, tok(JWT_HS256, claims("\"name\":7")), "bad name");
    expect_refused(v, tok(JWT_HS256, claims("\"name\":\"a\\rb\"")), "bad name");
    jwt_verifier_free(v);
}

static void test_es256_signature_forms(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_ES256, NULL, NULL);
    const char *h = alg_header(JWT_ES256), *p = claims("");
    /* DER (what OpenSSL emits) is not the JWS form. */
    expect_refused(v, token_ex(h, p, SIGN_ES_DER, 0, NULL), "bad signature");
    /* r = s = 0 ("psychic signature", CVE-2022-21449 in Java). */
    unsigned char zero[64] = {0};
    char *input = fmt("%s.%s", b64url(h, strlen(h)), b64url(p, strlen(p)));
    expect_refused(v, fmt("%s.%s", input, b64url(zero, 64)), "bad signature");
    /* One byte too many or too few. */
    char *good = tok(JWT_ES256, p);
    const char *sig64 = strrchr(good, '.') + 1;
    unsigned char raw[80];
    ssize_t n = jwt_b64url_decode(sig64, strlen(sig64), raw, sizeof raw);
    assert_int_equal(n, 64);
    raw[64] = 0;
    expect_refused(v, fmt("%s.%s", input, b64url(raw, 65)), "bad signature");
    expect_refused(v, fmt("%s.%s", input, b64url(raw, 63)), "bad signature");
    expect_ok(v, fmt("%s.%s", input, b64url(raw, 64)));
    jwt_verifier_free(v);
}

static void test_verifier_new_errors(void **state)
{
    (void)state;
    struct jwt_verifier *v = (struct jwt_verifier *)&v; /* must be reset to NULL */
    char err[128];
    struct jwt_config cfg = {.alg = JWT_HS256,
                             .secret = (const unsigned char *)SECRET,
                             .secret_len = 31,
                             .leeway_s = 60};
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_null(v);
    assert_string_equal(err, "jwt secret must be at least 32 bytes");
    cfg.secret = NULL;
    cfg.secret_len = 0;
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_string_equal(err, "jwt secret must be at least 32 bytes");
    cfg.secret = (const unsigned char *)SECRET;
    cfg.secret_len = 32;
    cfg.leeway_s = -1;
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    cfg.leeway_s = 0;
    assert_int_equal(jwt_verifier_new(&v, &cfg, NULL, 0), 0);
    jwt_verifier_free(v);

    /* An EC key where RS256 wants RSA, and the other way round. */
    cfg = (struct jwt_config){.alg = JWT_RS256, .public_key_pem = ec_pem,
                              .public_key_len = strlen(ec_pem)};
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_null(v);
    assert_string_equal(err, "RS256 needs an RSA public key");
    cfg = (struct jwt_config){.alg = JWT_ES256, .public_key_pem = rsa_pem,
                              .public_key_len = strlen(rsa_pem)};
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_string_equal(err, "ES256 needs an EC public key on P-256");

    /* EC on the wrong curve. */
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    assert_non_null(p384);
    char *pem = keep(public_pem(p384));
    EVP_PKEY_free(p384);
    cfg = (struct jwt_config){.alg = JWT_ES256, .public_key_pem = pem,
                              .public_key_len = strlen(pem)};
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_string_equal(err, "ES256 needs an EC public key on P-256");

    /* RSA below 2048 bits. */
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    assert_non_null(small);
    pem = keep(public_pem(small));
    EVP_PKEY_free(small);
    cfg = (struct jwt_config){.alg = JWT_RS256, .public_key_pem = pem,
                              .public_key_len = strlen(pem)};
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_string_equal(err, "RS256 public key must be at least 2048 bits");

    /* Unreadable or missing keys. */
    static const char junk[] = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    cfg = (struct jwt_config){.alg = JWT_RS256, .public_key_pem = junk,
                              .public_key_len = strlen(junk)};
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_string_equal(err, "jwt public key is not a readable PEM public key");
    cfg.public_key_len = 20; /* truncated PEM */
    cfg.public_key_pem = rsa_pem;
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    cfg.public_key_pem = NULL;
    cfg.public_key_len = 0;
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    cfg.alg = (enum jwt_alg)9;
    assert_int_equal(jwt_verifier_new(&v, &cfg, err, sizeof err), -EINVAL);
    assert_int_equal(jwt_verifier_new(NULL, &cfg, err, sizeof err), -EINVAL);
    jwt_verifier_free(NULL);
}

static void test_verifier_copies_config(void **state)
{
    (void)state;
    /* The verifier keeps its own copies: the caller's buffers may go away. */
    char *secret = keep(strdup(SECRET));
    char *iss = keep(strdup("me")), *aud = keep(strdup("you"));
    struct jwt_config cfg = {.alg = JWT_HS256,
                             .secret = (const unsigned char *)secret,
                             .secret_len = strlen(secret),
                             .issuer = iss,
                             .audience = aud};
    struct jwt_verifier *v = NULL;
    assert_int_equal(jwt_verifier_new(&v, &cfg, NULL, 0), 0);
    memset(secret, 'x', strlen(secret));
    iss[0] = 'X';
    aud[0] = 'X';
    expect_ok(v, tok(JWT_HS256, claims("\"iss\":\"me\",\"aud\":\"you\"")));
    jwt_verifier_free(v);
}

static void test_sign_round_trip(void **state)
{
    (void)state;
    struct jwt_verifier *v = verifier(JWT_HS256, NULL, NULL);
    const char *p = claims("\"name\":\"Bob\",\"roles\":[\"admin\"]");
    char *t = jwt_sign_hs256((const unsigned char *)SECRET, strlen(SECRET), p, strlen(p));
    assert_non_null(t);
    keep(t);
    /* Same bytes as the test's own signer produces. */
    assert_string_equal(t, tok(JWT_HS256, p));
    assert_true(strncmp(t, b64url("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", 27), 36) == 0);
    expect_ok(v, t);
    assert_string_equal(last.name, "Bob");
    assert_int_equal(last.is_admin, 1);
    /* Another key: refused. */
    t = keep(jwt_sign_hs256((const unsigned char *)"ffffffffffffffffffffffffffffffff", 32, p,
                            strlen(p)));
    expect_refused(v, t, "bad signature");
    /* reason may be NULL; out is zeroed on refusal. */
    memset(&last, 0x55, sizeof last);
    assert_int_equal(jwt_verify(v, t, strlen(t), NOW, &last, NULL), -EACCES);
    assert_int_equal(last.sub_len, 0);
    assert_int_equal(jwt_verify(NULL, t, strlen(t), NOW, &last, &last_reason), -EINVAL);
    assert_int_equal(jwt_verify(v, NULL, 0, NOW, &last, &last_reason), -EINVAL);
    jwt_verifier_free(v);
}

/* ---- threads ------------------------------------------------------------------------ */

struct worker_arg {
    const struct jwt_verifier *v;
    const char *good, *bad;
    int iterations;
    int ok, refused_right; /* written by the worker only, read after join */
};

static void *worker(void *p)
{
    struct worker_arg *a = p;
    for (int i = 0; i < a->iterations; i++) {
        struct jwt_claims c;
        const char *why;
        if (jwt_verify(a->v, a->good, strlen(a->good), NOW, &c, &why) == 0 && c.sub_len == 5
            && c.is_admin)
            a->ok++;
        /* Mix in refusals so error paths (OpenSSL error queue) run concurrently too. */
        if (i % 8 == 0 && jwt_verify(a->v, a->bad, strlen(a->bad), NOW, &c, &why) == -EACCES
            && strcmp(why, "bad signature") == 0)
            a->refused_right++;
    }
    return NULL;
}

static void run_threads(enum jwt_alg alg, int iterations)
{
    enum { NTHREADS = 4 };
    struct jwt_verifier *v = verifier(alg, NULL, "chatd");
    const char *p = claims("\"aud\":[\"x\",\"chatd\"],\"roles\":[\"admin\"],\"name\":\"A\"");
    const char *good = tok(alg, p);
    const char *bad = token_ex(alg_header(alg), p, signer_for(alg), 1, NULL);
    pthread_t th[NTHREADS];
    struct worker_arg args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (struct worker_arg){.v = v, .good = good, .bad = bad, .iterations = iterations};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].ok, iterations);
        assert_int_equal(args[i].refused_right, (iterations + 7) / 8);
    }
    jwt_verifier_free(v);
}

static void test_threads(void **state)
{
    (void)state;
    run_threads(JWT_HS256, 4000);
    run_threads(JWT_RS256, 1000);
    run_threads(JWT_ES256, 1000);
}

int main(void)
{
#define T(fn) cmocka_unit_test_teardown(fn, arena_free)
    const struct CMUnitTest tests[] = {
        T(test_alg_parse_and_name),
        T(test_b64url),
        T(test_b64url_against_reference),
        T(test_hs256_valid),
        T(test_rs256_valid),
        T(test_es256_valid),
        T(test_bad_signature),
        T(test_signature_checked_before_payload),
        T(test_alg_none),
        T(test_alg_mismatch),
        T(test_key_confusion),
        T(test_expiry),
        T(test_exp_missing_or_not_integer),
        T(test_nbf_and_iat),
        T(test_issuer),
        T(test_audience),
        T(test_duplicates),
        T(test_header_checks),
        T(test_sub),
        T(test_sub_control_chars),
        T(test_bad_base64),
        T(test_part_count),
        T(test_oversized_token),
        T(test_roles),
        T(test_name),
        T(test_es256_signature_forms),
        T(test_verifier_new_errors),
        T(test_verifier_copies_config),
        T(test_sign_round_trip),
        T(test_threads),
    };
#undef T
    return cmocka_run_group_tests(tests, keys_setup, keys_teardown);
}
