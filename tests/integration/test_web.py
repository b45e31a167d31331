"""The web pages chatd serves (docs/protocol.md sections 7 and 9): {prefix}/ the chat page,
{prefix}/admin the admin page, {prefix}/assets/NAME the rest of web/. Every
answer is compared byte for byte with the file in the source tree, so what
the binary embeds is what web/ holds. (The pages' behaviour in a real browser
is tests/interop/test_web.js.)"""
import os
import re
import select
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import WS, Chatd, http_get, http_raw, json_error, run  # noqa: E402

WEB = os.path.join(os.path.dirname(__file__), "..", "..", "web")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".ico": "image/x-icon", ".json": "application/json"}


def web_file(name):
    with open(os.path.join(WEB, name), "rb") as f:
        return f.read()


def assets():
    return sorted(n for n in os.listdir(WEB)
                  if not n.startswith(".") and os.path.isfile(os.path.join(WEB, n)))


def check_page(port, path, name):
    status, h, body = http_get(port, path)
    assert status == 200, (path, status, body[:200])
    assert body == web_file(name), "%s does not serve web/%s as it is" % (path, name)
    assert h["content-type"] == TYPES[os.path.splitext(name)[1]], h
    assert re.fullmatch(r'"[0-9a-f]{20}"', h.get("etag", "")), h
    assert h["cache-control"] == "no-cache", h
    csp = h.get("content-security-policy", "")
    for directive in ("default-src 'self'", "script-src 'self'", "connect-src 'self' ws: wss:",
                      "frame-ancestors 'none'"):
        assert directive in csp, (directive, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert h["x-content-type-options"] == "nosniff", h
    return h


def test_pages_and_assets_are_served_as_in_the_tree():
    with Chatd() as d:
        check_page(d.port, "/", "chat.html")
        check_page(d.port, "/admin", "admin.html")
        others = [n for n in assets() if n not in ("chat.html", "admin.html")]
        assert others, "web/ holds only the two pages: the pages load nothing?"
        for name in others:
            check_page(d.port, "/assets/" + name, name)


def test_pages_reference_only_served_assets():
    # Every local script/stylesheet/icon the pages name is served: a page
    # cannot point at a file that the binary does not hold.
    with Chatd() as d:
        for page, url in (("chat.html", "/"), ("admin.html", "/admin")):
            html = web_file(page).decode()
            refs = re.findall(r'(?:src|href)="([^"#:]+)"', html)
            assert refs, page
            for ref in refs:
                path = urllib.parse.urljoin(url, ref)
                status, _, body = http_get(d.port, path)
                assert status == 200, (page, ref, path, status)
            # The policy forbids inline code: the pages must not need it.
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page
            assert not re.search(r"\son[a-z]+\s*=", html), page
            assert "<style" not in html and " style=" not in html, page


def test_conditional_get_and_head():
    with Chatd() as d:
        h = check_page(d.port, "/", "chat.html")
        etag = h["etag"]
        status, h2, body = http_get(d.port, "/", {"If-None-Match": etag})
        assert status == 304 and body == b"", (status, body[:100])
        assert h2["etag"] == etag
        status, _, _ = http_get(d.port, "/", {"If-None-Match": 'W/"x", ' + etag})
        assert status == 304
        status, _, body = http_get(d.port, "/", {"If-None-Match": '"0000"'})
        assert status == 200 and body == web_file("chat.html")
        # HEAD: the head of the GET, no body.
        raw = http_raw(d.port, b"HEAD /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"Content-Length: %d" % len(web_file("admin.html")) in head, head
        assert rest == b"", rest[:100]
        # Keep-alive: a page, then the next request on the same connection.
        req = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = http_raw(d.port, req)
        assert raw.count(b"HTTP/1.1 200") == 2, raw[:300]
        assert raw.endswith(b'{"status":"ok"}'), raw[-100:]


def test_bad_requests_for_pages():
    with Chatd() as d:
        status, h, body = http_get(d.port, "/", method="POST")
        assert status == 405 and "GET" in h.get("allow", ""), (status, h)
        assert json_error(body)["code"] == "method_not_allowed"
        for path in ("/assets/", "/assets/nope.js", "/assets/../chat.html", "/assets/.hidden",
                     "/assets/a/b.js", "/admin/", "/chat.html"):
            status, _, body = http_get(d.port, path)
            assert status == 404, (path, status)
            assert json_error(body)["code"] == "not_found", (path, body)
        assert d.alive()


def test_pages_under_a_prefix():
    with Chatd("--prefix", "/support") as d:
        status, h, _ = http_get(d.port, "/support")
        assert status == 308 and h["location"] == "/support/", (status, h)
        status, h, _ = http_get(d.port, "/support?lang=fr")
        assert status == 308 and h["location"] == "/support/?lang=fr", (status, h)
        check_page(d.port, "/support/", "chat.html")
        check_page(d.port, "/support/admin", "admin.html")
        name = [n for n in assets() if n.endswith(".js")][0]
        check_page(d.port, "/support/assets/" + name, name)
        for path in ("/", "/admin", "/assets/" + name):
            status, _, _ = http_get(d.port, path)
            assert status == 404, (path, status)


def read_banner(proc, timeout):
    """The lines --dev prints on stdout, up to the blank line after them."""
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline and b"mint more" not in out:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    return out.decode()


def test_dev_banner_page_url_works():
    # What `make run` prints: the page URL carries a working token in its
    # fragment (never sent to the server by a browser).
    with Chatd("--dev") as d:
        banner = read_banner(d.proc, 20)
        m = re.search(r"chat page:\s+(http://\S+)", banner)
        assert m, banner
        url = urllib.parse.urlsplit(m.group(1))
        assert url.port == d.port and url.path == "/", url
        frag = urllib.parse.parse_qs(url.fragment)
        token = frag["token"][0]
        check_page(d.port, url.path, "chat.html")
        m = re.search(r"admin page:\s+(http://\S+)", banner)
        assert m and urllib.parse.urlsplit(m.group(1)).path == "/admin", banner
        ws = WS(d.port, "/ws?token=" + urllib.parse.quote(token))
        status = ws.recv_json()
        assert status["type"] == "connection_status", status
        assert status["user_id"] == "dev" and "admin" in status["roles"], status
        ws.close()
        ws.shut()


if __name__ == "__main__":
    run([test_pages_and_assets_are_served_as_in_the_tree, test_pages_reference_only_served_assets,
         test_conditional_get_and_head, test_bad_requests_for_pages, test_pages_under_a_prefix,
         test_dev_banner_page_url_works])
