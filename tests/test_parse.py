"""Parsing and normalisation, on the feed files in tests/data and on generated text."""

from __future__ import annotations

import signal
import time
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from conftest import DATA
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.errors import ParseError
from pipeline.models import FeedItem, FetchResult, ParsedFeed
from pipeline.parse import (
    arxiv_id,
    canonical_link,
    normalise_title,
    parse_feed,
    parse_feed_bounded,
    title_from_text,
)


def parse(name: str, url: str | None = None) -> ParsedFeed:
    path = DATA / name
    url = url or f"https://feeds.example.org/{name}"
    return parse_feed(FetchResult(path.stem, url, 200, path.read_bytes()))


def by_title(feed: ParsedFeed) -> dict[str, FeedItem]:
    return {item.title: item for item in feed.items}


@pytest.mark.parametrize(
    ("name", "version", "count"),
    [
        ("atom.xml", "atom10", 3),
        ("hf-papers.xml", "atom10", 7),
        ("papers-hf.xml", "atom10", 3),
        ("arxiv-cs.xml", "rss20", 13),
        ("papers-arxiv.xml", "rss20", 3),
        ("rss2-no-guid.xml", "rss20", 4),
        ("rdf.xml", "rss10", 2),
        ("rss091.xml", "rss091u", 2),
        ("cjk.xml", "rss20", 4),
        ("no-dates.xml", "rss20", 2),
        ("duplicates.xml", "rss20", 6),
        ("comments.xml", "rss20", 2),
        ("edited-v1.xml", "rss20", 2),
    ],
)
def test_formats(name: str, version: str, count: int) -> None:
    feed = parse(name)
    assert feed.version == version
    assert len(feed.items) == count
    assert feed.warnings == ()  # a missing Content-Type is not a malformed feed
    for item in feed.items:
        assert item.feed == Path(name).stem and item.guid and item.title
        assert item.published is None or item.published.tzinfo is not None


def test_atom_text_constructs_authors_categories_and_dates() -> None:
    items = by_title(parse("atom.xml"))
    qa = items["Q&A: Diffusion models for robots"]  # type="html": tags gone, entities decoded
    assert qa.guid == "tag:research.example.com,2026:post-101"
    # Relative to xml:base, tracking parameters gone, others kept.
    assert qa.link == "https://research.example.com/blog/posts/qa-diffusion-robots?lang=en"
    assert qa.authors == ("Ada Example", "Grace Example")
    assert qa.categories == ("robotics", "diffusion")  # duplicates dropped, order kept
    assert qa.published == datetime(2026, 11, 24, 8, 30, tzinfo=UTC)  # +01:00 in the feed
    assert "<b>diffusion policies</b>" in qa.summary_html  # the richer content, not the summary
    scaling = items["Scaling spiking networks"]  # type="xhtml"
    assert scaling.published == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # only <updated>
    assert "<strong>spiking neural networks</strong>" in scaling.summary_html
    untitled = items["This note has no title, so its first twelve words become one…"]
    assert untitled.link == "https://research.example.com/blog/posts/untitled-note"


def test_rss_without_guids() -> None:
    feed = parse("rss2-no-guid.xml")
    items = by_title(feed)
    warehouse = items["Reinforcement learning for warehouse robots"]
    assert warehouse.guid == warehouse.link == "https://news.example.net/2026/11/rl-warehouse?id=7"
    bandit = items["A new benchmark for bandits"]
    # Scheme and host lower-cased, the default port and fbclid dropped.
    assert bandit.link == "https://news.example.net/2026/11/bandit-benchmark"
    assert bandit.published == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    editorial = items["Editorial: a quiet week"]
    assert editorial.link is None and editorial.guid.startswith("sha1:")
    assert items["Unsafe link"].link is None  # javascript: is not a link
    # The hash is stable: the same item parsed again has the same identity.
    assert by_title(parse("rss2-no-guid.xml"))["Editorial: a quiet week"].guid == editorial.guid


def test_rdf() -> None:
    first, old = parse("rdf.xml").items
    assert first.guid == "http://arxiv.org/abs/2611.04121v1"
    assert first.arxiv_id == "2611.04121"
    assert first.published == datetime(2026, 11, 27, 1, 0, tzinfo=UTC)  # dc:date, -05:00
    assert first.authors == ("Lena Hoffmann, Ravi Patel",)
    assert first.categories == ("cs.NE",)
    assert old.arxiv_id == "hep-th/9901001"


def test_rss_091_in_latin_1() -> None:
    first, second = parse("rss091.xml").items
    assert first.title == "Café et apprentissage par renforcement"
    assert "écrite en Latin-1" in second.summary_html
    assert first.published is None and first.guid == "http://cafe.example.org/notes/1"


def test_cjk_titles_and_hostile_characters() -> None:
    titles = [item.title for item in parse("cjk.xml").items]
    assert titles[0] == "脉冲神经网络的高效训练方法"
    assert titles[1] == "強化学習による ロボット制御 入門"  # CR/LF and tab became spaces
    assert titles[2] == "확산 모델 소개 evil 제목"  # line separator and bidi override gone
    # No spaces to cut at: the made-up title is cut by characters.
    assert titles[3].endswith("…") and len(titles[3]) == 81
    assert titles[3].startswith("这是一篇没有标题的文章")


def test_entries_without_dates() -> None:
    items = parse("no-dates.xml").items
    assert len(items) == 2 and all(item.published is None for item in items)


def test_comment_feeds_keep_the_fragment() -> None:
    first, second = parse("comments.xml").items
    assert first.link == "https://lab.example.org/blog/diffusion-pictures/#comment-713578641"
    assert second.link == "https://lab.example.org/blog/diffusion-pictures/#comment-713578642"
    assert first.guid != second.guid


def test_the_same_paper_in_hugging_face_and_arxiv_style_feeds() -> None:
    hf = parse("papers-hf.xml").items
    arxiv = parse("papers-arxiv.xml").items
    assert [i.arxiv_id for i in hf] == ["2611.10001", "2611.10002", "2611.10003"]
    assert [i.arxiv_id for i in arxiv] == ["2611.10001", "2611.10002", "2611.10004"]
    # arXiv's "arXiv:ID Announce Type: ... Abstract:" preamble is removed.
    assert arxiv[0].summary_html.startswith("We train spiking neural networks online")


def test_a_truncated_feed_is_used_with_a_warning() -> None:
    feed = parse("truncated.xml")
    assert [i.title for i in feed.items][:2] == [
        "How we taught agents to explore with sparse rewards",
        "A roadmap for neuromorphic hardware in the data centre",
    ]
    (warning,) = feed.warnings
    assert warning.startswith(f"feed is malformed but has {len(feed.items)} usable entries (")


@pytest.mark.parametrize(
    "body",
    [
        (DATA / "not-a-feed.html").read_bytes(),
        b"",
        b"garbage",
        b'{"items": []}',
    ],
)
def test_not_a_feed_is_an_error(body: bytes) -> None:
    with pytest.raises(ParseError, match=r"^not a feed: no RSS, RDF or Atom document found"):
        parse_feed(FetchResult("x", "https://example.org/", 200, body))


def test_a_broken_feed_without_entries_is_an_error() -> None:
    with pytest.raises(ParseError, match="malformed and has no usable entries"):
        parse_feed(FetchResult("x", "https://example.org/", 200, b'<rss version="2.0"><channel><title>x'))


def test_an_empty_feed_is_fine() -> None:
    body = b'<rss version="2.0"><channel><title>x</title></channel></rss>'
    feed = parse_feed(FetchResult("x", "https://example.org/", 200, body))
    assert feed.items == () and feed.warnings == ()


def test_relative_links_resolve_against_the_feed_url() -> None:
    body = (
        b'<rss version="2.0"><channel><title>t</title>'
        b"<item><title>a</title><link>/p/1</link></item></channel></rss>"
    )
    (item,) = parse_feed(FetchResult("x", "https://blog.example.org/feed.xml", 200, body)).items
    assert item.link == "https://blog.example.org/p/1"


@pytest.mark.parametrize(
    "value",
    [
        "2403.12345",
        "2403.12345v3",
        "oai:arXiv.org:2403.12345v1",
        "arXiv:2403.12345",
        "https://arxiv.org/abs/2403.12345v2",
        "http://export.arxiv.org/abs/2403.12345",
        "https://arxiv.org/pdf/2403.12345v1.pdf",
        "https://arxiv.org/pdf/2403.12345",
        "https://arxiv.org/html/2403.12345v1/",
        "https://huggingface.co/papers/2403.12345",
        "https://huggingface.co/papers/2403.12345?utm_source=x",
        "https://doi.org/10.48550/arXiv.2403.12345",
    ],
)
def test_arxiv_ids_name_the_same_paper(value: str) -> None:
    assert arxiv_id(value) == "2403.12345"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://arxiv.org/abs/hep-th/9901001v2", "hep-th/9901001"),
        ("oai:arXiv.org:math.GT/0309136", "math.gt/0309136"),
        ("https://arxiv.org/abs/1501.00001", "1501.00001"),  # 4-digit ids before 2015
        ("https://arxiv.org/abs/0704.0001", "0704.0001"),
        ("https://notarxiv.org/abs/2403.12345", None),  # not arXiv
        ("https://example.org/2403.12345", None),  # a bare id only counts on its own
        ("2413.12345", None),  # no 13th month
        ("blog/1234567", None),
        ("https://arxiv.org/abs/2403.123456", None),
        ("", None),
    ],
)
def test_arxiv_id_edge_cases(value: str, expected: str | None) -> None:
    assert arxiv_id(value) == expected


def test_arxiv_id_looks_at_id_guid_and_link_in_turn() -> None:
    assert arxiv_id("tag:example.org,2026:1", None, "https://arxiv.org/abs/2403.12345") == "2403.12345"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("https://example.org/a?utm_source=x&utm_medium=y", "https://example.org/a"),
        ("https://example.org/a?b=1&utm_source=x&c=2", "https://example.org/a?b=1&c=2"),
        ("https://example.org/a?utm%5Fsource=x&fbclid=1&gclid=2&mc_eid=3", "https://example.org/a"),
        ("HTTP://Example.ORG:80/Path", "http://example.org/Path"),
        ("https://example.org:443", "https://example.org/"),
        ("https://example.org:8443/", "https://example.org:8443/"),
        ("https://example.org/post/#comment-713578641", "https://example.org/post/#comment-713578641"),
        ("https://example.org/a?q=x y", "https://example.org/a?q=x%20y"),
        ("https://example.org/a?flag&x=", "https://example.org/a?flag&x="),  # kept as written
        ("  https://example.org/a\n/b  ", "https://example.org/a/b"),
        ("https://User:Pw@Example.org/", "https://User:Pw@example.org/"),
        ("javascript:alert(1)", None),
        ("data:text/html,hi", None),
        ("ftp://example.org/", None),
        ("/relative/path", None),
        ("https://", None),
        ("https://[::1", None),
        ("https://example.org/\x00", None),
        (None, None),
    ],
)
def test_canonical_links(link: str | None, expected: str | None) -> None:
    assert canonical_link(link) == expected


def test_title_from_text() -> None:
    assert title_from_text("<p>Short text.</p>") == "<p>Short text.</p>"  # callers pass text, not HTML
    assert title_from_text("one two three") == "one two three"
    words = " ".join(f"w{i}" for i in range(20))
    assert title_from_text(words) == " ".join(f"w{i}" for i in range(12)) + "…"
    assert title_from_text("   ") == "(untitled)"
    assert title_from_text("a " * 5 + "b" * 200).endswith("…")


def test_normalise_title() -> None:
    assert normalise_title("  A\r\n\ttitle \u2028 with\x00junk\u202e  ") == "A title with junk"
    assert normalise_title("<b>Bold</b> &amp; brave", is_html=True) == "Bold & brave"
    assert normalise_title("Cafe\u0301") == "Café"  # NFC


# --- properties ---------------------------------------------------------------------------


@given(st.text(), st.booleans())
def test_normalised_titles_never_contain_control_characters(text: str, is_html: bool) -> None:
    title = normalise_title(text, is_html=is_html)
    assert not any(unicodedata.category(c) == "Cc" for c in title)
    assert title == title.strip() and "  " not in title
    assert "\u2028" not in title and "\u2029" not in title
    made_up = title_from_text(text)
    assert not any(unicodedata.category(c) == "Cc" for c in made_up)


_XML_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff").filter(
    lambda c: c in "\t\n\r" or ord(c) >= 0x20
)


@settings(max_examples=60, deadline=None)
@given(st.text(_XML_CHARS, max_size=60), st.text(_XML_CHARS, max_size=60))
def test_titles_from_feeds_never_contain_control_characters(title: str, text: str) -> None:
    body = (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title><item>'
        f"<title>{escape(title)}</title><description>{escape(text)}</description>"
        "<guid>g</guid></item></channel></rss>"
    ).encode("utf-8", "surrogatepass")
    (item,) = parse_feed(FetchResult("x", "https://example.org/", 200, body)).items
    assert item.title and not any(unicodedata.category(c) == "Cc" for c in item.title)
    assert item.title == item.title.strip()


# An http(s) scheme and a host, then anything at all (mostly as a path, query or fragment):
# two in three of these are links.
_AFTER_A_HOST = st.tuples(
    st.sampled_from(["http://", "https://", "HTTPS://", " http://"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.-]{0,15}(:[0-9]{1,5})?", fullmatch=True),
    st.sampled_from(["/", "?", "#", ""]),
    st.text(st.characters(blacklist_categories=("Cs",))),
).map("".join)


@given(st.text() | _AFTER_A_HOST)
def test_link_canonicalisation_is_idempotent_on_any_text(text: str) -> None:
    once = canonical_link(text)  # never raises, whatever the text
    assume(once is not None)  # almost no plain text is a link: only links count as examples
    assert canonical_link(once) == once


# Characters a link may carry (the control and formatting ones make it no link at all).
_URL_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp")), max_size=12)
# A path: the same, less the characters that end it ("?" starts the query, "#" the fragment).
_URL_PATH = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp"), blacklist_characters="?#"), max_size=12
)
_PARAMS = st.lists(
    st.tuples(
        st.sampled_from(["utm_source", "utm_x", "fbclid", "id", "q", "UTM_Medium", "a b", ""]) | _URL_TEXT,
        _URL_TEXT,
        st.booleans(),
    ),
    max_size=5,
)


@given(
    st.sampled_from(["http", "https", "HTTP", "HtTpS"]),
    st.sampled_from(
        ["example.org", "EXAMPLE.org", "[::1]", "b\u00fccher.example", "x.example:80", "x.example:443"]
    ),
    _URL_PATH,
    _PARAMS,
    st.none() | _URL_TEXT,
)
def test_link_canonicalisation_is_idempotent_on_urls(
    scheme: str, host: str, path: str, params: list[tuple[str, str, bool]], fragment: str | None
) -> None:
    query = "&".join(f"{k}={v}" if has_value else k for k, v, has_value in params)
    link = f"{scheme}://{host}/{path}" + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")
    once = canonical_link(link)
    assert once is not None, link  # every such link is one
    assert canonical_link(once) == once
    assert "utm_source=" not in once.split("#")[0] and "fbclid=" not in once.split("#")[0]


# --- the time bound ------------------------------------------------------------------------


def _evil_feed(author_chars: int) -> bytes:
    """A feed whose author string makes feedparser's email regex quadratic (see FACTS.md)."""
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        f"<item><title>x</title><link>https://e.example/1</link><author>{'a' * author_chars}</author></item>"
        "</channel></rss>"
    ).encode()


def test_parse_in_a_worker_gives_the_same_result() -> None:
    result = FetchResult("arxiv-cs", "https://e.example/", 200, (DATA / "arxiv-cs.xml").read_bytes())
    assert parse_feed_bounded(result, time_limit=10) == parse_feed(result)


def test_parse_errors_come_back_from_the_worker() -> None:
    with pytest.raises(ParseError, match=r"^not a feed"):
        parse_feed_bounded(FetchResult("x", "https://e.example/", 200, b"<html></html>"), time_limit=10)


def test_a_pathological_feed_is_stopped_at_the_time_limit() -> None:
    # 400 kB of author: feedparser would need over 15 minutes here (11 s for 40 kB, and it is
    # quadratic). The worker is killed at the limit; the caller gets an error for this feed.
    result = FetchResult("evil", "https://e.example/", 200, _evil_feed(400_000))
    started = time.monotonic()
    with pytest.raises(ParseError, match=r"^parsing took longer than 1s \(stopped\)$"):
        parse_feed_bounded(result, time_limit=1.0)
    assert time.monotonic() - started < 2.0
    # The worker machinery is still usable afterwards.
    assert parse_feed_bounded(FetchResult("ok", "u", 200, _evil_feed(10)), time_limit=10).items


def test_signals_during_a_large_request_do_not_cut_it_short() -> None:
    # A write to a pipe returns early when a signal arrives mid-way (py-spy's sampling, SIGHUP
    # in `digest run`); the whole request must still reach the helper, well before the limit.
    items = "".join(
        f"<item><title>paper {i}</title><link>https://e.example/{i}</link>"
        f"<description>{'word ' * 400}</description></item>"
        for i in range(2000)
    )
    feed = f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
    result = FetchResult("big", "https://e.example/", 200, feed.encode())
    ticks = []
    previous = signal.signal(signal.SIGALRM, lambda *_: ticks.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        started = time.monotonic()
        parsed = parse_feed_bounded(result, time_limit=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(parsed.items) == 2000
    assert ticks and time.monotonic() - started < 25
