"""The symbolic matrix solver against brute force (the reference revision's expansion), on
random expressions; and what brute force cannot do: expressions of millions of combinations."""

from __future__ import annotations

import random

from matrix_oracle import brute_solve, count, expanded, random_dsl

from llamaswap.config.matrix import compile_sets
from llamaswap.config.model import MatrixConfig
from llamaswap.router.planners import MatrixPlanner
from llamaswap.router.solver import MatrixSolver


def random_matrix(rng: random.Random):
    models = [f"m{i}" for i in range(rng.randint(2, 7))]
    sets: list[tuple[str, str]] = []
    for i in range(rng.randint(1, 4)):
        sets.append((f"s{i}", random_dsl(rng, models, [name for name, _ in sets])))
    rng.shuffle(sets)  # a reference may come before its definition: solver order is topological
    try:
        compiled = compile_sets(sets, lambda name: name)
    except ValueError:  # a shuffled reference can make a cycle: not what this test is about
        return None
    if sum(count(s.root) for s in compiled) > 3000:  # too much for brute force
        return None
    costs = {m: rng.randint(1, 4) for m in models if rng.random() < 0.5}
    return models + ["outsider"], compiled, costs


def test_solver_matches_brute_force_on_random_expressions():
    rng = random.Random(11)
    checked = 0
    while checked < 3000:
        made = random_matrix(rng)
        if made is None:
            continue
        models, sets, costs = made
        solver = MatrixSolver(sets, costs)
        combos = expanded(sets)
        for _ in range(5):
            target = rng.choice(models)
            running = set(rng.sample(models, rng.randint(0, len(models) - 1))) - {target}
            got = solver.solve(target, running)
            want = brute_solve(combos, costs, target, running)
            context = f"sets={[(s.name, s.dsl) for s in sets]} costs={costs} target={target} running={running}"
            if want is None:
                assert (got.evict, got.set_name) == (tuple(sorted(running)), ""), context
            else:
                assert (got.evict, got.set_name, got.total_cost) == want, context
                assert (got.set_name, got.target_set) in combos, context  # the log names a real combination
                assert target in got.target_set and not set(got.evict) & set(got.target_set)
            assert solver.can_contain_all({target, *running}) == any(
                {target, *running} <= set(combo) for _, combo in combos), context
            checked += 1


def test_target_already_running_names_the_first_set_that_holds_everything():
    sets = compile_sets([("ab", "a & b"), ("abc", "a & b & c")], lambda n: n)
    result = MatrixSolver(sets).solve("a", ["a", "c"])
    assert result.evict == () and result.set_name == "abc" and result.target_set == ("a", "c")


def big_matrix() -> MatrixConfig:
    # 12 slots of 4 alternatives: 4^12 = 16.7 M combinations, plus a set referencing it twice
    dsl = " & ".join("(" + " | ".join(f"m{i}-{j}" for j in range(4)) + ")" for i in range(12))
    sets = compile_sets([("big", dsl), ("twice", "+big & +big & extra")], lambda n: n)
    return MatrixConfig(compiled_sets=sets, model_evict_costs={"m0-1": 5})


def test_millions_of_combinations_route_without_expansion():
    planner = MatrixPlanner(big_matrix())
    running = {f"m{i}-0" for i in range(12)}
    # `twice` lets two models of a slot run together (with `extra`): m0-1 evicts nothing
    result = planner.solve("m0-1", running)
    assert result.evict == () and result.set_name == "twice" and len(result.target_set) == 14  # with extra
    # `extra` is only in `twice`, which holds at most two models of a slot: with three of
    # slot 0 running, one must go, and m0-1 costs 5 to evict
    crowd = running | {"m0-1", "m0-2"}
    result = planner.solve("extra", crowd)
    assert result.set_name == "twice" and result.total_cost == 1 and result.evict in (("m0-0",), ("m0-2",))
    assert planner.solver.can_contain_all(running | {"extra"})
    assert not planner.solver.can_contain_all({"m0-0", "m0-1", "m0-2"})
    assert planner.solve("outsider", running).evict == tuple(sorted(running))


def test_ties_keep_traversal_order_in_a_big_expression():
    dsl = " & ".join("(" + " | ".join(f"m{i}-{j}" for j in range(4)) + ")" for i in range(12))
    solver = MatrixSolver(compile_sets([("big", dsl)], lambda n: n))
    # m0-1 and m0-2 both run; m0-3 needs slot 0: evict one of them, the first alternative
    # found keeps m0-1 (written first), so m0-2 goes
    assert solver.solve("m5-0", {"m0-1", "m0-2"}).evict == ("m0-2",)


def test_planner_memoises_answers_per_target_and_running_set():
    planner = MatrixPlanner(big_matrix())
    first = planner.solve("m3-2", frozenset({"m3-1", "m4-0"}))
    assert planner.solve("m3-2", {"m4-0", "m3-1"}) is first
    assert planner.eviction_for("m3-2", frozenset({"m3-1", "m4-0"})) == ()  # `twice` holds both
