"""The plain-text part: wrapping at ``TEXT_WIDTH`` columns, and assembly from wrapped pieces.

Wrapping works line by line, so a piece of text that ends at a line end wraps the same alone
as inside the whole part. The text part is therefore assembled from pieces wrapped once per
run (each topic frame and each entry), as long as every piece ends at a line end; when one
does not (an override template may do that), the whole part is rendered and wrapped instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .splice import TokenSplice
from .templates import (
    ENTRY_TEXT,
    LAYOUT_TEXT,
    TOKEN,
    TOPIC_TEXT,
    NotPiecewise,
    TemplateSet,
    render_frame,
    render_template,
)
from .views import EntryView, SectionView, entry_context, entry_key, topic_key

TEXT_WIDTH = 78
SIGNATURE_SEPARATOR = "-- "


def _wrap_line(line: str, width: int) -> list[str]:
    """One line wrapped at ``width`` (greedy, at spaces), keeping its indent; words never break."""
    if len(line) <= width:
        # "-- " is the signature separator (RFC 3676 4.3): its trailing space is what it is.
        return [line if line == SIGNATURE_SEPARATOR else line.rstrip()]
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


def _ends_at_line_end(text: str) -> bool:
    """Whether text ends at a line end (or is empty): wrapping it alone then changes nothing."""
    return not text or text[-1] == "\n"


@dataclass(frozen=True, slots=True)
class WrappedEntry:
    """An entry's text part, wrapped; ``aligned``: it ends at a line end."""

    wrapped: str
    aligned: bool


@dataclass(frozen=True, slots=True)
class WrappedTopicFrame:
    """A section's text, wrapped: head, then after each entry what follows it (gap or tail)."""

    head: str
    after: list[str]
    slots: list[int]
    aligned: bool


class TextAssembler:
    """A run's text parts, assembled from pieces wrapped once per run."""

    def __init__(
        self, templates: TemplateSet, title: str, warn: Callable[[str, str], None], *, splice: TokenSplice
    ) -> None:
        self._splice = splice
        self._layout = templates.layouts[LAYOUT_TEXT]  # topic partials stubbed
        self._topic = templates.topics[TOPIC_TEXT]  # entry partials stubbed
        self._whole = templates.whole
        self._title = title
        self._warn = warn
        self._frames: dict[tuple[Any, ...], WrappedTopicFrame] = {}  # by topic_key
        self._entries: dict[int, WrappedEntry] = {}  # by entry_key
        # each distinct section's parts, whether they all end at line ends, and where in them
        # the email's token goes (``splice``)
        self._sections: dict[SectionView, tuple[tuple[str, ...], bool, tuple[int, ...]]] = {}

    def forget_sections(self) -> None:
        """Drop the assembled sections (their views are being dropped)."""
        self._sections.clear()

    def whole(self, context: dict[str, Any]) -> str:
        """The text part rendered in one piece, then wrapped."""
        text = wrap_text(render_template(self._whole[LAYOUT_TEXT], context))
        return self._splice.fill(text, context[TOKEN])

    def text(self, context: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        """The wrapped text part, and the same as line-aligned parts (none if rendered whole)."""
        sections = context["sections"]
        try:
            frame = render_frame(self._layout, context, sections)
            layout = frame.parts
            wrapped = [_wrap_lines(layout[0])]
            aligned = _ends_at_line_end(layout[0])
            places: list[int] = []
            for n, index in enumerate(frame.slots):
                text, whole, marked = self._section(sections[index])
                aligned = aligned and whole
                if marked:
                    start = len(wrapped)
                    places += [start + i for i in marked]
                wrapped += text
                part = layout[n + 1]
                aligned = aligned and (n + 2 == len(layout) or _ends_at_line_end(part))
                wrapped.append(_wrap_lines(part))
        except NotPiecewise as exc:
            self._warn("text", f"{exc}: rendering such text parts whole")
            aligned = False
        if not aligned:  # a piece ends mid-line: wrapping pieces alone would differ, wrap the whole
            return self.whole(context), ()
        token = context[TOKEN]
        for i in places:  # (the one object: compose knows it by identity)
            wrapped[i] = token
        return _joined(wrapped)

    def _section(self, section: SectionView) -> tuple[tuple[str, ...], bool, tuple[int, ...]]:
        """A section's wrapped text, as parts; whether they all end at line ends; and where
        in them the email's token goes."""
        assembled = self._sections.get(section)
        if assembled is None:
            topic = self._frame(section)
            aligned = topic.aligned
            out = [topic.head]
            cache = self._entries
            views = section.entries
            for e, after in zip(topic.slots, topic.after, strict=True):
                piece = cache.get(entry_key(views[e])) or self._entry(section, views[e])
                aligned = aligned and piece.aligned
                out.append(piece.wrapped)
                if after:
                    out.append(after)
            parts, places = self._splice.cut(out)
            assembled = self._sections[section] = (parts, aligned, places)
        return assembled

    def _frame(self, section: SectionView) -> WrappedTopicFrame:
        key = topic_key(section)
        frame = self._frames.get(key)
        if frame is None:
            out = render_frame(self._topic, {"section": section, "title": self._title}, section.entries)
            frame = self._frames[key] = WrappedTopicFrame(
                head=_wrap_lines(out.parts[0]),
                after=[_wrap_lines(p) for p in out.parts[1:]],
                slots=out.slots,
                aligned=all(_ends_at_line_end(p) for p in out.parts),
            )
        return frame

    def _entry(self, section: SectionView, entry: EntryView) -> WrappedEntry:
        key = entry_key(entry)
        piece = self._entries.get(key)
        if piece is None:
            raw = render_template(self._whole[ENTRY_TEXT], entry_context(section, entry, self._title))
            piece = self._entries[key] = WrappedEntry(_wrap_lines(raw), _ends_at_line_end(raw))
        return piece


def _joined(wrapped: list[str]) -> tuple[str, tuple[str, ...]]:
    """Wrapped parts as the whole text part: ``wrap_text`` strips leading and trailing newlines,
    so strip them from the first and last non-empty parts."""
    wrapped = list(filter(None, wrapped))  # (in C: a digest has hundreds of parts)
    while wrapped and not wrapped[0].lstrip("\n"):
        wrapped.pop(0)
    while wrapped and not wrapped[-1].rstrip("\n"):
        wrapped.pop()
    if not wrapped:
        return "\n", ("\n",)
    wrapped[0] = wrapped[0].lstrip("\n")
    wrapped[-1] = wrapped[-1].rstrip("\n") + "\n"
    return "".join(wrapped), tuple(wrapped)
