"""selectors: and map-shaped profiles: (upstream-head.md sections 6 and 7), loaded and refused."""

import textwrap

import pytest
import test_config_routing as routing_models
from test_config_errors import assert_key_said_once

from llamaswap.config import ConfigError, load_config_text

MODELS = routing_models.MODELS + """
peers:
  remote:
    proxy: http://127.0.0.1:9
    models: [r1, r2]
"""
POOL = "routing:\n  router:\n    settings:\n      groups:\n        pool: {swap: false, members: [a, b]}\n"


def load(text):
    return load_config_text(textwrap.dedent(text) + MODELS, "cfg.yaml", environ={})


def error_of(text):
    with pytest.raises(ConfigError) as e:
        load(text)
    assert str(e.value).startswith("cfg.yaml")
    assert_key_said_once(str(e.value))
    return str(e.value)


def test_selectors_loaded_with_defaults():
    c = load("""
        selectors:
          coder:
            strategy: warm
            targets: [alpha, b]
            name: " Coder "
            description: best loaded coder
            metadata: {purpose: coding, rank: 1}
          planner:
            strategy: pin
            targets: [remote/r1, c]
            unlisted: true
        """)
    coder, planner = c.selectors["coder"], c.selectors["planner"]
    assert (coder.strategy, coder.targets, coder.spillover) == ("warm", ("alpha", "b"), 1)
    assert (coder.name, coder.description, dict(coder.metadata)) == (" Coder ", "best loaded coder",
                                                                      {"purpose": "coding", "rank": 1})
    assert planner.targets == ("remote/r1", "c") and planner.unlisted
    assert list(c.selectors) == ["coder", "planner"]


def test_spillover_targets_in_a_group_without_swap_and_peers():
    c = load(POOL + "selectors:\n  balanced:\n    strategy: spillover\n    targets: [a, b, r1]\n"
                    "    settings: {spillover: 4}\n")
    assert c.selectors["balanced"].spillover == 4
    assert c.selectors["balanced"].targets == ("a", "b", "r1")


def test_spillover_targets_in_no_group_under_a_memory_section():
    """With memory:, models in no group run side by side as memory allows, so spillover
    may spread over them; an explicit swapping group still refuses it."""
    memory = "memory:\n  devices: {ram: 8GiB}\n"
    spill = "selectors:\n  s: {strategy: spillover, targets: [a, b]}\n"
    assert load(memory + spill).selectors["s"].targets == ("a", "b")
    assert "selectors.s spillover targets must share a group with swap: false" in error_of(spill)
    assert "selectors.s spillover targets must share a group with swap: false" in error_of(
        memory + "groups:\n  g: {members: [a, b]}\n" + spill)


def test_spillover_targets_in_one_matrix_set():
    c = load("""
        routing:
          router:
            use: matrix
            settings:
              matrix:
                sets:
                  both: "(a | c) & b"
        selectors:
          s:
            strategy: spillover
            targets: [alpha, b]
        """)
    assert c.selectors["s"].targets == ("alpha", "b")


def test_unknown_targets_are_dropped_with_a_warning_while_one_remains():
    c = load("""
        selectors:
          s:
            strategy: pin
            targets: [a, ghost]
        """)
    assert c.selectors["s"].targets == ("a",)
    assert 'selectors.s.targets[1] references unknown model "ghost"; the target is ignored' in c.warnings


def test_profiles_map_shape_and_null_pins():
    c = load("""
        selectors:
          sel: {strategy: pin, targets: [c]}
        profiles:
          coding:
            description: Coding-focused routing
            pins:
              llm-code: a  # a real model
              llm-plan: sel
              image-gen: ~
              a: c
              chat: remote/r2
          quiet:
            pins: {b: ""}
        """)
    coding = c.profiles["coding"]
    assert coding.description == "Coding-focused routing"
    assert dict(coding.pins) == {"a": "c", "chat": "remote/r2", "image-gen": "", "llm-code": "a", "llm-plan": "sel"}
    assert dict(c.profiles["quiet"].pins) == {"b": ""} and c.profiles["quiet"].description == ""
    assert not c.has_profiles


def test_a_pin_to_an_unknown_model_is_dropped_with_a_warning():
    c = load("profiles:\n  p: {pins: {x: ghost, y: a}}\n")
    assert dict(c.profiles["p"].pins) == {"y": "a"}
    assert 'profiles.p.pins.x references unknown model "ghost"; the pin is ignored' in c.warnings


def test_list_shaped_profiles_of_the_reference_revision_still_load_with_the_warning_flag():
    c = load("profiles:\n  old: [a, b]\n  new:\n    pins: {x: a}\n")
    assert c.has_profiles and list(c.profiles) == ["new"]


ERRORS = {
    "selector is a model id": ("selectors:\n  a: {strategy: pin, targets: [b]}\n",
                               'selectors.a: name conflicts with model ID "a"'),
    "selector is an alias": ("selectors:\n  alpha: {strategy: pin, targets: [b]}\n",
                             'selectors.alpha: name conflicts with model alias "alpha"'),
    "selector is a peer fqn": ("selectors:\n  remote/r1: {strategy: pin, targets: [b]}\n",
                               'selector ID "remote/r1" conflicts with fully qualified peer model name'),
    "selector name blank": ("selectors:\n  ' ': {strategy: pin, targets: [b]}\n",
                            "selectors: selector names cannot be empty"),
    "no strategy": ("selectors:\n  s: {targets: [b]}\n", "selectors.s.strategy is required"),
    "unknown strategy": ("selectors:\n  s: {strategy: random, targets: [b]}\n",
                         'selectors.s.strategy: unknown strategy "random" (valid: warm, pin, spillover)'),
    "no targets": ("selectors:\n  s: {strategy: pin}\n", "selectors.s.targets must contain at least one entry"),
    "chaining": ("selectors:\n  s: {strategy: pin, targets: [t]}\n  t: {strategy: pin, targets: [a]}\n",
                 'selectors.s.targets[0] references selector "t"; selector chaining is not supported'),
    "only unknown targets": ("selectors:\n  s: {strategy: pin, targets: [x, y]}\n",
                             'selectors.s.targets[0] references unknown model "x"'),
    "warm with a peer": ("selectors:\n  s: {strategy: warm, targets: [a, r1]}\n",
                         'selectors.s.targets[1] must resolve to a local model for strategy "warm"'),
    "spillover zero": (POOL + "selectors:\n  s: {strategy: spillover, targets: [a], settings: {spillover: 0}}\n",
                       "selectors.s.settings.spillover must be >= 1"),
    "spillover duplicate": (POOL + "selectors:\n  s: {strategy: spillover, targets: [a, alpha]}\n",
                            'selectors.s.targets contains duplicate resolved model "a"'),
    "spillover duplicate peer": ("selectors:\n  s: {strategy: spillover, targets: [r1, remote/r1]}\n",
                                 'selectors.s.targets contains duplicate resolved model "remote/r1"'),
    "spillover in a swapping group": ("selectors:\n  s: {strategy: spillover, targets: [a, b]}\n",
                                      "selectors.s spillover targets must share a group with swap: false"),
    "spillover across groups": (
        "routing:\n  router:\n    settings:\n      groups:\n        g1: {swap: false, members: [a]}\n"
        "        g2: {swap: false, members: [b]}\n"
        "selectors:\n  s: {strategy: spillover, targets: [a, b]}\n",
        "selectors.s spillover targets must share one routing group"),
    "spillover outside the matrix": (
        "matrix:\n  sets: {x: a & c, y: b}\nselectors:\n  s: {strategy: spillover, targets: [a, b]}\n",
        "selectors.s.targets must all appear together in one expanded matrix set"),
    "strategy not a string": ("selectors:\n  s: {strategy: [pin], targets: [a]}\n",
                              "cannot unmarshal !!seq into string"),
    "profile without pins": ("profiles:\n  p: {description: x}\n", "profiles.p.pins must contain at least one entry"),
    "profile name blank": ("profiles:\n  '': {pins: {a: b}}\n", "profiles: profile names cannot be empty"),
    "pin name blank": ("profiles:\n  p: {pins: {' ': b}}\n", "profiles.p.pins: pin names cannot be empty"),
    "pin is a peer fqn": ("profiles:\n  p: {pins: {remote/r1: a}}\n",
                          'profile p pin "remote/r1" conflicts with fully qualified peer model name'),
    "pins not a map": ("profiles:\n  p: {pins: [a]}\n", "cannot unmarshal !!seq into map[string]string"),
    "only unknown pin targets": ("profiles:\n  p: {pins: {x: ghost, y: phantom}}\n",
                                 'profiles.p.pins.x references unknown model "ghost"'),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors(name):
    text, expected = ERRORS[name]
    assert expected in error_of(text)


def test_errors_name_the_file_line_and_key_path_once():
    assert error_of("selectors:\n  s: {targets: [b]}\n") == "cfg.yaml:2: selectors.s.strategy is required"
    assert error_of("selectors:\n  ' ': {strategy: pin, targets: [b]}\n") == \
        "cfg.yaml:2: selectors: selector names cannot be empty"
    assert error_of("selectors:\n  s:\n    strategy: pin\n    targets: [t]\n  t: {strategy: pin, targets: [a]}\n") \
        == 'cfg.yaml:4: selectors.s.targets[0] references selector "t"; selector chaining is not supported'
    assert error_of("profiles:\n  '': {pins: {a: b}}\n") == "cfg.yaml:2: profiles: profile names cannot be empty"
    assert error_of("profiles:\n  p:\n    pins: {x: ghost}\n") == \
        'cfg.yaml:3: profiles.p.pins.x references unknown model "ghost"'
    # a target or a pin is pointed at on its own line
    assert error_of("selectors:\n  s:\n    strategy: warm\n    targets:\n      - a\n      - r1\n") == \
        'cfg.yaml:6: selectors.s.targets[1] must resolve to a local model for strategy "warm"'
    assert error_of("profiles:\n  p:\n    pins:\n      a: b\n      remote/r1: a\n") == \
        'cfg.yaml:5: profiles.p.pins.remote/r1: profile p pin "remote/r1" conflicts with fully qualified peer model name'
