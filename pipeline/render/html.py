"""The HTML part: each email planned, its missing pieces inlined per batch, then assembled.

``plan`` cuts an email's layout into its frame; ``prepare`` notes every piece a batch of plans
needs that the run has not inlined yet, grouped by layout context, and inlines each group in
one catalogue (``catalogue``); ``html`` assembles an email from the inlined pieces, filling in
its values. A section's assembled parts are kept for every email that shows the same section.

Piecewise inlining gives up, with a warning, and every email is then inlined whole when the
stylesheet has selectors that depend on siblings or attributes (``inline``), when a catalogue
cannot be inlined, or when an override template's first email differs from the whole email.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import RenderError
from .catalogue import Catalogue, CatalogueOrder
from .inline import piecewise_blockers
from .pieces import EmailPlan, HtmlPieces
from .splice import TokenSplice
from .templates import LAYOUT_HTML, RENDER_ERRORS, TOKEN, NotPiecewise, TemplateSet, render_template
from .views import SectionView, entry_key, topic_key

PREPARE_ERRORS = (NotPiecewise, *RENDER_ERRORS)  # skipped by prepare: ``render`` reports them


@dataclass(frozen=True, slots=True)
class FilledTopicFrame:
    """A section's inlined frame with its values filled in, shared by every subscriber."""

    head: str
    tail: str
    gaps: list[str]
    slots: list[int]
    head_id: int  # the topic head's shape: part of its entries' cache key


class HtmlAssembler:
    """A run's HTML parts, assembled from pieces inlined once per run (or inlined whole)."""

    def __init__(
        self,
        templates: TemplateSet,
        title: str,
        catalogue: Catalogue,
        warn: Callable[[str, str], None],
        *,
        check: bool,
        splice: TokenSplice,
    ) -> None:
        self._pieces = HtmlPieces(templates, title)
        self._splice = splice
        self._catalogue = catalogue
        self._layout = templates.whole[LAYOUT_HTML]
        self._warn = warn
        self.whole = False  # True: every email is inlined whole (set when pieces cannot be used)
        self._checked = not check  # overrides get one whole-vs-pieces comparison per run
        self._css_checked: set[int] = set()  # layout ids whose stylesheet was checked
        self._filled: dict[tuple[int, tuple[Any, ...]], FilledTopicFrame] = {}  # by layout id, topic_key
        # assembled, by layout id: the parts, and where the email's token goes (``splice``)
        self._sections: dict[tuple[int, SectionView], tuple[tuple[str, ...], tuple[int, ...]]] = {}

    def forget_sections(self) -> None:
        """Drop the assembled sections (their views are being dropped)."""
        self._sections.clear()

    def plan(self, context: dict[str, Any]) -> EmailPlan:
        """An email's plan: its context and layout frame (none when it is to be inlined whole)."""
        if self.whole:
            return EmailPlan(context, None)
        try:
            layout = self._pieces.layout_frame(context)
        except NotPiecewise as exc:
            self._warn("layout", f"{exc}: inlining such emails whole, which is slow")
            return EmailPlan(context, None)
        return EmailPlan(context, layout, layout.context_id)

    def prepare(self, plans: Iterable[EmailPlan]) -> None:
        """Inline, in one premailer call per layout context, every piece these emails need."""
        orders: dict[int, CatalogueOrder] = {}  # by layout id
        for plan in plans:
            if self.whole:
                return
            try:
                self._collect(plan, orders)
            except PREPARE_ERRORS:
                continue  # ``render`` reports it for this digest alone
        for layout_id, order in orders.items():
            if self.whole:
                return
            try:
                self._catalogue.inline(layout_id, order)
            except (ValueError, RenderError) as exc:
                self._warn("catalogue", f"inlining pieces failed ({exc}): inlining every email whole")
                self.whole = True

    def html(self, plan: EmailPlan, *, check: bool) -> tuple[str, list[str] | None]:
        """The inlined HTML, and the same as line-aligned parts (None when inlined whole).

        ``check``: this email may serve as the run's one comparison with the whole email.
        """
        parts = self._assembled(plan)
        if parts is None:
            return self.whole_html(plan.context), None
        html = "".join(parts)
        if not self._checked and check:
            self._checked = True
            whole = self.whole_html(plan.context)
            if whole != html:
                self._warn("check", "an email assembled from pieces differs from the whole email")
                self.whole = True
                return whole, None
        return html, parts

    def whole_html(self, context: dict[str, Any]) -> str:
        """The email rendered in one piece and inlined by one premailer call."""
        html = self._catalogue.inline_whole(render_template(self._layout, context))
        return self._splice.fill(html, context[TOKEN])

    # --- preparing --------------------------------------------------------------------------------

    def _blocked(self, plan: EmailPlan) -> bool:
        """Whether this layout's stylesheet forbids piecewise inlining (then: whole, warned)."""
        if self.whole:
            return True
        if plan.layout_id in self._css_checked:
            return False
        self._css_checked.add(plan.layout_id)
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

    def _collect(self, plan: EmailPlan, orders: dict[int, CatalogueOrder]) -> None:
        """Note in ``orders`` every piece of this email not inlined yet."""
        layout = plan.layout
        if layout is None or self._blocked(plan):
            return
        catalogue, layout_id = self._catalogue, plan.layout_id
        order = orders.get(layout_id)
        if order is None:
            order = orders[layout_id] = CatalogueOrder(layout)
        if (layout.head_id, layout.tail_id) not in catalogue.layouts:
            order.layouts.setdefault((layout.head_id, layout.tail_id), layout)
        sections = plan.context["sections"]
        for index in layout.slots:
            section = sections[index]
            if (layout_id, section) in self._sections:
                continue  # assembled already: every piece of it is there
            topic = self._pieces.topic_frame(section)
            key = (topic.head_id, topic.tail_id)
            if (layout_id, *key) not in catalogue.frames:
                order.frames.setdefault(key, topic)
            for e in topic.slots:
                entry = section.entries[e]
                if (layout_id, topic.head_id, entry_key(entry)) not in catalogue.entries:
                    source = self._pieces.entry_source(section, entry)
                    order.entries.setdefault(topic.head_id, {})[entry_key(entry)] = source
                    order.frames.setdefault(key, topic)  # entries are inlined inside a frame of their kind

    # --- assembling -------------------------------------------------------------------------------

    def _assembled(self, plan: EmailPlan) -> list[str] | None:
        """The inlined HTML as line-aligned parts, or None when it must be inlined whole."""
        for attempt in (1, 2):
            if self.whole or plan.layout is None:
                return None
            try:
                return self._assemble(plan)
            except NotPiecewise as exc:
                self._warn("topic", f"{exc}: inlining such emails whole, which is slow")
                return None
            except KeyError:
                if attempt == 1:
                    self.prepare([plan])  # not prepared (or only partly): one premailer call now
        self._warn("missing", "pieces missing after prepare: inlining such emails whole")
        return None

    def _assemble(self, plan: EmailPlan) -> list[str]:
        layout = plan.layout
        assert layout is not None
        head, tail = self._catalogue.layouts[(layout.head_id, layout.tail_id)]
        sections = plan.context["sections"]
        out = [head.fill(layout.head_values)]
        places: list[int] = []
        for n, index in enumerate(layout.slots):
            if n and layout.gaps[n - 1]:
                out.append(layout.gaps[n - 1])
            parts, marked = self._section(plan.layout_id, sections[index])
            if marked:
                start = len(out)
                places += [start + i for i in marked]
            out += parts
        if tail is not None:
            out.append(tail.fill(layout.tail_values))
        token = plan.context[TOKEN]
        for i in places:  # (the one object: compose knows it by identity)
            out[i] = token
        return out

    def _section(self, layout_id: int, section: SectionView) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """A section's inlined HTML, as parts: its frame and its entries, shared pieces; and
        where in them the email's token goes."""
        assembled = self._sections.get((layout_id, section))
        if assembled is not None:
            return assembled
        filled = self._filled_frame(layout_id, section)
        entries = self._catalogue.entries
        views = section.entries
        out = [filled.head]
        for n, e in enumerate(filled.slots):
            if n and filled.gaps[n - 1]:
                out.append(filled.gaps[n - 1])
            out.append(entries[(layout_id, filled.head_id, entry_key(views[e]))])
        if filled.tail:
            out.append(filled.tail)
        assembled = self._sections[(layout_id, section)] = self._splice.cut(out)
        return assembled

    def _filled_frame(self, layout_id: int, section: SectionView) -> FilledTopicFrame:
        key = (layout_id, topic_key(section))
        filled = self._filled.get(key)
        if filled is None:
            topic = self._pieces.topic_frame(section)
            head, tail = self._catalogue.frames[(layout_id, topic.head_id, topic.tail_id)]
            filled = self._filled[key] = FilledTopicFrame(
                head.fill(topic.head_values),
                tail.fill(topic.tail_values) if tail is not None else "",
                topic.gaps,
                topic.slots,
                topic.head_id,
            )
        return filled
