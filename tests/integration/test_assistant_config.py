"""The assistant's options (docs/protocol.md section 8): --model SPEC in its
three forms, --default-model, --models, the --assistant-* numbers and
--ca-file. Every malformed value stops chatd with exit status 2 and one line
naming the option; valid models show in connection_status and are accepted
by model_select; an API key never shows anywhere chatd writes or serves."""
import json
import os
import re
import secrets
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from harness import SANITIZER_MARKERS, WS, Chatd, http_get, make_token, run  # noqa: E402
from test_config import chatd, clean_env, expect_usage_error  # noqa: E402

OPTIONS = ["--model", "--default-model", "--models", "--assistant-first-byte-timeout",
           "--assistant-timeout", "--assistant-max-streams", "--assistant-context-messages",
           "--assistant-context-bytes", "--ca-file"]
# A recognisable key: if any part of it shows up somewhere, it leaked.
KEY = "sk-chatd-LEAKCHECK-" + secrets.token_hex(12)
KEY2 = "sk-ant-LEAKCHECK-" + secrets.token_hex(12)
PEM = ("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2hhdGQgdGVzdCBDQQ==\n"
       "-----END CERTIFICATE-----\n")


class Files:
    """Scratch files for one test: a key file, a system prompt, a CA."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="chatd-test-")

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        return path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


def status_of(d, sub="alice"):
    """The connection_status a new connection of `sub` gets, and its socket."""
    ws = WS(d.port, path="/ws", token=make_token(sub))
    st = ws.recv_json()
    assert st["type"] == "connection_status", st
    return st, ws


def models_of(d):
    st, ws = status_of(d)
    ws.shut()
    return st["models"]


def log_has_model_line(d, model_id, **fields):
    """The start-up line chatd logs for a model, holding `fields`."""
    for line in d.log().splitlines():
        if "event=model " in line and " id=%s " % model_id in line:
            for k, v in fields.items():
                assert "%s=%s" % (k, v) in line, (k, v, line)
            return line
    raise AssertionError("no event=model line for %s:\n%s" % (model_id, d.log()))


# ---- --help ----------------------------------------------------------------------

def test_help_lists_the_assistant_options():
    rc, out, err = chatd(["--help"])
    assert rc == 0, (rc, err)
    for opt in OPTIONS:
        assert re.search(r"^  %s\b" % re.escape(opt), out, re.M), \
            "--help does not list %s:\n%s" % (opt, out)
    block = out[out.index("  --model "):out.index("  --default-model")]
    for word in ("openai", "anthropic", "model=", "name=", "key-env=", "key-file=",
                 "system-file=", "max-tokens=", "',,'", "CHATD_MODEL"):
        assert word in block, "--help on --model does not mention %s:\n%s" % (word, block)
    for opt, default in (("--assistant-first-byte-timeout", "30"), ("--assistant-timeout", "120"),
                         ("--assistant-max-streams", "1000"),
                         ("--assistant-context-messages", "50"),
                         ("--assistant-context-bytes", "65536")):
        m = re.search(r"^  %s .*?\[default: (\d+)\]" % re.escape(opt), out, re.M | re.S)
        assert m and m.group(1) == default, (opt, default, out)


# ---- refusals ----------------------------------------------------------------------

def test_model_spec_errors_exit_2():
    with Files() as f:
        key = f.write("key", KEY + "\n")
        cases = [
            ("fast", "expected ID=KIND:BASE_URL"),
            ("fast=gpt:https://api.example/v1", "unknown kind 'gpt'"),
            ("fast=openai:ftp://api.example/v1", "http:// or https://"),
            ("fast=openai:api.example/v1", "http:// or https://"),
            ("fast=openai:http://", "no host"),
            ("fast=openai:http://h:70000/v1", "bad port"),
            ("fast=openai:https://user:pw@api.example/v1", "credentials"),
            ("fast=openai:https://api.example/v1?x=1", "query"),
            ("a b=openai:http://h/v1", "bad id 'a b'"),
            ("a/b=openai:http://h/v1", "bad id"),
            ("x" * 65 + "=openai:http://h/v1", "bad id"),
            ("=openai:http://h/v1", "bad id"),
            ("fast=openai:http://h/v1,colour=red", "unknown setting 'colour'"),
            ("fast=openai:http://h/v1,name", "expected key=value"),
            ("fast=openai:http://h/v1,name=A,name=B", "given twice"),
            ("fast=openai:http://h/v1,name=", "name= is empty"),
            ("fast=openai:http://h/v1,key-env=CHATD_TEST_UNSET_KEY", "CHATD_TEST_UNSET_KEY"),
            ("fast=openai:http://h/v1,key-env=BAD-NAME", "not a variable name"),
            ("fast=openai:http://h/v1,key-file=%s/none" % f.dir, "cannot read"),
            ("fast=openai:http://h/v1,key-file=" + f.dir, "cannot read"),
            ("fast=openai:http://h/v1,key-env=K,key-file=" + key, "give one or neither"),
            ("fast=openai:http://h/v1,system-file=%s/none" % f.dir, "system-file"),
            ("fast=openai:http://h/v1,max-tokens=0", "max-tokens"),
            ("fast=openai:http://h/v1,max-tokens=1000001", "max-tokens"),
            ("fast=openai:http://h/v1,max-tokens=many", "max-tokens"),
            ("a=openai:http://h/v1;a=anthropic:https://h/v1", "duplicate id 'a'"),
        ]
        for spec, what in cases:
            line = expect_usage_error(["--model", spec], "--model")
            assert what in line, "--model %r: %r does not say %r" % (spec, line, what)
            assert KEY not in line, line
        # A duplicate across two flags.
        line = expect_usage_error(["--model", "a=openai:http://h/v1", "--model",
                                   "a=anthropic:https://h/v1"], "--model")
        assert "duplicate id 'a'" in line, line
        # An unreadable key file (not a missing one): skipped when root reads anything.
        locked = f.write("locked", KEY)
        os.chmod(locked, 0)
        if not os.access(locked, os.R_OK):
            line = expect_usage_error(["--model", "a=openai:http://h/v1,key-file=" + locked],
                                      "--model")
            assert "cannot read" in line and "Permission denied" in line, line


def test_other_assistant_errors_exit_2():
    one = ["--model", "a=openai:http://h/v1"]
    line = expect_usage_error(one + ["--default-model", "b"], "--default-model")
    assert "'b'" in line, line
    expect_usage_error(["--default-model", "a"], "--default-model")
    line = expect_usage_error(one + ["--models", "m1"], "--models")
    assert "--model" in line.replace("--models", ""), line
    expect_usage_error(["--models", "m1,m1"], "--models")
    expect_usage_error(["--models", "bad id"], "--models")
    for opt, bad in (("--assistant-first-byte-timeout", "0"),
                     ("--assistant-first-byte-timeout", "3601"),
                     ("--assistant-timeout", "0"), ("--assistant-timeout", "2m"),
                     ("--assistant-max-streams", "0"), ("--assistant-max-streams", "-1"),
                     ("--assistant-context-messages", "0"),
                     ("--assistant-context-bytes", "100"),
                     ("--assistant-context-bytes", "99999999999")):
        expect_usage_error([opt, bad], opt)
    line = expect_usage_error(["--assistant-first-byte-timeout", "60", "--assistant-timeout",
                               "30"], "--assistant-first-byte-timeout")
    assert "--assistant-timeout" in line, line
    with Files() as f:
        expect_usage_error(["--ca-file", os.path.join(f.dir, "missing.pem")], "--ca-file")
        expect_usage_error(["--ca-file", f.write("notpem", "hello\n")], "--ca-file")


def test_errors_from_environment_and_file_exit_2():
    line = expect_usage_error([], "CHATD_MODEL", env={"CHATD_MODEL": "a=gpt:http://h/v1"})
    assert "--model" in line and "unknown kind 'gpt'" in line, line
    line = expect_usage_error([], "CHATD_MODEL",
                              env={"CHATD_MODEL": "a=openai:http://h/v1,key-env=NOT_SET_HERE"})
    assert "NOT_SET_HERE" in line, line
    with Files() as f:
        conf = f.write("chatd.conf", "model = a=openai:http://h/v1\nmodel = a=openai:http://i/v1\n")
        line = expect_usage_error(["--config", conf], "model")
        assert "chatd.conf:2" in line and "duplicate id 'a'" in line, line
        conf = f.write("chatd2.conf", "model = a=openai:http://h/v1,max-tokens=0\n")
        line = expect_usage_error(["--config", conf], "model")
        assert "chatd2.conf:1" in line and "max-tokens" in line, line


# ---- valid models --------------------------------------------------------------------

def test_openai_and_anthropic_models_start():
    with Files() as f:
        key_file = f.write("anthropic.key", KEY2 + "\n")
        system = f.write("system.txt", "You help chatd's users.\nAnswer briefly.\n")
        args = ["--model", "fast=openai:http://127.0.0.1:8081/v1,model=llama-3,name=Llama 3,"
                           "key-env=CHATD_TEST_OPENAI_KEY,system-file=" + system,
                "--model", "claude=anthropic:https://api.anthropic.com/v1/,"
                           "model=claude-sonnet-4,name=Claude,, the careful one,"
                           "key-file=%s,max-tokens=2048" % key_file,
                "--model", "local=openai:http://[::1]:9000/v1",
                "--ca-file", f.write("ca.pem", PEM)]
        env = clean_env({"CHATD_TEST_OPENAI_KEY": KEY})
        with Chatd(*args, env=env) as d:
            assert models_of(d) == [{"id": "fast", "name": "Llama 3"},
                                    {"id": "claude", "name": "Claude, the careful one"},
                                    {"id": "local", "name": "local"}]
            log_has_model_line(d, "fast", kind="openai", key='"env:CHATD_TEST_OPENAI_KEY"',
                               default="yes", system_prompt_bytes="39",
                               base_url='"http://127.0.0.1:8081/v1"')
            log_has_model_line(d, "claude", kind="anthropic", max_tokens="2048", default="no",
                               base_url='"https://api.anthropic.com/v1"')
            log_has_model_line(d, "local", key='"none"', max_tokens="0")
            expect_model_select(d, ["fast", "claude", "local"], ["Llama 3", "m1", "FAST"])


def reply_to(ws, request_id):
    """The ack or error answering request_id (the sender's own devices also
    get each of its messages as an event: skipped)."""
    while True:
        m = ws.recv_json()
        if m["type"] in ("ack", "error") and m.get("id") == request_id:
            return m


def new_session(ws):
    ws.send_json({"type": "user_message", "id": "u1", "content": "hello"})
    ack = reply_to(ws, "u1")
    assert ack["type"] == "ack", ack
    return ack["session_id"]


def expect_model_select(d, good, bad):
    """model_select accepts exactly the configured ids."""
    ws = WS(d.port, path="/ws", token=make_token("alice"))
    assert ws.recv_json()["type"] == "connection_status"
    sid = new_session(ws)
    for i, model in enumerate(good + bad):
        ws.send_json({"type": "model_select", "id": "ms%d" % i, "session_id": sid,
                      "model_id": model})
        reply = reply_to(ws, "ms%d" % i)
        if model in good:
            assert reply["type"] == "ack" and reply["model_id"] == model, (model, reply)
        else:
            assert reply["type"] == "error" and reply["code"] == "invalid_field", (model, reply)
    ws.shut()


def test_default_model():
    spec = "a=openai:http://h/v1;b=anthropic:https://h/v1;c=openai:http://h/v1"
    with Chatd("--model", spec, env=clean_env()) as d:
        assert [m["id"] for m in models_of(d)] == ["a", "b", "c"]
        log_has_model_line(d, "a", default="yes")
        log_has_model_line(d, "b", default="no")
    with Chatd("--model", spec, "--default-model", "b", env=clean_env()) as d:
        log_has_model_line(d, "a", default="no")
        log_has_model_line(d, "b", default="yes")
    with Chatd("--model", spec, env=clean_env({"CHATD_DEFAULT_MODEL": "c"})) as d:
        log_has_model_line(d, "c", default="yes")


# ---- the environment, the file, and which wins ------------------------------------------

def test_environment_and_file_forms_and_precedence():
    with Files() as f:
        key_file = f.write("k", KEY + "\n")
        conf = f.write("chatd.conf",
                       "# two models, one line each\n"
                       "model = f1=openai:http://127.0.0.1:1/v1,name=File One,key-file=%s\n"
                       "model = \"f2=anthropic:https://f/v1,name=File Two  \"\n" % key_file)
        env_models = ("e1=openai:http://e/v1,name=Env;; one;"
                      "\ne2=anthropic:https://e/v1,name=Env Two\n")
        # The file alone: both of its lines.
        with Chatd("--config", conf, env=clean_env()) as d:
            assert models_of(d) == [{"id": "f1", "name": "File One"},
                                    {"id": "f2", "name": "File Two"}]
        # The environment replaces the file's list as a whole; ';' and
        # newlines separate specs, ';;' is a semicolon.
        with Chatd("--config", conf, env=clean_env({"CHATD_MODEL": env_models})) as d:
            assert models_of(d) == [{"id": "e1", "name": "Env; one"},
                                    {"id": "e2", "name": "Env Two"}]
        # Flags replace both, however many.
        with Chatd("--config", conf, "--model", "x1=openai:http://x/v1", "--model",
                   "x2=openai:http://x/v1,name=X Two",
                   env=clean_env({"CHATD_MODEL": env_models})) as d:
            assert models_of(d) == [{"id": "x1", "name": "x1"}, {"id": "x2", "name": "X Two"}]
        # --models is an option of its own: from the environment, with no
        # --model anywhere, it is the list.
        with Chatd(env=clean_env({"CHATD_MODELS": "m1:Model One,m2"})) as d:
            assert models_of(d) == [{"id": "m1", "name": "Model One"}, {"id": "m2", "name": "m2"}]


def test_models_alias():
    with Chatd("--models", "m1:Model One, m2", env=clean_env()) as d:
        assert models_of(d) == [{"id": "m1", "name": "Model One"}, {"id": "m2", "name": "m2"}]
        log_has_model_line(d, "m1", kind="none", default="yes")
        assert "event=assistant_not_implemented" not in d.log()
        expect_model_select(d, ["m1", "m2"], ["Model One", "m3"])
    # No model at all: an empty list, and every model_id refused.
    with Chatd(env=clean_env()) as d:
        assert models_of(d) == []
        expect_model_select(d, [], ["m1"])
    # Both forms at once, from anywhere: refused.
    line = expect_usage_error(["--model", "a=openai:http://h/v1"], "--models",
                              env={"CHATD_MODELS": "m1"})
    assert "together" in line, line


# ---- the key never leaks -----------------------------------------------------------------

def test_key_never_leaks():
    with Files() as f:
        key_file = f.write("key", KEY2 + "\n")
        spec = ("leak=openai:http://127.0.0.1:1/v1,key-env=CHATD_TEST_LEAK_KEY,name=Leak;"
                "leak2=anthropic:https://127.0.0.1:1/v1,key-file=" + key_file)
        env = clean_env({"CHATD_TEST_LEAK_KEY": KEY, "CHATD_MODEL": spec})
        seen = []
        # --help and --version with the models configured.
        for args in (["--help"], ["--version"]):
            rc, out, err = chatd(args, env={"CHATD_TEST_LEAK_KEY": KEY, "CHATD_MODEL": spec})
            assert rc == 0, (rc, err)
            seen += [out, err]
        with Chatd("--log-level", "debug", env=env) as d:
            st, ws = status_of(d)
            seen.append(json.dumps(st))
            assert [m["id"] for m in st["models"]] == ["leak", "leak2"], st
            sid = new_session(ws)
            ws.send_json({"type": "model_select", "id": "m", "session_id": sid,
                          "model_id": "leak2"})
            seen.append(json.dumps(reply_to(ws, "m")))
            ws.shut()
            for path in ("/metrics", "/healthz", "/readyz", "/api/sessions"):
                status, headers, body = http_get(d.port, path,
                                                 {"Authorization": "Bearer " + make_token("alice")})
                seen.append(body.decode(errors="replace"))
                seen.append(json.dumps(headers))
            with open("/proc/%d/cmdline" % d.proc.pid, "rb") as c:
                seen.append(c.read().decode(errors="replace"))
            metrics = http_get(d.port, "/metrics")[2].decode()
            assert "chatd_" in metrics, metrics[:200]
            d.stop()  # the whole log, shutdown included, before it is removed
            seen.append(d.log())
        # Errors about a key: a key with a space, and an unusable key file.
        bad = f.write("bad", KEY2 + " tail\n")
        line = expect_usage_error(["--model", "a=openai:http://h/v1,key-file=" + bad], "--model")
        seen.append(line)
        line = expect_usage_error(["--model", "a=openai:http://h/v1,key-env=K"], "--model",
                                  env={"K": KEY + " x"})
        seen.append(line)
        text = "\n".join(seen)
        for key in (KEY, KEY2):
            for part in (key, key[-24:], key[3:-3]):
                assert part not in text, "the key shows: %r" % text[max(0, text.find(part) - 200):
                                                                     text.find(part) + 200]
        assert not any(m in text for m in SANITIZER_MARKERS), text


if __name__ == "__main__":
    run([test_help_lists_the_assistant_options, test_model_spec_errors_exit_2,
         test_other_assistant_errors_exit_2, test_errors_from_environment_and_file_exit_2,
         test_openai_and_anthropic_models_start, test_default_model,
         test_environment_and_file_forms_and_precedence, test_models_alias,
         test_key_never_leaks])
