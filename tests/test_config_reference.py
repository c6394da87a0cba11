"""docs/config-reference.yaml, our own reference for the keys today's upstream added: it loads,
every documented value holds, and a real proxy serves its listing and its ignorePaths."""

from __future__ import annotations

import json
import os

import pytest

from helpers import ROOT
from httpkit import Proxy

from llamaswap.config import load_config

REFERENCE = os.path.join(ROOT, "docs", "config-reference.yaml")


@pytest.fixture(scope="module")
def cfg():
    return load_config(REFERENCE)


def test_loads_without_warnings(cfg):
    assert cfg.warnings == ()
    assert sorted(cfg.models) == ["bge-reranker", "qwen-coder-32b", "qwen-vl-7b", "whisper"]


def test_macros_anchors_and_ports(cfg):
    assert cfg.start_port == 9100
    assert {m.id: m.port for m in cfg.models.values()} == {
        "bge-reranker": 9100, "qwen-coder-32b": 9101, "qwen-vl-7b": 9102, "whisper": 9103}
    vl = cfg.models["qwen-vl-7b"]
    assert vl.argv == ("llama-server", "--port", "9102", "-ngl", "99", "-c", "32768",
                       "-m", "/srv/models/qwen-vl-7b.gguf")
    assert vl.ttl == 600 and vl.name == "Qwen2.5 VL 7B"
    assert vl.metadata == {"family": "qwen-vl-7b", "port": 9102, "served-by": "llama-server on 9102"}
    coder = cfg.models["qwen-coder-32b"]
    assert "65536" in coder.argv and coder.capabilities.context == 65536  # the model's macro
    assert cfg.models["whisper"].check_endpoint == "/health?port=9103"


def test_capabilities(cfg):
    caps = cfg.models["qwen-vl-7b"].capabilities
    assert (caps.in_, caps.out, caps.tools, caps.reranker, caps.context) == (
        ("text", "image"), ("text",), True, False, 32768)
    assert cfg.models["bge-reranker"].capabilities.rendered() == {
        "capabilities": {"reranker": True}, "context_length": 8192}
    assert cfg.models["whisper"].capabilities.rendered()["capabilities"] == {
        "audio_transcriptions": True}


def test_upstream_routing_and_peers(cfg):
    assert [p.pattern for p in cfg.upstream.ignore_paths] == [
        r".*\.(js|css|png|ico|svg|woff2?)$", "^/ws$"]
    assert cfg.routing.scheduler.fifo.priority == {"qwen-coder-32b": 10}
    assert cfg.routing.router == "group"
    assert cfg.groups["llms"].members == ("qwen-vl-7b", "qwen-coder-32b")
    assert not cfg.groups["audio"].swap
    assert cfg.peer_model("gpu-box/embed").peer.id == "gpu-box"
    assert cfg.peer_model("embed") is None  # two peers offer it
    assert cfg.peer_model("llama-70b").fqn == "gpu-box/llama-70b"
    assert cfg.peers["cloud"].api_key == "sk-example"


def test_served_listing_and_ignored_paths(cfg):
    with Proxy(cfg) as p:
        data = json.loads(p.request("GET", "/v1/models")[2])["data"]
        assert [r["id"] for r in data] == [
            "bge-reranker", "cloud/deepseek-v3", "cloud/embed", "coder", "embed-any",
            "gpu-box/embed", "gpu-box/llama-70b", "qwen-coder-32b", "qwen-vl-7b", "whisper"]
        vl = next(r for r in data if r["id"] == "qwen-vl-7b")
        assert vl["name"] == "Qwen2.5 VL 7B" and vl["context_length"] == 32768
        assert vl["meta"]["n_ctx"] == 32768 and vl["status"] == {"value": "unloaded"}
        assert vl["capabilities"] == {"function_calling": True, "vision": True}
        s, _, b = p.request("GET", "/upstream/whisper/static/app.js")
        assert s == 409 and json.loads(b)["error"]["code"] == "conflict"
        assert p.app.processes["whisper"].state.value == "stopped"


def test_selectors_and_profiles(cfg):
    coder, spill = cfg.selectors["coder"], cfg.selectors["embed-any"]
    assert (coder.strategy, coder.targets, coder.name) == (
        "warm", ("qwen-coder-32b", "qwen-vl-7b"), "Best loaded coder")
    assert coder.metadata == {"purpose": "coding"}
    assert (spill.strategy, spill.targets, spill.spillover) == (
        "spillover", ("gpu-box/embed", "cloud/embed"), 4)
    offline = cfg.profiles["offline"]
    assert offline.description == "Nothing leaves this machine"
    assert dict(offline.pins) == {"coder": "qwen-coder-32b", "embed-any": ""}
