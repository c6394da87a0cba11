"""``${env.NAME}`` substitution on the raw config text, before YAML parsing.

Upstream finds the macros in a comment-free copy of the document (parsed and re-emitted) and
replaces them in the original text, so a macro that appears only in a comment is ignored
and never needs its variable set. If the text is not valid YAML the original text is
scanned instead, so the user sees the env error rather than a confusing parse error.
"""

from __future__ import annotations

import re
from typing import Mapping

from .errors import ConfigError
from .yamlio import compose, scalar_texts

ENV_MACRO = re.compile(r"\$\{env\.([a-zA-Z_][a-zA-Z0-9_]*)\}")


def substitute_env(text: str, environ: Mapping[str, str], source: str = "<string>") -> str:
    try:
        scan = "\n".join(scalar_texts(compose(text, source)))
    except ConfigError:
        scan = text
    result = text
    for match in ENV_MACRO.finditer(scan):
        macro, name = match.group(0), match.group(1)
        where = _where(text, macro, source)
        if name not in environ:
            raise ConfigError(f"{where}: environment variable '{name}' is not set")
        result = result.replace(macro, _yaml_safe(environ[name], name, where))
    return result


def _where(text: str, macro: str, source: str) -> str:
    """``source:line`` of the macro's first use outside a comment-only line, for the message."""
    for number, line in enumerate(text.split("\n"), 1):
        if macro in line and not line.lstrip().startswith("#"):
            return f"{source}:{number}"
    return source


def _yaml_safe(value: str, name: str, where: str) -> str:
    # A line break or NUL would change the YAML structure whatever the quoting context.
    if any(c in value for c in "\n\r\0"):
        raise ConfigError(
            f"{where}: environment variable '{name}' contains newlines or null bytes which are "
            "not allowed in YAML substitution")
    # Escaped for double-quoted YAML strings; in plain scalars the backslashes stay literal,
    # exactly as upstream.
    return value.replace("\\", "\\\\").replace('"', '\\"')
