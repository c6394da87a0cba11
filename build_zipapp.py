#!/usr/bin/env python3
"""Build dist/llama-swap.pyz: one file that runs on Python 3.10+ with nothing installed.

The archive holds the llamaswap package, the pure-Python parts of PyYAML (lib/yaml from the
sdist; no compiled extension, PyYAML falls back to its Python parser) and gjson-py, their
licence texts under licenses/, and a __main__.py. The dependencies are downloaded once with
pip into build/zipapp-deps/ and checked against pinned hashes, so later builds work offline;
with no network and no cache, the installed copies of the same versions are used instead.
Entries are sorted and carry a fixed timestamp, so the same tree gives the same bytes.

Usage: python3 build_zipapp.py [--output PATH] [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
PYYAML = ("pyyaml", "6.0.3", "pyyaml-6.0.3.tar.gz",
          "d76623373421df22fb4cf8817020cbb7ef15c725b9d5e45f17e189bfc384190f")
GJSON = ("gjson", "1.2.0", "gjson-1.2.0-py3-none-any.whl",
         "c85bf59da57f2b992dc62dc15ca2c128fb4f58523763a8644df863a6d3d5f0c6")
SKIP_DIRS = {"__pycache__"}
COMPILED = (".so", ".pyd", ".dll", ".dylib", ".c", ".h", ".pyx", ".pxd", ".pyc")

MAIN = '''\
import sys

if sys.version_info < (3, 10):
    sys.exit("llama-swap needs Python 3.10 or newer; this is " + sys.version.split()[0])

from llamaswap.cli import main

sys.exit(main())
'''

LICENSES_README = '''\
Licences of what this archive contains

llamaswap/   llama-swap for Python, MIT licence: llama-swap-LICENSE
yaml/        PyYAML {pyyaml}, MIT licence: PyYAML-LICENSE
             (https://github.com/yaml/pyyaml; pure-Python part of the sdist, unmodified)
gjson/       gjson-py {gjson}, GNU GPL version 3 or later: gjson-py-LICENSE
             (https://github.com/volans-/gjson-py; from the py3-none-any wheel, unmodified)
'''


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(spec: tuple[str, str, str, str], cache: Path, binary: bool) -> Path | None:
    """The pinned distribution file from the cache, downloading it with pip if missing."""
    name, version, filename, digest = spec
    target = cache / filename
    if target.exists() and sha256(target) == digest:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", *kind, f"{name}=={version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / filename
        if result.returncode != 0 or not got.exists():
            print(f"build_zipapp: could not download {name}=={version}: "
                  f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        if sha256(got) != digest:
            raise SystemExit(f"build_zipapp: {filename} does not match its pinned sha256")
        os.replace(got, target)  # atomic: concurrent builds share the cache safely
    return target


def pyyaml_files(cache: Path) -> tuple[dict[str, bytes], bytes]:
    """(archive name -> content for the yaml package, licence text)."""
    sdist = fetch(PYYAML, cache, binary=False)
    files: dict[str, bytes] = {}
    licence = b""
    if sdist is not None:
        prefix = f"pyyaml-{PYYAML[1]}/"
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                if member.name == prefix + "LICENSE":
                    licence = tar.extractfile(member).read()
                elif member.name.startswith(prefix + "lib/yaml/") and member.name.endswith(".py"):
                    files["yaml/" + member.name[len(prefix + "lib/yaml/"):]] = \
                        tar.extractfile(member).read()
        if not licence:
            raise SystemExit("build_zipapp: the PyYAML sdist has no LICENSE")
        return files, licence
    return installed_files("PyYAML", PYYAML[1], "yaml")


def gjson_files(cache: Path) -> tuple[dict[str, bytes], bytes]:
    wheel = fetch(GJSON, cache, binary=True)
    files: dict[str, bytes] = {}
    licence = b""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as whl:
            for name in whl.namelist():
                if name.startswith("gjson/") and not name.endswith("/"):
                    files[name] = whl.read(name)
                elif re.match(r"gjson-[^/]+\.dist-info/(licenses/)?(LICENSE|COPYING)", name):
                    licence = whl.read(name)
        return files, licence
    return installed_files("gjson", GJSON[1], "gjson")


def installed_files(dist_name: str, version: str, package: str) -> tuple[dict[str, bytes], bytes]:
    """Offline fallback: the same version's pure-Python files from this Python's site-packages."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"build_zipapp: {dist_name} {version} is neither downloadable nor installed")
    if dist.version != version:
        raise SystemExit(f"build_zipapp: installed {dist_name} is {dist.version}, need {version}")
    files, licence = {}, b""
    for rel in dist.files or ():
        parts = Path(str(rel)).parts
        if parts[0] == package and not rel.name.endswith(COMPILED) and "__pycache__" not in parts:
            files["/".join(parts)] = Path(dist.locate_file(rel)).read_bytes()
        elif parts[0].endswith(".dist-info") and re.match(r"(LICEN[CS]E|COPYING)", rel.name):
            licence = Path(dist.locate_file(rel)).read_bytes()
    if not licence:
        raise SystemExit(f"build_zipapp: no licence text found for installed {dist_name}")
    return files, licence


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def stamp_version(init_py: bytes) -> bytes:
    """Record the commit and its date (not the build time: builds stay reproducible)."""
    commit = git("rev-parse", "--short=8", "HEAD")
    if not commit:
        return init_py
    if git("status", "--porcelain", "--", "llamaswap"):
        commit += "-dirty"
    date = git("log", "-1", "--format=%cI", "HEAD") or "unknown"
    text = init_py.decode()
    text = re.sub(r'^COMMIT = .*$', f'COMMIT = "{commit}"', text, count=1, flags=re.M)
    text = re.sub(r'^BUILD_DATE = .*$', f'BUILD_DATE = "{date}"', text, count=1, flags=re.M)
    return text.encode()


def package_files() -> dict[str, bytes]:
    files = {}
    for path in sorted((ROOT / "llamaswap").rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_dir() or SKIP_DIRS & set(rel.parts) or path.name.endswith(COMPILED):
            continue
        files[rel.as_posix()] = path.read_bytes()
    files["llamaswap/__init__.py"] = stamp_version(files["llamaswap/__init__.py"])
    return files


def build(output: Path, cache: Path) -> Path:
    yaml_files, yaml_licence = pyyaml_files(cache)
    gjson_src, gjson_licence = gjson_files(cache)
    if "yaml/__init__.py" not in yaml_files or "gjson/__init__.py" not in gjson_src:
        raise SystemExit("build_zipapp: dependency sources are incomplete")
    if not gjson_licence:
        raise SystemExit("build_zipapp: gjson-py licence text missing from the wheel")
    entries = {"__main__.py": MAIN.encode()}
    entries.update(package_files())
    entries.update(yaml_files)
    entries.update(gjson_src)
    entries["licenses/README.txt"] = LICENSES_README.format(pyyaml=PYYAML[1], gjson=GJSON[1]).encode()
    entries["licenses/llama-swap-LICENSE"] = (ROOT / "LICENSE").read_bytes()
    entries["licenses/PyYAML-LICENSE"] = yaml_licence
    entries["licenses/gjson-py-LICENSE"] = gjson_licence
    compiled = [n for n in entries if n.endswith(COMPILED)]
    if compiled:
        raise SystemExit(f"build_zipapp: compiled files would be archived: {compiled}")

    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, whatever machine builds it
            zf.writestr(info, entries[name], compresslevel=9)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.chmod(0o755)
    os.replace(tmp, output)
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, default=ROOT / "dist" / "llama-swap.pyz")
    p.add_argument("--cache", type=Path, default=ROOT / "build" / "zipapp-deps",
                   help="where downloaded dependency files are kept")
    args = p.parse_args(argv)
    out = build(args.output.resolve(), args.cache.resolve())
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
