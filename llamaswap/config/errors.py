"""The one exception the loader raises, and how its message is put together."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be loaded. ``str()`` is the full message.

    The message starts with the file (and line, when the YAML node is known) and the key
    path, then upstream's own error text, so users can find the spot and tests can match
    the upstream wording with ``in``.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def located(message: str, *, source: str, key: str | None = None, line: int | None = None) -> ConfigError:
    """Build a ConfigError prefixed with ``<source>[:line]: [key: ]``. The key is left out
    when upstream's text already begins with it (``selectors.s.strategy is required``), so
    the path is not said twice."""
    where = source if line is None else f"{source}:{line}"
    if key and not _names_key(message, key):
        return ConfigError(f"{where}: {key}: {message}")
    return ConfigError(f"{where}: {message}")


def _names_key(message: str, key: str) -> bool:
    """Whether `message` begins with the key path `key` (or a deeper one: ``key[0]``)."""
    return message.startswith(key) and message[len(key):len(key) + 1] in ("", " ", ":", ".", "[")
