"""Digests -> messages (render, then compose), ahead of delivery, in child processes when a
send is large.

Rendering and composing are most of a large send's CPU, and one Python process uses one core.
:class:`RenderPool` hands batches of digests to render children (``python -m
pipeline.speed.render_child``, see :mod:`pipeline.child_process`). ``send`` starts them first
thing, so that their imports overlap the fetch, and gives them the digests as soon as they are
planned, so that they render while this process writes the outbox and talks SMTP.

Nothing depends on a child: if one dies or cannot start, its batches are rendered here (with a
warning). A child runs the same code on the same settings, so where an email was rendered never
shows in the email.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .. import child_process
from ..compose import digest_message
from ..config import Settings
from ..errors import RenderError
from ..models import Digest, Entry, OutgoingMessage

if TYPE_CHECKING:  # imported where used: a large send renders in its children, not here
    from ..render import Renderer
    from ..sign import DkimSigner

log = logging.getLogger("digest")

BATCH = 50  # digests per request: small enough that the first messages come back quickly
FIRST_BATCH = 10  # the first request of a run: it brings most entries, which cost the most
AHEAD = 2 * BATCH  # per child, rendered before they are asked for (each a whole email, held here)
MIN_SUBSCRIBERS = 300  # below this a child's start costs more than it saves
MAX_CHILDREN = 4

Result = OutgoingMessage | RenderError


def render_batch(
    settings: Settings, renderer: Renderer, digests: Sequence[Digest], signer: DkimSigner | None = None
) -> list[Result]:
    """Each digest's message (DKIM-signed by ``signer``, if any), or the RenderError that
    stopped it (one premailer call for all)."""
    renderer.prepare(digests)
    results: list[Result] = []
    for digest in digests:
        try:
            results.append(digest_message(settings, digest, renderer.render(digest), signer))
        except RenderError as exc:
            results.append(exc)
    return results


def pool_size(settings: Settings, subscribers: int) -> int:
    """How many render children a send to ``subscribers`` people should start.

    None (0) for a small send (``digest run`` sends to one subscriber at a time); else
    ``[digest] render_workers``, by default one per core beyond this process's.
    """
    if subscribers < MIN_SUBSCRIBERS:
        return 0
    wanted = settings.digest.render_workers
    if wanted is None:
        wanted = min(MAX_CHILDREN, len(os.sched_getaffinity(0)) - 1)
    return max(0, wanted)


class ChildDied(Exception):
    """A render child stopped answering; its work is done here instead."""


class RenderPool:
    """Turns digests into messages for one run: here, or in children, ahead of need.

    ``plan(digests)`` says which digests will be asked for, in that order: the children render
    them ahead, at most ``AHEAD`` messages per child beyond what was asked for (memory stays
    bounded however large the send). ``messages(digests)`` returns them, in order, each an
    OutgoingMessage or the RenderError that stopped it.
    """

    def __init__(self, settings: Settings, children: int = 0) -> None:
        from ..sign import load_signer

        self.settings = settings
        self.renderer: Renderer | None = None  # for rendering here, made when first needed
        # Loaded first: a bad [dkim] key stops a send before anything is planned or committed.
        # Children load it too, from the same settings; this one signs what is rendered here.
        self.signer = load_signer(settings)
        self.children: list[RenderChild] = []
        for _ in range(children):
            try:
                self.children.append(RenderChild(settings))
            except OSError as exc:
                log.warning("render helper could not start (%s): rendering here", exc)
                break
        self.ahead: deque[Digest] = deque()  # planned, not yet given to a child
        self.ahead_ids: set[str] = set()
        self.given: dict[str, tuple[Future[Any], int]] = {}  # message id -> (reply, index in it)
        self.limit = AHEAD * max(1, len(self.children))
        self.batch = FIRST_BATCH
        self.said: set[str] = set()  # warnings already logged (each child would repeat them)

    def plan(self, digests: Iterable[Digest]) -> None:
        """These digests will be asked for, in this order: the children may start on them."""
        if not self._live():
            return
        for digest in digests:
            self.ahead.append(digest)
            self.ahead_ids.add(digest.message_id)
        self._top_up()

    def messages(self, digests: Sequence[Digest]) -> list[Result]:
        """The messages of these digests, in order (rendered ahead, by a child, or here)."""
        others = []
        for digest in digests:
            if digest.message_id in self.ahead_ids:
                self._give_until(digest.message_id)
            elif digest.message_id not in self.given:
                others.append(digest)
        if others and self._live():
            self._give(others)
        results: list[Result | None] = []
        for digest in digests:
            reply = self.given.pop(digest.message_id, None)
            results.append(self._result(*reply) if reply is not None else None)
        here = [d for d, r in zip(digests, results, strict=True) if r is None]
        if here:
            done = iter(self._render_here(here))
            results = [r if r is not None else next(done) for r in results]
        self._top_up()
        return [r for r in results if r is not None]

    @property
    def step(self) -> int | None:
        """How many digests to ask for at a time: children answer a batch at a time, so ask
        for few and send each as it comes; None: any number (rendered here, all at once)."""
        return FIRST_BATCH if self._live() else None

    def close(self) -> None:
        for child in self.children:
            child.close()
        self.children.clear()
        self.given.clear()

    # --- giving work to children ------------------------------------------------------------------

    def _live(self) -> list[RenderChild]:
        return [c for c in self.children if c.dead is None]

    def _top_up(self) -> None:
        while self.ahead and len(self.given) < self.limit and self._live():
            self._give_next()

    def _give_until(self, message_id: str) -> None:
        while message_id in self.ahead_ids and self._live():
            self._give_next()
        if message_id in self.ahead_ids:  # no child left
            self.ahead_ids.discard(message_id)

    def _give_next(self) -> None:
        batch: list[Digest] = []
        size, self.batch = self.batch, BATCH
        while self.ahead and len(batch) < size:
            digest = self.ahead.popleft()
            if digest.message_id in self.ahead_ids:
                self.ahead_ids.discard(digest.message_id)
                batch.append(digest)
        if batch:
            self._give(batch)

    def _give(self, batch: list[Digest]) -> None:
        child = min(self._live(), key=lambda c: len(c.waiting))
        reply = child.request(batch)
        for index, digest in enumerate(batch):
            self.given[digest.message_id] = (reply, index)

    def _result(self, reply: Future[Any], index: int) -> Result | None:
        try:
            results, warnings = reply.result()
        except ChildDied:  # (the child said why when it died)
            return None
        for name, level, message in warnings:
            self._say(name, level, message)
        value = results[index]
        return RenderError(value) if isinstance(value, str) else value

    def _say(self, logger: str, level: int, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            logging.getLogger(logger).log(level, "%s", message)

    def _render_here(self, digests: list[Digest]) -> list[Result]:
        if self.renderer is None:
            from ..render import Renderer

            self.renderer = Renderer(self.settings)
        return render_batch(self.settings, self.renderer, digests, self.signer)


def for_rendering(settings: Settings) -> Settings:
    """The settings a child renders with: of the subscribers, only those rendering reads (each
    with a timezone of their own; the first, for the warm-up). Pickling every subscriber of a
    large list, and unpickling them there, costs time and memory in both processes."""
    kept = [s for n, s in enumerate(settings.subscribers) if n == 0 or s.timezone is not None]
    return settings.model_copy(update={"subscribers": kept})


class RenderChild:
    """One render child: requests go out through a writer thread, replies come back in order."""

    def __init__(self, settings: Settings) -> None:
        self.process = child_process.start("pipeline.speed.render_child")
        self.outgoing: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self.outgoing.put(child_process.frame(for_rendering(settings)))  # answered with None, or why not
        self.waiting: deque[Future[Any]] = deque()
        self.lock = threading.Lock()
        self.dead: str | None = None  # why it no longer takes work
        self.closing = False
        self.used = False
        self.entries: dict[int, Entry] = {}  # the entries it has, by id: each is sent once
        self.threads = [
            threading.Thread(target=self._write, name="render-writer", daemon=True),
            threading.Thread(target=self._read, name="render-reader", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def request(self, digests: list[Digest]) -> Future[Any]:
        """Send a batch; the future holds ``(results, warnings)`` (or raises ChildDied)."""
        reply: Future[Any] = Future()
        with self.lock:
            if self.dead is not None:
                reply.set_exception(ChildDied(self.dead))
                return reply
            self.waiting.append(reply)
            self.used = True
        self.outgoing.put(self.frame(digests))
        return reply

    def frame(self, digests: list[Digest]) -> memoryview:
        """The batch as sent, with the entries the child already has sent by id: a batch
        holds a few hundred entries, most of them also in every other batch of the run."""
        fresh: dict[int, Entry] = {}

        def entry_id(value: object) -> int | None:
            if type(value) is Entry:
                known = self.entries.get(value.id)
                if known is value or known == value:
                    return value.id
                fresh[value.id] = value
            return None

        data = child_process.frame(digests, entry_id)
        self.entries.update(fresh)  # (the child reads batches in order)
        return data

    def close(self) -> None:
        self.closing = True
        self.outgoing.put(None)  # the child finishes its batch, reads the end of its stdin, exits
        if not self.used:  # (nothing to render after all: no need to wait for its imports)
            self.process.kill()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:  # a huge batch: it only ever renders, so just stop it
            self.process.kill()
            self.process.wait()
        for thread in self.threads:
            thread.join()

    def _write(self) -> None:
        assert self.process.stdin is not None
        pipe = self.process.stdin
        while (data := self.outgoing.get()) is not None:
            try:
                child_process.write_all(pipe.fileno(), data)
            except OSError:
                break  # the child is gone: the reader sees it and says why
        pipe.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        pipe = self.process.stdout
        try:
            started = child_process.receive(pipe)
            if started is not None:
                self._fail(f"it cannot render: {started}")
                self.process.kill()
            while True:
                reply = child_process.receive(pipe)
                with self.lock:
                    waiting = self.waiting.popleft()
                waiting.set_result(reply)
        except EOFError:
            pass
        except Exception as exc:  # a torn or unreadable reply: the child is not to be trusted
            self.process.kill()
            self._fail(f"bad reply: {exc!r}")
        self._fail(f"exit code {self.process.wait()}")

    def _fail(self, reason: str) -> None:
        with self.lock:
            first, self.dead = self.dead is None, self.dead or reason
            waiting, self.waiting = self.waiting, deque()
        if first and not self.closing:
            log.warning("render helper stopped (%s): rendering its digests here", reason)
        for reply in waiting:
            reply.set_exception(ChildDied(self.dead))
