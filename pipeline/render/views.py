"""What templates see, and how an entry becomes what they see.

Every field of a view is safe to print: titles and names are cleaned of control characters,
summaries sanitised, shortened and highlighted (``summary``), links kept only when they are
absolute http(s) URLs. A template change that needs a new value starts here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup

from ..models import Entry
from ..text import clean_text, has_control
from .summary import highlight_html, highlight_text, html_to_text, sanitize_html, shorten_html

MAX_AUTHORS = 6  # more are shortened to the first five and "et al."


@dataclass(frozen=True, slots=True)
class EntryView:
    """One entry as templates see it; every field is safe to print."""

    title: str  # plain text
    title_html: Markup  # escaped, hit words in <mark>
    link: str | None  # http(s) only; otherwise the title is not linked
    authors: str
    feeds: str
    date: str
    byline: str  # authors · feeds · date
    summary_html: Markup  # sanitised, shortened, hit words in <mark>
    summary_text: str  # the same as plain text, links as [n]
    links: tuple[str, ...]  # the targets of [1], [2]...
    hits: tuple[str, ...]  # the keywords that made it match
    shortened: bool  # the summary was cut at summary_words


@dataclass(frozen=True, slots=True)
class SectionRef:
    """What an entry partial sees of its section."""

    topic: str
    title: str


@dataclass(frozen=True, slots=True, eq=False)
class SectionView:
    """One topic's part of an email.

    Compared and hashed by identity: a run has one per distinct section (``Renderer``
    makes them), the key of that section's assembled parts.
    """

    topic: str
    title: str
    entries: tuple[EntryView, ...]
    more: int

    @property
    def count(self) -> int:
        return len(self.entries)


def topic_key(section: SectionView) -> tuple[Any, ...]:
    """What a topic partial's output may depend on: it is rendered once per distinct key."""
    return (section.topic, section.title, section.count, section.more)


def entry_key(entry: EntryView) -> int:
    """The key of an entry's pieces: the view's identity.

    ``Renderer`` makes a view once per (entry, topic, section title, hits) and keeps it as long
    as itself, so an id names exactly one entry piece.
    """
    return id(entry)


def entry_context(section: SectionView, entry: EntryView, title: str) -> dict[str, Any]:
    """What an entry partial sees: the entry, its section's topic and title, the digest's title."""
    return {"entry": entry, "section": SectionRef(section.topic, section.title), "title": title}


def safe_link(link: str | None) -> str | None:
    """``link`` if it is an absolute http(s) URL without spaces or control characters."""
    if not link or has_control(link) or any(c.isspace() for c in link):
        return None
    try:
        parts = urlsplit(link)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return link


def entry_view(entry: Entry, hits: tuple[str, ...], *, summary_words: int, images: bool) -> EntryView:
    """How an entry shows in emails: sanitised, shortened, highlighted, with its links."""
    clean = sanitize_html(entry.summary_html, images=images)
    short, shortened = shorten_html(clean, summary_words)
    summary_text, links = html_to_text(short)
    summary_html = Markup(highlight_html(short, hits)) if summary_text else Markup("")
    title = clean_text(entry.title) or "(untitled)"
    authors = [a for a in (clean_text(a) for a in entry.authors) if a]
    if len(authors) > MAX_AUTHORS:
        authors = [*authors[: MAX_AUTHORS - 1], "et al."]
    authors_text = ", ".join(authors).replace(", et al.", " et al.")
    feeds = ", ".join(clean_text(f) for f in entry.feeds)
    date = f"{entry.published.day} {entry.published:%b %Y}"
    return EntryView(
        title=title,
        title_html=highlight_text(title, hits),
        link=safe_link(entry.link),
        authors=authors_text,
        feeds=feeds,
        date=date,
        byline=" · ".join(part for part in (authors_text, feeds, date) if part),
        summary_html=summary_html,
        summary_text=summary_text,
        links=links,
        hits=tuple(clean_text(h) for h in hits),
        shortened=shortened,
    )
