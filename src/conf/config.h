/*
 * config: chatd's settings from flags, CHATD_* environment and a --config
 * file, validated into one struct config.
 *
 * Precedence: flag > environment > file > default. Every option has the same
 * name in all three places (`--max-devices`, `CHATD_MAX_DEVICES`,
 * `max-devices = 10` or `max_devices = 10`). Unknown or malformed options
 * are errors naming the option. The main thread loads the config once at
 * start; afterwards the struct is read-only and shared by every thread.
 */
#ifndef CHATD_CONFIG_H
#define CHATD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum device_policy { DEVICE_POLICY_REFUSE = 0, DEVICE_POLICY_EVICT_OLDEST };

/* The token algorithms (--jwt-alg); the hub maps them to its verifier's. */
enum conf_jwt_alg { CONF_JWT_HS256 = 0, CONF_JWT_RS256, CONF_JWT_ES256 };
extern const char *const conf_jwt_alg_names[3];

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
    bool sync_full;              /* --sync full (true) or normal */
    char *encryption_key_file;   /* owned, NULL when unset */
    char *models;                /* owned: "id[:name],..." or NULL */
    char *config_file;           /* owned, NULL when none */
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

/* Free what config_load allocated. */
void config_release(struct config *cfg);

/* Print the option reference (what --help shows). */
void config_print_help(FILE *out);

#endif
