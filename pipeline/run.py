"""The one place that chains the stages; the CLI and the scheduler both call these functions.

``fetch_all``: config -> fetch -> parse -> store.
``send``: fetch_all, then store -> match -> plan -> outbox (a transaction per 500 digests), then
``deliver_due``: claim -> render -> compose -> deliver, recording each outcome. A large send
renders and composes in helper processes (``workers``), from the moment its digests are planned.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import itertools
import json
import logging
import operator
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .compose import message_id
from .config import Settings, SubscriberConfig, key_line
from .deliver import Attempted, Dispatcher, Transport, transport_factory
from .errors import DeliveryError, DigestError, FetchError, MatchError, ParseError, RenderError, StoreError
from .fetch import FetchRequest, Network, fetch_feeds, next_attempt_delay
from .match import Explanation, compile_topics, explain, index_entries, index_entry, match_topics
from .models import Digest, Entry, FetchResult, Match, ParsedFeed, RenderedDigest, Section
from .parse import ParserProcess, arxiv_id, canonical_link
from .store import (
    ALERT_RECOVERED,
    ALERT_SENT,
    FAILED,
    PENDING,
    SENDING,
    FeedState,
    NewDelivery,
    OutboxRow,
    SentMarker,
    Store,
    owner_id,
    utcnow,
)
from .workers import Rendering, worker_count

if TYPE_CHECKING:
    from .render import Renderer

log = logging.getLogger("digest")

LEASE = timedelta(minutes=10)
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
CLAIM_BATCH = 50
SENT_COMMITS_APART = 0.002  # seconds: rows accepted within this share one commit (one fsync)
ENQUEUE_BATCH = 500
INTERRUPTED = "interrupted before sending"

Clock = Callable[[], datetime]


# --- fetch ------------------------------------------------------------------------------------


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
                f"skipped: resting after {self.failures} failure(s) until {_local(self.next_attempt_at)}"
                f" (last error: {self.error}); name it with --feed to fetch it now"
            )
        if self.moved_to:
            text += f" (moved permanently to {self.moved_to})"
        return text + "".join(f" (warning: {w})" for w in self.warnings)


def _local(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def fetch_all(
    settings: Settings,
    store: Store,
    *,
    feeds: Iterable[str] | None = None,
    force: bool = False,
    alerts: bool = True,
    clock: Clock = utcnow,
    network: Network | None = None,
    parser: ParserProcess | None = None,
) -> list[FeedReport]:
    """Fetch the configured feeds (or the named ones), store new entries, report per feed.

    All due feeds are fetched at once (at most ``[fetch] concurrency`` at a time), each within
    ``[fetch] timeout``; what changed is parsed in worker processes, each parse also within the
    timeout. A feed resting after failures (its next attempt is later) is skipped and reported
    as such, unless ``force``. Then old entries are pruned and, when ``alerts`` and ``[digest]
    admin`` are set, the admin is told about feeds failing for longer than ``alert_after``
    (once) and about their recovery (once). ``network`` replaces DNS and TCP (tests).
    ``parser``: a parser the caller started early; used first, and stopped with the others when
    the parsing is done (a helper that parsed a large feed holds ~25 MB).
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
    # The parsers start before the downloads, so that their start (~0.3 s) overlaps them.
    count = min(len(requests), settings.fetch.concurrency, os.cpu_count() or 1)
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


def send_feed_alerts(settings: Settings, store: Store, feeds: Iterable[str], *, clock: Clock = utcnow) -> int:
    """Tell ``[digest] admin`` once about each of these feeds failing for longer than
    ``[fetch] alert_after``, and once when it works again; return how many mails went out.

    The alert state is claimed atomically before sending (so two processes never both send)
    and released when sending fails (so the next run tries again).
    """
    admin = settings.digest.admin
    if not admin:
        return 0
    now = clock()
    states = store.feed_states()
    due: list[tuple[FeedState, bool]] = []
    for name in feeds:
        state = states.get(name)
        if state is None:
            continue
        if state.alert == ALERT_RECOVERED:
            if state.failures:  # failing again before the recovery was told: nothing new to say
                store.set_alert(name, ALERT_RECOVERED, ALERT_SENT)
            elif store.set_alert(name, ALERT_RECOVERED, None):
                due.append((state, True))
        elif (
            state.alert is None
            and state.failures
            and state.failing_since is not None
            and now - state.failing_since >= settings.fetch.alert_after
            and store.set_alert(name, None, ALERT_SENT)
        ):
            due.append((state, False))
    if not due:
        return 0
    from .alert import feed_alert  # (here: most runs send no alert, and it imports the email package)

    sent = 0
    make_transport = transport_factory(settings)
    transport: Transport | None = None
    try:
        for state, recovered in due:
            message = feed_alert(
                title=settings.digest.title,
                sender=settings.sender,
                admin=admin,
                feed=state.name,
                url=state.url,
                recovered=recovered,
                now=now,
                failing_since=state.failing_since,
                failures=state.failures,
                last_error=state.last_error,
                next_attempt_at=state.next_attempt_at,
            )
            try:
                transport = transport or make_transport()
                transport.send(message)
            except DeliveryError as exc:
                if recovered:
                    store.set_alert(state.name, None, ALERT_RECOVERED)
                else:
                    store.set_alert(state.name, ALERT_SENT, None)
                log.warning("alert feed=%s to=%s error=%r (will retry)", state.name, admin, str(exc))
                continue
            sent += 1
            kind = "recovered" if recovered else "failing"
            log.info("alert feed=%s to=%s kind=%s", state.name, admin, kind)
    finally:
        if transport is not None:
            transport.close()
    return sent


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
    # Only matched entries can be in a digest: what was taken of the others does not matter.
    matched = {m.entry.id for found in matches.values() for m in found}
    taken = store.taken_entries([s.email for s in subscribers], matched, since=min(cutoffs.values()))
    return select_digests(settings, subscribers, matches, taken, cutoffs, now, keep_empty=keep_empty)


def select_digests(
    settings: Settings,
    subscribers: Sequence[SubscriberConfig],
    matches: Mapping[str, Sequence[Match]],
    taken: Mapping[str, set[int]],
    cutoffs: Mapping[str, datetime],
    now: datetime,
    *,
    keep_empty: bool = False,
) -> list[Digest]:
    """Each subscriber's digest from every topic's matches (best first): the pure half of planning.

    ``matches`` holds every topic of these subscribers; ``taken`` the entries each subscriber
    already has; ``cutoffs`` the oldest publication date each may still get. Each topic's
    matches are prepared once and shared by its subscribers.
    """
    with _collector_paused():
        return _select(settings, subscribers, matches, taken, cutoffs, now, keep_empty)


@contextmanager
def _collector_settled() -> Iterator[None]:
    """Keep the garbage collector's full passes off what exists now, until the block ends.

    A send's settings, entries and digests live until it ends; without this every full
    collection walks them again (0.4 s of a 2,000-digest send).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while planning allocates its records.

    Planning for 10,000 subscribers makes ~10^5 records, none in a reference cycle, that all
    live on; meanwhile the collector walks the whole heap once or twice for nothing (measured:
    40% of select_digests). Reference counting still frees what is dropped.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _select(
    settings: Settings,
    subscribers: Sequence[SubscriberConfig],
    matches: Mapping[str, Sequence[Match]],
    taken: Mapping[str, set[int]],
    cutoffs: Mapping[str, datetime],
    now: datetime,
    keep_empty: bool,
) -> list[Digest]:
    views = _Views(settings, matches)
    titles: dict[tuple[str, ...], tuple[str, ...]] = {}
    digests = []
    for sub in subscribers:
        topics = tuple(sub.topics)
        sections, shown = views.for_subscriber(topics, cutoffs[sub.email], taken.get(sub.email, set()))
        if not sections and not (keep_empty or settings.digest.send_empty):
            continue
        if topics not in titles:
            titles[topics] = tuple(settings.topic_title(t) for t in topics)
        digests.append(
            Digest(
                subscriber=sub.email,
                name=sub.name,
                sections=sections,
                topics=titles[topics],
                created_at=now,
                message_id=message_id(sub.email, shown, now, settings.sender),
            )
        )
    return digests


@dataclass(frozen=True, slots=True)
class _Ranked:
    """One topic's matches in rank order, with their entry ids and ranks (ints: lower is better)."""

    matches: list[Match]
    ids: list[int]
    ranks: list[int]
    idset: frozenset[int]

    def since(self, cutoff: datetime) -> _Ranked:
        mask = [m.entry.published >= cutoff for m in self.matches]
        return self if all(mask) else self._keep(mask)

    def without(self, excluded: Iterable[int]) -> _Ranked:
        gone = self.idset.intersection(excluded)
        if not gone:
            return self
        if len(gone) * 8 > len(self.ids):
            return self._keep(list(map(operator.not_, map(gone.__contains__, self.ids))))
        # A few entries go (the usual overlap between two topics): copy the runs between them.
        # Slices and list.index run in C; a loop over every entry would not, and this is done
        # thousands of times per run.
        holes = sorted(map(self.ids.index, gone))
        runs = list(zip([0, *(h + 1 for h in holes)], [*holes, len(self.ids)], strict=True))
        matches: list[Match] = []
        ids: list[int] = []
        ranks: list[int] = []
        for start, end in runs:
            matches += self.matches[start:end]
            ids += self.ids[start:end]
            ranks += self.ranks[start:end]
        return _Ranked(matches, ids, ranks, self.idset - gone)

    def _keep(self, mask: list[bool]) -> _Ranked:
        ids = list(itertools.compress(self.ids, mask))
        matches = list(itertools.compress(self.matches, mask))
        return _Ranked(matches, ids, list(itertools.compress(self.ranks, mask)), frozenset(ids))


class _Views:
    """Each topic's matches as its subscribers see them, each variant worked out once.

    What a subscriber gets under a topic depends only on the topic, the topics they list before
    it (an entry appears under the first) and their cutoff, which thousands of subscribers share;
    only the entries they already took are their own.
    """

    def __init__(self, settings: Settings, matches: Mapping[str, Sequence[Match]]) -> None:
        self.limit = settings.digest.max_entries
        self.titles = {topic: settings.topic_title(topic) for topic in matches}
        # One ordering of every match of every topic, so that ranks are plain ints.
        everything = sorted(((m, t) for t, found in matches.items() for m in found), key=_rank_pair)
        lists: dict[str, tuple[list[Match], list[int], list[int]]] = {t: ([], [], []) for t in matches}
        for n, (match, topic) in enumerate(everything):
            found, ids, ranks = lists[topic]
            found.append(match)
            ids.append(match.entry.id)
            ranks.append(n)
        self.ranked = {
            t: _Ranked(found, ids, ranks, frozenset(ids)) for t, (found, ids, ranks) in lists.items()
        }
        self.views: dict[tuple[str, frozenset[str], datetime], _Ranked] = {}
        self.chosen: dict[tuple[tuple[str, ...], datetime], list[tuple[str, _Ranked]]] = {}
        self.sections: dict[tuple[tuple[str, ...], datetime], tuple[tuple[Section, ...], list[int]]] = {}

    def view(self, topic: str, earlier: frozenset[str], cutoff: datetime) -> _Ranked:
        """The topic's matches published since ``cutoff`` that none of the ``earlier`` topics holds."""
        key = (topic, earlier, cutoff)
        found = self.views.get(key)
        if found is None:
            if earlier:
                shown = frozenset().union(*(self.view(t, frozenset(), cutoff).idset for t in earlier))
                found = self.view(topic, frozenset(), cutoff).without(shown)
            else:
                found = self.ranked[topic].since(cutoff)
            self.views[key] = found
        return found

    def for_subscriber(
        self, topics: tuple[str, ...], cutoff: datetime, taken: set[int]
    ) -> tuple[tuple[Section, ...], list[int]]:
        """A digest's sections (each entry once, under the first of ``topics`` that has it) and
        the ids of the entries shown.

        Subscribers with the same topics and cutoff who took none of these entries share them:
        fewer objects made means less work for Python's garbage collector too.
        """
        key = (topics, cutoff)
        chosen = self.chosen.get(key)
        if chosen is None:
            chosen = self.chosen[key] = [
                (topic, self.view(topic, frozenset(topics[:i]), cutoff)) for i, topic in enumerate(topics)
            ]
        if taken and not all(view.idset.isdisjoint(taken) for _, view in chosen):
            return self._cut([(topic, view.without(taken)) for topic, view in chosen])
        planned = self.sections.get(key)
        if planned is None:
            planned = self.sections[key] = self._cut(chosen)
        return planned

    def _cut(self, chosen: Sequence[tuple[str, _Ranked]]) -> tuple[tuple[Section, ...], list[int]]:
        # max_entries keeps the best across the whole email; the rest is counted as "and N more".
        # Each list is in rank order, so what is kept is a prefix of each: find the worst rank kept.
        limit = self.limit
        worst = None
        if sum(len(view.ids) for _, view in chosen) > limit:
            best: list[int] = []
            for _, view in chosen:
                best += view.ranks[:limit]
            best.sort()
            worst = best[limit - 1]
        sections = []
        shown: list[int] = []
        for topic, view in chosen:
            if not view.ids:
                continue
            kept = len(view.ids) if worst is None else bisect.bisect_right(view.ranks, worst)
            shown += view.ids[:kept]
            sections.append(
                Section(
                    topic,
                    self.titles[topic],
                    tuple(view.matches[:kept]),
                    more=len(view.ids) - kept,
                    cut=tuple(view.ids[kept:]),
                )
            )
        return tuple(sections), shown


def _rank_pair(pair: tuple[Match, str]) -> tuple[int, float, int]:
    return _rank(pair[0])


def _rank(match: Match) -> tuple[int, float, int]:
    return (-match.score, -match.entry.published.timestamp(), -match.entry.id)


# --- outbox: digests as stored rows and back ----------------------------------------------------


def _delivery(settings: Settings, digest: Digest, specs: _Specs | None = None) -> NewDelivery:
    give_up = settings.smtp.give_up_after if settings.smtp else timedelta(days=2)
    spec, shown, hidden = (specs or _Specs()).of(digest)
    return NewDelivery(
        subscriber=digest.subscriber,
        message_id=digest.message_id,
        created_at=digest.created_at,
        deliver_until=digest.created_at + give_up,
        shown=shown,
        hidden=hidden,
        spec=spec,
    )


class _Specs:
    """The outbox form of digests: a spec (JSON, read back by :func:`digest_from_row`) and
    the entry ids shown and only counted. Planning shares matches between digests (a
    2,000-digest send holds 230 distinct ones in 40,000 places), so each is encoded once."""

    BOUND = 4096  # (matches kept; most sharing is between digests planned together)

    def __init__(self) -> None:
        # id(match) -> (the match, kept so that its id is not reused; its JSON)
        self.matches: dict[int, tuple[Match, str]] = {}

    def of(self, digest: Digest) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
        sections = []
        for s in digest.sections:
            head = json.dumps({"topic": s.topic, "title": s.title, "more": s.more})
            sections.append(f'{head[:-1]}, "entries": [{", ".join(map(self._match, s.matches))}]}}')
        head = json.dumps({"name": digest.name, "topics": list(digest.topics)})
        spec = f'{head[:-1]}, "sections": [{", ".join(sections)}]}}'
        shown = tuple(m.entry.id for s in digest.sections for m in s.matches)
        return spec, shown, tuple(itertools.chain.from_iterable(s.cut for s in digest.sections))

    def _match(self, match: Match) -> str:
        known = self.matches.get(id(match))
        if known is None:
            if len(self.matches) >= self.BOUND:
                self.matches.clear()
            text = json.dumps([match.entry.id, match.score, list(match.hits)])
            known = self.matches[id(match)] = (match, text)
        return known[1]


def digest_from_row(row: OutboxRow, spec: dict[str, Any], entries: dict[int, Entry]) -> Digest:
    """Rebuild the digest an outbox row describes (entries pruned since are left out)."""
    sections = []
    for s in spec["sections"]:
        matches = tuple(
            Match(entries[eid], s["topic"], score, tuple(hits))
            for eid, score, hits in s["entries"]
            if eid in entries
        )
        sections.append(Section(s["topic"], s["title"], matches, more=s["more"]))
    return Digest(
        subscriber=row.subscriber,
        name=spec.get("name"),
        sections=tuple(sections),
        topics=tuple(spec.get("topics", [])),
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
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time the block takes to ``stage``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

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
    parser: ParserProcess | None = None,
) -> SendReport:
    """Fetch, then build and deliver now the digest of each named (or every) subscriber.

    Every due outbox row is delivered, including digests left pending by earlier runs; the new
    digests are all committed to the outbox before the first is sent. ``parser``: a feed
    parser the caller started early (see ``fetch_all``).
    """
    chosen = select_subscribers(settings, subscribers)
    report = SendReport(dry_run=dry_run)
    # Render helpers start first, so that their imports overlap the fetch.
    with closing(Rendering(settings, 0 if dry_run else worker_count(settings, len(chosen)))) as rendering:
        if fetch:
            with report.timed("fetch"):
                report.feeds = fetch_all(settings, store, clock=clock, alerts=not dry_run, parser=parser)
        now = clock()
        with report.timed("plan"):
            digests = plan_digests(settings, store, chosen, now)
        with_digest = {d.subscriber for d in digests}
        report.nothing_new = [s.email for s in chosen if s.email not in with_digest]
        for email in report.nothing_new:
            log.info("digest to=%s skipped=nothing-new", email)
        if dry_run:
            renderer = _renderer(settings)
            renderer.prepare(digests)
            for digest in digests:
                rendered = renderer.render(digest)
                report.outcomes.append(
                    Outcome(digest.subscriber, digest.entry_count, "planned", subject=rendered.subject)
                )
            return report

        rendering.plan(digests)  # the helpers render from now on, while the digests are committed
        with _collector_settled():
            with report.timed("enqueue"):
                enqueue_digests(settings, store, digests)
            with report.timed("deliver"):
                deliver_due(
                    settings,
                    store,
                    report,
                    clock=clock,
                    progress=progress,
                    stop=stop,
                    planned={d.message_id: d for d in digests},
                    rendering=rendering,
                )
            store.mark_checked([s.email for s in chosen], now)
    log.info("timings %s", " ".join(f"{stage}={seconds:.2f}s" for stage, seconds in report.timings.items()))
    return report


def deliver_due(
    settings: Settings,
    store: Store,
    report: SendReport | None = None,
    *,
    clock: Clock = utcnow,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    planned: dict[str, Digest] | None = None,
    rendering: Rendering | None = None,
) -> SendReport:
    """Deliver every due outbox row: claim, render, compose, send, record each outcome.

    Rows are claimed in batches (pending -> sending, with a lease), so a concurrent ``send``
    or ``digest run`` never takes the same digest. Sent rows are recorded as the server
    accepts them; a transient failure puts the row back as pending with exponential backoff
    until ``give_up_after``; a permanent one marks it failed. When ``stop`` is set, the
    messages in flight finish and every other claimed digest goes back to the outbox, due now.
    ``planned`` are digests this process just planned and committed, by Message-ID: they are
    not rebuilt from their stored form. ``rendering`` renders them (by default: here).
    """
    report = report if report is not None else SendReport()
    if progress:
        progress.start(store.count_due(clock()))
    delivery = _Delivery(
        settings,
        store,
        report,
        clock,
        progress,
        stop or threading.Event(),
        planned or {},
        rendering or Rendering(settings),
    )
    try:
        delivery.run()
    finally:
        delivery.close()
    return report


def enqueue_digests(settings: Settings, store: Store, digests: Sequence[Digest]) -> None:
    """Commit digests to the outbox, ``ENQUEUE_BATCH`` to a transaction (~40 ms each).

    All of them before any is delivered: committed as delivery reached them instead, each
    transaction held the sending up for longer than it took (A/B: 2,000 digests 2.22 -> 2.09 s,
    10,000 7.10 -> 6.86 s). The render helpers have the digests already and render meanwhile.
    """
    specs = _Specs()
    for start in range(0, len(digests), ENQUEUE_BATCH):
        store.enqueue([_delivery(settings, d, specs) for d in digests[start : start + ENQUEUE_BATCH]])


class _Delivery:
    """One run of the outbox: keeps at most a window of claimed rows in flight."""

    WINDOW = CLAIM_BATCH  # rows in flight beyond the claim at hand (each a ~70 KB message)

    def __init__(
        self,
        settings: Settings,
        store: Store,
        report: SendReport,
        clock: Clock,
        progress: Progress | None,
        stop: threading.Event,
        planned: dict[str, Digest],
        rendering: Rendering,
    ) -> None:
        self.settings, self.store, self.report, self.clock = settings, store, report, clock
        self.progress, self.stop, self.planned, self.rendering = progress, stop, planned, rendering
        self.entries: dict[int, Entry] = {}  # loaded for digests rebuilt from the outbox
        self.owner = owner_id()
        self.held: dict[int, tuple[OutboxRow, int]] = {}  # row id -> (row, entries in it)
        self.dispatcher: Dispatcher | None = None
        self.recorder: SentRecorder | None = None
        self.lease_renewed = time.monotonic()

    def run(self) -> None:
        exhausted = abandoned = False
        while True:
            # (abandoned, not exhausted: a stop after the last claim must still hand back the queue)
            if self.stop.is_set() and not abandoned:
                exhausted = abandoned = True
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
        with self.report.timed("  claim"):
            rows = self.store.claim(self.clock(), lease=LEASE, owner=self.owner, limit=CLAIM_BATCH)
        if not rows:
            return False
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
        with self.report.timed("  claim"):
            digests = self._digests(rows)
        step = self.rendering.step or len(rows)  # (each message goes as soon as it is rendered)
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            with self.report.timed("  render"):
                messages = self.rendering.messages(digests[part])
            for row, digest, message in zip(rows[part], digests[part], messages, strict=True):
                if isinstance(message, RenderError):
                    self.store.mark_failed(row.id, str(message))
                    log.error("digest to=%s failed=%r", row.subscriber, str(message))
                    self._report(Outcome(row.subscriber, digest.entry_count, "failed", str(message)))
                    continue
                self.held[row.id] = (row, digest.entry_count)
                self.dispatcher.submit(row.id, message)
        # Record whatever already finished, so memory and leases stay bounded.
        self._record(self.dispatcher.results(timeout=0))
        return True

    def _digests(self, rows: list[OutboxRow]) -> list[Digest]:
        """The digests these rows hold: as planned by this run, else rebuilt from the outbox."""
        planned = self.planned
        stored = [row for row in rows if row.message_id not in planned]
        specs = self.store.specs(row.id for row in stored) if stored else {}
        wanted = {eid for spec in specs.values() for s in spec["sections"] for eid, _, _ in s["entries"]}
        self.entries.update(self.store.entries_by_id(wanted - self.entries.keys()))
        # (popped: memory; a digest claimed again after a failure is rebuilt, the same)
        return [
            planned.pop(row.message_id)
            if row.message_id in planned
            else digest_from_row(row, specs[row.id], self.entries)
            for row in rows
        ]

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
    (the only window in which a crash causes a re-send) is at most ``SENT_COMMITS_APART`` and
    one commit, whatever the main thread is busy with; rows accepted meanwhile share that
    commit. A commit per message or two (each an fsync) cost ~0.1 s of a 2,000-digest send:
    commits at least 2 ms apart took it to 2.06 s from 2.15 (A/B medians of 8).
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self.mark_sent, self.clock = SentMarker(store), clock
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="sent-recorder", daemon=True)
        self.thread.start()

    def add(self, row_id: int) -> None:
        self.queue.put(row_id)

    def _run(self) -> None:
        closing, last = False, 0.0
        while not closing:
            batch = [self.queue.get()]
            wait = last + SENT_COMMITS_APART - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            last = time.monotonic()
            while not self.queue.empty():
                batch.append(self.queue.get())
            closing = None in batch
            ids = [i for i in batch if i is not None]
            if ids:
                try:
                    self.mark_sent(ids, self.clock())
                except StoreError as exc:
                    # Not lost: the rows stay claimed and go out again (same Message-ID) later.
                    log.error("outbox error=%r rows=%s", str(exc), ids)
        self.mark_sent.close()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _renderer(settings: Settings) -> Renderer:
    # Imported only here: a large send renders in its helpers, and render's libraries
    # (premailer, lxml, Jinja2) take 0.2 s and 14 MB to import.
    from .render import Renderer

    return Renderer(settings)


def _next_attempt(row: OutboxRow, now: datetime) -> datetime:
    """Exponential backoff: 1 min, doubling, at most 1 h, never past ``deliver_until``."""
    delay: timedelta = min(FIRST_RETRY * 2 ** max(0, row.attempts - 1), MAX_RETRY)
    return min(now + delay, row.deliver_until)


def select_topics(settings: Settings, names: Sequence[str] = (), subscriber: str | None = None) -> list[str]:
    """The named topics (all when none are named), or those of a subscriber, in their order.

    With both, the subscriber's topics among the named ones. An unknown name is an error.
    """
    unknown = [name for name in names if name not in settings.topics]
    if unknown:
        known = ", ".join(settings.topics) or "none defined"
        raise DigestError(f"unknown topic {', '.join(unknown)} (topics: {known})")
    chosen = list(settings.topics) if not names else list(dict.fromkeys(names))
    if subscriber is not None:
        (sub,) = select_subscribers(settings, [subscriber])
        chosen = [t for t in sub.topics if t in chosen]
        if not chosen:
            raise DigestError(f"{sub.email} follows none of the topics {', '.join(names)}")
    return chosen


@dataclass(frozen=True, slots=True)
class TopicMatches:
    """One topic's matching stored entries, best first."""

    topic: str
    title: str
    matches: tuple[Match, ...]


def find_matches(
    settings: Settings,
    store: Store,
    *,
    topics: Sequence[str] = (),
    subscriber: str | None = None,
    since: timedelta | None = None,
    clock: Clock = utcnow,
) -> list[TopicMatches]:
    """Stored entries published within ``since`` (default: lookback) that match, per topic.

    With a subscriber, their topics come in their order and an entry is listed once, under the
    first that matches, as in their digest; entries already sent to them are listed too.
    """
    names = select_topics(settings, topics, subscriber)
    compiled = compile_topics({name: settings.topics[name] for name in names})
    entries = store.entries_since(clock() - (since or settings.digest.lookback))
    found = match_topics(compiled, index_entries(entries))
    listed: set[int] = set()
    out = []
    for name in names:
        matches = found[name]
        if subscriber is not None:
            matches = [m for m in matches if m.entry.id not in listed]
            listed.update(m.entry.id for m in matches)
        out.append(TopicMatches(name, settings.topic_title(name), tuple(matches)))
    return out


def explain_entry(
    settings: Settings,
    store: Store,
    ref: str,
    *,
    topics: Sequence[str] = (),
    subscriber: str | None = None,
) -> tuple[Entry, list[Explanation]]:
    """The stored entry with this link or arXiv id, and why each topic did or did not match it."""
    names = select_topics(settings, topics, subscriber)
    entry = store.find_entry(link=canonical_link(ref), arxiv_id=arxiv_id(ref))
    if entry is None:
        raise DigestError(
            f"no stored entry has the link or arXiv id {ref!r} (entries are stored by digest fetch)"
        )
    compiled = compile_topics({name: settings.topics[name] for name in names})
    document = index_entry(entry)
    return entry, [explain(compiled[name], document) for name in names]


# --- preview, status, check ----------------------------------------------------------------------


def preview(
    settings: Settings, store: Store, email: str, *, fetch: bool = True, clock: Clock = utcnow
) -> tuple[Digest, RenderedDigest]:
    """Render a subscriber's next digest without sending or recording anything."""
    (subscriber,) = select_subscribers(settings, [email])
    if fetch:
        fetch_all(settings, store, clock=clock, alerts=False)
    (digest,) = plan_digests(settings, store, [subscriber], clock(), keep_empty=True)
    return digest, _renderer(settings).render(digest)


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
        try:
            text = settings.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        for problem in exc.problems:
            line = key_line(text, problem.key) if text and problem.key else None
            problems.append(f"{settings.path}:{line}: {problem}" if line else f"{settings.path}: {problem}")
    try:
        _renderer(settings)
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
