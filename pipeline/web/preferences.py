"""``BASE/p/TOKEN``: a reader's own topics, schedule, pause, unsubscribing and re-subscribing.

The form offers every topic the config defines (its title and what it matches), the
schedule in the config's own forms, a pause, and unsubscribing (re-subscribing once
unsubscribed). The rules (what may be chosen, what is recorded) are the chain's,
:mod:`pipeline.run.choices`; this page turns the form into a request and says what changed;
the next digest follows it. Every POST needs the form's own token and must come from this
site (:mod:`.forms`); a refused or invalid form changes nothing and says so.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, request

from ..config import Settings, SubscriberConfig
from ..run.choices import (
    ChoiceChanges,
    ChoiceError,
    ChoiceRequest,
    choose,
    reader_now,
    resubscribe,
    unsubscribe,
)
from .context import page, subscriber_for, web
from .forms import check_form, form_token
from .links import reader_link, subscriber_subject

blueprint = Blueprint("preferences", __name__)
log = logging.getLogger("digest")

FORM = "preferences"
UNCHANGED = "Nothing changed: those were already your choices."


@blueprint.get("/p/<token>")
def preferences_page(token: str) -> Response:
    """The form, filled in with the reader's current choices."""
    subscriber = subscriber_for("preferences", token)
    return _page(subscriber)


@blueprint.post("/p/<token>")
def save_preferences(token: str) -> Response:
    """Save the form (or unsubscribe, or re-subscribe), then show what changed."""
    subscriber = subscriber_for("preferences", token)
    check_form(FORM, subscriber_subject(subscriber.email))
    site = web()
    now = site.clock()
    action = request.form.get("action", "save")
    if action == "unsubscribe":
        done = unsubscribe(site.store, subscriber, now)
        changes = ["Unsubscribed: no more digests will be sent."] if done else []
    elif action == "resubscribe":
        done = resubscribe(site.store, subscriber, now)
        changes = ["Subscribed again: digests will be sent from the next scheduled one."] if done else []
    elif action == "save":
        wanted = ChoiceRequest(
            topics=tuple(request.form.getlist("topics")),
            schedule=request.form.get("schedule", ""),
            pause=request.form.get("pause", ""),
        )
        try:
            changes = _said(
                site.settings, subscriber, choose(site.settings, site.store, subscriber, wanted, now)
            )
        except ChoiceError as exc:
            return _page(subscriber, status=400, error=str(exc), form=request.form)
    else:
        abort(400, description="This form asked for something it does not offer. Nothing was changed.")
    if changes:
        log.info("reader=%s preferences=%r", subscriber.email, " ".join(changes))
    return _page(subscriber, changes=changes or [UNCHANGED])


def _said(settings: Settings, subscriber: SubscriberConfig, changes: ChoiceChanges) -> list[str]:
    """What changed, in a sentence each."""
    said = []
    if changes.topics:
        said.append("Topics: " + ", ".join(settings.topic_title(t) for t in changes.topics) + ".")
    if changes.schedule:
        said.append(f"Schedule: {changes.schedule}.")
    if changes.paused_until:
        zone = settings.zone_of(subscriber)
        said.append(f"Paused until {_when(changes.paused_until, zone)}: no digests before then.")
    if changes.resumed:
        said.append("Pause ended: digests resume from the next scheduled one.")
    return said


def _when(value: datetime, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%A %d %B %Y, %H:%M %Z")


def topic_choices(settings: Settings, selected: set[str]) -> list[dict[str, object]]:
    """One checkbox per topic the config defines, as the pages' templates show them."""
    return [
        {
            "name": name,
            "title": settings.topic_title(name),
            "matches": describe_topic(settings, name),
            "checked": name in selected,
        }
        for name in settings.topics
    ]


def describe_topic(settings: Settings, name: str) -> str:
    """What a topic matches, in a line: its keywords, query, exclusions and feeds."""
    topic = settings.topics[name]
    parts = []
    if topic.keywords:
        parts.append("keywords: " + ", ".join(topic.keywords))
    if topic.query:
        parts.append("query: " + topic.query)
    if topic.exclude:
        parts.append("not: " + ", ".join(topic.exclude))
    if topic.feeds:
        parts.append("only from: " + ", ".join(topic.feeds))
    return "; ".join(parts)


def _page(
    subscriber: SubscriberConfig,
    *,
    status: int = 200,
    changes: list[str] | None = None,
    error: str | None = None,
    form: Any = None,
) -> Response:
    """The preferences page as the reader's choices stand now (a refused form: as submitted)."""
    site = web()
    settings = site.settings
    now = site.clock()
    found = reader_now(settings, site.store, subscriber, now)
    current, choices = found.subscriber, found.choices
    selected = set(form.getlist("topics")) if form is not None else set(current.topics)
    zone = settings.zone_of(subscriber)
    paused = choices.paused_until if choices is not None and found.excluded == "paused" else None
    unsubscribed = choices.unsubscribed_at if choices is not None else None
    return page(
        "web/preferences.html",
        status,
        email=subscriber.email,
        topics=topic_choices(settings, selected),
        schedule=form.get("schedule", "") if form is not None else str(current.schedule),
        config_schedule=str(subscriber.schedule),
        zone=str(zone),
        paused_until=_when(paused, zone) if paused else None,
        unsubscribed_at=_when(unsubscribed, zone) if unsubscribed else None,
        changes=changes or [],
        error=error,
        csrf=form_token(FORM, subscriber_subject(subscriber.email)),
        unsubscribe_url=reader_link(settings, "unsubscribe", subscriber.email),
    )
