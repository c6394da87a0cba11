"""dist/llama-swap.pyz: one file, pure Python, runs on 3.10+ with nothing installed."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT, cmdline, descendants, free_port, wait_until
from test_cli import Proxy, _post_json, needs_server

PYENV = os.environ.get("PYENV_ROOT", "/root/.pyenv")


def _pythons() -> dict[tuple[int, ...], str]:
    """version -> interpreter for every pyenv CPython 3.10 or newer."""
    found = {}
    for path in glob.glob(f"{PYENV}/versions/3.*/bin/python3"):
        m = re.search(r"/versions/(\d+)\.(\d+)\.(\d+)/", path)
        if m and (int(m[1]), int(m[2])) >= (3, 10):
            found[tuple(int(x) for x in m.groups())] = path
    return found


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_zipapp", ROOT / "build_zipapp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _load_build_script()
PYTHONS = _pythons()
OLDEST_NEWEST = sorted({min(PYTHONS), max(PYTHONS)}) if PYTHONS else []


def clean_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH, no user site, an empty HOME: only the archive can supply packages."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8"}


@pytest.fixture(scope="session")
def pyz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zipapp") / "llama-swap.pyz"
    r = subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "--output", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def _build(output: Path, cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "--output", str(output),
                           "--cache", str(cache)], env=env, capture_output=True, text=True,
                          timeout=120)


def _dependency_entries(pyz: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(pyz) as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.startswith("llamaswap/")}


def test_first_build_fetches_only_the_pinned_wheels(pyz, tmp_path):
    """A fresh machine: an empty cache folder and pip's own cache off. Only the two pinned
    wheels are fetched (never an sdist, so no build backend runs), their files are what the
    usual build archives, and a rebuild from the filled folder needs no package index at all."""
    cache = tmp_path / "cache"
    first = _build(tmp_path / "first.pyz", cache, {**os.environ, "PIP_NO_CACHE_DIR": "1"})
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in cache.iterdir()) == sorted([BUILD.PYYAML.filename,
                                                              BUILD.GJSON.filename])
    assert _dependency_entries(tmp_path / "first.pyz") == _dependency_entries(pyz)

    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    offline.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1")
    again = _build(tmp_path / "again.pyz", cache, offline)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.pyz").read_bytes() == (tmp_path / "first.pyz").read_bytes()

    # offline with nothing cached: the build says what it could not get (then falls back to
    # the installed copies, which only serve when they are the pinned versions)
    empty = _build(tmp_path / "none.pyz", tmp_path / "empty", offline)
    assert f"build_zipapp: could not download {BUILD.PYYAML.filename}" in empty.stderr


def test_archive_layout(pyz):
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(pyz, os.X_OK)
    with zipfile.ZipFile(pyz) as zf:
        names = zf.namelist()
        licences = {n: zf.read(n).decode() for n in names if n.startswith("licenses/")}
    assert "__main__.py" in names and "llamaswap/cli.py" in names
    assert "llamaswap/demo/backend.py" in names
    assert "yaml/__init__.py" in names and "gjson/__init__.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc", ".c", ".pyx"))]
    assert not [n for n in names if "__pycache__" in n or n.startswith("_yaml")]
    assert "MIT License" in licences["licenses/llama-swap-LICENSE"]
    assert "Permission is hereby granted" in licences["licenses/PyYAML-LICENSE"]
    assert "GNU GENERAL PUBLIC LICENSE" in licences["licenses/gjson-py-LICENSE"]
    assert names == sorted(names)


def test_build_is_reproducible(pyz, tmp_path):
    """Same sources, same bytes. Built from a snapshot so edits in the checkout can't interfere."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "llamaswap", src / "llamaswap",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("build_zipapp.py", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    builds = []
    for name in ("one.pyz", "two.pyz"):
        subprocess.run([sys.executable, str(src / "build_zipapp.py"), "--output",
                        str(tmp_path / name), "--cache", str(ROOT / "build" / "zipapp-deps")],
                       check=True, capture_output=True, timeout=300)
        builds.append((tmp_path / name).read_bytes())
    assert builds[0] == builds[1]


@pytest.mark.skipif(not PYTHONS, reason=f"no pyenv CPython >= 3.10 under {PYENV}/versions")
@pytest.mark.parametrize("version", OLDEST_NEWEST, ids=lambda v: ".".join(map(str, v)))
def test_version_runs_isolated(pyz, version, tmp_path):
    python = PYTHONS[version]
    r = subprocess.run([python, "-I", str(pyz), "-version"], env=clean_env(tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"version: \S+ \(\S+\), built at \S+\n", r.stdout)
    # the dependencies come from the archive, and PyYAML runs without its C extension
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import yaml, gjson; "
            "print(yaml.__file__, gjson.__file__, yaml.__with_libyaml__, "
            "yaml.safe_load('a: [1, 2]'), gjson.get({'a': {'b': 3}}, 'a.b'))")
    r = subprocess.run([python, "-I", "-c", code, str(pyz)], env=clean_env(tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"{pyz}/yaml/__init__.py", f"{pyz}/gjson/__init__.py", "False",
                                "{'a':", "[1,", "2]}", "3"]


@pytest.mark.skipif(not PYTHONS, reason=f"no pyenv CPython >= 3.10 under {PYENV}/versions")
def test_unknown_flag_from_the_archive(pyz, tmp_path):
    r = subprocess.run([PYTHONS[min(PYTHONS)], "-I", str(pyz), "-nope"], env=clean_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("flag provided but not defined: -nope\nUsage of llama-swap:")


@needs_server
@pytest.mark.skipif(not PYTHONS, reason=f"no pyenv CPython >= 3.10 under {PYENV}/versions")
@pytest.mark.parametrize("version", OLDEST_NEWEST, ids=lambda v: ".".join(map(str, v)))
def test_demo_from_the_archive(pyz, version, tmp_path):
    """-demo inside the .pyz starts its backends as `python <pyz> demo-backend`, on the oldest
    and the newest Python: a swap end to end, then a clean shutdown."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = Proxy([PYTHONS[version], "-I", str(pyz), "-demo", "-listen", f"127.0.0.1:{port}"],
                 env=clean_env(tmp_path), cwd=tmp_path)
    backends: set[int] = set()
    try:
        proc.wait_listening()
        for model in ("demo-fast", "demo-slow"):
            body = _post_json(base + "/v1/chat/completions",
                              {"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert body["model"] == model
        backends = descendants(proc.pid)
        assert any(f"{pyz} demo-backend" in cmdline(p) for p in backends)
    finally:
        out, err = proc.stop()
    assert proc.returncode == 0, err
    assert wait_until(lambda: not (descendants() & backends), timeout=15)


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def _ui_status(argv: list[str], **kwargs) -> int | None:
    port = free_port()
    proc = Proxy([*argv, "-demo", "-listen", f"127.0.0.1:{port}"], **kwargs)
    try:
        proc.wait_listening()
        return _status(f"http://127.0.0.1:{port}/ui/")
    finally:
        proc.stop()


@needs_server
@pytest.mark.skipif(not PYTHONS, reason=f"no pyenv CPython >= 3.10 under {PYENV}/versions")
def test_ui_is_served_from_inside_the_archive(pyz, tmp_path):
    """Package data must be read through the import system, not from a path on disk."""
    from_archive = _ui_status([PYTHONS[max(PYTHONS)], "-I", str(pyz)], env=clean_env(tmp_path),
                              cwd=tmp_path)
    if from_archive != 200:
        from_source = _ui_status([sys.executable, "-m", "llamaswap"], cwd=ROOT)
        if from_source != 200:
            pytest.skip(f"the proxy does not serve /ui/ from the source tree yet ({from_source})")
    assert from_archive == 200


def _version(pyz: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", str(pyz), "-version"],
                          env={**clean_env(tmp_path), **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def _unpacked_name(pyz: Path) -> str:
    with zipfile.ZipFile(pyz) as zf:
        main = zf.read("__main__.py").decode()
    return re.search(r'^BUILD_ID = "([^"]+)"$', main, re.M)[1]


def test_unpacks_once_into_a_private_cache_and_keeps_bytecode(pyz, tmp_path):
    """The archive unpacks itself once per build into ~/.cache/llama-swap/<version>-<hash>/
    (private to the user) and imports from there, so compiled bytecode survives the start;
    later starts reuse that directory as it is."""
    r = _version(pyz, tmp_path)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "home" / ".cache" / "llama-swap"
    unpacked = root / _unpacked_name(pyz)
    assert [p.name for p in root.iterdir()] == [unpacked.name]
    assert unpacked.name.startswith("0.") and oct(unpacked.stat().st_mode & 0o777) == "0o700"
    with zipfile.ZipFile(pyz) as zf:
        assert (unpacked / "llamaswap" / "cli.py").read_bytes() == zf.read("llamaswap/cli.py")
    assert list((unpacked / "llamaswap" / "__pycache__").glob("cli.*.pyc"))
    assert list((unpacked / "yaml" / "__pycache__").glob("scanner.*.pyc"))  # all at once
    assert [p.name for p in unpacked.glob(".compiled-*")] == [f".compiled-{sys.implementation.cache_tag}"]
    inode = unpacked.stat().st_ino
    again = _version(pyz, tmp_path)
    assert again.returncode == 0 and again.stdout == r.stdout
    assert unpacked.stat().st_ino == inode

    # LLAMA_SWAP_CACHE_DIR chooses the place, XDG_CACHE_HOME the base of the default one
    assert _version(pyz, tmp_path, LLAMA_SWAP_CACHE_DIR=str(tmp_path / "c1")).returncode == 0
    assert (tmp_path / "c1" / unpacked.name / "llamaswap" / "cli.py").exists()
    assert _version(pyz, tmp_path, XDG_CACHE_HOME=str(tmp_path / "x")).returncode == 0
    assert (tmp_path / "x" / "llama-swap" / unpacked.name / "llamaswap").is_dir()


def test_concurrent_first_starts_unpack_one_copy(pyz, tmp_path):
    cache = tmp_path / "cache"
    env = {**clean_env(tmp_path), "LLAMA_SWAP_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-I", str(pyz), "-version"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, results
    assert [p.name for p in cache.iterdir()] == [_unpacked_name(pyz)]  # no .unpacking-* left


def test_runs_from_the_archive_when_the_cache_cannot_be_used(pyz, tmp_path):
    """An unwritable place, or a directory under the right name that someone else could have
    written to: the code runs from the archive itself, never from that directory."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = _version(pyz, tmp_path, LLAMA_SWAP_CACHE_DIR=str(blocker / "cache"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("version: ")

    planted = tmp_path / "shared" / _unpacked_name(pyz) / "llamaswap"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise SystemExit('ran planted code')\n")
    os.chmod(planted.parent, 0o777)
    r = _version(pyz, tmp_path, LLAMA_SWAP_CACHE_DIR=str(tmp_path / "shared"))
    assert r.returncode == 0, r.stderr
    assert "planted" not in r.stdout + r.stderr
