"""Cross-site request forgery protection without cookies.

A form carries a hidden ``csrf`` field: a timed token (purpose ``form``) that signs the
form's name and the subscriber it acts for, valid for ``FORM_MAX_AGE``. A POST is accepted
only with a valid one for the same form and subscriber, and only from this site: when the
browser says where the request comes from (``Sec-Fetch-Site``; else ``Origin``), it must be
the site itself. (A page with ``Referrer-Policy: no-referrer`` makes browsers send
``Origin: null`` on its own form posts, so ``null`` alone proves nothing either way.)

A refused form changes nothing and says so (a 403 page).
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import abort, request

from .context import web

FORM_MAX_AGE = timedelta(days=1)  # a page left open overnight still saves
FIELD = "csrf"
REFUSED = (
    "This form could not be accepted: it came from another site, or the page was open for too "
    "long. Nothing was changed. Open your link again and resubmit."
)


def _subject(form: str, subject: str) -> str:
    return f"{form}\0{subject}"


def form_token(form: str, subject: str) -> str:
    """The hidden ``csrf`` value for ``form`` acting for ``subject`` (put it in the page)."""
    site = web()
    return site.signer.timed_token("form", _subject(form, subject), site.clock())


def same_site() -> bool:
    """Whether the browser says this request comes from our own pages (or says nothing)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    base = urlsplit(web().settings.digest.base_url or "")
    return origin.rstrip("/").lower() == f"{base.scheme}://{base.netloc}".lower()


def check_form(form: str, subject: str) -> None:
    """Refuse (403, nothing changed) a POST of ``form`` for ``subject`` that is not our own."""
    site = web()
    token = request.form.get(FIELD, "")
    found = site.signer.timed_subject("form", token, site.clock(), FORM_MAX_AGE)
    if found != _subject(form, subject) or not same_site():
        abort(403, description=REFUSED)
