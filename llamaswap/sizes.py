"""Byte sizes and device names, as the ``memory:`` config writes them.

Sizes are byte counts with an optional unit: ``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB``
(1024-based) and ``KB``, ``MB``, ``GB``, ``TB`` (1000-based), units matched without regard
to case, decimals allowed (``1.5GiB``). Devices are ``gpuN`` (the GPU with index N) and
``ram``. No dependencies: the demo backend parses its flags with this too.
"""

from __future__ import annotations

import re
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
_UNITS = {"b": 1, "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
          "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")
_DEVICE = re.compile(r"gpu(0|[1-9][0-9]*)|ram")


def parse_size(value: Any) -> int:
    """Bytes from a size (a number of bytes, or text with a unit); ValueError naming the
    value when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, (int, float)):
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"invalid size {value!r}: a size is a byte count of 0 or more")
        return int(value)
    m = _SIZE.fullmatch(str(value))
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if m is None or (unit is None and m.group(2)):
        raise ValueError(f"invalid size {str(value)!r}: use a byte count or a number with "
                         "B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    return int(float(m.group(1)) * (unit or 1))


def format_size(n: int | None) -> str:
    """Bytes for people: 9.0 GiB, 512.0 MiB, 100 B; "unknown" for None."""
    if n is None:
        return "unknown"
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def is_device(name: str) -> bool:
    return bool(_DEVICE.fullmatch(name))


def gpu_index(device: str) -> int | None:
    """N for "gpuN", None for "ram"."""
    return int(device[3:]) if device.startswith("gpu") else None
