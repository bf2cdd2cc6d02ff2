"""Who gets digests: the config's subscribers with each reader's own choices applied.

The config file is the operator's list; a reader's own choices (unsubscribed, paused, their
topics and schedule, set through ``digest serve``), sign-ups confirmed on the web, and the
suppressions bounce handling records live in the state database and win for that reader.
Every path that plans or schedules digests (``send``, ``run``, ``worker``, ``status``) asks here.

Readers' choices, in order: unsubscribed means no digest at all; paused means none before
``paused_until``; chosen topics replace the config's (those the config no longer defines are
dropped, and if none is left the config's topics apply); a chosen schedule replaces the
config's. A reader's timezone stays the config's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from ..config import Settings, SubscriberConfig
from ..config.values import parse_schedule
from ..store import ReaderChoices, Signup, Store, utcnow


@dataclass(frozen=True, slots=True)
class Reader:
    """One subscriber as the config writes them and as they chose."""

    config: SubscriberConfig  # as the config writes them
    subscriber: SubscriberConfig  # with their topics and schedule applied
    choices: ReaderChoices | None  # None: they never chose anything
    excluded: str | None  # why they get nothing now ("unsubscribed", "paused", "suppressed"), or None


def audience(settings: Settings, store: Store, now: datetime) -> list[SubscriberConfig]:
    """The subscribers who are to get digests at ``now``, each as they chose."""
    return [r.subscriber for r in readers(settings, store, now) if r.excluded is None]


def readers(settings: Settings, store: Store, now: datetime) -> list[Reader]:
    """Every subscriber (the config's, then web sign-ups), with their choices and whether
    they get digests now."""
    choices = store.reader_choices()
    found = [reader(settings, sub, choices.get(sub.email.lower()), now) for sub in listed(settings, store)]
    return without_suppressed(found, store)


def listed(settings: Settings, store: Store) -> list[SubscriberConfig]:
    """Every subscriber as written: the config's, then those who signed up on the web."""
    return [*settings.subscribers, *signed_up(settings, store)]


def signed_up(settings: Settings, store: Store) -> list[SubscriberConfig]:
    """Sign-ups confirmed on the web (``[web] signup``) as subscribers (see :func:`as_subscriber`)."""
    found = (as_subscriber(settings, signup) for signup in store.signups())
    return [sub for sub in found if sub is not None]


def as_subscriber(settings: Settings, signup: Signup) -> SubscriberConfig | None:
    """A confirmed sign-up as a subscriber, on ``[web] signup_schedule`` and the digest's
    timezone. None when a config subscriber has that address (the config wins), or when
    none of their topics is defined any more (they come back if one is again)."""
    topics = [name for name in signup.topics or () if name in settings.topics]
    if not topics or signup.confirmed_at is None or settings.subscriber(signup.email) is not None:
        return None
    # (validated when stored: built without validating again on every scheduler tick)
    return SubscriberConfig.model_construct(
        email=signup.address,
        name=None,
        topics=topics,
        schedule=settings.web.signup_schedule,
        timezone=None,
    )


def without_suppressed(found: list[Reader], store: Store) -> list[Reader]:
    """Readers suppressed after bounces (``[bounces]``; ``digest unsuppress`` lifts it) get
    nothing, whatever they chose: a separate step after their choices."""
    suppressed = store.suppressions()
    if not suppressed:
        return found
    out = []
    for r in found:
        gone = r.excluded is None and r.config.email.lower() in suppressed
        out.append(replace(r, excluded="suppressed") if gone else r)
    return out


def excluded_readers(
    settings: Settings, store: Store, now: datetime, emails: Iterable[str] | None = None
) -> list[Reader]:
    """The subscribers (of ``emails``; all when None) who get no digest now, and why."""
    wanted = None if emails is None else {e.lower() for e in emails}
    return [
        r
        for r in readers(settings, store, now)
        if r.excluded is not None and (wanted is None or r.config.email.lower() in wanted)
    ]


def reader(
    settings: Settings, subscriber: SubscriberConfig, choices: ReaderChoices | None, now: datetime
) -> Reader:
    """A subscriber with these choices applied."""
    if choices is None:
        return Reader(subscriber, subscriber, None, None)
    excluded = None
    if choices.unsubscribed_at is not None:
        excluded = "unsubscribed"
    elif choices.paused_until is not None and choices.paused_until > now:
        excluded = "paused"
    return Reader(subscriber, with_choices(settings, subscriber, choices), choices, excluded)


def with_choices(
    settings: Settings, subscriber: SubscriberConfig, choices: ReaderChoices
) -> SubscriberConfig:
    """The subscriber with the topics and schedule they chose (the config's where none)."""
    update: dict[str, object] = {}
    if choices.topics is not None:
        topics = [name for name in choices.topics if name in settings.topics]
        if topics:
            update["topics"] = topics
    if choices.schedule is not None:
        # (checked when saved; one this digest's parser no longer takes leaves the config's)
        with contextlib.suppress(ValueError):
            update["schedule"] = parse_schedule(choices.schedule)
    return subscriber.model_copy(update=update) if update else subscriber


def known_subscriber(settings: Settings, store: Store, email: str) -> SubscriberConfig | None:
    """The subscriber with this address, whether or not they get digests now (for links):
    the config's, else a confirmed web sign-up."""
    found = settings.subscriber(email)
    if found is not None:
        return found
    signup = store.signup(email.strip())
    return as_subscriber(settings, signup) if signup is not None else None


def withdrawn(store: Store, emails: Iterable[str], now: datetime | None = None) -> dict[str, str]:
    """Of these addresses, those that must get nothing now, not even a digest already in the
    outbox, by address as given: why (a reader who unsubscribed, who is paused at ``now``,
    the current time when None, or suppressed after bounces)."""
    emails = list(emails)
    now = now if now is not None else utcnow()
    choices = store.readers_among(emails)  # (asked per claimed batch: only these rows)
    suppressed = store.suppressions()  # (few rows, if any)
    out = {}
    for email in emails:
        found = choices.get(email.lower())
        if found is not None and found.unsubscribed_at is not None:
            via, at = found.unsubscribed_via or "web", found.unsubscribed_at
            out[email] = f"not sent: the reader unsubscribed ({via}, at {at:%Y-%m-%d %H:%M} UTC)"
        elif found is not None and found.paused_until is not None and found.paused_until > now:
            # (a digest queued before the pause: the pause means none before it ends)
            out[email] = f"not sent: the reader paused until {found.paused_until:%Y-%m-%d %H:%M} UTC"
        elif (gone := suppressed.get(email.lower())) is not None:
            since = f"{gone.since:%Y-%m-%d %H:%M} UTC"
            out[email] = f"not sent: suppressed after {gone.kind} bounces (since {since})"
    return out
