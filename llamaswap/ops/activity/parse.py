"""Token numbers read out of one response body as it passes (behaviour.md 5.8).

The parser is fed the response chunk by chunk and never holds a whole body: for JSON it
tracks only the document structure (jsontap.py) and copies the (small) ``usage`` and
``timings`` values; for server-sent events it keeps the current line and the latest
usage/timings numbers. Gzip and deflate bodies are inflated on the fly. The numbers follow
upstream's rules: the last non-zero usage value wins in a stream, llama.cpp ``timings``
override usage, unknown rates and cache counts are -1, and a body with no usable data gives
zeros.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Iterable

from llamaswap.http import deepjson
from llamaswap.ops.activity.jsontap import ANY, MAX_VALUE, JsonValueTap
from llamaswap.ops.activity.record import TokenMetrics

# a kept (captured) body up to this size is parsed whole at the end; no value in it can
# exceed MAX_VALUE, so the tap's give-up rule never applies to it
WHOLE_PARSE_LIMIT = MAX_VALUE

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


def _nothing(_key: str, default: Any) -> Any:
    return default


def build_tokens(inp: int, out: int, cached: int, timings: Any, wall_ms: int,
                 metrics: Any = _MISSING) -> tuple[TokenMetrics, int]:
    """Token metrics and duration: llama.cpp ``timings`` override usage when present; vLLM's
    ``metrics`` (time to first token, mean inter-token latency, speculative decoding
    counters) give the rates and draft counts it reports."""
    duration = wall_ms
    pps = tps = -1.0
    draft = draft_acc = -1
    if timings is not _MISSING:
        # a timings value that is not an object has none of these keys (gjson)
        get = timings.get if isinstance(timings, dict) else _nothing
        inp = _int(get("prompt_n", _MISSING))
        out = _int(get("predicted_n", _MISSING))
        pps = _num(get("prompt_per_second", _MISSING))
        tps = _num(get("predicted_per_second", _MISSING))
        t_ms = int(_num(get("prompt_ms", _MISSING)) + _num(get("predicted_ms", _MISSING)))
        duration = max(duration, t_ms)
        cache_n = get("cache_n", _MISSING)
        if cache_n is not _MISSING:
            cached = _int(cache_n)
        draft_n, accepted = get("draft_n", _MISSING), get("draft_n_accepted", _MISSING)
        if draft_n is not _MISSING and accepted is not _MISSING:
            draft, draft_acc = _int(draft_n), _int(accepted)
    if metrics is not _MISSING:
        # both counters or neither, so an acceptance rate never comes from half an object
        spec = _get(metrics, "speculative_decoding")
        drafted = _get(spec, "num_draft_tokens")
        accepted = _get(spec, "num_accepted_draft_tokens")
        if drafted is not _MISSING and accepted is not _MISSING:
            draft, draft_acc = _int(drafted), _int(accepted)
        ttft = _num(_get(metrics, "time_to_first_token_ms"))
        if ttft > 0:
            pps = (inp - max(cached, 0)) / (ttft / 1000)
        itl = _num(_get(metrics, "mean_itl_ms"))
        if itl > 0:
            tps = 1000 / itl
    return TokenMetrics(cached, inp, out, pps, tps, draft, draft_acc), duration


# ---------------------------------------------------------------------------------------------
# body parsers


class _SseTokens:
    """Scans `data:` lines of an event stream for usage, timings and (vLLM) metrics."""

    _USAGE_PATHS = (("usage",), ("response", "usage"), ("message", "usage"))
    _LINE_LIMIT = 1024 * 1024  # longer lines go through the streaming tap instead

    def __init__(self) -> None:
        self._line = bytearray()
        self._tap: JsonValueTap | None = None  # only for an over-long data line
        self._skip_line = False
        self.inp = self.out = 0
        self.cached = -1
        self.timings: Any = _MISSING
        self.metrics: Any = _MISSING
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
                self._tap = JsonValueTap(self._USAGE_PATHS + (("timings",), ("metrics",)))
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
                # only lines that mention usage, timings or metrics can change the numbers
                if payload and (b"usage" in payload or b"timings" in payload
                                or b"metrics" in payload):
                    try:
                        self._consider(deepjson.loads(payload))
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
        m = _get(doc, "metrics")
        if m is not _MISSING:
            self.metrics = m
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
        self.decompress_error: str | None = None  # the inflater's complaint, if any
        self.raw_bytes = 0
        self._sse = _SseTokens() if self.is_sse else None
        self._tap = None if self.is_sse else JsonValueTap(
            (("usage",), ("timings",), ("metrics",), (ANY, "timings")),
            reset_on_element=(ANY, "timings"))
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
            self._decompress_failed(e)

    def _decompress_failed(self, e: Exception) -> None:
        self.decompress_error = str(e)
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

    def _parse_whole(self) -> tuple[bool, Any, Any, Any] | None:
        """(valid, usage, timings, metrics) from the kept body, exactly as the tap would report them,
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
            return (True, doc.get("usage", _MISSING), doc.get("timings", _MISSING),
                    doc.get("metrics", _MISSING))
        if isinstance(doc, list):
            timings = _MISSING
            if self.path.startswith("/infill") and doc and isinstance(doc[-1], dict):
                timings = doc[-1].get("timings", _MISSING)  # the last element's, as upstream
            return True, _MISSING, timings, _MISSING
        return None  # a bare scalar: the tap's rules (a top-level string is not valid)

    def finish(self, wall_ms: int) -> tuple[TokenMetrics, int, str | None]:
        """(tokens, duration_ms, warning); warning is None when the numbers were parsed."""
        if self._inflater is not None and self.error is None:
            try:
                self._inflater.finish()
            except zlib.error as e:
                self._decompress_failed(e)
        if self.error is not None:
            return TokenMetrics(), wall_ms, f"metrics: {self.error}"
        if self._sse is not None:
            self._sse.finish()
            s = self._sse
            if not s.has_any:
                return TokenMetrics(), wall_ms, \
                    "error processing streaming response: no valid JSON data found in stream"
            tokens, duration = build_tokens(s.inp, s.out, s.cached, s.timings, wall_ms,
                                            s.metrics)
            return tokens, duration, None
        whole = None
        if self._deferred:
            whole = self._parse_whole()
            if whole is None:
                self._stop_deferring()
        if whole is not None:
            valid, usage, timings, metrics = whole
        else:
            tap = self._tap
            assert tap is not None
            valid = tap.valid
            usage = tap.values.get((b"usage",), _MISSING)
            timings = tap.values.get((b"timings",), _MISSING)
            metrics = tap.values.get((b"metrics",), _MISSING)
            if self.path.startswith("/infill") and tap.top_kind == "a":
                # /infill answers with an array: the timings of its last element count
                timings = tap.values.get((ANY, b"timings"), _MISSING)
        if not valid:
            return TokenMetrics(), wall_ms, "metrics: invalid JSON in response body"
        if usage is _MISSING and timings is _MISSING and metrics is _MISSING:
            return TokenMetrics(), wall_ms, None
        inp, out, cached, _ok = usage_tokens(usage)
        tokens, duration = build_tokens(inp, out, cached, timings, wall_ms, metrics)
        return tokens, duration, None


# ---------------------------------------------------------------------------------------------
# non-200 responses: why it failed

ERROR_BODY_LIMIT = 64 * 1024  # error bodies are small; a longer one is not read for a message
ERROR_MSG_MAX = 500
_ERROR_PATHS = (("error", "message"), ("error",), ("message",), ("detail",))


class ErrorBody:
    """Keeps the (inflated) start of a non-200 response body to say why it failed."""

    def __init__(self, content_encoding: str = ""):
        enc = content_encoding.strip().lower()
        self._inflater = _Inflater(enc) if enc in ("gzip", "deflate") else None
        self.body = bytearray()
        self.decode_error: str | None = None

    def feed(self, chunk: bytes) -> None:
        if self.decode_error is not None or len(self.body) > ERROR_BODY_LIMIT:
            return
        if self._inflater is None:
            self.body += chunk[:ERROR_BODY_LIMIT + 1]
            return
        try:
            for out in self._inflater.feed(chunk):
                self.body += out
                if len(self.body) > ERROR_BODY_LIMIT:
                    return
        except zlib.error as e:
            self.decode_error = str(e)

    def message(self, status: int, reason: str) -> str:
        """The first non-empty string at error.message, error, message or detail, cut at 500
        characters; else ``"<status> <reason>"`` (upstream's rules)."""
        if self.decode_error is not None:
            return f"response decode failed: {self.decode_error}"
        msg = error_message(bytes(self.body))
        if msg:
            return msg[:ERROR_MSG_MAX] + "..." if len(msg) > ERROR_MSG_MAX else msg
        return f"{status} {reason}" if reason else f"HTTP {status}"


def error_message(body: bytes) -> str:
    if not body or len(body) > ERROR_BODY_LIMIT:
        return ""
    try:
        doc = deepjson.loads(body, first_key_wins=True)  # gjson's reading, as upstream
    except ValueError:
        return ""
    for path in _ERROR_PATHS:
        v = _get(doc, *path)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return ""
