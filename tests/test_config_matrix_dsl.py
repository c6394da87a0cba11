"""The matrix set DSL on its own (upstream's internal/matrix dsl_test.go): parse trees and
upstream's error texts. Expressions are never expanded (see test_router_solver.py)."""

import pytest

from llamaswap.config.matrix_dsl import DSLError, parse, walk


def leaf(name):
    return ("ident", name)


@pytest.mark.parametrize("dsl, tree", [
    ("a", leaf("a")),
    ("a & b", ("&", [leaf("a"), leaf("b")])),
    ("a | b", ("|", [leaf("a"), leaf("b")])),
    ("a | b & c", ("|", [leaf("a"), ("&", [leaf("b"), leaf("c")])])),  # & binds tighter than |
    ("(a | b) & c", ("&", [("|", [leaf("a"), leaf("b")]), leaf("c")])),
    ("+llms & v", ("&", [("ref", "llms"), leaf("v")])),
    ("((a))", leaf("a")),
    ("  x.y-z_1 & é2  ", ("&", [leaf("x.y-z_1"), leaf("é2")])),  # identifier characters, trimmed
    ("qwen2.5-coder-32b & nomic-embed-v1.5", ("&", [leaf("qwen2.5-coder-32b"), leaf("nomic-embed-v1.5")])),
])
def test_parse(dsl, tree):
    assert parse(dsl) == tree


def test_walk_visits_parents_first_in_written_order():
    names = [n[1] if n[0] in ("ident", "ref") else n[0] for n in walk(parse("a & (+r | b) & c"))]
    assert names == ["&", "a", "|", "r", "b", "c"]


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
        parse(dsl)
    assert str(e.value) == message
