"""What a view works with: the app's settings, store and signer, and rendering a page.

Inside a view: ``site = web()`` gives the :class:`Site` (``site.settings``, ``site.store``,
``site.signer``, ``site.clock``); ``subscriber_for(purpose, token)`` the subscriber a link's
token names (a 404 page when it is bad); ``page("web/x.html", status, **values)`` renders a template
of ``templates/web`` (or the ``[digest] templates`` override's ``web/``) into a response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
from flask import Response, abort, current_app

from ..config import Settings, SubscriberConfig
from ..run.clock import Clock
from ..store import Store
from .tokens import Signer


@dataclass(frozen=True, slots=True)
class Site:
    """One ``digest serve`` process: its config, state database, signer and templates."""

    settings: Settings
    store: Store
    signer: Signer
    clock: Clock
    templates: jinja2.Environment


def web() -> Site:
    """The running app's :class:`Site` (inside a request)."""
    site: Site = current_app.extensions["digest"]
    return site


def subscriber_for(purpose: str, token: str) -> SubscriberConfig:
    """The subscriber a token of ``purpose`` was made for; a 404 page for a bad or altered
    token, or one whose subscriber is no longer known (nothing is changed either way)."""
    from ..run.audience import known_subscriber

    site = web()
    email = site.signer.subject(purpose, token)
    subscriber = known_subscriber(site.settings, site.store, email) if email is not None else None
    if subscriber is None:
        abort(404)
    return subscriber


def page(template: str, status: int = 200, **values: Any) -> Response:
    """A page rendered from ``template`` with ``values`` (every value escaped)."""
    site = web()
    body = site.templates.get_template(template).render(title=site.settings.digest.title, **values)
    return Response(body, status=status, mimetype="text/html")
