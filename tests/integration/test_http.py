"""HTTP surface of the gateway: health, readiness, errors, limits, keep-alive."""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import Chatd, http_get, http_raw, json_error, parse_response, run  # noqa: E402


def test_healthz_and_readyz():
    with Chatd() as d:
        status, headers, body = http_get(d.port, "/healthz")
        assert status == 200 and body == b'{"status":"ok"}', (status, body)
        assert headers["content-type"] == "application/json"
        status, _, body = http_get(d.port, "/readyz")
        assert status == 200, body


def test_unknown_path_is_json_404():
    with Chatd() as d:
        status, _, body = http_get(d.port, "/nope")
        assert status == 404
        assert json_error(body)["code"] == "not_found"


def test_prefix():
    with Chatd("--prefix", "/chat") as d:
        assert http_get(d.port, "/chat/healthz")[0] == 200
        assert http_get(d.port, "/healthz")[0] == 404


def test_echo_off_by_default():
    with Chatd() as d:
        assert http_get(d.port, "/echo")[0] == 404


def test_keep_alive_serves_several_requests():
    with Chatd() as d:
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        data = b""
        for _ in range(3):
            s.sendall(req)
            while data.count(b'{"status":"ok"}') < _ + 1:
                data += s.recv(4096)
        # Pipelined: two heads in one segment, two answers.
        s.sendall(req + req)
        while data.count(b'{"status":"ok"}') < 5:
            data += s.recv(4096)
        s.close()


def test_head_of_16k_accepted_and_larger_refused_431():
    with Chatd() as d:
        base = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        filler = 16384 - len(base) - len(b"X-Pad: \r\n\r\n")
        ok = base + b"X-Pad: " + b"a" * filler + b"\r\n\r\n"
        assert len(ok) == 16384
        assert parse_response(http_raw(d.port, ok))[0] == 200
        big = base + b"X-Pad: " + b"a" * (filler + 1) + b"\r\n\r\n"
        status, _, body = parse_response(http_raw(d.port, big))
        assert status == 431, status
        assert json_error(body)["code"] == "bad_request"


def test_101_headers_ok_101_refused_431():
    with Chatd() as d:
        hdrs = "".join("X-H%d: v\r\n" % i for i in range(98))
        ok = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + hdrs + "\r\n"
        assert parse_response(http_raw(d.port, ok.encode()))[0] == 200
        hdrs = "".join("X-H%d: v\r\n" % i for i in range(99))
        bad = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + hdrs + "\r\n"
        assert parse_response(http_raw(d.port, bad.encode()))[0] == 431


def test_malformed_request_400():
    with Chatd() as d:
        status, _, body = parse_response(http_raw(d.port, b"BLAH\r\n\r\n"))
        assert status == 400
        assert json_error(body)["code"] == "bad_request"
        # The server is unharmed.
        assert http_get(d.port, "/healthz")[0] == 200


def test_slow_head_closed_after_timeout():
    with Chatd() as d:
        s = socket.create_connection(("127.0.0.1", d.port), timeout=20)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.time()
        data = s.recv(1024)
        took = time.time() - t0
        assert data == b"", data
        assert 9 <= took <= 15, took
        assert http_get(d.port, "/healthz")[0] == 200


def test_post_to_healthz_405():
    with Chatd() as d:
        status, headers, body = http_get(d.port, "/healthz", method="POST")
        assert status == 405 and "GET" in headers["allow"]


if __name__ == "__main__":
    run([test_healthz_and_readyz, test_unknown_path_is_json_404, test_prefix,
         test_echo_off_by_default, test_keep_alive_serves_several_requests,
         test_head_of_16k_accepted_and_larger_refused_431, test_101_headers_ok_101_refused_431,
         test_malformed_request_400, test_slow_head_closed_after_timeout,
         test_post_to_healthz_405])
