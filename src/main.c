/*
 * chatd: start, signals, shutdown order.
 *
 * DESIGN: main() loads and validates the configuration (exit 2 on any bad
 * option, or when another process listens on the address), raises the
 * open-file limit, binds, starts the workers and then runs a small loop of
 * its own that only waits for SIGTERM/SIGINT. On a signal it asks every
 * worker to drain, gives them --shutdown-timeout seconds, forces what is
 * left, joins the threads and exits 0.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "assistant/assistant.h"
#include "auth/jwt.h"
#include "bus/redis.h"
#include "conf/config.h"
#include "hub/chat.h"
#include "hub/hub.h"
#include "hub/routes.h"
#include "hub/webhook.h"
#include "store/postgres/postgres.h"
#include "store/store.h"
#include "net/http_client.h"
#include "net/loop.h"
#include "net/server.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/hex.h"
#include "util/sbuf.h"
#include "util/log.h"
#include "util/oom.h"

extern char **environ;

struct main_state {
    struct server srv;
    struct hub hub;
    struct chat *chat;
    struct store *store;
    struct bus *bus;
    struct assistant *assistant;  /* NULL without a model with a provider */
    struct webhook *webhook;      /* NULL without --help-webhook */
    uv_signal_t sigterm, sigint;
    uv_timer_t poll, deadline, gc;
    bool stopping;
    bool forced;
};

static void on_poll(uv_timer_t *t)
{
    struct main_state *st = t->data;
    if (atomic_load(&st->srv.workers_done) == st->srv.nworkers)
        uv_stop(t->loop);
}

/* Users who left with a partly used rate-limit bucket are kept until it is
 * full again; free them now and then. */
static void on_gc(uv_timer_t *t)
{
    struct main_state *st = t->data;
    registry_gc(&st->hub.registry, clock_mono_ms());
}

static void on_deadline(uv_timer_t *t)
{
    struct main_state *st = t->data;
    log_warn("shutdown_timeout", "open_connections=%llu",
             (unsigned long long)atomic_load(&st->srv.stats.conns_open));
    st->forced = true;
    server_force_close(&st->srv);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct main_state *st = s->data;
    if (st->stopping) {
        log_info("shutdown_forced", "signal=%d", signum);
        server_force_close(&st->srv);
        return;
    }
    st->stopping = true;
    uv_timer_stop(&st->gc);
    /* Answers still streaming end now, each stored as partial while the
     * store and the connections are still there to take it. */
    assistant_shutdown(st->assistant);
    log_info("shutdown_begin", "signal=%s open_connections=%llu timeout_s=%u",
             signum == SIGTERM ? "SIGTERM" : "SIGINT",
             (unsigned long long)atomic_load(&st->srv.stats.conns_open),
             st->srv.cfg->shutdown_timeout_s);
    server_begin_shutdown(&st->srv);
    uv_timer_start(&st->poll, on_poll, 20, 20);
    uv_timer_start(&st->deadline, on_deadline, (uint64_t)st->srv.cfg->shutdown_timeout_s * 1000,
                   0);
}

/* Use every descriptor the hard limit allows: each client holds one. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void close_cb_noop(uv_handle_t *h) { (void)h; }

/* --dev: a random secret, unless one was configured. */
static void random_secret(char out[65])
{
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        fprintf(stderr, "chatd: cannot get random bytes for --dev\n");
        exit(1);
    }
    hex_encode(out, raw, sizeof raw);
    out[64] = '\0';
    OPENSSL_cleanse(raw, sizeof raw);
}

/*
 * --dev's secret, kept beside the database (DB.dev-secret, mode 0600) so
 * that tokens and open pages survive a restart: read when it is there,
 * made once otherwise. With --db none there is nothing to keep it beside:
 * a new one each run. 0, or -1 with a message in err.
 */
static int dev_secret(const struct config *cfg, char out[65], char *err, size_t errlen)
{
    if (strcmp(cfg->db_path, "none") == 0) {
        random_secret(out);
        return 0;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s.dev-secret", cfg->db_path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        char buf[80];
        struct stat st;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        bool ok = n >= 64 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
        for (int i = 0; ok && i < 64; i++)
            ok = isxdigit((unsigned char)buf[i]);
        if (ok && (st.st_mode & 077)) {
            /* Others could read it: it signs tokens. Tighten it. */
            fchmod(fd, 0600);
            log_warn("dev_secret_mode", "file=%s action=\"made 0600\"", path);
        }
        close(fd);
        if (!ok) {
            snprintf(err, errlen, "--dev: '%.300s' does not hold a secret (64 hex digits); remove it "
                     "to make a new one", path);
            return -1;
        }
        memcpy(out, buf, 64);
        out[64] = '\0';
        OPENSSL_cleanse(buf, sizeof buf);
        return 0;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "--dev: cannot read '%.300s': %s", path, strerror(errno));
        return -1;
    }
    random_secret(out);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    char line[66];
    snprintf(line, sizeof line, "%s\n", out);
    if (fd < 0 || write(fd, line, 65) != 65 || fsync(fd) != 0) {
        snprintf(err, errlen, "--dev: cannot write '%.300s': %s", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(path);
        }
        return -1;
    }
    close(fd);
    OPENSSL_cleanse(line, sizeof line);
    return 0;
}

/* --encryption-key-file: 32 raw bytes, or 64 hex digits (newline allowed). */
static int load_key(const char *path, unsigned char key[32], char *err, size_t errlen)
{
    char *buf;
    size_t n;
    int rc = file_read_small(path, 4096, &buf, &n);
    if (rc < 0) {
        snprintf(err, errlen, "--encryption-key-file: cannot read '%s': %s", path,
                 strerror(-rc));
        return -1;
    }
    size_t len = n;
    rc = 0;
    if (len == 32) {
        memcpy(key, buf, 32);
    } else {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            len--;
        for (size_t i = 0; i < 32 && len == 64; i++) {
            int hi = hex_value(buf[2 * i]), lo = hex_value(buf[2 * i + 1]);
            if (hi < 0 || lo < 0)
                len = 0;
            else
                key[i] = (unsigned char)(hi << 4 | lo);
        }
        if (len != 64)
            rc = -1;
    }
    file_free_secret(buf, n);
    if (rc < 0)
        snprintf(err, errlen,
                 "--encryption-key-file: '%s' must hold exactly 32 bytes or 64 hex digits", path);
    return rc;
}

static void print_dev_banner(const struct config *cfg, int port, const char *secret)
{
    char payload[256];
    int64_t now = clock_wall_ms() / 1000;
    snprintf(payload, sizeof payload,
             "{\"sub\":\"dev\",\"name\":\"Developer\",\"roles\":[\"user\",\"admin\"],"
             "\"iat\":%lld,\"exp\":%lld}",
             (long long)now, (long long)(now + 7 * 86400));
    char *token = jwt_sign_hs256((const unsigned char *)secret, strlen(secret), payload,
                                 strlen(payload));
    const char *tok = token ? token : "?";
    const char *h = cfg->listen_host;
    /* A wildcard address is where chatd listens, not where to point a
     * browser: show the loopback address of the same family. */
    if (strcmp(h, "0.0.0.0") == 0 || h[0] == '\0')
        h = "127.0.0.1";
    else if (strcmp(h, "::") == 0)
        h = "::1";
    bool v6 = strchr(h, ':') != NULL;
    char base[600];
    snprintf(base, sizeof base, "%s%s%s:%d%s", v6 ? "[" : "", h, v6 ? "]" : "", port,
             cfg->prefix);
    printf("\nchatd %s is running in development mode.\n\n"
           "  chat page:  http://%s/#token=%s\n"
           "  admin page: http://%s/admin#token=%s\n"
           "  WebSocket:  ws://%s/ws?token=%s\n"
           "  token:      %s\n"
           "              (user 'dev', roles user+admin, valid 7 days; send it as\n"
           "               'Authorization: Bearer <token>' or ?token=)\n"
           "  health:     http://%s/healthz\n"
           "  secret:     %s\n"
           "              (mint more: chatd-token --secret <secret> --sub alice)\n\n",
           CHATD_VERSION, base, tok, base, tok, base, tok, tok, base, secret);
    fflush(stdout);
    free(token);
}
/* One line per configured model, so that an operator sees what chatd
 * offers. Where the key came from is shown; the key itself never is. */
static void log_models(const struct config *cfg)
{
    for (unsigned i = 0; i < cfg->nmodels; i++) {
        const struct conf_model *m = &cfg->models[i];
        struct log_quoted qurl, qmodel, qname, qkey, qsys;
        char key_from[600];
        if (m->key_env || m->key_file)
            snprintf(key_from, sizeof key_from, "%s:%s", m->key_env ? "env" : "file",
                     m->key_env ? m->key_env : m->key_file);
        else
            snprintf(key_from, sizeof key_from, "none");
        log_info("model",
                 "id=%s kind=%s base_url=%s model=%s name=%s key=%s system_file=%s "
                 "system_prompt_bytes=%zu max_tokens=%u default=%s",
                 m->id, conf_model_kind_names[m->kind], log_quotes(&qurl, m->base_url),
                 log_quotes(&qmodel, m->model), log_quotes(&qname, m->name),
                 log_quotes(&qkey, key_from), log_quotes(&qsys, m->system_file),
                 m->system_prompt_len, m->max_tokens, i == cfg->default_model ? "yes" : "no");
    }
}

/* The assistant, when a model has a provider: its HTTP client, then the
 * assistant itself, handed to the router. */
static int start_assistant(struct main_state *st, const struct config *cfg, char *err,
                           size_t errlen)
{
    if (!assistant_configured(cfg->models, cfg->nmodels))
        return 0;
    struct assistant_options ao = {
        .models = cfg->models,
        .nmodels = cfg->nmodels,
        .default_model = cfg->default_model,
        .first_byte_timeout_ms = cfg->assistant_first_byte_timeout_s * 1000u,
        .total_timeout_ms = cfg->assistant_timeout_s * 1000u,
        .max_streams = cfg->assistant_max_streams,
        .context_messages = cfg->assistant_context_messages,
        .context_bytes = cfg->assistant_context_bytes,
        .max_answer_bytes = (size_t)cfg->assistant_max_answer_bytes,
        .per_user_per_min = cfg->assistant_rate_limit,
        .ca_file = cfg->ca_file,
    };
    struct assistant_hooks hooks = *chat_assistant_hooks();
    hooks.app = st->chat;
    int rc = assistant_new(&st->assistant, &ao, &hooks, st->store);
    if (rc != 0) {
        if (cfg->ca_file && (rc == -ENOENT || rc == -EACCES))
            snprintf(err, errlen, "--ca-file: cannot read '%s': %s", cfg->ca_file, strerror(-rc));
        else
            snprintf(err, errlen, "cannot start the assistant: %s", strerror(-rc));
        return rc;
    }
    chat_set_assistant(st->chat, st->assistant);
    return 0;
}

/* The help webhook, when --help-webhook is set: its own HTTP client,
 * handed to the router, which calls it from the storage writer's thread. */
static int start_webhook(struct main_state *st, const struct config *cfg, char *err,
                         size_t errlen)
{
    if (!cfg->help_webhook)
        return 0;
    struct webhook_options wo = {
        .url = cfg->help_webhook,
        .secret = (const unsigned char *)cfg->webhook_secret,
        .secret_len = cfg->webhook_secret_len,
    };
    int rc = webhook_new(&st->webhook, &wo);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the help webhook: %s", strerror(-rc));
        return rc;
    }
    chat_set_webhook(st->chat, st->webhook);
    return 0;
}

int main(int argc, char **argv)
{
    static struct config cfg;
    char err[512];
    int rc = config_load(&cfg, argc, argv, environ, stdout, err, sizeof err);
    if (rc == CONFIG_EXIT_HELP || rc == CONFIG_EXIT_VERSION)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    log_set_level(cfg.log_level);
    /* jansson reports a failed allocation as a syntax error; through these
     * the callers that parse can tell the two apart (util/oom.h). */
    json_set_alloc_funcs(oom_malloc, oom_free);
    json_object_seed(0); /* before any thread builds JSON */
    if (http_client_global_init() != 0) { /* libcurl: before any thread */
        fprintf(stderr, "chatd: cannot initialise libcurl\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Past a file-size limit (RLIMIT_FSIZE) a write must fail with EFBIG,
     * which storage turns into fail-stop, not end the process unannounced. */
    signal(SIGXFSZ, SIG_IGN);
    raise_nofile();
    /* Every loop's descriptor table is made now for this many (net/loop.h):
     * the connections, and the storage, Redis, provider and file
     * descriptors beside them. */
    net_fd_budget(cfg.max_connections + 4096);

    static struct main_state st;
    char secret[65] = "";
    bool have_key = cfg.jwt_secret || cfg.jwt_secret_file || cfg.jwt_public_key;
    if (cfg.dev && !have_key && dev_secret(&cfg, secret, err, sizeof err) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    if (hub_init(&st.hub, &cfg, &st.srv, secret[0] ? secret : NULL, err, sizeof err) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    st.srv.ops = &routes_net_ops;
    st.srv.app = &st.hub;
    /* Before the database is opened: a second chatd pointed at a busy
     * address must not touch the first one's database either. */
    if ((rc = server_listen(&st.srv, &cfg, err, sizeof err)) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return rc == -EADDRINUSE ? 2 : 1;
    }
    /* --db none: sign-in and devices only, no router (chat messages are
     * answered 'unavailable'): the gateway layer on its own. */
    bool use_pg = cfg.postgres_dsn && *cfg.postgres_dsn; /* --postgres: --db is unused */
    if (cfg.redis_url && *cfg.redis_url && !use_pg) {
        fprintf(stderr, "chatd: --redis needs --postgres (nodes cannot share a SQLite file)\n");
        return 2;
    }
    bool no_store = !use_pg && strcmp(cfg.db_path, "none") == 0;
    if (hub_enabled(&st.hub) && !no_store) {
        unsigned char key[32];
        if (cfg.encryption_key_file && load_key(cfg.encryption_key_file, key, err, sizeof err)) {
            fprintf(stderr, "chatd: %s\n", err);
            return 2;
        }
        if (chat_init(&st.chat, &st.hub, cfg.workers, err, sizeof err) != 0) {
            fprintf(stderr, "chatd: %s\n", err);
            return 1;
        }
        /* The bus before the store: the writer publishes through it. */
        struct bus_handler bh = {.deliver = chat_bus_deliver,
                                 .fill = chat_bus_fill,
                                 .kick = chat_bus_kick,
                                 .stop = chat_bus_stop,
                                 .app = st.chat};
        if (cfg.redis_url && *cfg.redis_url) {
            char node[300];
            if (cfg.node_id && *cfg.node_id)
                snprintf(node, sizeof node, "%s", cfg.node_id);
            else {
                char host[256] = "localhost";
                gethostname(host, sizeof host - 1);
                snprintf(node, sizeof node, "%s:%d", host, st.srv.port);
            }
            if (bus_redis_open(&st.bus, &bh, cfg.redis_url, node, err, sizeof err) != 0) {
                fprintf(stderr, "chatd: %s\n", err);
                return 2;
            }
        } else if (bus_local_open(&st.bus, &bh) != 0) {
            fprintf(stderr, "chatd: out of memory\n");
            return 1;
        }
        chat_set_bus(st.chat, st.bus);
        if (bus_counts_devices(st.bus))
            st.hub.bus = st.bus; /* the device limit holds across nodes */
        struct store_options so = {.engine = use_pg ? "postgres" : "sqlite",
                                   .path = use_pg ? cfg.postgres_dsn : cfg.db_path,
                                   .sync_full = cfg.sync_full,
                                   .check = cfg.db_check == DB_CHECK_ALWAYS  ? STORE_CHECK_ALWAYS
                                            : cfg.db_check == DB_CHECK_NEVER ? STORE_CHECK_NEVER
                                                                             : STORE_CHECK_AUTO,
                                   .key = cfg.encryption_key_file ? key : NULL,
                                   .on_batch = chat_on_batch,
                                   .arg = st.chat};
        int src = store_open(&st.store, &so, err, sizeof err);
        OPENSSL_cleanse(key, sizeof key);
        if (src != 0) {
            fprintf(stderr, "chatd: %s\n", err);
            return 2;
        }
        chat_set_store(st.chat, st.store);
        if (start_assistant(&st, &cfg, err, sizeof err) != 0) {
            fprintf(stderr, "chatd: %s\n", err);
            return 1;
        }
        if (start_webhook(&st, &cfg, err, sizeof err) != 0) {
            fprintf(stderr, "chatd: %s\n", err);
            return 1;
        }
        st.hub.router_ops = &chat_router_ops;
        st.hub.router = st.chat;
    }
    if (server_start(&st.srv, err, sizeof err) != 0) {
        struct log_quoted qe;
        log_error("start_failed", "error=%s", log_quotes(&qe, err));
        fprintf(stderr, "chatd: %s\n", err);
        return 1;
    }
    if (!hub_enabled(&st.hub))
        log_warn("chat_disabled", "reason=\"no JWT key configured; only /echo is served\"");
    if (cfg.help_webhook && !st.webhook)
        log_warn("webhook_unused", "reason=\"no chat router (no storage or no JWT key): no help "
                                   "request can be raised\"");
    if (cfg.dev) {
        const char *sec = secret[0] ? secret : (cfg.jwt_secret ? cfg.jwt_secret : NULL);
        if (sec)
            print_dev_banner(&cfg, st.srv.port, sec);
    }

    uv_loop_t *loop = uv_default_loop();
    uv_signal_init(loop, &st.sigterm);
    uv_signal_init(loop, &st.sigint);
    st.sigterm.data = st.sigint.data = &st;
    uv_signal_start(&st.sigterm, on_signal, SIGTERM);
    uv_signal_start(&st.sigint, on_signal, SIGINT);
    uv_timer_init(loop, &st.poll);
    uv_timer_init(loop, &st.deadline);
    st.poll.data = st.deadline.data = &st;
    uv_timer_init(loop, &st.gc);
    st.gc.data = &st;
    uv_timer_start(&st.gc, on_gc, 10000, 10000);
    log_models(&cfg);
    const char *h = cfg.listen_host;
    bool v6 = strchr(h, ':') != NULL;
    struct log_quoted qpre, qdb;
    /* The DSN may hold a password: only its redacted form is shown. */
    char db_shown[1024];
    if (st.store && use_pg)
        store_postgres_redact(cfg.postgres_dsn, db_shown, sizeof db_shown);
    else
        snprintf(db_shown, sizeof db_shown, "%s", st.store ? cfg.db_path : "-");
    log_event_always(LOG_INFO, "listening",
             "addr=%s%s%s:%d workers=%u echo=%s chat=%s prefix=%s storage=%s db=%s sync=%s "
             "version=%s",
             v6 ? "[" : "", h, v6 ? "]" : "", st.srv.port, cfg.workers, cfg.echo ? "on" : "off",
             st.store ? "on" : "off", log_quotes(&qpre, cfg.prefix),
             st.store ? (use_pg ? "postgres" : "sqlite") : "none", log_quotes(&qdb, db_shown),
             cfg.sync_full ? "full" : "normal", CHATD_VERSION);
    uv_run(loop, UV_RUN_DEFAULT);

    server_join(&st.srv);
    /* (Done at the signal already; again for a loop that ended otherwise.)
     * The assistant stops starting answers; freeing its HTTP client ends
     * the answers still streaming, each handed to the store as partial.
     * The worker threads are gone but their inboxes still exist: the writer
     * finishes the requests still queued (those answers too) and posts
     * their results there, where they are dropped. Only then may the
     * workers be freed.
     * The help webhook stops next: deliveries still pending (in flight or
     * waiting for a retry) are dropped and counted, and so are help
     * requests the writer still commits while it closes. It is freed once
     * the writer, which calls it, is gone. */
    /* Nothing is delivered from other nodes any more: the bus's thread
     * reads storage for gaps and reaches the assistant, both closed next.
     * Publishing still works, for what the writer still commits. */
    bus_quiesce(st.bus);
    assistant_shutdown(st.assistant);
    webhook_shutdown(st.webhook);
    if (st.store)
        store_close(st.store);
    assistant_free(st.assistant);
    webhook_free(st.webhook);
    /* Nothing publishes any more; the bus may deliver (post to the
     * workers' inboxes) until it is closed, so before they are freed. */
    bus_close(st.bus);
    server_release(&st.srv);
    chat_free(st.chat);
    uv_close((uv_handle_t *)&st.sigterm, close_cb_noop);
    uv_close((uv_handle_t *)&st.sigint, close_cb_noop);
    uv_close((uv_handle_t *)&st.poll, close_cb_noop);
    uv_close((uv_handle_t *)&st.deadline, close_cb_noop);
    uv_close((uv_handle_t *)&st.gc, close_cb_noop);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    hub_release(&st.hub);
    sbuf_thread_cleanup();
    log_info("shutdown_done", "forced=%s", st.forced ? "yes" : "no");
    config_release(&cfg);
    http_client_global_cleanup();
    return 0;
}
