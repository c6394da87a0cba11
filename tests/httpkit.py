"""Plumbing for the HTTP front's tests: a proxy in this process in front of real demo backends.

``make_app`` builds the App from real Process objects and the real Router when it exists
(llamaswap.app.App); until then a small stand-in router with the same Ticket contract
(one model at a time, never evicting a busy model).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from helpers import demo_backend_argv, free_port

from llamaswap.config.model import Config, Filters, GroupConfig, ModelConfig, PeerConfig, freeze
from llamaswap.ops.events import EventBus
from llamaswap.ops.logs import build_loggers, new_process_log


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


class _Ticket:
    def __init__(self, router: "MiniRouter", model_id: str):
        self.router = router
        self.model_id = model_id
        self.position = 0
        self._ev = threading.Event()
        self._grant = None
        self._error = None
        self._gave_up = False
        self._done = False

    def wait(self, timeout: float | None) -> bool:
        return self._ev.wait(timeout)

    def result(self):
        if self._error is not None:
            raise self._error
        return self._grant

    def give_up(self) -> None:
        self._gave_up = True

    def done(self) -> None:
        if not self._done and self._grant is not None:
            self._done = True
            self.router._finished(self.model_id)


class _RouterError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Grant:
    model_id: str
    process: Any


class MiniRouter:
    """Stand-in with the Router contract: one model runs at a time; a swap waits until the
    running model has no request in flight."""

    def __init__(self, processes: dict):
        self.processes = processes
        self._lock = threading.Condition()
        self._inflight: dict[str, int] = {}
        self._swap = threading.Lock()

    def request(self, model_id: str) -> _Ticket:
        t = _Ticket(self, model_id)
        threading.Thread(target=self._serve, args=(t,), daemon=True).start()
        return t

    def _serve(self, t: _Ticket) -> None:
        with self._swap:
            with self._lock:
                while any(n for m, n in self._inflight.items() if m != t.model_id):
                    self._lock.wait()
            for mid, p in self.processes.items():
                if mid != t.model_id and p.state.value != "stopped":
                    p.stop(2)
            try:
                self.processes[t.model_id].start()
            except Exception as e:
                t._error = _RouterError(500, f"unspecific error: {e}")
                t._ev.set()
                return
            with self._lock:
                if t._gave_up:
                    t._ev.set()
                    return
                self._inflight[t.model_id] = self._inflight.get(t.model_id, 0) + 1
            t._grant = _Grant(t.model_id, self.processes[t.model_id])
            t._ev.set()

    def _finished(self, model_id: str) -> None:
        with self._lock:
            self._inflight[model_id] -= 1
            self._lock.notify_all()

    def in_flight(self, model_id: str) -> int:
        return self._inflight.get(model_id, 0)

    def shutdown(self, grace=None) -> None:
        for p in self.processes.values():
            p.shutdown(2)


class _Peers:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def peer_for(self, model_id: str):
        for peer in self.cfg.peers.values():
            if model_id in peer.models:
                return peer
        return None


@dataclass
class MiniApp:
    config: Config
    loggers: Any
    events: Any
    processes: dict
    router: Any
    peers: Any
    activity: Any = None
    inflight: Any = None

    def shutdown(self, grace=None) -> None:
        self.router.shutdown(grace)

    def __hash__(self) -> int:
        return id(self)


def make_app(cfg: Config) -> Any:
    loggers = build_loggers("none")
    events = EventBus()
    try:
        from llamaswap.app import App  # the real thing, once it lands
        return App.build(cfg, loggers, events)
    except ImportError:
        pass
    from llamaswap.process import Process
    procs = {mid: Process(m, log=new_process_log(mid, loggers.upstream), proxy_log=loggers.log,
                          events=events) for mid, m in cfg.models.items()}
    return MiniApp(cfg, loggers, events, procs, MiniRouter(procs), _Peers(cfg))


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


def raw_socket(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


__all__ = ["model", "config", "Proxy", "raw_socket", "Filters", "PeerConfig", "replace",
           "field", "freeze"]
