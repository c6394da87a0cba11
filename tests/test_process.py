"""Process supervision with real backends: start, readiness, stop, crashes, orphans.

Every test runs real subprocesses (the demo backend, sh wrappers) on real sockets; the autouse
fixture in conftest.py fails any test that leaves a descendant alive.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from helpers import (ROOT, assert_gone, demo_backend_argv, free_port, is_alive,
                     reaped_or_gone, wait_until)
from llamaswap import procutil
from llamaswap.config.model import ModelConfig
from llamaswap.ops.events import EventBus, ProcessStateChanged
from llamaswap.ops.logs import build_loggers, new_process_log
from llamaswap.process import (TRANSITIONS, IllegalTransition, Process, ProcessState, StartError,
                               check_transition, go_duration)

S = ProcessState
LINUX = sys.platform.startswith("linux")
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


class Harness:
    """Builds Process objects wired like the app does and shuts them all down afterwards."""

    def __init__(self) -> None:
        self.loggers = build_loggers("none", level="debug")
        self.events = EventBus()
        self.sub = self.events.subscribe()
        self.processes: list[Process] = []

    def make(self, model_id: str = "m1", argv=None, port: int | None = None, extra=(),
             spawner: procutil.Spawner | None = None, **fields) -> Process:
        port = port or free_port()
        if argv is None:
            argv = demo_backend_argv(model_id, port, "--quiet", *extra)
        fields.setdefault("proxy", f"http://127.0.0.1:{port}")
        fields.setdefault("health_check_timeout", 30)
        cfg = ModelConfig(id=model_id, argv=tuple(argv), port=port, **fields)
        proc = Process(cfg, log=new_process_log(model_id, self.loggers.upstream),
                       proxy_log=self.loggers.log, events=self.events, spawner=spawner)
        self.processes.append(proc)
        return proc

    def changes(self, model_id: str | None = None) -> list[tuple[str, str]]:
        out = []
        while (event := self.sub.get(0)) is not None:
            if isinstance(event, ProcessStateChanged) and model_id in (None, event.model):
                out.append((event.old, event.new))
        return out

    def proxy_log(self) -> str:
        return self.loggers.proxy.history().decode()

    def close(self) -> None:
        for proc in self.processes:
            proc.shutdown(0.5)


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def health(port: int) -> int | None:
    return procutil.probe(f"http://127.0.0.1:{port}/health", 10.0)


def run_in_thread(fn, *args):
    """Run fn in a thread; returns (thread, box) where box holds 'result' or 'error'."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


# -- start and ready ------------------------------------------------------------------------

def test_start_ready_stop_with_demo_backend(h):
    proc = h.make()
    proc.start()
    assert proc.state is S.READY
    assert proc.pid and is_alive(proc.pid) and proc.ready_at is not None
    assert health(proc.config.port) == 200
    assert b"demo backend m1 listening" in proc.log.history()
    assert b"demo backend m1 listening" in h.loggers.upstream.history()
    pid = proc.pid
    proc.start()  # READY: returns at once
    proc.stop(5)
    assert proc.state is S.STOPPED and proc.pid is None and proc.ready_at is None
    assert not is_alive(pid)
    assert h.changes("m1") == [("stopped", "starting"), ("starting", "ready"),
                               ("ready", "stopping"), ("stopping", "stopped")]
    assert "Health check passed on http://127.0.0.1:" in h.proxy_log()
    assert "swapState() State transitioned from starting to ready" in h.proxy_log()
    assert "something already listens" not in h.proxy_log()
    proc.stop(5)  # stopped: a no-op that publishes nothing
    assert h.changes("m1") == []


def test_warns_when_the_port_is_already_taken(h):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = h.make("clash", port=port, extra=["--fail-start", "no"])
        with pytest.raises(StartError):
            proc.start()
    assert f"<clash> something already listens on http://127.0.0.1:{port} before" in h.proxy_log()


def test_check_endpoint_none_is_ready_right_after_spawn(h):
    proc = h.make(argv=["sleep", "30"], proxy="http://127.0.0.1:9", check_endpoint="none")
    proc.start()
    assert proc.state is S.READY and is_alive(proc.pid)
    proc.stop(5)
    assert proc.state is S.STOPPED


def test_health_probe_joins_proxy_path():
    assert procutil.health_url("http://h:1/base/", "/health") == "http://h:1/base/health"
    assert procutil.health_url("http://h:1", "health") == "http://h:1/health"
    assert procutil.probe(f"http://127.0.0.1:{free_port()}/health", 0.5) is None


# -- failed starts --------------------------------------------------------------------------

def test_early_exit_fails_fast_with_code_and_last_lines(h):
    proc = h.make("oom", extra=["--fail-start", "CUDA error: out of memory"],
                  health_check_timeout=120)
    with pytest.raises(StartError) as info:
        proc.start()
    message = str(info.value)
    assert message.startswith("[oom] upstream command exited prematurely (exit code 3)")
    assert "CUDA error: out of memory" in message
    assert not info.value.aborted
    assert proc.state is S.STOPPED and proc.pid is None
    assert h.changes("oom") == [("stopped", "starting"), ("starting", "stopped")]
    assert "CUDA error: out of memory" in h.proxy_log()


def test_failed_start_is_not_sticky(h, tmp_path):
    port = free_port()
    flag = tmp_path / "tried"
    backend = shlex.join(demo_backend_argv("retry", port, "--quiet"))
    script = (f"if [ -e {flag} ]; then exec {backend}; "
              f"else touch {flag}; echo first attempt fails; exit 5; fi")
    proc = h.make("retry", argv=["sh", "-c", script], port=port, env=(f"PYTHONPATH={ROOT}",))
    with pytest.raises(StartError, match=r"exit code 5\); last output:\nfirst attempt fails"):
        proc.start()
    proc.start()
    assert proc.state is S.READY and health(port) == 200
    proc.stop(5)


def test_health_check_timeout_stops_the_group(h):
    proc = h.make("slow", extra=["--never-healthy"], health_check_timeout=1)
    with pytest.raises(StartError) as info:
        proc.start()
    assert str(info.value).startswith("[slow] health check timed out after 1s")
    assert proc.state is S.STOPPED and proc.pid is None
    assert h.changes("slow") == [("stopped", "starting"), ("starting", "stopped")]


def test_missing_binary_proxy_and_command_errors(h):
    proc = h.make("nobin", argv=["/nonexistent/llama-server", "--port", "1"])
    with pytest.raises(StartError, match=r"^\[nobin\] failed to start command "
                                         r"'/nonexistent/llama-server --port 1': "):
        proc.start()
    assert proc.state is S.STOPPED
    with pytest.raises(StartError, match=r"^\[noproxy\] upstream proxy missing$"):
        h.make("noproxy", proxy="").start()
    with pytest.raises(StartError, match=r"^\[noargv\] empty command$"):
        h.make("noargv", argv=[]).start()


# -- stop -----------------------------------------------------------------------------------

def test_shell_wrapper_leaves_nothing_behind(h):
    port = free_port()
    backend = shlex.join(demo_backend_argv("wrapped", port, "--quiet"))
    proc = h.make("wrapped", argv=["sh", "-c", f"{backend} & wait"], port=port,
                  env=(f"PYTHONPATH={ROOT}",))
    proc.start()
    pgid = proc.pid
    group = procutil.group_members(pgid)
    assert group is not None and len(group) >= 2  # sh and its backend grandchild
    proc.stop(5)
    assert_gone(group, timeout=0)
    assert procutil.group_members(pgid) == set()
    assert "sending SIGKILL" not in h.proxy_log()  # SIGTERM to the group was enough


def test_grandchild_ignoring_sigterm_is_killed_with_the_group(h):
    port = free_port()
    backend = shlex.join(demo_backend_argv("stubborn", port, "--quiet", "--ignore-sigterm"))
    proc = h.make("stubborn", argv=["sh", "-c", f"{backend} & wait"], port=port,
                  env=(f"PYTHONPATH={ROOT}",))
    proc.start()
    pgid = proc.pid
    group = procutil.group_members(pgid)
    assert len(group) >= 2
    proc.stop(0.3)
    assert all(not is_alive(p) for p in group)
    assert procutil.group_members(pgid) == set()
    assert f"process group {pgid} still has members after 0.3s, sending SIGKILL" in h.proxy_log()


def test_backend_ignoring_sigterm_is_killed_after_grace(h):
    proc = h.make("deaf", extra=["--ignore-sigterm"])
    proc.start()
    pid = proc.pid
    proc.stop(0.3)
    assert proc.state is S.STOPPED and not is_alive(pid)
    log = h.proxy_log()
    assert f"pid {pid} did not exit within 0.3s, sending SIGKILL" in log
    assert "<deaf> stopped (killed by signal 9)" in log


def test_cmd_stop_gets_pid_and_environment(h, tmp_path):
    out = tmp_path / "cmdstop.txt"
    port = free_port()
    backend = shlex.join(demo_backend_argv("dock", port, "--quiet", "--ignore-sigterm"))
    proc = h.make("dock", port=port,
                  argv=["sh", "-c", f'echo "backend sees $STOP_MARK"; exec {backend}'],
                  env=(f"PYTHONPATH={ROOT}", "STOP_MARK=first", "STOP_MARK=second-wins"),
                  cmd_stop=f"sh -c 'echo \"$STOP_MARK ${{PID}}\" > {out}; kill -KILL ${{PID}}'")
    proc.start()
    pid = proc.pid
    proc.stop(5)
    assert out.read_text().strip() == f"second-wins {pid}"
    assert b"backend sees second-wins" in proc.log.history()
    assert not is_alive(pid)
    assert "did not exit within" not in h.proxy_log()  # cmdStop did it, not our SIGKILL


def test_unparsable_cmd_stop_falls_back_to_sigterm(h):
    proc = h.make("badstop", cmd_stop="kill 'unclosed ${PID}")
    proc.start()
    pid = proc.pid
    proc.stop(5)
    assert not is_alive(pid)
    assert "<badstop> cannot parse cmdStop, sending SIGTERM" in h.proxy_log()
    assert "<badstop> stopped (exit code 0)" in h.proxy_log()


def test_stop_hooks_run_once_when_the_stop_begins(h):
    proc = h.make("hooked")
    seen = []
    proc.add_stop_hook(lambda: seen.append((proc.state, is_alive(proc.pid))))
    proc.start()
    proc.stop(5)
    assert len(seen) == 1 and seen[0][0] is S.STOPPING


def test_concurrent_stops_share_one_stop(h):
    proc = h.make("shared-stop", extra=["--ignore-sigterm"])
    hooks = []
    proc.add_stop_hook(lambda: hooks.append(1))
    proc.start()
    h.changes()
    barrier = threading.Barrier(6)
    runs = [run_in_thread(lambda: (barrier.wait(), proc.stop(0.3))) for _ in range(6)]
    for thread, box in runs:
        thread.join(30)
        assert "error" not in box
    assert hooks == [1]
    assert proc.state is S.STOPPED
    assert h.changes("shared-stop") == [("ready", "stopping"), ("stopping", "stopped")]


def test_shutdown_is_terminal(h):
    proc = h.make("final")
    proc.start()
    pid = proc.pid
    proc.shutdown(5)
    assert proc.state is S.SHUTDOWN and not is_alive(pid)
    assert h.changes("final")[-2:] == [("stopping", "stopped"), ("stopped", "shutdown")]
    with pytest.raises(StartError, match=r"^\[final\] shutdown$"):
        proc.start()
    proc.stop(1)
    proc.shutdown(1)
    assert proc.state is S.SHUTDOWN


# -- concurrency between start and stop -----------------------------------------------------

def test_concurrent_starts_share_one_spawn(h):
    proc = h.make("shared-start", extra=["--load-delay", "0.3"])
    barrier = threading.Barrier(8)
    pids = []
    runs = [run_in_thread(lambda: (barrier.wait(), proc.start(), pids.append(proc.pid)))
            for _ in range(8)]
    for thread, box in runs:
        thread.join(30)
        assert "error" not in box
    assert len(set(pids)) == 1 and len(pids) == 8
    assert h.changes("shared-start") == [("stopped", "starting"), ("starting", "ready")]
    proc.stop(5)


def test_stop_aborts_a_start(h):
    proc = h.make("aborted", extra=["--never-healthy"], health_check_timeout=60)
    thread, box = run_in_thread(proc.start)
    assert wait_until(lambda: b"listening" in proc.log.history(), 30)
    pid = proc.pid
    proc.stop(5)
    thread.join(30)
    assert isinstance(box.get("error"), StartError) and box["error"].aborted
    assert str(box["error"]) == "[aborted] start aborted: the model is being stopped"
    assert proc.state is S.STOPPED and not is_alive(pid)
    assert h.changes("aborted") == [("stopped", "starting"), ("starting", "stopping"),
                                    ("stopping", "stopped")]


def test_stop_while_the_spawn_is_queued_kills_what_gets_spawned(h):
    spawner = procutil.Spawner()
    gate = threading.Event()
    busy, _ = run_in_thread(spawner.call, gate.wait)  # hold the spawner thread
    proc = h.make("early-abort", spawner=spawner)
    starter, box = run_in_thread(proc.start)
    assert wait_until(lambda: spawner.pending() == 1, 10)  # the spawn is queued
    stopper, stop_box = run_in_thread(proc.stop, 5)
    assert wait_until(lambda: proc.state is S.STOPPING, 10)
    gate.set()  # the queued spawn now happens, after the stop began
    for thread in (busy, starter, stopper):
        thread.join(30)
    assert "error" not in stop_box
    assert isinstance(box.get("error"), StartError) and box["error"].aborted
    assert proc.state is S.STOPPED and proc.pid is None
    assert "<early-abort> started pid" in h.proxy_log()  # it was spawned, then stopped
    assert h.changes("early-abort") == [("stopped", "starting"), ("starting", "stopping"),
                                        ("stopping", "stopped")]


def test_start_while_stopping_waits_for_the_stop_then_starts(h):
    proc = h.make("restart", extra=["--ignore-sigterm"])
    proc.start()
    old = proc.pid
    h.changes()
    stopper, box = run_in_thread(proc.stop, 0.5)
    assert wait_until(lambda: proc.state is S.STOPPING, 10)
    proc.start()
    stopper.join(30)
    assert "error" not in box
    assert proc.state is S.READY and proc.pid != old and not is_alive(old)
    assert h.changes("restart") == [("ready", "stopping"), ("stopping", "stopped"),
                                    ("stopped", "starting"), ("starting", "ready")]
    proc.stop(0.3)


# -- exits while ready ----------------------------------------------------------------------

def test_crash_while_ready_then_recovery_on_next_start(h):
    proc = h.make("crashy", extra=["--crash-after", "1"])
    exits = []
    exited = threading.Event()
    proc.add_exit_listener(lambda model, code: (exits.append((model, code)), exited.set()))
    proc.start()
    pid = proc.pid
    port = proc.config.port
    with pytest.raises(Exception):  # the backend dies after answering (or while answering)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read()
    assert exited.wait(10)
    assert exits == [("crashy", 1)]
    assert proc.state is S.STOPPED and proc.pid is None and not is_alive(pid)
    assert h.changes("crashy")[-2:] == [("ready", "stopping"), ("stopping", "stopped")]
    assert "<crashy> upstream exited unexpectedly (exit code 1); last output:" in h.proxy_log()
    assert "crashing after 1 requests" in h.proxy_log()
    proc.start()
    assert proc.state is S.READY and health(port) == 200
    proc.stop(5)


def test_killed_backend_reports_the_signal(h):
    proc = h.make("killed")
    exited = threading.Event()
    codes = []
    proc.add_exit_listener(lambda _m, code: (codes.append(code), exited.set()))
    proc.start()
    os.kill(proc.pid, signal.SIGKILL)
    assert exited.wait(10) and codes == [-9]
    assert "<killed> upstream exited unexpectedly (killed by signal 9)" in h.proxy_log()


# -- output ---------------------------------------------------------------------------------

def test_stalled_log_subscribers_never_block_a_flooding_backend(h):
    proc = h.make("flood", extra=["--log-flood", str(8 * 1024 * 1024)])
    stalled = proc.log.subscribe(maxsize=1)
    stalled_upstream = h.loggers.upstream.subscribe(maxsize=1)
    proc.start()  # the backend only listens after writing all 8 MiB
    assert proc.state is S.READY
    assert stalled.take_dropped() > 0 and stalled_upstream.take_dropped() > 0
    assert len(proc.log.history()) == 100 * 1024
    proc.stop(5)


# -- parent death and the spawner thread ---------------------------------------------------

HELPER = r"""
import sys, threading
from llamaswap.config.model import ModelConfig
from llamaswap.ops.logs import build_loggers, new_process_log
from llamaswap.process import Process
port = int(sys.argv[1]); argv = tuple(sys.argv[2:])
L = build_loggers("none")
proc = Process(ModelConfig(id="orphan", argv=argv, proxy=f"http://127.0.0.1:{port}"),
               log=new_process_log("orphan", L.upstream), proxy_log=L.log)
worker = threading.Thread(target=proc.start)  # a short-lived thread asks for the spawn
worker.start(); worker.join()
print(proc.pid, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.skipif(not LINUX, reason="parent-death signal is Linux only")
def test_kill_9_of_the_proxy_takes_its_backend_down():
    port = free_port()
    helper = subprocess.Popen([sys.executable, "-c", HELPER, str(port),
                               *demo_backend_argv("orphan", port, "--quiet")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV)
    try:
        pid = int(helper.stdout.readline())
        # the thread that asked for the spawn has exited and the backend still serves
        assert is_alive(pid) and health(port) == 200
    finally:
        helper.kill()
        helper.wait()
    # we are a subreaper (conftest), so the orphan is reparented to us: reap it as it dies
    assert wait_until(lambda: reaped_or_gone(pid), 10)
    assert not is_alive(pid)


GUARDED_HELPER = r"""
import sys
from llamaswap import procutil
from llamaswap.config.model import ModelConfig
from llamaswap.ops.logs import build_loggers, new_process_log
from llamaswap.process import Process
guarded, port, argv = sys.argv[1] == "guard", int(sys.argv[2]), tuple(sys.argv[3:])
if guarded:
    procutil.guard.start()
L = build_loggers("none")
proc = Process(ModelConfig(id="wrapped", argv=argv, proxy=f"http://127.0.0.1:{port}"),
               log=new_process_log("wrapped", L.upstream), proxy_log=L.log)
proc.start()
print(proc.pid, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.skipif(not LINUX, reason="parent-death signal and /proc are Linux only")
@pytest.mark.parametrize("guarded", [False, True])
def test_kill_9_and_a_wrapper_that_does_not_exec(guarded, tmp_path):
    """``sh -c "server & wait"``: the parent-death signal reaches only the shell. Without
    the group guard the server outlives a proxy killed with SIGKILL (the control); with it,
    the whole group goes."""
    port = free_port()
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(" ".join(shlex.quote(a) for a in demo_backend_argv("wrapped", port,
                                                                          "--quiet"))
                       + " &\nwait\n")
    helper = subprocess.Popen([sys.executable, "-c", GUARDED_HELPER,
                               "guard" if guarded else "none", str(port), "sh", str(wrapper)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV)
    pgid = int(helper.stdout.readline())
    members = procutil.group_members(pgid)
    try:
        assert health(port) == 200 and len(members) == 2  # the shell and the server
        helper.kill()
        helper.wait()
        assert wait_until(lambda: reaped_or_gone(pgid), 10)  # the shell: parent-death signal
        server = (members - {pgid}).pop()
        if guarded:
            assert wait_until(lambda: reaped_or_gone(server), 10)
        else:
            assert is_alive(server) and health(port) == 200  # orphaned, still serving
    finally:
        procutil.signal_group(pgid, signal.SIGKILL)
        assert wait_until(lambda: all(reaped_or_gone(p) for p in members), 10)


@pytest.mark.skipif(not LINUX, reason="parent-death signal is Linux only")
def test_spawner_thread_keeps_children_alive_after_the_asking_thread_exits(h):
    # control: the same Popen done on a short-lived thread dies with that thread
    thread, box = run_in_thread(procutil.popen_child, ["sleep", "30"], os.environ)
    thread.join()
    control = box["result"]
    assert control.wait(10) == -signal.SIGKILL
    control.stdout.close()
    # through the Spawner (what Process uses) the backend outlives the asking thread
    proc = h.make("kept")
    thread, box = run_in_thread(proc.start)
    thread.join(30)
    assert "error" not in box and not thread.is_alive()
    assert is_alive(proc.pid) and health(proc.config.port) == 200
    proc.stop(5)


def test_concurrent_spawns_from_many_threads():
    spawner = procutil.Spawner()
    stop_churn = threading.Event()

    log = build_loggers("none").upstream

    def churn():  # allocation, locks and I/O in other threads while the spawner forks
        while not stop_churn.is_set():
            log.write(repr([dict(a=i) for i in range(50)]))
            os.stat("/")

    churners = [threading.Thread(target=churn) for _ in range(2)]
    for t in churners:
        t.start()
    barrier = threading.Barrier(32)
    try:
        runs = [run_in_thread(lambda: (barrier.wait(), spawner.spawn(["sleep", "30"],
                                                                      os.environ))[1])
                for _ in range(32)]
        popens = []
        for thread, box in runs:
            thread.join(30)
            assert "error" not in box
            popens.append(box["result"])
    finally:
        stop_churn.set()
        for t in churners:
            t.join()
    assert len({p.pid for p in popens}) == 32 and all(is_alive(p.pid) for p in popens)
    for p in popens:
        assert os.getpgid(p.pid) == p.pid  # each in its own group
        procutil.signal_group(p.pid, signal.SIGKILL)
    for p in popens:
        assert p.wait(10) == -signal.SIGKILL
        p.stdout.close()


def test_many_processes_start_concurrently(h):
    procs = [h.make(f"par{i}") for i in range(4)]
    runs = [run_in_thread(p.start) for p in procs]
    for thread, box in runs:
        thread.join(60)
        assert "error" not in box
    assert [p.state for p in procs] == [S.READY] * 4, h.proxy_log()
    assert [health(p.config.port) for p in procs] == [200] * 4
    runs = [run_in_thread(p.stop, 5) for p in procs]
    for thread, _box in runs:
        thread.join(30)
    assert all(p.state is S.STOPPED for p in procs)


# -- the table ------------------------------------------------------------------------------

def test_transition_table_rejects_illegal_moves(h):
    for old in S:
        for new in S:
            if new in TRANSITIONS[old]:
                check_transition(old, new)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition(old, new)
    proc = h.make("table")
    with proc._lock, pytest.raises(IllegalTransition, match="stopped -> ready"):
        proc._set_state(S.READY)


def test_go_duration():
    assert [go_duration(s) for s in (1, 5, 60, 120, 3661)] == ["1s", "5s", "1m0s", "2m0s",
                                                              "1h1m1s"]
