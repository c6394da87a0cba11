"""Counted slots with a limit: a model's concurrency limit, a key's ``maxInFlight``."""

from __future__ import annotations

import threading


class Slots:
    """Requests in flight per name, each name with a limit given at acquire time (so a
    reload that lowers a limit applies to the next request while those admitted finish)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}

    def try_acquire(self, name: str, limit: int) -> bool:
        with self._lock:
            n = self._used.get(name, 0)
            if n >= limit:
                return False
            self._used[name] = n + 1
            return True

    def release(self, name: str) -> None:
        with self._lock:
            n = self._used.get(name, 0) - 1
            if n > 0:
                self._used[name] = n
            else:
                self._used.pop(name, None)

    def in_use(self, name: str) -> int:
        return self._used.get(name, 0)
