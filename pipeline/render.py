"""Turn a :class:`Digest` into its subject, HTML part and plain-text part.

Templates live in ``templates/``; ``[digest] templates`` names a folder whose files override
them by name. Autoescaping is on for every template but the ``*.txt.j2`` ones, set
explicitly because ``select_autoescape`` does not know ``.j2`` names, and undefined
variables are errors (``StrictUndefined``). Feed HTML is sanitised (``summary``) before it
reaches a template, and feed text is only ever a template *value*, never template source.

An email is built from pieces, each rendered and inlined once per run, not once per
subscriber (see ``inline`` for why the result equals inlining the whole email):

- ``digest.html.j2`` / ``digest.txt.j2``, the layout, rendered per subscriber; it includes
  ``_topic.*.j2`` once per section, in a ``{% for section in sections %}`` loop.
- ``_topic.*.j2`` sees ``section`` (``topic``, ``title``, ``count``, ``more``, ``entries``)
  and the run-wide ``title``; it includes ``_entry.*.j2`` once per entry of
  ``section.entries``. It is rendered once per distinct (topic, count, more).
- ``_entry.*.j2`` sees ``entry``, ``section.topic``, ``section.title`` and ``title``; it is
  rendered once per (entry, topic, hits) in a run.

Use: ``renderer = Renderer(settings)``; ``renderer.prepare(digests)`` for each batch (one
premailer call for everything the batch needs that the run has not inlined yet);
``renderer.render(digest)`` per subscriber. ``render`` also works without ``prepare``
(it then prepares that one digest itself, which is slow).
"""

from __future__ import annotations

import logging
import textwrap
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from lxml import etree
from markupsafe import Markup

from .config import Settings
from .errors import RenderError
from .inline import Inlined, Shape, inline_css, inline_pieces, piecewise_blockers, shape_of
from .models import Digest, Entry, Match, RenderedDigest
from .summary import highlight_html, highlight_text, html_to_text, sanitize_html, shorten_html
from .text import clean_text, has_control

log = logging.getLogger("digest")

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TEXT_WIDTH = 78
MAX_AUTHORS = 6  # more are shortened to the first five and "et al."

LAYOUT_HTML, LAYOUT_TEXT = "digest.html.j2", "digest.txt.j2"
TOPIC_HTML, TOPIC_TEXT = "_topic.html.j2", "_topic.txt.j2"
ENTRY_HTML, ENTRY_TEXT = "_entry.html.j2", "_entry.txt.j2"
SUBJECT, PREHEADER = "subject.txt.j2", "preheader.txt.j2"
TEMPLATES = (LAYOUT_HTML, LAYOUT_TEXT, TOPIC_HTML, TOPIC_TEXT, ENTRY_HTML, ENTRY_TEXT, SUBJECT, PREHEADER)

SLOT = "\ue002"  # what a stubbed partial writes where its output would go
_SLOT_STUB = {
    TOPIC_HTML: "{{ __slot__(section) }}",
    TOPIC_TEXT: "{{ __slot__(section) }}",
    ENTRY_HTML: "{{ __slot__(entry) }}",
    ENTRY_TEXT: "{{ __slot__(entry) }}",
}


# --- templates ---------------------------------------------------------------------------------


def _autoescape(name: str | None) -> bool:
    return not (name or "").endswith(".txt.j2")


class _StubLoader(jinja2.BaseLoader):
    """A loader that answers some template names with a one-line stub."""

    def __init__(self, inner: jinja2.BaseLoader, stubs: Iterable[str]) -> None:
        self.inner = inner
        self.stubs = {name: _SLOT_STUB[name] for name in stubs}

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str | None, Any]:
        if template in self.stubs:
            return self.stubs[template], None, lambda: True
        return self.inner.get_source(environment, template)


def template_environment(override: str | None, *, stubs: Iterable[str] = ()) -> jinja2.Environment:
    """The Jinja2 environment: overrides first, then the built-in templates.

    ``stubs`` names partials replaced by a marker (used to cut an email into pieces).
    """
    folders = [override, str(BUILTIN_TEMPLATES)] if override else [str(BUILTIN_TEMPLATES)]
    loader: jinja2.BaseLoader = jinja2.FileSystemLoader(folders)
    stubs = tuple(stubs)
    if stubs:
        loader = _StubLoader(loader, stubs)
    return jinja2.Environment(
        loader=loader,
        autoescape=_autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,  # partials end with their last newline: text pieces are whole lines
        auto_reload=False,
    )


def template_error(exc: Exception) -> RenderError:
    """A RenderError naming the template file and line where ``exc`` happened."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return RenderError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}")
    if isinstance(exc, jinja2.TemplateNotFound):
        return RenderError(f"template not found: {exc.name}")
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith((".j2", ".css")):
            where = f"{frame.filename}:{frame.lineno}: "
            break
    return RenderError(f"{where}template error: {exc}")


# --- what templates see ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryView:
    """One entry as templates see it; every field is safe to print."""

    title: str  # plain text
    title_html: Markup  # escaped, hit words in <mark>
    link: str | None  # http(s) only; otherwise the title is not linked
    authors: str
    feeds: str
    date: str
    byline: str  # authors · feeds · date
    summary_html: Markup  # sanitised, shortened, hit words in <mark>
    summary_text: str  # the same as plain text, links as [n]
    links: tuple[str, ...]  # the targets of [1], [2]...
    hits: tuple[str, ...]  # the keywords that made it match
    shortened: bool  # the summary was cut at summary_words


@dataclass(frozen=True, slots=True)
class SectionRef:
    """What an entry partial sees of its section."""

    topic: str
    title: str


@dataclass(frozen=True, slots=True)
class SectionView:
    """One topic's part of an email."""

    topic: str
    title: str
    entries: tuple[EntryView, ...]
    more: int

    @property
    def count(self) -> int:
        return len(self.entries)


class _NotPiecewise(Exception):
    """This digest's templates cannot be assembled from pieces (inline the whole email)."""


@dataclass(slots=True)
class _Frame:
    """A template's output cut where its stubbed partials were: parts[0] slot parts[1]..."""

    parts: list[str]
    slots: list[int]  # which item (index into the sequence given) went into each slot


def _render_frame(template: jinja2.Template, context: dict[str, Any], items: Sequence[object]) -> _Frame:
    included: list[object] = []

    def slot(item: object) -> Markup:
        included.append(item)
        return Markup(SLOT)

    out = template.render({**context, "__slot__": slot})
    parts = out.split(SLOT)
    if len(parts) != len(included) + 1:
        raise _NotPiecewise(f"{template.name}: a slot marker was written outside a slot")
    slots = []
    for item in included:
        index = next((i for i, candidate in enumerate(items) if candidate is item), None)
        if index is None:
            raise _NotPiecewise(f"{template.name}: includes a partial for something not in the list")
        slots.append(index)
    return _Frame(parts, slots)


@dataclass(slots=True)
class _HtmlLayout:
    """A subscriber's layout: head and tail shapes with their values, section order, gaps."""

    head: Shape
    head_values: tuple[str, ...]
    tail: Shape | None
    tail_values: tuple[str, ...]
    gaps: list[str]  # whitespace between sections
    sections: list[int]

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.head.source, self.tail.source if self.tail else None)


@dataclass(slots=True)
class _HtmlTopic:
    """A section's frame: shapes, values, entry order and the whitespace between entries."""

    head: Shape
    head_values: tuple[str, ...]
    tail: Shape | None
    tail_values: tuple[str, ...]
    gaps: list[str]
    entries: list[int]

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.head.source, self.tail.source if self.tail else None)


@dataclass(frozen=True, slots=True)
class _FilledTopic:
    """A section's inlined frame with its values filled in, as shared by every subscriber."""

    head: str
    tail: str
    gaps: list[str]
    entries: list[int]
    context: str  # the topic head's shape: part of the entries' cache key


@dataclass(slots=True)
class _TextPiece:
    raw: str
    wrapped: str


@dataclass(slots=True)
class _TextTopic:
    parts: list[_TextPiece]
    entries: list[int]


@dataclass(slots=True)
class _Need:
    """What one catalogue (one layout context) must inline."""

    layouts: dict[tuple[str, str | None], _HtmlLayout] = field(default_factory=dict)
    frames: dict[tuple[str, str | None], _HtmlTopic] = field(default_factory=dict)
    entries: dict[str, dict[tuple[Any, ...], str]] = field(default_factory=dict)  # by topic head


class Renderer:
    """Renders digests for one run; per-entry and per-topic work is done once per run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        override = settings.digest.templates
        self.env = template_environment(override)
        self._layout_env = template_environment(override, stubs=(TOPIC_HTML, TOPIC_TEXT))
        self._topic_env = template_environment(override, stubs=(ENTRY_HTML, ENTRY_TEXT))
        try:
            self.templates = {name: self.env.get_template(name) for name in TEMPLATES}
            self._layout_templates = {n: self._layout_env.get_template(n) for n in (LAYOUT_HTML, LAYOUT_TEXT)}
            self._topic_templates = {n: self._topic_env.get_template(n) for n in (TOPIC_HTML, TOPIC_TEXT)}
        except jinja2.TemplateError as exc:
            raise template_error(exc) from exc
        logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)
        self._zones = {s.email.lower(): settings.zone_of(s) for s in settings.subscribers}
        self._dates: dict[tuple[datetime, str], str] = {}
        self._views: dict[tuple[int, str, tuple[str, ...]], EntryView] = {}
        # piecewise state
        self.whole = False  # True: every email is inlined whole (set when pieces cannot be used)
        self._checked = not override  # overrides get one whole-vs-pieces comparison per run
        self._warned: set[str] = set()
        self._html_topics: dict[tuple[Any, ...], _HtmlTopic] = {}
        self._entry_sources: dict[tuple[Any, ...], str] = {}
        self._layouts: dict[tuple[str, str | None], tuple[Inlined, Inlined | None]] = {}
        self._frames: dict[tuple[str, str, str | None], tuple[Inlined, Inlined | None]] = {}
        self._entries: dict[tuple[str, str, tuple[Any, ...]], str] = {}
        self._filled: dict[tuple[str, tuple[Any, ...]], _FilledTopic] = {}
        self._css_checked: set[str] = set()
        self._text_topics: dict[tuple[Any, ...], _TextTopic] = {}
        self._text_entries: dict[tuple[Any, ...], _TextPiece] = {}
        self.premailer_calls = 0

    # --- public -------------------------------------------------------------------------------

    def prepare(self, digests: Iterable[Digest]) -> None:
        """Inline, in as few premailer calls as possible, every piece these digests need."""
        if self.whole:
            return
        needs: dict[str, _Need] = {}
        known_layouts: dict[str, _HtmlLayout] = {}
        for digest in digests:
            try:
                context = self._context(digest)
                layout = self._html_layout(context)
                topics = [self._html_topic(context["sections"][i]) for i in layout.sections]
            except (_NotPiecewise, jinja2.TemplateError, TypeError, ValueError, AttributeError):
                continue  # ``render`` reports it for this digest alone
            if self._blocked(layout):
                return
            ctx = layout.head.source
            need = needs.setdefault(ctx, _Need())
            known_layouts.setdefault(ctx, layout)
            if layout.key not in self._layouts:
                need.layouts.setdefault(layout.key, layout)
            for index, topic in zip(layout.sections, topics, strict=True):
                section = context["sections"][index]
                if (ctx, *topic.key) not in self._frames:
                    need.frames.setdefault(topic.key, topic)
                for e in topic.entries:
                    key = self._entry_key(section, section.entries[e])
                    if (ctx, topic.head.source, key) not in self._entries:
                        need.entries.setdefault(topic.head.source, {})[key] = self._entry_source(section, e)
                        need.frames.setdefault(topic.key, topic)  # entries need a frame of their kind
        for ctx, need in needs.items():
            try:
                self._inline_catalogue(ctx, need, known_layouts[ctx])
            except (ValueError, etree.LxmlError) as exc:
                self._warn("catalogue", f"inlining pieces failed ({exc}): inlining every email whole")
                self.whole = True
                return

    def render(self, digest: Digest) -> RenderedDigest:
        """Subject, inlined HTML and wrapped text for one digest."""
        try:
            context = self._context(digest)
            html = None if self.whole else self._assembled_html(digest, context)
            if html is None:
                html = inline_css(self.templates[LAYOUT_HTML].render(context))
                self.premailer_calls += 1
            elif not self._checked and digest.sections:
                self._checked = True
                whole = inline_css(self.templates[LAYOUT_HTML].render(context))
                self.premailer_calls += 1
                if whole != html:
                    self._warn("check", "the email assembled from pieces differs from the whole email")
                    self.whole = True
                    html = whole
            text = self._assembled_text(context)
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
            raise template_error(exc) from exc
        return RenderedDigest(subject=context["subject"], html=html, text=text)

    def render_whole(self, digest: Digest) -> RenderedDigest:
        """The same email rendered in one piece and inlined by one premailer call (slow)."""
        try:
            context = self._context(digest)
            html = inline_css(self.templates[LAYOUT_HTML].render(context))
            text = wrap_text(self.templates[LAYOUT_TEXT].render(context))
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
            raise template_error(exc) from exc
        self.premailer_calls += 1
        return RenderedDigest(subject=context["subject"], html=html, text=text)

    # --- context --------------------------------------------------------------------------------

    def _context(self, digest: Digest) -> dict[str, Any]:
        """What the layout, subject and preheader templates see."""
        sections = [
            SectionView(
                topic=section.topic,
                title=clean_text(section.title),
                entries=tuple(self._view(m) for m in section.matches),
                more=section.more,
            )
            for section in digest.sections
        ]
        context = {
            "title": clean_text(self.settings.digest.title),
            "date": self._date(digest),
            "subscriber": {"email": digest.subscriber, "name": clean_text(digest.name or "")},
            "sections": sections,
            "total": digest.entry_count,
            "more": digest.more_count,
            "topics": [clean_text(t) for t in digest.topics],
            "unsubscribe_url": unsubscribe_url(self.settings, digest.subscriber),
            "preheader": "",
            "subject": "",
        }
        context["subject"] = clean_text(self.templates[SUBJECT].render(context))
        context["preheader"] = clean_text(self.templates[PREHEADER].render(context))
        return context

    def _date(self, digest: Digest) -> str:
        zone = self._zones.get(digest.subscriber.lower(), self.settings.digest.timezone)
        key = (digest.created_at, str(zone))
        date = self._dates.get(key)
        if date is None:
            local = digest.created_at.astimezone(zone)
            date = self._dates[key] = f"{local:%A} {local.day} {local:%B %Y}"
        return date

    def _view(self, match: Match) -> EntryView:
        key = (match.entry.id, match.topic, match.hits)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = entry_view(
                match.entry,
                match.hits,
                summary_words=self.settings.digest.summary_words,
                images=self.settings.digest.images,
            )
        return view

    @staticmethod
    def _entry_key(section: SectionView, entry: EntryView) -> tuple[Any, ...]:
        # Views live as long as the renderer (``_views``), so their id names one entry-with-hits.
        return (section.topic, section.title, id(entry))

    # --- HTML from pieces -------------------------------------------------------------------------

    def _html_layout(self, context: dict[str, Any]) -> _HtmlLayout:
        frame = _render_frame(self._layout_templates[LAYOUT_HTML], context, context["sections"])
        gaps = frame.parts[1:-1]
        if any(gap and not gap.isspace() for gap in gaps):
            raise _NotPiecewise(f"{LAYOUT_HTML}: markup between sections")
        head, head_values = shape_of(frame.parts[0])
        tail, tail_values = shape_of(frame.parts[-1]) if frame.slots else (None, ())
        return _HtmlLayout(head, head_values, tail, tail_values, gaps, frame.slots)

    def _topic_key(self, section: SectionView) -> tuple[Any, ...]:
        return (section.topic, section.title, section.count, section.more)

    def _html_topic(self, section: SectionView) -> _HtmlTopic:
        key = self._topic_key(section)
        topic = self._html_topics.get(key)
        if topic is None:
            context = {"section": section, "title": clean_text(self.settings.digest.title)}
            frame = _render_frame(self._topic_templates[TOPIC_HTML], context, section.entries)
            gaps = frame.parts[1:-1]
            if any(gap and not gap.isspace() for gap in gaps):
                raise _NotPiecewise(f"{TOPIC_HTML}: markup between entries")
            head, head_values = shape_of(frame.parts[0])
            tail, tail_values = shape_of(frame.parts[-1]) if frame.slots else (None, ())
            topic = self._html_topics[key] = _HtmlTopic(
                head, head_values, tail, tail_values, gaps, frame.slots
            )
        return topic

    def _entry_source(self, section: SectionView, index: int) -> str:
        entry = section.entries[index]
        key = self._entry_key(section, entry)
        source = self._entry_sources.get(key)
        if source is None:
            context = {
                "entry": entry,
                "section": SectionRef(section.topic, section.title),
                "title": clean_text(self.settings.digest.title),
            }
            source = self._entry_sources[key] = self.templates[ENTRY_HTML].render(context)
        return source

    def _blocked(self, layout: _HtmlLayout) -> bool:
        if self.whole:
            return True
        if layout.key in self._layouts or layout.head.source in self._css_checked:
            return False
        self._css_checked.add(layout.head.source)
        blockers = piecewise_blockers(layout.head.source)
        if blockers:
            self._warn(
                "css",
                f"the stylesheet has selectors that depend on siblings or attributes "
                f"({', '.join(blockers[:5])}): inlining every email whole, which is slow",
            )
            self.whole = True
        return self.whole

    def _inline_catalogue(self, ctx: str, need: _Need, known: _HtmlLayout) -> None:
        layouts = list(need.layouts.values())
        first = layouts[0] if layouts else known
        for extra in layouts[1:]:  # another tail for the same head: its own small call
            outputs = self._premailer([extra.head.source] + ([extra.tail.source] if extra.tail else []))
            self._store_layout(extra, outputs[0], outputs[1] if extra.tail else None)
        pieces = [first.head.source]
        plan: list[tuple[str, Any]] = []
        if first.tail is not None:  # a layout without sections has no slot for pieces
            placed: set[str] = set()
            for key, topic in need.frames.items():
                pieces.append(topic.head.source)
                plan.append(("head", key))
                if topic.head.source not in placed:
                    placed.add(topic.head.source)
                    for entry_key, source in need.entries.get(topic.head.source, {}).items():
                        pieces.append(source)
                        plan.append(("entry", (topic.head.source, entry_key)))
                if topic.tail is not None:
                    pieces.append(topic.tail.source)
                    plan.append(("tail", key))
            pieces.append(first.tail.source)
        if not plan and not layouts:
            return
        outputs = self._premailer(pieces, keep_media=bool(layouts))
        if layouts:
            self._store_layout(first, outputs[0], outputs[-1] if first.tail else None)
        heads: dict[tuple[str, str | None], Inlined] = {}
        body = outputs[1:-1] if first.tail is not None else outputs[1:]
        for (kind, key), output in zip(plan, body, strict=True):
            if kind == "head":
                heads[key] = Inlined.compile(output, need.frames[key].head)
                if need.frames[key].tail is None:
                    self._frames[(ctx, *key)] = (heads[key], None)
            elif kind == "tail":
                tail = need.frames[key].tail
                assert tail is not None  # only frames with a tail have a "tail" piece
                self._frames[(ctx, *key)] = (heads[key], Inlined.compile(output, tail))
            else:
                self._entries[(ctx, *key)] = output

    def _store_layout(self, layout: _HtmlLayout, head: str, tail: str | None) -> None:
        self._layouts[layout.key] = (
            Inlined.compile(head, layout.head),
            Inlined.compile(tail, layout.tail) if layout.tail is not None and tail is not None else None,
        )

    def _premailer(self, pieces: list[str], *, keep_media: bool = True) -> list[str]:
        self.premailer_calls += 1
        return inline_pieces(pieces, keep_media=keep_media)

    def _assembled_html(self, digest: Digest, context: dict[str, Any]) -> str | None:
        try:
            layout = self._html_layout(context)
        except _NotPiecewise as exc:
            self._warn("layout", f"{exc}: inlining such emails whole, which is slow")
            return None
        sections = context["sections"]
        if not self._ready(layout, sections):
            self.prepare([digest])
            if self.whole:
                return None
            if not self._ready(layout, sections):
                raise RenderError("internal error: prepared pieces are missing")
        ctx = layout.head.source
        head, tail = self._layouts[layout.key]
        out = [head.fill(layout.head_values)]
        for n, index in enumerate(layout.sections):
            if n:
                out.append(layout.gaps[n - 1])
            out.append(self._section_html(ctx, sections[index]))
        if tail is not None:
            out.append(tail.fill(layout.tail_values))
        return "".join(out)

    def _ready(self, layout: _HtmlLayout, sections: list[SectionView]) -> bool:
        if layout.key not in self._layouts:
            return False
        ctx = layout.head.source
        for index in layout.sections:
            section = sections[index]
            try:
                topic = self._html_topic(section)
            except _NotPiecewise:
                return False
            if (ctx, *topic.key) not in self._frames:
                return False
            for e in topic.entries:
                if (
                    ctx,
                    topic.head.source,
                    self._entry_key(section, section.entries[e]),
                ) not in self._entries:
                    return False
        return True

    def _section_html(self, ctx: str, section: SectionView) -> str:
        key = (ctx, self._topic_key(section))
        filled = self._filled.get(key)
        if filled is None:
            topic = self._html_topic(section)
            head, tail = self._frames[(ctx, *topic.key)]
            filled = self._filled[key] = _FilledTopic(
                head.fill(topic.head_values),
                tail.fill(topic.tail_values) if tail is not None else "",
                topic.gaps,
                topic.entries,
                topic.head.source,
            )
        out = [filled.head]
        entries = self._entries
        for n, e in enumerate(filled.entries):
            if n:
                out.append(filled.gaps[n - 1])
            out.append(entries[(ctx, filled.context, self._entry_key(section, section.entries[e]))])
        out.append(filled.tail)
        return "".join(out)

    # --- text from pieces ---------------------------------------------------------------------------

    def _assembled_text(self, context: dict[str, Any]) -> str:
        sections = context["sections"]
        try:
            frame = _render_frame(self._layout_templates[LAYOUT_TEXT], context, sections)
            raw = [frame.parts[0]]
            wrapped = [_wrap_lines(frame.parts[0])]
            for n, index in enumerate(frame.slots):
                section = sections[index]
                topic = self._text_topic(section)
                raw.append(topic.parts[0].raw)
                wrapped.append(topic.parts[0].wrapped)
                for k, e in enumerate(topic.entries):
                    piece = self._text_entry(section, e)
                    raw.append(piece.raw)
                    wrapped.append(piece.wrapped)
                    gap = topic.parts[k + 1]
                    raw.append(gap.raw)
                    wrapped.append(gap.wrapped)
                raw.append(frame.parts[n + 1])
                wrapped.append(_wrap_lines(frame.parts[n + 1]))
        except _NotPiecewise as exc:
            self._warn("text", f"{exc}: rendering such text parts whole")
            return wrap_text(self.templates[LAYOUT_TEXT].render(context))
        if all(part.endswith("\n") for part in raw[:-1] if part):
            return "".join(wrapped).strip("\n") + "\n"
        return wrap_text("".join(raw))  # a piece ends mid-line: wrap the joined text

    def _text_topic(self, section: SectionView) -> _TextTopic:
        key = self._topic_key(section)
        topic = self._text_topics.get(key)
        if topic is None:
            context = {"section": section, "title": clean_text(self.settings.digest.title)}
            frame = _render_frame(self._topic_templates[TOPIC_TEXT], context, section.entries)
            parts = [_TextPiece(p, _wrap_lines(p)) for p in frame.parts]
            topic = self._text_topics[key] = _TextTopic(parts, frame.slots)
        return topic

    def _text_entry(self, section: SectionView, index: int) -> _TextPiece:
        entry = section.entries[index]
        key = self._entry_key(section, entry)
        piece = self._text_entries.get(key)
        if piece is None:
            context = {
                "entry": entry,
                "section": SectionRef(section.topic, section.title),
                "title": clean_text(self.settings.digest.title),
            }
            raw = self.templates[ENTRY_TEXT].render(context)
            piece = self._text_entries[key] = _TextPiece(raw, _wrap_lines(raw))
        return piece

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("render warning=%r", message)


# --- entries -------------------------------------------------------------------------------------


def safe_link(link: str | None) -> str | None:
    """``link`` if it is an absolute http(s) URL without spaces or control characters."""
    if not link or has_control(link) or any(c.isspace() for c in link):
        return None
    try:
        parts = urlsplit(link)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return link


def entry_view(entry: Entry, hits: tuple[str, ...], *, summary_words: int, images: bool) -> EntryView:
    """How an entry shows in emails: sanitised, shortened, highlighted, with its links."""
    clean = sanitize_html(entry.summary_html, images=images)
    short, shortened = shorten_html(clean, summary_words)
    summary_text, links = html_to_text(short)
    summary_html = Markup(highlight_html(short, hits)) if summary_text else Markup("")
    title = clean_text(entry.title) or "(untitled)"
    authors = [a for a in (clean_text(a) for a in entry.authors) if a]
    if len(authors) > MAX_AUTHORS:
        authors = [*authors[: MAX_AUTHORS - 1], "et al."]
    authors_text = ", ".join(authors).replace(", et al.", " et al.")
    feeds = ", ".join(clean_text(f) for f in entry.feeds)
    date = f"{entry.published.day} {entry.published:%b %Y}"
    return EntryView(
        title=title,
        title_html=highlight_text(title, hits),
        link=safe_link(entry.link),
        authors=authors_text,
        feeds=feeds,
        date=date,
        byline=" · ".join(part for part in (authors_text, feeds, date) if part),
        summary_html=summary_html,
        summary_text=summary_text,
        links=links,
        hits=tuple(clean_text(h) for h in hits),
        shortened=shortened,
    )


def unsubscribe_url(settings: Settings, email: str) -> str:
    """Where the footer's unsubscribe link points: the web endpoint or a mailto."""
    if settings.digest.base_url:
        return f"{settings.digest.base_url.rstrip('/')}/unsubscribe?email={quote(email)}"
    address = settings.sender.rsplit("<", 1)[-1].rstrip(">").strip()
    return f"mailto:{address}?subject={quote('unsubscribe ' + email)}"


# --- text ---------------------------------------------------------------------------------------


def _wrap_line(line: str, width: int) -> list[str]:
    if len(line) <= width:
        return [line.rstrip()]
    indent = line[: len(line) - len(line.lstrip())]
    stripped = line.strip()
    bullet = next((b for b in ("* ", "- ") if stripped.startswith(b)), "")
    if not bullet and stripped[:1] == "[" and "] " in stripped[:6]:
        bullet = stripped[: stripped.index("] ") + 2]  # footnote "[12] url"
    return textwrap.wrap(
        stripped,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + " " * len(bullet),
        break_long_words=False,  # never break a URL
        break_on_hyphens=False,
    ) or [""]


def _wrap_lines(text: str, width: int = TEXT_WIDTH) -> str:
    return "\n".join(out for line in text.split("\n") for out in _wrap_line(line, width))


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap each line at ``width`` columns, keeping its indent and never breaking a URL."""
    return _wrap_lines(text, width).strip("\n") + "\n"
