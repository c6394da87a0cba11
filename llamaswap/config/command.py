"""Turning a ``cmd`` string into an argv list, without a shell.

The rules are upstream's (SanitizeCommand + billziss-gh/golib shlex, POSIX dialect), which
differ from Python's ``shlex.split``: ``\\r`` is not whitespace, inside double quotes a
backslash also escapes ``$`` and a backtick, and there are no comments. One deliberate
difference: upstream lets an unclosed quote run to the end of the command; we refuse it,
because it is always a typo that otherwise surfaces as a confusing backend failure.
"""

from __future__ import annotations

from .errors import ConfigError
from .gocompat import go_trim_space

_SPACE = " \t\n"  # not \r: a stray CR stays part of the argument, as upstream
_DQ_ESCAPABLE = '$`"\\'


def strip_comments(cmd: str) -> str:
    """Drop whole-line ``#`` comments; an inline ``#`` after arguments is kept as a word."""
    return "\n".join(line for line in cmd.split("\n") if not go_trim_space(line).startswith("#"))


def split_command(cmd: str) -> list[str]:
    """Split ``cmd`` into argv. Raises ConfigError on an unclosed quote.

    Returns ``[]`` for a command with no words; callers decide whether that is an error.
    """
    lines = []
    for line in cmd.split("\n"):
        trimmed = go_trim_space(line)
        if trimmed.startswith("#"):
            continue
        # a trailing backslash continues the command on the next line
        lines.append(trimmed[:-1] + " " if trimmed.endswith("\\") else line)
    return _posix_split("\n".join(lines))


def _posix_split(text: str) -> list[str]:
    words: list[str] = []
    word: list[str] | None = None  # None: between words; [] can be a real empty word ("")
    quote = ""  # the open quote character, if any
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if ch == "\\" and quote != "'":
            if nxt in ("\n", ""):  # line continuation (or a dangling backslash): dropped
                i += 2
                continue
            if not quote or nxt in _DQ_ESCAPABLE:
                word = [] if word is None else word
                word.append(nxt)
                i += 2
                continue
            # inside "...", other backslashes are literal
        if quote:
            if ch == quote:
                quote = ""
            else:
                word.append(ch)  # type: ignore[union-attr]
        elif ch in "'\"":
            quote = ch
            if word is None:
                word = []
        elif ch in _SPACE:
            if word is not None:
                words.append("".join(word))
                word = None
        else:
            word = [] if word is None else word
            word.append(ch)
        i += 1
    if quote:
        raise ConfigError(f"unclosed {'single' if quote == chr(39) else 'double'} quote in command")
    if word is not None:
        words.append("".join(word))
    return words
