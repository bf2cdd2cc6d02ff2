"""Counts in words: the one helper, and what the verbs print with it ("1 entry", never
"1 entries", "digest(s)" or "0 more not shown")."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from conftest import BASE_CONFIG, many

from pipeline.cli.words import plural


@pytest.mark.parametrize(
    ("count", "one", "many_", "expected"),
    [
        (0, "entry", "entries", "0 entries"),
        (1, "entry", "entries", "1 entry"),
        (2, "entry", "entries", "2 entries"),
        (1, "digest", None, "1 digest"),
        (3, "digest", None, "3 digests"),
        (0, "feed error", None, "0 feed errors"),
        (1, "feed error", None, "1 feed error"),
        (1, "entry matches", "entries match", "1 entry matches"),
        (5, "entry matches", "entries match", "5 entries match"),
        (-1, "problem", None, "-1 problems"),
    ],
)
def test_plural(count: int, one: str, many_: str | None, expected: str) -> None:
    assert plural(count, one, many_) == expected


def no_clumsy_counts(output: str) -> None:
    assert "(s)" not in output, output
    plural_after_one = r"\b1 (?:\w+ )?(?:entries|digests|topics|subscribers|problems|errors|failures)\b"
    assert not re.search(plural_after_one, output), output
    assert "0 more" not in output, output


def test_send_counts_in_words(tmp_path: Path, cli: Callable[..., Result]) -> None:
    config = many(tmp_path, 1, "")
    dry = cli("--config", config, "send", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would send user0@example.org: 1 entry, subject" in dry.output
    assert "1 digest would be sent (dry run: nothing sent or recorded)" in dry.output
    assert "; 0 feed errors." in dry.output
    no_clumsy_counts(dry.output)
    sent = cli("--config", config, "send")
    assert "sent user0@example.org: 1 entry\n" in sent.output
    no_clumsy_counts(sent.output)


def test_send_counts_one_feed_error(tmp_path: Path, cli: Callable[..., Result]) -> None:
    config = many(tmp_path, 1, "")
    text = config.read_text().replace(
        "[topics.snn]", '[[feeds]]\nname = "gone"\nurl = "no-such-file.xml"\n\n[topics.snn]'
    )
    config.write_text(text)
    result = cli("--config", config, "send")
    assert "feed gone: error" in result.output
    assert "; 1 feed error." in result.output
    no_clumsy_counts(result.output)


def test_preview_counts_what_it_shows_and_says_nothing_of_zero_more(
    tmp_path: Path, cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    config = many(tmp_path, 1, "")
    one = cli("--config", config, "preview", "-s", "user0@example.org", "-o", tmp_path / "p.html")
    assert one.exit_code == 0, one.output
    assert one.output.splitlines()[1] == "1 entry"
    cli("--config", config, "send", "--no-fetch")
    empty = cli(
        "--config", config, "preview", "-s", "user0@example.org", "--no-fetch", "-o", tmp_path / "p.html"
    )
    assert (
        empty.output.splitlines()[1]
        == "0 entries: nothing new for user0@example.org (no email would be sent)"
    )

    capped = write_config(BASE_CONFIG.replace('lookback = "3650d"', 'lookback = "3650d"\nmax_entries = 3'))
    more = cli("--config", capped, "preview", "-s", "ada@example.org", "-o", tmp_path / "ada.html")
    assert re.fullmatch(r"3 entries, and \d+ more counted but not shown", more.output.splitlines()[1]), (
        more.output
    )
    no_clumsy_counts(one.output + empty.output + more.output)


def test_match_counts_and_explains_in_plain_words(tmp_path: Path, cli: Callable[..., Result]) -> None:
    config = many(tmp_path, 1, "")
    text = config.read_text().replace(
        "[[subscribers]]", '[topics.rl]\nkeywords = ["reinforcement learning"]\n\n[[subscribers]]', 1
    )
    config.write_text(text)
    assert cli("--config", config, "fetch").exit_code == 0
    listed = cli("--config", config, "match", "--topic", "snn")
    assert "snn (snn): 1 matching entry" in listed.output
    assert "1 entry matches (published in the last 3650d)." in listed.output

    why = cli("--config", config, "match", "--explain", "https://example.org/snn")
    assert why.exit_code == 0, why.output
    assert "\nsnn: match, score " in why.output and " (SNN)\n" in why.output
    assert "\nrl: no match: no keyword found\n" in why.output
    assert "MATCH" not in why.output and "matches, score" not in why.output
    no_clumsy_counts(listed.output + why.output)


def test_config_problems_are_counted_in_words(tmp_path: Path, cli: Callable[..., Result]) -> None:
    config = many(tmp_path, 1, "")
    config.write_text(config.read_text().replace('topics = ["snn"]', 'topics = ["nope"]'))
    result = cli("--config", config, "status")
    assert result.exit_code == 2
    assert result.output.endswith("\n1 problem in the config.\n"), result.output
