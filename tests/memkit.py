"""Plumbing for the memory tests: a fake GPU (the fake nvidia-smi first on PATH, and the
state directory the demo backends publish their pretend GPU memory in), and a proxy built
from a real config file with a ``memory:`` section, in front of demo backends."""

from __future__ import annotations

import json
import os
import sys
import time

from helpers import free_port, wait_until
from httpkit import Proxy

from llamaswap.config import load_config
from llamaswap.demo import fake_nvidia_smi
from llamaswap.ops.events import ProcessStateChanged
from llamaswap.sizes import GiB

MiB = 1 << 20


class FakeGpu:
    """One or more fake GPUs; ``mode`` as fake_nvidia_smi's (normal, foreign-pids, ...)."""

    def __init__(self, tmp_path, monkeypatch, total: int = 24 * GiB, mode: str = "normal"):
        self.dir = str(tmp_path / "fakegpu")
        self.bin = str(tmp_path / "bin")
        self.total = total
        self.set_mode(mode)
        fake_nvidia_smi.install(self.bin, self.dir)
        monkeypatch.setenv("PATH", self.bin + os.pathsep + os.environ.get("PATH", ""))
        monkeypatch.setenv(fake_nvidia_smi.ENV, self.dir)

    def set_mode(self, mode: str) -> None:
        fake_nvidia_smi.setup(self.dir, [{"total": self.total, "base": 200 * MiB}], mode)


def demo_cmd(model_id: str, port: int, *extra: str) -> str:
    return " ".join([sys.executable, "-m", "llamaswap.demo.backend", "--port", str(port),
                     "--model-id", model_id, "--quiet", *extra])


def write_config(tmp_path, models: dict[str, dict], memory: str, extra: str = "") -> str:
    """A config file: `models` maps an id to {"args": [...demo flags], "yaml": "more keys"}."""
    lines = ["healthCheckTimeout: 30", "unloadTimeout: 2", memory.strip(), extra.strip(),
             "models:"]
    for model_id, spec in models.items():
        port = free_port()
        lines.append(f"  {model_id}:")
        lines.append(f"    cmd: {demo_cmd(model_id, port, *spec.get('args', ()))}")
        lines.append(f"    proxy: http://127.0.0.1:{port}")
        for line in spec.get("yaml", "").strip().splitlines():
            lines.append(f"    {line.strip()}")
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(line for line in lines if line) + "\n")
    return str(path)


class MemoryProxy(Proxy):
    """A Proxy from a config file, with the state changes it saw."""

    def __init__(self, path: str):
        super().__init__(load_config(path))
        self.changes: list[ProcessStateChanged] = []
        self.app.events.add_listener(self.changes.append, (ProcessStateChanged,))

    def chat(self, model: str, **knobs) -> tuple[int, dict]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if knobs:
            body["demo"] = knobs
        status, _headers, data = self.post("/v1/chat/completions", body)
        return status, json.loads(data)

    def memory(self) -> dict:
        status, _headers, data = self.request("GET", "/api/memory")
        assert status == 200, data
        return json.loads(data)

    def state(self, model: str) -> str:
        return self.app.processes[model].state.value

    def measured(self, model: str, device: str = "gpu0", at_least: int = 1) -> dict:
        """Wait until `model`'s need on `device` is measured (and at least `at_least`)."""
        def done():
            entry = self.memory()["models"][model]
            need = entry["need"][device]
            return entry if entry["source"][device] == "measured" and need >= at_least else None
        assert wait_until(done, timeout=20, interval=0.05), self.memory()["models"][model]
        return done()

    def pid(self, model: str) -> int | None:
        return self.app.processes[model].pid


def wait_state(proxy: MemoryProxy, model: str, state: str, timeout: float = 20) -> None:
    assert wait_until(lambda: proxy.state(model) == state, timeout=timeout), \
        f"{model} is {proxy.state(model)}, not {state}"


__all__ = ["FakeGpu", "MemoryProxy", "write_config", "wait_state", "GiB", "MiB", "time"]
