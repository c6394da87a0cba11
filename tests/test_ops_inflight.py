"""The in-flight table (/api/events type inflight) and POST /api/inflight/{id}/cancel, through
real sockets: a proxy, demo backends, raw HTTP clients."""

from __future__ import annotations

import json
import socket
import threading

from helpers import wait_until
from httpkit import Proxy, config, model, raw_socket
from test_ops_api import SseReader

# m1 and m2 share the default group: one at a time, a request for one waits for the other
SLOW = {"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "demo": {"chunks": 400, "chunk_delay": 0.05}}


def send_post(port: int, path: str, body: dict, headers: str = "") -> socket.socket:
    s = raw_socket(port)
    data = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n{headers}\r\n".encode() + data)
    return s


def read_until(s: socket.socket, needle: bytes) -> bytes:
    buf = b""
    while needle not in buf:
        data = s.recv(65536)
        assert data, f"closed before {needle!r}: {buf[-300:]!r}"
        buf += data
    return buf


def read_to_end(s: socket.socket) -> bytes:
    """Everything until the proxy closes the connection (a cancelled request never ends
    normally)."""
    s.settimeout(30)
    buf = b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return buf
        if not data:
            return buf
        buf += data


def table(p: Proxy) -> list[dict]:
    """The in-flight table as a new /api/events client sees it at connect."""
    s = SseReader(p)
    try:
        _, snap = s.until(lambda t, d: t == "inflight")
    finally:
        s.close()
    assert snap["operation"] == "snapshot"
    return snap.get("requests", [])


def entry_for(p: Proxy, model_id: str) -> dict:
    found: list[dict] = []
    assert wait_until(lambda: bool(found.extend(e for e in table(p) if e["model"] == model_id)
                                   or found))
    return found[0]


def backend_connections(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (the backend's side)."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            if local_port == port and parts[3] == "01":  # ESTABLISHED
                count += 1
    return count


def test_cancel_a_streaming_request_mid_stream():
    m1, m2 = model("m1"), model("m2")
    with Proxy(config(m1, m2)) as p:
        client = send_post(p.port, "/v1/chat/completions", SLOW,
                           "Authorization: Bearer secret-token\r\nX-Session-ID: s1\r\n")
        read_until(client, b"data: ")  # streaming now
        e = entry_for(p, "m1")
        assert e["req_path"] == "/v1/chat/completions" and e["method"] == "POST"
        assert e["remote_ip"] == "127.0.0.1" and e["resp_bytes"] > 0
        assert e["req_headers"]["Authorization"] == "[REDACTED]"
        assert e["req_headers"]["X-Session-Id"] == "s1"
        assert e["resp_headers"]["Content-Type"].startswith("text/event-stream")
        assert e["metadata"] == {"fifo_priority": "0"} and e["elapsed_ms"] >= 0
        assert list(e) == ["id", "timestamp", "model", "req_path", "method", "req_headers",
                           "remote_ip", "resp_headers", "resp_bytes", "elapsed_ms", "metadata",
                           "key"]  # upstream's fields, then the API key's name (ours)
        assert e["key"] == "-"
        assert backend_connections(m1.port) >= 1

        status, headers, body = p.request("POST", f"/api/inflight/{e['id']}/cancel")
        assert (status, body) == (200, b'{"msg":"ok"}\n')
        assert headers["content-type"] == "application/json"

        rest = read_to_end(client)  # the client sees its response end, unfinished
        assert b"0\r\n\r\n" not in rest and b"[DONE]" not in rest
        client.close()
        # the backend's connection was cut: it stops generating
        assert wait_until(lambda: b"client went away" in p.app.processes["m1"].log.history())
        assert wait_until(lambda: backend_connections(m1.port) == 0)
        assert wait_until(lambda: table(p) == [] and p.app.inflight.total == 0)
        # the router was told: m2 gets the group at once
        status, _, _ = p.post("/v1/chat/completions", dict(SLOW, model="m2", stream=False))
        assert status == 200
        assert p.app.processes["m1"].state.value == "stopped"
        # the activity row says the client went away mid-stream
        row = json.loads(p.request("GET", "/api/metrics/activity?order=asc")[2])["data"][0]
        assert row["model"] == "m1" and row["resp_status_code"] == 200
        assert p.request("POST", f"/api/inflight/{e['id']}/cancel")[0] == 404


def test_cancel_a_queued_request_it_never_runs():
    with Proxy(config(model("m1"), model("m2"))) as p:
        busy = send_post(p.port, "/v1/chat/completions", SLOW)
        read_until(busy, b"data: ")
        queued = send_post(p.port, "/v1/chat/completions", dict(SLOW, model="m2"))
        e = entry_for(p, "m2")
        assert e["resp_bytes"] == 0 and e["resp_headers"] == {}
        assert p.request("POST", f"/api/inflight/{e['id']}/cancel")[0] == 200
        assert read_to_end(queued) == b""  # closed without a response
        queued.close()
        assert wait_until(lambda: [x["model"] for x in table(p)] == ["m1"])
        assert p.app.router.queue_length() == 0
        # m1 finishes: nothing left for m2, so m2 is never started
        m1 = entry_for(p, "m1")
        p.request("POST", f"/api/inflight/{m1['id']}/cancel")
        busy.close()
        assert wait_until(lambda: p.app.inflight.total == 0)
        assert p.app.processes["m2"].state.value == "stopped"
        assert p.app.processes["m2"].pid is None


def test_a_manual_load_whose_client_leaves_is_never_started():
    """Upstream's manual load is GET /upstream/<model>/ (not in the table: no inference
    path); the UI cancels it by aborting the fetch."""
    with Proxy(config(model("m1"), model("m2"))) as p:
        busy = send_post(p.port, "/v1/chat/completions", SLOW)
        read_until(busy, b"data: ")
        load = raw_socket(p.port)
        load.sendall(b"GET /upstream/m2/?_=123 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: p.app.router.queue_length() == 1)
        assert [x["model"] for x in table(p)] == ["m1"]
        load.close()  # the UI aborts the fetch
        assert wait_until(lambda: p.app.router.queue_length() == 0)
        m1 = entry_for(p, "m1")
        p.request("POST", f"/api/inflight/{m1['id']}/cancel")
        busy.close()
        assert wait_until(lambda: p.app.inflight.total == 0)
        assert p.app.processes["m2"].state.value == "stopped"


def test_cancel_a_request_waiting_for_its_model_to_load():
    """A cancel during the load (the loading stream running) ends the request; the load
    itself goes on, as upstream's swap does for its other waiters."""
    slow_start = model("m1", "--load-delay", "1.0")
    with Proxy(config(slow_start)) as p:
        client = send_post(p.port, "/v1/chat/completions", dict(SLOW, stream=False))
        e = entry_for(p, "m1")
        assert p.request("POST", f"/api/inflight/{e['id']}/cancel")[0] == 200
        assert read_to_end(client) == b""
        client.close()
        assert wait_until(lambda: p.app.inflight.total == 0)


def test_updates_while_bytes_flow_and_unknown_ids():
    with Proxy(config(model("m1"))) as p:
        assert p.request("POST", "/api/inflight/999/cancel")[0] == 404
        body = json.loads(p.request("POST", "/api/inflight/999/cancel")[2])
        assert body["error"]["message"] == "inflight request not found"
        assert p.request("GET", "/api/inflight/1/cancel")[0] == 405
        s = SseReader(p)
        try:
            s.until(lambda t, d: t == "inflight" and d == {"operation": "snapshot", "total": 0})
            client = send_post(p.port, "/v1/chat/completions",
                               dict(SLOW, demo={"chunks": 30, "chunk_delay": 0.05}))
            _, first = s.until(lambda t, d: t == "inflight" and d["operation"] == "upsert")
            assert first["total"] == 1 and first["request"]["resp_bytes"] == 0
            _, later = s.until(lambda t, d: t == "inflight" and d["operation"] == "upsert"
                               and d["request"]["resp_bytes"] > 0)
            assert later["request"]["id"] == first["request"]["id"]
            done = threading.Event()
            threading.Thread(target=lambda: (read_until(client, b"[DONE]"), done.set()),
                             daemon=True).start()
            _, gone = s.until(lambda t, d: t == "inflight" and d["operation"] == "remove")
            assert gone == {"operation": "remove", "id": first["request"]["id"], "total": 0}
            assert done.wait(10)
            client.close()
        finally:
            s.close()


def test_upstream_inference_paths_are_listed_and_recorded_others_not():
    with Proxy(config(model("m1"))) as p:
        chat = {"model": "ignored", "messages": [{"role": "user", "content": "hi"}]}
        assert p.post("/upstream/m1/v1/chat/completions", chat)[0] == 200
        assert p.request("GET", "/upstream/m1/health")[0] == 200
        assert p.post("/upstream/m1/echo/this", {"x": 1})[0] == 200
        rows = json.loads(p.request("GET", "/api/metrics/activity")[2])["data"]
        assert [(r["model"], r["req_path"]) for r in rows] == [("m1", "/v1/chat/completions")]
        s = SseReader(p)
        try:
            s.until(lambda t, d: t == "inflight" and d["operation"] == "snapshot")
            client = send_post(p.port, "/upstream/m1/v1/chat/completions", SLOW)
            _, up = s.until(lambda t, d: t == "inflight" and d["operation"] == "upsert")
            assert (up["request"]["model"], up["request"]["req_path"]) == (
                "m1", "/v1/chat/completions")
            assert p.request("POST", f"/api/inflight/{up['request']['id']}/cancel")[0] == 200
            read_to_end(client)
            client.close()
        finally:
            s.close()
