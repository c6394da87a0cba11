"""load_config: YAML text in, validated immutable Config out.

The pipeline follows upstream's LoadConfig step by step (env macros on the raw text, decode
with defaults, global checks, aliases, macros per model in sorted id order, groups or
matrix, preload, apiKeys, peers), so the first error a config hits is the one upstream
would report, with upstream's text. Two additions, both failing at load what upstream only
rejects when it starts a model or builds its router: an empty or unparsable ``cmd``, and a
group member that is not a model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode

from . import apikeys
from . import macros as mac
from .command import split_command, strip_comments
from .envsubst import substitute_env
from .errors import ConfigError
from .gocompat import format_go_duration, go_quote, go_trim_space, parse_go_duration, url_parse_error
from .matrix import build_matrix
from .model import (
    DEFAULT_GROUP_ID,
    MODALITIES,
    Capabilities,
    RESTART_POLICIES,
    Config,
    FifoConfig,
    Filters,
    GroupConfig,
    ModelConfig,
    PeerConfig,
    PerformanceConfig,
    RoutingConfig,
    SchedulerConfig,
    Timeouts,
    freeze,
)
from .yamlio import Decoder, compose, is_null, scalar_tag_value, short_tag

DEFAULT_UNLOAD_TIMEOUT = 5  # seconds; differences.md point 4
_LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")
_LOG_LEVELS = ("debug", "info", "warn", "error")
_PROTECTED_PARAMS = ("model",)
_MIN_PERFORMANCE_EVERY_NS = 5_000_000_000
_SCHEDULERS = ("fifo",)
_ROUTERS = ("group", "matrix")


def load_config(path: str, extra_models: Mapping[str, Node] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: open {path}: {(e.strerror or str(e)).lower()}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8: {e}") from None
    return load_config_text(text, path, extra_models=extra_models)


def load_config_text(text: str, path: str = "<string>", environ: Mapping[str, str] | None = None,
                     extra_models: Mapping[str, Node] | None = None) -> Config:
    """Load a config from its text; ``path`` is used in messages and kept in Config.path.
    ``extra_models`` (id -> model node, from -models-dir) are added unless the config
    defines that id or alias itself."""
    return _Load(path, os.environ if environ is None else environ, extra_models).run(text)


# --- raw (decoded, not yet validated) pieces ---------------------------------------------

@dataclass
class _RawModel:
    id: str
    node: Node
    fields: dict[str, Node] = field(default_factory=dict)  # for error lines
    cmd: str = ""
    cmd_stop: str = ""
    proxy: str = "http://localhost:${PORT}"
    aliases: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    check_endpoint: str = "/health"
    ttl: int = -1  # -1: use globalTTL
    unlisted: bool = False
    use_model_name: str = ""
    name: str = ""
    description: str = ""
    concurrency_limit: int = 0
    strip_params: str = ""
    set_params: dict[str, Any] = field(default_factory=dict)
    set_params_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    macros: list[mac.Macro] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    send_loading_state: bool | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    unload_timeout: float = 0  # 0: use the global value
    capabilities: Capabilities = field(default_factory=Capabilities)
    health_check_interval: float = 0
    health_check_failures: int = 3
    restart: str = "never"


@dataclass
class _RawRouting:
    """``routing:`` decoded (types checked), not yet validated against the models."""
    node: Node | None = None
    scheduler_use: str = ""
    scheduler_use_node: Node | None = None
    fifo: dict[str, Node] = field(default_factory=dict)  # the fields of settings.fifo
    priority: dict[str, tuple[int, Node]] = field(default_factory=dict)  # as written -> (value, key node)
    max_wait: float = 0.0
    router_use: str = ""
    router_node: Node | None = None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups_node: Node | None = None
    matrix_node: Node | None = None

    @property
    def sets_router(self) -> bool:
        """Upstream's test for "the config uses routing.router"."""
        return self.router_use != "" or not is_null(self.matrix_node) or bool(self.groups)


@dataclass
class _RawPeer:
    id: str
    proxy: str
    api_key: str
    models: list[str]
    strip_params: str
    set_params: dict[str, Any]
    set_params_by_id: dict[str, dict[str, Any]]
    timeouts: Timeouts


class _Load:
    def __init__(self, source: str, environ: Mapping[str, str],
                 extra_models: Mapping[str, Node] | None = None):
        self.source = source
        self.environ = environ
        self.extra_models = extra_models or {}
        self.d = Decoder(source)

    def fail(self, message: str, key: str | None = None, node: Node | None = None) -> ConfigError:
        return self.d.error(message, key, node)

    # --- pipeline ------------------------------------------------------------------------

    def run(self, text: str) -> Config:
        text = substitute_env(text, self.environ, self.source)
        root = compose(text, self.source)
        top = self.d.mapping(root, "(top level)", "config.Config")
        d = self.d

        # decode everything first: type errors are YAML errors and come before validation
        health_check_timeout = d.integer(top.get("healthCheckTimeout"), "healthCheckTimeout", 120)
        log_requests = d.boolean(top.get("logRequests"), "logRequests")
        log_level = d.string(top.get("logLevel"), "logLevel", "info")
        log_time_format = d.string(top.get("logTimeFormat"), "logTimeFormat")
        log_to_stdout = d.string(top.get("logToStdout"), "logToStdout", "proxy")
        metrics_max = d.integer(top.get("metricsMaxInMemory"), "metricsMaxInMemory", 1000)
        capture_buffer = d.integer(top.get("captureBuffer"), "captureBuffer", 5)
        perf_disabled, perf_every_ns = self._performance(top.get("performance"))
        store_node = top.get("store")
        store_path = None if is_null(store_node) else \
            d.string(d.mapping(store_node, "store", "config.Store").get("path"), "store.path")
        global_ttl = d.integer(top.get("globalTTL"), "globalTTL", 0)
        start_port = d.integer(top.get("startPort"), "startPort", 5800)
        send_loading_state = d.boolean(top.get("sendLoadingState"), "sendLoadingState")
        include_aliases = d.boolean(top.get("includeAliasesInList"), "includeAliasesInList")
        unload_timeout = d.number(top.get("unloadTimeout"), "unloadTimeout", 0)
        raw_keys = apikeys.decode(d, top.get("apiKeys"))
        global_macros = self._macro_list(top.get("macros"), "macros")
        models = {mid: self._model(mid, node) for mid, _, node in d.items(
            top.get("models"), "models", "map[string]config.ModelConfig")}
        taken = set(models).union(*(m.aliases for m in models.values()))
        models.update((mid, self._model(mid, node)) for mid, node in self.extra_models.items()
                      if mid not in taken)
        profiles = {k: d.strings(v, f"profiles.{k}") for k, _, v in d.items(
            top.get("profiles"), "profiles", "map[string][]string")}
        groups_node = top.get("groups")
        groups = {gid: self._group(gid, node) for gid, _, node in d.items(
            groups_node, "groups", "map[string]config.GroupConfig")}
        matrix_node = top.get("matrix")
        routing = self._routing(top.get("routing"))
        preload = self._preload(top.get("hooks"))
        peers = {pid: self._peer(pid, node) for pid, _, node in d.items(
            top.get("peers"), "peers", "config.PeerDictionaryConfig")}

        # global checks, in upstream's order
        health_check_timeout = max(health_check_timeout, 15)
        if perf_every_ns == 0:
            perf_every_ns = _MIN_PERFORMANCE_EVERY_NS
        if perf_every_ns < _MIN_PERFORMANCE_EVERY_NS:
            raise self.fail(f"performance: every must be at least 5s, got {format_go_duration(perf_every_ns)}",
                            "performance.every", top.get("performance"))
        if start_port < 1:
            raise self.fail(f"startPort must be greater than 1 (got {start_port})", "startPort", top.get("startPort"))
        if global_ttl < 0:
            raise self.fail(f"globalTTL must be >= 0 (got {global_ttl})", "globalTTL", top.get("globalTTL"))
        if log_to_stdout not in _LOG_TO_STDOUT:
            raise self.fail(f"logToStdout must be one of: proxy, upstream, both, none (got {go_quote(log_to_stdout)})",
                            "logToStdout", top.get("logToStdout"))
        if unload_timeout < 0:
            raise self.fail(f"unloadTimeout must be >= 0 (got {_num(unload_timeout)})", "unloadTimeout",
                            top.get("unloadTimeout"))
        unload_timeout = unload_timeout or DEFAULT_UNLOAD_TIMEOUT
        if store_path is not None:
            store_path = self._store_path(store_path, store_node)

        aliases = self._aliases(models)
        for name, value, node in global_macros:
            self._check_macro(name, value, f"macros.{name}", node)

        built: dict[str, ModelConfig] = {}
        next_port = start_port
        for mid in sorted(models):
            model, used_port = self._resolve_model(
                models[mid], models, aliases, [(n, v) for n, v, _ in global_macros], next_port,
                global_ttl=global_ttl, send_loading_state=send_loading_state,
                health_check_timeout=health_check_timeout, unload_timeout=unload_timeout)
            next_port += used_port
            built[mid] = model

        # routing.router and the legacy top-level groups/matrix: one spelling or the other
        matrix_where, groups_where = "matrix", "groups"
        if routing.sets_router and (not is_null(matrix_node) or groups):
            raise self.fail("config uses both the legacy top-level 'matrix'/'groups' keys and the new "
                            "'routing.router' block; please migrate the top-level keys into "
                            "'routing.router' and remove them", "routing.router", routing.router_node)
        if routing.sets_router:
            if routing.router_use == "matrix":
                if is_null(routing.matrix_node):
                    raise self.fail("routing.router.use is 'matrix' but routing.router.settings.matrix is not set",
                                    "routing.router.use", routing.router_node)
                matrix_node, matrix_where = routing.matrix_node, "routing.router.settings.matrix"
            elif routing.router_use in ("group", ""):
                groups, groups_node = routing.groups, routing.groups_node
                groups_where = "routing.router.settings.groups"
            else:
                raise self.fail(f"routing.router.use: unknown router {go_quote(routing.router_use)} "
                                f"(valid: {', '.join(_ROUTERS)})", "routing.router.use", routing.router_node)
        if not is_null(matrix_node) and groups:
            raise self.fail("config cannot use both 'groups' and 'matrix'", "matrix", matrix_node)
        warnings: list[str] = []
        matrix = None
        group_configs: dict[str, GroupConfig] = {}
        if not is_null(matrix_node):
            matrix = build_matrix(self.d, matrix_node, built, aliases, warnings, where=matrix_where)
        else:
            group_configs = self._groups(groups, built, aliases, groups_node, groups_where)
        scheduler = self._scheduler(routing, built, aliases)

        real_preload = []
        for name in preload:
            name = go_trim_space(name)
            real = name if name in built else aliases.get(name)
            if name and real is not None:
                real_preload.append(real)
            elif name:  # upstream drops it without a word
                warnings.append(f"hooks.on_startup.preload: unknown model {name!r} will not be preloaded")

        api_keys, scoped_keys = apikeys.validate(d, raw_keys, top.get("apiKeys"))

        peer_configs = {pid: self._resolve_peer(peers[pid], [(n, v) for n, v, _ in global_macros])
                        for pid in sorted(peers)}

        # auto-aliases were appended to each model while resolving; the map is final now
        return Config(
            path=self.source,
            health_check_timeout=health_check_timeout,
            log_requests=log_requests,
            log_level=_log_level(log_level),
            log_time_format=log_time_format,
            log_to_stdout=log_to_stdout,
            metrics_max_in_memory=metrics_max if metrics_max > 0 else 1000,
            capture_buffer=capture_buffer,
            performance=PerformanceConfig(disabled=perf_disabled, every=perf_every_ns / 1e9),
            store_path=store_path,
            global_ttl=global_ttl,
            start_port=start_port,
            send_loading_state=send_loading_state,
            include_aliases_in_list=include_aliases,
            unload_timeout=unload_timeout,
            api_keys=api_keys,
            scoped_keys=scoped_keys,
            models=freeze(dict(sorted(built.items()))),
            groups=freeze(dict(sorted(group_configs.items()))),
            matrix=matrix,
            routing=RoutingConfig(scheduler=scheduler, router="matrix" if matrix is not None else "group"),
            preload=tuple(real_preload),
            peers=freeze(peer_configs),
            aliases=freeze(dict(sorted(aliases.items()))),
            has_profiles=bool(profiles),
            warnings=tuple(warnings),
        )

    # --- decoding ----------------------------------------------------------------------

    def _store_path(self, path: str, node: Node) -> str:
        """Upstream's checks that are mistakes in the config; a file that cannot be written
        (read-only, locked, corrupt, full disk) is not refused here: the proxy warns and keeps
        activity in memory instead (ops/activity/store.py)."""
        path = path.strip()
        if not path:
            raise self.fail("store.path must not be empty", None, node)
        if os.path.isdir(path):
            raise self.fail(f"store.path: {path} is a directory, not a file", None, node)
        return path

    def _performance(self, node: Node | None) -> tuple[bool, int]:
        fields = self.d.mapping(node, "performance", "config.PerformanceConfig")
        disabled = self.d.boolean(fields.get("disabled"), "performance.disabled")
        every = fields.get("every")
        if is_null(every):
            return disabled, _MIN_PERFORMANCE_EVERY_NS
        # time.Duration only decodes from a duration string: "15s" works, 15 does not
        ns = parse_go_duration(every.value) if isinstance(every, ScalarNode) and _is_str(every) else None
        if ns is None:
            raise self.d.type_error(every, "time.Duration", "performance.every")
        return disabled, ns

    def _macro_list(self, node: Node | None, key: str) -> list[tuple[str, Any, Node]]:
        """An ordered macro list; each entry keeps its node for error lines."""
        if is_null(node):
            return []
        if not isinstance(node, MappingNode):
            raise self.fail("macros must be a mapping", key, node)
        return [(self.d.key_text(k, key), self.d.any(v, f"{key}.{k.value}"), k) for k, v in node.value]

    def _check_macro(self, name: str, value: Any, key: str, node: Node, prefix: str = "") -> None:
        try:
            mac.validate_macro(name, value)
        except mac.MacroError as e:
            raise self.fail(f"{prefix}{e}", key, node) from None

    def _timeouts(self, node: Node | None, key: str, defaults: Timeouts) -> Timeouts:
        fields = self.d.mapping(node, key, "config.TimeoutsConfig")
        names = {"connect": "connect", "keepalive": "keepalive", "responseHeader": "response_header",
                 "tlsHandshake": "tls_handshake", "expectContinue": "expect_continue", "idleConn": "idle_conn"}
        values = {attr: self.d.integer(fields.get(yaml_key), f"{key}.{yaml_key}", getattr(defaults, attr))
                  for yaml_key, attr in names.items()}
        return Timeouts(**values)

    def _filters(self, node: Node | None, key: str, legacy: bool) -> tuple[str, dict, dict]:
        d = self.d
        fields = d.mapping(node, key, "config.Filters")
        strip = d.string(fields.get("stripParams"), f"{key}.stripParams")
        if legacy and strip == "":
            strip = d.string(fields.get("strip_params"), f"{key}.strip_params")
        set_params = d.any_map(fields.get("setParams"), f"{key}.setParams")
        by_id = {k: d.any_map(v, f"{key}.setParamsByID.{k}") for k, _, v in d.items(
            fields.get("setParamsByID"), f"{key}.setParamsByID", "map[string]map[string]interface {}")}
        return strip, set_params, by_id

    def _model(self, mid: str, node: Node) -> _RawModel:
        d = self.d
        key = f"models.{mid}"
        f = d.mapping(node, key, "config.ModelConfig")
        raw = _RawModel(id=mid, node=node, fields=f)
        raw.cmd = d.string(f.get("cmd"), f"{key}.cmd")
        raw.cmd_stop = d.string(f.get("cmdStop"), f"{key}.cmdStop")
        raw.proxy = d.string(f.get("proxy"), f"{key}.proxy", raw.proxy)
        raw.aliases = d.strings(f.get("aliases"), f"{key}.aliases")
        raw.env = d.strings(f.get("env"), f"{key}.env")
        raw.check_endpoint = d.string(f.get("checkEndpoint"), f"{key}.checkEndpoint", raw.check_endpoint)
        raw.ttl = d.integer(f.get("ttl"), f"{key}.ttl", raw.ttl)
        raw.unlisted = d.boolean(f.get("unlisted"), f"{key}.unlisted")
        raw.use_model_name = d.string(f.get("useModelName"), f"{key}.useModelName")
        raw.name = d.string(f.get("name"), f"{key}.name")
        raw.description = d.string(f.get("description"), f"{key}.description")
        raw.concurrency_limit = d.integer(f.get("concurrencyLimit"), f"{key}.concurrencyLimit")
        raw.strip_params, raw.set_params, raw.set_params_by_id = self._filters(
            f.get("filters"), f"{key}.filters", legacy=True)
        raw.macros = [(n, v) for n, v, _ in self._macro_list(f.get("macros"), f"{key}.macros")]
        raw.metadata = d.any_map(f.get("metadata"), f"{key}.metadata")
        raw.send_loading_state = d.optional_bool(f.get("sendLoadingState"), f"{key}.sendLoadingState")
        raw.timeouts = self._timeouts(f.get("timeouts"), f"{key}.timeouts", Timeouts())
        d.integer(f.get("healthCheckTimeout"), f"{key}.healthCheckTimeout")  # decoded, then ignored
        raw.unload_timeout = d.number(f.get("unloadTimeout"), f"{key}.unloadTimeout", 0)
        raw.capabilities = self._capabilities(f.get("capabilities"), f"{key}.capabilities")
        raw.health_check_interval = self._seconds(f.get("healthCheckInterval"), f"{key}.healthCheckInterval",
                                                  f"model {mid}: healthCheckInterval")
        failures = f.get("healthCheckFailures")
        if not is_null(failures):
            raw.health_check_failures = self._count(failures, f"{key}.healthCheckFailures",
                                                    f"model {mid}: healthCheckFailures")
        raw.restart = d.string(f.get("restart"), f"{key}.restart", "never")
        if raw.restart not in RESTART_POLICIES:
            raise self.fail(f"model {mid}: restart must be one of {', '.join(RESTART_POLICIES)} "
                            f"(got {go_quote(raw.restart)})", f"{key}.restart", f.get("restart"))
        return raw

    def _capabilities(self, node: Node | None, key: str) -> Capabilities:
        d = self.d
        f = d.mapping(node, key, "config.ModelCapConfig")
        return Capabilities(in_=tuple(d.strings(f.get("in"), f"{key}.in")),
                            out=tuple(d.strings(f.get("out"), f"{key}.out")),
                            tools=d.boolean(f.get("tools"), f"{key}.tools"),
                            reranker=d.boolean(f.get("reranker"), f"{key}.reranker"),
                            context=d.integer(f.get("context"), f"{key}.context"))

    def _seconds(self, node: Node | None, key: str, what: str) -> float:
        """A number of seconds (fractions allowed) or a Go duration string such as "30s";
        0 when absent. Negative and non-numeric values name `what`."""
        if is_null(node):
            return 0.0
        value = None
        if isinstance(node, ScalarNode):
            tag, parsed = scalar_tag_value(node)
            if tag in ("!!int", "!!float") and math.isfinite(parsed):
                value = float(parsed)
            elif tag == "!!str":
                ns = parse_go_duration(node.value.strip())
                value = None if ns is None else ns / 1e9
        if value is None:
            raise self.fail(f"{what} must be a number of seconds or a duration such as 30s "
                            f"(got {_shown(node)})", key, node)
        if value < 0:
            raise self.fail(f"{what} must be >= 0 (got {_num(value)})", key, node)
        return value

    def _count(self, node: Node, key: str, what: str) -> int:
        """A whole number of at least 1."""
        value = None
        if isinstance(node, ScalarNode):
            tag, parsed = scalar_tag_value(node)
            if tag == "!!int":
                value = parsed
        if value is None:
            raise self.fail(f"{what} must be a whole number (got {_shown(node)})", key, node)
        if value < 1:
            raise self.fail(f"{what} must be at least 1 (got {value})", key, node)
        return value

    def _routing(self, node: Node | None) -> _RawRouting:
        d = self.d
        raw = _RawRouting(node=node)
        f = d.mapping(node, "routing", "config.RoutingConfig")
        scheduler = d.mapping(f.get("scheduler"), "routing.scheduler", "config.SchedulerConfig")
        raw.scheduler_use = d.string(scheduler.get("use"), "routing.scheduler.use")
        raw.scheduler_use_node = scheduler.get("use")
        settings = d.mapping(scheduler.get("settings"), "routing.scheduler.settings", "config.SchedulerSettings")
        where = "routing.scheduler.settings.fifo"
        raw.fifo = d.mapping(settings.get("fifo"), where, "config.FifoConfig")
        raw.priority = {name: (d.integer(value, f"{where}.priority.{name}"), key) for name, key, value in d.items(
            raw.fifo.get("priority"), f"{where}.priority", "map[string]int")}
        raw.max_wait = self._seconds(raw.fifo.get("maxWait"), f"{where}.maxWait", f"{where}.maxWait")
        raw.router_node = f.get("router")
        router = d.mapping(raw.router_node, "routing.router", "config.RouterConfig")
        raw.router_use = d.string(router.get("use"), "routing.router.use")
        settings = d.mapping(router.get("settings"), "routing.router.settings", "config.RouterSettings")
        where = "routing.router.settings.groups"
        raw.groups_node = settings.get("groups")
        raw.groups = {gid: self._group(gid, g, where) for gid, _, g in d.items(
            raw.groups_node, where, "map[string]config.GroupConfig")}
        raw.matrix_node = settings.get("matrix")
        if not is_null(raw.matrix_node):
            d.mapping(raw.matrix_node, "routing.router.settings.matrix", "config.MatrixConfig")
        return raw

    def _scheduler(self, routing: _RawRouting, models: Mapping[str, ModelConfig],
                   aliases: Mapping[str, str]) -> SchedulerConfig:
        use = routing.scheduler_use or "fifo"
        if use not in _SCHEDULERS:
            raise self.fail(f"routing.scheduler.use: unknown scheduler {go_quote(use)} "
                            f"(valid: {', '.join(_SCHEDULERS)})", "routing.scheduler.use", routing.scheduler_use_node)
        where = "routing.scheduler.settings.fifo.priority"
        priority: dict[str, int] = {}
        for name in sorted(routing.priority):
            value, key_node = routing.priority[name]
            real = name if name in models else aliases.get(name)
            if real is None:
                raise self.fail(f"{where} references unknown model {go_quote(name)}", f"{where}.{name}", key_node)
            # a model's own id wins over one of its aliases written beside it
            if name == real or real not in routing.priority:
                priority[real] = value
        return SchedulerConfig(use=use, fifo=FifoConfig(priority=freeze(dict(sorted(priority.items()))),
                                                        max_wait=routing.max_wait))

    def _group(self, gid: str, node: Node, where: str = "groups") -> dict[str, Any]:
        d = self.d
        key = f"{where}.{gid}"
        if is_null(node):  # yaml.v3 skips the defaults for a null group: everything false
            return {"swap": False, "exclusive": False, "persistent": False, "members": [], "node": node}
        f = d.mapping(node, key, "config.GroupConfig")
        return {
            "swap": d.boolean(f.get("swap"), f"{key}.swap", True),
            "exclusive": d.boolean(f.get("exclusive"), f"{key}.exclusive", True),
            "persistent": d.boolean(f.get("persistent"), f"{key}.persistent"),
            "members": d.strings(f.get("members"), f"{key}.members"),
            "node": node,
        }

    def _preload(self, node: Node | None) -> list[str]:
        hooks = self.d.mapping(node, "hooks", "config.HooksConfig")
        on_startup = self.d.mapping(hooks.get("on_startup"), "hooks.on_startup", "config.HookOnStartup")
        return self.d.strings(on_startup.get("preload"), "hooks.on_startup.preload")

    def _peer(self, pid: str, node: Node) -> _RawPeer:
        d = self.d
        key = f"peers.{pid}"
        f = d.mapping(node, key, "config.PeerConfig")
        proxy = d.string(f.get("proxy"), f"{key}.proxy")
        api_key = d.string(f.get("apiKey"), f"{key}.apiKey")
        models = d.strings(f.get("models"), f"{key}.models")
        strip, set_params, by_id = self._filters(f.get("filters"), f"{key}.filters", legacy=False)
        timeouts = self._timeouts(f.get("timeouts"), f"{key}.timeouts", Timeouts(response_header=60))
        # upstream validates these while decoding, before any other check
        if proxy == "":
            raise self.fail("proxy is required", f"{key}.proxy", node)
        problem = url_parse_error(proxy)
        if problem:
            raise self.fail(f"invalid peer proxy URL ({proxy}): {problem}", f"{key}.proxy", f.get("proxy"))
        if not models:
            raise self.fail("peer models can not be empty", f"{key}.models", f.get("models", node))
        return _RawPeer(pid, proxy, api_key, models, strip, set_params, by_id, timeouts)

    # --- validation and resolution ---------------------------------------------------------

    def _aliases(self, models: dict[str, _RawModel]) -> dict[str, str]:
        aliases: dict[str, str] = {}
        for mid in sorted(models):
            for alias in models[mid].aliases:
                if alias in aliases:
                    raise self.fail(f"duplicate alias {alias} found in model: {mid}",
                                    f"models.{mid}.aliases", models[mid].node)
                aliases[alias] = mid
        return aliases

    def _resolve_model(self, raw: _RawModel, models: dict[str, _RawModel], aliases: dict[str, str],
                       global_macros: list[mac.Macro], next_port: int, *, global_ttl: int,
                       send_loading_state: bool, health_check_timeout: int,
                       unload_timeout: float) -> tuple[ModelConfig, int]:
        """One model, upstream's per-model steps in order; returns (config, ports used)."""
        mid, key, node = raw.id, f"models.{raw.id}", raw.node

        def fail(message: str, sub: str | None = None) -> ConfigError:
            at = raw.fields.get(sub.split(".")[0], node) if sub else node
            return self.fail(message, f"{key}.{sub}" if sub else key, at)

        cmd = strip_comments(raw.cmd)
        cmd_stop = strip_comments(raw.cmd_stop)
        ttl = global_ttl if raw.ttl == -1 else raw.ttl
        if ttl < 0:
            raise fail(f"model {mid}: invalid TTL value {ttl}", "ttl")
        if raw.unload_timeout < 0:
            raise fail(f"model {mid}: invalid unloadTimeout value {_num(raw.unload_timeout)}", "unloadTimeout")
        caps = raw.capabilities
        for side, modalities in (("in", caps.in_), ("out", caps.out)):
            for modality in modalities:
                if modality not in MODALITIES:
                    raise fail(f"model {mid}: capabilities.{side}: invalid modality {go_quote(modality)}, "
                               f"must be one of: {', '.join(MODALITIES)}", f"capabilities.{side}")
        if caps.context < 0:
            raise fail(f"model {mid}: capabilities.context: must be >= 0", "capabilities.context")
        for name, value in raw.macros:
            self._check_macro(name, value, f"{key}.macros.{name}", node, prefix=f"model {mid}: ")

        macros = mac.merge(mid, global_macros, raw.macros)
        proxy, check_endpoint = raw.proxy, raw.check_endpoint
        strip, name, description = raw.strip_params, raw.name, raw.description
        by_id, metadata = raw.set_params_by_id, raw.metadata
        for macro_name, value in reversed(macros):
            cmd = mac.replace(cmd, macro_name, value)
            cmd_stop = mac.replace(cmd_stop, macro_name, value)
            proxy = mac.replace(proxy, macro_name, value)
            check_endpoint = mac.replace(check_endpoint, macro_name, value)
            strip = mac.replace(strip, macro_name, value)
            name = mac.replace(name, macro_name, value)
            description = mac.replace(description, macro_name, value)
            by_id = {mac.replace(k, macro_name, value): mac.replace_in_value(v, macro_name, value)
                     for k, v in by_id.items()}
            metadata = mac.replace_in_value(metadata, macro_name, value)

        port = None
        if "${PORT}" in cmd:
            port = next_port
            cmd, cmd_stop, proxy, name, description = (
                mac.replace(s, "PORT", port) for s in (cmd, cmd_stop, proxy, name, description))
            metadata = mac.replace_in_value(metadata, "PORT", port)
        elif "${PORT}" in proxy:
            raise fail(f"model {mid}: proxy uses ${{PORT}} but cmd does not - ${{PORT}} is only "
                       "available when used in cmd", "proxy")

        for field_name, text in (("cmd", cmd), ("cmdStop", cmd_stop), ("proxy", proxy),
                                 ("checkEndpoint", check_endpoint), ("filters.stripParams", strip),
                                 ("name", name), ("description", description)):
            for ref in mac.leftover(text):
                if ref == "PID" and field_name == "cmdStop":
                    continue  # filled in when the model is stopped
                if ref in mac.RESERVED:
                    raise fail(f"macro '${{{ref}}}' should have been substituted in {mid}.{field_name}", field_name)
                raise fail(f"unknown macro '${{{ref}}}' found in {mid}.{field_name}", field_name)

        problem = mac.nested_leftover(metadata, f"model {mid} metadata")
        if problem:
            raise fail(problem, "metadata")
        for by_key in sorted(by_id):
            refs = mac.leftover(by_key)
            if refs:
                raise fail(f"unknown macro '${{{refs[0]}}}' found in model {mid} filters.setParamsByID key",
                           "filters.setParamsByID")
            problem = mac.nested_leftover(by_id[by_key], f"model {mid} filters.setParamsByID[{by_key}]")
            if problem:
                raise fail(problem, f"filters.setParamsByID.{by_key}")

        model_aliases = list(raw.aliases)
        for by_key in sorted(by_id):
            if by_key == mid:
                continue
            if by_key in models:
                raise fail(f"model {mid} filters.setParamsByID: key '{by_key}' conflicts with an existing model ID",
                           "filters.setParamsByID")
            owner = aliases.get(by_key)
            if owner is not None:
                if owner != mid:
                    raise fail(f"duplicate alias '{by_key}' in model {mid} filters.setParamsByID, "
                               f"already used by model {owner}", "filters.setParamsByID")
                continue  # already an explicit alias of this model
            aliases[by_key] = mid
            model_aliases.append(by_key)

        problem = url_parse_error(proxy)
        if problem:
            raise fail(f"model {mid}: invalid proxy URL: {problem}", "proxy")
        if raw.health_check_interval and check_endpoint.strip().lower() == "none":
            raise fail(f"model {mid}: healthCheckInterval needs an endpoint to probe, but "
                       "checkEndpoint is none", "healthCheckInterval")

        # Upstream accepts these at load and fails only when the model is started
        # ("unable to get sanitized command: empty command") or, for an unclosed quote,
        # runs a mangled command; we refuse both up front, naming the model.
        try:
            argv = split_command(cmd)
        except ConfigError as e:
            raise fail(f"model {mid}: cmd has an {e} (upstream would silently run it to the end)", "cmd") from None
        if not argv:
            raise fail(f"model {mid}: unable to get sanitized command: empty command", "cmd")

        model = ModelConfig(
            id=mid,
            cmd=cmd,
            argv=tuple(argv),
            cmd_stop=cmd_stop,
            proxy=proxy,
            aliases=tuple(model_aliases),
            env=tuple(raw.env),
            check_endpoint=check_endpoint,
            ttl=ttl,
            unlisted=raw.unlisted,
            use_model_name=raw.use_model_name,
            name=name,
            description=description,
            concurrency_limit=raw.concurrency_limit,
            filters=Filters(
                strip_params=sanitize_strip_params(strip),
                set_params=freeze(_without_protected(raw.set_params)),
                set_params_by_id=freeze({k: _without_protected(v) for k, v in sorted(by_id.items())}),
            ),
            metadata=freeze(metadata),
            send_loading_state=send_loading_state if raw.send_loading_state is None else raw.send_loading_state,
            timeouts=raw.timeouts,
            health_check_timeout=health_check_timeout,
            unload_timeout=raw.unload_timeout or unload_timeout,
            port=port,
            capabilities=caps,
            health_check_interval=raw.health_check_interval,
            health_check_failures=raw.health_check_failures,
            restart=raw.restart,
        )
        return model, 1 if port is not None else 0

    def _groups(self, groups: dict[str, dict[str, Any]], models: dict[str, ModelConfig],
                aliases: dict[str, str], groups_node: Node | None, where: str = "groups") -> dict[str, GroupConfig]:
        # model ids win over aliases, as in Config.real_model_name
        listed = {m if m in models else aliases.get(m, m) for g in groups.values() for m in g["members"]}
        groups = dict(groups)
        groups[DEFAULT_GROUP_ID] = {
            "swap": True, "exclusive": True, "persistent": False,
            "members": sorted(m for m in models if m not in listed), "node": groups_node,
        }

        def check_members(resolve) -> None:
            owner: dict[str, str] = {}
            for gid in sorted(groups):
                seen: set[str] = set()
                for member in groups[gid]["members"]:
                    member = resolve(member)
                    members_key = f"{where}.{gid}.members"
                    if member in seen:
                        raise self.fail(f"duplicate model member {member} found in group: {gid}",
                                        members_key, groups[gid]["node"])
                    seen.add(member)
                    if member in owner:
                        raise self.fail(f"model member {member} is used in multiple groups: {owner[member]} and {gid}",
                                        members_key, groups[gid]["node"])
                    owner[member] = gid

        check_members(lambda m: m)
        # Upstream only finds an unknown member when it builds the router (exit 1 at start,
        # reload refused); we report it at load. A member written as an alias means its model.
        for gid in sorted(groups):
            for member in groups[gid]["members"]:
                if member not in models and member not in aliases:
                    raise self.fail(f"group {gid}: no model config for {go_quote(member)}",
                                    f"{where}.{gid}.members", groups[gid]["node"])
        real = lambda m: m if m in models else aliases[m]  # noqa: E731
        check_members(real)
        return {gid: GroupConfig(id=gid, swap=g["swap"], exclusive=g["exclusive"], persistent=g["persistent"],
                                 members=tuple(real(m) for m in g["members"]))
                for gid, g in groups.items()}

    def _resolve_peer(self, raw: _RawPeer, global_macros: list[mac.Macro]) -> PeerConfig:
        key = f"peers.{raw.id}"
        api_key = mac.replace_all(raw.api_key, global_macros)
        strip = mac.replace_all(raw.strip_params, global_macros)
        set_params = mac.replace_all_in_value(raw.set_params, global_macros)
        refs = mac.leftover(api_key)
        if refs:
            raise self.fail(f"{key}.apiKey: unknown macro '${{{refs[0]}}}'", f"{key}.apiKey")
        refs = mac.leftover(strip)
        if refs:
            raise self.fail(f"{key}.filters.stripParams: unknown macro '${{{refs[0]}}}'", f"{key}.filters.stripParams")
        problem = mac.nested_leftover(set_params, f"{key}.filters.setParams")
        if problem:
            raise self.fail(problem, f"{key}.filters.setParams")
        return PeerConfig(
            id=raw.id,
            proxy=raw.proxy,
            api_key=api_key,
            models=tuple(raw.models),
            filters=Filters(
                strip_params=sanitize_strip_params(strip),
                set_params=freeze(_without_protected(set_params)),
                set_params_by_id=freeze({k: _without_protected(v) for k, v in sorted(raw.set_params_by_id.items())}),
            ),
            timeouts=raw.timeouts,
        )


def sanitize_strip_params(value: str) -> tuple[str, ...]:
    """Split on ',', trim, drop empties, duplicates and protected params, sort."""
    params = {go_trim_space(p) for p in value.split(",")} if value else set()
    return tuple(sorted(p for p in params if p and p not in _PROTECTED_PARAMS))


def _without_protected(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(params.items()) if k not in _PROTECTED_PARAMS}


def _log_level(value: str) -> str:
    level = go_trim_space(value).lower()
    return level if level in _LOG_LEVELS else "info"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shown(node: Node) -> str:
    """A bad value as an error message quotes it."""
    if isinstance(node, ScalarNode):
        return go_quote(node.value)
    return "a list" if short_tag(node) == "!!seq" else "a mapping"


def _is_str(node: ScalarNode) -> bool:
    return scalar_tag_value(node)[0] == "!!str"
