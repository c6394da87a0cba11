"""The built-in config behind ``llama-swap -demo``: demo models served by the bundled backend.

The backends run under the same Python as the proxy and from the same code: the package
(``python -m llamaswap.demo.backend``) or, inside the zipapp, the archive itself
(``python llama-swap.pyz demo-backend``), so the demo needs nothing installed.
"""

from __future__ import annotations

import os
import random
import shlex
import socket
import sys

import llamaswap

# (model id, seconds before /health turns 200, description)
DEMO_MODELS = (
    ("demo-fast", 0.5, "loads in half a second"),
    ("demo-slow", 2.0, "takes 2 s to load; swaps with demo-fast"),
    ("demo-embed", 0.5, "stays loaded beside the chat models (persistent group)"),
)
DEMO_ALIAS = ("demo", "demo-fast")  # alias -> model
DEMO_LISTEN = "127.0.0.1:8080"


def backend_command() -> list[str]:
    """argv prefix that starts the demo backend with this interpreter and this copy of the code."""
    if llamaswap.ARCHIVE:
        return [sys.executable, llamaswap.ARCHIVE, "demo-backend"]
    return [sys.executable, "-m", "llamaswap.demo.backend"]


def package_root() -> str:
    """Directory holding the ``llamaswap`` package, for the children's PYTHONPATH."""
    return os.path.dirname(os.path.dirname(os.path.abspath(llamaswap.__file__)))


def free_port_range(count: int, attempts: int = 50) -> int:
    """First of `count` consecutive ports that are free now (``${PORT}`` counts up from it).

    Looked for below the kernel's ephemeral range first: outgoing connections take their
    ports from that range and leave them in TIME_WAIT for a minute, so on a machine that
    has just made thousands of connections, runs of free ports inside it are rare."""
    low, _ = _ephemeral_range()
    pick = random.Random()
    for _ in range(attempts):
        if low - count > _FIRST_UNPRIVILEGED:
            base = pick.randrange(_FIRST_UNPRIVILEGED, low - count)
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                base = s.getsockname()[1]
        if base + count <= 65536 and all(_is_free(base + i) for i in range(count)):
            return base
    raise OSError(f"no {count} consecutive free ports found for the demo backends")


_FIRST_UNPRIVILEGED = 10000  # below it sit many well-known services' ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; elsewhere only a starting guess


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        # as the backends bind (SO_REUSEADDR): a port whose old connections linger in
        # TIME_WAIT is free for them, and a busy machine has thousands of those
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _quote(value: str) -> str:
    """A YAML double-quoted scalar."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def demo_config_text(start_port: int | None = None, command: list[str] | None = None) -> str:
    """YAML of the demo config; a real config file a user could copy and edit."""
    command = backend_command() if command is None else command
    start_port = free_port_range(len(DEMO_MODELS)) if start_port is None else start_port
    prefix = " ".join(shlex.quote(part) for part in command)
    env = ""
    if command[1:2] == ["-m"]:
        # `-m` must find this same package whatever the children's working directory is
        pythonpath = package_root()
        if os.environ.get("PYTHONPATH"):
            pythonpath += os.pathsep + os.environ["PYTHONPATH"]
        env = f"    env: [{_quote('PYTHONPATH=' + pythonpath)}]"
    lines = [
        "# llama-swap -demo: built-in config. Each model is the bundled demo backend, which",
        "# answers like an OpenAI-compatible server and names the model it was started for.",
        f"startPort: {start_port}",
        "healthCheckTimeout: 30",
        "logLevel: info",
        "macros:",
        f"  backend: {_quote(prefix)}",
        "models:",
    ]
    for model_id, delay, description in DEMO_MODELS:
        lines += [
            f"  {model_id}:",
            f"    description: {_quote(description)}",
            f"    cmd: ${{backend}} --port ${{PORT}} --model-id ${{MODEL_ID}} --load-delay {delay}",
            "    proxy: http://127.0.0.1:${PORT}",
            "    ttl: 300",
        ]
        if env:
            lines.append(env)
        if model_id == DEMO_ALIAS[1]:
            lines.append(f"    aliases: [{DEMO_ALIAS[0]}]")
    lines += [
        "groups:",
        "  chat:",
        "    swap: true",
        "    exclusive: false",
        "    members: [demo-fast, demo-slow]",
        "  always-on:",
        "    swap: false",
        "    exclusive: false",
        "    persistent: true",
        "    members: [demo-embed]",
    ]
    return "\n".join(lines) + "\n"


def banner(base_url: str) -> str:
    """What -demo prints before serving: where to look and what to try."""
    chat = ("curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
            "-d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'")
    return "\n".join([
        "",
        "llama-swap demo: three demo models, served by the bundled demo backend (no real model needed).",
        f"  demo-fast   {DEMO_MODELS[0][2]} (alias: {DEMO_ALIAS[0]})",
        f"  demo-slow   {DEMO_MODELS[1][2]}",
        f"  demo-embed  {DEMO_MODELS[2][2]}",
        "",
        "Try:",
        f"  curl -s {base_url}/v1/models",
        "  " + chat.format(url=base_url, model="demo-fast"),
        "  " + chat.format(url=base_url, model="demo-slow") + "   # swaps demo-fast out",
        f"  curl -s {base_url}/v1/embeddings -H 'Content-Type: application/json' "
        "-d '{\"model\":\"demo-embed\",\"input\":\"hello\"}'",
        f"  curl -s {base_url}/running",
        f"  curl -s {base_url}/unload",
        f"  open {base_url}/ui/ in a browser",
        "Press Ctrl-C to stop (the demo backends stop with the proxy).",
        "",
    ])
