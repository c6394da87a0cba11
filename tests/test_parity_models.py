"""Capabilities and the /v1/models record as today's upstream renders them (upstream-head.md
sections 12 and 13): a real config file through the real loader, a real proxy and backend."""

from __future__ import annotations

import json

import pytest

from helpers import demo_model_yaml
from httpkit import Proxy
from test_ops_api import SseReader

from llamaswap.config import ConfigError, load_config_text
from llamaswap.config.model import Capabilities

CAPS_CONFIG = """
includeAliasesInList: true
models:
{vision}{whisper}{plain}""".format(
    vision=demo_model_yaml("vision", """    name: "  Vision 7B  "
    aliases: [eyes]
    metadata:
      family: qwen
      context_length: 1
      architecture: shadowed
      nested: {z: 1, a: 2}
    capabilities:
      in: [text, image]
      out: [text]
      tools: true
      context: 32768
"""),
    whisper=demo_model_yaml("whisper", """    capabilities:
      in: [audio]
      out: [text]
      reranker: true
"""),
    plain=demo_model_yaml("plain", """    metadata: {context_length: 7}
"""))


def test_capabilities_render_as_upstream():
    assert Capabilities().rendered() == {}
    assert Capabilities(context=4096).rendered() == {"context_length": 4096}
    r = Capabilities(in_=("text", "image"), out=("image",)).rendered()
    assert r == {"architecture": {"input_modalities": ["text", "image"],
                                  "modality": "text+image->image",
                                  "output_modalities": ["image"]},
                 "capabilities": {"image_generation": True, "image_to_image": True,
                                  "vision": True}}
    r = Capabilities(in_=("text",), out=("audio",), tools=True).rendered()
    assert r["capabilities"] == {"audio_speech": True, "function_calling": True}
    assert r["supported_parameters"] == ["tools", "tool_choice"]
    # only one side: no modality, no pairwise flags
    r = Capabilities(in_=("image",)).rendered()
    assert r == {"architecture": {"input_modalities": ["image"]},
                 "capabilities": {"vision": True}}
    # an empty capabilities map is omitted, as Go's omitempty does
    assert Capabilities(out=("text",)).rendered() == {
        "architecture": {"output_modalities": ["text"]}}


@pytest.mark.parametrize("block,message", [
    ("{in: [text, video]}", 'model m: capabilities.in: invalid modality "video", must be one '
                            "of: text, audio, image"),
    ("{out: [smell]}", 'model m: capabilities.out: invalid modality "smell", must be one of: '
                       "text, audio, image"),
    ("{context: -1}", "model m: capabilities.context: must be >= 0"),
])
def test_capabilities_bad_input(block, message):
    text = f"models:\n  m:\n    cmd: x ${{PORT}}\n    capabilities: {block}\n"
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "caps.yaml")
    assert message in str(e.value) and "caps.yaml" in str(e.value)
    assert "models.m.capabilities" in str(e.value)


def test_capabilities_wrong_type_is_a_yaml_error():
    with pytest.raises(ConfigError) as e:
        load_config_text("models:\n  m:\n    cmd: x ${PORT}\n    capabilities: {tools: maybe}\n")
    assert "cannot unmarshal !!str `maybe` into bool" in str(e.value)


def test_v1_models_records_status_and_capabilities():
    cfg = load_config_text(CAPS_CONFIG, "caps.yaml")
    with Proxy(cfg) as p:
        s, h, b = p.request("GET", "/v1/models")
        assert s == 200 and h["content-type"] == "application/json"
        data = json.loads(b)["data"]
        assert [r["id"] for r in data] == ["eyes", "plain", "vision", "whisper"]
        eyes, plain, vision, whisper = data
        assert list(vision) == ["id", "object", "created", "owned_by", "name", "architecture",
                                "capabilities", "supported_parameters", "context_length",
                                "meta", "status"]
        assert vision["name"] == "Vision 7B"
        assert vision["architecture"] == {"input_modalities": ["text", "image"],
                                          "modality": "text+image->text",
                                          "output_modalities": ["text"]}
        assert vision["capabilities"] == {"function_calling": True, "vision": True}
        assert vision["supported_parameters"] == ["tools", "tool_choice"]
        assert vision["context_length"] == 32768
        # metadata keys the renderer owns are dropped; maps are sorted as Go writes them
        assert vision["meta"] == {"llamaswap": {"aliases": ["eyes"], "family": "qwen",
                                                "nested": {"a": 2, "z": 1}, "type": "model"},
                                  "n_ctx": 32768}
        assert b'"nested":{"a":2,"z":1}' in b
        assert eyes["meta"]["llamaswap"]["type"] == "alias"
        assert eyes["meta"]["llamaswap"]["modelID"] == "vision" and eyes["context_length"] == 32768
        assert whisper["capabilities"] == {"audio_transcriptions": True, "reranker": True}
        assert "supported_parameters" not in whisper and "context_length" not in whisper
        assert "n_ctx" not in whisper["meta"]
        # no capabilities: user metadata is kept as written, even a renderer key
        assert plain["meta"] == {"llamaswap": {"context_length": 7, "type": "model"}}
        assert "architecture" not in plain and "context_length" not in plain
        assert {r["status"]["value"] for r in data} == {"unloaded"}

        s, _, _ = p.post("/v1/chat/completions", {"model": "eyes", "messages": []})
        assert s == 200
        data = {r["id"]: r for r in json.loads(p.request("GET", "/models")[2])["data"]}
        assert data["vision"]["status"] == {"value": "loaded"}
        assert data["eyes"]["status"] == {"value": "loaded"}
        assert data["whisper"]["status"] == {"value": "unloaded"}

        # /api/events modelStatus carries the capabilities map and context_length
        sse = SseReader(p)
        try:
            _, models = sse.until(lambda t, d: t == "modelStatus")
        finally:
            sse.close()
        by_id = {m["id"]: m for m in models}
        assert by_id["vision"]["capabilities"] == {"function_calling": True, "vision": True}
        assert by_id["vision"]["context_length"] == 32768 and by_id["vision"]["state"] == "ready"
        assert "capabilities" not in by_id["plain"] and "context_length" not in by_id["plain"]
        p.app.router.unload()
