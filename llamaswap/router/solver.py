"""The swap-matrix solver: which running models must stop so that a target can run.

Pure: it reads only the expanded sets and the evict costs it was built with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from llamaswap.config.model import ExpandedSet


@dataclass(frozen=True)
class Solution:
    evict: tuple[str, ...]  # running models to stop, in sorted order
    target_set: tuple[str, ...]  # the chosen set (or the running set when nothing changes)
    set_name: str = ""  # "" when no set was chosen
    dsl: str = ""
    total_cost: int = 0


class MatrixSolver:
    def __init__(self, expanded_sets: Sequence[ExpandedSet],
                 evict_costs: Mapping[str, int] | None = None):
        self.expanded_sets = tuple(expanded_sets)
        self._costs = dict(evict_costs or {})
        self._sets_of: dict[str, list[int]] = {}
        for index, es in enumerate(self.expanded_sets):
            for model in es.models:
                self._sets_of.setdefault(model, []).append(index)

    def evict_cost(self, model: str) -> int:
        return self._costs.get(model, 1)

    def solve(self, target: str, running: Iterable[str]) -> Solution:
        running = sorted(set(running))
        if target in running:
            # Subset semantics: whatever runs now already admits the target.
            name, dsl = self._matching_set(target, running)
            return Solution((), tuple(running), name, dsl, 0)

        candidates = self._sets_of.get(target, [])
        if not candidates:
            # A model in no set runs alone.
            return Solution(tuple(running), (target,))

        best_index, best_cost = -1, -1
        for index in candidates:  # ascending, so the first minimum is the earliest set
            members = self.expanded_sets[index].models
            cost = sum(self.evict_cost(m) for m in running if m not in members)
            if best_cost < 0 or cost < best_cost:
                best_index, best_cost = index, cost
        chosen = self.expanded_sets[best_index]
        evict = tuple(m for m in running if m not in chosen.models)
        return Solution(evict, chosen.models, chosen.name, chosen.dsl, best_cost)

    def _matching_set(self, target: str, running: Sequence[str]) -> tuple[str, str]:
        for index in self._sets_of.get(target, []):
            es = self.expanded_sets[index]
            if all(m in es.models for m in running):
                return es.name, es.dsl
        return "", ""
