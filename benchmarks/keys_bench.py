"""CPU per request of the API-key path, in process: identify the key (constant time), the
operations-route check, the scope check and the maxInFlight slot, as a model-routed request
goes through them. Compared with no apiKeys at all and with the reference implementation
of plain keys (compare every key, no scopes), so the figures are differences that the
end-to-end ``proxy_bench.py --api-key`` runs cannot resolve on a shared machine.

Run: ``python benchmarks/keys_bench.py`` (a few seconds). CPU time (time.process_time).
"""

from __future__ import annotations

import hmac
import time

from llamaswap.config import load_config_text
from llamaswap.http import auth
from llamaswap.http.headers import Headers
from llamaswap.http.slots import Slots

N = 200_000
MODELS = "models:\n  fast:\n    cmd: srv --port ${PORT}\n"
CONFIGS = {
    "none": MODELS,
    "plain": "apiKeys: [sk-bench-plain]\n" + MODELS,
    "scoped": "apiKeys:\n  - sk-bench-admin\n  - key: sk-bench-scoped\n    name: bench\n"
              "    models: [\"fast*\", \"swap-?\"]\n    maxInFlight: 64\n" + MODELS,
    "scoped, 20 keys": "apiKeys:\n" + "".join(
        f"  - key: sk-bench-{i}\n    name: k{i}\n    models: [\"fast*\"]\n    maxInFlight: 64\n"
        for i in range(19)) + "  - key: sk-bench-scoped\n    name: bench\n    models: [\"fast*\"]\n"
        "    maxInFlight: 64\n" + MODELS,
}


class App:
    def __init__(self, config):
        self.config = config
        self.key_slots = Slots()


class Route:
    pattern = "/v1/chat/completions"


class Ctx:
    def __init__(self, app, headers):
        self.app = app
        self.headers = headers
        self.state = {}
        self.method = "POST"
        self.path = Route.pattern

    def send_error(self, *a, **kw):
        raise AssertionError(a)


def key_path(app, headers) -> None:
    """What a model-routed request does with its key, from the dispatcher to the end."""
    ctx = Ctx(app, headers)
    auth.check(ctx, Route)
    auth.may_use(ctx, None, "fast", "fast")
    key = ctx.state.get("key")
    if key is not None and key.max_in_flight:
        app.key_slots.try_acquire(key.key, key.max_in_flight)
        app.key_slots.release(key.key)
    auth.key_name(ctx)


def reference_plain(app, headers) -> None:
    """The plain-key check before scoped keys: compare with every key, nothing else."""
    ctx = Ctx(app, headers)
    given = auth.extract_key(ctx.headers).encode()
    ok = False
    for k in app.config.api_keys:
        ok |= hmac.compare_digest(given, k.encode())


def per_request_us(fn, app, headers) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(N):
            fn(app, headers)
        best = min(best, time.process_time() - t0)
    return best / N * 1e6


def main() -> None:
    bearer = {"none": None, "plain": "sk-bench-plain"}
    results = {}
    for name, text in CONFIGS.items():
        app = App(load_config_text(text))
        key = bearer.get(name, "sk-bench-scoped")
        headers = Headers([("Authorization", f"Bearer {key}")] if key else [])
        results[name] = per_request_us(key_path, app, headers)
    plain_app = App(load_config_text(CONFIGS["plain"]))
    ref = per_request_us(reference_plain, plain_app,
                         Headers([("Authorization", "Bearer sk-bench-plain")]))
    print(f"reference plain-key check (before scoped keys): {ref:.2f} us/request")
    for name, us in results.items():
        print(f"key path, {name:>16}: {us:.2f} us/request")


if __name__ == "__main__":
    main()
