"""Request/response captures for the activity page (``GET /api/captures/<id>``).

A capture is upstream's ReqRespCapture: the request path, flattened headers (first value of
each, credentials replaced by ``[REDACTED]``), and base64 bodies, with parts left out per
path as upstream does for audio and image routes. Captures live in a FIFO cache capped in
bytes; an item larger than the whole cache is not stored. A capture is stored as compact
JSON compressed with zlib (upstream uses CBOR + zstd; neither is in the standard library),
except a small one: it is kept as it came and turned into JSON only if it is read. Most
captures are never read, zlib saves little on a few hundred bytes, and encoding plus
compressing was a tenth of the proxy's CPU time on a small request.
"""

from __future__ import annotations

import base64
import json
import threading
import zlib
from collections import OrderedDict
from typing import Any, Iterable, Mapping

REQ_HEADERS = 1
REQ_BODY = 2
RESP_HEADERS = 4
RESP_BODY = 8
ALL = REQ_HEADERS | REQ_BODY | RESP_HEADERS | RESP_BODY

# routes with large binary payloads keep less (upstream's captureFieldsByPath)
FIELDS_BY_PATH = {
    "/v1/audio/speech": REQ_HEADERS | REQ_BODY | RESP_HEADERS,
    "/v1/audio/voices": REQ_HEADERS | RESP_HEADERS | RESP_BODY,
    "/v1/audio/transcriptions": REQ_HEADERS | RESP_HEADERS | RESP_BODY,
    "/v1/images/generations": REQ_HEADERS | REQ_BODY | RESP_HEADERS,
    "/v1/images/edits": REQ_HEADERS | RESP_HEADERS,
    "/sdapi/v1/txt2img": REQ_HEADERS | REQ_BODY | RESP_HEADERS,
    "/sdapi/v1/img2img": REQ_HEADERS | RESP_HEADERS,
}

SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                               "x-api-key"})
REDACTED = "[REDACTED]"


def fields_for(path: str) -> int:
    return FIELDS_BY_PATH.get(path, ALL)


_TOKEN_BREAKERS = frozenset(' \t"(),/:;<=>?@[\\]{}')
_canonical_cache: dict[str, str] = {}
_CANONICAL_CACHE_MAX = 1024  # header names repeat from request to request


def canonical_header(name: str) -> str:
    """Go's CanonicalMIMEHeaderKey: `x-api-key` -> `X-Api-Key` (names with invalid token
    characters are left as they are)."""
    key = _canonical_cache.get(name)
    if key is not None:
        return key
    if not name or not name.isascii() or not _TOKEN_BREAKERS.isdisjoint(name):
        key = name
    else:
        key = "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))
    if len(_canonical_cache) < _CANONICAL_CACHE_MAX:
        _canonical_cache[name] = key
    return key


def header_map(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Flatten to the first value of each header, redacting credentials."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = canonical_header(name)
        if key not in out:
            out[key] = REDACTED if key.lower() in SENSITIVE_HEADERS else value
    return out


def make_capture(path: str, req_headers=None, req_body: bytes | None = None,
                 resp_headers=None, resp_body: bytes | None = None) -> dict:
    """A capture record (id filled in by the caller); None fields come out as null. Headers
    are packed into one string each (a list of tuples of fresh strings costs several times
    its text in memory) and flattened by capture_json."""
    return {"id": -1, "req_path": path, "req_headers": _pack(req_headers),
            "req_body": req_body, "resp_headers": _pack(resp_headers), "resp_body": resp_body}


def _pack(headers) -> str | None:
    """"name:value" lines; a header name never holds a colon nor a value a line break."""
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return "\n".join(map(":".join, items))


def _unpack(packed: str) -> list[tuple[str, str]]:
    return [tuple(line.split(":", 1)) for line in packed.split("\n")] if packed else []


def _response_header_map(headers) -> dict[str, str]:
    out = header_map(headers)
    out.pop("Content-Encoding", None)  # the body is stored decoded
    return out


# Go's encoder escapes these inside strings; outside strings JSON text never contains them,
# so replacing them in the whole text equals escaping each string (gojson.go_string)
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
               ("\u2029", "\\u2029"))
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def capture_json(capture: Mapping[str, Any]) -> str:
    """Upstream's JSON: struct order, header maps with sorted keys, bodies in base64 (the
    same text gojson.dumps writes, in one C-level encode)."""
    def headers(packed, flatten=header_map):
        return None if packed is None else dict(sorted(flatten(_unpack(packed)).items()))

    def body(b):
        return None if b is None else base64.b64encode(b).decode("ascii")

    text = _encode({"id": capture["id"], "req_path": capture["req_path"],
                    "req_headers": headers(capture["req_headers"]),
                    "req_body": body(capture["req_body"]),
                    "resp_headers": headers(capture["resp_headers"], _response_header_map),
                    "resp_body": body(capture["resp_body"])})
    for char, escape in _GO_ESCAPES:
        if char in text:  # str.replace, not translate: bodies can be megabytes
            text = text.replace(char, escape)
    return text


def _estimated_size(capture: Mapping[str, Any]) -> int:
    """About the size of the capture's JSON, without encoding it."""
    size = 120 + len(capture["req_path"])
    for key in ("req_headers", "resp_headers"):
        packed = capture[key]
        if packed is not None:
            size += len(packed) + 6 * (packed.count("\n") + 1)  # quotes, colon, comma
    for key in ("req_body", "resp_body"):
        body = capture[key]
        if body is not None:
            size += (len(body) + 2) // 3 * 4
    return size


class CaptureStore:
    """FIFO cache of captures, at most ``max_bytes`` stored bytes in total (compressed JSON,
    or for a small capture about the size of its JSON)."""

    # below this estimated JSON size a capture is kept as it is (module docstring)
    KEEP_UNENCODED = 4096
    # what a capture kept as it is costs beyond its JSON size: its Python objects
    UNENCODED_OVERHEAD = 400

    def __init__(self, capture_buffer_mb: int = 0, *, max_bytes: int | None = None,
                 log: Any = None):
        self.max_bytes = max_bytes if max_bytes is not None else max(0, capture_buffer_mb) * 1024 * 1024
        self.enabled = self.max_bytes > 0
        # id -> (stored bytes counted against max_bytes, compressed JSON or the capture)
        self._items: OrderedDict[int, tuple[int, Any]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._log = log

    @staticmethod
    def fields_for(path: str) -> int:
        return fields_for(path)

    def add(self, capture_id: int, capture: Mapping[str, Any]) -> bool:
        if not self.enabled:
            return False
        size = _estimated_size(capture)
        if size < self.KEEP_UNENCODED:
            item: Any = capture
            note = f"saved (about {size} bytes as JSON)"
            size += self.UNENCODED_OVERHEAD
        else:
            text = capture_json(capture).encode("utf-8")
            # level 1: 1.6-3x faster than the default 6 on chat-sized captures (5-500 KB of
            # JSON text) for 2-24% more compressed bytes; this runs once per captured request
            item = zlib.compress(text, 1)
            size = len(item)
            ratio = (1 - size / len(text)) * 100 if text else 0.0
            note = (f"compressed and saved: {len(text)} bytes -> {size} bytes "
                    f"({ratio:.1f}% compression)")
        if size > self.max_bytes:
            if self._log is not None:
                self._log.warn(f"capture {capture_id} too large ({size} bytes), skipping: "
                               "item exceeds maximum cache size")
            return False
        with self._lock:
            old = self._items.pop(capture_id, None)
            if old is not None:
                self._size -= old[0]
            while self._size + size > self.max_bytes and self._items:
                _, (evicted, _) = self._items.popitem(last=False)
                self._size -= evicted
            self._items[capture_id] = (size, item)
            self._size += size
        if self._log is not None and self._log.enabled("debug"):
            self._log.debug(f"Capture {capture_id} {note}")
        return True

    def has(self, capture_id: int) -> bool:
        with self._lock:
            return capture_id in self._items

    def get_json(self, capture_id: int) -> str | None:
        """The capture as upstream's JSON text, or None when absent (never stored, or evicted)."""
        with self._lock:
            stored = self._items.get(capture_id)
        if stored is None:
            return None
        item = stored[1]
        if isinstance(item, bytes):
            return zlib.decompress(item).decode("utf-8")
        return capture_json(item)

    @property
    def size(self) -> int:
        with self._lock:
            return self._size

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
