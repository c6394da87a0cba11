"""Issue 17's pages and interactions in a real browser against a real proxy (``python -m
llamaswap``, demo backends, a fake ``nvidia-smi`` on its PATH): Models (memory bars that
follow a load, restart backoff with its reason, requests in flight, the profile switcher
changing routing, selectors and peers), Activity (server pages, filters by model, key name
and time range, the speed chart, Cancel ending a stream), Performance (listed only when the
proxy samples), and the Playground (a chat model by default, image, speech and transcription
tabs). The Timeline is in test_ui_timeline.py.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading

import pytest

from helpers import free_port, wait_until
from uikit import ARTIFACTS, Proxy, browser, expect, open_page, playwright, shoot  # noqa: F401

from llamaswap.demo import fake_nvidia_smi, media
from llamaswap.demo.config import free_port_range

ADMIN = "sk-ui-admin"  # a plain key: admin, named "-"
KEYS = {"alice": "sk-ui-alice", "bob": "sk-ui-bob"}
GiB = 1024 ** 3


def pages_config() -> str:
    py = sys.executable

    def backend(extra: str = "") -> tuple[str, int]:
        port = free_port()
        return (f"{py} -m llamaswap.demo.backend --port {port} --model-id ${{MODEL_ID}}"
                f" --load-delay 0.2{extra}", port)

    models = {  # id -> extra YAML lines
        "bge-embed": ["memory: {ram: 256MiB}"],  # sorts first, and is no chat model
        "chat-a": ["memory: {ram: 1GiB}", "aliases: [gpt-4o]"],
        "chat-b": ["memory: {ram: 1GiB}"],
        "long-chat": ["memory: {ram: 2GiB}"],
        "painter": ["memory: {ram: 256MiB}", "capabilities: {in: [text], out: [image]}"],
        "voice": ["memory: {ram: 256MiB}", "capabilities: {in: [text], out: [audio]}"],
        "scribe": ["memory: {ram: 256MiB}", "capabilities: {in: [audio], out: [text]}"],
    }
    lines = ["healthCheckTimeout: 30", "logLevel: info", f"startPort: {free_port_range(10)}",
             "apiKeys:", f"  - {ADMIN}"]
    for name, key in KEYS.items():
        lines += [f"  - key: {key}", f"    name: {name}"]
    lines += ["memory:", "  devices: {ram: 4GiB}", "  headroom: 512MiB", "models:"]
    for mid, extra in models.items():
        cmd, port = backend()
        lines += [f"  {mid}:", f"    cmd: {json.dumps(cmd)}", f"    proxy: http://127.0.0.1:{port}"]
        lines += [f"    {x}" for x in extra]
    # two models of a swap group that sleep instead of stopping (vLLM's sleep API, demo backend)
    for mid in ("nap-a", "nap-b"):
        cmd, port = backend()
        lines += [f"  {mid}:", f"    cmd: {json.dumps(cmd)}", f"    proxy: http://127.0.0.1:{port}",
                  "    memory: {ram: 256MiB}", '    sleep: "POST /sleep?level=1"',
                  '    wake: "POST /wake_up"']
    # fails every start: the restart policy backs off, and the page says why
    lines += ["  flaky:", f"    cmd: {json.dumps(py + ' -m llamaswap.demo.backend --port ${PORT} --fail-start boom')}",
              "    restart: on-failure", "    memory: {ram: 256MiB}"]
    lines += ["groups:", "  naps:", "    swap: true", "    exclusive: false",
              "    members: [nap-a, nap-b]"]
    lines += ["selectors:", "  coder:", "    strategy: warm", "    targets: [chat-b, chat-a]",
              "profiles:", "  focus:", "    description: everything on chat-b",
              "    pins: {gpt-4o: chat-b}",
              "peers:", "  gpu-box:", f"    proxy: http://127.0.0.1:{free_port()}",
              "    models: [big-remote-model]"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-pages")
    state = str(tmp / "gpu")
    fake_nvidia_smi.setup(state, [{"total": 80 * GiB, "base": 3 * GiB, "name": "NVIDIA H100 80GB HBM3"}])
    bin_dir = fake_nvidia_smi.install(str(tmp / "bin"), state).rsplit("/", 1)[0]
    p = Proxy(tmp, "pages", api_keys=[ADMIN], text=pages_config(),
              env={"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    yield p
    p.stop()



def ui(browser, proxy, route: str, **kw):
    return open_page(browser, f"{proxy.base}/ui/#{route}",
                     http_credentials={"username": "admin", "password": ADMIN}, **kw)


def chat(proxy, model: str, key: str = ADMIN, stream: bool = False, **demo) -> dict:
    """One chat request; streamed ones return {} (their speed is what the backend took)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if demo:
        body["demo"] = demo
    status, raw = proxy.request("POST", "/v1/chat/completions", body,
                                headers={"Authorization": f"Bearer {key}"})
    assert status == 200, raw
    return {} if stream else json.loads(raw)


def row(page, model_id: str):
    return page.locator(f"#models-local tr[data-model='{model_id}']")


class SlowStream(threading.Thread):
    """A streamed chat answer that takes half a minute unless something ends it."""

    def __init__(self, proxy, model: str):
        super().__init__(daemon=True)
        self.proxy, self.model = proxy, model
        self.chunks = 0
        self.ended = threading.Event()
        self.started_streaming = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=60)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps({
                "model": self.model, "stream": True, "messages": [{"role": "user", "content": "x"}],
                "demo": {"chunks": 600, "chunk_delay": 0.05}}),
                {"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['bob']}"})
            resp = conn.getresponse()
            while resp.read1(4096):
                self.chunks += 1
                self.started_streaming.set()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
            self.ended.set()


# -- Models ---------------------------------------------------------------------------------

def test_models_memory_bars_follow_a_load(proxy, browser):
    page = ui(browser, proxy, "/models")
    try:
        card = page.locator("#memory-card")
        expect(card.locator(".mem-device[data-device='ram']")).to_be_visible()
        expect(card).to_contain_text("budget 4.0 GiB")
        # every part of the bar is named: what is free, and the headroom kept free
        expect(card.locator(".legend-item[data-part='headroom']")).to_have_text("headroom 512 MiB")
        expect(card.locator(".legend-item[data-part='free']")).to_have_text("free 3.5 GiB")
        row(page, "chat-a").get_by_role("button", name="Load", exact=True).click()
        expect(row(page, "chat-a").locator("[data-testid=state]")).to_have_text("ready")
        expect(card.locator(".legend-item[data-model='chat-a']")).to_contain_text("chat-a 1.0 GiB")
        expect(card.locator("[data-testid=mem-figures]")).to_contain_text("1.0 GiB used")
        row(page, "long-chat").get_by_role("button", name="Load", exact=True).click()
        expect(card.locator(".legend-item[data-model='long-chat']")).to_contain_text("2.0 GiB")
        expect(card.locator("[data-testid=mem-figures]")).to_contain_text("3.0 GiB used")
        expect(card.locator("svg.segbar rect.seg[data-label='long-chat']")).to_have_count(1)
        expect(row(page, "long-chat").get_by_role("button", name="Load", exact=True)).to_be_disabled()
        shoot(page, "models-memory", "models-memory")
        # one more GiB does not fit 4 GiB - 512 MiB headroom: the least recently used goes
        row(page, "chat-b").get_by_role("button", name="Load", exact=True).click()
        expect(row(page, "chat-b").locator("[data-testid=state]")).to_have_text("ready")
        expect(card.locator(".legend-item[data-model='chat-a']")).to_have_count(0)
        expect(card.locator("[data-testid=mem-figures]")).to_contain_text("3.0 GiB used")
        assert page.errors == []
    finally:
        page.close()
        proxy.unload_all()


def test_models_backoff_state_says_why_and_when(proxy, browser):
    page = ui(browser, proxy, "/models")
    try:
        flaky = row(page, "flaky")
        flaky.get_by_role("button", name="Load", exact=True).click()
        expect(flaky.locator("[data-testid=state]")).to_have_text("backoff")
        note = flaky.locator("[data-testid=state-note]")
        expect(note).to_contain_text("restart in")
        expect(note).to_contain_text("after start failed")
        shoot(page, "models-backoff")
        assert page.errors == []
    finally:
        page.close()
        proxy.request("POST", "/api/models/unload/flaky")
        proxy.unload_all()


def test_a_model_put_to_sleep_shows_asleep_on_models_memory_and_timeline(proxy, browser):
    page = ui(browser, proxy, "/models")
    try:
        row(page, "nap-a").get_by_role("button", name="Load", exact=True).click()
        expect(row(page, "nap-a").locator("[data-testid=state]")).to_have_text("ready")
        row(page, "nap-b").get_by_role("button", name="Load", exact=True).click()  # its group-mate
        expect(row(page, "nap-b").locator("[data-testid=state]")).to_have_text("ready")
        nap = row(page, "nap-a")
        expect(nap.locator("[data-testid=state]")).to_have_text("sleeping")
        expect(nap.locator("[data-testid=state-note]")).to_contain_text("wakes on the next request")
        # asleep it keeps its RAM: still on the bar, hatched, and named asleep
        card = page.locator("#memory-card")
        expect(card.locator(".legend-item[data-model='nap-a']")).to_contain_text("(asleep)")
        expect(card.locator("svg.segbar rect.seg.hatch[data-label='nap-a']")).to_have_count(1)
        shoot(page, "models-sleeping")

        page.click("#nav a[data-route='/timeline']")
        page.wait_for_function("""() => {
            const L = window.__timeline && window.__timeline.layout;
            const r = L && L.rows.find((x) => x.model === 'nap-a');
            return r && r.bands.some((b) => b.state === 'sleeping');
        }""")
        band = page.evaluate("""() => window.__timeline.layout.rows.find((x) => x.model === 'nap-a')
            .bands.filter((b) => b.state === 'sleeping').map((b) => [b.change.reason, b.change.for])""")
        assert band == [["group", "nap-b"]]
        label = page.evaluate("""() => window.__timeline.layout.rows.find((x) => x.model === 'nap-b')
            .labels.map((l) => l.text).join(' ')""")
        assert "put nap-a (swap group) to sleep" in label
        shoot(page, "timeline-sleeping")

        assert chat(proxy, "nap-a")["model"] == "nap-a"  # a request wakes it; nap-b sleeps
        # awake again: hovering its ready band says how it got there (a wake takes milliseconds)
        page.wait_for_function("""() => {
            const bands = window.__timeline.layout.rows.find((x) => x.model === 'nap-a').bands;
            return bands.filter((b) => b.state === 'sleeping').length === 1
                && bands[bands.length - 1].state === 'ready';
        }""")
        x, y = page.evaluate("""() => {
            const r = window.__timeline.layout.rows.find((x) => x.model === 'nap-a');
            const b = r.bands[r.bands.length - 1];
            return [b.x1 - 2, r.y + 19];
        }""")
        box = page.locator("#timeline-canvas").bounding_box()
        page.mouse.move(box["x"] + x, box["y"] + y)
        expect(page.locator("#timeline-tip")).to_contain_text("woke in")
        page.click("#nav a[data-route='/models']")
        expect(row(page, "nap-a").locator("[data-testid=state]")).to_have_text("ready")
        expect(row(page, "nap-b").locator("[data-testid=state]")).to_have_text("sleeping")
        assert page.errors == []
    finally:
        page.close()
        proxy.unload_all()


def test_profile_switcher_changes_routing_and_selectors_and_peers_are_listed(proxy, browser):
    page = ui(browser, proxy, "/models")
    try:
        assert chat(proxy, "gpt-4o")["model"] == "chat-a"  # the alias, without a profile
        select = page.locator("#profile-select")
        expect(select).to_have_value("")
        select.select_option("focus")
        expect(page.locator("#profile-pins")).to_contain_text("gpt-4o → chat-b")
        assert wait_until(lambda: json.loads(proxy.request("GET", "/api/profiles")[1])["active"] == "focus", 10)
        assert chat(proxy, "gpt-4o")["model"] == "chat-b"  # the pin routes it elsewhere now
        sel = page.locator("#selectors-card tr[data-selector='coder']")
        expect(sel).to_contain_text("warm")
        expect(sel.locator(".target")).to_have_count(2)
        expect(sel.locator(".target").first).to_contain_text("chat-b")
        expect(sel.locator(".target").first.locator(".state")).to_have_text("ready")
        expect(page.locator("#models-peer tr[data-model='gpu-box/big-remote-model']")).to_contain_text("remote · gpu-box")
        shoot(page, "models-profile", "models-profile")
        select.select_option("")
        assert wait_until(lambda: json.loads(proxy.request("GET", "/api/profiles")[1])["active"] is None, 10)
        assert chat(proxy, "gpt-4o")["model"] == "chat-a"
        assert page.errors == []
    finally:
        page.close()
        proxy.unload_all()


def test_in_flight_per_model_and_cancel_ends_the_stream(proxy, browser):
    page = ui(browser, proxy, "/models")
    stream = SlowStream(proxy, "chat-a")
    try:
        stream.start()
        assert stream.started_streaming.wait(30)
        expect(row(page, "chat-a").locator("[data-testid=inflight]")).to_have_text("1 in flight")
        page.click("#nav a[data-route='/activity']")
        flight = page.locator("#inflight-rows tr")
        expect(flight).to_have_count(1)
        expect(flight.first).to_contain_text("chat-a")
        expect(flight.first.locator("td[data-label=Key]")).to_have_text("bob")  # its name, never the key
        shoot(page, "activity-inflight")
        flight.first.get_by_role("button", name="Cancel").click()
        assert stream.ended.wait(10)  # the client's stream ends at once, cut short
        assert stream.chunks < 600
        expect(flight).to_have_count(0)
        expect(page.locator("#inflight-empty")).to_be_visible()
        assert page.errors == []
    finally:
        stream.ended.wait(30)
        page.close()
        proxy.unload_all()


# -- Activity -------------------------------------------------------------------------------

def test_activity_pages_filters_and_speed_chart(proxy, browser):
    for i in range(30):  # streamed at 50 to 150 tokens/s
        chat(proxy, "chat-a" if i % 2 else "chat-b", KEYS["alice"] if i % 4 else KEYS["bob"],
             stream=True, chunks=12, chunk_delay=0.02 / (1 + i % 3))
    page = ui(browser, proxy, "/activity")
    try:
        rows = page.locator("#activity-rows tr")
        page.select_option("#activity-limit", "25")
        expect(rows).to_have_count(25)
        total = int(page.locator("#activity-count").inner_text().split()[0].replace(",", ""))
        assert total >= 26
        expect(page.locator("#activity-page")).to_contain_text("page 1 of")
        page.click("#activity-next")
        expect(page.locator("#activity-page")).to_contain_text("page 2 of")
        page.click("#activity-prev")

        page.fill("#activity-key", "bob")
        page.locator("#activity-key").dispatch_event("change")
        expect(rows.first.locator("td[data-label=Key]")).to_have_text("bob")
        assert set(rows.locator("td[data-label=Key]").all_inner_texts()) == {"bob"}
        page.select_option("#activity-model", "chat-b")
        expect(page.locator("#activity-count")).to_contain_text("request")
        assert wait_until(lambda: set(rows.locator("td[data-label=Model]").all_inner_texts()) == {"chat-b"}, 10)
        page.select_option("#activity-range", "15m")
        expect(page.locator("#activity-chart svg.chart-svg path")).to_have_count(1)  # one model
        expect(page.locator("#activity-chart .legend")).to_contain_text("chat-b")
        # the chart counts every row the filters match (the server's figure, as the table's)
        expect(page.locator("#activity-count")).to_have_text("8 requests")
        expect(page.locator(".chart-card .perf-head")).to_contain_text("8 requests with a speed")

        # the time range is the server's: a custom range in the past has nothing
        page.select_option("#activity-range", "custom")
        page.fill("#activity-from", "2001-01-01T00:00")
        page.fill("#activity-to", "2001-01-02T00:00")
        page.locator("#activity-to").dispatch_event("change")
        expect(page.locator("#activity-count")).to_have_text("0 requests")
        expect(page.locator("#activity-chart")).to_contain_text("No request with a generation speed")
        page.select_option("#activity-range", "all")  # all time: from the oldest matching row
        expect(page.locator(".chart-card .perf-head")).to_contain_text("8 requests with a speed")
        expect(page.locator("#activity-chart svg.chart-svg path")).to_have_count(1)
        shoot(page, "activity-filtered", "activity-filtered")
        page.select_option("#activity-model", "")
        page.fill("#activity-key", "")
        page.locator("#activity-key").dispatch_event("change")
        assert page.errors == []
    finally:
        page.close()
        proxy.unload_all()


# -- Performance ----------------------------------------------------------------------------

def test_performance_page_charts_cpu_ram_and_each_gpu(proxy, browser):
    page = ui(browser, proxy, "/performance")
    try:
        expect(page.locator("#nav a[data-route='/performance']")).to_be_visible()
        gpu = page.locator(".perf-gpu[data-gpu='0']")
        expect(gpu).to_contain_text("NVIDIA H100 80GB HBM3", timeout=30_000)  # first sample: 5 s
        expect(gpu.locator("svg.chart-svg")).to_have_count(4)
        expect(page.locator(".perf-card")).to_have_count(2)  # CPU and RAM
        expect(page.locator(".perf-card").first.locator("path")).to_have_count(1)
        shoot(page, "performance", "performance")
        assert page.errors == []
    finally:
        page.close()


def test_performance_page_is_hidden_when_sampling_is_disabled(tmp_path, browser):
    text = pages_config().replace("memory:\n", "performance: {disabled: true}\nmemory:\n", 1)
    p = Proxy(tmp_path, "no-perf", api_keys=[ADMIN], text=text)
    try:
        page = ui(browser, p, "/models")
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#nav a[data-route='/timeline']")).to_be_visible()
        expect(page.locator("#nav a[data-route='/performance']")).to_be_hidden()
        page.goto(f"{p.base}/ui/#/performance")
        expect(page.locator("#perf-body")).to_contain_text("Performance monitoring is disabled")
        assert page.errors == []
        page.close()
    finally:
        p.stop()


# -- Playground -----------------------------------------------------------------------------

def test_playground_opens_on_a_chat_model_with_media_tabs(proxy, browser):
    page = ui(browser, proxy, "/")
    try:
        expect(page.locator("#pg-model option[value='bge-embed']")).to_have_count(1)
        expect(page.locator("#pg-model")).to_have_value("chat-a")  # not the embedding model
        tabs = page.locator("#pg-tabs [role=tab]")
        expect(tabs).to_have_text(["Chat", "Images", "Speech", "Transcription"])

        page.click("#pg-tabs [data-tab=images]")
        expect(page.locator("#img-model")).to_have_value("painter")
        page.fill("#img-prompt", "a lighthouse at dusk")
        page.select_option("#img-n", "2")
        page.click("#img-go")
        expect(page.locator("#img-gallery img")).to_have_count(2)
        assert page.evaluate("document.querySelector('#img-gallery img').naturalWidth") == 64
        shoot(page, "playground-images", "playground-images")

        page.click("#pg-tabs [data-tab=speech]")
        page.fill("#tts-input", "hello there")
        page.click("#tts-go")
        expect(page.locator("#tts-audio")).to_have_count(1)
        page.wait_for_function("document.getElementById('tts-audio').duration > 0.5")

        page.click("#pg-tabs [data-tab=transcription]")
        audio = ARTIFACTS / "speech.wav"
        audio.write_bytes(media.wav("hello"))
        page.set_input_files("#stt-file", str(audio))
        page.click("#stt-go")
        expect(page.locator("#stt-out")).to_contain_text("demo transcription by scribe")

        page.click("#pg-tabs [data-tab=chat]")
        page.fill("#pg-input", "Say hello")
        page.click("#pg-send")
        answer = page.locator("[data-testid=assistant]").last
        expect(answer.locator(".assistant-content")).to_contain_text("demo answer from chat-a")
        assert page.errors == []
    finally:
        page.close()
        proxy.unload_all()


def test_new_pages_at_phone_width_in_the_dark(proxy, browser):
    page = ui(browser, proxy, "/timeline", color_scheme="dark")
    try:
        # swaps for the timeline: one puts a model to sleep, one evicts for memory
        for model, key in (("chat-a", ADMIN), ("chat-b", KEYS["alice"]), ("nap-a", ADMIN),
                           ("nap-b", KEYS["bob"]), ("long-chat", KEYS["alice"]), ("chat-b", ADMIN)):
            chat(proxy, model, key)
        page.set_viewport_size({"width": 390, "height": 820})
        for route, ready in (("/timeline", "#timeline-canvas"), ("/models", "#memory-card"),
                             ("/activity", "#activity-rows tr"), ("/performance", ".perf-card")):
            page.goto(f"{proxy.base}/ui/#{route}")
            expect(page.locator(ready).first).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, route
            shoot(page, f"phone-{route.strip('/')}", "timeline-phone" if route == "/timeline" else None)
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(f"{proxy.base}/ui/#/timeline")
        page.click("button[data-span='1']")  # the last minute up close: this test's swaps
        expect(page.locator("#tl-status")).to_contain_text("in view")
        shoot(page, "timeline-dark", "timeline-dark")
        assert page.errors == []
    finally:
        page.close()
        proxy.unload_all()
