"""The listening socket, one thread per connection, and the dispatcher in front of the routes.

HTTP/1.1 keep-alive; a client must send its request line and headers within
``HEADER_TIMEOUT`` seconds (idle keep-alive connections are dropped after the same time), and
headers are capped by http.client's limits (65 536 bytes a line, 100 lines) plus
``MAX_HEADER_BYTES`` in total. Bodies have no cap: they stream through to the backend.
TLS handshakes happen in the connection's thread, so a slow client never blocks accept().
"""

from __future__ import annotations

import queue
import re
import select
import socket
import ssl
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

from llamaswap.http import auth
from llamaswap.config.gocompat import go_duration
from llamaswap.config.model import PLAIN_KEY_NAME
from llamaswap.http.headers import HeaderError, read_headers
from llamaswap.http.context import BadRequestBody, ClientGone, RequestContext
from llamaswap.http.pool import unwatch_connection
from llamaswap.http.routes import RouteTable, build_routes

HEADER_TIMEOUT = 30.0
MAX_HEADER_BYTES = 1 << 20
NO_ACCESS_LOG = ("/wol-health", "/api/performance", "/metrics")
MAX_CONTENT_LENGTH = (1 << 63) - 1  # Go's int64
LINGER = 0.5  # seconds a rejected client may take to read the answer before the socket closes
LINGER_BYTES = 1 << 20
IDLE_THREAD_SECONDS = 60.0  # how long a connection's thread waits for the next connection

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "ProxyServer"

    def setup(self) -> None:
        sock = self.request
        # Sockets stay in blocking mode: a socket timeout costs a poll() before every read
        # and two mode switches per request. Instead the server's reaper thread cuts a
        # connection that has been waiting for a request (or a TLS handshake) too long.
        self.waiting_since: float | None = time.monotonic()
        self.server.track(self, True)
        try:
            if self.server.ssl_context is not None:  # not ssl.SSLSocket: ssl loads lazily
                sock.do_handshake()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            self.server.track(self, False)
            raise
        super().setup()

    def finish(self) -> None:
        self.server.track(self, False)
        unwatch_connection(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ClientGone):  # ssl.SSLError is an OSError
            pass

    def handle_one_request(self) -> None:
        self.waiting_since = time.monotonic()
        try:
            self.raw_requestline = self.rfile.readline(65537)
            # RFC 9112 2.2: empty lines before a request line are ignored (a client may end
            # a body with an extra CRLF)
            for _ in range(4):
                if self.raw_requestline not in (b"\r\n", b"\n"):
                    break
                self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        if self.server.closing:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.reject(414, "request line too long")
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        try:
            ok = self.parse_request()
        except OSError:
            self.close_connection = True
            return
        if not ok:
            return
        self.waiting_since = None
        self.server.begin_request()
        try:
            self.server.dispatch(self)
        finally:
            self.server.end_request()

    def parse_request(self) -> bool:
        """The request line and headers, checked as Go's server checks them: what it would
        refuse is answered here (``reject``) and never reaches the dispatcher."""
        self.command = None
        self.request_version = "HTTP/1.1"  # for the stdlib's 100 Continue
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if len(words) != 3:
            self.reject(400, "malformed HTTP request")
            return False
        command, path, version = words
        v = _VERSION.fullmatch(version)
        if v is None:
            self.reject(400, "malformed HTTP version")
            return False
        if v.group(1) != "1":
            self.reject(505, "unsupported protocol version")
            return False
        if not _METHOD.fullmatch(command):
            self.reject(400, "invalid method")
            return False
        if _CONTROL.search(path) or not (path[0] == "/" or path == "*" or "://" in path
                                         or command == "CONNECT"):
            self.reject(400, "invalid request URI")
            return False
        self.command, self.path, self.request_version = command, path, version
        minor = v.group(2)
        if minor != "0":
            self.close_connection = False
        try:
            self.headers = headers = read_headers(self.rfile, MAX_HEADER_BYTES, strict=True)
        except HeaderError as e:
            self.reject(e.status, str(e))
            return False
        problem = _framing_problem(headers, minor != "0")
        if problem is not None:
            self.reject(*problem)
            return False
        conntype = (headers.get("Connection") or "").lower()
        if "close" in conntype:
            self.close_connection = True
        elif "keep-alive" in conntype:
            self.close_connection = False
        if (headers.get("Expect") or "").lower() == "100-continue" and minor != "0":
            if not self.handle_expect_100():
                return False
        return True

    def reject(self, status: int, reason: str) -> None:
        """Answer a request that cannot reach the dispatcher, as Go's server does (a
        plain-text status and reason), then close: what follows cannot be framed. The
        client gets a moment to read the answer before the socket closes."""
        self.close_connection = True
        phrase = HTTPStatus(status).phrase
        body = f"{status} {phrase}: {reason}".encode("latin-1", "replace")
        head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + body)
        except OSError:
            return
        _linger(self.connection)

    def handle_expect_100(self) -> bool:
        # the 100 goes out when the body is first read is what clients want, but sending it at
        # once is what Go does and is always correct
        return super().handle_expect_100()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the dispatcher writes upstream's access log line


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, app_holder: Any, address: tuple[str, int], family: int,
                 ssl_context: ssl.SSLContext | None = None,
                 routes: RouteTable | None = None):
        self.address_family = family
        self.app_holder = app_holder
        self.ssl_context = ssl_context
        self.routes = routes if routes is not None else build_routes(_default_extra())
        self.closing = False
        self._conns: set[ProxyHandler] = set()
        self._lock = threading.Lock()
        self._active = 0
        self._idle_cv = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        # threads whose connection ended wait here for the next one (see process_request)
        self._next_conn: queue.SimpleQueue = queue.SimpleQueue()
        self._idle_threads = 0
        self._pool_lock = threading.Lock()
        super().__init__(address, ProxyHandler, bind_and_activate=False)
        if family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    # ---- lifecycle
    @property
    def port(self) -> int:
        return self.server_address[1]

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request, client_address) -> None:
        """One thread per connection, as ThreadingMixIn, but a thread whose connection has
        ended waits up to IDLE_THREAD_SECONDS for the next one instead of ending: starting a
        thread (and the hand-offs between this accept thread and the new one until it runs)
        cost about a quarter of a small request's CPU on a new connection."""
        with self._pool_lock:
            if self._idle_threads:
                self._idle_threads -= 1
                self._next_conn.put((request, client_address))
                return
        threading.Thread(target=self._serve_connections, args=(request, client_address),
                         name=f"http-conn-{self.port}", daemon=True).start()

    def _serve_connections(self, request, client_address) -> None:
        job = (request, client_address)
        while job is not None:
            self.process_request_thread(*job)
            job = request = client_address = None
            with self._pool_lock:
                if self.closing:
                    return
                self._idle_threads += 1
            try:
                job = self._next_conn.get(timeout=IDLE_THREAD_SECONDS)
            except queue.Empty:
                with self._pool_lock:
                    if self._idle_threads:  # nobody has handed this thread a connection
                        self._idle_threads -= 1
                        return
                job = self._next_conn.get()  # one is on its way: process_request counted on it

    def server_close(self) -> None:
        super().server_close()
        with self._pool_lock:
            idle, self._idle_threads = self._idle_threads, 0
        for _ in range(idle):
            self._next_conn.put(None)

    def handle_error(self, request, client_address) -> None:
        log = _log(self.app_holder)
        if log is not None:
            log.debug(f"connection error from {client_address}: {traceback.format_exc(limit=3)}")

    def start(self) -> "ProxyServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http-accept", daemon=True)
        self._thread.start()
        threading.Thread(target=self._reap_silent, name="http-reaper", daemon=True).start()
        return self

    def _reap_silent(self) -> None:
        """Cut connections that have waited longer than HEADER_TIMEOUT for a request line,
        its headers, or a TLS handshake (idle keep-alive connections included)."""
        while not self._stopped.wait(min(1.0, HEADER_TIMEOUT / 4)):
            limit = time.monotonic() - HEADER_TIMEOUT
            with self._lock:
                silent = [h for h in self._conns
                          if h.waiting_since is not None and h.waiting_since < limit]
            for h in silent:
                _shut(h.connection)

    def track(self, handler: ProxyHandler, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(handler)

    def begin_request(self) -> None:
        with self._lock:
            self._active += 1

    def end_request(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self.closing:  # only shutdown() waits for it
                self._idle_cv.notify_all()

    @property
    def active_requests(self) -> int:
        return self._active

    def shutdown(self, timeout: float = 10.0) -> None:  # type: ignore[override]
        """Stop accepting, drop idle keep-alive connections, let requests in flight finish up
        to ``timeout`` seconds, then cut what is left."""
        self.closing = True
        self._stopped.set()
        if self._thread is not None:
            super().shutdown()
            self._thread = None
        self.server_close()
        self._close_conns(idle_only=True)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._active > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle_cv.wait(min(left, 0.1))
                # connections that went idle after their request ended
                for h in list(self._conns):
                    if h.waiting_since is not None:
                        _shut(h.connection)
        self._close_conns(idle_only=False)

    def _close_conns(self, idle_only: bool) -> None:
        with self._lock:
            conns = list(self._conns)
        for h in conns:
            if not idle_only or h.waiting_since is not None:
                _shut(h.connection)

    # ---- dispatch
    def dispatch(self, h: ProxyHandler) -> None:
        app = self.app_holder.app
        ctx = RequestContext(h, app, h.command, h.path, h.headers)
        route = None
        try:
            if ctx.method == "OPTIONS":
                auth.send_preflight(ctx)
            else:
                route, params, allowed = self.routes.match(ctx.method, ctx.raw_path)
                if route is None:
                    if allowed:
                        ctx.send(405, "Method Not Allowed\n", "text/plain; charset=utf-8",
                                 [("Allow", ", ".join(allowed)),
                                  ("X-Content-Type-Options", "nosniff")])
                    else:
                        ctx.send(404, "404 page not found\n", "text/plain; charset=utf-8",
                                 [("X-Content-Type-Options", "nosniff")])
                else:
                    ctx.params = params
                    if route.auth and not auth.check(ctx, route):
                        pass  # 401 or 403 already sent
                    else:
                        route.fn(ctx)
            if ctx.started and not ctx.finished:
                ctx.finish()
            elif not ctx.started:
                ctx.send_error(500, f"no response for {ctx.method} {ctx.raw_path}")
        except ClientGone:
            ctx.mark_gone()
        except BadRequestBody as e:
            # the rest of the connection's bytes can no longer be framed: answer, then close
            ctx.close_connection = True
            if not ctx.started:
                ctx.send_error(400, f"could not read request body: {e}")
                _linger(h.connection)
            else:
                ctx.abort()
        except Exception as e:  # a bug: answer 500 if we still can, never kill the server
            log = _log(self.app_holder)
            if log is not None:
                log.error(f"handler error for {ctx.method} {ctx.raw_path}: {e!r}\n"
                          + traceback.format_exc(limit=8))
            if not ctx.started:
                try:
                    ctx.close_connection = True
                    ctx.send_error(500, f"internal error: {e}")
                except ClientGone:
                    pass
            else:
                ctx.abort()
        finally:
            if ctx.close_connection or not ctx.finished or not ctx.body.done:
                if not ctx.body.done and not ctx.close_connection and ctx.finished:
                    _drain(ctx)
                else:
                    h.close_connection = True
            if route is None or route.log:
                _access_log(app, ctx)


def _framing_problem(headers: Any, http11: bool) -> tuple[int, str] | None:
    """(status, reason) when Host, Content-Length or Transfer-Encoding make the request
    unreadable or ambiguous (Go's rules), else None."""
    hosts = headers.get_all("Host")
    if hosts is None:
        if http11:
            return 400, "missing required Host header"
    elif len(hosts) > 1:
        return 400, "too many Host headers"
    te = headers.get_all("Transfer-Encoding")
    if te is not None and http11:
        if len(te) != 1 or te[0].strip().lower() != "chunked":
            return 501, "unsupported transfer encoding"
        return None  # chunked: any Content-Length is ignored
    lengths = headers.get_all("Content-Length")
    if lengths is not None:
        first = lengths[0].strip()
        if any(v.strip() != first for v in lengths[1:]):
            return 400, "multiple Content-Length headers"
        if not first.isdigit() or not first.isascii() or int(first) > MAX_CONTENT_LENGTH:
            return 400, f"bad Content-Length {first[:40]!r}"
    return None


def _linger(sock) -> None:
    """Half-close, then read what the client is still sending for up to LINGER seconds, so
    that closing with unread bytes (which makes the kernel send a reset) does not destroy
    the answer before the client has read it."""
    if isinstance(sock, ssl.SSLSocket):
        return
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER
        got = 0
        while got < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return
            data = sock.recv(65536)
            if not data:
                return
            got += len(data)
    except OSError:
        pass


def _drain(ctx: RequestContext, limit: int = 1 << 16) -> None:
    """Read what is left of a small request body so the connection can be reused."""
    try:
        got = 0
        while not ctx.body.done and got < limit:
            got += len(ctx.body.read(limit))
        if not ctx.body.done:
            ctx.handler.close_connection = True
    except Exception:
        ctx.handler.close_connection = True


def _shut(sock) -> None:
    try:
        # the plain socket's shutdown: SSLSocket's own drops its SSL object under a thread
        # that may be reading from it
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _log(app_holder):
    app = getattr(app_holder, "app", None)
    loggers = getattr(app, "loggers", None)
    return getattr(loggers, "log", None)


def _access_log(app, ctx: RequestContext) -> None:
    if ctx.raw_path.startswith(NO_ACCESS_LOG):
        return
    loggers = getattr(app, "loggers", None)
    if loggers is None:
        return
    ua = ctx.headers.get("User-Agent", "")
    h = ctx.handler
    key = ctx.state.get("key")  # an object key's name (never the key); upstream's line otherwise
    named = f" key={key.name}" if key is not None and key.name != PLAIN_KEY_NAME else ""
    loggers.log.info(f'Request {ctx.client_ip} "{ctx.method} {ctx.target} {h.request_version}" '
                     f'{ctx.status} {ctx.bytes_sent} "{ua}" '
                     f"{go_duration(time.monotonic() - ctx.start_time)}{named}")


def _default_extra() -> list[Callable[[RouteTable], None]]:
    """The operations routes from ops/api.py, once it exists."""
    try:
        from llamaswap.ops import api
    except ImportError:
        return []
    register = getattr(api, "register", None)
    return [register] if register is not None else []


def parse_listen(listen: str) -> tuple[str, int, int]:
    """Go-style listen address -> (host, port, family). ':8080' binds every interface."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "::"):
        return ("::" if socket.has_ipv6 else "0.0.0.0"), int(port), (
            socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET)
    if ":" in host:
        return host, int(port), socket.AF_INET6
    if host == "localhost":
        host = "127.0.0.1"
    return host, int(port), socket.AF_INET


def serve(app_holder: Any, listen: str, certfile: str | None = None,
          keyfile: str | None = None,
          extra_routes: Iterable[Callable[[RouteTable], None]] | None = None) -> ProxyServer:
    """Bind ``listen`` and start serving in a background thread."""
    host, port, family = parse_listen(listen)
    ctx = None
    if certfile and keyfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
    routes = build_routes(_default_extra() if extra_routes is None else extra_routes)
    try:
        server = ProxyServer(app_holder, (host, port), family, ctx, routes)
    except OSError:
        if family != socket.AF_INET6 or host != "::":
            raise
        server = ProxyServer(app_holder, ("0.0.0.0", port), socket.AF_INET, ctx, routes)
    return server.start()

