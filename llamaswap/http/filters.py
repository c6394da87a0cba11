"""Request body rewrites (behaviour.md 4.8): useModelName, stripParams, setParams,
setParamsByID. ``model`` itself is protected (the loader already removed it from the lists).

Paths are sjson/gjson paths: ``a.b`` reaches a nested key, a numeric component indexes an
array, ``\\.`` is a literal dot. Filters are looked up by the *requested* name (a local
model or alias first, then a peer's model).
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring
from typing import Any

from llamaswap.config.model import Filters, thaw
from llamaswap.http import deepjson


def split_path(path: str) -> list[str]:
    parts, cur, esc = [], [], False
    for ch in path:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def delete_path(obj: Any, path: str) -> bool:
    parts = split_path(path)
    cur = obj
    for p in parts[:-1]:
        cur = _child(cur, p)
        if cur is None:
            return False
    last = parts[-1]
    if isinstance(cur, dict) and last in cur:
        del cur[last]
        return True
    if isinstance(cur, list) and last.isdigit() and int(last) < len(cur):
        del cur[int(last)]
        return True
    return False


def set_path(obj: Any, path: str, value: Any) -> None:
    parts = split_path(path)
    cur = obj
    for i, p in enumerate(parts[:-1]):
        nxt = _child(cur, p)
        if not isinstance(nxt, (dict, list)):
            nxt = [] if parts[i + 1].isdigit() and not isinstance(cur, dict) else {}
            _assign(cur, p, nxt)
        cur = nxt
    _assign(cur, parts[-1], value)


def _child(cur: Any, key: str) -> Any:
    if isinstance(cur, dict):
        return cur.get(key)
    if isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
        return cur[int(key)]
    return None


def _assign(cur: Any, key: str, value: Any) -> None:
    if isinstance(cur, list) and (key.isdigit() or key == "-1"):
        idx = len(cur) if key == "-1" else int(key)
        while len(cur) <= idx:
            cur.append(None)
        cur[idx] = value
    elif isinstance(cur, dict):
        cur[key] = value


def find_filters(app: Any, requested: str) -> tuple[Filters | None, str]:
    """(filters, the model name to send) for a requested name: a local model or alias (its
    useModelName), then a peer model (the id the peer knows when asked by ``peer/model``)."""
    cfg = app.config
    real = cfg.real_model_name(requested)
    if real is not None:
        m = cfg.models[real]
        return m.filters, m.use_model_name
    route = cfg.peer_model(requested)
    if route is not None:
        return route.peer.filters, route.model_id if route.model_id != requested else ""
    return None, ""


def needs_rewrite(filters: Filters | None, use_model_name: str, requested: str) -> bool:
    if use_model_name:
        return True
    if filters is None:
        return False
    return bool(filters.strip_params or filters.set_params
                or requested in filters.set_params_by_id)


def apply(obj: dict, filters: Filters | None, use_model_name: str, requested: str) -> dict:
    """Rewrite the parsed JSON body in place (upstream's order) and return it."""
    if use_model_name:
        obj["model"] = use_model_name
    if filters is not None:
        for path in filters.strip_params:
            if path != "model":
                delete_path(obj, path)
        for key in sorted(filters.set_params):
            if key != "model":
                set_path(obj, key, thaw(filters.set_params[key]))
        by_id = filters.set_params_by_id.get(requested)
        if by_id:
            for key in sorted(by_id):
                if key != "model":
                    set_path(obj, key, thaw(by_id[key]))
    return obj


def encode(obj: Any) -> bytes:
    try:
        return deepjson.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: keep it escaped
        return deepjson.dumps(obj, separators=(",", ":")).encode("ascii")


_MODEL_TEXT = re.compile(rb'"model"')  # re's literal search beats bytes.count on prose
_AFTER_KEY = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*"((?:[^"\\]|\\.)*)"', re.S)
_MODEL_LETTER_ESCAPE = re.compile(rb"\\u006[45cdfCDF]")  # m, o, d, e or l written as \u00XX


def with_model(data: bytes, old: str, new: str) -> bytes | None:
    """The JSON object `data`, whose top-level ``model`` is the string `old`, with that value
    replaced by `new` and every other byte kept (as upstream's sjson edit does): a fraction
    of re-encoding a long chat. None when the top-level key cannot be told apart for sure
    (``"model"`` written more than once anywhere, or spelled with escapes): then encode."""
    key = _MODEL_TEXT.search(data)
    if key is None or _MODEL_TEXT.search(data, key.end()) or _MODEL_LETTER_ESCAPE.search(data):
        return None
    # The top-level key is spelled literally (no escapes), so the one literal "model" is it;
    # its value must be `old`.
    value = _AFTER_KEY.match(data, key.end())
    if value is None:
        return None
    raw = value.group(1)
    try:
        if (json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()) != old:
            return None
        replacement = encode_basestring(new).encode()
    except (ValueError, UnicodeError):
        return None
    return b"".join((data[:value.start(1) - 1], replacement, data[value.end(1) + 1:]))
