"""``hooks.on_startup.preload``: load the listed models at start and after every reload.

Upstream (behaviour.md 4.10) walks the list in order in a background goroutine, each model
through the router (so group and matrix rules apply: preloading two members of one swap
group leaves only the last running), then sends ``GET /`` to the backend and calls it a
success when the status is below 400. Log lines and the ``ModelPreloaded`` event are
upstream's.
"""

from __future__ import annotations

import http.client
import threading
from typing import Any
from urllib.parse import urlsplit

from llamaswap.ops.events import ModelPreloaded

PROBE_TIMEOUT = 30.0


def _probe_root(proxy_url: str) -> int:
    """Status of ``GET /`` on the backend; the body is read and discarded."""
    u = urlsplit(proxy_url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(u.hostname or "127.0.0.1", u.port, timeout=PROBE_TIMEOUT)
    try:
        base = u.path.rstrip("/")
        conn.request("GET", (base or "") + "/")
        resp = conn.getresponse()
        while resp.read(65536):
            pass
        return resp.status
    finally:
        conn.close()


def preload_one(app: Any, model_id: str) -> bool:
    log = app.loggers.log
    if model_id not in app.processes:
        log.warn(f"preload: model {model_id} is not a local model, skipping")
        return False
    log.info(f"preloading model: {model_id}")
    ticket = app.router.request(model_id)
    status = 200
    try:
        ticket.wait(None)
        try:
            grant = ticket.result()
        except Exception as e:  # RouterError
            status = int(getattr(e, "status", 500) or 500)
        else:
            try:
                process = getattr(grant, "process", None) or app.processes[model_id]
                status = _probe_root(process.config.proxy)
            except (OSError, http.client.HTTPException):
                status = 502
            finally:
                ticket.done()
    except BaseException:
        ticket.give_up()
        raise
    ok = status < 400
    if not ok:
        log.error(f"failed to preload model {model_id}: status {status}")
    events = getattr(app, "events", None)
    if events is not None:
        events.publish(ModelPreloaded(model_id, ok))
    return ok


def run_preload(app: Any) -> list[bool]:
    """Preload every listed model, one after the other (blocks)."""
    return [preload_one(app, mid) for mid in app.config.preload]


def start_preload(app: Any) -> threading.Thread | None:
    """Run the preload hook in a background thread; None when the list is empty."""
    if not app.config.preload:
        return None
    t = threading.Thread(target=run_preload, args=(app,), name="preload", daemon=True)
    t.start()
    return t
