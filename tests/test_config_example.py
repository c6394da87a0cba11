"""upstream-config.example.yaml, the file upstream ships as its reference config.

Upstream itself cannot load this file unchanged: its matrix vars name models
(gemma-model, qwen-model, ...) that the file never defines, and ValidateMatrix rejects
that with `var key %q references unknown model %q`. The file must load unchanged for us
(every user copies it), so we load it with a warning naming each such var (test below), and
check every documented value by loading the unchanged text plus stub definitions of those
seven models. The stubs use a fixed port, so they take no ${PORT} and the documented port
numbers are unaffected.
"""

import os

import pytest
from matrix_oracle import expand, expanded

from llamaswap.config import ConfigError, load_config, load_config_text

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "upstream-config.example.yaml")
ENV = {"HOME": "/home/user", "API_KEY_1": "sk-env-one", "API_KEY_2": "sk-env-two", "OPENROUTER_API_KEY": "sk-or"}
MATRIX_MODELS = ["gemma-model", "qwen-model", "mistral-model", "voxtral-model", "reranker-model", "llama-70B",
                 "stable-diffusion"]

pytestmark = pytest.mark.skipif(not os.path.exists(EXAMPLE), reason="reference material not checked out")


def example_text():
    with open(EXAMPLE, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def config():
    stubs = "".join(f"  {m}:\n    cmd: stub-server --port 9\n    proxy: http://127.0.0.1:9\n" for m in MATRIX_MODELS)
    text = example_text()
    assert text.count("\nmodels:\n") == 1
    return load_config_text(text.replace("\nmodels:\n", "\nmodels:\n" + stubs), "example.yaml", environ=ENV)


def test_unchanged_example_loads_with_warnings(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(EXAMPLE)
    assert sorted(cfg.models) == ["docker-llama", "gpt-oss-120b", "qwen-unlisted"]
    assert 'matrix: var key "L" references unknown model "llama-70B"; sets that use it can never run that model' in cfg.warnings
    assert sum("references unknown model" in w for w in cfg.warnings) == len(MATRIX_MODELS)
    assert "hooks.on_startup.preload: unknown model 'llama' will not be preloaded" in cfg.warnings
    assert cfg.preload == ()
    assert expand(cfg.matrix.compiled_sets[0].root)[0] == ("gemma-model", "voxtral-model")


def test_unchanged_example_needs_its_env_vars():
    env = dict(ENV)
    del env["OPENROUTER_API_KEY"]
    with pytest.raises(ConfigError, match="environment variable 'OPENROUTER_API_KEY' is not set"):
        load_config_text(example_text(), "example.yaml", environ=env)


def test_globals(config):
    assert config.health_check_timeout == 500
    assert (config.log_level, config.log_time_format, config.log_to_stdout) == ("info", "", "proxy")
    assert (config.metrics_max_in_memory, config.capture_buffer) == (1000, 15)
    assert (config.performance.disabled, config.performance.every) == (False, 15)
    assert (config.start_port, config.send_loading_state, config.include_aliases_in_list) == (10001, True, False)
    assert config.global_ttl == 0
    assert config.api_keys == ("sk-hunter2", "sk-gyCPiKUcIfPlaM4OSMZekkprgijPx6+OsmQs8Rsg0xZ9qpy6gKWsIKqHOk+cgXVx",
                               "sk-env-one", "sk-env-two")
    assert config.preload == ()  # "llama" is not a model or alias: silently dropped
    assert not config.has_profiles


def test_ports_go_to_models_using_port_in_sorted_order(config):
    assert {m.id: m.port for m in config.models.values() if m.port} == {
        "docker-llama": 10001, "gpt-oss-120b": 10002, "qwen-unlisted": 10003}


def test_gpt_oss_model(config):
    m = config.models["gpt-oss-120b"]
    # ${latest-llama} (a folded multi-line macro holding ${PORT}), model macros override globals
    assert m.argv == ("/path/to/llama-server/llama-server-ec9e0301", "--port", "10002",
                      "--model", "path/to/gpt-oss-120B.gguf", "--ctx-size", "16384", "--temperature", "0.7")
    assert "#" not in m.cmd
    assert (m.name, m.description) == ("gpt-oss 120B", "A thinking model from OpenAI")
    assert m.env == ("CUDA_VISIBLE_DEVICES=0,1,2",)
    assert (m.proxy, m.check_endpoint, m.ttl, m.use_model_name) == (
        "http://127.0.0.1:8999", "/custom-endpoint", 60, "openai/gpt-oss-120B")
    assert m.filters.strip_params == ("temperature", "top_k", "top_p")
    assert m.filters.set_params == {"temperature": 0.7, "top_p": 0.9}
    assert m.filters.set_params_by_id == {
        "gpt-oss-120b": {"chat_template_kwargs": {"reasoning_effort": "medium"}},
        "gpt-oss-120b:high": {"chat_template_kwargs": {"reasoning_effort": "high"}},
        "gpt-oss-120b:low": {"chat_template_kwargs": {"reasoning_effort": "low"}},
    }
    assert m.aliases == ("gpt-4o-mini", "gpt-oss-120b:high", "gpt-oss-120b:low")
    assert m.concurrency_limit == 0 and m.effective_concurrency_limit == 10
    assert m.send_loading_state is False  # overrides the global true
    t = m.timeouts
    assert (t.connect, t.keepalive, t.response_header, t.tls_handshake, t.expect_continue, t.idle_conn) == (
        30, 0, 60, 10, 1, 90)


def test_gpt_oss_metadata_types(config):
    md = config.models["gpt-oss-120b"].metadata
    assert md["port"] == 10002 and type(md["port"]) is int
    assert md["temperature"] == 0.7 and type(md["temperature"]) is float
    assert md["note"] == "The gpt-oss-120b is running on port 10002 temp=0.7, context=16384"
    assert md["a_list"] == (1, 1.23, "macros are OK in list and dictionary types: gpt-oss-120b")
    assert md["an_obj"] == {"a": "1", "b": 2, "c": (0.7, False, "model: gpt-oss-120b")}


def test_aliases_map(config):
    assert dict(config.aliases) == {"gpt-4o-mini": "gpt-oss-120b", "gpt-oss-120b:high": "gpt-oss-120b",
                                    "gpt-oss-120b:low": "gpt-oss-120b"}


def test_unlisted_and_docker_models(config):
    q = config.models["qwen-unlisted"]
    assert q.unlisted and q.proxy == "http://localhost:10003" and q.send_loading_state is True
    assert q.argv == ("llama-server", "--port", "10003", "-m", "Llama-3.2-1B-Instruct-Q4_K_M.gguf", "-ngl", "0")
    d = config.models["docker-llama"]
    assert d.proxy == "http://127.0.0.1:10001"
    assert d.argv == ("docker", "run", "--name", "docker-llama", "--init", "--rm", "-p", "10001:8080",
                      "-v", "/mnt/nvme/models:/models", "ghcr.io/ggml-org/llama.cpp:server",
                      "--model", "/models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf")
    assert d.cmd_stop == "docker stop docker-llama"


def test_matrix(config):
    mx = config.matrix
    assert config.groups == {}
    assert [name for name, _ in mx.sets] == ["standard", "with_rerank", "creative", "full"]
    assert expanded(mx.compiled_sets) == [
        ("standard", ("gemma-model", "voxtral-model")),
        ("standard", ("qwen-model", "voxtral-model")),
        ("standard", ("mistral-model", "voxtral-model")),
        ("with_rerank", ("gemma-model", "reranker-model", "voxtral-model")),
        ("with_rerank", ("qwen-model", "reranker-model", "voxtral-model")),
        ("creative", ("gemma-model", "stable-diffusion")),
        ("creative", ("qwen-model", "stable-diffusion")),
        ("full", ("llama-70B",)),
    ]
    assert mx.model_evict_costs == {"voxtral-model": 50, "llama-70B": 30}
    assert mx.evict_cost("gemma-model") == 1


def test_peers(config):
    assert list(config.peers) == ["llama-swap-peer", "openrouter"]
    local = config.peers["llama-swap-peer"]
    assert (local.proxy, local.api_key, local.models) == (
        "http://192.168.1.23", "", ("model_a", "model_b", "embeddings/model_c"))
    assert local.timeouts.response_header == 60
    o = config.peers["openrouter"]
    assert (o.proxy, o.api_key) == ("https://openrouter.ai/api", "sk-or")
    assert o.models == ("meta-llama/llama-3.1-8b-instruct", "qwen/qwen3-235b-a22b-2507", "deepseek/deepseek-v3.2",
                        "z-ai/glm-4.7", "moonshotai/kimi-k2-0905", "minimax/minimax-m2.1")
    assert o.filters.strip_params == ("temperature", "top_p")
    assert o.filters.set_params == {"provider": {"data_collection": "deny", "zdr": True}}
    t = o.timeouts
    assert (t.connect, t.keepalive, t.response_header, t.tls_handshake, t.idle_conn) == (30, 30, 60, 10, 90)


def test_pure_python_yaml_gives_the_same_config(config, monkeypatch):
    # the zipapp bundles only pure-Python PyYAML (no libyaml)
    import yaml

    from llamaswap.config import yamlio
    monkeypatch.setattr(yamlio, "_Loader", yamlio.make_loader(yaml.SafeLoader))
    stubs = "".join(f"  {m}:\n    cmd: stub-server --port 9\n    proxy: http://127.0.0.1:9\n" for m in MATRIX_MODELS)
    pure = load_config_text(example_text().replace("\nmodels:\n", "\nmodels:\n" + stubs), "example.yaml", environ=ENV)
    assert pure == config
    with pytest.raises(ConfigError, match="yaml: line 3, column 3: "):
        load_config_text("a:\n  - b\n  c: d\n", "bad.yaml", environ={})
