"""Proxy overhead benchmark: the same fast backend reached directly and through llama-swap.

Run: ``python benchmarks/proxy_bench.py`` (two to three minutes). It starts the proxy as a
subprocess (``python -m llamaswap``) with a config whose models are this script's own fast
backend (``--backend`` mode: a raw-socket HTTP/1.1 server that answers small JSON at once,
streams chunks stamped with CLOCK_MONOTONIC so transit can be measured, swallows uploads and
reports when their first byte arrived).

Reported, as absolute numbers and as ratios/deltas against the direct connection:
- small non-streaming requests at 1, 4, 16 and 64 clients (``--clients``): req/s, p50, p99,
  and the proxy's CPU time per request (user + system, all its threads, from /proc) with its
  context switches per request. The clients are one closed-loop epoll thread of this script
  over keep-alive connections (like ``wrk``), so the load generator takes little of a small
  machine's CPU;
- the same small request with a new connection for each (one client, as curl and many
  scripts send them): the proxy's CPU and context switches per request, p50;
- a stream's time to first chunk (and first byte), added over direct, on
  ``/upstream/fast/stream`` (unmetered) and on a streamed ``/v1/chat/completions``
  (metered), as the median of many short streams, alternated with direct;
- a 200-chunk stream: time to first byte, added per-chunk transit (p50/p99);
- swap overhead: A/B alternation with backends that turn healthy after a fixed delay;
- proxy RSS idle, after 2000 requests and after all the small requests, and its rise while
  a 50 MB upload passes through, plus the time until the backend sees the upload's first
  byte.

A/B: ``--against DIR`` runs a second proxy from another checkout (e.g. a ``git worktree``
of main) beside this one; each figure is measured for both, alternated over ``--rounds``
rounds in one run, and the summary gives both and their ratio. On a shared machine compare
only figures from one run.

Profile: ``--profile N`` loads this checkout's proxy with N clients and writes where its
time goes to ``--profile-out``: CPU and context switches per request of each thread group
(handler threads, router, disconnect watcher, activity writer, ...), from a plain run, then
a per-thread cProfile (CPU-time clock) of a second run, sorted by own time. With
``--py-spy`` and py-spy on PATH, a py-spy flame graph of a third run is written too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = json.dumps({"model": "fast", "input": "hello"}).encode()
# --api-key: the apiKeys entry the proxy is given, and the header every request carries
API_KEYS = {
    "none": "",
    "plain": "apiKeys: [sk-bench-plain]\n",
    "scoped": "apiKeys:\n  - sk-bench-admin\n  - key: sk-bench-scoped\n    name: bench\n"
              "    models: [\"fast*\", \"swap-?\"]\n    maxInFlight: 64\n",
}
AUTH: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# the backend

def _seconds_since_exec() -> float:
    """How long ago this process was created (so interpreter start-up counts toward the
    health delay, not toward the proxy's swap overhead)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


CHAT_CHUNK = (b'data: {"id":"c1","object":"chat.completion.chunk","model":"fast",'
              b'"choices":[{"index":0,"delta":{"content":"tok"}}],"t":%d}\n\n')


CHAT_END = (b'data: {"id":"c1","object":"chat.completion.chunk","model":"fast","choices":[],'
            b'"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            b'data: [DONE]\n\n')


def send_stream(conn: socket.socket, n: int, gap: float, event: bytes, end: bytes = b"") -> None:
    """``n`` SSE events ``gap`` seconds apart, each stamped with CLOCK_MONOTONIC (ns), then
    ``end``; the head goes in its own write before the first event, as a backend that
    flushes its headers at once does."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    for i in range(n):
        if i:
            time.sleep(gap)
        data = event % time.monotonic_ns()
        conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
    if end:
        conn.sendall(b"%x\r\n%s\r\n" % (len(end), end))
    conn.sendall(b"0\r\n\r\n")


def backend_main(port: int, health_delay: float) -> None:
    ready_at = time.monotonic() - _seconds_since_exec() + health_delay
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(256)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = conn.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                first_ns = None
                body = b""
                if "chunked" in headers.get("transfer-encoding", ""):
                    while True:
                        size = int(f.readline().split(b";")[0], 16)
                        if first_ns is None:
                            first_ns = time.monotonic_ns()
                        if size == 0:
                            f.readline()
                            break
                        f.read(size)
                        f.readline()
                else:
                    left = length
                    while left:
                        b = f.read1(min(left, 1 << 20))
                        if not b:
                            return
                        if first_ns is None:
                            first_ns = time.monotonic_ns()
                        left -= len(b)
                        if length <= 65536:
                            body += b
                if target.startswith("/health"):
                    ok = time.monotonic() >= ready_at
                    body = b"ok" if ok else b"loading"
                    conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                                 % (200 if ok else 503, len(body), body))
                elif target.startswith("/stream"):
                    n = int(target.split("n=")[1].split("&")[0])
                    gap = float(target.split("gap=")[1])
                    send_stream(conn, n, gap, b"data: %d\n\n")
                elif b'"stream":true' in body:  # a chat completion streamed as SSE
                    req = json.loads(body)
                    send_stream(conn, req["n"], req["gap"], CHAT_CHUNK,
                                CHAT_END % (req["n"], req["n"] + 5))
                elif target.startswith(("/upload", "/v1/audio/transcriptions")):
                    body = json.dumps({"first_ns": first_ns, "bytes": length}).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    body = b'{"object":"list","data":[{"embedding":[0.1,0.2]}]}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


# ---------------------------------------------------------------------------------------------
# helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_HANDED_OUT: set[int] = set()


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free ports (a proxy's startPort: its models take the
    next ones), below the ephemeral range where bind(0) ports come and go, and apart from
    every block handed out before (two proxies' blocks must not overlap)."""
    for _ in range(500):
        base = random.randrange(10000, 32000 - n)
        ports = range(base, base + n)
        if _HANDED_OUT.intersection(ports):
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED_OUT.update(ports)
        return base
    return free_port()


def wait_http(port: int, path: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not answering {path}")


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.I)


def small_request(port: int, path: str = "/v1/embeddings") -> bytes:
    """The bytes of one small JSON POST, as a client library sends them."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(SMALL)}\r\n")
    for k, v in AUTH.items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + SMALL


def proc_counters(pid: int) -> tuple[float, int]:
    """(CPU seconds of the whole process, context switches of its live threads)."""
    switches = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:  # voluntary and nonvoluntary
                        switches += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return cpu_seconds(pid), switches


def closed_loop(port: int, request: bytes, clients: int, seconds: float,
                pid: int | None = None, warmup: float = 0.3) -> dict:
    """``clients`` keep-alive connections, each sending ``request`` again as soon as the
    previous answer is whole (a closed loop, like wrk), driven by one epoll thread. The
    connections are opened and warmed up before the measured window; with ``pid`` that
    process's CPU and context switches are counted over the window."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    ep = select.epoll()
    conns: dict[int, list] = {}
    try:
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            ep.register(s.fileno(), select.EPOLLIN)
            conns[s.fileno()] = [s, bytearray(), 0.0, -1]

        def phase(duration: float) -> list[float]:
            lat: list[float] = []
            stop = time.perf_counter() + duration
            for c in conns.values():
                c[2] = time.perf_counter()
                c[0].sendall(request)
            active = len(conns)
            while active:
                events = ep.poll(30.0)
                if not events:
                    raise RuntimeError("no answer within 30 s")
                for fd, _ in events:
                    c = conns[fd]
                    data = c[0].recv(262144)
                    if not data:
                        raise RuntimeError("the server closed a keep-alive connection")
                    buf = c[1]
                    buf += data
                    if c[3] < 0:
                        end = buf.find(b"\r\n\r\n")
                        if end < 0:
                            continue
                        if not buf.startswith(b"HTTP/1.1 200 "):
                            raise RuntimeError(f"status {bytes(buf[:40])!r}")
                        m = _CONTENT_LENGTH.search(buf, 0, end + 2)
                        if m is None:
                            raise RuntimeError("answer without Content-Length")
                        c[3] = end + 4 + int(m.group(1))
                    if len(buf) < c[3]:
                        continue
                    now = time.perf_counter()
                    del buf[:c[3]]
                    c[3] = -1
                    lat.append(now - c[2])
                    if now < stop:
                        c[2] = now
                        c[0].sendall(request)
                    else:
                        active -= 1
            return lat

        phase(warmup)
        perf = _futex_counter(pid) if pid and FUTEX else None
        before = proc_counters(pid) if pid else (0.0, 0)
        t0 = time.perf_counter()
        lat = phase(seconds)
        wall = time.perf_counter() - t0
        after = proc_counters(pid) if pid else (0.0, 0)
    finally:
        ep.close()
        for s in socks:
            s.close()
    out = {"rps": len(lat) / wall, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
           "n": len(lat)}
    if pid:
        out["cpu_us_per_req"] = (after[0] - before[0]) / len(lat) * 1e6
        out["switches_per_req"] = (after[1] - before[1]) / len(lat)
    if perf is not None:
        out["futex_per_req"] = _futex_count(perf) / len(lat)
    return out


FUTEX = False  # --futex: count the proxy's futex calls (GIL and lock hand-offs) with perf


def new_connections(port: int, request: bytes, seconds: float, pid: int) -> dict:
    """One client that opens a new connection for each request (as curl and many scripts
    do): the proxy's CPU and context switches per request, and the median latency."""
    lat: list[float] = []
    before = proc_counters(pid)
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port))
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            buf = b""
            while True:
                data = s.recv(65536)
                if not data:
                    raise RuntimeError("the server closed the connection before answering")
                buf += data
                end = buf.find(b"\r\n\r\n")
                m = _CONTENT_LENGTH.search(buf, 0, end + 2) if end >= 0 else None
                if m is not None and len(buf) >= end + 4 + int(m.group(1)):
                    break
        finally:
            s.close()
        lat.append(time.perf_counter() - t0)
    after = proc_counters(pid)
    return {"cpu_us_per_req": (after[0] - before[0]) / len(lat) * 1e6,
            "switches_per_req": (after[1] - before[1]) / len(lat),
            "p50_ms": pct(lat, 0.5) * 1e3, "n": len(lat)}


def _futex_counter(pid: int) -> tuple[subprocess.Popen, str] | None:
    """``perf stat`` counting the futex system calls of ``pid``'s threads, attached."""
    fd, path = tempfile.mkstemp(prefix="proxybench-futex-")
    os.close(fd)
    try:
        proc = subprocess.Popen(["perf", "stat", "-x,", "-o", path, "-e",
                                 "syscalls:sys_enter_futex", "-p", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    time.sleep(0.2)  # attached before the window opens
    return proc, path


def _futex_count(perf: tuple[subprocess.Popen, str]) -> float:
    proc, path = perf
    proc.send_signal(signal.SIGINT)
    proc.wait()
    try:
        with open(path) as f:
            for line in f:
                value = line.split(",")[0]
                if "sys_enter_futex" in line and value.isdigit():
                    return int(value)
    finally:
        os.unlink(path)
    return float("nan")


def first_chunk(port: int, request: bytes) -> tuple[float, float]:
    """(time to the first byte, time to the first whole SSE event) of one streamed answer,
    in ms, on a new connection; the rest of the stream is read to its end."""
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        t0 = time.perf_counter()
        s.sendall(request)
        ttfb = ttfc = None
        while True:
            data = s.recv(65536)
            now = time.perf_counter()
            if not data:
                break
            if ttfb is None:
                ttfb = now - t0
            buf += data
            if ttfc is None:
                end = buf.find(b"\r\n\r\n")
                if end >= 0 and b"\n\n" in buf[end + 4:]:
                    ttfc = now - t0
            if buf.endswith(b"\r\n0\r\n\r\n"):
                break
        if ttfc is None or not buf.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"no stream: {buf[:80]!r}")
        return ttfb * 1e3, ttfc * 1e3
    finally:
        s.close()


def stream_request(port: int, path: str, chunks: int = 5, gap: float = 0.005) -> bytes:
    """A GET of the backend's /stream, or a streamed chat completion (POST)."""
    auth = "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())
    if path.endswith("/stream"):
        return (f"GET {path}?n={chunks}&gap={gap} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"{auth}\r\n").encode()
    body = json.dumps({"model": "fast", "stream": True, "n": chunks, "gap": gap,
                       "messages": [{"role": "user", "content": "hi"}]},
                      separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n{auth}\r\n").encode() + body


def counted_load(port: int, path: str, n: int) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n):
        c.request("POST", path, body=SMALL, headers={"Content-Type": "application/json", **AUTH})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
    c.close()


def stream_run(port: int, path: str, n: int = 200, gap: float = 0.002) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port)
    t0 = time.perf_counter()
    c.request("GET", f"{path}?n={n}&gap={gap}", headers=AUTH)
    r = c.getresponse()
    transit = []
    ttfb = None
    buf = b""
    while True:
        data = r.read1(65536)
        now = time.monotonic_ns()
        if not data:
            break
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        buf += data
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            transit.append((now - int(ev[6:])) / 1e6)
    c.close()
    return {"ttfb_ms": (ttfb or 0) * 1e3, "transit_p50_ms": pct(transit, 0.5),
            "transit_p99_ms": pct(transit, 0.99), "chunks": len(transit)}


def upload(port: int, path: str, size: int, pid: int | None) -> dict:
    boundary = "benchboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nfast\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = os.urandom(1 << 20)
    total = len(head) + size + len(tail)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set() and pid:
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.putrequest("POST", path)
    c.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    c.putheader("Content-Length", str(total))
    for k, v in AUTH.items():
        c.putheader(k, v)
    c.endheaders()
    t0 = time.monotonic_ns()
    c.send(head)
    left = size
    while left:
        piece = block[:min(left, len(block))]
        c.send(piece)
        left -= len(piece)
    c.send(tail)
    r = c.getresponse()
    res = json.loads(r.read())
    done.set()
    sampler.join()
    c.close()
    return {"first_byte_ms": (res["first_ns"] - t0) / 1e6, "bytes": res["bytes"],
            "peak_rss_kb": peak[0]}


def swap_overhead(port: int, delay: float, rounds: int = 6) -> dict:
    times = []
    for i in range(rounds):
        m = "swap-a" if i % 2 == 0 else "swap-b"
        c = http.client.HTTPConnection("127.0.0.1", port)
        t0 = time.perf_counter()
        c.request("POST", "/v1/embeddings", body=json.dumps({"model": m, "input": "x"}),
                  headers={"Content-Type": "application/json", **AUTH})
        r = c.getresponse()
        r.read()
        times.append(time.perf_counter() - t0)
        c.close()
        if r.status != 200:
            raise RuntimeError(f"swap request status {r.status}")
    over = [t - delay for t in times[1:]]
    return {"overhead_ms_median": statistics.median(over) * 1e3,
            "overhead_ms_max": max(over) * 1e3}


# ---------------------------------------------------------------------------------------------
# the proxies under test

CONFIG = """
healthCheckTimeout: 30
startPort: {start_port}
{api_keys}models:
  fast:
    cmd: {python} {me} --backend --port ${{PORT}}
    concurrencyLimit: 64
    ttl: 300  # as most configs have one
  swap-a:
    cmd: {python} {me} --backend --port ${{PORT}} --health-delay {swap_delay}
  swap-b:
    cmd: {python} {me} --backend --port ${{PORT}} --health-delay {swap_delay}
groups:
  fastgroup:
    swap: false
    exclusive: false
    members: [fast]
  swappers:
    swap: true
    exclusive: false
    members: [swap-a, swap-b]
"""
SWAP_DELAY = 0.5


class Proxy:
    """``python -m llamaswap`` from the checkout ``tree`` on a free port, optionally inside
    this script's profiling wrapper (``--wrap-proxy``)."""

    def __init__(self, name: str, tree: str, tmp: str, api_key: str,
                 wrap: list[str] | None = None):
        self.name, self.tree = name, tree
        cfg = os.path.join(tmp, f"config-{name}.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(start_port=free_port_block(3), api_keys=API_KEYS[api_key],
                                  python=sys.executable, me=os.path.abspath(__file__),
                                  swap_delay=SWAP_DELAY))
        self.port = free_port()
        args = ["-config", cfg, "-listen", f"127.0.0.1:{self.port}"]
        cmd = ([sys.executable, os.path.abspath(__file__), "--wrap-proxy", *wrap, "--", *args]
               if wrap is not None else [sys.executable, "-m", "llamaswap", *args])
        # this tree's llamaswap, whatever is installed; PyYAML and gjson from the .pyz where
        # this Python lacks them (a machine without pip: carry dist/ there)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, *_bundled_deps()]))
        self.log_path = os.path.join(tmp, f"proxy-{name}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        """The end of the proxy's log, without the access log lines."""
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return "\n".join([line for line in text.splitlines()
                          if "] Request " not in line][-lines:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _bundled_deps() -> list[str]:
    """dist/llama-swap.pyz (its root holds yaml/ and gjson/) when this Python cannot import
    PyYAML or gjson, else nothing."""
    import importlib.util
    if importlib.util.find_spec("yaml") and importlib.util.find_spec("gjson"):
        return []
    pyz = os.path.join(ROOT, "dist", "llama-swap.pyz")
    return [pyz] if os.path.exists(pyz) else []


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def measure(args, trees: list[tuple[str, str]], clients: list[int]) -> int:
    direct_port = free_port()
    direct = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--backend", "--port",
                               str(direct_port)])
    tmp = tempfile.mkdtemp(prefix="proxybench-")
    proxies = [Proxy(name, tree, tmp, args.api_key) for name, tree in trees]
    results: dict = {"trees": dict(trees), "clients": clients, "rounds": args.rounds}
    per: dict = {p.name: {} for p in proxies}
    try:
        wait_http(direct_port, "/health")
        for p in proxies:
            wait_http(p.port, "/health")
            per[p.name]["rss_idle_mb"] = rss_kb(p.pid) / 1024
            # also the warm-up: loads the model, opens pooled connections
            counted_load(p.port, "/v1/embeddings", 2000)
            per[p.name]["rss_after_2000_mb"] = rss_kb(p.pid) / 1024
        small: dict = {c: {"direct": [], **{p.name: [] for p in proxies}} for c in clients}
        direct_req = small_request(direct_port)
        for r in range(args.rounds):
            order = proxies if r % 2 == 0 else proxies[::-1]
            for c in clients:
                small[c]["direct"].append(closed_loop(direct_port, direct_req, c, args.seconds))
                for p in order:
                    small[c][p.name].append(closed_loop(p.port, small_request(p.port), c,
                                                        args.seconds, pid=p.pid))
        results["small"] = {str(c): v for c, v in small.items()}
        fresh: dict = {p.name: [] for p in proxies}
        for r in range(args.rounds):
            for p in (proxies if r % 2 == 0 else proxies[::-1]):
                fresh[p.name].append(new_connections(p.port, small_request(p.port),
                                                     args.seconds, p.pid))
        results["new_connection"] = fresh
        if not args.quick:
            for p in proxies:
                per[p.name]["rss_after_requests_mb"] = rss_kb(p.pid) / 1024
            streams: dict = {}
            for label, dpath, ppath in (("upstream", "/stream", "/upstream/fast/stream"),
                                        ("chat", "/v1/chat/completions",
                                         "/v1/chat/completions")):
                runs: dict = {"direct": [], **{p.name: [] for p in proxies}}
                for i in range(args.streams):
                    runs["direct"].append(first_chunk(direct_port,
                                                      stream_request(direct_port, dpath)))
                    for p in (proxies if i % 2 == 0 else proxies[::-1]):
                        runs[p.name].append(first_chunk(p.port, stream_request(p.port, ppath)))
                streams[label] = runs
            results["first_chunk"] = streams
            for p in proxies:
                d = stream_run(direct_port, "/stream")
                s = stream_run(p.port, "/upstream/fast/stream")
                per[p.name]["stream"] = {
                    "direct": d, "proxy": s, "added_ttfb_ms": s["ttfb_ms"] - d["ttfb_ms"],
                    "added_transit_p50_ms": s["transit_p50_ms"] - d["transit_p50_ms"],
                    "added_transit_p99_ms": s["transit_p99_ms"] - d["transit_p99_ms"]}
                before = rss_kb(p.pid)
                d = upload(direct_port, "/upload", 50 << 20, None)
                u = upload(p.port, "/v1/audio/transcriptions", 50 << 20, p.pid)
                per[p.name]["upload_50mb"] = {
                    "direct_first_byte_ms": d["first_byte_ms"],
                    "proxy_first_byte_ms": u["first_byte_ms"],
                    "proxy_rss_rise_mb": (u["peak_rss_kb"] - before) / 1024,
                    "bytes_seen_by_backend": u["bytes"]}
                per[p.name]["swap"] = swap_overhead(p.port, SWAP_DELAY)
        results["proxies"] = per
    except Exception:
        for p in proxies:
            print(f"--- the end of proxy {p.name}'s log:\n{p.log_tail()}", file=sys.stderr)
        raise
    finally:
        for p in proxies:
            p.stop()
        direct.kill()
        direct.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(summary(results, [p.name for p in proxies]))
    return 0


def summary(results: dict, names: list[str]) -> str:
    """The figures per proxy (medians over the rounds) and, with two, their ratio."""
    lines = [f"proxy vs direct, same backend, this machine ({results['rounds']} round(s); "
             f"CPU: the proxy process, user + system, per request):"]
    ab = len(names) == 2
    for c, runs in results["small"].items():
        d_rps = _median([x["rps"] for x in runs["direct"]])
        d_p50 = _median([x["p50_ms"] for x in runs["direct"]])
        lines.append(f"  {c:>2} client(s), direct {d_rps:.0f} req/s:")
        cpu = {}
        for name in names:
            xs = runs[name]
            cpu[name] = _median([x["cpu_us_per_req"] for x in xs])
            rps = _median([x["rps"] for x in xs])
            futex = (f"{_median([x['futex_per_req'] for x in xs]):.1f} futex/req, "
                     if "futex_per_req" in xs[0] else "")
            lines.append(
                f"     {name:>6}: CPU {cpu[name]:.0f} us/req "
                f"({', '.join('%.0f' % x['cpu_us_per_req'] for x in xs)}), "
                f"{_median([x['switches_per_req'] for x in xs]):.1f} switches/req, {futex}"
                f"{rps:.0f} req/s (ratio {rps / d_rps:.2f}), "
                f"p50 +{_median([x['p50_ms'] for x in xs]) - d_p50:.3f} ms")
        if ab:
            lines.append(f"     CPU {names[0]}/{names[1]}: {cpu[names[0]] / cpu[names[1]]:.2f}")
    fresh = results.get("new_connection")
    if fresh:
        cpu = {name: _median([x["cpu_us_per_req"] for x in fresh[name]]) for name in names}
        parts = [f"{name} CPU {cpu[name]:.0f} us/req "
                 f"({', '.join('%.0f' % x['cpu_us_per_req'] for x in fresh[name])}), "
                 f"{_median([x['switches_per_req'] for x in fresh[name]]):.1f} switches/req, "
                 f"p50 {_median([x['p50_ms'] for x in fresh[name]]):.3f} ms" for name in names]
        ratio = f"; CPU {names[0]}/{names[1]}: {cpu[names[0]] / cpu[names[1]]:.2f}" if ab else ""
        lines.append("  a new connection per request (1 client): " + "; ".join(parts) + ratio)
    for label, runs in results.get("first_chunk", {}).items():
        d_fb = _median([x[0] for x in runs["direct"]])
        d_fc = _median([x[1] for x in runs["direct"]])
        parts = [f"{name} first chunk +{_median([x[1] for x in runs[name]]) - d_fc:.3f} ms "
                 f"(first byte +{_median([x[0] for x in runs[name]]) - d_fb:.3f})"
                 for name in names]
        lines.append(f"  stream ({label}), added over direct (median of "
                     f"{len(runs['direct'])}; direct {d_fc:.3f} ms): " + "; ".join(parts))
    for name in names:
        r = results["proxies"][name]
        if "stream" not in r:
            continue
        st, up, sw = r["stream"], r["upload_50mb"], r["swap"]
        lines.append(
            f"  {name}: 200-chunk stream TTFB +{st['added_ttfb_ms']:.3f} ms, transit p50 "
            f"+{st['added_transit_p50_ms']:.3f} ms, p99 +{st['added_transit_p99_ms']:.3f} ms; "
            f"swap overhead median {sw['overhead_ms_median']:.1f} ms, max "
            f"{sw['overhead_ms_max']:.1f} ms;\n"
            f"     RSS idle {r['rss_idle_mb']:.1f} MB, after 2000 requests "
            f"{r['rss_after_2000_mb']:.1f} MB, after all {r['rss_after_requests_mb']:.1f} MB; "
            f"50 MB upload: backend first byte after {up['proxy_first_byte_ms']:.1f} ms "
            f"(direct {up['direct_first_byte_ms']:.1f} ms), RSS rise "
            f"{up['proxy_rss_rise_mb']:.1f} MB")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# --profile: where the time goes

def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of ``pid`` (schedstat: nanoseconds)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError):
            pass
    return out


def thread_switches(pid: int) -> dict[int, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                out[int(tid)] = sum(int(line.split()[1]) for line in f
                                    if "ctxt_switches:" in line)
        except (OSError, ValueError):
            pass
    return out


def _group(name: str) -> str:
    """A thread's group: 'Thread-12 (process_request_thread)' -> 'process_request_thread'."""
    m = re.fullmatch(r"Thread-\d+ \((.*)\)", name)
    return m.group(1) if m else re.sub(r"-\d+$", "-N", name)


def profile(args) -> int:
    tmp = tempfile.mkdtemp(prefix="proxybench-prof-")
    report: list[str] = [f"llama-swap proxy profile: {args.profile} client(s), small requests, "
                         f"{args.seconds:g} s per run, checkout {ROOT}"]
    try:
        for mode in ("threads", "cprofile", "py-spy"):
            if mode == "py-spy" and not args.py_spy:
                continue
            out = os.path.join(tmp, f"{mode}.out")
            wrap = [out] + (["--cprofile"] if mode == "cprofile" else [])
            proxy = Proxy(mode.replace("-", ""), ROOT, tmp, args.api_key, wrap=wrap)
            spy = None
            try:
                wait_http(proxy.port, "/health")
                counted_load(proxy.port, "/v1/embeddings", 500)
                req = small_request(proxy.port)
                if mode == "py-spy":
                    spy_out = os.path.abspath(args.profile_out) + ".py-spy.svg"
                    spy = subprocess.Popen(
                        ["py-spy", "record", "--pid", str(proxy.pid), "--threads", "--idle",
                         "--rate", "500", "--output", spy_out, "--duration",
                         str(int(args.seconds) + 2)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)  # py-spy attaches
                os.kill(proxy.pid, signal.SIGUSR1)  # threads started from now on are profiled
                w0 = time.monotonic()
                cpu0, sw0 = thread_cpu(proxy.pid), thread_switches(proxy.pid)
                res = closed_loop(proxy.port, req, args.profile, args.seconds, pid=proxy.pid)
                cpu1, sw1 = thread_cpu(proxy.pid), thread_switches(proxy.pid)
                if spy is not None:
                    spy.wait()
                    report.append(f"\n== py-spy flame graph: {spy_out}")
                    continue
            finally:
                proxy.stop()
            with open(out + ".threads.json") as f:
                names = {int(k): v for k, v in json.load(f).items()}
            n = res["n"]
            if mode == "threads":
                groups: dict[str, list[float]] = {}
                for tid, (name, ended, end_cpu, end_sw) in names.items():
                    if ended is not None and ended < w0:
                        continue  # a warm-up connection's thread
                    start, stop = cpu0.get(tid, 0.0), cpu1.get(tid, end_cpu)
                    s_start, s_stop = sw0.get(tid, 0), sw1.get(tid, end_sw)
                    if stop is None:
                        continue
                    g = groups.setdefault(_group(name), [0.0, 0, 0])
                    g[0] += stop - start
                    g[1] += (s_stop or 0) - s_start
                    g[2] += 1
                total = sum(g[0] for g in groups.values())
                report.append(
                    f"\n== CPU per request by thread group (no profiler; {n} requests, "
                    f"{res['rps']:.0f} req/s, process {res['cpu_us_per_req']:.0f} us/req, "
                    f"{res['switches_per_req']:.1f} switches/req)")
                report.append(f"{'thread group':<32} {'threads':>7} {'us/req':>8} "
                              f"{'share':>6} {'switches/req':>13}")
                for name, (cpu, sw, count) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
                    report.append(f"{name:<32} {count:>7} {cpu / n * 1e6:>8.1f} "
                                  f"{cpu / total:>6.1%} {sw / n:>13.2f}")
            else:
                report.append(f"\n== cProfile of the threads started for the run (CPU-time "
                              f"clock; {n} requests, {res['rps']:.0f} req/s under the "
                              f"profiler; times are inflated by it, compare shares):")
                with open(out + ".txt") as f:
                    report.append(f.read())
                shutil.copy(out + ".prof", os.path.abspath(args.profile_out) + ".prof")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(report)
    with open(args.profile_out, "w") as f:
        f.write(text + "\n")
    print(text[:6000])
    print(f"\nwritten to {args.profile_out} (pstats data: {args.profile_out}.prof)")
    return 0


def wrapped_proxy(argv: list[str]) -> int:
    """``--wrap-proxy OUT [--cprofile] -- <llamaswap flags>``: run the proxy in this
    process, recording each thread's name, and its end (CLOCK_MONOTONIC), CPU and context
    switches when it ends; with ``--cprofile``, each thread started after a SIGUSR1 (and
    each connection's thread that serves a connection after it) gets a cProfile on a
    CPU-time clock. At exit write ``OUT.threads.json`` (native thread id ->
    [name, end, cpu, switches], None while alive) and the merged profile (``OUT.prof``,
    ``OUT.txt``)."""
    import cProfile
    import pstats
    import runpy

    sep = argv.index("--")
    out, use_cprofile, proxy_args = argv[0], "--cprofile" in argv[1:sep], argv[sep + 1:]
    lock = threading.Lock()
    threads: dict[int, list] = {}
    profiles: list[cProfile.Profile] = []
    inner_run = threading.Thread.run

    def switches() -> int:
        with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
            return sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)

    armed = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: armed.set())

    local = threading.local()

    def start_profile() -> None:
        """A cProfile for this thread from now on, once armed (each thread has one at most)."""
        if use_cprofile and armed.is_set() and getattr(local, "prof", None) is None:
            local.prof = prof = cProfile.Profile(time.thread_time)
            with lock:
                profiles.append(prof)
            prof.enable()

    def run(self: threading.Thread) -> None:
        with lock:
            threads[threading.get_native_id()] = [self.name, None, None, None]
        start_profile()
        try:
            inner_run(self)
        finally:
            prof = getattr(local, "prof", None)
            if prof is not None:
                prof.disable()
            with lock:
                threads[threading.get_native_id()][1:] = [time.monotonic(), time.thread_time(),
                                                          switches()]

    threading.Thread.run = run  # type: ignore[method-assign]
    try:  # a connection's thread may have started before the SIGUSR1 (it serves many)
        from llamaswap.http.server import ProxyServer
        serve_connection = ProxyServer.process_request_thread

        def profiled_connection(self: Any, *args: Any) -> None:
            start_profile()
            serve_connection(self, *args)

        ProxyServer.process_request_thread = profiled_connection  # type: ignore[method-assign]
    except (ImportError, AttributeError):
        pass
    threads[threading.get_native_id()] = ["MainThread", None, None, None]
    sys.argv = ["llamaswap", *proxy_args]
    try:
        runpy.run_module("llamaswap", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        with lock:
            with open(out + ".threads.json", "w") as f:
                json.dump(threads, f)
            if profiles:
                class Snapshot:  # pstats takes its stats without disabling other threads'
                    def __init__(self, prof: cProfile.Profile):
                        prof.snapshot_stats()
                        self.stats = prof.stats

                    def create_stats(self) -> None:
                        pass

                total = pstats.Stats(Snapshot(profiles[0]))
                for prof in profiles[1:]:
                    total.add(pstats.Stats(Snapshot(prof)))
                total.dump_stats(out + ".prof")
                with open(out + ".txt", "w") as f:
                    total.stream = f
                    total.sort_stats("tottime").print_stats(45)
                    total.sort_stats("cumulative").print_stats(30)
    return 0


# ---------------------------------------------------------------------------------------------

def main() -> int:
    if sys.argv[1:2] == ["--wrap-proxy"]:
        return wrapped_proxy(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", action="store_true")
    ap.add_argument("--port", type=int)
    ap.add_argument("--health-delay", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=3.0, help="per small-request run")
    ap.add_argument("--clients", default="1,4,16,64",
                    help="client counts for the small requests (default 1,4,16,64)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of every small-request run (default 1, 3 with --against)")
    ap.add_argument("--streams", type=int, default=30,
                    help="short streams per path for the time to first chunk")
    ap.add_argument("--quick", action="store_true", help="only the small-request figures")
    ap.add_argument("--against", metavar="DIR",
                    help="another checkout whose proxy is measured beside this one (A/B)")
    ap.add_argument("--json", metavar="FILE", help="write every figure there as JSON")
    ap.add_argument("--futex", action="store_true",
                    help="also count the proxy's futex calls per request (GIL and lock "
                         "hand-offs) with Linux perf; needs tracepoint access (root)")
    ap.add_argument("--profile", type=int, metavar="N",
                    help="write where the proxy's time goes with N clients (see the docstring)")
    ap.add_argument("--profile-out", default=None, metavar="FILE")
    ap.add_argument("--py-spy", action="store_true",
                    help="with --profile: also a py-spy flame graph (py-spy on PATH)")
    ap.add_argument("--api-key", choices=sorted(API_KEYS), default="none",
                    help="requests carry a key: a plain apiKeys string, or a scoped object key "
                         "(models patterns and maxInFlight)")
    args = ap.parse_args()
    if args.api_key != "none":
        AUTH["Authorization"] = f"Bearer sk-bench-{args.api_key}"
    global FUTEX
    FUTEX = args.futex
    if args.backend:
        backend_main(args.port, args.health_delay)
        return 0
    if args.profile:
        args.profile_out = args.profile_out or f"proxy-profile-c{args.profile}.txt"
        return profile(args)
    trees = [("this", ROOT)]
    if args.against:
        trees.append(("other", os.path.abspath(args.against)))
    if args.rounds is None:
        args.rounds = 3 if args.against else 1
    return measure(args, trees, [int(c) for c in args.clients.split(",")])


if __name__ == "__main__":
    sys.exit(main())
