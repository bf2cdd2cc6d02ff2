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

import functools
import logging
import time
import traceback
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup

from .config import Settings
from .errors import RenderError
from .inline import Inlined, Shape, inline_css, inline_pieces, match_shape, piecewise_blockers, shape_of
from .models import Digest, Entry, Match, RenderedDigest, Section
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


class _Environment(jinja2.Environment):
    """Templates' globals as a plain dict: Jinja copies them into every context it makes
    (includes too), and copying a ChainMap costs ~5 µs each time. Globals are never changed
    after the templates are loaded."""

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


def template_environment(override: str | None, *, stubs: Iterable[str] = ()) -> jinja2.Environment:
    """The Jinja2 environment: overrides first, then the built-in templates.

    ``stubs`` names partials replaced by a marker (used to cut an email into pieces).
    """
    folders = [override, str(BUILTIN_TEMPLATES)] if override else [str(BUILTIN_TEMPLATES)]
    loader: jinja2.BaseLoader = jinja2.FileSystemLoader(folders)
    stubs = tuple(stubs)
    if stubs:
        loader = _StubLoader(loader, stubs)
    return _Environment(
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


@dataclass(frozen=True, slots=True, eq=False)
class SectionView:
    """One topic's part of an email.

    Compared and hashed by identity: a run has one per distinct section (``Renderer._section``),
    the key of that section's assembled parts.
    """

    topic: str
    title: str
    entries: tuple[EntryView, ...]
    more: int

    @property
    def count(self) -> int:
        return len(self.entries)


class _NotPiecewise(Exception):
    """This digest's templates cannot be assembled from pieces (inline the whole email)."""


def _render(template: jinja2.Template, context: dict[str, Any]) -> str:
    """``template.render(context)``, minus the ~20 µs Jinja spends copying its globals per call."""
    ctx = template.new_context({**_globals(template), **context}, shared=True)
    try:
        return str(template.environment.concat(template.root_render_func(ctx)))
    except Exception:
        template.environment.handle_exception()  # re-raises with the template's file and line
        raise


@functools.lru_cache(maxsize=64)
def _globals(template: jinja2.Template) -> dict[str, Any]:
    return dict(template.globals)


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

    parts = _render(template, {**context, "__slot__": slot}).split(SLOT)
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
class _HtmlFrame:
    """An HTML frame (layout or topic) as shapes: head, slots with whitespace gaps, tail."""

    head: Shape
    head_values: tuple[str, ...]
    tail: Shape | None  # None when nothing was included (no slot)
    tail_values: tuple[str, ...]
    gaps: list[str]
    slots: list[int]
    head_id: int = 0
    tail_id: int = 0


@dataclass(frozen=True, slots=True)
class _FilledTopic:
    """A section's inlined frame with its values filled in, shared by every subscriber."""

    head: str
    tail: str
    gaps: list[str]
    slots: list[int]
    head_id: int  # the topic head's shape: part of its entries' cache key


@dataclass(frozen=True, slots=True)
class _TextPiece:
    """An entry's text part, wrapped; ``aligned``: it ends at a line end."""

    wrapped: str
    aligned: bool


@dataclass(frozen=True, slots=True)
class _TextFrame:
    """A section's text, wrapped: head, then after each entry what follows it (gap or tail)."""

    head: str
    after: list[str]
    slots: list[int]
    aligned: bool


@dataclass(slots=True)
class _Plan:
    """What rendering one digest needs, worked out once (by ``prepare``, reused by ``render``)."""

    context: dict[str, Any]
    layout: _HtmlFrame | None  # None: this digest is inlined whole
    ctx: int = 0  # the layout head's id: the context of every piece in this email


@dataclass(slots=True)
class _Need:
    """What one catalogue (one layout context) must inline."""

    layout: _HtmlFrame
    layouts: dict[tuple[int, int], _HtmlFrame] = field(default_factory=dict)
    frames: dict[tuple[int, int], _HtmlFrame] = field(default_factory=dict)
    entries: dict[int, dict[int, str]] = field(default_factory=dict)  # by topic head id


class Renderer:
    """Renders digests for one run; per-entry and per-topic work is done once per run."""

    MEMO = 1024  # plans kept from ``prepare`` for ``render`` (a few claim batches)
    SECTIONS = 4096  # distinct sections kept, assembled, before starting over (~2 KB each)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        override = settings.digest.templates
        self.env = template_environment(override)
        layout_env = template_environment(override, stubs=(TOPIC_HTML, TOPIC_TEXT))
        topic_env = template_environment(override, stubs=(ENTRY_HTML, ENTRY_TEXT))
        try:
            self.templates = {name: self.env.get_template(name) for name in TEMPLATES}
            self._layout_templates = {n: layout_env.get_template(n) for n in (LAYOUT_HTML, LAYOUT_TEXT)}
            self._topic_templates = {n: topic_env.get_template(n) for n in (TOPIC_HTML, TOPIC_TEXT)}
        except jinja2.TemplateError as exc:
            raise template_error(exc) from exc
        logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)
        self._title = clean_text(settings.digest.title)
        self._zones = {s.email.lower(): settings.zone_of(s) for s in settings.subscribers}
        self._dates: dict[tuple[datetime, str], str] = {}
        self._views: dict[tuple[int, str, str, tuple[str, ...]], EntryView] = {}
        self.whole = False  # True: every email is inlined whole (set when pieces cannot be used)
        self.premailer_calls = 0  # how often premailer ran, and for how long (for figures)
        self.premailer_seconds = 0.0
        self._checked = not override  # overrides get one whole-vs-pieces comparison per run
        self._warned: set[str] = set()
        self._memo: dict[tuple[str, str], tuple[Digest, _Plan]] = {}
        self._ids: dict[str, int] = {}  # shape source -> small id, for cheap cache keys
        self._hints: list[tuple[Shape, Shape | None]] = []  # recent layout shapes, tried first
        self._css_checked: set[int] = set()
        # HTML: frames per (topic, title, count, more); entry sources; inlined pieces by context
        self._topic_frames: dict[tuple[Any, ...], _HtmlFrame] = {}
        self._entry_sources: dict[int, str] = {}
        self._layouts: dict[tuple[int, int], tuple[Inlined, Inlined | None]] = {}
        self._frames: dict[tuple[int, int, int], tuple[Inlined, Inlined | None]] = {}
        self._entries: dict[tuple[int, int, int], str] = {}
        self._filled: dict[tuple[int, tuple[Any, ...]], _FilledTopic] = {}
        # text: frames and entries, raw and wrapped
        self._text_frames: dict[tuple[Any, ...], _TextFrame] = {}
        self._text_entries: dict[int, _TextPiece] = {}
        # distinct sections, and each one's parts assembled: HTML (per layout context) and text
        self._sections: dict[tuple[Any, ...], SectionView] = {}
        self._section_html: dict[tuple[int, SectionView], tuple[str, ...]] = {}
        self._section_text: dict[SectionView, tuple[tuple[str, ...], bool]] = {}  # and line-aligned?

    # --- public ---------------------------------------------------------------------------------

    def prepare(self, digests: Iterable[Digest]) -> None:
        """Inline, in as few premailer calls as possible, every piece these digests need."""
        needs: dict[int, _Need] = {}
        for digest in digests:
            if self.whole:
                return
            try:
                plan = self._plan(digest)
                self._remember(digest, plan)
                if plan.layout is None or self._blocked(plan):
                    continue
                self._collect(plan, needs)
            except (_NotPiecewise, jinja2.TemplateError, TypeError, ValueError, AttributeError):
                continue  # ``render`` reports it for this digest alone
        for ctx, need in needs.items():
            if self.whole:
                return
            try:
                self._inline_catalogue(ctx, need)
            except (ValueError, RenderError) as exc:
                self._warn("catalogue", f"inlining pieces failed ({exc}): inlining every email whole")
                self.whole = True

    def render(self, digest: Digest) -> RenderedDigest:
        """Subject, inlined HTML and wrapped text for one digest."""
        key = (digest.message_id, digest.subscriber)
        try:
            memo = self._memo.pop(key, None)
            plan = memo[1] if memo is not None and memo[0] == digest else self._plan(digest)
            context = plan.context
            html_parts = self._assembled_html(digest, plan)
            if html_parts is None:
                html = self._whole_html(context)
            else:
                html = "".join(html_parts)
                if not self._checked and digest.sections:
                    self._checked = True
                    whole = self._whole_html(context)
                    if whole != html:
                        self._warn("check", "an email assembled from pieces differs from the whole email")
                        self.whole = True
                        html, html_parts = whole, None
            text, text_parts = self._assembled_text(context)
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
            raise template_error(exc) from exc
        finally:
            self._memo.pop(key, None)  # a prepare made for this digest alone leaves nothing behind
        return RenderedDigest(
            subject=context["subject"],
            html=html,
            text=text,
            html_parts=tuple(html_parts or ()),
            text_parts=text_parts,
        )

    def render_whole(self, digest: Digest) -> RenderedDigest:
        """The same email rendered in one piece and inlined by one premailer call (slow)."""
        try:
            context = self._context(digest)
            html = self._whole_html(context)
            text = wrap_text(_render(self.templates[LAYOUT_TEXT], context))
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
            raise template_error(exc) from exc
        return RenderedDigest(subject=context["subject"], html=html, text=text)

    # --- context --------------------------------------------------------------------------------

    def _context(self, digest: Digest) -> dict[str, Any]:
        """What the layout, subject and preheader templates see."""
        sections = [self._section(section) for section in digest.sections]
        context: dict[str, Any] = {
            "title": self._title,
            "date": self._date(digest),
            "subscriber": {"email": digest.subscriber, "name": clean_text(digest.name or "")},
            "sections": sections,
            "total": digest.entry_count,
            "more": digest.more_count,
            "topics": [clean_text(t) for t in digest.topics],
            "unsubscribe_url": self.settings.unsubscribe_url(digest.subscriber),
            "preheader": "",
            "subject": "",
        }
        context["subject"] = clean_text(_render(self.templates[SUBJECT], context))
        context["preheader"] = clean_text(_render(self.templates[PREHEADER], context))
        return context

    def _section(self, section: Section) -> SectionView:
        """The view of a section: one per distinct section in a run. A subscriber's sections
        leave out entries shown in another of their topics, so a section is shared by a few
        subscribers (~7 in the benchmark), and assembled once for all of them."""
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
                self._section_html.clear()
                self._section_text.clear()
            view = self._sections[key] = SectionView(
                topic=section.topic,
                title=clean_text(section.title),
                entries=tuple(self._view(m, section.title) for m in section.matches),
                more=section.more,
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

    def _view(self, match: Match, section_title: str) -> EntryView:
        key = (match.entry.id, match.topic, section_title, match.hits)
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
    def _entry_key(section: SectionView, entry: EntryView) -> int:
        # A view is made once per (entry, topic, section title, hits) and lives as long as the
        # renderer (``_views``): its id names exactly one entry piece.
        return id(entry)

    @staticmethod
    def _topic_key(section: SectionView) -> tuple[Any, ...]:
        return (section.topic, section.title, section.count, section.more)

    def _id(self, source: str) -> int:
        return self._ids.setdefault(source, len(self._ids) + 1)

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("render warning=%r", message)

    # --- planning -------------------------------------------------------------------------------

    def _plan(self, digest: Digest) -> _Plan:
        context = self._context(digest)
        if self.whole:
            return _Plan(context, None)
        try:
            layout = self._layout_frame(context)
        except _NotPiecewise as exc:
            self._warn("layout", f"{exc}: inlining such emails whole, which is slow")
            return _Plan(context, None)
        return _Plan(context, layout, layout.head_id)

    def _remember(self, digest: Digest, plan: _Plan) -> None:
        if len(self._memo) >= self.MEMO:
            del self._memo[next(iter(self._memo))]
        self._memo[(digest.message_id, digest.subscriber)] = (digest, plan)

    def _layout_frame(self, context: dict[str, Any]) -> _HtmlFrame:
        frame = _render_frame(self._layout_templates[LAYOUT_HTML], context, context["sections"])
        gaps = frame.parts[1:-1]
        if any(gap and not gap.isspace() for gap in gaps):
            raise _NotPiecewise(f"{LAYOUT_HTML}: markup between sections")
        head_text, tail_text = frame.parts[0], frame.parts[-1] if frame.slots else None
        for head, tail in self._hints:  # most subscribers' layouts share a shape: compare, don't parse
            head_values = match_shape(head_text, head)
            if head_values is None or (tail is None) != (tail_text is None):
                continue
            tail_values = match_shape(tail_text, tail) if tail is not None and tail_text is not None else ()
            if tail_values is not None:
                return self._html_frame(head, head_values, tail, tail_values, gaps, frame.slots)
        head, head_values = shape_of(head_text)
        tail, tail_values = shape_of(tail_text) if tail_text is not None else (None, ())
        self._hints = [(head, tail), *self._hints[:3]]
        return self._html_frame(head, head_values, tail, tail_values, gaps, frame.slots)

    def _html_frame(
        self,
        head: Shape,
        head_values: tuple[str, ...],
        tail: Shape | None,
        tail_values: tuple[str, ...],
        gaps: list[str],
        slots: list[int],
    ) -> _HtmlFrame:
        tail_id = self._id(tail.source) if tail is not None else 0
        return _HtmlFrame(head, head_values, tail, tail_values, gaps, slots, self._id(head.source), tail_id)

    def _topic_frame(self, section: SectionView) -> _HtmlFrame:
        key = self._topic_key(section)
        frame = self._topic_frames.get(key)
        if frame is None:
            context = {"section": section, "title": self._title}
            out = _render_frame(self._topic_templates[TOPIC_HTML], context, section.entries)
            gaps = out.parts[1:-1]
            if any(gap and not gap.isspace() for gap in gaps):
                raise _NotPiecewise(f"{TOPIC_HTML}: markup between entries")
            head, head_values = shape_of(out.parts[0])
            tail, tail_values = shape_of(out.parts[-1]) if out.slots else (None, ())
            frame = self._topic_frames[key] = self._html_frame(
                head, head_values, tail, tail_values, gaps, out.slots
            )
        return frame

    def _entry_source(self, section: SectionView, entry: EntryView) -> str:
        key = self._entry_key(section, entry)
        source = self._entry_sources.get(key)
        if source is None:
            context = {
                "entry": entry,
                "section": SectionRef(section.topic, section.title),
                "title": self._title,
            }
            source = self._entry_sources[key] = _render(self.templates[ENTRY_HTML], context)
        return source

    def _blocked(self, plan: _Plan) -> bool:
        """Whether this layout's stylesheet forbids piecewise inlining (then: whole, warned)."""
        if self.whole:
            return True
        if plan.ctx in self._css_checked:
            return False
        self._css_checked.add(plan.ctx)
        assert plan.layout is not None
        blockers = piecewise_blockers(plan.layout.head.source)
        if blockers:
            self._warn(
                "css",
                f"the stylesheet has selectors that depend on siblings or attributes "
                f"({', '.join(blockers[:5])}): inlining every email whole, which is slow",
            )
            self.whole = True
        return self.whole

    def _collect(self, plan: _Plan, needs: dict[int, _Need]) -> None:
        """Note in ``needs`` every piece of this digest not inlined yet."""
        layout = plan.layout
        assert layout is not None
        ctx = plan.ctx
        need = needs.get(ctx)
        if need is None:
            need = needs[ctx] = _Need(layout)
        if (layout.head_id, layout.tail_id) not in self._layouts:
            need.layouts.setdefault((layout.head_id, layout.tail_id), layout)
        sections = plan.context["sections"]
        for index in layout.slots:
            section = sections[index]
            if (ctx, section) in self._section_html:
                continue  # assembled already: every piece of it is there
            topic = self._topic_frame(section)
            key = (topic.head_id, topic.tail_id)
            if (ctx, *key) not in self._frames:
                need.frames.setdefault(key, topic)
            for e in topic.slots:
                entry_key = self._entry_key(section, section.entries[e])
                if (ctx, topic.head_id, entry_key) not in self._entries:
                    source = self._entry_source(section, section.entries[e])
                    need.entries.setdefault(topic.head_id, {})[entry_key] = source
                    need.frames.setdefault(key, topic)  # entries are inlined inside a frame of their kind

    # --- inlining ---------------------------------------------------------------------------------

    def _premailer(self, pieces: list[str], *, keep_media: bool = True) -> list[str]:
        start = time.perf_counter()
        try:
            return inline_pieces(pieces, keep_media=keep_media)
        except ValueError:
            raise
        except Exception as exc:  # premailer, cssutils or lxml on a stylesheet they cannot take
            raise RenderError(f"inlining the stylesheet failed: {exc!r}") from exc
        finally:
            self.premailer_calls += 1
            self.premailer_seconds += time.perf_counter() - start

    def _whole_html(self, context: dict[str, Any]) -> str:
        source = _render(self.templates[LAYOUT_HTML], context)
        start = time.perf_counter()
        try:
            return inline_css(source)
        except Exception as exc:  # premailer, cssutils or lxml on a stylesheet they cannot take
            raise RenderError(f"inlining the stylesheet failed: {exc!r}") from exc
        finally:
            self.premailer_calls += 1
            self.premailer_seconds += time.perf_counter() - start

    def _inline_catalogue(self, ctx: int, need: _Need) -> None:
        """One premailer call: a layout with, in its slot, every needed topic frame and entry."""
        layouts = list(need.layouts.values())
        for extra in layouts[1:]:  # another tail for the same head: its own small call
            outputs = self._premailer([extra.head.source] + ([extra.tail.source] if extra.tail else []))
            self._store_layout(extra, outputs)
        layout = layouts[0] if layouts else need.layout
        pieces = [layout.head.source]
        plan: list[tuple[str, Any]] = []
        if layout.tail is not None:  # a layout without sections has no slot for pieces
            placed: set[int] = set()
            for key, topic in need.frames.items():
                pieces.append(topic.head.source)
                plan.append(("head", key))
                if topic.head_id not in placed:
                    placed.add(topic.head_id)
                    for entry_key, source in need.entries.get(topic.head_id, {}).items():
                        pieces.append(source)
                        plan.append(("entry", (topic.head_id, entry_key)))
                if topic.tail is not None:
                    pieces.append(topic.tail.source)
                    plan.append(("tail", key))
            pieces.append(layout.tail.source)
        if not plan and not layouts:
            return
        outputs = self._premailer(pieces, keep_media=bool(layouts))
        if layouts:
            self._store_layout(layout, [outputs[0], outputs[-1]] if layout.tail else outputs)
        heads: dict[tuple[int, int], Inlined] = {}
        body = outputs[1:-1] if layout.tail is not None else outputs[1:]
        for (kind, key), output in zip(plan, body, strict=True):
            if kind == "entry":
                self._entries[(ctx, *key)] = output
                continue
            frame = need.frames[key]
            if kind == "head":
                heads[key] = Inlined.compile(output, frame.head)
                if frame.tail is None:
                    self._frames[(ctx, *key)] = (heads[key], None)
            else:
                assert frame.tail is not None  # only frames with a tail have a "tail" piece
                self._frames[(ctx, *key)] = (heads[key], Inlined.compile(output, frame.tail))

    def _store_layout(self, layout: _HtmlFrame, outputs: list[str]) -> None:
        tail = Inlined.compile(outputs[1], layout.tail) if layout.tail is not None else None
        self._layouts[(layout.head_id, layout.tail_id)] = (Inlined.compile(outputs[0], layout.head), tail)

    # --- assembling -------------------------------------------------------------------------------

    def _assembled_html(self, digest: Digest, plan: _Plan) -> list[str] | None:
        """The inlined HTML as line-aligned parts, or None when it must be inlined whole."""
        for attempt in (1, 2):
            if self.whole or plan.layout is None:
                return None
            try:
                return self._assemble_html(plan)
            except _NotPiecewise as exc:
                self._warn("topic", f"{exc}: inlining such emails whole, which is slow")
                return None
            except KeyError:
                if attempt == 1:
                    self.prepare([digest])  # not prepared (or only partly): one premailer call now
        self._warn("missing", "pieces missing after prepare: inlining such emails whole")
        return None

    def _assemble_html(self, plan: _Plan) -> list[str]:
        layout = plan.layout
        assert layout is not None
        head, tail = self._layouts[(layout.head_id, layout.tail_id)]
        sections = plan.context["sections"]
        out = [head.fill(layout.head_values)]
        for n, index in enumerate(layout.slots):
            if n and layout.gaps[n - 1]:
                out.append(layout.gaps[n - 1])
            out += self._assemble_section(plan.ctx, sections[index])
        if tail is not None:
            out.append(tail.fill(layout.tail_values))
        return out

    def _assemble_section(self, ctx: int, section: SectionView) -> tuple[str, ...]:
        """A section's inlined HTML, as parts: its frame and its entries, shared pieces."""
        parts = self._section_html.get((ctx, section))
        if parts is not None:
            return parts
        key = (ctx, self._topic_key(section))
        filled = self._filled.get(key)
        if filled is None:
            topic = self._topic_frame(section)
            head, tail = self._frames[(ctx, topic.head_id, topic.tail_id)]
            filled = self._filled[key] = _FilledTopic(
                head.fill(topic.head_values),
                tail.fill(topic.tail_values) if tail is not None else "",
                topic.gaps,
                topic.slots,
                topic.head_id,
            )
        entries = self._entries
        views = section.entries
        out = [filled.head]
        for n, e in enumerate(filled.slots):
            if n and filled.gaps[n - 1]:
                out.append(filled.gaps[n - 1])
            out.append(entries[(ctx, filled.head_id, id(views[e]))])
        if filled.tail:
            out.append(filled.tail)
        parts = self._section_html[(ctx, section)] = tuple(out)
        return parts

    def _assembled_text(self, context: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        """The wrapped text part, and the same as line-aligned parts."""
        sections = context["sections"]
        try:
            frame = _render_frame(self._layout_templates[LAYOUT_TEXT], context, sections)
            layout = frame.parts
            wrapped = [_wrap_lines(layout[0])]
            aligned = _whole_lines(layout[0])
            for n, index in enumerate(frame.slots):
                text, whole = self._assemble_text_section(sections[index])
                aligned = aligned and whole
                wrapped += text
                part = layout[n + 1]
                aligned = aligned and (n + 2 == len(layout) or _whole_lines(part))
                wrapped.append(_wrap_lines(part))
        except _NotPiecewise as exc:
            self._warn("text", f"{exc}: rendering such text parts whole")
            aligned = False
        if not aligned:  # a piece ends mid-line: wrapping pieces alone would differ, wrap the whole
            return wrap_text(_render(self.templates[LAYOUT_TEXT], context)), ()
        # wrap_text strips leading and trailing newlines: do it on the first and last parts
        wrapped = [part for part in wrapped if part]
        while wrapped and not wrapped[0].lstrip("\n"):
            wrapped.pop(0)
        while wrapped and not wrapped[-1].rstrip("\n"):
            wrapped.pop()
        if not wrapped:
            return "\n", ("\n",)
        wrapped[0] = wrapped[0].lstrip("\n")
        wrapped[-1] = wrapped[-1].rstrip("\n") + "\n"
        return "".join(wrapped), tuple(wrapped)

    def _assemble_text_section(self, section: SectionView) -> tuple[tuple[str, ...], bool]:
        """A section's wrapped text, as parts, and whether they all end at line ends."""
        assembled = self._section_text.get(section)
        if assembled is None:
            topic = self._text_frame(section)
            aligned = topic.aligned
            out = [topic.head]
            cache = self._text_entries
            views = section.entries
            for e, after in zip(topic.slots, topic.after, strict=True):
                piece = cache.get(id(views[e])) or self._text_entry(section, views[e])
                aligned = aligned and piece.aligned
                out.append(piece.wrapped)
                if after:
                    out.append(after)
            assembled = self._section_text[section] = (tuple(out), aligned)
        return assembled

    def _text_frame(self, section: SectionView) -> _TextFrame:
        key = self._topic_key(section)
        frame = self._text_frames.get(key)
        if frame is None:
            context = {"section": section, "title": self._title}
            out = _render_frame(self._topic_templates[TOPIC_TEXT], context, section.entries)
            frame = self._text_frames[key] = _TextFrame(
                head=_wrap_lines(out.parts[0]),
                after=[_wrap_lines(p) for p in out.parts[1:]],
                slots=out.slots,
                aligned=all(_whole_lines(p) for p in out.parts),
            )
        return frame

    def _text_entry(self, section: SectionView, entry: EntryView) -> _TextPiece:
        key = self._entry_key(section, entry)
        piece = self._text_entries.get(key)
        if piece is None:
            context = {
                "entry": entry,
                "section": SectionRef(section.topic, section.title),
                "title": self._title,
            }
            raw = _render(self.templates[ENTRY_TEXT], context)
            piece = self._text_entries[key] = _TextPiece(_wrap_lines(raw), _whole_lines(raw))
        return piece


def _whole_lines(text: str) -> bool:
    """Whether text ends at a line end (or is empty): wrapping it alone then changes nothing."""
    return not text or text[-1] == "\n"


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


# --- text ---------------------------------------------------------------------------------------


def _wrap_line(line: str, width: int) -> list[str]:
    """One line wrapped at ``width`` (greedy, at spaces), keeping its indent; words never break."""
    if len(line) <= width:
        return [line.rstrip()]
    stripped = line.lstrip()
    indent = line[: len(line) - len(stripped)]
    words = stripped.split()
    first = words[0]
    hanging = 0  # continuation lines align after a bullet or footnote mark
    if first in ("*", "-") or (first.startswith("[") and first.endswith("]")):
        hanging = len(first) + 1
    lines = []
    current = indent + first
    follow = indent + " " * hanging
    for word in words[1:]:
        if len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = follow + word
    lines.append(current)
    return lines


def _wrap_lines(text: str, width: int = TEXT_WIDTH) -> str:
    return "\n".join(out for line in text.split("\n") for out in _wrap_line(line, width))


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap each line at ``width`` columns, keeping its indent and never breaking a URL."""
    return _wrap_lines(text, width).strip("\n") + "\n"
