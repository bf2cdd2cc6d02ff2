"""``digest run``: fetch feeds and send digests on each subscriber's schedule.

Triggers come from the config's ``schedule`` values, in the subscriber's timezone. A digest
job calls exactly what ``digest send --subscriber EMAIL`` calls (``run.send``), so a scheduled
digest and a manual one cannot drift apart.
"""

from __future__ import annotations

import logging
import signal
from datetime import UTC, datetime
from types import FrameType
from zoneinfo import ZoneInfo

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from . import run
from .config import Schedule, Settings, load_settings
from .errors import DigestError
from .store import Store

log = logging.getLogger("digest")


def trigger_for(schedule: Schedule, zone: ZoneInfo) -> BaseTrigger:
    """The APScheduler trigger for a parsed schedule, in ``zone``."""
    if schedule.kind == "every":
        assert schedule.interval is not None
        # Anchored at the epoch so that restarts keep the same grid of fire times.
        return IntervalTrigger(
            seconds=int(schedule.interval.total_seconds()),
            start_date=datetime(2000, 1, 1, tzinfo=zone),
            timezone=zone,
        )
    if schedule.kind in ("daily", "weekly"):
        assert schedule.at is not None
        return CronTrigger(
            day_of_week=schedule.weekday or "*",
            hour=schedule.at.hour,
            minute=schedule.at.minute,
            timezone=zone,
        )
    assert schedule.cron is not None
    minute, hour, day, month, dow = schedule.cron
    if day != "*" and dow != "*":
        # crontab(5): when both day fields are restricted, either one matching is enough.
        return OrTrigger(
            [
                CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=zone),
                CronTrigger(minute=minute, hour=hour, month=month, day_of_week=dow, timezone=zone),
            ]
        )
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=zone)


def next_fire_times(settings: Settings, now: datetime | None = None) -> dict[str, datetime | None]:
    """Each subscriber's next scheduled digest, from the same triggers ``run`` uses."""
    now = now or datetime.now(UTC)
    return {
        sub.email: trigger_for(sub.schedule, settings.zone_of(sub)).get_next_fire_time(None, now)
        for sub in settings.subscribers
    }


def run_scheduler(config: str | None) -> int:
    """Run in the foreground until SIGTERM or SIGINT; return the exit code."""
    settings = load_settings(config)
    store = Store(settings.digest.database_url)
    scheduler = BlockingScheduler(
        timezone=UTC, executors={"default": {"type": "threadpool", "max_workers": 1}}
    )

    def fetch_feed(name: str) -> None:
        try:
            run.fetch_all(settings, store, feeds=[name])
        except DigestError as exc:
            log.error("feed=%s error=%r", name, str(exc))

    def send_digest(email: str) -> None:
        try:
            run.send(settings, store, subscribers=[email])
        except DigestError as exc:
            log.error("digest to=%s error=%r", email, str(exc))

    for feed in settings.feeds:
        interval = settings.feed_interval(feed).total_seconds()
        scheduler.add_job(
            fetch_feed,
            IntervalTrigger(seconds=interval, jitter=min(60, interval / 10)),
            args=[feed.name],
            id=f"feed:{feed.name}",
            next_run_time=datetime.now(UTC),
            coalesce=True,
            misfire_grace_time=None,
        )
    for sub in settings.subscribers:
        scheduler.add_job(
            send_digest,
            trigger_for(sub.schedule, settings.zone_of(sub)),
            args=[sub.email],
            id=f"digest:{sub.email}",
            coalesce=True,
            misfire_grace_time=None,
        )

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal=%s stopping", signal.Signals(signum).name)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("scheduler started feeds=%d subscribers=%d", len(settings.feeds), len(settings.subscribers))
    try:
        scheduler.start()
    finally:
        store.close()
    return 0
