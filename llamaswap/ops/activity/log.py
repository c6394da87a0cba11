"""The activity log: hands out a meter per request and keeps the records (ids, the store,
the captures, the ActivityRecorded event)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from llamaswap.ops.activity.meter import RequestMeter
from llamaswap.ops.activity.record import ActivityEntry
from llamaswap.ops.activity.store import DEFAULT_MAX_ENTRIES, MemoryStore
from llamaswap.ops.events import ActivityRecorded


class ActivityLog:
    """Meters requests and records them in ``store`` (by default the last ``max_entries``,
    ``metricsMaxInMemory``, in memory; ids start at 0)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, *, events: Any = None,
                 captures: Any = None, log: Any = None,
                 clock: Callable[[], float] = time.monotonic, store: Any = None):
        self.store = store if store is not None else MemoryStore(max_entries)
        self._record_lock = threading.Lock()
        self.events = events
        self.captures = captures
        self._proxy_log = log
        self._clock = clock
        if events is not None and hasattr(events, "subscribe"):
            # /metrics counts every request from the moment the first App is built
            from llamaswap.ops.prometheus import request_metrics
            request_metrics(events)

    def warn(self, msg: str) -> None:
        if self._proxy_log is not None:
            self._proxy_log.warn(msg)

    def debug(self, msg: str) -> None:
        if self._proxy_log is not None:
            self._proxy_log.debug(msg)

    def observe(self, ctx: Any, model_id: str) -> RequestMeter | None:
        """The forwarding observer for one request (None when it is not metered). The path
        is recorded as dispatched: versionless ``/v/x`` becomes ``/x``, as upstream."""
        path = ctx.path
        if path.startswith("/v/"):
            path = path[2:]
        headers = ctx.headers.items() if ctx.headers is not None else ()
        meter = self.meter(model_id, path, ctx.method, list(headers))
        if meter is not None:
            meter.ctx = ctx
        return meter

    def meter(self, model_id: str, path: str, method: str = "POST",
              req_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None
              ) -> RequestMeter | None:
        """A meter for a model-dispatched request, or None when upstream does not meter it
        (only POST requests are)."""
        if method.upper() != "POST":
            return None
        return RequestMeter(self, model_id, path, req_headers, self._clock)

    def add(self, entry: ActivityEntry, capture: dict | None = None) -> ActivityEntry:
        return self.record((entry.timestamp, entry.model, entry.req_path,
                            entry.resp_content_type, entry.resp_status_code, entry.tokens,
                            entry.duration_ms), entry.has_capture, capture)

    def record(self, fields: tuple, has_capture: bool, capture: dict | None) -> ActivityEntry:
        """Keep one record and return it with its id. ``fields``: ActivityEntry's fields from
        timestamp to duration_ms (the entry is built once, with its id)."""
        # the capture is stored before the entry becomes visible, so a reader never sees an
        # entry whose capture is still on its way; ids stay in store order
        with self._record_lock:
            entry_id = self.store.reserve_id()
            if capture is not None and self.captures is not None:
                capture["id"] = entry_id
                if self.captures.add(entry_id, capture):
                    has_capture = True
            entry = ActivityEntry(entry_id, *fields, has_capture)
            self.store.append(entry)
        if self.events is not None:
            self.events.publish(ActivityRecorded(entry))
        return entry

    def entries(self) -> list[ActivityEntry]:
        """Oldest first, with has_capture recomputed (captures can be evicted)."""
        items = self.store.entries()
        if self.captures is None:
            return items
        return [replace(e, has_capture=self.captures.has(e.id)) for e in items]

    def dumps(self) -> str:
        return "[" + ",".join(e.dumps() for e in self.entries()) + "]"
