"""Looking without sending: matches and explanations, a preview, the status, the config check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings, key_line
from ..errors import DigestError, MatchError, RenderError
from ..match import Explanation, compile_topics, explain, index_entries, index_entry, match_topics
from ..models import Digest, Entry, Match, RenderedDigest
from ..parse import arxiv_id, canonical_link
from ..store import FAILED, PENDING, SENDING, FeedState, OutboxRow, Store, utcnow
from .clock import Clock
from .fetching import fetch_all
from .sending import plan_digests, select_subscribers

if TYPE_CHECKING:
    from ..render import Renderer


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
    last_digest_at: datetime | None  # the last digest delivered (the server accepted it)
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
    delivered = store.last_delivered()
    subscribers = []
    for sub in settings.subscribers:
        digest = planned.get(sub.email)
        subscribers.append(
            SubscriberStatus(
                email=sub.email,
                topics=tuple(sub.topics),
                schedule=str(sub.schedule),
                last_digest_at=delivered.get(sub.email),
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


def _renderer(settings: Settings) -> Renderer:
    # Imported only here: a large send renders in its render pool, and render's libraries
    # (premailer, lxml, Jinja2) are slow to import.
    from ..render import Renderer

    return Renderer(settings)
