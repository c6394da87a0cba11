"""Live config reload, from SIGHUP or ``-watch-config`` (behaviour.md 1.4).

The new file is loaded and validated completely before anything changes; on any error the
proxy keeps running on the old config and logs ``failed to reload config: <why>``. Beyond
upstream (which rebuilds everything and so unloads every model): models whose effective
config is unchanged (``ModelConfig ==``) keep their Process and keep serving; changed and
removed models are drained and stopped (``Router.reconfigure``, via ``App.reload``); new
settings apply to the next request. Models that stay keep their ``${PORT}`` (the new config is
loaded with ``previous=``), so adding or removing a model, or a GGUF file in ``-models-dir``,
does not re-number the others and restart them. ``/api/events`` clients get a fresh ``modelStatus``, and
the preload hook runs again, as upstream. A reload that starts while another is running is
dropped, as upstream.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable

from llamaswap.ops.events import ConfigChanged
from llamaswap.ops.watcher import DEFAULT_INTERVAL, ConfigWatcher

PROFILES_WARNING = ("Profile functionality has been removed in favor of Groups. "
                    "See the README for more information.")


class Reloader:
    """Reloads ``holder.app`` from ``path``. ``reload()`` runs in the caller's thread;
    ``trigger()`` starts it in a background thread (safe from a signal handler)."""

    def __init__(self, holder: Any, path: str | None, *,
                 load: Callable[[str | None, Any], Any] | None = None,
                 preload: bool = True, snapshot: Callable[[], Hashable] | None = None):
        self.holder = holder
        self.path = path  # None: no config file (only -config-dir or -models-dir)
        self._load = load
        self._snapshot = snapshot  # what the watcher also compares (-config-dir, -models-dir)
        self._preload = preload
        self._lock = threading.Lock()
        self._running = False
        self._watcher: ConfigWatcher | None = None
        self.reloads = 0  # successful reloads, for tests and logs

    @property
    def log(self) -> Any:
        return self.holder.app.loggers.log

    def trigger(self) -> threading.Thread:
        t = threading.Thread(target=self.reload, name="config-reload", daemon=True)
        t.start()
        return t

    def reload(self) -> bool:
        """True when the new config is in service; False when it failed or was dropped."""
        with self._lock:
            if self._running:
                return False
            self._running = True
        try:
            return self._reload()
        finally:
            with self._lock:
                self._running = False

    def _reload(self) -> bool:
        log = self.log
        log.info("reloading configuration")
        try:
            # the config in service: models that stay keep their ${PORT} (macros.py step 5)
            previous = self.holder.app.config
            if self._load is None:
                from llamaswap.config import load_config
                new_cfg = load_config(self.path, previous=previous)
            else:
                new_cfg = self._load(self.path, previous)
        except Exception as e:  # ConfigError, or the file vanished between stat and open
            log.warn(f"failed to reload config: {e}")
            return False
        if getattr(new_cfg, "has_profiles", False):
            log.warn(PROFILES_WARNING)
        for warning in new_cfg.warnings:
            log.warn(warning)
        old_app = self.holder.app
        try:
            new_app = old_app.reload(new_cfg)
        except Exception as e:
            log.warn(f"failed to build new server during reload: {e}")
            return False
        if new_app is not None and new_app is not old_app:
            self.holder.app = new_app
        app = self.holder.app
        app.loggers.log.configure(new_cfg.log_level, new_cfg.log_time_format)
        app.events.publish(ConfigChanged())
        kept = sorted(m for m, p in app.processes.items() if old_app.processes.get(m) is p)
        replaced = sorted(m for m in old_app.processes if m not in kept)
        log.info(f"config reload: unchanged models {kept} keep their process; "
                 f"changed or removed models {replaced} were stopped")
        if self._preload:
            from llamaswap.ops.preload import start_preload
            start_preload(app)
        self.reloads += 1
        log.info("configuration reloaded")
        return True

    # ---- -watch-config
    def watch(self, interval: float = DEFAULT_INTERVAL) -> ConfigWatcher:
        self.log.info("watching configuration for changes (poll-based, 2s interval)")
        self._watcher = ConfigWatcher(self.path, self.reload, interval=interval,
                                      log=self.log, also=self._snapshot).start()
        return self._watcher

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
