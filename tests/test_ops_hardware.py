"""GET /api/hardware: the snapshot from a fake host tree and fake nvidia-smi / rocm-smi on
PATH (the machine has no GPU), and through a real proxy on this machine."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from httpkit import Proxy, config, model
from llamaswap.ops import gojson
from llamaswap.ops.hardware import HardwareDetection, _Probe, accelerators, cpu_info, \
    detect, memory_capacity, pci_identity

NVIDIA_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,power.limit)
    echo "0, NVIDIA H100 80GB HBM3, GPU-aaaa, 00000000:1B:00.0, 81559, 550.54.15, 700.00"
    echo "1, NVIDIA GeForce RTX 4090, GPU-bbbb, 00000000:3D:00.0, 24564, 550.54.15, [N/A]" ;;
  --query-gpu=index,architecture) echo "0, Hopper"; echo "1, " ;;
  --query-gpu=index,compute_cap) echo "0, 9.0"; echo "1, 8.9" ;;
  *) exit 2 ;;
esac
"""

ROCM_SMI = """#!/bin/sh
echo "device,Device Name,GFX Version,PCI Bus,VRAM Total Memory (B),Driver version,Max Graphics Package Power (W),Card Series"
echo "card0,0x744c,gfx1100,0000:03:00.0,25753026560,6.7.0,327.0,Radeon RX 7900 XTX"
"""


def write_tool(directory, name, text):
    path = directory / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def fake_host(root, cpuinfo: str, meminfo="MemTotal:       16384000 kB\n"):
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(cpuinfo)
    (root / "proc" / "meminfo").write_text(meminfo)
    (root / "etc" / "os-release").write_text('ID=ubuntu\nVERSION_ID="24.04"\n')


TWO_SOCKETS = "".join(
    f"processor\t: {i}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654\n"
    f"physical id\t: {i // 4}\ncore id\t\t: {(i % 4) // 2}\ncpu cores\t: 2\n\n"
    for i in range(8))


def test_snapshot_shape_cpu_and_memory_from_a_fake_host(tmp_path, tools):
    root = tmp_path / "host"
    fake_host(root, TWO_SOCKETS)
    (root / "sys" / "fs" / "cgroup").mkdir(parents=True)
    (root / "sys" / "fs" / "cgroup" / "memory.max").write_text("8589934592\n")
    probe = _Probe(str(root), time.monotonic() + 10)
    snap = detect(probe, "1.2.3")
    assert list(snap) == ["schema_version", "captured_at", "capture", "architecture",
                          "operating_system", "environment", "cpu", "memory", "accelerators"]
    assert snap["schema_version"] == 1
    assert snap["capture"] == {"scope": "inference_host", "method": "detected",
                               "detector": {"name": "llama-swap", "version": "1.2.3"}}
    assert snap["operating_system"]["name"] == "ubuntu"
    assert snap["operating_system"]["version"] == "24.04"
    assert snap["cpu"] == {"vendor": "AuthenticAMD", "model": "AMD EPYC 9654",
                           "socket_count": 2, "physical_core_count": 4,
                           "logical_thread_count": 8}
    assert snap["memory"] == {"capacity_bytes": 8589934592}  # the cgroup limit
    assert snap["accelerators"] == []
    text = gojson.dumps(snap)
    assert '"captured_at":"' in text and text.count('"raw_family"') == 0
    with pytest.raises(ValueError):
        detect(probe, " ")  # upstream: a detector version is required
    empty = tmp_path / "empty"
    fake_host(empty, "", meminfo="")
    with pytest.raises(ValueError, match="zero capacity"):
        detect(_Probe(str(empty), time.monotonic() + 10), "1")


def test_nvidia_smi_and_rocm_smi_accelerators(tmp_path, tools):
    write_tool(tools, "nvidia-smi", NVIDIA_SMI)
    write_tool(tools, "rocm-smi", ROCM_SMI)
    probe = _Probe(str(tmp_path), time.monotonic() + 10)
    found = accelerators(probe)
    assert [a["index"] for a in found] == [0, 1, 2]
    amd, h100, rtx = found  # sorted by PCI address
    assert h100 == {"index": 1, "kind": "gpu", "vendor": "NVIDIA",
                    "model": "NVIDIA H100 80GB HBM3", "architecture": "Hopper",
                    "memory": {"kind": "dedicated", "capacity_bytes": 81559 * 1024 * 1024},
                    "driver": {"name": "NVIDIA", "version": "550.54.15"},
                    "power_limit_watts": 700.0}
    assert rtx["architecture"] == "Ada Lovelace"  # from compute_cap when architecture is blank
    assert rtx["power_limit_watts"] is None
    assert amd == {"index": 0, "kind": "gpu", "vendor": "AMD", "model": "Radeon RX 7900 XTX",
                   "architecture": "gfx1100",
                   "memory": {"kind": "dedicated", "capacity_bytes": 25753026560},
                   "driver": {"name": "amdgpu", "version": "6.7.0"}, "power_limit_watts": 327.0}


def test_sysfs_devices_merge_with_the_tools(tmp_path, tools):
    write_tool(tools, "rocm-smi", ROCM_SMI)
    root = tmp_path / "host"
    pci = root / "sys" / "devices" / "pci0000:00" / "0000:03:00.0"
    (pci / "drm" / "renderD128").mkdir(parents=True)
    (pci / "vendor").write_text("0x1002\n")
    (pci / "product_name").write_text("\n")
    (pci / "mem_info_vram_total").write_text("25753026560\n")
    (pci / "hwmon" / "hwmon3").mkdir(parents=True)
    (pci / "hwmon" / "hwmon3" / "power1_cap").write_text("300000000\n")
    card = root / "sys" / "class" / "drm" / "card1"
    card.mkdir(parents=True)
    os.symlink(pci, card / "device")
    (root / "dev" / "dri").mkdir(parents=True)
    (root / "dev" / "dri" / "renderD128").write_text("")
    # the KFD topology names the same card
    node = root / "sys" / "class" / "kfd" / "kfd" / "topology" / "nodes" / "1"
    node.mkdir(parents=True)
    (node / "properties").write_text("gfx_target_version 110000\ndrm_render_minor 128\n")
    render = root / "sys" / "class" / "drm" / "renderD128"
    render.mkdir()
    os.symlink(pci, render / "device")
    probe = _Probe(str(root), time.monotonic() + 10)
    found = accelerators(probe)
    assert len(found) == 1  # rocm-smi, KFD and sysfs: one card
    assert found[0]["model"] == "Radeon RX 7900 XTX" and found[0]["architecture"] == "gfx1100"
    assert found[0]["power_limit_watts"] == 327.0  # the first source's value wins


def test_small_helpers():
    assert pci_identity("00000000:1B:00.0") == "0000:1b:00.0"
    assert pci_identity("03:00.0") == "0000:03:00.0"
    assert pci_identity("N/A") == ""
    probe = _Probe("/", time.monotonic() + 10)
    assert memory_capacity(probe) > 0 and cpu_info(probe)["logical_thread_count"] >= 1


def test_a_detection_that_fails_answers_503_and_logs_once(tmp_path):
    class Log:
        lines: list[str] = []

        def warn(self, msg):
            self.lines.append(msg)

    log = Log()
    empty = tmp_path / "empty"
    fake_host(empty, "", meminfo="")
    d = HardwareDetection("1", log, root=str(empty))
    assert d.result() is None
    assert log.lines == ["hardware detection unavailable: detecting system memory: reported "
                         "zero capacity"]


def test_a_slow_tool_never_delays_startup_and_is_bounded(tmp_path, tools):
    write_tool(tools, "nvidia-smi", "#!/bin/sh\nsleep 30\n")
    t0 = time.monotonic()
    d = HardwareDetection("1", None, timeout=1.0)
    assert time.monotonic() - t0 < 0.5  # started, not waited for
    snap = d.result()  # waits at most the remaining timeout
    assert time.monotonic() - t0 < 5
    assert snap is None or snap["accelerators"] == []


def test_api_hardware_through_the_proxy():
    with Proxy(config(model("m1"))) as p:
        status, headers, body = p.request("GET", "/api/hardware")
        assert status == 200 and headers["content-type"] == "application/json"
        assert body.endswith(b"}\n")
        snap = json.loads(body)
        assert snap["schema_version"] == 1 and snap["memory"]["capacity_bytes"] > 0
        assert snap["cpu"]["logical_thread_count"] == os.cpu_count()
        assert snap["capture"]["detector"]["name"] == "llama-swap"
