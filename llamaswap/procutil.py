"""OS mechanics for backends: spawning, output, exit watching, group kill, health probes.

Nothing here decides anything about a model's life (that is ``process.Process``); this module
only knows how to run a command so that it can always be taken down again:

* Every backend starts in a new session, so it and anything it forks share one process group
  that is signalled as a whole (``sh -c "server & wait"`` leaves nothing behind).
* On Linux every child gets a parent-death signal (SIGKILL). Linux delivers it when the
  *thread* that forked the child exits, so every ``Popen`` runs on one long-lived
  :class:`Spawner` thread rather than on the short-lived worker that asked for it.
* The exit is observed with ``waitid(WNOWAIT)``: the leader stays a zombie, so its pid (which
  is also the group id) cannot be reused while we still signal the group; it is reaped last.
* Output is read by a thread that writes into a :class:`LogMonitor`, which never blocks, so
  a slow log reader can never fill the pipe and stall the backend.
* The parent-death signal reaches only the direct child: a wrapper that does not ``exec``
  (``sh -c "server & wait"``) would leave ``server`` behind when the proxy is killed with
  SIGKILL. So the CLI starts a :class:`GroupGuard`, a tiny shell process outside our session
  that is told every live group and kills them all when its pipe from us closes, which the
  kernel does however we die.

Windows (untested here): ``CREATE_NEW_PROCESS_GROUP`` and ``taskkill /T`` (``/F`` to force)
stand in for sessions and group signals; there is no parent-death signal.
"""

from __future__ import annotations

import http.client
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from llamaswap.ops.logs import LogMonitor

IS_WINDOWS = sys.platform == "win32"
IS_LINUX = sys.platform.startswith("linux")

PR_SET_PDEATHSIG = 1
SIGKILL = int(getattr(signal, "SIGKILL", 9))  # signal.SIGKILL does not exist on Windows
TAIL_BYTES = 8192  # how much of a run's own output is kept for error messages
KILL_WAIT = 10.0  # seconds to wait for an exit after SIGKILL before giving up loudly
CMD_STOP_MIN_TIMEOUT = 30.0  # cmdStop gets max(grace, this) seconds before it is killed

# Resolved once, in the parent before its first fork (ctypes is loaded only then): the forked
# child must not look anything up (see _child_setup).
_prctl: Callable[..., int] | None = None
_prctl_resolved = False


def _resolve_prctl() -> Callable[..., int] | None:
    global _prctl, _prctl_resolved
    if not _prctl_resolved and IS_LINUX:
        try:
            import ctypes
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong]
            prctl.restype = ctypes.c_int
            _prctl = prctl
        except (OSError, AttributeError):
            _prctl = None
    _prctl_resolved = True
    return _prctl


def build_env(extra: Sequence[str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent environment plus ``NAME=value`` entries; later entries win."""
    env = dict(os.environ if base is None else base)
    for entry in extra:
        name, sep, value = entry.partition("=")
        if sep and name:
            env[name] = value
    return env


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """The ``preexec_fn`` for Linux: one pre-resolved libc call and a getppid check.

    ``preexec_fn`` runs Python in the forked child of a threaded program, so it does nothing
    that could need a lock another thread held at fork time: no imports, no name lookups
    beyond closure cells, no allocation worth mentioning. If the parent died between fork and
    prctl, the signal would never come: the child is already orphaned, so it exits.
    """
    prctl = _prctl
    getppid = os.getppid
    exit_ = os._exit
    sigkill = SIGKILL

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent_pid:
            exit_(127)

    return setup


def popen_child(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
    """Start `argv` in its own session (group), stdin closed, stdout+stderr on one pipe.

    Call it from the :class:`Spawner` thread: on Linux the child's parent-death signal is
    tied to the calling thread.
    """
    kwargs: dict = {}
    if IS_WINDOWS:
        kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
                                   | 0x08000000)  # CREATE_NO_WINDOW
    else:
        kwargs["start_new_session"] = True
        if _resolve_prctl() is not None:
            kwargs["preexec_fn"] = _child_setup(os.getpid())
    return subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
                            close_fds=True, **kwargs)


class Spawner:
    """One long-lived thread that performs every Popen (see the module docstring)."""

    def __init__(self, name: str = "spawner"):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            fn, future = self._queue.get()
            if fn is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who decides
                future.set_exception(exc)

    def call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the spawner thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return fn()
        import concurrent.futures  # at the first start of a backend, not at the proxy's
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future.result()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        return self.call(lambda: popen_child(argv, env))  # type: ignore[return-value]

    def pending(self) -> int:
        """Calls queued and not yet started (approximate)."""
        return self._queue.qsize()

    @property
    def thread(self) -> threading.Thread:
        return self._thread


_default_spawner: Spawner | None = None
_default_lock = threading.Lock()


def default_spawner() -> Spawner:
    """The process-wide spawner, created on first use (its thread lives until exit)."""
    global _default_spawner
    with _default_lock:
        if _default_spawner is None:
            _default_spawner = Spawner()
        return _default_spawner


# -- process groups ------------------------------------------------------------------------

def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole group; False when no process is left in it."""
    if IS_WINDOWS:
        args = ["taskkill", "/T", "/PID", str(pgid)]
        if sig != signal.SIGTERM:
            args.insert(1, "/F")
        return subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              check=False).returncode == 0
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed credentials; nothing more we can do
        return True


@dataclass(frozen=True)
class ProcEntry:
    ppid: int
    pgid: int
    sid: int


def process_table(proc: str = "/proc") -> dict[int, ProcEntry]:
    """pid -> (ppid, process group, session) of every live (non-zombie) process; empty
    where /proc cannot be read."""
    table: dict[int, ProcEntry] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) < 4 or fields[0] in (b"Z", b"X"):
            continue
        table[int(entry)] = ProcEntry(int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def group_members(pgid: int) -> set[int] | None:
    """Live (non-zombie) pids in process group `pgid`; None where /proc is unavailable."""
    if not IS_LINUX or not os.path.isdir("/proc"):
        return None
    return {pid for pid, e in process_table().items() if e.pgid == pgid}


def _group_empty(pgid: int) -> bool:
    members = group_members(pgid)
    if members is not None:
        return not members
    # elsewhere: signal 0 also counts zombies, which init reaps quickly
    return not signal_group(pgid, 0) if not IS_WINDOWS else True


def wait_group_empty(pgid: int, deadline: float) -> bool:
    """Poll until no live process is left in the group or `deadline` (monotonic) passes."""
    interval = 0.005
    while True:
        if _group_empty(pgid):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))
        interval = min(interval * 2, 0.1)


# -- the group guard ------------------------------------------------------------------------

# POSIX sh (dash included): keeps a " pgid pgid " list from "+pgid"/"-pgid" lines on stdin and
# SIGKILLs every group still listed at EOF. Signals are ignored: only EOF ends it.
_GUARD_SCRIPT = """trap '' INT TERM HUP QUIT
groups=' '
while IFS= read -r line; do
  case $line in
    +*) groups="$groups${line#+} " ;;
    -*) g=${line#-}
        case $groups in *" $g "*) groups="${groups%%" $g "*} ${groups#*" $g "}" ;; esac ;;
  esac
done
for g in $groups; do kill -9 -$g 2>/dev/null; done
"""


class GroupGuard:
    """Kills every backend's process group if this process dies without stopping them.

    ``start()`` runs the guard (POSIX only; a no-op elsewhere or when it cannot start);
    ``add``/``discard`` report each group from spawn to reap (every Child does); ``close()``
    ends the guard once everything is stopped. Without a guard only the bookkeeping runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._groups: set[int] = set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, report: Callable[[str, str], None] | None = None) -> bool:
        if IS_WINDOWS:
            return False
        with self._lock:
            if self._proc is not None:
                return True
            try:
                # its own session: a terminal's Ctrl-C or a kill of our group must not end it
                self._proc = subprocess.Popen(["/bin/sh", "-c", _GUARD_SCRIPT, "llama-swap-guard"],
                                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True,
                                              close_fds=True)
            except OSError as exc:
                if report is not None:
                    report("warn", f"process group guard could not start: {exc}; backends "
                                   "behind a shell wrapper may outlive a killed proxy")
                return False
            for pgid in self._groups:
                self._send(f"+{pgid}\n")
            return True

    def add(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
            self._send(f"+{pgid}\n")

    def discard(self, pgid: int) -> None:
        with self._lock:
            if pgid in self._groups:
                self._groups.discard(pgid)
                self._send(f"-{pgid}\n")

    def close(self) -> None:
        """End the guard; groups still registered are killed by it."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            proc.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            os.write(proc.stdin.fileno(), line.encode())  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass  # the guard was killed: nothing more it can do for us


guard = GroupGuard()


# -- one running child ----------------------------------------------------------------------

class Child:
    """A spawned command: its output reader, its exit watcher and its termination.

    ``on_exit(child)`` is called from the watcher thread as soon as the leader exits (it is
    not reaped yet). ``terminate()`` is shared: the first caller does the work with its own
    arguments, later and concurrent callers wait for it to finish.
    """

    def __init__(self, popen: subprocess.Popen, env: Mapping[str, str], log: LogMonitor,
                 on_exit: Callable[["Child"], None] | None = None, name: str = "child"):
        self.popen = popen
        self.pid: int = popen.pid
        self.pgid: int = popen.pid  # a new session's leader leads its group
        self.env = dict(env)
        self.log = log
        self.started = time.monotonic()
        self.exited = threading.Event()
        self.returncode: int | None = None
        self.killed = False  # SIGKILL was needed
        self._on_exit = on_exit
        self._tail = bytearray()
        self._tail_lock = threading.Lock()
        self._term_lock = threading.Lock()
        self._term_started = False
        self._term_done = threading.Event()
        if not IS_WINDOWS:
            guard.add(self.pgid)
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-exit", daemon=True)
        self._reader.start()
        self._watcher.start()

    # output
    def _read(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        fd = stream.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                with self._tail_lock:
                    self._tail += data
                    if len(self._tail) > TAIL_BYTES:
                        del self._tail[:len(self._tail) - TAIL_BYTES]
                self.log.write(data)
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def join_output(self, timeout: float) -> bool:
        """Wait for the output pipe to reach EOF (every writer gone)."""
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def tail(self, lines: int = 10) -> str:
        """The last non-empty lines of this run's own output."""
        with self._tail_lock:
            text = bytes(self._tail).decode("utf-8", "replace")
        kept = [line.rstrip() for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    # exit
    def _watch(self) -> None:
        if hasattr(os, "waitid") and not IS_WINDOWS:
            while True:
                try:
                    info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:  # reaped elsewhere; Popen knows the code
                    self.returncode = self.popen.returncode
                    break
                if info is None:
                    continue
                self.returncode = (info.si_status if info.si_code == os.CLD_EXITED
                                   else -info.si_status)
                break
        else:
            self.returncode = self.popen.wait()
        self.exited.set()
        if self._on_exit is not None:
            self._on_exit(self)

    def reap(self) -> int | None:
        """Collect the exit status (after the group has been cleared)."""
        guard.discard(self.pgid)  # before the leader's pid, our group id, can be reused
        try:
            code = self.popen.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            return self.returncode
        if self.returncode is None:
            self.returncode = code
        return self.returncode

    # stop
    def terminate(self, grace: float, *, cmd_stop: Sequence[str] | None = None,
                  spawner: Spawner | None = None,
                  before_wait: Callable[[], None] | None = None,
                  report: Callable[[str, str], None] | None = None) -> None:
        """Stop the whole group: cmdStop (or SIGTERM to the group), `before_wait`, wait up to
        `grace` for every member to exit, SIGKILL the group, reap. Shared and idempotent."""
        with self._term_lock:
            owner = not self._term_started
            self._term_started = True
        if not owner:
            self._term_done.wait()
            return
        try:
            self._terminate(grace, cmd_stop, spawner, before_wait, report or (lambda _l, _m: None))
        finally:
            self._term_done.set()

    def _terminate(self, grace, cmd_stop, spawner, before_wait, report) -> None:
        if not self.exited.is_set():
            if cmd_stop:
                run_stop_command(cmd_stop, self.env, max(grace, CMD_STOP_MIN_TIMEOUT),
                                 spawner or default_spawner(), self.log, report)
            else:
                signal_group(self.pgid, signal.SIGTERM)
        elif not IS_WINDOWS:
            # the leader is gone: whatever is left of its group is an orphan
            signal_group(self.pgid, signal.SIGTERM)
        if before_wait is not None:
            before_wait()
        deadline = time.monotonic() + max(grace, 0.0)
        if not self.exited.wait(max(deadline - time.monotonic(), 0.0)):
            report("warn", f"pid {self.pid} did not exit within {grace:g}s, sending SIGKILL "
                           f"to its process group")
            self.killed = True
            signal_group(self.pgid, SIGKILL)
            if not self.exited.wait(KILL_WAIT):
                report("error", f"pid {self.pid} still running {KILL_WAIT:g}s after SIGKILL")
        if not IS_WINDOWS:
            if group_members(self.pgid) is None:
                # no /proc: signal 0 would count our own zombie leader, so reap it first
                self.reap()
            # on Linux the leader is an unreaped zombie here, so its pid (the group id) is
            # still ours and cannot be handed to an unrelated new group
            if not wait_group_empty(self.pgid, deadline):
                report("warn", f"process group {self.pgid} still has members after "
                               f"{grace:g}s, sending SIGKILL")
                self.killed = True
                signal_group(self.pgid, SIGKILL)
                if not wait_group_empty(self.pgid, time.monotonic() + KILL_WAIT):
                    report("error", f"process group {self.pgid} survived SIGKILL")
            signal_group(self.pgid, SIGKILL)  # members we cannot see (no /proc)
        self.reap()

    @property
    def terminating(self) -> bool:
        return self._term_started


def run_stop_command(argv: Sequence[str], env: Mapping[str, str], timeout: float,
                     spawner: Spawner, log: LogMonitor,
                     report: Callable[[str, str], None], label: str = "cmdStop") -> int | None:
    """Run cmdStop (or another of the model's commands: `label`) synchronously with the
    backend's environment; its output goes to `log`. Its exit code; None if it could not
    start."""
    try:
        popen = spawner.spawn(argv, env)
    except OSError as exc:
        report("error", f"{label} '{' '.join(argv)}' could not start: {exc}"
                        + ("; sending SIGTERM" if label == "cmdStop" else ""))
        return None
    child = Child(popen, env, log, name=label.lower())
    if not child.exited.wait(timeout):
        report("warn", f"{label} '{' '.join(argv)}' still running after {timeout:g}s, "
                       f"killing it")
        signal_group(child.pgid, SIGKILL)
        child.exited.wait(KILL_WAIT)
    if not IS_WINDOWS:
        signal_group(child.pgid, SIGKILL)  # leftovers of the stop command itself
    child.join_output(1.0)
    code = child.reap()
    if code:
        report("warn", f"{label} '{' '.join(argv)}' exited with code {code}")
    return code


# -- health ---------------------------------------------------------------------------------

def health_url(proxy: str, endpoint: str) -> str:
    """`endpoint` joined to the proxy URL's path with exactly one slash (as Go's proxy)."""
    base = proxy.rstrip("/")
    return base + "/" + endpoint.lstrip("/")


def port_in_use(url: str, timeout: float = 0.2) -> bool:
    """Whether something already accepts connections at a loopback URL's host:port."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if host not in ("127.0.0.1", "localhost", "::1"):
        return False  # a remote upstream may well be up already (e.g. cmd only attaches)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def probe(url: str, timeout: float, method: str = "GET") -> int | None:
    """One request (a GET unless `method`); the status code, or None when nothing answered
    in time."""
    return probe_detail(url, timeout, method)[0]


def probe_detail(url: str, timeout: float, method: str = "GET") -> tuple[int | None, str]:
    """One request (a GET unless `method`) on its own connection (never a pooled one):
    (status, "") or (None, what went wrong, e.g. "timed out after 1s")."""
    parts = urlsplit(url)
    conn_cls = (http.client.HTTPSConnection if parts.scheme == "https"
                else http.client.HTTPConnection)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    except (ValueError, http.client.HTTPException) as exc:
        return None, str(exc) or type(exc).__name__
    try:
        conn.request(method, path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read(65536)
        return resp.status, ""
    except TimeoutError:
        return None, f"timed out after {timeout:g}s"
    except ConnectionRefusedError:
        return None, "connection refused"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, str(exc) or type(exc).__name__
    finally:
        conn.close()


class HealthWatch:
    """Probes a ready backend's health endpoint every `interval` seconds on a thread of its
    own, each probe on a fresh connection with its own `timeout`.

    ``on_failure(count, detail)`` is called for every failed probe (``count`` consecutive
    ones); after `failures` in a row ``on_dead(detail)`` is called once and the watch ends.
    Probes run at a fixed rate (a slow probe does not push the next one back), so a backend
    that stops answering is reported within ``interval * failures + timeout``. ``stop()``
    never blocks; a probe in progress finishes in the background and is not reported.
    """

    def __init__(self, url: str, interval: float, failures: int, timeout: float, *,
                 on_failure: Callable[[int, str], None], on_dead: Callable[[str], None],
                 name: str = "health-watch"):
        self.url = url
        self.interval = interval
        self.failures = failures
        self.timeout = timeout
        self._on_failure = on_failure
        self._on_dead = on_dead
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "HealthWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        stopped = self._stopped
        due = time.monotonic() + self.interval
        count = 0
        while not stopped.wait(max(0.0, due - time.monotonic())):
            # A probe is over by the time the next one is due (its timeout is cut short if it
            # started late), so late starts never add up along a run of failures.
            due += self.interval
            status, detail = probe_detail(self.url, min(self.timeout, max(
                0.01, due - time.monotonic())))
            if stopped.is_set():
                return
            if status == 200:
                count = 0
                continue
            count += 1
            if status is None and detail.startswith("timed out"):
                detail = f"no answer within {self.timeout:g}s"
            detail = detail or f"HTTP {status}"
            self._on_failure(count, detail)
            if count >= self.failures:
                self._on_dead(detail)
                return
            if time.monotonic() - due > self.interval:
                due = time.monotonic()  # far behind (a suspended machine): no burst of probes
