"""Which entries belong to which topic: pure functions, no I/O. The rules, as README "Topics" states them:

- An entry's searchable text: title; summary (HTML stripped, entities decoded); authors;
  categories; the feeds that carried it.
- **Words.** Text is split into words of letters and digits; everything else (spaces, hyphens,
  slashes, punctuation) separates words. Matching is case-insensitive and accent-insensitive.
  Plurals fold: a word matches its simple English plural and back (`network`~`networks`,
  `SNN`~`SNNs`, `MDP`~`MDPs`, `policy`~`policies`, `bandit`~`bandits`); no other stemming.
- **A keyword** is one or more words; it matches when its words appear consecutively in the
  title or the summary. So `RL` matches "RL" and "(RL)" but not "URL" nor "TempoRL";
  `score-based` matches "score-based" and "score based"; `diffusion model` matches "Diffusion
  Models" and also "solution-diffusion model" (that is what the rule says).
- **`keywords`**: the topic matches when any keyword matches.
- **`query`**: a boolean expression of terms and "quoted phrases" (each with the keyword rule),
  `AND`, `OR`, `NOT` (upper case), parentheses, a leading `-` for NOT, juxtaposition meaning
  AND, and field prefixes `title:`, `summary:`, `author:`, `category:`, `feed:` (a term without
  a prefix searches title and summary). Errors are reported by `digest check` with the topic
  and the character position.
- A topic with both matches when any keyword OR the query matches. **`exclude`** keywords veto
  it. **`feeds`** restricts it to entries carried by those feeds.
- **Ranking** within a topic: a score (a title hit weighs 3, a summary hit 1, summed over
  distinct keywords/terms), then newest first. `max_entries` keeps the best.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .config import TopicConfig
from .errors import MatchError
from .models import Entry, Match
from .text import strip_html

FIELDS = ("title", "summary", "author", "category", "feed")
TITLE, SUMMARY, AUTHOR, CATEGORY, FEED = range(len(FIELDS))
UNPREFIXED = (TITLE, SUMMARY)
# What a term found in each field adds to the score: the title 3, any other field 1.
WEIGHTS = (3, 1, 1, 1, 1)
MAX_NESTING = 50  # parentheses and NOTs; deeper queries are refused rather than overflow the stack

# Letters and digits, and the combining marks of decomposed accents: "é" written as "e" plus
# U+0301 stays one word (Python's \w counts those marks as separators).
_WORD = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])*")
_ASCII_WORD = re.compile(r"[a-z0-9]+")
_PREFIX = re.compile(r"([A-Za-z]+):")
# Tags that end a word: strip_html drops tags without a trace, which would glue
# "...networks</p><p>We..." into one word.
_BLOCK_TAG = re.compile(
    r"<\s*/?\s*(?:p|br|div|li|ul|ol|dl|dt|dd|h[1-6]|tr|td|th|table|blockquote|pre|hr|section|article"
    r"|header|footer|figure|figcaption)\b[^>]*>",
    re.IGNORECASE,
)

Phrase = tuple[frozenset[str], ...]  # per word of a keyword, the folded words it matches


# --- words -------------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def fold(word: str) -> str:
    """A word as matching compares it: case folded, accents removed (``Réseau`` -> ``reseau``)."""
    word = word.casefold()
    if word.isascii():
        return word
    # Compatibility forms can decompose to capitals (mathematical bold A is A): fold case again.
    word = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return word.casefold()


def words(text: str) -> list[str]:
    """The folded words of a text, in order."""
    if text.isascii():  # the common case, and lower() is casefold() on ASCII
        return _ASCII_WORD.findall(text.lower())
    return [fold(w) for w in _WORD.findall(text)]


def plural(word: str) -> str | None:
    """The simple English plural of a folded word (None for a one-letter word).

    ``es`` after s, x, z, ch, sh (``bus`` -> ``buses``, ``match`` -> ``matches``); ``ies`` for
    a consonant and y (``policy`` -> ``policies``); otherwise ``s`` (``snn`` -> ``snns``,
    ``day`` -> ``days``, ``movie`` -> ``movies``, ``1990`` -> ``1990s``).
    """
    if len(word) < 2:
        return None
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word[-1] == "y" and word[-2].isalpha() and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


@lru_cache(maxsize=1 << 14)
def forms(word: str) -> frozenset[str]:
    """The folded words that match ``word``: itself, its plural, and the words it is the plural of.

    The relation is symmetric but deliberately not transitive: ``bu``~``bus`` and
    ``bus``~``buses``, yet ``case`` (plural ``cases``) never matches ``ca``.
    """
    word = fold(word)
    found = {word}
    if more := plural(word):
        found.add(more)
    for stem in (word[:-1], word[:-2], word[:-3] + "y"):
        if plural(stem) == word:
            found.add(stem)
    return frozenset(found)


def same_word(a: str, b: str) -> bool:
    """Whether two words match each other (case, accents and the plural folded)."""
    return fold(b) in forms(a)


def summary_text(summary_html: str) -> str:
    """A summary's searchable text: tags stripped, entities decoded, block tags kept as spaces."""
    if "<" not in summary_html and "&" not in summary_html:
        return summary_html
    return strip_html(_BLOCK_TAG.sub(" ", summary_html))


# --- entries -----------------------------------------------------------------------------------


class Field:
    """One searchable field of an entry: its folded words, in order and as a set."""

    __slots__ = ("vocabulary", "words")

    def __init__(self, *texts: str) -> None:
        # Several texts (the authors) are kept apart by an empty word, which no phrase holds, so
        # a phrase never runs from one author's name into the next.
        seq: list[str] = []
        for text in texts:
            if seq:
                seq.append("")
            seq.extend(words(text))
        self.words = seq
        self.vocabulary = frozenset(seq)

    def has(self, phrase: Phrase) -> bool:
        """Whether the phrase's words appear here consecutively."""
        first, rest = phrase[0], phrase[1:]
        if self.vocabulary.isdisjoint(first):
            return False
        if not rest:
            return True
        seq = self.words
        last = len(seq) - len(rest)
        for word in first & self.vocabulary:
            i = seq.index(word)
            while i < last:
                if all(seq[i + 1 + j] in accepted for j, accepted in enumerate(rest)):
                    return True
                try:
                    i = seq.index(word, i + 1)
                except ValueError:
                    break
        return False


@dataclass(frozen=True, slots=True)
class Document:
    """An entry tokenised once, ready to be matched against every topic."""

    entry: Entry
    fields: tuple[Field, ...]  # in FIELDS order: title, summary, author, category, feed
    feeds: frozenset[str]
    vocabulary: frozenset[str]  # every word in any field


def index_entry(entry: Entry) -> Document:
    """Tokenise one entry's searchable text."""
    fields = (
        Field(entry.title),
        Field(summary_text(entry.summary_html)),
        Field(*entry.authors),
        Field(*entry.categories),
        Field(*entry.feeds),
    )
    vocabulary = frozenset().union(*(f.vocabulary for f in fields)) - {""}
    return Document(entry, fields, frozenset(entry.feeds), vocabulary)


def index_entries(entries: Iterable[Entry]) -> list[Document]:
    """Tokenise entries once for all topics."""
    return [index_entry(e) for e in entries]


# --- terms and queries -------------------------------------------------------------------------


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
            problems.append(MatchError(str(exc), ("topics", name, "query")))
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


# --- highlighting ------------------------------------------------------------------------------


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
    tokens = [(m.start(), m.end(), fold(m.group())) for m in _WORD.finditer(text)]
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
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
