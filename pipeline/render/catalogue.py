"""The catalogue: a run's missing pieces inlined in one premailer call, and the inlined pieces kept.

A catalogue is one document: a layout head, then every topic frame and entry piece an email
batch needs and the run has not inlined yet, then the layout tail. Each piece sits where it
would in a real email (topic frames inside the layout's slot, entries inside a topic frame of
their kind), so premailer gives it the styles it would get there (``inline`` says why that
is exact). Pieces are kept by layout context (``inline.slot_context``: the stylesheet and the
elements around the sections): the same entry inside another context is another piece.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from ..errors import RenderError
from .inline import Inlined, inline_css, inline_pieces
from .pieces import HtmlFrame

InlinedFrame = tuple[Inlined, Inlined | None]  # an inlined head and tail (None: no slot)
FrameKey = tuple[int, int]  # a frame's head and tail shape ids
# what each piece between a catalogue's layout head and tail is: a topic frame's head or tail
# (by FrameKey), or an entry (by topic head id, entry_key)
Placed = list[tuple[Literal["head", "entry", "tail"], tuple[int, int]]]


@dataclass(slots=True)
class CatalogueOrder:
    """What one catalogue (one layout context) must inline."""

    layout: HtmlFrame  # the frame whose head and tail surround the pieces
    layouts: dict[FrameKey, HtmlFrame] = field(default_factory=dict)  # layouts themselves not inlined yet
    frames: dict[FrameKey, HtmlFrame] = field(default_factory=dict)  # topic frames
    entries: dict[int, dict[int, str]] = field(default_factory=dict)  # sources by topic head id, entry_key


class Catalogue:
    """Every piece a run has inlined, and every premailer call made (for pieces or whole emails)."""

    def __init__(self) -> None:
        logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)
        self.layouts: dict[FrameKey, InlinedFrame] = {}  # by layout head id, tail id
        self.frames: dict[tuple[int, int, int], InlinedFrame] = {}  # by layout id, topic head id, tail id
        self.entries: dict[tuple[int, int, int], str] = {}  # by layout id, topic head id, entry_key
        self.premailer_calls = 0  # how often premailer ran, and for how long (for figures)
        self.premailer_seconds = 0.0

    def inline_whole(self, document: str) -> str:
        """One email inlined in one premailer call."""
        start = time.perf_counter()
        try:
            return inline_css(document)
        except Exception as exc:  # premailer, cssutils or lxml on a stylesheet they cannot take
            raise RenderError(f"inlining the stylesheet failed: {exc!r}") from exc
        finally:
            self.premailer_calls += 1
            self.premailer_seconds += time.perf_counter() - start

    def inline(self, layout_id: int, order: CatalogueOrder) -> None:
        """One premailer call: a layout with, in its slot, every needed topic frame and entry."""
        layouts = list(order.layouts.values())
        for extra in layouts[1:]:  # another tail for the same head: its own small call
            outputs = self._premailer([extra.head.source] + ([extra.tail.source] if extra.tail else []))
            self._store_layout(extra, outputs)
        layout = layouts[0] if layouts else order.layout
        pieces, placed = self._document(layout, order)
        if not placed and not layouts:
            return
        outputs = self._premailer(pieces, keep_media=bool(layouts))
        if layouts:
            self._store_layout(layout, [outputs[0], outputs[-1]] if layout.tail else outputs)
        body = outputs[1:-1] if layout.tail is not None else outputs[1:]
        self._store_body(layout_id, order, placed, body)

    @staticmethod
    def _document(layout: HtmlFrame, order: CatalogueOrder) -> tuple[list[str], Placed]:
        """The catalogue as pieces, and what each piece between the layout's head and tail is."""
        pieces = [layout.head.source]
        placed: Placed = []
        if layout.tail is None:  # a layout without sections has no slot for pieces
            return pieces, placed
        topics_placed: set[int] = set()
        for key, topic in order.frames.items():
            pieces.append(topic.head.source)
            placed.append(("head", key))
            if topic.head_id not in topics_placed:
                topics_placed.add(topic.head_id)
                for entry, source in order.entries.get(topic.head_id, {}).items():
                    pieces.append(source)
                    placed.append(("entry", (topic.head_id, entry)))
            if topic.tail is not None:
                pieces.append(topic.tail.source)
                placed.append(("tail", key))
        pieces.append(layout.tail.source)
        return pieces, placed

    def _store_body(
        self,
        layout_id: int,
        order: CatalogueOrder,
        placed: Placed,
        body: list[str],
    ) -> None:
        """Keep the inlined topic frames and entries of a catalogue."""
        heads: dict[FrameKey, Inlined] = {}
        for (kind, key), output in zip(placed, body, strict=True):
            if kind == "entry":
                self.entries[(layout_id, *key)] = output
                continue
            frame = order.frames[key]
            if kind == "head":
                heads[key] = Inlined.compile(output, frame.head)
                if frame.tail is None:
                    self.frames[(layout_id, *key)] = (heads[key], None)
            else:
                assert frame.tail is not None  # only frames with a tail have a "tail" piece
                self.frames[(layout_id, *key)] = (heads[key], Inlined.compile(output, frame.tail))

    def _store_layout(self, layout: HtmlFrame, outputs: list[str]) -> None:
        tail = Inlined.compile(outputs[1], layout.tail) if layout.tail is not None else None
        self.layouts[(layout.head_id, layout.tail_id)] = (Inlined.compile(outputs[0], layout.head), tail)

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
