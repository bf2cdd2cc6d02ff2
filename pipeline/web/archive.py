"""A reader's past digests: ``BASE/archive/TOKEN`` (the list), ``BASE/archive/TOKEN/ID`` (one
digest, as it was emailed), and ``BASE/feed/TOKEN.atom`` (them as an Atom feed).

Each page is rebuilt from the outbox (:mod:`pipeline.run.archive`): an archived digest is its
email rendered again by the same renderer, without the links that act for the reader
(preferences, unsubscribe, votes: the feed links these pages, and a feed's address is
given to feed readers), shown as it is (its inlined styles are allowed by its own
Content-Security-Policy, which still allows no script) under a short note saying what it is
and what of it is no longer stored. Links are built from ``[digest] base_url``
only, and every one in the feed is absolute. A bad token or a digest that is not the
reader's gets the plain 404 page.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, current_app

from ..config import SubscriberConfig, format_duration
from ..run.archive import (
    FEED_DIGESTS,
    ArchivedDigest,
    ArchiveRenderer,
    archived_digests,
    archived_email,
    feed_sections,
)
from .app import EMAIL_CSP
from .atom import MEDIA_TYPE, AtomEntry, AtomFeed, atom_document, digest_id, feed_id
from .context import page, subscriber_for, web
from .links import reader_link, site_url, subscriber_subject

blueprint = Blueprint("archive", __name__)

_BODY = re.compile(r"<body\b[^>]*>", re.I)


def _renderer() -> ArchiveRenderer:
    """This app's archive renderer (one per process: making one is slow)."""
    extensions = current_app.extensions
    found: ArchiveRenderer = extensions.setdefault("digest-archive", ArchiveRenderer(web().settings))
    return found


def _digest_url(token: str, digest: ArchivedDigest) -> str:
    return site_url(web().settings, f"/archive/{token}/{digest.id}")


def _local(when: datetime, zone: ZoneInfo) -> str:
    local = when.astimezone(zone)
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M}"


def _zone(subscriber: SubscriberConfig) -> ZoneInfo:
    return web().settings.zone_of(subscriber)


def _links(subscriber: SubscriberConfig) -> tuple[str, str]:
    """The reader's archive and feed addresses, signed with the current key."""
    settings = web().settings
    return reader_link(settings, "archive", subscriber.email), reader_link(settings, "feed", subscriber.email)


@blueprint.get("/archive/<token>")
def index(token: str) -> Response:
    """Every digest of this reader still kept, newest first, with a link to the feed."""
    subscriber = subscriber_for("archive", token)
    site = web()
    digests = archived_digests(site.store, _renderer(), subscriber.email)
    zone = _zone(subscriber)
    archive_url, feed_url = _links(subscriber)
    return page(
        "web/archive.html",
        email=subscriber.email,
        digests=[
            {
                "url": _digest_url(token, d),
                "when": _local(d.updated, zone),
                "subject": d.subject,
                "listed": d.listed,
                "pruned": d.pruned,
                "gone": d.gone,
            }
            for d in digests
        ],
        feed_url=feed_url,
        archive_url=archive_url,
        retain=format_duration(site.settings.digest.retain),
    )


@blueprint.get("/archive/<token>/<int:delivery_id>")
def digest_page(token: str, delivery_id: int) -> Response:
    """One digest as it was emailed (less the reader's links), under a note saying what is no
    longer stored."""
    subscriber = subscriber_for("archive", token)
    site = web()
    found = archived_email(site.store, _renderer(), subscriber.email, delivery_id)
    if found is None:
        abort(404)
    note = site.templates.get_template("web/archive_note.html").render(
        title=site.settings.digest.title,
        when=_local(found.archived.updated, _zone(subscriber)),
        index_url=site_url(site.settings, f"/archive/{token}"),
        listed=found.archived.listed,
        pruned=found.archived.pruned,
        gone=found.archived.gone,
        retain=format_duration(site.settings.digest.retain),
    )
    html = found.html
    body = _BODY.search(html)
    # (our own, escaped template output, right after <body>: the email itself is unchanged)
    html = html[: body.end()] + note + "\n" + html[body.end() :] if body else note + "\n" + html
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_CSP
    return response


@blueprint.get("/feed/<token>.atom")
def feed(token: str) -> Response:
    """The reader's newest digests as an Atom feed."""
    subscriber = subscriber_for("feed", token)
    site = web()
    settings = site.settings
    archive_token = site.signer.token("archive", subscriber_subject(subscriber.email))
    digests = archived_digests(site.store, _renderer(), subscriber.email, limit=FEED_DIGESTS)
    content = site.templates.get_template("web/feed_entry.html")
    archive_url, feed_url = _links(subscriber)
    entries = [
        AtomEntry(
            id=digest_id(d.message_id),
            title=d.subject,
            updated=d.updated,
            published=d.created_at,
            link=_digest_url(archive_token, d),
            content_html=content.render(
                sections=feed_sections(settings, d),
                page_url=_digest_url(archive_token, d),
                pruned=d.pruned,
                gone=d.gone,
            ),
        )
        for d in digests
    ]
    document = atom_document(
        AtomFeed(
            id=feed_id(site_url(settings, f"/feed/{subscriber_subject(subscriber.email)}")),
            title=f"{settings.digest.title}: {subscriber.email}",
            subtitle=f"The digests sent to {subscriber.email}",
            updated=max((d.updated for d in digests), default=site.clock()),
            author=settings.digest.title,
            self_link=feed_url,
            alternate_link=archive_url,
            entries=entries,
        )
    )
    return Response(document, mimetype=MEDIA_TYPE)
