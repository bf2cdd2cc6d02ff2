"""The records that flow between stages: frozen, typed, and free of behaviour.

``fetch`` produces :class:`FetchResult`, ``parse`` turns it into :class:`FeedItem` records,
``store`` keeps them as :class:`Entry` records, ``match`` pairs entries with topics as
:class:`Match`, ``plan`` groups matches into a :class:`Digest`, ``render`` turns a digest into
a :class:`RenderedDigest`, ``compose`` makes it an :class:`OutgoingMessage` for ``deliver``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one feed download produced: bytes, or nothing new (``content`` is None)."""

    feed: str
    url: str
    status: int | None  # HTTP status; None for a local file
    content: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None  # set when the server moved the feed for good
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One entry as a feed carried it, normalised but not yet stored."""

    feed: str
    guid: str  # identity within the feed: guid, else link, else a content hash
    title: str
    link: str | None  # canonical http(s) link, or None
    summary_html: str  # as the feed gave it: sanitised only when rendered
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    published: datetime | None = None  # published, else updated; None: the store uses first-seen
    arxiv_id: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A feed's items plus the non-fatal problems found while parsing it."""

    feed: str
    items: tuple[FeedItem, ...]
    warnings: tuple[str, ...] = ()
    version: str = ""  # feedparser's name for the format: rss20, rss10, atom10, ...


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored item: one per real-world paper or post, whatever feeds carried it."""

    id: int
    title: str
    link: str | None
    summary_html: str
    authors: tuple[str, ...]
    categories: tuple[str, ...]
    published: datetime  # falls back to first_seen when the feed gave no date
    first_seen: datetime
    feeds: tuple[str, ...]
    arxiv_id: str | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """An entry that a topic selected, with its score and the terms that hit."""

    entry: Entry
    topic: str
    score: int
    hits: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Section:
    """One topic's part of a digest; ``more`` counts matches cut by ``max_entries``.

    ``cut`` holds the ids of those cut entries while the digest is being planned (they are
    recorded as taken, so they do not resurface); a digest rebuilt from the outbox has only
    the count.
    """

    topic: str
    title: str
    matches: tuple[Match, ...]
    more: int = 0
    cut: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Digest:
    """Everything one subscriber's email holds, before any HTML exists."""

    subscriber: str  # email address
    name: str | None
    sections: tuple[Section, ...]
    topics: tuple[str, ...]  # titles of all the subscriber's topics, for the footer
    created_at: datetime
    message_id: str

    @property
    def entry_count(self) -> int:
        return sum(len(section.matches) for section in self.sections)

    @property
    def more_count(self) -> int:
        return sum(section.more for section in self.sections)


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    """A digest as text: the subject line, the HTML part and the plain-text part.

    ``html_parts`` / ``text_parts``, when given, are the same text cut into pieces at line
    ends (every piece but the last ends with a newline); the pieces between the first and
    the last are shared by many emails (the same objects), so ``compose`` encodes each once.
    The one exception is ``token``, the reader's own link token: the parts hold that very
    object where it goes inside shared lines (vote links), and the part before it ends there.
    """

    subject: str
    html: str
    text: str
    html_parts: tuple[str, ...] = ()
    text_parts: tuple[str, ...] = ()
    token: str = ""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A complete RFC 5322 message for exactly one recipient."""

    sender: str  # envelope sender address
    recipient: str
    message_id: str
    data: bytes
    # SMTP's wire form as it is: every line ends with CRLF and none starts with "." (so it
    # needs neither line-end normalising nor dot-stuffing). compose builds digests so.
    canonical: bool = False
