"""How long a request for another model waits while one model is kept busy, with and
without ``routing.scheduler.settings.fifo.maxWait``.

Two demo models, a and b, in one exclusive group behind the proxy (``python -m llamaswap``).
Four closed-loop clients keep a busy: each sends a request that takes ``--request`` seconds
at the backend, and the next one as soon as it has the answer; they start a quarter of a
request apart, so a is never idle between their requests. One second in, a single request
for b arrives. The run lasts ``--seconds`` (20), once with ``maxWait: 0`` (upstream's
behaviour: b waits until the clients stop) and once with ``maxWait: --max-wait`` (2).

Reported for each run: b's wait (from sending its request to its answer), a's completed
requests per second, and a's throughput lost relative to the run without maxWait. The
target: b's wait <= maxWait + a's request time + b's load time + 100 ms, where a's request
time is the median a request of the run without maxWait and b's load time is measured on
its own first (a cold request for b with nothing else running, minus b's request time).

Run: ``python benchmarks/fairness_bench.py [--seconds 20] [--max-wait 2] [--request 0.5]
[--load-delay 0.5]``. The numbers are wall times on a shared machine: read them against the
bound computed in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import free_port  # noqa: E402

CLIENTS = 4


def demo_model(model_id: str, args: str = "", extra: str = "") -> str:
    """A models: entry for a demo backend on a port that is free now (not ${PORT}: other
    programs on a shared machine may hold the ports from 5800 on)."""
    port = free_port()
    return f"""
  {model_id}:
    cmd: {sys.executable} -m llamaswap.demo.backend --quiet --port {port} --model-id {model_id} {args}
    proxy: http://127.0.0.1:{port}{extra}"""


def config_text(max_wait: float, load_delay: float) -> str:
    return f"""
healthCheckTimeout: 60
routing:
  scheduler:
    settings:
      fifo:
        maxWait: {max_wait}
models:{demo_model("a", f"--load-delay {load_delay}")}{demo_model("b", f"--load-delay {load_delay}")}
"""


def chat(port: int, model: str, sleep: float) -> float:
    """One chat completion through the proxy; its duration in seconds."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "demo": {"sleep": sleep}})
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{model}: {resp.status} {data[:200]!r}")
    finally:
        conn.close()
    return time.monotonic() - started


class Proxy:
    """``python -m llamaswap`` on a free port with the config `text`."""

    def __init__(self, text: str):
        self.dir = tempfile.mkdtemp(prefix="llamaswap-bench-")
        path = os.path.join(self.dir, "config.yaml")
        with open(path, "w") as f:
            f.write(text)
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "llamaswap", "-config", path,
                                      "-listen", f"127.0.0.1:{self.port}"], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.05)  # polling another process's startup
        raise RuntimeError("proxy did not start")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load_time(text: str, model: str, request: float) -> float:
    """`model`'s cold start through a proxy with nothing else running, its request time
    taken off."""
    proxy = Proxy(text)
    try:
        cold = chat(proxy.port, model, request)
        warm = statistics.median(chat(proxy.port, model, request) for _ in range(3))
    finally:
        proxy.close()
    return cold - warm


def run(max_wait: float, seconds: float, request: float, load_delay: float) -> dict:
    proxy = Proxy(config_text(max_wait, load_delay))
    stop = threading.Event()
    a_times: list[float] = []
    b_result: dict = {}
    errors: list[str] = []
    try:
        chat(proxy.port, "a", 0)  # load a

        def client() -> None:
            while not stop.is_set():
                try:
                    a_times.append(chat(proxy.port, "a", request))
                except Exception as exc:  # noqa: BLE001 - reported in the results
                    errors.append(repr(exc))
                    return

        def ask_b() -> None:
            sent = time.monotonic()
            try:
                chat(proxy.port, "b", 0)
                b_result["wait"] = time.monotonic() - sent
                b_result["after_start"] = time.monotonic() - started
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

        started = time.monotonic()
        threads = []
        for _ in range(CLIENTS):
            threads.append(threading.Thread(target=client))
            threads[-1].start()
            time.sleep(request / CLIENTS)  # starting the clients apart (load shape)
        time.sleep(max(0.0, started + 1.0 - time.monotonic()))
        b = threading.Thread(target=ask_b)
        b.start()
        time.sleep(max(0.0, started + seconds - time.monotonic()))  # the run's length
        stop.set()
        ran = time.monotonic() - started
        for t in threads:
            t.join(120)
        b.join(120)
    finally:
        proxy.close()
    return {"max_wait": max_wait, "b_wait_s": b_result.get("wait"),
            "b_served_before_the_clients_stopped": b_result.get("after_start", 1e9) < ran,
            "a_requests": len(a_times), "a_rps": len(a_times) / ran,
            "a_request_median_s": statistics.median(a_times) if a_times else None,
            "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-wait", type=float, default=2.0)
    ap.add_argument("--request", type=float, default=0.5, help="seconds each a request takes")
    ap.add_argument("--load-delay", type=float, default=0.5, help="demo backend load delay")
    args = ap.parse_args()
    b_load = load_time(config_text(0, args.load_delay), "b", args.request)
    unbounded = run(0, args.seconds, args.request, args.load_delay)
    bounded = run(args.max_wait, args.seconds, args.request, args.load_delay)
    a_request = unbounded["a_request_median_s"]
    target = args.max_wait + a_request + b_load + 0.1
    lost = 1 - bounded["a_rps"] / unbounded["a_rps"]
    print(json.dumps({"b_load_s": b_load, "unbounded": unbounded, "bounded": bounded,
                      "target_s": target, "a_throughput_lost": lost}, indent=2))
    print(f"""
summary ({CLIENTS} clients keep a busy with {args.request:g} s requests, b asked for 1 s in, \
{args.seconds:g} s runs):
  maxWait 0: b waited {unbounded['b_wait_s']:.2f} s \
({'served' if unbounded['b_served_before_the_clients_stopped'] else 'only after'} the clients \
stopped), a {unbounded['a_rps']:.2f} req/s
  maxWait {args.max_wait:g}: b waited {bounded['b_wait_s']:.2f} s, a {bounded['a_rps']:.2f} req/s \
({lost:.1%} of a's throughput lost)
  target: b's wait <= maxWait {args.max_wait:g} + a's request {a_request:.2f} + b's load \
{b_load:.2f} + 0.1 = {target:.2f} s: {'met' if bounded['b_wait_s'] <= target else 'MISSED'}""")
    return 0 if bounded["b_wait_s"] <= target and not (unbounded["errors"] or bounded["errors"]) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
