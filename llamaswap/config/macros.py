"""``${name}`` macros, expanded on the YAML node tree before anything is decoded
(upstream-head.md section 11).

Order, as today's upstream:
1. ``${env.NAME}`` was substituted in the text already (envsubst.py).
2. Declarations are read and validated: the global ``macros`` and each model's ``macros``
   (an ordered mapping of scalars; ``PID``, ``PORT`` and ``MODEL_ID`` are reserved).
3. Global macros are applied to every top-level value but ``models`` (``startPort``,
   ``peers``, ``routing``, ``hooks``, ...).
4. Each model, in sorted id order, gets ``[MODEL_ID, global macros..., model macros]`` (a
   model macro replaces a global of the same name in place) applied to every value it holds,
   last-to-first, so a macro can use only macros defined before it, ``${MODEL_ID}`` works
   everywhere and a global macro that mentions ``${tag}`` picks up a model's override.
   ``filters.setParamsByID`` keys are expanded too (other mapping keys never are).
5. ``${PORT}`` is allocated from ``startPort`` in the same order, only to models whose
   ``cmd`` uses it, and applied to the whole model. On a reload (``keep_ports``: the ports
   of the config in service, with its ``startPort``), a model that is still there keeps its
   port and new models take the lowest ports no model of that config had (a removed model
   may still be draining on its own), so a model added or removed does not re-number the
   others (they would restart).
6. Whatever placeholder is left is an error, except ``${PID}`` in ``cmdStop``, ``sleep``
   and ``wake`` (filled in when they run).

A value that is exactly ``${m}`` takes the macro's type (``context: ${ctx}`` is an int);
any other use interpolates text and gives a string. Anchors, aliases and ``<<`` merge keys
work anywhere: a shared node is expanded afresh in each place it is used (nodes are never
changed in place; expanded scalars keep their line for error messages). Unlike upstream,
which re-encodes the whole tree, a value no macro touched keeps its text as written
(``name: 1.50`` stays ``1.50``), as at the reference revision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .command import strip_comments
from .envsubst import ENV_MACRO
from .gocompat import go_quote, go_type_name, go_value_str
from .yamlio import Decoder, is_null, scalar_tag_value

MACRO_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
MACRO_REF = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
RESERVED = ("PID", "PORT", "MODEL_ID")
DEFAULT_PROXY = "http://localhost:${PORT}"

# upstream's Config fields: only these top-level keys are checked for leftover placeholders
# (a key of our own joins this list; anything else, e.g. an `x-defaults:` block that only
# holds anchors, is left alone)
TOP_LEVEL_KEYS = (
    "healthCheckTimeout", "logRequests", "logLevel", "logTimeFormat", "logToStdout",
    "metricsMaxInMemory", "captureBuffer", "store", "ui", "performance", "globalTTL",
    "unloadTimeout", "models", "profiles", "selectors", "routing", "groups", "matrix",
    "macros", "startPort", "hooks", "sendLoadingState", "includeAliasesInList", "apiKeys",
    "peers", "upstream", "memory",
)
# model fields whose leftovers upstream reports as "found in <model>.<field>"
_NAMED_FIELDS = ("cmd", "cmdStop", "sleep", "wake", "proxy", "checkEndpoint",
                 "filters.stripParams", "name", "description")
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_TYPED_TAGS = {bool: "tag:yaml.org,2002:bool", int: "tag:yaml.org,2002:int",
               float: "tag:yaml.org,2002:float"}

Macro = tuple[str, Any]


class MacroError(Exception):
    """A macro problem; the message is upstream's text."""


def validate_macro(name: str, value: Any) -> None:
    if len(name) >= 64:
        raise MacroError(f"macro name '{name}' exceeds maximum length of 63 characters")
    if not MACRO_NAME.match(name):
        raise MacroError(f"macro name '{name}' contains invalid characters, must match pattern ^[a-zA-Z0-9_-]+$")
    if isinstance(value, str):
        if "${" + name + "}" in value:
            raise MacroError(f"macro '{name}' contains self-reference")
    elif value is None or not isinstance(value, (bool, int, float)):
        raise MacroError(f"macro '{name}' has invalid type {go_type_name(value)}, "
                         "must be a scalar type (string, int, float, or bool)")
    if name in RESERVED:
        raise MacroError(f"macro name '{name}' is reserved")


def merge(model_id: str, global_macros: Sequence[Macro], model_macros: Sequence[Macro]) -> list[Macro]:
    merged: list[Macro] = [("MODEL_ID", model_id), *global_macros]
    for name, value in model_macros:
        for i, (existing, _) in enumerate(merged):
            if existing == name:
                merged[i] = (name, value)
                break
        else:
            merged.append((name, value))
    return merged


def replace_all(text: str, macros: Sequence[Macro]) -> str:
    """Plain text replacement, last macro first (mapping keys; ``${PID}`` at stop time)."""
    for name, value in reversed(macros):
        text = text.replace("${" + name + "}", go_value_str(value))
    return text


# --- nodes ---------------------------------------------------------------------------------

def _is_string(node: ScalarNode) -> bool:
    # what yaml.v3 hands to an interface{} as a Go string (timestamps included)
    return scalar_tag_value(node)[0] in ("!!str", "!!timestamp")


def _str_node(text: str, like: Node) -> ScalarNode:
    return ScalarNode(_STR, text, like.start_mark, like.end_mark, style='"')


def _typed_node(value: Any, like: Node) -> ScalarNode:
    if isinstance(value, str):
        return _str_node(value, like)
    return ScalarNode(_TYPED_TAGS[type(value)], go_value_str(value), like.start_mark, like.end_mark)


def _mapping(pairs: list[tuple[Node, Node]], like: Node) -> MappingNode:
    return MappingNode(_MAP, pairs, like.start_mark, like.end_mark)


def substitute(node: Node, macros: Sequence[Macro]) -> Node:
    """``node`` with ``macros`` applied (last first) to every string value, type-preserving;
    unchanged subtrees are returned as they are."""
    if isinstance(node, ScalarNode):
        if "${" not in node.value or not _is_string(node):
            return node
        text = node.value
        for name, value in reversed(macros):
            slug = "${" + name + "}"
            if text == slug:
                if not isinstance(value, str):
                    return _typed_node(value, node)
                text = value
            elif slug in text:
                text = text.replace(slug, go_value_str(value))
        return node if text == node.value else _str_node(text, node)
    if isinstance(node, SequenceNode):
        items = [substitute(item, macros) for item in node.value]
        if all(a is b for a, b in zip(items, node.value)):
            return node
        return SequenceNode(_SEQ, items, node.start_mark, node.end_mark)
    if isinstance(node, MappingNode):
        pairs = [(k, substitute(v, macros)) for k, v in node.value]
        if all(a[1] is b[1] for a, b in zip(pairs, node.value)):
            return node
        return _mapping(pairs, node)
    return node


@dataclass
class Expanded:
    root: MappingNode | None  # top-level and model merge keys materialised, `macros` removed
    ports: dict[str, int] = field(default_factory=dict)  # model id -> its ${PORT}
    warnings: list[str] = field(default_factory=list)


class MacroEngine:
    """Runs steps 2-6 of the module docstring over one composed (and merged) document."""

    def __init__(self, decoder: Decoder, start_port: Callable[[Node | None], int],
                 keep_ports: tuple[int, Mapping[str, int]] | None = None):
        self.d = decoder
        self.start_port = start_port  # decodes and checks startPort (the loader's rule)
        self.keep_ports = keep_ports  # (startPort, model id -> port) of the config in service
        self.warnings: list[str] = []

    def fail(self, message: str, key: str | None, node: Node | None) -> Exception:
        return self.d.error(message, key, node)

    def macro_list(self, node: Node | None, key: str, prefix: str = "") -> list[Macro]:
        """An ordered macro mapping, each entry validated."""
        if is_null(node):
            return []
        if not isinstance(node, MappingNode):
            raise self.fail("macros must be a mapping", key, node)
        out = []
        for k, v in node.value:
            name = self.d.key_text(k, key)
            value = self.d.any(v, f"{key}.{name}")
            try:
                validate_macro(name, value)
            except MacroError as e:
                raise self.fail(f"{prefix}{e}", f"{key}.{name}", k) from None
            out.append((name, value))
        return out

    def run(self, root: Node | None) -> Expanded:
        d = self.d
        if is_null(root):
            return Expanded(None)
        top = list(d.items(root, "(top level)", "config.Config"))
        fields = {name: v for name, _, v in top}
        global_macros = self.macro_list(fields.get("macros"), "macros")
        models_node = fields.get("models")
        models = {mid: v for mid, _, v in d.items(models_node, "models", "map[string]config.ModelConfig")}
        model_fields: dict[str, list[tuple[str, Node, Node]]] = {}
        model_macros: dict[str, list[Macro]] = {}
        for mid in sorted(models):
            if not isinstance(models[mid], MappingNode):
                continue  # decoding reports it
            entries = list(d.items(models[mid], f"models.{mid}", "config.ModelConfig"))
            macros_node = next((v for name, _, v in entries if name == "macros"), None)
            model_macros[mid] = self.macro_list(macros_node, f"models.{mid}.macros", f"model {mid}: ")
            model_fields[mid] = [e for e in entries if e[0] != "macros"]

        expanded_top: dict[str, Node] = {}
        for name, _, v in top:
            if name not in ("models", "macros"):
                expanded_top[name] = substitute(v, global_macros)
        next_port = self.start_port(expanded_top.get("startPort"))
        kept: dict[str, int] = {}
        taken: set[int] = set()
        if self.keep_ports is not None and self.keep_ports[0] == next_port:
            kept = {mid: port for mid, port in self.keep_ports[1].items() if mid in model_fields}
            # a removed model's port too: its process may still be draining on it
            taken = set(self.keep_ports[1].values())

        ports: dict[str, int] = {}
        new_models: dict[str, Node] = dict(models)
        for mid in sorted(model_fields):
            while next_port in taken:
                next_port += 1
            new_models[mid], port = self._model(mid, models[mid], model_fields[mid],
                                                merge(mid, global_macros, model_macros[mid]),
                                                kept.get(mid, next_port))
            if port is not None:
                ports[mid] = port
                if mid not in kept:
                    next_port += 1

        pairs: list[tuple[Node, Node]] = []
        for name, k, v in top:
            if name == "macros":
                continue
            if name == "models" and isinstance(models_node, MappingNode):
                v = _mapping([(mk, new_models[mid]) for mid, mk, _ in d.items(models_node, "models", "")],
                             models_node)
            else:
                v = expanded_top.get(name, v)
            pairs.append((k, v))
        out = _mapping(pairs, root)
        self._check_leftovers(out)
        return Expanded(out, ports, self.warnings)

    def _model(self, mid: str, node: Node, entries: list[tuple[str, Node, Node]],
               macros: list[Macro], next_port: int) -> tuple[MappingNode, int | None]:
        key = f"models.{mid}"
        pairs: list[tuple[Node, Node]] = []
        has_proxy = False
        for name, k, v in entries:
            if name in ("cmd", "cmdStop") and isinstance(v, ScalarNode) and _is_string(v):
                # comments go before expansion: a macro in a comment line never reaches argv
                stripped = strip_comments(v.value)
                v = v if stripped == v.value else _str_node(stripped, v)
            if name == "proxy":
                if is_null(v):
                    v = _str_node(DEFAULT_PROXY, v)
                has_proxy = True
            pairs.append((k, v))
        if not has_proxy:
            pairs.append((_str_node("proxy", node), _str_node(DEFAULT_PROXY, node)))

        pairs = self._expand_pairs(mid, pairs, macros)
        values = {k.value: v for k, v in pairs}
        cmd_port = _uses_port(values.get("cmd"))
        port = None
        if cmd_port or _uses_port(values.get("proxy")):
            if not cmd_port and not has_proxy:
                # Upstream refuses this (its own example config has such a model); we load it:
                # the port is allocated, though the command is never told about it.
                self.warnings.append(
                    f"model {mid}: cmd does not use ${{PORT}} and no proxy is set, so it gets "
                    f"the default proxy {DEFAULT_PROXY} with a port its command does not know "
                    "about; set proxy to where the server listens")
            elif not cmd_port:
                raise self.fail(f"model {mid}: proxy uses ${{PORT}} but cmd does not - ${{PORT}} is "
                                "only available when used in cmd", f"{key}.proxy", values.get("proxy"))
            port = next_port
            pairs = self._expand_pairs(mid, pairs, [("PORT", port)])

        by_id = self._set_params_by_id(pairs)
        if by_id is not None:
            for k, _ in by_id.value:
                refs = MACRO_REF.findall(k.value)
                if refs:
                    raise self.fail(f"unknown macro '${{{refs[0]}}}' found in model {mid} filters.setParamsByID key",
                                    f"{key}.filters.setParamsByID", k)
        return _mapping(pairs, node), port

    def _expand_pairs(self, mid: str, pairs: list[tuple[Node, Node]],
                      macros: list[Macro]) -> list[tuple[Node, Node]]:
        out = [(k, substitute(v, macros)) for k, v in pairs]
        for i, (k, v) in enumerate(out):
            if k.value == "filters" and isinstance(v, MappingNode):
                out[i] = (k, self._filters_keys(mid, v, macros))
        return out

    def _filters_keys(self, mid: str, filters: MappingNode, macros: list[Macro]) -> MappingNode:
        """``filters.setParamsByID`` with its keys expanded (merge keys materialised)."""
        where = f"models.{mid}.filters"
        pairs = [(k, v) for _, k, v in self.d.items(filters, where, "config.ModelFilters")]
        for i, (k, v) in enumerate(pairs):
            if k.value != "setParamsByID" or not isinstance(v, MappingNode):
                continue
            seen: dict[str, str] = {}
            by_id = []
            for name, key_node, value in self.d.items(v, f"{where}.setParamsByID", ""):
                new = replace_all(name, macros)
                if new in seen:
                    raise self.fail(f"model {mid} filters.setParamsByID: keys {go_quote(name)} and "
                                    f"{go_quote(new)} resolve to the same value",
                                    f"{where}.setParamsByID", key_node)
                seen[new] = name
                by_id.append((key_node if new == name else _str_node(new, key_node), value))
            pairs[i] = (k, _mapping(by_id, v))
        return _mapping(pairs, filters)

    def _set_params_by_id(self, pairs: list[tuple[Node, Node]]) -> MappingNode | None:
        filters = next((v for k, v in pairs if k.value == "filters"), None)
        if not isinstance(filters, MappingNode):
            return None
        by_id = next((v for k, v in filters.value if k.value == "setParamsByID"), None)
        return by_id if isinstance(by_id, MappingNode) else None

    # --- step 6 ------------------------------------------------------------------------------

    def _check_leftovers(self, root: MappingNode) -> None:
        d = self.d
        for name, _, value in d.items(root, "(top level)", "config.Config"):
            if name not in TOP_LEVEL_KEYS:
                continue
            if name != "models":
                self._leftovers(value, name)
                continue
            if not isinstance(value, MappingNode):
                continue
            for mid, _, model in d.items(value, "models", ""):
                if not isinstance(model, MappingNode):
                    continue
                for field_name, _, field_value in d.items(model, f"models.{mid}", ""):
                    if field_name == "env":
                        continue  # the reference revision passed an unknown ${X} here through
                    self._leftovers(field_value, f"models.{mid}.{field_name}", mid, field_name,
                                    allow_pid=field_name in ("cmdStop", "sleep", "wake"))

    def _leftovers(self, node: Node, path: str, mid: str | None = None, field_path: str = "",
                   allow_pid: bool = False) -> None:
        if isinstance(node, ScalarNode):
            if "${" not in node.value or not _is_string(node):
                return
            for ref in MACRO_REF.findall(node.value):
                if ref == "PID" and allow_pid:
                    continue
                raise self.fail(self._leftover_message(ref, path, mid, field_path),
                                f"models.{mid}.{field_path}" if mid is not None else None, node)
            for env in ENV_MACRO.findall(node.value):
                raise self.fail(f"{path}: environment variable '{env}' not set", None, node)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self._leftovers(item, f"{path}[{i}]", mid, field_path, allow_pid)
        elif isinstance(node, MappingNode):
            for name, _, value in self.d.items(node, path, ""):
                self._leftovers(value, f"{path}.{name}", mid,
                                f"{field_path}.{name}" if mid is not None else field_path, allow_pid)

    @staticmethod
    def _leftover_message(ref: str, path: str, mid: str | None, field_path: str) -> str:
        if mid is None:
            return f"{path}: unknown macro '${{{ref}}}'"
        if field_path in _NAMED_FIELDS:
            if ref in ("PORT", "MODEL_ID"):
                return f"macro '${{{ref}}}' should have been substituted in {mid}.{field_path}"
            return f"unknown macro '${{{ref}}}' found in {mid}.{field_path}"
        context = f"model {mid} {field_path}"
        for section in ("capabilities", "metadata"):
            if field_path.startswith(section + "."):
                context = f"model {mid} {section}"
        return f"{context}: unknown macro '${{{ref}}}'"


def _uses_port(node: Node | None) -> bool:
    return isinstance(node, ScalarNode) and _is_string(node) and "${PORT}" in node.value
