"""YAML parsing with yaml.v3's rules instead of PyYAML's YAML 1.1 defaults.

Upstream decodes with gopkg.in/yaml.v3, which differs from ``yaml.safe_load`` in ways a user
would notice: ``yes``/``on`` are strings (except in a bool field), ``1:30`` is a string, dates
stay strings, a string field keeps the scalar's text as written (``1.50`` stays ``1.50``),
and a duplicate mapping key is an error. So we only let PyYAML build the node tree and
resolve plain scalars ourselves. Every node keeps its line for error messages.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Iterator

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError, located
from .gocompat import go_quote
from .yamltabs import GoTabsScanner

PLAIN = "!plain"  # marker tag: a plain scalar without an explicit tag, resolved later
_MERGE = "<<"


def make_loader(base: type) -> type:
    """A loader class that builds nodes only, tagging plain scalars PLAIN instead of
    guessing YAML 1.1 types. ``base`` is CSafeLoader when libyaml is there; the zipapp
    carries only pure-Python PyYAML, so SafeLoader must give the same result (its scanner
    gets libyaml's tab rules, yamltabs.py)."""
    bases = (GoTabsScanner, base) if issubclass(base, yaml.scanner.Scanner) else (base,)

    class Loader(*bases):  # type: ignore[misc, valid-type]
        def resolve(self, kind, value, implicit):  # PyYAML hook
            if kind is ScalarNode and implicit[0]:
                return PLAIN
            return super().resolve(kind, value, implicit)

    return Loader


_Loader = make_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def compose(text: str, source: str) -> Node | None:
    """Parse ``text`` into a node tree; a syntax error names line and column. Every node's
    ``start_mark.name`` is ``source``, so a tree merged from several files (-config-dir)
    still knows where each value came from."""
    stream = io.StringIO(text)
    stream.name = source
    try:
        return yaml.compose(stream, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = ": ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError(f"{source}: yaml: {where}{problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: yaml: {e}") from None


# --- scalar resolution (yaml.v3 resolve.go) ----------------------------------------------

_NULLS = {"", "~", "null", "Null", "NULL"}
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_SPECIAL_FLOATS = {
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf,
    "+.inf": math.inf, "+.Inf": math.inf, "+.INF": math.inf,
    "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
}
_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d?-\d\d?([Tt ]|$)")
_GO_INT = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$")
_INT64 = 1 << 63


def _go_parse_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64) / ParseUint, after yaml.v3 removed underscores."""
    if not _GO_INT.match(text):
        return None
    sign = -1 if text[0] == "-" else 1
    body = text.lstrip("+-")
    prefix = body[:2].lower()
    if prefix in ("0x", "0o", "0b"):
        value = int(body[2:], {"0x": 16, "0o": 8, "0b": 2}[prefix])
    elif len(body) > 1 and body[0] == "0":
        value = int(body[1:], 8)
    else:
        value = int(body)
    value *= sign
    if -_INT64 <= value < (1 << 64):
        return value
    return None


def resolve_plain(text: str) -> tuple[str, Any]:
    """(short tag, value) for a plain scalar, as yaml.v3 would decode it into interface{}."""
    if text in _NULLS:
        return "!!null", None
    if text in _BOOLS:
        return "!!bool", _BOOLS[text]
    if text in _SPECIAL_FLOATS:
        return "!!float", _SPECIAL_FLOATS[text]
    if text[:1] in "+-0123456789.":
        if _TIMESTAMP.match(text):
            return "!!timestamp", text  # yaml.v3 hands timestamps to interface{} as strings
        plain = text.replace("_", "")
        number = _go_parse_int(plain)
        if number is not None:
            return "!!int", number
        if _YAML_FLOAT.match(plain):
            return "!!float", float(plain)
    return "!!str", text


def scalar_tag_value(node: ScalarNode) -> tuple[str, Any]:
    if node.tag == PLAIN:
        return resolve_plain(node.value)
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    if tag in ("!!int", "!!float", "!!bool", "!!null"):
        resolved_tag, value = resolve_plain(node.value)
        if resolved_tag == tag or (tag == "!!float" and resolved_tag == "!!int"):
            return tag, float(value) if tag == "!!float" else value
    return "!!str", node.value


def short_tag(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "!!map"
    if isinstance(node, SequenceNode):
        return "!!seq"
    return scalar_tag_value(node)[0]


def is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and short_tag(node) == "!!null")


# --- typed decoding ----------------------------------------------------------------------

class Decoder:
    """Decodes nodes into plain Python values the way yaml.v3 decodes into Go types.

    Errors carry the source, the line and the key path; type mismatches use yaml.v3's
    ``cannot unmarshal !!str `abcd` into int`` wording.
    """

    def __init__(self, source: str):
        self.source = source

    def error(self, message: str, key: str | None = None, node: Node | None = None) -> ConfigError:
        """An error at ``node``: its own file (see compose) and line, else this decoder's."""
        mark = node.start_mark if node is not None else None
        if mark is None:
            return located(message, source=self.source, key=key)
        return located(message, source=mark.name or self.source, key=key, line=mark.line + 1)

    def type_error(self, node: Node, go_type: str, key: str) -> ConfigError:
        tag = short_tag(node)
        if tag in ("!!map", "!!seq"):
            shown = ""
        else:
            value = node.value
            shown = f" `{value[:7]}...`" if len(value) > 10 else f" `{value}`"
        line = node.start_mark.line + 1
        return self.error(f"yaml: unmarshal errors: line {line}: cannot unmarshal {tag}{shown} into {go_type}",
                          key, node)

    # mappings

    def items(self, node: Node, key: str, go_type: str) -> Iterator[tuple[str, Node, Node]]:
        """(key text, key node, value node) of a mapping, merge keys applied, duplicates refused."""
        if is_null(node):
            return iter(())
        if not isinstance(node, MappingNode):
            raise self.type_error(node, go_type, key)
        return iter(self._merged(node, key))

    def _merged(self, node: MappingNode, key: str) -> list[tuple[str, Node, Node]]:
        explicit: dict[str, tuple[str, Node, Node]] = {}
        merged: dict[str, tuple[str, Node, Node]] = {}
        for k_node, v_node in node.value:
            if isinstance(k_node, ScalarNode) and k_node.tag == PLAIN and k_node.value == _MERGE:
                sources = v_node.value if isinstance(v_node, SequenceNode) else [v_node]
                for src in sources:
                    if not isinstance(src, MappingNode):
                        raise self.error("yaml: map merge requires map or sequence of maps as the value",
                                         key, v_node)
                    for entry in self._merged(src, key):
                        merged.setdefault(entry[0], entry)
                continue
            name = self.key_text(k_node, key)
            if name in explicit:
                first = explicit[name][1]
                raise self.error(
                    f"yaml: unmarshal errors: line {k_node.start_mark.line + 1}: mapping key "
                    f"{go_quote(name)} already defined at line {first.start_mark.line + 1}",
                    key, k_node)
            explicit[name] = (name, k_node, v_node)
        # explicit keys win and keep their written order; merged-only keys follow
        return list(explicit.values()) + [v for k, v in merged.items() if k not in explicit]

    def key_text(self, node: Node, key: str) -> str:
        if not isinstance(node, ScalarNode):
            raise self.type_error(node, "string", key)
        return node.value

    def mapping(self, node: Node | None, key: str, go_type: str) -> dict[str, Node]:
        if node is None:
            return {}
        return {k: v for k, _, v in self.items(node, key, go_type)}

    # scalars

    def string(self, node: Node | None, key: str, default: str = "") -> str:
        if is_null(node):
            return default
        if not isinstance(node, ScalarNode):
            raise self.type_error(node, "string", key)
        return node.value

    def integer(self, node: Node | None, key: str, default: int = 0) -> int:
        if is_null(node):
            return default
        if isinstance(node, ScalarNode):
            tag, value = scalar_tag_value(node)
            if tag == "!!int" and -_INT64 <= value < _INT64:
                return value
            if tag == "!!float" and math.isfinite(value) and abs(value) < _INT64:
                return int(value)  # yaml.v3 truncates a float written into an int field
        raise self.type_error(node, "int", key)

    def number(self, node: Node | None, key: str, default: float = 0) -> float:
        """An int field where we also accept fractions (our own keys only)."""
        if is_null(node):
            return default
        if isinstance(node, ScalarNode):
            tag, value = scalar_tag_value(node)
            if tag in ("!!int", "!!float") and math.isfinite(value):
                return value
        raise self.type_error(node, "int", key)

    def boolean(self, node: Node | None, key: str, default: bool = False) -> bool:
        if is_null(node):
            return default
        if isinstance(node, ScalarNode):
            tag, value = scalar_tag_value(node)
            if tag == "!!bool":
                return value
            if tag == "!!str":  # yaml.v3's YAML 1.1 courtesy for typed bool fields
                if value in ("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"):
                    return True
                if value in ("n", "N", "no", "No", "NO", "off", "Off", "OFF"):
                    return False
        raise self.type_error(node, "bool", key)

    def optional_bool(self, node: Node | None, key: str) -> bool | None:
        return None if is_null(node) else self.boolean(node, key)

    def strings(self, node: Node | None, key: str) -> list[str]:
        if is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            raise self.type_error(node, "[]string", key)
        return [self.string(item, f"{key}[{i}]") for i, item in enumerate(node.value)]

    def any(self, node: Node | None, key: str) -> Any:
        """A value decoded into interface{}: dict, list or resolved scalar."""
        if node is None:
            return None
        if isinstance(node, ScalarNode):
            return scalar_tag_value(node)[1]
        if isinstance(node, SequenceNode):
            return [self.any(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return {k: self.any(v, f"{key}.{k}") for k, _, v in self.items(node, key, "map[string]interface {}")}

    def any_map(self, node: Node | None, key: str) -> dict[str, Any]:
        if is_null(node):
            return {}
        return {k: self.any(v, f"{key}.{k}") for k, _, v in self.items(node, key, "map[string]interface {}")}


def scalar_texts(node: Node | None) -> Iterator[str]:
    """Every scalar's text in the tree (keys and values), in document order."""
    seen: set[int] = set()
    stack = [node] if node is not None else []
    out: list[str] = []
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ScalarNode):
            out.append(current.value)
        elif isinstance(current, SequenceNode):
            stack.extend(reversed(current.value))
        elif isinstance(current, MappingNode):
            for k, v in reversed(current.value):
                stack.append(v)
                stack.append(k)
    return iter(out)
