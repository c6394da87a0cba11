"""The config file watcher behind ``-watch-config``: ``stat()`` polling, not inotify.

Polling works where change notifications do not: Docker single-file bind mounts, Kubernetes
ConfigMaps (a symlink whose target is swapped atomically), editors that save by rename, and
macOS. ``stat`` follows symlinks, so a swapped target shows up as a new inode even when its
size and mtime happen to match. The first poll is the baseline and never fires; a file that
vanishes is silent (it is usually being replaced) and fires when it comes back.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Hashable, NamedTuple

DEFAULT_INTERVAL = 2.0


class Snapshot(NamedTuple):
    exists: bool
    mtime_ns: int = 0
    size: int = 0
    inode: int = 0
    device: int = 0


MISSING = Snapshot(False)


def take_snapshot(path: str, log: Any = None) -> Snapshot:
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        return MISSING
    except NotADirectoryError:
        return MISSING
    except OSError as e:
        if log is not None:
            log.warn(f"configwatcher: stat {path}: {e}")
        return MISSING
    return Snapshot(True, st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def changed(prev: Snapshot, cur: Snapshot) -> bool:
    if not cur.exists:
        return False  # present -> missing: wait for it to come back
    if not prev.exists:
        return True
    return prev != cur


class ConfigWatcher:
    """Polls ``path`` every ``interval`` seconds from a daemon thread and calls ``on_change``
    (in that thread) when the file changed, or when ``also()`` (e.g. the -models-dir listing)
    returns something else than at the last poll. ``path`` may be None when only ``also`` is
    watched. ``poll()`` is the single step, usable directly."""

    def __init__(self, path: str | None, on_change: Callable[[], None], *,
                 interval: float = DEFAULT_INTERVAL, log: Any = None,
                 also: Callable[[], Hashable] | None = None):
        self.path = path and os.path.abspath(path)
        self.on_change = on_change
        self.interval = interval
        self.log = log
        self.also = also
        self._prev: Snapshot | None = None
        self._prev_also: Hashable = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """One poll; True when it fired. The first call only records the baseline."""
        cur = take_snapshot(self.path, self.log) if self.path else MISSING
        prev, self._prev = self._prev, cur
        also = self.also() if self.also is not None else None
        prev_also, self._prev_also = self._prev_also, also
        if prev is None or not (changed(prev, cur) or also != prev_also):
            return False
        try:
            self.on_change()
        except Exception as e:  # a failing reload must not end the watching
            if self.log is not None:
                self.log.error(f"configwatcher: reload failed: {e}")
        return True

    def start(self) -> "ConfigWatcher":
        self.poll()  # baseline now, so a change right after start is seen
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None


class DirSnapshot(NamedTuple):
    exists: bool
    files: tuple[tuple[str, Snapshot], ...] = ()  # (name, state) of each *.yml/*.yaml, sorted


def take_dir_snapshot(path: str, log: Any = None) -> DirSnapshot:
    """The -config-dir's YAML files (not recursive), as the loader picks them: a file added,
    changed or removed gives another snapshot (ConfigWatcher's ``also``)."""
    try:
        names = sorted(e.name for e in os.scandir(path)
                       if e.name.endswith((".yml", ".yaml")) and not e.is_dir())
    except OSError:
        return DirSnapshot(False)
    files = tuple((n, s) for n in names if (s := take_snapshot(os.path.join(path, n), log)).exists)
    return DirSnapshot(True, files)
