"""The router simulation with memory: random worlds where models share one or two budgets.

Each world gives every model a true need per device (what the fake measurements report)
and declares it for some of them; the others are learned from the first measurement after
their first, lone, load. Some models can sleep (a sleep fails now and then, and a sleeping
model then stops). On top of every invariant of the plain simulation, after every step the
models that really hold memory (ready, loading is atomic here, or asleep) fit every budget:
the sum of their true needs plus the headroom never exceeds it.
"""

from __future__ import annotations

import os
import random

from test_router_simulation import World, random_planner, run_seeds

from llamaswap.router.core import READY, SLEEPING, STOPPED, NeedLearned
from llamaswap.router.memory import MemoryBook, MemoryPlanner, MemoryPolicy

INTERLEAVINGS = int(os.environ.get("ROUTER_MEMORY_SIM_INTERLEAVINGS", "1000"))
GiB = 1 << 30


class MemoryWorld(World):
    def __init__(self, rng: random.Random):
        super().__init__(rng)
        devices = ["gpu0"] if rng.random() < 0.7 else ["gpu0", "ram"]
        self.budgets = {d: rng.choice([8, 12, 16, 24]) * GiB for d in devices}
        self.headroom = rng.choice([0, 0, GiB // 2, GiB])
        usable = {d: b - self.headroom for d, b in self.budgets.items()}
        self.true_need = {m: {d: rng.randint(1, max(1, usable[d] // GiB)) * GiB
                              for d in devices} for m in self.models}
        # asleep: the GPU memory released (the planner's guess until it is measured), the
        # RAM kept
        self.true_asleep = {m: {d: 0 if d.startswith("gpu") else self.true_need[m][d]
                                for d in devices} for m in self.models}
        self.sleepable = frozenset(m for m in self.models if rng.random() < 0.4)
        declared = {m: dict(self.true_need[m]) for m in self.models if rng.random() < 0.4}
        # persistent models are never evicted: a model of unknown need then starts beside
        # them on a guess, so they come only in worlds where every need is declared
        everything = rng.random() < 0.15
        if everything:
            declared = {m: dict(self.true_need[m]) for m in self.models}
        self.persistent = frozenset(m for m in self.models if everything and rng.random() < 0.4)
        self.book = MemoryBook()
        self.policy = MemoryPolicy(budgets=self.budgets, headroom=self.headroom,
                                   declared=declared, commands={m: m for m in self.models},
                                   sleepable=self.sleepable, persistent=self.persistent)
        self.asleep: set[str] = set()  # processes really asleep
        self.core.planner = MemoryPlanner(self.core.planner, self.policy, self.book)
        self.core.book = self.book
        self.core.sleepable = self.sleepable
        self.max_resident = 0

    # ---- memory invariant ----------------------------------------------------------------

    def check(self) -> None:
        super().check()
        for device, budget in self.budgets.items():
            used = self.headroom
            for m in self.models:
                if self.ready[m]:
                    used += self.true_need[m][device]
                elif m in self.asleep:
                    used += self.true_asleep[m][device]
            if used > budget:
                holders = [m for m in self.models if self.ready[m] or m in self.asleep]
                raise AssertionError(f"{device} over budget: {used} > {budget} with {holders} "
                                     f"(core {self.core.state})")
        self.max_resident = max(self.max_resident, sum(self.ready.values()))

    # ---- events ------------------------------------------------------------------------------

    def apply(self, effects: list) -> None:
        for eff in effects:
            if isinstance(eff, NeedLearned):
                true = self.true_asleep if eff.asleep else self.true_need
                assert dict(eff.need) == true[eff.model], eff  # only what was measured
        super().apply([e for e in effects if not isinstance(e, NeedLearned)])

    def finish_swap(self, swap_id: int, ok: bool) -> None:
        sw = self.swaps.pop(swap_id)
        self.finished_swaps.add(swap_id)
        asleep = self._put_down(sw.evict, sw.sleep)
        self.asleep.discard(sw.model)  # a woken model is awake (or stopped when it failed)
        self.ready[sw.model] = ok
        self.may_back_off = set() if ok else {sw.model}
        self.apply(self.core.swap_done(swap_id, None if ok else "exit code 1", self.now,
                                       asleep))
        self.may_back_off = set()

    def finish_stop(self, token: int) -> None:
        st = self.stops.pop(token)
        asleep = self._put_down(st.models, st.sleep)
        self.may_back_off = set(st.models) if st.reason == "health" else set()
        self.apply(self.core.stops_done(token, self.now, asleep))
        self.may_back_off = set()

    def _put_down(self, models, sleep) -> frozenset[str]:
        asleep = set()
        for m in models:
            if m in sleep and (self.ready[m] or m in self.asleep) and self.rng.random() < 0.9:
                asleep.add(m)
                self.asleep.add(m)
            else:
                self.asleep.discard(m)
            self.ready[m] = False
        return frozenset(asleep)

    def crash(self, model: str) -> None:
        self.asleep.discard(model)
        super().crash(model)

    def measurable(self) -> list[str]:
        return [m for m in self.models
                if (self.core.state.get(m) == READY and self.ready[m])
                or (self.core.state.get(m) == SLEEPING and m in self.asleep)]

    def measure(self, model: str) -> None:
        asleep = self.core.state.get(model) == SLEEPING
        usage = self.true_asleep[model] if asleep else self.true_need[model]
        self.apply(self.core.measured(model, dict(usage), asleep, self.now))

    def extra_choices(self) -> list[tuple[str, int]]:
        out = []
        if self.measurable():
            out.append(("measure", 12))
        if any(self.core.state.get(m) == SLEEPING and m in self.asleep for m in self.models):
            out.append(("crash_asleep", 1))
        return out

    def do_extra(self, kind: str) -> None:
        if kind == "measure":
            self.measure(self.rng.choice(self.measurable()))
        elif kind == "crash_asleep":
            model = self.rng.choice([m for m in self.models if self.core.state.get(m) == SLEEPING
                                     and m in self.asleep])
            self.crash(model)

    def extra_step(self) -> bool:
        """Quiescence: a model waiting for its first measurement gets it."""
        pending = [m for m in sorted(self.book.pending) if m in self.measurable()]
        if pending:
            self.measure(pending[0])
            return True
        return False

    def extra_waits(self, req, evict) -> bool:
        """The fence is the context-free plan; the decision is the full one, which may also
        wait for a model not yet measured, a stop order, a cancelled load or a busy model."""
        core = self.core
        running = core.running()
        if core.state.get(req.model) != READY:
            running = running - {req.model}
        plan = core._plan(req.model, running)
        return plan.wait or any(core.in_flight.get(m) or m in core.retiring
                                or m in core._memory_busy() or m in core.active
                                for m in plan.evict)

    def new_planner(self):
        return MemoryPlanner(random_planner(self.rng, self.models), self.policy, self.book)

def run_interleaving(seed: int) -> int:
    rng = random.Random(seed)
    world = MemoryWorld(rng)
    try:
        for _ in range(rng.randint(10, 80)):
            world.random_step()
        world.quiesce()
        for m in world.models:  # every stopped model is really down
            if world.core.state.get(m) == STOPPED:
                assert not world.ready[m] and m not in world.asleep, m
    except AssertionError as exc:
        raise AssertionError(f"seed {seed} after {world.steps} steps: {exc}") from exc
    return world.steps


def test_memory_worlds_never_exceed_a_budget():
    assert run_seeds(run_interleaving, INTERLEAVINGS, "memory simulation") >= 10_000
