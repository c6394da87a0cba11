#!/usr/bin/env python3
"""Build dist/llama-swap.pyz: one file that runs on Python 3.10+ with nothing installed.

The archive holds the llamaswap package, the pure-Python parts of PyYAML and gjson-py, their
licence texts under licenses/, and a __main__.py. The dependencies are pinned wheels (PyYAML's
for one platform, of which only the pure-Python `yaml/` files are taken: no compiled extension,
PyYAML falls back to its Python parser), downloaded once with `pip download --only-binary`
into build/zipapp-deps/ and checked against pinned hashes: no build backend ever runs, so a
first build takes seconds, and later builds work offline. With no network and no cache, the
installed copies of the same versions are used instead. Entries are sorted and carry a fixed
timestamp, so the same tree gives the same bytes.

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
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class Pin(NamedTuple):
    dist: str                  # the distribution's name on PyPI
    version: str
    package: str               # the import package taken from the wheel
    filename: str
    sha256: str
    platform: tuple[str, ...]  # pip's platform selection for a wheel with compiled parts


# PyYAML has no pure-Python wheel; its yaml/*.py files are the same in every platform's wheel
# (and in the sdist), so one platform's wheel is pinned and its extension module left out.
PYYAML = Pin("pyyaml", "6.0.3", "yaml",
             "pyyaml-6.0.3-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64"
             ".manylinux_2_28_x86_64.whl",
             "ba1cc08a7ccde2d2ec775841541641e4548226580ab850948cbfda66a1befcdc",
             ("--platform", "manylinux2014_x86_64", "--python-version", "3.12",
              "--implementation", "cp", "--abi", "cp312"))
GJSON = Pin("gjson", "1.2.0", "gjson", "gjson-1.2.0-py3-none-any.whl",
            "c85bf59da57f2b992dc62dc15ca2c128fb4f58523763a8644df863a6d3d5f0c6", ())
SKIP_DIRS = {"__pycache__"}
COMPILED = (".so", ".pyd", ".dll", ".dylib", ".c", ".h", ".pyx", ".pxd", ".pyc")
LICENCE = re.compile(r"(LICEN[CS]E|COPYING)(\.\w+)?")

# The archive's __main__.py. BUILD_ID is a hash of everything else in the archive.
MAIN = '''\
"""Entry point of llama-swap.pyz.

Python cannot keep compiled bytecode for modules it imports from a zip archive, so every start
would compile every module again. Instead the archive unpacks itself once per build into
$LLAMA_SWAP_CACHE_DIR (default: $XDG_CACHE_HOME/llama-swap or ~/.cache/llama-swap), compiles
it once per Python version (whatever PYTHONDONTWRITEBYTECODE says: the directory is ours) and
imports from there. When that directory cannot be made, or is not a private directory of this
user, the code runs from the archive itself.
"""
import os
import sys

if sys.version_info < (3, 10):
    sys.exit("llama-swap needs Python 3.10 or newer; this is " + sys.version.split()[0])

BUILD_ID = "@BUILD_ID@"


def cache_root():
    explicit = os.environ.get("LLAMA_SWAP_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-swap")


def private_dir(path):
    """True for a directory of this user that nobody else can write to."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (os.path.isdir(path) and st.st_uid == os.getuid() and not st.st_mode & 0o022)


def unpack(archive, target):
    import shutil
    import tempfile
    import zipfile
    parent = os.path.dirname(target)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpacking-", dir=parent)  # mode 0o700
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        os.rename(tmp, target)  # atomic: a directory under that name is always complete
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not private_dir(target):  # else a concurrent start unpacked it first
            raise


def compile_once(target):
    tag = sys.implementation.cache_tag
    if tag is None:
        return
    opt = ".opt-%d" % sys.flags.optimize if sys.flags.optimize else ""
    marker = os.path.join(target, ".compiled-" + tag + opt)
    if not os.path.exists(marker):
        import compileall
        compileall.compile_dir(target, quiet=2)
        open(marker, "wb").close()


def code_location(archive):
    target = os.path.join(cache_root(), BUILD_ID)
    if not os.path.isabs(target):
        return archive  # no home directory to speak of
    try:
        if not private_dir(target):
            unpack(archive, target)
    except Exception:  # read-only or full disk, someone else's directory: stay in the archive
        return archive
    try:
        compile_once(target)
    except OSError:
        pass  # imports compile what they need, as they would anyway
    return target


ARCHIVE = os.path.dirname(os.path.abspath(__file__))
CODE = code_location(ARCHIVE)
if CODE != ARCHIVE:
    sys.path.insert(0, CODE)

import llamaswap  # noqa: E402

llamaswap.ARCHIVE = ARCHIVE
from llamaswap.cli import main  # noqa: E402

sys.exit(main())
'''

LICENSES_README = '''\
Licences of what this archive contains

llamaswap/   llama-swap for Python, MIT licence: llama-swap-LICENSE
yaml/        PyYAML {pyyaml}, MIT licence: PyYAML-LICENSE
             (https://github.com/yaml/pyyaml; the pure-Python files of its wheel, unmodified)
gjson/       gjson-py {gjson}, GNU GPL version 3 or later: gjson-py-LICENSE
             (https://github.com/volans-/gjson-py; from the py3-none-any wheel, unmodified)
'''


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(pin: Pin, cache: Path) -> Path | None:
    """The pinned wheel from the cache, downloading it with pip if missing. Only a wheel is
    ever accepted (--only-binary), so pip never runs a build backend."""
    target = cache / pin.filename
    if target.exists() and sha256(target) == pin.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--only-binary", ":all:", *pin.platform,
               f"{pin.dist}=={pin.version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / pin.filename
        if result.returncode != 0 or not got.exists():
            print(f"build_zipapp: could not download {pin.filename}: "
                  f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        if sha256(got) != pin.sha256:
            raise SystemExit(f"build_zipapp: {pin.filename} does not match its pinned sha256")
        os.replace(got, target)  # atomic: concurrent builds share the cache safely
    return target


def dependency_files(pin: Pin, cache: Path) -> tuple[dict[str, bytes], bytes]:
    """(archive name -> content for the pinned package's pure-Python files, licence text)."""
    wheel = fetch(pin, cache)
    if wheel is None:
        return installed_files(pin)
    files: dict[str, bytes] = {}
    licence = b""
    with zipfile.ZipFile(wheel) as whl:
        for name in whl.namelist():
            if (name.startswith(pin.package + "/") and not name.endswith("/")
                    and not name.endswith(COMPILED)):
                files[name] = whl.read(name)
            elif (re.fullmatch(rf"{re.escape(pin.dist)}-[^/]+\.dist-info/(licenses/)?[^/]+", name,
                               flags=re.I) and LICENCE.fullmatch(name.rsplit("/", 1)[1])):
                licence = whl.read(name)
    if not licence:
        raise SystemExit(f"build_zipapp: {pin.filename} has no licence text")
    return files, licence


def installed_files(pin: Pin) -> tuple[dict[str, bytes], bytes]:
    """Offline fallback: the same version's pure-Python files from this Python's site-packages."""
    try:
        dist = importlib.metadata.distribution(pin.dist)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"build_zipapp: {pin.dist} {pin.version} is neither downloadable "
                         "nor installed")
    if dist.version != pin.version:
        raise SystemExit(f"build_zipapp: {pin.dist} {pin.version} could not be downloaded, "
                         f"and the installed one is {dist.version}")
    files, licence = {}, b""
    for rel in dist.files or ():
        parts = Path(str(rel)).parts
        if parts[0] == pin.package and not rel.name.endswith(COMPILED) and "__pycache__" not in parts:
            files["/".join(parts)] = Path(dist.locate_file(rel)).read_bytes()
        elif parts[0].endswith(".dist-info") and LICENCE.fullmatch(rel.name):
            licence = Path(dist.locate_file(rel)).read_bytes()
    if not licence:
        raise SystemExit(f"build_zipapp: no licence text found for installed {pin.dist}")
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


def build_id(entries: dict[str, bytes]) -> str:
    """Names the unpacked copy of an archive: the version and a hash of every entry."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(name.encode() + b"\0" + hashlib.sha256(entries[name]).digest())
    version = re.search(rb'^__version__ = "([^"]+)"', entries["llamaswap/__init__.py"], re.M)
    return f"{version[1].decode()}-{digest.hexdigest()[:16]}"


def build(output: Path, cache: Path) -> Path:
    yaml_files, yaml_licence = dependency_files(PYYAML, cache)
    gjson_src, gjson_licence = dependency_files(GJSON, cache)
    if "yaml/__init__.py" not in yaml_files or "gjson/__init__.py" not in gjson_src:
        raise SystemExit("build_zipapp: dependency sources are incomplete")
    entries = package_files()
    entries.update(yaml_files)
    entries.update(gjson_src)
    entries["licenses/README.txt"] = LICENSES_README.format(pyyaml=PYYAML.version, gjson=GJSON.version).encode()
    entries["licenses/llama-swap-LICENSE"] = (ROOT / "LICENSE").read_bytes()
    entries["licenses/PyYAML-LICENSE"] = yaml_licence
    entries["licenses/gjson-py-LICENSE"] = gjson_licence
    entries["__main__.py"] = MAIN.replace("@BUILD_ID@", build_id(entries)).encode()
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
