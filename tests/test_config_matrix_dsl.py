"""The matrix set DSL on its own (upstream matrix_dsl_test.go)."""

import pytest

from llamaswap.config.matrix_dsl import DSLError, extract_refs, parse_and_expand


@pytest.mark.parametrize("dsl, combos", [
    ("a", [["a"]]),
    ("a & b", [["a", "b"]]),
    ("a | b", [["a"], ["b"]]),
    ("a | b & c", [["a"], ["b", "c"]]),                 # & binds tighter than |
    ("(a | b) & c", [["a", "c"], ["b", "c"]]),
    ("(a | b) & (c | d)", [["a", "c"], ["a", "d"], ["b", "c"], ["b", "d"]]),  # left-major
    ("b & a", [["a", "b"]]),                            # each combination sorted
    ("a & a", [["a"]]),                                 # and de-duplicated
    ("((a))", [["a"]]),
    ("  x.y-z_1 & é2  ", [["x.y-z_1", "é2"]]),           # identifier characters, trimmed
])
def test_parse_and_expand(dsl, combos):
    assert parse_and_expand(dsl, {}) == combos


def test_ref_inlines_expanded_combinations():
    refs = {"llms": [["g"], ["q"]]}
    assert parse_and_expand("+llms & v", refs) == [["g", "v"], ["q", "v"]]
    assert extract_refs("+llms & +b | +llms") == ["llms", "b"]


@pytest.mark.parametrize("dsl, message", [
    ("", "empty DSL expression"),
    ("   ", "empty DSL expression"),
    ("(a | b", "parse: missing closing parenthesis"),
    ("a | b)", 'parse: unexpected token ")" after expression'),
    ("a b", 'parse: unexpected token "b" after expression'),
    ("a &", 'parse: unexpected token ""'),
    ("& a", 'parse: unexpected token "&"'),
    ("a ! b", "tokenize: unexpected character '!' at position 2"),
    ("a & +", "tokenize: expected set name after '+' at position 5"),
])
def test_errors(dsl, message):
    with pytest.raises(DSLError) as e:
        parse_and_expand(dsl, {})
    assert str(e.value) == message


def test_expansion_cap_per_operator():
    eleven = "(" + " | ".join(f"v{i}" for i in range(11)) + ")"
    assert len(parse_and_expand(f"{eleven} & {eleven}", {})) == 121
    with pytest.raises(DSLError, match="DSL expansion exceeded 1000 combinations"):
        parse_and_expand(" & ".join([eleven] * 3), {})
    with pytest.raises(DSLError, match="DSL expansion exceeded 1000 combinations"):
        parse_and_expand(" | ".join(f"v{i}" for i in range(1001)), {})
