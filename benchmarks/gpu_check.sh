#!/usr/bin/env bash
# Checks that need a real GPU, run once by the lead on a machine with one NVIDIA H100 (about a
# minute; well under 3). Every step prints what it checks and PASS or FAIL; the script exits
# non-zero when any step fails. It needs python3 and one way to run llama-swap: the zipapp
# (dist/llama-swap.pyz, or build/ to make it offline), or PyYAML and gjson installed.
# Steps append below, one section each.
set -u
cd "$(dirname "$0")/.."
FAILED=0

if [ -f dist/llama-swap.pyz ]; then
  LLAMA_SWAP="python3 dist/llama-swap.pyz"
elif python3 -c 'import yaml, gjson' 2>/dev/null; then
  LLAMA_SWAP="python3 -m llamaswap"
elif python3 build_zipapp.py >/dev/null 2>&1 && [ -f dist/llama-swap.pyz ]; then
  LLAMA_SWAP="python3 dist/llama-swap.pyz"
else
  echo "FAIL: nothing to run llama-swap with (carry dist/ or build/, or install PyYAML and gjson)"
  exit 1
fi
echo "llama-swap: $LLAMA_SWAP"
export LLAMA_SWAP

# ---- i12: /api/hardware and /api/performance against nvidia-smi ----------------------------
echo
echo "== /api/hardware and /api/performance report the GPUs nvidia-smi reports"
python3 - <<'PY' || FAILED=1
import json, os, shlex, signal, socket, subprocess, sys, tempfile, time, urllib.request

def smi(fields):
    out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

failures = []
def check(what, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(what)

gpus = smi("index,name,uuid,pci.bus_id,memory.total,driver_version")
print(f"nvidia-smi: {len(gpus)} GPU(s): " + "; ".join(g[1] for g in gpus))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
tmp = tempfile.mkdtemp()
cfg = os.path.join(tmp, "config.yaml")
with open(cfg, "w") as f:
    f.write("performance:\n  every: 5s\nmodels: {}\n")
proxy = subprocess.Popen(shlex.split(os.environ["LLAMA_SWAP"]) + ["-config", cfg, "-listen",
                         f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"

def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())

try:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise SystemExit("FAIL the proxy did not start")
            time.sleep(0.2)
    hw = get("/api/hardware")
    acc = [a for a in hw["accelerators"] if a["vendor"] == "NVIDIA"]
    check("/api/hardware lists every NVIDIA GPU", len(acc) == len(gpus), f"{len(acc)} vs {len(gpus)}")
    by_model = sorted(acc, key=lambda a: a["index"])
    for g in gpus:
        match = [a for a in by_model if a["model"] == g[1]]
        a = match[0] if match else None
        check(f"GPU {g[0]} model {g[1]!r}", a is not None, [x["model"] for x in acc])
        if a is None:
            continue
        by_model.remove(a)
        mib = float(g[4])
        check(f"GPU {g[0]} memory {mib:.0f} MiB", a["memory"]["capacity_bytes"] == int(mib * 1024 * 1024)
              and a["memory"]["kind"] == "dedicated", a["memory"])
        check(f"GPU {g[0]} driver {g[5]}", a["driver"] == {"name": "NVIDIA", "version": g[5]}, a["driver"])
        want_arch = "Hopper" if "H100" in g[1] or "H200" in g[1] else None
        check(f"GPU {g[0]} architecture {want_arch or '(any)'}",
              a["architecture"] is not None and (want_arch is None or a["architecture"] == want_arch),
              a["architecture"])
        check(f"GPU {g[0]} power limit", a["power_limit_watts"] is None or a["power_limit_watts"] > 0,
              a["power_limit_watts"])
    check("/api/hardware memory and CPU threads", hw["memory"]["capacity_bytes"] > 0
          and hw["cpu"]["logical_thread_count"] == os.cpu_count(), (hw["memory"], hw["cpu"]))
    deadline = time.monotonic() + 30
    stats = []
    while time.monotonic() < deadline and not stats:
        time.sleep(1)
        stats = get("/api/performance").get("gpu_stats") or []
    check("/api/performance has GPU samples within 30 s", bool(stats))
    latest = {}
    for s in stats:
        latest[s["id"]] = s
    live = smi("index,name,uuid,memory.total")
    for g in live:
        s = latest.get(int(g[0]))
        check(f"/api/performance GPU {g[0]} name, uuid and memory",
              s is not None and (s["name"], s["uuid"], s["mem_total_mb"]) == (g[1], g[2], int(float(g[3]))),
              s)
        if s is not None:
            check(f"/api/performance GPU {g[0]} readings in range",
                  0 <= s["gpu_util_pct"] <= 100 and 0 <= s["mem_used_mb"] <= s["mem_total_mb"]
                  and s["power_draw_w"] > 0 and s["temp_c"] > 0, s)
finally:
    proxy.send_signal(signal.SIGTERM)
    try:
        code = proxy.wait(40)
    except subprocess.TimeoutExpired:
        proxy.kill()
        code = "killed"
    check("the proxy exits 0 on SIGTERM", code == 0, code)
sys.exit(1 if failures else 0)
PY

echo
if [ "$FAILED" -ne 0 ]; then echo "gpu_check: FAILED"; exit 1; fi
echo "gpu_check: all passed"
