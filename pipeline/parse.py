"""Turn a feed's bytes into normalised :class:`FeedItem` records.

feedparser only ever sees bytes (and the response headers, for the charset and the base of
relative links); it reads RSS 0.9x, 1.0 (RDF) and 2.0 and Atom. Everything a feed says is
untrusted:

- **ids**: an item is its guid (Atom ``id``, RSS ``guid``, RDF ``rdf:about``), else its
  canonical link, else a hash of its title and text;
- **links** keep only http(s), lose tracking parameters (``utm_*``, ``fbclid``, ...) and
  default ports, and keep the fragment (comment feeds tell entries apart only by it);
- **titles** lose control characters and collapse whitespace, and are cut at a word boundary
  after ``TITLE_LIMIT`` characters (with "…"); an entry without a title gets the first words
  of its text with an ellipsis;
- **dates** are timezone-aware UTC: published, else updated, else none (the store then uses
  the time it first saw the entry);
- **arXiv ids** are read from the id, the guid and the link, whatever the spelling
  (``2403.12345``, ``oai:arXiv.org:2403.12345v1``, ``arxiv.org/abs/2403.12345v2``,
  ``huggingface.co/papers/2403.12345`` are one paper);
- summaries stay HTML here and are sanitised when rendered; one longer than ``SUMMARY_LIMIT``
  characters is cut here (see :func:`cap_summary`).

A feed flagged "bozo" (malformed) that still yields entries is used, with a warning; one that
yields none is an error for that feed only.

**Time bound.** feedparser has super-linear regular expressions (its author-email search is
quadratic in the length of an author string: a 40 kB author took 11 s here), and a regex
cannot be interrupted from Python. Feeds are therefore parsed in a helper process
(:class:`ParserProcess`) that is killed when the time limit is over, so a hostile feed costs
at most the limit and fails alone; the helper starts once per fetch and is reused.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import os
import pickle
import re
import select
import subprocess
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from . import child_process
from .errors import ParseError
from .models import FeedItem, FetchResult, ParsedFeed
from .text import clean_text, has_control, strip_html

_SPACE = re.compile(r"\s+")
_TRACKING = re.compile(
    r"^(utm_.*|fbclid|gclid|dclid|gbraid|wbraid|msclkid|mc_cid|mc_eid|_hsenc|_hsmi|mkt_tok|igshid|yclid"
    r"|twclid|ttclid|li_fat_id|_ga|_gl|oly_anon_id|oly_enc_id|vero_id|rb_clickid|s_cid|ref_src)$",
    re.I,
)
# An arXiv id after a prefix that names arXiv: new-style (2403.12345, since 2007) or old-style
# (hep-th/9901001, math.GT/0309136), with an optional version and ".pdf".
_ARXIV_PREFIXED = re.compile(
    r"(?:(?:^|[/.])arxiv\.org/(?:abs|pdf|html)/|(?:^|[/.])huggingface\.co/papers/|^arxiv:|^oai:arxiv\.org:"
    r"|\b10\.48550/arxiv\.)"
    r"(\d{4}\.\d{4,5}|[a-z]+(?:-[a-z]+)?(?:\.[a-z]{2})?/\d{7})(?:v\d+)?(?:\.pdf)?(?:[/?#]|$)",
    re.I,
)
# A bare new-style id (YYMM.NNNNN) is only taken when it is the whole value.
_ARXIV_BARE = re.compile(r"^(\d{2}(?:0[1-9]|1[0-2])\.\d{4,5})(?:v\d+)?$")
# arXiv's RSS prefixes every abstract with its id and announcement type.
_ARXIV_PREAMBLE = re.compile(
    r"^\s*(?:<p>\s*)?arXiv:\S+\s+Announce Type:\s*\S+\s*(?:<br\s*/?>)?\s*Abstract:\s*", re.I
)
_URL_BREAKS = re.compile(r"[\t\r\n]")
_URL_SPACE = re.compile(r"\s")
TITLE_WORDS = 12
TITLE_CHARS = 80
# Bounds on what one entry may bring: a feed within [fetch] max_bytes could otherwise hold a
# 9.5 MB title, and every email then carried it (twice: text and HTML).
TITLE_LIMIT = 300  # characters, "…" included
SUMMARY_LIMIT = 100_000  # characters of HTML; rendering keeps at most [digest] summary_words words


def parse_feed(result: FetchResult) -> ParsedFeed:
    """Parse one downloaded feed; raise ParseError when it holds no usable entries."""
    if result.content is None:
        return ParsedFeed(result.feed, ())
    import feedparser  # here: feeds are parsed in the parse helper, which imports it at start

    headers = {k.lower(): v for k, v in result.headers.items()}
    if result.url.startswith(("http://", "https://")):
        # The base against which relative links resolve (feedparser reads Content-Location).
        headers.setdefault("content-location", result.url)
    # sanitize_html=False: we sanitise with nh3 at render time, with our own allowlist.
    parsed: Any = feedparser.parse(
        result.content,
        response_headers=headers,
        sanitize_html=False,
        resolve_relative_uris=True,
    )
    version = str(parsed.get("version") or "")
    problem = parsed.get("bozo_exception") if parsed.bozo else None
    # feedparser flags these as "bozo", but they are about the HTTP headers, not the document.
    if isinstance(problem, (feedparser.NonXMLContentType, feedparser.CharacterEncodingOverride)):
        problem = None  # a missing or odd Content-Type: the document itself parsed cleanly
    if not version:
        reason = f" ({_bozo_reason(problem)})" if problem is not None else ""
        raise ParseError(f"not a feed: no RSS, RDF or Atom document found{reason}")
    warnings: list[str] = []
    if problem is not None:
        reason = _bozo_reason(problem)
        if not parsed.entries:
            raise ParseError(f"the feed is malformed and has no usable entries ({reason})")
        warnings.append(f"feed is malformed but has {len(parsed.entries)} usable entries ({reason})")
    items = tuple(_item(result.feed, raw) for raw in parsed.entries)
    return ParsedFeed(result.feed, items, tuple(warnings), version)


def parse_feed_bounded(result: FetchResult, *, time_limit: float) -> ParsedFeed:
    """:func:`parse_feed` in a helper process that is killed after ``time_limit`` seconds."""
    with ParserProcess() as parser:
        return parser.parse(result, time_limit=time_limit)


class ParserProcess:
    """A helper interpreter (``python -m pipeline.parse``) that parses feeds for this process.

    It imports only this module (once) and then parses one feed after another
    (see :mod:`pipeline.child_process`). A parse that runs past its time limit is stopped by killing
    the helper; the next parse starts a new one.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def parse(self, result: FetchResult, *, time_limit: float) -> ParsedFeed:
        """Parse one feed, or raise ParseError (also when it takes longer than ``time_limit``)."""
        if result.content is None:
            return ParsedFeed(result.feed, ())
        deadline = time.monotonic() + time_limit
        try:
            self._write(child_process.frame(result), deadline)
            size = int.from_bytes(self._read(8, deadline), "big")
            outcome = pickle.loads(self._read(size, deadline))
        except TimeoutError:
            self.close()
            raise ParseError(f"parsing took longer than {time_limit:g}s (stopped)") from None
        except (OSError, EOFError, pickle.UnpicklingError):
            code = self.close()
            raise ParseError(f"the parser died (exit code {code})") from None
        if isinstance(outcome, ParseError):
            raise outcome
        if not isinstance(outcome, ParsedFeed):  # pragma: no cover - the helper sends nothing else
            raise ParseError(f"the parser sent {type(outcome).__name__}")
        return outcome

    def start(self) -> ParserProcess:
        """Start the helper now (it otherwise starts with the first parse)."""
        self._running()
        return self

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            self.process = child_process.start("pipeline.parse")
            assert self.process.stdin is not None
            os.set_blocking(self.process.stdin.fileno(), False)
        return self.process

    def _write(self, data: memoryview, deadline: float) -> None:
        # A single write to a pipe can be cut short (by a signal, or a full pipe buffer): loop,
        # and never block past the deadline on a helper that stopped reading.
        process = self._running()
        assert process.stdin is not None
        fd, view = process.stdin.fileno(), memoryview(data)
        while view:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([], [fd], [], wait)[1]:
                raise TimeoutError
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue

    def _read(self, size: int, deadline: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        chunks, remaining = [], size
        while remaining:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def close(self) -> int | None:
        """Stop the helper (killing it mid-parse if need be); return its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        code = process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        return code

    def __enter__(self) -> ParserProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _answer(result: FetchResult) -> ParsedFeed | ParseError:
    """The helper's side: a ParsedFeed, or the ParseError that says why not."""
    try:
        return parse_feed(result)
    except ParseError as exc:
        return exc
    except Exception as exc:  # feedparser failing in a new way is still this feed's problem only
        return ParseError(f"the parser failed: {type(exc).__name__}: {exc}")


def _bozo_reason(exc: object) -> str:
    text = clean_text(str(exc)) if exc is not None else ""
    return text[:200] or type(exc).__name__


def _item(feed: str, raw: Any) -> FeedItem:
    summary = _summary_html(raw)
    link = canonical_link(raw.get("link"))
    title = _title(raw, summary)
    guid = clean_text(str(raw.get("id") or "")) or link
    if not guid:
        guid = "sha1:" + hashlib.sha1(f"{title}\n{summary}".encode()).hexdigest()
    authors = tuple(
        name
        for name in (
            clean_text(str(a.get("name") or "")) for a in raw.get("authors", []) if isinstance(a, dict)
        )
        if name
    )
    if not authors and raw.get("author"):
        authors = (clean_text(str(raw["author"])),)
    categories = tuple(
        term
        for term in (clean_text(str(t.get("term") or "")) for t in raw.get("tags", []) if isinstance(t, dict))
        if term
    )
    return FeedItem(
        feed=feed,
        guid=guid,
        title=title,
        link=link,
        summary_html=summary,
        authors=tuple(dict.fromkeys(authors)),
        categories=tuple(dict.fromkeys(categories)),
        published=_date(raw.get("published_parsed"))
        or _date(raw.get("updated_parsed"))
        or _date(raw.get("created_parsed")),
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
        value = "<p>" + html.escape(value).replace("\n\n", "</p><p>") + "</p>"
    return cap_summary(value)


def normalise_title(text: str, *, is_html: bool = False) -> str:
    """A title for one line: tags dropped (when HTML), NFC, no control characters, spaces collapsed."""
    if is_html:
        text = strip_html(text)
    return clean_text(unicodedata.normalize("NFC", text))


def title_from_text(text: str) -> str:
    """A title made of the first words of an entry's text, with an ellipsis when cut."""
    words = normalise_title(text).split()
    if not words:
        return "(untitled)"
    title = " ".join(words[:TITLE_WORDS])
    cut = len(words) > TITLE_WORDS
    if len(title) > TITLE_CHARS:  # scripts written without spaces (CJK) have long "words"
        short = title[:TITLE_CHARS]
        title = short.rsplit(" ", 1)[0] if " " in short else short
        cut = True
    return title.rstrip(" ,;:.") + "…" if cut else title


def _title(raw: Any, summary: str) -> str:
    detail = raw.get("title_detail") or {}
    title = normalise_title(
        str(raw.get("title") or ""), is_html=detail.get("type") in ("text/html", "application/xhtml+xml")
    )
    return cap_title(title) if title else title_from_text(strip_html(summary))


def cap_title(title: str, limit: int = TITLE_LIMIT) -> str:
    """A title of at most ``limit`` characters: cut at a word boundary, with "…" when cut."""
    if len(title) <= limit:
        return title
    short = title[: limit - 1]  # room for the ellipsis
    if title[limit - 1] != " " and " " in short[limit // 2 :]:
        short = short.rsplit(" ", 1)[0]  # not in the middle of a word, unless it is one long word
    return short.rstrip(" ,;:.") + "…"


def cap_summary(summary_html: str, limit: int = SUMMARY_LIMIT) -> str:
    """A summary of at most ``limit`` characters (plus "…"): cut, but not inside a tag or entity.

    Cut here, before storing, rather than when rendering: a summary is stored, indexed for
    matching and read back by every run, and rendering shows at most ``[digest]
    summary_words`` words of it anyway. Markup left open by the cut is closed by the
    sanitiser when the summary is rendered.
    """
    if len(summary_html) <= limit:
        return summary_html
    short = summary_html[:limit]
    tag, entity = short.rfind("<"), short.rfind("&")
    if tag > short.rfind(">"):
        short = short[:tag]  # a tag cut in two
    if entity > short.rfind(";") and entity > len(short) - 12:
        short = short[:entity]  # an entity cut in two (&amp; ... &#x1F600;)
    return short + "…"


def canonical_link(link: object) -> str | None:
    """An http(s) link without tracking parameters; anything else (javascript:, data:) is None.

    Idempotent: a canonical link is its own canonical link. The scheme and host are lower-cased
    and a default port dropped; the rest is kept as written (parameters keep their order and
    spelling), except that whitespace inside is percent-encoded.
    """
    if not isinstance(link, str):
        return None
    # As browsers do (WHATWG URL): tabs and newlines inside a URL are dropped.
    link = _URL_BREAKS.sub("", link).strip()
    if not link or has_control(link):
        return None
    try:
        parts = urlsplit(link)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    hostport = hostport.lower().removesuffix({"http": ":80", "https": ":443"}[scheme])
    query = "&".join(
        pair
        for pair in parts.query.split("&")
        if pair and not _TRACKING.match(unquote_plus(pair.split("=", 1)[0]))
    )
    # The fragment stays: comment feeds tell entries apart only by it (post/#comment-713578641).
    path, query, fragment = (
        _URL_SPACE.sub(lambda m: quote(m[0]), part) for part in (parts.path or "/", query, parts.fragment)
    )
    canonical = urlunsplit((scheme, userinfo + at + hostport, path, query, fragment))
    try:
        urlsplit(canonical)
    except ValueError:
        return None
    return canonical


def arxiv_id(*candidates: object) -> str | None:
    """The arXiv id (without version) named by an id, guid or link, if any."""
    for candidate in candidates:
        if isinstance(candidate, str):
            text = candidate.strip()
            found = _ARXIV_PREFIXED.search(text) or _ARXIV_BARE.match(text)
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


if __name__ == "__main__":
    import feedparser  # noqa: F401  (now, while the parent downloads the feeds)

    child_process.serve(_answer)
