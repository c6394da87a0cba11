"""The `routing:` section (upstream-head.md section 3): scheduler fifo with priorities,
router group | matrix with its settings, and the legacy top-level spellings."""

import textwrap

import pytest
from matrix_oracle import expanded
from test_config_errors import assert_key_said_once

from llamaswap.config import ConfigError, load_config_text
from llamaswap.config.model import DEFAULT_GROUP_ID

MODELS = """
models:
  a:
    cmd: srv a ${PORT}
    aliases: [alpha]
  b:
    cmd: srv b ${PORT}
  c:
    cmd: srv c ${PORT}
"""


def load(text):
    return load_config_text(textwrap.dedent(text) + MODELS, "cfg.yaml", environ={})


def error_of(text):
    with pytest.raises(ConfigError) as e:
        load(text)
    message = str(e.value)
    assert message.startswith("cfg.yaml")
    assert_key_said_once(str(e.value))
    return message


def test_defaults_without_routing():
    c = load("")
    assert c.routing.scheduler.use == "fifo"
    assert c.routing.router == "group"
    assert dict(c.routing.scheduler.fifo.priority) == {}
    assert c.routing.scheduler.fifo.priority_of("a") == 0
    assert c.groups[DEFAULT_GROUP_ID].members == ("a", "b", "c")


def test_routing_router_groups():
    c = load("""
        routing:
          router:
            use: group
            settings:
              groups:
                pair:
                  swap: false
                  members: [alpha, b]
        """)
    assert c.routing.router == "group"
    assert c.groups["pair"].members == ("a", "b") and not c.groups["pair"].swap
    assert c.groups[DEFAULT_GROUP_ID].members == ("c",)
    assert c.matrix is None


def test_routing_router_use_omitted_means_group():
    c = load("""
        routing:
          router:
            settings:
              groups:
                g: {members: [c]}
        """)
    assert c.routing.router == "group" and c.groups["g"].members == ("c",)


def test_routing_router_matrix_and_the_other_setting_is_ignored():
    c = load("""
        routing:
          router:
            use: matrix
            settings:
              groups:
                g: {members: [nonexistent]}
              matrix:
                vars: {x: a, y: b}
                sets:
                  s: "x & y"
        """)
    assert c.routing.router == "matrix"
    assert c.groups == {}
    assert expanded(c.matrix.compiled_sets) == [("s", ("a", "b"))]


def test_matrix_setting_is_ignored_under_the_group_router():
    c = load("""
        routing:
          router:
            use: group
            settings:
              matrix:
                vars: {}
        """)
    assert c.matrix is None and c.routing.router == "group"


def test_legacy_top_level_spellings_still_load():
    c = load("""
        matrix:
          vars: {x: a}
          sets:
            s: x
        """)
    assert c.routing.router == "matrix"
    c = load("groups:\n  g: {members: [a]}\n")
    assert c.routing.router == "group" and c.groups["g"].members == ("a",)


def test_priority_resolved_through_aliases():
    c = load("""
        routing:
          scheduler:
            use: fifo
            settings:
              fifo:
                priority: {alpha: 10, b: -2}
        """)
    assert dict(c.routing.scheduler.fifo.priority) == {"a": 10, "b": -2}
    assert c.routing.scheduler.fifo.priority_of("c") == 0


def test_priority_model_id_wins_over_its_alias():
    c = load("""
        routing:
          scheduler:
            settings:
              fifo:
                priority: {alpha: 10, a: 3}
        """)
    assert dict(c.routing.scheduler.fifo.priority) == {"a": 3}


def test_matrix_errors_name_the_routing_key_path():
    message = error_of("""
        routing:
          router:
            use: matrix
            settings:
              matrix:
                vars: {x: a}
                sets:
                  s: "x & nope"
        """)
    assert "routing.router.settings.matrix.sets.s" in message
    assert 'matrix: set "s": unknown var or model "nope"' in message


def test_unknown_names_in_groups_and_priorities_are_ignored_with_a_warning():
    # upstream refuses both, yet its own example config (which must load) has them
    c = load("""
        routing:
          scheduler:
            settings:
              fifo:
                priority: {nope: 1, b: 2}
          router:
            settings:
              groups:
                g: {swap: false, members: [a, ghost]}
        """)
    assert dict(c.routing.scheduler.fifo.priority) == {"b": 2}
    assert c.groups["g"].members == ("a",)
    assert ('routing.scheduler.settings.fifo.priority references unknown model "nope"; ignored'
            in c.warnings)
    assert ('routing.router.settings.groups.g.members: group g: no model config for "ghost"; '
            "the member is ignored" in c.warnings)


BOTH = ("config uses both the legacy top-level 'matrix'/'groups' keys and the new 'routing.router' "
        "block; please migrate the top-level keys into 'routing.router' and remove them")

ERRORS = {
    "legacy groups and routing.router.use": (
        "groups:\n  g: {members: [a]}\nrouting:\n  router:\n    use: group\n", BOTH),
    "legacy matrix and routing groups": (
        "matrix:\n  vars: {x: a}\n  sets: {s: x}\n"
        "routing:\n  router:\n    settings:\n      groups:\n        g: {members: [a]}\n", BOTH),
    "legacy groups and routing matrix": (
        "groups:\n  g: {members: [a]}\n"
        "routing:\n  router:\n    settings:\n      matrix:\n        vars: {x: a}\n", BOTH),
    "matrix without settings": (
        "routing:\n  router:\n    use: matrix\n",
        "routing.router.use is 'matrix' but routing.router.settings.matrix is not set"),
    "unknown router": (
        "routing:\n  router:\n    use: lru\n", 'routing.router.use: unknown router "lru" (valid: group, matrix)'),
    "legacy groups and legacy matrix": (
        "groups:\n  g: {members: [a]}\nmatrix:\n  vars: {x: a}\n  sets: {s: x}\n",
        "config cannot use both 'groups' and 'matrix'"),
    "unknown scheduler": (
        "routing:\n  scheduler:\n    use: lifo\n", 'routing.scheduler.use: unknown scheduler "lifo" (valid: fifo)'),
    "priority not an int": (
        "routing:\n  scheduler:\n    settings:\n      fifo:\n        priority: {a: high}\n",
        "cannot unmarshal !!str `high` into int"),
    "routing not a mapping": ("routing: [a]\n", "cannot unmarshal !!seq into config.RoutingConfig"),
    "routing groups member twice": (
        "routing:\n  router:\n    settings:\n      groups:\n        g: {members: [a]}\n        h: {members: [a]}\n",
        "model member a is used in multiple groups: g and h"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_routing_errors(name):
    text, expected = ERRORS[name]
    assert expected in error_of(text)


def test_unknown_priority_model_and_group_member_are_warnings():
    # upstream refuses both, yet its own config.example.yaml has both: we warn and ignore them
    c = load_config_text("models:\n  a:\n    cmd: srv ${PORT}\n"
                         "routing:\n  scheduler:\n    settings:\n      fifo:\n        priority: {nope: 1, a: 2}\n"
                         "  router:\n    settings:\n      groups:\n        g: {members: [a, zz]}\n")
    assert c.routing.scheduler.fifo.priority == {"a": 2} and c.groups["g"].members == ("a",)
    assert c.warnings == (
        'routing.router.settings.groups.g.members: group g: no model config for "zz"; the member is ignored',
        'routing.scheduler.settings.fifo.priority references unknown model "nope"; ignored')
