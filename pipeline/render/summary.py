"""Feed HTML made fit for an email: sanitised, shortened, highlighted, and as plain text.

A summary is shortened to its first sentences (``first_sentences``), then capped at a number
of words (``shorten_html``). Sentences end at ``.``, ``!`` or ``?`` (and closing quotes or
brackets) followed by a space and a word that does not start in lower case, or at the end of
a block (a paragraph, a list item); a full stop after an abbreviation (``e.g.``, ``et al.``,
``Fig.``, ``vs.``: ``ABBREVIATIONS``), after a dotted one (``U.S.``) or after an initial
(``J. Smith``) ends nothing, nor does one inside a number (``0.4``), which no space follows.

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

from ..match import Term, hit_spans, hit_term, merge_spans
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

# Words after which a full stop does not end a sentence (compared in lower case, without the
# stop): references to figures and equations, Latin abbreviations, titles of people.
ABBREVIATIONS = frozenset(
    {"al", "approx", "appx", "ca", "cf", "ch", "chap", "cor", "dr", "eq", "eqs", "esp", "fig", "figs",
     "incl", "jr", "lem", "mr", "mrs", "pp", "prof", "prop", "ref", "refs", "resp", "sec", "secs", "sect",
     "sr", "st", "tab", "thm", "viz", "vol", "vs"}
)  # fmt: skip
# A stop, then closing quotes or brackets, then a space or the end of the text.
_SENTENCE_END = re.compile(r"""[.!?\u2026]+["'\u201d\u2019)\]]*(?=\s|$)""")
_LAST_WORD = re.compile(r"""[^\s(\["'\u201c\u2018]*$""")
_NEXT_CHARACTER = re.compile(r"\s*(\S)")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # e.g, i.e, U.S (their last stop is the candidate)


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
            _track(stack, token)
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


def sentence_ends(text: str, blocks: Iterable[int] = ()) -> list[int]:
    """Where the sentences of a plain text end (offsets just past each), in order.

    ``blocks`` are offsets where a block of the source starts or ends (a paragraph, a list
    item): a sentence ends there too. An offset ends a sentence only if text precedes it since the last.
    """
    found = set(blocks)
    for m in _SENTENCE_END.finditer(text):
        stop = m.group().rstrip("\"'\u201d\u2019)]")
        after = _NEXT_CHARACTER.match(text, m.end())
        if after and after.group(1).islower():
            continue  # "e.g. the", "approx. ten": a new sentence does not start in lower case
        if stop == ".":
            # (a bounded look back: no abbreviation is long, and a long text has many stops)
            word = _LAST_WORD.search(text[max(0, m.start() - 24) : m.start()])
            before = word.group() if word else ""
            if (
                before.lower() in ABBREVIATIONS
                or _DOTTED.fullmatch(before)
                or (len(before) == 1 and before.isupper())  # an initial: "J. Smith"
            ):
                continue
        found.add(m.end())
    ends, last = [], 0
    for end in sorted(found):
        if text[last:end].strip():
            ends.append(end)
            last = end
    return ends


def _flat(parts: list[Token]) -> tuple[list[str], list[int], str, list[int]]:
    """The text of sanitised HTML as one string: each token's text and offset, the whole text,
    and the offsets where blocks end. A block tag or ``<br>`` separates words; inline tags do not."""
    texts: list[str] = []
    offsets: list[int] = []
    blocks: list[int] = []
    size = 0
    for token in parts:
        if isinstance(token, str):
            text = html.unescape(token)
        else:
            text = " " if token.name in _BLOCK or token.name in _VOID else ""
            if token.name in _BLOCK:
                blocks.append(size)
        offsets.append(size)
        texts.append(text)
        size += len(text)
    return texts, offsets, "".join(texts), blocks


def first_sentences(fragment: str, count: int) -> tuple[str, bool]:
    """The fragment's first ``count`` sentences, open elements closed (tags are never cut).

    Returns the fragment and whether anything was cut. The rules are the module docstring's.
    """
    parts = list(tokens(fragment))
    texts, offsets, whole, blocks = _flat(parts)
    ends = sentence_ends(whole, blocks)
    if len(ends) <= count or not whole[ends[count - 1] :].strip():
        return fragment, False
    cut = ends[count - 1]
    out: list[str] = []
    stack: list[str] = []
    for token, text, offset in zip(parts, texts, offsets, strict=True):
        if offset >= cut:
            break
        if isinstance(token, str):
            if offset + len(text) > cut:
                out.append(str(escape(text[: cut - offset])))
                break
            out.append(token)
            continue
        out.append(token.raw)
        _track(stack, token)
    out.extend(f"</{name}>" for name in reversed(stack))
    return "".join(out), True


def _track(stack: list[str], tag: Tag) -> None:
    """Keep ``stack`` the elements open after ``tag`` (a cut closes them in reverse)."""
    if tag.name in _VOID:
        return
    if not tag.end:
        stack.append(tag.name)
    elif tag.name in stack:
        del stack[len(stack) - 1 - stack[::-1].index(tag.name) :]


def highlight_text(text: str, hits: Iterable[str], *, field: str = "title") -> Markup:
    """Plain text, escaped, with the words that made the entry match in ``<b class="hit">``.

    For titles: bold (the stylesheet underlines it too), never a background, which inside a
    link would make half the title stop looking like one. ``field`` is what the text is
    (``match.hit_spans``): a hit that searches only summaries is not marked in a title.
    """
    spans = hit_spans(text, tuple(hits), field=field)
    if not spans:
        return escape(text)
    out, pos = [], 0
    for start, end in spans:
        out.append(str(escape(text[pos:start])))
        out.append(f'<b class="hit">{escape(text[start:end])}</b>')
        pos = end
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))


def first_hit_spans(text: str, hits: Iterable[str], *, field: str = "summary") -> list[tuple[int, int]]:
    """Where each distinct hit first occurs in ``text``: sorted, non-overlapping spans.

    Hits are the same keyword when they search the same fields for words that match
    (``match.Term.same``: ``bandit`` and ``Bandits``, ``RL`` and ``RLs``): each keyword is
    marked once, at its first occurrence in any of its forms.
    """
    terms: list[Term] = []
    spans: list[tuple[int, int]] = []
    for hit in hits:
        term = hit_term(hit)
        if term is None or any(term.same(seen) for seen in terms):
            continue
        terms.append(term)
        found = hit_spans(text, (hit,), field=field)
        if found:
            spans.append(found[0])
    return merge_spans(spans)


def highlight_html(fragment: str, hits: Iterable[str]) -> str:
    """Sanitised HTML with hit words in ``<mark>``, inside text only (never in tags or attributes).

    Each keyword is marked once, where it first occurs in any of its forms (singular or
    plural, any case: ``first_hit_spans``): enough to see why, without a yellow page. Words
    are found in the fragment's whole text, so a phrase split by inline markup ("spiking
    <b>neural networks</b>") is marked piece by piece in each text node.
    """
    parts = list(tokens(fragment))
    texts, offsets, whole, _ = _flat(parts)
    spans = first_hit_spans(whole, hits)
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
