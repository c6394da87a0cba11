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
        self.closed = False

    def offer(self, item: T) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

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
        self._listeners: tuple[Callable[[T], None], ...] = ()

    def subscribe(self, maxsize: int = 1024) -> Subscription[T]:
        sub: Subscription[T] = Subscription(self, maxsize)
        with self._lock:
            self._subs = self._subs + (sub,)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def add_listener(self, fn: Callable[[T], None]) -> None:
        """A callback run on every publish, in the publisher's thread. It must be quick and
        never block: it saves a queue and a thread wake-up per item for cheap consumers."""
        with self._lock:
            self._listeners = self._listeners + (fn,)

    def remove_listener(self, fn: Callable[[T], None]) -> None:
        with self._lock:
            self._listeners = tuple(f for f in self._listeners if f != fn)  # bound methods: ==

    @property
    def has_receivers(self) -> bool:
        """False when a publish would reach nobody (callers may skip building the item)."""
        return bool(self._subs or self._listeners)

    def publish(self, item: T) -> None:
        for sub in self._subs:  # a tuple snapshot: no lock on the hot path
            sub.offer(item)
        for fn in self._listeners:
            fn(item)

    def close_all(self) -> None:
        for sub in self._subs:
            sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
