"""What the UI's timeline draws: a bounded history of every model's state changes, each with
the reason the router gave, and ``GET /api/timeline`` (that history and the activity rows of
a time window).

The history follows the event bus (``timeline_for(events)``: one per bus, so it outlives
config reloads as the bus does). A change is a dict:

``{"seq", "t", "model", "state", "from", "reason", "for", "detail"}`` plus, on a start that
evicted models, ``"evicted": [{"model", "reason"}]`` (with ``"asleep": true`` for one put to
sleep instead of stopped) and, on ``ready``, ``"load_s"`` (how long the start took). ``reason`` is the router's stop word ("group", "matrix", "memory", "unload",
"ttl", "crash", "health", ...) on the change that began a stop, "restart" on a start the
restart policy ordered (``detail``: the failure and the attempt), "start-failed" on a start
that failed; a backoff inherits the reason of the stop before it. A crash is reported by the
router after the process has already gone: the change it explains is updated and announced
again with the same ``seq``. Every new or updated change is published as
``TimelineChanged(change)``, which ``/api/events`` forwards as a ``timeline`` message.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from llamaswap.ops.events import (EventBus, ModelRestarting, ModelStopping, ProcessStateChanged,
                                  TimelineChanged)

MAX_CHANGES = 20_000  # about 2 MB; at one swap a minute, two weeks of history
MAX_REQUESTS = 50_000  # activity rows in one /api/timeline answer (the newest of the window)
LATE_REASON = 5.0  # seconds a reason may arrive after the change it explains (a crash)
REQUEST_FIELDS = ("id", "t", "ms", "model", "status", "path", "in", "out", "tps", "key")
STOPPED_STATES = ("stopping", "stopped", "sleeping", "shutdown")


class Timeline:
    def __init__(self, events: EventBus | None = None, max_changes: int = MAX_CHANGES,
                 clock=time.time):
        self._events = events
        self._clock = clock
        self._lock = threading.Lock()
        self._changes: deque[dict] = deque(maxlen=max_changes)
        self._seq = 0
        self._last: dict[str, dict] = {}  # model -> its newest change
        self._pending_stop: dict[str, tuple[str, str]] = {}  # model -> (reason, for) announced
        self._pending_evict: dict[str, list[dict]] = {}  # model starting -> what it evicts
        self._pending_restart: dict[str, str] = {}  # model -> why the policy restarts it
        self._started_at: dict[str, float] = {}  # model -> when its start began
        self.since = clock()
        if events is not None:
            events.add_listener(self._on_event,
                                (ProcessStateChanged, ModelStopping, ModelRestarting))

    # ---- what the bus says

    def _on_event(self, event: Any) -> None:
        with self._lock:
            now = self._clock()
            if isinstance(event, ProcessStateChanged):
                change = self._state_changed(event, now)
            elif isinstance(event, ModelStopping):
                change = self._stopping(event, now)
            else:
                self._pending_restart[event.model] = (
                    f"{event.reason}, attempt {event.attempt}" if event.attempt else event.reason)
                change = None
        if change is not None and self._events is not None:
            self._events.publish(TimelineChanged(dict(change)))

    def _state_changed(self, event: ProcessStateChanged, now: float) -> dict:
        model, new = event.model, event.new
        self._seq += 1
        change: dict[str, Any] = {"seq": self._seq, "t": round(now, 3), "model": model,
                                  "state": new, "from": event.old, "reason": "", "for": "",
                                  "detail": ""}
        if new == "starting":
            self._started_at[model] = now
            evicted = self._pending_evict.pop(model, None)
            if evicted:
                for e in evicted:  # a model with `sleep` fell asleep instead of stopping
                    last = self._last.get(e["model"])
                    if last is not None and last["state"] == "sleeping":
                        e["asleep"] = True
                change["evicted"] = evicted
            restart = self._pending_restart.pop(model, None)
            if restart is not None:
                change["reason"], change["detail"] = "restart", restart
        elif new == "ready":
            began = self._started_at.pop(model, None)
            if began is not None:
                change["load_s"] = round(now - began, 3)
        elif new in STOPPED_STATES:
            pending = self._pending_stop.pop(model, None)
            if pending is not None:
                change["reason"], change["for"] = pending
            elif event.old == "starting" and new == "stopped":
                change["reason"] = "start-failed"
            if event.old == "starting":
                self._started_at.pop(model, None)
        elif new == "backoff":
            before = self._last.get(model)
            if before is not None:
                change["reason"] = before["reason"]
        self._changes.append(change)
        self._last[model] = change
        return change

    def _stopping(self, event: ModelStopping, now: float) -> dict | None:
        model = event.model
        if event.for_model:
            self._pending_evict.setdefault(event.for_model, []).append(
                {"model": model, "reason": event.reason})
        last = self._last.get(model)
        if (last is not None and last["state"] in STOPPED_STATES and not last["reason"]
                and now - last["t"] <= LATE_REASON):
            # the backend went down before the router heard of it (a crash): explain that
            last["reason"], last["for"] = event.reason, event.for_model
            return last
        self._pending_stop[model] = (event.reason, event.for_model)
        return None

    # ---- what the UI asks

    def changes(self, start: float | None = None, end: float | None = None) -> dict:
        """The changes inside [start, end] (oldest first) and each model's state at
        ``start`` (from the newest change before it; models never seen are stopped)."""
        with self._lock:
            items = [dict(c) for c in self._changes]
        initial: dict[str, str] = {}
        inside = []
        for c in items:
            if start is not None and c["t"] < start:
                initial[c["model"]] = c["state"]
            elif end is None or c["t"] <= end:
                inside.append(c)
        oldest = items[0]["t"] if items and len(items) == self._changes.maxlen else self.since
        return {"changes": inside, "initial": initial, "history_since": round(oldest, 3)}


def request_rows(entries: list) -> list[list]:
    """Activity entries as compact rows of REQUEST_FIELDS (``t``: when the request began)."""
    rows = []
    for e in entries:
        tok = e.tokens
        end = e.timestamp.timestamp()
        rows.append([e.id, round(end - e.duration_ms / 1000, 3), e.duration_ms, e.model,
                     e.resp_status_code, e.req_path, tok.input_tokens, tok.output_tokens,
                     round(float(tok.tokens_per_second), 2), e.key])
    return rows


_registry: dict[int, tuple[EventBus, Timeline]] = {}
_registry_lock = threading.Lock()


def timeline_for(events: EventBus) -> Timeline:
    """The Timeline following ``events`` (created on first use; the bus outlives config
    reloads, and so does its history)."""
    with _registry_lock:
        found = _registry.get(id(events))
        if found is not None and found[0] is events:
            return found[1]
        timeline = Timeline(events)
        _registry[id(events)] = (events, timeline)
        return timeline
