"""Relaying one request to a backend and its response back, byte for byte as it arrives.

- every chunk the backend sends is written to the client at once (no buffering, no merging
  of SSE events); ``X-Accel-Buffering: no`` is added to event streams;
- a response without a length is relayed chunked; hop-by-hop headers are dropped both ways;
- the client hanging up cuts the backend connection at once (llama-server stops generating)
  and the call returns quietly; the backend dying mid-response cuts the client connection
  (an event stream first gets one ``data:`` event with the error), or answers 502 when
  nothing was sent yet;
- ``Upgrade`` requests (websockets) become a two-way byte tunnel after the backend's 101.

An optional observer (activity/captures) sees the response as it passes:
``on_response(status, headers)``, ``on_chunk(bytes)``, ``on_end(error)``.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from llamaswap.http.pool import BackendPool, cut, watch_disconnect
from llamaswap.http.context import BadRequestBody, ClientGone, RequestContext
from llamaswap.http.errors import envelope, error_body

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization",
))
READ_SIZE = 64 * 1024
BODY_SIZE = 256 * 1024
HEAD_WAIT = 0.05  # seconds a relayed head may wait for the first body bytes (see _body_soon)


@dataclass
class Outcome:
    status: int = 0          # what the client got (0: nothing)
    sent_bytes: int = 0
    client_gone: bool = False
    error: str | None = None  # backend failure, if any
    # with retry_unreachable, nothing was sent to the client and the request can be sent
    # again: "refused" (the connection was refused: the request never reached the backend)
    # or "dropped" (a new connection closed before a whole answer: it may have)
    unreachable: str = ""


# what never reaches a backend as the client sent it (X-Forwarded-For is rewritten)
_SKIP = HOP_BY_HOP | {"content-length", "host", "expect", "x-forwarded-for"}
_SKIP_AUTH = _SKIP | {"authorization", "x-api-key"}


def request_headers(ctx: RequestContext, *, strip_auth: bool, host: str | None,
                    extra: Iterable[tuple[str, str]] = (),
                    drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The client's headers as the backend should see them."""
    headers = ctx.headers
    skip = _SKIP_AUTH if strip_auth else _SKIP
    conn_values = headers.get_all("Connection", [])
    if conn_values or drop:
        skip = skip | {t.strip().lower() for v in conn_values for t in v.split(",")}
        skip |= {d.lower() for d in drop}
    out = [(k, v) for k, v in headers.items() if k.lower() not in skip]
    out.append(("Host", host if host is not None else (headers.get("Host") or "localhost")))
    xff = headers.get("X-Forwarded-For")
    ip = ctx.handler.client_address[0]
    out.append(("X-Forwarded-For", f"{xff}, {ip}" if xff else ip))
    out.extend(extra)
    return out


def response_headers(resp: http.client.HTTPResponse) -> list[tuple[str, str]]:
    conn_tokens = {t.strip().lower() for v in resp.headers.get_all("Connection", []) or []
                   for t in v.split(",")}
    skip = HOP_BY_HOP | conn_tokens | {"content-length"}
    out = [(k, v) for k, v in resp.headers.items() if k.lower() not in skip]
    ctype = resp.headers.get("Content-Type", "")
    if "text/event-stream" in ctype and resp.headers.get("X-Accel-Buffering") is None:
        out.append(("X-Accel-Buffering", "no"))
    return out


class _Body:
    """What we send upstream: bytes, or the client's streaming body (prefix + rest)."""

    def __init__(self, data: bytes | None = None, stream: Any = None, prefix: Any = b"",
                 length: int | None = None):
        self.data = data
        self.stream = stream
        self.prefix = prefix
        self.length = len(data) if data is not None else length
        self.started = False

    @property
    def replayable(self) -> bool:
        return self.data is not None or not self.started

    def chunks(self):
        self.started = True
        if self.data is not None:
            if self.data:
                yield self.data
            return
        if isinstance(self.prefix, (bytes, bytearray)):
            if self.prefix:
                yield bytes(self.prefix)
        else:
            yield from self.prefix
        if self.stream is not None:
            while True:
                b = self.stream.read(BODY_SIZE)
                if not b:
                    return
                yield b


def body_bytes(data: bytes | None) -> _Body:
    return _Body(data=data if data is not None else b"")


def body_stream(stream: Any, prefix: Any = b"", length: int | None = None) -> _Body:
    """The client's body as it arrives; ``prefix`` (bytes or an iterable of bytes) goes first."""
    return _Body(stream=stream, prefix=prefix, length=length)


def _exchange(conn: http.client.HTTPConnection, method: str, path: str,
              headers: list[tuple[str, str]], body: _Body, has_body: bool, observer: Any,
              response_timeout: float) -> http.client.HTTPResponse:
    """Send the request and read the response's head. A request whose body is whole bytes
    (or absent) is written in one send and its response read here, without http.client's
    per-request machinery (putrequest, putheader, endheaders, getresponse cost a sixth of
    a small request's CPU); the connection stays usable by http.client. Anything else
    (a streamed body, header values that are not text) goes through http.client."""
    sock = conn.sock
    whole = (sock is not None and (not has_body or body.data is not None and
                                    len(body.data) <= BODY_SIZE))
    head = _head_bytes(method, path, headers) if whole else None
    if head is None:
        _send_request(conn, method, path, headers, body, has_body, observer)
        return _response(conn, None, method, response_timeout)
    if has_body:
        data = body.data
        # a request sent again offers its body to the observer once
        on_req = (getattr(observer, "on_request_chunk", None)
                  if observer is not None and not body.started else None)
        if on_req is not None and data:
            on_req(data)
        body.started = True
        head.append(b"Content-Length: %d\r\n\r\n%b" % (len(data), data))
    else:
        head.append(b"\r\n")
    sock.sendall(b"".join(head))
    return _response(conn, sock, method, response_timeout)


def _response(conn: http.client.HTTPConnection, sock: Any, method: str,
              timeout: float) -> http.client.HTTPResponse:
    """The response's head: ``conn.getresponse()`` when http.client sent the request
    (``sock`` None), else read as getresponse reads it (a response that closes the
    connection takes the socket with it)."""
    if timeout > 0 and conn.sock is not None:
        conn.sock.settimeout(timeout)
    try:
        if sock is None:
            return conn.getresponse()
        resp = conn.response_class(sock, method=method)
        try:
            resp.begin()
        except ConnectionError:
            conn.close()
            raise
        except BaseException:
            resp.close()
            raise
        if resp.will_close:
            conn.close()
        return resp
    finally:
        if timeout > 0 and conn.sock is not None:
            conn.sock.settimeout(None)


_bad_method = http.client._contains_disallowed_method_pchar_re.search  # type: ignore[attr-defined]
_bad_path = http.client._contains_disallowed_url_pchar_re.search  # type: ignore[attr-defined]


def _head_bytes(method: str, path: str, headers: list[tuple[str, str]]) -> list[bytes] | None:
    """The request line and header lines, with http.client's checks and errors; None when a
    header is not a pair of texts (http.client's putheader formats those)."""
    if _bad_method(method):
        raise ValueError(f"method can't contain control characters. {method!r}")
    path = path or "/"
    if _bad_path(path):
        raise http.client.InvalidURL(f"URL can't contain control characters. {path!r}")
    out = [f"{method} {path} HTTP/1.1\r\n".encode("ascii")]
    for k, v in headers:
        if type(k) is not str or type(v) is not str:
            return None
        out.append(_header_line(k, v))
    return out


def _header_line(k: str, v: str) -> bytes:
    name = k.encode("ascii")
    if not _legal_name(name):
        raise ValueError("Invalid header name %r" % (name,))
    value = v.encode("latin-1")
    if _illegal_value(value):
        raise ValueError("Invalid header value %r" % (value,))
    return name + b": " + value + b"\r\n"


def _send_request(conn: http.client.HTTPConnection, method: str, path: str,
                  headers: list[tuple[str, str]], body: _Body, has_body: bool,
                  observer: Any) -> None:
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    _put_headers(conn, headers)
    chunked = False
    if has_body:
        if body.length is not None:
            conn.putheader("Content-Length", str(body.length))
        else:
            conn.putheader("Transfer-Encoding", "chunked")
            chunked = True
    # a request sent again offers its body to the observer once
    on_req = (getattr(observer, "on_request_chunk", None)
              if observer is not None and not body.started else None)
    if has_body and body.data is not None and not chunked and len(body.data) <= BODY_SIZE:
        if on_req is not None and body.data:
            on_req(body.data)
        body.started = True
        conn.endheaders(body.data)
        return
    conn.endheaders()
    if not has_body:
        return
    for piece in body.chunks():
        if on_req is not None:
            on_req(piece)
        if chunked:
            conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        else:
            conn.send(piece)
    if chunked:
        conn.send(b"0\r\n\r\n")


class _Flag:
    """Set once by the disconnect watcher, read by the handler (nobody waits on it, so a
    threading.Event, a Condition and two locks, would be wasted on every request)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


_legal_name = http.client._is_legal_header_name  # type: ignore[attr-defined]
_illegal_value = http.client._is_illegal_header_value  # type: ignore[attr-defined]


def _put_headers(conn: http.client.HTTPConnection, headers: list[tuple[str, str]]) -> None:
    """conn.putheader for each pair, with its checks and errors, in one loop (putheader's
    per-call overhead is a measurable part of a small request)."""
    lines = []
    for k, v in headers:
        if type(k) is not str or type(v) is not str:
            conn._buffer.extend(lines)  # type: ignore[attr-defined]
            lines = []
            conn.putheader(k, v)
            continue
        lines.append(_header_line(k, v)[:-2])
    conn._buffer.extend(lines)  # type: ignore[attr-defined]


_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
              http.client.BadStatusLine)
# what a backend whose process is exiting does to a new connection
_UNREACHABLE = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
                BrokenPipeError, http.client.RemoteDisconnected)


def forward(ctx: RequestContext, pool: BackendPool, path: str, headers: list[tuple[str, str]],
            body: _Body, *, observer: Any = None, label: str = "",
            error_prefix: str = "", on_backend_done: Callable[[], None] | None = None,
            retry_unreachable: bool = False) -> Outcome:
    """Send ``ctx.method path`` with ``headers`` and ``body`` to the pool's backend and relay
    the answer to ``ctx``. Never raises for client or backend trouble; returns what happened.

    ``on_backend_done`` runs once, as soon as the backend's answer is fully read and before
    the client gets the last byte (or when the request ends otherwise), so a client that
    sends its next request the moment it has the answer finds the model's slot free.

    ``retry_unreachable``: a backend that refuses the connection, or drops a new one before
    its answer is whole and before anything has gone to the client, while the body can
    still be sent again, is not answered for: the outcome says
    ``unreachable`` and the caller answers or sends the request again (a crashed backend is
    started again); ``on_backend_done`` does not run then."""
    out = Outcome()
    try:
        return _forward(ctx, pool, path, headers, body, observer, label, error_prefix,
                        on_backend_done, out, retry_unreachable)
    finally:
        if on_backend_done is not None and not out.unreachable:
            on_backend_done()


def _forward(ctx: RequestContext, pool: BackendPool, path: str, headers: list[tuple[str, str]],
             body: _Body, observer: Any, label: str, error_prefix: str,
             on_backend_done: Callable[[], None] | None, out: Outcome,
             retry_unreachable: bool = False) -> Outcome:
    method = ctx.method
    has_body = not (body.length == 0 and method in ("GET", "HEAD", "DELETE", "OPTIONS"))
    upgrade = (ctx.headers.get("Upgrade") is not None
               and "upgrade" in (ctx.headers.get("Connection") or "").lower())
    if upgrade:
        return tunnel(ctx, pool, path, headers, label=label, error_prefix=error_prefix)

    gone = _Flag()
    cut_early = False
    conn = None
    resp = None
    attempts = 0
    watch = None
    try:
        while True:
            attempts += 1
            try:
                # a retry goes on a new connection: other idle ones may be just as closed
                conn, reused = pool.acquire(reuse=body.data is not None and attempts == 1)
            except OSError as e:
                message = f"{error_prefix}{_conn_error(pool, label, e)}"
                if retry_unreachable and isinstance(e, _UNREACHABLE) and body.replayable:
                    return _unreachable(out, "refused", message)
                return _fail(ctx, out, observer, 502, message)

            def on_gone(c=conn):
                gone.set()
                cut(c)
            watch = watch_disconnect(ctx.handler.connection, on_gone)
            try:
                resp = _exchange(conn, method, path, headers, body, has_body, observer,
                                 pool.timeouts.response_header)
                break
            except ClientGone:
                raise
            except (OSError, http.client.HTTPException) as e:
                fired = watch.cancel() if watch is not None else False
                watch = None
                pool.discard(conn)
                conn = None
                if fired or gone.is_set():
                    raise ClientGone() from None
                if reused and attempts == 1 and isinstance(e, _RETRYABLE) and body.replayable:
                    continue  # a kept-alive connection the backend had just closed
                if isinstance(e, (TimeoutError, socket.timeout)):
                    msg = (f"{label}: no response headers within "
                           f"{pool.timeouts.response_header:g}s")
                    return _fail(ctx, out, observer, 504, f"{error_prefix}{msg}")
                message = f"{error_prefix}{label}: backend connection error: {_describe(e)}"
                if retry_unreachable and isinstance(e, _UNREACHABLE) and body.replayable:
                    return _unreachable(out, "dropped", message)
                return _fail(ctx, out, observer, 502, message)

        status = resp.status
        rheaders = response_headers(resp)
        if observer is not None and hasattr(observer, "on_response"):
            observer.on_response(status, resp.headers.items())
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        length = None if resp.chunked else resp.length
        if no_body:
            length = resp.length if (method == "HEAD" and resp.length is not None) else None
        if ctx.started:  # after the loading stream: status and headers are already out
            length = None
        elif not no_body and length is not None and 0 < length <= READ_SIZE:
            # a small answer: its bytes are already here, so head and body leave together
            cut_early = watch.cancel() if watch is not None else False
            watch = None
            if gone.is_set():
                raise ClientGone()
            if not _relay_small(ctx, resp, status, rheaders, length, observer, on_backend_done):
                message = f"{error_prefix}{label}: backend response ended early"
                if retry_unreachable and body.replayable and not ctx.started:
                    return _unreachable(out, "dropped", message)  # the client has nothing yet
                return _fail(ctx, out, observer, 502, message)
            out.status = status
            pool.release(conn, not resp.will_close and resp.isclosed() and not cut_early)
            conn = None
            out.sent_bytes = ctx.bytes_sent
            _end(observer, None)
            return out
        else:
            ctx.start(status, rheaders, length=length if not no_body or method == "HEAD" else None,
                      hold=not no_body and _body_soon(resp, conn))
        out.status = status
        if not no_body:
            on_chunk = getattr(observer, "on_chunk", None) if observer is not None else None
            read1 = resp.read1
            write = ctx.write
            data = b""
            while True:
                try:
                    data = read1(READ_SIZE)
                except (OSError, http.client.HTTPException, ValueError) as e:
                    if gone.is_set():
                        raise ClientGone() from None
                    out.error = f"{label}: backend connection lost mid-response: {_describe(e)}"
                    if length is None:  # relayed chunked: an event can be added
                        _stream_error(ctx, rheaders, data, out.error, path)
                    break
                if not data:
                    if gone.is_set():
                        raise ClientGone()
                    if length is not None and resp.length:
                        out.error = f"{label}: backend response ended early"
                    break
                if on_chunk is not None:
                    on_chunk(data)
                if resp.length == 0 and watch is not None:
                    # the whole body is read: stop watching before the client gets the last
                    # byte, or its prompt hang-up would count as an early disconnect
                    cut_early = watch.cancel()
                    watch = None
                    if on_backend_done is not None:
                        on_backend_done()
                write(data)
        if watch is not None:
            cut_early = watch.cancel()
            watch = None
            if cut_early or gone.is_set():
                raise ClientGone()
        if out.error:
            ctx.abort()
            pool.discard(conn)
            conn = None
        else:
            if on_backend_done is not None:
                on_backend_done()
            ctx.finish()
            if not resp.isclosed() and resp.length == 0:
                resp.read()  # http.client only hands the connection back once it is "closed"
            reusable = not resp.will_close and resp.isclosed() and not cut_early
            pool.release(conn, reusable)
            conn = None
        out.sent_bytes = ctx.bytes_sent
        _end(observer, out.error)
        return out
    except ClientGone:
        out.client_gone = True
        out.sent_bytes = ctx.bytes_sent
        ctx.mark_gone()
        _end(observer, "client disconnected")
        return out
    except BadRequestBody as e:  # the dispatcher answers 400 (or cuts a started answer)
        _end(observer, f"could not read request body: {e}")
        raise
    finally:
        if watch is not None:
            watch.cancel()
        if conn is not None:
            pool.discard(conn)


def _stream_error(ctx: RequestContext, rheaders: list[tuple[str, str]], last: bytes,
                  message: str, path: str) -> None:
    """An event stream the backend broke off gets one last event saying why, before the cut
    (which still tells the client the answer is incomplete): ``data: {"error": ...}``, which
    the OpenAI SDKs raise as an APIError with that message, or on ``/v1/messages``
    Anthropic's ``event: error``, which its SDKs raise. Only between two events (`last`, the
    bytes relayed last, end one): a half-sent event is left as it is."""
    if not (last.endswith(b"\n\n") or last.endswith(b"\r\n\r\n")):
        return
    if not any(k.lower() == "content-type" and v.lower().startswith("text/event-stream")
               for k, v in rheaders):
        return
    if path.partition("?")[0].endswith("/messages"):
        error = {"type": "error", "error": {"type": "api_error", "message": message}}
        event = b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    else:
        event = b"data: " + envelope(502, message) + b"\n\n"
    try:
        ctx.write(event)
    except (ClientGone, OSError):
        pass


def _body_soon(resp: Any, conn: http.client.HTTPConnection) -> bool:
    """Whether the first body bytes are here already, or arrive within HEAD_WAIT: the head
    then waits for them and both leave in one write (a stream's first chunk reaches the
    client one write sooner). A backend that sends its head long before the first token
    (a prompt being processed) gets its head relayed after HEAD_WAIT, as it came."""
    buffered = getattr(resp, "body_buffered", None)
    sock = conn.sock
    if buffered or (sock is not None and hasattr(sock, "pending") and sock.pending()):
        return True  # pending(): bytes a TLS socket has decrypted already
    if buffered is None or sock is None:
        return False  # not known: relay the head at once
    try:
        if hasattr(select, "poll"):
            p = select.poll()
            p.register(sock, select.POLLIN)
            return bool(p.poll(HEAD_WAIT * 1000))
        return bool(select.select([sock], [], [], HEAD_WAIT)[0])
    except (OSError, ValueError):
        return False


def _relay_small(ctx: RequestContext, resp: Any, status: int, rheaders: list[tuple[str, str]],
                 length: int, observer: Any, on_backend_done: Callable[[], None] | None) -> bool:
    """Read a short Content-Length body whole and send it with the head in one write. False
    if the backend sent less than it announced (nothing has been sent to the client)."""
    try:
        data = resp.read()
    except (OSError, http.client.HTTPException, ValueError):
        return False
    if len(data) != length:
        return False
    on_chunk = getattr(observer, "on_chunk", None) if observer is not None else None
    if on_chunk is not None:
        on_chunk(data)
    if on_backend_done is not None:
        on_backend_done()
    ctx.send(status, data, None, rheaders)
    return True


def _end(observer: Any, error: str | None) -> None:
    fn = getattr(observer, "on_end", None) if observer is not None else None
    if fn is not None:
        try:
            fn(error)
        except Exception:
            pass


def _unreachable(out: Outcome, how: str, message: str) -> Outcome:
    out.unreachable = how
    out.error = message
    return out


def _fail(ctx: RequestContext, out: Outcome, observer: Any, status: int, message: str) -> Outcome:
    out.error = message
    try:
        if not ctx.started:
            ctx.send_error(status, message)
            out.status = status
        elif ctx.state.get("loading") and not ctx.finished:
            append_error(ctx, status, message)
        else:
            ctx.abort()
    except ClientGone:
        out.client_gone = True
    _end(observer, message)
    return out


def append_error(ctx: RequestContext, status: int, message: str) -> None:
    """After the loading stream has sent a 200, an error can only be appended (upstream
    writes the JSON body raw, unframed)."""
    _, body = error_body(status, message, ctx.headers.get("Accept"))
    ctx.write(body)
    ctx.finish()


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _conn_error(pool: BackendPool, label: str, e: OSError) -> str:
    return f"{label}: cannot connect to {pool.base_url}: {_describe(e)}"


# ---- websocket (any Upgrade) tunnel ---------------------------------------------------------

def tunnel(ctx: RequestContext, pool: BackendPool, path: str, headers: list[tuple[str, str]],
           *, label: str = "", error_prefix: str = "") -> Outcome:
    """Send the Upgrade request on a fresh connection; after a 101 copy bytes both ways until
    either side closes."""
    out = Outcome()
    try:
        conn = pool._new()  # noqa: SLF001 - an upgraded connection never returns to the pool
    except OSError as e:
        return _fail(ctx, out, None, 502, f"{error_prefix}{_conn_error(pool, label, e)}")
    try:
        hs = [(k, v) for k, v in headers if k.lower() not in ("connection", "upgrade")]
        hs.append(("Connection", "Upgrade"))
        hs.append(("Upgrade", ctx.headers.get("Upgrade", "")))
        body = body_bytes(b"")
        backend = conn.sock
        try:
            _send_request(conn, ctx.method, path, hs, body, False, None)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            return _fail(ctx, out, None, 502,
                         f"{error_prefix}{label}: backend connection error: {_describe(e)}")
        if resp.status != 101:
            data = resp.read()
            ctx.send(resp.status, data, None, response_headers(resp))
            out.status = resp.status
            return out
        rh = [(k, v) for k, v in resp.headers.items()
              if k.lower() not in ("content-length", "transfer-encoding")]
        ctx.start(101, rh, length=None)
        ctx.close_connection = True
        out.status = 101
        client = ctx.handler.connection
        # bytes already read into buffers on either side go first
        buffered = _take_buffered(resp.fp, backend)
        if buffered:
            client.sendall(buffered)
        client_buffered = _take_buffered(ctx.handler.rfile, client)
        _pump(client, ctx.handler.rfile, backend, client_buffered)
        ctx.mark_gone()
        return out
    finally:
        conn.close()


def _take_buffered(fp: Any, sock: socket.socket) -> bytes:
    """Whatever a buffered reader already holds, without blocking."""
    try:
        sock.setblocking(False)
        try:
            data = fp.peek(READ_SIZE)
        except (OSError, ValueError, TypeError):
            data = b""
        return fp.read(len(data)) if data else b""
    finally:
        try:
            sock.setblocking(True)
        except OSError:
            pass


def _pump(client: socket.socket, client_rfile: Any, backend: socket.socket, first: bytes) -> None:
    if first:
        backend.sendall(first)
    socks = [client, backend]
    try:
        while True:
            r, _, _ = select.select(socks, [], [])
            for s in r:
                try:
                    data = s.recv(READ_SIZE)
                except (OSError, ValueError):
                    data = b""
                if not data:
                    return
                (backend if s is client else client).sendall(data)
    except (OSError, ValueError):
        return
    finally:
        for s in (client, backend):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
