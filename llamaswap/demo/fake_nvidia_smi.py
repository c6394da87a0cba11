"""A stand-in for ``nvidia-smi`` on machines without a GPU (tests, benchmarks, demos).

It answers the queries llama-swap asks (``--query-gpu=`` with any of index, uuid, name,
memory.total, memory.used, utilization.gpu, temperature.gpu, fan.speed, power.draw, and
``--query-compute-apps=pid,gpu_uuid,used_memory``, all ``--format=csv,noheader,nounits``) from a state directory: ``gpus.json`` describes the GPUs
and how to behave, and every demo backend started with ``--fake-gpu-dir`` (or the
``LLAMASWAP_FAKE_GPU_DIR`` environment variable) keeps ``apps/<pid>.json`` there with the GPU
memory it pretends to use. Files of processes that are gone are ignored.

``gpus.json``: ``{"gpus": [{"total": bytes, "base": bytes}, ...], "mode": "normal"}``; mode
``foreign-pids`` reports PIDs that match nothing (a container without the host's PID
namespace), ``no-apps`` reports no processes, ``garbage`` prints nonsense, ``hang`` never
answers, ``fail`` exits 9.

Install on PATH: ``python -m llamaswap.demo.fake_nvidia_smi --install BIN_DIR STATE_DIR``
writes ``BIN_DIR/nvidia-smi``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

MiB = 1024 * 1024
ENV = "LLAMASWAP_FAKE_GPU_DIR"
FOREIGN_PID_OFFSET = 3_000_000


def uuid(index: int) -> str:
    return f"GPU-fake0000-0000-0000-0000-{index:012d}"


def write_json(path: str, data: dict) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def setup(state_dir: str, gpus: list[dict], mode: str = "normal") -> None:
    os.makedirs(os.path.join(state_dir, "apps"), exist_ok=True)
    write_json(os.path.join(state_dir, "gpus.json"), {"gpus": gpus, "mode": mode})


def install(bin_dir: str, state_dir: str, python: str = sys.executable) -> str:
    """Write an executable ``nvidia-smi`` into `bin_dir` that runs this module on
    `state_dir`; returns its path."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "nvidia-smi")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"#!/bin/sh\n{ENV}='{state_dir}' PYTHONPATH='{root}' "
                f"exec '{python}' -m llamaswap.demo.fake_nvidia_smi \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")


def apps(state_dir: str) -> list[tuple[int, int, int]]:
    """(pid, gpu index, bytes) of every live pretend GPU user."""
    out = []
    folder = os.path.join(state_dir, "apps")
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                data = json.load(f)
            pid = int(name[:-5])
        except (OSError, ValueError):
            continue
        if _alive(pid) and data.get("used", 0) > 0:
            out.append((pid, int(data.get("gpu", 0)), int(data["used"])))
    return out


def _gpu_field(name: str, index: int, gpu: dict, used: int) -> object:
    """One --query-gpu field. Utilisation follows the memory in use and a slow wave, so the
    UI's performance charts have something to draw; temperature and power follow it."""
    total = int(gpu["total"])
    util = min(100.0, used / total * 60 + 20 + 15 * math.sin(time.time() / 20 + index)) if total else 0.0
    values = {"index": index, "uuid": uuid(index), "name": gpu.get("name", "Fake GPU"),
              "memory.total": total // MiB, "memory.used": used // MiB,
              "utilization.gpu": round(util), "temperature.gpu": round(35 + util / 2),
              "fan.speed": round(30 + util / 3), "power.draw": round(50 + util * 2.5, 2)}
    return values.get(name, "[N/A]")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--install"] and len(argv) == 3:
        print(install(argv[1], argv[2]))
        return 0
    state_dir = os.environ.get(ENV, "")
    try:
        with open(os.path.join(state_dir, "gpus.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        sys.stderr.write("NVIDIA-SMI has failed because it couldn't communicate with the "
                         "NVIDIA driver.\n")
        return 9
    mode = config.get("mode", "normal")
    if mode == "hang":
        time.sleep(3600)
    if mode == "fail":
        sys.stderr.write("NVIDIA-SMI has failed because it couldn't communicate with the "
                         "NVIDIA driver.\n")
        return 9
    if mode == "garbage":
        sys.stdout.write("Segmentation fault? \x00\x01 ,,,\n<html>\n")
        return 0
    gpus = config.get("gpus", [])
    running = apps(state_dir)
    query = next((a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")), None)
    if query is not None:
        for index, gpu in enumerate(gpus):
            used = int(gpu.get("base", 0)) + sum(b for _p, g, b in running if g == index)
            sys.stdout.write(", ".join(str(_gpu_field(f.strip(), index, gpu, used))
                                       for f in query.split(",")) + "\n")
        return 0
    if any(a.startswith("--query-compute-apps") for a in argv):
        if mode == "no-apps":
            return 0
        offset = FOREIGN_PID_OFFSET if mode == "foreign-pids" else 0
        for pid, index, used in running:
            if index < len(gpus):
                sys.stdout.write(f"{pid + offset}, {uuid(index)}, {used // MiB}\n")
        return 0
    sys.stdout.write("fake nvidia-smi: llama-swap's test stand-in\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
