"""CPU of the profile-pin and selector step on the request path, in process (an end-to-end
run cannot resolve a fraction of a microsecond against ~260 us of proxy CPU per request).

Run: ``python benchmarks/virtual_bench.py`` (a few seconds). Each line is CPU microseconds
per request for ``http.virtual.rewrite`` on a JSON request (the loop's own cost subtracted):
- no profile active, a plain model (what every request pays);
- a profile active whose pins do not name the model;
- a request for a pin selector (the body is re-encoded with the target);
- a request for a spillover selector, its reservation released (choose + release).
"""

from __future__ import annotations

import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llamaswap.config.model import Config, ModelConfig, ProfileConfig, SelectorConfig  # noqa: E402
from llamaswap.http import virtual  # noqa: E402
from llamaswap.http.extract import Extracted  # noqa: E402
from llamaswap.router.profiles import ProfileSwitch  # noqa: E402
from llamaswap.router.selectors import Selectors  # noqa: E402

N = 100_000


class _Log:
    def debug(self, msg: str) -> None:
        pass


def app_for(config: Config, profile: str = "") -> types.SimpleNamespace:
    app = types.SimpleNamespace(config=config, processes={}, loggers=types.SimpleNamespace(log=_Log()))
    app.profiles = ProfileSwitch(config, profile)
    app.selectors = Selectors(config)
    return app


def per_request(app, model: str, step=virtual.rewrite) -> float:
    """CPU per request of `step`, less the loop's own (building the context and request)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    start = time.process_time()
    for _ in range(N):
        ctx = types.SimpleNamespace(app=app, state={})
        ex = Extracted(model=model, kind="json", obj=dict(body))
        _ok, done = step(ctx, ex)
        if done is not None:
            done()
    spent = (time.process_time() - start) / N * 1e6
    return spent if step is _nothing else spent - per_request(app, model, _nothing)


def _nothing(ctx, ex):
    return True, None


def main() -> None:
    models = {m: ModelConfig(id=m) for m in ("fast", "a", "b")}
    plain = Config(models=models)
    config = Config(models=models,
                    profiles={"p": ProfileConfig("p", pins={"other": "a"})},
                    selectors={"pin": SelectorConfig("pin", "pin", ("a", "b")),
                               "pool": SelectorConfig("pool", "spillover", ("a", "b"), spillover=2)})
    baseline = per_request(app_for(plain), "fast")
    print(f"no profile, a model: {baseline:.2f} us/request")
    print(f"profile active, pins not matching: {per_request(app_for(config, 'p'), 'fast'):.2f} us/request")
    print(f"pin selector: {per_request(app_for(config), 'pin'):.2f} us/request")
    print(f"spillover selector: {per_request(app_for(config), 'pool'):.2f} us/request")


if __name__ == "__main__":
    main()
