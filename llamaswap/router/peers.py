"""PeerDirectory: which remote peer serves a name that is not a local model or alias.

Names are upstream's peer namespace (``Config.peer_names``): ``peerID/modelID`` always, and
the bare ``modelID`` when exactly one peer offers it. A bare name two peers offer routes
nowhere (404), as upstream.
"""

from __future__ import annotations

from llamaswap.config.model import Config, PeerConfig, PeerModel


class PeerDirectory:
    def __init__(self, config: Config, log=None):
        self._names = config.peer_names

    def route_for(self, name: str) -> PeerModel | None:
        """The peer and the model id it knows, for a name local models do not claim."""
        return self._names.get(name)

    def peer_for(self, name: str) -> PeerConfig | None:
        route = self._names.get(name)
        return route.peer if route is not None else None

    def handles(self, name: str) -> bool:
        return name in self._names

    def model_ids(self) -> list[str]:
        """Every peer model's qualified name, sorted."""
        return sorted({route.fqn for route in self._names.values()})
