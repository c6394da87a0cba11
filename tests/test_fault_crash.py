"""Fault suite, crash races: a backend that exits right after a response, during a stream,
during a load or during a stop. The request the crash cuts may fail; no request sent after it
does (a refused or dropped connection to an exiting backend is treated as the crash: the
model starts again and serves it). Seeded: a failure names the seed and the case.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading

import pytest
from helpers import wait_until
from httpkit import Proxy, config, model

SEED = 18
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def chat(model_id: str, **kw) -> dict:
    return {"model": model_id, **CHAT, **kw}


def settled(p: Proxy, model_id: str) -> None:
    """Nothing left in flight, and /running agrees with the process (once a crash that is
    still being cleaned up has been)."""
    assert wait_until(lambda: p.app.router.in_flight(model_id) == 0, 10)

    def agree() -> bool:
        s, h, b = p.request("GET", "/running")
        running = {m["model"]: m["state"] for m in json.loads(b)["running"]}
        return running.get(model_id, "stopped") == p.app.processes[model_id].state.value

    assert wait_until(agree, 10)


def test_backend_exits_right_after_each_response():
    with Proxy(config(model("m1", "--crash-after", "1"))) as p:
        for case in range(12):
            stream = case % 2 == 1
            s, h, b = p.post("/v1/chat/completions", chat("m1", stream=stream))
            assert s == 200, f"case {case}: {s} {b[:300]!r}"
        settled(p, "m1")


def test_backend_exits_after_a_few_responses_under_concurrency():
    """Four clients at once against a backend that exits after every third answer: a request
    the backend was handling when it exited may be cut (a 502 that says the response ended
    early or the connection dropped, after two more tries: it might have caused the crash);
    none fails for a connection refused by a backend that was gone or going."""
    results: list[tuple[str, int, bytes]] = []
    with Proxy(config(model("m1", "--crash-after", "3"))) as p:
        def client(n: int) -> None:
            for i in range(6):
                s, h, b = p.post("/v1/chat/completions", chat("m1"))
                results.append((f"client {n} request {i}", s, b))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 24
        for name, s, b in results:
            if s != 200:
                message = json.loads(b)["error"]["message"]
                cut = ("ended early", "mid-response", "backend connection error")
                assert s == 502 and any(c in message for c in cut), \
                    f"{name}: {s} {message}"
        assert sum(s == 200 for _, s, _ in results) >= 12
        settled(p, "m1")


def test_follow_up_after_a_backend_dies_mid_stream():
    with Proxy(config(model("m1"))) as p:
        for case in range(8):
            c = p.conn()
            c.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                      body=json.dumps(chat("m1", stream=True,
                                           demo={"chunks": 6, "chunk_delay": 0, "die_after_chunks": 2})))
            r = c.getresponse()
            assert r.status == 200
            try:
                r.read()  # cut: the backend died mid-stream
            except Exception:
                pass
            c.close()
            s, h, b = p.post("/v1/chat/completions", chat("m1"))  # at once, racing the exit
            assert s == 200, f"case {case}: {s} {b[:300]!r}"
        settled(p, "m1")


def test_follow_up_after_a_backend_is_killed_between_requests():
    rng = random.Random(SEED)
    with Proxy(config(model("m1"))) as p:
        for case in range(12):
            s, h, b = p.post("/v1/chat/completions", chat("m1"))
            assert s == 200, f"seed {SEED} case {case}: {s} {b[:300]!r}"
            pid = p.app.processes["m1"].pid
            os.kill(pid, rng.choice([signal.SIGKILL, signal.SIGTERM]))
            s, h, b = p.post("/v1/chat/completions", chat("m1"))
            assert s == 200, f"seed {SEED} case {case} (after kill): {s} {b[:300]!r}"
        settled(p, "m1")


def test_backend_killed_during_its_load():
    rng = random.Random(SEED)
    with Proxy(config(model("m1", "--load-delay", "0.3"))) as p:
        proc = p.app.processes["m1"]
        for case in range(3):
            p.app.router.unload(["m1"])
            result: list = []
            t = threading.Thread(target=lambda: result.append(p.post("/v1/chat/completions", chat("m1"))))
            t.start()
            assert wait_until(lambda: proc.pid is not None and proc.state.value == "starting", 10)
            threading.Event().wait(rng.uniform(0, 0.2))  # somewhere in the load, seeded
            os.kill(proc.pid, signal.SIGKILL)
            t.join(30)
            status, _, body = result[0]
            # the request that waited for this load may fail, and must say why
            if status != 200:
                assert status in (500, 502, 503) and b"m1" in body, f"seed {SEED} case {case}: {body!r}"
            s, h, b = p.post("/v1/chat/completions", chat("m1"))
            assert s == 200, f"seed {SEED} case {case} (follow-up): {s} {b[:300]!r}"
        settled(p, "m1")


@pytest.mark.parametrize("kill", [False, True])
def test_requests_during_a_stop(kill):
    """Requests sent while the model is being unloaded (its backend slow to stop, or killed
    meanwhile) wait for the stop and get a new backend."""
    with Proxy(config(model("m1", "--ignore-sigterm", unload_timeout=0.5))) as p:
        proc = p.app.processes["m1"]
        assert p.post("/v1/chat/completions", chat("m1"))[0] == 200
        first_pid = proc.pid
        unloader = threading.Thread(target=p.app.router.unload, args=(["m1"],))
        unloader.start()
        assert wait_until(lambda: proc.state.value == "stopping", 10)
        if kill:
            os.kill(first_pid, signal.SIGKILL)
        results: list = []
        clients = [threading.Thread(target=lambda: results.append(
            p.post("/v1/chat/completions", chat("m1")))) for _ in range(3)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(30)
        unloader.join(30)
        assert [r[0] for r in results] == [200, 200, 200], [r[2][:200] for r in results]
        assert proc.pid != first_pid
        settled(p, "m1")


def test_a_backend_alive_but_refusing_gets_a_502():
    """Only an exiting backend is retried: one that keeps running without listening is a
    plain 502, after a short wait for an exit that does not come."""
    with Proxy(config(model("m1"))) as p:
        s, h, b = p.post("/v1/chat/completions", chat("m1", demo={"stop_listening": True}))
        assert s == 200
        proc = p.app.processes["m1"]
        pid = proc.pid
        s, h, b = p.post("/v1/chat/completions", chat("m1"))
        assert s == 502 and b"m1: cannot connect to" in b, b[:300]
        assert proc.pid == pid and proc.state.value == "ready"
        settled(p, "m1")
