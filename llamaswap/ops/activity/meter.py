"""Metering one request as it passes: the forwarding observer (docs/architecture.md,
"Forwarding observer") that feeds the response to a ResponseParser and, at the end, hands the
record (and its capture) to the ActivityLog."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from llamaswap.config.model import PLAIN_KEY_NAME
from llamaswap.http.auth import key_name
from llamaswap.ops import captures as cap
from llamaswap.http.context import reason
from llamaswap.ops.activity.parse import ErrorBody, ResponseParser
from llamaswap.ops.activity.record import NO_TOKENS, ActivityEntry, local_now

if TYPE_CHECKING:
    from llamaswap.ops.activity.log import ActivityLog


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


def status_text(status: int) -> str:
    """Go's http.StatusText."""
    text = reason(status)
    if not text:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = ""
    return text


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
        self._error_body: ErrorBody | None = None  # non-200: why it failed
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
        elif status != 101:
            self._error_body = ErrorBody(encoding or "")

    def on_chunk(self, data: bytes) -> None:
        if self._parser is not None:
            try:
                self._parser.feed(data)
            except Exception as e:  # a parser bug must never break the response
                self._parser.error = f"parser error: {e}"
        elif self._error_body is not None:
            self._error_body.feed(data)

    def on_end(self, error: str | None = None) -> ActivityEntry | None:
        """Record the entry. ``error`` (the upstream failed or the client left) is logged;
        the entry keeps whatever status was seen (502 when no response came)."""
        if self._ended:
            return None
        self._ended = True
        if error:
            self._log.debug(f"metrics: request for {self.model_id} ended early: {error}")
        try:
            return self._finish(error)
        except Exception as e:  # never break the request because of metrics
            self._log.warn(f"metrics: failed to record activity: {e}")
            return None

    def _finish(self, error: str | None) -> ActivityEntry:
        wall_ms = int((self._clock() - self._start) * 1000)
        status = self.status or getattr(self.ctx, "status", 0) or 502
        tokens, duration, error_msg = NO_TOKENS, wall_ms, ""
        body_seen = self._parser is not None and self._parser.raw_bytes > 0
        if status != 200:
            self._log.warn(f"non-200 response, recording partial metrics: status={status}, "
                           f"path={self.path}")
            if self._error_body is not None:  # the backend's answer
                error_msg = self._error_body.message(status, status_text(status))
            else:  # answered by the proxy (its own message), or no answer at all
                error_msg = error or f"{status} {status_text(status)}"
        elif not body_seen:
            self._log.warn("metrics: empty body, recording minimal metrics")
        else:
            assert self._parser is not None
            tokens, duration, warning = self._parser.finish(wall_ms)
            if warning:
                self._log.warn(f"{warning}, path={self.path}, recording minimal metrics")
            if self._parser.decompress_error is not None:
                error_msg = f"response decompression failed: {self._parser.decompress_error}"
        capture = None
        if self._capture_on and (status != 200 or body_seen):
            capture = self._build_capture(with_body=status == 200)
        metadata = None
        key = PLAIN_KEY_NAME
        if self.ctx is not None:
            metadata = self.ctx.state.get("metadata") or None
            if metadata is not None:
                metadata = dict(metadata)
            key = key_name(self.ctx)
        return self._log.record((local_now(), self.model_id, self.path, self.content_type,
                                 status, tokens, duration), False, capture,
                                error_msg, metadata, key)

    def _build_capture(self, with_body: bool) -> dict | None:
        """The capture of a 200 response, or of a failed one without its response body (its
        error is in the record's error_msg, as upstream)."""
        f = self._fields
        if not with_body:
            f &= ~cap.RESP_BODY
        body = self._parser.body if self._parser is not None else None
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
