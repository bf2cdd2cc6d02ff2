"""Looking without sending: matches and explanations, a preview, the status, the config check."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ..config import ConfigParts, Settings, load_settings
from ..errors import ConfigError, DigestError, MatchError, RenderError, WebError
from ..match import Explanation, compile_topics, explain, index_entries, index_entry, match_topics
from ..models import Digest, Entry, Match, RenderedDigest
from ..parse import arxiv_id, canonical_link
from ..store import (
    FAILED,
    PENDING,
    SENDING,
    FeedState,
    OutboxRow,
    Store,
    Suppression,
    Vote,
    VoteCounts,
    WorkerState,
    utcnow,
    voter,
)
from ..web.tokens import signer
from .audience import readers, with_choices
from .clock import Clock
from .fetching import fetch_all
from .scheduled import LEASE_NAME
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


def entry_votes(store: Store, entry: Entry, *, subscriber: str | None = None) -> list[Vote]:
    """Readers' votes on an entry (only this subscriber's, when one is given), oldest first."""
    votes = store.entry_votes(entry.id)
    return votes if subscriber is None else [v for v in votes if v.subscriber == voter(subscriber)]


def preview(
    settings: Settings, store: Store, email: str, *, fetch: bool = True, clock: Clock = utcnow
) -> tuple[Digest, RenderedDigest]:
    """Render a subscriber's next digest without sending or recording anything."""
    (subscriber,) = select_subscribers(settings, [email], store=store, chosen=False)
    choices = store.reader_choice(subscriber.email)
    if choices is not None:  # (as they chose: their topics, even while unsubscribed or paused)
        subscriber = with_choices(settings, subscriber, choices)
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
    zone: ZoneInfo  # the subscriber's timezone: their schedule is read in it
    votes: VoteCounts = field(default_factory=VoteCounts)  # "more / less like this" (digest serve)
    # The reader's own choices (digest serve): they win over the config's.
    unsubscribed_at: datetime | None = None
    unsubscribed_via: str | None = None
    paused_until: datetime | None = None  # only while it is still to come
    chosen: tuple[str, ...] = ()  # what they chose on the web: "topics", "schedule"
    signed_up_at: datetime | None = None  # signed up on the web ([web] signup): confirmed then


@dataclass(frozen=True, slots=True)
class SchedulerStatus:
    """Whether a ``digest run`` holds the scheduler lease on this state database."""

    running: bool
    holder: str | None  # host:pid of the holder (of the last one, when not running); None: never
    since: datetime | None  # when that holder took the lease
    until: datetime | None  # when the lease runs out unless it is renewed


@dataclass(frozen=True, slots=True)
class StatusReport:
    feeds: list[FeedState]
    subscribers: list[SubscriberStatus]
    deliveries: dict[str, int]  # outbox rows per state
    unfinished: list[OutboxRow]  # pending, sending and failed rows
    scheduler: SchedulerStatus
    # subscribers who get no digests after bounces, by address (lower case): why and since when
    suppressed: dict[str, Suppression] = field(default_factory=dict)
    bounces: dict[str, tuple[int, int]] = field(default_factory=dict)  # (hard, soft) in a row now
    workers: WorkersStatus | None = None  # digest worker: None when no worker ever ran here


@dataclass(frozen=True, slots=True)
class WorkersStatus:
    """The ``digest worker`` processes of this database and their jobs."""

    alive: list[WorkerState]  # heartbeat within a lease
    gone: list[WorkerState]  # silent for longer (crashed, or cut off), until pruned
    jobs: dict[str, int]  # the task engine's jobs per status: todo (waiting), doing, failed...
    lease: timedelta  # [worker] lease: a dead worker's digests go out again after this


def status(settings: Settings, store: Store, *, clock: Clock = utcnow) -> StatusReport:
    """Feeds, subscribers, the outbox and the scheduler as the store sees them now."""
    now = clock()
    store.sync_feeds({f.name: f.url for f in settings.feeds})
    feeds = store.feed_states()
    everyone = readers(settings, store, now)
    wanted = [r.subscriber for r in everyone if r.excluded is None]
    planned = {d.subscriber: d for d in plan_digests(settings, store, wanted, now)}
    delivered = store.last_delivered()
    votes = store.vote_counts()
    signed_up = {s.email: s.confirmed_at for s in store.signups()}
    subscribers = []
    for found in everyone:
        sub, choices = found.subscriber, found.choices
        digest = planned.get(sub.email)
        subscribers.append(
            SubscriberStatus(
                email=sub.email,
                topics=tuple(sub.topics),
                schedule=str(sub.schedule),
                unsubscribed_at=choices.unsubscribed_at if choices else None,
                unsubscribed_via=choices.unsubscribed_via if choices else None,
                paused_until=choices.paused_until if found.excluded == "paused" and choices else None,
                chosen=tuple(
                    name
                    for name, mine, theirs in (
                        ("topics", sub.topics, found.config.topics),
                        ("schedule", str(sub.schedule), str(found.config.schedule)),
                    )
                    if mine != theirs
                ),
                last_digest_at=delivered.get(sub.email),
                pending_entries=digest.entry_count + digest.more_count if digest else 0,
                zone=settings.zone_of(sub),
                votes=votes.get(voter(sub.email), VoteCounts()),
                signed_up_at=None if settings.subscriber(sub.email) else signed_up.get(sub.email.lower()),
            )
        )
    return StatusReport(
        feeds=[feeds[f.name] for f in settings.feeds],
        subscribers=subscribers,
        deliveries=store.delivery_counts(),
        unfinished=store.deliveries([PENDING, SENDING, FAILED]),
        scheduler=_scheduler(store, now),
        suppressed=store.suppressions(),
        bounces=store.bounce_counts(),
        workers=_workers(settings, store, now),
    )


def _workers(settings: Settings, store: Store, now: datetime) -> WorkersStatus | None:
    """The workers as their heartbeats say (the same test as the delivery lanes)."""
    rows, jobs = store.workers(), store.job_counts()
    if not rows and not jobs:
        return None
    lease = settings.worker.lease
    alive = [w for w in rows if w.heartbeat_at > now - lease]
    gone = [w for w in rows if w.heartbeat_at <= now - lease]
    return WorkersStatus(alive=alive, gone=gone, jobs=jobs, lease=lease)


def _scheduler(store: Store, now: datetime) -> SchedulerStatus:
    """The scheduler lease as ``digest run`` takes and renews it (see :mod:`.scheduled`).

    It is held while it has not run out and its holder is not a process of this machine that
    has died: the same test a second ``digest run`` makes before it refuses to start.
    """
    lease = store.lease(LEASE_NAME)
    if lease is None:
        return SchedulerStatus(running=False, holder=None, since=None, until=None)
    host, _, rest = lease.holder.partition(":")
    holder = f"{host}:{rest.partition(':')[0]}" if rest else host  # host:pid, without its scope
    running = lease.expires_at > now and lease.holder_alive
    return SchedulerStatus(running=running, holder=holder, since=lease.acquired_at, until=lease.expires_at)


def check(config: Settings | str | os.PathLike[str] | None) -> list[str]:
    """Every problem of a config at once, each with the file and line where it is written.

    Beyond the schema: topic syntax, templates, local feed files, the SMTP password. Given a
    path (None: the default config), the file is loaded first; when it does not validate,
    the checks that need no valid whole still run on the parts that do (each topic's
    keywords and query, each local feed path, the templates folder, ``[smtp]``), so that one
    mistake does not hide the others. A file that is missing or not TOML is that one problem.
    """
    problems: list[str] = []
    settings: Settings | None = None
    parts: ConfigParts | None
    if isinstance(config, Settings):
        settings = config
        parts = ConfigParts.of(settings)
    else:
        try:
            settings = load_settings(config)
            parts = ConfigParts.of(settings)
        except ConfigError as exc:
            problems = list(exc.problems)
            parts = ConfigParts.salvage(config)
    if parts is None:
        return problems

    def problem(key: tuple[str | int, ...], message: str) -> None:
        line = parts.line(key)
        problems.append(f"{parts.path}:{line}: {message}" if line else f"{parts.path}: {message}")

    try:
        compile_topics(parts.topics)
    except MatchError as exc:
        for found in exc.problems:
            problem(found.key, str(found))
    if settings is not None:
        try:
            _renderer(settings)
        except RenderError as exc:
            problems.append(str(exc))
    if parts.templates and not Path(parts.templates).is_dir():
        problem(("digest", "templates"), f"digest.templates: folder {parts.templates} does not exist")
    for i, path in parts.local_feeds:
        if not Path(path).is_file():
            problem(("feeds", i, "url"), f"feeds[{i + 1}].url: file {path} does not exist")
    smtp = parts.smtp
    if smtp and smtp.username and smtp.password() is None:
        problem(
            ("smtp", "password_env"),
            f"smtp.password_env: environment variable {smtp.password_env or '(not set)'} is empty or missing",
        )
    bounces = settings.bounces if settings is not None else None
    if bounces and bounces.imap_host and bounces.imap_password() is None:
        problem(
            ("bounces", "imap_password_env"),
            f"bounces.imap_password_env: environment variable {bounces.imap_password_env} "
            "is empty or missing",
        )
    if bounces and bounces.maildir and not Path(bounces.maildir, "new").is_dir():
        problem(("bounces", "maildir"), f"bounces.maildir: {bounces.maildir} is not a Maildir (no new/)")
    if settings is not None and settings.digest.base_url:
        try:
            signer(settings.web)  # (reader links are signed with it: send would stop without it)
        except WebError as exc:
            problem(("web", "secret_env"), f"web.secret_env: {exc}")
    if settings is not None and settings.dkim is not None:
        from ..sign import load_signer

        try:
            load_signer(settings)  # (the key is read and checked against [dkim] algorithm)
        except ConfigError as exc:
            problems.extend(exc.problems)
    # One list in the order of the file (problems without a line first, as the loader does).
    return sorted(problems, key=lambda p: _line_of(p, parts.path))


def _line_of(problem: str, path: Path) -> int:
    found = re.match(re.escape(f"{path}:") + r"(\d+):", problem)
    return int(found[1]) if found else 0


def _renderer(settings: Settings) -> Renderer:
    # Imported only here: a large send renders in its render pool, and render's libraries
    # (premailer, lxml, Jinja2) are slow to import.
    from ..render import Renderer

    return Renderer(settings)
