"""Sleep/wake swaps end to end: demo backends with vLLM's sleep API (and a command form),
with or without a memory section."""

from __future__ import annotations

import json

from helpers import is_alive, wait_until
from memkit import GiB, FakeGpu, MemoryProxy, wait_state, write_config

from llamaswap.ops.events import ModelStopping

SLEEPY = 'sleep: "POST /sleep?level=1"\nwake: "POST /wake_up"'
GROUP = """
groups:
  pair:
    members: [a, b]
"""


def sleepy(*args: str, ttl: int = 0) -> dict:
    return {"args": list(args), "yaml": SLEEPY + (f"\nttl: {ttl}" if ttl else "")}


def a_then_b(proxy: MemoryProxy) -> int:
    """Serve a, then b (a's group-mate): a's pid."""
    assert proxy.chat("a")[0] == 200
    pid = proxy.pid("a")
    assert proxy.chat("b")[0] == 200
    return pid


def test_a_swap_puts_the_other_model_to_sleep_and_a_request_wakes_it(tmp_path):
    path = write_config(tmp_path, {"a": sleepy("--wake-delay", "0.2"), "b": sleepy()}, "", GROUP)
    with MemoryProxy(path) as proxy:
        stopping: list = []
        proxy.app.events.add_listener(stopping.append, (ModelStopping,))
        pid_a = a_then_b(proxy)
        assert proxy.state("a") == "sleeping" and is_alive(pid_a)  # asleep, not stopped
        assert [(e.model, e.reason, e.for_model) for e in stopping] == [("a", "group", "b")]
        running = json.loads(proxy.request("GET", "/running")[2])["running"]
        assert {r["model"]: r["state"] for r in running} == {"a": "sleeping", "b": "ready"}
        status, answer = proxy.chat("a")  # wakes a (same process), b falls asleep
        assert status == 200 and answer["model"] == "a"
        assert proxy.pid("a") == pid_a and proxy.state("b") == "sleeping"
        changes = [(e.old, e.new) for e in proxy.changes if e.model == "a"]
        assert ("sleeping", "starting") in changes and ("stopped", "starting") in changes
        assert changes.count(("stopped", "starting")) == 1  # loaded once, woken once
        metrics = proxy.request("GET", "/metrics")[2].decode()
        assert 'llamaswap_model_sleeps_total{model="a"} 1' in metrics
        assert 'llamaswap_model_wakes_total{model="a"} 1' in metrics
        assert 'llamaswap_model_state{model="b",state="sleeping"} 1' in metrics
        pid_b = proxy.pid("b")
        status, _h, _b = proxy.request("GET", "/unload")  # unload stops sleeping models too
        assert status == 200
        assert proxy.state("b") == "stopped" and not is_alive(pid_b)


def test_a_failed_sleep_stops_the_model_instead(tmp_path):
    path = write_config(tmp_path, {"a": sleepy("--fail-sleep"), "b": sleepy()}, "", GROUP)
    with MemoryProxy(path) as proxy:
        pid_a = a_then_b(proxy)
        assert proxy.state("a") == "stopped"
        assert wait_until(lambda: not is_alive(pid_a))
        assert "sleep failed" in proxy.app.loggers.proxy.history().decode()


def test_a_failed_wake_stops_the_model_and_starts_it_afresh(tmp_path):
    path = write_config(tmp_path, {"a": sleepy("--fail-wake"), "b": sleepy()}, "", GROUP)
    with MemoryProxy(path) as proxy:
        pid_a = a_then_b(proxy)
        assert proxy.state("a") == "sleeping"
        status, answer = proxy.chat("a")
        assert status == 200 and answer["model"] == "a"
        assert proxy.pid("a") != pid_a and not is_alive(pid_a)
        assert "wake failed" in proxy.app.loggers.proxy.history().decode()


def test_ttl_stops_a_sleeping_model(tmp_path):
    path = write_config(tmp_path, {"a": sleepy(ttl=1), "b": sleepy()}, "", GROUP)
    with MemoryProxy(path) as proxy:
        pid_a = a_then_b(proxy)
        assert proxy.state("a") == "sleeping"
        wait_state(proxy, "a", "stopped", timeout=15)
        assert not is_alive(pid_a)
        assert proxy.state("b") == "ready"


def test_sleep_and_wake_as_commands(tmp_path):
    # the command form, run like cmdStop: a sleeping backend is a stopped process here
    actions = 'sleep: "kill -STOP ${PID}"\nwake: "kill -CONT ${PID}"'
    path = write_config(tmp_path, {"a": {"yaml": actions}, "b": {"yaml": actions}}, "", GROUP)
    with MemoryProxy(path) as proxy:
        pid_a = a_then_b(proxy)
        assert proxy.state("a") == "sleeping"
        with open(f"/proc/{pid_a}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "T"  # stopped by SIGSTOP
        assert proxy.chat("a")[0] == 200 and proxy.pid("a") == pid_a


def test_memory_eviction_sleeps_and_counts_what_a_sleeping_model_keeps(tmp_path, monkeypatch):
    FakeGpu(tmp_path, monkeypatch)
    memory = "memory:\n  devices: {gpu0: 10GiB}\n  every: 200ms\n"
    path = write_config(tmp_path, {
        "a": {"args": ["--gpu-memory", "6GiB", "--gpu-memory-asleep", "1GiB"],
              "yaml": SLEEPY + "\nmemory: {gpu0: 6GiB}"},
        "b": {"args": ["--gpu-memory", "6GiB"], "yaml": "memory: {gpu0: 6GiB}"}}, memory)
    with MemoryProxy(path) as proxy:
        assert proxy.chat("a")[0] == 200
        assert proxy.chat("b")[0] == 200  # 6 + 6 > 10: a sleeps
        assert proxy.state("a") == "sleeping"
        assert wait_until(lambda: proxy.memory()["models"]["a"]["used"].get("gpu0") == GiB,
                          timeout=20), proxy.memory()["models"]["a"]
        entry = proxy.memory()["models"]["a"]
        assert entry["need_asleep"]["gpu0"] == GiB and entry["state"] == "sleeping"
        assert proxy.memory()["devices"]["gpu0"]["used"] == 7 * GiB
        assert proxy.chat("a")[0] == 200  # awake again: b must make room (it cannot sleep)
        assert proxy.state("b") == "stopped"
