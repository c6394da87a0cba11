"""Deterministic, scripted tests of the router core: no threads, no clock, no processes."""

from __future__ import annotations

from llamaswap.config.matrix import compile_sets
from llamaswap.config.model import GroupConfig, MatrixConfig
from llamaswap.router.core import (READY, STOPPED, ArmTimer, Log, RouterCore, ShutdownAll,
                                   StartSwap, StopModels)
from llamaswap.router.planners import GroupPlanner, MatrixPlanner


class Req:
    def __init__(self, model: str, present: bool = True):
        self.model = model
        self.present = present  # False: the client left before the answer
        self.outcome = None  # "granted" or a RouterError
        self.position = 0
        self.positions: list[int] = []

    def offer_grant(self) -> bool:
        assert self.outcome is None, "answered twice"
        if not self.present:
            return False
        self.outcome = "granted"
        return True

    def offer_error(self, error) -> bool:
        assert self.outcome is None, "answered twice"
        if not self.present:
            return False
        self.outcome = error
        return True

    def set_position(self, position: int) -> None:
        if position != self.position:
            self.positions.append(position)
        self.position = position

    @property
    def granted(self) -> bool:
        return self.outcome == "granted"


class Stub:
    """A custom planner is a small class: fixed evictions per target."""

    def __init__(self, evict=None):
        self.evict = evict or {}

    def eviction_for(self, target, running):
        return set(self.evict.get(target, ()))  # like upstream's stub: running or not


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def swaps(effects):
    return [(e.model, e.evict) for e in of(effects, StartSwap)]


def make(models="abc", planner=None, **kw):
    return RouterCore(list(models), planner or Stub(), **kw)


def load(core, model, now=0.0):
    """Request `model` and complete its swap; returns the (granted) request."""
    req = Req(model)
    eff = core.request(req, now)
    (start,) = of(eff, StartSwap)
    core.swap_done(start.swap_id, None, now)
    assert req.granted
    return req


# ---- the decision tree ------------------------------------------------------------------

def test_unknown_model_is_a_404_naming_it():
    core = make()
    req = Req("nope")
    assert core.request(req, 0) == []
    assert req.outcome.status == 404 and "'nope'" in req.outcome.message


def test_cold_start_then_grant_then_fast_path():
    core = make()
    r1 = Req("a")
    eff = core.request(r1, 0)
    assert swaps(eff) == [("a", ())]
    assert r1.outcome is None and core.state["a"] == "starting"
    core.swap_done(of(eff, StartSwap)[0].swap_id, None, 1)
    assert r1.granted and core.in_flight == {"a": 1} and core.state["a"] == READY
    r2 = Req("a")
    assert core.request(r2, 2) == [] and r2.granted  # fast path: no effects at all
    assert core.in_flight == {"a": 2}
    core.request_done("a", 3)
    core.request_done("a", 3)
    assert core.in_flight == {}


def test_concurrent_requests_for_one_model_share_one_swap():
    core = make()
    reqs = [Req("a") for _ in range(5)]
    starts = []
    for r in reqs:
        starts += of(core.request(r, 0), StartSwap)
    assert len(starts) == 1
    core.swap_done(starts[0].swap_id, None, 0)
    assert all(r.granted for r in reqs) and core.in_flight == {"a": 5}


def test_collation_abcabc_loads_each_model_once():
    core = make(planner=Stub({"a": "bc", "b": "ac", "c": "ab"}))
    reqs = [Req(m) for m in "abcabc"]
    starts = []
    for r in reqs:
        starts += of(core.request(r, 0), StartSwap)
    assert [s.model for s in starts] == ["a"]
    assert [r.model for r in core.queue] == ["b", "c", "b", "c"]
    assert [r.position for r in core.queue] == [1, 2, 3, 4]
    order = []
    for model in "abc":
        (start,) = [s for s in starts if s.model == model]
        eff = core.swap_done(start.swap_id, None, 0)
        served = [r for r in reqs if r.granted and r not in order]
        assert [r.model for r in served] == [model, model]
        order += served
        for r in served:
            eff += core.request_done(r.model, 0)
        starts += of(eff, StartSwap)
    assert [s.model for s in starts] == ["a", "b", "c"]
    assert all(r.granted for r in reqs) and not core.queue


def test_disjoint_swaps_run_in_parallel():
    core = make()
    eff = core.request(Req("a"), 0) + core.request(Req("b"), 0)
    assert swaps(eff) == [("a", ()), ("b", ())]


def test_one_finished_swap_promotes_several_queued_requests():
    core = make(planner=Stub({"a": "bc"}))
    ra, rb, rc = Req("a"), Req("b"), Req("c")
    (sa,) = of(core.request(ra, 0), StartSwap)
    assert core.request(rb, 0) == [] and core.request(rc, 0) == []  # a's swap evicts them
    assert [r.position for r in (rb, rc)] == [1, 2]
    eff = core.swap_done(sa.swap_id, None, 0)
    assert swaps(eff) == [("b", ()), ("c", ())]
    assert rb.position == 0 and rc.position == 0 and not core.queue


def test_request_that_would_evict_a_busy_model_waits_and_busy_model_keeps_serving():
    core = make(planner=Stub({"b": "a"}))
    r1 = load(core, "a")
    r2 = Req("b")
    assert core.request(r2, 0) == [] and core.queue == [r2]  # a has a request in flight
    r3 = Req("a")
    assert core.request(r3, 0) == [] and r3.granted  # fast path skips ahead of the queue
    assert core.request_done("a", 0) == []  # still one in flight: nothing moves
    eff = core.request_done("a", 0)
    assert swaps(eff) == [("b", ("a",))]
    assert core.state["a"] == "stopping"
    r4 = Req("a")
    assert core.request(r4, 0) == [] and core.queue == [r4]  # collides: b's swap evicts a


def test_collision_when_new_swap_would_evict_an_active_target():
    core = make(planner=Stub({"b": "a"}))
    core.request(Req("a"), 0)
    rb = Req("b")
    assert core.request(rb, 0) == [] and core.queue == [rb]


def test_failed_load_answers_500_naming_the_model_and_is_not_sticky():
    core = make()
    r1, r2 = Req("a"), Req("a")
    (s1,) = of(core.request(r1, 0), StartSwap)
    core.request(r2, 0)
    core.swap_done(s1.swap_id, "[a] upstream command exited prematurely", 0)
    for r in (r1, r2):
        assert r.outcome.status == 500
        assert r.outcome.message == "model 'a' failed to start: [a] upstream command exited prematurely"
    assert core.state["a"] == STOPPED
    r3 = Req("a")
    assert swaps(core.request(r3, 0)) == [("a", ())]


def test_give_up_in_queue_updates_positions_and_leaks_nothing():
    core = make(planner=Stub({"b": "a", "c": "a"}))
    core.request(Req("a"), 0)
    rb, rc = Req("b"), Req("c")
    core.request(rb, 0)
    core.request(rc, 0)
    assert (rb.position, rc.position) == (1, 2)
    core.give_up(rb, 0)
    assert core.queue == [rc] and rc.position == 1 and rb.position == 0


def test_grant_to_a_waiter_that_left_is_not_counted_and_ttl_starts_at_ready():
    core = make(ttl={"a": 30})
    gone = Req("a")
    (s,) = of(core.request(gone, 0), StartSwap)
    gone.present = False  # the client left; its give-up has not reached the core yet
    eff = core.swap_done(s.swap_id, None, 5)
    assert gone.outcome is None and core.in_flight == {}
    assert [(t.model, t.deadline) for t in of(eff, ArmTimer)] == [("a", 35)]


def test_give_up_while_waiting_on_a_swap_leaves_the_swap_running():
    core = make()
    r1, r2 = Req("a"), Req("a")
    (s,) = of(core.request(r1, 0), StartSwap)
    core.request(r2, 0)
    core.give_up(r1, 0)
    core.swap_done(s.swap_id, None, 0)
    assert r2.granted and r1.outcome is None and core.in_flight == {"a": 1}


# ---- TTL ----------------------------------------------------------------------------------

def test_ttl_counts_from_the_end_of_the_last_request():
    core = make(ttl={"a": 10})
    req = Req("a")
    (s,) = of(core.request(req, 0), StartSwap)
    eff = core.swap_done(s.swap_id, None, 1)
    assert of(eff, ArmTimer) == []  # a request is in flight: no timer
    core.request(Req("a"), 2)
    assert of(core.request_done("a", 50), ArmTimer) == []
    (timer,) = of(core.request_done("a", 60), ArmTimer)
    assert timer.deadline == 70
    eff = core.ttl_expired("a", timer.token, 70)
    assert [(e.models, e.reason, e.grace) for e in of(eff, StopModels)] == [(("a",), "ttl", None)]
    assert [e.message for e in of(eff, Log)] == ["a Unloading model, TTL of 10s reached"]


def test_stale_ttl_timer_is_ignored_and_never_fires_with_a_request_in_flight():
    core = make(ttl={"a": 10})
    (s,) = of(core.request(Req("a", present=False), 0), StartSwap)
    (timer,) = of(core.swap_done(s.swap_id, None, 0), ArmTimer)
    core.request(Req("a"), 5)  # granted: the timer is now stale
    assert core.ttl_expired("a", timer.token, 10) == []
    assert core.state["a"] == READY
    (timer2,) = of(core.request_done("a", 12), ArmTimer)
    core.request(Req("a"), 13)
    assert core.ttl_expired("a", timer2.token, 22) == []


def test_ttl_zero_never_arms():
    core = make(ttl={"a": 0})
    load(core, "a")
    assert of(core.request_done("a", 0), ArmTimer) == []


def test_request_for_a_model_being_stopped_waits_then_starts_it():
    core = make(ttl={"a": 1})
    load(core, "a")
    (timer,) = of(core.request_done("a", 0), ArmTimer)
    (stop,) = of(core.ttl_expired("a", timer.token, 1), StopModels)
    req = Req("a")
    assert core.request(req, 1.5) == [] and req.position == 1  # waits, never hangs
    eff = core.stops_done(stop.token, 2)
    assert swaps(eff) == [("a", ())] and req.position == 0


# ---- crash, unload, shutdown ------------------------------------------------------------

def test_backend_exit_marks_model_stopped_and_next_request_restarts_it():
    core = make()
    load(core, "a")
    core.request_done("a", 0)
    core.process_exited("a", 0)
    assert core.state["a"] == STOPPED
    assert swaps(core.request(Req("a"), 0)) == [("a", ())]


def test_unload_fails_waiters_and_queued_requests_and_blocks_until_stopped():
    core = make(planner=Stub({"b": "a"}))
    wa = Req("a")
    (sa,) = of(core.request(wa, 0), StartSwap)
    qb, qc = Req("b"), Req("c")
    core.request(qb, 0)  # queued behind a's swap
    token, eff = core.unload(["a", "b"], 2.5, 0)
    for r in (wa, qb):
        assert r.outcome.status == 500 and f"'{r.model}' unloaded" in r.outcome.message
    (stop,) = of(eff, StopModels)
    assert stop.token == token and stop.models == ("a", "b") and stop.grace == 2.5
    assert stop.after_swaps == (sa.swap_id,)  # a's cancelled start must not survive the unload
    core.request(qc, 0)
    assert qc.outcome is None and swaps([]) == []
    again = Req("a")
    assert core.request(again, 0) == [] and core.queue == [again]  # waits for the stop
    core.swap_done(sa.swap_id, "[a] start aborted", 0)  # the cancelled swap: bookkeeping only
    assert again.outcome is None
    eff = core.stops_done(token, 1)
    assert swaps(eff) == [("a", ())]


def test_unload_all_covers_every_model():
    core = make()
    load(core, "a")
    _token, eff = core.unload(None, None, 0)
    (stop,) = of(eff, StopModels)
    assert stop.models == ("a", "b", "c") and stop.grace is None


def test_shutdown_answers_everyone_and_refuses_later_requests():
    core = make(planner=Stub({"c": "ab"}))
    waiting = [Req("a"), Req("a"), Req("b")]
    for r in waiting:
        core.request(r, 0)
    queued = Req("c")
    core.request(queued, 0)
    _token, eff = core.shutdown(None, 0)
    assert of(eff, ShutdownAll)
    for r in waiting + [queued]:
        assert r.outcome.status == 503 and "shutting down" in r.outcome.message
        assert f"'{r.model}'" in r.outcome.message
    late = Req("a")
    core.request(late, 0)
    assert late.outcome.status == 503


# ---- reconfigure ----------------------------------------------------------------------------

def test_reconfigure_drains_then_stops_changed_models_while_others_keep_serving():
    core = make()
    load(core, "a")  # one request in flight on a
    load(core, "b")
    core.request_done("b", 0)
    eff = core.reconfigure("abc", Stub(), ttl={}, stop=["a"], now=0)
    assert of(eff, StopModels) == []  # a still has a request in flight
    rb = Req("b")
    core.request(rb, 0)
    assert rb.granted  # unchanged model keeps serving
    ra = Req("a")
    assert core.request(ra, 0) == [] and core.queue == [ra]  # no grants while draining
    (stop,) = of(core.request_done("a", 1), StopModels)
    assert stop.reason == "retire" and stop.models == ("a",)
    eff = core.stops_done(stop.token, 2)
    assert swaps(eff) == [("a", ())]  # the new process for a starts


def test_reconfigure_removing_a_model_answers_its_queued_requests_with_404():
    core = make(planner=Stub({"c": "a"}))
    load(core, "a")
    rc = Req("c")
    core.request(rc, 0)  # waits for a's request
    eff = core.reconfigure("ab", Stub(), ttl={}, stop=[], now=0)
    assert rc.outcome.status == 404
    assert of(eff, StopModels) == []  # c never ran: nothing to stop
    assert "c" not in core.state and not core.retiring
    ra = Req("a")
    core.request(ra, 0)
    assert ra.granted  # a was not part of the change


def test_reconfigure_removing_a_running_model_stops_it_after_its_requests():
    core = make()
    load(core, "a")
    assert of(core.reconfigure("bc", Stub(), ttl={}, stop=[], now=0), StopModels) == []
    ra = Req("a")
    core.request(ra, 0)
    assert ra.outcome.status == 404
    (stop,) = of(core.request_done("a", 0), StopModels)
    assert stop.models == ("a",) and stop.reason == "retire"
    core.stops_done(stop.token, 0)
    assert "a" not in core.state and not core.retiring


# ---- planners through the core ----------------------------------------------------------

def test_same_swap_group_requests_serialise():
    core = make("ab", GroupPlanner({"g": GroupConfig("g", swap=True, exclusive=False, members=("a", "b"))}))
    (sa,) = of(core.request(Req("a"), 0), StartSwap)
    rb = Req("b")
    assert core.request(rb, 0) == []  # a is only committed, not yet starting: still seen
    eff = core.swap_done(sa.swap_id, None, 0)
    assert swaps(eff) == []  # a's request is in flight
    assert swaps(core.request_done("a", 0)) == [("b", ("a",))]


def test_exclusive_ready_model_still_evicts_late_neighbours():
    # upstream: a ready model in an exclusive group whose neighbours were loaded later
    # does a "swap" that stops them, then serves (start() on a ready process returns at once)
    planner = GroupPlanner({"x": GroupConfig("x", members=("a",)),
                            "n": GroupConfig("n", swap=True, exclusive=False, members=("b",))})
    core = make("ab", planner)
    load(core, "a")
    core.request_done("a", 0)
    load(core, "b")
    core.request_done("b", 0)
    assert core.state == {"a": READY, "b": READY}
    assert swaps(core.request(Req("a"), 0)) == [("a", ("b",))]


def test_matrix_incompatible_models_queue_and_coexisting_ones_load_in_parallel():
    sets = compile_sets([("ab", "a & b"), ("c", "c")], lambda name: name)
    core = make("abc", MatrixPlanner(MatrixConfig(compiled_sets=sets)))
    eff = core.request(Req("a"), 0) + core.request(Req("b"), 0)
    assert swaps(eff) == [("a", ()), ("b", ())]
    rc = Req("c")
    assert core.request(rc, 0) == [] and core.queue == [rc]


def test_swaps_name_the_reason_of_each_eviction():
    def loaded(core, *models):
        for m in models:
            load(core, m)
            core.request_done(m, 0)
        return core

    core = loaded(make("ab", GroupPlanner({"g": GroupConfig("g", members=("a", "b"))})), "a")
    (start,) = of(core.request(Req("b"), 0), StartSwap)
    assert start.evict == ("a",) and dict(start.reasons) == {"a": "group"}

    sets = compile_sets([("ab", "a & b"), ("c", "c")], lambda name: name)
    core = loaded(make("abc", MatrixPlanner(MatrixConfig(compiled_sets=sets))), "a", "b")
    (start,) = of(core.request(Req("c"), 0), StartSwap)
    assert dict(start.reasons) == {"a": "matrix", "b": "matrix"}

    core = loaded(make("ab", Stub({"b": "a"})), "a")  # a custom planner without a reason word
    (start,) = of(core.request(Req("b"), 0), StartSwap)
    assert dict(start.reasons) == {"a": "swap"}


# ---- priorities (routing.scheduler.settings.fifo.priority) --------------------------------

def test_higher_priority_request_is_queued_ahead_and_started_first():
    # upstream's example: a is busy; lo (0) queues, then hi (10) queues; when a drains,
    # hi is started before lo.
    core = make("a lo hi".split(), Stub({"lo": "a", "hi": "a"}), priority={"hi": 10})
    busy = load(core, "a")
    lo, hi = Req("lo"), Req("hi")
    core.request(lo, 1)
    core.request(hi, 2)
    assert [r.model for r in core.queue] == ["hi", "lo"]
    assert (hi.position, lo.position) == (1, 2)
    assert busy.granted
    eff = core.request_done("a", 3)
    assert swaps(eff)[0] == ("hi", ("a",))


def test_equal_priorities_keep_arrival_order_and_lower_ones_go_last():
    core = make("a b c d".split(), Stub({m: "a" for m in "bcd"}), priority={"b": 5, "c": 5, "d": -1})
    load(core, "a")
    order = ["d", "b", "c", "b", "d"]
    for m in order:
        core.request(Req(m), 1)
    assert [r.model for r in core.queue] == ["b", "c", "b", "d", "d"]
    assert [r.position for r in core.queue] == [1, 2, 3, 4, 5]


def test_reconfigure_resorts_the_queue_by_the_new_priorities():
    core = make("abc", Stub({"b": "a", "c": "a"}))
    load(core, "a")
    core.request(Req("b"), 1)
    core.request(Req("c"), 1)
    core.reconfigure("abc", Stub({"b": "a", "c": "a"}), ttl={}, stop=[], now=2, priority={"c": 1})
    assert [r.model for r in core.queue] == ["c", "b"]
    assert [r.position for r in core.queue] == [1, 2]
