"""The verbs that look without sending: ``check``, ``fetch``, ``match``, ``status``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from ..config import format_duration, parse_duration
from ..errors import DigestError
from ..match import Explanation, TermCheck
from ..models import Entry

if TYPE_CHECKING:
    from .. import run

from .base import Context, fail, handle_errors, main, out, when


@main.command()
@click.pass_obj
@handle_errors
def check(ctx: Context) -> None:
    """Validate the config: exit 0, or exit 2 listing every problem.

    Example: digest --config config/digest.toml check
    """
    from .. import run

    settings = ctx.settings()
    problems = run.check(settings)
    if problems:
        fail("\n".join(problems) + f"\n{len(problems)} problem(s) in the config.", 2)
    delivery = f"SMTP {settings.smtp.host}" if settings.smtp else f"Maildir {settings.outbox.maildir}"
    out.print(
        f"{settings.path}: OK ({len(settings.feeds)} feeds, {len(settings.topics)} topics, "
        f"{len(settings.subscribers)} subscribers, delivery: {delivery})",
        markup=False,
    )


@main.command()
@click.option("--feed", "feeds", multiple=True, metavar="NAME", help="Only this feed (repeatable).")
@click.pass_obj
@handle_errors
def fetch(ctx: Context, feeds: tuple[str, ...]) -> None:
    """Pull every due feed once, store new entries, print a line per feed.

    A feed resting after failures (backoff, or the server's Retry-After) is skipped until its
    next attempt, and says so; a feed named with --feed is fetched now regardless.

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


@main.command(name="match")
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
            return
        found = run.find_matches(settings, store, topics=topics, subscriber=subscriber, since=since)
    for topic in found:
        count = len(topic.matches)
        out.print(
            f"{topic.topic} ({topic.title}): {count} matching {'entry' if count == 1 else 'entries'}",
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
        f"{total} {'entry matches' if total == 1 else 'entries match'} "
        f"(published in the last {format_duration(window)}).",
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
        out.print(f"{e.topic}: {'MATCH' if e.matched else 'no match'}: {e.reason}", markup=False)
        if e.keywords:
            out.print(f"  keywords: {_checks(e.keywords)}", markup=False)
        if e.query is not None:
            out.print(f"  query {e.query}: {'true' if e.query_matched else 'false'}", markup=False)
            out.print(f"    terms: {_checks(e.query_terms)}", markup=False)
        if e.exclude:
            out.print(f"  exclude: {_checks(e.exclude)}", markup=False)
        where = "any" if not e.feeds else ", ".join(e.feeds) + (" (ok)" if e.feed_ok else " (not these)")
        out.print(f"  feeds: {where}", markup=False)


def _checks(checks: tuple[TermCheck, ...]) -> str:
    return "; ".join(
        f"{'NOT ' if c.negated else ''}{c.text} "
        + (f"(found in {', '.join(c.found_in)})" if c.found_in else "(not found)")
        for c in checks
    )


@main.command()
@click.pass_obj
@handle_errors
def status(ctx: Context) -> None:
    """Show feeds (last fetch, entries, errors), subscribers (last digest, pending) and the outbox.

    Example: digest status
    """
    from .. import run
    from ..schedule import next_fire_times

    settings = ctx.settings()
    with ctx.store(settings) as store:
        report = run.status(settings, store)
    next_at = next_fire_times(settings)
    feeds = Table(
        "feed",
        "last fetch",
        "last success",
        "entries",
        "result",
        "failures",
        "next attempt",
        "last error",
        "url",
        title="Feeds",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    now = datetime.now(UTC)
    for f in report.feeds:
        resting = f.next_attempt_at is not None and f.next_attempt_at > now
        cells = (
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
        feeds.add_row(*(Text(cell) for cell in cells))
    out.print(feeds, markup=False)
    subs = Table(
        "subscriber",
        "topics",
        "schedule",
        "last digest",
        "pending entries",
        "next digest",
        title="Subscribers",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    for s in report.subscribers:
        subs.add_row(
            s.email,
            ", ".join(s.topics),
            s.schedule,
            when(s.last_digest_at),
            str(s.pending_entries),
            when(next_at.get(s.email)),
        )
    out.print(subs)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.deliveries.items())) or "empty"
    out.print(f"Outbox: {counts}", markup=False)
    for row in report.unfinished:
        # (a failed digest has no next attempt: only --retry-failed puts it back)
        after = "no more attempts" if row.state == "failed" else f"next {when(row.next_attempt_at)}"
        out.print(
            f"  {row.state} {row.subscriber} (attempts {row.attempts}, {after}): {row.last_error or ''}",
            markup=False,
        )
