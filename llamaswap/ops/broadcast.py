"""Fan-out to slow readers without ever blocking the writer.

Every subscriber owns a bounded queue. A publish that finds a queue full drops the item for
that subscriber only and counts it, so a stalled browser tab or `curl` can never make a
backend's stdout pipe fill up (upstream bug #875).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

_CLOSED = object()


class Subscription(Generic[T]):
    def __init__(self, hub: "Broadcaster[T]", maxsize: int):
        self._hub = hub
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self.dropped = 0  # items lost since the reader last looked
        self.dropped_bytes = 0  # their size, when the items are bytes (log chunks)
        self.closed = False

    def offer(self, item: T) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if isinstance(item, (bytes, bytearray)):
                self.dropped_bytes += len(item)

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, or None on timeout. Raises EOFError once closed."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _CLOSED:
            self.closed = True
            raise EOFError
        return item

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n

    def take_dropped_bytes(self) -> int:
        n, self.dropped_bytes = self.dropped_bytes, 0
        return n

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self.get()
            except EOFError:
                return
            if item is not None:
                yield item

    def close(self) -> None:
        self._hub.unsubscribe(self)
        self.closed = True
        try:
            self._queue.put_nowait(_CLOSED)
        except queue.Full:
            # make room for the close marker: the reader is going away anyway
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._queue.put_nowait(_CLOSED)


class Broadcaster(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: tuple[Subscription[T], ...] = ()
        self._listeners: tuple[tuple[Callable[[T], None], tuple[type, ...] | None], ...] = ()
        self._wanted: tuple[tuple, dict[type, bool]] = ((), {})  # wants() answers per listeners

    def subscribe(self, maxsize: int = 1024) -> Subscription[T]:
        sub: Subscription[T] = Subscription(self, maxsize)
        with self._lock:
            self._subs = self._subs + (sub,)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def add_listener(self, fn: Callable[[T], None], types: tuple[type, ...] | None = None) -> None:
        """A callback run on every publish (of one of ``types``, when given), in the
        publisher's thread. It must be quick and never block: it saves a queue and a thread
        wake-up per item for cheap consumers."""
        with self._lock:
            self._listeners = self._listeners + ((fn, types),)

    def remove_listener(self, fn: Callable[[T], None]) -> None:
        with self._lock:  # bound methods compare equal, they are not identical
            self._listeners = tuple(entry for entry in self._listeners if entry[0] != fn)

    def wants(self, item_type: type) -> bool:
        """False when a publish of this type would reach nobody (the caller may skip
        building the item)."""
        if self._subs:
            return True
        listeners = self._listeners
        known = self._wanted
        if known[0] is not listeners:  # listeners changed since the answers were cached
            known = self._wanted = (listeners, {})
        answer = known[1].get(item_type)
        if answer is None:
            answer = known[1][item_type] = any(types is None or issubclass(item_type, types)
                                               for _, types in listeners)
        return answer

    def publish(self, item: T) -> None:
        for sub in self._subs:  # a tuple snapshot: no lock on the hot path
            sub.offer(item)
        for fn, types in self._listeners:
            if types is None or isinstance(item, types):
                fn(item)

    def close_all(self) -> None:
        for sub in self._subs:
            sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
