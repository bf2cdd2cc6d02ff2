"""Terms and the query language: tokens, a recursive-descent parser, and evaluation.

A keyword and a query term are the same thing, a :class:`Term`: words to find consecutively in
some fields. A query parses to a tree of :class:`Leaf` / :class:`Not` / :class:`And` /
:class:`Or`; an error names where the query came from and what was expected, then shows the
query with a caret under the character where it went wrong::

    topics.rl.query: expected a term after "AND"
        "reinforcement learning" AND
                                    ^
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import MatchError
from .index import FIELDS, UNPREFIXED, Phrase, forms, words

MAX_NESTING = 50  # parentheses and NOTs; deeper queries are refused rather than overflow the stack
_FIELD_LIST = "the fields are " + ", ".join(f + ":" for f in FIELDS)
EXCERPT = 72  # columns of a long query shown around the caret
_INDENT = "    "

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


def _syntax(where: str, query: str, position: int | None, message: str) -> MatchError:
    """The error at the 1-based ``position`` of ``query`` (None: the whole query): what is
    wrong, then the query and a caret under that character."""
    return MatchError(f"{where}: {message}{_pointer(query, position)}", position=position)


def _pointer(query: str, position: int | None) -> str:
    """The line of the query where ``position`` is, indented, and a caret under it (none when
    ``position`` is None); a long line is cut around it. Empty for a blank query."""
    if not query.strip():
        return ""
    # past the end: just after the last character written (not on a blank line after it)
    index = len(query.rstrip()) if position is None else min(position - 1, len(query.rstrip()))
    start = query.rfind("\n", 0, index) + 1
    end = query.find("\n", index)
    line = query[start : len(query) if end < 0 else end]
    column = index - start
    if len(line) > EXCERPT:
        first = max(0, min(column - EXCERPT // 2, len(line) - EXCERPT))
        cut = line[first : first + EXCERPT]
        line = ("..." if first else "") + cut + ("..." if first + EXCERPT < len(line) else "")
        column += 3 - first if first else 0
    shown = _INDENT + _visible(line)
    if position is None:
        return "\n" + shown
    return "\n" + shown + "\n" + _INDENT + " " * sum(map(_columns, _visible(line[:column]))) + "^"


def _visible(text: str) -> str:
    """``text`` safe to print on one line: a tab is a space, a carriage return nothing, any
    other control character or line break ``?``."""
    return "".join(map(_shown, text))


def _shown(char: str) -> str:
    if char in "\t\r":
        return " " if char == "\t" else ""
    category = unicodedata.category(char)
    return "?" if category[0] == "C" or category in ("Zl", "Zp") else char


def _columns(char: str) -> int:
    """How many terminal columns a printed character takes, so that the caret lands under it."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _quote(text: str) -> str:
    """A piece of the query quoted for a message: ``"AND"``, ``'"link prediction"'``."""
    return _visible(f"'{text}'" if '"' in text else f'"{text}"')


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
                raise _syntax(
                    where, query, i + 1, '"-" must be followed by a term, with no space: like -survey'
                )
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
                    close = difflib.get_close_matches(prefix[1].lower(), FIELDS, n=1)
                    known = f"did you mean `{close[0]}:`?" if close else _FIELD_LIST
                    raise _syntax(
                        where,
                        query,
                        i + 1,
                        f"unknown field {_quote(prefix[0])}; {known} (to search for these words, "
                        "put them in quotes)",
                    )
                field = FIELDS.index(prefix[1].lower())
                i = prefix.end()
                if i == j and query[i : i + 1] != '"':
                    raise _syntax(
                        where, query, i + 1, f'expected a term or "phrase" right after {_quote(prefix[0])}'
                    )
            if i == j:  # a quoted phrase, perhaps after a prefix
                j = query.find('"', i + 1)
                if j < 0:
                    raise _syntax(where, query, i + 1, 'this quote is never closed: add a " after the phrase')
                value, i = query[i + 1 : j], j + 1
            else:
                value, i = query[i:j], j
            text = query[start:i]
            term = _term(text, UNPREFIXED if field is None else (field,), value)
            if term is None:
                raise _syntax(where, query, start + 1, f"{_quote(text)} has no letters or digits")
            tokens.append(_Token("term", start + 1, text, term))
    return tokens


class _Parser:
    """Recursive descent: ``or := and ("OR" and)*``, ``and := unary ("AND"? unary)*``,
    ``unary := ("NOT" | "-") unary | "(" or ")" | term``. So NOT binds tightest, then AND."""

    def __init__(self, query: str, where: str) -> None:
        self.query = query
        self.tokens = _tokens(query, where)
        self.end = len(query) + 1
        self.where = where
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def error(self, message: str, at: _Token | None = None) -> MatchError:
        """The error at ``at``, else at the next token (or the end of the query)."""
        token = at or self.peek()
        return _syntax(self.where, self.query, token.position if token else self.end, message)

    def parse(self) -> Node:
        if not self.tokens:
            raise self.error("the query is empty")
        node = self.any_of(None)
        token = self.peek()
        if token is not None:  # only a ")" stops any_of before the end
            raise self.error(f'this {_quote(token.text)} has no "(" before it to close')
        return node

    def any_of(self, after: _Token | None) -> Node:
        nodes = [self.all_of(after)]
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
            wanted = f"expected a term after {_quote(after.text)}" if after else "expected a term"
            raise self.error(wanted if token is None else f"{wanted}, found {_quote(token.text)}")
        if token.kind == "term":
            self.i += 1
            assert token.term is not None
            return Leaf(token.term)
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"parentheses and NOTs nest more than {MAX_NESTING} deep here")
        self.i += 1
        if token.kind == "NOT":
            node: Node = Not(self.unary(token))
        else:
            node = self.any_of(token)
            if (close := self.peek()) is None or close.kind != ")":
                raise self.error('this "(" is never closed: add a ")" where its group ends', at=token)
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
    """Parse a query, or raise MatchError naming ``where``, with the query and a caret under
    the character where it went wrong (its 1-based ``position``).

    Besides syntax errors, a query that would match an entry containing none of its terms
    (``NOT survey``, ``a OR -b``) is refused: a topic with it would take almost every entry.
    """
    node = _Parser(query, where).parse()
    if evaluate(node, lambda term: False):
        raise _syntax(
            where,
            query,
            None,
            "this query matches entries that contain none of its terms; it needs a term that must "
            "be present (to veto entries, use `exclude`)",
        )
    return node
