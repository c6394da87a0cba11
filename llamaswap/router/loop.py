"""Router: the one thread that owns routing state, and the tickets handlers wait on.

HTTP handler threads call ``Router.request(model_id)`` and block on the returned Ticket;
after a grant they forward the request themselves to ``Grant.process`` and call
``ticket.done()`` once. Everything that changes routing state happens on the router
thread, which feeds commands to the pure ``RouterCore`` and carries out its effects:
swaps and stops run in short-lived worker threads (``Process.start``/``stop`` block) that
report back with a command, TTL deadlines sit in a heap the loop waits on.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import queue
import threading
import time
from typing import Callable, Mapping, Sequence

from llamaswap.config.model import Config
from llamaswap.ops.events import (EventBus, ModelRestarting, ModelStopping, QueueLengthChanged,
                                  QueueWaited, SwapFinished)
from llamaswap.router.core import (ArmTimer, BackOff, CancelRestart, Log, NeedLearned, Restart,
                                   RouterCore, RouterError, ShutdownAll, StartSwap, StopModels,
                                   shutting_down_error)
from llamaswap.router.memory import MemoryBook
from llamaswap.router.planners import planner_for

_WAITING, _GRANTED, _FAILED, _ABANDONED, _DONE = "waiting", "granted", "failed", "abandoned", "done"
# Finishes and claims that do not wake the router pile up until something else does; past
# this many, each one wakes it so the piles stay short.
BACKLOG_WAKE = 256


class Grant:
    __slots__ = ("model_id", "process")

    def __init__(self, model_id: str, process):
        self.model_id = model_id
        self.process = process

    def __repr__(self) -> str:
        return f"Grant({self.model_id!r})"


class Claim(Grant):
    """A grant taken without waiting for the router (``Router.claim``); ``done()`` once
    the request has finished, as for a ticket."""
    __slots__ = ("_router", "_finished")

    def __init__(self, router: "Router", model_id: str, process):
        super().__init__(model_id, process)
        self._router = router
        self._finished = False

    def done(self) -> None:
        if not self._finished:
            self._finished = True
            self._router._finished(self.model_id)


class Ticket:
    """One request's place in the router, used by exactly one handler thread."""

    def __init__(self, router: "Router", model_id: str):
        self.model_id = model_id
        self._router = router
        self._cond = threading.Condition()
        self.position_changed = self._cond  # notified on every position or outcome change
        # held until the ticket leaves WAITING (released exactly once): waiting for the
        # outcome is one C-level lock acquire instead of a Condition wait, which allocates a
        # lock and runs Python code on both sides of every grant
        self._undecided = threading.Lock()
        self._undecided.acquire()
        self._state = _WAITING
        self._grant: Grant | None = None
        self._error: RouterError | None = None
        self.position = 0
        self._position_version = 0
        self._position_seen = 0
        self._queued_at: float | None = None  # when it joined the router's queue

    @property
    def model(self) -> str:  # the core's name for it
        return self.model_id

    # ---- handler side ----------------------------------------------------------------

    def _await_decision(self, timeout: float | None) -> None:
        if self._state != _WAITING:
            return
        if self._undecided.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._undecided.release()  # stays open for every later wait

    def wait(self, timeout: float | None = None) -> bool:
        """True once granted or failed; False on timeout or after give_up()."""
        self._await_decision(timeout)
        return self._state in (_GRANTED, _FAILED, _DONE)

    def result(self) -> Grant:
        """The grant (blocking until there is an outcome); raises RouterError on failure."""
        self._await_decision(None)
        with self._cond:
            if self._state == _FAILED:
                raise self._error
            if self._state == _ABANDONED:
                raise RouterError(500, f"request for model '{self.model_id}' was given up")
            return self._grant

    def wait_position(self, timeout: float | None = None) -> int:
        """Block until the queue position changes (or there is an outcome); the position."""
        with self._cond:
            self._cond.wait_for(lambda: self._position_version != self._position_seen
                                or self._state != _WAITING, timeout)
            self._position_seen = self._position_version
            return self.position

    def give_up(self) -> None:
        """The client went away. Before the grant: leave the queue. After it: same as done()."""
        with self._cond:
            state = self._state
            if state == _WAITING:
                self._state = _ABANDONED
                self._undecided.release()
                self._cond.notify_all()
            elif state == _GRANTED:
                self._state = _DONE
        if state == _WAITING:
            self._router._post(("give_up", self))
        elif state == _GRANTED:
            self._router._finished(self.model_id)

    def done(self) -> None:
        """The granted request finished. Extra calls are ignored."""
        with self._cond:
            if self._state != _GRANTED:
                return
            self._state = _DONE
        self._router._finished(self.model_id)

    # ---- router side (called on the router thread) -----------------------------------

    def offer_grant(self) -> bool:
        process = self._router._processes[self.model_id]
        with self._cond:
            if self._state != _WAITING:
                return False
            self._grant = Grant(self.model_id, process)
            self._state = _GRANTED
            self._undecided.release()
            self._cond.notify_all()
            return True

    def offer_error(self, error: RouterError) -> bool:
        with self._cond:
            if self._state != _WAITING:
                return False
            self._error = error
            self._state = _FAILED
            self._undecided.release()
            self._cond.notify_all()
            return True

    def set_position(self, position: int) -> None:
        waited = None
        with self._cond:
            if position != self.position:
                if position and self._queued_at is None:
                    self._queued_at = self._router._clock()
                elif not position and self._queued_at is not None:
                    waited = self._router._clock() - self._queued_at
                    self._queued_at = None
                self.position = position
                self._position_version += 1
                self._cond.notify_all()
        if waited is not None:
            self._router._queue_waited(self.model_id, waited)


class Router:
    def __init__(self, config: Config, processes: Mapping[str, object], *, log,
                 events: EventBus | None = None, clock: Callable[[], float] = time.monotonic,
                 memory=None):
        """`memory`: the edge that measures (ops.memory_monitor.MemoryMonitor): it gives the
        budgets (``budgets_for(config)``, no I/O), what was learned before
        (``initial_learned()``) and takes what is learned now (``learned(...)``, never
        blocks); None: no memory management."""
        self.config = config
        self._processes = dict(processes)
        self._log = log
        self._events = events
        self._clock = clock
        self._memory = memory
        self._book = MemoryBook(*memory.initial_learned()) if memory is not None else None
        # SimpleQueue: put and get are single C calls (queue.Queue runs a Python Condition)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._core = RouterCore(
            self._processes, self._planner_for(config),
            ttl={m: p.config.ttl for m, p in self._processes.items()},
            ready={m for m, p in self._processes.items() if _state(p) == "ready"},
            now=clock(), priority=config.routing.scheduler.fifo.priority,
            max_wait=config.routing.scheduler.fifo.max_wait, restart=_restart(self._processes),
            sleepable=_sleepable(self._processes), book=self._book_for(config))
        self._startup_effects = self._core._take()
        self._timers: list = []
        self._seq = itertools.count()
        self._retired: dict[str, object] = {}  # model -> old Process being drained or stopped
        self._swap_finished: dict[int, threading.Event] = {}
        self._calls: dict[int, threading.Event] = {}
        self._listening: dict[int, object] = {}
        self._noticed: set[int] = set()  # processes whose crash was noticed before its report
        self._lock = threading.Lock()
        self._shutting_down = False
        self._thread: threading.Thread | None = None
        self._last_queue_length = 0
        self._listen(self._processes)
        # Finished requests, with the time they finished. Handler threads only append here;
        # the router thread applies them before anything else it does. A finish only needs
        # the router awake when it can do more than lower the in-flight count and arm a TTL
        # timer (a queue waits, a model drains): the router publishes the models for which
        # nothing more can happen in _quiet_done, and handlers post a wake-up for every other
        # finish. The TTL timer is armed from the finish time, and while a model with a TTL
        # has requests in flight this thread sleeps at most that TTL: it is never late.
        self._pending_done: collections.deque[tuple[str, float]] = collections.deque()
        self._ttls = _ttls(self._processes)
        self._all_models = frozenset(self._processes)
        self._quiet_done: frozenset[str] = frozenset()
        # Standing grants. After every decision the router publishes, in _open, the models a
        # request would be granted at once with no other effect (core.grantable) and their
        # processes. A handler takes such a grant itself (claim): under _gate it checks
        # _open and appends the model to _claims. Before it changes any state the router
        # empties _open under _gate and reports every claim to the core, so no claim can
        # slip in between its last look at the claims and a decision (docs/architecture.md).
        self._gate = threading.Lock()
        self._open: dict[str, object] = {}
        self._claims: collections.deque[str] = collections.deque()

    # ---- public API (any thread) ---------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self.run, name="router", daemon=True)
                self._thread.start()

    def request(self, model_id: str) -> Ticket:
        ticket = Ticket(self, model_id)
        with self._lock:
            if not self._shutting_down:
                self._commands.put(("request", ticket))
                return ticket
        ticket.offer_error(shutting_down_error(model_id))
        return ticket

    def claim(self, model_id: str) -> Claim | None:
        """The grant for ``model_id`` without a round trip to the router thread when the
        router has it open (ready, nothing to evict); None otherwise: use ``request``."""
        with self._gate:
            process = self._open.get(model_id)
            if process is None:
                return None
            self._claims.append(model_id)
            backlog = len(self._claims)
        if backlog >= BACKLOG_WAKE:
            self._commands.put(("wake",))
        return Claim(self, model_id, process)

    def unload(self, models: Sequence[str] | None = None, grace: float | None = None) -> None:
        """Stop `models` (all when None) with `grace` (default: each model's unload_timeout);
        their waiting and queued requests get an error. Returns when they are stopped."""
        done = threading.Event()
        with self._lock:
            if self._shutting_down:
                return
            self._commands.put(("unload", None if models is None else list(models), grace, done))
        done.wait()

    def shutdown(self, grace: float | None = None) -> None:
        """Answer every waiter with a "shutting down" error and stop every process."""
        done = threading.Event()
        with self._lock:
            if self._shutting_down:
                raise RouterError(503, "router shutdown already in progress")
            self._shutting_down = True
            self._commands.put(("shutdown", grace, done))
        self.start()
        done.wait()
        self._thread.join()

    def reconfigure(self, config: Config, processes: Mapping[str, object],
                    stop: Sequence[str]) -> None:
        """Route with `config` and `processes` from now on. Models in `stop` (and models
        no longer configured) get no new grants; once their in-flight requests finish
        their old process is stopped and new requests for them start the new one. Returns
        once the new config is in effect, without waiting for the drain."""
        done = threading.Event()
        with self._lock:
            if self._shutting_down:
                return
            self._commands.put(("reconfigure", config, dict(processes), list(stop), done))
        done.wait()

    def measured(self, model_id: str, usage: Mapping[str, int], asleep: bool) -> None:
        """A reading of what a resident model uses (bytes per managed device), from the
        memory monitor's thread."""
        self._commands.put(("measured", model_id, dict(usage), asleep))

    def inspect(self, fn: Callable[[RouterCore], object], timeout: float = 5.0) -> object:
        """``fn(core)`` run on the router thread (a consistent read of routing state for
        /api/memory and /metrics); None when the router does not answer in time."""
        box: list = []
        done = threading.Event()
        self._commands.put(("inspect", fn, box, done))
        done.wait(timeout)
        return box[0] if box else None

    def queue_length(self) -> int:
        return self._core.queue_length()

    def in_flight(self, model_id: str) -> int:
        # read the core first: claims and finishes move from the deques to the core
        count = self._core.in_flight_of(model_id) + self._claims.count(model_id)
        return max(0, count - sum(1 for m, _ in list(self._pending_done) if m == model_id))

    # ---- the router thread ---------------------------------------------------------------

    def run(self) -> None:
        try:
            self._apply(self._startup_effects)
            while True:
                self._settle()
                try:
                    command = self._commands.get(timeout=self._sleep_limit())
                except queue.Empty:
                    command = None
                now = self._clock()
                self._catch_up(now)
                while self._timers and self._timers[0][0] <= now:
                    _deadline, _seq, kind, model, token = heapq.heappop(self._timers)
                    self._guarded(lambda: self._apply(
                        self._core.timer_expired(kind, model, token, now)))
                if command is not None and command[0] != "wake":
                    try:
                        if self._handle(command, now):
                            return
                    except Exception as exc:  # as _guarded, without a closure per command
                        self._log.error(f"router: internal error: {exc!r}")
                self._publish_queue_length()
        finally:
            for event in self._calls.values():
                event.set()

    def _sleep_limit(self) -> float | None:
        """How long the loop may wait for a command: until the next timer, and no longer
        than the TTL of a model with requests in flight (their finishes do not wake it)."""
        limit = None
        if self._timers:
            limit = max(0.0, self._timers[0][0] - self._clock())
        for model in self._core.in_flight:
            ttl = self._ttls.get(model)
            if ttl is not None and (limit is None or ttl < limit):
                limit = ttl
        return limit

    def _finished(self, model: str) -> None:
        """A granted request ended (any thread)."""
        self._pending_done.append((model, self._clock()))
        # read after the append: see _settle
        if model not in self._quiet_done or len(self._pending_done) >= BACKLOG_WAKE:
            self._commands.put(("wake",))

    def _catch_up(self, now: float) -> None:
        """Close the gate, then hand the core every claim and finish that came in. Claims
        go first: a finish may be for a claim in the same batch."""
        if self._open:
            with self._gate:
                self._open = {}
        core = self._core
        claims, finishes = self._claims, self._pending_done
        while claims or finishes:
            try:
                if claims:
                    self._apply(core.claimed(claims.popleft(), now))
                else:
                    model, at = finishes.popleft()
                    self._apply(core.request_done(model, at))
            except Exception as exc:  # a bug must not take routing down with it
                self._log.error(f"router: internal error: {exc!r}")

    def _settle(self) -> None:
        """Apply the finished requests, then publish which models may finish without waking
        this thread, then open the gate for claims. A handler appends first and reads
        _quiet_done second; this thread writes _quiet_done first and looks at the deque
        second, so every finish is either seen here or followed by a wake-up."""
        core = self._core
        while True:
            self._catch_up(self._clock())
            if core.queue or core.shutting_down:
                quiet = frozenset()
            elif core.retiring:
                quiet = self._all_models - core.retiring
            else:
                quiet = self._all_models
            self._quiet_done = quiet
            if not self._pending_done:
                break
        try:
            opened = {m: self._processes[m] for m in core.grantable() if m in self._processes}
        except Exception as exc:  # a planner bug: every request takes the slow path
            self._log.error(f"router: internal error: {exc!r}")
            opened = {}
        with self._gate:
            self._open = opened

    def _guarded(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # a bug must not take routing down with it
            self._log.error(f"router: internal error: {exc!r}")

    def _handle(self, command: tuple, now: float) -> bool:
        kind = command[0]
        core = self._core
        if kind == "request":
            self._notice_crash(command[1].model_id, now)
            self._apply(core.request(command[1], now))
        elif kind == "done":
            self._apply(core.request_done(command[1], now))
        elif kind == "give_up":
            self._apply(core.give_up(command[1], now))
        elif kind == "swap_done":
            _, swap_id, model, error, seconds, asleep = command
            self._swap_finished.pop(swap_id, None)
            if self._events is not None:
                self._events.publish(SwapFinished(model, seconds, error is None))
            self._apply(core.swap_done(swap_id, error, now, asleep))
        elif kind == "stops_done":
            token, asleep = command[1], command[2]
            self._apply(core.stops_done(token, now, asleep))
            for model in [m for m in self._retired if m not in core.retiring]:
                del self._retired[model]
            event = self._calls.pop(token, None)
            if event is not None:
                event.set()
        elif kind == "exited":
            _, model, process, code = command
            if id(process) in self._noticed:
                self._noticed.discard(id(process))  # _notice_crash told the core already
            elif self._processes.get(model) is process and model not in self._retired:
                self._stopped_itself(model, "exit" if code == 0 else "crash")
                self._apply(core.process_exited(model, now, code))
        elif kind == "unhealthy":
            _, model, process = command
            if self._processes.get(model) is process and model not in self._retired:
                self._apply(core.health_failed(model, now))
        elif kind == "unload":
            _, models, grace, done = command
            token, effects = core.unload(models, grace, now)
            self._calls[token] = done
            self._apply(effects)
        elif kind == "reconfigure":
            _, config, processes, stop, done = command
            self._reconfigure(config, processes, stop, now)
            done.set()
        elif kind == "shutdown":
            _, grace, done = command
            token, effects = core.shutdown(grace, now)
            self._calls[token] = done
            self._apply(effects)
        elif kind == "measured":
            _, model, usage, asleep = command
            self._apply(core.measured(model, usage, asleep, now))
        elif kind == "inspect":
            _, fn, box, done = command
            try:
                box.append(fn(core))
            finally:
                done.set()
        elif kind == "shutdown_done":
            event = self._calls.pop(command[1], None)
            if event is not None:
                event.set()
            return True
        return False

    def _notice_crash(self, model: str, now: float) -> None:
        """A backend that crashed may not have reported yet (its exit listener runs after
        the cleanup); never fast-path a request to it. Every stop the core orders marks
        the model stopping first, so a ready model whose process is not ready crashed."""
        process = self._processes.get(model)
        if (process is not None and self._core.state.get(model) in ("ready", "sleeping")
                and _state(process) in ("stopping", "stopped")):
            self._noticed.add(id(process))
            self._stopped_itself(model, "crash")
            self._apply(self._core.process_exited(model, now))

    def _stopped_itself(self, model: str, reason: str) -> None:
        """ModelStopping for a backend the router did not stop ("crash", "exit")."""
        events = self._events
        if self._core.state.get(model) == "ready" and events is not None:
            events.publish(ModelStopping(model, reason))

    def _reconfigure(self, config: Config, processes: dict, stop: list, now: float) -> None:
        old = self._processes
        retire = {m for m in stop if m in old} | (set(old) - set(processes))
        for model in retire:
            self._retired.setdefault(model, old[model])
        self.config = config
        self._processes = processes
        self._quiet_done = frozenset()  # until _settle publishes it for the new config
        self._ttls = _ttls(processes)
        self._all_models = frozenset(processes)
        self._listen(processes)
        self._core.book = self._book_for(config)
        self._apply(self._core.reconfigure(
            processes, self._planner_for(config),
            ttl={m: p.config.ttl for m, p in processes.items()},
            stop=sorted(retire), now=now, priority=config.routing.scheduler.fifo.priority,
            max_wait=config.routing.scheduler.fifo.max_wait, restart=_restart(processes),
            sleepable=_sleepable(processes)))
        for model in [m for m in self._retired if m not in self._core.retiring]:
            del self._retired[model]
        # forget the processes of earlier configs (one per changed model per reload, kept
        # forever before: the soak benchmark's slow RSS rise)
        live = {id(p) for p in processes.values()} | {id(p) for p in self._retired.values()}
        self._listening = {k: p for k, p in self._listening.items() if k in live}

    def _planner_for(self, config: Config):
        if self._memory is None or config.memory is None:
            return planner_for(config)
        return planner_for(config, (self._memory.budgets_for(config), self._book))

    def _book_for(self, config: Config) -> MemoryBook | None:
        return self._book if config.memory is not None else None

    def _apply(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, StartSwap):
                self._start_swap(effect)
            elif isinstance(effect, StopModels):
                self._start_stop(effect)
            elif isinstance(effect, ArmTimer):
                heapq.heappush(self._timers, (effect.deadline, next(self._seq), effect.kind,
                                              effect.model, effect.token))
            elif isinstance(effect, ShutdownAll):
                self._start_shutdown(effect)
            elif isinstance(effect, BackOff):
                process = self._processes.get(effect.model)
                if process is not None:
                    process.back_off(effect.reason, effect.delay)
                heapq.heappush(self._timers, (effect.deadline, next(self._seq), "restart",
                                              effect.model, effect.token))
            elif isinstance(effect, CancelRestart):
                process = self._process_for_stop(effect.model)
                if process is not None:
                    process.cancel_backoff()
            elif isinstance(effect, Restart):
                process = self._processes.get(effect.model)
                if process is not None:
                    process.count_restart()
                if self._events is not None:
                    self._events.publish(ModelRestarting(effect.model, effect.reason, effect.attempt))
            elif isinstance(effect, Log):
                getattr(self._log, effect.level)(effect.message)
            elif isinstance(effect, NeedLearned) and self._memory is not None:
                self._memory.learned(effect.model, effect.command, effect.asleep, effect.need)

    def _publish_queue_length(self) -> None:
        length = self._core.queue_length()
        if length != self._last_queue_length:
            self._last_queue_length = length
            if self._events is not None:
                self._events.publish(QueueLengthChanged(length))

    def _queue_waited(self, model: str, seconds: float) -> None:
        events = self._events
        if events is not None and events.wants(QueueWaited):
            events.publish(QueueWaited(model, seconds))

    def _post(self, command: tuple) -> None:
        self._commands.put(command)

    def _listen(self, processes: Mapping[str, object]) -> None:
        for process in processes.values():
            if id(process) in self._listening:
                continue
            self._listening[id(process)] = process  # keeps the id from being reused

            def exited(model_id, returncode, process=process) -> None:
                self._post(("exited", model_id, process, returncode))

            def unhealthy(model_id, _detail, process=process) -> None:
                self._post(("unhealthy", model_id, process))

            process.add_exit_listener(exited)
            process.add_health_listener(unhealthy)

    def _process_for_stop(self, model: str):
        return self._retired.get(model) or self._processes.get(model)

    # ---- workers ------------------------------------------------------------------------

    def _stopping(self, models, reason_of, for_model: str = "") -> None:
        """Publish ModelStopping for each model that is running (a stop of a stopped model
        is only bookkeeping)."""
        events = self._events
        if events is None or not events.wants(ModelStopping):
            return
        for model in models:
            process = self._process_for_stop(model)
            if process is not None and _state(process) not in ("stopped", "shutdown"):
                events.publish(ModelStopping(model, reason_of(model), for_model))

    def _start_swap(self, effect: StartSwap) -> None:
        self._stopping(effect.evict, lambda m: effect.reasons.get(m, "swap"), effect.model)
        target = self._processes[effect.model]
        evict = [p for p in (self._process_for_stop(m) for m in effect.evict) if p is not None]
        finished = threading.Event()
        self._swap_finished[effect.swap_id] = finished

        def work() -> None:
            started = time.monotonic()
            error = None
            asleep: set = set()
            try:
                asleep = _stop_all(evict, None, self._log, sleep=effect.sleep)
                target.start()
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            finally:
                self._post(("swap_done", effect.swap_id, effect.model, error,
                            time.monotonic() - started, frozenset(asleep)))
                finished.set()

        _spawn(work, f"swap-{effect.model}")

    def _start_stop(self, effect: StopModels) -> None:
        self._stopping(effect.models, lambda _m: effect.reason)
        processes = [p for p in (self._process_for_stop(m) for m in effect.models) if p is not None]
        waits = [self._swap_finished[s] for s in effect.after_swaps if s in self._swap_finished]

        def work() -> None:
            asleep: set = set()
            try:
                asleep = _stop_all(processes, effect.grace, self._log, sleep=effect.sleep)
                if waits:
                    # A cancelled swap may still have been about to start one of these.
                    for event in waits:
                        event.wait()
                    _stop_all(processes, effect.grace, self._log)
                    asleep = set()
            finally:
                self._post(("stops_done", effect.token, frozenset(asleep)))

        _spawn(work, f"stop-{effect.reason}")

    def _start_shutdown(self, effect: ShutdownAll) -> None:
        self._stopping(sorted(set(self._processes) | set(self._retired)), lambda _m: "shutdown")
        processes = list(self._processes.values()) + list(self._retired.values())
        waits = list(self._swap_finished.values())

        def work() -> None:
            try:
                _stop_all(processes, effect.grace, self._log, terminal=True)
                for event in waits:
                    event.wait()  # their start() fails at once: the processes are shut down
            finally:
                self._post(("shutdown_done", effect.token))

        _spawn(work, "router-shutdown")


def _restart(processes: Mapping[str, object]) -> dict[str, str]:
    """The restart policy of each model that has one."""
    return {m: p.config.restart for m, p in processes.items() if p.config.restart != "never"}


def _ttls(processes: Mapping[str, object]) -> dict[str, float]:
    """The TTL of each model that has one."""
    return {m: p.config.ttl for m, p in processes.items() if p.config.ttl and p.config.ttl > 0}


def _state(process) -> str:
    state = process.state
    return getattr(state, "value", state)


def _spawn(fn, name: str) -> None:
    threading.Thread(target=fn, name=name, daemon=True).start()


def _sleepable(processes: Mapping[str, object]) -> frozenset[str]:
    return frozenset(m for m, p in processes.items() if getattr(p.config, "sleep", ""))


def _stop_all(processes: list, grace: float | None, log, terminal: bool = False,
              sleep: Sequence[str] = ()) -> set:
    """Stop every process in parallel (each with its own unload_timeout unless `grace`);
    those named in `sleep` are put to sleep instead (a failed sleep stops them). The ids
    of the processes that went to sleep."""
    asleep = set()

    def stop(process) -> None:
        wait = process.config.unload_timeout if grace is None else grace
        try:
            if terminal:
                process.shutdown(wait)
            elif process.model_id in sleep:
                if process.sleep():
                    asleep.add(process.model_id)
            else:
                process.stop(wait)
        except Exception as exc:
            log.warn(f"router: stopping {process.model_id} failed: {exc}")

    if len(processes) == 1:
        stop(processes[0])
        return asleep
    threads = [threading.Thread(target=stop, args=(p,), name=f"stop-{p.model_id}", daemon=True)
               for p in processes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return asleep
