"""Standard-library modules that load when first used rather than when first imported.

``http.client`` (and so ``http.server``) imports ``ssl`` at once, which maps OpenSSL and costs
about 6 MB of resident memory and 10 ms at every start, although most proxies never speak
TLS. ``defer("ssl")`` puts a stand-in under that name: ``import ssl`` anywhere binds it, and
the first attribute read loads the real module and fills the stand-in with it, so both are the
same module's contents from then on. Unlike ``importlib.util.LazyLoader`` (not thread-safe
before Python 3.13), the first use is under a lock, so two threads that need TLS at once load
it once.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    def __getattr__(self, name: str):  # only for names the stand-in does not hold yet
        with _lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
                try:
                    real = importlib.import_module(self.__name__)
                except BaseException:
                    sys.modules[self.__name__] = self
                    raise
                self.__dict__.update(real.__dict__)
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def defer(name: str) -> None:
    """Load the module ``name`` at its first use. Nothing happens if it is loaded already."""
    if name not in sys.modules:
        sys.modules[name] = _Deferred(name)


def loaded(name: str) -> bool:
    """Whether the module ``name`` has really been loaded (for tests and benchmarks)."""
    module = sys.modules.get(name)
    return module is not None and not (isinstance(module, _Deferred)
                                       and "__file__" not in module.__dict__)
