"""Self-healing and fairness as a client and an operator see them: the error of a request
cut by a failed health watch, /running, the modelStatus event and /metrics."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from helpers import wait_until
from httpkit import Proxy, config, model
from test_ops_prometheus import strict_parse, value_of

from llamaswap.config.model import FifoConfig, RoutingConfig, SchedulerConfig
from llamaswap.ops import sse

CHAT = {"model": "w", "messages": [{"role": "user", "content": "hi"}]}


def running(proxy) -> dict:
    return {r["model"]: r for r in json.loads(proxy.request("GET", "/running")[2])["running"]}


def test_wedged_backend_cut_request_gets_a_clear_error_and_the_model_comes_back():
    wedged = model("w", health_check_interval=0.3, health_check_failures=2, restart="on-failure")
    with Proxy(config(wedged)) as proxy:
        assert proxy.post("/v1/chat/completions", CHAT)[0] == 200
        assert "restarts" not in running(proxy)["w"]  # a healthy model: upstream's shape
        cut: dict = {}
        hang = dict(CHAT, demo={"hang": True})  # the backend stops answering from this one on
        client = threading.Thread(target=lambda: cut.update(
            zip(("status", "headers", "body"), proxy.post("/v1/chat/completions", hang))))
        client.start()
        client.join(60)
        assert cut["status"] == 502
        message = json.loads(cut["body"])["error"]["message"]
        assert message == ("w went down: its health check failed 2 times in a row (last: no "
                           "answer within 0.3s) and llama-swap stopped it; this request was in "
                           "flight on it and is not sent again (it may be what wedged the backend)")
        # restart: on-failure brings it back without a request
        assert wait_until(lambda: running(proxy).get("w", {}).get("state") == "ready", 30)
        record = running(proxy)["w"]
        assert record["restarts"] == 1
        assert record["lastFailure"]["reason"] == "health"
        assert "its health check failed 2 times in a row" in record["lastFailure"]["detail"]
        assert "restartIn" not in record
        status = {m["id"]: m for m in sse.model_status(proxy.app)}["w"]
        assert status["restarts"] == 1 and status["lastFailure"]["reason"] == "health"
        fams = strict_parse(proxy.request("GET", "/metrics")[2].decode())
        assert value_of(fams, "llamaswap_health_failures_total", model="w") == 2
        assert value_of(fams, "llamaswap_model_restarts_total", model="w", reason="health") == 1
        assert value_of(fams, "llamaswap_model_state", model="w", state="backoff") == 0


def test_a_stream_cut_by_a_failed_health_watch_ends_with_an_error_event():
    """A chat stream in flight when the watch stops its backend gets one last event that
    says why, which the OpenAI SDK raises as an APIError; then the cut."""
    import openai
    wedged = model("w", health_check_interval=0.3, health_check_failures=2)
    with Proxy(config(wedged)) as proxy:
        client = openai.OpenAI(base_url=proxy.url("/v1"), api_key="none", max_retries=0)
        stream = client.chat.completions.create(
            model="w", messages=CHAT["messages"], stream=True,
            extra_body={"demo": {"chunks": 2000, "chunk_delay": 0.01}})
        chunks = iter(stream)
        assert next(chunks).choices[0].delta.content
        wedge = threading.Thread(target=proxy.post, args=(
            "/v1/chat/completions", dict(CHAT, demo={"hang": True})))
        wedge.start()  # the stream goes on; new requests and the health probes hang
        with pytest.raises(openai.APIError) as cut:
            for _ in chunks:
                pass
        wedge.join(30)
        assert cut.value.message.startswith(
            "w went down: its health check failed 2 times in a row (last: no answer within 0.3s) "
            "and llama-swap stopped it: backend connection lost mid-response: "), cut.value.message
        assert cut.value.body["type"] == "server_error"
        # on the wire: that event, then the cut (no end of the chunked body)
        c = proxy.conn()
        c.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                  body=json.dumps(dict(CHAT, stream=True, demo={"chunks": 5, "die_after_chunks": 2})))
        r = c.getresponse()
        received = b""
        with pytest.raises(http.client.IncompleteRead):
            while piece := r.read1(65536):
                received += piece
        c.close()
        events = [e for e in received.split(b"\n\n") if e]
        assert len(events) == 3 and b"chat.completion.chunk" in events[1]
        message = json.loads(events[2][len(b"data: "):])["error"]["message"]
        # (a crash, not a failed watch: the label says why only if the exit was seen first)
        assert message.startswith("w") and "backend connection lost mid-response" in message


def test_an_anthropic_stream_cut_by_a_failed_health_watch_ends_with_its_error_event():
    """On /v1/messages the last event is Anthropic's own ``event: error``, which the
    Anthropic SDK raises (Claude Code and other Anthropic clients show the message)."""
    import anthropic
    wedged = model("w", health_check_interval=0.3, health_check_failures=2)
    with Proxy(config(wedged)) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url(), api_key="none", max_retries=0)
        stream = client.messages.create(
            model="w", max_tokens=20, messages=CHAT["messages"], stream=True,
            extra_body={"demo": {"chunks": 2000, "chunk_delay": 0.01}})
        events = iter(stream)
        assert next(events).type == "message_start"
        wedge = threading.Thread(target=proxy.post, args=(
            "/v1/chat/completions", dict(CHAT, demo={"hang": True})))
        wedge.start()
        with pytest.raises(anthropic.APIStatusError) as cut:
            for _ in events:
                pass
        wedge.join(30)
        assert cut.value.body["type"] == "error"
        assert cut.value.body["error"]["type"] == "api_error"
        assert cut.value.body["error"]["message"].startswith(
            "w went down: its health check failed 2 times in a row"), cut.value.body


def test_a_model_in_backoff_is_listed_with_its_restart():
    crashy = model("c", "--crash-after", "1", restart="always")
    with Proxy(config(crashy)) as proxy:
        proxy.post("/v1/chat/completions", dict(CHAT, model="c"))
        assert wait_until(lambda: running(proxy).get("c", {}).get("state") == "backoff", 30)
        record = running(proxy)["c"]
        assert record["lastFailure"]["reason"] == "crash"
        assert 0 <= record["restartIn"] <= 1 and record["restarts"] == 0
        assert wait_until(lambda: running(proxy).get("c", {}).get("state") == "ready", 30)


def test_queue_waits_are_a_histogram():
    cfg = config(model("a"), model("b"),
                 routing=RoutingConfig(scheduler=SchedulerConfig(fifo=FifoConfig(max_wait=0.3))))
    with Proxy(cfg) as proxy:
        held = threading.Thread(target=proxy.post, args=(
            "/v1/chat/completions", dict(CHAT, model="a", demo={"sleep": 1})))
        assert proxy.post("/v1/chat/completions", dict(CHAT, model="a"))[0] == 200
        held.start()
        assert wait_until(lambda: proxy.app.router.in_flight("a") == 1)
        assert proxy.post("/v1/chat/completions", dict(CHAT, model="b"))[0] == 200  # queued
        held.join(30)
        fams = strict_parse(proxy.request("GET", "/metrics")[2].decode())
        assert value_of(fams, "llamaswap_queue_wait_seconds_count", model="b") == 1
        assert value_of(fams, "llamaswap_queue_wait_seconds_sum", model="b") > 0
