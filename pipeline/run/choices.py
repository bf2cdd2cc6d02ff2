"""A reader's own choices as ``digest serve`` records them: checked, compared with the config,
written. The web face turns a form into a :class:`ChoiceRequest` and shows the
:class:`ChoiceChanges`; the rules are here, and what the choices mean for sending is in
:mod:`.audience`.

Only what differs from the config is recorded (a choice equal to the config's is stored as
"as the config says"), so an operator's later change of a subscriber's topics or schedule
still reaches a reader who never chose theirs. A reader's schedule takes the config's forms,
checked by the parser ``check`` uses, with one bound more: at most one digest an hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..config import Schedule, Settings, SubscriberConfig, parse_schedule
from ..errors import WebError
from ..store import ReaderChoices, Store
from .audience import Reader, reader

PAUSES = {"1": 1, "2": 2, "4": 4}  # the pauses offered, in weeks
MIN_EVERY = timedelta(hours=1)  # a reader's schedule sends at most one digest an hour
VIA = "web"


class ChoiceError(WebError):
    """A reader's request cannot be recorded as it is (nothing was changed)."""


@dataclass(frozen=True, slots=True)
class ChoiceRequest:
    """What a reader asked for on the preferences form."""

    topics: tuple[str, ...]
    schedule: str  # empty: the config's
    pause: str = ""  # "": as it is; "1", "2", "4": weeks from now; "resume": end a pause


@dataclass(frozen=True, slots=True)
class ChoiceChanges:
    """What saving changed (all None / False: nothing)."""

    topics: tuple[str, ...] | None = None  # the topics they follow now, when changed
    schedule: str | None = None  # their schedule now, when changed
    paused_until: datetime | None = None  # a new pause
    resumed: bool = False  # a pause ended early

    def __bool__(self) -> bool:
        return bool(self.topics or self.schedule or self.paused_until or self.resumed)


def reader_now(settings: Settings, store: Store, subscriber: SubscriberConfig, now: datetime) -> Reader:
    """The subscriber as they chose, and whether they get digests now."""
    return reader(settings, subscriber, store.reader_choice(subscriber.email), now)


def unsubscribe(store: Store, subscriber: SubscriberConfig, now: datetime) -> bool:
    """Unsubscribe at once (False: they already were; the first time is kept)."""
    return store.unsubscribe_reader(subscriber.email, now, via=VIA)


def resubscribe(store: Store, subscriber: SubscriberConfig, now: datetime) -> bool:
    """Subscribe again (False: they were not unsubscribed)."""
    choices = store.reader_choice(subscriber.email)
    if choices is None or choices.unsubscribed_at is None:
        return False
    store.record_reader_choices(subscriber.email, now, unsubscribed_at=None, unsubscribed_via=None)
    return True


def choose(
    settings: Settings, store: Store, subscriber: SubscriberConfig, request: ChoiceRequest, now: datetime
) -> ChoiceChanges:
    """Check and record a reader's topics, schedule and pause; a ChoiceError changes nothing."""
    choices = store.reader_choice(subscriber.email) or ReaderChoices(subscriber.email.lower())
    current = reader(settings, subscriber, choices, now).subscriber
    values: dict[str, Any] = {}
    changes: dict[str, Any] = {}

    unknown = [name for name in request.topics if name not in settings.topics]
    if unknown:
        raise ChoiceError("That form named a topic this digest does not have. Nothing was changed.")
    if not request.topics:
        raise ChoiceError("Choose at least one topic (or unsubscribe instead). Nothing was changed.")
    if set(request.topics) != set(current.topics):
        # In the config's order: the first topic that matches an entry is the section it goes in.
        order = [*subscriber.topics, *(t for t in settings.topics if t not in subscriber.topics)]
        topics = [name for name in order if name in request.topics]
        values["topics"] = None if set(topics) == set(subscriber.topics) else topics
        changes["topics"] = tuple(topics)

    written = " ".join(request.schedule.split())
    schedule = reader_schedule(written) if written else subscriber.schedule
    if str(schedule) != str(current.schedule):
        values["schedule"] = None if str(schedule) == str(subscriber.schedule) else str(schedule)
        changes["schedule"] = str(schedule)

    if request.pause in PAUSES:
        values["paused_until"] = changes["paused_until"] = now + timedelta(weeks=PAUSES[request.pause])
    elif request.pause == "resume":
        if choices.paused_until is not None and choices.paused_until > now:
            values["paused_until"] = None
            changes["resumed"] = True
    elif request.pause:
        raise ChoiceError("That form asked for a pause it does not offer. Nothing was changed.")

    if values:
        store.record_reader_choices(subscriber.email, now, **values)
    return ChoiceChanges(**changes)


def reader_schedule(text: str) -> Schedule:
    """A schedule a reader may choose: the config's forms, at most one digest an hour."""
    if len(text) > 100:
        raise ChoiceError("That schedule is too long. Nothing was changed.")
    try:
        schedule = parse_schedule(text)
    except ValueError as exc:
        raise ChoiceError(f"Schedule: {exc}. Nothing was changed.") from None
    every = schedule.kind == "every" and schedule.interval is not None and schedule.interval < MIN_EVERY
    cron = schedule.kind == "cron" and schedule.cron is not None and not schedule.cron[0].isdigit()
    if every or cron:
        raise ChoiceError(
            f"Schedule: {text!r} would send more than one digest an hour (for a cron schedule, "
            "give the minute as one number). Nothing was changed."
        )
    return schedule
