"""The HTTP front's pure pieces: route table, errors, auth parsing, filters, /upstream path
matching, loading-stream framing."""

import base64
import json
import random
import types

import pytest

from llamaswap.config.model import Config, Filters, ModelConfig, SelectorConfig, freeze
from llamaswap.http import auth, errors, filters, loading, virtual
from llamaswap.http.extract import Extracted
from llamaswap.http.headers import Headers
from llamaswap.router.profiles import ProfileSwitch
from llamaswap.router.selectors import Selectors
from llamaswap.http.routes import RouteTable
from llamaswap.http.upstream_path import find_model


def test_route_table_exact_wildcards_head_and_405():
    t = RouteTable()
    t.add("GET", "/running", "running")
    t.add("POST", "/api/models/unload", "all")
    t.add("POST", "/api/models/unload/{model...}", "one")
    t.add("GET", "/logs/stream/{id...}", "logs")
    t.add("*", "/upstream/{path...}", "up")
    assert t.match("GET", "/running")[0].fn == "running"
    assert t.match("HEAD", "/running")[0].fn == "running"
    route, params, allowed = t.match("POST", "/running")
    assert route is None and allowed == ["GET", "HEAD"]
    route, params, _ = t.match("POST", "/api/models/unload/author/model%3Aq4")
    assert route.fn == "one" and params == {"model": "author/model:q4"}
    assert t.match("POST", "/api/models/unload")[0].fn == "all"
    assert t.match("GET", "/logs/stream/")[1] == {"id": ""}
    assert t.match("PATCH", "/upstream/m/x")[0].fn == "up"
    assert t.match("GET", "/nothing") == (None, {}, [])


class _Target:
    def __init__(self, accept=None):
        self.headers = {"Accept": accept} if accept else {}
        self.sent = None

    def send(self, status, body, ctype, headers):
        self.sent = (status, body, ctype, list(headers))


def test_errors_upstream_envelope_plain_and_html():
    t = _Target()
    errors.send_error(t, 404, 'model "x" not found')
    status, body, ctype, _ = t.sent
    assert status == 404 and ctype == "application/json"
    # byte for byte as upstream's Go encoder writes it (param null, keys in this order)
    assert body == (b'{"src":"llama-swap","error":{"message":"model \\"x\\" not found",'
                    b'"type":"invalid_request_error","param":null,"code":"not_found"}}')
    errors.send_error(t, 400, "a <b> & c", code="custom")
    assert json.loads(t.sent[1]) == {"src": "llama-swap", "error": {
        "message": "a <b> & c", "type": "invalid_request_error", "param": None, "code": "custom"}}
    assert b"\\u003cb\\u003e \\u0026" in t.sent[1]
    t = _Target("text/plain")
    errors.send_error(t, 500, "boom")
    assert t.sent[1] == b"llama-swap: boom" and t.sent[2].startswith("text/plain")
    t = _Target("text/html,application/xhtml+xml")
    errors.send_error(t, 502, "<bad> 'q' \"d\"")
    assert t.sent[1] == (b"<html><body><h1>llama-swap</h1><p>&lt;bad&gt; &#39;q&#39; &#34;d&#34;"
                         b"</p></body></html>")


@pytest.mark.parametrize("status,kind,code", [
    (400, "invalid_request_error", "bad_request"),
    (401, "authentication_error", "unauthorized"),
    (403, "authentication_error", "forbidden"),
    (404, "invalid_request_error", "not_found"),
    (405, "invalid_request_error", "invalid_request"),
    (409, "invalid_request_error", "conflict"),
    (413, "invalid_request_error", "invalid_request"),
    (429, "rate_limit_error", "rate_limit_exceeded"),
    (500, "server_error", "internal_error"),
    (502, "server_error", "bad_gateway"),
    (503, "server_error", "service_unavailable"),
    (504, "server_error", "gateway_timeout"),
    (505, "server_error", "internal_error"),
])
def test_error_status_table(status, kind, code):
    t = _Target()
    errors.send_error(t, status, "m")
    assert json.loads(t.sent[1]) == {"src": "llama-swap", "error": {
        "message": "m", "type": kind, "param": None, "code": code}}


def test_concurrency_limit_429_is_json_whatever_accept_says():
    t = _Target("text/plain")
    errors.send_concurrency_limit(t)
    status, body, ctype, headers = t.sent
    assert (status, ctype, headers) == (429, "application/json", [("Retry-After", "1")])
    assert body == (b'{"src":"llama-swap","error":{"message":"Too many requests",'
                    b'"type":"rate_limit_error","param":null,"code":"concurrency_limit"}}')


def test_extract_api_key_order():
    basic = "Basic " + base64.b64encode(b"user:k-basic").decode()
    assert auth.extract_key({"Authorization": basic, "x-api-key": "k-x"}) == "k-basic"
    assert auth.extract_key({"Authorization": "Bearer k-b", "x-api-key": "k-x"}) == "k-b"
    # malformed Basic falls back to x-api-key
    assert auth.extract_key({"Authorization": "Basic !!!", "x-api-key": "k-x"}) == "k-x"
    assert auth.extract_key({"Authorization": "bearer k-b"}) == ""  # case-sensitive prefix
    assert auth.key_ok("a", ("b", "a")) and not auth.key_ok("", ("",)) and not auth.key_ok("c", ("a",))


def test_sanitize_access_control_request_headers():
    assert auth.sanitize_request_headers(None) == auth.DEFAULT_ALLOW_HEADERS
    assert auth.sanitize_request_headers("x-stainless-os, bad header, , ok\r\nx") == "x-stainless-os"
    assert auth.sanitize_request_headers("a,b") == "a, b"


def test_filters_order_and_paths():
    f = Filters(strip_params=("temperature", "nested.drop"),
                set_params=freeze({"top_k": 5, "opts.deep": [1, 2]}),
                set_params_by_id=freeze({"m:high": {"top_k": 50, "reasoning": {"effort": "high"}}}))
    body = {"model": "m:high", "temperature": 0.3, "nested": {"drop": 1, "keep": 2}, "top_k": 1}
    out = filters.apply(body, f, "", "m:high")
    assert out == {"model": "m:high", "nested": {"keep": 2}, "top_k": 50,
                   "opts": {"deep": [1, 2]}, "reasoning": {"effort": "high"}}
    out = filters.apply({"model": "alias"}, Filters(), "real-name", "alias")
    assert out == {"model": "real-name"}
    assert filters.split_path(r"a\.b.c") == ["a.b", "c"]
    obj = {"arr": [1, 2, 3]}
    filters.delete_path(obj, "arr.1")
    assert obj == {"arr": [1, 3]}
    assert not filters.needs_rewrite(Filters(), "", "m")
    assert filters.needs_rewrite(Filters(set_params_by_id=freeze({"m": {"a": 1}})), "", "m")


@pytest.mark.parametrize("body, old, new, spliced", [
    (b'{"messages":[{"role":"user","content":"hi"}],"model":"sel","x":1}', "sel", "a",
     b'{"messages":[{"role":"user","content":"hi"}],"model":"a","x":1}'),
    (b'{ "model" :\n  "sel" , "stream": true}', "sel", "b/c", b'{ "model" :\n  "b/c" , "stream": true}'),
    (b'{"model":"caf\\u00e9"}', "caf\u00e9", 'q"\u00e9', '{"model":"q\\"\u00e9"}'.encode()),
    (b'{"model":"sel"}', "sel", "", b'{"model":""}'),  # a null pin
])
def test_with_model_replaces_only_the_top_level_value(body, old, new, spliced):
    assert filters.with_model(body, old, new) == spliced
    assert json.loads(spliced)["model"] == new


@pytest.mark.parametrize("body", [
    b'{"model":"sel","metadata":{"model":"sel"}}',  # the key twice: which one is on top?
    b'{"messages":[{"content":"model"}],"model":"sel"}',  # "model" also as a value
    b'{"\\u006dodel":"sel","tools":{"model":"sel"}}',  # the top-level key written with escapes
    b'{"model":"other"}',  # not the value the request was routed on
    b'{"model":5}',
])
def test_with_model_leaves_what_it_cannot_be_sure_of_to_a_full_encode(body):
    assert filters.with_model(body, "sel", "a") is None


def test_with_model_gives_the_body_a_full_encode_would_give_on_random_bodies():
    rng = random.Random(11)
    words = ["model", "sel", "a", "x", '"', "\\", "\u00e9", ":", "{", "}"]
    for _ in range(2000):
        obj = {rng.choice(words): rng.choice(words) for _ in range(rng.randint(0, 3))}
        obj["model"] = "sel"
        if rng.random() < 0.3:
            obj["nested"] = {rng.choice(words): [rng.choice(words)]}
        items = list(obj.items())
        rng.shuffle(items)
        body = json.dumps(dict(items), ensure_ascii=rng.random() < 0.5).encode()
        out = filters.with_model(body, "sel", "new")
        if out is not None:
            assert json.loads(out) == {**dict(items), "model": "new"}, body


def test_a_spillover_reservation_is_not_held_by_an_ignored_websocket():
    """upstream: a websocket to a compat.ignoreWebsockets model lives outside routing, so
    it releases its spillover reservation at once; other requests hold theirs until done."""
    cfg = Config(models={"a": ModelConfig(id="a", ignore_websockets=True), "b": ModelConfig(id="b")},
                 selectors={"pool": SelectorConfig("pool", "spillover", ("a", "b"))})
    log = types.SimpleNamespace(debug=lambda msg: None)
    app = types.SimpleNamespace(config=cfg, processes={}, loggers=types.SimpleNamespace(log=log),
                                profiles=ProfileSwitch(cfg), selectors=Selectors(cfg))

    def ask(*headers):
        ctx = types.SimpleNamespace(app=app, state={}, headers=Headers(list(headers)))
        ex = Extracted(model="pool", kind="json", obj={"model": "pool"}, data=b'{"model":"pool"}')
        go_on, done = virtual.rewrite(ctx, ex)
        assert go_on and ex.model == "a"
        return done

    assert ask(("Connection", "Upgrade"), ("Upgrade", "websocket")) is None
    assert app.selectors.in_flight("pool") == {"a": 0}
    done = ask(("Connection", "keep-alive"))
    assert app.selectors.in_flight("pool") == {"a": 1}
    done()
    assert app.selectors.in_flight("pool") == {"a": 0}


def test_upstream_find_model_longest_raw():
    known = {"simple", "author/model", "author"}.__contains__
    assert find_model("simple/v1/chat", known) == ("simple", "simple", "/v1/chat")
    assert find_model("author/model/v1/chat", known) == ("author/model", "author/model", "/v1/chat")
    assert find_model("author/model", known) == ("author/model", "author/model", "")
    assert find_model("author/model/", known) == ("author/model", "author/model", "/")
    assert find_model("simple/a%2Fb/c", known) == ("simple", "simple", "/a%2Fb/c")
    assert find_model("author%2Fmodel/x", known) == ("author/model", "author%2Fmodel", "/x")
    assert find_model("nope/x", known) is None


def test_loading_chunk_framing():
    assert loading.sse_chunk("━━━━━") == (
        'data: {"choices":[{"delta":{"reasoning_content":"━━━━━"}}]}\n\n').encode()
    assert loading.sse_chunk("<&>") == (
        b'data: {"choices":[{"delta":{"reasoning_content":"\\u003c\\u0026\\u003e"}}]}\n\n')
    assert loading.is_loading_path("/v1/chat/completions/extra")
    assert not loading.is_loading_path("/v1/completions")
    assert not loading.is_loading_path("/chat/completions")


# ---- header blocks ------------------------------------------------------------------------

def _header_cases():
    import random
    rng = random.Random(5)
    names = ["Host", "content-type", "X-Api-Key", "Accept", "Set-Cookie", "a", "X-Empty"]
    values = ["127.0.0.1:8080", "application/json", "  padded  ", "", "a:b:c", "x\ty", "é"]
    cases = [b"\r\n", b"Host: a\r\n\r\n", b"Host: a\nX: b\n\n", b"X: a\r\n  folded\r\n\r\n",
             b"X: a\r\n\tfolded\r\n\r\n", b"NoColon\r\n\r\n", b" Lead: x\r\n\r\n",
             b"Trail : x\r\n\r\n", b": empty-name\r\n\r\n", b"X: a\r\nY: b\r\r\n\r\n",
             b"".join(b"H%d: v\r\n" % i for i in range(100)) + b"\r\n",
             b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n",
             b"X: " + b"a" * 70000 + b"\r\n\r\n"]
    for _ in range(300):
        lines = [f"{rng.choice(names)}:{rng.choice(['', ' ', '  '])}{rng.choice(values)}"
                 for _ in range(rng.randint(0, 12))]
        cases.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") if lines else b"\r\n")
    return cases


def _parse(parse, raw: bytes, packet: int | None):
    """Headers, the bytes left unread, or the error, with the block arriving in pieces of
    ``packet`` bytes (None: all at once)."""
    import io
    from llamaswap.http.headers import HeaderError

    class Packets(io.RawIOBase):
        def __init__(self, data):
            self.data = data

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), len(self.data), packet or len(self.data))
            b[:n], self.data = self.data[:n], self.data[n:]
            return n

    fp = io.BufferedReader(Packets(raw + b"BODY"))
    try:
        h = parse(fp)
    except HeaderError as e:
        return ("error", e.status)
    return (h.items(), {k: h.get_all(k) for k in h.keys()}, fp.read())


def test_header_block_read_whole_from_the_buffer_equals_line_by_line():
    """The one-step reader for a block already buffered gives exactly what the line reader
    gives (items, lookups, what is left of the stream, errors), in one packet or many."""
    from llamaswap.http.headers import _read_lines, read_headers
    for raw in _header_cases():
        for packet in (None, 1, 7):
            fast = _parse(lambda fp: read_headers(fp, 1 << 20), raw, packet)
            slow = _parse(lambda fp: _read_lines(fp, 1 << 20), raw, packet)
            assert fast == slow, (raw[:80], packet)
    import io
    from llamaswap.http.headers import _read_buffered
    fp = io.BufferedReader(io.BytesIO(b"Host: a\r\nX-A: 1\r\n\r\nBODY"))
    assert _read_buffered(fp).items() == [("Host", "a"), ("X-A", "1")] and fp.read() == b"BODY"


def test_disconnect_watch_ignores_an_event_left_by_an_earlier_connection():
    """An RDHUP queued for a connection that was then closed can reach the watcher after a
    new connection got the same fd number: the live connection is not cut, and its own
    hang-up is still seen."""
    import select
    import socket
    import threading

    from llamaswap.http import pool

    ours, peer = socket.socketpair()
    gone = threading.Event()
    try:
        watch = pool.watch_disconnect(ours, gone.set)
        pool._WATCHER.dispatch([(ours.fileno(), select.EPOLLRDHUP)])  # the stale event
        assert not gone.is_set()
        peer.close()
        assert gone.wait(5)
        assert watch.cancel() is True
    finally:
        ours.close()
        peer.close()


def test_disconnect_watch_sees_a_hang_up_that_came_between_two_watches():
    """A connection stays in the epoll set between requests: a client that hangs up while
    nothing watches it is seen by the next watch of that connection, at once."""
    import socket
    import threading

    from llamaswap.http import pool

    ours, peer = socket.socketpair()
    try:
        first = pool.watch_disconnect(ours, lambda: None)
        assert first.cancel() is False
        peer.close()  # between two requests
        gone = threading.Event()
        second = pool.watch_disconnect(ours, gone.set)
        assert gone.wait(5)
        assert second.cancel() is True
    finally:
        ours.close()


def test_disconnect_watch_forgets_a_hang_up_when_its_fd_number_gets_a_new_connection():
    """A hang-up remembered for a closed connection never cuts the next connection that
    gets the same fd number; that one's own hang-up is seen."""
    import os
    import socket
    import threading

    from llamaswap.http import pool
    from helpers import wait_until

    old, old_peer = socket.socketpair()
    fd = old.fileno()
    watch = pool.watch_disconnect(old, lambda: None)
    watch.cancel()
    old_peer.close()
    assert wait_until(lambda: fd in pool._WATCHER._hung, timeout=5)
    new, new_peer = socket.socketpair()
    try:
        old.close()
        os.dup2(new.fileno(), fd)  # the new connection, on the old fd number
        same_number = socket.socket(fileno=fd)
        new.close()
        gone = threading.Event()
        watch = pool.watch_disconnect(same_number, gone.set)
        assert watch.cancel() is False and not gone.is_set()
        watch = pool.watch_disconnect(same_number, gone.set)
        new_peer.close()
        assert gone.wait(5)
        assert watch.cancel() is True
        same_number.close()
    finally:
        new_peer.close()


def test_disconnect_watch_lets_go_of_a_connection_that_ends():
    """A connection whose handler finishes leaves the epoll set (its close wakes nobody);
    a later watch of the same socket joins again and sees its hang-up."""
    import select
    import socket
    import threading

    from llamaswap.http import pool

    ours, peer = socket.socketpair()
    try:
        pool.watch_disconnect(ours, lambda: None).cancel()
        pool.unwatch_connection(ours)
        with pytest.raises(FileNotFoundError):  # not in the set any more
            pool._WATCHER._ep.modify(ours.fileno(), select.EPOLLRDHUP)
        gone = threading.Event()
        watch = pool.watch_disconnect(ours, gone.set)
        peer.close()
        assert gone.wait(5)
        assert watch.cancel() is True
    finally:
        ours.close()
        peer.close()
