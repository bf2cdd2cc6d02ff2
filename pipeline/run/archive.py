"""A reader's past digests, as web pages and as an Atom feed, rebuilt from the outbox.

Nothing is stored for the archive: a sent digest's outbox row keeps its spec (sections, and
each entry's id, score and hits), and its page is the email rendered again from it by the
same renderer, so it looks as it did in the mailbox (with today's text of each entry, if a
feed corrected one since), except that it carries none of the links that act for the reader:
no preferences, unsubscribe or vote links, so none of their tokens (the footer says they are
left out). An archive page is reached from the Atom feed, whose address ends up in feed
readers and services: holding it must never be enough to unsubscribe the reader or change
their topics. The archive keeps what the outbox keeps (see
:mod:`pipeline.store.archive`): a digest at least ``[digest] retain``; an entry older than
that keeps only its title, link, date and feeds, and is later forgotten. Each page says how
many of its entries are so reduced or gone.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ..config import Settings
from ..models import Digest, RenderedDigest
from ..render.views import SectionView, entry_view
from ..store import SentDigest, Store
from ..text import clean_text
from .stored import digest_from_row

if TYPE_CHECKING:
    from ..render import Renderer

FEED_DIGESTS = 20  # digests in a reader's Atom feed (the newest)
INDEX_DIGESTS = 200  # digests listed on a reader's archive page (the newest)


@dataclass(frozen=True, slots=True)
class ArchivedDigest:
    """One sent digest, rebuilt: what its email held, as far as it is still stored."""

    id: int  # its outbox row: the archive page's address
    message_id: str
    created_at: datetime
    sent_at: datetime | None
    digest: Digest  # entries no longer stored are left out
    subject: str
    listed: int  # entries the email listed
    pruned: int  # of those, how many keep only their title, link and date
    gone: int  # of those, how many are no longer stored at all

    @property
    def updated(self) -> datetime:
        """When it went out (when it was made, if the time of sending is not known)."""
        return self.sent_at or self.created_at


@dataclass(frozen=True, slots=True)
class ArchivedEmail:
    """A sent digest's email, rendered again."""

    archived: ArchivedDigest
    html: str
    text: str


class ArchiveRenderer:
    """One renderer for a web process's archive pages, shared by its threads one at a time.

    Making a renderer costs ~0.1 s (templates, the stylesheet), too much per page; its caches
    grow with every entry it renders, so it is made anew after ``RENEW`` digests.
    """

    RENEW = 500

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._renderer: Renderer | None = None
        self._used = 0

    def render(self, digest: Digest) -> RenderedDigest:
        """The digest's email as ``send`` renders it, without the reader's links."""
        with self._lock:
            return self._current().render(digest)

    def subject(self, digest: Digest) -> str:
        """The digest's subject line alone."""
        with self._lock:
            return self._current().subject(digest)

    def _current(self) -> Renderer:
        from ..render import Renderer  # (render's libraries load only when a page needs them)

        if self._renderer is None or self._used >= self.RENEW:
            self._renderer = Renderer(self.settings, reader_links=False)
            self._used = 0
        self._used += 1
        return self._renderer


def archived_digests(
    store: Store, renderer: ArchiveRenderer, subscriber: str, *, limit: int = INDEX_DIGESTS
) -> list[ArchivedDigest]:
    """A subscriber's sent digests still in the outbox, newest first (``subscriber`` as the
    config spells the address)."""
    return _rebuilt(store, renderer, store.sent_digests(subscriber, limit=limit))


def archived_email(
    store: Store, renderer: ArchiveRenderer, subscriber: str, delivery_id: int
) -> ArchivedEmail | None:
    """One of a subscriber's sent digests, its email rendered again without the reader's
    links (see the module's note); None if it is not one of theirs, was not sent, or is no
    longer kept."""
    sent = store.sent_digest(subscriber, delivery_id)
    if sent is None:
        return None
    (archived,) = _rebuilt(store, renderer, [sent])
    rendered = renderer.render(archived.digest)
    return ArchivedEmail(archived, rendered.html, rendered.text)


def feed_sections(settings: Settings, archived: ArchivedDigest) -> list[SectionView]:
    """A digest's sections as its feed entry shows them: each entry as the email shows it
    (sanitised, shortened, highlighted), without the vote links (a feed is read anywhere)."""
    digest = settings.digest
    sentences = digest.summary_sentences if digest.summary == "sentences" else None
    return [
        SectionView(
            topic=section.topic,
            title=clean_text(section.title),
            entries=tuple(
                entry_view(
                    m.entry,
                    m.hits,
                    summary_words=digest.summary_words,
                    images=digest.images,
                    sentences=sentences,
                )
                for m in section.matches
            ),
            more=section.more,
        )
        for section in archived.digest.sections
    ]


def _rebuilt(store: Store, renderer: ArchiveRenderer, sent: Sequence[SentDigest]) -> list[ArchivedDigest]:
    ids = {eid for s in sent for section in s.spec["sections"] for eid, _, _ in section["entries"]}
    found = store.archived_entries(ids)
    out = []
    for s in sent:
        listed = [eid for section in s.spec["sections"] for eid, _, _ in section["entries"]]
        digest = digest_from_row(s.row, s.spec, found.entries)
        out.append(
            ArchivedDigest(
                id=s.row.id,
                message_id=s.row.message_id,
                created_at=s.row.created_at,
                sent_at=s.row.sent_at,
                digest=digest,
                subject=renderer.subject(digest),
                listed=len(listed),
                pruned=sum(1 for eid in listed if eid in found.pruned),
                gone=sum(1 for eid in listed if eid not in found.entries),
            )
        )
    return out
