#!/usr/bin/python3
"""A fake model provider for chatd's tests: a local HTTP/1.1 server that
streams answers the way OpenAI-compatible chat completions and Anthropic's
Messages API do, with failures on demand. Standard library only (Debian's
/usr/bin/python3).

Endpoints (any prefix, so a base URL of http://127.0.0.1:PORT/v1 works):
  POST {base}/chat/completions  OpenAI chat completions, "stream": true.
      Auth: "Authorization: Bearer KEY". Events: `data: {chunk}`, the
      first with delta {"role":"assistant","content":""}, then one per
      delta, then one with finish_reason "stop", then (when
      stream_options.include_usage is true) one with "choices": [] and
      the usage, then `data: [DONE]`. With include_usage every chunk
      carries "usage": null before that, as the real service does.
  POST {base}/messages          Anthropic Messages, "stream": true.
      Auth: "x-api-key: KEY" and an "anthropic-version" header. Events:
      message_start (usage.input_tokens), content_block_start, ping, one
      content_block_delta per delta ({"type":"text_delta","text":...}),
      another ping after every 16th delta, content_block_stop,
      message_delta (stop_reason "end_turn", usage.output_tokens),
      message_stop.
  GET  /_fake/stats   {"requests", "by_path", "by_api", "active", "aborted",
                      "last": [up to 20 recent requests, oldest first:
                      {"path", "api", "headers", "body"}]}; every request
                      to an API path counts, refused ones included;
                      "active" are being answered now, "aborted" ended
                      because the client left first.
  POST /_fake/reset   zero the counters and forget the recorded requests.
  GET  /_fake/mode    the default behaviour; POST it {"mode": "...",
                      "delay_ms": N, "chunk": N} to change it.
Streams use chunked transfer encoding, one chunk per event unless the
pacing says otherwise. Errors use each API's own error body. A wrong or
missing key is 401; a body that is not JSON, lacks "model" or "messages",
is not "stream": true, or (Anthropic) lacks "max_tokens" is 400.

The answer. For normal mode it is answer_for(last user message), e.g.
"Answer to: «hello»", streamed in deltas of `chunk` bytes (default 4),
each extended to the end of a character so that a delta is always whole
UTF-8 (the guillemets are two bytes each, so some deltas hold multi-byte
characters). Usage: input tokens are the words (whitespace-separated) of
every message and the system prompt; output tokens are the deltas.

Behaviour. A mode is a list of tokens separated by commas or spaces:
  normal           answer_for(...), paced fast, complete (resets the rest)
  echo             the answer is the last user message itself
  huge[=BYTES]     the answer is huge_text(BYTES) (default 10,000,000 bytes),
                   in deltas of 1000 bytes (a later chunk=N overrides)
  slow[=MS]        sleep MS (default --delay-ms, 50) before each delta
  split            write every event in pieces of 1 to 7 bytes, each its own
                   chunk and TCP segment (TCP_NODELAY, a short sleep apart)
  burst            write the whole stream's events at once: one chunk, one
                   write (a provider running ahead of its reader)
  cut              stop mid-stream: after half the deltas, close the
                   connection (no final events, no final chunk)
  stall            send the head and half the deltas, then nothing
  hang             read the request, then send nothing at all
  malformed        after half the deltas, one event whose data is not JSON;
                   the rest of the stream follows as usual
  error-event      after half the deltas, the API's mid-stream error event
                   (OpenAI: data {"error":...}; Anthropic: event: error),
                   then the stream ends
  400..599         answer with that status and the API's error body (429
                   and 503 carry Retry-After)
  crlf             end lines with CRLF instead of LF
  fast, complete   undo slow, split or burst; undo cut, stall, hang, malformed,
                   error-event or a status
  delay=MS  chunk=BYTES  retry-after=SECONDS
The default mode comes from --mode (then POST /_fake/mode); a request
may add tokens with directives in its last user message's content,
"[fake:slow]", "[fake:echo,cut]", applied after the default. Directives
in earlier messages are ignored, so history replayed by chatd does not
trigger them again. An unknown token is a 400 (or, on the command line,
exit status 2).

Command line: fake_provider.py [--host H] [--port 0] [--key KEY]
[--mode MODE] [--delay-ms N] [--chunk N] [--retry-after S] [--verbose].
It prints "listening PORT" on stdout first thing, and exits 0 on SIGTERM
or SIGINT. Without --key any key is accepted (the headers must still be
there).

Tests use the FakeProvider class below to run it as a child process.
"""
import argparse
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_DELAY_MS = 50
DEFAULT_CHUNK = 4
DEFAULT_RETRY_AFTER = 1
HUGE_BYTES = 10_000_000
HUGE_CHUNK = 1000
RECENT = 20                        # requests kept for /_fake/stats
SPLIT_SIZES = (1, 3, 2, 7, 1, 5, 4, 2, 6, 1)  # piece sizes of split mode, cycled
SPLIT_PAUSE = 0.0002               # seconds between two pieces in split mode
PING_EVERY = 16                    # Anthropic: a ping after every so many deltas
DIRECTIVE_RE = re.compile(r"\[fake:([^\]]*)\]")
HUGE_LINE = "%08d The quick brown fox jumps over the lazy dog.\n"  # 54 bytes


# ---- what the answers are (tests import these to predict them) -------------

def assemble(pieces):
    """The answer a client builds from its ai_response pieces (done: false),
    placing each by its offset. Asserts there is no gap and that no byte is
    changed: a catch-up from offset 0 (after a reconnect, or on another
    node) may only repeat what the client had."""
    text = b""
    for p in pieces:
        d, off = p["delta"].encode(), p["offset"]
        if off == 0 and text:
            assert d.startswith(text), (text, d)
            text = d
            continue
        assert off == len(text), "piece at %d, have %d bytes" % (off, len(text))
        text += d
    return text.decode()


def answer_for(text):
    """The answer of normal mode to a last user message."""
    return "Answer to: \u00ab" + text + "\u00bb"


def huge_text(size=HUGE_BYTES):
    """The answer of huge mode: numbered ASCII lines, cut to size bytes."""
    n = size // len(HUGE_LINE % 0) + 1
    return "".join(HUGE_LINE % i for i in range(n))[:size]


def split_deltas(text, chunk):
    """Cut text into deltas of at least chunk bytes of UTF-8 (the last may be
    shorter), never inside a character."""
    if text.isascii():
        return [text[i:i + chunk] for i in range(0, len(text), chunk)]
    deltas, cur, size = [], [], 0
    for ch in text:
        cur.append(ch)
        size += len(ch.encode("utf-8"))
        if size >= chunk:
            deltas.append("".join(cur))
            cur, size = [], 0
    if cur:
        deltas.append("".join(cur))
    return deltas


def content_text(content):
    """The text of a message's content: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
        return "".join(out)
    return ""


def last_user_text(messages):
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def count_words(body):
    """Input tokens: the words of every message and of the system prompt."""
    texts = [content_text(m.get("content")) for m in body.get("messages", [])
             if isinstance(m, dict)]
    texts.append(content_text(body.get("system")))
    return sum(len(t.split()) for t in texts)


# ---- behaviour -------------------------------------------------------------------

class Plan:
    """What to do with one request: built from the default mode, then the
    request's directives."""

    def __init__(self, delay_ms, chunk, retry_after):
        self.delay_ms = delay_ms
        self.chunk = chunk
        self.retry_after = retry_after
        self.huge_bytes = HUGE_BYTES
        self.normal()

    def normal(self):
        self.text = "answer"       # answer, echo, huge
        self.pace = "fast"         # fast, slow, split, burst
        self.end = "complete"      # complete, cut, stall, hang, malformed, error-event, status
        self.status = None
        self.crlf = False

    def apply(self, spec):
        """Apply a mode string; ValueError names a bad token."""
        for tok in re.split(r"[,\s]+", spec.strip()):
            if tok:
                self._token(tok)
        return self

    def _token(self, tok):
        name, eq, value = tok.partition("=")

        def number(lo):
            try:
                v = int(value)
            except ValueError:
                raise ValueError("fake: %r needs a number" % tok) from None
            if v < lo:
                raise ValueError("fake: %r is too small" % tok)
            return v

        if name == "normal" and not eq:
            self.normal()
        elif name == "echo" and not eq:
            self.text = "echo"
        elif name == "huge":
            self.text = "huge"
            self.chunk = HUGE_CHUNK
            if eq:
                self.huge_bytes = number(1)
        elif name == "slow":
            self.pace = "slow"
            if eq:
                self.delay_ms = number(0)
        elif name in ("fast", "split", "burst") and not eq:
            self.pace = name
        elif name in ("complete", "cut", "stall", "hang", "malformed", "error-event") and not eq:
            self.end = name
        elif re.fullmatch(r"[45]\d\d", name) and not eq:
            self.end, self.status = "status", int(name)
        elif name == "crlf" and not eq:
            self.crlf = True
        elif name == "delay" and eq:
            self.delay_ms = number(0)
        elif name == "chunk" and eq:
            self.chunk = number(1)
        elif name == "retry-after" and eq:
            self.retry_after = number(0)
        else:
            raise ValueError("fake: unknown mode token %r" % tok)


class State:
    """Everything the handler threads share, under one lock."""

    def __init__(self, key, mode, delay_ms, chunk, retry_after, verbose):
        self.key = key
        self.verbose = verbose
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.mode = mode
        self.delay_ms = delay_ms
        self.chunk = chunk
        self.retry_after = retry_after
        self.serial = 0
        self.reset()

    def reset(self):
        self.requests = 0
        self.by_path = {}
        self.by_api = {}
        self.active = 0
        self.aborted = 0
        self.last = []

    def plan(self, directives):
        with self.lock:
            plan = Plan(self.delay_ms, self.chunk, self.retry_after).apply(self.mode)
        for d in directives:
            plan.apply(d)
        return plan

    def record(self, path, api, headers, body):
        with self.lock:
            self.requests += 1
            self.serial += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            self.by_api[api] = self.by_api.get(api, 0) + 1
            self.last.append({"path": path, "api": api, "headers": headers, "body": body})
            del self.last[:-RECENT]
            return self.serial

    def stats(self):
        with self.lock:
            return {"requests": self.requests, "by_path": dict(self.by_path),
                    "by_api": dict(self.by_api), "active": self.active,
                    "aborted": self.aborted, "last": list(self.last)}

    def add(self, field, n):
        with self.lock:
            setattr(self, field, getattr(self, field) + n)


# ---- the two APIs --------------------------------------------------------------

ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         403: "permission_error", 404: "not_found_error",
                         413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 529: "overloaded_error"}
OPENAI_ERRORS = {401: ("invalid_request_error", "invalid_api_key"),
                 429: ("requests", "rate_limit_exceeded")}


def openai_error(status, message):
    etype, code = OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


def anthropic_error(status, message):
    etype = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500
                                      else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def openai_events(body, deltas, serial):
    """The OpenAI stream as (is_delta, name, data) triples."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": "chatcmpl-fake%d" % serial, "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body.get("model"),
            "system_fingerprint": "fp_fake"}

    def chunk(delta, finish=None):
        c = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}])
        if include_usage:
            c["usage"] = None
        return dumps(c)

    out = [(False, None, chunk({"role": "assistant", "content": ""}))]
    out += [(True, None, chunk({"content": d})) for d in deltas]
    out.append((False, None, chunk({}, "stop")))
    if include_usage:
        prompt = count_words(body)
        out.append((False, None, dumps(dict(base, choices=[], usage={
            "prompt_tokens": prompt, "completion_tokens": len(deltas),
            "total_tokens": prompt + len(deltas)}))))
    out.append((False, None, "[DONE]"))
    return out


def anthropic_events(body, deltas, serial):
    """The Anthropic stream as (is_delta, name, data) triples."""
    start = {"type": "message_start", "message": {
        "id": "msg_fake%d" % serial, "type": "message", "role": "assistant",
        "model": body.get("model"), "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": count_words(body), "output_tokens": 1}}}
    ping = (False, "ping", '{"type": "ping"}')
    out = [(False, "message_start", dumps(start)),
           (False, "content_block_start", dumps({"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})),
           ping]
    for i, d in enumerate(deltas):
        out.append((True, "content_block_delta", dumps({
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": d}})))
        if (i + 1) % PING_EVERY == 0:
            out.append(ping)
    out += [(False, "content_block_stop", dumps({"type": "content_block_stop", "index": 0})),
            (False, "message_delta", dumps({
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(deltas)}})),
            (False, "message_stop", dumps({"type": "message_stop"}))]
    return out


MALFORMED = {"openai": (None, '{"id":"chatcmpl-fake","object":"chat.completion.chunk",'
                              '"choices":[{"index":0,"delta":{"content":"oops"'),
             "anthropic": ("content_block_delta", '{"type":"content_block_delta","index":0,'
                                                  '"delta":{"type":"text_delta","text":"oops')}
STREAM_ERROR = {
    "openai": (None, dumps({"error": {"message": "The server had an error while processing "
                                                 "your request.", "type": "server_error",
                                      "param": None, "code": None}})),
    "anthropic": ("error", dumps({"type": "error", "error": {"type": "overloaded_error",
                                                             "message": "Overloaded"}})),
}


# ---- the server ------------------------------------------------------------------

class ClientGone(Exception):
    """The client closed the connection, or the fake is stopping."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-provider/1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def state(self):
        return self.server.state

    def log_message(self, fmt, *args):
        if self.state.verbose:
            sys.stderr.write("fake_provider: " + (fmt % args) + "\n")

    # -- plain answers

    def send_json(self, status, obj, extra=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def send_api_error(self, api, status, message, extra=None):
        body = anthropic_error(status, message) if api == "anthropic" else \
            openai_error(status, message)
        self.send_json(status, body, extra)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # -- routes

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/_fake/stats":
            self.send_json(200, self.state.stats())
        elif path == "/_fake/mode":
            self.send_json(200, self.mode_info())
        else:
            self.send_api_error("openai", 404, "Invalid URL (GET %s)" % path)

    def do_POST(self):
        path = self.path.split("?")[0]
        if path.startswith("/_fake/"):
            self.control(path)
        elif path.endswith("/chat/completions"):
            self.api(path, "openai")
        elif path.endswith("/messages"):
            self.api(path, "anthropic")
        else:
            self.read_body()
            self.send_api_error("openai", 404, "Invalid URL (POST %s)" % path)

    def mode_info(self):
        s = self.state
        with s.lock:
            return {"mode": s.mode, "delay_ms": s.delay_ms, "chunk": s.chunk,
                    "retry_after": s.retry_after}

    def control(self, path):
        raw = self.read_body()
        s = self.state
        if path == "/_fake/reset":
            with s.lock:
                s.reset()
            self.send_json(200, {"ok": True})
            return
        if path != "/_fake/mode":
            self.send_json(404, {"error": "no such control endpoint"})
            return
        try:
            req = json.loads(raw or b"{}")
            mode = req.get("mode", s.mode)
            delay_ms = int(req.get("delay_ms", s.delay_ms))
            chunk = int(req.get("chunk", s.chunk))
            retry_after = int(req.get("retry_after", s.retry_after))
            Plan(delay_ms, chunk, retry_after).apply(mode)  # refuse bad ones now
            if delay_ms < 0 or chunk < 1 or retry_after < 0:
                raise ValueError("fake: delay_ms, chunk or retry_after out of range")
        except (ValueError, TypeError, AttributeError) as e:
            self.send_json(400, {"error": str(e)})
            return
        with s.lock:
            s.mode, s.delay_ms, s.chunk, s.retry_after = mode, delay_ms, chunk, retry_after
        self.send_json(200, self.mode_info())

    def api(self, path, api):
        raw = self.read_body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        serial = self.state.record(path, api, headers,
                                   body if body is not None else raw.decode("utf-8", "replace"))
        self.state.add("active", 1)
        try:
            self.answer(api, body, serial)
        except ClientGone:
            self.state.add("aborted", 1)
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.state.add("aborted", 1)
            self.close_connection = True
        finally:
            self.state.add("active", -1)

    def auth_error(self, api):
        key = self.state.key
        if api == "openai":
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or (key is not None and auth[7:] != key):
                return 401, "Incorrect API key provided."
        else:
            got = self.headers.get("x-api-key")
            if got is None or (key is not None and got != key):
                return 401, "invalid x-api-key"
            if not self.headers.get("anthropic-version"):
                return 400, "anthropic-version: header is required"
        return None

    def body_error(self, api, body):
        if not isinstance(body, dict):
            return "the body is not a JSON object"
        if not isinstance(body.get("model"), str):
            return "model: field required"
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "messages: a non-empty array is required"
        if api == "anthropic" and not isinstance(body.get("max_tokens"), int):
            return "max_tokens: field required"
        if body.get("stream") is not True:
            return "stream: this fake only streams; send \"stream\": true"
        return None

    def answer(self, api, body, serial):
        err = self.auth_error(api)
        if err:
            self.send_api_error(api, err[0], err[1])
            return
        msg = self.body_error(api, body)
        if msg:
            self.send_api_error(api, 400, msg)
            return
        last = last_user_text(body["messages"])
        try:
            plan = self.state.plan(DIRECTIVE_RE.findall(last))
        except ValueError as e:
            self.send_api_error(api, 400, str(e))
            return
        if plan.end == "status":
            extra = {}
            if plan.status in (429, 503, 529):
                extra["Retry-After"] = str(plan.retry_after)
            self.send_api_error(api, plan.status, "fake error %d" % plan.status, extra)
            return
        if plan.end == "hang":
            self.wait_until_gone()
        if plan.text == "echo":
            text = last
        elif plan.text == "huge":
            text = huge_text(plan.huge_bytes)
        else:
            text = answer_for(last)
        deltas = split_deltas(text, plan.chunk)
        events = (anthropic_events if api == "anthropic" else openai_events)(body, deltas, serial)
        self.stream(api, plan, events, len(deltas), serial)

    # -- streaming

    def wait_until_gone(self):
        """Send nothing until the client closes or the fake stops; then end
        the request (ClientGone)."""
        while not self.state.stopping.is_set():
            r, _, _ = select.select([self.connection], [], [], 0.1)
            if r:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        break
                except OSError:
                    break
                time.sleep(0.1)  # bytes of a next request: not read while hanging
        raise ClientGone()

    def write_chunk(self, data):
        if self.state.stopping.is_set():
            raise ClientGone()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def stream(self, api, plan, events, ndeltas, serial):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id" if api == "anthropic" else "x-request-id",
                         "req_fake%d" % serial)
        self.end_headers()
        nl = "\r\n" if plan.crlf else "\n"
        half = max(1, ndeltas // 2)
        seen, piece = 0, 0
        held = []  # burst: the events not written yet
        for is_delta, name, data in events:
            if is_delta:
                if plan.pace == "slow":
                    if self.state.stopping.wait(plan.delay_ms / 1000.0):
                        raise ClientGone()
                seen += 1
            text = ("event: %s%s" % (name, nl) if name else "") + "data: " + data + nl + nl
            raw = text.encode("utf-8")
            if plan.pace == "split":
                pos = 0
                while pos < len(raw):
                    n = SPLIT_SIZES[piece % len(SPLIT_SIZES)]
                    piece += 1
                    self.write_chunk(raw[pos:pos + n])
                    pos += n
                    time.sleep(SPLIT_PAUSE)
            elif plan.pace == "burst":
                held.append(raw)
            else:
                self.write_chunk(raw)
            if not (is_delta and seen == half):
                continue
            if held and plan.end != "complete":
                self.write_chunk(b"".join(held))
                held = []
            if plan.end == "cut":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_WR)
                return
            if plan.end == "stall":
                self.wait_until_gone()
            if plan.end == "malformed":
                name, data = MALFORMED[api]
                self.write_chunk((("event: %s%s" % (name, nl) if name else "") + "data: " + data +
                                  nl + nl).encode("utf-8"))
            if plan.end == "error-event":
                name, data = STREAM_ERROR[api]
                self.write_chunk((("event: %s%s" % (name, nl) if name else "") + "data: " + data +
                                  nl + nl).encode("utf-8"))
                break
        if held:
            self.write_chunk(b"".join(held))
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler stuck writing to a client must not stop the exit
    allow_reuse_address = True
    request_queue_size = 1024  # hundreds of streams may connect at once


def main(argv=None):
    ap = argparse.ArgumentParser(description="A fake OpenAI / Anthropic streaming provider.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--key", help="the API key to expect (default: accept any)")
    ap.add_argument("--mode", default="normal", help="default behaviour (see the module doc)")
    ap.add_argument("--delay-ms", type=int, default=DEFAULT_DELAY_MS,
                    help="slow mode's pause before each delta")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="bytes per delta")
    ap.add_argument("--retry-after", type=int, default=DEFAULT_RETRY_AFTER,
                    help="Retry-After seconds of 429 and 503 answers")
    ap.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = ap.parse_args(argv)
    if args.chunk < 1 or args.delay_ms < 0 or args.retry_after < 0:
        ap.error("--chunk must be at least 1, --delay-ms and --retry-after at least 0")
    try:
        Plan(args.delay_ms, args.chunk, args.retry_after).apply(args.mode)
    except ValueError as e:
        ap.error(str(e))

    state = State(args.key, args.mode, args.delay_ms, args.chunk, args.retry_after, args.verbose)
    server = Server((args.host, args.port), Handler)
    server.state = state
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("listening %d" % server.server_address[1], flush=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    while not stop.wait(1.0):
        pass
    # Handlers see stopping within 0.1 s (hanging, stalled, slow or
    # writing); give them a moment to end, then go regardless.
    state.stopping.set()
    server.shutdown()
    server.server_close()
    deadline = time.time() + 2.0
    while state.stats()["active"] and time.time() < deadline:
        time.sleep(0.02)
    return 0


# ---- for tests: the fake as a child process ----------------------------------------

class FakeProvider:
    """Run the fake as a child process: `with FakeProvider(key="k") as fp:`.
    fp.port, fp.base_url (http://127.0.0.1:PORT/v1), fp.stats(), fp.reset(),
    fp.set_mode("slow", delay_ms=20). stop() sends SIGTERM and asserts a
    clean exit."""

    def __init__(self, *args, key="test-provider-key", mode=None):
        self.key = key
        self.argv = [sys.executable, os.path.abspath(__file__), "--port", "0"]
        if key is not None:
            self.argv += ["--key", key]
        if mode is not None:
            self.argv += ["--mode", mode]
        self.argv += list(args)
        self.proc = None
        self.port = None

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def start(self, timeout=10.0):
        # stderr goes to a file: a pipe nobody reads could fill and block it.
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.err)
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if r else ""
        m = re.fullmatch(r"listening (\d+)\n", line)
        if not m:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("fake provider did not start: %r %s" % (line, self.stderr()))
        self.port = int(m.group(1))
        return self

    def control(self, method, path, obj=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            body = json.dumps(obj).encode() if obj is not None else None
            conn.request(method, path, body=body,
                         headers={"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 200:
                raise AssertionError("fake provider %s %s: %s %s" % (method, path, resp.status,
                                                                     data))
            return data
        finally:
            conn.close()

    def stats(self):
        return self.control("GET", "/_fake/stats")

    def reset(self):
        return self.control("POST", "/_fake/reset", {})

    def set_mode(self, mode=None, **kw):
        obj = dict(kw)
        if mode is not None:
            obj["mode"] = mode
        return self.control("POST", "/_fake/mode", obj)

    def stop(self, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("fake provider did not exit on SIGTERM") from None
        self.proc.stdout.close()
        if rc != 0:
            raise AssertionError("fake provider exited %s:\n%s" % (rc, self.stderr()))
        return rc

    def stderr(self):
        """What the fake wrote on stderr so far."""
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def __enter__(self):
        return self.start()

    def __exit__(self, etype, exc, tb):
        if etype is None:
            self.stop()
        elif self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return False


if __name__ == "__main__":
    sys.exit(main())
