"""``/comfyui``: a passthrough to the model ``comfyui_auto`` (upstream's ComfyUI endpoint).

``/comfyui`` redirects to ``/comfyui/`` (301 for GET/HEAD, 308 otherwise, the query kept).
``/comfyui/<path>`` goes to the backend as ``/<path>``, raw escaping kept, like
``/upstream/<model>/<path>``. Only the root ``/comfyui/`` may start the model: once it is
unloaded, a browser tab still asking for assets, APIs or websockets must not load it again
(409). The loader gives ``comfyui_auto`` a concurrency limit of at least 50 and
``compat.ignoreWebsockets`` (its websockets stay outside the router).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamaswap.config.model import COMFYUI_MODEL_ID
from llamaswap.http import extract
from llamaswap.http.context import RequestContext
from llamaswap.http.inference import dispatch

if TYPE_CHECKING:
    from llamaswap.http.routes import RouteTable

PREFIX = "/comfyui"


def handle_redirect(ctx: RequestContext) -> None:
    location = PREFIX + "/" + ("?" + ctx.query_string if ctx.query_string else "")
    ctx.redirect(301 if ctx.method in ("GET", "HEAD") else 308, location)


def handle(ctx: RequestContext) -> None:
    app = ctx.app
    if COMFYUI_MODEL_ID not in app.config.models or COMFYUI_MODEL_ID not in app.processes:
        ctx.send_error(404, f"local model {COMFYUI_MODEL_ID} not found")
        return
    remainder = ctx.raw_path[len(PREFIX):] or "/"
    if remainder != "/":
        state = getattr(app.processes[COMFYUI_MODEL_ID].state, "value", "")
        if state != "ready":
            ctx.send_error(409, f"model {COMFYUI_MODEL_ID} is not loaded; only /comfyui/ can "
                                "start it")
            return
    dispatch(ctx, extract.Extracted(kind="none"), remainder, pinned=COMFYUI_MODEL_ID)


def register(table: RouteTable) -> None:
    table.add("*", PREFIX, handle_redirect)
    table.add("*", PREFIX + "/{path...}", handle)
