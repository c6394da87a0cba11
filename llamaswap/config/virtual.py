"""``selectors:`` and ``profiles:`` (upstream-head.md sections 6 and 7): names a request may
use that are not models. Decoded with the other keys, validated after the models, routing
and peers, in upstream's order (selectors, then profiles) with upstream's messages.

``profiles`` has two shapes. The reference revision's list shape (``name: [model, ...]``,
a feature upstream had already removed) still loads with its warning (``has_profiles``);
today's map shape (``name: {description, pins}``) is a runtime profile. Unknown names follow
the rule for upstream's own example config, which names models it never defines: a selector
target or a pin target that is no model, alias, peer model (or, for a pin, selector) is
dropped with a warning (a selector with no target left, or a profile with no pin left, is
still an error).
"""

from __future__ import annotations

from typing import Any, Mapping

from yaml.nodes import MappingNode, Node, SequenceNode

from .gocompat import go_quote, go_trim_space
from .model import (DEFAULT_GROUP_ID, GroupConfig, MatrixConfig, PeerConfig, ProfileConfig,
                    SelectorConfig, freeze, peer_namespace)
from .yamlio import Decoder, is_null

STRATEGIES = ("pin", "warm", "spillover")


class Names:
    """What a selector target or a pin target may name, as upstream's ResolveBaseModel:
    a local model or alias first, then a peer's model (``peer/model``, or a bare id that
    exactly one peer offers)."""

    def __init__(self, models: Mapping[str, object], aliases: Mapping[str, str],
                 peers: Mapping[str, PeerConfig]):
        self.models = models
        self.aliases = aliases
        self.peer_names = peer_namespace(peers)
        self.fqn = {route.fqn for route in self.peer_names.values()}

    def local(self, name: str) -> str | None:
        return name if name in self.models else self.aliases.get(name)

    def peer(self, name: str) -> str | None:
        """The qualified name of the peer model `name` routes to."""
        route = self.peer_names.get(name)
        return route.fqn if route is not None else None

    def known(self, name: str) -> bool:
        return self.local(name) is not None or self.peer(name) is not None


# ---- decoding ------------------------------------------------------------------------------

def decode_selectors(d: Decoder, node: Node | None) -> dict[str, dict[str, Any]]:
    out = {}
    for sid, _, sel in d.items(node, "selectors", "map[string]config.SelectorConfig"):
        key = f"selectors.{sid}"
        f = d.mapping(sel, key, "config.SelectorConfig")
        settings = d.mapping(f.get("settings"), f"{key}.settings", "config.SelectorSettings")
        targets = f.get("targets")
        out[sid] = {
            "node": sel,
            "strategy": d.string(f.get("strategy"), f"{key}.strategy"),
            "targets": d.strings(targets, f"{key}.targets"),
            "target_nodes": targets.value if isinstance(targets, SequenceNode) else [],
            "spillover": d.integer(settings.get("spillover"), f"{key}.settings.spillover", 1),
            "name": d.string(f.get("name"), f"{key}.name"),
            "description": d.string(f.get("description"), f"{key}.description"),
            "unlisted": d.boolean(f.get("unlisted"), f"{key}.unlisted"),
            "metadata": d.any_map(f.get("metadata"), f"{key}.metadata"),
        }
    return out


def decode_profiles(d: Decoder, node: Node | None) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """(list-shaped profiles of the reference revision, map-shaped runtime profiles)."""
    legacy: dict[str, list[str]] = {}
    runtime: dict[str, dict[str, Any]] = {}
    for name, key_node, value in d.items(node, "profiles", "map[string]config.ProfileConfig"):
        key = f"profiles.{name}"
        if not isinstance(value, MappingNode):
            legacy[name] = d.strings(value, key)
            continue
        f = d.mapping(value, key, "config.ProfileConfig")
        pins, pin_nodes = {}, {}
        for pin, pin_node, target in d.items(f.get("pins"), f"{key}.pins", "map[string]string"):
            pins[pin] = "" if is_null(target) else d.string(target, f"{key}.pins.{pin}")
            pin_nodes[pin] = pin_node
        runtime[name] = {"node": key_node, "description": d.string(f.get("description"), f"{key}.description"),
                         "pins": pins, "pins_node": f.get("pins", value), "pin_nodes": pin_nodes}
    return legacy, runtime


# ---- validation ----------------------------------------------------------------------------

def build_selectors(d: Decoder, raw: Mapping[str, dict[str, Any]], names: Names,
                    groups: Mapping[str, GroupConfig], matrix: MatrixConfig | None,
                    warnings: list[str], memory: bool = False) -> dict[str, SelectorConfig]:
    """``memory``: the config has a ``memory:`` section, so models of the implicit default
    group run side by side as memory allows (router.planners.planner_for)."""
    out = {}
    for sid in sorted(raw):
        sel = raw[sid]
        key = f"selectors.{sid}"

        def fail(message: str, where: str = key, i: int | None = None) -> Exception:
            """An error at the selector, or at its i-th target's line."""
            node = sel["target_nodes"][i] if i is not None else sel["node"]
            return d.error(message, where, node)

        if sid in names.fqn:
            raise fail(f"selector ID {go_quote(sid)} conflicts with fully qualified peer model name")
        if not go_trim_space(sid):
            raise fail("selectors: selector names cannot be empty", "selectors")
        if sid in names.models:
            raise fail(f"{key}: name conflicts with model ID {go_quote(sid)}")
        if sid in names.aliases:
            raise fail(f"{key}: name conflicts with model alias {go_quote(sid)}")
        strategy = sel["strategy"]
        if strategy == "":
            raise fail(f"{key}.strategy is required", f"{key}.strategy")
        if strategy not in STRATEGIES:
            raise fail(f"{key}.strategy: unknown strategy {go_quote(strategy)} (valid: warm, pin, spillover)",
                       f"{key}.strategy")
        if not sel["targets"]:
            raise fail(f"{key}.targets must contain at least one entry", f"{key}.targets")

        targets: list[str] = []
        resolved: list[str] = []  # spillover: each target's model (local id or peer/model)
        local: list[str] = []
        unknown: list[tuple[int, str]] = []  # (target index, message)
        for i, target in enumerate(sel["targets"]):
            where = f"{key}.targets[{i}]"
            if target in raw:
                raise fail(f"{where} references selector {go_quote(target)}; selector chaining is not supported",
                           where, i)
            if not names.known(target):
                unknown.append((i, f"{where} references unknown model {go_quote(target)}"))
                continue
            real = names.local(target)
            if strategy == "warm" and real is None:
                raise fail(f'{where} must resolve to a local model for strategy "warm"', where, i)
            targets.append(target)
            if strategy == "spillover":
                resolved.append(real if real is not None else names.peer(target))
                if real is not None:
                    local.append(real)
        if unknown:
            # Upstream refuses these; its own example config names models it never defines.
            if not targets:
                raise fail(unknown[0][1], f"{key}.targets", unknown[0][0])
            warnings.extend(f"{message}; the target is ignored" for _, message in unknown)

        if strategy == "spillover":
            if sel["spillover"] < 1:
                raise fail(f"{key}.settings.spillover must be >= 1", f"{key}.settings.spillover")
            seen: set[str] = set()
            for model in resolved:
                if model in seen:
                    raise fail(f"{key}.targets contains duplicate resolved model {go_quote(model)}", f"{key}.targets")
                seen.add(model)
            problem = _coexistence_problem(sid, local, groups, matrix, memory)
            if problem:
                raise fail(problem, f"{key}.targets")

        out[sid] = SelectorConfig(
            id=sid, strategy=strategy, targets=tuple(targets), spillover=sel["spillover"],
            name=sel["name"], description=sel["description"], unlisted=sel["unlisted"],
            metadata=freeze(sel["metadata"]))
    return out


def _coexistence_problem(sid: str, targets: list[str], groups: Mapping[str, GroupConfig],
                         matrix: MatrixConfig | None, memory: bool) -> str | None:
    """Spillover targets run side by side, so the router must let them (upstream's check)."""
    if len(targets) <= 1:
        return None
    if matrix is not None:
        from llamaswap.router.solver import MatrixSolver  # the solver's projection, only when needed

        if MatrixSolver(matrix.compiled_sets).can_contain_all(targets):
            return None
        return f"selectors.{sid}.targets must all appear together in one expanded matrix set"
    group_of = {m: gid for gid, g in groups.items() for m in g.members}
    gid = group_of.get(targets[0])
    if gid is None:
        return f"selectors.{sid} target {go_quote(targets[0])} is not in a routing group"
    if groups[gid].swap and not (memory and gid == DEFAULT_GROUP_ID):
        return f"selectors.{sid} spillover targets must share a group with swap: false"
    if any(group_of.get(t) != gid for t in targets[1:]):
        return f"selectors.{sid} spillover targets must share one routing group"
    return None


def build_profiles(d: Decoder, raw: Mapping[str, dict[str, Any]], names: Names,
                   selectors: Mapping[str, SelectorConfig], warnings: list[str]) -> dict[str, ProfileConfig]:
    out = {}
    for name in sorted(raw):
        prof = raw[name]
        key = f"profiles.{name}"
        for pin in sorted(prof["pins"]):
            if pin in names.fqn:
                raise d.error(f"profile {name} pin {go_quote(pin)} conflicts with fully qualified peer model name",
                              f"{key}.pins.{pin}", prof["pin_nodes"][pin])
        if not go_trim_space(name):
            raise d.error("profiles: profile names cannot be empty", "profiles", prof["node"])
        if not prof["pins"]:
            raise d.error(f"{key}.pins must contain at least one entry", f"{key}.pins", prof["pins_node"])
        pins = {}
        unknown: list[tuple[str, str]] = []  # (pin, message)
        for pin in sorted(prof["pins"]):
            target = prof["pins"][pin]
            if not go_trim_space(pin):
                raise d.error(f"{key}.pins: pin names cannot be empty", f"{key}.pins", prof["pin_nodes"][pin])
            if target and not names.known(target) and target not in selectors:
                unknown.append((pin, f"{key}.pins.{pin} references unknown model {go_quote(target)}"))
                continue
            pins[pin] = target
        if unknown:
            # upstream refuses these; its own example config pins a model it never defines
            if not pins:
                pin, message = unknown[0]
                raise d.error(message, f"{key}.pins.{pin}", prof["pin_nodes"][pin])
            warnings.extend(f"{message}; the pin is ignored" for _, message in unknown)
        out[name] = ProfileConfig(id=name, description=prof["description"], pins=freeze(pins))
    return out
