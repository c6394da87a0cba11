"""JSON of any nesting depth: what the backends and upstream (gjson) accept, we parse too.

CPython's ``json`` parses and encodes recursively and raises RecursionError once a document
nests deeper than the interpreter's recursion limit (about a thousand levels); llama-server
and upstream take any depth. ``loads`` and ``dumps`` call ``json`` first, at C speed, and only
a RecursionError brings a document to the iterative parser and encoder below, which give the
same values and the same text as ``json`` would with no limit.

Repeated keys: ``first_key_wins`` keeps the first value of a key that appears twice in one
object, the one gjson (and so upstream) reads; ``json``'s default keeps the last.
"""

from __future__ import annotations

import json
import math
import re
from json.decoder import JSONDecodeError, scanstring
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_CONSTANTS = {"null": None, "true": True, "false": False,
              "NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def loads(data: bytes | str, *, first_key_wins: bool = False) -> Any:
    """``json.loads`` without a depth limit; raises ValueError (JSONDecodeError or
    UnicodeDecodeError) for what is not JSON."""
    try:
        if first_key_wins:
            return json.loads(data, object_pairs_hook=_first_wins)
        return json.loads(data)
    except RecursionError:
        pass
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    return parse(data, first_key_wins=first_key_wins)


def dumps(obj: Any, *, ensure_ascii: bool = True,
          separators: tuple[str, str] = (", ", ": ")) -> str:
    """``json.dumps(obj, ensure_ascii=, separators=)`` without a depth limit."""
    try:
        return json.dumps(obj, ensure_ascii=ensure_ascii, separators=separators)
    except RecursionError:
        return encode(obj, ensure_ascii=ensure_ascii, separators=separators)


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def parse(s: str, *, first_key_wins: bool = False) -> Any:
    """Parse a JSON text with an explicit stack instead of recursion."""
    containers: list[Any] = []  # the open arrays and objects, innermost last
    keys: list[str | None] = []  # for each open object, the key whose value comes next
    pos = _WS.match(s, 0).end()
    while True:
        # one value starts at pos
        c = s[pos:pos + 1]
        if c == "{":
            pos = _WS.match(s, pos + 1).end()
            if s[pos:pos + 1] == "}":
                value: Any = {}
                pos += 1
            else:
                key, pos = _key(s, pos)
                containers.append({})
                keys.append(key)
                continue
        elif c == "[":
            pos = _WS.match(s, pos + 1).end()
            if s[pos:pos + 1] == "]":
                value = []
                pos += 1
            else:
                containers.append([])
                keys.append(None)
                continue
        elif c == '"':
            value, pos = scanstring(s, pos + 1, True)
        else:
            value, pos = _scalar(s, pos)
        # place it, closing every container it completes
        while True:
            if not containers:
                end = _WS.match(s, pos).end()
                if end != len(s):
                    raise JSONDecodeError("Extra data", s, end)
                return value
            top = containers[-1]
            if isinstance(top, dict):
                key = keys[-1]
                if not first_key_wins or key not in top:
                    top[key] = value
            else:
                top.append(value)
            pos = _WS.match(s, pos).end()
            c = s[pos:pos + 1]
            if c == ",":
                pos = _WS.match(s, pos + 1).end()
                if isinstance(top, dict):
                    keys[-1], pos = _key(s, pos)
                break
            if c == ("}" if isinstance(top, dict) else "]"):
                value = containers.pop()
                keys.pop()
                pos += 1
                continue
            raise JSONDecodeError("Expecting ',' delimiter", s, pos)


def _key(s: str, pos: int) -> tuple[str, int]:
    """An object's key and its colon; returns the position of the value."""
    if s[pos:pos + 1] != '"':
        raise JSONDecodeError("Expecting property name enclosed in double quotes", s, pos)
    key, pos = scanstring(s, pos + 1, True)
    pos = _WS.match(s, pos).end()
    if s[pos:pos + 1] != ":":
        raise JSONDecodeError("Expecting ':' delimiter", s, pos)
    return key, _WS.match(s, pos + 1).end()


def _scalar(s: str, pos: int) -> tuple[Any, int]:
    m = _NUMBER.match(s, pos)
    if m is not None:
        integer, frac, exp = m.groups()
        if frac or exp:
            return float(integer + (frac or "") + (exp or "")), m.end()
        return int(integer), m.end()
    for word, value in _CONSTANTS.items():
        if s.startswith(word, pos):
            return value, pos + len(word)
    raise JSONDecodeError("Expecting value", s, pos)


class _Text(str):
    """Output text on the encoder's work stack (as opposed to a value still to encode)."""


def encode(obj: Any, *, ensure_ascii: bool = True,
           separators: tuple[str, str] = (", ", ": ")) -> str:
    """Encode with an explicit stack instead of recursion, as ``json.dumps`` would."""
    quote = encode_basestring_ascii if ensure_ascii else encode_basestring
    item_sep, key_sep = _Text(separators[0]), separators[1]
    out: list[str] = []
    work: list[Any] = [obj]
    while work:
        o = work.pop()
        if type(o) is _Text:
            out.append(o)
        elif isinstance(o, str):
            out.append(quote(o))
        elif o is None:
            out.append("null")
        elif o is True:
            out.append("true")
        elif o is False:
            out.append("false")
        elif isinstance(o, int):
            out.append(int.__repr__(o))
        elif isinstance(o, float):
            out.append(_float(o))
        elif isinstance(o, dict):
            if not o:
                out.append("{}")
                continue
            out.append("{")
            work.append(_Text("}"))
            for i, (k, v) in enumerate(reversed(o.items())):
                work.append(v)
                work.append(_Text(quote(_key_text(k)) + key_sep))
                if i < len(o) - 1:
                    work.append(item_sep)
        elif isinstance(o, (list, tuple)):
            if not o:
                out.append("[]")
                continue
            out.append("[")
            work.append(_Text("]"))
            for i, v in enumerate(reversed(o)):
                work.append(v)
                if i < len(o) - 1:
                    work.append(item_sep)
        else:
            raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
    return "".join(out)


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o in (math.inf, -math.inf):
        return "Infinity" if o > 0 else "-Infinity"
    return float.__repr__(o)


def _key_text(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, float):
        return _float(k)
    if k is True or k is False or k is None:
        return {True: "true", False: "false", None: "null"}[k]
    if isinstance(k, int):
        return int.__repr__(k)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")
