"""A small header block: ordered, case-insensitive, and cheap to build.

The stdlib parses every header block with the ``email`` package, which costs more than the
rest of a proxied request together. This keeps the part of ``email.message.Message``'s
interface that HTTP code uses: ``get``, ``get_all``, ``items``, ``keys``, ``values``,
``[name]`` (first value or None), ``in``, ``len``, iteration over names.
"""

from __future__ import annotations

import http.client
import re
from typing import Iterator

MAX_LINE = 65536
MAX_HEADERS = 100

# strict (a client's request): field names are tokens, values hold no control characters but
# tabs (RFC 9110 5.1, 5.5; Go's server refuses the rest)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# the fast path's checks cost about a microsecond: bytes.translate drops every byte allowed in
# a block (leaving any control character), and names already seen valid are remembered
_BLOCK_OK = bytes(c for c in range(256) if c >= 0x20 and c != 0x7f or c in (9, 10, 13))
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 4096


class HeaderError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Headers:
    __slots__ = ("_items", "_index")

    def __init__(self, items: list[tuple[str, str]] | None = None):
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for k, v in items or ():
            self.add(k, v)

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default=None):
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, failobj=None):
        values = self._index.get(name.lower())
        return list(values) if values else failobj

    def __getitem__(self, name: str):
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def keys(self) -> list[str]:
        return [k for k, _ in self._items]

    def values(self) -> list[str]:
        return [v for _, v in self._items]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def read_headers(fp, max_bytes: int = 1 << 20, strict: bool = False) -> Headers:
    """Header lines up to the blank line. Raises HeaderError(431/400). ``strict`` (a
    request) also refuses invalid names and values, and a block cut short by end of input."""
    h = _read_buffered(fp, strict)
    return h if h is not None else _read_lines(fp, max_bytes, strict)


def _read_buffered(fp, strict: bool = False) -> Headers | None:
    """The usual case in one step: the whole block is already in the reader's buffer (it
    came in the same packet as the status or request line), with CRLF line ends and no
    continuation lines. None, with nothing consumed, for anything else."""
    peek = getattr(fp, "peek", None)
    if peek is None:
        return None
    buf = peek(MAX_LINE)
    if buf[:2] == b"\r\n":
        fp.read(2)
        return Headers()
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    block = buf[:end]
    if (block.count(b"\n") != block.count(b"\r\n") or b"\n " in block or b"\n\t" in block
            or block.count(b"\n") >= MAX_HEADERS
            or strict and (block.translate(None, _BLOCK_OK) or block.count(b"\r") != block.count(b"\n"))):
        return None  # bare LF, folded lines, too many, invalid: the line reader's rules apply
    h = Headers()
    items, index = h._items, h._index
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None  # the line reader raises the error
        if strict and name not in _GOOD_NAMES and not _good_name(name):
            return None
        value = value.strip()
        items.append((name, value))
        key = name.lower()
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    fp.read(end + 4)
    return h


def _good_name(name: str) -> bool:
    if not _TOKEN.fullmatch(name):
        return False
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)
    return True


def _read_lines(fp, max_bytes: int, strict: bool = False) -> Headers:
    h = Headers()
    total = 0
    last = None
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeaderError(431, "Line too long")
        total += len(line)
        if total > max_bytes:
            raise HeaderError(431, "Request Header Fields Too Large")
        if line in (b"\r\n", b"\n"):
            return h
        if not line:
            if strict:
                raise HeaderError(400, "request headers ended early")
            return h
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):
            if last is None:
                raise HeaderError(400, "bad header continuation")
            name, value = h._items.pop()
            vals = h._index[name.lower()]
            vals.pop()
            if not vals:
                del h._index[name.lower()]
            h.add(name, value + " " + text.strip())
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise HeaderError(400, f"bad header line {text[:40]!r}")
        if strict and not _good_name(name):
            raise HeaderError(400, f"invalid header name {name[:40]!r}")
        if strict and _BAD_VALUE.search(value):
            raise HeaderError(400, f"invalid header value for {name[:40]!r}")
        if len(h._items) >= MAX_HEADERS:
            raise HeaderError(431, "Too many headers")
        h.add(name, value.strip())
        last = name


class FastResponse(http.client.HTTPResponse):
    """http.client's response with the header block read by ``read_headers``."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            try:
                read_headers(self.fp)
            except HeaderError as e:
                raise http.client.HTTPException(str(e)) from None
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        try:
            self.headers = self.msg = read_headers(self.fp)  # type: ignore[assignment]
        except HeaderError as e:
            raise http.client.HTTPException(str(e)) from None
        te = self.headers.get("transfer-encoding")
        if te and "chunked" in te.lower():
            self.chunked = True
            self.chunk_left = None
        else:
            self.chunked = False
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if (status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
                or 100 <= status < 200 or self._method == "HEAD"):
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True
