"""-models-dir: a folder of GGUF files served with no config, llama-server faked by the demo
backend (a script named llama-server that records its arguments and runs the demo backend)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import ROOT, free_port, wait_until
from llamaswap.config import ConfigError
from llamaswap.config.models_dir import ModelsDir, load
from llamaswap.demo.config import free_port_range
from test_cli import Proxy, _model_ids, _post_json, run_cli

FAKE_LLAMA_SERVER = '''\
#!{python}
"""A stand-in for llama.cpp's llama-server: records its argv, then runs the demo backend
as the model named by -m."""
import json, os, re, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LLAMA_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
model = os.path.basename(args[args.index("-m") + 1])[:-len(".gguf")]
model = re.sub(r"-\\d{{5}}-of-\\d{{5}}$", "", model)
os.execv(sys.executable, [sys.executable, "-m", "llamaswap.demo.backend",
                          "--port", args[args.index("--port") + 1], "--model-id", model])
'''


def gguf(path: Path, content: bytes = b"GGUF\x03\x00\x00\x00") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def fake_server(tmp_path) -> Path:
    path = tmp_path / "bin" / "llama-server"
    path.parent.mkdir()
    path.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable))
    path.chmod(0o755)
    return path


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# ---- the folder's rules (no processes)

def test_ids_splits_projectors_and_what_is_skipped(tmp_path, fake_server):
    d = tmp_path / "models"
    gguf(d / "plain.gguf")
    gguf(d / "Upper.GGUF")
    gguf(d / "big" / "big-00001-of-00002.gguf")
    gguf(d / "big" / "big-00002-of-00002.gguf")
    gguf(d / "part" / "cut-00002-of-00003.gguf")     # parts 1 and 3 missing
    gguf(d / "vision" / "gemma-3-4b-it-Q4_K_M.gguf")
    gguf(d / "vision" / "mmproj-model-f16.gguf")
    gguf(d / ".cache" / "hidden.gguf")
    gguf(d / ".hidden.gguf")
    gguf(d / "notes.txt", b"GGUF")
    gguf(d / "html.gguf", b"<html>not a model</html>")
    os.symlink(d / "gone.bin", d / "dangling.gguf")  # unreadable (root can read a chmod 0 file)
    os.symlink(d, d / "big" / "loop")                # a link back up the tree is walked once
    scan = ModelsDir(str(d), llama_server=str(fake_server)).scan()
    assert list(scan.models) == ["Upper", "big", "gemma-3-4b-it-Q4_K_M", "plain"]
    assert scan.models["big"].file == str(d / "big" / "big-00001-of-00002.gguf")
    assert scan.models["gemma-3-4b-it-Q4_K_M"].mmproj == str(d / "vision" / "mmproj-model-f16.gguf")
    assert scan.models["plain"].mmproj is None
    assert sorted(scan.warnings) == sorted([
        "-models-dir: skipping dangling.gguf: No such file or directory",
        "-models-dir: skipping html.gguf: not a GGUF file",
        "-models-dir: skipping split model cut in part: part(s) 1, 3 of 3 missing",
    ])


def test_projectors_beside_several_models_go_by_name(tmp_path, fake_server):
    d = tmp_path / "models"
    gguf(d / "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf")
    gguf(d / "llama-3.1-8b.gguf")
    gguf(d / "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf")
    gguf(d / "mmproj-F16.gguf")
    scan = ModelsDir(str(d), llama_server=str(fake_server)).scan()
    assert scan.models["Qwen2.5-VL-7B-Instruct-Q4_K_M"].mmproj == \
        str(d / "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf")
    assert scan.models["llama-3.1-8b"].mmproj is None
    assert scan.warnings == ("-models-dir: mmproj-F16.gguf is beside several models and names "
                             "none of them: not used (put it in a folder with its model)",)


def test_watch_snapshot_changes_with_what_can_be_served_only(tmp_path):
    d = tmp_path / "models"
    gguf(d / "a.gguf")
    growing = gguf(d / "b.gguf", b"")  # a download just begun: nothing served yet
    folder = ModelsDir(str(d))
    before = folder.snapshot()
    with open(d / "a.gguf", "ab") as f:   # a download in place goes on: no reload each poll
        f.write(b"\0" * 4096)
    os.utime(d / "a.gguf", ns=(1, 1))
    assert folder.snapshot() == before
    growing.write_bytes(b"GGUF\x03\x00")   # its header arrives: now it is a model
    assert folder.snapshot() != before
    before = folder.snapshot()
    gguf(d / "sub" / "c.gguf")
    assert folder.snapshot() != before
    (d / "sub" / "c.gguf").unlink()
    assert folder.snapshot() == before
    assert ModelsDir(str(tmp_path / "gone")).snapshot() is None


def test_two_files_for_one_id_is_an_error_naming_both(tmp_path):
    d = tmp_path / "models"
    gguf(d / "a" / "same.gguf")
    gguf(d / "b" / "same-00001-of-00001.gguf")
    with pytest.raises(ConfigError) as e:
        ModelsDir(str(d)).scan()
    assert str(e.value) == (f"-models-dir {d}: a/same.gguf and b/same-00001-of-00001.gguf both "
                            "give the model id 'same'; rename one")


def test_missing_folder_empty_folder_and_bad_args(tmp_path):
    with pytest.raises(ConfigError, match=f"-models-dir {tmp_path / 'nope'}: no such directory"):
        ModelsDir(str(tmp_path / "nope")).scan()
    (tmp_path / "empty").mkdir()
    assert ModelsDir(str(tmp_path / "empty")).scan().warnings == (
        f"-models-dir {tmp_path / 'empty'}: no .gguf models found",)
    with pytest.raises(ConfigError, match="-models-dir-args '-c \"8': "):
        ModelsDir(str(tmp_path), args='-c "8')


def test_llama_server_errors_say_what_was_tried(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        ModelsDir(str(tmp_path), llama_server=str(tmp_path / "bin" / "llama-server")).llama_server()
    assert str(e.value) == f"-llama-server {tmp_path / 'bin' / 'llama-server'}: no such file"
    (tmp_path / "not-exec").write_text("")
    with pytest.raises(ConfigError, match="not-exec: not executable"):
        ModelsDir(str(tmp_path), llama_server=str(tmp_path / "not-exec")).llama_server()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError) as e:
        ModelsDir(str(tmp_path)).llama_server()
    assert str(e.value) == (f"llama-server not found on PATH ({tmp_path / 'empty-bin'}): install "
                            "llama.cpp's llama-server or give -llama-server PATH")


def test_commands_and_config_models_win(tmp_path, fake_server):
    d = tmp_path / "my models"
    gguf(d / "a.gguf")
    gguf(d / "b.gguf")
    gguf(d / "c.gguf")
    gguf(d / "vis" / "v.gguf")
    gguf(d / "vis" / "mmproj-v-f16.gguf")
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent("""\
        startPort: 9000
        macros:
          ctx: 4096
        models:
          b:
            cmd: my-own-server --port ${PORT}
          other:
            cmd: other --port ${PORT}
            aliases: [c]
        """))
    cfg = load(str(config), ModelsDir(str(d), llama_server=str(fake_server),
                                      args="-ngl 99 -c ${ctx} --alias '${MODEL_ID} x'"))
    assert sorted(cfg.models) == ["a", "b", "other", "v"]
    assert cfg.models["a"].argv == (str(fake_server), "--port", str(cfg.models["a"].proxy.rsplit(":", 1)[1]),
                                    "-m", str(d / "a.gguf"), "-ngl", "99", "-c", "4096",
                                    "--alias", "a x")
    assert cfg.models["b"].argv[0] == "my-own-server"          # the config's model wins
    assert cfg.real_model_name("c") == "other"                 # and so does its alias
    assert cfg.models["v"].argv[5:7] == ("--mmproj", str(d / "vis" / "mmproj-v-f16.gguf"))
    assert cfg.path == str(config)
    alone = load(None, ModelsDir(str(d), llama_server=str(fake_server)))
    assert sorted(alone.models) == ["a", "b", "c", "v"] and alone.warnings == ()


# ---- the command line, end to end

def _start(tmp_path: Path, *args: str) -> tuple[Proxy, int]:
    port = free_port()
    env = {**os.environ, "FAKE_LLAMA_LOG": str(tmp_path / "calls.log")}
    proxy = Proxy([sys.executable, "-m", "llamaswap", *args, "-listen", f"127.0.0.1:{port}"],
                  cwd=ROOT, env=env)
    proxy.wait_listening()
    return proxy, port


def _chat(port: int, model: str) -> dict:
    return _post_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                      {"model": model, "messages": [{"role": "user", "content": "hi"}]})


def ports_config(tmp_path: Path, count: int, models: str = "") -> str:
    """A config that only gives the backends ports free now (others' tests share 5800 up)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"startPort: {free_port_range(count)}\n{models}")
    return str(config)


def test_with_config_dir_and_a_reload_that_keeps_ports(tmp_path, fake_server):
    d = tmp_path / "models"
    gguf(d / "b.gguf")
    gguf(d / "d.gguf")
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "10-base.yaml").write_text("startPort: 7000\nmacros: {ngl: 99}\n")
    (conf / "20-models.yaml").write_text("models:\n  d:\n    cmd: mine --port ${PORT}\n")
    folder = ModelsDir(str(d), llama_server=str(fake_server), args="-ngl ${ngl}")
    cfg = load(None, folder, str(conf))
    assert {m.id: (m.port, m.argv[0]) for m in cfg.models.values()} == {
        "b": (7000, str(fake_server)), "d": (7001, "mine")}   # the -config-dir's d wins
    assert cfg.models["b"].argv[-2:] == ("-ngl", "99")        # its macros reach the folder's
    gguf(d / "a.gguf")
    again = load(None, folder, str(conf), previous=cfg)
    assert {m.id: m.port for m in again.models.values()} == {"a": 7002, "b": 7000, "d": 7001}
    assert again.models["b"] == cfg.models["b"] and again.models["d"] == cfg.models["d"]


def test_models_dir_serves_each_file(tmp_path, fake_server):
    d = tmp_path / "models"
    gguf(d / "tiny.gguf")
    gguf(d / "big" / "big-00001-of-00002.gguf")
    gguf(d / "big" / "big-00002-of-00002.gguf")
    gguf(d / "big" / "mmproj-big-f16.gguf")
    proxy, port = _start(tmp_path, "-config", ports_config(tmp_path, 2), "-models-dir", str(d),
                         "-llama-server", str(fake_server),
                         "-models-dir-args", "-ngl 99 --ctx-size 2048")
    try:
        assert _model_ids(port) == ["big", "tiny"]
        assert _chat(port, "tiny")["model"] == "tiny"
        assert _chat(port, "big")["model"] == "big"
    finally:
        out, err = proxy.stop()
    assert proxy.returncode == 0, err
    assert calls(tmp_path) == [
        ["--port", calls(tmp_path)[0][1], "-m", str(d / "tiny.gguf"), "-ngl", "99",
         "--ctx-size", "2048"],
        ["--port", calls(tmp_path)[1][1], "-m", str(d / "big" / "big-00001-of-00002.gguf"),
         "--mmproj", str(d / "big" / "mmproj-big-f16.gguf"), "-ngl", "99", "--ctx-size", "2048"],
    ]


def test_watch_config_picks_up_added_and_removed_files(tmp_path, fake_server):
    d = tmp_path / "models"
    gguf(d / "first.gguf")
    config = ports_config(tmp_path, 4, f"models:\n  first:\n    cmd: {sys.executable} -m "
                          "llamaswap.demo.backend --port ${PORT} --model-id from-config\n")
    proxy, port = _start(tmp_path, "-config", config, "-models-dir", str(d),
                         "-llama-server", str(fake_server), "-watch-config")
    try:
        assert _model_ids(port) == ["first"]
        assert _chat(port, "first")["model"] == "from-config"   # the config's definition wins
        gguf(d / "sub" / "second.gguf")
        assert wait_until(lambda: _model_ids(port) == ["first", "second"], timeout=30)
        assert _chat(port, "second")["model"] == "second"
        (d / "sub" / "second.gguf").unlink()
        assert wait_until(lambda: _model_ids(port) == ["first"], timeout=30)
        gguf(d / "first-copy" / "first.gguf")  # a duplicate id: the reload fails, nothing changes
        assert proxy.wait_for("failed to reload config: -models-dir")
        assert _model_ids(port) == ["first"]
        (d / "first-copy" / "first.gguf").unlink()
        gguf(d / "third.gguf")
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _model_ids(port) == ["first", "third"], timeout=30)
    finally:
        out, err = proxy.stop()
    assert proxy.returncode == 0, err
    assert "both give the model id 'first'" in out
    assert [c[3] for c in calls(tmp_path)] == [str(d / "sub" / "second.gguf")]


def test_a_file_added_before_a_running_model_does_not_restart_it(tmp_path, fake_server):
    # ${PORT} goes in sorted id order: a.gguf would take m's port, changing m's command, and
    # the reload would stop m; the ports of models that stay are kept instead
    d = tmp_path / "models"
    gguf(d / "m.gguf")
    proxy, port = _start(tmp_path, "-config", ports_config(tmp_path, 3), "-models-dir", str(d),
                         "-llama-server", str(fake_server), "-watch-config")
    try:
        assert _chat(port, "m")["model"] == "m"
        gguf(d / "a.gguf")
        assert wait_until(lambda: _model_ids(port) == ["a", "m"], timeout=30)
        assert proxy.wait_for("unchanged models ['m'] keep their process")
        assert _chat(port, "m")["model"] == "m"
        assert _chat(port, "a")["model"] == "a"
    finally:
        out, err = proxy.stop()
    assert proxy.returncode == 0, err
    m_port, a_port = calls(tmp_path)[0][1], calls(tmp_path)[1][1]
    assert [c[3] for c in calls(tmp_path)] == [str(d / "m.gguf"), str(d / "a.gguf")]
    assert int(a_port) == int(m_port) + 1


def test_startup_errors_and_warnings(tmp_path, fake_server):
    r = run_cli("-models-dir", str(tmp_path / "nope"), "-listen", "127.0.0.1:1")
    assert r.returncode == 1
    assert r.stderr == f"failed to load config: -models-dir {tmp_path / 'nope'}: no such directory\n"
    (tmp_path / "m").mkdir()
    gguf(tmp_path / "m" / "x.gguf")
    missing = tmp_path / "no" / "llama-server"
    r = run_cli("-models-dir", str(tmp_path / "m"), "-llama-server", str(missing))
    assert r.returncode == 1
    assert r.stderr == f"failed to load config: -llama-server {missing}: no such file\n"
    (tmp_path / "empty").mkdir()
    proxy, port = _start(tmp_path, "-models-dir", str(tmp_path / "empty"),
                         "-llama-server", str(fake_server))
    try:
        assert _model_ids(port) == []
    finally:
        out, err = proxy.stop()
    assert f"-models-dir {tmp_path / 'empty'}: no .gguf models found" in out
    assert proxy.returncode == 0, err

