"""The memory monitor: measures what each backend really uses and tells the router.

It lives at the edge: one thread reads ``nvidia-smi`` and /proc right after a model becomes
ready or falls asleep and every ``memory.every`` seconds while models are resident, and
posts each model's reading to the router (``Router.measured``), which plans with numbers
only. A GPU figure is attributed by PID (the compute processes in the backend's process
group, session or descendants); when nvidia-smi's PIDs match none of ours (a container
without the host's PID namespace), a model's GPU need is the rise in the device's
``memory.used`` between just before its spawn (read in the starting thread, see
``Process.add_start_hook``) and its first reading when ready, provided no other load
overlapped it. RAM is the backend's proportional set size (PSS), or RSS where the kernel
has no PSS.

It also resolves ``auto`` budgets when the proxy starts or reloads, and keeps the learned
needs, keyed by model id and command, so they survive restarts: in the SQLite store's file
when ``store.path`` is set, else in a state file next to the config
(``<config stem>.memory.json``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Mapping

from llamaswap.config.errors import ConfigError
from llamaswap.ops import memory_probe as probe
from llamaswap.ops.events import ProcessStateChanged
from llamaswap.sizes import gpu_index

STATE_VERSION = 1
RESIDENT = ("ready", "sleeping")


def state_path_for(config_path: str | None) -> str | None:
    """``/etc/llama-swap/config.yaml`` -> ``/etc/llama-swap/config.memory.json``."""
    if not config_path or config_path.startswith("<"):
        return None
    base, _ext = os.path.splitext(os.path.abspath(config_path))
    return base + ".memory.json"


class NeedStore:
    """Learned needs: {(model, command): {"awake": {device: bytes}, "asleep": {...}}}, kept
    in the SQLite store's file when ``store.path`` is set (table ``memory_needs``), else in a
    JSON state file next to the config. Read once; written off the router thread."""

    def __init__(self, path: str | None, log: Any, sqlite_path: str | None = None):
        self.path = sqlite_path or path
        self._sqlite = sqlite_path is not None
        self._log = log
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
        self._dirty = False
        self._warned = False
        if self.path is not None:
            try:
                self._read_sqlite() if self._sqlite else self._read_json()
            except (OSError, ValueError, sqlite3.Error) as exc:
                self._log.warn(f"memory: cannot read learned needs from {self.path}: {exc}; "
                               "starting without them")

    def _read_json(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        for entry in data.get("needs", []) if isinstance(data, dict) else []:
            try:
                key = (str(entry["model"]), str(entry["cmd"]))
                self._entries[key] = {
                    level: {str(d): int(v) for d, v in (entry.get(level) or {}).items()}
                    for level in ("awake", "asleep")}
            except (KeyError, TypeError, ValueError, AttributeError):
                continue

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0)
        conn.execute(_NEEDS_TABLE)
        return conn

    def _read_sqlite(self) -> None:
        if not os.path.exists(self.path):
            return
        conn = self._connect()
        try:
            for model, cmd, level, device, value in conn.execute(
                    "SELECT model_id, cmd, level, device, bytes FROM memory_needs"):
                entry = self._entries.setdefault((model, cmd), {"awake": {}, "asleep": {}})
                if level in entry:
                    entry[level][device] = int(value)
        finally:
            conn.close()

    def initial(self) -> tuple[dict, dict]:
        with self._lock:
            return ({k: dict(v["awake"]) for k, v in self._entries.items() if v.get("awake")},
                    {k: dict(v["asleep"]) for k, v in self._entries.items() if v.get("asleep")})

    def put(self, model: str, command: str, asleep: bool, need: Mapping[str, int]) -> None:
        with self._lock:
            entry = self._entries.setdefault((model, command), {"awake": {}, "asleep": {}})
            entry["asleep" if asleep else "awake"] = dict(need)
            self._dirty = self.path is not None

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            entries = {k: {lv: dict(v) for lv, v in e.items()} for k, e in self._entries.items()}
        try:
            self._write_sqlite(entries) if self._sqlite else self._write_json(entries)
        except (OSError, sqlite3.Error) as exc:
            if not self._warned:
                self._warned = True
                self._log.warn(f"memory: cannot save learned needs to {self.path}: {exc}; "
                               "they will be measured again after a restart")

    def _write_json(self, entries: dict) -> None:
        data = {"version": STATE_VERSION, "needs": [
            {"model": m, "cmd": c, "awake": v["awake"], "asleep": v["asleep"]}
            for (m, c), v in sorted(entries.items())]}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write_sqlite(self, entries: dict) -> None:
        conn = self._connect()
        try:
            with conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO memory_needs (model_id, cmd, level, device, bytes) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(m, c, level, d, v) for (m, c), e in entries.items()
                     for level, needs in e.items() for d, v in needs.items()])
        finally:
            conn.close()


_NEEDS_TABLE = """CREATE TABLE IF NOT EXISTS memory_needs (
    model_id TEXT NOT NULL, cmd TEXT NOT NULL, level TEXT NOT NULL, device TEXT NOT NULL,
    bytes INTEGER NOT NULL, PRIMARY KEY (model_id, cmd, level, device))"""


class MemoryMonitor:
    def __init__(self, log: Any, events: Any = None, *, nvidia_smi: str = "nvidia-smi",
                 proc: str = "/proc", state_path: str | None = None,
                 sqlite_path: str | None = None):
        self._log = log
        self._events = events
        self._proc = proc
        self._smi_name = nvidia_smi
        self._smi: str | None = None
        self._smi_failed = False  # warned about nvidia-smi; GPU figures are declared only
        self.store = NeedStore(state_path, log, sqlite_path)
        self._lock = threading.Condition()
        self._budgets: dict[str, int] = {}
        self._memory = None  # the MemoryConfig in force
        self._router = None
        self._processes: Mapping[str, Any] = {}
        self._hooked: set[int] = set()
        self._due: set[str] = set()  # models to measure at once
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        # attribution state
        self._pid_mode: bool | None = None  # nvidia-smi's PIDs are ours (None: not seen yet)
        self._before: dict[str, dict[str, int]] = {}  # model -> GPU used just before its spawn
        self._loading: set[str] = set()  # spawned, not yet measured ready
        self._overlapped: set[str] = set()  # loads that shared a device with another load
        self._rise: dict[str, dict[str, int]] = {}  # model -> GPU need by rise, this load
        self._device_used: dict[str, int] = {}  # last device-level readings (GPU), bytes
        self._device_total: dict[str, int] = {}
        self._methods: dict[str, dict[str, str]] = {}  # model -> device -> pid|rise|pss|rss
        if events is not None:
            events.add_listener(self._on_state, (ProcessStateChanged,))

    # ---- configuration (startup and reload threads) -------------------------------------

    def configure(self, config) -> None:
        """Take a config's ``memory`` section: find nvidia-smi, resolve ``auto`` budgets.
        Raises ConfigError for an ``auto`` budget nothing can read."""
        memory = config.memory
        budgets: dict[str, int] = {}
        if memory is not None:
            gpus_wanted = [d for d in memory.devices if gpu_index(d) is not None]
            reading = None
            if any(memory.devices[d] is None for d in gpus_wanted):  # auto: read the totals
                reading = self._gpu_reading(apps=False)
            for device, budget in memory.devices.items():
                if budget is None:
                    budget = self._detect_total(device, reading)
                    if budget is None:
                        raise ConfigError(
                            f"{config.path}: memory.devices.{device}: auto needs the device's "
                            f"total memory, and nothing could read it"
                            + (" (nvidia-smi is missing or failing)" if device != "ram" else ""))
                    self._log.info(f"memory: {device} budget auto = {budget} bytes")
                budgets[device] = budget
            for device in gpus_wanted:
                if reading is not None and gpu_index(device) not in reading.gpus:
                    self._log.warn(f"memory: nvidia-smi shows no GPU with index "
                                   f"{gpu_index(device)} for {device}")
        with self._lock:
            self._memory = memory
            self._budgets = budgets
        if memory is not None:
            self.start()
        else:
            self.stop()

    def _detect_total(self, device: str, reading) -> int | None:
        if device == "ram":
            return probe.total_ram(self._proc)
        gpu = reading.gpus.get(gpu_index(device)) if reading is not None else None
        return gpu.total if gpu is not None else None

    def budgets_for(self, config) -> dict[str, int]:
        """The budgets `configure` resolved (no I/O: the router thread calls this)."""
        with self._lock:
            return dict(self._budgets)

    def initial_learned(self) -> tuple[dict, dict]:
        return self.store.initial()

    def learned(self, model: str, command: str, asleep: bool, need: Mapping[str, int]) -> None:
        """From the router thread: never blocks on I/O (the monitor thread writes)."""
        self.store.put(model, command, asleep, need)
        with self._lock:
            self._lock.notify_all()

    def attach(self, router, processes: Mapping[str, Any]) -> None:
        """The router to feed and the processes to watch (again after each reload)."""
        with self._lock:
            self._router = router
            self._processes = dict(processes)
            for process in processes.values():
                if id(process) not in self._hooked:
                    self._hooked.add(id(process))
                    process.add_start_hook(self._before_spawn)
            self._due |= {m for m, p in processes.items() if _state(p) in RESIDENT}
            self._lock.notify_all()

    # ---- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            stop = self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(stop,), name="memory",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            stop, self._stop, self._thread = self._stop, None, None
            self._lock.notify_all()
        if stop is not None:
            stop.set()
        self.store.flush()

    def _on_state(self, event: ProcessStateChanged) -> None:
        """Event bus listener (publisher's thread, under the process lock): note, wake."""
        if event.new in RESIDENT or event.old in RESIDENT or event.new == "stopped":
            with self._lock:
                if event.new in RESIDENT:
                    self._due.add(event.model)
                if event.new == "stopped":
                    self._loading.discard(event.model)
                    self._before.pop(event.model, None)
                    self._rise.pop(event.model, None) if event.old != "sleeping" else None
                self._lock.notify_all()

    def _run(self, stop: threading.Event) -> None:
        next_round = time.monotonic()
        while not stop.is_set():
            with self._lock:
                memory = self._memory
                every = memory.every if memory is not None else 5.0
                timeout = max(0.0, next_round - time.monotonic())
                if not self._due and timeout > 0:
                    self._lock.wait(timeout)
                if stop.is_set():
                    return
                due, self._due = self._due, set()
                router, processes = self._router, dict(self._processes)
            periodic = time.monotonic() >= next_round
            if periodic:
                next_round = time.monotonic() + every
            try:
                if router is not None and memory is not None:
                    self._measure(router, processes, due, periodic)
                self.store.flush()
            except Exception as exc:  # a bug here must not stop the measuring
                self._log.error(f"memory: measuring failed: {exc!r}")

    # ---- measuring -------------------------------------------------------------------------

    def _gpu_devices(self) -> list[str]:
        memory = self._memory
        return [d for d in (memory.devices if memory is not None else ()) if gpu_index(d) is not None]

    def _gpu_reading(self, apps: bool = True):
        """One nvidia-smi reading, or None (with one warning) when it cannot be read."""
        if self._smi is None:
            self._smi = probe.find_nvidia_smi(self._smi_name)
            if self._smi is None:
                return self._smi_down(f"{self._smi_name} not found")
        try:
            reading = probe.read_gpus(self._smi, apps=apps)
        except probe.ProbeError as exc:
            return self._smi_down(str(exc))
        if self._smi_failed:
            self._smi_failed = False
            self._log.info("memory: nvidia-smi answers again")
        self._device_used = {f"gpu{i}": g.used for i, g in reading.gpus.items()}
        self._device_total = {f"gpu{i}": g.total for i, g in reading.gpus.items()}
        return reading

    def _smi_down(self, why: str) -> None:
        if not self._smi_failed:
            self._smi_failed = True
            self._log.warn(f"memory: {why}: GPU devices use declared needs only until "
                           "nvidia-smi answers (a model without one runs alone)")
        return None

    def _before_spawn(self, model: str) -> None:
        """Start hook (the starting thread): the GPUs' use just before the spawn, for the
        rise fallback. Skipped once nvidia-smi's PIDs are known to be ours."""
        if not self._gpu_devices() or self._pid_mode:
            return
        reading = self._gpu_reading(apps=False)
        with self._lock:
            if self._loading:
                self._overlapped |= self._loading | {model}
            self._loading.add(model)
            if reading is not None:
                self._before[model] = {f"gpu{i}": g.used for i, g in reading.gpus.items()}

    def _measure(self, router, processes: Mapping[str, Any], due: set[str], periodic: bool) -> None:
        resident = {m: p for m, p in processes.items() if _state(p) in RESIDENT}
        targets = resident if periodic else {m: p for m, p in resident.items() if m in due}
        if not targets:
            return
        devices = self._memory.devices
        gpu_devices = self._gpu_devices()
        reading = self._gpu_reading() if gpu_devices else None
        table = probe.process_table(self._proc)
        trees = {m: probe.tree_of(p.pid, table) for m, p in resident.items() if p.pid}
        ours = set().union(*trees.values()) if trees else set()
        if reading is not None and any(pid in ours for pid, _u, _b in reading.apps):
            self._pid_mode = True
        for model, process in targets.items():
            state = _state(process)
            tree = trees.get(model)
            if not tree:
                continue
            usage: dict[str, int] = {}
            methods: dict[str, str] = {}
            if reading is not None:
                self._gpu_usage(model, state, tree, reading, gpu_devices, usage, methods)
            if "ram" in devices:
                usage["ram"], methods["ram"] = probe.ram_of(tree, self._proc)
            if _state(process) != state or process.pid is None:
                continue  # it changed while we read: this reading belongs to no level
            with self._lock:
                self._methods[model] = methods
            router.measured(model, usage, state == "sleeping")

    def _gpu_usage(self, model: str, state: str, tree: set[int], reading, gpu_devices,
                   usage: dict, methods: dict) -> None:
        if self._pid_mode:
            for device in gpu_devices:
                gpu = reading.gpus.get(gpu_index(device))
                if gpu is None:
                    continue
                usage[device] = sum(b for pid, uuid, b in reading.apps
                                    if pid in tree and uuid == gpu.uuid)
                methods[device] = "pid"
            with self._lock:
                self._loading.discard(model)
                self._before.pop(model, None)
            return
        with self._lock:
            before = self._before.pop(model, None)
            clean = model not in self._overlapped
            self._overlapped.discard(model)
            self._loading.discard(model)
            if before is not None and clean and state == "ready":
                self._rise[model] = {
                    d: max(0, reading.gpus[gpu_index(d)].used - before.get(d, 0))
                    for d in gpu_devices if gpu_index(d) in reading.gpus}
            rise = self._rise.get(model)
        if rise is not None and state == "ready":
            for device, value in rise.items():
                usage[device] = value
                methods[device] = "rise"

    # ---- reports -------------------------------------------------------------------------------

    def devices(self) -> dict[str, dict[str, int]]:
        """The last device-level GPU readings: {"gpu0": {"total": N, "used": N}}."""
        with self._lock:
            return {d: {"total": self._device_total.get(d, 0), "used": u}
                    for d, u in self._device_used.items()}

    def methods(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {m: dict(v) for m, v in self._methods.items()}


def _state(process) -> str:
    state = process.state
    return getattr(state, "value", state)
