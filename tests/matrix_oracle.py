"""Brute force over a compiled matrix, the way the reference revision did it: expand every
set into all its combinations (left-major products, alternatives in order) and pick the
first cheapest one. Only for tests: it is exponential, which is why the solver is not."""

from __future__ import annotations

import random
from typing import Iterable, Mapping, Sequence

from llamaswap.config.model import MatrixNode, MatrixSet


def expand(node: MatrixNode) -> list[tuple[str, ...]]:
    """Every combination of `node`, each sorted and without duplicates, in expansion order."""
    def combos(n) -> list[list[str]]:
        kind, payload = n
        if kind == "leaf":
            return [[payload]]
        if kind == "or":
            return [c for child in payload for c in combos(child)]
        result: list[list[str]] = [[]]
        for child in payload:
            right = combos(child)
            result = [left + r for left in result for r in right]
        return result
    return [tuple(sorted(set(c))) for c in combos(node)]


def count(node: MatrixNode) -> int:
    """How many combinations `node` expands to (without expanding it)."""
    kind, payload = node
    if kind == "leaf":
        return 1
    counts = [count(child) for child in payload]
    if kind == "or":
        return sum(counts)
    product = 1
    for c in counts:
        product *= c
    return product


def expanded(sets: Sequence[MatrixSet]) -> list[tuple[str, tuple[str, ...]]]:
    return [(s.name, combo) for s in sets for combo in expand(s.root)]


def brute_solve(combos: Sequence[tuple[str, tuple[str, ...]]], costs: Mapping[str, int], target: str,
                running: Iterable[str]) -> tuple[tuple[str, ...], str, int] | None:
    """(evict, set name, cost) of the reference revision's choice over `expanded(sets)`;
    None: the target is in no set."""
    running = sorted(set(running))
    best = None
    for name, combo in combos:
        if target not in combo:
            continue
        cost = sum(costs.get(m, 1) for m in running if m not in combo)
        if best is None or cost < best[2]:
            best = (tuple(m for m in running if m not in combo), name, cost)
    return best


def random_dsl(rng: random.Random, models: list[str], earlier: list[str], depth: int = 0) -> str:
    """A random set expression over `models`, sometimes referencing an `earlier` set."""
    roll = rng.random()
    if depth >= 3 or roll < 0.35:
        if earlier and rng.random() < 0.15:
            return "+" + rng.choice(earlier)
        return rng.choice(models)
    op = " & " if roll < 0.7 else " | "
    parts = [random_dsl(rng, models, earlier, depth + 1) for _ in range(rng.randint(2, 3))]
    return "(" + op.join(parts) + ")"
