"""Entries as matching sees them: the word rules (folding, plurals) and each entry's fields as words.

An entry is tokenised once into a :class:`Document`; every topic is then matched against it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from ..models import Entry
from ..text import strip_html

FIELDS = ("title", "summary", "author", "category", "feed")
TITLE, SUMMARY, AUTHOR, CATEGORY, FEED = range(len(FIELDS))
UNPREFIXED = (TITLE, SUMMARY)

# Letters and digits, and the combining marks of decomposed accents: "é" written as "e" plus
# U+0301 stays one word (Python's \w counts those marks as separators).
_WORD = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])*")
_ASCII_WORD = re.compile(r"[a-z0-9]+")
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


def word_spans(text: str) -> list[tuple[int, int, str]]:
    """Each word of a text as (start, end, folded word), in order: where ``words`` finds them."""
    return [(m.start(), m.end(), fold(m.group())) for m in _WORD.finditer(text)]


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
