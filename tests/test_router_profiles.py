"""router.profiles: the active profile switch and /upstream pin matching, without sockets."""

from __future__ import annotations

import threading

import pytest

from llamaswap.config.model import Config, ModelConfig, ProfileConfig, freeze
from llamaswap.router.profiles import ProfileNotFound, ProfileSwitch, upstream_pin


def config() -> Config:
    return Config(models={m: ModelConfig(id=m) for m in ("a", "b")},
                  profiles={p: ProfileConfig(p, pins=freeze({"llm": t})) for p, t in (("x", "a"), ("y", "b"))})


def test_switch_announces_changes_only():
    seen = []
    switch = ProfileSwitch(config(), on_change=seen.append)
    assert switch.active == "" and switch.pins() == {}
    assert switch.set("x") and switch.pins() == {"llm": "a"}
    assert not switch.set("x")
    with pytest.raises(ProfileNotFound, match='profile "nope" not found'):
        switch.set("nope")
    assert switch.set("") and switch.active == ""
    assert seen == ["x", ""]
    assert ProfileSwitch(config(), "y").active == "y"
    assert ProfileSwitch(config(), "gone").active == ""


def test_a_reload_keeps_the_active_profile_with_its_new_pins_while_the_config_has_it():
    seen = []
    switch = ProfileSwitch(config(), on_change=seen.append)
    switch.set("x")
    repinned = Config(models=config().models, profiles={"x": ProfileConfig("x", pins=freeze({"llm": "b"}))})
    switch.reconfigure(repinned)
    assert switch.active == "x" and switch.pins() == {"llm": "b"} and seen == ["x"]
    switch.reconfigure(Config(models=config().models))  # x is gone: none active, announced
    assert switch.active == "" and switch.pins() == {} and seen == ["x", ""]
    with pytest.raises(ProfileNotFound):
        switch.set("x")
    switch.reconfigure(config())
    assert switch.set("y") and seen == ["x", "", "y"]


def test_a_switch_made_while_another_is_announced_is_announced_after_it():
    """Listeners must see switches in the order they took effect: the last announced
    profile is the active one."""
    seen = []
    entered, proceed = threading.Event(), threading.Event()

    def announce(name: str) -> None:
        if name == "x":
            entered.set()
            proceed.wait(10)  # a slow listener: the switch to y happens meanwhile
        seen.append(name)

    switch = ProfileSwitch(config(), on_change=announce)
    first = threading.Thread(target=switch.set, args=("x",))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=switch.set, args=("y",))
    second.start()
    second.join(0.3)  # it waits for the first announcement (or, wrongly, overtakes it)
    proceed.set()
    first.join(10)
    second.join(10)
    assert switch.active == "y" and seen == ["x", "y"]


@pytest.mark.parametrize("path, found", [
    ("llm", ("llm", "a")),
    ("llm/v1/models", ("llm", "a")),
    ("org/llm/health", ("org/llm", "b")),  # the longest pin that is a whole segment run
    ("llmx/health", None),
    ("org", None),
])
def test_upstream_pin_takes_the_longest_whole_segment_prefix(path, found):
    assert upstream_pin(path, {"llm": "a", "org/llm": "b"}) == found
