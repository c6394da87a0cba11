"""The Timeline page in a real browser against a real proxy: ten models that swap (real
backends, real swaps) and 20 000 earlier requests in the proxy's SQLite activity file. It
checks the rows, bands, swap labels and request ticks with their hover details, the ranges,
scrolling back past the first hour, live updates, and measures the frame time of a pan with
20 000 state changes in view as well (written to test-artifacts/ui/timeline-frames.json;
never asserted: timing is not a test).
"""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import datetime

import pytest

from helpers import free_port
from uikit import ARTIFACTS, Proxy, browser, expect, open_page, playwright, shoot  # noqa: F401

from llamaswap.demo.config import free_port_range
from llamaswap.ops.activity.record import ActivityEntry, TokenMetrics
from llamaswap.ops.activity.store import SqliteStore

MODELS = [f"model-{i:02d}" for i in range(10)]
RECENT = 20_000  # requests in the last 14 minutes: all in view of the 15-minute range
OLDER = 300  # requests 70 to 90 minutes ago: reached by scrolling back
CHANGES = 20_000  # state changes in view for the frame time (ops/timeline.py's MAX_CHANGES)


def busy_config(store: str) -> str:
    py = sys.executable
    lines = ["healthCheckTimeout: 30", "logLevel: info", f"startPort: {free_port_range(12)}",
             "store:", f"  path: {json.dumps(store)}", "models:"]
    for m in MODELS:
        port = free_port()
        cmd = f"{py} -m llamaswap.demo.backend --port {port} --model-id ${{MODEL_ID}} --load-delay 0.1"
        lines += [f"  {m}:", f"    cmd: {json.dumps(cmd)}", f"    proxy: http://127.0.0.1:{port}"]
    return "\n".join(lines) + "\n"  # one default group: every model swaps the others out


def fill_store(path: str) -> None:
    """Earlier requests, as a proxy that ran before would have left them."""
    rng = random.Random(17)
    store = SqliteStore(path, 1000)
    now = time.time()
    times = sorted([now - rng.uniform(20, 14 * 60) for _ in range(RECENT)]
                   + [now - rng.uniform(70 * 60, 90 * 60) for _ in range(OLDER)])
    for t in times:
        status = rng.choices([200, 404, 500, 499], [90, 4, 3, 3])[0]
        out = rng.randint(5, 400) if status == 200 else 0
        store.append(ActivityEntry(
            id=store.reserve_id(), timestamp=datetime.fromtimestamp(t).astimezone(),
            model=rng.choice(MODELS), req_path=rng.choice(["/v1/chat/completions", "/v1/embeddings"]),
            resp_content_type="application/json", resp_status_code=status,
            tokens=TokenMetrics(input_tokens=rng.randint(1, 900), output_tokens=out,
                                tokens_per_second=rng.uniform(20, 90) if out else 0.0),
            duration_ms=rng.randint(20, 8000), key=rng.choice(["alice", "bob", "-"])))
    store.close()


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-timeline")
    fill_store(str(tmp / "activity.db"))
    p = Proxy(tmp, "timeline", text=busy_config(str(tmp / "activity.db")))
    for m in MODELS[:4]:  # real swaps: each start evicts the one before (group)
        status, body = p.request("GET", f"/upstream/{m}/health")
        assert status == 200, body
    yield p
    p.stop()



def rows(page):
    """What the last frame drew: per model, its bands (state, reason) and labels."""
    return page.evaluate("""() => Object.fromEntries(window.__timeline.layout.rows.map((r) => [
        r.model, {bands: r.bands.map((b) => [b.state, b.change ? b.change.reason : '']),
                  labels: r.labels.map((l) => l.text)}]))""")


def in_view(page, low: int, high: int) -> int:
    """Waits until the page says low..high requests are in view; returns the count."""
    page.wait_for_function(f"""() => {{
        const m = /^([0-9,]+) requests? in view/.exec(document.getElementById('tl-status').textContent);
        const n = m ? Number(m[1].replace(/,/g, '')) : -1;
        return n >= {low} && n <= {high};
    }}""")
    return int(page.locator("#tl-status").inner_text().split()[0].replace(",", ""))


def wait_drawn(page, js: str) -> None:
    page.wait_for_function(f"() => window.__timeline && window.__timeline.layout && ({js})")


def test_timeline_rows_bands_swaps_and_hover(busy, browser):
    page = open_page(browser, busy.base + "/ui/#/timeline")
    try:
        expect(page.locator("#conn")).to_have_text("live")
        page.click("button[data-span='15']")
        in_view(page, RECENT, RECENT + 50)  # the live test adds a few
        drawn = rows(page)
        assert sorted(drawn) == MODELS
        # model-01..03 each evicted the one before: a label says how long the load took
        # and what was evicted and why
        label = " ".join(drawn["model-02"]["labels"])
        assert "loaded in" in label and "evicted model-01 (swap group)" in label
        assert ["stopping", "group"] in drawn["model-01"]["bands"]
        assert drawn["model-03"]["bands"][-1][0] == "ready"
        shoot(page, "timeline")

        # hover a request tick: its path, status, tokens, duration and key
        canvas = page.locator("#timeline-canvas")
        box = canvas.bounding_box()
        x, y = page.evaluate("""() => {
            const L = window.__timeline.layout;
            const r = L.rows.find((row) => row.model === 'model-05');
            const req = r.reqs.filter((q) => q[1] > L.t0 && q[1] < L.t1 - 60000).pop();
            return [L.x(req[1]), r.y + 30];
        }""")
        page.mouse.move(box["x"] + x, box["y"] + y)
        tip = page.locator("#timeline-tip")
        expect(tip).to_be_visible()
        expect(tip.locator("[data-request]")).to_have_count(1)
        assert tip.locator("[data-request]").get_attribute("data-request") is not None
        expect(tip).to_contain_text("/v1/")
        expect(tip).to_contain_text("key ")
        expect(tip).to_contain_text("tokens ")
        shoot(page, "timeline-hover", "timeline")  # the README's: a hover over a request

        # hover a swap band: the same story in words
        x, y = page.evaluate("""() => {
            const L = window.__timeline.layout;
            const r = L.rows.find((row) => row.model === 'model-02');
            const l = r.labels[0];
            return [l.x0 + 4, r.y + 6];
        }""")
        page.mouse.move(box["x"] + x, box["y"] + y)
        expect(tip).to_contain_text("model-02: starting")
        expect(tip).to_contain_text("evicted model-01 (swap group)")

        # ranges: 5 minutes shows fewer requests
        page.click("button[data-span='5']")
        expect(page.locator("button[data-span='5']")).to_have_attribute("aria-pressed", "true")
        in_view(page, 1, RECENT - 1)
        assert page.errors == []
    finally:
        page.close()
        busy.unload_all()


def test_timeline_is_live_a_swap_shows_as_it_happens(busy, browser):
    status, _ = busy.request("GET", "/upstream/model-06/health")
    assert status == 200
    page = open_page(browser, busy.base + "/ui/#/timeline")
    try:
        wait_drawn(page, "window.__timeline.layout.rows.length === 10")
        in_view(page, RECENT, RECENT + 50)  # the history has loaded
        status, _ = busy.request("GET", "/upstream/model-07/health")  # swaps model-06 out
        assert status == 200
        sent = time.time()
        wait_drawn(page, """window.__timeline.layout.rows.find((r) => r.model === 'model-07')
            .labels.some((l) => l.text.includes('evicted model-06'))""")
        seen = time.time()
        # the page's own figure: from the change (the proxy's clock) to the frame that drew it
        shown_after = page.evaluate("""() => {
            const L = window.__timeline.layout;
            const r = L.rows.find((row) => row.model === 'model-07');
            const l = r.labels.find((x) => x.text.includes('evicted model-06'));
            return window.__timeline.shownAfterMs[l.band.change.seq];
        }""")
        drawn = rows(page)
        assert ["stopping", "group"] in drawn["model-06"]["bands"]
        # a request to it appears as a tick without reloading anything
        before = page.evaluate("window.__timeline.layout.rows.find((r) => r.model === 'model-07').reqs.length")
        status, _ = busy.request("POST", "/v1/chat/completions",
                                 {"model": "model-07", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200
        wait_drawn(page, f"""window.__timeline.layout.rows.find((r) => r.model === 'model-07')
            .reqs.length === {before + 1}""")
        (ARTIFACTS / "timeline-live.json").write_text(json.dumps(
            {"swap_start_to_label_drawn_ms": round(shown_after),
             "ready_answer_to_label_seen_by_test_s": round(seen - sent, 3)}))
        assert page.errors == []
    finally:
        page.close()
        busy.unload_all()


def test_timeline_scrolls_back_past_the_first_hour(busy, browser):
    page = open_page(browser, busy.base + "/ui/#/timeline")
    try:
        page.click("button[data-span='60']")
        in_view(page, RECENT, RECENT + 50)  # the live test adds a few
        page.click("#tl-earlier")  # 30 minutes back: no longer live
        expect(page.locator("#tl-live")).to_have_attribute("aria-pressed", "false")
        page.click("#tl-earlier")  # 60 minutes back: the earlier hour is fetched
        in_view(page, OLDER, OLDER)
        # the proxy started minutes ago: before that, no state history (said, and shaded)
        expect(page.locator("#tl-note")).to_contain_text("State history starts at")
        shoot(page, "timeline-earlier")
        page.click("#tl-live")
        in_view(page, RECENT, RECENT + 50)  # the live test adds a few
        assert page.errors == []
    finally:
        page.close()
        busy.unload_all()


def with_state_history(route) -> None:
    """The proxy's real /api/timeline answer with CHANGES earlier state changes added (10
    models swapping every 1.7 s for 14 minutes): the history's cap, which real swaps would
    take hours to fill."""
    answer = route.fetch()
    body = answer.json()
    end = min([c["t"] for c in body["changes"]] + [body["end"]]) - 1
    begin = end - 14 * 60
    step = (end - begin) / CHANGES
    cycle = ("starting", "ready", "stopping", "stopped")
    added = []
    for i in range(CHANGES):
        model, state = MODELS[(i // 4) % len(MODELS)], cycle[i % 4]
        change = {"seq": i - CHANGES, "t": round(begin + i * step, 3), "model": model,
                  "state": state, "from": cycle[i % 4 - 1], "reason": "", "for": "", "detail": ""}
        if state == "stopping":
            change["reason"], change["for"] = "group", MODELS[(i // 4 + 1) % len(MODELS)]
        elif state == "starting":
            change["evicted"] = [{"model": MODELS[(i // 4 - 1) % len(MODELS)], "reason": "group"}]
        elif state == "ready":
            change["load_s"] = 0.4
        added.append(change)
    body["changes"] = added + body["changes"]
    body["initial"] = {}
    body["history_since"] = min(body["history_since"], begin)
    route.fulfill(response=answer, json=body)


def test_timeline_frame_time_with_10_models_and_20000_requests(busy, browser):
    page = open_page(browser, "about:blank")
    try:
        page.route("**/api/timeline?*", with_state_history)
        page.goto(busy.base + "/ui/#/timeline")
        page.click("button[data-span='15']")
        in_view(page, RECENT, RECENT + 50)  # the live test adds a few
        assert page.evaluate("window.__timeline.changes") >= CHANGES
        # pan with the wheel for 180 frames: one wheel event per frame, as a trackpad sends
        result = page.evaluate("""() => new Promise((done) => {
            const canvas = document.getElementById('timeline-canvas');
            const stats = window.__timeline;
            stats.drawMs.length = 0;
            const frames = [];
            let last = null;
            let n = 0;
            const step = (ts) => {
                if (last !== null) frames.push(ts - last);
                last = ts;
                canvas.dispatchEvent(new WheelEvent('wheel', {deltaX: n < 90 ? -8 : 8,
                    bubbles: true, cancelable: true}));
                if (++n < 180) requestAnimationFrame(step);
                else requestAnimationFrame(() => done({frames, draws: stats.drawMs.slice()}));
            };
            requestAnimationFrame(step);
        })""")
        frames = sorted(result["frames"])
        draws = sorted(result["draws"])

        def pct(xs, p):
            return round(xs[min(len(xs) - 1, int(len(xs) * p))], 2)

        figures = {"models": 10, "requests_in_view": RECENT, "state_changes": CHANGES,
                   "frames": len(frames),
                   "draws": len(draws),
                   "draw_ms": {"p50": pct(draws, 0.5), "p95": pct(draws, 0.95), "max": draws[-1]},
                   "frame_interval_ms": {"p50": pct(frames, 0.5), "p95": pct(frames, 0.95),
                                         "max": round(frames[-1], 2)}}
        (ARTIFACTS / "timeline-frames.json").write_text(json.dumps(figures, indent=1))
        print("timeline frame time:", json.dumps(figures))
        assert len(draws) > 30  # it did redraw while panning
        assert page.errors == []
    finally:
        page.close()
        busy.unload_all()
