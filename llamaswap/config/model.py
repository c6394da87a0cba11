"""The loaded configuration: immutable values that the rest of the program only reads.

Field names are the snake_case forms of upstream's YAML keys. Everything here is already
resolved by the loader: macros expanded, defaults applied, ttl and sendLoadingState inherited
from the globals, ports allocated. Mappings are read-only (``types.MappingProxyType``) and
sequences are tuples, so a config can be shared between threads without copying.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

DEFAULT_GROUP_ID = "(default)"
DEFAULT_CONCURRENCY_LIMIT = 10
RESTART_POLICIES = ("never", "on-failure", "always")
LOG_BUFFER_SIZE = 100 * 1024

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


def freeze(value: Any) -> Any:
    """Deep-freeze plain YAML data: dicts become read-only mappings, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`, for JSON encoding and body rewriting."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Timeouts:
    """Seconds; 0 means no timeout. Peers default ``response_header`` to 60."""

    connect: float = 30
    keepalive: float = 30
    response_header: float = 0
    tls_handshake: float = 10
    expect_continue: float = 1
    idle_conn: float = 90


@dataclass(frozen=True)
class Filters:
    # sanitised: split on ',', trimmed, empties, duplicates and "model" dropped, sorted
    strip_params: tuple[str, ...] = ()
    # "model" already removed; apply in sorted key order
    set_params: Mapping[str, Any] = field(default_factory=_empty)
    # requested id -> params (macros expanded, type-preserving); "model" already removed
    set_params_by_id: Mapping[str, Mapping[str, Any]] = field(default_factory=_empty)


MODALITIES = ("text", "audio", "image")


@dataclass(frozen=True)
class Capabilities:
    """A model's ``capabilities`` block: what it takes in and gives out, for /v1/models.
    All zero means not configured."""

    in_: tuple[str, ...] = ()  # YAML key ``in``; each one of MODALITIES
    out: tuple[str, ...] = ()
    tools: bool = False
    reranker: bool = False
    context: int = 0

    @property
    def empty(self) -> bool:
        return not (self.in_ or self.out or self.tools or self.reranker or self.context)

    def rendered(self) -> dict[str, Any]:
        """The fields upstream adds to a /v1/models record (``architecture``,
        ``capabilities``, ``supported_parameters``, ``context_length``), each only when it
        has something to say; maps have their keys sorted, as Go encodes them."""
        out: dict[str, Any] = {}
        if self.empty:
            return out
        arch: dict[str, Any] = {}
        if self.in_:
            arch["input_modalities"] = list(self.in_)
        if self.in_ and self.out:
            arch["modality"] = "+".join(self.in_) + "->" + "+".join(self.out)
        if self.out:
            arch["output_modalities"] = list(self.out)
        if arch:
            out["architecture"] = arch
        caps: dict[str, bool] = {}
        if self.in_ and self.out:
            for flag, src, dst in (("audio_transcriptions", "audio", "text"),
                                   ("audio_speech", "text", "audio"),
                                   ("image_generation", "text", "image"),
                                   ("image_to_image", "image", "image")):
                if src in self.in_ and dst in self.out:
                    caps[flag] = True
        if "image" in self.in_:
            caps["vision"] = True
        if self.tools:
            caps["function_calling"] = True
        if self.reranker:
            caps["reranker"] = True
        if caps:
            out["capabilities"] = dict(sorted(caps.items()))
        if self.tools:
            out["supported_parameters"] = ["tools", "tool_choice"]
        if self.context > 0:
            out["context_length"] = self.context
        return out


@dataclass(frozen=True)
class ModelConfig:
    id: str
    cmd: str = ""  # macros expanded, whole-line comments removed (shown by /running)
    argv: tuple[str, ...] = ()  # cmd split like a POSIX shell (see config.command)
    cmd_stop: str = ""  # macros expanded; still contains ${PID}
    proxy: str = ""  # base URL of the backend
    aliases: tuple[str, ...] = ()  # includes setParamsByID auto-aliases
    env: tuple[str, ...] = ()  # "NAME=value" entries appended to the parent environment
    check_endpoint: str = "/health"  # "none" skips the health check
    ttl: int = 0  # resolved against globalTTL; 0 = never unload
    unlisted: bool = False
    use_model_name: str = ""
    name: str = ""
    description: str = ""
    concurrency_limit: int = 0  # 0 or less means DEFAULT_CONCURRENCY_LIMIT
    filters: Filters = field(default_factory=Filters)
    metadata: Mapping[str, Any] = field(default_factory=_empty)
    send_loading_state: bool = False  # resolved against the global value
    timeouts: Timeouts = field(default_factory=Timeouts)
    health_check_timeout: int = 120  # always the global value, as upstream
    unload_timeout: float = 5  # grace before SIGKILL for every graceful stop
    port: int | None = None  # the ${PORT} allocated to this model, if any
    capabilities: Capabilities = field(default_factory=Capabilities)
    health_check_interval: float = 0  # seconds between probes while ready; 0 = no watch
    health_check_failures: int = 3  # consecutive failed probes that mark the backend dead
    restart: str = "never"  # "never" | "on-failure" | "always" (see RESTART_POLICIES)
    memory: Mapping[str, int] = field(default_factory=_empty)  # declared need per device, bytes
    sleep: str = ""  # "METHOD /path" or a command (macros expanded, ${PID} left); "" = cannot sleep
    wake: str = ""  # set exactly when sleep is

    @property
    def effective_concurrency_limit(self) -> int:
        return self.concurrency_limit if self.concurrency_limit > 0 else DEFAULT_CONCURRENCY_LIMIT


@dataclass(frozen=True)
class GroupConfig:
    id: str
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False
    members: tuple[str, ...] = ()


# A compiled matrix expression: ("leaf", model id) | ("and", children) | ("or", children).
# A `+ref` is the referenced set's own root object, so shared sub-expressions are one object
# (a DAG) and the solver evaluates each once per query. Never expanded into combinations.
MatrixNode = tuple


@dataclass(frozen=True)
class MatrixSet:
    name: str
    dsl: str  # as written
    root: MatrixNode
    support: frozenset[str]  # every model id the expression can name


@dataclass(frozen=True)
class MatrixConfig:
    vars: Mapping[str, str] = field(default_factory=_empty)  # var id -> real model id
    evict_costs: Mapping[str, int] = field(default_factory=_empty)  # var id or model id -> cost, as written
    sets: tuple[tuple[str, str], ...] = ()  # (name, dsl) in definition order
    compiled_sets: tuple[MatrixSet, ...] = ()  # solver order: topological over `+ref`s, then definition
    model_evict_costs: Mapping[str, int] = field(default_factory=_empty)  # real model id -> cost (missing = 1)

    def evict_cost(self, model_id: str) -> int:
        return self.model_evict_costs.get(model_id, 1)


@dataclass(frozen=True)
class FifoConfig:
    """``routing.scheduler.settings.fifo``."""

    # real model id -> priority (keys written as aliases are resolved); missing = 0
    priority: Mapping[str, int] = field(default_factory=_empty)
    # seconds the oldest queued request waits before it forces its swap; 0 = no bound
    max_wait: float = 0

    def priority_of(self, model_id: str) -> int:
        return self.priority.get(model_id, 0)


@dataclass(frozen=True)
class SchedulerConfig:
    """``routing.scheduler``: ``use`` is always "fifo" (the only scheduler)."""

    use: str = "fifo"
    fifo: FifoConfig = field(default_factory=FifoConfig)


@dataclass(frozen=True)
class RoutingConfig:
    """The ``routing:`` section, normalised: the legacy top-level ``groups``/``matrix``
    land here too. The effective groups or matrix stay in ``Config.groups`` /
    ``Config.matrix``; ``router`` says which of the two is in use."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    router: str = "group"  # "group" | "matrix"


@dataclass(frozen=True)
class ProfileConfig:
    """A runtime-selectable set of pins (``profiles.<id>`` in map shape)."""

    id: str
    description: str = ""
    # requested id -> target (model, alias, peer model or selector); "" disables the id
    pins: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True)
class SelectorConfig:
    """A virtual model id (``selectors.<id>``) that picks one of its targets per request."""

    id: str
    strategy: str  # "pin" | "warm" | "spillover"
    targets: tuple[str, ...]  # as written: a request's model becomes one of these
    spillover: int = 1  # settings.spillover
    name: str = ""
    description: str = ""
    unlisted: bool = False
    metadata: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True)
class PeerConfig:
    id: str
    proxy: str
    api_key: str = ""
    models: tuple[str, ...] = ()
    filters: Filters = field(default_factory=Filters)
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(response_header=60))


class PeerModel(NamedTuple):
    peer: PeerConfig
    model_id: str  # the name the peer knows the model by

    @property
    def fqn(self) -> str:
        return f"{self.peer.id}/{self.model_id}"


def peer_namespace(peers: Mapping[str, PeerConfig]) -> dict[str, PeerModel]:
    names: dict[str, PeerModel] = {}
    bare: dict[str, list[PeerModel]] = {}
    for pid in sorted(peers):
        for model in dict.fromkeys(peers[pid].models):
            route = PeerModel(peers[pid], model)
            names.setdefault(route.fqn, route)  # an ambiguous FQN is a load error
            bare.setdefault(model, []).append(route)
    for model, routes in bare.items():
        if len(routes) == 1 and model not in names:
            names[model] = routes[0]
    return names


PLAIN_KEY_NAME = "-"  # the name shown for a plain-string key and for open access


@dataclass(frozen=True)
class ApiKey:
    """One ``apiKeys`` entry. A plain string is ``ApiKey(key)``: every model, no limit, admin.
    ``key`` is a secret: it is left out of ``repr`` and must never be logged or shown."""

    key: str = field(repr=False)
    name: str = PLAIN_KEY_NAME
    models: tuple[str, ...] = ("*",)  # shell-style patterns (fnmatch, case-sensitive)
    max_in_flight: int = 0  # requests in flight at once, over every model; 0 = no limit
    admin: bool = True  # may use the operations routes (plain strings: True; objects: False)
    _match: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "*" not in self.models:  # one regex for all the patterns, compiled once
            pattern = "|".join(fnmatch.translate(p) for p in self.models) or "(?!)"
            object.__setattr__(self, "_match", re.compile(pattern).match)

    @property
    def every_model(self) -> bool:
        return self._match is None

    def allows(self, *names: str | None) -> bool:
        """True when any of ``names`` (the name a request sends, its alias, the model id it
        resolves to...) matches one of the patterns."""
        match = self._match
        return match is None or any(n is not None and match(n) is not None for n in names)


@dataclass(frozen=True)
class PerformanceConfig:
    disabled: bool = False
    every: float = 5.0  # seconds


DEFAULT_IGNORE_PATHS = (r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",)


@dataclass(frozen=True)
class UpstreamConfig:
    """The ``upstream:`` section: how ``/upstream/<model>/<path>`` behaves."""

    # compiled `ignorePaths` (searched, unanchored, in the decoded path after the model);
    # a match for a local model that is not ready answers 409 instead of starting it
    ignore_paths: tuple[re.Pattern, ...] = tuple(re.compile(p) for p in DEFAULT_IGNORE_PATHS)

    def ignores(self, path: str) -> bool:
        return any(p.search(path) for p in self.ignore_paths)


@dataclass(frozen=True)
class MemoryConfig:
    """The ``memory:`` section. A budget of None is ``auto`` (the device's detected total,
    read when the proxy starts)."""

    devices: Mapping[str, int | None] = field(default_factory=_empty)  # "gpu0"/"ram" -> bytes
    headroom: int = 0  # bytes kept free on every managed device
    every: float = 5.0  # seconds between measurements while models are resident


@dataclass(frozen=True)
class Config:
    path: str | None = None
    health_check_timeout: int = 120
    log_requests: bool = False
    log_level: str = "info"
    log_time_format: str = ""
    log_to_stdout: str = "proxy"
    metrics_max_in_memory: int = 1000
    capture_buffer: int = 5  # MB
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    # store.path: the SQLite activity file; None keeps activity in memory (metricsMaxInMemory)
    store_path: str | None = None
    global_ttl: int = 0
    start_port: int = 5800
    send_loading_state: bool = False
    include_aliases_in_list: bool = False
    unload_timeout: float = 5
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # every key value, plain or not
    scoped_keys: tuple[ApiKey, ...] = field(default=(), repr=False)  # the object entries
    models: Mapping[str, ModelConfig] = field(default_factory=_empty)  # sorted by id
    groups: Mapping[str, GroupConfig] = field(default_factory=_empty)  # includes "(default)" unless a matrix is used
    matrix: MatrixConfig | None = None
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    preload: tuple[str, ...] = ()  # real model ids
    peers: Mapping[str, PeerConfig] = field(default_factory=_empty)  # sorted by id
    aliases: Mapping[str, str] = field(default_factory=_empty)  # alias -> real model id
    memory: MemoryConfig | None = None  # None: no memory section, nothing is measured
    has_profiles: bool = False  # list-shaped `profiles:` of the reference revision were present (warn)
    profiles: Mapping[str, ProfileConfig] = field(default_factory=_empty)  # map-shaped ones, sorted by id
    selectors: Mapping[str, SelectorConfig] = field(default_factory=_empty)  # sorted by id
    warnings: tuple[str, ...] = ()  # loaded, but worth a WARN line at startup and reload
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)

    def real_model_name(self, name: str) -> str | None:
        """Model ids win over aliases, as upstream's RealModelName."""
        if name in self.models:
            return name
        return self.aliases.get(name)

    @cached_property
    def peer_names(self) -> Mapping[str, "PeerModel"]:
        """Every name that routes to a peer (upstream-head.md section 8): ``peerID/modelID``
        for each peer model, and the bare ``modelID`` when exactly one peer offers it and it is
        not itself some peer's qualified name. Local ids and aliases win over these."""
        return peer_namespace(self.peers)

    def peer_model(self, name: str) -> "PeerModel | None":
        return None if name in self.models or name in self.aliases else self.peer_names.get(name)

    def api_key_entries(self) -> tuple[ApiKey, ...]:
        """One ApiKey per key value, in ``apiKeys`` order: the object entry where there is
        one, else full access (a plain string)."""
        scoped = {k.key: k for k in self.scoped_keys}
        return tuple(scoped.get(k) or ApiKey(k) for k in self.api_keys)

    def group_of(self, model_id: str) -> GroupConfig | None:
        for group in self.groups.values():
            if model_id in group.members:
                return group
        return None
