"""The worker's tasks: the tick, fetching a feed, planning a batch, delivering, the sweep, pruning.

procrastinate only triggers work; what was planned and sent is recorded by the chain in our
tables (slots, the outbox and its leases), so a job run twice, or cut short by a crash and
run again, changes nothing twice:

- **tick** (periodic, ``[worker] tick``, queueing lock ``digest.tick``): finds what is due
  (:mod:`.tick`) and defers the rest;
- **fetch** one feed (queueing lock per feed);
- **plan** one batch of due subscribers for one slot (queueing lock per slot and batch, and
  no twin deferred while it runs; idempotent on (subscriber, slot) all the same);
- **deliver** due outbox rows for at most ``[worker] deliver_for`` (one queueing lock per
  delivery lane, a lane per live worker), deferring itself again while rows are due;
- **sweep** (periodic, with the tick): jobs left ``doing`` by a worker whose heartbeat
  stopped go back to ``todo``; one whose twin already waits under the same queueing lock
  (procrastinate issue #1446: the retry would fail on the lock's unique index) is marked
  failed instead, the twin does the work;
- **schedules** (every 5 minutes): new subscribers and changed schedules get their next slot;
- **prune** (hourly): finished jobs, old slots, workers long gone.

procrastinate's ``lock`` is not used: mutual exclusion stays with our claims and leases.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from procrastinate import App, JobContext
from procrastinate import exceptions as engine_errors
from procrastinate.jobs import Status

from .. import run
from ..config import Settings
from ..errors import DigestError
from ..store import Store, utcnow
from .rate import SharedRate
from .tick import due_work, tick_cron

log = logging.getLogger("digest")

QUEUE = "digest"
SCHEDULES_CRON = "*/5 * * * *"
PRUNE_CRON = "17 * * * *"
KEEP_FINISHED = 24  # hours a succeeded job is kept (status counts it meanwhile)
KEEP_FAILED = 24 * 7  # hours a failed job is kept
KEEP_GONE_WORKERS = timedelta(days=1)


class Engine:
    """The tasks of one worker process, on its settings and store."""

    def __init__(self, settings: Settings, store: Store, app: App, stopping: threading.Event) -> None:
        self.settings, self.store, self.app, self.stopping = settings, store, app, stopping
        smtp = settings.smtp
        self.rate = SharedRate(store, smtp.rate) if smtp is not None and smtp.rate else None
        self.lease = settings.worker.lease
        self.running = 0  # jobs of this process running now (a stop waits for them)
        self.count = threading.Lock()
        self._register()

    # -- the tasks --------------------------------------------------------------------------

    def _register(self) -> None:
        app, cron = self.app, tick_cron(self.settings)

        @app.periodic(cron=cron, periodic_id="tick")
        @app.task(name="digest.tick", queue=QUEUE, queueing_lock="digest.tick")
        def tick(timestamp: int) -> None:
            self._job(self.tick)

        @app.task(name="digest.fetch", queue=QUEUE)
        def fetch(feed: str) -> None:
            self._job(lambda: self.fetch(feed))

        @app.task(name="digest.plan", queue=QUEUE, pass_context=True)
        def plan(context: JobContext, slot: str, emails: list[str]) -> None:
            self._job(lambda: self.plan(context.job.id, datetime.fromisoformat(slot), emails))

        @app.task(name="digest.deliver", queue=QUEUE)
        def deliver(lane: int) -> None:
            self._job(lambda: self.deliver(lane))

        @app.periodic(cron=cron, periodic_id="sweep")
        @app.task(name="digest.sweep", queue=QUEUE, queueing_lock="digest.sweep")
        async def sweep(timestamp: int) -> None:
            await self.sweep()

        @app.periodic(cron=SCHEDULES_CRON, periodic_id="schedules")
        @app.task(name="digest.schedules", queue=QUEUE, queueing_lock="digest.schedules")
        def schedules(timestamp: int) -> None:
            self._job(lambda: self.sync_schedules())

        @app.periodic(cron=PRUNE_CRON, periodic_id="prune")
        @app.task(name="digest.prune", queue=QUEUE, queueing_lock="digest.prune")
        async def prune(timestamp: int) -> None:
            await asyncio.to_thread(self.prune_state)
            manager = app.job_manager
            await manager.delete_old_jobs(nb_hours=KEEP_FINISHED)
            await manager.delete_old_jobs(
                nb_hours=KEEP_FAILED, include_failed=True, include_cancelled=True, include_aborted=True
            )

        self.fetch_task, self.plan_task, self.deliver_task = fetch, plan, deliver

    def _job(self, work: Callable[[], None]) -> None:
        with self.count:
            self.running += 1
        try:
            work()
        except DigestError as exc:  # (one job's failure is logged; the tick finds the work again)
            log.error("worker job error=%r", str(exc))
            raise
        finally:
            with self.count:
                self.running -= 1

    def _defer(self, task: Any, lock: str, **kwargs: Any) -> bool:
        """Defer a job unless one with this queueing lock already waits."""
        try:
            task.configure(queueing_lock=lock).defer(**kwargs)
        except engine_errors.AlreadyEnqueued:
            return False
        return True

    def tick(self) -> None:
        """Find what is due and defer the jobs that do it."""
        started = time.monotonic()
        now = utcnow()
        due = due_work(self.settings, self.store, now)
        # (a batch whose job runs now gets no twin: it would plan nothing, at the full cost)
        busy = self.store.active_job_locks("digest.plan") if due.batches else set()
        for batch in due.batches:
            key = f"plan:{batch.slot.isoformat()}:{batch.emails[0]}"
            if key not in busy:
                self._defer(self.plan_task, key, slot=batch.slot.isoformat(), emails=list(batch.emails))
        for feed in due.feeds:
            self._defer(self.fetch_task, f"fetch:{feed}", feed=feed)
        if due.outbox_due:
            self.fill_lanes(now)
        log.info(
            "tick subscribers=%d batches=%d feeds=%d outbox=%s elapsed=%.3fs",
            sum(len(b.emails) for b in due.batches),
            len(due.batches),
            len(due.feeds),
            "due" if due.outbox_due else "idle",
            time.monotonic() - started,
        )

    def fill_lanes(self, now: datetime) -> None:
        """A delivery job waiting in every lane (a lane per live worker)."""
        lanes = max(1, len(self.store.live_workers(now, self.lease)))
        for lane in range(lanes):
            self._defer(self.deliver_task, f"deliver:{lane}", lane=lane)

    def fetch(self, feed: str) -> None:
        if feed in {f.name for f in self.settings.feeds}:
            run.fetch_all(self.settings, self.store, feeds=[feed])

    def plan(self, job: int | None, slot: datetime, emails: list[str]) -> None:
        log.info("plan job=%s slot=%s subscribers=%d start", job, slot.isoformat(), len(emails))
        report = run.plan_batch(self.settings, self.store, emails, slot, utcnow())
        log.info(
            "plan job=%s slot=%s planned=%d digests=%d skipped=%d gone=%d",
            job,
            slot.isoformat(),
            report.planned,
            report.digests,
            report.skipped,
            len(report.gone),
        )
        if report.digests:
            self.fill_lanes(utcnow())

    def deliver(self, lane: int) -> None:
        """Deliver due rows until none is due, the budget is spent or the worker stops."""
        stop = self._budget(self.settings.worker.deliver_for.total_seconds())
        try:
            report = run.deliver_due(self.settings, self.store, stop=stop, rate=self.rate)
        finally:
            stop.set()
        sent = sum(1 for o in report.outcomes if o.status == "sent")
        log.info("deliver lane=%d sent=%d other=%d", lane, sent, len(report.outcomes) - sent)
        if not self.stopping.is_set() and not report.store_error and self.store.count_due(utcnow()):
            self._defer(self.deliver_task, f"deliver:{lane}", lane=lane)

    def _budget(self, seconds: float) -> threading.Event:
        """An event set after ``seconds``, or as soon as the worker stops."""
        stop, deadline = threading.Event(), time.monotonic() + seconds

        def watch() -> None:
            while not stop.wait(0.1):
                if self.stopping.is_set() or time.monotonic() >= deadline:
                    stop.set()

        threading.Thread(target=watch, name="deliver-budget", daemon=True).start()
        return stop

    async def sweep(self) -> None:
        """Put back the jobs of workers whose heartbeat stopped (see the module docstring)."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=self.lease.total_seconds())
        for job in stalled:
            try:
                await manager.retry_job(job)
                log.warning("sweep job=%s task=%s requeued (its worker stopped)", job.id, job.task_name)
            except engine_errors.UniqueViolation:
                await manager.finish_job(job, status=Status.FAILED, delete_job=False)
                log.warning("sweep job=%s task=%s failed: a twin waits with its lock", job.id, job.task_name)

    def sync_schedules(self) -> None:
        changed = run.sync_schedules(self.settings, self.store, utcnow())
        if changed:
            log.info("schedules changed=%d", changed)

    def prune_state(self) -> None:
        now = utcnow()
        slots = self.store.prune_slots(now - self.settings.digest.retain)
        workers = self.store.prune_workers(now - KEEP_GONE_WORKERS)
        log.info("prune slots=%d workers=%d", slots, workers)
