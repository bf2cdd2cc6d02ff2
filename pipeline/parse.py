"""Turn a feed's bytes into normalised :class:`FeedItem` records.

feedparser only ever sees bytes (and the response headers, for the charset). Everything a feed
says is untrusted: titles lose control characters, links keep only http(s) and lose tracking
parameters, summaries stay HTML here and are sanitised when rendered.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import feedparser

from .errors import ParseError
from .models import FeedItem, FetchResult, ParsedFeed
from .text import clean_text, has_control, html_to_text

_SPACE = re.compile(r"\s+")
_TRACKING = re.compile(
    r"^(utm_.*|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|_hsenc|_hsmi|mkt_tok|igshid|yclid|ref_src)$", re.I
)
_ARXIV = re.compile(
    r"(?:arxiv\.org/(?:abs|pdf|html)/|arxiv:|oai:arxiv\.org:|huggingface\.co/papers/|^)"
    r"(\d{4}\.\d{4,5}|[a-z-]+(?:\.[a-z]{2})?/\d{7})(?:v\d+)?(?:\.pdf)?(?:[/?#]|$)",
    re.I,
)
# arXiv's RSS prefixes every abstract with its id and announcement type.
_ARXIV_PREAMBLE = re.compile(
    r"^\s*(?:<p>\s*)?arXiv:\S+\s+Announce Type:\s*\S+\s*(?:<br\s*/?>)?\s*Abstract:\s*", re.I
)
TITLE_WORDS = 12


def parse_feed(result: FetchResult) -> ParsedFeed:
    """Parse one downloaded feed; raise ParseError when it holds no usable entries."""
    if result.content is None:
        return ParsedFeed(result.feed, ())
    # sanitize_html=False: we sanitise with nh3 at render time, with our own allowlist.
    parsed: Any = feedparser.parse(
        result.content,
        response_headers=dict(result.headers),
        sanitize_html=False,
        resolve_relative_uris=True,
    )
    warnings: list[str] = []
    if parsed.bozo:
        reason = _bozo_reason(parsed.bozo_exception)
        if not parsed.entries:
            if not parsed.version and not parsed.feed:
                raise ParseError(f"not a feed ({reason})")
            raise ParseError(f"no entries ({reason})")
        warnings.append(f"feed is malformed but has {len(parsed.entries)} usable entries ({reason})")
    elif not parsed.version:
        raise ParseError("not a feed (no RSS, RDF or Atom document found)")
    items = []
    for raw in parsed.entries:
        item = _item(result.feed, raw)
        if item is not None:
            items.append(item)
    return ParsedFeed(result.feed, tuple(items), tuple(warnings))


def _bozo_reason(exc: object) -> str:
    text = _SPACE.sub(" ", str(exc)).strip()
    return text[:200] or type(exc).__name__


def _item(feed: str, raw: Any) -> FeedItem | None:
    summary = _summary_html(raw)
    link = canonical_link(raw.get("link"))
    title = _title(raw, summary)
    guid = clean_text(raw.get("id") or "") or link
    if not guid:
        guid = "sha1:" + hashlib.sha1(f"{title}\n{summary}".encode()).hexdigest()
    authors = tuple(
        name
        for name in (clean_text(a.get("name", "")) for a in raw.get("authors", []) if isinstance(a, dict))
        if name
    )
    if not authors and raw.get("author"):
        authors = (clean_text(raw["author"]),)
    categories = tuple(
        term
        for term in (clean_text(t.get("term") or "") for t in raw.get("tags", []) if isinstance(t, dict))
        if term
    )
    return FeedItem(
        feed=feed,
        guid=guid,
        title=title,
        link=link,
        summary_html=summary,
        authors=authors,
        categories=tuple(dict.fromkeys(categories)),
        published=_date(raw.get("published_parsed") or raw.get("updated_parsed")),
        arxiv_id=arxiv_id(raw.get("id"), raw.get("guid"), raw.get("link")),
    )


def _summary_html(raw: Any) -> str:
    """The richest body the entry has, as HTML (plain text is escaped into HTML)."""
    candidates = [c for c in raw.get("content", []) if isinstance(c, dict) and c.get("value")]
    detail = raw.get("summary_detail") or {}
    if raw.get("summary"):
        candidates.append({"value": raw["summary"], "type": detail.get("type", "text/html")})
    if not candidates:
        return ""
    best = max(candidates, key=lambda c: len(c["value"]))
    value = _ARXIV_PREAMBLE.sub("", str(best["value"]).strip())
    if best.get("type") == "text/plain":
        return "<p>" + html.escape(value).replace("\n\n", "</p><p>") + "</p>"
    return value


def _title(raw: Any, summary: str) -> str:
    title = raw.get("title") or ""
    if (raw.get("title_detail") or {}).get("type") in ("text/html", "application/xhtml+xml"):
        title = html_to_text(title)
    title = clean_text(title)
    if title:
        return title
    words = html_to_text(summary).split()
    if not words:
        return "(untitled)"
    return " ".join(words[:TITLE_WORDS]) + ("…" if len(words) > TITLE_WORDS else "")


def canonical_link(link: object) -> str | None:
    """An http(s) link without tracking parameters; anything else (javascript:, data:) is None."""
    if not isinstance(link, str):
        return None
    link = link.strip()
    try:
        parts = urlsplit(link)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or has_control(link):
        return None
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)]
    netloc = parts.netloc.lower()
    default_port = {"http": ":80", "https": ":443"}[parts.scheme.lower()]
    netloc = netloc.removesuffix(default_port)
    # The fragment stays: comment feeds tell entries apart only by it (post/#comment-713578641).
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", urlencode(query), parts.fragment))


def arxiv_id(*candidates: object) -> str | None:
    """The arXiv id (without version) named by an id, guid or link, if any."""
    for candidate in candidates:
        if isinstance(candidate, str):
            found = _ARXIV.search(candidate.strip())
            if found:
                return found[1].lower() if "/" in found[1] else found[1]
    return None


def _date(parsed: time.struct_time | None) -> datetime | None:
    if not parsed:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None
