"""Routes today's upstream added: /audioapi/v1/tasks/run, /comfyui with comfyui_auto, and
compat.ignoreWebsockets. Real proxy, real demo backends, real websocket client."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from helpers import wait_until
from httpkit import Proxy, config, model, raw_socket, replace

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def test_audioapi_prefix_is_stripped_and_recorded_without_it():
    with Proxy(config(model("m1"))) as p:
        status, _, body = p.post("/audioapi/v1/tasks/run", {"model": "m1", "task": "tts"})
        echo = json.loads(body)
        assert status == 200 and (echo["method"], echo["path"]) == ("POST", "/v1/tasks/run")
        rows = json.loads(p.request("GET", "/api/metrics/activity")[2])["data"]
        assert [(r["model"], r["req_path"]) for r in rows] == [("m1", "/v1/tasks/run")]
        assert p.request("POST", "/audioapi/v1/other", {"model": "m1"})[0] == 404
        assert p.request("GET", "/audioapi/v1/tasks/run")[0] == 405


def test_comfyui_config_rules():
    from llamaswap.config import load_config_text
    cfg = load_config_text("models:\n  comfyui_auto:\n    cmd: comfy\n    concurrencyLimit: 4\n"
                           "  other:\n    cmd: x\n    compat:\n      ignoreWebsockets: true\n"
                           "  plain:\n    cmd: y\n")
    assert cfg.models["comfyui_auto"].concurrency_limit == 50
    assert cfg.models["comfyui_auto"].ignore_websockets
    assert cfg.models["other"].ignore_websockets and not cfg.models["plain"].ignore_websockets
    assert load_config_text("models:\n  comfyui_auto:\n    cmd: c\n    concurrencyLimit: 80\n"
                            ).models["comfyui_auto"].concurrency_limit == 80


def test_comfyui_redirect_and_missing_model():
    with Proxy(config(model("m1"))) as p:
        status, headers, _ = p.request("GET", "/comfyui?x=1")
        assert (status, headers["location"]) == (301, "/comfyui/?x=1")
        status, headers, _ = p.request("POST", "/comfyui", b"")
        assert (status, headers["location"]) == (308, "/comfyui/")
        status, _, body = p.request("GET", "/comfyui/")
        assert status == 404
        assert json.loads(body)["error"]["message"] == "local model comfyui_auto not found"


@pytest.fixture
def comfy():
    cfg = config(replace(model("comfyui_auto"), concurrency_limit=50, ignore_websockets=True),
                 model("m1"))
    with Proxy(cfg) as p:
        yield p


def test_comfyui_only_the_root_starts_it_then_paths_pass_raw(comfy):
    status, _, body = comfy.request("GET", "/comfyui/api/queue")
    assert status == 409
    assert json.loads(body)["error"]["message"] == \
        "model comfyui_auto is not loaded; only /comfyui/ can start it"
    assert comfy.app.processes["comfyui_auto"].state.value == "stopped"
    status, _, body = comfy.request("GET", "/comfyui/?tab=1")
    assert status == 200 and json.loads(body)["raw_path"] == "/?tab=1"
    status, _, body = comfy.request("POST", "/comfyui/api/a%2Fb/prompt?q=%20x", {"k": 1})
    echo = json.loads(body)
    assert status == 200 and echo["raw_path"] == "/api/a%2Fb/prompt?q=%20x"
    assert echo["model"] == "comfyui_auto"


def ws_handshake(port: int, path: str) -> tuple[int, bytes]:
    s = raw_socket(port)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
              .encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(4096)
        if not data:
            break
        head += data
    s.close()
    return int(head.split(b" ", 2)[1]), head


def test_ignored_websockets_never_start_a_model_nor_count(comfy):
    status, head = ws_handshake(comfy.port, "/comfyui/ws")
    assert status == 409  # not the root, and not loaded
    status, head = ws_handshake(comfy.port, "/upstream/comfyui_auto/ws")
    assert status == 409 and b"ignored websocket requests cannot start it" in head
    assert comfy.app.processes["comfyui_auto"].state.value == "stopped"
    assert comfy.request("GET", "/comfyui/")[0] == 200  # the root loads it
    with connect(f"ws://127.0.0.1:{comfy.port}/comfyui/ws", open_timeout=20) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        # outside the router: no in-flight entry, no concurrency slot, no swap blocked
        assert comfy.app.inflight.total == 0
        assert comfy.post("/v1/chat/completions", CHAT)[0] == 200  # m1 swaps comfy out
        assert comfy.app.processes["comfyui_auto"].state.value == "stopped"
    assert wait_until(lambda: comfy.app.inflight.total == 0)


def test_websockets_of_other_models_still_go_through_the_router():
    with Proxy(config(model("m1"))) as p:
        with connect(f"ws://127.0.0.1:{p.port}/upstream/m1/ws", open_timeout=20) as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"  # started the model on demand
            assert p.app.inflight.total == 1
