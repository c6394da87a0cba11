"""Profile pins and selectors on the request path (upstream's profile and selector steps).

After the model is extracted and before it is resolved, the active profile may pin the
requested id to another name (or disable it), then a selector id becomes one of its
targets. Both rewrite the model wherever the request carries it (JSON body, form field,
multipart field, ``?model=``), so filters, the activity row and the backend see the
target, as upstream. ``/upstream/<pin>/...`` follows the pins too; selectors do not apply
there (upstream's rule).
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import parse_qsl, quote, unquote, urlencode

from llamaswap.http import filters
from llamaswap.http.extract import Extracted
from llamaswap.http.context import RequestContext
from llamaswap.router.profiles import upstream_pin
from llamaswap.router.selectors import SelectorError


def rewrite(ctx: RequestContext, ex: Extracted) -> tuple[bool, Callable[[], None] | None]:
    """Apply the active profile, then a selector, to the extracted request. Returns
    (go on, done): False when an error has been answered; `done`, when not None, must be
    called once the request is over (it ends a spillover reservation)."""
    app = ctx.app
    if ex.model is None:
        return True, None
    switch = getattr(app, "profiles", None)
    if switch is not None:
        pins = switch.pins()
        if pins and ex.model in pins:
            target = pins[ex.model]
            if not target:
                ex.why = f"model '{ex.model}' is disabled by the active profile '{switch.active}'"
            _replace(ctx, ex, target)
            if ex.model is None:
                return True, None
    selectors = getattr(app, "selectors", None)
    if selectors is None or ex.model not in selectors:
        return True, None
    selector_id = ex.model
    try:
        choice = selectors.choose(selector_id, lambda target: _state_of(app, target))
    except SelectorError as e:
        ctx.send_error(503, str(e))
        return False, None
    app.loggers.log.debug(f"selector: id={selector_id} target={choice.target}")
    ctx.state.setdefault("metadata", {})["selector"] = selector_id
    _replace(ctx, ex, choice.target)
    if choice.reserved and _ignored_websocket(ctx, app, choice.target):
        selectors.release(choice)  # upstream: a long-lived ignored websocket holds no reservation
        return True, None
    return True, (lambda: selectors.release(choice)) if choice.reserved else None


def _ignored_websocket(ctx: RequestContext, app: Any, target: str) -> bool:
    """A websocket upgrade to a model with compat.ignoreWebsockets (served outside routing)."""
    real = app.config.real_model_name(target)
    model = app.config.models.get(real) if real is not None else None
    if model is None or not model.ignore_websockets:
        return False
    from llamaswap.http.inference import is_websocket_upgrade  # inference imports this module

    return is_websocket_upgrade(ctx)


def upstream_rest(app: Any, raw_rest: str) -> tuple[str, str | None]:
    """The raw ``/upstream/`` remainder with its longest pinned model prefix replaced by the
    pin's target ("" when the pin disables the id), and that pin (None when none applied:
    the API key's scope accepts the pin's name as the name sent)."""
    switch = getattr(app, "profiles", None)
    pins = switch.pins() if switch is not None else None
    if not pins:
        return raw_rest, None
    found = upstream_pin(unquote(raw_rest), pins)
    if found is None:
        return raw_rest, None
    pin, target = found
    if not target:
        return "", pin
    segments = raw_rest.split("/")
    kept = segments[pin.count("/") + 1:]
    return "/".join([quote(target, safe="/")] + kept), pin


def _state_of(app: Any, target: str) -> str:
    real = app.config.real_model_name(target)
    process = app.processes.get(real) if real is not None else None
    if process is None:
        return ""
    state = process.state
    return getattr(state, "value", state) or ""


def _replace(ctx: RequestContext, ex: Extracted, model: str) -> None:
    """Write `model` wherever the request names its model ("" clears it)."""
    if ex.kind == "query":
        pairs = [(k, model if k == "model" else v)
                 for k, v in parse_qsl(ctx.query_string, keep_blank_values=True)]
        ctx.set_query(urlencode(pairs))
    elif ex.kind == "json" and ex.obj is not None:
        spliced = filters.with_model(ex.data, ex.model or "", model) if ex.data else None
        ex.obj["model"] = model
        ex.data = spliced if spliced is not None else filters.encode(ex.obj)
    elif ex.kind == "form":
        pairs = [(k, model if k == "model" else v)
                 for k, v in parse_qsl((ex.data or b"").decode("utf-8", "replace"), keep_blank_values=True)]
        ex.data = urlencode(pairs).encode()
    elif ex.kind == "multipart":
        ex.model_value = model
    ex.model = model or None
