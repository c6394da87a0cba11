"""Activity records: one entry per inference request, with token counts read from the
response as it passes through the proxy.

The parser is fed the response chunk by chunk and never holds a whole body: for JSON it
tracks only the document structure and copies the (small) ``usage`` and ``timings`` values;
for server-sent events it keeps the current line and the latest usage/timings numbers. Gzip
and deflate bodies are inflated on the fly. The numbers follow upstream's rules (behaviour.md
5.8): the last non-zero usage value wins in a stream, llama.cpp ``timings`` override usage,
unknown rates and cache counts are -1, and responses that are not 200 or carry no usable
data get an entry with every token field 0.

Wiring (docs/architecture.md, "Forwarding observer"): the forwarding code calls
``App.activity.observe(ctx, model_id)`` when a model-dispatched request arrives and, when it
gets a ``RequestMeter`` back, calls ``on_request_chunk``/``on_response``/``on_chunk``/``on_end``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping

from llamaswap.ops import captures as cap
from llamaswap.ops import gojson
from llamaswap.ops.events import ActivityRecorded

# ---------------------------------------------------------------------------------------------
# the record


@dataclass(frozen=True)
class TokenMetrics:
    cache_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    prompt_per_second: float = 0.0
    tokens_per_second: float = 0.0

    def to_json(self) -> dict:
        return {"cache_tokens": self.cache_tokens, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "prompt_per_second": float(self.prompt_per_second),
                "tokens_per_second": float(self.tokens_per_second)}


@dataclass(frozen=True)
class ActivityEntry:
    id: int
    timestamp: datetime
    model: str
    req_path: str
    resp_content_type: str
    resp_status_code: int
    tokens: TokenMetrics = field(default_factory=TokenMetrics)
    duration_ms: int = 0
    has_capture: bool = False

    def to_json(self) -> dict:
        """Upstream's ActivityLogEntry, fields in struct order."""
        return {"id": self.id, "timestamp": self.timestamp, "model": self.model,
                "req_path": self.req_path, "resp_content_type": self.resp_content_type,
                "resp_status_code": self.resp_status_code, "tokens": self.tokens.to_json(),
                "duration_ms": self.duration_ms, "has_capture": self.has_capture}

    def dumps(self) -> str:
        return gojson.dumps(self.to_json())


# ---------------------------------------------------------------------------------------------
# streaming JSON: copy the values at a few paths, skip everything else

_STRUCT = re.compile(rb'["{}\[\],:]')
# inside an array, commas matter only for the top-level element reset: skipping them makes
# long number arrays (embeddings) several times faster
_STRUCT_IN_ARRAY = re.compile(rb'["{}\[\]]')
_STRING_STOP = re.compile(rb'["\\]')
_MAX_KEY = 64
_MAX_VALUE = 256 * 1024  # usage/timings objects are a few hundred bytes
# a kept (captured) body up to this size is parsed whole at the end; no value in it can
# exceed _MAX_VALUE, so the tap's give-up rule never applies to it
WHOLE_PARSE_LIMIT = _MAX_VALUE
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
            if len(self._cap) > _MAX_VALUE:
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
        if len(raw) > _MAX_VALUE:
            return
        try:
            self.values[self._cap_path] = json.loads(raw)
        except ValueError:
            pass


_NO_TOKENS = TokenMetrics()  # frozen: one shared instance for "no numbers"

# ---------------------------------------------------------------------------------------------
# the numbers (gjson semantics: .Int() truncates floats and parses numeric strings)

_MISSING = object()


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return _MISSING
        obj = obj[k]
    return obj


def _num(v: Any) -> float:
    if v is _MISSING or v is None or v is False:
        return 0.0
    if v is True:
        return 1.0
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return 0.0
    return 0.0


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    f = _num(v)
    return int(f) if f == f and abs(f) != float("inf") else 0


def usage_tokens(usage: Any) -> tuple[int, int, int, bool]:
    """(input, output, cached, ok) from a usage object of any of the supported APIs."""
    inp = out = 0
    cached = -1
    ok = False
    for key in ("prompt_tokens", "input_tokens"):
        v = _get(usage, key)
        if v is not _MISSING:
            inp, ok = _int(v), True
            break
    for key in ("completion_tokens", "output_tokens"):
        v = _get(usage, key)
        if v is not _MISSING:
            out, ok = _int(v), True
            break
    for keys in (("cache_read_input_tokens",), ("input_tokens_details", "cached_tokens"),
                 ("prompt_tokens_details", "cached_tokens")):
        v = _get(usage, *keys)
        if v is not _MISSING:
            cached, ok = _int(v), True
            break
    return inp, out, cached, ok


def build_tokens(inp: int, out: int, cached: int, timings: Any,
                 wall_ms: int) -> tuple[TokenMetrics, int]:
    """Token metrics and duration; llama.cpp timings override usage when present."""
    duration = wall_ms
    pps = tps = -1.0
    if timings is not _MISSING:
        inp = _int(_get(timings, "prompt_n"))
        out = _int(_get(timings, "predicted_n"))
        pps = _num(_get(timings, "prompt_per_second"))
        tps = _num(_get(timings, "predicted_per_second"))
        t_ms = int(_num(_get(timings, "prompt_ms")) + _num(_get(timings, "predicted_ms")))
        duration = max(duration, t_ms)
        cache_n = _get(timings, "cache_n")
        if cache_n is not _MISSING:
            cached = _int(cache_n)
    return TokenMetrics(cached, inp, out, pps, tps), duration


# ---------------------------------------------------------------------------------------------
# body parsers


class _SseTokens:
    """Scans `data:` lines of an event stream for usage and timings."""

    _USAGE_PATHS = (("usage",), ("response", "usage"), ("message", "usage"))
    _LINE_LIMIT = 1024 * 1024  # longer lines go through the streaming tap instead

    def __init__(self) -> None:
        self._line = bytearray()
        self._tap: JsonValueTap | None = None  # only for an over-long data line
        self._skip_line = False
        self.inp = self.out = 0
        self.cached = -1
        self.timings: Any = _MISSING
        self.has_any = False

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            self._add(piece)
            if nl < 0:
                return
            self._end_line()
            start = nl + 1

    def finish(self) -> None:
        self._end_line()

    def _add(self, piece: bytes) -> None:
        if self._skip_line or not piece:
            return
        if self._tap is not None:
            self._tap.feed(piece)
            return
        self._line += piece
        if len(self._line) > self._LINE_LIMIT:
            payload = self._data_payload(bytes(self._line))
            self._line = bytearray()
            if payload is None:
                self._skip_line = True
            else:
                self._tap = JsonValueTap(self._USAGE_PATHS + (("timings",),))
                self._tap.feed(payload)

    @staticmethod
    def _data_payload(line: bytes) -> bytes | None:
        line = line.lstrip()
        if not line.startswith(b"data:"):
            return None
        return line[5:]

    def _end_line(self) -> None:
        if self._tap is not None:
            tap, self._tap = self._tap, None
            if tap.valid:
                doc: dict = {}
                for path, value in tap.values.items():
                    target = doc
                    for k in path[:-1]:
                        target = target.setdefault(k.decode(), {})
                    target[path[-1].decode()] = value
                self._consider(doc)
        elif not self._skip_line and self._line:
            payload = self._data_payload(bytes(self._line))
            if payload is not None:
                payload = payload.strip()
                # only lines that mention usage or timings can change the numbers
                if payload and (b"usage" in payload or b"timings" in payload):
                    try:
                        self._consider(json.loads(payload))
                    except ValueError:
                        pass
        self._line = bytearray()
        self._skip_line = False

    def _consider(self, doc: Any) -> None:
        for path in self._USAGE_PATHS:
            u = _get(doc, *path)
            if u is _MISSING:
                continue
            i, o, c, ok = usage_tokens(u)
            if not ok:
                continue
            self.has_any = True
            if i > 0:
                self.inp = i
            if o > 0:
                self.out = o
            if c >= 0:
                self.cached = c
        t = _get(doc, "timings")
        if t is not _MISSING:
            self.timings = t
            self.has_any = True


class _Inflater:
    """gzip (possibly several members) or deflate (raw, or zlib-wrapped) on the fly."""

    _OUT = 256 * 1024

    def __init__(self, encoding: str):
        self._gzip = encoding == "gzip"
        self._d: Any = zlib.decompressobj(31) if self._gzip else None
        self._pending = b""

    def feed(self, data: bytes) -> Iterable[bytes]:
        if self._d is None:  # deflate: decide raw vs zlib on the first two bytes
            self._pending += data
            if len(self._pending) < 2:
                return
            b0, b1 = self._pending[0], self._pending[1]
            zlib_wrapped = (b0 & 0x0F) == 8 and ((b0 << 8) | b1) % 31 == 0
            self._d = zlib.decompressobj(15 if zlib_wrapped else -15)
            data, self._pending = self._pending, b""
        while data:
            out = self._d.decompress(data, self._OUT)
            if out:
                yield out
            data = self._d.unconsumed_tail
            if not data and self._d.eof and self._d.unused_data:
                rest = self._d.unused_data
                if self._gzip:
                    self._d = zlib.decompressobj(31)
                    data = rest
                # trailing bytes after a deflate stream are ignored, as Go's reader does

    def finish(self) -> None:
        if self._d is None:
            if self._pending:
                raise zlib.error("truncated deflate stream")
            return
        if not self._d.eof:
            raise zlib.error("unexpected end of compressed stream")


class ResponseParser:
    """Reads one response body, chunk by chunk, for token metrics (and optionally keeps a
    bounded copy of the decoded body for a capture)."""

    def __init__(self, path: str, content_type: str = "", content_encoding: str = "",
                 keep_body_limit: int = 0):
        self.path = path
        self.is_sse = "text/event-stream" in content_type
        enc = content_encoding.strip().lower()
        self._inflater = _Inflater(enc) if enc in ("gzip", "deflate") else None
        self.error: str | None = None
        self.raw_bytes = 0
        self._sse = _SseTokens() if self.is_sse else None
        self._tap = None if self.is_sse else JsonValueTap(
            (("usage",), ("timings",), (ANY, "timings")), reset_on_element=(ANY, "timings"))
        # captures need the (decoded) body: kept only while it fits the capture cache
        self._keep_limit = keep_body_limit
        self.body: bytearray | None = bytearray() if keep_body_limit > 0 else None
        # while the kept body is small, the tap is not fed: finish() parses the body whole
        # with json.loads (C) instead of scanning it in Python; past WHOLE_PARSE_LIMIT, or
        # once the capture drops the body, the tap catches up and runs incrementally
        self._deferred = self._tap is not None and self.body is not None
        self._chunk_ends: list[int] = []  # replayed to the tap in the pieces it would have seen

    def feed(self, chunk: bytes) -> None:
        if not chunk or self.error is not None:
            return
        self.raw_bytes += len(chunk)
        if self._inflater is None:
            self._consume(chunk)
            return
        try:
            for out in self._inflater.feed(chunk):
                self._consume(out)
        except zlib.error as e:
            self.error = f"decompression failed: {e}"

    def _consume(self, data: bytes) -> None:
        body = self.body
        if body is not None:
            if len(body) + len(data) > self._keep_limit:
                self._stop_deferring()
                self.body = None
            else:
                body += data
                if self._deferred:
                    self._chunk_ends.append(len(body))
                    if len(body) > WHOLE_PARSE_LIMIT:
                        self._stop_deferring()  # the tap gets the whole body, data included
                    return
        if self._sse is not None:
            self._sse.feed(data)
        else:
            assert self._tap is not None
            self._tap.feed(data)

    def _stop_deferring(self) -> None:
        if self._deferred:
            self._deferred = False
            assert self._tap is not None and self.body is not None
            view = memoryview(self.body)
            start = 0
            for end in self._chunk_ends:  # chunk by chunk: a bare top-level scalar split
                self._tap.feed(bytes(view[start:end]))  # across chunks counts as broken
                start = end
            view.release()
            self._chunk_ends = []

    def _parse_whole(self) -> tuple[bool, Any, Any] | None:
        """(valid, usage, timings) from the kept body, exactly as the tap would report them,
        or None where only the tap's own rules give the right answer."""
        body = self.body
        assert body is not None
        if b"\\u" in body:
            return None  # an escaped key could decode to "usage": the tap matches raw bytes
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            return None  # the tap decides what counts as broken
        if isinstance(doc, dict):
            return True, doc.get("usage", _MISSING), doc.get("timings", _MISSING)
        if isinstance(doc, list):
            timings = _MISSING
            if self.path.startswith("/infill") and doc and isinstance(doc[-1], dict):
                timings = doc[-1].get("timings", _MISSING)  # the last element's, as upstream
            return True, _MISSING, timings
        return None  # a bare scalar: the tap's rules (a top-level string is not valid)

    def finish(self, wall_ms: int) -> tuple[TokenMetrics, int, str | None]:
        """(tokens, duration_ms, warning); warning is None when the numbers were parsed."""
        if self._inflater is not None and self.error is None:
            try:
                self._inflater.finish()
            except zlib.error as e:
                self.error = f"decompression failed: {e}"
        if self.error is not None:
            return TokenMetrics(), wall_ms, f"metrics: {self.error}"
        if self._sse is not None:
            self._sse.finish()
            s = self._sse
            if not s.has_any:
                return TokenMetrics(), wall_ms, \
                    "error processing streaming response: no valid JSON data found in stream"
            tokens, duration = build_tokens(s.inp, s.out, s.cached, s.timings, wall_ms)
            return tokens, duration, None
        whole = None
        if self._deferred:
            whole = self._parse_whole()
            if whole is None:
                self._stop_deferring()
        if whole is not None:
            valid, usage, timings = whole
        else:
            tap = self._tap
            assert tap is not None
            valid = tap.valid
            usage = tap.values.get((b"usage",), _MISSING)
            timings = tap.values.get((b"timings",), _MISSING)
            if self.path.startswith("/infill") and tap.top_kind == "a":
                # /infill answers with an array: the timings of its last element count
                timings = tap.values.get((ANY, b"timings"), _MISSING)
        if not valid:
            return TokenMetrics(), wall_ms, "metrics: invalid JSON in response body"
        if usage is _MISSING and timings is _MISSING:
            return TokenMetrics(), wall_ms, None
        inp, out, cached, _ok = usage_tokens(usage)
        tokens, duration = build_tokens(inp, out, cached, timings, wall_ms)
        return tokens, duration, None


def filter_accept_encoding(value: str) -> str:
    """Keep only gzip and deflate offers, so a response body stays readable for metrics."""
    if not value:
        return ""
    kept = []
    for part in value.split(","):
        enc = part.strip().split(";", 1)[0].strip().lower()
        if enc in ("gzip", "deflate"):
            kept.append(part.strip())
    return ", ".join(kept)


# ---------------------------------------------------------------------------------------------
# the ring and the per-request meter


class RequestMeter:
    """Observer for one metered request. Call order: ``on_request_chunk`` (any number of
    times, optional), ``on_response`` once, ``on_chunk`` per response chunk, ``on_end`` once
    (also when the client went away or the upstream failed). Never raises into the caller."""

    def __init__(self, log: "ActivityLog", model_id: str, path: str,
                 req_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
                 clock: Callable[[], float]):
        self._log = log
        self.model_id = model_id
        self.path = path
        self._clock = clock
        self._start = clock()
        self.status = 0
        self.content_type = ""
        self.resp_headers: list[tuple[str, str]] = []
        self._parser: ResponseParser | None = None
        self._ended = False
        captures = log.captures
        self._capture_on = captures is not None and captures.enabled
        self._fields = captures.fields_for(path) if self._capture_on else 0
        self._req_headers = list(req_headers.items()) if hasattr(req_headers, "items") \
            else list(req_headers or ())
        self.ctx: Any = None  # set by observe(): its status covers errors answered by the proxy
        self._req_body: bytearray | None = bytearray() if self._capture_on else None

    def set_path(self, path: str) -> None:
        """The path after dispatch (versionless `/v/x` requests are recorded as `/x`)."""
        self.path = path
        if self._capture_on:
            self._fields = self._log.captures.fields_for(path)

    def on_request_chunk(self, data: bytes) -> None:
        if self._req_body is not None:
            if len(self._req_body) + len(data) > self._log.captures.max_bytes:
                self._req_body = None
            else:
                self._req_body += data

    def on_response(self, status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        self.status = status
        items = list(headers.items()) if hasattr(headers, "items") else list(headers)
        self.resp_headers = items
        ctype = encoding = None  # first value wins
        for k, v in items:
            name = k.lower()
            if name == "content-type":
                if ctype is None:
                    ctype = v
            elif name == "content-encoding" and encoding is None:
                encoding = v
        self.content_type = ctype or ""
        if status == 200:
            keep = self._log.captures.max_bytes if self._capture_on else 0
            self._parser = ResponseParser(self.path, self.content_type, encoding or "", keep)

    def on_chunk(self, data: bytes) -> None:
        if self._parser is not None:
            try:
                self._parser.feed(data)
            except Exception as e:  # a parser bug must never break the response
                self._parser.error = f"parser error: {e}"

    def on_end(self, error: str | None = None) -> ActivityEntry | None:
        """Record the entry. ``error`` (the upstream failed or the client left) is logged;
        the entry keeps whatever status was seen (502 when no response came)."""
        if self._ended:
            return None
        self._ended = True
        if error:
            self._log.debug(f"metrics: request for {self.model_id} ended early: {error}")
        try:
            return self._finish()
        except Exception as e:  # never break the request because of metrics
            self._log.warn(f"metrics: failed to record activity: {e}")
            return None

    def _finish(self) -> ActivityEntry:
        wall_ms = int((self._clock() - self._start) * 1000)
        status = self.status or getattr(self.ctx, "status", 0) or 502
        tokens, duration, warning = _NO_TOKENS, wall_ms, None
        body_seen = self._parser is not None and self._parser.raw_bytes > 0
        if status != 200:
            self._log.warn(f"non-200 response, recording partial metrics: status={status}, "
                           f"path={self.path}")
        elif not body_seen:
            self._log.warn("metrics: empty body, recording minimal metrics")
        else:
            assert self._parser is not None
            tokens, duration, warning = self._parser.finish(wall_ms)
            if warning:
                self._log.warn(f"{warning}, path={self.path}, recording minimal metrics")
        capture = None
        if self._capture_on and status == 200 and body_seen:
            capture = self._build_capture()
        return self._log._store((_local_now(), self.model_id, self.path, self.content_type,
                                 status, tokens, duration), False, capture)

    def _build_capture(self) -> dict | None:
        assert self._parser is not None
        f = self._fields
        body = self._parser.body
        if f & cap.RESP_BODY and body is None:
            return None  # too large for the cache anyway
        if f & cap.REQ_BODY and self._req_body is None:
            return None
        return cap.make_capture(
            path=self.path,
            req_headers=self._req_headers if f & cap.REQ_HEADERS else None,
            req_body=bytes(self._req_body) if f & cap.REQ_BODY and self._req_body is not None
            else None,
            resp_headers=self.resp_headers if f & cap.RESP_HEADERS else None,
            resp_body=bytes(body) if f & cap.RESP_BODY and body is not None else None)


_local_tz: tuple[int, Any] = (-1, None)  # (second, its local timezone)


def _local_now() -> datetime:
    """datetime.now().astimezone(), with the local offset looked up once a second (the
    lookup is most of the cost; offsets only change on whole seconds)."""
    global _local_tz
    now = time.time()
    second = int(now)
    cached = _local_tz
    if cached[0] != second:
        cached = _local_tz = (second, datetime.fromtimestamp(second).astimezone().tzinfo)
    return datetime.fromtimestamp(now, cached[1])


class ActivityLog:
    """The ring of the last ``metricsMaxInMemory`` entries; ids start at 0."""

    def __init__(self, max_entries: int = 1000, *, events: Any = None, captures: Any = None,
                 log: Any = None, clock: Callable[[], float] = time.monotonic):
        self._ring: deque[ActivityEntry] = deque(maxlen=max_entries if max_entries > 0 else 1000)
        self._lock = threading.Lock()
        self._record_lock = threading.Lock()
        self._next_id = 0
        self.events = events
        self.captures = captures
        self._proxy_log = log
        self._clock = clock
        if events is not None and hasattr(events, "subscribe"):
            # /metrics counts every request from the moment the first App is built
            from llamaswap.ops.prometheus import request_metrics
            request_metrics(events)

    def warn(self, msg: str) -> None:
        if self._proxy_log is not None:
            self._proxy_log.warn(msg)

    def debug(self, msg: str) -> None:
        if self._proxy_log is not None:
            self._proxy_log.debug(msg)

    def observe(self, ctx: Any, model_id: str) -> RequestMeter | None:
        """The forwarding observer for one request (None when it is not metered). The path
        is recorded as dispatched: versionless ``/v/x`` becomes ``/x``, as upstream."""
        path = ctx.path
        if path.startswith("/v/"):
            path = path[2:]
        headers = ctx.headers.items() if ctx.headers is not None else ()
        meter = self.meter(model_id, path, ctx.method, list(headers))
        if meter is not None:
            meter.ctx = ctx
        return meter

    def meter(self, model_id: str, path: str, method: str = "POST",
              req_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None
              ) -> RequestMeter | None:
        """A meter for a model-dispatched request, or None when upstream does not meter it
        (only POST requests are)."""
        if method.upper() != "POST":
            return None
        return RequestMeter(self, model_id, path, req_headers, self._clock)

    def add(self, entry: ActivityEntry, capture: dict | None = None) -> ActivityEntry:
        return self._store((entry.timestamp, entry.model, entry.req_path,
                            entry.resp_content_type, entry.resp_status_code, entry.tokens,
                            entry.duration_ms), entry.has_capture, capture)

    def _store(self, fields: tuple, has_capture: bool, capture: dict | None) -> ActivityEntry:
        """``fields``: ActivityEntry's fields from timestamp to duration_ms (the entry is
        built once, with its id)."""
        # the capture is stored before the entry becomes visible, so a reader never sees an
        # entry whose capture is still on its way; ids stay in ring order
        with self._record_lock:
            with self._lock:
                entry_id = self._next_id
                self._next_id += 1
            if capture is not None and self.captures is not None:
                capture["id"] = entry_id
                if self.captures.add(entry_id, capture):
                    has_capture = True
            entry = ActivityEntry(entry_id, *fields, has_capture)
            with self._lock:
                self._ring.append(entry)
        if self.events is not None:
            self.events.publish(ActivityRecorded(entry))
        return entry

    def entries(self) -> list[ActivityEntry]:
        """Oldest first, with has_capture recomputed (captures can be evicted)."""
        with self._lock:
            items = list(self._ring)
        if self.captures is None:
            return items
        return [replace(e, has_capture=self.captures.has(e.id)) for e in items]

    def dumps(self) -> str:
        return "[" + ",".join(e.dumps() for e in self.entries()) + "]"
