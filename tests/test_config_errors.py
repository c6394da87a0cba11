"""Every load error of behaviour.md section 2, each asserting upstream's text.

Messages are ``<file>[:line]: <key path>: <upstream text>``; the tests check that the
upstream text is contained, plus the file name.
"""

import textwrap

import pytest

from llamaswap.config import ConfigError, load_config_text

M = "models:\n  m1:\n    cmd: srv --port ${PORT}\n"  # a valid minimal model section


def load(text, **env):
    return load_config_text(textwrap.dedent(text), "cfg.yaml", environ=env)


def error_of(text, **env):
    with pytest.raises(ConfigError) as e:
        load(text, **env)
    message = str(e.value)
    assert message.startswith("cfg.yaml")
    assert_key_said_once(message)
    return message


def assert_key_said_once(message: str) -> None:
    """``<file>[:line]: <key path>: <text>``: no key path left blank or said twice (the
    text may begin with the path itself, as upstream's often do: then it is not repeated)."""
    parts = message.split(": ")
    if len(parts) > 2:
        key, text = parts[1], parts[2]
        assert key == key.rstrip(". ") and not text.startswith(key), message


CASES = {
    # --- YAML decoding ---
    "startPort not an int": ("startPort: abcd\n" + M, "cannot unmarshal !!str `abcd` into int"),
    "bool field gets a list": ("sendLoadingState: [1]\n" + M, "cannot unmarshal !!seq into bool"),
    "models is a list": ("models: [a]\n", "cannot unmarshal !!seq into map[string]config.ModelConfig"),
    "duplicate key": ("models:\n  m1:\n    cmd: a\n    cmd: b\n",
                      'line 4: mapping key "cmd" already defined at line 3'),
    "performance.every is a number": ("performance:\n  every: 15\n" + M,
                                      "cannot unmarshal !!int `15` into time.Duration"),
    "performance.every not a duration": ("performance:\n  every: soon\n" + M,
                                         "cannot unmarshal !!str `soon` into time.Duration"),
    "macros not a mapping": ("macros: [a, b]\n" + M, "macros must be a mapping"),
    "model macros not a mapping": ("models:\n  m1:\n    cmd: x ${PORT}\n    macros: 3\n", "macros must be a mapping"),
    "profiles map-shaped without pins": ("profiles:\n  p:\n    a: b\n" + M, "profiles.p.pins must contain at least one entry"),
    "profiles scalar": ("profiles:\n  p: x\n" + M, "cannot unmarshal !!str `x` into []string"),
    # --- globals ---
    "performance every below 5s": ("performance:\n  every: 4s\n" + M, "performance: every must be at least 5s, got 4s"),
    "performance every negative": ("performance:\n  every: -1m\n" + M, "performance: every must be at least 5s, got -1m0s"),
    "startPort below 1": ("startPort: -99\n" + M, "startPort must be greater than 1"),
    "startPort zero": ("startPort: 0\n" + M, "startPort must be greater than 1"),
    "globalTTL negative": ("globalTTL: -1\n" + M, "globalTTL must be >= 0"),
    "logToStdout unknown": ("logToStdout: stderr\n" + M, "logToStdout must be one of: proxy, upstream, both, none"),
    "unloadTimeout negative": ("unloadTimeout: -1\n" + M, "unloadTimeout must be >= 0"),
    "duplicate alias": ("models:\n  m1:\n    cmd: a ${PORT}\n    aliases: [x]\n"
                        "  m2:\n    cmd: b ${PORT}\n    aliases: [x]\n", "duplicate alias x found in model: m2"),
    # --- macros ---
    "macro name too long": ("macros:\n  " + "a" * 64 + ": v\n" + M,
                            f"macro name '{'a' * 64}' exceeds maximum length of 63 characters"),
    "macro name invalid": ("macros:\n  'a.b': v\n" + M,
                           "macro name 'a.b' contains invalid characters, must match pattern ^[a-zA-Z0-9_-]+$"),
    "macro value list": ("macros:\n  a: [1]\n" + M, "macro 'a' has invalid type []interface {}, must be a scalar "
                         "type (string, int, float, or bool)"),
    "macro value map": ("macros:\n  a: {b: 1}\n" + M, "macro 'a' has invalid type map[string]interface {}"),
    "macro value null": ("macros:\n  a:\n" + M, "macro 'a' has invalid type <nil>"),
    "macro self reference": ("macros:\n  a: x ${a}\n" + M, "macro 'a' contains self-reference"),
    "macro reserved PORT": ("macros:\n  PORT: 1\n" + M, "macro name 'PORT' is reserved"),
    "model macro reserved MODEL_ID": ("models:\n  model1:\n    cmd: x ${PORT}\n    macros:\n      MODEL_ID: y\n",
                                      "model model1: macro name 'MODEL_ID' is reserved"),
    "model macro invalid type": ("models:\n  m1:\n    cmd: x ${PORT}\n    macros:\n      a: [1]\n",
                                 "model m1: macro 'a' has invalid type []interface {}"),
    "undefined macro": ("models:\n  m1:\n    cmd: x ${PORT} ${unknownMacro}\n",
                        "unknown macro '${unknownMacro}' found in m1.cmd"),
    "macro refers to a later macro": ("macros:\n  A: ${B}\n  B: b\nmodels:\n  m1:\n    cmd: x ${A} ${PORT}\n",
                                      "unknown macro '${B}' found in m1.cmd"),
    "unknown macro cmdStop": (M + "    cmdStop: stop ${nope}\n", "unknown macro '${nope}' found in m1.cmdStop"),
    "unknown macro proxy": ("models:\n  m1:\n    cmd: x ${PORT}\n    proxy: http://h:${nope}\n",
                            "unknown macro '${nope}' found in m1.proxy"),
    "unknown macro checkEndpoint": (M + "    checkEndpoint: /h/${nope}\n",
                                    "unknown macro '${nope}' found in m1.checkEndpoint"),
    "unknown macro stripParams": (M + "    filters:\n      stripParams: a, ${nope}\n",
                                  "unknown macro '${nope}' found in m1.filters.stripParams"),
    "unknown macro name": (M + "    name: n ${nope}\n", "unknown macro '${nope}' found in m1.name"),
    "unknown macro description": (M + "    description: d ${nope}\n", "unknown macro '${nope}' found in m1.description"),
    "PID outside cmdStop": ("models:\n  m1:\n    cmd: x ${PORT} ${PID}\n", "unknown macro '${PID}' found in m1.cmd"),
    "PORT in a peer": (M + "peers:\n  p:\n    proxy: http://h\n    models: [a]\n"
                                    "    filters:\n      stripParams: ${PORT}\n",
                                    "peers.p.filters.stripParams: unknown macro '${PORT}'"),
    "PORT in name without cmd port": ("models:\n  m1:\n    cmd: x\n    proxy: http://h:1\n    name: ${PORT}\n",
                                      "macro '${PORT}' should have been substituted in m1.name"),
    "unknown macro metadata": (M + "    metadata:\n      a: [x, '${nope}']\n", "model m1 metadata: unknown macro '${nope}'"),
    "env macro left in metadata": ("macros:\n  open: '${'\n" + M + "    metadata:\n      a: '${open}env.NOPE}'\n",
                                   "models.m1.metadata.a: environment variable 'NOPE' not set"),
    "unknown macro setParamsByID key": (M + "    filters:\n      setParamsByID:\n        '${nope}':\n          a: 1\n",
                                        "unknown macro '${nope}' found in model m1 filters.setParamsByID key"),
    "unknown macro setParamsByID value": (M + "    filters:\n      setParamsByID:\n        k:\n          a: ${nope}\n",
                                          "model m1 filters.setParamsByID.k.a: unknown macro '${nope}'"),
    # --- models ---
    "model ttl negative": (M + "    ttl: -5\n", "model m1: invalid TTL value -5"),
    "model unloadTimeout negative": (M + "    unloadTimeout: -1\n", "model m1: invalid unloadTimeout value -1"),
    "proxy PORT without cmd PORT": ("models:\n  model1:\n    cmd: srv --port 8080\n    proxy: http://h:${PORT}\n",
                                    "model model1: proxy uses ${PORT} but cmd does not - ${PORT} is only available "
                                    "when used in cmd"),
    "invalid proxy URL": ("models:\n  m1:\n    cmd: x\n    proxy: 'http://[::1'\n",
                          "model m1: invalid proxy URL: parse \"http://[::1\": missing ']' in host"),
    "proxy URL bad port": ("models:\n  m1:\n    cmd: x\n    proxy: 'http://h:port'\n",
                           "model m1: invalid proxy URL: parse \"http://h:port\": invalid port \":port\" after host"),
    "setParamsByID key is a model id": (M + "    filters:\n      setParamsByID:\n        m2:\n          a: 1\n"
                                        "  m2:\n    cmd: y ${PORT}\n",
                                        "model m1 filters.setParamsByID: key 'm2' conflicts with an existing model ID"),
    "setParamsByID key is another model's alias": (
        M + "    filters:\n      setParamsByID:\n        taken:\n          a: 1\n"
        "  m2:\n    cmd: y ${PORT}\n    aliases: [taken]\n",
        "duplicate alias 'taken' in model m1 filters.setParamsByID, already used by model m2"),
    "empty cmd (ours: upstream fails at start)": ("models:\n  m1:\n    proxy: http://h:1\n",
                                                  "model m1: unable to get sanitized command: empty command"),
    "cmd of only comments": ("models:\n  m1:\n    proxy: http://h:1\n    cmd: |\n      # nothing\n",
                             "model m1: unable to get sanitized command: empty command"),
    "unclosed quote (ours: upstream accepts)": ("models:\n  m1:\n    cmd: srv --port ${PORT} --x \"oops\n",
                                                "model m1: cmd has an unclosed double quote"),
    # --- groups ---
    "groups and matrix": (M + "groups:\n  g:\n    members: [m1]\nmatrix:\n  vars: {a: m1}\n  sets: {s: a}\n",
                          "config cannot use both 'groups' and 'matrix'"),
    "duplicate member in a group": (M + "groups:\n  g1:\n    members: [m1, m1]\n",
                                    "duplicate model member m1 found in group: g1"),
    "member in two groups": (M + "groups:\n  g1:\n    members: [m1]\n  g2:\n    members: [m1]\n",
                             "model member m1 is used in multiple groups: g1 and g2"),
    "alias member and its model in two groups": (
        "models:\n  m1:\n    cmd: x ${PORT}\n    aliases: [a1]\n"
        "groups:\n  g1:\n    members: [m1]\n  g2:\n    members: [a1]\n",
        "model member m1 is used in multiple groups: g1 and g2"),
    # --- matrix ---
    "matrix without sets": (M + "matrix:\n  vars: {a: m1}\n", "matrix: matrix must define at least one set"),
    "matrix without vars, unknown name": (M + "matrix:\n  sets: {s: a}\n", 'matrix: set "s": unknown var or model "a"'),
    "matrix sets not a mapping": (M + "matrix:\n  vars: {a: m1}\n  sets: [a]\n", "sets must be a mapping"),
    "matrix var key too long": (M + "matrix:\n  vars: {" + "a" * 33 + ": m1}\n  sets: {s: m1}\n",
                                f'matrix: var key "{"a" * 33}" must contain only alphanumeric, \'-\' or \'.\' '
                                "characters and be 1-32 characters long"),
    "matrix var key with underscore": (M + "matrix:\n  vars: {a_b: m1}\n  sets: {s: a_b}\n",
                                       'matrix: var key "a_b" must contain only alphanumeric, \'-\' or \'.\' '
                                       "characters and be 1-32 characters long"),
    "matrix var targets an alias": ("models:\n  m1:\n    cmd: x ${PORT}\n    aliases: [al]\n"
                                    "matrix:\n  vars: {a: al}\n  sets: {s: a}\n",
                                    'matrix: var key "a" references unknown model "al" (it is an alias of "m1"; use the model id)'),
    "matrix evict cost zero": (M + "matrix:\n  vars: {a: m1}\n  evict_costs: {a: 0}\n  sets: {s: a}\n",
                               'matrix: evict_cost for "a" must be a positive integer, got 0'),
    "matrix evict cost unknown var": (M + "matrix:\n  vars: {a: m1}\n  evict_costs: {b: 2}\n  sets: {s: a}\n",
                                      'matrix: evict_costs: unknown var or model "b"'),
    "matrix dsl bad character": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: 'a ! a'}\n",
                                 "matrix: set \"s\": tokenize: unexpected character '!' at position 2"),
    "matrix dsl plus without name": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: 'a & +'}\n",
                                     "matrix: set \"s\": tokenize: expected set name after '+' at position 5"),
    "matrix dsl missing paren": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: '(a'}\n",
                                 'matrix: set "s": parse: missing closing parenthesis'),
    "matrix dsl unexpected token": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: 'a &'}\n",
                                    'matrix: set "s": parse: unexpected token ""'),
    "matrix dsl trailing token": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: 'a)'}\n",
                                  'matrix: set "s": parse: unexpected token ")" after expression'),
    "matrix dsl empty": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: ''}\n", 'matrix: set "s": empty DSL expression'),
    "matrix dsl unknown name": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: a & m9}\n",
                                'matrix: set "s": unknown var or model "m9"'),
    "matrix dsl alias": ("models:\n  m1:\n    cmd: x ${PORT}\n    aliases: [al]\n"
                         "matrix:\n  sets: {s: al}\n",
                         'matrix: set "s": unknown var or model "al" (it is an alias of "m1"; use the model id)'),
    "matrix undefined ref": (M + "matrix:\n  vars: {a: m1}\n  sets: {s: +other & a}\n",
                             'matrix: set "s" references undefined set "other"'),
    "matrix cycle": (M + "matrix:\n  vars: {a: m1}\n  sets:\n    x: +y & a\n    y: +x\n",
                     'matrix: circular reference detected involving set "x"'),
    "matrix self reference": (M + "matrix:\n  vars: {a: m1}\n  sets:\n    x: +x | a\n",
                              'matrix: circular reference detected involving set "x"'),
    # --- apiKeys ---
    "empty api key": (M + "apiKeys: ['']\n", "empty api key found in apiKeys"),
    "null api key": (M + "apiKeys: [~]\n", "empty api key found in apiKeys"),
    "api key leading space": (M + "apiKeys: [' key']\n", "api key cannot contain spaces: apiKeys[0]"),
    "api key trailing space": (M + "apiKeys: ['key ']\n", "api key cannot contain spaces: apiKeys[0]"),
    "api key inner space": (M + "apiKeys: ['a key']\n", "api key cannot contain spaces: apiKeys[0]"),
    # --- peers ---
    "peer proxy missing": (M + "peers:\n  p:\n    models: [a]\n", "proxy is required"),
    "peer proxy empty": (M + "peers:\n  p:\n    proxy: ''\n    models: [a]\n", "proxy is required"),
    "peer proxy invalid": (M + "peers:\n  p:\n    proxy: '://invalid'\n    models: [a]\n",
                           'invalid peer proxy URL (://invalid): parse "://invalid": missing protocol scheme'),
    "peer models missing": (M + "peers:\n  p:\n    proxy: http://h\n", "peer models can not be empty"),
    "peer models empty": (M + "peers:\n  p:\n    proxy: http://h\n    models: []\n", "peer models can not be empty"),
    "peer apiKey unknown macro": (M + "peers:\n  p:\n    proxy: http://h\n    models: [a]\n    apiKey: ${nope}\n",
                                  "peers.p.apiKey: unknown macro '${nope}'"),
    "peer apiKey MODEL_ID is not a peer macro": (
        M + "peers:\n  p:\n    proxy: http://h\n    models: [a]\n    apiKey: ${MODEL_ID}\n",
        "peers.p.apiKey: unknown macro '${MODEL_ID}'"),
    "peer stripParams unknown macro": (
        M + "peers:\n  p:\n    proxy: http://h\n    models: [a]\n    filters:\n      stripParams: ${nope}\n",
        "peers.p.filters.stripParams: unknown macro '${nope}'"),
    "peer setParams unknown macro": (
        M + "peers:\n  p:\n    proxy: http://h\n    models: [a]\n    filters:\n      setParams:\n        a: ['${nope}']\n",
        "peers.p.filters.setParams.a[0]: unknown macro '${nope}'"),
}


@pytest.mark.parametrize("text, expected", CASES.values(), ids=CASES.keys())
def test_load_error(text, expected):
    assert expected in error_of(text)


@pytest.mark.parametrize("env, expected", [
    ({}, "environment variable 'NOPE' is not set"),
    ({"NOPE": "a\nb"}, "environment variable 'NOPE' contains newlines or null bytes which are not allowed "
                       "in YAML substitution"),
    ({"NOPE": "a\rb"}, "contains newlines or null bytes"),
    ({"NOPE": "a\0b"}, "contains newlines or null bytes"),
])
def test_env_macro_errors(env, expected):
    assert expected in error_of(M + "    cmdStop: stop ${env.NOPE}\n", **env)


def test_env_macro_expanding_to_empty_api_key():
    assert "empty api key found in apiKeys" in error_of(M + "apiKeys: ['${env.KEY}']\n", KEY="")


def test_yaml_syntax_error_names_line_and_column():
    message = error_of("models:\n  m1:\n    cmd: [unclosed\n  m2: x\n")
    assert "yaml: line 4, column 5" in message


def test_error_names_file_line_and_key():
    message = error_of("models:\n  m1:\n    cmd: x ${PORT}\n    ttl: -5\n")
    assert message == "cfg.yaml:4: models.m1.ttl: model m1: invalid TTL value -5"


def test_missing_file(tmp_path):
    from llamaswap.config import load_config
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_config(str(tmp_path / "absent.yaml"))


def test_env_error_names_the_line():
    message = error_of("# ${env.NOPE} in a comment first\n" + M + "    cmdStop: stop ${env.NOPE}\n")
    assert message == "cfg.yaml:5: environment variable 'NOPE' is not set"


def test_unknown_group_member_is_a_warning():
    # upstream fails at start, even on its own config.example.yaml: we warn and drop it
    c = load(M + "groups:\n  g1:\n    members: [m1, ghost]\n")
    assert c.groups["g1"].members == ("m1",)
    assert c.warnings == ('groups.g1.members: group g1: no model config for "ghost"; the member is ignored',)
