"""The performance monitor behind ``GET /api/performance`` (behaviour.md 3.5.7).

Every ``performance.every`` seconds it takes a system sample (per-core CPU use since the
previous sample, memory and swap, load averages, network bytes per interface, loopback
excluded) and one GPU snapshot from the first tool on the PATH, in upstream's order:
``nvidia-smi``, then ``rocm-smi`` (AMD); each ring keeps an hour of samples. Samples carry the
local time, as Go's ``time.Now()`` marshals. (Upstream also asks the LACT daemon first, when
its socket exists; its sysfs reader is not implemented upstream either.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

from llamaswap.config.model import PerformanceConfig
from llamaswap.ops import gojson
from llamaswap.ops.prometheus import (SystemSampler, memory_mb, read_loadavg, read_meminfo,
                                      read_net)

MIN_EVERY = 0.1  # upstream's floor for the sampling interval
NVIDIA_QUERY = ("index,name,uuid,temperature.gpu,utilization.gpu,memory.used,memory.total,"
                "fan.speed,power.draw")
ROCM_ARGS = ("-i", "-P", "-t", "-f", "-u", "--showmemuse", "--showmeminfo", "vram",
             "--showproductname", "--csv")
NOT_AVAILABLE = "performance monitor not available"
BAD_AFTER = "invalid 'after' timestamp, use RFC3339 format"


def _int(text: str) -> int:
    """Go's strconv.Atoi with the error ignored ("[N/A]" and the like read as 0)."""
    try:
        return int(text.strip())
    except ValueError:
        return 0


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return 0.0


def parse_nvidia_smi_line(line: str, now: datetime) -> dict | None:
    """One GpuStat from a ``--format=csv,noheader,nounits`` line of NVIDIA_QUERY."""
    fields = line.split(",")
    if len(fields) < 9:
        return None
    used, total = _int(fields[5]), _int(fields[6])
    return {"timestamp": now, "id": _int(fields[0]), "name": fields[1].strip(),
            "uuid": fields[2].strip(), "temp_c": _int(fields[3]), "vram_temp_c": 0,
            "gpu_util_pct": _float(fields[4]),
            "mem_util_pct": used / total * 100 if total > 0 else 0.0,
            "mem_used_mb": used, "mem_total_mb": total, "fan_speed_pct": _float(fields[7]),
            "power_draw_w": _float(fields[8])}


def parse_rocm_smi(text: str, now: datetime) -> list[dict]:
    """GpuStats from ``rocm-smi`` ROCM_ARGS output: a ``device,...`` header line, then one
    line per card (upstream's columns, and its name: ``<series> <card> (<gfx>)``)."""
    stats = []
    labels: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("device,"):
            labels = line.split(",")
            continue
        stat = _rocm_line(labels, line.split(","), now)
        if stat is not None:
            stats.append(stat)
    return stats


_ROCM_FLOATS = {"Fan speed (%)": "fan_speed_pct", "GPU use (%)": "gpu_util_pct",
                "Current Socket Graphics Package Power (W)": "power_draw_w",
                "Average Graphics Package Power (W)": "power_draw_w"}


def _rocm_line(labels: list[str], fields: list[str], now: datetime) -> dict | None:
    if not labels or len(labels) != len(fields):
        return None
    stat: dict = {"timestamp": now, "id": -1, "name": "", "uuid": "", "temp_c": 0,
                  "vram_temp_c": 0, "gpu_util_pct": 0.0, "mem_util_pct": 0.0,
                  "mem_used_mb": 0, "mem_total_mb": 0, "fan_speed_pct": 0.0,
                  "power_draw_w": 0.0}
    device = name = series = gfx = ""
    for label, value in zip(labels, fields):
        value = value.strip()
        if label == "device":
            device = value
            card = value[4:] if value.startswith("card") else value
            if not re.fullmatch(r"[+-]?\d+", card):
                return None
            stat["id"] = int(card)
        elif label in _ROCM_FLOATS:
            stat[_ROCM_FLOATS[label]] = _float(value)
        elif label == "Temperature (Sensor edge) (C)":
            stat["temp_c"] = int(_float(value))
        elif label == "Temperature (Sensor memory) (C)":
            stat["vram_temp_c"] = int(_float(value))
        elif label == "VRAM Total Memory (B)":
            stat["mem_total_mb"] = _int(value) // (1024 * 1024)
        elif label == "VRAM Total Used Memory (B)":
            stat["mem_used_mb"] = _int(value) // (1024 * 1024)
        elif label == "GUID":
            stat["uuid"] = value
        elif label == "Device Name":
            name = value
        elif label == "Card Series":
            series = value
        elif label == "GFX Version":
            gfx = value
    if stat["id"] == -1:
        return None
    if stat["mem_total_mb"] > 0:
        stat["mem_util_pct"] = stat["mem_used_mb"] / stat["mem_total_mb"] * 100
    stat["name"] = device
    if series and series != "N/A":
        stat["name"] = f"{series} {device} ({gfx})"
    elif name and name != "N/A":
        stat["name"] = f"{name} {device} ({gfx})"
    return stat


def read_sys_stat(cpu: SystemSampler, now: datetime, proc: str = "/proc") -> dict | None:
    """One SysStat, field for field as upstream's (gopsutil's memory arithmetic)."""
    cores = cpu.cpu_percent()
    mem = read_meminfo(proc)
    if cores is None or mem is None:
        return None
    load = read_loadavg(proc) or (0.0, 0.0, 0.0)
    return {"timestamp": now, "cpu_util_per_core": cores, **memory_mb(mem),
            "load_avg_1": load[0], "load_avg_5": load[1], "load_avg_15": load[2],
            "net_io": [{"name": n, "bytes_recv": r, "bytes_sent": s}
                       for n, r, s in read_net(proc) or ()]}


class PerformanceMonitor:
    def __init__(self, config: PerformanceConfig, log: Any = None, proc: str = "/proc"):
        self._log = log
        self._proc = proc
        self._lock = threading.Lock()
        self._config = config
        self._sys: deque = deque(maxlen=1)
        self._gpu: deque = deque(maxlen=1)
        self._stop: threading.Event | None = None

    def start(self) -> None:
        with self._lock:
            if self._stop is not None or self._config.disabled:
                return
            every = max(MIN_EVERY, self._config.every)
            size = max(1, int(3600 / every))
            self._sys, self._gpu = deque(maxlen=size), deque(maxlen=size)
            stop = self._stop = threading.Event()
        threading.Thread(target=self._run, args=(stop, every), name="performance",
                         daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            stop, self._stop = self._stop, None
        if stop is not None:
            stop.set()

    def update(self, config: PerformanceConfig) -> None:
        """A reload: restart with empty rings if the settings changed (stop if disabled)."""
        with self._lock:
            if config == self._config:
                return
            self._config = config
        self.stop()
        with self._lock:
            self._sys, self._gpu = deque(maxlen=1), deque(maxlen=1)
        self.start()

    def current(self) -> tuple[list[dict], list[dict]]:
        """(system samples, GPU stats flattened from their snapshots), oldest first."""
        with self._lock:
            return list(self._sys), [g for snapshot in self._gpu for g in snapshot]

    def _run(self, stop: threading.Event, every: float) -> None:
        cpu = SystemSampler(self._proc)  # its own CPU baseline: /metrics scrapes keep theirs
        gpu_tool = None
        for name, query in (("nvidia-smi", self._nvidia), ("rocm-smi", self._rocm)):
            path = shutil.which(name)
            if path is not None:
                gpu_tool = (path, query)
                self._say("info", f"using {name} for GPU monitoring")
                break
        else:
            self._say("info", "GPU monitoring not available: no GPU monitoring tool available")
        while not stop.wait(every):
            stat = read_sys_stat(cpu, datetime.now().astimezone(), self._proc)
            gpus = gpu_tool[1](gpu_tool[0], every) if gpu_tool is not None else None
            with self._lock:
                if self._stop is not stop:
                    return  # stopped or restarted meanwhile: these rings are not ours
                if stat is not None:
                    self._sys.append(stat)
                if gpus:
                    self._gpu.append(gpus)

    def _nvidia(self, path: str, every: float) -> list[dict] | None:
        try:
            out = subprocess.run([path, f"--query-gpu={NVIDIA_QUERY}",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=max(5.0, every), check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self._say("debug", f"nvidia-smi: {exc}")
            return None
        now = datetime.now().astimezone()
        stats = [parse_nvidia_smi_line(line, now) for line in out.stdout.splitlines()
                 if line.strip()]
        return [s for s in stats if s is not None]

    def _rocm(self, path: str, every: float) -> list[dict] | None:
        try:
            out = subprocess.run([path, *ROCM_ARGS], capture_output=True, text=True,
                                 timeout=5.0, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self._say("debug", f"rocm-smi: {exc}")
            return None
        if out.returncode != 0:
            return None
        return parse_rocm_smi(out.stdout, datetime.now().astimezone())

    def _say(self, level: str, message: str) -> None:
        if self._log is not None:
            getattr(self._log, level)(message)


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?"
                      r"(?:(Z)|([+-])(\d{2}):(\d{2}))")


def parse_rfc3339(text: str) -> datetime | None:
    """Go's time.Parse(time.RFC3339, text) (fractional seconds accepted), or None."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    micro = int((m.group(7) or ".0")[1:].ljust(6, "0")[:6])
    if m.group(8):
        tz = timezone.utc
    else:
        sign = 1 if m.group(9) == "+" else -1
        hours, minutes = int(m.group(10)), int(m.group(11))
        if hours > 23 or minutes > 59:
            return None
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def performance_json(monitor: PerformanceMonitor, after: datetime | None) -> str:
    """Upstream's body: map keys sorted, an empty ring as null unless ``after`` filtered it."""
    sys_stats, gpu_stats = monitor.current()
    if after is not None:
        sys_stats = [s for s in sys_stats if s["timestamp"] > after]
        gpu_stats = [g for g in gpu_stats if g["timestamp"] > after]
    else:
        sys_stats, gpu_stats = sys_stats or None, gpu_stats or None
    return gojson.dumps({"gpu_stats": gpu_stats, "sys_stats": sys_stats}) + "\n"
