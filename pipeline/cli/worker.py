"""``digest worker``: one of N task workers sharing a PostgreSQL state database."""

from __future__ import annotations

import logging
import sys

import click

from ..errors import WorkerError
from .base import Context, handle_errors, main


@main.command(name="worker", short_help="Run a task worker: one of N, on any machines, sharing PostgreSQL.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 32),
    default=2,
    show_default=True,
    metavar="N",
    help="Jobs this worker runs at once.",
)
@click.pass_obj
@handle_errors
def worker_command(ctx: Context, concurrency: int) -> None:
    """Run a worker in the foreground: fetch, plan and send digests on schedule, sharing the
    work with every other worker of the same PostgreSQL database ([digest] database).

    Start as many as you like, on any machines; each applies the task tables on start. Stop
    one with SIGTERM or Ctrl-C: it finishes or hands back what it holds and exits 0. On an
    SQLite state file, use digest run instead. `digest status` lists the live workers.

    Example: digest --config config/digest.toml worker --concurrency 2
    """
    from ..worker.database import require_postgresql

    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))
    if root.level > logging.DEBUG:  # (procrastinate logs every job at INFO)
        logging.getLogger("procrastinate").setLevel(logging.WARNING)
    settings = ctx.settings()
    require_postgresql(settings)  # (before the store opens: it would create an SQLite file)
    try:
        from ..worker import run_worker
    except ImportError as exc:  # (procrastinate comes with the postgres extra)
        raise WorkerError(
            f"digest worker needs procrastinate: pip install 'digest[postgres]' ({exc})"
        ) from exc
    with ctx.store(settings) as store:
        code = run_worker(settings, store, concurrency=concurrency)
    sys.exit(code)
