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

memory_check

if [ "$FAILED" = 0 ]; then echo "gpu_check: every check passed"; else echo "gpu_check: FAILED"; fi
exit "$FAILED"
