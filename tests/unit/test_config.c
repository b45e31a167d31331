/*
 * config tests, for the assistant's options: --model specs parse into
 * struct conf_model with their defaults; ',,' and ';;' escape; a source
 * replaces a weaker source's list as a whole, and only the winning list's
 * keys and files are read; every malformed spec is refused with a message
 * naming --model and the part at fault, never the key; --models, the
 * default model, the --assistant-* ranges and --ca-file; --help-webhook
 * and --webhook-secret-file. Every case ends
 * with config_release, so the sanitizer builds check the error paths for
 * leaks too.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf/config.h"

#define SECRET "--jwt-secret=test-secret-0123456789abcdefghijklmnop"
#define KEY "sk-test-KEY-0123456789-do-not-leak"

/* Up to 16 arguments after argv[0], then up to 16 environment entries. */
struct run {
    struct config cfg;
    char err[512];
    int rc;
};

/* Run config_load on copies (it may write argv) of args and env. */
static int load(struct run *r, const char *const *args, const char *const *env)
{
    char *argv[20] = {strdup("chatd")};
    char *envp[20] = {NULL};
    int argc = 1;
    for (; args && args[argc - 1]; argc++)
        argv[argc] = strdup(args[argc - 1]);
    for (int i = 0; env && env[i]; i++)
        envp[i] = strdup(env[i]);
    FILE *out = fopen("/dev/null", "w");
    assert_non_null(out);
    r->err[0] = '\0';
    r->rc = config_load(&r->cfg, argc, argv, envp, out, r->err, sizeof r->err);
    fclose(out);
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    for (int i = 0; envp[i]; i++)
        free(envp[i]);
    return r->rc;
}

/* A temporary file holding text; the caller unlinks it and frees the path. */
static char *temp_file(const char *text)
{
    char *path = strdup("/tmp/chatd-unit-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

static void drop_file(char *path)
{
    unlink(path);
    free(path);
}

/* config_load must fail, with an error holding every one of the words. */
static void expect_error(const char *const *args, const char *const *env, const char *w1,
                         const char *w2)
{
    struct run r;
    assert_int_equal(load(&r, args, env), -EINVAL);
    if (!strstr(r.err, w1) || (w2 && !strstr(r.err, w2)))
        fail_msg("error '%s' does not name '%s' and '%s'", r.err, w1, w2 ? w2 : "");
    if (strchr(r.err, '\n'))
        fail_msg("error '%s' is not one line", r.err);
    if (strstr(r.err, KEY))
        fail_msg("error '%s' shows the key", r.err);
    config_release(&r.cfg);
}

static void test_full_spec_and_defaults(void **state)
{
    (void)state;
    char *key = temp_file(KEY "\r\n");
    char *sys = temp_file("You are chatd's helper.\nBe brief.\n\n");
    char spec[512];
    snprintf(spec, sizeof spec,
             "fast=openai:HTTP://127.0.0.1:8081/v1/, model = llama-3 ,name=Llama 3,"
             "key-file=%s,system-file=%s,max-tokens=512",
             key, sys);
    const char *args[] = {
        SECRET, "--model", spec, "--model", "claude=anthropic:https://api.example/v1", NULL};
    struct run r;
    assert_int_equal(load(&r, args, NULL), 0);
    struct config *c = &r.cfg;
    assert_int_equal(c->nmodels, 2);
    assert_int_equal(c->default_model, 0);
    struct conf_model *m = &c->models[0];
    assert_string_equal(m->id, "fast");
    assert_int_equal(m->kind, CONF_MODEL_OPENAI);
    assert_string_equal(m->base_url, "http://127.0.0.1:8081/v1");
    assert_string_equal(m->model, "llama-3");
    assert_string_equal(m->name, "Llama 3");
    assert_string_equal(m->key_file, key);
    assert_null(m->key_env);
    assert_int_equal(m->key_len, strlen(KEY));
    assert_memory_equal(m->key, KEY, strlen(KEY));
    assert_string_equal(m->system_prompt, "You are chatd's helper.\nBe brief.");
    assert_int_equal(m->system_prompt_len, strlen("You are chatd's helper.\nBe brief."));
    assert_int_equal(m->max_tokens, 512);
    m = &c->models[1];
    assert_string_equal(m->id, "claude");
    assert_int_equal(m->kind, CONF_MODEL_ANTHROPIC);
    assert_string_equal(m->model, "claude");
    assert_string_equal(m->name, "claude");
    assert_null(m->key);
    assert_null(m->system_prompt);
    assert_int_equal(m->max_tokens, CONF_ANTHROPIC_MAX_TOKENS);
    /* The assistant's numbers, at PROTOCOL.md's defaults. */
    assert_int_equal(c->assistant_first_byte_timeout_s, 30);
    assert_int_equal(c->assistant_timeout_s, 120);
    assert_int_equal(c->assistant_max_streams, 1000);
    assert_int_equal(c->assistant_context_messages, 50);
    assert_int_equal(c->assistant_context_bytes, 65536);
    assert_null(c->ca_file);
    config_release(c);
    drop_file(key);
    drop_file(sys);
}

static void test_key_from_the_given_environment(void **state)
{
    (void)state;
    const char *args[] = {SECRET, "--model", "a=openai:http://h/v1,key-env=TEST_KEY", NULL};
    const char *env[] = {"TEST_KEY=" KEY, NULL};
    struct run r;
    assert_int_equal(load(&r, args, env), 0);
    assert_int_equal(r.cfg.nmodels, 1);
    assert_string_equal(r.cfg.models[0].key_env, "TEST_KEY");
    assert_int_equal(r.cfg.models[0].key_len, strlen(KEY));
    assert_memory_equal(r.cfg.models[0].key, KEY, strlen(KEY));
    config_release(&r.cfg);
    /* Not the process's own environment: config_load is given envp. */
    setenv("TEST_KEY", KEY, 1);
    expect_error(args, NULL, "--model", "TEST_KEY is not set");
    unsetenv("TEST_KEY");
}

static void test_escapes_and_several_in_one_value(void **state)
{
    (void)state;
    const char *env[] = {"CHATD_MODEL= a=openai:http://h,name=Fast,, cheap;; really ;\n"
                         "b=anthropic:https://h2,name=B;;\r\n;c=openai:http://h3,,x\n",
                         NULL};
    const char *args[] = {SECRET, NULL};
    struct run r;
    assert_int_equal(load(&r, args, env), 0);
    assert_int_equal(r.cfg.nmodels, 3);
    assert_string_equal(r.cfg.models[0].name, "Fast, cheap; really");
    assert_string_equal(r.cfg.models[1].name, "B;");
    /* ',,' stands for a comma in the URL too. */
    assert_string_equal(r.cfg.models[2].base_url, "http://h3,x");
    config_release(&r.cfg);
}

/* The models of each source, in the file, the environment and flags; the
 * file's and environment's name variables that are not set, which is fine
 * as long as a stronger source replaces them. */
static void test_a_source_replaces_the_list(void **state)
{
    (void)state;
    char *conf = temp_file("model = f1=openai:http://f/v1,key-env=UNSET_FILE_KEY\n"
                           "model = f2=anthropic:https://f/v1\n");
    char conf_arg[128];
    snprintf(conf_arg, sizeof conf_arg, "--config=%s", conf);
    const char *env[] = {"CHATD_MODEL=e1=openai:http://e/v1,key-env=UNSET_ENV_KEY", NULL};
    const char *flags[] = {SECRET,    conf_arg,
                           "--model", "x1=openai:http://x/v1",
                           "--model", "x2=openai:http://x/v1;x3=openai:http://x/v1",
                           NULL};
    struct run r;
    assert_int_equal(load(&r, flags, env), 0);
    assert_int_equal(r.cfg.nmodels, 3);
    assert_string_equal(r.cfg.models[0].id, "x1");
    assert_string_equal(r.cfg.models[2].id, "x3");
    config_release(&r.cfg);

    const char *file_only[] = {SECRET, conf_arg, NULL};
    const char *env_ok[] = {"CHATD_MODEL=e1=openai:http://e/v1", NULL};
    assert_int_equal(load(&r, file_only, env_ok), 0);
    assert_int_equal(r.cfg.nmodels, 1);
    assert_string_equal(r.cfg.models[0].id, "e1");
    config_release(&r.cfg);

    /* The file alone: its first model's variable must now be set. */
    expect_error(file_only, NULL, ": model: 'f1': key-env", "UNSET_FILE_KEY is not set");
    const char *env_key[] = {"UNSET_FILE_KEY=" KEY, NULL};
    assert_int_equal(load(&r, file_only, env_key), 0);
    assert_int_equal(r.cfg.nmodels, 2);
    assert_string_equal(r.cfg.models[0].id, "f1");
    assert_string_equal(r.cfg.models[1].id, "f2");
    config_release(&r.cfg);

    /* A malformed spec is refused even where a stronger source wins. */
    char *bad = temp_file("model = f1=nope:http://f/v1\n");
    snprintf(conf_arg, sizeof conf_arg, "--config=%s", bad);
    expect_error(flags, NULL, "model", "unknown kind 'nope'");
    drop_file(bad);
    drop_file(conf);
}

static void test_malformed_specs(void **state)
{
    (void)state;
    static const char *const cases[][3] = {
        /* spec, what the error must say */
        {"", "empty value", NULL},
        {"fast", "expected ID=KIND:BASE_URL", NULL},
        {"fast=openai", "expected ID=KIND:BASE_URL", NULL},
        {"=openai:http://h", "bad id ''", NULL},
        {"a b=openai:http://h", "bad id 'a b'", NULL},
        {"a/b=openai:http://h", "bad id 'a/b'", NULL},
        {"x12345678901234567890123456789012345678901234567890123456789012345=openai:http://h",
         "bad id", NULL},
        {"a=gpt:http://h", "unknown kind 'gpt'", NULL},
        {"a=OpenAI:http://h", "unknown kind 'OpenAI'", NULL},
        {"a=openai:ftp://h/v1", "must start with http:// or https://", NULL},
        {"a=openai:h/v1", "must start with http:// or https://", NULL},
        {"a=openai:http://", "has no host", NULL},
        {"a=openai:http:///v1", "has no host", NULL},
        {"a=openai:http://:80/v1", "has no host", NULL},
        {"a=openai:http://h:0/v1", "bad port", NULL},
        {"a=openai:http://h:65536/v1", "bad port", NULL},
        {"a=openai:http://h:8x/v1", "bad port", NULL},
        {"a=openai:http://[::1/v1", "bad IPv6 host", NULL},
        {"a=openai:http://user:pw@h/v1", "credentials", NULL},
        {"a=openai:http://h/v1?x=1", "query", NULL},
        {"a=openai:http://h/v 1", "spaces", NULL},
        {"a=openai:http://h,", "empty setting", NULL},
        {"a=openai:http://h,,,", "empty setting", NULL},
        {"a=openai:http://h,name", "expected key=value, got 'name'", NULL},
        {"a=openai:http://h,colour=red", "unknown setting 'colour'", NULL},
        {"a=openai:http://h,key=abc", "unknown setting 'key'", NULL},
        {"a=openai:http://h,name=x,name=y", "name= given twice", NULL},
        {"a=openai:http://h,model=", "model= is empty", NULL},
        {"a=openai:http://h,name=tab\there", "name= must be UTF-8 text", NULL},
        {"a=openai:http://h,name=\xc3\x28", "name= must be UTF-8 text", NULL},
        {"a=openai:http://h,key-env=A,key-file=/x", "key-env= and key-file=", NULL},
        {"a=openai:http://h,key-env=NOT-A-NAME", "'NOT-A-NAME' is not a variable name", NULL},
        {"a=openai:http://h,key-env=1X", "is not a variable name", NULL},
        {"a=openai:http://h,key-env=CHATD_UNIT_UNSET", "variable CHATD_UNIT_UNSET is not set",
         NULL},
        {"a=openai:http://h,key-file=/nonexistent/key", "key-file: cannot read '/nonexistent/key'",
         NULL},
        {"a=openai:http://h,system-file=/nonexistent/p", "system-file: cannot read", NULL},
        {"a=openai:http://h,system-file=/", "system-file: cannot read '/'", NULL},
        {"a=openai:http://h,max-tokens=0", "max-tokens: expected an integer from 1 to 1000000",
         NULL},
        {"a=openai:http://h,max-tokens=1000001", "max-tokens", NULL},
        {"a=openai:http://h,max-tokens=-5", "max-tokens", NULL},
        {"a=openai:http://h,max-tokens=12k", "max-tokens", NULL},
        {"a=openai:http://h;a=anthropic:https://h", "duplicate id 'a'", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[] = {SECRET, "--model", cases[i][0], NULL};
        expect_error(args, NULL, "--model", cases[i][1]);
        /* The same spec in the environment and in the file. */
        char var[512];
        snprintf(var, sizeof var, "CHATD_MODEL=%s", cases[i][0]);
        const char *env[] = {var, NULL};
        const char *none[] = {SECRET, NULL};
        expect_error(none, env, "CHATD_MODEL for --model", cases[i][1]);
    }
    /* A URL's credentials are refused without being repeated. */
    static const char *const creds[] = {"a=openai:https://user:pw-SECRET@h/v1?x=1",
                                        "a=openai:https://user:pw-SECRET@h?x#y",
                                        "a=openai:ftp://user:pw-SECRET@h/v1"};
    for (size_t i = 0; i < sizeof creds / sizeof creds[0]; i++) {
        const char *args[] = {SECRET, "--model", creds[i], NULL};
        struct run r;
        assert_int_equal(load(&r, args, NULL), -EINVAL);
        if (strstr(r.err, "pw-SECRET"))
            fail_msg("error '%s' repeats the URL's password", r.err);
        config_release(&r.cfg);
    }
    /* Duplicate ids across flags, too. */
    const char *dup[] = {SECRET,    "--model",           "a=openai:http://h",
                         "--model", "a=openai:http://i", NULL};
    expect_error(dup, NULL, "--model", "duplicate id 'a'");
}

static void test_bad_keys_are_not_shown(void **state)
{
    (void)state;
    char *empty = temp_file("\n");
    char *spaced = temp_file(KEY " trailing\n");
    char *binary = temp_file("sk-\x01" KEY);
    char *huge = malloc(CONF_MODEL_KEY_MAX + 2);
    memset(huge, 'k', CONF_MODEL_KEY_MAX + 1);
    huge[CONF_MODEL_KEY_MAX + 1] = '\0';
    char *big = temp_file(huge);
    free(huge);
    char *files[] = {empty, spaced, binary};
    for (int i = 0; i < 3; i++) {
        char spec[256];
        snprintf(spec, sizeof spec, "a=openai:http://h,key-file=%s", files[i]);
        const char *args[] = {SECRET, "--model", spec, NULL};
        expect_error(args, NULL, "--model", "printable ASCII");
    }
    char spec[256];
    snprintf(spec, sizeof spec, "a=openai:http://h,key-file=%s", big);
    const char *args[] = {SECRET, "--model", spec, NULL};
    expect_error(args, NULL, "--model", "larger than 4096 bytes");
    const char *env_args[] = {SECRET, "--model", "a=openai:http://h,key-env=K", NULL};
    const char *env_empty[] = {"K=", NULL};
    expect_error(env_args, env_empty, "variable K", "empty");
    const char *env_space[] = {"K=" KEY " x", NULL};
    expect_error(env_args, env_space, "variable K", "printable ASCII");
    drop_file(empty);
    drop_file(spaced);
    drop_file(binary);
    drop_file(big);
}

static void test_system_prompt_checks(void **state)
{
    (void)state;
    char *latin1 = temp_file("caf\xe9\n");
    char *empty = temp_file("\n\n");
    char spec[256];
    snprintf(spec, sizeof spec, "a=openai:http://h,system-file=%s", latin1);
    const char *args[] = {SECRET, "--model", spec, NULL};
    expect_error(args, NULL, "--model", "is not UTF-8 text");
    snprintf(spec, sizeof spec, "a=openai:http://h,system-file=%s", empty);
    struct run r;
    assert_int_equal(load(&r, args, NULL), 0);
    assert_null(r.cfg.models[0].system_prompt);
    assert_int_equal(r.cfg.models[0].system_prompt_len, 0);
    config_release(&r.cfg);
    drop_file(latin1);
    drop_file(empty);
}

static void test_models_alias(void **state)
{
    (void)state;
    const char *args[] = {SECRET, "--models", " m1:Model One, m2 ,,", NULL};
    struct run r;
    assert_int_equal(load(&r, args, NULL), 0);
    assert_int_equal(r.cfg.nmodels, 2);
    assert_string_equal(r.cfg.models[0].id, "m1");
    assert_string_equal(r.cfg.models[0].name, "Model One");
    assert_int_equal(r.cfg.models[0].kind, CONF_MODEL_NONE);
    assert_null(r.cfg.models[0].base_url);
    assert_string_equal(r.cfg.models[1].id, "m2");
    assert_string_equal(r.cfg.models[1].name, "m2");
    config_release(&r.cfg);

    const char *both[] = {SECRET, "--models", "m1", "--model", "a=openai:http://h", NULL};
    expect_error(both, NULL, "--models and --model", NULL);
    const char *env[] = {"CHATD_MODELS=m1", NULL};
    const char *flag[] = {SECRET, "--model", "a=openai:http://h", NULL};
    expect_error(flag, env, "--models and --model", NULL);
    const char *dup[] = {SECRET, "--models", "m1,m1:Again", NULL};
    expect_error(dup, NULL, "--models", "duplicate id 'm1'");
    const char *bad[] = {SECRET, "--models", "m 1", NULL};
    expect_error(bad, NULL, "--models", "bad id 'm 1'");
}

static void test_default_model(void **state)
{
    (void)state;
    const char *args[] = {
        SECRET, "--model", "a=openai:http://h;b=anthropic:https://h", "--default-model", "b", NULL};
    struct run r;
    assert_int_equal(load(&r, args, NULL), 0);
    assert_int_equal(r.cfg.default_model, 1);
    config_release(&r.cfg);
    const char *alias[] = {SECRET, "--models", "m1,m2", "--default-model", "m2", NULL};
    assert_int_equal(load(&r, alias, NULL), 0);
    assert_int_equal(r.cfg.default_model, 1);
    config_release(&r.cfg);
    const char *unknown[] = {SECRET, "--model", "a=openai:http://h", "--default-model", "c", NULL};
    expect_error(unknown, NULL, "--default-model", "'c'");
    const char *none[] = {SECRET, "--default-model", "a", NULL};
    expect_error(none, NULL, "--default-model", "no --model");
}

static void test_assistant_numbers(void **state)
{
    (void)state;
    const char *args[] = {
        SECRET, "--assistant-first-byte-timeout", "5",    "--assistant-timeout",
        "60",   "--assistant-max-streams",        "7",    "--assistant-context-messages",
        "3",    "--assistant-context-bytes",      "2048", NULL};
    struct run r;
    assert_int_equal(load(&r, args, NULL), 0);
    assert_int_equal(r.cfg.assistant_first_byte_timeout_s, 5);
    assert_int_equal(r.cfg.assistant_timeout_s, 60);
    assert_int_equal(r.cfg.assistant_max_streams, 7);
    assert_int_equal(r.cfg.assistant_context_messages, 3);
    assert_int_equal(r.cfg.assistant_context_bytes, 2048);
    config_release(&r.cfg);
    static const char *const bad[][2] = {
        {"--assistant-first-byte-timeout", "0"},
        {"--assistant-first-byte-timeout", "3601"},
        {"--assistant-timeout", "0"},
        {"--assistant-timeout", "x"},
        {"--assistant-max-streams", "0"},
        {"--assistant-context-messages", "0"},
        {"--assistant-context-messages", "10001"},
        {"--assistant-context-bytes", "1023"},
        {"--assistant-context-bytes", "67108865"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *a[] = {SECRET, bad[i][0], bad[i][1], NULL};
        expect_error(a, NULL, bad[i][0], "expected an integer");
    }
    const char *order[] = {
        SECRET, "--assistant-first-byte-timeout", "90", "--assistant-timeout", "60", NULL};
    expect_error(order, NULL, "--assistant-first-byte-timeout", "--assistant-timeout");
}

static void test_ca_file(void **state)
{
    (void)state;
    char *pem =
        temp_file("# bundle\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    char *text = temp_file("not a certificate\n");
    char arg[128];
    snprintf(arg, sizeof arg, "--ca-file=%s", pem);
    const char *ok[] = {SECRET, arg, NULL};
    struct run r;
    assert_int_equal(load(&r, ok, NULL), 0);
    assert_string_equal(r.cfg.ca_file, pem);
    config_release(&r.cfg);
    snprintf(arg, sizeof arg, "--ca-file=%s", text);
    expect_error(ok, NULL, "--ca-file", "no PEM certificate");
    snprintf(arg, sizeof arg, "--ca-file=/nonexistent/ca.pem");
    expect_error(ok, NULL, "--ca-file", "cannot read '/nonexistent/ca.pem'");
    drop_file(pem);
    drop_file(text);
}

static void test_help_webhook(void **state)
{
    (void)state;
    struct run r;
    /* Not set: no webhook. */
    const char *none[] = {SECRET, NULL};
    assert_int_equal(load(&r, none, NULL), 0);
    assert_null(r.cfg.help_webhook);
    assert_null(r.cfg.webhook_secret);
    config_release(&r.cfg);
    /* http and https, any case; userinfo, port, path and query kept. */
    static const char *const good[] = {
        "http://127.0.0.1:9000/hook",
        "HTTPS://hooks.example.com/services/T0/B0/x?token=abc",
        "https://user:pw@[::1]:8443/h",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        const char *a[] = {SECRET, "--help-webhook", good[i], NULL};
        assert_int_equal(load(&r, a, NULL), 0);
        assert_string_equal(r.cfg.help_webhook, good[i]);
        config_release(&r.cfg);
    }
    /* From the environment; a flag of "" turns it off. */
    const char *env[] = {"CHATD_HELP_WEBHOOK=http://127.0.0.1/env", NULL};
    assert_int_equal(load(&r, none, env), 0);
    assert_string_equal(r.cfg.help_webhook, "http://127.0.0.1/env");
    config_release(&r.cfg);
    const char *off[] = {SECRET, "--help-webhook=", NULL};
    assert_int_equal(load(&r, off, env), 0);
    assert_null(r.cfg.help_webhook);
    config_release(&r.cfg);
    /* Refused with a message naming the option, never the URL (which may
     * hold a token). */
    static const char *const bad[][2] = {
        {"ftp://127.0.0.1/hook-tok", "http:// or https://"},
        {"127.0.0.1/hook-tok", "http:// or https://"},
        {"ws://127.0.0.1/hook-tok", "http:// or https://"},
        {"http://", "no host"},
        {"https:///hook-tok", "no host"},
        {"http://user:pw@/hook-tok", "no host"},
        {"http://127.0.0.1/a hook-tok", "spaces"},
        {"http://127.0.0.1/\r\nX: hook-tok", "control"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *a[] = {SECRET, "--help-webhook", bad[i][0], NULL};
        expect_error(a, NULL, "--help-webhook", bad[i][1]);
        assert_int_equal(load(&r, a, NULL), -EINVAL);
        if (strstr(r.err, "hook-tok"))
            fail_msg("error '%s' repeats the URL", r.err);
        config_release(&r.cfg);
    }
    char *long_url = malloc(CONF_WEBHOOK_URL_MAX + 2);
    assert_non_null(long_url);
    memset(long_url, 'a', CONF_WEBHOOK_URL_MAX + 1);
    memcpy(long_url, "http://x/", 9);
    long_url[CONF_WEBHOOK_URL_MAX + 1] = '\0';
    const char *lu[] = {SECRET, "--help-webhook", long_url, NULL};
    expect_error(lu, NULL, "--help-webhook", "longer than");
    free(long_url);
}

static void test_webhook_secret_file(void **state)
{
    (void)state;
    struct run r;
    char arg[128];
    /* One trailing newline (LF or CRLF) is stripped; the rest is kept as
     * bytes, spaces and a second newline included. */
    static const struct {
        const char *text;
        size_t len;
        const char *want;
        size_t want_len;
    } cases[] = {
        {"hook-" KEY "\n", 0, "hook-" KEY, 0},
        {"hook-" KEY "\r\n", 0, "hook-" KEY, 0},
        {"hook-" KEY, 0, "hook-" KEY, 0},
        {" two lines \n\n", 0, " two lines \n", 0},
        {"a\0b", 3, "a\0b", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = strdup("/tmp/chatd-unit-config-XXXXXX");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        size_t n = cases[i].len ? cases[i].len : strlen(cases[i].text);
        assert_int_equal(write(fd, cases[i].text, n), (ssize_t)n);
        close(fd);
        snprintf(arg, sizeof arg, "--webhook-secret-file=%s", path);
        const char *a[] = {SECRET, "--help-webhook", "http://127.0.0.1/h", arg, NULL};
        assert_int_equal(load(&r, a, NULL), 0);
        size_t wl = cases[i].want_len ? cases[i].want_len : strlen(cases[i].want);
        assert_int_equal(r.cfg.webhook_secret_len, wl);
        assert_memory_equal(r.cfg.webhook_secret, cases[i].want, wl);
        assert_string_equal(r.cfg.webhook_secret_file, path);
        config_release(&r.cfg);
        drop_file(path);
    }
    /* Exactly 4096 bytes (and a newline) is the most. */
    char *big = malloc(CONF_WEBHOOK_SECRET_MAX + 3);
    assert_non_null(big);
    memset(big, 'k', CONF_WEBHOOK_SECRET_MAX + 2);
    big[CONF_WEBHOOK_SECRET_MAX] = '\n';
    big[CONF_WEBHOOK_SECRET_MAX + 1] = '\0';
    char *max = temp_file(big);
    snprintf(arg, sizeof arg, "--webhook-secret-file=%s", max);
    const char *ok[] = {SECRET, "--help-webhook", "http://127.0.0.1/h", arg, NULL};
    assert_int_equal(load(&r, ok, NULL), 0);
    assert_int_equal(r.cfg.webhook_secret_len, CONF_WEBHOOK_SECRET_MAX);
    config_release(&r.cfg);
    drop_file(max);
    big[CONF_WEBHOOK_SECRET_MAX] = 'k';
    char *over = temp_file(big);
    free(big);
    snprintf(arg, sizeof arg, "--webhook-secret-file=%s", over);
    expect_error(ok, NULL, "--webhook-secret-file", "4096");
    drop_file(over);
    /* Empty, or only a newline: refused. */
    char *empty = temp_file("\n");
    snprintf(arg, sizeof arg, "--webhook-secret-file=%s", empty);
    expect_error(ok, NULL, "--webhook-secret-file", "1 to 4096 bytes");
    drop_file(empty);
    /* Unreadable: refused, naming the file, never its bytes. */
    snprintf(arg, sizeof arg, "--webhook-secret-file=/nonexistent/hook-secret");
    expect_error(ok, NULL, "--webhook-secret-file", "cannot read '/nonexistent/hook-secret'");
    char *secret = temp_file("hook-" KEY "\n");
    if (geteuid() != 0) { /* root reads a file whatever its mode */
        assert_int_equal(chmod(secret, 0), 0);
        snprintf(arg, sizeof arg, "--webhook-secret-file=%s", secret);
        expect_error(ok, NULL, "--webhook-secret-file", "cannot read");
        assert_int_equal(chmod(secret, 0600), 0);
    }
    /* From the environment too; without --help-webhook it is a mistake. */
    char env_var[128];
    snprintf(env_var, sizeof env_var, "CHATD_WEBHOOK_SECRET_FILE=%s", secret);
    const char *env[] = {env_var, "CHATD_HELP_WEBHOOK=https://127.0.0.1/h", NULL};
    const char *plain[] = {SECRET, NULL};
    assert_int_equal(load(&r, plain, env), 0);
    assert_int_equal(r.cfg.webhook_secret_len, strlen("hook-" KEY));
    config_release(&r.cfg);
    snprintf(arg, sizeof arg, "--webhook-secret-file=%s", secret);
    const char *alone[] = {SECRET, arg, NULL};
    expect_error(alone, NULL, "--webhook-secret-file", "needs --help-webhook");
    drop_file(secret);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_spec_and_defaults),
        cmocka_unit_test(test_key_from_the_given_environment),
        cmocka_unit_test(test_escapes_and_several_in_one_value),
        cmocka_unit_test(test_a_source_replaces_the_list),
        cmocka_unit_test(test_malformed_specs),
        cmocka_unit_test(test_bad_keys_are_not_shown),
        cmocka_unit_test(test_system_prompt_checks),
        cmocka_unit_test(test_models_alias),
        cmocka_unit_test(test_default_model),
        cmocka_unit_test(test_assistant_numbers),
        cmocka_unit_test(test_ca_file),
        cmocka_unit_test(test_help_webhook),
        cmocka_unit_test(test_webhook_secret_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
