"""Browser-test plumbing shared by tests/test_ui_*.py: a real proxy (``python -m llamaswap``,
the CLI as users start it) on demo backends, Debian's chromium driven by Python playwright,
and screenshots.

Screenshots land in test-artifacts/ui/; with LLAMASWAP_UI_SCREENSHOTS=1 the ones the README
shows are also written to docs/screenshots/.
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
                 port: int | None = None, text: str | None = None,
                 env: dict[str, str] | None = None):
        """``text``: the config (default: config_text's demo models); ``env``: added to the
        proxy's environment (a fake nvidia-smi's PATH)."""
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_keys = api_keys
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(text if text is not None else config_text(api_keys))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"proxy-{name}.log"
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ, **(env or {}),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
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


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# Fixtures for the test modules to import (``from uikit import browser, playwright``).
@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as pw:
        yield pw


@pytest.fixture
def browser(playwright):
    # One browser per test: its renderer processes are gone when the test ends, which the
    # leak check in conftest.py verifies.
    b = launch(playwright)
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


