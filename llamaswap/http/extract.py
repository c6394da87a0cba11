"""Which model a request is for (behaviour.md 3.7), read without holding big bodies in memory.

- GET: ``?model=`` (``?stream=true``).
- A body that parses as a JSON object: its ``model`` — whatever the Content-Type says, since
  ``curl -d`` sends JSON as a form. Any depth (deepjson.py); a key written twice counts the
  first time, as in gjson. A body that says or looks like JSON but does not parse gets a 400
  that says why; a JSON body without a usable ``model``, upstream's 404.
- multipart/form-data: the ``model`` field, found by scanning the stream. Bytes read while
  looking for it are kept (in memory, spilling to a temporary file past ``SPOOL_MEMORY``) so
  the body can be forwarded unchanged; the rest of the upload is never read here. The spool
  is deleted by ``Extracted.close()``, which the caller always runs.
- anything else: an urlencoded form's ``model``.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from llamaswap.http import deepjson
from llamaswap.http.context import RequestContext

SPOOL_MEMORY = 1 << 20
READ_SIZE = 64 * 1024
MAX_FIELD = 64 * 1024
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.I)
_DISPO_NAME = re.compile(rb'[; ]name="([^"]*)"', re.I)
_DISPO_FILE = re.compile(rb'[; ]filename\*?=', re.I)


@dataclass
class Extracted:
    model: str | None = None
    stream: bool = False
    kind: str = "none"  # "query", "json", "form", "multipart", "none"
    data: bytes | None = None  # the whole body when it was read (json/form)
    obj: Any = None  # the parsed JSON object
    # multipart: what was read so far (spool) and where the model value sits in it
    spool: Any = None
    spool_len: int = 0
    value_span: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)
    why: str = ""  # when model is None: what was missing or malformed, for the error message
    status: int = 404  # when model is None: 404 (no model, upstream's), 400 (not JSON at all)
    model_value: str | None = None  # multipart: the model field's new value (pin or selector)

    def close(self) -> None:
        if self.spool is not None:
            try:
                self.spool.close()
            finally:
                self.spool = None

    def prefix_chunks(self, replace_value: bytes | None = None):
        """The multipart bytes read so far, with the model value replaced if asked."""
        if self.spool is None:
            return
        self.spool.seek(0)
        if replace_value is not None and self.value_span is not None:
            start, end = self.value_span
            yield from _read_range(self.spool, start)
            yield replace_value
            self.spool.seek(end)
            yield from _read_range(self.spool, self.spool_len - end)
        else:
            yield from _read_range(self.spool, self.spool_len)


def _read_range(f, n: int):
    while n > 0:
        b = f.read(min(n, READ_SIZE))
        if not b:
            return
        n -= len(b)
        yield b


def from_query(ctx: RequestContext) -> Extracted:
    return Extracted(model=ctx.query_value("model") or None,
                     stream=ctx.query_value("stream") == "true", kind="query",
                     why="missing 'model' query parameter")


def from_body(ctx: RequestContext) -> Extracted:
    ctype = ctx.headers.get("Content-Type") or ""
    if "multipart/form-data" in ctype.lower():
        return from_multipart(ctx, ctype)
    data = ctx.read_body()
    ex = Extracted(data=data, kind="form")
    if data[:64].lstrip().startswith((b"{", b"[")) or "application/json" in ctype.lower():
        ex.kind = "json"
        _from_json(ex, data)
        return ex
    try:
        form = parse_qs(data.decode("utf-8", "replace"), keep_blank_values=True)
    except ValueError:
        form = {}
    ex.model = (form.get("model") or [""])[0] or None
    ex.stream = (form.get("stream") or [""])[0] == "true"
    ex.why = "the request body is empty" if not data else "no 'model' field in the form body"
    return ex


def _from_json(ex: Extracted, data: bytes) -> None:
    if not data.strip():
        ex.why = "the request body is empty"
        return
    try:
        # a key written twice: the first one counts, as upstream's gjson reads it (the check
        # for that costs two byte scans; the slower parse runs only when it may matter)
        obj = deepjson.loads(data, first_key_wins=data.count(b'"model"') > 1
                             or data.count(b'"stream"') > 1)
    except UnicodeDecodeError:
        ex.why, ex.status = "the request body is not UTF-8 JSON", 400
        return
    except ValueError as e:
        ex.why, ex.status = f"the request body is not valid JSON ({e})", 400
        return
    if not isinstance(obj, dict):
        ex.why = f"the JSON body must be an object with a 'model' field, got {type(obj).__name__}"
        return
    ex.obj = obj
    model = obj.get("model")
    ex.model = model if isinstance(model, str) and model else None
    ex.stream = obj.get("stream") is True
    if "model" not in obj:
        ex.why = "the JSON body has no 'model' field"
    elif ex.model is None:
        ex.why = ("'model' in the JSON body must be a non-empty string, got "
                  + deepjson.dumps(model)[:200])


class MultipartError(ValueError):
    pass


def from_multipart(ctx: RequestContext, ctype: str) -> Extracted:
    m = _BOUNDARY.search(ctype)
    if not m:
        raise MultipartError("no multipart boundary in Content-Type")
    boundary = (m.group(1) or m.group(2)).encode("latin-1")
    ex = Extracted(kind="multipart")
    ex.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, prefix="llamaswap-upload-")
    try:
        _scan_multipart(ctx, boundary, ex)
    except BaseException:
        ex.close()
        raise
    return ex


def _scan_multipart(ctx: RequestContext, boundary: bytes, ex: Extracted) -> None:
    delim = b"\r\n--" + boundary
    window = bytearray(b"\r\n")  # lets the first delimiter match like the others
    win_off = -2  # absolute offset of window[0] in the body
    state = "preamble"
    name = None
    is_file = False
    value = bytearray()
    value_start = 0
    eof = False

    def fill() -> bool:
        nonlocal eof
        if eof:
            return False
        chunk = ctx.body.read(READ_SIZE)
        if not chunk:
            eof = True
            return False
        ex.spool.write(chunk)
        ex.spool_len += len(chunk)
        window.extend(chunk)
        return True

    while True:
        if state == "preamble":
            i = window.find(delim)
            if i < 0:
                keep = len(delim)
                if len(window) > keep:
                    drop = len(window) - keep
                    del window[:drop]
                    win_off += drop
                if not fill():
                    return
                continue
            j = window.find(b"\r\n", i + len(delim))
            if j < 0:
                if not fill():
                    return
                continue
            if window[i + len(delim):i + len(delim) + 2] == b"--":
                return  # closing delimiter: no more parts
            drop = j + 2
            del window[:drop]
            win_off += drop
            state = "headers"
        elif state == "headers":
            i = window.find(b"\r\n\r\n")
            if i < 0:
                if len(window) > MAX_FIELD:
                    raise MultipartError("multipart part headers too long")
                if not fill():
                    return
                continue
            head = bytes(window[:i])
            m = _DISPO_NAME.search(b" " + head.replace(b"\r\n", b"; "))
            name = m.group(1).decode("utf-8", "replace") if m else None
            is_file = bool(_DISPO_FILE.search(b" " + head))
            drop = i + 4
            del window[:drop]
            win_off += drop
            value = bytearray()
            value_start = win_off
            state = "body"
        else:  # body: look for the next delimiter
            i = window.find(delim)
            wanted = not is_file and name in ("model", "stream")
            if i < 0:
                keep = len(delim)
                if len(window) > keep:
                    drop = len(window) - keep
                    if wanted:
                        value.extend(window[:drop])
                        if len(value) > MAX_FIELD:
                            raise MultipartError(f"multipart field {name!r} too long")
                    del window[:drop]
                    win_off += drop
                if not fill():
                    return
                continue
            if wanted:
                value.extend(window[:i])
                text = value.decode("utf-8", "replace")
                if name == "stream":
                    ex.stream = text == "true"
                else:
                    ex.model = text or None
                    ex.value_span = (value_start, value_start + len(value))
                    return
            del window[:i]
            win_off += i
            state = "preamble"
