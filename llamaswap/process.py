"""Process: one local model's backend, from spawn to reaped exit.

The Process owns the *how* (spawn, readiness, stop, cleanup); the router owns the *when*.
All state lives behind one lock and changes only through :meth:`Process._set_state`, which
checks the transition table, publishes ``ProcessStateChanged`` and logs the change.

    stopped --start--> starting --healthy--> ready --stop/exit--> stopping --> stopped
    starting --failed start--> stopped          starting --stop--> stopping --> stopped
    ready --sleep--> sleeping --start (wake)--> starting     sleeping --stop/exit--> stopping
    stopped --shutdown--> shutdown (terminal)
    stopped --back_off--> backoff --start--> starting      backoff --stop/cancel--> stopped

``backoff`` is a stopped backend whose restart policy has a restart scheduled (the router
decides when); a start (the restart, or a request) goes ahead at once. While ready, a
backend with ``healthCheckInterval`` is probed by a :class:`procutil.HealthWatch`; when it
fails ``healthCheckFailures`` times in a row the health listeners are told (the router then
orders the stop). ``failure`` records the last crash, clean exit, failed health watch or
failed start.

A model with ``sleep``/``wake`` actions can sleep instead of stopping (vLLM's sleep mode,
SGLang's memory release): the backend keeps running with its memory released. A sleep that
fails stops it; a wake that fails stops it and starts it afresh, inside the same start().

A backend that exits on its own while ready passes through ``stopping`` while what is left of
its process group is cleared and it is reaped, so a start() in that window waits and then
starts a fresh backend instead of being told "ready" about a dead one.
"""

from __future__ import annotations

import enum
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

from llamaswap import procutil
from llamaswap.config.command import split_command, strip_comments
from llamaswap.config.errors import ConfigError
from llamaswap.config.memory import parse_action
from llamaswap.config.gocompat import go_duration
from llamaswap.config.model import ModelConfig
from llamaswap.ops.events import EventBus, HealthCheckFailed, ProcessStateChanged
from llamaswap.ops.logs import LogMonitor, ProxyLogger

PROBE_FIRST_INTERVAL = 0.01  # seconds between the first two health probes
# The interval doubles up to a cap. Most loads that finish quickly (small models, warm page
# cache) are seen within ~12 ms with a 25 ms cap; after FAST_PROBE_PERIOD the cap relaxes so a
# two-minute load does not fill the backend's log with health-check lines (llama-server and
# uvicorn log every request).
PROBE_FAST_MAX_INTERVAL = 0.025
FAST_PROBE_PERIOD = 3.0
PROBE_MAX_INTERVAL = 0.25
PROBE_TIMEOUT = 1.0  # each probe's own connect+response timeout
ERROR_TAIL_LINES = 10
OUTPUT_DRAIN_TIMEOUT = 1.0  # wait for a dead child's last output before quoting it
HEALTH_WATCH_TIMEOUT = 5.0  # a watch probe's timeout (never more than the interval)


class ProcessState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    SHUTDOWN = "shutdown"
    BACKOFF = "backoff"
    SLEEPING = "sleeping"


S = ProcessState
TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset({S.STARTING, S.SHUTDOWN, S.BACKOFF}),
    S.STARTING: frozenset({S.READY, S.STOPPING, S.STOPPED}),
    S.READY: frozenset({S.STOPPING, S.SLEEPING}),
    S.SLEEPING: frozenset({S.STARTING, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.SHUTDOWN: frozenset(),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
}


@dataclass(frozen=True)
class Failure:
    """Why a backend last went down on its own. ``reason``: "crash" (exited with an error
    or a signal while ready), "exit" (exited with code 0 while ready), "health" (its health
    watch failed) or "start-failed"; ``detail`` says more; ``at`` is time.time()."""
    reason: str
    detail: str
    at: float


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: always a bug in this module."""


def check_transition(old: ProcessState, new: ProcessState) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"illegal process state transition {old.value} -> {new.value}")


class StartError(Exception):
    """A start that did not reach ready. ``str()`` names the model and what failed."""

    def __init__(self, message: str, *, aborted: bool = False, retry: bool = False):
        super().__init__(message)
        self.message = message
        self.aborted = aborted
        self.retry = retry  # a failed wake: the backend is stopped, start() starts it afresh

    def copy(self) -> "StartError":
        return StartError(self.message, aborted=self.aborted, retry=self.retry)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown exit code"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


class _Attempt:
    """One start(): shared by the caller that runs it and every caller that joins it."""

    def __init__(self) -> None:
        self.child: procutil.Child | None = None
        self.spawned = threading.Event()  # the spawn finished (child set, or it failed)
        self.wake = threading.Event()  # child exited or stop requested: re-check at once
        self.aborted = False
        self.done = threading.Event()
        self.error: StartError | None = None

    def finish(self, error: StartError | None) -> None:
        """First outcome wins."""
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Process:
    def __init__(self, config: ModelConfig, *, log: LogMonitor, proxy_log: ProxyLogger,
                 events: EventBus | None = None, spawner: procutil.Spawner | None = None):
        self.model_id = config.id
        self.config = config
        self.log = log
        self._proxy_log = proxy_log
        self._events = events
        self._spawner = spawner
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = ProcessState.STOPPED
        self._attempt: _Attempt | None = None
        self._child: procutil.Child | None = None
        self._closing = False
        self._stop_hooks: tuple[Callable[[], None], ...] = ()
        self._start_hooks: tuple[Callable[[str], None], ...] = ()
        self._exit_listeners: tuple[Callable[[str, int | None], None], ...] = ()
        self._health_listeners: tuple[Callable[[str, str], None], ...] = ()
        self._watch: procutil.HealthWatch | None = None
        self.pid: int | None = None
        self.ready_at: float | None = None
        self.failure: Failure | None = None  # the last time it went down on its own
        self.restarts = 0  # restarts the restart policy began
        self.restart_at: float | None = None  # time.time() of the pending restart (backoff)
        self.restart_delay: float | None = None  # its backoff, in seconds
        self._run_started = 0.0  # time.time() of the latest start

    # -- public ----------------------------------------------------------------------------
    @property
    def state(self) -> ProcessState:
        return self._state

    def add_stop_hook(self, fn: Callable[[], None]) -> None:
        self._stop_hooks = self._stop_hooks + (fn,)

    def add_exit_listener(self, fn: Callable[[str, int | None], None]) -> None:
        self._exit_listeners = self._exit_listeners + (fn,)

    def add_health_listener(self, fn: Callable[[str, str], None]) -> None:
        """``fn(model_id, detail)`` when the health watch declares the ready backend dead
        (called from the watch thread; the backend keeps running until someone stops it)."""
        self._health_listeners = self._health_listeners + (fn,)

    def back_off(self, reason: str, delay: float) -> bool:
        """A restart is due in `delay` seconds: stopped -> backoff. False (and nothing
        changes) unless the backend is stopped."""
        with self._lock:
            if self._state is not S.STOPPED or self._closing:
                return False
            self.restart_at = time.time() + delay
            self.restart_delay = delay
            self._set_state(S.BACKOFF)
        self._proxy_log.info(f"<{self.model_id}> restarting in {delay:g}s ({reason})")
        return True

    def cancel_backoff(self) -> None:
        """The pending restart was dropped: backoff -> stopped."""
        with self._lock:
            if self._state is S.BACKOFF:
                self.restart_at = None
                self._set_state(S.STOPPED)

    def count_restart(self) -> None:
        with self._lock:
            self.restarts += 1

    def run_failure(self) -> Failure | None:
        """The failure that ended the backend's latest run (a crash, a clean exit, a failed
        health watch), for the error of a request it cut; None while it runs, or after a
        stop that was no failure."""
        failure = self.failure
        if (failure is None or failure.reason == "start-failed" or failure.at < self._run_started
                or self._state in (S.READY, S.STARTING)):
            return None
        return failure

    def wait_exit(self, pid: int | None, timeout: float) -> bool:
        """True once the backend ``pid`` is no longer this model's ready process (it exited,
        or a stop began), waiting up to ``timeout`` seconds; False if it is still ready. A
        refused connection asks this: the exit watcher may not have seen the exit yet."""
        with self._lock:
            return self._changed.wait_for(
                lambda: self._state is not S.READY or self.pid != pid, timeout)

    def add_start_hook(self, fn: Callable[[str], None]) -> None:
        """``fn(model_id)`` runs in the starting thread right before a backend is spawned
        (not before a wake): the memory monitor reads the GPUs there."""
        self._start_hooks = self._start_hooks + (fn,)

    def start(self) -> None:
        while True:
            attempt = self._start_attempt()
            if attempt is None:
                return
            attempt.done.wait()
            if attempt.error is None:
                return
            if not attempt.error.retry:
                raise attempt.error.copy()

    def _start_attempt(self) -> _Attempt | None:
        """Begin or join a start (a wake when sleeping); None when already ready."""
        with self._lock:
            while True:
                if self._closing or self._state is S.SHUTDOWN:
                    raise StartError(f"[{self.model_id}] shutdown")
                if self._state is S.READY:
                    return None
                if self._state is S.STARTING:
                    attempt = self._attempt
                    assert attempt is not None
                    return attempt
                if self._state is S.STOPPING:
                    self._changed.wait()
                    continue
                run = self._run_wake if self._state is S.SLEEPING else self._run_start
                attempt = _Attempt()
                self._attempt = attempt
                self.ready_at = None
                self.restart_at = None
                self._run_started = time.time()
                self._set_state(S.STARTING)
                self._lock.release()
                try:
                    run(attempt)
                except BaseException as exc:  # a bug: never leave joiners waiting forever
                    self._fail_start(attempt, attempt.child,
                                     StartError(f"[{self.model_id}] start failed: {exc!r}"))
                    raise
                finally:
                    self._lock.acquire()
                return attempt

    def sleep(self) -> bool:
        """Put a ready backend to sleep with its ``sleep`` action (ready -> sleeping). A
        sleep that fails or times out (or a model that cannot sleep) is stopped instead.
        True when it sleeps."""
        with self._lock:
            if self._state is S.SLEEPING:
                return True
            child = self._child if self._state is S.READY else None
        error = "it cannot sleep" if not self.config.sleep else None
        if child is not None and error is None:
            error = self._act("sleep", child)
            with self._lock:
                if (error is None and self._state is S.READY and self._child is child
                        and not child.exited.is_set()):
                    self._set_state(S.SLEEPING)
                    return True
        if child is not None and error is not None:
            self._proxy_log.warn(f"<{self.model_id}> sleep failed ({error}); stopping it instead")
        self.stop(self.config.unload_timeout)
        return False

    def stop(self, grace: float) -> None:
        with self._lock:
            while True:
                if self._state in (S.STOPPED, S.SHUTDOWN):
                    return
                if self._state is S.BACKOFF:  # nothing runs: only the restart is called off
                    self.restart_at = None
                    self._set_state(S.STOPPED)
                    return
                if self._state is S.STOPPING:
                    self._changed.wait()
                    continue
                attempt = self._attempt if self._state is S.STARTING else None
                if attempt is not None:
                    attempt.aborted = True
                    attempt.finish(StartError(
                        f"[{self.model_id}] start aborted: the model is being stopped",
                        aborted=True))
                    attempt.wake.set()
                child = self._child if attempt is None else None
                self._set_state(S.STOPPING)
                break
        if attempt is not None:
            attempt.spawned.wait()
            child = attempt.child
        if child is not None:
            child.terminate(grace, cmd_stop=self._cmd_stop_argv(child), spawner=self._spawner,
                            before_wait=self._run_stop_hooks, report=self._report)
            child.join_output(OUTPUT_DRAIN_TIMEOUT)
            self._proxy_log.info(f"<{self.model_id}> stopped ({_describe_exit(child.returncode)})")
        with self._lock:
            self._child = None
            self.pid = None
            self.ready_at = None
            self._set_state(S.STOPPED)

    def shutdown(self, grace: float) -> None:
        with self._lock:
            self._closing = True
        self.stop(grace)
        with self._lock:
            if self._state is S.STOPPED:
                self._set_state(S.SHUTDOWN)

    # -- start -----------------------------------------------------------------------------
    def _run_start(self, attempt: _Attempt) -> None:
        """Runs in the thread of the start() that began the attempt; never raises."""
        cfg = self.config
        error: StartError | None = None
        if not cfg.proxy:
            error = StartError(f"[{self.model_id}] upstream proxy missing")
        elif not cfg.argv:
            error = StartError(f"[{self.model_id}] empty command")
        child = None
        if error is None and not attempt.aborted:
            if procutil.port_in_use(cfg.proxy):
                # an orphan or another program: its 200 would be taken for our backend's
                self._proxy_log.warn(f"<{self.model_id}> something already listens on "
                                     f"{cfg.proxy} before the backend was started")
            for hook in self._start_hooks:
                try:
                    hook(self.model_id)
                except Exception as exc:  # a hook's bug must not fail the start
                    self._proxy_log.error(f"<{self.model_id}> start hook failed: {exc!r}")
            env = procutil.build_env(cfg.env)
            try:
                popen = self._spawner_or_default().spawn(cfg.argv, env)
            except (OSError, ValueError, TypeError, subprocess.SubprocessError) as exc:
                error = StartError(f"[{self.model_id}] failed to start command "
                                   f"'{' '.join(cfg.argv)}': {exc}")
            else:
                child = procutil.Child(popen, env, self.log, on_exit=self._child_exited,
                                       name=f"model:{self.model_id}")
        with self._lock:
            attempt.child = child
            if child is not None:
                self._child = child
                self.pid = child.pid
        attempt.spawned.set()
        if child is None:
            self._fail_start(attempt, None, error)
            return
        self._proxy_log.debug(f"<{self.model_id}> started pid {child.pid}: {' '.join(cfg.argv)}")
        error = self._wait_ready(attempt, child)
        if error is None:
            with self._lock:
                if attempt.aborted or self._attempt is not attempt:
                    return
                if not child.exited.is_set():  # (else someone else answered on the port)
                    self.ready_at = time.time()
                    self._set_state(S.READY)
                    attempt.finish(None)
                    return
        self._fail_start(attempt, child, error)

    def _run_wake(self, attempt: _Attempt) -> None:
        """Runs in the thread of the start() that began the attempt; never raises. Sends
        ``wake``, then waits for the health check as a start does."""
        with self._lock:
            child = self._child
            attempt.child = child
        attempt.spawned.set()
        if child is None or child.exited.is_set():
            error = "the backend had exited"
        else:
            self._proxy_log.info(f"<{self.model_id}> waking up")
            since = time.monotonic()
            error = self._act("wake", child)
            if error is None:
                failed = self._wait_ready(attempt, child, since)
                if failed is None and not child.exited.is_set():
                    with self._lock:
                        if attempt.aborted or self._attempt is not attempt:
                            return
                        self.ready_at = time.time()
                        self._set_state(S.READY)
                        attempt.finish(None)
                        return
                error = failed.message if failed is not None else "the backend exited"
        if attempt.aborted:
            return  # the stop that aborted it finishes the attempt
        self._fail_start(attempt, child, StartError(
            f"[{self.model_id}] wake failed ({error}); stopping it and starting it again",
            retry=True))

    def _act(self, name: str, child: procutil.Child) -> str | None:
        """Run the model's ``sleep`` or ``wake`` action; None on success, else what failed."""
        text = getattr(self.config, name)
        try:
            action = parse_action(text)
        except ValueError as exc:
            return str(exc)
        timeout = float(self.config.health_check_timeout)
        if action.is_http:
            url = procutil.health_url(self.config.proxy, action.path)
            status = procutil.probe(url, timeout, method=action.method)
            if status is None:
                return f"{action.method} {action.path}: no answer within {timeout:g}s"
            return None if 200 <= status < 300 else f"{action.method} {action.path} answered {status}"
        try:
            argv = split_command(strip_comments(action.command.replace("${PID}", str(child.pid))))
        except ConfigError as exc:
            return f"cannot parse {name}: {exc}"
        code = procutil.run_stop_command(argv, child.env, timeout, self._spawner_or_default(),
                                         self.log, self._report, label=name)
        return None if code == 0 else f"{name} command {'could not start' if code is None else f'exited with code {code}'}"

    def _wait_ready(self, attempt: _Attempt, child: procutil.Child,
                    since: float | None = None) -> StartError | None:
        cfg = self.config
        if cfg.check_endpoint.strip().lower() == "none":
            return None
        url = procutil.health_url(cfg.proxy, cfg.check_endpoint)
        timeout = float(cfg.health_check_timeout)
        since = child.started if since is None else since
        deadline = since + timeout
        interval = PROBE_FIRST_INTERVAL
        while True:
            if attempt.aborted:
                return attempt.error
            if child.exited.is_set():
                return None  # the caller sees the exit and reports it after the cleanup
            left = deadline - time.monotonic()
            status = procutil.probe(url, min(PROBE_TIMEOUT, max(left, 0.05)))
            if status == 200:
                self._proxy_log.info(f"<{self.model_id}> Health check passed on {url}")
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return StartError(f"[{self.model_id}] health check timed out after "
                                  f"{go_duration(timeout)}" + self._tail_suffix(child))
            attempt.wake.wait(min(interval, left))
            fast = time.monotonic() - since < FAST_PROBE_PERIOD
            interval = min(interval * 2, PROBE_FAST_MAX_INTERVAL if fast else PROBE_MAX_INTERVAL)

    def _exit_error(self, child: procutil.Child) -> StartError:
        return StartError(f"[{self.model_id}] upstream command exited prematurely "
                          f"({_describe_exit(child.returncode)})" + self._tail_suffix(child))

    @staticmethod
    def _tail_suffix(child: procutil.Child) -> str:
        tail = child.tail(ERROR_TAIL_LINES)
        return f"; last output:\n{tail}" if tail else "; it printed nothing"

    def _fail_start(self, attempt: _Attempt, child: procutil.Child | None,
                    error: StartError | None) -> None:
        """Clear up a start that did not make it, then STARTING -> STOPPED (unless a stop()
        took over, in which case the stop sets STOPPED when it has finished)."""
        if child is not None and not attempt.aborted:
            child.terminate(self.config.unload_timeout, cmd_stop=self._cmd_stop_argv(child),
                            spawner=self._spawner, report=self._report)
            child.join_output(OUTPUT_DRAIN_TIMEOUT)
        if error is None and child is not None and not attempt.aborted:
            error = self._exit_error(child)  # quoted after the group is gone: all output in
        with self._lock:
            if error is not None and not attempt.aborted:
                self._proxy_log.error(str(error))
                self.failure = Failure("start-failed", str(error).split("\n")[0], time.time())
            attempt.finish(error)
            if self._attempt is attempt and self._state is S.STARTING:
                self._child = None
                self.pid = None
                self._set_state(S.STOPPED)

    # -- exits and stops -------------------------------------------------------------------
    def _child_exited(self, child: procutil.Child) -> None:
        """The watcher thread saw the leader exit. While ready, that is a crash: clean up the
        group and reap it here, then tell the exit listeners."""
        with self._lock:
            attempt = self._attempt
            if attempt is not None and attempt.child is child:
                attempt.wake.set()
            if (self._child is not child or self._state not in (S.READY, S.SLEEPING)
                    or child.terminating):
                return
            self._set_state(S.STOPPING)
        child.terminate(self.config.unload_timeout, spawner=self._spawner,
                        before_wait=self._run_stop_hooks, report=self._report)
        child.join_output(OUTPUT_DRAIN_TIMEOUT)
        code = child.returncode
        tail = child.tail(ERROR_TAIL_LINES)
        self._proxy_log.warn(f"<{self.model_id}> upstream exited unexpectedly "
                             f"({_describe_exit(code)})"
                             + (f"; last output:\n{tail}" if tail else ""))
        with self._lock:
            self.failure = Failure("exit" if code == 0 else "crash",
                                   f"the backend exited on its own ({_describe_exit(code)})",
                                   time.time())
            if self._child is child:
                self._child = None
                self.pid = None
                self.ready_at = None
            if self._state is S.STOPPING:
                self._set_state(S.STOPPED)
        for listener in self._exit_listeners:
            try:
                listener(self.model_id, code)
            except Exception as exc:  # a listener's bug must not kill the watcher
                self._proxy_log.error(f"<{self.model_id}> exit listener failed: {exc!r}")

    def _run_stop_hooks(self) -> None:
        for hook in self._stop_hooks:
            try:
                hook()
            except Exception as exc:
                self._proxy_log.error(f"<{self.model_id}> stop hook failed: {exc!r}")

    def _cmd_stop_argv(self, child: procutil.Child) -> list[str] | None:
        cmd = self.config.cmd_stop.strip()
        if not cmd:
            return None
        text = cmd.replace("${PID}", str(child.pid))
        try:
            argv = split_command(strip_comments(text))
        except ConfigError as exc:  # upstream falls back to SIGTERM
            self._proxy_log.warn(f"<{self.model_id}> cannot parse cmdStop, sending SIGTERM: {exc}")
            return None
        return argv or None

    def _report(self, level: str, message: str) -> None:
        self._proxy_log.log(level, f"<{self.model_id}> {message}")

    def _spawner_or_default(self) -> procutil.Spawner:
        if self._spawner is None:
            self._spawner = procutil.default_spawner()
        return self._spawner

    # -- the health watch while ready ------------------------------------------------------
    def _watch_health(self) -> None:
        """Caller holds the lock, the backend has just become ready."""
        cfg = self.config
        if cfg.health_check_interval <= 0 or cfg.check_endpoint.strip().lower() == "none":
            return
        url = procutil.health_url(cfg.proxy, cfg.check_endpoint)
        limit = cfg.health_check_failures
        watch: procutil.HealthWatch

        def failed(count: int, detail: str) -> None:
            self._proxy_log.warn(f"<{self.model_id}> health check failed ({count}/{limit}) on "
                                 f"{url}: {detail}")
            if self._events is not None:
                self._events.publish(HealthCheckFailed(self.model_id, count, detail))

        def dead(detail: str) -> None:
            with self._lock:
                if self._watch is not watch or self._state is not S.READY:
                    return
                self.failure = Failure("health", f"its health check failed {limit} times in a "
                                                 f"row (last: {detail}) and llama-swap stopped it",
                                       time.time())
            self._proxy_log.warn(f"<{self.model_id}> unhealthy: {limit} health checks failed in "
                                 f"a row on {url} (last: {detail}); stopping it")
            for listener in self._health_listeners:
                try:
                    listener(self.model_id, detail)
                except Exception as exc:  # a listener's bug must not kill the watch
                    self._proxy_log.error(f"<{self.model_id}> health listener failed: {exc!r}")

        interval = cfg.health_check_interval
        watch = procutil.HealthWatch(url, interval, limit, min(HEALTH_WATCH_TIMEOUT, interval),
                                     on_failure=failed, on_dead=dead,
                                     name=f"health:{self.model_id}")
        self._watch = watch.start()

    # -- state -----------------------------------------------------------------------------
    def _set_state(self, new: ProcessState) -> None:
        """Caller holds the lock. Publishing never blocks, so it happens under the lock and
        subscribers see changes in the order they happened."""
        old = self._state
        if new is old:
            return
        check_transition(old, new)
        self._state = new
        if old is S.READY and self._watch is not None:
            self._watch.stop()
            self._watch = None
        elif new is S.READY:
            self._watch_health()
        self._changed.notify_all()
        self._proxy_log.debug(f"<{self.model_id}> swapState() State transitioned from "
                              f"{old.value} to {new.value}")
        if self._events is not None:
            self._events.publish(ProcessStateChanged(self.model_id, old.value, new.value))

