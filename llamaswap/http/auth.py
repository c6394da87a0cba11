"""API keys (``apiKeys``) and CORS preflight.

A key is read from ``Authorization: Basic`` (the password; browsers use this for the UI),
then ``Authorization: Bearer``, then ``x-api-key`` — upstream's order. Comparison is
constant-time. Only OPTIONS gets CORS headers from us (as upstream); proxied responses keep
the backend's own CORS headers and we never add a second copy (differences.md point 8).
"""

from __future__ import annotations

import base64
import binascii
import re

UNAUTHORIZED = "unauthorized: invalid or missing API key"
DEFAULT_ALLOW_HEADERS = "Content-Type, Authorization, Accept, X-Requested-With"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def extract_key(headers) -> str:
    value = headers.get("Authorization") or ""
    if value.startswith("Basic "):
        try:
            decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            decoded = None
        if decoded is not None and ":" in decoded:
            return decoded.split(":", 1)[1]
    elif value.startswith("Bearer "):
        return value[7:]
    return headers.get("x-api-key") or ""


def key_ok(key: str, keys) -> bool:
    import hmac  # here, not at startup: it maps OpenSSL, which only configs with keys need
    ok = False
    given = key.encode()
    for k in keys:  # no early exit: every key is compared
        ok |= hmac.compare_digest(given, k.encode())
    return ok and bool(key)


def check(ctx) -> bool:
    """True when the request may proceed; otherwise the 401 has been sent."""
    keys = ctx.app.config.api_keys if ctx.app is not None else ()
    if not keys:
        return True
    if key_ok(extract_key(ctx.headers), keys):
        ctx.state["authenticated"] = True
        return True
    ctx.send_error(401, UNAUTHORIZED, headers=[("WWW-Authenticate", 'Basic realm="llama-swap"')])
    return False


def sanitize_request_headers(value: str | None) -> str:
    """Access-Control-Request-Headers with anything that is not an HTTP token dropped."""
    if value is None:
        return DEFAULT_ALLOW_HEADERS
    names = [n.strip() for n in value.split(",")]
    return ", ".join(n for n in names if n and _TOKEN.match(n))


def send_preflight(ctx) -> None:
    ctx.send(204, b"", None, [
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        ("Access-Control-Allow-Headers",
         sanitize_request_headers(ctx.headers.get("Access-Control-Request-Headers"))),
        ("Access-Control-Max-Age", "86400"),
    ])
