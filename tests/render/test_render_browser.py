"""The email laid out by a real browser (headless Chromium): it fits a phone, titles show, it is short.

Runs when the Debian package ``chromium`` is installed (``.ci/run`` installs it); skipped
otherwise. The browser is driven by ``docs/screenshots.py`` (DevTools protocol on a pipe).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from samples import HOSTILE_ITEMS, sample_config, sample_digests

from pipeline.models import Digest, Entry, Match, Section
from pipeline.render import Renderer
from pipeline.render.views import MAX_UNBROKEN_FEED

sys.path.insert(0, str(ROOT / "docs"))
import screenshots

pytestmark = pytest.mark.skipif(screenshots.chromium_path() is None, reason="chromium is not installed")

# The demo's 10-entry digest (Ada's, config/digest.toml), page height in px in Chromium 150,
# measured before the email was made scannable (full abstracts, no contents line; 2026-12-04).
HEIGHT_BEFORE = {600: 3051, 375: 4321}
SHORTER_BY = 0.15  # now at least this much shorter (it is about 20% at 600 px, 25% at 375 px)

EVE = '\n[[subscribers]]\nemail = "eve@example.org"\nname = "Eve"\ntopics = ["spiking", "diffusion"]\n'


@pytest.fixture(scope="module")
def browser() -> Iterator[screenshots.Chromium]:
    with screenshots.Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    """Sample emails as HTML files, with how many entries each shows."""
    folder = tmp_path_factory.mktemp("browser")
    settings = sample_config(folder, digest="images = true", extra=EVE)
    digests = sample_digests(settings, items=HOSTILE_ITEMS)
    renderer = Renderer(settings)
    renderer.prepare(digests.values())
    out = {}
    for name, address in (("alan", "alan@example.org"), ("hostile", "eve@example.org")):
        path = folder / f"{name}.html"
        path.write_text(renderer.render(digests[address]).html, encoding="utf-8")
        out[name] = (path, digests[address].entry_count)
    path = folder / "long-feed.html"
    path.write_text(renderer.render(_long_feed_name_digest()).html, encoding="utf-8")
    out["long-feed"] = (path, 1)
    return out


def _long_feed_name_digest() -> Digest:
    """One entry carried by feeds with long names: the widest kept on one line, and longer ones
    up to the longest a config allows (64 characters), which may break."""
    now = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    entry = Entry(
        id=1,
        title="Spiking neural networks",
        link="https://example.org/1",
        summary_html="<p>SNN.</p>",
        authors=("A. Author",),
        categories=(),
        published=now,
        first_seen=now,
        feeds=("W" * MAX_UNBROKEN_FEED, "W" * 64, "b-" * 32, "hf-papers"),
    )
    return Digest(
        subscriber="eve@example.org",
        name="Eve",
        sections=(Section("spiking", "Spiking neural networks", (Match(entry, "spiking", 3, ("SNN",)),)),),
        topics=("Spiking neural networks",),
        created_at=now,
        message_id="<x@example.net>",
    )


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
@pytest.mark.parametrize("width", [375, 600])
@pytest.mark.parametrize("name", ["alan", "hostile", "long-feed"])
def test_no_horizontal_overflow_and_every_title_visible(
    browser: screenshots.Chromium, pages: dict[str, tuple[Path, int]], name: str, width: int, dark: bool
) -> None:
    path, entries = pages[name]
    session = browser.open(path, width=width, dark=dark)
    page: dict[str, Any] = browser.measure(session)
    assert page["viewport"] == width
    assert page["dark"] is dark
    assert page["scrollWidth"] <= width, f"the page is {page['scrollWidth']} px wide at {width} px"
    assert entries > 0 and len(page["titles"]) == entries
    for title in page["titles"]:
        assert title["visible"] and title["width"] > 0 and title["height"] > 0, title["text"]
        assert title["left"] >= 0 and title["right"] <= width, title["text"]
    background = page["background"]
    assert background == ("rgb(11, 18, 32)" if dark else "rgb(238, 240, 244)")


FEED_LINES = """JSON.stringify([...document.querySelectorAll('.byline .feed')].map(e => ({
  text: e.textContent, lines: e.getClientRects().length})))"""


@pytest.mark.parametrize("name", ["alan", "hostile", "long-feed"])
def test_no_feed_name_breaks_across_lines_on_a_phone(
    browser: screenshots.Chromium, pages: dict[str, tuple[Path, int]], name: str
) -> None:
    path, _ = pages[name]
    session = browser.open(path, width=375, dark=False)
    result = browser.send("Runtime.evaluate", session, expression=FEED_LINES, returnByValue=True)
    feeds = json.loads(result["result"]["value"])
    assert feeds, "the bylines name their feeds"
    assert all(feed["lines"] == 1 for feed in feeds), feeds
    if name == "alan":
        assert "hf-papers" in {feed["text"] for feed in feeds}


@pytest.fixture(scope="module")
def demo_digest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's 10-entry digest (Ada's), as ``make screenshots`` renders the demo."""
    return screenshots.sample_html(tmp_path_factory.mktemp("demo"), "ada@example.org")


@pytest.mark.parametrize("width", [600, 375])
def test_the_demo_digest_is_much_shorter_than_it_was(
    browser: screenshots.Chromium, demo_digest: Path, width: int, capsys: pytest.CaptureFixture[str]
) -> None:
    page = browser.measure(browser.open(demo_digest, width=width, dark=False))
    assert len(page["titles"]) == 10
    before, now = HEIGHT_BEFORE[width], page["height"]
    with capsys.disabled():
        print(
            f"\ndemo digest, 10 entries, {width} px wide: {now} px tall, was {before} px ({now / before:.0%})"
        )
    assert now <= before * (1 - SHORTER_BY), f"{now} px at {width} px wide; it was {before} px"
