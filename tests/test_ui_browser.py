"""The web UI at /ui in a real browser (Debian's chromium driven by Python playwright),
against a real proxy (``python -m llamaswap``) with demo backends: the pages that were there
first (Playground, Models, Activity, Logs), the shell and the connection. The pages of issue
17 are in test_ui_pages.py; the plumbing is tests/uikit.py.

Screenshots of every page land in test-artifacts/ui/. With LLAMASWAP_UI_SCREENSHOTS=1 they
are also written to docs/screenshots/ for the README (kept out of ordinary runs so a test run
does not dirty the checkout).
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from helpers import wait_until
from uikit import (API_KEY, ARTIFACTS, TIMEOUT_MS, Proxy, browser, expect, open_page,  # noqa: F401
                   playwright, row, shoot)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = Proxy(tmp_path_factory.mktemp("ui"), "open")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = Proxy(tmp_path_factory.mktemp("ui-auth"), "auth", api_keys=[API_KEY])
    yield p
    p.stop()



# -- tests ----------------------------------------------------------------------------------

def test_models_page_loads_and_unloads_live(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/#/models")
    try:
        expect(page.locator("#conn")).to_have_text("live")
        # no memory section, profiles or selectors here: once asked, their cards stay away
        expect(page.locator(".model-extras")).to_have_attribute("data-answered", "memory profiles selectors")
        for card in ("#memory-card", "#profile-card", "#selectors-card"):
            expect(page.locator(card)).to_have_count(0)
        chat = row(page, "demo-chat")
        expect(chat.locator("[data-testid=state]")).to_have_text("stopped")
        expect(chat).to_contain_text("Demo Chat")
        expect(chat).to_contain_text("answers with a short streamed demo text")
        expect(chat.locator(".alias")).to_have_text(["chat", "gpt-4o-mini"])
        # unlisted models only on request; peers' models are marked remote
        expect(row(page, "demo-hidden")).to_have_count(0)
        page.check("#show-unlisted")
        expect(row(page, "demo-hidden")).to_have_count(1)
        # a load that fails says so on the row, and the model stays stopped
        row(page, "demo-hidden").get_by_role("button", name="Load", exact=True).click()
        expect(row(page, "demo-hidden").locator("[role=alert]")).to_contain_text("load failed: ")
        expect(row(page, "demo-hidden").locator("[data-testid=state]")).to_have_text("stopped")
        page.uncheck("#show-unlisted")
        peer = page.locator("#models-peer tr[data-model='gpu-box/big-remote-model']")  # qualified, as upstream
        expect(peer).to_contain_text("remote · gpu-box")
        expect(peer.locator("button")).to_have_count(0)

        # Load: the state goes starting -> ready through /api/events, no page reload.
        page.evaluate("window.__sameDocument = true")
        chat.get_by_role("button", name="Load", exact=True).click()
        expect(chat.locator("[data-testid=state]")).to_have_text("ready")
        assert page.evaluate("window.__sameDocument") is True
        expect(chat.get_by_role("button", name="Unload", exact=True)).to_be_enabled()
        status, body = proxy.request("GET", "/running")
        assert status == 200 and [r["model"] for r in json.loads(body)["running"]] == ["demo-chat"]
        shoot(page, "models", "models")

        chat.get_by_role("button", name="Unload", exact=True).click()
        expect(chat.locator("[data-testid=state]")).to_have_text("stopped")
        assert json.loads(proxy.request("GET", "/running")[1])["running"] == []

        # Unload all stops everything that runs.
        row(page, "demo-coder").get_by_role("button", name="Load", exact=True).click()
        expect(row(page, "demo-coder").locator("[data-testid=state]")).to_have_text("ready")
        page.click("#unload-all")
        expect(row(page, "demo-coder").locator("[data-testid=state]")).to_have_text("stopped")
        assert page.errors == []
    finally:
        proxy.unload_all()


def test_playground_streams_answer_with_loading_messages(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/")
    try:
        expect(page.locator("#pg-model option[value='demo-chat']")).to_have_count(1)
        page.select_option("#pg-model", "demo-chat")
        page.fill("#pg-max-tokens", "64")
        page.fill("#pg-input", "Say hello")
        page.click("#pg-send")
        # The model was stopped: the proxy's loading-state stream shows as loading, apart
        # from the answer.
        answer = page.locator("[data-testid=assistant]").last
        expect(answer.locator(".loading-box")).to_contain_text("loading model: demo-chat")
        expect(page.locator("#pg-stop")).to_be_visible()
        expect(answer.locator(".assistant-content")).to_contain_text("demo answer from demo-chat")
        expect(answer.locator(".stats")).to_contain_text("t/s")
        expect(page.locator("#pg-send")).to_be_visible()
        assert "loading model" not in answer.locator(".assistant-content").inner_text()
        shoot(page, "playground", "playground")

        # A second turn goes to the now-ready model: no loading box, the history is sent.
        page.fill("#pg-input", "And again")
        page.keyboard.press("Enter")
        second = page.locator("[data-testid=assistant]").nth(1)
        expect(second.locator(".stats")).to_contain_text("t/s")
        expect(second.locator(".loading-box")).to_be_hidden()
        assert page.errors == []
    finally:
        proxy.unload_all()


def test_playground_stop_button_aborts_the_stream(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/")
    try:
        page.select_option("#pg-model", "demo-coder")
        # The demo backend reads per-request knobs from a "demo" field: make it slow.
        page.evaluate("""() => {
            const orig = window.fetch;
            window.fetch = (url, opts) => {
                if (String(url).endsWith('/v1/chat/completions')) {
                    const body = JSON.parse(opts.body);
                    body.demo = {chunks: 400, chunk_delay: 0.05};
                    opts = {...opts, body: JSON.stringify(body)};
                }
                return orig(url, opts);
            };
        }""")
        page.fill("#pg-input", "Talk for a long time")
        page.click("#pg-send")
        answer = page.locator("[data-testid=assistant]").last
        expect(answer.locator(".assistant-content")).not_to_be_empty()
        page.click("#pg-stop")
        expect(answer.locator(".stats")).to_contain_text("stopped")
        expect(page.locator("#pg-send")).to_be_visible()
        assert page.errors == []
    finally:
        proxy.unload_all()


def test_activity_shows_new_request_live_and_opens_its_capture(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/#/activity")
    try:
        expect(page.locator("#conn")).to_have_text("live")
        count = page.locator("#activity-count")  # set once the first page has been drawn
        expect(count).to_have_text(re.compile(r"^[0-9,]+ requests?$"))
        before = int(count.inner_text().split()[0].replace(",", ""))
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        status, body = proxy.request(
            "POST", "/v1/chat/completions",
            {"model": "demo-coder", "stream": True,
             "messages": [{"role": "user", "content": marker}]},
            headers={"Authorization": "Bearer sk-do-not-show"})
        assert status == 200, body
        rows = page.locator("#activity-rows tr")
        expect(count).to_have_text(re.compile(rf"^{before + 1} requests?$"))
        newest = rows.first  # default sort: newest first
        expect(newest.locator("td[data-label=Model]")).to_have_text("demo-coder")
        expect(newest.locator("td[data-label=Path]")).to_have_text("/v1/chat/completions")
        expect(newest.locator("td[data-label=Status]")).to_have_text("200")
        assert newest.locator("td[data-label=Out]").inner_text() not in ("", "-", "0")
        shoot(page, "activity", "activity")

        # sortable: text columns sort ascending first, a second click reverses
        header = page.locator("th[data-key=model]")
        header.click()
        expect(header).to_have_attribute("aria-sort", "ascending")
        models = page.locator("#activity-rows td[data-label=Model]")
        assert wait_until(lambda: models.all_inner_texts() == sorted(models.all_inner_texts()), 5)
        header.click()
        expect(header).to_have_attribute("aria-sort", "descending")
        assert wait_until(lambda: models.all_inner_texts()
                          == sorted(models.all_inner_texts(), reverse=True), 5)
        page.click("th[data-key=id]")

        newest.get_by_role("button", name="View").click()
        dialog = page.locator("#capture-dialog")
        expect(dialog).to_be_visible()
        body_view = dialog.locator(".capture-body").first
        expect(body_view).to_contain_text(marker)
        expect(body_view).to_contain_text('"messages": [')  # pretty-printed JSON
        expect(dialog.locator(".assembled")).to_contain_text("demo answer from demo-coder")
        dialog.locator("summary", has_text="Request headers").click()
        expect(dialog).to_contain_text("[REDACTED]")
        expect(dialog).not_to_contain_text("sk-do-not-show")
        shoot(page, "capture", "activity-capture")
        dialog.get_by_role("button", name="Close").click()
        expect(dialog).to_be_hidden()
        assert page.errors == []
    finally:
        proxy.unload_all()


def test_logs_page_streams_filters_and_pauses(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/#/logs")
    try:
        log = page.locator("#log-text")
        expect(log).not_to_have_text("No log output yet.")
        marker = f"no-such-path-{uuid.uuid4().hex[:8]}"
        proxy.request("GET", f"/{marker}")  # the access log line names the path
        expect(log).to_contain_text(marker)

        page.fill("#log-filter", marker)
        wait_until(lambda: all(marker in line for line in log.inner_text().splitlines()), 5)
        assert all(marker in line for line in log.inner_text().splitlines())
        page.fill("#log-filter", "")

        page.click("#log-pause")
        expect(page.locator("#log-pause")).to_have_text("Resume")
        second = f"no-such-path-{uuid.uuid4().hex[:8]}"
        proxy.request("GET", f"/{second}")
        expect(page.locator("#log-status")).to_contain_text("new")
        assert second not in log.inner_text()
        page.click("#log-pause")
        expect(log).to_contain_text(second)
        shoot(page, "logs", "logs")

        # A model's own output stream: load it, pick it, see the backend's lines.
        status, _ = proxy.request("GET", "/upstream/demo-coder/")
        assert status < 500
        page.select_option("#log-source", "demo-coder")
        expect(log).to_contain_text("demo backend demo-coder listening")
        shoot(page, "logs-model", "logs-model")
        assert page.errors == []
    finally:
        proxy.unload_all()


def test_logs_page_caps_what_it_keeps_from_a_chatty_backend(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/#/logs")
    try:
        page.select_option("#log-source", "demo-embed")
        log = page.locator("#log-text")
        status, _ = proxy.request("GET", "/upstream/demo-embed/")  # prints 800 kB, then serves
        assert status == 200
        expect(log).to_contain_text("demo backend demo-embed listening")
        kept = page.evaluate("document.getElementById('log-text').textContent.length")
        assert 128 * 1024 < kept <= 256 * 1024
        expect(page.locator("#log-status")).to_contain_text("KiB kept")
        assert page.errors == []
    finally:
        proxy.unload_all()


def test_markdown_from_the_model_cannot_inject_html(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/#/models")
    result = page.evaluate("""async () => {
        const md = await import('./js/markdown.js');
        const box = document.createElement('div');
        box.append(...md.renderMarkdown(
            "<img src=x onerror=\\"window.__pwned=1\\"> **bold** [x](javascript:alert(1))\\n\\n" +
            "```html\\n<script>window.__pwned=2</script>\\n```\\n\\n- [ok](https://example.com)"));
        document.body.append(box);
        await new Promise((r) => setTimeout(r, 50));
        return {
            imgs: box.querySelectorAll('img, script').length,
            hrefs: Array.from(box.querySelectorAll('a')).map((a) => a.getAttribute('href')),
            strong: box.querySelector('strong')?.textContent,
            text: box.textContent,
            pwned: window.__pwned || 0,
        };
    }""")
    assert result["imgs"] == 0 and result["pwned"] == 0
    assert result["hrefs"] == ["https://example.com/"]
    assert result["strong"] == "bold"
    assert "<img src=x" in result["text"] and "<script>" in result["text"]


def test_ui_works_behind_basic_auth(auth_proxy, browser):
    # Without credentials the UI is refused (differences.md point 9).
    status, _ = auth_proxy.request("GET", "/ui/", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    page = open_page(browser, auth_proxy.base + "/ui/#/models",
                     http_credentials={"username": "anyone", "password": API_KEY})
    try:
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#version")).not_to_be_empty()
        chat = row(page, "demo-chat")
        chat.get_by_role("button", name="Load", exact=True).click()
        expect(chat.locator("[data-testid=state]")).to_have_text("ready")
        chat.get_by_role("button", name="Unload", exact=True).click()
        expect(chat.locator("[data-testid=state]")).to_have_text("stopped")
        page.goto(auth_proxy.base + "/ui/#/logs")
        expect(page.locator("#log-text")).to_contain_text("Request")
        assert page.errors == []
    finally:
        auth_proxy.unload_all()


def test_root_and_upstream_redirects_land_on_pages(proxy, browser):
    page = open_page(browser, proxy.base + "/")
    expect(page.locator("#page-playground")).to_have_count(1)
    assert page.url.startswith(proxy.base + "/ui/")
    page.goto(proxy.base + "/upstream")  # upstream's redirect to /ui/models
    expect(page.locator("#page-models")).to_have_count(1)
    expect(row(page, "demo-chat")).to_have_count(1)
    assert page.errors == []


def test_reconnects_with_backoff_after_a_restart(tmp_path, browser):
    first = Proxy(tmp_path, "restart-1")
    second = None
    try:
        page = open_page(browser, first.base + "/ui/#/models")
        expect(page.locator("#conn")).to_have_text("live")
        first.stop()
        banner = page.locator("#banner")
        expect(banner).to_contain_text("Reconnecting in")
        expect(page.locator("#conn")).to_have_text("offline")
        shoot(page, "reconnecting")
        second = Proxy(tmp_path, "restart-2", port=first.port)
        # backoff is at most 5 s between attempts
        expect(page.locator("#conn")).to_have_text("live", timeout=TIMEOUT_MS)
        expect(banner).to_be_hidden()
        expect(row(page, "demo-chat")).to_have_count(1)
        assert page.errors == []
    finally:
        first.stop()
        if second:
            second.stop()


def test_phone_width_and_dark_theme(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/#/models", color_scheme="dark")
    expect(row(page, "demo-chat")).to_have_count(1)
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg != "rgb(245, 246, 248)"  # the light background
    shoot(page, "models-dark", "models-dark")
    page.set_viewport_size({"width": 390, "height": 800})
    # nothing wider than the screen but the scrollable tables
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    shoot(page, "models-phone", "models-phone")
    page.click("#nav a[data-route='/']")
    expect(page.locator("#pg-send")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "playground-phone")
    assert page.errors == []
