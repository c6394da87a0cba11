"""The macro engine on the YAML tree (upstream-head.md section 11): anchors, merge keys,
scalar types, ${MODEL_ID}, ${PORT} and ${PID} where upstream allows them, and the leftover
checks with today's upstream texts."""

import textwrap

import pytest

from llamaswap.config import ConfigError, load_config_text


def load(text, **env):
    return load_config_text(textwrap.dedent(text), "cfg.yaml", environ=env)


def error_of(text, **env):
    with pytest.raises(ConfigError) as e:
        load(text, **env)
    return str(e.value)


def test_exact_macro_keeps_its_type_interpolation_gives_text():
    c = load("""
        macros:
          ctx: 16384
          tools: true
          ratio: 0.5
          ttl: 300
          n: 42
        models:
          m:
            cmd: srv --port ${PORT} -c ${ctx}
            ttl: ${ttl}
            concurrencyLimit: ${n}
            name: x-${n}
            capabilities:
              context: ${ctx}
              tools: ${tools}
            metadata:
              ctx: ${ctx}
              ratio: ${ratio}
              label: "ctx=${ctx}"
              flags: ["${tools}", "${n}"]
        """)
    m = c.models["m"]
    assert m.argv == ("srv", "--port", "5800", "-c", "16384")
    assert (m.ttl, m.concurrency_limit, m.name) == (300, 42, "x-42")
    assert (m.capabilities.context, m.capabilities.tools) == (16384, True)
    assert m.metadata == {"ctx": 16384, "ratio": 0.5, "label": "ctx=16384", "flags": (True, 42)}


def test_a_string_macro_in_an_int_field_is_a_type_error():
    message = error_of("""
        macros:
          t: "300"
        models:
          m:
            cmd: srv --port ${PORT}
            ttl: ${t}
        """)
    assert "cfg.yaml:7: models.m.ttl" in message and "cannot unmarshal !!str `300` into int" in message


def test_anchors_and_merge_keys_expand_per_model():
    c = load("""
        macros:
          dir: &dir /models
          ctx: &ctx 8192
        x-defaults: &defaults
          cmd: srv --model ${dir}/${MODEL_ID}.gguf --port ${PORT} -c ${ctx}
          ttl: 60
          metadata: {id: "${MODEL_ID}", port: "${PORT}", base: *dir}
          capabilities: {context: *ctx}
        models:
          a:
            <<: *defaults
          b:
            <<: *defaults
            ttl: 5
            macros: {ctx: 4096}
        """)
    a, b = c.models["a"], c.models["b"]
    assert a.argv == ("srv", "--model", "/models/a.gguf", "--port", "5800", "-c", "8192")
    assert b.argv == ("srv", "--model", "/models/b.gguf", "--port", "5801", "-c", "4096")
    assert (a.ttl, b.ttl) == (60, 5)
    assert a.metadata == {"id": "a", "port": 5800, "base": "/models"}
    assert b.metadata == {"id": "b", "port": 5801, "base": "/models"}
    assert a.capabilities.context == b.capabilities.context == 8192


def test_global_macros_reach_every_top_level_value():
    c = load("""
        macros:
          sp: 9000
          key: sk-one
          peer-url: http://10.0.0.2:8080
          lvl: debug
          m: llama
          prio: 3
        startPort: ${sp}
        logLevel: ${lvl}
        apiKeys: ["${key}"]
        hooks: {on_startup: {preload: ["${m}"]}}
        routing:
          scheduler:
            settings:
              fifo:
                priority: {llama: "${prio}"}   # keys are never expanded, values are
        peers:
          p:
            proxy: ${peer-url}
            apiKey: ${key}
            models: ["remote-${m}"]
        models:
          llama:
            cmd: srv --port ${PORT}
        """)
    assert c.models["llama"].port == 9000 and c.log_level == "debug"
    assert c.routing.scheduler.fifo.priority == {"llama": 3}
    assert c.api_keys == ("sk-one",) and c.preload == ("llama",)
    assert c.peers["p"].proxy == "http://10.0.0.2:8080" and c.peers["p"].api_key == "sk-one"
    assert c.peers["p"].models == ("remote-llama",)


def test_port_reaches_every_field_of_its_model_and_pid_stays_for_cmd_stop():
    c = load("""
        models:
          m:
            cmd: srv --port ${PORT}
            cmdStop: "kill ${PID} port=${PORT}"
            checkEndpoint: /health?port=${PORT}
            env: ["PORT=${PORT}"]
            filters:
              stripParams: "p${PORT}"
              setParamsByID:
                "${MODEL_ID}:${PORT}": {port: "${PORT}"}
        """)
    m = c.models["m"]
    assert m.check_endpoint == "/health?port=5800" and m.env == ("PORT=5800",)
    assert m.cmd_stop == "kill ${PID} port=5800"
    assert m.filters.strip_params == ("p5800",)
    assert dict(m.filters.set_params_by_id) == {"m:5800": {"port": 5800}}
    assert "m:5800" in m.aliases


def test_env_keeps_an_unknown_placeholder_as_the_reference_revision_did():
    c = load("""
        macros: {home: /srv}
        models:
          m:
            cmd: srv --port ${PORT}
            env: ["A=${home}/bin", "B=${not_a_macro}"]
        """)
    assert c.models["m"].env == ("A=/srv/bin", "B=${not_a_macro}")


def test_unknown_top_level_keys_are_not_checked():
    c = load("""
        x-notes: "uses ${something} literally"
        models:
          m:
            cmd: srv --port ${PORT}
        """)
    assert c.models["m"].port == 5800


@pytest.mark.parametrize("text,expected", [
    ("models:\n  m:\n    cmd: srv ${PORT}\n    capabilities: {in: ['${nope}']}\n",
     "model m capabilities: unknown macro '${nope}'"),
    ("models:\n  m:\n    cmd: srv ${PORT}\n    aliases: ['${nope}']\n",
     "model m aliases: unknown macro '${nope}'"),
    ("models:\n  m:\n    cmd: srv ${PORT}\n    useModelName: '${MODEL_ID}-${x}'\n",
     "model m useModelName: unknown macro '${x}'"),
    ("models:\n  m:\n    cmd: srv ${PORT}\n    cmdStop: kill ${PID} ${MODEL_ID} ${y}\n",
     "unknown macro '${y}' found in m.cmdStop"),
    ("models:\n  m:\n    cmd: srv ${PORT}\ngroups:\n  g:\n    members: ['${MODEL_ID}']\n",
     "groups.g.members[0]: unknown macro '${MODEL_ID}'"),
    ("models:\n  m:\n    cmd: srv ${PORT}\nhooks:\n  on_startup:\n    preload: ['${PORT}']\n",
     "hooks.on_startup.preload[0]: unknown macro '${PORT}'"),
    ("models:\n  m:\n    cmd: srv ${PORT}\n    filters:\n      setParamsByID:\n        'a${PORT}': {}\n"
     "        'a5800': {}\n",
     "model m filters.setParamsByID: keys \"a5800\" and \"a5800\" resolve to the same value"),
    ("macros:\n  PID: 1\nmodels:\n  m:\n    cmd: srv\n", "macro name 'PID' is reserved"),
    ("startPort: ${sp}\nmacros: {sp: 0}\nmodels:\n  m:\n    cmd: srv ${PORT}\n",
     "startPort must be greater than 1"),
])
def test_leftovers_and_declarations_use_upstream_texts(text, expected):
    message = error_of(text)
    assert message.startswith("cfg.yaml") and expected in message


def test_model_macros_are_validated_before_anything_is_expanded():
    message = error_of("""
        models:
          m:
            cmd: srv ${PORT} ${nope}
            macros: {"bad name": 1}
        """)
    assert "model m: macro name 'bad name' contains invalid characters" in message


def test_no_port_and_no_proxy_loads_with_a_warning():
    # upstream refuses this, yet its own config.example.yaml has such a model
    c = load("""
        models:
          unlisted-model:
            cmd: some-upstream-server
        """)
    m = c.models["unlisted-model"]
    assert m.proxy == "http://localhost:5800" and m.port == 5800
    assert c.warnings == ("model unlisted-model: cmd does not use ${PORT} and no proxy is set, so it "
                          "gets the default proxy http://localhost:${PORT} with a port its command "
                          "does not know about; set proxy to where the server listens",)
