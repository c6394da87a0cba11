"""The operations routes (behaviour.md 3.2): running/unload, logs, events, activity, captures,
version, Prometheus, and the root redirect. ``register(table)`` is picked up by
``http.server.serve``; each route is one line there.

``/health``, ``/wol-health`` and ``GET /upstream`` are registered by http/ (inference.py and
upstream_path.py), so they are not repeated here.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

import llamaswap
from llamaswap.http.context import ClientGone, RequestContext
from llamaswap.http.upstream_path import find_model
from llamaswap.ops import gojson, hardware, memory_api, performance, prometheus, sse, ui
from llamaswap.ops.activity import QueryError, parse_query
from llamaswap.ops.restarts import restart_fields
from llamaswap.ops.sse import current_app

if TYPE_CHECKING:
    from llamaswap.http.routes import RouteTable

LOG_STREAM_BUFFER = 256  # chunks a slow log reader may fall behind before losing some
LOG_STREAM_HEADERS = [("Content-Type", "text/plain"), ("X-Content-Type-Options", "nosniff"),
                      ("X-Accel-Buffering", "no")]
INVALID_LOGGER = "invalid logger. Use 'proxy', 'upstream' or a model's ID"


def register(table: RouteTable) -> None:
    system_sampler()  # the first CPU reading is a baseline: take it when the server starts
    table.add("GET", "/", root_redirect, auth=False)
    table.add("GET", "/running", running)
    table.add("GET", "/unload", unload_all_text)
    table.add("POST", "/api/models/unload", unload_all_json)
    table.add("POST", "/api/models/unload/{model...}", unload_one)
    table.add("GET", "/api/version", version)
    table.add("GET", "/api/hardware", api_hardware)
    table.add("GET", "/logs", logs)
    table.add("GET", "/logs/stream", logs_stream)
    table.add("GET", "/logs/stream/{id...}", logs_stream)
    table.add("GET", "/api/events", sse.handle_events)
    table.add("GET", "/api/metrics", api_metrics)
    table.add("GET", "/api/metrics/activity", api_activity)
    table.add("GET", "/api/metrics/stats", api_activity_stats)
    table.add("GET", "/api/captures/{id}", api_capture)
    table.add("POST", "/api/inflight/{id}/cancel", api_cancel_inflight)
    table.add("GET", "/api/performance", api_performance, log=False)
    table.add("GET", "/api/memory", memory_api.api_memory)
    table.add("GET", "/metrics", metrics, log=False)
    from llamaswap.ops import profiles_api, timeline_api
    profiles_api.register(table)
    timeline_api.register(table)
    ui.register(table)


def _json_line(ctx: RequestContext, obj: Any) -> None:
    """Go's json.NewEncoder(w).Encode: compact JSON plus a newline."""
    ctx.send(200, gojson.dumps(obj) + "\n", "application/json")


def _ok_text(ctx: RequestContext) -> None:
    ctx.send(200, b"OK", "text/plain; charset=utf-8")


def root_redirect(ctx: RequestContext) -> None:
    ctx.redirect(302, "/ui")


# ---- models ----------------------------------------------------------------------------------

def running(ctx: RequestContext) -> None:
    app = ctx.app
    out = []
    memory = memory_api.running_memory(app)
    for mid in sorted(app.processes):
        p = app.processes[mid]
        state = getattr(p.state, "value", p.state)
        if state in ("stopped", "shutdown"):
            continue
        m = app.config.models.get(mid) or p.config
        record = {"model": mid, "state": state, "cmd": m.cmd, "proxy": m.proxy,
                  "ttl": m.ttl, "name": m.name, "description": m.description}
        record.update(restart_fields(p))
        if mid in memory:
            record["memory"] = memory[mid]  # bytes per managed device, as measured
        out.append(record)
    _json_line(ctx, {"running": out})


def unload_all_text(ctx: RequestContext) -> None:
    ctx.app.router.unload()
    _ok_text(ctx)


def unload_all_json(ctx: RequestContext) -> None:
    ctx.app.router.unload()
    _json_line(ctx, {"msg": "ok"})


def unload_one(ctx: RequestContext) -> None:
    app = ctx.app
    requested = ctx.params.get("model", "").lstrip("/")
    real = app.config.real_model_name(requested)
    if real is None:
        ctx.send_error(404, "model not found")
        return
    if real not in app.processes:
        ctx.send_error(404, "no local server found for requested model")
        return
    app.router.unload([real])
    _ok_text(ctx)


def version(ctx: RequestContext) -> None:
    _json_line(ctx, {"build_date": llamaswap.BUILD_DATE, "commit": llamaswap.COMMIT,
                     "version": llamaswap.__version__})


def api_hardware(ctx: RequestContext) -> None:
    """The host as detected at startup (ops/hardware.py); 503 when detection failed."""
    snapshot = hardware.start(llamaswap.__version__, ctx.app.loggers.log).result()
    if snapshot is None:
        ctx.send_error(503, hardware.UNAVAILABLE)
        return
    _json_line(ctx, snapshot)


# ---- logs ------------------------------------------------------------------------------------

def logs(ctx: RequestContext) -> None:
    if "text/html" in (ctx.headers.get("Accept") or ""):
        ctx.redirect(302, "/ui/")
        return
    ctx.send(200, ctx.app.loggers.mux.history(), "text/plain")


def find_log(app: Any, log_id: str) -> Any:
    """The monitor for a /logs/stream id: "" (everything stdout shows), proxy, upstream, or a
    model id or alias (ids may contain '/'); None when there is no such log."""
    loggers = app.loggers
    if log_id == "":
        return loggers.mux
    if log_id == "proxy":
        return loggers.proxy
    if log_id == "upstream":
        return loggers.upstream
    found = find_model(log_id, lambda n: app.config.real_model_name(n) is not None)
    if found is None:
        return None
    real = app.config.real_model_name(found[0])
    p = app.processes.get(real)
    return getattr(p, "log", None) if p is not None else None


def logs_stream(ctx: RequestContext) -> None:
    """History (unless ?no-history), then live output until the client leaves or the server
    closes. A reader that falls behind loses chunks and is told how many."""
    app = ctx.app
    log_id = ctx.params.get("id", "").lstrip("/")
    monitor = find_log(app, log_id)
    if monitor is None:
        ctx.send_error(400, INVALID_LOGGER)
        return
    skip_history = "no-history" in ctx.query
    history, sub = monitor.subscribe_with_history(LOG_STREAM_BUFFER)
    try:
        ctx.start(200, LOG_STREAM_HEADERS)
        if history and not skip_history:
            ctx.write(history)

        def render(data: bytes, dropped: int) -> bytes:
            if dropped:  # upstream's marker, before the next delivered chunk
                lost = sub.take_dropped_bytes()
                return f"\n\u2014 {lost} bytes dropped \u2014\n".encode() + data
            return data

        sse.pump(ctx, sub, render)
        ctx.finish()
    except ClientGone:
        pass
    finally:
        sub.close()


# ---- activity, captures, metrics --------------------------------------------------------------

def api_metrics(ctx: RequestContext) -> None:
    """The reference revision's route (differences.md point 12): the newest
    metricsMaxInMemory entries, oldest first, in its shape."""
    ctx.send(200, sse.metrics_json(ctx.app), "application/json")


def api_activity(ctx: RequestContext) -> None:
    """A page of the activity store, with upstream's filters, sort and 400 messages."""
    try:
        query = parse_query(ctx.query)
    except QueryError as e:
        ctx.send_error(400, str(e))
        return
    try:
        page = ctx.app.activity.page(query)
    except Exception as e:
        ctx.app.loggers.log.warn(f"activity store: {e}")
        ctx.send_error(500, "failed to get activity")
        return
    _json_line(ctx, page)


def api_activity_stats(ctx: RequestContext) -> None:
    try:
        stats = ctx.app.activity.stats((ctx.query_value("model") or "").strip())
    except Exception as e:
        ctx.app.loggers.log.warn(f"activity store: {e}")
        ctx.send_error(500, "failed to get activity stats")
        return
    _json_line(ctx, stats)


_GO_ATOI = re.compile(r"[+-]?[0-9]+")


def api_performance(ctx: RequestContext) -> None:
    monitor = getattr(ctx.app, "performance", None)
    if monitor is None:
        ctx.send_error(503, performance.NOT_AVAILABLE)
        return
    after = None
    raw = ctx.query_value("after", "")
    if raw:
        after = performance.parse_rfc3339(raw)
        if after is None:
            ctx.send_error(400, performance.BAD_AFTER)
            return
    ctx.send(200, performance.performance_json(monitor, after), "application/json")


def api_cancel_inflight(ctx: RequestContext) -> None:
    """End a request in flight at once: its client connection closes, its backend
    connection is cut, the router hears it gave up (ops/inflight.py)."""
    table = getattr(current_app(ctx), "inflight", None)
    if table is None or not table.cancel(ctx.params.get("id", "")):
        ctx.send_error(404, "inflight request not found")
        return
    _json_line(ctx, {"msg": "ok"})


def api_capture(ctx: RequestContext) -> None:
    raw = ctx.params.get("id", "")
    if not _GO_ATOI.fullmatch(raw):
        ctx.send_error(400, "invalid capture ID")
        return
    captures = getattr(ctx.app, "captures", None)
    text = captures.get_json(int(raw)) if captures is not None else None
    if text is None:
        ctx.send_error(404, "capture not found")
        return
    ctx.send(200, text, "application/json")


_system_lock = threading.Lock()
_system: prometheus.SystemSampler | None = None


def system_sampler() -> prometheus.SystemSampler:
    global _system
    with _system_lock:
        if _system is None:
            _system = prometheus.SystemSampler()
        return _system


def metrics(ctx: RequestContext) -> None:
    """Prometheus text. The system gauges follow ``performance.disabled`` (upstream's monitor);
    the request, model and process metrics are always there."""
    app = current_app(ctx)
    perf = getattr(app.config, "performance", None)
    system = None if perf is not None and perf.disabled else system_sampler()
    requests = prometheus.request_metrics(app.events)
    body = prometheus.render(app, requests, system,
                             build=(llamaswap.__version__, llamaswap.COMMIT, llamaswap.BUILD_DATE))
    ctx.send(200, body, prometheus.CONTENT_TYPE)
