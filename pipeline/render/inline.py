"""CSS inlining with premailer, done once per distinct piece of a run instead of once per email.

premailer is by far the slowest step of rendering an email, so it never runs per subscriber.
The renderer cuts each email into pieces (the layout, each topic section, each entry:
``pieces``), puts every distinct piece of a run into one *catalogue* document, in the same
ancestor context it has in a real email, runs premailer once on the catalogue, splits the
result at marker comments (``catalogue``), and assembles each subscriber's email from the
inlined pieces (``html``).

Why the result is the same as inlining the whole email at once:

- premailer gives an element the styles of the rules whose selectors match it. With no
  sibling selectors (``+``, ``~``, ``:first-child``, ``:last-child``, ``:nth-*``, ``*-of-type``,
  ``:only-*``) nor attribute selectors, a match depends only on the element and its
  ancestors, which the catalogue reproduces. ``piecewise_blockers`` finds such selectors;
  the renderer then inlines whole emails (with a warning) instead.
- The HTML is serialised without pretty-printing (``pretty_print=False``): libxml2 then adds
  no formatting whitespace, whose placement depends on sibling nodes; each node's output is
  a function of the node alone, so marker comments between pieces change nothing else.
- Text that differs between subscribers (their name, counts, the date) and the URL-like
  attributes ``href``, ``src``, ``title``, ``alt`` are replaced by placeholders (``Shape``):
  a piece is inlined once per *shape*, and each subscriber's values are filled in escaped
  exactly as libxml2 escapes them (text: ``& < >``; attributes: serialised by lxml itself).
  Text holding anything but the simple escapes Jinja produces stays literal in the shape.
- A piece is kept per layout *context* (``slot_context``): the stylesheet and the elements
  open where the sections go, which is all its inlining depends on by the two points above.
  Layouts whose heads differ only in what closes before the sections (the header's contents
  line has one link per section) share their pieces.

The test suite compares both ways on sample and hostile digests, byte for byte.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cssutils
import premailer
from lxml import etree

log = logging.getLogger("digest")

MARKER = "<!--digest-piece-->"
_MARKER_SPLIT = re.compile(re.escape(MARKER))

# Markup tokens of template output: comments (conditional comments included), doctype,
# elements whose content is not markup (kept whole), and tags with quoted attributes.
_MARKUP = re.compile(
    r"""<!--.*?-->
      | <!\[CDATA\[.*?\]\]>
      | <![^>]*>
      | <(style|script|title|textarea)\b(?:[^>"']|"[^"]*"|'[^']*')*>.*?</\1\s*>
      | </?[A-Za-z][^\s/>]*(?:[^>"']|"[^"]*"|'[^']*')*>""",
    re.S | re.I | re.X,
)
_VARIABLE_ATTR = re.compile(r"""(\s(href|src|title|alt)\s*=\s*")([^"]*)(")""", re.I)
_TAG_NAME = re.compile(r"</?([A-Za-z][^\s/>]*)")
_STYLE_BLOCK = re.compile(r"(<style\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>)(.*?)(</style\s*>)", re.S | re.I)
# The escapes Jinja (markupsafe) writes; text with any other "&" stays literal in a shape.
_SIMPLE_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|#34|#39|#x27);")
_UNSAFE_TEXT = re.compile(r"[<\x00-\x08\x0b-\x1f\x7f]")
TEXT_HOLE = "\ue000{}\ue001"
ATTR_HOLE = "dgstph{}z"  # letters and digits only: libxml2's URI escaping leaves it alone
_HOLES = re.compile("\ue000(\\d+)\ue001|dgstph(\\d+)z")

# Selectors whose match depends on siblings or attribute values (see the module docstring).
_BLOCKING_SELECTOR = re.compile(r"[+~\[]|:(?:first|last|nth|only)-|-of-type|:empty", re.I)


def inline_css(document: str) -> str:
    """Move the stylesheet into style attributes; media queries stay in <style>.

    ``width``/``height`` attributes are left alone (``disable_basic_attributes``): premailer
    would otherwise overwrite the container's ``width="600"``, which Outlook needs, with the
    CSS ``width: 100%`` that makes it fluid everywhere else.
    """
    return str(
        _Premailer(
            document,
            allow_network=False,
            strip_important=False,  # keep !important inside @media so phone/dark overrides win
            keep_style_tags=False,
            disable_validation=True,
            disable_basic_attributes=["width", "height"],
            cssutils_logging_level=logging.CRITICAL,
        ).transform(pretty_print=False)
    )


class _Premailer(premailer.Premailer):  # type: ignore[misc]
    """premailer, keeping each stylesheet's rules between calls.

    Every call inlines the same stylesheet; premailer caches its parse, but not the rules it
    then turns back into text, much of each call's cost. The options that shape the rules are
    the same in every call (``inline_css``'s), so the rules can be shared.
    """

    def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list[Any], list[Any]]:
        key = (css_body, ruleset_index)
        rules = _STYLE_RULES.get(key)
        if rules is None:
            if len(_STYLE_RULES) >= 8:
                _STYLE_RULES.clear()
            rules = _STYLE_RULES[key] = super()._parse_style_rules(css_body, ruleset_index)
        return rules


_STYLE_RULES: dict[tuple[str, int], tuple[list[Any], list[Any]]] = {}


def piecewise_blockers(document: str) -> list[str]:
    """Selectors of the document's stylesheets that would inline differently piece by piece."""
    found = []
    for match in _STYLE_BLOCK.finditer(document):
        sheet = _parse_css(match.group(2))
        for rule in sheet:
            if rule.type == rule.STYLE_RULE:  # @media rules stay in <style>: never inlined
                found += [
                    s.selectorText for s in rule.selectorList if _BLOCKING_SELECTOR.search(s.selectorText)
                ]
    return found


@functools.lru_cache(maxsize=8)
def _parse_css(css: str) -> cssutils.css.CSSStyleSheet:
    cssutils.log.setLevel(logging.CRITICAL)
    return cssutils.parseString(css, validate=False)


def without_media_rules(document: str) -> str:
    """The document with ``@media`` blocks removed from its <style> elements.

    premailer never inlines @media rules, it only re-serialises them (much of its cost), so a
    catalogue whose layout output is not wanted is inlined with this lighter stylesheet.
    """
    return _STYLE_BLOCK.sub(lambda m: m.group(1) + _strip_media(m.group(2)) + m.group(3), document)


def _strip_media(css: str) -> str:
    out, start, i, depth = [], 0, 0, 0
    while i < len(css):
        skipped = _skip_comment_or_string(css, i)
        if skipped != i:
            i = skipped
        elif css[i] == "{":
            depth, i = depth + 1, i + 1
        elif css[i] == "}":
            depth, i = depth - 1, i + 1
        elif depth == 0 and css.startswith("@media", i):
            out.append(css[start:i])
            i = start = _block_end(css, i)
        else:
            i += 1
    out.append(css[start:])
    return "".join(out)


def _skip_comment_or_string(css: str, i: int) -> int:
    """Where the comment or string starting at ``i`` ends (``i`` itself if none starts there)."""
    if css.startswith("/*", i):
        end = css.find("*/", i + 2)
        return len(css) if end < 0 else end + 2
    if css[i] in "\"'":
        j = i + 1
        while j < len(css) and css[j] != css[i]:
            j += 2 if css[j] == "\\" else 1
        return j + 1
    return i


def _block_end(css: str, i: int) -> int:
    """The index just after the {...} block of the at-rule starting at ``i``."""
    depth = 0
    while i < len(css):
        skipped = _skip_comment_or_string(css, i)
        if skipped != i:
            i = skipped
            continue
        if css[i] == "{":
            depth += 1
        elif css[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


# --- shapes: pieces with their variable text taken out --------------------------------------


@dataclass(frozen=True, slots=True)
class Hole:
    """Where a value goes: text (``tag`` is None) or an attribute of a tag."""

    tag: str | None = None
    attr: str | None = None


@dataclass(frozen=True, slots=True)
class Shape:
    """A piece of template output with placeholders where its values were.

    ``literals`` are the output between the values (one more than ``holes``).
    """

    source: str
    holes: tuple[Hole, ...]
    literals: tuple[str, ...]


def shape_of(fragment: str) -> tuple[Shape, tuple[str, ...]]:
    """Split template output into its shape and its values (decoded, in placeholder order)."""
    out: list[str] = []
    holes: list[Hole] = []
    values: list[str] = []
    literals: list[str] = []
    pos = 0

    def hole(kind: Hole, value: str) -> None:
        literals.append("".join(out))
        out.clear()
        holes.append(kind)
        values.append(html.unescape(value))

    def text(chunk: str) -> None:
        if not chunk or chunk.isspace() or not _simple(chunk) or (chunk[0] == "\n" and _after_pre(out)):
            out.append(chunk)
        else:
            hole(Hole(), chunk)

    for m in _MARKUP.finditer(fragment):
        text(fragment[pos : m.start()])
        token = m.group(0)
        if m.group(1) is None and token[1:2].isalpha():
            tag = _TAG_NAME.match(token)
            name = tag.group(1).lower() if tag else ""

            start = 0
            for a in _VARIABLE_ATTR.finditer(token):
                if _simple(a.group(3)):
                    out.append(token[start : a.start(3)])
                    hole(Hole(name, a.group(2).lower()), a.group(3))
                    start = a.end(3)
            token = token[start:]
        out.append(token)
        pos = m.end()
    text(fragment[pos:])
    literals.append("".join(out))
    source = "".join(
        lit + (TEXT_HOLE if kind.tag is None else ATTR_HOLE).format(i)
        for i, (lit, kind) in enumerate(zip(literals, holes, strict=False))
    )
    return Shape(source + literals[-1], tuple(holes), tuple(literals)), tuple(values)


_SLOT_MARK = "digest-slot"


def slot_context(head: str) -> str:
    """What decides how the pieces written right after ``head`` are inlined, as a key.

    That is the stylesheets (``<style>`` elements, whole) and the elements open where
    ``head`` ends, with their attributes, as libxml2 parses them (a comment written there
    shows where that is). premailer's matches depend on an element and its ancestors only,
    and libxml2 parses what follows by the elements open, so two heads with the same key
    inline every piece alike, however they differ elsewhere (their own text, a line of links
    that depends on the number of sections). When the place cannot be found, the key is the
    head itself: such heads share nothing.
    """
    try:
        root = etree.fromstring(f"{head.strip()}<!--{_SLOT_MARK}-->", etree.HTMLParser())
    except (etree.LxmlError, ValueError):
        return head
    slot = None
    if root is not None:
        slot = next((c for c in root.iter(etree.Comment) if c.text == _SLOT_MARK), None)
    chain = [] if slot is None else [(el.tag, sorted(el.attrib.items())) for el in slot.iterancestors()]
    if not chain:
        return head
    sheets = [m.group(1) + m.group(2) for m in _STYLE_BLOCK.finditer(head)]
    return repr((sheets, chain))


def _after_pre(out: list[str]) -> bool:
    # A newline right after <pre> or <textarea> is dropped by HTML parsers: keep such text literal.
    return bool(out) and re.match(r"<(?:pre|textarea|listing)\b", out[-1], re.I) is not None


def match_shape(fragment: str, shape: Shape) -> tuple[str, ...] | None:
    """The values of ``fragment`` if ``shape_of`` would give it ``shape``; else None.

    Much cheaper than ``shape_of``: the literals are compared, not re-tokenised. A text value
    runs to the next "<" (markup follows text), an attribute value to the next '"'.
    """
    literals = shape.literals
    if not fragment.startswith(literals[0]):
        return None
    pos = len(literals[0])
    values = []
    for kind, literal in zip(shape.holes, literals[1:], strict=True):
        end = fragment.find("<" if kind.tag is None else '"', pos)
        if end < 0:
            if kind.tag is not None or literal:
                return None
            end = len(fragment)
        raw = fragment[pos:end]
        if not fragment.startswith(literal, end) or not _simple(raw):
            return None
        if kind.tag is None and (not raw or raw.isspace()):
            return None
        values.append(html.unescape(raw) if "&" in raw else raw)
        pos = end + len(literal)
    return tuple(values) if pos == len(fragment) else None


def _simple(chunk: str) -> bool:
    """Whether text decodes the same way in html.unescape and libxml2 (only Jinja's escapes)."""
    if _UNSAFE_TEXT.search(chunk) or "\ue000" in chunk or "dgstph" in chunk:
        return False
    return "&" not in chunk or "&" not in _SIMPLE_ENTITY.sub("", chunk)


@dataclass(frozen=True, slots=True)
class Inlined:
    """An inlined shape: literal output strings between the holes (``parts[i]`` then hole i)."""

    parts: tuple[str, ...]
    holes: tuple[int, ...]
    kinds: tuple[Hole, ...]

    @classmethod
    def compile(cls, output: str, shape: Shape) -> Inlined:
        parts, holes = [], []
        pos = 0
        for m in _HOLES.finditer(output):
            parts.append(output[pos : m.start()])
            holes.append(int(m.group(1) or m.group(2)))
            pos = m.end()
        parts.append(output[pos:])
        if sorted(holes) != list(range(len(shape.holes))):
            raise ValueError("premailer lost or repeated a placeholder")
        return cls(tuple(parts), tuple(holes), shape.holes)

    def fill(self, values: Sequence[str]) -> str:
        """The inlined piece with these values, escaped the way libxml2 writes them."""
        if not self.holes:
            return self.parts[0]
        out = [self.parts[0]]
        for hole, part in zip(self.holes, self.parts[1:], strict=True):
            kind = self.kinds[hole]
            value = values[hole]
            if kind.tag is None:
                out.append(value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
            else:
                out.append(serialised_attribute(kind.tag, kind.attr or "", value))
            out.append(part)
        return "".join(out)


# Printable ASCII but " & < >: lxml writes such a value as it is, in a URI attribute or not
# (tests/render/test_render_vote_links.py holds them equal). Most per-subscriber values are
# such links (unsubscribe, preferences, archive), each new: no element need be made for them.
_PLAIN_ATTRIBUTE = re.compile(r"[!#-%'-;=?-~]*")


def serialised_attribute(tag: str, attr: str, value: str) -> str:
    """An attribute value as lxml writes it in HTML (URI attributes are %-escaped)."""
    if _PLAIN_ATTRIBUTE.fullmatch(value):
        return value
    return _lxml_attribute(tag, attr, value)


@functools.lru_cache(maxsize=4096)
def _lxml_attribute(tag: str, attr: str, value: str) -> str:
    element = etree.Element(tag)
    element.set(attr, value)
    written = str(etree.tostring(element, method="html", encoding="unicode"))
    start = written.index('="') + 2
    end = written.rindex('"')
    return written[start:end]


# --- the catalogue: many pieces, one premailer call -------------------------------------------


def inline_pieces(pieces: Iterable[str], *, keep_media: bool = True) -> list[str]:
    """Inline a document given as consecutive pieces; return each piece's inlined output.

    The pieces must form one document when joined. Marker comments are placed between them
    and the output is cut there. With ``keep_media=False`` @media rules are left out of the
    stylesheet, which changes only the <style> element left in the output.
    """
    pieces = list(pieces)
    document = MARKER.join(pieces)
    if not keep_media:
        document = without_media_rules(document)
    out = _MARKER_SPLIT.split(inline_css(document))
    if len(out) != len(pieces):
        raise ValueError(f"catalogue: {len(pieces)} pieces went in, {len(out)} came out")
    return out
