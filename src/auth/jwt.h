/*
 * jwt: verification of compact JWS tokens (RFC 7515/7519) for chatd logins.
 *
 * Owns struct jwt_verifier: the configured algorithm, a private copy of the
 * HS256 secret or the parsed RS256/ES256 public key, and the optional required
 * issuer and audience. A verifier is built once at start (jwt_verifier_new,
 * any thread) and is immutable afterwards, so any number of threads may call
 * jwt_verify on it at once; jwt_verifier_free only after every caller is done.
 *
 * The algorithm is fixed by configuration, never chosen by the token: a token
 * whose header "alg" differs (including "none") is refused before any key is
 * used. Work is bounded: tokens longer than JWT_MAX_TOKEN are refused before
 * decoding, and the signature is checked before the payload JSON is parsed.
 *
 * Errors: -EINVAL (bad configuration or arguments), -EACCES (token refused),
 * -ENOMEM. Refusal reasons are short static strings that never contain any
 * part of the token, so they are safe to log and to send to the client.
 */
#ifndef CHATD_AUTH_JWT_H
#define CHATD_AUTH_JWT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum jwt_alg { JWT_HS256 = 0, JWT_RS256, JWT_ES256 };

/* Parse "HS256"/"RS256"/"ES256" (exact case); returns the alg or -1. */
int jwt_alg_parse(const char *s);
/* The JOSE name of alg ("HS256", ...), or "?" for an out-of-range value. */
const char *jwt_alg_name(enum jwt_alg alg);

/* Configuration; every pointer is borrowed for the jwt_verifier_new call only
 * (the verifier keeps its own copies). */
struct jwt_config {
    enum jwt_alg alg;
    const unsigned char *secret; size_t secret_len;   /* HS256: >= 32 bytes */
    const char *public_key_pem; size_t public_key_len; /* RS256 (RSA key) / ES256 (EC P-256 key), PEM text */
    const char *issuer;    /* NULL: iss not checked; else required and equal */
    const char *audience;  /* NULL: aud not checked; else required: aud string equal, or array containing it */
    int leeway_s;          /* applied to nbf and iat only; exp is strict; must be >= 0 */
};

/* Immutable after creation: any number of threads may call jwt_verify at once.
 * HS256 keeps one keyed MAC context per calling thread (a thread-specific
 * key the verifier owns; each thread's context is freed when the thread
 * ends, the freeing thread's in jwt_verifier_free): nothing is shared. */
struct jwt_verifier;

/* Build a verifier. 0 on success; -EINVAL with a one-line reason in err
 * (secret too short, key unreadable or of the wrong type for alg, RSA key
 * under 2048 bits, negative leeway, ...); -ENOMEM. err may be NULL. */
int jwt_verifier_new(struct jwt_verifier **out, const struct jwt_config *cfg, char *err, size_t errlen);
/* Free a verifier (NULL is fine); the secret copy is wiped first. */
void jwt_verifier_free(struct jwt_verifier *v);
/* The algorithm a verifier was configured with. */
enum jwt_alg jwt_verifier_alg(const struct jwt_verifier *v);

#define JWT_MAX_TOKEN 8192      /* longer tokens are refused before any decoding */
#define JWT_MAX_SUB 128
#define JWT_MAX_NAME 128
#define JWT_MAX_ROLES 8
#define JWT_MAX_ROLE 32

/* Claims of an accepted token; every string is NUL-terminated and also has
 * its length (they contain no NUL or other control character). */
struct jwt_claims {
    char sub[JWT_MAX_SUB + 1];   size_t sub_len;   /* 1..128 bytes, printable UTF-8 (no control chars) */
    char name[JWT_MAX_NAME + 1]; size_t name_len;  /* the "name" claim, or a copy of sub when absent or empty */
    char roles[JWT_MAX_ROLES][JWT_MAX_ROLE + 1]; unsigned nroles; /* strings of the "roles" claim */
    int is_admin;                /* roles contains "admin" */
    int64_t exp;                 /* unix seconds */
};

/* Verify a compact JWS token (len bytes, not NUL-terminated) at time now_s
 * (unix seconds). 0 and *out filled on success; otherwise a negative errno
 * (-EACCES for any refusal, -ENOMEM, -EINVAL for NULL arguments), *out zeroed
 * and *reason (when reason is not NULL) set to a short static English string
 * such as "bad signature", "token expired" or "algorithm not allowed".
 * Never copies the token or any part of it into reason. */
int jwt_verify(const struct jwt_verifier *v, const char *token, size_t len, int64_t now_s,
               struct jwt_claims *out, const char **reason);

/* Mint an HS256 token for development and tests: header
 * {"alg":"HS256","typ":"JWT"}, payload = the given JSON object text, encoded
 * byte for byte as given (not validated, so tests can mint malformed claims).
 * Returns a malloc'd NUL-terminated token (caller frees) or NULL. */
char *jwt_sign_hs256(const unsigned char *secret, size_t secret_len, const char *payload_json, size_t payload_len);

/* base64url without padding (RFC 4648 section 5), exposed for tests and tools.
 * jwt_b64url_encode writes b64 text plus a NUL into out (outlen must be at least
 * JWT_B64URL_LEN(n) + 1) and returns its length, or -ENOBUFS.
 * jwt_b64url_decode is strict: no padding, no character outside the alphabet,
 * no impossible length, unused trailing bits zero; returns the decoded length
 * or -EINVAL / -ENOBUFS. */
#define JWT_B64URL_LEN(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))
ssize_t jwt_b64url_encode(const unsigned char *in, size_t n, char *out, size_t outlen);
ssize_t jwt_b64url_decode(const char *in, size_t n, unsigned char *out, size_t outlen);

#endif
