"""Where activity records are kept. Every store has the same small interface, used only by
ActivityLog (log.py), which calls ``reserve_id`` and ``append`` one record at a time under
its own lock:

    reserve_id() -> int        the id of the next record (ids only grow)
    append(entry) -> None      keep a record (its id came from reserve_id)
    entries() -> list          the kept records, oldest first; safe from any thread
"""

from __future__ import annotations

import threading
from collections import deque

from llamaswap.ops.activity.record import ActivityEntry

DEFAULT_MAX_ENTRIES = 1000  # upstream's metricsMaxInMemory default


class MemoryStore:
    """The last ``max_entries`` records (``metricsMaxInMemory``) in a ring; ids start at 0."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES):
        self._ring: deque[ActivityEntry] = deque(
            maxlen=max_entries if max_entries > 0 else DEFAULT_MAX_ENTRIES)
        self._lock = threading.Lock()
        self._next_id = 0

    def reserve_id(self) -> int:
        entry_id = self._next_id
        self._next_id += 1
        return entry_id

    def append(self, entry: ActivityEntry) -> None:
        with self._lock:
            self._ring.append(entry)

    def entries(self) -> list[ActivityEntry]:
        with self._lock:
            return list(self._ring)
