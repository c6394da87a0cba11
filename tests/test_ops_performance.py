"""GET /api/performance: the monitor's samples from the real /proc, GPU stats from an
nvidia-smi found on the PATH (a script standing in for it here), upstream's JSON shapes."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from helpers import wait_until
from httpkit import Proxy, config, model

from llamaswap.config.model import PerformanceConfig
from llamaswap.ops import gojson
from llamaswap.ops.performance import (PerformanceMonitor, parse_nvidia_smi_line, parse_rfc3339,
                                       performance_json)

SYS_KEYS = ["timestamp", "cpu_util_per_core", "mem_total_mb", "mem_used_mb", "mem_free_mb",
            "swap_total_mb", "swap_used_mb", "load_avg_1", "load_avg_5", "load_avg_15", "net_io"]
GPU_KEYS = ["timestamp", "id", "name", "uuid", "temp_c", "vram_temp_c", "gpu_util_pct",
            "mem_util_pct", "mem_used_mb", "mem_total_mb", "fan_speed_pct", "power_draw_w"]
FAKE_SMI = """#!/bin/sh
echo "0, NVIDIA GeForce RTX 3090, GPU-aaaa, 61, 87, 20480, 24576, 45, 301.52"
echo "1, NVIDIA GeForce RTX 3090, GPU-bbbb, [N/A], 0, 0, 0, [N/A], [N/A]"
"""


def test_nvidia_smi_lines_parse_as_upstream():
    now = datetime.now().astimezone()
    g = parse_nvidia_smi_line("0, NVIDIA GeForce RTX 3090, GPU-aaaa, 61, 87, 20480, 24576, 45, "
                              "301.52", now)
    assert list(g) == GPU_KEYS
    assert (g["id"], g["name"], g["uuid"], g["temp_c"], g["vram_temp_c"]) == (
        0, "NVIDIA GeForce RTX 3090", "GPU-aaaa", 61, 0)
    assert (g["gpu_util_pct"], g["mem_used_mb"], g["mem_total_mb"]) == (87.0, 20480, 24576)
    assert g["mem_util_pct"] == 20480 / 24576 * 100
    assert (g["fan_speed_pct"], g["power_draw_w"]) == (45.0, 301.52)
    na = parse_nvidia_smi_line("1, X, GPU-b, [N/A], [N/A], 0, 0, [N/A], [N/A]", now)
    assert (na["temp_c"], na["gpu_util_pct"], na["mem_util_pct"], na["power_draw_w"]) == (
        0, 0.0, 0.0, 0.0)
    assert parse_nvidia_smi_line("too, few, fields", now) is None


def test_after_accepts_go_rfc3339_only():
    assert parse_rfc3339("2026-11-24T10:00:00Z") == datetime(2026, 11, 24, 10, tzinfo=timezone.utc)
    t = parse_rfc3339("2026-11-24T10:00:00.123456789+02:00")
    assert t.microsecond == 123456 and t.utcoffset() == timedelta(hours=2)
    for bad in ("2026-11-24", "2026-11-24 10:00:00Z", "2026-11-24T10:00:00", "yesterday",
                "2026-13-01T00:00:00Z", "2026-11-24T10:00:00+25:00"):
        assert parse_rfc3339(bad) is None, bad


def test_empty_rings_are_null_unless_filtered():
    monitor = PerformanceMonitor(PerformanceConfig(every=5))
    assert performance_json(monitor, None) == '{"gpu_stats":null,"sys_stats":null}\n'
    assert performance_json(monitor, datetime.now().astimezone()) == \
        '{"gpu_stats":[],"sys_stats":[]}\n'


def sample_with_tool(tmp_path, monkeypatch, name, script, path_rest, enough):
    """A monitor sampling every 50 ms with a stand-in GPU tool first on the PATH, stopped
    once ``enough(sys_stats, gpu_stats)``."""
    tool = tmp_path / name
    tool.write_text(script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{path_rest}")
    monitor = PerformanceMonitor(PerformanceConfig(every=0.05))
    monitor.start()
    try:
        assert wait_until(lambda: enough(*monitor.current()))
    finally:
        monitor.stop()
    return monitor


def test_monitor_samples_the_system_and_a_gpu_tool_on_the_path(tmp_path, monkeypatch):
    monitor = sample_with_tool(tmp_path, monkeypatch, "nvidia-smi", FAKE_SMI, os.environ["PATH"],
                               lambda sys_stats, gpu: len(sys_stats) >= 2 and len(gpu) >= 4)
    sys_stats, gpu_stats = monitor.current()
    s = sys_stats[-1]
    assert list(s) == SYS_KEYS
    assert len(s["cpu_util_per_core"]) == os.cpu_count()
    assert all(0.0 <= p <= 100.0 for p in s["cpu_util_per_core"])
    assert s["mem_total_mb"] > 0 and 0 <= s["mem_used_mb"] <= s["mem_total_mb"]
    assert all(n["name"] != "lo" and list(n) == ["name", "bytes_recv", "bytes_sent"]
               for n in s["net_io"])
    assert sys_stats[0]["timestamp"] < s["timestamp"]
    assert [g["uuid"] for g in gpu_stats[:2]] == ["GPU-aaaa", "GPU-bbbb"]
    assert gpu_stats[0]["power_draw_w"] == 301.52 and gpu_stats[1]["temp_c"] == 0
    # the encoded form: Go's JSON for these structs
    text = performance_json(monitor, None)
    body = json.loads(text)
    assert list(body) == ["gpu_stats", "sys_stats"]
    assert body["sys_stats"][-1]["timestamp"] == gojson.go_time(s["timestamp"])


def test_reload_with_new_settings_restarts_with_empty_rings():
    monitor = PerformanceMonitor(PerformanceConfig(every=0.05))
    monitor.start()
    try:
        assert wait_until(lambda: len(monitor.current()[0]) >= 1)
        monitor.update(PerformanceConfig(every=0.05))  # unchanged: nothing happens
        assert monitor.current()[0]
        monitor.update(PerformanceConfig(disabled=True))
        assert monitor.current() == ([], [])
        monitor.update(PerformanceConfig(every=0.06))
        assert wait_until(lambda: len(monitor.current()[0]) >= 1)
    finally:
        monitor.stop()


def test_api_performance_route():
    with Proxy(config(model("m1"), performance=PerformanceConfig(every=0.05))) as p:
        assert wait_until(lambda: len(p.app.performance.current()[0]) >= 2)
        status, headers, body = p.request("GET", "/api/performance")
        assert status == 200 and headers["content-type"] == "application/json"
        stats = json.loads(body)["sys_stats"]
        assert len(stats) >= 2 and list(stats[0]) == SYS_KEYS
        status, _, body = p.request("GET", f"/api/performance?after={stats[0]['timestamp']}")
        later = json.loads(body)["sys_stats"]
        assert status == 200 and later and all(s["timestamp"] != stats[0]["timestamp"]
                                               for s in later)
        status, _, body = p.request("GET", "/api/performance?after=yesterday")
        assert status == 400
        assert json.loads(body)["error"]["message"] == \
            "invalid 'after' timestamp, use RFC3339 format"
    with Proxy(config(model("m1"), performance=PerformanceConfig(disabled=True))) as p:
        status, _, body = p.request("GET", "/api/performance")
        assert status == 503
        assert json.loads(body)["error"]["message"] == "performance monitor not available"


FAKE_ROCM_SMI = """#!/bin/sh
[ "$*" = "-i -P -t -f -u --showmemuse --showmeminfo vram --showproductname --csv" ] || exit 2
echo "device,Device ID,Temperature (Sensor edge) (C),Temperature (Sensor memory) (C),Average Graphics Package Power (W),Fan speed (%),GPU use (%),GPU Memory Allocated (VRAM%),VRAM Total Memory (B),VRAM Total Used Memory (B),Card Series,Card Model,Card Vendor,Card SKU,GFX Version,GUID"
echo "card0,0x744c,45.0,62.0,87.0,21.57,33,10,25753026560,2575302656,Radeon RX 7900 XTX,0x744c,Advanced Micro Devices Inc.,D70701,gfx1100,41281"
echo "card1,0x744c,40.0,N/A,N/A,N/A,0,0,25753026560,0,N/A,0x744c,Advanced Micro Devices Inc.,D70701,gfx1100,5032"
"""


def test_rocm_smi_lines_parse_as_upstream():
    from llamaswap.ops.performance import parse_rocm_smi
    now = datetime.now().astimezone()
    lines = FAKE_ROCM_SMI.splitlines()[2:]
    stats = parse_rocm_smi("\n".join(line[6:-1] for line in lines), now)
    first, second = stats
    assert first == {"timestamp": now, "id": 0, "name": "Radeon RX 7900 XTX card0 (gfx1100)",
                     "uuid": "41281", "temp_c": 45, "vram_temp_c": 62, "gpu_util_pct": 33.0,
                     "mem_util_pct": 10.0, "mem_used_mb": 2456, "mem_total_mb": 24560,
                     "fan_speed_pct": 21.57, "power_draw_w": 87.0}
    assert second["name"] == "card1" and second["vram_temp_c"] == 0
    assert parse_rocm_smi("card0,1,2\n", now) == []  # no header: nothing


def test_monitor_reads_rocm_smi_when_there_is_no_nvidia_smi(tmp_path, monkeypatch):
    monitor = sample_with_tool(tmp_path, monkeypatch, "rocm-smi", FAKE_ROCM_SMI, "/usr/bin:/bin",
                               lambda _sys, gpu: len(gpu) >= 2)
    gpu = monitor.current()[1]
    assert [g["id"] for g in gpu[:2]] == [0, 1] and gpu[0]["gpu_util_pct"] == 33.0
