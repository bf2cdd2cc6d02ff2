"""One exception base for the whole pipeline, one subclass per stage.

Stages raise these ``from`` the underlying cause; ``run`` catches them per feed and per
subscriber so that one bad feed or one bad address never stops a run, and the CLI turns them
into a message and an exit code (never a traceback).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta


class DigestError(Exception):
    """Base of every error the pipeline reports to users."""


class ConfigError(DigestError):
    """The configuration file is unreadable or invalid; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class FetchError(DigestError):
    """A feed could not be downloaded.

    ``status`` is the HTTP status when the server answered, ``retry_after`` the delay it asked
    for (429/503 with Retry-After), ``elapsed`` how long the attempt took in seconds.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: timedelta | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.elapsed = 0.0


class ParseError(DigestError):
    """A feed's bytes could not be turned into entries."""


class StoreError(DigestError):
    """The state database could not be read or written."""


class MatchError(DigestError):
    """A topic's keywords or query are invalid.

    ``key`` is the config key path of the problem (``("topics", "rl", "query")``), so that
    ``check`` can name its line; ``position`` the 1-based character of the query where it is
    (None: the whole query, or not a query); an error that gathers several problems lists them
    in ``problems``.
    """

    def __init__(
        self,
        message: str,
        key: tuple[str | int, ...] = (),
        *,
        position: int | None = None,
        problems: Sequence[MatchError] = (),
    ) -> None:
        super().__init__(message)
        self.key = key
        self.position = position
        self.problems: tuple[MatchError, ...] = tuple(problems) or (self,)


class RenderError(DigestError):
    """A template failed to render."""


class DeliveryError(DigestError):
    """A message could not be delivered.

    ``transient`` says whether trying again later may succeed (4xx replies, connection
    problems) or not (other 5xx replies, a refused address, a message too big).
    ``connection`` says the server could not be used at all (no connection, TLS or login
    failed): no message can go now. ``operator`` says the fault is ours or the server's, not
    the message's (the config, a refused login, the server refusing this client or sender):
    nothing can go until someone fixes it, so the run stops and the digests stay pending.
    ``after_data`` says the connection was lost after the whole message was sent: the server
    may have stored it (RFC 1047), so it is not sent again within the run.
    ``recipient`` says the server refused the recipient at RCPT (a bounce of that address).
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        code: int | None = None,
        connection: bool = False,
        operator: bool = False,
        after_data: bool = False,
        recipient: bool = False,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.recipient = recipient
        self.code = code
        self.connection = connection or operator
        self.operator = operator
        self.after_data = after_data


class ScheduleError(DigestError):
    """The scheduler cannot start or run."""


class BounceError(DigestError):
    """A bounce cannot be read, or the bounce mailbox cannot be used."""


class WebError(DigestError):
    """The web face (``digest serve``) cannot start, or a link cannot be signed."""


class WorkerError(DigestError):
    """``digest worker`` cannot start or run (not PostgreSQL, the task engine's schema)."""
