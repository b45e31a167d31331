"""Interop: Debian's python3-websockets (10.x, asyncio API) against chatd --echo.

chatd is started synchronously through the harness; each test then runs its
client coroutine with asyncio.run().
"""
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import SLOW, Chatd, run  # noqa: E402

import websockets  # noqa: E402  (Debian python3-websockets)
from websockets.exceptions import ConnectionClosed  # noqa: E402

# Sanitizer builds are 5-20x slower: stretch every timeout.
T = 60.0 if SLOW else 15.0
SIZES = [0, 1, 125, 126, 65535, 65536, 100 * 1024, 1 << 20]
MAX_SIZE = 1 << 21


def url(d):
    return "ws://127.0.0.1:%d/echo" % d.port


def connect(d, **kw):
    kw.setdefault("max_size", MAX_SIZE)
    kw.setdefault("open_timeout", T)
    kw.setdefault("close_timeout", T)
    kw.setdefault("ping_interval", None)  # no client keep-alive pings in tests
    kw.setdefault("compression", None)    # chatd does not negotiate extensions
    return websockets.connect(url(d), **kw)


def text_payload(n):
    # ASCII so that len(str) == bytes on the wire.
    return "".join(chr(0x21 + (i * 7) % 90) for i in range(n))


def binary_payload(n):
    return bytes((i * 31 + 7) & 0xFF for i in range(n))


def with_chatd(coro_fn, *args):
    with Chatd(*args) as d:
        asyncio.run(asyncio.wait_for(coro_fn(d), T * 4))


# ---- tests ------------------------------------------------------------------------

def echo_every_size(payload, kind, unit):
    """Each of SIZES, made by payload(n), comes back whole and of its type."""
    async def main(d):
        async with connect(d) as ws:
            for n in SIZES:
                msg = payload(n)
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), T)
                assert isinstance(got, type(msg)), ("%s %d came back as %s" % (kind, n, type(got)))
                assert got == msg, "%s %d: echoed %d %s, differs" % (kind, n, len(got), unit)
    with_chatd(main, "--echo")


def test_text_sizes():
    echo_every_size(text_payload, "text", "chars")


def test_binary_sizes():
    echo_every_size(binary_payload, "binary", "bytes")


def test_utf8_text():
    async def main(d):
        async with connect(d) as ws:
            msg = "h\u00e9llo \u4e16\u754c \U0001F600 " * 1000
            await ws.send(msg)
            assert await asyncio.wait_for(ws.recv(), T) == msg
    with_chatd(main, "--echo")


def test_fragmented_text():
    async def main(d):
        async with connect(d) as ws:
            parts = ["frag-%d-" % i + "x" * (i * 100) for i in range(10)]
            await ws.send(parts)  # an iterable: one message in 10 fragments
            got = await asyncio.wait_for(ws.recv(), T)
            assert got == "".join(parts), "fragmented text: got %d chars" % len(got)
            # Multi-byte UTF-8 characters whole in each fragment.
            parts = ["\u00e9\u4e16", "\U0001F600", "", "abc"]
            await ws.send(parts)
            assert await asyncio.wait_for(ws.recv(), T) == "".join(parts)
    with_chatd(main, "--echo")


def test_fragmented_binary():
    async def main(d):
        async with connect(d) as ws:
            parts = [binary_payload(n) for n in (1, 125, 126, 70000, 0, 3)]

            async def agen():
                for p in parts:
                    yield p
                    await asyncio.sleep(0.01)

            await ws.send(agen())  # async iterable, fragments spaced in time
            got = await asyncio.wait_for(ws.recv(), T)
            assert isinstance(got, bytes)
            assert got == b"".join(parts), "fragmented binary: got %d bytes" % len(got)
            # The connection still works normally afterwards.
            await ws.send("after")
            assert await asyncio.wait_for(ws.recv(), T) == "after"
    with_chatd(main, "--echo")


def test_ping_pong():
    async def main(d):
        async with connect(d) as ws:
            for data in (b"", b"p", b"x" * 125, b"chatd-ping"):
                waiter = await ws.ping(data)
                await asyncio.wait_for(waiter, T)  # resolves only on a matching pong
            # Pings interleaved with data messages.
            waiters = []
            for i in range(10):
                waiters.append(await ws.ping(b"i%d" % i))
                await ws.send("m%d" % i)
            for i in range(10):
                assert await asyncio.wait_for(ws.recv(), T) == "m%d" % i
            await asyncio.wait_for(asyncio.gather(*waiters), T)
    with_chatd(main, "--echo")


def test_concurrent_connections_ordered():
    nconn, nmsg = 20, 200

    async def client(d, k):
        async with connect(d) as ws:
            async def sender():
                for i in range(nmsg):
                    await ws.send("c%d-m%d" % (k, i))
            task = asyncio.ensure_future(sender())
            for i in range(nmsg):
                got = await asyncio.wait_for(ws.recv(), T)
                assert got == "c%d-m%d" % (k, i), (k, i, got)
            await task
            await ws.close()
            assert ws.close_code == 1000, ws.close_code

    async def main(d):
        await asyncio.gather(*(client(d, k) for k in range(nconn)))
    with_chatd(main, "--echo")


def test_clean_close():
    async def main(d):
        ws = await connect(d)
        await ws.send("bye")
        assert await asyncio.wait_for(ws.recv(), T) == "bye"
        await ws.close()
        assert ws.close_code == 1000, "close code %s" % ws.close_code
        try:
            await ws.recv()
            raise AssertionError("recv after close should raise")
        except ConnectionClosed as e:
            assert e.code == 1000, "ConnectionClosed code %s" % e.code
        # Closing with a reason echoes 1000 too.
        ws = await connect(d)
        await ws.close(1000, "done")
        assert ws.close_code == 1000, "close code %s" % ws.close_code
    with_chatd(main, "--echo")


def test_max_message_bytes():
    async def main(d):
        async with connect(d) as ws:
            for msg in ("a" * 1000, b"\x01" * 1000):
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), T) == msg, "1000-byte message not echoed"
            # Exactly the limit as a fragmented message is also accepted.
            parts = ["b" * 400, "b" * 600]
            await ws.send(parts)
            assert await asyncio.wait_for(ws.recv(), T) == "".join(parts)
        for msg in ("a" * 1001, b"\x02" * 1001, ["c" * 500, "c" * 501]):
            async with connect(d) as ws:
                await ws.send(msg)
                try:
                    got = await asyncio.wait_for(ws.recv(), T)
                    raise AssertionError("over-limit message echoed (%d)" % len(got))
                except ConnectionClosed:
                    pass
                await asyncio.wait_for(ws.wait_closed(), T)
                assert ws.close_code == 1009, \
                    "over-limit %s: close code %s, expected 1009" % (type(msg).__name__,
                                                                   ws.close_code)
    with_chatd(main, "--echo", "--max-message-bytes", "1000")


if __name__ == "__main__":
    run([test_text_sizes, test_binary_sizes, test_utf8_text, test_fragmented_text,
         test_fragmented_binary, test_ping_pong, test_concurrent_connections_ordered,
         test_clean_close, test_max_message_bytes])
