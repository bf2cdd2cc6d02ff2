"""Digests -> messages (render, then compose), in helper processes when a send is large.

Rendering and composing cost ~1-2 ms of CPU an email, most of a large send, and one Python
process uses one core. :class:`Rendering` hands batches of digests to helper interpreters
(``python -m pipeline.workers``, see :mod:`pipeline.helper`). ``send`` starts them first thing,
so that their imports overlap the fetch, and gives them the digests as soon as they are
planned, so that they render while this process writes the outbox and talks SMTP.

Nothing depends on a helper: if one dies or cannot start, its batches are rendered here (with
a warning). A helper runs the same code on the same settings, so where an email was rendered
never shows in the email.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import helper
from .compose import compose_message
from .config import Settings
from .errors import RenderError
from .models import Digest, Entry, Match, OutgoingMessage, Section

if TYPE_CHECKING:  # imported where used: a large send renders in its helpers, not here
    from .render import Renderer

log = logging.getLogger("digest")

BATCH = 50  # digests per request: small enough that the first messages come back quickly
FIRST_BATCH = 10  # the first request of a run: it brings most entries, which cost the most
AHEAD = 2 * BATCH  # per helper, rendered before they are asked for (~70 KB each, held here)
MIN_SUBSCRIBERS = 300  # below this a helper's start (~0.6 s of CPU) costs more than it saves
MAX_WORKERS = 4

Result = OutgoingMessage | RenderError


def build_message(settings: Settings, renderer: Renderer, digest: Digest) -> OutgoingMessage:
    """Render one digest and compose its email (raises RenderError)."""
    rendered = renderer.render(digest)
    return compose_message(
        digest,
        rendered,
        sender=settings.sender,
        list_id=settings.list_id,
        unsubscribe=settings.unsubscribe_links(digest.subscriber),
        one_click=bool(settings.digest.base_url),
    )


def worker_count(settings: Settings, subscribers: int) -> int:
    """How many render helpers a send to ``subscribers`` people should start.

    None (0) for a small send (``digest run`` sends to one subscriber at a time); else
    ``[digest] render_workers``, by default one per core beyond this process's.
    """
    if subscribers < MIN_SUBSCRIBERS:
        return 0
    wanted = settings.digest.render_workers
    if wanted is None:
        wanted = min(MAX_WORKERS, len(os.sched_getaffinity(0)) - 1)
    return max(0, wanted)


class HelperDied(Exception):
    """A render helper stopped answering; its work is done here instead."""


class Rendering:
    """Turns digests into messages for one run: here, or in helpers, ahead of need.

    ``plan(digests)`` says which digests will be asked for, in that order: the helpers render
    them ahead, at most ``AHEAD`` messages per helper beyond what was asked for (memory stays
    bounded however large the send). ``messages(digests)`` returns them, in order, each
    an OutgoingMessage or the RenderError that stopped it.
    """

    def __init__(self, settings: Settings, workers: int = 0) -> None:
        self.settings = settings
        self.renderer: Renderer | None = None  # for rendering here, made when first needed
        self.workers: list[_Worker] = []
        for _ in range(workers):
            try:
                self.workers.append(_Worker(settings))
            except OSError as exc:
                log.warning("render helper could not start (%s): rendering here", exc)
                break
        self.ahead: deque[Digest] = deque()  # planned, not yet given to a helper
        self.ahead_ids: set[str] = set()
        self.given: dict[str, tuple[Future[Any], int]] = {}  # message id -> (reply, index in it)
        self.limit = AHEAD * max(1, len(self.workers))
        self.batch = FIRST_BATCH
        self.said: set[str] = set()  # warnings already logged (each helper would repeat them)

    def plan(self, digests: Iterable[Digest]) -> None:
        if not self._live():
            return
        for digest in digests:
            self.ahead.append(digest)
            self.ahead_ids.add(digest.message_id)
        self._top_up()

    def messages(self, digests: Sequence[Digest]) -> list[Result]:
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
        """How many digests to ask for at a time: helpers answer a batch at a time, so ask
        for few and send each as it comes; None: any number (rendered here, all at once)."""
        return FIRST_BATCH if self._live() else None

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers.clear()
        self.given.clear()

    # --- giving work to helpers -------------------------------------------------------------------

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers if w.dead is None]

    def _top_up(self) -> None:
        while self.ahead and len(self.given) < self.limit and self._live():
            self._give_next()

    def _give_until(self, message_id: str) -> None:
        while message_id in self.ahead_ids and self._live():
            self._give_next()
        if message_id in self.ahead_ids:  # no helper left
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
        worker = min(self._live(), key=lambda w: len(w.waiting))
        reply = worker.request(batch)
        for index, digest in enumerate(batch):
            self.given[digest.message_id] = (reply, index)

    def _result(self, reply: Future[Any], index: int) -> Result | None:
        try:
            results, warnings = reply.result()
        except HelperDied:  # (the helper said why when it died)
            return None
        for name, level, message in warnings:
            self._say(name, level, message)
        value = results[index]
        return RenderError(value) if isinstance(value, str) else value

    def _say(self, logger: str, level: int, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            logging.getLogger(logger).log(level, "%s", message)

    # --- rendering here ---------------------------------------------------------------------------

    def _render_here(self, digests: list[Digest]) -> list[Result]:
        if self.renderer is None:
            from .render import Renderer

            self.renderer = Renderer(self.settings)
        return _render_batch(self.settings, self.renderer, digests)


def _render_batch(settings: Settings, renderer: Renderer, digests: list[Digest]) -> list[Result]:
    renderer.prepare(digests)  # one premailer call for the pieces this batch brings
    results: list[Result] = []
    for digest in digests:
        try:
            results.append(build_message(settings, renderer, digest))
        except RenderError as exc:
            results.append(exc)
    return results


def _warm_up(settings: Settings, renderer: Renderer) -> None:
    """Render a made-up digest, while the parent still fetches and plans: the first email
    pays for parsing the stylesheet and for first calls into lxml, premailer and Jinja
    (0.2-0.4 s off a send's first batches, for ~0.1 s of otherwise idle time)."""
    if not settings.subscribers:
        return
    now = datetime.now(UTC)
    subscriber = settings.subscribers[0]
    topic = subscriber.topics[0]
    entry = Entry(
        id=-1,
        title="Warm-up",
        link="https://example.org/",
        summary_html="<p>Warm-up.</p>",
        authors=("A. Author",),
        categories=(),
        published=now,
        first_seen=now,
        feeds=("feed",),
    )
    title = settings.topics[topic].title or topic
    section = Section(topic, title, (Match(entry, topic, score=1, hits=("warm-up",)),))
    digest = Digest(subscriber.email, subscriber.name, (section,), (title,), now, "<warm-up@digest.invalid>")
    with contextlib.suppress(Exception):  # whatever fails here, a real digest meets and reports
        _render_batch(settings, renderer, [digest])


def _for_rendering(settings: Settings) -> Settings:
    """The settings a helper renders with: of the subscribers, only those rendering reads (each
    with a timezone of their own; the first, for the warm-up). 10,000 subscribers took 0.1 s
    to pickle here, as long again to unpickle there, and memory in both."""
    kept = [s for n, s in enumerate(settings.subscribers) if n == 0 or s.timezone is not None]
    return settings.model_copy(update={"subscribers": kept})


class _Worker:
    """One helper: requests go out through a writer thread, replies come back in order."""

    def __init__(self, settings: Settings) -> None:
        self.process = helper.start("pipeline.workers")
        self.outgoing: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self.outgoing.put(helper.frame(_for_rendering(settings)))  # answered with None, or why not
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
        reply: Future[Any] = Future()
        with self.lock:
            if self.dead is not None:
                reply.set_exception(HelperDied(self.dead))
                return reply
            self.waiting.append(reply)
            self.used = True
        self.outgoing.put(self._frame(digests))
        return reply

    def _frame(self, digests: list[Digest]) -> memoryview:
        """The batch, with the entries the helper already has sent by id: a batch of 50
        digests holds ~250 entries (~300 KB), most of them in every batch; sent once a run,
        a 2,000-digest send pickles 1.6 MB instead of 13.5 MB."""
        fresh: dict[int, Entry] = {}

        def entry_id(value: object) -> int | None:
            if type(value) is Entry:
                known = self.entries.get(value.id)
                if known is value or known == value:
                    return value.id
                fresh[value.id] = value
            return None

        data = helper.frame(digests, entry_id)
        self.entries.update(fresh)  # (the helper reads batches in order)
        return data

    def close(self) -> None:
        self.closing = True
        self.outgoing.put(None)  # the helper finishes its batch, reads the end of its stdin, exits
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
                helper.write_all(pipe.fileno(), data)
            except OSError:
                break  # the helper is gone: the reader sees it and says why
        pipe.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        pipe = self.process.stdout
        try:
            started = helper.receive(pipe)
            if started is not None:
                self._fail(f"it cannot render: {started}")
                self.process.kill()
            while True:
                reply = helper.receive(pipe)
                with self.lock:
                    waiting = self.waiting.popleft()
                waiting.set_result(reply)
        except EOFError:
            pass
        except Exception as exc:  # a torn or unreadable reply: the helper is not to be trusted
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
            reply.set_exception(HelperDied(self.dead))


# --- the helper's side --------------------------------------------------------------------------


class _Server:
    """The helper: answers the settings with None (or why it cannot render with them), then
    each batch of digests with ``(results, logged)``: per digest a message or an error text,
    and the warnings rendering logged."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.renderer: Renderer | None = None
        self.entries: dict[int, Entry] = {}  # every entry received, for later batches' ids
        self.logged: list[tuple[str, int, str]] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: self.logged.append(  # type: ignore[method-assign]
            (record.name, record.levelno, record.getMessage())
        )
        logging.getLogger().addHandler(handler)

    def __call__(self, request: Any) -> object:
        if isinstance(request, Settings):
            from .render import Renderer

            try:
                self.renderer = Renderer(request)
            except RenderError as exc:
                return str(exc)
            self.settings = request
            _warm_up(request, self.renderer)
            return None
        assert self.settings is not None and self.renderer is not None
        for digest in request:
            for section in digest.sections:
                for match in section.matches:
                    self.entries[match.entry.id] = match.entry
        results = _render_batch(self.settings, self.renderer, request)
        logged, self.logged = self.logged, []
        return [str(r) if isinstance(r, RenderError) else r for r in results], logged


if __name__ == "__main__":
    # Rarer collections: a render's garbage goes by reference counting, and each collection
    # walked the renderer's growing caches (the collector took 35 ms of a 2,000-digest send,
    # 120 ms of a 10,000 one; now ~15 ms, with the same peak memory).
    gc.set_threshold(10_000, 10, 10)
    server = _Server()
    helper.serve(server, server.entries.__getitem__)
