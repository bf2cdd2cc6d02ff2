"""End to end: the real CLI fetching from a loopback HTTP server and sending to a loopback SMTP server."""

from __future__ import annotations

import mailbox
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from conftest import FeedServer, SmtpServer, body_html, body_text, html_titles, smtp_section

SPIKING = {
    "Surrogate Gradient Learning in Deep Spiking Neural Networks Without Batch Normalization",
    "Event-Driven Keyword Spotting on a Neuromorphic Chip at 40 Microwatts",
    "Liquid State Machines Revisited: Reservoir Size, Sparsity and Memory Capacity",
    "Energy-Efficient Spiking Transformers for Event Camera Object Detection",
    "A roadmap for neuromorphic hardware in the data centre",
}
RL = {
    "Offline Reinforcement Learning with Conservative Value Ensembles",
    "Reward Models That Know What They Don't Know: Uncertainty-Aware RLHF",
    "Multi-Armed Bandits with Delayed and Aggregated Feedback",
    "Model-Based Reinforcement Learning for Legged Robots from Ten Minutes of Data",
    "How we taught agents to explore with sparse rewards",
}
DIFFUSION = {
    "Consistency Distillation for One-Step Text-to-Image Diffusion Models",
    "Score-Based Generative Modeling of Protein Backbones with SE(3) Equivariance",
    "Diffusion models, explained with pictures",
}
ROBOTS = {
    "Model-Based Reinforcement Learning for Legged Robots from Ten Minutes of Data",
    "Diffusion Policies for Dexterous Manipulation with Tactile Feedback",
}
NEVER = {
    "Deep Reinforcement Learning for High-Frequency Trading Under Market Impact",  # excluded: trading
    "A Survey of Neuromorphic Computing: Devices, Algorithms and Applications",  # excluded: survey
    "We are hiring research engineers",
}


def titles(text: str) -> set[str]:
    """Entry titles in a text part ("* Title" lines, unwrapped)."""
    found = set()
    for block in re.findall(r"^\* (.+?)\n  (?:https?://|\(no link\))", text, flags=re.M | re.S):
        found.add(" ".join(block.split()))
    return found


def http_feeds(server: FeedServer) -> dict[str, str]:
    return {
        "arxiv": server.url("arxiv-cs.xml"),
        "hf": server.url("hf-papers.xml"),
        "blog": server.url("lab-blog.xml"),
    }


def test_send_delivers_the_right_entries_to_each_subscriber_once(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    feed_server: FeedServer,
) -> None:
    config = write_config(smtp=smtp_section(smtp_server), feeds=http_feeds(feed_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "3 sent, 0 pending, 0 failed" in result.output
    handler = smtp_server.handler
    assert len(handler.messages) == 3
    for message, (_, rcpts) in zip(handler.messages, handler.envelopes, strict=True):
        assert len(rcpts) == 1 and message["To"].addresses[0].addr_spec == rcpts[0]
    expected = {
        "ada@example.org": SPIKING | RL,
        "grace@example.org": DIFFUSION | ROBOTS,
        # an entry under several topics appears once (robots repeats an rl entry)
        "alan@example.org": RL | ROBOTS | SPIKING,
    }
    for address, wanted in expected.items():
        (message,) = handler.to(address)
        text = body_text(message)
        assert titles(text) == wanted, address
        assert not titles(text) & NEVER
        assert html_titles(body_html(message)) == wanted
        assert str(message["Subject"]).strip().startswith("[Test Digest] ")
        assert message["Message-ID"].endswith("@example.net>")
        assert message["List-Unsubscribe"].startswith("<mailto:digest@example.net")
        assert message["Date"]
    alan = body_text(handler.to("alan@example.org")[0])
    assert alan.count("Model-Based Reinforcement Learning for Legged Robots") == 1

    again = cli("--config", config, "send")
    assert again.exit_code == 0, again.output
    assert "0 sent" in again.output and "3 with nothing new" in again.output
    assert len(handler.messages) == 3


def test_new_entries_arrive_in_the_next_send_and_old_ones_do_not_repeat(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    feed_server: FeedServer,
) -> None:
    config = write_config(smtp=smtp_section(smtp_server), feeds=http_feeds(feed_server))
    assert cli("--config", config, "send").exit_code == 0
    blog = feed_server.directory / "lab-blog.xml"
    new_item = """<item><title>Spiking neural networks on a budget</title>
      <link>https://lab.example.org/blog/snn-budget</link><guid>https://lab.example.org/blog/snn-budget</guid>
      <description>How we train an SNN on one GPU.</description>
      <pubDate>Fri, 27 Nov 2026 10:00:00 +0000</pubDate></item>"""
    blog.write_text(blog.read_text().replace("<item>", new_item + "\n<item>", 1))
    later = blog.stat().st_mtime + 5  # Last-Modified has one-second resolution
    os.utime(blog, (later, later))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "2 sent" in result.output  # ada and alan follow spiking; grace does not
    for address in ("ada@example.org", "alan@example.org"):
        latest = smtp_server.handler.to(address)[-1]
        assert titles(body_text(latest)) == {"Spiking neural networks on a budget"}
    assert len(smtp_server.handler.to("grace@example.org")) == 1


def test_dry_run_and_preview_send_and_record_nothing(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = write_config(smtp=smtp_section(smtp_server))
    dry = cli("--config", config, "send", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would send ada@example.org: 10 entries" in dry.output
    assert smtp_server.handler.messages == []

    out = tmp_path / "ada.html"
    shown = cli("--config", config, "preview", "--subscriber", "ada@example.org", "--output", out)
    assert shown.exit_code == 0, shown.output
    html = out.read_text()
    assert "Offline Reinforcement Learning with Conservative Value Ensembles" in html
    assert 'style="' in html  # CSS was inlined
    assert smtp_server.handler.messages == []

    real = cli("--config", config, "send", "--subscriber", "ada@example.org")
    assert real.exit_code == 0, real.output
    assert [m["To"].addresses[0].addr_spec for m in smtp_server.handler.messages] == ["ada@example.org"]
    assert titles(body_text(smtp_server.handler.messages[0])) == SPIKING | RL


def test_preview_defaults_to_a_temporary_file(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    config = write_config()
    result = cli("--config", config, "preview", "-s", "grace@example.org")
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path.is_file() and "Diffusion models" in path.read_text()
    path.unlink()


def test_maildir_delivery_without_smtp(
    cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config()
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    messages = list(box)
    assert sorted(m["To"] for m in messages) == [
        "Ada <ada@example.org>",
        "Grace <grace@example.org>",
        "alan@example.org",
    ]
    assert f"Maildir {tmp_path / 'outbox'}/new" in result.output
    again = cli("--config", config, "send")
    assert again.exit_code == 0 and len(box.keys()) == 3


def test_a_refused_address_fails_alone_and_is_named(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    smtp_server.handler.faults["grace@example.org"] = ["550 5.1.1 <grace@example.org>: mailbox unavailable"]
    config = write_config(smtp=smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    assert "failed grace@example.org: 550 5.1.1 <grace@example.org>: mailbox unavailable" in result.output
    assert sorted(a for _, (a,) in smtp_server.handler.envelopes) == ["ada@example.org", "alan@example.org"]
    # A permanent failure is final: the next send does not try again, nor re-send the others.
    smtp_server.handler.faults.clear()
    again = cli("--config", config, "send")
    assert again.exit_code == 0 and len(smtp_server.handler.messages) == 2
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        states = dict(db.execute("select subscriber, state from deliveries"))
    assert states == {"ada@example.org": "sent", "alan@example.org": "sent", "grace@example.org": "failed"}


def test_a_broken_feed_is_reported_and_the_others_still_delivered(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    feed_server: FeedServer,
) -> None:
    feeds = http_feeds(feed_server) | {"blog": feed_server.url("status/500")}
    config = write_config(smtp=smtp_section(smtp_server), feeds=feeds)
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "feed lab-blog: error: HTTP 500 Internal Server Error" in result.output
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert titles(body_text(ada)) == (SPIKING | RL) - {
        "A roadmap for neuromorphic hardware in the data centre",
        "How we taught agents to explore with sparse rewards",
    }


def test_unknown_subscriber_is_a_usage_error(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    result = cli("--config", write_config(), "send", "--subscriber", "nobody@example.org")
    assert result.exit_code == 2
    assert "unknown subscriber nobody@example.org" in result.output


def test_status_shows_feeds_subscribers_and_outbox(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    config = write_config()
    before = cli("--config", config, "status")
    assert before.exit_code == 0, before.output
    assert "never fetched" in before.output
    cli("--config", config, "fetch")
    pending = cli("--config", config, "status")
    assert re.search(r"ada@example\.org\s+spiking, rl\s+daily 07:00\s+-\s+10\b", pending.output), (
        pending.output
    )
    cli("--config", config, "send", "--no-fetch")
    after = cli("--config", config, "status")
    assert re.search(r"arxiv-cs\s+\S+ \S+\s+\S+ \S+\s+13\s", after.output), after.output
    assert "Outbox: 3 sent" in after.output
    assert re.search(r"ada@example\.org\s+spiking, rl\s+daily 07:00\s+\S+ \S+\s+0\b", after.output), (
        after.output
    )


def test_fetch_prints_a_line_per_feed(
    cli: Callable[..., Result], write_config: Callable[..., Path], feed_server: FeedServer
) -> None:
    feeds = http_feeds(feed_server) | {"blog": feed_server.url("status/404")}
    config = write_config(feeds=feeds)
    first = cli("--config", config, "fetch")
    assert first.exit_code == 0
    assert re.search(r"arxiv-cs\s+13 new", first.output)
    assert re.search(r"hf-papers\s+\d+ new", first.output)
    assert re.search(r"lab-blog\s+error: HTTP 404 Not Found", first.output)
    second = cli("--config", config, "fetch")
    # SimpleHTTPRequestHandler sends Last-Modified: the second fetch is a conditional GET -> 304.
    assert re.search(r"arxiv-cs\s+not modified", second.output), second.output
    assert any(h.get("If-Modified-Since") for p, h in feed_server.requests if p == "/arxiv-cs.xml")


def test_maildir_delivery_into_an_existing_empty_folder(
    cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "outbox").mkdir()  # e.g. made by `preview --output outbox/ada.html`
    result = cli("--config", write_config(), "send")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 3
