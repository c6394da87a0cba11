"""What the demo backend answers for images and speech: a small PNG drawn from the prompt and
a short WAV tone, made with the standard library (zlib, struct, wave), so the UI's image and
speech tabs have something real to show without a model."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import wave
import zlib


def png(prompt: str, size: int = 64) -> bytes:
    """A size x size RGB gradient whose colours come from the prompt's hash."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    a, b = digest[:3], digest[3:6]
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter type: none
        for x in range(size):
            f = (x + y) / (2 * (size - 1) or 1)
            row += bytes(round(a[i] * (1 - f) + b[i] * f) for i in range(3))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def wav(text: str, seconds: float = 0.6, rate: int = 16000) -> bytes:
    """A mono 16-bit tone whose pitch comes from the text."""
    pitch = 220 + hashlib.sha256(text.encode("utf-8")).digest()[0] * 2
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * pitch * i / rate)))
                      for i in range(int(seconds * rate)))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()
