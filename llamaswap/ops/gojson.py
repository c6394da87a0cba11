"""JSON text as Go's encoding/json writes it, for byte-exact upstream shapes.

Differences from Python's json.dumps that a client could see: no spaces after separators,
`<`, `>`, `&`, U+2028 and U+2029 escaped, non-ASCII written raw, floats in Go's shortest
form (`-1`, not `-1.0`; `0.00001`, not `1e-05`), and timestamps in RFC 3339 with nanosecond
precision trimmed of trailing zeros.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_string(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    if any(c in out for c in _HTML_ESCAPES):
        out = "".join(_HTML_ESCAPES.get(c, c) for c in out)
    return out


def go_float(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        raise ValueError(f"unsupported float value {x}")  # Go refuses these as well
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    a = abs(x)
    s = repr(x)
    if 1e-6 <= a < 1e21:
        if "e" in s:
            s = format(Decimal(s), "f")
        return s
    # exponent form: Go writes e-7, not e-07
    mant, _, exp = s.partition("e")
    sign = exp[0] if exp and exp[0] in "+-" else "+"
    digits = exp.lstrip("+-").lstrip("0") or "0"
    return f"{mant}e{sign}{digits}"


def go_time(t: datetime) -> str:
    """RFC 3339 with the fraction trimmed, as Go's time.Time.MarshalJSON (microsecond source)."""
    if t.tzinfo is None:
        t = t.astimezone()
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        base += "." + f"{t.microsecond:06d}".rstrip("0")
    off = t.utcoffset()
    if not off:
        return base + "Z"
    minutes = int(off.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def dumps(value: Any) -> str:
    """Encode plain data (dict keeps insertion order, like a Go struct)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, datetime):
        return '"' + go_time(value) + '"'
    if isinstance(value, dict):
        return "{" + ",".join(go_string(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if hasattr(value, "to_json"):
        return dumps(value.to_json())
    raise TypeError(f"cannot encode {type(value).__name__}")


def sorted_maps(value: Any) -> Any:
    """Plain data with every dict's keys sorted, as Go encodes a ``map[string]any``."""
    if isinstance(value, dict):
        return {k: sorted_maps(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [sorted_maps(v) for v in value]
    return value


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
