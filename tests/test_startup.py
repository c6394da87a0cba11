"""What the proxy loads at startup: features load their modules when first used (TLS, the UI,
API keys, backend starts), so a proxy that only answers /health has not loaded them. Start
time and memory themselves are measured by benchmarks/startup.py, not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import ROOT, free_port
from test_cli import Proxy, _get

# extension modules and packages that only some features need
DEFERRED = ("_ssl", "_hashlib", "_sqlite3", "ctypes", "concurrent.futures", "importlib.resources",
            "platform", "difflib")
# their shared objects (and the libraries they map: OpenSSL, SQLite)
EXTENSIONS = {"_ssl", "_hashlib", "_sqlite3", "_ctypes", "libssl", "libcrypto", "libsqlite3"}


def _imported_by_us(importtime: str) -> set[str]:
    """Modules whose first import came from llamaswap (not from site's .pth files)."""
    entries = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        name = line.split("|")[2]
        entries.append(((len(name) - len(name.lstrip())) // 2, name.strip()))
    ours = set()
    # -X importtime prints a module after what it imported, which is indented one step more
    for i, (depth, name) in enumerate(entries):
        chain = [name]
        want = depth - 1
        for d, parent in entries[i + 1:]:
            if d == want:
                chain.append(parent)
                want -= 1
        if any(n.startswith("llamaswap") for n in chain):
            ours.add(name)
    return ours


def test_a_plain_config_loads_no_feature_modules(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        models:
          m:
            cmd: {sys.executable} -m llamaswap.demo.backend --port ${{PORT}}
        """))
    port = free_port()
    proxy = Proxy([sys.executable, "-X", "importtime", "-m", "llamaswap", "-config", str(config),
                   "-listen", f"127.0.0.1:{port}"], cwd=ROOT)
    try:
        proxy.wait_listening()
        assert _get(f"http://127.0.0.1:{port}/health") == 200
        assert _get(f"http://127.0.0.1:{port}/v1/models") == 200
        # what the serving process has loaded by now, however it came to load it (a module
        # deferred by lazy.defer and then used at startup is not nested under our imports)
        mapped = {os.path.basename(line.split()[-1]).split(".")[0]
                  for line in Path(f"/proc/{proxy.proc.pid}/maps").read_text().splitlines()
                  if line.rstrip().endswith(".so") or ".so." in line} if sys.platform == "linux" else set()
    finally:
        out, err = proxy.stop()
    assert proxy.returncode == 0, err
    assert sys.platform != "linux" or "libc" in mapped  # the maps are read
    assert not mapped & EXTENSIONS, sorted(mapped & EXTENSIONS)
    ours = _imported_by_us(err)
    assert "llamaswap.cli" in ours and "http.server" in ours  # the parse sees the imports
    assert not ours & set(DEFERRED), sorted(ours & set(DEFERRED))


def test_deferred_ssl_loads_once_on_first_use_from_any_thread():
    code = textwrap.dedent("""\
        import sys, threading
        from llamaswap import lazy
        lazy.defer("ssl")
        import http.client, ssl
        assert not lazy.loaded("ssl") and "_ssl" not in sys.modules
        contexts, start = [], threading.Barrier(8)
        def use():
            start.wait()
            contexts.append(type(ssl.create_default_context()))
        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        real = sys.modules["ssl"]
        assert lazy.loaded("ssl") and real is not ssl and "_ssl" in sys.modules
        assert set(contexts) == {real.SSLContext}
        assert http.client.ssl.SSLContext is real.SSLContext is ssl.SSLContext
        assert isinstance(http.client.HTTPSConnection("h")._context, real.SSLContext)
        try:
            ssl.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        print("ok")
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
