"""The total of model-dispatched requests in flight (peers included, 429s excluded)."""

from __future__ import annotations

import threading

from llamaswap.ops.events import EventBus, InFlightChanged


class InFlightCounter:
    def __init__(self, events: EventBus | None = None):
        self._events = events
        self._lock = threading.Lock()
        self._total = 0
        self._per_model: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self._total

    def per_model(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_model)

    def enter(self, model: str) -> None:
        self._change(model, 1)

    def leave(self, model: str) -> None:
        self._change(model, -1)

    def _change(self, model: str, delta: int) -> None:
        with self._lock:
            self._total += delta
            left = self._per_model.get(model, 0) + delta
            if left:
                self._per_model[model] = left
            else:
                self._per_model.pop(model, None)
            total = self._total
        events = self._events
        if events is not None and events.wants(InFlightChanged):
            events.publish(InFlightChanged(total))
