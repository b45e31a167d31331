"""Authentication of the chat endpoint /ws and of the start-up key options.

Every refused token gets a prompt 401 with the JSON error body (code
`unauthorized`), the socket is closed, and nothing is registered (checked with
/api/admin/connections). RS256/ES256 tokens are signed with the `openssl` CLI
in a temporary directory. Start-up failures run the binary directly and expect
exit status 2 with exactly one line on stderr.
"""
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import harness  # noqa: E402
from harness import (SLOW, TEST_SECRET, WS, Chatd, http_get, json_error, make_token,  # noqa: E402
                     parse_response, run, upgrade_request)

SLACK = 5.0 if SLOW else 1.0


# ---- tokens -------------------------------------------------------------------

def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub="u1", ttl=3600, **extra):
    now = int(time.time())
    c = {"sub": sub, "exp": now + ttl, "iat": now}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def raw_token(header, payload, sign):
    """header/payload: dict or exact JSON text; sign(signing_input bytes) -> sig bytes."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    si = b64u(h) + "." + b64u(p)
    return si + "." + b64u(sign(si.encode()))


def hs(secret=TEST_SECRET, digest=hashlib.sha256):
    key = secret.encode() if isinstance(secret, str) else secret
    return lambda si: hmac.new(key, si, digest).digest()


def openssl(*args, data=None):
    r = subprocess.run(["openssl"] + list(args), input=data, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, "openssl %s: %s" % (" ".join(args), r.stderr.decode())
    return r.stdout


def rs_signer(key_path):
    return lambda si: openssl("dgst", "-sha256", "-sign", key_path, data=si)


def der_to_raw(der, size=32):
    """ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r || s."""
    def length(buf, pos):
        n = buf[pos]
        if n < 0x80:
            return n, pos + 1
        k = n & 0x7F
        return int.from_bytes(buf[pos + 1:pos + 1 + k], "big"), pos + 1 + k

    assert der[0] == 0x30, der
    _, pos = length(der, 1)
    out = b""
    for _ in range(2):
        assert der[pos] == 0x02, der
        n, pos = length(der, pos + 1)
        v = int.from_bytes(der[pos:pos + n], "big")
        pos += n
        out += v.to_bytes(size, "big")
    return out


def es_signer(key_path, raw=True):
    def sign(si):
        der = openssl("dgst", "-sha256", "-sign", key_path, data=si)
        return der_to_raw(der) if raw else der
    return sign


class Keys:
    """RSA and EC P-256 key pairs in a temporary directory."""

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="chatd-keys-")
        p = lambda n: os.path.join(self.dir, n)  # noqa: E731
        self.rsa_key, self.rsa_pub = p("rsa.pem"), p("rsa.pub.pem")
        self.ec_key, self.ec_pub = p("ec.pem"), p("ec.pub.pem")
        self.ec2_key = p("ec2.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", self.rsa_key)
        openssl("pkey", "-in", self.rsa_key, "-pubout", "-out", self.rsa_pub)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", self.ec_key)
        openssl("pkey", "-in", self.ec_key, "-pubout", "-out", self.ec_pub)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", self.ec2_key)
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


# ---- requests -----------------------------------------------------------------

def attempt(port, token=None, query=None, timeout=10.0):
    """One upgrade of /ws (token in the header, or raw query string). Returns
    (status, headers, body, seconds until the server closed the socket)."""
    path = "/ws" + ("?" + query if query is not None else "")
    req, _ = upgrade_request(path, token=token)
    t0 = time.time()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    chunks, eof = [], False
    try:
        s.sendall(req)
        while True:
            b = s.recv(65536)
            if not b:
                eof = True
                break
            chunks.append(b)
            if chunks[0].startswith(b"HTTP/1.1 101"):
                break
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError) as e:
        raise AssertionError("connection reset instead of an HTTP answer (got %r): %r" %
                             (b"".join(chunks)[:200], e))
    finally:
        s.close()
    took = time.time() - t0
    raw = b"".join(chunks)
    assert raw, "no answer"
    status, headers, body = parse_response(raw)
    if status != 101:
        assert eof, "socket not closed after %s" % status
    return status, headers, body, took


def expect_401(port, token=None, query=None, why=""):
    status, headers, body, took = attempt(port, token=token, query=query)
    assert status == 401, "%s: expected 401, got %s %r" % (why, status, body)
    assert headers.get("content-type") == "application/json", (why, headers)
    err = json_error(body)
    assert err["code"] == "unauthorized", (why, err)
    assert isinstance(err["message"], str) and err["message"], (why, err)
    assert took < 1.0 * SLACK, "%s: refusal took %.2fs" % (why, took)
    return err


def expect_accepted(port, token=None, query=None, sub=None):
    path = "/ws" + ("?" + query if query is not None else "")
    ws = WS(port, path=path, token=token)
    st = ws.recv_json()
    assert st["type"] == "connection_status", st
    if sub:
        assert st["user_id"] == sub, st
    ws.close(1000)
    assert ws.expect_close() == 1000
    ws.expect_eof()
    ws.shut()
    return st


def connections(port, admin_token):
    status, _, body = http_get(port, "/api/admin/connections",
                               {"Authorization": "Bearer " + admin_token})
    assert status == 200, (status, body)
    return json.loads(body)


def assert_nothing_registered(port, admin_token):
    deadline = time.time() + 3.0 * SLACK
    while True:
        doc = connections(port, admin_token)
        if doc["total_devices"] == 0:
            break
        assert time.time() < deadline, doc
        time.sleep(0.05)
    assert doc == {"users": [], "total_devices": 0, "total_users": 0, "scope": "node"}, doc


ADMIN = make_token("root", roles=["admin"])


# ---- HS256 refusals ---------------------------------------------------------------

def test_missing_token():
    with Chatd() as d:
        err = expect_401(d.port, why="no token")
        assert "token" in err["message"], err
        expect_401(d.port, query="", why="empty query")
        expect_401(d.port, query="token=", why="empty token parameter")
        status, _, body, _ = attempt(d.port, query=None, token=None)
        assert status == 401
        assert_nothing_registered(d.port, ADMIN)


def test_bad_signature():
    with Chatd() as d:
        expect_401(d.port, make_token("u1", secret="another-secret-0123456789abcdefghij"),
                   why="other secret")
        good = make_token("u1")
        h, p, s = good.split(".")
        flipped = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
        expect_401(d.port, ".".join([h, p, flipped]), why="flipped signature")
        forged = b64u(json.dumps(claims("admin", roles=["admin"])))
        expect_401(d.port, ".".join([h, forged, s]), why="payload swapped")
        expect_401(d.port, ".".join([h, p]), why="two segments")
        expect_401(d.port, "not-a-jwt", why="garbage")
        expect_401(d.port, h + "." + p + ".", why="empty signature")
        assert_nothing_registered(d.port, ADMIN)


def test_alg_none():
    with Chatd() as d:
        for hdr in ({"alg": "none", "typ": "JWT"}, {"alg": "None"}, {"alg": "NONE"}):
            tok = raw_token(hdr, claims("u1", roles=["admin"]), lambda si: b"")
            assert tok.endswith(".")
            expect_401(d.port, tok, why="alg %s, empty signature" % hdr["alg"])
        # alg none with an HMAC signature anyway.
        expect_401(d.port, make_token("u1", alg="none"), why="alg none signed")
        # Another alg than the configured one, even if correctly computed.
        expect_401(d.port, raw_token({"alg": "HS384", "typ": "JWT"}, claims("u1"),
                                     hs(digest=hashlib.sha384)), why="HS384")
        expect_401(d.port, raw_token({"typ": "JWT"}, claims("u1"), hs()), why="no alg")
        assert_nothing_registered(d.port, ADMIN)


def test_expired():
    with Chatd() as d:
        expect_401(d.port, make_token("u1", ttl=-10), why="expired 10 s ago")
        expect_401(d.port, make_token("u1", ttl=-3600), why="expired 1 h ago")
        expect_401(d.port, make_token("u1", exp=None), why="no exp")
        assert_nothing_registered(d.port, ADMIN)


def test_nbf_and_iat_in_future():
    with Chatd() as d:
        now = int(time.time())
        expect_401(d.port, make_token("u1", nbf=now + 120), why="nbf +120 s")
        expect_401(d.port, make_token("u1", iat=now + 120), why="iat +120 s")
        assert_nothing_registered(d.port, ADMIN)
        # Within the 60 s leeway: accepted.
        expect_accepted(d.port, make_token("u1", nbf=now + 30, iat=now + 30), sub="u1")
        expect_accepted(d.port, make_token("u1", nbf=now - 30), sub="u1")
        assert_nothing_registered(d.port, ADMIN)


def test_non_integer_exp():
    with Chatd() as d:
        future = int(time.time()) + 3600
        for exp in (1.5, "123", future + 0.5, str(future), True, None, [future],
                    {"t": future}):
            tok = raw_token({"alg": "HS256", "typ": "JWT"}, {"sub": "u1", "exp": exp}, hs())
            expect_401(d.port, tok, why="exp %r" % (exp,))
        assert_nothing_registered(d.port, ADMIN)


def test_bad_sub():
    with Chatd() as d:
        for sub in (None, "", 42, "x" * 129, "a\u0001b"):
            tok = raw_token({"alg": "HS256", "typ": "JWT"},
                            {k: v for k, v in {"sub": sub, "exp": int(time.time()) + 600}.items()
                             if v is not None}, hs())
            expect_401(d.port, tok, why="sub %r" % (sub,))
        assert_nothing_registered(d.port, ADMIN)
        expect_accepted(d.port, make_token("x" * 128), sub="x" * 128)


def test_duplicate_claims():
    with Chatd() as d:
        exp = int(time.time()) + 3600
        hdr = {"alg": "HS256", "typ": "JWT"}
        for text in ('{"sub":"alice","sub":"mallory","exp":%d}' % exp,
                     '{"sub":"alice","exp":%d,"exp":%d}' % (exp, exp),
                     '{"sub":"alice","exp":%d,"roles":["user"],"roles":["admin"]}' % exp):
            expect_401(d.port, raw_token(hdr, text, hs()), why=text)
        # A duplicate in the header too.
        tok = raw_token('{"alg":"HS256","alg":"HS256","typ":"JWT"}',
                        '{"sub":"alice","exp":%d}' % exp, hs())
        expect_401(d.port, tok, why="duplicate alg")
        assert_nothing_registered(d.port, ADMIN)
        # The same text without the duplicate is fine.
        expect_accepted(d.port, raw_token(hdr, '{"sub":"alice","exp":%d}' % exp, hs()),
                        sub="alice")


def test_crit_header():
    with Chatd() as d:
        for hdr in ({"alg": "HS256", "typ": "JWT", "crit": ["x-unknown"], "x-unknown": 1},
                    {"alg": "HS256", "crit": ["exp"]},
                    {"alg": "HS256", "crit": []}):
            expect_401(d.port, make_token("u1", header=hdr), why="crit %r" % hdr)
        assert_nothing_registered(d.port, ADMIN)


def test_token_size_limits():
    with Chatd() as d:
        # A 64 KiB token makes the request head exceed 16 KiB: 431, JSON body.
        huge = make_token("u1", pad="p" * 65536)
        assert len(huge) > 65536
        for how in ("header", "query"):
            if how == "header":
                status, headers, body, took = attempt(d.port, token=huge)
            else:
                status, headers, body, took = attempt(d.port, query="token=" + huge)
            assert status == 431, (how, status, body[:200])
            assert headers.get("content-type") == "application/json", (how, headers)
            assert json_error(body)["code"], body
            assert took < 2.0 * SLACK, (how, took)
        # Over 8 KiB but under the head limit: 401; up to 8 KiB: accepted.
        best = None
        for n in range(5500, 6500):
            tok = make_token("u1", pad="p" * n)
            if len(tok) <= 8192:
                best = tok
            else:
                break
        assert best and 8188 <= len(best) <= 8192, len(best)
        big = make_token("u1", pad="p" * n)
        assert 8192 < len(big) <= 8194, len(big)
        expect_401(d.port, big, why="token over 8 KiB in the header")
        expect_401(d.port, query="token=" + big, why="token over 8 KiB in the query")
        assert_nothing_registered(d.port, ADMIN)
        expect_accepted(d.port, best, sub="u1")
        expect_accepted(d.port, query="token=" + best, sub="u1")
        assert d.alive()


def test_query_token_accepted():
    with Chatd() as d:
        tok = make_token("qq", name="Q")
        st = expect_accepted(d.port, query="token=" + tok, sub="qq")
        assert st["name"] == "Q", st
        st = expect_accepted(d.port, query="a=1&token=" + tok + "&b=2", sub="qq")
        expect_401(d.port, query="token=" + make_token("qq", ttl=-5), why="expired in query")
        # The header wins over the query string.
        st = expect_accepted(d.port, token=make_token("hdr"), query="token=" + tok, sub="hdr")
        assert_nothing_registered(d.port, ADMIN)


def test_token_never_logged():
    for level in ("info", "debug"):
        with Chatd("--log-level", level) as d:
            good = make_token("loggy", name="Loggy")
            bad = make_token("loggy", secret="another-secret-0123456789abcdefghij")
            expired = make_token("loggy", ttl=-100)
            expect_accepted(d.port, good, sub="loggy")
            expect_accepted(d.port, query="token=" + good, sub="loggy")
            expect_401(d.port, bad, why="bad")
            expect_401(d.port, query="token=" + bad, why="bad in query")
            expect_401(d.port, expired, why="expired")
            connections(d.port, ADMIN)
            http_get(d.port, "/api/admin/connections", {"Authorization": "Bearer " + bad})
            log = d.log()
            assert "auth_refused" in log or level != "info", log[-2000:]
            for tok in (good, bad, expired, ADMIN):
                assert tok not in log, "token in the %s log" % level
                sig = tok.rsplit(".", 1)[1]
                assert sig not in log, "signature in the %s log" % level
                assert tok.split(".")[1] not in log, "payload segment in the %s log" % level


# ---- iss / aud ----------------------------------------------------------------------

def test_issuer_and_audience():
    iss, aud = "https://issuer.example", "chatd"
    with Chatd("--jwt-secret", TEST_SECRET, "--jwt-issuer", iss, "--jwt-audience", aud) as d:
        admin = make_token("root", roles=["admin"], iss=iss, aud=aud)
        expect_401(d.port, make_token("u1", iss="https://evil.example", aud=aud), why="iss")
        expect_401(d.port, make_token("u1", iss=iss, aud="other"), why="aud")
        expect_401(d.port, make_token("u1", aud=aud), why="no iss")
        expect_401(d.port, make_token("u1", iss=iss), why="no aud")
        expect_401(d.port, make_token("u1", iss=iss, aud=["other", "x"]), why="aud list")
        expect_401(d.port, make_token("u1", iss=iss.upper(), aud=aud), why="iss case")
        assert_nothing_registered(d.port, admin)
        expect_accepted(d.port, make_token("u1", iss=iss, aud=aud), sub="u1")
        expect_accepted(d.port, make_token("u1", iss=iss, aud=["other", aud]), sub="u1")
        # The admin API applies the same rules.
        status, _, _ = http_get(d.port, "/api/admin/connections",
                                {"Authorization": "Bearer " + ADMIN})
        assert status == 401, status
        assert_nothing_registered(d.port, admin)


# ---- RS256 / ES256 ---------------------------------------------------------------------

def test_rs256_and_hs_rs_confusion():
    with Keys() as k:
        sign = rs_signer(k.rsa_key)
        rs_hdr = {"alg": "RS256", "typ": "JWT"}
        admin = raw_token(rs_hdr, claims("root", roles=["admin"]), sign)
        with Chatd("--jwt-alg", "RS256", "--jwt-public-key", k.rsa_pub) as d:
            with open(k.rsa_pub, "rb") as f:
                pem = f.read()
            # HS256 keyed with the public key text (with and without newline).
            for key in (pem, pem.rstrip(b"\n")):
                tok = raw_token({"alg": "HS256", "typ": "JWT"}, claims("u1", roles=["admin"]),
                                hs(key))
                expect_401(d.port, tok, why="HS256 keyed with the public key")
                tok = raw_token(rs_hdr, claims("u1"), hs(key))
                expect_401(d.port, tok, why="RS256 header, HMAC signature")
            expect_401(d.port, make_token("u1"), why="HS256 with the test secret")
            expect_401(d.port, raw_token(rs_hdr, claims("u1"), lambda si: b""), why="no sig")
            expect_401(d.port, raw_token(rs_hdr, claims("u1", ttl=-10), sign), why="expired")
            expect_401(d.port, raw_token({"alg": "ES256"}, claims("u1"),
                                         es_signer(k.ec_key)), why="ES256 on RS256 server")
            good = raw_token(rs_hdr, claims("u1"), sign)
            h, p, s = good.split(".")
            other = b64u(json.dumps(claims("u2")))
            expect_401(d.port, ".".join([h, other, s]), why="RS256 payload swapped")
            assert_nothing_registered(d.port, admin)
            # A correctly signed RS256 token is accepted.
            st = expect_accepted(d.port, good, sub="u1")
            assert st["roles"] == ["user"], st
            expect_accepted(d.port, query="token=" + good, sub="u1")
            assert_nothing_registered(d.port, admin)


def test_es256():
    with Keys() as k:
        sign = es_signer(k.ec_key)
        hdr = {"alg": "ES256", "typ": "JWT"}
        admin = raw_token(hdr, claims("root", roles=["admin"]), sign)
        with Chatd("--jwt-alg", "ES256", "--jwt-public-key", k.ec_pub) as d:
            for i in range(3):  # signatures are randomized: several of them
                st = expect_accepted(d.port, raw_token(hdr, claims("ec%d" % i), sign),
                                     sub="ec%d" % i)
            # DER (not JWS r||s), another key, another alg: refused.
            expect_401(d.port, raw_token(hdr, claims("u1"), es_signer(k.ec_key, raw=False)),
                       why="DER signature")
            expect_401(d.port, raw_token(hdr, claims("u1"), es_signer(k.ec2_key)),
                       why="other EC key")
            expect_401(d.port, raw_token({"alg": "HS256"}, claims("u1"),
                                         hs(open(k.ec_pub, "rb").read())),
                       why="HS256 keyed with the EC public key")
            expect_401(d.port, raw_token({"alg": "RS256"}, claims("u1"), rs_signer(k.rsa_key)),
                       why="RS256 on ES256 server")
            good = raw_token(hdr, claims("u1"), sign)
            h, p, s = good.split(".")
            sig = base64.urlsafe_b64decode(s + "==")
            bad = b64u(sig[:32] + bytes([sig[32] ^ 1]) + sig[33:])
            expect_401(d.port, ".".join([h, p, bad]), why="s flipped")
            expect_401(d.port, ".".join([h, p, b64u(b"\x00" * 64)]), why="zero signature")
            assert_nothing_registered(d.port, admin)
            st = expect_accepted(d.port, good, sub="u1")
            assert_nothing_registered(d.port, admin)


# ---- start-up --------------------------------------------------------------------

def start_fails(*args):
    """chatd with these options must exit 2 with exactly one line on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_JWT")}
    r = subprocess.run([harness.CHATD_BIN, "--listen", "127.0.0.1:0"] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                       timeout=30 * SLACK)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2, "%s: exit %s, stderr %r" % (args, r.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), "%s: stderr %r" % (args, err)
    return lines[0]


def test_startup_failures():
    tmp = tempfile.mkdtemp(prefix="chatd-auth-")
    try:
        line = start_fails("--jwt-secret", "s" * 31)
        assert "--jwt-secret" in line, line
        missing = os.path.join(tmp, "missing")
        line = start_fails("--jwt-secret-file", missing)
        assert "--jwt-secret-file" in line, line
        line = start_fails("--jwt-secret-file", tmp)  # a directory: unreadable
        assert "--jwt-secret-file" in line, line
        short = os.path.join(tmp, "short")
        with open(short, "w") as f:
            f.write("s" * 31 + "\n")
        line = start_fails("--jwt-secret-file", short)
        assert "--jwt-secret-file" in line, line
        line = start_fails("--jwt-alg", "RS256", "--jwt-public-key", missing)
        assert "--jwt-public-key" in line, line
        line = start_fails("--jwt-alg", "ES256", "--jwt-public-key", tmp)
        assert "--jwt-public-key" in line, line
        line = start_fails("--jwt-alg", "RS256")
        assert "--jwt-public-key" in line, line
        start_fails()  # no key, no --dev, no --echo
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_secret_file_with_newline():
    tmp = tempfile.mkdtemp(prefix="chatd-auth-")
    try:
        secret = "0123456789abcdef0123456789abcdef"
        assert len(secret) == 32
        path = os.path.join(tmp, "secret")
        with open(path, "w") as f:
            f.write(secret + "\n")
        with Chatd("--jwt-secret-file", path) as d:
            expect_accepted(d.port, make_token("filer", secret=secret), sub="filer")
            expect_401(d.port, make_token("filer", secret=secret + "\n"), why="newline keyed")
            expect_401(d.port, make_token("filer"), why="harness secret")
            admin = make_token("root", roles=["admin"], secret=secret)
            assert_nothing_registered(d.port, admin)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run([test_missing_token, test_bad_signature, test_alg_none, test_expired,
         test_nbf_and_iat_in_future, test_non_integer_exp, test_bad_sub, test_duplicate_claims,
         test_crit_header, test_token_size_limits, test_query_token_accepted,
         test_token_never_logged, test_issuer_and_audience, test_rs256_and_hs_rs_confusion,
         test_es256, test_startup_failures, test_secret_file_with_newline])
