"""upstream.ignorePaths (upstream-head.md section 10): a static-asset path under
/upstream/<model>/ never starts a model that is not loaded."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import free_port
from httpkit import Proxy

from llamaswap.config import ConfigError, load_config_text
from llamaswap.config.model import DEFAULT_IGNORE_PATHS

PY = sys.executable


def _config(extra: str = "") -> str:
    port = free_port()
    return (f"{extra}models:\n  m:\n"
            f"    cmd: {PY} -m llamaswap.demo.backend --port {port} --model-id m --quiet\n"
            f"    proxy: http://127.0.0.1:{port}\n    unloadTimeout: 2\n")


def test_default_and_configured_patterns():
    c = load_config_text("models: {}\n")
    assert [p.pattern for p in c.upstream.ignore_paths] == list(DEFAULT_IGNORE_PATHS)
    assert c.upstream.ignores("/assets/app.js") and c.upstream.ignores("/favicon.ico")
    assert not c.upstream.ignores("/v1/models") and not c.upstream.ignores("/app.jsx")
    c = load_config_text("upstream:\n  ignorePaths: ['^/static/', '\\.map\\z', '[[:digit:]]{4}']\n")
    assert c.upstream.ignores("/static/x") and c.upstream.ignores("/a.js.map")
    assert c.upstream.ignores("/v2024") and not c.upstream.ignores("/app.js")  # replaces the default
    assert load_config_text("upstream: {ignorePaths: []}\n").upstream.ignores("/app.js")


@pytest.mark.parametrize("pattern", ["(abc", "[[:nope:]]", "a**"])
def test_invalid_pattern(pattern):
    with pytest.raises(ConfigError) as e:
        load_config_text(f"upstream:\n  ignorePaths: ['ok', '{pattern}']\n", "cfg.yaml")
    message = str(e.value)
    assert message.startswith("cfg.yaml:2: upstream.ignorePaths[1]: ")
    assert f'upstream.ignorePaths: invalid regular expression "{pattern}": error parsing regexp: ' in message


def test_ignored_path_does_not_start_a_model():
    with Proxy(load_config_text(_config())) as p:
        proc = p.app.processes["m"]
        s, h, b = p.request("GET", "/upstream/m/assets/app.js?v=1")
        assert s == 409 and h["content-type"] == "application/json"
        assert json.loads(b) == {"src": "llama-swap", "error": {
            "message": "model m is not loaded; path matches upstream.ignorePaths",
            "type": "invalid_request_error", "param": None, "code": "conflict"}}
        s, _, b = p.request("GET", "/upstream/m/favicon.ico", headers={"Accept": "text/plain"})
        assert s == 409 and b == b"llama-swap: model m is not loaded; path matches upstream.ignorePaths"
        assert proc.state.value == "stopped" and proc.pid is None
        # a path that does not match starts the model, after which assets are served
        s, _, b = p.request("GET", "/upstream/m/echo")
        assert s == 200 and proc.state.value == "ready"
        s, _, b = p.request("GET", "/upstream/m/echo.json")
        assert s == 200 and json.loads(b)["path"] == "/echo.json"
        p.app.router.unload()


def test_ignore_paths_do_not_block_peers_and_custom_lists_replace_the_default():
    with Proxy(load_config_text(_config("upstream:\n  ignorePaths: ['^/echo$']\n"))) as inner:
        # the front's peer is the inner proxy's /upstream/m: the front never blocks a peer
        # path, the inner proxy applies its own list, which replaced the default
        peer = (f"peers:\n  up:\n    proxy: http://127.0.0.1:{inner.port}/upstream/m\n"
                f"    models: [m]\n")
        with Proxy(load_config_text(f"{peer}models: {{}}\n")) as front:
            s, _, b = front.request("GET", "/upstream/m/echo")
            assert s == 409 and b"model m is not loaded" in b
            s, _, b = front.request("GET", "/upstream/m/app.js")
            assert s == 200 and json.loads(b)["path"] == "/app.js"
        inner.app.router.unload()
