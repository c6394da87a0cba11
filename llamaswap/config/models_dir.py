"""``-models-dir``: a folder of GGUF files served as models, with no config to write.

Every ``*.gguf`` under the folder (recursively, following symbolic links, skipping hidden
entries) is one model whose id is the file name without ``.gguf``. A split model
(``x-00001-of-00003.gguf``, ``x-00002-of-00003.gguf``, ...) is one model ``x`` started with
its first part, once every part is there. ``mmproj*.gguf`` files are multimodal projectors,
passed with ``--mmproj`` to the model in the same folder (see ``_pair`` for a folder of
several models). Each model's ``cmd`` is
``<llama-server> --port ${PORT} -m <file>`` followed by the ``-models-dir-args`` string, so it
goes through the same macros, port assignment and defaults as a model in a config file, where
a model of the same id (or alias) wins.

Errors (nothing starts, or a reload keeps the old config): a folder that does not exist, two
files giving one id, ``-models-dir-args`` that do not split, no llama-server at the path tried.
Warnings: no models in the folder, files that cannot be read or are not GGUF, an incomplete
split model, several projectors in one folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
from typing import Hashable, NamedTuple

from .command import split_command
from .errors import ConfigError

SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
_SPLIT = re.compile(r"(?P<base>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})")
_PRECISION = re.compile(r"[-_.](b?f\d+|q\d\w*)$")  # a projector's precision: -f16, -bf16, -q8_0


class GgufModel(NamedTuple):
    id: str
    file: str            # absolute path given to -m (a split model's first part)
    mmproj: str | None   # absolute path given to --mmproj


class Scan(NamedTuple):
    models: dict[str, GgufModel]  # sorted by id
    warnings: tuple[str, ...]


class ModelsDir:
    """The ``-models-dir``, ``-models-dir-args`` and ``-llama-server`` flags together."""

    def __init__(self, path: str, *, llama_server: str = "", args: str = ""):
        self.path = os.path.abspath(path)
        self.llama_server_flag = llama_server
        self.args = args
        try:
            split_command(args)
        except ConfigError as e:
            raise ConfigError(f"-models-dir-args {args!r}: {e}") from None

    def where(self, file: str) -> str:
        return os.path.relpath(file, self.path)

    # --- the folder ----------------------------------------------------------------------

    def gguf_files(self) -> list[str]:
        """Absolute paths of the non-hidden ``*.gguf`` files, sorted; symbolic links to
        folders are followed once (a link back up the tree is not walked again)."""
        if not os.path.isdir(self.path):
            raise ConfigError(f"-models-dir {self.path}: no such directory")
        found, seen = [], set()
        for root, dirs, files in os.walk(self.path, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, f) for f in files
                      if f.lower().endswith(SUFFIX) and not f.startswith(".")]
        return sorted(found)

    def snapshot(self) -> Hashable:
        """What ``-watch-config`` compares between polls: the files and whether each can be
        served. Not sizes or times: a file being downloaded in place grows for minutes, and
        a changed file gives the same command, so a reload at every poll would only log and
        rerun the preload hook; an empty file that gets its GGUF header is seen."""
        try:
            files = self.gguf_files()
        except (ConfigError, OSError):
            return None
        return tuple((file, _unreadable(file)) for file in files)

    def scan(self) -> Scan:
        warnings: list[str] = []
        models: dict[str, GgufModel] = {}
        projectors: dict[str, list[str]] = {}   # folder -> mmproj files
        splits: dict[tuple[str, str, int], dict[int, str]] = {}  # (folder, base, total) -> parts
        plain: list[tuple[str, str]] = []       # (id, file)
        for file in self.gguf_files():
            problem = _unreadable(file)
            if problem:
                warnings.append(f"-models-dir: skipping {self.where(file)}: {problem}")
                continue
            folder, name = os.path.split(file)
            stem = name[:-len(SUFFIX)]
            if "${" in file:
                warnings.append(f"-models-dir: skipping {self.where(file)}: '${{' in a path "
                                "would be read as a macro")
            elif name.lower().startswith("mmproj"):
                projectors.setdefault(folder, []).append(file)
            elif m := _SPLIT.fullmatch(stem):
                key = (folder, m["base"], int(m["total"]))
                splits.setdefault(key, {})[int(m["part"])] = file
            else:
                plain.append((stem, file))
        for (folder, base, total), parts in sorted(splits.items()):
            missing = [n for n in range(1, total + 1) if n not in parts]
            if missing:
                warnings.append(f"-models-dir: skipping split model {base} in "
                                f"{self.where(folder)}: part(s) {', '.join(map(str, missing))} "
                                f"of {total} missing")
                continue
            plain.append((base, parts[1]))
        for model_id, file in sorted(plain):
            if model_id in models:
                raise ConfigError(f"-models-dir {self.path}: {self.where(models[model_id].file)} "
                                  f"and {self.where(file)} both give the model id {model_id!r}; "
                                  "rename one")
            models[model_id] = GgufModel(model_id, file, None)
        for folder, files in sorted(projectors.items()):
            beside = [m for m in models.values() if os.path.dirname(m.file) == folder]
            for model, projector in _pair(beside, files, warnings, self.where):
                models[model.id] = model._replace(mmproj=projector)
        if not models:
            warnings.append(f"-models-dir {self.path}: no .gguf models found")
        return Scan(dict(sorted(models.items())), tuple(warnings))

    # --- the server ----------------------------------------------------------------------

    def llama_server(self) -> str:
        """Absolute path of the llama-server to run; ConfigError naming what was tried."""
        flag = self.llama_server_flag
        if flag and os.sep in flag:
            path = os.path.abspath(flag)
            if not os.path.isfile(path):
                raise ConfigError(f"-llama-server {path}: no such file")
            if not os.access(path, os.X_OK):
                raise ConfigError(f"-llama-server {path}: not executable")
            return path
        name = flag or "llama-server"
        found = shutil.which(name)
        if found is None:
            raise ConfigError(f"{name} not found on PATH ({os.environ.get('PATH', '')}): "
                              "install llama.cpp's llama-server or give -llama-server PATH")
        return os.path.abspath(found)

    def command(self, model: GgufModel, server: str) -> str:
        """The model's cmd, quoted for split_command."""
        parts = [shlex.quote(server), "--port", "${PORT}", "-m", shlex.quote(model.file)]
        if model.mmproj:
            parts += ["--mmproj", shlex.quote(model.mmproj)]
        if self.args.strip():
            parts.append(self.args.strip())
        return " ".join(parts)

    def models_yaml(self, scan: Scan) -> str:
        """The models of ``scan`` as a config file's ``models:`` section."""
        if not scan.models:
            return "models: {}\n"
        server = self.llama_server()
        lines = ["models:"]
        for model in scan.models.values():
            # JSON strings are YAML double-quoted scalars
            lines += [f"  {json.dumps(model.id)}:", f"    cmd: {json.dumps(self.command(model, server))}"]
        return "\n".join(lines) + "\n"


def _pair(models: list[GgufModel], projectors: list[str], warnings: list[str],
          where) -> list[tuple[GgufModel, str]]:
    """Which projector goes with which model of one folder. The only model of a folder takes
    its projector (the first, with a warning, if there are several); among several models, a
    projector goes to those whose id starts with its own name (``mmproj-<name>[-f16].gguf``),
    and one that matches none is left out with a warning."""
    names = ", ".join(os.path.basename(p) for p in projectors)
    if len(models) == 1:
        if len(projectors) > 1:
            warnings.append(f"-models-dir: several projectors beside {where(models[0].file)} "
                            f"({names}); using {os.path.basename(projectors[0])}")
        return [(models[0], projectors[0])]
    pairs = []
    for projector in projectors:
        core = _projector_name(os.path.basename(projector))
        matched = [m for m in models if core and m.id.lower().startswith(core)]
        pairs += [(m, projector) for m in matched]
        if not matched and models:
            warnings.append(f"-models-dir: {where(projector)} is beside several models and "
                            "names none of them: not used (put it in a folder with its model)")
    return pairs


def _projector_name(file_name: str) -> str:
    """``mmproj-Qwen2.5-VL-7B-f16.gguf`` -> ``qwen2.5-vl-7b``."""
    core = file_name[:-len(SUFFIX)][len("mmproj"):].lstrip("-_. ").lower()
    return _PRECISION.sub("", core)


def _unreadable(file: str) -> str | None:
    """Why ``file`` cannot be served, or None."""
    try:
        with open(file, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as e:
        return e.strerror or str(e)
    if magic != GGUF_MAGIC:
        return "not a GGUF file"
    return None


def load(config_path: str | None, models_dir: ModelsDir, config_dir: str | None = None,
         previous=None):
    """The -config file and -config-dir (if any) with the models of ``models_dir`` added; the
    scan's warnings join the config's. ``previous``: the config in service, on a reload (a
    file added to the folder must not re-number the ports of the models being served)."""
    from .loader import load_config_sources, load_config_text
    from .yamlio import compose
    scan = models_dir.scan()
    source = f"-models-dir {models_dir.path}"
    root = compose(models_dir.models_yaml(scan), source)
    nodes = {key.value: value for key, value in root.value[0][1].value}
    if config_path or config_dir:
        config = load_config_sources(config_path, config_dir, extra_models=nodes, previous=previous)
    else:
        config = load_config_text("", path=source, extra_models=nodes, previous=previous)
    return dataclasses.replace(config, warnings=config.warnings + scan.warnings)
