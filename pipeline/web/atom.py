"""A reader's digests as an Atom feed (RFC 4287), written with ``xml.etree``.

Every value is a text node or an attribute that ElementTree escapes; characters XML 1.0 does
not allow (most C0 controls, lone surrogates, U+FFFE/FFFF) are dropped first, since escaping
cannot make them valid. What RFC 4287 asks of a feed, and where it comes from here:

- ``atom:feed`` has an ``id``, a ``title``, an ``updated``, an ``author`` (the feed's, so
  that no entry needs its own) and a ``link rel="self"``: the feed's own address;
- each ``atom:entry`` has an ``id``, a ``title``, an ``updated``, a ``link`` (its archive
  page, ``rel="alternate"``) and a ``content type="html"`` (escaped HTML);
- ids are URNs that never change: an entry's is the name-based UUID (RFC 4122 version 5)
  of its digest's ``mid:`` URL (RFC 2392, the Message-ID), a feed's that of its address
  without the token, so a key rotation that changes every link keeps every id;
- times are RFC 3339, in UTC.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote
from xml.etree import ElementTree as ET

ATOM_NS = "http://www.w3.org/2005/Atom"
MEDIA_TYPE = "application/atom+xml"
# What XML 1.0 allows (section 2.2); anything else cannot be written, even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class AtomEntry:
    """One digest as a feed entry."""

    id: str
    title: str
    updated: datetime
    published: datetime
    link: str  # absolute: its archive page
    content_html: str


@dataclass(frozen=True, slots=True)
class AtomFeed:
    """A reader's feed: their digests, newest first."""

    id: str
    title: str
    subtitle: str
    updated: datetime
    author: str
    self_link: str  # absolute: the feed's own address
    alternate_link: str  # absolute: the archive's index page
    entries: Sequence[AtomEntry]


def digest_id(message_id: str) -> str:
    """An entry's id: ``urn:uuid:`` + the version 5 UUID of the digest's ``mid:`` URL."""
    mid = "mid:" + quote(message_id.strip().removeprefix("<").removesuffix(">"), safe="@!$&'()*+,;=:.-_~")
    return uuid.uuid5(uuid.NAMESPACE_URL, mid).urn


def feed_id(address: str) -> str:
    """A feed's id: ``urn:uuid:`` + the version 5 UUID of an address naming it for good."""
    return uuid.uuid5(uuid.NAMESPACE_URL, address).urn


def rfc3339(when: datetime) -> str:
    """``2026-12-06T07:00:00Z``: RFC 3339, in UTC, to the second."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def xml_text(text: str) -> str:
    """Text with the characters XML 1.0 cannot hold dropped."""
    return _NOT_XML.sub("", text)


def _add(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: xml_text(v) for k, v in attributes.items()})
    if text is not None:
        element.text = xml_text(text)
    return element


def atom_document(feed: AtomFeed) -> bytes:
    """The feed as an XML document (UTF-8, with its declaration)."""
    root = ET.Element("feed", {"xmlns": ATOM_NS})
    _add(root, "id", feed.id)
    _add(root, "title", feed.title, type="text")
    if feed.subtitle:
        _add(root, "subtitle", feed.subtitle, type="text")
    _add(root, "updated", rfc3339(feed.updated))
    author = _add(root, "author")
    _add(author, "name", feed.author)
    _add(root, "link", rel="self", type=MEDIA_TYPE, href=feed.self_link)
    _add(root, "link", rel="alternate", type="text/html", href=feed.alternate_link)
    _add(root, "generator", "digest")
    for entry in feed.entries:
        element = _add(root, "entry")
        _add(element, "id", entry.id)
        _add(element, "title", entry.title, type="text")
        _add(element, "updated", rfc3339(entry.updated))
        _add(element, "published", rfc3339(entry.published))
        _add(element, "link", rel="alternate", type="text/html", href=entry.link)
        _add(element, "content", entry.content_html, type="html")  # (escaped by ElementTree)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
