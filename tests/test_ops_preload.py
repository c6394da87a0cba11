"""hooks.on_startup.preload through the real router, with real demo backends."""

from __future__ import annotations

import sys

from helpers import free_port

from llamaswap.app import App
from llamaswap.config import load_config
from llamaswap.ops.events import EventBus, ModelPreloaded
from llamaswap.ops.logs import build_loggers
from llamaswap.ops.preload import preload_one, run_preload, start_preload

PY = sys.executable


def write_config(tmp_path, preload, models):
    text = "hooks:\n  on_startup:\n    preload: [" + ", ".join(preload) + "]\nmodels:\n"
    for mid, extra in models.items():
        port = free_port()
        text += (f"  {mid}:\n"
                 f"    cmd: {PY} -m llamaswap.demo.backend --port {port} --model-id {mid} "
                 f"--quiet {extra}\n"
                 f"    proxy: http://127.0.0.1:{port}\n"
                 f"    unloadTimeout: 2\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def preloaded_events(sub):
    out = []
    while True:
        e = sub.get(0)
        if e is None:
            return out
        if isinstance(e, ModelPreloaded):
            out.append((e.model, e.success))


def test_preload_is_sequential_through_the_router_and_logged(tmp_path):
    # one swap group (the default): loading b evicts a, so only the last stays running
    path = write_config(tmp_path, ["a", "b"], {"a": "", "b": "", "broken": "--fail-start oops"})
    loggers = build_loggers("none")
    events = EventBus()
    sub = events.subscribe()
    app = App.build(load_config(path), loggers, events)
    try:
        assert run_preload(app) == [True, True]
        assert app.processes["b"].state.value == "ready"
        assert app.processes["a"].state.value == "stopped"  # evicted by b: same swap group
        assert preload_one(app, "broken") is False
        assert preloaded_events(sub) == [("a", True), ("b", True), ("broken", False)]
        log = loggers.proxy.history().decode()
        assert log.index("preloading model: a") < log.index("preloading model: b") \
            < log.index("preloading model: broken")
        assert "failed to preload model broken: status 500" in log
        # a name that is not a local model is skipped with a warning
        assert preload_one(app, "ghost") is False
        assert "preload: model ghost is not a local model, skipping" in \
            loggers.proxy.history().decode()
    finally:
        app.shutdown()


def test_start_preload_runs_in_the_background(tmp_path):
    path = write_config(tmp_path, ["a"], {"a": ""})
    app = App.build(load_config(path), build_loggers("none"), EventBus())
    try:
        t = start_preload(app)
        assert t is not None
        t.join(30)
        assert app.processes["a"].state.value == "ready"
    finally:
        app.shutdown()
    empty = write_config(tmp_path, [], {"a": ""})
    app = App.build(load_config(empty), build_loggers("none"), EventBus())
    try:
        assert start_preload(app) is None
    finally:
        app.shutdown()
