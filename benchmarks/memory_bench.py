"""Memory-aware swapping against the other policies, and sleep/wake swaps.

Part 1, policies: one fixed request trace (seeded) over five models of different sizes on one
24 GiB budget, replayed through the real router core (``router/core.py``) and planners on a
simulated clock, so the decisions are exactly the proxy's and the run takes a second:
  (a) one swap group (upstream's default: one model at a time),
  (b) a count limit like llama.cpp's ``--models-max 2`` (least recently used idle goes),
  (c) memory-aware (``memory:`` section; needs unknown at first, learned from measurements).
Each load takes 1 s + 0.5 s per GiB; a request takes 0.5 to 3 s of service. Four clients
work through the trace, each sending its next request when its last one is answered, so
the total time is what the loads cost. Reported per policy: loads, total time, mean wait
for a grant, and budget violations (models that really hold memory counting more than the
budget).

Part 2, sleep/wake: the proxy (``python -m llamaswap``) with two demo backends in one swap
group, load 5 s, wake 0.3 s, alternating A/B requests; the time per swapped request with
``sleep``/``wake`` configured against the wake delay, and one plain swap for comparison.

Run: ``python benchmarks/memory_bench.py [--skip-sleep] [--requests N]``.
"""

from __future__ import annotations

import argparse
import heapq
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import demo_backend_argv, free_port  # noqa: E402
from llamaswap.config.model import GroupConfig  # noqa: E402
from llamaswap.router.core import (ArmTimer, Log, NeedLearned, RouterCore, StartSwap,  # noqa: E402
                                   StopModels)
from llamaswap.router.memory import MemoryBook, MemoryPlanner, MemoryPolicy  # noqa: E402
from llamaswap.router.planners import GroupPlanner, Plan  # noqa: E402

GiB = 1 << 30
BUDGET = 24 * GiB
SIZES = {"chat-12g": 12, "code-8g": 8, "vision-5g": 5, "small-3g": 3, "embed-1g": 1}
POPULARITY = {"chat-12g": 30, "code-8g": 20, "vision-5g": 8, "small-3g": 12, "embed-1g": 30}
STOP_SECONDS = 0.2


def load_seconds(model: str) -> float:
    return 1.0 + 0.5 * SIZES[model]


class CountLimit:
    """llama.cpp's --models-max N as a planner: at most N models, least recently used idle
    ones go first."""

    reason = "count"

    def __init__(self, limit: int, book: MemoryBook):
        self.limit = limit
        self.book = book

    def eviction_for(self, target, running):
        return self.plan(target, running, None).evict

    def plan(self, target, running, ctx):
        others = [m for m in running if m != target]
        excess = len(others) + 1 - self.limit
        if target in running or excess <= 0:
            return Plan()
        busy = ctx.busy if ctx is not None else frozenset()
        order = sorted(others, key=lambda m: (m in busy, self.book.last_used.get(m, -1.0), m))
        evict = frozenset(order[:excess])
        return Plan(evict, {m: self.reason for m in evict})


class Request:
    def __init__(self, sim, rid: int, model: str, service: float):
        self.sim, self.rid, self.model, self.service = sim, rid, model, service
        self.at = 0.0
        self.granted_at: float | None = None

    def offer_grant(self) -> bool:
        self.granted_at = self.sim.now
        self.sim.schedule(self.sim.now + self.service, "done", self)
        return True

    def offer_error(self, error) -> bool:
        raise AssertionError(f"request {self.rid} for {self.model} failed: {error.message}")

    def set_position(self, position: int) -> None:
        pass


def make_trace(n: int, seed: int = 7) -> list[tuple[str, float]]:
    """(model, service seconds): bursts of one model, popular models more often."""
    rng = random.Random(seed)
    models, weights = list(POPULARITY), list(POPULARITY.values())
    trace: list[tuple[str, float]] = []
    while len(trace) < n:
        model = rng.choices(models, weights)[0]
        trace += [(model, rng.uniform(0.5, 3.0)) for _ in range(rng.randint(1, 4))]
    return trace[:n]


class Sim:
    def __init__(self, policy: str, trace, clients: int = 4):
        self.now = 0.0
        self.events: list = []
        self.seq = 0
        self.loads = 0
        self.violations = 0
        self.ready: set[str] = set()
        models = sorted(SIZES)
        self.book = MemoryBook()
        book = None
        if policy == "a":
            planner = GroupPlanner({"all": GroupConfig("all", members=tuple(models))})
        elif policy == "b":
            planner, book = CountLimit(2, self.book), self.book
        else:
            free = GroupPlanner({"(default)": GroupConfig("(default)", swap=False,
                                                          exclusive=False,
                                                          members=tuple(models))})
            policy_ = MemoryPolicy(budgets={"gpu0": BUDGET}, commands={m: m for m in models})
            planner, book = MemoryPlanner(free, policy_, self.book), self.book
        self.core = RouterCore(models, planner, book=book)
        self.measure = policy == "c"
        self.swaps: dict[int, StartSwap] = {}
        self.requests = [Request(self, i, m, s) for i, (m, s) in enumerate(trace)]
        self.next_request = 0
        for _ in range(clients):
            self.send()

    def send(self) -> None:
        """A client sends the next request of the trace now."""
        if self.next_request < len(self.requests):
            req = self.requests[self.next_request]
            self.next_request += 1
            req.at = self.now
            self.schedule(self.now, "arrive", req)

    def schedule(self, at: float, kind: str, item) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, item))

    def apply(self, effects) -> None:
        for eff in effects:
            if isinstance(eff, StartSwap):
                self.loads += 1
                self.swaps[eff.swap_id] = eff
                stop = STOP_SECONDS if eff.evict else 0.0
                for m in eff.evict:
                    self.ready.discard(m)
                self.schedule(self.now + stop + load_seconds(eff.model), "swap", eff)
            elif isinstance(eff, StopModels):
                self.schedule(self.now + STOP_SECONDS, "stop", eff)
            elif not isinstance(eff, (ArmTimer, Log, NeedLearned)):
                raise AssertionError(f"unexpected effect {eff!r}")

    def run(self) -> dict:
        while self.events:
            self.now, _seq, kind, item = heapq.heappop(self.events)
            if kind == "arrive":
                self.apply(self.core.request(item, self.now))
            elif kind == "done":
                self.apply(self.core.request_done(item.model, self.now))
                self.send()
            elif kind == "swap":
                self.ready.add(item.model)
                self.apply(self.core.swap_done(item.swap_id, None, self.now))
                if self.measure:
                    self.apply(self.core.measured(item.model, {"gpu0": SIZES[item.model] * GiB},
                                                  False, self.now))
            elif kind == "stop":
                for m in item.models:
                    self.ready.discard(m)
                self.apply(self.core.stops_done(item.token, self.now))
            if sum(SIZES[m] * GiB for m in self.ready) > BUDGET:
                self.violations += 1
        waits = [r.granted_at - r.at for r in self.requests]
        return {"loads": self.loads, "total": self.now, "mean_wait": statistics.mean(waits),
                "violations": self.violations}


def policies(n: int) -> dict:
    trace = make_trace(n)
    results = {p: Sim(p, trace).run() for p in "abc"}
    names = {"a": "(a) one swap group", "b": "(b) count limit 2 (LRU)",
             "c": "(c) memory-aware"}
    print(f"policies: {n} requests over {len(SIZES)} models "
          f"({', '.join(f'{m}' for m in SIZES)}) on a 24 GiB budget, simulated clock")
    print(f"{'policy':<26} {'loads':>6} {'total s':>9} {'mean wait s':>12} {'violations':>11}")
    for p, r in results.items():
        print(f"{names[p]:<26} {r['loads']:>6} {r['total']:>9.1f} {r['mean_wait']:>12.2f} "
              f"{r['violations']:>11}")
    best = min(results["a"]["loads"], results["b"]["loads"])
    fewer = 1 - results["c"]["loads"] / best
    print(f"memory-aware: {fewer:.0%} fewer loads than the better of (a) and (b) "
          f"(target >= 30%), {results['c']['violations']} budget violations (target 0)")
    return results


# ---- part 2: sleep/wake through the real proxy --------------------------------------------

def _chat(port: int, model: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "demo": {"chunks": 1}})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{model}: HTTP {resp.status}")
    return time.perf_counter() - started


def _proxy(tmp: str, sleep: bool, load: float, wake: float):
    lines = ["healthCheckTimeout: 60", "models:"]
    for name in ("A", "B"):
        argv = demo_backend_argv(name, 0, "--quiet", "--load-delay", str(load),
                                 "--wake-delay", str(wake))
        argv[argv.index("--port") + 1] = "${PORT}"
        lines.append(f"  {name}:")
        lines.append(f"    cmd: {' '.join(argv)}")
        lines.append(f"    env: ['PYTHONPATH={ROOT}']")
        if sleep:
            lines.append('    sleep: "POST /sleep?level=1"')
            lines.append('    wake: "POST /wake_up"')
    path = os.path.join(tmp, f"sleep-{sleep}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llamaswap", "-config", path, "-listen",
                             f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.05)  # polling another process's startup
    return proc, port


def sleep_wake(rounds: int, load: float = 5.0, wake: float = 0.3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _proxy(tmp, True, load, wake)
        try:
            _chat(port, "A")
            _chat(port, "B")  # both loaded once; A sleeps
            times = [_chat(port, "AB"[i % 2]) for i in range(rounds)]
        finally:
            proc.terminate()
            proc.wait(30)
        proc, port = _proxy(tmp, False, load, wake)
        try:
            _chat(port, "A")
            plain = [_chat(port, "B"), _chat(port, "A")]
        finally:
            proc.terminate()
            proc.wait(30)
    median = statistics.median(times)
    print(f"sleep/wake: A/B alternation, load {load:g}s, wake {wake:g}s, {rounds} swapped "
          f"requests: median {median * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; "
          f"over the wake delay: median {(median - wake) * 1000:+.0f} ms, max "
          f"{(max(times) - wake) * 1000:+.0f} ms (target within 50 ms); plain swaps (stop and "
          f"load): {statistics.mean(plain):.2f} s each ({statistics.mean(plain) / median:.0f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--skip-sleep", action="store_true")
    args = ap.parse_args()
    results = policies(args.requests)
    if not args.skip_sleep:
        sleep_wake(args.rounds)
    ok = (results["c"]["violations"] == 0 and results["c"]["loads"]
          <= 0.7 * min(results["a"]["loads"], results["b"]["loads"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
