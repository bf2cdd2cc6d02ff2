"""``digest send`` and ``digest preview``."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from ..config import Settings
from ..errors import DigestError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from .. import run
    from ..models import Digest

from .base import LIST_LIMIT, Context, err, fail, handle_errors, main, out, when
from .web import reader_note
from .words import plural


@main.command(short_help="Fetch, then build and deliver each subscriber's new digest now.")
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
@click.option(
    "--retry-now", is_flag=True, help="Deliver digests waiting in the outbox now, not at their next attempt."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Put failed digests back in the outbox first (same Message-ID), e.g. after fixing the cause.",
)
@click.pass_obj
@handle_errors
def send(
    ctx: Context,
    subscribers: tuple[str, ...],
    dry_run: bool,
    no_fetch: bool,
    retry_now: bool,
    retry_failed: bool,
) -> None:
    """Fetch, then build and deliver now each subscriber's digest of new entries.

    Exit 0 when everything was delivered or there was nothing to send, 1 when a delivery
    failed permanently (the others are still delivered), 2 when the SMTP server refused us or
    the [smtp] settings are wrong (the digests wait in the outbox), 3 when some were left
    pending for a later attempt.

    Example: digest send --subscriber ada@example.org --dry-run
    """
    from ..speed import Speedups

    with Speedups.for_command(fetch=not no_fetch) as speed:
        from .. import run

        settings = ctx.settings()
        bar = _ProgressBar()
        with ctx.store(settings) as store:
            try:  # (web sign-ups are subscribers too: the store knows them)
                run.select_subscribers(settings, subscribers, store=store, chosen=False)
            except DigestError as exc:
                fail(f"error: {exc}", 2)
        with ctx.store(settings) as store, bar, stop_on_signals() as stop:
            report = run.send(
                settings,
                store,
                subscribers=subscribers or None,
                dry_run=dry_run,
                fetch=not no_fetch,
                progress=bar,
                stop=stop,
                speed=speed,
                retry_now=retry_now,
                retry_failed=retry_failed,
            )
    _print_report(settings, report)
    sys.exit(report.exit_code)


def _print_report(settings: Settings, report: run.SendReport) -> None:
    """What a send did: feeds, every problem by name, the waiting digests, a summary line."""
    if report.requeued:
        out.print(f"put {plural(report.requeued, 'failed digest')} back in the outbox", markup=False)
    for feed in report.feeds:
        out.print(f"feed {feed.feed}: {feed.describe()}", markup=False)
    # Every problem is named; successes are listed one by one only when there are few.
    few = len(report.outcomes) <= LIST_LIMIT
    for outcome in report.outcomes:
        if outcome.status == "sent" and not few:
            continue
        entries = plural(outcome.entries, "entry", "entries")
        line = {
            "planned": f"would send {outcome.subscriber}: {entries}, subject {outcome.subject!r}",
            "sent": f"sent {outcome.subscriber}: {entries}"
            + (f" (after {outcome.tries} attempts)" if outcome.tries > 1 else ""),
            "pending": f"pending {outcome.subscriber}: {outcome.detail} (will retry)",
            "failed": f"failed {outcome.subscriber}: {outcome.detail}",
        }[outcome.status]
        out.print(line, markup=False)
    now = datetime.now(UTC)
    if len(report.waiting) <= LIST_LIMIT:
        for row in report.waiting:
            due = "due now" if row.next_attempt_at <= now else f"next attempt {when(row.next_attempt_at)}"
            out.print(
                f"waiting {row.subscriber}: {due} (last error: {row.last_error or '-'})"
                + ("" if row.next_attempt_at <= now else "; --retry-now sends it now"),
                markup=False,
            )
    if len(report.nothing_new) <= LIST_LIMIT:
        for email in report.nothing_new:
            out.print(f"nothing new for {email}", markup=False)
    if len(report.excluded) <= LIST_LIMIT:
        for found in report.excluded:
            choices = found.choices
            if found.excluded == "suppressed":  # (after bounces: digest status says why)
                address = found.config.email
                out.print(
                    f"no digest for {address}: suppressed after bounces (digest unsuppress {address})",
                    markup=False,
                )
                continue
            assert choices is not None  # (only a reader's own choice excludes them otherwise)
            note = reader_note(
                choices.unsubscribed_at,
                choices.unsubscribed_via,
                choices.paused_until,
                settings.zone_of(found.config),
            )
            out.print(f"no digest for {found.config.email}: {note}", markup=False)
    if report.refused:
        out.print(
            f"SMTP: {report.refused}. Nothing was lost: the digests wait in the outbox; "
            "fix the cause, then run digest send again.",
            markup=False,
        )
    elif report.unreachable:
        out.print(
            f"SMTP server unusable, digests left in the outbox for later: {report.unreachable}", markup=False
        )
    if report.store_error:
        out.print(
            f"stopped sending: the state database cannot record sent digests ({report.store_error}); "
            "free space, then run digest send again (a few digests may arrive twice)",
            markup=False,
        )
    summary = (
        f"{plural(report.count('planned'), 'digest')} would be sent (dry run: nothing sent or recorded)"
        if report.dry_run
        else f"{report.count('sent')} sent, {report.count('pending')} pending, "
        f"{report.count('failed')} failed, {report.retried} retried"
    )
    if report.waiting:
        summary += f", {len(report.waiting)} waiting in the outbox"
    failed_feeds = sum(1 for f in report.feeds if f.result == "error")
    resting = sum(1 for f in report.feeds if f.result == "skipped")
    feeds = plural(failed_feeds, "feed error") + (
        f", {plural(resting, 'feed')} resting after errors" if resting else ""
    )
    out.print(f"{summary}; {len(report.nothing_new)} with nothing new; {feeds}.", markup=False)
    if settings.smtp is None and report.count("sent"):
        out.print(f"Emails are in the Maildir {settings.outbox.maildir}/new", markup=False)


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


@main.command(short_help="Render a subscriber's next digest to HTML; send and record nothing.")
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
    from .. import run

    settings = ctx.settings()
    with ctx.store(settings) as store:
        try:  # (web sign-ups are subscribers too: the store knows them)
            run.select_subscribers(settings, [email], store=store, chosen=False)
        except DigestError as exc:
            fail(f"error: {exc}", 2)
        digest, rendered = run.preview(settings, store, email, fetch=not no_fetch)
    if output is None:
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="digest-preview-", suffix=".html", delete=False) as handle:
            output = Path(handle.name)
    output.write_text(rendered.html, encoding="utf-8")
    if text_output:
        text_output.write_text(rendered.text, encoding="utf-8")
    out.print(f"Subject: {rendered.subject}", markup=False)
    out.print(_preview_count(settings, digest), markup=False)
    out.print(str(output.resolve()), markup=False)
    if open_browser:
        import webbrowser

        url = output.resolve().as_uri()
        if not webbrowser.open(url):  # $BROWSER, else the desktop's default browser
            err.print(f"could not start a web browser: open {url} yourself", markup=False)


def _preview_count(settings: Settings, digest: Digest) -> str:
    """What the preview holds: its entries, those only counted ("and N more"), or nothing new."""
    if not digest.entry_count and not digest.more_count:
        email = "send_empty: the email says so" if settings.digest.send_empty else "no email would be sent"
        return f"0 entries: nothing new for {digest.subscriber} ({email})"
    shown = plural(digest.entry_count, "entry", "entries")
    return shown + (f", and {digest.more_count} more counted but not shown" if digest.more_count else "")
