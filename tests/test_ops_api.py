"""Operations endpoints over real HTTP, in front of real demo backends."""

from __future__ import annotations

import base64
import json
import socket

import pytest

from helpers import wait_until
from httpkit import Proxy, SseReader, config, model

from test_ops_prometheus import strict_parse, value_of

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
def proxy():
    cfg = config(model("m1", aliases=("one",)), model("author/m2"))
    p = Proxy(cfg)
    try:
        yield p
    finally:
        p.close()


def test_running_unload_and_unload_one(proxy):
    status, headers, body = proxy.request("GET", "/running")
    assert status == 200 and body == b'{"running":[]}\n'
    assert headers["content-type"] == "application/json"
    assert proxy.post("/v1/chat/completions", CHAT)[0] == 200
    running = json.loads(proxy.request("GET", "/running")[2])["running"]
    m1 = proxy.app.config.models["m1"]
    assert running == [{"model": "m1", "state": "ready", "cmd": m1.cmd, "proxy": m1.proxy,
                        "ttl": 0, "name": "", "description": ""}]
    assert list(running[0]) == ["model", "state", "cmd", "proxy", "ttl", "name", "description"]

    status, _, body = proxy.request("GET", "/unload")
    assert (status, body) == (200, b"OK")
    assert json.loads(proxy.request("GET", "/running")[2]) == {"running": []}

    proxy.post("/v1/chat/completions", dict(CHAT, model="author/m2"))
    status, _, body = proxy.request("POST", "/api/models/unload/author/m2")
    assert (status, body) == (200, b"OK")
    assert proxy.app.processes["author/m2"].state.value == "stopped"

    proxy.post("/v1/chat/completions", CHAT)
    status, _, body = proxy.request("POST", "/api/models/unload/one")  # an alias
    assert (status, body) == (200, b"OK")
    assert proxy.app.processes["m1"].state.value == "stopped"

    status, headers, body = proxy.request("POST", "/api/models/unload/nope")
    assert status == 404 and json.loads(body)["error"]["message"] == "model not found"

    proxy.post("/v1/chat/completions", CHAT)
    status, headers, body = proxy.request("POST", "/api/models/unload")
    assert (status, body) == (200, b'{"msg":"ok"}\n')
    assert headers["content-type"] == "application/json"
    assert proxy.app.processes["m1"].state.value == "stopped"
    assert proxy.request("GET", "/api/models/unload")[0] == 405


def test_version_root_and_logs(proxy):
    status, _, body = proxy.request("GET", "/api/version")
    data = json.loads(body)
    assert status == 200 and list(data) == ["build_date", "commit", "version"]
    assert body.endswith(b"}\n")
    status, headers, _ = proxy.request("GET", "/")
    assert (status, headers["location"]) == (302, "/ui")
    proxy.app.loggers.mux.write(b"hello from the proxy log\n")
    status, headers, body = proxy.request("GET", "/logs")
    assert status == 200 and b"hello from the proxy log" in body
    assert headers["content-type"] == "text/plain"
    status, headers, _ = proxy.request("GET", "/logs", headers={"Accept": "text/html"})
    assert (status, headers["location"]) == (302, "/ui/")


def read_until(resp, needle: bytes, limit=5_000_000) -> bytes:
    buf = b""
    while needle not in buf:
        data = resp.read1(65536)
        if not data:
            raise AssertionError(f"stream ended before {needle!r}: {buf[-300:]!r}")
        buf += data
        assert len(buf) < limit
    return buf


def test_log_streams_history_live_and_errors(proxy):
    proxy.post("/v1/chat/completions", CHAT)
    proxy.app.processes["m1"].log.write(b"model line before\n")
    c = proxy.conn()
    c.request("GET", "/logs/stream/one")  # by alias
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type") == "text/plain"
    assert r.getheader("X-Accel-Buffering") == "no"
    assert r.getheader("Transfer-Encoding") == "chunked"
    read_until(r, b"model line before\n")
    proxy.app.processes["m1"].log.write(b"model line live\n")
    read_until(r, b"model line live\n")
    c.close()

    c = proxy.conn()
    c.request("GET", "/logs/stream/author/m2?no-history")  # id with a slash, no history
    r = c.getresponse()
    assert r.status == 200
    proxy.app.processes["author/m2"].log.write(b"first live line\n")
    assert read_until(r, b"first live line\n").startswith(b"first live line")
    c.close()

    for path in ("/logs/stream", "/logs/stream/proxy", "/logs/stream/upstream"):
        c = proxy.conn()
        c.request("GET", path + "?no-history")
        r = c.getresponse()
        assert r.status == 200, path
        proxy.app.loggers.log.info(f"marker for {path}")
        proxy.app.loggers.upstream.write(f"upstream marker for {path}\n".encode())
        proxy.app.loggers.mux.write(f"mux marker for {path}\n".encode())  # logToStdout: none
        read_until(r, b"marker for " + path.encode())
        c.close()

    status, _, body = proxy.request("GET", "/logs/stream/nope")
    assert status == 400
    assert json.loads(body)["error"]["message"] == \
        "invalid logger. Use 'proxy', 'upstream' or a model's ID"


def test_activity_from_json_and_stream_and_captures(proxy):
    status, _, body = proxy.post("/v1/chat/completions", CHAT,
                                 headers={"Authorization": "Bearer topsecret"})
    assert status == 200
    c = proxy.conn()
    c.request("POST", "/v1/chat/completions",
              body=json.dumps(dict(CHAT, stream=True, demo={"chunk_delay": 0})),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    streamed = r.read()
    c.close()
    assert b"data: [DONE]" in streamed
    assert wait_until(lambda: len(proxy.app.activity.entries()) == 2)
    status, headers, body = proxy.request("GET", "/api/metrics")
    assert status == 200 and headers["content-type"] == "application/json"
    entries = json.loads(body)
    assert [e["id"] for e in entries] == [0, 1]
    plain, sse = entries
    assert plain["model"] == "m1" and plain["req_path"] == "/v1/chat/completions"
    assert plain["resp_status_code"] == 200
    assert plain["resp_content_type"] == "application/json"
    assert sse["resp_content_type"].startswith("text/event-stream")
    for e in entries:
        t = e["tokens"]
        assert t["input_tokens"] == 2 and t["output_tokens"] > 5  # from llama.cpp timings
        assert t["cache_tokens"] == 0 and t["tokens_per_second"] > 0
        assert e["has_capture"] is True

    status, _, body = proxy.request("GET", "/api/captures/0")
    cap = json.loads(body)
    assert status == 200 and cap["id"] == 0 and cap["req_path"] == "/v1/chat/completions"
    assert cap["req_headers"]["Authorization"] == "[REDACTED]"
    assert json.loads(base64.b64decode(cap["req_body"]))["model"] == "m1"
    assert json.loads(base64.b64decode(cap["resp_body"]))["usage"]["prompt_tokens"] == 2
    cap = json.loads(proxy.request("GET", "/api/captures/1")[2])
    assert base64.b64decode(cap["resp_body"]) == streamed

    assert proxy.request("GET", "/api/captures/abc")[0] == 400
    status, _, body = proxy.request("GET", "/api/captures/99")
    assert status == 404 and json.loads(body)["error"]["message"] == "capture not found"


def test_prometheus_endpoint(proxy):
    assert proxy.post("/v1/chat/completions", CHAT)[0] == 200
    assert proxy.post("/v1/chat/completions", dict(CHAT, model="nope"))[0] == 404

    def scrape():
        status, headers, body = proxy.request("GET", "/metrics")
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        return strict_parse(body.decode())

    assert wait_until(lambda: "llamaswap_requests_total" in scrape())
    fams = scrape()
    assert value_of(fams, "llamaswap_requests_total", model="m1", status="200", key="-") == 1
    assert value_of(fams, "llamaswap_input_tokens_total", model="m1") == 2
    assert value_of(fams, "llamaswap_model_state", model="m1", state="ready") == 1
    assert value_of(fams, "llamaswap_model_state", model="author/m2", state="stopped") == 1
    assert value_of(fams, "llamaswap_inflight_requests") == 0
    assert "llamaswap_memory_total_bytes" in fams


def test_events_initial_snapshot_and_live_updates(proxy):
    proxy.app.loggers.log.info("before connect")
    proxy.post("/v1/chat/completions", CHAT)
    # the handler leaves the in-flight count just after the response's last byte
    assert wait_until(lambda: proxy.app.inflight.total == 0
                      and len(proxy.app.activity.entries()) == 1)
    s = SseReader(proxy)
    try:
        r = s.resp
        assert r.getheader("Content-Type") == "text/event-stream"
        assert r.getheader("Cache-Control") == "no-cache"
        assert r.getheader("X-Accel-Buffering") == "no"
        first = [s.next() for _ in range(6)]
        assert [t for t, _ in first] == ["logData", "logData", "modelStatus", "profileChanged",
                                         "metrics", "inflight"]
        assert first.pop(3)[1] == {"active": None}
        assert first[0][1]["source"] == "proxy" and "before connect" in first[0][1]["data"]
        assert list(first[0][1]) == ["data", "source"]
        assert first[1][1]["source"] == "upstream"
        models = first[2][1]
        assert [m["id"] for m in models] == ["author/m2", "m1"]
        assert models[1] == {"id": "m1", "name": "", "description": "", "state": "ready",
                             "unlisted": False, "peerID": "", "aliases": ["one"]}
        assert "aliases" not in models[0]
        assert len(first[3][1]) == 1 and first[3][1][0]["id"] == 0
        assert first[4][1] == {"operation": "snapshot", "total": 0}  # upstream's + ours

        proxy.post("/v1/chat/completions", CHAT)
        _, up = s.until(lambda t, d: t == "inflight" and d["total"] == 1)
        assert up["operation"] == "upsert" and up["request"]["model"] == "m1"
        s.until(lambda t, d: t == "metrics" and len(d) == 1 and d[0]["id"] == 1)
        _, gone = s.until(lambda t, d: t == "inflight" and d["total"] == 0)
        assert gone == {"operation": "remove", "id": up["request"]["id"], "total": 0}
        proxy.request("POST", "/api/models/unload/m1")
        s.until(lambda t, d: t == "modelStatus"
                and {m["id"]: m["state"] for m in d}["m1"] == "stopped")
        proxy.app.loggers.upstream.write(b"live upstream bytes\n")
        s.until(lambda t, d: t == "logData" and d["source"] == "upstream"
                and "live upstream bytes" in d["data"])
    finally:
        s.close()


def stalled_client(port: int, path: str) -> socket.socket:
    """A client that asks for a stream and then never reads (tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def test_stalled_readers_never_block_a_backend():
    flood = 30_000_000  # far more than any socket buffer between us and the stalled readers
    cfg = config(model("m1", "--log-flood", str(flood)))
    p = Proxy(cfg)
    stalled = []
    try:
        for path in ("/logs/stream/upstream", "/logs/stream", "/api/events", "/logs/stream/m1"):
            stalled.append(stalled_client(p.port, path))
        p.app.loggers.log.info("readers connected")
        # the backend writes 30 MB at startup before it listens: if any reader could block
        # its output pipe it would never become ready and this request would hang
        status, _, body = p.post("/v1/chat/completions", CHAT)
        assert status == 200 and json.loads(body)["model"] == "m1"
        assert p.app.processes["m1"].log.history()[-100:].count(b"x") > 0
        # and the proxy still answers other requests
        assert p.request("GET", "/running")[0] == 200
    finally:
        for s in stalled:
            s.close()
        p.close()


def test_metrics_with_performance_disabled_keeps_request_metrics():
    # upstream answers 503 here (its /metrics is only the performance monitor); ours keeps the
    # request/model metrics and leaves out the system gauges
    from llamaswap.config.model import PerformanceConfig

    p = Proxy(config(model("m1"), performance=PerformanceConfig(disabled=True)))
    try:
        status, _, body = p.request("GET", "/metrics")
        assert status == 200
        fams = strict_parse(body.decode())
        assert "llamaswap_model_state" in fams and "llamaswap_memory_total_bytes" not in fams
        assert "llamaswap_cpu_util_percent" not in fams
    finally:
        p.close()


def test_metrics_and_ops_routes_need_the_api_key():
    p = Proxy(config(model("m1"), api_keys=("sekrit",)))
    try:
        for path in ("/metrics", "/running", "/api/metrics", "/api/events", "/logs",
                     "/api/version", "/api/captures/0", "/logs/stream"):
            status, headers, _ = p.request("GET", path)
            assert status == 401, path
        status, _, _ = p.request("GET", "/metrics", headers={"Authorization": "Bearer sekrit"})
        assert status == 200
        assert p.request("GET", "/")[0] == 302  # the redirect stays open, as upstream
    finally:
        p.close()


def test_slow_log_reader_is_told_what_it_lost(proxy):
    s = stalled_client(proxy.port, "/logs/stream/proxy?no-history")
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert b" 200 " in head.split(b"\r\n")[0]
        chunk = b"y" * 10_000 + b"\n"
        for _ in range(2000):  # 20 MB: far beyond the socket buffers plus the reader's queue
            proxy.app.loggers.proxy.write(chunk)
        got = b""
        while b"chunk(s) dropped: this reader fell behind" not in got:
            data = s.recv(1 << 20)
            assert data, "stream ended without a drop notice"
            got = got[-200:] + data
    finally:
        s.close()


def test_streams_end_when_the_server_shuts_down():
    p = Proxy(config(model("m1")))
    try:
        s = SseReader(p)
        for _ in range(5):
            s.next()
        c = p.conn()
        c.request("GET", "/logs/stream")
        r = c.getresponse()
        assert r.status == 200
        p.server.shutdown(10)  # returns once both streams have ended
        with pytest.raises(EOFError):
            while True:
                s.next()
        r.read()  # the chunked body is complete, not cut
        s.close()
        c.close()
    finally:
        p.app.shutdown()
