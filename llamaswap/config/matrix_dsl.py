"""The matrix set DSL: ``(g | q) & v``, ``+ref``.

Grammar (``&`` binds tighter than ``|``, so ``a | b & c`` is ``a | (b & c)``)::

    expr = and ('|' and)*
    and  = atom ('&' atom)*
    atom = ident | '+' ident | '(' expr ')'

``|`` offers alternatives, ``&`` lets the models of each side run together, ``+ref`` stands
for another set's expression. This module only parses; config.matrix resolves and links the
trees and router.solver answers queries on them without ever expanding the combinations.
Error texts are upstream's.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from .gocompat import go_is_space, go_quote, go_quote_rune, go_trim_space


class DSLError(Exception):
    """A set expression that does not parse or expand; the message is upstream's."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "ident", "ref", "&", "|", "(", ")", "eof"
    value: str


def _is_ident_char(ch: str) -> bool:
    # Go's unicode.IsLetter / unicode.IsDigit (decimal digits only)
    category = unicodedata.category(ch)
    return category.startswith("L") or category == "Nd" or ch in "_-."


def tokenize(dsl: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(dsl)  # Python indexes code points, as Go's []rune does
    while i < n:
        ch = dsl[i]
        if go_is_space(ch):
            i += 1
        elif ch in "&|()":
            tokens.append(_Token(ch, ch))
            i += 1
        elif ch == "+":
            start = i = i + 1
            while i < n and _is_ident_char(dsl[i]):
                i += 1
            if i == start:
                raise DSLError(f"expected set name after '+' at position {start}")
            tokens.append(_Token("ref", dsl[start:i]))
        elif _is_ident_char(ch):
            start = i
            while i < n and _is_ident_char(dsl[i]):
                i += 1
            tokens.append(_Token("ident", dsl[start:i]))
        else:
            raise DSLError(f"unexpected character {go_quote_rune(ch)} at position {i}")
    tokens.append(_Token("eof", ""))
    return tokens


# AST: ("ident", name) | ("ref", name) | ("|", [children]) | ("&", [children])
Node = tuple


class _Parser:
    def __init__(self, tokens: list[_Token]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "eof":
            self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.expr()
        if self.peek().kind != "eof":
            raise DSLError(f"unexpected token {go_quote(self.peek().value)} after expression")
        return node

    def expr(self) -> Node:
        return self._chain("|", self.and_expr)

    def and_expr(self) -> Node:
        return self._chain("&", self.atom)

    def _chain(self, op: str, operand) -> Node:
        children = [operand()]
        while self.peek().kind == op:
            self.take()
            children.append(operand())
        return children[0] if len(children) == 1 else (op, children)

    def atom(self) -> Node:
        token = self.peek()
        if token.kind in ("ident", "ref"):
            self.take()
            return (token.kind, token.value)
        if token.kind == "(":
            self.take()
            node = self.expr()
            if self.take().kind != ")":
                raise DSLError("missing closing parenthesis")
            return node
        raise DSLError(f"unexpected token {go_quote(token.value)}")


def parse(dsl: str) -> Node:
    """The parse tree of one set's expression (trimmed first, as upstream)."""
    dsl = go_trim_space(dsl)
    if not dsl:
        raise DSLError("empty DSL expression")
    try:
        tokens = tokenize(dsl)
    except DSLError as e:
        raise DSLError(f"tokenize: {e}") from None
    try:
        return _Parser(tokens).parse()
    except DSLError as e:
        raise DSLError(f"parse: {e}") from None


def walk(node: Node):
    """Every node, parents before children, in written order (upstream's error order)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if current[0] in ("|", "&"):
            stack.extend(reversed(current[1]))
