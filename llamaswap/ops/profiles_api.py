"""``GET /api/profiles`` and ``PUT /api/profiles/active`` (upstream-head.md section 6)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from llamaswap.http.context import RequestContext
from llamaswap.ops.api import _json_line
from llamaswap.router.profiles import ProfileNotFound

if TYPE_CHECKING:
    from llamaswap.http.routes import RouteTable


def register(table: RouteTable) -> None:
    table.add("GET", "/api/profiles", list_profiles)
    table.add("PUT", "/api/profiles/active", set_active)


def active_json(app: Any) -> dict[str, Any]:
    """``{"active": <name> | null}``: the body of the PUT answer and of the SSE event."""
    return {"active": app.profiles.active or None}


def list_profiles(ctx: RequestContext) -> None:
    app = ctx.app
    profiles = [{"id": p.id, "description": p.description, "pins": dict(p.pins)}
                for p in app.config.profiles.values()]  # sorted by id; a null pin is ""
    _json_line(ctx, {"active": app.profiles.active or None, "profiles": profiles})


def set_active(ctx: RequestContext) -> None:
    app = ctx.app
    text = ctx.read_body().decode("utf-8", "replace").strip()
    try:
        body, _end = json.JSONDecoder().raw_decode(text)  # like Go's Decoder: the first value
    except ValueError as e:
        ctx.send_error(400, f"invalid profile request: the body must be a JSON object ({e})")
        return
    if body is None:
        body = {}  # Go decodes null into an empty map
    if not isinstance(body, dict):
        ctx.send_error(400, f"invalid profile request: the body must be a JSON object, "
                            f"got {type(body).__name__}")
        return
    if "name" not in body:
        ctx.send_error(400, "profile name is required")
        return
    name = body["name"]
    if name is not None and not isinstance(name, str):
        ctx.send_error(400, f"profile name must be a string or null, got {json.dumps(name)}")
        return
    try:
        app.profiles.set(name or "")
    except ProfileNotFound as e:
        ctx.send_error(404, str(e))
        return
    _json_line(ctx, active_json(app))
