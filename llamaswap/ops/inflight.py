"""The requests in flight on model routes (peers included, 429s excluded): the reference
revision's total and today's upstream's table (``/api/events`` type ``inflight``), with
``POST /api/inflight/{id}/cancel``.

The table costs a request two dict operations under one lock: an entry holds the request's
context and its JSON is built only when someone is listening (an ``/api/events`` client).
While someone is, one ticker thread announces, every 250 ms, the entries whose response
headers arrived or whose byte count moved since their last announcement (upstream sends an
update at most every 250 ms while bytes flow).

Cancel ends a request as if its client had hung up: the client connection is shut down, the
disconnect watcher (http/pool.py) cuts the backend connection or gives the router ticket up
(a queued request leaves the queue; a loading stream stops), and the handler's normal
clean-up removes the entry.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from datetime import datetime
from typing import Any

from llamaswap.http.auth import key_name
from llamaswap.ops.captures import header_map
from llamaswap.ops.events import EventBus, InFlightChanged

UPDATE_INTERVAL = 0.25  # seconds between two announcements of one entry while bytes flow


class InFlightEntry:
    __slots__ = ("id", "model", "req_path", "ctx", "wall", "started", "announced")

    def __init__(self, entry_id: str, model: str, req_path: str, ctx: Any):
        self.id = entry_id
        self.model = model
        self.req_path = req_path
        self.ctx = ctx
        self.wall = time.time()  # made a datetime only when someone looks
        self.started = time.monotonic()
        self.announced: tuple[bool, int] = (False, 0)  # (headers sent, bytes) last announced

    def state(self) -> tuple[bool, int]:
        ctx = self.ctx
        return (bool(getattr(ctx, "started", False)), int(getattr(ctx, "bytes_sent", 0)))

    def to_json(self) -> dict:
        """Upstream's InflightRequestEntry (header maps: first value, credentials redacted,
        keys sorted as Go writes a map)."""
        ctx = self.ctx
        headers = getattr(ctx, "headers", None)
        req_headers = header_map(headers.items()) if headers is not None else {}
        resp_headers = header_map(getattr(ctx, "resp_headers", None) or ())
        metadata = (getattr(ctx, "state", None) or {}).get("metadata")
        out = {"id": self.id, "timestamp": datetime.fromtimestamp(self.wall).astimezone(),
               "model": self.model,
               "req_path": self.req_path, "method": getattr(ctx, "method", ""),
               "req_headers": dict(sorted(req_headers.items())),
               "remote_ip": _remote_ip(ctx),
               "resp_headers": dict(sorted(resp_headers.items())),
               "resp_bytes": int(getattr(ctx, "bytes_sent", 0)),
               "elapsed_ms": max(0, int((time.monotonic() - self.started) * 1000))}
        if metadata:
            out["metadata"] = dict(sorted(metadata.items()))
        out["key"] = key_name(ctx)  # the API key's name (ours, last)
        return out


def _remote_ip(ctx: Any) -> str:
    try:
        return ctx.client_ip
    except Exception:
        return ""


class InFlightTable:
    def __init__(self, events: EventBus | None = None):
        self._events = events
        self._lock = threading.Lock()
        self._total = 0
        self._per_model: dict[str, int] = {}
        self._entries: dict[str, InFlightEntry] = {}
        self._ids = itertools.count(1)
        self._ticker: threading.Thread | None = None

    @property
    def total(self) -> int:
        return self._total

    def per_model(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_model)

    def enter(self, model: str, ctx: Any = None, req_path: str | None = None
              ) -> InFlightEntry | None:
        """Count a request; with its context, also list it (returns the entry to pass to
        ``leave``)."""
        entry = None
        with self._lock:
            self._total += 1
            self._per_model[model] = self._per_model.get(model, 0) + 1
            if ctx is not None:
                entry = InFlightEntry(str(next(self._ids)), model,
                                      req_path if req_path is not None else ctx.path, ctx)
                self._entries[entry.id] = entry
            self._announce(entry, "upsert")
        return entry

    def leave(self, model: str, entry: InFlightEntry | None = None) -> None:
        with self._lock:
            self._total -= 1
            left = self._per_model.get(model, 0) - 1
            if left > 0:
                self._per_model[model] = left
            else:
                self._per_model.pop(model, None)
            if entry is not None:
                self._entries.pop(entry.id, None)
            self._announce(entry, "remove")

    def cancel(self, entry_id: str) -> bool:
        """End the request at once, as if its client had hung up; False if no such id."""
        with self._lock:
            entry = self._entries.get(entry_id)
        if entry is None:
            return False
        ctx = entry.ctx
        try:
            ctx.mark_gone()
            ctx.handler.connection.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        return True

    def snapshot(self) -> dict:
        """``{"operation":"snapshot","requests":[...],"total":N}``, oldest first (requests
        left out when there are none, as upstream's omitempty does)."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: (e.started, int(e.id)))
            total = self._total
        update: dict[str, Any] = {"operation": "snapshot"}
        if entries:
            update["requests"] = [e.to_json() for e in entries]
        update["total"] = total
        return update

    # ---- announcements

    # Announcements are published under the lock (publish never blocks), so an entry's
    # updates reach every listener in the order they happened: never an upsert after its
    # remove.

    def _announce(self, entry: InFlightEntry | None, operation: str) -> None:
        events = self._events
        if events is None or not events.wants(InFlightChanged):
            return
        update = None
        if entry is not None:
            if operation == "upsert":
                entry.announced = entry.state()
                update = {"operation": "upsert", "request": entry.to_json()}
                self._start_ticker()
            else:
                update = {"operation": "remove", "id": entry.id}
        events.publish(InFlightChanged(self._total, update))

    def _start_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="inflight-ticker",
                                            daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(UPDATE_INTERVAL)
            events = self._events
            if events is None or not events.wants(InFlightChanged):
                continue
            with self._lock:
                for entry in self._entries.values():
                    state = entry.state()
                    if state != entry.announced:
                        entry.announced = state
                        events.publish(InFlightChanged(self._total, {
                            "operation": "upsert", "request": entry.to_json()}))
