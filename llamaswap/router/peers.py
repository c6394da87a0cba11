"""PeerDirectory: which remote peer serves a model id that is not local."""

from __future__ import annotations

from llamaswap.config.model import Config, PeerConfig


class PeerDirectory:
    """Peers are visited in sorted id order; a model listed by two peers goes to the first
    (upstream logs a warning and skips the later one)."""

    def __init__(self, config: Config, log):
        self._by_model: dict[str, PeerConfig] = {}
        for peer_id in sorted(config.peers):
            peer = config.peers[peer_id]
            for model in peer.models:
                if model in self._by_model:
                    log.warn(f"peer {peer_id}: model {model} already mapped to another peer, skipping")
                    continue
                self._by_model[model] = peer

    def peer_for(self, model_id: str) -> PeerConfig | None:
        return self._by_model.get(model_id)

    def handles(self, model_id: str) -> bool:
        return model_id in self._by_model

    def model_ids(self) -> list[str]:
        """Every model id some peer serves, sorted."""
        return sorted(self._by_model)
