"""The one place that chains the stages; the CLI and the scheduler both call these functions.

``fetch_all``: config -> fetch -> parse -> store.
``send``: fetch_all, then store -> match -> outbox (one transaction), then ``deliver_due``:
outbox -> render -> compose -> deliver, recording each outcome.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from .compose import compose_message, message_id, sender_address
from .config import Settings, SubscriberConfig
from .deliver import Attempted, Dispatcher, transport_factory
from .errors import DeliveryError, DigestError, FetchError, MatchError, ParseError, RenderError, StoreError
from .fetch import FetchRequest, fetch_feeds
from .match import compile_topics, index_entries, match_topics
from .models import Digest, Entry, Match, OutgoingMessage, RenderedDigest, Section
from .parse import parse_feed
from .render import Renderer, unsubscribe_url
from .store import FAILED, PENDING, SENDING, FeedState, NewDelivery, OutboxRow, Store, owner_id, utcnow

log = logging.getLogger("digest")

LEASE = timedelta(minutes=10)
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
CLAIM_BATCH = 100
INTERRUPTED = "interrupted before sending"

Clock = Callable[[], datetime]


# --- fetch ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedReport:
    """The outcome of fetching one feed."""

    feed: str
    result: Literal["new", "not-modified", "error"]
    new: int = 0
    error: str | None = None
    warnings: tuple[str, ...] = ()
    status: int | None = None
    elapsed: float = 0.0


def fetch_all(
    settings: Settings, store: Store, *, feeds: Iterable[str] | None = None, clock: Clock = utcnow
) -> list[FeedReport]:
    """Fetch the configured feeds (or the named ones), store new entries, report per feed."""
    store.sync_feeds({f.name: f.url for f in settings.feeds})
    wanted = set(feeds) if feeds is not None else None
    states = store.feed_states()
    requests = [
        FetchRequest(f.name, states[f.name].url, states[f.name].etag, states[f.name].last_modified)
        for f in settings.feeds
        if wanted is None or f.name in wanted
    ]
    reports = []
    for request, outcome in fetch_feeds(
        requests,
        timeout=settings.fetch.timeout.total_seconds(),
        max_bytes=settings.fetch.max_bytes,
        concurrency=settings.fetch.concurrency,
    ):
        now = clock()
        if isinstance(outcome, FetchError):
            report = FeedReport(request.feed, "error", error=str(outcome))
            store.record_fetch(request.feed, now=now, status="error", error=str(outcome))
        elif outcome.content is None:
            report = FeedReport(request.feed, "not-modified", status=outcome.status, elapsed=outcome.elapsed)
            store.record_fetch(
                request.feed,
                now=now,
                status="not modified",
                etag=outcome.etag,
                last_modified=outcome.last_modified,
                url=outcome.permanent_url,
            )
        else:
            try:
                parsed = parse_feed(outcome)
            except ParseError as exc:
                report = FeedReport(
                    request.feed, "error", error=str(exc), status=outcome.status, elapsed=outcome.elapsed
                )
                store.record_fetch(request.feed, now=now, status="error", error=str(exc))
            else:
                new = store.add_items(parsed.items, now)
                report = FeedReport(
                    request.feed,
                    "new",
                    new=new,
                    warnings=parsed.warnings,
                    status=outcome.status,
                    elapsed=outcome.elapsed,
                )
                store.record_fetch(
                    request.feed,
                    now=now,
                    status=f"{new} new",
                    new=new,
                    etag=outcome.etag,
                    last_modified=outcome.last_modified,
                    url=outcome.permanent_url,
                )
        _log_feed(report)
        reports.append(report)
    return reports


def feeds_of(settings: Settings, subscribers: Sequence[SubscriberConfig]) -> list[str]:
    """The feeds whose entries can reach these subscribers (a topic without ``feeds`` reads all)."""
    wanted: set[str] = set()
    for sub in subscribers:
        for topic in sub.topics:
            restricted = settings.topics[topic].feeds
            if not restricted:
                return [f.name for f in settings.feeds]
            wanted.update(restricted)
    return [f.name for f in settings.feeds if f.name in wanted]


def fetch_stale(
    settings: Settings, store: Store, subscribers: Sequence[SubscriberConfig], *, clock: Clock = utcnow
) -> list[FeedReport]:
    """Fetch the subscribers' feeds whose last fetch is older than their polling interval.

    Feeds backing off after failures (next attempt in the future) are left alone.
    """
    store.sync_feeds({f.name: f.url for f in settings.feeds})
    states = store.feed_states()
    now = clock()
    intervals = {f.name: settings.feed_interval(f) for f in settings.feeds}
    stale = []
    for name in feeds_of(settings, subscribers):
        state = states[name]
        if state.next_attempt_at is not None and state.next_attempt_at > now:
            continue
        if state.last_fetch_at is None or now - state.last_fetch_at >= intervals[name]:
            stale.append(name)
    return fetch_all(settings, store, feeds=stale, clock=clock) if stale else []


def _log_feed(report: FeedReport) -> None:
    if report.result == "error":
        log.warning("feed=%s error=%r", report.feed, report.error)
    else:
        log.info("feed=%s new=%d status=%s", report.feed, report.new, report.status or report.result)
    for warning in report.warnings:
        log.warning("feed=%s warning=%r", report.feed, warning)


# --- plan: which entries go to whom -----------------------------------------------------------


def select_subscribers(settings: Settings, emails: Sequence[str] | None) -> list[SubscriberConfig]:
    """The named subscribers (all when none are named); an unknown address is an error."""
    if not emails:
        return list(settings.subscribers)
    chosen, unknown = [], []
    for email in emails:
        subscriber = settings.subscriber(email)
        if subscriber is None:
            unknown.append(email)
        elif subscriber not in chosen:
            chosen.append(subscriber)
    if unknown:
        known = ", ".join(s.email for s in settings.subscribers) or "none configured"
        raise DigestError(f"unknown subscriber {', '.join(unknown)} (subscribers: {known})")
    return chosen


def plan_digests(
    settings: Settings,
    store: Store,
    subscribers: Sequence[SubscriberConfig],
    now: datetime,
    *,
    keep_empty: bool = False,
) -> list[Digest]:
    """Each subscriber's digest of new matching entries (empty ones only if asked or configured).

    New means: not yet taken for this subscriber, and published no earlier than ``lookback``
    before the previous real send to them (before now, for a first digest). An entry that
    several of their topics match appears once, under the first of those topics.
    """
    if not subscribers:
        return []
    topics = compile_topics(
        {name: settings.topics[name] for name in {t for s in subscribers for t in s.topics}}
    )
    states = store.subscriber_states()
    lookback = settings.digest.lookback
    cutoffs = {}
    for sub in subscribers:
        state = states.get(sub.email)
        cutoffs[sub.email] = ((state.last_checked_at if state else None) or now) - lookback
    entries = store.entries_since(min(cutoffs.values()))
    matches = match_topics(topics, index_entries(entries))
    taken = store.taken_entries([s.email for s in subscribers], [e.id for e in entries])
    digests = []
    for sub in subscribers:
        sections = _sections(settings, sub, matches, taken[sub.email], cutoffs[sub.email])
        if not sections and not (keep_empty or settings.digest.send_empty):
            continue
        ids = [m.entry.id for s in sections for m in s.matches]
        digests.append(
            Digest(
                subscriber=sub.email,
                name=sub.name,
                sections=sections,
                topics=tuple(settings.topic_title(t) for t in sub.topics),
                created_at=now,
                message_id=message_id(sub.email, ids, now, settings.sender),
            )
        )
    return digests


def _sections(
    settings: Settings,
    sub: SubscriberConfig,
    matches: dict[str, list[Match]],
    taken: set[int],
    cutoff: datetime,
) -> tuple[Section, ...]:
    chosen: dict[str, list[Match]] = {}
    seen: set[int] = set()
    for topic in sub.topics:
        picked = chosen[topic] = []
        for match in matches[topic]:
            entry = match.entry
            if entry.id in taken or entry.id in seen or entry.published < cutoff:
                continue
            seen.add(entry.id)
            picked.append(match)
    # max_entries keeps the best across the whole email; the rest is counted as "and N more".
    ranked = sorted((m for ms in chosen.values() for m in ms), key=_rank)
    keep = {id(m) for m in ranked[: settings.digest.max_entries]}
    sections = []
    for topic, picked in chosen.items():
        if not picked:
            continue
        shown = tuple(m for m in picked if id(m) in keep)
        cut = tuple(m.entry.id for m in picked if id(m) not in keep)
        sections.append(Section(topic, settings.topic_title(topic), shown, more=len(cut), cut=cut))
    return tuple(sections)


def _rank(match: Match) -> tuple[int, float, int]:
    return (-match.score, -match.entry.published.timestamp(), -match.entry.id)


# --- outbox: digests as stored rows and back ----------------------------------------------------


def _delivery(settings: Settings, digest: Digest) -> NewDelivery:
    give_up = settings.smtp.give_up_after if settings.smtp else timedelta(days=2)
    spec = {
        "name": digest.name,
        "topics": list(digest.topics),
        "sections": [
            {
                "topic": s.topic,
                "title": s.title,
                "more": s.more,
                "entries": [[m.entry.id, m.score, list(m.hits)] for m in s.matches],
            }
            for s in digest.sections
        ],
    }
    return NewDelivery(
        subscriber=digest.subscriber,
        message_id=digest.message_id,
        created_at=digest.created_at,
        deliver_until=digest.created_at + give_up,
        shown=tuple(m.entry.id for s in digest.sections for m in s.matches),
        hidden=tuple(eid for s in digest.sections for eid in s.cut),
        spec=spec,
    )


def digest_from_row(row: OutboxRow, entries: dict[int, Entry]) -> Digest:
    """Rebuild the digest an outbox row describes (entries pruned since are left out)."""
    sections = []
    for s in row.spec["sections"]:
        matches = tuple(
            Match(entries[eid], s["topic"], score, tuple(hits))
            for eid, score, hits in s["entries"]
            if eid in entries
        )
        sections.append(Section(s["topic"], s["title"], matches, more=s["more"]))
    return Digest(
        subscriber=row.subscriber,
        name=row.spec.get("name"),
        sections=tuple(sections),
        topics=tuple(row.spec.get("topics", [])),
        created_at=row.created_at,
        message_id=row.message_id,
    )


# --- send --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one digest."""

    subscriber: str
    entries: int
    status: Literal["sent", "pending", "failed", "planned"]
    detail: str = ""
    subject: str = ""
    tries: int = 0  # SMTP attempts in this run; more than one means it was retried


class Progress(Protocol):
    """Told how many digests are due, then about each one as it finishes."""

    def start(self, total: int) -> None: ...

    def advance(self, outcome: Outcome) -> None: ...


@dataclass(slots=True)
class SendReport:
    """Everything ``send`` did, for the CLI to print and turn into an exit code."""

    feeds: list[FeedReport] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    nothing_new: list[str] = field(default_factory=list)
    unreachable: str | None = None
    dry_run: bool = False

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def retried(self) -> int:
        """Digests that were sent only after a retry within this run."""
        return sum(1 for o in self.outcomes if o.status == "sent" and o.tries > 1)

    @property
    def exit_code(self) -> int:
        """0 all delivered or nothing to do; 1 a permanent failure; 3 some left pending."""
        if self.count("failed"):
            return 1
        if self.count("pending") or self.unreachable:
            return 3
        return 0


def send(
    settings: Settings,
    store: Store,
    *,
    subscribers: Sequence[str] | None = None,
    dry_run: bool = False,
    fetch: bool = True,
    clock: Clock = utcnow,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> SendReport:
    """Fetch, then build and deliver now the digest of each named (or every) subscriber.

    New digests are committed to the outbox before any SMTP traffic; then every due outbox
    row is delivered, including digests left pending by earlier runs.
    """
    chosen = select_subscribers(settings, subscribers)
    report = SendReport(dry_run=dry_run)
    if fetch:
        report.feeds = fetch_all(settings, store, clock=clock)
    now = clock()
    digests = plan_digests(settings, store, chosen, now)
    with_digest = {d.subscriber for d in digests}
    report.nothing_new = [s.email for s in chosen if s.email not in with_digest]
    for email in report.nothing_new:
        log.info("digest to=%s skipped=nothing-new", email)
    if dry_run:
        renderer = Renderer(settings)
        for digest in digests:
            rendered = renderer.render(digest)
            report.outcomes.append(
                Outcome(digest.subscriber, digest.entry_count, "planned", subject=rendered.subject)
            )
        return report
    store.enqueue([_delivery(settings, d) for d in digests])
    store.mark_checked([s.email for s in chosen], now)
    deliver_due(settings, store, report, clock=clock, progress=progress, stop=stop)
    return report


def deliver_due(
    settings: Settings,
    store: Store,
    report: SendReport | None = None,
    *,
    clock: Clock = utcnow,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> SendReport:
    """Deliver every due outbox row: claim, render, compose, send, record each outcome.

    Rows are claimed in batches (pending -> sending, with a lease), so a concurrent ``send``
    or ``digest run`` never takes the same digest. Sent rows are recorded as the server
    accepts them; a transient failure puts the row back as pending with exponential backoff
    until ``give_up_after``; a permanent one marks it failed. When ``stop`` is set, the
    messages in flight finish and every other claimed digest goes back to the outbox, due now.
    """
    report = report if report is not None else SendReport()
    if progress:
        progress.start(store.count_due(clock()))
    delivery = _Delivery(settings, store, report, clock, progress, stop or threading.Event())
    try:
        delivery.run()
    finally:
        delivery.close()
    return report


class _Delivery:
    """One run of the outbox: keeps at most a window of claimed rows in flight."""

    WINDOW = 2 * CLAIM_BATCH

    def __init__(
        self,
        settings: Settings,
        store: Store,
        report: SendReport,
        clock: Clock,
        progress: Progress | None,
        stop: threading.Event,
    ) -> None:
        self.settings, self.store, self.report, self.clock = settings, store, report, clock
        self.progress, self.stop = progress, stop
        self.owner = owner_id()
        self.held: dict[int, tuple[OutboxRow, int]] = {}  # row id -> (row, entries in it)
        self.renderer: Renderer | None = None
        self.dispatcher: Dispatcher | None = None
        self.recorder: SentRecorder | None = None
        self.lease_renewed = time.monotonic()

    def run(self) -> None:
        exhausted = False
        while True:
            if self.stop.is_set() and not exhausted:
                exhausted = True
                if self.dispatcher is not None:
                    self.dispatcher.abandon(INTERRUPTED)
            room = len(self.held) < self.WINDOW and not (self.dispatcher and self.dispatcher.unreachable)
            if not exhausted and room:
                exhausted = not self._claim_batch()
                continue
            if not self.held:
                return
            assert self.dispatcher is not None
            self._record(self.dispatcher.results(timeout=1.0))
            self._renew_leases()

    def _claim_batch(self) -> bool:
        rows = self.store.claim(self.clock(), lease=LEASE, owner=self.owner, limit=CLAIM_BATCH)
        if not rows:
            return False
        if self.renderer is None:
            self.renderer = Renderer(self.settings)
        if self.dispatcher is None:
            smtp = self.settings.smtp
            self.recorder = SentRecorder(self.store, self.clock)
            self.dispatcher = Dispatcher(
                transport_factory(self.settings),
                connections=smtp.connections if smtp else 1,
                retries=smtp.retries if smtp else 1,
                retry_delay=smtp.retry_delay.total_seconds() if smtp else 0.0,
                on_sent=self.recorder.add,
            )
        entries = self.store.entries_by_id(
            eid for row in rows for s in row.spec["sections"] for eid, _, _ in s["entries"]
        )
        for row in rows:
            digest = digest_from_row(row, entries)
            try:
                message = _message(self.settings, self.renderer, digest)
            except RenderError as exc:
                self.store.mark_failed(row.id, str(exc))
                log.error("digest to=%s failed=%r", row.subscriber, str(exc))
                self._report(Outcome(row.subscriber, digest.entry_count, "failed", str(exc)))
                continue
            self.held[row.id] = (row, digest.entry_count)
            self.dispatcher.submit(row.id, message)
        # Record whatever already finished, so memory and leases stay bounded.
        self._record(self.dispatcher.results(timeout=0))
        return True

    def _record(self, attempts: list[Attempted]) -> None:
        # Sent rows were already recorded by the SentRecorder; here they are only reported.
        for attempt in attempts:
            row, entries = self.held.pop(attempt.key)
            if attempt.error is None:
                log.info("digest to=%s entries=%d sent", row.subscriber, entries)
                self._report(Outcome(row.subscriber, entries, "sent", tries=attempt.tries))
            else:
                self._report(self._failure(row, attempt.error, entries, attempt.tries))

    def _failure(self, row: OutboxRow, exc: DeliveryError, entries: int, tries: int) -> Outcome:
        now = self.clock()
        if str(exc) == INTERRUPTED:
            # Never attempted: back to the outbox, due at once, for the next send or run.
            self.store.mark_retry(row.id, INTERRUPTED, now)
            return Outcome(row.subscriber, entries, "pending", INTERRUPTED, tries=tries)
        if exc.connection:
            self.report.unreachable = str(exc)
        if exc.transient and now < row.deliver_until:
            self.store.mark_retry(row.id, str(exc), _next_attempt(row, now))
            log.warning("digest to=%s pending=%r", row.subscriber, str(exc))
            return Outcome(row.subscriber, entries, "pending", str(exc), tries=tries)
        reason = str(exc) if not exc.transient else f"gave up after {row.attempts} attempts: {exc}"
        self.store.mark_failed(row.id, reason)
        log.error("digest to=%s failed=%r", row.subscriber, reason)
        return Outcome(row.subscriber, entries, "failed", reason, tries=tries)

    def _report(self, outcome: Outcome) -> None:
        self.report.outcomes.append(outcome)
        if self.progress:
            self.progress.advance(outcome)

    def _renew_leases(self) -> None:
        # Rows waiting for in-run retries must not look abandoned to another process.
        if self.held and time.monotonic() - self.lease_renewed > LEASE.total_seconds() / 3:
            self.store.renew(list(self.held), self.clock() + LEASE, self.owner)
            self.lease_renewed = time.monotonic()

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.dispatcher is not None:
            # Anything the workers finished while closing is recorded, never lost.
            self._record(self.dispatcher.results(timeout=0))


class SentRecorder:
    """Marks rows sent as soon as the server accepts them, in group commits.

    Called from the sending threads, so the time between a server's 250 and our record of it
    (the only window in which a crash causes a re-send) is one commit, whatever the main
    thread is busy with; rows accepted meanwhile share that commit.
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="sent-recorder", daemon=True)
        self.thread.start()

    def add(self, row_id: int) -> None:
        self.queue.put(row_id)

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = [self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get())
            closing = None in batch
            ids = [i for i in batch if i is not None]
            if ids:
                try:
                    self.store.mark_sent(ids, self.clock())
                except StoreError as exc:
                    # Not lost: the rows stay claimed and go out again (same Message-ID) later.
                    log.error("outbox error=%r rows=%s", str(exc), ids)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _message(settings: Settings, renderer: Renderer, digest: Digest) -> OutgoingMessage:
    rendered = renderer.render(digest)
    return compose_message(
        digest,
        rendered,
        sender=settings.sender,
        list_id=list_id(settings),
        unsubscribe=_unsubscribe_links(settings, digest.subscriber),
        one_click=bool(settings.digest.base_url),
    )


def _next_attempt(row: OutboxRow, now: datetime) -> datetime:
    """Exponential backoff: 1 min, doubling, at most 1 h, never past ``deliver_until``."""
    delay: timedelta = min(FIRST_RETRY * 2 ** max(0, row.attempts - 1), MAX_RETRY)
    return min(now + delay, row.deliver_until)


def list_id(settings: Settings) -> str:
    domain = sender_address(settings.sender).rpartition("@")[2] or "localhost"
    slug = "".join(c if c.isalnum() else "-" for c in settings.digest.title.lower()).strip("-") or "digest"
    return f"{settings.digest.title} <{slug}.{domain}>"


def _unsubscribe_links(settings: Settings, email: str) -> list[str]:
    links = []
    if settings.digest.base_url:
        links.append(unsubscribe_url(settings, email))
    address = sender_address(settings.sender)
    links.append(f"mailto:{address}?subject=unsubscribe")
    return links


# --- preview, status, check ----------------------------------------------------------------------


def preview(
    settings: Settings, store: Store, email: str, *, fetch: bool = True, clock: Clock = utcnow
) -> tuple[Digest, RenderedDigest]:
    """Render a subscriber's next digest without sending or recording anything."""
    (subscriber,) = select_subscribers(settings, [email])
    if fetch:
        fetch_all(settings, store, clock=clock)
    (digest,) = plan_digests(settings, store, [subscriber], clock(), keep_empty=True)
    return digest, Renderer(settings).render(digest)


@dataclass(frozen=True, slots=True)
class SubscriberStatus:
    email: str
    topics: tuple[str, ...]
    schedule: str
    last_digest_at: datetime | None
    pending_entries: int  # new matching entries the next digest would count


@dataclass(frozen=True, slots=True)
class StatusReport:
    feeds: list[FeedState]
    subscribers: list[SubscriberStatus]
    deliveries: dict[str, int]  # outbox rows per state
    unfinished: list[OutboxRow]  # pending, sending and failed rows


def status(settings: Settings, store: Store, *, clock: Clock = utcnow) -> StatusReport:
    """Feeds, subscribers and the outbox as the store sees them now."""
    store.sync_feeds({f.name: f.url for f in settings.feeds})
    feeds = store.feed_states()
    planned = {d.subscriber: d for d in plan_digests(settings, store, settings.subscribers, clock())}
    states = store.subscriber_states()
    subscribers = []
    for sub in settings.subscribers:
        digest = planned.get(sub.email)
        state = states.get(sub.email)
        subscribers.append(
            SubscriberStatus(
                email=sub.email,
                topics=tuple(sub.topics),
                schedule=str(sub.schedule),
                last_digest_at=state.last_digest_at if state else None,
                pending_entries=digest.entry_count + digest.more_count if digest else 0,
            )
        )
    return StatusReport(
        feeds=[feeds[f.name] for f in settings.feeds],
        subscribers=subscribers,
        deliveries=store.delivery_counts(),
        unfinished=store.deliveries([PENDING, SENDING, FAILED]),
    )


def check(settings: Settings) -> list[str]:
    """Problems the schema cannot see: topic syntax, templates, feed files, SMTP password."""
    problems: list[str] = []
    try:
        compile_topics(settings.topics)
    except MatchError as exc:
        problems.extend(f"{settings.path}: {line}" for line in str(exc).splitlines())
    try:
        Renderer(settings)
    except RenderError as exc:
        problems.append(str(exc))
    if settings.digest.templates and not Path(settings.digest.templates).is_dir():
        problems.append(
            f"{settings.path}: digest.templates: folder {settings.digest.templates} does not exist"
        )
    for feed in settings.feeds:
        if feed.is_local and not Path(feed.url).is_file():
            problems.append(f"{settings.path}: feeds {feed.name}: file {feed.url} does not exist")
    smtp = settings.smtp
    if smtp and smtp.username and smtp.password() is None:
        problems.append(
            f"{settings.path}: smtp.password_env: environment variable "
            f"{smtp.password_env or '(not set)'} is empty or missing"
        )
    return problems
