"""The fairness rules of the router core (maxWait): scripted, no threads, no clock."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

from helpers import wait_until
from test_router_core import Req, load, make, of
from test_router_e2e import model, rig, serve  # noqa: F401 - rig is a fixture

from llamaswap.config.matrix import compile_sets
from llamaswap.config.model import (FifoConfig, GroupConfig, MatrixConfig, RoutingConfig,
                                    SchedulerConfig)
from llamaswap.ops.events import ModelStopping
from llamaswap.router.core import ArmTimer, Log, RouterCore, StartSwap
from llamaswap.router.memory import MemoryBook, MemoryPlanner, MemoryPolicy
from llamaswap.router.planners import GroupPlanner, MatrixPlanner
from llamaswap.sizes import GiB

EXCLUSIVE = GroupPlanner({"g": GroupConfig("g", members=("a", "b", "c"))})
TOGETHER = GroupPlanner({"all": GroupConfig("all", swap=False, exclusive=False,
                                                  members=("a", "b", "p"))})


def idle(core, model):
    """Load `model` and finish the request that loaded it."""
    load(core, model)
    core.request_done(model, 0.0)


def busy(core, model, now):
    """A granted request for a ready model (the fast path)."""
    req = Req(model)
    assert core.request(req, now) == [] and req.granted
    return req


def slow_chat(grant, seconds: float, hang: bool = False) -> dict:
    """A chat completion that keeps the backend busy for `seconds` (or wedges it)."""
    url = urlsplit(grant.process.config.proxy)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        body = json.dumps({"model": grant.model_id, "messages": [{"role": "user", "content": "hi"}],
                           "demo": {"sleep": seconds, "hang": hang}})
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return json.loads(data)
    finally:
        conn.close()


def wait_timer(effects):
    (timer,) = [t for t in of(effects, ArmTimer) if t.kind == "maxwait"]
    return timer


def test_without_max_wait_a_busy_model_holds_a_queued_request_forever():
    core = make(planner=EXCLUSIVE)
    idle(core, "a")
    busy(core, "a", 0.5)
    b = Req("b")
    assert not [e for e in core.request(b, 1.0) if isinstance(e, ArmTimer)]
    assert b.position == 1
    for t in range(2, 1000):  # steady traffic on a: a request always in flight
        busy(core, "a", float(t))
        assert of(core.request_done("a", float(t)), StartSwap) == []
    assert b.outcome is None and core.grantable() == {"a"} and core.starved is None


def test_starved_request_fences_the_busy_model_then_swaps_when_it_drains():
    core = make(planner=EXCLUSIVE, max_wait=2.0)
    idle(core, "a")
    first = busy(core, "a", 0.5)
    b = Req("b")
    timer = wait_timer(core.request(b, 1.0))
    assert (timer.model, timer.deadline) == ("b", 3.0)
    second = busy(core, "a", 2.0)  # before the deadline a is still served at once
    assert second.granted and core.grantable() == {"a"}
    # the deadline: b is starved, a is fenced
    effects = core.timer_expired("maxwait", timer.model, timer.token, 3.0)
    assert core.starved is b and core.fenced() == {"a"}
    assert core.grantable() == frozenset()
    (log,) = [e for e in of(effects, Log) if "maxWait" in e.message]
    assert "request for b has waited 2.0s (maxWait 2s)" in log.message and "[a]" in log.message
    late = Req("a")
    assert core.request(late, 3.5) == [] and late.outcome is None
    assert [r.model for r in core.queue] == ["b", "a"] and late.position == 2
    assert of(core.request_done("a", 4.0), StartSwap) == []  # one still in flight
    (swap,) = of(core.request_done("a", 5.0), StartSwap)
    assert (swap.model, swap.evict, dict(swap.reasons)) == ("b", ("a",), {"a": "maxwait"})
    assert core.starved is None
    del first, second
    core.swap_done(swap.swap_id, None, 6.0)
    assert b.granted and late.outcome is None


class Evicts:
    """A custom planner: fixed evictions per target, among the models that run."""

    def __init__(self, evict):
        self.evict = evict

    def eviction_for(self, target, running):
        return set(self.evict.get(target, ())) & set(running)


def test_a_younger_swap_that_the_starved_request_would_have_to_undo_waits():
    # b evicts a and c; c evicts nothing: c's swap would only add to what b waits for
    core = make(planner=Evicts({"b": ("a", "c")}), max_wait=1.0)
    idle(core, "a")
    busy(core, "a", 0.0)
    b = Req("b")
    timer = wait_timer(core.request(b, 0.0))
    core.timer_expired("maxwait", timer.model, timer.token, 1.0)
    assert core.starved is b
    c = Req("c")
    assert of(core.request(c, 1.5), StartSwap) == []  # rule 7a
    assert [r.model for r in core.queue] == ["b", "c"]
    # a drains: b's swap starts first, then c (which collides with nothing) in parallel
    swaps = of(core.request_done("a", 2.0), StartSwap)
    assert [(s.model, s.evict) for s in swaps] == [("b", ("a",)), ("c", ())]
    assert core.starved is None and not core.queue


def test_the_starved_request_moves_to_the_head_of_the_queue():
    core = make("abx", planner=Evicts({"b": ("a",)}), max_wait=1.0)
    idle(core, "a")
    busy(core, "a", 0.0)
    w = Req("x")
    assert of(core.request(w, 0.0), StartSwap)  # x is loading, w waits on its swap
    b = Req("b")
    core.request(b, 0.1)
    # a reload changes x: its swap is cancelled and w goes back to the front of the queue
    core.reconfigure("abx", core.planner, ttl={}, stop=["x"], now=0.5)
    assert [r.model for r in core.queue] == ["x", "b"]
    core.timer_expired("maxwait", "b", 0, 1.1)
    assert core.starved is b and [r.model for r in core.queue] == ["b", "x"]
    assert (b.position, w.position) == (1, 2)


def test_one_starved_request_at_a_time_and_the_next_one_fences_the_previous_winner():
    core = make(planner=EXCLUSIVE, max_wait=1.0)
    idle(core, "a")
    busy(core, "a", 0.0)
    b = Req("b")
    timer = wait_timer(core.request(b, 0.0))
    core.timer_expired("maxwait", timer.model, timer.token, 1.0)
    a2 = Req("a")
    core.request(a2, 1.2)  # fenced: queued behind b
    effects = core.request_done("a", 1.5)
    (swap,) = of(effects, StartSwap)
    # a2 has waited 0.3 s; it becomes starved at 2.2 and fences b's swap
    timer = wait_timer(effects)
    assert (timer.model, timer.deadline) == ("a", 2.2)
    core.timer_expired("maxwait", timer.model, timer.token, 2.2)
    assert core.starved is a2 and core.fenced() == {"b"}
    b2 = Req("b")
    core.request(b2, 2.3)
    assert b2.outcome is None  # no joining b's swap: b is fenced
    core.swap_done(swap.swap_id, None, 2.5)
    assert b.granted and b2.outcome is None  # the swap's own waiters are served
    (back,) = of(core.request_done("b", 3.0), StartSwap)
    assert (back.model, back.evict) == ("a", ("b",))


def test_reload_with_max_wait_zero_lifts_the_fence():
    core = make(planner=EXCLUSIVE, max_wait=1.0)
    idle(core, "a")
    busy(core, "a", 0.0)
    b = Req("b")
    timer = wait_timer(core.request(b, 0.0))
    core.timer_expired("maxwait", timer.model, timer.token, 1.0)
    assert core.grantable() == frozenset()
    core.reconfigure("abc", EXCLUSIVE, ttl={}, stop=(), now=1.5, max_wait=0)
    assert core.starved is None and core.grantable() == {"a"}


def test_a_starved_request_that_gives_up_lifts_the_fence():
    core = make(planner=EXCLUSIVE, max_wait=1.0)
    idle(core, "a")
    busy(core, "a", 0.0)
    b = Req("b")
    timer = wait_timer(core.request(b, 0.0))
    core.timer_expired("maxwait", timer.model, timer.token, 1.0)
    fenced = Req("a")
    core.request(fenced, 1.1)
    assert fenced.outcome is None
    b.present = False
    core.give_up(b, 1.2)
    assert fenced.granted  # what it fenced is served at once
    assert core.starved is None and core.grantable() == {"a"} and not core.queue


def test_a_starved_request_for_a_model_being_retired_fences_what_its_new_start_evicts():
    """A reload changed b: its old process drains, then stops, and b's queued request waits
    for its new start. What that start evicts (a, under the new matrix) is fenced, not what
    the old, still running b would need (nothing)."""
    core = make(planner=GroupPlanner({"all": GroupConfig("all", swap=False, exclusive=False,
                                                         members=("a", "b", "c"))}))
    load(core, "a")  # a and b both ready, each with a request in flight
    load(core, "b")
    only_a = MatrixPlanner(MatrixConfig(compiled_sets=compile_sets([("s0", "a")], str)))
    assert only_a.eviction_for("b", {"a", "b"}) == () and only_a.eviction_for("b", {"a"}) == ("a",)
    core.reconfigure("abc", only_a, ttl={}, stop=("b",), now=0.0, max_wait=1.0)
    b = Req("b")
    timer = wait_timer(core.request(b, 0.1))  # b is being retired: its request waits
    core.timer_expired("maxwait", timer.model, timer.token, 1.1)
    assert core.starved is b and core.fenced() == {"a"}
    assert "a" not in core.grantable()
    late = Req("a")
    core.request(late, 1.2)
    assert late.outcome is None and core.queue == [b, late]  # behind the starved request


def test_a_model_that_leaves_the_fence_serves_its_queued_requests_first():
    """Rule F4. b (6 GiB) must evict a (5 GiB, busy) on a 10 GiB budget: a is fenced and a
    request for it queues. Then p, never evicted for memory (5 GiB), starts loading: b now
    waits for p's load instead of a's requests, a leaves the fence, and its queued request
    is served in the same step, before a younger one could take a's published grant."""
    policy = MemoryPolicy(budgets={"gpu0": 10 * GiB}, headroom=0,
                          declared={"a": {"gpu0": 5 * GiB}, "b": {"gpu0": 6 * GiB},
                                    "p": {"gpu0": 5 * GiB}},
                          commands={m: f"serve {m}" for m in "abp"}, sleepable=frozenset(),
                          persistent=frozenset({"p"}))
    book = MemoryBook()
    core = RouterCore(["a", "b", "p"], MemoryPlanner(TOGETHER, policy, book), book=book,
                      max_wait=1.0)
    load(core, "a")  # a request in flight on a
    b = Req("b")
    timer = wait_timer(core.request(b, 0.0))
    core.timer_expired("maxwait", timer.model, timer.token, 1.0)
    assert core.starved is b and core.fenced() == {"a"}
    queued = Req("a")
    core.request(queued, 1.1)
    assert queued.outcome is None
    p = Req("p")
    (start,) = of(core.request(p, 1.2), StartSwap)  # a (5) + p (5) fit: nothing evicted
    assert start.model == "p" and start.evict == ()
    assert core.fenced() == frozenset() and queued.granted
    assert core.queue == [b] and "a" in core.grantable()


# ---- with real backends -------------------------------------------------------------------

def test_max_wait_serves_a_request_while_another_model_is_kept_busy(rig):
    """Three clients keep a busy: their requests overlap (they start a third of a request
    apart), so one is always in flight. A request for b still gets its turn, and a's
    clients carry on after it. (Without maxWait b would wait as long as the clients run.)"""
    config = RoutingConfig(scheduler=SchedulerConfig(fifo=FifoConfig(max_wait=0.5)))
    router = rig.build([model("a"), model("b")], routing=config)
    serve(router, "a")
    stop = threading.Event()
    served = {"a": 0}
    failures: list = []

    def client() -> None:
        while not stop.is_set():
            ticket = router.request("a")
            try:
                grant = ticket.result()
                answer = slow_chat(grant, 0.3)
                assert answer["model"] == "a"
                served["a"] += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test thread
                failures.append(exc)
                return
            finally:
                ticket.done()

    clients = [threading.Thread(target=client) for _ in range(3)]
    try:
        for t in clients:
            t.start()
            time.sleep(0.1)  # spacing the load, not synchronising
        assert wait_until(lambda: served["a"] >= 6 or failures, 30)
        b = router.request("b")
        assert b.wait(30), "b never got its turn"
        grant = b.result()
        assert slow_chat(grant, 0)["model"] == "b"
        b.done()
        before = served["a"]
        assert wait_until(lambda: served["a"] > before + 3 or failures, 30)
    finally:
        stop.set()
        for t in clients:
            t.join(30)
    assert not failures, failures[:3]
    assert rig.starts("b") == 1 and rig.starts("a") == 2
    assert ModelStopping("a", "maxwait", "b") in rig.pump()
