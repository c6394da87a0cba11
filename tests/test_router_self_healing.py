"""Restart policy and health watch with real backends behind the Router (no HTTP front).

Time passes through events: each test waits for the process state changes (or the log
lines) that the router produces. Where a test needs the backoff itself, the router runs on
a fake clock that the test moves forward, then wakes the router.
"""

from __future__ import annotations

import sys
import time

import pytest

from helpers import free_port, wait_until
from test_router_e2e import Rig, model, rig, serve  # noqa: F401 - rig is a fixture
from test_router_fairness import slow_chat

from llamaswap.config.model import GroupConfig, ModelConfig
from llamaswap.ops.events import ModelRestarting, ModelStopping, ProcessStateChanged
from llamaswap.router import RouterError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, router, seconds: float) -> None:
        self.now += seconds
        router._post(("wake",))


def next_event(rig: Rig, match, timeout: float = 30.0):
    """The next event on the rig's bus that `match`es (events before it are kept in
    rig.seen, as rig.pump does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = rig.sub.get(0.1)
        if event is None:
            continue
        rig.seen.append((time.monotonic(), event))
        if match(event):
            return event
    raise AssertionError("the event never came")


def state_is(model_id: str, new: str):
    return lambda e: isinstance(e, ProcessStateChanged) and e.model == model_id and e.new == new


def logged(rig: Rig, text: str) -> bool:
    return text in rig.loggers.proxy.history().decode()


def test_a_crashed_model_is_ready_again_without_a_request(rig):
    router = rig.build([model("a", "--crash-after", "1", restart="on-failure")])
    serve(router, "a")  # the backend exits with code 1 after answering
    next_event(rig, state_is("a", "backoff"))
    next_event(rig, state_is("a", "ready"))  # nobody asked for it
    process = rig.processes["a"]
    assert process.restarts == 1 and process.failure.reason == "crash"
    restarts = [e for e in rig.pump() if isinstance(e, ModelRestarting)]
    assert [(e.model, e.reason, e.attempt) for e in restarts] == [("a", "crash", 1)]
    assert ModelStopping("a", "crash") in rig.pump()
    assert logged(rig, "router: model a exited on its own (exit code 1); restarting in 1s")
    assert logged(rig, "router: restarting model a after a failure (crash, attempt 1)")
    serve(router, "a")  # the restarted backend serves


def flaky(tmp_path, model_id: str, **fields) -> ModelConfig:
    """A model whose start fails until the file `ok` exists in tmp_path."""
    flag = tmp_path / "ok"
    port = free_port()
    script = (f"import os, sys; os.path.exists({str(flag)!r}) or sys.exit('not today'); "
              f"sys.argv[1:] = ['--port', '{port}', '--model-id', '{model_id}', '--quiet']; "
              f"import runpy; runpy.run_module('llamaswap.demo.backend', run_name='__main__')")
    return ModelConfig(id=model_id, argv=(sys.executable, "-c", script),
                       proxy=f"http://127.0.0.1:{port}", port=port, health_check_timeout=30,
                       unload_timeout=2, **fields)


def test_backoff_doubles_and_a_request_does_not_wait_for_it(rig, tmp_path):
    clock = FakeClock()
    router = rig.build([flaky(tmp_path, "a", restart="on-failure")], clock=clock)
    process = rig.processes["a"]
    with pytest.raises(RouterError):
        router.request("a").result()  # a failed start schedules a restart (on-failure)
    delays = []
    for _ in range(3):
        next_event(rig, state_is("a", "backoff"))
        delays.append(process.restart_delay)
        clock.advance(router, process.restart_delay)  # the backoff passes; the restart fails
        next_event(rig, state_is("a", "starting"))
    next_event(rig, state_is("a", "backoff"))
    delays.append(process.restart_delay)
    assert delays == [1, 2, 4, 8]
    assert [e.attempt for _t, e in rig.seen if isinstance(e, ModelRestarting)] == [1, 2, 3]
    assert process.failure.reason == "start-failed" and process.restarts == 3
    (tmp_path / "ok").write_text("")
    serve(router, "a")  # 8 s of backoff left on the clock: the request starts it at once
    assert process.state.value == "ready"


def test_always_restarts_after_a_clean_exit_and_on_failure_does_not(rig):
    both = GroupConfig("both", swap=False, exclusive=False, members=("a", "b"))
    router = rig.build([model("a", "--exit-after", "1", restart="always"),
                        model("b", "--exit-after", "1", restart="on-failure")], groups=[both])
    serve(router, "b")
    assert wait_until(lambda: logged(
        rig, "router: model b exited on its own (exit code 0); not restarting it (restart: "
             "on-failure)"))
    assert rig.state("b") == "stopped"
    serve(router, "a")
    next_event(rig, state_is("a", "backoff"))
    next_event(rig, state_is("a", "ready"))
    assert rig.processes["a"].failure.reason == "exit"
    assert rig.state("b") == "stopped" and rig.processes["b"].restarts == 0


def test_no_restart_after_unload_or_ttl(rig):
    clock = FakeClock()
    router = rig.build([model("a", restart="always", ttl=5), model("b", restart="always")],
                       groups=[GroupConfig("both", swap=False, exclusive=False,
                                           members=("a", "b"))], clock=clock)
    serve(router, "a")
    serve(router, "b")
    router.unload(["b"])  # returns once the router has handled the end of the stop
    assert rig.state("b") == "stopped"
    clock.advance(router, 5)  # a's TTL
    assert wait_until(lambda: logged(rig, "router: stopped [a] (ttl)"))
    clock.advance(router, 600)  # any backoff would be long over
    router.unload([])  # a round trip: the wake-up above has been handled
    assert rig.state("a") == "stopped" and rig.state("b") == "stopped"
    states = {e.new for e in rig.pump() if isinstance(e, ProcessStateChanged)}
    assert "backoff" not in states
    assert rig.starts("a") == 1 and rig.starts("b") == 1


def test_a_wedged_backend_is_stopped_and_its_requests_in_flight_fail(rig):
    router = rig.build([model("w", health_check_interval=0.2, health_check_failures=2)])
    serve(router, "w")
    ticket = router.request("w")
    grant = ticket.result()
    with pytest.raises(OSError):
        slow_chat(grant, 0, hang=True)  # wedges the backend; cut when it is stopped
    ticket.done()
    next_event(rig, state_is("w", "stopped"))
    assert logged(rig, "router: stopping model w: its health check failed")
    assert logged(rig, "<w> unhealthy: 2 health checks failed in a row")
    assert rig.processes["w"].failure.reason == "health"
    assert ModelStopping("w", "health") in rig.pump()
    serve(router, "w")  # restart: never; the next request starts it
    assert rig.starts("w") == 2
