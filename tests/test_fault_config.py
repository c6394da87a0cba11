"""Fault suite, config mutations: a seeded generator breaks valid configs (values of the wrong
type or range, lines deleted, duplicated, re-indented or swapped, keys renamed, tabs and
stray characters, truncation). Every result is refused with a ConfigError that names the file,
or loads and builds an App cleanly; never another exception. A few of each kind go through
the real command line: exit 1 with ``failed to load config: ...`` and no traceback, or a
proxy that starts, answers /health and stops cleanly.

Seeded: a failure names the seed, the case and the mutated text.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
from helpers import free_port, wait_until

from llamaswap.app import App
from llamaswap.config import ConfigError, load_config_text
from llamaswap.ops.events import EventBus
from llamaswap.ops.logs import build_loggers

SEED = 18
ENV = {"HOME": "/home/u", "MODELS": "/models", "API_KEY_1": "sk-1", "API_KEY_2": "sk-2",
       "OPENROUTER_API_KEY": "sk-or", "VAR_NAME": "v"}
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference",
                       "upstream-config.example.yaml")

RICH = textwrap.dedent("""\
    healthCheckTimeout: 60
    logLevel: info
    logToStdout: proxy
    startPort: 10001
    globalTTL: 0
    unloadTimeout: 3
    sendLoadingState: false
    includeAliasesInList: true
    metricsMaxInMemory: 500
    captureBuffer: 1
    apiKeys: ["k1", "k2"]
    macros:
      srv: "serve --port ${PORT}"
      ctx: 4096
    models:
      alpha:
        cmd: |
          ${srv}
          --ctx ${ctx}  # a comment
          --models ${env.MODELS}
        aliases: [a1, a2]
        ttl: 30
        env: ["A=1", "B=two"]
        checkEndpoint: /health
        concurrencyLimit: 4
        filters:
          stripParams: "temperature, top_p"
          setParams:
            top_k: 10
            nested.key: true
        metadata:
          family: test
          sizes: [1, 2]
      beta:
        cmd: serve --port ${PORT} --name beta
        cmdStop: kill ${PID}
        proxy: http://127.0.0.1:${PORT}
        useModelName: served-beta
        unlisted: false
        name: Beta
        description: second model
        sendLoadingState: true
      gamma:
        cmd: serve --port ${PORT}
        macros:
          own: 7
    groups:
      pair:
        swap: true
        exclusive: false
        members: [alpha, beta]
      solo:
        swap: false
        exclusive: false
        persistent: true
        members: [gamma]
    hooks:
      on_startup:
        preload: [gamma]
    peers:
      remote:
        proxy: http://10.0.0.2:8080
        apiKey: secret
        models: [r1, r2]
    """)

MATRIX = textwrap.dedent("""\
    models:
      a:
        cmd: serve --port ${PORT}
      b:
        cmd: serve --port ${PORT}
      c:
        cmd: serve --port ${PORT}
    matrix:
      vars:
        A: a
        B: b
        C: c
      sets:
        pair: "A & B"
        alone: "C"
    """)

VALUES = ["", "0", "-1", "1.5", "1e309", ".nan", "true", "no", "[]", "{}", "null", "~", '"x"',
          "99999999999999999999999", "'${PORT}'", "${env.NOPE}", "${nope}", "${PORT}", "${PID}",
          "!!binary aGk=", "&anchor x", "*anchor", "|", ">", "[a, [b, {c: d}]]", "{a: 1, a: 2}",
          "'unclosed", '"unclosed', "x" * 300, "-", "?", "@x", "`x", "%x", "é ☃", "\t",
          "http://", "ftp://x", "http://[::1", "1:30", "0x1F", "0o17", "2024-01-01", "5s", "-5s"]
STRAY = ["\t", ":", "-", "#", "'", '"', "{", "[", "}", "]", ",", "&", "*", "!", "|", ">", "%",
         "\x00", "\x7f", "\ufeff", "\r", "\n", " ", "${", "}"]


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        lines = text.splitlines(keepends=True) or ["\n"]
        i = rng.randrange(len(lines))
        line = lines[i]
        op = rng.randrange(9)
        if op in (0, 1) and ":" in line:  # a value replaced (twice as likely: the usual mistake)
            key, _, _ = line.partition(":")
            lines[i] = f"{key}: {rng.choice(VALUES)}\n"
        elif op == 2:
            del lines[i]
        elif op == 3:
            lines.insert(i, line)
        elif op == 4:
            shift = rng.choice([-2, -1, 1, 2])
            lines[i] = line[-shift:] if shift < 0 and line.startswith(" " * -shift) else " " * max(shift, 0) + line
        elif op == 5 and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], line
        elif op == 6 and ":" in line:  # a key renamed (a typo, or another case)
            key, sep, rest = line.partition(":")
            name = key.strip()
            if name:
                new = rng.choice([name + "x", name.upper(), name[:-1], name.lower(), "<<"])
                lines[i] = key.replace(name, new, 1) + sep + rest
        elif op == 7:
            at = rng.randrange(len(line) + 1)
            lines[i] = line[:at] + rng.choice(STRAY) + line[at:]
        else:
            text = "".join(lines)
            return text[:rng.randrange(len(text) + 1)]
        text = "".join(lines)
    return text


def check(text: str, where: str) -> bool:
    """True if the config loads (and builds an App); False if refused with a message. Any
    other outcome fails the test."""
    try:
        config = load_config_text(text, "fuzz.yaml", environ=ENV)
    except ConfigError as e:
        message = str(e)
        assert message.startswith("fuzz.yaml") and len(message) > len("fuzz.yaml: "), \
            f"{where}: a refusal must name the file and say why: {message!r}"
        assert "Traceback" not in message, where
        return False
    except Exception as e:  # noqa: BLE001 - the point: anything else is a bug
        pytest.fail(f"{where}: {type(e).__name__}: {e}\n--- text ---\n{text}")
    app = App.build(config, build_loggers("none"), EventBus())
    try:
        assert set(app.processes) == set(config.models), where
    finally:
        app.shutdown(0)
    return True


def bases() -> list[tuple[str, str]]:
    out = [("rich", RICH), ("matrix", MATRIX)]
    if os.path.exists(EXAMPLE):
        with open(EXAMPLE, encoding="utf-8") as f:
            out.append(("upstream example", f.read()))
    return out


def test_bases_load():
    for name, text in bases():
        if name != "upstream example":  # it names binaries and paths from upstream's machine
            assert check(text, name), name


def test_mutated_configs_are_refused_with_a_message_or_load():
    rng = random.Random(SEED)
    outcomes = {True: 0, False: 0}
    all_bases = bases()
    for case in range(700):
        name, base = all_bases[case % len(all_bases)]
        text = mutate(base, rng)
        outcomes[check(text, f"seed {SEED} case {case} ({name})")] += 1
    assert outcomes[True] > 50 and outcomes[False] > 200, outcomes  # both kinds exercised


def _run_cli(text: str, tmp_path, case: int) -> subprocess.CompletedProcess | tuple[int, str]:
    path = tmp_path / f"c{case}.yaml"
    path.write_text(text, encoding="utf-8")
    port = free_port()
    env = {**os.environ, **ENV}
    proc = subprocess.Popen([sys.executable, "-m", "llamaswap", "-config", str(path), "-listen",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    import urllib.request

    def up() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    assert wait_until(up, 30)
    started = proc.poll() is None
    if started:
        proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return (proc.returncode if not started else 0 if proc.returncode == 0 else proc.returncode,
            ("started\n" if started else "") + out)


def test_the_command_line_refuses_or_starts_cleanly(tmp_path):
    """A few mutated configs of each outcome through ``python -m llamaswap``."""
    rng = random.Random(SEED + 1)
    refused = started = 0
    for case in range(400):
        if refused >= 3 and started >= 3:
            break
        text = mutate(RICH, rng)
        try:
            load_config_text(text, "x", environ=ENV)
            ok = True
        except ConfigError:
            ok = False
        if (ok and started >= 3) or (not ok and refused >= 3):
            continue
        code, out = _run_cli(text, tmp_path, case)
        where = f"seed {SEED + 1} case {case}: {out[-2000:]}\n--- text ---\n{text}"
        assert "Traceback" not in out, where
        if ok:
            assert out.startswith("started") and code == 0, where
            started += 1
        else:
            assert code == 1 and "failed to load config: " in out, where
            refused += 1
    assert refused == 3 and started == 3
