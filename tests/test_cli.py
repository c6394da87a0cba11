"""The command line: upstream's flags, Go flag-package parsing, messages, exit codes, -demo."""

from __future__ import annotations

import importlib.util
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
import threading
import urllib.request

import pytest

from helpers import (ROOT, cmdline, demo_backend_argv, descendants, free_port, is_alive,
                     reaped_or_gone, wait_until)
from llamaswap import goflags
from llamaswap.cli import FLAGS, is_loopback_listen, network_warning

USAGE_FLAGS = ("-config string", "-config-dir string", "-listen string", "-tls-cert-file string",
               "-tls-key-file string", "-version", "-watch-config", "-demo")
VERSION_RE = re.compile(r"^version: \S+ \(\S+\), built at \S+\n$")


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def loader_ready() -> bool:
    if not have("llamaswap.config.loader"):
        return False
    import llamaswap.config as c
    return hasattr(c, "load_config") and hasattr(c, "ConfigError")


needs_loader = pytest.mark.skipif(not loader_ready(), reason="config loader not in the tree yet")
needs_server = pytest.mark.skipif(
    not (loader_ready() and have("llamaswap.app") and have("llamaswap.http.server")),
    reason="App, HTTP server or config loader not in the tree yet")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamaswap", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ---- flag parsing (pure)

def parse(*args):
    return goflags.parse(FLAGS, list(args))


@pytest.mark.parametrize("args", [
    ["-config", "a.yaml"], ["--config", "a.yaml"], ["-config=a.yaml"], ["--config=a.yaml"],
    ["-config", "x", "-config", "a.yaml"],  # the last one wins
])
def test_string_flag_forms(args):
    values, rest = parse(*args)
    assert values["config"] == "a.yaml" and rest == []


@pytest.mark.parametrize("args,expected", [
    (["-version"], True), (["--version"], True), (["-version=true"], True),
    (["-version=1"], True), (["-version=T"], True), (["-version=false"], False),
    (["--version=0"], False), ([], False),
])
def test_bool_flag_forms(args, expected):
    assert parse(*args)[0]["version"] is expected


def test_bool_flag_does_not_take_the_next_argument():
    values, rest = parse("-watch-config", "false", "-config", "a.yaml")
    assert values["watch-config"] is True
    assert values["config"] == "" and rest == ["false", "-config", "a.yaml"]


def test_parsing_stops_at_double_dash_and_first_positional():
    values, rest = parse("-listen", ":1", "--", "-config", "x")
    assert values["listen"] == ":1" and values["config"] == "" and rest == ["-config", "x"]
    values, rest = parse("pos", "-config", "x")
    assert values["config"] == "" and rest == ["pos", "-config", "x"]


def test_string_flag_takes_a_dash_value():
    assert parse("-config", "-listen")[0]["config"] == "-listen"


@pytest.mark.parametrize("args,message", [
    (["-nope"], "flag provided but not defined: -nope"),
    (["--nope=1"], "flag provided but not defined: -nope"),
    (["-config"], "flag needs an argument: -config"),
    (["-version=maybe"], 'invalid boolean value "maybe" for -version: parse error'),
    (["---config"], "bad flag syntax: ---config"),
    (["-=x"], "bad flag syntax: -=x"),
])
def test_parse_errors_use_go_texts(args, message):
    with pytest.raises(goflags.FlagError) as e:
        parse(*args)
    assert str(e.value) == message


@pytest.mark.parametrize("arg", ["-h", "-help", "--help", "--h"])
def test_help_forms(arg):
    with pytest.raises(goflags.HelpRequested):
        parse(arg)


# ---- listen address warning (pure)

@pytest.mark.parametrize("listen,loopback", [
    ("127.0.0.1:8080", True), ("localhost:8080", True), ("[::1]:8080", True),
    ("127.1.2.3:80", True), (":8080", False), ("0.0.0.0:8080", False), ("[::]:8080", False),
    ("192.168.1.5:8080", False), ("example.com:8080", False),
])
def test_loopback_detection(listen, loopback):
    assert is_loopback_listen(listen) is loopback


def test_network_warning_says_whether_api_keys_are_set():
    assert network_warning("127.0.0.1:8080", False) is None
    open_warning = network_warning(":8080", False)
    assert "reachable from the network" in open_warning and "apiKeys are NOT set" in open_warning
    assert "apiKeys are set" in network_warning(":8080", True)


# ---- the real command line

@pytest.mark.parametrize("arg", ["-version", "--version", "-version=true"])
def test_version(arg):
    import llamaswap
    r = run_cli(arg)
    assert r.returncode == 0, r.stderr
    assert VERSION_RE.match(r.stdout), r.stdout
    assert r.stdout == (f"version: {llamaswap.__version__} ({llamaswap.COMMIT}), "
                        f"built at {llamaswap.BUILD_DATE}\n")


def test_version_wins_over_missing_config():
    r = run_cli("-listen", ":1", "-version")
    assert r.returncode == 0 and r.stdout.startswith("version: ")


@pytest.mark.parametrize("arg", ["-h", "--help"])
def test_help_prints_usage_and_exits_0(arg):
    r = run_cli(arg)
    assert r.returncode == 0
    assert r.stdout.startswith("Usage of llama-swap:\n")
    for flag in USAGE_FLAGS:
        assert f"  {flag}\n" in r.stdout
    assert "path to config file" in r.stdout


def test_unknown_flag_prints_error_and_usage_exit_2():
    r = run_cli("-bogus")
    assert r.returncode == 2
    assert r.stderr.startswith("flag provided but not defined: -bogus\nUsage of llama-swap:\n")
    assert r.stdout == ""


def test_flag_without_value_exits_2():
    r = run_cli("-config")
    assert r.returncode == 2
    assert r.stderr.startswith("flag needs an argument: -config\n")


def test_missing_config_exits_1():
    r = run_cli()
    assert r.returncode == 1
    assert r.stderr == "at least one of -config or -config-dir must be provided\n"
    r = run_cli("-listen", "127.0.0.1:1", "-watch-config")
    assert r.returncode == 1
    assert r.stderr == "at least one of -config or -config-dir must be provided\n"


@pytest.mark.parametrize("args", [["-tls-cert-file", "c.pem"], ["--tls-key-file=k.pem"]])
def test_tls_needs_both_files(args, tmp_path):
    (tmp_path / "c.yaml").write_text("models: {}\n")
    r = run_cli("-config", str(tmp_path / "c.yaml"), *args)
    assert r.returncode == 1
    assert r.stderr == "both -tls-cert-file and -tls-key-file must be provided for TLS\n"


@needs_loader
@pytest.mark.parametrize("text,fragment", [
    ("startPort: 0\n", "startPort must be greater than 1"),
    ("startPort: [1\n", "line"),  # YAML syntax error: reports line and column
])
def test_bad_config_exits_1_and_starts_nothing(tmp_path, text, fragment):
    marker = tmp_path / "started"
    config = tmp_path / "bad.yaml"
    # a preloaded model that would leave a marker behind if anything were started
    config.write_text(
        f"hooks:\n  on_startup:\n    preload: [m]\n"
        f"models:\n  m:\n    cmd: {sys.executable} -c \"open('{marker}','w')\" --port ${{PORT}}\n"
        + text)
    r = run_cli("-config", str(config), "-listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert r.stderr.startswith("failed to load config: "), r.stderr
    assert fragment in r.stderr
    assert r.stdout == ""
    assert not marker.exists()


@needs_loader
def test_missing_config_file_exits_1(tmp_path):
    r = run_cli(f"-config={tmp_path / 'nope.yaml'}")
    assert r.returncode == 1
    assert r.stderr.startswith("failed to load config: ")
    assert "nope.yaml" in r.stderr


def test_demo_config_loads_and_uses_this_python():
    if not loader_ready():
        pytest.skip("config loader not in the tree yet")
    from llamaswap.config import load_config_text
    from llamaswap.demo.config import DEMO_MODELS, demo_config_text
    config = load_config_text(demo_config_text(start_port=40000), path="<demo>")
    assert sorted(config.models) == sorted(m[0] for m in DEMO_MODELS)
    fast = config.models["demo-fast"]
    assert fast.argv[:3] == (sys.executable, "-m", "llamaswap.demo.backend")
    assert "--model-id" in fast.argv and "demo-fast" in fast.argv
    assert config.real_model_name("demo") == "demo-fast"
    ports = sorted(int(m.proxy.rsplit(":", 1)[1]) for m in config.models.values())
    assert ports == [40000, 40001, 40002]


def test_hidden_demo_backend_subcommand_runs_the_backend():
    port = free_port()
    backend = Proxy([sys.executable, "-m", "llamaswap", "demo-backend", "--port", str(port),
                     "--model-id", "hidden"], cwd=ROOT)
    try:
        assert backend.wait_for(f"demo backend hidden listening on http://127.0.0.1:{port}"), \
            backend.err
        body = _post_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                          {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        assert body["model"] == "hidden"
    finally:
        backend.stop()
    assert backend.returncode == 0


# ---- end to end: needs the App and the HTTP server

def _get(url: str, timeout: float = 5) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _post_json(url: str, payload: dict, timeout: float = 30) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Proxy:
    """A llama-swap subprocess whose stdout and stderr are collected as they arrive."""

    def __init__(self, argv: list[str], **kwargs):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, **kwargs)
        self.pid = self.proc.pid
        self._cv = threading.Condition()
        self._streams = {"out": [], "err": []}
        self._open = 2
        self._readers = [threading.Thread(target=self._read, args=(f, name), daemon=True)
                         for f, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for t in self._readers:
            t.start()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            with self._cv:
                self._streams[name].append(line)
                self._cv.notify_all()
        with self._cv:
            self._open -= 1
            self._cv.notify_all()

    @property
    def out(self) -> str:
        with self._cv:
            return "".join(self._streams["out"])

    @property
    def err(self) -> str:
        with self._cv:
            return "".join(self._streams["err"])

    def wait_for(self, text: str, timeout: float = 30, count: int = 1) -> bool:
        """Until `text` appears `count` times on stdout (False if the process closed its
        output first)."""
        def seen() -> bool:
            return "".join(self._streams["out"]).count(text) >= count

        with self._cv:
            self._cv.wait_for(lambda: seen() or self._open == 0, timeout)
            return seen()

    def wait_listening(self, timeout: float = 30) -> None:
        """Until it has bound its port (so the port is ours, not another test run's)."""
        assert self.wait_for("llama-swap listening", timeout), f"never listened: {self.err}"

    def stop(self, sig=signal.SIGTERM) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(timeout=10)
        return self.out, self.err

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


def _start_proxy(*args: str) -> Proxy:
    proxy = Proxy([sys.executable, "-m", "llamaswap", *args], cwd=ROOT)
    proxy.wait_listening()
    return proxy


@needs_server
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_demo_end_to_end_and_clean_shutdown(sig):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_proxy("-demo", "-listen", f"127.0.0.1:{port}")
    backends: set[int] = set()
    try:
        assert _get(base + "/health") == 200
        body = _post_json(base + "/v1/chat/completions",
                          {"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
        assert body["choices"][0]["message"]["content"]
        assert body["model"] == "demo-fast"
        backends = descendants(proc.pid)
        assert backends, "the demo backend should be a child of the proxy"
    finally:
        out, err = proc.stop(sig)
    assert proc.returncode == 0, err
    assert "curl" in out and "/v1/chat/completions" in out  # the banner
    assert "shutdown complete" in out
    assert "reachable from the network" not in err
    assert wait_until(lambda: not (descendants() & backends), timeout=15), \
        "demo backends outlived the proxy"


@needs_server
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal, /proc")
def test_kill_9_of_the_proxy_leaves_nothing_behind_a_shell_wrapper(tmp_path):
    """The group guard: a backend behind ``sh wrapper`` (no exec) dies with a proxy killed
    by SIGKILL, and so does the guard."""
    port, backend_port = free_port(), free_port()
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(" ".join(shlex.quote(a) for a in
                                demo_backend_argv("wrapped", backend_port, "--quiet"))
                       + " &\nwait\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  wrapped:\n    cmd: sh {wrapper}\n"
                      f"    proxy: http://127.0.0.1:{backend_port}\n")
    proc = _start_proxy("-config", str(config), "-listen", f"127.0.0.1:{port}")
    started: set[int] = set()
    try:
        body = _post_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                          {"model": "wrapped", "messages": [{"role": "user", "content": "hi"}]})
        assert body["model"] == "wrapped"
        started = descendants(proc.pid)
        assert len(started) == 3  # the guard, the shell, the server
    finally:
        proc.stop(signal.SIGKILL)
    assert wait_until(lambda: all(reaped_or_gone(p) for p in started), 15), \
        [cmdline(p) for p in started if is_alive(p)]


@needs_server
def test_listen_on_every_interface_warns(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("apiKeys: [sekrit]\nmodels: {}\n")
    proc = _start_proxy("-config", str(config), "-listen", f":{free_port()}")
    out, err = proc.stop()
    assert proc.returncode == 0
    assert "reachable from the network" in err and "apiKeys are set" in err


@needs_server
def test_port_0_logs_the_port_it_got(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("models: {}\n")
    proc = _start_proxy("-config", str(config), "-listen", "127.0.0.1:0")
    try:
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", "".join(proc._streams["out"]))[1]
        assert not url.endswith(":0") and _get(url + "/health") == 200
    finally:
        proc.stop()
    assert proc.returncode == 0


@needs_server
def test_port_in_use_exits_1(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("models: {}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_cli("-config", str(config), "-listen", f"127.0.0.1:{s.getsockname()[1]}")
    assert r.returncode == 1
    assert "http server error" in r.stderr


def _model_ids(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
        return sorted(m["id"] for m in json.loads(resp.read())["data"])


def _config_with(path, *models: str) -> None:
    text = "models:\n" + "".join(
        f"  {m}:\n    cmd: {sys.executable} -m llamaswap.demo.backend --port ${{PORT}}\n"
        for m in models)
    path.write_text(text)


@needs_server
def test_sighup_reloads_the_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    _config_with(config, "one")
    port = free_port()
    proc = _start_proxy("-config", str(config), "-listen", f"127.0.0.1:{port}")
    try:
        assert _model_ids(port) == ["one"]
        _config_with(config, "one", "two")
        proc.proc.send_signal(signal.SIGHUP)
        assert proc.wait_for("configuration reloaded")
        assert _model_ids(port) == ["one", "two"]
    finally:
        out, err = proc.stop()
    assert proc.returncode == 0, err
    assert "received SIGHUP, reloading config" in out


@needs_server
def test_watch_config_reloads_on_change(tmp_path):
    config = tmp_path / "c.yaml"
    _config_with(config, "one")
    port = free_port()
    proc = _start_proxy("--watch-config", f"--config={config}", "-listen", f"127.0.0.1:{port}")
    try:
        assert "watching configuration for changes" in proc.out
        _config_with(config, "one", "three")
        os.utime(config, (1, 1))  # a different mtime even within the filesystem's resolution
        assert proc.wait_for("configuration reloaded")
        assert _model_ids(port) == ["one", "three"]
    finally:
        out, err = proc.stop()
    assert proc.returncode == 0, err


@needs_server
def test_demo_ignores_sighup():
    port = free_port()
    proc = _start_proxy("-demo", "-listen", f"127.0.0.1:{port}")
    try:
        proc.proc.send_signal(signal.SIGHUP)
        assert proc.wait_for("nothing to reload")
        assert _get(f"http://127.0.0.1:{port}/health") == 200
    finally:
        out, err = proc.stop()
    assert proc.returncode == 0, err


@needs_server
def test_missing_port_in_listen_exits_1(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("models: {}\n")
    r = run_cli("-config", str(config), "-listen", "8080")
    assert r.returncode == 1
    assert "http server error: listen tcp: address 8080: missing port in address" in r.stderr


@needs_server
def test_sigterm_lets_a_request_in_flight_finish():
    """Graceful shutdown: stop accepting, finish the stream in flight, then stop backends."""
    port = free_port()
    proc = _start_proxy("-demo", "-listen", f"127.0.0.1:{port}")
    backends: set[int] = set()
    try:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps({"model": "demo-fast", "stream": True,
                             "messages": [{"role": "user", "content": "hi"}],
                             "demo": {"chunks": 8, "chunk_delay": 0.2}}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            first = resp.readline()
            assert first.startswith(b"data: ")
            backends = descendants(proc.pid)
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.wait_for("shutting down")
            rest = resp.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert rest.count(b"data: ") >= 8
    finally:
        out, err = proc.stop()
    assert proc.returncode == 0, err
    assert wait_until(lambda: not (descendants() & backends), timeout=15)


@pytest.fixture
def self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@needs_server
def test_tls_serves_https(tmp_path, self_signed):
    cert, key = self_signed
    config = tmp_path / "c.yaml"
    config.write_text("models: {}\n")
    port = free_port()
    proc = _start_proxy("-config", str(config), "-listen", f"127.0.0.1:{port}",
                        "-tls-cert-file", str(cert), "--tls-key-file", str(key))
    try:
        assert f"llama-swap listening with TLS on https://127.0.0.1:{port}" in proc.out
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx,
                                    timeout=10) as resp:
            assert resp.status == 200
    finally:
        out, err = proc.stop()
    assert proc.returncode == 0, err


@needs_server
def test_unreadable_tls_file_exits_1(tmp_path, self_signed):
    cert, _key = self_signed
    config = tmp_path / "c.yaml"
    config.write_text("models: {}\n")
    missing = tmp_path / "missing-key.pem"
    r = run_cli("-config", str(config), "-listen", f"127.0.0.1:{free_port()}",
                "-tls-cert-file", str(cert), "-tls-key-file", str(missing))
    assert r.returncode == 1
    assert r.stderr.strip().endswith(f"http server error: open {missing}: no such file or directory")


def test_config_warnings_are_logged_at_startup(tmp_path):
    """A matrix var naming an undefined model loads (as upstream's example needs) but is said."""
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  m1:\n    cmd: x --port ${PORT}\n"
                      "matrix:\n  vars: {a: m1, g: ghost}\n  sets: {s: a | g}\n")
    proxy = _start_proxy("-config", str(config), "-listen", f"127.0.0.1:{free_port()}")
    out, _ = proxy.stop()
    assert proxy.returncode == 0
    assert ('[WARN] matrix: var key "g" references unknown model "ghost"; '
            'sets that use it can never run that model') in out
