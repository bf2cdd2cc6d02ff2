"""What one entry may bring is bounded: a huge title or summary is cut when the feed is parsed,
so what is stored and what each email carries stay small (a 9.5 MB title once made every
email 19.8 MB)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from click.testing import Result
from hypothesis import given
from hypothesis import strategies as st

from pipeline.models import FetchResult
from pipeline.parse import SUMMARY_LIMIT, TITLE_LIMIT, cap_summary, cap_title, parse_feed

HUGE_TITLE = "SNN " + " ".join(f"word{i}" for i in range(200_000))  # ~1.4 MB
HUGE_SUMMARY = "<p>" + "<b>spiking</b> neurons &amp; more " * 60_000 + "</p>"  # ~2 MB


def _feed(title: str, summary: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel><title>Big</title>'
        "<link>https://example.org/</link><description>x</description>"
        f"<item><title>{title}</title><link>https://example.org/big</link><guid>big</guid>"
        f"<description><![CDATA[{summary}]]></description>"
        "<pubDate>Fri, 27 Nov 2026 10:00:00 +0000</pubDate></item></channel></rss>"
    ).encode()


def test_a_huge_title_and_summary_are_cut_when_parsed() -> None:
    parsed = parse_feed(FetchResult("big", "https://example.org/feed", 200, _feed(HUGE_TITLE, HUGE_SUMMARY)))
    (item,) = parsed.items
    assert len(item.title) <= TITLE_LIMIT and item.title.endswith("…")
    assert HUGE_TITLE.startswith(item.title.removesuffix("…"))
    assert HUGE_TITLE[len(item.title) - 1] == " "  # cut at a word boundary
    assert len(item.summary_html) <= SUMMARY_LIMIT + 1 and item.summary_html.endswith("…")
    assert HUGE_SUMMARY.startswith(item.summary_html.removesuffix("…"))


def test_the_cuts_never_split_a_tag_or_an_entity() -> None:
    near = "x" * (SUMMARY_LIMIT - 5)
    assert cap_summary(near + '<a href="https://example.org/">link</a>') == near + "…"
    assert cap_summary(near + "&amp;&amp;&amp;") == near + "&amp;…"
    assert cap_summary("short <b>text</b>") == "short <b>text</b>"
    assert cap_title("one " * 100) == ("one " * 75).strip() + "…"  # 299 characters and the "…"
    assert cap_title("y" * 400) == "y" * (TITLE_LIMIT - 1) + "…"  # one long word: cut inside it


@given(st.text(min_size=0, max_size=900))
def test_capped_titles_fit_and_keep_their_beginning(title: str) -> None:
    capped = cap_title(title)
    assert len(capped) <= TITLE_LIMIT
    assert capped == title or (capped.endswith("…") and title.startswith(capped[:-1].rstrip(" ,;:.")))


def test_a_feed_with_a_huge_entry_makes_a_small_email(cli: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "feed.xml").write_bytes(_feed(HUGE_TITLE, HUGE_SUMMARY))
    config = tmp_path / "digest.toml"
    config.write_text(
        '[digest]\ntitle = "T"\nlookback = "3650d"\n\n'
        '[[feeds]]\nname = "big"\nurl = "feed.xml"\n\n'
        '[topics.snn]\nkeywords = ["SNN"]\n\n'
        '[[subscribers]]\nemail = "ada@example.org"\ntopics = ["snn"]\n'
    )
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    with closing(sqlite3.connect(tmp_path / "state" / "digest.db")) as db:
        ((title, summary),) = db.execute("select length(title), length(summary_html) from entries")
    assert title <= TITLE_LIMIT and summary <= SUMMARY_LIMIT + 1
    (email,) = (tmp_path / "outbox" / "new").iterdir()
    assert email.stat().st_size < 100_000, email.stat().st_size  # was twice the title, ~2.8 MB
