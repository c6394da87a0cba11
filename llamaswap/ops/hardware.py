"""``GET /api/hardware``: what the inference host is (upstream's HardwareSnapshot, schema 1).

Detected once per process, in a background thread started with the proxy (so a slow
``nvidia-smi`` never delays startup), within upstream's 10 s. The route waits for a detection
still running, up to that bound; a failed one answers 503 ``hardware detection unavailable``
(and the proxy log says why). Sources, as upstream on Linux: ``/etc/os-release``, the kernel
release, container and VM hints (``/.dockerenv``, ``/run/.containerenv``, ``/proc/1/cgroup``,
``systemd-detect-virt``), ``/proc/cpuinfo``, ``/proc/meminfo`` with ``/proc/zoneinfo`` and the
cgroup memory limit, and accelerators from ``nvidia-smi``, ``rocm-smi``, the AMD KFD topology
and the DRM devices in sysfs, merged by PCI address.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from typing import Any

DETECT_TIMEOUT = 10.0  # upstream's bound on the whole detection
UNAVAILABLE = "hardware detection unavailable"


class HardwareDetection:
    """One detection, started at once in its own thread."""

    def __init__(self, version: str, log: Any = None, *, root: str = "/",
                 timeout: float = DETECT_TIMEOUT):
        self._done = threading.Event()
        self.snapshot: dict | None = None
        self.error: str | None = None
        self._log = log
        self._deadline = time.monotonic() + timeout
        self._probe = _Probe(root, self._deadline)
        self._version = version
        threading.Thread(target=self._detect, name="hardware-detect", daemon=True).start()

    def _detect(self) -> None:
        try:
            self.snapshot = detect(self._probe, self._version)
        except Exception as e:
            self.error = str(e) or type(e).__name__
            if self._log is not None:
                self._log.warn(f"{UNAVAILABLE}: {self.error}")
        finally:
            self._done.set()

    def result(self) -> dict | None:
        """The snapshot, waiting for a detection still running (never past its deadline);
        None when it failed or ran out of time."""
        self._done.wait(max(0.0, self._deadline - time.monotonic()))
        return self.snapshot


_shared: HardwareDetection | None = None
_shared_lock = threading.Lock()


def start(version: str, log: Any = None) -> HardwareDetection:
    """The process's detection, started on the first call (the hardware does not change with
    a config reload)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = HardwareDetection(version, log)
        return _shared


class _Probe:
    """Files and commands, under ``root`` (tests point it at a fake tree) and the deadline."""

    def __init__(self, root: str, deadline: float):
        self.root = root
        self.deadline = deadline

    def path(self, p: str) -> str:
        return os.path.join(self.root, p.lstrip("/")) if self.root != "/" else p

    def read(self, p: str) -> str:
        try:
            with open(self.path(p), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def exists(self, p: str) -> bool:
        return os.path.exists(self.path(p))

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(self.path(pattern)))

    def command(self, argv: list[str]) -> tuple[int, str] | None:
        """(exit code, stdout) of a command on PATH, or None when it is missing, cannot run
        or outlives the deadline."""
        exe = shutil.which(argv[0])
        left = self.deadline - time.monotonic()
        if exe is None or left <= 0:
            return None
        try:  # in its own process group, so a wedged tool and its children all go
            proc = subprocess.Popen([exe, *argv[1:]], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                    text=True, start_new_session=True)
        except OSError:
            return None
        try:
            out, _ = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.communicate()
            return None
        return proc.returncode, out


# ---- the snapshot ---------------------------------------------------------------------------

_ARCH = {"x86_64": ("x86_64", "amd64"), "amd64": ("x86_64", "amd64"),
         "aarch64": ("arm64", None), "arm64": ("arm64", None),
         "armv7l": ("armv7", "arm"), "armv7": ("armv7", "arm"),
         "ppc64le": ("ppc64le", None), "riscv64": ("riscv64", None), "s390x": ("s390x", None)}
_OS = {"linux": "linux", "darwin": "macos", "windows": "windows", "freebsd": "freebsd"}


def detect(probe: _Probe, version: str) -> dict:
    version = version.strip()
    if not version:
        raise ValueError("detector version is required")
    uname = os.uname()  # what the platform module would read, without its import cost
    machine = uname.machine.lower()
    arch_name, raw_arch = _ARCH.get(machine, ("other", machine or "unknown"))
    system = uname.sysname.lower()
    family = _OS.get(system, "other")
    operating_system: dict[str, Any] = {"family": family, "name": None, "version": None,
                                        "kernel": None}
    if family == "other":
        operating_system["raw_family"] = system
    kernel = uname.release
    if family == "linux":
        name, os_version = _os_release(probe)
        operating_system.update(name=name, version=os_version, kernel=_clean(kernel))
    memory = memory_capacity(probe)
    if not memory:
        raise ValueError("detecting system memory: reported zero capacity")
    return {
        "schema_version": 1,
        "captured_at": datetime.now(timezone.utc),
        "capture": {"scope": "inference_host", "method": "detected",
                    "detector": {"name": "llama-swap", "version": version}},
        "architecture": {"name": arch_name, "raw_name": raw_arch},
        "operating_system": operating_system,
        "environment": environment(probe, kernel),
        "cpu": cpu_info(probe),
        "memory": {"capacity_bytes": memory},
        "accelerators": accelerators(probe),
    }


def _clean(value: Any) -> str | None:
    """Upstream's nonEmptyStringPtr: blank, "n/a" and "unknown" are null."""
    text = str(value).strip() if value is not None else ""
    if not text or text.lower() in ("n/a", "unknown"):
        return None
    return text


def _os_release(probe: _Probe) -> tuple[str | None, str | None]:
    fields: dict[str, str] = {}
    for line in (probe.read("/etc/os-release") or probe.read("/usr/lib/os-release")).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').strip("'")
    name = fields.get("ID")
    version = fields.get("VERSION_ID")
    if name == "debian":  # the point release, as gopsutil reads it
        version = probe.read("/etc/debian_version").strip() or version
    return _clean(name), _clean(version)


_CONTAINERS = {"docker": "Docker", "lxc": "LXC", "podman": "podman",
               "containerd": "containerd", "systemd-nspawn": "systemd-nspawn", "rkt": "rkt"}
_VM_NAMES = {"kvm": "KVM", "vmware": "VMware", "oracle": "VirtualBox", "vbox": "VirtualBox",
             "microsoft": "Hyper-V", "hyperv": "Hyper-V"}


def environment(probe: _Probe, kernel: str) -> dict:
    k = kernel.lower()
    if "microsoft" in k or "wsl" in k:
        return {"kind": "wsl", "name": "WSL", "version": None}
    if probe.exists("/.dockerenv"):
        return {"kind": "container", "name": "Docker", "version": None}
    if probe.exists("/run/.containerenv"):
        return {"kind": "container", "name": "podman", "version": None}
    cgroup = probe.read("/proc/1/cgroup")
    for hint in ("docker", "lxc", "containerd"):
        if hint in cgroup:
            return {"kind": "container", "name": _CONTAINERS[hint], "version": None}
    out = probe.command(["systemd-detect-virt"])
    if out is not None:
        code, text = out
        name = text.strip()
        if code == 0 and name and name != "none":
            kind = "container" if name.lower() in _CONTAINERS else "virtual_machine"
            shown = _CONTAINERS.get(name.lower()) or _VM_NAMES.get(name.lower()) or name
            return {"kind": kind, "name": shown, "version": None}
        if code == 1:
            return {"kind": "native", "name": None, "version": None}
    if re.search(r"^flags\s*:.*\bhypervisor\b", probe.read("/proc/cpuinfo"), re.M):
        return {"kind": "virtual_machine", "name": None, "version": None}
    return {"kind": "unknown", "name": None, "version": None}


def cpu_info(probe: _Probe) -> dict:
    vendor = model = None
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    logical = 0
    cores_per_socket: dict[str, int] = {}
    block: dict[str, str] = {}
    for line in probe.read("/proc/cpuinfo").splitlines() + [""]:
        if line.strip():
            key, _, value = line.partition(":")
            block[key.strip()] = value.strip()
            continue
        if not block:
            continue
        if "processor" in block:
            logical += 1
        vendor = vendor or _clean(block.get("vendor_id") or block.get("CPU implementer"))
        model = model or _clean(block.get("model name") or block.get("Processor"))
        socket = block.get("physical id", "").strip()
        if socket:
            sockets.add(socket)
            if "core id" in block:
                cores.add((socket, block["core id"]))
            if block.get("cpu cores", "").isdigit():
                cores_per_socket[socket] = int(block["cpu cores"])
        block = {}
    physical = len(cores) or sum(cores_per_socket.values()) or None
    if logical <= 0:
        logical = os.cpu_count() or 0
    if physical is not None and logical and physical > logical:
        physical = None
    return {"vendor": vendor, "model": model, "socket_count": len(sockets) or None,
            "physical_core_count": physical, "logical_thread_count": logical or None}


def memory_capacity(probe: _Probe) -> int:
    """MemTotal, or the present pages of /proc/zoneinfo when larger, capped by a cgroup
    memory limit."""
    total = 0
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", probe.read("/proc/meminfo"), re.M)
    if m:
        total = int(m.group(1)) * 1024
    pages, include = 0, False
    for line in probe.read("/proc/zoneinfo").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "Node" and fields[2] == "zone":
            include = fields[3] != "Device"
        elif include and len(fields) == 2 and fields[0] == "present" and fields[1].isdigit():
            pages += int(fields[1])
    physical = pages * (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096)
    total = max(total, physical)
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = probe.read(limit_file).strip()
        if value.isdigit() and 0 < int(value) < total:
            total = int(value)
    return total


# ---- accelerators ---------------------------------------------------------------------------

_NVIDIA_FIELDS = "index,name,uuid,pci.bus_id,memory.total,driver_version,power.limit"
_NVIDIA_ARCH = {"2.0": "Fermi", "2.1": "Fermi", "3.0": "Kepler", "3.2": "Kepler",
                "3.5": "Kepler", "3.7": "Kepler", "5.0": "Maxwell", "5.2": "Maxwell",
                "5.3": "Maxwell", "6.0": "Pascal", "6.1": "Pascal", "6.2": "Pascal",
                "7.0": "Volta", "7.2": "Volta", "7.5": "Turing", "8.0": "Ampere",
                "8.6": "Ampere", "8.7": "Ampere", "8.9": "Ada Lovelace", "9.0": "Hopper",
                "10.0": "Blackwell", "10.3": "Blackwell", "11.0": "Blackwell",
                "12.0": "Blackwell", "12.1": "Blackwell"}
_PCI_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x1022": "AMD", "0x8086": "Intel",
                "0x106b": "Apple"}


def _optional_float(text: str) -> float | None:
    text = text.strip()
    if not text or text.lower() in ("n/a", "[not supported]", "[n/a]"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def pci_identity(value: str) -> str:
    """A PCI address in one spelling (``0000:01:00.0``): nvidia-smi writes ``00000000:01:00.0``,
    sysfs ``0000:01:00.0``."""
    value = value.strip().lower()
    if not value or value == "n/a":
        return ""
    parts = value.split(":")
    if len(parts) == 2:
        parts = ["0000", *parts]
    if len(parts) == 3:
        try:
            parts[0] = f"{int(parts[0], 16):04x}"
        except ValueError:
            pass
    return ":".join(parts)


def _gpu(vendor: str, model: str | None = None, architecture: str | None = None,
         memory_kind: str = "dedicated", memory_bytes: int | None = None,
         driver: dict | None = None, power: float | None = None) -> dict:
    return {"index": 0, "kind": "gpu", "vendor": vendor, "model": model,
            "architecture": architecture,
            "memory": {"kind": memory_kind, "capacity_bytes": memory_bytes or None},
            "driver": driver, "power_limit_watts": power if power and power > 0 else None}


def _csv_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text)) if row]


def nvidia(probe: _Probe) -> list[tuple[str, dict]]:
    out = probe.command(["nvidia-smi", f"--query-gpu={_NVIDIA_FIELDS}",
                         "--format=csv,noheader,nounits"])
    if out is None or out[0] != 0:
        return []
    records = {}
    for row in _csv_rows(out[1]):
        if len(row) != 7 or not row[0].lstrip("-").isdigit():
            return []  # upstream: an unexpected line fails the whole NVIDIA probe
        records[int(row[0])] = row + [""]
    arch = probe.command(["nvidia-smi", "--query-gpu=index,architecture",
                          "--format=csv,noheader,nounits"])
    _apply_indexed(records, arch, lambda rec, v: rec.__setitem__(7, v))
    if any(not rec[7] for rec in records.values()):
        cap = probe.command(["nvidia-smi", "--query-gpu=index,compute_cap",
                             "--format=csv,noheader,nounits"])
        _apply_indexed(records, cap, lambda rec, v: rec.__setitem__(
            7, rec[7] or _NVIDIA_ARCH.get(v, "")))
    found = []
    for index, rec in records.items():
        mib = _optional_float(rec[4])
        version = _clean(rec[5])
        gpu = _gpu("NVIDIA", _clean(rec[1]), _clean(rec[7]), "dedicated",
                   int(mib * 1024 * 1024) if mib else None,
                   {"name": "NVIDIA", "version": version} if version else None,
                   _optional_float(rec[6]))
        found.append((pci_identity(rec[3]) or rec[2].strip(), gpu))
    return found


def _apply_indexed(records: dict, out: tuple[int, str] | None, apply) -> None:
    if out is None or out[0] != 0:
        return
    for row in _csv_rows(out[1]):
        if len(row) == 2 and row[0].isdigit() and int(row[0]) in records and _clean(row[1]):
            apply(records[int(row[0])], row[1])


def rocm(probe: _Probe) -> list[tuple[str, dict]]:
    out = probe.command(["rocm-smi", "-i", "--showmeminfo", "vram", "--showproductname",
                         "--showdriverversion", "--showmaxpower", "--showbus", "--csv"])
    if out is None or out[0] != 0:
        out = probe.command(["rocm-smi", "-i", "--showmeminfo", "vram", "--showproductname",
                             "--showbus", "--csv"])
    if out is None or out[0] != 0:
        return []
    found = []
    header: list[str] = []
    for row in _csv_rows(out[1]):
        if row[0].lower() == "device":
            header = [h.lower() for h in row]
            continue
        if not header or len(row) != len(header):
            continue
        fields = dict(zip(header, row))

        def first(*names: str) -> str:
            for n in names:
                v = fields.get(n, "").strip()
                if v and v.lower() != "n/a":
                    return v
            return ""
        identity = pci_identity(first("pci bus", "pci bus id", "bus")) or first("guid",
                                                                                "unique id")
        vram = first("vram total memory (b)")
        version = _clean(first("driver version"))
        found.append((identity, _gpu(
            "AMD", _clean(first("card series", "device name", "card model")),
            _clean(first("gfx version")), "dedicated", int(vram) if vram.isdigit() else None,
            {"name": "amdgpu", "version": version} if version else None,
            _optional_float(first("max graphics package power (w)",
                                  "maximum graphics package power (w)") or ""))))
    return found


def amd_kfd(probe: _Probe) -> list[tuple[str, dict]]:
    found = []
    for props_path in probe.glob("/sys/class/kfd/kfd/topology/nodes/*/properties"):
        props = {}
        try:
            with open(props_path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[1].isdigit():
                        props[parts[0]] = int(parts[1])
        except OSError:
            continue
        arch = _gfx_target(props.get("gfx_target_version", 0))
        minor = props.get("drm_render_minor", 0)
        if not arch or not minor or not probe.exists(f"/dev/dri/renderD{minor}"):
            continue
        device = os.path.realpath(probe.path(f"/sys/class/drm/renderD{minor}/device"))
        if _PCI_VENDORS.get(_read(os.path.join(device, "vendor")).lower()) != "AMD":
            continue
        identity = pci_identity(os.path.basename(device))
        if identity:
            found.append((identity, _gpu("AMD", None, arch, "unknown")))
    return found


def _gfx_target(version: int) -> str:
    if version < 10000:
        return ""
    major, minor, stepping = version // 10000, (version // 100) % 100, version % 100
    if minor > 9 or stepping > 15:
        return ""
    return f"gfx{major}{minor}{stepping:x}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def drm_sysfs(probe: _Probe) -> list[tuple[str, dict]]:
    found = []
    for card in probe.glob("/sys/class/drm/card*"):
        if not re.fullmatch(r"card\d+", os.path.basename(card)):
            continue
        device = os.path.join(card, "device")
        if not os.path.exists(device):
            continue
        nodes = glob.glob(os.path.join(device, "drm", "renderD*"))
        if not any(probe.exists(f"/dev/dri/{os.path.basename(n)}") for n in nodes):
            continue
        vendor = _PCI_VENDORS.get(_read(os.path.join(device, "vendor")).lower())
        if vendor is None:
            continue
        vram = _read(os.path.join(device, "mem_info_vram_total"))
        driver_link = os.path.join(device, "driver")
        driver_name = os.path.basename(os.path.realpath(driver_link)) \
            if os.path.exists(driver_link) else ""
        driver_version = _read(probe.path(f"/sys/module/{driver_name}/version")) \
            if driver_name else ""
        driver = {"name": _clean(driver_name), "version": _clean(driver_version)} \
            if driver_name or driver_version else None
        power = None
        for cap in sorted(glob.glob(os.path.join(device, "hwmon", "hwmon*", "power1_cap"))):
            watts = _optional_float(_read(cap))
            if watts and watts > 0:
                power = watts / 1_000_000
                break
        found.append((pci_identity(os.path.basename(os.path.realpath(device))), _gpu(
            vendor, _clean(_read(os.path.join(device, "product_name"))), None,
            "dedicated" if vram.isdigit() and int(vram) > 0 else "shared_system",
            int(vram) if vram.isdigit() and int(vram) > 0 else None, driver, power)))
    return found


def accelerators(probe: _Probe) -> list[dict]:
    """Every source, merged by identity (a field one source lacks comes from another),
    sorted by identity then model, indexed from 0 (upstream's finalizeAccelerators)."""
    merged: list[tuple[str, dict]] = []
    by_identity: dict[str, int] = {}
    for source in (nvidia, rocm, amd_kfd, drm_sysfs):
        try:
            found = source(probe)
        except Exception:
            found = []
        for identity, gpu in found:
            if identity and identity in by_identity:
                _merge(merged[by_identity[identity]][1], gpu)
                continue
            if identity:
                by_identity[identity] = len(merged)
            merged.append((identity, gpu))
    merged.sort(key=lambda item: (item[0], item[1]["model"] or ""))
    result = []
    for i, (_, gpu) in enumerate(merged):
        gpu["index"] = i
        result.append(gpu)
    return result


def _merge(dst: dict, src: dict) -> None:
    for key in ("vendor", "model", "architecture", "power_limit_watts"):
        if dst[key] is None:
            dst[key] = src[key]
    if dst["memory"]["kind"] in ("", "unknown"):
        dst["memory"]["kind"] = src["memory"]["kind"]
    if dst["memory"]["capacity_bytes"] is None:
        dst["memory"]["capacity_bytes"] = src["memory"]["capacity_bytes"]
    if dst["driver"] is None:
        dst["driver"] = src["driver"]
    elif src["driver"] is not None:
        for key in ("name", "version"):
            if dst["driver"][key] is None:
                dst["driver"][key] = src["driver"][key]
