"""The email laid out by a real browser (headless Chromium): it fits a phone, titles show.

Runs when the Debian package ``chromium`` is installed (``.ci/run`` installs it); skipped
otherwise. The browser is driven by ``docs/screenshots.py`` (DevTools protocol on a pipe).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from samples import HOSTILE_ITEMS, sample_config, sample_digests

from pipeline.render import Renderer

sys.path.insert(0, str(ROOT / "docs"))
import screenshots

pytestmark = pytest.mark.skipif(screenshots.chromium_path() is None, reason="chromium is not installed")

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
    return out


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
@pytest.mark.parametrize("width", [375, 600])
@pytest.mark.parametrize("name", ["alan", "hostile"])
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
