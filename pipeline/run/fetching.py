"""Fetching, the first links of the chain: config -> fetch -> parse -> store, a report per feed."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..config import Settings, SubscriberConfig
from ..errors import FetchError, ParseError
from ..fetch import FetchRequest, Network, fetch_feeds, next_attempt_delay
from ..models import FetchResult, ParsedFeed
from ..parse import ParserProcess
from ..speed import Speedups
from ..store import FeedState, Store, utcnow
from .alerts import send_feed_alerts
from .clock import Clock

log = logging.getLogger("digest")


@dataclass(frozen=True, slots=True)
class FeedReport:
    """The outcome of fetching one feed."""

    feed: str
    result: Literal["new", "not-modified", "error", "skipped"]
    new: int = 0
    error: str | None = None  # for "skipped": the error that made the feed rest
    warnings: tuple[str, ...] = ()
    status: int | None = None
    elapsed: float = 0.0  # seconds: download and parse
    next_attempt_at: datetime | None = None  # when a failing feed is tried again
    failures: int = 0  # consecutive failures, this one included
    moved_to: str | None = None  # set when a permanent redirect moved the feed

    def describe(self) -> str:
        """The result in words, as ``fetch`` and ``send`` print it."""
        if self.result == "new":
            text = f"{self.new} new"
        elif self.result == "not-modified":
            text = "not modified"
        elif self.result == "error":
            text = f"error: {self.error}"
            if self.next_attempt_at is not None:
                text += f" (failure {self.failures}; next attempt after {_local(self.next_attempt_at)})"
        else:
            text = (
                f"skipped: resting after {self.failures} failure{'' if self.failures == 1 else 's'} "
                f"until {_local(self.next_attempt_at)}"
                f" (last error: {self.error}); name it with --feed to fetch it now"
            )
        if self.moved_to:
            text += f" (moved permanently to {self.moved_to})"
        return text + "".join(f" (warning: {w})" for w in self.warnings)


def _local(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M %Z") if value else "-"


def fetch_all(
    settings: Settings,
    store: Store,
    *,
    feeds: Iterable[str] | None = None,
    force: bool = False,
    alerts: bool = True,
    clock: Clock = utcnow,
    network: Network | None = None,
    speed: Speedups | None = None,
) -> list[FeedReport]:
    """Fetch the configured feeds (or the named ones), store new entries, report per feed.

    All due feeds are fetched at once (at most ``[fetch] concurrency`` at a time), each within
    ``[fetch] timeout``; what changed is parsed in worker processes, each parse also within the
    timeout. A feed resting after failures (its next attempt is later) is skipped and reported
    as such, unless ``force``. Then old entries are pruned and, when ``alerts`` and ``[digest]
    admin`` are set, the admin is told about feeds failing for longer than ``alert_after``
    (once) and about their recovery (once). ``network`` replaces DNS and TCP (tests).
    ``speed`` may hold a parser started early: it is used first, and stopped with the others
    when the parsing is done (a parser that parsed a large feed holds its memory).
    """
    store.sync_feeds({f.name: f.url for f in settings.feeds})
    names = set(feeds) if feeds is not None else None
    wanted = [f for f in settings.feeds if names is None or f.name in names]
    states = store.feed_states()
    now = clock()
    reports: dict[str, FeedReport] = {}
    requests = []
    for feed in wanted:
        state = states[feed.name]
        if not force and state.next_attempt_at is not None and state.next_attempt_at > now:
            reports[feed.name] = FeedReport(
                feed.name,
                "skipped",
                error=state.last_error,
                next_attempt_at=state.next_attempt_at,
                failures=state.failures,
            )
            continue
        requests.append(
            FetchRequest(feed.name, state.url, state.etag, state.last_modified, configured_url=feed.url)
        )
    timeout = settings.fetch.timeout.total_seconds()
    # The parsers start before the downloads, so that their start overlaps them.
    count = min(len(requests), settings.fetch.concurrency, os.cpu_count() or 1)
    parser = speed.take_parser() if speed is not None else None
    with ExitStack() as stack:
        if parser is not None:
            stack.enter_context(parser)  # stopped with the others, used or not
        parsers = [parser] if parser is not None and count else []
        parsers += [stack.enter_context(ParserProcess()).start() for _ in range(count - len(parsers))]
        fetched = fetch_feeds(
            requests,
            timeout=timeout,
            max_bytes=settings.fetch.max_bytes,
            concurrency=settings.fetch.concurrency,
            network=network,
        )
        changed = {
            request.feed: outcome
            for request, outcome in fetched
            if isinstance(outcome, FetchResult)
            and outcome.content is not None
            and body_hash(outcome.content) != states[request.feed].body_hash
        }
        parsed = _parse_all(changed, parsers, time_limit=timeout)
    for request, outcome in fetched:
        state = states[request.feed]
        reports[request.feed] = _store_feed(store, state, outcome, parsed.get(request.feed), clock)
    hollowed, forgotten, dropped = store.prune(clock(), settings.digest.retain)
    if hollowed or forgotten or dropped:
        log.info("prune entries=%d identities=%d deliveries=%d", hollowed, forgotten, dropped)
    if alerts:
        send_feed_alerts(settings, store, [f.name for f in wanted], clock=clock)
    ordered = [reports[f.name] for f in wanted]
    for report in ordered:
        _log_feed(report)
    return ordered


def body_hash(content: bytes) -> str:
    """What identifies a body: the same bytes as last time need no parsing."""
    return hashlib.sha256(content).hexdigest()


def _parse_all(
    results: dict[str, FetchResult], helpers: list[ParserProcess], *, time_limit: float
) -> dict[str, tuple[ParsedFeed | ParseError, float]]:
    """Parse each changed feed in one of ``helpers``, a few at a time; with the time each took."""
    if not results:
        return {}
    parsers: queue.SimpleQueue[ParserProcess] = queue.SimpleQueue()
    for parser in helpers:
        parsers.put(parser)

    def one(result: FetchResult) -> tuple[ParsedFeed | ParseError, float]:
        started = time.monotonic()
        parser = parsers.get()
        try:
            outcome: ParsedFeed | ParseError = parser.parse(result, time_limit=time_limit)
        except ParseError as exc:
            outcome = exc
        finally:
            parsers.put(parser)
        return outcome, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=max(1, min(len(helpers), len(results)))) as pool:
        return dict(zip(results, pool.map(one, results.values()), strict=True))


def _store_feed(
    store: Store,
    state: FeedState,
    outcome: FetchResult | FetchError,
    parsed: tuple[ParsedFeed | ParseError, float] | None,
    clock: Clock,
) -> FeedReport:
    """Record one feed's outcome: its new entries, or its failure and when to try again."""
    now = clock()
    name = state.name
    elapsed = outcome.elapsed
    failure: FetchError | ParseError | None = outcome if isinstance(outcome, FetchError) else None
    if parsed is not None:
        elapsed += parsed[1]
        if isinstance(parsed[0], ParseError):
            failure = parsed[0]
    if failure is not None:
        failures = state.failures + 1
        retry_at = now + next_attempt_delay(failures, failure if isinstance(failure, FetchError) else None)
        store.record_fetch(name, now=now, status="error", error=str(failure), next_attempt_at=retry_at)
        return FeedReport(
            name,
            "error",
            error=str(failure),
            status=outcome.status,
            elapsed=elapsed,
            next_attempt_at=retry_at,
            failures=failures,
        )
    assert isinstance(outcome, FetchResult)
    moved = outcome.permanent_url
    if parsed is None:  # 304, an unchanged local file, or the same bytes as last time
        store.touch_feed(name, now)
        store.record_fetch(
            name,
            now=now,
            status="not modified",
            etag=outcome.etag,
            last_modified=outcome.last_modified,
            url=moved,
        )
        return FeedReport(name, "not-modified", status=outcome.status, elapsed=elapsed, moved_to=moved)
    feed = parsed[0]
    assert isinstance(feed, ParsedFeed) and outcome.content is not None
    new = store.add_items(feed.items, now)
    store.record_fetch(
        name,
        now=now,
        status=f"{new} new",
        new=new,
        etag=outcome.etag,
        last_modified=outcome.last_modified,
        url=moved,
        body_hash=body_hash(outcome.content),
    )
    return FeedReport(
        name,
        "new",
        new=new,
        warnings=feed.warnings,
        status=outcome.status,
        elapsed=elapsed,
        moved_to=moved,
    )


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
    stale = stale_feeds(settings, store, feeds_of(settings, subscribers), clock())
    return fetch_all(settings, store, feeds=stale, clock=clock) if stale else []


def stale_feeds(settings: Settings, store: Store, names: Iterable[str], now: datetime) -> list[str]:
    """Those of the named feeds whose last fetch is older than their polling interval (feeds
    backing off after failures, next attempt in the future, are not)."""
    store.sync_feeds({f.name: f.url for f in settings.feeds})
    states = store.feed_states()
    intervals = {f.name: settings.feed_interval(f) for f in settings.feeds}
    stale = []
    for name in names:
        state = states[name]
        if state.next_attempt_at is not None and state.next_attempt_at > now:
            continue
        if state.last_fetch_at is None or now - state.last_fetch_at >= intervals[name]:
            stale.append(name)
    return stale


def _log_feed(report: FeedReport) -> None:
    if report.result == "error":
        log.warning(
            "feed=%s error=%r failures=%d next_attempt=%s",
            report.feed,
            report.error,
            report.failures,
            report.next_attempt_at.isoformat() if report.next_attempt_at else "-",
        )
    elif report.result == "skipped":
        log.info("feed=%s skipped=resting until=%s", report.feed, report.next_attempt_at)
    else:
        log.info(
            "feed=%s new=%d status=%s elapsed=%.2f",
            report.feed,
            report.new,
            report.status or report.result,
            report.elapsed,
        )
    if report.moved_to:
        log.info("feed=%s moved_to=%s", report.feed, report.moved_to)
    for warning in report.warnings:
        log.warning("feed=%s warning=%r", report.feed, warning)
