"""PeerDirectory and the peer namespace (upstream-head.md section 8): ``peerID/modelID``
always, a bare model id only when exactly one peer offers it."""

from __future__ import annotations

import pytest

from llamaswap.config import ConfigError, load_config_text
from llamaswap.config.model import Config, PeerConfig, freeze
from llamaswap.router import PeerDirectory


def test_qualified_names_and_unambiguous_bare_names():
    config = Config(peers=freeze({
        # deliberately not in sorted order
        "zeta": PeerConfig("zeta", "http://zeta:8080", models=("shared", "z-only", "z-only")),
        "alpha": PeerConfig("alpha", "http://alpha:8080", models=("shared", "a-only")),
    }))
    peers = PeerDirectory(config)
    assert peers.route_for("alpha/shared") == (config.peers["alpha"], "shared")
    assert peers.route_for("zeta/shared").peer.id == "zeta"
    assert peers.route_for("shared") is None and not peers.handles("shared")  # two peers offer it
    assert peers.route_for("z-only").fqn == "zeta/z-only"
    assert peers.peer_for("a-only").id == "alpha" and peers.route_for("a-only").model_id == "a-only"
    assert peers.peer_for("local-or-unknown") is None
    assert peers.model_ids() == ["alpha/a-only", "alpha/shared", "zeta/shared", "zeta/z-only"]


def test_a_qualified_name_wins_over_a_bare_name_with_the_same_text():
    config = Config(peers=freeze({
        "a": PeerConfig("a", "http://a", models=("q",)),
        "x": PeerConfig("x", "http://x", models=("a/q",)),
    }))
    assert config.peer_names["a/q"] == (config.peers["a"], "q")  # not peer x's bare "a/q"
    assert config.peer_names["x/a/q"].model_id == "a/q"


def test_local_names_win():
    config = load_config_text("models:\n  m:\n    cmd: srv ${PORT}\n"
                              "peers:\n  p:\n    proxy: http://h\n    models: [m, y]\n")
    assert config.peer_model("m") is None and config.peer_model("p/m").model_id == "m"
    assert config.peer_model("y").fqn == "p/y"


@pytest.mark.parametrize("text,expected", [
    ("peers:\n  a:\n    proxy: http://h\n    models: [b/c]\n  a/b:\n    proxy: http://h\n    models: [c]\n",
     'peer model name "a/b/c" is ambiguous between peers.a model "b/c" and peers.a/b model "c"'),
    ("models:\n  p/x:\n    cmd: srv ${PORT}\npeers:\n  p:\n    proxy: http://h\n    models: [x]\n",
     'model ID "p/x" conflicts with fully qualified peer model name'),
    ("models:\n  m:\n    cmd: srv ${PORT}\n    aliases: [p/x]\npeers:\n  p:\n    proxy: http://h\n"
     "    models: [x]\n",
     'model m alias "p/x" conflicts with fully qualified peer model name'),
])
def test_namespace_errors(text, expected):
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "cfg.yaml")
    assert expected in str(e.value) and str(e.value).startswith("cfg.yaml")


def test_no_peers():
    peers = PeerDirectory(Config())
    assert peers.peer_for("x") is None and peers.model_ids() == []
