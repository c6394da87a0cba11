"""``GET /api/events``: the server-sent event stream the web UI lives on (behaviour.md 3.5.3).

Each frame is exactly ``event:message\\ndata:<envelope>\\n\\n`` where the envelope is
``{"type":"<t>","data":"<JSON text>"}``; the types are ``logData``, ``modelStatus``,
``metrics`` and ``inflight`` (the reference revision's) and ``activity`` (today's upstream:
``{"id":N}`` for each new activity row), ``timeline`` (ours: a model state change with its
reason, ops/timeline.py; the history is ``GET /api/timeline``) and ``profileChanged``
(``{"active": <name>|null}``, followed by a ``modelStatus``). ``inflight`` carries today's upstream's table
(``{"operation":"snapshot","requests":[...]}`` at connect and after lost messages, then
``upsert`` and ``remove``) with the reference revision's ``total`` in the same object. On
connect the client gets the proxy log history, the upstream log history, the model list, the
active profile, the whole activity ring and the in-flight table, in that order; then live
updates. Every client reads from its own bounded queue (1024 messages, as upstream):
a client that stops reading loses messages (with a warning in the proxy log), never slows a
backend, a request, or another client. Unlike upstream, a config reload keeps the stream open
and sends a fresh ``modelStatus``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from llamaswap.http.context import ClientGone
from llamaswap.ops import gojson
from llamaswap.ops.restarts import restart_fields
from llamaswap.ops.events import (ActivityRecorded, ConfigChanged, EventBus, InFlightChanged,
                                  LogData, ProcessStateChanged, ProfileChanged, TimelineChanged)

SEND_BUFFER = 1024
POLL = 0.25  # how often an idle stream checks for a departed client or a closing server
DROP_WARN_INTERVAL = 5.0

HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
           ("Connection", "keep-alive"), ("X-Content-Type-Options", "nosniff"),
           ("X-Accel-Buffering", "no")]

_wired: dict[tuple[int, int], bool] = {}
_wired_lock = threading.Lock()


def wire_log_events(loggers: Any, events: EventBus) -> None:
    """Publish every write to the proxy and upstream logs as a ``LogData`` event (once per
    pair of loggers and bus; both outlive config reloads)."""
    key = (id(loggers), id(events))
    with _wired_lock:
        if _wired.get(key):
            return
        _wired[key] = True
    loggers.proxy.add_listener(lambda data: events.publish(LogData("proxy", data)))
    loggers.upstream.add_listener(lambda data: events.publish(LogData("upstream", data)))


def frame(msg_type: str, data_json: str) -> bytes:
    envelope = gojson.dumps({"type": msg_type, "data": data_json})
    return f"event:message\ndata:{envelope}\n\n".encode("utf-8")


def log_frame(source: str, data: bytes) -> bytes:
    # a Go map marshals with sorted keys: data, then source
    return frame("logData", gojson.dumps({"data": data.decode("utf-8", "replace"),
                                          "source": source}))


def model_status(app: Any) -> list[dict]:
    """Every local model (sorted) with its state, then every peer model."""
    cfg = app.config
    processes = getattr(app, "processes", {}) or {}
    out = []
    for mid in sorted(cfg.models):
        m = cfg.models[mid]
        p = processes.get(mid)
        state = "stopped"
        if p is not None:
            st = p.state
            state = getattr(st, "value", st) or "stopped"
        rec = {"id": mid, "name": m.name, "description": m.description, "state": state,
               "unlisted": m.unlisted, "peerID": ""}
        if m.aliases:
            rec["aliases"] = list(m.aliases)
        rendered = m.capabilities.rendered()
        for key in ("capabilities", "context_length"):
            if key in rendered:
                rec[key] = rendered[key]
        if p is not None:
            rec.update(restart_fields(p))
        out.append(rec)
    for pid in sorted(cfg.peers):
        for model in dict.fromkeys(cfg.peers[pid].models):
            out.append({"id": f"{pid}/{model}", "name": "", "description": "", "state": "",
                        "unlisted": False, "peerID": pid})
    return out


def model_status_frame(app: Any) -> bytes:
    return frame("modelStatus", gojson.dumps(model_status(app)))


def inflight_frame(app: Any) -> bytes:
    """The whole in-flight table: today's upstream's snapshot, with the reference revision's
    total."""
    table = getattr(app, "inflight", None)
    snapshot = table.snapshot() if table is not None else {"operation": "snapshot", "total": 0}
    return frame("inflight", gojson.dumps(snapshot))


def metrics_json(app: Any) -> str:
    activity = getattr(app, "activity", None)
    return activity.dumps() if activity is not None else "[]"


def current_app(ctx: Any) -> Any:
    """The App serving right now (after a reload, the new one)."""
    holder = getattr(getattr(ctx.handler, "server", None), "app_holder", None)
    return getattr(holder, "app", None) or ctx.app


def server_closing(ctx: Any) -> bool:
    return bool(getattr(getattr(ctx.handler, "server", None), "closing", False))


def profile_frame(app: Any) -> bytes:
    profiles = getattr(app, "profiles", None)
    return frame("profileChanged", gojson.dumps({"active": (profiles.active if profiles else "") or None}))


def event_frame(app: Any, event: Any) -> bytes | None:
    if isinstance(event, (ProcessStateChanged, ConfigChanged)):
        return model_status_frame(app)
    if isinstance(event, LogData):
        return log_frame(event.source, event.data)
    if isinstance(event, ActivityRecorded):
        # the reference revision's message (the whole entry), then today's upstream's (the
        # id; its UI pages /api/metrics/activity)
        return frame("metrics", "[" + event.entry.dumps() + "]") + \
            frame("activity", '{"id":%d}' % event.entry.id)
    if isinstance(event, TimelineChanged):
        return frame("timeline", gojson.dumps(event.change))
    if isinstance(event, ProfileChanged):
        return profile_frame(app) + model_status_frame(app)
    if isinstance(event, InFlightChanged):
        # one message for both readers: today's upstream reads the operation, the
        # reference revision's UI the total
        update = dict(event.update) if event.update else {}
        update["total"] = event.total
        return frame("inflight", gojson.dumps(update))
    return None  # ModelPreloaded and the rest are not forwarded, as upstream


def pump(ctx: Any, sub: Any, render: Any) -> None:
    """Write ``render(item, dropped)`` for each item of the subscription until it closes, the
    client leaves or the server shuts down. ``dropped`` counts the items this reader lost
    since the previous one because it fell behind."""
    while True:
        try:
            item = sub.get(POLL)
        except EOFError:
            return
        if item is None:
            if ctx.client_gone() or server_closing(ctx):
                return
            continue
        data = render(item, sub.take_dropped())
        if data:
            ctx.write(data)


def handle_events(ctx: Any) -> None:
    app = ctx.app
    events: EventBus = app.events
    loggers = app.loggers
    wire_log_events(loggers, events)
    sub = events.subscribe(SEND_BUFFER)
    try:
        ctx.start(200, HEADERS)
        ctx.write(log_frame("proxy", loggers.proxy.history())
                  + log_frame("upstream", loggers.upstream.history())
                  + model_status_frame(app)
                  + profile_frame(app)
                  + frame("metrics", metrics_json(app))
                  + inflight_frame(app))
        last_warn = [0.0]

        def render(event: Any, dropped: int) -> bytes | None:
            app_now = current_app(ctx)
            data = event_frame(app_now, event)
            if dropped:
                if time.monotonic() - last_warn[0] > DROP_WARN_INTERVAL:
                    last_warn[0] = time.monotonic()
                    loggers.log.warn(f"handleAPIEvents sendBuffer full, dropped {dropped} "
                                     "message(s) for a slow client")
                # lost table updates: the whole table again, as upstream after an overflow
                data = (data or b"") + inflight_frame(app_now)
            return data

        pump(ctx, sub, render)
        ctx.finish()
    except ClientGone:
        pass
    finally:
        sub.close()
