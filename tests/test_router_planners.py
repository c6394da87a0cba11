"""Pure tests of the group planner and the matrix solver/planner (behaviour.md 4.5, 4.6)."""

from __future__ import annotations

import pytest

from llamaswap.config.matrix import compile_sets
from llamaswap.config.model import DEFAULT_GROUP_ID, Config, GroupConfig, MatrixConfig, ModelConfig
from llamaswap.router.planners import GroupPlanner, MatrixPlanner, planner_for
from llamaswap.router.solver import MatrixSolver


def groups(*specs: GroupConfig) -> GroupPlanner:
    return GroupPlanner({g.id: g for g in specs})


# ---- groups ------------------------------------------------------------------------------

def test_swap_group_evicts_its_running_siblings():
    p = groups(GroupConfig("g", swap=True, exclusive=True, members=("a", "b", "c")))
    assert p.eviction_for("b", {"a", "c"}) == {"a", "c"}
    assert p.eviction_for("b", {"b", "a"}) == {"a"}  # the target itself is never evicted


def test_non_swap_group_members_coexist():
    p = groups(GroupConfig("g", swap=False, exclusive=False, members=("a", "b")))
    assert p.eviction_for("b", {"a"}) == set()


def test_exclusive_group_evicts_other_non_persistent_groups():
    p = groups(GroupConfig("g1", members=("a",)), GroupConfig("g2", members=("b",)))
    assert p.eviction_for("b", {"a"}) == {"a"}


def test_persistent_group_is_not_evicted_by_other_groups():
    p = groups(GroupConfig("persist", swap=True, exclusive=False, persistent=True, members=("a",)),
               GroupConfig("other", swap=True, exclusive=True, members=("b",)))
    assert p.eviction_for("b", {"a"}) == set()


def test_persistent_group_still_swaps_among_its_own_members():
    p = groups(GroupConfig("persist", swap=True, exclusive=True, persistent=True, members=("a", "c")),
               GroupConfig("other", members=("b",)))
    assert p.eviction_for("c", {"a", "b"}) == {"a", "b"}


def test_non_exclusive_target_never_evicts_other_groups_not_even_exclusive_ones():
    # upstream's legacy quirk, kept on purpose
    p = groups(GroupConfig("g1", swap=True, exclusive=True, members=("a",)),
               GroupConfig("g2", swap=True, exclusive=False, members=("b",)))
    assert p.eviction_for("b", {"a"}) == set()
    # ...while the exclusive group, when loaded, does evict the non-exclusive one
    assert p.eviction_for("a", {"b"}) == {"b"}


def test_non_exclusive_groups_load_side_by_side():
    p = groups(GroupConfig("g1", swap=True, exclusive=False, members=("a",)),
               GroupConfig("g2", swap=True, exclusive=False, members=("b",)))
    assert p.eviction_for("a", {"b"}) == set() and p.eviction_for("b", {"a"}) == set()


def test_exclusive_target_evicts_models_in_no_group():
    p = groups(GroupConfig("g", members=("a",)))
    assert p.eviction_for("a", {"stray"}) == {"stray"}
    # a target in no group evicts nothing (upstream: zero-value group config)
    assert p.eviction_for("stray", {"a"}) == set()


def test_default_group_is_a_plain_swap_group():
    config = Config(models={m: ModelConfig(m) for m in ("a", "b")},
                    groups={DEFAULT_GROUP_ID: GroupConfig(DEFAULT_GROUP_ID, members=("a", "b"))})
    p = planner_for(config)
    assert isinstance(p, GroupPlanner)
    assert p.eviction_for("a", {"b"}) == {"b"}


# ---- matrix solver -----------------------------------------------------------------------

def compiled(*sets: tuple[str, str], var: dict | None = None):
    """Compile (name, dsl) sets; a name is a var of `var`, else a model id."""
    var = var or {}
    return compile_sets(list(sets), lambda name: var.get(name, name))


def test_target_already_running_evicts_nothing_even_in_no_matching_set():
    s = MatrixSolver(compiled(("a", "a"), ("b", "b")))
    result = s.solve("a", ["a", "b"])
    assert result.evict == () and result.set_name == ""


def test_model_in_no_set_runs_alone():
    s = MatrixSolver(compiled(("ab", "a & b")))
    assert s.solve("z", ["a", "b"]).evict == ("a", "b")
    assert s.solve("z", []).evict == ()


def test_ties_go_to_the_earlier_expanded_set():
    s = MatrixSolver(compiled(("first", "a & b"), ("second", "a & c")))
    assert s.solve("a", []).set_name == "first"
    assert s.solve("a", ["d"]).set_name == "first"


def test_evict_costs_steer_to_the_cheaper_set():
    s = MatrixSolver(compiled(("a_with_c", "a & c"), ("a_with_b", "a & b")), {"b": 10, "c": 1})
    result = s.solve("a", ["b", "c"])
    assert result.set_name == "a_with_b" and result.evict == ("c",) and result.total_cost == 1


def test_unlisted_evict_cost_defaults_to_one():
    s = MatrixSolver(compiled(("x", "a & b"), ("y", "a & c & d")))
    # keeping b costs c+d = 2; keeping c, d costs b = 1
    assert s.solve("a", ["b", "c", "d"]).set_name == "y"
    assert s.evict_cost("anything") == 1


def example_matrix() -> MatrixConfig:
    """The matrix of upstream's config.example.yaml."""
    var = {"g": "gemma-model", "q": "qwen-model", "m": "mistral-model", "v": "voxtral-model",
           "e": "reranker-model", "L": "llama-70B", "sd": "stable-diffusion"}
    sets = compiled(("standard", "(g | q | m) & v"), ("with_rerank", "(g | q) & v & e"),
                    ("creative", "(g | q) & sd"), ("full", "L"), var=var)
    return MatrixConfig(vars=var, evict_costs={"v": 50, "L": 30}, compiled_sets=sets,
                        model_evict_costs={"voxtral-model": 50, "llama-70B": 30})


@pytest.mark.parametrize("target, running, evict, chosen", [
    # switching LLMs keeps the TTS model (standard, lower index than with_rerank)
    ("qwen-model", {"gemma-model", "voxtral-model"}, ("gemma-model",), "standard"),
    # with the reranker running, with_rerank keeps more: 1 eviction instead of 2
    ("qwen-model", {"gemma-model", "voxtral-model", "reranker-model"}, ("gemma-model",), "with_rerank"),
    # image generation next to gemma: evicting voxtral costs 50, so creative wins
    ("stable-diffusion", {"gemma-model"}, (), "creative"),
    ("stable-diffusion", {"gemma-model", "voxtral-model"}, ("voxtral-model",), "creative"),
    # TTS next to gemma + sd: standard [g,v] (index 0) ties with with_rerank [g,v,e]
    ("voxtral-model", {"gemma-model", "stable-diffusion"}, ("stable-diffusion",), "standard"),
    # the 70B model runs alone, whatever it costs
    ("llama-70B", {"voxtral-model", "qwen-model"}, ("qwen-model", "voxtral-model"), "full"),
    ("mistral-model", {"llama-70B"}, ("llama-70B",), "standard"),
    # a model in no set runs alone
    ("qwen-unlisted", {"gemma-model", "voxtral-model"}, ("gemma-model", "voxtral-model"), ""),
    # already running: nothing to do
    ("gemma-model", {"gemma-model", "llama-70B"}, (), ""),
])
def test_upstream_example_matrix(target, running, evict, chosen):
    planner = MatrixPlanner(example_matrix())
    result = planner.solver.solve(target, running)
    assert result.evict == evict
    assert result.set_name == chosen
    assert tuple(planner.eviction_for(target, frozenset(running))) == evict


def test_matrix_planner_log_lines_follow_upstream():
    planner = MatrixPlanner(example_matrix())
    level, msg = planner.describe_swap("qwen-model", frozenset({"gemma-model", "voxtral-model"}))
    assert level == "info"
    assert msg == ('matrix: model=qwen-model set=standard dsl="(g | q | m) & v" evict=[gemma-model] '
                   'target=[qwen-model voxtral-model] cost=1')
    assert planner.describe_swap("qwen-model", frozenset()) == (
        "info", "matrix: model=qwen-model starting (no models running)")
    assert planner.describe_swap("qwen-model", frozenset({"qwen-model"}))[0] == "debug"


def test_planner_for_picks_the_matrix_when_configured():
    assert isinstance(planner_for(Config(matrix=example_matrix())), MatrixPlanner)
