"""Feed HTML made fit for an email: sanitised, shortened, highlighted, and as plain text.

Everything here works on untrusted input. ``sanitize_html`` reduces a summary to a small
allowlist with nh3 (no scripts, forms, frames, styles, event handlers or ``javascript:``
links; images only when asked, https only, at most ``MAX_IMAGES`` and at most
``MAX_IMAGE_WIDTH`` pixels wide). The other functions take nh3's output, which is well formed
(every element closed, attribute values double-quoted and escaped), and walk it as a flat
list of tags and text: text is only ever changed through ``escape``, so no function here can
open a tag that the sanitiser did not allow.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import nh3
from markupsafe import Markup, escape

from ..match import hit_spans
from ..text import clean_text

ALLOWED_TAGS = frozenset(
    {"p", "br", "b", "strong", "i", "em", "a", "ul", "ol", "li", "code", "pre", "blockquote", "sub", "sup"}
)
LINK_SCHEMES = ("http://", "https://", "mailto:")
# Elements whose content is not text to show (code, raw text, embedded documents): dropped whole.
DROPPED_WITH_CONTENT = frozenset(
    {"script", "style", "iframe", "noscript", "noembed", "noframes", "xmp", "template", "object", "embed",
     "applet", "title", "textarea", "select", "frameset", "head"}
)  # fmt: skip
MAX_IMAGES = 3  # per summary, with ``[digest] images = true``
MAX_IMAGE_WIDTH = 560  # the 600 px column less its padding
MAX_IMAGE_HEIGHT = 800
MIN_IMAGE_SIZE = 3  # smaller images are tracking pixels: dropped
ELLIPSIS = " …"

_VOID = frozenset({"br", "img"})
_BLOCK = frozenset({"p", "ul", "ol", "li", "pre", "blockquote"})
_TOKEN = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9]*)((?:\s+[^\s"'>/=]+(?:\s*=\s*"[^"]*")?)*)\s*/?>""")
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*"([^"]*)")?""")
_WORD = re.compile(r"\S+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Tag:
    """A start or end tag of sanitised HTML, with its source text."""

    name: str
    end: bool
    attrs: dict[str, str]
    raw: str


Token = Tag | str  # a str is text, still escaped as in the source


def tokens(fragment: str) -> Iterator[Token]:
    """Sanitised HTML as tags and (escaped) text, in order."""
    pos = 0
    for m in _TOKEN.finditer(fragment):
        if m.start() > pos:
            yield fragment[pos : m.start()]
        attrs = {a.group(1).lower(): html.unescape(a.group(2) or "") for a in _ATTR.finditer(m.group(3))}
        yield Tag(m.group(2).lower(), bool(m.group(1)), attrs, m.group(0))
        pos = m.end()
    if pos < len(fragment):
        yield fragment[pos:]


def _attribute_filter(images: bool) -> object:
    def keep(tag: str, attr: str, value: str) -> str | None:
        if tag == "a" and attr == "href":
            return value if value.strip().lower().startswith(LINK_SCHEMES) else None
        if tag == "img" and attr == "src":
            # https only: a plain-http image leaks the reader's address to anyone on the path.
            return value if images and value.strip().lower().startswith("https://") else None
        return value

    return keep


def sanitize_html(fragment: str, *, images: bool = False) -> str:
    """Feed HTML reduced to the allowlist; links carry ``rel="noopener noreferrer"``.

    Links keep only absolute http, https and mailto targets (a link without one is unwrapped).
    With ``images``, https images survive: at most ``MAX_IMAGES``, none smaller than
    ``MIN_IMAGE_SIZE`` pixels (tracking pixels), width and height capped proportionally.
    """
    tags = set(ALLOWED_TAGS) | ({"img"} if images else set())
    attributes: dict[str, set[str]] = {"*": set(), "a": {"href"}}
    if images:
        attributes["img"] = {"src", "alt", "width", "height"}
    clean = nh3.clean(
        fragment,
        tags=tags,
        attributes=attributes,
        url_schemes={"http", "https", "mailto"},
        attribute_filter=_attribute_filter(images),  # type: ignore[arg-type]
        link_rel="noopener noreferrer",
        clean_content_tags=DROPPED_WITH_CONTENT,
        strip_comments=True,
    )
    if _DEAD_LINK in clean:
        clean = _unwrap_dead_links(clean)
    return _limit_images(clean) if images and "<img" in clean else clean


_DEAD_LINK = '<a rel="noopener noreferrer">'  # a link whose target the sanitiser removed


def _unwrap_dead_links(fragment: str) -> str:
    out, dead = [], False
    for token in tokens(fragment):
        if isinstance(token, Tag) and token.name == "a":
            if not token.end:
                dead = "href" not in token.attrs
            if dead:
                continue
        out.append(token if isinstance(token, str) else token.raw)
    return "".join(out)


def _dimension(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip()) or None


def _limit_images(fragment: str) -> str:
    out, kept = [], 0
    for token in tokens(fragment):
        if isinstance(token, Tag) and token.name == "img":
            src = token.attrs.get("src", "")
            width, height = _dimension(token.attrs.get("width")), _dimension(token.attrs.get("height"))
            if not src or kept >= MAX_IMAGES or min(width or 99, height or 99) < MIN_IMAGE_SIZE:
                continue  # no source, too many, or a tracking pixel
            kept += 1
            if width and width > MAX_IMAGE_WIDTH:
                height = round(height * MAX_IMAGE_WIDTH / width) if height else None
                width = MAX_IMAGE_WIDTH
            if height and height > MAX_IMAGE_HEIGHT:
                width = round(width * MAX_IMAGE_HEIGHT / height) if width else None
                height = MAX_IMAGE_HEIGHT
            attrs = [f'src="{escape(src)}"', f'alt="{escape(clean_text(token.attrs.get("alt", "")))}"']
            attrs.append(f'width="{width or MAX_IMAGE_WIDTH}"')  # a width always: no unbounded images
            if height:
                attrs.append(f'height="{height}"')
            out.append(f"<img {' '.join(attrs)}>")
        else:
            out.append(token if isinstance(token, str) else token.raw)
    return "".join(out)


def count_words(fragment: str) -> int:
    """Words of a sanitised fragment's text."""
    return sum(len(_WORD.findall(html.unescape(t))) for t in tokens(fragment) if isinstance(t, str))


def shorten_html(fragment: str, limit: int) -> tuple[str, bool]:
    """The fragment cut after ``limit`` words on a word boundary, open elements closed.

    Returns the fragment and whether anything was cut (then it ends with "…").
    """
    if count_words(fragment) <= limit:
        return fragment, False
    out: list[str] = []
    stack: list[str] = []
    seen = 0
    for token in tokens(fragment):
        if isinstance(token, Tag):
            out.append(token.raw)
            if token.name in _VOID:
                continue
            if not token.end:
                stack.append(token.name)
            elif token.name in stack:
                del stack[len(stack) - 1 - stack[::-1].index(token.name) :]
            continue
        text = html.unescape(token)
        words = list(_WORD.finditer(text))
        if seen + len(words) < limit:
            seen += len(words)
            out.append(token)
            continue
        cut = words[limit - seen - 1].end()
        out.append(str(escape(text[:cut])) + ELLIPSIS)
        break
    out.extend(f"</{name}>" for name in reversed(stack))
    return "".join(out), True


def highlight_text(text: str, hits: Iterable[str], *, field: str = "title") -> Markup:
    """Plain text, escaped, with the words that made the entry match wrapped in ``<mark>``.

    ``field`` is what the text is (``match.hit_spans``): a hit that searches only summaries
    is not marked in a title.
    """
    spans = hit_spans(text, tuple(hits), field=field)
    if not spans:
        return escape(text)
    out, pos = [], 0
    for start, end in spans:
        out.append(str(escape(text[pos:start])))
        out.append(f"<mark>{escape(text[start:end])}</mark>")
        pos = end
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))


def highlight_html(fragment: str, hits: Iterable[str]) -> str:
    """Sanitised HTML with hit words marked, inside text only (never in tags or attributes).

    Words are found in the fragment's whole text, so a phrase split by inline markup
    ("spiking <b>neural networks</b>") is marked piece by piece in each text node. Each
    distinct hit is marked where it first occurs: enough to see why, without a yellow page.
    """
    hits = tuple(hits)
    parts = list(tokens(fragment))
    texts: list[str] = []
    offsets: list[int] = []
    size = 0
    for token in parts:
        if isinstance(token, str):
            text = html.unescape(token)
        else:
            # a block boundary separates words; inline tags do not
            text = " " if token.name in _BLOCK or token.name in _VOID else ""
        offsets.append(size)
        texts.append(text)
        size += len(text)
    whole = "".join(texts)
    spans, seen = [], set()
    for start, end in hit_spans(whole, hits, field="summary"):
        key = " ".join(whole[start:end].casefold().split())
        if key not in seen:
            seen.add(key)
            spans.append((start, end))
    if not spans:
        return fragment
    out = []
    for token, text, offset in zip(parts, texts, offsets, strict=True):
        if not isinstance(token, str):
            out.append(token.raw)
            continue
        inside = [
            (max(a, offset) - offset, min(b, offset + len(text)) - offset)
            for a, b in spans
            if a < offset + len(text) and b > offset
        ]
        if not inside:
            out.append(token)
            continue
        pos = 0
        for a, b in inside:
            out.append(str(escape(text[pos:a])))
            out.append(f"<mark>{escape(text[a:b])}</mark>")
            pos = b
        out.append(str(escape(text[pos:])))
    return "".join(out)


def html_to_text(fragment: str) -> tuple[str, tuple[str, ...]]:
    """Sanitised HTML as plain text, and the link targets it refers to as ``[1]``, ``[2]``...

    Paragraphs and list items become lines (items start with "- "), ``<br>`` a line break,
    ``<pre>`` keeps its lines; entities are decoded and no tag is left. A link whose text is
    not its target gets a ``[n]`` reference; the targets come back in order, each once.
    """
    lines: list[str] = []
    line: list[str] = []
    links: list[str] = []
    href: str | None = None
    anchor: list[str] = []
    pre = 0
    ordered: list[int | None] = []

    def flush(blank: bool = False) -> None:
        text = "".join(line)
        text = text.rstrip() if pre else _SPACE.sub(" ", text).strip()
        if text:
            lines.append(text)
        line.clear()
        if blank and lines and lines[-1] != "":
            lines.append("")

    for token in tokens(fragment):
        if isinstance(token, str):
            text = html.unescape(token)
            if pre:
                parts = text.split("\n")
                for part in parts[:-1]:
                    line.append(part)
                    flush()
                line.append(parts[-1])
            else:
                line.append(text)
            if href is not None:
                anchor.append(text)
            continue
        name = token.name
        if name == "br":
            flush()
        elif name == "a" and not token.end:
            href = token.attrs.get("href") or None
            anchor = []
        elif name == "a" and token.end:
            label = _SPACE.sub(" ", "".join(anchor)).strip()
            if href and label != href and label != href.removeprefix("mailto:"):
                if href not in links:
                    links.append(href)
                line.append(f" [{links.index(href) + 1}]")
            href = None
        elif name == "img":
            src = token.attrs.get("src", "")
            if src not in links:
                links.append(src)
            alt = clean_text(token.attrs.get("alt", "")) or "image"
            line.append(f"[{alt}] [{links.index(src) + 1}]")
        elif name in ("ul", "ol"):
            flush(blank=True)
            if token.end:
                if ordered:
                    ordered.pop()
            else:
                ordered.append(0 if name == "ol" else None)
        elif name == "li":
            flush()
            if not token.end:
                number = ordered[-1] if ordered else None
                if number is not None:
                    ordered[-1] = number + 1
                line.append("- " if number is None else f"{number + 1}. ")
        elif name == "pre":
            flush(blank=True)
            pre += -1 if token.end else 1
            pre = max(pre, 0)
        elif name in _BLOCK:
            flush(blank=True)
    flush()
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines), tuple(links)
