"""Terms and the query language: tokens, a recursive-descent parser, and evaluation.

A keyword and a query term are the same thing, a :class:`Term`: words to find consecutively in
some fields. A query parses to a tree of :class:`Leaf` / :class:`Not` / :class:`And` /
:class:`Or`; errors name where the query came from and the 1-based character position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import MatchError
from .index import FIELDS, UNPREFIXED, Phrase, forms, words

MAX_NESTING = 50  # parentheses and NOTs; deeper queries are refused rather than overflow the stack

_PREFIX = re.compile(r"([A-Za-z]+):")


@dataclass(frozen=True, slots=True)
class Term:
    """A keyword or a query term: words to find consecutively in some fields."""

    text: str  # as the user wrote it: RL, title:diffusion, "graph neural network"
    fields: tuple[int, ...]  # indexes into FIELDS
    words: tuple[str, ...]  # folded
    phrase: Phrase  # per word, the folded words it matches

    @property
    def key(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The same key for the same words in the same fields, however they were spelled."""
        return (self.fields, self.words)

    def same(self, other: Term) -> bool:
        """Whether the two search the same fields for words that match (``RL`` and ``rls``)."""
        return (
            self.fields == other.fields
            and len(self.words) == len(other.words)
            and all(word in accepted for word, accepted in zip(other.words, self.phrase, strict=True))
        )


def _term(text: str, fields: tuple[int, ...], value: str) -> Term | None:
    found = tuple(words(value))
    return Term(text, fields, found, tuple(forms(w) for w in found)) if found else None


@dataclass(frozen=True, slots=True)
class Leaf:
    """A query term: true when the entry holds it."""

    term: Term


@dataclass(frozen=True, slots=True)
class Not:
    """``NOT x`` or ``-x``."""

    node: Node


@dataclass(frozen=True, slots=True)
class And:
    """``a AND b``, or ``a b``."""

    nodes: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """``a OR b``."""

    nodes: tuple[Node, ...]


Node = Leaf | Not | And | Or


def keyword_term(text: str) -> Term | None:
    """A keyword (title and summary, the keyword rule), or None if it has no letters or digits."""
    return _term(text, UNPREFIXED, text)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "term", "(", ")", "AND", "OR", "NOT"
    position: int  # 1-based, as people count characters
    text: str  # as written
    term: Term | None = None


def _syntax(where: str, position: int, message: str) -> MatchError:
    return MatchError(f"{where}: position {position}: {message}")


def _tokens(query: str, where: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, end = 0, len(query)
    while i < end:
        char = query[i]
        start = i
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Token(char, i + 1, char))
            i += 1
        elif char == "-":
            after = query[i + 1 : i + 2]
            if not after or after.isspace() or after == ")":
                raise _syntax(where, i + 1, "expected a term after '-'")
            tokens.append(_Token("NOT", i + 1, "-"))
            i += 1
        else:
            field: int | None = None
            j = i
            while j < end and not query[j].isspace() and query[j] not in '()"':
                j += 1
            if query[i:j] in ("AND", "OR", "NOT"):
                tokens.append(_Token(query[i:j], i + 1, query[i:j]))
                i = j
                continue
            if prefix := _PREFIX.match(query, i, j):
                if prefix[1].lower() not in FIELDS:
                    raise _syntax(
                        where,
                        i + 1,
                        f"unknown field {prefix[0]!r} (fields: {', '.join(f + ':' for f in FIELDS)}; "
                        "to search for these words, put them in quotes)",
                    )
                field = FIELDS.index(prefix[1].lower())
                i = prefix.end()
                if i == j and query[i : i + 1] != '"':
                    raise _syntax(where, i + 1, f'expected a term or "phrase" after {prefix[0]!r}')
            if i == j:  # a quoted phrase, perhaps after a prefix
                j = query.find('"', i + 1)
                if j < 0:
                    raise _syntax(where, i + 1, "unterminated quote")
                value, i = query[i + 1 : j], j + 1
            else:
                value, i = query[i:j], j
            text = query[start:i]
            term = _term(text, UNPREFIXED if field is None else (field,), value)
            if term is None:
                raise _syntax(where, start + 1, f"{text!r} has no letters or digits")
            tokens.append(_Token("term", start + 1, text, term))
    return tokens


class _Parser:
    """Recursive descent: ``or := and ("OR" and)*``, ``and := unary ("AND"? unary)*``,
    ``unary := ("NOT" | "-") unary | "(" or ")" | term``. So NOT binds tightest, then AND."""

    def __init__(self, query: str, where: str) -> None:
        self.tokens = _tokens(query, where)
        self.end = len(query) + 1
        self.where = where
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def error(self, message: str) -> MatchError:
        token = self.peek()
        return _syntax(self.where, token.position if token else self.end, message)

    def parse(self) -> Node:
        if not self.tokens:
            raise self.error("empty query")
        node = self.any_of()
        token = self.peek()
        if token is not None:
            raise self.error(f"unexpected {token.text!r}")
        return node

    def any_of(self) -> Node:
        nodes = [self.all_of(None)]
        while (token := self.peek()) is not None and token.kind == "OR":
            self.i += 1
            nodes.append(self.all_of(token))
        return nodes[0] if len(nodes) == 1 else Or(tuple(nodes))

    def all_of(self, after: _Token | None) -> Node:
        nodes = [self.unary(after)]
        while (token := self.peek()) is not None and token.kind in ("AND", "NOT", "(", "term"):
            if token.kind == "AND":
                self.i += 1
                nodes.append(self.unary(token))
            else:
                nodes.append(self.unary(None))
        return nodes[0] if len(nodes) == 1 else And(tuple(nodes))

    def unary(self, after: _Token | None) -> Node:
        token = self.peek()
        if token is None or token.kind in (")", "AND", "OR"):
            wanted = f"expected a term after {after.text!r}" if after else "expected a term"
            raise self.error(wanted if token is None else f"{wanted}, found {token.text!r}")
        if token.kind == "term":
            self.i += 1
            assert token.term is not None
            return Leaf(token.term)
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"nested more than {MAX_NESTING} deep")
        self.i += 1
        if token.kind == "NOT":
            node: Node = Not(self.unary(token))
        else:
            node = self.any_of()
            if (close := self.peek()) is None or close.kind != ")":
                raise self.error("expected ')'")
            self.i += 1
        self.depth -= 1
        return node


def evaluate(node: Node, found: Callable[[Term], bool]) -> bool:
    """The query's value when ``found`` says which of its terms the entry contains."""
    if isinstance(node, Leaf):
        return found(node.term)
    if isinstance(node, Not):
        return not evaluate(node.node, found)
    if isinstance(node, And):
        return all(evaluate(n, found) for n in node.nodes)
    return any(evaluate(n, found) for n in node.nodes)


def query_terms(node: Node, negated: bool = False) -> Iterable[tuple[Term, bool]]:
    """Each term of a query in order, and whether that occurrence is negated (under an odd number of NOTs)."""
    if isinstance(node, Leaf):
        yield node.term, negated
    elif isinstance(node, Not):
        yield from query_terms(node.node, not negated)
    else:
        for child in node.nodes:
            yield from query_terms(child, negated)


def parse_query(query: str, where: str = "query") -> Node:
    """Parse a query, or raise MatchError naming ``where`` and the 1-based character position.

    Besides syntax errors, a query that would match an entry containing none of its terms
    (``NOT survey``, ``a OR -b``) is refused: a topic with it would take almost every entry.
    """
    node = _Parser(query, where).parse()
    if evaluate(node, lambda term: False):
        raise _syntax(
            where,
            1,
            "this query matches entries that contain none of its terms; it needs a term that must "
            "be present (to veto entries, use `exclude`)",
        )
    return node
