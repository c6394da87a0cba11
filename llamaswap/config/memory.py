"""The ``memory:`` section, models' ``memory`` needs, and the ``sleep``/``wake`` actions.

Sizes and device names are ``llamaswap.sizes``'. A sleep or wake action is
``"METHOD /path"`` (an HTTP request to the model's proxy URL) or a command run like cmdStop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from yaml.nodes import Node, ScalarNode

from llamaswap.sizes import format_size, is_device, parse_size

from .gocompat import parse_go_duration
from .model import MemoryConfig, freeze
from .yamlio import Decoder, is_null, scalar_tag_value

AUTO = "auto"
DEFAULT_EVERY = 5.0  # seconds between measurements while a model is resident
MIN_EVERY = 0.1
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_HTTP_FORM = re.compile(r"([A-Z]+)\s+(/\S*)")


@dataclass(frozen=True)
class Action:
    """A parsed sleep/wake action: an HTTP request (method, path) or a command (text)."""

    method: str = ""
    path: str = ""
    command: str = ""

    @property
    def is_http(self) -> bool:
        return bool(self.method)


def parse_action(text: str) -> Action:
    """``"POST /sleep?level=1"`` -> HTTP; anything else is a command. An upper-case word
    followed by a path is meant as HTTP: an unknown method is a ValueError."""
    text = text.strip()
    m = _HTTP_FORM.fullmatch(text)
    if m is None:
        return Action(command=text)
    if m.group(1) not in HTTP_METHODS:
        raise ValueError(f"unknown HTTP method {m.group(1)!r} in {text!r} "
                         f"(use one of {', '.join(HTTP_METHODS)}, or a command)")
    return Action(method=m.group(1), path=m.group(2))


# ---- loading -------------------------------------------------------------------------------

def _size_value(d: Decoder, node: Node, key: str, allow_auto: bool = False) -> int | None:
    if not isinstance(node, ScalarNode) or is_null(node):
        raise d.error(f"invalid size {_shown(node)}: use a byte count or a number with a unit",
                      key, node)
    tag, value = scalar_tag_value(node)
    if allow_auto and tag == "!!str" and value.strip().lower() == AUTO:
        return None
    try:
        return parse_size(value if tag in ("!!int", "!!float") else node.value)
    except ValueError as exc:
        raise d.error(str(exc), key, node) from None


def _shown(node: Node | None) -> str:
    if node is None or is_null(node):
        return "(empty)"
    return repr(node.value) if isinstance(node, ScalarNode) else "(not a scalar)"


def load_memory_section(d: Decoder, node: Node | None) -> MemoryConfig | None:
    """The top-level ``memory:`` section; None when absent."""
    if is_null(node):
        return None
    fields = d.mapping(node, "memory", "memory")
    for name in fields:
        if name not in ("devices", "headroom", "every"):
            raise d.error(f"unknown key {name!r} (memory has devices, headroom and every)",
                          f"memory.{name}", node)
    devices: dict[str, int | None] = {}
    for name, key_node, value in d.items(fields.get("devices"), "memory.devices", "memory.devices"):
        key = f"memory.devices.{name}"
        if not is_device(name):
            raise d.error(f"unknown device {name!r}: use gpuN (the GPU with index N) or ram",
                          key, key_node)
        budget = _size_value(d, value, key, allow_auto=True)
        if budget == 0:
            raise d.error("a budget must be more than 0 bytes", key, value)
        devices[name] = budget
    if not devices:
        raise d.error("memory.devices lists no device to manage (e.g. gpu0: 24GiB, ram: auto)",
                      "memory.devices", fields.get("devices", node))
    headroom_node = fields.get("headroom")
    headroom = 0 if is_null(headroom_node) else _size_value(d, headroom_node, "memory.headroom")
    every = DEFAULT_EVERY
    every_node = fields.get("every")
    if not is_null(every_node):
        every = _seconds(d, every_node, "memory.every")
    return MemoryConfig(devices=freeze(dict(sorted(devices.items()))), headroom=headroom or 0,
                        every=every)


def _seconds(d: Decoder, node: Node, key: str) -> float:
    value = None
    if isinstance(node, ScalarNode):
        tag, raw = scalar_tag_value(node)
        if tag in ("!!int", "!!float"):
            value = float(raw)
        elif tag == "!!str":
            ns = parse_go_duration(raw.strip())
            value = None if ns is None else ns / 1e9
    if value is None or value != value or value < MIN_EVERY:
        raise d.error(f"invalid interval {_shown(node)}: a duration of at least "
                      f"{MIN_EVERY:g}s (e.g. 5s, 500ms, or seconds as a number)", key, node)
    return value


def load_model_memory(d: Decoder, node: Node | None, model_id: str,
                      memory: MemoryConfig | None) -> dict[str, int]:
    """A model's declared ``memory`` needs, checked against the managed devices."""
    if is_null(node):
        return {}
    base = f"models.{model_id}.memory"
    needs: dict[str, int] = {}
    for name, key_node, value in d.items(node, base, "memory"):
        key = f"{base}.{name}"
        if not is_device(name):
            raise d.error(f"unknown device {name!r}: use gpuN (the GPU with index N) or ram",
                          key, key_node)
        if memory is None or name not in memory.devices:
            managed = ", ".join(memory.devices) if memory is not None else "none: no memory section"
            raise d.error(f"device {name!r} is not managed (memory.devices: {managed})",
                          key, key_node)
        needs[name] = _size_value(d, value, key)
    return dict(sorted(needs.items()))


def check_actions(model_id: str, sleep: str, wake: str) -> tuple[str, str] | None:
    """What is wrong with a model's sleep/wake pair: (key, message), or None."""
    if bool(sleep.strip()) != bool(wake.strip()):
        have, missing = ("sleep", "wake") if sleep.strip() else ("wake", "sleep")
        return have, (f"model {model_id}: {have} is set without {missing}: a model that can "
                      f"sleep needs both")
    for key, text in (("sleep", sleep), ("wake", wake)):
        if text.strip():
            try:
                parse_action(text)
            except ValueError as exc:
                return key, f"model {model_id}: {key}: {exc}"
    return None


def never_fits(needs: Mapping[str, int], memory: MemoryConfig,
               budgets: Mapping[str, int | None] | None = None) -> tuple[str, int, int] | None:
    """(device, need, budget) of the first device where `needs` plus the headroom exceed the
    budget (an ``auto`` budget not yet known is skipped), else None."""
    budgets = memory.devices if budgets is None else budgets
    for device in sorted(needs):
        budget = budgets.get(device)
        if budget is not None and needs[device] + memory.headroom > budget:
            return device, needs[device], budget
    return None


def never_fits_message(model_id: str, device: str, need: int, budget: int, headroom: int) -> str:
    extra = f" + {format_size(headroom)} headroom" if headroom else ""
    return (f"model '{model_id}' can never fit on {device}: it needs {format_size(need)}"
            f"{extra} ({need + headroom} bytes) but the budget is {format_size(budget)} "
            f"({budget} bytes)")
