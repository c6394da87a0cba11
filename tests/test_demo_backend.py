"""The bundled demo backend on its own: the fixture every other test relies on."""

import base64
import http.client
import json
import os
import socket
import subprocess

import pytest

from helpers import demo_backend_argv, free_port, wait_until


def start(*extra, model="demo-a"):
    port = free_port()
    proc = subprocess.Popen(demo_backend_argv(model, port, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return proc, port


def health(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None


@pytest.fixture
def backend():
    proc, port = start("--chunk-delay", "0.05")
    assert wait_until(lambda: health(port) == 200)
    yield port
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def test_health_is_503_while_loading_then_200():
    # the 503 phase is checked on a backend that never finishes loading: a load delay alone
    # could pass before a loaded machine gets the first probe in
    loading, loading_port = start("--never-healthy")
    loaded, loaded_port = start("--load-delay", "0.5", model="demo-b")
    try:
        assert wait_until(lambda: health(loading_port) is not None)
        assert health(loading_port) == 503
        assert wait_until(lambda: health(loaded_port) == 200)
    finally:
        for proc in (loading, loaded):
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()


def test_streams_chat_incrementally_with_usage_and_timings(backend):
    conn = http.client.HTTPConnection("127.0.0.1", backend, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "x", "stream": True, "messages": [{"role": "user", "content": "hi"}],
         "demo": {"chunks": 5}}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "text/event-stream"
    first = resp.readline()
    assert first.startswith(b"data: ")
    assert json.loads(first[6:])["model"] == "demo-a"
    rest = resp.read().decode()
    events = [line[6:] for line in rest.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["usage"]["completion_tokens"] == 5
    assert final["timings"]["predicted_n"] == 5


def test_echo_shows_exactly_what_arrived(backend):
    conn = http.client.HTTPConnection("127.0.0.1", backend, timeout=10)
    conn.request("PUT", "/a%2Fb/c?x=1", body=b"\xff\x00raw", headers={"X-Test": "yes"})
    data = json.loads(conn.getresponse().read())
    assert data["raw_path"] == "/a%2Fb/c?x=1"
    assert data["method"] == "PUT"
    assert ["X-Test", "yes"] in data["headers"]
    assert base64.b64decode(data["body"]) == b"\xff\x00raw"


def test_websocket_echo(backend):
    sock = socket.create_connection(("127.0.0.1", backend), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    mask = os.urandom(4)
    payload = b"hello"
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                 bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    frame = sock.recv(2 + len(payload))
    assert frame == bytes([0x81, len(payload)]) + payload
    sock.sendall(bytes([0x88, 0x80]) + mask)
    sock.close()


def test_fail_start_exits_with_message():
    proc, _ = start("--fail-start", "model file not found")
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert b"model file not found" in out


def test_crash_after_n_requests():
    proc, port = start("--crash-after", "1")
    try:
        assert wait_until(lambda: health(port) == 200)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
        assert proc.wait(10) == 1
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_exit_after_n_requests_is_a_clean_exit():
    proc, port = start("--exit-after", "2")
    try:
        assert wait_until(lambda: health(port) == 200)
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models")
            assert conn.getresponse().status == 200
            conn.close()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_hang_after_n_requests_keeps_the_process_and_answers_nothing():
    proc, port = start("--hang-after", "1")
    try:
        assert wait_until(lambda: health(port) == 200)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
        conn.close()
        # wedged: connections are accepted, but nothing answers, /health included (the
        # backend wedges once its answer is out: a probe may still slip in before that)
        def wedged() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
            try:
                conn.request("GET", "/health")
                conn.getresponse().read()
                return False
            except TimeoutError:
                return True
            finally:
                conn.close()

        assert wait_until(wedged, timeout=10)
        assert proc.poll() is None
    finally:
        proc.terminate()  # a wedged server still exits on SIGTERM
        assert proc.wait(10) == 0
        proc.stdout.close()


def _call(port, method, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, json.loads(body) if body else None


def test_sleep_api_like_vllm_and_pretend_gpu_memory(tmp_path):
    from llamaswap.demo import fake_nvidia_smi
    state = str(tmp_path / "gpu")
    fake_nvidia_smi.setup(state, [{"total": 8 << 30}])
    proc, port = start("--gpu-memory", "2GiB", "--gpu-memory-asleep", "256MiB",
                       "--fake-gpu-dir", state)
    failing, failing_port = start("--fail-sleep", "--fail-wake", model="demo-b")
    try:
        assert wait_until(lambda: health(port) == 200 and health(failing_port) == 200)
        assert fake_nvidia_smi.apps(state) == [(proc.pid, 0, 2 << 30)]
        assert _call(port, "GET", "/is_sleeping") == (200, {"is_sleeping": False})
        assert _call(port, "POST", "/sleep?level=1")[0] == 200
        assert _call(port, "GET", "/is_sleeping") == (200, {"is_sleeping": True})
        assert fake_nvidia_smi.apps(state) == [(proc.pid, 0, 256 << 20)]
        assert _call(port, "POST", "/wake_up")[0] == 200
        assert _call(port, "GET", "/is_sleeping") == (200, {"is_sleeping": False})
        assert fake_nvidia_smi.apps(state) == [(proc.pid, 0, 2 << 30)]
        assert _call(failing_port, "POST", "/sleep?level=1")[0] == 500
        assert _call(failing_port, "POST", "/wake_up")[0] == 500
    finally:
        for p in (proc, failing):
            p.terminate()
            p.wait(10)
            p.stdout.close()
    assert fake_nvidia_smi.apps(state) == []  # its file is gone with it
