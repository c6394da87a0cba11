"""Streaming JSON: copy the values at a few paths of a document fed in pieces, skip the rest.

The activity parser uses it to pick ``usage`` and ``timings`` out of a response body without
ever holding the body: it tracks only the document structure (objects, arrays, strings) and
copies the bytes of a wanted value, which are small.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from llamaswap.http import deepjson

_STRUCT = re.compile(rb'["{}\[\],:]')
# inside an array, commas matter only for the top-level element reset: skipping them makes
# long number arrays (embeddings) several times faster
_STRUCT_IN_ARRAY = re.compile(rb'["{}\[\]]')
_STRING_STOP = re.compile(rb'["\\]')
_MAX_KEY = 64
MAX_VALUE = 256 * 1024  # longest value kept; usage/timings objects are a few hundred bytes
ANY = "*"  # path element for "any array element"


class _Frame:
    __slots__ = ("kind", "key", "expect_key")

    def __init__(self, kind: str):
        self.kind = kind  # "o" or "a"
        self.key: bytes | None = None
        self.expect_key = kind == "o"


_tap_paths: dict[tuple, tuple] = {}  # (wanted, reset) -> the byte-key forms, computed once


class JsonValueTap:
    """Feed a JSON document in pieces; afterwards ``values`` maps each wanted path that was
    seen to its decoded value (the last one when it occurs more than once).

    Paths are tuples of keys (``bytes``) and ``ANY`` for array elements. ``valid`` is False
    when the structure was broken (unbalanced, truncated, or trailing data)."""

    def __init__(self, wanted: Iterable[tuple], reset_on_element: tuple | None = None):
        wanted = tuple(wanted)
        paths = _tap_paths.get((wanted, reset_on_element))
        if paths is None:
            key_paths = frozenset(self._key_path(p) for p in wanted)
            paths = (key_paths, max((len(p) for p in key_paths), default=0),
                     self._key_path(reset_on_element) if reset_on_element else None)
            if len(_tap_paths) < 64:  # one entry per call site in practice
                _tap_paths[(wanted, reset_on_element)] = paths
        self._wanted, self._max_depth, self._reset = paths
        # _reset: a path cleared whenever a new top-level array element starts (infill: the
        # *last* element's timings, not the last timings seen)
        self._stack: list[_Frame] = []
        self._in_string = False
        self._escape = False
        self._key_buf: bytearray | None = None
        self._cap: bytearray | None = None
        self._cap_depth = -1
        self._cap_path: tuple = ()
        self._top_done = False
        self.broken = False
        self.top_kind = ""  # "o", "a", or "" for a scalar document
        self.values: dict[tuple, Any] = {}

    @staticmethod
    def _key_path(path: tuple) -> tuple:
        return tuple(k.encode() if isinstance(k, str) and k != ANY else k for k in path)

    @property
    def valid(self) -> bool:
        return not self.broken and not self._stack and not self._in_string and self._top_done

    def _path(self) -> tuple:
        return tuple(f.key if f.kind == "o" else ANY for f in self._stack)

    def feed(self, data: bytes) -> None:
        if self.broken or not data:
            return
        i, n = 0, len(data)
        cap_from = 0 if self._cap is not None else -1
        while i < n:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    if self._key_buf is not None and len(self._key_buf) < _MAX_KEY:
                        self._key_buf += data[i:i + 1]
                    i += 1
                    continue
                m = _STRING_STOP.search(data, i)
                end = m.start() if m else n
                if self._key_buf is not None and len(self._key_buf) < _MAX_KEY:
                    self._key_buf += data[i:end][:_MAX_KEY]
                if m is None:
                    break
                if data[end] == 0x5C:  # backslash
                    if self._key_buf is not None and len(self._key_buf) < _MAX_KEY:
                        self._key_buf += b"\\"
                    self._escape = True
                    i = end + 1
                    continue
                self._in_string = False
                i = end + 1
                if self._key_buf is not None:
                    top = self._stack[-1]
                    top.key = bytes(self._key_buf) if len(self._key_buf) < _MAX_KEY else None
                    top.expect_key = False
                    self._key_buf = None
                continue
            stack = self._stack
            if stack and stack[-1].kind == "a" and (self._reset is None or len(stack) > 1):
                m = _STRUCT_IN_ARRAY.search(data, i)
            else:
                m = _STRUCT.search(data, i)
            if m is None:
                if not self._stack and data[i:].strip():
                    self._scalar_at_top(data[i:])
                break
            j = m.start()
            if not self._stack and data[i:j].strip():
                self._scalar_at_top(data[i:j])
                if self.broken:
                    return
            c = data[j]
            i = j + 1
            if c == 0x22:  # quote
                self._in_string = True
                if self._stack and self._stack[-1].kind == "o" and self._stack[-1].expect_key \
                        and self._cap is None:
                    self._key_buf = bytearray()
                elif not self._stack:
                    self._start_top()
            elif c == 0x7B or c == 0x5B:  # { [
                if not self._stack:
                    self._start_top()
                    if self.broken:
                        return
                    self.top_kind = "o" if c == 0x7B else "a"
                self._stack.append(_Frame("o" if c == 0x7B else "a"))
            elif c == 0x7D or c == 0x5D:  # } ]
                if self._cap is not None and len(self._stack) == self._cap_depth:
                    self._end_capture(data, cap_from, j)
                    cap_from = -1
                if not self._stack or self._stack[-1].kind != ("o" if c == 0x7D else "a"):
                    self.broken = True
                    return
                self._stack.pop()
                if not self._stack:
                    self._top_done = True
            elif c == 0x2C:  # ,
                if self._cap is not None and len(self._stack) == self._cap_depth:
                    self._end_capture(data, cap_from, j)
                    cap_from = -1
                if not self._stack:
                    self.broken = True
                    return
                top = self._stack[-1]
                if top.kind == "o":
                    top.expect_key = True
                    top.key = None
                elif self._reset is not None and len(self._stack) == 1:
                    self.values.pop(self._reset, None)
            elif c == 0x3A:  # :
                if self._cap is None and self._stack and len(self._stack) <= self._max_depth:
                    path = self._path()
                    if path in self._wanted:
                        self._cap = bytearray()
                        self._cap_depth = len(self._stack)
                        self._cap_path = path
                        cap_from = i
        if self._cap is not None and cap_from >= 0:
            self._cap += data[cap_from:]
            if len(self._cap) > MAX_VALUE:
                self._cap = None  # not a usage object: give up on it

    def _start_top(self) -> None:
        if self._top_done:
            self.broken = True  # a second document: gjson calls this invalid too

    def _scalar_at_top(self, text: bytes) -> None:
        if self._top_done:
            self.broken = True
        else:
            self._top_done = True

    def _end_capture(self, data: bytes, cap_from: int, end: int) -> None:
        assert self._cap is not None
        if cap_from >= 0:
            self._cap += data[cap_from:end]
        raw = bytes(self._cap).strip()
        self._cap = None
        if len(raw) > MAX_VALUE:
            return
        try:
            self.values[self._cap_path] = deepjson.loads(raw)
        except ValueError:
            pass
