"""``/upstream/<model>/<path>``: straight to one model's backend (behaviour.md 3.4).

The model is the longest run of leading path segments that names a local model or alias
(ids may contain ``/``), else a peer's model; matching uses the raw path, so ``%2F`` in the
remainder reaches the backend as sent. The bare model path is redirected to its trailing-slash
form (301 for GET/HEAD, 308 otherwise). Any method; websocket upgrades are tunnelled. A path
matching ``upstream.ignorePaths`` (static assets by default) for a local model that is not
ready answers 409 instead of starting it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from llamaswap.http import auth, extract, virtual
from llamaswap.http.context import RequestContext
from llamaswap.http.inference import dispatch, serve_peer_path

if TYPE_CHECKING:
    from llamaswap.http.routes import RouteTable

PREFIX = "/upstream/"


def find_model(raw_rest: str, is_known) -> tuple[str, str, str] | None:
    """(name as matched, raw name segment text, raw remainder) for the longest prefix of
    non-empty segments that ``is_known``; remainder is "" for the bare model path."""
    segs = raw_rest.split("/")
    best = None
    name_parts: list[str] = []
    for i, seg in enumerate(segs):
        if not seg:
            continue
        name_parts.append(unquote(seg))
        name = "/".join(name_parts)
        if is_known(name):
            rest = segs[i + 1:]
            best = (name, "/".join(segs[:i + 1]), "/" + "/".join(rest) if rest else "")
    return best


def handle_upstream(ctx: RequestContext) -> None:
    app = ctx.app
    cfg = app.config
    # the active profile's pins
    raw_rest, pin = virtual.upstream_rest(app, ctx.raw_path[len(PREFIX):])
    found = find_model(raw_rest, lambda n: cfg.real_model_name(n) is not None)
    peer = None
    if found is None:
        found = find_model(raw_rest, lambda n: cfg.peer_model(n) is not None)
        if found is None:
            ctx.send_error(404, f"model not found: no local model, alias or peer model in "
                                f"path {ctx.raw_path}")
            return
        peer = cfg.peer_model(found[0])
    name, raw_name, remainder = found
    real = cfg.real_model_name(name) if peer is None else None
    if not auth.may_use(ctx, pin, name, *auth.resolved_names(cfg, name)):
        return  # 403 before the redirect, the ignorePaths answer or the peer
    if remainder == "":
        location = f"{PREFIX}{raw_name.strip('/')}/"
        if ctx.query_string:
            location += "?" + ctx.query_string
        ctx.redirect(301 if ctx.method in ("GET", "HEAD") else 308, location)
        return
    if peer is not None:
        serve_peer_path(ctx, name, peer, remainder)
        return
    if cfg.upstream.ignores(unquote(remainder)) and not _ready(app.processes.get(real)):
        # a UI's asset or favicon request must not start (or swap in) a model
        ctx.send_error(409, f"model {real} is not loaded; path matches upstream.ignorePaths")
        return
    dispatch(ctx, extract.Extracted(kind="none"), remainder, pinned=real, sent=pin or name)


def _ready(process) -> bool:
    state = getattr(process, "state", None)
    return getattr(state, "value", state) == "ready"


def handle_upstream_root(ctx: RequestContext) -> None:
    ctx.redirect(302, "/ui/models")


def register(table: RouteTable) -> None:
    table.add("GET", "/upstream", handle_upstream_root, auth=False)
    table.add("*", "/upstream/{path...}", handle_upstream)

