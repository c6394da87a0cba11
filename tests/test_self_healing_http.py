"""Self-healing and fairness as a client and an operator see them: the error of a request
cut by a failed health watch, /running, the modelStatus event and /metrics."""

from __future__ import annotations

import json
import threading

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
