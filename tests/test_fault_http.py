"""Fault suite, malformed HTTP: every request that can still be answered gets a 4xx/5xx with a
short body and the connection closes; the documented closes without an answer are a client
that sends nothing (or only blank lines) and one whose request line and headers do not arrive
within HEADER_TIMEOUT. The proxy stays healthy throughout.

Seeded: a failure names the seed and the case.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading

import pytest
from helpers import wait_until
from httpkit import Proxy, config, model

SEED = 18
BODY = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).encode()
GOOD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
# for requests sent with a half-close: a model request's client that half-closes counts as
# gone (as in upstream), so these name no model and are answered by the proxy itself
UNKNOWN = BODY.replace(b'"m1"', b'"nope"')
NOPE = b"404 Not Found", b"no router for requested model: nope"


@pytest.fixture
def proxy():
    with Proxy(config(model("m1"))) as p:
        yield p


def exchange(port: int, data: bytes, half_close: bool = True, timeout: float = 10) -> bytes:
    """Send ``data``, signal the end of input, and read until the proxy closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out + b"<reset>"
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer[9:12])


def healthy(p: Proxy) -> None:
    assert p.request("GET", "/health")[:1] == (200,)


REQ = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
CASES = [
    # (name, bytes, expected status, text in the body)
    ("garbage line", b"GARBAGE\r\n\r\n", 400, b"malformed HTTP request"),
    ("binary", bytes(range(256)) * 4, 400, b"malformed HTTP request"),
    ("two words", b"GET /health\r\n\r\n", 400, b"malformed HTTP request"),
    ("HTTP/0.9", b"GET /health\r\n", 400, b"malformed HTTP request"),
    ("no target", b"GET  HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"malformed HTTP request"),
    ("bad version", b"GET /health HTTP/1.x\r\nHost: x\r\n\r\n", 400, b"malformed HTTP version"),
    ("HTTP/2", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, b"unsupported protocol version"),
    ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, b"unsupported protocol version"),
    ("bad method", "GÉT /health HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400, b"invalid method"),
    ("control in target", b"GET /he\x01alth HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"invalid request URI"),
    ("relative target", b"GET health HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"invalid request URI"),
    ("line too long", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, b"too long"),
    ("no Host", b"GET /health HTTP/1.1\r\n\r\n", 400, b"missing required Host header"),
    ("two Hosts", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"too many Host"),
    ("no colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400, b"bad header line"),
    ("space in name", b"GET /health HTTP/1.1\r\nHost: x\r\nX Y: z\r\n\r\n", 400, b"invalid header name"),
    ("space before colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", 400, b"bad header line"),
    ("NUL in value", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, b"invalid header value"),
    ("bare CR in value", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400, b"invalid header value"),
    ("header too long", b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, b""),
    ("too many headers", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 150 + b"\r\n", 431, b""),
    ("headers cut", b"GET /health HTTP/1.1\r\nHost: x\r\n", 400, b"headers ended early"),
    ("negative length", REQ + b"Content-Length: -5\r\n\r\n", 400, b"bad Content-Length"),
    ("overflowing length", REQ + b"Content-Length: 99999999999999999999\r\n\r\n", 400, b"bad Content-Length"),
    ("junk length", REQ + b"Content-Length: 12abc\r\n\r\n", 400, b"bad Content-Length"),
    ("two lengths", REQ + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, b"multiple Content-Length"),
    ("unknown coding", REQ + b"Transfer-Encoding: gzip\r\n\r\n", 501, b"unsupported transfer encoding"),
    ("two codings", REQ + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, b"unsupported"),
    ("body cut", REQ + b"Content-Length: 100\r\n\r\n{\"model\":", 400, b"body ended early (9 of 100 bytes)"),
    ("chunk cut", REQ + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel", 400, b"body ended early"),
    ("bad chunk size", REQ + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, b"bad chunk size"),
    ("negative chunk", REQ + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400, b"bad chunk size"),
    ("prefixed chunk", REQ + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400, b"bad chunk size"),
    ("huge chunk", REQ + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nx", 400, b"bad chunk size"),
    ("chunk without CRLF", REQ + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400, b"bad chunk size"),
]
ACCEPTED = [
    # leniencies kept on purpose, each still a well-formed answer
    ("bare LF", b"GET /health HTTP/1.1\nHost: x\n\n", 200),
    ("folded header", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n", 200),
    ("blank lines first", b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("HTTP/1.0 without Host", b"GET /health HTTP/1.0\r\n\r\n", 200),
    ("absolute form", b"GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    # the body is read whole (the answer names its model)
    ("chunked with extension and trailer",
     REQ + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(UNKNOWN), UNKNOWN), 404),
    ("length and chunked", REQ + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"%x\r\n%s\r\n0\r\n\r\n" % (len(UNKNOWN), UNKNOWN), 404),
    ("same length twice", REQ + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
     % (len(UNKNOWN), len(UNKNOWN), UNKNOWN), 404),
]


def test_malformed_requests_get_an_answer(proxy):
    for case, (name, data, status, text) in enumerate(CASES):
        answer = exchange(proxy.port, data)
        where = f"case {case} ({name}): {answer[:300]!r}"
        assert status_of(answer) == status, where
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"\r\nConnection: close\r\n" in head + b"\r\n", where
        assert text in body and len(body) < 400, where
        assert b"<reset>" not in answer, where
    healthy(proxy)


def test_lenient_but_well_formed(proxy):
    for case, (name, data, status) in enumerate(ACCEPTED):
        answer = exchange(proxy.port, data)
        assert status_of(answer) == status, f"case {case} ({name}): {answer[:300]!r}"
        if status == 404:
            assert NOPE[1] in answer, f"case {case} ({name}): {answer[:300]!r}"
    healthy(proxy)


def test_documented_closes(proxy, monkeypatch):
    from llamaswap.http import server
    assert exchange(proxy.port, b"") == b""  # nothing sent: nothing to answer
    assert exchange(proxy.port, b"\r\n\r\n") == b""
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 0.5)
    # headers that never finish: cut after HEADER_TIMEOUT (the reaper), without an answer
    assert exchange(proxy.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", half_close=False) == b""
    healthy(proxy)


def test_seeded_mutations_of_a_good_request(proxy):
    """Truncated, flipped, inserted and deleted bytes anywhere in a request: every case is
    answered with a well-formed status line (never 500), or closed only when nothing of a
    request line arrived."""
    rng = random.Random(SEED)
    garbage = [b"\x00", b"\r", b"\n", b"\r\n", b" ", b":", b"\xff", b"-1", b"\t", b"\r\n\r\n"]
    base = GOOD.replace(b"%d\r\n\r\n" % len(BODY), b"%d\r\n\r\n" % len(UNKNOWN)).replace(BODY, UNKNOWN)
    for case in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            if not data:
                break
            op = rng.randrange(4)
            at = rng.randrange(len(data))
            if op == 0:
                del data[at:]
            elif op == 1:
                data[at] = rng.randrange(256)
            elif op == 2:
                data[at:at] = rng.choice(garbage)
            else:
                del data[at:at + rng.randint(1, 8)]
        answer = exchange(proxy.port, bytes(data))
        where = f"seed {SEED} case {case}: {bytes(data)[:200]!r} -> {answer[:200]!r}"
        if not data.strip(b"\r\n"):
            assert answer == b"", where
            continue
        status = status_of(answer)
        assert 400 <= status < 600 and status != 500, where
        assert len(answer.partition(b"\r\n\r\n")[2]) < 1000, where
    healthy(proxy)


def test_slow_partial_sends_are_served(proxy):
    """A request trickling in, a few bytes at a time (seeded splits), is served whole."""
    rng = random.Random(SEED)
    for case in range(3):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        try:
            at = 0
            while at < len(GOOD):
                step = rng.randint(1, 40)
                s.sendall(GOOD[at:at + step])
                at += step
                threading.Event().wait(rng.uniform(0, 0.005))  # the client's pace, not a sync
            r = http.client.HTTPResponse(s, method="POST")
            r.begin()
            assert r.status == 200, f"seed {SEED} case {case}: {r.status}"
            assert json.loads(r.read())["model"] == "m1"
        finally:
            s.close()


def read_response(f) -> tuple[int, bytes]:
    """One response with a Content-Length from a buffered reader shared by pipelined answers."""
    status = int(f.readline()[9:12])
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, f.read(length)


def test_pipelined_requests_are_answered_in_order(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + GOOD
                  + b"GET /running HTTP/1.1\r\nHost: x\r\n\r\n"
                  + b"BROKEN\r\n\r\n" + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        answers = [read_response(f) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 400]
        assert answers[0][1] == b"OK" and json.loads(answers[1][1])["model"] == "m1"
        assert "running" in json.loads(answers[2][1])
        assert b"malformed HTTP request" in answers[3][1]
        assert f.read() == b""  # the broken one closed the connection: the last is not read
        f.close()
    finally:
        s.close()


def test_abrupt_clients_leave_nothing_behind(proxy):
    """Connections reset at every stage of a request: the proxy keeps serving and tracks no
    connection afterwards."""
    rng = random.Random(SEED)
    for case in range(40):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(GOOD[:rng.randrange(len(GOOD))])
        s.close()  # linger 0: a reset, not a close
    healthy(proxy)
    assert wait_until(lambda: len(proxy.server._conns) == 0, 10), len(proxy.server._conns)
