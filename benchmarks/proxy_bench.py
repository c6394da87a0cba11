"""Proxy overhead benchmark: the same fast backend reached directly and through llama-swap.

Run: ``python benchmarks/proxy_bench.py`` (about a minute). It starts the proxy as a
subprocess (``python -m llamaswap``) with a config whose models are this script's own fast
backend (``--backend`` mode: a raw-socket HTTP/1.1 server that answers small JSON at once,
streams chunks stamped with CLOCK_MONOTONIC so transit can be measured, swallows uploads and
reports when their first byte arrived).

Reported, as absolute numbers and as ratios/deltas against the direct connection:
- small non-streaming requests at concurrency 1 and 16: req/s, p50, p99;
- a 200-chunk stream: time to first byte, added per-chunk transit (p50/p99);
- swap overhead: A/B alternation with backends that turn healthy after a fixed delay;
- proxy RSS idle, after 2000 requests and after all the small requests, and its rise while
  a 50 MB upload passes through, plus the time until the backend sees the upload's first
  byte.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

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
                if target.startswith("/health"):
                    ok = time.monotonic() >= ready_at
                    body = b"ok" if ok else b"loading"
                    conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                                 % (200 if ok else 503, len(body), body))
                elif target.startswith("/stream"):
                    n = int(target.split("n=")[1].split("&")[0])
                    gap = float(target.split("gap=")[1])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    for _ in range(n):
                        data = b"data: %d\n\n" % time.monotonic_ns()
                        conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                        time.sleep(gap)
                    conn.sendall(b"0\r\n\r\n")
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


def small_load(port: int, path: str, concurrency: int, seconds: float) -> dict:
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            c.request("POST", path, body=SMALL, headers={"Content-Type": "application/json", **AUTH})
            r = c.getresponse()
            r.read()
            mine.append(time.perf_counter() - t0)
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
        c.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "n": len(lat)}


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

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", action="store_true")
    ap.add_argument("--port", type=int)
    ap.add_argument("--health-delay", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true", help="only the small-request figures")
    ap.add_argument("--api-key", choices=sorted(API_KEYS), default="none",
                    help="requests carry a key: a plain apiKeys string, or a scoped object key "
                         "(models patterns and maxInFlight)")
    args = ap.parse_args()
    if args.api_key != "none":
        AUTH["Authorization"] = f"Bearer sk-bench-{args.api_key}"
    if args.backend:
        backend_main(args.port, args.health_delay)
        return 0

    me = os.path.abspath(__file__)
    swap_delay = 0.5
    direct_port = free_port()
    direct = subprocess.Popen([sys.executable, me, "--backend", "--port", str(direct_port)])
    tmp = tempfile.mkdtemp(prefix="proxybench-")
    cfg = os.path.join(tmp, "config.yaml")
    with open(cfg, "w") as f:
        f.write(f"""
healthCheckTimeout: 30
startPort: {free_port()}
{API_KEYS[args.api_key]}models:
  fast:
    cmd: {sys.executable} {me} --backend --port ${{PORT}}
    concurrencyLimit: 64
    ttl: 300  # as most configs have one
  swap-a:
    cmd: {sys.executable} {me} --backend --port ${{PORT}} --health-delay {swap_delay}
  swap-b:
    cmd: {sys.executable} {me} --backend --port ${{PORT}} --health-delay {swap_delay}
groups:
  fastgroup:
    swap: false
    exclusive: false
    members: [fast]
  swappers:
    swap: true
    exclusive: false
    members: [swap-a, swap-b]
""")
    proxy_port = free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "llamaswap", "-config", cfg, "-listen",
                              f"127.0.0.1:{proxy_port}"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict = {}
    try:
        wait_http(direct_port, "/health")
        wait_http(proxy_port, "/health")
        results["rss_idle_mb"] = rss_kb(proxy.pid) / 1024
        # also the warm-up: loads the model, opens pooled connections
        counted_load(proxy_port, "/v1/embeddings", 2000)
        results["rss_after_2000_mb"] = rss_kb(proxy.pid) / 1024
        for conc in (1, 16):
            d = small_load(direct_port, "/v1/embeddings", conc, args.seconds)
            cpu0 = cpu_seconds(proxy.pid)
            p = small_load(proxy_port, "/v1/embeddings", conc, args.seconds)
            p["proxy_cpu_us_per_req"] = (cpu_seconds(proxy.pid) - cpu0) / p["n"] * 1e6
            results[f"c{conc}"] = {"direct": d, "proxy": p,
                                   "rps_ratio": p["rps"] / d["rps"],
                                   "added_p50_ms": p["p50_ms"] - d["p50_ms"],
                                   "added_p99_ms": p["p99_ms"] - d["p99_ms"]}
        if args.quick:
            print(json.dumps({k: results[k] for k in ("c1", "c16")}, indent=1))
            return 0
        results["rss_after_requests_mb"] = rss_kb(proxy.pid) / 1024
        results["requests_before_rss"] = (2000 + results["c1"]["proxy"]["n"]
                                          + results["c16"]["proxy"]["n"])
        d = stream_run(direct_port, "/stream")
        p = stream_run(proxy_port, "/upstream/fast/stream")
        results["stream"] = {"direct": d, "proxy": p,
                             "added_ttfb_ms": p["ttfb_ms"] - d["ttfb_ms"],
                             "added_transit_p50_ms": p["transit_p50_ms"] - d["transit_p50_ms"],
                             "added_transit_p99_ms": p["transit_p99_ms"] - d["transit_p99_ms"]}
        before = rss_kb(proxy.pid)
        d = upload(direct_port, "/upload", 50 << 20, None)
        p = upload(proxy_port, "/v1/audio/transcriptions", 50 << 20, proxy.pid)
        results["upload_50mb"] = {"direct_first_byte_ms": d["first_byte_ms"],
                                  "proxy_first_byte_ms": p["first_byte_ms"],
                                  "proxy_rss_rise_mb": (p["peak_rss_kb"] - before) / 1024,
                                  "bytes_seen_by_backend": p["bytes"]}
        results["swap"] = swap_overhead(proxy_port, swap_delay)
    finally:
        proxy.terminate()
        try:
            proxy.wait(30)
        except subprocess.TimeoutExpired:
            proxy.kill()
        direct.kill()
        direct.wait()
    print(json.dumps(results, indent=2))
    c1, c16, st, up, sw = (results["c1"], results["c16"], results["stream"],
                           results["upload_50mb"], results["swap"])
    print(f"""
summary (proxy vs direct, same backend, this machine):
  c=1  : {c1['proxy']['rps']:.0f} req/s vs {c1['direct']['rps']:.0f} (ratio {c1['rps_ratio']:.2f}),
         proxy CPU {c1['proxy']['proxy_cpu_us_per_req']:.0f} us/request,
         p50 +{c1['added_p50_ms']:.3f} ms, p99 +{c1['added_p99_ms']:.3f} ms
  c=16 : {c16['proxy']['rps']:.0f} req/s vs {c16['direct']['rps']:.0f} (ratio {c16['rps_ratio']:.2f}),
         proxy CPU {c16['proxy']['proxy_cpu_us_per_req']:.0f} us/request,
         p50 +{c16['added_p50_ms']:.3f} ms, p99 +{c16['added_p99_ms']:.3f} ms
  stream 200 chunks: TTFB +{st['added_ttfb_ms']:.3f} ms, transit p50 +{st['added_transit_p50_ms']:.3f} ms,
         p99 +{st['added_transit_p99_ms']:.3f} ms
  swap overhead: median {sw['overhead_ms_median']:.1f} ms, max {sw['overhead_ms_max']:.1f} ms
  RSS: idle {results['rss_idle_mb']:.1f} MB, after 2000 requests {results['rss_after_2000_mb']:.1f} MB,
       after {results['requests_before_rss']} requests {results['rss_after_requests_mb']:.1f} MB
  50 MB upload: backend first byte after {up['proxy_first_byte_ms']:.1f} ms
       (direct {up['direct_first_byte_ms']:.1f} ms), proxy RSS rise {up['proxy_rss_rise_mb']:.1f} MB
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
