"""The activity log: hands out a meter per request and keeps the records (ids, the store,
the captures, the ActivityRecorded event), and answers the questions asked of them
(``/api/metrics``, ``/api/metrics/activity``, ``/api/metrics/stats``)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from llamaswap.config.model import PLAIN_KEY_NAME
from llamaswap.ops.activity.meter import RequestMeter
from llamaswap.ops.activity.record import ActivityEntry
from llamaswap.ops.activity.query import ActivityQuery, histogram, total_pages
from llamaswap.ops.activity.store import DEFAULT_MAX_ENTRIES, SqliteStore
from llamaswap.ops.events import ActivityRecorded


class ActivityLog:
    """Meters requests and records them in an SqliteStore: the file ``store_path``
    (``store.path``) or, by default, memory holding the newest ``max_entries``
    (``metricsMaxInMemory``). Ids start at 0 and, in a file, go on after its largest one.
    ``entries()`` and ``dumps()`` (the reference revision's ``/api/metrics``) give the newest
    ``max_entries`` either way."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, *, events: Any = None,
                 captures: Any = None, log: Any = None,
                 clock: Callable[[], float] = time.monotonic, store_path: str | None = None):
        self.max_entries = max_entries if max_entries > 0 else DEFAULT_MAX_ENTRIES
        self._proxy_log = log
        self.store = SqliteStore(store_path, self.max_entries, warn=self.warn)
        self.store_path = store_path or None  # as configured (the store may have fallen back)
        self._record_lock = threading.Lock()
        self.events = events
        self.captures = captures
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
                            entry.duration_ms), entry.has_capture, capture, entry.error_msg,
                           entry.metadata, entry.key)

    def record(self, fields: tuple, has_capture: bool, capture: dict | None,
               error_msg: str = "", metadata: Mapping[str, str] | None = None,
               key: str = PLAIN_KEY_NAME) -> ActivityEntry:
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
            entry = ActivityEntry(entry_id, *fields, has_capture, error_msg, metadata, key)
            self.store.append(entry)
        if self.events is not None:
            self.events.publish(ActivityRecorded(entry))
        return entry

    def entries(self) -> list[ActivityEntry]:
        """The newest ``max_entries``, oldest first, with has_capture from the capture cache
        (captures can be evicted)."""
        return self._with_captures(self.store.recent(self.max_entries))

    def _with_captures(self, items: list[ActivityEntry]) -> list[ActivityEntry]:
        captures = self.captures
        if captures is None or not captures.enabled:
            return [replace(e, has_capture=False) if e.has_capture else e for e in items]
        return [replace(e, has_capture=captures.has(e.id)) for e in items]

    def dumps(self) -> str:
        return "[" + ",".join(e.dumps() for e in self.entries()) + "]"

    def page(self, query: ActivityQuery) -> dict:
        """Upstream's ActivityPage for ``GET /api/metrics/activity``."""
        rows, total = self.store.page(query)
        return {"data": [e.to_row() for e in self._with_captures(rows)], "page": query.page,
                "limit": query.limit, "total": total,
                "total_pages": total_pages(total, query.limit)}

    def stats(self, model: str = "") -> dict:
        """Upstream's ActivityStats for ``GET /api/metrics/stats``."""
        s = self.store.stats(model)
        return {"total_requests": s["total_requests"],
                "total_input_tokens": s["total_input_tokens"],
                "total_output_tokens": s["total_output_tokens"],
                "total_cache_tokens": s["total_cache_tokens"],
                "prompt_histogram": histogram(s["prompt_speeds"]),
                "gen_histogram": histogram(s["gen_speeds"])}

    def reconfigure(self, max_entries: int, captures: Any) -> None:
        """A reload that keeps the store: the new cap (memory is pruned to it with the next
        write) and capture cache."""
        self.max_entries = max_entries if max_entries > 0 else DEFAULT_MAX_ENTRIES
        self.store.max_entries = self.max_entries
        self.captures = captures

    def close(self) -> None:
        """Write what is pending and close the store (shutdown, or a reload that changes
        ``store.path``)."""
        self.store.close()
