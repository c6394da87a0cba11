"""The loaded configuration: immutable values that the rest of the program only reads.

Field names are the snake_case forms of upstream's YAML keys. Everything here is already
resolved by the loader: macros expanded, defaults applied, ttl and sendLoadingState inherited
from the globals, ports allocated. Mappings are read-only (``types.MappingProxyType``) and
sequences are tuples, so a config can be shared between threads without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

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


@dataclass(frozen=True)
class ExpandedSet:
    name: str  # the set it came from
    dsl: str
    models: tuple[str, ...]  # real model ids, sorted


@dataclass(frozen=True)
class MatrixConfig:
    vars: Mapping[str, str] = field(default_factory=_empty)  # var id -> real model id
    evict_costs: Mapping[str, int] = field(default_factory=_empty)  # var id -> cost, as written
    sets: tuple[tuple[str, str], ...] = ()  # (name, dsl) in definition order
    expanded_sets: tuple[ExpandedSet, ...] = ()  # solver order: topological, then expansion
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
class PeerConfig:
    id: str
    proxy: str
    api_key: str = ""
    models: tuple[str, ...] = ()
    filters: Filters = field(default_factory=Filters)
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(response_header=60))


@dataclass(frozen=True)
class PerformanceConfig:
    disabled: bool = False
    every: float = 5.0  # seconds


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
    api_keys: tuple[str, ...] = ()
    models: Mapping[str, ModelConfig] = field(default_factory=_empty)  # sorted by id
    groups: Mapping[str, GroupConfig] = field(default_factory=_empty)  # includes "(default)" unless a matrix is used
    matrix: MatrixConfig | None = None
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    preload: tuple[str, ...] = ()  # real model ids
    peers: Mapping[str, PeerConfig] = field(default_factory=_empty)  # sorted by id
    aliases: Mapping[str, str] = field(default_factory=_empty)  # alias -> real model id
    memory: MemoryConfig | None = None  # None: no memory section, nothing is measured
    has_profiles: bool = False  # the removed `profiles:` feature was present (warn)
    warnings: tuple[str, ...] = ()  # loaded, but worth a WARN line at startup and reload

    def real_model_name(self, name: str) -> str | None:
        """Model ids win over aliases, as upstream's RealModelName."""
        if name in self.models:
            return name
        return self.aliases.get(name)

    def group_of(self, model_id: str) -> GroupConfig | None:
        for group in self.groups.values():
            if model_id in group.members:
                return group
        return None
