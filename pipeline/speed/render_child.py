"""The render child (``python -m pipeline.speed.render_child``): the other end of a RenderPool.

It answers the settings with None (or why it cannot render with them), then each batch of
digests with ``(results, logged)``: per digest a message or an error text, and the warnings
rendering logged (the pool logs each once).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import child_process
from ..config import Settings
from ..errors import ConfigError, RenderError
from ..models import Digest, Entry, Match, Section
from .render_pool import render_batch

if TYPE_CHECKING:
    from ..render import Renderer
    from ..sign import DkimSigner


def sample_digest(settings: Settings) -> Digest | None:
    """A made-up one-entry digest for the first subscriber (None without subscribers)."""
    if not settings.subscribers:
        return None
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
    title = settings.topic_title(topic)
    section = Section(topic, title, (Match(entry, topic, score=1, hits=("warm-up",)),))
    return Digest(subscriber.email, subscriber.name, (section,), (title,), now, "<warm-up@digest.invalid>")


def warm_up(settings: Settings, renderer: Renderer, signer: DkimSigner | None = None) -> None:
    """Render a made-up digest while the parent still fetches and plans: the first email pays
    for parsing the stylesheet and for the first calls into lxml, premailer and Jinja, and
    this child is idle meanwhile anyway."""
    digest = sample_digest(settings)
    if digest is None:
        return
    # A template problem is not this digest's to report: the first real digest meets it and
    # reports it for itself.
    with contextlib.suppress(RenderError):
        render_batch(settings, renderer, [digest], signer)


class RenderService:
    """The child's state: its settings, its renderer, and every entry it was sent."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.renderer: Renderer | None = None
        self.signer: DkimSigner | None = None
        self.entries: dict[int, Entry] = {}  # every entry received, for later batches' ids
        self.logged: list[tuple[str, int, str]] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: self.logged.append(  # type: ignore[method-assign]
            (record.name, record.levelno, record.getMessage())
        )
        logging.getLogger().addHandler(handler)

    def __call__(self, request: Any) -> object:
        if isinstance(request, Settings):
            from ..render import Renderer
            from ..sign import load_signer

            try:
                self.renderer = Renderer(request)
                self.signer = load_signer(request)
            except (RenderError, ConfigError) as exc:
                return str(exc)
            self.settings = request
            warm_up(request, self.renderer, self.signer)
            return None
        assert self.settings is not None and self.renderer is not None
        for digest in request:
            for section in digest.sections:
                for match in section.matches:
                    self.entries[match.entry.id] = match.entry
        results = render_batch(self.settings, self.renderer, request, self.signer)
        logged, self.logged = self.logged, []
        return [str(r) if isinstance(r, RenderError) else r for r in results], logged


if __name__ == "__main__":
    # Rarer collections: a render's garbage goes by reference counting, and each collection
    # walks the renderer's caches, which grow through the run.
    gc.set_threshold(10_000, 10, 10)
    service = RenderService()
    child_process.serve(service, service.entries.__getitem__)
