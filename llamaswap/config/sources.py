"""``-config`` plus ``-config-dir``: several YAML files merged into one document before macros
and decoding (upstream-head.md section 9).

Sources: the ``-config`` file first, then every regular ``*.yml``/``*.yaml`` file directly in
the directory, sorted by path. Each file gets its ``${env.NAME}`` substitution and is parsed on
its own (an empty file is skipped); then the node trees are merged:

- identity maps (``models``, ``groups``, ``profiles``, ``selectors``, ``peers``, ``matrix``,
  ``routing.router.settings.groups``, ``routing.router.settings.matrix``) take the union of
  their keys, and a key defined twice is an error naming both files;
- other mappings merge key by key, sequences are appended in source order (``apiKeys`` from
  two files all work), a null scalar yields to the other side, equal scalars are fine and
  different ones are a conflict naming the dotted path and both files.

Every node remembers its file (``start_mark.name``), so a later error names the file the bad
value is in. Macros are expanded after the merge, so global ``macros`` from any file reach
every model.
"""

from __future__ import annotations

import os
from typing import Mapping

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .envsubst import substitute_env
from .errors import ConfigError
from .yamlio import compose, is_null, scalar_tag_value

IDENTITY_MAPS = frozenset({
    "models", "groups", "profiles", "selectors", "peers", "matrix",
    "routing.router.settings.groups", "routing.router.settings.matrix",
})
NO_SOURCE = "at least one of -config or -config-dir must be provided"
_KIND = {ScalarNode: 8, SequenceNode: 2, MappingNode: 4}  # yaml.v3's node kinds, for messages


def config_dir_files(directory: str) -> list[str]:
    """The ``*.yml``/``*.yaml`` regular files directly in ``directory``, sorted by path."""
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        raise ConfigError(f"-config-dir {directory}: open {directory}: "
                          f"{(e.strerror or str(e)).lower()}") from None
    files = []
    for entry in entries:
        if entry.name.endswith((".yml", ".yaml")) and not entry.is_dir():
            files.append(os.path.join(directory, entry.name))
    return sorted(files)


def source_paths(config_path: str | None, config_dir: str | None) -> list[str]:
    if not config_path and not config_dir:
        raise ConfigError(NO_SOURCE)
    paths = [config_path] if config_path else []
    if config_dir:
        files = config_dir_files(config_dir)
        if config_path:
            mine = os.path.abspath(config_path)
            if any(os.path.abspath(f) == mine for f in files):
                raise ConfigError(f"-config path {config_path} is also present in -config-dir "
                                  f"{config_dir}; remove it from one")
        paths += files
    if not paths:
        raise ConfigError("no configuration sources found")
    return paths


def read_source(path: str, environ: Mapping[str, str], mapping_only: bool = True) -> Node | None:
    """One file, env-substituted and parsed; None when it holds no document. With
    ``mapping_only`` another top level is upstream's -config-dir error (a single -config file
    leaves that to the decoder's type error)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: open {path}: {(e.strerror or str(e)).lower()}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8: {e}") from None
    root = compose(substitute_env(text, environ, path), path)
    if root is None or (isinstance(root, ScalarNode) and is_null(root) and not root.value):
        return None
    if mapping_only and not isinstance(root, MappingNode):
        raise ConfigError(f"config {path}: top-level YAML must be a mapping")
    return root


def merge_sources(roots: list[MappingNode]) -> MappingNode | None:
    merged: MappingNode | None = None
    for root in roots:
        merged = root if merged is None else _merge_maps(merged, root, "")
    return merged


def _file(node: Node) -> str:
    return node.start_mark.name if node.start_mark is not None else "<unknown>"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _merge_maps(dst: MappingNode, src: MappingNode, path: str) -> MappingNode:
    index = {k.value: i for i, (k, _) in enumerate(dst.value)}
    pairs = list(dst.value)
    for k, v in src.value:
        at = index.get(k.value)
        if at is None:
            index[k.value] = len(pairs)
            pairs.append((k, v))
            continue
        child = _join(path, k.value)
        old_key, old = pairs[at]
        if child in IDENTITY_MAPS:
            pairs[at] = (old_key, _merge_identity(old, v, child, k.value))
        else:
            pairs[at] = (old_key, _merge_value(old, v, child))
    return MappingNode(dst.tag, pairs, dst.start_mark, dst.end_mark, dst.flow_style)


def _merge_identity(dst: Node, src: Node, path: str, section: str) -> Node:
    if is_null(dst):
        return src
    if is_null(src):
        return dst
    if not isinstance(dst, MappingNode) or not isinstance(src, MappingNode):
        raise ConfigError(f'conflict at "{path}": expected a mapping, introduced by {_file(src)}')
    first = {k.value: k for k, _ in dst.value}
    for k, _ in src.value:
        if k.value in first:
            raise ConfigError(f'duplicate {section} "{k.value}" found in {_file(k)} (already defined '
                              f"in {_file(first[k.value])})")
    return MappingNode(dst.tag, dst.value + src.value, dst.start_mark, dst.end_mark, dst.flow_style)


def _merge_value(dst: Node, src: Node, path: str) -> Node:
    if isinstance(dst, MappingNode) and isinstance(src, MappingNode):
        return _merge_maps(dst, src, path)
    if isinstance(dst, SequenceNode) and isinstance(src, SequenceNode):
        return SequenceNode(dst.tag, dst.value + src.value, dst.start_mark, dst.end_mark, dst.flow_style)
    if is_null(dst):
        return src
    if is_null(src):
        return dst
    if isinstance(dst, ScalarNode) and isinstance(src, ScalarNode):
        if dst.value == src.value and scalar_tag_value(dst)[0] == scalar_tag_value(src)[0]:
            return dst
        raise ConfigError(f'conflict at "{path}": {_file(src)} sets a different value than a '
                          f"previous source ({_file(dst)})")
    raise ConfigError(f'conflict at "{path}": incompatible YAML node kinds (kind {_KIND[type(dst)]} '
                      f"vs {_KIND[type(src)]}) introduced by {_file(src)}")
