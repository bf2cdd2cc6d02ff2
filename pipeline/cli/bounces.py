"""The bounce verbs: ``bounces`` (read the bounce mailbox once) and ``unsuppress``."""

from __future__ import annotations

import click
from rich.text import Text

from .base import Context, err, fail, handle_errors, main, out, when
from .words import plural


@main.command(short_help="Read the bounce mailbox: record bounces, suppress dead addresses.")
@click.pass_obj
@handle_errors
def bounces(ctx: Context) -> None:
    """Read the [bounces] mailbox (IMAP or a Maildir) once and record every bounce in it.

    Each bounce is matched to its digest by the VERP address it came back to (a bounce
    without a valid token is ignored) and counted; past hard_limit hard or soft_limit soft
    bounces in a row the subscriber is suppressed (no more digests). What was processed is
    moved to processed_folder; a message that is no bounce digest can read is left where it
    is and listed on standard error with why, once (later readings pass over it). `digest run`
    does the same every [bounces] every. Exit 0 when the mailbox could be read, 1 when not, 2
    without [bounces].

    Example: digest --config config/digest.toml bounces
    """
    from .. import run

    settings = ctx.settings()
    if settings.bounces is None:
        fail(f"error: {settings.path} has no [bounces] section (see README, Bounces)", 2)
    with ctx.store(settings) as store:
        report = run.read_bounces(settings, store)
    for o in report.outcomes:
        # Text(): bounce texts come from anywhere and are never read as markup.
        line = Text(f"{o.ref}: {o.result}: {o.detail}" + (f" [{o.subscriber}]" if o.subscriber else ""))
        (err if o.result == "left" else out).print(line, soft_wrap=True)
    recorded, ignored, left = (report.count(r) for r in ("recorded", "ignored", "left"))
    suppressed = sum(o.suppressed for o in report.outcomes)
    out.print(
        f"{report.mailbox}: {plural(len(report.outcomes), 'message')} read, {recorded} recorded, "
        f"{ignored} ignored, {left} left in place"
        + (f" ({report.passed_over} more left before, not read again)" if report.passed_over else "")
        + f"; {plural(suppressed, 'subscriber')} newly suppressed",
        markup=False,
    )


@main.command(short_help="Lift a bounce suppression: digests go to that address again.")
@click.argument("email")
@click.pass_obj
@handle_errors
def unsuppress(ctx: Context, email: str) -> None:
    """Lift EMAIL's suppression after bounces and reset their bounce counts to zero.

    Do it once the address works again (the subscriber fixed their mailbox, or a typo in the
    config was corrected): their next scheduled digest goes out as usual. Exit 0 when EMAIL
    was suppressed or had bounces counted, 1 when it had neither.

    Example: digest --config config/digest.toml unsuppress ada@example.org
    """
    from .. import run

    settings = ctx.settings()
    with ctx.store(settings) as store:
        lifted, counted = run.unsuppress(store, email)
    if lifted is not None:
        out.print(
            Text(
                f"{lifted.subscriber}: no longer suppressed (it was since {when(lifted.since)}, "
                f"{lifted.kind} bounce {lifted.status or ''}); bounce counts reset"
            )
        )
    elif counted:
        out.print(Text(f"{email}: was not suppressed; {plural(counted, 'bounce')} no longer counted"))
    else:
        fail(f"error: {email} is not suppressed and has no bounces counted", 1)
