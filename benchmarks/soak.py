"""Soak: mixed traffic over three models for a long time, with client aborts, backend crashes,
unloads and config reloads, and a count of what was lost.

Run: ``python benchmarks/soak.py`` (30 minutes; ``--minutes 2`` for a short run). Not part of
the test suite. It starts the proxy (``python -m llamaswap``) on a config of three demo
backends (two that swap in one group, one that stays loaded) and runs:

- clients (``--clients``, with think time) sending chat (plain and streamed), embeddings,
  ``/upstream`` requests, and aborting some of them: hanging up before the answer, in the
  middle of a stream, or halfway through sending the body; now and then a malformed request
  (which must get a 400);
- a fault thread that every ``--fault-every`` seconds kills a running backend (SIGKILL),
  unloads everything, or rewrites the config and sends SIGHUP (a reload that changes one
  model); some streamed requests also ask their backend to die mid-stream.

Every request is classified: ok, aborted by its client, cut by an injected fault (it was
in flight at a kill, or asked its backend to die), or lost (failed with no injected cause:
the target is none). Each minute prints requests and failures by class, the proxy's RSS,
open files and threads, and the backends running. At the end: traffic stops, the in-flight
gauge must return to zero, ``/running`` must match the backend processes, the proxy must
exit cleanly on SIGTERM and leave no backend behind, and its log must hold no traceback.
The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("soak-a", "soak-b", "soak-c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> int:
    for _ in range(100):
        base = free_port()
        ok = True
        for port in range(base + 1, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok and base + count < 65536:
            return base
    raise OSError("no free port range")


def config_text(run: str, generation: int, start_port: int) -> str:
    """Three demo models; ``generation`` changes soak-c's config, so a reload replaces it."""
    backend = f"{sys.executable} -m llamaswap.demo.backend --quiet --chunk-delay 0.01"
    return f"""
healthCheckTimeout: 30
unloadTimeout: 2
startPort: {start_port}
models:
  soak-a:
    cmd: {backend} --port ${{PORT}} --model-id {run}-a --load-delay 0.2
    aliases: [alias-a]
  soak-b:
    cmd: {backend} --port ${{PORT}} --model-id {run}-b --load-delay 0.3
  soak-c:
    cmd: {backend} --port ${{PORT}} --model-id {run}-c --load-delay 0.1 --chunks {4 + generation % 2}
    ttl: {60 + generation % 2}
groups:
  chat:
    swap: true
    exclusive: false
    members: [soak-a, soak-b]
  resident:
    swap: false
    exclusive: false
    persistent: true
    members: [soak-c]
"""


# ---- processes ----------------------------------------------------------------------------

def become_subreaper() -> None:
    """Orphans (a backend that outlived the proxy) are reparented to us, so we find them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, cmdline)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(name)] = (int(fields[1]), fields[0], cmd)
    return out


def backends(run: str) -> dict[str, list[int]]:
    """Live backend pids by model, found by their unique --model-id."""
    found: dict[str, list[int]] = {m: [] for m in MODELS}
    for pid, (_ppid, state, cmd) in _proc_table().items():
        if state in ("Z", "X") or "llamaswap.demo.backend" not in cmd:
            continue
        for m in MODELS:
            if f"--model-id {run}-{m[-1]} " in cmd + " ":
                found[m].append(pid)
    return found


def proc_stats(pid: int) -> dict:
    out = {"rss_mb": 0.0, "threads": 0, "fds": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_mb"] = int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


# ---- traffic ------------------------------------------------------------------------------

class Log:
    """Outcomes, and the injected faults failures may be blamed on. A failure is classified
    at the end of the run, when every fault's time is known: "cut" if a fault hit its model
    while it was in flight, else "lost"."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: Counter = Counter()  # "ok", "aborted", "failed" (then "cut" or "lost")
        self.failures: list[tuple[float, float, str, str, str]] = []  # start, end, model, class, detail
        self.kills: list[tuple[float, float, str]] = []  # (from, to, model); "*": every model
        self.faults: Counter = Counter()
        self.minute: Counter = Counter()

    def record(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.minute[outcome] += 1

    def fail(self, start: float, end: float, model: str, cls: str, detail: str) -> None:
        with self.lock:
            self.failures.append((start, end, model, cls, detail))
            self.minute["failed"] += 1

    def fault(self, kind: str, model: str, start: float, end: float | None = None) -> None:
        with self.lock:
            self.kills.append((start, start if end is None else end, model))
            self.faults[kind] += 1

    def classify(self) -> tuple[Counter, Counter, list[str]]:
        outcomes, classes, lost = Counter(), Counter(), []
        for start, end, model, cls, detail in self.failures:
            hit = any(m in (model, "*") and a <= end and b >= start - 0.05
                      for a, b, m in self.kills)
            kind = "cut" if hit else "lost"
            outcomes[kind] += 1
            classes[f"{kind}: {cls}"] += 1
            if kind == "lost" and len(lost) < 20:
                lost.append(f"{detail} ({end - start:.3f}s)")
        return outcomes, classes, lost


def _failure_class(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:60].decode("latin-1")
    # drop what varies (ports, pids) to keep the classes few
    words = [w for w in message.split() if not any(c.isdigit() for c in w)]
    return f"{status} {' '.join(words)[:80]}"


def client(port: int, seed: int, stop: threading.Event, log: Log, think: float) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        model = rng.choice(("soak-a", "soak-a", "soak-b", "soak-c", "alias-a"))
        real = "soak-a" if model == "alias-a" else model
        roll = rng.random()
        start = time.monotonic()
        try:
            if roll < 0.02:
                _malformed(port, log)
            elif roll < 0.12:
                _abort(port, model, rng, log)
            else:
                _request(port, model, real, roll, rng, log, start)
        except Exception as e:  # noqa: BLE001 - the soak records, never stops
            log.fail(start, time.monotonic(), "-", f"client error {type(e).__name__}", f"{model}: {e!r}")
        stop.wait(rng.expovariate(1 / think) if think > 0 else 0)


def _body(model: str, stream: bool, **extra) -> bytes:
    return json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "tell me something"}],
                       **extra}).encode()


def _request(port: int, model: str, real: str, roll: float, rng: random.Random, log: Log,
             start: float) -> None:
    die = False
    if roll < 0.55:
        path, body = "/v1/chat/completions", _body(model, False)
    elif roll < 0.85:
        die = rng.random() < 0.03
        demo = {"chunks": 8, "chunk_delay": 0.005}
        if die:
            demo["die_after_chunks"] = 3
        path, body = "/v1/chat/completions", _body(model, True, demo=demo)
    elif roll < 0.95:
        path, body = "/v1/embeddings", json.dumps({"model": model, "input": "x"}).encode()
    else:
        path, body = f"/upstream/{real}/v1/models", None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        try:
            if body is None:
                conn.request("GET", path)
            else:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            status, data = 0, f"{type(e).__name__}".encode()
        end = time.monotonic()
        stream = body is not None and b'"stream": true' in body
        if status == 200 and (not stream or b"[DONE]" in data):
            log.record("ok")
            return
        cls = _failure_class(status, data) if status else f"connection: {data.decode()}"
        if status == 200:
            cls = "200 stream cut short"
        if die:  # its backend died as asked, cutting whatever else it was serving too
            log.fault("die mid-stream", real, start, end)
        log.fail(start, end, real, cls, f"{model} {path}: {status} {data[:300]!r}")
    finally:
        conn.close()


def _abort(port: int, model: str, rng: random.Random, log: Log) -> None:
    """A client that gives up: before the answer, mid-stream, or mid-body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        how = rng.randrange(3)
        body = _body(model, how == 1, demo={"chunks": 20, "chunk_delay": 0.01})
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        if how == 2:
            s.sendall(head + body[:len(body) // 2])
        else:
            s.sendall(head + body)
            if how == 1:
                s.recv(200)  # the start of the stream, then hang up
        log.record("aborted")
    finally:
        s.close()


def _malformed(port: int, log: Log) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Length: -1\r\n\r\n")
        answer = s.recv(100)
        if answer.startswith(b"HTTP/1.1 400 "):
            log.record("ok")
        else:
            now = time.monotonic()
            log.fail(now, now, "-", "malformed request not answered 400", repr(answer))
    finally:
        s.close()


# ---- faults -------------------------------------------------------------------------------

def faults(proxy: subprocess.Popen, port: int, cfg: str, run: str, start_port: int, seed: int,
           every: float, stop: threading.Event, log: Log) -> None:
    rng = random.Random(seed)
    generation = 0
    while not stop.wait(rng.uniform(every / 2, every * 1.5)):
        kind = rng.choice(("kill", "kill", "kill", "unload", "reload"))
        if kind == "kill":
            running = [(m, p) for m, pids in backends(run).items() for p in pids]
            if not running:
                continue
            model, pid = rng.choice(running)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
            log.fault("kill", model, time.monotonic())
        elif kind == "unload":  # stops every model, cutting what is in flight
            began = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("POST", "/api/models/unload")
                conn.getresponse().read()
            finally:
                conn.close()
            log.fault("unload", "*", began, time.monotonic())
        else:
            generation += 1
            with open(cfg + ".tmp", "w") as f:
                f.write(config_text(run, generation, start_port))
            os.replace(cfg + ".tmp", cfg)
            proxy.send_signal(signal.SIGHUP)
            with log.lock:
                log.faults["reload"] += 1


# ---- checks -------------------------------------------------------------------------------

def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def inflight(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith("llamaswap_inflight_requests "):
            return float(line.split()[1])
    return -1.0


def consistent(port: int, run: str) -> tuple[bool, str]:
    running = {m["model"]: m["state"] for m in get_json(port, "/running")["running"]}
    procs = backends(run)
    for m in MODELS:
        state, pids = running.get(m, "stopped"), procs[m]
        if state == "ready" and len(pids) != 1:
            return False, f"{m} ready with {len(pids)} backend processes"
        if state == "stopped" and pids:
            return False, f"{m} stopped but backend {pids} alive"
    return True, f"running={running} backends={ {m: len(p) for m, p in procs.items()} }"


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--think", type=float, default=0.05, help="mean seconds between requests")
    ap.add_argument("--fault-every", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=18)
    args = ap.parse_args()

    become_subreaper()
    run = f"soak{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="llamaswap-soak-")
    cfg = os.path.join(tmp, "config.yaml")
    start_port = free_port_range(len(MODELS))
    with open(cfg, "w") as f:
        f.write(config_text(run, 0, start_port))
    port = free_port()
    proxy_log = os.path.join(tmp, "proxy.log")
    with open(proxy_log, "wb") as out:
        proxy = subprocess.Popen([sys.executable, "-m", "llamaswap", "-config", cfg, "-listen",
                                  f"127.0.0.1:{port}"], cwd=ROOT, stdout=out, stderr=out)
    print(f"soak: {args.minutes:g} min, {args.clients} clients, seed {args.seed}, proxy pid "
          f"{proxy.pid}, log {proxy_log}", flush=True)
    log = Log()
    stop = threading.Event()
    summary: dict = {}
    try:
        if not wait_for(lambda: _up(port), 30):
            print("soak: the proxy did not start", flush=True)
            return 1
        first = proc_stats(proxy.pid)
        threads = [threading.Thread(target=client, args=(port, args.seed * 1000 + i, stop, log,
                                                         args.think), daemon=True)
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=faults, args=(proxy, port, cfg, run, start_port,
                                                             args.seed, args.fault_every, stop,
                                                             log),
                                        daemon=True))
        for t in threads:
            t.start()
        began = time.monotonic()
        end = began + args.minutes * 60
        peak_rss = first["rss_mb"]
        minute = 0
        print("min  requests     ok  aborted  failed   rss MB  fds  threads  backends", flush=True)
        while time.monotonic() < end:
            stop.wait(min(60.0, end - time.monotonic()))
            minute += 1
            st = proc_stats(proxy.pid)
            peak_rss = max(peak_rss, st["rss_mb"])
            with log.lock:
                m, log.minute = log.minute, Counter()
            alive = sum(len(p) for p in backends(run).values())
            print(f"{minute:3d} {sum(m.values()):9d} {m['ok']:6d} {m['aborted']:8d} "
                  f"{m['failed']:7d} {st['rss_mb']:8.1f} {st['fds']:4d} {st['threads']:8d} "
                  f"{alive:9d}", flush=True)
        stop.set()
        for t in threads:
            t.join(150)
        settled = wait_for(lambda: inflight(port) == 0, 60)
        agree = wait_for(lambda: consistent(port, run)[0], 30)
        final = proc_stats(proxy.pid)
        failed, classes, lost = log.classify()
        outcomes = {**log.outcomes, "cut": failed["cut"], "lost": failed["lost"]}
        summary = {
            "minutes": args.minutes, "clients": args.clients, "seed": args.seed,
            "requests": sum(log.outcomes.values()) + len(log.failures), "outcomes": outcomes,
            "failure_classes": dict(classes.most_common()),
            "faults": dict(log.faults), "lost_examples": lost,
            "inflight_back_to_zero": settled, "running_matches_processes": agree,
            "consistency": consistent(port, run)[1],
            "rss_mb": {"start": round(first["rss_mb"], 1), "peak": round(peak_rss, 1),
                       "end": round(final["rss_mb"], 1)},
            "fds": {"start": first["fds"], "end": final["fds"]},
            "threads": {"start": first["threads"], "end": final["threads"]},
        }
    finally:
        stop.set()
        proxy.terminate()
        try:
            code = proxy.wait(60)
        except subprocess.TimeoutExpired:
            proxy.kill()
            code = proxy.wait()
    left = wait_for(lambda: not any(backends(run).values()), 15)
    for pids in backends(run).values():
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    with open(proxy_log, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    summary.update({"proxy_exit_code": code, "backends_left_after_exit": not left,
                    "tracebacks_in_proxy_log": text.count("Traceback"),
                    "internal_errors_in_proxy_log": text.count("internal error")})
    print(json.dumps(summary), flush=True)
    clean = (summary.get("outcomes", {}).get("lost", 0) == 0 and code == 0 and left
             and summary.get("inflight_back_to_zero") and summary.get("running_matches_processes")
             and summary["tracebacks_in_proxy_log"] == 0)
    return 0 if clean else 1


def _up(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
