"""``digest run``: the scheduler in the foreground."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    pass

from .base import Context, handle_errors, main


@main.command(name="run")
@click.pass_obj
@handle_errors
def run_command(ctx: Context) -> None:
    """Run the scheduler in the foreground: fetch feeds and send digests on schedule.

    Stop it with Ctrl-C or SIGTERM; SIGHUP reloads the config.

    Example: digest --config config/digest.toml run
    """
    from ..schedule import run_scheduler

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    settings = ctx.settings()
    with ctx.store(settings) as store:
        code = run_scheduler(ctx.config, store)
    sys.exit(code)
