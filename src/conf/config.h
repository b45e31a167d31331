/*
 * config: chatd's settings from flags, CHATD_* environment and a --config
 * file, validated into one struct config.
 *
 * Precedence: flag > environment > file > default. Every option has the same
 * name in all three places (`--max-devices`, `CHATD_MAX_DEVICES`,
 * `max-devices = 10` or `max_devices = 10`). Unknown or malformed options
 * are errors naming the option. The main thread loads the config once at
 * start; afterwards the struct is read-only and shared by every thread.
 *
 * One option is a list: --model may be given several times (several
 * `model = ...` lines in the file; several specs in one value, separated by
 * ';' or newlines, which is how CHATD_MODEL holds more than one). A source
 * replaces the list of a weaker source as a whole: any --model flag drops
 * the models of CHATD_MODEL and of the file, CHATD_MODEL drops the file's.
 *
 * config_load also reads what the models point at (API keys, system
 * prompts) and the --webhook-secret-file, and checks that --ca-file is
 * readable, so that a mistake stops chatd at start, not at its first answer
 * or help request. The keys are kept in memory that config_release
 * overwrites before freeing it; nothing in this module prints a key, nor
 * the --help-webhook URL (it may carry a token in its path or query).
 */
#ifndef CHATD_CONFIG_H
#define CHATD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum device_policy { DEVICE_POLICY_REFUSE = 0, DEVICE_POLICY_EVICT_OLDEST };
enum db_check { DB_CHECK_AUTO = 0, DB_CHECK_ALWAYS, DB_CHECK_NEVER };

/* The token algorithms (--jwt-alg); the hub maps them to its verifier's. */
enum conf_jwt_alg { CONF_JWT_HS256 = 0, CONF_JWT_RS256, CONF_JWT_ES256 };
extern const char *const conf_jwt_alg_names[3];

/* The provider API a model speaks. CONF_MODEL_NONE is a model from --models:
 * a name offered to clients, with no provider behind it. */
enum conf_model_kind { CONF_MODEL_NONE = 0, CONF_MODEL_OPENAI, CONF_MODEL_ANTHROPIC };
extern const char *const conf_model_kind_names[3]; /* "none", "openai", "anthropic" */

#define CONF_MODEL_ID_MAX 64           /* bytes of a model id ([A-Za-z0-9._-]) */
#define CONF_MODEL_TEXT_MAX 256        /* bytes of a display or provider model name */
#define CONF_MODELS_MAX 100            /* models in all */
#define CONF_MODEL_KEY_MAX 4096        /* bytes of an API key */
#define CONF_MODEL_SYSTEM_MAX 65536    /* bytes of a system prompt file */
#define CONF_MODEL_MAX_TOKENS 1000000  /* largest max-tokens= */
#define CONF_WEBHOOK_URL_MAX 8192      /* bytes of --help-webhook */
#define CONF_WEBHOOK_SECRET_MAX 4096   /* bytes of the --webhook-secret-file key */
#define CONF_ANTHROPIC_MAX_TOKENS 4096 /* max-tokens of an anthropic model without one:
                                        * the Messages API requires the field */

/*
 * One model, from a --model SPEC (or a --models entry). Every string is
 * owned by the config, NUL-terminated and free of control characters; the
 * name and system prompt are valid UTF-8. Read-only after config_load.
 */
struct conf_model {
    char id[CONF_MODEL_ID_MAX + 1]; /* 1 to 64 bytes of [A-Za-z0-9._-], unique */
    int kind;                       /* enum conf_model_kind */
    char *base_url;                 /* owned; http:// or https://, no trailing '/',
                                     * no credentials, query or fragment; NULL for NONE */
    char *model;                    /* owned; the provider's model name (default: id) */
    char *name;                     /* owned; display name (default: id) */
    char *key_env;                  /* owned; the variable the key was read from, or NULL */
    char *key_file;                 /* owned; the file the key was read from, or NULL */
    char *key;                      /* owned, wiped on release; printable ASCII without
                                     * spaces, trailing newlines stripped; NULL: no key */
    size_t key_len;
    char *system_file;              /* owned; the system prompt's file, or NULL */
    char *system_prompt;            /* owned; that file's text (trailing newlines
                                     * stripped), or NULL */
    size_t system_prompt_len;
    unsigned max_tokens;            /* 0: not set (openai: the provider's default) */
};

struct config {
    char listen_host[256];       /* numeric IPv4/IPv6 address or "localhost" */
    int listen_port;             /* 0: any free port (the chosen one is logged) */
    unsigned workers;            /* worker threads, >= 1 */
    char prefix[256];            /* "" or "/something" without trailing slash */
    bool echo;                   /* serve {prefix}/echo */
    bool dev;                    /* development mode: random secret, printed token */
    uint64_t max_message_bytes;  /* largest WebSocket message */
    uint64_t max_content_bytes;  /* largest chat message content */
    unsigned max_connections;    /* global cap on open WebSocket connections */
    unsigned max_devices;        /* open connections per user */
    enum device_policy device_policy;
    uint64_t send_queue_bytes;   /* per-connection unsent bytes before 1013 */
    unsigned ping_interval_s;
    unsigned pong_timeout_s;
    unsigned shutdown_timeout_s;
    unsigned rate_limit;         /* chat messages per user per minute */
    unsigned input_rate;         /* WebSocket messages per connection per second */
    uint64_t input_byte_rate;    /* bytes read per WebSocket connection per second */
    int log_level;               /* enum log_level */
    int jwt_alg;                 /* enum conf_jwt_alg */
    char *jwt_secret;            /* owned; HS256 secret bytes (NUL-terminated) */
    char *jwt_secret_file;       /* owned */
    char *jwt_public_key;        /* owned; path of the PEM file */
    char *jwt_issuer;            /* owned, NULL when unset */
    char *jwt_audience;          /* owned, NULL when unset */
    char *allowed_origins;       /* owned; comma-separated, NULL: any origin */
    char *db_path;               /* owned */
    char *postgres_dsn;          /* owned, NULL when unset: --postgres, the storage engine
                                  * then (may hold a password: wiped on release, never
                                  * logged) */
    char *redis_url;             /* owned, NULL when unset: --redis (may hold a password) */
    char *node_id;               /* owned, NULL when unset: --node-id */
    bool sync_full;              /* --sync full (true) or normal */
    enum db_check db_check;      /* --db-check */
    char *encryption_key_file;   /* owned, NULL when unset */
    char *models_list;           /* owned: --models "id[:name],...", or NULL */
    struct conf_model *models;   /* owned: from --model, or else --models; in order */
    unsigned nmodels;
    unsigned default_model;      /* index into models (0 when there is none) */
    char *default_model_id;      /* owned: --default-model, NULL: the first model */
    unsigned assistant_first_byte_timeout_s; /* to the first piece of an answer */
    unsigned assistant_timeout_s;            /* to the end of an answer */
    unsigned assistant_max_streams;          /* answers streaming at once, in all */
    unsigned assistant_rate_limit;           /* answers per user per minute */
    uint64_t assistant_max_answer_bytes;     /* longest answer kept */
    unsigned assistant_context_messages;     /* recent messages sent with a request */
    unsigned assistant_context_bytes;        /* at most this many bytes of them */
    char *ca_file;               /* owned: PEM CA bundle for model endpoints, or NULL */
    char *help_webhook;          /* owned: --help-webhook URL (http:// or https://), or NULL */
    char *webhook_secret_file;   /* owned: --webhook-secret-file, or NULL */
    char *webhook_secret;        /* owned, wiped on release: that file's bytes (one
                                  * trailing newline stripped), 1 to
                                  * CONF_WEBHOOK_SECRET_MAX; NULL: no signature */
    size_t webhook_secret_len;
    char *config_file;           /* owned, NULL when none */

    /* private: used while config_load runs */
    char **_envp;                /* borrowed: the environment given to config_load */
    int _source;                 /* the source being applied (default, file, env, flag) */
    int _models_source;          /* the source the models came from */
    size_t _models_cap;
};

enum config_result {
    CONFIG_OK = 0,
    CONFIG_EXIT_HELP = 1,    /* --help printed: exit 0 */
    CONFIG_EXIT_VERSION = 2, /* --version printed: exit 0 */
};

/*
 * Fill cfg from defaults, the --config file, the environment (envp) and
 * argv. Returns a config_result, or -EINVAL with a one-line message (naming
 * the option) in err. --help and --version print to out. The value of a
 * secret flag (--jwt-secret) is overwritten with 'x' in argv once copied, so
 * that other users cannot read it in the process list: argv is written to.
 */
int config_load(struct config *cfg, int argc, char **argv, char **envp, FILE *out, char *err,
                size_t errlen);

/* Free what config_load allocated, overwriting the API keys first. Safe
 * after a failed config_load. */
void config_release(struct config *cfg);

/* Print the option reference (what --help shows). */
void config_print_help(FILE *out);

#endif
