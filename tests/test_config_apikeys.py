"""``apiKeys`` object entries: decoding, defaults, and every bad input named by position and
name, never by the key's value."""

import pytest

from test_config_errors import M, load
from test_config_errors import error_of as any_error_of

from llamaswap.config.model import ApiKey, Config

SECRET = "sk-very-secret-value"


def error_of(text, **env):
    message = any_error_of(text, **env)
    assert SECRET not in message
    return message


def test_plain_and_object_keys_load_with_their_defaults():
    c = load(M + f"""\
apiKeys:
  - sk-admin-123
  - key: {SECRET}
    name: team-a
    models: ["qwen-*", "embed"]
    maxInFlight: 4
  - key: sk-b
    name: team-b
    admin: true
""")
    assert c.api_keys == ("sk-admin-123", SECRET, "sk-b")
    a, b = c.scoped_keys
    assert (a.name, a.models, a.max_in_flight, a.admin) == ("team-a", ("qwen-*", "embed"), 4, False)
    assert (b.name, b.models, b.max_in_flight, b.admin) == ("team-b", ("*",), 0, True)
    plain, scoped_a, scoped_b = c.api_key_entries()
    assert (plain.name, plain.models, plain.max_in_flight, plain.admin) == ("-", ("*",), 0, True)
    assert (scoped_a, scoped_b) == (a, b)
    assert SECRET not in repr(c) and SECRET not in repr(a)


def test_key_from_an_env_macro():
    c = load(M + "apiKeys:\n  - key: ${env.TEAM_KEY}\n    name: t\n", TEAM_KEY=SECRET)
    assert c.api_keys == (SECRET,) and c.scoped_keys[0].name == "t"


def test_plain_string_configs_load_exactly_as_before():
    c = load(M + "apiKeys: [k1, k2, k1]\n")  # duplicate plain strings load, as upstream
    assert c.api_keys == ("k1", "k2", "k1") and c.scoped_keys == ()
    assert all(e.admin and e.every_model for e in c.api_key_entries())
    assert load(M).api_keys == ()


def test_a_config_built_in_code_with_plain_keys_only():
    entries = Config(api_keys=("x",)).api_key_entries()
    assert entries == (ApiKey("x"),)


@pytest.mark.parametrize("models, allowed, refused", [
    (("*",), ["anything", ""], []),
    (("qwen-*", "embed"), ["qwen-7b", "qwen-", "embed"], ["Qwen-7b", "embed2", "xqwen-1", "llama"]),
    (("m?",), ["m1", "m2"], ["m10", "m"]),
    (("[ab]*",), ["a1", "b"], ["c"]),
    ((), [], ["m1", "*"]),
])
def test_patterns_are_shell_style_and_case_sensitive(models, allowed, refused):
    key = ApiKey("k", "n", models)
    for name in allowed:
        assert key.allows(name), name
    for name in refused:
        assert not key.allows(name), name


def test_allows_passes_when_any_name_matches():
    key = ApiKey("k", "n", ("gpt-4o-mini",))
    assert key.allows("gpt-4o-mini", "qwen-7b")  # the alias sent
    assert not key.allows("qwen-7b", None)
    assert ApiKey("k", "n", ("qwen-*",)).allows("gpt-4o-mini", "qwen-7b")  # the resolved id


BAD = {
    "missing name": (f"  - key: {SECRET}\n",
                     "cfg.yaml:", "apiKeys[1]: name is required for an object key"),
    "missing key": ("  - name: team-a\n", "apiKeys[1].key:", "apiKeys[1] (team-a): key is required"),
    "empty key": ("  - key: ''\n    name: team-a\n", "apiKeys[1].key:",
                  "apiKeys[1] (team-a): key is empty"),
    "null key": ("  - key:\n    name: team-a\n", "apiKeys[1].key:", "apiKeys[1] (team-a): key is empty"),
    "key with a space": (f"  - key: '{SECRET} x'\n    name: team-a\n", "apiKeys[1].key:",
                         "apiKeys[1] (team-a): key cannot contain spaces"),
    "key not a string": ("  - key: [a]\n    name: team-a\n", "apiKeys[1].key:",
                         "apiKeys[1] (team-a): key must be a string"),
    "duplicate key (object after plain)": (f"  - key: sk-admin\n    name: team-a\n", "cfg.yaml:6: apiKeys[1]",
                                           "apiKeys[1] (team-a): the same key as apiKeys[0]"),
    "duplicate key (two objects)": (f"  - key: {SECRET}\n    name: a\n  - key: {SECRET}\n    name: b\n",
                                    "cfg.yaml:8: apiKeys[2]", "apiKeys[2] (b): the same key as apiKeys[1] (a)"),
    "duplicate key (plain after object)": (f"  - key: {SECRET}\n    name: a\n  - {SECRET}\n",
                                           "apiKeys[2]:", "apiKeys[2]: the same key as apiKeys[1] (a)"),
    "duplicate name": (f"  - key: {SECRET}\n    name: a\n  - key: other\n    name: a\n",
                       "apiKeys[2].name:", 'apiKeys[2] (a): name "a" is already used by apiKeys[1]'),
    "reserved name": (f"  - key: {SECRET}\n    name: '-'\n", "apiKeys[1].name:",
                      'apiKeys[1] (-): name "-" is not allowed'),
    "pattern not a string": (f"  - key: {SECRET}\n    name: a\n    models: [m1, 7]\n",
                             "apiKeys[1].models[1]:",
                             "apiKeys[1] (a): models[1] must be a string pattern, got 7 (quote it)"),
    "pattern a mapping": (f"  - key: {SECRET}\n    name: a\n    models: [{{x: 1}}]\n",
                          "apiKeys[1].models[0]:", "models[0] must be a string pattern, got a mapping"),
    "empty pattern": (f"  - key: {SECRET}\n    name: a\n    models: ['']\n", "apiKeys[1].models[0]:",
                      "apiKeys[1] (a): models[0] is an empty pattern"),
    "models not a list": (f"  - key: {SECRET}\n    name: a\n    models: m1\n", "apiKeys[1].models:",
                          "apiKeys[1] (a): models must be a list of model name patterns"),
    "negative maxInFlight": (f"  - key: {SECRET}\n    name: a\n    maxInFlight: -1\n",
                             "apiKeys[1].maxInFlight:", "apiKeys[1] (a): maxInFlight must be >= 0 (got -1)"),
    "maxInFlight not a number": (f"  - key: {SECRET}\n    name: a\n    maxInFlight: lots\n",
                                 "apiKeys[1].maxInFlight:",
                                 "apiKeys[1] (a): maxInFlight must be a whole number"),
    "admin not a bool": (f"  - key: {SECRET}\n    name: a\n    admin: sometimes\n", "apiKeys[1].admin:",
                         "apiKeys[1] (a): admin must be true or false"),
    "unknown field": (f"  - key: {SECRET}\n    name: a\n    maxInflight: 3\n", "apiKeys[1].maxInflight:",
                      'apiKeys[1] (a): unknown field "maxInflight" (did you mean maxInFlight?)'),
    "unknown field, no close match": (f"  - key: {SECRET}\n    name: a\n    colour: red\n",
                                      "apiKeys[1].colour:",
                                      'unknown field "colour" (known: key, name, models, maxInFlight, admin)'),
    "entry is a list": ("  - [a, b]\n", "apiKeys[1]:",
                        "an entry must be a key string or a mapping with key and name"),
}


@pytest.mark.parametrize("entries, where, expected", BAD.values(), ids=BAD.keys())
def test_bad_entries_are_named_by_position_and_name(entries, where, expected):
    message = error_of(M + "apiKeys:\n  - sk-admin\n" + entries)
    assert where in message and expected in message, message


def test_error_points_at_the_line_of_the_entry():
    message = error_of(M + f"apiKeys:\n  - sk-admin\n  - key: {SECRET}\n    name: a\n    maxInFlight: -2\n")
    assert message.startswith("cfg.yaml:8: apiKeys[1].maxInFlight: ")


def test_env_macro_expanding_to_an_empty_object_key():
    assert "apiKeys[0] (t): key is empty" in error_of(M + "apiKeys:\n  - key: ${env.K}\n    name: t\n", K="")


def test_apikeys_not_a_list():
    assert "cannot unmarshal !!map into []string" in error_of(M + "apiKeys: {key: x}\n")
