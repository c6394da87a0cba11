"""The restart policy rules of the router core (R1-R5): scripted, no threads, no clock."""

from __future__ import annotations

from test_router_core import Req, load, make, of
from test_router_fairness import EXCLUSIVE, Evicts

from llamaswap.router.core import (BackOff, CancelRestart, Log, Restart, StartSwap, StopModels)


def ready(core, model, now=0.0):
    """`model` loaded and idle."""
    load(core, model, now)
    core.request_done(model, now)


def backoff(effects):
    (b,) = of(effects, BackOff)
    return b


def restart(core, b, now):
    """Fire the restart timer of BackOff `b`; the StartSwap it begins."""
    effects = core.timer_expired("restart", b.model, b.token, now)
    (r,) = of(effects, Restart)
    (swap,) = of(effects, StartSwap)
    assert (r.model, r.reason, r.attempt) == (b.model, b.reason, b.attempt)
    assert (swap.model, swap.evict) == (b.model, ())  # a restart evicts nothing
    return swap


def test_crash_restarts_with_a_doubling_backoff_and_no_request():
    core = make(restart={"a": "on-failure"})
    ready(core, "a")
    b = backoff(core.process_exited("a", 10.0, 1))
    assert (b.reason, b.delay, b.deadline, b.attempt) == ("crash", 1.0, 11.0, 1)
    now, delays = 11.0, []
    swap = restart(core, b, now)
    for _ in range(12):  # the backend keeps failing to start
        b = backoff(core.swap_done(swap.swap_id, "exit code 1", now))
        assert b.reason == "start-failed"
        delays.append(b.delay)
        now = b.deadline
        swap = restart(core, b, now)
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]
    assert b.attempt == 13
    assert core.swap_done(swap.swap_id, None, now) == [] and core.state["a"] == "ready"


def test_ten_minutes_ready_starts_the_backoff_again_from_one_second():
    core = make(restart={"a": "on-failure"})
    ready(core, "a")
    b = backoff(core.process_exited("a", 0.0, 1))
    swap = restart(core, b, 1.0)
    core.swap_done(swap.swap_id, None, 2.0)
    b = backoff(core.process_exited("a", 100.0, 1))  # ready for 98 s: still backing off
    assert (b.delay, b.attempt) == (2.0, 2)
    swap = restart(core, b, b.deadline)
    core.swap_done(swap.swap_id, None, 103.0)
    b = backoff(core.process_exited("a", 703.0, -9))  # ready for 600 s
    assert (b.delay, b.attempt, b.reason) == (1.0, 1, "crash")


def test_policies_never_on_failure_and_always():
    core = make(restart={"b": "on-failure", "c": "always"})
    for m in "abc":
        ready(core, m)
    assert of(core.process_exited("a", 1.0, 1), BackOff) == []  # never (the default)
    assert of(core.process_exited("b", 1.0, 0), BackOff) == []  # a clean exit is no failure
    b = backoff(core.process_exited("c", 1.0, 0))
    assert (b.model, b.reason) == ("c", "exit")


def test_failed_start_for_a_request_schedules_a_restart():
    core = make(restart={"a": "on-failure"})
    req = Req("a")
    (swap,) = of(core.request(req, 0.0), StartSwap)
    b = backoff(core.swap_done(swap.swap_id, "exit code 3", 1.0))
    assert req.outcome.status == 500 and (b.reason, b.delay) == ("start-failed", 1.0)


def test_a_failed_health_watch_stops_the_model_then_restarts_it():
    core = make(restart={"a": "on-failure"})
    ready(core, "a")
    held = Req("a")
    core.request(held, 1.0)  # in flight on the wedged backend
    effects = core.health_failed("a", 2.0)
    (stop,) = of(effects, StopModels)
    assert (stop.models, stop.reason) == (("a",), "health")
    assert any("health check failed" in e.message for e in of(effects, Log))
    assert core.grantable() == frozenset()
    b = backoff(core.stops_done(stop.token, 3.0))
    assert (b.reason, b.delay) == ("health", 1.0)
    core.request_done("a", 3.0)  # the cut request ends (with an error) after the stop
    restart(core, b, 4.0)


def test_health_failure_of_a_model_that_is_not_ready_is_ignored():
    core = make(restart={"a": "on-failure"})
    assert core.health_failed("a", 0.0) == []
    req = Req("a")
    core.request(req, 0.0)  # starting: a stale report from the previous run
    assert of(core.health_failed("a", 0.0), StopModels) == []


def test_a_request_does_not_wait_for_the_backoff():
    core = make(restart={"a": "on-failure"})
    ready(core, "a")
    b = backoff(core.process_exited("a", 0.0, 1))
    req = Req("a")
    (swap,) = of(core.request(req, 0.2), StartSwap)  # R4: at once
    core.swap_done(swap.swap_id, None, 0.5)
    assert req.granted
    assert core.timer_expired("restart", "a", b.token, 1.0) == []  # running: nothing to do


def test_a_restart_never_evicts_and_never_gets_in_a_queued_requests_way():
    core = make(planner=EXCLUSIVE, restart={"a": "on-failure"})
    ready(core, "a")
    b = backoff(core.process_exited("a", 0.0, 1))
    ready(core, "b", 0.5)  # b took the room meanwhile
    effects = core.timer_expired("restart", "a", b.token, 1.0)
    assert of(effects, StartSwap) == [] and of(effects, CancelRestart) == [CancelRestart("a")]
    assert any("not restarting model a: it would evict b" in e.message for e in of(effects, Log))

    core = make(planner=Evicts({"c": ("a", "b")}), restart={"a": "on-failure"})
    ready(core, "a")
    ready(core, "b")
    busy = Req("b")
    core.request(busy, 0.0)
    b = backoff(core.process_exited("a", 0.0, 1))
    c = Req("c")
    core.request(c, 0.5)  # waits for b, and would have to evict a restarted a too
    effects = core.timer_expired("restart", "a", b.token, 1.0)
    assert of(effects, StartSwap) == [] and of(effects, CancelRestart) == [CancelRestart("a")]
    assert any("a queued request for c would have to evict it" in e.message
               for e in of(effects, Log))


def test_unload_ttl_reload_and_shutdown_never_restart():
    core = make(restart={"a": "always", "b": "always"}, ttl={"b": 5})
    ready(core, "a")
    b = backoff(core.process_exited("a", 0.0, 1))
    _token, effects = core.unload(["a"], None, 0.5)  # R5: the unload calls it off
    (stop,) = of(effects, StopModels)
    assert of(core.stops_done(stop.token, 0.6), BackOff) == []
    assert core.timer_expired("restart", "a", b.token, 1.0) == []
    ready(core, "b", 1.0)  # its TTL expires at 6
    (stop,) = of(core.timer_expired("ttl", "b", core._ttl_token["b"], 6.0), StopModels)
    assert stop.reason == "ttl" and of(core.stops_done(stop.token, 6.5), BackOff) == []

    ready(core, "a", 7.0)
    b = backoff(core.process_exited("a", 8.0, 1))
    effects = core.reconfigure("ab", core.planner, ttl={}, stop=["a"], now=8.5,
                               restart={"a": "always", "b": "always"})
    assert CancelRestart("a") in effects  # changed by a reload: its old process retires
    assert core.timer_expired("restart", "a", b.token, 9.0) == []

    ready(core, "b", 10.0)
    b = backoff(core.process_exited("b", 11.0, 1))
    effects = core.reconfigure("ab", core.planner, ttl={}, stop=[], now=11.5, restart={})
    assert CancelRestart("b") in effects  # its policy is now never

    ready(core, "b", 12.0)
    assert of(core.process_exited("b", 13.0, 1), BackOff) == []  # never, now
    core.reconfigure("ab", core.planner, ttl={}, stop=[], now=13.0, restart={"b": "always"})
    ready(core, "b", 13.0)
    b = backoff(core.process_exited("b", 13.2, 1))
    core.shutdown(None, 13.5)
    assert core.timer_expired("restart", "b", b.token, 14.0) == []
