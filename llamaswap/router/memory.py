"""Memory-aware planning: models share the managed devices by what they really use. Pure.

A model's need on a device is its declared ``memory`` value, else the peak measured on its
earlier loads (``MemoryBook.learned``, keyed by model id and command), else unknown. While a
model sleeps its GPU need is what was measured asleep (0 until measured) and its RAM stays
counted. A resident model counts with the larger of its need and its latest reading.

``MemoryPlanner`` runs after the group or matrix planner (``inner``) and adds evictions until
the target fits on every managed device: needs of what stays + the target's need + headroom
<= budget. Candidates go least recently used first: idle models before busy ones (a busy
model is never stopped under a request: the core waits for it), and each candidate is first
put to sleep when it can sleep, then stopped if that is still not enough. Models of a
persistent group count but are never evicted. A target whose need is unknown starts alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Iterable, Mapping

from llamaswap.config.memory import never_fits_message
from llamaswap.router.planners import Plan, PlanContext, eviction_reasons
from llamaswap.sizes import format_size

AWAKE, ASLEEP, GONE = "awake", "asleep", "gone"
REASON = "memory"


@dataclass(frozen=True)
class MemoryPolicy:
    """What the config says: budgets (``auto`` already resolved), headroom, declared needs."""

    budgets: Mapping[str, int]
    headroom: int = 0
    declared: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    commands: Mapping[str, str] = field(default_factory=dict)  # model -> cmd (learned key)
    sleepable: frozenset[str] = frozenset()
    persistent: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config, budgets: Mapping[str, int]) -> "MemoryPolicy":
        models = config.models
        persistent = {m for g in config.groups.values() if g.persistent for m in g.members}
        return cls(budgets=dict(budgets), headroom=config.memory.headroom,
                   declared={m: dict(c.memory) for m, c in models.items() if c.memory},
                   commands={m: c.cmd for m, c in models.items()},
                   sleepable=frozenset(m for m, c in models.items() if c.sleep),
                   persistent=frozenset(persistent))

    def key(self, model: str) -> tuple[str, str]:
        return model, self.commands.get(model, "")

    def never_fits(self, model: str, needs: Mapping[str, int | None]) -> str | None:
        """The 503 message when `needs` plus the headroom exceed a budget, else None."""
        for device in sorted(needs):
            need, budget = needs[device], self.budgets.get(device)
            if need is not None and budget is not None and need + self.headroom > budget:
                return never_fits_message(model, device, need, budget, self.headroom)
        return None


class MemoryBook:
    """What the router has learned and seen; changed only on the router thread.

    ``learned``/``learned_asleep``: (model, command) -> device -> peak bytes (awake, asleep).
    ``usage``: model -> device -> latest reading of the resident model, and ``usage_asleep``
    the models whose reading was taken asleep (a reading counts only at its own level). ``last_used``: model -> time of its last grant or finish.
    ``pending``: ready models whose first measurement has not come in yet; their need may
    still be unknown, so they are not evicted before they are measured.
    """

    def __init__(self, learned: Mapping | None = None, learned_asleep: Mapping | None = None):
        self.learned: dict[tuple[str, str], dict[str, int]] = {
            k: dict(v) for k, v in (learned or {}).items()}
        self.learned_asleep: dict[tuple[str, str], dict[str, int]] = {
            k: dict(v) for k, v in (learned_asleep or {}).items()}
        self.usage: dict[str, dict[str, int]] = {}
        self.usage_asleep: set[str] = set()
        self.last_used: dict[str, float] = {}
        self.pending: set[str] = set()

    def learn(self, key: tuple[str, str], usage: Mapping[str, int], asleep: bool) -> dict | None:
        """Raise the peak for `key`; the new peaks when anything rose, else None."""
        table = self.learned_asleep if asleep else self.learned
        old = table.get(key, {})
        new = dict(old)
        for device, value in usage.items():
            if value is not None and value > new.get(device, -1):
                new[device] = int(value)
        if new == old:
            return None
        table[key] = new
        return new


class MemoryPlanner:
    reason = REASON

    def __init__(self, inner, policy: MemoryPolicy, book: MemoryBook):
        self.inner = inner
        self.policy = policy
        self.book = book

    # ---- needs ---------------------------------------------------------------------------

    def need(self, model: str, device: str, asleep: bool = False) -> int | None:
        """Bytes on `device`, or None when unknown."""
        key = self.policy.key(model)
        if asleep:
            value = self.book.learned_asleep.get(key, {}).get(device)
            if value is not None:
                return value
            return self.need(model, device) if device == "ram" else 0
        declared = self.policy.declared.get(model, {}).get(device)
        if declared is not None:
            return declared
        return self.book.learned.get(key, {}).get(device)

    def unknown_need(self, model: str) -> bool:
        return any(self.need(model, d) is None for d in self.policy.budgets)

    def source(self, model: str, device: str) -> str:
        if device in self.policy.declared.get(model, {}):
            return "declared"
        if device in self.book.learned.get(self.policy.key(model), {}):
            return "measured"
        return "unknown"

    def _use(self, model: str, device: str, level: str) -> int | None:
        """What a resident model at `level` counts on `device` (None: unknown)."""
        if level == GONE:
            return 0
        need = self.need(model, device, asleep=level == ASLEEP)
        seen = None
        if (level == ASLEEP) == (model in self.book.usage_asleep):
            seen = self.book.usage.get(model, {}).get(device)
        if need is None:
            return seen if level == ASLEEP else None
        return need if seen is None else max(need, seen)

    def _overflow(self, levels: Mapping[str, str], extra: Mapping[str, int | None] | None = None
                  ) -> list[tuple[str, int | None, int]]:
        """(device, counted bytes or None when unknown, budget) for every device over budget.
        `extra`: the target's needs. An unknown need takes the whole device: it is over
        budget as soon as anything else uses it."""
        out = []
        for device, budget in self.policy.budgets.items():
            extra_need = (extra or {}).get(device, 0)
            unknown = extra_need is None
            total = (extra_need or 0) + self.policy.headroom
            users = 1 if extra_need is None or extra_need else 0
            for model, level in levels.items():
                use = self._use(model, device, level)
                if use is None:
                    unknown = True
                    users += 1
                elif use:
                    total += use
                    users += 1
            if unknown and users > 1:
                out.append((device, None, budget))
            elif not unknown and total > budget:
                out.append((device, total, budget))
        return out

    # ---- planning --------------------------------------------------------------------------

    def eviction_for(self, target: str, running: AbstractSet[str]) -> frozenset[str]:
        """The planner protocol without the core's context (the fast path, the fairness
        fence): candidates in name order, so the answer does not move with each request."""
        return self.plan(target, running, PlanContext(), lru=False).evict

    def describe_swap(self, target: str, running: AbstractSet[str]):
        describe = getattr(self.inner, "describe_swap", None)
        return describe(target, running) if describe is not None else None

    def plan(self, target: str, running: AbstractSet[str], ctx: PlanContext,
             lru: bool = True) -> Plan:
        inner = frozenset(self.inner.eviction_for(target, running)) - {target}
        reasons = eviction_reasons(self.inner, target, inner)
        if target in running and target not in ctx.sleeping:
            return Plan(inner, reasons)  # already resident and awake: nothing more to free
        policy = self.policy
        needs = {d: self.need(target, d) for d in policy.budgets}
        refuse = policy.never_fits(target, {d: n for d, n in needs.items() if n is not None})
        if refuse is not None:
            return Plan(refuse=refuse)
        resident = (set(running) | set(ctx.sleeping) | set(ctx.held)) - {target}
        start = {m: ASLEEP if m in ctx.sleeping and m not in ctx.held else AWAKE
                 for m in resident}
        levels = dict(start)
        for m in inner:
            levels[m] = self._lower(m, levels[m])
        movable = [m for m in resident if m not in policy.persistent]
        movable.sort(key=lambda m: (m in ctx.busy, m not in ctx.stopping,
                                    self._last_used(m) if lru else 0.0, m))
        # an unknown need makes the target alone on that device (rule 3)
        self._fit(levels, movable, ctx.busy, needs, lru)
        overflow = self._overflow(levels, needs)
        if overflow:
            blockers = sorted(m for m in resident if m in policy.persistent and levels[m] != GONE)
            if any(m in ctx.busy for m in blockers):
                return Plan(wait=True)  # a persistent model is loading or not measured yet
        if overflow and not any(n is None for n in needs.values()):
            # (an unknown need beside idle persistent models starts anyway: they are never
            # evicted, so waiting would be forever; the growth rule watches what follows)
            device, used, budget = overflow[0]
            return Plan(refuse=(
                f"model '{target}' does not fit on {device} beside the models that are never "
                f"evicted for memory ({', '.join(blockers) or 'none'}): "
                f"{format_size(used) if used is not None else 'an unknown amount'} needed "
                f"with headroom, budget {format_size(budget)}"))
        evict = frozenset(m for m in resident if levels[m] != start[m])
        stop = frozenset(m for m in evict if levels[m] == GONE and m in policy.sleepable)
        # an inner eviction that memory pushed further (stopped, not asleep) is memory's
        all_reasons = {m: REASON if m in stop or m not in inner else reasons[m]
                       for m in sorted(evict)}
        return Plan(evict, all_reasons, stop=stop)

    def _lower(self, model: str, level: str) -> str:
        """One step down: awake -> asleep when the model can sleep, else gone."""
        if level == AWAKE and model in self.policy.sleepable:
            return ASLEEP
        return GONE

    def _fit(self, levels: dict[str, str], movable: list[str], busy: AbstractSet[str],
             extra: Mapping[str, int | None], lru: bool = True) -> None:
        """Lower candidates, least recently used first, until everything fits: idle ones
        (sleep, then stop), then busy ones the same way."""
        start = dict(levels)
        lowered: list[str] = []
        for group in ([m for m in movable if m not in busy], [m for m in movable if m in busy]):
            for _pass in (0, 1):
                for m in group:
                    if not self._overflow(levels, extra):
                        break
                    if levels[m] != GONE:
                        levels[m] = self._lower(m, levels[m])
                        lowered.append(m)
        # Greedy LRU can take more than needed (an old small model, then a big one): give
        # back what still fits, busy models first, then the most recently used.
        for m in sorted(set(lowered), key=lambda m: (m not in busy,
                                                     -self._last_used(m) if lru else 0.0, m)):
            while levels[m] != start[m]:
                before = levels[m]
                levels[m] = self._raise(m, before, start[m])
                if self._overflow(levels, extra):
                    levels[m] = before
                    break

    def _raise(self, model: str, level: str, ceiling: str) -> str:
        """One step up towards `ceiling` (the inverse of _lower)."""
        if level == GONE and model in self.policy.sleepable and ceiling == AWAKE:
            return ASLEEP
        return ceiling

    def _last_used(self, model: str) -> float:
        return self.book.last_used.get(model, float("-inf"))

    # ---- growth ------------------------------------------------------------------------------

    def relieve(self, resident: Mapping[str, str], idle: Iterable[str], grown: str
                ) -> tuple[list[tuple[str, int | None, int]], dict[str, str]]:
        """A reading showed more use: (devices over budget, {model: "asleep"|"gone"}) for
        idle others to put down, least recently used first, until back under budget."""
        levels = dict(resident)
        over = self._overflow(levels)
        if not over or any(used is None for _d, used, _b in over):
            return [], {}  # unknown needs are not growth
        candidates = sorted((m for m in idle if m != grown and m in levels
                             and m not in self.policy.persistent),
                            key=lambda m: (self.book.last_used.get(m, float("-inf")), m))
        self._fit(levels, candidates, frozenset(), {})
        return over, {m: levels[m] for m in levels if levels[m] != resident[m]}


def memory_report(core) -> dict | None:
    """Budgets, what the resident models count, and each model's need and its source, read
    on the router thread. None when the core does not plan with memory."""
    planner = core.planner
    if core.book is None or not isinstance(planner, MemoryPlanner):
        return None
    policy = planner.policy
    used = {d: 0 for d in policy.budgets}
    models = {}
    for model in sorted(core.models):
        state = core.state.get(model, "stopped")
        level = GONE if state == "stopped" else ASLEEP if state == "sleeping" else AWAKE
        counted = {}
        if level != GONE:
            for device in policy.budgets:
                use = planner._use(model, device, level)
                counted[device] = use
                used[device] += use or 0
        entry = {"need": {d: planner.need(model, d) for d in policy.budgets},
                 "source": {d: planner.source(model, d) for d in policy.budgets},
                 "used": counted}
        if model in policy.sleepable:
            entry["need_asleep"] = {d: planner.need(model, d, asleep=True) for d in policy.budgets}
        models[model] = entry
    devices = {d: {"budget": b, "headroom": policy.headroom, "used": used[d],
                   "free": max(0, b - policy.headroom - used[d])}
               for d, b in sorted(policy.budgets.items())}
    return {"devices": devices, "models": models}
