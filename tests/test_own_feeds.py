"""README's "Your own feeds" recipe: its config is config/examples/arxiv.toml word for word, and
that file passes `digest check` offline (check reads the config; it fetches nothing)."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import Result
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE = ROOT / "config" / "examples" / "arxiv.toml"


def section(title: str) -> str:
    return README.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_recipe_in_the_readme_is_the_example_file() -> None:
    recipe = section("## Your own feeds")
    (block,) = re.findall(r"^```toml\n(.*?)^```$", recipe, re.M | re.S)
    assert block == EXAMPLE.read_text(encoding="utf-8")
    # right after Quick start, before the manual proper
    assert README.index("\n## Quick start\n") < README.index("\n## Your own feeds\n")
    assert README.index("\n## Your own feeds\n") < README.index("\n## How it works\n")


def test_the_recipe_uses_documented_feeds_and_a_weekday_cron_line() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert 'url = "https://rss.arxiv.org/rss/cs.LG"' in text
    assert 'url = "https://huggingface.co/blog/feed.xml"' in text
    assert 'every = "6h"' in text
    recipe = section("## Your own feeds")
    assert re.search(
        r"^   30 7 \* \* 1-5 cd /path/to/digest && \.venv/bin/digest --config config/mine\.toml send "
        r">> ~/digest\.log 2>&1$",
        recipe,
        re.M,
    )
    assert "(#running-on-a-schedule-digest-run)" in recipe  # the systemd unit
    checklist = recipe.split("\n### Why didn't I get an email?\n", 1)[1]
    for step in ("digest status", "digest fetch", "digest match --explain", "--retry-now", "--retry-failed"):
        assert step in checklist, step
    # the anchors the README links to exist
    assert "\n## Running on a schedule: `digest run`\n" in README
    assert "(#why-didnt-i-get-an-email)" in README


def test_the_example_passes_check_offline(
    cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"check opened a connection: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(ROOT)
    result = cli("--config", "config/examples/arxiv.toml", "check")
    assert result.exit_code == 0, result.output
    assert "config/examples/arxiv.toml: OK (3 feeds, 2 topics, 1 subscriber" in result.output
    assert not (EXAMPLE.parent / "state").exists()  # check writes nothing
