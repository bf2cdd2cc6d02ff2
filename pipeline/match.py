"""Which entries belong to which topic: pure functions, no I/O.

The rules (README "Topics" is this same text):

- An entry's searchable text: its title; its summary (HTML stripped, entities decoded); its
  authors; its categories; the feeds that carried it.
- **Words.** Text is split into words of letters and digits; everything else (spaces, hyphens,
  slashes, punctuation) separates words. Matching is case-insensitive and accent-insensitive.
  Plurals fold: a word matches its simple English plural and back (``network``~``networks``,
  ``SNN``~``SNNs``, ``policy``~``policies``); no other stemming.
- **A keyword** is one or more words; it matches when its words appear consecutively in the
  title or the summary. So ``RL`` matches "RL" and "(RL)" but not "URL"; ``score-based``
  matches "score-based" and "score based".
- **keywords**: the topic matches when any keyword matches. **exclude** keywords veto it.
  **feeds** restricts it to entries carried by those feeds.
- **Ranking** within a topic: a score (a title hit weighs 3, a summary hit 1, summed over
  distinct keywords), then newest first.

Topics are compiled once per run and each entry is tokenised once; matching is done per topic
and shared by every subscriber of that topic.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .config import TopicConfig
from .errors import MatchError
from .models import Entry, Match
from .text import html_to_text

TITLE_WEIGHT = 3
SUMMARY_WEIGHT = 1

_WORD = re.compile(r"[^\W_]+")
_FOLD_E = ("s", "x", "z", "ch", "sh")


def fold(word: str) -> str:
    """A word's matching key: lower case, accents removed, simple English plural folded.

    ``policies`` -> ``policy``; ``networks`` -> ``network``; ``matches``/``match`` and
    ``caches``/``cache`` meet at ``match``/``cach``. Both sides of a comparison go through this
    function, so a key only needs to be the same for a word and its plural.
    """
    word = word.casefold()
    if not word.isascii():
        word = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) >= 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 3 and word.endswith("e") and word[:-1].endswith(_FOLD_E):
        word = word[:-1]
    return word


def words(text: str) -> list[str]:
    """The folded words of a text."""
    return [fold(w) for w in _WORD.findall(text)]


def hit_spans(text: str, hits: Iterable[str]) -> list[tuple[int, int]]:
    """Where in ``text`` the hit keywords occur, as sorted, non-overlapping (start, end) spans.

    The same word rules as matching, so the highlighted words are exactly the ones that made
    the entry match; ``render`` uses this to wrap them in ``<mark>``.
    """
    tokens = [(m.start(), m.end(), fold(m.group())) for m in _WORD.finditer(text)]
    folded = [t[2] for t in tokens]
    spans = []
    for hit in hits:
        phrase = words(hit)
        n = len(phrase)
        if not n:
            continue
        for i in range(len(tokens) - n + 1):
            if folded[i : i + n] == phrase:
                spans.append((tokens[i][0], tokens[i + n - 1][1]))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class Field:
    """One searchable field of an entry: its folded words and where each occurs."""

    __slots__ = ("positions", "words")

    def __init__(self, text: str) -> None:
        self.words = words(text)
        self.positions: dict[str, list[int]] = {}
        for i, word in enumerate(self.words):
            self.positions.setdefault(word, []).append(i)

    def has(self, phrase: tuple[str, ...]) -> bool:
        """Whether the phrase's words appear here consecutively."""
        starts = self.positions.get(phrase[0])
        if not starts:
            return False
        if len(phrase) == 1:
            return True
        n = len(phrase)
        seq = self.words
        return any(tuple(seq[i : i + n]) == phrase for i in starts)


@dataclass(frozen=True, slots=True)
class Document:
    """An entry tokenised once, ready to be matched against every topic."""

    entry: Entry
    title: Field
    summary: Field
    authors: Field
    categories: Field
    feeds: frozenset[str]


def index_entries(entries: Iterable[Entry]) -> list[Document]:
    """Tokenise entries once for all topics."""
    return [
        Document(
            entry=e,
            title=Field(e.title),
            summary=Field(html_to_text(e.summary_html)),
            authors=Field(" ; ".join(e.authors)),
            categories=Field(" ; ".join(e.categories)),
            feeds=frozenset(e.feeds),
        )
        for e in entries
    ]


@dataclass(frozen=True, slots=True)
class Keyword:
    text: str  # as the user wrote it
    phrase: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    name: str
    keywords: tuple[Keyword, ...]
    exclude: tuple[Keyword, ...]
    feeds: frozenset[str]  # empty: every feed


def _keyword(text: str, where: str) -> Keyword:
    phrase = tuple(words(text))
    if not phrase:
        raise MatchError(f"{where}: keyword {text!r} has no letters or digits")
    return Keyword(text, phrase)


def compile_topic(name: str, topic: TopicConfig) -> CompiledTopic:
    """Compile one topic's keywords, or raise MatchError naming the topic and the problem."""
    if topic.query:
        raise MatchError(f"topics.{name}.query: queries are not supported yet")
    return CompiledTopic(
        name=name,
        keywords=tuple(_keyword(k, f"topics.{name}.keywords") for k in topic.keywords),
        exclude=tuple(_keyword(k, f"topics.{name}.exclude") for k in topic.exclude),
        feeds=frozenset(topic.feeds),
    )


def compile_topics(topics: Mapping[str, TopicConfig]) -> dict[str, CompiledTopic]:
    """Compile every topic; raise one MatchError listing every problem."""
    compiled, problems = {}, []
    for name, topic in topics.items():
        try:
            compiled[name] = compile_topic(name, topic)
        except MatchError as exc:
            problems.append(str(exc))
    if problems:
        raise MatchError("\n".join(problems))
    return compiled


def match_topic(topic: CompiledTopic, documents: Sequence[Document]) -> list[Match]:
    """The entries this topic selects, best first (score, then newest)."""
    found = []
    for doc in documents:
        if topic.feeds and topic.feeds.isdisjoint(doc.feeds):
            continue
        score, hits = 0, []
        for keyword in topic.keywords:
            weight = TITLE_WEIGHT * doc.title.has(keyword.phrase) + SUMMARY_WEIGHT * doc.summary.has(
                keyword.phrase
            )
            if weight:
                score += weight
                hits.append(keyword.text)
        if not hits:
            continue
        if any(doc.title.has(k.phrase) or doc.summary.has(k.phrase) for k in topic.exclude):
            continue
        found.append(Match(doc.entry, topic.name, score, tuple(hits)))
    found.sort(key=lambda m: (-m.score, -m.entry.published.timestamp(), -m.entry.id))
    return found


def match_topics(
    topics: Mapping[str, CompiledTopic], documents: Sequence[Document]
) -> dict[str, list[Match]]:
    """Every topic's matches, computed once per topic."""
    return {name: match_topic(topic, documents) for name, topic in topics.items()}
