"""``BASE/u/TOKEN``: unsubscribing, at once by RFC 8058 one-click POST, or from its page.

RFC 8058: a mail client (or the mailbox provider's server) POSTs ``List-Unsubscribe=One-Click``
to the List-Unsubscribe URL, with no cookie and no redirect to follow; the answer is 200 and
the reader is unsubscribed from then on. A GET changes nothing, since mail scanners open every
link they see: it shows a page whose button makes that same POST, and links to the
preferences (where the reader can also re-subscribe). The token in the path is the only
credential, so this POST needs no form token: a cross-site page cannot know it.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, request

from ..run.choices import reader_now, unsubscribe
from .context import page, subscriber_for, web
from .links import reader_link

blueprint = Blueprint("unsubscribe", __name__)
log = logging.getLogger("digest")

ONE_CLICK = "One-Click"
NOT_ASKED = "This request did not ask to unsubscribe (List-Unsubscribe=One-Click). Nothing was changed."


@blueprint.get("/u/<token>")
def unsubscribe_page(token: str) -> Response:
    """The page behind the link: a button (a POST) and a link to the preferences."""
    subscriber = subscriber_for("unsubscribe", token)
    site = web()
    choices = reader_now(site.settings, site.store, subscriber, site.clock()).choices
    return page(
        "web/unsubscribe.html",
        email=subscriber.email,
        done=False,
        already=choices is not None and choices.unsubscribed_at is not None,
        preferences_url=reader_link(site.settings, "preferences", subscriber.email),
    )


@blueprint.post("/u/<token>")
def one_click(token: str) -> Response:
    """Unsubscribe at once (the one-click POST, or the page's button)."""
    subscriber = subscriber_for("unsubscribe", token)
    # (the body as a form, urlencoded or multipart; or bare, from a client that sends no type)
    asked = request.form.get("List-Unsubscribe") == ONE_CLICK or (
        not request.form and request.get_data(as_text=True).strip() == f"List-Unsubscribe={ONE_CLICK}"
    )
    if not asked:
        abort(400, description=NOT_ASKED)
    site = web()
    if unsubscribe(site.store, subscriber, site.clock()):
        log.info("reader=%s unsubscribed via=web", subscriber.email)
    return page(
        "web/unsubscribe.html",
        email=subscriber.email,
        done=True,
        already=True,
        preferences_url=reader_link(site.settings, "preferences", subscriber.email),
    )
