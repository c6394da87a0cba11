"""The running proxy's parts, built from one Config: what every HTTP handler reads.

A reload builds a new App that shares the router, the in-flight counter, the activity log
and the captures with the old one, and reuses the Process of every model whose effective
config did not change, so those models keep running and serving (upstream rebuilds
everything and unloads every model on reload). A model's log outlives its Process.
"""

from __future__ import annotations

import threading
import time
from typing import Mapping

import llamaswap
from llamaswap.config.model import Config
from llamaswap.http.slots import Slots
from llamaswap.ops import hardware
from llamaswap.ops.activity import ActivityLog
from llamaswap.ops.captures import CaptureStore
from llamaswap.ops.events import EventBus, ProfileChanged
from llamaswap.ops.inflight import InFlightTable
from llamaswap.ops.logs import Loggers, new_process_log
from llamaswap.ops.memory_monitor import MemoryMonitor, state_path_for
from llamaswap.ops.performance import PerformanceMonitor
from llamaswap.ops.timeline import timeline_for
from llamaswap.process import Process
from llamaswap.router import PeerDirectory, Router
from llamaswap.router.profiles import ProfileSwitch
from llamaswap.router.selectors import Selectors


def _announce_profile(loggers: Loggers, events: EventBus):
    """What a profile switch does once it took effect: the log line and profileChanged."""
    def announce(name: str) -> None:
        loggers.log.info(f'active profile changed to "{name}"')
        events.publish(ProfileChanged(name))
    return announce


class App:
    def __init__(self, *, config: Config, loggers: Loggers, events: EventBus,
                 processes: dict[str, Process], router: Router, peers: PeerDirectory,
                 activity: ActivityLog, captures: CaptureStore, inflight: InFlightTable,
                 started_at: float, performance: PerformanceMonitor | None = None,
                 key_slots: Slots | None = None, profiles: ProfileSwitch | None = None,
                 memory: MemoryMonitor | None = None):
        self.config = config
        self.loggers = loggers
        self.events = events
        self.processes = processes
        self.router = router
        self.peers = peers
        self.activity = activity
        self.captures = captures
        self.inflight = inflight
        self.started_at = started_at
        # None when disabled at startup: a reload cannot turn it on (as upstream)
        self.performance = performance
        self.memory = memory  # measures the backends (ops/memory_monitor.py)
        # requests in flight per API key (maxInFlight): kept across reloads, like inflight
        self.key_slots = key_slots if key_slots is not None else Slots()
        # runtime profile and selector state: what the request path reads before routing.
        # The profile switch is kept across reloads (reload() reconfigures it).
        self.profiles = profiles if profiles is not None else ProfileSwitch(
            config, on_change=_announce_profile(loggers, events))
        self.selectors = Selectors(config)
        self._shutdown_lock = threading.Lock()
        self._shut = False

    @classmethod
    def build(cls, config: Config, loggers: Loggers, events: EventBus | None = None) -> "App":
        events = events if events is not None else EventBus()
        hardware.start(llamaswap.__version__, loggers.log)  # in its own thread
        timeline_for(events)  # the UI's history of state changes starts with the first one
        memory = MemoryMonitor(loggers.log, events, state_path=state_path_for(config.path),
                               sqlite_path=config.store_path)
        memory.configure(config)  # resolves auto budgets: a ConfigError stops the start here
        processes = _processes(config, loggers, events, keep={})
        router = Router(config, processes, log=loggers.log, events=events, memory=memory)
        memory.attach(router, processes)
        router.start()
        captures = CaptureStore(config.capture_buffer, log=loggers.log)
        performance = None
        if config.performance.disabled:
            loggers.log.info("performance monitoring is disabled")
        else:
            performance = PerformanceMonitor(config.performance, loggers.log)
            performance.start()
        return cls(config=config, loggers=loggers, events=events, processes=processes,
                   router=router, peers=PeerDirectory(config, loggers.log),
                   activity=ActivityLog(config.metrics_max_in_memory, events=events,
                                        captures=captures, log=loggers.log,
                                        store_path=config.store_path),
                   captures=captures, inflight=InFlightTable(events), started_at=time.time(),
                   performance=performance, memory=memory)

    def reload(self, config: Config) -> "App":
        """An App for `config`: unchanged models keep their Process; changed and removed
        ones are drained and stopped by the router. Returns once the new config routes."""
        keep = {mid: proc for mid, proc in self.processes.items()
                if mid in config.models and config.models[mid] == proc.config}
        # a replaced model keeps its log: open /logs/stream readers go on with the new process
        logs = {mid: proc.log for mid, proc in self.processes.items()}
        processes = _processes(config, self.loggers, self.events, keep, logs)
        if self.memory is not None:
            self.memory.configure(config)  # auto budgets read here, not on the router thread
        self.router.reconfigure(config, processes,
                                stop=[mid for mid in self.processes if mid not in keep])
        if self.memory is not None:
            self.memory.attach(self.router, processes)
        # the history survives a reload (as upstream's store); a new store.path opens that
        # file and closes the old one, and so does the same path after it had failed (the
        # fault may be fixed); captures go with the ids of their store
        activity = self.activity
        new_store = config.store_path != activity.store_path or (
            config.store_path is not None and activity.store.in_memory)
        captures = self.captures
        if config.capture_buffer != self.config.capture_buffer or new_store:
            captures = CaptureStore(config.capture_buffer, log=self.loggers.log)
        if new_store:
            activity = ActivityLog(config.metrics_max_in_memory, events=self.events,
                                   captures=captures, log=self.loggers.log,
                                   store_path=config.store_path)
            self.activity.close()
        else:
            activity.reconfigure(config.metrics_max_in_memory, captures)
        if self.performance is not None:
            self.performance.update(config.performance)
        # The active profile stays active while the new config still defines it (upstream
        # resets it on every reload); spillover counts start afresh, as upstream.
        self.profiles.reconfigure(config)
        return App(config=config, loggers=self.loggers, events=self.events,
                   processes=processes, router=self.router,
                   peers=PeerDirectory(config, self.loggers.log), activity=activity,
                   captures=captures, inflight=self.inflight, started_at=self.started_at,
                   performance=self.performance, key_slots=self.key_slots,
                   profiles=self.profiles, memory=self.memory)

    def shutdown(self, grace: float | None = None) -> None:
        """Answer every waiting request and stop every backend (each with its own unload
        grace, in parallel). Safe to call twice."""
        with self._shutdown_lock:
            if self._shut:
                return
            self._shut = True
        if self.performance is not None:
            self.performance.stop()
        self.router.shutdown(grace)
        if self.memory is not None:
            self.memory.stop()  # and saves what was learned
        self.activity.close()
        from llamaswap.http.pool import close_peer_pools
        close_peer_pools()


def _processes(config: Config, loggers: Loggers, events: EventBus,
               keep: Mapping[str, Process], logs: Mapping[str, object] | None = None
               ) -> dict[str, Process]:
    logs = logs or {}
    return {mid: keep[mid] if mid in keep else
            Process(mcfg, log=logs.get(mid) or new_process_log(mid, loggers.upstream),
                    proxy_log=loggers.log, events=events)
            for mid, mcfg in config.models.items()}
