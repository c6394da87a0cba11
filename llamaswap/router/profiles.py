"""Profiles: named sets of pins, at most one active, switched at runtime.

While a profile is active, a request whose model is one of its pin keys is sent to the
pin's target instead (a model, alias, peer model or selector; "" disables the id). The
active profile is one immutable (name, pins) pair swapped under a lock, so a handler reads
it once, without locking, and a switch never affects a request already past that read.
One switch lives as long as the proxy: a config reload hands it the new config
(``reconfigure``), so a switch that races a reload is never lost.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping

from llamaswap.config.model import Config

_NONE: tuple[str, Mapping[str, str]] = ("", {})


class ProfileNotFound(LookupError):
    pass


class ProfileSwitch:
    def __init__(self, config: Config, active: str = "",
                 on_change: Callable[[str], None] | None = None):
        self.config = config
        self._on_change = on_change
        self._lock = threading.Lock()
        self._active = _NONE
        if active in config.profiles:
            self._active = (active, config.profiles[active].pins)

    @property
    def active(self) -> str:
        """The active profile's name, "" when none is."""
        return self._active[0]

    def pins(self) -> Mapping[str, str]:
        return self._active[1]

    def set(self, name: str) -> bool:
        """Activate `name` ("" deactivates). Returns whether anything changed; raises
        ProfileNotFound (upstream's message) for an unknown name."""
        if name and name not in self.config.profiles:
            raise ProfileNotFound(f'profile "{name}" not found')
        with self._lock:
            if self._active[0] == name:
                return False
            self._active = (name, self.config.profiles[name].pins) if name else _NONE
            if self._on_change is not None:
                self._on_change(name)  # under the lock: two switches announce in their order
        return True


    def reconfigure(self, config: Config) -> None:
        """A config reload: the active profile stays active, with its new pins, while the new
        config defines it (upstream resets it on every reload); otherwise none is active and
        the change is announced."""
        with self._lock:
            self.config = config
            name = self._active[0]
            if not name:
                return
            if name in config.profiles:
                self._active = (name, config.profiles[name].pins)
                return
            self._active = _NONE
            if self._on_change is not None:
                self._on_change("")


def upstream_pin(path: str, pins: Mapping[str, str]) -> tuple[str, str] | None:
    """(pin, target) of the longest pin that `path` (after ``/upstream/``) starts with, as a
    whole segment run; None when no pin matches."""
    best = None
    for pin, target in pins.items():
        if (path == pin or path.startswith(pin + "/")) and (best is None or len(pin) > len(best[0])):
            best = (pin, target)
    return best
