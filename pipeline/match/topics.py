"""Topics: compiled once, matched against every document, ranked, and explained.

The one place that decides whether a topic takes an entry is ``_judge``; ``match_topics`` ranks
what it takes and ``explain`` reports every check it made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import TopicConfig
from ..errors import MatchError
from ..models import Match
from .index import FIELDS, Document
from .query import Leaf, Node, Not, Or, Term, evaluate, keyword_term, parse_query, query_terms

# What a term found in each field adds to the score: the title 3, any other field 1.
WEIGHTS = (3, 1, 1, 1, 1)


# --- topics ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    """A topic ready to match: every distinct term once, keywords first, then the query's."""

    name: str
    terms: tuple[Term, ...]
    keywords: tuple[int, ...]  # indexes into terms
    query: Node | None
    query_text: str | None
    query_order: tuple[int, ...]  # the query's terms, in the order written
    scoring: frozenset[int]  # query terms with an occurrence outside NOT: they count when the query matches
    exclude: tuple[Term, ...]
    feeds: frozenset[str]  # empty: every feed
    index: Mapping[tuple[tuple[int, ...], tuple[str, ...]], int]  # Term.key -> its index in terms
    alias: tuple[int, ...]  # per term, the first term that finds the same words (itself, mostly)


def compile_topic(name: str, topic: TopicConfig) -> CompiledTopic:
    """Compile one topic, or raise MatchError listing its problems (each with its config key)."""
    problems: list[MatchError] = []
    terms: dict[tuple[tuple[int, ...], tuple[str, ...]], int] = {}  # Term.key -> index in ordered
    ordered: list[Term] = []

    def add(term: Term) -> int:
        if term.key not in terms:
            terms[term.key] = len(ordered)
            ordered.append(term)
        return terms[term.key]

    def keyword_list(kind: str, values: Sequence[str]) -> list[Term]:
        found = []
        for i, text in enumerate(values):
            term = keyword_term(text)
            if term is None:
                key = ("topics", name, kind, i)
                problems.append(
                    MatchError(f"topics.{name}.{kind}[{i + 1}]: {text!r} has no letters or digits", key)
                )
            else:
                found.append(term)
        return found

    keywords = tuple(dict.fromkeys(add(t) for t in keyword_list("keywords", topic.keywords)))
    exclude = tuple(keyword_list("exclude", topic.exclude))
    query: Node | None = None
    order: list[int] = []
    scoring: set[int] = set()
    if topic.query is not None:
        try:
            query = parse_query(topic.query, f"topics.{name}.query")
        except MatchError as exc:
            problems.append(MatchError(str(exc), ("topics", name, "query"), position=exc.position))
        else:
            for term, negated in query_terms(query):
                index = add(term)
                order.append(index)
                if not negated:
                    scoring.add(index)
    if problems:
        raise MatchError("\n".join(map(str, problems)), problems=problems)
    # Terms that find the same words (RL, rl, RLs) score once, as first written.
    alias = tuple(next((j for j in range(i) if ordered[j].same(term)), i) for i, term in enumerate(ordered))
    return CompiledTopic(
        name=name,
        terms=tuple(ordered),
        keywords=keywords,
        query=query,
        query_text=topic.query,
        query_order=tuple(dict.fromkeys(order)),
        scoring=frozenset(scoring),
        exclude=exclude,
        feeds=frozenset(topic.feeds),
        index=terms,
        alias=alias,
    )


def compile_topics(topics: Mapping[str, TopicConfig]) -> dict[str, CompiledTopic]:
    """Compile every topic; raise one MatchError listing every problem."""
    compiled: dict[str, CompiledTopic] = {}
    problems: list[MatchError] = []
    for name, topic in topics.items():
        try:
            compiled[name] = compile_topic(name, topic)
        except MatchError as exc:
            problems.extend(exc.problems)
    if problems:
        raise MatchError("\n".join(map(str, problems)), problems=problems)
    return compiled


# --- matching ----------------------------------------------------------------------------------


def _found_in(term: Term, doc: Document) -> tuple[int, ...]:
    return tuple(f for f in term.fields if doc.fields[f].has(term.phrase))


@dataclass(frozen=True, slots=True)
class _Verdict:
    found: tuple[tuple[int, ...], ...]  # per term of the topic: the fields it was found in
    keyword_hit: bool
    query_hit: bool | None  # None: the topic has no query
    excluded: tuple[tuple[int, ...], ...]  # per exclude keyword: the fields it was found in
    counted: tuple[int, ...]  # the terms that count in the score and the hits

    @property
    def matched(self) -> bool:
        return (self.keyword_hit or bool(self.query_hit)) and not any(self.excluded)


def _judge(topic: CompiledTopic, doc: Document) -> _Verdict:
    """The one place that decides; ``match_topics`` and ``explain`` both read its verdict.

    Keywords that hit always count; the query's terms count (those found outside a NOT) only
    when the query as a whole matches. A term found in several fields adds each field's weight.
    """
    found = tuple(_found_in(term, doc) for term in topic.terms)
    keyword_hit = any(found[i] for i in topic.keywords)
    query_hit = None
    if topic.query is not None:
        query_hit = evaluate(topic.query, lambda term: bool(found[topic.index[term.key]]))
    excluded = tuple(_found_in(t, doc) for t in topic.exclude)
    counted: dict[int, int] = {}  # alias -> the first term of that alias that counts
    for i, where in enumerate(found):
        if where and (i in topic.keywords or (query_hit and i in topic.scoring)):
            counted.setdefault(topic.alias[i], i)
    return _Verdict(found, keyword_hit, query_hit, excluded, tuple(counted.values()))


def _score(topic: CompiledTopic, verdict: _Verdict) -> tuple[int, tuple[str, ...]]:
    score = sum(WEIGHTS[f] for i in verdict.counted for f in verdict.found[i])
    return score, tuple(topic.terms[i].text for i in verdict.counted)


def _rank(match: Match) -> tuple[int, float, int]:
    return (-match.score, -match.entry.published.timestamp(), -match.entry.id)


def match_topics(
    topics: Mapping[str, CompiledTopic], documents: Sequence[Document]
) -> dict[str, list[Match]]:
    """Every topic's matches, best first (score, then newest), computed once per topic."""
    postings: dict[str, set[int]] = {}  # word -> the documents that hold it, in any field
    for n, doc in enumerate(documents):
        for word in doc.vocabulary:
            postings.setdefault(word, set()).add(n)
    found = {}
    for name, topic in topics.items():
        candidates = _candidates(topic, postings)
        matches = []
        for n in range(len(documents)) if candidates is None else sorted(candidates):
            doc = documents[n]
            if topic.feeds and topic.feeds.isdisjoint(doc.feeds):
                continue
            verdict = _judge(topic, doc)
            if verdict.matched:
                score, hits = _score(topic, verdict)
                matches.append(Match(doc.entry, name, score, hits))
        matches.sort(key=_rank)
        found[name] = matches
    return found


def _candidates(topic: CompiledTopic, postings: Mapping[str, set[int]]) -> set[int] | None:
    """The documents that can match: those holding the first word of a keyword, or that the
    query's terms allow (AND intersects, OR unites); None when any document could."""

    def holding(term: Term) -> set[int]:
        return set().union(*(postings.get(word, ()) for word in term.phrase[0]))

    def allowed(node: Node) -> set[int] | None:
        if isinstance(node, Leaf):
            return holding(node.term)
        if isinstance(node, Not):
            return None
        parts = [allowed(n) for n in node.nodes]
        known = [p for p in parts if p is not None]
        if isinstance(node, Or):
            return None if len(known) < len(parts) else set().union(*known)
        return set.intersection(*sorted(known, key=len)) if known else None

    found = set().union(*(holding(topic.terms[i]) for i in topic.keywords))
    if topic.query is not None:
        by_query = allowed(topic.query)
        if by_query is None:
            return None
        found |= by_query
    return found


def match_topic(topic: CompiledTopic, documents: Sequence[Document]) -> list[Match]:
    """The entries this topic selects, best first (score, then newest)."""
    return match_topics({topic.name: topic}, documents)[topic.name]


# --- why ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TermCheck:
    """A keyword, query term or exclude keyword, and the fields it was found in (none: absent)."""

    text: str
    found_in: tuple[str, ...]
    negated: bool = False  # a query term that occurs only under NOT


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a topic did or did not match one entry: every check it made, and the outcome."""

    topic: str
    matched: bool
    score: int
    hits: tuple[str, ...]
    feeds: tuple[str, ...]  # the topic's feed restriction; empty: every feed
    feed_ok: bool
    keywords: tuple[TermCheck, ...]
    query: str | None
    query_matched: bool | None  # None: the topic has no query
    query_terms: tuple[TermCheck, ...]
    exclude: tuple[TermCheck, ...]

    @property
    def vetoed_by(self) -> tuple[TermCheck, ...]:
        """The exclude keywords found."""
        return tuple(check for check in self.exclude if check.found_in)

    @property
    def reason(self) -> str:
        """The outcome in a few words: what made it match, or the first check that failed."""
        if not self.feed_ok:
            return f"not from its feeds ({', '.join(self.feeds)})"
        if self.vetoed_by:
            return "vetoed by exclude " + ", ".join(c.text for c in self.vetoed_by)
        if self.matched:
            return f"matches, score {self.score}: " + ", ".join(self.hits)
        failed = ["no keyword found"] if self.keywords else []
        return "; ".join([*failed, "the query is false"] if self.query is not None else failed)


def explain(topic: CompiledTopic, doc: Document) -> Explanation:
    """Every check the topic makes on the entry, and the outcome ``match_topics`` reaches."""
    verdict = _judge(topic, doc)
    feed_ok = not topic.feeds or not topic.feeds.isdisjoint(doc.feeds)
    matched = feed_ok and verdict.matched
    score, hits = _score(topic, verdict) if matched else (0, ())

    def names(fields: tuple[int, ...]) -> tuple[str, ...]:
        return tuple(FIELDS[f] for f in fields)

    return Explanation(
        topic=topic.name,
        matched=matched,
        score=score,
        hits=hits,
        feeds=tuple(sorted(topic.feeds)),
        feed_ok=feed_ok,
        keywords=tuple(TermCheck(topic.terms[i].text, names(verdict.found[i])) for i in topic.keywords),
        query=topic.query_text,
        query_matched=verdict.query_hit,
        query_terms=tuple(
            TermCheck(topic.terms[i].text, names(verdict.found[i]), negated=i not in topic.scoring)
            for i in topic.query_order
        ),
        exclude=tuple(
            TermCheck(term.text, names(where))
            for term, where in zip(topic.exclude, verdict.excluded, strict=True)
        ),
    )
