"""The ``matrix:`` block (upstream at HEAD): vars, evict_costs and sets, validated and compiled.

A name in a set is a var id first, then a real model id. Sets are compiled into linked
expression trees (config.model.MatrixSet), never expanded, so there is no limit on how many
combinations an expression describes. Their order is the solver's tie-break: depth-first over
the definition order, referenced sets first.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from yaml.nodes import MappingNode, Node, ScalarNode

from .errors import ConfigError
from .gocompat import go_quote
from .matrix_dsl import DSLError, parse, walk
from .model import MatrixConfig, MatrixNode, MatrixSet, freeze
from .yamlio import Decoder, is_null

VAR_KEY = re.compile(r"^[a-zA-Z0-9.-]{1,32}$")


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
    aliases = aliases or {}

    def fail(message: str, key: str = "") -> ConfigError:
        return d.error(f"matrix: {message}", f"{where}.{key}" if key else where, node)

    def resolve(name: str) -> str | None:
        if name in variables:
            return variables[name]
        return name if name in models else None

    def alias_hint(name: str) -> str:
        return f" (it is an alias of {go_quote(aliases[name])}; use the model id)" if name in aliases else ""

    if not sets:
        raise fail("matrix must define at least one set", "sets")
    for var in sorted(variables):
        if not VAR_KEY.match(var):
            raise fail(f"var key {go_quote(var)} must contain only alphanumeric, '-' or '.' characters "
                       "and be 1-32 characters long", "vars")
        target = variables[var]
        if target in models:
            continue
        message = f"var key {go_quote(var)} references unknown model {go_quote(target)}"
        if target in aliases:
            # an alias is a mistake we can name the fix for, so it stays an error
            raise fail(message + alias_hint(target), f"vars.{var}")
        # Upstream rejects this, but its own example config (which users copy and which must
        # load unchanged) names models it never defines. A set naming such a var can never
        # run that model, which is harmless: warn instead of refusing to start.
        if warnings is not None:
            warnings.append(f"matrix: {message}; sets that use it can never run that model")
    for key in sorted(costs):
        if costs[key] <= 0:
            raise fail(f"evict_cost for {go_quote(key)} must be a positive integer, got {costs[key]}",
                       f"evict_costs.{key}")
        if resolve(key) is None:
            raise fail(f"evict_costs: unknown var or model {go_quote(key)}{alias_hint(key)}", f"evict_costs.{key}")

    try:
        compiled = compile_sets(sets, resolve, alias_hint)
    except MatrixError as e:
        raise fail(str(e), f"sets.{e.set_name}") from None

    return MatrixConfig(
        vars=freeze(dict(sorted(variables.items()))),
        evict_costs=freeze(dict(sorted(costs.items()))),
        sets=tuple(sets),
        compiled_sets=compiled,
        model_evict_costs=freeze({resolve(k): c for k, c in sorted(costs.items())}),
    )


class MatrixError(ValueError):
    """A set that does not compile; the message is upstream's, without the "matrix: " prefix."""

    def __init__(self, message: str, set_name: str):
        super().__init__(message)
        self.set_name = set_name


def compile_sets(sets: Sequence[tuple[str, str]], resolve: Callable[[str], str | None],
                 hint: Callable[[str], str] = lambda name: "") -> tuple[MatrixSet, ...]:
    """(name, dsl) pairs in definition order -> compiled sets in solver order. `resolve`
    maps a name written in a set to a model id (None: unknown); `hint` adds to the message
    for an unknown name. Errors come in upstream's order: each set in turn (parse, then its
    names and references as written), then cycles."""
    trees: dict[str, tuple] = {}
    deps: dict[str, list[str]] = {}
    defined = {name for name, _ in sets}
    for name, dsl in sets:
        try:
            tree = parse(dsl)
        except DSLError as e:
            raise MatrixError(f"set {go_quote(name)}: {e}", name) from None
        refs: list[str] = []
        for part in walk(tree):
            if part[0] == "ident" and resolve(part[1]) is None:
                raise MatrixError(f"set {go_quote(name)}: unknown var or model {go_quote(part[1])}{hint(part[1])}",
                                  name)
            if part[0] == "ref":
                if part[1] not in defined:
                    raise MatrixError(f"set {go_quote(name)} references undefined set {go_quote(part[1])}", name)
                if part[1] not in refs:
                    refs.append(part[1])
        trees[name], deps[name] = tree, refs

    dsl_of = dict(sets)
    roots: dict[str, MatrixNode] = {}
    compiled: list[MatrixSet] = []
    for name in _topological([name for name, _ in sets], deps):
        roots[name] = _link(trees[name], resolve, roots)
        compiled.append(MatrixSet(name=name, dsl=dsl_of[name], root=roots[name],
                                  support=frozenset(_models_in(roots[name]))))
    return tuple(compiled)


def _link(tree: tuple, resolve, roots: Mapping[str, MatrixNode]) -> MatrixNode:
    """Parse tree -> compiled node: names resolved to model ids, `+ref` -> that set's root
    (already compiled: sets are linked in topological order)."""
    kind, payload = tree
    if kind == "ident":
        return ("leaf", resolve(payload))
    if kind == "ref":
        return roots[payload]
    return ("or" if kind == "|" else "and", tuple(_link(child, resolve, roots) for child in payload))


def _models_in(root: MatrixNode) -> set[str]:
    seen: set[int] = set()
    models: set[str] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node[0] == "leaf":
            models.add(node[1])
        else:
            stack.extend(node[1])
    return models


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


def _topological(names: list[str], deps: dict[str, list[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    order: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == 1:
            raise MatrixError(f"circular reference detected involving set {go_quote(name)}", name)
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
