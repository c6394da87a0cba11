"""The routing: section end to end: a YAML config, the proxy on a real socket, demo backends
as real subprocesses."""

from __future__ import annotations

import json
import sys
import textwrap
import threading

import pytest
from helpers import free_port, wait_until
from httpkit import Proxy, raw_socket

from llamaswap.config import load_config_text
from llamaswap.ops.events import ProcessStateChanged


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
