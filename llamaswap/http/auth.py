"""API keys (``apiKeys``), their scopes, and CORS preflight.

A key is read from ``Authorization: Basic`` (the password; browsers use this for the UI),
then ``Authorization: Bearer``, then ``x-api-key`` — upstream's order. Comparison is
constant-time. The dispatcher calls ``check`` before an ``auth`` route runs: 401 for an
unknown key, 403 for a non-admin key on an operations route (``OPERATIONS``). Model routes
then call ``may_use`` (403 outside the key's ``models``) before anything loads. A key's value
never leaves this module in a message: errors, logs and records carry its ``name``.

Only OPTIONS gets CORS headers from us (as upstream); proxied responses keep the backend's own
CORS headers and we never add a second copy (differences.md point 8).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re

from llamaswap.config.model import PLAIN_KEY_NAME, ApiKey, Config

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


class KeyTable:
    """The configured keys, ready to identify a request's key in constant time: the given key
    is hashed once and compared with every configured key's hash (no early exit), so neither
    the time nor the work depends on which key matched, where it sits or how long it is."""

    def __init__(self, config) -> None:
        self._entries = tuple((_digest(e.key), e) for e in config.api_key_entries())

    def identify(self, given: str) -> ApiKey | None:
        if not given:
            return None
        import hmac  # here, not at startup: it maps OpenSSL, which only configs with keys need
        digest = _digest(given)
        found = None
        for known, entry in self._entries:
            if hmac.compare_digest(digest, known):
                found = entry
        return found


def _digest(key: str) -> bytes:
    import hashlib
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


_table: tuple = (None, None)  # (config, its KeyTable): the config changes only on reload


def key_table(config) -> KeyTable:
    global _table
    cached_config, table = _table
    if cached_config is not config:
        table = KeyTable(config)
        _table = (config, table)
    return table


def key_ok(key: str, keys) -> bool:
    """True when ``key`` is one of ``keys`` (plain strings), compared in constant time."""
    return KeyTable(Config(api_keys=tuple(keys))).identify(key) is not None


# Operations routes: non-admin keys get 403 there. A route pattern is one when it equals an
# entry, or when the entry ends in "/..." and the pattern is at or below that path. This
# list and the README's table ("Scoped API keys") say the same.
OPERATIONS = ("/running", "/unload", "/api/...", "/logs/...", "/ui/...", "/metrics")
# what a non-admin client may still use under those
OPEN_TO_CLIENTS = ("/api/version",)


@functools.lru_cache(maxsize=256)
def is_operations(pattern: str) -> bool:
    if pattern in OPEN_TO_CLIENTS:
        return False
    for entry in OPERATIONS:
        if entry.endswith("/..."):
            base = entry[:-4]
            if pattern == base or pattern.startswith(base + "/"):
                return True
        elif pattern == entry:
            return True
    return False


def check(ctx, route=None) -> bool:
    """True when the request may proceed; otherwise the 401 (unknown key) or 403 (a non-admin
    key on an operations route) has been sent. The key's entry is left in
    ``ctx.state["key"]`` for the handlers (scope, maxInFlight) and the activity record."""
    config = ctx.app.config if ctx.app is not None else None
    if config is None or not config.api_keys:
        return True
    key = key_table(config).identify(extract_key(ctx.headers))
    if key is None:
        ctx.send_error(401, UNAUTHORIZED, headers=[("WWW-Authenticate", 'Basic realm="llama-swap"')])
        return False
    ctx.state["key"] = key
    if not key.admin and route is not None and is_operations(route.pattern):
        ctx.send_error(403, f"API key {key.name} is not an admin key: {ctx.method} {ctx.path} "
                            "is an operations route")
        return False
    return True


def key_name(ctx) -> str:
    """The name of the request's key, for logs, activity and metrics: ``-`` for a plain key
    and for open access."""
    key = (getattr(ctx, "state", None) or {}).get("key")
    return key.name if key is not None else PLAIN_KEY_NAME


def resolved_names(config, name: str) -> tuple[str, ...]:
    """What a requested name resolves to, for the scope check: the local model id, or a peer
    model's qualified name (``peer/model``) and the id the peer knows it by."""
    real = config.real_model_name(name)
    if real is not None:
        return (real,)
    route = config.peer_model(name)
    return (route.fqn, route.model_id) if route is not None else ()


def may_use(ctx, *names: str | None) -> bool:
    """Scope check before anything starts: True when the request's key may use a model by
    any of ``names`` (the name sent, an alias, the model id it resolves to); otherwise the
    403 has been sent."""
    key = ctx.state.get("key")
    if key is None or key.allows(*names):
        return True
    shown = next((n for n in names if n), "")
    ctx.send_error(403, f"API key {key.name} may not use model {shown}")
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
