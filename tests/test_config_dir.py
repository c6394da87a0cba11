"""-config-dir (upstream-head.md section 9): sources merged before macros, upstream's merge
rules and errors (naming both files for a duplicate), and a real proxy that reloads the
directory under -watch-config and SIGHUP while an unchanged model keeps its process."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import urllib.request

import pytest

from helpers import cmdline, demo_model_yaml, descendants, free_port
from test_cli import Proxy, run_cli

from llamaswap.config import ConfigError, load_config_sources

PY = sys.executable
RELOADED = "configuration reloaded"


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_sources_merge_in_order_with_macros_from_any_file(tmp_path):
    main = write(tmp_path / "main.yaml", """
        apiKeys: [k-main]
        macros: {srv: "llama-server --port ${PORT}"}
        models:
          a: {cmd: "${srv} -m a.gguf"}
        """)
    d = tmp_path / "conf.d"
    d.mkdir()
    write(d / "20-b.yml", """
        apiKeys: [k-b]
        models:
          b: {cmd: "${srv} -m b.gguf", aliases: [bee]}
        groups:
          pair: {members: [a, b]}
        """)
    write(d / "10-c.yaml", """
        startPort: 7000
        models:
          c: {cmd: "${srv} -m c.gguf"}
        """)
    write(d / "30-empty.yaml", "# nothing but a comment\n")
    write(d / "notes.txt", "models: {x: {cmd: y}}\n")
    (d / "sub.yaml").mkdir()  # a directory, however it is named, is not a source
    c = load_config_sources(main, str(d))
    assert list(c.models) == ["a", "b", "c"]
    # startPort from one file, macros from another: ports in sorted id order
    assert [c.models[m].port for m in "abc"] == [7000, 7001, 7002]
    assert c.models["b"].argv[-2:] == ("-m", "b.gguf")
    assert c.api_keys == ("k-main", "k-b")
    assert c.groups["pair"].members == ("a", "b") and c.aliases["bee"] == "b"
    assert c.path == main


def test_directory_alone(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write(d / "a.yaml", "models:\n  a: {cmd: \"srv --port ${PORT}\"}\n")
    c = load_config_sources(None, str(d))
    assert list(c.models) == ["a"] and c.path == str(d)


@pytest.mark.parametrize("files,expected", [
    ({"a.yaml": "models:\n  m: {cmd: x}\n", "b.yaml": "models:\n  m: {cmd: y}\n"},
     'duplicate models "m" found in {d}/b.yaml (already defined in {d}/a.yaml)'),
    ({"a.yaml": "peers:\n  p: {proxy: http://h, models: [x]}\n",
      "b.yaml": "peers:\n  p: {proxy: http://h, models: [y]}\n"},
     'duplicate peers "p" found in {d}/b.yaml (already defined in {d}/a.yaml)'),
    ({"a.yaml": "routing:\n  router:\n    settings:\n      groups:\n        g: {members: []}\n",
      "b.yaml": "routing:\n  router:\n    settings:\n      groups:\n        g: {members: []}\n"},
     'duplicate groups "g" found in {d}/b.yaml (already defined in {d}/a.yaml)'),
    ({"a.yaml": "matrix:\n  sets: {s: a}\n", "b.yaml": "matrix:\n  sets: {t: b}\n"},
     'duplicate matrix "sets" found in {d}/b.yaml'),
    ({"a.yaml": "logLevel: debug\n", "b.yaml": "logLevel: info\n"},
     'conflict at "logLevel": {d}/b.yaml sets a different value than a previous source ({d}/a.yaml)'),
    ({"a.yaml": "startPort: 5000\n", "b.yaml": "startPort: '5000'\n"},
     'conflict at "startPort": {d}/b.yaml sets a different value'),
    ({"a.yaml": "hooks:\n  on_startup: {preload: [a]}\n", "b.yaml": "hooks:\n  on_startup: x\n"},
     'conflict at "hooks.on_startup": incompatible YAML node kinds (kind 4 vs 8) introduced by {d}/b.yaml'),
    ({"a.yaml": "- a\n"}, "config {d}/a.yaml: top-level YAML must be a mapping"),
    ({"a.yaml": "models:\n  m:\n    cmd: x ${PORT}\n", "b.yaml": "models:\n  n:\n    cmd: x ${PORT}\n    ttl: -5\n"},
     "{d}/b.yaml:4: models.n.ttl: model n: invalid TTL value -5"),
    ({"a.yaml": "models:\n  m: {cmd: 'x ${PORT} ${nope}'}\n"}, "{d}/a.yaml:2: models.m.cmd: unknown macro"),
    ({"a.yaml": "models: {m: {cmd: '${env.NOT_SET_ANYWHERE}'}}\n"},
     "{d}/a.yaml:1: environment variable 'NOT_SET_ANYWHERE' is not set"),
])
def test_merge_errors_name_the_files(tmp_path, files, expected):
    d = tmp_path / "d"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config_sources(None, str(d), environ={})
    assert expected.format(d=d) in str(e.value)


def test_null_yields_and_equal_values_agree(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write(d / "a.yaml", "logLevel:\nglobalTTL: 30\nmodels:\n  m: {cmd: \"srv --port ${PORT}\"}\n")
    write(d / "b.yaml", "logLevel: debug\nglobalTTL: 30\n")
    c = load_config_sources(None, str(d))
    assert c.log_level == "debug" and c.models["m"].ttl == 30


def test_source_errors(tmp_path):
    main = write(tmp_path / "main.yaml", "models: {}\n")
    with pytest.raises(ConfigError, match="^at least one of -config or -config-dir must be provided$"):
        load_config_sources(None, None)
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_config_sources(main, str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as e:
        load_config_sources(main, str(tmp_path))
    assert str(e.value) == (f"-config path {main} is also present in -config-dir {tmp_path}; "
                            "remove it from one")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="^no configuration sources found$"):
        load_config_sources(None, str(empty))


def test_cli_flags(tmp_path):
    r = run_cli()
    assert r.returncode == 1 and r.stderr == "at least one of -config or -config-dir must be provided\n"
    r = run_cli("-config-dir", str(tmp_path / "absent"), "-listen", "127.0.0.1:1")
    assert r.returncode == 1
    assert r.stderr.startswith(f"failed to load config: -config-dir {tmp_path / 'absent'}: open ")
    r = run_cli("-h")
    assert "-config-dir string" in r.stdout


def _get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


def _chat(port: int, model: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _backend_pid(proxy: Proxy, model: str) -> int:
    pids = [p for p in descendants(proxy.pid) if f"--model-id {model} " in cmdline(p) + " "]
    assert len(pids) == 1, pids
    return pids[0]


def test_watch_and_sighup_reload_the_directory_keeping_unchanged_models(tmp_path):
    d = tmp_path / "conf.d"
    d.mkdir()
    main = write(tmp_path / "main.yaml", "logLevel: info\n")
    (d / "a.yaml").write_text("models:\n" + demo_model_yaml("a"))
    port = free_port()
    proxy = Proxy([PY, "-m", "llamaswap", "-config", main, "-config-dir", str(d), "-watch-config",
                   "-listen", f"127.0.0.1:{port}"])
    try:
        proxy.wait_listening()
        assert _chat(port, "a")["model"] == "a"
        pid_a = _backend_pid(proxy, "a")

        # a file added: b appears, a keeps its process
        (d / "b.yaml").write_text("models:\n" + demo_model_yaml("b", "    name: Bee\n"))
        assert proxy.wait_for(RELOADED)
        listed = {r["id"]: r for r in _get_json(port, "/v1/models")["data"]}
        assert set(listed) == {"a", "b"} and listed["b"]["name"] == "Bee"
        assert listed["a"]["status"] == {"value": "loaded"}
        assert _chat(port, "a")["model"] == "a" and _backend_pid(proxy, "a") == pid_a

        # a file changed
        (d / "b.yaml").write_text("models:\n" + demo_model_yaml("b", "    name: Bumble\n"))
        assert proxy.wait_for(RELOADED, count=2)
        assert {r["id"]: r for r in _get_json(port, "/v1/models")["data"]}["b"]["name"] == "Bumble"

        # a bad file: the old config keeps running
        (d / "c.yaml").write_text("models:\n  a: {cmd: dup}\n")
        assert proxy.wait_for("failed to reload config: ")
        assert f'duplicate models "a" found in {d}/c.yaml (already defined in {d}/a.yaml)' in proxy.out
        assert _chat(port, "a")["model"] == "a" and _backend_pid(proxy, "a") == pid_a
        (d / "c.yaml").unlink()
        assert proxy.wait_for(RELOADED, count=3)

        # a file removed: b is gone
        (d / "b.yaml").unlink()
        assert proxy.wait_for(RELOADED, count=4)
        assert [r["id"] for r in _get_json(port, "/v1/models")["data"]] == ["a"]

        # SIGHUP reloads the directory as well
        (d / "b.yaml").write_text("models:\n" + demo_model_yaml("b"))
        proxy.proc.send_signal(signal.SIGHUP)
        assert proxy.wait_for(RELOADED, count=5)
        assert "b" in [r["id"] for r in _get_json(port, "/v1/models")["data"]]
        assert _backend_pid(proxy, "a") == pid_a
    finally:
        out, err = proxy.stop()
    assert proxy.returncode == 0, err
