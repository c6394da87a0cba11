"""How fast Process notices a healthy backend, and how long stops take.

Readiness delay: an observer thread polls the demo backend's /health every millisecond on its
own connection and records when it first sees 200; the delay is Process.ready_at minus that
time. Load delays vary between runs so the 200 lands at different points of the probe
schedule (10 ms doubling to 25 ms for the first 3 s of a load, then up to 250 ms). The observer's resolution is about one poll plus one
request, so the true delay is at most the printed one.

Stop times: a backend that exits on SIGTERM (graceful), a backend that ignores SIGTERM and is
SIGKILLed after the grace (forced; the overhead beyond the grace is printed too), and the same
two behind an ``sh -c "... & wait"`` wrapper.

Run: ``python benchmarks/readiness.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import demo_backend_argv, free_port  # noqa: E402
from llamaswap import procutil  # noqa: E402
from llamaswap.config.model import ModelConfig  # noqa: E402
from llamaswap.ops.logs import build_loggers, new_process_log  # noqa: E402
from llamaswap.process import Process  # noqa: E402

LOGGERS = build_loggers("none")
ENV = (f"PYTHONPATH={ROOT}",)


def make(model_id: str, argv, port: int) -> Process:
    cfg = ModelConfig(id=model_id, argv=tuple(argv), proxy=f"http://127.0.0.1:{port}",
                      env=ENV, health_check_timeout=60)
    return Process(cfg, log=new_process_log(model_id, LOGGERS.upstream), proxy_log=LOGGERS.log)


def readiness_delay(load_delay: float) -> float:
    """Seconds from the observer's first 200 to Process.ready_at."""
    port = free_port()
    proc = make("bench", demo_backend_argv("bench", port, "--quiet", "--load-delay",
                                           f"{load_delay:.3f}"), port)
    first_200: list[float] = []
    done = threading.Event()

    def observe() -> None:
        url = f"http://127.0.0.1:{port}/health"
        while not done.is_set():
            if procutil.probe(url, 1.0) == 200:
                first_200.append(time.time())
                return
            time.sleep(0.001)  # poll period of the observer, not synchronisation

    observer = threading.Thread(target=observe)
    observer.start()
    try:
        proc.start()
        ready_at = proc.ready_at
        observer.join(10)
    finally:
        done.set()
        observer.join()
        proc.stop(5)
    assert ready_at is not None and first_200
    return ready_at - first_200[0]


def stop_time(argv, port: int, grace: float) -> float:
    proc = make("stopbench", argv, port)
    proc.start()
    t0 = time.monotonic()
    proc.stop(grace)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    delays = []
    for i in range(args.runs):
        load = 0.3 + (i * 0.137) % 1.2  # spread over the probe schedule
        delays.append(readiness_delay(load))
    ms = sorted(d * 1000 for d in delays)
    print(f"readiness delay (first 200 -> READY) over {len(ms)} runs: "
          f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms")

    grace = 1.0
    cases = []
    for label, extra in (("graceful (exits on SIGTERM)", ()),
                         ("forced (ignores SIGTERM)", ("--ignore-sigterm",))):
        for wrapped in (False, True):
            times = []
            for _ in range(max(3, args.runs // 3)):
                port = free_port()
                argv = demo_backend_argv("stopbench", port, "--quiet", *extra)
                if wrapped:
                    argv = ["sh", "-c", f"{shlex.join(argv)} & wait"]
                times.append(stop_time(argv, port, grace))
            cases.append((label + (" behind sh -c '... & wait'" if wrapped else ""), times))
    for label, times in cases:
        med = statistics.median(times) * 1000
        extra = (f" (grace {grace * 1000:.0f} ms, overhead {med - grace * 1000:.1f} ms)"
                 if "forced" in label else "")
        print(f"stop time, {label}: median {med:.1f} ms{extra}")


if __name__ == "__main__":
    main()
