"""``digest worker``'s slots: a pause, an unsubscribe or a change of schedule brings no digest at once.

As in ``digest run``, the scheduled times that fall during a pause or after unsubscribing are
skipped, not owed: a reader who comes back (or whose schedule changed on the web) is next due
at their next scheduled time after the change, never at the next tick for a slot missed. A
subscriber ``digest run`` served before the worker still catches up from there. The slot
functions run on SQLite here (the worker itself needs PostgreSQL; they do not).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import many

from pipeline import run
from pipeline.config import Settings, load_settings
from pipeline.store import Store

READER = "user0@example.org"
DAY1 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return DAY1 + timedelta(days=day - 1, hours=hour, minutes=minute)


@pytest.fixture
def slotted(tmp_path: Path) -> Iterator[tuple[Settings, Store]]:
    """One subscriber (READER) on ``daily 08:00`` UTC, a SQLite state database."""
    config = many(tmp_path, 1, "")
    text = config.read_text().replace('topics = ["snn"]\n', 'topics = ["snn"]\nschedule = "daily 08:00"\n')
    config.write_text(text)
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        yield settings, store


def next_due(store: Store) -> datetime | None:
    return store.subscriber_states()[READER].next_due_at


def due_now(settings: Settings, store: Store, now: datetime) -> list[tuple[datetime, tuple[str, ...]]]:
    return [(b.slot, b.emails) for b in run.due_batches(settings, store, now)]


def serve_day1(settings: Settings, store: Store) -> None:
    """The worker syncs before day 1's slot and plans it: READER is next due on day 2."""
    run.sync_schedules(settings, store, at(1, 7))
    assert next_due(store) == at(1, 8)
    assert due_now(settings, store, at(1, 8, 1)) == [(at(1, 8), (READER,))]
    report = run.plan_batch(settings, store, [READER], at(1, 8), at(1, 8, 1))
    assert report.planned == 1
    assert next_due(store) == at(2, 8)


def test_a_pause_that_ends_brings_the_next_scheduled_digest_not_one_at_once(
    slotted: tuple[Settings, Store],
) -> None:
    settings, store = slotted
    serve_day1(settings, store)
    store.record_reader_choices(READER, at(1, 9), paused_until=at(4, 12))
    run.sync_schedules(settings, store, at(1, 9))
    assert next_due(store) is None  # (days 2, 3 and 4 are skipped)
    run.sync_schedules(settings, store, at(4, 12, 5))  # the pause is over
    assert next_due(store) == at(5, 8)
    assert due_now(settings, store, at(4, 12, 6)) == []
    assert due_now(settings, store, at(5, 8)) == [(at(5, 8), (READER,))]


def test_resuming_early_brings_the_next_scheduled_digest(slotted: tuple[Settings, Store]) -> None:
    settings, store = slotted
    serve_day1(settings, store)
    store.record_reader_choices(READER, at(1, 9), paused_until=at(9, 0))
    run.sync_schedules(settings, store, at(1, 9))
    store.record_reader_choices(READER, at(3, 15), paused_until=None)  # "resume" on the web
    run.sync_schedules(settings, store, at(3, 15, 5))
    assert next_due(store) == at(4, 8)
    assert due_now(settings, store, at(3, 15, 6)) == []


def test_subscribing_again_brings_the_next_scheduled_digest(slotted: tuple[Settings, Store]) -> None:
    settings, store = slotted
    serve_day1(settings, store)
    store.unsubscribe_reader(READER, at(1, 9))
    run.sync_schedules(settings, store, at(1, 9))
    assert next_due(store) is None
    store.record_reader_choices(READER, at(6, 10), unsubscribed_at=None, unsubscribed_via=None)
    run.sync_schedules(settings, store, at(6, 10, 5))
    assert next_due(store) == at(7, 8)
    assert due_now(settings, store, at(6, 10, 6)) == []


def test_a_reader_paused_while_due_is_not_owed_that_slot(slotted: tuple[Settings, Store]) -> None:
    settings, store = slotted
    serve_day1(settings, store)
    # Due on day 2, paused before the planning job ran: the job drops them, the slot is skipped.
    store.record_reader_choices(READER, at(2, 7, 59), paused_until=at(3, 12))
    report = run.plan_batch(settings, store, [READER], at(2, 8), at(2, 8, 1))
    assert report.gone == [READER] and report.planned == 0
    assert next_due(store) is None
    run.sync_schedules(settings, store, at(3, 12, 5))
    assert next_due(store) == at(4, 8)
    assert due_now(settings, store, at(3, 12, 6)) == []


def test_a_schedule_changed_on_the_web_follows_the_new_schedule_without_a_burst(
    slotted: tuple[Settings, Store],
) -> None:
    settings, store = slotted
    serve_day1(settings, store)
    store.record_reader_choices(READER, at(3, 10), schedule="daily 09:30")  # day 2's slot went by unplanned
    run.sync_schedules(settings, store, at(3, 10, 5))
    assert next_due(store) == at(4, 9, 30)
    assert due_now(settings, store, at(3, 10, 6)) == []
    # Changed while paused, then resumed: the new schedule, from now, as well.
    store.record_reader_choices(READER, at(4, 9), paused_until=at(8, 0))
    run.sync_schedules(settings, store, at(4, 9))
    store.record_reader_choices(READER, at(5, 12), schedule="daily 18:00", paused_until=None)
    run.sync_schedules(settings, store, at(5, 12, 5))
    assert next_due(store) == at(5, 18)
    assert due_now(settings, store, at(5, 12, 6)) == []


def test_a_subscriber_digest_run_served_still_catches_up_once(slotted: tuple[Settings, Store]) -> None:
    settings, store = slotted
    run.mark_served(store, READER, at(1, 8))  # ``digest run`` served day 1, then the worker starts on day 4
    run.sync_schedules(settings, store, at(4, 12))
    assert next_due(store) == at(2, 8)
    assert due_now(settings, store, at(4, 12, 1)) == [(at(2, 8), (READER,))]
    run.plan_batch(settings, store, [READER], at(2, 8), at(4, 12, 1))
    assert next_due(store) == at(5, 8)  # one digest for the slots missed, not one each
