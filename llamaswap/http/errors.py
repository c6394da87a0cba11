"""Errors the proxy itself produces, in the form the client asked for.

JSON (the default) is today's upstream envelope (upstream-head.md section 1)::

    {"src":"llama-swap","error":{"message":"...","type":"...","param":null,"code":"..."}}

``error`` is an object so clients written for the OpenAI API (the SDKs, Home Assistant) read
``error.message``; ``src`` tells them the proxy, not a backend, refused the request. The type
and the default code follow from the status (``error_kind``); a caller may name a more
specific code (the concurrency limit's ``concurrency_limit``). ``Accept: text/plain`` gets
``llama-swap: <msg>`` and ``text/html`` the small HTML page, as upstream. Backend errors are
relayed as they came and never pass through here.
"""

from __future__ import annotations

from typing import Any, Iterable

from llamaswap.ops.gojson import go_string

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"

_KINDS = {
    400: (INVALID_REQUEST, "bad_request"),
    401: (AUTHENTICATION, "unauthorized"),
    403: (AUTHENTICATION, "forbidden"),
    404: (INVALID_REQUEST, "not_found"),
    409: (INVALID_REQUEST, "conflict"),
    429: (RATE_LIMIT, "rate_limit_exceeded"),
    502: (SERVER, "bad_gateway"),
    503: (SERVER, "service_unavailable"),
    504: (SERVER, "gateway_timeout"),
}

CONCURRENCY_LIMIT = "concurrency_limit"
TOO_MANY_REQUESTS = "Too many requests"


_GO_HTML = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&#39;", '"': "&#34;"})


def _go_html_escape(text: str) -> str:
    """Go's html.EscapeString (numeric quote entities, unlike Python's html.escape)."""
    return text.translate(_GO_HTML)


def error_kind(status: int) -> tuple[str, str]:
    """(type, default code) for a status, upstream's table."""
    kind = _KINDS.get(status)
    if kind is not None:
        return kind
    if 400 <= status < 500:
        return INVALID_REQUEST, "invalid_request"
    return SERVER, "internal_error"


def error_type(status: int) -> str:
    return error_kind(status)[0]


def envelope(status: int, message: str, code: str | None = None) -> bytes:
    """The JSON error body, byte for byte as Go's encoder writes upstream's envelope."""
    kind, default_code = error_kind(status)
    return (f'{{"src":"llama-swap","error":{{"message":{go_string(message)},'
            f'"type":"{kind}","param":null,"code":{go_string(code or default_code)}}}}}').encode()


def error_body(status: int, message: str, accept: str | None = None,
               code: str | None = None) -> tuple[str, bytes]:
    """(content type, body) for an error, chosen by the request's ``Accept`` header."""
    accept = accept or ""
    if "text/plain" in accept:
        return "text/plain; charset=utf-8", f"llama-swap: {message}".encode()
    if "text/html" in accept:
        page = f"<html><body><h1>llama-swap</h1><p>{_go_html_escape(message)}</p></body></html>"
        return "text/html; charset=utf-8", page.encode()
    return "application/json", envelope(status, message, code)


def send_error(target: Any, status: int, message: str, code: str | None = None,
               headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer with an error. ``target`` is a RequestContext (or anything with ``headers`` and
    ``send(status, body, content_type, headers)``)."""
    content_type, body = error_body(status, message, target.headers.get("Accept"), code)
    target.send(status, body, content_type, headers)


def send_concurrency_limit(target: Any, message: str = TOO_MANY_REQUESTS) -> None:
    """The 429 of a model at its concurrency limit: always JSON whatever ``Accept`` says, with
    ``Retry-After: 1`` and the code ``concurrency_limit``, as upstream sheds it."""
    target.send(429, envelope(429, message, CONCURRENCY_LIMIT), "application/json",
                [("Retry-After", "1")])
