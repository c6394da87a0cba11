"""Planners: the one decision that differs between routing strategies.

A planner answers "which running models must stop before `target` can serve?". It is a
plain object: no threads, no clocks, no process handles. The router core passes it the
set of models it considers running (starting, ready or stopping) or committed to load,
which may include the target itself. A custom strategy is a small class with an
``eviction_for`` method (and optionally ``describe_swap`` for the log, and ``reason``, the
word that says why its evictions stop a model; "swap" when it has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import AbstractSet, Mapping, Protocol

from llamaswap.config.gocompat import go_quote
from llamaswap.config.model import DEFAULT_GROUP_ID, Config, GroupConfig, MatrixConfig
from llamaswap.router.solver import MatrixSolver, Solution

_NO_GROUP = GroupConfig(id="", swap=False, exclusive=False, persistent=False)


class Planner(Protocol):
    def eviction_for(self, target: str, running: AbstractSet[str]) -> AbstractSet[str] | tuple[str, ...]:
        """Models in `running` that must stop before `target` can serve. Pure."""
        ...


DEFAULT_REASON = "swap"


@dataclass(frozen=True)
class PlanContext:
    """What the core knows beyond `running` that a planner with a ``plan`` method may use:
    models asleep (not in `running`), models that must not be stopped under a request or a
    load (busy: a stop would wait for them), models already being stopped, and models the
    core counts stopped that may still hold memory (a stop order not finished, a cancelled
    load whose worker may still start them)."""

    sleeping: frozenset[str] = frozenset()
    busy: frozenset[str] = frozenset()
    stopping: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()  # not running, yet may still hold memory (see core)


@dataclass(frozen=True)
class Plan:
    """A planner's full answer for one target.

    `evict`: models to stop (or put to sleep) first, with their `reasons`. `stop`: evicted
    models that can sleep but must stop (sleeping would not free enough). `refuse`: the
    target cannot be started (503, this message). `wait`: not now; ask again later."""

    evict: frozenset[str] = frozenset()
    reasons: Mapping[str, str] = field(default_factory=dict, hash=False)
    stop: frozenset[str] = frozenset()
    refuse: str | None = None
    wait: bool = False


def plan_for(planner, target: str, running: AbstractSet[str], ctx: PlanContext) -> Plan:
    """The planner's ``plan`` when it has one, else its evictions with their reasons."""
    plan = getattr(planner, "plan", None)
    if plan is not None:
        return plan(target, running, ctx)
    evict = frozenset(planner.eviction_for(target, running)) - {target}
    return Plan(evict, eviction_reasons(planner, target, evict))


def eviction_reasons(planner, target: str, evict: AbstractSet[str]) -> dict[str, str]:
    """Why each model of `evict` stops for `target`: the planner's own answer when it has
    ``reasons_for`` (a composed planner), else its ``reason`` word for all of them."""
    reasons_for = getattr(planner, "reasons_for", None)
    if reasons_for is not None:
        return dict(reasons_for(target, evict))
    reason = getattr(planner, "reason", DEFAULT_REASON)
    return {m: reason for m in sorted(evict)}


class GroupPlanner:
    """Upstream's group rules.

    For each running model m other than the target (tg = the target's group):
    same group and tg.swap -> evict; other group, tg.exclusive and m's group not
    persistent -> evict; otherwise keep. A target in a non-exclusive group therefore
    never evicts other groups (upstream keeps this legacy behaviour on purpose).
    """

    reason = "group"

    def __init__(self, groups: Mapping[str, GroupConfig]):
        self.groups = dict(groups)
        self._group_of: dict[str, str] = {}
        for gid, group in self.groups.items():
            for member in group.members:
                self._group_of.setdefault(member, gid)

    def _group(self, model: str) -> tuple[str | None, GroupConfig]:
        gid = self._group_of.get(model)
        return gid, (self.groups[gid] if gid is not None else _NO_GROUP)

    def eviction_for(self, target: str, running: AbstractSet[str]) -> frozenset[str]:
        tg_id, tg = self._group(target)
        evict = set()
        for model in running:
            if model == target:
                continue
            og_id, og = self._group(model)
            if og_id == tg_id:
                if tg.swap:
                    evict.add(model)
            elif tg.exclusive and not og.persistent:
                evict.add(model)
        return frozenset(evict)

    def describe_swap(self, target: str, running: AbstractSet[str]) -> tuple[str, str] | None:
        return None


class MatrixPlanner:
    """Evictions chosen by the matrix solver (lowest total evict cost).

    The router asks the same questions again and again (every decision, every published
    set of standing grants), and an answer depends only on (target, running): answers are
    memoised, a bounded number of them."""

    CACHE_SIZE = 4096

    reason = "matrix"

    def __init__(self, matrix: MatrixConfig):
        self.matrix = matrix
        self.solver = MatrixSolver(matrix.compiled_sets, matrix.model_evict_costs)
        self._answers: dict[tuple[str, frozenset[str]], Solution] = {}

    def solve(self, target: str, running: AbstractSet[str]) -> Solution:
        key = (target, frozenset(running))
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= self.CACHE_SIZE:
                self._answers.clear()
            answer = self._answers[key] = self.solver.solve(target, running)
        return answer

    def eviction_for(self, target: str, running: AbstractSet[str]) -> tuple[str, ...]:
        return self.solve(target, running).evict

    def describe_swap(self, target: str, running: AbstractSet[str]) -> tuple[str, str] | None:
        """(level, message) for the log, in upstream's words."""
        result = self.solve(target, running)
        if result.evict:
            return ("info", f"matrix: model={target} set={result.set_name} dsl={go_quote(result.dsl)} "
                            f"evict=[{' '.join(result.evict)}] target=[{' '.join(result.target_set)}] "
                            f"cost={result.total_cost}")
        if not running:
            return ("info", f"matrix: model={target} starting (no models running)")
        return ("debug", f"matrix: model={target} already running in set={result.set_name} "
                         f"dsl={go_quote(result.dsl)}")


def planner_for(config: Config, memory=None) -> Planner:
    """The matrix planner when the config has a matrix, else the group planner; with a
    ``memory`` section (and `memory`, the router's ``(budgets, book)``) the memory planner
    composed after it. Then models of the implicit default group no longer swap one at a
    time: memory decides for them."""
    groups = config.groups
    if config.memory is not None and memory is not None and DEFAULT_GROUP_ID in groups:
        groups = dict(groups)
        groups[DEFAULT_GROUP_ID] = replace(groups[DEFAULT_GROUP_ID], swap=False, exclusive=False)
    inner = MatrixPlanner(config.matrix) if config.matrix is not None else GroupPlanner(groups)
    if config.memory is None or memory is None:
        return inner
    from llamaswap.router.memory import MemoryPlanner, MemoryPolicy
    budgets, book = memory
    return MemoryPlanner(inner, MemoryPolicy.from_config(config, budgets), book)
