"""Which stored entry a fetched item is: across feeds, across edits, across changed guids.

The rules are pipeline.store.identity's; they are driven here through ``run.fetch_all`` /
``run.send`` (or the CLI) on feeds from the loopback HTTP server or files.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import Result
from conftest import (
    DATA,
    FeedServer,
    SmtpServer,
    body_text,
    opened,
    serve,
    smtp_section,
    state_db,
    text_titles,
)

from pipeline import run

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_the_same_papers_from_two_feeds_are_stored_and_delivered_once(
    cli: Callable[..., Result],
    configure: Callable[..., Path],
    feed_server: FeedServer,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    config = configure(
        {
            "papers-hf": feed_server.url("papers-hf.xml"),
            "papers-arxiv": feed_server.url("papers-arxiv.xml"),
        },
        smtp=smtp_section(smtp_server),
    )
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "feed papers-hf: 3 new" in result.output
    assert "feed papers-arxiv: 1 new" in result.output  # two of its three papers were known
    (ada,) = smtp_server.handler.to("ada@example.org")
    shown = text_titles(body_text(ada))
    assert sorted(shown) == sorted(
        [
            "Spiking Neural Networks That Learn Online Without Backpropagation Through Time",
            "Bandit Feedback for Reinforcement Learning from Human Preferences",
            "Neuromorphic Keyword Spotting at the Edge",
            "Off-Policy Evaluation with Spiking Critics",
        ]
    )  # each paper once, though two of them came from both feeds
    # A topic restricted to one feed matches an entry any of whose feeds is that one.
    (grace,) = smtp_server.handler.to("grace@example.org")
    assert text_titles(body_text(grace)) == [
        "Spiking Neural Networks That Learn Online Without Backpropagation Through Time"
    ]
    with state_db(tmp_path) as conn:
        assert conn.execute("select count(*) from entries").fetchone() == (4,)
        feeds_of = dict(
            conn.execute(
                "select e.arxiv_id, group_concat(s.feed, ' ') from entries e"
                " join entry_sources s on s.entry_id = e.id group by e.id"
            )
        )
    assert feeds_of == {
        "2611.10001": "papers-hf papers-arxiv",
        "2611.10002": "papers-hf papers-arxiv",
        "2611.10003": "papers-hf",
        "2611.10004": "papers-arxiv",
    }
    again = cli("--config", config, "send")
    assert "0 sent" in again.output and len(smtp_server.handler.messages) == 2


def test_the_same_paper_arriving_later_from_another_feed_is_not_sent_again(
    configure: Callable[..., Path], feed_server: FeedServer, smtp_server: SmtpServer
) -> None:
    hf = serve(feed_server, "hf.xml", "papers-hf.xml")
    arxiv = feed_server.url("missing.xml")
    config = configure({"papers-hf": hf, "papers-arxiv": arxiv}, smtp=smtp_section(smtp_server))
    with opened(config) as (settings, store):
        run.send(settings, store, clock=lambda: T0)
        assert len(smtp_server.handler.to("ada@example.org")) == 1
        serve(feed_server, "missing.xml", "papers-arxiv.xml")  # the arXiv feed appears later
        report = run.send(settings, store, clock=lambda: T0 + timedelta(hours=1))
    assert [f.describe() for f in report.feeds] == ["not modified", "1 new"]
    latest = smtp_server.handler.to("ada@example.org")[-1]
    assert text_titles(body_text(latest)) == ["Off-Policy Evaluation with Spiking Critics"]


def test_duplicates_within_a_feed(configure: Callable[..., Path]) -> None:
    config = configure({"dup": str(DATA / "duplicates.xml"), "comments": str(DATA / "comments.xml")})
    with opened(config) as (settings, store):
        reports = run.fetch_all(settings, store, clock=lambda: T0)
        # One guid twice: one entry. Two guids, one link: two entries. Two guid-less items
        # whose links differ only by tracking parameters: one entry. Comments: two.
        assert [r.describe() for r in reports] == ["4 new", "2 new"]
        titles = sorted(e.title for e in store.entries_since(T0 - timedelta(days=3650)))
    assert titles == [
        "Bandit reading list (updated)",  # the later of the two copies in the document
        "By: Ada",
        "By: Alan",
        "Lab meeting: diffusion models",
        "Lab meeting: spiking neural networks",
        "Weekly reinforcement learning roundup",
    ]


def test_an_edited_entry_updates_the_stored_copy_and_is_not_sent_again(
    cli: Callable[..., Result],
    configure: Callable[..., Path],
    feed_server: FeedServer,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    url = serve(feed_server, "edits.xml", "edited-v1.xml")
    config = configure({"edits": url}, smtp=smtp_section(smtp_server))
    first = cli("--config", config, "send")
    assert first.exit_code == 0 and "1 sent" in first.output, first.output
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert "Policy gradeint methods, explained" in text_titles(body_text(ada))
    serve(feed_server, "edits.xml", "edited-v2.xml")
    second = cli("--config", config, "send")
    assert "feed edits: 0 new" in second.output and "0 sent" in second.output, second.output
    assert len(smtp_server.handler.messages) == 1
    with state_db(tmp_path) as conn:
        rows = conn.execute("select title, summary_html from entries order by id").fetchall()
    assert rows[0] == (
        "Policy gradient methods, explained",
        "The final version, about policy gradient methods in reinforcement learning, with figures.",
    )
    assert len(rows) == 2


def test_a_feed_that_changes_all_its_guids_does_not_repeat_itself(
    configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    url = serve(feed_server, "blog.xml", "lab-blog.xml")
    config = configure({"blog": url})
    with opened(config) as (settings, store):
        assert run.fetch_all(settings, store, clock=lambda: T0)[0].new == 4
        # The blog moved to another host: every guid and link changed, the posts did not.
        moved = (
            (DATA / "lab-blog.xml")
            .read_text()
            .replace("https://lab.example.org/", "https://www.lab.example.org/")
        )
        serve(feed_server, "blog.xml", text=moved)
        (report,) = run.fetch_all(settings, store, clock=lambda: T0 + timedelta(hours=1))
        assert report.describe() == "0 new"
        links = sorted(str(e.link) for e in store.entries_since(T0 - timedelta(days=3650)))
    assert len(links) == 4 and all(link.startswith("https://www.lab.example.org/") for link in links)


def test_entries_without_dates_are_dated_when_first_seen(configure: Callable[..., Path]) -> None:
    config = configure({"undated": str(DATA / "no-dates.xml")})
    with opened(config) as (settings, store):
        run.fetch_all(settings, store, clock=lambda: T0)
        entries = store.entries_since(T0 - timedelta(days=3650))
    assert [e.published for e in entries] == [T0, T0]
