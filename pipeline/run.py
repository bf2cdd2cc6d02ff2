"""The one place that chains the stages; the CLI and the scheduler both call these functions.

``fetch_all``: config -> fetch -> parse -> store.
``send``: fetch_all, then store -> match -> outbox (one transaction), then ``deliver_due``:
outbox -> render -> compose -> deliver, recording each outcome.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from .compose import compose_message, message_id, sender_address
from .config import Settings, SubscriberConfig, key_line
from .deliver import Transport, open_transport
from .errors import DeliveryError, DigestError, FetchError, MatchError, ParseError, RenderError
from .fetch import FetchRequest, fetch_feeds
from .match import Explanation, compile_topics, explain, index_entries, index_entry, match_topics
from .models import Digest, Entry, Match, RenderedDigest, Section
from .parse import arxiv_id, canonical_link, parse_feed
from .render import Renderer, unsubscribe_url
from .store import FAILED, PENDING, SENDING, FeedState, NewDelivery, OutboxRow, Store, owner_id, utcnow

log = logging.getLogger("digest")

LEASE = timedelta(minutes=10)
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
CLAIM_BATCH = 100

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
    # Only matched entries can be in a digest: what was taken of the others does not matter.
    matched = {m.entry.id for found in matches.values() for m in found}
    taken = store.taken_entries([s.email for s in subscribers], matched)
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
    progress: Callable[[Outcome], None] | None = None,
) -> SendReport:
    """Fetch, then build and deliver now the digest of each named (or every) subscriber."""
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
    deliver_due(
        settings,
        store,
        report,
        subscribers=[s.email for s in chosen] if subscribers else None,
        clock=clock,
        progress=progress,
    )
    return report


def deliver_due(
    settings: Settings,
    store: Store,
    report: SendReport | None = None,
    *,
    subscribers: Sequence[str] | None = None,
    clock: Clock = utcnow,
    progress: Callable[[Outcome], None] | None = None,
) -> SendReport:
    """Deliver every due outbox row (of these subscribers, or all): render, compose, send, record."""
    report = report if report is not None else SendReport()
    owner = owner_id()
    renderer: Renderer | None = None
    transport = None
    try:
        while True:
            rows = store.claim(clock(), lease=LEASE, owner=owner, subscribers=subscribers, limit=CLAIM_BATCH)
            if not rows:
                break
            renderer = renderer or Renderer(settings)
            transport = transport or open_transport(settings)
            entries = store.entries_by_id(
                eid for row in rows for s in row.spec["sections"] for eid, _, _ in s["entries"]
            )
            for row in rows:
                if report.unreachable:
                    store.mark_retry(row.id, report.unreachable, _next_attempt(row, clock()))
                    outcome = Outcome(row.subscriber, 0, "pending", report.unreachable)
                else:
                    outcome = _deliver_one(settings, store, renderer, transport, row, entries, clock, report)
                report.outcomes.append(outcome)
                if progress:
                    progress(outcome)
    finally:
        if transport is not None:
            transport.close()
    return report


def _deliver_one(
    settings: Settings,
    store: Store,
    renderer: Renderer,
    transport: Transport,
    row: OutboxRow,
    entries: dict[int, Entry],
    clock: Clock,
    report: SendReport,
) -> Outcome:
    digest = digest_from_row(row, entries)
    try:
        rendered = renderer.render(digest)
        message = compose_message(
            digest,
            rendered,
            sender=settings.sender,
            list_id=list_id(settings),
            unsubscribe=_unsubscribe_links(settings, digest.subscriber),
            one_click=bool(settings.digest.base_url),
        )
        transport.send(message)
    except RenderError as exc:
        store.mark_failed(row.id, str(exc))
        log.error("digest to=%s failed=%r", row.subscriber, str(exc))
        return Outcome(row.subscriber, digest.entry_count, "failed", str(exc))
    except DeliveryError as exc:
        return _record_failure(store, row, exc, clock, report, digest.entry_count)
    store.mark_sent([row.id], clock())
    log.info("digest to=%s entries=%d sent", row.subscriber, digest.entry_count)
    return Outcome(row.subscriber, digest.entry_count, "sent", subject=rendered.subject)


def _record_failure(
    store: Store, row: OutboxRow, exc: DeliveryError, clock: Clock, report: SendReport, entries: int
) -> Outcome:
    now = clock()
    if exc.transient and now < row.deliver_until:
        if exc.code is None and "cannot connect" in str(exc):
            report.unreachable = str(exc)
        store.mark_retry(row.id, str(exc), _next_attempt(row, now))
        log.warning("digest to=%s pending=%r", row.subscriber, str(exc))
        return Outcome(row.subscriber, entries, "pending", str(exc))
    reason = str(exc) if not exc.transient else f"gave up after {row.attempts} attempts: {exc}"
    store.mark_failed(row.id, reason)
    log.error("digest to=%s failed=%r", row.subscriber, reason)
    return Outcome(row.subscriber, entries, "failed", reason)


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


# --- match: tune topics without sending ---------------------------------------------------------


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
        try:
            text = settings.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        for problem in exc.problems:
            line = key_line(text, problem.key) if text and problem.key else None
            problems.append(f"{settings.path}:{line}: {problem}" if line else f"{settings.path}: {problem}")
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
