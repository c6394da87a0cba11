"""``GET /metrics``: Prometheus text exposition (format 0.0.4).

Upstream exposes only system gauges from its performance monitor (behaviour.md 3.5.8); those
keep their names here, read from /proc on each scrape. Beyond upstream, operators get
per-model request, token and load metrics, the state of every model, in-flight requests and
the router queue, and the proxy's own CPU and memory.

``RequestMetrics`` is fed from the event bus (``ActivityRecorded``, ``SwapFinished``) as a
synchronous listener and outlives config reloads, so counters never go backwards while the proxy runs.
Gauges that describe "now" (states, in-flight, queue) are read from the App at scrape time.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any, Iterable, Sequence

from llamaswap.ops.events import (ActivityRecorded, HealthCheckFailed, ModelRestarting,
                                  ProcessStateChanged, QueueWaited, SwapFinished)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MB = 1024 * 1024

REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LOAD_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STATES = ("stopped", "starting", "ready", "stopping", "shutdown", "backoff", "sleeping")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(str(v))}"' for k, v in pairs) + "}"


class Exposition:
    """Writes metric families: each name once, HELP and TYPE first, then its samples."""

    def __init__(self) -> None:
        self._out: list = []  # text, or a family's list of lines (so later samples can join it)
        self._families: dict[str, list[str]] = {}

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Sequence[tuple[str, str]], float]]) -> None:
        """A family's samples; a name written again adds its samples to the first block
        (``llamaswap_memory_used_bytes`` is upstream's system gauge and, with a device
        label, memory-aware swapping's)."""
        samples = list(samples)
        if not samples:
            return
        lines = self._families.get(name)
        if lines is None:
            lines = self._families[name] = [f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"]
            self._out.append(lines)
        for labels, value in samples:
            lines.append(f"{name}{_labels(labels)} {format_value(value)}\n")

    def histogram(self, name: str, help_text: str, buckets: Sequence[float],
                  series: Iterable[tuple[Sequence[tuple[str, str]], "Histogram"]]) -> None:
        series = list(series)
        if not series:
            return
        self._out.append(f"# HELP {name} {help_text}\n# TYPE {name} histogram\n")
        for labels, h in series:
            cumulative = 0
            for bound, count in zip(buckets, h.counts):
                cumulative += count
                le = list(labels) + [("le", format_value(float(bound)))]
                self._out.append(f"{name}_bucket{_labels(le)} {cumulative}\n")
            le = list(labels) + [("le", "+Inf")]
            self._out.append(f"{name}_bucket{_labels(le)} {h.count}\n")
            self._out.append(f"{name}_sum{_labels(labels)} {format_value(h.sum)}\n")
            self._out.append(f"{name}_count{_labels(labels)} {h.count}\n")

    def text(self) -> str:
        return "".join(part if isinstance(part, str) else "".join(part) for part in self._out)


class Histogram:
    __slots__ = ("buckets", "counts", "count", "sum")

    def __init__(self, buckets: Sequence[float]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.count += 1
        self.sum += v
        for i, bound in enumerate(self.buckets):
            if v <= bound:
                self.counts[i] += 1
                return


def _observe(table: dict[str, Histogram], model: str, buckets: Sequence[float], value: float) -> None:
    h = table.get(model)
    if h is None:
        h = table[model] = Histogram(buckets)
    h.observe(value)


class RequestMetrics:
    """Counters and histograms fed by events. Thread-safe; ``handle`` never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}  # (model, status, key name)
        self.input_tokens: dict[str, int] = {}
        self.output_tokens: dict[str, int] = {}
        self.cached_tokens: dict[str, int] = {}
        self.durations: dict[str, Histogram] = {}
        self.loads: dict[tuple[str, str], int] = {}
        self.load_durations: dict[str, Histogram] = {}
        self.sleeps: dict[str, int] = {}
        self.wakes: dict[str, int] = {}
        self.restarts: dict[tuple[str, str], int] = {}
        self.health_failures: dict[str, int] = {}
        self.queue_waits: dict[str, Histogram] = {}
        self._bus: Any = None

    def handle(self, event: Any) -> None:
        if isinstance(event, ActivityRecorded):
            e = event.entry
            model = e.model
            t = e.tokens
            key = (model, str(e.resp_status_code), e.key)
            with self._lock:  # runs in the request's thread: plain dict updates only
                self.requests[key] = self.requests.get(key, 0) + 1
                self.input_tokens[model] = self.input_tokens.get(model, 0) + max(0, t.input_tokens)
                self.output_tokens[model] = (self.output_tokens.get(model, 0)
                                             + max(0, t.output_tokens))
                self.cached_tokens[model] = (self.cached_tokens.get(model, 0)
                                             + max(0, t.cache_tokens))
                _observe(self.durations, model, REQUEST_BUCKETS, e.duration_ms / 1000.0)
        elif isinstance(event, ProcessStateChanged):
            counter = (self.sleeps if event.new == "sleeping" else
                       self.wakes if event.old == "sleeping" and event.new == "starting" else None)
            if counter is not None:
                with self._lock:
                    counter[event.model] = counter.get(event.model, 0) + 1
        elif isinstance(event, SwapFinished):
            with self._lock:
                key = (event.model, "success" if event.ok else "failure")
                self.loads[key] = self.loads.get(key, 0) + 1
                if event.ok:
                    _observe(self.load_durations, event.model, LOAD_BUCKETS, event.seconds)
        elif isinstance(event, QueueWaited):
            with self._lock:
                _observe(self.queue_waits, event.model, QUEUE_BUCKETS, event.seconds)
        elif isinstance(event, HealthCheckFailed):
            with self._lock:
                self.health_failures[event.model] = self.health_failures.get(event.model, 0) + 1
        elif isinstance(event, ModelRestarting):
            with self._lock:
                key = (event.model, event.reason)
                self.restarts[key] = self.restarts.get(key, 0) + 1

    def attach(self, bus: Any) -> None:
        """Follow ``bus`` until ``detach``. ``handle`` is a few dict updates under a lock, so
        it runs in the publisher's thread: a queue and a pump thread would cost a thread
        wake-up for every event on the bus (several per request)."""
        self._bus = bus
        bus.add_listener(self.handle, (ActivityRecorded, SwapFinished, QueueWaited,
                                       HealthCheckFailed, ModelRestarting, ProcessStateChanged))

    def detach(self) -> None:
        if self._bus is not None:
            self._bus.remove_listener(self.handle)
            self._bus = None

    def write(self, out: Exposition) -> None:
        with self._lock:
            out.family("llamaswap_requests_total", "counter",
                       "Inference requests by model, HTTP status and API key name "
                       "(- for plain keys and open access)",
                       [((("model", m), ("status", s), ("key", k)), n)
                        for (m, s, k), n in sorted(self.requests.items())])
            out.family("llamaswap_input_tokens_total", "counter",
                       "Prompt (input) tokens processed, by model",
                       [((("model", m),), n) for m, n in sorted(self.input_tokens.items())])
            out.family("llamaswap_output_tokens_total", "counter",
                       "Generated (output) tokens, by model",
                       [((("model", m),), n) for m, n in sorted(self.output_tokens.items())])
            out.family("llamaswap_cached_tokens_total", "counter",
                       "Prompt tokens served from the backend's cache, by model",
                       [((("model", m),), n) for m, n in sorted(self.cached_tokens.items())])
            out.histogram("llamaswap_request_duration_seconds",
                          "Inference request duration including queueing and loading",
                          REQUEST_BUCKETS,
                          [((("model", m),), h) for m, h in sorted(self.durations.items())])
            out.family("llamaswap_model_loads_total", "counter",
                       "Model loads (swaps) by model and result",
                       [((("model", m), ("result", r)), n)
                        for (m, r), n in sorted(self.loads.items())])
            out.family("llamaswap_model_sleeps_total", "counter",
                       "Times a model was put to sleep instead of stopped",
                       [((("model", m),), n) for m, n in sorted(self.sleeps.items())])
            out.family("llamaswap_model_wakes_total", "counter",
                       "Times a sleeping model was woken for a request",
                       [((("model", m),), n) for m, n in sorted(self.wakes.items())])
            out.histogram("llamaswap_model_load_duration_seconds",
                          "Time from load start until the model was ready", LOAD_BUCKETS,
                          [((("model", m),), h) for m, h in sorted(self.load_durations.items())])
            out.histogram("llamaswap_queue_wait_seconds",
                          "Time requests waited in the router queue (bounded by maxWait)",
                          QUEUE_BUCKETS,
                          [((("model", m),), h) for m, h in sorted(self.queue_waits.items())])
            out.family("llamaswap_model_restarts_total", "counter",
                       "Restarts begun by the restart policy, by model and failure",
                       [((("model", m), ("reason", r)), n)
                        for (m, r), n in sorted(self.restarts.items())])
            out.family("llamaswap_health_failures_total", "counter",
                       "Failed health probes of ready backends, by model",
                       [((("model", m),), n) for m, n in sorted(self.health_failures.items())])


_registry: dict[int, tuple[Any, RequestMetrics]] = {}
_registry_lock = threading.Lock()


def request_metrics(events: Any) -> RequestMetrics:
    """The RequestMetrics following ``events`` (created and attached on first use). The bus
    outlives config reloads, and so do these counters."""
    with _registry_lock:
        found = _registry.get(id(events))
        if found is not None and found[0] is events:
            return found[1]
        rm = RequestMetrics()
        rm.attach(events)
        _registry[id(events)] = (events, rm)
        return rm


# ---------------------------------------------------------------------------------------------
# /proc readers (Linux); each returns None where the file is missing


def _read(path: str) -> str | None:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_cpu_times(proc: str = "/proc") -> list[tuple[float, float]] | None:
    """Per core (busy, total) jiffies from /proc/stat."""
    text = _read(f"{proc}/stat")
    if text is None:
        return None
    cores = []
    for line in text.splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            f = [float(x) for x in line.split()[1:]]
            f += [0.0] * (8 - len(f))
            # guest time is already part of user time
            total = sum(f[:8])
            idle = f[3] + f[4]
            cores.append((total - idle, total))
    return cores


def read_meminfo(proc: str = "/proc") -> dict[str, int] | None:
    text = _read(f"{proc}/meminfo")
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            try:
                out[name] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
            except ValueError:
                pass
    return out


def memory_mb(mem: dict[str, int]) -> dict[str, int]:
    """Upstream's memory figures in whole MB (gopsutil: used excludes buffers and caches)."""
    total, free = mem.get("MemTotal", 0), mem.get("MemFree", 0)
    used = (total - free - mem.get("Buffers", 0) - mem.get("Cached", 0)
            - mem.get("SReclaimable", 0))
    swap_total = mem.get("SwapTotal", 0)
    return {"mem_total_mb": total // MB, "mem_used_mb": max(0, used) // MB,
            "mem_free_mb": free // MB, "swap_total_mb": swap_total // MB,
            "swap_used_mb": max(0, swap_total - mem.get("SwapFree", 0)) // MB}


def read_loadavg(proc: str = "/proc") -> tuple[float, float, float] | None:
    text = _read(f"{proc}/loadavg")
    if text is None:
        return None
    a, b, c = (float(x) for x in text.split()[:3])
    return a, b, c


def read_net(proc: str = "/proc") -> list[tuple[str, int, int]] | None:
    """(interface, bytes received, bytes sent), loopback excluded as upstream."""
    text = _read(f"{proc}/net/dev")
    if text is None:
        return None
    out = []
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        f = rest.split()
        if not name or name == "lo" or len(f) < 9:
            continue
        out.append((name, int(f[0]), int(f[8])))
    return out


def read_process(pid: int | str = "self", proc: str = "/proc") -> dict[str, float] | None:
    """CPU seconds, resident bytes, threads and start time of one process."""
    stat = _read(f"{proc}/{pid}/stat")
    if stat is None:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    out = {"cpu_seconds": (int(rest[11]) + int(rest[12])) / ticks,
           "threads": int(rest[17]),
           "rss_bytes": int(rest[21]) * page}
    uptime = _read(f"{proc}/uptime")
    btime = None
    for line in (_read(f"{proc}/stat") or "").splitlines():
        if line.startswith("btime "):
            btime = int(line.split()[1])
    if btime is not None:
        out["start_time"] = btime + int(rest[19]) / ticks
    elif uptime is not None:
        out["start_time"] = time.time() - float(uptime.split()[0]) + int(rest[19]) / ticks
    try:
        out["open_fds"] = len(os.listdir(f"{proc}/{pid}/fd"))
    except OSError:
        pass
    return out


class SystemSampler:
    """System gauges as upstream's performance monitor names them. CPU utilisation is the
    share of busy time per core since the previous scrape (since start for the first)."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._lock = threading.Lock()
        self._prev_cpu = read_cpu_times(proc)

    def cpu_percent(self) -> list[float] | None:
        cur = read_cpu_times(self.proc)
        if cur is None:
            return None
        with self._lock:
            prev, self._prev_cpu = self._prev_cpu, cur
        out = []
        for i, (busy, total) in enumerate(cur):
            pb, pt = prev[i] if prev and i < len(prev) else (0.0, 0.0)
            dt = total - pt
            pct = (busy - pb) / dt * 100 if dt > 0 else 0.0
            out.append(min(100.0, max(0.0, pct)))
        return out

    def write(self, out: Exposition) -> None:
        cpu = self.cpu_percent()
        if cpu is not None:
            out.family("llamaswap_cpu_util_percent", "gauge", "CPU utilization per core (0-100)",
                       [((("core", str(i)),), round(p, 2)) for i, p in enumerate(cpu)])
        mem = read_meminfo(self.proc)
        if mem is not None and "MemTotal" in mem:
            m = memory_mb(mem)
            for name, help_text, v in (
                    ("llamaswap_memory_total_bytes", "Total memory in bytes", m["mem_total_mb"]),
                    ("llamaswap_memory_used_bytes", "Used memory in bytes", m["mem_used_mb"]),
                    ("llamaswap_memory_free_bytes", "Free memory in bytes", m["mem_free_mb"]),
                    ("llamaswap_swap_total_bytes", "Total swap in bytes", m["swap_total_mb"]),
                    ("llamaswap_swap_used_bytes", "Used swap in bytes", m["swap_used_mb"])):
                # whole megabytes, as upstream's monitor stores them
                out.family(name, "gauge", help_text, [((), v * MB)])
        load = read_loadavg(self.proc)
        if load is not None:
            out.family("llamaswap_load_average", "gauge", "Load average",
                       [((("interval", "1m"),), load[0]), ((("interval", "5m"),), load[1]),
                        ((("interval", "15m"),), load[2])])
        net = read_net(self.proc)
        if net:
            samples = []
            for name, recv, sent in net:
                samples.append(((("interface", name), ("direction", "recv")), recv))
                samples.append(((("interface", name), ("direction", "sent")), sent))
            out.family("llamaswap_network_bytes_total", "counter",
                       "Total network bytes transferred", samples)


def write_proxy_process(out: Exposition, proc: str = "/proc") -> None:
    p = read_process("self", proc)
    if p is None:
        return
    out.family("llamaswap_process_cpu_seconds_total", "counter",
               "CPU time used by the llama-swap process (user + system)",
               [((), round(p["cpu_seconds"], 3))])
    out.family("llamaswap_process_resident_memory_bytes", "gauge",
               "Resident memory of the llama-swap process", [((), p["rss_bytes"])])
    out.family("llamaswap_process_threads", "gauge", "Threads of the llama-swap process",
               [((), p["threads"])])
    if "open_fds" in p:
        out.family("llamaswap_process_open_fds", "gauge",
                   "Open file descriptors of the llama-swap process", [((), p["open_fds"])])
    if "start_time" in p:
        out.family("llamaswap_process_start_time_seconds", "gauge",
                   "Start time of the llama-swap process since the Unix epoch",
                   [((), round(p["start_time"], 2))])


def write_app_state(out: Exposition, app: Any, proc: str = "/proc") -> None:
    """Gauges read from the running App: model states, in-flight, queue, backend memory."""
    processes = dict(getattr(app, "processes", {}) or {})
    states = []
    rss = []
    for model_id in sorted(processes):
        p = processes[model_id]
        state = getattr(getattr(p, "state", None), "value", None) or str(getattr(p, "state", ""))
        for s in STATES:
            states.append(((("model", model_id), ("state", s)), 1 if s == state else 0))
        pid = getattr(p, "pid", None)
        if pid and state in ("starting", "ready", "stopping", "sleeping"):
            info = read_process(pid, proc)
            if info is not None:
                rss.append(((("model", model_id),), info["rss_bytes"]))
    out.family("llamaswap_model_state", "gauge",
               "Current state of each local model (1 for the state it is in)", states)
    out.family("llamaswap_model_resident_memory_bytes", "gauge",
               "Resident memory of each running backend's main process", rss)
    inflight = getattr(app, "inflight", None)
    if inflight is not None:
        out.family("llamaswap_inflight_requests", "gauge",
                   "Model-dispatched requests in flight", [((), int(inflight.total))])
        per_model = inflight.per_model() if hasattr(inflight, "per_model") else {}
        out.family("llamaswap_model_inflight_requests", "gauge",
                   "Requests in flight per model",
                   [((("model", m),), n) for m, n in sorted(per_model.items())])
    slots, config = getattr(app, "key_slots", None), getattr(app, "config", None)
    if slots is not None and config is not None:
        out.family("llamaswap_key_inflight_requests", "gauge",
                   "Requests in flight per API key that has a maxInFlight",
                   [((("key", k.name),), slots.in_use(k.key))
                    for k in getattr(config, "scoped_keys", ()) if k.max_in_flight])
    router = getattr(app, "router", None)
    if router is not None and hasattr(router, "queue_length"):
        out.family("llamaswap_queue_length", "gauge",
                   "Requests waiting in the router queue for a model swap",
                   [((), int(router.queue_length()))])


def render(app: Any, requests: RequestMetrics | None, system: SystemSampler | None,
           build: tuple[str, str, str] | None = None, proc: str = "/proc") -> str:
    """The whole /metrics body. ``system`` is None when performance monitoring is disabled."""
    out = Exposition()
    if build is not None:
        out.family("llamaswap_build_info", "gauge", "Version information of llama-swap",
                   [((("version", build[0]), ("commit", build[1]), ("build_date", build[2])), 1)])
    if system is not None:
        system.write(out)
    write_proxy_process(out, proc)
    if app is not None:
        write_app_state(out, app, proc)
        from llamaswap.ops.memory_api import write_metrics
        write_metrics(out, app)
    if requests is not None:
        requests.write(out)
    return out.text()
