"""Selector strategies on their own (upstream's selector_test.go cases), pure: states in,
target out."""

from __future__ import annotations

import pytest

from llamaswap.config.model import Config, ModelConfig, PeerConfig, SelectorConfig
from llamaswap.router.selectors import SelectorError, Selectors


def config(*selectors: SelectorConfig) -> Config:
    models = {m: ModelConfig(id=m) for m in "abc"}
    return Config(models=models, aliases={"alpha": "a"},
                  peers={"remote": PeerConfig(id="remote", proxy="http://x", models=("r1", "r2"))},
                  selectors={s.id: s for s in selectors})


def states(**kw) -> callable:
    return lambda target: kw.get(target, "")


def test_pin_takes_the_first_target_whatever_runs():
    sel = Selectors(config(SelectorConfig("p", "pin", ("b", "a"))))
    assert sel.choose("p", states(a="ready")).target == "b"


def test_warm_prefers_ready_then_starting_then_sleeping_then_the_first():
    sel = Selectors(config(SelectorConfig("w", "warm", ("a", "b", "c"))))
    assert sel.choose("w", states()).target == "a"
    assert sel.choose("w", states(c="starting")).target == "c"
    assert sel.choose("w", states(b="starting", c="ready")).target == "c"
    assert sel.choose("w", states(a="stopping", b="ready")).target == "b"
    # a sleeping target wakes faster than a cold one loads, and a running one wins over both
    assert sel.choose("w", states(b="sleeping", c="sleeping")).target == "b"
    assert sel.choose("w", states(b="sleeping", c="starting")).target == "c"
    choice = sel.choose("w", states(a="ready"))
    assert choice.target == "a" and not choice.reserved


def test_warm_keeps_the_target_as_written():
    sel = Selectors(config(SelectorConfig("w", "warm", ("alpha", "b"))))
    assert sel.choose("w", states(alpha="ready")).target == "alpha"


def test_spillover_fills_each_target_to_its_reservation_count_in_order():
    sel = Selectors(config(SelectorConfig("pool", "spillover", ("a", "b", "c"), spillover=2)))
    picks = [sel.choose("pool", states()) for _ in range(3)]
    assert [c.target for c in picks] == ["a", "a", "b"]
    sel.release(picks[0])
    # a has 1, b has 1, c none; all ready: the least busy, c
    assert sel.choose("pool", states(a="ready", b="ready", c="ready")).target == "c"
    assert sel.in_flight("pool") == {"a": 1, "b": 1, "c": 1}


def test_spillover_skips_stopping_targets_and_fails_when_none_is_left():
    sel = Selectors(config(SelectorConfig("pool", "spillover", ("a", "b", "c"), spillover=2)))
    assert sel.choose("pool", states(a="stopping", b="ready")).target == "b"
    with pytest.raises(SelectorError, match='selector "pool" has no available spillover targets'):
        sel.choose("pool", states(a="stopping", b="stopping", c="shutdown"))


def test_spillover_over_peers_and_round_robin_among_equals():
    sel = Selectors(config(SelectorConfig("pool", "spillover", ("remote/r1", "r2"), spillover=1)))
    first, second = sel.choose("pool", states()), sel.choose("pool", states())
    assert (first.target, second.target) == ("remote/r1", "r2")
    # both busy at the threshold, no cold one left: least busy, taking turns
    third, fourth = sel.choose("pool", states()), sel.choose("pool", states())
    assert {third.target, fourth.target} == {"remote/r1", "r2"}
    for c in (first, second, third, fourth):
        sel.release(c)
    assert sel.in_flight("pool") == {"remote/r1": 0, "remote/r2": 0}
    assert sel.choose("pool", states()).target == "remote/r1"


def test_spillover_counts_per_model_so_an_alias_and_its_model_share_one_count():
    sel = Selectors(config(SelectorConfig("pool", "spillover", ("alpha", "b"), spillover=1)))
    first = sel.choose("pool", states(alpha="ready"))
    assert first.target == "alpha" and sel.in_flight("pool") == {"a": 1}
