"""The swap-matrix solver: which running models must stop so that a target can run.

Pure: it reads only the compiled sets (config.model.MatrixSet) and the evict costs it was
built with. Sets mean "these models may run together" (subset semantics).

A query only cares about the target and the running models (the relevant models), so each
expression is evaluated symbolically, projected onto a bitmask over those models:
a leaf sets its model's bit (or nothing, for any other model), ``or`` collects its children's
states, ``and`` unions one state of each child. Each node is evaluated once per query (a
``+ref`` is a shared node). A state whose mask is a subset of another one is dropped as it
is found: every relevant model is the target or costs at least 1 to evict, so the superset
is never worse. So the work depends on the distinct projected states, not on the number of
combinations an expression describes (a 12-way AND of 4-way ORs is 16.7 M combinations and
a handful of states).

Choice (upstream's): among the states that contain the target, the lowest total evict cost
of the running models they leave out; the first one found wins a tie (sets in their solver
order, states in traversal order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from llamaswap.config.model import MatrixNode, MatrixSet

# (mask over the query's relevant models, witness): the witness is a model id for a leaf,
# a (left, right) pair for an `and`, None for the empty start of an `and`; it rebuilds the
# chosen state's full model list for the log without expanding anything else.
_State = tuple


@dataclass(frozen=True)
class Solution:
    evict: tuple[str, ...]  # running models to stop, in sorted order
    target_set: tuple[str, ...]  # the chosen combination, sorted (the running set when nothing changes)
    set_name: str = ""  # "" when no set was chosen
    dsl: str = ""
    total_cost: int = 0


class MatrixSolver:
    def __init__(self, sets: Sequence[MatrixSet], evict_costs: Mapping[str, int] | None = None):
        self.sets = tuple(sets)
        self._costs = dict(evict_costs or {})

    def evict_cost(self, model: str) -> int:
        return self._costs.get(model, 1)

    def solve(self, target: str, running: Iterable[str]) -> Solution:
        running = sorted(set(running))
        if target in running:
            # Subset semantics: whatever runs now already admits the target.
            name, dsl = self._containing(running)
            return Solution((), tuple(running), name, dsl, 0)
        query = _Query([target, *running])
        bits = query.bits
        target_bit = bits[target]
        best = None
        for candidate in self.sets:
            if target not in candidate.support:
                continue
            for mask, witness in query.states(candidate.root):
                if not mask & target_bit:
                    continue
                cost = sum(self.evict_cost(m) for m in running if not mask & bits[m])
                if best is None or cost < best[0]:
                    best = (cost, candidate, mask, witness)
        if best is None:
            # A model in no set runs alone.
            return Solution(tuple(running), (target,))
        cost, chosen, mask, witness = best
        evict = tuple(m for m in running if not mask & bits[m])
        return Solution(evict, tuple(sorted(_models_of(witness))), chosen.name, chosen.dsl, cost)

    def can_contain_all(self, models: Iterable[str]) -> bool:
        """True when one combination of some set holds every model (selector checks)."""
        models = sorted(set(models))
        return not models or self._containing(models)[0] != ""

    def _containing(self, models: Sequence[str]) -> tuple[str, str]:
        """The first set with a combination holding all of `models` (name, dsl), or ("", "")."""
        if not models:
            return "", ""
        query = _Query(models)
        full = (1 << len(query.bits)) - 1
        for candidate in self.sets:
            if not candidate.support.issuperset(models):
                continue
            if any(mask == full for mask, _ in query.states(candidate.root)):
                return candidate.name, candidate.dsl
        return "", ""


class _Query:
    """One query's projection: a bit per relevant model and a memo per node."""

    __slots__ = ("bits", "_memo")

    def __init__(self, relevant: Sequence[str]):
        self.bits: dict[str, int] = {}
        for model in relevant:
            self.bits.setdefault(model, 1 << len(self.bits))
        self._memo: dict[int, list[_State]] = {}

    def states(self, node: MatrixNode) -> list[_State]:
        found = self._memo.get(id(node))
        if found is not None:
            return found
        kind, payload = node
        if kind == "leaf":
            states = [(self.bits.get(payload, 0), payload)]
        elif kind == "or":
            states = []
            for child in payload:
                for state in self.states(child):
                    _add(states, state)
        else:  # "and"
            states = [(0, None)]
            for child in payload:
                right = self.states(child)
                combined: list[_State] = []
                for left_mask, left_witness in states:
                    for right_mask, right_witness in right:
                        _add(combined, (left_mask | right_mask, (left_witness, right_witness)))
                states = combined
        self._memo[id(node)] = states
        return states


def _add(frontier: list[_State], state: _State) -> None:
    """Keep only states that no other state contains (first witness of a mask wins)."""
    mask = state[0]
    covered = False
    for other, _ in frontier:
        if mask | other == other:
            return
        if other | mask == mask:
            covered = True
    if covered:
        frontier[:] = [s for s in frontier if s[0] | mask != mask]
    frontier.append(state)


def _models_of(witness) -> set[str]:
    models: set[str] = set()
    stack = [witness]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            models.add(current)
        elif current is not None:
            stack.extend(current)
    return models
