"""What templates see, and how an entry becomes what they see.

Every field of a view is safe to print: titles and names are cleaned of control characters,
summaries sanitised, shortened and highlighted (``summary``), links kept only when they are
absolute http(s) URLs. A template change that needs a new value starts here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from ..models import Entry
from ..text import clean_text, has_control
from .summary import (
    first_sentences,
    highlight_html,
    highlight_text,
    html_to_text,
    sanitize_html,
    shorten_html,
)

MAX_AUTHORS = 6  # more are shortened to the first five and "et al."
# A feed name up to this long is kept on one line in the byline; a longer one may break, so
# that it never makes the email wider than a phone (24 capital Ws, the widest such name, fit
# in the 375 px layout: tests/render/test_render_browser.py).
MAX_UNBROKEN_FEED = 24
# What an arXiv id looks like: new style (2403.12345) or old style (hep-th/9901001, math.GT/0309136).
_ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}|[A-Za-z]+(?:-[A-Za-z]+)?(?:\.[A-Za-z]{2})?/\d{7}")
_ANCHOR = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True, slots=True)
class EntryView:
    """One entry as templates see it; every field is safe to print."""

    title: str  # plain text
    title_html: Markup  # escaped, hit words in <b class="hit">
    link: str | None  # http(s) only; otherwise the title is not linked
    abstract_link: str | None  # https://arxiv.org/abs/ID for an arXiv paper, else None
    pdf_link: str | None  # https://arxiv.org/pdf/ID for an arXiv paper, else None
    authors: str
    feeds: str
    date: str
    byline: str  # authors · feeds · date
    byline_html: Markup  # the same, escaped, each feed name and the date in a <span> kept on one line
    summary_html: Markup  # sanitised, shortened, each keyword's first occurrence in <mark>
    summary_text: str  # the same as plain text, links as [n]
    links: tuple[str, ...]  # the targets of [1], [2]...
    hits: tuple[str, ...]  # the keywords that made it match
    shortened: bool  # the summary was cut (after its first sentences, or at summary_words)
    # "More / less like this" (``digest serve``), None without ``[digest] base_url``. A view is
    # shared by every subscriber, so these hold a marker where each email's own link token
    # goes (``splice``): what an email shows is its reader's link.
    vote_more: str | None = None
    vote_less: str | None = None


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

    @property
    def anchor(self) -> str:
        """The id of this section in the email, the target of its contents link."""
        return section_anchor(self.topic)


def section_anchor(topic: str) -> str:
    """An HTML id for a topic's section: ``topic-`` and the topic's name, ``[a-z0-9-]`` only.

    A name that is not already lower-case letters, digits and single hyphens is slugged and
    given a short hash of itself, so that two topics (``RL`` and ``rl``, ``a.b`` and ``a_b``)
    never share an id.
    """
    if _ANCHOR.fullmatch(topic):
        return f"topic-{topic}"
    slug = "-".join(re.findall(r"[a-z0-9]+", topic.lower()))
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"topic-{slug}-{digest}" if slug else f"topic-{digest}"


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


def arxiv_links(arxiv_id: str | None) -> tuple[str | None, str | None]:
    """The abstract and PDF pages of an arXiv paper; (None, None) for anything else."""
    if not arxiv_id or not _ARXIV_ID.fullmatch(arxiv_id):
        return None, None
    return safe_link(f"https://arxiv.org/abs/{arxiv_id}"), safe_link(f"https://arxiv.org/pdf/{arxiv_id}")


def _byline_html(authors: str, feeds: list[str], date: str) -> Markup:
    names = [
        escape(f) if len(f) > MAX_UNBROKEN_FEED else Markup('<span class="feed">%s</span>') % f for f in feeds
    ]
    parts = [
        escape(authors) if authors else None,
        Markup(", ").join(names) if names else None,
        Markup('<span class="date">%s</span>') % date,
    ]
    return Markup(" · ").join(part for part in parts if part is not None)


def entry_view(
    entry: Entry,
    hits: tuple[str, ...],
    *,
    summary_words: int,
    images: bool,
    sentences: int | None = None,
    votes: str | None = None,
) -> EntryView:
    """How an entry shows in emails: sanitised, shortened, highlighted, with its links.

    The summary is its first ``sentences`` sentences (all of it when None), cut after
    ``summary_words`` words in any case. ``votes``: where the vote links start
    (``BASE/v/TOKEN/``), the entry's id and ``more`` or ``less`` follow; None: no vote links.
    """
    clean = sanitize_html(entry.summary_html, images=images)
    few, cut = first_sentences(clean, sentences) if sentences else (clean, False)
    short, shortened = shorten_html(few, summary_words)
    summary_text, links = html_to_text(short)
    summary_html = Markup(highlight_html(short, hits)) if summary_text else Markup("")
    title = clean_text(entry.title) or "(untitled)"
    authors = [a for a in (clean_text(a) for a in entry.authors) if a]
    if len(authors) > MAX_AUTHORS:
        authors = [*authors[: MAX_AUTHORS - 1], "et al."]
    authors_text = ", ".join(authors).replace(", et al.", " et al.")
    feed_names = [name for name in (clean_text(f) for f in entry.feeds) if name]
    feeds = ", ".join(feed_names)
    date = f"{entry.published.day} {entry.published:%b %Y}"
    abstract_link, pdf_link = arxiv_links(entry.arxiv_id)
    return EntryView(
        title=title,
        title_html=highlight_text(title, hits),
        link=safe_link(entry.link),
        abstract_link=abstract_link,
        pdf_link=pdf_link,
        authors=authors_text,
        feeds=feeds,
        date=date,
        byline=" · ".join(part for part in (authors_text, feeds, date) if part),
        byline_html=_byline_html(authors_text, feed_names, date),
        summary_html=summary_html,
        summary_text=summary_text,
        links=links,
        hits=tuple(clean_text(h) for h in hits),
        shortened=cut or shortened,
        vote_more=f"{votes}{entry.id}/more" if votes else None,
        vote_less=f"{votes}{entry.id}/less" if votes else None,
    )
