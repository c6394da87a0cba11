"""``GET /api/timeline``: the model state changes and the requests of a time window, for the
UI's timeline (ops/timeline.py holds the history).

``start`` and ``end`` are RFC 3339 times (default: the last hour, up to now). The answer:
``{"now", "start", "end", "models", "changes", "initial", "history_since", "requests":
{"fields", "rows"}, "truncated"}`` where ``models`` are the local model ids, ``initial`` each
model's state at ``start``, ``history_since`` how far back the state history reaches, and
``requests`` the activity store's rows of the window (oldest first; the newest
``MAX_REQUESTS`` when there are more, with ``truncated`` true).

``GET /api/activity/speed``: the Activity page's tokens-per-second chart, computed by the
store (``SqliteStore.speed``) so a filtered or long range charts every matching row, not the
newest ones a page of rows could carry. ``model`` and ``key`` (repeatable), ``start`` and
``end`` as ``/api/metrics/activity`` takes them (with its 400 messages; ``end`` defaults to
now, ``start`` to the oldest matching row), ``buckets`` (1-1000, default 60).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from llamaswap.ops.activity.query import ActivityQuery, QueryError, parse_query
from llamaswap.ops.performance import parse_rfc3339
from llamaswap.ops.timeline import MAX_REQUESTS, REQUEST_FIELDS, request_rows, timeline_for

if TYPE_CHECKING:
    from llamaswap.http.context import RequestContext
    from llamaswap.http.routes import RouteTable

DEFAULT_WINDOW = 3600.0
DEFAULT_BUCKETS, MAX_BUCKETS = 60, 1000


def register(table: RouteTable) -> None:
    table.add("GET", "/api/timeline", api_timeline)
    table.add("GET", "/api/activity/speed", api_activity_speed)


def _time(ctx: RequestContext, name: str) -> float | None | str:
    raw = (ctx.query_value(name) or "").strip()
    if not raw:
        return None
    parsed = parse_rfc3339(raw)
    if parsed is None:
        return f"invalid '{name}' timestamp, use RFC3339 format"
    return parsed.timestamp()


def api_timeline(ctx: RequestContext) -> None:
    app = ctx.app
    now = time.time()
    start, end = _time(ctx, "start"), _time(ctx, "end")
    for bad in (start, end):
        if isinstance(bad, str):
            ctx.send_error(400, bad)
            return
    end = now if end is None else end
    start = end - DEFAULT_WINDOW if start is None else start
    if start > end:
        ctx.send_error(400, "start must be before end")
        return
    body = timeline_for(app.events).changes(start, end)
    # the store matches whole seconds; a request is drawn from when it began, so rows that
    # ended a little after `end` are not wanted, and ones that began before `start` are
    query = ActivityQuery(start=int(start), end=int(end) + 1, limit=MAX_REQUESTS + 1,
                          sort="id", order="desc")
    try:
        entries, _total = app.activity.store.page(query)
    except Exception as e:
        app.loggers.log.warn(f"activity store: {e}")
        ctx.send_error(500, "failed to get activity")
        return
    truncated = len(entries) > MAX_REQUESTS
    rows = request_rows(list(reversed(entries[:MAX_REQUESTS])))
    ctx.send_json(200, {"now": round(now, 3), "start": round(start, 3), "end": round(end, 3),
                     "models": sorted(app.config.models), **body,
                     "requests": {"fields": list(REQUEST_FIELDS), "rows": rows},
                     "truncated": truncated})


def api_activity_speed(ctx: RequestContext) -> None:
    try:
        query = parse_query(ctx.query)
    except QueryError as e:
        ctx.send_error(400, str(e))
        return
    raw = (ctx.query_value("buckets") or "").strip()
    buckets = DEFAULT_BUCKETS
    if raw:
        buckets = int(raw) if raw.isdigit() else 0
        if not 1 <= buckets <= MAX_BUCKETS:
            ctx.send_error(400, f"buckets must be between 1 and {MAX_BUCKETS}")
            return
    if query.end is None:
        query = replace(query, end=int(time.time()))
        if query.start is not None and query.start > query.end:
            ctx.send_error(400, "start must be before end")
            return
    try:
        body = ctx.app.activity.store.speed(query, buckets)
    except Exception as e:
        ctx.app.loggers.log.warn(f"activity store: {e}")
        ctx.send_error(500, "failed to get activity")
        return
    ctx.send_json(200, body)
