#!/bin/sh
# GPU check on a real NVIDIA machine: one GPU, its nvidia-smi and driver, Python 3; no
# compiler and no pip packages needed. Run from the repository root; about a minute.
#
#   python3 build_zipapp.py        # beforehand, where pip works: dist/llama-swap.pyz bundles
#                                  # PyYAML and gjson (carry dist/ to the GPU machine)
#   sh benchmarks/gpu_check.sh     # exit 0: every check passed; non-zero: a mismatch
#
# Each part is a function that prints PASS/FAIL lines and sets FAILED on a mismatch;
# teammates append their part below and call it at the end.
# GPU_CHECK_FAKE=1 runs the same checks on the fake nvidia-smi (llamaswap/demo/
# fake_nvidia_smi.py) with pretend allocations: a dry run on a machine without a GPU.

set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
FAILED=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

if [ -f dist/llama-swap.pyz ]; then
    LLAMA_SWAP="$PY $ROOT/dist/llama-swap.pyz"
else
    LLAMA_SWAP="$PY -m llamaswap"   # needs PyYAML and gjson importable
fi

fail() { echo "FAIL: $*"; FAILED=1; }

free_port() {
    $PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

# ---- i13-memory: memory-aware swapping measures what backends really allocate -------------
# Demo backends allocate GPU memory with cuMemAlloc (ctypes on libcuda.so.1): 2, 3 and 1 GiB.
# The proxy runs with a memory: section (gpu0: auto). From GET /api/memory it checks:
#  [pid]  the real nvidia-smi's compute processes are attributed to each model by PID and
#         each measured need is its allocation plus its CUDA context (under 1 GiB more);
#         once measured, two and three stay resident together; three sleeps when four (its
#         swap-group mate) loads, and asleep it holds under 1 GiB (the allocation is freed);
#         a request wakes it;
#  [rise] with an nvidia-smi whose PIDs match nothing (a container without the host's PID
#         namespace) each need is the rise in memory.used, within the same bounds;
#  and that no GPU process is left behind.
memory_check() {
    echo "== memory: GPU memory measured by PID and by used-rise"
    CUDA="--cuda"
    if [ "${GPU_CHECK_FAKE:-0}" = 1 ]; then
        mkdir -p "$WORK/fakebin" "$WORK/fakegpu"
        $PY -c "from llamaswap.demo import fake_nvidia_smi as f; f.setup('$WORK/fakegpu', [{'total': 80 << 30, 'base': 400 << 20}]); f.install('$WORK/fakebin', '$WORK/fakegpu')" \
            || { fail "fake nvidia-smi setup"; return; }
        PATH="$WORK/fakebin:$PATH"; export PATH
        LLAMASWAP_FAKE_GPU_DIR="$WORK/fakegpu"; export LLAMASWAP_FAKE_GPU_DIR
        CUDA=""
    fi
    REAL_SMI=$(command -v nvidia-smi) || { fail "nvidia-smi not found"; return; }
    nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader \
        || { fail "nvidia-smi does not answer"; return; }
    mkdir -p "$WORK/foreign"   # nvidia-smi as seen from a container: foreign PIDs
    cat > "$WORK/foreign/nvidia-smi" <<EOF
#!/bin/sh
case "\$*" in
  *query-compute-apps*) "$REAL_SMI" "\$@" | awk -F', *' 'NF == 3 { print \$1 + 3000000 ", " \$2 ", " \$3; next } { print }' ;;
  *) exec "$REAL_SMI" "\$@" ;;
esac
EOF
    chmod +x "$WORK/foreign/nvidia-smi"
    for MODE in pid rise; do
        PORT=$(free_port)
        CONFIG="$WORK/memory-$MODE.yaml"
        BACKEND="$LLAMA_SWAP demo-backend --port \${PORT} --quiet $CUDA"
        cat > "$CONFIG" <<EOF
healthCheckTimeout: 120
memory:
  devices: {gpu0: auto}
  headroom: 1GiB
  every: 1s
models:
  two:
    cmd: $BACKEND --model-id two --gpu-memory 2GiB
  three:
    cmd: $BACKEND --model-id three --gpu-memory 3GiB
    sleep: "POST /sleep?level=1"
    wake: "POST /wake_up"
  four:
    cmd: $BACKEND --model-id four --gpu-memory 1GiB
groups:
  pair: {swap: true, exclusive: false, members: [three, four]}
EOF
        if [ "$MODE" = rise ]; then SMI_PATH="$WORK/foreign:$PATH"; else SMI_PATH="$PATH"; fi
        PATH="$SMI_PATH" $LLAMA_SWAP -config "$CONFIG" -listen "127.0.0.1:$PORT" \
            > "$WORK/proxy-$MODE.log" 2>&1 &
        PROXY_PID=$!
        $PY - "$PORT" "$MODE" <<'EOF' || FAILED=1
import json, sys, time, urllib.request
port, mode = int(sys.argv[1]), sys.argv[2]
base, GiB = f"http://127.0.0.1:{port}", 1 << 30
ok = True

def check(cond, text):
    global ok
    print(("PASS: " if cond else "FAIL: ") + f"[{mode}] " + text)
    ok = ok and bool(cond)

def memory():
    with urllib.request.urlopen(base + "/api/memory", timeout=30) as r:
        return json.loads(r.read())

def chat(model):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=180) as r:
        return r.status

def until(what, fn, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)  # polling another process
    print(f"FAIL: [{mode}] timed out waiting for {what}")
    try:
        print(json.dumps(memory(), indent=1))
    except OSError:
        pass
    sys.exit(1)

until("the proxy", lambda: urllib.request.urlopen(base + "/health", timeout=2).status == 200)
budget = memory()["devices"]["gpu0"]["budget"]
check(budget > 8 * GiB, f"gpu0: auto read a budget of {budget / GiB:.1f} GiB")

def measured(model):
    entry = memory()["models"][model]
    return entry if entry["source"]["gpu0"] == "measured" else None

for model, alloc in (("two", 2), ("three", 3)):
    check(chat(model) == 200, f"{model} answered")
    entry = until(f"{model} measured", lambda: measured(model))
    need, how = entry["need"]["gpu0"], entry["method"]["gpu0"]
    check(how == mode, f"{model} measured by {how}")
    check(alloc * GiB <= need < (alloc + 1) * GiB,
          f"{model} needs {need / GiB:.2f} GiB for {alloc} GiB allocated")
check(chat("two") == 200, "two answered again")
state = memory()["models"]
check(state["two"]["state"] == "ready" and state["three"]["state"] == "ready",
      "two and three resident together once measured")
if mode == "pid":
    check(chat("four") == 200, "four answered (three goes to sleep)")
    asleep = until("three asleep and measured",
                   lambda: (lambda e: e if e["state"] == "sleeping"
                            and e["used"].get("gpu0") is not None
                            and e["used"]["gpu0"] < GiB else None)(memory()["models"]["three"]))
    check(True, f"three asleep holds {asleep['used']['gpu0'] / GiB:.2f} GiB")
    check(chat("three") == 200, "three woken by a request")
    check(memory()["models"]["three"]["state"] == "ready", "three ready after the wake")
sys.exit(0 if ok else 1)
EOF
        kill "$PROXY_PID" 2>/dev/null
        wait "$PROXY_PID" 2>/dev/null
        if grep -q "Traceback" "$WORK/proxy-$MODE.log"; then
            fail "[$MODE] the proxy log has a traceback:"; cat "$WORK/proxy-$MODE.log"
        fi
    done
    if [ "${GPU_CHECK_FAKE:-0}" != 1 ]; then
        sleep 1
        LEFT=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -c '[0-9]')
        if [ "$LEFT" = 0 ]; then echo "PASS: no GPU process left behind"
        else fail "$LEFT GPU process(es) left behind"; fi
    fi
}

# ---- i12-ops: /api/hardware and /api/performance report what nvidia-smi reports -----------
# The proxy starts with performance.every 5s and no models. GET /api/hardware must list every
# GPU nvidia-smi lists, with its model, memory (MiB x 1 MiB), driver, architecture (Hopper for
# an H100/H200) and power limit; GET /api/performance must have GPU samples within 30 s whose
# name, uuid and memory total match nvidia-smi, with readings in range; SIGTERM exits 0.
hardware_check() {
    echo "== hardware: /api/hardware and /api/performance against nvidia-smi"
    if [ "${GPU_CHECK_FAKE:-0}" = 1 ]; then   # a stand-in that answers these queries
        mkdir -p "$WORK/hwbin"
        cat > "$WORK/hwbin/nvidia-smi" <<'SMI'
#!/bin/sh
case "$1" in
  --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,power.limit)
    echo "0, NVIDIA H100 80GB HBM3, GPU-fake, 00000000:1B:00.0, 81559, 550.54.15, 700.00" ;;
  --query-gpu=index,architecture) echo "0, Hopper" ;;
  --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version)
    echo "0, NVIDIA H100 80GB HBM3, GPU-fake, 00000000:1B:00.0, 81559, 550.54.15" ;;
  --query-gpu=index,name,uuid,memory.total) echo "0, NVIDIA H100 80GB HBM3, GPU-fake, 81559" ;;
  --query-gpu=index,name,uuid,temperature.gpu,utilization.gpu,memory.used,memory.total,fan.speed,power.draw)
    echo "0, NVIDIA H100 80GB HBM3, GPU-fake, 34, 0, 1, 81559, [N/A], 72.51" ;;
  *) exit 2 ;;
esac
SMI
        chmod +x "$WORK/hwbin/nvidia-smi"
        PATH="$WORK/hwbin:$PATH"; export PATH
    fi
    LLAMA_SWAP="$LLAMA_SWAP" $PY - <<'EOF' || FAILED=1
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
EOF
}

memory_check
hardware_check

if [ "$FAILED" = 0 ]; then echo "gpu_check: every check passed"; else echo "gpu_check: FAILED"; fi
exit "$FAILED"
