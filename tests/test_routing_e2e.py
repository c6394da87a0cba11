"""The routing: section end to end: a YAML config, the proxy on a real socket, demo backends
as real subprocesses."""

from __future__ import annotations

import json
import sys
import textwrap
import threading

import pytest
from helpers import free_port, wait_until
from httpkit import Proxy, SseReader, raw_socket
from memkit import MemoryProxy, write_config
from test_memory_sleep import sleepy

from llamaswap.config import load_config_text
from llamaswap.ops.events import ProcessStateChanged, ProfileChanged


def models_yaml(*ids: str, extra: str = "") -> str:
    """A `models:` block of demo backends on free ports."""
    lines = ["models:"]
    for mid in ids:
        port = free_port()
        lines += [f"  {mid}:",
                  f"    cmd: {sys.executable} -m llamaswap.demo.backend --port {port} --model-id {mid} --quiet {extra}",
                  f"    proxy: http://127.0.0.1:{port}",
                  "    unloadTimeout: 2"]
    return "\n".join(lines) + "\n"


def proxy_for(routing_yaml: str, *ids: str) -> Proxy:
    text = textwrap.dedent(routing_yaml) + models_yaml(*ids)
    return Proxy(load_config_text(text, "routing-test.yaml", environ={}))


def chat(model_id: str, **kw) -> dict:
    return {"model": model_id, "messages": [{"role": "user", "content": "hi"}], **kw}


def open_stream(port: int, model_id: str):
    """A streaming request that keeps `model_id` busy until the socket is closed."""
    s = raw_socket(port)
    body = json.dumps(chat(model_id, stream=True, demo={"chunks": 5000, "chunk_delay": 0.05}))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              f"\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    assert b"200 OK" in s.recv(65536)
    return s


def starts(sub) -> list[str]:
    out = []
    while (event := sub.get(0)) is not None:
        if isinstance(event, ProcessStateChanged) and event.new == "starting":
            out.append(event.model)
    return out


@pytest.mark.parametrize("priority, order", [("{hi: 10}", ["hi", "lo"]), ("{}", ["lo", "hi"])])
def test_priority_order_under_a_queue(priority, order):
    """upstream's example: `a` is busy; lo (priority 0) queues, then hi (10); when `a` is
    free, hi is loaded and served before lo. Without priorities: arrival order."""
    routing = f"""
        routing:
          scheduler:
            use: fifo
            settings:
              fifo:
                priority: {priority}
          router:
            use: group
            settings:
              groups:
                one-at-a-time: {{swap: true, exclusive: true, members: [a, lo, hi]}}
        """
    with proxy_for(routing, "a", "lo", "hi") as p:
        sub = p.app.events.subscribe()
        busy = open_stream(p.port, "a")
        results: dict[str, tuple[int, bytes]] = {}

        def ask(model_id: str) -> None:
            status, _h, body = p.post("/v1/chat/completions", chat(model_id))
            results[model_id] = (status, body)

        threads = []
        for model_id, queued in (("lo", 1), ("hi", 2)):
            t = threading.Thread(target=ask, args=(model_id,))
            t.start()
            threads.append(t)
            assert wait_until(lambda n=queued: p.app.router.queue_length() == n, 10)
        assert starts(sub) == ["a"]
        busy.close()  # a's only request ends: the queue is served, highest priority first
        for t in threads:
            t.join(30)
        assert {m: r[0] for m, r in results.items()} == {"lo": 200, "hi": 200}
        assert json.loads(results["hi"][1])["model"] == "hi"
        assert starts(sub) == order


# ---- selectors --------------------------------------------------------------------------------

def multipart(model_id: str) -> tuple[bytes, str]:
    boundary = "sel-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model_id}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\nRIFFdata\r\n--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_pin_and_warm_selectors_rewrite_the_model_wherever_the_request_names_it():
    config = """
        selectors:
          planner:
            strategy: pin
            targets: [b, a]
          coder:
            strategy: warm
            targets: [a, b]
        """
    with proxy_for(config, "a", "b") as p:
        # JSON body: the backend sees the target, as upstream's ReplaceRequestModel
        status, _h, body = p.post("/infill", {"model": "planner", "prompt": "x"})
        assert status == 200
        echo = json.loads(body)
        assert echo["model"] == "b" and json.loads(echo["body"])["model"] == "b"
        # warm: a comes first, but b is the one loaded
        status, _h, body = p.post("/infill", {"model": "coder"})
        assert json.loads(body)["model"] == "b"
        # the rest of the body reaches the backend byte for byte
        raw = b'{"prompt": "caf\\u00e9 \\"q\\"",\n  "model" : "planner"}'
        status, _h, body = p.request("POST", "/infill", raw, {"Content-Type": "application/json"})
        assert status == 200 and json.loads(body)["body"] == raw.decode().replace("planner", "b")
        # ?model= on a GET route
        status, _h, body = p.request("GET", "/v1/audio/voices?model=planner&x=1")
        assert status == 200 and json.loads(body)["query_params"] == {"model": ["b"], "x": ["1"]}
        # the multipart field
        data, ctype = multipart("planner")
        status, _h, body = p.request("POST", "/v1/audio/transcriptions", data, {"Content-Type": ctype})
        assert status == 200 and json.loads(body)["fields"]["model"] == "b"
        # the activity row names the selector
        rows = [e for e in p.app.activity.entries() if e.metadata and "selector" in e.metadata]
        assert {e.metadata["selector"] for e in rows} == {"planner", "coder"}
        assert {e.model for e in rows} == {"b"}
        # selectors are not models on /upstream (upstream's rule)
        status, _h, _b = p.request("GET", "/upstream/planner/health")
        assert status == 404


def test_spillover_starts_the_next_target_when_the_first_is_full():
    config = """
        routing:
          router:
            settings:
              groups:
                pool: {swap: false, members: [a, b]}
        selectors:
          balanced:
            strategy: spillover
            targets: [a, b]
            settings: {spillover: 1}
        """
    with proxy_for(config, "a", "b") as p:
        first = open_stream(p.port, "balanced")  # cold: a starts
        assert p.app.selectors.in_flight("balanced") == {"a": 1}
        second = open_stream(p.port, "balanced")  # a holds its one request: b starts
        assert p.app.selectors.in_flight("balanced") == {"a": 1, "b": 1}
        assert {m: p.app.processes[m].state.value for m in "ab"} == {"a": "ready", "b": "ready"}
        # both full, nothing cold left: the least busy, taking turns
        results = {}

        def ask(n: int) -> None:
            status, _h, body = p.post("/v1/chat/completions", chat("balanced"))
            results[n] = (status, json.loads(body)["model"])

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(status == 200 for status, _ in results.values())
        assert {model for _, model in results.values()} == {"a", "b"}
        first.close()
        second.close()
        assert wait_until(lambda: not any(p.app.selectors.in_flight("balanced").values()), 10)


def test_warm_wakes_a_sleeping_target_rather_than_load_a_cold_one(tmp_path):
    """No target ready or starting: upstream's warm loads its first target; here a target
    that is asleep comes first (a wake is a fraction of a load)."""
    extra = """
        groups:
          one: {members: [a, b, c]}
        selectors:
          coder: {strategy: warm, targets: [c, a]}
        """
    path = write_config(tmp_path, {"a": sleepy(), "b": sleepy(), "c": {}}, "", textwrap.dedent(extra))
    with MemoryProxy(path) as p:
        assert p.chat("a")[0] == 200
        pid_a = p.pid("a")
        assert p.chat("b")[0] == 200 and p.state("a") == "sleeping"
        status, answer = p.chat("coder")
        assert status == 200 and answer["model"] == "a"
        assert p.pid("a") == pid_a and p.state("b") == "sleeping"  # woken, not loaded again
        assert "c" not in [e.model for e in p.changes]  # the cold first target never started
        status, answer = p.chat("coder")  # a is ready now: the first ready target
        assert status == 200 and answer["model"] == "a"


def test_spillover_over_models_in_no_group_when_memory_decides(tmp_path):
    """With a memory: section, ungrouped models run side by side as memory allows, so a
    spillover selector over them starts the second while the first is busy."""
    memory = "memory:\n  devices: {ram: 8GiB}\n"
    extra = "selectors:\n  pool: {strategy: spillover, targets: [a, b]}\n"
    declared = {"yaml": "memory: {ram: 64MiB}"}
    path = write_config(tmp_path, {"a": declared, "b": declared}, memory, extra)
    with MemoryProxy(path) as p:
        first = open_stream(p.port, "pool")
        second = open_stream(p.port, "pool")
        assert p.app.selectors.in_flight("pool") == {"a": 1, "b": 1}
        assert (p.state("a"), p.state("b")) == ("ready", "ready")
        first.close()
        second.close()
        assert wait_until(lambda: not any(p.app.selectors.in_flight("pool").values()), 10)


# ---- profiles ---------------------------------------------------------------------------------

PROFILES = """
    routing:
      router:
        settings:
          groups:
            all: {swap: false, exclusive: false, members: [a, b, c]}
    selectors:
      sel: {strategy: pin, targets: [c]}
    profiles:
      coding:
        description: Coding-focused routing
        pins:
          llm: a
          a: b
          b: ~
          via: sel
      writing:
        pins: {llm: b}
    """


def served_by(p: Proxy, model_id: str) -> tuple[int, str]:
    status, _h, body = p.post("/v1/chat/completions", chat(model_id))
    data = json.loads(body)
    return status, data["model"] if status == 200 else data["error"]["message"]


def put_active(p: Proxy, body: bytes) -> tuple[int, dict]:
    status, _h, raw = p.request("PUT", "/api/profiles/active", body, {"Content-Type": "application/json"})
    return status, json.loads(raw)


def test_profiles_api_pins_and_events():
    with proxy_for(PROFILES, "a", "b", "c") as p:
        status, _h, body = p.request("GET", "/api/profiles")
        assert status == 200 and json.loads(body) == {"active": None, "profiles": [
            {"id": "coding", "description": "Coding-focused routing",
             "pins": {"a": "b", "b": "", "llm": "a", "via": "sel"}},
            {"id": "writing", "description": "", "pins": {"llm": "b"}}]}
        assert served_by(p, "llm")[0] == 404  # no profile active: not a model

        # bad requests change nothing and say what was wrong, in the error envelope
        bad = {b"not json": (400, "invalid profile request"), b"[1]": (400, "invalid profile request"),
               b"": (400, "invalid profile request"), b"{}": (400, "profile name is required"),
               b'{"name": 5}': (400, "profile name must be a string or null"),
               b'{"name": "nope"}': (404, 'profile "nope" not found')}
        for body, (want, text) in bad.items():
            status, envelope = put_active(p, body)
            assert status == want and envelope["error"]["message"].startswith(text), (body, envelope)
            assert envelope["src"] == "llama-swap"
        assert p.app.profiles.active == ""

        events = SseReader(p)
        try:
            events.until(lambda t, d: t == "profileChanged" and d == {"active": None})
            assert put_active(p, b'{"name": "coding"}') == (200, {"active": "coding"})
            events.until(lambda t, d: t == "profileChanged" and d == {"active": "coding"})
            assert events.next()[0] == "modelStatus"  # each change is followed by the models
        finally:
            events.close()
        assert 'active profile changed to "coding"' in p.app.loggers.proxy.history().decode()

        assert served_by(p, "llm") == (200, "a")
        assert served_by(p, "a") == (200, "b")  # a pin may shadow a model id
        status, message = served_by(p, "b")  # a null pin disables the id
        assert status == 404 and message.startswith("no model id could be identified")
        assert served_by(p, "via") == (200, "c")  # a pin may target a selector
        assert served_by(p, "c") == (200, "c")  # not pinned: unchanged
        status, _h, body = p.request("GET", "/upstream/llm/v1/models")  # /upstream follows pins
        assert status == 200 and json.loads(body)["data"][0]["id"] == "a"
        assert p.request("GET", "/upstream/b/health")[0] == 404

        sub = p.app.events.subscribe()
        assert put_active(p, b'{"name": "coding"}') == (200, {"active": "coding"})  # same: no event
        assert put_active(p, b'{"name": ""}') == (200, {"active": None})
        assert put_active(p, b'{"name": null}') == (200, {"active": None})
        changes = []
        while (event := sub.get(0)) is not None:
            if isinstance(event, ProfileChanged):
                changes.append(event.active)
        assert changes == [""]
        assert served_by(p, "a") == (200, "a")


def test_profile_switch_while_requests_run():
    with proxy_for(PROFILES, "a", "b", "c") as p:
        put_active(p, b'{"name": "coding"}')
        running = p.conn()
        running.request("POST", "/v1/chat/completions", json.dumps(chat(
            "llm", stream=True, demo={"chunks": 100, "chunk_delay": 0.02})), {"Content-Type": "application/json"})
        stream = running.getresponse()
        assert stream.status == 200 and b'"model": "a"' in stream.read1(65536)
        assert put_active(p, b'{"name": "writing"}') == (200, {"active": "writing"})
        assert p.app.router.in_flight("a") == 1  # switched while the request runs
        assert served_by(p, "llm") == (200, "b")  # new requests follow the new pins
        rest = stream.read()  # the request already routed finishes where it started
        running.close()
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert b'"model": "a"' in rest and b'"model": "b"' not in rest
        assert p.app.processes["a"].state.value == "ready"


def test_reload_keeps_the_active_profile_while_the_config_still_has_it():
    with proxy_for(PROFILES, "a", "b", "c") as p:
        put_active(p, b'{"name": "coding"}')
        same = p.app.config
        p.holder.app = p.app = p.app.reload(same)
        assert p.app.profiles.active == "coding" and served_by(p, "llm") == (200, "a")
        sub = p.app.events.subscribe()
        without = load_config_text(textwrap.dedent(PROFILES).replace("  coding:", "  gone:")
                                   + models_yaml("a", "b", "c"), "routing-test.yaml", environ={})
        old = p.app
        p.holder.app = p.app = old.reload(without)
        assert p.app.profiles.active == "" and served_by(p, "llm")[0] == 404
        # one switch across reloads: a switch that reached the old App during the reload counts
        assert old.profiles is p.app.profiles
        changes = [e.active for e in iter(lambda: sub.get(0), None) if isinstance(e, ProfileChanged)]
        assert changes == [""]
        assert 'active profile changed to ""' in p.app.loggers.proxy.history().decode()


def test_selectors_and_active_pins_in_the_model_list():
    config = PROFILES.replace("      sel: {strategy: pin, targets: [c]}", """\
      sel: {strategy: pin, targets: [c]}
      coder:
        strategy: warm
        targets: [c, a]
        name: " Coder "
        metadata: {purpose: coding, type: mine}
      pool:
        strategy: spillover
        targets: [a, b]
        settings: {spillover: 3}
      hidden: {strategy: pin, targets: [a], unlisted: true}""")
    with proxy_for(config, "a", "b", "c") as p:
        assert served_by(p, "a") == (200, "a")

        def listing() -> dict:
            status, _h, body = p.request("GET", "/v1/models")
            assert status == 200
            return {r["id"]: r for r in json.loads(body)["data"]}

        records = listing()
        assert sorted(records) == ["a", "b", "c", "coder", "pool", "sel"]
        assert records["coder"]["name"] == "Coder" and records["coder"]["status"] == {"value": "loaded"}
        # the selector's own fields win over its metadata
        assert records["coder"]["meta"] == {"llamaswap": {"purpose": "coding", "strategy": "warm",
                                                          "targets": ["c", "a"], "type": "selector"}}
        assert records["pool"]["meta"]["llamaswap"]["spillover"] == 3
        assert records["pool"]["status"] == {"value": "loaded"}
        assert records["sel"]["status"] == {"value": "unloaded"}  # pin: only its first target counts
        assert "capabilities" not in records["sel"]
        assert served_by(p, "hidden") == (200, "a")  # unlisted selectors still route

        put_active(p, b'{"name": "coding"}')
        records = listing()
        # pins that name nothing else are listed; "a" is a model, "b" is disabled
        assert sorted(records) == ["a", "b", "c", "coder", "llm", "pool", "sel", "via"]
        assert records["llm"] == {"id": "llm", "object": "model", "created": records["llm"]["created"],
                                  "owned_by": "llama-swap", "meta": {"llamaswap": {"type": "profile"}},
                                  "status": {"value": "unloaded"}}


def test_a_scoped_key_may_use_a_selector_by_its_own_name():
    config = """
        apiKeys:
          - key: sk-planner
            name: planner-only
            models: [planner]
          - key: sk-a
            name: a-only
            models: [a]
        selectors:
          planner: {strategy: pin, targets: [b]}
        """
    with proxy_for(config, "a", "b") as p:
        def ask(key: str) -> tuple[int, dict]:
            status, _h, body = p.post("/v1/chat/completions", chat("planner"),
                                      headers={"Authorization": f"Bearer {key}"})
            return status, json.loads(body)

        status, body = ask("sk-planner")
        assert status == 200 and body["model"] == "b"
        status, body = ask("sk-a")
        assert status == 403 and body["error"]["message"] == "API key a-only may not use model planner"
