"""The per-request object every handler receives, and what it needs to read the request and
write the answer: the body stream, the date header, the reason phrases.

This module imports nothing from the handlers or the route table, so every handler module
(inference.py, forward.py, extract.py, loading.py, upstream_path.py, ops/api.py, ...) can
import ``RequestContext`` and ``ClientGone`` from here while routes.py imports the handlers.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
from email.utils import formatdate
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote

from llamaswap.http import errors


_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


class ClientGone(Exception):
    """The client closed the connection; the handler should stop quietly."""


class BadRequestBody(ValueError):
    """The request body's framing is broken (e.g. a bad chunk size): the client's fault, 400."""


_date_cache = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True)
    return _date_cache[1]


class BodyReader:
    """The request body as a one-shot stream: Content-Length or chunked, never more."""

    def __init__(self, rfile, length: int | None, chunked: bool):
        self._rfile = rfile
        self._left = length if length is not None else 0
        self._chunked = chunked
        self._chunk_left = 0
        self.done = not chunked and self._left == 0
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        if self.done:
            return b""
        if n is None or n < 0:
            parts = []
            while True:
                b = self.read(1 << 20)
                if not b:
                    return b"".join(parts)
                parts.append(b)
        if not self._chunked:
            data = self._rfile.read(min(n, self._left))
            if not data:
                raise BadRequestBody(self._short())
            self._left -= len(data)
            self.done = self._left == 0
            self.consumed += len(data)
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line:
                raise BadRequestBody(self._short())
            digits = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(digits):  # int() would also take "-5", "0x5", "1_0"
                raise BadRequestBody("bad chunk size in request body")
            size = int(digits, 16)
            if size == 0:
                while True:  # trailers
                    t = self._rfile.readline(65537)
                    if t in (b"\r\n", b"\n", b""):
                        break
                self.done = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        if not data:
            raise BadRequestBody(self._short())
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(3)
        self.consumed += len(data)
        return data

    def _short(self) -> str:
        # the client may only have half-closed: it is told what was missing
        if self._chunked:
            return f"request body ended early (after {self.consumed} bytes, in a chunk)"
        return (f"request body ended early ({self.consumed} of "
                f"{self.consumed + self._left} bytes)")

    # read1 for code that wants "whatever is there, at most n"
    read1 = read


class RequestContext:
    """Everything a handler needs about one request, and the way to answer it.

    Request side:
      app           the App for this request (snapshot of the holder at dispatch time)
      handler       the BaseHTTPRequestHandler (connection, rfile, wfile) for low-level work
      method        "GET", "POST", ...
      target        the raw request-target ("/upstream/a%2Fb/x?q=1")
      raw_path      target without the query, not percent-decoded
      path          percent-decoded raw_path
      query_string  the raw query (no "?")
      query         dict[str, list[str]] parsed lazily (blank values kept)
      params        pattern values (decoded)
      headers       http.headers.Headers: case-insensitive .get / .get_all / .items()
      client_ip     X-Forwarded-For first entry, else X-Real-IP, else the peer address
      body          a BodyReader (read(n)); use read_body() for the whole body as bytes
      state         a dict for cooperating layers (e.g. "model" once resolved)
    Response side:
      send(status, body, content_type, headers)  a whole response with Content-Length
      send_json(status, obj, headers)            JSON (compact, no trailing newline)
      send_text(status, text, headers)           text/plain; charset=utf-8
      send_error(status, message, code=None)     http/errors.py format by Accept
      redirect(status, location)
      start(status, headers, length=None)        status line + headers; body follows via
                                                 write(); chunked when length is None
      write(data)   raises ClientGone once the client has left
      finish()      ends a started response (the final chunk)
      client_gone() non-blocking: has the client closed its side?
      started, status, bytes_sent, close_connection
    """

    def __init__(self, handler, app, method: str, target: str, headers):
        self.handler = handler
        self.app = app
        self.method = method
        self.target = target
        raw_path, _, query = target.partition("?")
        if raw_path.startswith(("http://", "https://")):  # absolute-form request-target
            rest = raw_path.split("://", 1)[1]
            raw_path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        self.raw_path = raw_path or "/"
        self.query_string = query
        self.headers = headers
        self.params: dict[str, str] = {}
        self.state: dict[str, Any] = {}
        self.started = False
        self.status = 0
        self.bytes_sent = 0
        self.resp_headers: list[tuple[str, str]] = []  # as sent by send() or start()
        self.close_connection = False
        self._chunked = False
        self._finished = False
        self._gone = False
        self._query: dict[str, list[str]] | None = None
        self._path: str | None = None
        te = (headers.get("Transfer-Encoding") or "").lower()
        cl = headers.get("Content-Length")
        length = None
        if cl is not None and "chunked" not in te:
            try:
                length = int(cl)
            except ValueError:
                length = 0
        self.body = BodyReader(handler.rfile, length, "chunked" in te)
        self.start_time = time.monotonic()

    # ---- request helpers
    @property
    def path(self) -> str:
        if self._path is None:
            self._path = unquote(self.raw_path)
        return self._path

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def set_query(self, query_string: str) -> None:
        """Replace the query (a profile pin or a selector rewrote ``?model=``)."""
        self.query_string = query_string
        self._query = None

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    @property
    def client_ip(self) -> str:
        xff = self.headers.get("X-Forwarded-For")
        if xff:
            return xff.split(",")[0].strip()
        real = self.headers.get("X-Real-IP")
        if real:
            return real.strip()
        return self.handler.client_address[0]

    def read_body(self) -> bytes:
        return self.body.read()

    @property
    def has_body(self) -> bool:
        return not self.body.done

    # ---- client liveness
    def client_gone(self) -> bool:
        """True once the client has closed its side. Never blocks. Pipelined bytes (a next
        request already sent) count as alive."""
        if self._gone:
            return True
        sock = self.handler.connection
        try:
            r, _, _ = select.select([sock], [], [], 0)
            if not r:
                return False
            # readable: either pipelined bytes (alive) or EOF; peek reads at most once and
            # select said it will not block
            if self.handler.rfile.peek(1):
                return False
        except (OSError, ValueError):
            pass
        self.mark_gone()
        return True

    def mark_gone(self) -> None:
        self._gone = True
        self.close_connection = True

    # ---- responses
    def _write_raw(self, data: bytes) -> None:
        if self._gone:
            raise ClientGone()
        try:
            self.handler.wfile.write(data)
        except (OSError, ValueError) as e:
            self.mark_gone()
            raise ClientGone(str(e)) from None

    def _head(self, status: int, headers: Iterable[tuple[str, str]]) -> bytearray:
        reason = _REASONS.get(status, "")
        out = bytearray(f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1"))
        has_date = False
        for k, v in headers:
            if k.lower() == "date":
                has_date = True
            out += f"{k}: {v}\r\n".encode("latin-1", "replace")
        if not has_date:
            out += f"Date: {http_date()}\r\n".encode("latin-1")
        return out

    def send(self, status: int, body: bytes | str = b"", content_type: str | None = None,
             headers: Iterable[tuple[str, str]] = ()) -> None:
        if self.started:
            raise RuntimeError("response already started")
        if isinstance(body, str):
            body = body.encode()
        hs = list(headers)
        if content_type:
            hs.append(("Content-Type", content_type))
        no_body = status in (204, 304) or 100 <= status < 200
        if not no_body:
            hs.append(("Content-Length", str(len(body))))
        if self.close_connection or self.handler.close_connection:
            hs.append(("Connection", "close"))
            self.close_connection = True
        head = self._head(status, hs)
        head += b"\r\n"
        if self.method != "HEAD" and not no_body:
            head += body
        self.resp_headers = hs
        self.started = True
        self.status = status
        self._finished = True
        self._write_raw(bytes(head))
        self.bytes_sent += len(body)

    def send_text(self, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send(status, text, "text/plain; charset=utf-8", headers)

    def send_json(self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send(status, json.dumps(obj, separators=(",", ":")), "application/json", headers)

    def send_error(self, status: int, message: str, code: str | None = None,
                   headers: Iterable[tuple[str, str]] = ()) -> None:
        errors.send_error(self, status, message, code, headers)

    def redirect(self, status: int, location: str) -> None:
        self.send(status, b"", None, [("Location", location)])

    def start(self, status: int, headers: Iterable[tuple[str, str]],
              length: int | None = None) -> None:
        """Send the status line and headers. With ``length`` None the body is relayed chunked
        (HTTP/1.1) or delimited by closing the connection (HTTP/1.0). ``headers`` must not
        contain Content-Length or Transfer-Encoding: they are set here."""
        if self.started:
            raise RuntimeError("response already started")
        hs = list(headers)
        no_body = status in (204, 304) or 100 <= status < 200 or self.method == "HEAD"
        if length is not None:
            hs.append(("Content-Length", str(length)))
        elif not no_body:
            if self.handler.request_version == "HTTP/1.1":
                hs.append(("Transfer-Encoding", "chunked"))
                self._chunked = True
            else:
                self.close_connection = True
        if self.close_connection or self.handler.close_connection:
            hs.append(("Connection", "close"))
            self.close_connection = True
        head = self._head(status, hs)
        head += b"\r\n"
        self.resp_headers = hs
        self.started = True
        self.status = status
        self._write_raw(bytes(head))

    def write(self, data: bytes) -> None:
        if not data or self.method == "HEAD":
            return
        if self._chunked:
            self._write_raw(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._write_raw(data)
        self.bytes_sent += len(data)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._chunked and self.method != "HEAD":
            self._write_raw(b"0\r\n\r\n")

    def abort(self) -> None:
        """End the connection without completing the response (the client sees it cut)."""
        self._finished = True
        self.close_connection = True
        try:
            self.handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @property
    def finished(self) -> bool:
        return self._finished


_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    204: "No Content", 206: "Partial Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 304: "Not Modified", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Entity",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


def reason(status: int) -> str:
    return _REASONS.get(status, "")
