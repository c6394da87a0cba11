"""Randomised simulation of the router core against a fake world with a fake clock.

Each interleaving builds a random configuration (groups, a matrix, or a custom planner),
then applies random events: requests, completions, swap successes and failures, stops
finishing, give-ups, unloads, TTL expiries, backend crashes, config reloads and sometimes
a shutdown. Invariants are checked after every step; at the end the world runs to
quiescence and every request must have been answered exactly once.

Some worlds have a maxWait. Their maxwait timers fire when due (as the router loop fires
them before any command), and the bound is checked as the rule that implies it: the
oldest request that has waited maxWait is at the head of the queue, the models it waits
for are never published for claims and gain no request in flight (but the waiters of a
swap already under way), and it waits only while something it must wait for remains
(requests in flight on a model it evicts, a swap that collides with it, a stop of its
own model). So it waits at most maxWait + those requests + its own load.

Models have random restart policies; backends crash (with an error or cleanly) and fail
their health watch. A restart is scheduled only for the failed model in the step of its
failure (a crash, a failed start, the end of a stop ordered for a failed health watch:
never after an unload, a TTL or a reload), and a restart evicts nothing.
"""

from __future__ import annotations

import itertools
import os
import random
import time

from matrix_oracle import random_dsl

from llamaswap.config.matrix import compile_sets
from llamaswap.config.model import Config, GroupConfig, MatrixConfig, ModelConfig, SelectorConfig
from llamaswap.router.core import (READY, ArmTimer, BackOff, CancelRestart, Log, Restart,
                                   RouterCore, RouterError, ShutdownAll, StartSwap, StopModels)
from llamaswap.router.planners import GroupPlanner, MatrixPlanner
from llamaswap.router.selectors import SelectorError, Selectors

INTERLEAVINGS = int(os.environ.get("ROUTER_SIM_INTERLEAVINGS", "8000"))
STEPS = 60


class Violation(AssertionError):
    pass


class SimRequest:
    def __init__(self, world, rid: int, model: str):
        self.world, self.rid, self.model = world, rid, model
        self.status = "waiting"  # waiting | granted | failed | gone | done
        self.error: RouterError | None = None
        self.position = 0
        self.choice = None  # the selector's Choice when the client asked for a selector
        self.released = False

    def offer_grant(self) -> bool:
        if self.status == "gone":
            return False
        if self.status != "waiting":
            raise Violation(f"request {self.rid} answered twice (was {self.status})")
        self.world.check_grantable(self.model)
        self.status = "granted"
        return True

    def offer_error(self, error: RouterError) -> bool:
        if self.status == "gone":
            return False
        if self.status != "waiting":
            raise Violation(f"request {self.rid} answered twice (was {self.status})")
        assert isinstance(error, RouterError) and error.status in (404, 500, 503)
        assert f"'{self.model}'" in error.message
        self.status, self.error = "failed", error
        return True

    def set_position(self, position: int) -> None:
        assert position >= 0
        self.position = position


class EvictOthers:
    """A custom planner: every target runs alone (the simplest possible class)."""

    def eviction_for(self, target, running):
        return {m for m in running if m != target}


def random_restart(rng: random.Random, models: list[str]) -> dict[str, str]:
    return {m: rng.choice(["never", "never", "on-failure", "always"]) for m in models}


def random_planner(rng: random.Random, models: list[str]):
    kind = rng.choice(["groups", "matrix", "custom"])
    if kind == "custom":
        return EvictOthers()
    if kind == "groups":
        groups: dict[str, list[str]] = {}
        for m in models:
            groups.setdefault(f"g{rng.randrange(3)}", []).append(m)
        return GroupPlanner({gid: GroupConfig(gid, swap=rng.random() < 0.6,
                                              exclusive=rng.random() < 0.6,
                                              persistent=rng.random() < 0.3,
                                              members=tuple(ms))
                             for gid, ms in groups.items()})
    sets: list[tuple[str, str]] = []
    for i in range(rng.randint(1, 4)):
        sets.append((f"s{i}", random_dsl(rng, models, [name for name, _ in sets])))
    costs = {m: rng.randint(1, 5) for m in models if rng.random() < 0.4}
    return MatrixPlanner(MatrixConfig(compiled_sets=compile_sets(sets, lambda name: name),
                                      model_evict_costs=costs))


def random_priority(rng: random.Random, models: list[str]) -> dict[str, int]:
    """routing.scheduler.settings.fifo.priority: none, or a few models ranked."""
    if rng.random() < 0.3:
        return {}
    return {m: rng.choice([-1, 0, 1, 5]) for m in models if rng.random() < 0.6}


def random_selectors(rng: random.Random, models: list[str]) -> Config:
    """A few selectors over the models (pin, warm, spillover with a random reservation count)."""
    selectors = {}
    for i in range(rng.randint(0, 3)):
        targets = tuple(rng.sample(models, rng.randint(1, len(models))))
        strategy = rng.choice(["pin", "warm", "spillover", "spillover"])
        selectors[f"sel{i}"] = SelectorConfig(f"sel{i}", strategy, targets, spillover=rng.randint(1, 3))
    return Config(models={m: ModelConfig(id=m) for m in models}, selectors=selectors)


class World:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.models = [f"m{i}" for i in range(rng.randint(2, 5))]
        self.ttl = {m: rng.choice([0, 0, 1, 3, 10]) for m in self.models}
        self.max_wait = rng.choice([0, 0, 0.5, 1, 3])
        self.now = 0.0
        self.priority = random_priority(rng, self.models)
        self.restart = random_restart(rng, self.models)
        self.core = RouterCore(self.models, random_planner(rng, self.models), ttl=self.ttl,
                               priority=self.priority, max_wait=self.max_wait,
                               restart=self.restart)
        self.may_back_off: set[str] = set()  # models that failed in the current step
        self.restarting: str | None = None  # a Restart effect's model, until its StartSwap
        self.requests: list[SimRequest] = []
        self.ready = {m: False for m in self.models}  # the real processes
        self.swaps: dict[int, StartSwap] = {}  # running swap workers
        self.stops: dict[int, StopModels] = {}  # running stop workers
        self.finished_swaps: set[int] = set()
        self.timers: list[ArmTimer] = []
        self.shutdown_pending: ShutdownAll | None = None
        self.steps = 0
        # what the router last published as grantable: handlers may take these grants
        # (claims) until the next command, which first reports every claim to the core
        self.published: frozenset[str] = frozenset()
        self.selectors = Selectors(random_selectors(rng, self.models))
        self.queued_at: dict[int, int] = {}  # request -> when it joined the queue
        self.queue_seq = itertools.count()
        self.queued_time: dict[int, float] = {}  # rid -> when it joined the queue (maxWait)
        self.fence_snapshot = None  # (starved rid, fence, in-flight, swap waiters)

    # ---- invariants -------------------------------------------------------------------

    def outstanding(self, model: str) -> int:
        return sum(1 for r in self.requests if r.model == model and r.status == "granted")

    def check_grantable(self, model: str) -> None:
        if not self.ready[model]:
            raise Violation(f"granted {model} which is not running")
        for sw in self.swaps.values():
            if model in sw.evict and sw.swap_id in self.core._swap_ids:
                raise Violation(f"granted {model} while swap {sw.swap_id} evicts it")
        for st in self.stops.values():
            if model in st.models:
                raise Violation(f"granted {model} while it is being stopped ({st.reason})")

    def starved(self):
        """The oldest queued request that has waited max_wait, or None."""
        if not self.max_wait or self.core.shutting_down:
            return None
        late = [(self.queued_time[r.rid], i, r) for i, r in enumerate(self.core.queue)
                if self.now >= self.queued_time[r.rid] + self.max_wait]  # as the core adds
        return min(late, key=lambda x: x[:2])[2] if late else None

    def fence_of(self, req) -> tuple[frozenset[str], frozenset[str]]:
        """What a request waits for: the models it would evict, and active swap targets
        that collide with it."""
        core, target = self.core, req.model
        running = core.running()
        if core.state.get(target) != READY or core._blocked(target):
            running = running - {target}  # it waits for its own stop (a retire, an unload)
        evict = frozenset(core.planner.eviction_for(target, running)) - {target}
        colliding = frozenset(t for t, sw in core.active.items()
                              if t != target and (t in evict or target in sw.evict))
        return evict, colliding

    def snapshot_fence(self) -> None:
        req = self.starved()
        if req is None:
            self.fence_snapshot = None
            return
        evict, colliding = self.fence_of(req)
        core = self.core
        self.fence_snapshot = (req.rid, evict | colliding, dict(core.in_flight),
                               {t: len(sw.waiters) for t, sw in core.active.items()})

    def check_fairness(self) -> None:
        core = self.core
        queued = {r.rid for r in core.queue}
        for rid in [rid for rid in self.queued_time if rid not in queued]:
            del self.queued_time[rid]
        for r in core.queue:
            self.queued_time.setdefault(r.rid, self.now)
        req = self.starved()
        if req is None:
            return
        if core.queue[0] is not req:
            raise Violation(f"request {req.rid} for {req.model} has waited maxWait but "
                            f"{core.queue[0].rid} is ahead of it")
        evict, colliding = self.fence_of(req)
        fence = evict | colliding
        if fence & self.published:
            raise Violation(f"{sorted(fence & self.published)} published for claims while "
                            f"a starved request for {req.model} waits for them")
        snap = self.fence_snapshot
        if snap is not None and snap[0] == req.rid:
            _rid, before, in_flight, waiters = snap
            for m in before & fence:
                if core.in_flight.get(m, 0) > in_flight.get(m, 0) + waiters.get(m, 0):
                    raise Violation(f"{m} got a new request while a starved request for "
                                    f"{req.model} waits for it")
        target = req.model
        waits = (any(core.in_flight.get(m) or m in core.retiring for m in evict) or colliding
                 or core._blocked(target) or self.extra_waits(req, evict))
        if not waits:
            raise Violation(f"starved request {req.rid} for {target} is still queued but "
                            f"nothing it must wait for remains")

    def fire_due_wait_timers(self) -> None:
        """The router loop fires due timers before it handles anything else (and closes
        the gate for claims first)."""
        due = [t for t in self.timers if t.kind == "maxwait" and t.deadline <= self.now]
        for timer in due:
            self.timers.remove(timer)
            self.apply(self.core.timer_expired(timer.kind, timer.model, timer.token, self.now))
        if due:
            self.published = self.core.grantable()

    def check(self) -> None:
        core = self.core
        self.check_reservations()
        for m, n in core.in_flight.items():
            if n <= 0:
                raise Violation(f"in-flight count {n} for {m}")
        for m in set(self.models) | set(core.in_flight):
            if core.in_flight.get(m, 0) != self.outstanding(m):
                raise Violation(f"in-flight {m}: core {core.in_flight.get(m, 0)} "
                                f"world {self.outstanding(m)}")
        active = list(core.active.values())
        for a in active:
            for b in active:
                if a is not b and (a.model in b.evict):
                    raise Violation(f"swap for {b.model} evicts running swap target {a.model}")
        for i, req in enumerate(core.queue, start=1):
            if req.status != "waiting":
                raise Violation(f"queued request {req.rid} is {req.status}")
            if req.position != i:
                raise Violation(f"queued request {req.rid} at {i} sees position {req.position}")
        self.check_fairness()
        # priorities: the queue is sorted by priority, highest first (rule Q1)
        # (but for a request starved by maxWait, which goes to the head: check_fairness)
        ordered = core.queue[1:] if core.queue and core.queue[0] is self.starved() else core.queue
        ranks = [self.priority.get(req.model, 0) for req in ordered]
        if ranks != sorted(ranks, reverse=True):
            raise Violation(f"queue out of priority order: {[(r.model, p) for r, p in zip(ordered, ranks)]}")
        # equal priorities keep the order in which requests joined the queue
        for req in core.queue:
            if req.rid not in self.queued_at:
                self.queued_at[req.rid] = next(self.queue_seq)
        for a, b in zip(ordered, ordered[1:]):
            if self.priority.get(a.model, 0) == self.priority.get(b.model, 0) and \
                    self.queued_at[a.rid] > self.queued_at[b.rid]:
                raise Violation(f"request {b.rid} queued before {a.rid} (same priority) is behind it")
        # nobody overtakes a queued request for the same model
        queued_first = {}
        for req in core.queue:
            queued_first.setdefault(req.model, req.rid)
        for req in self.requests:
            first = queued_first.get(req.model)
            if first is not None and req.rid > first and req.status in ("granted", "done"):
                raise Violation(f"request {req.rid} for {req.model} served while the older "
                                f"request {first} still waits in the queue")
        for a in active:
            for req in a.waiters:
                if req.status not in ("waiting", "gone"):
                    raise Violation(f"waiter {req.rid} is {req.status}")

    # ---- effects ------------------------------------------------------------------------

    def apply(self, effects: list) -> None:
        for eff in effects:
            if isinstance(eff, StartSwap):
                if self.restarting is not None:
                    if (eff.model, eff.evict) != (self.restarting, ()) or self.ready[eff.model]:
                        raise Violation(f"restart of {self.restarting} began {eff}")
                    self.restarting = None
                for m in eff.evict:
                    if self.outstanding(m):
                        raise Violation(f"swap to {eff.model} stops {m} with requests in flight")
                self.swaps[eff.swap_id] = eff
            elif isinstance(eff, StopModels):
                if eff.reason in ("ttl", "retire"):
                    for m in eff.models:
                        if self.outstanding(m):
                            raise Violation(f"{eff.reason} stop of {m} with requests in flight")
                self.stops[eff.token] = eff
            elif isinstance(eff, ShutdownAll):
                self.shutdown_pending = eff
            elif isinstance(eff, ArmTimer):
                self.timers.append(eff)
            elif isinstance(eff, Log):
                pass
            elif isinstance(eff, BackOff):
                if eff.model not in self.may_back_off:
                    raise Violation(f"restart of {eff.model} scheduled ({eff.reason}) without "
                                    f"a failure of it")
                if not 1 <= eff.delay <= 300:
                    raise Violation(f"backoff {eff.delay}")
                self.timers.append(ArmTimer(eff.model, eff.deadline, eff.token, "restart"))
            elif isinstance(eff, Restart):
                self.restarting = eff.model
            elif isinstance(eff, CancelRestart):
                pass
            else:
                raise Violation(f"unknown effect {eff!r}")

    # ---- events ---------------------------------------------------------------------------

    def new_request(self) -> None:
        model = self.rng.choice(self.models + ["nope"] if self.rng.random() < 0.05 else self.models)
        choice = None
        if self.selectors.config.selectors and self.rng.random() < 0.3:
            choice = self.choose(self.rng.choice(sorted(self.selectors.config.selectors)))
            if choice is None:
                return
            model = choice.target
        req = SimRequest(self, len(self.requests), model)
        req.choice = choice
        self.requests.append(req)
        self.apply(self.core.request(req, self.now))
        if model in self.published and req.status != "granted":
            raise Violation(f"{model} was published as grantable but a request for it "
                            f"was not granted at once ({req.status})")

    def state_of(self, model: str) -> str:
        return self.core.state.get(model, "")

    def choose(self, selector_id: str):
        """What the request path does for a selector id; checks the strategy's promises
        against the states it saw. None: no target could serve (503)."""
        selector = self.selectors.config.selectors[selector_id]
        before = self.selectors.in_flight(selector_id)
        states = {t: self.state_of(t) for t in selector.targets}
        try:
            choice = self.selectors.choose(selector_id, self.state_of)
        except SelectorError:
            if selector.strategy != "spillover" or any(st != "stopping" for st in states.values()):
                raise Violation(f"selector {selector_id} refused with targets {states}") from None
            return None
        target = choice.target
        if selector.strategy == "pin" and target != selector.targets[0]:
            raise Violation(f"pin selector {selector_id} chose {target}")
        if selector.strategy == "warm":
            for wanted in ("ready", "starting", "sleeping"):
                first = next((t for t in selector.targets if states[t] == wanted), None)
                if first is not None:
                    if target != first:
                        raise Violation(f"warm selector {selector_id} chose {target}, not {wanted} {first}")
                    break
        if selector.strategy == "spillover":
            if states[target] == "stopping":
                raise Violation(f"spillover {selector_id} chose {target}, which is stopping")
            active = [t for t in selector.targets if states[t] in ("ready", "starting")
                      or (states[t] != "stopping" and before.get(t, 0) > 0)]
            cold = [t for t in selector.targets if t not in active and states[t] != "stopping"]
            room = bool(active) and min(before.get(t, 0) for t in active) < selector.spillover
            if room and target not in active:
                raise Violation(f"spillover {selector_id} started {target} while {active} had room")
            if not room and cold and target != cold[0]:
                raise Violation(f"spillover {selector_id} chose {target}, not the first cold {cold[0]}")
            if room and before.get(target, 0) != min(before.get(t, 0) for t in active):
                raise Violation(f"spillover {selector_id} chose {target}, not the least busy of {active}")
        return choice

    def check_reservations(self) -> None:
        """A handler releases its selector reservation when its request is over."""
        for req in self.requests:
            if req.choice is not None and not req.released and req.status in ("done", "failed", "gone"):
                req.released = True
                self.selectors.release(req.choice)
        for sid, selector in self.selectors.config.selectors.items():
            if selector.strategy != "spillover":
                continue
            held: dict[str, int] = {}
            for req in self.requests:
                if req.choice is not None and req.choice.selector_id == sid and not req.released:
                    held[req.model] = held.get(req.model, 0) + 1
            counts = {m: n for m, n in self.selectors.in_flight(sid).items() if n}
            if counts != held:
                raise Violation(f"spillover {sid} counts {counts}, requests holding {held}")

    def claim(self) -> None:
        """A handler serves a published model without asking; the core hears of it later."""
        model = self.rng.choice(sorted(self.published))
        req = SimRequest(self, len(self.requests), model)
        self.check_grantable(model)
        req.status = "granted"
        self.requests.append(req)
        self.apply(self.core.claimed(model, self.now))

    def finish_swap(self, swap_id: int, ok: bool) -> None:
        sw = self.swaps.pop(swap_id)
        self.finished_swaps.add(swap_id)
        for m in sw.evict:
            self.ready[m] = False
        # A cancelled swap's worker may still start its target; the stop that cancelled
        # it stops it again afterwards (StopModels.after_swaps).
        self.ready[sw.model] = ok
        self.may_back_off = set() if ok else {sw.model}
        self.apply(self.core.swap_done(swap_id, None if ok else "exit code 1", self.now))
        self.may_back_off = set()

    def finish_stop(self, token: int) -> None:
        st = self.stops.pop(token)
        for m in st.models:
            self.ready[m] = False
        self.may_back_off = set(st.models) if st.reason == "health" else set()
        self.apply(self.core.stops_done(token, self.now))
        self.may_back_off = set()

    def stop_can_finish(self, st: StopModels) -> bool:
        return all(s in self.finished_swaps for s in st.after_swaps)

    def finish_request(self, req: SimRequest) -> None:
        req.status = "done"
        self.apply(self.core.request_done(req.model, self.now))

    def give_up(self, req: SimRequest) -> None:
        req.status = "gone"
        self.apply(self.core.give_up(req, self.now))

    def fire_timer(self) -> None:
        timer = min(self.timers, key=lambda t: t.deadline)
        self.timers.remove(timer)
        self.now = max(self.now, timer.deadline)
        self.apply(self.core.timer_expired(timer.kind, timer.model, timer.token, self.now))

    def crash(self, model: str) -> None:
        self.ready[model] = False
        self.may_back_off = {model}
        code = self.rng.choice([1, 0, -9, None])  # None: noticed before its exit report
        self.apply(self.core.process_exited(model, self.now, code))
        self.may_back_off = set()

    def unhealthy(self, model: str) -> None:
        """Its health watch declares a ready backend dead (it still runs)."""
        self.apply(self.core.health_failed(model, self.now))

    def unload(self) -> None:
        models = None if self.rng.random() < 0.3 else self.rng.sample(
            self.models, self.rng.randint(1, len(self.models)))
        _token, effects = self.core.unload(models, None, self.now)
        self.apply(effects)

    def reconfigure(self) -> None:
        stop = self.rng.sample(self.models, self.rng.randint(0, len(self.models)))
        self.ttl = {m: self.rng.choice([0, 2, 5]) for m in self.models}
        self.priority = random_priority(self.rng, self.models)
        self.restart = random_restart(self.rng, self.models)
        if self.rng.random() < 0.3:
            if not self.max_wait:
                self.queued_time = {}  # the bound counts from the reload that sets it
            self.max_wait = self.rng.choice([0, 0.5, 1, 3])
        self.apply(self.core.reconfigure(self.models, self.new_planner(),
                                         ttl=self.ttl, stop=stop, now=self.now, priority=self.priority,
                                         max_wait=self.max_wait, restart=self.restart))
        # a reconfigure re-sorts the queue (rule Q3): that is its new arrival order
        self.queued_at = {req.rid: next(self.queue_seq) for req in self.core.queue}

    # ---- hooks for worlds with more events (test_router_memory_simulation.py) ----------------

    def extra_choices(self) -> list[tuple[str, int]]:
        return []

    def new_planner(self):
        """The planner a random reconfigure brings."""
        return random_planner(self.rng, self.models)

    def do_extra(self, kind: str) -> None:
        raise Violation(f"unknown step {kind}")

    def extra_waits(self, req, evict) -> bool:
        """Whether a world's own rules make a starved request wait."""
        return False

    def extra_step(self) -> bool:
        """One more thing to do while quiescing; False when there is none."""
        return False

    def random_step(self) -> None:
        rng = self.rng
        self.now += rng.random() * 0.5
        self.fire_due_wait_timers()
        self.snapshot_fence()
        waiting = [r for r in self.requests if r.status == "waiting"]
        granted = [r for r in self.requests if r.status == "granted"]
        choices = [("request", 30)]
        if self.swaps:
            choices.append(("swap", 25))
        if any(self.stop_can_finish(s) for s in self.stops.values()):
            choices.append(("stop", 15))
        if granted:
            choices.append(("done", 25))
        if waiting:
            choices.append(("give_up", 4))
        if self.timers:
            choices.append(("timer", 6))
        if any(self.ready[m] and self.core.state.get(m) == READY and m not in self.core.active
               for m in self.models):
            choices += [("crash", 2), ("unhealthy", 1)]
        if self.published:
            choices.append(("claim", 20))
        choices += [("unload", 2), ("reconfigure", 1)] + self.extra_choices()
        kind = rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
        if kind == "request":
            self.new_request()
        elif kind == "swap":
            self.finish_swap(rng.choice(list(self.swaps)), rng.random() < 0.85)
        elif kind == "stop":
            self.finish_stop(rng.choice([t for t, s in self.stops.items() if self.stop_can_finish(s)]))
        elif kind == "done":
            self.finish_request(rng.choice(granted))
        elif kind == "give_up":
            self.give_up(rng.choice(waiting))
        elif kind == "timer":
            self.fire_timer()
        elif kind in ("crash", "unhealthy"):
            model = rng.choice([m for m in self.models if self.ready[m]
                                and self.core.state.get(m) == READY and m not in self.core.active])
            (self.crash if kind == "crash" else self.unhealthy)(model)
        elif kind == "unload":
            self.unload()
        elif kind == "claim":
            self.claim()
        elif kind == "reconfigure":
            self.reconfigure()
        else:
            self.do_extra(kind)
        if kind != "claim":  # a claim changes no decision: the published set stays valid
            self.published = self.core.grantable()
        self.steps += 1
        self.check()

    def quiesce(self) -> None:
        """No new work: let every worker and every request finish."""
        for _ in range(10_000):
            self.snapshot_fence()  # as each random step does
            if self.extra_step():
                pass
            elif self.swaps:
                self.finish_swap(next(iter(self.swaps)), True)
            elif self.stops:
                token = next(t for t, s in self.stops.items() if self.stop_can_finish(s))
                self.finish_stop(token)
            elif any(r.status == "granted" for r in self.requests):
                self.finish_request(next(r for r in self.requests if r.status == "granted"))
            else:
                break
            self.published = self.core.grantable()
            self.steps += 1
            self.check()
        core = self.core
        if core.queue:
            raise Violation(f"queue not empty after quiescence: {[r.model for r in core.queue]}")
        if core.active:
            raise Violation(f"swaps still active: {list(core.active)}")
        if core.in_flight:
            raise Violation(f"in-flight counts left: {core.in_flight}")
        for r in self.requests:
            if r.status not in ("done", "failed", "gone"):
                raise Violation(f"request {r.rid} for {r.model} never answered ({r.status})")
        if core.retiring:
            raise Violation(f"models still retiring: {core.retiring}")
        # TTL: after quiescence each idle ready model with a ttl has a live timer.
        for m in [] if core.shutting_down else self.models:
            if core.state.get(m) == READY and self.ttl.get(m) and not core.in_flight.get(m):
                assert any(t.kind == "ttl" and t.model == m and core._ttl_token.get(m) == t.token
                           for t in self.timers), \
                    f"ready idle model {m} with ttl {self.ttl[m]} has no live timer"


def run_interleaving(seed: int) -> int:
    rng = random.Random(seed)
    world = World(rng)
    try:
        for _ in range(rng.randint(10, STEPS)):
            world.random_step()
        if rng.random() < 0.1:
            _token, effects = world.core.shutdown(None, world.now)
            world.apply(effects)
            world.check()
            for r in world.requests:
                assert r.status != "waiting", "shutdown left a waiter unanswered"
            late = SimRequest(world, -1, world.models[0])
            world.apply(world.core.request(late, world.now))
            assert late.status == "failed" and late.error.status == 503
        world.quiesce()
    except AssertionError as exc:
        raise AssertionError(f"seed {seed} after {world.steps} steps: {exc}") from exc
    return world.steps


def run_seeds(run, count: int, label: str) -> int:
    """Run `count` interleavings from $ROUTER_SIM_SEED (default 0); the steps taken."""
    started = time.monotonic()
    steps = 0
    base = int(os.environ.get("ROUTER_SIM_SEED", "0"))
    for seed in range(base, base + count):
        steps += run(seed)
    print(f"\n{label}: {count} interleavings, {steps} steps, {time.monotonic() - started:.1f}s")
    return steps


def test_random_interleavings_keep_every_invariant():
    assert run_seeds(run_interleaving, INTERLEAVINGS, "router simulation") > INTERLEAVINGS * 10
