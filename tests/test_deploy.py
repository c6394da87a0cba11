"""The deployment recipes in docs/deploy/, each exercised with the real program where it is
installed: systemd-analyze on the unit (and the unit's own command lines run), the
Containerfile parsed and its entrypoint run, a real nginx with TLS in front under a path
prefix, two proxies joined as peers."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest

from helpers import ROOT, free_port, wait_until
from llamaswap.config import load_config_text
from llamaswap.demo.config import free_port_range
from test_cli import Proxy, _model_ids, self_signed  # noqa: F401 (a fixture)
from test_zipapp import pyz  # noqa: F401 (a fixture)

DEPLOY = ROOT / "docs" / "deploy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)),
                                      None)


def demo_model(model_id: str, command: str | None = None, answers_as: str = "") -> str:
    """A model served by the demo backend, which names ``answers_as`` (default: the id)."""
    cmd = command or f"{sys.executable} -m llamaswap.demo.backend"
    return (f"  {model_id}:\n    cmd: {cmd} --port ${{PORT}} --model-id {answers_as or model_id}\n"
            "    proxy: http://127.0.0.1:${PORT}\n")


def write_config(path: Path, *models: str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"startPort: {free_port_range(3)}\n{extra}models:\n" + "".join(models))
    return path


def start(argv: list[str], **kwargs) -> tuple[Proxy, int]:
    proxy = Proxy(argv, **kwargs)
    proxy.wait_listening()
    port = int(re.search(r"listening[^\n]* on https?://[^\n]*:(\d+)", proxy.out)[1])
    return proxy, port


def stopped(proxy: Proxy) -> str:
    out, err = proxy.stop()
    assert proxy.returncode == 0, err
    return out


# ---- systemd ------------------------------------------------------------------------------

def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a systemd unit file, in order."""
    entries, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_value(entries, key: str) -> str:
    values = [v for _, k, v in entries if k == key]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


UNIT = DEPLOY / "llama-swap.service"
UNIT_BINARY = "/usr/local/bin/llama-swap"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed "
                    "(apt-get install systemd)")
def test_systemd_unit_verifies_and_is_hardened(tmp_path, pyz):
    """systemd-analyze verify has nothing to say about the unit (with the .pyz installed where
    the unit expects it), and its exposure score is OK or better."""
    unit = tmp_path / "llama-swap.service"
    unit.write_text(UNIT.read_text().replace(UNIT_BINARY, str(pyz)))
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr + r.stdout
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert score and float(score[1]) < 5.0, r.stdout[-2000:]


def test_systemd_unit_command_lines_run(tmp_path, pyz):
    """The unit's ExecStart starts the proxy as written (paths moved under a scratch root),
    ExecReload reloads it, and SIGTERM (KillMode=mixed: to llama-swap alone) stops it cleanly."""
    entries = unit_entries(UNIT.read_text())
    assert unit_value(entries, "Restart") == "on-failure"
    assert unit_value(entries, "KillMode") == "mixed"
    assert unit_value(entries, "User") not in ("root", "0")
    assert unit_value(entries, "ExecReload") == "/bin/kill -HUP $MAINPID"
    root = tmp_path / "root"

    def moved(arg: str) -> str:
        return str(root) + arg if arg.startswith(("/etc/", "/var/")) else arg

    argv = shlex.split(unit_value(entries, "ExecStart"))
    assert argv[0] == UNIT_BINARY and "-watch-config" in argv
    config = write_config(Path(moved(argv[argv.index("-config") + 1])), demo_model("one"))
    argv[argv.index("-listen") + 1] = f"127.0.0.1:{free_port()}"
    env = {**os.environ}
    for value in (v for _, k, v in entries if k == "Environment"):
        name, _, setting = value.partition("=")
        env[name] = moved(setting)
    workdir = Path(moved(unit_value(entries, "WorkingDirectory")))
    workdir.mkdir(parents=True)
    proxy, port = start([sys.executable, str(pyz), *[moved(a) for a in argv[1:]]],
                        cwd=workdir, env=env)
    try:
        assert _model_ids(port) == ["one"]
        write_config(config, demo_model("one"), demo_model("two"))
        reload_argv = shlex.split(unit_value(entries, "ExecReload").replace(
            "$MAINPID", str(proxy.pid)))
        subprocess.run(reload_argv, check=True, timeout=10)
        assert proxy.wait_for("received SIGHUP, reloading config")
        assert wait_until(lambda: _model_ids(port) == ["one", "two"], timeout=30)
    finally:
        stopped(proxy)
    assert list(Path(env["LLAMA_SWAP_CACHE_DIR"]).iterdir())  # unpacked where the unit says


# ---- container ----------------------------------------------------------------------------

CONTAINERFILE = DEPLOY / "Containerfile"
INSTRUCTIONS = {"FROM", "ARG", "COPY", "ADD", "RUN", "ENV", "USER", "WORKDIR", "EXPOSE",
                "ENTRYPOINT", "CMD", "LABEL", "VOLUME", "HEALTHCHECK", "STOPSIGNAL", "SHELL"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        word, _, args = logical.partition(" ")
        out.append((word, args.strip()))
    assert not pending, "a continuation line ends the file"
    return out


def test_containerfile_parses_and_its_entrypoint_runs(tmp_path, pyz):
    """What can be checked without a registry: every instruction is one, the image runs the
    .pyz as a non-root user, and the ENTRYPOINT, run as written with the image's paths under a
    scratch root, serves the mounted config and reloads it when the file changes."""
    steps = instructions(CONTAINERFILE.read_text())
    assert all(word in INSTRUCTIONS for word, _ in steps), steps
    assert steps[0][0] == "FROM" and re.fullmatch(r"\S*python:3\.\d+-slim", steps[0][1])
    by = {}
    for word, args in steps:
        by.setdefault(word, []).append(args)
    source, dest = by["COPY"][0].split()
    assert (ROOT / source).resolve().name == "llama-swap.pyz" and dest == "/usr/local/bin/llama-swap"
    assert by["USER"][-1] not in ("root", "0")
    # what the container runs with no arguments: ENTRYPOINT, then CMD (which arguments replace)
    entrypoint = json.loads(by["ENTRYPOINT"][0]) + json.loads(by["CMD"][0])
    assert entrypoint[0] == "llama-swap" and "-watch-config" in entrypoint
    listen = entrypoint[entrypoint.index("-listen") + 1]
    assert by["EXPOSE"] == [listen.rsplit(":", 1)[1]]
    env = dict(shlex.split(e)[0].split("=", 1) for e in by["ENV"])

    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    installed = root / "usr/local/bin/llama-swap"
    shutil.copy(pyz, installed)
    installed.chmod(0o755)

    def moved(arg: str) -> str:
        return str(root) + arg if arg.startswith("/") else arg

    home = Path(moved(by["WORKDIR"][-1]))
    home.mkdir(parents=True)
    config = Path(moved(entrypoint[entrypoint.index("-config") + 1]))
    write_config(config, demo_model("one", f"{installed} demo-backend"))
    argv = [moved(a) for a in entrypoint]
    argv[0] = str(installed)  # found on PATH in the image
    argv[argv.index("-listen") + 1] = f"127.0.0.1:{free_port()}"
    run_env = {"PATH": f"{installed.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": str(home), **{k: moved(v) for k, v in env.items()}}
    proxy, port = start(argv, cwd=home, env=run_env)
    try:
        body = post_json(f"http://127.0.0.1:{port}/v1/chat/completions", chat("one"))
        assert body["model"] == "one"
        write_config(config, demo_model("one", f"{installed} demo-backend"),
                     demo_model("two", f"{installed} demo-backend"))
        os.utime(config, (1, 1))  # a different mtime even within the filesystem's resolution
        assert wait_until(lambda: _model_ids(port) == ["one", "two"], timeout=30)
    finally:
        stopped(proxy)
    assert list(Path(run_env["LLAMA_SWAP_CACHE_DIR"]).iterdir())


# ---- nginx in front, under a path prefix, with TLS -----------------------------------------

PREFIX = "/llama"


def chat(model: str, **demo) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if demo:
        body["demo"] = demo
    return body


def post_json(url: str, payload: dict, headers: dict | None = None, timeout: float = 30):
    import urllib.request
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Front:
    """nginx with docs/deploy/nginx.conf in front of a proxy; requests go to https://.../llama."""

    def __init__(self, tmp: Path, cert: Path, key: Path):
        self.tmp = tmp
        config = write_config(tmp / "config.yaml", demo_model("m"))
        self.proxy, proxy_port = start([sys.executable, "-m", "llamaswap", "-config", str(config),
                                        "-listen", f"127.0.0.1:{free_port()}"],
                                       cwd=ROOT)
        self.port = free_port()
        recipe = (DEPLOY / "nginx.conf").read_text()
        for old, new in (("server 127.0.0.1:8080;", f"server 127.0.0.1:{proxy_port};"),
                         ("listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;"),
                         ("/etc/ssl/certs/llm.example.com.pem", str(cert)),
                         ("/etc/ssl/private/llm.example.com.key", str(key))):
            assert old in recipe, old
            recipe = recipe.replace(old, new)
        (tmp / "llama-swap.conf").write_text(recipe)
        temp = "\n".join(f"    {kind}_temp_path {tmp}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user root root;\n" if os.geteuid() == 0 else ""  # workers read the scratch dir
        (tmp / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
            "daemon off;\nevents { worker_connections 256; }\n"
            f"http {{\n    access_log {tmp}/access.log;\n{temp}\n"
            f"    include {tmp}/llama-swap.conf;\n}}\n")
        check = subprocess.run([NGINX, "-t", "-c", str(tmp / "nginx.conf")], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.nginx = subprocess.Popen([NGINX, "-c", str(tmp / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert wait_until(self._listening, timeout=20), (tmp / "error.log").read_text()
        self.tls = ssl.create_default_context(cafile=str(cert))
        self.tls.check_hostname = False
        self.base = f"https://127.0.0.1:{self.port}{PREFIX}"

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return self.nginx.poll() is not None  # reported by the caller

    def connection(self, timeout: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls,
                                           timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = self.connection()
        try:
            conn.request(method, PREFIX + path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        if self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.nginx.wait(20)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        self.nginx.stderr.close()
        stopped(self.proxy)


@pytest.fixture
def front(tmp_path, self_signed):  # noqa: F811
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    cert, key = self_signed
    f = Front(tmp_path, cert, key)
    yield f
    f.close()


def test_nginx_stream_arrives_unbuffered(front):
    """The backend sends its first chunk at once and the next one 60 s later: the first
    reaches the client through nginx and the proxy long before the backend produced the last."""
    conn = front.connection(timeout=20)
    try:
        conn.request("POST", PREFIX + "/v1/chat/completions",
                     body=json.dumps({**chat("m", chunks=3, chunk_delay=60), "stream": True}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        first = resp.fp.readline()  # raises a timeout after 20 s if nginx held the chunk back
        while first in (b"\r\n", b"\n") or re.fullmatch(rb"[0-9a-fA-F]+\r\n", first):
            first = resp.fp.readline()  # chunk-size lines of the chunked body
        assert first.startswith(b"data: ") and b'"model": "m"' in first, first
    finally:
        conn.close()  # the client goes away mid-stream; the proxy lets the backend finish


def test_nginx_passes_a_50mb_upload(front):
    size = 50 * 1024 * 1024
    boundary = "llamaswapdeploytest"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()
    body = head + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    status, _, answer = front.request(
        "POST", "/v1/audio/transcriptions", body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, answer[:500]
    got = json.loads(answer)
    assert got["model"] == "m" and got["file_bytes"] == size and got["body_bytes"] == len(body)


def test_nginx_streams_api_events(front):
    conn = front.connection(timeout=20)
    try:
        conn.request("GET", PREFIX + "/api/events")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        line = b""
        while not line.startswith(b"data:"):
            line = resp.fp.readline()
            assert line, "the event stream ended"
        assert json.loads(line[5:])["type"] in ("modelStatus", "logData", "metrics",
                                                "inFlight", "activity")
    finally:
        conn.close()


def test_nginx_websocket_through_upstream(front):
    from websockets.sync.client import connect
    url = f"wss://127.0.0.1:{front.port}{PREFIX}/upstream/m/ws"
    with connect(url, ssl=front.tls, open_timeout=30) as ws:
        ws.send("hello through nginx")
        assert ws.recv(timeout=30) == "hello through nginx"


def test_nginx_serves_the_ui_under_the_prefix(front):
    status, headers, _ = front.request("GET", "")
    assert status == 301 and headers["Location"].endswith(f"{PREFIX}/")
    status, headers, _ = front.request("GET", "/")
    assert status == 302 and urllib.parse.urlsplit(headers["Location"]).path == f"{PREFIX}/ui"
    status, _, page = front.request("GET", "/ui/")
    assert status == 200 and b"<html" in page.lower()
    assets = re.findall(rb'(?:src|href)="([^"#:]+)"', page)
    assert assets
    for asset in assets:
        status, _, _ = front.request("GET", "/ui/" + asset.decode())
        assert status == 200, asset
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright import sync_api
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        pytest.skip("no chromium or playwright: the page's own requests under the prefix "
                    "were not tried in a browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(ignore_https_errors=True)
            requested: list[str] = []
            page.on("request", lambda r: requested.append(urllib.parse.urlsplit(r.url).path))
            page.goto(front.base + "/ui/#/models", timeout=30_000)
            expect = sync_api.expect
            expect(page.locator("#conn")).to_have_text("live", timeout=30_000)  # /api/events
            row = page.locator("#models-local tr[data-model='m']")
            row.get_by_role("button", name="Load", exact=True).click(timeout=30_000)
            expect(row.locator("[data-testid=state]")).to_have_text("ready", timeout=30_000)
            assert f"{PREFIX}/api/events" in requested and f"{PREFIX}/upstream/m/" in requested
            assert all(path.startswith(PREFIX + "/") for path in requested), requested
        finally:
            browser.close()


# ---- several hosts: two proxies, one the other's peer ---------------------------------------

def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", markdown, re.S)


def test_multi_host_configs_in_the_recipe_load():
    box, front_cfg, spread = yaml_blocks((DEPLOY / "multi-host.md").read_text())
    env = {"LLAMA_SWAP_KEY": "sk-b", "FRONT_KEY": "sk-front", "GPU_B_KEY": "sk-b",
           "GPU_C_KEY": "sk-c"}
    b = load_config_text(box, path="gpu-b.yaml", environ=env)
    a = load_config_text(front_cfg, path="front.yaml", environ=env)
    assert sorted(b.models) == ["qwen-32b", "whisper"] and b.api_keys == ("sk-b",)
    peer = a.peers["gpu-b"]
    assert peer.api_key == "sk-b" and sorted(peer.models) == sorted(b.models)
    selector = load_config_text(spread, path="spread.yaml", environ=env).selectors["qwen"]
    assert selector.strategy == "spillover" and selector.spillover == 4


def test_two_proxies_as_peers(tmp_path):
    """The front forwards the peer's models with the peer's key in place of the client's, says
    which peer is down with a 502, and serves them again when it is back."""
    box_port, front_port = free_port(), free_port()
    box_cfg = write_config(tmp_path / "gpu-b.yaml", demo_model("qwen-32b"),
                           extra='apiKeys: ["sk-box"]\n')
    front_cfg = write_config(tmp_path / "front.yaml", demo_model("llama-8b"), extra=textwrap.dedent(f"""\
        apiKeys: ["sk-front"]
        peers:
          gpu-b:
            proxy: http://127.0.0.1:{box_port}
            apiKey: sk-box
            models: [qwen-32b]
        """))

    def run_box() -> Proxy:
        return start([sys.executable, "-m", "llamaswap", "-config", str(box_cfg), "-listen",
                      f"127.0.0.1:{box_port}"], cwd=ROOT)[0]

    def ask(port: int, model: str, key: str) -> tuple[int, dict]:
        import urllib.error
        try:
            return 200, post_json(f"http://127.0.0.1:{port}/v1/chat/completions", chat(model),
                                  {"Authorization": f"Bearer {key}"})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    box = run_box()
    front_proxy, _ = start([sys.executable, "-m", "llamaswap", "-config", str(front_cfg),
                            "-listen", f"127.0.0.1:{front_port}"], cwd=ROOT)
    try:
        assert ask(front_port, "llama-8b", "sk-front")[0] == 200
        status, body = ask(front_port, "qwen-32b", "sk-front")
        assert status == 200 and body["model"] == "qwen-32b"          # served by gpu-b
        assert ask(box_port, "qwen-32b", "sk-front")[0] == 401         # gpu-b refuses the client's key
        assert ask(front_port, "qwen-32b", "sk-box")[0] == 401         # and the front the box's

        stopped(box)
        status, body = ask(front_port, "qwen-32b", "sk-front")
        assert status == 502, body
        message = body["error"]["message"]
        assert "peer gpu-b" in message and f"127.0.0.1:{box_port}" in message, message
        assert ask(front_port, "llama-8b", "sk-front")[0] == 200       # the front's own model

        box = run_box()
        status, body = ask(front_port, "qwen-32b", "sk-front")
        assert status == 200 and body["model"] == "qwen-32b"          # recovered
    finally:
        if box.returncode is None:
            stopped(box)
        stopped(front_proxy)


def test_a_spillover_selector_spreads_one_model_over_two_boxes(tmp_path):
    """A second request for the selector while the first still streams from one box goes to
    the other box (spillover 1), each box with its own key."""
    boxes = {}
    for name in ("gpu-b", "gpu-c"):
        cfg = write_config(tmp_path / f"{name}.yaml",
                           demo_model("qwen-32b", answers_as=f"qwen-on-{name}"),
                           extra=f'apiKeys: ["sk-{name}"]\n')
        boxes[name] = start([sys.executable, "-m", "llamaswap", "-config", str(cfg), "-listen",
                             f"127.0.0.1:{free_port()}"], cwd=ROOT)
    peers = "".join(f"  {name}:\n    proxy: http://127.0.0.1:{port}\n    apiKey: sk-{name}\n"
                    "    models: [qwen-32b]\n" for name, (_, port) in boxes.items())
    front_cfg = tmp_path / "front.yaml"
    front_cfg.write_text(f"peers:\n{peers}selectors:\n  qwen:\n    strategy: spillover\n"
                         "    targets: [gpu-b/qwen-32b, gpu-c/qwen-32b]\n"
                         "    settings: {spillover: 1}\n")
    front_proxy, front_port = start([sys.executable, "-m", "llamaswap", "-config",
                                     str(front_cfg), "-listen", f"127.0.0.1:{free_port()}"],
                                    cwd=ROOT)
    conn = http.client.HTTPConnection("127.0.0.1", front_port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions",
                     body=json.dumps({**chat("qwen", chunks=3, chunk_delay=60), "stream": True}),
                     headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 200
        line = first.fp.readline()
        while not line.startswith(b"data: "):
            line = first.fp.readline()
        assert b"qwen-on-gpu-b" in line  # the first box, still streaming
        second = post_json(f"http://127.0.0.1:{front_port}/v1/chat/completions", chat("qwen"))
        assert second["model"] == "qwen-on-gpu-c"
    finally:
        conn.close()
        stopped(front_proxy)
        for proxy, _ in boxes.values():
            stopped(proxy)
