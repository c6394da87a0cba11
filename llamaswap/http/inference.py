"""The model-dispatched routes (behaviour.md 3.2, 4.1) and the listing/health routes.

Adding an inference path is one line in the tables below. Each request goes through, in
upstream's order: auth (dispatcher), model extraction, concurrency limit (429 before any
byte), body filters, in-flight counter, activity observer, then the router (local model) or
the peer. Admission is always decided before the loading stream starts.
"""

from __future__ import annotations

import itertools
import threading
from urllib.parse import parse_qsl, urlencode
import weakref
from typing import TYPE_CHECKING, Any

from llamaswap.http import auth, errors, extract, filters, listing, virtual
from llamaswap.http.forward import (append_error, body_bytes, body_stream, forward,
                                    request_headers)
from llamaswap.http.loading import LoadingStream, is_loading_path
from llamaswap.http.pool import pool_for_peer, pool_for_process, watch_disconnect
from llamaswap.http.context import BadRequestBody, ClientGone, RequestContext
from llamaswap.http.slots import Slots
from llamaswap.ops.activity import filter_accept_encoding

if TYPE_CHECKING:
    from llamaswap.http.routes import RouteTable

# POST, model from the JSON body (or an urlencoded form)
JSON_PATHS = (
    "/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/messages",
    "/v1/messages/count_tokens", "/v1/embeddings", "/reranking", "/rerank", "/v1/rerank",
    "/v1/reranking", "/infill", "/completion", "/v1/audio/speech", "/v1/audio/voices",
    "/v1/images/generations", "/sdapi/v1/txt2img", "/sdapi/v1/img2img",
    "/audioapi/v1/tasks/run",
)
# POST, versionless: the leading /v is stripped before forwarding
VERSIONLESS_PATHS = (
    "/v/chat/completions", "/v/responses", "/v/completions", "/v/messages",
    "/v/messages/count_tokens", "/v/embeddings", "/v/rerank", "/v/reranking",
)
# POST, model from the multipart field
MULTIPART_PATHS = ("/v1/audio/transcriptions", "/v1/images/edits")
# GET, model from ?model=
QUERY_PATHS = ("/v1/audio/voices", "/sdapi/v1/loras", "/props")

NO_MODEL = "no model id could be identified"
NOT_READY = "llama-swap-error: [{}] process is not ready"
FAST_GRANT = 0.005  # a grant quicker than this is not worth watching the client for
# A request that finds its backend gone (the connection refused, or dropped before a whole
# answer, nothing sent to the client yet) while the process is exiting raced the crash, as
# does one granted a backend that stopped being ready: it waits for the exit to be seen, then
# starts the model again. A refused request never reached the backend, so it is always
# safe to send again (CRASH_ATTEMPTS in all bounds a backend that keeps dying); a dropped
# one may have caused the crash, so it is sent again at most DROPPED_RETRIES times. A
# backend that refuses connections but does not exit within CRASH_CONFIRM_WAIT seconds, or
# a request past those bounds, gets the 502.
CRASH_ATTEMPTS = 8
DROPPED_RETRIES = 2
CRASH_CONFIRM_WAIT = 3.0


# ---- concurrency limit (per App, so a reload resets it as upstream) -------------------------

_limits_by_app: "weakref.WeakKeyDictionary[Any, Slots]" = weakref.WeakKeyDictionary()
_limits_lock = threading.Lock()


def limits_for(app: Any) -> Slots:
    lim = _limits_by_app.get(app)  # created once per App: the lock is for that moment only
    if lim is not None:
        return lim
    with _limits_lock:
        lim = _limits_by_app.get(app)
        if lim is None:
            lim = _limits_by_app[app] = Slots()
        return lim


# ---- handlers -------------------------------------------------------------------------------

def _model_handler(source: str, strip: str = ""):
    """``strip``: a prefix removed before forwarding (``/v`` of the versionless paths,
    ``/audioapi`` as upstream)."""
    def handle(ctx: RequestContext) -> None:
        try:
            if source == "query":
                ex = extract.from_query(ctx)
            else:
                ex = extract.from_body(ctx)
        except extract.MultipartError as e:
            ctx.send_error(400, f"error parsing multipart form: {e}")
            return
        except ValueError as e:
            if isinstance(e, BadRequestBody):  # what follows on the connection is unframed
                ctx.close_connection = True
            ctx.send_error(400, f"could not read request body: {e}")
            return
        done = None
        try:
            sent = ex.model  # before a profile pin or a selector rewrites it: the key's scope
            go_on, done = virtual.rewrite(ctx, ex)
            if go_on:
                path = ctx.raw_path[len(strip):]
                dispatch(ctx, ex, path, sent=sent if sent != ex.model else None)
        finally:
            ex.close()
            if done is not None:
                done()
    return handle


def dispatch(ctx: RequestContext, ex: extract.Extracted, path: str,
             pinned: str | None = None, sent: str | None = None) -> None:
    """Route one extracted request to its local model or peer (behaviour.md 4.1).
    ``pinned`` is a real local model id chosen by the caller (/upstream): no body inspection.
    ``sent`` is the name the client sent when the caller resolved or rewrote it (the
    /upstream path's alias, a profile pin, a selector): the API key's scope accepts it too."""
    app = ctx.app
    cfg = app.config
    requested = pinned or ex.model
    if not requested:
        # upstream's text first (clients match on it), then what exactly was wrong
        ctx.send_error(ex.status, f"{NO_MODEL}: {ex.why}" if ex.why else NO_MODEL)
        return
    real = pinned or cfg.real_model_name(requested)
    resolved = (real,) if real is not None else auth.resolved_names(cfg, requested)
    if not auth.may_use(ctx, sent, requested, *resolved):
        return  # 403 before anything starts
    target = path + ("?" + ctx.query_string if ctx.query_string else "")
    if real is None or real not in app.processes:
        peer = None
        peers = getattr(app, "peers", None)
        if real is None and peers is not None:
            peer = peers.route_for(requested)
        if peer is None:
            if real is not None:
                ctx.send_error(404, f"no local server found for requested model: {requested}")
            else:
                ctx.send_error(404, f"no router for requested model: {requested} "
                                    "(not a configured model, alias or peer model)")
            return
        with_key_slot(ctx, _serve_peer, ctx, ex, requested, peer, target, True)
        return
    with_key_slot(ctx, _serve_local, ctx, ex, requested, real, target, pinned is not None)


def with_key_slot(ctx: RequestContext, serve: Any, *args: Any) -> None:
    """Run ``serve(*args, key_done)`` within the request's key's ``maxInFlight`` (429 before
    any byte when the key is at its limit). ``key_done`` (None without a limit) gives the
    slot back; ``serve`` calls it once the backend's answer is read, before the client's
    last byte, so a client's next request finds it free. It is given back however the
    request ends: finished, client gone, backend failed, cancelled."""
    key = ctx.state.get("key")
    if key is None or not key.max_in_flight:
        serve(*args, None)
        return
    slots = ctx.app.key_slots
    if not slots.try_acquire(key.key, key.max_in_flight):
        ctx.send_error(429, f"Too many requests: API key {key.name} is at its maxInFlight limit "
                            f"of {key.max_in_flight}", headers=[("Retry-After", "1")])
        return
    key_done = _Once(lambda: slots.release(key.key))
    try:
        serve(*args, key_done)
    finally:
        key_done()


def _forward_body(ctx: RequestContext, ex: extract.Extracted, requested: str,
                  rewrite: bool) -> Any:
    """The body to send upstream, with the filters applied (JSON bodies; multipart gets only
    useModelName)."""
    flt, use_name = filters.find_filters(ctx.app, requested) if rewrite else (None, "")
    if ex.kind == "json" and ex.obj is not None and filters.needs_rewrite(flt, use_name, requested):
        if use_name and ex.data and ex.model and not filters.needs_rewrite(flt, "", requested):
            spliced = filters.with_model(ex.data, ex.model, use_name)  # only the name changes
            if spliced is not None:
                ex.obj["model"] = use_name
                return body_bytes(spliced)
        return body_bytes(filters.encode(filters.apply(ex.obj, flt, use_name, requested)))
    if ex.kind in ("json", "form"):
        return body_bytes(ex.data or b"")
    length = _content_length(ctx)
    if ex.kind == "multipart":
        value = use_name or ex.model_value
        replace = value.encode() if value is not None and ex.value_span is not None else None
        if replace is not None and length is not None:
            start, end = ex.value_span
            length += len(replace) - (end - start)
        return body_stream(ctx.body, prefix=ex.prefix_chunks(replace), length=length)
    if ctx.body.done:
        return body_bytes(b"")
    return body_stream(ctx.body, length=length)


def _content_length(ctx: RequestContext) -> int | None:
    if "chunked" in (ctx.headers.get("Transfer-Encoding") or "").lower():
        return None
    try:
        return int(ctx.headers.get("Content-Length") or 0)
    except ValueError:
        return None


def _observer(ctx: RequestContext, model_id: str, path: str | None = None) -> Any:
    """The activity meter; ``path``: the path recorded when it is not the request's own
    (the inner path of /upstream/<model>/<path>)."""
    if ctx.method != "POST":
        return None  # upstream meters POST requests only
    activity = getattr(ctx.app, "activity", None)
    if activity is None:
        return None
    try:
        meter = activity.observe(ctx, model_id)
        if meter is not None and path is not None:
            meter.set_path(path)
        return meter
    except Exception:
        return None


def _metered_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Only gzip/deflate may be offered on a metered request, so its body stays readable for
    the activity parser (behaviour.md 5.8)."""
    out = []
    for k, v in headers:
        if k.lower() == "accept-encoding":
            v = filter_accept_encoding(v)
            if not v:
                continue
        out.append((k, v))
    return out


def is_model_path(method: str, path: str) -> bool:
    """A model-dispatched inference path (for /upstream/<model>/<path>: in-flight table and
    activity, as upstream)."""
    if method == "POST":
        return path in _POST_PATHS
    return method == "GET" and path in QUERY_PATHS


_POST_PATHS = frozenset(JSON_PATHS + VERSIONLESS_PATHS + MULTIPART_PATHS)


class _InFlight:
    """The request in the in-flight table (``listed``: in the table, not only the count)."""

    def __init__(self, app: Any, model: str, ctx: RequestContext, req_path: str,
                 listed: bool = True):
        self.table = getattr(app, "inflight", None)
        self.model = model
        self.ctx = ctx if listed else None
        self.req_path = req_path
        self.entry = None

    def __enter__(self):
        if self.table is not None:
            self.entry = self.table.enter(self.model, self.ctx, self.req_path)
        return self

    def __exit__(self, *exc):
        if self.table is not None:
            self.table.leave(self.model, self.entry)


def _serve_local(ctx: RequestContext, ex: extract.Extracted, requested: str, real: str,
                 target: str, pinned: bool, key_done: Any = None) -> None:
    app = ctx.app
    mcfg = app.config.models[real]
    if mcfg.ignore_websockets and is_websocket_upgrade(ctx):
        _serve_ignored_websocket(ctx, real, target)
        return
    limits = limits_for(app)
    limit = mcfg.effective_concurrency_limit
    if not pinned and not limits.try_acquire(real, limit):
        errors.send_concurrency_limit(
            ctx, f"{errors.TOO_MANY_REQUESTS}: model {requested} is at its concurrency limit "
                 f"of {limit}")
        return
    release_slot = _Once(lambda: None if pinned else limits.release(real))
    try:
        body = _forward_body(ctx, ex, requested, rewrite=not pinned)
        headers = request_headers(ctx, strip_auth=bool(app.config.api_keys), host=None)
        req_path = target.partition("?")[0]
        # /upstream/<model>/<path> counts as a model request when <path> is one (upstream)
        model_path = not pinned or is_model_path(ctx.method, req_path)
        with _InFlight(app, real, ctx, req_path, listed=model_path):
            observer = _observer(ctx, real, req_path) if model_path else None
            if observer is not None:
                headers = _metered_headers(headers)
            dropped = 0
            for attempt in range(1, CRASH_ATTEMPTS + 1):
                grant = ticket = _claim(app.router, real)
                if grant is None:
                    ticket = app.router.request(real)
                    process = app.processes[real]
                    loading = (not pinned and ex.stream and mcfg.send_loading_state
                               and is_loading_path(target) and _state(process) != "ready")
                    grant = _await_grant(ctx, ticket, real, loading)
                    if grant is None:
                        if observer is not None and hasattr(observer, "on_end"):
                            observer.on_end("client disconnected before the model was ready")
                        return
                grant_done = _Once(ticket.done)
                # request metadata (activity row, in-flight entry): the scheduler's priority
                ctx.state.setdefault("metadata", {})["fifo_priority"] = str(
                    app.config.routing.scheduler.fifo.priority_of(real))
                try:
                    proc = grant.process
                    if _state(proc) != "ready":
                        # it crashed (or began stopping) since the grant: nothing was sent,
                        # so ask again; the router notices and starts it
                        if attempt < CRASH_ATTEMPTS:
                            continue
                        _reply_error(ctx, 503, NOT_READY.format(real), observer)
                        return
                    pid = proc.pid
                    out = forward(ctx, pool_for_process(proc), target, headers, body,
                                  observer=observer, label=_BackendLabel(real, proc),
                                  on_backend_done=_Once(grant_done, release_slot,
                                                        key_done or _nothing),
                                  retry_unreachable=True)
                finally:
                    grant_done()
                if not out.unreachable:
                    return
                dropped += out.unreachable == "dropped"
                if (dropped > DROPPED_RETRIES or attempt == CRASH_ATTEMPTS
                        or not proc.wait_exit(pid, CRASH_CONFIRM_WAIT)  # or alive, yet refusing
                        or _stopped_unhealthy(proc)):
                    _reply_error(ctx, 502, _cut_error(out.error or "", real, proc), observer)
                    return
                app.loggers.log.warn(f"<{real}> the backend exited as a request reached it "
                                     f"({out.error}): starting it again for that request")
    finally:
        release_slot()


def is_websocket_upgrade(ctx: RequestContext) -> bool:
    """``Connection: upgrade`` and ``Upgrade: websocket`` (tokens, any case, any list)."""
    def has(name: str, token: str) -> bool:
        return any(part.strip().lower() == token
                   for value in ctx.headers.get_all(name) or () for part in value.split(","))
    return has("Connection", "upgrade") and has("Upgrade", "websocket")


def _serve_ignored_websocket(ctx: RequestContext, real: str, target: str) -> None:
    """compat.ignoreWebsockets: the upgrade goes straight to a ready backend, outside the
    router (it never starts, queues, counts toward the concurrency limit or the TTL, nor
    keeps the model from being swapped out), as upstream."""
    process = ctx.app.processes.get(real)
    if process is None or _state(process) != "ready":
        ctx.send_error(409, f"model {real} is not loaded; ignored websocket requests cannot "
                            "start it")
        return
    headers = request_headers(ctx, strip_auth=bool(ctx.app.config.api_keys), host=None)
    forward(ctx, pool_for_process(process), target, headers, body_bytes(b""), label=real)


def _claim(router: Any, model_id: str) -> Any:
    """The router's standing grant for a ready model, or None. A claim on a backend that
    has just died is handed back: the slow path lets the router notice the crash and
    restart the model instead of answering 503."""
    claim = router.claim(model_id)
    if claim is not None and _state(claim.process) != "ready":
        claim.done()
        return None
    return claim


def _nothing() -> None:
    pass


def _stopped_unhealthy(process: Any) -> bool:
    """The backend was stopped because its health watch failed: the requests it held end
    with that error and are not sent again (one of them may be what wedged it)."""
    failure = process.run_failure()
    return failure is not None and failure.reason == "health"


def _cut_error(error: str, model_id: str, process: Any) -> str:
    """The 502 of a request its backend dropped or refused. Cut by a failed health watch, it
    says so instead of the connection error, which tells nothing there (a broken kept-alive
    connection is tried once more on a new one, which finds the port already closed)."""
    if not _stopped_unhealthy(process):
        return error
    return (f"{_BackendLabel(model_id, process)}; this request was in flight on it and is not "
            f"sent again (it may be what wedged the backend)")


class _BackendLabel:
    """The model id in forwarding errors. When the backend went down while the request was
    in flight (its health watch failed and llama-swap stopped it, or it crashed), the error
    says why: it is formatted only when an error is written."""

    __slots__ = ("model_id", "process")

    def __init__(self, model_id: str, process: Any):
        self.model_id = model_id
        self.process = process

    def __str__(self) -> str:
        failure = self.process.run_failure()
        return f"{self.model_id} went down: {failure.detail}" if failure else self.model_id

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class _Once:
    """Run the given functions the first time it is called, never again."""

    __slots__ = ("_fns", "_calls")

    def __init__(self, *fns):
        self._fns = fns
        self._calls = itertools.count()  # next() on it is atomic: only the first call gets 0

    def __call__(self) -> None:
        if next(self._calls):
            return
        fns, self._fns = self._fns, ()
        for fn in fns:
            fn()


def _state(process: Any) -> str:
    st = getattr(process, "state", None)
    return getattr(st, "value", st) or ""


def _reply_error(ctx: RequestContext, status: int, message: str, observer: Any = None) -> None:
    if ctx.started:
        append_error(ctx, status, message)
    else:
        ctx.send_error(status, message)
    if observer is not None and hasattr(observer, "on_end"):
        observer.on_end(message)


def _await_grant(ctx: RequestContext, ticket: Any, model_id: str, loading: bool) -> Any:
    """The Grant, or None when the client left (the ticket is given up) or the router said
    no (the error has been answered)."""
    if not loading and ticket.wait(FAST_GRANT):
        return _outcome(ctx, ticket)  # a ready model: no need to watch the client
    gone = threading.Event()

    def on_gone() -> None:
        gone.set()
        ticket.give_up()

    watch = watch_disconnect(ctx.handler.connection, on_gone)
    try:
        if loading and not ticket.wait(0):
            ctx.state["loading"] = True
            stream = LoadingStream(ctx, ticket, model_id)
            stream.start()
            stream.run()
        else:
            while not ticket.wait(0.5):
                if gone.is_set():
                    break
    except ClientGone:
        gone.set()
        ticket.give_up()
    finally:
        fired = watch.cancel() if watch is not None else False
    if gone.is_set() or fired:
        ctx.mark_gone()
        _release_late_grant(ticket)
        return None
    return _outcome(ctx, ticket)


def _outcome(ctx: RequestContext, ticket: Any) -> Any:
    try:
        return ticket.result()
    except Exception as e:  # RouterError: status + message naming the model
        status = getattr(e, "status", 500)
        message = getattr(e, "message", None) or str(e)
        try:
            if ctx.started:
                append_error(ctx, status, message)
            else:
                ctx.send_error(status, message)
        except ClientGone:
            pass
        return None


def _release_late_grant(ticket: Any) -> None:
    """A grant that raced the client's departure is finished at once."""
    try:
        if ticket.wait(0):
            ticket.result()
            ticket.done()
    except Exception:
        pass


def serve_peer_path(ctx: RequestContext, requested: str, route: Any, remainder: str) -> None:
    """/upstream/<peer model>/<path>: the body passes untouched."""
    target = remainder + ("?" + ctx.query_string if ctx.query_string else "")
    with_key_slot(ctx, _serve_peer, ctx, extract.Extracted(kind="none"), requested, route, target,
                  False)


def _serve_peer(ctx: RequestContext, ex: extract.Extracted, requested: str, route: Any,
                target: str, rewrite: bool = True, key_done: Any = None) -> None:
    """Forward to a peer (``route``: a PeerModel). A qualified name (``peer/model``) reaches
    the peer as the model id it knows, in the JSON body, the form or the query."""
    app = ctx.app
    peer = route.peer
    if rewrite and ex.kind in ("query", "form") and route.model_id != requested:
        if ex.kind == "query":
            target = target.partition("?")[0] + "?" + _with_model(ctx.query_string, route.model_id)
        else:
            ex.data = _with_model(ex.data.decode("latin-1"), route.model_id).encode("latin-1")
    body = _forward_body(ctx, ex, requested, rewrite=rewrite)
    pool = pool_for_peer(peer)
    extra: list[tuple[str, str]] = []
    drop: list[str] = []
    if peer.api_key:
        drop = ["authorization", "x-api-key"]
        extra = [("Authorization", f"Bearer {peer.api_key}"), ("x-api-key", peer.api_key)]
    headers = request_headers(ctx, strip_auth=bool(app.config.api_keys), host=pool.host_header,
                              extra=extra, drop=drop)
    req_path = target.partition("?")[0]
    model_path = rewrite or is_model_path(ctx.method, req_path)
    with _InFlight(app, requested, ctx, req_path, listed=model_path):
        observer = _observer(ctx, requested, None if rewrite else req_path) \
            if model_path else None
        if observer is not None:
            headers = _metered_headers(headers)
        out = forward(ctx, pool, pool.base_path + target, headers, body, observer=observer,
                      label=f"peer {peer.id}", error_prefix="peer proxy error: ",
                      on_backend_done=key_done)
    if out.error and not out.client_gone:
        app.loggers.log.warn(f"peer proxy error: {out.error}")


def _with_model(query: str, model: str) -> str:
    """A query string or urlencoded form with ``model`` replaced (keys sorted, as Go's
    url.Values.Encode writes them)."""
    pairs = [(k, model if k == "model" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return urlencode(sorted(pairs, key=lambda kv: kv[0]))


# ---- listing and health ---------------------------------------------------------------------

def handle_health(ctx: RequestContext) -> None:
    ctx.send(200, b"OK", "text/plain; charset=utf-8")


def register(table: RouteTable) -> None:
    for p in JSON_PATHS:
        table.add("POST", p, _model_handler("json", "/audioapi" if p.startswith("/audioapi/")
                                            else ""))
    for p in VERSIONLESS_PATHS:
        table.add("POST", p, _model_handler("json", "/v"))
    for p in MULTIPART_PATHS:
        table.add("POST", p, _model_handler("multipart"))
    for p in QUERY_PATHS:
        table.add("GET", p, _model_handler("query"))
    table.add("GET", "/v1/models", listing.handle_models)
    table.add("GET", "/models", listing.handle_models)
    table.add("GET", "/health", handle_health, auth=False)
    table.add("GET", "/wol-health", handle_health, auth=False, log=False)
