"""Process: the health watch while ready, and the backoff state of the restart policy."""

from __future__ import annotations

import threading
import urllib.request

import pytest

from test_process import S, h  # noqa: F401 - h is a fixture
from llamaswap.ops.events import HealthCheckFailed


def events(h) -> list:
    out = []
    while (event := h.sub.get(0)) is not None:
        out.append(event)
    return out


def test_backoff_is_a_stopped_backend_waiting_for_its_restart(h):
    proc = h.make("b")
    assert proc.back_off("crash", 2.0)
    assert proc.state is S.BACKOFF and proc.restart_at is not None
    assert not proc.back_off("crash", 2.0)  # only from stopped
    proc.cancel_backoff()
    assert proc.state is S.STOPPED and proc.restart_at is None
    proc.back_off("health", 1.0)
    proc.start()  # the restart (or a request) goes ahead at once
    assert proc.state is S.READY and proc.restart_at is None
    proc.stop(5)
    proc.back_off("crash", 1.0)
    proc.stop(5)  # an unload calls the restart off
    assert proc.state is S.STOPPED
    assert h.changes("b") == [("stopped", "backoff"), ("backoff", "stopped"),
                              ("stopped", "backoff"), ("backoff", "starting"),
                              ("starting", "ready"), ("ready", "stopping"),
                              ("stopping", "stopped"), ("stopped", "backoff"),
                              ("backoff", "stopped")]
    assert "<b> restarting in 2s (crash)" in h.proxy_log()


def test_a_wedged_backend_fails_its_health_watch(h):
    proc = h.make("w", extra=["--hang-after", "1"], health_check_interval=0.2,
                  health_check_failures=2)
    dead = threading.Event()
    reports = []
    proc.add_health_listener(lambda model, detail: (reports.append((model, detail)), dead.set()))
    proc.start()
    watch = proc._watch
    assert watch is not None and watch.timeout == 0.2
    port = proc.config.port
    urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read()  # then it hangs
    assert dead.wait(30)
    assert reports == [("w", "no answer within 0.2s")]
    assert proc.state is S.READY  # the router orders the stop, with its reason
    assert proc.failure.reason == "health"
    assert proc.failure.detail == ("its health check failed 2 times in a row (last: no answer "
                                   "within 0.2s) and llama-swap stopped it")
    failures = [e for e in events(h) if isinstance(e, HealthCheckFailed)]
    assert [(e.model, e.count) for e in failures] == [("w", 1), ("w", 2)]
    log = h.proxy_log()
    assert "<w> health check failed (1/2) on http://127.0.0.1:" in log
    assert "<w> unhealthy: 2 health checks failed in a row on" in log
    proc.stop(1)
    watch._thread.join(5)
    assert not watch._thread.is_alive() and proc._watch is None
    assert proc.run_failure() is proc.failure


def test_the_watch_runs_only_while_ready_and_only_when_asked_for(h):
    plain = h.make("plain")
    plain.start()
    assert plain._watch is None
    watched = h.make("watched", health_check_interval=30)
    watched.start()
    watch = watched._watch
    assert watch is not None and watch.timeout == 5.0  # its own short timeout
    watched.stop(5)
    watch._thread.join(5)
    assert not watch._thread.is_alive()
    assert watched.failure is None and watched.run_failure() is None


def test_run_failure_names_a_crash_for_requests_it_cut(h):
    proc = h.make("c", extra=["--crash-after", "1"])
    exited = threading.Event()
    proc.add_exit_listener(lambda *_: exited.set())
    proc.start()
    port = proc.config.port
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read()
    assert exited.wait(10)
    assert proc.failure.reason == "crash"
    assert proc.run_failure().detail == "the backend exited on its own (exit code 1)"
    proc.start()
    assert proc.run_failure() is None  # a new run: nothing to explain
    proc.stop(5)

