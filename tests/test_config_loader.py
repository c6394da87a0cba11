"""Loaded values: defaults, macros, ports, aliases, groups, matrix, peers, filters.

Mirrors the config edge cases of behaviour.md section 6 (upstream config tests).
"""

import textwrap
from types import MappingProxyType

import pytest
from matrix_oracle import expanded

from llamaswap.config import DEFAULT_GROUP_ID, ConfigError, load_config, load_config_text


def load(text, **env):
    return load_config_text(textwrap.dedent(text), "cfg.yaml", environ=env)


def test_defaults():
    # upstream TestConfig_DefaultValuesPosix
    c = load("""
        models:
          model1:
            cmd: path/to/cmd --port ${PORT}
        """)
    assert (c.health_check_timeout, c.start_port, c.log_level, c.log_to_stdout) == (120, 5800, "info", "proxy")
    assert (c.metrics_max_in_memory, c.capture_buffer, c.global_ttl, c.unload_timeout) == (1000, 5, 0, 5)
    assert c.performance.every == 5 and not c.performance.disabled
    assert not c.send_loading_state and not c.include_aliases_in_list and c.api_keys == ()
    assert c.matrix is None and c.peers == {} and c.preload == () and not c.has_profiles
    m = c.models["model1"]
    assert m.proxy == "http://localhost:5800" and m.port == 5800
    assert m.argv == ("path/to/cmd", "--port", "5800")
    assert (m.check_endpoint, m.ttl, m.cmd_stop, m.unlisted, m.concurrency_limit) == ("/health", 0, "", False, 0)
    assert m.effective_concurrency_limit == 10
    assert m.health_check_timeout == 120 and m.unload_timeout == 5 and m.send_loading_state is False
    assert (m.timeouts.connect, m.timeouts.keepalive, m.timeouts.response_header, m.timeouts.tls_handshake,
            m.timeouts.expect_continue, m.timeouts.idle_conn) == (30, 30, 0, 10, 1, 90)
    g = c.groups[DEFAULT_GROUP_ID]
    assert (g.swap, g.exclusive, g.persistent, g.members) == (True, True, False, ("model1",))


def test_config_is_immutable():
    c = load("models:\n  m:\n    cmd: x ${PORT}\n    metadata: {a: [1, {b: 2}]}\n")
    assert isinstance(c.models, MappingProxyType)
    assert isinstance(c.models["m"].metadata["a"], tuple)
    with pytest.raises(TypeError):
        c.models["m"].metadata["a"][1]["b"] = 3
    with pytest.raises(AttributeError):
        c.models["m"].ttl = 5  # frozen dataclass


def test_empty_document_loads_with_defaults():
    c = load("")
    assert c.models == {} and list(c.groups) == [DEFAULT_GROUP_ID] and c.groups[DEFAULT_GROUP_ID].members == ()


@pytest.mark.parametrize("value, expected", [(5, 15), (14, 15), (15, 15), (300, 300)])
def test_health_check_timeout_is_clamped_to_15(value, expected):
    c = load(f"healthCheckTimeout: {value}\nmodels:\n  m:\n    cmd: x ${{PORT}}\n")
    assert c.health_check_timeout == expected and c.models["m"].health_check_timeout == expected


def test_model_health_check_timeout_is_always_the_global_value():
    c = load("healthCheckTimeout: 30\nmodels:\n  m:\n    cmd: x ${PORT}\n    healthCheckTimeout: 99\n")
    assert c.models["m"].health_check_timeout == 30


@pytest.mark.parametrize("every, seconds", [("15s", 15), ("1m30s", 90), ("1.5h", 5400), ('"0"', 5), ("5000ms", 5)])
def test_performance_every_is_a_go_duration(every, seconds):
    assert load(f"performance:\n  every: {every}\n  disabled: true\n").performance.every == seconds


def test_performance_every_unquoted_zero_is_a_yaml_error_as_in_yaml_v3():
    # behaviour.md says "0 -> 5s"; that holds for the duration string "0", but yaml.v3 refuses
    # to decode the YAML integer 0 into a time.Duration, so upstream fails to load.
    with pytest.raises(ConfigError, match="cannot unmarshal !!int `0` into time.Duration"):
        load("performance:\n  every: 0\n")


def test_metrics_max_in_memory_non_positive_means_1000():
    assert load("metricsMaxInMemory: 0\n").metrics_max_in_memory == 1000
    assert load("metricsMaxInMemory: -3\n").metrics_max_in_memory == 1000
    assert load("metricsMaxInMemory: 7\n").metrics_max_in_memory == 7


@pytest.mark.parametrize("level, expected", [("DEBUG ", "debug"), ("warn", "warn"), ("error", "error"),
                                             ("verbose", "info")])
def test_log_level_is_normalised_like_upstream(level, expected):
    assert load(f"logLevel: '{level}'\n").log_level == expected


def test_automatic_ports_in_sorted_model_order():
    # upstream TestConfig_AutomaticPortAssignments
    c = load("""
        startPort: 5000
        models:
          model3:
            cmd: svr --port ${PORT}
          model1:
            cmd: svr --port ${PORT}
          fixed:
            cmd: svr --port 8080
            proxy: http://localhost:8080
          model2:
            cmd: svr --port ${PORT}
            proxy: http://172.11.22.33:${PORT}
        """)
    assert [(m.id, m.port) for m in c.models.values()] == [
        ("fixed", None), ("model1", 5000), ("model2", 5001), ("model3", 5002)]
    assert c.models["model2"].proxy == "http://172.11.22.33:5001"
    assert list(c.models) == sorted(c.models)


def test_a_reload_keeps_the_ports_of_models_that_stay():
    # adding or removing a model must not re-number the others: their cmd would change and
    # the reload would restart them (a GGUF file dropped into -models-dir, a model added)
    before = load("""
        startPort: 5000
        models:
          b: {cmd: "svr --port ${PORT}"}
          d: {cmd: "svr --port ${PORT}"}
          e: {cmd: "svr --port ${PORT}"}
        """)
    assert {m.id: m.port for m in before.models.values()} == {"b": 5000, "d": 5001, "e": 5002}
    text = textwrap.dedent("""
        startPort: 5000
        models:
          a: {cmd: "svr --port ${PORT}"}
          c: {cmd: "svr --port ${PORT}"}
          d: {cmd: "svr --port ${PORT} -v"}
          e: {cmd: "svr --port ${PORT}"}
          f: {cmd: "svr --port 9", proxy: "http://localhost:9"}
        """)
    after = load_config_text(text, previous=before)
    # new models skip b's 5000 as well: b may still be draining on it
    assert {m.id: m.port for m in after.models.values()} == {
        "a": 5003, "c": 5004, "d": 5001, "e": 5002, "f": None}
    assert after.models["e"] == before.models["e"] and after.models["e"].cmd == "svr --port 5002"
    assert after.models["d"].cmd == "svr --port 5001 -v"
    # a fresh start, or a new startPort, allocates in sorted order as upstream
    assert [m.port for m in load_config_text(text).models.values()] == [5000, 5001, 5002, 5003, None]
    assert load_config_text(text, previous=after).models["a"].port == 5003  # and stay there
    moved = load_config_text(text.replace("5000", "6000"), previous=before)
    assert [m.port for m in moved.models.values()] == [6000, 6001, 6002, 6003, None]


def test_port_only_allocated_when_cmd_uses_it_and_reaches_every_field():
    c = load("""
        models:
          a:
            cmd: x --port ${PORT}
            cmdStop: kill ${PORT} ${PID}
            name: "A on ${PORT}"
            description: "port ${PORT}"
            metadata: {port: "${PORT}", text: "p=${PORT}"}
        """)
    m = c.models["a"]
    assert (m.cmd_stop, m.name, m.description) == ("kill 5800 ${PID}", "A on 5800", "port 5800")
    assert m.metadata == {"port": 5800, "text": "p=5800"}


def test_macro_replacement_and_model_override():
    # upstream TestConfig_MacroReplacement
    c = load("""
        startPort: 9990
        macros:
          svr-path: "path/to/server"
          argOne: "--arg1"
          argTwo: "--arg2"
          autoPort: "--port ${PORT}"
        models:
          model1:
            macros:
              argTwo: "--arg2-override"
            cmd: |
              ${svr-path} ${argTwo}
              # ${argOne}
              --arg3 three
              ${autoPort}
        """)
    m = c.models["model1"]
    assert m.argv == ("path/to/server", "--arg2-override", "--arg3", "three", "--port", "9990")
    assert "#" not in m.cmd and m.port == 9990


def test_macro_in_comment_is_not_expanded_into_arguments():
    c = load("""
        macros:
          extra: "--bad"
        models:
          m:
            cmd: |
              srv --port ${PORT}
              # ${extra} ${undefined}
        """)
    assert c.models["m"].argv == ("srv", "--port", "5800")


def test_model_id_macro():
    # upstream TestConfig_MacroModelId
    c = load("""
        macros:
          docker: "docker run --name ${MODEL_ID}"
        models:
          "author/model:F16":
            cmd: ${docker} -p ${PORT} img ${MODEL_ID}
            cmdStop: docker stop ${MODEL_ID}
        """)
    m = c.models["author/model:F16"]
    assert m.argv == ("docker", "run", "--name", "author/model:F16", "-p", "5800", "img", "author/model:F16")
    assert m.cmd_stop == "docker stop author/model:F16"


def test_macros_lifo_order_and_override_seen_by_global_macro():
    # upstream macro_in_macro_test.go
    c = load("""
        macros:
          A: "value-A"
          B: "prefix-${A}-suffix"
          tag: base
          image: "img:${tag}"
        models:
          m1:
            cmd: echo ${B} ${image}
            proxy: http://localhost:8080
          m2:
            macros:
              tag: special
              A: model-A
            cmd: echo ${B} ${image}
            proxy: http://localhost:8080
        """)
    assert c.models["m1"].cmd == "echo prefix-value-A-suffix img:base"
    assert c.models["m2"].cmd == "echo prefix-model-A-suffix img:special"


def test_macro_values_of_every_scalar_type_are_formatted_like_go():
    c = load("""
        macros:
          s: text
          i: 42
          f: 0.5
          big: 1e21
          whole: 2.0
          b: true
          octal: 0o17
        models:
          m:
            cmd: x ${s} ${i} ${f} ${big} ${whole} ${b} ${octal}
            proxy: http://h:1
        """)
    assert c.models["m"].argv == ("x", "text", "42", "0.5", "1e+21", "2", "true", "15")


def test_typed_macros_in_metadata_and_nested_structures():
    c = load("""
        macros:
          PORT_NUM: 10001
          temp: 0.7
          flag: false
          label: "ctx"
        models:
          model1:
            cmd: x
            proxy: http://h:1
            metadata:
              port: ${PORT_NUM}
              temperature: ${temp}
              enabled: ${flag}
              note: "port ${PORT_NUM} temp ${temp} id ${MODEL_ID}"
              nested:
                list: [1, "${temp}", {k: "${label}"}]
                "${label}": keys are not substituted
        """)
    md = c.models["model1"].metadata
    assert md["port"] == 10001 and isinstance(md["port"], int)
    assert md["temperature"] == 0.7 and md["enabled"] is False
    assert md["note"] == "port 10001 temp 0.7 id model1"
    assert md["nested"]["list"] == (1, 0.7, {"k": "ctx"})
    assert md["nested"]["${label}"] == "keys are not substituted"


def test_yaml_scalars_follow_yaml_v3_not_yaml_1_1():
    c = load("""
        models:
          m:
            cmd: x
            proxy: http://h:1
            unlisted: yes
            name: 1.50
            metadata: {a: yes, b: 1:30, c: 2024-01-02, d: 0x1F, e: 1_000, f: ~, g: .inf, h: 010}
        """)
    m = c.models["m"]
    assert m.unlisted is True  # a typed bool field still accepts yes/no, as yaml.v3 does
    assert m.name == "1.50"    # string fields keep the text as written
    assert m.metadata == {"a": "yes", "b": "1:30", "c": "2024-01-02", "d": 31, "e": 1000, "f": None,
                          "g": float("inf"), "h": 8}


def test_anchors_and_merge_keys():
    c = load("""
        x-common: &common
          proxy: http://h:1
          ttl: 30
        models:
          a:
            <<: *common
            cmd: a
          b:
            <<: *common
            cmd: b
            ttl: 60
        """)
    assert (c.models["a"].ttl, c.models["b"].ttl, c.models["b"].proxy) == (30, 60, "http://h:1")


def test_global_ttl_and_model_override():
    # upstream TestConfig_GlobalTTL
    c = load("""
        globalTTL: 300
        models:
          inherits:
            cmd: x ${PORT}
          never:
            cmd: x ${PORT}
            ttl: 0
          own:
            cmd: x ${PORT}
            ttl: 5
        """)
    assert [c.models[m].ttl for m in ("inherits", "never", "own")] == [300, 0, 5]


def test_unload_timeout_global_and_per_model():
    c = load("""
        unloadTimeout: 25
        models:
          a:
            cmd: x ${PORT}
          b:
            cmd: x ${PORT}
            unloadTimeout: 45
          c:
            cmd: x ${PORT}
            unloadTimeout: 0
        """)
    assert c.unload_timeout == 25
    assert [c.models[m].unload_timeout for m in "abc"] == [25, 45, 25]
    assert load("unloadTimeout: 0\n").unload_timeout == 5


def test_send_loading_state_inherits_global_and_model_overrides():
    c = load("""
        sendLoadingState: true
        models:
          inherit:
            cmd: x ${PORT}
          off:
            cmd: x ${PORT}
            sendLoadingState: false
        """)
    assert c.models["inherit"].send_loading_state is True and c.models["off"].send_loading_state is False


def test_model_filters_and_legacy_strip_params():
    # upstream TestConfig_ModelFilters
    c = load("""
        macros:
          default_strip: "temperature, top_p"
        models:
          legacy:
            cmd: x ${PORT}
            filters:
              strip_params: "model, top_k, ${default_strip}, , top_k"
          current:
            cmd: x ${PORT}
            filters:
              stripParams: "b,a"
              strip_params: "ignored"
              setParams: {model: no, top_p: 0.5, c: [1, 2]}
        """)
    assert c.models["legacy"].filters.strip_params == ("temperature", "top_k", "top_p")
    f = c.models["current"].filters
    assert f.strip_params == ("a", "b")
    assert f.set_params == {"c": (1, 2), "top_p": 0.5}


def test_set_params_by_id_auto_aliases():
    # upstream TestConfig_SetParamsByIDAutoAlias
    c = load("""
        macros:
          effort: high
        models:
          model1:
            cmd: x ${PORT}
            aliases: [explicit]
            filters:
              setParamsByID:
                "${MODEL_ID}":
                  reasoning: medium
                "${MODEL_ID}:high":
                  reasoning: ${effort}
                  model: dropped
                explicit:
                  n: 1
        """)
    m = c.models["model1"]
    assert m.aliases == ("explicit", "model1:high")
    assert c.aliases == {"explicit": "model1", "model1:high": "model1"}
    assert c.real_model_name("model1:high") == "model1"
    assert m.filters.set_params_by_id == {"explicit": {"n": 1}, "model1": {"reasoning": "medium"},
                                          "model1:high": {"reasoning": "high"}}


def test_alias_equal_to_another_model_id_is_shadowed():
    c = load("models:\n  a:\n    cmd: x ${PORT}\n    aliases: [b]\n  b:\n    cmd: y ${PORT}\n")
    assert c.real_model_name("b") == "b" and c.aliases["b"] == "a"


def test_env_macros_substituted_and_escaped():
    # upstream TestConfig_EnvMacros
    c = load("""
        macros:
          home: ${env.HOME_DIR}
        models:
          m:
            cmd: ${home}/srv --port ${PORT}
            cmdStop: "stop ${env.QUOTED}"
            filters:
              stripParams: "${env.STRIP}"
            metadata:
              path: "${env.QUOTED}"
        apiKeys: ["${env.KEY}"]
        """, HOME_DIR="/opt/models", QUOTED='say "hi" \\o/', STRIP="temperature", KEY="sk-1")
    m = c.models["m"]
    assert m.argv[0] == "/opt/models/srv"
    assert m.cmd_stop == 'stop say "hi" \\o/'
    assert m.metadata["path"] == 'say "hi" \\o/'
    assert m.filters.strip_params == ("temperature",) and c.api_keys == ("sk-1",)


def test_env_macros_in_comments_are_ignored():
    # upstream TestConfig_PeerApiKey_EnvMacros (comment cases)
    c = load("""
        # ${env.UNSET_FULL_LINE}
        models:
          m:
            # indented ${env.UNSET_INDENTED}
            cmd: x ${PORT}  # inline ${env.UNSET_INLINE}
        """)
    assert c.models["m"].argv == ("x", "5800")


def test_peers_with_env_and_global_macros():
    c = load("""
        macros:
          key: "sk-${env.SECRET}"
          strip: temperature
          zdr: true
        models:
          m:
            cmd: x ${PORT}
        peers:
          zeta:
            proxy: http://z
            models: [b]
          alpha:
            proxy: https://openrouter.ai/api
            apiKey: ${key}
            models: [a, b]
            filters:
              stripParams: "${strip}, model"
              setParams:
                provider: {zdr: "${zdr}", note: "z=${zdr}"}
            timeouts:
              responseHeader: 0
        """, SECRET="s3")
    assert list(c.peers) == ["alpha", "zeta"]
    p = c.peers["alpha"]
    assert p.api_key == "sk-s3" and p.models == ("a", "b")
    assert p.filters.strip_params == ("temperature",)
    assert p.filters.set_params == {"provider": {"zdr": True, "note": "z=true"}}
    assert p.timeouts.response_header == 0 and p.timeouts.connect == 30
    assert c.peers["zeta"].timeouts.response_header == 60  # peers default to 60, models to 0


def test_timeouts_zero_allowed():
    c = load("""
        models:
          m:
            cmd: x ${PORT}
            timeouts: {connect: 0, keepalive: 0, responseHeader: 0, tlsHandshake: 0, expectContinue: 0, idleConn: 0}
        """)
    t = c.models["m"].timeouts
    assert (t.connect, t.keepalive, t.response_header, t.tls_handshake, t.expect_continue, t.idle_conn) == (0,) * 6


def test_groups_with_default_group():
    c = load("""
        models:
          a: {cmd: "x ${PORT}"}
          b: {cmd: "x ${PORT}", aliases: [b-alias]}
          c: {cmd: "x ${PORT}"}
          d: {cmd: "x ${PORT}"}
        groups:
          g1:
            swap: false
            members: [a, b-alias]
          g2:
            exclusive: false
            persistent: true
            members: [c]
        """)
    assert list(c.groups) == [DEFAULT_GROUP_ID, "g1", "g2"]
    assert c.groups["g1"].members == ("a", "b")  # an alias member means its model
    assert (c.groups["g1"].swap, c.groups["g1"].exclusive) == (False, True)
    assert (c.groups["g2"].exclusive, c.groups["g2"].persistent) == (False, True)
    assert c.groups[DEFAULT_GROUP_ID].members == ("d",)
    assert c.group_of("c").id == "g2"


def test_matrix_solver_order_and_costs():
    # upstream TestValidateMatrix_Basic / WithRef / ConfigMatrixOnly
    c = load("""
        models:
          m1: {cmd: "x ${PORT}"}
          m2: {cmd: "x ${PORT}"}
          m3: {cmd: "x ${PORT}"}
        matrix:
          vars: {a: m1, b: m2, c: m3}
          evict_costs: {c: 7}
          sets:
            combo: "+pair & c"
            pair: "a | b"
            solo: c
        """)
    mx = c.matrix
    assert c.groups == {}
    assert mx.sets == (("combo", "+pair & c"), ("pair", "a | b"), ("solo", "c"))
    # dependency first (pair), then definition order
    assert expanded(mx.compiled_sets) == [
        ("pair", ("m1",)), ("pair", ("m2",)),
        ("combo", ("m1", "m3")), ("combo", ("m2", "m3")),
        ("solo", ("m3",))]
    assert mx.evict_costs == {"c": 7} and mx.model_evict_costs == {"m3": 7}
    assert mx.evict_cost("m3") == 7 and mx.evict_cost("m1") == 1


def test_matrix_at_head_long_var_ids_and_real_model_ids_in_sets_and_costs():
    # upstream 4c50064e: var ids up to 32 characters with '-' and '.', model ids used directly
    c = load("""
        models:
          qwen2.5-coder-32b: {cmd: "x ${PORT}"}
          nomic-embed-v1.5: {cmd: "x ${PORT}"}
          whisper: {cmd: "x ${PORT}"}
        matrix:
          vars: {coder-32b.q4: qwen2.5-coder-32b}
          evict_costs: {coder-32b.q4: 9, whisper: 4}
          sets:
            dev: "coder-32b.q4 & nomic-embed-v1.5"
            voice: "whisper & nomic-embed-v1.5"
        """)
    mx = c.matrix
    assert expanded(mx.compiled_sets) == [("dev", ("nomic-embed-v1.5", "qwen2.5-coder-32b")),
                                          ("voice", ("nomic-embed-v1.5", "whisper"))]
    assert mx.model_evict_costs == {"qwen2.5-coder-32b": 9, "whisper": 4}
    assert mx.compiled_sets[0].support == {"qwen2.5-coder-32b", "nomic-embed-v1.5"}


def test_matrix_var_wins_over_a_model_of_the_same_name():
    c = load("""
        models:
          a: {cmd: "x ${PORT}"}
          b: {cmd: "x ${PORT}"}
        matrix:
          vars: {a: b}
          sets: {s: a}
        """)
    assert expanded(c.matrix.compiled_sets) == [("s", ("b",))]


def test_matrix_has_no_expansion_limit():
    # 4^12 = 16.7 M combinations: compiled, never expanded (upstream 0c423336)
    models = [f"m{i}-{j}" for i in range(12) for j in range(4)]
    dsl = " & ".join("(" + " | ".join(f"m{i}-{j}" for j in range(4)) + ")" for i in range(12))
    c = load("models:\n" + "".join(f"  {m}: {{cmd: 'x ${{PORT}}'}}\n" for m in models)
             + f"matrix:\n  sets:\n    big: '{dsl}'\n    again: '+big & +big'\n")
    assert [s.name for s in c.matrix.compiled_sets] == ["big", "again"]
    assert c.matrix.compiled_sets[1].root == ("and", (c.matrix.compiled_sets[0].root,) * 2)
    assert c.matrix.compiled_sets[1].root[1][0] is c.matrix.compiled_sets[0].root  # shared, not copied


def test_preload_resolved_through_aliases_and_unknown_dropped():
    c = load("""
        models:
          m: {cmd: "x ${PORT}", aliases: [alias]}
          n: {cmd: "x ${PORT}"}
        hooks:
          on_startup:
            preload: [" alias ", "", ghost, n]
        """)
    assert c.preload == ("m", "n")


def test_profiles_only_set_a_warning_flag():
    assert load("profiles:\n  p: [a, b]\n").has_profiles
    assert not load("profiles: {}\n").has_profiles


def test_unknown_keys_are_ignored():
    c = load("notAKey: 1\nmodels:\n  m:\n    cmd: x ${PORT}\n    whatever: [1]\n")
    assert list(c.models) == ["m"]


def test_model_fields_passed_through():
    c = load("""
        includeAliasesInList: true
        models:
          m:
            cmd: x ${PORT}
            env: ["A=1", "B=${not_a_macro}"]
            useModelName: upstream/name
            concurrencyLimit: 3
            unlisted: true
            checkEndpoint: none
        """)
    m = c.models["m"]
    assert m.env == ("A=1", "B=${not_a_macro}")  # env gets no macro substitution
    assert (m.use_model_name, m.concurrency_limit, m.unlisted, m.check_endpoint) == ("upstream/name", 3, True, "none")
    assert c.include_aliases_in_list


def test_load_config_from_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models:\n  m:\n    cmd: x ${PORT}\n    ttl: -2\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value).startswith(f"{path}:4: models.m.ttl: ")
    path.write_text("models:\n  m:\n    cmd: x ${PORT}\n")
    assert load_config(str(path)).path == str(path)


def test_group_member_that_is_both_a_model_id_and_an_alias_means_the_model():
    c = load("""
        models:
          a: {cmd: "x ${PORT}", aliases: [b]}
          b: {cmd: "x ${PORT}"}
        groups:
          g: {members: [b]}
        """)
    assert c.groups["g"].members == ("b",) and c.groups[DEFAULT_GROUP_ID].members == ("a",)
