"""The speed handle (Speedups): the early feed parser of `digest send`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from conftest import FeedServer, opened, serve

from pipeline import run
from pipeline.speed import Speedups


def test_a_parser_started_early_parses_and_stops_with_the_fetch(
    configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    # `digest send` starts one before its imports; a parser that parsed a large feed holds its
    # memory, which must not stay for the rest of the send.
    config = configure({"arxiv": serve(feed_server, "arxiv-cs.xml")})
    with opened(config) as (settings, store), Speedups.for_command() as speed:
        early = _children_named(b"pipeline.parse")
        assert len(early) == 1  # started at once
        (report,) = run.fetch_all(settings, store, speed=speed)
        assert report.result == "new" and report.new > 0
        assert speed.take_parser() is None  # taken by the fetch ...
        assert _children_named(b"pipeline.parse") == []  # ... and stopped with it
        (again,) = run.fetch_all(settings, store, speed=speed, force=True)  # nothing left to take
        assert again.result == "not-modified"


def _children_named(module: bytes) -> list[int]:
    """This process's live children running ``python -m module``."""
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and module in command.split(b"\0"):
            found.append(int(status.parent.name))
    return found
