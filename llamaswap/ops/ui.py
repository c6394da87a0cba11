"""The web UI's static files at /ui/, read from inside the package (and so the .pyz).

Files are loaded once and kept with their gzip form and an ETag. File names carry no content
hash, so every file is served ``Cache-Control: no-cache``: the browser keeps its copy but
revalidates (a cheap 304), and an upgrade never leaves it running a stale UI. Paths without a
``.`` in the last segment fall back to index.html, as upstream's SPA handler does; a missing
file with an extension is a 404. The UI sits behind apiKeys (differences.md point 9), so the
browser's Basic-auth prompt protects it; the favicon stays open.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamaswap.http.context import RequestContext

if TYPE_CHECKING:
    from llamaswap.http.routes import RouteTable

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon",
          ".png": "image/png", ".json": "application/json"}
_COMPRESSIBLE = (".js", ".css", ".html", ".svg", ".json")


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


_files: dict[str, StaticFile] | None = None
_lock = threading.Lock()


def _load() -> dict[str, StaticFile]:
    # imported at the first request for the UI, not at startup (hashlib maps OpenSSL)
    import gzip
    import hashlib
    import mimetypes
    from importlib import resources
    found: dict[str, StaticFile] = {}

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            body = child.read_bytes()
            ext = "." + name.rsplit(".", 1)[-1] if "." in name else ""
            ctype = _TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            packed = gzip.compress(body, 9, mtime=0) if ext in _COMPRESSIBLE else None
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found[name] = StaticFile(body, packed if packed and len(packed) < len(body) else None,
                                     ctype, etag)

    walk(resources.files("llamaswap") / "ui", "")
    return found


def files() -> dict[str, StaticFile]:
    global _files
    if _files is None:
        with _lock:
            if _files is None:
                _files = _load()
    return _files


def _accepts_gzip(ctx: RequestContext) -> bool:
    for part in (ctx.headers.get("Accept-Encoding") or "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def serve_file(ctx: RequestContext, name: str) -> None:
    static = files().get(name)
    if static is None:
        ctx.send(404, "404 page not found\n", "text/plain; charset=utf-8",
                 [("X-Content-Type-Options", "nosniff")])
        return
    headers = [("Cache-Control", "no-cache"), ("ETag", static.etag),
               ("X-Content-Type-Options", "nosniff"), ("Vary", "Accept-Encoding")]
    if static.etag in (ctx.headers.get("If-None-Match") or ""):
        ctx.send(304, b"", None, headers)
        return
    body = static.body
    if static.gzipped is not None and _accepts_gzip(ctx):
        body = static.gzipped
        headers.append(("Content-Encoding", "gzip"))
    ctx.send(200, body, static.content_type, headers)


def ui_page(ctx: RequestContext) -> None:
    path = ctx.params.get("path", "")
    last = path.rsplit("/", 1)[-1]
    if path in ("", "index.html") or ("." not in last and path not in files()):
        path = "index.html"
    serve_file(ctx, path)


def ui_root(ctx: RequestContext) -> None:
    location = "/ui/" + (f"?{ctx.query_string}" if ctx.query_string else "")
    ctx.redirect(301, location)


def favicon(ctx: RequestContext) -> None:
    serve_file(ctx, "favicon.ico")


def register(table: RouteTable) -> None:
    table.add("GET", "/ui", ui_root)
    table.add("GET", "/ui/{path...}", ui_page)
    table.add("GET", "/favicon.ico", favicon, auth=False)
