"""RFC 6455 conformance of the WebSocket layer, driven through `chatd --echo`.

Every protocol violation is checked for the exact close code the server sends,
that the server then closes the TCP connection, and that the server is still
healthy (a fresh echo connection works).
"""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, SLOW,  # noqa: E402
                     WS, Chatd, accept_for, assert_healthy, echo_ok, expect_close_code, frame,
                     http_raw, json_error, parse_response, run, upgrade_request, ws_key)

MIB = 1 << 20


# ---- helpers ----------------------------------------------------------------

def violation(d, data, code):
    """Send raw bytes on a fresh echo connection, expect close `code`."""
    ws = WS(d.port)
    ws.send_raw(data)
    expect_close_code(ws, code)


def nodelay(ws):
    ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_upgrade(port, lines):
    """Send a hand-made request head; return (status, headers, body)."""
    req = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return parse_response(http_raw(port, req, timeout=5.0))


def upgrade_lines(method="GET", path="/echo", key=None, version="13", extra=None, drop=()):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + (key or ws_key()),
             "Sec-WebSocket-Version: " + version]
    lines = [ln for ln in lines if not any(ln.lower().startswith(p.lower()) for p in drop)]
    return lines + (extra or [])


# ---- framing rules ----------------------------------------------------------

def test_rsv_bits_1002():
    with Chatd("--echo") as d:
        for rsv in (1, 2, 4, 7):
            violation(d, frame(OP_TEXT, "hi", rsv=rsv), 1002)
        # On a control frame too, and after a good message on the same connection.
        violation(d, frame(OP_PING, b"x", rsv=4), 1002)
        ws = WS(d.port)
        echo_ok(ws, "first")
        ws.send_raw(frame(OP_BINARY, b"x", rsv=2))
        expect_close_code(ws, 1002)
        assert_healthy(d)


def test_reserved_opcodes_1002():
    with Chatd("--echo") as d:
        for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
            violation(d, frame(op, b"abc"), 1002)
        # Reserved opcode inside a fragmented message.
        violation(d, frame(OP_TEXT, "a", fin=False) + frame(5, b"b"), 1002)
        assert_healthy(d)


def test_unmasked_client_frame_1002():
    with Chatd("--echo") as d:
        violation(d, frame(OP_TEXT, "hello", mask=False), 1002)
        violation(d, frame(OP_BINARY, b"", mask=False), 1002)
        violation(d, frame(OP_PING, b"p", mask=False), 1002)
        violation(d, frame(OP_CLOSE, struct.pack("!H", 1000), mask=False), 1002)
        assert_healthy(d)


def test_fragmented_control_frame_1002():
    with Chatd("--echo") as d:
        violation(d, frame(OP_PING, b"p", fin=False), 1002)
        violation(d, frame(OP_PONG, b"p", fin=False), 1002)
        violation(d, frame(OP_CLOSE, struct.pack("!H", 1000), fin=False), 1002)
        # Also in the middle of a fragmented data message.
        violation(d, frame(OP_TEXT, "a", fin=False) + frame(OP_PING, b"p", fin=False), 1002)
        assert_healthy(d)


def test_control_payload_over_125_1002():
    with Chatd("--echo") as d:
        violation(d, frame(OP_PING, b"p" * 126), 1002)
        violation(d, frame(OP_PONG, b"p" * 126), 1002)
        violation(d, frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124), 1002)
        # The 126 announced in the 16-bit length, header only: fails on the header.
        ws = WS(d.port)
        ws.send_raw(struct.pack("!BBH", 0x80 | OP_PING, 0x80 | 126, 126) + os.urandom(4))
        expect_close_code(ws, 1002)
        # 125 is fine.
        ws = WS(d.port)
        ws.send_raw(frame(OP_PING, b"q" * 125))
        assert ws.recv_frame() == (True, OP_PONG, b"q" * 125)
        ws.shut()
        assert_healthy(d)


def test_continuation_without_message_1002():
    with Chatd("--echo") as d:
        violation(d, frame(OP_CONT, "x"), 1002)
        violation(d, frame(OP_CONT, "x", fin=False), 1002)
        # After a complete message, a continuation has nothing to continue.
        ws = WS(d.port)
        echo_ok(ws, "done")
        ws.send_raw(frame(OP_CONT, "late"))
        expect_close_code(ws, 1002)
        assert_healthy(d)


def test_new_data_frame_inside_fragmented_message_1002():
    with Chatd("--echo") as d:
        violation(d, frame(OP_TEXT, "a", fin=False) + frame(OP_TEXT, "b"), 1002)
        violation(d, frame(OP_TEXT, "a", fin=False) + frame(OP_BINARY, b"b"), 1002)
        violation(d, frame(OP_BINARY, b"a", fin=False) + frame(OP_CONT, b"b", fin=False) +
                  frame(OP_BINARY, b"c", fin=False), 1002)
        assert_healthy(d)


def test_64bit_length_top_bit_1002():
    with Chatd("--echo") as d:
        for n in (1 << 63, (1 << 64) - 1):
            ws = WS(d.port)
            # Header only: the server must decide on the header.
            ws.send_raw(struct.pack("!BBQ", 0x80 | OP_BINARY, 0x80 | 127, n) + os.urandom(4))
            expect_close_code(ws, 1002)
        assert_healthy(d)


def test_oversized_header_1009_without_payload():
    with Chatd("--echo") as d:
        for op, n in ((OP_BINARY, MIB + 1), (OP_TEXT, MIB + 1), (OP_BINARY, 1 << 40),
                      (OP_BINARY, (1 << 63) - 1)):
            ws = WS(d.port)
            ws.send_raw(frame(op, b"", length=n))  # header + mask key, no payload
            expect_close_code(ws, 1009)
        # Fragmented: a first fragment over the limit is refused on its header.
        ws = WS(d.port)
        ws.send_raw(frame(OP_BINARY, b"", fin=False, length=MIB + 1))
        expect_close_code(ws, 1009)
        assert_healthy(d)


def test_exact_limit_accepted():
    with Chatd("--echo") as d:
        ws = WS(d.port, timeout=30)
        echo_ok(ws, os.urandom(MIB))
        echo_ok(ws, "x" * MIB)
        ws.shut()
        assert_healthy(d)


def test_fragment_sum_limit():
    with Chatd("--echo") as d:
        half = MIB // 2
        # Exactly the limit as the sum of three fragments: accepted.
        ws = WS(d.port, timeout=30)
        a, b, c = os.urandom(half), os.urandom(half - 10), os.urandom(10)
        ws.send_raw(frame(OP_BINARY, a, fin=False) + frame(OP_CONT, b, fin=False) +
                    frame(OP_CONT, c))
        assert ws.recv() == (OP_BINARY, a + b + c)
        # One byte over, announced by the header of the last fragment: 1009 before
        # any of its payload is sent.
        ws.send_raw(frame(OP_BINARY, a, fin=False) + frame(OP_CONT, b, fin=False))
        ws.send_raw(frame(OP_CONT, b"", length=11))
        expect_close_code(ws, 1009, timeout=30)
        # Text fragments, over by one.
        ws = WS(d.port, timeout=30)
        ws.send_raw(frame(OP_TEXT, "a" * half, fin=False) +
                    frame(OP_CONT, b"", fin=True, length=half + 1))
        expect_close_code(ws, 1009, timeout=30)
        assert_healthy(d)


def fragmented(opcode, data, size):
    """data as one message in fragments of `size` bytes (the last shorter)."""
    cuts = range(0, len(data), size)
    return b"".join(frame(opcode if i == 0 else OP_CONT, data[at:at + size],
                          fin=at + size >= len(data))
                    for i, at in enumerate(cuts))


def test_large_messages_in_small_fragments():
    # Autobahn 9.3.1 and 9.4.1 at chatd's limit: 1 MiB in 64-byte fragments,
    # 16,384 frames, text and binary; and in 16-byte fragments (65,536
    # frames), the finest cut the fragment rule always accepts.
    # Two- to four-byte characters, so that fragments cut through them.
    unit = "h\u00e9llo \u20ac \U0001f600 \u4e2d! ".encode()
    text = unit * (MIB // len(unit)) + b"x" * (MIB % len(unit))
    assert len(text) == MIB
    binary = os.urandom(MIB)
    with Chatd("--echo") as d:
        ws = WS(d.port, timeout=120 if SLOW else 30)
        for opcode, data, size in ((OP_TEXT, text, 64), (OP_BINARY, binary, 64),
                                   (OP_BINARY, binary, 16)):
            ws.send_raw(fragmented(opcode, data, size))
            got = ws.recv()
            assert got[0] == opcode, (got[0], opcode)
            assert got[1] == data, "%d bytes in %d-byte fragments: echo differs (%d bytes)" % (
                len(data), size, len(got[1]))
        ws.shut()
        assert_healthy(d)


def test_fragment_flood_1008():
    with Chatd("--echo") as d:
        # 4096 fragments of any size are fine.
        ws = WS(d.port)
        parts = [frame(OP_TEXT, "a", fin=False)]
        parts += [frame(OP_CONT, "b", fin=False) for _ in range(4094)]
        parts.append(frame(OP_CONT, "c"))
        ws.send_raw(b"".join(parts))
        assert ws.recv() == (OP_TEXT, b"a" + b"b" * 4094 + b"c")
        # An empty fragment 4097 closes with 1008, decided on its header.
        parts = [frame(OP_BINARY, b"", fin=False)]
        parts += [frame(OP_CONT, b"", fin=False) for _ in range(4095)]
        ws.send_raw(b"".join(parts))
        ws.send_raw(frame(OP_CONT, b"", length=1))  # header of fragment 4097 only
        expect_close_code(ws, 1008)
        # Floods of empty and of 1-byte fragments are closed: empty ones
        # after 4096 fragments, 1-byte ones after 4369 (4096 plus one per 16
        # bytes of payload).
        for payload, allowed in ((b"", 4096), (b"z", 4369)):
            ws = WS(d.port)
            ws.send_raw(frame(OP_BINARY, payload, fin=False) +
                        frame(OP_CONT, payload, fin=False) * (allowed - 1))
            # Not closed yet: a ping in the middle of the message is answered.
            ws.send_raw(frame(OP_PING, b"alive"))
            assert ws.recv_frame() == (True, OP_PONG, b"alive")
            ws.send_raw(frame(OP_CONT, payload, fin=False) * 1000)
            expect_close_code(ws, 1008)
        assert_healthy(d)


def test_empty_fragments():
    with Chatd("--echo") as d:
        # An empty first fragment on a fresh connection, then empty and
        # non-empty continuations.
        ws = WS(d.port)
        ws.send_raw(frame(OP_BINARY, b"", fin=False) + frame(OP_CONT, b"", fin=False) +
                    frame(OP_CONT, b"x", fin=False) + frame(OP_CONT, b""))
        assert ws.recv() == (OP_BINARY, b"x")
        # A whole message made of empty fragments is an empty message.
        ws.send_raw(frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, b""))
        assert ws.recv() == (OP_TEXT, b"")
        ws.send_raw(frame(OP_TEXT, b""))
        assert ws.recv() == (OP_TEXT, b"")
        ws.shut()
        assert_healthy(d)


BAD_UTF8 = [
    b"\xff", b"\xfe", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\x80", b"\xe2\x28\xa1", b"a\xe2\x82",
    b"\xf0\x8f\xbf\xbf", b"\xed\xbf\xbf",
]


def test_invalid_utf8_text_1007():
    with Chatd("--echo") as d:
        for bad in BAD_UTF8:
            violation(d, frame(OP_TEXT, b"ok " + bad), 1007)
        # Split over fragments, whole message invalid at its end.
        violation(d, frame(OP_TEXT, b"\xe2\x82", fin=False) + frame(OP_CONT, b""), 1007)
        violation(d, frame(OP_TEXT, b"abc", fin=False) + frame(OP_CONT, b"\xce"), 1007)
        # Binary messages are not UTF-8 checked.
        ws = WS(d.port)
        echo_ok(ws, b"\xff\xfe\xc0\x80")
        ws.shut()
        assert_healthy(d)


def test_invalid_utf8_fails_fast():
    with Chatd("--echo") as d:
        # A first fragment with bad UTF-8 and FIN=0: 1007 without sending more.
        for bad in (b"ab\xff", b"\xc0", b"\xed\xa0", b"\xf4\x90", b"\xe0\x80", b"\xf5"):
            violation(d, frame(OP_TEXT, bad, fin=False), 1007)
        # Bad UTF-8 in a later fragment, message still open.
        violation(d, frame(OP_TEXT, "good", fin=False) + frame(OP_CONT, b"\xff", fin=False),
                  1007)
        # Inside one frame whose payload has not fully arrived.
        ws = WS(d.port)
        key = os.urandom(4)
        whole = frame(OP_TEXT, b"a\xff" + b"b" * 98, key=key)
        ws.send_raw(whole[:2 + 4 + 2])  # header, key and the first two payload bytes
        expect_close_code(ws, 1007)
        assert_healthy(d)


def test_valid_utf8_split_across_fragments():
    with Chatd("--echo") as d:
        ws = WS(d.port)
        text = "h\u00e9llo \u20ac \U0001f600 \u4e2d"
        data = text.encode()
        # Cut inside every multi-byte character: one byte per fragment.
        parts = [frame(OP_TEXT, data[:1], fin=False)]
        parts += [frame(OP_CONT, data[i:i + 1], fin=False) for i in range(1, len(data) - 1)]
        parts.append(frame(OP_CONT, data[-1:]))
        ws.send_raw(b"".join(parts))
        assert ws.recv() == (OP_TEXT, data)
        # Incomplete character at the end of a non-final fragment is not an error.
        ws.send_raw(frame(OP_TEXT, b"\xe2\x82", fin=False))
        time.sleep(0.2)
        ws.send_raw(frame(OP_CONT, b"\xac"))
        assert ws.recv() == (OP_TEXT, "\u20ac".encode())
        ws.shut()
        assert_healthy(d)


# ---- closing ----------------------------------------------------------------

def test_close_one_byte_payload_1002():
    with Chatd("--echo") as d:
        violation(d, frame(OP_CLOSE, b"\x03"), 1002)
        assert_healthy(d)


def test_invalid_close_codes_1002():
    with Chatd("--echo") as d:
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
            violation(d, frame(OP_CLOSE, struct.pack("!H", code)), 1002)
        assert_healthy(d)


def test_valid_close_codes_echoed():
    with Chatd("--echo") as d:
        for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4000, 4999):
            ws = WS(d.port)
            echo_ok(ws, "before close")
            ws.send_raw(frame(OP_CLOSE, struct.pack("!H", code) + b"bye"))
            assert ws.expect_close() == code, (code, ws.close_code)
            # Handshake complete: the server closes TCP without further prompting.
            ws.expect_eof()
            ws.shut()
        assert_healthy(d)


def test_close_empty_payload_answered_empty():
    with Chatd("--echo") as d:
        ws = WS(d.port)
        ws.send_raw(frame(OP_CLOSE, b""))
        fin, op, payload = ws.recv_frame()
        assert (fin, op, payload) == (True, OP_CLOSE, b""), (fin, op, payload)
        ws.expect_eof()
        ws.shut()
        assert_healthy(d)


def test_close_reason_utf8():
    with Chatd("--echo") as d:
        violation(d, frame(OP_CLOSE, struct.pack("!H", 1000) + b"bad \xff"), 1007)
        violation(d, frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xe2\x82"), 1007)
        # A valid reason of the largest size (123 bytes, multi-byte characters).
        reason = ("\u20ac" * 41).encode()
        assert len(reason) == 123
        ws = WS(d.port)
        ws.send_raw(frame(OP_CLOSE, struct.pack("!H", 4001) + reason))
        assert ws.expect_close() == 4001
        ws.expect_eof()
        ws.shut()
        assert_healthy(d)


def test_data_after_close_is_ignored():
    with Chatd("--echo") as d:
        ws = WS(d.port)
        ws.send_raw(frame(OP_CLOSE, struct.pack("!H", 1000)) + frame(OP_TEXT, "after"))
        fin, op, payload = ws.recv_frame()
        assert op == OP_CLOSE and payload[:2] == struct.pack("!H", 1000), (op, payload)
        ws.expect_eof()  # no echo of "after" in between
        assert ws.buf == b"", ws.buf
        ws.shut()
        assert_healthy(d)


# ---- control frames -----------------------------------------------------------

def test_ping_answered_with_same_payload():
    with Chatd("--echo") as d:
        ws = WS(d.port)
        for payload in (b"", b"x", os.urandom(64), os.urandom(125)):
            ws.send_raw(frame(OP_PING, payload))
            assert ws.recv_frame() == (True, OP_PONG, payload)
        # An unsolicited pong is ignored.
        ws.send_raw(frame(OP_PONG, b"unsolicited"))
        echo_ok(ws, "after pong")
        ws.shut()
        assert_healthy(d)


def test_ping_interleaved_in_fragmented_message():
    with Chatd("--echo") as d:
        ws = WS(d.port)
        ws.send_raw(frame(OP_TEXT, "Hel", fin=False) + frame(OP_PING, b"mid") +
                    frame(OP_CONT, "lo", fin=False) + frame(OP_PONG, b"x") +
                    frame(OP_CONT, " world"))
        assert ws.recv_frame() == (True, OP_PONG, b"mid")
        assert ws.recv_frame() == (True, OP_TEXT, b"Hello world")
        # The same, with each frame in its own TCP write.
        nodelay(ws)
        for f in (frame(OP_BINARY, b"\x01", fin=False), frame(OP_PING, b"p1"),
                  frame(OP_CONT, b"\x02", fin=False), frame(OP_PING, b"p2"),
                  frame(OP_CONT, b"\x03")):
            ws.send_raw(f)
            time.sleep(0.01)
        assert ws.recv_frame() == (True, OP_PONG, b"p1")
        assert ws.recv_frame() == (True, OP_PONG, b"p2")
        assert ws.recv_frame() == (True, OP_BINARY, b"\x01\x02\x03")
        ws.shut()
        assert_healthy(d)


# ---- sizes and TCP splits -----------------------------------------------------

def test_payload_sizes_echoed_exactly():
    with Chatd("--echo") as d:
        ws = WS(d.port, timeout=30)
        for n in (0, 1, 125, 126, 127, 65535, 65536, 65537, MIB):
            echo_ok(ws, os.urandom(n))
            text = bytes(0x20 + (i * 7) % 95 for i in range(min(n, 4096)))
            text = (text * (n // 4096 + 1))[:n]
            echo_ok(ws, text.decode())
        ws.shut()
        assert_healthy(d)


def split_points(total, hdr):
    """Every split of a small frame; for large ones every split in the header
    and around the edges, plus a spread of points through the payload."""
    if total <= 300:
        return list(range(1, total))
    pts = set(range(1, hdr + 8)) | set(range(total - 8, total))
    pts |= set(range(hdr, total, max(1, (total - hdr) // 24)))
    pts |= {total // 2, total // 2 + 1, hdr + 4096, hdr + 4097}
    return sorted(p for p in pts if 0 < p < total)


def test_every_split_of_one_frame():
    pause = 0.002
    with Chatd("--echo") as d:
        for n in (0, 1, 2, 125, 126, 127, 65535, 65536):
            ws = WS(d.port, timeout=20)
            nodelay(ws)
            hdr = 2 + (0 if n < 126 else 2 if n < 65536 else 8) + 4
            payload = os.urandom(n)
            for i, cut in enumerate(split_points(hdr + n, hdr)):
                # Alternate text and binary (text payload: ASCII).
                if i % 2:
                    opcode, data = OP_BINARY, payload
                else:
                    opcode, data = OP_TEXT, bytes(0x41 + b % 26 for b in payload)
                f = frame(opcode, data)
                assert len(f) == hdr + n
                ws.send_raw(f[:cut])
                time.sleep(pause)
                ws.send_raw(f[cut:])
                got = ws.recv()
                assert got == (opcode, data), "size %d split at %d: echo differs" % (n, cut)
            ws.close(1000)
            assert ws.expect_close() == 1000
            ws.shut()
        assert_healthy(d)


def test_byte_by_byte_stream():
    with Chatd("--echo") as d:
        ws = WS(d.port)
        nodelay(ws)
        stream = (frame(OP_TEXT, "ab", fin=False) + frame(OP_PING, b"z") +
                  frame(OP_CONT, "\u20ac".encode()) + frame(OP_BINARY, b"B" * 130))
        for i in range(len(stream)):
            ws.send_raw(stream[i:i + 1])
            time.sleep(0.001)
        assert ws.recv_frame() == (True, OP_PONG, b"z")
        assert ws.recv_frame() == (True, OP_TEXT, "ab\u20ac".encode())
        assert ws.recv_frame() == (True, OP_BINARY, b"B" * 130)
        ws.shut()
        assert_healthy(d)


def test_many_frames_in_one_write():
    with Chatd("--echo") as d:
        ws = WS(d.port)
        msgs = [os.urandom(i * 37 % 300) for i in range(200)]
        ws.send_raw(b"".join(frame(OP_BINARY, m) for m in msgs))
        for m in msgs:
            assert ws.recv() == (OP_BINARY, m)
        ws.shut()
        assert_healthy(d)


# ---- the upgrade --------------------------------------------------------------

def test_upgrade_response_accept_key():
    with Chatd("--echo") as d:
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(("\r\n".join(upgrade_lines(key=key)) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            b = s.recv(4096)
            assert b, data
            data += b
        s.close()
        head = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        assert head[0].startswith("HTTP/1.1 101"), head[0]
        h = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:])}
        assert h["upgrade"].lower() == "websocket", h
        assert "upgrade" in h["connection"].lower(), h
        assert h["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", h
        assert accept_for(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert_healthy(d)


def test_upgrade_wrong_method_400():
    with Chatd("--echo") as d:
        status, headers, body = raw_upgrade(d.port, upgrade_lines(method="POST") +
                                            ["Content-Length: 0"])
        assert status == 400, status
        assert json_error(body)["code"] == "bad_request"
        status, headers, body = raw_upgrade(d.port, upgrade_lines(method="HEAD"))
        assert status == 400, status
        assert headers.get("content-type") == "application/json", headers
        if body:
            assert json_error(body)["code"] == "bad_request"
        status, headers, body = raw_upgrade(d.port, upgrade_lines(method="PUT") +
                                            ["Content-Length: 0"])
        assert status == 400, status
        assert_healthy(d)


def test_upgrade_with_body_400():
    with Chatd("--echo") as d:
        req = ("\r\n".join(upgrade_lines(extra=["Content-Length: 5"])) + "\r\n\r\nhello").encode()
        status, _, body = parse_response(http_raw(d.port, req))
        assert status == 400, status
        assert json_error(body)["code"] == "bad_request"
        req = ("\r\n".join(upgrade_lines(extra=["Transfer-Encoding: chunked"])) +
               "\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()
        status, _, body = parse_response(http_raw(d.port, req))
        assert status == 400, status
        assert json_error(body)["code"] == "bad_request"
        # Content-Length together with Transfer-Encoding.
        req = ("\r\n".join(upgrade_lines(extra=["Content-Length: 5",
                                                "Transfer-Encoding: chunked"])) +
               "\r\n\r\n0\r\n\r\n").encode()
        status, _, body = parse_response(http_raw(d.port, req))
        assert status == 400, status
        assert json_error(body)["code"] == "bad_request"
        assert_healthy(d)


def test_upgrade_bad_key_400():
    with Chatd("--echo") as d:
        cases = [
            upgrade_lines(drop=("Sec-WebSocket-Key",)),
            upgrade_lines(key="abc"),
            upgrade_lines(key="not base64 at all!!!!!!="),
            upgrade_lines(key="AAAAAAAAAAAAAAAAAAAA"),          # 15 bytes
            upgrade_lines(key="AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),  # 21 bytes
            upgrade_lines(extra=["Sec-WebSocket-Key: " + ws_key()]),  # two keys
        ]
        for lines in cases:
            status, _, body = raw_upgrade(d.port, lines)
            assert status == 400, (status, lines)
            assert json_error(body)["code"] == "bad_request"
        assert_healthy(d)


def test_upgrade_wrong_version_426():
    with Chatd("--echo") as d:
        for lines in (upgrade_lines(version="12"), upgrade_lines(version="8"),
                      upgrade_lines(version="14"), upgrade_lines(drop=("Sec-WebSocket-Version",))):
            status, headers, body = raw_upgrade(d.port, lines)
            assert status == 426, (status, lines)
            assert headers.get("sec-websocket-version") == "13", headers
            assert json_error(body)["code"] == "upgrade_required"
        assert_healthy(d)


def test_get_without_upgrade_426():
    with Chatd("--echo") as d:
        # Keep-alive request: 426, and the connection may stay open.
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"upgrade_required" not in data:
            b = s.recv(4096)
            assert b, data
            data += b
        status, headers, body = parse_response(data)
        assert status == 426, status
        assert json_error(body)["code"] == "upgrade_required"
        s.close()
        # With "Connection: close" the server must answer and close the
        # connection (RFC 9112 section 9.6), not keep it open.
        t0 = time.time()
        s = socket.create_connection(("127.0.0.1", d.port), timeout=3)
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, eof = b"", False
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    eof = True
                    break
                data += b
        except socket.timeout:
            pass
        s.close()
        status, headers, body = parse_response(data)
        assert status == 426, status
        assert json_error(body)["code"] == "upgrade_required"
        assert headers.get("connection", "").lower() != "keep-alive", \
            "426 to a 'Connection: close' request announces keep-alive: %r" % headers
        assert eof, "server kept the connection open %.1fs after answering a " \
            "'Connection: close' request" % (time.time() - t0)
        assert_healthy(d)


def test_frames_in_same_segment_as_upgrade():
    with Chatd("--echo") as d:
        req, key = upgrade_request("/echo")
        ws = WS(d.port, connect=False)
        ws.send_raw(req + frame(OP_TEXT, "early bird") + frame(OP_PING, b"pp") +
                    frame(OP_BINARY, b"\x00" * 300))
        status, headers = ws.read_head()
        assert status == 101, status
        assert headers["sec-websocket-accept"] == accept_for(key)
        assert ws.recv_frame() == (True, OP_TEXT, b"early bird")
        assert ws.recv_frame() == (True, OP_PONG, b"pp")
        assert ws.recv_frame() == (True, OP_BINARY, b"\x00" * 300)
        ws.shut()
        # A large frame starting in the upgrade segment and finished later.
        req, key = upgrade_request("/echo")
        ws = WS(d.port, connect=False)
        nodelay(ws)
        big = os.urandom(100000)
        f = frame(OP_BINARY, big)
        ws.send_raw(req + f[:5000])
        time.sleep(0.05)
        ws.send_raw(f[5000:])
        assert ws.read_head()[0] == 101
        assert ws.recv() == (OP_BINARY, big)
        ws.shut()
        # A protocol error in the same segment as the upgrade still gets a close.
        req, key = upgrade_request("/echo")
        ws = WS(d.port, connect=False)
        ws.send_raw(req + frame(OP_TEXT, "x", rsv=1))
        assert ws.read_head()[0] == 101
        expect_close_code(ws, 1002)
        assert_healthy(d)


if __name__ == "__main__":
    run([test_rsv_bits_1002, test_reserved_opcodes_1002, test_unmasked_client_frame_1002,
         test_fragmented_control_frame_1002, test_control_payload_over_125_1002,
         test_continuation_without_message_1002,
         test_new_data_frame_inside_fragmented_message_1002, test_64bit_length_top_bit_1002,
         test_oversized_header_1009_without_payload, test_exact_limit_accepted,
         test_fragment_sum_limit, test_large_messages_in_small_fragments,
         test_fragment_flood_1008, test_empty_fragments,
         test_invalid_utf8_text_1007,
         test_invalid_utf8_fails_fast, test_valid_utf8_split_across_fragments,
         test_close_one_byte_payload_1002, test_invalid_close_codes_1002,
         test_valid_close_codes_echoed, test_close_empty_payload_answered_empty,
         test_close_reason_utf8, test_data_after_close_is_ignored,
         test_ping_answered_with_same_payload, test_ping_interleaved_in_fragmented_message,
         test_payload_sizes_echoed_exactly, test_every_split_of_one_frame,
         test_byte_by_byte_stream, test_many_frames_in_one_write,
         test_upgrade_response_accept_key, test_upgrade_wrong_method_400,
         test_upgrade_with_body_400, test_upgrade_bad_key_400, test_upgrade_wrong_version_426,
         test_get_without_upgrade_426, test_frames_in_same_segment_as_upgrade])
