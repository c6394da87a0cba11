"""``GET /api/memory``, the memory figures of ``/running`` and the memory series of ``/metrics``.

Needs and what the planner counts come from the router thread (``Router.inspect`` runs
``router.memory.memory_report`` there, so the figures are one consistent picture); how each
figure was measured and the devices' own readings come from the memory monitor.
"""

from __future__ import annotations

from typing import Any

from llamaswap.router.memory import memory_report

NOT_CONFIGURED = "memory management is not configured (the config has no memory: section)"


def report(app: Any) -> dict | None:
    """The /api/memory body, or None without a memory section."""
    config = getattr(app, "config", None)
    if getattr(config, "memory", None) is None:
        return None
    router = app.router
    raw = router.inspect(memory_report) if hasattr(router, "inspect") else None
    if raw is None:
        return None
    monitor = getattr(app, "memory", None)
    methods = monitor.methods() if monitor is not None else {}
    readings = monitor.devices() if monitor is not None else {}
    devices = {}
    for device, figures in raw["devices"].items():
        entry = dict(figures)
        reading = readings.get(device)
        if reading is not None:
            entry["device_total"] = reading["total"]
            entry["device_used"] = reading["used"]
        devices[device] = entry
    models = {}
    for model_id in sorted(config.models):
        figures = raw["models"].get(model_id)
        if figures is None:
            continue
        process = app.processes.get(model_id)
        state = getattr(getattr(process, "state", None), "value", None) or "stopped"
        entry = {"state": state, **figures}
        entry["method"] = {d: methods.get(model_id, {}).get(d) or _method(figures, d)
                           for d in figures["need"]}
        models[model_id] = entry
    return {"devices": devices, "models": models}


def _method(figures: dict, device: str) -> str | None:
    source = figures["source"].get(device)
    return "declared" if source == "declared" else None


def api_memory(ctx: Any) -> None:
    body = report(ctx.app)
    if body is None:
        ctx.send_error(404, NOT_CONFIGURED)
        return
    ctx.send_json(200, body)


def running_memory(app: Any) -> dict[str, dict[str, int]]:
    """model -> device -> bytes counted now, for /running (empty without memory)."""
    body = report(app)
    if body is None:
        return {}
    return {m: e["used"] for m, e in body["models"].items() if e.get("used")}


def write_metrics(out: Any, app: Any) -> None:
    """The memory gauges of /metrics (nothing without a memory section)."""
    body = report(app)
    if body is None:
        return
    devices = sorted(body["devices"].items())
    out.family("llamaswap_memory_budget_bytes", "gauge",
               "Budget of each device the proxy manages (memory-aware swapping)",
               [((("device", d),), e["budget"]) for d, e in devices])
    out.family("llamaswap_memory_used_bytes", "gauge", "Used memory in bytes",
               [((("device", d),), e["used"]) for d, e in devices])
    samples = []
    for model_id, entry in sorted(body["models"].items()):
        for device, need in sorted(entry["need"].items()):
            if need is not None:
                samples.append(((("model", model_id), ("device", device),
                                 ("source", entry["source"][device])), need))
    out.family("llamaswap_model_memory_bytes", "gauge",
               "Each model's memory need per device and where it comes from "
               "(declared or measured)", samples)
