"""What every verb shares: the output consoles, the config and store context, error handling,
logging (configured here and nowhere else), and the ``digest`` group itself."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import click
from rich.console import Console

from .. import __version__
from ..config import Settings, config_path, load_settings
from ..errors import ConfigError, DigestError, MatchError
from .words import plural

if TYPE_CHECKING:
    from ..store import Store


F = TypeVar("F", bound=Callable[..., Any])
LIST_LIMIT = 20  # beyond this many digests, `send` lists only the ones that were not sent

PIPED_WIDTH = 1000  # piped output is not wrapped: each feed and subscriber stays one greppable line

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)
err = Console(
    stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else PIPED_WIDTH
)


def output_width(stream: IO[str]) -> int:
    """How wide the faces print on ``stream``: $COLUMNS when it is set, else the terminal's
    width, else (piped output) wide enough never to wrap."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if stream.isatty():
        try:
            return os.get_terminal_size(stream.fileno()).columns or 80
        except (OSError, ValueError):
            return 80
    return PIPED_WIDTH


def fit_consoles() -> None:
    """Size both consoles for this command, on the streams it writes to now."""
    out.width = output_width(sys.stdout)
    err.width = output_width(sys.stderr)


class Context:
    """What every verb needs: the config path and, loaded on demand, settings and store."""

    def __init__(self, config: str | None) -> None:
        self.config = config

    def settings(self) -> Settings:
        return load_settings(self.config)

    @contextmanager
    def store(self, settings: Settings) -> Iterator[Store]:
        from ..store import Store

        with Store(settings.digest.database_url) as store:
            yield store


def setup_logging(verbose: int, quiet: bool) -> None:
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


def fail(message: str, code: int) -> None:
    err.print(message, markup=False)
    sys.exit(code)


def config_problems(problems: Sequence[str]) -> str:
    """Every problem of a config, a line each, then how many there are."""
    return "\n".join(problems) + f"\n{plural(len(problems), 'problem')} in the config."


def handle_errors(func: F) -> F:
    """Turn the pipeline's errors into messages and exit codes, never tracebacks."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(config_problems(exc.problems), 2)
        except MatchError as exc:
            # A topic that does not compile is a mistake in the config: name the file, exit 2.
            path = config_path(args[0].config if args and isinstance(args[0], Context) else None)
            fail(config_problems([f"{path}: {problem}" for problem in exc.problems]), 2)
        except DigestError as exc:
            fail(f"error: {exc}", 1)
        return None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def when(value: datetime | None, zone: ZoneInfo | None = None) -> str:
    """A time as the faces print it: to the minute, with the zone's name; in ``zone`` (a
    subscriber's) when given, else in this machine's; "-" for none."""
    if value is None:
        return "-"
    return (value.astimezone(zone) if zone else value.astimezone()).strftime("%Y-%m-%d %H:%M %Z")


def summary(command: click.Command) -> str:
    """A command's one-line summary, whole: its ``short_help``, else its help's first paragraph."""
    if command.short_help:
        return command.short_help
    first = inspect.cleandoc(command.help or "").split("\n\n", 1)[0]
    return " ".join(first.split())


class DigestGroup(click.Group):
    """The ``digest`` group: its list of commands shows each summary whole (click would cut
    it to fit one line, mid-sentence, with "..."); long ones wrap instead."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, summary(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=DigestGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    """Topic-filtered email digests of research feeds.

    digest fetches the feeds of the config (--config, else $DIGEST_CONFIG, else
    config/digest.toml), keeps for each subscriber the new entries on their topics, and
    emails each of them one digest (into the Maildir [outbox] maildir when the config has no
    [smtp] section). Each verb's --help describes it.

    \b
    Examples:
      digest check                              validate the config (offline)
      digest fetch                              pull the feeds: a row per feed
      digest send --dry-run                     what would be sent; sends nothing
      digest send                               fetch, then send each new digest
      digest status                             feeds, subscribers, the outbox
      digest match --topic rl --since 30d       what a topic matches, to tune it
      digest match --explain 2611.03377         why an entry matched or did not
      digest preview -s ada@example.org --open  the next digest, in a browser
      digest run                                send on each subscriber's schedule
      digest worker                             one of N workers on PostgreSQL
      digest serve                              readers' links: unsubscribe, prefs
      digest links -s ada@example.org           a reader's signed links
    """
    setup_logging(verbose, quiet)
    fit_consoles()
    ctx.obj = Context(config)
