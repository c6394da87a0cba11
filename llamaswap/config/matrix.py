"""The ``matrix:`` block: vars, evict_costs and sets, validated and expanded.

Sets are expanded in dependency order (depth-first over the definition order, referenced
sets first), and that order is the solver's tie-break, so it is kept exactly.
"""

from __future__ import annotations

import re
from typing import Mapping

from yaml.nodes import MappingNode, Node, ScalarNode

from .errors import ConfigError
from .gocompat import go_quote
from .matrix_dsl import MAX_EXPANSIONS, DSLError, extract_refs, parse_and_expand
from .model import ExpandedSet, MatrixConfig, freeze
from .yamlio import Decoder, is_null

VAR_KEY = re.compile(r"^[a-zA-Z0-9]{1,8}$")


def build_matrix(d: Decoder, node: Node, models: Mapping[str, object],
                 aliases: Mapping[str, str] | None = None,
                 warnings: list[str] | None = None, where: str = "matrix") -> MatrixConfig:
    """`warnings` collects what loads but deserves a word at startup (see the var check);
    `where` is the key path of the block (``routing.router.settings.matrix`` or the legacy
    top-level ``matrix``)."""
    fields = d.mapping(node, where, "config.MatrixConfig")
    variables = {k: d.string(v, f"{where}.vars.{k}") for k, _, v in d.items(
        fields.get("vars"), f"{where}.vars", "map[string]string")}
    costs = {k: d.integer(v, f"{where}.evict_costs.{k}") for k, _, v in d.items(
        fields.get("evict_costs"), f"{where}.evict_costs", "map[string]int")}
    sets = _sets(d, fields.get("sets"), f"{where}.sets")

    def fail(message: str, key: str = "") -> ConfigError:
        return d.error(f"matrix: {message}", f"{where}.{key}" if key else where, node)

    if not sets:
        raise fail("matrix must define at least one set", "sets")
    if not variables:
        raise fail("matrix must define at least one var", "vars")
    for var in sorted(variables):
        if not VAR_KEY.match(var):
            raise fail(f"var key {go_quote(var)} must be alphanumeric and 1-8 characters", "vars")
        target = variables[var]
        if target in models:
            continue
        message = f"var key {go_quote(var)} references unknown model {go_quote(target)}"
        if aliases and target in aliases:
            # an alias is a mistake we can name the fix for, so it stays an error
            raise fail(f"{message} (it is an alias of {go_quote(aliases[target])}; "
                       "use the model id)", f"vars.{var}")
        # Upstream rejects this, but its own example config (which users copy and which must
        # load unchanged) names models it never defines. A set naming such a var can never
        # run that model, which is harmless: warn instead of refusing to start.
        if warnings is not None:
            warnings.append(f"matrix: {message}; sets that use it can never run that model")
    for var in sorted(costs):
        if costs[var] <= 0:
            raise fail(f"evict_cost for {go_quote(var)} must be a positive integer, got {costs[var]}",
                       f"evict_costs.{var}")
        if var not in variables:
            raise fail(f"evict_costs: unknown var ID {go_quote(var)}", f"evict_costs.{var}")

    names = [name for name, _ in sets]
    dsl_of = dict(sets)
    deps: dict[str, list[str]] = {}
    for name, dsl in sets:
        try:
            refs = extract_refs(dsl)
        except DSLError as e:
            raise fail(f"set {go_quote(name)}: {e}", f"sets.{name}") from None
        for ref in refs:
            if ref not in dsl_of:
                raise fail(f"set {go_quote(name)} references undefined set {go_quote(ref)}", f"sets.{name}")
        deps[name] = refs

    order = _topological(names, deps, fail)
    combos_of: dict[str, list[list[str]]] = {}
    expanded: list[ExpandedSet] = []
    total = 0
    for name in order:
        try:
            combos = parse_and_expand(dsl_of[name], combos_of)
        except DSLError as e:
            raise fail(f"set {go_quote(name)}: {e}", f"sets.{name}") from None
        combos_of[name] = combos
        for combo in combos:
            unknown = [var for var in combo if var not in variables]
            if unknown:
                raise fail(f"set {go_quote(name)}: unknown var ID {go_quote(unknown[0])}", f"sets.{name}")
            expanded.append(ExpandedSet(name=name, dsl=dsl_of[name],
                                        models=tuple(sorted(variables[v] for v in combo))))
        total += len(combos)
        if total > MAX_EXPANSIONS:
            raise fail(f"total expanded combinations ({total}) exceed limit of {MAX_EXPANSIONS}", "sets")

    return MatrixConfig(
        vars=freeze(dict(sorted(variables.items()))),
        evict_costs=freeze(dict(sorted(costs.items()))),
        sets=tuple(sets),
        expanded_sets=tuple(expanded),
        model_evict_costs=freeze({variables[v]: c for v, c in sorted(costs.items())}),
    )


def _sets(d: Decoder, node: Node | None, where: str) -> list[tuple[str, str]]:
    """Sets in definition order (upstream decodes them from the node, so order survives)."""
    if is_null(node):
        return []
    if not isinstance(node, MappingNode):
        raise d.error("sets must be a mapping", where, node)
    result = []
    for k, v in node.value:
        name = d.key_text(k, where)
        if not isinstance(v, ScalarNode):
            raise d.error(f"failed to decode DSL for set {go_quote(name)}: cannot unmarshal "
                          f"{'!!seq' if v.id == 'sequence' else '!!map'} into string", f"{where}.{name}", v)
        result.append((name, d.string(v, f"{where}.{name}")))
    return result


def _topological(names: list[str], deps: dict[str, list[str]], fail) -> list[str]:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    order: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == 1:
            raise fail(f"circular reference detected involving set {go_quote(name)}", f"sets.{name}")
        if state.get(name) == 2:
            return
        state[name] = 1
        for dep in deps[name]:
            visit(dep)
        state[name] = 2
        order.append(name)

    for name in names:
        if name not in state:
            visit(name)
    return order
