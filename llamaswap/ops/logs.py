"""Log monitors: ring-buffered byte logs that fan out to live readers and chain to a sink.

Wiring (upstream's, by ``logToStdout``): each backend's output goes to its own monitor, then
to the shared *upstream* monitor; llama-swap's own messages go to the *proxy* monitor; both
may forward to the *mux* monitor, which is what stdout and ``GET /logs`` show. Every monitor
keeps its own 100 KiB history whatever its sink.

Nothing here blocks the writer: live readers drop data when they fall behind, and stdout is
written by a background thread behind a bounded queue, so a parent that never reads our
stdout pipe cannot stall a backend or a request (upstream bug #408/#875).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
import time
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Callable

from llamaswap.config.model import LOG_BUFFER_SIZE
from llamaswap.ops.broadcast import Broadcaster, Subscription

LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 3}


class LogMonitor:
    """A 100 KiB circular byte history plus live subscribers plus an optional sink."""

    def __init__(self, name: str, sink: "LogMonitor | StdoutWriter | None" = None,
                 size: int = LOG_BUFFER_SIZE):
        self.name = name
        self.sink = sink
        self._size = size
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._live: Broadcaster[bytes] = Broadcaster()
        self._listeners: tuple[Callable[[bytes], None], ...] = ()

    def write(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        if not data:
            return
        with self._lock:
            self._buf += data
            excess = len(self._buf) - self._size
            if excess > 0:
                del self._buf[:excess]
        self._live.publish(data)
        for listener in self._listeners:
            listener(data)
        if self.sink is not None:
            self.sink.write(data)

    def history(self) -> bytes:
        with self._lock:
            return bytes(self._buf)

    def subscribe(self, maxsize: int = 1024) -> Subscription[bytes]:
        """Live chunks written after this call. A reader that falls behind loses chunks and
        sees the count in ``Subscription.take_dropped()``."""
        return self._live.subscribe(maxsize)

    def subscribe_with_history(self, maxsize: int = 1024) -> tuple[bytes, Subscription[bytes]]:
        """History and subscription taken atomically: nothing is lost or repeated between them."""
        with self._lock:
            sub = self._live.subscribe(maxsize)
            return bytes(self._buf), sub

    def add_listener(self, fn: Callable[[bytes], None]) -> None:
        """A callback run on every write, in the writer's thread; it must not block."""
        self._listeners = self._listeners + (fn,)

    def close_subscribers(self) -> None:
        self._live.close_all()


class StdoutWriter:
    """Writes to a file descriptor from a daemon thread; drops when the reader is stuck.

    Lines written within ``BATCH_DELAY`` of each other go out in one write: the request path
    pays a deque append, and the writer thread wakes once per burst instead of once per line
    (at a thousand requests a second the per-line wake-ups cost more than the access log)."""

    BATCH_DELAY = 0.005

    def __init__(self, stream: BinaryIO | None = None, maxsize: int = 4096):
        self._stream = stream if stream is not None else _stdout_fd_writer()
        self._pending: deque[bytes] = deque()
        self._maxsize = maxsize
        self._wake = threading.Event()
        self._busy = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="stdout-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if len(self._pending) >= self._maxsize:
            self.dropped += 1
            return
        self._pending.append(data)
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.BATCH_DELAY)
            # cleared before draining: a line appended from here on sets it again
            self._wake.clear()
            self._busy = True
            chunks = []
            while self._pending:
                chunks.append(self._pending.popleft())
            try:
                self._stream.write(b"".join(chunks))
                self._stream.flush()
            except (OSError, ValueError):
                pass
            self._busy = False

    def drain(self, timeout: float = 1.0) -> None:
        """Best effort flush at exit: wait until everything is written or the timeout passes."""
        end = time.monotonic() + timeout
        while (self._pending or self._busy or self._wake.is_set()) and time.monotonic() < end:
            time.sleep(0.01)


class _FdWriter:
    """Unbuffered writes to a file descriptor. A daemon thread still inside sys.stdout's
    BufferedWriter when the interpreter exits aborts the process ("could not acquire lock
    ... at interpreter shutdown"); os.write holds no such lock."""

    def __init__(self, fd: int):
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def flush(self) -> None:
        pass


def _stdout_fd_writer() -> BinaryIO:
    try:
        sys.stdout.flush()
        return _FdWriter(sys.stdout.fileno())  # type: ignore[return-value]
    except (AttributeError, OSError, ValueError):  # no real stdout (embedded, pytest capture)
        return sys.stdout.buffer


# Go's named layouts (time package constants) rendered with strftime plus fractions.
_TIME_FORMATS: dict[str, Callable[[datetime], str]] = {
    "ansic": lambda t: t.strftime("%a %b ") + f"{t.day:>2}" + t.strftime(" %H:%M:%S %Y"),
    "unixdate": lambda t: t.strftime("%a %b ") + f"{t.day:>2}" + t.strftime(" %H:%M:%S %Z %Y"),
    "rubydate": lambda t: t.strftime("%a %b %d %H:%M:%S %z %Y"),
    "rfc822": lambda t: t.strftime("%d %b %y %H:%M %Z"),
    "rfc822z": lambda t: t.strftime("%d %b %y %H:%M %z"),
    "rfc850": lambda t: t.strftime("%A, %d-%b-%y %H:%M:%S %Z"),
    "rfc1123": lambda t: t.strftime("%a, %d %b %Y %H:%M:%S %Z"),
    "rfc1123z": lambda t: t.strftime("%a, %d %b %Y %H:%M:%S %z"),
    "rfc3339": lambda t: t.isoformat(timespec="seconds"),
    "rfc3339nano": lambda t: t.isoformat(timespec="microseconds"),
    "kitchen": lambda t: t.strftime("%I:%M%p").lstrip("0"),
    "stamp": lambda t: t.strftime("%b ") + f"{t.day:>2}" + t.strftime(" %H:%M:%S"),
    "stampmilli": lambda t: t.strftime("%b ") + f"{t.day:>2}" + t.strftime(" %H:%M:%S.")
    + f"{t.microsecond // 1000:03d}",
    "stampmicro": lambda t: t.strftime("%b ") + f"{t.day:>2}" + t.strftime(" %H:%M:%S.%f"),
    "stampnano": lambda t: t.strftime("%b ") + f"{t.day:>2}" + t.strftime(" %H:%M:%S.%f")
    + "000",
}


class ProxyLogger:
    """llama-swap's own messages: ``[<ts> ][LEVEL] msg`` lines written to a monitor."""

    def __init__(self, monitor: LogMonitor, level: str = "info", time_format: str = ""):
        self.monitor = monitor
        self.configure(level, time_format)

    def configure(self, level: str = "info", time_format: str = "") -> None:
        self._level = LEVELS.get(level.strip().lower(), LEVELS["info"])
        self._stamp = _TIME_FORMATS.get(time_format.strip().lower())

    def enabled(self, level: str) -> bool:
        """Whether ``level`` is written (to skip building a message nobody sees)."""
        return LEVELS[level] >= self._level

    def log(self, level: str, msg: str) -> None:
        if LEVELS[level] < self._level:
            return
        prefix = self._stamp(datetime.now().astimezone()) + " " if self._stamp else ""
        self.monitor.write(f"{prefix}[{level.upper()}] {msg}\n")

    def debug(self, msg: str) -> None:
        self.log("debug", msg)

    def info(self, msg: str) -> None:
        self.log("info", msg)

    def warn(self, msg: str) -> None:
        self.log("warn", msg)

    def error(self, msg: str) -> None:
        self.log("error", msg)


@dataclass
class Loggers:
    mux: LogMonitor  # what stdout and GET /logs show
    proxy: LogMonitor  # llama-swap's own messages
    upstream: LogMonitor  # every backend's output
    log: ProxyLogger  # writes to `proxy`
    stdout: StdoutWriter | None = None


def build_loggers(log_to_stdout: str = "proxy", stdout: BinaryIO | None = None,
                  level: str = "info", time_format: str = "") -> Loggers:
    """Wire the three monitors as upstream does for each ``logToStdout`` value."""
    writer = None if log_to_stdout == "none" else StdoutWriter(stdout)
    mux = LogMonitor("mux", sink=writer)
    mode = log_to_stdout if log_to_stdout in ("proxy", "upstream", "both", "none") else "proxy"
    proxy = LogMonitor("proxy", sink=mux if mode in ("proxy", "both") else None)
    upstream = LogMonitor("upstream", sink=mux if mode in ("upstream", "both") else None)
    return Loggers(mux=mux, proxy=proxy, upstream=upstream,
                   log=ProxyLogger(proxy, level, time_format), stdout=writer)


def new_process_log(model_id: str, upstream: LogMonitor) -> LogMonitor:
    """A backend's own 100 KiB history, chained to the shared upstream monitor."""
    return LogMonitor(f"model:{model_id}", sink=upstream)

