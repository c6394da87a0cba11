"""The route table: which handler answers which (method, path).

Registering a route is one line::

    table.add("GET", "/running", handle_running)                 # auth required (apiKeys)
    table.add("GET", "/health", handle_health, auth=False)       # open
    table.add(("GET", "POST"), "/logs/stream/{id...}", handle_logs_stream)

A handler is ``fn(ctx: RequestContext) -> None``; it answers through ``ctx`` (``send``,
``send_json``, ``send_error``, or ``start`` + ``write`` + ``finish`` for streams).

Patterns follow Go's ServeMux (1.22) closely enough for upstream's routes:
- ``/exact`` matches that path only;
- ``{name}`` matches one non-empty segment, ``{name...}`` the rest of the path (may be empty,
  may contain ``/``); values land in ``ctx.params`` percent-decoded (``ctx.raw_path`` keeps
  the undecoded form);
- ``GET`` also matches ``HEAD``; a known path with the wrong method gets 405 with ``Allow``;
  an unknown path gets 404 ``404 page not found``.
- OPTIONS never reaches the table: the dispatcher answers every preflight (auth.py).

Who registers what: ``build_routes(extra)`` adds the inference, listing, health,
``/upstream`` and ``/comfyui`` routes (http/inference.py, upstream_path.py, comfyui.py) and
then calls each ``register(table)`` in ``extra``; the server passes
``llamaswap.ops.api.register`` so the operations routes live in ops/api.py. Options on a route: ``auth`` (checked by the dispatcher
before the handler runs when ``apiKeys`` is set) and ``log`` (False keeps it out of the access
log, as upstream does for /metrics).

This module imports the handlers, never the other way round: handlers take the request from
``http/context.py`` (``RequestContext``, ``ClientGone``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence
from urllib.parse import unquote

from llamaswap.http import comfyui, inference, upstream_path
from llamaswap.http.context import RequestContext

Handler = Callable[[RequestContext], None]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: str
    fn: Handler
    auth: bool = True
    log: bool = True
    # (literal prefix segments, wildcard names) for matching
    _segments: tuple[str, ...] = field(default=(), compare=False, repr=False)


class RouteTable:
    def __init__(self) -> None:
        self._exact: dict[str, list[Route]] = {}
        self._wild: list[Route] = []

    def add(self, methods: str | Sequence[str], pattern: str, fn: Handler, *,
            auth: bool = True, log: bool = True) -> Route:
        if isinstance(methods, str):
            methods = (methods,)
        ms = {m.upper() for m in methods}  # "*" matches any method
        if "GET" in ms:
            ms.add("HEAD")
        segs = tuple(pattern.strip("/").split("/")) if pattern != "/" else ()
        route = Route(frozenset(ms), pattern, fn, auth, log, segs)
        if "{" in pattern:
            self._wild.append(route)
            # most literal segments first, so /a/b/{x...} wins over /a/{x...}
            self._wild.sort(key=lambda r: -sum(1 for s in r._segments if not s.startswith("{")))
        else:
            self._exact.setdefault(pattern, []).append(route)
        return route

    def routes(self) -> list[Route]:
        return [r for rs in self._exact.values() for r in rs] + list(self._wild)

    def match(self, method: str, raw_path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """(route, params, allowed methods). route None with allowed non-empty means 405."""
        allowed: set[str] = set()
        for route in self._exact.get(raw_path, ()):
            if method in route.methods or "*" in route.methods:
                return route, {}, []
            allowed |= route.methods
        if not allowed:
            for route in self._wild:
                params = _match_segments(route._segments, raw_path)
                if params is None:
                    continue
                if method in route.methods or "*" in route.methods:
                    return route, params, []
                allowed |= route.methods
        return None, {}, sorted(allowed)


def _match_segments(segs: tuple[str, ...], raw_path: str) -> dict[str, str] | None:
    parts = raw_path[1:].split("/") if raw_path.startswith("/") else raw_path.split("/")
    params: dict[str, str] = {}
    for i, seg in enumerate(segs):
        if seg.startswith("{") and seg.endswith("...}"):
            params[seg[1:-4]] = unquote("/".join(parts[i:]))
            return params
        if i >= len(parts):
            return None
        if seg.startswith("{") and seg.endswith("}"):
            if not parts[i]:
                return None
            params[seg[1:-1]] = unquote(parts[i])
        elif seg != parts[i]:
            return None
    return params if len(parts) == len(segs) else None


RegisterFn = Callable[[RouteTable], None]


def build_routes(extra: Iterable[RegisterFn] = ()) -> RouteTable:
    """The full table: http/'s own routes, then each ``register(table)`` in ``extra``."""
    table = RouteTable()
    inference.register(table)
    upstream_path.register(table)
    comfyui.register(table)
    for register in extra:
        register(table)
    return table
