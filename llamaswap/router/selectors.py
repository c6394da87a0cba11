"""Selectors: virtual model ids that pick one of their targets for each request.

Upstream's strategies (upstream-head.md section 7), evaluated on the model name after the
active profile's pins:

  pin        always the first target.
  warm       the first target whose process is ready, else the first that is starting,
             else the first that is asleep (a wake takes a fraction of a load; upstream has
             no sleeping state), else the first target (which the request then starts).
  spillover  targets that are stopping (or shut down) are skipped. Active targets are the
             local ones that are ready or starting, and any target with requests in flight
             through this selector; the others are cold. With no active target: the first
             cold one. Else, if the least busy active target has fewer than `spillover`
             requests in flight through the selector: that one. Else the first cold target
             if there is one, else the least busy active one. Equally busy targets take turns.

The decision is plain data in, a target out: ``state_of(target)`` gives a local target's
process state ("" for a peer target). ``Spillover`` keeps the selector's own in-flight
counts; ``Selectors`` serialises its callers (handler threads) with one lock per selector.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping

from llamaswap.config.model import Config, SelectorConfig

PIN, WARM, SPILLOVER = "pin", "warm", "spillover"
_ACTIVE = ("ready", "starting")
_WARM = _ACTIVE + ("sleeping",)  # warm's order of preference
_GONE = ("stopping", "shutdown")

StateOf = Callable[[str], str]  # target as written -> its process state ("" when not local)


class SelectorError(Exception):
    """No target can serve (503)."""


def choose_pin(selector: SelectorConfig) -> str:
    return selector.targets[0]


def choose_warm(selector: SelectorConfig, state_of: StateOf) -> str:
    for wanted in _WARM:
        for target in selector.targets:
            if state_of(target) == wanted:
                return target
    return selector.targets[0]


@dataclass(frozen=True)
class _Target:
    written: str  # as in `targets`: what the request's model becomes
    key: str  # the model it resolves to (local id or peer model): counts are per model
    local: bool


class Spillover:
    """One spillover selector's reservations. Not thread-safe: ``Selectors`` locks."""

    def __init__(self, selector_id: str, targets: list[_Target], spillover: int):
        self.selector_id = selector_id
        self.targets = targets
        self.spillover = spillover
        self.in_flight: dict[str, int] = {}
        self._turn = 0

    def choose(self, state_of: StateOf) -> str:
        """The target for one more request, reserved until ``release``."""
        active: list[_Target] = []
        cold: list[_Target] = []
        for target in self.targets:
            busy = self.in_flight.get(target.key, 0) > 0
            if not target.local:
                (active if busy else cold).append(target)
                continue
            state = state_of(target.written)
            if state in _GONE:
                continue
            (active if state in _ACTIVE or busy else cold).append(target)
        if not active:
            if not cold:
                raise SelectorError(f'selector "{self.selector_id}" has no available spillover targets')
            return self._reserve(cold[0])
        if self._least(active) < self.spillover or not cold:
            return self._reserve(self._least_busy(active))
        return self._reserve(cold[0])

    def release(self, written: str) -> None:
        for target in self.targets:
            if target.written == written and self.in_flight.get(target.key, 0) > 0:
                self.in_flight[target.key] -= 1
                return

    def _least(self, targets: list[_Target]) -> int:
        return min(self.in_flight.get(t.key, 0) for t in targets)

    def _least_busy(self, targets: list[_Target]) -> _Target:
        least = self._least(targets)
        tied = [t for t in targets if self.in_flight.get(t.key, 0) == least]
        chosen = tied[self._turn % len(tied)]
        self._turn += 1
        return chosen

    def _reserve(self, target: _Target) -> str:
        self.in_flight[target.key] = self.in_flight.get(target.key, 0) + 1
        return target.written


@dataclass(frozen=True)
class Choice:
    selector_id: str
    target: str  # as written in `targets`
    reserved: bool  # a spillover reservation: call Selectors.release(choice) when done


class Selectors:
    """Every selector of one config (built per App: a reload starts counting afresh, as
    upstream). ``choose`` is called by handler threads."""

    def __init__(self, config: Config):
        self.config = config
        self._spillovers: dict[str, Spillover] = {}
        self._locks: dict[str, threading.Lock] = {}
        for sid, selector in config.selectors.items():
            if selector.strategy != SPILLOVER:
                continue
            targets = []
            for written in selector.targets:
                real = config.real_model_name(written)
                route = config.peer_names.get(written) if real is None else None
                key = real if real is not None else (route.fqn if route is not None else written)
                targets.append(_Target(written, key, real is not None))
            self._spillovers[sid] = Spillover(sid, targets, selector.spillover)
            self._locks[sid] = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self.config.selectors

    def choose(self, selector_id: str, state_of: StateOf) -> Choice:
        """Raises SelectorError when no target can serve."""
        selector = self.config.selectors[selector_id]
        if selector.strategy == PIN:
            return Choice(selector_id, choose_pin(selector), False)
        if selector.strategy == WARM:
            return Choice(selector_id, choose_warm(selector, state_of), False)
        with self._locks[selector_id]:
            return Choice(selector_id, self._spillovers[selector_id].choose(state_of), True)

    def release(self, choice: Choice) -> None:
        if choice.reserved:
            with self._locks[choice.selector_id]:
                self._spillovers[choice.selector_id].release(choice.target)

    def in_flight(self, selector_id: str) -> Mapping[str, int]:
        spill = self._spillovers.get(selector_id)
        return dict(spill.in_flight) if spill is not None else {}
