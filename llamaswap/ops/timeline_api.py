"""``GET /api/timeline``: the model state changes and the requests of a time window, for the
UI's timeline (ops/timeline.py holds the history).

``start`` and ``end`` are RFC 3339 times (default: the last hour, up to now). The answer:
``{"now", "start", "end", "models", "changes", "initial", "history_since", "requests":
{"fields", "rows"}, "truncated"}`` where ``models`` are the local model ids, ``initial`` each
model's state at ``start``, ``history_since`` how far back the state history reaches, and
``requests`` the activity store's rows of the window (oldest first; the newest
``MAX_REQUESTS`` when there are more, with ``truncated`` true).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llamaswap.ops.activity.query import ActivityQuery
from llamaswap.ops.performance import parse_rfc3339
from llamaswap.ops.timeline import MAX_REQUESTS, REQUEST_FIELDS, request_rows, timeline_for

if TYPE_CHECKING:
    from llamaswap.http.context import RequestContext
    from llamaswap.http.routes import RouteTable

DEFAULT_WINDOW = 3600.0


def register(table: RouteTable) -> None:
    table.add("GET", "/api/timeline", api_timeline)


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
