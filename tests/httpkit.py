"""Plumbing for the HTTP front's tests: a proxy in this process in front of real demo backends.

``make_app`` builds the real App (real Process objects, the real Router).
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import field, replace
from typing import Any

from helpers import demo_backend_argv, free_port

from llamaswap.app import App
from llamaswap.config.model import Config, Filters, GroupConfig, ModelConfig, PeerConfig, freeze
from llamaswap.ops.events import EventBus
from llamaswap.ops.logs import build_loggers


def model(mid: str, *extra: str, **kw: Any) -> ModelConfig:
    port = free_port()
    argv = tuple(demo_backend_argv(mid.replace("/", "_"), port, "--quiet", *extra))
    base = dict(id=mid, cmd=" ".join(argv), argv=argv, proxy=f"http://127.0.0.1:{port}",
                check_endpoint="/health", port=port, unload_timeout=2)
    base.update(kw)
    return ModelConfig(**base)


def config(*models: ModelConfig, **kw: Any) -> Config:
    ms = {m.id: m for m in sorted(models, key=lambda m: m.id)}
    aliases = {a: m.id for m in models for a in m.aliases}
    groups = {"(default)": GroupConfig(id="(default)", members=tuple(ms))}
    return Config(models=freeze(ms), aliases=freeze(aliases), groups=freeze(groups), **kw)


def make_app(cfg: Config) -> Any:
    return App.build(cfg, build_loggers("none"), EventBus())


class Holder:
    def __init__(self, app):
        self.app = app


class Proxy:
    """A proxy server on a free port with its App; ``close()`` stops everything."""

    def __init__(self, cfg: Config):
        from llamaswap.http.server import serve
        self.app = make_app(cfg)
        self.holder = Holder(self.app)
        self.server = serve(self.holder, f"127.0.0.1:{free_port()}")
        self.port = self.server.port

    def conn(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        c = self.conn()
        try:
            hs = dict(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                hs.setdefault("Content-Type", "application/json")
            c.request(method, path, body=body, headers=hs)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def post(self, path: str, body: Any, **kw) -> tuple[int, dict, bytes]:
        return self.request("POST", path, body, **kw)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown(2)
        self.app.shutdown()

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SseReader:
    """A client of /api/events: ``next()`` is one (type, decoded data) message."""

    def __init__(self, proxy):
        self.conn = proxy.conn()
        self.conn.request("GET", "/api/events")
        self.resp = self.conn.getresponse()
        self.buf = b""

    def next(self) -> tuple[str, object]:
        while b"\n\n" not in self.buf:
            data = self.resp.read1(65536)
            if not data:
                raise EOFError
            self.buf += data
        raw, self.buf = self.buf.split(b"\n\n", 1)
        head, data = raw.split(b"\n", 1)
        assert head == b"event:message" and data.startswith(b"data:{")
        env = json.loads(data[5:])
        assert list(env) == ["type", "data"] and isinstance(env["data"], str)
        return env["type"], json.loads(env["data"])

    def until(self, pred, limit=500):
        for _ in range(limit):
            t, d = self.next()
            if pred(t, d):
                return t, d
        raise AssertionError("event not seen")

    def close(self):
        self.conn.close()


def raw_socket(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


__all__ = ["model", "config", "Proxy", "SseReader", "raw_socket", "Filters", "PeerConfig", "replace",
           "field", "freeze"]
