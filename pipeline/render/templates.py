"""The Jinja environment, the template names, and rendering a template whole or cut at its slots.

Autoescaping is on for every template but the ``*.txt.j2`` ones, set by name because
``select_autoescape`` does not know ``.j2`` names; undefined variables are errors
(``StrictUndefined``). To cut an email into pieces, a second and third environment answer the
partials' names with a one-line *stub* that writes a marker (``SLOT``) where the partial's
output would go: rendering a layout with stubbed topics gives its frame, and which section
went into which slot (``render_frame``).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from ..errors import RenderError

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates"

LAYOUT_HTML, LAYOUT_TEXT = "digest.html.j2", "digest.txt.j2"
TOPIC_HTML, TOPIC_TEXT = "_topic.html.j2", "_topic.txt.j2"
ENTRY_HTML, ENTRY_TEXT = "_entry.html.j2", "_entry.txt.j2"
SUBJECT, PREHEADER = "subject.txt.j2", "preheader.txt.j2"
TEMPLATES = (LAYOUT_HTML, LAYOUT_TEXT, TOPIC_HTML, TOPIC_TEXT, ENTRY_HTML, ENTRY_TEXT, SUBJECT, PREHEADER)

SLOT = "\ue002"  # what a stubbed partial writes where its output would go
TOKEN = "__token__"  # the context's key for the email's own link token (``splice``), "" without links
_SLOT_STUB = {
    TOPIC_HTML: "{{ __slot__(section) }}",
    TOPIC_TEXT: "{{ __slot__(section) }}",
    ENTRY_HTML: "{{ __slot__(entry) }}",
    ENTRY_TEXT: "{{ __slot__(entry) }}",
}


# What rendering raises for a template's mistake (an undefined name under StrictUndefined, a
# value of the wrong type for a filter...): a RenderError for that digest alone.
RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, AttributeError)


class NotPiecewise(Exception):
    """This digest's templates cannot be assembled from pieces (inline the whole email)."""


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
    (includes too), and copying the ChainMap it uses by default is slower than copying a
    dict. Globals are never changed after the templates are loaded."""

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


@dataclass(frozen=True, slots=True)
class TemplateSet:
    """A run's templates, loaded once: whole, and with partials stubbed to cut emails into pieces."""

    whole: dict[str, jinja2.Template]  # every template by name, partials included
    layouts: dict[str, jinja2.Template]  # the two layouts, topic partials stubbed
    topics: dict[str, jinja2.Template]  # the two topic partials, entry partials stubbed


def load_templates(override: str | None) -> TemplateSet:
    """Every template, built-in or from ``override``; a RenderError names a broken one."""
    layout_env = template_environment(override, stubs=(TOPIC_HTML, TOPIC_TEXT))
    topic_env = template_environment(override, stubs=(ENTRY_HTML, ENTRY_TEXT))
    env = template_environment(override)
    try:
        return TemplateSet(
            whole={name: env.get_template(name) for name in TEMPLATES},
            layouts={n: layout_env.get_template(n) for n in (LAYOUT_HTML, LAYOUT_TEXT)},
            topics={n: topic_env.get_template(n) for n in (TOPIC_HTML, TOPIC_TEXT)},
        )
    except jinja2.TemplateError as exc:
        raise template_error(exc) from exc


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


def render_template(template: jinja2.Template, context: dict[str, Any]) -> str:
    """``template.render(context)``, without the copy of its globals Jinja makes on every call."""
    ctx = template.new_context({**_template_globals(template), **context}, shared=True)
    try:
        return str(template.environment.concat(template.root_render_func(ctx)))
    except Exception:
        template.environment.handle_exception()  # re-raises with the template's file and line
        raise


@functools.lru_cache(maxsize=64)
def _template_globals(template: jinja2.Template) -> dict[str, Any]:
    return dict(template.globals)


@dataclass(slots=True)
class Frame:
    """A template's output cut where its stubbed partials were: parts[0] slot parts[1]..."""

    parts: list[str]
    slots: list[int]  # which item (index into the sequence given) went into each slot


def render_frame(template: jinja2.Template, context: dict[str, Any], items: Sequence[object]) -> Frame:
    """Render a template whose partials are stubbed; ``items`` are what the stubs may be given."""
    included: list[object] = []

    def slot(item: object) -> Markup:
        included.append(item)
        return Markup(SLOT)

    parts = render_template(template, {**context, "__slot__": slot}).split(SLOT)
    if len(parts) != len(included) + 1:
        raise NotPiecewise(f"{template.name}: a slot marker was written outside a slot")
    slots = []
    for item in included:
        index = next((i for i, candidate in enumerate(items) if candidate is item), None)
        if index is None:
            raise NotPiecewise(f"{template.name}: includes a partial for something not in the list")
        slots.append(index)
    return Frame(parts, slots)
