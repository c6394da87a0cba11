"""Router + Process with real demo backends; each grant is used for a real HTTP request.

No HTTP front: the test plays the handler thread (request -> result -> forward -> done).
Backend starts are counted from ProcessStateChanged events (stopped -> starting).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from urllib.parse import urlsplit

import pytest

from helpers import demo_backend_argv, free_port, is_alive, wait_until
from llamaswap.config.matrix import compile_sets
from llamaswap.config.model import DEFAULT_GROUP_ID, Config, GroupConfig, MatrixConfig, ModelConfig
from llamaswap.ops.events import (EventBus, ModelStopping, ProcessStateChanged,
                                  QueueLengthChanged, SwapFinished)
from llamaswap.ops.logs import build_loggers, new_process_log
from llamaswap.process import Process
from llamaswap.router import Router, RouterError


def model(model_id: str, *extra: str, **fields) -> ModelConfig:
    port = free_port()
    fields.setdefault("health_check_timeout", 30)
    fields.setdefault("unload_timeout", 2)
    return ModelConfig(id=model_id, argv=tuple(demo_backend_argv(model_id, port, "--quiet", *extra)),
                       proxy=f"http://127.0.0.1:{port}", port=port, **fields)


class Rig:
    """A Router over real processes, plus an event log; close() shuts everything down."""

    def __init__(self) -> None:
        self.loggers = build_loggers("none", level="debug")
        self.events = EventBus()
        self.sub = self.events.subscribe()
        self.seen: list[tuple[float, object]] = []
        self.router: Router | None = None
        self.processes: dict[str, Process] = {}

    def build(self, models: list[ModelConfig], groups=None, matrix=None, clock=time.monotonic,
              **fields) -> Router:
        cfg_models = {m.id: m for m in sorted(models, key=lambda m: m.id)}
        if matrix is None and groups is None:
            groups = [GroupConfig(DEFAULT_GROUP_ID, members=tuple(cfg_models))]
        config = Config(models=cfg_models, matrix=matrix,
                        groups={g.id: g for g in groups or ()}, **fields)
        self.processes = {mid: self.process(m) for mid, m in cfg_models.items()}
        self.router = Router(config, self.processes, log=self.loggers.log, events=self.events,
                             clock=clock)
        self.router.start()
        return self.router

    def process(self, cfg: ModelConfig) -> Process:
        return Process(cfg, log=new_process_log(cfg.id, self.loggers.upstream),
                       proxy_log=self.loggers.log, events=self.events)

    def pump(self) -> list:
        while (event := self.sub.get(0)) is not None:
            self.seen.append((time.monotonic(), event))
        return [e for _t, e in self.seen]

    def starts(self, model_id: str) -> int:
        return sum(1 for e in self.pump() if isinstance(e, ProcessStateChanged)
                   and e.model == model_id and e.new == "starting")

    def state(self, model_id: str) -> str:
        return self.processes[model_id].state.value

    def close(self) -> None:
        if self.router is not None:
            try:
                self.router.shutdown(1)
            except RouterError:
                pass


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def chat(grant) -> dict:
    """One real chat completion through the granted process."""
    url = urlsplit(grant.process.config.proxy)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        body = json.dumps({"model": grant.model_id, "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return json.loads(data)
    finally:
        conn.close()


def serve(router: Router, model_id: str) -> dict:
    ticket = router.request(model_id)
    grant = ticket.result()
    try:
        answer = chat(grant)
        assert answer["model"] == model_id
        return answer
    finally:
        ticket.done()


def serve_all(router: Router, tickets) -> list:
    """Serve every ticket from its own thread (like handler threads); outcomes in order."""
    outcomes: list = [None] * len(tickets)

    def one(i, ticket) -> None:
        try:
            grant = ticket.result()
        except RouterError as exc:
            outcomes[i] = exc
            return
        try:
            outcomes[i] = chat(grant)["model"]
        finally:
            ticket.done()

    threads = [threading.Thread(target=one, args=(i, t)) for i, t in enumerate(tickets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


def test_swap_in_a_group_stops_the_previous_model(rig):
    router = rig.build([model("a"), model("b")])
    serve(router, "a")
    pid_a = rig.processes["a"].pid
    assert rig.state("a") == "ready"
    serve(router, "b")
    assert rig.state("a") == "stopped" and rig.state("b") == "ready"
    assert not is_alive(pid_a)
    finished = [e for e in rig.pump() if isinstance(e, SwapFinished)]
    assert [(e.model, e.ok) for e in finished] == [("a", True), ("b", True)]


def test_collation_abcabc_starts_each_backend_once(rig):
    router = rig.build([model(m, "--load-delay", "0.3") for m in "abc"])
    tickets = [router.request(m) for m in "abcabc"]
    assert wait_until(lambda: router.queue_length() == 4)  # b c b c wait; the second a joins
    assert serve_all(router, tickets) == list("abcabc")
    assert [rig.starts(m) for m in "abc"] == [1, 1, 1]
    lengths = [e.length for e in rig.pump() if isinstance(e, QueueLengthChanged)]
    assert lengths and lengths[-1] == 0


def test_every_stop_is_published_with_its_reason(rig):
    router = rig.build([model("a"), model("b"), model("c", ttl=1)], groups=[
        GroupConfig("g", members=("a", "b")), GroupConfig("t", swap=True, exclusive=False,
                                                          members=("c",))])
    serve(router, "a")
    serve(router, "b")  # evicts a for the group
    serve(router, "c")
    assert wait_until(lambda: rig.state("c") == "stopped", timeout=15)  # its TTL
    router.unload(["b"])
    serve(router, "a")
    router.shutdown(1)
    stops = [(e.model, e.reason, e.for_model) for e in rig.pump() if isinstance(e, ModelStopping)]
    assert stops == [("a", "group", "b"), ("c", "ttl", ""), ("b", "unload", ""),
                     ("a", "shutdown", "")]


def test_concurrent_requests_for_one_model_share_one_start(rig):
    router = rig.build([model("a", "--load-delay", "0.3")])
    tickets = [router.request("a") for _ in range(8)]
    assert serve_all(router, tickets) == ["a"] * 8
    assert rig.starts("a") == 1


def test_groups_persistent_and_exclusive_rules_with_real_processes(rig):
    router = rig.build([model("p"), model("a"), model("b")], groups=[
        GroupConfig("keep", swap=True, exclusive=False, persistent=True, members=("p",)),
        GroupConfig("main", swap=True, exclusive=True, members=("a", "b")),
    ])
    serve(router, "p")
    serve(router, "a")
    assert rig.state("p") == "ready"  # persistent: not evicted by the exclusive group
    serve(router, "b")
    assert rig.state("a") == "stopped" and rig.state("p") == "ready"
    # a non-exclusive group's model never evicts other groups (upstream's quirk)
    serve(router, "p")
    assert rig.state("b") == "ready"


def test_matrix_coexisting_models_share_the_machine_and_others_evict_them(rig):
    sets = compile_sets([("ab", "a & b"), ("c", "c")], lambda name: name)
    router = rig.build([model("a"), model("b"), model("c")], matrix=MatrixConfig(compiled_sets=sets))
    assert serve_all(router, [router.request("a"), router.request("b")]) == ["a", "b"]
    assert rig.state("a") == "ready" and rig.state("b") == "ready"
    serve(router, "c")
    assert (rig.state("a"), rig.state("b"), rig.state("c")) == ("stopped", "stopped", "ready")


def test_unload_while_requests_wait(rig):
    router = rig.build([model("a", "--load-delay", "2"), model("b")])
    waiting = [router.request("a") for _ in range(2)]
    queued = router.request("b")  # b evicts a: queued behind a's swap
    assert wait_until(lambda: rig.state("a") == "starting")
    assert wait_until(lambda: queued.position == 1)
    router.unload(["a"])
    assert rig.state("a") == "stopped"  # unload returns when the model is down
    for t in waiting:
        with pytest.raises(RouterError) as info:
            t.result()
        assert info.value.status == 500 and "'a'" in info.value.message
    assert serve_all(router, [queued]) == ["b"]  # the queue moved on


def test_unload_all_returns_when_every_model_is_down(rig):
    sets = compile_sets([("ab", "a & b")], lambda name: name)
    router = rig.build([model("a"), model("b")], matrix=MatrixConfig(compiled_sets=sets))
    serve_all(router, [router.request("a"), router.request("b")])
    pids = [rig.processes[m].pid for m in "ab"]
    router.unload()
    assert rig.state("a") == rig.state("b") == "stopped"
    assert not any(is_alive(p) for p in pids)


def test_ttl_counts_from_the_end_of_the_last_request(rig):
    router = rig.build([model("a", ttl=1)])
    ticket = router.request("a")
    grant = ticket.result()
    chat(grant)
    time.sleep(1.5)  # hold the request well past the ttl: never unloaded while in flight
    assert rig.state("a") == "ready"
    ticket.done()
    time.sleep(0.6)  # measuring, not synchronising: the timer restarted at done()
    assert rig.state("a") == "ready"
    assert wait_until(lambda: rig.state("a") == "stopped", timeout=15)
    assert rig.starts("a") == 1


def test_ttl_counts_from_the_end_of_the_last_claimed_request(rig):
    """A claim and its finish never wake the router, yet the TTL still runs from the end
    of the request: the finish carries its time, and the router wakes within the TTL while
    a model with a TTL has requests in flight (here nothing else would ever wake it)."""
    router = rig.build([model("a", ttl=1)])
    stopping: list[float] = []
    rig.events.add_listener(lambda e: e.new == "stopping" and stopping.append(time.monotonic()),
                            (ProcessStateChanged,))
    serve(router, "a")  # its TTL timer is armed now
    claim = router.claim("a")
    assert claim is not None  # ready and idle: a standing grant
    time.sleep(1.4)  # measuring, not synchronising: in flight across the first deadline
    assert rig.state("a") == "ready"
    chat(claim)
    claim.done()
    last_done = time.monotonic()
    assert wait_until(lambda: rig.state("a") == "stopped", timeout=15)
    assert len(stopping) == 1
    assert 0.95 <= stopping[0] - last_done < 1.8, stopping[0] - last_done


def test_failed_start_is_reported_and_not_sticky(rig, tmp_path):
    flag = tmp_path / "ok"
    port = free_port()
    # fails until the flag file exists, then serves normally
    script = (f"import os, sys; os.path.exists({str(flag)!r}) or sys.exit('not today'); "
              f"sys.argv[1:] = ['--port', '{port}', '--model-id', 'a', '--quiet']; "
              f"import runpy; runpy.run_module('llamaswap.demo.backend', run_name='__main__')")
    import sys
    cfg = ModelConfig(id="a", argv=(sys.executable, "-c", script), proxy=f"http://127.0.0.1:{port}",
                      port=port, health_check_timeout=30, unload_timeout=2)
    router = rig.build([cfg])
    with pytest.raises(RouterError) as info:
        router.request("a").result()
    assert info.value.status == 500
    assert info.value.message.startswith("model 'a' failed to start: ")
    flag.write_text("")
    serve(router, "a")
    assert rig.starts("a") == 2


def test_request_for_a_stopping_model_waits_for_the_stop_then_starts_it(rig):
    router = rig.build([model("a", "--ignore-sigterm", unload_timeout=1)])
    serve(router, "a")
    unloading = threading.Thread(target=router.unload, args=(["a"],))
    unloading.start()
    assert wait_until(lambda: rig.state("a") == "stopping")
    serve(router, "a")  # waits for the SIGKILL after 1 s, then a fresh start
    unloading.join(10)
    assert rig.starts("a") == 2


def test_shutdown_answers_waiters_and_stops_everything(rig):
    router = rig.build([model("a", "--load-delay", "3"), model("b")])
    waiting, queued = router.request("a"), router.request("b")
    assert wait_until(lambda: rig.state("a") == "starting")
    router.shutdown(1)
    for t in (waiting, queued):
        with pytest.raises(RouterError) as info:
            t.result()
        assert info.value.status == 503 and "shutting down" in info.value.message
    assert rig.state("a") == "shutdown"
    with pytest.raises(RouterError):
        router.shutdown()
    with pytest.raises(RouterError) as info:
        router.request("b").result()
    assert info.value.status == 503


def test_reconfigure_drains_a_changed_model_then_starts_its_new_process(rig):
    router = rig.build([model("a"), model("b")], groups=[
        GroupConfig("g", swap=False, exclusive=False, members=("a", "b"))])
    held = router.request("a")
    old_grant = held.result()
    serve(router, "b")
    new_a = model("a")
    processes = {"a": rig.process(new_a), "b": rig.processes["b"]}
    config = Config(models={"a": new_a, "b": rig.processes["b"].config},
                    groups={"g": GroupConfig("g", swap=False, exclusive=False, members=("a", "b"))})
    old = rig.processes["a"]
    router.reconfigure(config, processes, stop=["a"])
    later = router.request("a")
    assert not later.wait(0.3)  # no grant while the old a still serves a request
    serve(router, "b")  # the unchanged model keeps serving
    chat(old_grant)
    held.done()
    grant = later.result()
    assert grant.process is processes["a"] and grant.process is not old
    assert old.state.value == "stopped"
    chat(grant)
    later.done()
    rig.processes = processes


def test_crashed_backend_is_restarted_by_the_next_request(rig):
    router = rig.build([model("a", "--crash-after", "1")])
    serve(router, "a")
    assert wait_until(lambda: rig.state("a") != "ready")  # it exits after one answer
    serve(router, "a")  # never routed to the dead process: a fresh start
    assert rig.starts("a") == 2


def test_queue_positions_and_give_up(rig):
    router = rig.build([model("a", "--load-delay", "1"), model("b"), model("c")])
    loading = router.request("a")
    first, second = router.request("b"), router.request("c")  # both would evict a
    assert first.wait_position(10) == 1
    assert second.wait_position(10) == 2
    assert router.queue_length() == 2
    first.give_up()
    assert second.wait_position(10) == 1  # moved up
    assert wait_until(lambda: router.queue_length() == 1)
    assert not first.wait(0)  # given up: never granted
    loading.give_up()  # the load goes on; its grant is not counted
    assert serve_all(router, [second]) == ["c"]
    assert wait_until(lambda: router.in_flight("c") == 0)  # done() is reported asynchronously
    assert router.in_flight("a") == 0
    assert rig.starts("a") == 1 and rig.starts("b") == 0


def test_give_up_after_the_grant_counts_as_done(rig):
    router = rig.build([model("a"), model("b")])
    ticket = router.request("a")
    ticket.result()
    assert router.in_flight("a") == 1
    ticket.give_up()
    ticket.done()  # a second report is ignored
    assert wait_until(lambda: router.in_flight("a") == 0)
    serve(router, "b")  # a is idle again, so b may evict it
    assert rig.state("a") == "stopped"


def test_many_clients_random_models_and_give_ups_every_grant_serves(rig):
    """Handler threads hammer three mutually exclusive models; some clients leave early.
    Every grant must reach a live backend (a swap never stops a busy model), every ticket
    gets exactly one outcome, and the router ends idle."""
    rng = random.Random(7)
    router = rig.build([model(m) for m in "abc"])
    plan = [(rng.choice("abc"), rng.random() < 0.15) for _ in range(60)]
    results: list = [None] * len(plan)
    # The demo backend listens with a backlog of 5: more simultaneous connects get reset.
    connecting = threading.Semaphore(4)

    def client(i: int, model_id: str, leaves: bool) -> None:
        ticket = router.request(model_id)
        if leaves:
            ticket.give_up()
            results[i] = "left"
            return
        grant = ticket.result()
        try:
            with connecting:  # the grant stays in flight while waiting here
                results[i] = chat(grant)["model"]
        finally:
            ticket.done()

    threads = []
    for i, (m, leaves) in enumerate(plan):
        threads.append(threading.Thread(target=client, args=(i, m, leaves)))
        threads[-1].start()
        if i % 10 == 9:
            time.sleep(0.05)  # arrivals in bursts, so some land mid-swap
    for t in threads:
        t.join(60)
    assert results == [("left" if leaves else m) for m, leaves in plan]
    assert wait_until(lambda: all(router.in_flight(m) == 0 for m in "abc"))
    assert router.queue_length() == 0
    running = [m for m in "abc" if rig.state(m) == "ready"]
    assert len(running) <= 1
    # collation: far fewer loads than requests
    assert sum(rig.starts(m) for m in "abc") < len(plan) // 2


def test_swap_eviction_waits_unload_timeout_not_health_check_timeout(rig):
    # differences.md 4: a backend that ignores SIGTERM is killed after unload_timeout (1 s),
    # not after healthCheckTimeout (60 s here) as upstream's swap would
    router = rig.build([model("a", "--ignore-sigterm", unload_timeout=1, health_check_timeout=60),
                        model("b")])
    serve(router, "a")
    answers = []
    swapped = threading.Thread(target=lambda: answers.append(serve(router, "b")["model"]))
    swapped.start()
    swapped.join(30)  # generous: the point is 1 s versus 60 s
    assert answers == ["b"]
    assert rig.state("a") == "stopped" and rig.state("b") == "ready"


def test_claims_race_swaps_and_every_grant_reaches_a_live_backend(rig):
    """Handlers take standing grants (claims) for a while swaps to b keep being asked
    for: every grant, claimed or queued, must serve a real request on a live backend (the
    router closes the gate before each decision). Clients pause for a random 0-3 ms
    between requests: as upstream, b only gets its turn once a is idle."""
    router = rig.build([model("a"), model("b")])
    serve(router, "a")
    counts = {"claimed": 0, "queued": 0}
    lock = threading.Lock()
    failures: list = []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        pause = random.Random(seed).random
        while not stop.wait(pause() * 0.003):
            claim = router.claim("a")
            holder = claim if claim is not None else router.request("a")
            try:
                grant = claim if claim is not None else holder.result()
                assert grant.process.state.value == "ready"
                assert chat(grant)["model"] == "a"
                assert grant.process.state.value == "ready"  # never stopped under us
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)
                return
            finally:
                holder.done()
            with lock:
                counts["claimed" if claim is not None else "queued"] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            # a is back and serving from claims: now ask for b, which must evict it
            claimed = counts["claimed"]
            assert wait_until(lambda: counts["claimed"] >= claimed + 20 or failures, 30)
            assert serve(router, "b")["model"] == "b"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    assert counts["claimed"] > 0 and counts["queued"] > 0, counts
    assert wait_until(lambda: router.in_flight("a") == 0 and router.in_flight("b") == 0)
    assert rig.starts("b") == 5
