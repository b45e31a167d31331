/*
 * DESIGN: the assistant's models (--model, also CHATD_MODEL and `model =`
 * lines), parsed with the same rules wherever they are written: each spec
 * is checked where it appears, and keys and system prompts are read only
 * for the list that wins (flags over environment over file). Keys live in
 * memory that is wiped when the configuration is released. Part of the
 * configuration module; its entry points are in config_int.h.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/config.h"
#include "conf/config_int.h"
#include "util/file.h"
#include "util/log.h"
#include "util/vec.h"

/* ---- models ---------------------------------------------------------------- */

const char *const conf_model_kind_names[3] = {[CONF_MODEL_NONE] = "none",
                                              [CONF_MODEL_OPENAI] = "openai",
                                              [CONF_MODEL_ANTHROPIC] = "anthropic"};

static void model_release(struct conf_model *m)
{
    free(m->base_url);
    free(m->model);
    free(m->name);
    free(m->key_env);
    free(m->key_file);
    file_free_secret(m->key, m->key_len);
    free(m->system_file);
    free(m->system_prompt);
    memset(m, 0, sizeof *m);
}

void conf__models_clear(struct config *cfg)
{
    for (unsigned i = 0; i < cfg->nmodels; i++)
        model_release(&cfg->models[i]);
    free(cfg->models);
    cfg->models = NULL;
    cfg->nmodels = 0;
    cfg->_models_cap = 0;
}

/* Is s[0..n) well-formed UTF-8: no overlong form, surrogate or code point
 * past U+10FFFF (what JSON strings may carry)? */
static bool utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], cp, min;
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0)
            len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
            len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
            len = 4, cp = c & 0x07, min = 0x10000;
        else
            return false;
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

/* A model id: 1 to 64 bytes of [A-Za-z0-9._-] (it goes into logs, the
 * database and URLs as it is). */
static int check_id(const char *id, char *err, size_t errlen)
{
    size_t n = strlen(id);
    bool ok = n >= 1 && n <= CONF_MODEL_ID_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)id[i]) || id[i] == '.' || id[i] == '_' || id[i] == '-';
    if (!ok)
        return conf__errf(err, errlen, "bad id '%s' (1 to %d bytes of A-Z a-z 0-9 . _ -)", id,
                    CONF_MODEL_ID_MAX);
    return 0;
}

/* A display or provider model name: UTF-8 text, no control character. */
static int check_text(const char *id, const char *what, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    bool ok = n <= CONF_MODEL_TEXT_MAX && utf8_ok((const unsigned char *)v, n);
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)v[i] >= 0x20 && v[i] != 0x7f;
    if (!ok)
        return conf__errf(err, errlen,
                    "'%s': %s= must be UTF-8 text of at most %d bytes without control "
                    "characters",
                    id, what, CONF_MODEL_TEXT_MAX);
    return 0;
}

/*
 * A provider's base URL: http:// or https://, a host (name, IPv4, or [IPv6])
 * with an optional port, an optional path; no credentials (a key belongs in
 * key-env or key-file, never in a URL that is logged), query or fragment
 * (chatd appends the API's path to it). On success *out is a copy with the
 * scheme in lower case and no trailing '/'.
 */
static int check_base_url(const char *id, const char *u, char **out, char *err, size_t errlen)
{
    size_t skip;
    if (strncasecmp(u, "http://", 7) == 0)
        skip = 7;
    else if (strncasecmp(u, "https://", 8) == 0)
        skip = 8;
    else if (strchr(u, '@'))
        return conf__errf(err, errlen, "'%s': the base URL must start with http:// or https://", id);
    else
        return conf__errf(err, errlen, "'%s': the base URL must start with http:// or https://, got '%s'",
                    id, u);
    /* Credentials first, so that no message below repeats them. */
    const char *host = u + skip;
    size_t alen = strcspn(host, "/?#");
    if (memchr(host, '@', alen))
        return conf__errf(err, errlen,
                    "'%s': the base URL may not hold credentials (use key-env or key-file)", id);
    for (const char *p = u; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#')
            return conf__errf(err, errlen,
                        "'%s': the base URL '%s' may not hold spaces, control characters, "
                        "a query or a fragment",
                        id, u);
    }
    const char *port = NULL;
    size_t hlen = alen;
    if (host[0] == '[') {
        const char *close = memchr(host, ']', alen);
        if (!close || close == host + 1)
            return conf__errf(err, errlen, "'%s': bad IPv6 host in the base URL '%s'", id, u);
        size_t after = (size_t)(close + 1 - host);
        if (after < alen && host[after] != ':')
            return conf__errf(err, errlen, "'%s': bad IPv6 host in the base URL '%s'", id, u);
        hlen = after;
        port = after < alen ? host + after + 1 : NULL;
    } else {
        const char *colon = memchr(host, ':', alen);
        if (colon) {
            hlen = (size_t)(colon - host);
            port = colon + 1;
        }
    }
    if (hlen == 0)
        return conf__errf(err, errlen, "'%s': the base URL '%s' has no host", id, u);
    if (port) {
        size_t plen = (size_t)(host + alen - port);
        uint64_t p = 0;
        bool ok = plen >= 1 && plen <= 5;
        for (size_t i = 0; ok && i < plen; i++) {
            ok = isdigit((unsigned char)port[i]);
            p = p * 10 + (uint64_t)(port[i] - '0');
        }
        if (!ok || p < 1 || p > 65535)
            return conf__errf(err, errlen, "'%s': bad port in the base URL '%s'", id, u);
    }
    size_t n = strlen(u);
    while (n > skip + alen && u[n - 1] == '/')
        n--;
    char *copy = strndup(u, n);
    if (!copy)
        return conf__errf(err, errlen, "out of memory");
    for (size_t i = 0; i < skip; i++)
        copy[i] = (char)tolower((unsigned char)copy[i]);
    *out = copy;
    return 0;
}

/*
 * Split s at each `sep` (and at each newline when nl is set); a doubled sep
 * stands for one sep inside a piece. Returns the pieces, each NUL-terminated,
 * one after the other in one malloc'd buffer, with their count in *count;
 * NULL when out of memory. The output is never longer than s.
 */
static char *split_doubled(const char *s, char sep, bool nl, size_t *count)
{
    size_t n = strlen(s), k = 0, c = 1;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == sep && s[i + 1] == sep)
            out[k++] = s[i++];
        else if (s[i] == sep || (nl && s[i] == '\n'))
            out[k++] = '\0', c++;
        else
            out[k++] = s[i];
    }
    out[k] = '\0';
    *count = c;
    return out;
}

/* The settings of a SPEC after its head, in the order --help names them. */
enum { MK_MODEL, MK_NAME, MK_KEY_ENV, MK_KEY_FILE, MK_SYSTEM_FILE, MK_MAX_TOKENS, MK_COUNT };
static const char *const model_keys[MK_COUNT] = {"model",    "name",        "key-env",
                                                 "key-file", "system-file", "max-tokens"};

static int dup_or_null(const char *v, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (v && !(*out = strdup(v)))
        return conf__errf(err, errlen, "out of memory");
    return 0;
}

/* Is id used by a model already in the list? */
static bool model_id_taken(const struct config *cfg, const char *id)
{
    for (unsigned i = 0; i < cfg->nmodels; i++)
        if (strcmp(cfg->models[i].id, id) == 0)
            return true;
    return false;
}

/* Append *m (taking ownership of its strings, even on failure) after checking
 * that its id is new and the list is not full. */
static int model_append(struct config *cfg, struct conf_model *m, char *err, size_t errlen)
{
    int rc;
    if (model_id_taken(cfg, m->id))
        rc = conf__errf(err, errlen, "duplicate id '%s'", m->id);
    else if (cfg->nmodels >= CONF_MODELS_MAX)
        rc = conf__errf(err, errlen, "more than %d models", CONF_MODELS_MAX);
    else if (vec_grow(&cfg->models, &cfg->_models_cap, cfg->nmodels, 1, sizeof *cfg->models) != 0)
        rc = conf__errf(err, errlen, "out of memory");
    else {
        cfg->models[cfg->nmodels++] = *m;
        return 0;
    }
    model_release(m);
    return rc;
}

/* Parse one SPEC, `ID=KIND:BASE_URL[,key=value...]`, into a new model at the
 * end of the list. Only its text is checked here (resolve_models reads what
 * it names). */
static int add_model(struct config *cfg, const char *spec, char *err, size_t errlen)
{
    size_t count;
    char *buf = split_doubled(spec, ',', false, &count);
    if (!buf)
        return conf__errf(err, errlen, "out of memory");
    struct conf_model m;
    memset(&m, 0, sizeof m);
    const char *val[MK_COUNT] = {NULL};
    int rc = 0, kind = -1;
    /* conf__trim() and the parsing below write NULs into a piece: step from one
     * to the next by the length it had before. */
    char *p = buf, *next = buf + strlen(buf) + 1;
    char *head = conf__trim(p);
    char *eq = strchr(head, '=');
    char *colon = eq ? strchr(eq + 1, ':') : NULL;
    if (!colon) {
        rc = conf__errf(err, errlen, "expected ID=KIND:BASE_URL[,key=value...], got '%s'", head);
        goto out;
    }
    *eq = *colon = '\0';
    if ((rc = check_id(head, err, errlen)) < 0)
        goto out;
    memcpy(m.id, head, strlen(head) + 1);
    for (int k = CONF_MODEL_OPENAI; k <= CONF_MODEL_ANTHROPIC; k++)
        if (strcmp(eq + 1, conf_model_kind_names[k]) == 0)
            kind = k;
    if (kind < 0) {
        rc = conf__errf(err, errlen, "'%s': unknown kind '%s' (expected openai or anthropic)", m.id,
                  eq + 1);
        goto out;
    }
    m.kind = kind;
    if ((rc = check_base_url(m.id, colon + 1, &m.base_url, err, errlen)) < 0)
        goto out;

    for (size_t i = 1; i < count; i++) {
        p = next;
        next = p + strlen(p) + 1;
        char *field = conf__trim(p);
        char *feq = strchr(field, '=');
        if (!*field) {
            rc = conf__errf(err, errlen, "'%s': empty setting (write ',,' for a comma in a value)", m.id);
            goto out;
        }
        if (!feq) {
            rc = conf__errf(err, errlen, "'%s': expected key=value, got '%s'", m.id, field);
            goto out;
        }
        *feq = '\0';
        char *key = conf__trim(field), *value = conf__trim(feq + 1);
        int k = 0;
        while (k < MK_COUNT && strcmp(key, model_keys[k]) != 0)
            k++;
        if (k == MK_COUNT) {
            rc = conf__errf(err, errlen,
                      "'%s': unknown setting '%s' (expected model, name, key-env, key-file, "
                      "system-file or max-tokens)",
                      m.id, key);
            goto out;
        }
        if (val[k]) {
            rc = conf__errf(err, errlen, "'%s': %s= given twice", m.id, key);
            goto out;
        }
        if (!*value) {
            rc = conf__errf(err, errlen, "'%s': %s= is empty", m.id, key);
            goto out;
        }
        val[k] = value;
    }

    if ((val[MK_MODEL] && (rc = check_text(m.id, "model", val[MK_MODEL], err, errlen)) < 0) ||
        (val[MK_NAME] && (rc = check_text(m.id, "name", val[MK_NAME], err, errlen)) < 0))
        goto out;
    if (val[MK_KEY_ENV] && val[MK_KEY_FILE]) {
        rc = conf__errf(err, errlen, "'%s': key-env= and key-file=: give one or neither", m.id);
        goto out;
    }
    if (val[MK_KEY_ENV]) {
        const char *v = val[MK_KEY_ENV];
        bool ok = !isdigit((unsigned char)v[0]) && strlen(v) <= 255;
        for (const char *c = v; ok && *c; c++)
            ok = isalnum((unsigned char)*c) || *c == '_';
        if (!ok) {
            rc = conf__errf(err, errlen, "'%s': key-env: '%s' is not a variable name", m.id, v);
            goto out;
        }
    }
    if (val[MK_MAX_TOKENS]) {
        uint64_t x;
        if (conf__parse_u64(val[MK_MAX_TOKENS], &x) < 0 || x < 1 || x > CONF_MODEL_MAX_TOKENS) {
            rc = conf__errf(err, errlen, "'%s': max-tokens: expected an integer from 1 to %d, got '%s'",
                      m.id, CONF_MODEL_MAX_TOKENS, val[MK_MAX_TOKENS]);
            goto out;
        }
        m.max_tokens = (unsigned)x;
    } else if (kind == CONF_MODEL_ANTHROPIC) {
        m.max_tokens = CONF_ANTHROPIC_MAX_TOKENS;
    }
    if ((rc = dup_or_null(val[MK_MODEL] ? val[MK_MODEL] : m.id, &m.model, err, errlen)) < 0 ||
        (rc = dup_or_null(val[MK_NAME] ? val[MK_NAME] : m.id, &m.name, err, errlen)) < 0 ||
        (rc = dup_or_null(val[MK_KEY_ENV], &m.key_env, err, errlen)) < 0 ||
        (rc = dup_or_null(val[MK_KEY_FILE], &m.key_file, err, errlen)) < 0 ||
        (rc = dup_or_null(val[MK_SYSTEM_FILE], &m.system_file, err, errlen)) < 0)
        goto out;
    free(buf);
    return model_append(cfg, &m, err, errlen);
out:
    model_release(&m);
    free(buf);
    return rc;
}

/*
 * The setter of --model: one or more SPECs separated by ';' or newlines.
 * The first value from a stronger source than the list's drops the list.
 */
int conf__set_model(struct config *cfg, const char *v, char *err, size_t errlen)
{
    if (cfg->_models_source != cfg->_source) {
        conf__models_clear(cfg);
        cfg->_models_source = cfg->_source;
    }
    size_t count, added = 0;
    char *buf = split_doubled(v, ';', true, &count);
    if (!buf)
        return conf__errf(err, errlen, "out of memory");
    int rc = 0;
    char *next = buf;
    for (size_t i = 0; i < count && rc == 0; i++) {
        char *p = next;
        next = p + strlen(p) + 1;
        char *spec = conf__trim(p);
        if (*spec) {
            rc = add_model(cfg, spec, err, errlen);
            added++;
        }
    }
    free(buf);
    if (rc == 0 && added == 0)
        rc = conf__errf(err, errlen, "expected ID=KIND:BASE_URL[,key=value...], got an empty value");
    return rc;
}

/* The models of --models: "id[:name],...", names only. */
static int load_models_list(struct config *cfg, char *err, size_t errlen)
{
    char *copy = strdup(cfg->models_list);
    if (!copy)
        return conf__errf(err, errlen, "out of memory");
    int rc = 0;
    char why[512];
    for (char *p = copy, *next; p && rc == 0; p = next) {
        next = strchr(p, ',');
        if (next)
            *next++ = '\0';
        char *entry = conf__trim(p);
        if (!*entry)
            continue;
        char *colon = strchr(entry, ':');
        if (colon)
            *colon = '\0';
        const char *id = conf__trim(entry);
        const char *name = colon ? conf__trim(colon + 1) : "";
        struct conf_model m;
        memset(&m, 0, sizeof m);
        if ((rc = check_id(id, why, sizeof why)) < 0 ||
            (*name && (rc = check_text(id, "name", name, why, sizeof why)) < 0)) {
            rc = conf__errf(err, errlen, "--models: %s", why);
            break;
        }
        memcpy(m.id, id, strlen(id) + 1);
        m.kind = CONF_MODEL_NONE;
        if ((rc = dup_or_null(*name ? name : id, &m.name, err, errlen)) < 0)
            break;
        if ((rc = model_append(cfg, &m, why, sizeof why)) < 0)
            rc = conf__errf(err, errlen, "--models: %s", why);
    }
    free(copy);
    return rc;
}

/* Look an environment variable up in envp (config_load's, not getenv's). */
static const char *envp_get(char **envp, const char *name)
{
    size_t n = strlen(name);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

/* Where the list of models came from, as apply() names a source in its
 * messages (the whole list comes from one source). */
static const char *models_where(const struct config *cfg, char *buf, size_t len)
{
    if (cfg->_models_source == SRC_ENV)
        return "environment CHATD_MODEL for --model";
    if (cfg->_models_source == SRC_FILE) {
        snprintf(buf, len, "config %s: model", cfg->config_file);
        return buf;
    }
    return "--model";
}

/* Read a file a model names, of at most max bytes, with trailing newlines
 * stripped. The messages name the file, never what it holds. */
static int model_read_file(const char *where, const struct conf_model *m, const char *what,
                           const char *path, size_t max, char **out, size_t *len, char *err,
                           size_t errlen)
{
    int rc = file_read_small(path, max, out, len);
    if (rc == -EFBIG)
        return conf__errf(err, errlen, "%s: '%s': %s '%s' is larger than %zu bytes", where, m->id, what,
                    path, max);
    if (rc < 0)
        return conf__errf(err, errlen, "%s: '%s': %s: cannot read '%s': %s", where, m->id, what, path,
                    strerror(-rc));
    while (*len > 0 && ((*out)[*len - 1] == '\n' || (*out)[*len - 1] == '\r'))
        (*out)[--*len] = '\0';
    return 0;
}

/* Read the key and system prompt of every model, now that the list is
 * final. */
static int resolve_models(struct config *cfg, char *err, size_t errlen)
{
    int rc;
    char wbuf[300];
    const char *where = models_where(cfg, wbuf, sizeof wbuf);
    for (unsigned i = 0; i < cfg->nmodels; i++) {
        struct conf_model *m = &cfg->models[i];
        char source[300];
        if (m->key_env) {
            const char *v = envp_get(cfg->_envp, m->key_env);
            if (!v)
                return conf__errf(err, errlen, "%s: '%s': key-env: variable %s is not set", where, m->id,
                            m->key_env);
            if (!(m->key = strdup(v)))
                return conf__errf(err, errlen, "out of memory");
            m->key_len = strlen(v);
            snprintf(source, sizeof source, "variable %s", m->key_env);
        } else if (m->key_file) {
            if ((rc = model_read_file(where, m, "key-file", m->key_file, CONF_MODEL_KEY_MAX,
                                      &m->key, &m->key_len, err, errlen)) < 0)
                return rc;
            snprintf(source, sizeof source, "file '%s'", m->key_file);
        }
        if (m->key) {
            bool ok = m->key_len > 0;
            for (size_t k = 0; ok && k < m->key_len; k++)
                ok = m->key[k] > 0x20 && m->key[k] < 0x7f;
            /* It goes into an HTTP header: no space, control byte or
             * non-ASCII byte, which could also end the header early. */
            if (!ok)
                return conf__errf(err, errlen,
                            "%s: '%s': the key in %s is empty or holds a character other "
                            "than printable ASCII (spaces included)",
                            where, m->id, source);
        }
        if (m->system_file) {
            if ((rc =
                     model_read_file(where, m, "system-file", m->system_file, CONF_MODEL_SYSTEM_MAX,
                                     &m->system_prompt, &m->system_prompt_len, err, errlen)) < 0)
                return rc;
            if (memchr(m->system_prompt, '\0', m->system_prompt_len) ||
                !utf8_ok((const unsigned char *)m->system_prompt, m->system_prompt_len))
                return conf__errf(err, errlen, "%s: '%s': system-file '%s' is not UTF-8 text", where,
                            m->id, m->system_file);
            if (m->system_prompt_len == 0) {
                free(m->system_prompt);
                m->system_prompt = NULL;
            }
        }
    }
    return 0;
}

/* The models' rules across options, once every source is applied. */
int conf__finish_models(struct config *cfg, char *err, size_t errlen)
{
    int rc;
    if (cfg->models_list && cfg->nmodels > 0)
        return conf__errf(err, errlen,
                    "--models and --model cannot be used together (--models is the older "
                    "form, for models without a provider: give each model as --model)");
    if (cfg->models_list && (rc = load_models_list(cfg, err, errlen)) < 0)
        return rc;
    if ((rc = resolve_models(cfg, err, errlen)) < 0)
        return rc;
    cfg->default_model = 0;
    if (cfg->default_model_id) {
        unsigned i = 0;
        while (i < cfg->nmodels && strcmp(cfg->models[i].id, cfg->default_model_id) != 0)
            i++;
        if (cfg->nmodels == 0)
            return conf__errf(err, errlen, "--default-model: '%s' given, but no --model is",
                        cfg->default_model_id);
        if (i == cfg->nmodels)
            return conf__errf(err, errlen, "--default-model: no model has the id '%s'",
                        cfg->default_model_id);
        cfg->default_model = i;
    }
    return 0;
}
