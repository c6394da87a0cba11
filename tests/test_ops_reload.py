"""Config reload end to end: a real config file, real backends, the real App and server."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading

import pytest

from helpers import free_port, wait_until

from llamaswap.app import App
from llamaswap.config import load_config
from llamaswap.http.server import serve
from llamaswap.ops.events import EventBus
from llamaswap.ops.logs import build_loggers
from llamaswap.ops.reload import Reloader
from test_ops_api import SseReader

PY = sys.executable


def model_yaml(mid: str, port: int, extra: str = "", name: str = "") -> str:
    out = (f"  {mid}:\n"
           f"    cmd: {PY} -m llamaswap.demo.backend --port {port} --model-id {mid} --quiet {extra}\n"
           f"    proxy: http://127.0.0.1:{port}\n"
           f"    unloadTimeout: 2\n")
    if name:
        out += f"    name: {name}\n"
    return out


class Holder:
    def __init__(self, app):
        self.app = app


class Rig:
    def __init__(self, path: str):
        self.path = path
        self.loggers = build_loggers("none")
        self.events = EventBus()
        self.holder = Holder(App.build(load_config(path), self.loggers, self.events))
        self.server = serve(self.holder, f"127.0.0.1:{free_port()}")
        self.reloader = Reloader(self.holder, path, preload=False)

    @property
    def app(self):
        return self.holder.app

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)

    def chat(self, mid: str, **extra) -> tuple[int, dict]:
        c = self.conn()
        try:
            c.request("POST", "/v1/chat/completions",
                      body=json.dumps({"model": mid, "messages": [{"role": "user",
                                                                   "content": "hi"}], **extra}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            body = r.read()
            return r.status, json.loads(body) if body.startswith(b"{") else {}
        finally:
            c.close()

    def proxy_log(self) -> str:
        return self.loggers.proxy.history().decode()

    def close(self):
        self.reloader.stop()
        self.server.shutdown(2)
        self.app.shutdown()


@pytest.fixture
def ports():
    return {"m1": free_port(), "m2": free_port(), "m3": free_port()}


@pytest.fixture
def rig(tmp_path, ports):
    path = tmp_path / "config.yaml"
    path.write_text("models:\n" + model_yaml("m1", ports["m1"]) + model_yaml("m2", ports["m2"])
                    + "groups:\n  g:\n    swap: false\n    members: [m1, m2]\n")
    r = Rig(str(path))
    try:
        yield r
    finally:
        r.close()


def test_unchanged_model_keeps_its_process_and_serves_through_the_reload(rig, ports, tmp_path):
    assert rig.chat("m1")[0] == 200
    assert rig.chat("m2")[0] == 200
    p1 = rig.app.processes["m1"]
    pid1 = p1.pid
    # a slow stream is in progress on m1 while the config changes m2 and adds m3
    c = rig.conn()
    c.request("POST", "/v1/chat/completions",
              body=json.dumps({"model": "m1", "stream": True, "messages": [],
                               "demo": {"chunks": 15, "chunk_delay": 0.03}}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    first = r.read1(65536)
    assert first
    old_m2 = rig.app.processes["m2"]
    old_m2_pid = old_m2.pid
    (tmp_path / "config.yaml").write_text(
        "models:\n" + model_yaml("m1", ports["m1"]) + model_yaml("m2", ports["m2"], "--chunks 3")
        + model_yaml("m3", ports["m3"])
        + "groups:\n  g:\n    swap: false\n    exclusive: false\n    members: [m1, m2, m3]\n")
    assert rig.reloader.reload() is True
    rest = r.read()
    c.close()
    assert b"data: [DONE]" in first + rest  # the stream finished on the kept backend
    app = rig.app
    assert app.processes["m1"] is p1 and p1.pid == pid1 and p1.state.value == "ready"
    assert rig.chat("m1")[0] == 200 and p1.pid == pid1
    # the changed model was stopped; the next request starts its new config
    assert old_m2.state.value in ("stopped", "shutdown")
    assert app.processes["m2"] is not old_m2
    status, body = rig.chat("m2")
    assert status == 200 and len(body["choices"][0]["message"]["content"].split()) == 3
    assert app.processes["m2"].pid != old_m2_pid
    assert rig.chat("m3")[0] == 200
    log = rig.proxy_log()
    assert "configuration reloaded" in log
    assert "unchanged models ['m1'] keep their process" in log


def test_broken_config_keeps_the_old_one(rig, tmp_path):
    assert rig.chat("m1")[0] == 200
    before = rig.app
    pid = before.processes["m1"].pid
    (tmp_path / "config.yaml").write_text("models:\n  m1:\n    cmd: [not, a, string\n")
    assert rig.reloader.reload() is False
    assert rig.app is before
    assert "failed to reload config:" in rig.proxy_log()
    assert rig.chat("m1")[0] == 200 and before.processes["m1"].pid == pid
    # a config that parses but does not validate is refused the same way
    (tmp_path / "config.yaml").write_text("models:\n  m1:\n    proxy: http://127.0.0.1:1\n")
    assert rig.reloader.reload() is False
    assert rig.app is before and rig.chat("m2")[0] == 200


def test_overlapping_reloads_are_dropped(rig):
    entered = threading.Event()
    release = threading.Event()

    def slow_load(path, previous):
        entered.set()
        release.wait(10)
        return load_config(path, previous=previous)

    rig.reloader._load = slow_load
    t = rig.reloader.trigger()
    assert entered.wait(10)
    assert rig.reloader.reload() is False  # dropped while the first one runs
    release.set()
    t.join(10)
    assert rig.reloader.reloads == 1


def test_events_stream_gets_a_fresh_model_status(rig, ports, tmp_path):
    s = SseReader(rig)
    try:
        s.until(lambda t, d: t == "modelStatus" and [m["id"] for m in d] == ["m1", "m2"])
        (tmp_path / "config.yaml").write_text(
            "models:\n" + model_yaml("m1", ports["m1"]) + model_yaml("m3", ports["m3"]))
        assert rig.reloader.reload() is True
        s.until(lambda t, d: t == "modelStatus" and [m["id"] for m in d] == ["m1", "m3"])
    finally:
        s.close()


def test_symlink_swap_is_detected_by_the_watcher(tmp_path, ports):
    # Kubernetes ConfigMap layout: config.yaml -> ..data/config.yaml, ..data -> ..v1
    for v, name in (("..v1", "Old"), ("..v2", "New")):
        (tmp_path / v).mkdir()
        (tmp_path / v / "config.yaml").write_text("models:\n" + model_yaml("m1", ports["m1"],
                                                                          name=name))
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/config.yaml", tmp_path / "config.yaml")
    rig = Rig(str(tmp_path / "config.yaml"))
    try:
        assert rig.app.config.models["m1"].name == "Old"
        rig.reloader.watch(interval=0.05)
        os.symlink("..v2", tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert wait_until(lambda: rig.reloader.reloads == 1, timeout=15)
        assert rig.app.config.models["m1"].name == "New"
        assert rig.chat("m1")[0] == 200
    finally:
        rig.close()


def test_new_settings_apply_to_the_next_request(rig, ports, tmp_path):
    assert rig.chat("m1")[0] == 200
    (tmp_path / "config.yaml").write_text(
        'apiKeys: ["k-123"]\nmodels:\n' + model_yaml("m1", ports["m1"])
        + model_yaml("m2", ports["m2"])
        + "groups:\n  g:\n    swap: false\n    members: [m1, m2]\n")
    pid = rig.app.processes["m1"].pid
    assert rig.reloader.reload() is True
    assert rig.chat("m1")[0] == 401
    c = rig.conn()
    c.request("GET", "/running", headers={"Authorization": "Bearer k-123"})
    r = c.getresponse()
    running = json.loads(r.read())["running"]
    c.close()
    assert [(m["model"], m["state"]) for m in running] == [("m1", "ready")]
    assert rig.app.processes["m1"].pid == pid  # a settings change does not touch the model


def test_a_log_stream_follows_a_model_across_a_reload_that_replaces_its_process(
        rig, ports, tmp_path):
    assert rig.chat("m2")[0] == 200
    old_pid = rig.app.processes["m2"].pid
    c = rig.conn()
    c.request("GET", "/logs/stream/m2?no-history")
    r = c.getresponse()
    assert r.status == 200
    (tmp_path / "config.yaml").write_text(
        "models:\n" + model_yaml("m1", ports["m1"]) + model_yaml("m2", ports["m2"], "--chunks 3")
        + "groups:\n  g:\n    swap: false\n    members: [m1, m2]\n")
    assert rig.reloader.reload() is True
    assert rig.chat("m2")[0] == 200  # the new process starts and prints its banner
    new_pid = rig.app.processes["m2"].pid
    assert new_pid != old_pid
    seen = b""
    while b"demo backend m2 listening" not in seen:
        chunk = r.read1(65536)
        assert chunk, seen
        seen += chunk
    c.close()
