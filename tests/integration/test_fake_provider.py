"""The fake model provider (tests/fake_provider.py) behaves as documented,
checked with a plain HTTP client before chatd's tests rely on it.

Each test starts its own fake (a child process, SIGTERM at the end, exit 0
required) and reads its streams with http.client or a raw socket, parsing
the server-sent events with the small parser below, written apart from
chatd's. Covered: both stream shapes with their usage, deltas of whole
UTF-8, the key checks and error bodies of each API, bad requests, every
mode (slow, split, cut, stall, hang, malformed, error event, statuses,
huge, echo, crlf), directives against the default mode and the control
endpoint, counting and recorded bodies, keep-alive, and a clean SIGTERM
while requests hang.
"""
import http.client
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fake_provider import (HUGE_BYTES, FakeProvider, answer_for,  # noqa: E402
                           huge_text)
from harness import run  # noqa: E402

KEY = "sk-fake-0123456789"
USER = "Hello, w\u00f6rld \U0001F642"


# ---- a client --------------------------------------------------------------------

def sse_parse(raw):
    """Events of a text/event-stream body as (name, data) pairs; an event
    cut off before its blank line is dropped."""
    text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        name, data = "", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((name, "\n".join(data)))
    return events


def request(api, content, key=KEY, extra=None, messages=None, **fields):
    """(path, body, headers) of a streaming request for api."""
    if messages is None:
        messages = [{"role": "user", "content": content}]
    body = {"model": "fake-model", "messages": messages, "stream": True}
    headers = {"Content-Type": "application/json"}
    if api == "openai":
        path = "/v1/chat/completions"
        if key is not None:
            headers["Authorization"] = "Bearer " + key
    else:
        path = "/v1/messages"
        body["max_tokens"] = 1024
        headers["anthropic-version"] = "2023-06-01"
        if key is not None:
            headers["x-api-key"] = key
    body.update(fields)
    headers.update(extra or {})
    return path, body, headers


def post(fp, api, content, timeout=30, **kw):
    """Send a request; return (connection, response) with the head read."""
    path, body, headers = request(api, content, **kw)
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=timeout)
    conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
    return conn, conn.getresponse()


def call(fp, api, content, **kw):
    """Send a request and read it all: (status, headers, body bytes)."""
    conn, resp = post(fp, api, content, **kw)
    try:
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def stream(fp, api, content, **kw):
    status, resp, body = call(fp, api, content, **kw)
    assert status == 200, (status, body)
    assert resp.getheader("Content-Type").startswith("text/event-stream"), resp.getheaders()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    return sse_parse(body)


def deltas(api, events):
    """The text deltas of a stream, in order."""
    out = []
    for name, data in events:
        if data == "[DONE]":
            continue
        obj = json.loads(data)
        if api == "openai":
            for choice in obj.get("choices", []):
                if choice["delta"].get("content"):
                    out.append(choice["delta"]["content"])
        elif name == "content_block_delta":
            out.append(obj["delta"]["text"])
    return out


def raw_exchange(fp, api, content, read_for=None, **kw):
    """Send a request over a raw socket; return the bytes received until the
    server closes (or, with read_for, until that many seconds pass)."""
    path, body, headers = request(api, content, **kw)
    data = json.dumps(body).encode()
    head = "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (path, len(data))
    head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
    s = socket.create_connection(("127.0.0.1", fp.port), timeout=read_for or 30)
    s.sendall(head.encode() + data)
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except socket.timeout:
        if read_for is None:
            raise
    finally:
        s.close()
    return got


def dechunk(raw):
    """Split a raw chunked response into (head, [chunk payloads], complete)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks = []
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(line, 16)
        if size == 0:
            return head, chunks, True
        if len(rest) < size + 2:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2:]
    return head, chunks, False


def wait_for(cond, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met within %ss" % timeout)


# ---- the two stream shapes ---------------------------------------------------------

def test_openai_stream():
    with FakeProvider(key=KEY) as fp:
        history = [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "first question"},
                   {"role": "assistant", "content": "first answer"},
                   {"role": "user", "content": USER}]
        events = stream(fp, "openai", None, messages=history,
                        stream_options={"include_usage": True})
        assert all(name == "" for name, _ in events)
        assert events[-1][1] == "[DONE]"
        chunks = [json.loads(d) for _, d in events[:-1]]
        for c in chunks:
            assert c["object"] == "chat.completion.chunk" and c["model"] == "fake-model", c
            assert c["id"] == chunks[0]["id"]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        got = deltas("openai", events)
        assert "".join(got) == answer_for(USER) == "Answer to: \u00ab" + USER + "\u00bb"
        # Deltas of 4 bytes, stretched to whole characters; some multi-byte.
        sizes = [len(d.encode()) for d in got]
        assert all(4 <= n <= 7 for n in sizes[:-1]) and 1 <= sizes[-1] <= 7, sizes
        assert any(len(d.encode()) > len(d) for d in got), got
        finish = chunks[-2]
        assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": "stop"}] and finish["usage"] is None
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
        usage = chunks[-1]
        assert usage["choices"] == []
        words = len("Be brief. first question first answer".split()) + len(USER.split())
        assert usage["usage"] == {"prompt_tokens": words, "completion_tokens": len(got),
                                  "total_tokens": words + len(got)}, usage
        # Without include_usage: no usage anywhere.
        events = stream(fp, "openai", "hi")
        assert events[-1][1] == "[DONE]"
        chunks = [json.loads(d) for _, d in events[:-1]]
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert "".join(deltas("openai", events)) == answer_for("hi")


def test_anthropic_stream():
    with FakeProvider(key=KEY, mode="chunk=1") as fp:
        events = stream(fp, "anthropic", None, system="Be brief.",
                        messages=[{"role": "user", "content": [{"type": "text", "text": USER}]}])
        names = [n for n, _ in events]
        got = deltas("anthropic", events)
        n = len(got)
        assert n > 16  # chunk=1: one character per delta, so a ping in between
        want = (["message_start", "content_block_start", "ping"] +
                [x for i in range(n) for x in (["content_block_delta"] +
                                               (["ping"] if (i + 1) % 16 == 0 else []))] +
                ["content_block_stop", "message_delta", "message_stop"])
        assert names == want, names
        objs = [json.loads(d) for _, d in events]
        assert all(o["type"] == name for o, name in zip(objs, names))
        start = objs[0]["message"]
        assert start["role"] == "assistant" and start["model"] == "fake-model"
        assert start["usage"]["input_tokens"] == 2 + len(USER.split())
        assert objs[1]["content_block"] == {"type": "text", "text": ""}
        assert "".join(got) == answer_for(USER)
        assert got == list(answer_for(USER))  # whole characters, the emoji included
        md = objs[-2]
        assert md["delta"]["stop_reason"] == "end_turn" and md["usage"]["output_tokens"] == n


# ---- keys and bad requests ---------------------------------------------------------

def test_auth():
    with FakeProvider(key=KEY) as fp:
        for key in (None, "wrong"):
            status, resp, body = call(fp, "openai", "hi", key=key)
            err = json.loads(body)["error"]
            assert status == 401 and err["code"] == "invalid_api_key", body
            assert err["type"] == "invalid_request_error" and err["message"]
            status, resp, body = call(fp, "anthropic", "hi", key=key)
            assert status == 401, body
            assert json.loads(body) == {"type": "error", "error": {
                "type": "authentication_error", "message": "invalid x-api-key"}}
        # Each API's own header only.
        status, _, _ = call(fp, "anthropic", "hi", key=None,
                            extra={"Authorization": "Bearer " + KEY})
        assert status == 401
        status, _, _ = call(fp, "openai", "hi", key=None, extra={"x-api-key": KEY})
        assert status == 401
        # Anthropic wants its version header.
        path, body, headers = request("anthropic", "hi")
        del headers["anthropic-version"]
        conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        err = json.loads(resp.read())
        assert resp.status == 400 and err["error"]["type"] == "invalid_request_error", err
        conn.close()
        assert fp.stats()["requests"] == 7
    # Without --key any key passes.
    with FakeProvider(key=None) as fp:
        assert len(stream(fp, "openai", "hi", key="anything")) > 3


def test_bad_requests():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            for fields in ({"stream": False}, {"messages": []}, {"model": 5}):
                status, _, body = call(fp, api, "hi", **fields)
                assert status == 400, (api, fields, body)
            status, _, body = call(fp, api, "hi [fake:nonsense]")
            assert status == 400 and b"nonsense" in body, body
        status, _, body = call(fp, "anthropic", "hi", max_tokens=None)
        assert status == 400 and b"max_tokens" in body
        for path, data in (("/v1/chat/completions", b"{not json"), ("/v1/other", b"{}")):
            conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
            conn.request("POST", path, body=data,
                         headers={"Authorization": "Bearer " + KEY})
            resp = conn.getresponse()
            assert resp.status == (400 if "chat" in path else 404)
            assert json.loads(resp.read())["error"]["message"]
            conn.close()


# ---- modes -----------------------------------------------------------------------------

def test_error_statuses():
    with FakeProvider(key=KEY, mode="retry-after=7") as fp:
        for api in ("openai", "anthropic"):
            for code in (429, 500, 503, 529):
                status, resp, body = call(fp, api, "hi [fake:%d]" % code)
                assert status == code, (api, code, status)
                err = json.loads(body)
                if api == "openai":
                    assert set(err["error"]) == {"message", "type", "param", "code"}
                else:
                    assert err["type"] == "error" and err["error"]["message"]
                retry = resp.getheader("Retry-After")
                assert retry == ("7" if code in (429, 503, 529) else None), (code, retry)
        assert json.loads(call(fp, "openai", "[fake:429]")[2])["error"]["code"] == \
            "rate_limit_exceeded"
        assert json.loads(call(fp, "anthropic", "[fake:429]")[2])["error"]["type"] == \
            "rate_limit_error"
        assert json.loads(call(fp, "anthropic", "[fake:529]")[2])["error"]["type"] == \
            "overloaded_error"
        status, resp, _ = call(fp, "openai", "[fake:401]")
        assert status == 401 and resp.getheader("Retry-After") is None


def test_slow():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            conn, resp = post(fp, api, "[fake:slow=60]")
            assert resp.status == 200
            arrivals, buf = [], b""
            while True:
                line = resp.readline()
                if not line:
                    break
                buf += line
                if b"text_delta" in line or b'"content":"' in line and b'"role"' not in line:
                    arrivals.append(time.monotonic())
            conn.close()
            n = len(deltas(api, sse_parse(buf)))
            assert n == len(arrivals) and n >= 5, (n, len(arrivals))
            # Paced: the deltas take at least (n - 1) pauses in all. A
            # single gap can be short on a busy machine (two deltas read in
            # one wake-up after a late one), so only the whole is timed.
            assert arrivals[-1] - arrivals[0] >= 0.055 * (n - 1), arrivals


def test_split():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            raw = raw_exchange(fp, api, "split me [fake:split]",
                               extra={"Connection": "close"})
            head, chunks, complete = dechunk(raw)
            assert head.startswith(b"HTTP/1.1 200") and complete
            assert len(chunks) > 100 and max(len(c) for c in chunks) <= 7, len(chunks)
            got = deltas(api, sse_parse(b"".join(chunks)))
            assert "".join(got) == answer_for("split me [fake:split]")


def test_cut():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            whole = deltas(api, stream(fp, api, "a fairly long question"))
            raw = raw_exchange(fp, api, "a fairly long question [fake:cut]")
            head, chunks, complete = dechunk(raw)
            assert head.startswith(b"HTTP/1.1 200") and not complete
            events = sse_parse(b"".join(chunks))
            got = deltas(api, events)
            assert 1 <= len(got) < len(whole) - 1, (len(got), len(whole))
            names = [n for n, _ in events]
            datas = [d for _, d in events]
            assert "[DONE]" not in datas and "message_stop" not in names
            assert all('"finish_reason":"stop"' not in d for d in datas)
            # http.client sees the truncation too.
            conn, resp = post(fp, api, "[fake:cut]")
            try:
                resp.read()
                raise AssertionError("a cut stream read as complete")
            except http.client.IncompleteRead:
                pass
            conn.close()


def test_malformed_and_error_event():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            events = stream(fp, api, "tell me [fake:malformed]")
            bad = []
            for i, (_, d) in enumerate(events):
                try:
                    json.loads(d)
                except ValueError:
                    if d != "[DONE]":
                        bad.append(i)
            assert len(bad) == 1 and 2 < bad[0] < len(events) - 3, (bad, len(events))
            good = events[:bad[0]] + events[bad[0] + 1:]
            assert "".join(deltas(api, good)) == answer_for("tell me [fake:malformed]")

            events = stream(fp, api, "tell me [fake:error-event]")
            name, data = events[-1]
            err = json.loads(data)
            if api == "openai":
                assert name == "" and err["error"]["type"] == "server_error"
            else:
                assert name == "error" and err["error"]["type"] == "overloaded_error"
            assert 0 < len(deltas(api, events[:-1])) < len(answer_for("tell me [fake:x]"))


def test_crlf():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            raw = raw_exchange(fp, api, "crlf [fake:crlf]", extra={"Connection": "close"})
            head, chunks, complete = dechunk(raw)
            body = b"".join(chunks)
            assert complete and body.count(b"\r\n\r\n") >= 5 and b"\n\n" not in body
            assert "".join(deltas(api, sse_parse(body))) == answer_for("crlf [fake:crlf]")


def test_hang_and_stall():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            t0 = time.time()
            raw = raw_exchange(fp, api, "[fake:hang]", read_for=1.0)
            assert raw == b"" and time.time() - t0 >= 0.9
            # The client went away: the fake noticed and let go.
            wait_for(lambda: fp.stats()["active"] == 0)

            conn, resp = post(fp, api, "some words to say [fake:stall]", timeout=1.0)
            assert resp.status == 200
            buf = b""
            try:
                while True:
                    line = resp.readline()
                    if not line:
                        break
                    buf += line
            except socket.timeout:
                pass
            conn.close()
            got = deltas(api, sse_parse(buf))
            assert 0 < len(got) < len(answer_for("some words to say [fake:stall]")) / 4
            wait_for(lambda: fp.stats()["active"] == 0)
        assert fp.stats()["aborted"] == 4


def test_huge():
    with FakeProvider(key=KEY) as fp:
        for api in ("openai", "anthropic"):
            events = stream(fp, api, "[fake:huge]", timeout=120)
            got = deltas(api, events)
            text = "".join(got)
            assert len(text.encode()) == HUGE_BYTES == 10_000_000
            assert text == huge_text()
            assert len(got) == HUGE_BYTES // 1000
        text = "".join(deltas("openai", stream(fp, "openai", "[fake:huge=2500,chunk=100]")))
        assert text == huge_text(2500)


def test_echo_and_context():
    with FakeProvider(key=KEY) as fp:
        msgs = [{"role": "user", "content": "one [fake:500]"},
                {"role": "assistant", "content": "Answer to: one"},
                {"role": "user", "content": [{"type": "text", "text": "two, "},
                                             {"type": "text", "text": USER + " [fake:echo]"}]}]
        for api in ("openai", "anthropic"):
            # Only the last user message's directives count: no 500 here.
            got = deltas(api, stream(fp, api, None, messages=msgs))
            assert "".join(got) == "two, " + USER + " [fake:echo]"
        last = fp.stats()["last"]
        assert [r["body"]["messages"] for r in last] == [msgs, msgs]


def test_default_mode_and_control():
    with FakeProvider(key=KEY, mode="echo") as fp:
        assert "".join(deltas("openai", stream(fp, "openai", "ping"))) == "ping"
        # A directive adds to the default; "normal" resets it.
        assert "".join(deltas("openai", stream(fp, "openai", "x [fake:normal]"))) == \
            answer_for("x [fake:normal]")
        info = fp.set_mode("503", retry_after=3)
        assert info == {"mode": "503", "delay_ms": 50, "chunk": 4, "retry_after": 3}
        status, resp, _ = call(fp, "anthropic", "hi")
        assert status == 503 and resp.getheader("Retry-After") == "3"
        fp.set_mode("normal", chunk=2)
        got = deltas("anthropic", stream(fp, "anthropic", "hi"))
        assert "".join(got) == answer_for("hi") and max(len(d.encode()) for d in got) <= 3
        assert fp.control("GET", "/_fake/mode")["chunk"] == 2
        # A bad mode is refused and changes nothing.
        conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
        conn.request("POST", "/_fake/mode", body=b'{"mode":"sideways"}')
        resp = conn.getresponse()
        assert resp.status == 400 and b"sideways" in resp.read()
        conn.close()
        assert fp.control("GET", "/_fake/mode")["mode"] == "normal"


def test_stats_and_keep_alive():
    with FakeProvider(key=KEY) as fp:
        assert fp.stats() == {"requests": 0, "by_path": {}, "by_api": {}, "active": 0,
                              "aborted": 0, "last": []}
        # Three requests on one connection: keep-alive after streams and errors.
        conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
        for api, content in (("openai", "a"), ("openai", "b [fake:429]"), ("anthropic", "c")):
            path, body, headers = request(api, content)
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == (429 if "429" in content else 200)
        conn.close()
        call(fp, "anthropic", "d", key="wrong")
        # A handler thread may still be leaving its request after the client
        # has read the whole answer: wait for it, on a loaded machine too.
        deadline = time.time() + 10
        st = fp.stats()
        while st["active"] and time.time() < deadline:
            time.sleep(0.02)
            st = fp.stats()
        assert st["requests"] == 4 and st["active"] == 0 and st["aborted"] == 0, st
        assert st["by_path"] == {"/v1/chat/completions": 2, "/v1/messages": 2}
        assert st["by_api"] == {"openai": 2, "anthropic": 2}
        contents = [r["body"]["messages"][-1]["content"] for r in st["last"]]
        assert contents == ["a", "b [fake:429]", "c", "d"]
        assert st["last"][0]["headers"]["authorization"] == "Bearer " + KEY
        assert st["last"][2]["headers"]["anthropic-version"] == "2023-06-01"
        # Only the last 20 are kept; reset forgets everything.
        for i in range(22):
            call(fp, "openai", "n%d [fake:500]" % i)
        st = fp.stats()
        assert st["requests"] == 26 and len(st["last"]) == 20
        assert st["last"][-1]["body"]["messages"][0]["content"] == "n21 [fake:500]"
        fp.reset()
        assert fp.stats()["requests"] == 0 and fp.stats()["last"] == []
        # Paths under any base count under their own name.
        conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
        path, body, headers = request("openai", "e")
        conn.request("POST", "/api/openai/v1/chat/completions", body=json.dumps(body),
                     headers=headers)
        assert conn.getresponse().status == 200
        conn.close()
        assert fp.stats()["by_path"] == {"/api/openai/v1/chat/completions": 1}


def test_sigterm_with_requests_open():
    fp = FakeProvider(key=KEY).start()
    socks = []
    for api, mode in (("openai", "hang"), ("anthropic", "stall"), ("openai", "slow=1000")):
        path, body, headers = request(api, "[fake:%s]" % mode)
        data = json.dumps(body).encode()
        s = socket.create_connection(("127.0.0.1", fp.port), timeout=10)
        head = "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (path, len(data))
        s.sendall((head + "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n")
                  .encode() + data)
        socks.append(s)
    wait_for(lambda: fp.stats()["active"] == 3)
    t0 = time.time()
    fp.stop(timeout=5)  # asserts exit status 0
    assert time.time() - t0 < 3
    for s in socks:
        s.close()


def test_command_line():
    for args in (["--mode", "bogus"], ["--chunk", "0"]):
        fp = FakeProvider(*args)
        try:
            fp.start()
            raise AssertionError("started with %s" % args)
        except AssertionError as e:
            assert "did not start" in str(e), e
        assert fp.proc.returncode == 2, fp.proc.returncode
    # Options as documented; the port line comes first.
    with FakeProvider("--delay-ms", "10", "--chunk", "3", "--retry-after", "2", key=KEY,
                      mode="slow") as fp:
        assert fp.control("GET", "/_fake/mode") == {"mode": "slow", "delay_ms": 10, "chunk": 3,
                                                    "retry_after": 2}
        t0 = time.time()
        got = deltas("openai", stream(fp, "openai", "abcdefghijklmnopqrstuvwxyz"))
        assert got[0] == "Ans" and time.time() - t0 >= 0.01 * (len(got) - 1)


if __name__ == "__main__":
    run([test_openai_stream, test_anthropic_stream, test_auth, test_bad_requests,
         test_error_statuses, test_slow, test_split, test_cut, test_malformed_and_error_event,
         test_crlf, test_hang_and_stall, test_huge, test_echo_and_context,
         test_default_mode_and_control, test_stats_and_keep_alive,
         test_sigterm_with_requests_open, test_command_line])
