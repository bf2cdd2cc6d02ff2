"""Delivering the outbox: claim due rows, render, compose, send, record each outcome.

Rows are claimed in batches (pending -> sending, with a lease), so a concurrent ``send`` or
``digest run`` never takes the same digest. The server's acceptances are recorded as they come
(:mod:`pipeline.run.recorder`); a transient failure puts a row back as pending with exponential
backoff until ``give_up_after``; a permanent one marks it failed.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import replace
from datetime import datetime, timedelta

from ..config import Settings
from ..deliver import Attempted, ConnectionPool, RateLimit, transport_factory
from ..errors import DeliveryError, RenderError, StoreError
from ..models import Digest, Entry
from ..speed import Speedups
from ..store import OutboxRow, Store, owner_id, utcnow
from .audience import withdrawn
from .bounced import envelope_senders, record_rejection
from .clock import Clock
from .leasing import LeaseKeeper
from .recorder import SentRecorder
from .reports import Outcome, Progress, SendReport
from .stored import digest_from_row

log = logging.getLogger("digest")

FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
CLAIM_BATCH = 50
INTERRUPTED = "interrupted before sending"
UNRECORDABLE = "not sent: the outbox cannot record what is sent"
# Copies of a message a server may have stored at most (the connection was lost right after the
# whole message went: RFC 1047). One more try after each of the first two such losses, each
# after a backoff; after the third the digest fails, never sent again.
MAX_UNCONFIRMED = 3


def deliver_due(
    settings: Settings,
    store: Store,
    report: SendReport | None = None,
    *,
    clock: Clock = utcnow,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    speed: Speedups | None = None,
    rate: RateLimit | None = None,
) -> SendReport:
    """Deliver every due outbox row: claim, render, compose, send, record each outcome.

    Rows are claimed in batches (pending -> sending, with a lease), so a concurrent ``send``
    or ``digest run`` never takes the same digest. Sent rows are recorded as the server
    accepts them; a transient failure puts the row back as pending with exponential backoff
    until ``give_up_after``; a permanent one marks it failed. When ``stop`` is set, the
    messages in flight finish and every other claimed digest goes back to the outbox, due now.
    ``speed`` holds the render pool and the digests this process just planned (which are then
    not rebuilt from their stored form); without it, digests are rendered here. ``rate``: the
    limit every message waits for (``digest worker``'s is shared by all workers); without
    it, ``[smtp] rate`` for this process alone.
    """
    report = report if report is not None else SendReport()
    if progress:
        progress.start(store.count_due(clock()))
    outbox = OutboxRun(
        settings, store, report, clock, progress, stop or threading.Event(), speed or Speedups(), rate
    )
    try:
        outbox.run()
    finally:
        outbox.close()
    return report


class OutboxRun:
    """One run of the outbox: claims due rows, renders and sends them, records each outcome;
    keeps at most a window of claimed rows in flight."""

    WINDOW = CLAIM_BATCH  # rows in flight beyond the claim at hand (each a whole message)

    def __init__(
        self,
        settings: Settings,
        store: Store,
        report: SendReport,
        clock: Clock,
        progress: Progress | None,
        stop: threading.Event,
        speed: Speedups,
        rate: RateLimit | None = None,
    ) -> None:
        self.settings, self.store, self.report, self.clock = settings, store, report, clock
        # ([worker] lease: renewed every third of it, so a crashed sender's rows wait at most that)
        self.lease, self.rate = settings.worker.lease, rate
        self.progress, self.stop, self.speed = progress, stop, speed
        self.rendering = speed.render_pool(settings)
        self.entries: dict[int, Entry] = {}  # loaded for digests rebuilt from the outbox
        # This run's own name: a later run of this process (digest run) may take over what an
        # earlier one left claimed once its lease ran out; this run never takes its own again.
        self.owner = f"{owner_id()}.{secrets.token_hex(3)}"
        self.held: dict[int, tuple[OutboxRow, int]] = {}  # row id -> (row, entries in it)
        self.connections: ConnectionPool | None = None
        self.recorder: SentRecorder | None = None
        # (renewed from its own thread: a long render must not let the claims run out)
        self.keeper = LeaseKeeper(store, self.owner, self.lease, clock, lambda: not self.report.store_error)
        self.verp = envelope_senders(settings, store)  # [bounces]: each delivery's own envelope sender

    def run(self) -> None:
        exhausted = abandoned = False
        while True:
            # (abandoned, not exhausted: a stop after the last claim must still hand back the queue)
            if self.stop.is_set() and not abandoned:
                exhausted = abandoned = True
                if self.connections is not None:
                    self.connections.abandon(INTERRUPTED)
            if self.recorder is not None and self.recorder.failed and not self.report.store_error:
                self._unwritable(self.recorder.failed)
            if self.report.store_error and not abandoned:
                exhausted = abandoned = True
            room = len(self.held) < self.WINDOW and not (self.connections and self.connections.unreachable)
            try:
                if not exhausted and room:
                    exhausted = not self._claim_batch()
                    continue
                if not self.held:
                    return
                assert self.connections is not None
                self._record(self.connections.results(timeout=1.0))
            except StoreError as exc:
                self._unwritable(exc)

    def _unwritable(self, exc: StoreError) -> None:
        """The state database cannot be written (a full disk): what is sent from now on could
        not be recorded, so sending stops at once; claimed rows stay claimed by this process
        and are taken over by the next sender once it is gone."""
        log.error("outbox error=%r (stopping)", str(exc))
        self.report.store_error = str(exc)
        if self.connections is not None:
            self.connections.abandon(UNRECORDABLE)

    def _claim_batch(self) -> bool:
        with self.report.timed("  claim"):
            rows = self.store.claim(self.clock(), lease=self.lease, owner=self.owner, limit=CLAIM_BATCH)
        if not rows:
            return False
        self.keeper.start()
        rows = self._still_wanted(rows)
        if not rows:
            return True
        if self.connections is None:
            smtp = self.settings.smtp
            self.recorder = SentRecorder(self.store, self.clock, self.owner)
            self.connections = ConnectionPool(
                transport_factory(self.settings, self.rate),
                connections=smtp.connections if smtp else 1,
                retries=smtp.retries if smtp else 1,
                retry_delay=smtp.retry_delay.total_seconds() if smtp else 0.0,
                acceptances=self.recorder,
            )
        with self.report.timed("  claim"):
            digests = self._digests(rows)
        step = self.rendering.step or len(rows)  # (each message goes as soon as it is rendered)
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            with self.report.timed("  render"):
                messages = self.rendering.messages(digests[part])
            for row, digest, message in zip(rows[part], digests[part], messages, strict=True):
                if isinstance(message, RenderError):
                    self.store.mark_failed(row.id, str(message), self.owner)
                    log.error("digest to=%s failed=%r", row.subscriber, str(message))
                    self._report(Outcome(row.subscriber, digest.entry_count, "failed", str(message)))
                    continue
                self.held[row.id] = (row, digest.entry_count)
                if self.verp is not None:  # (VERP: bounce+TOKEN@domain names this delivery)
                    message = replace(message, sender=self.verp.sender(row.id, row.message_id))
                self.connections.submit(row.id, message)
        # Record whatever already finished, so memory and leases stay bounded.
        self._record(self.connections.results(timeout=0))
        return True

    def _still_wanted(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The rows whose reader still wants them; a digest already in the outbox for a
        reader who unsubscribed since is not sent (marked failed, saying why)."""
        gone = withdrawn(self.store, {row.subscriber for row in rows}, self.clock())
        for row in rows:
            if row.subscriber in gone:
                self.store.mark_failed(row.id, gone[row.subscriber], self.owner)
                log.info("digest to=%s withdrawn=%r", row.subscriber, gone[row.subscriber])
        return [row for row in rows if row.subscriber not in gone]

    def _digests(self, rows: list[OutboxRow]) -> list[Digest]:
        """The digests these rows hold: as planned by this run, else rebuilt from the outbox."""
        # (taken once: a digest claimed again after a failure is rebuilt, the same)
        planned = {row.id: self.speed.take_planned(row.message_id) for row in rows}
        stored = [row.id for row in rows if planned[row.id] is None]
        specs = self.store.specs(stored) if stored else {}
        wanted = {eid for spec in specs.values() for s in spec["sections"] for eid, _, _ in s["entries"]}
        self.entries.update(self.store.entries_by_id(wanted - self.entries.keys()))
        return [planned[row.id] or digest_from_row(row, specs[row.id], self.entries) for row in rows]

    def _record(self, attempts: list[Attempted]) -> None:
        # Sent rows were already recorded by the SentRecorder; here they are only reported.
        for attempt in attempts:
            row, entries = self.held.pop(attempt.key)
            if attempt.error is None:
                log.info("digest to=%s entries=%d sent", row.subscriber, entries)
                self._report(Outcome(row.subscriber, entries, "sent", tries=attempt.tries))
            else:
                try:
                    outcome = self._failure(row, attempt.error, entries, attempt.tries)
                except StoreError as exc:
                    self._unwritable(exc)
                    outcome = Outcome(row.subscriber, entries, "pending", UNRECORDABLE, tries=attempt.tries)
                self._report(outcome)

    def _failure(self, row: OutboxRow, exc: DeliveryError, entries: int, tries: int) -> Outcome:
        now = self.clock()
        if self.report.store_error:
            # The store cannot be written: the row stays claimed by this process and is
            # taken over by the next sender once this one is gone.
            return Outcome(row.subscriber, entries, "pending", UNRECORDABLE, tries=tries)
        if str(exc) == INTERRUPTED:
            # Never attempted: back to the outbox, due at once, for the next send or run.
            self._fenced(row, self.store.mark_retry(row.id, INTERRUPTED, now, self.owner))
            return Outcome(row.subscriber, entries, "pending", INTERRUPTED, tries=tries)
        if exc.operator:
            # Not this digest's fault: it waits, due at once, until the cause is fixed.
            self.report.refused = self.report.refused or str(exc)
            self._fenced(row, self.store.mark_retry(row.id, str(exc), now, self.owner))
            return Outcome(row.subscriber, entries, "pending", str(exc), tries=tries)
        if exc.connection:
            self.report.unreachable = str(exc)
        copies = row.unconfirmed + 1 if exc.after_data else 0
        if exc.transient and now < row.deliver_until and copies < MAX_UNCONFIRMED:
            held = self.store.mark_retry(
                row.id, str(exc), _next_attempt(row, now), self.owner, unconfirmed=exc.after_data
            )
            self._fenced(row, held)
            log.warning("digest to=%s pending=%r", row.subscriber, str(exc))
            return Outcome(row.subscriber, entries, "pending", str(exc), tries=tries)
        if copies >= MAX_UNCONFIRMED:
            reason = (
                f"the server dropped the connection right after the message {copies} times; "
                f"it may have arrived, so it is not sent again: {exc}"
            )
        elif exc.transient:
            reason = f"gave up after {row.attempts} attempts: {exc}"
        else:
            reason = str(exc)
        held = self.store.mark_failed(row.id, reason, self.owner)
        self._fenced(row, held)
        log.error("digest to=%s failed=%r", row.subscriber, reason)
        if held and exc.recipient:  # refused at RCPT: a bounce of that address (with [bounces])
            record_rejection(self.settings, self.store, row, exc, clock=self.clock)
        return Outcome(row.subscriber, entries, "failed", reason, tries=tries)

    @staticmethod
    def _fenced(row: OutboxRow, held: bool) -> None:
        if not held:
            log.warning(
                "digest to=%s row=%d taken over by another sender: left to it", row.subscriber, row.id
            )

    def _report(self, outcome: Outcome) -> None:
        self.report.outcomes.append(outcome)
        if self.progress:
            self.progress.advance(outcome)

    def close(self) -> None:
        if self.connections is not None:
            if self.stop.is_set():  # (also when a second signal cut the run short: send no more)
                self.connections.abandon(INTERRUPTED)
            self.connections.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.connections is not None:
            # Anything the workers finished while closing is recorded, never lost.
            self._record(self.connections.results(timeout=0))
        self.keeper.stop()


def _next_attempt(row: OutboxRow, now: datetime) -> datetime:
    """Exponential backoff: 1 min, doubling, at most 1 h, never past ``deliver_until``."""
    delay: timedelta = min(FIRST_RETRY * 2 ** max(0, row.attempts - 1), MAX_RETRY)
    return min(now + delay, row.deliver_until)
