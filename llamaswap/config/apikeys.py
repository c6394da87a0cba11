"""``apiKeys``: plain strings (full access, as upstream) beside scoped object entries.

```yaml
apiKeys:
  - sk-admin-123                 # full access
  - key: ${env.TEAM_A_KEY}
    name: team-a                 # required; shown in logs, activity and metrics
    models: ["qwen-*", "embed"]  # shell-style patterns, default ["*"]
    maxInFlight: 4               # default 0: no limit
    admin: false                 # operations routes and the UI; default false
```

A key is a secret: no message built here contains one. Errors name the entry by its
position (``apiKeys[2]``) and, for object entries, its name. Plain strings keep upstream's
checks and texts (which do quote a key that contains a space).
"""

from __future__ import annotations

from dataclasses import dataclass

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError
from .gocompat import go_quote
from .model import PLAIN_KEY_NAME, ApiKey
from .yamlio import Decoder, is_null, scalar_tag_value

FIELDS = ("key", "name", "models", "maxInFlight", "admin")


@dataclass
class RawKey:
    """One decoded entry; ``scoped`` is None for a plain string."""

    index: int
    node: Node
    key: str
    scoped: ApiKey | None = None

    @property
    def where(self) -> str:
        return f"apiKeys[{self.index}]"

    @property
    def label(self) -> str:
        """How messages name the entry: position, and name for object entries."""
        if self.scoped is None:
            return self.where
        return f"{self.where} ({self.scoped.name})"


def decode(d: Decoder, node: Node | None) -> list[RawKey]:
    """Type checks only (they are YAML errors and come first, as upstream's decode)."""
    if is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        raise d.type_error(node, "[]string", "apiKeys")
    out = []
    for i, item in enumerate(node.value):
        if isinstance(item, MappingNode):
            out.append(_decode_object(d, i, item))
        elif isinstance(item, ScalarNode):
            out.append(RawKey(i, item, d.string(item, f"apiKeys[{i}]")))
        else:
            raise d.error("an entry must be a key string or a mapping with key and name",
                          f"apiKeys[{i}]", item)
    return out


def _decode_object(d: Decoder, i: int, node: MappingNode) -> RawKey:
    where = f"apiKeys[{i}]"
    fields = {k: (k_node, v) for k, k_node, v in d.items(node, where, "config.APIKey")}
    name_node = fields.get("name", (None, None))[1]
    name = ""
    if isinstance(name_node, ScalarNode) and not is_null(name_node):
        name = name_node.value.strip()
    label = f"{where} ({name})" if name else where

    def fail(message: str, sub: str | None = None, at: Node | None = None) -> ConfigError:
        return d.error(f"{label}: {message}", f"{where}.{sub}" if sub else where, at or node)

    for k, (k_node, _v) in fields.items():
        if k not in FIELDS:
            import difflib  # only for this message
            close = difflib.get_close_matches(k, FIELDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(FIELDS)})"
            raise fail(f"unknown field {go_quote(k)}{hint}", k, k_node)
    if not name:
        raise fail("name is required for an object key (it is shown instead of the key)", "name")
    if name == PLAIN_KEY_NAME or not name.isprintable():
        raise fail(f"name {go_quote(name)} is not allowed ({PLAIN_KEY_NAME!r} stands for plain "
                   "keys; control characters are refused)", "name", name_node)
    key_node = fields.get("key", (None, None))[1]
    if key_node is None:
        raise fail("key is required", "key")
    if is_null(key_node) or (isinstance(key_node, ScalarNode) and key_node.value == ""):
        raise fail("key is empty (an environment variable that expands to nothing?)", "key", key_node)
    if not isinstance(key_node, ScalarNode):
        raise fail("key must be a string", "key", key_node)
    key = key_node.value
    if " " in key:
        raise fail("key cannot contain spaces", "key", key_node)

    models: tuple[str, ...] = ("*",)
    models_node = fields.get("models", (None, None))[1]
    if not is_null(models_node):
        if not isinstance(models_node, SequenceNode):
            raise fail("models must be a list of model name patterns", "models", models_node)
        patterns = []
        for j, p in enumerate(models_node.value):
            if not isinstance(p, ScalarNode) or scalar_tag_value(p)[0] != "!!str":
                shown = p.value if isinstance(p, ScalarNode) else "a " + type(p).__name__[:-4].lower()
                raise fail(f"models[{j}] must be a string pattern, got {shown} (quote it)",
                           f"models[{j}]", p)
            if p.value == "":
                raise fail(f"models[{j}] is an empty pattern", f"models[{j}]", p)
            patterns.append(p.value)
        models = tuple(patterns)

    limit_node = fields.get("maxInFlight", (None, None))[1]
    try:
        limit = d.integer(limit_node, f"{where}.maxInFlight")
    except ConfigError:
        raise fail("maxInFlight must be a whole number (0: no limit)", "maxInFlight", limit_node) from None
    if limit < 0:
        raise fail(f"maxInFlight must be >= 0 (got {limit})", "maxInFlight", limit_node)
    admin_node = fields.get("admin", (None, None))[1]
    try:
        admin = d.boolean(admin_node, f"{where}.admin")
    except ConfigError:
        raise fail("admin must be true or false", "admin", admin_node) from None
    return RawKey(i, node, key, ApiKey(key, name, models, limit, admin))


def validate(d: Decoder, entries: list[RawKey], node: Node | None) -> tuple[tuple[str, ...], tuple[ApiKey, ...]]:
    """(every key value, the object entries) once the whole list is known."""
    by_key: dict[str, RawKey] = {}
    by_name: dict[str, RawKey] = {}
    for e in entries:
        if e.scoped is None:  # upstream's checks and texts
            if e.key == "":
                raise d.error("empty api key found in apiKeys", "apiKeys", node)
            if " " in e.key:
                # upstream quotes the key here; a config error reaches the log on a failed
                # reload, and no key value may ever appear in a log line
                raise d.error(f"api key cannot contain spaces: {e.label}", "apiKeys", node)
        first = by_key.get(e.key)
        # two equal plain strings load, as upstream; a key that is also an object entry is
        # ambiguous (which scope applies?)
        if first is not None and (first.scoped is not None or e.scoped is not None):
            raise d.error(f"{e.label}: the same key as {first.label}", e.where, e.node)
        by_key.setdefault(e.key, e)
        if e.scoped is not None:
            other = by_name.get(e.scoped.name)
            if other is not None:
                raise d.error(f"{e.label}: name {go_quote(e.scoped.name)} is already used by "
                              f"{other.where}", f"{e.where}.name", e.node)
            by_name[e.scoped.name] = e
    return tuple(e.key for e in entries), tuple(e.scoped for e in entries if e.scoped is not None)
