"""``digest run``: fetch feeds and send each subscriber's digest on their schedule.

APScheduler (3.x) wakes the process at the right moments, but the promise "after any downtime,
exactly one catch-up digest" rests on our own bookkeeping, not on its misfire handling: the
state keeps, per subscriber, the last scheduled time served. Serving a subscriber means: find
the latest scheduled time at or before now; if it is later than the last one served, send
the digest (the very function ``digest send --subscriber`` calls) and record it. That check is
idempotent, so it runs from the subscriber's own job, from a watchdog every 30 s (which catches
machine sleep and clock jumps), and at start.

Only one ``digest run`` may use a state database: it holds a lease there, renewed every 20 s,
that a second one respects; a holder that died on this machine, or stopped renewing, no
longer counts. The scheduler is a face, like the CLI: it computes fire times and calls the
chain (``run``); the CLI opens the state database it is given.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from . import run
from .config import Schedule, Settings, SubscriberConfig, load_settings
from .errors import ConfigError, DigestError, ScheduleError
from .store import Store, utcnow

log = logging.getLogger("digest")

LEASE_TTL = timedelta(seconds=60)
RENEW_EVERY = 20.0  # seconds
WATCHDOG_EVERY = 30  # seconds: catch-up check for every subscriber
OUTBOX_EVERY = 60  # seconds: deliver pending retries even when no digest is due
STOP_WITHIN = 9.0  # seconds: SIGTERM must end the process within 10 s
LOOKBACK_LIMIT = timedelta(days=400)  # how far back a missed scheduled time is looked for
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


# --- triggers ----------------------------------------------------------------------------------


class WallClockTrigger(BaseTrigger):  # type: ignore[misc]
    """A calendar trigger that fires once per local wall-clock time, strictly forward in time.

    APScheduler 3.11's CronTrigger fires ``daily 01:30`` twice on the night clocks go back
    (both 01:30s exist) and there can return a time before ``now``. This wrapper keeps only the
    first of two equal wall-clock times and never returns a time at or before the previous
    fire or ``now``. In the spring gap, a time that does not exist (01:30 when clocks jump from
    01:00 to 02:00) fires once, at the same distance into the new hour (02:30).
    """

    def __init__(self, inner: BaseTrigger, zone: ZoneInfo) -> None:
        self.inner = inner
        self.zone = zone

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        # Arithmetic in UTC: adding a second to the later 01:30 in local time lands on the earlier.
        start = now.astimezone(UTC)
        if previous_fire_time is not None:
            start = max(start, previous_fire_time.astimezone(UTC) + timedelta(seconds=1))
        for _ in range(200):  # bounded: an ambiguous hour costs at most 60 steps of a minute
            found: datetime | None = self.inner.get_next_fire_time(None, start)
            if found is None:
                return None
            fire = found.astimezone(UTC)
            if fire < start:
                start += timedelta(minutes=1)
            elif self._repeated(fire):
                start = fire + timedelta(seconds=1)
            else:
                return fire
        return None

    def _repeated(self, fire: datetime) -> bool:
        """Whether ``fire`` is the second occurrence of a wall-clock time (clocks went back)."""
        here = fire.astimezone(self.zone)
        wall = here.replace(tzinfo=None)
        first = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        second = wall.replace(tzinfo=self.zone, fold=1).utcoffset()
        return first != second and here.utcoffset() == second

    def __str__(self) -> str:
        return f"wallclock[{self.inner}]"


def trigger_for(schedule: Schedule, zone: ZoneInfo) -> BaseTrigger:
    """The APScheduler trigger for a parsed schedule, in ``zone``."""
    if schedule.kind == "every":
        assert schedule.interval is not None
        # Anchored at a fixed date, so fire times are the same grid across restarts.
        return IntervalTrigger(
            seconds=int(schedule.interval.total_seconds()), start_date=EPOCH, timezone=zone
        )
    inner: BaseTrigger
    if schedule.kind in ("daily", "weekly"):
        assert schedule.at is not None
        day = schedule.weekday or "*"
        inner = CronTrigger(day_of_week=day, hour=schedule.at.hour, minute=schedule.at.minute, timezone=zone)
    else:
        assert schedule.cron is not None
        minute, hour, dom, month, dow = schedule.cron
        if dom != "*" and dow != "*":
            # crontab(5): when both day fields are restricted, either one matching is enough.
            inner = OrTrigger(
                [
                    CronTrigger(minute=minute, hour=hour, day=dom, month=month, timezone=zone),
                    CronTrigger(minute=minute, hour=hour, month=month, day_of_week=dow, timezone=zone),
                ]
            )
        else:
            inner = CronTrigger(
                minute=minute, hour=hour, day=dom, month=month, day_of_week=dow, timezone=zone
            )
    return WallClockTrigger(inner, zone)


def subscriber_trigger(settings: Settings, subscriber: SubscriberConfig) -> BaseTrigger:
    return trigger_for(subscriber.schedule, settings.zone_of(subscriber))


def next_fire(trigger: BaseTrigger, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after``."""
    fire: datetime | None = trigger.get_next_fire_time(
        None, after.astimezone(UTC) + timedelta(microseconds=1)
    )
    return fire.astimezone(UTC) if fire else None


def last_fire(trigger: BaseTrigger, now: datetime, since: datetime) -> datetime | None:
    """The latest fire time in (since, now], or None; found by bisection, not by stepping.

    Stepping from ``since`` would take millions of steps for ``every 2s`` after a long
    downtime; bisection on "is there a fire time in [t, now]?" takes about 35.
    """
    first = next_fire(trigger, since)
    if first is None or first > now:
        return None
    low, high = first, now + timedelta(seconds=1)  # a fire in [low, now]; none in [high, now]
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        fire = trigger.get_next_fire_time(None, middle)
        if fire is not None and fire <= now:
            low = fire.astimezone(UTC)
        else:
            high = middle
    return low


def next_fire_times(
    settings: Settings, now: datetime | None = None, subscribers: Sequence[SubscriberConfig] | None = None
) -> dict[str, datetime | None]:
    """Each subscriber's next scheduled digest, from the same triggers ``digest run`` uses
    (``subscribers``: as they chose, from :func:`pipeline.run.audience`; else the config's)."""
    now = now or datetime.now(UTC)
    chosen = settings.subscribers if subscribers is None else subscribers
    return {sub.email: next_fire(subscriber_trigger(settings, sub), now) for sub in chosen}


# --- the service ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _JobSpec:
    """What a job is, so a reload can tell added, removed and changed jobs apart."""

    func: Callable[..., None]
    trigger: BaseTrigger
    args: tuple[str, ...]
    signature: str  # compared on reload: the schedule text and timezone, or the interval


class Scheduler:
    """The long-running ``digest run`` process."""

    def __init__(self, config: str | None, store: Store, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.clock = clock
        self.settings = load_settings(config)
        self.store = store
        self.holder = run.scheduler_id()
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.busy = threading.Lock()  # held while a job runs
        self.aps = BackgroundScheduler(
            timezone=UTC,
            executors={"default": {"type": "threadpool", "max_workers": 1}},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.jobs: dict[str, _JobSpec] = {}
        self.applying = threading.Lock()

    # jobs ----------------------------------------------------------------------------------

    def serve(self, email: str) -> None:
        """Send the subscriber's digest if a scheduled time passed since the last one served."""
        with self.busy:
            if self.stop.is_set():
                return
            settings = self.settings
            now = self.clock()
            # As the reader chose on the web (their schedule, topics; unsubscribed or paused).
            found = next((r for r in run.readers(settings, self.store, now) if r.config.email == email), None)
            if found is None:
                return
            subscriber = found.subscriber
            served = run.last_served(self.store, subscriber.email)
            due = last_fire(subscriber_trigger(settings, subscriber), now, served or now - LOOKBACK_LIMIT)
            if due is None or (served is not None and due <= served):
                return
            if found.excluded is not None:
                # Unsubscribed or paused: this time is skipped, not owed (a pause that ends
                # brings the next scheduled digest, not one at once for the missed times).
                run.mark_served(self.store, subscriber.email, due)
                log.info("digest to=%s skipped=%s", email, found.excluded)
                return
            if served is None:
                # First sight of this subscriber: their first digest comes at their next
                # scheduled time, not at whatever moment the scheduler happened to start.
                run.mark_served(self.store, subscriber.email, due)
                log.info(
                    "digest to=%s first-scheduled next=%s",
                    email,
                    _iso(next_fire(subscriber_trigger(settings, subscriber), now)),
                )
                return
            try:
                run.serve_subscriber(settings, self.store, subscriber, due, clock=self.clock, stop=self.stop)
            except DigestError as exc:
                log.error("digest to=%s error=%r", email, str(exc))

    def fetch_feed(self, name: str) -> None:
        with self.busy:
            if self.stop.is_set() or name not in {f.name for f in self.settings.feeds}:
                return
            try:
                run.fetch_all(self.settings, self.store, feeds=[name], clock=self.clock)
            except DigestError as exc:
                log.error("feed=%s error=%r", name, str(exc))

    def deliver_outbox(self) -> None:
        with self.busy:
            if self.stop.is_set():
                return
            try:
                run.deliver_due(self.settings, self.store, clock=self.clock, stop=self.stop)
            except DigestError as exc:
                log.error("outbox error=%r", str(exc))

    def read_bounces(self) -> None:
        """Read the [bounces] mailbox once (as ``digest bounces`` does)."""
        with self.busy:
            if self.stop.is_set() or self.settings.bounces is None:
                return
            try:
                run.read_bounces(self.settings, self.store, clock=self.clock)
            except DigestError as exc:
                log.error("bounces error=%r", str(exc))

    def watchdog(self) -> None:
        """Follow schedules readers changed on the web, then serve every subscriber whose
        scheduled time passed unserved (sleep, clock jumps)."""
        try:
            changes = self._apply(self._specs(self.settings))
        except DigestError as exc:
            log.error("reading readers' choices error=%r", str(exc))
            changes = []
        if changes:
            log.info("readers' choices followed: %s", "; ".join(changes))
        for subscriber in run.listed(self.settings, self.store):  # (web sign-ups too)
            if self.stop.is_set():
                return
            self.serve(subscriber.email)

    # job table -----------------------------------------------------------------------------

    def _specs(self, settings: Settings) -> dict[str, _JobSpec]:
        specs: dict[str, _JobSpec] = {}
        for feed in settings.feeds:
            seconds = settings.feed_interval(feed).total_seconds()
            trigger = IntervalTrigger(seconds=seconds, jitter=min(60.0, seconds / 10))
            specs[f"feed:{feed.name}"] = _JobSpec(
                self.fetch_feed, trigger, (feed.name,), f"every {seconds:g}s"
            )
        # Each reader's own schedule (digest serve); ``serve`` skips those who get nothing now.
        for found in run.readers(settings, self.store, self.clock()):
            sub = found.subscriber
            zone = settings.zone_of(sub)
            specs[f"digest:{sub.email}"] = _JobSpec(
                self.serve, trigger_for(sub.schedule, zone), (sub.email,), f"{sub.schedule} {zone}"
            )
        specs["watchdog"] = _JobSpec(self.watchdog, IntervalTrigger(seconds=WATCHDOG_EVERY), (), "")
        specs["outbox"] = _JobSpec(self.deliver_outbox, IntervalTrigger(seconds=OUTBOX_EVERY), (), "")
        bounces = settings.bounces
        if bounces is not None and (bounces.imap_host or bounces.maildir):
            seconds = bounces.every.total_seconds()
            specs["bounces"] = _JobSpec(
                self.read_bounces, IntervalTrigger(seconds=seconds), (), f"every {seconds:g}s"
            )
        return specs

    def _apply(self, specs: dict[str, _JobSpec], *, first: bool = False) -> list[str]:
        """Make the scheduler's jobs match ``specs``; return what changed."""
        with self.applying:  # (the watchdog's thread and a reload in the main one)
            return self._apply_jobs(specs, first=first)

    def _apply_jobs(self, specs: dict[str, _JobSpec], *, first: bool) -> list[str]:
        changes = []
        for job_id in set(self.jobs) - set(specs):
            self.aps.remove_job(job_id)
            changes.append(f"removed {job_id}")
        for job_id, spec in specs.items():
            old = self.jobs.get(job_id)
            if old is not None and old.signature == spec.signature:
                continue
            # Feeds are fetched at once when they appear; digests wait for their schedule.
            start = {"next_run_time": self.clock()} if job_id.startswith("feed:") and old is None else {}
            self.aps.add_job(
                spec.func, spec.trigger, args=spec.args, id=job_id, replace_existing=True, **start
            )
            if not first:
                detail = f" ({spec.signature})" if spec.signature else ""
                changes.append(f"{'added' if old is None else 'rescheduled'} {job_id}{detail}")
        self.jobs = specs
        return changes

    def reload(self) -> None:
        """SIGHUP: read the config again; keep the old one running if the new one is broken."""
        try:
            settings = load_settings(self.config)
            problems = run.check(settings)
            if problems:
                raise ConfigError(problems)
            if settings.digest.database_url != self.settings.digest.database_url:
                raise ConfigError(
                    [f"{settings.path}: digest.database: cannot change while running; restart instead"]
                )
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed, keeping the running config: %s", problem)
            return
        self.settings = settings
        changes = self._apply(self._specs(settings))
        log.info("config reloaded from %s: %s", settings.path, "; ".join(changes) or "no job changes")

    # lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code."""
        other = run.take_scheduler_lease(self.store, self.holder, self.clock(), LEASE_TTL)
        if other is not None:
            raise ScheduleError(
                f"another digest run ({other}) is using {self.settings.digest.database}; "
                "stop it first (only one scheduler per state database)"
            )
        previous = self._install_signals()
        try:
            self._apply(self._specs(self.settings), first=True)
            self.aps.start()
            log.info(
                "scheduler started feeds=%d subscribers=%d pid=%d",
                len(self.settings.feeds),
                len(self.settings.subscribers),
                os.getpid(),
            )
            chosen = run.audience(self.settings, self.store, self.clock())
            for sub, when in next_fire_times(self.settings, self.clock(), chosen).items():
                log.info("digest to=%s next=%s", sub, _iso(when))
            self.aps.add_job(self.watchdog, id="catch-up", next_run_time=self.clock())  # at start
            renewed = time.monotonic()
            while not self.stop.wait(1.0):
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                if time.monotonic() - renewed >= RENEW_EVERY:
                    if not run.renew_scheduler_lease(self.store, self.holder, self.clock(), LEASE_TTL):
                        log.error("lost the scheduler lease to another process; stopping")
                        self.stop.set()
                    renewed = time.monotonic()
            return self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def shutdown(self) -> int:
        """Stop: no new jobs, wait a little for the one in progress; return the exit code."""
        log.info("stopping: no new jobs; waiting up to %gs for the job in progress", STOP_WITHIN)
        self.aps.shutdown(wait=False)
        finished = self.busy.acquire(timeout=STOP_WITHIN)
        run.release_scheduler_lease(self.store, self.holder)
        if not finished:
            # A fetch or an SMTP step still blocked: its digests stay claimed by this (soon
            # dead) process, and the next send or run takes them over at once.
            log.warning("stopped with a job still running; its digests will be retried")
            logging.shutdown()
            os._exit(0)
        # Jobs still queued in the executor run even after the shutdown (and the interpreter's
        # exit waits for them): each must get the lock, see the stop, and return.
        self.busy.release()
        log.info("stopped")
        return 0

    def _install_signals(self) -> dict[int, Any]:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal=%s stopping", signal.Signals(signum).name)
            self.stop.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()

        handlers: dict[int, Callable[[int, FrameType | None], None]] = {
            signal.SIGTERM: stop,
            signal.SIGINT: stop,
            signal.SIGHUP: reload,
        }
        return {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


def run_scheduler(config: str | None, store: Store) -> int:
    """``digest run``: the scheduler in the foreground, on this state database; the exit code."""
    return Scheduler(config, store).run()
