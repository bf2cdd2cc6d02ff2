"""The verbs that look without sending: ``check``, ``fetch``, ``match``, ``status``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..config import Settings, config_path, format_duration, parse_duration
from ..errors import DigestError
from ..match import Explanation, TermCheck
from ..models import Entry

if TYPE_CHECKING:
    from .. import run
    from ..run.inspection import SchedulerStatus, WorkersStatus
    from ..store import FeedState, Vote

from .base import Context, config_problems, fail, handle_errors, main, out, when
from .dkim import print_dkim
from .web import reader_note
from .words import plural


@main.command()
@click.pass_obj
@handle_errors
def check(ctx: Context) -> None:
    """Validate the config: exit 0, or exit 2 listing every problem (schema errors, topic
    queries, missing feed files and templates folder, all at once, each with its line).

    Example: digest --config config/digest.toml check
    """
    from .. import run

    problems = run.check(config_path(ctx.config))
    if problems:
        fail(config_problems(problems), 2)
    settings = ctx.settings()
    delivery = f"SMTP {settings.smtp.host}" if settings.smtp else f"Maildir {settings.outbox.maildir}"
    out.print(
        f"{settings.path}: OK ({plural(len(settings.feeds), 'feed')}, "
        f"{plural(len(settings.topics), 'topic')}, {plural(len(settings.subscribers), 'subscriber')}, "
        f"delivery: {delivery})",
        markup=False,
    )
    print_dkim(settings)
    _print_unsubscribed(ctx, settings)


def _print_unsubscribed(ctx: Context, settings: Settings) -> None:
    """Note the config's subscribers who unsubscribed on the web (the state database wins)."""
    from .. import run
    from ..store.sqlite import sqlite_file

    file = sqlite_file(settings.digest.database_url)
    if file is not None and not file.exists():
        return  # (check never creates the state database)
    try:
        with ctx.store(settings) as store:
            found = run.excluded_readers(settings, store, datetime.now(UTC))
    except DigestError:
        return  # (check is about the config; status reports the database's problems)
    for reader in found:
        choices = reader.choices
        if choices is not None and choices.unsubscribed_at is not None:
            zone = settings.zone_of(reader.config)
            note = reader_note(choices.unsubscribed_at, choices.unsubscribed_via, None, zone)
            out.print(
                f"note: {reader.config.email} {note}: still in the config, but gets no digests "
                "(they can subscribe again from their preferences page)",
                markup=False,
            )


@main.command()
@click.option("--feed", "feeds", multiple=True, metavar="NAME", help="Only this feed (repeatable).")
@click.pass_obj
@handle_errors
def fetch(ctx: Context, feeds: tuple[str, ...]) -> None:
    """Fetch each due feed, store new entries, print a table of results.

    A feed resting after failures (backoff, or the server's Retry-After) is skipped until its
    next attempt, and says so; a feed named with --feed is fetched now regardless.

    Exit codes: 0 no feed failed (a resting feed is skipped, which is not a failure of this
    run); 1 at least one feed failed (its row says why); 2 the config is wrong or a --feed
    name is unknown.

    Example: digest fetch --feed arxiv-cs
    """
    from .. import run

    settings = ctx.settings()
    unknown = set(feeds) - {f.name for f in settings.feeds}
    if unknown:
        fail(
            f"error: unknown feed {', '.join(sorted(unknown))} "
            f"(feeds: {', '.join(f.name for f in settings.feeds)})",
            2,
        )
    with ctx.store(settings) as store:
        reports = run.fetch_all(settings, store, feeds=feeds or None, force=bool(feeds))
    _print_feeds(reports)
    failed = [r.feed for r in reports if r.result == "error"]
    if failed:
        fail(f"error: {len(failed)} of {plural(len(reports), 'feed')} failed: {', '.join(failed)}", 1)


def _print_feeds(reports: list[run.FeedReport]) -> None:
    table = Table("feed", "result", "time", box=None, pad_edge=False)
    for r in reports:
        # Text(): feed and server texts are shown as they are, never read as rich markup.
        table.add_row(Text(r.feed), Text(r.describe()), "-" if r.result == "skipped" else f"{r.elapsed:.2f}s")
    out.print(table, markup=False)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(
    name="match",
    short_help="List what each topic matches, or explain one entry; sends nothing.",
)
@click.option("--topic", "-t", "topics", multiple=True, metavar="NAME", help="Only this topic (repeatable).")
@click.option(
    "--subscriber",
    "-s",
    metavar="EMAIL",
    help="That subscriber's topics; each entry once, under the first that matches (as in their digest).",
)
@click.option(
    "--since",
    metavar="DURATION",
    callback=_duration,
    help="Entries published this recently, e.g. 7d (default: [digest] lookback).",
)
@click.option(
    "--explain",
    metavar="URL",
    help="For the stored entry with this link or arXiv id: every topic and why it matched or not.",
)
@click.pass_obj
@handle_errors
def match_command(
    ctx: Context,
    topics: tuple[str, ...],
    subscriber: str | None,
    since: timedelta | None,
    explain: str | None,
) -> None:
    """List the stored entries that match, with score and the terms that hit; send nothing.

    Tune a topic with it: edit the config, run it again. It reads the entries `digest fetch`
    stored. With --explain, show for one entry every topic and why it did or did not match.

    Example: digest --config config/digest.toml match --topic rl

    Example: digest --config config/digest.toml match --explain https://arxiv.org/abs/2611.03377
    """
    from .. import run

    settings = ctx.settings()
    try:
        run.select_topics(settings, topics, subscriber)
    except DigestError as exc:
        fail(f"error: {exc}", 2)
    with ctx.store(settings) as store:
        if explain is not None:
            entry, explanations = run.explain_entry(
                settings, store, explain, topics=topics, subscriber=subscriber
            )
            _print_explanations(entry, explanations)
            _print_votes(run.entry_votes(store, entry, subscriber=subscriber))
            return
        found = run.find_matches(settings, store, topics=topics, subscriber=subscriber, since=since)
    for topic in found:
        out.print(
            f"{topic.topic} ({topic.title}): "
            + plural(len(topic.matches), "matching entry", "matching entries"),
            markup=False,
        )
        if not topic.matches:
            continue
        table = Table("score", "published", "title", "hits", "link", box=None, pad_edge=False)
        for m in topic.matches:
            table.add_row(
                str(m.score),
                m.entry.published.strftime("%Y-%m-%d"),
                m.entry.title,
                ", ".join(m.hits),
                m.entry.link or "",
            )
        out.print(table)
    window = since or settings.digest.lookback
    total = len({m.entry.id for t in found for m in t.matches})
    out.print(
        plural(total, "entry matches", "entries match")
        + f" (published in the last {format_duration(window)}).",
        markup=False,
    )


def _print_explanations(entry: Entry, explanations: list[Explanation]) -> None:
    out.print(entry.title, markup=False)
    for label, value in (
        ("link", entry.link or "(none)"),
        ("arXiv", entry.arxiv_id or "-"),
        ("published", entry.published.strftime("%Y-%m-%d %H:%M UTC")),
        ("feeds", ", ".join(entry.feeds)),
        ("authors", ", ".join(entry.authors) or "-"),
        ("categories", ", ".join(entry.categories) or "-"),
    ):
        out.print(f"  {label}: {value}", markup=False)
    for e in explanations:
        out.print("", markup=False)
        out.print(_verdict(e), markup=False)
        if e.keywords:
            out.print(f"  keywords: {_checks(e.keywords)}", markup=False)
        if e.query is not None:
            out.print(f"  query {e.query}: {'true' if e.query_matched else 'false'}", markup=False)
            out.print(f"    terms: {_checks(e.query_terms)}", markup=False)
        if e.exclude:
            out.print(f"  exclude: {_checks(e.exclude)}", markup=False)
        where = "any" if not e.feeds else ", ".join(e.feeds) + (" (ok)" if e.feed_ok else " (not these)")
        out.print(f"  feeds: {where}", markup=False)


def _print_votes(votes: Sequence[Vote]) -> None:
    """Readers' "more / less like this" on the entry (``digest serve``'s vote links)."""
    more = [v.subscriber for v in votes if v.vote == "more"]
    less = [v.subscriber for v in votes if v.vote == "less"]
    out.print("", markup=False)
    if not votes:
        out.print("votes: none", markup=False)
        return
    out.print(f"votes: {len(more)} more like this, {len(less)} less like this", markup=False)
    for label, who in (("more", more), ("less", less)):
        if who:
            out.print(f"  {label}: {', '.join(who)}", markup=False)
    if less:
        out.print("  (a less like this hides the entry's later edits from that reader)", markup=False)


def _verdict(e: Explanation) -> str:
    """The outcome for one topic: "rl: match, score 5 (RL, bandit)" or "rl: no match: why"."""
    if e.matched:
        return f"{e.topic}: match, score {e.score}" + (f" ({', '.join(e.hits)})" if e.hits else "")
    return f"{e.topic}: no match: {e.reason or 'nothing to match on'}"


def _checks(checks: tuple[TermCheck, ...]) -> str:
    return "; ".join(
        f"{'NOT ' if c.negated else ''}{c.text} "
        + (f"(found in {', '.join(c.found_in)})" if c.found_in else "(not found)")
        for c in checks
    )


@main.command(short_help="Show the feeds, subscribers, outbox and scheduler.")
@click.pass_obj
@handle_errors
def status(ctx: Context) -> None:
    """Show the feeds, the subscribers, the outbox and whether a scheduler is running.

    Feeds: last fetch and success, entries, result, failures in a row, next attempt, last
    error, URL. Subscribers: topics, schedule, last digest, pending entries, next scheduled
    digest, times in the subscriber's timezone. The outbox: digests pending, failed or
    waiting, with their last error. The tables fit the terminal (or $COLUMNS): when narrow,
    the columns that matter least are left out and feed errors are listed under the table.

    Example: digest status
    """
    from .. import run
    from ..schedule import next_fire_times

    settings = ctx.settings()
    now = datetime.now(UTC)
    with ctx.store(settings) as store:
        report = run.status(settings, store)
        chosen = run.audience(settings, store, now)  # (their own schedules, from the web)
    _print_feed_states(report.feeds, now)
    next_at = next_fire_times(settings, now, chosen)
    for email in next_at:  # (a suppressed subscriber has no next digest: "-", and a note says why)
        if email.lower() in report.suppressed:
            next_at[email] = None
    _print_subscribers(report.subscribers, next_at)
    _print_suppressed(report)
    _print_scheduler(report.scheduler)
    if report.workers is not None:
        _print_workers(report.workers, now)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.deliveries.items())) or "empty"
    out.print(f"Outbox: {counts}", markup=False)
    for row in report.unfinished:
        # (a failed digest has no next attempt: only --retry-failed puts it back)
        after = "no more attempts" if row.state == "failed" else f"next {when(row.next_attempt_at)}"
        _note(f"{row.state} {row.subscriber} (attempts {row.attempts}, {after}): {row.last_error or ''}")
    if any(row.state == "failed" for row in report.unfinished):
        _note("digest send --retry-failed puts failed digests back in the outbox, once the cause is fixed")


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    drop: int = 0  # 0: always shown; else, when the table is too wide, left out in this order
    fold: bool = False  # free text: wraps inside its column (the others keep to one line)


def _fitted(title: str, columns: Sequence[_Column], rows: Sequence[Sequence[str]]) -> tuple[Table, set[str]]:
    """The table with as many columns as fit the console's width, and the headers left out.

    Columns are left out in their ``drop`` order until every row fits on one line; what is
    still too wide then wraps (``fold`` columns) or is cut.
    """
    left_out: set[str] = set()
    droppable = sorted((c for c in columns if c.drop), key=lambda c: c.drop)
    while True:
        shown = [i for i, c in enumerate(columns) if c.header not in left_out]
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for i in shown:
            column = columns[i]
            table.add_column(
                column.header, no_wrap=not column.fold, overflow="fold" if column.fold else "ellipsis"
            )
        for row in rows:
            # Text(): feed, server and config texts are shown as they are, never read as markup.
            table.add_row(*(Text(row[i]) for i in shown))
        natural = table.__rich_measure__(out, out.options.update_width(10**6)).maximum
        if natural <= out.width or not droppable:
            return table, left_out
        left_out.add(droppable.pop(0).header)


def _note(text: str) -> None:
    """An indented line under a table, wrapped to the console's width (indented again)."""
    out.print(Padding(Text(text), (0, 0, 0, 2)), soft_wrap=False)


FEED_COLUMNS = (
    _Column("feed"),
    _Column("last fetch"),
    _Column("last success", drop=2),
    _Column("entries", drop=5),
    _Column("result"),
    _Column("failures", drop=3),
    _Column("next attempt", drop=6),
    _Column("last error", drop=4, fold=True),
    _Column("url", drop=1, fold=True),
)


def _print_feed_states(feeds: Sequence[FeedState], now: datetime) -> None:
    rows = []
    for f in feeds:
        resting = f.next_attempt_at is not None and f.next_attempt_at > now
        rows.append(
            (
                f.name,
                when(f.last_fetch_at),
                when(f.last_success_at),
                str(f.entries),
                f.last_status or "never fetched",
                str(f.failures),
                when(f.next_attempt_at) if resting else ("due" if f.last_fetch_at else "-"),
                f"{when(f.last_error_at)} {f.last_error}" if f.last_error else "-",
                f"{f.url} (moved from {f.configured_url})" if f.moved else f.url,
            )
        )
    table, left_out = _fitted("Feeds", FEED_COLUMNS, rows)
    out.print(table, markup=False)
    for f in feeds:
        # What a narrow table leaves out but must not hide: why a feed fails, where it moved.
        if "last error" in left_out and f.last_error:
            failing = f"{plural(f.failures, 'failure')} in a row, " if f.failures else ""
            _note(f"{f.name}: {failing}last error {when(f.last_error_at)}: {f.last_error}")
        if "url" in left_out and f.moved:
            _note(f"{f.name}: moved to {f.url} (from {f.configured_url})")


SUBSCRIBER_COLUMNS = (
    _Column("subscriber"),
    _Column("topics", drop=1, fold=True),
    _Column("schedule", drop=2),
    _Column("last digest", drop=3),
    _Column("pending entries"),
    _Column("next digest"),
)


def _print_subscribers(
    subscribers: Sequence[run.SubscriberStatus], next_at: dict[str, datetime | None]
) -> None:
    rows = [
        (
            s.email + (" (sign-up)" if s.signed_up_at else ""),
            ", ".join(s.topics) + (" (web)" if "topics" in s.chosen else ""),
            s.schedule + (" (web)" if "schedule" in s.chosen else ""),
            when(s.last_digest_at, s.zone),
            str(s.pending_entries),
            reader_note(s.unsubscribed_at, s.unsubscribed_via, s.paused_until, s.zone)
            or when(next_at.get(s.email), s.zone),
        )
        for s in subscribers
    ]
    table, _ = _fitted("Subscribers", SUBSCRIBER_COLUMNS, rows)
    out.print(table, markup=False)
    if any(s.chosen for s in subscribers):
        _note("(web): the reader's own choice, on their preferences page; it wins over the config")
    signed_up = sum(1 for s in subscribers if s.signed_up_at)
    if signed_up:
        _note(f"(sign-up): {plural(signed_up, 'subscriber')} signed up on the web ([web] signup)")
    voted = [s for s in subscribers if s.votes.more or s.votes.less]
    if voted:
        _note(
            "votes (more / less like this): "
            + "; ".join(f"{s.email} {s.votes.more} / {s.votes.less}" for s in voted)
        )


def _print_scheduler(scheduler: SchedulerStatus) -> None:
    if scheduler.running:
        line = f"Scheduler: running ({scheduler.holder}, since {when(scheduler.since)})"
    else:
        last = f"; last held by {scheduler.holder} until {when(scheduler.until)}" if scheduler.holder else ""
        line = f"Scheduler: not running{last} (the next digest times are when digest run would send)"
    out.print(Text(line), soft_wrap=False)


def _print_workers(workers: WorkersStatus, now: datetime) -> None:
    """digest worker: the live workers, those gone silent, and the task engine's jobs."""
    lease = format_duration(workers.lease)
    line = (
        f"Workers: {len(workers.alive)} alive (lease {lease}: "
        "a dead worker's digests go out again after it, from any other)"
    )
    out.print(Text(line), soft_wrap=False)
    for w in workers.alive:
        ago = max(0, int((now - w.heartbeat_at).total_seconds()))
        beat = f"last heartbeat {ago}s ago, concurrency {w.concurrency}"
        _note(f"{w.host}:{w.pid} since {when(w.started_at)}, {beat}")
    for w in workers.gone:
        _note(f"gone: {w.host}:{w.pid}, last heartbeat {when(w.heartbeat_at)}")
    jobs = workers.jobs
    other = sum(n for status, n in jobs.items() if status not in ("todo", "doing", "failed"))
    out.print(
        Text(
            f"Jobs: {jobs.get('todo', 0)} waiting, {jobs.get('doing', 0)} doing, "
            f"{jobs.get('failed', 0)} failed, {other} done"
        ),
        soft_wrap=False,
    )


def _print_suppressed(report: run.StatusReport) -> None:
    """Subscribers who get no digests after bounces (why, since when, how to undo it), and
    those whose bounces count towards a limit."""
    for found in report.suppressed.values():
        why = " ".join(part for part in (found.status, found.diagnostic) if part) or "-"
        _note(
            f"{found.subscriber}: suppressed ({found.kind} bounce: {why}, since {when(found.since)}); "
            f"digest unsuppress {found.subscriber} sends them digests again"
        )
    for email, (hard, soft) in report.bounces.items():
        if email not in report.suppressed:
            _note(f"{email}: {plural(hard, 'hard bounce')} and {plural(soft, 'soft bounce')} in a row")
