"""``GET /v1/models`` and ``GET /models``: the model list as today's upstream renders it
(upstream-head.md sections 12 and 13).

One record per listed model (then its aliases with ``includeAliasesInList``) and per peer
model, sorted by id. Every record has ``status: {"value": "loaded"|"unloaded"}`` (Open WebUI
reads it) and ``meta.llamaswap.type``; a model's ``capabilities`` add ``architecture``,
``capabilities``, ``supported_parameters``, ``context_length`` and ``meta.n_ctx``. Maps have
their keys sorted, as Go encodes a ``map[string]any``.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from llamaswap.config.model import Capabilities, thaw
from llamaswap.http import auth
from llamaswap.http.context import RequestContext
from llamaswap.ops import gojson

# the record fields the capabilities renderer owns: user metadata may not shadow them
_RENDERED_KEYS = ("architecture", "capabilities", "supported_parameters", "context_length")
_NOT_LOADED = ("stopped", "shutdown")
_NO_CAPABILITIES = Capabilities()


def model_loaded(process: Any) -> bool:
    """Upstream's "running": any state but stopped or shutdown."""
    if process is None:
        return False
    st = process.state
    return (getattr(st, "value", st) or "stopped") not in _NOT_LOADED


def record(model_id: str, created: int, status: str, kind: Mapping[str, Any], *,
           name: str = "", description: str = "", metadata: Mapping[str, Any] | None = None,
           capabilities: Capabilities = _NO_CAPABILITIES) -> dict[str, Any]:
    """One /v1/models record in upstream's field order. ``kind`` is the internal part of
    ``meta.llamaswap`` (``type`` and what goes with it); it wins over user metadata."""
    rec: dict[str, Any] = {"id": model_id, "object": "model", "created": created,
                           "owned_by": "llama-swap"}
    name, description = name.strip(), description.strip()
    if name:
        rec["name"] = name
    if description:
        rec["description"] = description
    rendered = capabilities.rendered()
    rec.update(rendered)
    user = thaw(metadata) if metadata else {}
    if not capabilities.empty:
        user = {k: v for k, v in user.items() if k not in _RENDERED_KEYS}
    llamaswap = gojson.sorted_maps({**user, **thaw(kind)})
    meta: dict[str, Any] = {}
    if llamaswap:
        meta["llamaswap"] = llamaswap
    if rendered.get("context_length"):
        meta["n_ctx"] = rendered["context_length"]
    if meta:
        rec["meta"] = meta
    rec["status"] = {"value": status}
    return rec


def model_records(app: Any, include_aliases: bool = False) -> list[dict]:
    """The records, sorted by id; ``include_aliases`` lists every alias as its own record
    even without ``includeAliasesInList``."""
    cfg = app.config
    processes = getattr(app, "processes", None) or {}
    created = int(time.time())
    records = []
    for mid, m in cfg.models.items():
        if m.unlisted:
            continue
        status = "loaded" if model_loaded(processes.get(mid)) else "unloaded"
        details = {"name": m.name, "description": m.description, "metadata": m.metadata,
                   "capabilities": m.capabilities}
        kind: dict[str, Any] = {"type": "model"}
        if m.aliases:
            kind["aliases"] = list(m.aliases)
        records.append(record(mid, created, status, kind, **details))
        if cfg.include_aliases_in_list or include_aliases:
            for alias in m.aliases:
                alias = alias.strip()
                if alias:
                    records.append(record(alias, created, status,
                                          {"type": "alias", "modelID": mid}, **details))
    for pid, peer in cfg.peers.items():  # by qualified name only, always "unloaded"
        for pm in dict.fromkeys(peer.models):
            records.append(record(f"{pid}/{pm}", created, "unloaded",
                                  {"type": "peer", "peerID": pid}, name=f"{pid}: {pm}"))
    records.extend(_virtual_records(app, created))
    records.sort(key=lambda r: r["id"])
    return records


def _virtual_records(app: Any, created: int) -> list[dict]:
    """Selectors (unless unlisted) and, while a profile is active, its pins that name
    nothing else (upstream-head.md sections 6 and 7)."""
    cfg = app.config
    processes = getattr(app, "processes", None) or {}
    out = []

    def warm(target: str) -> bool:
        real = cfg.real_model_name(target)
        process = processes.get(real) if real is not None else None
        state = getattr(process.state, "value", process.state) if process is not None else ""
        return state in ("ready", "starting")

    for sid, sel in cfg.selectors.items():
        if sel.unlisted:
            continue
        examined = sel.targets[:1] if sel.strategy == "pin" else sel.targets
        kind: dict[str, Any] = {"type": "selector", "strategy": sel.strategy, "targets": list(sel.targets)}
        if sel.strategy == "spillover":
            kind["spillover"] = sel.spillover
        out.append(record(sid, created, "loaded" if any(warm(t) for t in examined) else "unloaded", kind,
                          name=sel.name, description=sel.description, metadata=sel.metadata))
    profiles = getattr(app, "profiles", None)
    pins = profiles.pins() if profiles is not None else {}
    if pins:
        named = set(cfg.models) | set(cfg.aliases) | set(cfg.selectors) | set(cfg.peer_names)
        out.extend(record(pin, created, "unloaded", {"type": "profile"})
                   for pin, target in pins.items() if target and pin not in named)
    return out


def scoped_records(app: Any, key: Any) -> list[dict]:
    """The records a scoped API key may use: by the listed name or the model id it resolves
    to. A model the key reaches only through an alias is listed under that alias."""
    cfg = app.config
    out = []
    for rec in model_records(app, include_aliases=True):
        name = rec["id"]
        real = cfg.real_model_name(name)
        if not key.allows(name, *auth.resolved_names(cfg, name)):
            continue
        if real is not None and real != name and not cfg.include_aliases_in_list \
                and key.allows(real):
            continue  # an alias record the listing would not have: its model is listed
        out.append(rec)
    return out


def handle_models(ctx: RequestContext) -> None:
    key = ctx.state.get("key")
    if key is None or key.every_model:
        records = model_records(ctx.app)
    else:
        records = scoped_records(ctx.app, key)
    body = gojson.dumps({"data": records, "object": "list"}) + "\n"
    headers = []
    origin = ctx.headers.get("Origin")
    if origin:
        headers.append(("Access-Control-Allow-Origin", origin))
    ctx.send(200, body, "application/json", headers)
