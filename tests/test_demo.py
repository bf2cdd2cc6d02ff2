"""`make demo`, twice, in a copy of the repository (with this venv, so no venv is built): the
first run says what it fetched and sent, the second that nothing new arrived and where the
earlier digests are; the Maildir holds only cur/, new/ and tmp/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

VENV = Path(sys.prefix)


def copy_of_the_repository(target: Path) -> Path:
    """The working tree as a fresh clone would have it: tracked and new files, no ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # (a file deleted in the working tree is still listed)
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def make_demo(repo: Path) -> str:
    # -o: the venv counts as up to date, whatever the copied pyproject.toml's time says.
    done = subprocess.run(
        ["make", "--no-print-directory", "-o", f"{VENV}/.base", "demo", f"VENV={VENV}"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("DIGEST_CONFIG", "COLUMNS")},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git")
def test_make_demo_twice(tmp_path: Path) -> None:
    assert (VENV / "bin" / "digest").exists(), "run the tests from the project's venv"
    repo = copy_of_the_repository(tmp_path / "digest")
    assert not (repo / "config" / "outbox").exists() and not (repo / "config" / "state").exists()

    first = make_demo(repo)
    # What it fetched (no "not modified": nothing fetched the feeds before) and what it sent.
    assert re.search(r"^arxiv-cs\s+13 new\s", first, re.M), first
    assert "not modified" not in first
    assert "sent ada@example.org: 10 entries" in first
    assert "3 sent, 0 pending, 0 failed" in first
    new = sorted((repo / "config" / "outbox" / "new").iterdir())
    assert len(new) == 3
    for message in new:  # each email this run wrote is named, with whom it is to
        assert re.search(rf"^  config/outbox/new/{re.escape(message.name)}  To: ", first, re.M), first
    assert "To: Ada <ada@example.org>" in first
    page = repo / "config" / "preview-ada.html"
    assert f"file://{page}" in first
    html = page.read_text(encoding="utf-8")
    assert "Nothing new matched" not in html and "Spiking" in html

    second = make_demo(repo)
    assert re.search(r"^arxiv-cs\s+not modified\s", second, re.M), second
    assert "nothing new for ada@example.org" in second
    assert "Nothing new arrived since the last run, so no digest was sent" in second
    assert "The 3 digests of earlier runs are in config/outbox/new/" in second
    assert "This run's digests" not in second  # old files are not listed as if new
    assert page.read_text(encoding="utf-8") == html  # the page of Ada's digest is kept
    assert "Ada's digest of an earlier run as a web page" in second
    assert sorted((repo / "config" / "outbox" / "new").iterdir()) == new

    # The Maildir's root holds its three folders and nothing else; nothing else is left behind.
    assert sorted(p.name for p in (repo / "config" / "outbox").iterdir()) == ["cur", "new", "tmp"]
    assert sorted(p.name for p in (repo / "config").iterdir() if p.is_file()) == [
        "digest.toml",
        "preview-ada.html",
    ]
