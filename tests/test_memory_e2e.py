"""Memory-aware swapping end to end: real demo backends pretending to use GPU memory, the fake
nvidia-smi reporting it, the real App, router, memory monitor and HTTP front."""

from __future__ import annotations

import json
import threading

import pytest
from helpers import is_alive, wait_until
from memkit import GiB, FakeGpu, MemoryProxy, MiB, wait_state, write_config

MEMORY = """
memory:
  devices: {gpu0: 10GiB}
  headroom: 512MiB
  every: 200ms
"""


def gpu(size: str, *more: str) -> dict:
    return {"args": ["--gpu-memory", size, *more]}


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    return FakeGpu(tmp_path, monkeypatch)


def test_models_share_the_budget_and_the_least_recently_used_idle_one_goes(tmp_path, fake_gpu):
    path = write_config(tmp_path, {m: {**gpu("3GiB"), "yaml": "memory: {gpu0: 3GiB}"}
                                   for m in "abcd"}, MEMORY)
    with MemoryProxy(path) as proxy:
        for m in "abc":
            assert proxy.chat(m)[0] == 200
        assert [proxy.state(m) for m in "abc"] == ["ready"] * 3  # 9 GiB + headroom fits 10
        assert proxy.chat("a")[0] == 200  # a is used again: b is now the least recent
        assert proxy.chat("d")[0] == 200
        assert [proxy.state(m) for m in "abcd"] == ["ready", "stopped", "ready", "ready"]
        body = proxy.memory()
        assert body["devices"]["gpu0"]["budget"] == 10 * GiB
        assert body["devices"]["gpu0"]["used"] == 9 * GiB
        assert body["devices"]["gpu0"]["free"] == 10 * GiB - GiB // 2 - 9 * GiB
        running = json.loads(proxy.request("GET", "/running")[2])["running"]
        assert {r["model"]: r["memory"]["gpu0"] for r in running} == {m: 3 * GiB for m in "acd"}
        metrics = proxy.request("GET", "/metrics")[2].decode()
        for line in (f'llamaswap_memory_budget_bytes{{device="gpu0"}} {10 * GiB}',
                     f'llamaswap_memory_used_bytes{{device="gpu0"}} {9 * GiB}',
                     f'llamaswap_model_memory_bytes{{model="b",device="gpu0",source="declared"}} '
                     f'{3 * GiB}'):
            assert line in metrics, line
        assert metrics.count("# TYPE llamaswap_memory_used_bytes gauge") == 1


def test_a_busy_model_is_waited_for_never_evicted_under_its_request(tmp_path, fake_gpu):
    path = write_config(tmp_path, {"a": {**gpu("6GiB"), "yaml": "memory: {gpu0: 6GiB}"},
                                   "b": {**gpu("6GiB"), "yaml": "memory: {gpu0: 6GiB}"}}, MEMORY)
    with MemoryProxy(path) as proxy:
        assert proxy.chat("a")[0] == 200
        slow: dict = {}
        busy = threading.Thread(target=lambda: slow.update(r=proxy.chat("a", sleep=1.5)))
        busy.start()
        assert wait_until(lambda: proxy.app.router.in_flight("a") == 1)
        assert proxy.chat("b")[0] == 200  # waits for a's request, then evicts a
        busy.join(30)
        assert slow["r"][0] == 200 and slow["r"][1]["model"] == "a"
        stops = [e for e in proxy.changes if e.model == "a" and e.new == "stopping"]
        assert len(stops) == 1
        assert proxy.state("a") == "stopped" and proxy.state("b") == "ready"


def test_an_unknown_need_loads_alone_then_shares_and_learning_survives_a_restart(
        tmp_path, fake_gpu):
    path = write_config(tmp_path, {"u": gpu("3GiB"), "v": gpu("4GiB")}, MEMORY)
    with MemoryProxy(path) as proxy:
        assert proxy.memory()["models"]["u"]["need"] == {"gpu0": None}
        assert proxy.chat("u")[0] == 200
        u = proxy.measured("u")
        assert u["need"]["gpu0"] == 3 * GiB and u["method"]["gpu0"] == "pid"
        assert proxy.chat("v")[0] == 200  # unknown: alone, u is evicted
        assert proxy.state("u") == "stopped"
        proxy.measured("v")
        assert proxy.chat("u")[0] == 200  # both known now: 3 + 4 GiB share the budget
        assert proxy.state("v") == "ready"
    state = tmp_path / "config.memory.json"
    assert state.exists()
    with MemoryProxy(path) as proxy:  # a restart: the needs are known before any load
        models = proxy.memory()["models"]
        assert {m: (models[m]["source"]["gpu0"], models[m]["need"]["gpu0"]) for m in "uv"} == {
            "u": ("measured", 3 * GiB), "v": ("measured", 4 * GiB)}
        assert proxy.chat("u")[0] == 200 and proxy.chat("v")[0] == 200
        assert proxy.state("u") == "ready" and proxy.state("v") == "ready"


def test_a_model_that_can_never_fit_gets_503_naming_the_device_need_and_budget(
        tmp_path, fake_gpu):
    path = write_config(tmp_path, {"huge": {**gpu("1GiB"), "yaml": "memory: {gpu0: 12GiB}"}},
                        MEMORY)
    with MemoryProxy(path) as proxy:
        assert any("can never fit" in w for w in proxy.app.config.warnings)
        status, body = proxy.chat("huge")
        assert status == 503
        message = body["error"]["message"]
        for part in ("huge", "gpu0", "12.0 GiB", "10.0 GiB", str(12 * GiB + GiB // 2)):
            assert part in message, message
        assert proxy.state("huge") == "stopped"


def test_growth_past_the_budget_evicts_the_least_recently_used_idle_other(tmp_path, fake_gpu):
    path = write_config(tmp_path, {m: gpu("3GiB") for m in "abc"}, MEMORY)
    with MemoryProxy(path) as proxy:
        for m in "abc":  # each loads alone once, then all three share (9 GiB)
            assert proxy.chat(m)[0] == 200
            proxy.measured(m)
        for m in "abc":
            assert proxy.chat(m)[0] == 200
        assert [proxy.state(m) for m in "abc"] == ["ready"] * 3
        assert proxy.chat("c", grow_gpu=2 * GiB)[0] == 200  # c now holds 5 GiB
        wait_state(proxy, "a", "stopped")  # a is the least recently used
        assert proxy.state("b") == "ready" and proxy.state("c") == "ready"
        assert proxy.measured("c", at_least=5 * GiB)["need"]["gpu0"] == 5 * GiB
        log = proxy.app.loggers.proxy.history().decode()
        assert "over budget after measuring c" in log and "evicting" in log


def test_pids_that_match_nothing_fall_back_to_the_rise_in_used_memory(tmp_path, monkeypatch):
    FakeGpu(tmp_path, monkeypatch, mode="foreign-pids")
    path = write_config(tmp_path, {"r": gpu("2GiB")}, MEMORY)
    with MemoryProxy(path) as proxy:
        assert proxy.chat("r")[0] == 200
        entry = proxy.measured("r")
        assert entry["need"]["gpu0"] == 2 * GiB and entry["method"]["gpu0"] == "rise"


def test_ram_is_measured_from_proc(tmp_path, fake_gpu):
    memory = "memory:\n  devices: {ram: 64GiB}\n  every: 200ms\n"
    path = write_config(tmp_path, {"r": {"args": ["--ram", "48MiB"]}}, memory)
    with MemoryProxy(path) as proxy:
        assert proxy.chat("r")[0] == 200
        entry = proxy.measured("r", "ram", at_least=48 * MiB)
        assert entry["method"]["ram"] in ("pss", "rss")
        assert 48 * MiB <= entry["need"]["ram"] < 200 * MiB


@pytest.mark.parametrize("mode", ["garbage", "fail", "hang"])
def test_a_broken_nvidia_smi_warns_and_declared_needs_still_route(tmp_path, monkeypatch, mode):
    FakeGpu(tmp_path, monkeypatch, mode=mode)
    path = write_config(tmp_path, {m: {**gpu("3GiB"), "yaml": "memory: {gpu0: 3GiB}"}
                                   for m in "ab"}, MEMORY)
    with MemoryProxy(path) as proxy:
        assert proxy.chat("a")[0] == 200 and proxy.chat("b")[0] == 200
        assert proxy.state("a") == "ready" and proxy.state("b") == "ready"
        assert wait_until(lambda: "GPU devices use declared needs only"
                          in proxy.app.loggers.proxy.history().decode(), timeout=20)


def test_auto_without_a_gpu_to_read_is_a_config_error(tmp_path, monkeypatch):
    from llamaswap.config import ConfigError
    FakeGpu(tmp_path, monkeypatch, mode="fail")
    memory = "memory:\n  devices: {gpu0: auto}\n"
    path = write_config(tmp_path, {"a": gpu("1GiB")}, memory)
    with pytest.raises(ConfigError, match="memory.devices.gpu0: auto"):
        MemoryProxy(path)


def test_api_memory_without_a_memory_section_is_404(tmp_path):
    path = write_config(tmp_path, {"a": {}}, "")
    with MemoryProxy(path) as proxy:
        status, _h, body = proxy.request("GET", "/api/memory")
        assert status == 404 and b"memory" in body


def test_with_a_sqlite_store_learned_needs_live_in_its_file(tmp_path, fake_gpu):
    import sqlite3
    db = tmp_path / "activity.db"
    path = write_config(tmp_path, {"u": gpu("3GiB")}, MEMORY, f"store:\n  path: {db}")
    with MemoryProxy(path) as proxy:
        assert proxy.chat("u")[0] == 200
        proxy.measured("u")
    rows = sqlite3.connect(db).execute(
        "SELECT model_id, level, device, bytes FROM memory_needs").fetchall()
    assert ("u", "awake", "gpu0", 3 * GiB) in rows
    assert not (tmp_path / "config.memory.json").exists()
    with MemoryProxy(path) as proxy:
        entry = proxy.memory()["models"]["u"]
        assert entry["source"]["gpu0"] == "measured" and entry["need"]["gpu0"] == 3 * GiB


def test_a_reload_that_adds_a_memory_section_lets_models_share(tmp_path, fake_gpu):
    from llamaswap.config import load_config
    models = {m: gpu("3GiB") for m in "ab"}
    path = write_config(tmp_path, models, "")
    with MemoryProxy(path) as proxy:
        assert proxy.chat("a")[0] == 200 and proxy.chat("b")[0] == 200
        assert proxy.state("a") == "stopped"  # the implicit group: one at a time
        text = open(path).read().replace("models:\n", MEMORY.strip() + "\nmodels:\n", 1)
        with open(path, "w") as f:
            f.write(text)
        proxy.holder.app = proxy.app = proxy.app.reload(load_config(path))
        assert proxy.chat("a")[0] == 200  # b is known to nobody yet: a loads alone
        proxy.measured("a")
        assert proxy.chat("b")[0] == 200
        proxy.measured("b")
        assert proxy.chat("a")[0] == 200
        assert proxy.state("a") == "ready" and proxy.state("b") == "ready"
