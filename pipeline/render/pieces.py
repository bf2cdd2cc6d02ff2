"""An email's HTML cut into the pieces that are inlined once per run.

A *frame* is a template's output with its partials stubbed (``templates.render_frame``): the
layout's frame is its head, a slot per section with only whitespace between them, and its
tail; a topic's frame is its head, a slot per entry, and its tail. Heads and tails become
*shapes* (``inline.shape_of``: the values that differ between subscribers taken out), so that
one inlined piece serves every email of that shape; an entry's piece is its partial's output.

Every subscriber's layout is rendered (their name, date and counts differ), but most share a
shape: the last few layout shapes are tried first (``inline.match_shape``, which compares
instead of parsing). Shapes get small ids. A layout head also gets the id of its *context*
(``inline.slot_context``: its stylesheet and the elements open where the sections go), which
is part of every inlined piece's key: layouts that differ only before the sections (a contents
line with one link per section) share their pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .inline import Shape, match_shape, shape_of, slot_context
from .templates import (
    ENTRY_HTML,
    LAYOUT_HTML,
    TOPIC_HTML,
    NotPiecewise,
    TemplateSet,
    render_frame,
    render_template,
)
from .views import EntryView, SectionView, entry_context, entry_key, topic_key

LAYOUT_HINTS = 4  # layout shapes tried before parsing a layout anew


@dataclass(slots=True)
class HtmlFrame:
    """An HTML frame (layout or topic) as shapes: head, slots with whitespace gaps, tail."""

    head: Shape
    head_values: tuple[str, ...]
    tail: Shape | None  # None when nothing was included (no slot)
    tail_values: tuple[str, ...]
    gaps: list[str]
    slots: list[int]
    head_id: int = 0
    tail_id: int = 0
    context_id: int = 0  # a layout's: the context its pieces are inlined in (``inline.slot_context``)


@dataclass(slots=True)
class EmailPlan:
    """What rendering one digest needs, worked out once (by ``prepare``, reused by ``render``)."""

    context: dict[str, Any]  # what the layout, subject and preheader templates see
    layout: HtmlFrame | None  # None: this digest is inlined whole
    layout_id: int = 0  # the layout head's context id: the context of every piece in this email


class HtmlPieces:
    """Frames and entry pieces of a run's HTML, each made once per run (layouts: per email)."""

    def __init__(self, templates: TemplateSet, title: str) -> None:
        self._layout = templates.layouts[LAYOUT_HTML]  # topic partials stubbed
        self._topic = templates.topics[TOPIC_HTML]  # entry partials stubbed
        self._entry = templates.whole[ENTRY_HTML]
        self._title = title
        self._ids: dict[str, int] = {}  # shape source -> small id, for cheap cache keys
        self._contexts: dict[int, int] = {}  # layout head id -> its context's id
        self._context_ids: dict[str, int] = {}  # slot context -> small id
        self._hints: list[tuple[Shape, Shape | None]] = []  # recent layout shapes, tried first
        self._topics: dict[tuple[Any, ...], HtmlFrame] = {}  # by topic_key
        self._entries: dict[int, str] = {}  # by entry_key

    def layout_frame(self, context: dict[str, Any]) -> HtmlFrame:
        """This email's layout frame; NotPiecewise if there is markup between its sections."""
        frame = render_frame(self._layout, context, context["sections"])
        gaps = frame.parts[1:-1]
        if any(gap and not gap.isspace() for gap in gaps):
            raise NotPiecewise(f"{LAYOUT_HTML}: markup between sections")
        head_text, tail_text = frame.parts[0], frame.parts[-1] if frame.slots else None
        for head, tail in self._hints:  # most subscribers' layouts share a shape: compare, don't parse
            head_values = match_shape(head_text, head)
            if head_values is None or (tail is None) != (tail_text is None):
                continue
            tail_values = match_shape(tail_text, tail) if tail is not None and tail_text is not None else ()
            if tail_values is not None:
                return self._layout_frame(head, head_values, tail, tail_values, gaps, frame.slots)
        head, head_values = shape_of(head_text)
        tail, tail_values = shape_of(tail_text) if tail_text is not None else (None, ())
        self._hints = [(head, tail), *self._hints[: LAYOUT_HINTS - 1]]
        return self._layout_frame(head, head_values, tail, tail_values, gaps, frame.slots)

    def _layout_frame(
        self,
        head: Shape,
        head_values: tuple[str, ...],
        tail: Shape | None,
        tail_values: tuple[str, ...],
        gaps: list[str],
        slots: list[int],
    ) -> HtmlFrame:
        frame = self._frame(head, head_values, tail, tail_values, gaps, slots)
        context = self._contexts.get(frame.head_id)
        if context is None:  # parsed once per layout shape
            key = slot_context(head.source)
            context = self._context_ids.setdefault(key, len(self._context_ids) + 1)
            self._contexts[frame.head_id] = context
        frame.context_id = context
        return frame

    def topic_frame(self, section: SectionView) -> HtmlFrame:
        """A section's topic frame; NotPiecewise if there is markup between its entries."""
        key = topic_key(section)
        frame = self._topics.get(key)
        if frame is None:
            out = render_frame(self._topic, {"section": section, "title": self._title}, section.entries)
            gaps = out.parts[1:-1]
            if any(gap and not gap.isspace() for gap in gaps):
                raise NotPiecewise(f"{TOPIC_HTML}: markup between entries")
            head, head_values = shape_of(out.parts[0])
            tail, tail_values = shape_of(out.parts[-1]) if out.slots else (None, ())
            frame = self._topics[key] = self._frame(head, head_values, tail, tail_values, gaps, out.slots)
        return frame

    def entry_source(self, section: SectionView, entry: EntryView) -> str:
        """An entry's HTML as its partial writes it, before inlining."""
        key = entry_key(entry)
        source = self._entries.get(key)
        if source is None:
            context = entry_context(section, entry, self._title)
            source = self._entries[key] = render_template(self._entry, context)
        return source

    def _frame(
        self,
        head: Shape,
        head_values: tuple[str, ...],
        tail: Shape | None,
        tail_values: tuple[str, ...],
        gaps: list[str],
        slots: list[int],
    ) -> HtmlFrame:
        tail_id = self._id(tail.source) if tail is not None else 0
        return HtmlFrame(head, head_values, tail, tail_values, gaps, slots, self._id(head.source), tail_id)

    def _id(self, source: str) -> int:
        return self._ids.setdefault(source, len(self._ids) + 1)
