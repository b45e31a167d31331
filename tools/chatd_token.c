/*
 * DESIGN: chatd-token mints one HS256 token for development and tests. The
 * claims are built with jansson so any user id or display name is escaped
 * correctly, and signed with jwt_sign_hs256, the same code the server's tests
 * use. The tool deliberately does not enforce the server's claim limits (sub
 * length, roles count): tests use it to mint tokens the server must refuse.
 * Usage errors print one line on stderr and exit 2, like chatd itself.
 */
#include "auth/jwt.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

#define EXIT_USAGE 2
#define MAX_SECRET_FILE (64 * 1024)

static const char usage[] =
    "usage: chatd-token --secret-file F --sub USER [options]\n"
    "Print one HS256 JWT for chatd on stdout.\n"
    "\n"
    "  --secret-file F    read the HS256 secret (at least 32 bytes) from file F; one\n"
    "                     trailing newline (\\n or \\r\\n) is stripped (same as chatd\n"
    "                     --jwt-secret-file)\n"
    "  --secret S         the secret itself (same as chatd --jwt-secret); other local\n"
    "                     users can see a flag in ps: prefer --secret-file\n"
    "  --sub USER         the sub claim: the user id (required)\n"
    "  --name N           the name claim: display name (chatd defaults it to sub)\n"
    "  --roles LIST       comma-separated roles claim, e.g. admin,user\n"
    "  --ttl SECONDS      lifetime: exp = now + SECONDS (default 3600)\n"
    "  --exp UNIX         absolute expiry in unix seconds (overrides --ttl)\n"
    "  --nbf UNIX         the nbf claim: not valid before, unix seconds\n"
    "  --iss I            the iss claim (for chatd --jwt-issuer)\n"
    "  --aud A            the aud claim (for chatd --jwt-audience)\n"
    "  --help             show this help and exit\n"
    "\n"
    "iat is always set to now. Options also accept the --name=value form.\n";

static int usage_error(const char *fmt, const char *arg)
{
    fputs("chatd-token: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (see --help)\n", stderr);
    return EXIT_USAGE;
}

/* Whole-string signed decimal; 0 or -EINVAL. */
static int parse_i64(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

/* Read the whole secret file (bounded) into a malloc'd buffer. */
static int read_secret_file(const char *path, unsigned char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -errno;
    unsigned char *buf = malloc(MAX_SECRET_FILE + 1);
    if (buf == NULL) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(buf, 1, MAX_SECRET_FILE + 1, f);
    int rc = ferror(f) ? -EIO : 0;
    fclose(f);
    if (rc == 0 && n > MAX_SECRET_FILE)
        rc = -EFBIG;
    if (rc != 0) {
        OPENSSL_cleanse(buf, MAX_SECRET_FILE + 1);
        free(buf);
        return rc;
    }
    /* Editors add a final newline; it is never meant to be part of the key. */
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    *out = buf;
    *len = n;
    return 0;
}

/* Split "a,b,c" into a JSON array of strings; empty items are skipped. */
static json_t *roles_array(const char *list)
{
    json_t *arr = json_array();
    if (arr == NULL)
        return NULL;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n > 0) {
            json_t *s = json_stringn(p, n);
            if (s == NULL || json_array_append_new(arr, s) != 0) {
                json_decref(arr);
                return NULL;
            }
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    return arr;
}

/* Add a string claim; -1 when the value is not valid UTF-8 (or no memory). */
static int set_string(json_t *obj, const char *key, const char *val)
{
    json_t *s = json_string(val);
    return s == NULL ? -1 : json_object_set_new(obj, key, s);
}

int main(int argc, char **argv)
{
    const char *secret = NULL, *secret_file = NULL, *sub = NULL, *name = NULL, *roles = NULL;
    const char *iss = NULL, *aud = NULL, *ttl_s = NULL, *exp_s = NULL, *nbf_s = NULL;
    const struct {
        const char *flag;
        const char **slot;
    } flags[] = {
        {"secret", &secret}, {"secret-file", &secret_file}, {"sub", &sub}, {"name", &name},
        {"roles", &roles},   {"iss", &iss},                 {"aud", &aud}, {"ttl", &ttl_s},
        {"exp", &exp_s},     {"nbf", &nbf_s},
    };

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0)
            return usage_error("unexpected argument '%s'", arg);
        const char *key = arg + 2, *eq = strchr(key, '=');
        size_t klen = eq ? (size_t)(eq - key) : strlen(key);
        size_t f;
        for (f = 0; f < sizeof flags / sizeof flags[0]; f++)
            if (strlen(flags[f].flag) == klen && memcmp(flags[f].flag, key, klen) == 0)
                break;
        if (f == sizeof flags / sizeof flags[0])
            return usage_error("unknown option '%s'", arg);
        const char *val;
        if (eq != NULL) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc)
                return usage_error("option '%s' needs a value", arg);
            val = argv[++i];
        }
        *flags[f].slot = val;
    }

    if (secret != NULL && secret_file != NULL)
        return usage_error("%s", "give only one of --secret and --secret-file");
    if (secret == NULL && secret_file == NULL)
        return usage_error("%s", "missing --secret (or --secret-file)");
    if (sub == NULL)
        return usage_error("%s", "missing --sub");

    long long ttl = 3600, exp = 0, nbf = 0;
    if (ttl_s != NULL && parse_i64(ttl_s, &ttl) != 0)
        return usage_error("--ttl: '%s' is not an integer", ttl_s);
    if (exp_s != NULL && parse_i64(exp_s, &exp) != 0)
        return usage_error("--exp: '%s' is not an integer", exp_s);
    if (nbf_s != NULL && parse_i64(nbf_s, &nbf) != 0)
        return usage_error("--nbf: '%s' is not an integer", nbf_s);

    unsigned char *key = NULL;
    size_t key_len = 0;
    if (secret_file != NULL) {
        int rc = read_secret_file(secret_file, &key, &key_len);
        if (rc != 0) {
            fprintf(stderr, "chatd-token: cannot read --secret-file %s: %s\n", secret_file,
                    strerror(-rc));
            return EXIT_USAGE;
        }
    } else {
        key_len = strlen(secret);
        key = malloc(key_len + 1);
        if (key == NULL) {
            fputs("chatd-token: out of memory\n", stderr);
            return 1;
        }
        memcpy(key, secret, key_len);
        /* Copied: overwrite it in argv, which other local users can read
         * as /proc/PID/cmdline (ps). */
        memset((char *)secret, 'x', key_len);
    }

    int status = EXIT_USAGE;
    json_t *claims = NULL;
    char *payload = NULL, *token = NULL;
    if (key_len < 32) {
        fputs("chatd-token: secret must be at least 32 bytes\n", stderr);
        goto out;
    }

    long long now = (long long)time(NULL);
    if (exp_s == NULL) {
        if ((ttl > 0 && now > LLONG_MAX - ttl) || (ttl < 0 && now < LLONG_MIN - ttl)) {
            fputs("chatd-token: --ttl out of range\n", stderr);
            goto out;
        }
        exp = now + ttl;
    }

    claims = json_object();
    if (claims == NULL || set_string(claims, "sub", sub) != 0) {
        fputs("chatd-token: --sub is not valid UTF-8\n", stderr);
        goto out;
    }
    if (name != NULL && set_string(claims, "name", name) != 0) {
        fputs("chatd-token: --name is not valid UTF-8\n", stderr);
        goto out;
    }
    if (roles != NULL) {
        json_t *arr = roles_array(roles);
        if (arr == NULL || json_object_set_new(claims, "roles", arr) != 0) {
            fputs("chatd-token: --roles is not valid UTF-8\n", stderr);
            goto out;
        }
    }
    if (iss != NULL && set_string(claims, "iss", iss) != 0) {
        fputs("chatd-token: --iss is not valid UTF-8\n", stderr);
        goto out;
    }
    if (aud != NULL && set_string(claims, "aud", aud) != 0) {
        fputs("chatd-token: --aud is not valid UTF-8\n", stderr);
        goto out;
    }
    status = 1; /* from here on, failures are not usage errors */
    if (json_object_set_new(claims, "iat", json_integer(now)) != 0
        || (nbf_s != NULL && json_object_set_new(claims, "nbf", json_integer(nbf)) != 0)
        || json_object_set_new(claims, "exp", json_integer(exp)) != 0) {
        fputs("chatd-token: out of memory\n", stderr);
        goto out;
    }

    payload = json_dumps(claims, JSON_COMPACT);
    if (payload != NULL)
        token = jwt_sign_hs256(key, key_len, payload, strlen(payload));
    if (token == NULL) {
        fputs("chatd-token: cannot sign the token\n", stderr);
        goto out;
    }
    if (printf("%s\n", token) < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "chatd-token: cannot write the token: %s\n", strerror(errno));
        goto out;
    }
    status = 0;

out:
    free(token);
    free(payload);
    json_decref(claims);
    OPENSSL_cleanse(key, key_len);
    free(key);
    return status;
}
