"""Errors the proxy itself produces, in the form the client asked for.

JSON (the default) is the OpenAI envelope ``{"error": {"message", "type", "code"}}``
(differences.md point 6): clients such as the OpenAI SDKs and Home Assistant read
``error.message``. ``Accept: text/plain`` gets ``llama-swap: <msg>`` and ``text/html`` the
small HTML page, as upstream.
"""

from __future__ import annotations

import html
import json
from typing import Any, Iterable


def error_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status: int, message: str, accept: str | None = None,
               code: Any = None) -> tuple[str, bytes]:
    """(content type, body) for an error, chosen by the request's ``Accept`` header."""
    accept = accept or ""
    if "text/plain" in accept:
        return "text/plain; charset=utf-8", f"llama-swap: {message}".encode()
    if "text/html" in accept:
        page = f"<html><body><h1>llama-swap</h1><p>{html.escape(message)}</p></body></html>"
        return "text/html; charset=utf-8", page.encode()
    envelope = {"error": {"message": message, "type": error_type(status),
                          "code": status if code is None else code}}
    return "application/json", json.dumps(envelope).encode()


def send_error(target: Any, status: int, message: str, code: Any = None,
               headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer with an error. ``target`` is a RequestContext (or anything with ``headers`` and
    ``send(status, body, content_type, headers)``)."""
    content_type, body = error_body(status, message, target.headers.get("Accept"), code)
    target.send(status, body, content_type, headers)
