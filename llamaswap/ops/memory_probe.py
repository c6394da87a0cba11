"""Reading what backends use: nvidia-smi for GPUs, /proc for RAM and process trees.

Everything here runs at the edge (the memory monitor's thread, a start's thread), never on
the router thread. The parsers are plain functions; the readers wrap ``subprocess.run`` with
a timeout so a hanging ``nvidia-smi`` costs a warning, not a stuck thread.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from llamaswap.procutil import ProcEntry, process_table  # noqa: F401 (the readers, together)

MiB = 1024 * 1024
SMI_TIMEOUT = 5.0  # seconds for one nvidia-smi call
GPU_QUERY = "--query-gpu=index,uuid,memory.total,memory.used"
APPS_QUERY = "--query-compute-apps=pid,gpu_uuid,used_memory"
CSV = "--format=csv,noheader,nounits"


class ProbeError(Exception):
    """nvidia-smi missing, hanging, failing or printing what we cannot read."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    total: int  # bytes
    used: int  # bytes


@dataclass(frozen=True)
class GpuReading:
    gpus: Mapping[int, Gpu] = field(default_factory=dict)  # index -> Gpu
    apps: tuple[tuple[int, str, int], ...] = ()  # (pid, gpu uuid, bytes)

    def index_of(self, uuid: str) -> int | None:
        for gpu in self.gpus.values():
            if gpu.uuid == uuid:
                return gpu.index
        return None


def _mib(text: str) -> int | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return int(value * MiB) if value >= 0 else None


def parse_gpus(text: str) -> dict[int, Gpu]:
    """``index, uuid, memory.total, memory.used`` lines (MiB). Raises ProbeError when no
    line reads as one."""
    gpus: dict[int, Gpu] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        total, used = _mib(parts[2]), _mib(parts[3])
        if total is None:
            continue
        gpus[int(parts[0])] = Gpu(int(parts[0]), parts[1], total, used or 0)
    if not gpus:
        raise ProbeError(f"nvidia-smi printed no GPU we could read: {text.strip()[:200]!r}")
    return gpus


def parse_apps(text: str) -> tuple[tuple[int, str, int], ...]:
    """``pid, gpu_uuid, used_memory`` lines (MiB); lines that do not read (``[N/A]``, "No
    running processes found") are skipped."""
    apps = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        used = _mib(parts[2])
        apps.append((int(parts[0]), parts[1], used if used is not None else 0))
    return tuple(apps)


def _run(argv: list[str], timeout: float) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"{argv[0]} did not answer within {timeout:g}s") from None
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{argv[0]} could not run: {exc}") from None
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise ProbeError(f"{argv[0]} exited with code {out.returncode}"
                         + (f": {detail[-1][:200]}" if detail else ""))
    return out.stdout


def find_nvidia_smi(name: str = "nvidia-smi") -> str | None:
    return shutil.which(name)


def read_gpus(path: str, timeout: float = SMI_TIMEOUT, apps: bool = True) -> GpuReading:
    """One reading of every GPU (and, with `apps`, every compute process)."""
    gpus = parse_gpus(_run([path, GPU_QUERY, CSV], timeout))
    found = parse_apps(_run([path, APPS_QUERY, CSV], timeout)) if apps else ()
    return GpuReading(gpus, found)


# ---- /proc -------------------------------------------------------------------------------

def tree_of(leader: int, table: Mapping[int, ProcEntry]) -> set[int]:
    """A backend's processes: its process group and session (it leads both) and every
    descendant of the leader, wherever it moved."""
    found = {pid for pid, e in table.items() if pid == leader or e.pgid == leader
             or e.sid == leader}
    children: dict[int, list[int]] = {}
    for pid, e in table.items():
        children.setdefault(e.ppid, []).append(pid)
    stack = list(found | {leader})
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def ram_of(pids: Iterable[int], proc: str = "/proc") -> tuple[int, str]:
    """(bytes, "pss" | "rss"): the processes' proportional set size when the kernel gives
    it (shared pages split between their users), else their resident set size."""
    total, method = 0, "pss"
    for pid in pids:
        value = _pss(pid, proc)
        if value is None:
            value = _rss(pid, proc)
            if value is None:
                continue
            method = "rss"
        total += value
    return total, method


def _field_kib(path: str, name: bytes) -> int | None:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pss(pid: int, proc: str) -> int | None:
    return _field_kib(f"{proc}/{pid}/smaps_rollup", b"Pss:")


def _rss(pid: int, proc: str) -> int | None:
    return _field_kib(f"{proc}/{pid}/status", b"VmRSS:")


def total_ram(proc: str = "/proc") -> int | None:
    return _field_kib(f"{proc}/meminfo", b"MemTotal:")
