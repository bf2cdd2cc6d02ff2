"""The ``digest`` command: each verb calls one function of ``run`` (or ``schedule``) and turns
domain errors into a message and an exit code. Logging is configured here and nowhere else.

Exit codes: 0 success; 1 a delivery failed permanently (or another error); 2 the config or the
command line is wrong; 3 deliveries were left pending for a later retry.

Verbs import ``run`` (with SQLAlchemy and httpx, ~0.2 s) when they run: ``send`` starts its feed
parser before that, so that the parser's own start uses the other core meanwhile.
"""

from __future__ import annotations

import atexit
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .config import Settings, config_path, format_duration, load_settings, parse_duration
from .errors import ConfigError, DigestError, MatchError
from .match import Explanation, TermCheck
from .models import Entry
from .parse import ParserProcess

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from . import run
    from .store import Store

F = TypeVar("F", bound=Callable[..., Any])
LIST_LIMIT = 20  # beyond this many digests, `send` lists only the ones that were not sent

# Python's last garbage collection at exit walks every object a command made (0.4 s after a
# send of 2,000 digests), though all of them go with the process anyway.
atexit.register(gc.freeze)

# Piped output never wraps table cells, so each feed and subscriber stays on one greppable line.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 1000)


class Context:
    """What every verb needs: the config path and, loaded on demand, settings and store."""

    def __init__(self, config: str | None) -> None:
        self.config = config

    def settings(self) -> Settings:
        return load_settings(self.config)

    @contextmanager
    def store(self, settings: Settings) -> Iterator[Store]:
        from .store import Store

        with Store(settings.digest.database_url) as store:
            yield store


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.WARNING
        if quiet
        else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "apscheduler", "CSSUTILS"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)


def _fail(message: str, code: int) -> None:
    err.print(message, markup=False)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn the pipeline's errors into messages and exit codes, never tracebacks."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _fail("\n".join(exc.problems) + f"\n{len(exc.problems)} problem(s) in the config.", 2)
        except MatchError as exc:
            # A topic that does not compile is a mistake in the config: name the file, exit 2.
            path = config_path(args[0].config if args and isinstance(args[0], Context) else None)
            lines = [f"{path}: {problem}" for problem in exc.problems]
            _fail("\n".join(lines) + f"\n{len(lines)} problem(s) in the config.", 2)
        except DigestError as exc:
            _fail(f"error: {exc}", 1)
        return None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config",
    metavar="PATH",
    help="Config file (default: $DIGEST_CONFIG, else config/digest.toml).",
)
@click.option("--verbose", "-v", count=True, help="Log what happens (-vv: more).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")
@click.version_option(__version__, prog_name="digest")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: int, quiet: bool) -> None:
    """Topic-filtered email digests of research feeds."""
    _setup_logging(verbose, quiet)
    ctx.obj = Context(config)


@main.command()
@click.pass_obj
@handle_errors
def check(ctx: Context) -> None:
    """Validate the config: exit 0, or exit 2 listing every problem.

    Example: digest --config config/digest.toml check
    """
    from . import run

    settings = ctx.settings()
    problems = run.check(settings)
    if problems:
        _fail("\n".join(problems) + f"\n{len(problems)} problem(s) in the config.", 2)
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
    from . import run

    settings = ctx.settings()
    unknown = set(feeds) - {f.name for f in settings.feeds}
    if unknown:
        _fail(
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


@main.command()
@click.option(
    "--subscriber",
    "-s",
    "subscribers",
    multiple=True,
    metavar="EMAIL",
    help="Only this subscriber (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Build and report, but send and record nothing.")
@click.option("--no-fetch", is_flag=True, help="Use stored entries; do not fetch feeds first.")
@click.pass_obj
@handle_errors
def send(ctx: Context, subscribers: tuple[str, ...], dry_run: bool, no_fetch: bool) -> None:
    """Fetch, then build and deliver now each subscriber's digest of new entries.

    Exit 0 when everything was delivered or there was nothing to send, 1 when a delivery
    failed permanently (the others are still delivered), 3 when some were left pending.

    Example: digest send --subscriber ada@example.org --dry-run
    """
    with ParserProcess() as parser:
        if not no_fetch:
            parser.start()  # now: its start (~0.1 s) overlaps our imports and the config's reading
        from . import run

        settings = ctx.settings()
        try:
            run.select_subscribers(settings, subscribers)
        except DigestError as exc:
            _fail(f"error: {exc}", 2)
        bar = _ProgressBar()
        with ctx.store(settings) as store, bar, stop_on_signals() as stop:
            report = run.send(
                settings,
                store,
                subscribers=subscribers or None,
                dry_run=dry_run,
                fetch=not no_fetch,
                progress=bar,
                stop=stop,
                parser=parser,
            )
    for feed in report.feeds:
        out.print(f"feed {feed.feed}: {feed.describe()}", markup=False)
    # Every problem is named; successes are listed one by one only when there are few.
    few = len(report.outcomes) <= LIST_LIMIT
    for outcome in report.outcomes:
        if outcome.status == "sent" and not few:
            continue
        line = {
            "planned": f"would send {outcome.subscriber}: {outcome.entries} entries, "
            f"subject {outcome.subject!r}",
            "sent": f"sent {outcome.subscriber}: {outcome.entries} entries"
            + (f" (after {outcome.tries} attempts)" if outcome.tries > 1 else ""),
            "pending": f"pending {outcome.subscriber}: {outcome.detail} (will retry)",
            "failed": f"failed {outcome.subscriber}: {outcome.detail}",
        }[outcome.status]
        out.print(line, markup=False)
    if len(report.nothing_new) <= LIST_LIMIT:
        for email in report.nothing_new:
            out.print(f"nothing new for {email}", markup=False)
    if report.unreachable:
        out.print(
            f"SMTP server unusable, digests left in the outbox for later: {report.unreachable}", markup=False
        )
    summary = (
        f"{report.count('planned')} digest(s) would be sent (dry run: nothing sent or recorded)"
        if dry_run
        else f"{report.count('sent')} sent, {report.count('pending')} pending, "
        f"{report.count('failed')} failed, {report.retried} retried"
    )
    failed_feeds = sum(1 for f in report.feeds if f.result == "error")
    out.print(
        f"{summary}; {len(report.nothing_new)} with nothing new; {failed_feeds} feed error(s).", markup=False
    )
    if settings.smtp is None and report.count("sent"):
        out.print(f"Emails are in the Maildir {settings.outbox.maildir}/new", markup=False)
    sys.exit(report.exit_code)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT / SIGTERM set the event (finish what is in flight, then stop); a second one aborts."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err.print(f"{signal.Signals(signum).name}: stopping after the messages in flight", markup=False)

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _ProgressBar:
    """A rich progress bar on a terminal, when more than a few digests are due."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def start(self, total: int) -> None:
        if total > 5 and out.is_terminal:
            from rich.progress import MofNCompleteColumn, Progress  # (only on a terminal)

            self.bar = Progress(
                *Progress.get_default_columns(), MofNCompleteColumn(), console=err, transient=True
            )
            self.task = self.bar.add_task("sending", total=total)
            self.bar.start()

    def advance(self, outcome: run.Outcome) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@main.command()
@click.option("--subscriber", "-s", "email", required=True, metavar="EMAIL", help="Whose digest to preview.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write (default: a temporary file).",
)
@click.option(
    "--text",
    "text_output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the plain-text part here.",
)
@click.option("--no-fetch", is_flag=True, help="Use stored entries; do not fetch feeds first.")
@click.option("--open", "open_browser", is_flag=True, help="Open the preview in a web browser.")
@click.pass_obj
@handle_errors
def preview(
    ctx: Context,
    email: str,
    output: Path | None,
    text_output: Path | None,
    no_fetch: bool,
    open_browser: bool,
) -> None:
    """Render a subscriber's next digest to an HTML file without sending or recording anything.

    --open shows it in the browser named by $BROWSER, or else the desktop's default browser.

    Example: digest preview --subscriber ada@example.org --output /tmp/ada.html
    """
    from . import run

    settings = ctx.settings()
    try:
        run.select_subscribers(settings, [email])
    except DigestError as exc:
        _fail(f"error: {exc}", 2)
    with ctx.store(settings) as store:
        digest, rendered = run.preview(settings, store, email, fetch=not no_fetch)
    if output is None:
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="digest-preview-", suffix=".html", delete=False) as handle:
            output = Path(handle.name)
    output.write_text(rendered.html, encoding="utf-8")
    if text_output:
        text_output.write_text(rendered.text, encoding="utf-8")
    out.print(f"Subject: {rendered.subject}", markup=False)
    out.print(f"{digest.entry_count} entries ({digest.more_count} more not shown)", markup=False)
    out.print(str(output.resolve()), markup=False)
    if open_browser:
        import webbrowser

        url = output.resolve().as_uri()
        if not webbrowser.open(url):  # $BROWSER, else the desktop's default browser
            err.print(f"could not start a web browser: open {url} yourself", markup=False)


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
    from . import run

    settings = ctx.settings()
    try:
        run.select_topics(settings, topics, subscriber)
    except DigestError as exc:
        _fail(f"error: {exc}", 2)
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


@main.command(name="run")
@click.pass_obj
@handle_errors
def run_command(ctx: Context) -> None:
    """Run the scheduler in the foreground: fetch feeds and send digests on schedule.

    Stop it with Ctrl-C or SIGTERM; SIGHUP reloads the config.

    Example: digest --config config/digest.toml run
    """
    from .schedule import run_scheduler

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    sys.exit(run_scheduler(ctx.config))


@main.command()
@click.pass_obj
@handle_errors
def status(ctx: Context) -> None:
    """Show feeds (last fetch, entries, errors), subscribers (last digest, pending) and the outbox.

    Example: digest status
    """
    from . import run
    from .schedule import next_fire_times

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
            _when(f.last_fetch_at),
            _when(f.last_success_at),
            str(f.entries),
            f.last_status or "never fetched",
            str(f.failures),
            _when(f.next_attempt_at) if resting else ("due" if f.last_fetch_at else "-"),
            f"{_when(f.last_error_at)} {f.last_error}" if f.last_error else "-",
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
            _when(s.last_digest_at),
            str(s.pending_entries),
            _when(next_at.get(s.email)),
        )
    out.print(subs)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.deliveries.items())) or "empty"
    out.print(f"Outbox: {counts}", markup=False)
    for row in report.unfinished:
        out.print(
            f"  {row.state} {row.subscriber} (attempts {row.attempts}, "
            f"next {_when(row.next_attempt_at)}): {row.last_error or ''}",
            markup=False,
        )


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


if __name__ == "__main__":
    main()
