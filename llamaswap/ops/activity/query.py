"""What ``GET /api/metrics/activity`` and ``GET /api/metrics/stats`` ask of the activity store:
the query (parsed from the URL with upstream's defaults, limits and exact 400 messages) and
the speed histograms of the stats answer. Pure functions: no store, no HTTP.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from llamaswap.ops.performance import parse_rfc3339

DEFAULT_LIMIT = 25
MAX_LIMIT = 999

# API sort key -> column of the activity table (the whitelist keeps user input out of SQL)
SORT_COLUMNS: Mapping[str, str] = {
    "id": "id", "time": "ts_created", "model": "model_id", "req_path": "req_path",
    "resp_status_code": "resp_status_code", "resp_content_type": "resp_content_type",
    "cached": "cache_tokens", "prompt": "input_tokens", "generated": "output_tokens",
    "drafted": "draft_tokens", "prompt_speed": "prompt_per_second",
    "gen_speed": "tokens_per_second", "duration": "duration_ms", "key": "key_name",
}

_GO_ATOI = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = (1 << 63) - 1


class QueryError(ValueError):
    """A bad query parameter; ``str()`` is upstream's 400 message."""


@dataclass(frozen=True)
class ActivityQuery:
    """Which rows, in which order, which page. Zero bounds are unbounded; times are unix
    seconds (rows match on whole seconds, as upstream stores them)."""

    models: tuple[str, ...] = ()
    start: int | None = None
    end: int | None = None
    min_id: int = 0
    max_id: int = 0
    limit: int = DEFAULT_LIMIT
    page: int = 1
    sort: str = "id"
    order: str = "desc"
    keys: tuple[str, ...] = ()  # API key names (ours: ``key``, repeatable, like ``model``)

    @property
    def offset(self) -> int:
        return min((self.page - 1) * self.limit, _INT64_MAX)


def _atoi(raw: str) -> int | None:
    """Go's strconv.Atoi: optional sign, digits only, 64-bit."""
    if not _GO_ATOI.fullmatch(raw):
        return None
    value = int(raw)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def parse_query(query: Mapping[str, Sequence[str]]) -> ActivityQuery:
    """``ctx.query`` (name -> values) to an ActivityQuery; raises QueryError, checking the
    parameters in upstream's order."""
    def first(name: str) -> str:
        values = query.get(name)
        return values[0].strip() if values else ""

    models = tuple(m.strip() for m in query.get("model", ()) if m.strip())
    keys = tuple(k.strip() for k in query.get("key", ()) if k.strip())
    start = _time(first("start"), "start")
    end = _time(first("end"), "end")
    if start is not None and end is not None and start > end:
        raise QueryError("start must be before end")
    min_id = _id(first("min_id"), "min_id")
    max_id = _id(first("max_id"), "max_id")
    if min_id and max_id and min_id > max_id:
        raise QueryError("min_id must be <= max_id")
    limit = DEFAULT_LIMIT
    raw = first("limit")
    if raw:
        value = _atoi(raw)
        if value is None:
            raise QueryError("invalid limit")
        if not 0 < value <= MAX_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_LIMIT}")
        limit = value
    page = 1
    raw = first("page")
    if raw:
        value = _atoi(raw)
        if value is None or value < 1:
            raise QueryError("page must be >= 1")
        page = value
    sort = first("sort") or "id"
    if sort not in SORT_COLUMNS:
        raise QueryError("invalid sort column")
    order = first("order").lower() or "desc"
    if order not in ("asc", "desc"):
        raise QueryError("order must be asc or desc")
    return ActivityQuery(models, start, end, min_id, max_id, limit, page, sort, order, keys)


def _time(raw: str, name: str) -> int | None:
    if not raw:
        return None
    parsed = parse_rfc3339(raw)
    if parsed is None:
        raise QueryError(f"invalid '{name}' timestamp, use RFC3339 format")
    return math.floor(parsed.timestamp())  # Go's Time.Unix(): whole seconds, rounded down


def _id(raw: str, name: str) -> int:
    if not raw:
        return 0
    value = _atoi(raw)
    if value is None or value < 1:
        raise QueryError(f"{name} must be >= 1")
    return value


def total_pages(total: int, limit: int) -> int:
    return 0 if total == 0 or limit <= 0 else -(-total // limit)


# ---- stats ----------------------------------------------------------------------------------

MIN_BINS, MAX_BINS = 5, 20


def histogram(values: Sequence[float]) -> dict | None:
    """Upstream's HistogramData: Sturges' rule clamped to 5-20 bins (one bin of size 0 when
    every value is equal), percentiles by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    lo, hi = ordered[0], ordered[-1]
    p50, p95, p99 = (_percentile(ordered, p) for p in (50, 95, 99))
    if lo == hi:
        bins, size = [len(ordered)], 0.0
    else:
        count = min(MAX_BINS, max(MIN_BINS, math.ceil(math.log2(len(ordered))) + 1))
        size = (hi - lo) / count
        bins = [0] * count
        for v in ordered:
            bins[min(math.floor((v - lo) / size), count - 1)] += 1
    return {"bins": bins, "min": float(lo), "max": float(hi), "binSize": float(size),
            "p50": p50, "p95": p95, "p99": p99}


def _percentile(ordered: Sequence[float], p: float) -> float:
    if len(ordered) == 1:
        return float(ordered[0])
    rank = p / 100 * (len(ordered) - 1)
    lower, upper = math.floor(rank), math.ceil(rank)
    return float(ordered[lower] + (rank - lower) * (ordered[upper] - ordered[lower]))
