"""Digests by schedule slot, for ``digest worker``: who is due, and planning one batch of a slot.

Each subscriber's next slot (``next_due_at``) is computed from their schedule with the very
triggers ``digest run`` uses (:func:`pipeline.schedule.subscriber_trigger`), so finding who
is due is an index range scan (:meth:`Store.due_subscribers`): its cost follows the due, not
all subscribers. Planning a batch is ``send``'s planning (:func:`.sending.plan_digests`, the
outbox's encoding) with one difference: the digests, the slot rows and the next slots are
committed in one transaction (:meth:`Store.plan_slot`), so a repeated or duplicated job plans
nothing twice and a crash plans nothing half. Delivery is ``deliver_due``'s, unchanged.

As in ``digest run``: a subscriber seen for the first time waits for their next scheduled
time; after downtime, a subscriber gets one digest for all the slots missed, not one each;
the slots of a pause, or after unsubscribing, are skipped, not owed: a reader who comes back
(or changes schedule) is next due at their next scheduled time, not at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..config import Settings, SubscriberConfig
from ..store import Store
from .audience import audience
from .sending import plan_digests
from .stored import OutboxEncoder, queued_digest

log = logging.getLogger("digest")

# ``due_for`` of a subscriber taken out of the audience (paused, unsubscribed, suppressed, no
# longer listed): unlike NULL (never slotted by a worker), it says that the slots since their
# last digest were not owed, so that coming back does not bring them at once.
EXCLUDED = "(excluded)"


def schedule_of(settings: Settings, subscriber: SubscriberConfig) -> str:
    """What a subscriber's slots are computed from: their schedule and timezone."""
    return f"{subscriber.schedule} {settings.zone_of(subscriber)}"


def next_slot(settings: Settings, subscriber: SubscriberConfig, after: datetime) -> datetime | None:
    """The subscriber's first scheduled time strictly after ``after`` (``digest run``'s triggers)."""
    return NextSlots(settings)(subscriber, after)


class NextSlots:
    """``next_slot`` for many subscribers: computed once per schedule, zone and start time
    (most subscribers share a few schedules; building a trigger costs ~0.15 ms)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.known: dict[tuple[str, datetime], datetime | None] = {}

    def __call__(self, subscriber: SubscriberConfig, after: datetime) -> datetime | None:
        key = (schedule_of(self.settings, subscriber), after)
        if key not in self.known:
            from ..schedule import next_fire, subscriber_trigger  # (schedule imports run: here)

            self.known[key] = next_fire(subscriber_trigger(self.settings, subscriber), after)
        return self.known[key]


def sync_schedules(settings: Settings, store: Store, now: datetime) -> int:
    """Give every subscriber of the audience their next slot where it is missing or was computed
    from another schedule, and take it from those no longer in the audience; how many changed.

    Reads every subscriber: run at a worker's start and every few minutes, never per tick. A
    subscriber ``digest run`` served before catches up from the last time it served; one who
    comes back from being excluded (:data:`EXCLUDED`), or whose schedule changed, is next due
    at their next scheduled time after ``now``: the slots missed meanwhile are not owed.
    """
    states = store.subscriber_states()
    slots = NextSlots(settings)
    rows: list[tuple[str, datetime | None, str | None]] = []
    wanted = set()
    for sub in audience(settings, store, now):
        wanted.add(sub.email)
        signature = schedule_of(settings, sub)
        state = states.get(sub.email)
        if state is not None and state.due_for == signature and state.next_due_at is not None:
            continue
        # Only a subscriber no worker slotted yet (``digest run`` served them) catches up from
        # their last scheduled time; after an exclusion or a change of schedule, from now.
        served = state.last_scheduled_at if state is not None and state.due_for is None else None
        start = served if served is not None else now
        rows.append((sub.email, slots(sub, start), signature))
    rows += [
        (email, None, EXCLUDED)
        for email, state in states.items()
        if email not in wanted and (state.next_due_at is not None or state.due_for != EXCLUDED)
    ]
    store.set_due(rows)
    return len(rows)


@dataclass(frozen=True, slots=True)
class DueBatch:
    """Subscribers due at one slot, to plan in one job."""

    slot: datetime
    emails: tuple[str, ...]


def due_batches(settings: Settings, store: Store, now: datetime, *, limit: int = 100_000) -> list[DueBatch]:
    """Who is due at ``now``, by slot, in batches of ``[worker] batch``, sorted by address (the
    same batches on every tick while they wait)."""
    by_slot: dict[datetime, list[str]] = {}
    for email, slot in store.due_subscribers(now, limit):
        by_slot.setdefault(slot, []).append(email)
    size = settings.worker.batch
    batches = []
    for slot, emails in sorted(by_slot.items()):
        emails.sort()
        batches += [DueBatch(slot, tuple(emails[i : i + size])) for i in range(0, len(emails), size)]
    return batches


@dataclass
class SlotReport:
    """What planning one batch did."""

    planned: int = 0  # subscribers whose slot this batch planned
    digests: int = 0  # digests it put in the outbox
    skipped: int = 0  # planned already (a duplicated or repeated job), or not due any more
    gone: list[str] = field(default_factory=list)  # no longer in the audience


def plan_batch(
    settings: Settings, store: Store, emails: Sequence[str], slot: datetime, now: datetime
) -> SlotReport:
    """Plan the digests of these subscribers for ``slot`` and commit them with the slot."""
    report = SlotReport()
    due = store.still_due(emails, slot)
    report.skipped = len(emails) - len(due)
    if not due:
        return report
    people = {sub.email: sub for sub in audience(settings, store, now) if sub.email in due}
    report.gone = sorted(due - people.keys())
    if report.gone:  # (they come back with the next schedule sync, if they do)
        store.set_due([(email, None, EXCLUDED) for email in report.gone])
    chosen = [people[email] for email in sorted(people)]
    digests = plan_digests(settings, store, chosen, now)
    encoder = OutboxEncoder()
    queued = [queued_digest(settings, d, encoder) for d in digests]
    slots = NextSlots(settings)
    next_due = {sub.email: slots(sub, now) for sub in chosen}
    planned, accepted = store.plan_slot(slot, next_due, queued, now)
    report.planned, report.digests = len(planned), len(accepted)
    report.skipped += len(chosen) - len(planned)
    return report
