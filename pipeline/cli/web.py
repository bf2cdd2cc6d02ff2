"""The web face's verbs: ``serve`` (the reader-facing app) and ``links`` (a reader's URLs)."""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import click

from .base import Context, handle_errors, main, out, when


@main.command(short_help="Serve the reader web app: one-click unsubscribe, preferences.")
@click.option("--host", metavar="HOST", help="Listen on this address (default: from [web] listen).")
@click.option(
    "--port", type=click.IntRange(0, 65535), metavar="PORT", help="Listen on this port (0: any free one)."
)
@click.pass_obj
@handle_errors
def serve(ctx: Context, host: str | None, port: int | None) -> None:
    """Serve the web app readers reach through their links, on [web] listen.

    It reads the same config and state database as send and run. It needs [digest] base_url
    (its public address; run it behind a reverse proxy that does TLS) and the signing key in
    the environment variable [web] secret_env names (DIGEST_WEB_SECRET by default). Stop it
    with Ctrl-C or SIGTERM; restart it after editing the config.

    Example: DIGEST_WEB_SECRET=$(cat /etc/digest/web.key) digest serve --port 8080
    """
    from ..web.server import serve as serve_app

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    settings = ctx.settings()

    def ready(address: str) -> None:
        out.print(f"serving on {address} (public address {settings.digest.base_url})", markup=False)

    with ctx.store(settings) as store:
        serve_app(settings, store, host=host, port=port, ready=ready)


@main.command(short_help="Print a reader's links: unsubscribe, preferences, archive, feed.")
@click.option("--subscriber", "-s", "email", required=True, metavar="EMAIL", help="The subscriber.")
@click.pass_obj
@handle_errors
def links(ctx: Context, email: str) -> None:
    """Print a subscriber's signed links: unsubscribe, preferences, archive and feed.

    For sending someone their own links. Anyone holding a link can act on it for that reader:
    send it only to them. Needs [digest] base_url and the signing key ([web] secret_env).

    Example: digest links --subscriber ada@example.org
    """
    from ..run import known_subscriber, select_subscribers
    from ..web.links import reader_links

    settings = ctx.settings()
    with ctx.store(settings) as store:  # (web sign-ups are subscribers too)
        subscriber = known_subscriber(settings, store, email)
        if subscriber is None:
            select_subscribers(settings, [email], store=store)  # (the error naming the known ones)
            return
    found = reader_links(settings, subscriber.email)
    for label, url in (
        ("unsubscribe", found.unsubscribe),
        ("preferences", found.preferences),
        ("archive", found.archive),
        ("feed", found.feed),
    ):
        out.print(f"{label + ':':13} {url}", markup=False)


def reader_note(
    unsubscribed_at: datetime | None, via: str | None, paused_until: datetime | None, zone: ZoneInfo | None
) -> str | None:
    """Why a reader gets no digest, as ``status``, ``send`` and ``check`` say it; None if they do."""
    if unsubscribed_at is not None:
        return f"unsubscribed ({via or 'web'}, at {when(unsubscribed_at, zone)})"
    if paused_until is not None:
        return f"paused until {when(paused_until, zone)}"
    return None
