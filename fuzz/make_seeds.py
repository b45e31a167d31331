#!/usr/bin/python3
"""Write the seed corpora of the fuzzers (fuzz/corpus/<fuzzer>/).

fuzz_frame: four settings bytes (see fuzz_frame.c), then a client byte stream.
fuzz_http: one settings byte (see fuzz_http.c), then a request head.
fuzz_sse: four settings bytes (see fuzz_sse.c), then an event stream.
fuzz_envelope: a Redis bus message as one PUBLISH carries it (see
src/bus/envelope.h): batch messages, and the control messages.
fuzz_jwt: one mode byte (see fuzz_jwt.c), then a token, or a payload that
the target signs itself.
fuzz_seal: a seq byte and a session byte (see fuzz_seal.c), then a stored
value (read as sealed, and sealed as plain text).
fuzz_config: a mode byte (see fuzz_config.c), then a command line (NUL
between arguments) or a --config file.
fuzz_chat: a client byte and a cut byte (see fuzz_chat.c), then client
messages separated by NUL: one valid message of every type of PROTOCOL.md
section 3 and invalid variants of each.
fuzz_worker: two cut bytes (see fuzz_worker.c), then a whole client stream:
a WebSocket upgrade with a valid token and chat frames, or HTTP requests.
fuzz_provider: a flags byte and the first event's length (see
fuzz_provider.c), then two events' data, or one and the text spliced into
the first one's shape.
fuzz_row: after_seq, limit, max_bytes, help_only and session bytes (see
fuzz_row.c), then a sessions row and events rows, each column a typed
value, contents plain, sealed, sealed for another seq or garbage.
In fuzz_chat and fuzz_worker seeds, SID (s_ then 24 '@') stands for the
harness's own session of fuzz-user (fuzz/server_harness.h).
Files named found_* are inputs a fuzzer once failed on (a crash fixed in
src/, or a false alarm of a driver's check), kept as seeds; this script
leaves them alone.
Run once from anywhere: /usr/bin/python3 fuzz/make_seeds.py
"""
import base64
import hashlib
import hmac
import json
import os
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
MASK = b"\x37\xfa\x21\x3d"


def settings(mode=0, require_mask=True, small_frags=False, max_message=4096, param=7):
    b0 = mode | (4 if require_mask else 0) | (8 if small_frags else 0)
    return bytes([b0, max_message & 0xFF, (max_message >> 8) & 0xFF, param])


def frame(op, payload=b"", fin=True, masked=True, rsv=0, length=None):
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | op
    mbit = 0x80 if masked else 0
    if n < 126:
        hdr = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if not masked:
        return hdr + payload
    return hdr + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close(code, reason=b""):
    return frame(CLOSE, struct.pack(">H", code) + reason)


FRAME_SEEDS = {
    "text_masked": settings(0) + frame(TEXT, "Hello, w\u00f6rld \U0001F600".encode()),
    "fragmented_ping": settings(1, param=3)
    + frame(TEXT, b"Hel", fin=False)
    + frame(PING, b"ping")
    + frame(CONT, "lo \u20ac".encode()[:5], fin=False)
    + frame(PONG)
    + frame(CONT, "lo \u20ac".encode()[5:]),
    "close_reason": settings(2) + frame(TEXT, b"bye") + close(1000, b"going away"),
    "close_empty": settings(3, param=128) + frame(PING) + frame(CLOSE),
    "close_bad_code": settings(0, param=1) + close(1005),
    "len16_binary": settings(1, param=200) + frame(BINARY, bytes(range(256)) + bytes(44)),
    "len16_text_126": settings(3, max_message=126, param=5) + frame(TEXT, b"x" * 126),
    "len64_too_big": settings(0, max_message=4096, param=9)
    + frame(BINARY, b"", length=70000)
    + b"\x00" * 16,
    "len64_top_bit": settings(2) + bytes([0x82, 0xFF]) + b"\x80" + b"\x00" * 7 + MASK,
    "bad_utf8": settings(0, param=2) + frame(TEXT, b"ok \xc0\x80 not ok"),
    "utf8_split_fragments": settings(2)
    + frame(TEXT, b"a\xf0\x9f", fin=False)
    + frame(CONT, b"\x98", fin=False)
    + frame(CONT, b"\x80b"),
    "unmasked_server": settings(0, require_mask=False, param=4)
    + frame(TEXT, b"server", masked=False)
    + frame(BINARY, b"\x00\xff", fin=False, masked=False)
    + frame(CONT, b"", masked=False),
    "many_fragments": settings(1, small_frags=True, param=3)
    + frame(BINARY, b"1", fin=False)
    + b"".join(frame(CONT, b"x", fin=False) for _ in range(4))
    + frame(CONT, b"end"),
    # Allowance 1: each 16 payload bytes pay for one more frame, so the
    # 16-byte fragments pass, the first empty one too, the second does not.
    "paid_fragments": settings(0, small_frags=True, param=0)
    + frame(TEXT, b"0123456789abcdef", fin=False)
    + b"".join(frame(CONT, b"0123456789abcdef", fin=False) for _ in range(5))
    + frame(CONT, b"", fin=False)
    + frame(CONT, b"", fin=False)
    + frame(CONT, b"end"),
    "rsv_and_opcode": settings(0, param=20) + frame(TEXT, b"fine") + frame(3, b"?", rsv=0x40),
}


UPGRADE = (
    b"GET /ws?token=abc.def%2Eghi&room=lobby+1 HTTP/1.1\r\n"
    b"Host: localhost:8080\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

HTTP_SEEDS = {
    "upgrade": b"\x00" + UPGRADE,
    "upgrade_split": b"\x5a" + UPGRADE,
    "health": b"\x00GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "head_bare_lf": b"\x01HEAD /metrics?x HTTP/1.0\nUser-Agent: t\n",
    "post_body": b"\x00POST /login HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "te_and_cl": b"\x00POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n",
    "http2": b"\x01GET / HTTP/2.0",
    "bad_escape": b"\x01GET /ws?token=%zz&room=%4 HTTP/1.1",
    "many_headers": b"\x01GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)),
    "garbage": b"\x00\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n",
}


def sse_settings(mode=0, stop_after=0, stop_negative=False, max_line=511, max_event=1021,
                 param=7):
    b0 = mode | (stop_after << 2) | (0x20 if stop_negative else 0)
    return bytes([b0, (max_line - 1) // 2, (max_event - 1) // 4, param])


def openai_chunk(delta, finish=None):
    return b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,' \
        b'"delta":' + delta + b',"finish_reason":' + finish + b'}]}\n\n'


OPENAI_STREAM = (
    openai_chunk(b'{"role":"assistant","content":""}', b"null")
    + openai_chunk(b'{"content":"Answer to: \xc2\xab"}', b"null")
    + openai_chunk(b'{"content":"hi \xf0\x9f\x99\x82"}', b"null")
    + openai_chunk(b"{}", b'"stop"')
    + b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}\n\n'
    + b"data: [DONE]\n\n"
)


def anthropic_event(name, data):
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


ANTHROPIC_STREAM = (
    anthropic_event(b"message_start", b'{"type":"message_start","message":{"id":"msg_1",'
                    b'"usage":{"input_tokens":3,"output_tokens":1}}}')
    + anthropic_event(b"content_block_start", b'{"type":"content_block_start","index":0,'
                      b'"content_block":{"type":"text","text":""}}')
    + anthropic_event(b"ping", b'{"type": "ping"}')
    + anthropic_event(b"content_block_delta", b'{"type":"content_block_delta","index":0,'
                      b'"delta":{"type":"text_delta","text":"Hel\xe2\x82\xac"}}')
    + anthropic_event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
    + anthropic_event(b"message_delta", b'{"type":"message_delta","delta":{"stop_reason":'
                      b'"end_turn"},"usage":{"output_tokens":1}}')
    + anthropic_event(b"message_stop", b'{"type":"message_stop"}')
)

SSE_SEEDS = {
    "openai": sse_settings(0, param=5) + OPENAI_STREAM,
    "openai_bytewise": sse_settings(2) + OPENAI_STREAM,
    "anthropic": sse_settings(1, param=9) + ANTHROPIC_STREAM,
    "anthropic_crlf": sse_settings(3, param=100) + ANTHROPIC_STREAM.replace(b"\n", b"\r\n"),
    "anthropic_cr": sse_settings(1, param=3) + ANTHROPIC_STREAM.replace(b"\n", b"\r"),
    "bom_comments": sse_settings(2) + b"\xef\xbb\xbf: hello\r\n:\nevent:x\ndata\n"
    b"data:  two\rid: 1\nretry: 10\nfoo\n\n",
    "bom_partial": sse_settings(3, param=1) + b"\xef\xbbdata: a\n\ndata: b\n\n",
    "no_final_blank_line": sse_settings(0, param=2) + b"data: 1\n\ndata: 2\n",
    "line_bound": sse_settings(1, max_line=9, param=4) + b"data: 123\n\ndata: 1234\n\n",
    "event_bound": sse_settings(0, max_event=9, param=3)
    + b"data: 1234\ndata: 1234\n\ndata: 12345\ndata: 1234\n\n",
    "stop_early": sse_settings(1, stop_after=2, param=11) + OPENAI_STREAM,
    "stop_negative": sse_settings(3, stop_after=3, stop_negative=True, param=77)
    + ANTHROPIC_STREAM,
}


def s8(b):
    return bytes([len(b)]) + b


def env_event(kind=1, typ=3, flags=0, worker=0, conn=7, seq=1, session=b"s_0123456789abcdef01234567",
              owner=b"alice", stream=b"", off=0, slen=0, frame=b""):
    return (bytes([kind, typ, flags]) + struct.pack("<IQq", worker, conn, seq) + s8(session)
            + s8(owner) + s8(stream) + struct.pack("<QI", off, slen)
            + struct.pack("<I", len(frame)) + frame)


def env_batch(nonce, events):
    return b"CB1" + struct.pack("<QI", nonce, len(events)) + b"".join(events)


WS_TEXT = b"\x81\x7e\x00\x2a" + b'{"type":"user_message","seq":1,"x":"....."}'[:42]
ENVELOPE_SEEDS = {
    "one_event": env_batch(0x1122334455667788, [env_event(frame=WS_TEXT)]),
    "three_events": env_batch(42, [env_event(seq=5, frame=WS_TEXT),
                                   env_event(kind=2, seq=0, conn=0, frame=b"\x81\x02{}"),
                                   env_event(kind=4, seq=6, flags=1)]),
    "hint": env_batch(9, [env_event(seq=12, flags=2)]),
    "delta": env_batch(9, [env_event(kind=8, seq=0, stream=b"st_0123456789abcdef", off=16, slen=4,
                                     frame=b"\x81\x05delta")]),
    "long_strings": env_batch(1, [env_event(session=b"s" * 64, owner=b"u" * 128,
                                            stream=b"st_" + b"f" * 16)]),
    "too_long_owner": env_batch(1, [env_event(owner=b"u" * 129)]),
    "count_too_big": b"CB1" + struct.pack("<QI", 1, 1000) + env_event(),
    "trailing_byte": env_batch(1, [env_event()]) + b"\x00",
    "cut_frame": env_batch(1, [env_event(frame=WS_TEXT)])[:-5],
    "kick": b"CK1" + struct.pack("<QQ", 0x1122334455667788, 77) + s8(b"alice"),
    "stop": b"CS1" + s8(b"s_0123456789abcdef01234567"),
    "empty": b"",
}


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(header, payload, sig=b"c2ln"):
    return b64u(header) + b"." + b64u(payload) + b"." + sig


HS = b'{"alg":"HS256","typ":"JWT"}'
JWT_SEEDS = {
    "signed_user": b"\x01" + b'{"sub":"alice","exp":1900000000}',
    "signed_admin": b"\x01" + b'{"sub":"root","name":"Root","roles":["user","admin"],'
                    b'"exp":1900000000,"iat":1700000000}',
    "signed_expired": b"\x01" + b'{"sub":"bob","exp":1700000000}',
    "signed_nbf_future": b"\x01" + b'{"sub":"bob","exp":1900000000,"nbf":1850000000}',
    "signed_roles_bad": b"\x01" + b'{"sub":"eve","exp":1900000000,"roles":["a",1,"b"]}',
    "signed_sub_control": b"\x01" + b'{"sub":"a\\u0001b","exp":1900000000}',
    "signed_dup_key": b"\x01" + b'{"sub":"a","sub":"b","exp":1900000000}',
    "signed_not_object": b"\x01" + b'["sub"]',
    "token_bad_sig": b"\x00" + token(HS, b'{"sub":"alice","exp":1900000000}'),
    "token_alg_none": b"\x00" + token(b'{"alg":"none"}', b'{"sub":"alice"}', b""),
    "token_rs256": b"\x00" + token(b'{"alg":"RS256"}', b'{"sub":"alice"}'),
    "token_two_dots": b"\x00" + b"abc.def",
    "token_padding": b"\x00" + b"eyJ=.eyJ=.AA==",
    "empty": b"\x00",
}


SEAL_SEEDS = {
    "text": b"\x01\x00" + "Where is my parcel? Ça va ? 👋".encode(),
    "empty": b"\x00\x01",
    "overhead_only": b"\x05\x02" + bytes(28),
    "short": b"\x07\x03" + bytes(27),
    "binary": b"\xff\x00" + bytes(range(256)),
}


def argv(*args):
    return b"\x00" + b"\x00".join(a.encode() for a in args)


CONFIG_SEEDS = {
    "argv_basic": argv("--listen", "127.0.0.1:8080", "--workers", "2", "--jwt-secret",
                       "0123456789abcdef0123456789abcdef"),
    "argv_limits": argv("--max-devices", "10", "--device-policy", "evict-oldest", "--rate-limit",
                        "60", "--max-message-bytes", "1048576", "--send-queue-bytes", "0"),
    "argv_model": argv("--model", "fake=openai:http://127.0.0.1:9/v1,name=Fake Model,max-tokens=50",
                       "--assistant-rate-limit", "20"),
    "argv_cluster": argv("--redis", "redis://:pw@[::1]:6379/3", "--postgres", "host=/tmp dbname=x",
                         "--node-id", "node-a"),
    "argv_bad_number": argv("--workers", "1e9"),
    "argv_unknown": argv("--no-such-option"),
    "argv_help": argv("--help"),
    "argv_equals": argv("--listen=0.0.0.0:9", "--log-level=debug"),
    "file_basic": b"\x01# chatd options\nlisten = 127.0.0.1:8080\nworkers = 2\n"
                  b'prefix = "/chat"\nmax-devices = 5\n',
    "file_bad_line": b"\x01listen 127.0.0.1:8080\n",
    "file_unknown": b"\x01colour = blue\n",
    "file_nested_config": b"\x01config = /etc/passwd\n",
}


HARNESS_SECRET = b"fuzz-secret-0123456789abcdef-0123456789abcdef"
SID = "s_" + "@" * 24


def hs256(payload):
    head = b64u(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64u(json.dumps(payload).encode())
    return head + b"." + b64u(hmac.new(HARNESS_SECRET, head, hashlib.sha256).digest())


USER_TOKEN = hs256({"sub": "fuzz-user", "name": "Fuzz user", "roles": ["user"], "exp": 4102444800})
ADMIN_TOKEN = hs256({"sub": "fuzz-admin", "name": "Fuzz admin", "roles": ["user", "admin"],
                     "exp": 4102444800})


def j(**kw):
    return json.dumps(kw, ensure_ascii=False).encode()


def msgs(*items):
    return b"\x00".join(items)


CHAT_SEEDS = {
    # one valid message of each type (user, then admin)
    "user_every_type": b"\x00\x00" + msgs(
        j(type="user_message", id="m1", content="hello", metadata={"lang": "en"}),
        j(type="user_message", id="m2", session_id=SID, content="again"),
        j(type="typing_indicator", session_id=SID, typing=True),
        j(type="read", session_id=SID, seq=1),
        j(type="help_request", id="h1", session_id=SID),
        j(type="model_select", id="ms1", session_id=SID, model_id="none"),
        j(type="resume", id="r1", session_id=SID, after_seq=0),
        j(type="stop_generation", id="st1", session_id=SID),
        j(type="refresh", id="rf1", token=USER_TOKEN.decode()),
        j(type="admin_join", id="aj-no", session_id=SID)),
    "admin_every_type": b"\x01\x00" + msgs(
        j(type="admin_join", id="a1", session_id=SID),
        j(type="admin_message", id="a2", session_id=SID, content="an admin here"),
        j(type="resolve_help", id="a3", session_id=SID),
        j(type="typing_indicator", session_id=SID, typing=False),
        j(type="read", id="a4", session_id=SID, seq=2),
        j(type="resume", id="a5", session_id=SID, after_seq=1),
        j(type="stop_generation", id="a6", session_id=SID),
        j(type="admin_leave", id="a7", session_id=SID),
        j(type="refresh", id="a8", token=ADMIN_TOKEN.decode())),
    "admin_query_token_chunked": b"\x07\x05" + msgs(
        j(type="admin_join", id="b1", session_id=SID),
        j(type="help_request", id="b2", session_id=SID),
        j(type="admin_message", id="b3", session_id=SID, content="x" * 300),
        j(type="admin_leave", id="b4", session_id=SID)),
    # invalid variants
    "bad_json": b"\x00\x00" + msgs(b"{", b"[1,2]", b"\"text\"", b"", b'{"a":1,"a":2}', b"nul"),
    "bad_fields": b"\x04\x03" + msgs(
        j(type="user_message", id="e1", content=""),
        j(type="user_message", id="e2", content="y" * 2049),
        j(type="user_message", id="e3", content=5),
        j(type="user_message", id="e4", content="ok", session_id="s_nothex"),
        j(type="user_message", id="e5", content="ok", session_id=7),
        j(type="user_message", id="e6", content="ok", metadata={"n": 1}),
        j(type="user_message", id="e7", content="ok", metadata=[1]),
        j(type="user_message", id="", content="ok"),
        j(type="user_message", id="i" * 65, content="ok"),
        j(type="user_message", id=3, content="ok"),
        j(id="e8", content="no type"),
        j(type=1, id="e9"),
        j(type="no_such_type", id="e10"),
        j(type="typing_indicator", id="e11", session_id=SID, typing="yes"),
        j(type="read", id="e12", session_id=SID, seq=-1),
        j(type="read", id="e13", session_id=SID, seq="1"),
        j(type="resume", id="e14", session_id=SID, after_seq=-5),
        j(type="resume", id="e15", session_id=SID),
        j(type="model_select", id="e16", session_id=SID),
        j(type="help_request", id="e17"),
        j(type="admin_join", id="e18", session_id=SID),
        j(type="admin_message", id="e19", session_id=SID, content="not admin"),
        j(type="resolve_help", id="e20", session_id=SID),
        j(type="refresh", id="e21", token="a.b.c"),
        j(type="refresh", id="e22"),
        j(type="user_message", id="e23", content="x", session_id="s_000000000000000000000000")),
    "admin_bad_fields": b"\x01\x01" + msgs(
        j(type="admin_message", id="f1", session_id=SID, content="before join"),
        j(type="admin_join", id="f2"),
        j(type="admin_join", id="f3", session_id="s_000000000000000000000000"),
        j(type="admin_leave", id="f4", session_id=SID),
        j(type="resolve_help", id="f5", session_id=SID),
        j(type="refresh", id="f6", token=USER_TOKEN.decode())),
    "bad_utf8": b"\x00\x00" + msgs(j(type="user_message", id="u1", content="ok"),
                                    b'{"type":"user_message","content":"\xc0\x80"}'),
    "too_large": b"\x00\x00" + msgs(j(type="user_message", id="t1", content="z" * 9000)),
}


def ws_frame(payload, op=TEXT, fin=True):
    """A masked frame with the zero mask: the payload stays readable, so the
    harness can replace SID in it."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        hdr = bytes([b0, 0x80 | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + b"\x00\x00\x00\x00" + payload


def upgrade(tok, query=False, extra=b""):
    target = b"/ws?token=" + tok if query else b"/ws"
    auth = b"" if query else b"Authorization: Bearer " + tok + b"\r\n"
    return (b"GET " + target + b" HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + auth + extra + b"\r\n")


WORKER_SEEDS = {
    "ws_user_chat": b"\x01\x07" + upgrade(USER_TOKEN)
    + ws_frame(j(type="user_message", id="w1", content="hi", session_id=SID))
    + ws_frame(j(type="typing_indicator", session_id=SID, typing=True))
    + ws_frame(j(type="resume", id="w2", session_id=SID, after_seq=0))
    + ws_frame(j(type="read", session_id=SID, seq=1))
    + ws_frame(b"", op=PING) + ws_frame(struct.pack(">H", 1000), op=CLOSE),
    "ws_admin_chat": b"\x00\x1f" + upgrade(ADMIN_TOKEN, query=True)
    + ws_frame(j(type="admin_join", id="x1", session_id=SID))
    + ws_frame(j(type="admin_message", id="x2", session_id=SID, content="hello from admin"))
    + ws_frame(j(type="resolve_help", id="x3", session_id=SID))
    + ws_frame(j(type="admin_leave", id="x4", session_id=SID)),
    "ws_fragmented": b"\x02\x00" + upgrade(USER_TOKEN)
    + ws_frame(b'{"type":"user_message",', fin=False)
    + ws_frame(b"", op=PING)
    + ws_frame(b'"id":"w3","content":"frag"}', op=CONT)
    + ws_frame(b"\x01\x02", op=BINARY),
    "ws_bad_token": b"\x00\x10" + upgrade(b"e30.e30.AAAA") + ws_frame(b"{}"),
    "ws_no_key": b"\x03\x80" + b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Authorization: Bearer " + USER_TOKEN + b"\r\n\r\n",
    "http_pipelined": b"\x01\x03" + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n"
    b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
    "http_api": b"\x00\x40" + b"GET /api/sessions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
    + USER_TOKEN + b"\r\n\r\nGET /api/sessions/" + SID.encode()
    + b" HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + USER_TOKEN + b"\r\n\r\n",
    "http_post_body": b"\x01\x09" + b"POST /api/sessions/" + SID.encode()
    + b"/title HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\nAuthorization: Bearer "
    + USER_TOKEN + b"\r\n\r\n" + b'{"title":"a new"}',
    "http_garbage": b"\x02\x00" + b"\x16\x03\x01\x00\xa5GARBAGE\r\n\r\n",
}


def rv_null():
    return b"\x00"


def rv_int(v):
    return b"\x01" + bytes([v & 0xFF])


def rv_text(t):
    t = t.encode() if isinstance(t, str) else t
    return b"\x03" + struct.pack("<H", len(t)) + t


def rv_blob(t):
    return b"\x04" + struct.pack("<H", len(t)) + t


def row_bytes(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<H", len(b)) + b


def row_session(title="A title", how=0, help_=0):
    return (rv_text("fuzz-user") + rv_int(10) + rv_int(20) + rv_int(3) + rv_int(help_)
            + rv_text("m1") + rv_text("Fuzz user") + rv_null() + bytes([how]) + row_bytes(title))


def row_event(seq, content, how=0, type_="user_message", sender_type="user", sender="fuzz-user",
              name=rv_null(), client=rv_null(), meta=rv_null()):
    return (bytes([seq + 2, 1]) + rv_text(type_) + rv_text(sender_type) + rv_text(sender) + name
            + client + meta + bytes([how]) + row_bytes(content))


def row_input(after=0, limit=0, max_bytes=0, help_only=0, session=None, events=()):
    head = bytes([after + 2, limit, max_bytes, help_only, 1 if session else 0])
    return head + (session or b"") + b"".join(events)


ROW_SEEDS = {
    "plain_history": row_input(session=row_session(), events=[
        row_event(1, "hello", client=rv_text("c1"), meta=rv_text('{"lang":"en"}')),
        row_event(2, "", type_="help_request"),
        row_event(3, "an answer", type_="ai_response", sender_type="ai", sender="m1",
                  client=rv_text("st_1"), meta=rv_text('{"input_tokens":"3"}'))]),
    "sealed_history": row_input(session=row_session("sealed title \u00e9", how=1), events=[
        row_event(1, "secret one", how=1),
        row_event(2, "secret two \U0001F600", how=1, type_="admin_message", sender_type="admin"),
        row_event(3, "", how=1, type_="admin_join", sender_type="admin")]),
    "sealed_wrong_seq": row_input(after=1, session=row_session(how=1), events=[
        row_event(1, "fine", how=1), row_event(2, "moved row", how=2)]),
    "garbage_sealed": row_input(session=row_session(how=2), events=[
        row_event(1, bytes(40), how=3), row_event(2, "x", how=3)]),
    "types_confused": row_input(limit=2, max_bytes=1, session=b"\x02\x05" + rv_blob(b"\x00\xff") * 7
                                + bytes([0]) + row_bytes(b"\xff\xfe title"), events=[
        row_event(1, b"\xc0\x80", type_=b"x" * 40, sender_type=b"\x00", sender=b"",
                  meta=rv_text("[1,2]")),
        row_event(1, "dup seq"),
        bytes([5, 0]) + rv_int(7) + rv_int(8) + rv_null() + rv_null() + rv_null() + rv_null()
        + b"\x00" + row_bytes("null sender")]),
    "long_title_preview": row_input(help_only=1, session=row_session("t" * 300, help_=1),
                                    events=[row_event(1, "\u00e9" * 150),
                                            row_event(2, "p" * 200, how=1)]),
}


def provider_seed(first, second, anthropic=False, splice=False, name1=0, name2=0):
    b0 = (1 if anthropic else 0) | (2 if splice else 0) | (name1 << 2) | (name2 << 4)
    assert len(first) < 256
    return bytes([b0, len(first)]) + first + second


OA_CHUNK = (b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}],"usage":null}')
AN_CHUNK = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"%s"}}'

PROVIDER_SEEDS = {
    "openai_next": provider_seed(OA_CHUNK % b"Hel", OA_CHUNK % b'lo \\"x\\u00e9\\"\\n'),
    "openai_splice": provider_seed(OA_CHUNK % b"Hel", b"lo w\xc3\xa9rld", splice=True),
    "openai_splice_quote": provider_seed(OA_CHUNK % b"a", b'b","content":"c', splice=True),
    "openai_splice_escape": provider_seed(OA_CHUNK % b"a", b"b\\", splice=True),
    "openai_stop": provider_seed(OA_CHUNK % b"a", (OA_CHUNK % b"b").replace(b"null}]", b'"stop"}]')),
    "openai_done": provider_seed(OA_CHUNK % b"a", b"[DONE]"),
    "anthropic_next": provider_seed(AN_CHUNK % b"Bon", AN_CHUNK % b"jour", anthropic=True,
                                    name1=1, name2=1),
    "anthropic_renamed": provider_seed(AN_CHUNK % b"Bon", b"jour", anthropic=True, splice=True,
                                       name1=1, name2=2),
    "anthropic_unnamed": provider_seed(AN_CHUNK % b"Bon", b"\\ud83d\\ude00", anthropic=True,
                                       splice=True, name1=0, name2=0),
}


def write(name, seeds):
    out = os.path.join(CORPUS, name)
    os.makedirs(out, exist_ok=True)
    for seed, data in seeds.items():
        with open(os.path.join(out, seed), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {out}")


def main():
    write("fuzz_frame", FRAME_SEEDS)
    write("fuzz_http", HTTP_SEEDS)
    write("fuzz_sse", SSE_SEEDS)
    write("fuzz_envelope", ENVELOPE_SEEDS)
    write("fuzz_jwt", JWT_SEEDS)
    write("fuzz_seal", SEAL_SEEDS)
    write("fuzz_config", CONFIG_SEEDS)
    write("fuzz_chat", CHAT_SEEDS)
    write("fuzz_worker", WORKER_SEEDS)
    write("fuzz_row", ROW_SEEDS)
    write("fuzz_provider", PROVIDER_SEEDS)


if __name__ == "__main__":
    main()
