"""The tick: what is due now (subscribers, feeds, the outbox), found without reading everyone.

Due subscribers come from the ``next_due_at`` index (:func:`pipeline.run.due_batches`), due
feeds from the feed table (a row per configured feed), due outbox rows from the outbox's
``(state, next_attempt_at)`` index: a tick's work follows what is due, not the number of
subscribers. The tick only finds; the jobs it defers do the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .. import run
from ..config import Settings
from ..store import Store


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What one tick found due: the jobs to defer."""

    batches: tuple[run.DueBatch, ...]  # subscribers due, by slot, a planning job each
    feeds: tuple[str, ...]  # feeds to fetch, a job each
    outbox_due: bool  # outbox rows are due: fill the delivery lanes


def due_work(settings: Settings, store: Store, now: datetime) -> TickPlan:
    """Everything due at ``now``."""
    batches = run.due_batches(settings, store, now)
    feeds = run.stale_feeds(settings, store, [f.name for f in settings.feeds], now)
    return TickPlan(tuple(batches), tuple(feeds), store.count_due(now) > 0)


def tick_cron(settings: Settings) -> str:
    """The cron line of ``[worker] tick`` (a sixth field for seconds, as croniter reads it)."""
    seconds = int(settings.worker.tick.total_seconds())
    if seconds < 60:
        return f"* * * * * */{seconds}"
    minutes = seconds // 60
    return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
