"""``digest run``: the scheduler in the foreground."""

from __future__ import annotations

import logging
import sys

import click

from .base import Context, handle_errors, main


@main.command(name="run", short_help="Run the scheduler: fetch and send on each subscriber's schedule.")
@click.pass_obj
@handle_errors
def run_command(ctx: Context) -> None:
    """Run the scheduler in the foreground: fetch feeds and send digests on schedule.

    Stop it with Ctrl-C or SIGTERM; SIGHUP reloads the config. One runs per state database
    (it holds a lease there): `digest status` says whether one is running, and where.

    Example: digest --config config/digest.toml run
    """
    from ..schedule import run_scheduler

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    settings = ctx.settings()
    with ctx.store(settings) as store:
        code = run_scheduler(ctx.config, store)
    sys.exit(code)
