"""PeerDirectory: peer lookup for model ids that are not local (behaviour.md 2.7, 4.7)."""

from __future__ import annotations

from llamaswap.config.model import Config, PeerConfig
from llamaswap.ops.logs import build_loggers
from llamaswap.router import PeerDirectory


def test_first_peer_in_sorted_order_wins_with_a_warning():
    loggers = build_loggers("none", level="debug")
    config = Config(peers={
        # deliberately not in sorted order: the directory sorts the ids itself
        "zeta": PeerConfig("zeta", "http://zeta:8080", models=("shared", "z-only")),
        "alpha": PeerConfig("alpha", "http://alpha:8080", models=("shared", "a-only")),
    })
    peers = PeerDirectory(config, loggers.log)
    assert peers.peer_for("shared").id == "alpha"
    assert peers.peer_for("z-only").id == "zeta"
    assert peers.peer_for("a-only").id == "alpha"
    assert peers.peer_for("local-or-unknown") is None
    assert peers.handles("shared") and not peers.handles("nope")
    assert peers.model_ids() == ["a-only", "shared", "z-only"]
    log = loggers.proxy.history().decode()
    assert "peer zeta: model shared already mapped to another peer, skipping" in log
    assert log.count("already mapped") == 1


def test_no_peers():
    peers = PeerDirectory(Config(), build_loggers("none").log)
    assert peers.peer_for("x") is None and peers.model_ids() == []
