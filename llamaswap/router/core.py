"""The routing decision core: pure state and rules, no threads, sockets or clocks.

The router thread (``loop.Router``) feeds it one command at a time and carries out the
effects it returns (start a swap, stop models, arm a timer, log). Requests are objects
with ``model``, ``offer_grant() -> bool``, ``offer_error(err) -> bool`` and
``set_position(n)``; an offer returns False when the client already left, so a grant
that nobody receives is never counted as in flight.

Decision tree for a request for model m (upstream's, re-run in order over the queue
whenever a swap ends, a stop ends, a model's last request ends or a measurement comes in):
  1. m unknown -> 404.
  1a. m is fenced for a starved request (fairness, below) -> wait in the queue.
  2. a swap for m is active -> join it (one load serves every waiter).
  3. m is being stopped or drained by an explicit order -> wait in the queue.
  4. plan = the planner's plan for m (planners.plan_for): its evictions and their reasons.
  4a. the plan refuses m (with memory: it can never fit) -> 503 naming model, device, need
      and budget.
  5. m ready, nothing to evict, no collision -> grant now (fast path).
  6. collision with an active swap (we would evict its target, or it evicts m), or the plan
     says wait (a model that is never evicted for memory is still loading) -> queue.
  7. we would evict a model with requests in flight, one being drained, or one whose first
     measurement has not come in yet -> queue.
  7a. a starved request would have to evict m (or m's swap would evict its target) -> queue:
      a younger request must not add to what the starved one waits for.
  8. otherwise start a swap; swaps that do not collide run in parallel. An evicted model
     that can sleep (``sleep``/``wake`` configured) is put to sleep instead of stopped,
     unless the plan says it must stop; a request for a sleeping model wakes it (a swap).

Queue order (upstream's fifo scheduler with ``routing.scheduler.settings.fifo.priority``):
  Q1. a request that must wait is inserted before the first queued request whose model has
      a strictly lower priority (0 unless configured), so equal priorities keep arrival order
      and the queue is always sorted by priority, highest first (but for a starved request,
      F1 below, which stays at the head);
  Q2. the queue is re-run in that order, so a higher-priority request gets the first chance
      at every swap or stop that frees room;
  Q3. a reconfigure re-sorts the queue (stably) by the new priorities.

Fairness (``max_wait`` > 0; 0 keeps upstream's behaviour, where steady traffic on a ready
model can hold a queued request for another model forever):
  F1. when the oldest queued request has waited ``max_wait`` it is starved: it moves to the
      head of the queue. One request is starved at a time.
  F2. the models it waits for are fenced: those it would evict (planned as if its own
      model were stopped, unless it is ready and not being stopped or retired), and the
      targets of active swaps that collide with it. A fenced model gets no new grant
      (none published for claims either); requests for it queue behind the starved one
      (rule 1a).
  F3. the fenced models' requests in flight finish, the queue drains in order, the starved
      request's swap starts, and the next oldest request may become starved at once.
  F4. what it waits for changes with what runs (another swap, a crash): a model that leaves
      the fence is served again at once, the requests queued for it first (a queue pass),
      so none is overtaken by a younger request for the same model.
  So a request waits at most max_wait + the longest request in flight on the models it
  evicts + its own load time.

Restart policy (per model: never, on-failure, always; the backend's own failures only):
  R1. a failure schedules a restart when the policy asks for it: the backend exited on its
      own while ready ("crash", or "exit" for code 0: only ``always`` restarts that), its
      health watch failed ("health": the core orders the stop, the restart follows it), or
      a start failed ("start-failed"). Unload, TTL, a reload's retire, an eviction and
      shutdown are not failures and never restart anything.
  R2. backoff: 1 s, doubling with each failure in a row, at most 5 min; a model that had
      been ready for 10 min before it failed starts again from 1 s.
  R3. when the backoff has passed, the model starts again if it is still stopped and
      nothing is in its way: it evicts nothing, collides with no swap, is not being
      stopped, and no queued request would have to evict it. Otherwise the restart is
      dropped: a restart never displaces anything; the next request starts the model.
  R4. a request for a model in backoff does not wait for it: the decision tree starts the
      model at once, and the pending restart finds it running and does nothing.
  R5. unload, a reload that changes or removes the model (or sets its policy to never) and
      shutdown call a pending restart off.

Memory (with a ``memory:`` section; ``router/memory.py``): a measurement of a resident
model raises its learned need (``NeedLearned`` for the store) and, when the models on a
device now count more than its budget allows, idle others are put to sleep or stopped,
least recently used first, with the reason "memory" (the growth rule).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import AbstractSet, Iterable, Mapping, Protocol

from llamaswap.router.planners import Plan, PlanContext, plan_for
from llamaswap.sizes import format_size

STOPPED = "stopped"
STARTING = "starting"
READY = "ready"
STOPPING = "stopping"
SLEEPING = "sleeping"
RESTART_FIRST_DELAY = 1.0  # seconds (R2)
RESTART_MAX_DELAY = 300.0
RESTART_RESET_AFTER = 600.0  # seconds ready after which the backoff starts again from 1 s


class RouterError(Exception):
    """A request the router could not serve. ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def unknown_model_error(model: str) -> RouterError:
    return RouterError(404, f"no local server found for requested model '{model}'")


def shutting_down_error(model: str) -> RouterError:
    return RouterError(503, f"cannot serve model '{model}': llama-swap is shutting down")


def unloaded_error(model: str) -> RouterError:
    return RouterError(500, f"model '{model}' unloaded")


def start_failed_error(model: str, reason: str) -> RouterError:
    return RouterError(500, f"model '{model}' failed to start: {reason}")


class Requester(Protocol):
    model: str

    def offer_grant(self) -> bool: ...

    def offer_error(self, error: RouterError) -> bool: ...

    def set_position(self, position: int) -> None: ...


# ---- effects: what the loop must do after a command ---------------------------------

@dataclass(frozen=True)
class StartSwap:
    """Stop `evict` in parallel, then start `model`; report swap_done(swap_id, error).

    `reasons` maps each evicted model to the planner's reason word ("group", "matrix",
    "memory", ...), for the log and the ``ModelStopping`` event."""
    swap_id: int
    model: str
    evict: tuple[str, ...]
    reasons: Mapping[str, str] = field(default_factory=dict, hash=False)
    sleep: tuple[str, ...] = ()  # of `evict`: put these to sleep instead of stopping them


@dataclass(frozen=True)
class StopModels:
    """Stop `models` in parallel; report stops_done(token).

    `reason` is "unload", "ttl" or "retire". `grace` None means each model's own
    unload_timeout. `after_swaps`: cancelled swaps whose workers may still start one
    of these models; stop again once each of them has finished.
    """
    token: int
    models: tuple[str, ...]
    reason: str
    grace: float | None = None
    after_swaps: tuple[int, ...] = ()
    sleep: tuple[str, ...] = ()  # of `models`: put these to sleep instead of stopping them


@dataclass(frozen=True)
class ShutdownAll:
    token: int
    grace: float | None


@dataclass(frozen=True)
class ArmTimer:
    """Call timer_expired(kind, model, token) at `deadline` (the core's clock). `kind` is
    "ttl" (the model's TTL) or "maxwait" (`model` is the oldest queued request's)."""
    model: str
    deadline: float
    token: int
    kind: str = "ttl"


@dataclass(frozen=True)
class NeedLearned:
    """A measurement raised the learned need of (model, command): remember it."""
    model: str
    command: str
    asleep: bool
    need: Mapping[str, int] = field(hash=False)


@dataclass(frozen=True)
class BackOff:
    """Rule R1: restart `model` in `delay` seconds: mark its process as waiting for the
    restart and call timer_expired("restart", model, token) at `deadline`. `attempt` counts
    its failures in a row."""
    model: str
    reason: str
    delay: float
    deadline: float
    token: int
    attempt: int


@dataclass(frozen=True)
class CancelRestart:
    """A pending restart of `model` was called off (R3, R5): its process stops waiting."""
    model: str


@dataclass(frozen=True)
class Restart:
    """Rule R3: the restart policy starts `model` again now (the StartSwap follows)."""
    model: str
    reason: str
    attempt: int


@dataclass(frozen=True)
class Log:
    level: str  # "debug" | "info" | "warn"
    message: str


# ---- internal bookkeeping --------------------------------------------------------------

@dataclass
class _Swap:
    swap_id: int
    model: str
    evict: frozenset[str]
    waiters: list
    gens: dict[str, int]  # generation of each evicted model when the swap marked it stopping
    sleep: frozenset[str] = frozenset()  # of evict: put to sleep, not stopped


@dataclass
class _Order:
    token: int
    models: tuple[str, ...]
    reason: str
    gens: dict[str, int] = field(default_factory=dict)


class RouterCore:
    def __init__(self, models: Iterable[str], planner, *, ttl: Mapping[str, float] | None = None,
                 ready: AbstractSet[str] = frozenset(), now: float = 0.0,
                 priority: Mapping[str, int] | None = None, max_wait: float = 0.0,
                 restart: Mapping[str, str] | None = None,
                 sleepable: AbstractSet[str] = frozenset(), book=None):
        self.planner = planner
        self._priority: dict[str, int] = dict(priority or {})
        self.max_wait = max_wait  # seconds; 0: no bound (fairness rules off)
        self.sleepable = frozenset(sleepable)
        self.book = book  # router.memory.MemoryBook when memory is managed, else None
        self._ids = itertools.count(1)
        self.models: set[str] = set(models)
        self._ttl: dict[str, float] = dict(ttl or {})
        self.state: dict[str, str] = {m: (READY if m in ready else STOPPED) for m in self.models}
        self._gen: dict[str, int] = {m: 0 for m in self.models}
        self.active: dict[str, _Swap] = {}  # target model -> swap
        self._swap_ids: dict[int, str] = {}  # swap id -> target model (active swaps)
        self._cancelled: dict[int, dict[str, int]] = {}  # cancelled swap id -> its evictions' gens
        self._cancelled_target: dict[int, str] = {}  # cancelled swap id -> the model it loads
        self._cancel_blocked: dict[str, set[int]] = {}  # model -> cancelled swaps still stopping it
        self.in_flight: dict[str, int] = {}
        self.queue: list = []
        self._orders: dict[int, _Order] = {}
        self._orders_of: dict[str, set[int]] = {}  # model -> stop orders in progress for it
        self.retiring: set[str] = set()  # reconfigure: drain, then stop the old process
        self._retire_swaps: dict[str, int] = {}
        self._ttl_token: dict[str, int] = {}
        self.shutting_down = False
        self._since: dict = {}  # queued request -> when it joined the queue (max_wait only)
        self.starved = None  # the request the fairness rules serve next, while it is queued
        self._fence: frozenset[str] = frozenset()  # what it waited for at the last look (F4)
        self._wait_due: float | None = None  # deadline of the armed maxwait timer
        self._restart: dict[str, str] = dict(restart or {})  # model -> policy (R1)
        self._ready_since: dict[str, float] = {m: now for m in ready}
        self._delay: dict[str, float] = {}  # model -> its next backoff (R2)
        self._attempts: dict[str, int] = {}  # model -> failures in a row
        self._restart_due: dict[str, tuple[int, str, int]] = {}  # model -> (token, reason, attempt)
        self._health_stops: dict[int, float] = {}  # stop order token -> seconds it had been ready
        self._effects: list = []
        for m in self.models:
            if self.state[m] == READY:
                self._arm_ttl(m, now)

    # ---- read-only views ---------------------------------------------------------------

    def running(self) -> frozenset[str]:
        """Models running or committed to run: what planners must take into account. A
        sleeping model is not running (a planner already evicted it); only the memory
        planner counts it, through its PlanContext."""
        alive = {m for m, s in self.state.items() if s != STOPPED and s != SLEEPING}
        return frozenset(alive | set(self.active) | self.retiring)

    def priority_of(self, model: str) -> int:
        return self._priority.get(model, 0)

    def queue_length(self) -> int:
        return len(self.queue)

    def in_flight_of(self, model: str) -> int:
        return self.in_flight.get(model, 0)

    def grantable(self) -> frozenset[str]:
        """The models a request would be granted at once, with no other effect (rule 5 of
        the decision tree). Until the next command changes state, a request for one of
        them may be served before the core hears of it, then reported with ``claimed``."""
        if self.shutting_down:
            return frozenset()
        running = None
        fence = self.fenced()
        out = []
        for m in self.models:
            if (self.state.get(m) != READY or m in self.active or self._blocked(m)
                    or m in fence):
                continue
            if running is None:
                running = self.running()
            if frozenset(self.planner.eviction_for(m, running)) - {m}:
                continue
            out.append(m)
        return frozenset(out)

    def fenced(self) -> frozenset[str]:
        """The models the starved request waits for (rule F2); empty when none is starved."""
        req = self.starved
        if req is None or req.model not in self.models:
            return frozenset()
        target = req.model
        running = self.running()
        if self.state.get(target) != READY or self._blocked(target):
            # it waits for its own stop (a retire, an unload) and start: plan as if stopped
            running = running - {target}
        evict = frozenset(self.planner.eviction_for(target, running)) - {target}
        colliding = {t for t, swap in self.active.items()
                     if t != target and (t in evict or target in swap.evict)}
        return evict | colliding

    # ---- commands ------------------------------------------------------------------------

    def request(self, req, now: float) -> list:
        if self.shutting_down:
            req.offer_error(shutting_down_error(req.model))
        elif not self._decide(req, now):
            self._enqueue(req)
            self._publish_positions()
        return self._take(now)

    def claimed(self, model: str, now: float) -> list:
        """A request for a model that was in ``grantable()`` was served without waiting
        for a decision; it counts as granted from the moment it was taken."""
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        self._ttl_token.pop(model, None)
        if self.book is not None:
            self.book.last_used[model] = now
        return self._take()

    def give_up(self, req, now: float) -> list:
        if req in self.queue:
            self.queue.remove(req)
            req.set_position(0)
            self._publish_positions()
        swap = self.active.get(req.model)
        if swap is not None and req in swap.waiters:
            swap.waiters.remove(req)
        return self._take(now)

    def request_done(self, model: str, now: float) -> list:
        count = self.in_flight.get(model, 0) - 1
        if count < 0:
            raise AssertionError(f"request_done for {model!r} without a request in flight")
        if self.book is not None:
            self.book.last_used[model] = now
        if count:
            self.in_flight[model] = count
            return self._take()
        del self.in_flight[model]
        if model in self.retiring:
            self._retire_stop(model)
        elif self.state.get(model) == READY and model not in self.active:
            self._arm_ttl(model, now)
        self._drain(now)
        return self._take(now)

    def swap_done(self, swap_id: int, error: str | None, now: float,
                  asleep: AbstractSet[str] = frozenset()) -> list:
        """A swap worker finished: `error` None when the target is ready; `asleep`: the
        evicted models that went to sleep (the others were stopped)."""
        if swap_id in self._cancelled:
            self._cancelled_target.pop(swap_id, None)
            for m, gen in self._cancelled.pop(swap_id).items():
                blockers = self._cancel_blocked.get(m)
                if blockers is not None:
                    blockers.discard(swap_id)
                    if not blockers:
                        del self._cancel_blocked[m]
                if self._gen.get(m) == gen:
                    self._put_down(m, m in asleep, now)
            self._drain(now)
            return self._take(now)
        model = self._swap_ids.pop(swap_id, None)
        if model is None:
            return self._take()
        swap = self.active.pop(model)
        for m in swap.evict:
            if self._gen.get(m) == swap.gens[m]:
                self._put_down(m, m in asleep, now)
        if error is None:
            self._set_state(model, READY)
            if self.book is not None and self.planner_needs_measuring(model):
                self.book.pending.add(model)
            self._ready_since[model] = now
            for req in swap.waiters:
                self._grant(req, model, now)
            if not self.in_flight.get(model):
                self._arm_ttl(model, now)
        else:
            self._set_state(model, STOPPED)
            failure = start_failed_error(model, error)
            for req in swap.waiters:
                req.offer_error(failure)
            self._restart_after(model, "start-failed", now, 0.0)
        self._drain(now)
        return self._take(now)

    def stops_done(self, token: int, now: float, asleep: AbstractSet[str] = frozenset()) -> list:
        """A stop order finished; `asleep`: the models it put to sleep."""
        order = self._orders.pop(token, None)
        if order is None:
            return self._take()
        ran = self._health_stops.pop(token, None)
        self._effects.append(Log("debug", f"router: stopped [{' '.join(order.models)}] "
                                          f"({order.reason})"))
        for m in order.models:
            pending = self._orders_of.get(m, set())
            pending.discard(token)
            if self._gen.get(m) == order.gens.get(m):
                if m in asleep:
                    self._put_down(m, True, now)
                else:
                    self._set_state(m, STOPPED)
                    if ran is not None:
                        self._restart_after(m, "health", now, ran)
            if not pending:
                self._orders_of.pop(m, None)
                if m in self.retiring:
                    self._finish_retire(m)
        self._drain(now)
        return self._take(now)

    def ttl_expired(self, model: str, token: int, now: float) -> list:
        if (self._ttl_token.get(model) != token or self.state.get(model) not in (READY, SLEEPING)
                or self.in_flight.get(model) or model in self.active or self._blocked(model)):
            return self._take()
        del self._ttl_token[model]
        ttl = self._ttl.get(model, 0)
        self._effects.append(Log("info", f"{model} Unloading model, TTL of {_seconds(ttl)}s reached"))
        self._order_stop((model,), "ttl", None)
        if self.book is not None:
            self._drain(now)  # a model waiting to be measured no longer holds up the queue
        return self._take(now)

    def timer_expired(self, kind: str, model: str, token: int, now: float) -> list:
        """A timer's deadline has passed (ArmTimer, or BackOff with kind "restart")."""
        if kind == "maxwait":
            self._wait_due = None
            return self._take(now)  # the fairness rules run on every command
        if kind == "restart":
            self._restart_now(model, token, now)
            return self._take(now)
        return self.ttl_expired(model, token, now)

    def process_exited(self, model: str, now: float, code: int | None = None) -> list:
        """The backend exited on its own while ready or asleep (`code`: its exit status,
        None when not known yet)."""
        if self.state.get(model) in (READY, SLEEPING) and model not in self.active:
            self._set_state(model, STOPPED)
            self._drain(now)
            ran = now - self._ready_since.get(model, now)
            reason = "exit" if code == 0 else "crash"
            backoff = self._restart_after(model, reason, now, ran)
            status = ("exit status unknown" if code is None else
                      f"killed by signal {-code}" if code < 0 else f"exit code {code}")
            policy = self._restart.get(model, "never")
            then = (f"restarting in {_seconds(backoff.delay)}s" if backoff is not None
                    else f"not restarting it (restart: {policy})")
            self._effects.append(Log("info" if policy != "never" else "debug",
                                     f"router: model {model} exited on its own ({status}); {then}"))
        return self._take(now)

    def health_failed(self, model: str, now: float) -> list:
        """The health watch of a ready model declared it dead: stop it (its requests in
        flight end with an error), then R1 decides about a restart."""
        if (self.state.get(model) == READY and model not in self.active
                and not self._blocked(model) and not self.shutting_down):
            self._effects.append(Log("warn", f"router: stopping model {model}: its health "
                                             f"check failed"))
            token = self._order_stop((model,), "health", None)
            self._health_stops[token] = now - self._ready_since.get(model, now)
        return self._take(now)

    def unload(self, models: Iterable[str] | None, grace: float | None, now: float) -> tuple[int, list]:
        """Stop `models` (None: all). Returns the order token; stops_done(token) ends it."""
        targets = sorted(self.models | self.retiring) if models is None else [
            m for m in dict.fromkeys(models) if m in self.models or m in self.retiring]
        wanted = set(targets)
        after = []
        for m in targets:
            self._restart_due.pop(m, None)  # R5
            swap = self.active.get(m)
            if swap is not None:
                for req in swap.waiters:
                    req.offer_error(unloaded_error(m))
                swap.waiters.clear()
                after.append(self._cancel_swap(swap))
            if m in self._retire_swaps:
                after.append(self._retire_swaps.pop(m))
        kept = []
        for req in self.queue:
            if req.model in wanted:
                req.offer_error(unloaded_error(req.model))
                req.set_position(0)
            else:
                kept.append(req)
        self.queue = kept
        token = self._order_stop(tuple(targets), "unload", grace, tuple(after))
        self._drain(now)
        return token, self._take(now)

    def shutdown(self, grace: float | None, now: float) -> tuple[int, list]:
        self.shutting_down = True
        self._restart_due.clear()  # R5
        for swap in self.active.values():
            for req in swap.waiters:
                req.offer_error(shutting_down_error(swap.model))
            swap.waiters.clear()
        for req in self.queue:
            req.offer_error(shutting_down_error(req.model))
        self.queue = []
        token = next(self._ids)
        self._effects.append(ShutdownAll(token, grace))
        return token, self._take()

    def measured(self, model: str, usage: Mapping[str, int], asleep: bool, now: float) -> list:
        """A reading of what `model` uses on the managed devices it could measure (bytes),
        taken while it was ready (or asleep). Raises its learned need, and applies the
        growth rule when the devices now count more than their budgets allow."""
        book = self.book
        if book is None or model not in self.models:
            return self._take()
        book.pending.discard(model)
        key = self.planner.policy.key(model)
        learned = book.learn(key, usage, asleep)
        if learned is not None:
            self._effects.append(NeedLearned(model, key[1], asleep, learned))
        if self.state.get(model) == (SLEEPING if asleep else READY) and model not in self.active:
            book.usage[model] = {d: int(v) for d, v in usage.items()}
            (book.usage_asleep.add if asleep else book.usage_asleep.discard)(model)
            self._relieve(model)
        self._drain(now)
        return self._take(now)

    def reconfigure(self, models: Iterable[str], planner, *, ttl: Mapping[str, float],
                    stop: Iterable[str], now: float, priority: Mapping[str, int] | None = None,
                    max_wait: float | None = None, restart: Mapping[str, str] | None = None,
                    sleepable: AbstractSet[str] | None = None) -> list:
        """Route with a new config. Models in `stop` (and removed ones) are drained: no new
        grants, their in-flight requests finish, then their old process is stopped.
        `max_wait` None keeps the current bound."""
        if max_wait is not None and max_wait != self.max_wait:
            # the new bound is applied afresh (F1) to the same waits; 0 forgets them
            self.max_wait = max_wait
            self._wait_due = None
            self.starved = None
            if not max_wait:
                self._since = {}
        new_models = set(models)
        stop_set = {m for m in stop if m in self.models} | (self.models - new_models)
        if restart is not None:
            self._restart = dict(restart)
        for m in sorted(self._restart_due):  # R5
            if m in stop_set or self._restart.get(m, "never") == "never":
                del self._restart_due[m]
                self._effects.append(CancelRestart(m))
        requeue = []
        for m in sorted(stop_set):
            swap = self.active.get(m)
            if swap is not None:
                requeue.extend(swap.waiters)
                swap.waiters = []
                self._retire_swaps[m] = self._cancel_swap(swap)
            self._ttl_token.pop(m, None)
            self.retiring.add(m)
        self.models = new_models
        old_ttl, self._ttl = self._ttl, dict(ttl)
        for m in new_models - stop_set:
            if (old_ttl.get(m, 0) != self._ttl.get(m, 0) and self.state.get(m) == READY
                    and not self.in_flight.get(m) and m not in self.active):
                self._ttl_token.pop(m, None)
                self._arm_ttl(m, now)
        self.planner = planner
        if sleepable is not None:
            self.sleepable = frozenset(sleepable)
        for m in new_models:
            if m not in self.state:
                self.state[m] = STOPPED
                self._gen[m] = 0
        self._priority = dict(priority or {})
        self.queue = sorted(requeue + self.queue, key=lambda r: -self.priority_of(r.model))  # Q3
        for m in sorted(stop_set):
            if self.in_flight.get(m):
                continue
            if (self.state.get(m) == STOPPED and m not in self._orders_of
                    and m not in self._retire_swaps):
                self._finish_retire(m)  # nothing runs: nothing to stop
            else:
                self._retire_stop(m)
        if self.max_wait:
            self._fairness(now)  # F1 with the new bound and order before anything is served
        self._drain(now)
        self._publish_positions()
        return self._take(now)

    # ---- the decision tree -----------------------------------------------------------

    def _decide(self, req, now: float) -> bool:
        """Serve, join, fail or start a swap for `req`; False when it must wait."""
        model = req.model
        if model not in self.models:
            req.offer_error(unknown_model_error(model))
            return True
        starved = self.starved
        if starved is not None and req is not starved and model in self.fenced():
            return False
        swap = self.active.get(model)
        if swap is not None:
            swap.waiters.append(req)
            return True
        if self._blocked(model):
            return False
        plan = self._plan(model)
        if plan.refuse is not None:
            req.set_position(0)
            req.offer_error(RouterError(503, plan.refuse))
            return True
        evict = plan.evict
        collides = self._collides(model, evict)
        if self.state[model] == READY and not evict and not collides:
            self._grant(req, model, now)
            return True
        if collides or plan.wait:
            return False
        if any(self.in_flight.get(m) or m in self.retiring for m in evict):
            return False
        if self.book is not None and evict & self._memory_busy():
            return False
        if starved is not None and req is not starved and self._crowds(starved.model, model, evict):
            return False
        self._start_swap(model, plan, [req])
        return True

    def _crowds(self, starved: str, model: str, evict: frozenset[str]) -> bool:
        """Rule 7a: would a swap to `model` (evicting `evict`) add to what a request for
        `starved` waits for?"""
        if model == starved:
            return False
        return starved in evict or model in self.planner.eviction_for(
            starved, self.running() | {model})

    def _plan(self, model: str, running: AbstractSet[str] | None = None) -> Plan:
        """The planner's answer for `model` (rule 4); `running` defaults to running()."""
        running = self.running() if running is None else running
        if self.book is None:
            return plan_for(self.planner, model, running, PlanContext())
        sleeping = frozenset(m for m, s in self.state.items() if s == SLEEPING)
        busy = frozenset(set(self.in_flight) | set(self.active) | self.retiring
                         | self._memory_busy())
        stopping = frozenset(set(self._orders_of) | {m for sw in self.active.values()
                                                     for m in sw.evict})
        held = frozenset(set(self._orders_of) | set(self._cancelled_target.values()))
        return plan_for(self.planner, model, running,
                        PlanContext(sleeping=sleeping, busy=busy | held, stopping=stopping,
                                    held=held))

    def _memory_busy(self) -> set[str]:
        """Models memory may not count as freed yet: not measured since they became ready,
        the target of a cancelled swap whose worker may still start it, or one whose stop
        order has not finished."""
        return self.book.pending | set(self._cancelled_target.values()) | set(self._orders_of)

    def planner_needs_measuring(self, model: str) -> bool:
        """Whether the memory planner does not know `model`'s need on some device yet."""
        unknown = getattr(self.planner, "unknown_need", None)
        return bool(unknown is not None and unknown(model))

    def _blocked(self, model: str) -> bool:
        return model in self.retiring or model in self._orders_of or model in self._cancel_blocked

    def _collides(self, model: str, evict: frozenset[str]) -> bool:
        for target, swap in self.active.items():
            if target != model and (target in evict or model in swap.evict):
                return True
        return False

    def _start_swap(self, model: str, plan: Plan, waiters: list) -> None:
        evict = plan.evict
        swap_id = next(self._ids)
        description = None
        describe = getattr(self.planner, "describe_swap", None)
        if describe is not None:
            description = describe(model, self.running() - set(self.active))
        was_asleep = {m for m in evict if self.state.get(m) == SLEEPING}
        gens = {m: self._set_state(m, STOPPING) for m in evict}
        for m in evict:
            self._ttl_token.pop(m, None)
        self._set_state(model, STARTING)
        sleep = tuple(sorted(m for m in evict if m in self.sleepable and m not in plan.stop
                             and m not in was_asleep))
        self.active[model] = _Swap(swap_id, model, evict, waiters, gens, frozenset(sleep))
        self._swap_ids[swap_id] = model
        if description is not None:
            self._effects.append(Log(*description))
        self._effects.append(Log("debug", f"router: starting swap for model {model}, evicting "
                                          f"[{' '.join(sorted(evict))}]"))
        if self.starved is not None and self.starved in waiters:
            reasons = {m: "maxwait" for m in evict}  # F3: the bound forced these stops
        else:
            reasons = dict(plan.reasons)
        self._effects.append(StartSwap(swap_id, model, tuple(sorted(evict)), reasons, sleep))

    def _grant(self, req, model: str, now: float) -> None:
        req.set_position(0)
        if req.offer_grant():
            self.in_flight[model] = self.in_flight.get(model, 0) + 1
            self._ttl_token.pop(model, None)
            if self.book is not None:
                self.book.last_used[model] = now

    def _drain(self, now: float) -> None:
        while self.queue and not self.shutting_down:
            pending, self.queue = self.queue, []
            remaining = []
            for req in pending:
                # Decisions made earlier in this pass (new swaps) shape the later ones.
                if self._decide(req, now):
                    req.set_position(0)
                    if req is self.starved:
                        self.starved = None  # served: its fence goes for the rest of the pass
                else:
                    remaining.append(req)
            self.queue = remaining + self.queue
            self._publish_positions()
            # A starved request decided early in the pass may be startable after later
            # decisions (a matrix solver picks another set): give it another pass at once.
            if self.starved is None or len(remaining) == len(pending):
                return

    def _enqueue(self, req) -> None:
        """Rule Q1: before the first queued request of strictly lower priority."""
        priority = self.priority_of(req.model)
        queue = self.queue
        first = 1 if queue and queue[0] is self.starved else 0  # F1: it keeps the head
        for index in range(first, len(queue)):
            if self.priority_of(queue[index].model) < priority:
                queue.insert(index, req)
                return
        queue.append(req)

    def _publish_positions(self) -> None:
        for index, req in enumerate(self.queue, start=1):
            req.set_position(index)

    # ---- helpers ---------------------------------------------------------------------

    def _set_state(self, model: str, state: str) -> int:
        self._gen[model] = self._gen.get(model, 0) + 1
        if model in self.state or model in self.models or model in self.retiring:
            self.state[model] = state
        if state != READY:
            self._ttl_token.pop(model, None)
            if self.book is not None:
                self.book.pending.discard(model)
                if state != STOPPING:  # a reading belongs to the level it was taken at
                    self.book.usage.pop(model, None)
                    self.book.usage_asleep.discard(model)
        return self._gen[model]

    def _put_down(self, model: str, asleep: bool, now: float) -> None:
        """An eviction or stop order ended: the model is asleep or stopped."""
        if asleep:
            self._set_state(model, SLEEPING)
            self._arm_ttl(model, now)
        else:
            self._set_state(model, STOPPED)

    def _relieve(self, grown: str) -> None:
        """The growth rule: back under every budget by putting idle others down."""
        levels, idle = {}, []
        for m, st in self.state.items():
            if st == STOPPED:
                continue
            levels[m] = "asleep" if st == SLEEPING else "awake"
            if (st in (READY, SLEEPING) and not self.in_flight.get(m) and m not in self.active
                    and not self._blocked(m) and m not in self.book.pending):
                idle.append(m)
        for swap in self.active.values():  # as the swap planned them: down before it loads
            for m in swap.evict:
                levels[m] = "asleep" if m in swap.sleep else "gone"
        over, lowered = self.planner.relieve(levels, idle, grown)
        if not over:
            return
        what = "; ".join(f"{d}: {format_size(u)} counted with headroom > budget {format_size(b)}"
                         for d, u, b in over)
        if not lowered:
            self._effects.append(Log("warn", f"memory: over budget after measuring {grown} "
                                             f"({what}), and no idle model to evict"))
            return
        down = sorted(lowered)
        sleep = tuple(m for m in down if lowered[m] == "asleep")
        self._effects.append(Log("warn", f"memory: over budget after measuring {grown} ({what}); "
                                         f"evicting least recently used idle "
                                         f"{' '.join(down)}"))
        self._order_stop(tuple(down), "memory", None, sleep=sleep)

    def _arm_ttl(self, model: str, now: float) -> None:
        ttl = self._ttl.get(model, 0)
        if ttl and ttl > 0:
            token = next(self._ids)
            self._ttl_token[model] = token
            self._effects.append(ArmTimer(model, now + ttl, token))

    def _order_stop(self, models: tuple[str, ...], reason: str, grace: float | None,
                    after_swaps: tuple[int, ...] = (), sleep: tuple[str, ...] = ()) -> int:
        token = next(self._ids)
        order = _Order(token, models, reason)
        for m in models:
            order.gens[m] = self._set_state(m, STOPPING)
            self._orders_of.setdefault(m, set()).add(token)
        self._orders[token] = order
        self._effects.append(StopModels(token, models, reason, grace, after_swaps, sleep))
        return token

    def _cancel_swap(self, swap: _Swap) -> int:
        """Forget an active swap; its worker runs on and its report is only bookkeeping."""
        del self.active[swap.model]
        del self._swap_ids[swap.swap_id]
        self._cancelled[swap.swap_id] = dict(swap.gens)
        self._cancelled_target[swap.swap_id] = swap.model
        for m in swap.evict:
            self._cancel_blocked.setdefault(m, set()).add(swap.swap_id)
        return swap.swap_id

    def _retire_stop(self, model: str) -> None:
        if any(self._orders[t].reason == "retire" for t in self._orders_of.get(model, ())):
            return
        after = (self._retire_swaps.pop(model),) if model in self._retire_swaps else ()
        self._order_stop((model,), "retire", None, after)

    def _finish_retire(self, model: str) -> None:
        self.retiring.discard(model)
        self._retire_swaps.pop(model, None)
        if model in self.models:
            # The new process for this id has never run.
            self.state[model] = STOPPED
        else:
            self.state.pop(model, None)

    def _restart_after(self, model: str, reason: str, now: float, ran: float) -> BackOff | None:
        """Rules R1 and R2 for a failure of `model`, which had been ready `ran` seconds."""
        policy = self._restart.get(model, "never")
        if policy == "never" or (reason == "exit" and policy != "always"):
            return None
        if self.shutting_down or model not in self.models or model in self.retiring:
            return None
        if ran >= RESTART_RESET_AFTER:
            self._delay.pop(model, None)
            self._attempts.pop(model, None)
        delay = self._delay.get(model, RESTART_FIRST_DELAY)
        self._delay[model] = min(delay * 2, RESTART_MAX_DELAY)
        attempt = self._attempts[model] = self._attempts.get(model, 0) + 1
        token = next(self._ids)
        self._restart_due[model] = (token, reason, attempt)
        backoff = BackOff(model, reason, delay, now + delay, token, attempt)
        self._effects.append(backoff)
        return backoff

    def _restart_now(self, model: str, token: int, now: float) -> None:
        """Rules R3 and R4: the backoff of `model` has passed."""
        due = self._restart_due.get(model)
        if due is None or due[0] != token or self.shutting_down:
            return
        del self._restart_due[model]
        _token, reason, attempt = due
        if self.state.get(model) != STOPPED or model in self.active:
            return  # R4: a request has started it
        hold = self._restart_hold(model)
        if hold is not None:
            self._effects.append(Log("info", f"router: not restarting model {model}: {hold}; "
                                             f"the next request for it starts it"))
            self._effects.append(CancelRestart(model))
            return
        self._effects.append(Log("info", f"router: restarting model {model} after a failure "
                                         f"({reason}, attempt {attempt})"))
        self._effects.append(Restart(model, reason, attempt))
        self._start_swap(model, Plan(), [])

    def _restart_hold(self, model: str) -> str | None:
        """What stands in the way of restarting a stopped `model` (R3), or None."""
        if self._blocked(model):
            return "it is being stopped"
        running = self.running()
        plan = self._plan(model, running)
        if plan.refuse is not None or plan.wait:
            return plan.refuse or "it has to wait for memory"
        evict = plan.evict
        if evict:
            return f"it would evict {' '.join(sorted(evict))}"
        if self._collides(model, evict):
            return "a swap in progress conflicts with it"
        for req in self.queue:
            if model in self.planner.eviction_for(req.model, running | {model}):
                return f"a queued request for {req.model} would have to evict it"
        return None

    def _fairness(self, now: float) -> None:
        """Rules F1-F3: starve the oldest queued request once it has waited max_wait, or
        arm the timer for when it will have."""
        while True:
            queue = self.queue
            if not queue or self.shutting_down:
                self._since = {}
                self.starved = None
                return
            since = self._since
            self._since = since = {r: since.get(r, now) for r in queue}
            starved = self.starved
            if starved is not None and starved not in since:
                # it left unserved (gave up, unloaded): what it fenced may be served now
                self.starved = starved = None
                self._drain(now)
                continue
            if starved is not None:
                if queue[0] is not starved:  # something was put in front of it (a reload)
                    queue.remove(starved)
                    queue.insert(0, starved)
                    self._publish_positions()
                fence = self.fenced()
                lifted, self._fence = self._fence - fence, fence
                if lifted:  # F4: the requests queued behind it for these may go first
                    self._drain(now)
                    continue
                return
            oldest = min(queue, key=since.__getitem__)  # the first of equals in queue order
            due = since[oldest] + self.max_wait
            if now < due:
                if self._wait_due != due:
                    self._wait_due = due
                    self._effects.append(ArmTimer(oldest.model, due, next(self._ids), "maxwait"))
                return
            self.starved = oldest
            self._wait_due = None
            queue.remove(oldest)
            queue.insert(0, oldest)
            self._publish_positions()
            self._fence = self.fenced()
            self._effects.append(Log("info", (
                f"router: a request for {oldest.model} has waited "
                f"{now - since[oldest]:.1f}s (maxWait {_seconds(self.max_wait)}s): no new "
                f"requests for [{' '.join(sorted(self._fence))}] until it is served")))
            self._drain(now)
            if self.starved is not None:
                return  # still waiting for the fenced models' requests in flight

    def _take(self, now: float | None = None) -> list:
        """The effects so far; with `now`, after the fairness rules have run (a command
        that may have changed the queue passes it)."""
        if now is not None and self.max_wait:
            self._fairness(now)
        effects, self._effects = self._effects, []
        return effects


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
