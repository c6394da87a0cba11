"""Request/response captures for the activity page (``GET /api/captures/<id>``).

A capture is upstream's ReqRespCapture: the request path, flattened headers (first value of
each, credentials replaced by ``[REDACTED]``), and base64 bodies, with parts left out per
path as upstream does for audio and image routes. Each capture is stored as compact JSON
compressed with zlib (upstream uses CBOR + zstd; neither is in the standard library) in a
FIFO cache capped in bytes; an item larger than the whole cache is not stored.
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
    """A capture record (id filled in by the caller); None fields come out as null."""
    resp = None
    if resp_headers is not None:
        resp = header_map(resp_headers)
        resp.pop("Content-Encoding", None)  # the body is stored decoded
    return {"id": -1, "req_path": path,
            "req_headers": header_map(req_headers) if req_headers is not None else None,
            "req_body": req_body, "resp_headers": resp, "resp_body": resp_body}


# Go's encoder escapes these inside strings; outside strings JSON text never contains them,
# so replacing them in the whole text equals escaping each string (gojson.go_string)
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
               ("\u2029", "\\u2029"))
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def capture_json(capture: Mapping[str, Any]) -> str:
    """Upstream's JSON: struct order, header maps with sorted keys, bodies in base64 (the
    same text gojson.dumps writes, in one C-level encode)."""
    def headers(h):
        return None if h is None else dict(sorted(h.items()))

    def body(b):
        return None if b is None else base64.b64encode(b).decode("ascii")

    text = _encode({"id": capture["id"], "req_path": capture["req_path"],
                    "req_headers": headers(capture["req_headers"]),
                    "req_body": body(capture["req_body"]),
                    "resp_headers": headers(capture["resp_headers"]),
                    "resp_body": body(capture["resp_body"])})
    for char, escape in _GO_ESCAPES:
        if char in text:  # str.replace, not translate: bodies can be megabytes
            text = text.replace(char, escape)
    return text


class CaptureStore:
    """FIFO cache of compressed captures, at most ``max_bytes`` compressed bytes in total."""

    def __init__(self, capture_buffer_mb: int = 0, *, max_bytes: int | None = None,
                 log: Any = None):
        self.max_bytes = max_bytes if max_bytes is not None else max(0, capture_buffer_mb) * 1024 * 1024
        self.enabled = self.max_bytes > 0
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._log = log

    @staticmethod
    def fields_for(path: str) -> int:
        return fields_for(path)

    def add(self, capture_id: int, capture: Mapping[str, Any]) -> bool:
        if not self.enabled:
            return False
        text = capture_json(capture).encode("utf-8")
        # level 1: 1.6-3x faster than the default 6 on chat-sized captures (5-500 KB of
        # JSON text) for 2-24% more compressed bytes; this runs once per captured request
        data = zlib.compress(text, 1)
        if len(data) > self.max_bytes:
            if self._log is not None:
                self._log.warn(f"capture {capture_id} too large ({len(data)} bytes), skipping: "
                               "item exceeds maximum cache size")
            return False
        with self._lock:
            old = self._items.pop(capture_id, None)
            if old is not None:
                self._size -= len(old)
            while self._size + len(data) > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)
            self._items[capture_id] = data
            self._size += len(data)
        if self._log is not None:
            ratio = (1 - len(data) / len(text)) * 100 if text else 0.0
            self._log.debug(f"Capture {capture_id} compressed and saved: {len(text)} bytes -> "
                            f"{len(data)} bytes ({ratio:.1f}% compression)")
        return True

    def has(self, capture_id: int) -> bool:
        with self._lock:
            return capture_id in self._items

    def get_json(self, capture_id: int) -> str | None:
        """The capture as upstream's JSON text, or None when absent (never stored, or evicted)."""
        with self._lock:
            data = self._items.get(capture_id)
        if data is None:
            return None
        return zlib.decompress(data).decode("utf-8")

    @property
    def size(self) -> int:
        with self._lock:
            return self._size

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
