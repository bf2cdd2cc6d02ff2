"""The speed machinery of a send, behind one handle: :class:`Speedups`.

The chain (:mod:`pipeline.run`) reads top to bottom as stages; everything that only makes a
large send faster sits here, and a :class:`Speedups` is the one speed argument the chain
takes:

- an early feed parser: ``digest send`` starts it before its own heavy imports and before
  reading the config, so that the parser's start uses the otherwise idle second core;
- a render pool (:mod:`pipeline.speed.render_pool`): child processes that render and compose
  digests from the moment they are planned, while this process writes the outbox and talks
  SMTP;
- the digests just planned, handed to delivery by Message-ID, so that it need not rebuild them
  from their stored form;
- garbage-collector pauses (:mod:`pipeline.speed.collector`) around planning and delivery.

None of it changes an email: a rendered message is the same bytes wherever it was made, and
every piece has a plain fallback (a dead child's digests are rendered here).
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Sequence
from contextlib import AbstractContextManager

from ..config import Settings
from ..models import Digest
from ..parse import ParserProcess
from . import collector
from .render_pool import RenderPool, pool_size

__all__ = ["RenderPool", "Speedups", "pool_size"]


class Speedups:
    """What makes one send fast; a fresh one does nothing early and renders in this process."""

    def __init__(self) -> None:
        self._parser: ParserProcess | None = None
        self._pool: RenderPool | None = None
        self._planned: dict[str, Digest] = {}

    @classmethod
    def for_command(cls, *, fetch: bool = True) -> Speedups:
        """For a command that makes one send and exits: the parser starts now (if it will
        fetch), and the interpreter's last garbage collection at exit (a walk over every object
        the send made, all of which go with the process anyway) is skipped."""
        speed = cls()
        if fetch:
            speed._parser = ParserProcess().start()
        atexit.register(gc.freeze)
        return speed

    def take_parser(self) -> ParserProcess | None:
        """The parser started early, if any; whoever takes it stops it."""
        parser, self._parser = self._parser, None
        return parser

    def start_rendering(self, settings: Settings, subscribers: int) -> None:
        """Start the render pool a send to this many subscribers is worth (children start now,
        so that their imports overlap the fetch)."""
        if self._pool is None:
            self._pool = RenderPool(settings, pool_size(settings, subscribers))

    def render_pool(self, settings: Settings) -> RenderPool:
        """The pool that turns digests into messages (rendering here, if none was started)."""
        if self._pool is None:
            self._pool = RenderPool(settings)
        return self._pool

    def planned(self, digests: Sequence[Digest]) -> None:
        """These digests were just planned and will be delivered in this order."""
        self._planned = {d.message_id: d for d in digests}
        if self._pool is not None:
            self._pool.plan(digests)

    def take_planned(self, message_id: str) -> Digest | None:
        """The digest with this Message-ID as planned by this run (once), if it was."""
        return self._planned.pop(message_id, None)

    @staticmethod
    def planning() -> AbstractContextManager[None]:
        """Around planning: it makes many records that all live on (no collection meanwhile)."""
        return collector.paused()

    @staticmethod
    def delivering() -> AbstractContextManager[None]:
        """Around the outbox and delivery: what exists now lives until the send ends."""
        return collector.settled()

    def close(self) -> None:
        """Stop what was started (a parser never taken, the render pool)."""
        if self._parser is not None:
            self._parser.close()
            self._parser = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._planned.clear()

    def __enter__(self) -> Speedups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
