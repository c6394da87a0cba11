"""load_config: YAML in, validated immutable Config out.

The pipeline follows upstream's LoadConfig step by step (env macros on the raw text, the
-config-dir files merged (sources.py), the other macros and ${PORT} on the YAML tree
(macros.py), decode with defaults, global checks, aliases, each model in sorted id order,
groups or matrix, preload, apiKeys, peers), so the first error a config hits is the one
upstream would report, with upstream's text. One addition fails at load what upstream only
rejects when it starts a model: an empty or unparsable ``cmd``. Three things upstream
refuses load with a warning, because upstream's own config.example.yaml has them: a group
member or a queue priority naming no model, and a model with neither ``${PORT}`` nor a
``proxy``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode

from . import apikeys
from .command import split_command
from .envsubst import substitute_env
from .errors import ConfigError
from .gocompat import (format_go_duration, go_quote, go_regexp, go_trim_space, parse_go_duration,
                       url_parse_error)
from .macros import MacroEngine
from .matrix import build_matrix
from .memory import check_actions, load_memory_section, load_model_memory, never_fits, never_fits_message
from .virtual import Names, build_profiles, build_selectors, decode_profiles, decode_selectors
from .model import (
    COMFYUI_CONCURRENCY_LIMIT,
    COMFYUI_MODEL_ID,
    DEFAULT_GROUP_ID,
    MODALITIES,
    RESTART_POLICIES,
    Capabilities,
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
    UpstreamConfig,
    freeze,
)
from .sources import NO_SOURCE, merge_sources, read_source, source_paths
from .yamlio import Decoder, compose, is_null, scalar_tag_value, short_tag

DEFAULT_UNLOAD_TIMEOUT = 5  # seconds; differences.md point 4
_LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")
_LOG_LEVELS = ("debug", "info", "warn", "error")
_PROTECTED_PARAMS = ("model",)
_MIN_PERFORMANCE_EVERY_NS = 5_000_000_000
_SCHEDULERS = ("fifo",)
_ROUTERS = ("group", "matrix")
_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"


def load_config(path: str, extra_models: Mapping[str, Node] | None = None,
                previous: Config | None = None) -> Config:
    """``previous``: the config in service when this is a reload (its models keep their
    ``${PORT}``, macros.py step 5)."""
    return _load_file(path, os.environ, extra_models, previous)


def _load_file(path: str, environ: Mapping[str, str],
               extra_models: Mapping[str, Node] | None = None,
               previous: Config | None = None) -> Config:
    return _Load(path, environ, extra_models, previous).run(
        read_source(path, environ, mapping_only=False))


def load_config_text(text: str, path: str = "<string>", environ: Mapping[str, str] | None = None,
                     extra_models: Mapping[str, Node] | None = None,
                     previous: Config | None = None) -> Config:
    """Load a config from its text; ``path`` is used in messages and kept in Config.path.
    ``extra_models`` (id -> model node, from -models-dir) are added unless the config
    defines that id or alias itself."""
    environ = os.environ if environ is None else environ
    return _Load(path, environ, extra_models, previous).run(
        compose(substitute_env(text, environ, path), path))


def load_config_sources(config_path: str | None, config_dir: str | None,
                        environ: Mapping[str, str] | None = None,
                        extra_models: Mapping[str, Node] | None = None,
                        previous: Config | None = None) -> Config:
    """``-config`` and/or ``-config-dir`` (sources.py): the files merged, then loaded as one.
    Config.path is the -config file, or the directory when there is none."""
    environ = os.environ if environ is None else environ
    if not config_dir:
        if not config_path:
            raise ConfigError(NO_SOURCE)
        return _load_file(config_path, environ, extra_models, previous)
    roots = [root for root in (read_source(p, environ) for p in source_paths(config_path, config_dir))
             if root is not None]
    return _Load(config_path or config_dir, environ, extra_models, previous).run(merge_sources(roots))


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
    ignore_websockets: bool = False
    use_model_name: str = ""
    name: str = ""
    description: str = ""
    concurrency_limit: int = 0
    strip_params: str = ""
    set_params: dict[str, Any] = field(default_factory=dict)
    set_params_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    send_loading_state: bool | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    unload_timeout: float = 0  # 0: use the global value
    capabilities: Capabilities = field(default_factory=Capabilities)
    health_check_interval: float = 0
    health_check_failures: int = 3
    restart: str = "never"
    sleep: str = ""
    wake: str = ""


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
                 extra_models: Mapping[str, Node] | None = None, previous: Config | None = None):
        self.source = source
        self.environ = environ
        self.extra_models = extra_models or {}
        self.keep_ports = None if previous is None else (
            previous.start_port, {m.id: m.port for m in previous.models.values() if m.port is not None})
        self.d = Decoder(source)

    def fail(self, message: str, key: str | None = None, node: Node | None = None) -> ConfigError:
        return self.d.error(message, key, node)

    # --- pipeline ------------------------------------------------------------------------

    def run(self, root: Node | None) -> Config:
        """The composed document (env macros already substituted) to a Config."""
        expanded = MacroEngine(self.d, self._start_port, self.keep_ports).run(
            self._with_extra_models(root))
        top = self.d.mapping(expanded.root, "(top level)", "config.Config")
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
        start_port = self._start_port(top.get("startPort"))
        send_loading_state = d.boolean(top.get("sendLoadingState"), "sendLoadingState")
        include_aliases = d.boolean(top.get("includeAliasesInList"), "includeAliasesInList")
        unload_timeout = d.number(top.get("unloadTimeout"), "unloadTimeout", 0)
        raw_keys = apikeys.decode(d, top.get("apiKeys"))
        self.memory = load_memory_section(d, top.get("memory"))
        models = {mid: self._model(mid, node) for mid, _, node in d.items(
            top.get("models"), "models", "map[string]config.ModelConfig")}
        legacy_profiles, raw_profiles = decode_profiles(d, top.get("profiles"))
        raw_selectors = decode_selectors(d, top.get("selectors"))
        groups_node = top.get("groups")
        groups = {gid: self._group(gid, node) for gid, _, node in d.items(
            groups_node, "groups", "map[string]config.GroupConfig")}
        matrix_node = top.get("matrix")
        routing = self._routing(top.get("routing"))
        preload = self._preload(top.get("hooks"))
        upstream = self._upstream(top.get("upstream"))
        peers = {pid: self._peer(pid, node) for pid, _, node in d.items(
            top.get("peers"), "peers", "config.PeerDictionaryConfig")}

        # global checks, in upstream's order
        health_check_timeout = max(health_check_timeout, 15)
        if perf_every_ns == 0:
            perf_every_ns = _MIN_PERFORMANCE_EVERY_NS
        if perf_every_ns < _MIN_PERFORMANCE_EVERY_NS:
            raise self.fail(f"performance: every must be at least 5s, got {format_go_duration(perf_every_ns)}",
                            "performance.every", top.get("performance"))
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
        built: dict[str, ModelConfig] = {}
        for mid in sorted(models):
            built[mid] = self._resolve_model(
                models[mid], models, aliases, expanded.ports.get(mid),
                global_ttl=global_ttl, send_loading_state=send_loading_state,
                health_check_timeout=health_check_timeout, unload_timeout=unload_timeout)

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
        warnings: list[str] = list(expanded.warnings)
        matrix = None
        group_configs: dict[str, GroupConfig] = {}
        if not is_null(matrix_node):
            matrix = build_matrix(self.d, matrix_node, built, aliases, warnings, where=matrix_where)
        else:
            group_configs = self._groups(groups, built, aliases, groups_node, groups_where, warnings)
        scheduler = self._scheduler(routing, built, aliases, warnings)

        real_preload = []
        for name in preload:
            name = go_trim_space(name)
            real = name if name in built else aliases.get(name)
            if name and real is not None:
                real_preload.append(real)
            elif name:  # upstream drops it without a word
                warnings.append(f"hooks.on_startup.preload: unknown model {name!r} will not be preloaded")

        if self.memory is not None:
            for mid in sorted(built):
                over = never_fits(built[mid].memory, self.memory)
                if over is not None:
                    warnings.append("memory: " + never_fits_message(mid, *over, self.memory.headroom)
                                    + "; its requests will get 503")

        api_keys, scoped_keys = apikeys.validate(d, raw_keys, top.get("apiKeys"))

        peer_configs = {pid: self._resolve_peer(peers[pid]) for pid in sorted(peers)}
        self._check_peer_namespace(peer_configs, built, aliases, top.get("peers"))
        names = Names(built, aliases, peer_configs)
        selectors = build_selectors(d, raw_selectors, names, group_configs, matrix, warnings,
                                    memory=self.memory is not None)
        profiles = build_profiles(d, raw_profiles, names, selectors, warnings)

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
            memory=self.memory,
            has_profiles=bool(legacy_profiles),
            profiles=freeze(profiles),
            selectors=freeze(selectors),
            upstream=upstream,
            warnings=tuple(warnings),
        )

    def _with_extra_models(self, root: Node | None) -> Node | None:
        """``root`` with the -models-dir models added under ``models`` (before macros, so
        they get ${PORT} like any other), except those whose id the config already uses as
        a model id or alias."""
        if not self.extra_models:
            return root
        d = self.d
        top = list(d.items(root, "(top level)", "config.Config"))
        models_node = next((v for name, _, v in top if name == "models"), None)
        entries = list(d.items(models_node, "models", "map[string]config.ModelConfig"))
        taken = {mid for mid, _, _ in entries}
        for mid, _, node in entries:
            fields = d.mapping(node, f"models.{mid}", "config.ModelConfig")
            taken.update(d.strings(fields.get("aliases"), f"models.{mid}.aliases"))
        pairs = [(k, v) for _, k, v in entries]
        pairs += [(ScalarNode(_STR_TAG, mid), node) for mid, node in self.extra_models.items()
                  if mid not in taken]
        models = MappingNode(_MAP_TAG, pairs)
        out = [(k, models if name == "models" else v) for name, k, v in top]
        if models_node is None:
            out.append((ScalarNode(_STR_TAG, "models"), models))
        return MappingNode(_MAP_TAG, out)

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

    def _start_port(self, node: Node | None) -> int:
        start_port = self.d.integer(node, "startPort", 5800)
        if start_port < 1:
            raise self.fail(f"startPort must be greater than 1 (got {start_port})", "startPort", node)
        return start_port

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
        compat = d.mapping(f.get("compat"), f"{key}.compat", "config.CompatConfig")
        raw.ignore_websockets = d.boolean(compat.get("ignoreWebsockets"),
                                          f"{key}.compat.ignoreWebsockets")
        raw.use_model_name = d.string(f.get("useModelName"), f"{key}.useModelName")
        raw.name = d.string(f.get("name"), f"{key}.name")
        raw.description = d.string(f.get("description"), f"{key}.description")
        raw.concurrency_limit = d.integer(f.get("concurrencyLimit"), f"{key}.concurrencyLimit")
        raw.strip_params, raw.set_params, raw.set_params_by_id = self._filters(
            f.get("filters"), f"{key}.filters", legacy=True)
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
        raw.sleep = d.string(f.get("sleep"), f"{key}.sleep")
        raw.wake = d.string(f.get("wake"), f"{key}.wake")
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
                   aliases: Mapping[str, str], warnings: list[str]) -> SchedulerConfig:
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
                # upstream refuses this, even in its own config.example.yaml (priorities for
                # models A-D it never defines): we warn and ignore the entry
                warnings.append(f"{where} references unknown model {go_quote(name)}; ignored")
                continue
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

    def _upstream(self, node: Node | None) -> UpstreamConfig:
        fields = self.d.mapping(node, "upstream", "config.UpstreamConfig")
        key = "upstream.ignorePaths"
        patterns = []
        for i, text in enumerate(self.d.strings(fields.get("ignorePaths"), key)):
            try:
                patterns.append(go_regexp(text))
            except re.error as e:
                raise self.fail(f"{key}: invalid regular expression {go_quote(text)}: error parsing "
                                f"regexp: {e}", f"{key}[{i}]", fields["ignorePaths"].value[i]) from None
        return UpstreamConfig(tuple(patterns)) if patterns else UpstreamConfig()

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
                       port: int | None, *, global_ttl: int, send_loading_state: bool,
                       health_check_timeout: int, unload_timeout: float) -> ModelConfig:
        """One model (macros already expanded), upstream's per-model steps in order."""
        mid, key, node = raw.id, f"models.{raw.id}", raw.node

        def fail(message: str, sub: str | None = None) -> ConfigError:
            at = raw.fields.get(sub.split(".")[0], node) if sub else node
            return self.fail(message, f"{key}.{sub}" if sub else key, at)

        cmd, cmd_stop, proxy = raw.cmd, raw.cmd_stop, raw.proxy
        by_id = raw.set_params_by_id
        sleep, wake = raw.sleep.strip(), raw.wake.strip()
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
        if raw.health_check_interval and raw.check_endpoint.strip().lower() == "none":
            raise fail(f"model {mid}: healthCheckInterval needs an endpoint to probe, but "
                       "checkEndpoint is none", "healthCheckInterval")
        problem = check_actions(mid, sleep, wake)
        if problem:
            raise fail(problem[1], problem[0])
        memory = load_model_memory(self.d, raw.fields.get("memory"), mid, self.memory)

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
            check_endpoint=raw.check_endpoint,
            ttl=ttl,
            unlisted=raw.unlisted,
            use_model_name=raw.use_model_name,
            name=raw.name,
            description=raw.description,
            # upstream's ComfyUI model: its browser app opens websockets and many requests
            concurrency_limit=max(raw.concurrency_limit, COMFYUI_CONCURRENCY_LIMIT)
            if mid == COMFYUI_MODEL_ID else raw.concurrency_limit,
            ignore_websockets=raw.ignore_websockets or mid == COMFYUI_MODEL_ID,
            filters=Filters(
                strip_params=sanitize_strip_params(raw.strip_params),
                set_params=freeze(_without_protected(raw.set_params)),
                set_params_by_id=freeze({k: _without_protected(v) for k, v in sorted(by_id.items())}),
            ),
            metadata=freeze(raw.metadata),
            send_loading_state=send_loading_state if raw.send_loading_state is None else raw.send_loading_state,
            timeouts=raw.timeouts,
            health_check_timeout=health_check_timeout,
            unload_timeout=raw.unload_timeout or unload_timeout,
            port=port,
            capabilities=caps,
            health_check_interval=raw.health_check_interval,
            health_check_failures=raw.health_check_failures,
            restart=raw.restart,
            memory=freeze(memory),
            sleep=sleep,
            wake=wake,
        )
        return model

    def _groups(self, groups: dict[str, dict[str, Any]], models: dict[str, ModelConfig],
                aliases: dict[str, str], groups_node: Node | None, where: str,
                warnings: list[str]) -> dict[str, GroupConfig]:
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
        # Upstream only finds an unknown member when it builds the router, and then refuses to
        # start, even on its own config.example.yaml (whose groups name models it never
        # defines). We warn and leave the member out. A member written as an alias means its
        # model.
        for gid in sorted(groups):
            known = []
            for member in groups[gid]["members"]:
                if member in models or member in aliases:
                    known.append(member)
                else:
                    warnings.append(f"{where}.{gid}.members: group {gid}: no model config for "
                                    f"{go_quote(member)}; the member is ignored")
            groups[gid] = {**groups[gid], "members": known}
        real = lambda m: m if m in models else aliases[m]  # noqa: E731
        check_members(real)
        return {gid: GroupConfig(id=gid, swap=g["swap"], exclusive=g["exclusive"], persistent=g["persistent"],
                                 members=tuple(real(m) for m in g["members"]))
                for gid, g in groups.items()}

    def _check_peer_namespace(self, peers: Mapping[str, PeerConfig], models: Mapping[str, ModelConfig],
                              aliases: Mapping[str, str], node: Node | None) -> None:
        """Every ``peerID/modelID`` names one peer model and no local model or alias."""
        owner: dict[str, tuple[str, str]] = {}
        for pid in sorted(peers):
            for model in dict.fromkeys(peers[pid].models):
                fqn = f"{pid}/{model}"
                if fqn in owner:
                    first_peer, first_model = owner[fqn]
                    raise self.fail(f"peer model name {go_quote(fqn)} is ambiguous between peers.{first_peer} "
                                    f"model {go_quote(first_model)} and peers.{pid} model {go_quote(model)}",
                                    f"peers.{pid}.models", node)
                owner[fqn] = (pid, model)
        for fqn in sorted(owner):
            if fqn in models:
                raise self.fail(f"model ID {go_quote(fqn)} conflicts with fully qualified peer model name",
                                f"models.{fqn}", node)
            if fqn in aliases:
                raise self.fail(f"model {aliases[fqn]} alias {go_quote(fqn)} conflicts with fully qualified "
                                "peer model name", f"models.{aliases[fqn]}.aliases", node)

    def _resolve_peer(self, raw: _RawPeer) -> PeerConfig:
        return PeerConfig(
            id=raw.id,
            proxy=raw.proxy,
            api_key=raw.api_key,
            models=tuple(raw.models),
            filters=Filters(
                strip_params=sanitize_strip_params(raw.strip_params),
                set_params=freeze(_without_protected(raw.set_params)),
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
