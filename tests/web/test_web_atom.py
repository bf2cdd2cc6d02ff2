"""The Atom document on its own: every value escaped, what XML cannot hold dropped, the ids
fixed by what they name (the page-level checks are in test_web_archive.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree as ET

import feedparser

from pipeline.web.atom import AtomEntry, AtomFeed, atom_document, digest_id, feed_id, rfc3339

WHEN = datetime(2026, 12, 6, 7, 0, 30, 123456, tzinfo=UTC)
NASTY = "a\x00b\x01c\x0bd\ufffe <script>alert(1)</script> ]]> &amp; {{ 7 * 7 }} \ud800 é 🧠"


def test_hostile_text_is_escaped_and_what_xml_cannot_hold_is_dropped() -> None:
    entry = AtomEntry(
        id=digest_id("<20261206070000.abc@example.org>"),
        title=NASTY,
        updated=WHEN,
        published=WHEN - timedelta(minutes=1),
        link="https://digest.example.org/archive/T/1?a=1&b=<2>",
        content_html=f"<p>{NASTY}</p>",
    )
    feed = AtomFeed(
        id=feed_id("https://digest.example.org/feed/ada@example.org"),
        title=NASTY,
        subtitle="",
        updated=WHEN,
        author="Digest & <co>",
        self_link="https://digest.example.org/feed/T.atom",
        alternate_link="https://digest.example.org/archive/T",
        entries=[entry],
    )
    document = atom_document(feed)
    assert document.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert b"<script>" not in document and b"\x00" not in document and b"\x01" not in document
    parsed = feedparser.parse(document)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    (got,) = parsed.entries
    clean = "abcd <script>alert(1)</script> ]]> &amp; {{ 7 * 7 }}  é 🧠"
    assert got.title == clean
    assert got.link == "https://digest.example.org/archive/T/1?a=1&b=<2>"
    root = ET.fromstring(document)
    ns = "{http://www.w3.org/2005/Atom}"
    assert root.findtext(f"{ns}entry/{ns}content") == f"<p>{clean}</p>"
    assert root.findtext(f"{ns}updated") == "2026-12-06T07:00:30Z" == rfc3339(WHEN)


def test_ids_name_what_they_identify_and_nothing_else() -> None:
    first = digest_id("<20261206070000.abc@example.org>")
    assert first == digest_id("20261206070000.abc@example.org")
    assert first == digest_id(" <20261206070000.abc@example.org> ")
    assert first != digest_id("<20261206070000.abd@example.org>")
    assert first.startswith("urn:uuid:") and first[23] == "5"  # name-based, SHA-1 (RFC 4122 version 5)
    assert feed_id("https://d.example/feed/a@example.org") != feed_id("https://d.example/feed/b@example.org")
