"""Kept-alive ``http.client`` connections to each backend, and the client-disconnect watcher.

One ``BackendPool`` per backend (a local Process or a peer). Idle connections are reused
newest first, for requests that can be sent again if the backend has just closed one.
``close_all()`` closes idle connections and cuts the ones in use: it runs as a Process stop
hook because llama-server does not exit on SIGTERM while a client holds a connection open.
"""

from __future__ import annotations

import http.client
import itertools
import select
import socket
import ssl
import threading
import time
import weakref
from typing import Any, Callable
from urllib.parse import urlsplit

from llamaswap.config.model import Timeouts
from llamaswap.http.headers import FastResponse

MAX_IDLE = 32
RECHECK_AFTER = 1.0  # seconds idle before a pooled connection is checked for a hang-up


class BackendPool:
    def __init__(self, base_url: str, timeouts: Timeouts | None = None, max_idle: int = MAX_IDLE):
        u = urlsplit(base_url)
        self.base_url = base_url
        self.scheme = u.scheme or "http"
        self.host = u.hostname or "localhost"
        self.port = u.port or (443 if self.scheme == "https" else 80)
        self.base_path = u.path.rstrip("/")
        self.host_header = u.netloc
        self.timeouts = timeouts or Timeouts()
        self.max_idle = max_idle
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._busy: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._generation = 0

    def _new(self) -> http.client.HTTPConnection:
        t = self.timeouts
        connect_timeout = t.connect if t.connect > 0 else None
        if self.scheme == "https":
            ctx = ssl.create_default_context()
            conn: http.client.HTTPConnection = _HTTPS(
                self.host, self.port, timeout=connect_timeout, context=ctx)
        else:
            conn = _HTTP(self.host, self.port, timeout=connect_timeout)
        conn.response_class = FastResponse
        conn.connect()
        # the connect timeout is for connecting only: generations may take hours, so reads
        # and writes wait as long as the backend needs (responseHeader is applied per request)
        conn.sock.settimeout(None)
        conn.timeout = None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if t.keepalive > 0:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        return conn

    def acquire(self, reuse: bool = True) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, reused). Raises OSError when the backend cannot be reached.

        A kept-alive connection can always turn out to have been closed by the backend
        a moment ago, so the caller must be able to send the request again on a new one:
        ``reuse=False`` (a body that cannot be sent twice) always gets a new connection.
        A reused connection idle for RECHECK_AFTER or more is checked first; one idle for
        less is not (a system call), as a backend's keep-alive timeout is seconds at least."""
        now = time.monotonic()
        idle_limit = self.timeouts.idle_conn
        while reuse:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            idle = now - since
            if (idle_limit > 0 and idle > idle_limit) or (idle >= RECHECK_AFTER
                                                          and not _usable(conn)):
                conn.close()
                continue
            with self._lock:
                self._busy.add(conn)
            return conn, True
        conn = self._new()
        with self._lock:
            self._busy.add(conn)
            conn._pool_generation = self._generation  # type: ignore[attr-defined]
        return conn, False

    def release(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        with self._lock:
            self._busy.discard(conn)
            fresh = getattr(conn, "_pool_generation", self._generation) == self._generation
            if reusable and fresh and conn.sock is not None and len(self._idle) < self.max_idle:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def discard(self, conn: http.client.HTTPConnection) -> None:
        self.release(conn, False)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            self._generation += 1
        for conn, _ in idle:
            conn.close()
        for conn in busy:
            cut(conn)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def busy_count(self) -> int:
        return len(self._busy)


class _OneWrite:
    """A bytes body goes out in the same write as the request head (one packet, one syscall
    on each side for a small request)."""

    def _send_output(self, message_body=None, encode_chunked=False):
        if isinstance(message_body, bytes) and not encode_chunked:
            self._buffer.extend((b"", b""))
            msg = b"\r\n".join(self._buffer) + message_body
            del self._buffer[:]
            self.send(msg)
            return
        super()._send_output(message_body, encode_chunked=encode_chunked)


class _HTTP(_OneWrite, http.client.HTTPConnection):
    pass


class _HTTPS(_OneWrite, http.client.HTTPSConnection):
    pass


def _usable(conn: http.client.HTTPConnection) -> bool:
    sock = conn.sock
    if sock is None:
        return False
    try:
        r, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not r  # an idle keep-alive connection with data or EOF waiting is dead to us


def cut(conn: http.client.HTTPConnection) -> None:
    """Make a blocked read or write on this connection return at once."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---- registries: one pool per Process (its stop hook closes it) and per peer ---------------

_process_pools: "weakref.WeakKeyDictionary[Any, BackendPool]" = weakref.WeakKeyDictionary()
_peer_pools: dict[tuple[str, Timeouts], BackendPool] = {}
_registry_lock = threading.Lock()


def pool_for_process(process: Any) -> BackendPool:
    pool = _process_pools.get(process)
    if pool is not None:
        return pool
    with _registry_lock:
        pool = _process_pools.get(process)
        if pool is None:
            cfg = process.config
            pool = BackendPool(cfg.proxy, cfg.timeouts)
            _process_pools[process] = pool
            add_hook = getattr(process, "add_stop_hook", None)
            if add_hook is not None:
                add_hook(pool.close_all)
    return pool


def pool_for_peer(peer: Any) -> BackendPool:
    key = (peer.proxy, peer.timeouts)
    with _registry_lock:
        pool = _peer_pools.get(key)
        if pool is None:
            pool = _peer_pools[key] = BackendPool(peer.proxy, peer.timeouts)
    return pool


def close_peer_pools() -> None:
    with _registry_lock:
        pools = list(_peer_pools.values())
        _peer_pools.clear()
    for p in pools:
        p.close_all()


# ---- client disconnect watcher -------------------------------------------------------------

class Watch:
    """One registration: ``fn`` runs once if the client hangs up before ``cancel()``."""

    __slots__ = ("fd", "fn", "_claim")

    def __init__(self, fd: int, fn: Callable[[], None]):
        self.fd = fd
        self.fn = fn
        # cancel() and the watcher both take a number; whoever gets 0 decides (next() on a
        # count is atomic, so no lock per request)
        self._claim = itertools.count()

    def cancel(self) -> bool:
        """Stop watching; True if the client had already gone (fn ran or is running)."""
        fired = next(self._claim) != 0
        _WATCHER.forget(self)
        return fired

    def claim_for_firing(self) -> bool:
        return next(self._claim) == 0


class DisconnectWatcher:
    """One thread, one epoll: EPOLLRDHUP tells us a client closed its side while its handler
    thread is blocked elsewhere (waiting for a grant, or reading a backend that is still
    thinking). Pipelined request bytes only raise EPOLLIN, which we do not ask for.

    A connection is added to the epoll set once, at its first watch, edge-triggered, and
    stays there until its handler finishes (``release``): a request costs no system call
    here, and no GIL hand-off to another thread under load; a connection's end wakes this
    thread at most for the client's FIN. A hang-up reported while
    nothing watches the connection (between two requests, or before the next watch) is
    remembered, and the next watch of that connection fires at once, as the one-shot
    re-arm of the fd used to report it. An event for an earlier connection that had the
    same fd number is checked against the fd's state now and ignored."""

    _EVENTS = select.EPOLLRDHUP | select.EPOLLET if hasattr(select, "epoll") else 0

    def __init__(self) -> None:
        self._ep = select.epoll() if hasattr(select, "epoll") else None
        self._watches: dict[int, Watch] = {}
        self._socks: dict[int, weakref.ref] = {}  # fd -> the connection registered on it
        self._hung: set[int] = set()  # registered fds that hung up while nothing watched
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, fn: Callable[[], None]) -> Watch | None:
        if self._ep is None:
            return None
        w = Watch(sock.fileno(), fn)
        fd = w.fd
        with self._lock:
            registered = self._socks.get(fd)
            if registered is None or registered() is not sock:  # a new connection
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run,
                                                    name="disconnect-watcher", daemon=True)
                    self._thread.start()
                try:
                    try:
                        self._ep.register(fd, self._EVENTS)
                    except FileExistsError:  # a dup of an earlier file still open
                        self._ep.modify(fd, self._EVENTS)
                except OSError:
                    return None
                self._socks[fd] = weakref.ref(sock)
                self._hung.discard(fd)
                hung = False
            else:
                hung = fd in self._hung
            self._watches[fd] = w
        if hung and w.claim_for_firing():
            try:
                fn()
            except Exception:
                pass
        return w

    def forget(self, w: Watch) -> None:
        with self._lock:
            if self._watches.get(w.fd) is w:
                del self._watches[w.fd]

    def release(self, sock: socket.socket) -> None:
        """A connection is about to close: leave the epoll set now, so that its hang-up and
        close (the client's FIN, then our shutdown) wake this thread for nothing."""
        try:
            fd = sock.fileno()
        except OSError:
            return
        with self._lock:
            registered = self._socks.get(fd)
            if registered is None or registered() is not sock:
                return
            del self._socks[fd]
            self._hung.discard(fd)
            self._watches.pop(fd, None)
        try:
            self._ep.unregister(fd)
        except OSError:
            pass

    def _run(self) -> None:
        while True:
            try:
                events = self._ep.poll()
            except InterruptedError:
                continue
            self.dispatch(events)

    def dispatch(self, events) -> None:
        for fd, _ev in events:
            with self._lock:
                # the check and the record happen under the lock a new connection on this
                # fd registers under, so a late event never marks the new one
                if not _hung_up(fd):
                    continue  # left by an earlier connection with this fd number
                w = self._watches.pop(fd, None)
                if w is None:
                    self._hung.add(fd)
                    continue
            if not w.claim_for_firing():
                continue
            try:
                w.fn()
            except Exception:
                pass


def _hung_up(fd: int) -> bool:
    """Whether the connection on ``fd`` has hung up now (level, not the queued event)."""
    p = select.poll()
    p.register(fd, select.POLLRDHUP)
    return bool(p.poll(0))  # RDHUP, HUP, ERR, or NVAL once the fd is closed


_WATCHER = DisconnectWatcher()


def watch_disconnect(sock: socket.socket, fn: Callable[[], None]) -> Watch | None:
    return _WATCHER.watch(sock, fn)


def unwatch_connection(sock: socket.socket) -> None:
    """The connection is ending: the watcher lets go of it (no wake-up for its close)."""
    _WATCHER.release(sock)
