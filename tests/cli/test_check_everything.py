"""`digest check` reports every problem at once: a schema error does not hide a bad query, a
missing feed file or a missing templates folder. Each with its file, line and key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import Result

CONFIG = """\
[digest]
title = "T"
max_entries = "many"
templates = "no-such-folder"

[[feeds]]
name = "here"
url = "here.xml"

[[feeds]]
name = "gone"
url = "gone.xml"

[topics.snn]
keywords = ["SNN"]

[topics.graphs]
query = '(GNN OR "link prediction"'

[[subscribers]]
email = "ada@example.org"
topics = ["snn", "graphs"]
"""
NEVER_CLOSED = 'topics.graphs.query: this "(" is never closed: add a ")" where its group ends'
POINTER = '\n    (GNN OR "link prediction"\n    ^\n'  # the caret under the "(" never closed


def test_check_lists_schema_errors_bad_queries_and_missing_files_together(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "here.xml").write_text("<rss/>")
    config = tmp_path / "digest.toml"
    config.write_text(CONFIG)
    result = cli("--config", config, "check")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"{config}:")]
    assert lines == [
        f'{config}:3: digest.max_entries: expected a whole number, like 30, not "many"',
        f"{config}:4: digest.templates: folder {tmp_path / 'no-such-folder'} does not exist",
        f"{config}:12: feeds[2].url: file {tmp_path / 'gone.xml'} does not exist",
        f"{config}:18: {NEVER_CLOSED}",
    ]
    assert f"{config}:18: {NEVER_CLOSED}{POINTER}" in result.output
    assert "4 problems in the config." in result.output


def test_the_same_problems_are_reported_when_the_schema_is_fine(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "here.xml").write_text("<rss/>")
    config = tmp_path / "digest.toml"
    config.write_text(CONFIG.replace('max_entries = "many"\n', ""))
    result = cli("--config", config, "check")
    assert result.exit_code == 2, result.output
    assert "digest.max_entries" not in result.output
    assert f"{config}:3: digest.templates: folder" in result.output
    assert f"{config}:11: feeds[2].url: file {tmp_path / 'gone.xml'} does not exist" in result.output
    assert f"{config}:17: {NEVER_CLOSED}{POINTER}" in result.output
    assert "3 problems in the config." in result.output


def test_a_broken_topic_beside_a_bad_key_in_it_still_has_its_query_checked(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "here.xml").write_text("<rss/>")
    (tmp_path / "gone.xml").write_text("<rss/>")
    config = tmp_path / "digest.toml"
    text = CONFIG.replace('templates = "no-such-folder"\n', "").replace(
        "[topics.graphs]\n", '[topics.graphs]\ntitle = 7\nkeywords = ["--"]\n'
    )
    config.write_text(text)
    result = cli("--config", config, "check")
    assert result.exit_code == 2, result.output
    assert 'topics.graphs.title: expected text in quotes, like "7"' in result.output
    assert "topics.graphs.keywords[1]: '--' has no letters or digits" in result.output
    assert f"{NEVER_CLOSED}{POINTER}" in result.output


def test_a_toml_syntax_error_is_the_one_problem(cli: Callable[..., Result], tmp_path: Path) -> None:
    config = tmp_path / "digest.toml"
    config.write_text(CONFIG.replace('title = "T"', 'title = "T'))
    result = cli("--config", config, "check")
    assert result.exit_code == 2
    assert "TOML syntax error" in result.output and "1 problem in the config." in result.output
