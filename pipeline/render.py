"""Turn a :class:`Digest` into its subject, HTML part and plain-text part.

Templates live in ``templates/`` (``[digest] templates`` names a folder whose files override
them by name). Autoescaping is on for every HTML template, set explicitly because
``select_autoescape`` does not know ``.j2`` names; text templates (``*.txt.j2``) are not
escaped, and their output is wrapped at 78 columns. Feed HTML is sanitised with nh3 before it
reaches a template, and feed text is only ever a template *value*, never template source.
"""

from __future__ import annotations

import logging
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import nh3
import premailer
from markupsafe import Markup, escape

from .config import Settings
from .errors import RenderError
from .models import Digest, Entry, Match, RenderedDigest
from .text import clean_text, html_to_text

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TEXT_WIDTH = 78

# Summary HTML allowlist: structure and emphasis only; no images, forms, media or styles.
ALLOWED_TAGS = {
    "p",
    "br",
    "b",
    "strong",
    "i",
    "em",
    "a",
    "ul",
    "ol",
    "li",
    "code",
    "pre",
    "blockquote",
    "sub",
    "sup",
}
ALLOWED_ATTRIBUTES = {"a": {"href"}}
URL_SCHEMES = {"http", "https", "mailto"}


def _autoescape(name: str | None) -> bool:
    return not (name or "").endswith(".txt.j2")


def template_environment(override: str | None) -> jinja2.Environment:
    """The Jinja2 environment: overrides first, then the built-in templates."""
    folders = [override, str(BUILTIN_TEMPLATES)] if override else [str(BUILTIN_TEMPLATES)]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders),
        autoescape=_autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def sanitize_html(fragment: str) -> str:
    """Feed HTML reduced to the allowlist; links open safely and carry no referrer."""
    return nh3.clean(
        fragment,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        clean_content_tags={"script", "style"},
    )


def template_error(exc: Exception) -> RenderError:
    """A RenderError naming the template file and line where ``exc`` happened."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return RenderError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}")
    if isinstance(exc, jinja2.TemplateNotFound):
        return RenderError(f"template not found: {exc.name}")
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2") or frame.filename.endswith(".css"):
            where = f"{frame.filename}:{frame.lineno}: "
            break
    return RenderError(f"{where}template error: {exc}")


@dataclass(frozen=True, slots=True)
class _EntryView:
    title: str
    title_html: Markup
    link: str | None
    authors: str
    feeds: str
    date: str
    summary_html: Markup
    summary_text: str
    hits: tuple[str, ...]


class Renderer:
    """Renders digests for one run; per-entry work is cached so each entry is prepared once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = template_environment(settings.digest.templates)
        try:
            self.templates = {
                name: self.env.get_template(name)
                for name in ("digest.html.j2", "digest.txt.j2", "subject.txt.j2", "preheader.txt.j2")
            }
        except jinja2.TemplateError as exc:
            raise template_error(exc) from exc
        self._entries: dict[tuple[int, str], _EntryView] = {}
        logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)

    def render(self, digest: Digest) -> RenderedDigest:
        """Subject, inlined HTML and wrapped text for one digest."""
        context = self._context(digest)
        try:
            subject = clean_text(self.templates["subject.txt.j2"].render(context))
            context["preheader"] = clean_text(self.templates["preheader.txt.j2"].render(context))
            html = self.templates["digest.html.j2"].render(context)
            text = wrap_text(self.templates["digest.txt.j2"].render(context))
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
            raise template_error(exc) from exc
        return RenderedDigest(subject=subject, html=inline_css(html), text=text)

    def _context(self, digest: Digest) -> dict[str, Any]:
        zone = self._zone(digest.subscriber)
        sections = [
            {
                "topic": section.topic,
                "title": section.title,
                "entries": [self._entry(m) for m in section.matches],
                "more": section.more,
            }
            for section in digest.sections
        ]
        return {
            "title": self.settings.digest.title,
            "date": digest.created_at.astimezone(zone).strftime("%A %-d %B %Y"),
            "subscriber": {"email": digest.subscriber, "name": digest.name},
            "sections": sections,
            "total": digest.entry_count,
            "more": digest.more_count,
            "topics": list(digest.topics),
            "unsubscribe_url": unsubscribe_url(self.settings, digest.subscriber),
            "preheader": "",
        }

    def _zone(self, email: str) -> Any:
        subscriber = self.settings.subscriber(email)
        return self.settings.zone_of(subscriber) if subscriber else self.settings.digest.timezone

    def _entry(self, match: Match) -> _EntryView:
        key = (match.entry.id, match.topic)
        view = self._entries.get(key)
        if view is None:
            view = self._entries[key] = self._entry_view(match.entry, match.hits)
        return view

    def _entry_view(self, entry: Entry, hits: tuple[str, ...]) -> _EntryView:
        limit = self.settings.digest.summary_words
        clean = sanitize_html(entry.summary_html)
        text = " ".join(html_to_text(clean).split())
        words = text.split(" ")
        if len(words) > limit:
            text = " ".join(words[:limit]) + " …"
            summary_html = Markup("<p>") + escape(text) + Markup("</p>")
        else:
            summary_html = Markup(clean)
        return _EntryView(
            title=entry.title,
            title_html=escape(entry.title),
            link=entry.link,
            authors=", ".join(entry.authors),
            feeds=", ".join(entry.feeds),
            date=entry.published.strftime("%-d %b %Y"),
            summary_html=summary_html,
            summary_text=text,
            hits=hits,
        )


def unsubscribe_url(settings: Settings, email: str) -> str:
    """Where the footer's unsubscribe link points: the web endpoint or a mailto."""
    if settings.digest.base_url:
        return f"{settings.digest.base_url.rstrip('/')}/unsubscribe?email={quote(email)}"
    address = settings.sender.rsplit("<", 1)[-1].rstrip(">").strip()
    return f"mailto:{address}?subject={quote('unsubscribe ' + email)}"


def inline_css(html: str) -> str:
    """Move the stylesheet into style attributes; media queries stay in <style>."""
    return str(
        premailer.Premailer(
            html,
            allow_network=False,
            strip_important=False,  # keep !important inside @media so phone/dark overrides win
            keep_style_tags=False,
            disable_validation=True,
            cssutils_logging_level=logging.CRITICAL,
        ).transform()
    )


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap each line at ``width`` columns, keeping its indent and never breaking a URL."""
    out = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line.rstrip())
            continue
        indent = line[: len(line) - len(line.lstrip())]
        bullet = "* " if line.lstrip().startswith("* ") else ""
        out.extend(
            textwrap.wrap(
                line.strip(),
                width=width,
                initial_indent=indent,
                subsequent_indent=indent + " " * len(bullet),
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out).strip("\n") + "\n"
