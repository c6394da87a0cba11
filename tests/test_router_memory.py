"""The memory planner and the core's memory and sleep rules, scripted: no threads, no clock."""

from __future__ import annotations

from test_router_core import Req, of

from llamaswap.config.model import GroupConfig
from llamaswap.router.core import (SLEEPING, STOPPED, ArmTimer, Log, NeedLearned, RouterCore,
                                   StartSwap, StopModels)
from llamaswap.router.memory import MemoryBook, MemoryPlanner, MemoryPolicy
from llamaswap.router.planners import GroupPlanner
from llamaswap.sizes import GiB

FREE_FOR_ALL = GroupPlanner({"(default)": GroupConfig("(default)", swap=False, exclusive=False,
                                                       members=tuple("abcdpu"))})


def make(declared, budget=10 * GiB, headroom=0, sleepable=(), persistent=(), ttl=None,
         book=None, inner=FREE_FOR_ALL, models=None):
    models = models or sorted(set(declared) | set("abc"))
    policy = MemoryPolicy(budgets={"gpu0": budget}, headroom=headroom,
                          declared={m: {"gpu0": n * GiB} for m, n in declared.items()},
                          commands={m: f"serve {m}" for m in models},
                          sleepable=frozenset(sleepable), persistent=frozenset(persistent))
    book = book or MemoryBook()
    return RouterCore(models, MemoryPlanner(inner, policy, book), ttl=ttl,
                      sleepable=frozenset(sleepable), book=book)


def load(core, model, now=0.0, asleep=frozenset(), done=True):
    """Request `model`, finish its swap, finish the request; returns the StartSwap."""
    req = Req(model)
    (start,) = of(core.request(req, now), StartSwap)
    core.swap_done(start.swap_id, None, now, asleep=asleep & set(start.sleep))
    assert req.granted
    if done:
        core.request_done(model, now)
    return start


def test_models_share_the_budget_and_the_least_recently_used_goes_first():
    core = make({"a": 4, "b": 4, "c": 4})
    assert load(core, "a", 1).evict == ()
    assert load(core, "b", 2).evict == ()  # 8 of 10 GiB: both resident
    ra = Req("a")
    core.request(ra, 3)  # a used again: b is now the least recently used
    assert ra.granted
    core.request_done("a", 4)
    start = load(core, "c", 5)
    assert start.evict == ("b",) and dict(start.reasons) == {"b": "memory"}
    assert core.state["a"] == "ready" and core.state["b"] == STOPPED


def test_a_busy_model_is_never_evicted_the_start_waits_for_it():
    core = make({"a": 6, "b": 3, "c": 6})
    load(core, "a", 1, done=False)  # a keeps a request in flight
    load(core, "b", 2)
    rc = Req("c")
    # b alone is not enough (6 + 6 > 10): a must go, and a is busy
    assert of(core.request(rc, 3), StartSwap) == [] and core.queue == [rc]
    (start,) = of(core.request_done("a", 4), StartSwap)
    assert set(start.evict) == {"a"}  # b stays: 3 + 6 fits


def test_idle_models_go_before_busy_ones_even_when_more_recent():
    core = make({"a": 4, "b": 4, "c": 4})
    load(core, "a", 1, done=False)
    load(core, "b", 2)
    start = load(core, "c", 3)
    assert start.evict == ("b",)


def test_an_unknown_need_starts_alone_and_shares_once_measured():
    core = make({"a": 3, "b": 3}, models=list("abu"))
    load(core, "a", 1)
    load(core, "b", 2)
    start = load(core, "u", 3)  # u declared nothing and was never measured
    assert set(start.evict) == {"a", "b"}
    ra = Req("a")
    assert of(core.request(ra, 4), StartSwap) == []  # u is not measured yet: never evicted
    effects = core.measured("u", {"gpu0": 2 * GiB}, False, 5)
    learned = of(effects, NeedLearned)
    assert [(e.model, e.command, e.asleep, dict(e.need)) for e in learned] == [
        ("u", "serve u", False, {"gpu0": 2 * GiB})]
    (start,) = of(effects, StartSwap)
    assert start.model == "a" and start.evict == ()  # 2 + 3 fits beside u


def test_learned_needs_survive_in_the_book_and_a_new_core_shares_at_once():
    book = MemoryBook(learned={("u", "serve u"): {"gpu0": 2 * GiB}})
    core = make({"a": 3}, book=book, models=list("au"))
    load(core, "a", 1)
    assert load(core, "u", 2).evict == ()


def test_a_model_that_can_never_fit_gets_503_naming_device_need_and_budget():
    core = make({"a": 12}, headroom=GiB // 2)
    req = Req("a")
    assert core.request(req, 0) == []
    assert req.outcome.status == 503
    message = req.outcome.message
    assert "'a'" in message and "gpu0" in message and "12.0 GiB" in message
    assert "10.0 GiB" in message and "headroom" in message


def test_persistent_models_count_but_are_never_evicted_for_memory():
    core = make({"p": 5, "a": 4, "b": 4}, persistent={"p"}, models=list("abp"))
    load(core, "p", 1)
    load(core, "a", 2)
    start = load(core, "b", 3)
    assert start.evict == ("a",)  # p is older but persistent
    assert core.state["p"] == "ready"


def test_growth_past_the_budget_evicts_idle_others_least_recently_used_first():
    core = make({"a": 3, "b": 3, "c": 3})
    for i, m in enumerate("abc"):
        load(core, m, i)
    effects = core.measured("c", {"gpu0": 6 * GiB}, False, 5)  # c grew: 3 + 3 + 6 > 10
    (stop,) = of(effects, StopModels)
    assert stop.models == ("a",) and stop.reason == "memory"
    assert any("over budget" in e.message and "c" in e.message for e in of(effects, Log))


def test_eviction_puts_a_model_that_can_sleep_to_sleep():
    core = make({"a": 6, "b": 6}, sleepable={"a"}, ttl={"a": 30})
    load(core, "a", 1)
    start = load(core, "b", 2, asleep=frozenset({"a"}))
    assert start.evict == ("a",) and start.sleep == ("a",)
    assert core.state["a"] == SLEEPING
    # asleep, a holds no GPU memory; awake it needs 6 GiB again: b must go
    start = load(core, "a", 4)
    assert start.model == "a" and start.evict == ("b",)


def test_a_sleeping_model_ttl_stops_it():
    core = make({"a": 6, "b": 6}, sleepable={"a"}, ttl={"a": 30})
    load(core, "a", 1)
    req = Req("b")
    (start,) = of(core.request(req, 2), StartSwap)
    effects = core.swap_done(start.swap_id, None, 2, asleep={"a"})
    (timer,) = [t for t in of(effects, ArmTimer) if t.model == "a"]
    assert timer.deadline == 32
    (stop,) = of(core.ttl_expired("a", timer.token, 32), StopModels)
    assert stop.models == ("a",) and stop.reason == "ttl" and stop.sleep == ()
    core.stops_done(stop.token, 33)
    assert core.state["a"] == STOPPED


def test_a_failed_sleep_leaves_the_model_stopped():
    core = make({"a": 6, "b": 6}, sleepable={"a"})
    load(core, "a", 1)
    load(core, "b", 2, asleep=frozenset())  # the worker reports that a did not sleep
    assert core.state["a"] == STOPPED


def test_without_memory_a_group_eviction_sleeps_a_model_that_can():
    planner = GroupPlanner({"g": GroupConfig("g", members=("a", "b"))})
    core = RouterCore(["a", "b"], planner, sleepable={"a", "b"})
    load(core, "a", 1)
    start = load(core, "b", 2, asleep=frozenset({"a"}))
    assert start.sleep == ("a",) and dict(start.reasons) == {"a": "group"}
    assert core.state["a"] == SLEEPING
    # waking a puts b to sleep: the group still swaps
    start = load(core, "a", 3, asleep=frozenset({"b"}))
    assert start.evict == ("b",) and start.sleep == ("b",)
    assert core.state == {"a": "ready", "b": SLEEPING}


def test_a_reading_taken_awake_does_not_count_for_the_model_asleep():
    # u (unknown) loads alone: a can stay asleep only if asleep it holds nothing; its
    # awake reading (6 GiB) says nothing about that
    core = make({"a": 6}, sleepable={"a"}, models=list("au"))
    load(core, "a", 1)
    core.measured("a", {"gpu0": 6 * GiB}, False, 2)
    start = load(core, "u", 3, asleep=frozenset({"a"}))
    assert start.evict == ("a",) and start.sleep == ("a",)
