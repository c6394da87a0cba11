"""``${name}`` macros: validation, substitution order and the unknown-macro check.

Macros are an ordered list of (name, value). For a model the list is
``[MODEL_ID, global macros..., model macros]`` (a model macro replaces a global of the same
name in place) and it is applied last-to-first with plain string replacement. So a macro
can use only macros defined before it, ``${MODEL_ID}`` works everywhere, and a global macro
that mentions ``${tag}`` picks up a model's override of ``tag``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from .envsubst import ENV_MACRO
from .gocompat import go_type_name, go_value_str

MACRO_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
MACRO_REF = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
RESERVED = ("PORT", "MODEL_ID")

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


def replace(text: str, name: str, value: Any) -> str:
    return text.replace("${" + name + "}", go_value_str(value))


def replace_all(text: str, macros: Sequence[Macro]) -> str:
    """Apply ``macros`` last-to-first."""
    for name, value in reversed(macros):
        text = replace(text, name, value)
    return text


def replace_in_value(value: Any, name: str, macro_value: Any) -> Any:
    """Type-preserving substitution of one macro in nested data (mapping keys untouched).

    A string that is exactly ``${name}`` becomes the macro's typed value; any other string
    gets the value interpolated as text.
    """
    if isinstance(value, str):
        slug = "${" + name + "}"
        if value == slug:
            return macro_value
        return value.replace(slug, go_value_str(macro_value)) if slug in value else value
    if isinstance(value, dict):
        return {k: replace_in_value(v, name, macro_value) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_in_value(v, name, macro_value) for v in value]
    return value


def replace_all_in_value(value: Any, macros: Sequence[Macro]) -> Any:
    for name, macro_value in reversed(macros):
        value = replace_in_value(value, name, macro_value)
    return value


def leftover(text: str) -> list[str]:
    """Names of ``${name}`` references still in ``text``."""
    return MACRO_REF.findall(text)


def nested_leftover(value: Any, context: str) -> str | None:
    """Upstream's error for the first unresolved macro or env macro in nested data."""
    for text in _strings(value):
        names = MACRO_REF.findall(text)
        if names:
            return f"{context}: unknown macro '${{{names[0]}}}'"
        env = ENV_MACRO.findall(text)
        if env:
            return f"{context}: environment variable '{env[0]}' not set"
    return None


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
