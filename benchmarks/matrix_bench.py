"""Matrix solver benchmark: the symbolic solver against the reference revision's way (expand
every set into its combinations, scan them all), in the same run, CPU time per decision.

Run: ``python benchmarks/matrix_bench.py`` (a few seconds). Three matrices:
- upstream's example (4 sets, 8 combinations): every (target, running) with up to 2 running;
- 6 slots of 4 alternatives (4096 combinations, over the old 1000 cap): targets with one
  model of each of 3 slots running;
- 12 slots of 4 alternatives (16.7 M combinations): symbolic only, brute force cannot load it.
Reported: microseconds per uncached solve for each, the ratio symbolic / brute force, and
the planner's memoised answer (what the router pays when it asks again).
"""

from __future__ import annotations

import itertools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from matrix_oracle import brute_solve, expanded  # noqa: E402

from llamaswap.config.matrix import compile_sets  # noqa: E402
from llamaswap.config.model import MatrixConfig  # noqa: E402
from llamaswap.router.planners import MatrixPlanner  # noqa: E402
from llamaswap.router.solver import MatrixSolver  # noqa: E402


def per_call(fn, queries, rounds: int) -> float:
    """CPU microseconds per call of fn(target, running) over the queries."""
    start = time.process_time()
    for _ in range(rounds):
        for target, running in queries:
            fn(target, running)
    return (time.process_time() - start) / (rounds * len(queries)) * 1e6


def slots(n: int, width: int = 4) -> str:
    return " & ".join("(" + " | ".join(f"m{i}-{j}" for j in range(width)) + ")" for i in range(n))


def compare(title: str, sets, costs, queries, rounds: int, brute: bool = True) -> None:
    solver = MatrixSolver(sets, costs)
    planner = MatrixPlanner(MatrixConfig(compiled_sets=tuple(sets), model_evict_costs=costs))
    frozen = [(t, frozenset(r)) for t, r in queries]
    for t, r in frozen:
        planner.eviction_for(t, r)
    symbolic = per_call(solver.solve, queries, rounds)
    memo = per_call(planner.eviction_for, frozen, rounds * 10)
    line = f"{title}: symbolic {symbolic:.1f} us/solve, memoised {memo:.2f} us"
    if brute:
        combos = expanded(sets)
        old = per_call(lambda t, r: brute_solve(combos, costs, t, r), queries, rounds)
        line += f", brute force {old:.1f} us/solve ({len(combos)} combinations): ratio {symbolic / old:.2f}"
    print(line)


def main() -> None:
    var = {"g": "gemma", "q": "qwen", "m": "mistral", "v": "voxtral", "e": "reranker", "L": "llama-70B",
           "sd": "stable-diffusion"}
    example = compile_sets([("standard", "(g | q | m) & v"), ("with_rerank", "(g | q) & v & e"),
                            ("creative", "(g | q) & sd"), ("full", "L")], lambda n: var.get(n, n))
    models = sorted(var.values())
    queries = [(t, set(r)) for t in models for k in range(3)
               for r in itertools.combinations([m for m in models if m != t], k)]
    compare("upstream's example", example, {"voxtral": 50, "llama-70B": 30}, queries, 20)

    six = compile_sets([("six", slots(6))], lambda n: n)
    queries = [(f"m{i}-{j}", {f"m{(i + 1) % 6}-0", f"m{(i + 2) % 6}-1", f"m{(i + 3) % 6}-2"})
               for i in range(6) for j in range(4)]
    compare("6 slots x 4", six, {}, queries, 3)

    twelve = compile_sets([("twelve", slots(12))], lambda n: n)
    queries = [(f"m{i}-{j}", {f"m{(i + k) % 12}-{k % 4}" for k in range(1, 6)})
               for i in range(12) for j in range(4)]
    compare("12 slots x 4 (16.7 M combinations)", twelve, {}, queries, 20, brute=False)


if __name__ == "__main__":
    main()
