"""``send``, the whole chain for a send now: fetch, plan, the outbox, delivery.

``plan_digests`` reads what planning needs from the store (entries, what each subscriber took)
and hands it to the pure planner (:mod:`pipeline.plan`); ``enqueue_digests`` commits the plan to
the outbox; :func:`~pipeline.run.outbox.deliver_due` delivers it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime

from ..config import Settings, SubscriberConfig
from ..errors import DigestError
from ..match import compile_topics, index_entries, match_topics
from ..models import Digest
from ..plan import select_digests
from ..speed import Speedups
from ..store import Store, utcnow
from ..web.tokens import signer
from .audience import audience, excluded_readers, listed
from .clock import Clock
from .fetching import fetch_all
from .outbox import deliver_due
from .reports import Outcome, Progress, SendReport
from .stored import DEFAULT_GIVE_UP, OutboxEncoder, queued_digest

log = logging.getLogger("digest")

ENQUEUE_BATCH = 500  # digests per outbox transaction


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
    speed: Speedups | None = None,
    retry_now: bool = False,
    retry_failed: bool = False,
) -> SendReport:
    """Fetch, then build and deliver now the digest of each named (or every) subscriber.

    Every due outbox row is delivered, including digests left pending by earlier runs; the new
    digests are all committed to the outbox before the first is sent. Pending digests whose
    next attempt is still to come are reported as waiting; ``retry_now`` makes those (of the
    named subscribers) due now, ``retry_failed`` puts their failed digests back first (same
    Message-ID, a new give-up time). ``speed``: the caller's speed handle (see
    :mod:`pipeline.speed`); without one, this send makes its own.
    """
    if settings.digest.base_url:
        signer(settings.web)  # (links are signed: without the key, stop before anything is planned)
    report = SendReport(dry_run=dry_run)
    named = (
        [s.email for s in select_subscribers(settings, subscribers, store=store, chosen=False)]
        if subscribers
        else None
    )
    # Readers' own choices win (unsubscribed, paused, their topics and schedule).
    chosen = select_subscribers(settings, subscribers, store=store, now=clock())
    report.excluded = excluded_readers(settings, store, clock(), named)
    for excluded in report.excluded:
        log.info("digest to=%s skipped=%s", excluded.config.email, excluded.excluded)
    if retry_failed and not dry_run:
        give_up = settings.smtp.give_up_after if settings.smtp else DEFAULT_GIVE_UP
        report.requeued = store.requeue_failed(clock(), give_up, named)
    if retry_now and not dry_run:
        store.retry_now(clock(), named)
    owned: AbstractContextManager[Speedups] = nullcontext(speed) if speed is not None else Speedups()
    with owned as speed:
        if not dry_run:  # (render children start first, so that their imports overlap the fetch)
            speed.start_rendering(settings, len(chosen))
        if fetch:
            with report.timed("fetch"):
                report.feeds = fetch_all(settings, store, clock=clock, alerts=not dry_run, speed=speed)
        now = clock()
        with report.timed("plan"):
            digests = plan_digests(settings, store, chosen, now, speed=speed)
        with_digest = {d.subscriber for d in digests}
        report.nothing_new = [s.email for s in chosen if s.email not in with_digest]
        for email in report.nothing_new:
            log.info("digest to=%s skipped=nothing-new", email)
        if dry_run:
            report.outcomes += [
                Outcome(d.subscriber, d.entry_count, "planned", subject=subject)
                for d, subject in zip(digests, _subjects(settings, digests), strict=True)
            ]
            return report
        speed.planned(digests)  # the render pool renders from now on, while they are committed
        with speed.delivering():
            with report.timed("enqueue"):
                enqueue_digests(settings, store, digests)
            with report.timed("deliver"):
                deliver_due(settings, store, report, clock=clock, progress=progress, stop=stop, speed=speed)
            if report.store_error:  # (nothing more can be written: the report says so)
                return report
            store.mark_checked([s.email for s in chosen], now)
        # Pending digests this run did not try (not yet due, or left when the server became
        # unusable): they wait in the outbox, and the report says so.
        emails, tried = {s.email for s in chosen}, {o.subscriber for o in report.outcomes}
        report.waiting = [r for r in store.pending() if r.subscriber in emails and r.subscriber not in tried]
        # (a subscriber whose digest is still in the outbox has something: it is on its way)
        busy = {o.subscriber for o in report.outcomes} | {row.subscriber for row in report.waiting}
        report.nothing_new = [email for email in report.nothing_new if email not in busy]
    log.info("timings %s", " ".join(f"{stage}={seconds:.2f}s" for stage, seconds in report.timings.items()))
    return report


def _subjects(settings: Settings, digests: Sequence[Digest]) -> list[str]:
    from ..render import Renderer  # (here: a real send renders in its render pool)

    renderer = Renderer(settings)
    renderer.prepare(digests)
    return [renderer.render(digest).subject for digest in digests]


def select_subscribers(
    settings: Settings,
    emails: Sequence[str] | None,
    *,
    store: Store | None = None,
    now: datetime | None = None,
    chosen: bool = True,
) -> list[SubscriberConfig]:
    """The named subscribers (all when none are named); an unknown address is an error.

    With a store, those who signed up on the web are subscribers too, and (``chosen``) each
    is as they chose (:func:`~pipeline.run.audience.audience`): those who get no digest now
    (unsubscribed, paused) are left out, the others have their own topics and schedule.
    """
    known = listed(settings, store) if store is not None else list(settings.subscribers)
    named = _named(known, emails) if emails else known
    if store is None or not chosen:
        return named
    wanted = {s.email for s in named}
    return [s for s in audience(settings, store, now or utcnow()) if s.email in wanted]


def _named(known: list[SubscriberConfig], emails: Sequence[str]) -> list[SubscriberConfig]:
    by_address = {s.email.lower(): s for s in reversed(known)}  # (the first one wins)
    chosen, unknown = [], []
    for email in emails:
        subscriber = by_address.get(email.strip().lower())
        if subscriber is None:
            unknown.append(email)
        elif subscriber not in chosen:
            chosen.append(subscriber)
    if unknown:
        names = ", ".join(s.email for s in known[:20]) or "none configured"
        names += f" and {len(known) - 20} more" if len(known) > 20 else ""
        raise DigestError(f"unknown subscriber {', '.join(unknown)} (subscribers: {names})")
    return chosen


def plan_digests(
    settings: Settings,
    store: Store,
    subscribers: Sequence[SubscriberConfig],
    now: datetime,
    *,
    keep_empty: bool = False,
    speed: Speedups | None = None,
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
    # Only matched entries can be in a digest: what was taken of the others does not matter.
    matched = {m.entry.id for found in matches.values() for m in found}
    taken = store.taken_entries([s.email for s in subscribers], matched, since=min(cutoffs.values()))
    # A "less like this" hides the entry's later edits from that reader (store/votes.py): the
    # planner leaves them out as if taken, though nothing records them so.
    candidates = [e for e in entries if e.id in matched]
    for email, hidden in store.hidden_edits([s.email for s in subscribers], candidates).items():
        taken.setdefault(email, set()).update(hidden)
    with speed.planning() if speed is not None else nullcontext():
        return select_digests(settings, subscribers, matches, taken, cutoffs, now, keep_empty=keep_empty)


def enqueue_digests(settings: Settings, store: Store, digests: Sequence[Digest]) -> None:
    """Commit digests to the outbox, ``ENQUEUE_BATCH`` to a transaction.

    All of them before any is delivered: committed as delivery reached them instead, each
    transaction held the sending up for longer than it took. A render pool has the digests
    already and renders meanwhile.
    """
    encoder = OutboxEncoder()
    for start in range(0, len(digests), ENQUEUE_BATCH):
        store.enqueue([queued_digest(settings, d, encoder) for d in digests[start : start + ENQUEUE_BATCH]])
