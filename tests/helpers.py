"""Shared test plumbing: free ports, process-tree inspection, leak checks, HTTP waits."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    """A port the OS says is free now. Several test runs may share this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def become_subreaper() -> None:
    """Orphaned descendants get reparented to us, so a leaked grandchild stays visible."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (int(rest[1]), rest[0])
    return table


def descendants(root: int | None = None) -> set[int]:
    """Live (non-zombie) descendants of `root` (default: this process)."""
    root = os.getpid() if root is None else root
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {p for p in found if table.get(p, (0, "Z"))[1] not in ("Z", "X")}


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def reaped_or_gone(pid: int) -> bool:
    """An orphan reparented to us (we are a subreaper) is reaped here once it has died."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not is_alive(pid)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll a condition that has no event to wait on (e.g. another process's exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_gone(pids, timeout: float = 10.0) -> None:
    """Fail (after killing them) if any of `pids` is still alive after `timeout`."""
    pids = set(pids)
    if wait_until(lambda: not any(is_alive(p) for p in pids), timeout):
        return
    alive = {p: cmdline(p) for p in pids if is_alive(p)}
    for p in alive:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    raise AssertionError(f"processes left behind: {alive}")


def demo_model_yaml(model_id: str, extra: str = "") -> str:
    """One entry of a YAML ``models:`` section running the demo backend on a free port;
    ``extra`` is more YAML for the model, indented by four spaces."""
    port = free_port()
    return (f"  {model_id}:\n"
            f"    cmd: {sys.executable} -m llamaswap.demo.backend --port {port} --model-id {model_id} --quiet\n"
            f"    proxy: http://127.0.0.1:{port}\n"
            f"    unloadTimeout: 2\n" + extra)


def demo_backend_argv(model_id: str, port: int, *extra: str) -> list[str]:
    """argv that starts the bundled demo backend with this Python."""
    return [sys.executable, "-m", "llamaswap.demo.backend", "--port", str(port),
            "--model-id", model_id, *extra]
