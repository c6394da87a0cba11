"""Today's upstream config.example.yaml (revision 0bdb3720), read from the upstream mirror when
this machine has one (never copied into the repository): it loads unchanged, with a warning
for each thing upstream itself would refuse, and a real proxy serves its models."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from httpkit import Proxy

from llamaswap.config import load_config_text

MIRROR = "/work/.mirror/mostlygeek+llama-swap/repo"
REVISION = "0bdb3720"
ENV = {"HOME": "/home/user", "API_KEY_1": "sk-env-one", "API_KEY_2": "sk-env-two",
       "OPENROUTER_API_KEY": "sk-or"}
AUTH = {"Authorization": "Bearer sk-env-one"}  # the example sets apiKeys


def _example() -> str | None:
    if not os.path.isdir(MIRROR):
        return None
    r = subprocess.run(["git", "-C", MIRROR, "show", f"{REVISION}:config.example.yaml"],
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


EXAMPLE = _example()
pytestmark = pytest.mark.skipif(EXAMPLE is None, reason="upstream's mirror is not on this machine")


@pytest.fixture(scope="module")
def cfg():
    return load_config_text(EXAMPLE, "config.example.yaml", environ=ENV)


def test_loads_unchanged_with_a_warning_for_what_upstream_refuses(cfg):
    assert sorted(cfg.models) == ["docker-llama", "gpt-oss-120b", "unlisted-model"]
    assert ("model unlisted-model: cmd does not use ${PORT} and no proxy is set, so it gets the "
            "default proxy http://localhost:${PORT} with a port its command does not know about; "
            "set proxy to where the server listens") in cfg.warnings
    assert ('routing.router.settings.groups.forever.members: group forever: no model config for '
            '"forever-modelA"; the member is ignored') in cfg.warnings
    assert 'routing.scheduler.settings.fifo.priority references unknown model "A"; ignored' in cfg.warnings


def test_new_keys(cfg):
    m = cfg.models["gpt-oss-120b"]
    assert (m.capabilities.in_, m.capabilities.out) == (("text", "audio", "image"), ("text", "audio", "image"))
    assert (m.capabilities.tools, m.capabilities.context) == (True, 32000)
    assert m.metadata["port"] == m.port and m.metadata["temperature"] == 0.7
    assert [p.pattern for p in cfg.upstream.ignore_paths] == [
        r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$", r"^\/ws$|^\/api\/jobs$"]
    assert cfg.peer_model("openrouter/z-ai/glm-4.7").model_id == "z-ai/glm-4.7"
    assert cfg.peer_model("llama-swap-peer/embeddings/model_c").peer.id == "llama-swap-peer"
    assert cfg.api_keys[-2:] == ("sk-env-one", "sk-env-two")


def test_a_proxy_serves_its_models(cfg):
    with Proxy(cfg) as p:
        listed = {r["id"]: r for r in json.loads(p.request("GET", "/v1/models", headers=AUTH)[2])["data"]}
        assert {"gpt-oss-120b", "docker-llama", "openrouter/deepseek/deepseek-v3.2"} <= set(listed)
        assert "unlisted-model" not in listed
        gpt = listed["gpt-oss-120b"]
        assert gpt["name"] == "gpt-oss 120B" and gpt["context_length"] == 32000
        assert gpt["status"] == {"value": "unloaded"}
        # an ignored path never starts a model
        s, _, b = p.request("GET", "/upstream/gpt-oss-120b/ws", headers=AUTH)
        assert s == 409 and b"path matches upstream.ignorePaths" in b
        # a request is routed to the model, whose example command does not exist here
        s, _, b = p.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []},
                         headers=AUTH)
        assert s >= 500 and "gpt-oss-120b" in json.loads(b)["error"]["message"]


def test_selectors_and_profiles(cfg):
    # the example names models it no longer defines (qwen-unlisted, modelA, modelB): left out
    assert cfg.selectors["coding-model"].targets == ("gpt-oss-120b",)
    assert cfg.selectors["llm-plan"].targets == ("gpt-oss-120b", "z-ai/glm-4.7")
    assert (cfg.selectors["llama"].targets, cfg.selectors["llama"].spillover) == (("docker-llama",), 4)
    assert dict(cfg.profiles["coding"].pins) == {"image-gen": "", "llm-code": "gpt-oss-120b"}
    assert 'profiles.coding.pins.llm-plan references unknown model "qwen-unlisted"; the pin is ignored' \
        in cfg.warnings
    assert 'selectors.llama.targets[1] references unknown model "modelA"; the target is ignored' in cfg.warnings
