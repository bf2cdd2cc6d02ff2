"""A reader's links: ``[digest] base_url`` plus a path and a signed token, nothing else.

Links are never built from a request (its Host header is the client's to choose), so a page
can only ever point back at the configured site. The shapes, one per purpose:

- ``BASE/u/TOKEN``: unsubscribe (RFC 8058 one-click POST; a GET shows a button);
- ``BASE/p/TOKEN``: preferences (topics, schedule, pause, unsubscribe, re-subscribe);
- ``BASE/archive/TOKEN``: past digests as pages; ``BASE/feed/TOKEN.atom``: them as Atom.

A subscriber's token signs their address lower-cased, the way the config compares addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..errors import WebError
from .tokens import signer

PATHS = {
    "unsubscribe": "/u/{token}",
    "preferences": "/p/{token}",
    "archive": "/archive/{token}",
    "feed": "/feed/{token}.atom",
}


def subscriber_subject(email: str) -> str:
    """What a subscriber's tokens sign: their address as the config compares it."""
    return email.strip().lower()


def site_url(settings: Settings, path: str) -> str:
    """``path`` on the configured site (``[digest] base_url``)."""
    if not settings.digest.base_url:
        raise WebError("[digest] base_url is not set: reader links need the web app's public address")
    return settings.digest.base_url.rstrip("/") + path


def reader_link(settings: Settings, purpose: str, email: str) -> str:
    """A subscriber's signed link for ``purpose`` (one of :data:`PATHS`)."""
    token = signer(settings.web).token(purpose, subscriber_subject(email))
    return site_url(settings, PATHS[purpose].format(token=token))


@dataclass(frozen=True, slots=True)
class ReaderLinks:
    """Every link a subscriber can be sent (``digest links``)."""

    unsubscribe: str
    preferences: str
    archive: str
    feed: str


def reader_links(settings: Settings, email: str) -> ReaderLinks:
    """A subscriber's links, each signed for its purpose."""
    return ReaderLinks(**{purpose: reader_link(settings, purpose, email) for purpose in PATHS})
