"""The web UI at /ui in a real browser (Debian's chromium driven by Python playwright),
against a real proxy (``python -m llamaswap``) with demo backends.

Screenshots of every page land in test-artifacts/ui/. With LLAMASWAP_UI_SCREENSHOTS=1 they
are also written to docs/screenshots/ for the README (kept out of ordinary runs so a test run
does not dirty the checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, free_port, wait_until

from llamaswap.demo.config import free_port_range

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="python playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)

expect = sync_api.expect
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
DOC_SHOTS = ROOT / "docs" / "screenshots"
API_KEY = "sk-ui-test-key"
TIMEOUT_MS = 20_000  # generous: CI machines are busy; passing runs never wait this long
expect.set_options(timeout=TIMEOUT_MS)


# -- the proxy under test -------------------------------------------------------------------

def config_text(api_keys: list[str] | None = None) -> str:
    py = sys.executable
    models = {
        "demo-chat": dict(name="Demo Chat", description="answers with a short streamed demo text",
                          aliases=["chat", "gpt-4o-mini"], delay=1.0),
        "demo-coder": dict(name="Demo Coder", description="a second model; swaps with Demo Chat",
                           aliases=[], delay=0.3),
        "demo-embed": dict(name="", description="", aliases=[], delay=0.2,
                           extra=" --log-flood 800000"),  # a chatty backend
    }
    # ${PORT}s from a free range: the default 5800 collides with any other proxy on the machine
    lines = ["healthCheckTimeout: 30", "logLevel: info", "sendLoadingState: true",
             "captureBuffer: 5", f"startPort: {free_port_range(len(models) + 1)}"]
    if api_keys:
        lines.append("apiKeys: [" + ", ".join(json.dumps(k) for k in api_keys) + "]")
    lines.append("models:")
    for model_id, m in models.items():
        port = free_port()
        cmd = (f"{py} -m llamaswap.demo.backend --port {port} --model-id ${{MODEL_ID}}"
               f" --load-delay {m['delay']}{m.get('extra', '')}")
        lines += [f"  {model_id}:", f"    cmd: {json.dumps(cmd)}",
                  f"    proxy: http://127.0.0.1:{port}"]
        if m["name"]:
            lines.append(f"    name: {json.dumps(m['name'])}")
        if m["description"]:
            lines.append(f"    description: {json.dumps(m['description'])}")
        if m["aliases"]:
            lines.append("    aliases: [" + ", ".join(m["aliases"]) + "]")
    # unlisted, and its backend exits at once: the Models page shows the failed load
    broken = f"{py} -m llamaswap.demo.backend --port ${{PORT}} --fail-start 'no GPU found'"
    lines += ["  demo-hidden:", f"    cmd: {json.dumps(broken)}", "    unlisted: true"]
    # A peer nobody listens on: its models are listed (marked remote), never contacted.
    lines += ["peers:", "  gpu-box:", f"    proxy: http://127.0.0.1:{free_port()}",
              "    models: [big-remote-model]"]
    return "\n".join(lines) + "\n"


class Proxy:
    def __init__(self, tmp: Path, name: str, api_keys: list[str] | None = None,
                 port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_keys = api_keys
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(config_text(api_keys))
        self.log_path = ARTIFACTS / f"proxy-{name}.log"
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(  # the real CLI, as users start it
            [sys.executable, "-m", "llamaswap", "-config", str(cfg), "-listen",
             f"127.0.0.1:{self.port}"],
            cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)
        if not wait_until(self._healthy, timeout=20, interval=0.05) or self.proc.poll() is not None:
            self.stop()
            pytest.fail(f"proxy did not come up; its output:\n{self.log_path.read_text()[-3000:]}")
        status, _ = self.request("GET", "/ui/")
        if status != 200:
            self.stop()
            pytest.fail(f"GET /ui/ answered {status}: the proxy does not serve the UI's files")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            return True  # reported by the caller via the log
        try:
            with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def request(self, method: str, path: str, body: object = None, headers=None) -> tuple[int, bytes]:
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if self.api_keys and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.api_keys[0]}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def unload_all(self) -> None:
        self.request("POST", "/api/models/unload")

    def stop(self) -> None:
        if self.log_file.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


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


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as pw:
        yield pw


@pytest.fixture
def browser(playwright):
    # One browser per test: its renderer processes are gone when the test ends, which the
    # leak check in conftest.py verifies.
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


def open_page(browser, url: str, **context_args):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **context_args)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url)
    return page


def shoot(page, name: str, doc_name: str | None = None) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus rings
    page.screenshot(path=str(path))
    if doc_name and os.environ.get("LLAMASWAP_UI_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_SHOTS / f"{doc_name}.png")


def row(page, model_id: str):
    return page.locator(f"#models-local tr[data-model='{model_id}']")


# -- tests ----------------------------------------------------------------------------------

def test_models_page_loads_and_unloads_live(proxy, browser):
    page = open_page(browser, proxy.base + "/ui/#/models")
    try:
        expect(page.locator("#conn")).to_have_text("live")
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
        before = page.locator("#activity-rows tr").count()
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        status, body = proxy.request(
            "POST", "/v1/chat/completions",
            {"model": "demo-coder", "stream": True,
             "messages": [{"role": "user", "content": marker}]},
            headers={"Authorization": "Bearer sk-do-not-show"})
        assert status == 200, body
        rows = page.locator("#activity-rows tr")
        expect(rows).to_have_count(before + 1)
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
