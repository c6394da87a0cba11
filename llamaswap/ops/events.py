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
class QueueLengthChanged:
    length: int


class EventBus(Broadcaster[Any]):
    """publish() never blocks; each subscriber gets a bounded queue (default 25000 as upstream)."""

    def subscribe(self, maxsize: int = 25000) -> Subscription[Any]:
        return super().subscribe(maxsize)
