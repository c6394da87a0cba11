"""The in-process event bus: what the SSE stream, the metrics and the UI listen to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llamaswap.ops.broadcast import Broadcaster, Subscription


@dataclass(frozen=True)
class ProcessStateChanged:
    model: str
    old: str
    new: str


@dataclass(frozen=True)
class ConfigChanged:
    pass


@dataclass(frozen=True)
class LogData:
    source: str  # "proxy" or "upstream"
    data: bytes


@dataclass(frozen=True)
class ActivityRecorded:
    entry: Any  # ops.activity.ActivityEntry


@dataclass(frozen=True)
class InFlightChanged:
    total: int
    # today's upstream's table update: {"operation": "upsert", "request": {...}} or
    # {"operation": "remove", "id": "..."} (ops/inflight.py); None for a bare count change
    update: Any = None


@dataclass(frozen=True)
class ModelPreloaded:
    model: str
    success: bool


@dataclass(frozen=True)
class SwapFinished:
    """A load attempt ended (used for load counts and durations in /metrics)."""

    model: str
    seconds: float
    ok: bool


@dataclass(frozen=True)
class ProfileChanged:
    """The active profile changed ("" when none is active)."""

    active: str


@dataclass(frozen=True)
class QueueLengthChanged:
    length: int


@dataclass(frozen=True)
class ModelStopping:
    """The router began stopping (or putting to sleep) ``model``. ``reason`` is one word:
    "group", "matrix", "memory" (a planner evicted it to start ``for_model``), "unload",
    "ttl", "retire", "shutdown", or a teammate's ("crash", "health", "maxwait", ...).
    ``for_model`` is the model being started, "" when the stop serves no start."""

    model: str
    reason: str
    for_model: str = ""


@dataclass(frozen=True)
class HealthCheckFailed:
    """A ready backend's health probe failed; ``count`` failures in a row so far."""

    model: str
    count: int
    detail: str


@dataclass(frozen=True)
class ModelRestarting:
    """The restart policy is starting ``model`` again after a failure: ``reason`` is
    "crash", "exit", "health" or "start-failed"; ``attempt`` counts failures in a row."""

    model: str
    reason: str
    attempt: int


@dataclass(frozen=True)
class QueueWaited:
    """A request left the router's queue (granted, loading, failed or given up) after
    waiting ``seconds`` in it."""

    model: str
    seconds: float


@dataclass(frozen=True)
class TimelineChanged:
    """A model state change was added to the timeline's history, or a late reason updated
    one (same ``seq``): ``change`` is the dict ``ops.timeline`` describes."""

    change: Any


class EventBus(Broadcaster[Any]):
    """publish() never blocks; each subscriber gets a bounded queue (default 25000 as upstream)."""

    def subscribe(self, maxsize: int = 25000) -> Subscription[Any]:
        return super().subscribe(maxsize)
