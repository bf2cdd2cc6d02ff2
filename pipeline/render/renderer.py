"""The Renderer: one run's digests turned into emails, sharing every piece they have in common.

The Renderer makes what templates see (``views``), once per distinct entry and section of a
run, and hands each email's context to the two assemblers: ``html`` (pieces inlined once per
run) and ``text`` (pieces wrapped once per run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from ..config import Settings
from ..models import Digest, Match, RenderedDigest, Section
from ..text import clean_text
from ..web.vote_links import EmailLinks
from .catalogue import Catalogue
from .html import PREPARE_ERRORS, HtmlAssembler
from .pieces import EmailPlan
from .splice import TokenSplice
from .templates import (
    PREHEADER,
    RENDER_ERRORS,
    SUBJECT,
    TOKEN,
    load_templates,
    render_template,
    template_error,
)
from .text import TextAssembler
from .views import EntryView, SectionView, entry_view

log = logging.getLogger("digest")


class Renderer:
    """Renders digests for one run; per-entry and per-topic work is done once per run."""

    MEMO = 1024  # plans kept from ``prepare`` for ``render`` (a few claim batches)
    SECTIONS = 4096  # distinct sections kept, assembled, before starting over

    def __init__(self, settings: Settings, *, reader_links: bool = True) -> None:
        """``reader_links=False``: emails as an archive page shows them, without the links that
        act for the reader (preferences, unsubscribe, votes) and so without any of their
        tokens; the footer says they are left out. Everything else is the same."""
        self.settings = settings
        self.reader_links = reader_links
        override = settings.digest.templates
        templates = load_templates(override)
        self._subject, self._preheader = templates.whole[SUBJECT], templates.whole[PREHEADER]
        self._catalogue = Catalogue()
        self._title = clean_text(settings.digest.title)
        self._warned: set[str] = set()
        self._splice = TokenSplice()
        self._html = HtmlAssembler(
            templates, self._title, self._catalogue, self._warn, check=bool(override), splice=self._splice
        )
        self._text = TextAssembler(templates, self._title, self._warn, splice=self._splice)
        # Vote links ("more / less like this") and the archive need the web app: a base_url.
        self._links = EmailLinks(settings) if settings.digest.base_url and reader_links else None
        self._votes = self._links.vote_prefix(self._splice.marker) if self._links is not None else None
        self._zones = {s.email.lower(): settings.zone_of(s) for s in settings.subscribers}
        self._dates: dict[tuple[datetime, str], str] = {}
        self._views: dict[tuple[int, str, str, tuple[str, ...]], EntryView] = {}
        self._sections: dict[tuple[Any, ...], SectionView] = {}
        self._memo: dict[tuple[str, str], tuple[Digest, EmailPlan]] = {}

    @property
    def whole(self) -> bool:
        """Whether every email is inlined whole (pieces could not be used this run)."""
        return self._html.whole

    @property
    def premailer_calls(self) -> int:
        """How often premailer ran (for figures)."""
        return self._catalogue.premailer_calls

    @property
    def premailer_seconds(self) -> float:
        """How long premailer ran in all (for figures)."""
        return self._catalogue.premailer_seconds

    @property
    def section_count(self) -> int:
        """How many distinct sections the renderer holds, one view (and assembled parts) each."""
        return len(self._sections)

    def prepare(self, digests: Iterable[Digest]) -> None:
        """Inline, in as few premailer calls as possible, every piece these digests need."""
        self._html.prepare(self._plans(digests))

    def render(self, digest: Digest) -> RenderedDigest:
        """Subject, inlined HTML and wrapped text for one digest."""
        key = (digest.message_id, digest.subscriber)
        try:
            memo = self._memo.pop(key, None)
            plan = memo[1] if memo is not None and memo[0] == digest else self._plan(digest)
            context = plan.context
            html, html_parts = self._html.html(plan, check=bool(digest.sections))
            text, text_parts = self._text.text(context)
        except RENDER_ERRORS as exc:
            raise template_error(exc) from exc
        finally:
            self._memo.pop(key, None)  # a prepare made for this digest alone leaves nothing behind
        return RenderedDigest(
            subject=context["subject"],
            html=html,
            text=text,
            html_parts=tuple(html_parts or ()),
            text_parts=text_parts,
            token=context[TOKEN],
        )

    def subject(self, digest: Digest) -> str:
        """The digest's subject line alone (its archive page and feed entry show it)."""
        try:
            return str(self._context(digest)["subject"])
        except RENDER_ERRORS as exc:
            raise template_error(exc) from exc

    def render_whole(self, digest: Digest) -> RenderedDigest:
        """The same email rendered in one piece and inlined by one premailer call (slow)."""
        try:
            context = self._context(digest)
            html = self._html.whole_html(context)
            text = self._text.whole(context)
        except RENDER_ERRORS as exc:
            raise template_error(exc) from exc
        return RenderedDigest(subject=context["subject"], html=html, text=text)

    # --- plans ------------------------------------------------------------------------------------

    def _plans(self, digests: Iterable[Digest]) -> Iterator[EmailPlan]:
        """Each digest's plan, remembered for ``render``; none once every email is inlined whole."""
        for digest in digests:
            if self._html.whole:
                return
            try:
                plan = self._plan(digest)
            except PREPARE_ERRORS:
                continue  # ``render`` reports it for this digest alone
            self._remember(digest, plan)
            yield plan

    def _plan(self, digest: Digest) -> EmailPlan:
        return self._html.plan(self._context(digest))

    def _remember(self, digest: Digest, plan: EmailPlan) -> None:
        if len(self._memo) >= self.MEMO:
            del self._memo[next(iter(self._memo))]
        self._memo[(digest.message_id, digest.subscriber)] = (digest, plan)

    # --- what templates see -----------------------------------------------------------------------

    def _context(self, digest: Digest) -> dict[str, Any]:
        """What the layout, subject and preheader templates see."""
        sections = [self._section(section) for section in digest.sections]
        links = self.reader_links
        context: dict[str, Any] = {
            "title": self._title,
            "date": self._date(digest),
            "subscriber": {"email": digest.subscriber, "name": clean_text(digest.name or "")},
            "sections": sections,
            "total": digest.entry_count,
            "more": digest.more_count,
            "topics": [clean_text(t) for t in digest.topics],
            # (all None in an archived copy: ``archived`` says so, and no reader's token is in it)
            "unsubscribe_url": self.settings.unsubscribe_url(digest.subscriber) if links else None,
            "preferences_url": self.settings.preferences_url(digest.subscriber) if links else None,
            "archive_url": self._archive_url(digest.subscriber),  # (its page links the Atom feed)
            "archived": not links,
            "preheader": "",
            "subject": "",
            TOKEN: self._links.vote_token(digest.subscriber) if self._links is not None else "",
        }
        context["subject"] = clean_text(render_template(self._subject, context))
        context["preheader"] = clean_text(render_template(self._preheader, context))
        return context

    def _archive_url(self, email: str) -> str | None:
        """The reader's past digests (``BASE/archive/TOKEN``); None without a base_url."""
        return self._links.link("archive", email) if self._links is not None else None

    def _section(self, section: Section) -> SectionView:
        """The view of a section: one per distinct section in a run. A subscriber's sections
        leave out entries shown in another of their topics, so a section is shared by only a few
        subscribers, and assembled once for all of them."""
        key = (
            section.topic,
            section.title,
            section.more,
            tuple([(m.entry.id, m.topic, m.hits) for m in section.matches]),
        )
        view = self._sections.get(key)
        if view is None:
            if len(self._sections) >= self.SECTIONS:  # (a large run's sections seldom repeat)
                self._sections.clear()
                self._html.forget_sections()
                self._text.forget_sections()
                self._splice.forget()
            view = self._sections[key] = SectionView(
                topic=section.topic,
                title=clean_text(section.title),
                entries=tuple(self._view(m, section.title) for m in section.matches),
                more=section.more,
            )
        return view

    def _view(self, match: Match, section_title: str) -> EntryView:
        # Kept as long as the renderer: a view's identity is the key of its pieces (entry_key).
        key = (match.entry.id, match.topic, section_title, match.hits)
        view = self._views.get(key)
        if view is None:
            digest = self.settings.digest
            view = self._views[key] = entry_view(
                match.entry,
                match.hits,
                summary_words=digest.summary_words,
                images=digest.images,
                sentences=digest.summary_sentences if digest.summary == "sentences" else None,
                votes=self._votes,
            )
        return view

    def _date(self, digest: Digest) -> str:
        zone = self._zones.get(digest.subscriber.lower(), self.settings.digest.timezone)
        key = (digest.created_at, str(zone))
        date = self._dates.get(key)
        if date is None:
            local = digest.created_at.astimezone(zone)
            date = self._dates[key] = f"{local:%A} {local.day} {local:%B %Y}"
        return date

    def _warn(self, kind: str, message: str) -> None:
        """Log a warning once per kind per run."""
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("render warning=%r", message)
