"""CPU of the profile-pin and selector step on the request path, in process (an end-to-end
run cannot resolve a fraction of a microsecond against ~260 us of proxy CPU per request).

Run: ``python benchmarks/virtual_bench.py`` (a few seconds). Each line is CPU microseconds
per request for ``http.virtual.rewrite`` on a JSON request (the loop's own cost subtracted):
- no profile active, a plain model (what every request pays);
- a profile active whose pins do not name the model;
- a request for a pin selector (the body is re-encoded with the target);
- a request for a spillover selector, its reservation released (choose + release);
- a pin selector on a short chat and a long one (about 100 KB and 1 MB of messages, the
  model key last as the OpenAI SDK writes it): the model value spliced into the body as received, against
  re-encoding the whole parsed body (what every selector request paid before), A/B in one run.
"""

from __future__ import annotations

import json
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
PROSE = "Load the older model first, then hold it while the loader decodes the modes. " * 8


class _Log:
    def debug(self, msg: str) -> None:
        pass


def app_for(config: Config, profile: str = "") -> types.SimpleNamespace:
    app = types.SimpleNamespace(config=config, processes={}, loggers=types.SimpleNamespace(log=_Log()))
    app.profiles = ProfileSwitch(config, profile)
    app.selectors = Selectors(config)
    return app


def per_request(app, model: str, step=virtual.rewrite, messages: int = 1, n: int = N) -> float:
    """CPU per request of `step`, less the loop's own (building the context and request)."""
    text = PROSE if messages > 1 else "hello"
    body = {"messages": [{"role": "user", "content": text}] * messages, "model": model}
    data = json.dumps(body).encode()
    start = time.process_time()
    for _ in range(n):
        ctx = types.SimpleNamespace(app=app, state={})
        ex = Extracted(model=model, kind="json", obj=dict(body), data=data)
        _ok, done = step(ctx, ex)
        if done is not None:
            done()
    spent = (time.process_time() - start) / n * 1e6
    return spent if step is _nothing else spent - per_request(app, model, _nothing, messages, n)


def _no_splice(data: bytes, old: str, new: str) -> None:
    return None  # what every selector request did before: re-encode the parsed body


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
    for messages, size, n in ((1, "short", N // 5), (160, "100 KB", 300), (1600, "1 MB", 30)):
        spliced = per_request(app_for(config), "pin", messages=messages, n=n)
        splice, virtual.filters.with_model = virtual.filters.with_model, _no_splice
        try:
            encoded = per_request(app_for(config), "pin", messages=messages, n=n)
        finally:
            virtual.filters.with_model = splice
        print(f"pin selector, {size} chat: spliced {spliced:.1f} us/request, re-encoded {encoded:.1f} "
              f"us/request: ratio {spliced / encoded:.3f}")


if __name__ == "__main__":
    main()
