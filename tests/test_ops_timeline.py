"""The timeline's history of model state changes (ops/timeline.py) and ``GET /api/timeline``:
the history from events in order, then through a real proxy with real backends and swaps."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from httpkit import Proxy, SseReader, config, model

from llamaswap.ops.events import (EventBus, ModelRestarting, ModelStopping, ProcessStateChanged,
                                  TimelineChanged)
from llamaswap.ops.timeline import REQUEST_FIELDS, Timeline


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def bus():
    events = EventBus()
    published = []
    events.add_listener(lambda e: published.append(e.change), (TimelineChanged,))
    events.published = published
    return events


def test_a_swap_records_the_eviction_its_reason_and_the_load_time(bus):
    clock = Clock()
    tl = Timeline(bus, clock=clock)
    bus.publish(ProcessStateChanged("a", "stopped", "starting"))
    clock.now += 1.5
    bus.publish(ProcessStateChanged("a", "starting", "ready"))
    clock.now += 10
    bus.publish(ModelStopping("a", "group", "b"))  # the router announces, then stops
    bus.publish(ProcessStateChanged("a", "ready", "stopping"))
    clock.now += 0.25
    bus.publish(ProcessStateChanged("a", "stopping", "stopped"))
    bus.publish(ProcessStateChanged("b", "stopped", "starting"))
    clock.now += 2
    bus.publish(ProcessStateChanged("b", "starting", "ready"))
    got = tl.changes()["changes"]
    assert [(c["model"], c["state"]) for c in got] == [
        ("a", "starting"), ("a", "ready"), ("a", "stopping"), ("a", "stopped"),
        ("b", "starting"), ("b", "ready")]
    assert [c["seq"] for c in got] == [1, 2, 3, 4, 5, 6]
    assert got[1]["load_s"] == 1.5
    assert (got[2]["reason"], got[2]["for"]) == ("group", "b")
    assert got[3]["reason"] == ""  # the stop's reason is on the change that began it
    assert got[4]["evicted"] == [{"model": "a", "reason": "group"}]
    assert got[5]["load_s"] == 2.0
    assert bus.published == got  # each change is announced once, as it happens


def test_a_model_put_to_sleep_by_a_swap_is_named_asleep_on_the_start(bus):
    tl = Timeline(bus, clock=Clock())
    bus.publish(ProcessStateChanged("a", "stopped", "starting"))
    bus.publish(ProcessStateChanged("a", "starting", "ready"))
    bus.publish(ModelStopping("a", "group", "b"))
    bus.publish(ModelStopping("c", "memory", "b"))
    bus.publish(ProcessStateChanged("a", "ready", "sleeping"))  # `sleep` instead of a stop
    bus.publish(ProcessStateChanged("c", "ready", "stopping"))
    bus.publish(ProcessStateChanged("b", "stopped", "starting"))
    got = tl.changes()["changes"]
    assert (got[2]["state"], got[2]["reason"], got[2]["for"]) == ("sleeping", "group", "b")
    assert got[-1]["evicted"] == [{"model": "a", "reason": "group", "asleep": True},
                                  {"model": "c", "reason": "memory"}]


def test_a_crash_reported_after_the_exit_updates_that_change(bus):
    clock = Clock()
    tl = Timeline(bus, clock=clock)
    bus.publish(ProcessStateChanged("a", "stopped", "starting"))
    bus.publish(ProcessStateChanged("a", "starting", "ready"))
    clock.now += 30
    bus.publish(ProcessStateChanged("a", "ready", "stopped"))  # the backend died
    clock.now += 0.1
    bus.publish(ModelStopping("a", "crash"))  # the router hears of it a moment later
    bus.publish(ProcessStateChanged("a", "stopped", "backoff"))
    bus.publish(ModelRestarting("a", "crash", 1))
    clock.now += 1
    bus.publish(ProcessStateChanged("a", "backoff", "starting"))
    got = tl.changes()["changes"]
    assert [(c["state"], c["reason"]) for c in got] == [
        ("starting", ""), ("ready", ""), ("stopped", "crash"), ("backoff", "crash"),
        ("starting", "restart")]
    assert got[-1]["detail"] == "crash, attempt 1"
    # the update is announced again with the same seq
    assert [c["seq"] for c in bus.published] == [1, 2, 3, 3, 4, 5]
    assert bus.published[3]["reason"] == "crash"


def test_a_failed_start_and_a_window_with_the_state_at_its_start(bus):
    clock = Clock()
    tl = Timeline(bus, clock=clock)
    bus.publish(ProcessStateChanged("a", "stopped", "starting"))
    clock.now += 1
    bus.publish(ProcessStateChanged("a", "starting", "stopped"))
    clock.now += 1
    bus.publish(ProcessStateChanged("b", "stopped", "starting"))
    clock.now += 1
    bus.publish(ProcessStateChanged("b", "starting", "ready"))
    assert tl.changes()["changes"][1]["reason"] == "start-failed"
    window = tl.changes(start=1001.5, end=1002.5)
    assert window["initial"] == {"a": "stopped"}
    assert [(c["model"], c["state"]) for c in window["changes"]] == [("b", "starting")]
    assert window["history_since"] == 1000.0


def test_the_history_is_bounded():
    bus = EventBus()
    clock = Clock()
    tl = Timeline(bus, max_changes=4, clock=clock)
    for i in range(5):
        clock.now += 1
        bus.publish(ProcessStateChanged("a", "stopped", "starting"))
        bus.publish(ProcessStateChanged("a", "starting", "stopped"))
    got = tl.changes()
    assert [c["seq"] for c in got["changes"]] == [7, 8, 9, 10]
    assert got["history_since"] == got["changes"][0]["t"]


# ---- through a real proxy ---------------------------------------------------------------------

def chat(proxy, model_id):
    status, _, body = proxy.post("/v1/chat/completions",
                                 {"model": model_id, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, body


def test_api_timeline_and_the_events_stream_through_a_real_swap():
    with Proxy(config(model("a"), model("b"))) as proxy:
        sse = SseReader(proxy)
        try:
            chat(proxy, "a")
            chat(proxy, "b")  # the default group swaps a out
            _, ready_b = sse.until(lambda t, d: t == "timeline" and d["model"] == "b"
                                   and d["state"] == "ready")
            assert ready_b["load_s"] > 0
        finally:
            sse.close()
        status, _, body = proxy.request("GET", "/api/timeline")
        assert status == 200
        got = json.loads(body)
        assert got["models"] == ["a", "b"]
        changes = got["changes"]
        stop = next(c for c in changes if c["model"] == "a" and c["state"] == "stopping")
        assert (stop["reason"], stop["for"]) == ("group", "b")
        start_b = next(c for c in changes if c["model"] == "b" and c["state"] == "starting")
        assert start_b["evicted"] == [{"model": "a", "reason": "group"}]
        rows = [dict(zip(got["requests"]["fields"], r)) for r in got["requests"]["rows"]]
        assert got["requests"]["fields"] == list(REQUEST_FIELDS)
        assert [(r["model"], r["status"], r["path"]) for r in rows] == [
            ("a", 200, "/v1/chat/completions"), ("b", 200, "/v1/chat/completions")]
        assert rows[0]["t"] <= start_b["t"] <= rows[1]["t"] + rows[1]["ms"] / 1000
        assert got["truncated"] is False and got["start"] < got["end"] <= got["now"]

        # a window before anything happened: no changes, no requests, every model stopped
        def rfc3339(t):
            return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")

        first = changes[0]["t"]
        q = f"start={rfc3339(first - 60)}&end={rfc3339(first - 59)}"
        status, _, body = proxy.request("GET", "/api/timeline?" + q.replace(":", "%3A"))
        window = json.loads(body)
        assert status == 200 and window["changes"] == [] and window["requests"]["rows"] == []

        status, _, body = proxy.request("GET", "/api/timeline?start=yesterday")
        assert status == 400 and b"invalid 'start' timestamp" in body
        status, _, body = proxy.request(
            "GET", "/api/timeline?start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z")
        assert status == 400 and b"start must be before end" in body

        # the Activity page's speed chart: the store's figures, with the activity query's checks
        status, _, body = proxy.request("GET", "/api/activity/speed?model=a&buckets=10")
        speed = json.loads(body)
        assert status == 200 and set(speed) == {"start", "end", "bucket_s", "count", "series"}
        assert all(s["model"] == "a" for s in speed["series"])
        status, _, body = proxy.request("GET", "/api/activity/speed?buckets=0")
        assert status == 400 and b"buckets must be between 1 and 1000" in body
        status, _, body = proxy.request("GET", "/api/activity/speed?start=soon")
        assert status == 400 and b"invalid 'start' timestamp" in body
        status, _, body = proxy.request("GET", "/api/activity/speed?start=2999-01-01T00:00:00Z")
        assert status == 400 and b"start must be before end" in body  # the end is now


def test_speed_series_is_computed_by_the_store_over_every_matching_row():
    from llamaswap.ops.activity.query import ActivityQuery
    from llamaswap.ops.activity.record import ActivityEntry, TokenMetrics
    from llamaswap.ops.activity.store import SqliteStore

    store = SqliteStore(None, 100_000)
    base = 1_700_000_000
    rows = [("a", "alice", 0, 10.0), ("a", "alice", 5, 30.0), ("a", "bob", 70, 50.0),
            ("b", "alice", 30, 100.0), ("b", "alice", 65, 0.0)]  # no speed: left out
    rows += [("c", "bob", 100 + i % 20, 7.0) for i in range(60_000)]  # more than a page
    for model_id, key, dt, tps in rows:
        store.append(ActivityEntry(
            id=store.reserve_id(), timestamp=datetime.fromtimestamp(base + dt, timezone.utc),
            model=model_id, req_path="/v1/chat/completions", resp_content_type="application/json",
            resp_status_code=200, tokens=TokenMetrics(output_tokens=9, tokens_per_second=tps),
            duration_ms=10, key=key))
    try:
        got = store.speed(ActivityQuery(start=base, end=base + 119), 4)
        assert (got["start"], got["end"], got["bucket_s"], got["count"]) == (base, base + 119, 30, 60_004)
        series = {s["model"]: s["points"] for s in got["series"]}
        assert series["a"] == [[base + 15, 20.0, 2], [base + 75, 50.0, 1]]
        assert series["b"] == [[base + 45, 100.0, 1]]
        assert series["c"] == [[base + 105, 7.0, 60_000]]
        # filters: key and model; open bounds are the oldest / newest matching row
        got = store.speed(ActivityQuery(models=("a",), keys=("alice",)), 60)
        assert (got["start"], got["end"], got["bucket_s"], got["count"]) == (base, base + 5, 1, 2)
        assert got["series"] == [{"model": "a", "points": [[base + 0.5, 10.0, 1], [base + 5.5, 30.0, 1]]}]
        got = store.speed(ActivityQuery(models=("nobody",), end=base), 60)
        assert (got["start"], got["end"], got["count"], got["series"]) == (base, base, 0, [])
    finally:
        store.close()
