/*
 * DESIGN: one table describes every option (name, kind, default, help), and
 * the same setter parses a default, a file line, an environment variable and
 * a flag, so all four agree on what is valid. Sources are applied from the
 * weakest to the strongest (default, file, environment, flags); cross-option
 * rules are checked once at the end.
 *
 * --model is the one list. Its setter parses and checks the text of each
 * SPEC as it comes (so a malformed one is refused wherever it is written),
 * and a source replaces the list of a weaker one. What a spec points at,
 * the key's variable or file and the system prompt's file, is read only
 * for the list that won, after every source: a file's model that a flag
 * replaced may name a variable this environment does not set.
 */
#include "conf/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/config_int.h"
#include "util/file.h"
#include "util/log.h"
#include "util/vec.h"

enum opt_kind { K_UINT, K_U64, K_BOOL, K_STR, K_SPECIAL };

struct opt {
    const char *name;
    enum opt_kind kind;
    size_t off;           /* field in struct config */
    uint64_t min, max;    /* K_UINT / K_U64 */
    const char *def;      /* default, as text (NULL: unset) */
    const char *arg;      /* argument name in --help */
    const char *help;
    int (*special)(struct config *cfg, const char *v, char *err, size_t errlen);
};

static int set_listen(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_prefix(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_log_level(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_workers(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_device_policy(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_db_check(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_sync(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_jwt_alg(struct config *cfg, const char *v, char *err, size_t errlen);
static int set_help_webhook(struct config *cfg, const char *v, char *err, size_t errlen);

/* Where a value comes from, weakest first (struct config's _source). */

#define F(field) offsetof(struct config, field)

static const struct opt options[] = {
    {"listen", K_SPECIAL, 0, 0, 0, "127.0.0.1:8080", "HOST:PORT",
     "address to serve HTTP and WebSocket on (port 0: any free port)", set_listen},
    {"workers", K_SPECIAL, 0, 0, 0, "0", "N", "worker threads (0: one per core)", set_workers},
    {"prefix", K_SPECIAL, 0, 0, 0, "", "PATH", "path prefix for every route, e.g. /chat",
     set_prefix},
    {"echo", K_BOOL, F(echo), 0, 0, "false", NULL,
     "enable {prefix}/echo, a plain WebSocket echo for conformance suites and benchmarks", NULL},
    {"max-message-bytes", K_U64, F(max_message_bytes), 1, (uint64_t)1 << 30, "1048576", "N",
     "largest WebSocket message accepted (one byte more closes with 1009)", NULL},
    {"max-connections", K_UINT, F(max_connections), 1, 10000000, "100000", "N",
     "global cap on open WebSocket connections (then 503)", NULL},
    {"max-devices", K_UINT, F(max_devices), 1, 100000, "10", "N",
     "open connections per user (the next one gets 429, or evicts the oldest)", NULL},
    {"device-policy", K_SPECIAL, 0, 0, 0, "refuse", "P",
     "at the device limit: 'refuse' the new device (429) or 'evict-oldest' (1008 to the oldest)",
     set_device_policy},
    {"jwt-alg", K_SPECIAL, 0, 0, 0, "HS256", "A", "token algorithm: HS256, RS256 or ES256",
     set_jwt_alg},
    {"jwt-secret", K_STR, F(jwt_secret), 0, 0, NULL, "S",
     "HS256 secret, at least 32 bytes (other local users can see a flag in ps: "
     "prefer --jwt-secret-file)",
     NULL},
    {"jwt-secret-file", K_STR, F(jwt_secret_file), 0, 0, NULL, "F",
     "file holding the HS256 secret, the preferred form (one trailing newline ignored)", NULL},
    {"jwt-public-key", K_STR, F(jwt_public_key), 0, 0, NULL, "F",
     "PEM public key file for RS256 (RSA) or ES256 (P-256)", NULL},
    {"jwt-issuer", K_STR, F(jwt_issuer), 0, 0, NULL, "S", "required 'iss' claim", NULL},
    {"jwt-audience", K_STR, F(jwt_audience), 0, 0, NULL, "S",
     "required 'aud' claim (a string, or an array holding it)", NULL},
    {"allowed-origins", K_STR, F(allowed_origins), 0, 0, NULL, "LIST",
     "comma-separated Origin values allowed to open /ws (empty: any)", NULL},
    {"max-content-bytes", K_U64, F(max_content_bytes), 1, (uint64_t)1 << 30, "65536", "N",
     "largest 'content' of a chat message (then error content_too_large)", NULL},
    {"rate-limit", K_UINT, F(rate_limit), 1, 1000000000, "100", "N",
     "chat messages per user per minute (then error rate_limited)", NULL},
    {"input-rate", K_UINT, F(input_rate), 1, 1000000000, "50", "N",
     "messages per second one chat connection may send, bad and refused ones included "
     "(bursts of 4 x N); past it the connection is closed with 1008",
     NULL},
    {"input-byte-rate", K_U64, F(input_byte_rate), 1024, (uint64_t)1 << 40, "262144", "N",
     "bytes per second one chat connection may send (bursts of 2 x max-message-bytes + N); "
     "past it the connection is closed with 1008",
     NULL},
    {"db", K_STR, F(db_path), 0, 0, "chatd.db", "PATH",
     "SQLite database file ('none': no storage; chat messages are answered 'unavailable')", NULL},
    {"postgres", K_STR, F(postgres_dsn), 0, 0, NULL, "DSN",
     "PostgreSQL connection string (key=value or postgresql:// URI):\n"
     "store sessions there instead of SQLite (--db and --sync are then\n"
     "unused), so that several chatd nodes share them. A password in it\n"
     "is never logged and is hidden from the process list once read\n"
     "(prefer ~/.pgpass or PGPASSWORD)",
     NULL},
    {"redis", K_STR, F(redis_url), 0, 0, NULL, "URL",
     "redis://[:password@]host:port[/db]: join the cluster of nodes that share\n"
     "this Redis for delivery (needs --postgres). The password is never logged\n"
     "and is hidden from the process list once read",
     NULL},
    {"node-id", K_STR, F(node_id), 0, 0, NULL, "ID",
     "this node's name in the cluster (logs, metrics, presence; default: host name and port)",
     NULL},
    {"sync", K_SPECIAL, 0, 0, 0, "full", "M",
     "'full': an acknowledged message survives power loss; 'normal': a process crash", set_sync},
    {"db-check", K_SPECIAL, 0, 0, 0, "auto", "M",
     "check every page of the SQLite file at start (it reads the whole file): 'auto' after an "
     "unclean stop, or always while the file is at most 256 MiB; 'always'; 'never'",
     set_db_check},
    {"encryption-key-file", K_STR, F(encryption_key_file), 0, 0, NULL, "F",
     "32-byte key (raw, or 64 hex digits): message content encrypted at rest with AES-256-GCM",
     NULL},
    {"model", K_SPECIAL, 0, 0, 0, NULL, "SPEC",
     "an assistant model, repeatable: ID=KIND:BASE_URL[,key=value...]\n"
     "KIND: openai (chatd POSTs to BASE_URL/chat/completions) or anthropic\n"
     "(BASE_URL/messages). BASE_URL: http:// or https://. Settings:\n"
     "  model=NAME        the provider's model name (default: ID)\n"
     "  name=TEXT         the display name clients see (default: ID)\n"
     "  key-env=VAR       the API key is in environment variable VAR, or\n"
     "  key-file=PATH     in a file (read at start; never logged or shown)\n"
     "  system-file=PATH  the system prompt (UTF-8, at most 64 KiB)\n"
     "  max-tokens=N      the longest answer in tokens, 1 to 1000000\n"
     "                    (default: the provider's own; 4096 for anthropic)\n"
     "',,' in a value stands for ','. One value may hold several specs\n"
     "separated by ';' or newlines (';;' stands for ';'): that is how\n"
     "CHATD_MODEL gives several. Each session's model (model_select, else\n"
     "--default-model) answers every user message of the session",
     conf__set_model},
    {"default-model", K_STR, F(default_model_id), 0, 0, NULL, "ID",
     "the model of a new session (default: the first --model)", NULL},
    {"models", K_STR, F(models_list), 0, 0, NULL, "LIST",
     "models without a provider, 'id[:name],...': offered to clients and accepted by "
     "model_select, with no assistant behind them (the older form of --model; not with it)",
     NULL},
    {"assistant-first-byte-timeout", K_UINT, F(assistant_first_byte_timeout_s), 1, 3600, "30", "S",
     "seconds the assistant may take to the first piece of an answer", NULL},
    {"assistant-timeout", K_UINT, F(assistant_timeout_s), 1, 3600, "120", "S",
     "seconds the assistant may take to the end of an answer", NULL},
    {"assistant-max-streams", K_UINT, F(assistant_max_streams), 1, 1000000, "1000", "N",
     "answers streaming at once, in all sessions together", NULL},
    {"assistant-rate-limit", K_UINT, F(assistant_rate_limit), 1, 1000000, "20", "N",
     "answers one user may ask for per minute, over all their sessions (beside "
     "--rate-limit); past it a message is stored but not answered",
     NULL},
    {"assistant-max-answer-bytes", K_U64, F(assistant_max_answer_bytes), 1024, (uint64_t)1 << 30,
     "1048576", "N",
     "the longest answer kept; a longer one is cut there and stored as partial", NULL},
    {"assistant-context-messages", K_UINT, F(assistant_context_messages), 1, 10000, "50", "N",
     "the most recent messages of a session sent with each request", NULL},
    {"assistant-context-bytes", K_UINT, F(assistant_context_bytes), 1024, 1u << 26, "65536", "N",
     "at most this many bytes of those messages", NULL},
    {"ca-file", K_STR, F(ca_file), 0, 0, NULL, "PATH",
     "PEM file of CA certificates trusted for https:// model endpoints besides the "
     "system's (for a private endpoint)",
     NULL},
    {"help-webhook", K_SPECIAL, 0, 0, 0, NULL, "URL",
     "POST each new help request to this http:// or https:// URL as JSON:\n"
     "{\"event\":\"help_request\",\"session_id\",\"user\":{\"id\",\"name\"},\"title\",\n"
     "\"timestamp\"}. A 2xx answer delivers it; 408, 429, 5xx, network errors\n"
     "and timeouts (10 s) are retried after 1, 2, 4... s (at most 60 s, 8\n"
     "attempts); other answers are not retried. Pending retries are dropped\n"
     "at shutdown",
     set_help_webhook},
    {"webhook-secret-file", K_STR, F(webhook_secret_file), 0, 0, NULL, "F",
     "file holding the help webhook's secret (1 to 4096 bytes, one trailing\n"
     "newline ignored): each POST then carries X-Chatd-Signature:\n"
     "sha256=<hex HMAC-SHA256 of the body, keyed with the secret>",
     NULL},
    {"send-queue-bytes", K_U64, F(send_queue_bytes), 0, (uint64_t)1 << 32, "0", "N",
     "unsent bytes one connection may queue before it is closed with 1013 "
     "(0: 2 x max-message-bytes + 64 KiB)",
     NULL},
    {"ping-interval", K_UINT, F(ping_interval_s), 1, 86400, "54", "S",
     "seconds between keep-alive pings", NULL},
    {"pong-timeout", K_UINT, F(pong_timeout_s), 1, 86400, "60", "S",
     "seconds a ping may go unanswered (nothing received) before the connection is dropped", NULL},
    {"shutdown-timeout", K_UINT, F(shutdown_timeout_s), 0, 3600, "10", "S",
     "seconds to drain connections on SIGTERM/SIGINT", NULL},
    {"log-level", K_SPECIAL, 0, 0, 0, "info", "L", "debug, info, warn or error", set_log_level},
    {"dev", K_BOOL, F(dev), 0, 0, "false", NULL,
     "development mode: a random HS256 secret (unless one is set), a printed token and URLs", NULL},
    {"config", K_STR, F(config_file), 0, 0, NULL, "FILE",
     "read options from FILE (one 'name = value' per line, '#' comments)", NULL},
};

#define NOPTS (sizeof options / sizeof options[0])

/* Options whose value is a key: hidden from argv once read (hide_secret). */
static bool is_secret(const struct opt *o)
{
    return strcmp(o->name, "jwt-secret") == 0 || strcmp(o->name, "postgres") == 0 ||
           strcmp(o->name, "redis") == 0;
}

int conf__errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* One line, whatever the argument or file line it quotes holds: a
     * control character would break it (or the operator's terminal). */
    for (char *p = err; errlen && *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return -EINVAL;
}

static const struct opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const char *o = options[i].name;
        if (strlen(o) != len)
            continue;
        size_t j = 0;
        /* '_' and '-' are the same in names (file and environment spelling). */
        for (; j < len; j++) {
            char c = name[j] == '_' ? '-' : (char)tolower((unsigned char)name[j]);
            if (c != o[j])
                break;
        }
        if (j == len)
            return &options[i];
    }
    return NULL;
}

int conf__parse_u64(const char *v, uint64_t *out)
{
    if (!*v || !isdigit((unsigned char)*v))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = x;
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return *out = true, 0;
        if (strcasecmp(v, no[i]) == 0)
            return *out = false, 0;
    }
    return -EINVAL;
}

/* Apply one value; `where` says where it came from, for the message. */
static int apply(struct config *cfg, const struct opt *o, const char *v, const char *where,
                 char *err, size_t errlen)
{
    char *base = (char *)cfg;
    switch (o->kind) {
    case K_UINT:
    case K_U64: {
        uint64_t x;
        if (conf__parse_u64(v, &x) < 0 || x < o->min || x > o->max)
            return conf__errf(err, errlen, "%s%s: expected an integer from %" PRIu64 " to %" PRIu64
                        ", got '%s'", where, o->name, o->min, o->max, v);
        if (o->kind == K_UINT)
            *(unsigned *)(base + o->off) = (unsigned)x;
        else
            *(uint64_t *)(base + o->off) = x;
        return 0;
    }
    case K_BOOL: {
        bool b;
        if (parse_bool(v, &b) < 0)
            return conf__errf(err, errlen, "%s%s: expected true or false, got '%s'", where, o->name, v);
        *(bool *)(base + o->off) = b;
        return 0;
    }
    case K_STR: {
        char **p = (char **)(base + o->off);
        char *copy = strdup(v);
        if (!copy)
            return conf__errf(err, errlen, "out of memory");
        free(*p);
        *p = copy;
        return 0;
    }
    case K_SPECIAL: {
        char why[256] = "";
        if (o->special(cfg, v, why, sizeof why) < 0)
            return conf__errf(err, errlen, "%s%s: %s", where, o->name, why);
        return 0;
    }
    }
    return -EINVAL;
}

static int set_listen(struct config *cfg, const char *v, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return conf__errf(err, errlen, "expected HOST:PORT, got '%s'", v);
    const char *host = v;
    size_t hlen = (size_t)(colon - v);
    if (host[0] == '[') {
        if (hlen < 3 || host[hlen - 1] != ']')
            return conf__errf(err, errlen, "expected [IPV6]:PORT, got '%s'", v);
        host++;
        hlen -= 2;
    }
    if (hlen >= sizeof cfg->listen_host)
        return conf__errf(err, errlen, "host too long");
    uint64_t port;
    if (conf__parse_u64(colon + 1, &port) < 0 || port > 65535)
        return conf__errf(err, errlen, "expected a port from 0 to 65535, got '%s'", colon + 1);
    memcpy(cfg->listen_host, host, hlen);
    cfg->listen_host[hlen] = '\0';
    cfg->listen_port = (int)port;
    return 0;
}

static int set_workers(struct config *cfg, const char *v, char *err, size_t errlen)
{
    uint64_t n;
    if (conf__parse_u64(v, &n) < 0 || n > 1024)
        return conf__errf(err, errlen, "expected an integer from 0 to 1024, got '%s'", v);
    if (n == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = cores > 0 ? (uint64_t)cores : 1;
    }
    cfg->workers = (unsigned)n;
    return 0;
}

static int set_prefix(struct config *cfg, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    while (n > 0 && v[n - 1] == '/')
        n--;
    if (n > 0 && v[0] != '/')
        return conf__errf(err, errlen, "must start with '/', got '%s'", v);
    if (n >= sizeof cfg->prefix)
        return conf__errf(err, errlen, "too long");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '%')
            return conf__errf(err, errlen, "must be a plain URL path, got '%s'", v);
    }
    memcpy(cfg->prefix, v, n);
    cfg->prefix[n] = '\0';
    return 0;
}

static int set_device_policy(struct config *cfg, const char *v, char *err, size_t errlen)
{
    if (strcmp(v, "refuse") == 0)
        cfg->device_policy = DEVICE_POLICY_REFUSE;
    else if (strcmp(v, "evict-oldest") == 0)
        cfg->device_policy = DEVICE_POLICY_EVICT_OLDEST;
    else
        return conf__errf(err, errlen, "expected refuse or evict-oldest, got '%s'", v);
    return 0;
}

static int set_db_check(struct config *cfg, const char *v, char *err, size_t errlen)
{
    if (strcmp(v, "auto") == 0)
        cfg->db_check = DB_CHECK_AUTO;
    else if (strcmp(v, "always") == 0)
        cfg->db_check = DB_CHECK_ALWAYS;
    else if (strcmp(v, "never") == 0)
        cfg->db_check = DB_CHECK_NEVER;
    else
        return conf__errf(err, errlen, "expected auto, always or never, got '%s'", v);
    return 0;
}

static int set_sync(struct config *cfg, const char *v, char *err, size_t errlen)
{
    if (strcmp(v, "full") == 0)
        cfg->sync_full = true;
    else if (strcmp(v, "normal") == 0)
        cfg->sync_full = false;
    else
        return conf__errf(err, errlen, "expected full or normal, got '%s'", v);
    return 0;
}

const char *const conf_jwt_alg_names[3] = {
    [CONF_JWT_HS256] = "HS256", [CONF_JWT_RS256] = "RS256", [CONF_JWT_ES256] = "ES256"};

static int set_jwt_alg(struct config *cfg, const char *v, char *err, size_t errlen)
{
    for (int i = 0; i < 3; i++) {
        if (strcmp(v, conf_jwt_alg_names[i]) == 0) {
            cfg->jwt_alg = i;
            return 0;
        }
    }
    return conf__errf(err, errlen, "expected HS256, RS256 or ES256, got '%s'", v);
}

static int set_log_level(struct config *cfg, const char *v, char *err, size_t errlen)
{
    int lvl = log_level_parse(v);
    if (lvl < 0)
        return conf__errf(err, errlen, "expected debug, info, warn or error, got '%s'", v);
    cfg->log_level = lvl;
    return 0;
}

/* --help-webhook: an http:// or https:// URL with a host, without spaces
 * or control bytes; "" for none. The messages never repeat the URL: a webhook URL often
 * holds its token. */
static int set_help_webhook(struct config *cfg, const char *v, char *err, size_t errlen)
{
    if (!*v) { /* "": none (a stronger source may turn a weaker one's off) */
        free(cfg->help_webhook);
        cfg->help_webhook = NULL;
        return 0;
    }
    size_t skip = strncasecmp(v, "http://", 7) == 0    ? 7
                  : strncasecmp(v, "https://", 8) == 0 ? 8
                                                       : 0;
    if (!skip)
        return conf__errf(err, errlen, "expected an http:// or https:// URL");
    size_t n = strlen(v);
    if (n > CONF_WEBHOOK_URL_MAX)
        return conf__errf(err, errlen, "the URL is longer than %d bytes", CONF_WEBHOOK_URL_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f)
            return conf__errf(err, errlen, "the URL may not hold spaces, control or non-ASCII "
                                           "bytes (percent-encode them)");
    const char *auth = v + skip;
    size_t alen = strcspn(auth, "/?#");
    const char *at = memrchr(auth, '@', alen);
    const char *host = at ? at + 1 : auth;
    if (host == auth + alen || *host == ':')
        return conf__errf(err, errlen, "the URL has no host");
    char *copy = strdup(v);
    if (!copy)
        return conf__errf(err, errlen, "out of memory");
    free(cfg->help_webhook);
    cfg->help_webhook = copy;
    return 0;
}

/* --webhook-secret-file: read now, one trailing newline (LF or CRLF)
 * stripped; 1 to CONF_WEBHOOK_SECRET_MAX bytes of anything. The messages
 * name the file, never what it holds. */
static int load_webhook_secret(struct config *cfg, char *err, size_t errlen)
{
    const char *path = cfg->webhook_secret_file;
    if (!cfg->help_webhook)
        return conf__errf(err, errlen, "--webhook-secret-file: needs --help-webhook");
    char *buf;
    size_t n;
    int rc = file_read_small(path, CONF_WEBHOOK_SECRET_MAX + 2, &buf, &n);
    if (rc == -EFBIG)
        return conf__errf(err, errlen, "--webhook-secret-file: '%s' is larger than %d bytes", path,
                          CONF_WEBHOOK_SECRET_MAX);
    if (rc < 0)
        return conf__errf(err, errlen, "--webhook-secret-file: cannot read '%s': %s", path,
                          strerror(-rc));
    size_t len = n;
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0 || len > CONF_WEBHOOK_SECRET_MAX) {
        file_free_secret(buf, n);
        return conf__errf(err, errlen, "--webhook-secret-file: '%s' must hold 1 to %d bytes", path,
                          CONF_WEBHOOK_SECRET_MAX);
    }
    /* Keep the bytes (and a NUL after them, which file_read_small left). */
    memset(buf + len, 0, n - len);
    cfg->webhook_secret = buf;
    cfg->webhook_secret_len = len;
    return 0;
}

char *conf__trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}
/* --ca-file: readable, and a PEM bundle (OpenSSL reads it when the first
 * https:// request is made; a wrong path should stop chatd now). */
static int check_ca_file(const char *path, char *err, size_t errlen)
{
    static const char marker[] = "-----BEGIN CERTIFICATE-----";
    char *buf;
    size_t n;
    int rc = file_read_small(path, 64u << 20, &buf, &n);
    if (rc < 0)
        return conf__errf(err, errlen, "--ca-file: cannot read '%s': %s", path, strerror(-rc));
    bool pem = memmem(buf, n, marker, sizeof marker - 1) != NULL;
    free(buf);
    if (!pem)
        return conf__errf(err, errlen, "--ca-file: '%s' holds no PEM certificate (%s)", path, marker);
    return 0;
}

static int load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return conf__errf(err, errlen, "config: cannot read '%s': %s", path, strerror(errno));
    char line[8192];
    unsigned lineno = 0;
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *s = conf__trim(line);
        if (!*s || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        char where[512];
        if (!eq) {
            rc = conf__errf(err, errlen, "config %s:%u: expected 'name = value'", path, lineno);
            break;
        }
        *eq = '\0';
        char *name = conf__trim(s);
        char *value = conf__trim(eq + 1);
        /* Allow quoting a value that has spaces at its ends. */
        size_t vl = strlen(value);
        if (vl >= 2 && value[0] == '"' && value[vl - 1] == '"') {
            value[vl - 1] = '\0';
            value++;
        }
        const struct opt *o = find_opt(name, strlen(name));
        if (!o || strcmp(o->name, "config") == 0) {
            rc = conf__errf(err, errlen, "config %s:%u: unknown option '%s'", path, lineno, name);
            break;
        }
        snprintf(where, sizeof where, "config %s:%u: ", path, lineno);
        if ((rc = apply(cfg, o, value, where, err, errlen)) < 0)
            break;
    }
    fclose(f);
    return rc;
}

/* The environment name of an option: "max-devices" -> "CHATD_MAX_DEVICES". */
static size_t env_name(const struct opt *o, char key[128])
{
    size_t k = 6;
    memcpy(key, "CHATD_", 6);
    for (const char *p = o->name; *p && k + 1 < 128; p++)
        key[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    key[k] = '\0';
    return k;
}

static const char *env_lookup(char **envp, const struct opt *o)
{
    char key[128];
    size_t k = env_name(o, key);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, key, k) == 0 && (*e)[k] == '=')
            return *e + k + 1;
    return NULL;
}

static void print_version(FILE *out) { fprintf(out, "chatd %s\n", CHATD_VERSION); }

void config_print_help(FILE *out)
{
    fprintf(out,
            "Usage: chatd [options]\n"
            "\n"
            "chatd is a real-time chat server: WebSocket clients sign in with a JWT and\n"
            "talk in durable sessions from several devices at once.\n"
            "\n"
            "Every option can also be set in the environment as CHATD_<NAME> (upper case,\n"
            "'-' as '_') or in the --config file as 'name = value'. Flags win over the\n"
            "environment, the environment over the file.\n"
            "\n"
            "Options:\n");
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt *o = &options[i];
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        /* A long name puts its help on the next line. */
        fprintf(out, strlen(left) > 26 ? "  %s\n  %-26s " : "  %-26s ", left, "");
        /* A long help text is written in lines, each under the first. */
        for (const char *h = o->help; *h; h++) {
            if (*h == '\n')
                fprintf(out, "\n  %-26s ", "");
            else
                fputc(*h, out);
        }
        if (o->def && *o->def && o->kind != K_BOOL)
            fprintf(out, " [default: %s]", o->def);
        fputc('\n', out);
    }
    fprintf(out, "  %-26s %s\n  %-26s %s\n", "--help", "show this help and exit", "--version",
            "print the version and exit");
}

void config_release(struct config *cfg)
{
    free(cfg->jwt_secret);
    free(cfg->jwt_secret_file);
    free(cfg->jwt_public_key);
    free(cfg->jwt_issuer);
    free(cfg->jwt_audience);
    free(cfg->allowed_origins);
    free(cfg->db_path);
    if (cfg->postgres_dsn)
        memset(cfg->postgres_dsn, 0, strlen(cfg->postgres_dsn)); /* it may hold a password */
    free(cfg->postgres_dsn);
    if (cfg->redis_url)
        memset(cfg->redis_url, 0, strlen(cfg->redis_url)); /* it may hold a password */
    free(cfg->redis_url);
    free(cfg->node_id);
    free(cfg->config_file);
    free(cfg->encryption_key_file);
    free(cfg->models_list);
    conf__models_clear(cfg);
    free(cfg->default_model_id);
    free(cfg->ca_file);
    free(cfg->help_webhook);
    free(cfg->webhook_secret_file);
    file_free_secret(cfg->webhook_secret, cfg->webhook_secret_len);
    memset(cfg, 0, sizeof *cfg);
}

/* Overwrite a secret's value in argv with 'x' bytes, in place, once it has
 * been copied. The kernel shows a process's own argument memory as
 * /proc/PID/cmdline, so after this `ps` no longer shows the secret to other
 * local users; it did for the moment between exec and here, which is why
 * --help steers to the file form. */
static void hide_secret(const char *value)
{
    memset((char *)value, 'x', strlen(value));
}

/* Split "--name=value" / "--name value"; returns the index of the next arg. */
static int flag_value(int argc, char **argv, int i, const struct opt *o, const char *eq,
                      const char **value, char *err, size_t errlen)
{
    if (eq) {
        *value = eq + 1;
        return i + 1;
    }
    if (o->kind == K_BOOL) {
        *value = "true";
        return i + 1;
    }
    if (i + 1 >= argc)
        return conf__errf(err, errlen, "--%s: needs a value", o->name);
    *value = argv[i + 1];
    return i + 2;
}

int config_load(struct config *cfg, int argc, char **argv, char **envp, FILE *out, char *err,
                size_t errlen)
{
    int rc;
    memset(cfg, 0, sizeof *cfg);
    cfg->_envp = envp;
    cfg->_source = SRC_DEFAULT;
    for (size_t i = 0; i < NOPTS; i++)
        if (options[i].def && (rc = apply(cfg, &options[i], options[i].def, "default ", err,
                                          errlen)) < 0)
            return rc;

    /* First pass over argv: --help, --version, unknown flags, --config. */
    const char *config_path = NULL;
    config_path = env_lookup(envp, find_opt("config", 6));
    for (int i = 1; i < argc;) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            config_print_help(out);
            return CONFIG_EXIT_HELP;
        }
        if (strcmp(a, "--version") == 0) {
            print_version(out);
            return CONFIG_EXIT_VERSION;
        }
        if (strncmp(a, "--", 2) != 0)
            return conf__errf(err, errlen, "unexpected argument '%s' (options start with --)", a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = find_opt(name, nlen);
        if (!o || memchr(name, '_', nlen))
            return conf__errf(err, errlen, "unknown option '--%.*s' (see --help)", (int)nlen, name);
        const char *value = NULL;
        int next = flag_value(argc, argv, i, o, eq, &value, err, errlen);
        if (next < 0)
            return next;
        if (strcmp(o->name, "config") == 0)
            config_path = value;
        i = next;
    }

    if (config_path && (rc = apply(cfg, find_opt("config", 6), config_path, "", err, errlen)) < 0)
        return rc;
    cfg->_source = SRC_FILE;
    if (cfg->config_file && (rc = load_file(cfg, cfg->config_file, err, errlen)) < 0)
        return rc;

    cfg->_source = SRC_ENV;

    for (size_t i = 0; i < NOPTS; i++) {
        const char *v = env_lookup(envp, &options[i]);
        if (v && strcmp(options[i].name, "config") != 0) {
            char where[160], key[128];
            env_name(&options[i], key);
            snprintf(where, sizeof where, "environment %s for --", key);
            if ((rc = apply(cfg, &options[i], v, where, err, errlen)) < 0)
                return rc;
        }
    }

    cfg->_source = SRC_FLAG;
    for (int i = 1; i < argc;) {
        const char *name = argv[i] + 2;
        const char *eq = strchr(name, '=');
        const struct opt *o = find_opt(name, eq ? (size_t)(eq - name) : strlen(name));
        const char *value = NULL;
        int next = flag_value(argc, argv, i, o, eq, &value, err, errlen);
        if (strcmp(o->name, "config") != 0 && (rc = apply(cfg, o, value, "--", err, errlen)) < 0)
            return rc;
        if (is_secret(o))
            hide_secret(value); /* value points into argv[i] or argv[i + 1] */
        i = next;
    }

    /* Cross-option rules. */
    if (cfg->send_queue_bytes == 0)
        cfg->send_queue_bytes = 2 * cfg->max_message_bytes + 65536;
    if (cfg->send_queue_bytes < cfg->max_message_bytes + 14)
        return conf__errf(err, errlen, "--send-queue-bytes: must be at least --max-message-bytes + 14");
    if (cfg->assistant_first_byte_timeout_s > cfg->assistant_timeout_s)
        return conf__errf(err, errlen,
                    "--assistant-first-byte-timeout: must not be longer than --assistant-timeout "
                    "(%u s)",
                    cfg->assistant_timeout_s);
    if ((rc = conf__finish_models(cfg, err, errlen)) < 0)
        return rc;
    if (cfg->ca_file && (rc = check_ca_file(cfg->ca_file, err, errlen)) < 0)
        return rc;
    if (cfg->webhook_secret_file && (rc = load_webhook_secret(cfg, err, errlen)) < 0)
        return rc;
    cfg->_envp = NULL;
    return CONFIG_OK;
}
