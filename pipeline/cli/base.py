"""What every verb shares: the output consoles, the config and store context, error handling,
logging (configured here and nowhere else), and the ``digest`` group itself."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from .. import __version__
from ..config import Settings, config_path, load_settings
from ..errors import ConfigError, DigestError, MatchError

if TYPE_CHECKING:
    from ..store import Store


F = TypeVar("F", bound=Callable[..., Any])
LIST_LIMIT = 20  # beyond this many digests, `send` lists only the ones that were not sent

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


def handle_errors(func: F) -> F:
    """Turn the pipeline's errors into messages and exit codes, never tracebacks."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail("\n".join(exc.problems) + f"\n{len(exc.problems)} problem(s) in the config.", 2)
        except MatchError as exc:
            # A topic that does not compile is a mistake in the config: name the file, exit 2.
            path = config_path(args[0].config if args and isinstance(args[0], Context) else None)
            lines = [f"{path}: {problem}" for problem in exc.problems]
            fail("\n".join(lines) + f"\n{len(lines)} problem(s) in the config.", 2)
        except DigestError as exc:
            fail(f"error: {exc}", 1)
        return None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def when(value: datetime | None) -> str:
    """A time as the faces print it: local, to the minute, with the zone; "-" for none."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M %Z") if value else "-"


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
    setup_logging(verbose, quiet)
    ctx.obj = Context(config)
