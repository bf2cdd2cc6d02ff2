"""Highlighting: where in a text the hits of a match occur, by the same word rules as matching."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from ..errors import MatchError
from .index import FIELDS, UNPREFIXED, word_spans
from .query import Leaf, Term, keyword_term, parse_query


@lru_cache(maxsize=4096)
def hit_term(hit: str) -> Term | None:
    """The term a ``Match.hits`` string stands for: a query term (prefix, quotes) or a keyword."""
    try:
        node = parse_query(hit)
    except MatchError:
        return keyword_term(hit)
    return node.term if isinstance(node, Leaf) else keyword_term(hit)


def hit_spans(text: str, hits: Iterable[str], *, field: str | None = None) -> list[tuple[int, int]]:
    """Where in ``text`` the hits occur, as sorted, non-overlapping (start, end) spans.

    The same word rules as matching, so the highlighted words are exactly the ones that made
    the entry match; ``render`` uses this to wrap them in ``<mark>``. ``field`` names what
    ``text`` is (``"title"``, ``"summary"``, ``"author"``, ...): only hits that search it are
    highlighted, so ``title:diffusion`` marks the title alone. Without ``field``, every hit
    that searches the title or the summary is highlighted.
    """
    if field is not None and field not in FIELDS:
        raise ValueError(f"unknown field {field!r} (fields: {', '.join(FIELDS)})")
    wanted = set(UNPREFIXED) if field is None else {FIELDS.index(field)}
    tokens = word_spans(text)
    folded = [t[2] for t in tokens]
    spans = []
    for hit in hits:
        term = hit_term(hit)
        if term is None or wanted.isdisjoint(term.fields):
            continue
        n = len(term.phrase)
        for i in range(len(tokens) - n + 1):
            if all(folded[i + j] in accepted for j, accepted in enumerate(term.phrase)):
                spans.append((tokens[i][0], tokens[i + n - 1][1]))
    return merge_spans(spans)


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans in order, overlapping ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
