"""`digest fetch` exits 1 when a feed failed in this run, 0 when none did; a feed that rests
after earlier failures (skipped) is not a failure of this run."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from conftest import FeedServer


def test_fetch_exits_1_when_every_feed_failed(
    cli: Callable[..., Result], configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = configure({"gone": feed_server.url("status/404"), "broken": feed_server.url("status/500")})
    result = cli("--config", config, "fetch")
    assert result.exit_code == 1, result.output
    assert re.search(r"gone\s+error: HTTP 404 Not Found", result.output)
    assert "error: 2 of 2 feeds failed: gone, broken" in result.output


def test_fetch_exits_1_when_one_feed_of_several_failed(
    cli: Callable[..., Result], configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = configure(
        {"papers-arxiv": feed_server.url("papers-arxiv.xml"), "gone": feed_server.url("status/404")}
    )
    result = cli("--config", config, "fetch")
    assert result.exit_code == 1, result.output
    assert re.search(r"papers-arxiv\s+3 new", result.output)
    assert "error: 1 of 2 feeds failed: gone" in result.output


def test_fetch_exits_0_when_nothing_failed_and_a_resting_feed_is_not_a_failure(
    cli: Callable[..., Result], configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = configure({"papers-arxiv": feed_server.url("papers-arxiv.xml")})
    assert cli("--config", config, "fetch").exit_code == 0
    config = configure(
        {"papers-arxiv": feed_server.url("papers-arxiv.xml"), "gone": feed_server.url("status/404")}
    )
    assert cli("--config", config, "fetch").exit_code == 1
    again = cli("--config", config, "fetch")  # gone rests: skipped, not fetched, not failed
    assert re.search(r"gone\s+skipped: resting after 1 failure", again.output), again.output
    assert again.exit_code == 0, again.output
    named = cli("--config", config, "fetch", "--feed", "gone")  # fetched now, and fails again
    assert named.exit_code == 1
