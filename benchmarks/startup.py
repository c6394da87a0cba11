"""Start time and idle memory of the proxy: the .pyz and the checkout, in the same run.

Each start runs the proxy on a small config (two models, nothing loaded) with a clean
environment and a HOME of its own, and measures:
- wall time from exec to the first ``/health`` 200 (the client asks as soon as the proxy logs
  that it listens, so no busy polling competes for the CPU),
- the CPU time the proxy had used by then (user + system, from /proc: less sensitive than wall
  time to other work on a shared machine),
- its resident memory (VmRSS) after a second of idling.

The .pyz is measured on its first start with an empty cache (it unpacks itself once) and on
later starts (which reuse the unpacked files and their compiled bytecode); the checkout runs
as ``python -m llamaswap`` with its own ``__pycache__``. Targets: the .pyz's later starts
within 200 ms to the first /health 200, and idle RSS within 25 MB.

Run: ``python benchmarks/startup.py [--runs N] [--pyz dist/llama-swap.pyz]`` (build the .pyz
first: ``python3 build_zipapp.py``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import free_port  # noqa: E402

TARGET_START_S = 0.200
TARGET_RSS_MB = 25.0
IDLE_S = 1.0
CONFIG = """\
models:
  small:
    cmd: python3 -m llamaswap.demo.backend --port ${PORT}
  other:
    cmd: python3 -m llamaswap.demo.backend --port ${PORT}
    ttl: 60
"""
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_start(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(seconds to the first /health 200, CPU seconds by then, idle RSS in MB)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*argv, "-listen", f"127.0.0.1:{port}"], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout:
            if b"listening on" in line:
                break
        else:
            raise RuntimeError(f"{argv} exited with {proc.wait()} before listening")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            resp.read()
            assert resp.status == 200
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid)
        time.sleep(IDLE_S)  # idle on purpose: the figure is memory after idling this long
        rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.stdout.read()
        proc.wait(30)
    return elapsed, cpu, rss


def dependency_dirs(pyz: Path) -> list[str]:
    """Where this interpreter finds PyYAML and gjson (for the checkout's PYTHONPATH); the
    .pyz, whose root holds both, where it has neither (a GPU host with a bare Python)."""
    try:
        import gjson
        import yaml
    except ImportError:
        return [str(pyz)]
    return sorted({str(Path(m.__file__).parent.parent) for m in (yaml, gjson)})


def interpreter_alone(python: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -I -c pass`: the floor under every figure above."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([python, "-I", "-c", "pass"], env=env, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def report(label: str, runs: list[tuple[float, float, float]]) -> None:
    walls, cpus, rsss = zip(*runs)
    print(f"{label:<34} start median {statistics.median(walls) * 1000:6.0f} ms "
          f"(min {min(walls) * 1000:4.0f}, max {max(walls) * 1000:4.0f}); "
          f"CPU {statistics.median(cpus) * 1000:4.0f} ms; "
          f"idle RSS {statistics.median(rsss):5.1f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--pyz", type=Path, default=ROOT / "dist" / "llama-swap.pyz")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter for both (the checkout needs PyYAML and gjson in it)")
    args = p.parse_args()
    args.pyz = args.pyz.resolve()  # the proxy runs in a scratch directory
    if not args.pyz.exists():
        sys.exit(f"{args.pyz} not found: run python3 build_zipapp.py first")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "config.yaml").write_text(CONFIG)
        home = tmp_path / "home"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "LANG": "C.UTF-8"}
        pyz = [args.python, "-I", str(args.pyz), "-config", "config.yaml"]
        checkout = [args.python, "-m", "llamaswap", "-config", "config.yaml"]
        checkout_env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), *dependency_dirs(args.pyz)])}
        first, later, source, bare = [], [], [], []
        for _ in range(args.runs):
            bare.append(interpreter_alone(args.python, env))
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            first.append(one_start(pyz, env, tmp_path))
            later.append(one_start(pyz, env, tmp_path))
            source.append(one_start(checkout, checkout_env, tmp_path))
    print(f"interpreter alone ({args.python} -I -c pass): wall median "
          f"{statistics.median(w for w, _ in bare) * 1000:.0f} ms, "
          f"CPU {statistics.median(c for _, c in bare) * 1000:.0f} ms")
    report(".pyz, first start (empty cache)", first)
    report(".pyz, later starts", later)
    report("checkout (python -m llamaswap)", source)
    start = statistics.median(w for w, _, _ in later)
    rss = statistics.median(r for _, _, r in later)
    ok = start <= TARGET_START_S and rss <= TARGET_RSS_MB
    print(f"targets for the .pyz: start <= {TARGET_START_S * 1000:.0f} ms, idle RSS <= "
          f"{TARGET_RSS_MB:.0f} MB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
