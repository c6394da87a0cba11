"""Tabs in config text: accepted where upstream's yaml.v3 accepts them, refused where it refuses.

yaml.v3 scans like libyaml, so PyYAML's C loader is the reference here; the pure-Python loader
(the zipapp's) must give the same node tree or also refuse.
"""

from __future__ import annotations

import random

import pytest
import yaml

from llamaswap.config import ConfigError, load_config_text, yamlio

PURE = yamlio.make_loader(yaml.SafeLoader)
LIBYAML = yamlio.make_loader(yaml.CSafeLoader) if hasattr(yaml, "CSafeLoader") else None


@pytest.fixture(params=["pure", "libyaml"])
def loader(request, monkeypatch):
    if request.param == "pure":
        monkeypatch.setattr(yamlio, "_Loader", PURE)
    elif LIBYAML is None:
        pytest.skip("PyYAML without libyaml")
    else:
        monkeypatch.setattr(yamlio, "_Loader", LIBYAML)
    return request.param


def load(text: str):
    return load_config_text(text, "t.yaml", environ={})


def test_a_tab_inside_a_plain_cmd_loads(loader):
    config = load("models:\n  m:\n    cmd: python3\t-m http.server ${PORT}\n")
    assert config.models["m"].argv == ("python3", "-m", "http.server", "5800")
    assert config.models["m"].cmd == "python3\t-m http.server 5800"


@pytest.mark.parametrize("text, expected", [
    ("models:\n  m:\n    cmd:\tsrv ${PORT}\n", "srv 5800"),                # after the colon
    ("models:\n  m:\n    cmd: srv ${PORT}\t\n", "srv 5800"),               # trailing
    ("models:\n  m:\n    cmd: srv ${PORT}\t# note\n", "srv 5800"),         # before a comment
    ("models:\n  m:\n    cmd\t: srv ${PORT}\n", "srv 5800"),               # before the colon
    ("models:\n  m:\n    cmd: srv\n      \t--port ${PORT}\n", "srv --port 5800"),  # continuation
    ("models:\n  m:\n    cmd: |\t# note\n      srv ${PORT}\n", "srv 5800\n"),    # block header
    ("models:\n  m:\n    cmd: |# note\n      srv ${PORT}\n", "srv 5800\n"),
    ("models:\n  m:\n    cmd: \"srv ${PORT}\" \t\n    aliases: [a,\tb]\n", "srv 5800"),
])
def test_tabs_as_separation(loader, text, expected):
    assert load(text).models["m"].cmd == expected


def test_an_indented_config_loads(loader):
    text = "  healthCheckTimeout: 30\n  models:\n    m:\n      cmd: srv ${PORT}\n"
    config = load(text)
    assert config.health_check_timeout == 30
    assert config.models["m"].argv == ("srv", "5800")
    assert load("   # indented comment first\nmodels:\n  m:\n    cmd: srv ${PORT}\n").models


@pytest.mark.parametrize("text, where", [
    ("models:\n\tm:\n    cmd: srv\n", "line 2, column 1: "),                     # tab indentation
    ("models:\n  m:\n    cmd: srv\n\t--port 9\n", "line 4, column 1: "),      # continuation at col 0
    ("models:\n  m:\n    cmd: |\n    \tsrv\n", "line 4, column 5: "),          # block indentation
    ("models:\n  m:\n    cmd: srv\n  \tttl: 5\n", "line 4, column 3: "),       # ambiguous nesting
])
def test_a_tab_used_as_indentation_is_still_an_error(loader, text, where):
    with pytest.raises(ConfigError) as e:
        load(text)
    message = str(e.value)
    assert message.startswith("t.yaml: yaml: ")
    if loader == "pure":  # libyaml's marks differ in places; the pure loader's are tested exactly
        assert where in message
        assert "tab character" in message or "found character '\\t'" in message


MUTATION_SEED = 18
SAMPLES = [
    "a: b c\nd:\n  - x y\n  - \"q\"\n  - [1, 2]\ne: |\n  line one\n  line two\n"
    "f: >-\n  folded\n  text\ng: {h: i, j: k}\n# comment\nk: x # c\n",
    "models:\n  m:\n    cmd: |\n      python3 -m http.server ${PORT}\n      --bind 127.0.0.1\n"
    "    ttl: 5\n  n:\n    cmd: >\n      a\n      b\n    aliases: [x, y]\n",
    "- a\n- b: c\n  d: e\n- - f\n  - g\n",
]
INSERTS = ["\t", "\t ", " \t", "\t\t", "\n\t", "\t#x", "\t-\t", ":\t", "\t\n", " ", "#", "\n  "]


def _tree(text: str, loader):
    def show(node):
        if isinstance(node, yaml.ScalarNode):
            return node.value
        if isinstance(node, yaml.SequenceNode):
            return [show(x) for x in node.value]
        return [(show(k), show(v)) for k, v in node.value]
    try:
        node = yaml.compose(text, Loader=loader)
    except yaml.YAMLError:
        return "error"
    return None if node is None else show(node)


@pytest.mark.skipif(LIBYAML is None, reason="PyYAML without libyaml")
def test_pure_loader_agrees_with_libyaml_on_tabs():
    """Seeded mutations (tabs inserted or replacing spaces anywhere): both loaders refuse, or
    both build the same tree."""
    rng = random.Random(MUTATION_SEED)
    for case in range(1500):
        text = rng.choice(SAMPLES)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            insert = rng.choice(INSERTS)
            drop = 1 if text[at:at + 1] == " " and rng.random() < 0.3 else 0
            text = text[:at] + insert + text[at + drop:]
        pure, reference = _tree(text, PURE), _tree(text, LIBYAML)
        assert pure == reference, f"seed {MUTATION_SEED} case {case}: {text!r}"
